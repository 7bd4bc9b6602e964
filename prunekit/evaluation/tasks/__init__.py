"""Offline twins of nine stock lm-eval tasks, reading the files under ``$PRUNEKIT_DATA_DIR``.

A twin is a small lm-eval YAML that ``include``s the stock task YAML of the installed lm-eval
unchanged (prompt, choices, target, metrics, version) and overrides only where the documents come
from: a ``custom_dataset`` loader in :mod:`prunekit.evaluation.tasks.utils` that converts the local file into
the stock task's Hugging Face schema. Everything after loading is stock lm-eval code.

Why rendered at run time: lm-eval YAML cannot expand environment variables and resolves ``include``
relative to the YAML file, while the stock YAMLs live inside the installed lm-eval package. So
:func:`write_task_configs` renders the concrete YAMLs (absolute include path + data directory) into
a directory that is then given to ``TaskManager(include_path=...)``. The same directory works with
the lm-eval CLI: ``lm_eval --include_path DIR --tasks prunekit_boolq ...``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core.data import data_dir
from prunekit.errors import PrunekitError
from prunekit.utils import atomic_write_text

PREFIX = "prunekit_"


@dataclass(frozen=True)
class OfflineTask:
    """How the offline twin of stock task ``stock`` is built."""
    stock: str                      # the lm-eval task name users pass
    stock_yaml: str                 # the stock YAML, relative to lm_eval/tasks
    files: tuple[str, ...]          # files under the data directory the loader reads
    splits: dict = field(default_factory=dict)  # split overrides (stock ones we lack -> null)

    @property
    def name(self) -> str:
        return PREFIX + self.stock

    @property
    def loader(self) -> str:
        return f"load_{self.stock}"


# The stock train splits are not available offline, so every training_split is null (only matters
# for num_fewshot > 0: lm-eval then draws shots from the validation split, else from the eval split).
_NO_TRAIN = {"training_split": None}
OFFLINE_TASKS: dict[str, OfflineTask] = {t.stock: t for t in (
    OfflineTask("boolq", "super_glue/boolq/default.yaml", ("boolq/val.jsonl",),
                {**_NO_TRAIN, "validation_split": "validation"}),
    OfflineTask("rte", "glue/rte/default.yaml", ("rte/val.jsonl",),
                {**_NO_TRAIN, "validation_split": "validation"}),
    OfflineTask("hellaswag", "hellaswag/hellaswag.yaml", ("hellaswag/hellaswag_val_full.llamacpp.txt.bz2",),
                {**_NO_TRAIN, "validation_split": "validation", "test_split": None}),
    OfflineTask("winogrande", "winogrande/default.yaml", ("winogrande/winogrande_xl_dev.llmfoundry.jsonl",),
                {**_NO_TRAIN, "validation_split": "validation"}),
    OfflineTask("arc_easy", "arc/arc_easy.yaml",
                ("arc_easy/ARC-Easy-Test.jsonl", "arc_easy/ARC-Easy-Dev.jsonl"),
                {**_NO_TRAIN, "validation_split": "validation", "test_split": "test"}),
    OfflineTask("arc_challenge", "arc/arc_challenge.yaml",
                ("arc_challenge/ARC-Challenge-Test.jsonl", "arc_challenge/ARC-Challenge-Dev.jsonl"),
                {**_NO_TRAIN, "validation_split": "validation", "test_split": "test"}),
    # only the test split exists offline (stock also has train/validation)
    OfflineTask("openbookqa", "openbookqa/openbookqa.yaml", ("openbookqa/openbookqa_test.llmfoundry.jsonl",),
                {**_NO_TRAIN, "validation_split": None, "test_split": "test"}),
    OfflineTask("piqa", "piqa/piqa.yaml", ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
                {**_NO_TRAIN, "validation_split": "validation", "test_split": None}),
    OfflineTask("lambada_openai", "lambada/lambada_openai.yaml", ("lambada_openai/lambada_test.jsonl",),
                {**_NO_TRAIN, "validation_split": None, "test_split": "test"}),
)}
STOCK_TASKS = tuple(OFFLINE_TASKS)

# ${...} placeholders are filled with JSON strings (valid YAML double-quoted scalars).
_TEMPLATE = """\
# Rendered by prunekit.evaluation.tasks.write_task_configs: offline twin of lm-eval task `{stock}`.
# The stock YAML is included unchanged; only the document source (and splits we lack) differ.
include: {include}
task: {name}
tag: [prunekit_offline]
dataset_path: {dataset_path}
dataset_name: null
dataset_kwargs:
  prunekit_data_dir: {data_dir}
