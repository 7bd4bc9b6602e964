"""Plots used by the notebooks (matplotlib/seaborn). Each function returns the matplotlib Figure."""
from __future__ import annotations


# ---------------------------------------------------------------- allocation profiles (baselines)

def sparsity_profile(plans, ax=None, title=None):
    """Per-block sparsity of several SparsityPlans on one axis.

    ``plans``: dict label -> SparsityPlan, or a list of plans (labelled by ``plan.method``).
    Draws ``plan.per_block`` (parameter-weighted per block) against the block index, with the
    common target as a dashed line when all plans share it. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    items = list(plans.items()) if isinstance(plans, dict) else [(p.method, p) for p in plans]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
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
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.asarray(values, dtype=float).reshape(-1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3))
    else:
        fig = ax.figure
    x = np.arange(y.size)
    if kind == "line":
        ax.plot(x, y, marker="o", markersize=3)
    else:
        ax.bar(x, y)
    ax.set_xlabel("block")
    ax.set_ylabel(label)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


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


# ---------------------------------------------------------------- absorption (issue 6)

def absorption_drift_curves(trajectories, quantity="drift", ax=None, title=None, logy=True):
    """Perturbation response vs depth, one line per injection block (``absorption.Trajectory``).

    ``quantity``: 'drift' (relative L2 drift R_k), 'ratio' (R_k / R_l), 'cos_state' (cos(h'_k, h_k))
    or 'cos_drift' (cos(h'_k − h_k, h_k)). Lines are coloured by injection depth. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    trajectories = list(trajectories)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.8))
    else:
        fig = ax.figure
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
    import matplotlib.pyplot as plt
    import numpy as np

    r = np.asarray(r, dtype=float).reshape(-1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3))
    else:
        fig = ax.figure
    x = np.arange(r.size)
    ax.bar(x, np.log(r), color=np.where(r > 1, "tab:red", "tab:blue"))
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("block")
    ax.set_ylabel("log r_l  (>0 amplifies)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def absorption_correction_effect(comparison, ax=None, title=None):
    """Relative perplexity change (corrected / base − 1, %) per base allocation, metric and
    sparsity (``absorption.compare_correction`` table). Negative = the correction helps."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.2))
    else:
        fig = ax.figure
    labels = [f"{b}\n{m} {s:.0%}" for b, m, s in zip(comparison["base"], comparison["metric"], comparison["sparsity"])]
    y = 100 * np.asarray(comparison["rel_change"], dtype=float)
    ax.bar(np.arange(len(y)), y, color=np.where(y < 0, "tab:green", "tab:red"))
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xticks(np.arange(len(y)), labels, fontsize="x-small")
    ax.set_ylabel("perplexity change (%)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
