"""The package layout is the pipeline: imports only point downward, and no module reaches into
another method's private names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prunekit"

# Stage order: a module may import its own stage or a lower one, never a higher one.
STAGES = ["errors", "vocabulary", "utils", "portable", "core", "solvers", "scoring", "allocation", "evaluation",
          "experiments", "reporting", "oneshot", "cli"]
TOP = {"experiments", "reporting", "oneshot", "cli"}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "prunekit" or len(parts) < 2:
        return None
    return parts[1]


def _module_of(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
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
CROSS_CUTTING = {"integration", "layout", "browser", "combinations", "docs"}


def test_each_test_file_mirrors_a_module():
    """tests/test_<name>.py tests prunekit's module or package <name>, or one aspect of it as
    tests/test_<name>_<aspect>.py (one scheme, flat names); CROSS_CUTTING lists the exceptions."""
    names = {p.stem for p in _modules()} | {p.parent.name for p in _modules()}
    tests = {p.stem.removeprefix("test_") for p in Path(__file__).parent.glob("test_*.py")}
    stray = sorted(t for t in tests - CROSS_CUTTING if not any(t == n or t.startswith(n + "_") for n in names))
    assert not stray, f"test files that mirror no module: {stray}"


# ----------------------------------------------------------------------------- cycles and module size

MAX_LINES = 500


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """module -> the package's modules it imports, function-local imports included (``ast.walk``
    sees every import statement). ``from a.b import c`` names the module ``a.b.c`` when that is a
    module of the package, else ``a.b``."""
    files = {_module_of(p, pkg): p for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts}
    graph = {}
    for me, path in files.items():
        deps = set()
        for module, names in _imports(path):
            if not module.startswith(pkg.name):
                continue
            subs = {f"{module}.{n}" for n in names} & files.keys()
            deps |= subs or ({module} & files.keys())
        graph[me] = deps - {me}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def long_modules(pkg: Path = PKG, limit: int = MAX_LINES) -> list[str]:
    return [f"{p.relative_to(pkg.parent)}: {n} lines" for p in sorted(pkg.rglob("*.py"))
            if "__pycache__" not in p.parts and (n := len(p.read_text().splitlines())) > limit]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_no_module_over_500_lines():
    assert long_modules() == []


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "prunekit"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_cycle_check_catches_a_planted_cycle(tmp_path):
    """Two modules that import each other, one of them inside a function, form a cycle."""
    pkg = _package(tmp_path, {"core/__init__.py": "", "core/a.py": "from prunekit.core.b import f\n",
                              "core/b.py": "def f():\n    from prunekit.core import a\n",
                              "core/c.py": "from prunekit.core import a\n"})
    assert find_cycle(import_graph(pkg)) in (["prunekit.core.a", "prunekit.core.b", "prunekit.core.a"],
                                             ["prunekit.core.b", "prunekit.core.a", "prunekit.core.b"])
    (pkg / "core" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_size_check_catches_a_501_line_module(tmp_path):
    pkg = _package(tmp_path, {"big.py": "x = 1\n" * 501, "ok.py": "x = 1\n" * 500})
    assert long_modules(pkg) == ["prunekit/big.py: 501 lines"]


# ----------------------------------------------------------------------------- one writer

# (module, function) -> why it may write a file itself instead of through utils.atomic_write_with
OWN_WRITERS = {
    ("prunekit.utils", "atomic_write_with"): "the one writer",
    ("prunekit.core.cache", "make_staging_dir"): "the marker inside a fresh mkdtemp staging directory",
    ("prunekit.core.offload", "make_work_dir"): "the owner file inside a fresh mkdtemp work directory",
    ("prunekit.core.saving", "save_dir"): "final names inside the marked staging directory",
    ("prunekit.core.saving", "_save_offloaded"): "final names inside the marked staging directory",
    ("prunekit.core.saving", "write"): "final names inside the marked staging directory",
    ("prunekit.experiments.sweep.store", "repair_tail"): "the results file: O_NOFOLLOW, under the lock",
    ("prunekit.experiments.sweep.store", "__enter__"): "the results file lock: O_NOFOLLOW | O_NONBLOCK",
    ("prunekit.experiments.sweep.store", "append_record"): "the results file: O_NOFOLLOW | O_NONBLOCK append",
}
# where the writer's PID may name a file system entry: staging / work directories and their sweeping
PID_NAMES = {("prunekit.core.cache", "staging_tag"), ("prunekit.core.cache", "make_staging_dir"),
             ("prunekit.core.offload", "make_work_dir")}
_WRITE_CALLS = {"write_text", "write_bytes", "save_file", "savez", "savez_compressed", "save_pretrained"}


def _functions(tree):
    """(node, innermost enclosing function name, parameters of the enclosing lambdas) per node."""
    out = []

    def walk(node, fn, lam):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            inner = lam | {a.arg for a in child.args.args} if isinstance(child, ast.Lambda) else lam
            out.append((child, name, inner))
            walk(child, name, inner)
    walk(tree, None, frozenset())
    return out


def _writes(node: ast.Call, name: str) -> bool:
    f, src = node.func, ast.unparse(node)
    if name in _WRITE_CALLS:
        return True
    if name in ("save", "dump") and isinstance(f, ast.Attribute):
        return ast.unparse(f.value) in ("torch", "np", "numpy", "json", "pickle")
    if name == "open" and isinstance(f, ast.Attribute) and ast.unparse(f.value) == "os":
        return "O_WRONLY" in src or "O_RDWR" in src
    if name == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))
    return False


def writer_violations(pkg: Path = PKG) -> list[str]:
    """File writes outside the one writer (and its listed exceptions), predictable temp names
    (``.with_suffix(".<x>.tmp")``, a PID in a name outside the staging-directory code). A write
    into a parameter of a lambda (``atomic_write_with(p, lambda f: np.savez(f, ...))``) goes to the
    one writer's file object."""
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        me = _module_of(path, pkg)
        for node, fn, lam in _functions(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            where = f"{path.relative_to(pkg.parent)}:{node.lineno} ({fn})"
            if name == "with_suffix" and "tmp" in ast.unparse(node):
                bad.append(f"{where}: predictable temp name {ast.unparse(node)}")
            if name in ("getpid", "staging_tag") and (me, fn) not in PID_NAMES and \
                    not (name == "staging_tag" and (me, fn) == ("prunekit.core.cache", "discard")):
                bad.append(f"{where}: the PID in a name outside the staging-directory code")
            into_writer = bool(node.args) and isinstance(node.args[0], ast.Name) and node.args[0].id in lam
            if _writes(node, name) and not into_writer and (me, fn) not in OWN_WRITERS:
                bad.append(f"{where}: writes a file outside prunekit.utils.atomic_write_with: {ast.unparse(node)[:80]}")
    return bad


def test_every_file_write_goes_through_the_one_writer():
    assert writer_violations() == []


def test_writer_check_catches_the_old_patterns(tmp_path):
    """The checker itself can fail: the PID-tagged staging names and direct writes prunekit once used."""
    pkg = _package(tmp_path, {"core/__init__.py": "", "core/offload.py": (
        "import os\nfrom safetensors.torch import save_file\n"
        "def _write_block(path, tensors):\n"
        "    tmp = path.with_suffix(f'.{os.getpid()}.tmp')\n"
        "    save_file(tensors, str(tmp))\n    os.replace(tmp, path)\n"),
        "core/cache.py": "def seal_dir(d, text):\n    (d / '.m.tmp').write_text(text)\n"
                         "def log(p, line):\n    with open(p, 'a') as f:\n        f.write(line)\n"})
    found = "\n".join(writer_violations(pkg))
    for needle in ("predictable temp name", "the PID in a name", "save_file(tensors", "write_text(text)", "open(p, 'a')"):
        assert needle in found, found
