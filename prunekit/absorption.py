"""Absorption: controlled perturbation experiments and the absorption-aware correction
("Beyond Layer Importance in Layer-wise Sparsity: An Inter-Layer Perturbation-Absorption
Perspective", arXiv 2606.15161; ALGORITHMS.md §3).

Measurement (``Probe``)
    A perturbation is injected at the output of decoder block ``l`` and the perturbed hidden
    states are followed through blocks ``l+1 … L−1`` next to the clean run on the same calibration
    tokens. At every depth ``k ≥ l`` (k = the block whose output is measured) and every token t:

    * relative L2 drift   ``R_k = ‖h'_k − h_k‖ / ‖h_k‖``                                   (§3 [S])
    * state alignment     ``cos_state_k = cos(h'_k, h_k)`` — 1 when the perturbed state points
      along the clean trajectory ("direction realigning toward the unperturbed trajectory");
    * drift direction     ``cos_drift_k = cos(h'_k − h_k, h_k)`` — the component of the drift
      along the clean state (≈0 for isotropic noise; <0 when the block shrinks the perturbed
      state back, >0 when the perturbation inflates the state's norm).

    The same quantities are also measured once after the model's final norm (``*_norm`` fields).
    Averages run over calibration tokens (position 0 of each window excluded by default —
    ``skip_first``: its hidden state is an attention sink with an extreme norm) and noise draws.

    Perturbations: Gaussian noise of relative size η per token (``‖δ_t‖ = η·‖h_{l,t}‖`` exactly,
    direction uniform; ``relative_to="update"`` scales by the block's update ‖h_l − h_{l−1}‖
    instead, [I]) or the real pruning perturbation (block l pruned at sparsity s with
    magnitude/Wanda/SparseGPT via ``prune.prune_block``, statistics from the dense inputs of block
    l, weights restored afterwards).

Absorption coefficient
    ``r_l = E[R_final / R_l]`` (``reduction="mean_of_ratios"``, §3 [S]) or ``E[R_final]/E[R_l]``
    (``"ratio_of_means"``); ``depth="final"`` uses the last block's output (``final_norm=True``:
    after the final norm), ``depth="mean"`` averages the ratio over all depths k > l. r > 1:
    block l's perturbations are amplified downstream; r < 1: absorbed. For l = L−1 without the
    final norm there is no later depth and r = 1 by definition.

Clean run and memory / compute trade-off
    The clean trajectory is computed ONCE (``calibrate.capture`` + ``calibrate.run_block``; no other
    layer loop) and its block boundaries are kept (``store="cpu"`` or ``"device"``) every
    ``checkpoint_every`` blocks. ``checkpoint_every=1`` (default) stores all L+1 boundaries:
    memory (L+1)·N·T·d floats (SmolLM2-135M, 4×128 tokens: 37 MB), cost per noise draw
    Σ_l (L−1−l) ≈ L²/2 block runs ≈ L/2 dense forwards for all coefficients. With
    ``checkpoint_every=c`` only every c-th boundary is kept (memory ÷ c) and clean states in
    between are recomputed next to the perturbed run (≤ 2× the block runs).

Correction (``absorption_correction`` and the registered ``"absorption"`` allocation)
    ``u = clip(log r, −c, c)``, ``Δ = −(u − mean u)``, ``s' = s_base + γΔ`` (broadcast per block to
    every matrix), then ``allocate`` restores the budget and the bounds (§3 [S]). Defaults [I]:
    c = log 3, γ = λ_corr / c with λ_corr = 0.04, η = 1e-2, 1 noise draw (each token already gets
    its own draw; more draws only reduce variance). ``perturbation="prune"`` [I] takes r from the
    real pruning perturbation instead (each block pruned alone at the target sparsity): on
    SmolLM2-135M pruning one block at 70 % injects R_l ≈ 0.1–0.4, far above η = 1e-2, which is
    why the η sweep (``ETAS``) extends to 0.3.

    What the correction guarantees about amplifying blocks: before budget restoration
    Δ is non-increasing in r, so a block with u_l ≥ mean(u) (r above the geometric mean, in
    particular the most amplifying block) never gets more sparsity than the base plan gives it.
    A block with r > 1 is guaranteed Δ ≤ 0 only if mean(u) ≤ 0 (the usual case at η = 1e-2,
    where most blocks absorb) or with ``center="none"`` (Δ = −u). After restoration: with equal
    block sizes Σ n_l Δ_l = 0, so when no value hits a bound the budget shift is 0 and the
    statement carries over unchanged; clipping at s_min/s_max only adds a common shift to the
    unclipped blocks, so the ordering of s' − s_base across blocks is preserved.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .allocate import SparsityPlan, allocate, register
from .calibrate import STATS, capture, run_block
from .errors import PrunekitError
from .models import layout
from .prune import METRICS, COLLECT, parse_nm, prune_block

__all__ = ["Probe", "Trajectory", "coefficients", "absorption_coefficients", "eta_sweep",
           "transition_summary", "correction_signal", "absorption_correction", "absorption",
           "coefficients_from_stats", "trajectories_from_stats", "prune_trajectories_from_stats",
           "probe_from_stats", "sweep_table",
           "compare_correction", "verdicts", "study", "results_table", "notebook_defaults",
           "LAMBDA_CORR", "CLIP", "DEFAULT_GAMMA", "ETAS"]

LAMBDA_CORR = 0.04                 # [I] half of OWL's λ = 0.08 (ALGORITHMS.md §3)
CLIP = math.log(3.0)               # [S] u = clip(log r, −log 3, log 3)
DEFAULT_GAMMA = LAMBDA_CORR / CLIP  # [I] γ = λ_corr / c
ETAS = (1e-4, 1e-3, 1e-2, 5e-2, 1e-1, 3e-1)  # 0.3 ≈ the drift pruning one block injects
REDUCTIONS = ("mean_of_ratios", "ratio_of_means")
DEPTHS = ("final", "mean")
CENTERS = ("mean", "none")
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
    def __init__(self, model, input_ids: torch.Tensor, *, batch_size: int = 8, checkpoint_every: int = 1,
                 store: str = "cpu", skip_first: bool = True, progress: bool = True):
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise PrunekitError("absorption needs calibration input_ids of shape (n, seqlen>=2)")
        if checkpoint_every < 1:
            raise PrunekitError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        _check_choice("store", store, ("cpu", "device"))
        self.model = model
        self.lay = layout(model)
        self.L = self.lay.num_blocks
        self.device = next(model.parameters()).device
        self.store = torch.device("cpu") if store == "cpu" else self.device
        self.skip_first, self.progress = skip_first, progress
        self.norm = _final_norm(model, self.lay.blocks)
        self.block_runs = 0
        self.acts = capture(model, input_ids, batch_size)
        self.nbatches = len(self.acts.hidden)
        keep = set(range(0, self.L + 1, checkpoint_every)) | {self.L}
        self.ckpt: dict[int, list[torch.Tensor]] = {0: [h.to(self.store) for h in self.acts.hidden]}
        h = list(self.acts.hidden)
        for i in tqdm(range(self.L), desc="absorption: clean run", disable=not progress, leave=False):
            h = [self._run(i, x, j) for j, x in enumerate(h)]
            if i + 1 in keep:
                self.ckpt[i + 1] = [x.to(self.store) for x in h]
        self.acts.hidden = self.ckpt[0]  # only kwargs are used from here on

    # ---- primitives
    def _run(self, i: int, h: torch.Tensor, j: int) -> torch.Tensor:
        self.block_runs += 1
        return run_block(self.lay.blocks[i], h, self.acts.block_kwargs(i, j))

    def _clean(self, start: int, j: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Clean boundary b (b = 0: input of block 0; b = k+1: output of block k) for
        b = start … L, batch j, recomputed from the nearest checkpoint when not stored."""
        c = max(b for b in self.ckpt if b <= start)
        h = self.ckpt[c][j].to(self.device)
        for b in range(c, self.L + 1):
            if b > c:
                h = self.ckpt[b][j].to(self.device) if b in self.ckpt else self._run(b - 1, h, j)
            if b >= start:
                yield b, h

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
        gens = [torch.Generator().manual_seed(_seed(seed, layer, d)) for d in range(draws)]

        def perturb(j, d, h_in, h_out):
            z = torch.randn(h_out.shape, generator=gens[d], dtype=torch.float32).to(h_out.device)
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
        linears = self.lay.linears(layer)
        names = list(self.lay.linear_names)
        row = np.broadcast_to(np.asarray(sparsity, dtype=float), (len(names),))
        if (row < 0).any() or (row >= 1).any():
            raise PrunekitError(f"sparsity {sparsity} is outside [0, 1)")
        values = np.zeros((self.L, len(names)))
        values[layer] = row
        stats = {k: {n: STATS[k](m) for n, m in linears.items()} for k in COLLECT[metric]}
        if stats:  # dense statistics of block `layer` from its clean inputs (one extra block run)
            hooks = [m.register_forward_hook(_collector(stats, n)) for n, m in linears.items()]
            try:
                for j in range(self.nbatches):
                    self._run(layer, next(self._clean(layer, j))[1], j)
            finally:
                for hk in hooks:
                    hk.remove()
        saved = {n: m.weight.detach().clone() for n, m in linears.items()}
        try:
            prune_block(layer, block, stats, values, metric, nm, names, blocksize, percdamp)

            def perturb(j, d, h_in, h_out):  # pruned block on its clean input; later blocks dense
                return self._run(layer, h_in, j)

            out = self._follow(layer, perturb, f"prune({metric}, s={float(np.mean(row)):g})")
        finally:
            for n, m in linears.items():
                m.weight.data.copy_(saved[n])
        return out

    # ---- scans
    def scan(self, kind: str = "noise", layers=None, desc: str | None = None, **kw) -> list[Trajectory]:
        """One trajectory per injection block (``kind`` 'noise' → ``noise(**kw)``, 'prune' →
        ``pruned(**kw)``)."""
        _check_choice("kind", kind, ("noise", "prune"))
        fn = self.noise if kind == "noise" else self.pruned
        layers = range(self.L) if layers is None else list(layers)
        return [fn(l, **kw) for l in tqdm(layers, desc=desc or f"absorption: {kind}",
                                          disable=not self.progress, leave=False)]

    def coefficients(self, eta: float = 1e-2, draws: int = 1, seed: int = 0, relative_to: str = "state",
                     reduction: str = "mean_of_ratios", depth: str = "final", final_norm: bool = False,
                     layers=None) -> np.ndarray:
        trajs = self.scan("noise", layers, eta=eta, draws=draws, seed=seed, relative_to=relative_to)
        return coefficients(trajs, reduction, depth, final_norm)


