"""One call from a model to a pruned model and its record, and one call to save it.

    import prunekit
    rt, record = prunekit.prune("smollm2-135m", metric="wanda", sparsity=0.7, allocation="owl",
                                calib_samples=32, calib_seqlen=512)
    prunekit.save(rt, "pruned-model", record)        # HF directory + model card + record

``prune`` runs what ``prunekit prune`` runs (the same ``Session.run``, so the record is the CLI's
``--out`` record without its provenance and timings); options are checked by the allocation's
registered contract before the model loads.
"""
from __future__ import annotations

import json
from pathlib import Path

from prunekit.errors import PrunekitError


def prune(model="smollm2-135m", metric: str = "wanda", sparsity: float | None = 0.5, allocation: str = "uniform", *,
          nm: str | None = None, absorption: dict | None = None, tokenizer=None,
          calib_dataset: str = "c4", calib_samples: int = 128, calib_seqlen: int = 2048, batch_size: int = 8,
          seed: int = 0, eval_datasets=(), eval_seqlen: int = 1024, eval_windows: int | None = None,
          s_min: float = 0.0, s_max: float = 0.99, device: str | None = None, dtype: str | None = None,
          offload: str = "auto", progress: bool = True, **options):
    """Prune ``model`` (a name or path as ``load_model`` takes, a ``Runtime``, or an in-memory
    transformers model with ``tokenizer=``) and return ``(runtime, record)``.

    ``options`` are the allocation's options (``prunekit methods``; e.g. ``lam=0.08`` for OWL);
    ``absorption={...}`` wraps the allocation with the absorption correction (its options, ``{}``
    for the defaults); ``nm="2:4"`` prunes N:M (uniform only). ``eval_datasets`` (e.g.
    ``("wikitext2",)``) adds perplexities to the record."""
    from prunekit.allocation import spec
    from prunekit.core.runtime import Runtime
    from prunekit.experiments.session import Session
    from prunekit.solvers.masks import parse_nm
    nmt = parse_nm(nm)
    if nmt is not None:
        sparsity = nmt[0] / nmt[1]
    if sparsity is None:
        raise PrunekitError("prune needs sparsity= (or nm=)")
    if absorption is not None:
        options = {**absorption, "base": allocation, "base_options": dict(options)}
        allocation = "absorption"
    options = spec(allocation).check_options(options)  # the contract, before anything loads
    runtime = None
    if isinstance(model, Runtime) or not isinstance(model, (str, Path)):
        runtime = Runtime.of(model, tokenizer)
        if runtime.tokenizer is None:
            raise PrunekitError("prune(model) with an in-memory model needs tokenizer=")
        name = runtime.name or type(runtime.model).__name__
    else:
        name = str(model)
    sess = Session(model_name=name, calib_dataset=calib_dataset, calib_samples=calib_samples,
                   calib_seqlen=calib_seqlen, seed=seed, eval_datasets=tuple(eval_datasets),
                   eval_seqlen=eval_seqlen, eval_windows=eval_windows, batch_size=batch_size, device=device,
                   dtype=dtype, offload=offload, restorable=False, progress=progress, runtime=runtime)
    rec = sess.run(allocation, metric, sparsity, nm, evaluate=bool(eval_datasets), s_min=s_min, s_max=s_max,
                   options_=options)
    return sess.runtime, rec


def save(rt, out_dir, record: dict | None = None, dtype: str | None = None) -> Path:
    """Write the runtime's (pruned) model as a HF directory, atomically, with a model card and the
    run ``record`` (``prunekit_record.json``) when one is given; ``dtype`` fp32 | bf16 | fp16."""
    from prunekit import utils
    from prunekit.core.saving import save_model
    from prunekit.reporting.artifacts import model_card
    extra = {}
    if record is not None:
        saved = {**record, "saved_model": str(out_dir),
                 "saved_dtype": dtype or str(rt.dtype).removeprefix("torch.")}
        extra = {"README.md": model_card(saved),
                 "prunekit_record.json": json.dumps(utils._finite(saved), indent=2, default=utils._jsonable,
                                                    allow_nan=False) + "\n"}
    base = (record or {}).get("model") or rt.name
    return save_model(rt, out_dir, dtype=dtype, meta={"base_model": base}, extra_files=extra)
