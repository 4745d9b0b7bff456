"""Reading and writing model files: featx checkpoints, plain state_dicts, trusted pickles.

A featx checkpoint is ``{"arch": str, "state_dict": {...}, "featx": {...}}``, readable with
``torch.load(weights_only=True)``. Its ``featx`` dict may carry ``num_classes``, ``classes``,
``preprocess`` (a Preprocess dict), ``layer`` and ``pool`` overriding the extractor defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featx.models import timm_models
from featx.models.catalog import get_extractor
from featx.models.registry import Extractor
from featx.runtime.errors import FeatxError, missing_extra
from featx.runtime.files import file_sha256, write_atomic
from featx.runtime.metadata import Preprocess

CHECKPOINT_FORMAT = 1
_LIST_LIMIT = 8


@dataclass
class LoadedModel:
    """A model ready for feature extraction, plus the defaults that describe it."""

    module: nn.Module
    extractor: Extractor
    source: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    """Class names a featx checkpoint was trained on (None when it does not say)."""

    @property
    def arch(self) -> str:
        return self.extractor.name


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    arch: str,
    *,
    preprocess: Preprocess | None = None,
    **featx_fields: Any,
) -> Path:
    """Writes a featx checkpoint atomically (temp file, then rename)."""
    path = Path(path)
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, **featx_fields}
    if preprocess is not None:
        meta["preprocess"] = preprocess.to_dict()
    head = _final_linear_name(model)
    if head is not None and "num_classes" not in meta:
        meta["num_classes"] = int(model.get_submodule(head).out_features)
    payload = {"arch": arch, "state_dict": model.state_dict(), "featx": meta}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())
    return path


def load_model(
    path: str | Path, *, arch: str | None = None, trust_pickle: bool = False
) -> LoadedModel:
    """Loads any supported model file; raises FeatxError saying what was wrong and what to do."""
    path = Path(path)
    if not path.exists():
        raise FeatxError(f"no such file: {path}")
    if timm_models.is_hub_folder(path):
        return _load_timm_hub(path, arch)
    if not path.is_file():
        raise FeatxError(
            f"{path} is a directory; featx-export takes a model file (.pt, .pt2, .safetensors) "
            f"or a timm hub folder ({timm_models.HUB_CONFIG} beside the weights)"
        )
    source = {"file": path.name, "sha256": file_sha256(path)}
    if path.suffix == ".safetensors":
        return _load_state_dict(path, _read_safetensors(path), arch, source)

    if path.suffix == ".pt2" or _is_exported_program(path):
        return _load_exported_program(path, arch, trust_pickle, source)
    try:
        # timm's training checkpoints keep their argparse arguments beside the tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise FeatxError(
                f"{path} holds pickled Python objects (for example a whole nn.Module), not only "
                "tensors. Loading it runs code stored in the file, so featx does this only when "
                "told to: pass --trust-pickle if you trust where the file came from. Safer: save "
                "model.state_dict() and export it with --arch NAME."
            ) from err
        return _load_pickled_module(path, arch, source)
    except Exception as err:
        raise FeatxError(
            f"{path} is not a PyTorch checkpoint: torch.load could not read it "
            f"({type(err).__name__}: {_first_line(err)}). Pass a file written by torch.save or "
            "`featx train`."
        ) from err

    if isinstance(obj, dict) and {"arch", "state_dict", "featx"} <= obj.keys():
        return _load_featx_checkpoint(path, obj, arch, source)
    if isinstance(obj, dict) and {"arch", "state_dict", "epoch"} <= obj.keys():
        return _load_timm_training_checkpoint(path, obj, arch, source)
    state_dict = _unwrap_state_dict(obj)
    if state_dict is None:
        raise FeatxError(
            f"{path} loads, but holds a {type(obj).__name__} that is neither a featx checkpoint "
            "nor a state_dict of tensors. Save model.state_dict() (and pass --arch) or use "
            "`featx train`."
        )
    return _load_state_dict(path, state_dict, arch, source)


def _load_state_dict(
    path: Path, state_dict: dict[str, torch.Tensor], arch: str | None, source: dict[str, Any]
) -> LoadedModel:
    if arch is None:
        raise FeatxError(
            f"{path} is a plain state_dict ({len(state_dict)} tensors) and does not say which "
            "architecture it belongs to: pass --arch NAME (`featx models` lists the curated "
            "ones; any torchvision classification model name works, and timm:NAME any timm "
            "model)."
        )
    extractor = get_extractor(arch)
    module = _build_and_load(extractor, state_dict, None, path)
    return LoadedModel(module, extractor, {**source, "kind": "state_dict"})


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as err:
        extra = missing_extra(err, f"reading {path.name}")
        if extra is None:
            raise
        raise extra from err
    try:
        return load_file(path)
    except Exception as err:
        raise FeatxError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {_first_line(err)})"
        ) from err


def _load_timm_hub(path: Path, arch: str | None) -> LoadedModel:
    extractor, weights, num_classes = timm_models.hub_extractor(path)
    if arch is not None and arch != extractor.name:
        raise FeatxError(
            f"{path} is a timm hub folder of {extractor.name!r}, but --arch {arch!r} was given; "
            f"drop --arch (its {timm_models.HUB_CONFIG} says the architecture)."
        )
    source = {"file": weights.name, "sha256": file_sha256(weights), "kind": "timm_hub"}
    if weights.suffix == ".safetensors":
        state_dict = _read_safetensors(weights)
    else:
        state_dict = _unwrap_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if state_dict is None:
            raise FeatxError(f"{weights} holds no state_dict of tensors")
    module = _build_and_load(extractor, state_dict, num_classes, weights)
    return LoadedModel(module, extractor, source)


def _load_timm_training_checkpoint(
    path: Path, obj: dict[str, Any], arch: str | None, source: dict[str, Any]
) -> LoadedModel:
    """A checkpoint written by timm's train.py: ``arch`` is the timm model name."""
    stored = timm_models.TIMM_PREFIX + str(obj["arch"])
    if arch is not None and arch != stored:
        raise FeatxError(
            f"{path} is a timm training checkpoint of {stored!r}, but --arch {arch!r} was "
            "given; drop --arch (the checkpoint says its own)."
        )
    extractor = get_extractor(stored)
    state_dict = _unwrap_state_dict(obj["state_dict"])
    if state_dict is None:
        raise FeatxError(f"{path}: the checkpoint's 'state_dict' entry holds no tensors")
    module = _build_and_load(extractor, state_dict, None, path)
    return LoadedModel(module, extractor, {**source, "kind": "timm_checkpoint"})


