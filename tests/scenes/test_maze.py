"""Maze scene: what each key does, walls and pillars, pickups, the exit, the renderer, the policies.

The generic contract (determinism, Gymnasium API, batch == lone env) is in test_contract.py.
Most tests build a state directly: a player at the centre of an open 3 x 3 patch of a room,
pillars and pickups cleared, so that one key's effect can be seen on its own.
"""
from __future__ import annotations

import numpy as np
import pytest

from scenes.maze import (BACK_SPEED, DOOR, FORWARD_SPEED, HEADINGS, PILLAR_RADIUS, PLAYER_RADIUS,
                         STRAFE_SPEED, Maze, MazeEnv, MazeExplorer, MazeRandom, bfs_distance)

KEY = {name: i for i, name in enumerate(Maze.ACTIONS)}
SMALL = dict(width=64, height=64)


def press(*names: str, n: int = 1) -> np.ndarray:
    keys = np.zeros((n, len(Maze.ACTIONS)), bool)
    for name in names:
        keys[:, KEY[name]] = True
    return keys


def in_room(seed: int = 3, heading: int = 0, **options) -> Maze:
    """A lone game with the player at the centre of a block whose 8 neighbours are open,
    facing `heading`, with no pillars and no pickups."""
    game = Maze(1, **{**SMALL, **options})
    game.reset([seed])
    free = game.grid[0] == 0
    ring = np.ones_like(free)
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            ring[1:-1, 1:-1] &= free[1 + a:free.shape[0] - 1 + a, 1 + b:free.shape[1] - 1 + b]
    ring[[0, -1]] = ring[:, [0, -1]] = False
    x, y = np.argwhere(ring)[0]
    game.pos[0] = (x + 0.5, y + 0.5)
    game.heading[0] = heading
    game.pillar_valid[:] = False
    game.pickup_alive[:] = False
    return game


def blue_blob(frame: np.ndarray) -> tuple[float, int]:
    """Mean column and pixel count of the blue gem in a frame (walls, floor, ceiling are never this blue)."""
    f = frame.astype(int)
    mask = (f[..., 2] > 150) & (f[..., 2] - f[..., 1] > 60) & (f[..., 0] < 110)
    cols = np.nonzero(mask)[1]
    return (cols.mean() if cols.size else np.nan), int(mask.sum())


def place_gem(game: Maze, distance: float, kind: int = 1, lateral: float = 0.0) -> None:
    """Put pickup slot 0 `distance` blocks ahead of the player (kind 1: blue gem)."""
    h = game.heading[0]
    game.pickup_pos[0, 0] = game.pos[0] + distance * game.dirs[h] + lateral * game.rights[h]
    game.pickup_kind[0, 0] = kind
    game.pickup_alive[0, 0] = True


# ---- the action table --------------------------------------------------------------------------
def test_action_table_and_env_docstring():
    assert Maze.ACTIONS == ("forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right")
    doc = MazeEnv.__doc__
    for name in Maze.ACTIONS:
        assert name in doc
    assert "Observation" in doc and "Rewards" in doc and "Termination" in doc


def test_forward_moves_along_the_heading_and_changes_the_view():
    game = in_room(heading=5)  # 37.5 degrees: not along a grid axis
    before, start = game.render()[0], game.pos[0].copy()
    game.step(press("forward"))
    moved = game.pos[0] - start
    assert np.allclose(moved, FORWARD_SPEED * game.dirs[5])
    assert moved @ game.dirs[5] > 0.1
    assert not np.array_equal(game.render()[0], before)


def test_back_and_strafes_move_the_right_way():
    for key, along, across in (("back", -BACK_SPEED, 0.0), ("strafe_right", 0.0, STRAFE_SPEED),
                               ("strafe_left", 0.0, -STRAFE_SPEED)):
        game = in_room(heading=7)
        start = game.pos[0].copy()
        game.step(press(key))
        moved = game.pos[0] - start
        assert np.allclose(moved, along * game.dirs[7] + across * game.rights[7]), key


