"""What the harness measures: one ``Case`` per row, of one of five kinds.

- ``model``: model-only inference of one registered extractor on a random batch through one
  backend (featx.bench.backends), at one batch size, on one device.
- ``extract-e2e``: a whole extraction from JPEG files to saved features, decode included: the
  eager PyTorch loop users write (``eager``) against ``featx extract`` (``featx``),
  ``featx extract`` over the same JPEGs packed in one WebDataset tar (``featx-tar``) and in one
  parquet file's binary column as img2dataset writes it (``featx-parquet``), and over the same
  images with every second one stored as PNG (``featx-half-png``: PIL decodes those,
  in the pipeline's worker threads).
- ``preprocess``: decode + resize + crop + normalise of JPEG files, one at a time on one thread:
  PIL + torchvision (``pil``) against featx's C++ pipeline (``cpp``).
- ``conv`` and ``attention`` (GPU): one fused featx kernel against cuDNN, torch.compile or SDPA
  at ResNet-50's conv blocks and ViT-B's attention shape (featx.bench.kernels); the case's
  ``model`` names the block.

Each kind names the backend every other row of its group is measured against (``REFERENCE``);
a case's id is stable across runs, which is what the regression gate matches on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

MODEL_BACKENDS = (
    "eager",
    "eager-folded",
    "eager-fp16",
    "eager-bf16",
    "compile",
    "fused",
    "ort-python",
    "runner",
    "int8",
)
E2E_BACKENDS = ("eager", "featx", "featx-int8", "featx-tar", "featx-parquet", "featx-half-png")
PREPROCESS_BACKENDS = ("pil", "cpp")
CONV_BACKENDS = ("eager-channels_last", "eager-nchw", "compile", "featx")
ATTENTION_BACKENDS = ("sdpa", "unfused", "featx")
KERNEL_DTYPE = "float16"
ATTENTION_SHAPE = {"heads": 12, "length": 197, "head_dim": 64}
"""ViT-B/16's attention: heads, tokens (196 patches + class token) and head dim."""
ATTENTION_CASE = "vit_b_16 H{heads} L{length} D{head_dim}".format(**ATTENTION_SHAPE)
"""The ``model`` of the attention rows."""
GROUP_BACKENDS = {
    "extract-e2e": E2E_BACKENDS,
    "preprocess": PREPROCESS_BACKENDS,
    "conv": CONV_BACKENDS,
    "attention": ATTENTION_BACKENDS,
}
"""Names accepted in a backend list that stand for all rows of a kind; ``KIND:BACKEND`` (e.g.
``conv:featx``) stands for one of them, measured with the kind's reference."""
ALL_BACKENDS = (*MODEL_BACKENDS, *GROUP_BACKENDS)
ONE_ROW_BACKENDS = tuple(f"{kind}:{b}" for kind, group in GROUP_BACKENDS.items() for b in group)
DEFAULT_BACKENDS = (*MODEL_BACKENDS, "extract-e2e", "preprocess")
"""Everything but the kernel kinds, which are GPU-only and ~200 rows: asked for by name."""
REFERENCE = {
    "model": "eager",
    "extract-e2e": "eager",
    "preprocess": "pil",
    "conv": "eager-channels_last",
    "attention": "sdpa",
}
EAGER_AT_DTYPE = {
    "float32": "eager",
    "float16": "eager-fp16",
    "bfloat16": "eager-bf16",
    "int8": "eager",
}
"""The eager backend a dtype's rows are also compared with (no eager int8 exists: fp32)."""
PREPROCESS_MODEL = "resnet50"
"""Preprocess rows use this extractor's transform (resize 256, crop 224, bilinear)."""
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Case:
    kind: str
    model: str
    backend: str
    batch_size: int
    device: str
    dtype: str = "float32"

    @property
    def id(self) -> str:
        batch = f"bs{self.batch_size}"
        return "/".join((self.kind, self.model, self.backend, self.dtype, batch, self.device))

    def reference(self) -> Case:
        """The case this one's speedup and parity are taken against: eager fp32 for a model,
        the kind's reference backend at the same dtype otherwise."""
        dtype = "float32" if self.kind == "model" else self.dtype
        return Case(
            self.kind, self.model, REFERENCE[self.kind], self.batch_size, self.device, dtype
        )

    def same_dtype_reference(self) -> Case:
        """The eager case at this case's dtype (model kind), else the reference."""
        if self.kind != "model":
            return self.reference()
        backend = EAGER_AT_DTYPE[self.dtype]
        return Case(self.kind, self.model, backend, self.batch_size, self.device, self.dtype)

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