def _load_featx_checkpoint(
    path: Path, obj: dict[str, Any], arch: str | None, source: dict[str, Any]
) -> LoadedModel:
    stored_arch = obj["arch"]
    if arch is not None and arch != stored_arch:
        raise FeatxError(
            f"{path} is a featx checkpoint of arch {stored_arch!r}, but --arch {arch!r} was "
            "given; drop --arch (the checkpoint says its own)."
        )
    meta = obj.get("featx") or {}
    extractor = get_extractor(stored_arch)
    overrides: dict[str, Any] = {}
    if "preprocess" in meta:
        overrides["preprocess"] = Preprocess.from_dict(meta["preprocess"])
    for key in ("layer", "pool"):
        if key in meta:
            overrides[key] = meta[key]
    if overrides:
        extractor = dataclasses.replace(extractor, **overrides)
    state_dict = _unwrap_state_dict(obj["state_dict"])
    if state_dict is None:
        raise FeatxError(f"{path}: the checkpoint's 'state_dict' entry holds no tensors")
    module = _build_and_load(extractor, state_dict, meta.get("num_classes"), path)
    classes = [str(c) for c in meta["classes"]] if meta.get("classes") else None
    return LoadedModel(module, extractor, {**source, "kind": "featx_checkpoint"}, classes)


