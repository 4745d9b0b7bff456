"""featx on Ray: ``featx.ray.Embedder`` for Ray Data pipelines.

    import ray, featx.ray
    ds = ray.data.read_binary_files("photos/")  # or read_parquet / read_webdataset(decoder=None)
    ds = ds.map_batches(featx.ray.Embedder, fn_constructor_args=("model.onnx",),
                        concurrency=2, batch_size=64)

Whole extraction jobs with featx's exactly-once output run with ``featx extract --ray``
(featx.runtime.distributed). Both need only the runtime layer and ray (``pip install
'featx[cpu,ray]'``): no torch on the workers.
"""

from featx.runtime.embedder import Embedder

__all__ = ["Embedder"]
