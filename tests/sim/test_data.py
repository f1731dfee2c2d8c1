"""The training data stream (sim/data.py): batch format, determinism, worker seeding, clips that
replay bit for bit in the scene engine, no clip across a reset, shards on disk."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import scenes
from sim.data import (HELD_OUT_SEED_BASE, ClipConfig, SceneClips, ShardClips, collect_frames,
                      scene_loader, shard_loader, write_shards)

SMALL = dict(width=32, height=32)


def small(**kw) -> ClipConfig:
    base = dict(scene="maze", clip_frames=4, batch_size=4, envs_per_worker=4, max_episode_ticks=40, **SMALL)
    return ClipConfig(**{**base, **kw})


def take(iterable, n: int) -> list[dict]:
    return list(itertools.islice(iter(iterable), n))


def replay(scene: str, seed: int, actions: np.ndarray, width: int = 32, height: int = 32) -> np.ndarray:
    """Frames [1 + n, H, W, 3] of world `seed` reset and stepped with actions [n, A] (ticks 1..n)."""
    game = scenes.make_batch(scene, 1, width=width, height=height)
    frames = [game.reset([seed])[0].copy()]
    for a in actions:
        game.step(a[None].astype(bool))
        frames.append(game.render()[0].copy())
    return np.stack(frames)


@pytest.mark.parametrize("scene", scenes.names())
def test_batch_shapes_dtypes_and_actions(scene):
    cfg = small(scene=scene)
    A = len(scenes.game_class(scene).ACTIONS)
    for batch in take(SceneClips(cfg), 3):
        assert batch["frames"].shape == (4, 4, 32, 32, 3) and batch["frames"].dtype == torch.uint8
        assert batch["actions"].shape == (4, 4, A) and batch["actions"].dtype == torch.float32
        assert batch["seed"].shape == batch["start_tick"].shape == (4,)
        assert batch["seed"].dtype == batch["start_tick"].dtype == torch.int64
        assert set(batch["actions"].unique().tolist()) <= {0.0, 1.0}
        assert (batch["seed"] < HELD_OUT_SEED_BASE).all()
        fresh = batch["start_tick"] == 0
        assert (batch["actions"][fresh, 0] == 0).all(), "the first frame after a reset has the zero action"
    assert any(b["actions"].sum() > 0 for b in take(SceneClips(cfg), 3)), "policies never pressed a key"


def test_same_seed_same_batches_other_seed_other_batches():
    a, b = take(SceneClips(small()), 4), take(SceneClips(small()), 4)
    for x, y in zip(a, b):
        for k in x:
            assert torch.equal(x[k], y[k]), f"{k} differs between two runs of one config"
    c = take(SceneClips(small(seed=1)), 4)
    assert not torch.equal(a[0]["frames"], c[0]["frames"])
    assert not set(a[0]["seed"].tolist()) & set(c[0]["seed"].tolist())


def test_held_out_seeds():
    batch = take(SceneClips(small(held_out=True)), 1)[0]
    assert (batch["seed"] >= HELD_OUT_SEED_BASE).all()


def test_two_workers_play_different_worlds():
    loader = scene_loader(small(), num_workers=2)
    batches = take(loader, 4)  # workers take turns: 0, 1, 0, 1
    seeds = [set(b["seed"].tolist()) for b in batches]
    assert not (seeds[0] | seeds[2]) & (seeds[1] | seeds[3]), "two workers played the same world"
    assert not torch.equal(batches[0]["frames"], batches[1]["frames"])
    # Worker 0 of 2 is its own deterministic stream: the loader again gives the same batches.
    again = take(scene_loader(small(), num_workers=2), 2)
    assert torch.equal(again[0]["frames"], batches[0]["frames"])
    assert torch.equal(again[1]["frames"], batches[1]["frames"])


def test_ranks_get_disjoint_worlds():
    seeds = [set(take(SceneClips(small(), rank=r, world_size=2), 1)[0]["seed"].tolist()) for r in (0, 1)]
    assert not seeds[0] & seeds[1]


@pytest.mark.parametrize("scene", scenes.names())
def test_clips_replay_and_never_cross_a_reset(scene):
    """One env, one clip per batch: consecutive clips chain into whole episodes, which the scene
    engine, reset with the clip's seed and fed its actions, reproduces frame for frame."""
    T, stride, cap = 4, 2, 9
    cfg = small(scene=scene, envs_per_worker=1, batch_size=1, clip_frames=T, clip_stride=stride,
                max_episode_ticks=cap)
    clips = take(SceneClips(cfg), 16)
    episodes: dict[int, list[dict]] = {}
    for c in clips:
        episodes.setdefault(int(c["seed"]), []).append(c)
    assert len(episodes) >= 2, "the run should span a reset"
    for seed, chain in episodes.items():
        starts = [int(c["start_tick"]) for c in chain]
        assert starts == list(range(0, stride * len(chain), stride)), f"clips of episode {seed}: {starts}"
        assert starts[-1] + T - 1 <= cap, "a clip runs past the episode's end"
        n = starts[-1] + T
        frames = np.zeros((n, 32, 32, 3), np.uint8)
        actions = np.zeros((n, chain[0]["actions"].shape[-1]), np.float32)
        for c, s in zip(chain, starts):
            if s:  # overlapping ticks agree with the previous clip
                assert np.array_equal(frames[s:s + T - stride], c["frames"][0, :T - stride].numpy())
            frames[s:s + T] = c["frames"][0].numpy()
            actions[s:s + T] = c["actions"][0].numpy()
        assert not actions[0].any()
        assert np.array_equal(replay(scene, seed, actions[1:]), frames), f"episode {seed} does not replay"


