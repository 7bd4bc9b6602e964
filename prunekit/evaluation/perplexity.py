"""Evaluate: perplexity with the Wanda/SparseGPT/OWL protocol (docs/methods.md §0.3), zero-shot via lm-eval.

Perplexity: the split tokenised once as one sequence; ``n = numel // seqlen`` non-overlapping
windows (tail dropped, no BOS re-inserted); per window the mean CE over its ``seqlen-1`` predicted
tokens is weighted by ``seqlen``; ``ppl = exp(Σ nll / (n·seqlen))``.
"""
from __future__ import annotations

import math
import time

import torch
from prunekit.core.data import eval_tokens
from prunekit.core.engine import window_nll
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.utils import bars_disabled, tqdm


@torch.no_grad()
def window_nlls(rt, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                batch_size: int = 1, progress: bool = True, desc: str = "ppl") -> torch.Tensor:
    """Mean next-token CE of each non-overlapping ``seqlen`` window of ``ids`` (1, N)."""
    n = ids.shape[1] // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise PrunekitError(f"evaluation text has {ids.shape[1]} tokens, fewer than seqlen={seqlen}; lower --eval-seqlen")
    windows = ids[0, : n * seqlen].reshape(n, seqlen)
    bar = tqdm(total=n * seqlen, desc=desc, unit="tok", unit_scale=True, disable=bars_disabled(progress), leave=False)
    rt = Runtime.of(rt)
    try:
        with rt.evaluating():  # bf16 autocast under mixed precision; calibration stays in the weights' dtype
            return window_nll(rt, windows, batch_size, on_batch=bar.update)
    finally:
        bar.close()


def perplexity_from_nlls(nlls: torch.Tensor, seqlen: int) -> float:
    """exp(Σ_i nll_i·seqlen / (n·seqlen)) — the reference's seqlen weighting cancels to a mean."""
    return math.exp(float((nlls.double() * seqlen).sum() / (len(nlls) * seqlen)))


def perplexity(rt: Runtime, dataset: str = "wikitext2", seqlen: int = 2048,
               max_windows: int | None = None, batch_size: int = 1, progress: bool = True) -> dict:
    """Perplexity of the runtime's model on ``dataset`` ('wikitext2', 'c4', 'ptb'), tokenised with
    its tokenizer; returns ppl, tokens, tokens/s, sha256 and the per-window NLLs."""
    if not isinstance(rt, Runtime) or rt.tokenizer is None:
        raise PrunekitError("perplexity needs a Runtime with its tokenizer (load_model returns one; "
                            "Runtime(model, tokenizer) wraps an in-memory model)")
    ids, src = eval_tokens(dataset, rt.tokenizer, seqlen)
    t0 = time.perf_counter()
    nlls = window_nlls(rt, ids, seqlen, max_windows, batch_size, progress, desc=f"ppl[{dataset}]")
    dt = time.perf_counter() - t0
    tokens = len(nlls) * seqlen
    return {"dataset": dataset, "perplexity": perplexity_from_nlls(nlls, seqlen), "windows": len(nlls),
            "seqlen": seqlen, "tokens": tokens, "tokens_per_s": tokens / dt, "seconds": dt,
            "data_sha256": src.sha256, "data_origin": src.origin,
            "window_nll": [float(x) for x in nlls]}  # per window: the paired bootstrap's unit


def zero_shot(rt, tasks, limit=None, batch_size=1, **kwargs) -> dict:
    """Zero-shot accuracy with stock lm-eval on the in-memory model (see ``prunekit.evaluation.zeroshot``)."""
    from prunekit.evaluation.zeroshot import zero_shot as _zero_shot
    return _zero_shot(rt, tasks, limit=limit, batch_size=batch_size, **kwargs)


def record_fields(results: dict[str, dict], seqlen: int, windows: int | None) -> dict:
    """The run record's evaluation fields from ``{dataset: perplexity(...)}``: one shape for every
    record (the CLI's ``eval`` and ``Session.run``, hence ``prune``, sweeps and notebooks)."""
    return {"perplexity": {d: r["perplexity"] for d, r in results.items()},
            "tokens_evaluated": {d: r["tokens"] for d, r in results.items()},
            "window_nll": {d: r["window_nll"] for d, r in results.items()},
            "eval": {"seqlen": seqlen, "windows": windows},
            "data_sha256": {f"eval:{d}": r["data_sha256"] for d, r in results.items()}}
