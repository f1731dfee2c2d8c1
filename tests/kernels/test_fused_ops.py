"""The fused block ops (kernels.fused_linear, kernels.qkv_append) against their torch twins,
on the CPU through the Triton interpreter: fp32 and fp16, odd sizes, NaN-poisoned outputs.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels then run on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from kernels import fused_linear, qkv_append, reference  # noqa: E402

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2)}


def nans(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def modulation(B, Fr, D, n, dtype):
    """n strided (B, Fr, D) views of one projection, as the model's ada chunks are."""
    return (0.3 * torch.randn(B, Fr, n * D, dtype=dtype)).chunk(n, dim=-1)


# (B, frames, tokens per frame, D in, O out): one frame (the frame step), several frames (training
# shapes), sizes no block divides
LINEAR_CASES = [(2, 1, 9, 40, 48), (1, 3, 5, 24, 17), (3, 1, 16, 64, 96), (2, 2, 7, 33, 70)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("B,Fr,N,D,O", LINEAR_CASES)
def test_modulated_ln_linear_matches_reference(dtype, gelu, B, Fr, N, D, O):
    torch.manual_seed(0)
    x = torch.randn(B, Fr * N, D, dtype=dtype) * 2 + 0.5  # a mean off zero: the LN must remove it
    shift, scale = modulation(B, Fr, D, 2, dtype)
    weight, bias = torch.randn(O, D, dtype=dtype) / D ** 0.5, torch.randn(O, dtype=dtype)
    out = nans(B, Fr * N, O, dtype=dtype)
    got = fused_linear.modulated_ln_linear(x, shift, scale, weight, bias, gelu=gelu, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, reference.modulated_ln_linear(x, shift, scale, weight, bias, gelu), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_modulated_ln_linear_without_bias(dtype):
    torch.manual_seed(1)
    x = torch.randn(2, 9, 40, dtype=dtype)
    shift, scale = modulation(2, 1, 40, 2, dtype)
    weight = torch.randn(12, 40, dtype=dtype) / 40 ** 0.5
    got = fused_linear.modulated_ln_linear(x, shift, scale, weight, None)
    torch.testing.assert_close(got, reference.modulated_ln_linear(x, shift, scale, weight, None), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Fr,N,D,K", LINEAR_CASES)
def test_linear_gated_residual_matches_reference(dtype, B, Fr, N, D, K):
    torch.manual_seed(0)
    x, inp = torch.randn(B, Fr * N, D, dtype=dtype), torch.randn(B, Fr * N, K, dtype=dtype)
    (gate,) = modulation(B, Fr, D, 1, dtype)
    weight, bias = torch.randn(D, K, dtype=dtype) / K ** 0.5, torch.randn(D, dtype=dtype)
    out = nans(B, Fr * N, D, dtype=dtype)
    got = fused_linear.linear_gated_residual(x, inp, weight, bias, gate, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, reference.linear_gated_residual(x, inp, weight, bias, gate), **TOL[dtype])


# (N tokens, heads, head dim, slots, cache rows, query rows, their slots): odd N, head dims whose
# half is not a power of two (20) or below tl.dot's 16 (8), a permuted subset of the cache rows,
# the last ring slot
QKV_CASES = [(9, 2, 20, 3, 3, [2, 0], [1, 2]), (16, 4, 16, 5, 4, [3, 1, 0], [4, 0, 2]),
             (5, 1, 8, 2, 2, [1], [1]), (7, 3, 32, 4, 2, [0, 1], [3, 3])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,nh,hd,S,Bc,rows,slots", QKV_CASES)
def test_modulated_ln_qkv_append_matches_reference(dtype, N, nh, hd, S, Bc, rows, slots):
    torch.manual_seed(0)
    B, D = len(rows), nh * hd
    x = torch.randn(B, N, D, dtype=dtype) + 0.3
    shift, scale = modulation(B, 1, D, 2, dtype)
    weight, bias = torch.randn(3 * D, D, dtype=dtype) / D ** 0.5, torch.randn(3 * D, dtype=dtype)
    q_w, k_w = 1 + 0.1 * torch.randn(2, hd, dtype=dtype)
    cos, sin = torch.randn(2, B, N, hd // 2).unbind(0)
    k_cache = torch.randn(Bc, nh, S * N, hd, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    rows, slots = torch.tensor(rows), torch.tensor(slots)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_q = reference.modulated_ln_qkv_append(x, shift, scale, weight, bias, q_w, k_w, cos, sin,
                                               want_k, want_v, rows, slots, nh)
    out = nans(B, nh, N, hd, dtype=dtype)
    got_q = qkv_append.modulated_ln_qkv_append(x, shift, scale, weight, bias, q_w, k_w, cos, sin,
                                               k_cache, v_cache, rows, slots, nh, out=out)
    assert got_q.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got_q, want_q, **TOL[dtype])
    # the whole caches: the frame's slots written, every other slot and row untouched
    torch.testing.assert_close(k_cache, want_k, **TOL[dtype])
    torch.testing.assert_close(v_cache, want_v, **TOL[dtype])


def test_qkv_append_writes_only_the_frames_slots():
    torch.manual_seed(2)
    N, nh, hd, S, Bc = 9, 2, 16, 3, 3
    D = nh * hd
    x = torch.randn(1, N, D)
    shift, scale = modulation(1, 1, D, 2, torch.float32)
    k_cache, v_cache = nans(Bc, nh, S * N, hd, dtype=torch.float32), nans(Bc, nh, S * N, hd, dtype=torch.float32)
    rows, slot = torch.tensor([1]), torch.tensor([2])
    qkv_append.modulated_ln_qkv_append(x, shift, scale, torch.randn(3 * D, D), None, torch.ones(hd), torch.ones(hd),
                                       torch.ones(1, N, hd // 2), torch.zeros(1, N, hd // 2), k_cache, v_cache,
                                       rows, slot, nh)
    for cache in (k_cache, v_cache):
        written = ~cache.isnan()
        assert written[1, :, 2 * N:3 * N].all(), "every element of the frame's slot is written"
        written[1, :, 2 * N:3 * N] = False
        assert not written.any(), "nothing outside the frame's slot is written"


def test_gpu_correctness_check_runs_and_catches_a_wrong_kernel(monkeypatch):
    """`python -m kernels.bench --check` is what validates the kernels on the GPU: it must run, and fail
    when a kernel is wrong. Here on small shapes, fp32, in the interpreter."""
    from kernels import bench  # noqa: PLC0415
    small = dict(dtype=torch.float32, tol=1e-4, attention_cases=((2, 2, 9, 16, 3, [4, 0, 1]),),
                 block_cases=((2, 9, 2, 16, 3),))
    results = bench.check_all(torch.device("cpu"), **small)
    assert len(results) == 1 + 3 + 6 and all(err < 1e-4 for _, err in results)
    real = fused_linear.linear_gated_residual
    monkeypatch.setattr(fused_linear, "linear_gated_residual", lambda *a, **k: real(*a, **k) * 1.01)
    with pytest.raises(AssertionError, match="linear\\+gated residual"):
        bench.check_all(torch.device("cpu"), **small)
