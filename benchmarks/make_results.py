#!/usr/bin/env python3
"""Rebuild benchmarks/RESULTS.md from benchmarks/RESULTS_template.md and the files the benchmark
scripts wrote under benchmarks/results/ (no measurement here: it only quotes and summarises).

    python benchmarks/make_results.py

Each {{name}} placeholder of the template is replaced by a table file or a one-line summary
computed from the JSON results; a missing result file leaves a visible "(not measured: ...)".
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from edgeuad.atomic import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RES = HERE / "results"


def _read(name: str) -> Optional[str]:
    p = RES / name
    return p.read_text().strip() if p.exists() else None


def _json(name: str) -> Optional[dict]:
    p = RES / name
    return json.loads(p.read_text()) if p.exists() else None


def _jsonl(name: str) -> Optional[list[dict]]:
    """Records of a JSON-lines results file (blank lines skipped), or None when it does not exist."""
    p = RES / name
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else None


def _splits_by_arm(name: str, key: Callable[[dict], tuple], keep: Optional[Callable[[dict], bool]] = None) -> Optional[dict[tuple, dict[str, dict]]]:
    """An ablation's JSON-lines records grouped as {arm key: {split: record}} (records failing `keep`
    dropped), or None when the file does not exist."""
    recs = _jsonl(name)
    if recs is None:
        return None
    arms: dict[tuple, dict[str, dict]] = {}
    for r in recs:
        if keep is None or keep(r):
            arms.setdefault(key(r), {})[r["split"]] = r
    return arms


def _md_rows(text: str) -> list[dict[str, str]]:
    """Rows of the first markdown table that follows a header line, as dicts keyed by header."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header and rows:
                break
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-:"):
            rows.append(dict(zip(header, cells)))
    return rows


def _tables(text: str) -> list[list[dict[str, str]]]:
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            out.append(_md_rows("\n".join(block)))
            block = []
    return out


METRICS = (("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO"), ("f1_max", "F1-max"),
           ("accuracy_at_threshold", "Acc@thr"))


def _metrics_text(m: dict) -> str:
    """'I-AUROC 0.861, P-AUROC ..., F1-max ...': the metrics a result has (no masks: no pixel metrics)."""
    return ", ".join(f"{label} {m[k]:.3f}" for k, label in METRICS if k in m)


def rc_summary(name: str) -> str:
    r = _json(name)
    if r is None:
        return f"(not measured: {name} missing)"
    o = r["overrides"]
    return (f"{_metrics_text(r['metrics'])}, train {r['train_seconds']:.0f} s ({o.get('iterations')} iterations, "
            f"batch {o.get('batch_size')}, {o.get('image_size')} px), {r['latency_ms_per_frame']:.1f} ms/frame")


def maps_ratio() -> tuple[str, bool]:
    t = _read("maps.md")
    if t is None:
        return "(not measured)", False
    rows = _md_rows(t)
    ratios = [float(r["torch / _rt"].rstrip("x")) for r in rows]
    return ", ".join(f"batch {r['batch']}: {r['torch / _rt']} torch eager" for r in rows), min(ratios) >= 5


GPU_REPORT = "gpu_smoke_h200.md"  # tools/gpu_smoke.sh's report.md from the lent H200, as it came back


def gpu_report(name: str = GPU_REPORT) -> str:
    """A report from the GPU without its CMake log, headings turned into bold lines (this page's own
    section levels stay intact)."""
    t = _read(name)
    if t is None:
        return "(not run: no GPU lent)"
    out, skip = [], False
    for line in t.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            skip = title == "build_rt"
            out += ["", f"**{title}**" + (" (CMake/ninja log left out: it configured CUDA 13.0.88 for sm_90 and "
                                              "built `_rt` in 25 s)" if skip else ""), ""]
            continue
        if not skip:  # plain lines keep their line breaks in markdown (two trailing spaces)
            if out and out[-1].startswith("|") and not line.startswith("|"):
                out.append("")  # a table ends at a blank line, else the next line becomes a row
            out.append(line if line.startswith(("|", "- ")) or not line.strip() else line + "  ")
    return "\n".join(out)


def gpu_maps() -> tuple[str, bool]:
    """Issue #4's CUDA goal from the report's timing table: >= 3x torch CUDA at batch 1 and >= 60% of the
    peak DRAM bandwidth at batch >= 8."""
    t = _read(GPU_REPORT)
    if t is None:
        return "not measured: no GPU lent", False
    head = "## fused CUDA map vs torch CUDA"  # the timing step (the profile step's heading starts alike)
    rows = _md_rows(t[t.index(head):]) if head in t else []
    if not rows:
        return "(the report has no timing table)", False
    b1 = [r for r in rows if r["batch"] == "1"]
    big = [r for r in rows if int(r["batch"]) >= 8]
    peak = [float(r["% of peak"].rstrip("%")) for r in big]
    ok = all(float(r["speed-up"].rstrip("x")) >= 3 for r in b1) and min(peak) >= 60
    return (f"H200 (2026-12-04): batch 1 {', '.join(r['speed-up'] + ' (' + r['dtype'] + ')' for r in b1)} "
            f"faster than torch CUDA; at batch 8-64 {min(peak):.0f}-{max(peak):.0f}% of peak DRAM bandwidth "
            "(section 5)", ok)


def bank_100k() -> tuple[str, bool]:
    t = _read("bank.md")
    if t is None:
        return "(not measured)", False
    search = [r for tab in _tables(t) for r in tab if "recall@1" in r and r["items"] == "100,000" and r["search"] == "hnsw"]
    ok = [r for r in search if float(r["recall@1"]) >= 0.99]
    if not ok:
        return "no ef reaches recall 0.99 at 100k", False
    best = max(ok, key=lambda r: float(r["speed-up vs exact"].rstrip("x")))
    sp = float(best["speed-up vs exact"].rstrip("x"))
    met = sp >= 10
    # Since the pruned exact search, the reference is the faster of the two exact searches (the default);
    # the full search's row says what HNSW gains over a brute force that does all the work.
    full = [r for tab in _tables(t) for r in tab
            if "recall@1" in r and r["items"] == "100,000" and r["search"] == "exact (full)"]
    if not full:
        return f"ef {best['ef']}: {best['speed-up vs exact']} exact at recall@1 {best['recall@1']}", met
    qps = lambda r: float(r["queries/s"].replace(",", ""))  # noqa: E731 - the rounded "0.1x" column is too coarse
    vs_full = qps(best) / qps(full[0])
    return (f"ef {best['ef']}: {sp:.1f}x the default (pruned) exact search, {vs_full:.1f}x the full exact search, "
            f"at recall@1 {best['recall@1']}"), met


def pipe_summary(name: str, reference: str = "torch-eager", goal: float = 2.0,
                 runtime: str = "onnxruntime") -> tuple[str, Optional[bool]]:
    """`runtime`'s speed-up over `reference` at batch 1 per thread count: the median over interleaved
    rounds with its min-max (bench/protocol.py).  Met = at every thread count the median >= goal and,
    for the fp32 runtime, its scores agree with the eager torch reference (an int8 runtime's scores
    differ by design: its accuracy cost is measured on the test split, section 5)."""
    d = _json(name)
    if d is None:
        return f"(not measured: {name} missing)", False
    sps = d.get("speedups", [])
    if sps and "reference" not in sps[0]:
        return f"({name} was measured with the old protocol: re-run benchmarks/bench_pipeline.py)", None
    rows = sorted((s for s in sps if s["runtime"] == runtime and s["reference"] == reference
                   and s["batch_size"] == 1), key=lambda s: s["threads"])
    if not rows:
        return f"(no {runtime} vs {reference} row in {name})", False
    par = [p for p in d["parity"] if p["backend"] == "onnxruntime"] if runtime == "onnxruntime" else []
    ok = all(p["ok"] for p in par) and all(s["speedup_median"] >= goal for s in rows)
    txt = ", ".join(f"{s['threads_label']} thr: x{s['speedup_median']:.2f} [x{s['speedup_min']:.2f}-x{s['speedup_max']:.2f}]"
                    for s in rows)
    if par:
        txt += f" (scores within {par[0]['max_abs_score_diff']:.0e})"
    return txt, ok


