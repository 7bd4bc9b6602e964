"""prunekit: layer-wise sparsity allocation for pruning LLMs.

The layout is the pipeline, imports only downward:
core (runtime, models, data, block engine) → solvers (scores, masks, SparseGPT, pruning driver) →
scoring (statistics) → allocation (registry and one module per method) → evaluation (perplexity,
zero-shot) → experiments (session, profiles, studies) → reporting (results, renders, plots) → cli.

The names below are imported on first use (PEP 562), so ``import prunekit`` and the console
script's ``--version`` / ``--help`` do not load torch.
"""
import importlib as _importlib
import os as _os

__version__ = "0.1.0"

if _os.environ.get("PRUNEKIT_THREADS", "").isdigit() and int(_os.environ["PRUNEKIT_THREADS"]) > 0:
    import torch as _torch  # e.g. 1 for small models on a shared CPU (see README)
    _torch.set_num_threads(int(_os.environ["PRUNEKIT_THREADS"]))

# public name -> module that defines it
_API = {
    "PrunekitError": "prunekit.errors",
    "Runtime": "prunekit.core.runtime",
    "load_model": "prunekit.core.loading", "save_model": "prunekit.core.saving",
    "layout": "prunekit.core.architectures", "DEFAULT_MODEL": "prunekit.core.aliases",
    "calibration_data": "prunekit.core.data", "eval_tokens": "prunekit.core.data",
    "sequential": "prunekit.core.engine", "capture": "prunekit.core.engine",
    "weight_snapshot": "prunekit.core.snapshot",
    "Statistics": "prunekit.scoring",
    "SparsityPlan": "prunekit.allocation", "allocate": "prunekit.allocation", "register": "prunekit.allocation",
    "methods": "prunekit.allocation", "fit_budget": "prunekit.allocation", "spec": "prunekit.allocation",
    "prune_model": "prunekit.solvers.prune", "measure_sparsity": "prunekit.solvers.prune",
    "perplexity": "prunekit.evaluation.perplexity",
    "prune": "prunekit.oneshot", "save": "prunekit.oneshot",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        value = getattr(_importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
