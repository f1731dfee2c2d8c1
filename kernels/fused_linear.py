"""The linear layers of an adaLN block, with the norm before them and the residual after them fused in.

A block of the frame step is four linears (qkv, proj, mlp up, mlp down) and, around them,
modulated LayerNorms, a GELU and gated residual adds. At the batch sizes of a game server the
step is bound by launches and by the round trips through memory between these pieces, not by
the matmuls themselves, so each linear absorbs its neighbours:

- modulated_ln_linear:   act(LN(x) * (1 + scale) + shift) @ W.T + b)   (mlp up, with GELU)
  The LayerNorm statistics are a prologue (two passes over the program's rows of x, which sit
  in L2), the normalised tile is built in registers and fed to the dot: LN(x) never exists in
  memory.
- linear_gated_residual: x + gate * (inp @ W.T + b)                   (proj, mlp down)
  The bias, the per-frame gate and the residual add are the epilogue.

`kernels.qkv_append` is the third, with the QK norm, RoPE and cache write as its epilogue.
Both functions here compute the same function as their twins in `kernels.reference`,
including the rounding to the activation dtype between the pieces (the linear's output is
rounded before the GELU and before the gate, as PyTorch does).

Shapes: x [B, F*N, D] (F frames of N tokens), shift/scale/gate [B, F, D] (one row per frame,
strided views of the ada projection are fine), W [O, D] as nn.Linear stores it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference as _reference
from kernels.autotune import INTERPRET, autotune


def _configs(space: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) -> autotune configs; one under the interpreter.

    The configs are timed inside CUDA graphs (`kernels.autotune`), as the engine runs them."""
    if INTERPRET:
        space = [(16, 16, 16, 1, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in space]


# small M (one to a few sessions of 64 tokens) wants many narrow programs; large M wants big tiles
MATMUL_SPACE = [(16, 64, 64, 4, 3), (32, 64, 64, 4, 3), (64, 64, 64, 4, 3), (64, 128, 64, 4, 3),
                (128, 64, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3)]


# ---- shared pieces (also used by kernels.qkv_append) -------------------------------------------
@triton.jit
def ln_stats(X, offs_m, m_mask, D, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Mean and 1/std over D of rows offs_m of X [M, D] (row-contiguous), fp32, two passes."""
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = m_mask[:, None] & (offs_k < D)[None, :]
        x = tl.load(X + offs_m[:, None] * D + offs_k[None, :], mask=mask, other=0.0)
        total += tl.sum(x.to(tl.float32), 1)
    mean = total / D
    sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = m_mask[:, None] & (offs_k < D)[None, :]
        x = tl.load(X + offs_m[:, None] * D + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        xc = tl.where(mask, x - mean[:, None], 0.0)
        sq += tl.sum(xc * xc, 1)
    return mean, tl.rsqrt(sq / D + eps)


@triton.jit
def ln_tile(X, Shift, Scale, offs_m, m_mask, shift_off, scale_off, k0, mean, rstd, D,
            BLOCK_K: tl.constexpr):
    """Columns k0 .. k0+BLOCK_K of the modulated LayerNorm of rows offs_m, fp32, 0 outside D.

    shift_off, scale_off: [BLOCK_M] offsets of each row's modulation row (its frame's).
    """
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask = m_mask[:, None] & (offs_k < D)[None, :]
    x = tl.load(X + offs_m[:, None] * D + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    sh = tl.load(Shift + shift_off[:, None] + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    sc = tl.load(Scale + scale_off[:, None] + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    h = (x - mean[:, None]) * rstd[:, None] * (1.0 + sc) + sh
    return tl.where(mask, h, 0.0)


@triton.jit
def gelu_tanh(x):
    """GELU, tanh form: 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))


