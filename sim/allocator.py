"""Dynamic step allocation: after each denoising step, which sessions stop and which go on.

Per session and frame, after step k with confidence c (the confidence head's estimate that
this step's x0 is as good as more steps would make it):

    stop  if k >= k_max
    stop  if k >= k_min and c >= tau                 (mode "adaptive" or "budget")
          (or c >= tau_steps[k-1]: one threshold per step, when tau_steps is given)
    stop  if k >= fixed_steps                         (mode "fixed")
    stop  if the next step cannot finish in budget    (mode "budget": every session of the frame)

The budget is a per-frame latency budget in ms. A cost model, measured per batch size, says
what one more step for the b sessions still running would take, and what finishing the frame
(cache pass + decode for all sessions) takes; a frame never starts a step it cannot finish
in budget. `target_mean_steps` makes tau follow the observed step count (a slow integral
controller), so a server can hold an average cost whatever the content.

Per-step thresholds exist because a head trained toward "x0 after step k is as good as x0
after k_max" learns the step index first: its confidence climbs with k (a measured student
averaged 0.28, 0.31, 0.51, 0.99 after steps 1-4) and ranks frames only within a step, so one
tau mostly picks a step count for every frame. `calibrate_tau_steps` sets each step's
threshold at a quantile of that step's confidences, so that the `share` of frames the head
rates most confident at each step stops there.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

MODES = ("fixed", "adaptive", "budget")


@dataclass
class AllocatorConfig:
    mode: str = "adaptive"
    k_min: int = 1
    k_max: int = 4
    tau: float = 0.9  # confidence threshold (adaptive, budget)
    fixed_steps: int = 4  # steps per frame in mode "fixed"
    budget_ms: float = 0.0  # per-frame latency budget (mode "budget")
    target_mean_steps: float = 0.0  # > 0: adapt tau online to hold this mean step count
    tau_rate: float = 0.02  # how far tau moves per frame per step of error
    tau_steps: tuple[float, ...] = ()  # thresholds after steps 1..k_max-1 (replace tau when given)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown allocator mode {self.mode!r}; choose one of {MODES}")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}")
        if self.mode == "fixed" and not 1 <= self.fixed_steps <= self.k_max:
            raise ValueError(f"fixed_steps must lie in [1, k_max={self.k_max}], got {self.fixed_steps}")
        if self.mode == "budget" and self.budget_ms <= 0:
            raise ValueError("mode 'budget' needs budget_ms > 0")
        self.tau_steps = tuple(float(t) for t in self.tau_steps)
        if self.tau_steps and len(self.tau_steps) != self.k_max - 1:
            raise ValueError(f"tau_steps needs one threshold per step before k_max ({self.k_max - 1}), "
                             f"got {len(self.tau_steps)}")
        if not all(0.0 <= t <= 1.0 for t in self.tau_steps):
            raise ValueError(f"tau_steps must lie in [0, 1], got {self.tau_steps}")
        if self.tau_steps and self.target_mean_steps > 0:
            raise ValueError("target_mean_steps moves the single tau: it does not combine with tau_steps")


def calibrate_tau_steps(traces, share: float, k_max: int) -> tuple[float, ...]:
    """Per-step thresholds from the confidence traces of frames that ran all k_max steps.

    traces: per frame, its confidences after steps 1..k_max (a fixed-k_max run's
    `confidence_trace`s). After step k the threshold is the (1 - share) quantile of the
    step-k confidences of the frames that earlier thresholds let run on (confidences of one
    frame are correlated across steps: the frames left at step 2 are the doubtful ones of
    step 1), so about `share` of the frames still running stop at each step.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must lie in (0, 1), got {share}")
    conf = np.asarray([t[: k_max - 1] for t in traces], dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] == 0 or conf.shape[1] != k_max - 1:
        raise ValueError(f"need traces of at least {k_max - 1} steps, got an array of shape {conf.shape}")
    running = np.ones(conf.shape[0], dtype=bool)
    taus = []
    for k in range(k_max - 1):
        # no frame left to calibrate on: nobody stops here (1.0 is cleared by a certain head only)
        tau = float(np.quantile(conf[running, k], 1.0 - share)) if running.any() else 1.0
        taus.append(tau)
        running &= conf[:, k] < tau
    return tuple(taus)


