"""One player's session: the dream (the world model) and, in lockstep beside it, reality (the scene).

    session = PlaySession(sim, "maze")
    session.use_fixed_steps(4)             # or use_adaptive_steps(budget_ms=50) for a distilled student
    prompt = session.prompt(seed=7)        # real frames of world 7 prompt the model
    frame = session.step(action)           # float32 [A] -> FrameRecord (dream, real, PSNR)
    prompt = session.resync()              # the dream restarts from reality's last frames

Both worlds always get the same actions, one real tick per generated frame, so reality is
there to prompt from (reset, new world), to re-sync from, and to score the dream against
(PSNR each frame); a scene tick costs about 0.5 ms against 60+ ms for a generated frame on a
CPU. Showing it is a choice of the window (`--side-by-side`). Synchronous: the threading
lives in `controls.generator`.
"""
from __future__ import annotations

import argparse
from collections import deque

import numpy as np

import scenes
from controls.recording import FrameRecord, PromptRecord
from sim.metrics import psnr

PROMPT_POLICIES = ("idle", "explore", "random")
MAX_TEACHER_STEPS = 64


def noise_seed_for(world_seed: int, prompt_index: int) -> int:
    """The engine's noise seed for the n-th prompt of a session: fixed by (world, n), so a re-run matches."""
    return int(np.random.SeedSequence([int(world_seed), int(prompt_index)]).generate_state(1)[0])



def steps_arg(text: str) -> int | str:
    """The --steps flag of play.py and the server: a whole number >= 1, or 'adaptive'."""
    if text == "adaptive":
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"--steps takes a whole number >= 1 or 'adaptive', not {text!r}")
    return steps