def test_turning_changes_the_heading_and_the_view():
    game = in_room(heading=0)
    frame = game.render()[0]
    game.step(press("turn_left"))
    assert game.heading[0] == 1
    turned = game.render()[0]
    assert not np.array_equal(turned, frame)
    game.step(press("turn_right"))
    game.step(press("turn_right"))
    assert game.heading[0] == HEADINGS - 1
    for _ in range(HEADINGS // 4):
        game.step(press("turn_left"))
    assert game.heading[0] == HEADINGS // 4 - 1  # a full quarter turn is HEADINGS / 4 steps


def test_keys_move_the_picture_the_way_a_player_expects():
    game = in_room(heading=0)
    place_gem(game, 1.4)
    x0, size0 = blue_blob(game.render()[0])
    assert size0 > 20 and abs(x0 - 32) < 3, "the gem should sit in the middle of the view"

    def after(*keys):
        g = in_room(heading=0)
        place_gem(g, 1.4)
        g.step(press(*keys))
        return blue_blob(g.render()[0])

    assert after("turn_left")[0] > x0 + 3, "turning left moves things to the right of the view"
    assert after("turn_right")[0] < x0 - 3
    assert after("strafe_right")[0] < x0 - 1, "stepping right moves things to the left of the view"
    assert after("strafe_left")[0] > x0 + 1
    assert after("forward")[1] > size0, "walking toward a thing makes it bigger"
    assert after("back")[1] < size0

    behind = in_room(heading=0)
    place_gem(behind, -1.4)
    assert blue_blob(behind.render()[0])[1] == 0, "a gem behind the player is drawn"


def test_opposing_keys_cancel():
    game = in_room(heading=3)
    start, frame = game.pos[0].copy(), game.render()[0]
    game.step(press(*Maze.ACTIONS))
    assert np.array_equal(game.pos[0], start) and game.heading[0] == 3
    assert np.array_equal(game.render()[0], frame)


# ---- walls, pillars ----------------------------------------------------------------------------
def box_is_clear(game: Maze) -> np.ndarray:
    """[N] whether every player's collision box lies in open blocks only."""
    ok = np.ones(game.num_envs, bool)
    for sx in (-1, 1):
        for sy in (-1, 1):
            corner = (game.pos + PLAYER_RADIUS * np.array([sx, sy]) * 0.999).astype(int)
            ok &= game.grid[np.arange(game.num_envs), corner[:, 0], corner[:, 1]] == 0
    return ok


def test_walls_block():
    game = Maze(8, **SMALL)
    game.reset(np.arange(8))
    game.heading[:4] = (game.heading[:4] + 5) % HEADINGS  # half the envs walk at an angle
    for t in range(150):  # far more than any straight run: every player ends at a wall
        game.step(press("forward", n=8))
        assert box_is_clear(game).all(), f"a player entered a wall at tick {t}"
    before = game.pos.copy()
    game.step(press("forward", n=8))
    assert np.array_equal(game.pos[4:], before[4:]), "walking straight into a wall must not move"

    random = MazeRandom(game, seed=1)
    for t in range(400):
        game.step(random(game))
        assert box_is_clear(game).all(), f"a random walker entered a wall at tick {t}"


def test_walking_into_a_wall_at_an_angle_slides_along_it():
    game = Maze(1, **SMALL)
    game.reset([2])
    grid = game.grid[0]
    # an open block with a wall on its +x side and open space on its +y side
    x, y = next((x, y) for x, y in np.argwhere(grid == 0)
                if grid[x + 1, y] != 0 and grid[x, y + 1] == 0 and grid[x, y + 2] == 0)
    game.pos[0] = (x + 0.5, y + 0.5)
    game.heading[0] = HEADINGS // 8  # 45 degrees: into the wall and along it
    game.pillar_valid[:] = game.pickup_alive[:] = False
    for _ in range(10):
        game.step(press("forward"))
    assert game.pos[0, 0] <= x + 1 - PLAYER_RADIUS, "went into the wall"
    assert game.pos[0, 1] > y + 0.5 + 0.6, "did not slide along the wall"


def test_pillars_block():
    game = Maze(1, **SMALL)
    for seed in range(20):
        game.reset([seed])
        if game.pillar_valid[0].any():
            break
    pillar = game.pillar_pos[0, np.argmax(game.pillar_valid[0])]
    game.pos[0] = pillar - (1.0, 0.0)
    game.heading[0] = 0  # walk straight at it along +x
    game.pickup_alive[:] = False
    for _ in range(30):
        game.step(press("forward"))
        assert np.linalg.norm(game.pos[0] - pillar) >= PILLAR_RADIUS + PLAYER_RADIUS - 1e-9
    assert game.pos[0, 0] < pillar[0]


# ---- pickups, exit -----------------------------------------------------------------------------
def test_walking_into_a_pickup_collects_it_once():
    game = in_room(heading=0)
    place_gem(game, 0.65)
    assert blue_blob(game.render()[0])[1] > 0
    rewards = [game.step(press("forward"))[0][0] for _ in range(4)]
    assert sum(rewards) == 1.0 and rewards.count(1.0) == 1
    assert not game.pickup_alive[0, 0]
    assert blue_blob(game.render()[0])[1] == 0, "a collected gem is still drawn"


def test_reaching_the_exit_terminates_with_a_bonus():
    env = MazeEnv(**SMALL)
    env.reset(seed=5)
    game = env.unwrapped.game
    nx, ny = game.niche[0]
    steps = {(1, 0): 0, (0, 1): HEADINGS // 4, (-1, 0): HEADINGS // 2, (0, -1): 3 * HEADINGS // 4}
    (dx, dy), heading = next((d, h) for d, h in steps.items() if game.grid[0, nx + d[0], ny + d[1]] == DOOR)
    game.pos[0] = (nx + 0.5 - dx, ny + 0.5 - dy)  # the block in front of the niche, facing the door
    game.heading[0] = heading
    game.pickup_alive[:] = False
    forward = np.eye(6, dtype=np.int8)[KEY["forward"]]
    for t in range(20):
        _, reward, terminated, truncated, _ = env.step(forward)
        if terminated:
            break
    assert terminated and not truncated and reward >= 10.0
    green = env.render().astype(int)
    door = (green[..., 1] > 100) & (green[..., 1] > 2 * green[..., 0]) & (green[..., 1] > green[..., 2] + 40)
    assert door.mean() > 0.2, "the green exit door should fill much of the view"


# ---- renderer ----------------------------------------------------------------------------------
def test_sprites_are_hidden_behind_walls():
    game = in_room(heading=0)
    # walk toward +x to the wall at the end of the room, then hide a gem inside that wall
    for _ in range(60):
        game.step(press("forward"))
    wall_x = int(game.pos[0, 0] + PLAYER_RADIUS + 1e-3)
    assert game.grid[0, wall_x, int(game.pos[0, 1])] != 0
    for _ in range(5):
        game.step(press("back"))   # the wall's face is now 0.62 blocks ahead
    plain = game.render()[0]
    game.pickup_pos[0, 0] = (wall_x + 0.5, game.pos[0, 1])
    game.pickup_kind[0, 0] = 1
    game.pickup_alive[0, 0] = True
    assert np.array_equal(game.render()[0], plain), "a gem inside a wall shows through it"
    game.pickup_pos[0, 0] = game.pos[0] + (0.45, 0.0)  # the same gem in front of the wall shows
    assert blue_blob(game.render()[0])[1] > 0


@pytest.mark.parametrize("width,height", [(16, 16), (128, 64), (40, 96)])
def test_any_resolution_renders_a_rich_frame(width, height):
    game = Maze(2, width=width, height=height)
    frames = game.reset([0, 1])
    assert frames.shape == (2, height, width, 3) and frames.dtype == np.uint8
    assert all(len(np.unique(f.reshape(-1, 3), axis=0)) > 8 for f in frames)


def test_textures_are_fixed_in_the_world():
    """Standing still renders the same frame every tick (no per-frame noise)."""
    game = in_room(heading=4)
    first = game.render()[0]
    for _ in range(5):
        game.step(np.zeros((1, 6), bool))
        assert np.array_equal(game.render()[0], first)


# ---- worlds ------------------------------------------------------------------------------------
def test_worlds_are_closed_connected_and_varied():
    game = Maze(6, **SMALL)
    game.reset(np.arange(6) * 7)
    for i in range(6):
        grid, walk = game.grid[i], game.walkable[i]
        assert (grid[[0, -1]] != 0).all() and (grid[:, [0, -1]] != 0).all(), "the map must be closed"
        start = tuple(game.pos[i].astype(int))
        reach = bfs_distance(walk, start) >= 0
        assert np.array_equal(reach, walk), "some walkable block cannot be reached"
        nx, ny = game.niche[i]
        assert walk[nx, ny]
        around = [grid[nx + a, ny + b] for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        assert around.count(DOOR) == 1 and around.count(0) == 1, "the exit is a dead end ending at the door"
        assert set(np.unique(grid[grid > 0])) >= {1, 2, 3, 4}, "all four wall materials appear"
        assert (grid == 0).sum() > walk.sum() >= 2 * 12 * 12, "pillars in a maze of at least 12 x 12 cells"
        assert game.pickup_alive[i].sum() >= 16


# ---- policies ----------------------------------------------------------------------------------
def test_random_policy_never_holds_opposing_keys():
    game = Maze(8, **SMALL)
    game.reset(np.arange(8))
    policy = MazeRandom(game, seed=0)
    for _ in range(300):
        keys = policy(game)
        for a, b in ((0, 1), (2, 3), (4, 5)):
            assert not (keys[:, a] & keys[:, b]).any()
        game.step(keys)


def test_explorer_never_idles_never_sticks_and_beats_random():
    seeds = np.arange(4)
    explore_game, random_game = Maze(4, **SMALL), Maze(4, **SMALL)
    explore_game.reset(seeds)
    random_game.reset(seeds)
    explorer, random = MazeExplorer(explore_game, seed=0), MazeRandom(random_game, seed=0)
    walked = np.zeros(4)
    for t in range(1, 801):
        keys = explorer(explore_game)
        assert keys.any(axis=1).all(), f"explore idles at tick {t}"
        start = explore_game.pos.copy()
        explore_game.step(keys)
        walked += np.linalg.norm(explore_game.pos - start, axis=1)
        random_game.step(random(random_game))
        if t % 40 == 0:  # always on the way somewhere: at least 1.5 blocks per 2 s (top speed: 4.8)
            assert (walked > 1.5).all(), f"explorer stuck near tick {t}: walked {walked}"
            walked[:] = 0
    explored, wandered = explore_game.coverage(), random_game.coverage()
    assert (explored > 0.1).all() and explored.mean() > 3 * wandered.mean()


def test_explorer_covers_a_small_maze_then_takes_the_exit():
    game = Maze(2, min_cells=4, max_cells=5, **SMALL)
    game.reset([0, 1])
    explorer = MazeExplorer(game, seed=0)
    done = np.zeros(2, bool)
    for _ in range(2500):
        _, terminated = game.step(explorer(game))
        for i in np.flatnonzero(terminated & ~done):
            assert game.coverage()[i] == 1.0, "the exit should come last"
        done |= terminated
        if done.all():
            break
    assert done.all()


def test_coverage_starts_small_and_grows():
    game = Maze(2, **SMALL)
    game.reset([0, 1])
    start = game.coverage()
    assert start.dtype == np.float32 and ((start > 0) & (start < 0.01)).all()
    explorer = MazeExplorer(game, seed=0)
    for _ in range(100):
        game.step(explorer(game))
    assert (game.coverage() > start).all()
