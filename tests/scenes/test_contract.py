"""The contract every scene keeps (scenes/core.py), checked for each scene in `scenes.names()`.

Scene-specific behaviour (what each key does) lives in tests/scenes/test_<scene>.py; here is
what all scenes share: determinism, the Gymnasium API, batched == one-by-one, clear errors
on bad input, policies, and the command line. Most tests run at 64x64 to stay fast.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import scenes

SCENES = scenes.names()
SMALL = dict(width=64, height=64)
# The package root `python -m scenes` must find, whichever checkout these tests imported.
PACKAGE_ROOT = str(Path(scenes.__file__).resolve().parent.parent)


@pytest.fixture(params=SCENES)
def name(request) -> str:
    return request.param


def random_actions(rng: np.random.Generator, shape: tuple[int, ...], p: float = 0.3) -> np.ndarray:
    """0/1 key vectors with each key held with probability p (int8, like MultiBinary.sample)."""
    return (rng.random(shape) < p).astype(np.int8)


# ---- determinism ---------------------------------------------------------------------------
def test_same_seed_same_frames_and_rewards(name):
    a, b = scenes.make(name, **SMALL), scenes.make(name, **SMALL)
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    assert np.array_equal(obs_a, obs_b), "same seed, different first frames"
    first = obs_a

    actions = random_actions(np.random.default_rng(0), (100, a.action_space.n))
    for t, action in enumerate(actions):
        out_a, out_b = a.step(action), b.step(action.copy())
        assert np.array_equal(out_a[0], out_b[0]), f"frames differ at tick {t}"
        assert out_a[1:4] == out_b[1:4], f"reward/terminated/truncated differ at tick {t}"
        if out_a[2] or out_a[3]:
            a.reset(seed=100 + t)
            b.reset(seed=100 + t)

    other, _ = scenes.make(name, **SMALL).reset(seed=8)
    assert not np.array_equal(first, other), "seeds 7 and 8 give the same first frame"


# ---- Gymnasium API -------------------------------------------------------------------------
# Scenes are not registered with gymnasium, so the checker cannot re-make them from a spec.
ALLOWED_WARNINGS = ("not having a spec",)


def test_gymnasium_check_env(name):
    env = scenes.make(name, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    unexpected = [str(w.message) for w in caught
                  if not any(allowed in str(w.message) for allowed in ALLOWED_WARNINGS)]
    assert not unexpected, f"check_env warned: {unexpected}"


def test_metadata_spaces_and_render(name):
    env = scenes.make(name)
    assert env.metadata["render_fps"] == 20
    assert "rgb_array" in env.metadata["render_modes"]
    assert env.observation_space.shape == (128, 128, 3)
    assert env.observation_space.dtype == np.uint8
    assert isinstance(env.action_space, spaces.MultiBinary)
    assert env.action_space.n == len(env.unwrapped.game.ACTIONS) > 0

    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (128, 128, 3)
    assert np.array_equal(frame, obs)
    assert frame.std() > 0, "a single flat colour is not a scene"


@pytest.mark.parametrize("width,height", [(96, 64), (64, 96)])
def test_non_default_resolution(name, width, height):
    env = scenes.make(name, width=width, height=height)
    assert env.observation_space.shape == (height, width, 3)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (height, width, 3) and obs.dtype == np.uint8
    obs, *_ = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert obs.shape == (height, width, 3)
    assert env.render().shape == (height, width, 3)

    batch = scenes.make_batch(name, 2, width=width, height=height)
    assert batch.reset([0, 1]).shape == (2, height, width, 3)


# ---- batched == one by one -----------------------------------------------------------------
def test_batch_render_equals_lone_envs(name):
    seeds = [3, 11, 12, 40]
    batch = scenes.make_batch(name, 4, **SMALL)
    lone = [scenes.make_batch(name, 1, **SMALL) for _ in seeds]
    actions = random_actions(np.random.default_rng(1), (60, 4, batch.num_actions))  # differs per env

    def assert_same(t, frames):
        for i, game in enumerate(lone):
            assert np.array_equal(frames[i], game.render()[0]), f"env {i} (seed {seeds[i]}) differs at tick {t}"

    frames = batch.reset(seeds)
    for i, game in enumerate(lone):
        game.reset([seeds[i]])
    assert_same("reset", frames)

    for t in range(60):
        if t == 30:  # rebuild one world only; the others must not notice
            seeds[2] = 99
            batch.reset([99], env_ids=[2])
            lone[2].reset([99])
            assert_same(f"{t} (after reset of env 2)", batch.render())
        reward, terminated = batch.step(actions[t])
        frames = batch.render()
        for i, game in enumerate(lone):
            r, term = game.step(actions[t, i:i + 1])
            assert r[0] == reward[i] and term[0] == terminated[i], f"env {i} reward/terminated differ at tick {t}"
        assert_same(t, frames)
        for i in np.flatnonzero(terminated):  # restart ended worlds, as a data stream would
            seeds[i] = 1000 + t
            batch.reset([seeds[i]], env_ids=[i])
            lone[i].reset([seeds[i]])


# ---- bad input -----------------------------------------------------------------------------
def bad_batches(n: int, a: int) -> dict[str, object]:
    return {
        "too many keys": np.zeros((n, a + 1), dtype=np.int8),
        "no env axis": np.zeros(a, dtype=np.int8),
        "too many envs": np.zeros((n + 1, a), dtype=np.int8),
        "strings": np.full((n, a), "up"),
        "value 2": np.full((n, a), 2),
        "value -1": np.full((n, a), -1),
        "value 0.5": np.full((n, a), 0.5),
        "ragged list": [[0] * a, [0] * (a - 1)],
    }


def test_bad_batch_actions_raise_one_clear_error(name):
    game = scenes.make_batch(name, 2, **SMALL)
    game.reset([0, 1])
    for label, actions in bad_batches(2, game.num_actions).items():
        with pytest.raises(scenes.ActionError) as err:
            game.step(actions)
        message = str(err.value)
        assert f"(2, {game.num_actions})" in message, f"{label}: message lacks the expected shape: {message}"
        assert all(key in message for key in game.ACTIONS), f"{label}: message lacks key names: {message}"
        assert "\n" not in message, f"{label}: not one line: {message}"
    assert (game.tick == 0).all(), "a rejected action advanced the game"

    # what is fine must stay fine: bool, int and float 0/1 key vectors
    for dtype in (bool, np.int8, np.int64, np.float32):
        game.step(np.eye(2, game.num_actions, dtype=dtype))


def bad_single(a: int) -> dict[str, object]:
    """Bad actions for a lone Gymnasium env, whose actions are key vectors of shape (A,)."""
    return {
        "too many keys": np.zeros(a + 1, dtype=np.int8),
        "batch shape": np.zeros((1, a), dtype=np.int8),
        "strings": np.full(a, "up"),
        "value 2": np.full(a, 2),
        "value 0.5": np.full(a, 0.5),
        "ragged list": [[0] * a, [0]],
    }


@pytest.mark.parametrize("label", list(bad_single(2)))
def test_bad_env_actions_raise_one_clear_error(name, label):
    env = scenes.make(name, **SMALL)
    env.reset(seed=0)
    a = env.action_space.n
    with pytest.raises(scenes.ActionError) as err:
        env.step(bad_single(a)[label])
    message = str(err.value)
    # shape errors name (A,); dtype and value errors come from the batch check and name (1, A)
    assert f"({a},)" in message or f"(1, {a})" in message, f"{label}: message lacks the expected shape: {message}"
    assert all(key in message for key in env.unwrapped.game.ACTIONS), f"{label}: message lacks key names: {message}"


def test_unknown_scene_names_the_choices():
    for make in (lambda: scenes.make("nope"), lambda: scenes.make_batch("nope", 2)):
        with pytest.raises(ValueError) as err:
            make()
        assert "nope" in str(err.value) and all(n in str(err.value) for n in SCENES)


def test_unknown_policy_names_the_choices(name):
    game = scenes.make_batch(name, 1, **SMALL)
    with pytest.raises(ValueError) as err:
        scenes.make_policy(game, "lazy")
    assert "lazy" in str(err.value) and "explore" in str(err.value) and "random" in str(err.value)


# ---- policies ------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["random", "explore"])
def test_policies_are_deterministic_bool_key_vectors(name, policy):
    ticks = 300 if policy == "explore" else 100

    def play() -> np.ndarray:
        game = scenes.make_batch(name, 3, **SMALL)
        game.reset([0, 1, 2])
        chooser = scenes.make_policy(game, policy, seed=5)
        chosen = []
        for t in range(ticks):
            keys = chooser(game)
            assert isinstance(keys, np.ndarray) and keys.dtype == bool, f"tick {t}: {type(keys)} {getattr(keys, 'dtype', '')}"
            assert keys.shape == (3, game.num_actions), f"tick {t}: shape {keys.shape}"
            if policy == "explore":
                assert keys.any(axis=1).all(), f"explore idles at tick {t} in envs {np.flatnonzero(~keys.any(axis=1))}"
            chosen.append(keys)
            _, terminated = game.step(keys)
            if terminated.any():
                ids = np.flatnonzero(terminated)
                game.reset(100 + t + ids, env_ids=ids)
                chooser.reset(ids)
        return np.stack(chosen)

    assert np.array_equal(play(), play()), f"{policy} is not deterministic for a fixed seed"


# ---- command line --------------------------------------------------------------------------
def cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "scenes", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def gif_frames_and_ms(path: Path) -> tuple[np.ndarray, int]:
    """Decoded frames and the total playing time in ms (identical frames may be merged)."""
    import imageio.v3 as iio
    from PIL import Image

    frames = iio.imread(path, index=None)
    with Image.open(path) as gif:
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
    return frames, total


def test_cli_preview_writes_a_gif(tmp_path):
    out = tmp_path / "one.gif"
    result = cli("preview", "--scene", SCENES[0], "--out", out, "--frames", 10, "--width", 64, "--height", 64,
                 "--scale", 2, "--policy", "random")
    assert result.returncode == 0, result.stderr
    frames, ms = gif_frames_and_ms(out)
    assert frames.shape[1:] == (128, 128, 3) and frames.dtype == np.uint8
    assert 1 <= len(frames) <= 10 and ms == 10 * 50, f"{len(frames)} frames, {ms} ms for 10 frames at 20 fps"


def test_cli_preview_grid_puts_all_scenes_side_by_side(tmp_path):
    out = tmp_path / "all.gif"
    result = cli("preview", "--grid", "--out", out, "--frames", 10, "--width", 64, "--height", 64, "--scale", 1)
    assert result.returncode == 0, result.stderr
    frames, ms = gif_frames_and_ms(out)
    assert frames.shape[1:] == (64, 64 * len(SCENES) + 4 * (len(SCENES) - 1), 3)
    assert ms == 10 * 50


def test_cli_bench_prints_a_table():
    result = cli("bench", "--ticks", 5, "--envs", 4, "--width", 64, "--height", 64)
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stdout and "cpu:" in result.stdout and "command:" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    for scene in SCENES:
        row = next((r for r in rows if r and r[0] == scene), None)
        assert row is not None, f"no row for {scene}:\n{result.stdout}"
        assert row[1] == "4" and row[2] == "64x64" and float(row[3].replace(",", "")) > 0


def test_cli_coverage_prints_a_table():
    result = cli("coverage", "--steps", 20, "--seeds", 0, 1, "--width", 64, "--height", 64)
    assert result.returncode == 0, result.stderr
    for scene in SCENES:
        for policy in ("random", "explore"):
            row = next(line.split() for line in result.stdout.splitlines() if line.split()[:2] == [scene, policy])
            assert 0.0 < float(row[4]) <= 1.0, f"coverage out of (0, 1]: {row}"


@pytest.mark.parametrize("args,complaint", [
    (["preview", "--scene", "nope", "--out", "x.gif"], "invalid choice: 'nope'"),
    (["bench", "--policy", "lazy"], "invalid choice: 'lazy'"),
    (["bench", "--width", "100"], "multiple of 8"),
])
def test_cli_bad_input_exits_2_with_one_clear_line(args, complaint):
    result = cli(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and complaint in errors[0], result.stderr


def test_cli_without_command_prints_help():
    result = cli()
    assert result.returncode == 0 and "usage:" in result.stdout and "preview" in result.stdout