def test_clips_from_many_envs_replay():
    batches = take(SceneClips(small(envs_per_worker=6, batch_size=4)), 3)
    checked = 0
    for b in batches:
        for i in np.flatnonzero(b["start_tick"].numpy() == 0):
            got = replay("maze", int(b["seed"][i]), b["actions"][i, 1:].numpy())
            assert np.array_equal(got, b["frames"][i].numpy())
            checked += 1
    assert checked >= 6


def test_collect_frames_are_contiguous_timelines():
    out = collect_frames("maze", 50, num_envs=2, max_episode_ticks=12, **SMALL)
    assert out["frames"].shape == (50, 32, 32, 3) and out["frames"].dtype == torch.uint8
    assert out["actions"].shape == (50, 6) and out["actions"].dtype == torch.float32
    tick, seed = out["tick"].numpy(), out["seed"].numpy()
    assert tick[0] == 0
    steps = np.diff(tick)
    for j in np.flatnonzero(steps != 1):  # a new episode (or the next env's timeline) starts at tick 0
        assert tick[j + 1] == 0 and seed[j + 1] != seed[j]
    end = int(np.flatnonzero(tick[1:] == 0)[0]) + 1  # the first episode
    assert np.array_equal(replay("maze", int(seed[0]), out["actions"][1:end].numpy()), out["frames"][:end].numpy())


def test_config_errors():
    with pytest.raises(ValueError, match="max_episode_ticks"):
        ClipConfig(clip_frames=12, max_episode_ticks=5)
    with pytest.raises(ValueError, match="weights"):
        ClipConfig(policies=("random",), policy_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown scene"):
        SceneClips(ClipConfig(scene="pong"))


# ---- shards ---------------------------------------------------------------------------------
def clip_dict(batches) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    out = {}
    for b in batches:
        for i in range(len(b["frames"])):
            key = (int(b["seed"][i]), int(b["start_tick"][i]))
            assert key not in out, f"clip {key} read twice"
            out[key] = {k: v[i].numpy() for k, v in b.items()}
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "maze"
    source = SceneClips(small())
    meta = write_shards(source, folder, num_clips=10, clips_per_shard=4)
    return folder, meta, clip_dict(take(source, 3))  # 12 clips, the first 10 were written


def test_shards_round_trip(shards):
    folder, meta, written = shards
    assert meta["count"] == 10 and [s["clips"] for s in meta["shards"]] == [4, 4, 2]
    on_disk = json.loads((folder / "meta.json").read_text())
    assert on_disk["scene"] == "maze" and on_disk["action_names"] == list(scenes.game_class("maze").ACTIONS)
    assert (on_disk["width"], on_disk["height"], on_disk["clip_frames"]) == (32, 32, 4)
    batches = list(ShardClips(folder, batch_size=3, epochs=1))
    assert [len(b["frames"]) for b in batches] == [3, 3, 3, 1]
    assert batches[0]["frames"].dtype == torch.uint8 and batches[0]["actions"].dtype == torch.float32
    read = clip_dict(batches)
    expected = dict(itertools.islice(written.items(), 10))
    assert read.keys() == expected.keys()
    for key, clip in read.items():
        for k in clip:
            assert np.array_equal(clip[k], expected[key][k]), f"{k} of clip {key} changed on disk"


def test_shard_order_is_seeded_and_shuffled_per_epoch(shards):
    folder = shards[0]
    order = lambda ds: [tuple(b["start_tick"].tolist() + b["seed"].tolist()) for b in take(ds, 6)]
    first = order(ShardClips(folder, batch_size=5, seed=3))
    assert first == order(ShardClips(folder, batch_size=5, seed=3))
    assert first != order(ShardClips(folder, batch_size=5, seed=4))
    assert first[:2] != first[2:4], "two epochs in the same order"


def test_shard_workers_split_clips(shards):
    folder, _, written = shards
    read = clip_dict(shard_loader(folder, batch_size=2, num_workers=2, epochs=1))
    assert read.keys() == dict(itertools.islice(written.items(), 10)).keys()
    both = ShardClips([folder, folder], batch_size=4, epochs=1)  # a list of folders
    assert both.num_clips == 20 and sum(len(b["frames"]) for b in both) == 20


def test_shard_ranks_split_clips_when_shards_are_few(shards):
    folder, _, written = shards  # 3 shards for 4 ranks: each rank reads its own clips of every shard
    parts = [clip_dict(ShardClips(folder, batch_size=2, epochs=1, rank=r, world_size=4)) for r in range(4)]
    assert sum(len(p) for p in parts) == 10
    assert set().union(*parts) == dict(itertools.islice(written.items(), 10)).keys()


def test_write_shards_refuses_a_used_folder(shards):
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(SceneClips(small()), shards[0], num_clips=4)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard folder"):
        ShardClips(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no shards"):
        ShardClips(tmp_path)


def test_corrupt_shard_names_the_file(tmp_path):
    folder = tmp_path / "maze"
    write_shards(SceneClips(small()), folder, num_clips=8, clips_per_shard=4)
    bad = folder / "shard-00001.npz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # cut short, as by a full disk
    with pytest.raises(ValueError, match="corrupt shard .*shard-00001.npz"):
        list(ShardClips(folder, batch_size=2, epochs=1))
    bad.write_bytes(data[:64] + bytes(len(data) - 128) + data[-64:])  # zeroed middle: bad compressed data
    with pytest.raises(ValueError, match="corrupt shard .*shard-00001.npz"):
        list(ShardClips(folder, batch_size=2, epochs=1))
    (folder / "shard-00000.npz").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.npz"):
        ShardClips(folder)


def test_loader_is_a_dataloader():
    assert isinstance(scene_loader(small()), DataLoader)
