"""docs/results.md sections regenerated from rendered notebooks' results JSON.

    python -m prunekit.reporting.results_doc reports/50_comparison.json [--doc docs/results.md]

A section lives between ``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->`` markers in the document
and is replaced whole (atomically), so every number in it comes from one render, printed beside the
settings and the provenance (commit, date) it was measured with. Hand-written text stays outside
the markers. Generators: notebook 50 (the reproduction table) and ``regime`` (s*, MRP's score, SV-NUP's
held-out draws; ``prunekit.reporting.regime_doc``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from prunekit.errors import PrunekitError, guarded
from prunekit.utils import atomic_write_text


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False)


def _fmt_pm(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def comparison_section(res: dict) -> str:
    """Markdown for notebook 50's results document: settings, reproduction matrix (a column per
    model), and mean ± std over seeds of every run group."""
    from prunekit.experiments import comparison
    d = res["data"]
    cfg, prov = d["settings"], res["provenance"]
    git = prov.get("git") or {}
    runs = pd.DataFrame(d["runs"])
    lines = [
        f"Rendered {prov['created'][:16].replace('T', ' ')} UTC from commit `{str(git.get('commit', '?'))[:10]}`"
        f"{' (dirty tree)' if git.get('dirty') else ''}, `profile={d['profile']}`, grid `{cfg.get('grid')}`; "
        f"prunekit {prov['versions'].get('prunekit')}, torch {prov['versions'].get('torch')}, "
        f"dtype {prov.get('dtype') or 'default'}.",
        "",
        f"- Models: {', '.join(d['models'])}; seeds {', '.join(map(str, cfg['seeds']))} (each seed redraws the "
        f"C4 calibration set, {cfg['calib_samples']} × {cfg['calib_seqlen']} tokens).",
        f"- Perplexity: {', '.join(cfg['eval_datasets'])}, {cfg['eval_windows']} windows × {cfg['eval_seqlen']} "
        f"tokens per run, the same windows for every run (per-window NLLs recorded).",
        "- Runs: " + "; ".join(f"{g['metric']} at {g['sparsity']:.0%}: {', '.join(g['allocations'])}"
                                for g in cfg["groups"]) + ".",
    ]
    if cfg.get("method_options"):
        lines.append("- Method options besides the defaults: " + "; ".join(
            f"{m}: " + ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in cfg["method_options"].items()) + ".")
    for m in d["models"]:
        dense = ", ".join(f"{k} {v:.2f}" for k, v in (d["dense"].get(m) or {}).items())
        secs = d.get("seconds", {}).get(m)
        n = int((runs["model"] == m).sum()) if "model" in runs else len(runs)
        run_s = runs.loc[runs["model"] == m, "seconds"].sum() if "seconds" in runs else float("nan")
        cpu = runs.loc[runs["model"] == m, "cpu_seconds"] if "cpu_seconds" in runs else pd.Series(dtype=float)
        cpu_txt = f" ({cpu.sum() / 60:.1f} min of process CPU time)" if len(cpu) and cpu.notna().all() else ""
        lines.append(f"- {m}: dense perplexity {dense}; {n} runs, {run_s / 60:.1f} min summed wall of the runs{cpu_txt}"
                     + (f" ({secs / 60:.1f} min in the render itself)" if secs else "") + ".")
    matrix = pd.DataFrame(d["matrix"])
    matrix["paper_change_%"] = matrix["paper_change_%"].map(lambda v: "—" if v is None or pd.isna(v) else f"{v:+.1f} %")
    lines += ["", "**Reproduction table.** Mean paired perplexity change of the method against its baseline over "
              "seeds, [95 % bootstrap interval over seeds × windows], verdict from the interval:", "",
              _md(matrix.rename(columns={"paper_change_%": "paper Δ"})), ""]
    summ = comparison.summarise(runs)
    # rows in the grid's order (groups as designed, allocations as listed), models as run
    order = {(g["metric"], float(g["sparsity"]), a): i for i, (g, a) in
             enumerate((g, a) for g in cfg["groups"] for a in g["allocations"])}
    summ = summ.assign(_o=[order.get((m, float(s), a), len(order)) for m, s, a in
                           zip(summ["metric"], summ["sparsity"], summ["allocation"])]).sort_values("_o")
    q = [c[:-5] for c in summ.columns if c.endswith("_mean") and c.startswith("ppl_")]
    for model in d["models"]:
        part = summ[summ["model"] == model]
        tab = part[["metric", "sparsity", "allocation"]].copy()
        tab["sparsity"] = tab["sparsity"].map(lambda s: f"{s:.0%}")
        for c in q:
            tab[c.replace("ppl_", "")] = [_fmt_pm(a, b) for a, b in zip(part[c + "_mean"], part[c + "_std"])]
        tab["seeds"] = part["seeds"].values
        lines += [f"Perplexity of every run group on **{model}** (mean ± std over seeds):", "", _md(tab), ""]
    return "\n".join(lines).rstrip() + "\n"


def _regime_section(res: dict) -> str:
    from prunekit.reporting.regime_doc import regime_section
    return regime_section(res)


GENERATORS = {"50_comparison": comparison_section, "regime": _regime_section}


def update(doc: Path, results: Path) -> Path:
    """Replace the ``<name>`` section of ``doc`` by the one generated from ``results``."""
    try:
        res = json.loads(Path(results).read_text())
    except (OSError, ValueError) as e:
        raise PrunekitError(f"cannot read results {results}: {e}") from None
    name = res.get("name")
    if name not in GENERATORS:
        raise PrunekitError(f"{results}: no docs generator for '{name}' (have: {', '.join(GENERATORS)})")
    text = Path(doc).read_text()
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise PrunekitError(f"{doc}: needs exactly one '{begin}' ... '{end}' pair")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    body = GENERATORS[name](res)
    return atomic_write_text(doc, f"{head}{begin}\n{body}{end}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.reporting.results_doc")
    ap.add_argument("results", help="a rendered notebook's results JSON (reports/<name>.json)")
    ap.add_argument("--doc", default="docs/results.md")
    a = ap.parse_args(argv)
    return guarded("prunekit.reporting.results_doc", lambda: print(update(Path(a.doc), Path(a.results))))


if __name__ == "__main__":
    sys.exit(main())
