"""Sentences generated from measured numbers, so a notebook's text cannot contradict its table."""
from __future__ import annotations

# words for "pruned perplexity / dense perplexity"
CLOSE, MODERATE = 1.25, 2.0


def closeness(ratio: float) -> str:
    if ratio <= CLOSE:
        return "close to dense"
    if ratio <= MODERATE:
        return "moderately above dense"
    return "far above dense"


def versus_dense(ppl: dict[str, float], dense: float, sparsity: float | None = None) -> str:
    """One sentence comparing each method's perplexity with the dense model's, best first, e.g.
    "At 50 % sparsity wanda is close to dense (1.12× dense), magnitude far above dense (3.41×)."."""
    if not ppl:
        return "No pruned model was measured."
    if not dense > 0:
        raise ValueError(f"dense perplexity must be positive, got {dense}")
    order = sorted(ppl, key=ppl.get)
    parts = []
    for i, name in enumerate(order):
        r = ppl[name] / dense
        parts.append(f"{name} is {closeness(r)} ({ppl[name]:.2f}, {r:.2f}× dense)" if i == 0 else
                     f"{name} {closeness(r)} ({ppl[name]:.2f}, {r:.2f}×)")
    head = f"At {sparsity:.0%} sparsity " if sparsity is not None else ""
    body = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    return f"{head}{body} (dense {dense:.2f})."
