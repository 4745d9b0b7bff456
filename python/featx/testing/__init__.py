"""Helpers shared by tests and benchmarks (references, model preparation)."""
