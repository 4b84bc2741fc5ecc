"""`edgeuad serve`: start or join a Ray cluster, serve each bundle as one application, swap bundles live.

One Ray Serve application per bundle, named after it and routed at `/<name>` (protocol.py lists the
API under it).  Deploying a bundle under a name that is already served is the hot swap: Ray Serve
rolls the application's replicas over to the new bundle, starting new replicas while the old ones
finish their requests, so no request fails (tests/python/test_serve.py checks it under load).

Local clusters listen for HTTP on 127.0.0.1 by default.  Ray's own control ports (GCS, raylet,
object manager) bind every interface and cannot be limited to loopback (Ray refuses 127.0.0.1 as a
node address); Ray (2.60 here) guards them with token authentication by default.  Use a firewall on a
shared network.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable, Optional

from ..bundle import Bundle
from . import protocol as P
from .config import DIRECT_INGRESS_ENV, REQUEST_PATH_ENV, BundleSpec, ServeConfig, parse_bundles

__all__ = ["BundleSpec", "ServeConfig", "ServeError", "deploy_bundle", "direct_urls", "parse_bundles", "run_server",
           "shutdown", "start_cluster", "start_http", "undeploy"]

log = logging.getLogger(__name__)

# Serve logs every request at INFO by default: on a camera line that is a log line per frame.
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}


class ServeError(RuntimeError):
    """The cluster or an application could not be started, joined or updated."""


# ---------------------------------------------------------------------------------------------
# cluster and HTTP
# ---------------------------------------------------------------------------------------------
def start_cluster(cfg: ServeConfig) -> bool:
    """Join `cfg.address` or start a local cluster (no dashboard, no usage stats).  Returns True when
    this process started the cluster (and so must shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve marks its HTTP proxy unhealthy and kills it after three 5 s readiness checks; on a busy
    # edge box (other jobs on the cores) the proxy can take longer to start, and `serve.start` then
    # fails with ActorDiedError.  Read by the Serve controller, which inherits this environment.
    for var, seconds in (("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30"),
                         ("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")):
        os.environ.setdefault(var, seconds)
    for flag in cfg.request_path_flags():
        env = REQUEST_PATH_ENV[flag]
        if cfg.address:
            raise ServeError(f"{flag} sets Ray Serve's request path where the cluster starts; for a joined "
                             f"cluster set {', '.join(f'{k}={v}' for k, v in env.items())} in the "
                             "environment of its `ray start`")
        for var, value in env.items():  # a user's own setting of any of them wins
            os.environ.setdefault(var, value)
    try:
        import ray
    except ImportError as e:
        raise ServeError(f"edgeuad serve needs Ray Serve: pip install 'edgeuad[serve]' ({e})") from e

    if ray.is_initialized():
        return False
    try:
        if cfg.address:
            ray.init(address=cfg.address, logging_level=logging.WARNING)
            return False
        ray.init(num_cpus=cfg.num_cpus or cfg.logical_cpus(), include_dashboard=False,
                 logging_level=logging.WARNING)
        return True
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ServeError(f"cannot {'join Ray at ' + cfg.address if cfg.address else 'start a local Ray cluster'}: {e}") from e


def start_http(cfg: ServeConfig) -> None:
    """Start Serve's HTTP proxy on host:port (a no-op, with Ray's note, when Serve already runs there)."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port},
                logging_config=QUIET_LOGS)


def base_url(cfg: ServeConfig, name: str) -> str:
    """The application's URL as this config names the proxy (a joined cluster keeps the host and port
    its Serve was first started with: pass the same --host/--port)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"http://{host}:{cfg.port}/{name}"


_UNREACHABLE: set[tuple[str, int]] = set()  # replicas of other nodes already warned about (direct_urls)


