"""Zero-shot accuracy claims as paired comparisons over examples × seeds.

The MRP claim (+1.8 to +3.2 average zero-shot points over the best previous allocation) and the
absorption claim (+1.02 % zero-shot accuracy of the corrected allocation) are accuracy claims. Their
quantity is the mean accuracy over the seven tasks the papers average (BoolQ, RTE, HellaSwag,
WinoGrande, ARC-e, ARC-c, OBQA; offline twins through stock lm-eval). Per seed s the change is
``acc_A(s) − max_k acc_Bk(s)`` in points, ``acc(s)`` the mean over tasks of the task's accuracy;
the effect is its mean over seeds. The 95 % interval is a two-stage paired bootstrap: each replicate
draws the seeds with replacement and, independently, within every task the examples with
replacement, the same draw for A and every B (every run sees the same examples).
"""
from __future__ import annotations

import numpy as np

from prunekit.errors import PrunekitError

PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
REPLICATES = 4000


def accuracy_bootstrap(a, b, tasks, n_boot: int = REPLICATES, seed: int = 0, confidence: float = 0.95) -> dict:
    """``a``: (S, N) per-example correctness (0/1) of A for S seeds and N examples; ``b``: (S, N) or
    (K, S, N); ``tasks``: (N,) task label of every example. Returns mean, lo, hi (points), seeds,
    examples, replicates."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    b = b[None] if b.ndim == 2 else b
    tasks = np.asarray(tasks)
    if a.ndim != 2 or b.shape[1:] != a.shape or tasks.shape != (a.shape[1],):
        raise PrunekitError(f"accuracy bootstrap needs A (S, N), B (K, S, N) and tasks (N,); got "
                            f"{a.shape}, {b.shape}, {tasks.shape}")
    S, _ = a.shape
    groups = [np.flatnonzero(tasks == t) for t in dict.fromkeys(tasks.tolist())]
    rng = np.random.default_rng(seed)
    si = rng.integers(0, S, size=(n_boot, S))
    draws = [idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))] for idx in groups]

    def task_mean(x, picks):  # x (..., S, N) -> (..., S) mean over tasks of the task accuracy
        return np.mean([x[..., p].mean(-1) for p in picks], axis=0)

    point = float(np.mean(task_mean(a, groups) - task_mean(b, groups).max(0)))
    A = np.zeros((n_boot, S))
    B = np.zeros((b.shape[0], n_boot, S))
    for d in draws:  # per task: (R, n_t) example indices, the same for A and every B
        A += a[:, d].mean(-1).T / len(draws)
        B += b[:, :, d].mean(-1).transpose(0, 2, 1) / len(draws)
    diff = A - B.max(0)                                    # (R, S)
    reps = np.take_along_axis(diff, si, axis=1).mean(1)    # seeds resampled per replicate
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return {"mean": 100 * point, "lo": 100 * float(lo), "hi": 100 * float(hi), "seeds": S,
            "examples": int(a.shape[1]), "replicates": n_boot}


def examples_needed(disagreement: float, seeds: int, half_width_points: float = 1.0, z: float = 1.96) -> int:
    """Examples (summed over tasks, per seed) for a paired interval of ± ``half_width_points`` when
    the two runs disagree on a fraction ``disagreement`` of the examples (normal approximation,
    the per-example paired difference has variance ≈ disagreement; seed-to-seed spread ignored)."""
    if not 0 < disagreement <= 1 or seeds < 1:
        raise PrunekitError(f"need 0 < disagreement <= 1 and seeds >= 1, got {disagreement}, {seeds}")
    return int(np.ceil(disagreement * (100 * z / half_width_points) ** 2 / seeds))


def per_example(run: dict, tasks=PAPER_TASKS) -> tuple[np.ndarray, np.ndarray]:
    """(correctness, task labels) of one run record's ``zero_shot`` with per-example accuracies."""
    zs = run.get("zero_shot") or {}
    missing = [t for t in tasks if "per_example_acc" not in (zs.get(t) or {})]
    if missing:
        raise PrunekitError(f"run has no per-example accuracies for {', '.join(missing)}")
    vals = {t: _bits(zs[t]["per_example_acc"]) for t in tasks}
    x = np.concatenate([vals[t] for t in tasks])
    lab = np.concatenate([[t] * len(vals[t]) for t in tasks])
    return x, lab


