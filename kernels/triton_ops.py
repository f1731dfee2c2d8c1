"""The Triton backend of `kernels.ops`: the same functions and signatures as `kernels.reference`.

Kernels compile on first call, so this module imports on a machine with Triton and no GPU.
They run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests).

The kernels have no backward: where autograd needs one (training through `Block.forward`),
the call goes to the reference, so `ops` stays correct for every caller.
"""
from __future__ import annotations

import os

import torch

from kernels import adaln, reference
from kernels import frame_attention as _attention
from kernels import fused_linear, kv_append, qkv_append

__all__ = ["qk_norm_rope_append", "frame_attention", "modulated_layer_norm", "gated_residual",
           "gated_residual_modulated_layer_norm", "modulated_ln_linear", "linear_gated_residual",
           "modulated_ln_qkv_append"]


def _check_device(x: torch.Tensor) -> None:
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"the triton kernel backend needs CUDA tensors (got {x.device}); "
                           "use kernels.ops.set_backend('torch') or 'auto' on this device")


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps=1e-6):
    if _needs_grad(q, k, v, q_weight, k_weight):
        return reference.qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps)
    _check_device(q)
    return kv_append.qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps)


def frame_attention(q, k_cache, v_cache, rows, start, count):
    if _needs_grad(q, k_cache, v_cache):
        return reference.frame_attention(q, k_cache, v_cache, rows, start, count)
    _check_device(q)
    return _attention.frame_attention(q, k_cache, v_cache, rows, start, count)


def modulated_layer_norm(x, shift, scale, eps=1e-6):
    if _needs_grad(x, shift, scale):
        return reference.modulated_layer_norm(x, shift, scale, eps)
    _check_device(x)
    return adaln.modulated_layer_norm(x, shift, scale, eps)


def gated_residual(x, y, gate):
    if _needs_grad(x, y, gate):
        return reference.gated_residual(x, y, gate)
    _check_device(x)
    return adaln.gated_residual(x, y, gate)


def gated_residual_modulated_layer_norm(x, y, gate, shift, scale, eps=1e-6):
    """(x + gate * y, modulated_layer_norm(x + gate * y, shift, scale, eps)); not yet in `ops`."""
    if _needs_grad(x, y, gate, shift, scale):
        return adaln.reference_fused(x, y, gate, shift, scale, eps)
    _check_device(x)
    return adaln.gated_residual_modulated_layer_norm(x, y, gate, shift, scale, eps)


def modulated_ln_linear(x, shift, scale, weight, bias, gelu=False, eps=1e-6):
    if _needs_grad(x, shift, scale, weight) or x.shape[-1] > adaln.MAX_D:
        return reference.modulated_ln_linear(x, shift, scale, weight, bias, gelu, eps)
    _check_device(x)
    return fused_linear.modulated_ln_linear(x, shift, scale, weight, bias, gelu, eps)


def linear_gated_residual(x, inp, weight, bias, gate):
    if _needs_grad(x, inp, weight, gate):
        return reference.linear_gated_residual(x, inp, weight, bias, gate)
    _check_device(x)
    return fused_linear.linear_gated_residual(x, inp, weight, bias, gate)


def modulated_ln_qkv_append(x, shift, scale, qkv_weight, qkv_bias, q_weight, k_weight, cos, sin,
                            k_cache, v_cache, rows, slot, n_heads, eps=1e-6):
    if _needs_grad(x, shift, scale, qkv_weight, q_weight, k_weight):
        return reference.modulated_ln_qkv_append(x, shift, scale, qkv_weight, qkv_bias, q_weight, k_weight, cos, sin,
                                                 k_cache, v_cache, rows, slot, n_heads, eps)
    _check_device(x)
    return qkv_append.modulated_ln_qkv_append(x, shift, scale, qkv_weight, qkv_bias, q_weight, k_weight, cos, sin,
                                              k_cache, v_cache, rows, slot, n_heads, eps)
