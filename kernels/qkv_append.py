"""The attention half of a block up to the scores, in one kernel: modulated LayerNorm -> qkv
linear -> QK RMSNorm + RoPE -> k and v written into the session's ring slot, q returned.

x [B, N, D] is one frame of B sessions; shift, scale [B, 1, D] its modulation; qkv weight
[3D, D] stacks q, k, v, each nh heads of hd (nn.Linear layout, as `sim.model.Attention` holds
it). A program owns BLOCK_M token rows and one head of one of q, k, v, so the RMSNorm over the
head and the rotation of its pairs (x[i], x[i + hd/2]) are the epilogue of its tile: the
halves are two accumulators, each fed by its own rows of the weight. The same function as
`kernels.reference.modulated_ln_qkv_append`, with its roundings to the activation dtype (after
the LayerNorm, after the linear, after the RMSNorm, after the rotation).

It replaces three launches (LN, qkv matmul, `kernels.kv_append`) and two round trips of
[B, N, 3D] through memory; the LayerNorm statistics are recomputed by each of the 3*nh
programs of a row block, which costs reads of x from L2, not launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference as _reference
from kernels.autotune import INTERPRET, autotune
from kernels.fused_linear import ln_stats, ln_tile


def _configs() -> list[triton.Config]:
    space = [(16, 64, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3)]
    if INTERPRET:
        space = [(16, 16, 1, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_K": k}, num_warps=w, num_stages=s) for m, k, w, s in space]


@autotune(_configs(), key=["M", "D", "HD"])
@triton.jit
def _ln_qkv_append_kernel(
    X,  # [M, D] one frame of B sessions (M = B*N), row-contiguous
    Shift,  # [B, 1, D] modulation shift, last dim contiguous
    Scale,  # [B, 1, D] modulation scale
    W,  # [3D, D] qkv weight
    Bias,  # [3D] qkv bias (read when HAS_BIAS)
    QWeight,  # [hd] RMSNorm weight of q
    KWeight,  # [hd] RMSNorm weight of k
    Cos,  # [B, N, hd/2] rotation cosines, last dim contiguous
    Sin,  # [B, N, hd/2] rotation sines
    KCache,  # [Bc, nh, S*N, hd] key ring buffer of this layer, written in place
    VCache,  # [Bc, nh, S*N, hd] value ring buffer
    Rows,  # int64 [B] cache row of each session
    Slot,  # int64 [B] ring slot this frame occupies
    QOut,  # [B, nh, N, hd] contiguous: normalised, rotated q
    stride_shb, stride_scb,  # shift / scale batch strides (elements)
    stride_wo, stride_wd,  # weight strides
    stride_cb, stride_cn,  # cos strides
    stride_sb, stride_sn,  # sin strides
    stride_kcb, stride_kch, stride_kcn,  # k cache strides
    stride_vcb, stride_vch, stride_vcn,  # v cache strides
    M, N, D, nh,  # rows, tokens per frame, width, heads
    eps,  # epsilon of both norms
    HAS_BIAS: tl.constexpr,  # add the qkv bias
    HD: tl.constexpr,  # head dim (even)
    HALF: tl.constexpr,  # hd/2
    HALF_P2: tl.constexpr,  # hd/2 rounded up to a power of two, >= 16 (tl.dot)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands, else "tf32"
    BLOCK_M: tl.constexpr,  # token rows per program
    BLOCK_K: tl.constexpr,  # reduction chunk over D
):
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)  # which * nh + head, which: 0 q, 1 k, 2 v
    which = pid_h // nh
    h = pid_h % nh
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # rows x width can pass 2**31
    m_mask = offs_m < M
    b = offs_m // N  # session (query row) of each token row
    t = offs_m % N  # token within the frame
    i = tl.arange(0, HALF_P2)
    i_mask = i < HALF
    col = which * D + h * HD + i  # weight rows of the first half of this head

    mean, rstd = ln_stats(X, offs_m, m_mask, D, eps, BLOCK_M, BLOCK_K)
    acc1 = tl.zeros([BLOCK_M, HALF_P2], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, HALF_P2], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        hn = ln_tile(X, Shift, Scale, offs_m, m_mask, b * stride_shb, b * stride_scb, k0, mean, rstd, D, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w_mask = (offs_k < D)[:, None] & i_mask[None, :]
        w1 = tl.load(W + col[None, :] * stride_wo + offs_k[:, None] * stride_wd, mask=w_mask, other=0.0)
        w2 = tl.load(W + (col + HALF)[None, :] * stride_wo + offs_k[:, None] * stride_wd, mask=w_mask, other=0.0)
        hn = hn.to(X.dtype.element_ty).to(w1.dtype)
        acc1 = tl.dot(hn, w1, acc1, input_precision=DOT_PRECISION)
        acc2 = tl.dot(hn, w2, acc2, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc1 += tl.load(Bias + col, mask=i_mask, other=0.0).to(tl.float32)[None, :]
        acc2 += tl.load(Bias + col + HALF, mask=i_mask, other=0.0).to(tl.float32)[None, :]
    dtype = QOut.dtype.element_ty
    y1 = acc1.to(dtype).to(tl.float32)  # the linear's output, rounded as the reference's is
    y2 = acc2.to(dtype).to(tl.float32)
    mask = m_mask[:, None] & i_mask[None, :]
    row = tl.load(Rows + b, mask=m_mask, other=0)  # int64: 64-bit offsets into the caches
    slot = tl.load(Slot + b, mask=m_mask, other=0)
    token = slot * N + t  # position on the S*N axis
    if which == 2:  # v: straight into the cache
        v_ptrs = VCache + (row * stride_vcb + h * stride_vch + token * stride_vcn)[:, None] + i[None, :]
        tl.store(v_ptrs, y1.to(VCache.dtype.element_ty), mask=mask)
        tl.store(v_ptrs + HALF, y2.to(VCache.dtype.element_ty), mask=mask)
    else:
        if which == 0:
            nw1 = tl.load(QWeight + i, mask=i_mask, other=0.0).to(tl.float32)
            nw2 = tl.load(QWeight + HALF + i, mask=i_mask, other=0.0).to(tl.float32)
        else:
            nw1 = tl.load(KWeight + i, mask=i_mask, other=0.0).to(tl.float32)
            nw2 = tl.load(KWeight + HALF + i, mask=i_mask, other=0.0).to(tl.float32)
        r = tl.rsqrt((tl.sum(y1 * y1, 1) + tl.sum(y2 * y2, 1)) / HD + eps)
        n1 = (y1 * r[:, None] * nw1[None, :]).to(dtype).to(tl.float32)
        n2 = (y2 * r[:, None] * nw2[None, :]).to(dtype).to(tl.float32)
        c = tl.load(Cos + (b * stride_cb + t * stride_cn)[:, None] + i[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.load(Sin + (b * stride_sb + t * stride_sn)[:, None] + i[None, :], mask=mask, other=0.0).to(tl.float32)
        o1 = (n1 * c - n2 * s).to(dtype)
        o2 = (n1 * s + n2 * c).to(dtype)
        if which == 0:
            q_ptrs = QOut + (((b * nh + h) * N + t) * HD)[:, None] + i[None, :]
            tl.store(q_ptrs, o1, mask=mask)
            tl.store(q_ptrs + HALF, o2, mask=mask)
        else:
            k_ptrs = KCache + (row * stride_kcb + h * stride_kch + token * stride_kcn)[:, None] + i[None, :]
            tl.store(k_ptrs, o1.to(KCache.dtype.element_ty), mask=mask)
            tl.store(k_ptrs + HALF, o2.to(KCache.dtype.element_ty), mask=mask)


def modulated_ln_qkv_append(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                            qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                            q_weight: torch.Tensor, k_weight: torch.Tensor,
                            cos: torch.Tensor, sin: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor,
                            rows: torch.Tensor, slot: torch.Tensor, n_heads: int, eps: float = 1e-6,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.modulated_ln_qkv_append` -> q [B, nh, N, hd]."""
    B, N, D = x.shape
    hd = D // n_heads
    assert hd * n_heads == D and hd % 2 == 0, "heads must split D into an even head dim"
    assert qkv_weight.shape == (3 * D, D) and shift.shape == scale.shape == (B, 1, D)
    for t in (shift, scale, cos, sin, k_cache, v_cache):
        assert t.stride(-1) == 1, "the last dim of every operand must be contiguous"
    x = x.contiguous()
    if out is None:
        out = torch.empty(B, n_heads, N, hd, device=x.device, dtype=x.dtype)
    assert out.shape == (B, n_heads, N, hd) and out.is_contiguous()
    M = B * N

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]), 3 * n_heads

    _ln_qkv_append_kernel[grid](
        x, shift, scale, qkv_weight, qkv_bias if qkv_bias is not None else qkv_weight, q_weight, k_weight,
        cos, sin, k_cache, v_cache, rows, slot, out,
        shift.stride(0), scale.stride(0), qkv_weight.stride(0), qkv_weight.stride(1),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        M, N, D, n_heads, eps,
        HAS_BIAS=qkv_bias is not None, HD=hd, HALF=hd // 2, HALF_P2=max(16, triton.next_power_of_2(hd // 2)),
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
    )
    return out


