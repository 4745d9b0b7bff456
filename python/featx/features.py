"""Turning a model into a feature extractor: the embedding it gives, pooling, L2 normalisation.

Which tensor is the embedding, by rule:

- a layer the caller names (``--layer``, a curated extractor's layer): the model cut there;
- a model whose classifier featx knows (torchvision classification models by name): the
  classifier's input as the model computes it, its own pooling, flatten and norm included (the
  model with its classifier replaced by nn.Identity);
- a timm model: its pre-logits features, ``forward_head(forward_features(x), pre_logits=True)``,
  which is what the model returns when built with ``num_classes=0``;
- any other model (a pickled module, a .pt2 program, an unknown class): its own output, exactly
  as its forward returns it. featx never guesses an inner layer.
"""

from __future__ import annotations

import copy
import difflib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from featx.models.registry import EMBEDDINGS, Extractor
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import POOLINGS

GEM_POWER = 3.0
GEM_EPS = 1e-6
_NEARBY = 8
OUTPUT = "output"
"""The layer name that stands for the model's own output."""
PRE_LOGITS = "pre_logits"
"""The layer name that stands for a timm model's pre-logits features."""
CLASSIFIER_INPUT = "input of "
"""``input of HEAD`` names the classifier cut's layer."""
CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")
"""Names torchvision gives its classification models' heads (a top-level child)."""
_BEFORE_CLASSIFIER = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.LayerNorm,
    nn.Dropout,
)
"""Modules a head Sequential may start with that belong to the embedding (ConvNeXt's LayerNorm,
MaxViT's pool-flatten-norm), not to the classifier."""


class Pool(nn.Module):
    """Reduces feature maps (B, C, H, W) or tokens (B, N, D) to vectors (B, D).

    ``none`` flattens whatever the layer gives; ``cls`` takes token 0; ``gem`` is generalised
    mean pooling with p=3 (maps only).
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in POOLINGS:
            raise FeatxError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}")
        self.kind = kind

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return features.flatten(1)
        if features.dim() == 3:
            if self.kind == "cls":
                return features[:, 0]
            return features.mean(dim=1) if self.kind == "avg" else features.amax(dim=1)
        if self.kind == "avg":
            return features.mean(dim=(2, 3))
        if self.kind == "max":
            return features.amax(dim=(2, 3))
        pooled = features.clamp(min=GEM_EPS).pow(GEM_POWER).mean(dim=(2, 3))
        return pooled.pow(1.0 / GEM_POWER)

    def check(self, shape: torch.Size, layer: str) -> None:
        """Raises FeatxError when this pooling does not apply to a layer output of ``shape``."""
        dims = tuple(shape[1:])
        if self.kind == "none":
            return
        if len(shape) == 4 and self.kind == "cls":
            raise FeatxError(
                f"pooling 'cls' takes the first token of a (batch, tokens, dim) output, but "
                f"layer {layer!r} gives feature maps of shape {dims}; use avg, max, gem or none."
            )
        if len(shape) == 3 and self.kind == "gem":
            raise FeatxError(
                f"pooling 'gem' is for feature maps, but layer {layer!r} gives tokens of shape "
                f"{dims}; use cls, avg, max or none."
            )
        if len(shape) not in (3, 4):
            raise FeatxError(
                f"layer {layer!r} gives outputs of shape {dims}, which pooling {self.kind!r} "
                "cannot reduce; use --pool none (flattens) or pick a feature-map/token layer."
            )


class FeatureModel(nn.Module):
    """images (B, 3, H, W) -> embeddings (B, D): body up to the feature layer, pool, normalise."""

    def __init__(self, body: nn.Module, pool: str, normalize: bool):
        super().__init__()
        self.body = body
        self.pool = Pool(pool)
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.pool(self.body(images))
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        return embeddings


@dataclass(frozen=True)
class FeatureLayout:
    """What the chosen layer produces at the model's input size."""

    layer: str
    """A node or module name, ``input of HEAD`` (the classifier cut), ``pre_logits`` or
    ``output``."""
    rule: str
    """Which rule chose it: ``layer`` (named), or one of featx.models.registry.EMBEDDINGS."""
    layer_shape: tuple[int, ...]
    embedding_dim: int
    stride: int
    """Input pixels per feature-map cell or per patch token; 0 when the layer gives vectors."""
    traced: bool
    """Whether torch.fx traces the model (BatchNorm can be folded)."""


