"""The extraction runtime: everything that runs an exported .onnx file over images and writes
features, with no torch, torchvision, triton, onnx, onnxscript, scikit-learn or matplotlib
anywhere on its import path (import-linter checks it; see pyproject.toml).

One stage per module, in the order data flows: native (the C++ module, ONNX Runtime loaded into
it), metadata (what an exported file says about itself), instruction_set (which int8 files this
CPU's kernels run correctly), runner (featx.Runner, the C++ ORT session), inputs (which images, tar
samples or parquet rows, in which order; parquet: the parquet reader), decode (the PIL fallback
decoder), pipeline (the C++ decode/preprocess threads), shards (atomic output shards, the
manifest), lock (one writer per output folder), shard_extraction (the shard loop), extract (the
job: resume, progress, summary), distributed (the job's shards on Ray actors), embedder
(featx.ray.Embedder for Ray Data); errors and files are shared by all of them.
"""
