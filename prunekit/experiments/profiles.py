"""Every workload profile (quick / cpu / paper) in one place."""
from __future__ import annotations

from prunekit.allocation.absorption import ETAS
from prunekit.errors import PrunekitError

BASES = ("uniform", "owl", "alphapruning", "atp")  # allocations the absorption study corrects

# Session sizes: quick = CI on a shared CPU, cpu = this 2-core machine, paper = the papers' settings
# on a GPU (docs/methods.md §0.1: 128 × 2048 C4, full WikiText-2).
PROFILES = {
    "quick": dict(calib_samples=4, calib_seqlen=128, eval_seqlen=256, eval_windows=2, heldout_samples=2),
    "cpu": dict(calib_samples=32, calib_seqlen=512, eval_seqlen=512, eval_windows=16, heldout_samples=8),
    "paper": dict(calib_samples=128, calib_seqlen=2048, eval_seqlen=2048, eval_windows=None, heldout_samples=32),
}


def grid(profile_name: str, defaults: dict | None = None, **axes) -> dict:
    """Sweep axes for a profile. An axis given a value is used exactly as given: a list, one value,
    or the YAML text of a list (``papermill -p sparsities "[0.5, 0.6]"`` passes the string). An axis
    left ``None`` takes ``defaults[profile_name][axis]`` (e.g. ``BASELINES``)."""
    profile(profile_name)
    out = {}
    for k, v in axes.items():
        if v is None:
            if not defaults or k not in defaults.get(profile_name, {}):
                raise PrunekitError(f"grid axis '{k}' has no value and profile '{profile_name}' no default")
            v = defaults[profile_name][k]
        out[k] = as_list(v, k)
    return out


def as_list(value, name: str = "value") -> list:
    """A parameter as a list: lists and tuples as they are, YAML/JSON text of a list parsed, a
    scalar wrapped. An empty list is an error (nothing would run)."""
    if isinstance(value, str):
        import yaml
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise PrunekitError(f"{name}: not a list: {str(e).splitlines()[0]}") from None
    out = list(value) if isinstance(value, (list, tuple)) else [value]
    if not out:
        raise PrunekitError(f"{name}: empty list")
    return out


# Notebook 20's workload. quick: the LPS at one high sparsity for the two cheap metrics (SparseGPT
# solves every block twice per sparsity) and 4 random allocations against uniform — enough to show
# each finding's direction in a few minutes; cpu / paper: the paper's three metrics and sparsities.
MRP_FINDINGS = {
    "quick": dict(metrics=["magnitude", "wanda"], lps_sparsities=[0.8], n_random=4),
    "cpu": dict(metrics=["magnitude", "wanda", "sparsegpt"], lps_sparsities=[0.5, 0.7, 0.9], n_random=20),
    "paper": dict(metrics=["magnitude", "wanda", "sparsegpt"], lps_sparsities=[0.5, 0.7, 0.9], n_random=20),
}


# Notebook 21's grid and MRP ablations (quick: one metric and sparsity, two step sizes).
MRP = {
    "quick": dict(metrics=["wanda"], sparsities=[0.7], deltas=[0.01, 0.05], refresh_every=[500]),
    "cpu": dict(metrics=["wanda", "sparsegpt"], sparsities=[0.5, 0.6, 0.7, 0.8], deltas=[0.005, 0.01, 0.02, 0.05],
                refresh_every=[100]),
    "paper": dict(metrics=["wanda", "sparsegpt"], sparsities=[0.5, 0.6, 0.7, 0.8], deltas=[0.005, 0.01, 0.02, 0.05],
                  refresh_every=[100]),
}


# Notebook 10's grid. quick keeps one value per axis: the highest sparsity (where methods differ
# most) and Wanda (SparseGPT costs ~100 s per prune on a CPU).
BASELINES = {
    "quick": dict(metrics=["wanda"], sparsities=[0.7]),
    "cpu": dict(metrics=["wanda", "sparsegpt"], sparsities=[0.5, 0.6, 0.7]),
    "paper": dict(metrics=["wanda", "sparsegpt"], sparsities=[0.5, 0.6, 0.7]),
}


def profile(name: str) -> dict:
    if name not in PROFILES:
        raise PrunekitError(f"unknown profile '{name}'; choose from {', '.join(PROFILES)}")
    return dict(PROFILES[name])


# ---------------------------------------------------------------- per-notebook workloads

