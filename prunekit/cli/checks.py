"""Every check that can fail, run before any model loads: arguments, method options (the registry's
contract), output locations, data files, the environment and the model (from headers only)."""
from __future__ import annotations

import os

from prunekit.cli.parser import collect_options
from prunekit.core.data import check_text as _check_text
from prunekit.core.devices import check_device
from prunekit.errors import PrunekitError

def _datasets(text: str, flag: str) -> list[str]:
    from prunekit.core.data import DATASETS
    names = [d.strip() for d in text.split(",") if d.strip()]
    for d in names:
        if d not in DATASETS:
            raise PrunekitError(f"unknown {flag} dataset '{d}'; choose from {', '.join(DATASETS)}")
    return list(dict.fromkeys(names))


def _check_environment() -> None:
    """Variables that would otherwise fail deep inside a run."""
    from prunekit.core.cache import cache_dir
    th = os.environ.get("PRUNEKIT_THREADS", "")
    if th and not (th.isdigit() and int(th) >= 1):
        raise PrunekitError(f"PRUNEKIT_THREADS={th!r} must be a positive integer")
    c = cache_dir()
    probe = c
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PrunekitError(f"PRUNEKIT_CACHE={c} is not a writable directory ({probe} is in the way)")


RECIPE_HEAD = b"# llm-compressor recipe written by prunekit"


def _is_record(data: bytes) -> bool:
    import json
    try:
        rec = json.loads(data)
    except ValueError:
        return False
    return isinstance(rec, dict) and "model" in rec and ("versions" in rec or "provenance" in rec)


def _check_own(path: str, flag: str, ours) -> None:
    """An existing output file is replaced only when it is empty or provably prunekit's own (a
    record / recipe of an earlier run); a file of the user's is refused, untouched."""
    from prunekit.utils import read_regular
    if not os.path.isfile(path):
        return
    try:
        data = read_regular(path, 256 << 20, f"{flag} ")
    except (OSError, PrunekitError):
        raise PrunekitError(f"{flag} {path} exists and cannot be read; refusing to replace it") from None
    if data.strip() and not ours(data):
        raise PrunekitError(f"{flag} {path} exists and was not written by prunekit; choose another name "
                            "or remove it")


def _check_collisions(args) -> None:
    """Two outputs of one run never name the same path, nor a file inside the saved model."""
    outs = {flag: os.path.abspath(v) for flag, v in (("--out", args.out), ("--export-recipe", args.export_recipe),
                                                      ("--save-model", args.save_model)) if v}
    items = list(outs.items())
    for i, (fa, a) in enumerate(items):
        for fb, b in items[i + 1:]:
            if a == b:
                raise PrunekitError(f"{fa} and {fb} name the same path")
    if args.save_model:
        root = outs["--save-model"] + os.sep
        for flag, v in outs.items():
            if flag != "--save-model" and v.startswith(root):
                raise PrunekitError(f"{flag} {v} lies inside --save-model {args.save_model}; write it elsewhere")


