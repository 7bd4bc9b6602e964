"""prunekit: layer-wise sparsity allocation for pruning LLMs.

Pipeline, one module per stage: data → calibrate → score → allocate → prune → evaluate → plots.
"""
__version__ = "0.1.0"

import os as _os

if _os.environ.get("PRUNEKIT_THREADS"):  # e.g. 1 for small models on a shared CPU (see README)
    import torch as _torch
    _torch.set_num_threads(int(_os.environ["PRUNEKIT_THREADS"]))

from .errors import PrunekitError  # noqa: F401
from .models import load_model, save_model, layout, DEFAULT_MODEL  # noqa: F401
from .data import calibration_data, eval_tokens  # noqa: F401
from .calibrate import sequential, capture  # noqa: F401
from .score import Statistics  # noqa: F401
from .allocate import SparsityPlan, allocate, register, methods, fit_budget  # noqa: F401
from .prune import prune_model, measure_sparsity  # noqa: F401
from .evaluate import perplexity  # noqa: F401
