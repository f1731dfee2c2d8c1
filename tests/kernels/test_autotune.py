"""kernels.autotune: every config is timed only after the caller's queued work has finished.

On the CPU there is no queue to wait for, so the device calls are replaced by recorders: the
test checks the order (wait, then time) and that the tuner keeps the config the timings name.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels then run on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from kernels import autotune as tuning, fused_linear, qkv_append  # noqa: E402


@pytest.fixture
def device_calls(monkeypatch):
    """Replaces torch.cuda.synchronize and do_bench_cudagraph; the fake bench runs the call once and
    reports a time per block size (BLOCK 32 fastest), recorded in order."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("wait"))

    def bench(kernel_call, quantiles):
        kernel_call()
        calls.append("time")
        return [1.0, 1.0, 1.0] if len(calls) != 4 else [0.5, 0.5, 0.5]  # the second config timed wins

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", bench)
    return calls


def test_settled_bench_waits_for_queued_work_before_it_times(device_calls):
    seen = []
    tuning.settled_bench(lambda: seen.append("ran"), quantiles=(0.5, 0.2, 0.8))
    assert device_calls == ["wait", "time"] and seen == ["ran"]


def test_a_tuned_kernel_times_each_config_after_a_wait_and_keeps_the_fastest(device_calls):
    @tuning.autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})],
                     key=["n"])
    @triton.jit
    def double(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Y + offs, 2 * tl.load(X + offs, mask=offs < n), mask=offs < n)

    x = torch.arange(50, dtype=torch.float32)
    y = torch.zeros_like(x)
    double[lambda meta: (triton.cdiv(50, meta["BLOCK"]),)](x, y, 50)
    assert device_calls == ["wait", "time"] * 3
    assert double.best_config.kwargs["BLOCK"] == 32
    torch.testing.assert_close(y, 2 * x)


def test_the_frame_step_kernels_are_timed_settled():
    for kernel in (qkv_append._ln_qkv_append_kernel, fused_linear._ln_linear_kernel,
                   fused_linear._linear_residual_kernel):
        assert kernel.do_bench is tuning.settled_bench
