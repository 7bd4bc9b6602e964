"""The names every layer shares: solvers (metrics), datasets, offload modes, dtypes. A leaf module
with no heavy imports, so the CLI can build its parser (and answer --help) without loading torch."""
from __future__ import annotations

from typing import Literal, get_args

Metric = Literal["magnitude", "wanda", "sparsegpt"]
METRICS: tuple[str, ...] = get_args(Metric)            # the pruning solvers
DATASETS = ("wikitext2", "c4", "ptb")                   # perplexity / calibration texts
OFFLOAD_MODES = ("none", "cpu", "disk", "auto")         # where block weights live (core.offload)
PRECISIONS = ("auto", "mixed", "fp32", "fp16", "bf16")       # --dtype (core.devices)
DTYPE_NAMES = PRECISIONS + ("float32", "float16", "bfloat16")  # with the torch spellings
