"""The package layout is the pipeline: imports only point downward, and no module reaches into
another method's private names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prunekit"

# Stage order: a module may import its own stage or a lower one, never a higher one.
STAGES = ["errors", "utils", "portable", "core", "solvers", "scoring", "allocation", "evaluation", "experiments",
          "reporting", "cli"]
TOP = {"experiments", "reporting", "cli"}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "prunekit" or len(parts) < 2:
        return None
    return parts[1]


def _module_of(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import (use absolute prunekit.* imports)")
            if node.module:
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_stage_list_covers_the_package():
    found = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in _modules()} - {"__init__", "__main__"}
    assert found <= set(STAGES), found - set(STAGES)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downward(path):
    me = _module_of(path)
    my_stage = _stage(me)
    if my_stage is None:  # prunekit/__init__.py: the public facade may import lower stages only
        my_stage = "evaluation"
        allowed_top = False
    else:
        allowed_top = my_stage in TOP
    for module, names in _imports(path):
        st = _stage(module)
        if st is None and module == "prunekit":  # `from prunekit import utils`
            st = next((n for n in names if n in STAGES), None)
            if st is None:
                continue
        if st is None:
            continue
        assert STAGES.index(st) <= STAGES.index(my_stage), f"{me} (stage {my_stage}) imports {module} (stage {st})"
        if not allowed_top:
            assert st not in TOP, f"{me} imports the experiment/reporting layer ({module})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_private_names_across_modules(path):
    me = _module_of(path)
    for module, names in _imports(path):
        if not module.startswith("prunekit"):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        # a package may use its own modules' private helpers (e.g. allocation.absorption.probe)
        same_package = module.rsplit(".", 1)[0] == me or module.rsplit(".", 1)[0] == me.rsplit(".", 1)[0]
        assert not private or same_package, f"{me} imports private {private} from {module}"


def test_import_direction_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a fake solver importing the experiment layer is reported."""
    fake = PKG / "solvers" / "_fake_upward.py"
    fake.write_text("from prunekit.experiments.session import Session\n")
    try:
        with pytest.raises(AssertionError, match="imports"):
            test_imports_point_downward(fake)
    finally:
        fake.unlink()


# test files that test no single module (tests/test_<name>.py)
CROSS_CUTTING = {"integration", "layout", "browser", "docs"}


def test_each_test_file_mirrors_a_module():
    """tests/test_<name>.py tests prunekit's module or package <name>, or one aspect of it as
    tests/test_<name>_<aspect>.py (one scheme, flat names); CROSS_CUTTING lists the exceptions."""
    names = {p.stem for p in _modules()} | {p.parent.name for p in _modules()}
    tests = {p.stem.removeprefix("test_") for p in Path(__file__).parent.glob("test_*.py")}
    stray = sorted(t for t in tests - CROSS_CUTTING if not any(t == n or t.startswith(n + "_") for n in names))
    assert not stray, f"test files that mirror no module: {stray}"