def layer_names(module: nn.Module) -> list[str]:
    """Every name accepted as a feature layer: graph nodes and the modules that contain them."""
    nodes = _eval_node_names(module)
    prefixes = {node.rsplit(".", i)[0] for node in nodes for i in range(1, node.count(".") + 1)}
    return nodes + sorted(prefixes - set(nodes))


def build_feature_model(
    module: nn.Module,
    *,
    layer: str | None,
    pool: str | None,
    normalize: bool,
    input_size: int,
    embedding: str = OUTPUT,
) -> tuple[FeatureModel, FeatureLayout]:
    """``module`` as a feature model: cut at ``layer`` when one is named, else the tensor the
    ``embedding`` rule names (featx.models.registry.EMBEDDINGS); then pooled.

    ``pool=None`` takes the embedding as it is, which must then be one vector per image. The
    body of a named-layer cut is a torch.fx graph; the other rules keep the model's own modules
    (so the parity gate compares against them) and trace a copy only to fold (``trace_whole``).
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    module = module.eval()
    if layer is not None:
        try:
            _eval_node_names(module)
        except Exception as err:
            raise FeatxError(
                f"cannot select layer {layer!r}: the model cannot be traced with torch.fx "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "Export its whole output (omit --layer) or make the model traceable."
            ) from err
        body, resolved, rule, traced = _cut_at(module, layer), layer, "layer", True
    elif embedding == "classifier":
        resolved = default_layer(module, None, embedding)
        body, rule = (
            without_classifier(module, resolved.removeprefix(CLASSIFIER_INPUT)),
            "classifier",
        )
        traced = _traceable(body)
    elif embedding == PRE_LOGITS:
        # eval() before tracing: the tracer restores the wrapper's mode onto the whole model.
        body, resolved, rule = PreLogits(module).eval(), PRE_LOGITS, PRE_LOGITS
        traced = _traceable(body)
    else:
        body, resolved, rule, traced = module, OUTPUT, "output", _traceable(module)

    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            raw = body(probe)
    except Exception as err:  # whatever the user's forward raises on this input
        raise FeatxError(
            f"the model fails on a (batch, 3, {input_size}, {input_size}) input "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). If it "
            "takes only one input size, export at that size (omit --input-size)."
        ) from err
    if not isinstance(raw, torch.Tensor):
        what = "the model's output" if rule == "output" else f"layer {resolved!r}"
        raise FeatxError(
            f"{what} is a {type(raw).__name__}, not a tensor; pick a layer whose output is one "
            "tensor with --layer (`featx layers` lists them)."
        )
    if pool is None:
        pool = _as_is_pooling(raw.shape, resolved)
    feature_model = FeatureModel(body, pool, normalize).eval()
    feature_model.pool.check(raw.shape, resolved)
    with torch.no_grad():
        embedding_dim = int(feature_model(probe).shape[1])
    shape = tuple(int(s) for s in raw.shape[1:])
    return feature_model, FeatureLayout(
        layer=resolved,
        rule=rule,
        layer_shape=shape,
        embedding_dim=embedding_dim,
        stride=_stride(shape, input_size),
        traced=traced,
    )


def extractor_feature_model(
    extractor: Extractor,
    module: nn.Module,
    input_size: int,
    *,
    layer: str | None = None,
    pool: str | None = None,
    normalize: bool = False,
) -> tuple[FeatureModel, FeatureLayout]:
    """`build_feature_model` of ``module`` with ``extractor``'s defaults (its layer, pooling and
    embedding rule); ``layer`` and ``pool`` override the first two."""
    return build_feature_model(
        module,
        layer=layer if layer is not None else extractor.layer,
        pool=pool if pool is not None else extractor.pool,
        normalize=normalize,
        input_size=input_size,
        embedding=extractor.embedding,
    )


def default_layer(module: nn.Module, layer: str | None, embedding: str) -> str:
    """The name of the default embedding's layer as build_feature_model gives it: ``layer``,
    ``input of HEAD``, ``pre_logits`` or ``output``."""
    if layer is not None:
        return layer
    if embedding == "classifier":
        return CLASSIFIER_INPUT + classifier_head(module)
    return PRE_LOGITS if embedding == PRE_LOGITS else OUTPUT


class PreLogits(nn.Module):
    """A timm model's pre-logits features, computed by the model's own forward_features and
    forward_head (timm's convention: ``forward = forward_head(forward_features(x))``); the head's
    pooling and norm stay, only its classifier is skipped."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


def _as_is_pooling(shape: torch.Size, layer: str) -> str:
    """``none`` for an embedding that already is one vector per image; else an error asking for
    the pooling, since flattening a feature map or tokens silently is a guess."""
    if len(shape) == 2:
        return "none"
    what = "the model's output" if layer == OUTPUT else f"layer {layer!r}"
    kind = "feature maps" if len(shape) == 4 else "tokens" if len(shape) == 3 else "a tensor"
    choices = "avg, max or gem" if len(shape) == 4 else "cls, avg or max"
    raise FeatxError(
        f"{what} gives {kind} of shape {tuple(shape[1:])} per image, not one vector: choose how "
        f"to reduce them with --pool ({choices}; none flattens them)."
    )


def classifier_head(module: nn.Module) -> str:
    """The classifier of a torchvision-style model: its last top-level child named in
    CLASSIFIER_NAMES, or the part of that Sequential after its leading pooling, flatten, norm
    and dropout (``classifier.3`` for MaxViT)."""
    names = [name for name, _ in module.named_children() if name in CLASSIFIER_NAMES]
    if not names:
        raise FeatxError(
            f"{type(module).__name__} has no classifier named {', '.join(CLASSIFIER_NAMES)}; "
            "name the feature layer with --layer (`featx layers` lists them)."
        )
    head = module.get_submodule(names[-1])
    if not isinstance(head, nn.Sequential):
        return names[-1]
    for index, (name, child) in enumerate(head.named_children()):
        if not isinstance(child, _BEFORE_CLASSIFIER):
            return names[-1] if index == 0 else f"{names[-1]}.{name}"
    raise FeatxError(
        f"{type(module).__name__}.{names[-1]} holds no classifier layer; name the feature layer "
        "with --layer."
    )


def without_classifier(module: nn.Module, head: str) -> nn.Module:
    """``module`` with its classifier ``head`` (from `classifier_head`) computing nothing, so its
    output is the classifier's input. The result shares every weight with ``module`` (training it
    trains the model), which itself is left as it was."""
    body = copy.copy(module)
    body._modules = module._modules.copy()  # its own child table; the children are shared
    parent, _, first = head.rpartition(".")
    if not parent:
        setattr(body, head, nn.Identity())
        return body
    kept = []
    for name, child in module.get_submodule(parent).named_children():
        if name == first:
            break
        kept.append((name, child))
    setattr(body, parent, nn.Sequential(OrderedDict(kept)))
    return body


def trace_whole(module: nn.Module, input_size: int) -> fx.GraphModule | None:
    """``module`` as one torch.fx graph with the same output, or None when fx cannot trace it
    into one (BatchNorm folding works on the graph)."""
    if not _traceable(module):
        return None
    traced = _cut_at(module, _eval_node_names(module)[-1])
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        same = torch.equal(traced(probe), module(probe))
    return traced if same else None


def _traceable(module: nn.Module) -> bool:
    try:
        _eval_node_names(module)
    except Exception:  # whatever fx raises on Python it cannot trace
        return False
    return True


def _stride(shape: tuple[int, ...], input_size: int) -> int:
    if len(shape) == 3 and shape[-1] > 1:
        return input_size // shape[-1]
    if len(shape) == 2:
        grid = round((shape[0] - 1) ** 0.5)
        if grid > 0 and grid * grid == shape[0] - 1:
            return input_size // grid
    return 0


def _eval_node_names(module: nn.Module) -> list[str]:
    return list(get_graph_node_names(module, tracer_kwargs=_tracer_kwargs(module))[1])


def _tracer_kwargs(module: nn.Module) -> dict[str, list]:
    """For a model built from timm's layers: timm's own list of modules and functions that fx
    must keep whole (their Python control flow does not trace), as timm's feature extraction
    does; nothing otherwise."""
    if not any(type(m).__module__.startswith("timm.") for m in module.modules()):
        return {}
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {
        "leaf_modules": list(get_notrace_modules()),
        "autowrap_functions": list(get_notrace_functions()),
    }


def _cut_at(module: nn.Module, layer: str) -> fx.GraphModule:
    valid = layer_names(module)
    if layer not in valid:
        nearby = difflib.get_close_matches(layer, valid, n=_NEARBY, cutoff=0.4)
        hint = f" Nearby valid names: {', '.join(nearby)}." if nearby else ""
        raise FeatxError(
            f"layer {layer!r} is not in the model.{hint} `featx layers MODEL` lists all "
            f"{len(valid)} valid names."
        )
    dual = create_feature_extractor(
        module.eval(), return_nodes={layer: "features"}, tracer_kwargs=_tracer_kwargs(module)
    )
    graph = dual.graph
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = (output.args[0]["features"],)
    cut = fx.GraphModule(dual, graph, class_name=f"{type(module).__name__}Features")
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut.eval()
