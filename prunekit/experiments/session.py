"""Experiment: the end-to-end run (data → calibrate → score → allocate → prune → evaluate) as a
reusable session, shared by the CLI, the notebooks and the benchmarks.

A ``Session`` loads the model once into a ``Runtime`` (``offload`` none | cpu | disk | auto decides
where block weights live, ``core.offload``), or takes the ``runtime`` it is given, keeps one lazy weight snapshot (``core.snapshot``: a block's dense
weights are copied the first time it is pruned) and reuses one calibration set and one
``Statistics`` (so a sweep of allocations × sparsities runs the dense statistics pass once).
``session.run(...)`` restores the dense weights, prunes, evaluates and returns the JSON-ready
record. ``restorable=False`` (a single CLI run) keeps no snapshot at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from prunekit import utils
from prunekit.utils import bars_disabled
from prunekit.allocation import allocate, with_solver_metric
from prunekit.allocation.plan import SparsityPlan
from prunekit.core.data import calibration_data
from prunekit.core.aliases import DEFAULT_MODEL
from prunekit.core.loading import load_model
from prunekit.core.runtime import Runtime
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.evaluation.perplexity import perplexity, record_fields
from prunekit.experiments.profiles import profile
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.masks import parse_nm
from prunekit.solvers.prune import METRICS, prune_model


@dataclass
class Session:
    model_name: str = DEFAULT_MODEL
    calib_dataset: str = "c4"
    calib_samples: int = 32
    calib_seqlen: int = 512
    seed: int = 0
    eval_datasets: tuple[str, ...] = ("wikitext2",)
    eval_seqlen: int = 512
    eval_windows: int | None = 16
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    offload: str = "auto"
    restorable: bool = True
    zero_shot_batch_size: int | str = 1
    progress: bool = True
    runtime: Runtime | None = None
    timings: dict = field(default_factory=dict)

    def __post_init__(self):
        t0 = time.perf_counter()
        if self.runtime is None:
            self.runtime = load_model(self.model_name, self.device, self.dtype, offload=self.offload,
                                      calib_tokens=self.calib_samples * self.calib_seqlen)
        elif not isinstance(self.runtime, Runtime) or self.runtime.tokenizer is None:
            raise PrunekitError("Session(runtime=...) takes a Runtime with a tokenizer "
                                "(load_model's, or Runtime(model, tokenizer, name=...))")
        self.timings["load_s"] = time.perf_counter() - t0
        self.layout = self.runtime.layout
        # the one dense snapshot: copies a block lazily when it is first pruned, restores on demand
        self._snap = weight_snapshot(self.runtime).__enter__() if self.restorable else None
        t0 = time.perf_counter()
        utils.seed_everything(self.seed)
        self.calib = calibration_data(self.calib_dataset, self.tokenizer, self.calib_samples,
                                      self.calib_seqlen, self.seed)
        self.timings["data_s"] = time.perf_counter() - t0
        self.stats = Statistics(self.runtime, self.calib, batch_size=self.batch_size, progress=self.progress)
        self._dense_memo: dict = {}
        self._pruned = False  # weights differ from the dense copy (set by run)

    @property
    def model(self):
        """The transformers model (``runtime.model``)."""
        return self.runtime.model

    @property
    def tokenizer(self):
        return self.runtime.tokenizer

    def provenance(self) -> dict:
        """The model's provenance entry (reports, records): its fingerprint is the dense model's,
        taken by ``Statistics`` before anything was pruned."""
        rt = self.runtime
        return {"id": self.model_name, "fingerprint": self.stats.fingerprint, "origin": rt.origin,
                "device": str(rt.device), "dtype": str(rt.dtype).removeprefix("torch."), "precision": rt.precision}

    @classmethod
    def from_profile(cls, name: str = "quick", **overrides) -> "Session":
        p = profile(name)
        p.pop("heldout_samples", None)
        return cls(**{**p, **overrides})

    def reseed(self, seed: int) -> "Session":
        """Draw a new calibration set with ``seed`` (model and dense copy reused); returns self."""
        self.restore()
        self.seed = seed
        utils.seed_everything(seed)
        self.calib = calibration_data(self.calib_dataset, self.tokenizer, self.calib_samples,
                                      self.calib_seqlen, seed)
        self.stats = Statistics(self.runtime, self.calib, batch_size=self.batch_size, progress=self.progress)
        return self

    @torch.no_grad()
    def restore(self) -> None:
        """Put the dense block weights back (between runs of a sweep); a no-op while dense."""
        if self._snap is not None:
            self._snap.restore()
        elif self._pruned:
            raise PrunekitError("this Session was created with restorable=False and its model is pruned; "
                                "create a new Session (or pass restorable=True) to run again")
        self._pruned = False

    def close(self) -> None:
        """Restore the dense weights and stop snapshotting."""
        if self._snap is not None:
            self._snap.__exit__(None, None, None)
            self._snap = None

    def plan(self, allocation: str = "uniform", sparsity: float = 0.5, **options) -> SparsityPlan:
        self.restore()
        return allocate(allocation, self.stats, sparsity, **options)

    def evaluate(self, datasets=None) -> dict:
        out = {}
        for d in datasets or self.eval_datasets:
            out[d] = perplexity(self.runtime, d, self.eval_seqlen, self.eval_windows,
                                progress=self.progress)
        return out

    def dense(self) -> dict:
        """Dense perplexities (memoised)."""
        key = (tuple(self.eval_datasets), self.eval_seqlen, self.eval_windows)
        if key not in self._dense_memo:
            self.restore()
            self._dense_memo[key] = self.evaluate()
        return {d: r["perplexity"] for d, r in self._dense_memo[key].items()}

    def dense_zero_shot(self, tasks, limit: int | None = None) -> dict:
        """Zero-shot accuracy of the dense model (memoised): the reference row of a pruned run."""
        from prunekit.evaluation.perplexity import zero_shot
        key = ("zero_shot", tuple(tasks), limit)
        if key not in self._dense_memo:
            self.restore()
            self._dense_memo[key] = zero_shot(self.runtime, list(tasks), limit=limit,
                                              batch_size=self.zero_shot_batch_size)
        return self._dense_memo[key]

    def sweep(self, allocations, metrics, sparsities, options: dict | None = None, *, seeds=None,
              on_run=None, **run_kw):
        """The one experiment loop: every seed × sparsity × metric × allocation through ``run``.

        ``allocations`` is a list of registered names or a dict ``label -> (method, options)`` (variants
        of one method, e.g. an ablation); ``options`` maps a method name to default keyword options
        (a variant's own options win). Methods that are not registered are skipped and listed in
        ``df.attrs['skipped']``. ``seeds`` redraws the calibration set per seed (``reseed``).
        ``on_run(rec, row)`` may add columns measured on the pruned model before it is restored.
        One row per run: [seed,] allocation (the label), method, metric, sparsity, global_sparsity,
        ppl_<dataset>, [zero_shot_mean,] planned, allocate_s, seconds."""
        import pandas as pd
        from prunekit.utils import tqdm

        from prunekit.experiments.cells import expand, iter_session
        cells, skipped = expand(allocations, metrics, sparsities, seeds, options)
        bar = tqdm(cells, desc="sweep", disable=bars_disabled(self.progress))
        rows = [r for _, _, r in iter_session(self, bar, run_kw, on_run)]
        df = pd.DataFrame(rows)
        df.attrs["skipped"] = skipped
        return df

    def run(self, allocation: str = "uniform", metric: str = "wanda", sparsity: float = 0.5,
            nm: str | None = None, evaluate: bool = True, zero_shot: list[str] | None = None,
            zero_shot_limit: int | None = None, *, options_: dict | None = None, **options) -> dict:
        """Prune the dense model with ``allocation`` + ``metric`` at ``sparsity`` and evaluate it.
        Method options come as keywords or, when one is named like a parameter of ``run`` itself
        (OWL's ``metric``), in the ``options_`` dict."""
        if metric not in METRICS:
            raise PrunekitError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
        nmt = parse_nm(nm)
        if nmt is not None:
            if allocation != "uniform":
                raise PrunekitError("N:M pruning is uniform by construction; use --allocation uniform")
            sparsity = nmt[0] / nmt[1]
        t = {}
        t0 = time.perf_counter()
        # metric-dependent allocations (MRP, absorption around it) rank by the solver's own score
        options = with_solver_metric(allocation, {**(options_ or {}), **options}, metric)
        plan = self.plan(allocation, sparsity, **options)
        t["allocate"] = time.perf_counter() - t0
        self.restore()
        self._pruned = True
        rep = prune_model(self.runtime, self.calib.input_ids, plan, metric, nmt, self.batch_size,
                          progress=self.progress)
        t["calibrate_prune"] = rep.pop("prune_s")
        rec = {"model": self.model_name, "dtype": self.runtime.precision, "metric": metric, "allocation": allocation,
               "allocation_options": plan.options, "nm": nm, "target_sparsity": sparsity,
               "planned_sparsity": plan.per_block.tolist(), **rep,
               "calibration": {"dataset": self.calib_dataset, "samples": self.calib_samples,
                               "seqlen": self.calib_seqlen},
               "seed": self.seed, "plan_extras": plan.to_dict()["extras"], "model_provenance": self.provenance()}
        data_sha = {f"calib:{self.calib_dataset}": self.calib.data_sha256}
        if evaluate:
            t0 = time.perf_counter()
            ev = self.evaluate()
            t["eval"] = time.perf_counter() - t0
            fields = record_fields(ev, self.eval_seqlen, self.eval_windows)
            data_sha.update(fields.pop("data_sha256"))
            rec.update(fields)
        if zero_shot:
            from prunekit.evaluation.perplexity import zero_shot as zs
            t0 = time.perf_counter()
            rec["zero_shot"] = zs(self.runtime, zero_shot, limit=zero_shot_limit,
                                  batch_size=self.zero_shot_batch_size)
            t["zero_shot"] = time.perf_counter() - t0
        rec["timings_s"] = t
        rec["data_sha256"] = data_sha
        rec["versions"] = utils.versions()
        return rec
