"""Configs of `edgeuad serve` (dataclasses, no ray): what the CLI fills in and what each replica gets."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from . import protocol as P
from .codec import Limits


# `edgeuad serve --low-latency`: Ray Serve's request path without its extra threads (read by the proxy,
# the controller and the replicas, which inherit this process's environment when it starts the cluster;
# a joined cluster keeps the environment of its `ray start`).  By default a replica runs user code on a
# second event-loop thread and its router on a third, and the proxy reaches replicas through Ray actor
# calls.  These are the settings Ray's own RAY_SERVE_THROUGHPUT_OPTIMIZED mode picks, without its
# direct-ingress part (replicas on their own ports), which would bypass the one --host/--port.  Opt-in,
# not the default: interleaved bare runs here (one replica, batch 1) took ~3 ms off a request, but three
# pairs of the full benchmark (RESULTS section 7) put it 9.5 ms under, equal to and 3.2 ms over the
# default on this noisy 2-core VM, and with the router on the caller's loop any handle called from a
# plain thread fails (cameras.py keeps the router loop for its actors).  Our replica keeps blocking
# work (decode, inference) off the event loop, which running user code on the replica's main loop requires.
LOW_LATENCY_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}

# `edgeuad serve --direct-ingress`: Ray Serve's direct ingress (read where the cluster starts, like the above).
# Every replica of an application also answers HTTP on a port of its own (Ray allocates them from
# RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT..MAX, 30000-31000 by default, on --host), so a client that calls it
# skips the proxy actor and Ray's hop to the replica: on this 2-core VM a no-op app answered in 0.3-0.6 ms
# there against 5-7 ms through the proxy (RESULTS section 7).  The proxy keeps serving every application at
# --host/--port.  A replica's port is its own: a restarted or swapped replica comes back on another one, so a
# client of the direct door follows `server.direct_urls` (Ray's HAProxy mode balances over them for a fleet).
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}

# Which flag sets which of the above (start_cluster applies them; replicas and bench_serve report every key).
REQUEST_PATH_ENV = {"--low-latency": LOW_LATENCY_ENV, "--direct-ingress": DIRECT_INGRESS_ENV}
REQUEST_PATH_KEYS = tuple(k for env in REQUEST_PATH_ENV.values() for k in env)


@dataclass
class BundleSpec:
    """A bundle to serve under a name: from `--bundle PATH` (name = the folder's name) or `--bundle NAME=PATH`."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> "BundleSpec":
        name, sep, path = text.partition("=")
        if not sep:
            path = name
            p = Path(path)
            name = p.name[:-4] if p.name.endswith(".tar") else p.name
        if not path:
            raise ValueError(f"--bundle {text!r}: empty path")
        if not P.NAME_RE.match(name):
            raise ValueError(f"--bundle {text!r}: name {name!r} must match {P.NAME_RE.pattern} "
                             f"(it becomes the URL prefix /{name}); use NAME=PATH")
        return cls(name=name, path=str(Path(path).expanduser().resolve()))


@dataclass
class ServeConfig:
    """Everything `edgeuad serve` takes; each field is one CLI flag (tests/python/test_serve_codec.py checks they arrive)."""

    bundles: list[BundleSpec] = field(default_factory=list)
    replicas: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    address: Optional[str] = None         # join this Ray cluster instead of starting a local one
    num_cpus: Optional[int] = None        # logical CPUs of a local cluster (None: see logical_cpus)
    replica_cpus: float = 1.0             # logical CPUs each replica reserves
    backend: str = "auto"
    threads: int = 0                      # intra-op threads per replica (0 = library default)
    max_body_mb: float = 32.0
    max_pixels: int = 40_000_000
    cameras: Optional[str] = None         # cameras.yaml
    detach: bool = False                  # deploy/update and exit, leaving the apps on the cluster
    low_latency: bool = False             # LOW_LATENCY_ENV for a cluster this process starts
    direct_ingress: bool = False          # DIRECT_INGRESS_ENV for a cluster this process starts

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.replica_cpus < 0:
            raise ValueError("replica_cpus must be >= 0")
        names = [b.name for b in self.bundles]
        if len(set(names)) != len(names):
            raise ValueError(f"bundle names must be unique, got {names}")
        if self.detach and not self.address:
            raise ValueError("--detach needs --address: a local cluster ends with the process that started it "
                             "(start one with `ray start --head`, or pass the address a running `edgeuad serve` printed)")
        if self.detach and self.cameras:
            raise ValueError("--detach cannot run cameras: their actors belong to this process")

    def request_path_flags(self) -> list[str]:
        """The request-path flags this config sets (keys of REQUEST_PATH_ENV), in that order."""
        return [f for f, on in zip(REQUEST_PATH_ENV, (self.low_latency, self.direct_ingress)) if on]

    def replica_config(self, spec: BundleSpec) -> ReplicaConfig:
        return ReplicaConfig(name=spec.name, bundle=spec.path, max_batch=self.max_batch,
                             batch_wait_ms=self.batch_wait_ms, backend=self.backend, threads=self.threads,
                             max_body_bytes=int(self.max_body_mb * (1 << 20)), max_pixels=self.max_pixels)

    def logical_cpus(self) -> int:
        """CPUs a local cluster advertises: at least the machine's, and twice what the replicas reserve,
        so that a hot swap can start the new replicas before the old ones stop."""
        needed = self.replicas * max(len(self.bundles), 1) * self.replica_cpus
        return max(os.cpu_count() or 1, math.ceil(2 * needed), 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplicaConfig:
    """What one replica needs to build its Detector and answer requests (a JSON-able dict crosses to Ray)."""

    name: str
    bundle: str
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    backend: str = "auto"
    threads: int = 0
    max_body_bytes: int = 32 << 20
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not P.NAME_RE.match(self.name):
            raise ValueError(f"bundle name {self.name!r} must match {P.NAME_RE.pattern} (it is a URL path segment)")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        Limits(self.max_body_bytes, self.max_pixels)  # validates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReplicaConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ReplicaConfig keys: {sorted(unknown)}")
        return cls(**d)


def parse_bundles(texts: Sequence[str]) -> list[BundleSpec]:
    return [BundleSpec.parse(t) for t in texts]
