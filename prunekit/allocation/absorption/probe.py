"""Absorption probe: perturb one block's output and follow the drift through the later blocks (docs/methods.md §3)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import numpy as np
import torch
from prunekit.utils import tqdm

from prunekit.core.engine import STATS, Replay, collect_hooks
from prunekit.core.snapshot import weight_snapshot
from prunekit.utils import bars_disabled
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.solvers.masks import parse_nm
from prunekit.solvers.prune import COLLECT, METRICS, prune_block

REDUCTIONS = ("mean_of_ratios", "ratio_of_means")
DEPTHS = ("final", "mean")
_ARRAYS = ("drift", "ratio", "cos_state", "cos_drift")


# ============================================================================ trajectory

@dataclass
class Trajectory:
    """Token-averaged response to one perturbation injected at the output of block ``layer``.

    Arrays have one entry per depth k = layer … L−1 (entry 0 = right after the injection);
    ``*_norm`` are the same quantities after the final norm. ``ratio`` = E[R_k/R_layer] over the
    ``nvalid`` tokens with R_layer > 0; the other means run over all ``ntokens`` (tokens × draws)."""
    layer: int
    label: str
    ntokens: int
    nvalid: int
    drift: np.ndarray
    ratio: np.ndarray
    cos_state: np.ndarray
    cos_drift: np.ndarray
    drift_norm: float
    ratio_norm: float
    cos_state_norm: float
    cos_drift_norm: float

    @property
    def depths(self) -> np.ndarray:
        return np.arange(self.layer, self.layer + len(self.drift))

    def coefficient(self, reduction: str = "mean_of_ratios", depth: str = "final",
                    final_norm: bool = False) -> float:
        """Absorption coefficient r_l (see module docstring); NaN when no token was perturbed."""
        _check_choice("reduction", reduction, REDUCTIONS)
        _check_choice("depth", depth, DEPTHS)
        if reduction == "mean_of_ratios":
            seq = self.ratio.copy()
            last = self.ratio_norm
        else:
            base = self.drift[0]
            if not base > 0:
                return float("nan")
            seq = self.drift / base
            last = self.drift_norm / base
        if final_norm:
            if not np.isfinite(last) and self.nvalid:
                raise PrunekitError("final_norm=True needs the model's final norm, which was not found")
            seq = np.append(seq[:-1], last) if len(seq) > 1 else np.array([seq[0], last])
        if depth == "final":
            return float(seq[-1])
        return float(seq[1:].mean()) if len(seq) > 1 else float(seq[0])

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.{f.name}": torch.as_tensor(np.asarray(getattr(self, f.name), dtype=np.float64))
               for f in fields(self) if f.name != "label"}
        return out

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor], prefix: str, label: str) -> "Trajectory":
        kw = {}
        for f in fields(cls):
            if f.name == "label":
                continue
            v = flat[f"{prefix}.{f.name}"].double().numpy()
            if f.name in _ARRAYS:
                kw[f.name] = v.reshape(-1)
            elif f.name in ("layer", "ntokens", "nvalid"):
                kw[f.name] = int(v)
            else:
                kw[f.name] = float(v)
        return cls(label=label, **kw)


class _Acc:
    """Running float64 sums of the per-token quantities at each depth (+1 slot after the norm)."""

    def __init__(self, ndepth: int):
        self.n = ndepth
        self.s = {k: np.zeros(ndepth + 1) for k in _ARRAYS}
        self.ntokens = 0
        self.nvalid = 0
        self._r0: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    def begin(self, mask: torch.Tensor) -> None:
        self._mask = mask
        self.ntokens += int(mask.sum())

    def add(self, slot: int, hp: torch.Tensor, hc: torch.Tensor) -> None:
        hp, hc = hp.float(), hc.float()
        d = hp - hc
        nd, nc, npv = d.norm(dim=-1), hc.norm(dim=-1), hp.norm(dim=-1)
        tiny = torch.finfo(torch.float32).tiny
        R = nd / nc.clamp_min(tiny)
        cs = (hp * hc).sum(-1) / (npv * nc).clamp_min(tiny)
        cd = (d * hc).sum(-1) / (nd * nc).clamp_min(tiny)
        m = self._mask
        if slot == 0:
            self._r0 = R
            self._valid = m & (R > 0)
            self.nvalid += int(self._valid.sum())
        v = self._valid
        ratio = R[v] / self._r0[v]
        self.s["drift"][slot] += float(R[m].double().sum())
        self.s["ratio"][slot] += float(ratio.double().sum())
        self.s["cos_state"][slot] += float(cs[m].double().sum())
        self.s["cos_drift"][slot] += float(cd[m].double().sum())

    def result(self, layer: int, label: str) -> Trajectory:
        def mean(key, count):
            return self.s[key] / count if count else np.full(self.n + 1, np.nan)
        a = {k: mean(k, self.nvalid if k == "ratio" else self.ntokens) for k in _ARRAYS}
        return Trajectory(layer, label, self.ntokens, self.nvalid,
                          *(a[k][:-1] for k in _ARRAYS), *(float(a[k][-1]) for k in _ARRAYS))


def _check_choice(name, value, choices):
    if value not in choices:
        raise PrunekitError(f"unknown {name} '{value}'; choose from {', '.join(choices)}")


def _final_norm(model, blocks) -> torch.nn.Module | None:
    """The norm applied after the last block: a sibling of the block list (norm / final_layer_norm)."""
    for _, mod in model.named_modules():
        if any(child is blocks for child in mod.children()):
            for attr in ("norm", "final_layer_norm", "ln_f", "final_norm"):
                if isinstance(getattr(mod, attr, None), torch.nn.Module):
                    return getattr(mod, attr)
            return None
    return None


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


# ============================================================================ probe

class Probe:
    """The clean run on ``input_ids`` (computed once) plus perturbation experiments on top of it.

    ``store``: where the clean boundaries live ("cpu" saves accelerator memory, "device" saves
    transfers); ``checkpoint_every``: keep every c-th boundary (1 = all; see module docstring).
    ``block_runs`` counts every decoder-block call made (clean + perturbed) for cost accounting."""

    @torch.no_grad()
    def __init__(self, model, input_ids: torch.Tensor, *, batch_size: int = 8, checkpoint_every: int | None = None,
                 store: str | None = None, skip_first: bool = True, progress: bool = True):
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise PrunekitError("absorption needs calibration input_ids of shape (n, seqlen>=2)")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise PrunekitError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if store is not None:
            _check_choice("store", store, ("cpu", "device"))
        self.rt = rt = Runtime.of(model)
        self.model = rt.model
        self.lay = rt.layout
        self.L = self.lay.num_blocks
        self.skip_first, self.progress = skip_first, progress
        self.norm = _final_norm(rt.model, self.lay.blocks)
        # the one replay engine: clean boundaries kept every k blocks (memory policy defaults)
        self.replay = Replay(rt, input_ids, batch_size, checkpoint_every=checkpoint_every, store=store,
                             progress=progress, desc="absorption: clean run")
        self.device = self.replay.device
        self.acts, self.ckpt, self.nbatches = self.replay.acts, self.replay.ckpt, self.replay.nbatches

    @property
    def block_runs(self) -> int:
        return self.replay.block_runs

    # ---- primitives
    def _run(self, i: int, h: torch.Tensor, j: int) -> torch.Tensor:
        return self.replay.run(i, h, j)

    def _clean(self, start: int, j: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Clean boundary b (b = 0: input of block 0; b = k+1: output of block k) for
        b = start … L, batch j, recomputed from the nearest checkpoint when not stored."""
        return self.replay.boundaries(start, j)

    def _mask(self, h: torch.Tensor) -> torch.Tensor:
        m = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if self.skip_first:
            m[:, 0] = False
        return m

    @torch.no_grad()
    def _follow(self, layer: int, perturb: Callable, label: str, acc: _Acc | None = None,
                draws: int = 1) -> Trajectory:
        """Inject ``perturb(j, draw, h_in, h_out) -> h'_out`` at block ``layer``'s output, follow it."""
        if not (0 <= layer < self.L):
            raise PrunekitError(f"injection block {layer} is outside [0, {self.L - 1}]")
        acc = acc or _Acc(self.L - layer)
        for d in range(draws):
            for j in range(self.nbatches):
                it = self._clean(layer, j)
                _, h_in = next(it)
                _, hc = next(it)
                hp = perturb(j, d, h_in, hc)
                acc.begin(self._mask(hc))
                acc.add(0, hp, hc)
                for b, hc in it:
                    hp = self._run(b - 1, hp, j)
                    acc.add(b - 1 - layer, hp, hc)
                if self.norm is not None:
                    acc.add(acc.n, self.norm(hp), self.norm(hc))
                else:
                    for k in _ARRAYS:
                        acc.s[k][acc.n] = np.nan
        return acc.result(layer, label)

    # ---- perturbations
    def noise(self, layer: int, eta: float = 1e-2, draws: int = 1, seed: int = 0,
              relative_to: str = "state") -> Trajectory:
        """Gaussian noise with ``‖δ_t‖ = η·‖h_{l,t}‖`` per token (direction uniform on the sphere),
        ``draws`` independent draws, reproducible from ``seed`` (independent of device/batch size
        only through the per-(seed, layer, draw) generator; batches are drawn in order)."""
        if not (eta >= 0 and math.isfinite(eta)):
            raise PrunekitError(f"eta must be a finite number >= 0, got {eta}")
        if draws < 1:
            raise PrunekitError(f"draws must be >= 1, got {draws}")
        _check_choice("relative_to", relative_to, ("state", "update"))
        # drawn on the execution device from a seeded device generator (no host round trip)
        gens = [torch.Generator(device=self.device).manual_seed(_seed(seed, layer, d)) for d in range(draws)]

        def perturb(j, d, h_in, h_out):
            z = torch.randn(h_out.shape, generator=gens[d], dtype=torch.float32, device=self.device).to(h_out.device)
            ref = h_out.float() if relative_to == "state" else (h_out.float() - h_in.float())
            scale = eta * ref.norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            return (h_out.float() + scale * z).to(h_out.dtype)

        return self._follow(layer, perturb, f"noise(eta={eta:g})", draws=draws)

    @torch.no_grad()
    def pruned(self, layer: int, sparsity: float = 0.5, metric: str = "wanda", nm=None,
               blocksize: int = 128, percdamp: float = 0.01) -> Trajectory:
        """The real pruning perturbation: block ``layer`` alone pruned at ``sparsity`` (float or one
        value per linear) with ``metric``; masks from the dense inputs of that block (its clean
        input boundary), weights restored afterwards."""
        if metric not in METRICS:
            raise PrunekitError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
        if not (0 <= layer < self.L):
            raise PrunekitError(f"injection block {layer} is outside [0, {self.L - 1}]")
        nm = parse_nm(nm)
        block = self.lay.blocks[layer]
        names = list(self.lay.linear_names)
        row = np.broadcast_to(np.asarray(sparsity, dtype=float), (len(names),))
        if (row < 0).any() or (row >= 1).any():
            raise PrunekitError(f"sparsity {sparsity} is outside [0, 1)")
        values = np.zeros((self.L, len(names)))
        values[layer] = row
        with weight_snapshot(self.rt) as snap, snap.modify(layer):  # dense again on exit
            linears = self.lay.linears(layer)
            stats = {k: {n: STATS[k](m) for n, m in linears.items()} for k in COLLECT[metric]}
            hooks = collect_hooks(block, linears, stats)
            # the dense output of block `layer` is a clean boundary that recomputation would take
            # from the pruned block: keep it for this experiment (one boundary)
            extra = layer + 1 not in self.ckpt
            try:  # dense statistics of block `layer` from its clean inputs (one extra block run)
                outs = [self._run(layer, next(self._clean(layer, j))[1], j).to(self.replay.store)
                        for j in range(self.nbatches if (stats or extra) else 0)]
            finally:
                for hk in hooks:
                    hk.remove()
            if extra:
                self.ckpt[layer + 1] = outs
            try:
                prune_block(layer, block, stats, values, metric, nm, names, blocksize, percdamp)

                def perturb(j, d, h_in, h_out):  # pruned block on its clean input; later blocks dense
                    return self._run(layer, h_in, j)

                return self._follow(layer, perturb, f"prune({metric}, s={float(np.mean(row)):g})")
            finally:
                if extra:
                    del self.ckpt[layer + 1]

    # ---- scans
    def scan(self, kind: str = "noise", layers=None, desc: str | None = None, **kw) -> list[Trajectory]:
        """One trajectory per injection block (``kind`` 'noise' → ``noise(**kw)``, 'prune' →
        ``pruned(**kw)``)."""
        _check_choice("kind", kind, ("noise", "prune"))
        fn = self.noise if kind == "noise" else self.pruned
        layers = range(self.L) if layers is None else list(layers)
        return [fn(l, **kw) for l in tqdm(layers, desc=desc or f"absorption: {kind}",
                                          disable=bars_disabled(self.progress), leave=False)]

    def coefficients(self, eta: float = 1e-2, draws: int = 1, seed: int = 0, relative_to: str = "state",
                     reduction: str = "mean_of_ratios", depth: str = "final", final_norm: bool = False,
                     layers=None) -> np.ndarray:
        trajs = self.scan("noise", layers, eta=eta, draws=draws, seed=seed, relative_to=relative_to)
        return coefficients(trajs, reduction, depth, final_norm)


