"""The SV-NUP layer game: players are decoder blocks, v(C) = -mean held-out NLL (docs/methods.md §2)."""
from __future__ import annotations

import time
from collections import OrderedDict

import torch

from prunekit.core.data import Calibration
from prunekit.core.engine import BlockInputs, capture, head_nll, run_block, sequential, window_nll
from prunekit.core.runtime import Runtime
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.vocabulary import METRICS
from prunekit.solvers.masks import magnitude_mask, wanda_mask
from prunekit.solvers.sparsegpt import sparsegpt

GAMES = ("dense_coalition", "pruned_coalition")
class LayerGame:
    """Players = decoder blocks of ``model``; ``game(mask)`` is the value of coalition ``mask``.

    ``calib_ids``: pruning samples (n, seqlen) from which each block's pruned weights are computed
    one-shot on dense activations. ``heldout_ids``: the value set (tensor or Calibration).
    The model's weights are swapped in place while the game is used; ``restore()`` (or leaving a
    ``with`` block) puts the dense weights back; build the game on the dense model. The dense
    weights live in the one weight snapshot (``core.snapshot``; a block is copied the first time
    it is pruned, to CPU or, with disk offload, not at all); the pruned state is ``store``:
    'masks' (magnitude / Wanda: 1 byte per weight, where the memory policy keeps activations),
    'weights' (the pruned weights, on CPU; SparseGPT always, since it updates surviving weights)
    or 'auto' (masks when possible). Never a second full copy on the device.
    ``value_cache`` memoises coalition values; hidden states entering block k are kept per prefix
    configuration (LRU over whole paths, up to ``state_cache_mb``, where the memory policy keeps activations), so
    an evaluation runs only the blocks from the first one that differs from a cached prefix
    (≈ half the blocks for sliding window and MC)."""

    def __init__(self, model, calib_ids: torch.Tensor | None, heldout_ids, target: float,
                 base_metric: str = "wanda", game: str = "dense_coalition", batch_size: int = 8,
                 state_cache_mb: float = 512.0, blocksize: int = 128, percdamp: float = 0.01,
                 store: str = "auto", progress: bool = True):
        if base_metric not in METRICS:
            raise PrunekitError(f"unknown base metric '{base_metric}'; choose from {', '.join(METRICS)}")
        if game not in GAMES:
            raise PrunekitError(f"unknown game '{game}'; choose from {', '.join(GAMES)}")
        if not (0.0 < float(target) < 1.0):
            raise PrunekitError(f"target sparsity {target} must lie in (0, 1)")
        if store not in ("auto", "weights", "masks"):
            raise PrunekitError(f"store must be 'auto', 'weights' or 'masks', got '{store}'")
        if base_metric != "magnitude" and calib_ids is None:
            raise PrunekitError(f"base metric '{base_metric}' needs calibration samples (calib_ids)")
        ids = heldout_ids.input_ids if isinstance(heldout_ids, Calibration) else heldout_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
            raise PrunekitError("held-out set must be a (samples, seqlen >= 2) token tensor or a Calibration")
        self.rt = Runtime.of(model)
        self.model, self.target, self.base_metric, self.game = self.rt.model, float(target), base_metric, game
        self.layout = self.rt.layout
        self.n = self.layout.num_blocks
        self.full = (1 << self.n) - 1
        self.batch_size, self.progress = batch_size, progress
        self.store = "weights" if base_metric == "sparsegpt" or store == "weights" else "masks"
        self.heldout_ids = ids
        self._state_budget = int(state_cache_mb * 2 ** 20)
        self._acts = self.rt.activation_device
        t0 = time.perf_counter()
        self._pruned = self._build_pruned(calib_ids, blocksize, percdamp)
        self.build_seconds = time.perf_counter() - t0
        self._is_dense = [True] * self.n
        self._snap = None
        self._inputs: BlockInputs = capture(self.rt, ids, batch_size)  # embeddings: shared by every coalition
        self._states: OrderedDict[tuple[int, int], list[torch.Tensor]] = OrderedDict()
        self._state_bytes = 0
        self.value_cache: dict[int, float] = {}
        self.blocks_run = 0     # block forwards spent (cost accounting: L per plain forward)
        self.forwards = 0       # coalition evaluations actually computed

    # ---- pruned state, one-shot per block on dense activations
    @torch.no_grad()
    def _build_pruned(self, calib_ids, blocksize, percdamp) -> list[dict[str, torch.Tensor]]:
        """Per block and linear: a boolean mask (True = pruned) for ``store='masks'``, else the
        pruned weight on CPU. The model is not modified."""
        s, out = self.target, [dict() for _ in range(self.n)]

        def keep(i, block, stats):
            for name, lin in self.layout.linears(i).items():
                W = lin.weight.detach()
                if self.base_metric in ("magnitude", "wanda"):
                    mask = magnitude_mask(W, s) if self.base_metric == "magnitude" else \
                        wanda_mask(W, stats["wanda"][name].norm, s)
                    out[i][name] = mask.to(self._acts) if self.store == "masks" else W.masked_fill(mask, 0).cpu()
                else:
                    out[i][name] = sparsegpt(W, stats["hessian"][name].H, s, None, blocksize,
                                             percdamp).to(W.dtype).cpu()

        if self.base_metric == "magnitude":
            for i in range(self.n):
                with self.rt.onload(i):
                    keep(i, self.layout.blocks[i], {})
        else:
            collect = ("wanda",) if self.base_metric == "wanda" else ("hessian",)
            sequential(self.rt, calib_ids, collect=collect, on_block=keep, modifies=False,
                       batch_size=self.batch_size, desc=f"SV-NUP pruned blocks [{self.base_metric}]",
                       progress=self.progress)
        return out

    # ---- weight swapping (block i must be onloaded)
    @torch.no_grad()
    def _apply_pruned(self, i: int) -> None:
        for name, lin in self.layout.linears(i).items():
            p = self._pruned[i][name]
            if p.dtype == torch.bool:
                lin.weight.masked_fill_(p.to(lin.weight.device), 0)
            else:
                lin.weight.copy_(p.to(lin.weight.device))

    @torch.no_grad()
    def _set_block(self, i: int, dense: bool) -> None:
        """Block i dense or pruned for the next run. Offloaded blocks are private copies while
        onloaded (a pruned state vanishes on release); resident ones go through the snapshot."""
        off = self.rt.offloader
        if off is not None and off.needs_moving:
            if not dense:
                self._apply_pruned(i)
            return
        if self._is_dense[i] == dense:
            return
        if dense:
            self._snap.restore([i], keep=True)
        else:
            if self._snap is None:
                self._snap = weight_snapshot(self.rt).__enter__()
            with self._snap.modify(i):
                self._apply_pruned(i)
        self._is_dense[i] = dense

    @torch.no_grad()
    def restore(self) -> None:
        """Put every block's dense weights back."""
        if self._snap is not None:
            self._snap.__exit__(None, None, None)
            self._snap = None
        self._is_dense = [True] * self.n

    def __enter__(self) -> "LayerGame":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    # ---- evaluation
    def dense_set(self, coalition: int) -> int:
        """Bitmask of blocks kept dense for a coalition of this game."""
        return coalition if self.game == "dense_coalition" else self.full & ~coalition

    def __call__(self, coalition) -> float:
        if isinstance(coalition, (set, frozenset, list, tuple)):
            coalition = sum(1 << int(i) for i in set(coalition))
        coalition = int(coalition)
        if not (0 <= coalition <= self.full):
            raise PrunekitError(f"coalition bitmask {coalition} is outside [0, 2^{self.n})")
        if coalition not in self.value_cache:
            nll = self.nll(self.dense_set(coalition))
            self.value_cache[coalition] = -nll if self.game == "dense_coalition" else nll
        return self.value_cache[coalition]

    def _cached_prefix(self, dense_mask: int) -> int:
        """Length k of the longest prefix (blocks < k) whose hidden states are cached; 0 if none."""
        return next((k for k in range(self.n - 1, 0, -1) if (k, dense_mask & ((1 << k) - 1)) in self._states), 0)

    def evaluation_costs(self, coalitions) -> list[int]:
        """Blocks each coalition will run if evaluated in this order: ``n`` minus the prefix it
        shares with the coalition before it (or with a cached prefix, for the first); 0 if its
        value is cached. Exact while the state cache holds one coalition's path (the progress bar's weights)."""
        costs, prev = [], None
        for c in coalitions:
            c = int(c)
            if c in self.value_cache:
                costs.append(0)
                continue
            d = self.dense_set(c)
            if prev is None:
                k = self._cached_prefix(d)
            else:
                x = d ^ prev  # blocks below the lowest differing bit share their hidden states
                k = (x & -x).bit_length() - 1 if x else self.n - 1
            costs.append(self.n - min(k, self.n - 1))
            prev = d
        return costs

    def _store(self, key, states) -> None:
        size = sum(h.numel() * h.element_size() for h in states)
        if size > self._state_budget:
            return
        while self._state_bytes + size > self._state_budget and self._states:
            _, old = self._states.popitem(last=False)
            self._state_bytes -= sum(h.numel() * h.element_size() for h in old)
        self._states[key] = states
        self._state_bytes += size

    @torch.no_grad()
    def nll(self, dense_mask: int) -> float:
        """Mean next-token NLL on the held-out set of the model whose blocks in ``dense_mask`` are
        dense and the others pruned. Starts from the longest cached prefix of hidden states."""
        start, states = self._cached_prefix(dense_mask), self._inputs.hidden
        if start:
            # Refresh the whole cached path, shallow to deep, not just the prefix read: a trie walk
            # returns to shallow branch points long after storing them, and a plain LRU would evict
            # exactly those first. Stale branches now age out instead (one path: n - 1 states).
            for k in range(1, start + 1):
                key = (k, dense_mask & ((1 << k) - 1))
                if key in self._states:
                    self._states.move_to_end(key)
            states = self._states[(start, dense_mask & ((1 << start) - 1))]
        for i in range(start, self.n):
            block = self.layout.blocks[i]
            with self.rt.onload(i):
                self._set_block(i, bool(dense_mask >> i & 1))
                states = [run_block(block, h, self._inputs.block_kwargs(i, j)).to(self._acts)
                          for j, h in enumerate(states)]
            self.blocks_run += 1
            if i + 1 < self.n:
                self._store((i + 1, dense_mask & ((1 << (i + 1)) - 1)), states)
        self.forwards += 1
        return self._head_nll(states)

    @torch.no_grad()
    def _head_nll(self, final: list[torch.Tensor]) -> float:
        """Final norm + LM head + CE on the final hidden states (``calibrate.head_logits``)."""
        nll = [head_nll(self.rt, h, x) for h, x in zip(final, self._batches())]
        return float(torch.cat(nll).mean())

    @torch.no_grad()
    def plain_forward_nll(self) -> float:
        """One ordinary full forward over the held-out set with the current weights (reference cost)."""
        return float(window_nll(self.rt, self.heldout_ids, self.batch_size).mean())

    def _batches(self) -> list[torch.Tensor]:
        return [self.heldout_ids[j:j + self.batch_size] for j in range(0, self.heldout_ids.shape[0], self.batch_size)]

    def clear_cache(self) -> None:
        """Forget coalition values and cached hidden states (for honest timing of a new estimator)."""
        self.value_cache.clear()
        self._states.clear()
        self._state_bytes = 0


