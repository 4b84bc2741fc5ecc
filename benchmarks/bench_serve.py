#!/usr/bin/env python
"""`edgeuad serve` vs the in-process Detector: throughput and p50/p99 vs closed-loop clients.

    python benchmarks/bench_serve.py --make-bundle recontrast             # untrained 256 px bundle
    python benchmarks/bench_serve.py --bundle bundles/bottle --concurrency 1,2,4,8,16,32 --duration 5
    python benchmarks/bench_serve.py --make-bundle recontrast --direct-ingress --stem serve_direct

Writes benchmarks/results/serve.{md,json}:
  * in process: JPEG decode + `Detector.score` (batch 1) latency and decode + `score_batch(max_batch)`
    throughput, with the replicas' thread count and twice it;
  * served, on a local Ray cluster on this machine, loopback: a closed-loop sweep of clients for 1 and
    for 2 replicas (batching on: --max-batch / --batch-wait-ms);
  * the goals of issue #17, measured in alternating rounds because a shared machine's load drifts more
    than the effect: added p50 at batch 1 (1 client, a replica with max batch 1, vs in process; goal
    <= 3 ms) and served throughput at saturation with batching vs in-process `score_batch` with the
    same threads (goal >= 85 %);
  * with --direct-ingress (a cluster with `edgeuad serve --direct-ingress`'s setting): the same two goals
    measured again on the replicas' own ports (server.direct_urls), beside the proxy's in the same run.
The load generator's client threads run on the same cores as the server; the report says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import RESULTS, publish  # noqa: E402
from bench_pipeline import make_timing_bundle  # noqa: E402

from edgeuad.atomic import atomic_write_bytes  # noqa: E402
from edgeuad.bench import percentiles, synthetic_frames  # noqa: E402
from edgeuad.detector import Detector  # noqa: E402
from edgeuad.serve.config import BundleSpec, ServeConfig  # noqa: E402
from edgeuad.serve.loadgen import LoadConfig, LoadReport, run_load  # noqa: E402
from edgeuad.serve.server import direct_urls  # noqa: E402

log = logging.getLogger("edgeuad.benchmarks")


class InProcess:
    """The baseline: JPEG decode + `Detector.score` / `score_batch` in this process (what serving adds to)."""

    def __init__(self, bundle: str, threads: int, frames: Sequence[np.ndarray]) -> None:
        self.det = Detector(bundle, threads=threads, color="bgr")  # cv2 decodes to BGR
        self.threads = threads
        self.frames = frames
        self.i = 0
        for b in frames[:2]:
            self.det.score(cv2.imdecode(b, cv2.IMREAD_COLOR))

    def latencies(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.det.score(cv2.imdecode(self.frames[self.i % len(self.frames)], cv2.IMREAD_COLOR), return_map=False)
            out.append((time.perf_counter() - t0) * 1e3)
            self.i += 1
        return out

    def throughput(self, batch: int, seconds: float) -> float:
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2 * batch:
            self.det.score_batch([cv2.imdecode(self.frames[(n + k) % len(self.frames)], cv2.IMREAD_COLOR)
                                  for k in range(batch)], return_map=False)
            n += batch
        return n / (time.perf_counter() - t0)


# A valid score answer for `Client.score` (request id filled in per request), with no work behind it.
_FLOOR_ANSWER = {"score": 0.0, "normalized": 0.0, "is_anomaly": False, "threshold": 1.0, "bundle": "floor",
                 "digest": "", "replica": "floor", "batch_size": 1, "frame_shape": [0, 0],
                 "latency_ms": {"batch": 0.0, "decode": 0.0}}


def deploy_floor(cfg: ServeConfig, name: str = "floor") -> str:
    """Ray Serve's own cost on this machine: an application on the same proxy that reads the request body
    and answers a fixed score JSON (no decode, no model, no batching).  What `edgeuad serve` adds beyond
    this is the replica's code; this much any Ray Serve HTTP deployment pays."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from edgeuad.serve import protocol as P
    from edgeuad.serve.server import QUIET_LOGS, base_url

    # a local, not the global: Ray ships the class with its closure, and a replica cannot import this script
    answer = dict(_FLOOR_ANSWER)

    # reserves no CPU: it idles unless measured, and must not take a replica's place in the cluster
    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class ServeFloor:
        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(json.dumps({**answer, "request_id": request.headers.get(P.REQUEST_ID_HEADER)}),
                            media_type=P.JSON_TYPE)

    serve.run(ServeFloor.bind(), name=name, route_prefix=f"/{name}", logging_config=QUIET_LOGS)
    return base_url(cfg, name)