def _collector(stats, name):
    def hook(mod, inp, out):
        for per_kind in stats.values():
            per_kind[name].add(inp[0])
    return hook


def coefficients(trajectories, reduction: str = "mean_of_ratios", depth: str = "final",
                 final_norm: bool = False) -> np.ndarray:
    """r_l for a list of trajectories (one per injection block)."""
    return np.array([t.coefficient(reduction, depth, final_norm) for t in trajectories])


def absorption_coefficients(model, input_ids, *, eta: float = 1e-2, draws: int = 1, seed: int = 0,
                            reduction: str = "mean_of_ratios", depth: str = "final",
                            final_norm: bool = False, skip_first: bool = True, batch_size: int = 8,
                            progress: bool = True) -> np.ndarray:
    """Convenience: one ``Probe`` and all L noise coefficients."""
    probe = Probe(model, input_ids, batch_size=batch_size, skip_first=skip_first, progress=progress)
    return probe.coefficients(eta, draws, seed, reduction=reduction, depth=depth, final_norm=final_norm)


# ============================================================================ η sweep

def sweep_table(trajectories_by_eta: dict, reduction: str = "mean_of_ratios", depth: str = "final",
                final_norm: bool = False):
    """Long table (pandas), one row per (η, injection block): r, injected drift R_l, final drift,
    final cos_state, from ``{eta: [Trajectory, ...]}``."""
    import pandas as pd
    rows = []
    for eta, trajs in sorted(trajectories_by_eta.items()):
        for t in trajs:
            rows.append({"eta": float(eta), "layer": t.layer,
                         "r": t.coefficient(reduction, depth, final_norm),
                         "R_inject": float(t.drift[0]), "R_final": float(t.drift[-1]),
                         "cos_state_final": float(t.cos_state[-1])})
    return pd.DataFrame(rows)