def direct_urls(cfg: ServeConfig, name: str, replicas: Optional[int] = None, timeout_s: float = 60.0) -> list[str]:
    """The application's direct-ingress base URLs (`--direct-ingress`): one per running replica, on the port
    Ray gave it, sorted.  Waits until `replicas` (default cfg.replicas) have one.  Ray lists them through its
    controller's target groups, what its own HAProxy mode routes by (no public call yet: tested on Ray 2.60 by
    tests/python/test_serve_direct.py).  Raises ServeError when the cluster runs without direct ingress or
    when this Ray has no such call."""
    import time

    import ray
    from ray.serve.context import _get_global_client

    want = cfg.replicas if replicas is None else replicas
    targets_of = getattr(_get_global_client()._controller, "get_target_groups", None)
    if targets_of is None:  # the serve extra allows older Rays than the one --direct-ingress was tested on
        raise ServeError(f"Ray {getattr(ray, '__version__', '?')} lists no direct-ingress target groups "
                         "(edgeuad's --direct-ingress is tested on Ray 2.60)")
    deadline = time.monotonic() + timeout_s
    while True:
        targets = [(t.ip, t.port) for g in ray.get(targets_of.remote(name))
                   if str(getattr(g.protocol, "value", g.protocol)) == "HTTP" for t in g.targets]
        # without direct ingress (or before a replica runs) Ray answers with the proxy itself
        replica_ports = [(ip, port) for ip, port in targets if port != cfg.port]
        if len(replica_ports) >= want:
            break
        if time.monotonic() >= deadline:
            why = (f"the cluster serves it through the proxy only (started without --direct-ingress, or "
                   f"{', '.join(DIRECT_INGRESS_ENV)} unset where `ray start` ran)" if not replica_ports else
                   f"{len(replica_ports)} of {want} replica(s) have a direct-ingress port after {timeout_s:g} s")
            raise ServeError(f"{name}: {why}")
        time.sleep(0.2)
    # A replica listens on --host of its own node: a wildcard host is reached at the node's address; a
    # specific one (loopback by default) only on this node, so a replica of another node that joined the
    # cluster has no URL from here.
    if cfg.host in ("0.0.0.0", "::", ""):
        return sorted(f"http://{ip}:{port}/{name}" for ip, port in replica_ports)
    here = ray.util.get_node_ip_address()
    elsewhere = [f"{ip}:{port}" for ip, port in replica_ports if ip != here and (ip, port) not in _UNREACHABLE]
    _UNREACHABLE.update((ip, port) for ip, port in replica_ports if ip != here)
    if elsewhere:  # once per replica: the server's watcher asks every few seconds
        log.warning("%s: replica(s) at %s listen on %s of their own node, out of reach from here (use --host "
                    "0.0.0.0 to expose them)", name, ", ".join(elsewhere), cfg.host)
    return sorted(f"http://{cfg.host}:{port}/{name}" for ip, port in replica_ports if ip == here)


def deploy_bundle(spec: BundleSpec, cfg: ServeConfig) -> str:
    """Serve `spec` under /<name>, or swap the bundle of the running application of that name.
    Returns the application's base URL once every replica of the new version is up."""
    from ray import serve

    from .replica import BundleScorer

    Bundle.load(spec.path)  # a missing or corrupt bundle fails here, not as a crash loop of replicas
    rc = cfg.replica_config(spec)
    app = BundleScorer.options(
        name="BundleScorer", num_replicas=cfg.replicas, ray_actor_options={"num_cpus": cfg.replica_cpus},
        # room for max_batch requests in the batch being computed, the next batch, and decoding
        max_ongoing_requests=max(64, 4 * cfg.max_batch),
        # a swap starts every new replica before an old one stops: old ones serve until then
        max_surge_percent=100).bind(rc.to_dict())
    try:
        serve.run(app, name=spec.name, route_prefix=f"/{spec.name}", logging_config=QUIET_LOGS)
    except RuntimeError as e:
        raise ServeError(f"deploying {spec.name} ({spec.path}) failed: {e}") from e
    url = base_url(cfg, spec.name)
    log.info("serving %s at %s (%s, %d replica(s))", spec.name, url, spec.path, cfg.replicas)
    return url


