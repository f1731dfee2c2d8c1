"""A batched multi-session server: many agents drive one engine over ZeroMQ.

    python -m controls.server --checkpoint runs/maze/teacher/checkpoint --bind tcp://127.0.0.1:5555

Two layers. `Host` is the engine side: it owns one WorldSim with `max_sessions` rows, maps
sessions to free rows, prompts a session from the real scene, steps many sessions in one
batched engine call, keeps snapshots and recordings; it knows nothing of sockets, so the
in-process env (`controls.client.SimEnv(checkpoint=...)`) runs the very same code. `Server`
is the socket side: one ROUTER socket and a poll loop that unpacks requests under limits,
keeps one reply per request in order per client, and gathers pending steps into one batch
until every live session has one pending or the bounded wait (`--batch-wait-ms`, or a
session's tighter latency budget) runs out.

By default the loop steps the engine itself, one batch at a time. With `--overlap` the engine
steps a batch on a thread of its own (`EngineThread`) while the loop goes on with the sockets:
the loop hands it a batch, handles what arrives meanwhile, and hears through an inproc socket
when the frames are ready. The engine thread calls `Host.step_engine` and
nothing else; every other piece of state (sessions, replies, recordings) is the loop's alone,
and requests that use the engine (reset, snapshot, restore) wait until no batch is on it.
With many sessions stepping (`--split-batches-at`), a batch takes half of them: the GPU
steps one half while the loop sends the other half's replies and gathers its next requests,
so neither waits for the other. Measured on an H200 with 64 sessions (BENCHMARKS.md) the split
served fewer frames/s than the inline loop (the engine's host code then competes with the loop
for the interpreter lock, and two half batches cost nearly two full ones), so inline stays the
default and the thread is an option to measure.

Sessions belong to the ZeroMQ identity of the connection that opened them, and their ids
are random tokens: a client can neither name nor touch another client's session or snapshot.
The wire format is PROTOCOL.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import ipaddress
import math
import queue
import secrets
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

import scenes
from controls.protocol import (BAD_MESSAGE, BAD_REQUEST, DEFAULT_ENDPOINT, INTERNAL, LIMIT, MAX_STEP_MANY, NO_SESSION,
                               NO_SNAPSHOT, PROMPT_POLICIES, PROTOCOL_VERSION, SHUTTING_DOWN, Limits, ProtocolError,
                               check_request, decode_action, decode_actions, encode_frame, part_frame, request_id,
                               unpack_request)
from controls.session import steps_arg  # the --steps flag, shared with play.py

TICK_RATE_HZ = 20.0
LIVE_WINDOW_S = 0.25    # a session that asked for a step this recently is expected in the next batch
REAP_EVERY_S = 1.0
HARD_SIZE_FACTOR = 8    # ZeroMQ drops the connection of a peer sending over factor x max_message_bytes
SEND_MORE, SEND_LAST = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)  # combined once (see Server._send)
ENGINE_OPS = ("reset", "snapshot", "restore")  # requests that use the engine: never while a batch is on it
STEP_OPS = ("step", "step_many")  # requests that join the batch being gathered
ZERO_COPY_BYTES = 1 << 20  # a reply this large (step_many's frames) is handed to libzmq without its copy
SWITCH_INTERVAL_S = 2e-4  # how long one thread may hold the interpreter lock while the other waits for it


@dataclass
class ServerConfig:
    bind: str = DEFAULT_ENDPOINT
    max_sessions: int = 16              # engine rows; one session each
    batch_wait_ms: float = 2.0          # longest a step waits for others to join its batch
    idle_timeout_s: float = 600.0       # sessions (and a silent client's snapshots) unused this long are closed
    max_message_bytes: int = 64 * 1024
    max_snapshots_per_client: int = 32
    max_snapshots: int = 256
    max_queued_per_client: int = 256   # requests waiting behind a client's pending step
    policy: str = "explore"             # what the real scene does during a prompt (reset option "policy")
    max_episode_steps: int | None = 2000  # truncated after this many steps; None: never
    latency_budget_ms: float | None = None  # default per-session budget (reset option "latency_budget_ms")
    record_dir: str | None = None       # write every session as a recording (controls.recording format)
    curve_secret_key: str | None = None   # server certificate with its secret key (zmq.auth format)
    curve_allowed_keys: str | None = None  # folder of allowed clients' public certificates
    insecure: bool = False              # allow a non-loopback bind without CURVE
    overlap: bool = False               # the engine steps on its own thread while the loop handles sockets
    split_batches_at: int = 32          # with overlap, this many sessions stepping or more: a batch
                                        # takes half of them (0: never)


# ---- the engine side --------------------------------------------------------------------------
# The records made per session, snapshot, client and request are slotted dataclasses: fixed
# fields, cheaper to make and to read on the per-request path.
@dataclass(slots=True)
class Session:
    token: str
    owner: bytes
    row: int
    seed: int = 0
    tick: int = 0                       # frames since the last reset
    frame: np.ndarray | None = None     # the latest observation, uint8 [H, W, 3]
    policy: str = "explore"
    max_episode_steps: int | None = None
    latency_budget_ms: float | None = None
    last_used: float = 0.0              # perf_counter of its last request
    last_step: float = -1e9             # perf_counter of its last step request
    recorder: Any = None                # controls.recording.RecordingWriter, when recording
    recording: bool = False             # False after a restore: a branch is not a clip of consecutive ticks
    record_tick: int = 0


@dataclass(slots=True)
class Snapshot:
    token: str
    owner: bytes
    state: dict                         # the engine's copy of the row (KV cache, noise stream)
    facts: dict                         # seed, tick, frame, policy, max_episode_steps, latency_budget_ms


@dataclass(slots=True)
class StepTicket:
    session: Session
    action: np.ndarray                  # float32 [A]
    received: float                     # perf_counter when the request arrived


@dataclass(slots=True)
class StepResults:
    """A batch's steps once the engine is through, by column: one entry per ticket, in batch order.

    The reply bodies are cut from it per request (`body`, `many`): a step_many with
    `info_columns` takes its slice of each column as it is, with no map built per session."""
    sessions: list[str]
    frames: np.ndarray                  # uint8 [B, H, W, 3], the engine's own
    truncated: list[bool]
    info: dict[str, list]               # steps, passes, confidence, latency_ms, wall_ms, batch, tick, over_budget

    def info_at(self, i: int) -> dict:
        return {k: v[i] for k, v in self.info.items()}

    def body(self, i: int) -> dict:
        """Step i's reply body (a `step`'s)."""
        return {"session": self.sessions[i], "obs": self.frames[i], "reward": 0.0, "terminated": False,
                "truncated": self.truncated[i], "info": self.info_at(i)}

    def many(self, a: int, b: int, columns: bool = False) -> dict:
        """Steps a..b-1 as one step_many reply body: its frames a slice of the engine's (no copy);
        info one map per session, or with `columns` one map of lists."""
        n = b - a
        info = {k: v[a:b] for k, v in self.info.items()} if columns else [self.info_at(i) for i in range(a, b)]
        return {"sessions": self.sessions[a:b], "obs": self.frames[a:b], "reward": [0.0] * n,
                "terminated": [False] * n, "truncated": self.truncated[a:b], "info": info}


class Host:
    """Sessions over one engine: open, prompt, step in batches, snapshot, restore, close, expire."""

    def __init__(self, engine, config: ServerConfig | None = None, scene: str | None = None,
                 checkpoint: str | None = None):
        self.engine = engine
        self.config = config or ServerConfig()
        self.scene = scene or engine.scene
        if self.scene is None:
            raise ValueError("the checkpoint names no scene; pass --scene")
        self.actions = list(scenes.game_class(self.scene).ACTIONS)
        if len(self.actions) != engine.action_dim:
            raise ValueError(f"scene {self.scene!r} has {len(self.actions)} keys but the model takes "
                             f"{engine.action_dim}; use a checkpoint of this scene")
        if self.config.policy not in PROMPT_POLICIES:
            raise ValueError(f"prompt policy must be one of {PROMPT_POLICIES}, got {self.config.policy!r}")
        self.checkpoint = checkpoint
        self.frame_shape = tuple(engine.frame_shape)
        self.sessions: dict[str, Session] = {}
        self._owned: dict[bytes, dict[str, Session]] = {}  # owner -> its open sessions: no scan of all per request
        self.snapshots: dict[bytes, OrderedDict[str, Snapshot]] = {}
        self.owner_seen: dict[bytes, float] = {}
        self.free_rows = set(range(engine.num_sessions))
        self._games: dict[int, Any] = {}  # row -> the one-world scene that prompts it
        self._expired: OrderedDict[str, str] = OrderedDict()  # token -> why it is gone, for clear errors
        self._rng = np.random.default_rng()
        self.engine_step_s = 0.0          # inside engine.step
        self.engine_other_s = 0.0         # prompts (scene + engine.reset), snapshots, restores
        self.frames = 0
        self.opened_or_closed = 0         # sessions opened or closed so far (the loop's due check reads it)
        self.batches = 0
        self.engine_ms_ema: float | None = None
        if self.config.record_dir:
            import controls.recording  # noqa: F401  (fail at start, not at the first session)

    # ---- facts ----------------------------------------------------------------------------
    def spec(self) -> dict:
        H, W, _ = self.frame_shape
        return {"protocol": PROTOCOL_VERSION, "scene": self.scene, "actions": list(self.actions),
                "action_space": {"type": "MultiBinary", "n": len(self.actions)},
                "frame_shape": [H, W, 3], "dtype": "uint8", "context_frames": int(self.engine.context_frames),
                "tick_rate_hz": TICK_RATE_HZ, "max_sessions": int(self.engine.num_sessions),
                "sessions_open": len(self.sessions), "sampler_steps": int(self.engine.sampler_steps),
                "checkpoint": self.engine.config.get("id"), "policies": list(PROMPT_POLICIES),
                "max_episode_steps": self.config.max_episode_steps, "max_step_many": MAX_STEP_MANY}

    def stats(self) -> dict:
        return {"sessions": len(self.sessions), "max_sessions": int(self.engine.num_sessions),
                "snapshots": sum(len(v) for v in self.snapshots.values()), "frames": self.frames,
                "batches": self.batches, "mean_batch_size": self.frames / max(self.batches, 1),
                "engine_step_s": self.engine_step_s, "engine_other_s": self.engine_other_s,
                "engine_ms_per_batch": 1e3 * self.engine_step_s / max(self.batches, 1)}

    def owns_anything(self, owner: bytes) -> bool:
        return owner in self._owned or bool(self.snapshots.get(owner))

    def _sessions_of(self, owner: bytes) -> list[Session]:
        """This client's open sessions (a copy: closing them while iterating is safe)."""
        return list(self._owned.get(owner, {}).values())

    # ---- lookups --------------------------------------------------------------------------
    def _session(self, owner: bytes, fields: dict) -> Session:
        """The session a request names, or the client's only one when it names none."""
        token = fields.get("session")
        if token is None:
            mine = self._sessions_of(owner)
            if len(mine) == 1:
                return mine[0]
            if not mine:
                raise ProtocolError(NO_SESSION, "this client has no open session: call reset first to open one")
            raise ProtocolError(BAD_REQUEST, f"this client has {len(mine)} sessions: name one with the field 'session'")
        s = self.sessions.get(token)
        if s is None or s.owner != owner:  # another client's session reads exactly like none
            why = self._expired.get(token, "never opened by this client, closed, or the server restarted")
            raise ProtocolError(NO_SESSION, f"no open session {token[:16]!r} for this client ({why}); "
                                            "call reset to open one")
        return s

    def _snapshot(self, owner: bytes, token: str) -> Snapshot:
        snap = self.snapshots.get(owner, {}).get(token)
        if snap is None:
            raise ProtocolError(NO_SNAPSHOT, f"no snapshot {token[:16]!r} for this client (never taken by it, "
                                             "released, expired, or the server restarted)")
        return snap

    def _open(self, owner: bytes, now: float) -> Session:
        if not self.free_rows:
            raise ProtocolError(LIMIT, f"all {self.engine.num_sessions} sessions are in use: close one, or start "
                                       "the server with a larger --max-sessions")
        row = min(self.free_rows)
        self.free_rows.discard(row)
        s = Session(token=secrets.token_hex(8), owner=owner, row=row, last_used=now, policy=self.config.policy,
                    max_episode_steps=self.config.max_episode_steps,
                    latency_budget_ms=self.config.latency_budget_ms)
        self.sessions[s.token] = s
        self._owned.setdefault(owner, {})[s.token] = s
        self.opened_or_closed += 1
        return s

    def _close(self, s: Session, why: str) -> None:
        self.sessions.pop(s.token, None)
        self.opened_or_closed += 1
        mine = self._owned.get(s.owner, {})
        mine.pop(s.token, None)
        if not mine:
            self._owned.pop(s.owner, None)
        self.free_rows.add(s.row)
        if s.recorder is not None:
            s.recorder.close()
            s.recorder = None
        self._expired[s.token] = why
        while len(self._expired) > 4096:
            self._expired.popitem(last=False)

    # ---- requests other than step -----------------------------------------------------------
    def handle(self, owner: bytes, op: str, fields: dict, now: float) -> dict:
        self.owner_seen[owner] = now
        if op == "spec":
            return self.spec()
        if op == "ping":
            return {"pong": True, "time": time.time()}
        if op == "stats":
            return {"stats": self.stats()}
        t0 = time.perf_counter()
        try:
            return getattr(self, f"_op_{op}")(owner, fields, now)
        finally:
            self.engine_other_s += time.perf_counter() - t0

    def _op_reset(self, owner: bytes, fields: dict, now: float) -> dict:
        options = dict(fields.get("options") or {})
        opened = "session" not in fields
        s = self._open(owner, now) if opened else self._session(owner, fields)
        try:
            s.policy = options.get("policy", s.policy)
            s.max_episode_steps = options.get("max_episode_steps", s.max_episode_steps)
            s.latency_budget_ms = options.get("latency_budget_ms", s.latency_budget_ms)
            seed = fields.get("seed")
            seed = int(self._rng.integers(0, 2**31 - 1)) if seed is None else int(seed)
            frames, actions = self._prompt(s.row, seed, s.policy)
            self.engine.reset(frames[None], actions[None], sessions=[s.row], seeds=[seed])
        except BaseException:
            if opened:
                self._close(s, "its reset failed")
            raise
        s.seed, s.tick, s.frame, s.last_used = seed, 0, frames[-1], now
        self._record_prompt(s, frames, actions, "start" if opened else "reset")
        return {"session": s.token, "obs": s.frame,
                "info": {"seed": seed, "tick": 0, "policy": s.policy, "context_frames": len(frames)}}

    def _prompt(self, row: int, seed: int, policy: str) -> tuple[np.ndarray, np.ndarray]:
        """The real scene at `seed`, rolled for context_frames ticks: uint8 [K, H, W, 3], float32 [K, A]."""
        H, W, _ = self.frame_shape
        game = self._games.get(row)
        if game is None:
            game = self._games[row] = scenes.make_batch(self.scene, 1, width=W, height=H)
        K, A = int(self.engine.context_frames), len(self.actions)
        frames = np.empty((K, H, W, 3), np.uint8)
        actions = np.zeros((K, A), np.float32)  # the frame right after a world reset had no keys
        frames[0] = game.reset([seed])[0]
        pilot = None if policy == "idle" else scenes.make_policy(game, policy, seed=seed)
        for k in range(1, K):
            keys = np.zeros((1, A), bool) if pilot is None else pilot(game)
            game.step(keys)
            frames[k], actions[k] = game.render()[0], keys[0]
        return frames, actions

    def _op_snapshot(self, owner: bytes, fields: dict, now: float) -> dict:
        s = self._session(owner, fields)
        mine = self.snapshots.setdefault(owner, OrderedDict())
        total = sum(len(v) for v in self.snapshots.values())
        if len(mine) >= self.config.max_snapshots_per_client or total >= self.config.max_snapshots:
            raise ProtocolError(LIMIT, f"snapshot limit reached ({len(mine)} of this client's, {total} in all): "
                                       "release some with close {snapshot}")
        snap = Snapshot(secrets.token_hex(8), owner, self.engine.snapshot(s.row),
                        # the frame copied: a view would keep its whole batch's frames alive (3 MB at 64 sessions)
                        {"seed": s.seed, "tick": s.tick, "frame": None if s.frame is None else s.frame.copy(),
                         "policy": s.policy,
                         "max_episode_steps": s.max_episode_steps, "latency_budget_ms": s.latency_budget_ms})
        mine[snap.token] = snap
        s.last_used = now
        return {"snapshot": snap.token, "session": s.token, "tick": s.tick}

    def _op_restore(self, owner: bytes, fields: dict, now: float) -> dict:
        snap = self._snapshot(owner, fields["snapshot"])
        s = self._open(owner, now) if fields.get("new_session") else self._session(owner, fields)
        self.engine.restore(s.row, snap.state)
        for name, value in snap.facts.items():
            setattr(s, name, value)
        s.last_used, s.recording = now, False
        return {"session": s.token, "obs": s.frame,
                "info": {"seed": s.seed, "tick": s.tick, "policy": s.policy, "restored": snap.token}}

    def _op_close(self, owner: bytes, fields: dict, now: float) -> dict:
        closed: dict[str, Any] = {"sessions": [], "snapshots": []}
        if "snapshot" in fields:
            self._snapshot(owner, fields["snapshot"])
            del self.snapshots[owner][fields["snapshot"]]
            closed["snapshots"].append(fields["snapshot"])
        if "session" in fields:
            s = self._session(owner, fields)
            self._close(s, "closed by its client")
            closed["sessions"].append(s.token)
        if not fields:  # everything this client holds
            for s in self._sessions_of(owner):
                self._close(s, "closed by its client")
                closed["sessions"].append(s.token)
            closed["snapshots"] = list(self.snapshots.pop(owner, {}))
        return {"closed": closed}

    # ---- steps ------------------------------------------------------------------------------
    def prepare_step(self, owner: bytes, fields: dict, now: float) -> StepTicket:
        """Check a step request; the engine runs it later, in a batch (`run_steps`)."""
        self.owner_seen[owner] = now
        s = self._session(owner, fields)
        action = decode_action(fields["action"], len(self.actions), self.actions)
        s.last_used = s.last_step = now
        return StepTicket(s, action, now)

    def prepare_steps(self, owner: bytes, fields: dict, now: float) -> list[StepTicket]:
        """Check a step_many request, all of it before any session is touched: one bad session or
        action refuses the whole request (naming which), and no session steps."""
        self.owner_seen[owner] = now
        sessions, open_ = [], self.sessions
        for i, token in enumerate(fields["sessions"]):
            s = open_.get(token)
            if s is None or s.owner != owner:
                try:
                    self._session(owner, {"session": token})  # refused as a step would be, with its reason
                except ProtocolError as e:
                    raise ProtocolError(e.code, f"step_many sessions[{i}]: {e.message}; no session was stepped") from None
            sessions.append(s)
        try:
            actions = decode_actions(fields["actions"], len(self.actions), self.actions)
        except ProtocolError as e:
            raise ProtocolError(e.code, f"{e.message}; no session was stepped") from None
        for s in sessions:
            s.last_used = s.last_step = now
        return [StepTicket(s, a, now) for s, a in zip(sessions, actions)]

    def wait_ms_of(self, tickets: list[StepTicket]) -> float:
        """How long the steps of one request may wait for others: the shortest of their waits."""
        if all(t.session.latency_budget_ms is None for t in tickets):
            return self.config.batch_wait_ms
        return min(self.wait_ms(t) for t in tickets)

    def wait_ms(self, ticket: StepTicket) -> float:
        """How long this step may wait for others: the batch wait, less if its budget needs it."""
        wait = self.config.batch_wait_ms
        budget = ticket.session.latency_budget_ms
        if budget is not None:
            wait = min(wait, max(0.0, budget - (self.engine_ms_ema or 0.0)))
        return wait

    def run_steps(self, tickets: list[StepTicket], now: float) -> StepResults:
        """One batched engine step for sessions on distinct rows."""
        return self.finish_steps(tickets, *self.step_engine(self.engine_inputs(tickets, now)))

    def engine_inputs(self, tickets: list[StepTicket], now: float) -> tuple[list[int], np.ndarray, float | None]:
        """What `step_engine` needs, read from the sessions now: rows, actions [B, A], the tightest budget left."""
        rows = [t.session.row for t in tickets]
        actions = np.stack([t.action for t in tickets])
        budgets = [t.session.latency_budget_ms - (now - t.received) * 1e3
                   for t in tickets if t.session.latency_budget_ms is not None]
        return rows, actions, (min(budgets) if budgets else None)

    def step_engine(self, inputs: tuple[list[int], np.ndarray, float | None]) -> tuple[np.ndarray, list[dict], float]:
        """The engine's part of a batch (the only code the engine thread runs): frames, reports, end time.

        Touches the engine and its own counters, no session: the loop may handle requests meanwhile."""
        rows, actions, budget_ms = inputs
        t0 = time.perf_counter()
        with self._budget(budget_ms):
            frames, reports = self.engine.step(actions, sessions=rows)
        done = time.perf_counter()
        engine_ms = (done - t0) * 1e3
        self.engine_step_s += done - t0
        self.engine_ms_ema = engine_ms if self.engine_ms_ema is None else 0.8 * self.engine_ms_ema + 0.2 * engine_ms
        self.batches += 1
        self.frames += len(rows)
        return frames, reports, done

    def finish_steps(self, tickets: list[StepTicket], frames: np.ndarray, reports: list[dict],
                     done: float) -> StepResults:
        """The sessions' part of a batch, once the engine is through: ticks, recordings, the results."""
        B = len(tickets)
        reported = {"steps": [int(r["steps"]) for r in reports],  # read first: a bad report touches no session
                    "passes": [int(r.get("passes", r["steps"])) for r in reports],
                    "confidence": [float(r.get("confidence", float("nan"))) for r in reports],
                    "latency_ms": [float(r["latency_ms"]) for r in reports]}
        wall, ticks, truncated, over = [0.0] * B, [0] * B, [False] * B, [False] * B
        for i, t in enumerate(tickets):
            s = t.session
            s.tick += 1
            s.frame = frames[i]
            wall[i] = w = (done - t.received) * 1e3
            ticks[i] = s.tick
            truncated[i] = s.max_episode_steps is not None and s.tick >= s.max_episode_steps
            over[i] = s.latency_budget_ms is not None and w > s.latency_budget_ms
        results = StepResults(
            [t.session.token for t in tickets], frames, truncated,
            {**reported, "wall_ms": wall, "batch": [B] * B, "tick": ticks, "over_budget": over})
        if self.config.record_dir:
            for i, t in enumerate(tickets):
                self._record_frame(t.session, t.action, frames[i], results.info_at(i))
        return results

    @contextlib.contextmanager
    def _budget(self, budget_ms: float | None):
        """A distilled engine with adaptive steps ends this batch's frames within the tightest budget."""
        allocator = getattr(self.engine, "allocator", None) if getattr(self.engine, "few_step", False) else None
        if budget_ms is None or allocator is None or allocator.cfg.mode == "fixed":
            yield
            return
        old = allocator.cfg
        if old.mode == "budget":
            budget_ms = min(budget_ms, old.budget_ms)
        allocator.cfg = dataclasses.replace(old, mode="budget", budget_ms=max(budget_ms, 0.1))
        try:
            yield
        finally:
            allocator.cfg = old

    # ---- recordings -------------------------------------------------------------------------
    def _record_prompt(self, s: Session, frames: np.ndarray, actions: np.ndarray, reason: str) -> None:
        if not self.config.record_dir:
            return
        from controls.recording import PromptRecord, RecordingWriter, make_header
        if s.recorder is None:
            header = make_header(self.scene, self.actions, self.frame_shape[:2], s.seed, TICK_RATE_HZ,
                                 checkpoint=self.engine.config.get("id"), checkpoint_path=self.checkpoint,
                                 sampler_steps=int(self.engine.sampler_steps), source="controls.server")
            s.recorder = RecordingWriter(Path(self.config.record_dir) / f"session-{s.token}.dsarec", header)
        s.recorder.write(PromptRecord(s.record_tick, frames, actions, s.seed, s.seed, reason))
        s.recording = True

    def _record_frame(self, s: Session, action: np.ndarray, frame: np.ndarray, info: dict) -> None:
        if s.recorder is None or not s.recording:
            return
        from controls.recording import FrameRecord
        s.record_tick += 1
        s.recorder.write(FrameRecord(s.record_tick, action, frame, info["steps"], info["confidence"],
                                     info["latency_ms"]))

    # ---- housekeeping -----------------------------------------------------------------------
    def reap(self, now: float) -> int:
        """Close sessions idle past the timeout, and the snapshots of clients silent that long."""
        limit = self.config.idle_timeout_s
        idle = [s for s in self.sessions.values() if now - s.last_used > limit]
        for s in idle:
            self._close(s, f"closed after {limit:g} s without a request")
        for owner in [o for o, seen in self.owner_seen.items() if now - seen > limit]:
            self.snapshots.pop(owner, None)
            if owner not in self._owned:
                del self.owner_seen[owner]
        return len(idle)

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            self._close(s, "the server shut down")
        self.snapshots.clear()


