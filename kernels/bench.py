"""Every Triton kernel against its baselines, on the GPU: `python -m kernels.bench [--check] [--sweep]`.

First the two ceilings of this card, measured (a bf16 matmul on random data, a device copy);
then per kernel and shape: median time (triton.testing.do_bench: L2 flushed before each run,
so cold-cache times, the same for every contender), TFLOP/s, GB/s and % of the floor, where
the floor is max(FLOPs / measured peak, bytes / measured bandwidth), bytes counting every
input read once and every output written once.

- frame attention (one frame's queries against its window of the ring buffer) against PyTorch
  SDPA with the flash and cuDNN backends and FlexAttention, all on the same q and K/V (the
  baselines get the window as contiguous K/V, which only favours them), at the issue's shapes
  (B1 nh16 and B64 nh12, hd 64, 256 queries vs 17 frames = 4352 keys) and the `small` preset's;
- the fused block ops (kernels.qkv_append, kernels.fused_linear) and the adaLN kernels
  against their plain-PyTorch twins.

--check runs only the correctness checks: each kernel against its torch twin on fresh random
bf16 inputs (poisoned outputs, wrapped rings, rows subsets, split-KV on and off); the
benchmark always runs them first. The table is printed last; --json writes every row.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import triton

from kernels import adaln, fused_linear, qkv_append, reference
from kernels import frame_attention as fa


# ---- the card's ceilings ------------------------------------------------------------------------
def measure_peaks(device: torch.device) -> dict:
    """bf16 dense matmul TFLOP/s on random data and device-copy GB/s (bytes read + written)."""
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=torch.bfloat16), torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    tflops = 2 * n ** 3 / ms / 1e9
    src = torch.randn(2 ** 28 // 2, device=device, dtype=torch.bfloat16)  # 256 MiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    gbs = 2 * src.numel() * src.element_size() / ms / 1e6
    del a, b, src, dst
    return {"bf16_tflops": tflops, "copy_gbs": gbs}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    g, w = got.double(), want.double()
    return float((g - w).norm() / w.norm().clamp_min(1e-30))


# ---- inputs -------------------------------------------------------------------------------------
def attention_inputs(B, nh, N, hd, frames, device, dtype, wrap: int = 5, Bc: int | None = None):
    """q and a ring of `frames` slots per session, windows starting at slot `wrap` (wrapped)."""
    Bc = Bc or B
    q = torch.randn(B, nh, N, hd, device=device, dtype=dtype)
    kc = torch.randn(Bc, nh, frames * N, hd, device=device, dtype=dtype)
    vc = torch.randn_like(kc)
    rows = torch.randperm(Bc, device=device)[:B]
    start = torch.full((Bc,), wrap % frames, device=device, dtype=torch.long)
    count = torch.full((Bc,), frames, device=device, dtype=torch.long)
    return q, kc, vc, rows, start, count


# ---- correctness --------------------------------------------------------------------------------
# (B, nh, N, hd, slots, committed lengths of the cache rows or None for full wrapped windows)
ATTENTION_CHECKS = ((1, 16, 256, 64, 17, None), (3, 4, 64, 64, 9, [12, 0, 4, 9]), (2, 2, 37, 64, 5, [1, 7, 3]),
                    (64, 12, 256, 64, 17, None))
# (B, N, nh, hd, slots): the small preset at 1, 5 and 64 sessions (odd N), and wide heads
BLOCK_CHECKS = ((1, 64, 4, 64, 9), (5, 37, 4, 64, 9), (64, 64, 4, 64, 9), (2, 256, 16, 64, 17))


def check_all(device: torch.device, dtype=torch.bfloat16, tol: float = 1e-2, attention_cases=ATTENTION_CHECKS,
              block_cases=BLOCK_CHECKS) -> list[tuple[str, float]]:
    """Each kernel against its torch twin (in fp32) on fresh random inputs; returns (case, relative
    error) and raises on a miss."""
    results = []

    def record(name, got, want):
        err = rel_err(got, want)
        if not math.isfinite(err) or err > tol:
            raise AssertionError(f"{name}: relative error {err:.2e} > {tol:g} (or not finite)")
        results.append((name, err))

    seed = int(time.time())
    torch.manual_seed(seed)
    results.append((f"(inputs drawn with torch.manual_seed({seed}))", 0.0))
    for B, nh, N, hd, frames, lengths in attention_cases:
        q, kc, vc, rows, start, count = attention_inputs(B, nh, N, hd, frames, device, dtype,
                                                         Bc=len(lengths) if lengths else None)
        if lengths:  # mixed fill levels, as KVCache.bounds gives them
            length = torch.tensor(lengths, device=device)
            count = torch.clamp(length, max=frames - 1) + 1
            start = (length - count + 1) % frames
            rows = torch.randperm(len(lengths), device=device)[:B]
        want = reference.frame_attention(q.float(), kc.float(), vc.float(), rows, start, count)
        for split in (1, None, 4):
            out = torch.full((B, N, nh * hd), float("nan"), device=device, dtype=dtype)
            got = fa.frame_attention(q, kc, vc, rows, start, count, split=split, out=out)
            record(f"frame_attention B{B} nh{nh} N{N} S{frames} split {split or 'auto'}", got, want)
    for B, N, nh, hd, S in block_cases:
        D = nh * hd
        x = torch.randn(B, N, D, device=device, dtype=dtype) + 0.5
        shift, scale = (0.3 * torch.randn(B, 1, 2 * D, device=device, dtype=dtype)).chunk(2, dim=-1)
        w = torch.randn(3 * D, D, device=device, dtype=dtype) / D ** 0.5
        bias = torch.randn(3 * D, device=device, dtype=dtype)
        qw, kw = 1 + 0.1 * torch.randn(2, hd, device=device, dtype=dtype)
        cos, sin = torch.randn(2, B, N, hd // 2, device=device).unbind(0)
        kc = torch.full((B + 2, nh, S * N, hd), float("nan"), device=device, dtype=dtype)
        vc = torch.full_like(kc, float("nan"))
        rows = torch.randperm(B + 2, device=device)[:B]
        slot = torch.randint(0, S, (B,), device=device)
        kr, vr = kc.clone(), vc.clone()
        f32 = [t.float() if t.is_floating_point() else t for t in (x, shift, scale, w, bias, qw, kw, cos, sin)]
        kr32, vr32 = kr.float(), vr.float()
        q_want = reference.modulated_ln_qkv_append(*f32, kr32, vr32, rows, slot, nh)
        q_got = qkv_append.modulated_ln_qkv_append(x, shift, scale, w, bias, qw, kw, cos, sin, kc, vc, rows, slot, nh,
                                                   out=torch.full((B, nh, N, hd), float("nan"), device=device, dtype=dtype))
        record(f"qkv_append q B{B} N{N} nh{nh}", q_got, q_want)
        for name, got, want in (("k", kc, kr32), ("v", vc, vr32)):  # the written slots (NaN elsewhere)
            g = torch.stack([got[r, :, s * N:(s + 1) * N] for r, s in zip(rows.tolist(), slot.tolist())])
            w_ = torch.stack([want[r, :, s * N:(s + 1) * N] for r, s in zip(rows.tolist(), slot.tolist())])
            record(f"qkv_append {name} B{B} N{N} nh{nh}", g, w_)
        H = 4 * D
        u = torch.randn(B, N, H, device=device, dtype=dtype)
        gate = 0.3 * torch.randn(B, 1, D, device=device, dtype=dtype)
        w1, b1 = torch.randn(H, D, device=device, dtype=dtype) / D ** 0.5, torch.randn(H, device=device, dtype=dtype)
        w2, b2 = torch.randn(D, H, device=device, dtype=dtype) / H ** 0.5, torch.randn(D, device=device, dtype=dtype)
        up = fused_linear.modulated_ln_linear(x, shift, scale, w1, b1, gelu=True,
                                              out=torch.full((B, N, H), float("nan"), device=device, dtype=dtype))
        record(f"ln+linear+gelu B{B} N{N} D{D}", up, reference.modulated_ln_linear(
            x.float(), shift.float(), scale.float(), w1.float(), b1.float(), gelu=True))
        down = fused_linear.linear_gated_residual(x, u, w2, b2, gate, out=torch.full_like(x, float("nan")))
        record(f"linear+gated residual B{B} N{N} D{D}", down, reference.linear_gated_residual(
            x.float(), u.float(), w2.float(), b2.float(), gate.float()))
        ln = adaln.modulated_layer_norm(x, shift, scale, out=torch.full_like(x, float("nan")))
        record(f"modulated_layer_norm B{B} N{N} D{D}", ln, reference.modulated_layer_norm(x.float(), shift.float(), scale.float()))
    return results


# ---- timing -------------------------------------------------------------------------------------
def graph_ms(fn, calls: int = 20, replays: int = 15) -> float:
    """Device time of one call, launches excluded: `calls` calls captured in one CUDA graph,
    replayed, median per call. What a kernel costs inside the engine's captured step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[len(times) // 2]


