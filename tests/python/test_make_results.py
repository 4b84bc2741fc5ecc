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


def _rc_run(curve: list[tuple[int, float, float]], commit: str) -> dict:
    return {"selection": {"curve": [{"iteration": i, "i_auroc_max": m, "i_auroc_topk_mean": t} for i, m, t in curve],
                          "levels": {"levels": "2,3", "val_i_auroc": {"2,3": 0.8}},
                          "checkpoint": {"iteration": 200, "last_iteration": 300}, "score": {"rule": "max"}},
            "metrics": {"i_auroc": 0.77, "p_auroc": 0.64}, "commit": commit}


def test_rc_criterion_takes_the_best_of_the_named_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm whose criterion is per evaluation the better of the max and top-1 % scores (arm H): the first
    row's criterion is the baseline, the difference is to it; with the max score alone the top-1 % is ignored."""
    mod = load_benchmark("make_results")
    runs = {"methods/base.json": _rc_run([(100, 0.70, 0.72), (200, 0.75, 0.71), (300, 0.74, 0.70)], "aaa"),
            "methods/arm.json": _rc_run([(100, 0.70, 0.79), (200, 0.73, 0.74), (300, 0.60, 0.61)], "bbb")}
    monkeypatch.setattr(mod, "_json", lambda name: runs.get(name))
    rows = (("base", "base.json"), ("arm", "arm.json"), ("gone", "gone.json"))
    both = mod._rc_criterion_table(rows, 300, "base", (), scores=("max", "topk_mean")).splitlines()
    assert "val best of max / topk_mean @100" in both[0]
    assert both[2].startswith("| base | 0.720 / 0.750 / 0.740 | 0.7500 | - |")
    assert both[3].startswith("| arm | 0.790 / 0.740 / 0.610 | 0.7900 | +0.0400 |")
    assert both[4].startswith("| gone | not measured (`gone.json` missing) |")
    only_max = mod._rc_criterion_table(rows[:2], 300, "base", ()).splitlines()
    assert "val max @100" in only_max[0] and only_max[3].startswith("| arm | 0.700 / 0.730 / 0.600 | 0.7300 | -0.0200 |")
