"""How fast the server serves: env frames/s for N sessions, round trip for one, and its own overhead.

    python -m controls.bench_server --checkpoint runs/maze/teacher/checkpoint --sessions 16 --seconds 10
    python -m controls.bench_server --checkpoint runs/maze/distill/checkpoint --steps adaptive --tau 0.8 \\
        --sessions 64 --processes --json bench.json                  # a distilled student, adaptive steps
    python -m controls.bench_server --tiny --device cpu --seconds 2      # a smoke run with a random tiny model
    python -m controls.bench_server --tiny-student --device cpu --steps adaptive --seconds 2
    python -m controls.bench_server --fake-engine --sessions 64 --multiplexed --batch-wait-ms 50  # the server alone
    python -m controls.bench_server --logic-only --sessions 64   # its Python per request, sockets taken out too
    python -m controls.bench_server --fake-engine --sessions 64 --vector 32   # 2 vector-env clients, step_many

Starts a server on 127.0.0.1 (a subprocess; `--in-process` runs its loop on a thread here),
then two phases, each after a warm-up:
1. one session stepping back to back: frames/s and round-trip latency per frame (p50/p99);
2. N sessions, one client thread each (`--processes`: one process each; `--multiplexed`: one
   process for all, a socket each; `--vector K`: N/K processes of K sessions each, one
   step_many request per round, as the vector env steps), stepping as fast as they can:
   aggregate frames/s, mean batch size, round trip under load.
The server's own overhead is its handling time (socket, msgpack, batching, bookkeeping)
outside the engine, from its `stats`, as a share of engine step time, and per frame. With
the engine on a thread of its own (`--modes overlap split`) that handling overlaps the GPU's
work; what it still costs shows as the engine's idle time between batches, as a share of its
busy time (also reported for the default, inline).
`--fake-engine` serves (in-process) from a stand-in that answers at once with fixed 128x128
frames: what is left is the server's own cost; a long --batch-wait-ms keeps its batches full.
Steps per frame are what the engine reported for each frame (`info["steps"]`): with
adaptive steps, the mean over the phase. The last lines are a table of both phases; `--json FILE` writes all of it.
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


MODES = ("inline", "overlap", "split")  # how the server runs its engine (see --modes)


class BenchError(Exception):
    """Something the user can fix (a bad checkpoint or flag, a server that would not start); one line."""


def free_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def tiny_checkpoint(folder: Path, student: bool = False) -> Path:
    """A randomly initialised tiny maze world at 32x32: fast on a CPU, meaningless frames.

    student: marked as a distilled few-step student (k_max 4), its weights jittered so the
    random confidence head varies from frame to frame and adaptive steps vary with it.
    """
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
    config = {"scene": "maze", "actions": actions, "resolution": [32, 32]}
    if student:
        config["sampler"] = {"kind": "few-step", "k_max": 4, "shift": 3.0, "cache_last_step": False}
        with torch.no_grad():  # zero-initialised output layers would give one confidence for every frame
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    save_world(folder, config, ae, model)
    return folder


class FakeEngine:
    """The engine interface the server's Host uses, answering at once: fixed frames, student-like reports.

    With the model taken out, a bench measures the server alone: sockets, msgpack, batching
    and bookkeeping. Each row's frame is fixed noise (uint8 [H, W, 3], 128x128 by default
    like the distilled students); reports carry what a few-step student's do.
    """

    few_step = False  # no allocator: a latency budget has nothing to cut
    sampler_steps = 4
    context_frames = 4

    def __init__(self, num_sessions: int, resolution: int = 128, scene: str = "maze"):
        import scenes
        self.scene, self.num_sessions = scene, int(num_sessions)
        self.action_dim = len(scenes.game_class(scene).ACTIONS)
        self.frame_shape = (resolution, resolution, 3)
        self.config = {"id": "fake-engine", "scene": scene}
        self._frames = np.random.default_rng(0).integers(0, 256, (self.num_sessions, *self.frame_shape), np.uint8)
        trace = [0.5, 0.7, 0.85, 0.93]
        self._reports = [{"steps": 4, "passes": 5, "latency_ms": 0.0, "confidence": trace[-1],
                          "confidence_trace": trace} for _ in range(self.num_sessions)]

    def warmup(self) -> float:
        return 0.0

    def reset(self, frames, actions, sessions=None, seeds=None) -> None:
        pass

    def step(self, actions, observe=None, sessions=None) -> tuple[np.ndarray, list[dict]]:
        rows = np.arange(self.num_sessions) if sessions is None else np.asarray(sessions)
        return self._frames[rows], self._reports[:len(rows)]  # a fresh array of each row's frame, as an engine's

    def snapshot(self, session: int) -> dict:
        return {}

    def restore(self, session: int, snap: dict) -> None:
        pass


def logic_only(sessions: int, batches: int = 1500, resolution: int = 128, vector: int = 0,
               obs_part: bool = True, info_columns: bool = True) -> dict:
    """The server's own Python per request with the sockets taken out (`--logic-only`).

    A Server over a FakeEngine; each round hands `sessions` packed step requests straight to
    the loop's handler (asking whether the batch is due after each, as the loop does), runs the
    full batch and builds, packs and drops its replies. Medians over rounds after the first 100:
    what is left for zmq (recv, send) and the engine is outside these figures. vector K: the
    sessions belong to sessions / K clients, each sending one step_many for its K per round
    (obs_part: its frames as a message part of their own, as SimVectorEnv asks from protocol 3;
    info_columns: its infos as one map of lists, as it asks from protocol 4).
    """
    import msgpack
    from controls.server import Host, Server, ServerConfig

    class Dropped:  # stands in for the ROUTER socket: every reply is packed, then dropped
        def send(self, *args, **kwargs) -> None:
            pass

    config = ServerConfig(bind="tcp://127.0.0.1:*", max_sessions=sessions, batch_wait_ms=60_000)
    server = Server(Host(FakeEngine(sessions, resolution=resolution), config), config)
    socket, server.socket = server.socket, Dropped()
    try:
        per = vector or 1
        owners = [b"client-%04d" % i for i in range(sessions // per)]
        for i, owner in enumerate(owners):
            for j in range(per):
                server._on_message([owner, msgpack.packb({"op": "reset", "id": 0, "seed": i * per + j})],
                                   time.perf_counter())
        action = [0, 1, 0, 0, 1, 0]
        if vector:
            steps = [[o, msgpack.packb({"op": "step_many", "id": 1, "sessions": list(server.host._owned[o]),
                                        "actions": [action] * per, "obs_part": obs_part,
                                        "info_columns": info_columns})] for o in owners]
        else:
            steps = [[o, msgpack.packb({"op": "step", "id": 1, "session": next(iter(server.host._owned[o])),
                                        "action": action})] for o in owners]
        receive, run = [], []
        for _ in range(batches + 100):
            t0 = time.perf_counter()
            for message in steps:
                server._on_message(message, time.perf_counter())
                server._batch_due(time.perf_counter())
            t1 = time.perf_counter()
            gathered = sum(len(p.tickets) for p in server.batch)
            if gathered != sessions:
                raise RuntimeError(f"a round gathered {gathered} of {sessions} steps")
            server._run_batch()
            receive.append(t1 - t0)
            run.append(time.perf_counter() - t1)
    finally:
        server.socket = socket
        server._release()
    rx, tx = float(np.median(receive[100:])), float(np.median(run[100:]))
    result = {"sessions": sessions, "vector": vector, "obs_part": bool(vector and obs_part),
              "info_columns": bool(vector and info_columns), "batches": batches, "frame_shape": [resolution, resolution, 3],
              "receive_ms_per_batch": 1e3 * rx, "receive_us_per_request": 1e6 * rx / sessions,
              "run_and_replies_ms_per_batch": 1e3 * tx, "run_and_replies_us_per_request": 1e6 * tx / sessions}
    how = (f"step_many of {vector} from each of {sessions // vector} clients, frames "
           f"{'as a message part' if obs_part else 'inside the body'}, infos "
           f"{'as columns' if info_columns else 'one map per session'}" if vector else "one step per client")
    print(f"dsa-sim server logic, sockets taken out, {sessions} sessions ({how}), {resolution}x{resolution} frames, "
          f"median of {batches} batches: receiving + checks + batching {result['receive_ms_per_batch']:.3f} ms "
          f"per batch ({result['receive_us_per_request']:.1f} us per step); fake engine + reply bodies + "
          f"packing {result['run_and_replies_ms_per_batch']:.3f} ms ({result['run_and_replies_us_per_request']:.1f} "
          "us per step)")
    return result


class ServerUnderTest:
    """A server on a free 127.0.0.1 port: a subprocess, or a thread of this process."""

    def __init__(self, args, checkpoint: Path, sessions: int, mode: str = "inline", engine=None):
        self.endpoint = free_endpoint()
        self.proc = self.thread = self.steps_text = None
        self.engine = engine  # given: a mode after the first, on the same engine (graphs already captured)
        overlap, split = mode != "inline", args.split_batches_at if mode == "split" else 0
        if args.in_process or args.fake_engine:
            from controls.server import Host, Server, ServerConfig, configure_steps
            config = ServerConfig(bind=self.endpoint, max_sessions=sessions, batch_wait_ms=args.batch_wait_ms,
                                  overlap=overlap, split_batches_at=split)
            if engine is None and args.fake_engine:
                self.engine = FakeEngine(sessions)
                self.steps_text = "a fake engine (no model)"
            elif engine is None:
                from sim.engine import WorldSim
                self.engine = WorldSim.load(checkpoint, num_sessions=sessions, device=args.device)
                self.steps_text = configure_steps(self.engine, args.steps, args.tau)  # ValueError: the user's to fix
                self.engine.warmup()
            self.server = Server(Host(self.engine, config), config)
            self.thread = threading.Thread(target=self.server.serve, daemon=True)
            self.thread.start()
        else:
            cmd = [sys.executable, "-m", "controls.server", "--checkpoint", str(checkpoint), "--bind", self.endpoint,
                   "--max-sessions", str(sessions), "--batch-wait-ms", str(args.batch_wait_ms)]
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--overlap"] if overlap else []
            cmd += ["--split-batches-at", str(split)]
            cmd += ["--steps", str(args.steps)] if args.steps is not None else []
            cmd += ["--tau", str(args.tau)] if args.tau is not None else []
            cmd += [] if args.gc_freeze else ["--no-gc-freeze"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            threading.Thread(target=self._echo, daemon=True).start()
        self.spec = self._wait_for_spec(args.start_timeout)

    def _echo(self) -> None:
        """The server's output, passed on; its start line says how it spends steps."""
        for line in self.proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("dsa-sim server: scene"):  # "..., 64 sessions, <steps>, protocol 1"
                self.steps_text = line.rsplit(", protocol", 1)[0].split(" sessions, ", 1)[-1]

    def _wait_for_spec(self, timeout_s: float) -> dict:
        """The server's spec once it answers; a subprocess that exits first is reported, not waited for."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"the server exited (status {self.proc.returncode}) before it answered; "
                                 "its message is above")
            try:
                with Client(self.endpoint, timeout_s=min(0.5, max(deadline - time.monotonic(), 0.1))) as c:
                    return c.spec()
            except ServerGone:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"the server did not answer within {timeout_s:g} s; "
                                     "raise --start-timeout if it loads slowly") from None

    def stop(self) -> None:
        if self.thread is not None:
            self.server.stop()
            self.thread.join()
        elif self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def drive(endpoint: str, seed: int, warmup_s: float, seconds: float, ready, start, out) -> None:
    """One client, one session: warm up, wait for the others, step flat out for `seconds`.

    ready/start: barriers shared with the other clients and the main thread; out: a queue
    that gets (seed, {"round_trips": [s], "steps": {steps: frames}}), or (seed, None) when
    this client failed.
    """
    result = None
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
            times, steps = [], {}
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                info = c.step(rng.integers(0, 2, A), session)[4]
                times.append(time.perf_counter() - t0)
                steps[info["steps"]] = steps.get(info["steps"], 0) + 1
            result = {"round_trips": times, "steps": steps}
            c.close_session(session)
    except BaseException:
        ready.abort()  # the others and the main thread stop waiting for this client
        start.abort()
        raise
    finally:
        out.put((seed, result))


def drive_vector(endpoint: str, first: int, k: int, warmup_s: float, seconds: float, ready, start, out,
                 obs_part: bool = True, info_columns: bool = True) -> None:
    """One client, `k` sessions, all stepped by one step_many request per round, as the vector env
    does: each frame's round trip is its request's. Results go to `out` as from `drive`, one
    per session, numbered first..first+k-1."""
    results = None
    try:
        with Client(endpoint, timeout_s=120) as c:
            sessions = [c.reset(seed=first + i)[0] for i in range(k)]
            rng = np.random.default_rng(first)
            A = c.spec()["action_space"]["n"]
            t_end = time.perf_counter() + warmup_s
            while time.perf_counter() < t_end:
                c.step_many(rng.integers(0, 2, (k, A)), sessions, obs_part, info_columns)
            ready.wait()
            start.wait()  # the main thread reads the server's stats in between
            results = [{"round_trips": [], "steps": {}} for _ in range(k)]
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                infos = c.step_many(rng.integers(0, 2, (k, A)), sessions, obs_part, info_columns)[4]
                took = time.perf_counter() - t0
                steps = infos["steps"] if info_columns else [info["steps"] for info in infos]
                for r, n in zip(results, steps):
                    r["round_trips"].append(took)
                    r["steps"][n] = r["steps"].get(n, 0) + 1
            c.request("close")
    except BaseException:
        ready.abort()
        start.abort()
        raise
    finally:
        for i in range(k):
            out.put((first + i, None if results is None else results[i]))


def drive_many(endpoint: str, sessions: int, warmup_s: float, seconds: float, ready, start, out) -> None:
    """`sessions` clients in one process: one DEALER socket (so one identity) and one session each.

    Every socket sends its next step as soon as its reply is in, as each `drive` client does,
    so the server sees the traffic of `sessions` client processes; but the load is one
    process, which leaves the server a core of its own on a small machine. Results go to
    `out` as from `drive`, one per session, numbered 0..sessions-1.
    """
    import zmq
    from controls.protocol import pack, unpack_reply
    context = zmq.Context()
    sockets = [context.socket(zmq.DEALER) for _ in range(sessions)]
    index = {sock: i for i, sock in enumerate(sockets)}
    poller = zmq.Poller()
    tokens: list[str] = []
    sent = [0.0] * sessions
    rng = np.random.default_rng(0)
    results = None

    def no_reply() -> ServerGone:
        return ServerGone(f"no reply from the server at {endpoint} within 120 s")

    def receive(sock) -> dict:
        if not sock.poll(120_000):
            raise no_reply()
        return unpack_reply(sock.recv())

    def ask(i: int, message: dict) -> dict:
        sockets[i].send(pack(message))
        return receive(sockets[i])

    def step(i: int) -> None:
        sent[i] = time.perf_counter()
        sockets[i].send(pack({"op": "step", "id": 1, "session": tokens[i], "action": rng.integers(0, 2, A).tolist()}))

    def step_all_for(duration_s: float) -> list[dict]:
        """Every session stepping back to back for `duration_s`: per session its round trips and steps."""
        stats = [{"round_trips": [], "steps": {}} for _ in sockets]
        for i in range(sessions):
            step(i)
        t_end, stepping = time.perf_counter() + duration_s, sessions
        while stepping:
            answered = poller.poll(120_000)
            if not answered:
                raise no_reply()
            for sock, _ in answered:
                i = index[sock]
                info = unpack_reply(sock.recv())["info"]
                now = time.perf_counter()
                stats[i]["round_trips"].append(now - sent[i])
                stats[i]["steps"][info["steps"]] = stats[i]["steps"].get(info["steps"], 0) + 1
                if now < t_end:
                    step(i)
                else:
                    stepping -= 1
        return stats

    try:
        for sock in sockets:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            poller.register(sock, zmq.POLLIN)
        tokens = [ask(i, {"op": "reset", "id": 0, "seed": i})["session"] for i in range(sessions)]
        A = ask(0, {"op": "spec", "id": 0})["action_space"]["n"]
        step_all_for(warmup_s)
        ready.wait()
        start.wait()  # the main thread reads the server's stats in between
        results = step_all_for(seconds)
        for i in range(sessions):
            ask(i, {"op": "close", "id": 2, "session": tokens[i]})
    except BaseException:
        ready.abort()  # the main thread stops waiting
        start.abort()
        raise
    finally:
        for i in range(sessions):
            out.put((i, None if results is None else results[i]))
        context.destroy(linger=0)


def phase(endpoint: str, sessions: int, warmup_s: float, seconds: float, clients: str = "threads",
          vector: int = 0, obs_part: bool = True, info_columns: bool = True) -> dict:
    """`sessions` clients stepping at once: threads of this process, one process each, or one process for all;
    or (vector K) sessions / K client processes of K sessions each, stepping them by step_many."""
    if vector and sessions > 1:
        if sessions % vector:
            raise BenchError(f"--vector {vector} must divide --sessions {sessions}")
        n = sessions // vector
        mp = multiprocessing.get_context("spawn")
        ready, start, out = mp.Barrier(n + 1), mp.Barrier(n + 1), mp.Queue()
        workers = [mp.Process(target=drive_vector, args=(endpoint, i * vector, vector, warmup_s, seconds, ready, start,
                                                         out, obs_part, info_columns), daemon=True)
                   for i in range(n)]
    elif clients == "multiplexed":
        mp = multiprocessing.get_context("spawn")
        ready, start, out = mp.Barrier(2), mp.Barrier(2), mp.Queue()
        workers = [mp.Process(target=drive_many, args=(endpoint, sessions, warmup_s, seconds, ready, start, out),
                              daemon=True)]
    elif clients == "processes":  # client-side msgpack and copies then never share one interpreter lock
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
        results = dict(out.get(timeout=seconds + 300) for _ in range(sessions))
        elapsed = time.perf_counter() - t0
        after = c.stats()
    for w in workers:
        w.join(timeout=30)
    failed = [seed for seed, r in results.items() if r is None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {sessions} clients failed; see the errors above")
    delta = {k: after[k] - before[k] for k in ("frames", "batches", "engine_step_s", "overhead_s", "busy_s",
                                                "bodies_s", "replies_s", "drain_s", "gc_s", "gc_runs")}
    per_batch = 1e3 / max(delta["batches"], 1)
    rt = np.concatenate([np.asarray(r["round_trips"]) for r in results.values()]) * 1e3
    frames = len(rt)
    histogram: dict[int, int] = {}
    for r in results.values():
        for k, n in r["steps"].items():
            histogram[int(k)] = histogram.get(int(k), 0) + n
    return {"sessions": sessions, "seconds": elapsed, "frames": frames, "frames_per_s": frames / elapsed,
            "latency_ms_p50": float(np.percentile(rt, 50)), "latency_ms_p99": float(np.percentile(rt, 99)),
            "mean_batch_size": delta["frames"] / max(delta["batches"], 1),
            "mean_steps": sum(k * n for k, n in histogram.items()) / max(frames, 1),
            "steps_histogram": {str(k): histogram[k] for k in sorted(histogram)},
            "engine_ms_per_batch": per_batch * delta["engine_step_s"],
            "overhead_ms_per_batch": per_batch * delta["overhead_s"],
            "overhead_us_per_frame": 1e6 * delta["overhead_s"] / max(delta["frames"], 1),
            "overhead_share": delta["overhead_s"] / max(delta["engine_step_s"], 1e-9),
            # the overhead in four parts, ms per batch: reply bodies (info, recording), packing and
            # sending the replies, receiving the requests (unpacking, checks, queueing), and the rest
            # (starting a batch, the loop's own turns, housekeeping)
            "overhead_parts_ms_per_batch": {
                "bodies": per_batch * delta["bodies_s"], "replies": per_batch * delta["replies_s"],
                "receiving": per_batch * delta["drain_s"],
                "rest": per_batch * max(0.0, delta["overhead_s"] - delta["bodies_s"] - delta["replies_s"]
                                        - delta["drain_s"])},
            # the garbage collector's pauses, wherever they fell (engine time included)
            "gc_ms_per_batch": per_batch * delta["gc_s"], "gc_runs": delta["gc_runs"],
            "server_busy_share": delta["busy_s"] / elapsed,
            # with the engine on its own thread the handling above runs while the GPU works: what it
            # still costs is the time the engine sits idle between batches, against its busy time
            "engine_busy_share": delta["engine_step_s"] / elapsed,
            "engine_idle_share": max(0.0, elapsed - delta["engine_step_s"]) / max(delta["engine_step_s"], 1e-9)}


def table(phases: list[dict]) -> str:
    """The closing table: one row per phase."""
    mode = (lambda r: f"{r.get('mode', 'mode'):>8}  ") if any("mode" in r for r in phases) else (lambda r: "")
    head = (f"{mode({})}{'sessions':>8}  {'frames/s':>9}  {'mean batch':>10}  {'steps/frame':>11}  "
            f"{'round trip p50 ms':>17}  {'p99 ms':>7}  {'server overhead % of engine':>27}  "
            f"{'engine idle % of busy':>21}")
    rows = [f"{mode(r)}{r['sessions']:>8d}  {r['frames_per_s']:>9.1f}  {r['mean_batch_size']:>10.1f}  "
            f"{r['mean_steps']:>11.2f}  "
            f"{r['latency_ms_p50']:>17.2f}  {r['latency_ms_p99']:>7.2f}  {100 * r['overhead_share']:>27.1f}  "
            f"{100 * r['engine_idle_share']:>21.1f}"
            for r in phases]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> dict:
    from controls.server import ServerConfig, steps_arg
    p = argparse.ArgumentParser(prog="python -m controls.bench_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="world checkpoint (default: the shipped maze model, else --tiny)")
    p.add_argument("--tiny", action="store_true", help="a random tiny 32x32 model: measures the server, not the model")
    p.add_argument("--tiny-student", action="store_true",
                   help="the same, marked as a distilled few-step student (k_max 4): for --steps adaptive")
    p.add_argument("--fake-engine", action="store_true",
                   help="serve (in-process) from a stand-in engine that answers at once: the server's own cost")
    p.add_argument("--logic-only", action="store_true",
                   help="no sockets and no clients: the fake engine, requests handed to the server's handlers "
                        "directly, replies packed and dropped (the server's own Python per request)")
    p.add_argument("--device", default=None, help="the server's device (default: CUDA if present)")
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of stepping before each phase is timed")
    p.add_argument("--steps", "--sampler-steps", dest="steps", type=steps_arg, default=None, metavar="N|adaptive",
                   help="the server's steps per frame: N fixed, or 'adaptive' (distilled students only); "
                        "default: the checkpoint's own")
    p.add_argument("--tau", type=float, default=None, help="confidence threshold of adaptive steps, in [0, 1]")
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--modes", nargs="+", choices=MODES, default=["inline"],
                   help="how the server runs its engine, one run each (in-process: on one engine): inline (on "
                        "the loop's thread, the server's default), overlap (its own thread, --overlap), split (its "
                        "own thread, and with --split-batches-at sessions or more, half of them per batch)")
    split_at = ServerConfig.split_batches_at
    p.add_argument("--split-batches-at", type=int, default=split_at, metavar="N",
                   help=f"the server's --split-batches-at in mode split (default {split_at})")
    p.add_argument("--in-process", action="store_true", help="serve from a thread of this process")
    p.add_argument("--processes", action="store_true", help="one client process per session (default: threads)")
    p.add_argument("--multiplexed", action="store_true",
                   help="every session's client (one socket each) in one process: leaves the server a core of "
                        "its own on a small machine")
    p.add_argument("--vector", type=int, default=0, metavar="K",
                   help="the N sessions as N/K client processes of K sessions each, every round one step_many "
                        "request per client (as SimVectorEnv steps); with --logic-only, step_many requests of K")
    p.add_argument("--inline-frames", action="store_true",
                   help="with --vector: step_many's frames inside the msgpack reply (protocol 2's way), not as a "
                        "message part of their own (obs_part, protocol 3): the comparison")
    p.add_argument("--info-rows", action="store_true",
                   help="with --vector: step_many's infos as one map per session (protocol 3's way), not as one map "
                        "of lists (info_columns, protocol 4): the comparison")
    p.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                   help="the server subprocess leaves its start-up objects to the garbage collector (its --no-gc-freeze)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for the server to answer")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if sum([args.tiny, args.tiny_student, args.fake_engine]) > 1:
        p.error("--tiny, --tiny-student and --fake-engine are different engines: pick one")
    if args.fake_engine and (args.checkpoint or args.steps is not None or args.tau is not None):
        p.error("--fake-engine serves no model: drop --checkpoint, --steps and --tau")
    if args.processes and args.multiplexed:
        p.error("--processes and --multiplexed are two ways to run the clients: pick one")
    if (args.inline_frames or args.info_rows) and not args.vector:
        p.error("--inline-frames and --info-rows are settings of step_many's replies: add --vector K")
    if args.vector and (args.processes or args.multiplexed):
        p.error("--vector runs its own client processes: drop --processes and --multiplexed")
    if args.vector < 0 or (args.vector and args.sessions % args.vector):
        p.error(f"--vector K must divide --sessions {args.sessions}")
    clients = (f"vector of {args.vector}" if args.vector else "multiplexed" if args.multiplexed
               else "processes" if args.processes else "threads")
    clients += ", frames inline" if args.inline_frames else ""
    clients += ", infos one map per session" if args.info_rows else ""
    if args.sessions < 1 or args.seconds <= 0:
        p.error("--sessions must be >= 1 and --seconds > 0")
    if args.logic_only:
        if args.checkpoint or args.tiny or args.tiny_student or args.steps is not None or args.tau is not None:
            p.error("--logic-only runs the fake engine: drop --checkpoint, --tiny, --steps and --tau")
        result = logic_only(args.sessions, vector=args.vector, obs_part=not args.inline_frames,
                            info_columns=not args.info_rows)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return result

    from sim.bundle import shipped_checkpoint
    tmp = None
    tiny = args.tiny or args.tiny_student
    checkpoint = None if tiny or args.fake_engine else (args.checkpoint or shipped_checkpoint("maze"))
    if args.fake_engine:
        checkpoint = "fake-engine"
    elif checkpoint is None:
        tmp = tempfile.TemporaryDirectory()
        kind = "student" if args.tiny_student else "model"
        checkpoint = tiny_checkpoint(Path(tmp.name) / f"tiny-maze-{kind}", student=args.tiny_student)
        print(f"bench_server: {'' if tiny else 'no checkpoint given or shipped: '}a random tiny {kind} at 32x32")
    results = []
    try:
        engine = None
        for mode in args.modes:
            try:
                server = ServerUnderTest(args, Path(checkpoint), args.sessions, mode, engine)
            except (BenchError, ValueError) as e:  # a bad checkpoint or flag, said in one line
                print(f"bench_server: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            engine = server.engine
            if results:
                server.steps_text = results[0]["steps_text"]
            try:
                one = phase(server.endpoint, 1, args.warmup, args.seconds)
                many = phase(server.endpoint, args.sessions, args.warmup, args.seconds, clients, args.vector,
                             not args.inline_frames, not args.info_rows)
            except ServerGone as e:
                print(f"bench_server: {e}", file=sys.stderr)
                raise
            finally:
                server.stop()
            results.append(report(args, checkpoint, clients, mode, server, one, many))
    finally:
        if tmp is not None:
            tmp.cleanup()
    if len(results) > 1:
        print("modes side by side (one engine):")
        print(table([r["phases"][1] | {"mode": r["mode"]} for r in results] +
                    [r["phases"][0] | {"mode": r["mode"]} for r in results]))
    if len(results) == 1:
        result = results[0]
    else:
        result = {"modes": results, **{k: results[0][k] for k in ("checkpoint", "scene", "date")}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def report(args, checkpoint, clients: str, mode: str, server: "ServerUnderTest", one: dict, many: dict) -> dict:
    """One mode's results as a dict, and its lines printed (ending in the table of both phases)."""
    spec = server.spec
    steps = server.steps_text or f"at most {spec['sampler_steps']} steps per frame"
    result = {"checkpoint": str(checkpoint), "scene": spec["scene"], "frame_shape": spec["frame_shape"],
              "sampler_steps": spec["sampler_steps"], "steps": args.steps, "tau": args.tau, "steps_text": steps,
              "device": args.device or "auto",
              "server": "in-process thread" if args.in_process or args.fake_engine else "subprocess",
              "batch_wait_ms": args.batch_wait_ms, "mode": mode, "overlap": mode != "inline",
              "split_batches_at": args.split_batches_at if mode == "split" else 0,
              "clients": clients,
              "sessions": args.sessions, "frames_per_s": many["frames_per_s"], "frames_per_s_1": one["frames_per_s"],
              "latency_ms_p50": one["latency_ms_p50"], "latency_ms_p99": one["latency_ms_p99"],
              "latency_ms_p50_loaded": many["latency_ms_p50"], "latency_ms_p99_loaded": many["latency_ms_p99"],
              "mean_batch_size": many["mean_batch_size"], "mean_steps": many["mean_steps"],
              "mean_steps_1": one["mean_steps"], "engine_ms_per_batch": many["engine_ms_per_batch"],
              "overhead_ms_per_batch": many["overhead_ms_per_batch"], "overhead_share": many["overhead_share"],
              "overhead_share_1": one["overhead_share"], "phases": [one, many], "date": time.strftime("%Y-%m-%d")}
    H, W, _ = spec["frame_shape"]
    print(f"dsa-sim server bench: scene {spec['scene']} {H}x{W}, {steps}, device {result['device']}, "
          f"server {result['server']} ({mode}), clients {result['clients']}, batch wait {args.batch_wait_ms:g} ms, "
          f"{args.seconds:g} s per phase")
    print(f"  {args.sessions} sessions: engine {many['engine_ms_per_batch']:.2f} ms/batch, server overhead "
          f"{many['overhead_ms_per_batch']:.2f} ms/batch ({many['overhead_us_per_frame']:.1f} us per frame), "
          f"steps per frame {many['steps_histogram']}")
    parts = many["overhead_parts_ms_per_batch"]
    print(f"  overhead per batch: reply bodies {parts['bodies']:.2f} ms, packing + sending replies "
          f"{parts['replies']:.2f} ms, receiving requests {parts['receiving']:.2f} ms, the rest {parts['rest']:.2f} ms "
          f"(garbage collection {many['gc_ms_per_batch']:.3f} ms/batch over {many['gc_runs']} runs, anywhere); "
          f"server busy {100 * many['server_busy_share']:.1f}% of the phase, engine busy "
          f"{100 * many['engine_busy_share']:.1f}%")
    print(table([one, many]))
    return result


if __name__ == "__main__":
    main()
