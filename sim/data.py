"""Training data: clips of (frames, actions), streamed live from the scenes or read from shards.

Every source yields the same batch, a dict of torch tensors:

    frames      uint8   [B, T, H, W, 3]  T consecutive ticks of one world
    actions     float32 [B, T, A]        0/1 keys held during the tick that produced frames[:, t];
                                         the zero vector for the first frame after a reset
    seed        int64   [B]              world seed of the clip's episode
    start_tick  int64   [B]              tick (counted from that reset) of frames[:, 0]

`seed` and `start_tick` make each clip reproducible: `scenes.make_batch(scene, 1)` reset with
`seed` and stepped with the actions of its episode replays the frames bit for bit.

    cfg = ClipConfig(scene="maze")
    for batch in scene_loader(cfg, num_workers=8): ...                # endless, live
    write_shards(SceneClips(cfg), "data/maze", num_clips=65536)       # freeze a stream to disk
    for batch in shard_loader(["data/maze"], batch_size=8): ...       # the same batch format, from disk

    python -m sim.data --scene maze --workers 2 --batches 50          # measure clips/s, frames/s
    python -m sim.data --scene maze --out data/maze --clips 4096      # write shards
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

import scenes

# World seeds split in two: training streams draw below this base, evaluation (held-out
# worlds the model never trained on) draws at or above it. Anything that measures quality
# must use seeds >= HELD_OUT_SEED_BASE, e.g. `ClipConfig(held_out=True)`.
HELD_OUT_SEED_BASE = 10**9
# Largest prime below the base: index -> (a * index + b) mod p is a bijection of [0, p), so
# streams that take disjoint indices get disjoint world seeds, however many episodes they run.
SEED_PRIME = 999_999_937

BATCH_KEYS = ("frames", "actions", "seed", "start_tick")
SHARD_FORMAT = 1


def _stream_id(rank: int, world_size: int) -> tuple[int, int]:
    """(this stream, all streams) over DDP ranks x DataLoader workers; call inside __iter__."""
    info = get_worker_info()
    worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank * workers + worker, world_size * workers


# ---- live worlds -----------------------------------------------------------------------------
@dataclass
class ClipConfig:
    scene: str = "maze"
    clip_frames: int = 12              # T
    batch_size: int = 8                # B
    width: int = 128
    height: int = 128
    policies: tuple[str, ...] = ("random", "explore")
    policy_weights: tuple[float, ...] = (0.5, 0.5)   # chance of each policy, drawn per env at its reset
    envs_per_worker: int = 16          # worlds stepped together in one process
    max_episode_ticks: int = 600       # an episode ends at termination or after this many ticks
    clip_stride: int | None = None     # ticks between the starts of two clips of one env; None: T // 2
    seed: int = 0
    held_out: bool = False             # draw world seeds >= HELD_OUT_SEED_BASE (evaluation only)

    def __post_init__(self):
        self.policies = tuple(self.policies)
        self.policy_weights = tuple(float(w) for w in self.policy_weights)
        if self.clip_stride is None:
            self.clip_stride = max(1, self.clip_frames // 2)
        if min(self.clip_frames, self.batch_size, self.envs_per_worker, self.clip_stride) < 1:
            raise ValueError(f"clip_frames, batch_size, envs_per_worker and clip_stride must be >= 1: {self}")
        if self.max_episode_ticks < self.clip_frames:
            raise ValueError(f"max_episode_ticks ({self.max_episode_ticks}) must be >= clip_frames "
                             f"({self.clip_frames}), or no episode is long enough for a clip")
        if not self.policies or len(self.policies) != len(self.policy_weights) or min(self.policy_weights) < 0 \
                or sum(self.policy_weights) <= 0:
            raise ValueError(f"policies {self.policies} need as many non-negative weights, not all zero; "
                             f"got {self.policy_weights}")


class SceneWorlds:
    """`envs_per_worker` worlds of one scene under the policy mix; ended episodes restart fresh.

    `timeline()` yields pushes `(env_ids [n], frames uint8 [n, H, W, 3], actions bool [n, A],
    ticks int64 [n], seeds int64 [n])`: each the next frame of each listed env's own timeline.
    A tick yields all envs after the step, then, if some episodes ended on it, those envs again
    with their reset frame (tick 0, zero action). Arrays are only valid until the next push.

    World seeds: the k-th episode started by stream s of S gets index k * S + s, mapped through
    a bijection keyed by `cfg.seed`, so no two streams (workers, ranks) ever play one world.
    """

    def __init__(self, cfg: ClipConfig, stream: int = 0, num_streams: int = 1):
        self.cfg, self.stream, self.num_streams = cfg, stream, num_streams
        self.game = scenes.make_batch(cfg.scene, cfg.envs_per_worker, width=cfg.width, height=cfg.height)
        rng = np.random.default_rng([cfg.seed, 0x5EED])              # shared by all streams
        self.seed_a, self.seed_b = int(rng.integers(1, SEED_PRIME)), int(rng.integers(0, SEED_PRIME))
        self.rng = np.random.default_rng([cfg.seed, stream, num_streams])  # this stream's own
        self.policies = [scenes.make_policy(self.game, name, seed=int(self.rng.integers(2**31)))
                         for name in cfg.policies]
        weights = np.asarray(cfg.policy_weights, dtype=np.float64)
        self.weights = weights / weights.sum()
        E = self.game.num_envs
        self.policy_of = np.zeros(E, dtype=np.int64)  # index into cfg.policies, per env
        self.cap = np.zeros(E, dtype=np.int64)        # tick at which each env's episode is cut
        self.episodes = 0                             # episodes started by this stream

    def _fresh_seeds(self, n: int) -> np.ndarray:
        index = (self.episodes + np.arange(n)) * self.num_streams + self.stream
        self.episodes += n
        base = HELD_OUT_SEED_BASE if self.cfg.held_out else 0
        return np.array([base + (self.seed_a * int(i) + self.seed_b) % SEED_PRIME for i in index], dtype=np.int64)

    def _restart(self, ids: np.ndarray, first: bool = False):
        seeds = self._fresh_seeds(len(ids))
        frames = self.game.reset(seeds, ids)[ids]
        self.policy_of[ids] = self.rng.choice(len(self.policies), size=len(ids), p=self.weights)
        # The first episodes get random lengths so the envs of a worker do not all reset (and
        # then produce no clip for T ticks) on the same tick forever after.
        low = self.cfg.clip_frames if first else self.cfg.max_episode_ticks
        self.cap[ids] = self.rng.integers(low, self.cfg.max_episode_ticks + 1, size=len(ids))
        for policy in self.policies:
            policy.reset(ids)
        no_keys = np.zeros((len(ids), self.game.num_actions), dtype=bool)
        return ids, frames, no_keys, np.zeros(len(ids), dtype=np.int64), seeds

    def _keys(self) -> np.ndarray:
        keys = np.zeros((self.game.num_envs, self.game.num_actions), dtype=bool)  # [E, A]
        for k, policy in enumerate(self.policies):
            mine = self.policy_of == k
            if mine.any():  # a policy no env follows is not asked (it costs a planner call)
                keys[mine] = policy(self.game)[mine]
        return keys

    def timeline(self) -> Iterator[tuple[np.ndarray, ...]]:
        everyone = np.arange(self.game.num_envs)
        yield self._restart(everyone, first=True)
        while True:
            keys = self._keys()
            _, terminated = self.game.step(keys)
            yield everyone, self.game.render(), keys, self.game.tick.copy(), self.game.seeds.copy()
            ended = np.flatnonzero(terminated | (self.game.tick >= self.cap))
            if ended.size:
                yield self._restart(ended)


def _to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


class SceneClips(IterableDataset):
    """Endless batches of clips from live scene worlds stepped in this process (or worker).

    Each env keeps its last T frames in a ring buffer (slot = tick % T). A clip is taken when
    an env has T frames since its reset and its first tick is a multiple of `clip_stride`, so
    a clip never spans a reset and two clips of one env share at most T - stride frames.
    Clips fill the batch in the order they become ready (tick, then env), so the same config,
    rank, worker id and number of workers give the same sequence of batches.
    """

    def __init__(self, cfg: ClipConfig, rank: int = 0, world_size: int = 1):
        super().__init__()
        scenes.game_class(cfg.scene)  # an unknown scene fails here, not inside a worker
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.scene = cfg.scene
        self.action_names = tuple(scenes.game_class(cfg.scene).ACTIONS)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        worlds = SceneWorlds(cfg, *_stream_id(self.rank, self.world_size))
        T, B, E, A = cfg.clip_frames, cfg.batch_size, cfg.envs_per_worker, worlds.game.num_actions
        ring_frames = np.zeros((E, T, cfg.height, cfg.width, 3), dtype=np.uint8)  # [E, T, H, W, 3]
        ring_actions = np.zeros((E, T, A), dtype=np.float32)                       # [E, T, A]

        def empty_batch() -> dict[str, np.ndarray]:  # filled clip by clip, k = clips so far
            return {"frames": np.empty((B, T, cfg.height, cfg.width, 3), dtype=np.uint8),
                    "actions": np.empty((B, T, A), dtype=np.float32),
                    "seed": np.empty(B, dtype=np.int64), "start_tick": np.empty(B, dtype=np.int64)}

        batch, k = empty_batch(), 0
        for ids, frames, keys, ticks, seeds in worlds.timeline():
            slot = ticks % T
            ring_frames[ids, slot] = frames
            ring_actions[ids, slot] = keys
            start = ticks - (T - 1)
            ready = (start >= 0) & (start % cfg.clip_stride == 0)
            for env, s, seed in zip(ids[ready], start[ready], seeds[ready]):
                order = (s + np.arange(T)) % T  # ring slots in time order
                np.take(ring_frames[env], order, axis=0, out=batch["frames"][k])
                np.take(ring_actions[env], order, axis=0, out=batch["actions"][k])
                batch["seed"][k], batch["start_tick"][k] = seed, s
                k += 1
                if k == B:
                    yield _to_torch(batch)
                    batch, k = empty_batch(), 0


def _loader(dataset: IterableDataset, num_workers: int, pin_memory: bool) -> DataLoader:
    # batch_size=None: the datasets batch themselves. Workers stay alive between epochs (a
    # scene's start-up, e.g. pre-rendered art, is paid once); 4 batches in flight per worker
    # smooth out ticks where many envs reset at once.
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)


def scene_loader(cfg: ClipConfig, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> DataLoader:
    """Live clips in `num_workers` processes; each (rank, worker) plays its own worlds."""
    return _loader(SceneClips(cfg, rank, world_size), num_workers, pin_memory)


def collect_frames(scene: str = "maze", num_frames: int = 1024, *, width: int = 128, height: int = 128,
                   num_envs: int = 16, policies: Sequence[str] = ("random", "explore"),
                   policy_weights: Sequence[float] = (0.5, 0.5), max_episode_ticks: int = 600,
                   seed: int = 0, held_out: bool = False) -> dict[str, torch.Tensor]:
    """`num_frames` frames as whole timelines, for autoencoder training and eval fixtures.

    Returns frames uint8 [M, H, W, 3], actions float32 [M, A], seed int64 [M], tick int64 [M].
    Rows are env after env, each env's frames in time order across its episodes: a new
    episode starts where `tick` is 0 (its action is the zero vector).
    """
    cfg = ClipConfig(scene=scene, clip_frames=1, width=width, height=height, policies=tuple(policies),
                     policy_weights=tuple(policy_weights), envs_per_worker=num_envs,
                     max_episode_ticks=max_episode_ticks, seed=seed, held_out=held_out)
    worlds = SceneWorlds(cfg)
    E, A, per_env = num_envs, worlds.game.num_actions, math.ceil(num_frames / num_envs)
    frames = np.zeros((E, per_env, height, width, 3), dtype=np.uint8)  # [E, M/E, H, W, 3]
    actions = np.zeros((E, per_env, A), dtype=np.float32)
    seeds = np.zeros((E, per_env), dtype=np.int64)
    ticks = np.zeros((E, per_env), dtype=np.int64)
    count = np.zeros(E, dtype=np.int64)
    for ids, f, keys, t, s in worlds.timeline():
        keep = count[ids] < per_env
        ids, n = ids[keep], count[ids[keep]]
        frames[ids, n], actions[ids, n], ticks[ids, n], seeds[ids, n] = f[keep], keys[keep], t[keep], s[keep]
        count[ids] += 1
        if (count >= per_env).all():
            break
    flat = lambda x: x.reshape(E * per_env, *x.shape[2:])[:num_frames]
    return _to_torch({"frames": flat(frames), "actions": flat(actions), "seed": flat(seeds), "tick": flat(ticks)})


# ---- shards on disk ----------------------------------------------------------------------------
# A shard folder: shard-00000.npz ... holding the batch keys with a leading clip axis, and
# meta.json saying what they are. Compressed: game frames have large flat areas (maze at
# 128x128: 15 MB per 256 clips of 12 frames instead of 151 MB), and one process inflates
# about 500 clips/s, as fast as it could play them. meta.json is rewritten after every
# shard, so a folder cut short stays readable.
def write_shards(batches: Iterable[dict[str, Any]], out_dir: str | os.PathLike, num_clips: int,
                 clips_per_shard: int = 256, *, scene: str | None = None,
                 action_names: Sequence[str] | None = None) -> dict:
    """Write the first `num_clips` clips of `batches` to `out_dir` as shards; return the meta.

    `scene` and `action_names` default to those of the SceneClips behind `batches`."""
    out = Path(out_dir)
    if out.exists() and (any(out.glob("*.npz")) or (out / "meta.json").exists()):
        raise FileExistsError(f"{out} already holds shards; choose an empty folder or delete them")
    source = getattr(batches, "dataset", batches)  # a DataLoader's SceneClips
    scene = scene or getattr(source, "scene", None)
    action_names = action_names or getattr(source, "action_names", None)
    if scene is None or action_names is None:
        raise ValueError("write_shards needs scene= and action_names= for batches that do not come from SceneClips")
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": SHARD_FORMAT, "scene": scene, "action_names": list(action_names),
                            "count": 0, "shards": []}
    pending: dict[str, list[np.ndarray]] = {}
    held = 0

    def flush(n: int) -> None:
        nonlocal pending, held
        arrays = {k: np.concatenate(v) for k, v in pending.items()}
        now, rest = {k: v[:n] for k, v in arrays.items()}, {k: v[n:] for k, v in arrays.items()}
        name = f"shard-{len(meta['shards']):05d}.npz"
        tmp = out / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **now)
        os.replace(tmp, out / name)  # a reader never sees half a shard
        meta["shards"].append({"file": name, "clips": n})
        meta["count"] += n
        _write_json(out / "meta.json", meta)
        pending, held = {k: [v] for k, v in rest.items()}, held - n

    with tqdm(total=num_clips, desc=f"shards -> {out}", unit="clip") as bar:
        for batch in batches:
            arrays = {k: np.asarray(v) for k, v in batch.items() if k in BATCH_KEYS}
            arrays["frames"] = arrays["frames"].astype(np.uint8, copy=False)
            arrays["actions"] = arrays["actions"].astype(np.float32, copy=False)
            take = min(len(arrays["frames"]), num_clips - meta["count"] - held)
            if not pending:
                _, T, H, W, _ = arrays["frames"].shape
                if arrays["actions"].shape[-1] != len(action_names):
                    raise ValueError(f"batches have {arrays['actions'].shape[-1]} actions but "
                                     f"action_names lists {len(action_names)}")
                meta.update(clip_frames=T, height=H, width=W, keys=sorted(arrays))
            for k in meta["keys"]:
                pending.setdefault(k, []).append(arrays[k][:take])
            held += take
            bar.update(take)
            while held >= clips_per_shard:
                flush(clips_per_shard)
            if meta["count"] + held >= num_clips:
                break
        if held:
            flush(held)
    return meta


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class ClipTable(Protocol):
    """Anything that holds a known number of clips and loads them all at once as arrays with a
    leading clip axis (the batch keys). A shard file is one; a recording cut into clips can be
    another: add its reader to `_tables_in`."""
    name: str
    num_clips: int

    def load(self) -> dict[str, np.ndarray]: ...


@dataclass
class ClipFile:
    """A file of clips on disk: where it is, how many clips it holds, the folder's metadata."""
    path: Path
    num_clips: int
    meta: dict = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.path)