def _bits(v) -> np.ndarray:
    """Per-example correctness as floats, from a list of 0/1 or a string of '0'/'1' (kept files)."""
    if isinstance(v, str):
        return np.frombuffer(v.encode(), dtype=np.uint8).astype(float) - ord("0")
    return np.asarray(v, dtype=float)


def as_bits(v) -> str:
    """Per-example 0/1 correctness as a compact string (one character per document)."""
    x = _bits(v)
    if not np.isin(x, (0.0, 1.0)).all():
        raise PrunekitError("per-example accuracies must be 0 or 1")
    return "".join("1" if b else "0" for b in x)


# ---------------------------------------------------------------- the runs behind the accuracy column

# Configurations the two accuracy claims compare, as (registered method, options), pruned with Wanda
# at the model's s* (the MRP claim and the absorption claim are Wanda claims at 70 %).
CONFIGS = {"mrp": ("mrp", {}), "owl": ("owl", {}), "alphapruning": ("alphapruning", {}),
           "absorption(owl)": ("absorption", {"base": "owl"}),
           "absorption(alphapruning)": ("absorption", {"base": "alphapruning"})}
# (claim, A, B or the best of several B, the paper's number as text)
ACCURACY_CLAIMS = [
    ("MRP beats the best of OWL / AlphaPruning in mean zero-shot accuracy", "mrp", ("owl", "alphapruning"),
     "+1.8 to +3.2 points"),
    ("Absorption correction of OWL raises mean zero-shot accuracy", "absorption(owl)", ("owl",), "+1.02 %"),
    ("Absorption correction of AlphaPruning raises mean zero-shot accuracy", "absorption(alphapruning)",
     ("alphapruning",), "+1.02 %"),
]


def read_runs(path, must_exist: bool = False) -> list[dict]:
    """The runs of an accuracy results file (absent: none, or an error with ``must_exist``)."""
    from pathlib import Path

    from prunekit.utils import read_jsonl
    if must_exist and not Path(path).exists():
        raise PrunekitError(f"accuracy file {path} does not exist")
    runs = read_jsonl(path)
    for i, r in enumerate(runs, 1):
        if not {"key", "model", "label", "tasks"} <= set(r):
            raise PrunekitError(f"{path}: record {i} is not an accuracy run (prunekit.experiments.regime accuracy)")
    return runs


def run_key(model: str, label: str, metric: str, sparsity: float | None, seed: int | None, limit: int) -> str:
    s = "dense" if sparsity is None else f"{sparsity:.4f}"
    return f"{model}|{label}|{metric}|{s}|seed{seed}|limit{limit}"


