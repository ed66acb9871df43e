"""int8 weights for serving on a CPU (`--precision`): fbgemm's dynamic int8 Linear, one weight scale per output
channel, activations quantized per call.

Why which model gets them, and what they cost in fidelity, is measured in docs/performance.md ("int8 weights"):
the base model loses little, the SFT model too much for a default, so `auto` quantizes the base model only.
"""

from __future__ import annotations

import functools

from .errors import UserError
from .settings import PRECISIONS

# The inputs of the MLP's down projection carry the few huge activations of small LLMs, which int8 activations
# (one scale per call) flatten; it stays float (docs/performance.md).
INT8_KEEP_FLOAT = ("down_proj",)


class PrecisionError(UserError):
    """A precision that cannot run here; the message says what to use instead."""


def int8_roles(precision: str, device: str) -> set[str]:
    """Which models ("base", "sft") get int8 weights: `auto` the base model on a CPU, `int8` both, `float` neither.
    fbgemm's int8 kernels are CPU-only, so on a GPU nothing is quantized."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"Unknown precision '{precision}'. Fix: use one of {', '.join(PRECISIONS)}.")
    on_cpu = device == "cpu"
    if precision in ("int8", "int4") and not on_cpu:
        raise PrecisionError(
            f"{precision} weights run on the CPU only, not on '{device}'. Fix: --precision auto or float."
        )
    return {"auto": {"base"}, "int4": {"base"}, "int8": {"base", "sft"}, "float": set()}[precision] if on_cpu else set()


def quantize_int8(model, keep_float: tuple[str, ...] = ()) -> None:
    """Quantize a model's Linear layers to int8 in place (weights prepacked once with a scale per output channel,
    activations quantized per call by fbgemm), leaving layers whose last name part is in `keep_float` in float.

    The engine promises that a row's answer does not depend on the rows batched with it (greedy: token for
    token). Three things would break that promise here, so each is undone:
    - fbgemm quantizes a call's activations with one scale for the whole tensor, so one row would shift
      another's rounding: every quantized layer runs the rows of a batch one by one;
    - MKL rounds a 2-row float GEMM and a 1-row GEMV differently in the last bit, which int8 rounding
      downstream turns into other tokens: the float layers kept for LoRA run row by row too;
    - PyTorch's SDPA kernel splits its work by batch size, which changes the last bits of a row's result:
      the model uses eager attention.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    RowwiseLinear, RowwiseInt8Linear = int8_layer_types()
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in keep_float
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice: torchao is its successor, not installed here
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True, mapping={torch.nn.Linear: RowwiseInt8Linear})
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = RowwiseLinear  # still an nn.Linear, so PEFT wraps it as usual
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


def _rowwise(forward, x):
    import torch

    if x.dim() == 3 and x.shape[0] > 1:
        return torch.cat([forward(row) for row in x.split(1)])
    return forward(x)


@functools.cache
def int8_layer_types():
    """(RowwiseLinear, RowwiseInt8Linear), defined on first use so importing this module does not import torch."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    class RowwiseLinear(torch.nn.Linear):
        """A float Linear layer that computes each row of a batch alone (see quantize_int8)."""

        def forward(self, x):
            return _rowwise(super().forward, x)

    class KeptPackedParams(LinearPackedParams):
        # PEFT loads an adapter with load_state_dict(strict=False) and a state dict holding only LoRA weights;
        # torch's quantized modules insist on finding their own keys, so they keep what they have instead.
        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            if prefix + "_packed_params" in state_dict:
                super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    class RowwiseInt8Linear(DynamicInt8Linear):
        """fbgemm's dynamic int8 Linear, computing each row of a batch alone (see quantize_int8)."""

        def forward(self, x):
            return _rowwise(super().forward, x)

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            if prefix + "scale" in state_dict:
                super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

        @classmethod
        def from_float(cls, module, use_precomputed_fake_quant=False):
            quantized = DynamicInt8Linear.from_float(module, use_precomputed_fake_quant)
            quantized.__class__ = cls
            quantized._packed_params.__class__ = KeptPackedParams
            return quantized

    return RowwiseLinear, RowwiseInt8Linear
