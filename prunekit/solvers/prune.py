"""Prune: magnitude, Wanda and SparseGPT (unstructured and N:M) driven by a per-block/per-matrix plan.

Every metric runs inside the one sequential engine (``calibrate.sequential``). Realised sparsity is
measured from zeros over the decoder-block linears (docs/methods.md §0.2, check_sparsity).
Deviation from the reference code, on purpose: unstructured masks prune exactly ``round(n*s)``
weights of each comparison group (the reference's ``<= threshold`` prunes ties and one extra).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from prunekit.core.engine import sequential
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.vocabulary import METRICS
from prunekit.solvers.masks import _check_nm_width, check_sparsity_value, magnitude_mask, parse_nm, wanda_mask
from prunekit.solvers.sparsegpt import SparseGPT

COLLECT = {"magnitude": (), "wanda": ("wanda",), "sparsegpt": ("hessian",)}


def plan_matrix(plan, lay) -> np.ndarray:
    """(num_blocks, num_linears) sparsities from a float, a per-block vector, or a SparsityPlan."""
    L, K = lay.num_blocks, len(lay.linear_names)
    if isinstance(plan, (int, float)):
        check_sparsity_value(float(plan))
        return np.full((L, K), float(plan))
    vals = np.asarray(getattr(plan, "values", plan), dtype=float)
    if vals.ndim == 1:
        vals = np.repeat(vals[:, None], K, axis=1)
    if vals.shape != (L, K):
        raise PrunekitError(f"plan has shape {vals.shape}, model needs ({L}, {K}) or ({L},)")
    if (vals < 0).any() or (vals >= 1).any():
        raise PrunekitError("plan sparsities must lie in [0, 1)")
    return vals


def prune_block(i: int, block, stats, values: np.ndarray, metric: str, nm, names: list[str],
                blocksize: int = 128, percdamp: float = 0.01, consume: bool = False) -> None:
    """Prune every linear of block i in place with its planned sparsity. SparseGPT solves the
    linears that read one input together (one Hessian, one factorisation, one column loop);
    ``consume=True`` lets it damp and factor the accumulated Hessians in place (no d×d copy),
    after which ``stats`` cannot be used again."""
    mods = dict(block.named_modules())
    todo = [(k, name) for k, name in enumerate(names) if not (float(values[i, k]) == 0.0 and nm is None)]
    if metric == "sparsegpt":
        groups: dict[int, list[tuple[int, str]]] = {}
        for k, name in todo:  # group by the accumulator that owns this linear's input Hessian
            groups.setdefault(id(stats["hessian"][name].root), []).append((k, name))
        for members in groups.values():
            hess = stats["hessian"][members[0][1]]
            solver = SparseGPT(hess.take() if consume else hess.H, percdamp, blocksize)
            lins = [mods[name] for _, name in members]
            pruned = solver.prune([lin.weight.data for lin in lins], [float(values[i, k]) for k, _ in members], nm)
            for lin, w in zip(lins, pruned):
                lin.weight.data.copy_(w.to(lin.weight.dtype))
            del solver, pruned
        return
    for k, name in todo:
        W = mods[name].weight.data
        s = float(values[i, k])
        if metric == "magnitude":
            W.masked_fill_(magnitude_mask(W, s, nm), 0)
        else:
            W.masked_fill_(wanda_mask(W, stats["wanda"][name].norm, s, nm), 0)


def prune_model(rt, calib_ids: torch.Tensor, plan, metric: str = "wanda", nm=None,
                batch_size: int = 8, blocksize: int = 128, percdamp: float = 0.01,
                progress: bool = True) -> dict:
    """Prune the runtime's model (or an in-memory model) in place, block by block, on calibration windows ``calib_ids`` (n, seqlen).
    ``plan``: a float (uniform), per-block vector, (blocks, linears) array or SparsityPlan."""
    if metric not in METRICS:
        raise PrunekitError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
    nm = parse_nm(nm)
    rt = Runtime.of(rt)
    lay = rt.layout
    values = plan_matrix(plan, lay)
    for n, m in lay.linears(0).items():
        _check_nm_width(nm, m.in_features, n)
    t0 = time.perf_counter()
    need_data = metric != "magnitude"

    def on_block(i, block, stats):
        prune_block(i, block, stats, values, metric, nm, lay.linear_names, blocksize, percdamp, consume=True)

    if need_data:
        sequential(rt, calib_ids, collect=COLLECT[metric], on_block=on_block,
                   batch_size=batch_size, desc=f"prune[{metric}]", progress=progress)
    else:
        for i in range(lay.num_blocks):
            with rt.onload(i, write=True):
                on_block(i, lay.blocks[i], {})
    return {"prune_s": time.perf_counter() - t0, **measure_sparsity(rt)}


@torch.no_grad()
def measure_sparsity(rt) -> dict:
    """Realised sparsity from zeros: per block and global over the decoder-block linears."""
    rt = Runtime.of(rt)
    lay = rt.layout
    per_block, zeros, total = [], 0, 0
    for i in range(lay.num_blocks):
        z = n = 0
        with rt.onload(i):
            for m in lay.linears(i).values():
                n += m.weight.numel()
                z += m.weight.numel() - int(torch.count_nonzero(m.weight))  # no (w == 0) temporary
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return {"layer_sparsity": per_block, "global_sparsity": zeros / total}
