"""Plots used by the notebooks (matplotlib/seaborn). Each function returns the matplotlib Figure."""
from __future__ import annotations


def _figure(ax, figsize):
    """(fig, ax): a new figure of ``figsize`` unless an axis is given."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=figsize)


def _finish(fig, ax, title=None):
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- allocation profiles (baselines)

def sparsity_profile(plans, ax=None, title=None):
    """Per-block sparsity of several SparsityPlans on one axis.

    ``plans``: dict label -> SparsityPlan, or a list of plans (labelled by ``plan.method``).
    Draws ``plan.per_block`` (parameter-weighted per block) against the block index, with the
    common target as a dashed line when all plans share it. Returns the Figure."""
    import numpy as np

    items = list(plans.items()) if isinstance(plans, dict) else [(p.method, p) for p in plans]
    fig, ax = _figure(ax, (7, 3.5))
    for label, plan in items:
        y = np.asarray(plan.per_block, dtype=float)
        ax.plot(np.arange(y.size), y, marker="o", markersize=3, label=str(label))
    targets = {round(float(p.target), 9) for _, p in items}
    if len(targets) == 1:
        ax.axhline(targets.pop(), color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def block_metric(values, label, ax=None, kind="bar", title=None):
    """A per-block statistic (e.g. OWL's LOD or AlphaPruning's block α) as bars (``kind='bar'``)
    or a line (``kind='line'``) against the block index. Returns the Figure."""
    import numpy as np

    y = np.asarray(values, dtype=float).reshape(-1)
    fig, ax = _figure(ax, (7, 3))
    x = np.arange(y.size)
    if kind == "line":
        ax.plot(x, y, marker="o", markersize=3)
    else:
        ax.bar(x, y)
    ax.set_xlabel("block")
    ax.set_ylabel(label)
    return _finish(fig, ax, title)


def realised_sparsity(records: dict, ax=None, title: str = "Realised sparsity per block"):
    """Per-block realised sparsity of pruned runs (``Session.run`` records), one line each."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    for label, rec in records.items():
        ax.plot(rec["layer_sparsity"], marker="o", ms=3, label=label)
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    ax.set_title(title)
    ax.legend()
    return ax.figure


# ---------------------------------------------------------------- absorption (notebook 40)

def perplexity_bars(table, value="wikitext2_ppl", label="metric", dense_label="dense", ax=None,
                    title="WikiText-2 perplexity, dense vs pruned"):
    """Perplexity per run as bars (log scale when the values span > 10x), the dense model as a
    dashed reference line, each bar annotated with its value. ``table``: a DataFrame with columns
    ``label`` and ``value`` (the dense row, if present, becomes the line). Returns the Figure."""
    import numpy as np

    rows = table[table[label] != dense_label]
    dense = table.loc[table[label] == dense_label, value]
    fig, ax = _figure(ax, (6, 3.2))
    y = rows[value].to_numpy(dtype=float)
    bars = ax.bar(rows[label].astype(str), y, color="tab:blue")
    fmt = lambda v: f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"  # noqa: E731
    ax.bar_label(bars, labels=[fmt(v) for v in y], fontsize="small")
    if len(dense):
        ax.axhline(float(dense.iloc[0]), color="grey", linestyle="--", linewidth=1,
                   label=f"dense {fmt(float(dense.iloc[0]))}")
        ax.legend(fontsize="small", loc="lower right")
    vals = np.concatenate([y, dense.to_numpy(dtype=float)])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size and vals.max() / vals.min() > 10:
        ax.set_yscale("log")
    ax.set_ylabel("perplexity")
    return _finish(fig, ax, title)