def _tokenizer(stats):
    tok = getattr(stats, "tokenizer", None)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer
    tok = stats.rt.tokenizer
    if tok is not None:
        return tok
    path = getattr(stats.model, "name_or_path", None) or getattr(stats.model.config, "_name_or_path", None)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise PrunekitError(f"SV-NUP needs a tokenizer for its held-out set and none was found at '{path}'; "
                            "pass heldout=<Calibration or token tensor>") from e


# The default held-out window: many short documents, not few long ones. Two disjoint draws of the same
# 4096 tokens rank SmolLM2's blocks at Spearman 0.594 as 2 × 2048 and 0.935 as 8 × 512 (w=3); with the
# default estimator 8 × 512 gives 0.939 (SmolLM2) and 0.924 (Gemma-3) (docs/results.md, SV-NUP's
# held-out set): the game's noise follows the number of documents.
HELDOUT_SEQLEN = 512


def heldout_data(stats, nsamples: int = 8, seqlen: int | None = None, dataset: str | None = None) -> Calibration:
    """Held-out value set: ``nsamples`` windows of the calibration dataset drawn with seed
    calib.seed + 1, excluding the pruning samples (disjoint by construction). ``seqlen=None``:
    ``HELDOUT_SEQLEN`` tokens, or the calibration length if that is shorter (a model calibrated on
    short windows is not asked for longer ones)."""
    from prunekit.core.data import heldout_set
    if stats.calib is None:
        raise PrunekitError("SV-NUP needs calibration data to draw a disjoint held-out set; pass calib= to Statistics")
    seqlen = seqlen or min(HELDOUT_SEQLEN, stats.calib.seqlen)
    return heldout_set(stats.calib, _tokenizer(stats), nsamples, seqlen, dataset)