# ---- the socket side --------------------------------------------------------------------------
def is_loopback(endpoint: str) -> bool:
    """Does a bind endpoint stay on this machine? ipc:// and inproc:// do; tcp:// on 127.x or ::1 does."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", interface names, host names: not provably local
        return False


def check_bind(config: ServerConfig) -> None:
    if is_loopback(config.bind) or config.insecure:
        return
    if not (config.curve_secret_key and config.curve_allowed_keys):
        raise ValueError(f"refusing to bind {config.bind}: beyond loopback the server needs ZeroMQ CURVE keys "
                         "(--curve-secret-key SERVER.key_secret --curve-allowed-keys DIR; make them with "
                         "--make-keys DIR) or, on a network you trust, --insecure")


@dataclass(slots=True)
class Pending:
    """One request from one client, between arrival and reply."""
    envelope: list[bytes]               # routing frames to send the reply back with
    rid: Any
    op: str | None
    fields: dict | None
    received: float
    error: ProtocolError | None = None  # refused already: answered in its turn
    tickets: list[StepTicket] | None = None  # a step's one, a step_many's one per session


@dataclass(slots=True)
class ClientState:
    queue: deque = field(default_factory=deque)   # requests not yet answered, in arrival order
    inflight: list = field(default_factory=list)  # its steps in the batch being gathered


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(routing frames, body frames) of a message from the ROUTER socket: DEALER clients send
    [payload], REQ clients [b"", payload]; the reply goes back in the same envelope."""
    envelope = frames[:2] if len(frames) > 2 and frames[1] == b"" else frames[:1]
    return envelope, frames[len(envelope):]


