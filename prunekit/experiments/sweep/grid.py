"""Sweep grids: the YAML schema, its validation (every value checked before the first cell runs),
and the cells a grid expands to."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prunekit.errors import PrunekitError

GRID_DIR = Path(__file__).resolve().parents[1] / "grids"
GRID_KEYS = ("name", "description", "models", "allocations", "method_options", "metrics", "sparsities", "groups",
             "seeds", "calibration", "evaluation", "zero_shot", "device", "dtype")
CALIBRATION = {"dataset": "c4", "samples": 32, "seqlen": 512, "batch_size": 8}
EVALUATION = {"datasets": ["wikitext2"], "seqlen": 512, "windows": 16}
ZERO_SHOT = {"tasks": [], "limit": None}



@dataclass
class Grid:
    models: list
    allocations: dict            # label -> (method, options)
    metrics: list
    sparsities: list
    seeds: list
    calibration: dict = field(default_factory=lambda: dict(CALIBRATION))
    evaluation: dict = field(default_factory=lambda: dict(EVALUATION))
    zero_shot: dict = field(default_factory=lambda: dict(ZERO_SHOT))
    device: str | None = None
    dtype: str | None = None
    name: str = "grid"
    groups: list | None = None   # designed subsets [(sparsity, metric, [labels])] instead of the product

    def _combos(self):
        if self.groups is not None:
            return [(s, mt, labs) for s, mt, labs in self.groups]
        return [(s, mt, list(self.allocations)) for s in self.sparsities for mt in self.metrics]

    def cells(self) -> list[dict]:
        """Every cell's resolved settings, in run order: model > seed > (sparsity > metric, or the
        designed groups in order) > allocation."""
        out = []
        for model in self.models:
            for seed in self.seeds:
                for s, mt, labs in self._combos():
                    for lab in labs:
                        method, opts = self.allocations[lab]
                        out.append({"model": model, "seed": seed, "sparsity": s, "metric": mt,
                                    "allocation": lab, "method": method, "options": opts,
                                    "calibration": self.calibration, "evaluation": self.evaluation,
                                    "zero_shot": self.zero_shot, "device": self.device, "dtype": self.dtype})
        return out


def _fail(where: str, msg: str):
    raise PrunekitError(f"{where}: {msg}")


def _list(where, v, kind, check=None, allow_empty=False):
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or (not v and not allow_empty):
        _fail(where, f"expected a {'' if allow_empty else 'non-empty '}list of {kind.__name__}, got {v!r}")
    out = []
    for x in v:
        if kind is float and isinstance(x, int) and not isinstance(x, bool):
            x = float(x)
        if not isinstance(x, kind) or isinstance(x, bool):
            _fail(where, f"expected {kind.__name__} values, got {x!r}")
        if check:
            try:
                check(x)
            except PrunekitError as e:
                _fail(where, str(e))
        out.append(x)
    if len(set(map(repr, out))) != len(out):
        _fail(where, f"duplicate values in {out}")
    return out


def _section(where, v, defaults, checks):
    if v is None:
        return dict(defaults)
    if not isinstance(v, dict):
        _fail(where, f"expected a mapping, got {v!r}")
    unknown = sorted(set(v) - set(defaults))
    if unknown:
        _fail(where, f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(defaults)}")
    out = {**defaults, **v}
    for k, check in checks.items():
        try:
            out[k] = check(out[k])
        except PrunekitError as e:
            _fail(f"{where}.{k}", str(e))
    return out


def _int(lo=1, nullable=False):
    def check(x):
        if x is None and nullable:
            return None
        if not isinstance(x, int) or isinstance(x, bool) or x < lo:
            raise PrunekitError(f"expected an integer >= {lo}{' or null' if nullable else ''}, got {x!r}")
        return x
    return check


def _one_of(choices):
    def check(x):
        if x not in choices:
            raise PrunekitError(f"unknown '{x}'; choose from {', '.join(choices)}")
        return x
    return check


def _options(where, method, opts, method_options):
    """``method``'s options over its grid-wide defaults, checked by the registry contract; a wrapper
    (absorption's ``base``) gets the wrapped method's defaults and check for ``<wraps>_options``."""
    from prunekit.allocation import spec
    sp = spec(method)
    if not isinstance(opts, dict):
        _fail(where, f"options must be a mapping, got {opts!r}")
    merged = {**method_options.get(method, {}), **opts}
    try:
        merged = sp.check_options(merged)
        inner = f"{sp.wraps}_options" if sp.wraps else None
        if inner and inner in sp.options:
            base = merged.get(sp.wraps, sp.options[sp.wraps].default)
            if base is not None:
                merged[inner] = spec(base).check_options({**method_options.get(base, {}),
                                                          **(merged.get(inner) or {})})
    except PrunekitError as e:
        _fail(where, str(e))
    return merged


def parse_grid(obj: dict, where: str = "grid") -> Grid:
    """Validate a grid mapping before any work; every problem is one PrunekitError line."""
    from prunekit.allocation import spec
    from prunekit.core.data import DATASETS
    from prunekit.solvers.masks import check_sparsity_value
    from prunekit.solvers.prune import METRICS
    if not isinstance(obj, dict):
        _fail(where, f"expected a mapping at the top level, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(GRID_KEYS))
    if unknown:
        _fail(where, f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    for k in ("models", "allocations"):
        if k not in obj:
            _fail(where, f"missing '{k}'")
    models = _list(f"{where}: models", obj["models"], str)
    mo = obj.get("method_options") or {}
    if not isinstance(mo, dict):
        _fail(f"{where}: method_options", f"expected a mapping method -> options, got {mo!r}")
    for m, o in mo.items():
        try:
            spec(m)
        except PrunekitError as e:
            _fail(f"{where}: method_options", str(e))
        if not isinstance(o, dict):
            _fail(f"{where}: method_options.{m}", f"expected a mapping, got {o!r}")
        try:
            spec(m).check_options(o)
        except PrunekitError as e:
            _fail(f"{where}: method_options.{m}", str(e))
    allocs = obj["allocations"]
    if not isinstance(allocs, list) or not allocs:
        _fail(f"{where}: allocations", f"expected a non-empty list, got {allocs!r}")
    variants = {}
    for i, a in enumerate(allocs):
        w = f"{where}: allocations[{i}]"
        if isinstance(a, str):
            a = {"method": a}
        if not isinstance(a, dict):
            _fail(w, f"expected a name or a mapping {{method, label, options}}, got {a!r}")
        bad = sorted(set(a) - {"method", "label", "options"})
        if bad or "method" not in a:
            _fail(w, f"keys are method (required), label, options; got {', '.join(map(str, a))}")
        try:
            spec(a["method"])
        except PrunekitError as e:
            _fail(w, str(e))
        label = str(a.get("label") or a["method"])
        if label in variants:
            _fail(w, f"duplicate label '{label}' (give each variant its own label)")
        variants[label] = (a["method"], _options(w, a["method"], a.get("options") or {}, mo))
    groups = None
    if obj.get("groups") is not None:  # a designed grid: only these (sparsity, metric, allocations) runs
        gl = _list(f"{where}: groups", obj["groups"], dict)
        groups = []
        for i, g in enumerate(gl):
            w = f"{where}: groups[{i}]"
            if sorted(g) != ["allocations", "metric", "sparsity"]:
                _fail(w, f"keys are sparsity, metric, allocations; got {', '.join(map(str, g))}")
            try:
                if not isinstance(g["sparsity"], (int, float)) or isinstance(g["sparsity"], bool):
                    raise PrunekitError(f"sparsity must be a number, got {g['sparsity']!r}")
                check_sparsity_value(float(g["sparsity"]))
                _one_of(METRICS)(g["metric"])
            except PrunekitError as e:
                _fail(w, str(e))
            labs = _list(f"{w}: allocations", g["allocations"], str)
            missing = [x for x in labs if x not in variants]
            if missing:
                _fail(w, f"allocation label(s) {', '.join(missing)} are not in 'allocations'")
            groups.append((float(g["sparsity"]), g["metric"], labs))
        if "metrics" in obj or "sparsities" in obj:
            _fail(where, "give either 'groups' or 'metrics'/'sparsities', not both")
    metrics = (list(dict.fromkeys(mt for _, mt, _ in groups)) if groups is not None else
               _list(f"{where}: metrics", obj.get("metrics", ["wanda"]), str, _one_of(METRICS)))
    sparsities = (list(dict.fromkeys(s for s, _, _ in groups)) if groups is not None else
                  _list(f"{where}: sparsities", obj.get("sparsities", [0.5]), float, check_sparsity_value))
    seeds = _list(f"{where}: seeds", obj.get("seeds", [0]), int, _int(0))
    calib = _section(f"{where}: calibration", obj.get("calibration"), CALIBRATION,
                     {"dataset": _one_of(DATASETS), "samples": _int(), "seqlen": _int(), "batch_size": _int()})
    evaluation = _section(f"{where}: evaluation", obj.get("evaluation"), EVALUATION,
                          {"datasets": lambda v: _list("datasets", v, str, _one_of(DATASETS), allow_empty=True),
                           "seqlen": _int(), "windows": _int(nullable=True)})
    zs = _section(f"{where}: zero_shot", obj.get("zero_shot"), ZERO_SHOT,
                  {"tasks": lambda v: _list("tasks", v or [], str, allow_empty=True),
                   "limit": _int(nullable=True)})
    for k in ("device", "dtype", "name"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            _fail(f"{where}: {k}", f"expected a string, got {obj[k]!r}")
    return Grid(models, variants, metrics, sparsities, seeds, calib, evaluation, zs,
                obj.get("device"), obj.get("dtype"), obj.get("name") or "grid", groups)


def check_cells(g: Grid, where: str = "grid") -> None:
    """What the CLI checks before a run, for every cell of the grid before the first one runs: the
    device and dtype, every model (from headers), the sequence lengths against each model's
    positions, block-relative option bounds, zero-shot tasks and their files, the data texts and
    the calibration windows. One PrunekitError line naming the grid key."""
    import os

    from prunekit.allocation import spec
    from prunekit.core.data import check_text
    from prunekit.core.devices import check_device
    from prunekit.core.loading import check_windows, peek_model
    from prunekit.vocabulary import DTYPE_NAMES
    try:
        check_device(g.device)
    except PrunekitError as e:
        _fail(f"{where}: device", str(e).replace("--device ", ""))
    if g.dtype is not None and g.dtype not in DTYPE_NAMES:
        _fail(f"{where}: dtype", f"unknown '{g.dtype}'; choose from {', '.join(DTYPE_NAMES)}")
    tasks = list(g.zero_shot["tasks"])
    if tasks:
        from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS, data_dir, has_local_data
        bad = [t for t in tasks if t not in OFFLINE_TASKS]
        if bad:
            _fail(f"{where}: zero_shot.tasks", f"unknown zero-shot task {', '.join(map(repr, bad))}; "
                                               f"choose from {', '.join(STOCK_TASKS)}")
        offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        for t in tasks:
            if offline and not has_local_data(t):
                _fail(f"{where}: zero_shot.tasks", f"zero-shot task '{t}': its files are not under "
                                                   f"PRUNEKIT_DATA_DIR={data_dir()} and the hub is offline")
    c, e = g.calibration, g.evaluation
    try:
        check_text(c["dataset"], "calib", c["seqlen"] + 1, "calibration.seqlen", samples=c["samples"],
                   samples_flag="calibration.samples")
        for d in e["datasets"]:
            check_text(d, "test", e["seqlen"], "evaluation.seqlen")
    except PrunekitError as err:
        _fail(where, str(err))
    for m in g.models:
        w = f"{where}: models: '{m}'"
        try:
            info = peek_model(m)
        except PrunekitError as err:
            _fail(w, str(err))
        if info.max_positions:
            for key, n in (("calibration.seqlen", c["seqlen"]), ("evaluation.seqlen", e["seqlen"])):
                if key.startswith("evaluation") and not e["datasets"]:
                    continue
                if n > info.max_positions:
                    _fail(w, f"{key} {n} exceeds the model's {info.max_positions} positions")
        # every allocation at every sparsity it runs at: bounds relative to the blocks and the target
        for target, label in dict.fromkeys((s, lab) for s, _, labs in g._combos() for lab in labs):
            method, opts = g.allocations[label]
            sp = spec(method)
            try:
                sp.check_options(opts, info.num_blocks, target)
                inner = f"{sp.wraps}_options" if sp.wraps else None
                if inner and opts.get(inner) is not None:
                    spec(opts.get(sp.wraps) or sp.options[sp.wraps].default).check_options(
                        opts[inner], info.num_blocks, target)
            except PrunekitError as err:
                _fail(f"{w}: allocation '{label}' at sparsity {target:g}", str(err))
        try:
            check_windows(c["dataset"], c["samples"], c["seqlen"], info, "calibration.samples")
        except PrunekitError as err:
            _fail(w, str(err))


def _grid_path(path_or_name) -> Path:
    p = Path(path_or_name)
    if not p.exists() and (GRID_DIR / f"{path_or_name}.yaml").is_file():
        p = GRID_DIR / f"{path_or_name}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(q.stem for q in GRID_DIR.glob("*.yaml")))
        raise PrunekitError(f"grid file {p} not found (packaged grids: {names})")
    return p


def read_grid(path_or_name) -> dict:
    """The raw mapping of a grid file or packaged grid name (``comparison-cpu``), unvalidated, so a
    caller (a notebook's parameters) can override keys before ``load_grid`` / ``run_grid``."""
    import yaml
    p = _grid_path(path_or_name)
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PrunekitError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None


def load_grid(path_or_obj) -> Grid:
    """A validated ``Grid`` from a YAML file, a packaged grid name (``comparison-quick``) or a mapping."""
    if isinstance(path_or_obj, Grid):
        return path_or_obj
    if isinstance(path_or_obj, dict):
        return parse_grid(path_or_obj)
    return parse_grid(read_grid(path_or_obj), str(_grid_path(path_or_obj)))
