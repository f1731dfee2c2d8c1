"""Platformer: what each key does, and the world's rules (solid tiles, pits, coins, enemies, flag).

Scenarios are built on a real generated level and edited where needed through
`Platformer._set_tile` and the state arrays. Physics is in integer units (U per tile), the
same at every resolution, so most tests run at 64x64.
"""
from __future__ import annotations

import numpy as np
import pytest

from scenes.platformer import (EH, EW, EMPTY, PH, PW, ROWS, STONE, BRICK, COIN, CP_ON, U, Platformer,
                               PlatformerExplorer, PlatformerRandom)

SMALL = dict(width=64, height=64)
NOOP, LEFT, RIGHT, JUMP, BOTH = [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]


def fresh(seed: int = 0, **kw) -> Platformer:
    game = Platformer(1, **{**SMALL, **kw})
    game.reset([seed])
    return game


def play(game: Platformer, keys, ticks: int = 1):
    """Hold `keys` for `ticks` ticks; return per-tick rewards, terminated flags, (px, py)."""
    rewards, terms, pos = [], [], []
    for _ in range(ticks):
        r, t = game.step(np.array([keys]))
        rewards.append(float(r[0]))
        terms.append(bool(t[0]))
        pos.append((int(game.px[0]), int(game.py[0])))
    return np.array(rewards), np.array(terms), np.array(pos)


def ground_row(game: Platformer) -> int:
    """Row of the ground the player stands on at the start."""
    return (int(game.py[0]) + PH) // U


def clear_enemies(game: Platformer) -> None:
    game.ealive[:] = False


# ---- left / right ----------------------------------------------------------------------------
def test_right_moves_player_and_scrolls_view():
    game = fresh()
    x0, cam0, frame0 = int(game.px[0]), int(game.camera()[0]), game.render()[0]
    _, _, pos = play(game, RIGHT, 25)
    assert pos[-1, 0] > x0 + 4 * U, "holding right should run several tiles"
    assert np.all(np.diff(pos[:, 0]) >= 0)
    assert game.camera()[0] > cam0, "the view should scroll with the player"
    assert not np.array_equal(game.render()[0], frame0)
    assert game.facing[0] == 1


def test_left_moves_player_back():
    game = fresh()
    play(game, RIGHT, 25)
    x1 = int(game.px[0])
    _, _, pos = play(game, LEFT, 20)
    assert pos[-1, 0] < x1 - 2 * U
    assert game.facing[0] == -1
    play(game, LEFT, 60)
    assert game.px[0] == 0, "the level's left end is a wall"


def test_left_and_right_cancel():
    game = fresh()
    x0 = int(game.px[0])
    _, _, pos = play(game, BOTH, 15)
    assert (pos[:, 0] == x0).all()


def test_background_layers_scroll_slower_than_level():
    game = fresh()
    play(game, RIGHT, 30)
    cam0, frame0 = int(game.camera()[0]), game.render()[0]
    play(game, RIGHT, 12)
    cam1, frame1 = int(game.camera()[0]), game.render()[0]
    assert cam1 - cam0 >= 12
    # the top rows show only the far layer (sky, clouds, mountains), which moves 1/4 as fast
    shift = cam1 // 4 - cam0 // 4
    assert 0 < shift < cam1 - cam0
    rows = slice(0, 8)
    assert np.array_equal(frame1[rows, :-shift], frame0[rows, shift:])


# ---- jump ------------------------------------------------------------------------------------
def test_jump_goes_up_and_lands_again():
    game = fresh()
    y0 = int(game.py[0])
    _, _, pos = play(game, JUMP, 1)
    _, _, more = play(game, NOOP, 30)
    ys = np.concatenate([pos[:, 1], more[:, 1]])
    apex = y0 - ys.min()
    assert 3.5 * U < apex < 4.5 * U, f"apex {apex / U:.2f} tiles"
    assert ys[-1] == y0 and game.on_ground[0], "should land back on the ground"
    assert (ys[:5] < y0).all()


def test_no_double_jump_in_mid_air():
    once, held = fresh(), fresh()
    play(once, JUMP, 1)
    _, _, a = play(once, NOOP, 25)
    _, _, b = play(held, JUMP, 26)
    landed = np.argmax(a[:, 1] == a[-1, 1])
    assert landed > 10
    # holding jump all the way changes nothing until the player is back on the ground
    assert np.array_equal(a[:landed, 1], b[1:landed + 1, 1])


