"""The benchmark harness behind `featx bench`: cases (cases), the settings that pick them
(settings), how each backend runs them (backends, eager, extraction, kernels), timing, result
rows and their table/JSON/plot (report), the regression gate (compare), and the run itself (run).
``featx.bench.run.run_bench`` is the Python API."""