class EngineThread:
    """Runs one job at a time (a batch's `Host.step_engine`) on a thread of its own.

    The loop `submit`s a job and polls `wake` beside its ROUTER socket: a message there says
    the job is done, and `collect` returns its result (or raises what it raised, in the loop).
    """

    def __init__(self, context: zmq.Context):
        self._address = f"inproc://dsa-sim-engine-{secrets.token_hex(4)}"
        self.wake = context.socket(zmq.PAIR)
        self.wake.setsockopt(zmq.LINGER, 0)
        self.wake.bind(self._address)  # before the thread connects (inproc)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._result: tuple[Any, BaseException | None] | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._run, args=(context,), name="dsa-sim-engine", daemon=True)
        self._thread.start()

    def submit(self, job) -> None:
        if self.busy:
            raise RuntimeError("the engine thread runs one job at a time")
        self.busy = True
        self._jobs.put(job)

    def collect(self, timeout_s: float | None = None) -> Any:
        """The finished job's result (waits up to timeout_s for it; None: forever)."""
        if timeout_s is not None and not self.wake.poll(int(timeout_s * 1e3)):
            raise TimeoutError(f"the engine did not finish its batch within {timeout_s:g} s")
        self.wake.recv()
        (result, error), self._result = self._result, None
        self.busy = False
        if error is not None:
            raise error
        return result

    def _run(self, context: zmq.Context) -> None:
        done = context.socket(zmq.PAIR)
        done.setsockopt(zmq.LINGER, 0)
        done.connect(self._address)
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._result = (job(), None)
                except BaseException as e:  # delivered to the loop, which answers the batch with it
                    self._result = (None, e)
                done.send(b"")
        finally:
            done.close()

    def close(self) -> None:
        if self.busy:
            with contextlib.suppress(Exception):
                self.collect()
        self._jobs.put(None)
        self._thread.join(timeout=10)
        self.wake.close()