def undeploy(name: str) -> None:
    from ray import serve

    serve.delete(name)


def shutdown(started_cluster: bool) -> None:
    import ray
    from ray import serve

    if started_cluster:
        serve.shutdown()
        ray.shutdown()
    elif ray.is_initialized():
        ray.shutdown()  # disconnect this driver; the cluster and detached apps stay


# ---------------------------------------------------------------------------------------------
# the CLI's loop
# ---------------------------------------------------------------------------------------------
def run_server(cfg: ServeConfig, stop: Optional[threading.Event] = None,
               write: Optional[Callable[[str], Any]] = None) -> int:
    """Start/join, deploy every bundle, run the cameras, then serve until SIGINT/SIGTERM (or `stop`)."""
    import sys

    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    if not cfg.bundles:
        raise ValueError("edgeuad serve: give at least one --bundle PATH or NAME=PATH")
    stop = stop or threading.Event()
    cameras = None
    if cfg.cameras:  # a bad cameras.yaml fails before a cluster is started
        from .cameras import CamerasConfig

        cameras = CamerasConfig.from_yaml(cfg.cameras, default_bundle=cfg.bundles[0].name)
    started = start_cluster(cfg)
    fleet = None
    deployed: list[str] = []
    try:
        start_http(cfg)
        for spec in cfg.bundles:
            url = deploy_bundle(spec, cfg)
            deployed.append(spec.name)
            write(f"serving {spec.name} at {url} ({cfg.replicas} replica(s)); POST {url}{P.SCORE_PATH}\n")
        direct = _DirectDoors(cfg, deployed, write) if cfg.direct_ingress else None
        if cfg.detach:
            write("deployed; detached (the applications stay on the cluster)\n")
            return 0
        import ray

        write(f"ray address: {ray.get_runtime_context().gcs_address} (hot swap: edgeuad serve --address ADDR "
              f"--bundle NAME=NEW_BUNDLE --detach)\n")
        if cameras is not None:
            from .cameras import CameraFleet

            fleet = CameraFleet(cameras)
            fleet.start()
            write(f"cameras: {', '.join(fleet.names)} -> {fleet.out_dir}\n")
        _wait_for_signal(stop, [p for p in (fleet, direct) if p is not None])
        return 0
    finally:
        if fleet is not None:
            fleet.stop()
        if not cfg.detach and not started:
            for name in deployed:  # a foreground run on a shared cluster takes its apps with it
                try:
                    undeploy(name)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    log.exception("could not delete application %s", name)
        shutdown(started)


class _DirectDoors:
    """Prints each application's direct-ingress URLs, and again whenever they change (a replica restarted
    or a hot swap moved them to new ports), so a client of the direct door can follow them."""

    def __init__(self, cfg: ServeConfig, names: list[str], write: Callable[[str], Any]) -> None:
        self.cfg, self.names, self.write = cfg, names, write
        self.seen = {n: direct_urls(cfg, n) for n in names}
        for n, urls in self.seen.items():
            write(f"direct ingress for {n}: {' '.join(urls)} (one port per replica, no proxy hop)\n")

    def poll(self) -> None:
        for n in self.names:
            try:
                urls = direct_urls(self.cfg, n, replicas=0)
            except Exception:  # noqa: BLE001 - the controller busy or restarting: keep the last answer
                log.exception("could not list the direct-ingress ports of %s", n)
                continue
            if urls and urls != self.seen[n]:
                self.seen[n] = urls
                self.write(f"direct ingress for {n} now: {' '.join(urls)}\n")


def _wait_for_signal(stop: threading.Event, pollers: list[Any], poll_s: float = 2.0) -> None:
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(poll_s):
            for p in pollers:
                p.poll()
    except KeyboardInterrupt:
        log.info("interrupted: shutting down")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