def fp16_summary() -> str:
    """fp16 graph (TensorRT 11's fp16 source, run in onnxruntime on the CPU) vs fp32, from results/fp16_*.json."""
    parts = []
    for f in sorted(RES.glob("fp16_*.json")):
        r = json.loads(f.read_text())
        a, b = r["fp32"], r["fp16"]
        txt = f"{r['dataset']} {r['method']}: I-AUROC {a['i_auroc']:.4f} -> {b['i_auroc']:.4f}"
        if "p_auroc" in a and "p_auroc" in b:
            txt += f", P-AUROC {a['p_auroc']:.4f} -> {b['p_auroc']:.4f}"
        dirty = " (dirty tree)" if r["machine"].get("git_dirty") else ""
        parts.append(txt + f" (commit {r['machine']['git_commit'][:7]}{dirty})")
    return "; ".join(parts) or "(not measured: python benchmarks/int8_accuracy.py --precision fp16 ...)"


CPU_INT8_LAYOUT_SINCE = "847fbcf"  # int8_accuracy.py builds onnxruntime's int8 layout from this commit on


def _int8_layout(r: dict) -> str:
    """The Q/DQ layout a result measured: recorded since it existed, else told by its commit (before
    CPU_INT8_LAYOUT_SINCE every int8 graph had the TensorRT layout)."""
    if r.get("layout"):
        return str(r["layout"])
    import subprocess  # noqa: PLC0415

    commit = r["machine"]["git_commit"]
    after = subprocess.run(["git", "merge-base", "--is-ancestor", CPU_INT8_LAYOUT_SINCE, commit],
                           cwd=RES.parent.parent, capture_output=True).returncode == 0
    return "onnxruntime" if after else "tensorrt"


def int8_rc_outputs() -> str:
    """Each graph output's relative int8 error of the magnetic_tile ReContrast graph (int8_accuracy.py's
    record of insert_qdq's report)."""
    r = _json("int8_magnetic_tile_recontrast.json")
    rel = ((r or {}).get("quantization") or {}).get("output_rel_error")
    if not rel:
        return "(not measured: results/int8_magnetic_tile_recontrast.json has no per-output errors)"
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(rel.items(), key=lambda kv: -kv[1]))


def int8_summary() -> tuple[str, str, str]:
    """(per-bundle text, file list, verdict): INT8 I-AUROC drop and the Detector's mean latency of both
    evaluations, from results/int8_*.json (int8_accuracy.py: fp32 and int8 evaluated in the same run).
    A method meets the goal when it was measured on magnetic_tile and bottle and every drop <= 0.005."""
    files = sorted((RES).glob("int8_*.json"))
    parts = []
    drops: dict[str, dict[str, float]] = {}
    for f in files:
        r = json.loads(f.read_text())
        drop = r["fp32"]["i_auroc"] - r["int8"]["i_auroc"]
        drops.setdefault(r["method"], {})[r["dataset"]] = drop
        parts.append(f"{r['dataset']} {r['method']}: I-AUROC {r['fp32']['i_auroc']:.4f} -> {r['int8']['i_auroc']:.4f} "
                     f"(drop {drop:+.4f}), {r['int8']['latency_ms_mean']:.1f} vs {r['fp32']['latency_ms_mean']:.1f} "
                     f"ms/frame ({r['threads']} thr, {_int8_layout(r)} layout, commit {r['machine']['git_commit'][:7]})")
    ok = [m for m, d in sorted(drops.items()) if {"magnetic_tile", "bottle"} <= set(d) and max(d.values()) <= 0.005]
    if not drops:
        verdict = "**no** (not measured)"
    elif len(ok) == len(drops):
        verdict = "yes"
    elif ok:
        verdict = "**partly**: " + ", ".join(ok) + " only"
    else:
        verdict = "**no**"
    names = ", ".join(f"`{f.name}`" for f in files) or "none yet"
    return ("; ".join(parts) or "(not measured: run benchmarks/int8_accuracy.py)"), names, verdict


def bank_gflops() -> str:
    t = _read("bank_gemm.md")
    if t is None:
        return "(not measured: python benchmarks/bench_bank.py --gemm)"
    rows = [r for tab in _tables(t) for r in tab if r.get("kernel", "").startswith("_rt exact") and r.get("threads") == "1"]
    gemm = {(r["items"], r["dim"]): r for tab in _tables(t) for r in tab
            if r.get("kernel", "") == "torch GEMM (MKL/oneDNN)" and r.get("threads") == "1"}
    return "; ".join(f"{r['kernel']} {r['items']}x{r['dim']}: {r['GFLOP/s per thread']} GFLOP/s per thread = "
                     f"{r['% of peak']} of peak" + (f" (MKL GEMM alone: {gemm[(r['items'], r['dim'])]['% of peak']})"
                                                     if (r["items"], r["dim"]) in gemm else "")
                     for r in rows if "portable" not in r["kernel"]) or "(no 1-thread _rt row in bank_gemm.md)"


def patch_summary(name: str) -> str:
    r = _json(name)
    if r is None:
        return f"(not measured: {name} missing)"
    return f"{_metrics_text(r['metrics'])}, train {r['train_seconds']:.0f} s"


ENS_MARGIN = 0.010  # the plan's criterion (benchmarks/plans/ensemble_patchcore_recontrast_2026-12-04.md)
# _pc_rc: the plan's arm (PatchCore default of seed 0 before input_norm); _pcnorm_rc: with input_norm=auto;
# _pc_lite2_lite0inc: two PatchCore backbones, both with the inception input (plan ensemble_backbones_2026-12-04)
ENS_SUFFIXES = ("_pc_rc", "_pcnorm_rc", "_pc_lite2_lite0inc")


def ens_check(dataset: str, suffix: str = "_pc_rc") -> dict | None:
    """ensemble_validation.py's record, or None."""
    return _json(f"methods/{dataset}_ensemble_validation{suffix}.json")


def ens_adopted(dataset: str = "magnetic_tile", suffix: str = "_pc_rc") -> bool:
    """Did the ensemble pass the plan's criterion (validation I-AUROC >= its best member's + 0.010)?"""
    r = ens_check(dataset, suffix)
    return r is not None and r["ensemble_gain_i_auroc"] >= ENS_MARGIN - 1e-9