class Server:
    """The ROUTER socket and its poll loop. `serve()` runs until `stop()` (or SIGINT/SIGTERM in main)."""

    def __init__(self, host: Host, config: ServerConfig | None = None, context: zmq.Context | None = None):
        self.host = host
        self.config = config or host.config
        check_bind(self.config)
        self.limits = Limits(max_message_bytes=self.config.max_message_bytes)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.boot = secrets.token_hex(4)  # a restarted server has another: clients can tell their sessions are gone
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, HARD_SIZE_FACTOR * self.config.max_message_bytes)
        self._auth = None
        try:
            if self.config.curve_secret_key:
                self._auth = self._setup_curve()
            self.socket.bind(self.config.bind)
        except Exception as e:
            self._release()
            if isinstance(e, zmq.ZMQError):
                raise OSError(f"cannot bind {self.config.bind} ({e}); is another server running there?") from None
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.clients: dict[bytes, ClientState] = {}
        self.batch: list[Pending] = []
        self._batched: set[int] = set()  # id() of each session with a step in the batch, kept beside it
        self.engine = EngineThread(self.context) if self.config.overlap else None
        self.running: list[Pending] = []  # the batch on the engine thread
        self._inflight: set[int] = set()  # id() of each session whose step is on the engine, reply not yet sent
        self._held: set[bytes] = set()  # clients whose next request uses the engine: advanced after the batch
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=False)  # one reply buffer, reused by `_send`
        self._deadline = float("inf")
        self._live_at_start = 0  # sessions live when the last batch started, and until when all are (`_batch_due`)
        self._live_until = 0.0
        self._sessions_changed_at_start = -1
        self._stop = False
        self.started = time.perf_counter()
        self.requests = self.errors = 0
        self.busy_s = 0.0          # handling time, poll waits excluded
        self.bodies_s = 0.0        # of it, building a batch's reply bodies (finish_steps and the cut per request)
        self.replies_s = 0.0       # of it, packing and sending a batch's replies
        self.drain_s = 0.0         # of it, receiving requests: unpacking, checks, queueing, batching
        self.gc_s = 0.0            # the garbage collector's pauses while serving (in whatever they interrupted)
        self.gc_runs = 0
        self._gc_started: float | None = None
        self.batch_wait_s = 0.0    # summed over batches: first arrival -> batch start
        self.step_wall_ms: deque[float] = deque(maxlen=4096)

    def _setup_curve(self):
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE; install pyzmq from its wheels")
        if not self.config.curve_allowed_keys or not Path(self.config.curve_allowed_keys).is_dir():
            raise ValueError("CURVE needs --curve-allowed-keys DIR: the allowed clients' public certificates")
        public, secret = load_certificate(self.config.curve_secret_key)
        if not secret:
            raise ValueError(f"{self.config.curve_secret_key} holds no secret key: pass the server's .key_secret file")
        auth = ThreadAuthenticator(self.context)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.config.curve_allowed_keys))
        self.socket.curve_secretkey = secret
        self.socket.curve_publickey = public
        self.socket.curve_server = True
        return auth

    # ---- loop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread); it closes within ~0.1 s."""
        self._stop = True

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.engine is not None:
            poller.register(self.engine.wake, zmq.POLLIN)
        last_reap = time.perf_counter()
        # the engine thread wants the interpreter lock back as soon as the GPU answers: a short switch
        # interval keeps the loop from holding it for the default 5 ms meanwhile
        switch = sys.getswitchinterval()
        if self.engine is not None:
            sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
        gc.callbacks.append(self._on_gc)
        try:
            while not self._stop:
                ready = self._wait_for_requests(poller)
                t0 = time.perf_counter()
                finished = self.engine is not None and self.engine.wake in ready
                if self.socket in ready:
                    other = self.host.engine_other_s  # resets, snapshots and restores are the engine's time
                    self._drain()
                    self.drain_s += time.perf_counter() - t0 - (self.host.engine_other_s - other)
                if finished:
                    self._batch_done()
                now = time.perf_counter()
                if self.batch and not self.running and self._batch_due(now):
                    self._run_batch()
                if now - last_reap > min(REAP_EVERY_S, self.config.idle_timeout_s / 4):
                    last_reap = now
                    self._reap(now)
                self.busy_s += time.perf_counter() - t0
        finally:
            gc.callbacks.remove(self._on_gc)
            sys.setswitchinterval(switch)
            self._shutdown()

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:  # (a collection already running when serving began: not timed)
            self.gc_s += time.perf_counter() - self._gc_started
            self.gc_runs += 1
            self._gc_started = None

    def _wait_for_requests(self, poller: zmq.Poller) -> dict:
        """Wait for a request (or the engine's batch), or until the batch may be due; what is ready.

        ZeroMQ polls in whole milliseconds (pyzmq rounds a fraction down), so the last fraction
        of a millisecond before a batch's deadline would spin on poll(0), each turn counted as
        busy time. That fraction is slept instead: the deadline still holds, and a step that
        arrives meanwhile is drained at the deadline, less than 1 ms later than it could be.
        """
        wait_ms = 100.0
        if self.batch and not self.running:  # (while a batch runs, the next one waits for its end anyway)
            wait_ms = min(wait_ms, max(0.0, (self._deadline - time.perf_counter()) * 1e3))
            if wait_ms < 1.0:
                time.sleep(wait_ms / 1e3)
                wait_ms = 0.0
        return dict(poller.poll(wait_ms))

    def _reap(self, now: float) -> None:
        self.host.reap(now)
        for owner in [o for o, c in self.clients.items() if not (c.queue or c.inflight)]:
            if not self.host.owns_anything(owner):
                del self.clients[owner]

    def _drain(self, most: int = 1024) -> None:
        for _ in range(most):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._on_message(frames, time.perf_counter())
            except Exception:  # a bug must not take the server down with it
                traceback.print_exc()

    def _on_message(self, frames: list[bytes], now: float) -> None:
        self.requests += 1
        owner = frames[0]
        envelope, body = split_envelope(frames)
        client = self.clients.get(owner)
        if client is None:  # (setdefault would build a ClientState for every request)
            client = self.clients[owner] = ClientState()
        pending = Pending(envelope, None, None, None, now)
        try:
            if len(body) != 1:
                raise ProtocolError(BAD_MESSAGE, f"a request is one msgpack frame, got {len(body)} frames")
            message = unpack_request(body[0], self.limits)
            pending.rid = request_id(message)
            pending.op, pending.fields = check_request(message)
        except ProtocolError as e:
            pending.error = e
        if len(client.queue) >= self.config.max_queued_per_client:
            self._reply(pending, ProtocolError(LIMIT, f"more than {self.config.max_queued_per_client} requests "
                                                      "queued from this client: wait for replies before sending more"))
            return
        client.queue.append(pending)
        self._advance(owner, client, now)

    def _advance(self, owner: bytes, client: ClientState, now: float) -> None:
        """Answer this client's queued requests in order; steps join the batch, which holds the rest back."""
        while client.queue:
            p = client.queue[0]
            if p.error is None and p.op in STEP_OPS:
                try:
                    tickets = ([self.host.prepare_step(owner, p.fields, now)] if p.op == "step"
                               else self.host.prepare_steps(owner, p.fields, now))
                except Exception as e:
                    if not isinstance(e, ProtocolError):
                        traceback.print_exc()
                        e = ProtocolError(INTERNAL, f"step failed inside the server ({type(e).__name__}: {e})")
                    if client.inflight:
                        return  # refused, but answered only after the steps before it
                    client.queue.popleft()
                    self._reply(p, e)
                    continue
                ids = [id(t.session) for t in tickets]
                if not self._batched.isdisjoint(ids):
                    return  # a second step of one session waits for the next batch
                p.tickets = tickets
                client.queue.popleft()
                client.inflight.append(p)
                self.batch.append(p)
                self._batched.update(ids)
                for t in tickets:
                    t.received = p.received
                self._deadline = min(self._deadline, p.received + self.host.wait_ms_of(tickets) / 1e3)
                continue
            if client.inflight:
                return
            if self.running and p.error is None and p.op in ENGINE_OPS:
                self._held.add(owner)  # the engine is stepping a batch: this one goes on after it
                return
            client.queue.popleft()
            self._reply(p, p.error or self._handle(owner, p, now))
        if not client.inflight and not self.host.owns_anything(owner):
            self.clients.pop(owner, None)

    def _handle(self, owner: bytes, p: Pending, now: float) -> dict | ProtocolError:
        try:
            body = self.host.handle(owner, p.op, p.fields, now)
        except ProtocolError as e:
            return e
        except Exception as e:  # a bug or an engine failure: say so, stay up
            traceback.print_exc()
            return ProtocolError(INTERNAL, f"{p.op} failed inside the server ({type(e).__name__}: {e})")
        if p.op == "stats":
            body["stats"].update(self.stats())
        return body

    def _batch_due(self, now: float) -> bool:
        """Past the deadline, or every live session has its step in or on the engine.

        Asked after every arrival, so the scan of all sessions is skipped while fewer steps are in
        than sessions were live when the last batch started, all of those are live still and none
        was opened or closed since: then one of them is still to come."""
        if now >= self._deadline:
            return True
        if (len(self._batched) + len(self._inflight) < self._live_at_start and now < self._live_until
                and self.host.opened_or_closed == self._sessions_changed_at_start):
            return False
        live = now - LIVE_WINDOW_S
        return all(id(s) in self._batched or id(s) in self._inflight
                   for s in self.host.sessions.values() if s.last_step >= live)

    def _take_batch(self) -> list[Pending]:
        """The steps to run now: all pending, or with many sessions stepping the older half of them
        (the rest wait for the next batch, which starts the moment this one leaves the engine; a
        step_many request stays whole, on the side of the split where it starts)."""
        batch = self.batch
        split = self.config.split_batches_at
        if self.engine is not None and split and len(self.host.sessions) >= split and len(batch) > 1:
            live = time.perf_counter() - LIVE_WINDOW_S
            stepping = sum(1 for s in self.host.sessions.values() if s.last_step >= live)
            half = math.ceil(stepping / 2)
            cut, taken = 0, 0
            while cut < len(batch) and taken < half:
                taken += len(batch[cut].tickets)
                cut += 1
            if stepping >= split and cut < len(batch):
                batch, self.batch = batch[:cut], batch[cut:]
                self._batched = {id(t.session) for p in self.batch for t in p.tickets}
                self._deadline = min(p.received + self.host.wait_ms_of(p.tickets) / 1e3 for p in self.batch)
                return batch
        self.batch, self._batched, self._deadline = [], set(), float("inf")
        return batch

    def _run_batch(self) -> None:
        batch = self._take_batch()
        start = time.perf_counter()
        live = [s.last_step for s in self.host.sessions.values() if s.last_step >= start - LIVE_WINDOW_S]
        self._live_at_start, self._live_until = len(live), min(live, default=start) + LIVE_WINDOW_S
        self._sessions_changed_at_start = self.host.opened_or_closed
        self.batch_wait_s += start - min(p.received for p in batch)
        tickets = [t for p in batch for t in p.tickets]
        self._inflight.update(id(t.session) for t in tickets)
        if self.engine is not None:  # on the engine thread; `_batch_done` takes it from there
            self.running = batch
            inputs = self.host.engine_inputs(tickets, start)
            self.engine.submit(lambda: self.host.step_engine(inputs))
            return
        try:
            frames, reports, done = self.host.step_engine(self.host.engine_inputs(tickets, start))
            results: StepResults | ProtocolError = self.host.finish_steps(tickets, frames, reports, done)
        except Exception as e:
            results, done = self._failed(e), time.perf_counter()
        self._send_batch(batch, results, done)

    def _batch_done(self, go_on: bool = True, timeout_s: float | None = None) -> None:
        """The engine thread is through with the running batch: start the next one (unless not
        `go_on`: at shutdown), then answer this one."""
        batch, self.running = self.running, []
        tickets = [t for p in batch for t in p.tickets]
        results: StepResults | ProtocolError | None = None
        try:
            frames, reports, done = self.engine.collect(timeout_s)
        except Exception as e:
            results = self._failed(e)
        if go_on:
            self._release_held()
            if self.batch and self._batch_due(time.perf_counter()):
                self._run_batch()  # the GPU goes on with the next batch while this one's replies go out
        built_from = time.perf_counter()
        if results is None:
            try:
                results = self.host.finish_steps(tickets, frames, reports, done)
            except Exception as e:
                results = self._failed(e)
        self._send_batch(batch, results, built_from)

    def _release_held(self) -> None:
        """The engine is free for a moment: the resets, snapshots and restores waiting for it go on."""
        held, self._held = self._held, set()
        now = time.perf_counter()
        for owner in held:
            client = self.clients.get(owner)
            if client is not None:
                self._advance(owner, client, now)

    @staticmethod
    def _failed(e: Exception) -> ProtocolError:
        traceback.print_exc()
        return ProtocolError(INTERNAL, f"the engine step failed ({type(e).__name__}: {e})")

    def _send_batch(self, batch: list[Pending], results: StepResults | ProtocolError, built_from: float) -> None:
        """Reply to every step of a batch (results: its steps in the batch's order, or the error
        that failed them all), then let its clients' next requests through."""
        a = 0
        replies: list[dict | ProtocolError] = []
        for p in batch:
            b = a + len(p.tickets)
            self._inflight.difference_update([id(t.session) for t in p.tickets])
            if isinstance(results, ProtocolError):
                replies.append(results)
            elif p.op == "step":
                replies.append(results.body(a))
            else:
                replies.append(results.many(a, b, columns=bool(p.fields.get("info_columns"))))
            a = b
        if not isinstance(results, ProtocolError):
            self.step_wall_ms.extend(results.info["wall_ms"])
        self.bodies_s += time.perf_counter() - built_from
        built = time.perf_counter()
        for p, reply in zip(batch, replies):
            self._reply(p, reply)
        self.replies_s += time.perf_counter() - built
        answered = {id(p) for p in batch}
        owners = {p.envelope[0] for p in batch}
        now = time.perf_counter()
        for owner in owners:
            client = self.clients.get(owner)
            if client is not None:
                # only this batch's steps: the client's steps in the next batch (started already, or
                # still gathering) keep holding its later requests back, so replies stay in order
                client.inflight[:] = [p for p in client.inflight if id(p) not in answered]
                self._advance(owner, client, now)

    def _reply(self, p: Pending, result: dict | ProtocolError) -> None:
        part = None
        if isinstance(result, ProtocolError):
            self.errors += 1
            body = {"error": {"code": result.code, "message": result.message}}
        else:
            body = result  # every reply body is built fresh for its request: filled in place, not copied
            if "obs" in body:
                if p.op == "step_many" and p.fields.get("obs_part"):
                    body["obs"], part = part_frame(body["obs"])
                else:
                    body["obs"] = encode_frame(body["obs"])
        body["id"] = p.rid
        body["boot"] = self.boot
        self._send(p.envelope, body, part)

    def _send(self, envelope: list[bytes], body: dict, part: np.ndarray | None = None) -> None:
        """Pack into the one reused buffer and send that: a frame is copied twice per reply (into the
        buffer, then into libzmq's message) instead of four times (tobytes, packb's buffer, packb's
        bytes, libzmq), and no frame-sized buffer is allocated in Python.

        The copy into libzmq stays (send's default copy=True copies before it returns, so the buffer
        is free for the next reply): a zero-copy send would need a fresh buffer per reply, kept alive
        until libzmq's I/O thread is done with it (pyzmq tracks that through a garbage-collector
        thread), and measured no cheaper. One send per frame rather than send_multipart, which
        type-checks every part and combines flag enums on each call (~1.5 us a reply).

        `part` (step_many's frames with obs_part) goes after the body as a message part of its
        own, zero-copy: the engine's frame array is fresh per batch and never written again, and
        libzmq holds a reference to it until it is sent.
        """
        self._packer.reset()  # the last reply's view is released: the buffer is free
        self._packer.pack(body)
        payload = self._packer.getbuffer()
        big = len(payload) >= ZERO_COPY_BYTES
        if big:
            # step_many's frames: a buffer of its own, handed over without the second copy (the
            # zero-copy bookkeeping costs less than copying megabytes); libzmq keeps it until sent
            payload.release()
            packer, self._packer = self._packer, msgpack.Packer(use_bin_type=True, autoreset=False)
            payload = packer.getbuffer()
        try:
            for frame in envelope:
                self.socket.send(frame, SEND_MORE)
            if part is None:
                self.socket.send(payload, SEND_LAST, copy=not big)
            else:
                self.socket.send(payload, SEND_MORE, copy=not big)
                self.socket.send(part, SEND_LAST, copy=False)
        except zmq.ZMQError:  # the client is gone or not reading: its reply is dropped, never blocks the loop
            pass
        finally:
            if not big:
                payload.release()

    def stats(self) -> dict:
        uptime = time.perf_counter() - self.started
        # the engine's time on the loop's own thread: its steps too, unless they run on the engine thread
        engine_s = (0.0 if self.engine is not None else self.host.engine_step_s) + self.host.engine_other_s
        overhead = max(0.0, self.busy_s - engine_s)
        wall = np.asarray(self.step_wall_ms) if self.step_wall_ms else np.zeros(1)
        return {"uptime_s": uptime, "clients": len(self.clients), "requests": self.requests, "errors": self.errors,
                "frames_per_s": self.host.frames / max(uptime, 1e-9), "busy_s": self.busy_s, "overhead_s": overhead,
                "bodies_s": self.bodies_s, "replies_s": self.replies_s, "drain_s": self.drain_s,
                "gc_s": self.gc_s, "gc_runs": self.gc_runs,
                "overhead_share": overhead / max(self.host.engine_step_s, 1e-9),
                "batch_wait_ms_mean": 1e3 * self.batch_wait_s / max(self.host.batches, 1),
                "step_wall_ms_p50": float(np.percentile(wall, 50)), "step_wall_ms_p99": float(np.percentile(wall, 99)),
                "overlap": self.engine is not None, "boot": self.boot, "protocol": PROTOCOL_VERSION}

    def _shutdown(self) -> None:
        """Answer what is still queued, close every session (flushing recordings), release the socket."""
        if self.engine is not None:
            if self.running:  # its frames are being made: they are answered, not dropped
                self._batch_done(go_on=False, timeout_s=60)
            self.engine.close()
        bye = ProtocolError(SHUTTING_DOWN, "the server is shutting down")
        for p in self.batch:
            self._reply(p, bye)
        for client in self.clients.values():
            for p in client.queue:
                self._reply(p, bye)
        self._refuse_unread(bye)
        self.batch, self._batched, self.clients = [], set(), {}
        self.host.close_all()
        self._release(linger_ms=200)

    def _refuse_unread(self, bye: ProtocolError, most: int = 4096) -> None:
        """Answer what arrived but was not read yet (the loop stopped first) with `bye`, after the
        replies to each client's earlier requests: a client waiting on it hears the server is going."""
        for _ in range(most):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = split_envelope(frames)
            rid = None
            with contextlib.suppress(Exception):  # a malformed request still hears why it is not served
                rid = request_id(unpack_request(body[0], self.limits))
            self._reply(Pending(envelope, rid, None, None, 0.0), bye)

    def _release(self, linger_ms: int = 0) -> None:
        self.socket.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self.context.term()


