"""featx.fuse: an inference model whose conv-BN(-add)-ReLU chains and attention run on featx's
fused kernels (featx.kernels).

The model is traced with torch.fx and patterns are matched on the graph, not on class names:

- ``conv2d [-> batchnorm] [-> add(other)] [-> relu]`` (BatchNorm folded first with featx.fold)
  becomes one ``FusedConv2d`` (featx::conv_bn_relu with the residual and ReLU in its epilogue).
  A conv is fused when there is something to fuse into it (a BatchNorm or a ReLU); a bare conv
  stays on cuDNN.
- ``nn.MultiheadAttention`` (a leaf call of the graph, as in torchvision's ViT) becomes a
  ``FusedMultiheadAttention`` whose softmax(QKᵀ)V runs on featx::attention.
- ``F.scaled_dot_product_attention(q, k, v)`` without mask, dropout or causality becomes
  ``torch.ops.featx.attention``.

Everything else stays PyTorch, and the report says what was fused and what was not (and why).
A module that torch.fx cannot trace is fused child by child.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

import featx.kernels  # registers torch.ops.featx.*
from featx.fold import FoldReport, fold_batchnorm

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


@dataclass
class FuseReport:
    """What featx.fuse changed: counts per fused pattern, and what stayed PyTorch (and why)."""

    fused: Counter = field(default_factory=Counter)
    left: list[str] = field(default_factory=list)
    fold: FoldReport = field(default_factory=FoldReport)

    def summary(self) -> str:
        if not self.fused:
            lines = ["nothing fused"]
        else:
            total = sum(self.fused.values())
            lines = [f"fused {total} blocks onto featx kernels:"]
            lines += [f"  {pattern}: {count}" for pattern, count in sorted(self.fused.items())]
        if self.left:
            lines.append(f"left in PyTorch ({len(self.left)}):")
            lines += [f"  {entry}" for entry in self.left]
        return "\n".join(lines)


class FusedConv2d(nn.Module):
    """A groups=1 Conv2d with its BatchNorm folded in, plus optional residual add and ReLU, on
    featx::conv_bn_relu. Weights are kept in channels_last, the kernel's native layout."""

    def __init__(self, conv: nn.Conv2d, relu: bool):
        super().__init__()
        weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", bias.clone())
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return featx.kernels.conv_bn_relu(
            x,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            residual=residual,
            relu=self.relu,
        )

    def extra_repr(self) -> str:
        out_channels, in_channels, kh, kw = self.weight.shape
        return (
            f"{in_channels}, {out_channels}, kernel_size=({kh}, {kw}), stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, relu={self.relu}"
        )


class FusedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention (inference, no attention mask, weights not returned) with the
    attention itself on featx::attention; projections stay nn.Linear-equivalent matmuls."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.heads = mha.num_heads
        self.batch_first = mha.batch_first
        w_q, w_k, w_v = mha.in_proj_weight.detach().clone().chunk(3)
        b_q, b_k, b_v = (
            mha.in_proj_bias.detach().clone().chunk(3)
            if mha.in_proj_bias is not None
            else (None, None, None)
        )
        self.q_proj = _linear(w_q, b_q)
        self.k_proj = _linear(w_k, b_k)
        self.v_proj = _linear(w_v, b_v)
        self.out_proj = _linear(mha.out_proj.weight.detach().clone(), _clone(mha.out_proj.bias))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if attn_mask is not None or is_causal:
            raise ValueError(
                "FusedMultiheadAttention supports key_padding_mask only (no attn_mask, not "
                "causal); fuse left such calls in PyTorch only when it could see them"
            )
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = (
            self._heads(proj(t))
            for proj, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        )
        attended = featx.kernels.attention(q, k, v, key_padding_mask)
        out = self.out_proj(attended.transpose(1, 2).flatten(2))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        return tokens.reshape(batch, length, self.heads, -1).transpose(1, 2)


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer


def fuse(model: nn.Module) -> nn.Module:
    """Returns an inference copy of ``model`` (eval mode, ``model`` untouched) whose fusable
    blocks run on featx kernels; ``result.fuse_report`` (FuseReport) says what was fused."""
    fused = copy.deepcopy(model).eval()
    report = FuseReport()
    fused = _fuse_module(fused, report, "")
    fused.fuse_report = report
    return fused


def fuse_graph(graph_module: fx.GraphModule) -> FuseReport:
    """Fuses a traced graph module in place (BatchNorm folded first) and reports what changed."""
    report = FuseReport()
    _fuse_traced(graph_module, report, "")
    return report


def _fuse_module(module: nn.Module, report: FuseReport, prefix: str) -> nn.Module:
    if isinstance(module, fx.GraphModule):
        _fuse_traced(module, report, prefix)
        return module
    try:
        traced = fx.symbolic_trace(module)
    except Exception as err:
        children = list(module.named_children())
        if not children:
            # Parameter-free leaves (pooling heads, say) hold nothing fusable: no report entry.
            if any(True for _ in module.parameters()):
                where = prefix.rstrip(".") or type(module).__name__
                report.left.append(f"{where}: not traceable by torch.fx ({err})")
            return module
        for name, child in children:
            setattr(module, name, _fuse_module(child, report, f"{prefix}{name}."))
        return module
    _fuse_traced(traced, report, prefix)
    return traced