def run_accuracy(model: str, sparsity: float, out, seeds=(0, 1, 2), limit: int = 300, metric: str = "wanda",
                 configs=tuple(CONFIGS), batch_size: int = 8, calib_samples: int = 8, calib_seqlen: int = 256,
                 dtype: str | None = None, log=print) -> list[dict]:
    """Prune ``model`` with every configuration at ``sparsity`` for every seed (calibration C4
    ``calib_samples × calib_seqlen``, the claims' setting) and record the zero-shot accuracy of each
    of the seven tasks on their first ``limit`` documents with per-document correctness, plus the
    dense model once. One JSON line per run in ``out``, rewritten atomically after each run; a rerun
    skips the runs already there (resumable)."""
    import json
    import time

    from prunekit.evaluation.perplexity import zero_shot
    from prunekit.experiments.session import Session
    from prunekit.utils import atomic_write_text

    def _session(model, seed, dtype, calib_samples, calib_seqlen):
        return Session(model, calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed,
                       eval_datasets=("wikitext2",), dtype=dtype, progress=False)

    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise PrunekitError(f"unknown configuration {', '.join(bad)}; choose from {', '.join(CONFIGS)}")
    recs = read_runs(out)
    done = {r["key"] for r in recs}
    todo = [(sd, c) for sd in seeds for c in configs
            if run_key(model, c, metric, sparsity, sd, limit) not in done]
    dense_key = run_key(model, "dense", "none", None, None, limit)
    if not todo and dense_key in done:
        return recs
    sess = None

    def measure(label, seed, sp, prune_s, extra):
        c0, t0 = time.process_time(), time.perf_counter()
        zs = zero_shot(sess.runtime, list(PAPER_TASKS), limit=limit, batch_size=batch_size, per_example=True)
        rec = {"key": run_key(model, label, metric if sp is not None else "none", sp, seed, limit), "model": model,
               "label": label, "metric": metric if sp is not None else None, "sparsity": sp, "seed": seed,
               "limit": limit, "dtype": str(sess.model.dtype).removeprefix("torch."),
               "calibration": f"c4 {calib_samples} x {calib_seqlen}", "mean_acc": zs["mean_acc"],
               "tasks": {t: {"acc": zs[t]["acc"], "n": zs[t]["n"], "per_example_acc": zs[t]["per_example_acc"]}
                         for t in PAPER_TASKS},
               "prune_s": prune_s, "zero_shot_s": time.perf_counter() - t0,
               "zero_shot_cpu_s": time.process_time() - c0, **extra}
        recs.append(rec)
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in recs))
        log(f"{rec['key']}: mean acc {100 * rec['mean_acc']:.2f} (prune {prune_s:.0f} s, zero-shot "
            f"{rec['zero_shot_s']:.0f} s)")

    for seed, label in todo:
        if sess is None:
            sess = _session(model, seed, dtype, calib_samples, calib_seqlen)
        elif sess.seed != seed:
            sess.reseed(seed)
        method, opts = CONFIGS[label]
        t0 = time.perf_counter()
        r = sess.run(method, metric, sparsity, evaluate=False, options_=dict(opts))
        measure(label, seed, sparsity, time.perf_counter() - t0,
                {"global_sparsity": r["global_sparsity"], "planned_sparsity": r["planned_sparsity"]})
        sess.restore()
    if dense_key not in done:
        if sess is None:
            sess = _session(model, seeds[0], dtype, calib_samples, calib_seqlen)
        sess.restore()
        measure("dense", None, None, 0.0, {})
    return recs


def accuracy_table(recs: list[dict], n_boot: int = REPLICATES) -> list[dict]:
    """One row per model × accuracy claim: the paired bootstrap over the seeds every configuration
    of the claim has, and the mean accuracy (points) of A and of each B."""
    by = {}
    for r in recs:
        if r["label"] != "dense":
            by.setdefault((r["model"], r["sparsity"], r["limit"]), {}).setdefault(r["label"], {})[r["seed"]] = r
    rows = []
    for (model, sp, limit), runs in by.items():
        for text, a, bs, paper in ACCURACY_CLAIMS:
            if a not in runs or any(b not in runs for b in bs):
                continue
            seeds = sorted(set(runs[a]).intersection(*(set(runs[b]) for b in bs)))
            if not seeds:
                continue
            xa = [per_example({"zero_shot": runs[a][s]["tasks"]})[0] for s in seeds]
            lab = per_example({"zero_shot": runs[a][seeds[0]]["tasks"]})[1]
            xb = [[per_example({"zero_shot": runs[b][s]["tasks"]})[0] for s in seeds] for b in bs]
            res = accuracy_bootstrap(np.stack(xa), np.stack([np.stack(x) for x in xb]), lab, n_boot=n_boot)
            verdict = ("reproduced" if res["lo"] > 0 else "contradicted" if res["hi"] < 0 else "inconclusive")
            rows.append({"model": model, "sparsity": sp, "claim": text, "a": a, "b": list(bs), "paper": paper,
                         **res, "verdict": verdict, "limit": limit,
                         "acc_a": 100 * float(np.mean([runs[a][s]["mean_acc"] for s in seeds])),
                         "acc_b": {b: 100 * float(np.mean([runs[b][s]["mean_acc"] for s in seeds])) for b in bs}})
    return rows
