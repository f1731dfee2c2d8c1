"""Ground-truth games: the world the model learns, the data source, the judge of quality.

    import scenes
    scenes.names()                      # ['dungeon', 'maze', 'platformer']
    env = scenes.make("maze")           # a gymnasium.Env, 128x128 frames
    game = scenes.make_batch("maze", 64)  # the vectorised game behind it, for data streams
"""
from __future__ import annotations

from typing import Any

from scenes.core import ActionError, Game, PersistentRandom, Policy, SceneEnv, make_policy
from scenes.dungeon import Dungeon, DungeonEnv
from scenes.maze import Maze, MazeEnv
from scenes.platformer import Platformer, PlatformerEnv

SCENES: dict[str, tuple[type[Game], type[SceneEnv]]] = {
    "dungeon": (Dungeon, DungeonEnv),
    "maze": (Maze, MazeEnv),
    "platformer": (Platformer, PlatformerEnv),
}

__all__ = ["ActionError", "Game", "PersistentRandom", "Policy", "SceneEnv", "SCENES",
           "make", "make_batch", "make_policy", "names", "game_class"]


def names() -> list[str]:
    return sorted(SCENES)


def game_class(name: str) -> type[Game]:
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; choose one of {names()}")
    return SCENES[name][0]


def make(name: str, **options: Any) -> SceneEnv:
    """One scene as a Gymnasium env. Options: width, height, max_episode_steps, and the scene's own."""
    game_class(name)
    return SCENES[name][1](**options)


def make_batch(name: str, num_envs: int, **options: Any) -> Game:
    """The vectorised game: `num_envs` worlds stepped and rendered together."""
    return game_class(name)(num_envs, **options)