class StepCostModel:
    """Measured wall time of one denoising step per batch size, and of finishing a frame.

    Keeps the median of the last few measurements per batch size; an unmeasured size is
    estimated from the nearest larger measured one (never optimistic), else the largest.
    """

    def __init__(self, history: int = 32):
        self.step_ms: dict[int, deque] = defaultdict(lambda: deque(maxlen=history))
        self.finish_ms: dict[int, deque] = defaultdict(lambda: deque(maxlen=history))

    def record_step(self, batch: int, ms: float) -> None:
        self.step_ms[batch].append(ms)

    def record_finish(self, batch: int, ms: float) -> None:
        self.finish_ms[batch].append(ms)

    @staticmethod
    def _estimate(table: dict[int, deque], batch: int) -> float:
        known = sorted(b for b, v in table.items() if v)
        if not known:
            return 0.0
        larger = [b for b in known if b >= batch]
        return float(np.median(table[larger[0] if larger else known[-1]]))

    def step(self, batch: int) -> float:
        return self._estimate(self.step_ms, batch)

    def finish(self, batch: int) -> float:
        return self._estimate(self.finish_ms, batch)


class StepAllocator:
    """Decides, step by step, which sessions of a frame stop. One instance per engine."""

    def __init__(self, cfg: AllocatorConfig, cost: StepCostModel | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.cfg = cfg
        self.cost = cost or StepCostModel()
        self.clock = clock  # seconds; tests pass a fake clock
        self.tau = cfg.tau
        self._frame_start = 0.0

    def begin_frame(self) -> None:
        self._frame_start = self.clock()

    def elapsed_ms(self) -> float:
        return (self.clock() - self._frame_start) * 1e3

    def stop(self, k: int, confidence: np.ndarray, frame_batch: int) -> np.ndarray:
        """After step k for the sessions still running (confidence [b]): bool [b], True = stop.

        frame_batch: sessions in this frame (all of them pay the finishing passes).
        """
        cfg = self.cfg
        conf = np.asarray(confidence, dtype=np.float64)
        b = conf.shape[0]
        if k >= cfg.k_max:
            return np.ones(b, dtype=bool)
        if cfg.mode == "fixed":
            return np.full(b, k >= cfg.fixed_steps)
        tau = cfg.tau_steps[k - 1] if cfg.tau_steps else self.tau
        done = (k >= cfg.k_min) & (conf >= tau)
        if cfg.mode == "budget":
            going = int((~done).sum())
            if going and self.elapsed_ms() + self.cost.step(going) + self.cost.finish(frame_batch) > cfg.budget_ms:
                done[:] = True
        return done

    def decided(self, k: int) -> bool | None:
        """After step k, is the outcome the same for every session whatever its confidence (True:
        all stop, False: all go on), or does it need the confidences (None)? When decided, the
        engine launches what comes next without waiting to read the confidences back."""
        cfg = self.cfg
        if k >= cfg.k_max:
            return True
        if cfg.mode == "fixed":
            return k >= cfg.fixed_steps
        return None

    def can_start(self, k: int, batch: int, frame_batch: int) -> bool:
        """May step k (1-based) start for `batch` sessions? Step 1 always runs: a frame needs one."""
        if self.cfg.mode != "budget" or k == 1:
            return True
        return self.elapsed_ms() + self.cost.step(batch) + self.cost.finish(frame_batch) <= self.cfg.budget_ms

    def end_frame(self, steps: np.ndarray) -> None:
        """Feed back the steps every session took (for the mean-steps controller)."""
        target = self.cfg.target_mean_steps
        if target > 0 and len(steps):
            # more steps than wanted -> lower tau (stop sooner), and the reverse
            self.tau = float(np.clip(self.tau - self.cfg.tau_rate * (np.mean(steps) - target), 0.0, 1.0))
