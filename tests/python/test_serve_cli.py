"""The README's "Serving" commands, run as written (paths and the port substituted): start `edgeuad
serve`, query it with curl, swap its bundle from a second process, load it with `edgeuad bench --serve`,
and run cameras from a cameras.yaml.  Each server is a real local Ray cluster in a subprocess."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the `serve` extra (ray[serve]) is not installed")

from serve_helpers import free_port, swapped_copy, tiny_bundle  # noqa: E402

from edgeuad.bundle import sha256_file  # noqa: E402
from edgeuad.serve.cameras import CamerasConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
# the replica URL README's direct-ingress example queries; the test substitutes the one the server printed
DIRECT_EXAMPLE = "http://127.0.0.1:30000/bottle"


def readme_serving() -> tuple[list[str], str]:
    """(the bash commands of README's Serving section, its cameras.yaml example)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                cmds.append(line)
    (yaml,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return cmds, yaml


def _default_sigint() -> None:
    # A test run started in the background (`nohup ... &` from a script: no job control) ignores SIGINT,
    # and an ignored signal stays ignored across exec, so the server would never see the Ctrl-C below;
    # give it the default disposition a terminal user's `edgeuad serve` has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """`edgeuad serve ...` in the background; its stdout lines collected."""

    def __init__(self, cmd: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(shlex.split(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True, preexec_fn=_default_sigint)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ln in list(self.lines):
                if ln.startswith(prefix):
                    return ln
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {prefix!r} line; rc={self.proc.poll()}; output:\n" + "\n".join(self.lines[-60:]))

    def interrupt(self, timeout: float = 120.0) -> int:
        """Ctrl-C, as the README says; the whole session is killed if it does not stop."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # edgeuad and the Ray processes it started, like Ctrl-C
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
                raise
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("readme_serve")
    bundle, data = tiny_bundle(root)
    v2 = swapped_copy(bundle, root / "bundle_v2")
    part = root / "part.png"
    shutil.copyfile(sorted((data / "test").rglob("*.png"))[0], part)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return {"root": root, "bundle": bundle, "v2": v2, "part": part, "data": data, "env": env}


def run(cmd: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=timeout, env=env)


def substitute(cmd: str, s: dict[str, Any], port: int, extra: dict[str, str] | None = None) -> str:
    cmd = cmd.replace("bundles/bottle_v2", str(s["v2"])).replace("bundles/bottle", str(s["bundle"]))
    cmd = cmd.replace("@part.png", f"@{s['part']}").replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    for k, v in (extra or {}).items():
        cmd = cmd.replace(k, v)
    if cmd.startswith("edgeuad serve"):
        cmd += f" --port {port}"  # 8000 may be taken on a shared machine
    if cmd.startswith("edgeuad "):
        cmd = f"{sys.executable} -m edgeuad.cli " + cmd[len("edgeuad "):]
    return cmd


def test_readme_lists_the_commands_this_file_runs() -> None:
    cmds, yaml = readme_serving()
    assert [c.split()[:2] for c in cmds] == [["edgeuad", "serve"], ["curl", "-s"], ["edgeuad", "serve"],
                                              ["edgeuad", "bench"], ["edgeuad", "serve"], ["edgeuad", "serve"],
                                              ["curl", "-s"]]
    assert "--detach" in cmds[2] and "--cameras cameras.yaml" in cmds[4] and "--direct-ingress" in cmds[5]
    assert DIRECT_EXAMPLE in cmds[6]


def test_readme_cameras_yaml_is_valid(tmp_path: Path) -> None:
    _, yaml = readme_serving()
    (tmp_path / "cameras.yaml").write_text(yaml)
    cfg = CamerasConfig.from_yaml(tmp_path / "cameras.yaml", default_bundle="bottle")
    assert [c.name for c in cfg.cameras] == ["line1", "line2"] and cfg.out == str(tmp_path / "camera_results")
    assert cfg.cameras[1].live is True and cfg.cameras[0].stream_config().fps_limit == 5


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (the README queries with curl)")
def test_readme_serve_query_swap_and_load(setup: dict[str, Any], tmp_path: Path) -> None:
    cmds, _ = readme_serving()
    port = free_port()
    server = Server(substitute(cmds[0], setup, port), setup["env"])
    try:
        server.wait_for("serving bottle at ")
        address = server.wait_for("ray address: ").split()[2]
        assert re.match(r"^[\d.]+:\d+$", address), address
        q = run(substitute(cmds[1], setup, port), setup["env"])
        assert q.returncode == 0, q.stderr
        ans = json.loads(q.stdout)
        assert ans["digest"] == sha256_file(setup["bundle"] / "manifest.json") and ans["bundle"] == "bottle"
        assert isinstance(ans["score"], float) and isinstance(ans["is_anomaly"], bool)
        swap = run(substitute(cmds[2], setup, port), setup["env"])
        assert swap.returncode == 0, swap.stdout + swap.stderr
        assert "detached" in swap.stdout
        q2 = run(substitute(cmds[1], setup, port), setup["env"])
        assert json.loads(q2.stdout)["digest"] == sha256_file(setup["v2"] / "manifest.json")
        bench = run(substitute(cmds[3], setup, port) + f" --out {tmp_path}", setup["env"])
        assert bench.returncode == 0, bench.stdout + bench.stderr
        levels = json.loads((tmp_path / "serve_bench.json").read_text())["levels"]
        assert [lv["clients"] for lv in levels] == [1, 8] and all(lv["errors"] == 0 and lv["requests"] > 0
                                                                  for lv in levels)
    finally:
        rc = server.interrupt()
    assert rc == 0, "\n".join(server.lines[-40:])


def test_readme_cameras_command(setup: dict[str, Any]) -> None:
    cmds, _ = readme_serving()
    root = setup["root"]
    (root / "cams" / "imgs").mkdir(parents=True)
    for i, p in enumerate(sorted((setup["data"] / "test").rglob("*.png"))[:3]):
        shutil.copyfile(p, root / "cams" / "imgs" / f"{i}.png")
    yaml = root / "cams" / "cameras.yaml"
    yaml.write_text("out: results\ncameras:\n  - {name: folder, source: imgs}\n")
    port = free_port()
    server = Server(substitute(cmds[4], setup, port, {"cameras.yaml": str(yaml)}), setup["env"])
    out = root / "cams" / "results" / "folder" / "results.jsonl"
    try:
        server.wait_for("cameras: folder")
        deadline = time.monotonic() + 120
        while not out.exists() or len(out.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline and server.proc.poll() is None, "\n".join(server.lines[-40:])
            time.sleep(0.2)
    finally:
        rc = server.interrupt()
    assert rc == 0, "\n".join(server.lines[-40:])
    recs = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1, 2] and {r["camera"] for r in recs} == {"folder"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (the README queries with curl)")
def test_readme_direct_ingress(setup: dict[str, Any]) -> None:
    cmds, _ = readme_serving()
    port = free_port()
    server = Server(substitute(cmds[5], setup, port), setup["env"])
    try:
        server.wait_for("serving bottle at ")
        line = server.wait_for("direct ingress for bottle: ")
        (url,) = re.findall(r"http://127\.0\.0\.1:\d+/bottle", line)
        assert not url.startswith(f"http://127.0.0.1:{port}/")  # the replica's own port, not the proxy's
        digest = sha256_file(setup["bundle"] / "manifest.json")
        for cmd in (substitute(cmds[6], setup, port, {DIRECT_EXAMPLE: url}), substitute(cmds[1], setup, port)):
            q = run(cmd, setup["env"])  # the replica's port, then the proxy: both answer
            assert q.returncode == 0, q.stderr
            assert json.loads(q.stdout)["digest"] == digest, q.stdout
    finally:
        rc = server.interrupt()
    assert rc == 0, "\n".join(server.lines[-40:])