custom_dataset: !function prunekit.evaluation.tasks.utils.{loader}
{splits}
"""


def stock_tasks_dir() -> Path:
    try:
        import lm_eval
    except ImportError as e:
        raise PrunekitError("lm-eval is not installed; run `pip install 'prunekit[eval]'`") from e
    return Path(lm_eval.__file__).parent / "tasks"


def stock_yaml(stock: str) -> Path:
    """Absolute path of the stock YAML, checked to still define task ``stock``."""
    from lm_eval.tasks._yaml_loader import load_yaml
    t = OFFLINE_TASKS[stock]
    path = stock_tasks_dir() / t.stock_yaml
    try:
        ok = path.is_file() and load_yaml(path, resolve_func=False).get("task") == stock
    except Exception:  # noqa: BLE001 - any parse problem means the layout changed
        ok = False
    if not ok:
        import lm_eval
        raise PrunekitError(
            f"stock lm-eval task '{stock}' is not at {path} (lm-eval {getattr(lm_eval, '__version__', '?')}); "
            f"update prunekit.evaluation.tasks.OFFLINE_TASKS or install lm-eval 0.4.13")
    return path


def has_local_data(stock: str, root: Path | None = None) -> bool:
    """True if every file the offline twin of ``stock`` reads exists under ``root`` (default env)."""
    root = data_dir() if root is None else Path(root)
    return root is not None and all((root / f).is_file() for f in OFFLINE_TASKS[stock].files)


def render_config(stock: str, root: Path | str) -> str:
    """The concrete YAML text of the offline twin of ``stock`` reading files under ``root``."""
    t = OFFLINE_TASKS[stock]
    root = Path(root).resolve()
    q = json.dumps
    splits = "\n".join(f"{k}: {'null' if v is None else q(v)}" for k, v in t.splits.items())
    return _TEMPLATE.format(stock=stock, include=q(str(stock_yaml(stock))), name=t.name,
                            dataset_path=q(str(root / t.files[0])), data_dir=q(str(root)),
                            loader=t.loader, splits=splits)


def write_task_configs(dest: Path | str, tasks=None, root: Path | str | None = None) -> dict[str, str]:
    """Write ``prunekit_<task>.yaml`` for each stock name in ``tasks`` (default: all nine) into
    ``dest``; returns {stock name: offline task name}. ``root`` defaults to $PRUNEKIT_DATA_DIR."""
    root = data_dir() if root is None else Path(root)
    if root is None:
        raise PrunekitError("no data directory: set PRUNEKIT_DATA_DIR to a copy of shared/data")
    dest = Path(dest)
    texts = {}
    for stock in (STOCK_TASKS if tasks is None else tasks):
        if stock not in OFFLINE_TASKS:
            raise PrunekitError(f"unknown task '{stock}'; choose from {', '.join(STOCK_TASKS)}")
        missing = [f for f in OFFLINE_TASKS[stock].files if not (root / f).is_file()]
        if missing:
            raise PrunekitError(f"task '{stock}' needs {', '.join(str(root / f) for f in missing)}; "
                                f"point PRUNEKIT_DATA_DIR at a copy of shared/data")
        texts[stock] = render_config(stock, root)
    _check_dest(dest, [OFFLINE_TASKS[t].name for t in texts])  # every check before the first write
    dest.mkdir(exist_ok=True)
    out = {}
    for stock, text in texts.items():
        t = OFFLINE_TASKS[stock]
        atomic_write_text(dest / f"{t.name}.yaml", text, "task file ")
        out[stock] = t.name
    return out


_HEADER = "# Rendered by prunekit.evaluation.tasks.write_task_configs"


def _check_dest(dest: Path, names: list[str]) -> None:
    """``dest`` is a directory (or a new one in an existing directory), never a symlink; each task
    file in it is absent or a regular file prunekit rendered (its first line says so): a symlink,
    FIFO, directory or a file of the user's is refused, with nothing written."""
    import os
    import stat
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is None:
        parent = dest.parent if str(dest.parent) else Path(".")
        if not parent.is_dir():
            raise PrunekitError(f"--write {dest}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PrunekitError(f"--write {dest}: directory {parent} is not writable")
        return
    if stat.S_ISLNK(st.st_mode):
        raise PrunekitError(f"--write {dest} is a symlink; give the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise PrunekitError(f"--write {dest} exists and is not a directory")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise PrunekitError(f"--write {dest}: directory is not writable")
    for name in names:
        f = dest / f"{name}.yaml"
        try:
            fst = os.lstat(f)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(fst.st_mode):
            raise PrunekitError(f"--write: {f} exists and is not a regular file (symlink, directory, device or "
                                "pipe); refusing to replace it")
        try:
            with open(f, "rb") as fh:
                first = fh.read(len(_HEADER))
        except OSError as e:
            raise PrunekitError(f"--write: cannot read {f}: {e.strerror}") from None
        if first != _HEADER.encode():
            raise PrunekitError(f"--write: {f} exists and was not written by prunekit; refusing to replace it")
