"""Experiments: the session (load once, sweep allocations), every workload profile, and the
paper studies with their verdict sentences. Nothing below this layer imports it."""
from prunekit.experiments.profiles import PROFILES, grid, profile  # noqa: F401
from prunekit.experiments.session import Session  # noqa: F401
