"""timm models as featx extractors (the optional ``featx[timm]`` extra).

Three ways in: ``--arch timm:NAME`` with a state_dict or a timm training checkpoint; a Hugging
Face hub folder as timm writes it (``config.json`` naming the architecture and its
``pretrained_cfg``, beside ``model.safetensors`` or ``pytorch_model.bin``); a whole pickled timm
module. The default embedding is timm's pre-logits features (featx.features.PreLogits), what
the model returns when built with ``num_classes=0``. The preprocessing is the model's
``pretrained_cfg`` resolved by timm's own data-config code, as timm's eval transform uses it.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from featx.models.registry import Extractor
from featx.runtime.errors import FeatxError, missing_extra
from featx.runtime.metadata import Preprocess

TIMM_PREFIX = "timm:"
_POLICY_OF_CROP_MODE = {
    "center": "resize_shorter_center_crop",
    "squash": "resize_squash_center_crop",
}
"""timm's eval crop modes that featx's pipeline reproduces, and the policy that does."""
HUB_CONFIG = "config.json"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""The weight files of a timm model on the Hugging Face hub, in the order timm prefers them."""


def _timm() -> Any:
    try:
        import timm
    except ModuleNotFoundError as err:
        extra = missing_extra(err, "a timm model")
        if extra is None:
            raise
        raise extra from err
    return timm


def is_timm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a timm model (its class comes from timm and has timm's
    forward_features / forward_head split)."""
    return (
        type(module).__module__.startswith("timm.")
        and hasattr(module, "forward_features")
        and hasattr(module, "forward_head")
    )


def timm_extractor(
    name: str,
    pretrained_cfg: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
) -> Extractor:
    """The extractor for ``timm:NAME`` (NAME may carry a pretrained tag, ``resnet50.a1_in1k``);
    ``pretrained_cfg`` overlays the registered one and ``model_args`` go to timm.create_model
    (a hub folder's config.json carries both)."""
    arch = name.removeprefix(TIMM_PREFIX)
    timm = _timm()
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise FeatxError(
            f"unknown timm architecture {arch!r}.{hint} timm.list_models() lists them all."
        )
    registered = timm.models.get_pretrained_cfg(arch)
    config = {**(registered.to_dict() if registered else {}), **(pretrained_cfg or {})}
    data_config = timm.data.resolve_data_config(pretrained_cfg=config)

    def build(num_classes: int | None) -> nn.Module:
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(
            arch,
            pretrained=False,
            pretrained_cfg_overlay=pretrained_cfg or None,
            **(model_args or {}),
            **extra,
        )

    return Extractor(
        name=TIMM_PREFIX + arch,
        build=build,
        layer=None,
        pool=None,
        preprocess=preprocess_from_data_config(data_config, arch),
        feature_info=None,
        description=f"timm {arch}, pre-logits features",
        curated=False,
        embedding="pre_logits",
        deploy=reparameterize,
    )


def timm_module_extractor(module: nn.Module) -> Extractor:
    """The extractor for a timm model object (a pickled module): its own pretrained_cfg says
    the architecture and preprocessing."""
    timm = _timm()
    config = getattr(module, "pretrained_cfg", None) or {}
    arch = config.get("architecture") or type(module).__name__
    return Extractor(
        name=TIMM_PREFIX + arch,
        build=lambda _: module,
        layer=None,
        pool=None,
        preprocess=preprocess_from_data_config(timm.data.resolve_model_data_config(module), arch),
        feature_info=None,
        description=f"timm {arch} model object, pre-logits features",
        curated=False,
        embedding="pre_logits",
        deploy=reparameterize,
    )


def preprocess_from_data_config(config: dict[str, Any], arch: str) -> Preprocess:
    """timm's resolved data config as featx's preprocessing policy, the way timm's eval transform
    (transforms_imagenet_eval) reads it: shorter side (crop_mode 'center') or both sides
    ('squash') to floor(size / crop_pct), then center crop."""
    _, height, width = config["input_size"]
    if height != width:
        raise FeatxError(
            f"timm {arch} takes {height}x{width} inputs; featx's image pipeline makes square "
            "crops only, so it cannot reproduce this model's preprocessing. Pass a "
            "pretrained_cfg with a square input_size (a hub folder's config.json) if the model "
            "takes one."
        )
    crop_mode = config.get("crop_mode") or "center"
    if crop_mode not in _POLICY_OF_CROP_MODE:
        raise FeatxError(
            f"timm {arch}'s pretrained_cfg asks for crop_mode {crop_mode!r} (resize the longer "
            "side, then pad); featx's image pipeline reproduces timm's 'center' and 'squash' "
            "modes only, so its embeddings would not be the model's. Pass a pretrained_cfg "
            "with crop_mode 'center' or 'squash' (a hub folder's config.json) if the model "
            "was trained so."
        )
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        raise FeatxError(
            f"timm {arch} resizes with {interpolation!r}; featx's image pipeline has nearest, "
            "bilinear and bicubic."
        )
    return Preprocess(
        crop_size=height,
        resize_size=math.floor(height / config["crop_pct"]),
        interpolation=interpolation,
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        policy=_POLICY_OF_CROP_MODE[crop_mode],
    )


def reparameterize(module: nn.Module) -> list[str]:
    """Puts re-parameterisable blocks (MobileOne, RepVGG, FastViT, ...) in ``module`` into their
    single-branch inference form in place with timm's own reparameterize_model; returns the
    names of the blocks that have one."""
    names = [
        name
        for name, child in module.named_modules()
        if name and any(hasattr(child, h) for h in ("fuse", "reparameterize", "switch_to_deploy"))
    ]
    if names:
        _timm().utils.reparameterize_model(module, inplace=True)
    return names


def is_hub_folder(path: Path) -> bool:
    """Whether ``path`` is a timm hub folder (config.json naming an architecture) or the weight
    file of one."""
    if path.is_file() and path.name not in HUB_WEIGHTS:
        return False
    folder = path if path.is_dir() else path.parent
    config = folder / HUB_CONFIG
    if not config.is_file():
        return False
    try:
        return "architecture" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def hub_extractor(path: Path) -> tuple[Extractor, Path, int | None]:
    """The extractor, weight file and class count of a timm hub folder (or a weight file in
    one)."""
    folder = path if path.is_dir() else path.parent
    config = json.loads((folder / HUB_CONFIG).read_text())
    if path.is_file():
        weights = path
    else:
        found = [folder / name for name in HUB_WEIGHTS if (folder / name).is_file()]
        if not found:
            raise FeatxError(
                f"{folder} has a timm {HUB_CONFIG} but no weights: expected one of "
                f"{', '.join(HUB_WEIGHTS)} beside it."
            )
        weights = found[0]
    extractor = timm_extractor(
        config["architecture"], config.get("pretrained_cfg"), config.get("model_args")
    )
    return extractor, weights, config.get("num_classes")