def backend_dtype(backend: str) -> str:
    """The compute dtype of a model backend."""
    if backend == "eager-fp16" or backend == "fused":
        return "float16"
    if backend == "eager-bf16":
        return "bfloat16"
    if backend == "int8":
        return "int8"
    return "float32"


def build_cases(
    models: Sequence[str],
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    device: str,
    *,
    conv_blocks: Sequence[str] | None = None,
) -> list[Case]:
    """Every case of the run, references first within each group (their figures are needed
    for the speedups and parity of the rest), in a stable order. The ``conv`` kind needs the
    labels of the conv blocks it times (featx.bench.kernels.resnet50_conv_blocks)."""
    unknown = sorted(set(backends) - set(ALL_BACKENDS) - set(ONE_ROW_BACKENDS))
    if unknown:
        raise ValueError(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ALL_BACKENDS)}, "
            "or one row of a kind as KIND:BACKEND (e.g. conv:featx)"
        )
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose {' or '.join(DEVICES)}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
    cases: list[Case] = []
    model_backends = [b for b in MODEL_BACKENDS if b in backends]
    for model in models if model_backends else ():
        for batch in batch_sizes:
            chosen = _with_references(model_backends, "model")
            cases += [Case("model", model, b, batch, device, backend_dtype(b)) for b in chosen]
    for model in models:
        for batch in batch_sizes:
            cases += [
                Case("extract-e2e", model, b, batch, device)
                for b in group_backends(backends, "extract-e2e")
            ]
    cases += [
        Case("preprocess", PREPROCESS_MODEL, b, 1, "cpu")
        for b in group_backends(backends, "preprocess")
    ]
    conv_backends = group_backends(backends, "conv")
    if conv_backends and conv_blocks is None:
        raise ValueError("conv cases need conv_blocks, the labels of the blocks to time")
    for block in conv_blocks if conv_backends else ():
        for batch in batch_sizes:
            cases += [Case("conv", block, b, batch, device, KERNEL_DTYPE) for b in conv_backends]
    for batch in batch_sizes:
        cases += [
            Case("attention", ATTENTION_CASE, b, batch, device, KERNEL_DTYPE)
            for b in group_backends(backends, "attention")
        ]
    return cases


def group_backends(backends: Sequence[str], kind: str) -> list[str]:
    """The backends of group ``kind`` that ``backends`` selects, in the group's order (reference
    first): all of them for the kind's name; for ``KIND:BACKEND`` names, those and the
    reference their speedups and parity are taken against."""
    group = GROUP_BACKENDS[kind]
    if kind in backends:
        return list(group)
    chosen = {b.split(":", 1)[1] for b in backends if b.startswith(f"{kind}:")}
    return [b for b in group if b in chosen or (chosen and b == REFERENCE[kind])]


def _with_references(chosen: list[str], kind: str) -> list[str]:
    """``chosen`` plus the eager backends their speedups need, references first."""
    needed = {REFERENCE[kind]} | {EAGER_AT_DTYPE[backend_dtype(b)] for b in chosen}
    return [b for b in MODEL_BACKENDS if b in needed] + [
        b for b in MODEL_BACKENDS if b in chosen and b not in needed
    ]
