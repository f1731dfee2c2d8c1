"""The Triton backend against the torch reference, on the CPU through the Triton interpreter.

fp32 and fp16 only (the interpreter computes bf16 wrongly), tiny shapes (it is slow). Outputs
start as NaN, so an element a kernel forgets to write fails the comparison.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels then run on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kernels import ops, reference  # noqa: E402
from kernels import adaln, frame_attention as fa, kv_append  # noqa: E402
from sim.kv_cache import KVCache  # noqa: E402
from sim.model import ModelConfig, WorldModel  # noqa: E402

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2)}


def nans(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def window(lengths: list[int], window_frames: int):
    """(start, count) of sessions with these committed lengths, as `KVCache.bounds` gives them."""
    cache = KVCache(1, len(lengths), 1, 2, window_frames, 1)
    cache.length.copy_(torch.tensor(lengths))
    return cache.bounds()


# ---- frame attention ---------------------------------------------------------------------------
# (N, hd, window, lengths of the Bc sessions, rows): odd N, wrapped rings (length > window + 1),
# windows shorter than the ring (length < window), fill levels mixed in one batch, rows subset
# in a non-trivial order, non-power-of-two head dim.
# blocks: (BLOCK_M, BLOCK_N) overrides, here several query blocks and several tiles per slot.
# A `KVCache` window is slots 0..length or the whole ring; the op takes any (start, count), so
# one case gives them directly: windows that wrap past slot S-1 and start mid-ring.
ATTENTION_CASES = [
    (9, 16, 4, [0, 3, 11, 7], [2, 0, 3], None),
    (16, 32, 4, [5, 1, 4], [1, 2, 0], None),
    (9, 24, 3, [9, 2], [1, 0, 1], None),
    (40, 16, 2, [6, 1], [1, 0], (16, 16)),
    (9, 16, 4, ([3, 1, 4, 2], [2, 5, 3, 1]), [0, 3, 2, 1], None),
    (9, 8, 2, [2, 5], [0, 1], None),  # hd below tl.dot's 16: padded
    (128, 16, 2, [2, 1], [1, 0], None),  # split-KV with the 64 x 128 tiles the GPU takes for long frames
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,hd,win,lengths,rows,blocks", ATTENTION_CASES)
def test_frame_attention_matches_reference(dtype, N, hd, win, lengths, rows, blocks):
    torch.manual_seed(0)
    nh, S = 2, win + 1
    if isinstance(lengths, tuple):
        start, count = (torch.tensor(t) for t in lengths)
        lengths = lengths[0]
    else:
        start, count = window(lengths, win)
    rows = torch.tensor(rows)
    k_cache = torch.randn(len(lengths), nh, S * N, hd, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(len(rows), nh, N, hd, dtype=dtype)
    want = reference.frame_attention(q, k_cache, v_cache, rows, start, count)
    results = {}
    for split in (1, 3, None):
        out = nans(len(rows), N, nh * hd, dtype=dtype)
        partials = None
        if split == 3:  # poisoned workspace: every share, empty or not, must be written
            partials = (nans(3, len(rows) * nh, N, hd, dtype=torch.float32),
                        nans(3, len(rows) * nh, N, dtype=torch.float32), nans(3, len(rows) * nh, N, dtype=torch.float32))
        bm, bn = blocks or (None, None)
        got = fa.frame_attention(q, k_cache, v_cache, rows, start, count, split=split, out=out, partials=partials,
                                 block_m=bm, block_n=bn)
        assert got.data_ptr() == out.data_ptr()
        torch.testing.assert_close(got, want, **TOL[dtype])
        results[split] = got
    same = 1e-5 if dtype == torch.float32 else 2e-3  # fp16: p is rounded against a different running max
    torch.testing.assert_close(results[1], results[3], atol=same, rtol=same)


def test_frame_attention_split_heuristic():
    # B1 issue shape on an H100 (132 SMs): 32 programs of 128 x 64 tiles split 8 ways; B64: already full
    assert fa.auto_split(1, 16, 256, 17, 128, 64, 132) == 8
    assert fa.auto_split(64, 12, 256, 17, 128, 64, 132) == 1
    assert fa.auto_split(1, 2, 9, 2, 16, 16, 132) == 1  # a window of 2 tiles is not worth splitting
    # what a call picks: split-KV tiles (64 x 128) only where the full-grid ones leave SMs idle
    assert fa.plan(1, 16, 256, 17, 64, 132) == (4, 64, 128)
    assert fa.plan(64, 12, 256, 17, 64, 132) == (1, 128, 64)
    assert fa.plan(1, 4, 64, 9, 64, 132) == (2, 64, 64)  # the small model, one player
    assert fa.plan(64, 4, 64, 9, 64, 132) == (1, 64, 64)  # 64 players: 256 programs, no merge pass
    q, kc = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 32, 16)
    with pytest.raises(ValueError, match="split must be >= 1"):  # an empty grid would return garbage
        fa.frame_attention(q, kc, kc, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), split=0)


def test_frame_attention_non_contiguous_query():
    torch.manual_seed(1)
    N, nh, hd, win = 9, 2, 16, 2
    start, count = window([4, 1], win)
    rows = torch.tensor([1, 0])
    k_cache = torch.randn(2, nh, (win + 1) * N, hd)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(2, N, nh, hd).transpose(1, 2)  # (B, nh, N, hd) view, as reference qk_norm_rope_append returns
    torch.testing.assert_close(fa.frame_attention(q, k_cache, v_cache, rows, start, count),
                               reference.frame_attention(q, k_cache, v_cache, rows, start, count), **TOL[torch.float32])


# ---- QK norm + RoPE + append -------------------------------------------------------------------
@pytest.mark.parametrize("dtype,cache_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                               (torch.float32, torch.float16)])
@pytest.mark.parametrize("N,hd", [(9, 16), (16, 32), (5, 24), (40, 64)])  # (40, 64): two programs per row
def test_qk_norm_rope_append_matches_reference(dtype, cache_dtype, N, hd):
    torch.manual_seed(0)
    Bc, nh, S = 4, 2, 3
    rows, slot = torch.tensor([3, 0, 2]), torch.tensor([1, 2, 0])
    B = len(rows)
    q, k, v = torch.randn(B, N, 3, nh, hd, dtype=dtype).unbind(2)  # strided views, like the qkv projection
    q_w, k_w = torch.rand(hd, dtype=dtype) + 0.5, torch.rand(hd, dtype=dtype) + 0.5
    cos, sin = torch.randn(2, B, N, hd // 2).unbind(0)
    caches = [nans(Bc, nh, S * N, hd, dtype=cache_dtype) for _ in range(4)]  # untouched slots must stay NaN
    want = reference.qk_norm_rope_append(q, k, v, q_w, k_w, cos, sin, caches[0], caches[1], rows, slot, 1e-6)
    out = nans(B, nh, N, hd, dtype=dtype)
    got = kv_append.qk_norm_rope_append(q, k, v, q_w, k_w, cos, sin, caches[2], caches[3], rows, slot, 1e-6, out=out)
    torch.testing.assert_close(got, want, **TOL[dtype])
    for mine, ref in zip(caches[2:], caches[:2]):
        torch.testing.assert_close(mine, ref, equal_nan=True, **TOL[cache_dtype])


# ---- adaLN -------------------------------------------------------------------------------------
def adaln_inputs(dtype, B=2, Fr=3, N=15, D=48):  # 90 rows: two programs of 64 rows, the second partial
    x, y = torch.randn(2, B, Fr * N, D, dtype=dtype).unbind(0)
    shift, scale, gate = torch.randn(B, Fr, 3 * D, dtype=dtype).chunk(3, dim=-1)  # strided, like ada(c).chunk
    return x, y, shift, scale, gate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [48, 64])
def test_modulated_layer_norm_matches_reference(dtype, D):
    torch.manual_seed(0)
    x, _, shift, scale, _ = adaln_inputs(dtype, D=D)
    out = nans(*x.shape, dtype=dtype)
    got = adaln.modulated_layer_norm(x, shift, scale, 1e-6, out=out)
    torch.testing.assert_close(got, reference.modulated_layer_norm(x, shift, scale, 1e-6), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [48, 64])
def test_gated_residual_matches_reference(dtype, D):
    torch.manual_seed(0)
    x, y, _, _, gate = adaln_inputs(dtype, D=D)
    out = nans(*x.shape, dtype=dtype)
    got = adaln.gated_residual(x, y, gate, out=out)
    torch.testing.assert_close(got, reference.gated_residual(x, y, gate), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_residual_norm_matches_composition(dtype):
    torch.manual_seed(0)
    x, y, shift, scale, gate = adaln_inputs(dtype, Fr=1)
    out = (nans(*x.shape, dtype=dtype), nans(*x.shape, dtype=dtype))
    got = adaln.gated_residual_modulated_layer_norm(x, y, gate, shift, scale, 1e-6, out=out)
    want = adaln.reference_fused(x, y, gate, shift, scale, 1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[dtype])


# ---- the whole frame step ----------------------------------------------------------------------
def test_model_step_triton_equals_torch(monkeypatch):
    from kernels import triton_ops  # noqa: PLC0415

    calls = {}
    step_ops = ("modulated_ln_qkv_append", "frame_attention", "linear_gated_residual", "modulated_ln_linear")
    for name in step_ops:
        def counted(*args, _name=name, _fn=getattr(triton_ops, name)):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*args)
        monkeypatch.setattr(triton_ops, name, counted)
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny")
    model = WorldModel(cfg).eval()
    with torch.no_grad():  # zero-initialised adaLN/output layers would hide most of the ops
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    B = 3
    cache = model.setup_cache(B)
    cache.k.normal_()
    cache.v.normal_()
    cache.length.copy_(torch.tensor([7, 0, 2]))  # wrapped ring, fresh session, partly filled
    rows = torch.tensor([2, 0])
    x = torch.randn(len(rows), cfg.latent_channels, cfg.latent_h, cfg.latent_w)
    s, actions = torch.rand(len(rows)), torch.randn(len(rows), cfg.action_dim)

    results = {}
    before = ops.backend()
    try:
        for name in ("torch", "triton"):
            ops.set_backend(name)
            c = model.setup_cache(B)
            c.k.copy_(cache.k)
            c.v.copy_(cache.v)
            c.length.copy_(cache.length)
            with torch.no_grad():
                v, conf = model.forward_frame(x, s, actions, c, rows)
            results[name] = (v, conf, c.k, c.v)
    finally:
        ops.set_backend(before)
    assert set(calls) == set(step_ops), f"the triton backend was not used for every op: {calls}"
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
