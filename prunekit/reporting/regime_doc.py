"""The papers'-regime section of docs/results.md, generated from the kept results JSON.

    python -m prunekit.reporting.regime_doc docs/data/regime            # collect -> regime.json
    python -m prunekit.reporting.results_doc docs/data/regime/regime.json   # regenerate the section

``collect`` merges what the regime studies wrote (``sstar.json``: s* with its curve per model ×
solver × dtype; ``mrp_score.jsonl``: MRP's score on held-out NLL per seed; ``svnup_draws.json``:
SV-NUP block values on disjoint held-out draws; ``svnup_quality.json``: the default SV-NUP plan
against a long Monte-Carlo reference plan) into one results document (name ``regime``);
``regime_section`` renders it. Every number in the section is read from that file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from prunekit.errors import PrunekitError, guarded
from prunekit.utils import atomic_write_json


def collect(folder: Path) -> dict:
    folder = Path(folder)
    data: dict = {}
    if (folder / "sstar.json").is_file():
        data["sstar"] = json.loads((folder / "sstar.json").read_text())["entries"]
    if (folder / "mrp_score.jsonl").is_file():
        rows = [json.loads(x) for x in (folder / "mrp_score.jsonl").read_text().splitlines() if x.strip()]
        data["mrp_score"] = [{k: v for k, v in r.items() if k != "planned_sparsity"} | {
            "planned_sparsity": [round(x, 4) for x in r.get("planned_sparsity", [])]} for r in rows]
    if (folder / "svnup_draws.json").is_file():
        data["svnup_draws"] = json.loads((folder / "svnup_draws.json").read_text())["entries"]
    if (folder / "svnup_quality.json").is_file():
        data["svnup_quality"] = json.loads((folder / "svnup_quality.json").read_text())["entries"]
    if (folder / "claims_sstar.jsonl").is_file():
        data["claims"] = claims_runs(folder / "claims_sstar.jsonl", data.get("sstar", {}))
    fp32 = sorted(folder.glob("claims_fp32*.jsonl"))
    if fp32:
        data["claims_fp32"] = dtype_runs(fp32, "fp32")
    acc = sorted(folder.glob("accuracy*.jsonl"))
    if acc:
        data["accuracy"] = accuracy_runs(acc)
    if not data:
        raise PrunekitError(f"{folder}: none of sstar.json, mrp_score.jsonl, svnup_draws.json, svnup_quality.json, "
                            "accuracy*.jsonl")
    return data


def accuracy_runs(paths) -> list[dict]:
    """The zero-shot runs of the accuracy column (``experiments.accuracy.run_accuracy`` files), with
    the per-document correctness kept as 0/1 strings; a run key present twice is an error."""
    from prunekit.experiments.accuracy import as_bits, read_runs
    out, seen = [], set()
    for p in paths:
        for r in read_runs(p):
            if r["key"] in seen:
                raise PrunekitError(f"{p}: run {r['key']} is also in another accuracy file")
            seen.add(r["key"])
            tasks = {t: {**v, "per_example_acc": as_bits(v["per_example_acc"])} for t, v in r["tasks"].items()}
            out.append({**r, "tasks": tasks,
                        "planned_sparsity": [round(x, 4) for x in r.get("planned_sparsity") or []]})
    return out


def _at(model: str, sp: float, sstar: dict) -> str:
    """A sparsity as the tables show it, marked when it is the model's Wanda s*."""
    s = (sstar.get(model) or {}).get("wanda")
    return f"{sp:.3f}" + (" (s*)" if s is not None and abs(sp - s) < 1e-9 else "")


