"""The contract every scene keeps: a vectorised game, its Gymnasium face, and policies.

A scene is written once, vectorised over N environments (`Game`): its state lives in
arrays with a leading env axis, `step` advances all of them, `render` draws all of them.
The single-environment Gymnasium env (`SceneEnv`) is that same game with N = 1, so the
batched path used by the training data stream and the one-by-one path used by agents and
tests cannot drift apart.

Determinism: every env owns the randomness of its world. Env i of a batch reset with seed
s produces, bit for bit, the frames a lone env reset with seed s produces under the same
actions.

Actions are key vectors: `MultiBinary(len(ACTIONS))`, one entry per key in the scene's
action table (`Game.ACTIONS`), 1 = held this tick.
"""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

TICK_RATE_HZ = 20


class ActionError(ValueError):
    """An action that does not fit a scene's action table."""


class Game:
    """Vectorised game state for `num_envs` worlds. Subclasses fill in the game.

    Subclasses set `name`, `ACTIONS` (key names, in vector order) and implement
    `_reset(env_ids, seeds)`, `_step(keys) -> (reward, terminated)`, `render()` and
    `coverage()`. `reset` and `step` here validate input and keep the tick counter.
    """

    name: str = ""
    ACTIONS: tuple[str, ...] = ()
    POLICIES: dict[str, type] = {}  # filled per scene: "random" and "explore"

    def __init__(self, num_envs: int = 1, width: int = 128, height: int = 128):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if width < 16 or height < 16 or width % 8 or height % 8:
            raise ValueError(f"resolution must be multiples of 8 and at least 16x16, got {width}x{height}")
        self.num_envs = int(num_envs)
        self.width = int(width)
        self.height = int(height)
        self.tick = np.zeros(self.num_envs, dtype=np.int64)  # ticks since each env's reset
        self.seeds = np.zeros(self.num_envs, dtype=np.int64)
        self._was_reset = False

    @property
    def num_actions(self) -> int:
        return len(self.ACTIONS)

    # ---- public, validated -------------------------------------------------------------
    def reset(self, seeds: Sequence[int] | int, env_ids: Sequence[int] | None = None) -> np.ndarray:
        """(Re)build the worlds of `env_ids` (default: all) from `seeds`; return all frames."""
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids, dtype=np.int64).reshape(-1)
        seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), ids.shape)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise IndexError(f"env_ids must lie in [0, {self.num_envs}), got {ids.tolist()}")
        if (seeds < 0).any():
            raise ValueError("seeds must be non-negative integers")
        if env_ids is None:
            self._was_reset = True
        elif not self._was_reset and set(ids.tolist()) != set(range(self.num_envs)):
            raise RuntimeError("reset all envs once before resetting a subset")
        self._was_reset = True
        self.tick[ids] = 0
        self.seeds[ids] = seeds
        self._reset(ids, seeds)
        return self.render()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        """Advance every env one tick. actions: [N, A] key vector -> (reward f32[N], terminated bool[N])."""
        if not self._was_reset:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        keys = self.check_actions(actions)
        reward, terminated = self._step(keys)
        self.tick += 1
        return np.asarray(reward, dtype=np.float32), np.asarray(terminated, dtype=bool)

    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate a batch of key vectors; return bool [N, A]. One clear error otherwise."""
        expected = f"{self.name} expects actions of shape ({self.num_envs}, {self.num_actions}) with 0/1 entries for keys {list(self.ACTIONS)}"
        try:
            arr = np.asarray(actions)
        except Exception as e:  # ragged lists and the like
            raise ActionError(f"{expected}; got an object numpy cannot read as an array ({e})") from None
        if arr.shape != (self.num_envs, self.num_actions):
            raise ActionError(f"{expected}; got shape {arr.shape}")
        if arr.dtype == bool:
            return arr
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ActionError(f"{expected}; got dtype {arr.dtype}")
        if not np.isin(arr, (0, 1)).all():
            raise ActionError(f"{expected}; got values outside {{0, 1}}: {np.unique(arr)[:8].tolist()}")
        return arr.astype(bool)

    # ---- per scene ---------------------------------------------------------------------
    def _reset(self, env_ids: np.ndarray, seeds: np.ndarray) -> None:
        raise NotImplementedError

    def _step(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        """uint8 [N, H, W, 3] frames of every env's current state."""
        raise NotImplementedError

    def coverage(self) -> np.ndarray:
        """float32 [N]: share of each world's reachable area visited since its reset."""
        raise NotImplementedError