def _resolve_heldout(stats, heldout, nsamples, seqlen) -> tuple[torch.Tensor, str]:
    if isinstance(heldout, Calibration):
        return heldout.input_ids, heldout.key()
    if isinstance(heldout, torch.Tensor):
        import hashlib
        return heldout, "tensor-" + hashlib.sha256(heldout.cpu().numpy().tobytes()).hexdigest()[:16]
    if heldout is None or isinstance(heldout, str):
        cal = heldout_data(stats, nsamples, seqlen, heldout)
        return cal.input_ids, cal.key()
    raise PrunekitError("heldout must be a dataset name, a Calibration or a (samples, seqlen) token tensor")


def layer_game(stats, target: float, base_metric: str = "wanda", game: str = "dense_coalition",
               heldout=None, heldout_samples: int = 8, heldout_seqlen: int | None = None,
               progress: bool = True, **kw) -> LayerGame:
    """The SV-NUP layer game for ``stats.model`` pruned at ``target`` (see ``LayerGame``)."""
    ids, _ = _resolve_heldout(stats, heldout, heldout_samples, heldout_seqlen)
    calib_ids = stats.calib.input_ids if stats.calib is not None else None
    stats.dense_passes += base_metric != "magnitude"
    return LayerGame(stats.rt, calib_ids, ids, target, base_metric, game,
                     batch_size=getattr(stats, "batch_size", 8), progress=progress, **kw)
