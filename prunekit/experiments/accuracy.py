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
    x = np.concatenate([np.asarray(zs[t]["per_example_acc"], dtype=float) for t in tasks])
    lab = np.concatenate([[t] * len(zs[t]["per_example_acc"]) for t in tasks])
    return x, lab
