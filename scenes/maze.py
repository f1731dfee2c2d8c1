"""Maze: a first-person raycaster in a procedurally generated maze with rooms.

The world is a grid of unit blocks: a perfect maze of 12..20 x 12..20 cells (cells and the
walls between them are blocks), opened up by a few rectangular rooms and extra loops. Walls
come in four materials (brick, stone, wood panels, metal) laid out in zones; one dead-end
niche on the outer edge ends in a green exit door. Pillars stand in the rooms (you cannot
walk through them) and coloured gems and coins lie on the floor (walk into one to collect
it). The view is drawn Wolfenstein-style: one ray per screen column (DDA through the
grid), textures fixed in world space, x-facing and y-facing walls lit differently, a
textured floor and ceiling, distance fog, and billboard sprites hidden behind walls by a
per-column depth buffer. Field of view 66 degrees; the heading turns in steps of 7.5
degrees, so the four corridor directions are exact.

## Action space: MultiBinary(6), one entry per key, 1 = held this tick (20 ticks/s)

| index | key          | effect                                                    |
|-------|--------------|-----------------------------------------------------------|
| 0     | forward      | walk 0.12 blocks along the heading                        |
| 1     | back         | walk 0.08 blocks backwards                                |
| 2     | turn_left    | turn 7.5 degrees counter-clockwise (view pans left)       |
| 3     | turn_right   | turn 7.5 degrees clockwise (view pans right)              |
| 4     | strafe_left  | step 0.09 blocks sideways to the left                     |
| 5     | strafe_right | step 0.09 blocks sideways to the right                    |

Opposing keys (forward/back, turn_left/turn_right, strafe_left/strafe_right) cancel.
The turn is applied before the walk. Walls and pillars stop the player; a blocked move
slides along the wall (each axis is resolved on its own).

## Observation

| shape     | dtype | content                                              |
|-----------|-------|------------------------------------------------------|
| (H, W, 3) | uint8 | RGB first-person view, default 128 x 128 (H, W multiples of 8, >= 16) |

## Rewards and termination

| event                                        | reward | episode        |
|----------------------------------------------|--------|----------------|
| walking into a gem or coin (it disappears)   | +1     | goes on        |
| entering the exit niche in front of the door | +10    | terminated     |
| anything else                                | 0      | goes on        |

`coverage()`: share of walkable blocks (open blocks that hold no pillar) the player has
stood in since reset.
"""
from __future__ import annotations

import numpy as np

from scenes.core import Game, PersistentRandom, Policy, SceneEnv

# ---- world constants ---------------------------------------------------------------------------
HEADINGS = 48                    # heading steps per turn: 7.5 degrees, cardinal directions exact
FORWARD_SPEED = 0.12             # blocks per tick
BACK_SPEED = 0.08
STRAFE_SPEED = 0.09
PLAYER_RADIUS = 0.22             # half side of the player's square collision box, blocks
PILLAR_RADIUS = 0.25             # pillars are discs; player disc radius adds to it for collision
PICKUP_REACH = 0.42              # a pickup is collected when its centre is this close, blocks
EXIT_REWARD = 10.0
PICKUP_REWARD = 1.0

TEX = 32                         # wall texture side, texels per block face
FLOOR_TEX = 32                   # floor/ceiling texture side; it spans 2 x 2 blocks
FLOOR_SHIFT = 5                  # log2(FLOOR_TEX)
FLOOR_TEXELS_PER_BLOCK = 16
FOG_LEVELS = 32                  # wall/sprite brightness levels, FOG_PER_BLOCK per block of depth
FOG_PER_BLOCK = 2.0
FOG_COLOUR = np.array([10, 10, 16], np.float64)
Y_SIDE_LIGHT = 0.72              # walls facing +-y are darker than walls facing +-x
MATERIALS = 5                    # brick, stone, wood, metal, exit door (grid codes 1..5)
DOOR = 5                         # grid code of the exit door
# sprites: 4 pickup kinds (red/blue/green gem, gold coin) and the pillar.
SPRITE_TEX = 32
PILLAR_KIND = 4
SPRITE_WIDTH = np.array([0.28, 0.28, 0.28, 0.26, 0.5])   # world width, blocks
SPRITE_Z = np.array([[0.04, 0.32], [0.04, 0.32], [0.04, 0.32], [0.05, 0.31], [0.0, 1.0]])  # bottom, top


def fog(dist: np.ndarray) -> np.ndarray:
    """Brightness in (0, 1] at a distance in blocks: 1 up close, about 1/2 at 6 blocks."""
    return 1.0 / (1.0 + (np.asarray(dist, np.float64) / 6.0) ** 2)


def shade(rgb: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Mix colours [..., 3] toward the fog colour by brightness `light` (broadcasts)."""
    light = np.asarray(light, np.float64)[..., None]
    return np.clip(rgb * light + FOG_COLOUR * (1.0 - light), 0, 255).round().astype(np.uint8)


# ---- textures: fixed, procedural, the same for every world -------------------------------------
def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Tileable value noise in [-1, 1], [size, size], with `cells` bumps per side."""
    grid = rng.uniform(-1, 1, (cells, cells))
    t = np.arange(size) * cells / size
    i0 = t.astype(int)
    f = t - i0
    f = f * f * (3 - 2 * f)
    i1 = (i0 + 1) % cells
    rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None] + rows[:, i1] * f[None]


