"""Autotuning for the kernels of the frame step: `triton.autotune`, timed safely.

Triton times each config in CUDA graphs on a stream of its own (`do_bench_cudagraph`), and
that stream does not wait for the caller's. The first timed launch can therefore read inputs
that the caller's stream has not written yet. For most kernels that is only a wrong timing;
for `kernels.qkv_append` it is a wild store: it writes K/V at the cache row and ring slot it
loads from `rows` and `slot`, and `slot` is computed by the kernel just before it
(`KVCache.slot().index_select`), into memory that may still hold anything. On a busy GPU the
caller's stream lags far enough behind the host for that to happen: the CUDA illegal memory
access of the ninth and tenth sessions (BENCHMARKS.md), which came only with other processes
on the GPU, always while tuning `_ln_qkv_append_kernel` for a new batch bucket.

`settled_bench` waits for every queued kernel before it times, so every config is timed on
the inputs as the caller meant them. Tuning happens once per shape, in the warm-up that
precedes a graph capture (`sim.graphs`), never inside one, so the wait costs nothing at play.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.testing

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # kernels run on the CPU: one config each


def settled_bench(kernel_call, quantiles):
    """Time kernel_call in CUDA graphs (device time, not launch time), after all queued work."""
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(kernel_call, quantiles=quantiles)


def autotune(configs: list[triton.Config], key: list[str]):
    """`triton.autotune` over configs, keyed on key, timed by `settled_bench`.

    Timing inside graphs matters here: at a few sessions these kernels take a few
    microseconds, less than one launch from Python, so timing them launch by launch measures
    the launch (BENCHMARKS.md, H200 section). Under the interpreter there is one config and
    nothing is timed."""
    return triton.autotune(configs=configs, key=key, do_bench=settled_bench)
