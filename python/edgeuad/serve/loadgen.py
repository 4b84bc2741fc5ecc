"""Closed-loop load generator for `edgeuad serve` (`edgeuad bench --serve URL`).

N client threads, each with its own keep-alive `edgeuad.client.Client`, send a frame, wait for the
answer, send the next: the offered load adapts to the server (closed loop), so the numbers are
throughput and latency at N outstanding requests.  Every level is bounded in time (`duration_s`)
and in count (`max_requests`); targets must be loopback addresses (this is a bench, not a load
test of someone else's machine).  Failed requests are counted, never retried (`retries=0`), so a
failure shows.  The client threads share the machine with the server: on a small box they take CPU
from it, which the report states.  No ray, no torch: only HTTP.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import numpy as np

from ..atomic import atomic_write_bytes
from ..bench import folder_frames, percentiles, synthetic_frames
from ..client import Client, ServeError

log = logging.getLogger(__name__)

ENCODINGS = ("jpeg", "png", "raw")


@dataclass
class LoadConfig:
    """One load run.  concurrency: the client counts to sweep; each level runs until `duration_s`
    passes or `max_requests` answers arrived.  frames: synthetic textured JPEGs of `frame_size`
    (or the images of `images`), sent as `encoding` (raw = decoded pixels, no decode on the server)."""

    url: str
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    duration_s: float = 5.0
    max_requests: int = 2000
    warmup_requests: int = 2          # per client before the clock starts
    frame_size: tuple[int, int] = (480, 640)
    n_frames: int = 8
    images: Optional[str] = None
    encoding: str = "jpeg"
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.concurrency = [int(c) for c in self.concurrency]
        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 256:
            raise ValueError(f"concurrency levels must be 1..256, got {self.concurrency}")
        if self.duration_s <= 0 or self.duration_s > 600:
            raise ValueError(f"duration_s must be in (0, 600], got {self.duration_s}")
        if self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")
        if self.warmup_requests < 0:
            raise ValueError("warmup_requests must be >= 0")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        check_loopback(self.url)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d


@dataclass
class LevelResult:
    clients: int
    requests: int                      # answered (2xx)
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    throughput: float                  # answers per second
    latency_ms: dict[str, float]       # round trip seen by the clients: p50/p95/p99/mean/min/max/n
    server_ms: dict[str, float]        # the replica's own time per request (read .. response)
    mean_batch: float
    replicas: int                      # distinct replicas that answered


@dataclass
class LoadReport:
    config: dict[str, Any]
    server: dict[str, Any]
    levels: list[LevelResult]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "server": self.server, "levels": [asdict(lv) for lv in self.levels]}

    def table(self) -> str:
        rows = ["| clients | answers | errors | frames/s | p50 ms | p99 ms | server p50 ms | mean batch | replicas |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for lv in self.levels:
            lat = lv.latency_ms
            rows.append(f"| {lv.clients} | {lv.requests} | {lv.errors} | {lv.throughput:.1f} | "
                        f"{lat.get('p50', float('nan')):.1f} | {lat.get('p99', float('nan')):.1f} | "
                        f"{lv.server_ms.get('p50', float('nan')):.1f} | {lv.mean_batch:.2f} | {lv.replicas} |")
        return "\n".join(rows)

    def write(self, out_dir: str | Path, stem: str = "serve_bench") -> list[Path]:
        out = Path(out_dir)
        js, md = out / f"{stem}.json", out / f"{stem}.md"
        atomic_write_bytes(js, json.dumps(self.to_dict(), indent=2).encode())
        atomic_write_bytes(md, (self.table() + "\n").encode())
        return [js, md]


def check_loopback(url: str) -> None:
    """ValueError unless every address `url`'s host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {host!r}: {e}") from e
    bad = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if bad:
        raise ValueError(f"the load generator only targets loopback addresses; {host} resolves to {sorted(bad)}")


