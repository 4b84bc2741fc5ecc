"""edgeuad: unsupervised visual anomaly detection for the edge.

Runtime (no torch):  `Detector(bundle).score(frame)`, `Detector.stream(source)`.
Training (torch, the `train` extra): `edgeuad.api.train / export / evaluate`, or the `edgeuad` CLI.
"""
from ._version import __version__

__all__ = ["__version__", "Detector", "Result", "Bundle"]


def __getattr__(name: str):  # lazy: `import edgeuad` stays cheap and torch-free
    if name in ("Detector", "Result"):
        from . import detector

        return getattr(detector, name)
    if name == "Bundle":
        from .bundle import Bundle

        return Bundle
    raise AttributeError(f"module 'edgeuad' has no attribute {name!r}")
