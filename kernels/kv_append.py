"""KV append: QK RMSNorm + RoPE of one frame, fused with the write of its K/V into the ring buffer.

q, k, v [B, N, nh, hd] come straight from the qkv projection (strided views). Each head's
q and k are RMS-normalised over hd (weights [hd]) and rotated: the pairs (x[i], x[i + hd/2])
turn by the angles behind cos/sin [B, N, hd/2], the same for every head. k and v go to
cache row rows[b], token positions slot[b]*N .. slot[b]*N + N-1; q comes back as
[B, nh, N, hd]. The same function as `kernels.reference.qk_norm_rope_append`, including its
rounding to the input dtype between the norm and the rotation.

One program per (query row, block of BLOCK_R (token, head) pairs): all heads of a token
share its cos/sin, and the pairs of one token are adjacent in the qkv output. Memory bound:
it reads q, k, v once and writes q, k, v once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import reference as _reference


@triton.jit
def _norm_rope(x1, x2, w1, w2, c, s, eps, HD: tl.constexpr):
    """RMSNorm over the two halves (x1, x2) of each row, then rotate; fp32 in and out."""
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / HD + eps)
    n1 = (x1 * rstd[:, None] * w1[None, :]).to(dtype).to(tl.float32)  # the reference rounds here
    n2 = (x2 * rstd[:, None] * w2[None, :]).to(dtype).to(tl.float32)
    return n1 * c - n2 * s, n1 * s + n2 * c


@triton.jit
def _qk_norm_rope_append_kernel(
    Q,  # [B, N, nh, hd] queries, last dim contiguous
    K,  # [B, N, nh, hd] keys of the frame
    V,  # [B, N, nh, hd] values of the frame
    QWeight,  # [hd] RMSNorm weight of q
    KWeight,  # [hd] RMSNorm weight of k
    Cos,  # [B, N, hd/2] rotation cosines (fp32), last dim contiguous
    Sin,  # [B, N, hd/2] rotation sines
    KCache,  # [Bc, nh, S*N, hd] key ring buffer of this layer, written in place
    VCache,  # [Bc, nh, S*N, hd] value ring buffer
    Rows,  # int64 [B]: cache row of each query row
    Slot,  # int64 [B]: ring slot this frame occupies
    QOut,  # [B, nh, N, hd] contiguous: normalised, rotated q
    stride_qb, stride_qn, stride_qh,  # q strides (elements)
    stride_kb, stride_kn, stride_kh,  # k strides
    stride_vb, stride_vn, stride_vh,  # v strides
    stride_cb, stride_cn,  # cos strides
    stride_sb, stride_sn,  # sin strides
    stride_kcb, stride_kch, stride_kcn,  # k cache strides
    stride_vcb, stride_vch, stride_vcn,  # v cache strides
    N, nh,  # tokens per frame, heads
    eps,  # RMSNorm epsilon
    HD: tl.constexpr,  # head dim (even)
    HALF: tl.constexpr,  # hd/2: x[i] pairs with x[i + HALF]
    HALF_P2: tl.constexpr,  # hd/2 rounded up to a power of two (tile width)
    BLOCK_R: tl.constexpr,  # (token, head) pairs per program
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    row = tl.load(Rows + b)
    slot = tl.load(Slot + b)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # pair index t * nh + h
    t = r // nh
    h = r % nh
    i = tl.arange(0, HALF_P2)
    mask = (r < N * nh)[:, None] & (i < HALF)[None, :]

    c = tl.load(Cos + b * stride_cb + t[:, None] * stride_cn + i[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(Sin + b * stride_sb + t[:, None] * stride_sn + i[None, :], mask=mask, other=0.0).to(tl.float32)

    # q -> QOut [B, nh, N, hd]
    q_ptrs = Q + b * stride_qb + t[:, None] * stride_qn + h[:, None] * stride_qh + i[None, :]
    w1 = tl.load(QWeight + i, mask=i < HALF, other=0.0).to(tl.float32)
    w2 = tl.load(QWeight + HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
    q1, q2 = _norm_rope(tl.load(q_ptrs, mask=mask, other=0.0), tl.load(q_ptrs + HALF, mask=mask, other=0.0),
                        w1, w2, c, s, eps, HD)
    o_ptrs = QOut + ((b * nh + h[:, None]) * N + t[:, None]) * HD + i[None, :]
    tl.store(o_ptrs, q1.to(QOut.dtype.element_ty), mask=mask)
    tl.store(o_ptrs + HALF, q2.to(QOut.dtype.element_ty), mask=mask)

    # k -> KCache[row, h, slot*N + t], rounded to k's dtype first as the reference does
    k_ptrs = K + b * stride_kb + t[:, None] * stride_kn + h[:, None] * stride_kh + i[None, :]
    w1 = tl.load(KWeight + i, mask=i < HALF, other=0.0).to(tl.float32)
    w2 = tl.load(KWeight + HALF + i, mask=i < HALF, other=0.0).to(tl.float32)
    k1, k2 = _norm_rope(tl.load(k_ptrs, mask=mask, other=0.0), tl.load(k_ptrs + HALF, mask=mask, other=0.0),
                        w1, w2, c, s, eps, HD)
    kc_ptrs = KCache + row * stride_kcb + h[:, None] * stride_kch + (slot * N + t[:, None]) * stride_kcn + i[None, :]
    tl.store(kc_ptrs, k1.to(K.dtype.element_ty).to(KCache.dtype.element_ty), mask=mask)
    tl.store(kc_ptrs + HALF, k2.to(K.dtype.element_ty).to(KCache.dtype.element_ty), mask=mask)

    # v -> VCache[row, h, slot*N + t] unchanged
    v_ptrs = V + b * stride_vb + t[:, None] * stride_vn + h[:, None] * stride_vh + i[None, :]
    vc_ptrs = VCache + row * stride_vcb + h[:, None] * stride_vch + (slot * N + t[:, None]) * stride_vcn + i[None, :]
    tl.store(vc_ptrs, tl.load(v_ptrs, mask=mask, other=0.0).to(VCache.dtype.element_ty), mask=mask)
    tl.store(vc_ptrs + HALF, tl.load(v_ptrs + HALF, mask=mask, other=0.0).to(VCache.dtype.element_ty), mask=mask)


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        q_weight: torch.Tensor, k_weight: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor,
                        rows: torch.Tensor, slot: torch.Tensor, eps: float = 1e-6,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.qk_norm_rope_append`; out: optional [B, nh, N, hd] buffer."""
    B, N, nh, hd = q.shape
    assert hd % 2 == 0, "RoPE needs an even head dim"
    for x in (q, k, v, cos, sin, k_cache, v_cache):
        assert x.stride(-1) == 1, "the last dim of every operand must be contiguous"
    if out is None:
        out = torch.empty(B, nh, N, hd, device=q.device, dtype=q.dtype)
    assert out.shape == (B, nh, N, hd) and out.is_contiguous()
    half_p2 = triton.next_power_of_2(hd // 2)
    block_r = max(1, min(triton.next_power_of_2(N * nh), 2048 // half_p2))  # ~2K elements per half-tile
    grid = (triton.cdiv(N * nh, block_r), B)
    _qk_norm_rope_append_kernel[grid](
        q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        cos.stride(0), cos.stride(1),
        sin.stride(0), sin.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        N, nh, eps,
        HD=hd, HALF=hd // 2, HALF_P2=half_p2, BLOCK_R=block_r, num_warps=4,
    )
    return out


def reference(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps=1e-6) -> torch.Tensor:
    return _reference.qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps)


# ---- benchmark: python -m kernels.kv_append ----------------------------------------------------
if __name__ == "__main__":
    assert torch.cuda.is_available(), "the benchmark needs a CUDA device"
    dev, dt = torch.device("cuda"), torch.bfloat16
    N, hd, S = 256, 64, 17
    for B, nh in ((1, 16), (64, 12)):
        D = nh * hd
        q, k, v = torch.randn(B, N, 3, nh, hd, device=dev, dtype=dt).unbind(2)  # strided like the qkv output
        w = torch.ones(hd, device=dev, dtype=dt)
        cos, sin = torch.randn(2, B, N, hd // 2, device=dev).unbind(0)
        kc = torch.zeros(B, nh, S * N, hd, device=dev, dtype=dt)
        vc = torch.zeros_like(kc)
        rows = torch.arange(B, device=dev)
        slot = torch.full((B,), 3, device=dev, dtype=torch.long)
        nbytes = 6 * B * N * D * 2 + 2 * B * N * hd * 4  # read q, k, v; write q, k, v; cos/sin
        for name, fn in (("triton", qk_norm_rope_append), ("torch", reference)):
            ms = triton.testing.do_bench(lambda: fn(q, k, v, w, w, cos, sin, kc, vc, rows, slot), return_mode="median")
            print(f"B{B} nh{nh} {name:<7} {ms * 1e3:8.1f} us {nbytes / ms / 1e6:8.1f} GB/s")