# Workloads of the comparison notebook. Every claim is a paired comparison with a
# bootstrap interval over seeds × evaluation windows, so the cpu profile buys statistical power:
# ≥ 16 × 1024 WikiText-2 tokens per perplexity (per-window NLLs recorded) and 3 seeds, on both model
# families. The full grid (8 allocations × 2 solvers × 3 sparsities × 3 seeds ≈ 144 runs) does not fit
# 90 min per model on 2 cores (evaluating 16 × 1024 tokens alone is ~25 s on SmolLM2 and ~60 s on
# Gemma-3-270M, whose 262k-token head dominates), so the runs are designed around the claims:
#   70 %  Wanda: every allocation (five of the nine claims are Wanda at 70 %);
#   70 %  SparseGPT: uniform, OWL, AlphaPruning, MRP, SV-NUP (the SparseGPT claims; ATP and the
#         absorption correction have no SparseGPT claim, and absorption would prune 4× more for γ);
#   50 %  Wanda: uniform, AlphaPruning (the best baseline at 70 % in the earlier cpu render), MRP (the
#         seed method), where methods are farther from collapse; 60 % was dropped when the first
#         render measured the cost (no claim is at 60 %; 50 % already shows the trend away from 70 %);
#   50 %  magnitude: uniform (the Wanda-vs-magnitude claim).
# 17 runs per seed, 51 per model. WikiText-2 only (PTB / C4 added no claim), no zero-shot (16-item
# lm-eval limits add noise, not power), the default precision (on a CPU with native bf16: fp32 pruning,
# bf16 evaluation).
_CPU_GROUPS = [
    {"sparsity": 0.7, "metric": "wanda", "allocations": ["uniform", "owl", "alphapruning", "atp", "mrp", "svnup",
                                                         "absorption(owl)", "absorption(alphapruning)"]},
    {"sparsity": 0.7, "metric": "sparsegpt", "allocations": ["uniform", "owl", "alphapruning", "mrp", "svnup"]},
    {"sparsity": 0.5, "metric": "wanda", "allocations": ["uniform", "alphapruning", "mrp"]},
    {"sparsity": 0.5, "metric": "magnitude", "allocations": ["uniform"]},
]
COMPARISON = {
    "quick": dict(models=["smollm2-135m"], seeds=[0, 1], eval_datasets=["wikitext2"],
                  calib_samples=4, calib_seqlen=128, eval_seqlen=256, eval_windows=4,
                  groups=[{"sparsity": 0.7, "metric": "wanda",
                           "allocations": ["uniform", "owl", "mrp", "absorption(owl)"]},
                          {"sparsity": 0.5, "metric": "magnitude", "allocations": ["uniform"]}],
                  zero_shot_tasks=[], zero_shot_limit=None),
    "cpu": dict(models=["smollm2-135m", "gemma3-270m"], seeds=[0, 1, 2], eval_datasets=["wikitext2"],
                calib_samples=8, calib_seqlen=256, eval_seqlen=1024, eval_windows=16,
                groups=_CPU_GROUPS, zero_shot_tasks=[], zero_shot_limit=None),
    "paper": dict(models=["smollm2-135m", "gemma3-270m"], seeds=[0, 1, 2], eval_datasets=["wikitext2"],
                  calib_samples=128, calib_seqlen=2048, eval_seqlen=2048, eval_windows=None,
                  groups=[{"sparsity": s, "metric": mt, "allocations": ["uniform", "owl", "alphapruning", "atp",
                                                                        "mrp", "svnup", "absorption(owl)",
                                                                        "absorption(alphapruning)"]}
                          for s in (0.5, 0.6, 0.7, 0.8) for mt in ("magnitude", "wanda", "sparsegpt")],
                  zero_shot_tasks=["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                   "openbookqa"], zero_shot_limit=None),
}


# Choosing MRP's defaults (notebook 21): held-out calibration NLL, never the test set.
MRP_SELECTION = {
    "quick": dict(models=["smollm2-135m"], sparsities=[0.7], ms=[5.0], readings=["current", "frozen"],
                  calib_samples=4, calib_seqlen=128, heldout_samples=2, heldout_seqlen=128),
    "cpu": dict(models=["smollm2-135m", "gemma3-270m"], sparsities=[0.7, 0.6, 0.5], ms=[3.0, 5.0, 7.0],
                readings=["current", "frozen", "recomputed"], calib_samples=8, calib_seqlen=256,
                heldout_samples=4, heldout_seqlen=256),
    "paper": dict(models=["smollm2-135m", "gemma3-270m"], sparsities=[0.7, 0.6, 0.5], ms=[3.0, 5.0, 7.0],
                  readings=["current", "frozen", "recomputed"], calib_samples=128, calib_seqlen=2048,
                  heldout_samples=32, heldout_seqlen=2048),
}


# Cheaper statistics for the expensive methods on CPU profiles (documented in the notebook).
COMPARISON_METHOD_OPTIONS = {
    "quick": {"svnup": dict(estimator="sliding_window", window=3, heldout_samples=2, heldout_seqlen=64),
              "absorption": dict(probe_samples=2, probe_seqlen=64, heldout_samples=2, heldout_seqlen=128)},
    "cpu": {"svnup": dict(estimator="sliding_window", window=3, heldout_samples=4, heldout_seqlen=128)},
    "paper": {},
}


SVNUP = {
    # held-out value set and estimator sizes per profile; quick = CI rendering on a shared CPU
    "quick": dict(heldout_samples=1, heldout_seqlen=32, window=3, reference_permutations=4, mc_permutations=3,
                  study_windows=(3,), study_backgrounds=("absent",), sparsities=(0.7,),
                  metrics=("wanda",), game_metric="wanda", models=["smollm2-135m"]),  # SparseGPT ~100 s a prune on CPU
    "cpu": dict(heldout_samples=8, heldout_seqlen=128, window=5, reference_permutations=100, mc_permutations=60,
                study_windows=(3, 5), study_backgrounds=("absent", "both"), sparsities=(0.6, 0.7),
                metrics=("sparsegpt", "wanda"), game_metric="wanda", models=["smollm2-135m", "gemma3-270m"]),
    "paper": dict(heldout_samples=32, heldout_seqlen=None, window=5, reference_permutations=400,
                  mc_permutations=200, study_windows=(3, 5, 7), study_backgrounds=("absent", "both"),
                  sparsities=(0.6, 0.7), metrics=("sparsegpt", "wanda"), game_metric="same",
                  models=["smollm2-135m", "gemma3-270m"]),
}


ABSORPTION = {
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
