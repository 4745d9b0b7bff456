"""Inference-time graph surgery in PyTorch: BatchNorm folded into the preceding conv or linear
layer, dropout removed. Works on torch.fx graphs whose layers are modules (call_module nodes)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import torch
from torch import fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers and norms are matched by exact type, never as subclasses: a subclass may compute more
# than its base (timm's BatchNormAct2d applies its activation, StdConv2d standardises its
# weights), and folding would drop or undo that.
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass
class FoldReport:
    """What fold_batchnorm changed and what it left alone (with the reason)."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    dropouts_removed: int = 0
    reparameterized: list[str] = field(default_factory=list)
    """Blocks put into their single-branch inference form first (Extractor.deploy)."""
    skipped: list[str] = field(default_factory=list)


def folded_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``layer -> bn`` as one layer, computed in float64 so folding adds no
    rounding beyond the final cast. Output channels are dim 0 of ``weight``."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (
        (weight.double() * scale.reshape(shape)).to(weight.dtype),
        shift.to(weight.dtype),
    )


def fold_batchnorm(graph_module: fx.GraphModule) -> FoldReport:
    """Folds every eval-mode ``conv/linear -> batchnorm`` pair in place and drops dropout.

    Pairs are found as graph nodes and, inside modules the tracer keeps whole (torchvision's
    Conv2dNormActivation, say), as consecutive children of an nn.Sequential. A pair is folded
    only when the BatchNorm is the layer's sole consumer and the layer module is not reused
    elsewhere, so no other path sees the changed weights.
    """
    report = FoldReport()
    _fold_graph_nodes(graph_module, report)
    _fold_inside_sequentials(graph_module, report)
    return report


def _fold_graph_nodes(graph_module: fx.GraphModule, report: FoldReport) -> None:
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    for node in list(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if isinstance(module, _DROPOUTS):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            report.dropouts_removed += 1
            continue
        if type(module) not in _BATCHNORMS:
            continue
        reason = _unfoldable(node, module, modules, calls)
        if reason:
            report.skipped.append(f"{node.target}: {reason}")
            continue
        producer = node.args[0]
        fused = folded_layer(modules[producer.target], module)
        _replace_submodule(graph_module, producer.target, fused)
        modules[producer.target] = fused
        node.replace_all_uses_with(producer)
        graph_module.graph.erase_node(node)
        report.folded.append((producer.target, node.target))

    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()


def _fold_inside_sequentials(root: nn.Module, report: FoldReport) -> None:
    uses: dict[int, int] = {}
    for _, module in root.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for name, sequential in root.named_modules():
        if not isinstance(sequential, nn.Sequential):
            continue
        children = list(sequential.named_children())
        for (layer_key, layer), (bn_key, bn) in itertools.pairwise(children):
            if type(bn) not in _BATCHNORMS or not _pairs(layer, bn):
                continue
            where = f"{name}.{bn_key}" if name else bn_key
            if bn.training or bn.running_mean is None or bn.running_var is None:
                report.skipped.append(f"{where}: BatchNorm in training mode or without statistics")
                continue
            if uses[id(layer)] != 1:
                report.skipped.append(f"{where}: its layer is shared (used more than once)")
                continue
            setattr(sequential, layer_key, folded_layer(layer, bn))
            setattr(sequential, bn_key, nn.Identity())
            report.folded.append((f"{name}.{layer_key}" if name else layer_key, where))
        for key, child in children:
            if isinstance(child, _DROPOUTS):
                setattr(sequential, key, nn.Identity())
                report.dropouts_removed += 1


def _pairs(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` normalises the output channels of ``layer`` directly."""
    pairs = {
        nn.Conv1d: nn.BatchNorm1d,
        nn.Linear: nn.BatchNorm1d,
        nn.Conv2d: nn.BatchNorm2d,
        nn.Conv3d: nn.BatchNorm3d,
    }
    return pairs.get(type(layer)) is type(bn)


def _unfoldable(
    node: fx.Node,
    bn: nn.modules.batchnorm._BatchNorm,
    modules: dict[str, nn.Module],
    calls: dict[str, int],
) -> str | None:
    if bn.training:
        return "BatchNorm in training mode"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm without running statistics"
    producer = node.args[0] if node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        return "input is not a conv or linear module"
    layer = modules[producer.target]
    if type(layer) not in (*_CONVS, nn.Linear):
        return f"input is a {type(layer).__name__}, not a conv or linear layer"
    if not _pairs(layer, bn):
        return f"{type(bn).__name__} does not match {type(layer).__name__}'s output"
    if len(producer.users) != 1:
        return f"{producer.target} output is also used elsewhere"
    if calls.get(producer.target, 0) != 1:
        return f"{producer.target} is called more than once (shared weights)"
    return None


def folded_layer(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` whose weights and bias include ``bn``."""
    fused = copy.deepcopy(layer)
    bias = layer.bias.detach() if layer.bias is not None else None
    weight, bias = folded_weights(layer.weight.detach(), bias, bn)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def _replace_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
