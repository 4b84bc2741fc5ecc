"""`edgeuad serve` on a real local Ray cluster (loopback only): one cluster for the whole module.

Checked: served scores equal `Detector.score` on the same frames; two replicas answer concurrent
clients with no lost, duplicated or mixed-up response; killing a replica mid-load loses no request
(clients retry idempotent requests, Ray Serve replaces the replica); a hot swap under load fails no
request; bad requests get typed 4xx and the replica keeps serving; cameras (one dead, one live)
write their JSONL and overlays; the load generator and `edgeuad bench --serve`.  Never timing.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the `serve` extra (ray[serve]) is not installed")

from script_helpers import load_benchmark  # noqa: E402
from serve_helpers import free_port, swapped_copy, tiny_bundle  # noqa: E402

from edgeuad import cli  # noqa: E402
from edgeuad.bundle import read_manifest, sha256_file  # noqa: E402
from edgeuad.client import Client, ServeError  # noqa: E402
from edgeuad.data import decode_image, read_image  # noqa: E402
from edgeuad.detector import Detector  # noqa: E402
from edgeuad.serve import protocol as P  # noqa: E402
from edgeuad.serve.server import BundleSpec, ServeConfig, deploy_bundle, shutdown, start_cluster, start_http  # noqa: E402
from edgeuad.thresholds import Thresholds  # noqa: E402
from edgeuad.viz import encode_png  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

LIMIT_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve")
    a, data = tiny_bundle(root)
    b = swapped_copy(a, root / "bundle_b")
    frames = [read_image(p) for p in sorted((data / "test").rglob("*.png"))]
    frames += [np.ascontiguousarray(f[::-1]) for f in frames]  # 10 distinct frames
    return {"a": a, "b": b, "data": data, "frames": frames,
            "digest": {"a": sha256_file(a / "manifest.json"), "b": sha256_file(b / "manifest.json")}}


@pytest.fixture(scope="module")
def served(bundles: dict[str, Any]) -> Any:
    """A local cluster (4 logical CPUs, replicas reserve 0.5) with three applications, on the --low-latency
    request path (so the kill, swap and camera tests below cover it; test_serve_cli.py runs the README's
    commands on Ray's default path)."""
    from edgeuad.serve.config import LOW_LATENCY_ENV

    cfg = ServeConfig(port=free_port(), num_cpus=4, replica_cpus=0.5, threads=1, max_body_mb=LIMIT_BYTES / (1 << 20),
                      max_pixels=1_000_000, low_latency=True)
    added = [k for k in LOW_LATENCY_ENV if k not in os.environ]
    started = start_cluster(cfg)
    try:
        start_http(cfg)
        urls = {
            "one": deploy_bundle(BundleSpec("one", str(bundles["a"])), cfg),
            "two": deploy_bundle(BundleSpec("two", str(bundles["a"])), dataclasses.replace(cfg, replicas=2, max_batch=4)),
            "swap": deploy_bundle(BundleSpec("swap", str(bundles["a"])), cfg),
        }
        yield {"cfg": cfg, "urls": urls}
    finally:
        shutdown(started)
        for k in added:  # later clusters in this process (and the CLI tests' subprocesses) get Ray's defaults
            os.environ.pop(k, None)


@pytest.fixture(scope="module")
def reference(bundles: dict[str, Any]) -> Detector:
    return Detector(bundles["a"], threads=1)


def _score_all(url: str, jobs: list[tuple[str, np.ndarray]], clients: int, retries: int) -> tuple[dict, list]:
    """`clients` threads share the jobs; returns ({request_id: result}, [errors])."""
    results: dict[str, Any] = {}
    errors: list[Any] = []
    lock = threading.Lock()
    it = iter(jobs)

    def work() -> None:
        with Client(url, retries=retries, backoff_s=0.2, timeout_s=60) as c:
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                rid, frame = job
                try:
                    r = c.score(frame, request_id=rid)
                except ServeError as e:
                    with lock:
                        errors.append((rid, e))
                    continue
                with lock:
                    assert rid not in results, f"duplicate answer for {rid}"
                    results[rid] = r

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results, errors


# --- correctness ---------------------------------------------------------------------------------
def test_scores_equal_detector_score(served: Any, bundles: dict[str, Any], reference: Detector) -> None:
    url = served["urls"]["one"]
    with Client(url) as c:
        for f in bundles["frames"][:5]:
            ref = reference.score(f)
            r = c.score(f)  # raw pixels
            assert (r.score, r.normalized, r.is_anomaly) == (ref.score, ref.normalized, ref.is_anomaly)
            assert r.digest == bundles["digest"]["a"] and r.bundle == "one" and r.frame_shape == [64, 64]
            assert r.batch_size == 1 and r.threshold == reference.threshold
            assert {"read", "decode", "queue", "preprocess", "network", "server"} <= set(r.latency_ms)
        big = cv2.resize(bundles["frames"][3], (128, 96))
        for enc in ("png", "jpeg"):
            body = cv2.imencode("." + ("jpg" if enc == "jpeg" else enc), big[:, :, ::-1])[1].tobytes()
            ref = reference.score(decode_image(body))
            r = c.score(body)
            assert (r.score, r.normalized, r.frame_shape) == (ref.score, ref.normalized, [96, 128])
        r = c.score(big, map=True)
        ref = reference.score(big)
        assert r.anomaly_map.shape == (96, 128) and r.score == ref.score
        np.testing.assert_allclose(r.anomaly_map, ref.anomaly_map, atol=0.5 / P.MAP_PNG_SCALE + 1e-6)
        health, info = c.health(), c.info()
    assert health == {"status": "ok", "bundle": "one", "digest": bundles["digest"]["a"], "replica": r.replica}
    assert info["digest"] == bundles["digest"]["a"] and info["bundle"]["method"] == "recontrast"
    assert info["bundle"]["input_size"] == [64, 64] and info["server"]["ray"] == ray.__version__
    assert info["bundle"]["graph"] == "float32"  # an fp32 export (`--cpu-int8` bundles say int8)
    assert info["batching"] == {"max_batch": 8, "batch_wait_ms": 5.0}
    # the replica runs with the settings --low-latency asked for (they reached the replica's process), and
    # without --direct-ingress's
    from edgeuad.serve.config import DIRECT_INGRESS_ENV, LOW_LATENCY_ENV

    assert info["server"]["ray_serve_env"] == {**LOW_LATENCY_ENV, **{k: None for k in DIRECT_INGRESS_ENV}}


def test_two_replicas_concurrent_clients_no_lost_or_duplicated_answer(served: Any, bundles: dict[str, Any],
                                                                       reference: Detector) -> None:
    frames = bundles["frames"]
    ref = [reference.score(f).score for f in frames]
    jobs = [(f"req-{i}", frames[i % len(frames)]) for i in range(96)]
    results, errors = _score_all(served["urls"]["two"], jobs, clients=8, retries=0)
    assert errors == []
    assert sorted(results) == sorted(rid for rid, _ in jobs)           # every request, once
    for i in range(96):
        r = results[f"req-{i}"]
        assert r.request_id == f"req-{i}"
        # batches of several frames may round differently from batch 1 in the last bits
        assert r.score == pytest.approx(ref[i % len(frames)], rel=1e-5, abs=1e-6), i
    assert len({r.replica for r in results.values()}) == 2
    assert max(r.batch_size for r in results.values()) > 1              # @serve.batch did batch
    assert max(r.batch_size for r in results.values()) <= 4


def _replica_actors(app: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{app}#"))


def test_killed_replica_loses_no_request(served: Any, bundles: dict[str, Any], reference: Detector) -> None:
    from ray import serve

    frames = bundles["frames"]
    ref = [reference.score(f).score for f in frames]
    before = _replica_actors("two")
    assert len(before) == 2
    jobs = [(f"kill-{i}", frames[i % len(frames)]) for i in range(150)]
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.update(zip(("results", "errors"),
                                                            _score_all(served["urls"]["two"], jobs, 6, retries=8))))
    runner.start()
    victim = before[0]
    time.sleep(1.0)  # load is running
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    runner.join(300)
    results, errors = out["results"], out["errors"]
    assert errors == [], errors[:3]
    assert sorted(results) == sorted(rid for rid, _ in jobs)
    for i in range(150):
        assert results[f"kill-{i}"].score == pytest.approx(ref[i % len(frames)], rel=1e-5, abs=1e-6)
    # Ray Serve replaces the killed replica: two running replicas again, one of them new
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = _replica_actors("two")
        dep = serve.status().applications["two"].deployments["BundleScorer"]
        if victim not in now and len(now) == 2 and dep.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"replica not replaced: {now}, {dep.replica_states}")


