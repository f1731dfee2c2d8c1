"""The frame step of one model in several execution modes, side by side: `python -m sim.bench`.

    python -m sim.bench                                  # the shipped maze model, batch 1 8 32 64
    python -m sim.bench --batch 1 32 --modes eager triton+graphs --check
    python -m sim.bench --engine sim/weights/maze        # + the engine's own latency per frame
    python -m sim.bench --batch 64 --modes triton+graphs --engine STUDENT --engine-sessions 1 64 --engine-profile

Per batch size B (sessions) and mode, the median of CUDA-event timings after warm-up:
  step   one denoising pass of the DiT for B sessions against the KV cache (`forward_frame`);
  frame  a whole frame: k_max steps + the cache pass at t = 0 + decoding to uint8 frames.
Modes (the same weights, the same cache, the same inputs):
  eager          plain PyTorch, the torch kernel backend (`kernels.reference`), no graphs;
  compile        torch.compile(mode="max-autotune") of that same step (it captures CUDA graphs
                 itself), one compile per batch size; the decoder under mode="reduce-overhead";
  triton+graphs  the Triton kernel backend, each batch-size bucket captured in a CUDA graph
                 (`sim.graphs`), as the engine runs it on CUDA;
  torch+graphs, triton  the two halves of that on their own, to see where a gain comes from.
Each timing is one step or frame between a pair of events, synchronised after each, so a
mode that launches slower than the GPU computes is charged for it, as a player would be.

--check first holds the fast paths to the eager one on fresh random inputs: a step on the
Triton backend against the torch backend, graph replays against eager calls, and an engine
frame with sessions leaving at different steps against the same sessions one by one.
--engine also times `WorldSim.step` end to end (host copies included) for one player with
adaptive steps, as `play.py` drives it: latency p50/p99 and steps per frame; --engine-sessions
N... repeats it with N sessions in each step (the server's batch: frames/s); --engine-profile
adds where a frame goes (device busy time against wall time, the heaviest host operators).
The table comes last; --json writes everything.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from kernels import ops

MODES = ("eager", "compile", "triton+graphs", "torch+graphs", "triton")


def load_model(checkpoint: str | None, device: torch.device, dtype: torch.dtype):
    """(model, ae, config, name) from a checkpoint, default the shipped maze model."""
    from sim.bundle import load_world, shipped_checkpoint  # noqa: PLC0415
    path = Path(checkpoint) if checkpoint else shipped_checkpoint("maze")
    if path is None:
        raise SystemExit("error: no checkpoint given and none is shipped; pass --checkpoint")
    model, ae, config = load_world(path, device="cpu")
    return model.to(device, dtype).eval(), ae.to(device, dtype).eval(), config, str(path)


class Setup:
    """One mode at one batch size: a fresh cache filled with random K/V at full windows."""

    def __init__(self, mode: str, model, ae, B: int, k_max: int, seed: int = 0):
        from sim.autoencoder import tensor_to_frames  # noqa: PLC0415
        from sim.distill import student_levels  # noqa: PLC0415
        from sim.graphs import DecodeGraphs, FrameGraphs  # noqa: PLC0415
        # the Setup before this one holds CUDA graphs in reference cycles (its lambdas): free them now,
        # not when the collector happens to run inside this one's autotuning captures
        gc.collect()
        self.mode, self.model, self.B = mode, model, B
        cfg = model.cfg
        dev, dt = model.pos_embed.device, model.pos_embed.dtype
        g = torch.Generator(device=dev).manual_seed(seed)
        self.cache = model.setup_cache(B + 1, dev, dt)  # + the graphs' padding row
        self.cache.k.normal_(generator=g)
        self.cache.v.normal_(generator=g)
        self.cache.length.fill_(cfg.window + 3)  # wrapped rings, full windows
        self.rows = torch.arange(B, device=dev)
        self.x = torch.randn(B, cfg.latent_channels, cfg.latent_h, cfg.latent_w, device=dev, dtype=dt, generator=g)
        self.a = torch.randn(B, cfg.action_dim, device=dev, dtype=dt, generator=g)
        self.levels = student_levels(k_max, 3.0, dev)
        self.s = [self.levels[k].expand(B).contiguous() for k in range(k_max + 1)]  # the last is 0: cache pass
        ops.set_backend("triton" if mode.startswith("triton") else "torch")

        def decode(z):
            return tensor_to_frames(ae.decode(z))

        if mode.endswith("graphs"):
            net = FrameGraphs(model, self.cache, pad_row=B)
            self.forward = lambda x, s: net.forward_frame(x, s, self.a, self.cache, self.rows)
            self.decode = DecodeGraphs(decode, tuple(self.x.shape[1:]), dt, B, dev)
        elif mode == "compile":
            def step(x, s):
                return model.forward_frame(x, s, self.a, self.cache, self.rows)
            self.forward = torch.compile(step, mode="max-autotune", dynamic=False)
            # the decoder without max-autotune: its convolution search alone took ~200 s per batch
            # size on the H200 (the step is what the targets are about; its graphs come from compile)
            self.decode = torch.compile(decode, mode="reduce-overhead", dynamic=False)
        else:
            self.forward = lambda x, s: model.forward_frame(x, s, self.a, self.cache, self.rows)
            self.decode = decode

    @torch.no_grad()
    def step(self):
        return self.forward(self.x, self.s[0])

    @torch.no_grad()
    def frame(self):
        """k_max x0-predicting steps, the cache pass, the decode (the engine's few-step frame)."""
        x = self.x
        for k in range(len(self.s) - 1):
            v, _ = self.forward(x, self.s[k])
            x0 = x - self.levels[k] * v
            x = (1 - self.levels[k + 1]) * x0 + self.levels[k + 1] * self.x  # re-noise (fixed noise: timing only)
        self.forward(x0, self.s[-1])
        return self.decode(x0)


def time_fn(fn, warmup: int, reps: int, cuda: bool = True) -> dict:
    """Median / p10 / p90 of per-call CUDA-event times (ms), each call synchronised (host clock without CUDA)."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if not cuda:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10], "p90_ms": times[(9 * len(times)) // 10]}


def profile_step(st: "Setup", calls: int = 20, top: int = 14) -> list[dict]:
    """The kernels of one step on the device, by total time over `calls` steps (torch.profiler; the
    kernels inside graph replays are reported too): name, launches per step, us per step."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    for _ in range(3):
        st.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            st.step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if t > 0 and e.count >= calls:
            rows.append({"kernel": e.key[:90], "per_step": e.count / calls, "us_per_step": t / calls})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows[:top] + [{"kernel": "(all kernels)", "per_step": sum(r["per_step"] for r in rows),
                          "us_per_step": sum(r["us_per_step"] for r in rows)}]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@torch.no_grad()
def check(model, ae, device, batches=(1, 5, 32)) -> list[tuple[str, float]]:
    """The fast paths against eager PyTorch on fresh random inputs; raises on a miss."""
    out = []
    k_max = 4
    for B in batches:
        results = {}
        seed = int(time.time() * 1000) % 10007  # fresh inputs every run, the same for every mode
        for mode in ("eager", "triton", "torch+graphs", "triton+graphs"):
            st = Setup(mode, model, ae, B, k_max, seed=seed)
            v1, c1 = (t.clone() for t in st.step())
            st.cache.advance(st.rows)  # the next frame: new slot and positions, read by the replay from the cache
            v2, c2 = (t.clone() for t in st.step())
            results[mode] = (v1, c1, v2, c2, st.cache.k.clone())
        ref = results["eager"]
        for mode in ("triton", "torch+graphs", "triton+graphs"):
            for name, got, want in zip(("v", "confidence", "v (2nd call)", "confidence (2nd)", "cache k"), results[mode], ref):
                if name == "cache k":
                    got, want = got[:, :B], want[:, :B]
                if name.startswith("confidence"):
                    # a probability per session (one number at B = 1): judged on its own scale, as the
                    # allocator reads it against tau; bf16 moves it by a few ulps of ~0.004
                    err, what = float((got.double() - want.double()).abs().max()), "absolute error"
                else:
                    err, what = rel_err(got, want), "relative error"
                tol = 1e-6 if mode == "torch+graphs" else 2e-2
                if not np.isfinite(err) or err > tol:
                    raise AssertionError(f"B{B} {mode} {name}: {what} {err:.2e} > {tol:g}")
                out.append((f"B{B} {mode} {name}", err))
    ops.set_backend("torch")
    return out


@torch.no_grad()
def check_engine(checkpoint: str, device, frames: int = 6) -> list[tuple[str, float]]:
    """Engine frames with graphs (sessions leaving at different steps) == without, and == alone."""
    from sim.engine import WorldSim  # noqa: PLC0415
    out = []
    seed = int(time.time())  # fresh inputs per run, the same with and without graphs
    for backend in ("torch", "triton"):
        ops.set_backend(backend)
        runs = []
        for graphs in (False, True):
            sim = WorldSim.load(checkpoint, num_sessions=3, device=device, seed=7, graphs=graphs)
            if not sim.few_step:
                return out
            sim.use_adaptive_steps(tau=0.6)
            r = np.random.default_rng(seed)
            K = sim.context_frames
            sim.reset(r.integers(0, 256, (3, K, *sim.frame_shape), dtype=np.uint8),
                      (r.random((3, K, sim.action_dim)) > 0.5).astype(np.float32))
            runs.append(np.stack([sim.step((r.random((3, sim.action_dim)) > 0.5).astype(np.float32))[0]
                                  for _ in range(frames)]))
        diff = float(np.abs(runs[0].astype(int) - runs[1].astype(int)).mean())
        out.append((f"engine {backend}: graphs vs eager, mean |frame diff| (0-255)", diff))
        if diff > 2.0:
            raise AssertionError(f"engine frames with graphs differ from eager by {diff:.2f} levels on average")
    ops.set_backend("torch")
    return out


@torch.no_grad()
def engine_latency(checkpoint: str, device, frames: int, tau: float, sessions: int = 1,
                   profile: bool = False, warmup: int = 20, profile_frames: int = 20) -> dict:
    """`sessions` players (one by default), adaptive steps, through WorldSim.step as play.py and the
    server drive it: latency per frame (all sessions' frames in one step) and frames/s.

    profile: also run `profile_frames` more frames under torch.profiler and report where the frame goes: the
    device's busy time per frame (sum of its kernels and copies) against the wall time, and the
    host's heaviest operators by their own CPU time (what the rest is)."""
    import scenes  # noqa: PLC0415
    from sim.engine import WorldSim  # noqa: PLC0415
    ops.set_backend("auto")
    device = torch.device(device)
    sim = WorldSim.load(checkpoint, num_sessions=sessions, device=device, seed=0)
    if sim.few_step:
        sim.use_adaptive_steps(tau)
    game = scenes.make_batch(sim.scene or "maze", sessions, width=sim.frame_shape[1], height=sim.frame_shape[0])
    game.reset(10 ** 9 + np.arange(sessions))
    policy = scenes.make_policy(game, "explore", seed=0)
    fr, ac = [], []
    for _ in range(sim.context_frames):
        a = np.asarray(policy(game), np.float32).reshape(sessions, -1)
        game.step(a)
        fr.append(game.render())
        ac.append(a)
    sim.reset(np.stack(fr, 1), np.stack(ac, 1))
    lat, steps = [], []

    def step(record: bool) -> float:
        """One engine frame (the scenes' own step outside the timing); its ms."""
        a = np.asarray(policy(game), np.float32).reshape(sessions, -1)
        game.step(a)
        t0 = time.perf_counter()
        _, rep = sim.step(a)
        ms = (time.perf_counter() - t0) * 1e3
        if record:
            lat.append(ms)
            steps.extend(r["steps"] for r in rep)
        return ms

    for t in range(frames + warmup):
        step(record=t >= warmup)  # after warm-up (graph captures, autotuning)
    lat_np = np.asarray(lat)
    out = {"frames": frames, "sessions": sessions, "tau": tau if sim.few_step else None,
           "p50_ms": float(np.percentile(lat_np, 50)), "p99_ms": float(np.percentile(lat_np, 99)),
           "frames_per_s": float(sessions * 1e3 / np.mean(lat_np)), "mean_steps": float(np.mean(steps)),
           "steps_histogram": np.bincount(steps).tolist()}
    if profile:
        out["profile"] = profile_engine(step, device, frames=profile_frames)
    ops.set_backend("torch")
    return out


def profile_engine(step, device: torch.device, frames: int = 20, top: int = 12) -> dict:
    """Where an engine frame goes, from torch.profiler over `frames` calls of step(record=False),
    which returns the engine's own ms (the frame leaves the device before it returns)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall_ms = sum(step(record=False) for _ in range(frames)) / frames
    events = prof.key_averages()
    device_us = 0.0
    if cuda:  # device-side events: kernels and memcpys/memsets (a graph replay's kernels included)
        for e in events:
            if "CUDA" in str(getattr(e, "device_type", "")):
                device_us += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
    host = [e for e in events if e.self_cpu_time_total > 0]
    host.sort(key=lambda e: -e.self_cpu_time_total)
    return {"frames": frames, "wall_ms_per_frame": wall_ms,
            "device_busy_ms_per_frame": device_us / 1e3 / frames if cuda else None,
            "host_ops": [{"op": e.key[:80], "calls_per_frame": e.count / frames,
                          "self_cpu_ms_per_frame": e.self_cpu_time_total / 1e3 / frames} for e in host[:top]]}


def format_engine(e: dict) -> list[str]:
    who = "one player" if e["sessions"] == 1 else f"{e['sessions']} sessions"
    how = f"adaptive tau {e['tau']}" if e["tau"] is not None else "fixed steps"
    lines = [f"engine, {who}, {how}: frame latency p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, "
             f"{e['frames_per_s']:.0f} frames/s, {e['mean_steps']:.2f} steps/frame over {e['frames']} frames"]
    prof = e.get("profile")
    if prof:
        busy = prof["device_busy_ms_per_frame"]
        lines.append(f"  under the profiler: {prof['wall_ms_per_frame']:.2f} ms per frame"
                     + (f", device busy {busy:.2f} ms of it" if busy is not None else "")
                     + "; host operators by own CPU time per frame:")
        lines += [f"    {r['self_cpu_ms_per_frame']:7.3f} ms  x{r['calls_per_frame']:6.1f}  {r['op']}" for r in prof["host_ops"]]
    return lines


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="world checkpoint (default: the shipped maze model)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64], help="sessions per step")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--k-max", type=int, default=4, help="steps per frame in the frame timing")
    p.add_argument("--reps", type=int, default=100, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first (compiles, captures, autotuning)")
    p.add_argument("--check", action="store_true", help="check the fast paths against eager first")
    p.add_argument("--engine", default=None, metavar="CHECKPOINT", help="also time WorldSim.step for one player")
    p.add_argument("--engine-frames", type=int, default=300)
    p.add_argument("--tau", type=float, default=0.8, help="adaptive threshold for --engine")
    p.add_argument("--engine-sessions", type=int, nargs="+", default=[1], metavar="N",
                   help="sessions per engine step for --engine (e.g. 1 64: one player, then the server's full batch)")
    p.add_argument("--engine-profile", action="store_true",
                   help="with --engine: also profile 20 frames (device busy time against wall time, heaviest host operators)")
    p.add_argument("--profile", nargs="+", default=[], metavar="MODE:B",
                   help="also list the kernels of one step of these (mode, batch) pairs, e.g. triton+graphs:1")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    for item in args.profile:
        mode, _, b = item.partition(":")
        if mode not in MODES or not b.isdigit():
            p.error(f"--profile takes MODE:B with MODE one of {MODES}, got {item!r}")
    if not torch.cuda.is_available():
        sys.exit("error: sim.bench times CUDA execution and needs a GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    model, ae, config, name = load_model(args.checkpoint, device, dtype)
    cfg = model.cfg
    props = torch.cuda.get_device_properties(device)
    print(f"sim.bench: {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, d {cfg.d_model}, "
          f"{cfg.n_layers} layers, {cfg.tokens_per_frame} tokens/frame, window {cfg.window}), bf16, {props.name}, "
          f"torch {torch.__version__}")
    report: dict = {"checkpoint": name, "device": props.name, "torch": torch.__version__, "rows": [], "checks": []}
    if args.check:
        report["checks"] = check(model, ae, device) + check_engine(args.engine or name, device)
        worst = max((e for n, e in report["checks"] if "engine" not in n), default=0.0)
        print(f"check: {len(report['checks'])} comparisons passed (worst relative error {worst:.2e})")
        for n, e in report["checks"]:
            print(f"  {n:<60} {e:.2e}")
    for B in args.batch:
        for mode in args.modes:
            row = {"batch": B, "mode": mode}
            try:
                t0 = time.time()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    st = Setup(mode, model, ae, B, args.k_max)
                    row["step"] = time_fn(st.step, args.warmup, args.reps)
                    row["frame"] = time_fn(st.frame, max(3, args.warmup // 4), max(10, args.reps // 4))
                row["setup_s"] = round(time.time() - t0, 1)
                notes = sorted({str(w.message).splitlines()[0][:90] for w in caught if "cudagraph" in str(w.message).lower()})
                if notes:
                    row["notes"] = notes
            except Exception as e:  # noqa: BLE001 (one mode failing must not lose the others)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            if mode == "compile":
                torch.compiler.reset()
    report["profiles"] = {}
    for item in args.profile:
        mode, _, b = item.partition(":")
        rows = profile_step(Setup(mode, model, ae, int(b), args.k_max))
        report["profiles"][item] = rows
        print(f"profile {item}: kernels of one step, by device time")
        for r in rows:
            print(f"  {r['us_per_step']:8.1f} us  x{r['per_step']:5.1f}  {r['kernel']}")
    ops.set_backend("torch")
    if args.engine:
        report["engines"] = [engine_latency(args.engine, device, args.engine_frames, args.tau, sessions=n,
                                            profile=args.engine_profile) for n in args.engine_sessions]
        report["engine"] = report["engines"][0]
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    by = {(r["batch"], r["mode"]): r for r in report["rows"]}
    batches = sorted({r["batch"] for r in report["rows"]})
    modes = [m for m in MODES if any(k[1] == m for k in by)]
    lines = ["step (one DiT pass) and frame (k_max steps + cache pass + decode), median ms; x = eager / mode, c = compile / mode",
             f"{'B':>3} {'mode':<14} {'step ms':>9} {'x':>6} {'c':>6} {'frame ms':>9} {'x':>6} {'c':>6}"]
    for B in batches:
        base = by.get((B, "eager"), {})
        comp = by.get((B, "compile"), {})
        for m in modes:
            r = by.get((B, m))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"{B:>3} {m:<14} failed: {r['error']}")
                continue

            def ratio(other, what, r=r):
                return f"{other[what]['median_ms'] / r[what]['median_ms']:6.2f}" if what in other else f"{'-':>6}"
            lines.append(f"{B:>3} {m:<14} {r['step']['median_ms']:9.3f} {ratio(base, 'step')} {ratio(comp, 'step')} "
                         f"{r['frame']['median_ms']:9.3f} {ratio(base, 'frame')} {ratio(comp, 'frame')}")
    for e in report.get("engines", []):
        lines += format_engine(e)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