def eta_sweep(source, etas=ETAS, draws: int = 1, seed: int = 0, reduction: str = "mean_of_ratios",
              depth: str = "final", final_norm: bool = False, layers=None, **probe_options):
    """η sweep as a ``sweep_table``. ``source``: a ``Probe`` (its clean run reused for every η;
    ``layers`` may restrict the injection blocks; ``probe_options`` = relative_to) or a
    ``Statistics`` (every block measured, cached per η through ``trajectories_from_stats`` with one
    shared clean run; ``probe_options`` = relative_to, skip_first, probe_samples, probe_seqlen)."""
    by_eta = {}
    box: dict = {}
    for eta in etas:
        if isinstance(source, Probe):
            by_eta[eta] = source.scan("noise", layers, desc=f"absorption: eta={eta:g}", eta=eta, draws=draws,
                                      seed=seed, **probe_options)
        else:
            trajs = trajectories_from_stats(source, eta, draws, seed, _probe=box, **probe_options)
            by_eta[eta] = trajs if layers is None else [trajs[l] for l in layers]
    return sweep_table(by_eta, reduction, depth, final_norm)


def transition_summary(sweep):
    """Per η: how many blocks amplify (r > 1), geometric-mean / min / max r — the
    amplification → absorption transition of finding 2."""
    import pandas as pd
    out = []
    for eta, g in sweep.groupby("eta", sort=True):
        r = g["r"].to_numpy(float)
        out.append({"eta": eta, "blocks": len(r), "amplifying": int((r > 1).sum()),
                    "frac_amplifying": float((r > 1).mean()), "geomean_r": float(np.exp(np.log(r).mean())),
                    "min_r": float(r.min()), "max_r": float(r.max())})
    return pd.DataFrame(out)


