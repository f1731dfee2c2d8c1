"""sim.bench's own machinery on the CPU (its timings need a GPU): every mode but compile builds and
runs a step and a frame, and its correctness check passes on a tiny model and fails on a wrong path."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton modes run in the interpreter here

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels import ops  # noqa: E402
from sim import bench  # noqa: E402


@pytest.fixture
def tiny(make_tiny_world):
    model, ae = make_tiny_world()
    yield model, ae
    ops.set_backend("torch")


@pytest.mark.parametrize("mode", ["eager", "triton", "torch+graphs", "triton+graphs"])
def test_every_mode_runs_a_step_and_a_frame(tiny, mode):
    model, ae = tiny
    st = bench.Setup(mode, model, ae, B=2, k_max=1)
    v, conf = st.step()
    assert v.shape == (2, *st.x.shape[1:]) and conf.shape == (2,)
    frames = st.frame()
    assert frames.dtype == torch.uint8 and frames.shape[0] == 2
    t = bench.time_fn(st.step, warmup=1, reps=3, cuda=False)
    assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"]


def test_check_passes_and_catches_a_wrong_fast_path(tiny, tiny_student_checkpoint, monkeypatch):
    model, ae = tiny
    results = bench.check(model, ae, torch.device("cpu"), batches=(2,))
    assert len(results) == 3 * 5 and all(err < 2e-2 for _, err in results)
    engine = bench.check_engine(str(tiny_student_checkpoint), torch.device("cpu"), frames=2)
    assert len(engine) == 2 and all(diff <= 2.0 for _, diff in engine)
    from kernels import triton_ops  # noqa: PLC0415
    real = triton_ops.linear_gated_residual
    monkeypatch.setattr(triton_ops, "linear_gated_residual", lambda *a: real(*a) + 0.1)
    with pytest.raises(AssertionError, match="B1 triton"):
        bench.check(model, ae, torch.device("cpu"), batches=(1,))


def test_engine_latency_times_batched_sessions_and_says_where_a_frame_goes(tiny_student_checkpoint):
    e = bench.engine_latency(tiny_student_checkpoint, "cpu", frames=4, tau=0.8, sessions=2, profile=True,
                             warmup=1, profile_frames=3)
    assert e["sessions"] == 2 and e["frames"] == 4 and e["tau"] == 0.8
    assert 0 < e["p50_ms"] <= e["p99_ms"] and e["frames_per_s"] > 0
    assert sum(e["steps_histogram"]) == 2 * 4 and 1 <= e["mean_steps"] <= 4
    prof = e["profile"]
    assert prof["device_busy_ms_per_frame"] is None  # no device on the CPU: host operators only
    assert prof["wall_ms_per_frame"] > 0 and prof["host_ops"]
    assert all(r["self_cpu_ms_per_frame"] > 0 and r["calls_per_frame"] > 0 for r in prof["host_ops"])
    text = "\n".join(bench.format_engine(e))
    assert "2 sessions" in text and "host operators" in text
