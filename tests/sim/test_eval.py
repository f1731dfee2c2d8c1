"""The eval's bookkeeping, proved with fake engines whose scores are known in advance.

An oracle engine that returns the real frames must score the PSNR cap and SSIM 1 and beat
copying; an engine that repeats its last context frame must equal the copy baseline
exactly, in both modes. The oracle also checks, at every step, that it is handed the action
that produced the frame it is asked for and (next-frame mode) that very frame to observe,
so an off-by-one anywhere in the loop fails here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import sim.eval as ev
from scenes.core import Game, PersistentRandom, Policy
from sim.metrics import PSNR_CAP_DB

SIZE = 32
K, H = 3, 8


# ---- a tiny deterministic scene ---------------------------------------------------------------
class AlwaysRight(Policy):
    """The moving tour: holds "right" every tick, never idle."""

    def __call__(self, game):
        keys = np.zeros((self.num_envs, self.num_actions), dtype=bool)
        keys[:, 1] = True
        return keys


class Square(Game):
    """A 6x6 square on a seeded background, moved 2 px per tick by the arrow keys."""
    name = "square"
    ACTIONS = ("left", "right", "up", "down")
    POLICIES = {"random": lambda game, seed: PersistentRandom(game, seed, hold=(1, 3), p_idle=0.3),
                "explore": AlwaysRight}

    def _reset(self, env_ids, seeds):
        if not hasattr(self, "pos"):
            self.pos = np.zeros((self.num_envs, 2), dtype=np.int64)
            self.background = np.zeros((self.num_envs, self.height, self.width, 3), dtype=np.uint8)
        for i, s in zip(env_ids, seeds):
            rng = np.random.default_rng(int(s))
            self.pos[i] = rng.integers(0, self.height, 2)
            self.background[i] = rng.integers(0, 120, (self.height, self.width, 3))

    def _step(self, keys):
        dx = keys[:, 1].astype(int) - keys[:, 0]
        dy = keys[:, 3].astype(int) - keys[:, 2]
        self.pos = (self.pos + 2 * np.stack([dy, dx], axis=1)) % [self.height, self.width]
        return np.zeros(self.num_envs), np.zeros(self.num_envs, dtype=bool)

    def render(self):
        frames = self.background.copy()
        for i, (y, x) in enumerate(self.pos):
            ys, xs = (y + np.arange(6)) % self.height, (x + np.arange(6)) % self.width
            frames[i][np.ix_(ys, xs)] = (250, 220, 40)
        return frames

    def coverage(self):
        return np.zeros(self.num_envs, dtype=np.float32)


# ---- fake engines -----------------------------------------------------------------------------
class FakeSim:
    scene = "square"
    context_frames = K
    frame_shape = (SIZE, SIZE, 3)

    def __init__(self, num_sessions):
        self.num_sessions = num_sessions
        self.sampler_steps = 4

    def report(self):
        return [{"steps": self.sampler_steps, "latency_ms": 1.0, "confidence": 0.5}] * self.num_sessions


class OracleSim(FakeSim):
    """Returns exactly the real next frame, found by matching the prompt to known clips."""

    def __init__(self, num_sessions, clips):
        super().__init__(num_sessions)
        self.clips = clips

    def reset(self, frames, actions):
        matches = [c for c in self.clips if np.array_equal(c.frames[:, :K], frames)]
        assert len(matches) == 1, "prompt is not the first K real frames of a known clip"
        self.clip, self.t = matches[0], K
        np.testing.assert_array_equal(actions, self.clip.actions[:, :K])

    def step(self, actions, observe=None):
        np.testing.assert_array_equal(actions, self.clip.actions[:, self.t])  # the action producing frame t
        if observe is not None:
            np.testing.assert_array_equal(observe, self.clip.frames[:, self.t])
        frames = self.clip.frames[:, self.t].copy()
        self.t += 1
        return frames, self.report()


class CopySim(FakeSim):
    """Repeats its newest context frame: the copy baseline, as an engine."""

    def reset(self, frames, actions):
        assert frames.shape[1] == K and actions.shape[:2] == frames.shape[:2]
        self.last = frames[:, -1].copy()

    def step(self, actions, observe=None):
        out = self.last.copy()
        self.last = observe.copy() if observe is not None else out
        return out, self.report()


def clips_for(policy, n=3):
    seeds = ev.held_out_seeds(n)
    return ev.collect_real(Square(n, SIZE, SIZE), policy, seeds, K, H, progress=False)


# ---- tests -------------------------------------------------------------------------------------
def test_collect_real_is_deterministic_and_aligned():
    a, b = clips_for("random"), clips_for("random")
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.frames.shape == (3, K + H, SIZE, SIZE, 3) and a.actions.shape == (3, K + H, 4)
    assert a.horizon == H and a.seeds[0] == 10 ** 9
    assert not a.actions[:, 0].any()  # nothing produced the reset frame
    # frame t is the game after ticks 1..t: replaying the recorded actions reproduces it
    game = Square(3, SIZE, SIZE)
    np.testing.assert_array_equal(game.reset(a.seeds), a.frames[:, 0])
    for t in range(1, K + H):
        game.step(a.actions[:, t].astype(bool))
        np.testing.assert_array_equal(game.render(), a.frames[:, t])


@pytest.mark.parametrize("policy", ["random", "explore"])
def test_oracle_engine_hits_the_cap_and_beats_copy(policy):
    real = clips_for(policy)
    sim = OracleSim(3, [real])
    for s in (ev.eval_next_frame(sim, real, progress=False), ev.eval_rollout(sim, real, progress=False)):
        assert s.psnr.shape == (3, H)
        assert np.all(s.psnr == PSNR_CAP_DB) and np.allclose(s.ssim, 1.0)
        np.testing.assert_array_equal(s.sharpness, s.real_sharpness)
        assert np.all(s.steps == 4) and np.all(s.confidence == 0.5)
        np.testing.assert_array_equal(s.first_session, real.frames[0, K:])
    if policy == "explore":  # the square moves every tick, so copying is never exact
        assert np.all(s.copy_psnr < PSNR_CAP_DB)


@pytest.mark.parametrize("policy", ["random", "explore"])
def test_copy_engine_equals_copy_baseline_exactly(policy):
    real = clips_for(policy)
    sim = CopySim(3)
    nxt, roll = ev.eval_next_frame(sim, real, progress=False), ev.eval_rollout(sim, real, progress=False)
    for s in (nxt, roll):
        np.testing.assert_array_equal(s.psnr, s.copy_psnr)
        np.testing.assert_array_equal(s.ssim, s.copy_ssim)
    # the two baselines agree at horizon 1 (both: frame K - 1 vs frame K) and differ later
    np.testing.assert_array_equal(nxt.copy_psnr[:, 0], roll.copy_psnr[:, 0])
    if policy == "explore":
        assert np.all(roll.copy_psnr[:, 1:] != nxt.copy_psnr[:, 1:])


def test_engine_with_wrong_session_count_is_refused():
    real = clips_for("explore")
    with pytest.raises(ValueError, match="num_sessions=3"):
        ev.eval_next_frame(CopySim(2), real, progress=False)


def test_run_eval_writes_everything(tmp_path):
    seeds = ev.held_out_seeds(2)
    sim = CopySim(2)
    report = ev.run_eval(sim, Square(2, SIZE, SIZE), seeds, horizon=H, steps=[2, 5], out=tmp_path,
                         config={"checkpoint_id": "fake"}, progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["config"]["checkpoint_id"] == "fake" and saved["config"]["seeds"] == seeds
    assert saved["config"]["context"] == K and saved["config"]["resolution"] == [SIZE, SIZE]
    assert set(saved["results"]) == {"random", "explore"}
    for policy in ("random", "explore"):
        assert set(saved["results"][policy]) == {"steps2", "steps5"}
        res = saved["results"][policy]["steps5"]
        assert res["sampler_steps"] == 5  # the setting was applied before measuring
        assert res["next_frame"]["psnr"]["n"] == 2 * H
        assert res["next_frame"]["psnr"] == res["next_frame"]["copy_psnr"]
        assert res["rollout"]["horizon"] == list(range(1, H + 1)) and len(res["rollout"]["psnr"]["median"]) == H
        assert (tmp_path / f"strip_{policy}_steps2.png").stat().st_size > 0
    assert (tmp_path / "rollout.png").stat().st_size > 0
    values = np.load(tmp_path / "eval_values.npz")
    assert values["explore/steps2/rollout/psnr"].shape == (2, H)
    table = ev.format_table(report)
    assert "explore" in table and "h=8 PSNR" in table


def test_strip_layout(tmp_path):
    import imageio.v3 as iio
    real = [np.full((SIZE, SIZE, 3), 10 * i, np.uint8) for i in range(3)]
    gen = [np.full((SIZE, SIZE, 3), 200 + i, np.uint8) for i in range(3)]
    ev.write_strip(tmp_path / "s.png", real, gen)
    img = iio.imread(tmp_path / "s.png")
    assert img.shape == (2 * (2 * SIZE + 2), 2 * (3 * SIZE + 2 * 2), 3)
    assert (img[0, 2 * (SIZE + 2)] == 10).all() and (img[-1, -1] == 202).all()


def test_context_shorter_than_the_model_needs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="context frames"):
        ev.run_eval(CopySim(2), Square(2, SIZE, SIZE), ev.held_out_seeds(2), horizon=2, context=K - 1,
                    out=tmp_path, progress=False)


def test_command_line_on_a_real_scene(tmp_path, monkeypatch):
    import scenes
    name = scenes.names()[0]

    def fake_load(checkpoint, num_sessions, device, graphs=None):
        sim = CopySim(num_sessions)
        sim.scene = name
        return sim

    monkeypatch.setattr(ev, "load_world_sim", fake_load)
    report = ev.main(["--checkpoint", "fake", "--seeds", "2", "--horizon", "4", "--out", str(tmp_path)])
    assert report["config"]["scene"] == name
    for policy in ("random", "explore"):
        n = report["results"][policy]["default"]["next_frame"]
        assert n["psnr"] == n["copy_psnr"] and n["psnr"]["n"] == 8


# ---- DSA eval ---------------------------------------------------------------------------------
def test_spearman_on_known_orders():
    from sim.eval import spearman
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486833, abs=1e-6)
    assert np.isnan(spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))


def test_dsa_eval_measures_fixed_k_and_adaptive_thresholds(tiny_student_checkpoint, tmp_path):
    from sim.engine import WorldSim
    from sim.eval import held_out_seeds, run_eval
    seeds = held_out_seeds(2)
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=len(seeds), device="cpu")
    report = run_eval(sim, "maze", seeds, horizon=4, context=4, policies=["explore"], out=tmp_path,
                      progress=False, dsa_taus=[0.0, 1.0])
    dsa = report["dsa"]["explore"]
    assert list(dsa) == ["fixed1", "fixed2", "fixed3", "fixed4", "tau0", "tau1"]
    for k in range(1, 5):
        assert dsa[f"fixed{k}"]["mean_steps_rollout"] == k and dsa[f"fixed{k}"]["steps_histogram"][k] == 8
    assert dsa["tau0"]["mean_steps_rollout"] == 1  # every confidence clears 0: one step
    assert dsa["tau1"]["mean_steps_rollout"] == 4  # none reaches 1: k_max
    assert (tmp_path / "dsa.png").exists()


def test_dsa_verdict_interpolates_fixed_k_and_finds_the_cheapest_match():
    def row(steps, h16, h64, nxt=30.0, sp=-0.6):
        return {"mean_steps_rollout": steps, "next_psnr_mean": nxt, "rollout_psnr_mean": {16: h16, 64: h64},
                "spearman_confidence_vs_error": sp}
    dsa = {"explore": {"fixed1": row(1, 20.0, 15.0), "fixed2": row(2, 21.0, 16.0), "fixed3": row(3, 21.5, 16.5),
                       "fixed4": row(4, 22.0, 17.0), "tau0.8": row(2.5, 21.5, 16.0), "tau0.9": row(2.0, 22.0, 17.2),
                       "teacher32": row(32, 22.5, 17.5, nxt=31.0, sp=float("nan"))}}
    v = ev.dsa_verdict(dsa, k_max=4, teacher="teacher32")["explore"]
    # fixed at 2.5 steps: h16 21.25, h64 16.25
    assert v["equal_steps"]["tau0.8"]["h16"] == pytest.approx(0.25)
    assert v["equal_steps"]["tau0.8"]["h64"] == pytest.approx(-0.25)
    # only tau0.9 matches fixed4 at both horizons, at 2 steps: 4 / 2 = 2x fewer passes
    assert v["passes_to_fixed_kmax"] == {"mean_steps": 2.0, "fewer_passes_x": 2.0, "fewer_forward_passes_x": 5 / 3}
    assert v["student_vs_teacher"] == {"next_frame": pytest.approx(-1.0), "h16": pytest.approx(-0.5),
                                       "h64": pytest.approx(-0.5)}
    assert "teacher32" not in v["spearman"] and v["spearman"]["tau0.9"] == -0.6


def test_the_teacher_is_measured_beside_the_student_at_each_step_count(tiny_student_checkpoint, tiny_checkpoint,
                                                                       tmp_path):
    report = ev.main(["--checkpoint", str(tiny_student_checkpoint), "--dsa", "--taus", "1.0", "--teacher",
                      str(tiny_checkpoint), "--teacher-steps", "1", "6", "--seeds", "2", "--horizon", "16",
                      "--policies", "explore", "--device", "cpu", "--out", str(tmp_path)])
    rows = report["results"]["explore"]
    assert list(rows) == ["fixed1", "fixed2", "fixed3", "fixed4", "tau1", "teacher1", "teacher6"]
    t1, t6 = (rows[k]["rollout"]["psnr"]["mean"] for k in ("teacher1", "teacher6"))
    assert t1 != t6  # one engine, measured at each step count in turn
    top, last = report["dsa"]["explore"]["fixed4"], report["dsa"]["explore"]["teacher6"]
    verdict = report["dsa_verdict"]["explore"]["student_vs_teacher"]
    assert verdict["next_frame"] == pytest.approx(top["next_psnr_mean"] - last["next_psnr_mean"])


def test_settings_share_their_noise_so_equal_settings_score_equally(tiny_student_checkpoint, tmp_path):
    """Common random numbers: tau = 1 never stops early, so it is fixed k_max, draw for draw."""
    from sim.engine import WorldSim
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=2, device="cpu")
    report = ev.run_eval(sim, "maze", ev.held_out_seeds(2), horizon=3, policies=["explore"], out=tmp_path,
                         progress=False, dsa_taus=[1.0])
    fixed, tau = (report["results"]["explore"][k] for k in ("fixed4", "tau1"))
    assert fixed["next_frame"]["psnr"] == tau["next_frame"]["psnr"]
    assert fixed["rollout"]["psnr"] == tau["rollout"]["psnr"]


def test_per_step_thresholds_are_calibrated_on_training_worlds_and_measured(tiny_student_checkpoint, tmp_path):
    from sim.allocator import calibrate_tau_steps
    from sim.engine import WorldSim
    seeds = ev.held_out_seeds(2)
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=len(seeds), device="cpu")
    report = ev.run_eval(sim, "maze", seeds, horizon=4, context=4, policies=["explore"], out=tmp_path,
                         progress=False, dsa_taus=[1.0], dsa_shares=[0.5])
    cal = report["config"]["calibration"]
    assert cal["seeds"] == [0, 1] and not set(cal["seeds"]) & set(seeds)  # never the measured worlds
    traces = ev.confidence_traces(sim, "maze", "explore", cal["seeds"], 4, cal["frames"], progress=False)
    assert traces.shape == (2 * cal["frames"], 4)
    assert cal["tau_steps"]["share0.5"] == pytest.approx(list(calibrate_tau_steps(traces, 0.5, 4)))
    row = report["dsa"]["explore"]["share0.5"]
    assert 1 <= row["mean_steps_rollout"] <= 4 and sum(row["steps_histogram"]) == 8
    assert "share0.5" in ev.dsa_verdict(report["dsa"], 4, horizons=(1,))["explore"]["equal_steps"]


def test_shares_need_the_dsa_eval():
    with pytest.raises(SystemExit):
        ev.parse_args(["--shares", "0.3"])
    with pytest.raises(SystemExit):
        ev.parse_args(["--dsa", "--shares", "1.5"])


def test_context_noise_labels_the_committed_frames_and_changes_what_follows(tiny_checkpoint, tmp_path):
    common = ["--checkpoint", str(tiny_checkpoint), "--seeds", "1", "--horizon", "3", "--steps", "1",
              "--policies", "explore", "--device", "cpu"]
    clean = ev.main(common + ["--out", str(tmp_path / "clean")])
    noisy = ev.main(common + ["--context-noise", "0.1", "--out", str(tmp_path / "noisy")])
    assert clean["config"]["context_noise"] == 0.0 and noisy["config"]["context_noise"] == pytest.approx(0.1)
    psnr = [r["results"]["explore"]["steps1"]["rollout"]["psnr"] for r in (clean, noisy)]
    assert psnr[0] != psnr[1]  # the cache holds different K/V, so the rollout differs
    with pytest.raises(SystemExit):
        ev.parse_args(["--context-noise", "1.5"])


@pytest.mark.parametrize("flag, value, default, bad", [
    # a shift of the Euler levels: the middle level differs (0.75 at shift 3, 0.89 at 8)
    ("shift", 8.0, 3.0, (["--shift", "0"], ["--dsa", "--shift", "2"])),
    # action guidance: v_uncond + 3 (v_cond - v_uncond) is another velocity
    ("guidance", 3.0, 1.0, (["--guidance", "0"], ["--guidance", "-1"], ["--dsa", "--guidance", "2"])),
])
def test_a_teachers_sampler_setting_is_recorded_and_changes_its_frames(tiny_checkpoint, tmp_path, flag, value,
                                                                       default, bad):
    common = ["--checkpoint", str(tiny_checkpoint), "--seeds", "1", "--horizon", "2", "--steps", "2",
              "--policies", "explore", "--device", "cpu"]
    plain = ev.main(common + ["--out", str(tmp_path / "plain")])
    changed = ev.main(common + [f"--{flag}", str(value), "--out", str(tmp_path / "changed")])
    assert plain["config"][flag] == default and changed["config"][flag] == value
    psnr = [r["results"]["explore"]["steps2"]["next_frame"]["psnr"]["mean"] for r in (plain, changed)]
    assert psnr[0] != psnr[1]
    for args in bad:
        with pytest.raises(SystemExit):
            ev.parse_args(args)
