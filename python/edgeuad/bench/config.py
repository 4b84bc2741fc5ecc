"""What to benchmark (BenchConfig, with the quick default and the --full sweep) and the pipeline names."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# The Detector with each network backend; "onnxruntime-int8" = the bundle's graph in onnxruntime's int8
# layout (export/quantize.py, target "onnxruntime", as `edgeuad export --cpu-int8` ships it), calibrated
# as BenchConfig.int8_calib says.
RUNTIMES = ("onnxruntime", "onnxruntime-int8", "torch", "tensorrt")
# What a user without edgeuad runs (bench/torch_ref.py): torch model + torch post-processing in float32
# eager mode, the same under torch.compile, and the anomalib-style peer (onnxruntime network + torch post).
TORCH_EAGER, TORCH_COMPILE, PEER = "torch-eager", "torch-compile", "ort+torch-post"
REFERENCES = (TORCH_EAGER, TORCH_COMPILE, PEER)

# `edgeuad bench --full`: every batch size, thread count, backend and reference, more repetitions.
FULL = {"batch_sizes": [1, 4, 8], "threads": [1, 2], "backends": ["onnxruntime", "onnxruntime-int8", "torch", "tensorrt"],
        "references": list(REFERENCES), "repetitions": 7, "block": 12}


@dataclass
class BenchConfig:
    """What to benchmark.  The defaults are the quick run (batch 1, 1 thread, onnxruntime vs eager torch,
    3 repetitions of 8 frames: well under a minute for a small bundle); FULL is the sweep for RESULTS.md.

    Protocol (bench/protocol.py): each pipeline lives in its own worker process for the whole run; for
    every (threads, batch size) the parent runs `repetitions` rounds, and in each round every pipeline in
    turn times `block` batches of the same frames after one untimed re-warm batch (round order reversed
    every other round).  Per-stage percentiles pool all rounds; the speed-up of a runtime over a
    reference is, per round, the ratio of their block medians, reported as median [min-max] over rounds.

    images: folder/glob of images used as frames (decoded in the timed loop); None = synthetic
        textured JPEG frames of `frame_size`.
    isolate: one worker process per pipeline (separable peak RSS, no shared thread pools); False runs
        every pipeline in this process (tests) and says so in the report.
    int8_calib: folder of normal images calibrating the INT8 graph; None = the benchmark frames
        themselves (fine for timing; accuracy needs real calibration: benchmarks/int8_accuracy.py).
    baseline: not a pipeline: the runtime whose ratios head the report (the Detector's default backend).
    """

    bundle: str
    out_dir: Optional[str] = "bench_out"
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    references: list[str] = field(default_factory=lambda: [TORCH_EAGER])
    repetitions: int = 3
    block: int = 8
    warmup: int = 2
    images: Optional[str] = None
    frame_size: tuple[int, int] = (480, 640)
    n_frames: int = 8
    jpeg_quality: int = 90
    isolate: bool = True
    parity_frames: int = 4
    return_map: bool = True
    score_atol: float = 1e-4
    score_rtol: float = 1e-3
    seed: int = 0
    stem: str = "bench"
    worker_timeout_s: float = 1800.0
    int8_calib: Optional[str] = None
    baseline: str = "onnxruntime"
    progress: bool = False
    expected_digest: Optional[str] = None  # refuse any bundle but this one (sha256 of manifest.json)

    def __post_init__(self) -> None:
        self.bundle = str(self.bundle)
        self.batch_sizes = sorted({int(b) for b in self.batch_sizes})
        self.threads = [int(t) for t in self.threads]
        self.frame_size = (int(self.frame_size[0]), int(self.frame_size[1]))
        self.backends = list(dict.fromkeys(self.backends))
        self.references = list(dict.fromkeys(self.references))
        if not self.batch_sizes or self.batch_sizes[0] < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if not self.threads or min(self.threads) < 0:
            raise ValueError(f"thread counts must be >= 0 (0 = library default), got {self.threads}")
        if self.repetitions < 1 or self.block < 1 or self.warmup < 0:
            raise ValueError("need repetitions >= 1, block >= 1 and warmup >= 0")
        unknown = (set(self.backends) - set(RUNTIMES)) | (set(self.references) - set(REFERENCES))
        if unknown:
            raise ValueError(f"unknown pipelines {sorted(unknown)}; backends: {', '.join(RUNTIMES)}; "
                             f"references: {', '.join(REFERENCES)}")
        if not self.backends and not self.references:
            raise ValueError("nothing to benchmark: no backend and no reference")
        if min(self.frame_size) < 8:
            raise ValueError("frame_size too small")

    @property
    def pipelines(self) -> list[str]:
        return self.backends + self.references

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown BenchConfig keys {sorted(unknown)}")
        return cls(**d)
