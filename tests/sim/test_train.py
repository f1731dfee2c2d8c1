"""Training stages on the CPU: ae -> teacher, resume, a usable checkpoint, DDP under torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sim.engine import WorldSim
from sim.train import main as train

SMALL = ["--scene", "maze", "--preset", "tiny", "--width", "32", "--height", "32", "--workers", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(["--stage", "ae", *SMALL, "--max-steps", "4", "--batch-size", "4", "--out", str(out)])
    train(["--stage", "teacher", *SMALL, "--max-steps", "4", "--batch-size", "2", "--clip-frames", "6",
           "--log-every", "1", "--out", str(out)])
    return out


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


def test_stages_write_checkpoints_metrics_and_a_playable_world(run_dir):
    ae_rows = read_metrics(run_dir / "ae" / "metrics.jsonl")
    assert ae_rows[-1]["summary"]["steps"] == 4 and "heldout_psnr_db" in ae_rows[-1]["summary"]
    rows = [r for r in read_metrics(run_dir / "teacher" / "metrics.jsonl") if "step" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    losses = [r["loss"] for r in rows]
    assert all(np.isfinite(losses)) and len(set(losses)) > 1
    sim = WorldSim.load(run_dir / "teacher" / "checkpoint", device="cpu")
    assert sim.scene == "maze" and sim.actions[0] == "forward"
    sim.sampler_steps = 2
    sim.reset(np.zeros((1, 2, 32, 32, 3), np.uint8), np.zeros((1, 2, 6), np.float32))
    frames, _ = sim.step(np.eye(1, 6, dtype=np.float32))
    assert frames.shape == (1, 32, 32, 3)


def test_a_stage_resumes_where_it_stopped(run_dir):
    train(["--stage", "teacher", *SMALL, "--max-steps", "6", "--batch-size", "2", "--clip-frames", "6",
           "--log-every", "1", "--out", str(run_dir)])
    steps = [r["step"] for r in read_metrics(run_dir / "teacher" / "metrics.jsonl") if "step" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # 4 from the first run, then 5 and 6 after resuming
    config = json.loads((run_dir / "teacher" / "checkpoint" / "config.json").read_text())
    assert config["training"]["steps"] == 6


def test_distill_runs_with_finite_losses_that_change(run_dir):
    train(["--stage", "distill", *SMALL, "--max-steps", "4", "--batch-size", "2", "--clip-frames", "6",
           "--prompt-frames", "3", "--k-max", "3", "--log-every", "1", "--out", str(run_dir)])
    rows = [r for r in read_metrics(run_dir / "distill" / "metrics.jsonl") if "step" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("dmd", "conf_loss", "critic_loss"):
        values = [r[key] for r in rows]
        assert all(np.isfinite(values)) and len(set(values)) > 1, (key, values)
    assert all(r["rollout_gap"] < 1e-4 for r in rows)  # the gradient pass recomputes the rollout exactly
    # without --regress-weight the distance to the real frames is only logged, not trained on
    assert all(r["loss"] == pytest.approx(r["dmd"] + r["conf_loss"], rel=1e-4) for r in rows)
    # the student's record names its teacher, with the teacher's own training record
    from sim.checkpoint import checkpoint_id
    record = json.loads((run_dir / "distill" / "checkpoint" / "config.json").read_text())["training"]
    assert record["teacher"]["id"] == checkpoint_id(run_dir / "teacher" / "checkpoint")
    assert record["teacher"]["training"]["stage"] == "teacher"
    sim = WorldSim.load(run_dir / "distill" / "checkpoint", device="cpu")
    assert sim.few_step and sim.allocator.cfg.k_max == 3
    sim.reset(np.zeros((1, 2, 32, 32, 3), np.uint8), np.zeros((1, 2, 6), np.float32))
    _, reports = sim.step(np.eye(1, 6, dtype=np.float32))
    assert 1 <= reports[0]["steps"] <= 3


def test_distill_with_the_regression_pull_adds_it_to_the_loss(run_dir, tmp_path):
    out = tmp_path / "pulled"
    train(["--stage", "distill", *SMALL, "--max-steps", "3", "--batch-size", "2", "--clip-frames", "6",
           "--prompt-frames", "3", "--k-max", "3", "--log-every", "1", "--regress-weight", "2.5",
           "--teacher", str(run_dir / "teacher" / "checkpoint"), "--out", str(out)])
    rows = [r for r in read_metrics(out / "distill" / "metrics.jsonl") if "step" in r]
    assert len(rows) == 3 and all(np.isfinite(r["regress"]) and r["regress"] > 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["dmd"] + r["conf_loss"] + 2.5 * r["regress"], rel=1e-4) for r in rows)
    config = json.loads((out / "distill" / "checkpoint" / "config.json").read_text())
    assert config["training"]["config"]["regress_weight"] == 2.5
    from sim.train import parse_args
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--stage", "distill", "--regress-weight", bad])
    with pytest.raises(SystemExit):
        parse_args(["--stage", "distill", "--regress-frames", "-1"])


def test_distill_with_the_gan_term_trains_its_classifier_and_resumes_it(run_dir, tmp_path):
    out = tmp_path / "gan"
    args = ["--stage", "distill", *SMALL, "--batch-size", "2", "--clip-frames", "6", "--prompt-frames", "3",
            "--k-max", "2", "--log-every", "1", "--gan-weight", "0.5", "--gan-critic-weight", "0.1",
            "--teacher", str(run_dir / "teacher" / "checkpoint"), "--out", str(out)]
    train([*args, "--max-steps", "3"])
    rows = [r for r in read_metrics(out / "distill" / "metrics.jsonl") if "step" in r]
    assert len(rows) == 3
    for key in ("gan", "d_loss", "d_real", "d_fake"):
        values = [r[key] for r in rows]
        assert all(np.isfinite(values)) and len(set(values)) > 1, (key, values)
    assert all(r["loss"] == pytest.approx(r["dmd"] + r["conf_loss"] + 0.5 * r["gan"], rel=1e-4) for r in rows)
    from safetensors import safe_open
    state = out / "distill" / "state"
    names = set()
    for f in state.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    assert any(n.startswith("disc.") for n in names) and any(n.startswith("disc.opt.") for n in names)
    train([*args, "--max-steps", "4"])  # resumes the classifier with the rest
    steps = [r["step"] for r in read_metrics(out / "distill" / "metrics.jsonl") if "step" in r]
    assert steps == [1, 2, 3, 4]
    from sim.train import parse_args
    for bad in ("-1", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--stage", "distill", "--gan-weight", bad])


def test_head_only_trains_the_confidence_head_toward_the_real_frames_and_nothing_else(run_dir, tmp_path):
    from sim.bundle import load_world
    from sim.train import parse_args
    student = tmp_path / "student"
    common = ["--stage", "distill", *SMALL, "--batch-size", "2", "--clip-frames", "6", "--prompt-frames", "3",
              "--k-max", "2", "--log-every", "1", "--teacher", str(run_dir / "teacher" / "checkpoint")]
    train([*common, "--max-steps", "2", "--out", str(student)])
    out = tmp_path / "head"
    train([*common, "--max-steps", "3", "--head-only", "--conf-target", "real", "--conf-frames", "2",
           "--conf-scale", "0.5", "--init", str(student / "distill" / "checkpoint"), "--out", str(out)])
    rows = [r for r in read_metrics(out / "distill" / "metrics.jsonl") if "step" in r]
    assert len(rows) == 3 and all("dmd" not in r and "critic_loss" not in r for r in rows)
    losses = [r["conf_loss"] for r in rows]
    assert all(np.isfinite(losses)) and len(set(losses)) > 1 and all(r["loss"] == r["conf_loss"] for r in rows)
    # the real target is exp(-mse / scale) of a generated frame to its real one: in (0, 1), not the k_max
    # target's 1 at the last step
    assert all(0 < r["conf_target"] < 1 for r in rows)
    before, _, _ = load_world(student / "distill" / "checkpoint")
    after, _, config = load_world(out / "distill" / "checkpoint")
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert changed and all(k.startswith("confidence.") for k in changed)
    assert config["training"]["config"]["conf_target"] == "real"
    for bad in (["--head-only"], ["--stage", "distill", "--head-only"], ["--conf-target", "x"],
                ["--conf-frames", "0"], ["--conf-scale", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_warm_started_run_keeps_the_training_record_of_its_init(run_dir, tmp_path):
    init = run_dir / "teacher" / "checkpoint"
    before = json.loads((init / "config.json").read_text())["training"]
    out = tmp_path / "warm"
    train(["--stage", "teacher", *SMALL, "--max-steps", "2", "--batch-size", "2", "--clip-frames", "6",
           "--init", str(init), "--out", str(out)])
    record = json.loads((out / "teacher" / "checkpoint" / "config.json").read_text())["training"]
    assert record["steps"] == 2
    assert record["init"]["checkpoint"] == str(init) and record["init"]["training"]["steps"] == before["steps"]
    assert len(record["init"]["id"]) >= 8


def test_unknown_scene_is_refused_with_the_choices(tmp_path):
    with pytest.raises(SystemExit, match="choose one of"):
        train(["--stage", "ae", "--scene", "moon", "--preset", "tiny", "--out", str(tmp_path)])


def test_torchrun_two_processes_gloo(run_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "sim.train", "--stage", "teacher", *SMALL, "--max-steps", "3", "--batch-size", "2",
           "--clip-frames", "6", "--log-every", "1", "--ae", str(run_dir / "ae" / "checkpoint"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_metrics(out / "teacher" / "metrics.jsonl")[-1]["summary"]
    assert summary["steps"] == 3
    config = json.loads((out / "teacher" / "checkpoint" / "config.json").read_text())
    assert config["training"]["world_size"] == 2


def test_the_learning_rate_warms_up_then_anneals_over_the_time_box():
    from sim.train import TrainConfig, lr_at, parse_args
    cfg = TrainConfig(warmup_steps=10, lr_final=0.1)
    assert lr_at(0, cfg, 1.0) == pytest.approx(0.1)  # warm-up: step 1 of 10
    assert lr_at(100, cfg, 1.0, progress=0.0) == pytest.approx(1.0)
    assert lr_at(100, cfg, 1.0, progress=0.5) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(100, cfg, 1.0, progress=1.0) == pytest.approx(0.1)
    assert lr_at(100, cfg, 1.0, progress=3.0) == pytest.approx(0.1)  # past the box: stays at the floor
    values = [lr_at(100, cfg, 1.0, progress=p / 20) for p in range(21)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(100, TrainConfig(warmup_steps=10), 1.0, progress=0.9) == 1.0  # default: constant
    with pytest.raises(SystemExit):
        parse_args(["--lr-final", "1.5"])
