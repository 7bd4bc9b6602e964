"""Solvers: the pruning metrics (magnitude, Wanda, SparseGPT; unstructured and N:M) and the driver
that applies a plan block by block."""
