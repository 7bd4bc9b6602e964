"""Calibrate: the one sequential block-by-block engine every metric and analysis reuses.

1. ``capture``: run the embeddings once per batch with every decoder block swapped for a recorder,
   keeping the hidden states entering block 0 and the kwargs each block receives (rotary
   ``position_embeddings``, masks, positions: Gemma3 gives sliding/full blocks different ones).
2. ``sequential``: for block i, forward hooks on its linears accumulate statistics from the *dense*
   block ("sequential across blocks, parallel within a block", docs/methods.md §0.2); a callback may
   prune it; the (pruned) block is re-run and its outputs overwrite its inputs in place, so memory
   holds one block boundary of activations.
3. ``Replay``: the clean block boundaries of a token set, kept every k blocks and recomputed in
   between; the one replay path of the analyses (absorption probe, MRP findings, SV-NUP game).

Every function takes the ``Runtime`` it works on (``core.runtime``; a plain in-memory model is
wrapped). Memory (``core.offload``): each block is onloaded to its execution device while it is
worked on (``offload`` none/cpu/disk); boundary activations live on the device or on CPU by the
runtime's ``MemoryPolicy`` and move to the block's device one batch at a time, so a model spread over
several devices runs each block where it lives with its inputs following it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from prunekit.core.offload import block_device
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.utils import bars_disabled, tqdm

_DROP = ("cache", "past_key_values", "past_key_value", "layer_past")


class _StopForward(Exception):
    pass


class _Recorder(nn.Module):
    def __init__(self, idx: int, last: int, sink: dict):
        super().__init__()
        self.idx, self.last, self.sink = idx, last, sink

    def forward(self, hidden, *args, **kwargs):
        if self.idx == 0:
            self.sink["hidden"] = hidden
        if args:
            raise RuntimeError("decoder block received positional extras; cannot replay generically")
        kw = {k: v for k, v in kwargs.items() if k not in _DROP}
        if "use_cache" in kw:
            kw["use_cache"] = False
        self.sink["kwargs"].append(kw)
        if self.idx == self.last:
            raise _StopForward
        return hidden  # transformers>=5 blocks return a tensor; only kwargs matter downstream


@dataclass
class BlockInputs:
    """Activations at one block boundary: ``hidden[j]`` is batch j; ``kwargs[b][i]`` are the
    keyword arguments block i receives for a batch of size b (they do not depend on content)."""
    hidden: list[torch.Tensor]
    kwargs: dict[int, list[dict]] = field(default_factory=dict)

    def block_kwargs(self, i: int, j: int) -> dict:
        return self.kwargs[self.hidden[j].shape[0]][i]


@torch.no_grad()
def capture(rt, input_ids: torch.Tensor, batch_size: int = 8) -> BlockInputs:
    """Hidden states entering block 0 and every block's kwargs, for ``input_ids`` (n, seqlen)."""
    if int(batch_size) < 1 or input_ids.shape[0] < 1:  # range(0, n, -2) is empty: no data, all-zero Hessians
        raise PrunekitError(f"calibration needs batch_size >= 1 and at least one window, got "
                            f"batch_size={batch_size}, {input_ids.shape[0]} windows")
    rt = Runtime.of(rt)
    lay, model = rt.layout, rt.model
    dev, store = rt.device, rt.activation_device
    originals = list(lay.blocks)
    out = BlockInputs([])
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            x = input_ids[start:start + batch_size].to(dev)
            sink = {"kwargs": []}
            for i in range(lay.num_blocks):
                lay.blocks[i] = _Recorder(i, lay.num_blocks - 1, sink)
            try:
                model(input_ids=x, use_cache=False)
            except _StopForward:
                pass
            out.hidden.append(sink["hidden"].to(store))
            out.kwargs.setdefault(x.shape[0], sink["kwargs"])
    finally:
        for i, b in enumerate(originals):
            lay.blocks[i] = b
    return out


