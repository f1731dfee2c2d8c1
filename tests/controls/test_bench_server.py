"""The server bench on the tiny worlds: its result fields, and the steps flags it hands the engine."""
import json

import pytest

from controls.bench_server import main as bench
from controls.server import configure_steps
from sim.engine import WorldSim


def test_the_bench_measures_a_student_with_adaptive_steps(tiny_student_checkpoint, one_torch_thread, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench(["--checkpoint", str(tiny_student_checkpoint), "--device", "cpu", "--sessions", "3",
                    "--seconds", "0.5", "--warmup", "0.2", "--steps", "adaptive", "--tau", "0.5", "--in-process",
                    "--json", str(out)])
    one, many = result["phases"]
    assert result["frames_per_s"] > 0 and result["frames_per_s_1"] > 0
    assert one["sessions"] == 1 and many["sessions"] == result["sessions"] == 3
    assert 1 <= result["mean_batch_size"] <= 3 and one["mean_batch_size"] == 1
    for r in (one, many):
        assert 1 <= r["mean_steps"] <= 4
        assert set(r["steps_histogram"]) <= {"1", "2", "3", "4"} and sum(r["steps_histogram"].values()) == r["frames"]
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert r["overhead_share"] >= 0 and r["engine_ms_per_batch"] > 0
    assert result["steps_text"] == "adaptive steps (1 to 4, confidence >= 0.5)"
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    last = capsys.readouterr().out.strip().splitlines()[-3:]
    assert "frames/s" in last[0] and "overhead" in last[0]
    assert [line.split()[0] for line in last[1:]] == ["1", "3"]


def test_the_bench_refuses_adaptive_steps_for_a_teacher_in_one_line(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as stop:
        bench(["--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--steps", "adaptive", "--in-process"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "many-step teacher" in err[0] and "--steps N" in err[0]


def test_the_steps_flags_set_the_engine(tiny_checkpoint, tiny_student_checkpoint):
    student = WorldSim.load(tiny_student_checkpoint, device="cpu")
    assert configure_steps(student) == "adaptive steps (1 to 4, confidence >= 0.9)"  # a student's own default
    assert configure_steps(student, 2) == "2 steps per frame" and student.allocator.cfg.mode == "fixed"
    assert configure_steps(student, "adaptive", 0.7) == "adaptive steps (1 to 4, confidence >= 0.7)"
    assert student.allocator.cfg.mode == "adaptive" and student.allocator.tau == 0.7
    assert configure_steps(student, tau=0.6) == "adaptive steps (1 to 4, confidence >= 0.6)"
    for steps, tau, why in [(9, None, "at most 4"), (2, 0.5, "--tau"), ("adaptive", 1.5, r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=why):
            configure_steps(student, steps, tau)
    teacher = WorldSim.load(tiny_checkpoint, device="cpu")
    assert configure_steps(teacher, 3) == "3 steps per frame" and teacher.sampler.steps == 3
    for steps, tau in [("adaptive", None), (None, 0.8)]:
        with pytest.raises(ValueError, match="many-step teacher"):
            configure_steps(teacher, steps, tau)


def test_the_bench_hands_its_steps_flags_to_a_server_subprocess(tiny_student_checkpoint, one_torch_thread, capsys):
    result = bench(["--checkpoint", str(tiny_student_checkpoint), "--device", "cpu", "--sessions", "2",
                    "--seconds", "0.3", "--warmup", "0.1", "--steps", "3"])
    assert result["server"] == "subprocess" and result["steps_text"] == "3 steps per frame"
    assert [r["steps_histogram"] for r in result["phases"]] == [{"3": r["frames"]} for r in result["phases"]]
    assert "dsa-sim server: stopped" in capsys.readouterr().out