# ============================================================================ correction

def correction_signal(coefficients, clip: float = CLIP, center: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(u, Δ): ``u = clip(log r, −c, c)``; ``Δ = −(u − mean u)`` (``center="mean"``, §3 [S]) or
    ``Δ = −u`` (``center="none"``, [I]). Amplifying blocks (large u) get Δ < 0 (protected)."""
    r = np.asarray(coefficients, dtype=float).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or (r <= 0).any():
        raise PrunekitError("absorption coefficients must be finite and > 0 (was eta 0 or the "
                            "calibration too short?); re-measure with eta > 0")
    if not (clip > 0):
        raise PrunekitError(f"clip must be > 0, got {clip}")
    _check_choice("center", center, CENTERS)
    u = np.clip(np.log(r), -clip, clip)
    delta = -(u - u.mean()) if center == "mean" else -u
    return u, delta


def absorption_correction(plan, coefficients, gamma: float = DEFAULT_GAMMA, clip: float = CLIP,
                          center: str = "mean") -> np.ndarray:
    """Pure correction ``s' = s_base + γΔ`` (no budget restoration, no bounds).

    ``plan``: SparsityPlan, per-block vector (L,) or (L, K) array; returns the same shape with the
    block's Δ added to every matrix of that block."""
    values = np.asarray(getattr(plan, "values", plan), dtype=float)
    _, delta = correction_signal(coefficients, clip, center)
    if values.shape[0] != delta.size:
        raise PrunekitError(f"plan has {values.shape[0]} blocks but {delta.size} absorption coefficients")
    if not math.isfinite(gamma):
        raise PrunekitError(f"gamma must be finite, got {gamma}")
    return values + gamma * (delta if values.ndim == 1 else delta[:, None])


def probe_from_stats(stats, skip_first: bool = True, probe_samples: int = 0, probe_seqlen: int = 0) -> Probe:
    """A ``Probe`` on ``stats.model`` and the first ``probe_samples`` windows / ``probe_seqlen``
    tokens of ``stats.calib`` (0 = all; a cheaper subset is an [I] cost option)."""
    if stats.calib is None:
        raise PrunekitError("absorption needs calibration data; pass calib= to Statistics")
    ids = stats.calib.input_ids
    if probe_samples < 0 or probe_seqlen < 0:
        raise PrunekitError("probe_samples / probe_seqlen must be >= 0 (0 = the whole calibration set)")
    ids = ids[: probe_samples or None, : probe_seqlen or None]
    return Probe(stats.model, ids, batch_size=getattr(stats, "batch_size", 8), skip_first=skip_first,
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


def coefficients_from_stats(stats, eta: float = 1e-2, draws: int = 1, seed: int = 0,
                            relative_to: str = "state", skip_first: bool = True,
                            reduction: str = "mean_of_ratios", depth: str = "final",
                            final_norm: bool = False, probe_samples: int = 0,
                            probe_seqlen: int = 0, perturbation: str = "noise", sparsity: float | None = None,
                            prune_metric: str = "wanda") -> tuple[np.ndarray, list[Trajectory]]:
    """(r, trajectories) of ``stats.model`` on ``stats.calib``; reduction/depth/final_norm are
    applied to the cached trajectories, so they share one cache entry. ``perturbation="prune"``
    [I]: r from the real pruning perturbation (each block pruned alone at ``sparsity`` with
    ``prune_metric``) instead of Gaussian noise of size η."""
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("depth", depth, DEPTHS)
    _check_choice("perturbation", perturbation, ("noise", "prune"))
    if perturbation == "prune":
        if sparsity is None:
            raise PrunekitError("perturbation='prune' needs a sparsity")
        trajs = prune_trajectories_from_stats(stats, sparsity, prune_metric, skip_first, probe_samples, probe_seqlen)
    else:
        trajs = trajectories_from_stats(stats, eta, draws, seed, relative_to, skip_first, probe_samples,
                                        probe_seqlen)
    return coefficients(trajs, reduction, depth, final_norm), trajs


@register("absorption")
def absorption(stats, target: float, base: str = "owl", gamma: float = DEFAULT_GAMMA, eta: float = 1e-2,
               draws: int = 1, clip: float = CLIP, seed: int = 0, reduction: str = "mean_of_ratios",
               depth: str = "final", final_norm: bool = False, skip_first: bool = True,
               center: str = "mean", probe_samples: int = 0, probe_seqlen: int = 0,
               perturbation: str = "noise", prune_metric: str = "wanda",
               base_options: dict | None = None, score: str | None = None) -> SparsityPlan:
    """Absorption-aware correction of a base allocation: s' = s_base + γΔ from absorption coefficients.

    ``base``: any registered allocation (``base_options`` are passed to it); ``gamma`` γ (default
    λ_corr/c = 0.04/log 3, [I]); ``eta`` noise scale; ``draws`` noise draws; ``clip`` c; ``seed``;
    ``reduction`` mean_of_ratios | ratio_of_means; ``depth`` final | mean; ``final_norm``;
    ``skip_first`` (exclude position 0); ``center`` mean (spec) | none; ``probe_samples`` /
    ``probe_seqlen`` measure on the first windows / tokens of the calibration set only (0 = all);
    ``perturbation`` noise (spec) | prune ([I]: r of each block pruned alone at the target sparsity
    with ``prune_metric``). ``score``: the solver's metric, passed on to a base that ranks by it
    (MRP principle 2) unless ``base_options`` sets its own.
    γ = 0 returns the base plan
    without measuring. Extras: ``absorption_r``, ``absorption_u``, ``absorption_delta``,
    ``base_per_block`` and the base method's extras prefixed ``base.``."""
    if base == "absorption":
        raise PrunekitError("absorption cannot wrap itself; pass base=owl|alphapruning|uniform|...")
    if isinstance(base_options, str):
        import json
        base_options = json.loads(base_options)
    base_options = dict(base_options or {})
    from .allocate import _REGISTRY, _load_plugins
    _load_plugins()
    if score is not None and base in _REGISTRY and "score" in inspect.signature(_REGISTRY[base]).parameters:
        base_options.setdefault("score", score)
    base_plan = allocate(base, stats, target, **base_options)
    opts = {"base": base, "gamma": float(gamma), "eta": float(eta), "draws": int(draws), "clip": float(clip),
            "seed": int(seed), "reduction": reduction, "depth": depth, "final_norm": bool(final_norm),
            "skip_first": bool(skip_first), "center": center, "probe_samples": int(probe_samples),
            "probe_seqlen": int(probe_seqlen), "perturbation": perturbation, "prune_metric": prune_metric,
            "base_options": base_options}
    extras = {f"base.{k}": v for k, v in base_plan.extras.items()}
    extras["base_per_block"] = base_plan.per_block.copy()
    if gamma == 0:
        return SparsityPlan(base_plan.values.copy(), base_plan.sizes, target, "absorption", opts,
                            list(base_plan.linear_names), extras)
    r, _ = coefficients_from_stats(stats, eta, draws, seed, skip_first=skip_first, reduction=reduction,
                                   depth=depth, final_norm=final_norm, probe_samples=probe_samples,
                                   probe_seqlen=probe_seqlen, perturbation=perturbation, sparsity=target,
                                   prune_metric=prune_metric)
    u, delta = correction_signal(r, clip, center)
    values = absorption_correction(base_plan.values, r, gamma, clip, center)
    extras.update({"absorption_r": r, "absorption_u": u, "absorption_delta": delta,
                   "pre_budget_per_block": (values * base_plan.sizes).sum(1) / base_plan.sizes.sum(1)})
    return SparsityPlan(values, base_plan.sizes, target, "absorption", opts, list(base_plan.linear_names), extras)


# ============================================================================ experiments / verdicts

BASES = ("uniform", "owl", "alphapruning", "atp")


def compare_correction(session, bases=BASES, sparsities=(0.6, 0.7), metrics=("wanda", "sparsegpt"),
                       gamma: float = DEFAULT_GAMMA, variants=("noise",), dataset: str | None = None,
                       **absorption_options):
    """Perplexity of each available base allocation with and without the correction (pandas table,
    one row per base × metric × sparsity × variant). Bases not registered (``allocate.methods()``)
    are skipped. ``variants``: 'noise' (r from Gaussian noise, the spec) and/or 'prune' (r from
    each block pruned alone with the run's metric at the run's sparsity, [I]). Columns: base,
    metric, sparsity, variant, ppl_base, ppl_corrected, rel_change (ppl_corrected/ppl_base − 1)."""
    import pandas as pd
    from .allocate import methods
    for v in variants:
        _check_choice("variant", v, ("noise", "prune"))
    avail = methods()
    dataset = dataset or session.eval_datasets[0]
    rows = []
    for b in [b for b in bases if b in avail]:
        for metric in metrics:
            for s in sparsities:
                base = session.run(b, metric, s)
                pb = base["perplexity"][dataset]
                for v in variants:
                    extra = {"perturbation": "prune", "prune_metric": metric} if v == "prune" else {}
                    corr = session.run("absorption", metric, s, base=b, gamma=gamma, **extra, **absorption_options)
                    pc = corr["perplexity"][dataset]
                    rows.append({"base": b, "metric": metric, "sparsity": s, "variant": v, "ppl_base": pb,
                                 "ppl_corrected": pc, "rel_change": pc / pb - 1.0,
                                 "realised_base": base["global_sparsity"],
                                 "realised_corrected": corr["global_sparsity"]})
    session.restore()
    return pd.DataFrame(rows)


def _claim1(r, what: str) -> str:
    r = np.asarray(r, dtype=float)
    L = r.size
    early = max(1, L // 6)
    rho = float(np.corrcoef(np.arange(L), np.log(r))[0, 1]) if L > 2 else float("nan")
    early_amp = float((r[:early] > 1).mean())
    later_abs = float((r[early:] < 1).mean()) if L > early else float("nan")
    ok = early_amp >= 0.5 and later_abs >= 0.5
    return (f"Claim 1 (early blocks amplify, middle/late blocks absorb) with {what}: "
            f"{'SUPPORTED' if ok else 'NOT SUPPORTED'} — {int((r[:early] > 1).sum())}/{early} of the first "
            f"blocks have r > 1 (max {r[:early].max():.3g}), {later_abs:.0%} of the remaining blocks have r < 1 "
            f"(min {r[early:].min():.3g}); correlation of log r with depth {rho:+.2f}.")


def verdicts(r, sweep=None, comparison=None, r_prune=None, prune_label: str = "",
             prune_trajectories=None, paper_change: float = -0.0713) -> list[str]:
    """Plain sentences on the paper's three claims, computed from the measured data: ``r`` noise
    coefficients at the working η, ``sweep`` an η sweep table, ``comparison`` a
    ``compare_correction`` table, ``r_prune`` coefficients of the pruning perturbation."""
    out = [_claim1(r, "noise coefficients")]
    if r_prune is not None:
        out.append(_claim1(r_prune, f"pruning-perturbation coefficients ({prune_label})"))
    if sweep is not None and len(sweep):
        summ = transition_summary(sweep)
        small, big = summ.iloc[0], summ.iloc[-1]
        mono = bool(np.all(np.diff(summ["geomean_r"].to_numpy()) <= 1e-9))
        ok2 = small["frac_amplifying"] >= 0.9 and big["frac_amplifying"] < small["frac_amplifying"]
        out.append(
            f"Claim 2 (small perturbations are amplified everywhere, absorption grows with the perturbation "
            f"size): {'SUPPORTED' if ok2 else 'NOT SUPPORTED'} — at eta={small['eta']:g} "
            f"{small['frac_amplifying']:.0%} of blocks amplify (geomean r {small['geomean_r']:.3g}); at "
            f"eta={big['eta']:g} {big['frac_amplifying']:.0%} (geomean r {big['geomean_r']:.3g}); geometric-mean r "
            f"{'decreases monotonically' if mono else 'does not decrease monotonically'} with eta.")
    if prune_trajectories:
        R0 = np.array([t.drift[0] for t in prune_trajectories])
        top = f"; the sweep's largest eta is {sweep['eta'].max():g}" if sweep is not None and len(sweep) else ""
        out.append(
            f"Pruning scale: pruning one block ({prune_label}) injects a relative drift R_l of "
            f"{np.median(R0):.3g} (median; range {R0.min():.3g}–{R0.max():.3g}){top}" + (f"; fraction of blocks with r > 1: {(np.asarray(r_prune) > 1).mean():.0%} "
                                           f"for pruning vs {(np.asarray(r) > 1).mean():.0%} for noise."
                                           if r_prune is not None else "."))
    if comparison is not None and len(comparison):
        c7 = comparison[(comparison["sparsity"] - 0.7).abs() < 1e-9]
        paper_bases = c7["base"].isin(["owl", "alphapruning"])
        c7 = c7[paper_bases] if paper_bases.any() else c7
        for v, c in c7.groupby("variant", sort=False):
            mean = float(c["rel_change"].mean())
            better = int((c["rel_change"] < 0).sum())
            close = mean < 0 and abs(mean - paper_change) < 0.05
            word = ("SUPPORTED in direction" if mean < 0 and better == len(c)
                    else "MIXED" if mean < 0 or better else "NOT SUPPORTED")
            out.append(
                f"Claim 3 (correction lowers perplexity at 70%, paper {paper_change:+.2%}) with {v} coefficients: "
                f"{word} — mean relative perplexity change "
                f"{mean:+.2%} over {len(c)} runs ({', '.join(sorted(set(c['base'])))}; {better}/{len(c)} improved)"
                f"{'; magnitude comparable to the paper' if close else ''}.")
    return out


# ============================================================================ notebook study

NOTEBOOK_DEFAULTS = {
    # quick: CI-sized (a few minutes on an idle 2-core CPU); cpu / paper: the full grid
    "quick": dict(models=["smollm2-135m"], etas=[1e-4, 1e-2, 1e-1, 3e-1], sparsities=[0.7], metrics=["wanda"],
                  bases=["owl", "alphapruning"], variants=["noise", "prune"],
                  probe_samples=2, probe_seqlen=64, sweep_every=3),
    "cpu": dict(models=["smollm2-135m", "gemma3-270m"], etas=list(ETAS), sparsities=[0.6, 0.7],
                metrics=["wanda", "sparsegpt"], bases=list(BASES), variants=["noise", "prune"],
                probe_samples=8, probe_seqlen=256, sweep_every=1),
    "paper": dict(models=["smollm2-135m", "gemma3-270m"], etas=list(ETAS), sparsities=[0.6, 0.7],
                  metrics=["wanda", "sparsegpt"], bases=list(BASES), variants=["noise", "prune"],
                  probe_samples=32, probe_seqlen=0, sweep_every=1),
}


def notebook_defaults(profile: str = "quick", model: str | None = None, **overrides) -> dict:
    """Per-profile parameters of notebooks/40_absorption.ipynb; ``None`` overrides are ignored.
    ``model`` replaces the first entry of the profile's model list (SmolLM2)."""
    if profile not in NOTEBOOK_DEFAULTS:
        raise PrunekitError(f"unknown profile '{profile}'; choose from {', '.join(NOTEBOOK_DEFAULTS)}")
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in NOTEBOOK_DEFAULTS[profile].items()}
    if model:
        out["models"] = [model] + [m for m in out["models"][1:] if m != model]
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def study(model: str = "smollm2-135m", profile: str = "quick", gamma: float = DEFAULT_GAMMA, eta: float = 1e-2,
          prune_sparsity: float = 0.7, prune_metric: str = "wanda", session=None, **params) -> dict:
    """Everything notebook 40 shows for one model: noise coefficients at ``eta`` (+ trajectories),
    an η sweep, pruning-perturbation coefficients (every block pruned alone at ``prune_sparsity``
    with ``prune_metric``) and the perplexity of the base allocations with / without the correction.
    ``params`` override ``notebook_defaults(profile)`` (etas, sparsities, metrics, bases, variants,
    probe_samples, probe_seqlen, sweep_every). Returns a dict of tables / arrays."""
    import time

    from .experiment import Session
    p = notebook_defaults(profile, **params)
    t0 = time.perf_counter()
    session = session or Session.from_profile(profile, model_name=model)
    popts = dict(probe_samples=p["probe_samples"], probe_seqlen=p["probe_seqlen"])
    session.restore()
    box: dict = {}
    # cached on disk; the allocation runs below reuse exactly these entries
    trajs = trajectories_from_stats(session.stats, eta, _probe=box, **popts)
    prune_trajs = prune_trajectories_from_stats(session.stats, prune_sparsity, prune_metric, _probe=box, **popts)
    r, r_prune = coefficients(trajs), coefficients(prune_trajs)
    L = len(r)
    sweep_layers = list(range(0, L, p["sweep_every"]))
    others = [e for e in p["etas"] if e != eta]
    if others and "probe" not in box:  # everything above came from the cache: one clean run here
        box["probe"] = probe_from_stats(session.stats, **popts)
    by_eta = {e: box["probe"].scan("noise", sweep_layers, desc=f"absorption: eta={e:g}", eta=e) for e in others}
    by_eta[eta] = [trajs[l] for l in sweep_layers]
    sweep = sweep_table(by_eta)
    box.clear()
    comparison = compare_correction(session, p["bases"], p["sparsities"], p["metrics"], gamma,
                                    variants=p["variants"], **popts)
    comparison.insert(0, "model", model)
    dense = session.dense()
    label = f"{prune_metric} at {prune_sparsity:.0%}"
    return {"model": model, "profile": profile, "eta": eta, "r": r, "r_prune": r_prune, "prune_label": label,
            "trajectories": trajs, "prune_trajectories": prune_trajs, "sweep": sweep,
            "transition": transition_summary(sweep), "comparison": comparison, "dense_ppl": dense,
            "verdicts": verdicts(r, sweep, comparison, r_prune, label, prune_trajs),
            "seconds": time.perf_counter() - t0, "params": p, "gamma": gamma}


def results_table(studies) -> dict:
    """JSON-ready summary of several ``study`` results (for ``report.save_results``)."""
    out = {"models": {}}
    for s in studies:
        out["models"][s["model"]] = {
            "eta": s["eta"], "gamma": s["gamma"], "coefficients": [float(x) for x in s["r"]],
            "coefficients_prune": [float(x) for x in s["r_prune"]], "prune_label": s["prune_label"],
            "prune_R_inject": [float(t.drift[0]) for t in s["prune_trajectories"]],
            "transition": s["transition"].to_dict(orient="records"),
            "comparison": s["comparison"].to_dict(orient="records"),
            "dense_ppl": s["dense_ppl"], "verdicts": s["verdicts"], "seconds": round(s["seconds"], 1),
            "params": s["params"]}
    return out