class ShardFile(ClipFile):
    def load(self) -> dict[str, np.ndarray]:
        m = self.meta
        A = len(m["action_names"])
        expect = {"frames": ((self.num_clips, m["clip_frames"], m["height"], m["width"], 3), np.uint8),
                  "actions": ((self.num_clips, m["clip_frames"], A), np.float32),
                  "seed": ((self.num_clips,), np.int64), "start_tick": ((self.num_clips,), np.int64)}
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in m["keys"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"corrupt shard {self.path}: {type(e).__name__}: {e}; delete the folder's "
                             f"shards and write them again") from None
        for k, v in arrays.items():
            shape, dtype = expect[k]
            if v.shape != shape or v.dtype != dtype:
                raise ValueError(f"corrupt shard {self.path}: {k} is {v.dtype} {v.shape}, meta.json says "
                                 f"{np.dtype(dtype)} {shape}")
        return arrays


def _tables_in(path: str | os.PathLike) -> tuple[dict, list[ClipTable]]:
    """The meta and clip tables of one folder of shards (or of play recordings, see below)."""
    folder = Path(path)
    if folder.is_file() or (folder.is_dir() and not (folder / "meta.json").exists() and any(folder.glob("*.dsarec"))):
        return recording_tables(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no shard folder at {folder}; write one with sim.data.write_shards "
                                f"or `python -m sim.data --out {folder}`")
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        what = "shards but no meta.json (was it cut short before the first shard?)" \
            if any(folder.glob("*.npz")) else "no shards"
        raise FileNotFoundError(f"{folder} holds {what}; write it with sim.data.write_shards")
    try:
        meta = json.loads(meta_path.read_text())
        tables = [ShardFile(folder / s["file"], int(s["clips"]), meta) for s in meta["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt {meta_path}: {e}") from None
    if meta.get("format") != SHARD_FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')}, this reader knows {SHARD_FORMAT}")
    if not tables or meta.get("count", 0) == 0:
        raise ValueError(f"{folder} holds no clips (meta.json lists none)")
    for t in tables:
        if not t.path.exists():
            raise FileNotFoundError(f"shard {t.path} listed in {meta_path} is missing")
    return meta, tables


class ShardClips(IterableDataset):
    """Batches of clips read from shard folders, in a shuffled order per epoch.

    Each epoch visits the shards in a random order, `shards_in_memory` at a time, and yields
    their clips shuffled together (memory: about that many shards decompressed, e.g. 150 MB
    per 256 clips of 12 frames at 128x128). Under DataLoader workers and DDP ranks each stream
    reads its own shards (or its own clips of every shard when there are fewer shards than
    streams). `epochs=None` runs forever; a finite run ends with a last, smaller batch.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int = 8, *,
                 seed: int = 0, epochs: int | None = None, shards_in_memory: int = 4,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("ShardClips needs at least one shard folder")
        self.tables: list[ClipTable] = []
        self.meta: dict | None = None
        for path in paths:
            meta, tables = _tables_in(path)
            if self.meta is None:
                self.meta = dict(meta, scenes=[meta["scene"]])
            else:
                for key in ("clip_frames", "height", "width", "action_names", "keys"):
                    if meta[key] != self.meta[key]:
                        raise ValueError(f"shard folder {path} has {key}={meta[key]}, but {paths[0]} has "
                                         f"{self.meta[key]}; clips of one stream must match")
                self.meta["scenes"] = sorted(set(self.meta["scenes"]) | {meta["scene"]})
            self.tables += tables
        self.num_clips = self.meta["count"] = sum(t.num_clips for t in self.tables)
        self.scene, self.action_names = self.meta["scene"], tuple(self.meta["action_names"])
        self.batch_size, self.seed, self.epochs = batch_size, seed, epochs
        self.shards_in_memory, self.rank, self.world_size = shards_in_memory, rank, world_size

    def _mine(self, stream: int, num_streams: int) -> list[tuple[ClipTable, np.ndarray | None]]:
        """This stream's (table, clip indices or None for all)."""
        if len(self.tables) >= num_streams:
            return [(t, None) for i, t in enumerate(self.tables) if i % num_streams == stream]
        mine, offset = [], 0
        for t in self.tables:
            idx = np.flatnonzero((offset + np.arange(t.num_clips)) % num_streams == stream)
            offset += t.num_clips
            if idx.size:
                mine.append((t, idx))
        return mine

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream, num_streams = _stream_id(self.rank, self.world_size)
        mine = self._mine(stream, num_streams)
        if not mine:
            raise ValueError(f"{self.num_clips} clips are too few for {num_streams} data streams (workers x ranks)")
        B, epoch = self.batch_size, 0
        carry: dict[str, np.ndarray] | None = None  # clips left over from the last pool, < B

        def gather(parts: list[dict[str, np.ndarray]], refs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
            # clips (part, row) copied straight into a batch: the pool itself is never copied
            return {k: np.stack([parts[p][k][i] for p, i in refs]) for k in parts[0]}

        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, stream, num_streams, epoch])
            order = rng.permutation(len(mine))
            for first in range(0, len(order), self.shards_in_memory):
                parts = [] if carry is None else [carry]
                for j in order[first:first + self.shards_in_memory]:
                    table, idx = mine[j]
                    arrays = table.load()
                    parts.append(arrays if idx is None else {k: v[idx] for k, v in arrays.items()})
                refs = [(p, i) for p, part in enumerate(parts) for i in range(len(part["frames"]))]
                head = 0 if carry is None else len(carry["frames"])  # the carried clips go first
                refs = refs[:head] + [refs[head + j] for j in rng.permutation(len(refs) - head)]
                full = len(refs) - len(refs) % B
                for i in range(0, full, B):
                    yield _to_torch(gather(parts, refs[i:i + B]))
                carry = gather(parts, refs[full:]) if full < len(refs) else None
            epoch += 1
        if carry is not None:
            yield _to_torch(carry)


