"""benchmarks/make_results.py reads goal verdicts from the lines the benchmarks wrote: issue #17's row."""
from __future__ import annotations

import pytest
from script_helpers import load_benchmark

PROXY = ("- Added latency at batch 1 (1 client ...): **9.8 ms** (rounds: 9.0); ... Goal <= 3 ms: **NOT met**.\n"
         "- Ray Serve's floor on this machine (...): round trip p50 **5.3 ms** (rounds: 5.1).\n"
         "- Throughput at saturation with batching (...) = **96 %** (median ratio). Goal >= 85 %: **met**.\n")
DIRECT = ("- Added latency at batch 1 on the direct-ingress door (...): **{lat} ms** (rounds: 2.0); ... the floor app "
          "at its own port: p50 **0.5 ms**. Goal <= 3 ms: **{v}**.\n"
          "- Throughput at saturation on the direct-ingress door (...) = **97 %**. Goal >= 85 %: **met**.\n")


@pytest.mark.parametrize("direct, verdict", [
    (None, "**partly**: throughput met, latency not"),
    (DIRECT.format(lat="2.1", v="met"), "yes, with `--direct-ingress` (opt-in); through the proxy the latency goal is not met"),
    (DIRECT.format(lat="3.4", v="NOT met"), "**partly**: throughput met, latency not"),
])
def test_serve_goal_reads_both_doors(monkeypatch: pytest.MonkeyPatch, direct: str | None, verdict: str) -> None:
    mod = load_benchmark("make_results")
    monkeypatch.setattr(mod, "_read", lambda name: {"serve.md": PROXY, "serve_direct.md": direct}.get(name))
    text, got = mod.serve_summary()
    assert got == verdict
    assert text.startswith("through the proxy (default): 9.8 ms p50 added at batch 1 (Ray Serve's own floor, a no-op "
                           "app: 5.3 ms); 96 % of in-process throughput at saturation")
    if direct is not None:
        lat = "2.1" if "2.1" in direct else "3.4"
        assert f"on the direct-ingress door (`edgeuad serve --direct-ingress`, opt-in): {lat} ms added, 97 % " in text
    else:
        assert "direct" not in text