def paired_overhead(local: InProcess, url: str, floor_url: str, frames: Sequence[bytes], rounds: int,
                    n: int) -> dict[str, Any]:
    """Added latency at batch 1, robust to a shared machine's drifting load: blocks of n frames in process,
    served, and to Ray Serve's floor app (`deploy_floor`) alternate, the order rotating every round; per
    round p50(served) - p50(in process), and p50(floor): the part of it any Ray Serve HTTP app pays here.
    Also, per request, what the server did besides the in-process work: round trip - (decode + the
    replica's batch time)."""
    from edgeuad.client import Client

    diffs, floors, direct = [], [], []
    lat: dict[str, list[float]] = {"local": [], "served": [], "floor": []}
    sides = ("local", "served", "floor")
    with Client(url, retries=0) as c, Client(floor_url, retries=0) as cf:
        c.score(frames[0])
        cf.score(frames[0])
        for r in range(rounds):
            got: dict[str, list[float]] = {}
            for side in sides[r % 3:] + sides[:r % 3]:
                if side == "local":
                    got[side] = local.latencies(n)
                    continue
                ms = []
                for k in range(n):
                    res = (c if side == "served" else cf).score(frames[(r * n + k) % len(frames)])
                    ms.append(res.round_trip_ms)
                    if side == "served":
                        direct.append(res.round_trip_ms - res.latency_ms["batch"] - res.latency_ms["decode"])
                got[side] = ms
            diffs.append(float(np.median(got["served"]) - np.median(got["local"])))
            floors.append(float(np.median(got["floor"])))
            for side in sides:
                lat[side] += got[side]
    return {"rounds": rounds, "frames_per_block": n, "added_p50_ms_median": float(np.median(diffs)),
            "added_p50_ms_rounds": diffs, "floor_p50_ms_median": float(np.median(floors)),
            "floor_p50_ms_rounds": floors, "direct_overhead_ms": percentiles(direct, (50, 99)),
            "in_process_ms": percentiles(lat["local"], (50, 99)), "served_ms": percentiles(lat["served"], (50, 99)),
            "floor_ms": percentiles(lat["floor"], (50, 99))}


def paired_handle_overhead(local: InProcess, app: str, frames: Sequence[np.ndarray], rounds: int,
                           n: int) -> dict[str, Any]:
    """Added latency on the camera fan-in's door: a Serve handle call `score_array(frame)` with a decoded
    frame (what each camera actor sends the replicas) vs `Detector.score` of the same frame in this process
    (no decode on either side), in alternating blocks of n frames; per round p50(handle) - p50(in process).
    No HTTP proxy on this path: the frame goes through Ray's object transfer to the replica."""
    from ray import serve

    handle = serve.get_app_handle(app)
    handle.score_array.remote(frames[0]).result()
    diffs: list[float] = []
    lat: dict[str, list[float]] = {"local": [], "handle": []}
    for r in range(rounds):
        got: dict[str, list[float]] = {}
        for side in (("local", "handle") if r % 2 == 0 else ("handle", "local")):
            ms = []
            for k in range(n):
                f = frames[(r * n + k) % len(frames)]
                t0 = time.perf_counter()
                if side == "local":
                    local.det.score(f, return_map=False)
                else:
                    handle.score_array.remote(f).result()
                ms.append((time.perf_counter() - t0) * 1e3)
            got[side] = ms
        diffs.append(float(np.median(got["handle"]) - np.median(got["local"])))
        for side in got:
            lat[side] += got[side]
    return {"rounds": rounds, "frames_per_block": n, "added_p50_ms_median": float(np.median(diffs)),
            "added_p50_ms_rounds": diffs, "in_process_ms": percentiles(lat["local"], (50, 99)),
            "handle_ms": percentiles(lat["handle"], (50, 99))}


