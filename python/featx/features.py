"""Turning a model into a feature extractor: chosen layer, pooling, optional L2 normalisation."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from featx.runtime.errors import FeatxError
from featx.runtime.metadata import POOLINGS

GEM_POWER = 3.0
GEM_EPS = 1e-6
_NEARBY = 8


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
    layer_shape: tuple[int, ...]
    embedding_dim: int
    stride: int
    """Input pixels per feature-map cell or per patch token; 0 when the layer gives vectors."""
    traced: bool


def layer_names(module: nn.Module) -> list[str]:
    """Every name accepted as a feature layer: graph nodes and the modules that contain them."""
    nodes = _eval_node_names(module)
    prefixes = {node.rsplit(".", i)[0] for node in nodes for i in range(1, node.count(".") + 1)}
    return nodes + sorted(prefixes - set(nodes))


def build_feature_model(
    module: nn.Module,
    *,
    layer: str | None,
    pool: str,
    normalize: bool,
    input_size: int,
) -> tuple[FeatureModel, FeatureLayout]:
    """Cuts ``module`` at ``layer`` (None: the input of its final classifier, or its output) and
    adds pooling. The model is traced with torch.fx; an untraceable model is used whole."""
    module = module.eval()
    try:
        nodes = _eval_node_names(module)
    except Exception as err:
        if layer is not None:
            raise FeatxError(
                f"cannot select layer {layer!r}: the model cannot be traced with torch.fx "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "Export its whole output (omit --layer) or make the model traceable."
            ) from err
        body, resolved, traced = module, "output", False
    else:
        resolved = layer if layer is not None else _penultimate_node(module, nodes)
        body, traced = _cut_at(module, resolved), True

    feature_model = FeatureModel(body, pool, normalize).eval()
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = body(probe)
        if not isinstance(raw, torch.Tensor):
            raise FeatxError(
                f"layer {resolved!r} gives a {type(raw).__name__}, not a tensor; pick a layer "
                "whose output is one tensor (`featx layers` lists them)."
            )
        feature_model.pool.check(raw.shape, resolved)
        embedding_dim = int(feature_model(probe).shape[1])
    shape = tuple(int(s) for s in raw.shape[1:])
    return feature_model, FeatureLayout(
        layer=resolved,
        layer_shape=shape,
        embedding_dim=embedding_dim,
        stride=_stride(shape, input_size),
        traced=traced,
    )


def _stride(shape: tuple[int, ...], input_size: int) -> int:
    if len(shape) == 3 and shape[-1] > 1:
        return input_size // shape[-1]
    if len(shape) == 2:
        grid = round((shape[0] - 1) ** 0.5)
        if grid > 0 and grid * grid == shape[0] - 1:
            return input_size // grid
    return 0


def _eval_node_names(module: nn.Module) -> list[str]:
    return list(get_graph_node_names(module)[1])


def _penultimate_node(module: nn.Module, nodes: list[str]) -> str:
    """The node feeding the final nn.Linear (the classifier), else the model's last node."""
    linear_nodes = [
        name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name in nodes
    ]
    if not linear_nodes:
        return nodes[-1]
    index = nodes.index(linear_nodes[-1])
    return nodes[index - 1] if index > 0 else nodes[-1]


def _cut_at(module: nn.Module, layer: str) -> fx.GraphModule:
    valid = layer_names(module)
    if layer not in valid:
        nearby = difflib.get_close_matches(layer, valid, n=_NEARBY, cutoff=0.4)
        hint = f" Nearby valid names: {', '.join(nearby)}." if nearby else ""
        raise FeatxError(
            f"layer {layer!r} is not in the model.{hint} `featx layers MODEL` lists all "
            f"{len(valid)} valid names."
        )
    dual = create_feature_extractor(module.eval(), return_nodes={layer: "features"})
    graph = dual.graph
    output = next(node for node in graph.nodes if node.op == "output")
    output.args = (output.args[0]["features"],)
    cut = fx.GraphModule(dual, graph, class_name=f"{type(module).__name__}Features")
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut.eval()