# ---- command line -----------------------------------------------------------------------------
def configure_steps(engine, steps: int | str | None = None, tau: float | None = None) -> str:
    """Set how the engine spends denoising steps, once at startup; returns it in words.

    steps: N fixes the count (a teacher's Euler steps, a student's k); 'adaptive' (or a tau
    alone) lets a distilled student's confidence head end each frame after 1 to k_max steps,
    at confidence >= tau; None keeps the checkpoint's own. A per-session latency budget
    (--latency-budget-ms) then also bounds an adaptive student's frames, batch by batch.
    """
    if tau is not None and not 0.0 <= tau <= 1.0:
        raise ValueError(f"--tau is a confidence threshold in [0, 1], got {tau:g}")
    if isinstance(steps, int):
        if tau is not None:
            raise ValueError("--tau sets adaptive steps, but --steps fixes them: pass --steps adaptive, or drop --tau")
        engine.sampler_steps = steps  # a student's fixed k above its k_max: ValueError
    elif steps == "adaptive" or tau is not None:
        if not engine.few_step:
            raise ValueError("this checkpoint is a many-step teacher, which has fixed steps only: adaptive steps "
                             "(--steps adaptive, --tau) need a distilled student (python -m sim.train --stage "
                             "distill); pass --steps N instead")
        engine.use_adaptive_steps(tau)
    if not engine.few_step:
        return f"{engine.sampler_steps} steps per frame"
    cfg = engine.allocator.cfg
    if cfg.mode == "fixed":
        return f"{cfg.fixed_steps} steps per frame"
    return f"adaptive steps ({cfg.k_min} to {cfg.k_max}, confidence >= {cfg.tau:g})"


