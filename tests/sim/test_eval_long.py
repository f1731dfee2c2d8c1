"""The long free rollout of `python -m sim.eval --long N`: windows, the verdict, the command line.

A mirror engine that keeps its own copy of the scene and steps it with the keys it is given
reproduces the real frames exactly only if the rollout hands it the prompt and every action
in step with the real scene; it must score a sharpness ratio of 1 and stay in colour range.
A flat grey engine (the collapse the test is for) must fail both tests. The verdict is
checked on hand-made windows at the 0.70 line; the whole command runs on a tiny random world.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import sim.eval as ev
from tests.sim.test_eval import SIZE, Square

N, WINDOW = 24, 8
K = 3


# ---- fake engines -----------------------------------------------------------------------------
class MirrorSim:
    """Steps its own Square game with the keys it is given: the real frames, if the keys are in step."""
    scene = "square"
    context_frames = K
    frame_shape = (SIZE, SIZE, 3)

    def __init__(self, num_sessions):
        self.num_sessions = num_sessions
        self.game = Square(num_sessions, SIZE, SIZE)

    def reset(self, frames, actions, seeds):
        np.testing.assert_array_equal(self.game.reset(seeds), frames[:, 0])
        for t in range(1, frames.shape[1]):
            self.game.step(actions[:, t].astype(bool))
            np.testing.assert_array_equal(self.game.render(), frames[:, t])

    def step(self, actions, observe=None):
        assert observe is None, "a long rollout never shows the engine a real frame"
        self.game.step(np.asarray(actions).astype(bool))
        return self.game.render(), [{}] * self.num_sessions


class GreySim(MirrorSim):
    """Every frame flat mid-grey: no detail and no colour spread, a collapsed rollout."""

    def step(self, actions, observe=None):
        return np.full((self.num_sessions, SIZE, SIZE, 3), 128, np.uint8), [{}] * self.num_sessions


# ---- rollout and windows ----------------------------------------------------------------------
def test_mirror_engine_matches_the_real_scene_in_every_window(tmp_path):
    seeds = ev.held_out_seeds(2)
    report = ev.run_long(MirrorSim(2), Square(2, SIZE, SIZE), seeds, N, WINDOW, out=tmp_path, progress=False)
    res = report["long_rollout"]["results"]["explore"]["default"]
    assert [w["frames"] for w in res["windows"]] == [[1, 8], [9, 16], [17, 24]]
    for w in res["windows"]:
        assert w["sharpness_ratio"] == 1.0 and w["sharpness_ratio_worst_seed"] == 1.0
        assert w["mean"] == w["real_mean"] and w["std"] == w["real_std"]
        assert w["sharpness_ok"] and w["colour_in_range"]
    v = res["verdict"]
    assert v["passes"] and v["sharpness_ratio_min"] == 1.0 and v["colour_in_range_fraction"] == 1.0
    assert report["long_rollout"]["passes"]


def test_collapsed_engine_fails_both_tests(tmp_path):
    report = ev.run_long(GreySim(2), Square(2, SIZE, SIZE), ev.held_out_seeds(2), N, WINDOW, out=tmp_path,
                         progress=False)
    v = report["long_rollout"]["results"]["explore"]["default"]["verdict"]
    assert v["sharpness_ratio_min"] == 0.0 and v["windows_below_sharpness"] == [0, 1, 2]
    assert not v["sharpness_ok"] and not v["colour_ok"] and not v["passes"]
    assert v["colour_in_range_fraction"] == 0.0  # std 0 lies below every real frame's
    assert not report["long_rollout"]["passes"]
    assert "FAIL" in ev.format_long(report)


def test_last_window_may_be_shorter():
    track = ev.LongTrack(*(np.ones((2, 10)) for _ in range(2)), *(np.ones((2, 10, 3)) for _ in range(4)),
                         snapshots=[])
    track.sharpness[:, 8:] = 0.5
    windows = ev.long_windows(track, 4)
    assert [w["frames"] for w in windows] == [[1, 4], [5, 8], [9, 10]]
    assert [w["sharpness_ratio"] for w in windows] == [1.0, 1.0, 0.5]


# ---- the verdict --------------------------------------------------------------------------------
RANGE = {"mean": {"min": [10.0, 20.0, 30.0], "max": [100.0, 110.0, 120.0]},
         "std": {"min": [5.0, 5.0, 5.0], "max": [50.0, 50.0, 50.0]}}


def window(ratio, mean=(50.0, 60.0, 70.0), std=(20.0, 20.0, 20.0)):
    return {"sharpness_ratio": ratio, "mean": list(mean), "std": list(std)}


def test_verdict_holds_the_sharpness_line_at_0_70():
    ok = ev.long_verdict([window(0.71), window(0.9), window(0.71)], RANGE)
    assert ok["sharpness_ok"] and ok["passes"] and ok["windows_below_sharpness"] == []
    assert ok["sharpness_ratio_min"] == 0.71 and ok["sharpness_ratio_last"] == 0.71
    bad = ev.long_verdict([window(0.9), window(0.69), window(0.8)], RANGE)
    assert not bad["sharpness_ok"] and not bad["passes"] and bad["windows_below_sharpness"] == [1]
    assert bad["sharpness_ratio_min"] == 0.69 and bad["sharpness_ratio_last"] == 0.8
    assert bad["colour_ok"]  # sharpness alone failed
    assert ev.long_verdict([window(0.70)], RANGE)["sharpness_ok"]  # the line itself passes
    assert not ev.long_verdict([window(0.9), window(None)], RANGE)["sharpness_ok"]  # NaN (None in JSON) fails


@pytest.mark.parametrize("stat, channel, value", [("mean", 0, 9.0), ("mean", 2, 121.0), ("std", 1, 4.0),
                                                  ("std", 2, 51.0)])
def test_verdict_fails_colour_outside_the_real_range(stat, channel, value):
    off = window(0.9)
    off[stat][channel] = value
    v = ev.long_verdict([window(0.9), off, window(0.9), window(0.9)], RANGE)
    assert not v["colour_ok"] and not v["passes"] and v["sharpness_ok"]
    assert v["windows_out_of_colour_range"] == [1] and v["colour_in_range_fraction"] == 0.75
    edge = window(0.9, mean=(10.0, 110.0, 30.0), std=(5.0, 50.0, 5.0))  # the bounds themselves are in range
    assert ev.long_verdict([edge], RANGE)["colour_ok"]


# ---- the command line ---------------------------------------------------------------------------
def test_command_line_long_rollout_on_a_tiny_world(tiny_checkpoint, tmp_path, capsys):
    report = ev.main(["--checkpoint", str(tiny_checkpoint), "--long", str(N), "--long-window", str(WINDOW),
                      "--seeds", "2", "--steps", "2", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert "results" not in saved  # --long runs the long rollout only
    lr = saved["long_rollout"]
    assert lr["config"]["frames"] == N and lr["config"]["window"] == WINDOW
    assert lr["config"]["min_sharpness_ratio"] == 0.7
    assert lr["config"]["policies"] == ["explore"] and set(lr["definitions"]) >= {"sharpness", "real_range", "verdict"}
    res = lr["results"]["explore"]["steps2"]
    assert res["sampler_steps"] == 2 and len(res["windows"]) == N // WINDOW
    for w in res["windows"]:
        for k in ("sharpness", "real_sharpness", "sharpness_ratio", "sharpness_ratio_worst_seed"):
            assert math.isfinite(w[k]) and w[k] >= 0, k
        assert w["real_sharpness"] > 0
        for k in ("mean", "std", "real_mean", "real_std"):
            assert len(w[k]) == 3 and all(math.isfinite(x) and 0 <= x <= 255 for x in w[k]), k
    rr = res["real_range"]
    assert all(lo <= hi for lo, hi in zip(rr["mean"]["min"], rr["mean"]["max"]))
    v = res["verdict"]
    assert v["windows"] == N // WINDOW and isinstance(v["passes"], bool)
    assert v["sharpness_ratio_last"] == res["windows"][-1]["sharpness_ratio"]
    assert v["sharpness_ratio_min"] == min(w["sharpness_ratio"] for w in res["windows"])
    assert saved["config"]["long"] == N and report["long_rollout"]["passes"] == lr["passes"]
    values = np.load(tmp_path / "eval_values.npz")
    assert values["explore/steps2/long/sharpness"].shape == (2, N)
    assert values["explore/steps2/long/real_mean"].shape == (2, N, 3)
    for png in ("long_rollout.png", "long_strip_explore_steps2.png"):
        assert (tmp_path / png).stat().st_size > 0
    assert not (tmp_path / "rollout.png").exists()
    out = capsys.readouterr().out
    assert "17-24" in out and "sharpness ratio min" in out


@pytest.mark.parametrize("argv, message", [(["--long", "0"], "--long must be >= 1"),
                                           (["--long", "-5"], "--long must be >= 1"),
                                           (["--long", "10", "--long-window", "0"], "--long-window must be >= 1")])
def test_bad_long_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ev.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_policies_default_to_the_tour_only_with_long():
    assert ev.parse_args(["--long", "5"]).policies == ["explore"]
    assert ev.parse_args([]).policies == list(ev.POLICIES)
    assert ev.parse_args(["--long", "5", "--policies", "random"]).policies == ["random"]