def paired_throughput(local: InProcess, load: LoadConfig, clients: int, batch: int, rounds: int,
                      seconds: float) -> dict[str, Any]:
    """In-process score_batch(batch) and the server at `clients` closed-loop clients, alternating."""
    from edgeuad.serve.loadgen import make_frames, run_level

    frames = make_frames(load)
    lcfg = dataclasses.replace(load, duration_s=seconds, concurrency=[clients])
    ratios, loc, srv = [], [], []
    for r in range(rounds):
        order = ("local", "served") if r % 2 == 0 else ("served", "local")
        got = {}
        for side in order:
            got[side] = local.throughput(batch, seconds) if side == "local" else \
                run_level(lcfg, frames, clients).throughput
        ratios.append(got["served"] / got["local"])
        loc.append(got["local"])
        srv.append(got["served"])
    return {"rounds": rounds, "seconds": seconds, "clients": clients, "in_process_fps": loc, "served_fps": srv,
            "ratio_median": float(np.median(ratios)), "ratios": ratios}


def served(cfg: ServeConfig, name: str, bundle: str) -> str:
    from edgeuad.serve.server import deploy_bundle

    return deploy_bundle(BundleSpec(name, bundle), cfg)


def fmt_rows(label: str, rep: LoadReport) -> list[str]:
    out = []
    for lv in rep.levels:
        lat = lv.latency_ms
        out.append(f"| {label} | {lv.clients} | {lv.throughput:.1f} | {lat.get('p50', float('nan')):.1f} | "
                   f"{lat.get('p99', float('nan')):.1f} | {lv.server_ms.get('p50', float('nan')):.1f} | "
                   f"{lv.mean_batch:.2f} | {lv.requests} | {lv.errors} |")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle directory or .tar")
    src.add_argument("--make-bundle", choices=("recontrast", "patchcore", "reconpatch"),
                     help="build an untrained bundle of this method (timing only)")
    ap.add_argument("--image-size", type=int, default=256, help="network input size for --make-bundle")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per client count")
    ap.add_argument("--max-requests", type=int, default=2000, help="answers per client count")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per replica and in process")
    ap.add_argument("--latency-frames", type=int, default=20, help="in-process batch-1 frames per thread count")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds of the paired measurements")
    ap.add_argument("--round-frames", type=int, default=8, help="frames per side per round (added latency)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--stem", default="serve")
    ap.add_argument("--low-latency", action="store_true",
                    help="serve on `edgeuad serve --low-latency`'s request path (serve.config.LOW_LATENCY_ENV)")
    ap.add_argument("--direct-ingress", action="store_true",
                    help="start the cluster with `edgeuad serve --direct-ingress`'s setting and measure the goals on "
                         "the replicas' own ports too")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    levels = [int(x) for x in a.concurrency.split(",") if x]

    with tempfile.TemporaryDirectory(prefix="edgeuad-bench-serve-") as tmp:
        bundle = a.bundle
        if bundle is None:
            log.info("building an untrained %s bundle (%d px) for timing", a.make_bundle, a.image_size)
            bundle = str(make_timing_bundle(Path(tmp), a.make_bundle, a.image_size))
        frames = synthetic_frames(8, (480, 640))
        local = {t: InProcess(bundle, t, frames) for t in (a.threads, 2 * a.threads)}
        inproc = {t: {"latency_ms": percentiles(d.latencies(a.latency_frames), (50, 99)),
                      "throughput": d.throughput(a.max_batch, a.duration)} for t, d in local.items()}
        log.info("in process: %s", inproc)

        from edgeuad.serve.config import REQUEST_PATH_KEYS
        from edgeuad.serve.server import shutdown, start_cluster, start_http, undeploy

        cfg = ServeConfig(port=a.port, max_batch=a.max_batch, batch_wait_ms=a.batch_wait_ms, threads=a.threads,
                          num_cpus=8, replica_cpus=1.0, low_latency=a.low_latency,
                          direct_ingress=a.direct_ingress)
        started = start_cluster(cfg)
        ray_path = {k: os.environ.get(k, "Ray's default") for k in REQUEST_PATH_KEYS}
        tput_direct = overhead_direct = None
        try:
            start_http(cfg)
            # Each measurement runs with only its own applications deployed: on two cores an idle replica's
            # health checks and metrics are noise in a 10 ms difference.
            urls = {"r1": served(cfg, "r1", bundle), "r2": served(dataclasses.replace(cfg, replicas=2), "r2", bundle)}
            load = LoadConfig(url=urls["r1"], concurrency=levels, duration_s=a.duration,
                              max_requests=a.max_requests, encoding="jpeg", warmup_requests=1)
            sweeps = {"1 replica": run_load(load),
                      "2 replicas": run_load(dataclasses.replace(load, url=urls["r2"]))}
            undeploy("r2")
            tput_rounds = a.rounds // 2 * 2 or 2
            tput = paired_throughput(local[a.threads], load, max(levels), a.max_batch, tput_rounds, a.duration)
            if a.direct_ingress:
                tput_direct = paired_throughput(local[a.threads], dataclasses.replace(load, url=direct_urls(cfg, "r1")[0]),
                                                max(levels), a.max_batch, tput_rounds, a.duration)
            undeploy("r1")
            enc = [bytes(b) for b in frames]
            b1 = served(dataclasses.replace(cfg, max_batch=1), "b1", bundle)
            floor = deploy_floor(cfg)
            overhead = paired_overhead(local[a.threads], b1, floor, enc, a.rounds, a.round_frames)
            if a.direct_ingress:
                overhead_direct = paired_overhead(local[a.threads], direct_urls(cfg, "b1", replicas=1)[0],
                                                  direct_urls(cfg, "floor", replicas=1)[0], enc, a.rounds, a.round_frames)
            # the camera actors' door; a handle called from this plain thread needs Serve's router on its
            # own loop, which --low-latency turns off (serve.cameras.camera_actor)
            by_handle = None if a.low_latency else paired_handle_overhead(
                local[a.threads], "b1", [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in frames], a.rounds,
                a.round_frames)
        finally:
            shutdown(started)
            for d in local.values():
                d.det.close()

    info = sweeps["1 replica"].server
    added = overhead["added_p50_ms_median"]
    ratio = tput["ratio_median"]
    bundle_desc = (f"untrained {a.make_bundle} ({a.image_size} px, timing only)" if a.make_bundle
                   else f"{info['bundle']['method']} {info['bundle']['input_size']} ({bundle})")
    t1, t2 = a.threads, 2 * a.threads
    body = [
        f"\n`edgeuad serve` on a local Ray {info['server']['ray']} cluster, loopback HTTP, {bundle_desc}, "
        f"640x480 JPEG frames decoded by the server; {t1} intra-op thread(s) per replica; max batch "
        f"{a.max_batch}, batch wait {a.batch_wait_ms} ms; closed loop, {a.duration:g} s or {a.max_requests} "
        f"answers per client count. Ray Serve request path: "
        f"{' '.join(cfg.request_path_flags()) or 'default'}: "
        f"{', '.join(f'{k}={v}' for k, v in ray_path.items())}. "
        f"Client threads, Ray (proxy, controller, raylet) and the replicas share the "
        f"machine's cores; load average at the end: {os.getloadavg()[0]:.1f} (a shared machine: other jobs ran).\n",
        f"In process (decode + `Detector.score`): {t1} thread(s) p50 {inproc[t1]['latency_ms']['p50']:.1f} ms / "
        f"decode + `score_batch({a.max_batch})` {inproc[t1]['throughput']:.1f} frames/s; {t2} threads p50 "
        f"{inproc[t2]['latency_ms']['p50']:.1f} ms / {inproc[t2]['throughput']:.1f} frames/s.\n",
        "| server | clients | frames/s | p50 ms | p99 ms | server p50 ms | mean batch | answers | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in sweeps.items():
        body += fmt_rows(k, r)
    body += [
        "",
        f"- Added latency at batch 1 (1 client, 1 replica with max batch 1 vs in process with {t1} thread(s), "
        f"{overhead['rounds']} alternating rounds of {overhead['frames_per_block']} frames, median of per-round p50 "
        f"differences): **{added:.1f} ms** (rounds: {', '.join(f'{d:.1f}' for d in overhead['added_p50_ms_rounds'])}); "
        f"per request, round trip minus the replica's decode and Detector time: p50 "
        f"{overhead['direct_overhead_ms']['p50']:.1f} ms, p99 {overhead['direct_overhead_ms']['p99']:.1f} ms. "
        f"Goal <= 3 ms: **{'met' if added <= 3.0 else 'NOT met'}**.",
        f"- Ray Serve's floor on this machine (an app on the same proxy that reads the body and answers a fixed "
        f"score JSON: no decode, no model; same client, same frames, in the same rotating rounds): round trip "
        f"p50 **{overhead['floor_p50_ms_median']:.1f} ms** (rounds: "
        f"{', '.join(f'{d:.1f}' for d in overhead['floor_p50_ms_rounds'])}). Of the added latency, "
        f"{added - overhead['floor_p50_ms_median']:.1f} ms is the replica's own code (body read, decode thread, "
        f"batch queue, inference thread, JSON) beyond that floor.",
        (f"- The camera fan-in's door (a Serve handle call `score_array` with the decoded 640x480 frame, what each "
         f"camera actor sends; the same max-batch-1 replica; no HTTP proxy) vs in-process `Detector.score` of "
         f"the same decoded frames, {by_handle['rounds']} alternating rounds of {by_handle['frames_per_block']} "
         f"frames: **{by_handle['added_p50_ms_median']:.1f} ms** added (rounds: "
         f"{', '.join(f'{d:.1f}' for d in by_handle['added_p50_ms_rounds'])}; handle p50 "
         f"{by_handle['handle_ms']['p50']:.1f} ms vs in process {by_handle['in_process_ms']['p50']:.1f} ms). "
         f"The goal above is read on the HTTP door; this is the cameras' path, stated."
         if by_handle is not None else
         "- The camera fan-in's door (Serve handle calls): not measured on the --low-latency path (a handle "
         "called from the benchmark's plain thread needs Serve's router on its own loop)."),
        f"- Throughput at saturation with batching (1 replica, {tput['clients']} clients, vs in-process "
        f"`score_batch({a.max_batch})` with the same {t1} thread(s), {tput['rounds']} alternating rounds of "
        f"{tput['seconds']:g} s): served {', '.join(f'{v:.1f}' for v in tput['served_fps'])} vs in process "
        f"{', '.join(f'{v:.1f}' for v in tput['in_process_fps'])} frames/s = **{100 * ratio:.0f} %** (median "
        f"ratio). Goal >= 85 %: **{'met' if ratio >= 0.85 else 'NOT met'}**.",
    ]
    if overhead_direct is not None and tput_direct is not None:
        added_d, ratio_d = overhead_direct["added_p50_ms_median"], tput_direct["ratio_median"]
        body += [
            f"- Added latency at batch 1 on the direct-ingress door (the same max-batch-1 replica at its own port, "
            f"no proxy; the same rounds against in process): **{added_d:.1f} ms** (rounds: "
            f"{', '.join(f'{d:.1f}' for d in overhead_direct['added_p50_ms_rounds'])}); per request, round trip minus "
            f"the replica's decode and Detector time: p50 {overhead_direct['direct_overhead_ms']['p50']:.1f} ms, p99 "
            f"{overhead_direct['direct_overhead_ms']['p99']:.1f} ms; the floor app at its own port: p50 "
            f"**{overhead_direct['floor_p50_ms_median']:.1f} ms**. Goal <= 3 ms: "
            f"**{'met' if added_d <= 3.0 else 'NOT met'}**.",
            f"- Throughput at saturation on the direct-ingress door (the 1-replica application's own port, "
            f"{tput_direct['clients']} clients, {tput_direct['rounds']} alternating rounds of {tput_direct['seconds']:g} s "
            f"against in-process `score_batch({a.max_batch})`): served "
            f"{', '.join(f'{v:.1f}' for v in tput_direct['served_fps'])} vs in process "
            f"{', '.join(f'{v:.1f}' for v in tput_direct['in_process_fps'])} frames/s = **{100 * ratio_d:.0f} %**. "
            f"Goal >= 85 %: **{'met' if ratio_d >= 0.85 else 'NOT met'}**.",
        ]
    body.append("")
    publish(a.stem, "\n".join(body))
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS / f"{a.stem}.json", json.dumps(
        {"bundle": bundle_desc, "ray_serve_env": ray_path, "in_process": inproc, "served": {k: r.to_dict() for k, r in sweeps.items()},
         "paired_overhead": overhead, "paired_handle_overhead": by_handle, "paired_throughput": tput,
         "paired_overhead_direct": overhead_direct, "paired_throughput_direct": tput_direct}, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