def make_keys(folder: str) -> None:
    """A server and a client certificate pair in `folder`, and an allowed-clients folder with the client's."""
    import shutil
    import zmq.auth
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(out, "server")
    zmq.auth.create_certificates(out, "client")
    allowed = out / "allowed"
    allowed.mkdir(exist_ok=True)
    shutil.copy(out / "client.key", allowed / "client.key")
    print(f"server: {out / 'server.key_secret'} (keep private), {out / 'server.key'} (give to clients)\n"
          f"client: {out / 'client.key_secret'} (the agent's), allowed clients: {allowed}/")


def main(argv: list[str] | None = None) -> int:
    from sim.allocator import AllocatorConfig
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="python -m controls.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="world checkpoint folder (default: the shipped model of --scene)")
    p.add_argument("--scene", default=None, help="scene to prompt from (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA if present)")
    p.add_argument("--bind", default=d.bind, help=f"ZeroMQ endpoint (default {d.bind})")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--max-snapshots", type=int, default=d.max_snapshots)
    p.add_argument("--max-snapshots-per-client", type=int, default=d.max_snapshots_per_client)
    p.add_argument("--policy", choices=PROMPT_POLICIES, default=d.policy, help="what the scene does during a prompt")
    p.add_argument("--max-episode-steps", type=int, default=d.max_episode_steps, help="0: never truncate")
    p.add_argument("--latency-budget-ms", type=float, default=None, help="default per-session budget")
    p.add_argument("--steps", "--sampler-steps", dest="steps", type=steps_arg, default=None, metavar="N|adaptive",
                   help="denoising steps per frame: N fixed, or 'adaptive' (a distilled student's confidence head "
                        "ends each frame after 1 to k_max steps); default: the checkpoint's own (a student: adaptive)")
    p.add_argument("--tau", type=float, default=None,
                   help=f"confidence threshold of adaptive steps, in [0, 1] (default {AllocatorConfig.tau:g}); "
                        "lower: fewer steps per frame")
    p.add_argument("--overlap", action="store_true",
                   help="step the engine on a thread of its own, so socket work overlaps the GPU's (default: on "
                        "the loop's thread, which served more frames/s in the 64-session measurement)")
    p.add_argument("--split-batches-at", type=int, default=d.split_batches_at, metavar="N",
                   help=f"with --overlap and N or more sessions stepping, a batch takes half of them, so one half's "
                        f"replies are sent while the other half is on the GPU (default {d.split_batches_at}; 0: never)")
    p.add_argument("--record", default=None, metavar="DIR", help="write every session as a recording into DIR")
    p.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                   help="leave the objects made at start-up (model, CUDA graphs, imports) to the garbage collector's "
                        "full collections (default: frozen out of them once the engine is warm; gc.freeze)")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE")
    p.add_argument("--curve-allowed-keys", default=None, metavar="DIR")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without CURVE")
    p.add_argument("--make-keys", default=None, metavar="DIR", help="write CURVE certificates into DIR and exit")
    args = p.parse_args(argv)
    if args.make_keys:
        make_keys(args.make_keys)
        return 0
    config = ServerConfig(bind=args.bind, max_sessions=args.max_sessions, batch_wait_ms=args.batch_wait_ms,
                          idle_timeout_s=args.idle_timeout, max_message_bytes=args.max_message_bytes,
                          max_snapshots=args.max_snapshots, max_snapshots_per_client=args.max_snapshots_per_client,
                          policy=args.policy, max_episode_steps=args.max_episode_steps or None,
                          latency_budget_ms=args.latency_budget_ms, record_dir=args.record,
                          curve_secret_key=args.curve_secret_key, curve_allowed_keys=args.curve_allowed_keys,
                          insecure=args.insecure, overlap=args.overlap,
                          split_batches_at=args.split_batches_at)
    from sim.bundle import shipped_checkpoint
    from sim.checkpoint import CheckpointError
    from sim.engine import WorldSim
    checkpoint = args.checkpoint or shipped_checkpoint(args.scene or "maze")
    if checkpoint is None:
        print(f"dsa-sim: this install ships no model of scene {args.scene or 'maze'!r}; pass --checkpoint DIR",
              file=sys.stderr)
        return 2
    try:
        check_bind(config)
        engine = WorldSim.load(checkpoint, num_sessions=config.max_sessions, device=args.device, verbose=True)
        steps = configure_steps(engine, args.steps, args.tau)
        warm_s = engine.warmup()  # every batch-size bucket captured before the first client
        if warm_s > 0.5:
            print(f"dsa-sim server: CUDA graphs of every batch size captured in {warm_s:.1f} s", flush=True)
        server = Server(Host(engine, config, scene=args.scene, checkpoint=str(checkpoint)), config)
        if args.gc_freeze:
            # the model, its CUDA graphs and the imports are the server's for life: out of the collector's
            # sight, a full collection walks only what serving made, not the whole heap
            gc.collect()
            gc.freeze()
    except (CheckpointError, ValueError, OSError, RuntimeError) as e:
        print(f"dsa-sim: {e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    print(f"dsa-sim server: scene {server.host.scene!r} on {server.endpoint}, {config.max_sessions} sessions, "
          f"{steps}, protocol {PROTOCOL_VERSION}", flush=True)
    server.serve()
    print("dsa-sim server: stopped, sessions closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
