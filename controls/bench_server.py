"""How fast the server serves: env frames/s for N sessions, round trip for one, and its own overhead.

    python -m controls.bench_server --checkpoint runs/maze/teacher/checkpoint --sessions 16 --seconds 10
    python -m controls.bench_server --tiny --device cpu --seconds 2      # a smoke run with a random tiny model

Starts a server on 127.0.0.1 (a subprocess; `--in-process` runs its loop on a thread here),
then two phases, each after a warm-up:
1. one session stepping back to back: frames/s and round-trip latency per frame (p50/p99);
2. N sessions, one client thread each (`--processes`: one process each), stepping as fast
   as they can: aggregate frames/s, mean batch size, round trip under load.
The server's own overhead is its handling time (socket, msgpack, batching, bookkeeping)
outside the engine, from its `stats`, as a share of engine step time.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from controls.client import Client, ServerGone


def free_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def tiny_checkpoint(folder: Path) -> Path:
    """A randomly initialised tiny maze world at 32x32: fast on a CPU, meaningless frames."""
    import torch
    from sim.autoencoder import Autoencoder, AutoencoderConfig
    from sim.bundle import save_world
    from sim.model import ModelConfig, WorldModel
    import scenes
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.from_name("tiny"))
    actions = list(scenes.game_class("maze").ACTIONS)
    model = WorldModel(ModelConfig.from_name("tiny", action_dim=len(actions),
                                             latent_channels=ae.config.latent_channels, latent_h=4, latent_w=4))
    save_world(folder, {"scene": "maze", "actions": actions, "resolution": [32, 32]}, ae, model)
    return folder


class ServerUnderTest:
    """A server on a free 127.0.0.1 port: a subprocess, or a thread of this process."""

    def __init__(self, args, checkpoint: Path, sessions: int):
        self.endpoint = free_endpoint()
        self.proc = self.thread = None
        if args.in_process:
            from controls.server import Host, Server, ServerConfig
            from sim.engine import WorldSim
            config = ServerConfig(bind=self.endpoint, max_sessions=sessions, batch_wait_ms=args.batch_wait_ms)
            engine = WorldSim.load(checkpoint, num_sessions=sessions, device=args.device)
            if args.sampler_steps:
                engine.sampler_steps = args.sampler_steps
            self.server = Server(Host(engine, config), config)
            self.thread = threading.Thread(target=self.server.serve, daemon=True)
            self.thread.start()
        else:
            cmd = [sys.executable, "-m", "controls.server", "--checkpoint", str(checkpoint), "--bind", self.endpoint,
                   "--max-sessions", str(sessions), "--batch-wait-ms", str(args.batch_wait_ms)]
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--sampler-steps", str(args.sampler_steps)] if args.sampler_steps else []
            self.proc = subprocess.Popen(cmd)
        with Client(self.endpoint, timeout_s=args.start_timeout) as c:
            self.spec = c.spec()

    def stop(self) -> None:
        if self.thread is not None:
            self.server.stop()
            self.thread.join()
        else:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def drive(endpoint: str, seed: int, warmup_s: float, seconds: float, ready, start, out) -> None:
    """One client, one session: warm up, wait for the others, step flat out for `seconds`.

    ready/start: barriers shared with the other clients and the main thread; out: a queue
    that gets (seed, round trips in s), or (seed, None) when this client failed.
    """
    round_trips = None
    try:
        with Client(endpoint, timeout_s=120) as c:
            session, _, _ = c.reset(seed=seed)
            rng = np.random.default_rng(seed)
            A = c.spec()["action_space"]["n"]
            t_end = time.perf_counter() + warmup_s
            while time.perf_counter() < t_end:
                c.step(rng.integers(0, 2, A), session)
            ready.wait()
            start.wait()  # the main thread reads the server's stats in between
            times = []
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                c.step(rng.integers(0, 2, A), session)
                times.append(time.perf_counter() - t0)
            round_trips = times
            c.close_session(session)
    except BaseException:
        ready.abort()  # the others and the main thread stop waiting for this client
        start.abort()
        raise
    finally:
        out.put((seed, round_trips))


def phase(endpoint: str, sessions: int, warmup_s: float, seconds: float, processes: bool = False) -> dict:
    """`sessions` clients stepping at once: threads of this process, or one process each."""
    if processes:  # client-side msgpack and copies then never share one interpreter lock
        mp = multiprocessing.get_context("spawn")
        ready, start, out = mp.Barrier(sessions + 1), mp.Barrier(sessions + 1), mp.Queue()
        workers = [mp.Process(target=drive, args=(endpoint, i, warmup_s, seconds, ready, start, out), daemon=True)
                   for i in range(sessions)]
    else:
        ready, start, out = threading.Barrier(sessions + 1), threading.Barrier(sessions + 1), queue.Queue()
        workers = [threading.Thread(target=drive, args=(endpoint, i, warmup_s, seconds, ready, start, out), daemon=True)
                   for i in range(sessions)]
    for w in workers:
        w.start()
    with Client(endpoint, timeout_s=120) as c:
        ready.wait(timeout=300)
        before = c.stats()
        start.wait(timeout=300)
        t0 = time.perf_counter()
        results = dict(out.get(timeout=seconds + 300) for _ in workers)
        elapsed = time.perf_counter() - t0
        after = c.stats()
    for w in workers:
        w.join(timeout=30)
    failed = [seed for seed, rt in results.items() if rt is None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {sessions} clients failed; see the errors above")
    delta = {k: after[k] - before[k] for k in ("frames", "batches", "engine_step_s", "overhead_s", "busy_s")}
    rt = np.concatenate([np.asarray(v) for v in results.values()]) * 1e3
    frames = int(sum(len(v) for v in results.values()))
    return {"sessions": sessions, "seconds": elapsed, "frames": frames, "frames_per_s": frames / elapsed,
            "latency_ms_p50": float(np.percentile(rt, 50)), "latency_ms_p99": float(np.percentile(rt, 99)),
            "mean_batch_size": delta["frames"] / max(delta["batches"], 1),
            "engine_ms_per_batch": 1e3 * delta["engine_step_s"] / max(delta["batches"], 1),
            "overhead_ms_per_batch": 1e3 * delta["overhead_s"] / max(delta["batches"], 1),
            "overhead_share": delta["overhead_s"] / max(delta["engine_step_s"], 1e-9),
            "server_busy_share": delta["busy_s"] / elapsed}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m controls.bench_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="world checkpoint (default: the shipped maze model, else --tiny)")
    p.add_argument("--tiny", action="store_true", help="a random tiny 32x32 model: measures the server, not the model")
    p.add_argument("--device", default=None, help="the server's device (default: CUDA if present)")
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of stepping before each phase is timed")
    p.add_argument("--sampler-steps", type=int, default=None)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--in-process", action="store_true", help="serve from a thread of this process")
    p.add_argument("--processes", action="store_true", help="one client process per session (default: threads)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for the server to answer")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    from sim.bundle import shipped_checkpoint
    tmp = None
    checkpoint = None if args.tiny else (args.checkpoint or shipped_checkpoint("maze"))
    if checkpoint is None:
        tmp = tempfile.TemporaryDirectory()
        checkpoint = tiny_checkpoint(Path(tmp.name) / "tiny-maze")
        print(f"bench_server: no checkpoint given{'' if args.tiny else ' or shipped'}: a random tiny model at 32x32")
    server = ServerUnderTest(args, Path(checkpoint), args.sessions)
    try:
        one = phase(server.endpoint, 1, args.warmup, args.seconds)
        many = phase(server.endpoint, args.sessions, args.warmup, args.seconds, args.processes)
    except ServerGone as e:
        print(f"bench_server: {e}", file=sys.stderr)
        raise
    finally:
        server.stop()
        if tmp is not None:
            tmp.cleanup()
    spec = server.spec
    result = {"checkpoint": str(checkpoint), "scene": spec["scene"], "frame_shape": spec["frame_shape"],
              "sampler_steps": spec["sampler_steps"], "device": args.device or "auto",
              "server": "in-process thread" if args.in_process else "subprocess", "batch_wait_ms": args.batch_wait_ms,
              "clients": "processes" if args.processes else "threads",
              "sessions": args.sessions, "frames_per_s": many["frames_per_s"], "frames_per_s_1": one["frames_per_s"],
              "latency_ms_p50": one["latency_ms_p50"], "latency_ms_p99": one["latency_ms_p99"],
              "latency_ms_p50_loaded": many["latency_ms_p50"], "latency_ms_p99_loaded": many["latency_ms_p99"],
              "mean_batch_size": many["mean_batch_size"], "engine_ms_per_batch": many["engine_ms_per_batch"],
              "overhead_ms_per_batch": many["overhead_ms_per_batch"], "overhead_share": many["overhead_share"],
              "overhead_share_1": one["overhead_share"], "date": time.strftime("%Y-%m-%d")}
    H, W, _ = spec["frame_shape"]
    print(f"dsa-sim server bench: scene {spec['scene']} {H}x{W}, {spec['sampler_steps']} steps/frame, "
          f"device {result['device']}, server {result['server']}, client {result['clients']}, "
          f"batch wait {args.batch_wait_ms:g} ms")
    print(f"  1 session : {one['frames_per_s']:8.1f} frames/s, round trip p50 {one['latency_ms_p50']:.2f} ms, "
          f"p99 {one['latency_ms_p99']:.2f} ms, server overhead {100 * one['overhead_share']:.1f}% of engine time")
    print(f"  {args.sessions:2d} sessions: {many['frames_per_s']:8.1f} frames/s, round trip p50 "
          f"{many['latency_ms_p50']:.2f} ms, p99 {many['latency_ms_p99']:.2f} ms, mean batch "
          f"{many['mean_batch_size']:.1f}, engine {many['engine_ms_per_batch']:.2f} ms/batch, server overhead "
          f"{many['overhead_ms_per_batch']:.2f} ms/batch = {100 * many['overhead_share']:.1f}% of engine time")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
