"""prunekit: layer-wise sparsity allocation for pruning LLMs.

The layout is the pipeline, imports only downward:
core (models, data, block engine) → solvers (masks, SparseGPT, pruning driver) → scoring
(statistics) → allocation (registry and one module per method) → evaluation (perplexity,
zero-shot) → experiments (session, profiles, studies) → reporting (results, renders, plots) → cli.
"""
__version__ = "0.1.0"

import os as _os

if _os.environ.get("PRUNEKIT_THREADS"):  # e.g. 1 for small models on a shared CPU (see README)
    import torch as _torch
    _torch.set_num_threads(int(_os.environ["PRUNEKIT_THREADS"]))

from prunekit.errors import PrunekitError  # noqa: E402,F401
from prunekit.core.models import load_model, save_model, layout, DEFAULT_MODEL  # noqa: E402,F401
from prunekit.core.data import calibration_data, eval_tokens  # noqa: E402,F401
from prunekit.core.engine import sequential, capture  # noqa: E402,F401
from prunekit.scoring import Statistics  # noqa: E402,F401
from prunekit.allocation import SparsityPlan, allocate, register, methods, fit_budget, spec  # noqa: E402,F401
from prunekit.solvers.prune import prune_model, measure_sparsity  # noqa: E402,F401
from prunekit.evaluation.perplexity import perplexity  # noqa: E402,F401
