"""Score: dense statistics of a model that allocation methods consume, computed once and cached.

``Statistics`` is what every allocation method receives. It computes lazily and caches on disk
(safetensors under ``$PRUNEKIT_CACHE/stats``, keyed by model fingerprint and calibration
dataset/samples/seqlen/seed/data hash). Each entry stores its key and a checksum of its payload;
a corrupt or stale entry is detected, deleted and recomputed, never used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from prunekit.core import cache
from prunekit.core.data import Calibration
from prunekit.core.engine import sequential
from prunekit.core.cache import cache_dir
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.solvers import scores
from prunekit.solvers.sparsegpt import hessian_inverse_cholesky

STATS_VERSION = "1"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class StatsCache:
    """Flat name -> tensor dicts in safetensors files, verified on load."""

    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root else cache_dir() / "stats"
        self.enabled = enabled

    def path(self, key: str) -> Path:
        return self.root / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".safetensors")

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        if not self.enabled:
            return None
        p = self.path(key)
        cache.clean_staging(self.root)
        if not p.is_file():
            return None
        from safetensors import safe_open
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("key") != key:
                why = "it stands for another statistic"
            elif meta.get("checksum") != _checksum(tensors):
                why = "content does not match its checksum"
            else:
                return tensors
        except Exception as e:  # truncated or foreign file
            why = f"unreadable: {type(e).__name__}"
        cache.warn(f"cache entry {p} rejected ({why}); recomputing it")
        cache.discard(p)
        return None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if not self.enabled:
            return
        from prunekit.utils import atomic_write_with, write_safetensors
        p = self.path(key)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"key": key, "checksum": _checksum(tensors)}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_with(p, lambda f: write_safetensors(f, tensors, meta), "cache entry ")
        except Exception as e:  # noqa: BLE001 - disk full, file-size limit, a symlink there: the run goes on uncached
            cache.warn(f"cannot write cache entry {p} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       "going on without caching it")


class Statistics:
    """Lazily computed, cached statistics of a dense model for allocation methods.

    Attributes: ``rt`` (the ``Runtime``), ``model``, ``calib`` (a ``data.Calibration`` or None), ``sizes`` (blocks × linears
    parameter counts), ``linear_names``, ``num_blocks``, ``dense_passes`` (how many full
    calibration passes this object ran; a warm cache keeps it at 0)."""

    def __init__(self, rt, calib: Calibration | None = None, *, cache: bool | StatsCache = True,
                 batch_size: int = 8, progress: bool = True, tokenizer=None):
        self.rt = Runtime.of(rt, tokenizer)
        self.model, self.calib = self.rt.model, calib
        self.tokenizer = tokenizer if tokenizer is not None else self.rt.tokenizer
        self.layout = self.rt.layout
        self.sizes = np.asarray(self.layout.sizes(), dtype=float)
        self.linear_names = list(self.layout.linear_names)
        self.num_blocks = self.layout.num_blocks
        self.cache = cache if isinstance(cache, StatsCache) else StatsCache(enabled=bool(cache))
        self.batch_size, self.progress = batch_size, progress
        self.dense_passes = 0
        self._fingerprint: str | None = None
        self._digests: list[str] = []
        self._mem: dict[str, object] = {}
        if not self.rt.modified:
            self.fingerprint  # noqa: B018  (dense now: fingerprint eagerly, the cheap path later)

    @property
    def fingerprint(self) -> str:
        """Identity of the dense model these statistics describe (computed once, while dense)."""
        if self._fingerprint is None:
            mod = self.rt.modified
            if mod:
                raise PrunekitError(f"Statistics need the dense model but blocks {sorted(mod)} are modified; "
                                    "restore the dense weights first (Session.restore / weight snapshot)")
            self._fingerprint = self.rt.fingerprint(self._digests)
        return self._fingerprint

    def check_dense(self, i: int) -> None:
        """Raise when block i (onloaded) no longer holds the weights that were fingerprinted: scores
        from dense statistics and pruned weights must never be mixed under the dense cache key."""
        self.fingerprint  # noqa: B018
        if self.rt.block_digest(i) != self._digests[i]:
            raise PrunekitError(f"block {i} differs from the model these Statistics fingerprinted (was it pruned?); "
                                "restore the dense weights (Session.restore / weight snapshot) before asking for scores")

    # ---- generic cached computation, also used by plugin modules (MRP, SV-NUP, absorption)
    def cached(self, name: str, compute: Callable[[], dict[str, torch.Tensor]], *, data: bool = True,
               **params) -> dict[str, torch.Tensor]:
        """Memoise ``compute()`` in memory and on disk under (name, params, model[, calibration])."""
        if data and self.calib is None:
            raise PrunekitError(f"statistic '{name}' needs calibration data; pass calib= to Statistics")
        parts = [STATS_VERSION, name, self.fingerprint, json.dumps(params, sort_keys=True, default=str)]
        if data:
            parts.append(self.calib.key())
        key = "|".join(parts)
        if key in self._mem:
            return self._mem[key]
        out = self.cache.load(key)
        if out is None:
            out = compute()
            self.cache.save(key, out)
        self._mem[key] = out
        return out

    def dense_pass(self, collect: tuple[str, ...], reduce: Callable) -> dict[str, torch.Tensor]:
        """One sequential dense pass; ``reduce(i, block, stats)`` returns tensors to keep for block i."""
        kept: dict[str, torch.Tensor] = {}
        self.dense_passes += 1

        def on_block(i, block, stats):
            for k, v in reduce(i, block, stats).items():
                kept[f"{i}.{k}"] = v.detach().float().cpu()

        sequential(self.rt, self.calib.input_ids, collect=collect, on_block=on_block, modifies=False,
                   batch_size=self.batch_size, desc="dense statistics", progress=self.progress)
        return kept

    # ---- statistics
    def weight(self, i: int, name: str) -> torch.Tensor:
        """Dense weight of block i's linear ``name`` (a copy when the block is offloaded)."""
        off = self.rt.offloader
        with self.rt.onload(i):
            self.check_dense(i)
            w = self.layout.linears(i)[name].weight.detach()
            return w.clone() if off is not None and off.needs_moving else w

    def wanda_norms(self) -> list[dict[str, torch.Tensor]]:
        """Per block, per linear: ||X_j||_2 column norms from a dense calibration pass."""
        flat = self.cached("wanda_norms", lambda: self.dense_pass(
            ("wanda",), lambda i, b, st: {n: s.norm for n, s in st["wanda"].items()}))
        return [{n: flat[f"{i}.{n}"] for n in self.linear_names} for i in range(self.num_blocks)]

    def hinv_diag(self, percdamp: float = 0.01) -> list[dict[str, torch.Tensor]]:
        """Per block, per linear: diag of SparseGPT's upper Cholesky factor of (H+λI)^-1."""
        def reduce(i, block, st):
            return {n: torch.diag(hessian_inverse_cholesky(s.H, percdamp, copy=False)[0]) for n, s in st["hessian"].items()}
        flat = self.cached("hinv_diag", lambda: self.dense_pass(("hessian",), reduce), percdamp=percdamp)
        return [{n: flat[f"{i}.{n}"] for n in self.linear_names} for i in range(self.num_blocks)]

    def scores(self, i: int, metric: str = "wanda", current: bool = False) -> dict[str, torch.Tensor]:
        """Dense importance scores of block i's linears under ``metric``:
        magnitude |W|, Wanda |W|·||X_j||, SparseGPT W²/[H⁻¹]_jj² (docs/methods.md §1).
        ``current=True`` scores the block's weights as they are now (pruned ones score 0) with the
        dense input statistics: MRP's reading "current" (§1); never cached, and asked for on
        purpose — without it a modified block is an error."""
        out = {}
        with self.rt.onload(i):
            if not current:
                self.check_dense(i)
            ws = {n: self.layout.linears(i)[n].weight.detach() for n in self.linear_names}
        for n in self.linear_names:
            W = ws[n].float()
            if metric == "magnitude":
                out[n] = scores.magnitude_score(W)
            elif metric == "wanda":
                out[n] = scores.wanda_score(W, self.wanda_norms()[i][n].to(W.device))
            elif metric == "sparsegpt":
                out[n] = scores.sparsegpt_score(W, self.hinv_diag()[i][n].to(W.device))
            else:
                raise PrunekitError(f"unknown metric '{metric}'")
        return out

    def outlier_ratios(self, M: float = 5.0, metric: str = "wanda") -> np.ndarray:
        """OWL's layerwise outlier distribution: LOD_l = 100·#{A > M·mean(A_block)}/#A_block,
        scores of all linears of block l pooled (OWL eq. 3, luuyin/OWL check_outlier_mean)."""
        key = f"lod-{M}-{metric}"
        if key not in self._mem:
            lod = []
            for i in range(self.num_blocks):
                A = torch.cat([a.reshape(-1) for a in self.scores(i, metric).values()])
                lod.append(100.0 * float((A > M * A.mean()).sum()) / A.numel())
            self._mem[key] = np.asarray(lod)
        return self._mem[key]
