"""Benchmark harness pieces: a realistic image corpus, the eager PyTorch baseline, and the
environment every result row records."""
