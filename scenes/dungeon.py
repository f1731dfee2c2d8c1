"""Dungeon: a top-down scrolling tile world (Zelda / roguelike look).

Each world is a procedurally generated map of `map_size` tiles (default 48x48) that is larger
than the screen: meadows, sandy shores, lakes, dirt paths with wooden bridges, ruined stone
rooms with chests, forests and boulders. Slimes and bats wander on their own; coins and gems
lie around. The camera follows the player and stops at the map edges.

Game logic runs in resolution-free units: one tile is `UNIT` = 16 units, whatever the pixel
size of a tile on screen (`tile = min(width, height) // 8`, so the view shows 8 tiles across
its shorter side). The art is drawn once at 16 px per tile and scaled to the tile size.

Speed: each world's whole map is pre-rendered at reset into one uint8 image (items and chests
baked in; a tile is repainted when an item is picked up or a chest opens). A frame is a crop of
that image at the camera offset plus a few masked sprite copies (creatures, player, sword).
"""
from __future__ import annotations

import numpy as np

from scenes.core import Game, PersistentRandom, Policy, SceneEnv

UNIT = 16          # logic units per tile; positions are in units
ART = 16           # pixels per tile of the hand-drawn art before scaling

# terrain codes; WATER and WALL block movement
GRASS, DIRT, SAND, WATER, STONE, WALL, BRIDGE = range(7)
N_TERRAIN = 7
WALKABLE_TERRAIN = np.array([True, True, True, False, True, False, True])
TREE, ROCK = 1, 2                          # obstacle codes (block movement)
COIN, GEM, CHEST, CHEST_OPEN = 1, 2, 3, 4  # item codes (chests block movement)
VARIANTS = 4                               # texture variants per terrain, picked per tile
N_OVERLAY = 7                              # none, tree, rock, coin, gem, chest, open chest

# facing codes equal the key indices of the movement keys
UP, DOWN, LEFT, RIGHT, INTERACT = range(5)
DIR_XY = np.array([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0]], np.int64)  # (dx, dy); row 4 = rest

PLAYER_HALF = 6      # player hit box: 12x12 units, so it fits 1-tile gaps
CREATURE_HALF = 5    # creature hit box: 10x10 units
SLIDE_MAX = 8        # units of overlap with a blocked row that corner sliding smooths away
SWING_TICKS = 6      # sword swing length (3 frames of 2 ticks)
INVULN_TICKS = 24    # after a hit the player is shown hurt and cannot be hit again
KNOCK_TICKS, KNOCK_SPEED = 6, 2   # knockback: 12 units over 6 ticks (even, keeps positions even)
DYING_TICKS = 8      # a slain creature shows a puff of smoke this long
RESPAWN_TICKS = 200  # then it comes back at its home tile once the player is 5+ tiles away


