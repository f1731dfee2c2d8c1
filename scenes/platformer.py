"""Platformer: a side-scrolling jump-and-run through a procedurally generated level.

Each world is a level `level_cols` tiles wide and 16 tiles high (ground with pits, steps,
pipes, stone stairs, floating brick platforms, coins, walking enemies, checkpoints and a flag
at the far end) in front of two parallax layers (sky with mountains and clouds, nearer green
hills with trees). The camera follows the player horizontally (player at about a third of
the screen width); vertically the whole level height is always in view.

Physics runs on integers: positions and velocities are in units of 1/64 tile, so the game
behaves the same at every resolution and every env of a batch computes exactly what a lone
env computes. Rendering is crops of pre-drawn images: each env draws its level once at reset
(tiles, coins, decorations; ~1.8 MB at 128x128 with its mask) and shows one of a few shared
background variants, each two wrap-around strips; a frame is three crops composited under
masks plus a few sprite blits.
"""
from __future__ import annotations

import numpy as np

from scenes.core import Game, PersistentRandom, Policy, SceneEnv

# ---- units and physics (integers; U units = one tile) ---------------------------------------
U = 64                      # physics units per tile
ROWS = 16                   # level height in tiles; always fully on screen
PAD = 4                     # empty rows kept above and below the level in collision grids
PW, PH = 48, 88             # player hitbox, units (0.75 x 1.375 tiles)
EW, EH = 56, 56             # enemy hitbox, units
GRAVITY = 5                 # units / tick^2
JUMP_V = 51                 # jump impulse, units / tick: apex ~4 tiles, ~20 ticks in the air
MAX_FALL = 60               # < U: nothing falls through a tile in one tick
RUN_ACC, RUN_FRIC, RUN_MAX = 4, 4, 20   # units / tick^2, units / tick^2, units / tick
STOMP_BOUNCE = 34           # upward speed after stomping an enemy
STOMP_SLACK = 24            # feet may be this far below an enemy's top last tick and still stomp
KNOCK_VX, KNOCK_VY, KNOCK_TICKS = 14, 24, 5   # side hit: pushed away, controls off for a while
SAFE_TICKS = 30             # no enemy damage for this long after a hit or respawn
SQUASH_TICKS = 10           # a stomped enemy stays flattened on screen this long

# ---- tiles ----------------------------------------------------------------------------------
(EMPTY, GRASS, DIRT_A, DIRT_B, BRICK, QBLOCK, STONE, PIPE_TL, PIPE_TR, PIPE_BL, PIPE_BR,
 TUFT, FLOWER, POLE, POLE_TOP, FLAG, CP_OFF, CP_POLE, CP_ON,
 CASTLE_WALL, CASTLE_TOP, CASTLE_DOOR_TOP, CASTLE_DOOR, COIN) = range(24)
SOLID_TILES = (GRASS, DIRT_A, DIRT_B, BRICK, QBLOCK, STONE, PIPE_TL, PIPE_TR, PIPE_BL, PIPE_BR)

PALETTE = {
    "K": (28, 20, 24), "W": (255, 255, 255),
    "G": (76, 184, 64), "g": (40, 128, 44), "l": (150, 226, 96),                     # grass
    "d": (160, 100, 52), "D": (112, 66, 36), "e": (196, 138, 80),                    # dirt
    "B": (204, 92, 48), "b": (156, 62, 34), "m": (88, 36, 24),                       # brick
    "Q": (244, 184, 44), "q": (176, 100, 20),                                        # ? block
    "S": (150, 150, 164), "s": (92, 92, 110), "w": (212, 212, 222),                  # stone
    "P": (56, 172, 72), "p": (16, 84, 36), "h": (168, 238, 150), "x": (34, 124, 50),  # pipe
    "Y": (252, 210, 40), "y": (196, 132, 16),                                        # coin
    "V": (224, 230, 224), "v": (130, 140, 130), "O": (40, 180, 80),                  # poles
    "R": (220, 40, 40), "r": (140, 20, 24), "F": (250, 192, 140), "U": (44, 76, 208),  # player
    "N": (104, 52, 20), "M": (172, 92, 40), "n": (112, 56, 24), "f": (238, 204, 156),  # enemy
    "C": (176, 164, 150), "c": (120, 108, 98), "k": (40, 28, 30),                    # castle
}