def test_hot_swap_under_load_fails_no_request(served: Any, bundles: dict[str, Any]) -> None:
    cfg, url = served["cfg"], served["urls"]["swap"]
    th = {d: Thresholds.from_dict(read_manifest(bundles[k])["thresholds"]) for k, d in bundles["digest"].items()}
    answers: list[Any] = []
    errors: list[Any] = []
    stop = threading.Event()
    swapped_at = [float("inf")]

    def client(k: int) -> None:
        with Client(url, retries=0, timeout_s=60) as c:   # no retries: a failure during the swap shows
            i = k
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    answers.append((t0, c.score(bundles["frames"][i % 10])))
                except ServeError as e:
                    errors.append(e)
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        while len(answers) < 10:
            time.sleep(0.05)
        deploy_bundle(BundleSpec("swap", str(bundles["b"])), cfg)   # returns when the new version is up
        swapped_at[0] = time.monotonic()
        deadline = time.monotonic() + 60
        while sum(r.digest == bundles["digest"]["b"] for t0, r in answers if t0 > swapped_at[0]) < 10:
            assert time.monotonic() < deadline, "no answers from the new bundle"
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert errors == []
    digests = [r.digest for _, r in answers]
    assert set(digests) == set(bundles["digest"].values())
    first_b = digests.index(bundles["digest"]["b"])
    assert all(d == bundles["digest"]["b"] for d in digests[first_b + 20:])  # the old version is gone
    for _, r in answers:  # every answer is self-consistent with the bundle it names
        t = th[r.digest]
        assert r.is_anomaly == (r.score >= t.threshold) and r.normalized == pytest.approx(t.normalize(r.score))
    with Client(url) as c:
        assert c.info()["digest"] == bundles["digest"]["b"]


