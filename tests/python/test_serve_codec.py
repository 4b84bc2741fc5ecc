"""`edgeuad serve` without a cluster: the HTTP contract, request decoding and its 4xx errors, the client's
encoding, configs (bundle specs, cameras.yaml, load generator) and the CLI flags that reach them."""
from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeuad import cli
from edgeuad.client import ScoreResult, ServeError, encode_frame
from edgeuad.data import ImageReadError, decode_image, read_image
from edgeuad.serve import protocol as P
from edgeuad.serve.codec import Limits, decode_frame, image_size, map_to_png, png_to_map
from edgeuad.serve.config import BundleSpec, ServeConfig
from edgeuad.viz import encode_png, write_png


def _rgb(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    return encode_png(rgb).tobytes()


def _jpeg(rgb: np.ndarray, progressive: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", rgb[:, :, ::-1], params)[1].tobytes()


def _err(fn, *a, **kw) -> P.RequestError:
    with pytest.raises(P.RequestError) as e:
        fn(*a, **kw)
    return e.value


# --- shared helpers the server uses ------------------------------------------------------------
def test_decode_image_matches_read_image(tmp_path: Path) -> None:
    rgb = _rgb()
    p = write_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(decode_image(p.read_bytes()), read_image(p))
    g16 = (np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 60)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    np.testing.assert_array_equal(decode_image((tmp_path / "g16.png").read_bytes()), read_image(tmp_path / "g16.png"))
    with pytest.raises(ImageReadError, match="body"):
        decode_image(b"not an image at all", name="body")


def test_encode_png_round_trip_and_errors() -> None:
    rgb = _rgb()
    np.testing.assert_array_equal(decode_image(_png(rgb)), rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 5), np.uint8))


# --- decoding requests -------------------------------------------------------------------------
def test_decode_png_jpeg_raw() -> None:
    rgb = _rgb(48, 64)
    np.testing.assert_array_equal(decode_frame(_png(rgb), "image/png", {}), rgb)
    jpg = _jpeg(rgb)
    np.testing.assert_array_equal(decode_frame(jpg, "image/jpeg; q=1", {}), decode_image(jpg))
    raw, headers = rgb.tobytes(), {P.SHAPE_HEADER: "48,64,3"}
    np.testing.assert_array_equal(decode_frame(raw, P.RAW_TYPE, headers), rgb)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()
    got = decode_frame(bgr, P.RAW_TYPE, {P.SHAPE_HEADER.lower(): "48x64x3", P.COLOR_HEADER.lower(): "BGR"})
    np.testing.assert_array_equal(got, rgb)
    gray = rgb[:, :, 0].copy()
    g = decode_frame(gray.tobytes(), P.RAW_TYPE, {P.SHAPE_HEADER: "48,64"})
    assert g.shape == (48, 64, 3) and (g == gray[:, :, None]).all()


@pytest.mark.parametrize("body,ctype,headers,status,kind", [
    (b"x" * 100, "text/plain", {}, 415, "unsupported_content_type"),
    (b"x" * 100, None, {}, 415, "unsupported_content_type"),
    (b"", "image/png", {}, 400, "empty_body"),
    (b"this is not a png" * 8, "image/png", {}, 400, "undecodable"),
    (b"\xff\xd8\xff" + b"\x00" * 64, "image/jpeg", {}, 400, "undecodable"),
    (bytes(24 * 40 * 3), P.RAW_TYPE, {}, 400, "missing_shape"),
    (bytes(24 * 40 * 3), P.RAW_TYPE, {P.SHAPE_HEADER: "24,40,4"}, 400, "bad_shape"),
    (bytes(24 * 40 * 3), P.RAW_TYPE, {P.SHAPE_HEADER: "a,b"}, 400, "bad_shape"),
    (bytes(24 * 40 * 3 - 1), P.RAW_TYPE, {P.SHAPE_HEADER: "24,40,3"}, 400, "shape_mismatch"),
    (bytes(4 * 4 * 3), P.RAW_TYPE, {P.SHAPE_HEADER: "4,4,3"}, 400, "bad_frame"),
    (bytes(24 * 40 * 3), P.RAW_TYPE, {P.SHAPE_HEADER: "24,40,3", P.COLOR_HEADER: "hsv"}, 400, "bad_color"),
])
def test_bad_bodies_are_typed_4xx(body: bytes, ctype: Any, headers: dict, status: int, kind: str) -> None:
    e = _err(decode_frame, body, ctype, headers)
    assert (e.status, e.kind) == (status, kind)
    assert e.to_dict()["error"] == {"status": status, "type": kind, "message": e.message}


