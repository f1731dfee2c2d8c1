"""Dungeon: what each key does, what blocks, what moves on its own, what pays.

Tests put the player (and creatures) where they need them by writing the game's state
directly, in units (one tile = 16 units; at 128x128 one tile is 16 px, so 1 unit = 1 px).
"""
from __future__ import annotations

import numpy as np
import pytest

from scenes.core import make_policy
from scenes.dungeon import (CHEST, CHEST_OPEN, COIN, DOWN, INTERACT, LEFT, RIGHT, ROCK, TREE, UNIT, UP,
                            WALL, WATER, Dungeon)

KEY = {"up": UP, "down": DOWN, "left": LEFT, "right": RIGHT}
STEP = {UP: (0, -1), DOWN: (0, 1), LEFT: (-1, 0), RIGHT: (1, 0)}


def game(seed: int = 0, **options) -> Dungeon:
    g = Dungeon(1, **options)
    g.reset([seed])
    return g


def calm(g: Dungeon) -> None:
    """Remove every creature for good, so nothing touches the player or moves in view."""
    g.alive[:] = False
    g.dying[:] = 0
    g.dead[:] = 10**9


def keys(*pressed: int) -> np.ndarray:
    k = np.zeros((1, 5), bool)
    k[0, list(pressed)] = True
    return k


def put_player(g: Dungeon, tx: int, ty: int) -> None:
    g.px[0], g.py[0] = tx * UNIT + UNIT // 2, ty * UNIT + UNIT // 2


def open_spot(g: Dungeon, radius: int = 2) -> tuple[int, int]:
    """A reachable tile with a (2r+1)^2 walkable block around it, far from the map edges."""
    walk, h, w = g.walk[0], g.map_h, g.map_w
    for ty in range(7, h - 7):
        for tx in range(7, w - 7):
            if g.reach[0, ty, tx] and walk[ty - radius:ty + radius + 1, tx - radius:tx + radius + 1].all():
                return tx, ty
    raise AssertionError("no open spot")


def blocked_pair(kind: str):
    """(seed, tile, direction) of a reachable tile whose neighbour that way is `kind`."""
    for seed in range(20):
        g = game(seed)
        for ty, tx in np.argwhere(g.reach[0]):
            for d, (dx, dy) in STEP.items():
                nx, ny = tx + dx, ty + dy
                hit = {"water": g.terrain[0, ny, nx] == WATER, "wall": g.terrain[0, ny, nx] == WALL,
                       "tree": g.obstacle[0, ny, nx] == TREE, "rock": g.obstacle[0, ny, nx] == ROCK,
                       "chest": g.item[0, ny, nx] == CHEST}[kind]
                if hit and not g.walk[0, ny, nx]:
                    return seed, (int(tx), int(ty)), d
    raise AssertionError(f"no {kind} next to a reachable tile in 20 seeds")


# ---- movement and the camera ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["up", "down", "left", "right"])
def test_each_direction_moves_the_player_and_scrolls_the_view(name):
    g = game(3)
    calm(g)
    tx, ty = open_spot(g)
    put_player(g, tx, ty)
    before, x0, y0 = g.render()[0], int(g.px[0]), int(g.py[0])
    d = KEY[name]
    for _ in range(8):                         # 8 ticks x 2 units = one tile
        reward, terminated = g.step(keys(d))
        assert not terminated[0]
    after = g.render()[0]
    dx, dy = STEP[d]
    assert (g.px[0] - x0, g.py[0] - y0) == (16 * dx, 16 * dy)
    assert g.facing[0] == d
    # the camera follows: the world slid 16 px the other way (compare a band away from the player)
    if dx:
        band_a, band_b = after[:40], before[:40]
        shifted = band_a[:, :-16] if dx > 0 else band_a[:, 16:]
        original = band_b[:, 16:] if dx > 0 else band_b[:, :-16]
    else:
        band_a, band_b = after[:, :40], before[:, :40]
        shifted = band_a[:-16] if dy > 0 else band_a[16:]
        original = band_b[16:] if dy > 0 else band_b[:-16]
    assert not np.array_equal(after, before)
    assert np.array_equal(shifted, original), "the view did not scroll with the player"


def test_movement_is_smooth_pixels_not_tiles():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g))
    x0 = int(g.px[0])
    g.step(keys(RIGHT))
    assert g.px[0] - x0 == 2


def test_opposing_keys_cancel():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g))
    x0, y0 = int(g.px[0]), int(g.py[0])
    for _ in range(5):
        g.step(keys(LEFT, RIGHT, UP, DOWN))
    assert (g.px[0], g.py[0]) == (x0, y0)
    g.step(keys(LEFT, RIGHT, DOWN))
    assert (g.px[0], g.py[0]) == (x0, y0 + 2)


