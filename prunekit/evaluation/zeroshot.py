"""Zero-shot accuracy of the in-memory (pruned) model with STOCK lm-eval (docs/methods.md §0.4).

Users always pass stock lm-eval task names (boolq, rte, hellaswag, winogrande, arc_easy,
arc_challenge, openbookqa, piqa, lambada_openai). When ``$PRUNEKIT_DATA_DIR`` holds a task's files,
the offline twin ``prunekit_<task>`` is used (stock YAML included unchanged, documents converted from
the local file, see :mod:`prunekit.evaluation.tasks` and docs/zero_shot.md); otherwise the stock task itself,
which downloads its data from the Hugging Face hub.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

from prunekit.core.data import data_dir as _env_data_dir
from prunekit.errors import PrunekitError
from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS, has_local_data, write_task_configs

_LM_EVAL_METRICS = ("acc", "acc_norm", "perplexity")


class _DropCustomDatasetNotice(logging.Filter):
    """lm-eval warns on every task with a custom_dataset loader about CLI --metadata; not relevant here."""
    def filter(self, record):
        return "Custom kwargs can be passed to `--metadata`" not in str(record.msg)


def _task_list(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(dict.fromkeys(tasks or []))  # de-duplicate, keep order
    if not tasks:
        raise PrunekitError(f"no zero-shot task given; choose from {', '.join(STOCK_TASKS)}")
    bad = [t for t in tasks if t not in OFFLINE_TASKS]
    if bad:
        raise PrunekitError(f"unknown zero-shot task {', '.join(map(repr, bad))}; "
                            f"choose from {', '.join(STOCK_TASKS)}")
    return tasks


def _num(v):
    """lm-eval reports a missing stderr as the string 'N/A'."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def resolve_tasks(tasks, root: Path | str | None = None) -> dict[str, str | None]:
    """{stock name: offline task name, or None if it will run online from the hub}."""
    tasks = _task_list(tasks)
    root = _env_data_dir() if root is None else Path(root)
    out = {}
    for t in tasks:
        if root is not None and has_local_data(t, root):
            out[t] = OFFLINE_TASKS[t].name
        else:
            if root is not None:
                warnings.warn(f"zero-shot task '{t}': files {', '.join(OFFLINE_TASKS[t].files)} not all "
                              f"under {root}; using the stock task (downloads from the HF hub)",
                              stacklevel=3)
            out[t] = None
    return out


def resolve_batch_size(batch_size: int | str, device) -> int | str:
    """An integer >= 1, or 'auto': lm-eval's own detection on CUDA (largest batch that does not run
    out of memory); on a CPU nothing runs out of memory to stop that probe (it would time five
    forwards at its cap of 64), so 'auto' means 8 there."""
    if isinstance(batch_size, str) and batch_size.strip().lower() == "auto":
        return "auto" if getattr(device, "type", str(device)) == "cuda" else 8
    try:
        b = int(batch_size)
    except (TypeError, ValueError):
        b = 0
    if b < 1:
        raise PrunekitError(f"zero-shot batch size '{batch_size}' must be an integer >= 1 or 'auto'")
    return b


