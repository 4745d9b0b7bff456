"""The benchmark harness behind `featx bench`: cases (cases), how each backend runs them
(backends, eager, extraction), timing, result rows and their table/JSON/plot (report), the
regression gate (compare), and the run itself (run). ``run_bench`` is the Python API."""

from featx.bench.run import BenchResult, BenchSettings, run_bench

__all__ = ["BenchResult", "BenchSettings", "run_bench"]