def test_diagonal_moves_both_axes():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g))
    x0, y0 = int(g.px[0]), int(g.py[0])
    g.step(keys(UP, RIGHT))
    assert (g.px[0] - x0, g.py[0] - y0) == (2, -2)


@pytest.mark.parametrize("kind", ["water", "tree", "rock", "wall", "chest"])
def test_blockers_stop_the_player_flush(kind):
    seed, (tx, ty), d = blocked_pair(kind)
    g = game(seed)
    calm(g)
    put_player(g, tx, ty)
    for _ in range(12):
        g.step(keys(d))
    dx, dy = STEP[d]
    # box half-size 6: from the tile centre (8) it can move 2 units before touching the next tile
    assert (g.px[0], g.py[0]) == (tx * UNIT + 8 + 2 * dx, ty * UNIT + 8 + 2 * dy)
    assert g.walk[0, g.py[0] // UNIT, g.px[0] // UNIT]


def test_corner_sliding_enters_a_gap_when_slightly_off():
    """Grazing the corner of a block with a free tile beside it slides the player around it."""
    for seed in range(20):
        g = game(seed)
        w = g.walk[0]
        spots = np.argwhere(g.reach[0][1:-1, 1:-1] & w[:-2, 1:-1] & w[1:-1, 2:] & ~w[:-2, 2:]) + 1
        if len(spots):
            break
    ty, tx = spots[0]               # above and right open, above-right blocked
    calm(g)
    put_player(g, tx, ty)
    g.py[0] -= 4                    # overlap the blocked row above by a little
    for _ in range(8):
        g.step(keys(RIGHT))
    assert g.px[0] > tx * UNIT + 10, "stuck on a corner"


def test_camera_keeps_player_centred_and_clamps_at_edges():
    g = game(3)
    calm(g)
    tx, ty = open_spot(g)
    put_player(g, tx, ty)
    cam_x, cam_y = g.camera()
    assert (cam_x[0], cam_y[0]) == (g.px[0] - 64, g.py[0] - 64)   # 1 unit = 1 px at 128x128
    g.px[0], g.py[0] = 24, 24
    assert tuple(int(c[0]) for c in g.camera()) == (0, 0)
    g.px[0], g.py[0] = g.map_w * UNIT - 24, g.map_h * UNIT - 24
    assert tuple(int(c[0]) for c in g.camera()) == (g.map_w * 16 - 128, g.map_h * 16 - 128)


# ---- creatures ------------------------------------------------------------------------------
def test_creatures_wander_on_their_own_deterministically_and_stay_on_walkable_tiles():
    a, b, c = game(5), game(5), game(6)
    start = a.cx.copy(), a.cy.copy()
    for _ in range(60):
        for g in (a, b, c):
            g.step(keys())
            half = 5
            for ox in (-half, half - 1):
                for oy in (-half, half - 1):
                    inside = g.walk[0, (g.cy[0] + oy) // UNIT, (g.cx[0] + ox) // UNIT]
                    assert inside.all(), "a creature entered a blocked tile"
    assert np.array_equal(a.cx, b.cx) and np.array_equal(a.cy, b.cy)
    assert ((a.cx != start[0]) | (a.cy != start[1])).mean() > 0.5, "creatures do not move"
    assert not (np.array_equal(a.cx, c.cx) and np.array_equal(a.cy, c.cy))


def test_creatures_change_the_frame_away_from_the_player():
    g = game(3)
    calm(g)
    tx, ty = open_spot(g, radius=3)
    put_player(g, tx, ty)
    g.alive[0, :2] = True
    g.cx[0, :2], g.cy[0, :2] = g.px[0] - 40, g.py[0] - 40     # up-left, out of reach
    frames = []
    for _ in range(24):
        g.step(keys())
        frames.append(g.render()[0])
    region = np.stack(frames)[:, :48, :48]                     # the player is at 56..72
    assert len({f.tobytes() for f in region}) > 3, "creature region does not change over idle ticks"
    player = np.stack(frames)[:, 56:72, 56:72]
    assert all(np.array_equal(p, player[0]) for p in player), "idle player flickers"


def test_touching_a_creature_costs_one_and_knocks_back():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g, radius=3))
    x0 = int(g.px[0])
    g.alive[0, 0] = True
    g.cx[0, 0], g.cy[0, 0], g.cdir[0, 0], g.ctimer[0, 0] = x0 + 8, g.py[0], 4, 10**6   # resting, to the right
    reward, terminated = g.step(keys())
    assert reward[0] == -1 and not terminated[0]
    total = 0.0
    for _ in range(10):
        r, terminated = g.step(keys(RIGHT))      # keys are ignored while knocked back
        total += r[0]
        assert not terminated[0]
    assert g.px[0] < x0, "not knocked back (away from the creature)"
    assert total == 0, "hit again while invulnerable"