class Table:
    """Rows of timings. Two per contender: `us` from triton.testing.do_bench (L2 flushed before
    each call, the launch included: what one call from Python costs) and `graph_us` from
    `graph_ms` (back to back inside a CUDA graph: the device time, as in the engine's step)."""

    def __init__(self, peaks: dict):
        self.peaks, self.rows = peaks, []

    def time(self, kernel: str, shape: str, impl: str, fn, flops: float, nbytes: float, note: str = "") -> float | None:
        try:
            fn()
            ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        except Exception as e:  # noqa: BLE001 (a baseline missing on this build is a row, not a crash)
            self.rows.append(dict(kernel=kernel, shape=shape, impl=impl, us=None, note=f"unavailable: {str(e).splitlines()[0][:70]}"))
            return None
        try:
            g_ms = graph_ms(fn)
        except Exception as e:  # noqa: BLE001 (some baselines cannot be captured)
            g_ms, note = None, (note + f" no graph: {str(e).splitlines()[0][:40]}").strip()
        best = min(ms, g_ms) if g_ms else ms
        floor_ms = max(flops / (self.peaks["bf16_tflops"] * 1e9), nbytes / (self.peaks["copy_gbs"] * 1e6))
        self.rows.append(dict(kernel=kernel, shape=shape, impl=impl, us=ms * 1e3, graph_us=g_ms * 1e3 if g_ms else None,
                              tflops=flops / best / 1e9, gbs=nbytes / best / 1e6, floor_pct=100 * floor_ms / best, note=note))
        return ms

    def render(self) -> str:
        lines = [f"{'kernel':<22} {'shape':<30} {'impl':<26} {'us':>8} {'graph us':>9} {'TFLOP/s':>8} {'GB/s':>7} {'%floor':>6}  note",
                 "(us: one call from Python, L2 flushed; graph us: back to back in a CUDA graph; rates and % of floor from the faster)"]
        for r in self.rows:
            if r["us"] is None:
                lines.append(f"{r['kernel']:<22} {r['shape']:<30} {r['impl']:<26} {'-':>8} {'-':>9} {'':>8} {'':>7} {'':>6}  {r['note']}")
            else:
                g = f"{r['graph_us']:9.1f}" if r["graph_us"] is not None else f"{'-':>9}"
                lines.append(f"{r['kernel']:<22} {r['shape']:<30} {r['impl']:<26} {r['us']:8.1f} {g} {r['tflops']:8.1f} "
                             f"{r['gbs']:7.0f} {r['floor_pct']:6.1f}  {r['note']}")
        return "\n".join(lines)


