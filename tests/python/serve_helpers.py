"""Helpers shared by the `edgeuad serve` tests: a tiny real bundle, a swapped copy, free ports."""
from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

from edgeuad import api
from edgeuad.bundle import read_manifest, write_manifest
from edgeuad.synthetic import make_synthetic_dataset

# the tiny ReContrast of test_pipeline.py: 64 px, 3 iterations, random-init backbone (seconds to build)
TINY = {"image_size": 64, "iterations": 3, "batch_size": 4, "pretrained": False}


def tiny_bundle(root: Path) -> tuple[Path, Path]:
    """(bundle, dataset) trained and exported through the normal train -> export path."""
    data = make_synthetic_dataset(root / "data", kind="texture", n_train=10, n_test_good=3, n_test_defect=2,
                                  size=64, seed=1)
    run = api.train("recontrast", data, root / "run", TINY, holdout_fraction=0.2, progress=False)
    return api.export(run, root / "bundle").root, data


def swapped_copy(bundle: Path, dest: Path, threshold_factor: float = 1.25) -> Path:
    """The same network with another threshold: another manifest, so another digest and other
    normalised scores: enough to tell which bundle answered."""
    shutil.copytree(bundle, dest)
    m = read_manifest(dest)
    th = m["thresholds"]
    t = th["threshold"] * threshold_factor
    # the schema requires min <= threshold <= max: widen the normalisation range with the threshold
    m["thresholds"] = dict(th, threshold=t, max=max(th["max"], t + (th["max"] - th["min"])))
    write_manifest(dest, m)
    return dest


def free_port() -> int:
    """A free loopback TCP port in 20000-29999: below Linux's ephemeral range (32768+), from which Ray's own
    processes take ports while a cluster starts (a port the OS had just handed out here was taken that way
    before Serve's proxy could bind it, in a CI run of 4f8e167), and below Ray Serve's direct-ingress ports
    (30000+)."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 30000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999 on 127.0.0.1")

