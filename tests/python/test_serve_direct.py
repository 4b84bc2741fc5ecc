"""`edgeuad serve --direct-ingress` on a real local Ray cluster (loopback only): besides the proxy, every
replica answers on a port of its own.  Checked: `direct_urls` lists one loopback URL per replica, each answers
the Detector's scores and always from the same replica, the proxy still serves the application, bad requests
get the same typed 4xx there, a killed replica comes back on a new port, and a hot swap moves the ports (the
server's watcher prints the new ones), the new ones answering with the new bundle.  Never timing (RESULTS
section 7 has the latency)."""
from __future__ import annotations

import http.client
import json
import os
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the `serve` extra (ray[serve]) is not installed")

from script_helpers import load_benchmark  # noqa: E402
from serve_helpers import free_port, swapped_copy, tiny_bundle  # noqa: E402

from edgeuad.bundle import sha256_file  # noqa: E402
from edgeuad.client import Client  # noqa: E402
from edgeuad.data import read_image  # noqa: E402
from edgeuad.detector import Detector  # noqa: E402
from edgeuad.serve import protocol as P  # noqa: E402
from edgeuad.serve.config import DIRECT_INGRESS_ENV  # noqa: E402
from edgeuad.serve.server import (BundleSpec, ServeConfig, _DirectDoors, deploy_bundle, direct_urls,  # noqa: E402
                                  shutdown, start_cluster, start_http)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

LIMIT_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("serve_direct")
    a, data = tiny_bundle(root)
    b = swapped_copy(a, root / "bundle_b")
    frames = [read_image(p) for p in sorted((data / "test").rglob("*.png"))]
    cfg = ServeConfig(port=free_port(), num_cpus=4, replica_cpus=0.5, threads=1, replicas=2, direct_ingress=True,
                      max_body_mb=LIMIT_BYTES / (1 << 20))
    added = [k for k in DIRECT_INGRESS_ENV if k not in os.environ]
    started = start_cluster(cfg)
    try:
        start_http(cfg)
        url = deploy_bundle(BundleSpec("di", str(a)), cfg)
        yield {"cfg": cfg, "url": url, "a": a, "b": b, "frames": frames}
    finally:
        shutdown(started)
        for k in added:  # later clusters in this process get Ray's defaults
            os.environ.pop(k, None)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", u.path + P.SCORE_PATH, body=body, headers={"Content-Type": content_type})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_each_replica_answers_on_its_own_port(cluster: dict[str, Any]) -> None:
    cfg = cluster["cfg"]
    urls = direct_urls(cfg, "di")
    ports = {urlsplit(u).port for u in urls}
    assert len(urls) == 2 and len(ports) == 2 and cfg.port not in ports
    assert all(u.startswith("http://127.0.0.1:") and u.endswith("/di") for u in urls)  # on --host, loopback
    ref = Detector(cluster["a"], threads=1)
    digest = sha256_file(cluster["a"] / "manifest.json")
    replicas = []
    for u in urls + [cluster["url"]]:  # both replicas directly, then the proxy
        with Client(u, retries=0) as c:
            got = [c.score(f) for f in cluster["frames"]]
        for r, f in zip(got, cluster["frames"]):
            want = ref.score(f)
            assert (r.score, r.normalized, r.is_anomaly, r.digest) == (want.score, want.normalized, want.is_anomaly,
                                                                        digest)
        replicas.append({r.replica for r in got})
    # a direct port is one replica; the two ports are the two replicas
    assert len(replicas[0]) == len(replicas[1]) == 1 and replicas[0] != replicas[1]
    with Client(urls[0], retries=0) as c:  # the setting reached the replica's process
        assert c.info()["server"]["ray_serve_env"]["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    ref.close()


def test_bad_requests_get_typed_errors_on_the_direct_port(cluster: dict[str, Any]) -> None:
    (u, *_) = direct_urls(cluster["cfg"], "di")
    status, body = _post(u, b"not an image", "image/png")
    assert status == 400 and body["error"]["status"] == 400
    status, body = _post(u, b"x", "text/plain")
    assert status == 415 and body["error"]["status"] == 415
    status, body = _post(u, bytes(LIMIT_BYTES + 1), "image/png")  # the replica's size limit holds on its own port
    assert status == 413 and body["error"]["status"] == 413
    with Client(u, retries=0) as c:  # and it keeps serving
        assert c.score(cluster["frames"][0]).bundle == "di"


def test_a_killed_replica_comes_back_on_a_new_port(cluster: dict[str, Any]) -> None:
    """Ray Serve replaces a killed replica; its port goes with it, the survivor keeps its own, the watcher
    prints the new pair, and the new port answers."""
    import time

    from edgeuad.client import ServeError as ClientError

    cfg = cluster["cfg"]
    lines: list[str] = []
    doors = _DirectDoors(cfg, ["di"], lines.append)
    before = doors.seen["di"]
    with Client(before[0], retries=0) as c:
        victim_replica = c.score(cluster["frames"][0]).replica
    victims = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("SERVE_REPLICA::di#") and a["name"].endswith(victim_replica)]
    assert len(victims) == 1, victims
    ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while True:
        after = direct_urls(cfg, "di", replicas=0)
        if len(after) == 2 and before[0] not in after:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.5)
    assert before[1] in after  # the survivor's port is unchanged
    with pytest.raises(ClientError):  # the killed replica's port is gone with it
        with Client(before[0], retries=0, timeout_s=5) as c:
            c.score(cluster["frames"][0])
    (new,) = set(after) - set(before)
    with Client(new, retries=0) as c:
        assert c.score(cluster["frames"][0]).bundle == "di"
    doors.poll()
    assert lines[-1] == f"direct ingress for di now: {' '.join(after)}\n"