class _Replay(nn.Module):
    """Stands in for a decoder block: the first returns the given hidden states, the rest pass
    them through, so the model's own final norm, head and logit soft-capping apply."""
    def __init__(self, out=None):
        super().__init__()
        self.out = out

    def forward(self, hidden, *args, **kwargs):
        return self.out if self.out is not None else hidden


@torch.no_grad()
def head_logits(rt, final_hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits from hidden states after the last block (any architecture: the blocks are swapped
    for a replay and the model runs its own head; embeddings are recomputed, which is cheap)."""
    rt = Runtime.of(rt)
    lay, model, dev = rt.layout, rt.model, rt.device
    originals = list(lay.blocks)
    try:
        for i in range(lay.num_blocks):
            lay.blocks[i] = _Replay(final_hidden.to(dev) if i == 0 else None)
        return model(input_ids=input_ids.to(dev), use_cache=False).logits
    finally:
        for i, b in enumerate(originals):
            lay.blocks[i] = b


def _to(obj, dev: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, dev) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, dev) for k, v in obj.items()}
    return obj


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """One decoder block on one batch, where the block lives (its inputs follow it)."""
    dev = block_device(block)
    if hidden.device != dev:
        hidden, kwargs = hidden.to(dev), _to(kwargs, dev)
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


# ----------------------------------------------------------------------------- statistics

class Stat:
    """Accumulates a per-linear statistic from that linear's inputs (any leading dims). ``add`` is
    told how many sequences ``x`` holds: OPT feeds fc1/fc2 a flattened (tokens, d) tensor, so the
    count cannot come from x's shape without making the statistic depend on the batch size."""
    def __init__(self, linear: nn.Linear):
        self.nseq = 0
        self.d_in = linear.in_features

    def add(self, x: torch.Tensor, nseq: int) -> None:
        raise NotImplementedError


class WandaNorm(Stat):
    """scaler_row_j = (1/N_seq) Σ_seq Σ_t x_{t,j}^2 (Wanda layerwrapper; N counts sequences)."""
    def __init__(self, linear):
        super().__init__(linear)
        self.sum = torch.zeros(self.d_in, dtype=torch.float32, device=linear.weight.device)

    def add(self, x, nseq):
        self.nseq += nseq
        self.sum += x.reshape(-1, self.d_in).float().pow(2).sum(0)

    @property
    def scaler_row(self) -> torch.Tensor:
        return self.sum / max(self.nseq, 1)

    @property
    def norm(self) -> torch.Tensor:  # ||X_j||_2 up to the constant 1/sqrt(N_seq)
        return self.scaler_row.sqrt()


class Hessian(Stat):
    """H = (2/N_seq) Σ X^T X over all calibration tokens (SparseGPT add_batch), fp32.

    Linears fed the very same tensor (q/k/v; gate/up) share one accumulator: the Hessians of a
    block are ``link``-ed, and the first linear to see an input tensor owns its sum; any other
    linear that is then handed that same tensor object becomes an alias of the owner (one d×d
    matrix and one XᵀX per input instead of one per linear). ``root`` is the owner."""
    def __init__(self, linear):
        super().__init__(linear)
        self._sum: torch.Tensor | None = None  # allocated on the first input it owns
        self._device = linear.weight.device
        self._owner: Hessian | None = None
        self._seen: list | None = None        # per block: [(weakref to an input, its Hessian)]
        self._mirrored = True                 # False while only the block-upper part is summed

    @staticmethod
    def link(hessians) -> None:
        """Let these Hessians (one block's) detect a shared input by tensor identity."""
        seen: list = []
        for h in hessians:
            h._seen = seen

    @property
    def root(self) -> "Hessian":
        return self if self._owner is None else self._owner.root

    def add(self, x, nseq):
        if self._seen is not None:
            self._seen[:] = [(r, hr) for r, hr in self._seen if r() is not None and hr() is not None]
            for r, hr in self._seen:
                h = hr()
                if r() is x:                  # this tensor was already accumulated by h
                    if h.root is not self.root:
                        self._owner = h.root  # fed the same input: share h's Hessian
                    return
            # weak to the Hessian too: a strong one is a cycle (h → list → h) that only a full GC
            # frees, and on a 7B shape every block's 0.7 GB of Hessians piled up until an OOM kill
            self._seen.append((weakref.ref(x), weakref.ref(self)))
        root = self.root
        root.nseq += nseq
        x = x.reshape(-1, root.d_in).float()
        S = root._acc()
        # XᵀX is symmetric: accumulate only the block-upper part (row band b, columns from b on)
        # and mirror it on read: (k+1)/2k of the flops (docs/benchmarks.md has the measured gain).
        for r0, r1 in _bands(root.d_in):
            S[r0:r1, r0:].addmm_(x[:, r0:r1].t(), x[:, r0:])
        root._mirrored = False

    def _acc(self) -> torch.Tensor:
        """The root's accumulator as it is (allocated on first use)."""
        r = self.root
        if r._sum is None:
            r._sum = torch.zeros(r.d_in, r.d_in, dtype=torch.float32, device=r._device)
        return r._sum

    @property
    def sum(self) -> torch.Tensor:
        """Σ XᵀX, the full symmetric matrix (the lower blocks are mirrored in on first read)."""
        return self._full()

    def _full(self) -> torch.Tensor:
        r = self.root
        S = r._acc()
        if not r._mirrored:
            for r0, r1 in _bands(r.d_in):
                S[r1:, r0:r1] = S[r0:r1, r1:].t()
            r._mirrored = True
        return S

    @property
    def H(self) -> torch.Tensor:
        """A new tensor (2/N) Σ XᵀX."""
        return self._full() * (2.0 / max(self.root.nseq, 1))

    def take(self) -> torch.Tensor:
        """(2/N) Σ XᵀX scaled in place, without a copy: the accumulator is consumed (its owner
        may overwrite it, as SparseGPT does)."""
        r = self.root
        return self._full().mul_(2.0 / max(r.nseq, 1))


def _bands(d: int, k: int = 4) -> list[tuple[int, int]]:
    """Row bands of the block-upper XᵀX accumulation (one band below 256 inputs)."""
    k = max(1, min(k, d // 128))
    cuts = [d * i // k for i in range(k + 1)]
    return list(zip(cuts, cuts[1:]))


STATS: dict[str, type[Stat]] = {"wanda": WandaNorm, "hessian": Hessian}

# on_block(i, block, stats): sees block i and its statistics; may prune the block in place
BlockCallback = Callable[[int, nn.Module, dict[str, dict[str, Stat]]], None]


@torch.no_grad()
def sequential(rt, input_ids: torch.Tensor | None = None, *, inputs: BlockInputs | None = None,
               collect: tuple[str, ...] = ("wanda",), on_block: BlockCallback | None = None,
               modifies: bool = True, batch_size: int = 8, desc: str = "calibrate",
               progress: bool = True) -> BlockInputs:
    """Walk the decoder blocks in order; return the activations after the last block.

    ``collect`` names the statistics accumulated per linear (keys of ``STATS``); they reach
    ``on_block`` as ``stats[kind][linear_name]``. ``modifies=False`` declares a read-only
    callback (a dense statistics pass): each block then runs once instead of twice. Block i is
    onloaded for the whole step (written back to its home when ``modifies``); activations stay
    where the model's memory policy puts them and move to the block one batch at a time."""
    rt = Runtime.of(rt)
    lay = rt.layout
    acts = inputs if inputs is not None else capture(rt, input_ids, batch_size)
    store = rt.activation_device
    for i in tqdm(range(lay.num_blocks), desc=desc, disable=bars_disabled(progress), leave=False):
        block = lay.blocks[i]
        with rt.onload(i, write=modifies and on_block is not None):
            linears = lay.linears(i)
            stats = {k: {n: STATS[k](m) for n, m in linears.items()} for k in collect}
            if "hessian" in stats:  # linears reading the same input share one X^T X (q/k/v, gate/up)
                Hessian.link(stats["hessian"].values())
            handles = collect_hooks(block, linears, stats)
            dense_run_is_final = not modifies or on_block is None
            try:
                if collect or dense_run_is_final:
                    for j, h in enumerate(acts.hidden):
                        out = run_block(block, h, acts.block_kwargs(i, j))
                        if dense_run_is_final:
                            acts.hidden[j] = out.to(store)
            finally:
                for hd in handles:
                    hd.remove()
            if on_block is not None:
                on_block(i, block, stats)
            if not dense_run_is_final:  # re-run the pruned block: later blocks see the pruned model
                for j, h in enumerate(acts.hidden):
                    acts.hidden[j] = run_block(block, h, acts.block_kwargs(i, j)).to(store)
            del stats
    return acts


def collect_hooks(block: nn.Module, linears: dict[str, nn.Linear], stats: dict) -> list:
    """Forward hooks feeding each linear's inputs to its ``stats[kind][name]`` accumulators; a
    pre-hook on ``block`` reads the batch's sequence count from its (batch, tokens, d) input."""
    if not stats:
        return []
    rows = [0]

    def count(mod, args, kwargs):
        h = args[0] if args else next(iter(kwargs.values()))
        rows[0] = h.shape[0]

    def hook_for(name):
        def hook(mod, inp, out):
            for per_kind in stats.values():
                per_kind[name].add(inp[0], rows[0])
        return hook
    return [block.register_forward_pre_hook(count, with_kwargs=True)] + [
        m.register_forward_hook(hook_for(n)) for n, m in linears.items()]


class Replay:
    """Clean block boundaries of ``ids`` under the current weights, for analyses that re-run the
    tail of the model many times (absorption probe, MRP's LPS, SV-NUP's game).

    Boundary b is the input of block b (b = L: after the last block). Boundaries 0, k, 2k, …, L
    are kept (``checkpoint_every`` k from the memory policy unless given) where the policy puts
    activations; the others are recomputed from the nearest kept one. ``block_runs`` counts every
    decoder-block call made through this object."""

    @torch.no_grad()
    def __init__(self, rt, ids: torch.Tensor, batch_size: int = 8, *, checkpoint_every: int | None = None,
                 store: str | None = None, progress: bool = False, desc: str = "clean run"):
        self.rt = rt = Runtime.of(rt)
        self.lay = rt.layout
        self.L = self.lay.num_blocks
        pol = rt.memory_policy
        k = int(checkpoint_every or pol.checkpoint_every)
        where = store or pol.activations
        self.store = torch.device("cpu") if where == "cpu" else rt.device
        self.device = rt.device
        self.block_runs = 0
        self.acts = capture(rt, ids, batch_size)
        self.ids = [ids[s:s + batch_size] for s in range(0, ids.shape[0], batch_size)]
        self.nbatches = len(self.acts.hidden)
        keep = set(range(0, self.L + 1, k)) | {self.L}
        self.ckpt: dict[int, list[torch.Tensor]] = {0: [h.to(self.store) for h in self.acts.hidden]}
        h = list(self.ckpt[0])
        for i in tqdm(range(self.L), desc=desc, disable=not progress, leave=False):
            with rt.onload(i):
                h = [self.run(i, x, j).to(self.store) for j, x in enumerate(h)]
            if i + 1 in keep:
                self.ckpt[i + 1] = h
        self.acts.hidden = self.ckpt[0]  # only kwargs are used from here on

    def block_kwargs(self, i: int, j: int) -> dict:
        return self.acts.block_kwargs(i, j)

    def run(self, i: int, h: torch.Tensor, j: int) -> torch.Tensor:
        """Block i (current weights) on batch j's hidden states ``h``."""
        self.block_runs += 1
        return run_block(self.lay.blocks[i], h, self.acts.block_kwargs(i, j))

    @torch.no_grad()
    def boundaries(self, start: int, j: int):
        """Yield (b, clean boundary b of batch j on the execution device) for b = start … L."""
        c = max(b for b in self.ckpt if b <= start)
        h = self.ckpt[c][j].to(self.device)
        for b in range(c, self.L + 1):
            if b > c:
                h = self.ckpt[b][j].to(self.device) if b in self.ckpt else self.run(b - 1, h, j)
            if b >= start:
                yield b, h

    def boundary(self, b: int, j: int) -> torch.Tensor:
        return next(self.boundaries(b, j))[1]

    @torch.no_grad()
    def tail(self, start: int, h: torch.Tensor, j: int) -> torch.Tensor:
        """Blocks start … L-1 (current weights) on ``h``, batch j."""
        for i in range(start, self.L):
            h = self.run(i, h, j)
        return h

    @torch.no_grad()
    def tail_nll(self, start: int) -> float:
        """Mean per-window next-token NLL when blocks start … L-1 are re-run from clean boundary
        ``start`` with the current weights (one block onloaded at a time, all batches through it)."""
        hs = [self.boundary(start, j) for j in range(self.nbatches)]
        for i in range(start, self.L):
            with self.rt.onload(i):
                hs = [self.run(i, h, j) for j, h in enumerate(hs)]
        return float(torch.cat([self.head_nll(h, j) for j, h in enumerate(hs)]).mean())

    def head_nll(self, final: torch.Tensor, j: int) -> torch.Tensor:
        return head_nll(self.rt, final, self.ids[j])


@torch.no_grad()
def head_nll(rt, final_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-window mean next-token NLL from the hidden states after the last block (the model's own
    final norm and head, ``head_logits``): the loss of every replayed analysis."""
    return next_token_ce(head_logits(rt, final_hidden, ids), ids).cpu()


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor, chunk_bytes: int = 1 << 22) -> torch.Tensor:
    """Per-sequence mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1] (fp32).

    On CPU the fp32 upcast and log-softmax run over chunks of tokens of about ``chunk_bytes``
    (4 MiB: ~21 tokens of a 49k vocabulary) so they stay in cache: upcasting a whole bf16 window
    at once writes ~200 MB per 1024 tokens and cost 7x more (a fifth of a bf16 forward). The
    arithmetic per token is the same fp32 cross-entropy."""
    ids = ids.to(logits.device)
    x, y = logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
    rows = x.shape[0] if logits.device.type != "cpu" else max(1, chunk_bytes // (4 * x.shape[-1]))
    if rows >= x.shape[0]:
        ce = F.cross_entropy(x.float(), y, reduction="none")
    else:
        ce = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        for s in range(0, x.shape[0], rows):
            ce[s:s + rows] = F.cross_entropy(x[s:s + rows].float(), y[s:s + rows], reduction="none")
    return ce.view(ids.shape[0], -1).mean(1)


@torch.no_grad()
def window_nll(rt, ids: torch.Tensor, batch_size: int = 4, on_batch=None) -> torch.Tensor:
    """Per-window mean next-token NLL of ``ids`` (n, seqlen) under the current weights: one plain
    forward per batch (offloaded blocks are onloaded by their hooks). The one full-model NLL loop:
    perplexity windows, absorption's γ, SV-NUP's reference forward. ``on_batch(tokens)`` after each."""
    rt = Runtime.of(rt)
    dev, out = rt.device, []
    for x in ids.split(batch_size):
        x = x.to(dev)
        out.append(next_token_ce(rt.model(input_ids=x, use_cache=False).logits, x).cpu())
        if on_batch is not None:
            on_batch(x.numel())
    return torch.cat(out)