class SceneEnv(gymnasium.Env):
    """A scene as a Gymnasium env: one `Game` with a single world.

    Observation: the rendered frame, uint8 [H, W, 3]. Action: MultiBinary(len(ACTIONS)).
    Episodes end when the game says so (terminated) or after `max_episode_steps` (truncated).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICK_RATE_HZ}
    game_cls: type[Game] = Game

    def __init__(self, render_mode: str | None = "rgb_array", width: int = 128, height: int = 128,
                 max_episode_steps: int = 2000, **options: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self.game = self.game_cls(1, width=width, height=height, **options)
        self.max_episode_steps = int(max_episode_steps)
        self.action_space = spaces.MultiBinary(self.game.num_actions)
        self.observation_space = spaces.Box(0, 255, (height, width, 3), dtype=np.uint8)
        self._frame: np.ndarray | None = None

    @property
    def actions(self) -> tuple[str, ...]:
        return self.game.ACTIONS

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        world_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self._frame = self.game.reset([world_seed])[0]
        return self._frame.copy(), {"seed": world_seed}

    def step(self, action: Any):
        if self._frame is None:
            raise RuntimeError(f"{self.game.name}: call reset() before step()")
        try:
            arr = np.asarray(action)
        except Exception as e:  # ragged lists and the like
            raise ActionError(f"{self.game.name} expects an action of shape ({self.game.num_actions},) with 0/1 "
                              f"entries for keys {list(self.game.ACTIONS)}; got an object numpy cannot read ({e})") from None
        if arr.shape != (self.game.num_actions,):
            raise ActionError(
                f"{self.game.name} expects an action of shape ({self.game.num_actions},) with 0/1 entries "
                f"for keys {list(self.game.ACTIONS)}; got shape {arr.shape}")
        reward, terminated = self.game.step(arr[None])
        self._frame = self.game.render()[0]
        truncated = bool(self.game.tick[0] >= self.max_episode_steps) and not bool(terminated[0])
        return self._frame.copy(), float(reward[0]), bool(terminated[0]), truncated, {"tick": int(self.game.tick[0])}

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._frame is None:
            raise RuntimeError(f"{self.game.name}: call reset() before render()")
        return self._frame.copy()


# ---- policies ----------------------------------------------------------------------------
class Policy:
    """Chooses key vectors for every env of a game. `__call__(game) -> bool [N, A]`.

    Policies are seeded; `reset(env_ids)` is called when envs of the game are reset.
    """

    def __init__(self, game: Game, seed: int = 0):
        self.num_envs = game.num_envs
        self.num_actions = game.num_actions
        self.rng = np.random.default_rng(seed)
        # one stream per env, so env i's choices do not depend on how many envs share the batch
        self.env_rngs = [np.random.default_rng([seed, i]) for i in range(self.num_envs)]

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        pass

    def __call__(self, game: Game) -> np.ndarray:
        raise NotImplementedError


class PersistentRandom(Policy):
    """Random keys held for a random number of ticks: what a restless player does.

    Each env holds a key combination for `hold` ticks (uniform in [min, max]), then draws a
    new one: with probability `p_idle` nothing, else one key, sometimes two.
    `exclusive` lists pairs of keys never held together (e.g. left and right).
    """

    def __init__(self, game: Game, seed: int = 0, hold: tuple[int, int] = (2, 12),
                 p_idle: float = 0.1, p_two: float = 0.3,
                 exclusive: Sequence[tuple[int, int]] = ()):
        super().__init__(game, seed)
        self.hold = hold
        self.p_idle = p_idle
        self.p_two = p_two
        self.exclusive = tuple(exclusive)
        self.keys = np.zeros((self.num_envs, self.num_actions), dtype=bool)
        self.left = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, env_ids=None):
        ids = slice(None) if env_ids is None else np.asarray(env_ids)
        self.left[ids] = 0

    def __call__(self, game: Game) -> np.ndarray:
        for i in np.flatnonzero(self.left <= 0):
            rng = self.env_rngs[i]
            self.keys[i] = False
            if rng.random() >= self.p_idle:
                n = 2 if rng.random() < self.p_two else 1
                for k in rng.choice(self.num_actions, size=n, replace=False):
                    self.keys[i, k] = True
                for a, b in self.exclusive:
                    if self.keys[i, a] and self.keys[i, b]:
                        self.keys[i, b] = False
            self.left[i] = rng.integers(self.hold[0], self.hold[1] + 1)
        self.left -= 1
        return self.keys.copy()


def make_policy(game: Game, name: str, seed: int = 0) -> Policy:
    """Build one of the game's policies by name ("random", "explore")."""
    if name not in game.POLICIES:
        raise ValueError(f"unknown policy {name!r} for scene {game.name!r}; choose from {sorted(game.POLICIES)}")
    return game.POLICIES[name](game, seed=seed)