def test_hot_swap_moves_the_ports_and_the_watcher_prints_them(cluster: dict[str, Any]) -> None:
    cfg = cluster["cfg"]
    lines: list[str] = []
    doors = _DirectDoors(cfg, ["di"], lines.append)
    before = doors.seen["di"]
    assert lines == [f"direct ingress for di: {' '.join(before)} (one port per replica, no proxy hop)\n"]
    deploy_bundle(BundleSpec("di", str(cluster["b"])), cfg)
    after = direct_urls(cfg, "di")
    assert len(after) == 2 and not set(after) & set(before)  # new replicas, new ports
    digest_b = sha256_file(cluster["b"] / "manifest.json")
    for u in after:
        with Client(u, retries=0) as c:
            assert c.score(cluster["frames"][0]).digest == digest_b
    doors.poll()
    assert lines[-1] == f"direct ingress for di now: {' '.join(after)}\n"
    doors.poll()  # no change, no line
    assert len(lines) == 2
    # the proxy answers with the new bundle too
    with Client(cluster["url"], retries=0) as c:
        assert c.score(cluster["frames"][0]).digest == digest_b


def test_bench_serve_measures_the_direct_door(cluster: dict[str, Any]) -> None:
    """bench_serve.py --direct-ingress times the floor app and a replica at their own ports with the same
    `Client.score` and paired rounds as the proxy door (structure only: no timing is asserted)."""
    import cv2

    from edgeuad.serve.server import undeploy

    mod = load_benchmark("bench_serve")
    cfg = cluster["cfg"]
    mod.deploy_floor(cfg, "floor_d")
    try:
        (floor,) = direct_urls(cfg, "floor_d", replicas=1)
        with Client(floor, retries=0) as c:
            got = [c.score(f, encoding="jpeg", request_id=f"f{i}") for i, f in enumerate(cluster["frames"][:2])]
        assert [(r.request_id, r.bundle, r.score) for r in got] == [("f0", "floor", 0.0), ("f1", "floor", 0.0)]
        enc = [cv2.imencode(".jpg", f[:, :, ::-1])[1].tobytes() for f in cluster["frames"][:2]]
        local = mod.InProcess(str(cluster["b"]), 1, [np.frombuffer(b, np.uint8) for b in enc])
        try:
            o = mod.paired_overhead(local, direct_urls(cfg, "di")[0], floor, enc, 1, 2)
        finally:
            local.det.close()
        assert len(o["added_p50_ms_rounds"]) == len(o["floor_p50_ms_rounds"]) == 1
        assert o["in_process_ms"]["n"] == o["served_ms"]["n"] == o["floor_ms"]["n"] == 2
    finally:
        undeploy("floor_d")