def _build_and_load(
    extractor: Extractor, state_dict: dict[str, torch.Tensor], num_classes: int | None, path: Path
) -> nn.Module:
    model = extractor.build_model(num_classes)
    head = _head_name(model)
    head_weight = state_dict.get(f"{head}.weight") if head else None
    if (
        num_classes is None
        and head is not None
        and head_weight is None
        and hasattr(model, "reset_classifier")
    ):
        # A timm model saved with num_classes=0 has no classifier weights.
        model.reset_classifier(0)
    elif (
        num_classes is None
        and head_weight is not None
        and head_weight.dim() == 2
        and head_weight.shape[0] != model.get_submodule(head).out_features
    ):
        model = extractor.build_model(int(head_weight.shape[0]))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {list(state_dict[k].shape)} vs model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {label}: {_short_list(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise FeatxError(
            f"the state_dict in {path} does not fit arch {extractor.name!r}: "
            + "; ".join(parts)
            + ". Check --arch: the weights may belong to another architecture or variant."
        )
    model.load_state_dict(state_dict)
    return model.eval()


def _load_pickled_module(path: Path, arch: str | None, source: dict[str, Any]) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        extra = missing_extra(err, f"unpickling {path.name}")
        if extra is None:
            raise FeatxError(
                f"{path} could not be unpickled: it refers to module {err.name!r}, which is "
                "not importable here"
            ) from err
        raise extra from err
    except Exception as err:
        raise FeatxError(
            f"{path} could not be unpickled even with --trust-pickle "
            f"({type(err).__name__}: {_first_line(err)}); the classes it refers to must be "
            "importable here."
        ) from err
    if not isinstance(obj, nn.Module):
        raise FeatxError(
            f"{path} unpickles to a {type(obj).__name__}, not an nn.Module; save the whole "
            "model (torch.save(model, path)) or its state_dict with --arch."
        )
    return LoadedModel(obj.eval(), _untyped_extractor(obj, arch), {**source, "kind": "pickle"})


def _load_exported_program(
    path: Path, arch: str | None, trust_pickle: bool, source: dict[str, Any]
) -> LoadedModel:
    if not trust_pickle:
        raise FeatxError(
            f"{path} is a torch.export program (.pt2). Loading one deserialises Python objects "
            "from the file, so featx does this only when told to: pass --trust-pickle if you "
            "trust where the file came from."
        )
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise FeatxError(
            f"{path} is not a loadable torch.export program "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    _require_dynamic_batch(program, path)
    module = ExportedProgramModel(program.module())
    return LoadedModel(module, _untyped_extractor(module, arch), {**source, "kind": "pt2"})


def _require_dynamic_batch(program: torch.export.ExportedProgram, path: Path) -> None:
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise FeatxError(
            f"{path} takes {len(user_inputs)} inputs; a featx model takes one image batch."
        )
    node = next(n for n in program.graph.nodes if n.name == user_inputs[0])
    shape = node.meta["val"].shape
    if len(shape) != 4 or isinstance(shape[0], int):
        raise FeatxError(
            f"{path} was exported for inputs of fixed shape {tuple(shape)}; featx needs a "
            "(batch, 3, H, W) input with a dynamic batch axis. Re-export with "
            "torch.export.export(model, (x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
            " (using your forward's argument name)."
        )


class ExportedProgramModel(nn.Module):
    """A torch.export program as an nn.Module. Its graph was captured in one mode for good, so
    train()/eval() only set the flag (the program's own module refuses them)."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> ExportedProgramModel:
        self.training = mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)


def _untyped_extractor(module: nn.Module, arch: str | None) -> Extractor:
    """Defaults for a model object: the given --arch's, a timm model's own, else its own output
    as it is."""
    if arch is not None:
        return dataclasses.replace(get_extractor(arch), build=lambda _: module)
    if timm_models.is_timm_module(module):
        return timm_models.timm_module_extractor(module)
    return Extractor(
        name=type(module).__name__,
        build=lambda _: module,
        layer=None,
        pool=None,
        preprocess=Preprocess(crop_size=224, resize_size=256),
        feature_info=None,
        description="user model object",
        curated=False,
    )


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensors of a state_dict, also when wrapped as {"state_dict": ...} or {"model": ...};
    a DataParallel "module." prefix is removed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and len(obj) <= 4:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _head_name(model: nn.Module) -> str | None:
    """The classifier: the one a timm model's pretrained_cfg names, else the final nn.Linear."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(named, (tuple, list)):
        named = named[0] if named else None
    modules = dict(model.named_modules())
    if isinstance(named, str) and isinstance(modules.get(named), nn.Linear):
        return named
    return _final_linear_name(model)


def _final_linear_name(model: nn.Module) -> str | None:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _is_exported_program(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("serialized_exported_program.json") for name in archive.namelist())


def _short_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