# 8x8 pixel art at the 128x128 scale ('.' = transparent); resampled to the tile size.
TILE_ART = {
    GRASS: ("lGlGGlGl", "GGGGGGGG", "gGgGGgGg", "dgdDgdgd", "ddddDddd", "deddddDd", "ddDdeddd", "dddddddd"),
    DIRT_A: ("dddddDdd", "dedddddd", "ddddDded", "dDdddddd", "ddddeddd", "ddddddDd", "dDdedddd", "dddddddd"),
    DIRT_B: ("ddDddddd", "dddddedd", "deddddDd", "dddDdddd", "dddddddd", "dDddddde", "ddddDddd", "dedddddd"),
    BRICK: ("mmmmmmmm", "BBBBmBBB", "BBBBmBBB", "bbbbmbbb", "mmmmmmmm", "BmBBBBBB", "BmBBBBBB", "bmbbbbbb"),
    QBLOCK: ("qqqqqqqq", "qQQKKQQq", "qQKQQKQq", "qQQQQKQq", "qQQQKQQq", "qQQQQQQq", "qQQQKQQq", "qqqqqqqq"),
    STONE: ("wwwwwwwS", "wwSSSSss", "wSSSSSss", "wSSSSSss", "wSSSSSss", "wSSSSSss", "Ssssssss", "ssssssss"),
    PIPE_TL: ("pppppppp", "phhPPPPP", "phhPPPPP", "phhPPPPP", "phhPPPPP", "pppppppp", ".phhPPPP", ".phhPPPP"),
    PIPE_TR: ("pppppppp", "PPPPPxxp", "PPPPPxxp", "PPPPPxxp", "PPPPPxxp", "pppppppp", "PPPPxxp.", "PPPPxxp."),
    PIPE_BL: (".phhPPPP",) * 8,
    PIPE_BR: ("PPPPxxp.",) * 8,
    TUFT: ("........", "........", "........", "........", "........", ".l...l..", ".Gl.lG.l", "gGGlGGgG"),
    FLOWER: ("........", "........", "...W....", "..WYW...", "...W....", "...g..l.", ".l.g.lG.", "gGlgGGg."),
    POLE: ("...Vv...",) * 8,
    POLE_TOP: ("........", "..OOOO..", ".OlOOOO.", ".OOOOOO.", "..OOOO..", "...Vv...", "...Vv...", "...Vv..."),
    FLAG: ("GGGGGGGG", ".GGGWWGG", "..GWWWWG", "...GWWGG", "....GGGG", ".....GGG", "......GG", ".......G"),
    CP_OFF: ("...VRRRR", "...VRRRr", "...VRRr.", "...VRr..", "...Vr...", "...V....", "...V....", "...V...."),
    CP_POLE: ("...V....", "...V....", "...V....", "...V....", "...V....", "...V....", "..vVv...", ".vvVvv.."),
    CP_ON: ("...VGGGG", "...VGWGg", "...VGGg.", "...VGg..", "...Vg...", "...V....", "...V....", "...V...."),
    CASTLE_WALL: ("CCCcCCCC", "CCCcCCCC", "cccccccc", "CCCCCCCc", "CCCCCCCc", "cccccccc", "CCCcCCCC", "CCCcCCCC"),
    CASTLE_TOP: ("CCC..CCC", "CCC..CCC", "CCC..CCC", "cccccccc", "CCCcCCCC", "CCCcCCCC", "cccccccc", "CCCCCCCc"),
    CASTLE_DOOR_TOP: ("CCCcCCCC", "CCCcCCCC", "cccccccc", "CCkkkkCc", "CkkkkkkC", "ckkkkkkc", "Ckkkkkkc", "Ckkkkkkc"),
    CASTLE_DOOR: ("Ckkkkkkc",) * 8,
    COIN: ("..yyyy..", ".yYYYYy.", ".YYWYYy.", ".YYWYYy.", ".YYWYYy.", ".YYYYYy.", ".yYYYYy.", "..yyyy.."),
}

# player art, 8 wide x 12 high, facing right; the hitbox is 6 x 11 of these pixels
_HEAD = ("..RRRR..", ".RRRRRRR", ".NNFFKF.", ".NFFFFFF", "..FFFF..")
PLAYER_ART = {
    "stand": _HEAD + (".RRURRR.", "RRRUURRR", "FFUUUUFF", ".UUUUUU.", ".UU..UU.", ".NN..NN.", "NNN..NNN"),
    "walk_a": _HEAD + (".RRURRR.", "RRRUURRF", "FFUUUU..", ".UUUUUU.", "UUU..UUU", "NN....NN", "NNN...NN"),
    "walk_b": _HEAD + (".RRURRR.", "FRRUURR.", ".FUUUUF.", "..UUUU..", "..UUUU..", "..NNNN..", ".NNNNN.."),
    "jump": ("..RRRR.F", ".RRRRRRF", ".NNFFKFR", ".NFFFFFR", "..FFFFRR", ".RRURRR.", "RRRUURR.", "F.UUUU..",
             ".UUUUUU.", "UUU..UU.", "NN...NN.", "N.....NN"),
}
POSES = ("stand", "walk_a", "walk_b", "jump")
# enemy art, 8 x 8: two walking frames and a flattened one
ENEMY_ART = (
    ("...MM...", "..MMMM..", ".MMMMMM.", "MKWMMWKM", "MWKMMKWM", "MMMMMMMM", "..ffff..", ".NN..NN."),
    ("...MM...", "..MMMM..", ".MMMMMM.", "MKWMMWKM", "MWKMMKWM", "MMMMMMMM", "..ffff..", "NN....NN"),
    ("........", "........", "........", "........", ".MMMMMM.", "MKWMMWKM", "MMMMMMMM", "NNN..NNN"),
)

# background palettes: (sky top, sky horizon, mountain lit, mountain shade, snow, hill, hill dark,
# hill rim, tree, cloud, cloud shade)
THEMES = (
    ((92, 148, 252), (190, 222, 255), (128, 140, 200), (92, 100, 164), (236, 242, 255),
     (64, 156, 80), (44, 122, 64), (132, 212, 112), (30, 96, 52), (255, 255, 255), (206, 222, 246)),
    ((72, 64, 150), (252, 178, 128), (164, 108, 164), (116, 74, 132), (252, 222, 232),
     (58, 122, 92), (36, 88, 70), (118, 176, 116), (26, 66, 54), (255, 226, 214), (232, 172, 176)),
    ((116, 200, 232), (250, 242, 204), (104, 164, 172), (72, 120, 140), (244, 252, 252),
     (104, 172, 72), (70, 128, 54), (176, 222, 112), (46, 96, 44), (255, 255, 248), (214, 232, 232)),
)
BG_PERIOD_TILES = 64        # background strips repeat every this many tiles
FAR_RATE, NEAR_RATE = 4, 2  # background layers move 1/4 and 1/2 as fast as the level
BG_VARIANTS = 12            # distinct backgrounds (theme x layout), shared by the envs showing them


