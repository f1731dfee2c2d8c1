"""Frame-vs-cache attention: one frame's queries against its session's window of the ring buffer.

q [B, nh, N, hd] of B query rows; caches k, v [Bc, nh, S*N, hd] hold S slots of N tokens per
session (`sim.kv_cache`). Query row b reads cache row rows[b] and attends to the slots
start .. start+count-1 (mod S) of that row, its own frame's scratch slot included. Returns
[B, N, nh*hd], the same function as `kernels.reference.frame_attention`.

The window is walked by loop bounds, never by masks over the buffer: a program visits
count * ceil(N / BLOCK_N) key tiles, tile t being block t % ceil(N / BLOCK_N) of slot
(start + t // ceil(N / BLOCK_N)) % S. A tile never crosses a slot, so the only mask is the
tail of a slot when BLOCK_N does not divide N (odd N). Softmax is online (flash) in fp32.

Split-KV (flash-decoding): with few query rows (B * nh * ceil(N / BLOCK_M) programs below
twice the SM count), each program takes one of SPLIT contiguous ranges of the window's
tiles and writes a partial (acc, max, sumexp) in fp32; `_merge_kernel` combines them.

Roofline of the B1 issue shape (bf16, B=1, nh=16, hd=64, N=256 queries vs 17 slots = 4352 keys):
  FLOPs   = 4 * nh * N * keys * hd                      = 4.56 GFLOP -> 5.7 us at 800 TFLOP/s
  bytes  >= K + V (2 * nh * keys * hd * 2) + q + out    = 17.8 + 1.05 MB = 18.9 MB -> 6.3 us at 3 TB/s
  so the floor is ~6.3 us, memory and compute about balanced (split partials mostly stay in L2).
B64 nh12: 219 GFLOP (274 us) and 906 MB (302 us): both bounds again within 10%.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import reference as _reference


@triton.jit
def _attention_kernel(
    Q,  # [B, nh, N, hd] queries, last dim contiguous (RMS-normed and rotated)
    K,  # [Bc, nh, S*N, hd] key ring buffer of one layer, last dim contiguous
    V,  # [Bc, nh, S*N, hd] value ring buffer, same layout as K
    Rows,  # int64 [B]: cache row read by each query row
    Start,  # int64 [Bc]: first slot of each session's window
    Count,  # int64 [Bc]: number of slots in each session's window (>= 1)
    Out,  # [B, N, nh*hd] output in q's dtype (written when SPLIT == 1)
    PartAcc,  # fp32 [SPLIT, B*nh, N, hd] unnormalised partial outputs (written when SPLIT > 1)
    PartMax,  # fp32 [SPLIT, B*nh, N] running max of the scores, log2 units
    PartSum,  # fp32 [SPLIT, B*nh, N] sum of exp2(score - max)
    stride_qb, stride_qh, stride_qn,  # q strides (elements)
    stride_kb, stride_kh, stride_kn,  # k cache strides
    stride_vb, stride_vh, stride_vn,  # v cache strides
    stride_ob, stride_on,  # output strides of [B, N, nh*hd]; head h starts at column h*hd
    qk_scale,  # softmax scale (1/sqrt(hd)) times log2(e): scores go through exp2
    nh, N, S,  # heads, tokens per frame, slots in the ring
    HD: tl.constexpr,  # head dim
    HD_P2: tl.constexpr,  # head dim rounded up to a power of two, >= 16 for tl.dot (tile width)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per tile (a tile never spans two slots)
    EVEN_N: tl.constexpr,  # BLOCK_N divides N: no tail mask on keys
    EVEN_D: tl.constexpr,  # HD is a power of two: no mask on the head dim
    SPLIT: tl.constexpr,  # programs sharing one window (1 = write Out directly)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (the reference is exact fp32), else "tf32"
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // nh
    h = pid_bh % nh
    row = tl.load(Rows + b)  # int64: 64-bit offsets into the caches
    start = tl.load(Start + row).to(tl.int32)
    count = tl.load(Count + row).to(tl.int32)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HD_P2)
    m_mask = offs_m < N
    d_mask = offs_d < HD

    q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = K + row * stride_kb + h * stride_kh
    v_base = V + row * stride_vb + h * stride_vh

    # this program's share of the window, in key tiles
    tiles_per_slot = tl.cdiv(N, BLOCK_N)
    n_tiles = count * tiles_per_slot
    per_split = tl.cdiv(n_tiles, SPLIT)
    lo = pid_s * per_split
    hi = tl.minimum(lo + per_split, n_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HD_P2], dtype=tl.float32)
    for t in range(lo, hi):
        j = t // tiles_per_slot
        n0 = (t - j * tiles_per_slot) * BLOCK_N
        slot = (start + j) % S
        key = slot * N + n0 + offs_n  # (BLOCK_N,) positions on the S*N axis
        k_ptrs = k_base + key[:, None] * stride_kn + offs_d[None, :]  # (BLOCK_N, HD_P2)
        v_ptrs = v_base + key[:, None] * stride_vn + offs_d[None, :]
        if EVEN_N and EVEN_D:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            kv_mask = ((n0 + offs_n) < N)[:, None] & d_mask[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if not EVEN_N:
            qk = tl.where(((n0 + offs_n) < N)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT == 1:
        l_safe = tl.where(l_i > 0, l_i, 1.0)  # an empty window gives 0, not NaN
        out = acc / l_safe[:, None]
        o_ptrs = Out + b.to(tl.int64) * stride_ob + offs_m[:, None] * stride_on + h * HD + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    else:
        part = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * N + offs_m  # (BLOCK_M,) rows of the partials
        tl.store(PartAcc + part[:, None] * HD + offs_d[None, :], acc, mask=m_mask[:, None] & d_mask[None, :])
        tl.store(PartMax + part, m_i, mask=m_mask)
        tl.store(PartSum + part, l_i, mask=m_mask)


@triton.jit
def _merge_kernel(
    PartAcc,  # fp32 [SPLIT, B*nh, N, hd] unnormalised partial outputs
    PartMax,  # fp32 [SPLIT, B*nh, N] partial score maxima (log2 units; -inf for an empty share)
    PartSum,  # fp32 [SPLIT, B*nh, N] partial sums of exp2(score - max)
    Out,  # [B, N, nh*hd] output
    stride_ob, stride_on,  # output strides
    BH, nh, N,  # B*nh, heads, tokens per frame
    HD: tl.constexpr,  # head dim
    HD_P2: tl.constexpr,  # head dim rounded up to a power of two
    BLOCK_M: tl.constexpr,  # query rows per program
    SPLIT: tl.constexpr,  # number of partials per row
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // nh
    h = pid_bh % nh
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HD_P2)
    m_mask = offs_m < N
    mask = m_mask[:, None] & (offs_d < HD)[None, :]

    m_all = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for s in range(SPLIT):
        part = (s * BH + pid_bh).to(tl.int64) * N + offs_m
        m_all = tl.maximum(m_all, tl.load(PartMax + part, mask=m_mask, other=float("-inf")))
    m_all = tl.where(m_all > float("-inf"), m_all, 0.0)  # rows with no keys at all: weights exp2(-inf) = 0
    l_all = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HD_P2], dtype=tl.float32)
    for s in range(SPLIT):
        part = (s * BH + pid_bh).to(tl.int64) * N + offs_m
        m_s = tl.load(PartMax + part, mask=m_mask, other=float("-inf"))
        w = tl.exp2(m_s - m_all)  # an empty share (max -inf) weighs nothing
        l_all += w * tl.load(PartSum + part, mask=m_mask, other=0.0)
        acc += w[:, None] * tl.load(PartAcc + part[:, None] * HD + offs_d[None, :], mask=mask, other=0.0)
    l_safe = tl.where(l_all > 0, l_all, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = Out + b.to(tl.int64) * stride_ob + offs_m[:, None] * stride_on + h * HD + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask)


# ---- launcher ---------------------------------------------------------------------------------
_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a nominal 8 for the CPU interpreter)."""
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def block_sizes(N: int, hd: int, split: bool = False) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for N tokens per frame: 128 x 64 tiles for big frames (hd <= 64), and
    64 x 128 when the window is split (few query rows: more, longer programs), shrunk to the frame
    for small ones (tl.dot wants >= 16). From the H200 sweep (`--sweep`, BENCHMARKS.md): at the B1
    issue shape 64 x 128 split 4 took 21.1 us against 29.7 for 128 x 64 split 9."""
    n_p2 = max(16, triton.next_power_of_2(N))
    if split:
        return min(64, n_p2), min(128 if hd <= 64 else 64, n_p2)
    return min(128 if hd <= 64 else 64, n_p2), min(64, n_p2)


def auto_split(B: int, nh: int, N: int, S: int, block_m: int, block_n: int, sms: int) -> int:
    """Programs sharing one window: about 2 programs per SM (rounded down), each keeping >= 4 key tiles."""
    programs = B * nh * triton.cdiv(N, block_m)
    if programs >= 2 * sms:
        return 1
    max_tiles = S * triton.cdiv(N, block_n)
    return max(1, min(2 * sms // programs, max_tiles // 4, 16))


def plan(B: int, nh: int, N: int, S: int, hd: int, sms: int) -> tuple[int, int, int]:
    """(split, BLOCK_M, BLOCK_N) chosen for a call: the full-grid tiles unless they leave the SMs
    idle, then the split-KV tiles and their split count (the full-grid tiles again if that is 1)."""
    full = block_sizes(N, hd)
    if auto_split(B, nh, N, S, *full, sms) > 1:
        tiles = block_sizes(N, hd, split=True)
        split = auto_split(B, nh, N, S, *tiles, sms)
        if split > 1:
            return split, *tiles
    return 1, *full


def frame_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    rows: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                    split: int | None = None, out: torch.Tensor | None = None,
                    partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                    block_m: int | None = None, block_n: int | None = None,
                    num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """Triton twin of `kernels.reference.frame_attention` -> [B, N, nh*hd] in q's dtype.

    split: programs per window (None: `auto_split` from the SM count; 1: no split-KV).
    out / partials: preallocated output [B, N, nh*hd] and fp32 workspaces ([split, B*nh, N, hd],
    [split, B*nh, N] x2) for fixed addresses (and poisoned buffers in tests).
    block_m, block_n, num_warps, num_stages: override the tile choice (benchmark sweeps).
    """
    B, nh, N, hd = q.shape
    S = k_cache.shape[2] // N
    assert k_cache.shape[2] == S * N and v_cache.shape == k_cache.shape, "caches must be [Bc, nh, S*N, hd]"
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    if split is None and block_m is None and block_n is None:
        split, block_m, block_n = plan(B, nh, N, S, hd, sm_count(q.device))
    else:
        bm, bn = block_sizes(N, hd, split=split is not None and split > 1)
        block_m, block_n = block_m or bm, block_n or bn
        if split is None:
            split = auto_split(B, nh, N, S, block_m, block_n, sm_count(q.device))
    if split < 1:
        raise ValueError(f"split must be >= 1 (programs per window), got {split}")
    if out is None:
        out = torch.empty(B, N, nh * hd, device=q.device, dtype=q.dtype)
    assert out.shape == (B, N, nh * hd) and out.stride(-1) == 1
    if split > 1 and partials is None:
        partials = (torch.empty(split, B * nh, N, hd, device=q.device, dtype=torch.float32),
                    torch.empty(split, B * nh, N, device=q.device, dtype=torch.float32),
                    torch.empty(split, B * nh, N, device=q.device, dtype=torch.float32))
    if split > 1:
        assert partials[0].shape == (split, B * nh, N, hd) and partials[1].shape == partials[2].shape == (split, B * nh, N)
        assert all(t.dtype == torch.float32 and t.is_contiguous() for t in partials), "partials are contiguous fp32"
    part_acc, part_max, part_sum = partials if split > 1 else (out, out, out)  # unused when split == 1

    if num_warps is None:  # 4 warps: at 128 x 64 the B64 issue shape took 627 us against 668 with 8 (H200 sweep)
        num_warps = 4
    if num_stages is None:
        num_stages = 3
    hd_p2 = max(16, triton.next_power_of_2(hd))
    grid = (triton.cdiv(N, block_m), B * nh, split)
    _attention_kernel[grid](
        q, k_cache, v_cache, rows, start, count, out, part_acc, part_max, part_sum,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        (1.0 / math.sqrt(hd)) * 1.4426950408889634,
        nh, N, S,
        HD=hd, HD_P2=hd_p2, BLOCK_M=block_m, BLOCK_N=block_n,
        EVEN_N=(N % block_n == 0), EVEN_D=(hd == hd_p2), SPLIT=split,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    if split > 1:
        merge_m = min(64, max(16, triton.next_power_of_2(N)))
        _merge_kernel[(triton.cdiv(N, merge_m), B * nh)](
            part_acc, part_max, part_sum, out, out.stride(0), out.stride(1), B * nh, nh, N,
            HD=hd, HD_P2=triton.next_power_of_2(hd), BLOCK_M=merge_m, SPLIT=split, num_warps=4,
        )
    return out


def reference(q, k_cache, v_cache, rows, start, count) -> torch.Tensor:
    return _reference.frame_attention(q, k_cache, v_cache, rows, start, count)


# ---- benchmark: python -m kernels.frame_attention ----------------------------------------------
def _bench() -> None:
    import argparse  # noqa: PLC0415

    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    from kernels.bench import graph_ms  # noqa: PLC0415 (kernels.bench imports this module)

    parser = argparse.ArgumentParser(description="frame attention vs SDPA (flash, cuDNN) on the issue shapes, per call and in a CUDA graph")
    parser.add_argument("--sweep", action="store_true", help="also time a few tile configs")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "the benchmark needs a CUDA device"
    dev, dt = torch.device("cuda"), torch.bfloat16
    print(f"device: {torch.cuda.get_device_name()} ({sm_count(dev)} SMs), dtype {dt}")
    frames, N, hd = 17, 256, 64  # 16 cached frames + the frame itself
    for B, nh in ((1, 16), (64, 12)):
        keys = frames * N
        q = torch.randn(B, nh, N, hd, device=dev, dtype=dt)
        kc = torch.randn(B, nh, keys, hd, device=dev, dtype=dt)
        vc = torch.randn_like(kc)
        rows = torch.arange(B, device=dev)
        start = torch.full((B,), 5, device=dev, dtype=torch.long)  # a wrapped window
        count = torch.full((B,), frames, device=dev, dtype=torch.long)
        flops = 4 * B * nh * N * keys * hd
        nbytes = (2 * kc.numel() + 2 * q.numel()) * kc.element_size()
        ref = reference(q, kc, vc, rows, start, count)
        torch.testing.assert_close(frame_attention(q, kc, vc, rows, start, count), ref, atol=2e-2, rtol=2e-2)

        def report(name, fn):
            # per call from Python (launch and allocations included) and back to back inside a CUDA
            # graph (device time, what the engine's step pays): only the second ranks tiles
            ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
            try:
                g_ms = graph_ms(fn)
            except Exception:  # noqa: BLE001 (a baseline that cannot be captured still gets its call time)
                g_ms = None
            best = g_ms or ms
            graph = f"{g_ms * 1e3:9.1f}" if g_ms else f"{'-':>9}"
            print(f"  {name:<34} {ms * 1e3:9.1f} us call {graph} us graph {flops / best / 1e9:8.1f} TFLOP/s "
                  f"{nbytes / best / 1e6:8.1f} GB/s")

        split, bm, bn = plan(B, nh, N, frames, hd, sm_count(dev))
        print(f"B{B} nh{nh} hd{hd} N{N} keys{keys}: {flops / 1e9:.2f} GFLOP, {nbytes / 1e6:.1f} MB, "
              f"auto split {split} ({bm} x {bn} tiles)")
        report(f"triton (split {split})", lambda: frame_attention(q, kc, vc, rows, start, count))
        if split != 1:
            report("triton (split 1)", lambda: frame_attention(q, kc, vc, rows, start, count, split=1))
        for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    torch.nn.functional.scaled_dot_product_attention(q, kc, vc)
                    report(name + " (contiguous K/V)", lambda: torch.nn.functional.scaled_dot_product_attention(q, kc, vc))
            except RuntimeError as e:
                print(f"  {name}: unavailable ({str(e).splitlines()[0][:80]})")
        if args.sweep:
            for bm, bn, w, st in ((128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3),
                                  (128, 64, 8, 4), (64, 128, 4, 3), (128, 32, 4, 4)):
                splits = {1, auto_split(B, nh, N, frames, bm, bn, sm_count(dev))}
                if B == 1:  # launch-bound: how the split count fills the SMs
                    splits |= {4, 8, 16}
                for sp in sorted(splits):
                    report(f"BM{bm} BN{bn} w{w} s{st} split{sp}",
                           lambda: frame_attention(q, kc, vc, rows, start, count, split=sp, block_m=bm,
                                                   block_n=bn, num_warps=w, num_stages=st))


if __name__ == "__main__":
    _bench()