def ens_table() -> str:
    """Per dataset and member set: every member alone and each combination on the synthetic-defect split
    (the criterion), then the ensemble bundle's test row (read afterwards, for the record)."""
    out = ["| dataset | members | val I-AUROC | val blended | val crack | val P-AUROC | vs best member | "
           "test I-AUROC | test P-AUROC | Acc@thr | commit (val / test) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ds, suffix in [(d, x) for d in ("magnetic_tile", "bottle") for x in ENS_SUFFIXES]:
        v, t = ens_check(ds, suffix), _json(f"methods/{ds}_ensemble{suffix}.json")
        if v is None:
            if suffix == ENS_SUFFIXES[0]:
                out.append(f"| {ds} | not measured (`{ds}_ensemble_validation{suffix}.json` missing) |" + " |" * 9)
            continue
        best = v["best_single_i_auroc"]
        for row in v["rows"]:
            full = row is v["rows"][-1]  # every member
            gain = "-" if len(row["members"]) == 1 else f"{row['i_auroc'] - best:+.4f}"
            if full and t is not None:
                m = t["metrics"]
                pa = f"{m['p_auroc']:.4f}" if "p_auroc" in m else "n/a (no masks)"
                test = (f"{m['i_auroc']:.4f} | {pa} | {m['accuracy_at_threshold']:.4f} | "
                        f"{v['commit']} / {t['commit']}")
            else:
                test = f"- | - | - | {v['commit']}"
            names = " + ".join(n.replace("efficientnet_", "") for n in row["members"])
            cells = [f"{row[k]:.4f}" if k in row else "n/a" for k in ("i_auroc", "i_auroc_blended", "i_auroc_crack",
                                                                         "p_auroc")]
            out.append(f"| {ds} | {names} | {' | '.join(cells)} | {gain} | {test} |")
    return "\n".join(out)


def input_norm_table() -> str:
    """benchmarks/ablate_input_norm.py: per dataset and normalisation, the stem statistics (Lite0, Lite2) and
    the patch proxy's validation I-AUROC per Lite backbone (plan: input_normalisation_2026-12-04.md)."""
    out = ["| dataset | normalisation | stem mean shift / var ratio (lite0) | (lite2) | val I-AUROC lite0 | lite1 | "
           "lite2 | best | vs ImageNet | commit |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for ds in ("magnetic_tile", "bottle"):
        r = _json(f"methods/{ds}_input_norm.json")
        if r is None:
            out.append(f"| {ds} | not measured (`{ds}_input_norm.json` missing) |" + " |" * 8)
            continue
        stem = {(x["backbone"], x["norm"]): x for x in r["stem"]}
        base = next((p["best_i_auroc"] for p in r["proxy"] if p["norm"] == "imagenet"), None)
        for p in r["proxy"]:
            st = [stem.get((f"efficientnet_{b}", p["norm"])) for b in ("lite0", "lite2")]
            st_txt = [f"{x['mean_shift_sd']:.2f} / {x['var_ratio']:.2f}" if x else "-" for x in st]
            c = [p["candidates"].get(f"efficientnet_{b}", {}).get("i_auroc") for b in ("lite0", "lite1", "lite2")]
            c_txt = [f"{v:.4f}" if v is not None else "-" for v in c]
            diff = "-" if base is None or p["norm"] == "imagenet" else f"{p['best_i_auroc'] - base:+.4f}"
            out.append(f"| {ds} | {p['norm']} | {st_txt[0]} | {st_txt[1]} | {' | '.join(c_txt)} | "
                       f"{p['best_i_auroc']:.4f} | {diff} | {r['commit']} |")
    return "\n".join(out)


def methods_verdict() -> tuple[str, bool]:
    """Each paper method against PatchCore, per dataset and metric, from the methods JSON files.
    Met = both paper methods strictly above PatchCore in I-AUROC on every dataset measured."""
    datasets = sorted({p.name.rsplit("_", 1)[0] for p in (RES / "methods").glob("*_patchcore.json")})
    if not datasets:
        return "(not measured)", False
    parts, met = [], True
    for ds in datasets:
        base = _json(f"methods/{ds}_patchcore.json")
        for m in ("recontrast", "reconpatch"):
            r = _json(f"methods/{ds}_{m}.json")
            if r is None:
                parts.append(f"{ds} {m}: not measured")
                met = False
                continue
            cmp = []
            for k, label in METRICS:
                if k in r["metrics"] and k in base["metrics"]:
                    a, b = r["metrics"][k], base["metrics"][k]
                    cmp.append(f"{label} {a:.3f} {'>' if a > b else '=' if a == b else '<'} {b:.3f}")
            met = met and r["metrics"]["i_auroc"] > base["metrics"]["i_auroc"]
            parts.append(f"{ds} {m} vs patchcore: " + ", ".join(cmp))
    return "; ".join(parts), met


def seeds_table(dataset: str, methods: tuple[str, ...] = ("patchcore", "reconpatch"), variant: str = "") -> str:
    """Per-seed metrics from <dataset>_<method><variant>.json (seed 0) and ..._seed<N>.json
    (variant: an archived set such as "_bank630")."""
    head = "| method | seed | " + " | ".join(label for _, label in METRICS) + " |\n|---|---:|" + "---:|" * len(METRICS) + "\n"
    rows, means = [], []
    for m in methods:
        stem = f"{dataset}_{m}{variant}"
        names = [f"{stem}.json"] + sorted(p.name for p in (RES / "methods").glob(f"{stem}_seed*.json"))
        runs = [r for r in (_json(f"methods/{n}") for n in names) if r is not None]
        for r in runs:
            rows.append(f"| {m} | {r['overrides'].get('seed', '?')} | "
                        + " | ".join(f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "n/a" for k, _ in METRICS) + " |")
        if runs:
            mean = [sum(r["metrics"][k] for r in runs) / len(runs) if all(k in r["metrics"] for r in runs) else None
                    for k, _ in METRICS]
            means.append(f"| {m} | mean of {len(runs)} | " + " | ".join(f"{v:.4f}" if v is not None else "n/a" for v in mean) + " |")
    if not rows:
        return "(not measured)"
    return head + "\n".join(rows + means)


def auto_table() -> str:
    """The patch methods' backbone "auto" per run, before input_norm auto: what each candidate scored on the
    synthetic-defect validation split, what was chosen, and the run's test result (magnetic_tile's archived
    `*_prenorm*` rows where they exist, else the default rows: bottle's predate input_norm and are kept)."""
    short = lambda n: n.replace("efficientnet_", "")  # noqa: E731
    out = ["| dataset | method | seed | val I-AUROC lite0 / lite1 / lite2 (crack family) | chosen | test I-AUROC "
           "| test P-AUROC | train s |", "|---|---|---:|---|---|---:|---:|---:|"]
    for ds in ("magnetic_tile", "bottle"):
        for m in ("patchcore", "reconpatch"):
            for r in _seed_runs(ds, m, "_prenorm") or _seed_runs(ds, m):
                ch = r.get("backbone_choice")
                if not ch:
                    continue
                c = ch["candidates"]
                val = " / ".join(f"{c[n]['i_auroc']:.4f} ({c[n].get('i_auroc_crack', float('nan')):.3f})"
                                 if "i_auroc" in c.get(n, {}) else "n/a" for n in
                                 ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"))
                mt = r["metrics"]
                pa = f"{mt['p_auroc']:.4f}" if "p_auroc" in mt else "n/a"  # bottle has image labels only
                out.append(f"| {ds} | {m} | {r['overrides'].get('seed', '?')} | {val} | {short(ch['chosen'])} | "
                           f"{mt['i_auroc']:.4f} | {pa} | {r['train_seconds']:.0f} |")
    return "\n".join(out) if len(out) > 2 else "(not measured)"


def norm_auto_table() -> str:
    """Runs whose backbone auto chose an input normalisation too (input_norm=auto): every (backbone,
    normalisation) candidate's validation I-AUROC, the choice, and the shipped bundle's test result (read
    afterwards)."""
    # backbone_choice.ORDER (not imported: this script reads JSON only, no torch)
    ORDER = tuple(f"efficientnet_lite{i}{s}" for i in range(3) for s in ("", "/inception"))
    short = lambda n: n.replace("efficientnet_", "")  # noqa: E731
    out = ["| dataset | method | seed | " + " | ".join(f"val {short(n)}" for n in ORDER)
           + " | chosen | test I-AUROC | test P-AUROC | AUPRO | Acc@thr | train s | commit |",
           "|---|---|---:|" + "---:|" * len(ORDER) + "---|---:|---:|---:|---:|---:|---|"]
    runs = [r for f in sorted((RES / "methods").glob("*.json")) for r in [json.loads(f.read_text())]
            if (r.get("backbone_choice") or {}).get("input_norm")]
    for r in sorted(runs, key=lambda r: (r["dataset"], r["method"], r["overrides"].get("seed", 0))):
        ch, mt = r.get("backbone_choice") or {}, r["metrics"]
        c = ch.get("candidates", {})
        vals = [f"{c[n]['i_auroc']:.4f}" if "i_auroc" in c.get(n, {}) else "-" for n in ORDER]
        pa = f"{mt['p_auroc']:.4f}" if "p_auroc" in mt else "n/a"
        ap = f"{mt['aupro']:.4f}" if "aupro" in mt else "n/a"
        out.append(f"| {r['dataset']} | {r['method']} | {r['overrides'].get('seed', '?')} | {' | '.join(vals)} | "
                   f"{short(ch.get('chosen', '?'))} / {ch.get('input_norm', '?')} | {mt['i_auroc']:.4f} | {pa} | {ap} | "
                   f"{mt['accuracy_at_threshold']:.4f} | {r['train_seconds']:.0f} | {r['commit']} |")
    return "\n".join(out) if len(out) > 2 else "(not measured: no run with input_norm auto)"


def demo() -> tuple[str, bool]:
    d = _json("demo_summary.json")
    if d is None:
        return "(not measured: run `edgeuad demo` and copy demo_summary.json)", False
    m, c = d["metrics"], d["config"]
    txt = (f"{d['method']}: I-AUROC {m['i_auroc']:.3f}, P-AUROC {m.get('p_auroc', float('nan')):.3f}, "
           f"AUPRO {m.get('aupro', float('nan')):.3f} ({c.get('image_size')} px, {c.get('iterations')} iterations; "
           f"trained {d['train_seconds']:.0f} s, whole demo {d['total_seconds']:.0f} s)")
    return txt, m["i_auroc"] >= 0.95


def methods_table(keep: Callable[[str, dict], bool]) -> str:
    """The methods table (compare_methods.table's format) over the result files `keep` selects."""
    import compare_methods  # noqa: PLC0415 - beside this script; imports edgeuad (no torch at import)

    rows = [r for f in sorted((RES / "methods").glob("*.json")) for r in [json.loads(f.read_text())] if keep(f.name, r)]
    return compare_methods.table(rows).strip() if rows else "(not measured)"


def serve_summary() -> tuple[str, str]:
    """Issue #17's two goals, quoted from the verdict lines bench_serve.py writes into results/serve.md (the
    proxy door, `edgeuad serve`'s default) and, when measured, results/serve_direct.md (the replicas' own
    ports, `edgeuad serve --direct-ingress`)."""
    text = _read("serve.md")
    if text is None:
        return "(not measured: python benchmarks/bench_serve.py)", "**no**"
    lat = re.search(r"Added latency at batch 1.*?\*\*([\d.]+ ms)\*\*.*?Goal <= 3 ms: \*\*([A-Za-z ]+)\*\*", text)
    thr = re.search(r"Throughput at saturation.*?\*\*([\d.]+ %)\*\*.*?Goal >= 85 %: \*\*([A-Za-z ]+)\*\*", text)
    if not lat or not thr:
        return "(results/serve.md has no verdict lines)", "**no**"
    met = lambda m: m.group(2).strip().lower() == "met"  # noqa: E731
    floor = re.search(r"Ray Serve's floor on this machine.*?\*\*([\d.]+ ms)\*\*", text)
    txt = (f"through the proxy (default): {lat.group(1)} p50 added at batch 1"
           + (f" (Ray Serve's own floor, a no-op app: {floor.group(1)})" if floor else "")
           + f"; {thr.group(1)} of in-process throughput at saturation")
    direct = _read("serve_direct.md") or ""
    dlat = re.search(r"Added latency at batch 1 on the direct-ingress door.*?\*\*([\d.]+ ms)\*\*.*?"
                     r"Goal <= 3 ms: \*\*([A-Za-z ]+)\*\*", direct)
    dthr = re.search(r"Throughput at saturation on the direct-ingress door.*?\*\*([\d.]+ %)\*\*.*?"
                     r"Goal >= 85 %: \*\*([A-Za-z ]+)\*\*", direct)
    if dlat and dthr:
        txt += (f"; on the direct-ingress door (`edgeuad serve --direct-ingress`, opt-in): {dlat.group(1)} added, "
                f"{dthr.group(1)} of in-process throughput")
    txt += " (section 7)"
    if met(lat) and met(thr):
        return txt, "yes"
    if dlat and dthr and met(dlat) and met(dthr):
        return txt, "yes, with `--direct-ingress` (opt-in); through the proxy the latency goal is not met"
    return txt, "**partly**: throughput met, latency not" if met(thr) else "**no**"


def _seed_runs(dataset: str, method: str, variant: str = "") -> list[dict]:
    stem = f"{dataset}_{method}{variant}"
    names = [f"{stem}.json"] + sorted(p.name for p in (RES / "methods").glob(f"{stem}_seed*.json"))
    return [r for r in (_json(f"methods/{n}") for n in names) if r is not None]


def goals13() -> dict[str, tuple[str, Optional[bool]]]:
    """Issue #13's goals, computed from the methods JSON files (current defaults only: *_pre13 and other
    archived variants are not rows of the main table)."""
    out: dict[str, tuple[str, Optional[bool]]] = {}
    pc = [r for r in _seed_runs("magnetic_tile", "patchcore") if "accuracy_at_threshold" in r["metrics"]]
    if pc:
        mean = sum(r["metrics"]["i_auroc"] for r in pc) / len(pc)
        seeds = ", ".join(f"{r['metrics']['i_auroc']:.4f}" for r in pc)
        # per seed, in seed order: "lite2/inception" (backbone / input normalisation where auto chose one)
        chosen = [r.get("backbone", "efficientnet_lite0").replace("efficientnet_", "")
                  + (f"/{n}" if (n := (r.get("backbone_choice") or {}).get("input_norm")) else "") for r in pc]
        auto = all(r.get("backbone_choice") for r in pc)
        note = (f"; backbone auto chose {', '.join(chosen)} from validation: not an independent confirmation on this "
                "set (section 1, \"What this does and does not show\")" if auto else f"; backbone {', '.join(chosen)}")
        out["pc13"] = (f"mean I-AUROC {mean:.4f} over {len(pc)} seed(s) ({seeds}){note}", mean >= 0.925 and len(pc) >= 3)
        out["pc13_mean"] = (f"mean I-AUROC {mean:.4f} over {len(pc)} seed(s) ({seeds})", None)
    else:
        out["pc13"] = out["pc13_mean"] = ("(not measured with the current defaults)", False)
    # the PatchCore + ReContrast ensemble counts only if it passed its pre-registered validation criterion
    names = ("patchcore", "reconpatch", "recontrast", "ensemble", "patchcore_lite2",
             # only the pre-registered arm can be adopted (the plan); _pcnorm_rc is reported beside it
             *(("ensemble_pc_rc",) if ens_adopted(suffix="_pc_rc") else ()))
    rows = [r for m in names
            for r in [_json(f"methods/magnetic_tile_{m}.json")] if r is not None and "accuracy_at_threshold" in r["metrics"]]
    if rows:
        best = max(rows, key=lambda r: r["metrics"]["i_auroc"])
        m = best["metrics"]
        bb = best["overrides"].get("members") or best.get("backbone") or best["overrides"].get("backbone",
                                                                                              "efficientnet_lite0")
        norm = (best.get("backbone_choice") or {}).get("input_norm")
        bb += f", input {norm} (input_norm auto)" if norm else ""
        out["best13"] = (f"{best['method']} ({bb}, seed 0): I-AUROC {m['i_auroc']:.4f}, "
                         f"P-AUROC {m.get('p_auroc', float('nan')):.4f}",
                         m["i_auroc"] >= 0.95 and m.get("p_auroc", 0.0) >= 0.85)
    else:
        out["best13"] = ("(not measured with the current defaults)", False)
    # the goal compares on the same backbone: ReContrast's (Lite0), not PatchCore's auto choice
    rc, base = _json("methods/magnetic_tile_recontrast.json"), _json("methods/magnetic_tile_patchcore_lite0.json")
    if rc and base and "accuracy_at_threshold" in rc["metrics"] and "accuracy_at_threshold" in base["metrics"]:
        a, b = rc["metrics"]["i_auroc"], base["metrics"]["i_auroc"]
        txt, ok = f"ReContrast {a:.4f} vs PatchCore-Lite0 {b:.4f} (seed 0)", a >= b
        gpu = _seed_runs("magnetic_tile", "recontrast", "_gpu")  # the paper's 2000 iterations, trained on the H200
        if gpu:
            g = sum(r["metrics"]["i_auroc"] for r in gpu) / len(gpu)
            txt += (f"; at the default 2000 iterations, trained on a lent H200, {len(gpu)} seeds: mean {g:.4f} "
                    f"({', '.join(format(r['metrics']['i_auroc'], '.4f') for r in gpu)})")
            ok = ok and g >= b
        out["rc13"] = (txt, ok)
    else:
        out["rc13"] = ("(ReContrast not measured with the current training: see section 1)", False)
    bt = [r for m in ("patchcore", "reconpatch", "recontrast") for r in [_json(f"methods/bottle_{m}.json")]
          if r is not None and "accuracy_at_threshold" in r["metrics"]]
    if bt:
        out["bottle13"] = ("; ".join(f"bottle {r['method']}: I-AUROC {r['metrics']['i_auroc']:.4f}, Acc@thr "
                                     f"{r['metrics']['accuracy_at_threshold']:.4f}" for r in bt),
                           all(r["metrics"]["i_auroc"] >= 0.9999 for r in bt))
    else:
        out["bottle13"] = ("(not measured with the current defaults)", False)
    return out


def rc_curve(name: str = "methods/magnetic_tile_recontrast.json") -> str:
    """ReContrast's training curve on the synthetic-defect validation set (the selection report that
    compare_methods.py keeps in the result JSON): the BN-mode probes, then the chosen mode's run."""
    r = _json(name)
    sel = (r or {}).get("selection")
    if not sel:
        return f"(not measured: {name} has no selection report)"
    bn, ck = sel["encoder_bn"], sel["checkpoint"]
    out = [f"Encoder BN mode chosen: **{bn['mode']}** ({bn['how']}: "
           + ", ".join(f"{k} {v:.4f}" for k, v in bn["val_i_auroc"].items()) + f"); checkpoint kept: iteration "
           f"{ck['iteration']} of {ck['last_iteration']} ({ck['how']}); image score: {sel['score']['rule']} "
           f"({sel['score']['how']}).", "",
           "| arm | iteration | loss | val I-AUROC (max) | val I-AUROC (top-1 %) | val P-AUROC |",
           "|---|---:|---:|---:|---:|---:|"]
    # the probe arms up to the probe length only (results before the fix of commit after d9eb01b
    # recorded the chosen arm's whole run under its probe curve)
    n_probe = bn.get("probe_iterations", 0)
    rows = [(f"probe {k}", e) for k, c in bn.get("probe_curves", {}).items() for e in c if e["iteration"] <= n_probe]
    rows += [(f"{bn['mode']} (run)", e) for e in sel["curve"]]
    for arm, e in rows:
        out.append(f"| {arm} | {e['iteration']} | {e.get('loss', float('nan')):.4f} | {e['i_auroc_max']:.4f} | "
                   f"{e['i_auroc_topk_mean']:.4f} | {e.get('p_auroc', float('nan')):.4f} |")
    return "\n".join(out)


def bank_size_table(dataset: str = "magnetic_tile") -> str:
    """Validation I-/P-AUROC of the PatchCore default by training-set size (ablate_patchcore.py --train-drop)."""
    name = f"methods/{dataset}_patchcore_bank_size.jsonl"
    recs = _jsonl(name)
    if recs is None:
        return f"(not measured: results/{name} missing)"
    out = ["| bank built from | val I-AUROC | val P-AUROC |", "|---|---:|---:|"]
    for r in sorted((r for r in recs if r["align_corners"] and r["split"] == "val"), key=lambda r: r["n_train"]):
        out.append(f"| {r['n_train']} training images | {r['i_auroc']:.4f} | {r['p_auroc']:.4f} |")
    return "\n".join(out)


def size_table(dataset: str = "magnetic_tile") -> str:
    """PatchCore by backbone and input size: synthetic-defect validation (ablate_patchcore.py --backbone
    --size, the 630-image bank, align_corners=True) beside the shipped path's test result (compare_methods.py)."""
    val = {}
    for name in (f"{dataset}_patchcore_bank_size.jsonl", f"{dataset}_patchcore_size.jsonl",
                 f"{dataset}_patchcore_backbone.jsonl"):
        for r in _jsonl(f"methods/{name}") or []:
            if r["align_corners"] and r["split"] == "val" and r["n_train"] == 630:
                val[r["backbone"].replace("efficientnet_", ""), r.get("size", 256)] = r
    out = ["| backbone | input size | val I-AUROC | val P-AUROC | test I-AUROC | test P-AUROC | ms/frame (eval) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for bb, size, suffix in (("lite0", 256, "_lite0"), ("lite0", 320, "_320"), ("lite2", 256, "_lite2"),
                             ("lite2", 320, "_lite2_320")):
        t = _json(f"methods/{dataset}_patchcore{suffix}.json")
        v = val.get((bb, size))
        if t is None and v is None:
            continue
        vi, vp = (f"{v['i_auroc']:.4f}", f"{v['p_auroc']:.4f}") if v else ("-", "-")
        ti, tp, ms = ((f"{t['metrics']['i_auroc']:.4f}", f"{t['metrics']['p_auroc']:.4f}",
                       f"{t['latency_ms_per_frame']:.1f}") if t else ("-", "-", "-"))
        out.append(f"| {bb} | {size} | {vi} | {vp} | {ti} | {tp} | {ms} |")
    return "\n".join(out) if len(out) > 2 else "(not measured)"


def geometry_table(dataset: str = "magnetic_tile") -> str:
    """Squash vs letterbox (benchmarks/ablate_geometry.py): validation (selection) and test (record)."""
    name = f"methods/{dataset}_patchcore_geometry.jsonl"
    arms = _splits_by_arm(name, lambda r: (r["resize"], r["size"], r["n_train"]))
    if arms is None:
        return f"(not measured: results/{name} missing)"
    types = sorted({k[len("i_auroc_"):] for sp in arms.values() for k in sp.get("test", {}) if k.startswith("i_auroc_")})
    out = ["| resize | input size | training images | val I-AUROC | val P-AUROC | test I-AUROC | test P-AUROC | "
           + " | ".join(f"test {t}" for t in types) + " |",
           "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(types)]
    for (mode, size, n), sp in arms.items():
        v, t = sp.get("val", {}), sp.get("test", {})
        f = lambda d, k: f"{d[k]:.4f}" if k in d else "-"  # noqa: E731
        out.append(f"| {mode} | {size} | {n} | {f(v, 'i_auroc')} | {f(v, 'p_auroc')} | {f(t, 'i_auroc')} | "
                   f"{f(t, 'p_auroc')} | " + " | ".join(f(t, f"i_auroc_{ty}") for ty in types) + " |")
    return "\n".join(out)


def patchcore_ablation(dataset: str = "magnetic_tile") -> str:
    """The PatchCore feature ablation (benchmarks/ablate_patchcore.py): validation (selection) and test
    (record) I-/P-AUROC per feature space, at the product's align_corners=True."""
    name = f"methods/{dataset}_patchcore_ablation.jsonl"
    rows = _splits_by_arm(name, lambda r: (r["backbone"], r["n_train"], r["interp"], r["count_include_pad"],
                                           r["features"]), keep=lambda r: r["align_corners"])
    if rows is None:
        return f"(not measured: results/{name} missing)"
    out = ["| backbone | training images | resize | zero pad counted | features | val I-AUROC | val P-AUROC "
           "| test I-AUROC | test P-AUROC |", "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for (bb, n, interp, cip, feats), by in rows.items():
        cell = lambda split, k: f"{by[split][k]:.4f}" if split in by else "-"  # noqa: E731
        out.append(f"| {bb} | {n} | {interp} | {'yes' if cip else 'no'} | {feats} | {cell('val', 'i_auroc')} | "
                   f"{cell('val', 'p_auroc')} | {cell('test', 'i_auroc')} | {cell('test', 'p_auroc')} |")
    return "\n".join(out)


def post_ablation_table(dataset: str = "magnetic_tile") -> str:
    """Pre-registered arms against the PatchCore default (ablate_patchcore.py --val blended+crack
    --coreset --sigmas --scores): the selection criterion (validation I-AUROC over blended + crack),
    its two families, and the test split for the record."""
    name = f"methods/{dataset}_patchcore_post.jsonl"
    arms = _splits_by_arm(name, lambda r: (r["backbone"].replace("efficientnet_", ""), r["coreset"], r["sigma"], r["score"]),
                          keep=lambda r: r["align_corners"])
    if arms is None:
        return f"(not measured: results/{name} missing)"
    types = sorted({k[len("i_auroc_"):] for sp in arms.values() for k in sp.get("test", {}) if k.startswith("i_auroc_")})
    out = ["| backbone | coreset | bank | sigma | image score | val I-AUROC (criterion) | val blended | val crack "
           "| val P-AUROC | test I-AUROC | test P-AUROC | " + " | ".join(f"test {t}" for t in types) + " |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(types)]
    for (bb, ratio, sigma, score), sp in sorted(arms.items()):
        v, t = sp.get("val", {}), sp.get("test", {})
        f = lambda d, k: f"{d[k]:.4f}" if k in d else "-"  # noqa: E731
        bank = (v or t).get("bank", "-")
        out.append(f"| {bb} | {ratio:.0%} | {bank} | {sigma:g} | {'max' if score == 'max' else 'top-1 % mean'} | "
                   f"{f(v, 'i_auroc')} | {f(v, 'i_auroc_blended')} | {f(v, 'i_auroc_crack')} | {f(v, 'p_auroc')} | "
                   f"{f(t, 'i_auroc')} | {f(t, 'p_auroc')} | " + " | ".join(f(t, f"i_auroc_{ty}") for ty in types) + " |")
    return "\n".join(out)


def _patch_arm_table(stem: str, field: str, base: str) -> str:
    """A pre-registered ablate_patchcore.py arm per dataset and backbone (with its input normalisation): the
    criterion (validation I-AUROC, mean of the blended and crack families) of each value of `field`, its difference
    against `base`'s, and the test split when it was read (record)."""
    out = ["| dataset | backbone / input | " + field + " | val I-AUROC (criterion) | val blended | val crack | "
           "val P-AUROC | criterion vs " + base + " | test I-AUROC | test P-AUROC |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for ds in ("magnetic_tile", "bottle"):
        arms = _splits_by_arm(f"methods/{ds}_{stem}.jsonl", lambda r: (
            f"{r['backbone'].replace('efficientnet_', '')} / {r.get('input_norm', 'imagenet')}", r[field]))
        for (bb, value), sp in sorted((arms or {}).items()):
            v, t = sp.get("val"), sp.get("test", {})
            if v is None:
                continue
            ref = (arms.get((bb, base)) or {}).get("val")
            diff = f"{v['i_auroc'] - ref['i_auroc']:+.4f}" if ref and value != base else "-"
            test = " | ".join(f"{t[k]:.4f}" if k in t else "-" for k in ("i_auroc", "p_auroc"))
            out.append(f"| {ds} | {bb} | {value} | {v['i_auroc']:.4f} | {v['i_auroc_blended']:.4f} | "
                       f"{v['i_auroc_crack']:.4f} | {v['p_auroc']:.4f} | {diff} | {test} |")
    return "\n".join(out) if len(out) > 2 else f"(not measured: results/methods/*_{stem}.jsonl missing)"


def stride4_table() -> str:
    """The pre-registered stride-4 arm (ablate_patchcore.py --spaces product,T,raw product,T,raw+s4)."""
    return _patch_arm_table("patchcore_stride4", "features", "raw")


def patch_taps_table() -> str:
    """Arm K (benchmarks/plans/patchcore_expand_taps_2026-12-05.md): PatchCore on the backbones' expanded
    post-ReLU6 features (ablate_patchcore.py --taps block expand) at backbone auto's choices."""
    return _patch_arm_table("patchcore_taps", "taps", "block")


def rc_levels_table(dataset: str = "magnetic_tile") -> str:
    """ReContrast by map levels (ablate_recontrast_levels.py): the selection split (what decides) and the
    test split (record) per subset of levels, with the normal images' border-maximum share."""
    name = f"methods/{dataset}_recontrast_levels.jsonl"
    arms = _splits_by_arm(name, lambda r: tuple(r["levels"]))
    if arms is None:
        return f"(not measured: results/{name} missing)"
    types = sorted({k[len("i_auroc_"):] for sp in arms.values() for k in sp.get("test", {})
                    if k.startswith("i_auroc_") and k not in ("i_auroc_max", "i_auroc_topk_mean")})
    out = ["| levels | val I-AUROC (max) | val blended | val crack | val P-AUROC | test I-AUROC (max) | test P-AUROC "
           "| normal maxima within 16 px of the border (test) | " + " | ".join(f"test {t}" for t in types) + " |",
           "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(types)]
    for lv, sp in sorted(arms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
        v, t = sp.get("val", {}), sp.get("test", {})
        f = lambda d, k: f"{d[k]:.4f}" if k in d else "-"  # noqa: E731
        share = f"{t['normal_max_near_border']:.0%}" if "normal_max_near_border" in t else "-"
        out.append(f"| {','.join(map(str, lv))} | {f(v, 'i_auroc_max')} | {f(v, 'i_auroc_blended')} | "
                   f"{f(v, 'i_auroc_crack')} | {f(v, 'p_auroc')} | {f(t, 'i_auroc_max')} | {f(t, 'p_auroc')} | {share} | "
                   + " | ".join(f(t, f"i_auroc_{ty}") for ty in types) + " |")
    return "\n".join(out)


RC_ARMS = (("baseline", "magnetic_tile_recontrast_500it_levels.json"),
           ("A: Lite2", "magnetic_tile_recontrast_lite2_300it.json"),
           ("B: decoder 4x", "magnetic_tile_recontrast_dec4_300it.json"),
           ("C: inception input", "magnetic_tile_recontrast_inception_300it.json"))


def rc_arms_table() -> str:
    """The pre-registered ReContrast arms (benchmarks/plans/recontrast_arms_2026-12-04.md): the criterion
    (best all-levels validation I-AUROC, max score, over iterations 100-300 of each run's curve) against the
    baseline run's, then what the shipped selection kept and the test split (record)."""
    def bn(r: dict) -> str:
        e = r["selection"]["encoder_bn"]
        return e["mode"] + (" (set)" if "probe_iterations" not in e else " (probe)")

    return _rc_criterion_table(RC_ARMS, 300, "baseline",
                               (("test crack", lambda r: f"{r['metrics']['i_auroc/crack']:.4f}"),
                                ("backbone", lambda r: (r.get("backbone") or "efficientnet_lite0")
                                 .replace("efficientnet_", "")),
                                ("decoder width", lambda r: str(r["overrides"].get("decoder_width", 1))),
                                ("encoder BN", bn)))


def _rc_criterion_table(rows: tuple[tuple[str, str], ...], last: int, vs: str,
                        extra: tuple[tuple[str, Callable[[dict], str]], ...],
                        scores: tuple[str, ...] = ("max",)) -> str:
    """A ReContrast arm against its baseline run: each run's all-levels validation I-AUROC every 100 iterations
    up to `last` (per evaluation the best of the image `scores`: "max", "topk_mean"), the criterion (their best)
    and its difference to the first row's, what the shipped selection kept, then the test split (record) and the
    `extra` columns."""
    score_label = "max" if scores == ("max",) else "best of " + " / ".join(scores)
    out = [f"| run | val {score_label} @100 / 200 / ... / {last} | criterion | vs {vs} | shipped selection (val I-AUROC) | "
           "test I-AUROC | test P-AUROC | " + " | ".join(h for h, _ in extra) + " | commit |",
           "|---|---|---:|---:|---|---:|---:|" + "---:|" * len(extra) + "---|"]
    base = None
    for label, name in rows:
        r = _json(f"methods/{name}")
        if r is None:
            out.append(f"| {label} | not measured (`{name}` missing) |" + " |" * (6 + len(extra)))
            continue
        sel = r["selection"]
        curve = {e["iteration"]: max(e[f"i_auroc_{k}"] for k in scores) for e in sel["curve"]}
        its = [i for i in range(100, last + 1, 100) if i in curve]
        crit = max(curve[i] for i in its)
        base = crit if base is None else base
        diff = "-" if crit is base else f"{crit - base:+.4f}"
        lv, ck = sel.get("levels", {}), sel["checkpoint"]
        kept = (f"checkpoint {ck['iteration']} of {ck['last_iteration']}, score {sel['score']['rule']}, levels "
                f"{lv.get('levels')} ({lv.get('val_i_auroc', {}).get(lv.get('levels'), float('nan')):.4f})")
        m = r["metrics"]
        out.append(f"| {label} | {' / '.join(f'{curve[i]:.3f}' for i in its)} | {crit:.4f} | {diff} | {kept} | "
                   f"{m['i_auroc']:.4f} | {m['p_auroc']:.4f} | " + " | ".join(f(r) for _, f in extra)
                   + f" | {r['commit']} |")
    return "\n".join(out)


def rc_mining_table() -> str:
    """Arm D (benchmarks/plans/recontrast_hard_mining_2026-12-05.md): hard mining off against the float32 default
    run, criterion = best all-levels validation I-AUROC (max score) over iterations 100-600 of each curve."""
    return _rc_criterion_table((("default (hard mining on)", "magnetic_tile_recontrast_fp32.json"),
                                ("D: hard mining off", "magnetic_tile_recontrast_nohm_600it.json")), 600, "default",
                               (("test crack", lambda r: f"{r['metrics']['i_auroc/crack']:.4f}"),
                                ("Acc@thr", lambda r: f"{r['metrics']['accuracy_at_threshold']:.4f}")))


def rc_precision_table() -> str:
    """Arm F (benchmarks/plans/recontrast_bf16_2026-12-05.md): bf16 autocast training against the float32 default
    run, criterion = best all-levels validation I-AUROC (max score) over iterations 100-1000 (non-inferiority)."""
    return _rc_criterion_table((("float32 (the default before arm F)", "magnetic_tile_recontrast_fp32.json"),
                                ("F: bf16 autocast (the default since)", "magnetic_tile_recontrast.json")), 1000,
                               "float32", (("AUPRO", lambda r: f"{r['metrics']['aupro']:.4f}"),
                                           ("Acc@thr", lambda r: f"{r['metrics']['accuracy_at_threshold']:.4f}"),
                                           ("train s", lambda r: f"{r['train_seconds']:.0f}")))


def rc_stable_table() -> str:
    """Arm H (benchmarks/plans/recontrast_stable_2026-12-05.md): the official stable variant against the default
    run, criterion = best all-levels validation I-AUROC over iterations 100-1000, per evaluation the better of
    the max and top-1 % scores (the stable variant's official score is the top-1 % mean)."""
    return _rc_criterion_table((("default (bf16)", "magnetic_tile_recontrast.json"),
                                ("H: stable variant", "magnetic_tile_recontrast_stable.json")), 1000, "default",
                               (("test crack", lambda r: f"{r['metrics']['i_auroc/crack']:.4f}"),
                                ("AUPRO", lambda r: f"{r['metrics']['aupro']:.4f}"),
                                ("Acc@thr", lambda r: f"{r['metrics']['accuracy_at_threshold']:.4f}")),
                               scores=("max", "topk_mean"))


def rc_expand_table() -> str:
    """Arm I (benchmarks/plans/recontrast_expand_taps_2026-12-05.md): the encoders' next-block expansions
    (taps=expand) against a default run of the same 300-iteration schedule, criterion as arm H's over 100-300."""
    return _rc_criterion_table((("default (block outputs)", "magnetic_tile_recontrast_300it.json"),
                                ("I: expanded taps", "magnetic_tile_recontrast_expand_300it.json")), 300, "default",
                               (("test crack", lambda r: f"{r['metrics']['i_auroc/crack']:.4f}"),
                                ("AUPRO", lambda r: f"{r['metrics']['aupro']:.4f}"),
                                ("Acc@thr", lambda r: f"{r['metrics']['accuracy_at_threshold']:.4f}"),
                                ("ms/frame", lambda r: f"{r['latency_ms_per_frame']:.1f}"),
                                ("train s", lambda r: f"{r['train_seconds']:.0f}")),
                               scores=("max", "topk_mean"))


def _rc_posthoc_table(stem: str, field: str, arms: list[tuple[Any, str, str]]) -> str:
    """A post-hoc arm set on finished ReContrast runs (ablate_recontrast_levels.py records): per run, the
    validation and test I-AUROC (the run's score rule, at its chosen levels) of each arm, `field`'s value
    naming it (arms: (value, validation column, test column)), the first arm being the shipped map; the
    mean over runs last. Validation decides, test is the record."""
    rows = _jsonl(f"methods/{stem}.jsonl")
    if not rows:
        return f"(not measured: results/methods/{stem}.jsonl missing)"
    key = {"max": "i_auroc_max", "topk_mean": "i_auroc_topk_mean"}
    cells: dict[tuple[str, str], dict[Any, float]] = {}
    for r in rows:
        if ",".join(map(str, r["levels"])) != r["chosen_levels"]:
            continue
        cells.setdefault((r["run"], r["split"]), {})[r[field]] = r[key[r["score"]]]
    runs = sorted({run for run, _ in cells})
    out = ["| run | " + " | ".join(v for _, v, _ in arms) + " | " + " | ".join(t for _, _, t in arms) + " |",
           "|---|" + "---:|" * (2 * len(arms))]
    f = lambda d, k: f"{d[k]:.4f}" if k in d else "-"  # noqa: E731
    mean: dict[tuple[str, Any], list[float]] = {}
    for run in runs:
        v, t = cells.get((run, "val"), {}), cells.get((run, "test"), {})
        for sp, d in (("val", v), ("test", t)):
            for g, x in d.items():
                mean.setdefault((sp, g), []).append(x)
        out.append(f"| {Path(run).parent.name} | " + " | ".join(f(d, a) for d in (v, t) for a, _, _ in arms) + " |")
    m = {k: sum(x) / len(x) for k, x in mean.items()}
    out.append(f"| mean of {len(runs)} | " + " | ".join(
        f"{m[(sp, a)]:.4f}" if (sp, a) in m else "-" for sp in ("val", "test") for a, _, _ in arms) + " |")
    return "\n".join(out)


def rc_pairs_table(dataset: str = "magnetic_tile") -> str:
    """Arms E1/E2 (benchmarks/plans/recontrast_pairs_2026-12-05.md): the map from both crossed pair sets
    (shipped), the frozen-target set only and the trainable-target set only."""
    return _rc_posthoc_table(f"{dataset}_recontrast_pairs", "pairs", [
        ("both", "val both (shipped)", "test both"), ("frozen", "val frozen-target only (E1)", "test E1"),
        ("train", "val trainable-target only (E2)", "test E2")])


def rc_pool_table(dataset: str = "magnetic_tile") -> str:
    """Arm G (benchmarks/plans/recontrast_feature_pool_2026-12-05.md): encoder and decoder features averaged
    over k x k before the cosine, k = 1 (shipped), 3, 5."""
    return _rc_posthoc_table(f"{dataset}_recontrast_pool", "pool", [
        (1, "val shipped (pool 1)", "test pool 1"), (3, "val 3x3 (G3)", "test G3"), (5, "val 5x5 (G5)", "test G5")])


def rc_centre_table(dataset: str = "magnetic_tile") -> str:
    """Arms J1/J2 (benchmarks/plans/recontrast_centred_cosine_2026-12-05.md): the cosine of targets and
    reconstructions as shipped, centred by the target's channel means, or standardised."""
    return _rc_posthoc_table(f"{dataset}_recontrast_centre", "center", [
        ("none", "val shipped", "test shipped"), ("mean", "val centred (J1)", "test J1"),
        ("std", "val standardised (J2)", "test J2")])


def main() -> None:
    tpl = (HERE / "RESULTS_template.md").read_text()
    mr, mmet = maps_ratio()
    br, bmet = bank_100k()
    methods = ("recontrast", "patchcore", "reconpatch")
    pipes = {m: pipe_summary(f"pipeline_{m}_bottle.json") for m in methods}
    pipes16 = {m: pipe_summary(f"pipeline_{m}_bottle.json", "torch-eager", 4.0) for m in methods}
    peers16 = {m: pipe_summary(f"pipeline_{m}_bottle.json", "ort+torch-post", 1.5) for m in methods}
    # The patch methods once more on real bottle test frames (the protocol's frames are synthetic
    # textures, out of distribution for a bottle bank: the worst case for the pruned exact search).
    real = ("patchcore", "reconpatch")
    real16 = {m: pipe_summary(f"pipeline_{m}_bottle_real.json", "torch-eager", 4.0) for m in real}
    realpeer16 = {m: pipe_summary(f"pipeline_{m}_bottle_real.json", "ort+torch-post", 1.5) for m in real}
    # the CPU int8 bundle (export --cpu-int8), patch methods only: ReContrast loses accuracy in int8 (section 5)
    int8_runs = {f"{m} int8{' real frames' if r else ''}": f"pipeline_{m}_bottle{'_real' if r else ''}.json"
                 for r in (False, True) for m in real}
    int8_16 = {k: pipe_summary(f, "torch-eager", 4.0, runtime="onnxruntime-int8") for k, f in int8_runs.items()}
    int8_peer16 = {k: pipe_summary(f, "ort+torch-post", 1.5, runtime="onnxruntime-int8") for k, f in int8_runs.items()}
    i8_txt, i8_files, i8_met = int8_summary()
    gm, gmet = gpu_maps()

    def verdict(res: dict[str, tuple[str, Optional[bool]]]) -> str:
        met = [m for m, (_, ok) in res.items() if ok]
        if len(met) == len(res):
            return "yes"
        if not met:
            return "**no**"
        return "**partly**: " + ", ".join(met) + " only"

    def pipe_verdict() -> str:
        return verdict(pipes)

    dt, dmet = demo()
    g13 = goals13()
    mv, mvmet = methods_verdict()
    fill: dict[str, Callable[[], str]] = {
        "demo": lambda: dt,
        "demo_met": lambda: "yes" if dmet else "**no**",
        "rc_bottle": lambda: rc_summary("methods/bottle_recontrast_pre13.json"),
        "rc_mt_400": lambda: rc_summary("methods/magnetic_tile_recontrast_400it.json"),
        "rc_mt_1000": lambda: rc_summary("methods/magnetic_tile_recontrast_1000it.json"),
        "methods_table": lambda: methods_table(lambda n, r: n == f"{r.get('dataset')}_{r.get('method')}.json"),
        "methods_table_pre13": lambda: methods_table(lambda n, r: n == f"{r.get('dataset')}_{r.get('method')}_pre13.json"),
        "patchcore_ablation": patchcore_ablation,
        "patchcore_post": post_ablation_table,
        "stride4": stride4_table,
        "patch_taps": patch_taps_table,
        "rc_levels": rc_levels_table,
        "rc_arms": rc_arms_table,
        "rc_mining": rc_mining_table,
        "rc_pairs": rc_pairs_table,
        "rc_pool": rc_pool_table,
        "rc_centre": rc_centre_table,
        "rc_precision": rc_precision_table,
        "rc_stable": rc_stable_table,
        "rc_expand": rc_expand_table,
        "int8_rc_outputs": int8_rc_outputs,
        "rc_curve_fp32": lambda: rc_curve("methods/magnetic_tile_recontrast_fp32.json"),
        "train_step": lambda: _read("train_step.md") or "(not measured: python benchmarks/bench_train_step.py)",
        "engines": lambda: _read("engines.md") or "(not measured: python benchmarks/bench_engines.py --bundle ...)",
        "rc_mt_levels": lambda: rc_summary("methods/magnetic_tile_recontrast_500it_levels.json"),
        "serve17": lambda: serve_summary()[0],
        "serve17_met": lambda: serve_summary()[1],
        "serve": lambda: _read("serve.md") or "(not measured: python benchmarks/bench_serve.py)",
        "serve_direct": lambda: _read("serve_direct.md")
        or "(not measured: python benchmarks/bench_serve.py --make-bundle recontrast --direct-ingress --stem serve_direct)",
        "serve_low_latency": lambda: _read("serve_low_latency.md")
        or "(not measured: python benchmarks/bench_serve.py --low-latency --stem serve_low_latency)",
        "pc_lite2": lambda: patch_summary("methods/magnetic_tile_patchcore_lite2.json"),
        "ens_auto": lambda: patch_summary("methods/magnetic_tile_ensemble_auto.json"),
        "mt_pc_lite0inc": lambda: patch_summary("methods/magnetic_tile_patchcore_lite0inc.json"),
        "ens_pc_rc": ens_table,
        "input_norm": input_norm_table,
        "norm_auto": norm_auto_table,
        "rcp_bottle_ch": lambda: patch_summary("methods/bottle_reconpatch_compressed.json"),
        "rcp_mt_ch": lambda: patch_summary("methods/magnetic_tile_reconpatch_compressed.json"),
        **{k: (lambda k=k: g13[k][0]) for k in g13},
        **{f"{k}_met": (lambda k=k: "yes" if g13[k][1] else "**no**") for k in g13},
        "methods_cmp": lambda: mv,
        "seeds_mt": lambda: seeds_table("magnetic_tile"),
        "seeds_mt_prenorm": lambda: seeds_table("magnetic_tile", variant="_prenorm"),
        "seeds_mt_bank630": lambda: seeds_table("magnetic_tile", variant="_bank630"),
        "seeds_mt_lite2": lambda: seeds_table("magnetic_tile", ("patchcore",), variant="_lite2"),
        "seeds_mt_rc_gpu": lambda: seeds_table("magnetic_tile", ("recontrast",), variant="_gpu"),
        "gpu_report": gpu_report,
        "gpu_profile": lambda: gpu_report("gpu_profile_h200.md"),
        "gpu_maps": lambda: gm,
        "gpu_maps_met": lambda: "yes" if gmet else "**no**",
        "seeds_mt_rcp_ch": lambda: seeds_table("magnetic_tile", ("reconpatch",), variant="_compressed"),
        "size_mt": size_table,
        "geometry_mt": geometry_table,
        "bank_size": bank_size_table,
        "rc_curve": rc_curve,
        "seeds_bottle": lambda: seeds_table("bottle"),
        "seeds_mt_lite0": lambda: seeds_table("magnetic_tile", variant="_lite0"),
        "seeds_bottle_lite0": lambda: seeds_table("bottle", variant="_lite0"),
        "auto_table": auto_table,
        "rcp_mt_old": lambda: patch_summary("methods/magnetic_tile_reconpatch_sigma1-margin0.5.json"),
        "methods_met": lambda: "yes" if mvmet else "**no**",
        "maps": lambda: _read("maps.md") or "(not measured)",
        "maps_ratio": lambda: mr,
        "maps_met": lambda: "yes" if mmet else "**no**",
        "bank": lambda: _read("bank.md") or "(not measured)",
        "demo_load": lambda: _read("demo_load.md") or "(not measured)",
        "bank_100k": lambda: br,
        "bank_met": lambda: "yes" if bmet else "**no**",
        "pipe_rc": lambda: "; ".join(f"{m}: {t}" for m, (t, _) in pipes.items()),
        "pipe_met": pipe_verdict,
        "pipe16": lambda: "; ".join(f"{m}: {t}" for m, (t, _) in pipes16.items()),
        "pipe16_met": lambda: verdict(pipes16),
        "int8_16": lambda: "; ".join(f"{m} vs eager: {t}" for m, (t, _) in int8_16.items()) + "; "
        + "; ".join(f"{m} vs peer: {t}" for m, (t, _) in int8_peer16.items()),
        "peer16": lambda: "; ".join(f"{m}: {t}" for m, (t, _) in peers16.items()),
        "peer16_met": lambda: verdict(peers16),
        "real16": lambda: "; ".join(f"{m} vs eager: {t}" for m, (t, _) in real16.items()) + "; "
        + "; ".join(f"{m} vs peer: {t}" for m, (t, _) in realpeer16.items()),
        "int8": lambda: i8_txt,
        "int8_met": lambda: i8_met,
        "int8_files": lambda: i8_files,
        "fp16": fp16_summary,
        "bank_gflops": bank_gflops,
        "bank_gemm": lambda: _read("bank_gemm.md") or "(not measured: python benchmarks/bench_bank.py --gemm)",
        "pipe_recontrast": lambda: _read("pipeline_recontrast_bottle.md") or "(not measured)",
        "pipe_patchcore": lambda: _read("pipeline_patchcore_bottle.md") or "(not measured)",
        "pipe_reconpatch": lambda: _read("pipeline_reconpatch_bottle.md") or "(not measured)",
        "pipe_patchcore_real": lambda: _read("pipeline_patchcore_bottle_real.md") or "(not measured)",
        "pipe_reconpatch_real": lambda: _read("pipeline_reconpatch_bottle_real.md") or "(not measured)",
    }
    # the quoted files start with their own "## ..." heading: demote it under this page's sections
    out = re.sub(r"\{\{(\w+)\}\}", lambda m: re.sub(r"^## ", "#### ", fill[m.group(1)](), flags=re.M), tpl)
    atomic_write_bytes(HERE / "RESULTS.md", out.encode())  # a kill leaves the old page or the new one
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
