"""Throughput and per-stage latency of the runtime pipeline, against torch references a user would write.

    report = run_bench(BenchConfig(bundle="bundles/bottle"))         # quick: batch 1, 1 thread
    report = run_bench(BenchConfig(bundle="bundles/bottle", **FULL))  # the sweep for RESULTS.md
    print(report.table()); report.write("bench_out")                 # bench.json, bench.md, bench.png

Stages, per pipeline x thread count x batch size, on the same frames:

    decode       cv2.imdecode of JPEG bytes (what an MJPEG/RTSP camera or a folder delivers)
    preprocess   edgeuad.preprocess (resize + normalise to the network input), shared by all pipelines
    network      the network only (Detector backend, torch module, or onnxruntime for the peer)
    memory_bank  nearest-neighbour search (patch methods)          } Detector.postprocess
    distance_map anomaly map + blur + image score                  } reports these itself
    postprocess  normalisation / resize of maps to the frame size  }
    torch_post   a reference's whole torch post-processing
    pipeline     preprocess .. results (what the speed-ups compare)
    total        decode .. results; throughput = frames / sum(total)

Modules: config (BenchConfig, FULL, pipeline names), stats, frames, machine, timing (the one timing
loop), pipelines (Detector side, torch-free), torch_ref (the torch references: imports torch, loaded
only by reference workers), protocol (workers + interleaved rounds), report, run (run_bench).
This package never imports torch at import time.
"""
from __future__ import annotations

from .config import FULL, PEER, REFERENCES, RUNTIMES, TORCH_COMPILE, TORCH_EAGER, BenchConfig
from .frames import batch_of, decode, folder_frames, synthetic_frames
from .machine import cpu_flags, machine_info, peak_rss_mb
from .report import BenchReport, ParityReport, PipelineReport, RunStats, compare_parity
from .run import backend_unavailable_reason, compute_speedups, run_bench
from .stats import percentiles, ratio_summary, speedup, summarize_stages, throughput
from .timing import time_block

__all__ = ["FULL", "PEER", "REFERENCES", "RUNTIMES", "TORCH_COMPILE", "TORCH_EAGER", "BenchConfig", "BenchReport",
           "ParityReport", "PipelineReport", "RunStats", "backend_unavailable_reason", "batch_of", "compare_parity",
           "compute_speedups", "cpu_flags", "decode", "folder_frames", "machine_info", "peak_rss_mb", "percentiles",
           "ratio_summary", "run_bench", "speedup", "summarize_stages", "synthetic_frames", "throughput",
           "time_block"]
