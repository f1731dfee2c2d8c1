"""The op API the model calls. Two backends compute the same functions:

- "torch": plain PyTorch (`kernels.reference`), on any device; the definition of each op.
- "triton": hand-written kernels on CUDA (`kernels.triton_ops`); "auto" (the default) picks them
  for CUDA tensors and the torch twins for everything else; DSA_KERNELS=torch in the environment
  chooses the twins everywhere. `python -m kernels.bench --check` holds them together on a GPU.

Signatures are built for a fixed-address, graph-capturable step: caches are preallocated
ring buffers written in place, positions/slots/rows are device tensors, never Python ints.
See `kernels.reference` for shapes.
"""
from __future__ import annotations

import os

import torch

from kernels import reference

BACKENDS = ("auto", "torch", "triton")
_backend = os.environ.get("DSA_KERNELS", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"DSA_KERNELS={_backend!r} is not a kernel backend; choose one of {BACKENDS}")


def set_backend(name: str) -> None:
    """Choose "auto" (Triton on CUDA when available, else torch), "torch" or "triton"."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    _backend = name


def backend() -> str:
    return _backend


def _impl(x: torch.Tensor):
    """The module implementing the ops for tensors like x."""
    if _backend == "torch":
        return reference
    if _backend == "triton" or (_backend == "auto" and x.is_cuda):
        try:
            from kernels import triton_ops  # noqa: PLC0415 (optional backend)
        except ImportError:
            if _backend == "triton":
                raise RuntimeError("the triton kernel backend is not available in this build") from None
            return reference
        return triton_ops
    return reference


def qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps=1e-6):
    return _impl(q).qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps)


def frame_attention(q, k_cache, v_cache, rows, start, count):
    return _impl(q).frame_attention(q, k_cache, v_cache, rows, start, count)


def modulated_layer_norm(x, shift, scale, eps=1e-6):
    return _impl(x).modulated_layer_norm(x, shift, scale, eps)


def gated_residual(x, y, gate):
    return _impl(x).gated_residual(x, y, gate)


# fused block ops: a block's linears with the adaLN pieces around them (the frame step's path)
def modulated_ln_linear(x, shift, scale, weight, bias, gelu=False, eps=1e-6):
    return _impl(x).modulated_ln_linear(x, shift, scale, weight, bias, gelu, eps)


def linear_gated_residual(x, inp, weight, bias, gate):
    return _impl(x).linear_gated_residual(x, inp, weight, bias, gate)


def modulated_ln_qkv_append(x, shift, scale, qkv_weight, qkv_bias, q_weight, k_weight, cos, sin,
                            k_cache, v_cache, rows, slot, n_heads, eps=1e-6):
    return _impl(x).modulated_ln_qkv_append(x, shift, scale, qkv_weight, qkv_bias, q_weight, k_weight, cos, sin,
                                            k_cache, v_cache, rows, slot, n_heads, eps)


rms_norm = reference.rms_norm
apply_rope = reference.apply_rope
