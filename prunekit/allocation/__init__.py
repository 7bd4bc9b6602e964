"""Allocate: one registry of layer-wise sparsity methods with one signature (see ``registry``).

Every method lives in its own module and is imported here explicitly, so importing
``prunekit.allocation`` registers all of them.
"""
from prunekit.allocation.plan import SparsityPlan, block_plan, check_target, fit_budget
from prunekit.allocation.registry import (MethodSpec, Option, allocate, methods, register, spec, specs,
                                          with_solver_metric)
from prunekit.allocation import uniform, owl, alphapruning, atp, mrp, svnup, absorption  # noqa: E402,F401  (registers)

__all__ = ["SparsityPlan", "block_plan", "check_target", "fit_budget", "MethodSpec", "Option", "allocate",
           "methods", "register", "spec", "specs", "with_solver_metric"]