def accuracy_tables(runs: list[dict], sstar: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the accuracy column: one row per model × sparsity × accuracy claim; mean accuracy per task and
    configuration, points, mean over seeds). ``sstar``: model → solver → s*, to mark it."""
    from prunekit.experiments.accuracy import accuracy_table
    sstar = sstar or {}
    claims = pd.DataFrame([{
        "model": r["model"], "sparsity": _at(r["model"], r["sparsity"], sstar), "claim": r["claim"], "paper": r["paper"],
        "A (points)": f"{r['acc_a']:.2f}", "B (points)": " / ".join(f"{b} {v:.2f}" for b, v in r["acc_b"].items()),
        "Δ points [95 %]": f"{r['mean']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]", "verdict": r["verdict"],
        "seeds": r["seeds"], "documents per seed": r["examples"]} for r in accuracy_table(runs)])
    per = {}
    for r in runs:
        key = (r["model"], "dense" if r["sparsity"] is None else _at(r["model"], r["sparsity"], sstar), r["label"])
        per.setdefault(key, []).append(r)
    rows = []
    for (m, sp, lab), rs in per.items():
        row = {"model": m, "sparsity": sp, "configuration": lab, "seeds": len(rs)}
        for t in rs[0]["tasks"]:
            row[t] = f"{100 * np.mean([x['tasks'][t]['acc'] for x in rs]):.1f}"
        row["mean"] = f"{100 * np.mean([x['mean_acc'] for x in rs]):.2f}"
        row["zero-shot CPU s per run"] = f"{np.mean([x['zero_shot_cpu_s'] for x in rs]):.0f}"
        rows.append(row)
    return claims, pd.DataFrame(rows)


KEPT_70 = Path(__file__).resolve().parents[2] / "docs/data/comparison/50_comparison-cpu.json"
_RUN_KEYS = ("model", "seed", "allocation", "metric", "sparsity", "ppl_wikitext2", "nll_wikitext2", "planned",
             "seconds", "cpu_seconds")


def claims_runs(path: Path, sstar_entries: dict, kept_70: Path = KEPT_70) -> dict:
    """The runs at s* (a sweep results file) beside the 70 % runs of the kept notebook-50 render
    (same grid, seeds, calibration sets and evaluation windows)."""
    from prunekit.experiments.regime import sstar_values
    from prunekit.experiments.sweep import frame, read_results
    recs = read_results(path)
    runs = [{k: r.get(k) for k in _RUN_KEYS} | {"source": "s* study", "dtype": rec.get("dtype")}
            for rec, r in zip(recs, frame(recs).to_dict(orient="records")) if r["status"] == "ok"]
    if Path(kept_70).is_file():
        old = json.loads(Path(kept_70).read_text())
        commit = str((old["provenance"].get("git") or {}).get("commit", "?"))[:10]
        dt = {m["id"]: _short_dtype(m.get("dtype")) for m in old["provenance"].get("models") or []}
        # a 70 % run the study repeated (a default changed since the render) replaces the kept one
        redone = {_run_id(r) for r in runs}
        runs += [{k: r.get(k) for k in _RUN_KEYS} | {"source": f"kept 70 % render ({commit})", "dtype": dt.get(r["model"])}
                 for r in old["data"]["runs"] if abs(float(r["sparsity"]) - 0.7) < 1e-9 and _run_id(r) not in redone]
    for r in runs:
        r["planned"] = [round(float(x), 4) for x in (r.get("planned") or [])]
    return {"sstar": sstar_values(sstar_entries), "runs": runs}


def _short_dtype(name) -> str | None:
    """A provenance dtype ('bfloat16', 'torch.float32') as records name it ('bf16', 'fp32')."""
    n = str(name or "").removeprefix("torch.")
    return {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(n, n or None)


def dtype_runs(paths, dtype: str) -> list[dict]:
    """The claims' runs repeated in one compute dtype (``regime claims --dtype``, any regime): a run in
    another dtype, or one run in two files, is an error rather than a silent mix."""
    from prunekit.experiments.sweep import frame, read_results
    out, seen = [], set()
    for p in paths:
        recs = read_results(p)
        for rec, r in zip(recs, frame(recs).to_dict(orient="records")):  # the record names the dtype, the row not
            if r["status"] != "ok":
                continue
            if rec.get("dtype") != dtype:
                raise PrunekitError(f"{p}: run {_run_id(r)} has dtype {rec.get('dtype')}, not {dtype}")
            if _run_id(r) in seen:
                raise PrunekitError(f"{p}: run {_run_id(r)} is also in another {dtype} file")
            seen.add(_run_id(r))
            out.append({k: r.get(k) for k in _RUN_KEYS} | {"planned": [round(float(x), 4) for x in r.get("planned")
                                                                       or []]})
    return out


def dtype_tables(claims: dict, other: list[dict], dtype: str = "fp32") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(each run group in both dtypes: the default's perplexity against ``dtype``'s, seed by seed on the
    same calibration and windows, the move of the mean set against the default's seed-to-seed standard
    deviation; each claim that has runs in ``dtype``: its cell in either dtype, both read from the same
    runs (seeds), and whether the verdict changes)."""
    from prunekit.experiments.comparison import matrix_cell
    from prunekit.experiments.regime import regime_table
    twins = _twins(claims, other)
    if not twins:
        return pd.DataFrame(), pd.DataFrame()
    label = base_label(twins)
    alt, base = (pd.DataFrame(rs).assign(sparsity=lambda f: f["sparsity"].astype(float).round(6))
                 for rs in (other, twins))

    def ms(v) -> str:
        return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"
    pairs = alt.merge(base, on=["model", "metric", "sparsity", "allocation", "seed"], suffixes=("_alt", "_base"))
    rows = []
    for (m, met, sp, a), g in pairs.groupby(["model", "metric", "sparsity", "allocation"], sort=True):
        x, y = g["ppl_wikitext2_base"].to_numpy(float), g["ppl_wikitext2_alt"].to_numpy(float)
        spread = x.std(ddof=1) if len(x) > 1 else float("nan")
        rows.append({"model": m, "metric": met, "sparsity": f"{sp:.3f}", "allocation": a, "seeds": len(x),
                     label: ms(x), dtype: ms(y),
                     "paired gap per seed": ", ".join(f"{100 * (b / c - 1):+.1f} %" for b, c in zip(x, y)),
                     "move > seed spread": "—" if np.isnan(spread) else
                     ("yes" if abs(x.mean() - y.mean()) > spread else "no")})
    t = regime_table(alt, claims["sstar"]).merge(regime_table(base, claims["sstar"]), on=["model", "claim"],
                                                 suffixes=("", "_base"))
    verdicts = []
    for _, r in t[t["measured_change_%"].notna()].iterrows():
        d = {k: r[f"{k}_base"] for k in ("measured_change_%", "ci_low_%", "ci_high_%", "verdict")}
        verdicts.append({"model": r["model"], "claim": r["claim"], "seeds": r["seeds"], label: matrix_cell(d),
                         dtype: matrix_cell(r), "verdict changes": "yes" if d["verdict"] != r["verdict"] else "no"})
    return pd.DataFrame(rows), pd.DataFrame(verdicts)