reference = _reference.modulated_ln_qkv_append


# ---- benchmark: python -m kernels.qkv_append --------------------------------------------------------
def bench_cases(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """(name, flops, bytes, fast, slow) for the `small` preset (D 256, 4 heads, 64 tokens, 9 slots)."""
    cases = []
    for B in (1, 64):
        N, D, nh, S = 64, 256, 4, 9
        hd = D // nh
        x = torch.randn(B, N, D, device=device, dtype=dtype)
        shift, scale = (0.1 * torch.randn(B, 1, 2 * D, device=device, dtype=dtype)).chunk(2, dim=-1)
        w, bias = torch.randn(3 * D, D, device=device, dtype=dtype) / D ** 0.5, torch.randn(3 * D, device=device, dtype=dtype)
        qw, kw = 1 + 0.1 * torch.randn(2, hd, device=device, dtype=dtype)
        cos, sin = torch.randn(2, B, N, hd // 2, device=device).unbind(0)
        kc = torch.randn(B + 1, nh, S * N, hd, device=device, dtype=dtype)
        vc = torch.randn_like(kc)
        rows = torch.randperm(B + 1, device=device)[:B]
        slot = torch.randint(0, S, (B,), device=device)
        e = x.element_size()
        M = B * N
        args = (x, shift, scale, w, bias, qw, kw, cos, sin, kc, vc, rows, slot, nh)
        cases.append((f"ln+qkv+norm+rope+append B{B} {M}x{D}->{3 * D}", 2 * M * D * 3 * D,
                      e * (M * D + 3 * D * D + 3 * M * D) + 4 * M * hd,
                      lambda a=args: modulated_ln_qkv_append(*a), lambda a=args: reference(*a)))
    return cases


if __name__ == "__main__":
    assert torch.cuda.is_available(), "the benchmark needs a CUDA device"
    for name, flops, nbytes, fast, slow in bench_cases(torch.device("cuda")):
        t = [triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") for fn in (fast, slow)]
        print(f"{name:<44} triton {t[0] * 1e3:7.1f} us ({flops / t[0] / 1e9:6.1f} TFLOP/s, {nbytes / t[0] / 1e6:6.0f} GB/s)"
              f"  torch {t[1] * 1e3:7.1f} us")