def absorption_drift_curves(trajectories, quantity="drift", ax=None, title=None, logy=True):
    """Perturbation response vs depth, one line per injection block (``absorption.Trajectory``).

    ``quantity``: 'drift' (relative L2 drift R_k), 'ratio' (R_k / R_l), 'cos_state' (cos(h'_k, h_k))
    or 'cos_drift' (cos(h'_k − h_k, h_k)). Lines are coloured by injection depth. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    trajectories = list(trajectories)
    fig, ax = _figure(ax, (7, 3.8))
    cmap = plt.get_cmap("viridis")
    last = max((t.layer for t in trajectories), default=1) or 1
    for t in trajectories:
        y = np.asarray(getattr(t, quantity), dtype=float)
        ax.plot(t.depths, y, color=cmap(t.layer / last), linewidth=1.2, marker="o", markersize=2,
                label=f"l={t.layer}")
    if logy and quantity in ("drift", "ratio"):
        ax.set_yscale("log")
    if quantity == "ratio":
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("depth k (block output)")
    ax.set_ylabel({"drift": "relative drift R_k", "ratio": "R_k / R_l", "cos_state": "cos(h'_k, h_k)",
                   "cos_drift": "cos(h'_k - h_k, h_k)"}.get(quantity, quantity))
    if title:
        ax.set_title(title)
    if len(trajectories) <= 8:
        ax.legend(fontsize="x-small", ncol=2)
    else:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, last))
        fig.colorbar(sm, ax=ax, label="injection block l")
    fig.tight_layout()
    return fig


def absorption_eta_transition(sweep, title=None):
    """η sweep (``absorption.eta_sweep`` table): left, r_l per block for each η (log scale, r = 1
    dashed); right, fraction of amplifying blocks and geometric-mean r against η. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    etas = sorted(sweep["eta"].unique())
    cmap = plt.get_cmap("plasma")
    for i, eta in enumerate(etas):
        g = sweep[sweep["eta"] == eta].sort_values("layer")
        a1.plot(g["layer"], g["r"], marker="o", markersize=3, color=cmap(i / max(len(etas) - 1, 1)),
                label=f"eta={eta:g}")
    a1.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    a1.set_yscale("log")
    a1.set_xlabel("injection block l")
    a1.set_ylabel("absorption coefficient r_l")
    a1.legend(fontsize="small")
    frac = [float((sweep[sweep["eta"] == e]["r"] > 1).mean()) for e in etas]
    gm = [float(np.exp(np.log(sweep[sweep["eta"] == e]["r"]).mean())) for e in etas]
    a2.plot(etas, frac, marker="o", label="fraction of blocks with r > 1")
    a2.set_xscale("log")
    a2.set_xlabel("relative noise size eta")
    a2.set_ylabel("fraction amplifying")
    a2.set_ylim(-0.05, 1.05)
    a3 = a2.twinx()
    a3.plot(etas, gm, marker="s", color="C1", label="geometric-mean r")
    a3.axhline(1.0, color="C1", linestyle=":", linewidth=1)
    a3.set_ylabel("geometric-mean r", color="C1")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def absorption_coefficients(r, ax=None, title=None):
    """Per-block absorption coefficients as bars on a log axis: red = amplifying (r > 1),
    blue = absorbing (r < 1). Returns the Figure."""
    import numpy as np

    r = np.asarray(r, dtype=float).reshape(-1)
    fig, ax = _figure(ax, (7, 3))
    x = np.arange(r.size)
    ax.bar(x, np.log(r), color=np.where(r > 1, "tab:red", "tab:blue"))
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("block")
    ax.set_ylabel("log r_l  (>0 amplifies)")
    return _finish(fig, ax, title)


def absorption_correction_effect(comparison, ax=None, title=None):
    """Relative perplexity change (corrected / base − 1, %) per base allocation, metric and
    sparsity (``absorption.compare_correction`` table). Negative = the correction helps."""
    import numpy as np

    fig, ax = _figure(ax, (7, 3.2))
    labels = [f"{b}\n{m} {s:.0%}" for b, m, s in zip(comparison["base"], comparison["metric"], comparison["sparsity"])]
    y = 100 * np.asarray(comparison["rel_change"], dtype=float)
    ax.bar(np.arange(len(y)), y, color=np.where(y < 0, "tab:green", "tab:red"))
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xticks(np.arange(len(y)), labels, fontsize="x-small")
    ax.set_ylabel("perplexity change (%)")
    return _finish(fig, ax, title)


# ---------------------------------------------------------------- SV-NUP (prunekit.allocation.svnup)

def svnup_shapley(values, stderr=None, ax=None, title="Shapley value per block"):
    """Per-block Shapley values as bars, with ±1 standard-error bars when ``stderr`` is given
    (Monte-Carlo); NaN stderrs are ignored. Returns the Figure."""
    import numpy as np

    y = np.asarray(values, dtype=float).reshape(-1)
    err = None
    if stderr is not None:
        e = np.asarray(stderr, dtype=float).reshape(-1)
        err = None if np.all(np.isnan(e)) else np.nan_to_num(e)
    fig, ax = _figure(ax, (7, 3))
    ax.bar(np.arange(y.size), y, yerr=err, capsize=2, color="tab:blue")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("block")
    ax.set_ylabel("Shapley value (Δ −NLL)")
    return _finish(fig, ax, title)