def shard_loader(paths: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int = 8,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 **options: Any) -> DataLoader:
    """Shard clips in `num_workers` processes. Options: seed, epochs, shards_in_memory."""
    return _loader(ShardClips(paths, batch_size, rank=rank, world_size=world_size, **options),
                   num_workers, pin_memory)


# ---- throughput --------------------------------------------------------------------------------
def measure_throughput(batches: Iterable[dict[str, torch.Tensor]], num_batches: int = 50,
                       warmup: int = 1) -> dict[str, float]:
    """Clips/s and frames/s (T frames per clip) over `num_batches`, after `warmup` batches that
    pay for start-up (worker processes, world generation) and drain what was prefetched meanwhile."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    clips = frames = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
        clips += batch["frames"].shape[0]
        frames += batch["frames"].shape[0] * batch["frames"].shape[1]
    seconds = time.perf_counter() - start
    return {"clips_per_s": clips / seconds, "frames_per_s": frames / seconds, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure the clip stream, or write it to shards (--out).")
    p.add_argument("--scene", default=ClipConfig.scene, choices=scenes.names())
    p.add_argument("--width", type=int, default=ClipConfig.width)
    p.add_argument("--height", type=int, default=ClipConfig.height)
    p.add_argument("--clip-frames", type=int, default=ClipConfig.clip_frames)
    p.add_argument("--batch-size", type=int, default=ClipConfig.batch_size)
    p.add_argument("--envs-per-worker", type=int, default=ClipConfig.envs_per_worker)
    p.add_argument("--seed", type=int, default=ClipConfig.seed)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=50, help="batches to time")
    p.add_argument("--out", help="write shards to this folder instead of measuring")
    p.add_argument("--clips", type=int, default=4096, help="clips to write with --out")
    p.add_argument("--shards", nargs="+", help="measure reading these shard folders instead")
    args = p.parse_args(argv)
    cfg = ClipConfig(scene=args.scene, width=args.width, height=args.height, clip_frames=args.clip_frames,
                     batch_size=args.batch_size, envs_per_worker=args.envs_per_worker, seed=args.seed)
    if args.shards:
        loader, what = shard_loader(args.shards, args.batch_size, num_workers=args.workers), f"shards {args.shards}"
    else:
        loader, what = scene_loader(cfg, num_workers=args.workers), f"{cfg}"
    if args.out:
        meta = write_shards(loader, args.out, args.clips)
        print(f"wrote {meta['count']} clips in {len(meta['shards'])} shards to {args.out}")
        return
    r = measure_throughput(loader, args.batches, warmup=max(1, 5 * args.workers))  # 4 prefetched + 1 per worker
    print(f"{what}\nworkers={args.workers}: {r['clips_per_s']:.1f} clips/s, {r['frames_per_s']:.0f} frames/s "
          f"({args.batches} batches in {r['seconds']:.1f} s)")


# ---- play recordings ---------------------------------------------------------------------------
# `python play.py --record` writes them (controls.recording; the format is DESIGN.md's, read
# here without importing controls, since imports point from controls to sim). A recording is
# cut at every prompt into timelines: the prompt's K real frames, then one frame per record,
# the scene's real frame under the player's keys where the record holds one (play.py always
# stores it, so `seed` and `start_tick` replay a clip bit for bit), else the model's frame.
# Each timeline gives clips of ClipConfig.clip_frames ticks, one every clip_frames // 2.
class RecordingFile(ClipFile):
    def load(self) -> dict[str, np.ndarray]:
        T, stride = self.meta["clip_frames"], max(1, self.meta["clip_frames"] // 2)
        clips = [{"frames": frames[s:s + T], "actions": actions[s:s + T], "seed": np.int64(seed),
                  "start_tick": np.int64(tick + s)}
                 for frames, actions, seed, tick in _recording_timelines(self.path, decode=True)[1]
                 for s in range(0, len(actions) - T + 1, stride)]
        return {k: np.stack([c[k] for c in clips]) for k in self.meta["keys"]}


def _recording_timelines(path: Path, decode: bool) -> tuple[dict, list[tuple]]:
    """(header, [(frames uint8 [n, H, W, 3] or None, actions float32 [n, A], world seed, first tick)])."""
    import msgpack

    with open(path, "rb") as f:
        objs = msgpack.Unpacker(f, raw=False, max_buffer_size=512 * 2**20)
        try:
            header = next(objs, None)
            if not isinstance(header, dict) or header.get("format") != "dsa-sim-recording":
                raise ValueError("no dsa-sim recording header")
            shape, codec, tick = (*header["resolution"], 3), header["frame_codec"], 0
            pixels = lambda b, n: np.frombuffer(zlib.decompress(b) if codec == "zlib" else b, np.uint8).reshape(n, *shape)
            timelines: list[list] = []
            for r in objs:  # a cut tail (kill -9 mid-record) just ends the iteration
                if r["kind"] == "prompt":
                    K = len(r["actions"])
                    tick = 0 if r.get("reason") != "resync" else tick - K  # world tick of its first frame
                    timelines.append([[pixels(r["frames"], K)] if decode else None, list(r["actions"]), r["world_seed"], tick])
                    tick += K
                elif r["kind"] == "frame" and timelines:
                    if decode:
                        timelines[-1][0].append(pixels(r.get("real") or r["frame"], 1))
                    timelines[-1][1].append(r["action"])
                    tick += 1
        except (msgpack.UnpackException, ValueError, KeyError, TypeError, zlib.error) as e:
            raise ValueError(f"corrupt recording {path}: {type(e).__name__}: {e}") from None
    return header, [(np.concatenate(fr) if decode else None, np.asarray(a, np.float32), s, t) for fr, a, s, t in timelines]


def recording_tables(path: str | os.PathLike, clip_frames: int = ClipConfig.clip_frames) -> tuple[dict, list[ClipTable]]:
    """The meta and clip tables of one recording file, or of every *.dsarec in a folder."""
    path = Path(path)
    files = sorted(path.glob("*.dsarec")) if path.is_dir() else [path]
    meta, tables = None, []
    for file in files:
        header, timelines = _recording_timelines(file, decode=False)
        stride = max(1, clip_frames // 2)
        n = sum(max(0, (len(a) - clip_frames) // stride + 1) for _, a, _, _ in timelines)
        m = {"format": SHARD_FORMAT, "scene": header["scene"], "action_names": list(header["actions"]),
             "clip_frames": clip_frames, "height": header["resolution"][0], "width": header["resolution"][1],
             "keys": sorted(BATCH_KEYS)}
        if meta is not None and any(m[k] != meta[k] for k in ("scene", "action_names", "height", "width")):
            raise ValueError(f"recording {file} is of another scene or resolution than {files[0]}")
        meta = meta or m
        if n:
            tables.append(RecordingFile(file, n, meta))
    if not tables:
        raise ValueError(f"{path} holds no clip of {clip_frames} frames (record longer sessions)")
    return dict(meta, count=sum(t.num_clips for t in tables)), tables


if __name__ == "__main__":
    main()