def _fuse_traced(graph_module: fx.GraphModule, report: FuseReport, prefix: str) -> None:
    fold = fold_batchnorm(graph_module)
    report.fold.folded += [(prefix + a, prefix + b) for a, b in fold.folded]
    report.fold.dropouts_removed += fold.dropouts_removed
    report.fold.skipped += [prefix + s for s in fold.skipped]
    folded_convs = {layer for layer, _ in fold.folded}
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d):
            _fuse_conv(graph_module, node, modules, node.target in folded_convs, report, prefix)
        elif node.op == "call_module" and isinstance(
            modules.get(node.target), nn.MultiheadAttention
        ):
            _fuse_multihead_attention(graph_module, node, modules, report, prefix)
        elif node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            _fuse_sdpa(graph_module, node, report)
    graph_module.graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_relu(node: fx.Node | None, modules: dict[str, nn.Module]) -> bool:
    if node is None:
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _residual_of(add: fx.Node | None, conv: fx.Node) -> fx.Node | None:
    """The other operand when ``add`` is a plain ``conv + other`` of two graph values."""
    if add is None or add.op != "call_function" or add.target not in _ADD_FUNCTIONS:
        return None
    if len(add.args) != 2 or add.kwargs:
        return None
    left, right = add.args
    other = right if left is conv else left if right is conv else None
    return other if isinstance(other, fx.Node) and other is not conv else None


def _fuse_conv(
    graph_module: fx.GraphModule,
    node: fx.Node,
    modules: dict[str, nn.Module],
    bn_folded: bool,
    report: FuseReport,
    prefix: str,
) -> None:
    conv = modules[node.target]
    where = prefix + node.target
    if len(node.args) != 1 or node.kwargs:
        report.left.append(f"{where}: called with other than one positional input")
        return
    if conv.groups != 1:
        report.left.append(f"{where}: grouped/depthwise conv (groups={conv.groups})")
        return
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        report.left.append(f"{where}: padding {conv.padding!r}/{conv.padding_mode} not fused")
        return
    chain = [node]
    residual = _residual_of(_single_user(node), node)
    if residual is not None:
        chain.append(_single_user(node))
    relu = _is_relu(_single_user(chain[-1]), modules)
    if relu:
        chain.append(_single_user(chain[-1]))
    if not (bn_folded or relu):
        return
    pattern = "conv" + ("+bn" if bn_folded else "") + ("+add" if residual else "")
    pattern += "+relu" if relu else ""

    name = node.target.replace(".", "_") + "_fused"
    graph_module.add_submodule(name, FusedConv2d(conv, relu))
    last = chain[-1]
    with graph_module.graph.inserting_before(last):
        args = (node.args[0], residual) if residual is not None else (node.args[0],)
        fused = graph_module.graph.call_module(name, args)
    last.replace_all_uses_with(fused)
    for stale in reversed(chain):
        graph_module.graph.erase_node(stale)
    report.fused[pattern] += 1


def _fuse_multihead_attention(
    graph_module: fx.GraphModule,
    node: fx.Node,
    modules: dict[str, nn.Module],
    report: FuseReport,
    prefix: str,
) -> None:
    mha = modules[node.target]
    where = prefix + node.target
    reason = _mha_unfusable(node, mha)
    if reason:
        report.left.append(f"{where}: {reason}")
        return
    graph_module.add_submodule(
        node.target.replace(".", "_") + "_fused", FusedMultiheadAttention(mha)
    )
    node.target = node.target.replace(".", "_") + "_fused"
    report.fused["multihead_attention"] += 1


def _mha_unfusable(node: fx.Node, mha: nn.MultiheadAttention) -> str | None:
    if not mha._qkv_same_embed_dim:
        return "key/value dims differ from the embedding dim"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    kwargs = dict(
        zip(("key_padding_mask", "need_weights", "attn_mask"), node.args[3:], strict=False)
    )
    kwargs.update(node.kwargs)
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal", False):
        return "attention mask or causal attention (only key_padding_mask is fused)"
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 0:
            continue
        if user.op == "call_function" and user.target is operator.getitem and not user.users:
            continue
        return "its attention weights are used"
    return None


def _fuse_sdpa(graph_module: fx.GraphModule, node: fx.Node, report: FuseReport) -> None:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    if (
        bound.get("attn_mask") is not None
        or bound.get("dropout_p", 0.0) != 0.0
        or bound.get("is_causal", False)
        or bound.get("enable_gqa", False)
    ):
        report.left.append(f"{node.name}: scaled_dot_product_attention with mask/dropout/causal")
        return
    with graph_module.graph.inserting_before(node):
        fused = graph_module.graph.call_function(
            torch.ops.featx.attention.default,
            (bound["query"], bound["key"], bound["value"], None, bound.get("scale")),
        )
    node.replace_all_uses_with(fused)
    graph_module.graph.erase_node(node)
    report.fused["scaled_dot_product_attention"] += 1