def svnup_approximation(study, title="Shapley approximation vs cost"):
    """Spearman ρ and relative error against the Monte-Carlo reference vs distinct coalition
    evaluations (``prunekit.experiments.svnup.approximation_study`` DataFrame). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, col in zip(axes, ("spearman", "rel_error")):
        for est, g in study.groupby("estimator", sort=False):
            g = g.sort_values("evaluations")
            if est == "monte_carlo":
                ax.plot(g["evaluations"], g[col], marker="o", markersize=3, label="Monte-Carlo")
            else:
                ax.scatter(g["evaluations"], g[col], marker="s", zorder=3, label=est.replace("_", " "))
                for _, r in g.iterrows():
                    ax.annotate(r["setting"], (r["evaluations"], r[col]), fontsize="x-small",
                                xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("distinct coalition evaluations")
        ax.set_ylabel("Spearman ρ vs reference" if col == "spearman" else "‖φ − φ_ref‖ / ‖φ_ref‖")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def svnup_perplexity(table, dataset="wikitext2", title=None):
    """Perplexity of each allocation (bars) per sparsity, one panel per pruning metric, log scale.
    ``table``: rows with metric, allocation, sparsity and a ``dataset`` column. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(table)
    metrics = list(dict.fromkeys(df["metric"]))
    allocs = list(dict.fromkeys(df["allocation"]))
    sps = sorted(df["sparsity"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    width = 0.8 / max(len(allocs), 1)
    for ax, m in zip(axes[0], metrics):
        for k, a in enumerate(allocs):
            sel = df[(df["metric"] == m) & (df["allocation"] == a)].set_index("sparsity")
            y = [float(sel[dataset].get(s, np.nan)) for s in sps]
            ax.bar(np.arange(len(sps)) + (k - (len(allocs) - 1) / 2) * width, y, width, label=a)
        ax.set_xticks(np.arange(len(sps)), [f"{s:.0%}" for s in sps])
        ax.set_yscale("log")
        ax.set_xlabel("target sparsity")
        ax.set_ylabel(f"{dataset} perplexity")
        ax.set_title(m)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- grand comparison

def comparison_heatmap(summary, value: str = "ppl_wikitext2_mean", title: str | None = None):
    """Heat map of ``value`` (log scale colours): rows allocation, columns metric@sparsity."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns
    t = summary.assign(setting=summary.metric + "@" + (summary.sparsity * 100).round().astype(int).astype(str) + "%")
    piv = t.pivot_table(index="allocation", columns="setting", values=value)
    fig, ax = plt.subplots(figsize=(1.6 * max(3, piv.shape[1]) + 2, 0.45 * piv.shape[0] + 1.5))
    sns.heatmap(np.log10(piv), annot=piv.round(1), fmt="", cmap="viridis_r", ax=ax,
                cbar_kws={"label": f"log10 {value}"})
    ax.set_title(title or value)
    fig.tight_layout()
    return fig


def comparison_lines(summary, value: str = "ppl_wikitext2_mean", title: str | None = None):
    """``value`` vs sparsity, one line per allocation, one panel per metric, ± std error bars."""
    import matplotlib.pyplot as plt
    metrics = list(dict.fromkeys(summary.metric))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    std = value[: -len("_mean")] + "_std" if value.endswith("_mean") else None  # error bars for means only
    for ax, m in zip(axes[0], metrics):
        sub = summary[summary.metric == m]
        for a, g in sub.groupby("allocation"):
            g = g.sort_values("sparsity")
            ax.errorbar(g.sparsity, g[value], yerr=g[std] if std in g.columns else None, marker="o", ms=4,
                        capsize=3, label=a)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_title(m)
    axes[0][0].set_ylabel(value)
    axes[0][-1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- MRP findings and MRP (notebooks 20, 21)

def mrp_lps(table, title=None):
    """Layerwise pruning sensitivity (``analysis.layer_sensitivity`` / ``metric_dependency`` table):
    LPS (Δ mean NLL) vs block, one line per sparsity, one panel per metric. Returns the Figure."""
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(table["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, mt in zip(axes[0], metrics):
        sub = table[table["metric"] == mt]
        for s, g in sub.groupby("sparsity"):
            g = g.sort_values("block")
            ax.plot(g["block"], g["lps"], marker="o", markersize=3, label=f"{s:.0%}")
        ax.set_yscale("symlog", linthresh=1e-3)  # LPS spans decades and can be slightly negative
        ax.set_xlabel("pruned block")
        ax.set_title(mt)
        ax.legend(fontsize="small", title="sparsity")
    axes[0][0].set_ylabel("LPS: Δ mean NLL (nats, symlog)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def mrp_lps_ranks(table, sparsity, title=None):
    """Sensitivity rank of every block (1 = most sensitive) under each metric at ``sparsity``:
    crossing lines = the metric changes which blocks are fragile. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import rankdata

    sub = table[np.isclose(table["sparsity"], sparsity)]
    metrics = list(dict.fromkeys(sub["metric"]))
    ranks = {mt: rankdata(-sub[sub["metric"] == mt].sort_values("block")["lps"].to_numpy()) for mt in metrics}
    L = len(next(iter(ranks.values())))
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 3, 4))
    cmap = plt.get_cmap("viridis")
    for b in range(L):
        ax.plot(range(len(metrics)), [ranks[mt][b] for mt in metrics], marker="o", markersize=3,
                color=cmap(b / max(L - 1, 1)), linewidth=1)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.invert_yaxis()
    ax.set_ylabel("sensitivity rank (1 = most sensitive)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L - 1))
    fig.colorbar(sm, ax=ax, label="block")
    ax.set_title(title or f"LPS rank per metric at {sparsity:.0%}")
    fig.tight_layout()
    return fig


def mrp_redundancy_vs_ppl(table, x="nor_std", title=None):
    """Spread of the blocks' redundancy levels in the pruned model (``x``) vs perplexity, one
    point per allocation (``analysis.redundancy_uniformity`` table); named methods labelled,
    random allocations grey. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rnd = table[table["kind"] == "random"]
    ax.scatter(rnd[x], rnd["ppl"], color="grey", alpha=0.6, s=18, label="random (budget-exact)")
    meth = table[table["kind"] != "random"]
    ax.scatter(meth[x], meth["ppl"], color="tab:red", s=30, zorder=3, label="methods")
    for _, r in meth.iterrows():
        ax.annotate(r["allocation"], (r[x], r["ppl"]), fontsize="small", xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel({"nor_std": "std of block redundancy levels", "nor_range": "max − min block redundancy"}.get(x, x))
    ax.set_ylabel("perplexity")
    ax.legend(fontsize="small")
    return _finish(fig, ax, title)


def mrp_redundancy_levels(levels: dict, title=None, ax=None):
    """Per-block redundancy level (non-outlier ratio), one line per label (e.g. dense / uniform /
    MRP). ``levels``: dict label -> sequence. Returns the Figure."""
    import numpy as np

    fig, ax = _figure(ax, (7, 3.4))
    for lab, v in levels.items():
        v = np.asarray(v, dtype=float)
        ax.plot(np.arange(v.size), v, marker="o", markersize=3, label=f"{lab} (std {v.std():.4f})")
    ax.set_xlabel("block")
    ax.set_ylabel("non-outlier ratio")
    ax.legend(fontsize="small")
    return _finish(fig, ax, title)


def mrp_ablation(table, param, value="ppl", title=None):
    """``value`` against an MRP option (``param`` column), one line per metric@sparsity, log y."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for (mt, s), g in table.groupby(["metric", "sparsity"]):
        g = g.sort_values(param)
        ax.plot(g[param].astype(str), g[value], marker="o", label=f"{mt} @ {s:.0%}")
    ax.set_yscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(value)
    ax.legend(fontsize="small")
    ax.set_title(title or f"MRP ablation: {param}")
    fig.tight_layout()
    return fig


def degradation_curves(entries: dict, paper_ratio: dict, caption: str | None = None, title=None):
    """Held-out perplexity ratio (pruned ÷ dense) against sparsity, one panel per solver, one line
    per model (and dtype), with s* marked and the papers' LLaMA-7B point at 70 % (``paper_ratio``:
    solver -> ratio). ``entries``: the ``entries`` of an s* file (``experiments.regime``)."""
    import matplotlib.pyplot as plt
    solvers = sorted({e["settings"]["metric"] for e in entries.values() if "s_star" in e})
    fig, axes = plt.subplots(1, max(1, len(solvers)), figsize=(5 * max(1, len(solvers)), 3.6), squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        for e in entries.values():
            st = e.get("settings", {})
            if "s_star" not in e or st.get("metric") != solver:
                continue
            pts = sorted((p["sparsity"], p["ratio"]) for p in e["curve"])
            seed = f", seed {st['seed']}" if st.get("seed", 0) else ""
            label = f"{st['model']} ({st['dtype'].replace('torch.', '')}{seed}), s* = {e['s_star']:.3f}"
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
            ax.axvline(e["s_star"], color=line.get_color(), linestyle=":", linewidth=1)
        if solver in paper_ratio:
            ax.plot([0.7], [paper_ratio[solver]], marker="*", markersize=12, color="black", linestyle="none",
                    label=f"LLaMA-7B at 70 % (paper), {paper_ratio[solver]:.1f}×")
            ax.axhline(paper_ratio[solver], color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("perplexity ÷ dense (held-out C4)")
        ax.set_title(f"uniform {solver}")
        ax.legend(fontsize=7)
    if caption:
        fig.text(0.99, 0.01, caption, ha="right", va="bottom", fontsize=7, color="grey")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
