"""The engine: sessions, determinism, teacher-forced context, branching, bad input, checkpoints."""
import numpy as np
import pytest

from sim.checkpoint import CheckpointError
from sim.engine import WorldSim
from sim.allocator import AllocatorConfig
from sim.sampler import SamplerConfig
from sim.bundle import save_world

K, A = 3, 6


def prompt(B, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (B, K, 32, 32, 3), dtype=np.uint8)
    actions = (rng.random((B, K, A)) > 0.5).astype(np.float32)
    return frames, actions


def actions(B, t):
    a = np.zeros((B, A), np.float32)
    a[:, t % A] = 1
    return a


def sim_of(ckpt, B, seed=0, steps=3):
    return WorldSim.load(ckpt, num_sessions=B, device="cpu", sampler=SamplerConfig(steps=steps), seed=seed)


def rollout(sim, n, observe=None):
    return [sim.step(actions(sim.num_sessions, t), None if observe is None else observe[t])[0] for t in range(n)]


def test_step_shapes_reports_and_determinism(tiny_checkpoint):
    runs = []
    for _ in range(2):
        sim = sim_of(tiny_checkpoint, 2)
        sim.reset(*prompt(2))
        frames, reports = sim.step(actions(2, 0))
        assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8
        assert [r["steps"] for r in reports] == [3, 3] and all(r["latency_ms"] > 0 for r in reports)
        runs.append([frames] + rollout(sim, 4))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_batched_sessions_equal_sessions_run_alone(tiny_checkpoint):
    f, a = prompt(3, seed=1)
    both = sim_of(tiny_checkpoint, 3)
    both.reset(f, a, seeds=[10, 11, 12])
    together = rollout(both, 5)
    for b in range(3):
        alone = sim_of(tiny_checkpoint, 1)
        alone.reset(f[b:b + 1], a[b:b + 1], seeds=[10 + b])
        for t, frames in enumerate(rollout(alone, 5)):
            np.testing.assert_allclose(frames[0].astype(int), together[t][b].astype(int), atol=1)


def test_observed_real_frames_replace_the_models_own_context(tiny_checkpoint):
    f, a = prompt(1, seed=2)
    real = np.random.default_rng(3).integers(0, 256, (6, 1, 32, 32, 3), dtype=np.uint8)
    free, forced = sim_of(tiny_checkpoint, 1), sim_of(tiny_checkpoint, 1)
    free.reset(f, a)
    forced.reset(f, a)
    out_free, out_forced = rollout(free, 6), rollout(forced, 6, observe=real)
    assert np.array_equal(out_free[0], out_forced[0])  # same context for the first frame
    assert not np.array_equal(out_free[-1], out_forced[-1])


def assert_branches_identically(sim):
    """Session 0's snapshot restored into row 1 continues exactly as session 0 went on (two sessions)."""
    snap = sim.snapshot(0)
    first = [sim.step(actions(2, t))[0][0] for t in range(3)]
    sim.restore(1, snap)
    second = [sim.step(actions(2, t))[0][1] for t in range(3)]
    for x, y in zip(first, second):
        assert np.array_equal(x, y)


def test_snapshot_restore_branches_a_session(tiny_checkpoint):
    sim = sim_of(tiny_checkpoint, 2)
    sim.reset(*prompt(2, seed=4))
    rollout(sim, 2)
    assert_branches_identically(sim)