# ---- items and interact ---------------------------------------------------------------------
def test_walking_onto_a_coin_collects_it():
    for seed in range(10):
        g = game(seed)
        spots = [(int(tx), int(ty)) for ty, tx in np.argwhere(g.item[0] == COIN) if g.walk[0, ty, tx - 1]]
        if spots:
            break
    tx, ty = spots[0]
    calm(g)
    put_player(g, tx - 1, ty)
    tile_before = g.image[0, ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16].copy()
    total = 0.0
    for _ in range(8):
        total += g.step(keys(RIGHT))[0][0]
    assert total == 1 and g.item[0, ty, tx] == 0
    assert not np.array_equal(g.image[0, ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16], tile_before)
    for _ in range(8):
        total += g.step(keys(LEFT))[0][0]
    assert total == 1, "a coin paid twice"


def test_interact_swings_the_sword_and_slays_a_creature_ahead():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g, radius=3))
    g.facing[0] = RIGHT
    g.alive[0, :2] = True
    g.cdir[0, :2], g.ctimer[0, :2] = 4, 10**6
    g.cx[0, 0], g.cy[0, 0] = g.px[0] + 18, g.py[0]            # one tile ahead: in the arc
    g.cx[0, 1], g.cy[0, 1] = g.px[0] - 18, g.py[0]            # behind the player: safe
    plain = g.render()[0]
    reward, _ = g.step(keys(INTERACT))
    frame = g.render()[0]
    assert reward[0] == 1 and not g.alive[0, 0] and g.alive[0, 1]
    blade = np.all(frame == (226, 230, 242), axis=-1)
    assert blade.sum() >= 4 and not np.all(plain == (226, 230, 242), axis=-1).any(), "no sword drawn"
    for _ in range(5):
        g.step(keys())
    assert g.swing[0] == 1
    g.step(keys())
    assert g.swing[0] == 0 and not np.all(g.render()[0] == (226, 230, 242), axis=-1).any()


def test_interact_opens_the_chest_ahead_once():
    seed, (tx, ty), d = blocked_pair("chest")
    g = game(seed)
    calm(g)
    put_player(g, tx, ty)
    dx, dy = STEP[d]
    cx, cy = tx + dx, ty + dy
    before = g.image[0, cy * 16:(cy + 1) * 16, cx * 16:(cx + 1) * 16].copy()
    g.step(keys(d))                       # face the chest
    reward, _ = g.step(keys(INTERACT))
    assert reward[0] == 1 and g.item[0, cy, cx] == CHEST_OPEN
    assert not np.array_equal(g.image[0, cy * 16:(cy + 1) * 16, cx * 16:(cx + 1) * 16], before)
    total = sum(g.step(keys(INTERACT))[0][0] for _ in range(14))
    assert total == 0, "an open chest paid again"


def test_interact_facing_away_does_not_open_a_chest():
    seed, (tx, ty), d = blocked_pair("chest")
    g = game(seed)
    calm(g)
    put_player(g, tx, ty)
    g.facing[0] = {UP: DOWN, DOWN: UP, LEFT: RIGHT, RIGHT: LEFT}[d]
    reward, _ = g.step(keys(INTERACT))
    assert reward[0] == 0 and (g.item[0] == CHEST).sum() >= 1


# ---- coverage and policies ------------------------------------------------------------------
def test_coverage_counts_tiles_stood_on():
    g = game(3)
    calm(g)
    put_player(g, *open_spot(g))
    c0 = g.coverage()[0]
    assert 0 < c0 <= 1 / g.reach[0].sum() * 2
    for _ in range(16):
        g.step(keys(RIGHT))
    assert g.coverage()[0] > c0


def test_explorer_never_idles_and_beats_random():
    cover = {}
    for policy in ("explore", "random"):
        g = Dungeon(2, width=64, height=64)
        g.reset([0, 1])
        chooser = make_policy(g, policy, seed=0)
        for _ in range(500):
            k = chooser(g)
            if policy == "explore":
                assert k[:, :4].any(axis=1).all()
            g.step(k)
        cover[policy] = g.coverage().mean()
    assert cover["explore"] > 1.5 * cover["random"], cover


def test_random_policy_never_holds_opposing_keys():
    g = Dungeon(4, width=64, height=64)
    g.reset([0, 1, 2, 3])
    chooser = make_policy(g, "random", seed=1)
    for _ in range(200):
        k = chooser(g)
        assert not (k[:, UP] & k[:, DOWN]).any() and not (k[:, LEFT] & k[:, RIGHT]).any()
        g.step(k)


def test_world_is_bigger_than_the_view_and_tiles_scale():
    for (w, h), tile in {(128, 128): 16, (64, 96): 8, (256, 128): 16, (16, 16): 2}.items():
        g = Dungeon(1, width=w, height=h)
        assert g.tile == tile
        assert g.map_w * tile > w and g.map_h * tile > h
        assert g.reset([0]).shape == (1, h, w, 3)