def test_jump_needs_ground_under_the_feet():
    game = fresh()
    play(game, JUMP, 1)
    play(game, NOOP, 6)
    vy = int(game.vy[0])
    play(game, JUMP, 1)
    assert game.vy[0] == vy + 5, "jump in mid-air must only feel gravity"


# ---- solid tiles -----------------------------------------------------------------------------
def test_wall_blocks_running():
    game = fresh()
    g = ground_row(game)
    for r in (g - 1, g - 2):
        game._set_tile(0, r, 7, STONE)
    _, _, pos = play(game, RIGHT, 40)
    assert pos[-1, 0] + PW == 7 * U, "player should stop flush against the wall"
    # and jumping gets over it
    play(game, [0, 1, 1], 1)
    play(game, RIGHT, 20)
    assert game.px[0] > 8 * U


def test_platform_side_and_underside_block():
    game = fresh()
    g = ground_row(game)
    game._set_tile(0, g - 1, 7, BRICK)       # one brick at body height
    _, _, pos = play(game, RIGHT, 40)
    assert pos[-1, 0] + PW == 7 * U
    game = fresh()
    game._set_tile(0, g - 3, 3, BRICK)       # a brick overhead: the jump bumps its head
    _, _, up = play(game, JUMP, 1)
    _, _, down = play(game, NOOP, 30)
    ys = np.concatenate([up, down])[:, 1]
    assert ys.min() == (g - 2) * U, "head should stop at the brick's underside"
    assert (np.diff(ys) >= 0).all(), "and fall right away"
    assert game.on_ground[0]


def test_land_on_top_of_platform():
    game = fresh()
    g = ground_row(game)
    for c in range(5, 9):
        game._set_tile(0, g - 3, c, BRICK)
    play(game, RIGHT, 4)
    play(game, [0, 1, 1], 1)
    play(game, RIGHT, 8)
    play(game, NOOP, 25)
    assert game.on_ground[0] and game.py[0] + PH == (g - 3) * U, "should stand on the bricks"


# ---- pits, coins, enemies, checkpoints, flag ----------------------------------------------------
def test_pit_costs_one_and_respawns():
    game = fresh()
    clear_enemies(game)
    g = ground_row(game)
    for c in range(6, 10):
        for r in range(g, ROWS):
            game._set_tile(0, r, c, EMPTY)
    spawn = (int(game.px[0]), int(game.py[0]))
    rewards, terms, pos = play(game, RIGHT, 35)
    hit = np.flatnonzero(rewards)
    assert len(hit) == 1 and rewards[hit[0]] == -1, rewards[rewards != 0]
    assert tuple(pos[hit[0]]) == spawn, "respawn at the start (no checkpoint passed yet)"
    assert not terms.any(), "a fall does not end the episode"
    assert pos[:hit[0], 1].max() > ROWS * U - PH, "the player fell first"


def test_coin_gives_one_and_disappears():
    game = fresh()
    g = ground_row(game)
    game.coins[0] = False
    game._set_tile(0, g - 1, 6, COIN)
    assert game.coins[0].sum() == 1
    before = game.render()[0]
    rewards, _, _ = play(game, RIGHT, 20)
    assert rewards.sum() == 1 and (rewards == 1).sum() == 1
    assert game.coins[0].sum() == 0
    t = game.tile
    assert (game.fg_keep[0, (g - 1) * t:g * t, 6 * t:7 * t] == 255).all(), "coin erased from the level image"
    assert not np.array_equal(before, game.render()[0])


def place_enemy(game: Platformer, col: int, speed: int = 0) -> None:
    g = ground_row(game)
    game.ealive[0] = False
    game.ealive[0, 0] = True
    game.ex[0, 0], game.ey[0, 0] = col * U, g * U - EH
    game.exmin[0, 0], game.exmax[0, 0] = 0, 20 * U
    game.espeed[0, 0], game.edir[0, 0] = speed, -1


def test_stomping_an_enemy_removes_it():
    game = fresh()
    place_enemy(game, 3)
    game.py[0] -= 3 * U                        # drop onto it from above
    game.px[0] = game.ex[0, 0] + (EW - PW) // 2
    game.on_ground[0] = False
    rewards, _, _ = play(game, NOOP, 12)
    assert rewards.sum() == 1
    assert not game.ealive[0, 0]