def make_frames(cfg: LoadConfig) -> list[Any]:
    """What the clients send: numpy RGB frames for `raw`, encoded bytes otherwise."""
    import cv2

    bufs = folder_frames(cfg.images, cfg.n_frames) if cfg.images else synthetic_frames(cfg.n_frames, cfg.frame_size)
    imgs = [cv2.cvtColor(cv2.imdecode(b, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for b in bufs]
    if cfg.encoding == "raw":
        return imgs
    if cfg.encoding == "jpeg" and not cfg.images:
        return [b.tobytes() for b in bufs]
    ext = ".png" if cfg.encoding == "png" else ".jpg"
    return [cv2.imencode(ext, np.ascontiguousarray(im[:, :, ::-1]))[1].tobytes() for im in imgs]


def run_level(cfg: LoadConfig, frames: list[Any], clients: int) -> LevelResult:
    budget = threading.Semaphore(cfg.max_requests)
    lock = threading.Lock()
    lat: list[float] = []
    server: list[float] = []
    batches: list[int] = []
    replicas: set[str] = set()
    errors: Counter[str] = Counter()
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    t_start = [0.0]
    t_last = [0.0]

    def client(k: int) -> None:
        with Client(cfg.url, timeout_s=cfg.timeout_s, retries=0) as c:
            for i in range(cfg.warmup_requests):
                try:
                    c.score(frames[(k + i) % len(frames)])
                except Exception:  # noqa: BLE001 - counted in the timed part if it persists
                    pass
            try:
                ready.wait(cfg.timeout_s * (cfg.warmup_requests + 1))
            except threading.BrokenBarrierError:
                return
            go.wait()
            deadline = t_start[0] + cfg.duration_s
            i = k
            while time.perf_counter() < deadline and budget.acquire(blocking=False):
                t0 = time.perf_counter()
                try:
                    r = c.score(frames[i % len(frames)])
                except ServeError as e:
                    with lock:
                        errors[f"{e.status} {e.kind}"] += 1
                    continue
                except Exception as e:  # noqa: BLE001 - e.g. an unparsable answer: counted, never fatal
                    with lock:
                        errors[type(e).__name__] += 1
                    continue
                finally:
                    i += clients
                t1 = time.perf_counter()
                with lock:
                    lat.append((t1 - t0) * 1e3)
                    server.append(float(r.latency_ms.get("server", 0.0)))
                    batches.append(r.batch_size)
                    replicas.add(r.replica)
                    t_last[0] = max(t_last[0], t1)

    threads = [threading.Thread(target=client, args=(k,), name=f"edgeuad-load-{k}", daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        ready.wait(cfg.timeout_s * (cfg.warmup_requests + 1))
    except threading.BrokenBarrierError:
        go.set()
        raise RuntimeError(f"{cfg.url}: the clients' warm-up did not finish") from None
    t_start[0] = time.perf_counter()  # after every client's warm-up
    go.set()
    for t in threads:
        t.join(cfg.duration_s + cfg.timeout_s + 10)
    seconds = max(t_last[0] - t_start[0], 1e-9)
    n = len(lat)
    return LevelResult(clients=clients, requests=n, errors=sum(errors.values()), error_kinds=dict(errors),
                       seconds=round(seconds, 3), throughput=n / seconds if n else 0.0,
                       latency_ms=percentiles(lat, (50, 95, 99)) if n else {},
                       server_ms=percentiles(server, (50, 99)) if n else {},
                       mean_batch=float(np.mean(batches)) if n else 0.0, replicas=len(replicas))


def run_load(cfg: LoadConfig) -> LoadReport:
    frames = make_frames(cfg)
    with Client(cfg.url, timeout_s=cfg.timeout_s) as c:
        info = c.info()
    levels = []
    for n in cfg.concurrency:
        lv = run_level(cfg, frames, n)
        log.info("%d clients: %.1f frames/s, p50 %.1f ms, %d errors", n, lv.throughput,
                 lv.latency_ms.get("p50", float("nan")), lv.errors)
        levels.append(lv)
    return LoadReport(config=cfg.to_dict(), server=info, levels=levels)