def zero_shot(rt, tasks, limit: int | float | None = None, batch_size: int | str = 1,
              num_fewshot: int = 0, seed: int = 0, bootstrap_iters: int = 1000,
              data_dir: Path | str | None = None, max_length: int | None = None, per_example: bool = False) -> dict:
    """Stock lm-eval ``HFLM`` + ``simple_evaluate`` on the runtime's model (in memory, with its tokenizer).

    Returns ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "source"}, ...,
    "mean_acc": mean of acc over the tasks}``; acc_norm is None for tasks without it (boolq, rte,
    winogrande, lambada_openai); lambada_openai also has perplexity and perplexity_stderr.
    ``limit`` = first N documents per task (or a fraction) as in lm-eval; ``seed`` seeds python,
    numpy, torch and the few-shot sampler. ``bootstrap_iters`` only affects stderrs lm-eval
    bootstraps (lambada perplexity; acc stderrs are analytic); lm-eval's default is 100000.
    ``data_dir`` overrides $PRUNEKIT_DATA_DIR; ``max_length`` overrides the model's context length.
    ``per_example``: also return each task's per-document 0/1 ``acc`` in document order
    (``per_example_acc``; no document text), for paired bootstraps over examples.
    """
    names = resolve_tasks(tasks, data_dir)
    if rt is None or getattr(rt, "tokenizer", None) is None:
        raise PrunekitError("zero_shot needs a Runtime with its tokenizer (load_model returns one)")
    model, tokenizer = rt.model, rt.tokenizer
    if num_fewshot is None or int(num_fewshot) < 0:
        raise PrunekitError(f"num_fewshot={num_fewshot} must be an integer >= 0")
    batch_size = resolve_batch_size(batch_size, rt.device)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise PrunekitError("lm-eval is not installed; run `pip install 'prunekit[eval]'`") from e

    root = Path(data_dir) if data_dir is not None else _env_data_dir()
    offline = [t for t, n in names.items() if n is not None]
    online = [t for t, n in names.items() if n is None]
    lm_names = {t: (n or t) for t, n in names.items()}

    tmp = tempfile.mkdtemp(prefix="prunekit-lmeval-tasks-")
    was_training = model.training
    task_log, quiet = logging.getLogger("lm_eval.api.task"), _DropCustomDatasetNotice()
    task_log.addFilter(quiet)
    t0 = time.perf_counter()
    try:
        if offline:
            write_task_configs(tmp, offline, root)
        # Indexing the ~15k stock YAMLs is slow; offline twins include their stock YAML by
        # absolute path, so the stock index is only needed when some task runs online.
        tm = TaskManager(include_path=tmp, include_defaults=bool(online))
        try:
            loaded = tm.load(list(lm_names.values()))
        except PrunekitError:
            raise
        except Exception as e:
            where = (f"online tasks {', '.join(online)} need the HF hub or PRUNEKIT_DATA_DIR pointing at "
                     f"a copy of shared/data" if online else "check the files under " + str(root))
            raise PrunekitError(f"could not load zero-shot tasks ({type(e).__name__}: {e}); {where}") from e
        task_objs = [loaded["tasks"][n] for n in lm_names.values()]

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        with rt.evaluating() if hasattr(rt, "evaluating") else nullcontext():  # mixed: bf16 autocast
            res = simple_evaluate(
                model=lm, tasks=task_objs, task_manager=tm, num_fewshot=int(num_fewshot), limit=limit,
                bootstrap_iters=bootstrap_iters, log_samples=bool(per_example), random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        model.train(was_training)  # HFLM switches the model to eval mode
        task_log.removeFilter(quiet)
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0

    out: dict = {}
    for t, n in lm_names.items():
        r = res["results"][n]
        row = {}
        for m in _LM_EVAL_METRICS:
            if f"{m},none" in r or m != "perplexity":
                row[m] = _num(r.get(f"{m},none"))
                row[f"{m}_stderr"] = _num(r.get(f"{m}_stderr,none"))
        row["n"] = int(res["n-samples"][n]["effective"])
        if per_example:
            logged = sorted(res["samples"][n], key=lambda e: e["doc_id"])
            row["per_example_acc"] = [float(e["acc"]) for e in logged]
        row["source"] = f"offline:{root / OFFLINE_TASKS[t].files[0]}" if names[t] else f"hub:{t}"
        out[t] = row
    accs = [out[t]["acc"] for t in lm_names if out[t]["acc"] is not None]
    out["mean_acc"] = sum(accs) / len(accs) if accs else None
    logging.getLogger(__name__).info("zero-shot %s in %.1f s", ", ".join(lm_names), seconds)
    return out