def test_touching_an_enemy_from_the_side_hurts_and_knocks_back():
    game = fresh()
    place_enemy(game, 6)
    rewards, _, pos = play(game, RIGHT, 30)
    hit = np.flatnonzero(rewards)
    assert len(hit) == 1 and rewards[hit[0]] == -1, "one hit, then a safe period"
    assert pos[hit[0] + 2, 0] < pos[hit[0], 0], "pushed back"
    assert game.ealive[0, 0]


def test_enemies_move_deterministically_per_seed():
    a, b, c = fresh(5), fresh(5), fresh(6)
    assert a.ealive[0].sum() >= 3
    x0 = a.ex[0].copy()
    for game in (a, b, c):
        game.px[0] = 0                         # keep the player away from every enemy
        play(game, NOOP, 80)
    assert np.array_equal(a.ex, b.ex) and np.array_equal(a.edir, b.edir)
    assert (a.ex[0] != x0)[a.ealive[0]].all(), "every enemy walks on its own"
    assert not np.array_equal(a.ex, c.ex)
    alive = a.ealive[0]
    assert ((a.ex[0] >= a.exmin[0]) & (a.ex[0] <= a.exmax[0]))[alive].all(), "enemies stay on their patrol"
    dirs = [a.edir[0].copy()]
    for _ in range(20):
        play(a, NOOP, 30)
        dirs.append(a.edir[0].copy())
    short = alive & (a.exmax[0] - a.exmin[0] < 550 * a.espeed[0])   # patrols walked end to end in 600 ticks
    assert short.sum() >= 2
    assert (np.ptp(np.array(dirs), axis=0) == 2)[short].all(), "enemies turn around at their patrol ends"


def test_checkpoint_becomes_respawn_point():
    game = fresh()
    clear_enemies(game)
    col, row = int(game.cp_cols[0, 0]), int(game.cp_rows[0, 0])
    game.px[0], game.py[0] = (col - 2) * U, row * U - PH
    play(game, RIGHT, 12)
    assert game.spawn_x[0] == col * U + (U - PW) // 2
    assert game.tiles[0, row - 2, col] == CP_ON, "the checkpoint flag turns green"


def test_flag_gives_ten_and_ends_the_episode():
    game = fresh()
    clear_enemies(game)
    col = game.flag_col
    row = int(np.argmax(game.solid[0, 4:4 + ROWS, col - 3]))
    game.px[0], game.py[0] = (col - 3) * U, row * U - PH
    rewards, terms, _ = play(game, RIGHT, 20)
    end = np.argmax(terms)
    assert terms[end] and rewards[end] == 10
    assert terms[end:].all() and (rewards[end + 1:] == 0).all(), "the finished level stays finished"


# ---- policies and coverage -------------------------------------------------------------------
def test_explorer_never_idles_and_covers_more_than_random():
    seeds = [0, 1, 2, 3]
    cover = {}
    for policy_cls in (PlatformerExplorer, PlatformerRandom):
        game = Platformer(len(seeds), **SMALL)
        game.reset(seeds)
        policy = policy_cls(game, seed=0)
        for _ in range(700):
            keys = policy(game)
            assert not (keys[:, 0] & keys[:, 1]).any(), "left and right are exclusive"
            if policy_cls is PlatformerExplorer:
                assert keys[:, :2].any(1).all(), "the explorer always holds a direction"
            game.step(keys)
        cover[policy_cls] = game.coverage()
    assert cover[PlatformerExplorer].mean() > 0.5
    assert cover[PlatformerExplorer].mean() > 2 * cover[PlatformerRandom].mean()


def test_coverage_counts_columns_visited():
    game = fresh()
    c0 = float(game.coverage()[0])
    assert 0 < c0 < 0.02
    play(game, RIGHT, 20)
    assert game.coverage()[0] > c0


@pytest.mark.parametrize("size", [dict(width=128, height=96), dict(width=16, height=16)])
def test_physics_is_the_same_at_every_resolution(size):
    rng = np.random.default_rng(0)
    keys = rng.random((150, 1, 3)) < 0.4
    a, b = fresh(3), fresh(3, **size)
    for k in keys:
        ra, _ = a.step(k)
        rb, _ = b.step(k)
        assert ra[0] == rb[0]
        assert (a.px[0], a.py[0]) == (b.px[0], b.py[0])
    assert b.render().shape == (1, size["height"], size["width"], 3)