def bench_attention(table: Table, device, sweep: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: PLC0415
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception:  # noqa: BLE001
        flex = None
    dt = torch.bfloat16
    for B, nh, N, frames, label in ((1, 16, 256, 17, "issue B1"), (64, 12, 256, 17, "issue B64"),
                                    (1, 4, 64, 9, "small B1"), (64, 4, 64, 9, "small B64")):
        hd = 64
        q, kc, vc, rows, start, count = attention_inputs(B, nh, N, hd, frames, device, dt)
        keys = frames * N
        flops = 4 * B * nh * N * keys * hd
        nbytes = (2 * B * nh * keys * hd + 2 * q.numel()) * 2
        shape = f"B{B} nh{nh} {N}q x {keys}k ({label})"
        split = fa.plan(B, nh, N, frames, hd, fa.sm_count(device))[0]
        table.time("frame_attention", shape, f"triton (split {split})",
                   lambda: fa.frame_attention(q, kc, vc, rows, start, count), flops, nbytes)
        if split != 1:
            table.time("frame_attention", shape, "triton (split 1)",
                       lambda: fa.frame_attention(q, kc, vc, rows, start, count, split=1), flops, nbytes)
        for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
            def run(backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, kc, vc)
            table.time("frame_attention", shape, name, run, flops, nbytes, "contiguous K/V")
        if flex is not None:
            table.time("frame_attention", shape, "flex_attention (compiled)", lambda: flex(q, kc, vc), flops, nbytes,
                       "contiguous K/V")
        table.time("frame_attention", shape, "torch reference", lambda: reference.frame_attention(q, kc, vc, rows, start, count),
                   flops, nbytes, "ring + mask")
        if sweep:
            for bm, bn, w, st in ((128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 4, 4), (64, 128, 4, 3),
                                  (128, 32, 4, 4), (64, 32, 4, 4)):
                if bm > max(16, triton.next_power_of_2(N)) or bn > max(16, triton.next_power_of_2(N)):
                    continue
                splits = {1, fa.auto_split(B, nh, N, frames, bm, bn, fa.sm_count(device)), 2 * split}
                if B == 1 and N == 256:  # the launch-bound issue shape: how the split count fills the SMs
                    splits |= {4, 8, 16}
                for sp in sorted(splits):
                    table.time("frame_attention", shape, f"BM{bm} BN{bn} w{w} s{st} split{sp}",
                               lambda: fa.frame_attention(q, kc, vc, rows, start, count, split=sp, block_m=bm,
                                                          block_n=bn, num_warps=w, num_stages=st), flops, nbytes, "sweep")


def bench_block_ops(table: Table, device) -> None:
    for module in (qkv_append, fused_linear):
        for name, flops, nbytes, fast, slow in module.bench_cases(device):
            kernel, shape = name.split(" B", 1)
            table.time(kernel, "B" + shape, "triton", fast, flops, nbytes)
            table.time(kernel, "B" + shape, "torch reference", slow, flops, nbytes)
    dt = torch.bfloat16
    for B, N, D in ((1, 64, 256), (64, 64, 256)):
        x, y = torch.randn(2, B, N, D, device=device, dtype=dt).unbind(0)
        shift, scale, gate = torch.randn(B, 1, 3 * D, device=device, dtype=dt).chunk(3, dim=-1)
        e = x.numel() * x.element_size()
        shape = f"B{B} {B * N}x{D}"
        table.time("modulated_layer_norm", shape, "triton", lambda: adaln.modulated_layer_norm(x, shift, scale), 0, 2 * e)
        table.time("modulated_layer_norm", shape, "torch reference", lambda: reference.modulated_layer_norm(x, shift, scale), 0, 2 * e)
        table.time("gated_residual", shape, "triton", lambda: adaln.gated_residual(x, y, gate), 0, 3 * e)
        table.time("gated_residual", shape, "torch reference", lambda: reference.gated_residual(x, y, gate), 0, 3 * e)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only the correctness checks")
    p.add_argument("--sweep", action="store_true", help="also time a few tile configs of the attention kernel")
    p.add_argument("--json", default=None, metavar="FILE", help="write every row (and the peaks) as JSON")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("error: kernels.bench needs a CUDA GPU (the CPU tests run the kernels in the Triton interpreter: pytest tests/kernels)")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"kernels.bench: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, triton {triton.__version__}")
    checks = check_all(device)
    print(f"correctness: {len(checks)} cases against the torch reference on fresh random bf16 inputs, "
          f"worst relative error {max(e for _, e in checks):.2e}")
    for name, err in checks:
        print(f"  {name:<52} {err:.2e}")
    if args.check:
        return
    peaks = measure_peaks(device)
    print(f"measured peaks: bf16 matmul {peaks['bf16_tflops']:.0f} TFLOP/s, device copy {peaks['copy_gbs']:.0f} GB/s")
    table = Table(peaks)
    bench_attention(table, device, args.sweep)
    bench_block_ops(table, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "peaks": peaks, "checks": checks, "rows": table.rows}, f, indent=1)
    print(table.render())


if __name__ == "__main__":
    main()