# ---- modulated LayerNorm -> linear (-> GELU) ------------------------------------------------------
@autotune(_configs(MATMUL_SPACE), key=["M", "O", "D"])
@triton.jit
def _ln_linear_kernel(
    X,  # [M, D] activations (M = B * F*N rows), row-contiguous
    Shift,  # [B, F, D] per-frame shift, last dim contiguous
    Scale,  # [B, F, D] per-frame scale
    W,  # [O, D] weight (nn.Linear layout)
    Bias,  # [O] bias (read when HAS_BIAS)
    Out,  # [M, O] output, row-contiguous
    stride_shb, stride_shf,  # shift strides (elements)
    stride_scb, stride_scf,  # scale strides
    stride_wo, stride_wd,  # weight strides
    M, L, N, D, O,  # rows, rows per batch element (F*N), tokens per frame, in and out width
    eps,  # LayerNorm epsilon
    HAS_BIAS: tl.constexpr,  # add the bias
    GELU: tl.constexpr,  # apply GELU (tanh form) to the rounded output
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands (exact reference), else "tf32"
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # reduction chunk
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows x width can pass 2**31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < O
    b = offs_m // L
    f = (offs_m % L) // N
    mean, rstd = ln_stats(X, offs_m, m_mask, D, eps, BLOCK_M, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        h = ln_tile(X, Shift, Scale, offs_m, m_mask, b * stride_shb + f * stride_shf,
                    b * stride_scb + f * stride_scf, k0, mean, rstd, D, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(W + offs_n[None, :] * stride_wo + offs_k[:, None] * stride_wd,
                    mask=(offs_k < D)[:, None] & n_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        # the reference rounds LN(x) to the activation dtype before its linear
        acc = tl.dot(h.to(X.dtype.element_ty).to(w.dtype), w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y = acc.to(Out.dtype.element_ty)
    if GELU:
        y = gelu_tanh(y.to(tl.float32)).to(Out.dtype.element_ty)
    tl.store(Out + offs_m[:, None] * O + offs_n[None, :], y, mask=m_mask[:, None] & n_mask[None, :])


def _dot_precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def modulated_ln_linear(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None, gelu: bool = False, eps: float = 1e-6,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.modulated_ln_linear` -> [B, F*N, O] in x's dtype."""
    B, L, D = x.shape
    O = weight.shape[0]
    Fr = shift.shape[1]
    assert weight.shape[1] == D and L % Fr == 0 and scale.shape == shift.shape
    assert shift.stride(-1) == 1 and scale.stride(-1) == 1
    x = x.contiguous()
    if out is None:
        out = torch.empty(B, L, O, device=x.device, dtype=x.dtype)
    assert out.shape == (B, L, O) and out.is_contiguous()
    M = B * L

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(O, meta["BLOCK_N"])

    _ln_linear_kernel[grid](
        x, shift, scale, weight, bias if bias is not None else weight, out,
        shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
        weight.stride(0), weight.stride(1),
        M, L, L // Fr, D, O, eps,
        HAS_BIAS=bias is not None, GELU=bool(gelu), DOT_PRECISION=_dot_precision(x),
    )
    return out


# ---- linear -> gated residual ---------------------------------------------------------------------
@autotune(_configs(MATMUL_SPACE), key=["M", "D", "K"])
@triton.jit
def _linear_residual_kernel(
    X,  # [M, D] residual stream, row-contiguous
    Inp,  # [M, K] input of the linear, row-contiguous
    W,  # [D, K] weight (nn.Linear layout)
    Bias,  # [D] bias (read when HAS_BIAS)
    Gate,  # [B, F, D] per-frame gate, last dim contiguous
    Out,  # [M, D] x + gate * (inp @ W.T + b), row-contiguous
    stride_gb, stride_gf,  # gate strides (elements)
    stride_wd, stride_wk,  # weight strides
    M, L, N, K, D,  # rows, rows per batch element, tokens per frame, in width, out width
    HAS_BIAS: tl.constexpr,  # add the bias
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands, else "tf32"
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # reduction chunk
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows x width can pass 2**31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(Inp + offs_m[:, None] * K + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(W + offs_n[None, :] * stride_wd + offs_k[:, None] * stride_wk,
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    b = offs_m // L
    f = (offs_m % L) // N
    g = tl.load(Gate + (b * stride_gb + f * stride_gf)[:, None] + offs_n[None, :], mask=mask, other=0.0)
    x = tl.load(X + offs_m[:, None] * D + offs_n[None, :], mask=mask, other=0.0)
    # the reference rounds the linear's output, then gate * y, then the sum
    y = acc.to(Out.dtype.element_ty).to(tl.float32)
    gy = (g.to(tl.float32) * y).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + offs_m[:, None] * D + offs_n[None, :], (x.to(tl.float32) + gy).to(Out.dtype.element_ty), mask=mask)


def linear_gated_residual(x: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          gate: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.linear_gated_residual` -> [B, F*N, D] in x's dtype."""
    B, L, D = x.shape
    K = inp.shape[-1]
    Fr = gate.shape[1]
    assert inp.shape[:2] == (B, L) and weight.shape == (D, K) and L % Fr == 0 and gate.stride(-1) == 1
    x, inp = x.contiguous(), inp.contiguous()
    if out is None:
        out = torch.empty_like(x)
    assert out.shape == x.shape and out.is_contiguous()
    M = B * L

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_N"])

    _linear_residual_kernel[grid](
        x, inp, weight, bias if bias is not None else weight, gate, out,
        gate.stride(0), gate.stride(1), weight.stride(0), weight.stride(1),
        M, L, L // Fr, K, D,
        HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(x),
    )
    return out


reference_modulated_ln_linear = _reference.modulated_ln_linear
reference_linear_gated_residual = _reference.linear_gated_residual


# ---- benchmark: python -m kernels.fused_linear -----------------------------------------------------
def bench_cases(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """(name, flops, bytes, fast, slow) for the `small` preset's block linears at 1 and 64 sessions."""
    cases = []
    for B in (1, 64):
        N, D, H = 64, 256, 1024
        x = torch.randn(B, N, D, device=device, dtype=dtype)
        u = torch.randn(B, N, H, device=device, dtype=dtype)
        shift, scale, gate = (0.1 * torch.randn(B, 1, 3 * D, device=device, dtype=dtype)).chunk(3, dim=-1)
        w1, b1 = torch.randn(H, D, device=device, dtype=dtype) / D ** 0.5, torch.randn(H, device=device, dtype=dtype)
        w2, b2 = torch.randn(D, H, device=device, dtype=dtype) / H ** 0.5, torch.randn(D, device=device, dtype=dtype)
        e = x.element_size()
        M = B * N
        cases.append((f"ln+linear+gelu B{B} {M}x{D}->{H}", 2 * M * D * H, e * (M * D + H * D + M * H),
                      lambda x=x, s=shift, c=scale, w=w1, b=b1: modulated_ln_linear(x, s, c, w, b, gelu=True),
                      lambda x=x, s=shift, c=scale, w=w1, b=b1: reference_modulated_ln_linear(x, s, c, w, b, gelu=True)))
        cases.append((f"linear+gated residual B{B} {M}x{H}->{D}", 2 * M * D * H, e * (M * H + H * D + 2 * M * D),
                      lambda x=x, u=u, w=w2, b=b2, g=gate: linear_gated_residual(x, u, w, b, g),
                      lambda x=x, u=u, w=w2, b=b2, g=gate: reference_linear_gated_residual(x, u, w, b, g)))
    return cases


if __name__ == "__main__":
    assert torch.cuda.is_available(), "the benchmark needs a CUDA device"
    for name, flops, nbytes, fast, slow in bench_cases(torch.device("cuda")):
        torch.testing.assert_close(fast(), slow(), atol=6e-2, rtol=2e-2)
        t = [triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") for fn in (fast, slow)]
        print(f"{name:<40} triton {t[0] * 1e3:7.1f} us ({flops / t[0] / 1e9:6.1f} TFLOP/s, {nbytes / t[0] / 1e6:6.0f} GB/s)"
              f"  torch {t[1] * 1e3:7.1f} us")