# ---- helpers: noise, art ------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise [h, w] in [0, 1]: a random grid every `cell` tiles, smoothstep-interpolated."""
    g = rng.random((h // cell + 2, w // cell + 2))
    y, x = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], fx * fx * (3 - 2 * fx)
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _dilate(m: np.ndarray) -> np.ndarray:
    d = m.copy()
    d[1:] |= m[:-1]
    d[:-1] |= m[1:]
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    return d


class _Art:
    """One sprite drawn on a `size`-pixel canvas with shapes in pixel coordinates."""

    def __init__(self, size: int = ART, base=None):
        self.size = size
        c = np.arange(size) + 0.5
        self.x, self.y = np.meshgrid(c, c)
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.mask = np.zeros((size, size), bool)
        if base is not None:
            self.fill(np.ones((size, size), bool), base)

    def fill(self, where, color):
        self.rgb[where] = color
        self.mask |= where
        return self

    def ellipse(self, cx, cy, rx, ry):
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1

    def rect(self, x0, y0, x1, y1):
        return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

    def segment(self, ax, ay, bx, by, r):
        dx, dy = bx - ax, by - ay
        t = np.clip(((self.x - ax) * dx + (self.y - ay) * dy) / (dx * dx + dy * dy), 0, 1)
        return (self.x - ax - t * dx) ** 2 + (self.y - ay - t * dy) ** 2 <= r * r

    def outline(self, color):
        return self.fill(_dilate(self.mask) & ~self.mask, color)


def _scale(rgb: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Art [B, B, 3] + mask to n px: nearest neighbour when enlarging (crisp pixel art),
    coverage-weighted area average when shrinking (small features blend instead of vanishing)."""
    b = rgb.shape[0]
    if n >= b:
        i = (np.arange(n) * b) // n
        return np.rint(rgb[i][:, i]).astype(np.uint8), mask[i][:, i].copy()
    t = (np.arange(b) * n) // b
    idx = (t[:, None], t[None, :])
    cnt, cov, acc = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n, 3))
    np.add.at(cnt, idx, 1.0)
    np.add.at(cov, idx, mask.astype(float))
    np.add.at(acc, idx, rgb * mask[..., None])
    out = acc / np.maximum(cov, 1e-9)[..., None]
    return np.rint(out).clip(0, 255).astype(np.uint8), cov / cnt >= 0.5


def _terrain_art(kind: int, variant: int, rng: np.random.Generator) -> np.ndarray:
    """One 16x16 texture variant of a terrain; details are fixed per variant (world-fixed)."""
    shade = rng.integers(-6, 7)
    base = np.array([(74, 150, 62), (150, 112, 70), (220, 200, 144), (50, 100, 192),
                     (128, 126, 138), (108, 98, 118), (162, 114, 66)][kind], float) + shade
    img = np.zeros((ART, ART, 3)) + base
    dark, light = base * 0.74, np.minimum(base * 1.2 + 12, 255)
    r = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    if kind == GRASS:    # blade tufts, flowers on one variant
        for _ in range(6):
            x, y = r(1, 13), r(1, 13)
            img[y:y + 2, x] = dark
            img[y + 1:y + 3, x + 2] = dark
            img[y, x + 1] = light
        if variant == VARIANTS - 1:
            for _ in range(2):
                x, y = r(2, 14), r(2, 14)
                img[y - 1:y + 2, x] = img[y, x - 1:x + 2] = (240, 240, 235)
                img[y, x] = (250, 210, 60)
    elif kind == DIRT:   # pebbles with a lit top
        for _ in range(5):
            x, y = r(1, 14), r(2, 15)
            img[y, x:x + 2] = dark
            img[y - 1, x] = light
    elif kind == SAND:   # wind ripples
        for _ in range(2):
            x0, y0, ph = r(0, 7), r(2, 13), rng.random()
            for x in range(x0, x0 + 9):
                y = y0 + int(round(1.2 * np.sin(2 * np.pi * (x / 9 + ph))))
                img[y, x], img[min(y + 1, 15), x] = light, dark
    elif kind == WATER:  # little wave marks
        for _ in range(2):
            x, y = r(1, 11), r(2, 13)
            img[y, x] = img[y, x + 4] = light
            img[y + 1, x + 1:x + 4] = light
    elif kind == STONE:  # 2x2 slabs with mortar and a lit top edge
        for sy in (0, 8):
            for sx in (0, 8):
                img[sy:sy + 8, sx:sx + 8] = base + rng.integers(-8, 9)
                img[sy + 1, sx + 1:sx + 8] += 16
        img[[0, 8], :] = img[:, [0, 8]] = dark
        if shade < -2:   # a crack
            x, y = r(2, 6), r(2, 6)
            for i in range(4):
                img[y + i, x + i // 2] = dark
    elif kind == WALL:   # running-bond bricks
        for row in range(4):
            off = 0 if row % 2 == 0 else 4
            for bx in range(-1, 2):
                x0 = off + 8 * bx
                img[4 * row:4 * row + 4, max(x0, 0):max(x0 + 8, 0)] = base + rng.integers(-10, 11)
            img[4 * row, :] = dark * 0.8
            img[4 * row + 1, :] += 14
            img[4 * row:4 * row + 4, [off, (off + 8) % 16]] = dark * 0.8
    elif kind == BRIDGE:  # planks across, dark rails at the sides
        img[3::4, :] = dark
        img[:, [0, 1, 14, 15]] = dark * 0.9
        for _ in range(3):
            img[r(0, 4) * 4 + 1, r(3, 13)] = light
    return np.clip(img, 0, 255)


def _overlay_art() -> dict[str, _Art]:
    """Static tile overlays at 16 px: obstacles and items baked into the map image."""
    out = {}
    a = _Art()   # tree: round canopy, shaded underside, highlight, trunk
    a.fill(a.rect(6.5, 10, 9.5, 15.5), (104, 68, 38))
    canopy = a.ellipse(8, 6.5, 6.6, 6.2)
    a.fill(canopy, (36, 110, 50)).fill(canopy & (a.y > 9), (28, 86, 40))
    a.fill(a.ellipse(6, 4.5, 2.6, 2.2), (74, 156, 72))
    out["tree"] = a.outline((16, 48, 24))
    a = _Art()   # rock: grey boulder
    body = a.ellipse(8, 9.5, 6.6, 5)
    a.fill(body, (134, 132, 142)).fill(body & (a.y > 11), (104, 102, 114))
    a.fill(a.ellipse(6, 7.5, 2.6, 1.5), (176, 174, 184))
    out["rock"] = a.outline((56, 54, 64))
    a = _Art()   # coin
    a.fill(a.ellipse(8, 8, 3.7, 3.7), (246, 196, 44)).fill(a.rect(7.5, 6, 8.5, 10), (200, 140, 24))
    a.fill(a.rect(6, 6, 7, 7), (255, 248, 200))
    out["coin"] = a.outline((110, 72, 12))
    a = _Art()   # gem: a cut diamond
    gem = np.abs(a.x - 8) / 4.2 + np.abs(a.y - 8) / 5.2 <= 1
    a.fill(gem, (60, 200, 226)).fill(gem & (a.y < 7.5), (150, 238, 250))
    a.fill(gem & (a.x > 9.5) & (a.y > 8), (36, 140, 180))
    out["gem"] = a.outline((16, 70, 100))
    a = _Art()   # closed chest: lid, band, gold latch
    a.fill(a.rect(2, 5, 14, 14), (150, 92, 40)).fill(a.rect(2, 5, 14, 8.5), (178, 114, 54))
    a.fill(a.rect(2, 8.5, 14, 9.5), (96, 56, 24)).fill(a.rect(7, 8, 9, 11), (240, 200, 64))
    out["chest"] = a.outline((60, 34, 14))
    a = _Art()   # open chest: raised lid, dark inside, a glint of gold
    a.fill(a.rect(2, 2, 14, 6), (178, 114, 54)).fill(a.rect(2, 6, 14, 14), (150, 92, 40))
    a.fill(a.rect(3, 6, 13, 9), (44, 26, 16)).fill(a.rect(5, 7, 11, 8), (230, 190, 60))
    out["chest_open"] = a.outline((60, 34, 14))
    return out


def _player_art(facing: int, frame: int) -> _Art:
    """The hero: red cap, blue tunic; face/eyes show the facing, legs alternate when walking."""
    a = _Art()
    skin, cap = (240, 192, 142), (206, 48, 40)
    lift = (1, 0) if frame else (0, 1)
    a.fill(a.rect(5, 12 - lift[0], 7.5, 15 - lift[0]), (64, 40, 28))
    a.fill(a.rect(8.5, 12 - lift[1], 11, 15 - lift[1]), (64, 40, 28))
    a.fill(a.rect(4, 7.5, 12, 13), (46, 92, 214)).fill(a.rect(4, 10.5, 12, 11.5), (110, 70, 32))
    if facing in (UP, DOWN):
        a.fill(a.rect(2.5, 8, 4, 11), skin).fill(a.rect(12, 8, 13.5, 11), skin)
    else:
        a.fill(a.rect(7, 8.5, 9, 11.5), skin)
    head = a.ellipse(8, 5, 3.8, 3.6)
    a.fill(head, skin)
    hair = {UP: head & (a.y < 7.5), DOWN: head & (a.y < 4),
            LEFT: head & ((a.y < 4) | (a.x > 9.5)), RIGHT: head & ((a.y < 4) | (a.x < 6.5))}[facing]
    a.fill(hair, cap)
    eyes = {UP: [], DOWN: [6, 9], LEFT: [5], RIGHT: [10]}[facing]
    for ex in eyes:
        a.fill(a.rect(ex, 5, ex + 1, 6), (20, 20, 30))
    return a.outline((24, 18, 34))


def _creature_art(kind: str, frame: int) -> _Art:
    a = _Art()
    if kind == "slime":   # a pink jelly dome that squashes
        cy, rx, ry = (9.5, 6.4, 5.6) if frame == 0 else (10.5, 7.2, 4.4)
        body = a.ellipse(8, cy + ry * 0.4, rx, ry) & (a.y < 14.5)
        a.fill(body, (206, 70, 176)).fill(a.ellipse(5.5, cy - 0.5, 1.6, 1.2) & body, (244, 160, 224))
        for ex in (6, 10):
            a.fill(a.rect(ex - 1, cy + 1, ex + 1, cy + 3), (250, 250, 250))
            a.fill(a.rect(ex, cy + 2, ex + 1, cy + 3), (20, 20, 30))
        a.outline((80, 20, 70))
    elif kind == "bat":   # a dark bat flapping its wings up and down
        wy = 5.5 if frame == 0 else 9.5
        a.fill(a.ellipse(3.8, wy, 3.6, 1.9) | a.ellipse(12.2, wy, 3.6, 1.9), (120, 70, 156))
        a.fill(a.ellipse(8, 8, 2.6, 3.0) | a.rect(5.8, 4.5, 6.8, 6.5) | a.rect(9.2, 4.5, 10.2, 6.5), (64, 40, 84))
        a.fill(a.rect(6.5, 7, 7.5, 8), (250, 220, 60)).fill(a.rect(8.5, 7, 9.5, 8), (250, 220, 60))
        a.outline((28, 14, 40))
    else:                 # puff of smoke where a creature was slain
        if frame == 0:
            a.fill(a.ellipse(8, 8, 4.5, 4.5), (236, 236, 240)).fill(a.ellipse(8, 8, 2, 2), (255, 255, 255))
        else:
            for ang in range(4):
                c, s = np.cos(ang * np.pi / 2 + 0.8), np.sin(ang * np.pi / 2 + 0.8)
                a.fill(a.ellipse(8 + 4.6 * c, 8 + 4.6 * s, 2.2, 2.2), (206, 206, 216))
        a.outline((120, 120, 132))
    return a


def _sword_art(angle: float) -> _Art:
    """Sword on a 3-tile canvas centred on the player's centre, pointing at `angle` (radians, y down)."""
    a = _Art(3 * ART)
    c, s = np.cos(angle), np.sin(angle)
    at = lambda r: (24 + r * c, 24 + r * s)  # noqa: E731
    a.fill(a.segment(*at(3.5), *at(7), 1.0), (110, 64, 30))
    a.fill(a.segment(*at(7.5), *at(21), 1.2), (226, 230, 242)).fill(a.segment(*at(8.5), *at(19), 0.45), (255, 255, 255))
    (gx, gy), px, py = at(7), -3.2 * s, 3.2 * c     # crossguard: across the blade at its base
    a.fill(a.segment(gx + px, gy + py, gx - px, gy - py, 1.0), (222, 172, 52))
    return a.outline((30, 30, 46))


def _hash(seed: np.ndarray, tick: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Counter-based randomness: a splitmix64 hash of (seed, tick, entity), uint64, broadcast."""
    x = (seed.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         ^ tick.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
         ^ (idx.astype(np.uint64) + np.uint64(1)) * np.uint64(0x94D049BB133111EB))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _largest_component(walk: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of walkable tiles (the border is never walkable)."""
    h, w = walk.shape
    flat = walk.ravel().tolist()
    seen = [False] * (h * w)
    best: list[int] = []
    for s in range(h * w):
        if flat[s] and not seen[s]:
            seen[s] = True
            queue = [s]
            for c in queue:
                for nb in (c - 1, c + 1, c - w, c + w):
                    if flat[nb] and not seen[nb]:
                        seen[nb] = True
                        queue.append(nb)
            if len(queue) > len(best):
                best = queue
    out = np.zeros(h * w, bool)
    out[best] = True
    return out.reshape(h, w)


def _blit(flat: np.ndarray, corner: np.ndarray, offsets: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> None:
    """Masked copy of sprites rgb [E, S, S, 3] / mask [E, S, S] into `flat`, a pixel view [P, 3] of the
    frame buffer; `corner` [E] is the flat pixel index of each sprite's top-left, `offsets` [S, S]
    the flat offsets of its pixels. Only opaque pixels are written."""
    if corner.size:
        flat[(corner[:, None, None] + offsets)[mask]] = rgb[mask]


# ---- the game ----------------------------------------------------------------------------
class Dungeon(Game):
    """Vectorised dungeon worlds. See `DungeonEnv` for the action/observation/reward tables.

    Options: `map_size` (tiles wide, tall; grown if the view is wider), `n_creatures`,
    `n_coins`, `n_gems`, `n_rooms` (ruins with a chest each), `speed` (units per tick; 16 = a tile).
    """

    name = "dungeon"
    ACTIONS = ("up", "down", "left", "right", "interact")

    def __init__(self, num_envs: int = 1, width: int = 128, height: int = 128, map_size=(48, 48),
                 n_creatures: int = 16, n_coins: int = 24, n_gems: int = 6, n_rooms: int = 3, speed: int = 2):
        super().__init__(num_envs, width, height)
        self.tile = t = max(2, min(width, height) // 8)     # pixels per tile
        self.map_w = max(int(map_size[0]), -(-width // t) + 2, 20)
        self.map_h = max(int(map_size[1]), -(-height // t) + 2, 20)
        self.n_creatures, self.n_coins, self.n_gems, self.n_rooms = n_creatures, n_coins, n_gems, n_rooms
        self.speed = int(speed)
        n, mh, mw, k = self.num_envs, self.map_h, self.map_w, self.n_creatures

        # tile atlas [(bases) * N_OVERLAY, t, t, 3]: every terrain variant (and every shoreline
        # pattern of water) under every overlay, so painting the map is one gather of whole tiles
        trng = np.random.default_rng(20240611)  # textures are the same in every world
        terrain = [_scale(_terrain_art(kind, v, trng), np.ones((ART, ART), bool), t)[0]
                   for kind in range(N_TERRAIN) for v in range(VARIANTS)]
        fw, foam = max(1, t // 8), np.array([196, 226, 246], np.uint8)
        # water bases: foam on the sides that touch land (bits 1 up, 2 down, 4 left, 8 right)
        for v in range(VARIANTS):
            for bits in range(16):
                tile = terrain[WATER * VARIANTS + v].copy()
                for bit, side in ((1, np.s_[:fw]), (2, np.s_[-fw:]), (4, np.s_[:, :fw]), (8, np.s_[:, -fw:])):
                    if bits & bit:
                        tile[side] = foam
                terrain.append(tile)
        ov = _overlay_art()
        overlays = [(np.zeros((t, t, 3), np.uint8), np.zeros((t, t), bool))]
        overlays += [_scale(ov[key].rgb, ov[key].mask, t)
                     for key in ("tree", "rock", "coin", "gem", "chest", "chest_open")]
        self.atlas = np.stack([np.where(m[..., None], rgb, base) for base in terrain for rgb, m in overlays])

        # sprite bank [M, t, t]: player facing*2+frame (+8 hurt), slime 16-17, bat 18-19, puff 20-21
        arts = [_player_art(f, fr) for f in range(4) for fr in range(2)]
        sprites = [_scale(a.rgb, a.mask, t) for a in arts]
        sprites += [(np.rint(rgb * 0.45 + np.array([255, 40, 40]) * 0.55).astype(np.uint8), m) for rgb, m in sprites]
        sprites += [_scale(a.rgb, a.mask, t) for a in
                    (_creature_art(kind, fr) for kind in ("slime", "bat", "puff") for fr in range(2))]
        self.spr_rgb = np.stack([s[0] for s in sprites])
        self.spr_mask = np.stack([s[1] for s in sprites])
        # sword bank [facing*3 + phase, 3t, 3t]: a swing sweeps -55, 0, +55 degrees around the facing
        face_angle = {UP: -np.pi / 2, DOWN: np.pi / 2, LEFT: np.pi, RIGHT: 0.0}
        swords = [_sword_art(face_angle[f] + d) for f in range(4) for d in np.radians([-55, 0, 55])]
        swords = [_scale(a.rgb, a.mask, 3 * t) for a in swords]
        self.sword_rgb = np.stack([s[0] for s in swords])
        self.sword_mask = np.stack([s[1] for s in swords])

        # world state
        self.terrain = np.zeros((n, mh, mw), np.int8)
        self.variant = np.zeros((n, mh, mw), np.int8)
        self.obstacle = np.zeros((n, mh, mw), np.int8)
        self.item = np.zeros((n, mh, mw), np.int8)
        self.walk = np.zeros((n, mh, mw), bool)         # passable for player and creatures
        self.reach = np.zeros((n, mh, mw), bool)        # walkable tiles connected to the start
        self.visited = np.zeros((n, mh, mw), bool)
        self.image = np.zeros((n, mh * t, mw * t, 3), np.uint8)  # the pre-rendered map
        # player (units; the centre of its 12x12 box)
        self.px, self.py = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.facing = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)       # ticks spent moving (walk animation)
        self.swing = np.zeros(n, np.int64)       # ticks of sword swing left
        self.invuln = np.zeros(n, np.int64)
        self.knock = np.zeros(n, np.int64)
        self.knock_v = np.zeros((n, 2), np.int64)
        # creatures [n, k]
        self.cx, self.cy = np.zeros((n, k), np.int64), np.zeros((n, k), np.int64)
        self.home = np.zeros((n, k, 2), np.int64)
        self.kind = np.zeros((n, k), np.int64)   # 0 slime, 1 bat
        self.cdir = np.full((n, k), 4, np.int64)
        self.ctimer = np.zeros((n, k), np.int64)
        self.alive = np.zeros((n, k), bool)
        self.dying = np.zeros((n, k), np.int64)
        self.dead = np.zeros((n, k), np.int64)   # respawn countdown
        self.pad = 2 * t                          # sprites may hang over the view edge into this margin
        self._buf = np.zeros((n, height + 2 * self.pad, width + 2 * self.pad, 3), np.uint8)

    # ---- world generation ----------------------------------------------------------------
    def _generate(self, rng: np.random.Generator):
        """Terrain, obstacles and chests of one world. Returns (terrain, obstacle, item) [mh, mw]."""
        h, w = self.map_h, self.map_w
        elev = 0.65 * _value_noise(rng, h, w, 9) + 0.35 * _value_noise(rng, h, w, 4)
        forest = _value_noise(rng, h, w, 6)
        terr = np.full((h, w), GRASS, np.int8)
        wq, sq = np.quantile(elev, [0.15, 0.25])
        terr[elev < sq] = SAND
        terr[elev < wq] = WATER
        item = np.zeros((h, w), np.int8)

        rooms, anchors = [], []
        for _ in range(40):   # ruined rooms: wall ring, stone floor, 2-wide doors on two sides
            if len(rooms) >= self.n_rooms:
                break
            rw, rh = (int(v) for v in rng.integers(6, 11, size=2))
            if w - rw - 3 <= 2 or h - rh - 3 <= 2:
                break
            x0, y0 = int(rng.integers(2, w - rw - 2)), int(rng.integers(2, h - rh - 2))
            if any(x0 < bx + bw + 2 and bx < x0 + rw + 2 and y0 < by + bh + 2 and by < y0 + rh + 2
                   for bx, by, bw, bh in rooms):
                continue
            rooms.append((x0, y0, rw, rh))
            terr[y0:y0 + rh, x0:x0 + rw] = WALL
            terr[y0 + 1:y0 + rh - 1, x0 + 1:x0 + rw - 1] = STONE
            for side in rng.choice(4, size=2, replace=False):
                along = int(rng.integers(2, (rw if side < 2 else rh) - 3))
                if side < 2:    # top / bottom wall
                    y = y0 if side == 0 else y0 + rh - 1
                    terr[y, x0 + along:x0 + along + 2] = STONE
                    anchors.append((x0 + along, y - 1 if side == 0 else y + 1))
                else:           # left / right wall
                    x = x0 if side == 2 else x0 + rw - 1
                    terr[y0 + along:y0 + along + 2, x] = STONE
                    anchors.append((x - 1 if side == 2 else x + 1, y0 + along))

        # dirt paths linking doors and random spots; over water they become bridges
        nodes = anchors + [(int(rng.integers(3, w - 3)), int(rng.integers(3, h - 3))) for _ in range(4)]
        trodden = {WATER: BRIDGE, GRASS: DIRT, SAND: DIRT, WALL: STONE}   # a path through a wall breaks it

        def tread(x, y):
            terr[y, x] = trodden.get(int(terr[y, x]), terr[y, x])

        order = rng.permutation(len(nodes))
        for a, b in zip(order[:-1], order[1:]):
            (x, y), (bx, by) = nodes[a], nodes[b]
            tread(x, y)
            while (x, y) != (bx, by):
                dx, dy = bx - x, by - y
                horizontal = rng.random() < abs(dx) / (abs(dx) + abs(dy))
                run = int(rng.integers(2, 6))
                for _ in range(run):      # straight runs look like trodden paths, not staircases
                    if horizontal and x != bx:
                        x += 1 if bx > x else -1
                    elif not horizontal and y != by:
                        y += 1 if by > y else -1
                    else:
                        break
                    tread(x, y)

        obst = np.zeros((h, w), np.int8)
        grass, r = terr == GRASS, rng.random((h, w))
        dense = forest > np.quantile(forest, 0.6)
        obst[grass & ((dense & (r < 0.55)) | (~dense & (r < 0.035)))] = TREE
        obst[(grass | (terr == SAND)) & (obst == 0) & (rng.random((h, w)) < 0.03)] = ROCK
        border = np.ones((h, w), bool)
        border[1:-1, 1:-1] = False
        terr[border & (terr != WATER)] = GRASS
        obst[border & (terr == GRASS)] = TREE

        for x0, y0, rw, rh in rooms:   # a chest in an interior corner whose walls are intact
            corners = [(x0 + 1, y0 + 1, -1, -1), (x0 + rw - 2, y0 + 1, 1, -1),
                       (x0 + 1, y0 + rh - 2, -1, 1), (x0 + rw - 2, y0 + rh - 2, 1, 1)]
            ok = [(x, y) for x, y, sx, sy in corners if terr[y, x + sx] == WALL and terr[y + sy, x] == WALL]
            x, y = ok[int(rng.integers(len(ok)))] if ok else (x0 + rw // 2, y0 + rh // 2)
            item[y, x] = CHEST
        return terr, obst, item

    def _reset(self, env_ids: np.ndarray, seeds: np.ndarray) -> None:
        h, w, k = self.map_h, self.map_w, self.n_creatures
        yy, xx = np.mgrid[0:h, 0:w]
        for n, seed in zip(env_ids.tolist(), seeds.tolist()):
            rng = np.random.default_rng(seed)
            terr, obst, item = self._generate(rng)
            walk = WALKABLE_TERRAIN[terr] & (obst == 0) & (item == 0)
            reach = _largest_component(walk)
            d_center = np.where(reach, (yy - h / 2) ** 2 + (xx - w / 2) ** 2, np.inf)
            sy, sx = np.unravel_index(int(np.argmin(d_center)), (h, w))
            cheb = np.maximum(np.abs(yy - sy), np.abs(xx - sx))

            cand = np.flatnonzero(reach & (cheb >= 2))
            picks = rng.choice(cand, size=min(cand.size, self.n_coins + self.n_gems), replace=False)
            item.flat[picks[:self.n_coins]] = COIN
            item.flat[picks[self.n_coins:]] = GEM

            cand = np.flatnonzero(reach & (cheb >= 5) & (item == 0))
            if cand.size == 0:
                cand = np.flatnonzero(reach)
            homes = rng.choice(cand, size=k, replace=cand.size < k)
            self.home[n, :, 0] = (homes % w) * UNIT + UNIT // 2
            self.home[n, :, 1] = (homes // w) * UNIT + UNIT // 2
            self.kind[n] = rng.integers(0, 2, size=k)

            self.terrain[n], self.obstacle[n], self.item[n] = terr, obst, item
            self.variant[n] = rng.integers(0, VARIANTS, size=(h, w))
            self.walk[n], self.reach[n] = walk, reach
            self.visited[n] = False
            self.visited[n, sy, sx] = True
            self._paint_map(n)
            self.px[n], self.py[n] = sx * UNIT + UNIT // 2, sy * UNIT + UNIT // 2

        ids = env_ids
        self.facing[ids] = DOWN
        self.steps[ids] = self.swing[ids] = self.invuln[ids] = self.knock[ids] = 0
        self.knock_v[ids] = 0
        self.cx[ids], self.cy[ids] = self.home[ids, :, 0], self.home[ids, :, 1]
        self.cdir[ids], self.ctimer[ids] = 4, 0
        self.alive[ids] = True
        self.dying[ids] = self.dead[ids] = 0

    def _tile_ids(self, n: int, ty=slice(None), tx=slice(None)) -> np.ndarray:
        """Atlas index of tiles of world n: terrain base (water by its shoreline) * N_OVERLAY + overlay."""
        terr = self.terrain[n].astype(np.int64)
        water, land = terr == WATER, terr != WATER
        bits = np.zeros_like(terr)
        bits[1:] |= land[:-1] * 1
        bits[:-1] |= land[1:] * 2
        bits[:, 1:] |= land[:, :-1] * 4
        bits[:, :-1] |= land[:, 1:] * 8
        base = np.where(water, N_TERRAIN * VARIANTS + self.variant[n] * 16 + bits, terr * VARIANTS + self.variant[n])
        over = np.where(self.obstacle[n] > 0, self.obstacle[n], np.where(self.item[n] > 0, self.item[n] + 2, 0))
        return (base * N_OVERLAY + over)[ty, tx]

    def _paint_map(self, n: int) -> None:
        """Pre-render world n into self.image[n], one atlas tile per map tile."""
        t = self.tile
        rows = (self._tile_ids(n)[:, None, :] * t + np.arange(t)[None, :, None]).ravel()   # tile rows of t*3 bytes
        np.take(self.atlas.reshape(-1, t * 3), rows, axis=0, out=self.image[n].reshape(-1, t * 3))

    def _paint_tile(self, n: int, ty: int, tx: int) -> None:
        """Repaint one tile after its item changed."""
        t = self.tile
        self.image[n, ty * t:(ty + 1) * t, tx * t:(tx + 1) * t] = self.atlas[self._tile_ids(n, ty, tx)]

    # ---- rules -----------------------------------------------------------------------------
    def _move(self, env, a, b, d, half, horizontal):
        """Move coordinate `a` (x when horizontal, else y) by d units (|d| <= 16) with tile collision;
        `b` is the other coordinate. A blocked mover stops flush with the blocking tile.
        Returns (new a, blocked, first row/col of the box blocked, last row/col blocked)."""
        na = a + d
        size = self.map_w if horizontal else self.map_h
        lead = np.clip(np.where(d > 0, na + half - 1, na - half) // UNIT, 0, size - 1)   # tile entered
        b0, b1 = (b - half) // UNIT, (b + half - 1) // UNIT
        if horizontal:
            w0, w1 = self.walk[env, b0, lead], self.walk[env, b1, lead]
        else:
            w0, w1 = self.walk[env, lead, b0], self.walk[env, lead, b1]
        blocked = (d != 0) & ~(w0 & w1)
        na = np.where(blocked, np.where(d > 0, lead * UNIT - half, (lead + 1) * UNIT + half), na)
        return na, blocked, ~w0, ~w1

    def _slide(self, b, blocked, first, last, other_key):
        """Corner sliding: a mover blocked by the corner of one tile, holding no key on the other
        axis, is nudged along that axis toward the open row (so 1-tile gaps are easy to enter)."""
        h, s = PLAYER_HALF, self.speed
        to_far = ((b + h - 1) // UNIT) * UNIT + h - b      # >0: units to leave the first row
        to_near = b - (((b - h) // UNIT) + 1) * UNIT + h   # >0: units to leave the last row
        ok = blocked & (other_key == 0) & (first != last)
        nudge = np.where(first, np.minimum(s, to_far) * (to_far <= SLIDE_MAX),
                         -np.minimum(s, to_near) * (to_near <= SLIDE_MAX))
        return b + np.where(ok, nudge, 0)

    def _step(self, keys: np.ndarray):
        n, k = self.num_envs, self.n_creatures
        env = np.arange(n)
        reward = np.zeros(n, np.float32)
        kx = keys[:, RIGHT].astype(np.int64) - keys[:, LEFT]   # opposing keys cancel
        ky = keys[:, DOWN].astype(np.int64) - keys[:, UP]

        # facing: the pressed direction; with a diagonal keep the current facing if it is one of them
        hface = np.where(kx > 0, RIGHT, LEFT)
        vface = np.where(ky > 0, DOWN, UP)
        keep = ((kx != 0) & (self.facing == hface)) | ((ky != 0) & (self.facing == vface))
        knocked = self.knock > 0
        turn = ~knocked & ((kx != 0) | (ky != 0)) & ~keep
        self.facing = np.where(turn, np.where(kx != 0, hface, vface), self.facing)

        # player movement: x then y, each with tile collision and corner sliding
        mx = np.where(knocked, self.knock_v[:, 0], kx * self.speed)
        my = np.where(knocked, self.knock_v[:, 1], ky * self.speed)
        x0, y0 = self.px, self.py
        nx, bl, first, last = self._move(env, x0, y0, mx, PLAYER_HALF, True)
        ny = self._slide(y0, bl & ~knocked, first, last, my)
        ny, bl, first, last = self._move(env, ny, nx, my, PLAYER_HALF, False)
        nx = self._slide(nx, bl & ~knocked & (mx == 0), first, last, mx)
        self.px, self.py = nx, ny
        self.steps += (nx != x0) | (ny != y0)
        self.knock = np.maximum(self.knock - 1, 0)
        self.invuln = np.maximum(self.invuln - 1, 0)

        # sword: a press starts a swing when none is running; at its start it opens a chest ahead
        self.swing = np.maximum(self.swing - 1, 0)
        start = keys[:, INTERACT] & (self.swing == 0)
        self.swing[start] = SWING_TICKS
        fx, fy = DIR_XY[self.facing, 0], DIR_XY[self.facing, 1]
        ty, tx = (self.py + fy * 14) // UNIT, (self.px + fx * 14) // UNIT
        opened = start & (self.item[env, ty, tx] == CHEST)
        for i in np.flatnonzero(opened):
            self.item[i, ty[i], tx[i]] = CHEST_OPEN
            self._paint_tile(i, ty[i], tx[i])
        reward += opened

        # creatures: counter-based random walks; blocked ones pick a new way next tick
        tick = np.broadcast_to(self.tick[:, None], (n, k))
        hsh = _hash(np.broadcast_to(self.seeds[:, None], (n, k)), tick, np.broadcast_to(np.arange(k), (n, k)))
        pick = self.alive & (self.ctimer <= 0)
        bat = self.kind == 1
        new_dir = np.where(bat, hsh % np.uint64(4), hsh % np.uint64(5)).astype(np.int64)  # slimes may rest (4)
        new_time = ((hsh >> np.uint64(20)) % np.uint64(16)).astype(np.int64) + np.where(bat, 4, 8)
        self.cdir = np.where(pick, new_dir, self.cdir)
        self.ctimer = np.where(pick, new_time, self.ctimer - 1)
        cspeed = np.where(bat, 2, 1) * self.alive
        dx, dy = DIR_XY[self.cdir, 0] * cspeed, DIR_XY[self.cdir, 1] * cspeed
        cenv = np.broadcast_to(env[:, None], (n, k))
        self.cx, bx, _, _ = self._move(cenv, self.cx, self.cy, dx, CREATURE_HALF, True)
        self.cy, by, _, _ = self._move(cenv, self.cy, self.cx, dy, CREATURE_HALF, False)
        self.ctimer[bx | by] = 0

        # sword hits: creatures within a tile-and-a-half arc ahead of the player
        ex, ey = self.cx - self.px[:, None], self.cy - self.py[:, None]
        along = ex * fx[:, None] + ey * fy[:, None]
        across = np.abs(ex * fy[:, None] - ey * fx[:, None])
        hit = self.alive & (self.swing[:, None] > 0) & (along >= -2) & (along <= 26) & (across <= 18)
        self.alive &= ~hit
        self.dying[hit], self.dead[hit] = DYING_TICKS, RESPAWN_TICKS
        reward += hit.sum(axis=1)

        # touching a creature hurts (-1) and knocks the player back, away from it
        reach = PLAYER_HALF + CREATURE_HALF
        touch = self.alive & (np.abs(ex) < reach) & (np.abs(ey) < reach)
        hurt = touch.any(axis=1) & (self.invuln == 0)
        if hurt.any():
            j = touch.argmax(axis=1)
            ax, ay = -ex[env, j], -ey[env, j]       # from the creature to the player
            tie = (ax == 0) & (ay == 0)             # dead centre: back off against the facing
            ax, ay = np.where(tie, -fx, ax), np.where(tie, -fy, ay)
            along_x = np.abs(ax) >= np.abs(ay)      # knocked along the axis of larger separation
            kv = np.stack([np.where(along_x, np.sign(ax), 0), np.where(along_x, 0, np.sign(ay))], 1) * KNOCK_SPEED
            self.knock_v[hurt] = kv[hurt]
            self.knock[hurt], self.invuln[hurt] = KNOCK_TICKS, INVULN_TICKS
            reward -= hurt

        # items: picked up when the player's centre is on their tile
        ty, tx = self.py // UNIT, self.px // UNIT
        got = np.isin(self.item[env, ty, tx], (COIN, GEM))
        for i in np.flatnonzero(got):
            self.item[i, ty[i], tx[i]] = 0
            self._paint_tile(i, ty[i], tx[i])
        reward += got
        self.visited[env, ty, tx] = True

        # the slain come back home after a while, out of the player's sight (5+ tiles away)
        self.dying = np.maximum(self.dying - 1, 0)
        self.dead = np.where(self.alive, 0, np.maximum(self.dead - 1, 0))
        far = np.maximum(np.abs(self.home[..., 0] - self.px[:, None]),
                         np.abs(self.home[..., 1] - self.py[:, None])) >= 5 * UNIT
        back = ~self.alive & (self.dead == 0) & (self.dying == 0) & far
        self.alive |= back
        self.cx, self.cy = np.where(back, self.home[..., 0], self.cx), np.where(back, self.home[..., 1], self.cy)
        self.ctimer[back] = 0
        return reward, np.zeros(n, bool)   # the world never ends by itself

    def camera(self) -> tuple[np.ndarray, np.ndarray]:
        """Top-left pixel of each env's view in its map image: the player centred, clamped to the map."""
        t = self.tile
        cam_x = np.clip(self.px * t // UNIT - self.width // 2, 0, self.map_w * t - self.width)
        cam_y = np.clip(self.py * t // UNIT - self.height // 2, 0, self.map_h * t - self.height)
        return cam_x, cam_y

    def render(self) -> np.ndarray:
        t, p, h, w, n = self.tile, self.pad, self.height, self.width, self.num_envs
        buf, env = self._buf, np.arange(n)
        cam_x, cam_y = self.camera()
        for i in range(n):
            buf[i, p:p + h, p:p + w] = self.image[i, cam_y[i]:cam_y[i] + h, cam_x[i]:cam_x[i] + w]
        off_x, off_y = p - cam_x - t // 2, p - cam_y - t // 2     # unit centre -> sprite corner in buf

        # creatures (and puffs of the slain), one slot at a time so overlaps stack the same in any batch
        flat, bw = buf.reshape(-1, 3), buf.shape[2]
        r = np.arange(t)
        offsets = r[:, None] * bw + r
        origin = env * (buf.shape[1] * bw)
        phase = (self.tick[:, None] + 3 * np.arange(self.n_creatures)) // 6 % 2
        sid = np.where(self.alive, 16 + 2 * self.kind + phase, 20 + (self.dying <= DYING_TICKS // 2))
        sx = self.cx * t // UNIT + off_x[:, None]
        sy = self.cy * t // UNIT + off_y[:, None]
        show = (self.alive | (self.dying > 0)) & (sx > p - t) & (sx < p + w) & (sy > p - t) & (sy < p + h)
        corner = origin[:, None] + sy * bw + sx
        for j in range(self.n_creatures):
            e = env[show[:, j]]
            s = sid[e, j]
            _blit(flat, corner[e, j], offsets, self.spr_rgb[s], self.spr_mask[s])

        # player, then the sword over it
        walking = self.steps // 4 % 2
        pid = self.facing * 2 + walking + 8 * (self.invuln > INVULN_TICKS // 2)
        psx, psy = self.px * t // UNIT + off_x, self.py * t // UNIT + off_y
        _blit(flat, origin + psy * bw + psx, offsets, self.spr_rgb[pid], self.spr_mask[pid])
        e = env[self.swing > 0]
        if e.size:
            wid = self.facing[e] * 3 + (SWING_TICKS - self.swing[e]) // 2
            r3 = np.arange(3 * t)
            _blit(flat, origin[e] + (psy[e] - t) * bw + psx[e] - t, r3[:, None] * bw + r3,
                  self.sword_rgb[wid], self.sword_mask[wid])
        return buf[:, p:p + h, p:p + w].copy()

    def coverage(self) -> np.ndarray:
        seen = (self.visited & self.reach).sum(axis=(1, 2))
        return (seen / np.maximum(self.reach.sum(axis=(1, 2)), 1)).astype(np.float32)


# ---- Gymnasium face ------------------------------------------------------------------------
class DungeonEnv(SceneEnv):
    """A top-down scrolling tile world: walk, collect coins and gems, open chests, fight slimes and bats.

    The map (default 48x48 tiles) is larger than the view (8 tiles across its shorter side); the
    camera keeps the player centred and stops at the map edges. Terrain: grass, dirt paths, sand,
    stone floors and wooden bridges are walkable; water, walls, trees, rocks and chests block.
    Slimes (slow, they rest now and then) and bats (fast, restless) wander on their own.

    ## Action space: `MultiBinary(5)`, 1 = key held this tick

    | index | key      | effect                                                                  |
    |-------|----------|-------------------------------------------------------------------------|
    | 0     | up       | walk up 2 units per tick (1/8 tile; 2 px at 128x128) and face up        |
    | 1     | down     | walk down and face down                                                 |
    | 2     | left     | walk left and face left                                                 |
    | 3     | right    | walk right and face right                                               |
    | 4     | interact | swing the sword (6 ticks, sweeping the facing side): slays creatures in |
    |       |          | the arc ahead; at the swing's start opens a closed chest on the tile    |
    |       |          | ahead. Held down, it swings again every 6 ticks                         |

    Opposing keys cancel (up+down = no vertical move). Two perpendicular keys walk diagonally.
    Movement is blocked tile-exactly; a player grazing the corner of a block is slid around it.
    While knocked back (6 ticks) the movement keys are ignored.

    ## Observation space: `Box(0, 255, (height, width, 3), uint8)`

    | item  | shape / dtype            | meaning                                                      |
    |-------|--------------------------|--------------------------------------------------------------|
    | frame | (height, width, 3) uint8 | RGB view, default 128x128; tile = min(width, height) // 8 px |

    ## Rewards (summed per tick)

    | event                                                          | reward          |
    |----------------------------------------------------------------|-----------------|
    | walking onto a coin or gem (the player's centre on its tile)   | +1              |
    | opening a chest with the sword                                 | +1              |
    | slaying a creature with the sword (it comes back home later)  | +1 per creature |
    | touching a creature (knocked back; then 24 ticks of safety)    | -1              |

    ## Episode end

    | condition  | when                                                                      |
    |------------|---------------------------------------------------------------------------|
    | terminated | never: the world has no end state (items do not come back, creatures do)  |
    | truncated  | after `max_episode_steps` ticks (default 2000)                            |

    Options (passed to `Dungeon`): `map_size=(48, 48)`, `n_creatures=16`, `n_coins=24`,
    `n_gems=6`, `n_rooms=3`, `speed=2`.
    """

    game_cls = Dungeon


# ---- policies ------------------------------------------------------------------------------
class DungeonRandom(PersistentRandom):
    """Restless random keys; never up+down or left+right together."""

    def __init__(self, game: Game, seed: int = 0):
        super().__init__(game, seed, hold=(3, 15), p_idle=0.1, p_two=0.3,
                         exclusive=((UP, DOWN), (LEFT, RIGHT)))


class DungeonExplorer(Policy):
    """Walks tile by tile to the nearest unvisited tile, coin, gem or chest (BFS over the map),
    swings at creatures close by and opens chests it stands next to. Always holds a movement key;
    a player that has not moved for a few ticks is pushed a random way and replans."""

    STUCK_TICKS, PUSH_TICKS = 6, 5

    def __init__(self, game: Game, seed: int = 0):
        super().__init__(game, seed)
        self.reset()

    def reset(self, env_ids=None) -> None:
        ids = range(self.num_envs) if env_ids is None else [int(i) for i in np.asarray(env_ids).reshape(-1)]
        if env_ids is None:
            self.path = [[] for _ in range(self.num_envs)]
            self.at = [-1] * self.num_envs           # tile we walk from toward path[0]
            self.last = np.full((self.num_envs, 2), -1, np.int64)
            self.still = np.zeros(self.num_envs, np.int64)
            self.push = np.zeros(self.num_envs, np.int64)
            self.push_dir = np.zeros(self.num_envs, np.int64)
        for i in ids:
            self.path[i], self.at[i] = [], -1
            self.last[i], self.still[i], self.push[i] = -1, 0, 0

    def _plan(self, game: Dungeon, i: int, start: int) -> list[int]:
        """Shortest path (flat tile ids, start excluded) to the nearest goal tile; [] if start is one."""
        w = game.map_w
        item = game.item[i]
        closed = item == CHEST
        near_chest = np.zeros_like(closed)
        near_chest[1:] |= closed[:-1]
        near_chest[:-1] |= closed[1:]
        near_chest[:, 1:] |= closed[:, :-1]
        near_chest[:, :-1] |= closed[:, 1:]
        goal = (game.reach[i] & (~game.visited[i] | (item == COIN) | (item == GEM) | near_chest)).ravel().tolist()
        walk = game.walk[i].ravel().tolist()
        if not any(goal):            # all seen: wander to a random reachable tile
            cells = np.flatnonzero(game.reach[i])
            goal = [False] * len(walk)
            goal[int(cells[self.rng.integers(cells.size)])] = True
        prev = {start: -1}
        queue = [start]
        for c in queue:
            if goal[c]:
                path = []
                while c != start:
                    path.append(c)
                    c = prev[c]
                return path[::-1]
            for nb in (c - w, c + w, c - 1, c + 1):
                if walk[nb] and nb not in prev:
                    prev[nb] = c
                    queue.append(nb)
        return []

    def __call__(self, game: Dungeon) -> np.ndarray:
        keys = np.zeros((self.num_envs, self.num_actions), bool)
        w = game.map_w
        # swing at any creature within about a tile and a half
        near = game.alive & (np.abs(game.cx - game.px[:, None]) < 24) & (np.abs(game.cy - game.py[:, None]) < 24)
        keys[:, INTERACT] = near.any(axis=1)
        tol = max(1, game.speed // 2)
        for i in range(self.num_envs):
            if game.tick[i] == 0 and self.at[i] != -1:
                self.reset([i])
            px, py = int(game.px[i]), int(game.py[i])
            self.still[i] = self.still[i] + 1 if (px, py) == tuple(self.last[i]) else 0
            self.last[i] = px, py
            if self.still[i] >= self.STUCK_TICKS:
                self.push[i], self.push_dir[i] = self.PUSH_TICKS, self.rng.integers(4)
                self.still[i], self.path[i] = 0, []
            if self.push[i] > 0:
                self.push[i] -= 1
                keys[i, self.push_dir[i]] = True
                continue
            here = (py // UNIT) * w + px // UNIT
            path = self.path[i]
            if path and here not in (self.at[i], path[0]):
                path = []                                   # knocked off the route
            centred = abs(px - (here % w * UNIT + 8)) <= tol and abs(py - (here // w * UNIT + 8)) <= tol
            if path and here == path[0] and centred:
                self.at[i] = path.pop(0)
            if not path:
                path = self._plan(game, i, here)
                self.at[i] = here
            self.path[i] = path
            if not path:                                    # at a chest: face it and swing
                for d in range(4):
                    nb = here + int(DIR_XY[d, 1]) * w + int(DIR_XY[d, 0])
                    if game.item[i].flat[nb] == CHEST:
                        keys[i, d] = keys[i, INTERACT] = True
                        break
                else:
                    keys[i, self.rng.integers(4)] = True
                continue
            tx, ty = path[0] % w * UNIT + 8, path[0] // w * UNIT + 8
            if tx - px > tol:
                keys[i, RIGHT] = True
            elif px - tx > tol:
                keys[i, LEFT] = True
            if ty - py > tol:
                keys[i, DOWN] = True
            elif py - ty > tol:
                keys[i, UP] = True
            if not keys[i, :4].any():
                keys[i, self.rng.integers(4)] = True
        return keys


Dungeon.POLICIES = {"random": DungeonRandom, "explore": DungeonExplorer}