def test_bad_input_gets_one_clear_error(tiny_checkpoint):
    sim = sim_of(tiny_checkpoint, 2)
    with pytest.raises(RuntimeError, match="reset"):
        sim.step(actions(2, 0))
    sim.reset(*prompt(2))
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        sim.step(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="finite"):
        sim.step(np.full((2, 6), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        sim.reset(np.zeros((2, K, 64, 64, 3), np.uint8), prompt(2)[1])
    with pytest.raises(IndexError):
        sim.reset(*prompt(1), sessions=[5])


def test_checkpoint_round_trip_gives_the_same_world(tmp_path, make_tiny_world):
    model, ae = make_tiny_world(seed=5)
    direct = WorldSim(model, ae, num_sessions=1, device="cpu", sampler=SamplerConfig(steps=2))
    save_world(tmp_path / "w", {"scene": "maze", "actions": list("abcdef"), "resolution": [32, 32]}, ae, model)
    loaded = WorldSim.load(tmp_path / "w", device="cpu", sampler=SamplerConfig(steps=2))
    assert loaded.scene == "maze" and loaded.config["id"]
    for sim in (direct, loaded):
        sim.reset(*prompt(1, seed=6))
    for t in range(3):
        assert np.array_equal(direct.step(actions(1, t))[0], loaded.step(actions(1, t))[0])


def test_corrupt_or_wrong_checkpoints_are_named(tmp_path, make_tiny_world):
    model, ae = make_tiny_world(seed=7)
    save_world(tmp_path / "w", {"scene": "maze"}, ae, model)
    weights = sorted((tmp_path / "w").glob("weights-*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=weights.name):
        WorldSim.load(tmp_path / "w")
    save_world(tmp_path / "ae_only", {"scene": "maze"}, ae)
    with pytest.raises(CheckpointError, match="not a world model"):
        WorldSim.load(tmp_path / "ae_only")
    with pytest.raises(CheckpointError, match="manifest"):
        WorldSim.load(tmp_path)


def test_sessions_exiting_at_different_steps_match_running_alone(tiny_student_checkpoint):
    f, a = prompt(4, seed=8)
    probe = WorldSim.load(tiny_student_checkpoint, num_sessions=4, device="cpu",
                          allocator=AllocatorConfig(mode="fixed", k_max=4, fixed_steps=1))
    probe.reset(f, a, seeds=[20, 21, 22, 23])
    first = [r["confidence"] for r in probe.step(actions(4, 0))[1]]
    tau = float(np.median(first))  # some sessions stop after step 1, the others go on
    cfg = AllocatorConfig(mode="adaptive", k_min=1, k_max=4, tau=tau)
    both = WorldSim.load(tiny_student_checkpoint, num_sessions=4, device="cpu", allocator=cfg)
    both.reset(f, a, seeds=[20, 21, 22, 23])
    out = [both.step(actions(4, t)) for t in range(3)]
    exits = [r["steps"] for r in out[0][1]]
    assert len(set(exits)) > 1, f"the test needs sessions exiting at different steps, got {exits}"
    for b in range(4):
        alone = WorldSim.load(tiny_student_checkpoint, num_sessions=1, device="cpu", allocator=cfg)
        alone.reset(f[b:b + 1], a[b:b + 1], seeds=[20 + b])
        for t in range(3):
            frames, reports = alone.step(actions(1, t))
            assert reports[0]["steps"] == out[t][1][b]["steps"]
            np.testing.assert_allclose(frames[0].astype(int), out[t][0][b].astype(int), atol=1)


def test_few_step_reports_carry_the_confidence_trace(tiny_student_checkpoint):
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=2, device="cpu",
                        allocator=AllocatorConfig(mode="fixed", k_max=4, fixed_steps=3))
    sim.reset(*prompt(2))
    _, reports = sim.step(actions(2, 0))
    for r in reports:
        assert r["steps"] == 3 and len(r["confidence_trace"]) == 3 and r["passes"] == 4
        assert all(0.0 < c < 1.0 for c in r["confidence_trace"]) and r["confidence"] == r["confidence_trace"][-1]


def test_steps_decided_without_reading_confidence_report_the_same_traces(tiny_student_checkpoint):
    """Fixed k launches step after step without reading the confidences back; adaptive with a tau no
    session reaches reads them after every step. Same seeds: same frames, same traces."""
    f, a = prompt(2, seed=3)
    runs = []
    for cfg in (AllocatorConfig(mode="fixed", k_max=4, fixed_steps=4), AllocatorConfig(mode="adaptive", k_max=4, tau=1.0)):
        sim = WorldSim.load(tiny_student_checkpoint, num_sessions=2, device="cpu", allocator=cfg)
        sim.reset(f, a, seeds=[5, 6])
        runs.append([sim.step(actions(2, t)) for t in range(2)])
    for (fixed_frames, fixed_reports), (adaptive_frames, adaptive_reports) in zip(*runs):
        np.testing.assert_array_equal(fixed_frames, adaptive_frames)
        for fr, ar in zip(fixed_reports, adaptive_reports):
            assert fr["steps"] == ar["steps"] == 4
            np.testing.assert_allclose(fr["confidence_trace"], ar["confidence_trace"], rtol=1e-6)


def test_a_bf16_engine_with_sessions_exiting_at_different_steps_runs(tiny_student_checkpoint):
    """bf16 as on the GPU: the partial-batch path mixes the model's bf16 outputs with fp32 records."""
    import torch
    f, a = prompt(4, seed=8)
    probe = WorldSim.load(tiny_student_checkpoint, num_sessions=4, device="cpu", dtype=torch.bfloat16,
                          allocator=AllocatorConfig(mode="fixed", k_max=4, fixed_steps=1))
    probe.reset(f, a, seeds=[20, 21, 22, 23])
    tau = float(np.median([r["confidence"] for r in probe.step(actions(4, 0))[1]]))
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=4, device="cpu", dtype=torch.bfloat16,
                        allocator=AllocatorConfig(mode="adaptive", k_min=1, k_max=4, tau=tau))
    sim.reset(f, a, seeds=[20, 21, 22, 23])
    frames, reports = sim.step(actions(4, 0))
    assert frames.shape == (4, 32, 32, 3) and len({r["steps"] for r in reports}) > 1
    assert all(len(r["confidence_trace"]) == r["steps"] for r in reports)


def test_a_students_noise_is_drawn_ahead_without_changing_its_stream(tiny_student_checkpoint):
    """The engine draws the next frame's noise during a step; each frame still gets its session's
    next k_max draws, and a snapshot taken with a draw ahead branches into an identical continuation."""
    import torch
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=2, device="cpu",
                        allocator=AllocatorConfig(mode="adaptive", k_max=4, tau=1.0))
    sim.reset(*prompt(2, seed=6), seeds=[31, 32])
    for t in range(2):
        sim.step(actions(2, t))
    assert set(sim.noise._ahead) == {0, 1}, "the test needs draws made ahead"
    plain = torch.Generator().manual_seed(31)
    for _ in range(2):
        torch.randn((4, *sim.latent_shape), generator=plain)
    assert torch.equal(sim.noise.state(0), plain.get_state())
    assert_branches_identically(sim)


@pytest.mark.parametrize("student", [False, True])
def test_frames_are_the_same_with_and_without_noise_drawn_ahead(tiny_checkpoint, tiny_student_checkpoint, student):
    runs = []
    for ahead in (True, False):
        if student:
            sim = WorldSim.load(tiny_student_checkpoint, num_sessions=3, device="cpu",
                                allocator=AllocatorConfig(mode="adaptive", k_max=4, tau=1.0))
        else:
            sim = sim_of(tiny_checkpoint, 3)
        if not ahead:
            sim.noise.prefetch = lambda rows, shape: None
        sim.reset(*prompt(3, seed=9), seeds=[1, 2, 3])
        frames = [sim.step(actions(3, 0))[0], sim.step(actions(2, 1), sessions=[0, 2])[0]]
        snap = sim.snapshot(2)
        sim.reset(*prompt(1, seed=4), sessions=[1], seeds=[7])  # a reseed with a draw ahead pending
        frames.append(sim.step(actions(3, 2))[0])
        sim.restore(0, snap)
        frames += [sim.step(actions(3, t))[0] for t in range(2)]
        runs.append(frames)
    for with_ahead, without in zip(*runs):
        np.testing.assert_array_equal(with_ahead, without)
