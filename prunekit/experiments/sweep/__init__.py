"""Sweeps as data: a grid file (YAML) of models × allocations × metrics × sparsities × seeds, run
serially in-process by default or as Ray tasks when asked, resumable from its JSON-lines results.

    prunekit sweep GRID.yaml --out results.jsonl                 # in-process, serial
    prunekit sweep GRID.yaml --out results.jsonl --ray           # local Ray started by prunekit
    prunekit sweep GRID.yaml --out results.jsonl --ray-address auto   # an existing Ray cluster

A grid file (``safe_load`` only; every key optional except ``models`` and ``allocations``)::

    name: comparison-quick
    models: [smollm2-135m]
    allocations:                        # a name, or {method, label, options}
      - uniform
      - {method: owl, options: {lam: 0.08}}
      - {label: absorption(owl), method: absorption, options: {base: owl}}
    method_options: {svnup: {estimator: sliding_window}}   # defaults per method (a cell's own win)
    metrics: [wanda]
    sparsities: [0.7]
    seeds: [0, 1, 2]                    # calibration draws
    calibration: {dataset: c4, samples: 4, seqlen: 128, batch_size: 8}
    evaluation: {datasets: [wikitext2], seqlen: 256, windows: 2}
    zero_shot: {tasks: [arc_easy], limit: 8}
    device: null                        # CUDA when present
    dtype: null                         # auto: mixed on a bf16 CPU (fp32 pruning, bf16 evaluation)

A *cell* is one (model, seed, sparsity, metric, allocation) with its resolved settings; its key is
a hash of those settings. Each finished cell appends one JSON line: the ``Session.run`` record
(the record of ``prunekit prune --out``) plus ``cell``, ``settings``, ``code_version`` and
``status`` (``ok`` or ``error`` with the message). A re-run skips every cell that already has a
record with the same settings and code version; ``retries`` re-runs failed ones.

The in-process path loads each model once and walks its seeds with ``Session.reseed`` (the loop
``Session.sweep`` has always run, which now calls ``iter_session`` here). The Ray path submits one
task per (model, seed) group (one model load per task), requesting a GPU when the cluster has
them and CPUs otherwise; records stream back and are appended as each cell finishes. Ray is
imported only on that path.

The package: ``grid`` (schema, validation, cells), ``store`` (the JSON-lines results file),
``runners`` (in-process and Ray); ``python -m prunekit.experiments.sweep --write-comparison-grids``
regenerates the packaged grids.
"""
from prunekit.experiments.sweep.grid import GRID_DIR, Grid, load_grid, parse_grid, read_grid
from prunekit.experiments.sweep.runners import ray_init, run_cells, run_grid
from prunekit.experiments.sweep.store import (VOLATILE, append_record, cell_key, code_version, comparable, frame,
                                              read_results, source_digest)

__all__ = ["GRID_DIR", "Grid", "load_grid", "parse_grid", "read_grid", "ray_init", "run_cells", "run_grid", "VOLATILE",
           "append_record", "cell_key", "code_version", "comparable", "frame", "read_results", "source_digest"]
