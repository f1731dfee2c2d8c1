"""adaLN pieces of a block: modulated LayerNorm and the gated residual add, fused over rows of D.

x, y [B, F*N, D] hold F frames of N tokens; shift, scale, gate [B, F, D] hold one row per
frame, broadcast over its tokens (strided views of the ada projection are fine).

- modulated_layer_norm: h = LN(x) * (1 + scale) + shift, LayerNorm without affine, fp32 stats.
- gated_residual: x + gate * y.
- gated_residual_modulated_layer_norm: both at once, (x + gate * y, LN(x + gate * y) * ...),
  what a block does between attention and its MLP; it reads x once instead of twice.

One kernel serves all three (RESIDUAL / NORM constexpr flags): a program takes BLOCK_ROWS
rows of one tile each; frame f = (row % L) // N picks the modulation row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference as _reference


@triton.jit
def _adaln_kernel(
    X,  # [B, L, D] residual stream (L = F*N), last dim contiguous
    Y,  # [B, L, D] branch output added through the gate (RESIDUAL)
    Gate,  # [B, F, D] per-frame gate (RESIDUAL)
    Shift,  # [B, F, D] per-frame shift (NORM)
    Scale,  # [B, F, D] per-frame scale (NORM)
    XOut,  # [B, L, D] x + gate * y (RESIDUAL)
    HOut,  # [B, L, D] modulated LayerNorm of x (or of x + gate * y with RESIDUAL)
    stride_xb, stride_xl,  # x strides (elements)
    stride_yb, stride_yl,  # y strides
    stride_gb, stride_gf,  # gate strides
    stride_shb, stride_shf,  # shift strides
    stride_scb, stride_scf,  # scale strides
    stride_xob, stride_xol,  # x-out strides
    stride_hob, stride_hol,  # h-out strides
    n_rows, L, N, D,  # B*L rows, tokens per row of the batch, tokens per frame, width
    eps,  # LayerNorm epsilon
    RESIDUAL: tl.constexpr,  # compute and store x + gate * y
    NORM: tl.constexpr,  # compute and store the modulated LayerNorm
    BLOCK_ROWS: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two
):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    b = (row // L).to(tl.int64)
    l = row % L
    f = l // N
    d_mask = cols < D
    mask = (row < n_rows)[:, None] & d_mask[None, :]

    x = tl.load(X + (b * stride_xb + l * stride_xl)[:, None] + cols[None, :], mask=mask, other=0.0)
    if RESIDUAL:
        y = tl.load(Y + (b * stride_yb + l * stride_yl)[:, None] + cols[None, :], mask=mask, other=0.0)
        g = tl.load(Gate + (b * stride_gb + f * stride_gf)[:, None] + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + g.to(tl.float32) * y.to(tl.float32)).to(XOut.dtype.element_ty)
        tl.store(XOut + (b * stride_xob + l * stride_xol)[:, None] + cols[None, :], x, mask=mask)
    if NORM:
        xf = x.to(tl.float32)
        mean = tl.sum(xf, 1) / D
        xc = tl.where(d_mask[None, :], xf - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, 1) / D + eps)
        sh = tl.load(Shift + (b * stride_shb + f * stride_shf)[:, None] + cols[None, :], mask=mask, other=0.0)
        sc = tl.load(Scale + (b * stride_scb + f * stride_scf)[:, None] + cols[None, :], mask=mask, other=0.0)
        h = xc * rstd[:, None] * (1.0 + sc.to(tl.float32)) + sh.to(tl.float32)
        tl.store(HOut + (b * stride_hob + l * stride_hol)[:, None] + cols[None, :], h.to(HOut.dtype.element_ty), mask=mask)


MAX_D = 8192  # one tile per row; wider rows go to the reference


def _launch(x, y, gate, shift, scale, x_out, h_out, eps, residual: bool, norm: bool) -> None:
    B, L, D = x.shape
    Fr = (gate if residual else shift).shape[1]
    assert L % Fr == 0, "x holds a whole number of tokens per frame"
    dummy = x  # stands in for operands the flags leave unused
    y, gate, x_out = (y, gate, x_out) if residual else (dummy, dummy, dummy)
    shift, scale, h_out = (shift, scale, h_out) if norm else (dummy, dummy, dummy)
    for t in (x, y, gate, shift, scale, x_out, h_out):
        assert t.stride(-1) == 1, "the last dim of every operand must be contiguous"
    block_d = triton.next_power_of_2(D)
    n_rows = B * L
    block_rows = max(1, min(triton.next_power_of_2(n_rows), 4096 // block_d))
    num_warps = 4 if block_d * block_rows <= 4096 else 8
    _adaln_kernel[(triton.cdiv(n_rows, block_rows),)](
        x, y, gate, shift, scale, x_out, h_out,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), gate.stride(0), gate.stride(1),
        shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
        x_out.stride(0), x_out.stride(1), h_out.stride(0), h_out.stride(1),
        n_rows, L, L // Fr, D, eps,
        RESIDUAL=residual, NORM=norm, BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=num_warps,
    )


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.modulated_layer_norm` -> [B, F*N, D] in x's dtype."""
    if x.shape[-1] > MAX_D:
        return _reference.modulated_layer_norm(x, shift, scale, eps)
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype) if out is None else out
    _launch(x, None, None, shift, scale, None, out, eps, residual=False, norm=True)
    return out


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.gated_residual` -> x + gate * y, in the promoted dtype."""
    if x.shape[-1] > MAX_D:
        return _reference.gated_residual(x, y, gate)
    x, y = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, y))
    dtype = torch.promote_types(x.dtype, torch.promote_types(gate.dtype, y.dtype))
    out = torch.empty(x.shape, device=x.device, dtype=dtype) if out is None else out
    _launch(x, y, gate, None, None, out, None, 0.0, residual=True, norm=False)
    return out


def gated_residual_modulated_layer_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
                                        shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                                        out: tuple[torch.Tensor, torch.Tensor] | None = None
                                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gate * y, modulated_layer_norm(x + gate * y, shift, scale)) in one pass."""
    if x.shape[-1] > MAX_D:
        return reference_fused(x, y, gate, shift, scale, eps)
    x, y = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, y))
    dtype = torch.promote_types(x.dtype, torch.promote_types(gate.dtype, y.dtype))
    if out is None:
        out = (torch.empty(x.shape, device=x.device, dtype=dtype), torch.empty(x.shape, device=x.device, dtype=dtype))
    _launch(x, y, gate, shift, scale, out[0], out[1], eps, residual=True, norm=True)
    return out


def reference_fused(x, y, gate, shift, scale, eps=1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused op as the composition of the two reference ops."""
    x = _reference.gated_residual(x, y, gate)
    return x, _reference.modulated_layer_norm(x, shift, scale, eps)


reference_modulated_layer_norm = _reference.modulated_layer_norm
reference_gated_residual = _reference.gated_residual


# ---- benchmark: python -m kernels.adaln --------------------------------------------------------
if __name__ == "__main__":
    assert torch.cuda.is_available(), "the benchmark needs a CUDA device"
    dev, dt = torch.device("cuda"), torch.bfloat16
    for B, N, D in ((1, 256, 1024), (64, 256, 768)):
        x, y = torch.randn(2, B, N, D, device=dev, dtype=dt).unbind(0)
        shift, scale, gate = torch.randn(B, 1, 3 * D, device=dev, dtype=dt).chunk(3, dim=-1)
        e = x.numel() * x.element_size()
        cases = (("modulated_layer_norm", 2 * e, lambda: modulated_layer_norm(x, shift, scale),
                  lambda: reference_modulated_layer_norm(x, shift, scale)),
                 ("gated_residual", 3 * e, lambda: gated_residual(x, y, gate), lambda: reference_gated_residual(x, y, gate)),
                 ("fused", 4 * e, lambda: gated_residual_modulated_layer_norm(x, y, gate, shift, scale),
                  lambda: reference_fused(x, y, gate, shift, scale)))
        for name, nbytes, fast, slow in cases:
            t = [triton.testing.do_bench(fn, return_mode="median") for fn in (fast, slow)]
            print(f"B{B} N{N} D{D} {name:<22} triton {t[0] * 1e3:7.1f} us ({nbytes / t[0] / 1e6:6.0f} GB/s)"
                  f"  torch {t[1] * 1e3:7.1f} us")
