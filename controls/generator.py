"""What feeds the window its frames: the model on its own thread, or a recording played back.

Pacing. The window runs at a fixed tick rate and never waits for the model. Each tick it
offers the input held now (`LiveInput.offer`) and says a frame is due (`Generator.tick`).
The generator thread starts a frame when one is due, taking the newest input at that
moment, so:
- a model faster than the tick makes one frame per tick and idles in between;
- a slower one makes frames back to back, each from the input held when it started: ticks
  that pass meanwhile leave one frame due, not a backlog, and inputs are overwritten, never
  queued (a key pressed and released within one frame still counts once, so taps are not lost).
The window keeps drawing the last frame at the tick rate and the HUD says how far the model
is behind.

Commands (reset, new world, re-sync, steps) are queued to the thread and run between two
frames, so the engine is only ever touched by one thread.

    gen = Generator(session, LiveInput(A), steps=4, seed=7).start()   # prompts from world 7 first
    each tick: live.offer(held, pressed); gen.tick(); for result in gen.drain(): ...
    gen.command("prompt", None, "reset"); gen.command("resync"); gen.command("steps", 6 or None)
    gen.stop()
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

import scenes
from controls.recording import FrameRecord, PromptRecord, Record
from controls.session import PlaySession


@dataclass
class Result:
    """One thing the producer made: a prompt, a frame, or the end of its input."""
    record: Record | None        # None: the input ran out (end of a re-run or replay)
    started: float               # perf_counter when its input was taken
    finished: float              # perf_counter when it was ready
    recorded: FrameRecord | None = None  # re-runs: what the recording held for this frame


# ---- action sources: what the generator asks at the start of each frame ----------------------
class LiveInput:
    """The newest input from the window: one slot, overwritten every tick, never a queue."""

    def __init__(self, num_actions: int):
        self._lock = threading.Lock()
        self._held = np.zeros(num_actions, dtype=bool)
        self._pressed = np.zeros(num_actions, dtype=bool)  # pressed since the last take

    def offer(self, held: np.ndarray, pressed: np.ndarray) -> None:
        with self._lock:
            self._held = np.asarray(held, bool).copy()
            self._pressed |= np.asarray(pressed, bool)

    def take(self) -> np.ndarray:
        """float32 [A]: held now, or pressed since the last frame started."""
        with self._lock:
            action = self._held | self._pressed
            self._pressed[:] = False
        return action.astype(np.float32)


class PolicyInput:
    """A scene policy playing on the session's real world (headless runs have no keyboard)."""

    def __init__(self, session: PlaySession, name: str, seed: int = 0):
        self.session = session
        self.name = name
        if name != "idle":
            self.policy = scenes.make_policy(session.game, name, seed=seed)

    def take(self) -> np.ndarray:
        if self.name == "idle":
            return np.zeros(self.session.num_actions, np.float32)
        return self.policy(self.session.game)[0].astype(np.float32)


class RecordedInput:
    """A recording's prompts and actions in order (a re-run); None once it is used up."""

    def __init__(self, records: Iterable[Record]):
        self._records: Iterator[Record] = iter(records)

    def take(self) -> Record | None:
        return next(self._records, None)


def produce(session: PlaySession, source, steps: int | None) -> Result:
    """Take the next input from `source` and make what it asks for (synchronous)."""
    started = time.perf_counter()
    item = source.take()
    if item is None:
        return Result(None, started, started)
    if isinstance(item, PromptRecord):
        session.follow(item)
        return Result(item, started, time.perf_counter())
    if isinstance(item, FrameRecord):  # a re-run: the recorded steps, so the same frames come out
        return Result(session.step(item.action, item.steps), started, time.perf_counter(), recorded=item)
    return Result(session.step(item, steps), started, time.perf_counter())