def probe_from_stats(stats, skip_first: bool = True, probe_samples: int = 0, probe_seqlen: int = 0) -> Probe:
    """A ``Probe`` on ``stats.model`` and the first ``probe_samples`` windows / ``probe_seqlen``
    tokens of ``stats.calib`` (0 = all; a cheaper subset is an [I] cost option)."""
    if stats.calib is None:
        raise PrunekitError("absorption needs calibration data; pass calib= to Statistics")
    ids = stats.calib.input_ids
    if probe_samples < 0 or probe_seqlen < 0:
        raise PrunekitError("probe_samples / probe_seqlen must be >= 0 (0 = the whole calibration set)")
    ids = ids[: probe_samples or None, : probe_seqlen or None]
    return Probe(stats.rt, ids, batch_size=getattr(stats, "batch_size", 8), skip_first=skip_first,
                 progress=getattr(stats, "progress", True))


def trajectories_from_stats(stats, eta: float = 1e-2, draws: int = 1, seed: int = 0, relative_to: str = "state",
                            skip_first: bool = True, probe_samples: int = 0, probe_seqlen: int = 0,
                            _probe: dict | None = None) -> list[Trajectory]:
    """Noise trajectories of every block of ``stats.model`` (must be dense), cached with
    ``stats.cached`` keyed by the measurement options. ``_probe``: a dict sharing one lazily built
    ``Probe`` (one clean run) between several calls (η sweeps)."""
    box = _probe if _probe is not None else {}

    def compute():
        if "probe" not in box:
            box["probe"] = probe_from_stats(stats, skip_first, probe_samples, probe_seqlen)
        flat = {}
        for t in box["probe"].scan("noise", eta=eta, draws=draws, seed=seed, relative_to=relative_to,
                                   desc=f"absorption: eta={eta:g}"):
            flat.update(t.to_tensors(str(t.layer)))
        return flat

    flat = stats.cached("absorption_trajectories", compute, eta=float(eta), draws=int(draws), seed=int(seed),
                        relative_to=relative_to, skip_first=bool(skip_first),
                        probe_samples=int(probe_samples), probe_seqlen=int(probe_seqlen))
    return [Trajectory.from_tensors(flat, str(l), f"noise(eta={eta:g})") for l in range(stats.num_blocks)]