# ---- helpers --------------------------------------------------------------------------------
def _layer(rgb: np.ndarray, opaque: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A masked image as two uint8 arrays [..., 3]: colours with transparent pixels zeroed, and
    `keep` = 255 where transparent, 0 where opaque. Drawing it is `dst &= keep; dst |= rgb`:
    two plain byte ops, several times faster than numpy's masked copies."""
    opaque = np.broadcast_to(opaque[..., None], rgb.shape)
    return np.where(opaque, rgb, 0).astype(np.uint8), np.where(opaque, 0, 255).astype(np.uint8)


def _art(rows, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel art strings -> `_layer` pair [h, w, 3], nearest-resampled to h x w."""
    grid = np.array([list(r) for r in rows])
    ri = np.arange(h) * grid.shape[0] // h
    ci = np.arange(w) * grid.shape[1] // w
    grid = grid[ri][:, ci]
    rgb = np.zeros((h, w, 3), np.uint8)
    for ch, col in PALETTE.items():
        rgb[grid == ch] = col
    return _layer(rgb, grid != ".")


def _blit(dst: np.ndarray, rgb: np.ndarray, keep: np.ndarray, x: int, y: int) -> None:
    """Draw a `_layer` sprite into dst [H, W, 3] with its top-left at (x, y), clipped."""
    h, w = keep.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, dst.shape[1]), min(y + h, dst.shape[0])
    if x0 < x1 and y0 < y1:
        d = dst[y0:y1, x0:x1]
        d &= keep[y0 - y:y1 - y, x0 - x:x1 - x]
        d |= rgb[y0 - y:y1 - y, x0 - x:x1 - x]


def _lerp(a, b, t):
    """Colour ramp: a, b RGB triples, t float [...] in [0, 1] -> float [..., 3]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * np.clip(t, 0, 1)[..., None]


def _generate_level(rng: np.random.Generator, cols: int, cp_every: int) -> dict:
    """Tile map [ROWS, cols] uint8, coins [ROWS, cols] bool, enemy spots, checkpoints, flag column.

    Built left to right from segments that all start and end on flat ground, with sizes
    kept inside what a jump can do (pits <= 4 tiles, walls <= 3 tiles, apex ~4 tiles).
    """
    tiles = np.zeros((ROWS, cols), np.uint8)
    coins = np.zeros((ROWS, cols), bool)
    ground = np.full(cols, -1)              # top row of the ground per column, -1 = pit
    no_enemy = np.zeros(cols, bool)         # enemies never patrol here (start, checkpoints)
    spots, checkpoints = [], []             # enemy (col, surface row); checkpoint (col, row)
    g, x = ROWS - 4, 12
    clear = x                               # no pit before this column (run-out after obstacles)
    ground[:x] = g
    no_enemy[:x + 3] = True
    next_cp = cp_every
    kinds = ("flat", "pit", "step", "pipe", "stairs", "platform", "enemies")
    odds = np.array([0.14, 0.22, 0.12, 0.12, 0.08, 0.22, 0.10])
    while x < cols - 26:
        if x >= next_cp:
            ground[x:x + 6] = g
            checkpoints.append((x + 2, g))
            no_enemy[x:x + 5] = True
            x += 6
            next_cp = x + cp_every
            continue
        kind = kinds[rng.choice(len(kinds), p=odds)]
        if kind == "pit" and x < clear:     # a jump over an obstacle must not land in a pit
            ground[x:clear] = g
            x = clear
        if kind == "flat":
            n = int(rng.integers(3, 8))
            ground[x:x + n] = g
            if n >= 5 and rng.random() < 0.5:
                coins[g - 2, x + 1:x + n - 1] = True
            x += n
        elif kind == "pit":
            w = int(rng.integers(2, 5))
            for i in range(w):
                coins[g - 3 - (0 < i < w - 1), x + i] = True
            land = max(3, 8 - w)            # a full-speed jump flies ~6 tiles: room to land
            ground[x + w:x + w + land] = g
            x += w + land
        elif kind == "step":
            g = int(np.clip(g + rng.choice((-2, -1, 1, 2)), 9, 13))
            n = int(rng.integers(4, 8))
            ground[x:x + n] = g
            if n >= 6 and rng.random() < 0.5:
                spots.append((x + n // 2, g))
            clear = x + 7
            x += n
        elif kind == "pipe":
            ground[x:x + 6] = g
            top = g - int(rng.integers(2, 4))
            tiles[top, x + 2:x + 4] = (PIPE_TL, PIPE_TR)
            tiles[top + 1:g, x + 2] = PIPE_BL
            tiles[top + 1:g, x + 3] = PIPE_BR
            if rng.random() < 0.5:
                coins[top - 2, x + 2:x + 4] = True
            clear = x + 10
            x += 6
        elif kind == "stairs":
            n = int(rng.integers(2, 4))
            heights = list(range(1, n + 1)) + list(range(n, 0, -1))
            ground[x:x + len(heights) + 4] = g
            for i, hgt in enumerate(heights):
                tiles[g - hgt:g, x + 2 + i] = STONE
            clear = x + len(heights) + 8
            x += len(heights) + 4
        elif kind == "platform":
            n = int(rng.integers(3, 7))
            ground[x:x + n + 4] = g
            row = g - int(rng.integers(3, 5))
            tiles[row, x + 2:x + 2 + n] = BRICK
            if rng.random() < 0.6:
                tiles[row, x + 2 + int(rng.integers(0, n))] = QBLOCK
            if rng.random() < 0.6:
                coins[row - 1, x + 2:x + 2 + n] = True
            elif n >= 4:
                spots.append((x + 2 + n // 2, row))
            if rng.random() < 0.3:
                spots.append((x + 2 + n // 2, g))
            high = row - int(rng.integers(3, 5))
            if rng.random() < 0.45 and high >= 2:
                a = x + 2 + n - 2
                tiles[high, a:a + 3] = BRICK
                coins[high - 1, a:a + 3] = True
            clear = x + n + 8               # no head bump on a platform while taking off for a pit
            x += n + 4
        else:  # "enemies": a longer flat run with one or two patrols
            n = int(rng.integers(8, 13))
            ground[x:x + n] = g
            spots.append((x + 3, g))
            if rng.random() < 0.6:
                spots.append((x + n - 3, g))
            x += n
    ground[x:] = g
    flag = cols - 10
    for c in np.flatnonzero(ground >= 0):
        tiles[ground[c], c] = GRASS
        tiles[ground[c] + 1:, c] = np.where((np.arange(ground[c] + 1, ROWS) * 3 + c * 5) % 7 < 4, DIRT_A, DIRT_B)
    for c, row in checkpoints:
        tiles[row - 2, c], tiles[row - 1, c] = CP_OFF, CP_POLE
    tiles[g - 9, flag], tiles[g - 8:g, flag], tiles[g - 8, flag - 1] = POLE_TOP, POLE, FLAG
    tiles[g - 4, cols - 7:cols - 2] = CASTLE_TOP
    tiles[g - 3:g, cols - 7:cols - 2] = CASTLE_WALL
    tiles[g - 2, cols - 5], tiles[g - 1, cols - 5] = CASTLE_DOOR_TOP, CASTLE_DOOR
    coins &= tiles == EMPTY
    # grass tufts and flowers on free ground, fixed per seed
    above = np.zeros((ROWS, cols), bool)
    has = ground > 0
    above[ground[has] - 1, np.flatnonzero(has)] = True
    deco = above & (tiles == EMPTY) & ~coins & (rng.random((ROWS, cols)) < 0.16)
    tiles[deco] = np.where(rng.random(deco.sum()) < 0.4, FLOWER, TUFT)
    return dict(tiles=tiles, coins=coins, spots=spots, checkpoints=checkpoints, flag=flag,
                no_enemy=no_enemy, start_row=int(ground[3]))


def _backgrounds(rng: np.random.Generator, theme, height: int, width: int, tile: int):
    """Far layer rgb [H, P+W, 3] (opaque: sky, clouds, mountains) and near layer as a `_layer`
    pair (hills, trees) and its first non-empty row; P = BG_PERIOD_TILES tiles, the last W
    columns repeat the first so any crop at offset [0, P) is one slice."""
    (sky0, sky1, mlit, mshade, snow, hill, hill_dark, rim, tree, cloud, cloud_shade) = theme
    period = BG_PERIOD_TILES * tile
    top = height - ROWS * tile                        # rows above the level (non-square frames)
    yt = ((np.arange(height) - top) / tile)[:, None]  # [H, 1] in tile rows, 0 = level top
    xt = (np.arange(period) / tile)[None, :]          # [1, P] in tiles

    def wrap(dx):  # periodic distance in tiles
        return (dx + BG_PERIOD_TILES / 2) % BG_PERIOD_TILES - BG_PERIOD_TILES / 2

    sky = _lerp(sky0, sky1, (yt[:, 0] + top / tile) / (12 + top / tile))          # [H, 3]
    far = np.broadcast_to(sky[:, None], (height, period, 3)).copy()
    for _ in range(6):  # clouds: three overlapping ellipses, shaded underneath
        cx, cy, s = rng.uniform(0, BG_PERIOD_TILES), rng.uniform(1.0, 4.5), rng.uniform(0.8, 1.4)
        inside = np.zeros((height, period), bool)
        for ox, oy, r in ((-1.1, 0.25, 0.8), (0.0, -0.15, 1.05), (1.1, 0.3, 0.75)):
            dx, dy = wrap(xt - cx - ox * s) / (1.6 * r * s), (yt - cy - oy * s) / (r * s)
            inside |= (dx * dx + dy * dy < 1) & (yt < cy + 0.45 * s)
        far[inside] = cloud
        far[inside & (yt > cy + 0.1 * s)] = cloud_shade
    base = 12.5  # mountains and hills stand on this tile row
    best = np.zeros((1, period))
    side = np.zeros((1, period), bool)
    peak = np.ones((1, period))
    for _ in range(7):
        cx, half, hgt = rng.uniform(0, BG_PERIOD_TILES), rng.uniform(5, 10), rng.uniform(3.5, 7.5)
        dx = wrap(xt - cx)
        h = hgt * np.clip(1 - np.abs(dx) / half, 0, None)
        win = h > best
        best, side, peak = np.where(win, h, best), np.where(win, dx > 0, side), np.where(win, hgt, peak)
    ridge = base - best                              # top of the mountains, tile rows [1, P]
    mountain = yt >= ridge
    wiggle = 0.25 * np.sin(xt * 2.7) + 0.15 * np.sin(xt * 5.3)
    capped = mountain & (base - yt > 0.7 * peak + wiggle) & (best > 0.5)
    slope = np.where(side[..., None], np.asarray(mshade, np.float32), np.asarray(mlit, np.float32))  # [1, P, 3]
    far = np.where(mountain[..., None], slope, far)
    far[capped] = snow

    hill_h = np.zeros((1, period))
    for _ in range(6):
        cx, half, hgt = rng.uniform(0, BG_PERIOD_TILES), rng.uniform(4, 8), rng.uniform(1.5, 4.0)
        dx = wrap(xt - cx) / half
        hill_h = np.maximum(hill_h, hgt * np.sqrt(np.clip(1 - dx * dx, 0, None)))
    contour = base + 0.8 - hill_h                     # [1, P]
    depth = yt - contour                              # tiles below the hill surface
    near_m = depth >= 0
    near = np.where((np.floor(depth * 1.5) % 2 == 1)[..., None], np.asarray(hill_dark, np.float32),
                    np.asarray(hill, np.float32))
    near[(depth >= 0) & (depth < 0.22)] = rim
    for _ in range(7):  # round trees standing on the hills
        cx = rng.uniform(0, BG_PERIOD_TILES)
        foot = contour[0, int(cx * tile) % period] + 0.3
        r = rng.uniform(0.6, 1.0)
        dx, dy = wrap(xt - cx), yt - (foot - 1.0 - r)
        trunk = (np.abs(dx) < 0.14) & (yt > foot - 1.2) & (yt < foot)
        crown = dx * dx + dy * dy < r * r
        near[trunk] = (96, 60, 40)
        near[crown] = tree
        near[crown & ((dx + 0.3 * r) ** 2 + (dy + 0.3 * r) ** 2 < (0.35 * r) ** 2)] = hill
        near_m |= trunk | crown
    near *= np.clip(1 - 0.2 * (yt - base), 0.3, 1)[..., None]   # deeper = darker: pits read as pits
    cols = np.arange(period + width) % period
    # np.take keeps rows contiguous (fancy indexing on axis 1 would not, making crops slow)
    far = np.take(np.round(far).astype(np.uint8), cols, axis=1)
    near, keep = _layer(np.take(np.round(near).astype(np.uint8), cols, axis=1), np.take(near_m, cols, axis=1))
    return far, near, keep, int(np.argmax(near_m.any(1)))


# ---- the game -------------------------------------------------------------------------------
class Platformer(Game):
    """Vectorised side-scrolling platformer; see `PlatformerEnv` for the action table."""

    name = "platformer"
    ACTIONS = ("left", "right", "jump")

    def __init__(self, num_envs: int = 1, width: int = 128, height: int = 128, level_cols: int = 300,
                 max_enemies: int = 32, checkpoint_every: int = 64):
        super().__init__(num_envs, width, height)
        self.tile = max(1, min(width, height) // 16)     # tile size in pixels
        T, N = self.tile, self.num_envs
        self.cols = max(int(level_cols), 64, -(-width // T) + 30)
        self.cp_every = int(checkpoint_every)
        self.max_enemies = int(max_enemies)
        self.top = height - ROWS * T                     # screen rows above the level
        self.level_px = self.cols * T
        self.period = BG_PERIOD_TILES * T

        # art resampled to this resolution: tiles [K, T, T, 3], player [facing, pose, hurt, h, w, 3]
        arts = [_art(TILE_ART.get(k, ("........",) * 8), T, T) for k in range(COIN + 1)]
        self.tile_rgb = np.stack([a[0] for a in arts])
        self.tile_keep = np.stack([a[1] for a in arts])
        self.solid_lut = np.isin(np.arange(COIN + 1), SOLID_TILES)
        sw, sh = T, max(1, 12 * T // 8)
        self.player_rgb = np.zeros((2, len(POSES), 2, sh, sw, 3), np.uint8)
        self.player_keep = np.zeros((2, len(POSES), sh, sw, 3), np.uint8)
        for p, pose in enumerate(POSES):
            rgb, keep = _art(PLAYER_ART[pose], sh, sw)
            for f in range(2):
                r, k = (rgb, keep) if f == 0 else (rgb[:, ::-1], keep[:, ::-1])
                self.player_rgb[f, p, 0], self.player_keep[f, p] = r, k
                self.player_rgb[f, p, 1] = ((r.astype(np.uint16) + 2 * 235) // 3) & ~k   # pale: just hit
        enemy = [_art(a, T, T) for a in ENEMY_ART]
        self.enemy_rgb = np.stack([e[0] for e in enemy])
        self.enemy_keep = np.stack([e[1] for e in enemy])

        # per-env world: level image [N, ROWS*T, cols*T, 3] as a `_layer` pair, grids; the
        # background strips are shared: each env shows one of BG_VARIANTS, built when first used
        self.fg = np.zeros((N, ROWS * T, self.level_px, 3), np.uint8)
        self.fg_keep = np.zeros((N, ROWS * T, self.level_px, 3), np.uint8)
        self.fg_top = np.zeros(N, np.int64)              # first level-image row with content
        self.backgrounds: dict[int, tuple] = {}          # variant -> (far, near, near_keep, near_top)
        self.bg_variant = np.zeros(N, np.int64)
        self.tiles = np.zeros((N, ROWS, self.cols), np.uint8)
        self.solid = np.zeros((N, ROWS + 2 * PAD, self.cols), bool)   # row r of the level at r + PAD
        self.coins = np.zeros((N, ROWS + 2 * PAD, self.cols), bool)
        self.visited = np.zeros((N, self.cols), bool)
        self.pit = np.zeros((N, self.cols), bool)                      # columns with no ground
        self.flag_col = self.cols - 10
        # player state (units)
        z = lambda dtype=np.int64: np.zeros(N, dtype)  # noqa: E731
        self.px, self.py, self.vx, self.vy = z(), z(), z(), z()
        self.on_ground, self.won = z(bool), z(bool)
        self.facing = np.ones(N, np.int64)
        self.safe, self.knock = z(), z()                 # ticks left without damage / without control
        self.spawn_x, self.spawn_y = z(), z()
        # checkpoints [N, K] (columns, padded with a column never reached) and how many are passed
        self.cp_cols = np.full((N, self.cols // max(self.cp_every, 1) + 1), 1 << 30, np.int64)
        self.cp_rows = np.zeros_like(self.cp_cols)
        self.cp_next = z()
        # enemies [N, E] (units); dead ones have alive False
        E = self.max_enemies
        self.ex, self.ey, self.edir, self.espeed = (np.zeros((N, E), np.int64) for _ in range(4))
        self.exmin, self.exmax = np.zeros((N, E), np.int64), np.zeros((N, E), np.int64)
        self.ealive = np.zeros((N, E), bool)
        self.esquash = np.zeros((N, E), np.int64)

    # ---- reset ------------------------------------------------------------------------------
    def _reset(self, env_ids: np.ndarray, seeds: np.ndarray) -> None:
        T = self.tile
        for i, seed in zip(env_ids.tolist(), seeds.tolist()):
            rng = np.random.default_rng([seed, 0x5CA1AB1E])
            lvl = _generate_level(rng, self.cols, self.cp_every)
            tiles = lvl["tiles"]
            self.tiles[i] = tiles
            self.solid[i] = False
            self.solid[i, PAD:PAD + ROWS] = self.solid_lut[tiles]
            self.pit[i] = ~self.solid[i, PAD + ROWS - 1]
            self.coins[i] = False
            self.coins[i, PAD:PAD + ROWS] = lvl["coins"]
            drawn = np.where(lvl["coins"], COIN, tiles)                              # [R, C]
            self.fg[i] = self.tile_rgb[drawn].transpose(0, 2, 1, 3, 4).reshape(ROWS * T, self.level_px, 3)
            self.fg_keep[i] = self.tile_keep[drawn].transpose(0, 2, 1, 3, 4).reshape(ROWS * T, self.level_px, 3)
            self.fg_top[i] = np.argmax((self.fg_keep[i, :, :, 0] == 0).any(1))
            v = self.bg_variant[i] = int(rng.integers(BG_VARIANTS))
            if v not in self.backgrounds:
                bg_rng = np.random.default_rng([v, 0xB6])
                self.backgrounds[v] = _backgrounds(bg_rng, THEMES[v % len(THEMES)], self.height, self.width, T)
            # enemies: each patrols the stretch of its surface it stands on
            self.ealive[i], self.esquash[i] = False, 0
            solid = self.solid[i, PAD:PAD + ROWS]
            k = 0
            for col, row in lvl["spots"]:
                walk = solid[row] & ~solid[row - 1] & ~lvl["no_enemy"]
                if k == self.max_enemies or not walk[col]:
                    continue
                a, b = col, col
                while a > 0 and walk[a - 1]:
                    a -= 1
                while b < self.cols - 1 and walk[b + 1]:
                    b += 1
                if b - a < 1:
                    continue
                self.exmin[i, k], self.exmax[i, k] = a * U, (b + 1) * U - EW
                self.ex[i, k] = col * U + (U - EW) // 2
                self.ey[i, k] = row * U - EH
                self.edir[i, k] = 1 if rng.random() < 0.5 else -1
                self.espeed[i, k] = rng.integers(3, 7)
                self.ealive[i, k] = True
                k += 1
            cps = lvl["checkpoints"]
            self.cp_cols[i] = 1 << 30
            self.cp_cols[i, :len(cps)] = [c for c, _ in cps]
            self.cp_rows[i, :len(cps)] = [r for _, r in cps]
            self.spawn_x[i] = 3 * U + (U - PW) // 2
            self.spawn_y[i] = lvl["start_row"] * U - PH
        ids = env_ids
        self.cp_next[ids] = 0
        self.px[ids], self.py[ids] = self.spawn_x[ids], self.spawn_y[ids]
        self.vx[ids] = self.vy[ids] = self.safe[ids] = self.knock[ids] = 0
        self.on_ground[ids], self.won[ids], self.facing[ids] = True, False, 1
        self.visited[ids] = False
        self._visit(ids)

    # ---- step -------------------------------------------------------------------------------
    def _grid(self, grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """grid [N, ROWS+2*PAD, C] looked up at level rows/cols [N, ...] (clipped to the padding)."""
        n = np.arange(self.num_envs).reshape((-1,) + (1,) * (rows.ndim - 1))
        return grid[n, np.clip(rows, -PAD, ROWS + PAD - 1) + PAD, np.clip(cols, 0, self.cols - 1)]

    def _visit(self, ids) -> None:
        left, right = self.px[ids] // U, (self.px[ids] + PW - 1) // U
        self.visited[ids, left] = True
        self.visited[ids, right] = True

    def _step(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        N = self.num_envs
        reward = np.zeros(N, np.float32)
        live = ~self.won                                   # a finished level stays frozen
        steer = keys[:, 1].astype(np.int64) - keys[:, 0]   # -1, 0, +1; left+right cancel

        # enemies walk their patrol, turning at its ends
        walking = self.ealive & live[:, None]
        ex = self.ex + np.where(walking, self.edir * self.espeed, 0)
        turn_l, turn_r = ex > self.exmax, ex < self.exmin
        self.ex = np.clip(ex, self.exmin, self.exmax)
        self.edir = np.where(turn_l, -1, np.where(turn_r, 1, self.edir))
        self.esquash = np.maximum(self.esquash - 1, 0)

        # horizontal: accelerate toward the held direction, brake otherwise; then walls
        control = live & (self.knock <= 0)
        braked = self.vx - np.sign(self.vx) * np.minimum(np.abs(self.vx), RUN_FRIC)
        run = np.clip(self.vx + steer * RUN_ACC, -RUN_MAX, RUN_MAX)
        vx = np.where(control, np.where(steer != 0, run, braked), np.where(live, self.vx, 0))
        self.facing = np.where(control & (steer != 0), steer, self.facing)
        py = self.py
        x = np.clip(self.px + vx, 0, self.cols * U - PW)
        body = py[:, None] // U + np.arange(3)                                        # [N, 3] rows
        body_in = body <= (py[:, None] + PH - 1) // U
        lead = np.where(vx > 0, (x + PW - 1) // U, x // U)
        hit = (self._grid(self.solid, body, np.repeat(lead[:, None], 3, 1)) & body_in).any(1) & (vx != 0)
        x = np.where(hit, np.where(vx > 0, lead * U - PW, (lead + 1) * U), x)
        vx = np.where(hit, 0, vx)

        # vertical: gravity, jump only from the ground, then floors and ceilings
        jump = control & keys[:, 2] & self.on_ground
        vy = np.where(live, np.where(jump, -JUMP_V, np.minimum(self.vy + GRAVITY, MAX_FALL)), 0)
        y = py + vy
        feet = np.stack([x // U, (x + PW - 1) // U], 1)                               # [N, 2] cols
        edge = np.where(vy > 0, (y + PH - 1) // U, y // U)
        hit = self._grid(self.solid, np.repeat(edge[:, None], 2, 1), feet).any(1) & (vy != 0)
        falling = vy > 0
        y = np.where(hit, np.where(falling, edge * U - PH, (edge + 1) * U), y)
        self.on_ground = hit & falling
        vy = np.where(hit, 0, vy)

        # enemies: landing on one from above flattens it (+1), touching it otherwise hurts (-1)
        touch = (self.ealive & live[:, None] & (x[:, None] < self.ex + EW) & (self.ex < x[:, None] + PW)
                 & (y[:, None] < self.ey + EH) & (self.ey < y[:, None] + PH))
        stomp = touch & falling[:, None] & (py[:, None] + PH <= self.ey + STOMP_SLACK)
        stomped = stomp.sum(1)
        reward += stomped
        self.ealive &= ~stomp
        self.esquash = np.where(stomp, SQUASH_TICKS, self.esquash)
        vy = np.where(stomped > 0, -STOMP_BOUNCE, vy)
        self.on_ground &= stomped == 0
        hurt = (touch & ~stomp).any(1) & (stomped == 0) & (self.safe <= 0)
        reward -= hurt
        centre = np.where(touch & ~stomp, self.ex + EW // 2, 0).sum(1) // np.maximum((touch & ~stomp).sum(1), 1)
        away = np.where(x + PW // 2 < centre, -1, 1)
        vx = np.where(hurt, away * KNOCK_VX, vx)
        vy = np.where(hurt, -KNOCK_VY, vy)
        self.knock = np.where(hurt, KNOCK_TICKS, np.maximum(self.knock - 1, 0))
        self.safe = np.where(hurt, SAFE_TICKS, np.maximum(self.safe - 1, 0))
        self.on_ground &= ~hurt

        # coins in the tiles the body overlaps (<= 2 columns x 3 rows)
        rows = y[:, None, None] // U + np.arange(3)[None, :, None]                  # [N, 3, 1]
        cols = feet[:, None, :]                                                      # [N, 1, 2]
        rows_b, cols_b = np.broadcast_arrays(rows, cols)
        got = self._grid(self.coins, rows_b, cols_b) & (rows_b <= (y[:, None, None] + PH - 1) // U)
        got &= live[:, None, None]
        if got.any():
            T = self.tile
            for n, a, b in zip(*np.nonzero(got)):
                r, c = int(rows_b[n, a, b]), int(cols_b[n, a, b])
                if self.coins[n, r + PAD, c]:      # both feet may share a column: count it once
                    self.coins[n, r + PAD, c] = False
                    self.fg[n, r * T:(r + 1) * T, c * T:(c + 1) * T] = 0
                    self.fg_keep[n, r * T:(r + 1) * T, c * T:(c + 1) * T] = 255
                    reward[n] += 1

        self.px, self.py, self.vx, self.vy = x, y, vx, vy
        # checkpoints: passing one moves the respawn point there and raises its green flag
        centre_col = (x + PW // 2) // U
        k = np.minimum(self.cp_next, self.cp_cols.shape[1] - 1)
        passed = live & (centre_col >= self.cp_cols[np.arange(N), k]) & (self.cp_next < self.cp_cols.shape[1])
        for n in np.flatnonzero(passed):
            c, r = int(self.cp_cols[n, k[n]]), int(self.cp_rows[n, k[n]])
            self.spawn_x[n], self.spawn_y[n] = c * U + (U - PW) // 2, r * U - PH
            self._set_tile(n, r - 2, c, CP_ON)
            self.cp_next[n] += 1

        # falling out of the level: -1, back to the last checkpoint
        fell = live & (y > ROWS * U)
        reward -= fell
        self.px, self.py = np.where(fell, self.spawn_x, self.px), np.where(fell, self.spawn_y, self.py)
        self.vx, self.vy = np.where(fell, 0, self.vx), np.where(fell, 0, self.vy)
        self.safe = np.where(fell, SAFE_TICKS, self.safe)
        self.knock = np.where(fell, 0, self.knock)

        # the flag pole at the end: +10, episode over
        won = live & (self.px + PW >= self.flag_col * U + 24)
        reward += 10 * won
        self.won |= won
        self._visit(np.flatnonzero(live))
        return reward, won | ~live

    def _set_tile(self, n: int, row: int, col: int, tile: int) -> None:
        """Change one tile of env n (map, collision and level image); tests build scenarios with it."""
        T = self.tile
        self.tiles[n, row, col] = tile
        self.solid[n, row + PAD, col] = self.solid_lut[tile]
        self.coins[n, row + PAD, col] = tile == COIN
        self.fg[n, row * T:(row + 1) * T, col * T:(col + 1) * T] = self.tile_rgb[tile]
        self.fg_keep[n, row * T:(row + 1) * T, col * T:(col + 1) * T] = self.tile_keep[tile]
        if tile == COIN:
            self.tiles[n, row, col] = EMPTY
        self.fg_top[n] = min(self.fg_top[n], row * T)

    # ---- render -----------------------------------------------------------------------------
    def camera(self) -> np.ndarray:
        """Left edge of the view in level pixels [N]: player at a third of the width, clamped."""
        centre = (self.px + PW // 2) * self.tile // U
        return np.clip(centre - self.width // 3, 0, self.level_px - self.width)

    def render(self) -> np.ndarray:
        T, W, top = self.tile, self.width, self.top
        out = np.empty((self.num_envs, self.height, W, 3), np.uint8)
        cam = self.camera()
        far_off, near_off = (cam // FAR_RATE) % self.period, (cam // NEAR_RATE) % self.period
        # sprite placement in screen pixels; sprites stand on their hitbox's bottom centre
        sw = self.player_rgb.shape[4]
        pxs = (self.px * T // U) + (PW * T // U - sw) // 2 - cam
        pys = top + (self.py + PH) * T // U - self.player_rgb.shape[3]
        pose = np.where(~self.on_ground, 3, np.where(self.vx != 0, 1 + (self.px // 40) % 2, 0))
        facing = (self.facing < 0).astype(np.int64)
        hurt = (self.safe > 0).astype(np.int64)
        exs = self.ex * T // U + (EW * T // U - T) // 2 - cam[:, None]
        eys = top + (self.ey + EH) * T // U - T
        eframe = np.where(self.ealive, (self.ex // 24) % 2, 2)
        shown = (self.ealive | (self.esquash > 0)) & (exs > -T) & (exs < W)
        for i in range(self.num_envs):
            o = out[i]
            far, near, near_keep, a = self.backgrounds[self.bg_variant[i]]
            o[...] = far[:, far_off[i]:far_off[i] + W]
            s, b = o[a:], near_off[i]
            s &= near_keep[a:, b:b + W]
            s |= near[a:, b:b + W]
            a, c = self.fg_top[i], cam[i]
            s = o[top + a:]
            s &= self.fg_keep[i, a:, c:c + W]
            s |= self.fg[i, a:, c:c + W]
            for e in np.flatnonzero(shown[i]):
                f = eframe[i, e]
                _blit(o, self.enemy_rgb[f], self.enemy_keep[f], exs[i, e], eys[i, e])
            f, p, h = facing[i], pose[i], hurt[i]
            _blit(o, self.player_rgb[f, p, h], self.player_keep[f, p], pxs[i], pys[i])
        return out

    def coverage(self) -> np.ndarray:
        """Share of the level's columns up to the flag that the player's body has been in."""
        return (self.visited[:, :self.flag_col + 1].sum(1) / (self.flag_col + 1)).astype(np.float32)


# ---- Gymnasium env --------------------------------------------------------------------------
class PlatformerEnv(SceneEnv):
    """Side-scrolling platformer: run right through a generated level to the flag.

    ## Action space

    `MultiBinary(3)`, one entry per key, 1 = held this tick:

    | index | key   | effect                                                                |
    |-------|-------|-----------------------------------------------------------------------|
    | 0     | left  | accelerate left (max 0.31 tiles/tick); with `right` held: no steering |
    | 1     | right | accelerate right (max 0.31 tiles/tick); with `left` held: no steering |
    | 2     | jump  | fixed upward impulse, only while standing on ground (~4 tiles high)   |

    With neither direction held the player brakes to a stop. Gravity, solid tiles (land on
    top, bump the head, blocked at the sides) and a knock-back after an enemy hit apply.

    ## Observation space

    `Box(0, 255, (height, width, 3), uint8)`: the rendered frame, 128x128 by default. The
    level is 16 tiles high (tile = min(width, height) // 16 pixels) and always fully in view;
    extra rows above it show sky. The camera keeps the player at a third of the width.

    ## Rewards

    | event                                          | reward |
    |------------------------------------------------|--------|
    | coin touched                                   | +1     |
    | enemy stomped (landing on it from above)       | +1     |
    | enemy touched from the side or below           | -1 (knocked back, then 1.5 s safe) |
    | fell into a pit                                | -1 (respawn at the last checkpoint) |
    | reached the flag pole at the level's end       | +10    |

    ## Episode end

    Terminated when the flag is reached; truncated after `max_episode_steps` (default 2000).
    Falling into a pit does not end the episode.

    ## Options

    `width`, `height` (multiples of 8, >= 16), `level_cols` (level width in tiles, default
    300), `max_enemies` (default 32), `checkpoint_every` (tiles between checkpoints, 64).
    """

    game_cls = Platformer


# ---- policies -------------------------------------------------------------------------------
class PlatformerRandom(PersistentRandom):
    """Restless random keys: a direction (right more often than left, never both) and a
    jump key drawn independently, held for 3-14 ticks; sometimes nothing."""

    def __init__(self, game: Game, seed: int = 0, hold: tuple[int, int] = (3, 14),
                 p_right: float = 0.5, p_left: float = 0.3, p_jump: float = 0.35):
        super().__init__(game, seed, hold=hold, exclusive=((0, 1),))
        self.p_right, self.p_left, self.p_jump = p_right, p_left, p_jump

    def __call__(self, game: Game) -> np.ndarray:
        for i in np.flatnonzero(self.left <= 0):
            u = self.rng.random(2)
            self.keys[i] = (self.p_right <= u[0] < self.p_right + self.p_left, u[0] < self.p_right,
                            u[1] < self.p_jump)
            self.left[i] = self.rng.integers(self.hold[0], self.hold[1] + 1)
        self.left -= 1
        return self.keys.copy()


class PlatformerExplorer(Policy):
    """Scripted runner: always holds a direction, mostly right; jumps at pits, walls and
    enemies just ahead (read from the tile map), hops at random now and then to reach
    platforms, and sometimes turns back for a moment (or when stuck at a wall)."""

    def __init__(self, game: Game, seed: int = 0, p_back: float = 0.006, back_ticks: tuple[int, int] = (4, 14),
                 p_hop: float = 0.03, stuck_ticks: int = 30):
        super().__init__(game, seed)
        self.p_back, self.back_ticks, self.p_hop, self.stuck_ticks = p_back, back_ticks, p_hop, stuck_ticks
        self.back = np.zeros(self.num_envs, np.int64)       # ticks left of running left
        self.dir = np.ones(self.num_envs, np.int64)         # direction held (+1 right, -1 left)
        self.last_x = np.full(self.num_envs, -1, np.int64)  # player x last tick (units)
        self.stalled = np.zeros(self.num_envs, np.int64)    # ticks in a row without moving

    def reset(self, env_ids=None):
        ids = slice(None) if env_ids is None else np.asarray(env_ids)
        self.back[ids], self.dir[ids], self.last_x[ids], self.stalled[ids] = 0, 1, -1, 0

    def __call__(self, game: Game) -> np.ndarray:
        g: Platformer = game  # type: ignore[assignment]
        u = self.rng.random((self.num_envs, 3))
        self.stalled = np.where(g.px == self.last_x, self.stalled + 1, 0)
        self.last_x = g.px.copy()
        lo, hi = self.back_ticks
        # turn only on the ground: changing course mid-jump drops the player into pits
        start = g.on_ground & (self.back <= 0) & ((u[:, 0] < self.p_back) | (self.stalled > self.stuck_ticks))
        self.back = np.where(start, lo + (u[:, 1] * (hi - lo + 1)).astype(np.int64), self.back)
        self.stalled = np.where(start, 0, self.stalled)
        self.dir = np.where(g.on_ground, np.where(self.back > 0, -1, 1), self.dir)
        d = self.dir
        self.back = np.maximum(self.back - 1, 0)

        # look 0.4 and 1.25 tiles past the leading edge: pits (no ground at all), walls at the body;
        # a platform's end is no reason to jump, walking off it is safe
        edge = np.where(d > 0, g.px + PW - 1, g.px)
        near = np.stack([(edge + d * 24) // U, (edge + d * 80) // U], 1)                 # [N, 2]
        gap = g.pit[np.arange(g.num_envs)[:, None], np.clip(near, 0, g.cols - 1)].any(1)
        rows = g.py[:, None, None] // U + np.arange(3)[None, :, None]                     # [N, 3, 1]
        rows_b, cols_b = np.broadcast_arrays(rows, near[:, None, :])
        wall = (g._grid(g.solid, rows_b, cols_b) & (rows_b <= (g.py[:, None, None] + PH - 1) // U)).any((1, 2))
        dx = (g.ex + EW // 2 - (g.px + PW // 2)[:, None]) * d[:, None]
        dy = np.abs(g.ey + EH // 2 - (g.py + PH // 2)[:, None])
        enemy = (g.ealive & (dx > 0) & (dx < 200) & (dy < 80)).any(1)
        # random hops reach platforms, but never when a pit is coming: they would fall short
        lead = (edge // U)[:, None] + d[:, None] * np.arange(1, 8)
        pit_soon = g.pit[np.arange(g.num_envs)[:, None], np.clip(lead, 0, g.cols - 1)].any(1)
        jump = g.on_ground & (gap | wall | enemy | ((u[:, 2] < self.p_hop) & ~pit_soon))
        return np.stack([d < 0, d > 0, jump], 1)


Platformer.POLICIES = {"random": PlatformerRandom, "explore": PlatformerExplorer}
