"""The allocation registry: every method declares how it is called and what it reads.

    method(stats: Statistics, target: float, **options) -> SparsityPlan | np.ndarray

``stats`` (``prunekit.scoring.Statistics``) lazily provides what a method needs (Wanda norms,
outlier ratios, ESD alphas, the model itself) with on-disk caching. A method registers with
``@register(name, ...)`` and a ``MethodSpec`` records its contract:

* ``solver_metric``: the name of the option that receives the pruning solver's metric when the
  caller did not set it (MRP ranks by the solver's own score, its principle 2); ``None`` for
  methods that do not depend on the solver.
* ``solver_scores``: exceptions to that rule, solver -> value passed instead (MRP ranks blocks by
  Wanda's score when SparseGPT prunes: chosen on held-out NLL, docs/results.md).
* ``reads``: the statistics the method reads (documentation and cache planning).
* ``exact``: the raw output also lies within the default bounds [0, 0.99] for every target, so
  ``fit_budget`` is a no-op (uniform). Every method, exact or not, returns a raw output that meets
  the budget (parameter-weighted mean = target; its own mapping does it: AlphaPruning's rescale,
  MRP's partial last step, SV-NUP's shift, and — for blocks of equal size, as in every supported
  family — OWL's centring, ATP's symmetric schedule, absorption's zero-mean Δ); ``allocate`` then
  only clips to [s_min, s_max] and restores the budget. ``tests/test_registry.py`` asserts both on
  the raw output.
* ``wraps``: the option naming another registered method it wraps (absorption's ``base``).
* ``options``: typed options derived from the signature (``Literal`` gives the choices) plus the
  declared ``bounds`` (closed by default; ``(lo, hi, "(]")`` opens an end);
* ``check``: cross-option constraints (and constraints relative to the target sparsity or the
  model's number of blocks), ``check(options, target, num_blocks)`` with every option filled in
  (defaults for the ones not given); it raises a one-line PrunekitError.

``check_options`` validates a dict of options against all of these before any work. It is the ONLY
place option values are checked: the bounds are each method's true domain, so a value it accepts
is never refused by the method later (``tests/test_registry_domains.py`` runs every method just
inside every bound).

``allocate`` runs a method and returns its budget-exact, clipped plan: the parameter-weighted mean
sparsity over all pruned linears equals ``target`` within 1e-6, and every value lies in
[s_min, s_max] (docs/methods.md §8.1).
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from prunekit.allocation.plan import SparsityPlan, fit_budget
from prunekit.errors import PrunekitError

Method = Callable[..., "SparsityPlan | np.ndarray"]


@dataclass(frozen=True)
class Option:
    """One keyword option of a method: its default, type, allowed choices and bounds."""
    name: str
    default: Any
    type: type | None = None
    choices: tuple | None = None
    low: float | None = None           # lower bound (inclusive unless low_open)
    high: float | None = None          # upper bound (inclusive unless high_open)
    nullable: bool = False
    at_most_blocks: bool = False       # also <= the model's number of decoder blocks
    low_open: bool = False
    high_open: bool = False
    doc: str = ""                      # one line from the method's docstring (``option_docs``)

    def describe(self) -> str:
        """One line for ``--help``: what it is (from the docstring), the default and the allowed range."""
        d = f"{self.default:.6g}" if isinstance(self.default, float) else repr(self.default)
        parts = ([self.doc] if self.doc else []) + [f"default: {d}"]
        if self.low is not None or self.high is not None or self.at_most_blocks:
            hi = [str(v) for v in (self.high,) if v is not None] + (["#blocks"] if self.at_most_blocks else [])
            parts.append(f"range: {'(' if self.low_open or self.low is None else '['}"
                         f"{'-inf' if self.low is None else self.low}, {' and '.join(hi) or 'inf'}"
                         f"{')' if self.high_open or not hi else ']'}")
        return "; ".join(parts)

    def check(self, method: str, value, num_blocks: int | None = None):
        """The value converted to the option's type, or a one-line PrunekitError."""
        where = f"{method} option '{self.name}'"
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise PrunekitError(f"{where} must not be empty")
        if self.choices is not None:
            if value not in self.choices:
                raise PrunekitError(f"{where}: '{value}' is not one of {', '.join(map(str, self.choices))}")
            return value
        t = self.type
        try:
            if t is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                value = bool(value)
            elif t is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                value = int(value)
            elif t is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
                if not math.isfinite(value):
                    raise PrunekitError(f"{where} must be a finite number, got {value}")
            elif t in (dict, list) and not isinstance(value, t):
                raise TypeError(value)
        except (TypeError, ValueError):
            raise PrunekitError(f"{where} must be of type {t.__name__}, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                raise PrunekitError(f"{where} must be {'>' if self.low_open else '>='} {self.low}, got {value}")
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                raise PrunekitError(f"{where} must be {'<' if self.high_open else '<='} {self.high}, got {value}")
            if self.at_most_blocks and num_blocks is not None and value > num_blocks:
                raise PrunekitError(f"{where} must be <= the model's {num_blocks} blocks, got {value}")
        return value


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Method
    summary: str
    options: dict[str, Option] = field(default_factory=dict)
    solver_metric: str | None = None
    reads: tuple[str, ...] = ()
    exact: bool = False
    wraps: str | None = None
    check: Callable[[dict, float | None, int | None], None] | None = None
    solver_scores: tuple[tuple[str, str], ...] = ()  # (solver, value passed instead of the solver's name)

    def check_options(self, options: dict, num_blocks: int | None = None, target: float | None = None) -> dict:
        """Validate and convert ``options`` (unknown names, types, choices, bounds — including bounds
        relative to the model's ``num_blocks`` and the ``target`` sparsity when known — and the
        method's cross-option ``check``): one-line errors, before any work."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PrunekitError(f"{self.name} has no option {', '.join(map(repr, unknown))}; "
                                f"options: {', '.join(self.options) or 'none'}")
        out = {k: self.options[k].check(self.name, v, num_blocks) for k, v in options.items()}
        if self.wraps and self.wraps in out and out[self.wraps] not in _REGISTRY:
            raise PrunekitError(f"{self.name} option '{self.wraps}': unknown allocation '{out[self.wraps]}'; "
                                f"choose from {', '.join(sorted(_REGISTRY))}")
        if self.wraps and out.get(self.wraps) == self.name:
            raise PrunekitError(f"{self.name} option '{self.wraps}': {self.name} cannot wrap itself")
        if self.check is not None:
            self.check({**{k: o.default for k, o in self.options.items()}, **out}, target, num_blocks)
        return out


_REGISTRY: dict[str, MethodSpec] = {}


def option_docs(doc: str, names) -> dict[str, str]:
    """One line per option from the last ``Options`` paragraph of a method's docstring: the text
    after ````name```` up to the next option named, or the end of its clause (``;`` or ``.`` outside
    parentheses)."""
    text, names = " ".join((doc or "").split()), list(names)
    text = text[text.rfind("Options"):] if "Options" in text else ""
    out = {}
    for name in names:
        start = text.find(f"``{name}``")
        if start < 0:
            continue
        rest = text[start + len(name) + 4:].lstrip(" :=")
        cut = min([j for o in names if o != name and (j := rest.find(f"``{o}``")) >= 0] + [len(rest)])
        depth = 0
        for j, ch in enumerate(rest[:cut]):
            depth += (ch in "([") - (ch in ")]")
            if depth <= 0 and ch in ";." and (j + 1 == len(rest) or rest[j + 1] == " "):
                cut = j
                break
        line = rest[:cut].strip(" ,;:")
        if line.count(")") > line.count("("):
            line = line.rstrip(")")
        if line.startswith("(") and line.endswith(")"):
            line = line[1:-1]
        out[name] = line if len(line) <= 110 else line[:107].rsplit(" ", 1)[0] + " …"
    return out


def _options(fn: Method, bounds: dict) -> dict[str, Option]:
    hints = typing.get_type_hints(fn)
    params = [p.name for p in list(inspect.signature(fn).parameters.values())[2:]]
    docs = option_docs(fn.__doc__, params)
    out = {}
    for p in list(inspect.signature(fn).parameters.values())[2:]:  # after (stats, target)
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name.startswith("_"):
            continue
        hint = hints.get(p.name)
        args = typing.get_args(hint)
        nullable = type(None) in args
        base = [a for a in args if a is not type(None)] if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
        choices = None
        t = base[0] if len(base) == 1 else None
        if typing.get_origin(t) is typing.Literal:
            choices, t = typing.get_args(t), None
        lo, hi, *ends = bounds.get(p.name, (None, None))
        ends = ends[0] if ends else "[]"
        blocks = hi == "num_blocks" or (isinstance(hi, tuple) and "num_blocks" in hi)
        if isinstance(hi, tuple):
            hi = next((v for v in hi if v != "num_blocks"), None)
        elif hi == "num_blocks":
            hi = None
        out[p.name] = Option(p.name, p.default, t if isinstance(t, type) else None, choices, lo, hi, nullable,
                             blocks, ends[0] == "(", ends[1] == ")", docs.get(p.name, ""))
    return out


def register(name: str, *, solver_metric: str | None = None, reads: tuple[str, ...] = (), exact: bool = False,
             wraps: str | None = None, bounds: dict | None = None, check: Callable | None = None,
             solver_scores: dict | None = None):
    """Decorator: ``@register("owl", reads=("wanda",), bounds={"lam": (0, 0.5)})`` makes
    ``allocate("owl", ...)`` and ``--allocation owl`` work; see the module docstring for the fields.
    Bounds are closed; a third item ``"(]"``, ``"[)"`` or ``"()"`` opens an end. An upper bound
    ``"num_blocks"`` (or a tuple ``(16, "num_blocks")``) also bounds the option by the model's number
    of decoder blocks (checked when it is known: the CLI reads it from the config)."""
    def deco(fn: Method) -> Method:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise PrunekitError(f"allocation '{name}' is registered twice")
        opts = _options(fn, bounds or {})
        for k in (solver_metric, wraps, *(bounds or {})):
            if k is not None and k not in opts:
                raise PrunekitError(f"register('{name}'): '{k}' is not an option of {fn.__name__}")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = MethodSpec(name, fn, summary, opts, solver_metric, tuple(reads), exact, wraps, check,
                                     tuple(sorted((solver_scores or {}).items())))
        return fn
    return deco


def spec(name: str) -> MethodSpec:
    """The registered contract of allocation ``name`` (one-line error for an unknown name)."""
    if name not in _REGISTRY:
        raise PrunekitError(f"unknown allocation '{name}'; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def specs() -> dict[str, MethodSpec]:
    """Every registered method's contract, by name."""
    return dict(_REGISTRY)


def methods() -> dict[str, str]:
    """Registered method names with their one-line summaries."""
    return {k: v.summary for k, v in _REGISTRY.items()}


def with_solver_metric(method: str, options: dict, metric: str) -> dict:
    """``options`` plus the solver's metric under the option the method declared for it (if any,
    and unless the caller set it)."""
    sp = spec(method)
    opt = sp.solver_metric
    if opt is None or opt in options:
        return dict(options)
    return {**options, opt: dict(sp.solver_scores).get(metric, metric)}


def allocate(method: str, stats, target: float, s_min: float = 0.0, s_max: float = 0.99,
             **options) -> SparsityPlan:
    """Run a registered method and return its budget-exact, clipped plan."""
    sp = spec(method)
    if not (0.0 <= target < 1.0):
        raise PrunekitError(f"sparsity {target} is outside [0, 1)")
    options = sp.check_options(options, getattr(stats, "num_blocks", None), target)
    out = sp.fn(stats, target, **options)
    sizes = np.asarray(stats.sizes, dtype=float)
    if isinstance(out, SparsityPlan):
        plan = out
    else:
        vals = np.asarray(out, dtype=float)
        if vals.ndim == 1:
            vals = np.repeat(vals[:, None], sizes.shape[1], axis=1)
        plan = SparsityPlan(vals, sizes, target, method, dict(options), list(stats.linear_names))
    plan.extras.setdefault("raw_global", float((plan.values * sizes).sum() / sizes.sum()))
    plan.values = fit_budget(plan.values, sizes, target, s_min, s_max)
    plan.sizes, plan.target, plan.method = sizes, target, method
    plan.options = {**dict(options), **plan.options, "s_min": s_min, "s_max": s_max}
    plan.linear_names = list(stats.linear_names)
    return plan