# --- bad input ------------------------------------------------------------------------------------
def _post(port: int, path: str, body: bytes, headers: dict[str, str], method: str = "POST",
          chunked: bool = False) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            conn.request(method, path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                         headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_bad_inputs_get_4xx_and_the_replica_keeps_serving(served: Any, bundles: dict[str, Any]) -> None:
    port = served["cfg"].port
    score = "/one" + P.SCORE_PATH
    with Client(served["urls"]["one"]) as c:
        replica = c.health()["replica"]
    png = encode_png(bundles["frames"][0]).tobytes()
    huge_header = bytearray(png)
    huge_header[16:24] = (20000).to_bytes(4, "big") * 2
    cases = [
        (score, b"definitely not an image" * 10, {"Content-Type": P.PNG_TYPE}, 400, "undecodable"),
        (score, png[:200], {"Content-Type": P.PNG_TYPE}, 400, "undecodable"),
        (score, png, {"Content-Type": "text/plain"}, 415, "unsupported_content_type"),
        (score, png, {}, 415, "unsupported_content_type"),
        (score, bytes(64 * 64 * 3), {"Content-Type": P.RAW_TYPE}, 400, "missing_shape"),
        (score, bytes(64 * 64 * 3), {"Content-Type": P.RAW_TYPE, P.SHAPE_HEADER: "64,63,3"}, 400, "shape_mismatch"),
        (score, bytes(4 * 4 * 3), {"Content-Type": P.RAW_TYPE, P.SHAPE_HEADER: "4,4,3"}, 400, "bad_frame"),
        (score, bytes(LIMIT_BYTES + 1), {"Content-Type": P.RAW_TYPE, P.SHAPE_HEADER: "1,1,3"}, 413, "body_too_large"),
        (score, bytes(huge_header), {"Content-Type": P.PNG_TYPE}, 413, "image_too_large"),
        (score + "?map=jpg", png, {"Content-Type": P.PNG_TYPE}, 400, "bad_query"),
        (score + "?mpa=png", png, {"Content-Type": P.PNG_TYPE}, 400, "bad_query"),
        ("/one/v1/nothing", png, {"Content-Type": P.PNG_TYPE}, 404, "not_found"),
    ]
    for path, body, headers, status, kind in cases:
        got, js = _post(port, path, body, headers)
        assert (got, js["error"]["type"]) == (status, kind), (path, headers, js)
        assert js["error"]["status"] == status and js["error"]["message"]
    got, js = _post(port, score, bytes(LIMIT_BYTES * 2), {"Content-Type": P.RAW_TYPE, P.SHAPE_HEADER: "1,1,3"},
                    chunked=True)  # no Content-Length: counted while reading
    assert (got, js["error"]["type"]) == (413, "body_too_large")
    got, js = _post(port, score, b"", {}, method="GET")
    assert got == 405 and js["error"]["type"] == "method_not_allowed"
    with Client(served["urls"]["one"]) as c:
        with pytest.raises(ServeError) as e:
            c.score(b"\xff\xd8\xff" + bytes(100))   # the client raises 4xx at once, without retrying
        assert e.value.status == 400 and not e.value.retryable
        assert c.health()["replica"] == replica    # the same replica, never restarted
        assert c.score(bundles["frames"][0]).replica == replica


# --- cameras ----------------------------------------------------------------------------------------
def _lines(p: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in p.read_text().splitlines()] if p.exists() else []


def test_cameras_dead_one_reconnects_without_affecting_the_other(served: Any, bundles: dict[str, Any],
                                                                  reference: Detector, tmp_path: Path) -> None:
    from edgeuad.serve.cameras import CameraFleet

    imgs = sorted((bundles["data"] / "test").rglob("*.png"))[:5]
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(imgs):
        (tmp_path / "imgs" / f"{i:02d}.png").write_bytes(p.read_bytes())
    (tmp_path / "cameras.yaml").write_text(
        "out: results\n"
        "cameras:\n"
        "  - {name: folder, source: imgs, overlays: all}\n"
        "  - name: flaky\n"
        "    source: later.avi\n"
        "    live: true\n"
        "    stream: {reconnect_initial_s: 0.1, reconnect_max_s: 0.3, policy: block}\n")
    fleet = CameraFleet.from_yaml(tmp_path / "cameras.yaml", default_bundle="one")
    out = tmp_path / "results"
    fleet.start()
    try:
        deadline = time.monotonic() + 120
        while len(_lines(out / "folder" / "results.jsonl")) < 5:
            assert time.monotonic() < deadline, fleet.poll()
            time.sleep(0.2)
        st = fleet.poll()
        assert st["folder"]["running"] is False and st["folder"]["error"] is None and st["folder"]["written"] == 5
        assert st["flaky"]["running"] is True and st["flaky"]["written"] == 0   # dead, still trying
        assert st["flaky"]["stats"]["reconnects"] >= 1
        # the camera comes back: the video appears (renamed into place whole)
        w = cv2.VideoWriter(str(tmp_path / "tmp.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
        for f in bundles["frames"][:6]:
            w.write(np.ascontiguousarray(f[:, :, ::-1]))
        w.release()
        (tmp_path / "tmp.avi").rename(tmp_path / "later.avi")
        while len(_lines(out / "flaky" / "results.jsonl")) < 6:
            assert time.monotonic() < deadline, fleet.poll()
            time.sleep(0.2)
    finally:
        final = fleet.stop()
    assert final["flaky"]["stats"]["reconnects"] >= 1
    folder = _lines(out / "folder" / "results.jsonl")
    assert [r["index"] for r in folder] == list(range(5))
    for r, p in zip(folder, imgs):
        ref = reference.score(read_image(p))
        assert (r["score"], r["is_anomaly"], r["camera"], r["digest"]) == \
            (ref.score, ref.is_anomaly, "folder", bundles["digest"]["a"])
        ov = read_image(tmp_path / "results" / "folder" / r["overlay"])  # overlays: all
        assert ov.shape[1] == 64 and ov.shape[0] > 64
    flaky = _lines(out / "flaky" / "results.jsonl")
    assert [r["index"] for r in flaky[:6]] == list(range(6))
    for r in flaky:  # default overlays: anomalous frames only
        assert (r["overlay"] is not None) == r["is_anomaly"]
        if r["overlay"]:
            assert (out / "flaky" / r["overlay"]).is_file()


# --- load generator --------------------------------------------------------------------------------
def test_bench_serve_load_generator(served: Any, tmp_path: Path) -> None:
    url = served["urls"]["two"]
    rc = cli.main(["-q", "bench", "--serve", url, "--concurrency", "1,3", "--duration", "1.5", "--max-requests", "30",
                   "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "serve_bench.json").read_text())
    assert [lv["clients"] for lv in rep["levels"]] == [1, 3]
    for lv in rep["levels"]:
        assert lv["errors"] == 0 and 1 <= lv["requests"] <= 30
        assert lv["throughput"] == pytest.approx(lv["requests"] / lv["seconds"], rel=1e-2)
        assert lv["latency_ms"]["n"] == lv["requests"] and lv["latency_ms"]["p99"] >= lv["latency_ms"]["p50"]
    assert rep["server"]["name"] == "two"
    assert "| clients |" in (tmp_path / "serve_bench.md").read_text()


def test_bench_serve_floor_app_answers_like_a_replica(served: Any, bundles: dict[str, Any]) -> None:
    """benchmarks/bench_serve.py measures Ray Serve's own cost with a no-op app on the same proxy; the
    same `Client.score` must read its answer (request id echoed), or the floor would time another path."""
    from edgeuad.serve.server import undeploy

    mod = load_benchmark("bench_serve")
    url = mod.deploy_floor(served["cfg"], "floor_t")
    try:
        assert url.endswith("/floor_t")
        with Client(url, retries=0) as c:
            got = [c.score(f, encoding="jpeg", request_id=f"f{i}") for i, f in enumerate(bundles["frames"][:3])]
        assert [r.request_id for r in got] == ["f0", "f1", "f2"]
        assert {(r.bundle, r.score, r.batch_size) for r in got} == {("floor", 0.0, 1)}
    finally:
        undeploy("floor_t")