def prune_trajectories_from_stats(stats, sparsity: float, metric: str = "wanda", skip_first: bool = True,
                                  probe_samples: int = 0, probe_seqlen: int = 0,
                                  _probe: dict | None = None) -> list[Trajectory]:
    """Pruning-perturbation trajectories (every block pruned alone at ``sparsity`` with ``metric``),
    cached like ``trajectories_from_stats``."""
    box = _probe if _probe is not None else {}

    def compute():
        if "probe" not in box:
            box["probe"] = probe_from_stats(stats, skip_first, probe_samples, probe_seqlen)
        flat = {}
        for t in box["probe"].scan("prune", sparsity=sparsity, metric=metric,
                                   desc=f"absorption: prune {metric} {sparsity:g}"):
            flat.update(t.to_tensors(str(t.layer)))
        return flat

    flat = stats.cached("absorption_prune_trajectories", compute, sparsity=float(sparsity), metric=metric,
                        skip_first=bool(skip_first), probe_samples=int(probe_samples),
                        probe_seqlen=int(probe_seqlen))
    return [Trajectory.from_tensors(flat, str(l), f"prune({metric}, s={sparsity:g})")
            for l in range(stats.num_blocks)]


def coefficients(trajectories, reduction: str = "mean_of_ratios", depth: str = "final",
                 final_norm: bool = False) -> np.ndarray:
    """r_l for a list of trajectories (one per injection block)."""
    return np.array([t.coefficient(reduction, depth, final_norm) for t in trajectories])
