"""The featx ONNX metadata schema: what an exported file says about itself.

Every key lives in the ONNX ``metadata_props`` under the ``featx.`` prefix; values are strings,
JSON-encoded where structured. ``featx.schema_version`` is bumped on any incompatible change;
readers refuse files from a newer schema. The full schema is documented in README.md.

Writing is the exporter's (featx.export); reading goes through ONNX Runtime's model metadata in
the native module, so the runtime needs neither torch nor the onnx package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from featx.runtime.errors import FeatxError
from featx.runtime.native import native

SCHEMA_VERSION = 1
PREFIX = "featx."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
POLICIES = ("resize_shorter_center_crop", "resize_squash_center_crop")
"""Values of ``Preprocess.policy``: resize the shorter side to ``resize_size`` keeping the aspect
ratio (torchvision's eval transform, timm's crop_mode 'center'), or resize both sides to it
(timm's crop_mode 'squash'); then center-crop."""
POOLINGS = ("avg", "max", "gem", "cls", "none")
"""Values of ``featx.pooling``: how the feature layer's output becomes one vector per image."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    Policy ``resize_shorter_center_crop``: decode to RGB, resize so the shorter side is
    ``resize_size`` (antialiased, ``interpolation``), center-crop ``crop_size`` x ``crop_size``,
    scale pixels to [0, 1], subtract ``mean`` and divide by ``std`` per channel; NCHW float.
    ``resize_squash_center_crop`` resizes both sides to ``resize_size`` instead.
    """

    crop_size: int
    resize_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"
    policy: str = "resize_shorter_center_crop"

    def __post_init__(self) -> None:
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise FeatxError(
                f"invalid preprocessing: crop_size={self.crop_size}, "
                f"resize_size={self.resize_size}; need 1 <= crop_size <= resize_size"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise FeatxError(
                f"invalid preprocessing interpolation {self.interpolation!r}; "
                f"expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.policy not in POLICIES:
            raise FeatxError(
                f"invalid preprocessing policy {self.policy!r}; expected one of "
                f"{', '.join(POLICIES)} (a file from a newer featx?)"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise FeatxError(
                f"invalid preprocessing mean/std {self.mean}/{self.std}: need 3 values each, "
                "std > 0"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    @classmethod
    def for_crop(cls, crop_size: int, like: Preprocess) -> Preprocess:
        """``like`` at another input size, keeping its resize-to-crop ratio."""
        resize = max(crop_size, round(crop_size * like.resize_size / like.crop_size))
        return cls(**{**like.to_dict(), "crop_size": crop_size, "resize_size": resize})


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a consumer of an exported featx model needs, stored inside the ONNX file."""

    featx_version: str
    arch: str
    layer: str
    pooling: str
    normalize: bool
    preprocess: Preprocess
    embedding_dim: int
    dtype: str
    io_dtype: str
    opset: int
    bn_folded: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    layer_reason: str = ""
    """Why ``layer`` is the embedding (which rule chose it; featx.features)."""
    int8: dict[str, Any] = field(default_factory=dict)
    """For an int8 model (featx-export --int8): its recipe, calibration set and fidelity gate
    figures (featx.quantization.Int8Report); empty otherwise."""

    def to_props(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "version": self.featx_version,
            "arch": self.arch,
            "layer": self.layer,
            "layer_reason": self.layer_reason,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "input_size": list(self.preprocess.input_shape),
            "preprocess": self.preprocess.to_dict(),
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "channel_order": self.preprocess.channel_order,
            "embedding_dim": self.embedding_dim,
            "dtype": self.dtype,
            "io_dtype": self.io_dtype,
            "opset": self.opset,
            "bn_folded": self.bn_folded,
            "source": self.source,
            "parity": self.parity,
            **({"int8": self.int8} if self.int8 else {}),
        }
        return {
            PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in values.items()
        }

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "the model") -> ModelMetadata:
        if PREFIX + "schema_version" not in props:
            raise FeatxError(
                f"{where} has no featx metadata: it was not written by featx-export. "
                "Export it with `featx-export CHECKPOINT` first."
            )
        version = int(props[PREFIX + "schema_version"])
        if version > SCHEMA_VERSION:
            raise FeatxError(
                f"{where} uses featx metadata schema {version}, newer than this featx "
                f"understands ({SCHEMA_VERSION}); upgrade featx."
            )
        try:
            value = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
            return cls(
                featx_version=value["version"],
                arch=value["arch"],
                layer=value["layer"],
                pooling=value["pooling"],
                normalize=json.loads(value["normalize"]),
                preprocess=Preprocess.from_dict(json.loads(value["preprocess"])),
                embedding_dim=int(value["embedding_dim"]),
                dtype=value["dtype"],
                io_dtype=value["io_dtype"],
                opset=int(value["opset"]),
                bn_folded=int(value.get("bn_folded", "0")),
                source=json.loads(value.get("source", "{}")),
                parity=json.loads(value.get("parity", "{}")),
                layer_reason=value.get("layer_reason", ""),
                int8=json.loads(value.get("int8", "{}")),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise FeatxError(
                f"{where} has damaged featx metadata ({type(err).__name__}: {err}); "
                "re-export the model with featx-export."
            ) from err


def read_metadata(onnx_path: str | Path) -> ModelMetadata:
    """Reads the featx metadata of an exported ONNX file (ONNX Runtime loads it, unoptimised)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FeatxError(f"no such ONNX file: {path}")
    try:
        props = native().model_metadata(str(path))
    except RuntimeError as err:
        raise FeatxError(f"{path} is not a readable ONNX file ({err})") from err
    return ModelMetadata.from_props(props, where=str(path))