def base_label(runs: list[dict]) -> str:
    """The precision the claims' own runs ran in ('bf16'; 'default' when any of them does not say)."""
    names = {r.get("dtype") or None for r in runs}
    return "default" if not names or None in names else "/".join(sorted(names))


def _twins(claims: dict, other: list[dict]) -> list[dict]:
    """The claims' own runs of the cells ``other`` repeated (same model, seed, allocation, solver, sparsity)."""
    ids = {_run_id(r) for r in other}
    return [r for r in claims["runs"] if _run_id(r) in ids]


def _run_id(r: dict) -> tuple:
    return r["model"], int(r["seed"]), r["allocation"], r["metric"], round(float(r["sparsity"]), 6)


def claims_tables(claims: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(matrix with a column per model × regime, mean ± std perplexity per group, per-block profiles)."""
    from prunekit.experiments.comparison import summarise
    from prunekit.experiments.regime import regime_matrix
    df = pd.DataFrame(claims["runs"])
    sstar = claims["sstar"]
    have = {(m, met) for m, met in zip(df["model"], df["metric"])
            if m in sstar and met in sstar[m] and ((df["model"] == m) & (df["metric"] == met)
                                                  & (abs(df["sparsity"] - sstar[m][met]) < 1e-9)).any()}
    sub = {m: {met: v for met, v in d.items() if (m, met) in have} for m, d in sstar.items()}
    mat = regime_matrix(df, sub)
    mat["paper_change_%"] = mat["paper_change_%"].map(lambda v: "—" if v is None or pd.isna(v) else f"{v:+.1f} %")
    mat = mat.rename(columns={"paper_change_%": "paper Δ"})
    at_s = df[[any(abs(s - v) < 1e-9 for v in sub.get(m, {}).values()) or abs(s - 0.7) < 1e-9
               for m, s in zip(df["model"], df["sparsity"])]]
    at_s = at_s[[(m, met) in have for m, met in zip(at_s["model"], at_s["metric"])]]
    both = {(m, met, a) for m, met, a, s in zip(at_s["model"], at_s["metric"], at_s["allocation"], at_s["sparsity"])
            if abs(s - 0.7) > 1e-9}  # groups run at s*: shown beside their 70 % runs
    at_s = at_s[[k in both for k in zip(at_s["model"], at_s["metric"], at_s["allocation"])]]
    summ = summarise(at_s.drop(columns=["nll_wikitext2", "planned", "source"]))
    summ = pd.DataFrame({"model": summ["model"], "metric": summ["metric"],
                         "sparsity": summ["sparsity"].map(lambda x: f"{x:.3f}"), "allocation": summ["allocation"],
                         "wikitext2": [f"{a:.1f} ± {b:.1f}" for a, b in zip(summ["ppl_wikitext2_mean"],
                                                                           summ["ppl_wikitext2_std"])],
                         "seeds": summ["seeds"]})
    prof = []
    for (m, met, s, a), g in at_s[at_s["seed"] == 0].groupby(["model", "metric", "sparsity", "allocation"]):
        p = np.asarray(g["planned"].iloc[0], dtype=float)
        if len(p) and a != "uniform":
            n = len(p)
            prof.append({"model": m, "metric": met, "sparsity": f"{s:.3f}", "allocation": a,
                         "min": f"{p.min():.2f}", "max": f"{p.max():.2f}",
                         "first third": f"{p[: n // 3].mean():.2f}", "middle third": f"{p[n // 3: 2 * n // 3].mean():.2f}",
                         "last third": f"{p[2 * n // 3:].mean():.2f}",
                         "per block": " ".join(f"{x:.2f}" for x in p)})
    return mat, summ, pd.DataFrame(prof)


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def sstar_rows(entries: dict) -> pd.DataFrame:
    rows = []
    for key, e in entries.items():
        if "s_star" not in e:
            continue
        at70 = next((p["ratio"] for p in e["curve"] if abs(p["sparsity"] - 0.7) < 1e-9), None)
        st = e["settings"]
        rows.append({"model": st["model"], "solver": st["metric"], "dtype": st["dtype"].replace("torch.", ""),
                     "seed": st.get("seed", 0),
                     "paper ratio at 70 %": f"{e['target']:.2f}",
                     "s*": f"{e['s_star']:.3f}", "bracket": f"[{e['lo']:.2f}, {e['hi']:.2f}]",
                     "ratio at 70 % (held-out C4)": "—" if at70 is None else f"{at70:.2f}",
                     "prunes": len(e["curve"]), "seconds": f"{sum(p['seconds'] for p in e['curve']):.0f}"})
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "solver", "dtype", "seed"], kind="stable", ignore_index=True) if len(df) else df


def curve_tables(entries: dict) -> dict[str, pd.DataFrame]:
    """Per "model solver": one row per sparsity, one column per (dtype, calibration seed): held-out ratio."""
    groups: dict[str, dict] = {}
    for e in entries.values():
        if "s_star" not in e:
            continue
        st = e["settings"]
        col = f"{st['dtype'].replace('torch.', '')} seed {st.get('seed', 0)}"
        groups.setdefault(f"{st['model']} {st['metric']}", {})[col] = {round(p["sparsity"], 4): p["ratio"]
                                                                      for p in e["curve"]}
    out = {}
    for name in sorted(groups):
        df = pd.DataFrame({c: groups[name][c] for c in sorted(groups[name])}).sort_index()
        out[name] = df.map(lambda v: "" if pd.isna(v) else f"{v:.2f}").rename_axis("sparsity").reset_index()
    return out


def mrp_rows(rows) -> pd.DataFrame:
    from prunekit.experiments.regime import mrp_score_table
    t = mrp_score_table(rows)
    if not len(t):
        return t
    return pd.DataFrame({
        "model": t["model"], "sparsity": t["sparsity"].map(lambda s: f"{s:.3f}"), "seeds": t["seeds"],
        "uniform": t["uniform"].map(lambda v: "not run" if pd.isna(v) else f"{v:.3f}"),
        "MRP, solver's score": t["solver_score"].map(lambda v: f"{v:.3f}"),
        "MRP, Wanda's score": t["wanda_score"].map(lambda v: f"{v:.3f}"),
        "Wanda − solver (per seed)": [f"{d:+.3f} ({', '.join(f'{x:+.3f}' for x in ps)})"
                                      for d, ps in zip(t["wanda_minus_solver"], t["per_seed"])],
        "lower NLL": ["Wanda's score" if d < 0 else "solver's score" for d in t["wanda_minus_solver"]],
        "Wanda's score lower on": [f"{w} of {n} seeds" for w, n in zip(t["wanda_better_seeds"], t["seeds"])]})


def _rho(x, y) -> str:
    from prunekit.experiments.correlation import bootstrap_spearman
    r, lo, hi = bootstrap_spearman(x, y, n_boot=2000, seed=0)
    return f"{r:.3f} [{lo:.2f}, {hi:.2f}]"


def svnup_rows(entries: dict) -> pd.DataFrame:
    rows = []
    for key, e in entries.items():
        if len(e.get("draws", [])) < 2 or "spearman" not in e:
            continue
        model, s, size, est = key.split("|")
        rows.append({"model": model, "sparsity": s[1:], "held-out per draw": size.replace("x", " × ") + " tokens",
                     "estimator": e["settings"]["estimator"], "evaluations per draw": e["draws"][0]["evaluations"],
                     "seconds per draw": " / ".join(f"{d['seconds']:.0f}" for d in e["draws"]),
                     "Spearman draw 0 vs 1 [95 % bootstrap over blocks]": _rho(e["draws"][0]["values"],
                                                                              e["draws"][1]["values"])})
    return pd.DataFrame(rows)


def quality_rows(entries: dict) -> pd.DataFrame:
    """One row per seed whose default and reference runs are both done; quality = default perplexity
    ÷ reference perplexity (goal ≤ 1.05), recomputed here from the two runs."""
    rows = []
    for key, e in entries.items():
        dflt, ref = e.get("default"), e.get("reference")
        if not dflt or not ref:
            continue
        model, s, seed, calib, _ = key.split("|")
        est = ref["options"]["estimator"]
        rows.append({"model": model, "sparsity": s[1:], "seed": seed[4:], "calibration": calib,
                     "reference": f"Monte-Carlo, {ref['options']['n_permutations']} permutations"
                     if est == "monte_carlo" else est,
                     "default ppl": f"{dflt['ppl']:.2f}", "reference ppl": f"{ref['ppl']:.2f}",
                     "quality (goal ≤ 1.05)": f"{dflt['ppl'] / ref['ppl']:.3f}",
                     "Spearman of the values": _rho(dflt["values"], ref["values"]),
                     "evaluations default / reference": f"{dflt['evaluations']} / {ref['evaluations']}",
                     "seconds default / reference": f"{dflt['seconds']:.0f} / {ref['seconds']:.0f}"})
    return pd.DataFrame(rows)


def regime_section(res: dict) -> str:
    d, prov = res["data"], res["provenance"]
    git = prov.get("git") or {}
    lines = [f"Collected {prov['created'][:16].replace('T', ' ')} UTC from commit "
             f"`{str(git.get('commit', '?'))[:10]}`{' (dirty tree)' if git.get('dirty') else ''}; "
             f"torch {prov['versions'].get('torch')}; 2-core CPU, one thread per job.", ""]
    if d.get("sstar"):
        lines += ["**Degradation-matched sparsity s\\*** (uniform solver; ratio = exp(held-out NLL − dense held-out "
                  "NLL) on 16 × 256 C4 tokens from the calibration pool, disjoint from the 8 × 256 pruning samples, "
                  "calibration seed as listed, the claims use seed 0's s\\*; lattice bisection with step 0.01, s\\* the "
                  "midpoint of the final bracket):", "",
                  _md(sstar_rows(d["sstar"])), ""]
        for name, t in curve_tables(d["sstar"]).items():
            lines += [f"Every measured point of the curve, {name} (held-out ratio):", "", _md(t), ""]
    tables = [("mrp_score", mrp_rows, "**MRP's score with SparseGPT, on held-out calibration NLL** (C4 4 × 256 "
               "held-out tokens drawn with seed + 1, disjoint from the 8 × 256 pruning samples; mean over seeds, "
               "lower is better):"),
              ("svnup_draws", svnup_rows, "**SV-NUP block values on two held-out draws** (C4 windows, no document "
               "shared between the draws or with the pruning samples; Wanda game at the stated sparsity):"),
              ("svnup_quality", quality_rows, "**SV-NUP's quality per cost** (one layer game per seed: Wanda at the "
               "sparsity, the method's default held-out set; the default plan and the reference plan pruned with "
               "Wanda; WikiText-2 16 × 1024 test windows):")]
    for name, rows, title in tables:  # a study file without a complete row adds no table
        t = rows(d[name]) if d.get(name) else pd.DataFrame()
        if len(t):
            lines += [title, "", _md(t), ""]
    if d.get("accuracy"):
        from prunekit.experiments.regime import sstar_values
        claims, per = accuracy_tables(d["accuracy"], sstar_values(d.get("sstar") or {}))
        n = sorted({(r["model"], r["limit"]) for r in d["accuracy"]})
        n = " / ".join(f"{lim} ({m})" for m, lim in n)
        lines += [f"**The accuracy column** (Wanda at the model's s\* and at any other sparsity listed, C4 8 × 256 calibration per seed; the first "
                  f"{n} documents of each of the seven tasks, fewer where a task has fewer; stock "
                  "lm-eval `acc`, zero-shot; Δ = mean over seeds of A's mean task accuracy minus the best B's, in "
                  "points; paired 95 % bootstrap over seeds × documents, the same documents for A and B):", "",
                  _md(claims), "", "Accuracy per task (points, mean over seeds):", "", _md(per), ""]
    if d.get("claims") and d["claims"]["runs"]:
        mat, summ, prof = claims_tables(d["claims"])
        lines += ["**The 70 % claims at s\*** (the notebook-50 cpu grid: C4 8 × 256 calibration, seeds 0, 1, 2, "
                  "WikiText-2 16 × 1024 test windows, paired 95 % bootstrap over seeds × windows; the 70 % columns "
                  "read the kept notebook-50 render (or this study's repeat of a 70 % run group, which "
                  "replaces it), the s\* columns runs of this study; a claim not run at s\* "
                  "reads 'not measured'):", "", _md(mat), "",
                  "Perplexity of the run groups that have both regimes (mean ± std over seeds):", "", _md(summ), ""]
        if len(prof):
            lines += ["Per-block sparsity of the plans (seed 0), 70 % beside s\*:", "", _md(prof), ""]
        if d.get("claims_fp32"):
            groups, verdicts = dtype_tables(d["claims"], d["claims_fp32"])
            lab = base_label(_twins(d["claims"], d["claims_fp32"]))
            lines += [f"**The runs above ({lab}) against fp32** (the same runs with every forward in fp32: the same "
                      "seeds, calibration samples and test windows; a group's move is the difference of its two "
                      f"means, set against the {lab} runs' seed-to-seed standard deviation; the default precision on "
                      "a CPU is now 'mixed', which prunes exactly as fp32):",
                      "", _md(groups), "", "The claims that have fp32 runs, in either dtype:", "", _md(verdicts), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    import argparse

    from prunekit.reporting.results import results_document
    ap = argparse.ArgumentParser(prog="python -m prunekit.reporting.regime_doc")
    ap.add_argument("folder", help="folder with sstar.json / mrp_score.jsonl / svnup_draws.json")
    ap.add_argument("--out", default=None, help="default: <folder>/regime.json")
    a = ap.parse_args(argv)

    def write():
        doc = results_document("regime", collect(Path(a.folder)), profile="cpu", summary="")
        print(atomic_write_json(Path(a.out or Path(a.folder) / "regime.json"), doc))
    return guarded("regime_doc", write)


if __name__ == "__main__":
    raise SystemExit(main())
