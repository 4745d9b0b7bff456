"""featx's fused kernels against their float64 references, with the project's tolerance policy.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (set in conftest.py); the `gpu` tests run
the same cases compiled on CUDA, bfloat16 included. Shapes are deliberately odd.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import featx.kernels.launch as launch
from featx.bench.cases import ATTENTION_SHAPE
from featx.bench.kernels import resnet50_conv_blocks
from featx.kernels import attention, conv_bn_relu
from featx.testing.gpu_compile import VARIANTS
from featx.testing.references import attention_ref, conv_bn_relu_ref
from featx.testing.tolerance import assert_within_tolerance

# (batch, channels, height, width, out_channels, kernel, stride, padding, dilation, residual, relu)
CONV_CASES = {
    "stem-7x7-s2-c3": (2, 3, 13, 13, 16, 7, 2, 3, 1, False, True),
    "3x3-c67-residual": (2, 67, 7, 7, 67, 3, 1, 1, 1, True, True),
    "1x1-s2-no-relu": (1, 67, 13, 13, 33, 1, 2, 0, 1, False, False),
    "3x3-dilation2-residual-no-relu": (2, 16, 13, 7, 24, 3, 1, 2, 2, True, False),
    "3x3-s2-c3-to-67": (1, 3, 7, 7, 67, 3, 2, 1, 1, False, True),
}
# (batch, heads, length, head_dim, masked)
ATTENTION_CASES = {
    "vit-like-197x40-masked": (2, 3, 197, 40, True),
    "one-token-d64": (1, 2, 1, 64, False),
    "257x80-two-key-blocks": (2, 2, 257, 80, False),
    "33x128-masked": (1, 2, 33, 128, True),
    "13x32-masked": (2, 1, 13, 32, True),
}
# The interpreter maps tensors to numpy, which has no bfloat16: bf16 runs only in the gpu tests.
CPU_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The models' own shapes (featx.bench's conv and attention cases) in the dtypes they run in. Batch
# 16: Triton specialises integer arguments on divisibility by 16, so the kernels compiled here
# are the ones the GPU benchmark (batch 64 and 256) reuses from Triton's cache.
MODEL_SHAPE_DTYPES = [torch.float16, torch.bfloat16]
MODEL_SHAPE_BATCH = 16


def _conv_inputs(case, dtype, device, seed=0):
    n, c, h, w, k, r, stride, pad, dil, has_residual, relu = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=generator)
    weight = torch.randn(k, c, r, r, generator=generator) / (c * r * r) ** 0.5
    bias = torch.randn(k, generator=generator)
    out_h = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
    out_w = (w + 2 * pad - dil * (r - 1) - 1) // stride + 1
    residual = torch.randn(n, k, out_h, out_w, generator=generator) if has_residual else None
    options = {
        "stride": (stride, stride),
        "padding": (pad, pad),
        "dilation": (dil, dil),
        "relu": relu,
    }
    tensors = [t.to(device, dtype) if t is not None else None for t in (x, weight, bias, residual)]
    return tensors, options


def _check_conv(case, dtype, device):
    (x, weight, bias, residual), options = _conv_inputs(case, dtype, device)
    got = conv_bn_relu(x, weight, bias, residual=residual, **options)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert got.dtype == dtype
    reference = conv_bn_relu_ref(x, weight, bias, residual=residual, **options)
    pytorch = conv_bn_relu_ref(x, weight, bias, residual=residual, dtype=None, **options)
    assert_within_tolerance(got, pytorch, reference, dtype)


def _attention_inputs(case, dtype, device, seed=0):
    b, h, length, d, masked = case
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, length, d, generator=generator).to(device, dtype) for _ in "qkv")
    mask = None
    if masked:
        # Batch 0 keeps only its first third of keys; other rows keep all but the last key.
        mask = torch.zeros(b, length, dtype=torch.bool)
        mask[0, max(1, length // 3) :] = True
        if b > 1 and length > 1:
            mask[1:, -1] = True
        mask = mask.to(device)
    return q, k, v, mask


def _check_attention(case, dtype, device):
    q, k, v, mask = _attention_inputs(case, dtype, device)
    got = attention(q, k, v, mask)
    assert got.shape == q.shape
    assert got.dtype == dtype
    reference = attention_ref(q, k, v, mask)
    pytorch = attention_ref(q, k, v, mask, dtype=None)
    assert_within_tolerance(got, pytorch, reference, dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_bn_relu_interpreted_matches_reference(case, dtype):
    _check_conv(case, dtype, "cpu")


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", ATTENTION_CASES.values(), ids=ATTENTION_CASES.keys())
def test_attention_interpreted_matches_reference(case, dtype):
    _check_attention(case, dtype, "cpu")


def test_conv_bn_relu_gives_one_result_for_every_input_memory_format():
    (x, weight, bias, residual), options = _conv_inputs(CONV_CASES["3x3-c67-residual"], None, "cpu")
    nchw = conv_bn_relu(x, weight, bias, residual=residual, **options)
    nhwc = conv_bn_relu(
        x.contiguous(memory_format=torch.channels_last),
        weight,
        bias,
        residual=residual.contiguous(memory_format=torch.channels_last),
        **options,
    )
    torch.testing.assert_close(nchw, nhwc, rtol=0, atol=0)


def test_attention_takes_strided_views_of_a_packed_qkv():
    """nn.MultiheadAttention-style q, k, v are transposed views; the kernel reads strides."""
    packed = torch.randn(2, 197, 3, 4, 40)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    got = attention(q, k, v)
    assert_within_tolerance(
        got, attention_ref(q, k, v, dtype=None), attention_ref(q, k, v), torch.float32
    )


def test_attention_explicit_scale_is_used():
    q, k, v, _ = _attention_inputs(ATTENTION_CASES["13x32-masked"], torch.float32, "cpu")
    got = attention(q, k, v, scale=0.5)
    assert_within_tolerance(
        got,
        attention_ref(q, k, v, scale=0.5, dtype=None),
        attention_ref(q, k, v, scale=0.5),
        torch.float32,
    )


def test_cpu_without_interpreter_computes_the_same_with_pytorch_ops(monkeypatch):
    """Without TRITON_INTERPRET a CPU tensor takes the reference composition (same contract)."""
    monkeypatch.setattr(launch, "INTERPRET", False)
    (x, weight, bias, residual), options = _conv_inputs(CONV_CASES["3x3-c67-residual"], None, "cpu")
    got = conv_bn_relu(x, weight, bias, residual=residual, **options)
    assert got.is_contiguous(memory_format=torch.channels_last)
    expected = conv_bn_relu_ref(x, weight, bias, residual=residual, dtype=None, **options)
    torch.testing.assert_close(got, expected)
    q, k, v, mask = _attention_inputs(ATTENTION_CASES["13x32-masked"], torch.float32, "cpu")
    torch.testing.assert_close(attention(q, k, v, mask), attention_ref(q, k, v, mask, dtype=None))


def _conv_args(**changes):
    args = {
        "x": torch.randn(1, 4, 8, 8),
        "weight": torch.randn(6, 4, 3, 3),
        "bias": torch.randn(6),
        "residual": None,
        "padding": (1, 1),
    }
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"x": torch.randn(4, 8, 8)}, ValueError, "x must have 4 dimensions"),
        ({"x": torch.ones(1, 4, 8, 8, dtype=torch.int32)}, TypeError, "x must be float32"),
        ({"weight": torch.randn(6, 2, 3, 3)}, ValueError, "only groups=1"),
        ({"bias": torch.randn(5)}, ValueError, "bias has 5 entries"),
        ({"bias": torch.randn(6).half()}, TypeError, "cast them to one dtype"),
        ({"bias": torch.randn(6, device="meta")}, ValueError, "move both to one device"),
        ({"residual": torch.randn(1, 6, 7, 7)}, ValueError, "residual must have the output's"),
        ({"padding": (-1, 0)}, ValueError, "padding must be two integers >= 0"),
        ({"x": torch.randn(1, 4, 2, 2), "padding": (0, 0)}, ValueError, "does not fit"),
    ],
)
def test_conv_bn_relu_names_the_failed_constraint(changes, error, message):
    args = _conv_args(**changes)
    with pytest.raises(error, match=message):
        conv_bn_relu(
            args["x"],
            args["weight"],
            args["bias"],
            residual=args["residual"],
            padding=args["padding"],
        )


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"q": torch.randn(2, 5, 16)}, ValueError, "q must have 4 dimensions"),
        ({"v": torch.randn(2, 3, 6, 16)}, ValueError, "k and v must have one shape"),
        ({"k": torch.randn(2, 3, 5, 8), "v": torch.randn(2, 3, 5, 8)}, ValueError, "head dim"),
        (
            {"q": torch.randn(2, 3, 5, 300), "k": torch.randn(2, 3, 5, 300)}
            | {"v": torch.randn(2, 3, 5, 300)},
            ValueError,
            "head dim must be 1..256",
        ),
        ({"mask": torch.zeros(2, 5)}, TypeError, "key_padding_mask must be bool"),
        ({"mask": torch.zeros(2, 4, dtype=torch.bool)}, ValueError, r"shape \(B, L_k\)"),
        ({"k": torch.randn(2, 3, 5, 16).double()}, TypeError, "k must be float32"),
    ],
)
def test_attention_names_the_failed_constraint(changes, error, message):
    args = {
        "q": torch.randn(2, 3, 5, 16),
        "k": torch.randn(2, 3, 5, 16),
        "v": torch.randn(2, 3, 5, 16),
        "mask": None,
    }
    args.update(changes)
    with pytest.raises(error, match=message):
        attention(args["q"], args["k"], args["v"], args["mask"])


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation and dispatch are consistent, so torch.compile and
    torch.export can trace through featx's ops."""
    (x, weight, bias, residual), _ = _conv_inputs(CONV_CASES["3x3-c67-residual"], None, "cpu")
    torch.library.opcheck(
        torch.ops.featx.conv_bn_relu.default,
        (x, weight, bias, [1, 1], [1, 1], [1, 1], residual, True),
    )
    torch.library.opcheck(
        torch.ops.featx.conv_bn_relu.default, (x, weight, bias, [2, 2], [0, 0], [1, 1], None, False)
    )
    q, k, v, mask = _attention_inputs(ATTENTION_CASES["13x32-masked"], torch.float32, "cpu")
    torch.library.opcheck(torch.ops.featx.attention.default, (q, k, v, mask, None))
    torch.library.opcheck(torch.ops.featx.attention.default, (q, k, v, None, 0.25))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_bn_relu_compiled_matches_reference(case, dtype):
    _check_conv(case, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", ATTENTION_CASES.values(), ids=ATTENTION_CASES.keys())
def test_attention_compiled_matches_reference(case, dtype):
    _check_attention(case, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", MODEL_SHAPE_DTYPES, ids=str)
@pytest.mark.parametrize("block", resnet50_conv_blocks().values(), ids=resnet50_conv_blocks())
def test_conv_bn_relu_compiled_at_model_shapes(block, dtype):
    """Every distinct conv block of ResNet-50 at 224x224: real layer sizes, many programs,
    autotuned tiles."""
    case = (
        *(MODEL_SHAPE_BATCH, block.channels, block.height, block.width, block.out_channels),
        *(block.kernel, block.stride, block.padding, 1, block.residual, block.relu),
    )
    _check_conv(case, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", MODEL_SHAPE_DTYPES, ids=str)
def test_attention_compiled_at_model_shapes(dtype):
    """ViT-B/16's attention (12 heads, 197 tokens, head dim 64)."""
    shape = ATTENTION_SHAPE
    case = (MODEL_SHAPE_BATCH, shape["heads"], shape["length"], shape["head_dim"], False)
    _check_attention(case, dtype, "cuda")


@pytest.mark.gpu
def test_custom_ops_pass_opcheck_on_cuda():
    (x, weight, bias, residual), _ = _conv_inputs(CONV_CASES["3x3-c67-residual"], None, "cuda")
    torch.library.opcheck(
        torch.ops.featx.conv_bn_relu.default,
        (x, weight, bias, [1, 1], [1, 1], [1, 1], residual, True),
    )
    q, k, v, mask = _attention_inputs(ATTENTION_CASES["13x32-masked"], torch.float16, "cuda")
    torch.library.opcheck(torch.ops.featx.attention.default, (q, k, v, mask, None))


def test_kernels_compile_for_hopper_without_a_gpu():
    """The real compiler (to an sm_90 cubin with Triton's ptxas) on the conv tiles and attention
    head dims that stress it most: what the interpreter above cannot check."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "featx.testing.gpu_compile", "--arch", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(rows) == len(VARIANTS)
    for row in rows:
        assert row["ok"], row
        assert 0 < row["shared_bytes"] <= row["shared_limit"]
