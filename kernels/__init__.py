"""featx's fused Triton ops, one op per file. Importing this package registers the custom ops
``torch.ops.featx.conv_bn_relu`` and ``torch.ops.featx.attention``."""

from featx.kernels.attention import attention
from featx.kernels.conv_bn_relu import conv_bn_relu

__all__ = ["attention", "conv_bn_relu"]