def wall_textures(rng: np.random.Generator) -> np.ndarray:
    """uint8 [MATERIALS, TEX(v, down), TEX(u, right), 3]: brick, stone, wood, metal, door."""
    v, u = np.mgrid[0:TEX, 0:TEX]
    out = np.zeros((MATERIALS, TEX, TEX, 3))

    # brick: 16 x 8 bricks in staggered courses, light mortar, each brick its own tone
    course = v // 8
    brick_id = course * 4 + ((u + 8 * (course % 2)) // 16)
    tone = rng.uniform(-22, 22, brick_id.max() + 1)[brick_id] + 8 * smooth_noise(rng, TEX, 4)
    mortar = (v % 8 == 0) | ((u + 8 * (course % 2)) % 16 == 0)
    out[0] = np.where(mortar[..., None], [150, 144, 128], np.array([156, 62, 44]) + tone[..., None] * [1, 0.5, 0.4])
    out[0] *= np.where((v % 8 == 1) & ~mortar, 1.12, 1.0)[..., None]  # lit top edge of each brick

    # stone: large grey blocks of uneven width, dark seams, bevelled (light top, dark bottom)
    rows = [0, 11, 21, 32]
    stone = np.zeros((TEX, TEX), int)
    seam = np.zeros((TEX, TEX), bool)
    bevel = np.zeros((TEX, TEX))
    for r in range(3):
        cuts = np.sort(rng.choice(np.arange(6, 27), 2, replace=False)) + (r * 5) % 7
        band = (v >= rows[r]) & (v < rows[r + 1])
        stone[band] = r * 3 + np.searchsorted(cuts, u[band], side="right")
        seam |= band & ((v == rows[r]) | np.isin(u, cuts % TEX))
        bevel[band] = np.where(v[band] == rows[r] + 1, 18, np.where(v[band] == rows[r + 1] - 1, -18, 0))
    tone = rng.uniform(-18, 18, 9)[stone] + 10 * smooth_noise(rng, TEX, 8) + bevel
    out[1] = np.where(seam[..., None], [58, 58, 64], np.array([128, 126, 120]) + tone[..., None])

    # wood: vertical planks 8 texels wide with dark gaps and soft lengthwise grain
    plank = u // 8
    phase = rng.uniform(0, 6.3, 4)[plank]
    grain = 10 * np.sin(u * 1.7 + phase + 0.15 * v) + rng.uniform(-16, 16, 4)[plank]
    gap = (u % 8 == 0) | ((v + 8 * plank) % 32 == 0)
    out[2] = np.where(gap[..., None], [58, 36, 20], np.array([150, 100, 54]) + grain[..., None] * [1, 0.7, 0.45])

    # metal: two blue-grey plates per face with bevelled rims and rivets in the corners
    pu, pv = u % 16, v % 16
    rim_light = (pu == 0) | (pv == 0)
    rim_dark = (pu == 15) | (pv == 15)
    rivet = np.isin(pu, (2, 3, 12, 13)) & np.isin(pv, (2, 3, 12, 13))
    base = np.array([92, 108, 128]) + 7 * smooth_noise(rng, TEX, 4)[..., None] - 0.5 * pv[..., None]
    out[3] = np.select([rivet[..., None], rim_light[..., None], rim_dark[..., None]],
                       [[196, 204, 214], base + 42, base - 40], base)

    # exit door: green double door in a yellow frame, with handles and a bright top light
    frame = (u < 3) | (u >= TEX - 3) | (v < 4)
    split = (u == 15) | (u == 16)
    handle = ((u == 12) | (u == 19)) & (v >= 16) & (v < 20)
    lamp = (v < 3) & (u >= 11) & (u < 21)
    panel = np.array([40, 168, 84]) + 16 * smooth_noise(rng, TEX, 4)[..., None] \
        + np.where(((v - 6) % 10 < 1)[..., None], -30, 0)
    out[4] = np.select([lamp[..., None], frame[..., None], handle[..., None], split[..., None]],
                       [[255, 250, 190], [214, 176, 40], [240, 220, 120], [20, 84, 40]], panel)
    return np.clip(out, 0, 255)


def floor_textures(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Floor and ceiling, each float [FLOOR_TEX(u), FLOOR_TEX(w), 3] spanning 2 x 2 blocks."""
    a, b = np.mgrid[0:FLOOR_TEX, 0:FLOOR_TEX]
    # floor: sandstone flags of half a block with dark grout, a tone per flag
    flag = (a // 8) * 4 + b // 8
    grout = (a % 8 == 0) | (b % 8 == 0)
    tone = rng.uniform(-14, 14, 16)[flag] + 6 * smooth_noise(rng, FLOOR_TEX, 4)
    floor = np.where(grout[..., None], [62, 52, 42], np.array([122, 104, 80]) + tone[..., None])
    # ceiling: dark slate panels one block wide between lighter beams
    beam = (a % 16 < 2) | (b % 16 < 2)
    ceil = np.where(beam[..., None], [78, 78, 92], np.array([52, 56, 70]) + 5 * smooth_noise(rng, FLOOR_TEX, 2)[..., None])
    return floor, ceil


def sprite_textures() -> tuple[np.ndarray, np.ndarray]:
    """Colours float [5, SPRITE_TEX(v), SPRITE_TEX(u), 3] and opacity bool [5, v, u]."""
    n = SPRITE_TEX
    v, u = (np.mgrid[0:n, 0:n] + 0.5) / n * 2 - 1   # both in [-1, 1], v down
    rgb = np.zeros((5, n, n, 3))
    alpha = np.zeros((5, n, n), bool)
    # gems: a cut diamond, lit facets on the upper left
    gem = np.abs(u) / 0.8 + np.abs(v) / 0.95 <= 1
    facet = np.select([(v < -0.25) & (u < 0), v < -0.25, u < 0], [1.35, 1.1, 0.85], 0.6)
    glint = ((u + 0.3) ** 2 + (v + 0.45) ** 2) < 0.03
    for k, colour in enumerate(([226, 40, 50], [50, 110, 240], [50, 210, 90])):
        rgb[k] = np.where(glint[..., None], [255, 255, 255], np.asarray(colour) * facet[..., None])
        alpha[k] = gem
    # coin: a gold disc with a darker rim and an embossed square
    r = np.hypot(u, v)
    rgb[3] = np.select([(r > 0.78)[..., None], ((np.abs(u) < 0.3) & (np.abs(v) < 0.3))[..., None]],
                       [[170, 120, 20], [255, 222, 90]], [232, 180, 40])
    rgb[3] *= (1.15 - 0.3 * (u + v) / 2)[..., None]
    alpha[3] = r <= 0.95
    # pillar: a round stone column (cosine shading across) with a capital and a base
    shaft = np.abs(u) < 0.62
    cap = (v < -0.86) | (v > 0.86)
    round_light = 0.55 + 0.5 * np.sqrt(np.clip(1 - (u / 0.9) ** 2, 0, 1)) - 0.1 * u
    flute = np.where((np.abs(u) < 0.6) & (np.round(u * 5) % 2 == 0), 0.9, 1.0)
    rgb[4] = np.array([178, 170, 150]) * (round_light * np.where(cap, 1.05, flute))[..., None]
    alpha[4] = shaft | cap
    return np.clip(rgb, 0, 255), alpha


# ---- world generation: one world from one seed, Python loops (runs once per reset) -------------
def generate_world(rng: np.random.Generator, size: int, min_cells: int, max_cells: int,
                   pickups: tuple[int, int], max_pillars: int) -> dict:
    """A maze on a [size, size] block grid: codes 0 = open, 1..4 wall materials, 5 = exit door.

    Cell (i, j) is block (2i + 2, 2j + 2); block row/column 1 and 2 * cells + 1 are the
    maze's outer wall, and the door sits one block further out, behind a niche cut into it.
    """
    cw, ch = (int(c) for c in rng.integers(min_cells, max_cells + 1, size=2))
    solid = np.ones((size, size), bool)

    def block(i, j):
        return 2 * i + 2, 2 * j + 2

    # perfect maze by randomised depth-first search
    seen = np.zeros((cw, ch), bool)
    start_cell = (int(rng.integers(cw)), int(rng.integers(ch)))
    stack = [start_cell]
    seen[start_cell] = True
    solid[block(*start_cell)] = False
    steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
    while stack:
        i, j = stack[-1]
        options = [(i + di, j + dj) for di, dj in steps
                   if 0 <= i + di < cw and 0 <= j + dj < ch and not seen[i + di, j + dj]]
        if not options:
            stack.pop()
            continue
        ni, nj = options[int(rng.integers(len(options)))]
        seen[ni, nj] = True
        solid[block(ni, nj)] = False
        solid[i + ni + 2, j + nj + 2] = False  # the wall block between the two cells
        stack.append((ni, nj))

    # rooms: rectangles of cells with every wall inside opened
    for _ in range(int(rng.integers(3, 6))):
        rw, rh = int(rng.integers(2, 5)), int(rng.integers(2, 4))
        if rng.random() < 0.5:
            rw, rh = rh, rw
        rw, rh = min(rw, cw), min(rh, ch)
        i0, j0 = int(rng.integers(0, cw - rw + 1)), int(rng.integers(0, ch - rh + 1))
        solid[2 * i0 + 2:2 * (i0 + rw) + 1, 2 * j0 + 2:2 * (j0 + rh) + 1] = False

    # loops: knock out random walls between neighbouring cells
    for _ in range(cw * ch // 12):
        i, j = int(rng.integers(cw)), int(rng.integers(ch))
        di, dj = steps[int(rng.integers(4))]
        if 0 <= i + di < cw and 0 <= j + dj < ch:
            solid[2 * i + di + 2, 2 * j + dj + 2] = False

    # start facing an open neighbour, so a first step forward always moves
    sx, sy = block(*start_cell)
    order = rng.permutation(4)
    facing = next(int(k) for k in order if not solid[sx + steps[k][0], sy + steps[k][1]])
    heading = (0, HEADINGS // 2, HEADINGS // 4, 3 * HEADINGS // 4)[facing]  # along +x, -x, +y, -y

    # exit: the edge cell farthest (in walking distance) from the start, a niche cut outward
    dist = bfs_distance(~solid, (sx, sy))
    edge = [(i, j, di, dj) for i in range(cw) for j in range(ch) for di, dj in steps
            if not (0 <= i + di < cw and 0 <= j + dj < ch)]
    far = max(range(len(edge)), key=lambda k: (dist[block(*edge[k][:2])], -k))
    i, j, di, dj = edge[far]
    bx, by = block(i, j)
    niche = (bx + di, by + dj)
    solid[niche] = False

    # materials: 6..9 zones (nearest zone centre), every material present at least once
    zones = int(rng.integers(6, 10))
    centres = rng.uniform(1, (2 * cw + 2, 2 * ch + 2), (zones, 2))
    zone_mat = np.concatenate([rng.permutation(4), rng.integers(0, 4, zones - 4)])
    gx, gy = np.mgrid[0:size, 0:size]
    nearest = np.argmin((gx[..., None] - centres[:, 0]) ** 2 + (gy[..., None] - centres[:, 1]) ** 2, axis=-1)
    grid = np.where(solid, zone_mat[nearest] + 1, 0).astype(np.int8)
    grid[bx + 2 * di, by + 2 * dj] = DOOR

    # pillars: in blocks whose 8 neighbours are open, never next to each other or the start,
    # so they never cut a path
    free = ~solid
    ring_open = np.zeros_like(free)
    ring_open[1:-1, 1:-1] = np.all([free[1 + a:size - 1 + a, 1 + b:size - 1 + b]
                                    for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0)
    ring_open[niche] = False
    candidates = np.argwhere(ring_open)
    pillars: list[tuple[int, int]] = []
    wanted = int(rng.integers(2, max_pillars + 1)) if max_pillars >= 2 else max_pillars
    for k in rng.permutation(len(candidates)):
        x, y = candidates[k]
        if len(pillars) >= wanted:
            break
        if max(abs(x - sx), abs(y - sy)) >= 2 and all(max(abs(x - px), abs(y - py)) >= 2 for px, py in pillars):
            pillars.append((int(x), int(y)))
    walkable = free.copy()
    for p in pillars:
        walkable[p] = False

    # pickups: on distinct walkable blocks other than the start and the niche
    spots = walkable.copy()
    spots[sx, sy] = spots[niche] = False
    spots = np.argwhere(spots)
    count = min(int(rng.integers(pickups[0], pickups[1] + 1)), len(spots))
    chosen = spots[rng.choice(len(spots), count, replace=False)]
    return dict(grid=grid, walkable=walkable, start=(sx + 0.5, sy + 0.5), heading=heading, niche=niche,
                pillars=np.array(pillars, np.float64).reshape(-1, 2) + 0.5,
                pickups=chosen.astype(np.float64) + 0.5, kinds=rng.integers(0, 4, count))


def bfs_distance(free: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """Walking distance in blocks from `source` over 4-connected `free` blocks (-1: unreachable)."""
    dist = np.full(free.shape, -1, np.int64)
    dist[source] = 0
    frontier = [source]
    d = 0
    while frontier:
        d += 1
        nxt = []
        for x, y in frontier:
            for a, b in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if free[a, b] and dist[a, b] < 0:
                    dist[a, b] = d
                    nxt.append((a, b))
        frontier = nxt
    return dist


# ---- the game ----------------------------------------------------------------------------------
class Maze(Game):
    """First-person maze, vectorised over envs. See the module docstring for the tables.

    State (leading axis: env): `pos` float64 [N, 2] in blocks, `heading` int [N] in steps of
    360/HEADINGS degrees (0 = +x, counter-clockwise), `grid` int8 [N, G, G] block codes,
    `walkable`/`visited` bool [N, G, G], pickups and pillars as padded arrays with masks.
    """

    name = "maze"
    ACTIONS = ("forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right")

    def __init__(self, num_envs: int = 1, width: int = 128, height: int = 128, min_cells: int = 12,
                 max_cells: int = 20, pickups: tuple[int, int] = (16, 28), max_pillars: int = 6,
                 fov_degrees: float = 66.0):
        super().__init__(num_envs, width, height)
        if not 2 <= min_cells <= max_cells:
            raise ValueError(f"need 2 <= min_cells <= max_cells, got {min_cells}, {max_cells}")
        if not 0 <= pickups[0] <= pickups[1] or max_pillars < 0:
            raise ValueError(f"need 0 <= pickups[0] <= pickups[1] and max_pillars >= 0, got {pickups}, {max_pillars}")
        self.min_cells, self.max_cells = int(min_cells), int(max_cells)
        self.pickup_range = (int(pickups[0]), int(pickups[1]))
        self.max_pillars = int(max_pillars)
        n, G, W, H = self.num_envs, 2 * self.max_cells + 3, self.width, self.height
        self.size = G

        # camera: heading h looks along dirs[h]; column x looks along dirs[h] + cam[x] * right[h]
        angles = np.arange(HEADINGS) * (2 * np.pi / HEADINGS)
        self.dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)           # [A, 2]
        self.rights = np.stack([self.dirs[:, 1], -self.dirs[:, 0]], axis=1)      # [A, 2]
        self.tan_half = np.tan(np.radians(fov_degrees) / 2)
        self.focal = (W / 2) / self.tan_half                                      # pixels per unit of slope
        cam = ((np.arange(W) + 0.5) * 2 / W - 1) * self.tan_half                 # [W]
        self.ray_x = self.dirs[:, 0:1] + cam * self.rights[:, 0:1]               # [A, W]
        self.ray_y = self.dirs[:, 1:2] + cam * self.rights[:, 1:2]
        with np.errstate(divide="ignore"):
            self.delta_x = np.where(self.ray_x == 0, 1e30, np.abs(1 / self.ray_x))
            self.delta_y = np.where(self.ray_y == 0, 1e30, np.abs(1 / self.ray_y))
        self.ray_x32, self.ray_y32 = self.ray_x.astype(np.float32), self.ray_y.astype(np.float32)
        half = H // 2
        self.row_centre = (np.arange(H) + 0.5 - H / 2).astype(np.float32)        # [H] pixels from horizon
        self.row_abs = np.abs(self.row_centre)
        floor_dist = 0.5 * self.focal / self.row_centre[half:].astype(np.float64)  # [H/2] camera at height 0.5
        self.floor_scale = (floor_dist * FLOOR_TEXELS_PER_BLOCK).astype(np.float32)

        # one colour table, indexed per pixel: wall texels (pre-shaded per fog level and side,
        # each column padded to TEX + 1 texels so a rounding overshoot stays in its column),
        # then floor texels per floor row, then ceiling texels per row.
        tex_rng = np.random.default_rng(20240607)  # textures are part of the game, not of a world
        walls = wall_textures(tex_rng).transpose(0, 2, 1, 3)                       # [M, u, v, 3]
        walls = np.concatenate([walls, walls[:, :, -1:]], axis=2)                  # [M, u, TEX+1, 3]
        level_light = fog((np.arange(FOG_LEVELS) + 0.5) / FOG_PER_BLOCK)           # [L]
        light = level_light[:, None, None] * np.array([1.0, Y_SIDE_LIGHT])[None, :, None]
        light = np.repeat(light, MATERIALS, axis=2)                                # [L, 2, M]
        light[..., DOOR - 1] = np.maximum(light[..., DOOR - 1], 0.75)             # the door glows
        wall_table = shade(walls[None, None], light[..., None, None])            # [L, 2, M, u, v', 3]
        floor, ceil = floor_textures(tex_rng)
        row_light = fog(floor_dist)[:, None]                                       # [H/2, 1]
        floor_table = shade(floor.reshape(1, -1, 3), row_light)                    # [H/2, T*T, 3]
        ceil_table = shade(ceil.reshape(1, -1, 3), row_light)
        self.colours = np.concatenate([wall_table.reshape(-1, 3), floor_table.reshape(-1, 3),
                                       ceil_table.reshape(-1, 3)])
        self.floor_base = (wall_table.size // 3 + np.arange(half) * FLOOR_TEX ** 2).astype(np.int32)
        self.ceil_base = (self.floor_base + half * FLOOR_TEX ** 2).astype(np.int32)

        sprite_rgb, self.sprite_alpha = sprite_textures()
        self.sprite_colours = shade(sprite_rgb[:, None], level_light[None, :, None, None]).reshape(-1, 3)

        # per-env state
        self.grid = np.zeros((n, G, G), np.int8)
        self.walkable = np.zeros((n, G, G), bool)
        self.visited = np.zeros((n, G, G), bool)
        self.niche = np.zeros((n, 2), np.int64)
        self.pos = np.zeros((n, 2), np.float64)
        self.heading = np.zeros(n, np.int64)
        self.in_exit = np.zeros(n, bool)
        kmax = self.pickup_range[1]
        self.pickup_pos = np.zeros((n, kmax, 2))
        self.pickup_kind = np.zeros((n, kmax), np.int64)
        self.pickup_alive = np.zeros((n, kmax), bool)
        self.pillar_pos = np.zeros((n, max(self.max_pillars, 1), 2))
        self.pillar_valid = np.zeros((n, max(self.max_pillars, 1)), bool)

        # render scratch buffers, reused every frame
        self._half_f32 = np.empty((n, half, W), np.float32)
        self._half_i32 = np.empty((n, half, W), np.int32)
        self._half_i32b = np.empty((n, half, W), np.int32)
        self._full_f32 = np.empty((n, H, W), np.float32)
        self._full_i32 = np.empty((n, H, W), np.int32)
        self._full_i32b = np.empty((n, H, W), np.int32)
        self._full_mask = np.empty((n, H, W), bool)

    # ---- reset / step ----------------------------------------------------------------------
    def _reset(self, env_ids: np.ndarray, seeds: np.ndarray) -> None:
        for i, seed in zip(env_ids.tolist(), seeds.tolist()):
            world = generate_world(np.random.default_rng(seed), self.size, self.min_cells, self.max_cells,
                                   self.pickup_range, self.max_pillars)
            self.grid[i] = world["grid"]
            self.walkable[i] = world["walkable"]
            self.niche[i] = world["niche"]
            self.pos[i] = world["start"]
            self.heading[i] = world["heading"]
            self.in_exit[i] = False
            k, p = len(world["pickups"]), len(world["pillars"])
            self.pickup_pos[i] = 0
            self.pickup_pos[i, :k] = world["pickups"]
            self.pickup_kind[i] = 0
            self.pickup_kind[i, :k] = world["kinds"]
            self.pickup_alive[i] = np.arange(self.pickup_alive.shape[1]) < k
            self.pillar_pos[i] = 0
            self.pillar_pos[i, :p] = world["pillars"]
            self.pillar_valid[i] = np.arange(self.pillar_valid.shape[1]) < p
            self.visited[i] = False
            bx, by = self.pos[i].astype(int)
            self.visited[i, bx, by] = True

    def _step(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = keys.astype(np.int64)
        self.heading = (self.heading + k[:, 2] - k[:, 3]) % HEADINGS
        ahead = k[:, 0] - k[:, 1]                                 # opposing keys cancel
        walk = ahead * np.where(ahead > 0, FORWARD_SPEED, BACK_SPEED)   # [N] blocks along the heading
        side = (k[:, 5] - k[:, 4]) * STRAFE_SPEED               # [N] to the right
        move = self.dirs[self.heading] * walk[:, None] + self.rights[self.heading] * side[:, None]
        self._move_axis(move[:, 0], 0)
        self._move_axis(move[:, 1], 1)
        self._push_out_of_pillars()

        reward = np.zeros(self.num_envs, np.float32)
        rel = self.pickup_pos - self.pos[:, None]
        got = self.pickup_alive & ((rel ** 2).sum(-1) < PICKUP_REACH ** 2)
        self.pickup_alive &= ~got
        reward += got.sum(1) * PICKUP_REWARD

        envs = np.arange(self.num_envs)
        bx, by = self.pos.astype(np.int64).T
        self.visited[envs, bx, by] = True
        in_exit = (bx == self.niche[:, 0]) & (by == self.niche[:, 1])
        reward += (in_exit & ~self.in_exit) * EXIT_REWARD
        self.in_exit = in_exit
        return reward, in_exit.copy()

    def _move_axis(self, delta: np.ndarray, axis: int) -> None:
        """Move every player by delta [N] along one axis, stopping flush against walls."""
        pos = self.pos
        new = pos[:, axis] + delta
        ahead = np.floor(new + np.sign(delta) * PLAYER_RADIUS).astype(np.int64)   # block the box enters
        across = pos[:, 1 - axis]
        lo = np.floor(across - PLAYER_RADIUS).astype(np.int64)
        hi = np.floor(across + PLAYER_RADIUS).astype(np.int64)
        envs = np.arange(self.num_envs)
        if axis == 0:
            hit = (self.grid[envs, ahead, lo] != 0) | (self.grid[envs, ahead, hi] != 0)
        else:
            hit = (self.grid[envs, lo, ahead] != 0) | (self.grid[envs, hi, ahead] != 0)
        hit &= delta != 0
        flush = np.where(delta > 0, ahead - PLAYER_RADIUS - 1e-6, ahead + 1 + PLAYER_RADIUS + 1e-6)
        pos[:, axis] = np.where(hit, flush, new)

    def _push_out_of_pillars(self) -> None:
        reach = PILLAR_RADIUS + PLAYER_RADIUS
        for p in range(self.pillar_pos.shape[1]):  # pillars never overlap, so one pass settles it
            rel = self.pos - self.pillar_pos[:, p]
            d = np.sqrt((rel ** 2).sum(1))
            inside = self.pillar_valid[:, p] & (d < reach) & (d > 1e-9)
            scale = np.where(inside, reach / np.maximum(d, 1e-9), 1.0)
            self.pos = np.where(inside[:, None], self.pillar_pos[:, p] + rel * scale[:, None], self.pos)

    def coverage(self) -> np.ndarray:
        seen = (self.visited & self.walkable).sum((1, 2))
        return (seen / np.maximum(self.walkable.sum((1, 2)), 1)).astype(np.float32)

    # ---- rendering -------------------------------------------------------------------------
    def _cast(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DDA for all N x W rays at once. Returns perpendicular depth [N, W], the hit side
        (0: a face across x, 1: across y) and the block code hit, as flat [N * W] arrays."""
        n, W, G = self.num_envs, self.width, self.size
        rx, ry = self.ray_x[self.heading].ravel(), self.ray_y[self.heading].ravel()    # [N*W]
        dx, dy = self.delta_x[self.heading].ravel(), self.delta_y[self.heading].ravel()
        px, py = np.repeat(self.pos[:, 0], W), np.repeat(self.pos[:, 1], W)
        mx, my = np.floor(px), np.floor(py)
        side_x = np.where(rx < 0, px - mx, mx + 1 - px) * dx    # ray length to the next x face
        side_y = np.where(ry < 0, py - my, my + 1 - py) * dy
        step_x = np.where(rx < 0, -G, G)                        # in flat grid indices
        step_y = np.where(ry < 0, -1, 1)
        cell = np.repeat(np.arange(n) * G * G, W) + mx.astype(np.int64) * G + my.astype(np.int64)
        flat = self.grid.reshape(-1)

        depth = np.full(n * W, 1e3)
        side = np.zeros(n * W, np.int64)
        code = np.zeros(n * W, np.int8)
        ray = np.arange(n * W)
        for _ in range(4 * G):  # a ray crosses at most 2G faces before the outer wall
            across_x = side_x < side_y
            cell = cell + np.where(across_x, step_x, step_y)
            dist = np.where(across_x, side_x, side_y)
            side_x = side_x + dx * across_x
            side_y = side_y + dy * ~across_x
            hit_code = flat[cell]
            hit = hit_code != 0
            if hit.any():
                done = ray[hit]
                depth[done], side[done], code[done] = dist[hit], ~across_x[hit], hit_code[hit]
                keep = ~hit
                ray, cell, side_x, side_y = ray[keep], cell[keep], side_x[keep], side_y[keep]
                dx, dy, step_x, step_y = dx[keep], dy[keep], step_x[keep], step_y[keep]
                if ray.size == 0:
                    break
        return depth, side, code

    def render(self) -> np.ndarray:
        n, H, W = self.num_envs, self.height, self.width
        half = H // 2
        depth, side, code = self._cast()

        # wall columns: texture column from the hit point along the face, flipped so that
        # textures read left-to-right from whichever side the face is seen
        rx, ry = self.ray_x[self.heading].ravel(), self.ray_y[self.heading].ravel()
        px, py = np.repeat(self.pos[:, 0], W), np.repeat(self.pos[:, 1], W)
        along = np.where(side == 0, py + depth * ry, px + depth * rx)
        u = np.minimum(((along - np.floor(along)) * TEX).astype(np.int64), TEX - 1)
        flip = ((side == 0) & (rx > 0)) | ((side == 1) & (ry < 0))
        u = np.where(flip, TEX - 1 - u, u)
        level = np.minimum((depth * FOG_PER_BLOCK).astype(np.int64), FOG_LEVELS - 1)
        base = ((((level * 2 + side) * MATERIALS + np.maximum(code, 1) - 1) * TEX + u) * (TEX + 1))
        base = base.astype(np.int32).reshape(n, 1, W)
        half_height = (0.5 * self.focal / depth).astype(np.float32).reshape(n, 1, W)   # pixels
        texel_step = (depth * TEX / self.focal).astype(np.float32).reshape(n, 1, W)   # texels per pixel

        # floor and ceiling: world point under each lower-half pixel, one texel index shared
        # by the floor pixel and its mirror image on the ceiling (camera height is 1/2).
        # In-place arithmetic on preallocated [N, H/2, W] / [N, H, W] buffers: this is the hot loop.
        world, texel, texel_w = self._half_f32, self._half_i32, self._half_i32b
        scale = self.floor_scale[None, :, None]                                     # [1, H/2, 1]
        texels_at = (self.pos * FLOOR_TEXELS_PER_BLOCK).astype(np.float32)          # [N, 2]
        np.multiply(scale, self.ray_x32[self.heading][:, None, :], out=world)
        world += texels_at[:, 0, None, None]
        np.copyto(texel, world, casting="unsafe")   # truncates; visible floor points are > 0
        texel &= FLOOR_TEX - 1
        texel <<= FLOOR_SHIFT
        np.multiply(scale, self.ray_y32[self.heading][:, None, :], out=world)
        world += texels_at[:, 1, None, None]
        np.copyto(texel_w, world, casting="unsafe")
        texel_w &= FLOOR_TEX - 1
        texel |= texel_w
        background = self._full_i32
        np.add(texel, self.floor_base[None, :, None], out=background[:, half:])
        np.add(texel[:, ::-1], self.ceil_base[None, ::-1, None], out=background[:, :half])

        # walls: texel row from the pixel's height in the slice; index = wall where inside
        # the slice, else background, selected arithmetically (cheaper than np.where)
        v, index, in_wall = self._full_f32, self._full_i32b, self._full_mask
        np.multiply(self.row_centre[None, :, None], texel_step, out=v)
        v += TEX / 2
        np.copyto(index, v, casting="unsafe")
        index += base
        np.less(self.row_abs[None, :, None], half_height, out=in_wall)
        index -= background
        index *= in_wall
        index += background
        frame = np.take(self.colours, index, axis=0)                                # [N, H, W, 3]
        self._draw_sprites(frame, depth.reshape(n, W))
        return frame

    def _draw_sprites(self, frame: np.ndarray, zbuf: np.ndarray) -> None:
        """Billboards (pickups, pillars) far to near, each pixel hidden where a wall is nearer."""
        n, H, W = self.num_envs, self.height, self.width
        pos = np.concatenate([self.pickup_pos, self.pillar_pos], axis=1)            # [N, S, 2]
        kind = np.concatenate([self.pickup_kind, np.full(self.pillar_valid.shape, PILLAR_KIND)], axis=1)
        valid = np.concatenate([self.pickup_alive, self.pillar_valid], axis=1)
        rel = pos - self.pos[:, None]
        fwd = (rel * self.dirs[self.heading][:, None]).sum(-1)                     # depth, blocks
        lat = (rel * self.rights[self.heading][:, None]).sum(-1)                   # to the right
        valid &= fwd > 0.15
        env, slot = np.nonzero(valid)
        if env.size == 0:
            return
        d, k = fwd[env, slot], kind[env, slot]
        order = np.lexsort((-d, env))     # per env, far first: nearer sprites paint over
        env, d, k, lat = env[order], d[order], k[order], lat[env, slot][order]
        scale = self.focal / d                                             # pixels per block
        centre_x = W / 2 + lat * scale
        half_w = 0.5 * SPRITE_WIDTH[k] * scale
        top = H / 2 + (0.5 - SPRITE_Z[k, 1]) * scale
        bottom = H / 2 + (0.5 - SPRITE_Z[k, 0]) * scale
        x0 = np.clip(np.ceil(centre_x - half_w - 0.5), 0, W).astype(np.int64)
        x1 = np.clip(np.ceil(centre_x + half_w - 0.5), 0, W).astype(np.int64)
        y0 = np.clip(np.ceil(top - 0.5), 0, H).astype(np.int64)
        y1 = np.clip(np.ceil(bottom - 0.5), 0, H).astype(np.int64)
        level = np.minimum((d * FOG_PER_BLOCK).astype(np.int64), FOG_LEVELS - 1)

        # expand sprites to their screen columns, keep those in front of the wall
        cols = np.maximum(x1 - x0, 0) * (y1 > y0)
        s = np.repeat(np.arange(env.size), cols)
        if s.size == 0:
            return
        x = x0[s] + np.arange(s.size) - np.repeat(np.cumsum(cols) - cols, cols)
        front = d[s] < zbuf[env[s], x]
        s, x = s[front], x[front]
        u = np.clip(((x + 0.5 - centre_x[s]) / (2 * half_w[s]) + 0.5) * SPRITE_TEX, 0, SPRITE_TEX - 1).astype(np.int64)

        # expand columns to pixels
        rows = y1[s] - y0[s]
        c = np.repeat(np.arange(s.size), rows)
        if c.size == 0:
            return
        y = y0[s][c] + np.arange(c.size) - np.repeat(np.cumsum(rows) - rows, rows)
        sc = s[c]
        v = np.clip((y + 0.5 - top[sc]) / (bottom[sc] - top[sc]) * SPRITE_TEX, 0, SPRITE_TEX - 1).astype(np.int64)
        texel = (k[sc] * SPRITE_TEX + v) * SPRITE_TEX + u[c]
        opaque = self.sprite_alpha.reshape(-1)[texel]
        colour = self.sprite_colours[(k[sc] * FOG_LEVELS + level[sc]) * SPRITE_TEX ** 2
                                     + (texel - k[sc] * SPRITE_TEX ** 2)][opaque]
        pixel = ((env[sc] * H + y) * W + x[c])[opaque]
        # pixels are listed far sprite first, so a nearer sprite's write lands last
        frame.reshape(-1, 3)[pixel] = colour


class MazeEnv(SceneEnv):
    """Maze as a Gymnasium env: first-person raycaster maze with pickups, pillars and an exit.

    ## Action space: MultiBinary(6)

    | index | key          | effect                                          |
    |-------|--------------|-------------------------------------------------|
    | 0     | forward      | walk 0.12 blocks along the heading              |
    | 1     | back         | walk 0.08 blocks backwards                      |
    | 2     | turn_left    | turn 7.5 degrees counter-clockwise              |
    | 3     | turn_right   | turn 7.5 degrees clockwise                      |
    | 4     | strafe_left  | step 0.09 blocks to the left                    |
    | 5     | strafe_right | step 0.09 blocks to the right                   |

    Opposing keys cancel; walls and pillars block movement (the player slides along them).

    ## Observation: Box(0, 255, (H, W, 3), uint8), the first-person view (default 128 x 128)

    ## Rewards: +1 per gem or coin walked into (it disappears); +10 on entering the exit niche.

    ## Termination: entering the exit niche (the dead end in front of the green door).
    Truncation after `max_episode_steps` ticks (default 2000).

    Options: `min_cells`, `max_cells` (maze size in cells, default 12..20), `pickups`
    (min, max count), `max_pillars`, `fov_degrees`.
    """

    game_cls = Maze


# ---- policies ----------------------------------------------------------------------------------
class MazeRandom(PersistentRandom):
    """Random held keys; never both keys of an opposing pair."""

    def __init__(self, game: Game, seed: int = 0):
        super().__init__(game, seed, hold=(3, 14), p_idle=0.05, p_two=0.4,
                         exclusive=((0, 1), (2, 3), (4, 5)))


class MazeExplorer(Policy):
    """Walks block centre to block centre toward the nearest unvisited walkable block.

    The next waypoint comes from a distance field to all unvisited blocks (a breadth-first
    wave over the grid, run for every env that needs a new waypoint at once). The exit
    niche is left for last, so an episode ends only after the maze is covered. Steering
    turns toward the waypoint and walks while roughly facing it; something is always held.
    """

    TURN_DEADBAND = 0.6   # heading steps of error tolerated before turning (no left-right dither)
    WALK_CONE = 6.0       # heading steps of error (45 degrees) within which it also walks
    REACH = 0.48          # blocks from a waypoint centre (< 1/2: inside it) to choose the next

    def __init__(self, game: Game, seed: int = 0):
        super().__init__(game, seed)
        self.waypoint = np.full((self.num_envs, 2), -1, np.int64)
        self.last_pos = np.full((self.num_envs, 2), np.nan)
        self.stalled = np.zeros(self.num_envs, np.int64)
        self.escape = np.zeros(self.num_envs, np.int64)

    def reset(self, env_ids=None):
        ids = slice(None) if env_ids is None else np.asarray(env_ids)
        self.waypoint[ids] = -1
        self.last_pos[ids] = np.nan
        self.stalled[ids] = 0
        self.escape[ids] = 0

    def __call__(self, game: Maze) -> np.ndarray:
        n = self.num_envs
        pos = game.pos
        block = pos.astype(np.int64)
        off = np.linalg.norm(pos - (self.waypoint + 0.5), axis=1)
        need = (self.waypoint[:, 0] < 0) | (off < self.REACH) | (off > 1.8)
        if need.any():
            ids = np.flatnonzero(need)
            reached = (self.waypoint[ids, 0] >= 0) & (off[ids] < self.REACH)
            origin = np.where(reached[:, None], self.waypoint[ids], block[ids])
            self.waypoint[ids] = self._plan(game, ids, origin)

        keys = np.zeros((n, game.num_actions), bool)
        delta = self.waypoint + 0.5 - pos
        target = np.arctan2(delta[:, 1], delta[:, 0]) * (HEADINGS / (2 * np.pi))
        err = (target - game.heading + HEADINGS / 2) % HEADINGS - HEADINGS / 2   # heading steps
        has = self.waypoint[:, 0] >= 0
        keys[:, 2] = has & (err > self.TURN_DEADBAND)
        keys[:, 3] = has & (err < -self.TURN_DEADBAND)
        keys[:, 0] = has & (np.abs(err) <= self.WALK_CONE)
        keys[~has, 2] = True   # nothing left to visit: look around

        # unstick: walking but not moving for a while -> back off and turn for a few ticks
        moved = np.linalg.norm(pos - self.last_pos, axis=1)
        self.stalled = np.where(keys[:, 0] & (moved < 0.01), self.stalled + 1, 0)
        self.last_pos = pos.copy()
        start = self.stalled > 6
        self.escape[start] = 6
        self.waypoint[start] = -1
        esc = self.escape > 0
        if esc.any():
            keys[esc] = False
            keys[esc, 1] = True
            keys[esc, 2] = True
            self.escape[esc] -= 1
        return keys

    def _plan(self, game: Maze, ids: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """Next waypoint block [k, 2] for envs `ids` standing at `origin` blocks (-1: none)."""
        k, G = ids.size, game.size
        walk = game.walkable[ids]
        niche = np.zeros_like(walk)
        niche[np.arange(k), game.niche[ids, 0], game.niche[ids, 1]] = True
        goal = walk & ~game.visited[ids] & ~niche
        done = ~goal.any((1, 2))
        goal[done] = niche[done]
        big = np.int32(1 << 20)
        dist = np.where(goal, 0, big).astype(np.int32)
        nbr = origin[:, None, :] + np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])   # [k, 4, 2]
        rows = np.arange(k)[:, None]
        for _ in range(G * G):
            near = dist[rows, nbr[..., 0], nbr[..., 1]]                             # [k, 4]
            if ((near < big).any(1) | ~goal.any((1, 2))).all():
                break
            grown = dist.copy()
            np.minimum(grown[:, 1:], dist[:, :-1] + 1, out=grown[:, 1:])
            np.minimum(grown[:, :-1], dist[:, 1:] + 1, out=grown[:, :-1])
            np.minimum(grown[:, :, 1:], dist[:, :, :-1] + 1, out=grown[:, :, 1:])
            np.minimum(grown[:, :, :-1], dist[:, :, 1:] + 1, out=grown[:, :, :-1])
            grown[~walk] = big
            if np.array_equal(grown, dist):
                break
            dist = grown
        near = dist[rows, nbr[..., 0], nbr[..., 1]].astype(np.float64)
        near += self.rng.random(near.shape) * 0.5                 # random tie-breaks, seeded
        best = np.argmin(near, axis=1)
        out = nbr[np.arange(k), best]
        out[near[np.arange(k), best] >= big] = -1
        return out


Maze.POLICIES = {"random": MazeRandom, "explore": MazeExplorer}
