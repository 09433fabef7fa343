"""im2colbp: N-d convolution lowered to im2col + GEMM, with every gradient.

Forward ``y = W · im2col(x) + b``; backward ``dW = δ · im2col(x)ᵀ``,
``dx = col2im(Wᵀ · δ)``, ``db = Σ δ``. PyTorch-compatible arguments, any
spatial rank, groups, stride, dilation, every padding form and mode.
"""

from .convolution import (
    ConvContext,
    ConvGrads,
    conv,
    conv_backward,
    conv_forward,
    conv_grad_bias,
    conv_grad_input,
    conv_grad_weight,
    conv_transpose,
    conv_transpose_backward,
    conv_transpose_forward,
)
from .geometry import PADDING_MODES, ConvGeometry, WindowGeometry
from .layer import (
    Conv,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    no_grad,
)
from .lowering import col2im, im2col
from .memory import AllocationError, get_memory_limit, memory_limit
from .operators import conv_operator, im2col_operator
from .parallel import get_thread_limit, set_thread_limit, thread_limit
from .plan import ConvPlan, plan_conv
from .transposition import (
    backprop_kernel,
    conv_grad_input_by_transposition,
    conv_grad_weight_by_correlation,
    zero_insert,
)
from .workspace import (
    DEFAULT_WORKSPACE_LIMIT,
    get_workspace_limit,
    release_scratch,
    retained_scratch_bytes,
    set_workspace_limit,
    workspace_limit,
)

__version__ = "0.1.0"

__all__ = [
    "AllocationError",
    "Conv",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ConvContext",
    "ConvGeometry",
    "ConvGrads",
    "ConvPlan",
    "DEFAULT_WORKSPACE_LIMIT",
    "PADDING_MODES",
    "WindowGeometry",
    "backprop_kernel",
    "col2im",
    "conv",
    "conv_backward",
    "conv_forward",
    "conv_grad_bias",
    "conv_grad_input",
    "conv_grad_input_by_transposition",
    "conv_grad_weight",
    "conv_grad_weight_by_correlation",
    "conv_operator",
    "conv_transpose",
    "conv_transpose_backward",
    "conv_transpose_forward",
    "get_memory_limit",
    "get_thread_limit",
    "get_workspace_limit",
    "im2col",
    "im2col_operator",
    "memory_limit",
    "no_grad",
    "plan_conv",
    "release_scratch",
    "retained_scratch_bytes",
    "set_thread_limit",
    "set_workspace_limit",
    "thread_limit",
    "workspace_limit",
    "zero_insert",
]