def test_truncated_png_and_wrong_signature() -> None:
    png = _png(_rgb(64, 64))
    assert _err(decode_frame, png[: len(png) // 2], "image/png", {}).kind == "undecodable"
    assert _err(decode_frame, png, "image/jpeg", {}).kind == "undecodable"   # PNG bytes labelled JPEG


def test_size_limits_before_decoding() -> None:
    rgb = _rgb(64, 64)
    lim = Limits(max_body_bytes=1000, max_pixels=64 * 64)
    e = _err(decode_frame, bytes(2000), P.RAW_TYPE, {P.SHAPE_HEADER: "10,10,3"}, lim)
    assert (e.status, e.kind) == (413, "body_too_large")
    # a small PNG whose header claims 30000 x 30000: refused from the header (the CRC is even wrong,
    # so reaching the decoder would have been a 400, not a 413)
    png = bytearray(_png(rgb))
    png[16:24] = struct.pack(">II", 30000, 30000)
    e = _err(decode_frame, bytes(png), "image/png", {}, Limits(max_pixels=1_000_000))
    assert (e.status, e.kind) == (413, "image_too_large")
    e = _err(decode_frame, bytes(65 * 64 * 3), P.RAW_TYPE, {P.SHAPE_HEADER: "65,64,3"}, Limits(max_pixels=64 * 64))
    assert (e.status, e.kind) == (413, "image_too_large")
    assert decode_frame(_png(rgb), "image/png", {}, Limits(max_pixels=64 * 64)).shape == (64, 64, 3)


@pytest.mark.parametrize("progressive", [False, True])
def test_image_size_from_headers(progressive: bool) -> None:
    rgb = _rgb(37, 53)
    assert image_size(_png(rgb)) == (37, 53)
    assert image_size(_jpeg(rgb, progressive)) == (37, 53)
    assert image_size(b"GIF89a....") is None


def test_map_png_round_trip() -> None:
    m = np.random.default_rng(1).random((30, 20)).astype(np.float32)
    m[0, 0], m[0, 1] = -0.5, 1.5  # out of range: clipped to 0..1
    back = png_to_map(map_to_png(m))
    assert back.dtype == np.float32 and back.shape == m.shape
    np.testing.assert_allclose(back, np.clip(m, 0, 1), atol=0.5 / P.MAP_PNG_SCALE + 1e-7)
    with pytest.raises(ValueError):
        png_to_map(_png(_rgb()))


def test_parse_shape() -> None:
    assert P.parse_shape("480,640,3") == (480, 640, 3) and P.parse_shape(" 8, 9 ") == (8, 9)
    for bad in (None, "", "1", "1,2,3,4", "0,5", "-1,5"):
        with pytest.raises(P.RequestError):
            P.parse_shape(bad)


# --- client side -------------------------------------------------------------------------------
def test_client_encode_frame(tmp_path: Path) -> None:
    rgb = _rgb()
    body, h = encode_frame(rgb)
    assert h["Content-Type"] == P.RAW_TYPE and h[P.SHAPE_HEADER] == "24,40,3"
    np.testing.assert_array_equal(decode_frame(body, h["Content-Type"], h), rgb)
    body, h = encode_frame(rgb, "png")
    np.testing.assert_array_equal(decode_frame(body, h["Content-Type"], h), rgb)
    body, h = encode_frame(rgb, "jpeg")
    assert h["Content-Type"] == P.JPEG_TYPE and body.startswith(b"\xff\xd8")
    p = write_png(tmp_path / "f.png", rgb)
    assert encode_frame(p)[1]["Content-Type"] == P.PNG_TYPE
    assert encode_frame(str(p))[0] == p.read_bytes()
    with pytest.raises(ValueError):
        encode_frame(b"GIF89a-not-supported")
    with pytest.raises(ValueError):
        encode_frame(rgb, "webp")
    with pytest.raises(TypeError):
        encode_frame(12)  # type: ignore[arg-type]


def test_client_error_retryability() -> None:
    assert ServeError(503, "x", "y").retryable and ServeError(0, "connection", "y").retryable
    assert not ServeError(400, "undecodable", "y").retryable and not ServeError(413, "t", "m").retryable
    r = ScoreResult.from_json({"score": 1.5, "normalized": 0.6, "is_anomaly": True, "threshold": 1.0, "bundle": "b",
                               "digest": "d", "replica": "r", "request_id": "q", "batch_size": 2,
                               "frame_shape": [4, 5], "latency_ms": {"server": 1.0}})
    assert (r.score, r.is_anomaly, r.batch_size, r.frame_shape) == (1.5, True, 2, [4, 5])


# --- configs -----------------------------------------------------------------------------------
def test_bundle_spec_and_serve_config(tmp_path: Path) -> None:
    s = BundleSpec.parse(str(tmp_path / "bottle"))
    assert s.name == "bottle" and s.path == str((tmp_path / "bottle").resolve())
    assert BundleSpec.parse("tile=b.tar").name == "tile"
    assert BundleSpec.parse(str(tmp_path / "screw.tar")).name == "screw"
    for bad in ("bad name=x", "=x", "x="):
        with pytest.raises(ValueError):
            BundleSpec.parse(bad)
    with pytest.raises(ValueError, match="unique"):
        ServeConfig(bundles=[BundleSpec("a", "/x"), BundleSpec("a", "/y")])
    with pytest.raises(ValueError, match="--address"):
        ServeConfig(bundles=[BundleSpec("a", "/x")], detach=True)
    c = ServeConfig(bundles=[BundleSpec("a", "/x"), BundleSpec("b", "/y")], replicas=3, replica_cpus=2.0)
    assert c.logical_cpus() >= 2 * 3 * 2 * 2.0
    rc = c.replica_config(c.bundles[1])
    assert (rc.name, rc.bundle, rc.max_batch, rc.max_body_bytes) == ("b", "/y", 8, 32 << 20)


def test_cameras_yaml(tmp_path: Path) -> None:
    from edgeuad.serve.cameras import CamerasConfig

    (tmp_path / "imgs").mkdir()
    y = tmp_path / "cams.yaml"
    y.write_text("out: results\ncameras:\n"
                 "  - {name: a, source: imgs, stream: {fps_limit: 5, queue_size: 2}}\n"
                 "  - {name: b, source: 'rtsp://127.0.0.1:8554/x', bundle: tile, overlays: all}\n"
                 "  - {name: c, source: '0'}\n")
    c = CamerasConfig.from_yaml(y, default_bundle="bottle")
    a, b, cam0 = c.cameras
    assert a.source == str(tmp_path / "imgs") and a.bundle == "bottle" and c.out == str(tmp_path / "results")
    sc = a.stream_config()
    assert (sc.fps_limit, sc.queue_size, sc.return_map, sc.return_frame) == (5, 2, True, True)
    assert b.source == "rtsp://127.0.0.1:8554/x" and b.bundle == "tile" and b.frame_source().is_live
    assert cam0.source == "0"
    bad = {
        "cameras: []": "non-empty",
        "cameras:\n  - {name: a, source: x, colour: red}": "unknown keys",
        "cameras:\n  - {name: a, source: x}\n  - {name: a, source: y}": "unique",
        "cameras:\n  - {name: a, source: x, stream: {fps: 5}}": "unknown StreamConfig keys",
        "cameras:\n  - {name: a, source: x, stream: {return_map: false}}": "overlays",
        "cameras:\n  - {name: 'a b', source: x}": "must match",
        "cameras:\n  - {name: a}": "name. and .source",
        "out: x\nextra: 1\ncameras:\n  - {name: a, source: x}": "top-level",
        "cameras: [": "YAML",
    }
    for text, match in bad.items():
        y.write_text(text)
        with pytest.raises(ValueError, match=match):
            CamerasConfig.from_yaml(y, default_bundle="bottle")
    y.write_text("cameras:\n  - {name: a, source: x}")
    with pytest.raises(ValueError, match="no bundle"):
        CamerasConfig.from_yaml(y)


def test_loadgen_is_loopback_only() -> None:
    from edgeuad.serve.loadgen import LoadConfig, check_loopback

    check_loopback("http://127.0.0.1:8000/a")
    check_loopback("http://localhost:8000/a")
    check_loopback("http://[::1]:8000/a")
    for url in ("http://10.1.2.3:8000/a", "http://192.0.2.7/a", "nohost"):
        with pytest.raises(ValueError):
            check_loopback(url)
    with pytest.raises(ValueError, match="concurrency"):
        LoadConfig(url="http://127.0.0.1:1/a", concurrency=[0])
    with pytest.raises(ValueError, match="duration"):
        LoadConfig(url="http://127.0.0.1:1/a", duration_s=0)
    with pytest.raises(ValueError, match="loopback"):
        LoadConfig(url="http://10.0.0.1:1/a")


# --- CLI ---------------------------------------------------------------------------------------
def test_serve_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeuad.serve import server

    seen: list[ServeConfig] = []
    monkeypatch.setattr(server, "run_server", lambda cfg: seen.append(cfg) or 0)
    rc = cli.main(["-q", "serve", "--bundle", str(tmp_path / "bottle"), "--bundle", "tile=t.tar", "--replicas", "2",
                   "--host", "127.0.0.2", "--port", "8123", "--max-batch", "4", "--batch-wait-ms", "2.5",
                   "--address", "127.0.0.1:6379", "--num-cpus", "6", "--replica-cpus", "0.5", "--backend", "onnxruntime",
                   "--threads", "1", "--max-body-mb", "3", "--max-pixels", "1000", "--cameras", "c.yaml",
                   "--low-latency", "--direct-ingress"])
    assert rc == 0
    c = seen[0]
    assert [(b.name, Path(b.path).name) for b in c.bundles] == [("bottle", "bottle"), ("tile", "t.tar")]
    assert (c.replicas, c.host, c.port, c.max_batch, c.batch_wait_ms, c.address, c.num_cpus, c.replica_cpus,
            c.backend, c.threads, c.max_body_mb, c.max_pixels, c.cameras, c.detach, c.low_latency, c.direct_ingress) == \
        (2, "127.0.0.2", 8123, 4, 2.5, "127.0.0.1:6379", 6, 0.5, "onnxruntime", 1, 3.0, 1000, "c.yaml", False, True, True)
    assert cli.main(["-q", "serve", "--bundle", "b"]) == 0
    assert (seen[1].low_latency, seen[1].direct_ingress) == (False, False)


def test_request_path_flags_are_set_only_where_the_cluster_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """--low-latency / --direct-ingress put LOW_LATENCY_ENV / DIRECT_INGRESS_ENV in the environment the local
    cluster inherits (a user's own value wins), each only its own; without them nothing is set; with --address
    either is a typed error (the joined cluster's `ray start` decides)."""
    import os
    import sys
    import types

    from edgeuad.serve import server
    from edgeuad.serve.config import DIRECT_INGRESS_ENV, LOW_LATENCY_ENV

    ours = {*LOW_LATENCY_ENV, *DIRECT_INGRESS_ENV}
    inits: list[dict] = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: inits.append(dict(os.environ)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    base = {k: v for k, v in os.environ.items() if k not in ours}
    monkeypatch.setattr(os, "environ", dict(base))
    assert server.start_cluster(ServeConfig(bundles=[BundleSpec("a", "/x")])) is True
    assert not ours & set(inits[-1])
    os.environ["RAY_SERVE_USE_GRPC_BY_DEFAULT"] = "0"
    assert server.start_cluster(ServeConfig(bundles=[BundleSpec("a", "/x")], low_latency=True)) is True
    assert {k: inits[-1][k] for k in LOW_LATENCY_ENV} == {**LOW_LATENCY_ENV, "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"}
    assert not set(DIRECT_INGRESS_ENV) & set(inits[-1])
    monkeypatch.setattr(os, "environ", dict(base))
    assert server.start_cluster(ServeConfig(bundles=[BundleSpec("a", "/x")], direct_ingress=True)) is True
    assert {k: inits[-1].get(k) for k in ours} == {**{k: None for k in LOW_LATENCY_ENV},
                                                    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
    monkeypatch.setattr(os, "environ", dict(base))
    for flag in ("low_latency", "direct_ingress"):
        with pytest.raises(server.ServeError, match="ray start"):
            server.start_cluster(ServeConfig(bundles=[BundleSpec("a", "/x")], address="127.0.0.1:6379", **{flag: True}))
    assert not ours & set(os.environ) and len(inits) == 3


def test_serve_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: edgeuad serve" in out
    for default in ("(default: 1)", "(default: 127.0.0.1)", "(default: 8000)", "(default: 8)", "(default: 5.0)",
                    "(default: 32.0)"):
        assert default in out


def test_bench_serve_flags_reach_the_load_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeuad.serve import loadgen

    seen: list[Any] = []

    class Rep:
        def write(self, out: str) -> None:
            seen.append(out)

        def table(self) -> str:
            return "table"

    monkeypatch.setattr(loadgen, "run_load", lambda cfg: seen.append(cfg) or Rep())
    rc = cli.main(["-q", "bench", "--serve", "http://127.0.0.1:8123/bottle", "--concurrency", "1,3",
                   "--duration", "2.5", "--max-requests", "40", "--warmup", "1", "--images", "imgs",
                   "--out", str(tmp_path)])
    assert rc == 0
    c = seen[0]
    assert (c.url, c.concurrency, c.duration_s, c.max_requests, c.warmup_requests, c.images) == \
        ("http://127.0.0.1:8123/bottle", [1, 3], 2.5, 40, 1, "imgs")
    assert seen[1] == str(tmp_path)
    with pytest.raises(SystemExit, match="--bundle is required"):
        cli.main(["-q", "bench"])


def test_client_side_imports_neither_torch_nor_ray() -> None:
    """A plant PC that only sends frames needs numpy + OpenCV: the client, the contract, the configs and
    the load generator import no torch and no ray (the replica and camera actors import ray, never torch)."""
    import subprocess
    import sys

    pytest.importorskip("ray", reason="the `serve` extra (ray[serve]) is not installed")
    code = ("import sys\n"
            "import edgeuad.client, edgeuad.serve.codec, edgeuad.serve.config, edgeuad.serve.loadgen\n"
            "import edgeuad.serve.cameras, edgeuad.serve.server\n"
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]\n"
            "import edgeuad.serve.replica\n"
            "bad += ['torch'] if 'torch' in sys.modules else []\n"
            "sys.exit(', '.join(bad) or 0)\n")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


class _FakeServe:
    """A loopback HTTP/1.1 server answering POSTs from a script of (status, body-or-None); None = echo a
    valid score answer for the request's id.  close_after: drop the connection after each answer
    (a keep-alive connection the server closed while idle)."""

    def __init__(self, script: list[tuple[int, Any]], close_after: bool = False) -> None:
        import http.server
        import json as _json
        import threading

        script = list(script)
        seen: list[str] = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                rid = self.headers.get(P.REQUEST_ID_HEADER)
                seen.append(rid)
                status, body = script.pop(0) if script else (200, None)
                if body is None:
                    body = {"score": 1.0, "normalized": 0.5, "is_anomaly": True, "threshold": 1.0, "bundle": "b",
                            "digest": "d", "replica": "r", "request_id": rid, "batch_size": 1,
                            "frame_shape": [8, 8], "latency_ms": {}}
                data = _json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", P.JSON_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if close_after:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/b"
        self.seen = seen
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> "_FakeServe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_retries_server_faults_not_client_errors() -> None:
    from edgeuad.client import Client

    frame = _rgb(8, 8)
    err = {"error": {"status": 503, "type": "unavailable", "message": "restarting"}}
    with _FakeServe([(503, err), (500, {"error": {"type": "internal", "message": "x"}})]) as srv:
        with Client(srv.url, retries=2, backoff_s=0.01) as c:
            r = c.score(frame, request_id="abc")
        assert r.attempts == 3 and r.request_id == "abc" and srv.seen == ["abc"] * 3   # same id on every try
    with _FakeServe([(400, {"error": {"type": "undecodable", "message": "bad"}})]) as srv:
        with Client(srv.url, retries=5, backoff_s=0.01) as c, pytest.raises(ServeError) as e:
            c.score(frame)
        assert (e.value.status, e.value.kind, len(srv.seen)) == (400, "undecodable", 1)      # never retried
    with _FakeServe([(503, err)] * 3) as srv:
        with Client(srv.url, retries=1, backoff_s=0.01) as c, pytest.raises(ServeError) as e:
            c.score(frame)
        assert e.value.status == 503 and len(srv.seen) == 2
    other = {"score": 1.0, "normalized": 0.5, "is_anomaly": True, "threshold": 1.0, "bundle": "b", "digest": "d",
             "replica": "r", "request_id": "someone-else", "batch_size": 1, "frame_shape": [8, 8], "latency_ms": {}}
    with _FakeServe([(200, other)]) as srv:
        with Client(srv.url, retries=0) as c, pytest.raises(ServeError, match="request_id_mismatch"):
            c.score(frame)


def test_client_reconnects_once_when_an_idle_keep_alive_was_closed() -> None:
    from edgeuad.client import Client

    with _FakeServe([], close_after=True) as srv:
        with Client(srv.url, retries=0) as c:   # no retry budget: only the stale-connection rule applies
            assert [c.score(_rgb(8, 8)).attempts for _ in range(3)] == [1, 1, 1]
        assert len(srv.seen) == 3
    with Client("http://127.0.0.1:9/b", retries=1, backoff_s=0.01) as c, pytest.raises(ServeError) as e:
        c.score(_rgb(8, 8))   # nothing listens on port 9: a connection error after the retries
    assert e.value.status == 0 and e.value.retryable


def test_bench_serve_handle_overhead_pairs_the_same_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/bench_serve.py's camera-door measurement: every round scores the same frames in process
    and through the Serve handle (`score_array`, as the camera actors call it), alternating which goes
    first, and reports p50(handle) - p50(in process) per round.  A fake handle that sleeps 20 ms per call
    against an instant in-process Detector must read >= 20 ms added (sleep never returns early)."""
    import time as _time

    from script_helpers import load_benchmark

    ray = pytest.importorskip("ray", reason="the `serve` extra (ray[serve]) is not installed")
    import ray.serve  # noqa: F401 - the attribute the benchmark's `from ray import serve` reads

    calls: list[tuple[str, int]] = []

    class _Ref:
        def __init__(self, f: np.ndarray) -> None:
            self.f = f

        def result(self) -> dict[str, Any]:
            _time.sleep(0.02)
            return {"score": float(self.f[0, 0, 0])}

    class _Method:
        def remote(self, f: np.ndarray) -> _Ref:
            calls.append(("handle", int(f[0, 0, 0])))
            return _Ref(f)

    class _Handle:
        score_array = _Method()

    class _FakeServe:
        @staticmethod
        def get_app_handle(app: str) -> _Handle:
            assert app == "b1"
            return _Handle()

    class _Det:
        def score(self, f: np.ndarray, return_map: bool = True) -> None:
            calls.append(("local", int(f[0, 0, 0])))

    class _Local:
        det = _Det()

    monkeypatch.setattr(ray, "serve", _FakeServe)
    mod = load_benchmark("bench_serve", "bench_serve_h")
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    out = mod.paired_handle_overhead(_Local(), "b1", frames, rounds=3, n=2)
    assert calls[0] == ("handle", 0)  # one untimed warm-up call
    timed = calls[1:]
    assert [s for s, _ in timed] == ["local"] * 2 + ["handle"] * 2 + ["handle"] * 2 + ["local"] * 2 + \
        ["local"] * 2 + ["handle"] * 2
    for side in ("local", "handle"):  # the same frames on both sides, round after round
        assert [v for s, v in timed if s == side] == [0, 1, 2, 3, 4, 0]
    assert len(out["added_p50_ms_rounds"]) == 3 and min(out["added_p50_ms_rounds"]) >= 20.0
    assert out["handle_ms"]["p50"] >= 20.0 > out["in_process_ms"]["p50"]


def test_direct_urls_from_the_controllers_target_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """`server.direct_urls` (fake Ray): the replicas' HTTP targets become URLs on --host (the proxy's own entry
    and gRPC targets are not replicas' HTTP doors); a wildcard host uses the node address; a replica on another
    node is left out on a specific host; a cluster without direct ingress (only the proxy) is a typed error."""
    import sys
    import types

    from edgeuad.serve import server

    groups: list[Any] = []
    ns = types.SimpleNamespace
    controller = ns(get_target_groups=ns(remote=lambda name: [g for g in groups if g.app_name == name]))
    fake_ray = ns(get=lambda x: x, util=ns(get_node_ip_address=lambda: "10.0.0.1"))
    context = types.ModuleType("ray.serve.context")
    context._get_global_client = lambda: ns(_controller=controller)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setitem(sys.modules, "ray.serve", types.ModuleType("ray.serve"))
    monkeypatch.setitem(sys.modules, "ray.serve.context", context)

    def group(protocol: str, *targets: tuple[str, int], app: str = "tile") -> Any:
        return ns(protocol=ns(value=protocol), app_name=app, targets=[ns(ip=ip, port=p) for ip, p in targets])

    cfg = ServeConfig(bundles=[BundleSpec("tile", "/x")], port=8000, replicas=2)
    groups[:] = [group("HTTP", ("10.0.0.1", 30001), ("10.0.0.1", 30000)), group("gRPC", ("10.0.0.1", 40000)),
                 group("HTTP", ("10.0.0.1", 30002), app="other")]
    assert server.direct_urls(cfg, "tile") == ["http://127.0.0.1:30000/tile", "http://127.0.0.1:30001/tile"]
    groups[0] = group("HTTP", ("10.0.0.1", 30001), ("10.0.0.2", 30000))
    monkeypatch.setattr(server, "_UNREACHABLE", set())
    warned: list[str] = []
    monkeypatch.setattr(server.log, "warning", lambda msg, *a: warned.append(msg % a))
    for _ in range(2):  # 10.0.0.2's is out of reach, said once
        assert server.direct_urls(cfg, "tile") == ["http://127.0.0.1:30001/tile"]
    assert len(warned) == 1 and "10.0.0.2:30000" in warned[0]
    wild = dataclasses.replace(cfg, host="0.0.0.0")
    assert server.direct_urls(wild, "tile") == ["http://10.0.0.1:30001/tile", "http://10.0.0.2:30000/tile"]
    groups[0] = group("HTTP", ("10.0.0.1", 8000))  # what Ray answers without direct ingress: the proxy
    with pytest.raises(server.ServeError, match="proxy only"):
        server.direct_urls(cfg, "tile", timeout_s=0)
    groups[0] = group("HTTP", ("10.0.0.1", 30001))
    with pytest.raises(server.ServeError, match="1 of 2 replica"):
        server.direct_urls(cfg, "tile", timeout_s=0)
    assert server.direct_urls(cfg, "tile", replicas=0) == ["http://127.0.0.1:30001/tile"]
    context._get_global_client = lambda: ns(_controller=ns())  # a Ray whose controller has no target groups
    with pytest.raises(server.ServeError, match="no direct-ingress target groups"):
        server.direct_urls(cfg, "tile")