# ---- the generator thread ---------------------------------------------------------------------
class Generator:
    """The session on a background thread, one frame per due tick at most."""

    def __init__(self, session: PlaySession, source, steps: int | None, seed: int, prompt: bool = True):
        """steps: a fixed count per frame, or None for the session's adaptive allocation.
        prompt: prompt from the real world `seed` first (a re-run's source brings its own prompts)."""
        self.session, self.source = session, source
        self.steps = None if steps is None else int(steps)
        self.seed = int(seed)
        self.prompt_first = prompt
        self.paused = False
        self.finished = False
        self._cond = threading.Condition()
        self._due = False
        self._stopping = False
        self._commands: deque[tuple] = deque()
        self._results: deque[Result | BaseException] = deque()
        self._thread = threading.Thread(target=self._run, name="dsa-sim-generator", daemon=True)

    @property
    def steps_mode(self) -> str:
        """"fixed", or the adaptive allocator's mode ("adaptive", "budget")."""
        return "fixed" if self.steps is not None else self.session.allocation.mode

    @property
    def max_steps(self) -> int:
        return self.session.max_steps

    @property
    def adaptive_capable(self) -> bool:
        return self.session.adaptive_capable

    # ---- called from the window's thread ----------------------------------------------------
    def start(self) -> "Generator":
        if self.prompt_first:
            self.command("prompt", self.seed, "start")
        self._thread.start()
        return self

    def tick(self) -> None:
        with self._cond:
            self._due = True
            self._cond.notify()

    def command(self, name: str, *args) -> None:
        with self._cond:
            self._commands.append((name, *args))
            self._cond.notify()

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self.paused = paused
            self._due = False  # a resume starts from the input held then, not from before the pause
            self._cond.notify()

    def drain(self) -> list[Result]:
        """Everything made since the last call, in order; re-raises an error of the thread."""
        with self._cond:
            out = list(self._results)
            self._results.clear()
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the thread ---------------------------------------------------------------------------
    def _do(self, name: str, *args) -> Result | None:
        t = time.perf_counter()
        if name == "prompt":  # (seed, reason)
            record = self.session.prompt(args[0], args[1])
        elif name == "resync":
            record = self.session.resync()
        elif name == "steps":  # (count): fixed from now on; (None): back to adaptive allocation
            if args[0] is None:
                self.session.use_adaptive_steps()
                self.steps = None
            else:
                self.steps = int(min(max(1, args[0]), self.session.max_steps))
            return None
        else:
            raise ValueError(f"unknown generator command {name!r}")
        return Result(record, t, time.perf_counter())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._commands and not (self._due and not self.paused and not self.finished):
                    self._cond.wait()
                if self._stopping:
                    return
                command = self._commands.popleft() if self._commands else None
                if command is None:
                    self._due = False
            try:
                result = self._do(*command) if command else produce(self.session, self.source, self.steps)
            except BaseException as e:  # shown by the window's thread, which owns the exit
                result = e
            with self._cond:
                if isinstance(result, Result) and result.record is None:
                    self.finished = True
                if result is not None:
                    self._results.append(result)
                if isinstance(result, BaseException):
                    return


# ---- a recording played back ------------------------------------------------------------------
class ReplayPlayer:
    """A recording's frames at the ticks they were shown; no model. Same interface as Generator."""

    def __init__(self, records: list[Record]):
        self.records = records
        self.paused = False
        self.finished = False
        self.steps = 0
        self.steps_mode = "recorded"
        self.max_steps = 1
        self.adaptive_capable = False
        self._next = 0
        self._clock = 0        # replay ticks so far
        self._offset = 0       # recorded tick that replay tick 0 stands for
        self._out: list[Result] = []

    def start(self) -> "ReplayPlayer":
        self.command("reset")
        return self

    def tick(self) -> None:
        if self.paused or self.finished:
            return
        now = time.perf_counter()
        # every record up to this tick: a frame shown for several ticks stays up until the next
        while self._next < len(self.records) and self.records[self._next].tick - self._offset <= self._clock:
            record = self.records[self._next]
            took = record.latency_ms / 1e3 if isinstance(record, FrameRecord) else 0.0
            self._out.append(Result(record, now - took, now))  # the HUD shows the recorded latency
            self._next += 1
        if self._next >= len(self.records):
            self.finished = True
            self._out.append(Result(None, now, now))
        self._clock += 1

    def command(self, name: str, *args) -> None:
        if name in ("reset", "new_world", "prompt"):  # play again from the start
            self._next, self._clock, self.finished = 0, 0, False
            self._offset = self.records[0].tick if self.records else 0

    def set_paused(self, paused: bool) -> None:
        self.paused = paused

    def drain(self) -> list[Result]:
        out, self._out = self._out, []
        return out

    def stop(self, timeout: float = 0.0) -> None:
        pass