class PlaySession:
    """The engine's session 0 and a one-world scene of the same resolution.

    prompt_policy: what the real world does during the K prompt ticks after a reset:
    "idle" (no keys: the player stands at the spawn, K equal frames) or a scene policy.
    """

    def __init__(self, sim, scene: str | None = None, prompt_policy: str = "idle"):
        self.sim = sim
        self.scene = scene or sim.scene
        if self.scene is None:
            raise ValueError("the checkpoint names no scene; pass --scene")
        game_cls = scenes.game_class(self.scene)
        if sim.scene is not None and sim.scene != self.scene:
            raise ValueError(f"the checkpoint is a model of scene {sim.scene!r}, not {self.scene!r}")
        if sim.actions and list(sim.actions) != list(game_cls.ACTIONS):
            raise ValueError(f"the checkpoint's actions {sim.actions} differ from scene {self.scene!r}'s {list(game_cls.ACTIONS)}")
        if prompt_policy not in PROMPT_POLICIES:
            raise ValueError(f"prompt policy must be one of {PROMPT_POLICIES}, got {prompt_policy!r}")
        H, W, _ = sim.frame_shape
        self.game = scenes.make_batch(self.scene, 1, width=W, height=H)
        self.actions = list(game_cls.ACTIONS)
        self.num_actions = len(self.actions)
        self.context = sim.context_frames
        self.prompt_policy = prompt_policy
        self.fixed_steps: int | None = None  # the fixed step count in force; None: the allocator decides
        self.allocation = None                # the adaptive AllocatorConfig to return to (students)
        self.world_seed: int | None = None
        self.prompts = 0          # prompts so far; numbers the noise seeds
        self.frames = 0           # frames generated since the last prompt
        self.real_terminated = False
        # the real world's last K (frame, action): what a re-sync prompts from
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.context)

    # ---- steps per frame -------------------------------------------------------------------
    @property
    def adaptive_capable(self) -> bool:
        """A distilled student: the engine can end each frame when its confidence head says so."""
        return bool(getattr(self.sim, "few_step", False))

    @property
    def max_steps(self) -> int:
        return int(self.sim.levels.numel() - 1) if self.adaptive_capable else MAX_TEACHER_STEPS

    def use_fixed_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"this model takes 1 to {self.max_steps} steps per frame, not {steps}")
        if steps != self.fixed_steps:  # a student's allocator is rebuilt on each change, so only on a change
            self.sim.sampler_steps = steps
            self.fixed_steps = steps

    def use_adaptive_steps(self, budget_ms: float | None = None, tau: float | None = None) -> None:
        """Dynamic step allocation (students only): stop at confidence >= tau; with a budget, also
        never start a step that cannot finish within budget_ms."""
        from sim.allocator import AllocatorConfig

        if not self.adaptive_capable:
            raise ValueError("this checkpoint is a many-step teacher; adaptive steps need a distilled student")
        if budget_ms is not None or tau is not None or self.allocation is None:
            base = self.allocation or AllocatorConfig(k_max=self.max_steps, fixed_steps=self.max_steps)
            self.allocation = AllocatorConfig(mode="budget" if budget_ms else "adaptive", k_min=base.k_min,
                                              k_max=self.max_steps, tau=base.tau if tau is None else tau,
                                              fixed_steps=self.max_steps, budget_ms=budget_ms or 0.0)
        self.sim.set_allocator(self.allocation)
        self.fixed_steps = None

    # ---- prompts --------------------------------------------------------------------------
    def _real_prompt(self, world_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Reset reality at `world_seed` and roll it K - 1 ticks: frames uint8 [K, H, W, 3], actions [K, A]."""
        self.history.clear()
        self.real_terminated = False
        frame = self.game.reset([int(world_seed)])[0]
        action = np.zeros(self.num_actions, np.float32)  # the frame right after a reset had no keys
        self.history.append((frame, action))
        policy = None if self.prompt_policy == "idle" else scenes.make_policy(self.game, self.prompt_policy, seed=int(world_seed))
        for _ in range(self.context - 1):
            keys = np.zeros((1, self.num_actions), bool) if policy is None else policy(self.game)
            self.game.step(keys)
            self.history.append((self.game.render()[0], keys[0].astype(np.float32)))
        return self._history()

    def _history(self) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([f for f, _ in self.history]), np.stack([a for _, a in self.history])

    def apply(self, prompt: PromptRecord) -> None:
        """Prompt the engine with a prompt record's frames (as recorded: a re-run takes this path)."""
        self.sim.reset(prompt.frames[None], prompt.actions[None], seeds=[prompt.noise_seed])
        self.prompts += 1
        self.frames = 0

    def prompt(self, seed: int | None = None, reason: str = "start") -> PromptRecord:
        """Reset reality at `seed` (default: the current world's) and prompt the dream from it."""
        self.world_seed = int(self.world_seed if seed is None else seed)
        frames, actions = self._real_prompt(self.world_seed)
        record = PromptRecord(0, frames, actions, self.world_seed, noise_seed_for(self.world_seed, self.prompts), reason)
        self.apply(record)
        return record

    def resync(self) -> PromptRecord:
        """Prompt the dream from reality's last K frames: the dream catches up with where reality is."""
        if self.world_seed is None:
            return self.prompt(0)
        frames, actions = self._history()
        record = PromptRecord(0, frames, actions, self.world_seed, noise_seed_for(self.world_seed, self.prompts), "resync")
        self.apply(record)
        return record

    def follow(self, prompt: PromptRecord) -> None:
        """Put reality where a recorded prompt says it was, then apply the prompt (re-runs).

        A prompt from a reset re-plays the world from its seed with the prompt's actions;
        a re-sync prompt came from reality as it stood, which lockstep has reproduced.
        """
        if prompt.reason != "resync" or self.world_seed != prompt.world_seed:
            self.world_seed = prompt.world_seed
            self.history.clear()
            self.real_terminated = False
            self.history.append((self.game.reset([prompt.world_seed])[0], prompt.actions[0]))
            for a in prompt.actions[1:]:
                self.game.step(a[None] > 0.5)
                self.history.append((self.game.render()[0], a))
        self.apply(prompt)

    # ---- frames ---------------------------------------------------------------------------
    def step(self, action: np.ndarray, steps: int | None = None) -> FrameRecord:
        """One generated frame under `action` (float32 or bool [A]) and one real tick under the same keys.

        steps: a fixed step count for this frame (re-runs pass the recorded one); None: as configured."""
        action = np.asarray(action, np.float32).reshape(self.num_actions)
        if steps is not None:
            self.use_fixed_steps(steps)
        frames, reports = self.sim.step(action[None])
        report = reports[0]
        _, terminated = self.game.step(action[None] > 0.5)
        self.real_terminated |= bool(terminated[0])
        real = self.game.render()[0]
        self.history.append((real, action))
        self.frames += 1
        return FrameRecord(tick=0, action=action, frame=frames[0], steps=int(report["steps"]),
                           confidence=float(report.get("confidence", float("nan"))),
                           latency_ms=float(report["latency_ms"]), real=real, psnr=float(psnr(frames[0], real)))