def validate(args, table: dict | None = None) -> dict:
    """Every check that can fail, before the model loads. Returns the prepared run settings:
    ``evals``, ``zero_shot``, ``allocation`` and its checked ``options``, ``model_info``."""
    from prunekit.core.loading import peek_model
    from prunekit.utils import check_writable
    prep: dict = {}
    if args.offload == "disk":  # the offload work directory must be writable: check before loading
        import shutil

        from prunekit.core.cache import cache_dir
        from prunekit.core.offload import make_work_dir
        shutil.rmtree(make_work_dir(cache_dir() / "offload"), ignore_errors=True)
    prep["evals"] = _datasets(args.eval, "--eval")
    zs = [t.strip() for t in args.zero_shot.split(",") if t.strip()]
    if zs:
        from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS
        bad = [t for t in zs if t not in OFFLINE_TASKS]
        if bad:
            raise PrunekitError(f"unknown zero-shot task {', '.join(map(repr, bad))}; choose from {', '.join(STOCK_TASKS)}")
        from prunekit.evaluation.tasks import data_dir, has_local_data
        offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        for t in zs:
            if offline and not has_local_data(t):
                raise PrunekitError(f"zero-shot task '{t}': its files ({', '.join(OFFLINE_TASKS[t].files)}) are not "
                                    f"under PRUNEKIT_DATA_DIR={data_dir()} and the hub is offline")
    prep["zero_shot"] = list(dict.fromkeys(zs)) or None
    check_device(args.device)
    _check_environment()
    for flag, val in (("--out", args.out), ("--save-model", getattr(args, "save_model", None))):
        if val is not None and not val.strip():
            raise PrunekitError(f"{flag} needs a path, got an empty string")
    if args.out:
        check_writable(args.out, "--out")
        _check_own(args.out, "--out", _is_record)
    from prunekit.evaluation.zeroshot import resolve_batch_size
    resolve_batch_size(args.zero_shot_batch_size, "cpu")
    if args.cmd == "prune":
        from prunekit.allocation import spec
        from prunekit.solvers.masks import parse_nm
        nm = parse_nm(args.nm)
        if nm is not None:
            if args.sparsity is not None and abs(args.sparsity - nm[0] / nm[1]) > 1e-9:
                raise PrunekitError(f"--sparsity {args.sparsity} contradicts --nm {args.nm} (= {nm[0] / nm[1]})")
            if args.allocation != "uniform" or args.absorption_correction:
                raise PrunekitError(f"--nm {args.nm} prunes every layer alike; it needs --allocation uniform "
                                    "without --absorption-correction")
            args.sparsity = nm[0] / nm[1]
        if args.sparsity is None:
            raise PrunekitError("--sparsity is required (or give --nm)")
        if args.s_min > args.s_max:
            raise PrunekitError(f"--s-min {args.s_min} is above --s-max {args.s_max}")
        if not (args.s_min <= args.sparsity <= args.s_max):
            raise PrunekitError(f"--sparsity {args.sparsity} lies outside [--s-min {args.s_min}, --s-max {args.s_max}]")
        if args.save_dtype and not args.save_model:
            raise PrunekitError("--save-dtype needs --save-model DIR")
        if args.export_recipe:
            from prunekit.reporting.artifacts import RECIPE_MODIFIERS
            if args.metric not in RECIPE_MODIFIERS:
                raise PrunekitError(f"--export-recipe needs --metric {' or '.join(RECIPE_MODIFIERS)} "
                                    f"(llm-compressor has no per-layer {args.metric} modifier)")
            check_writable(args.export_recipe, "--export-recipe")
            _check_own(args.export_recipe, "--export-recipe", lambda b: b.startswith(RECIPE_HEAD))
        if args.save_model:
            check_writable(args.save_model, "--save-model", directory=True)
        _check_collisions(args)
        opts_by_method = collect_options(args, args.allocation, table or {})
        options = dict(opts_by_method.get(args.allocation, {}))
        allocation = args.allocation
        if args.absorption_correction:
            options = {**opts_by_method.get("absorption", {}), "base": args.allocation, "base_options": options}
            allocation = "absorption"
        info = peek_model(args.model)
        nb = info.num_blocks
        options = spec(allocation).check_options(options, nb, args.sparsity)  # the method's declared contract
        if allocation == "absorption":
            base = options.get("base", spec("absorption").options["base"].default)
            options["base_options"] = spec(base).check_options(options.get("base_options") or {}, nb, args.sparsity)
        if nm is not None and info.widths and any(w % nm[1] for w in info.widths):
            raise PrunekitError(f"--nm {args.nm}: M={nm[1]} does not divide the layer widths {info.widths} "
                                f"of model '{args.model}'")
        held = {**options, **(options.get("base_options") or {})}.get("heldout") if allocation in (
            "svnup", "absorption") else None
        if isinstance(held, str):
            _datasets(held, "--svnup-heldout")
            _check_text(held, "calib")
        prep.update(allocation=allocation, options=options)
        seqlens = {"--calib-seqlen": args.calib_seqlen, "--eval-seqlen": args.eval_seqlen}
        _check_text(args.calib_dataset, "calib", args.calib_seqlen + 1, "--calib-seqlen", samples=args.calib_samples)
    else:
        info = peek_model(args.model)
        seqlens = {"--eval-seqlen": args.eval_seqlen}
    prep["model_info"] = info
    if args.cmd == "prune":
        from prunekit.core.loading import check_windows
        check_windows(args.calib_dataset, args.calib_samples, args.calib_seqlen, info)
    if info.max_positions:
        for flag, n in seqlens.items():
            if flag == "--eval-seqlen" and not prep["evals"]:
                continue
            if n > info.max_positions:
                raise PrunekitError(f"{flag} {n} exceeds the {info.max_positions} positions of model '{args.model}'")
    for d in prep["evals"]:
        _check_text(d, "test", args.eval_seqlen, "--eval-seqlen")
    return prep


def validate_demo(args) -> None:
    """``prunekit demo``, like prune before the model loads: the cache and offload directories, the
    model from its headers (``peek_model``: config, weight headers, tensor shapes), the profile's
    sequence lengths against the model's positions, and the C4 / WikiText-2 files it reads."""
    from prunekit.core.loading import peek_model
    from prunekit.experiments.profiles import profile
    _check_environment()
    if args.offload == "disk":
        import shutil

        from prunekit.core.cache import cache_dir
        from prunekit.core.offload import make_work_dir
        shutil.rmtree(make_work_dir(cache_dir() / "offload"), ignore_errors=True)
    p = profile(args.profile)
    info = peek_model(args.model)
    what = f"--profile {args.profile}"
    for label, n in (("calibration", p["calib_seqlen"]), ("evaluation", p["eval_seqlen"])):
        if info.max_positions and n > info.max_positions:
            raise PrunekitError(f"{what}: its {label} windows of {n} tokens exceed the {info.max_positions} "
                                f"positions of model '{args.model}'; use a smaller profile")
    _check_text("c4", "calib", p["calib_seqlen"] + 1, f"{what} (calibration seqlen)", samples=p["calib_samples"],
                samples_flag=f"{what} (calibration samples)")
    _check_text("wikitext2", "test", p["eval_seqlen"], f"{what} (evaluation seqlen)")
