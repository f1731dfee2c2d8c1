"""The export step: a verified bf16 copy of a trained world, refused over a shipped one without --force.

A tiny random distilled student stands in for `runs/maze/distill/checkpoint`; its eval.json
is a real one, written by `sim.eval.run_eval` on the real engine and the real maze scene.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

import scenes
import sim.eval as ev
import sim.export as export
from sim.bundle import save_world
from sim.checkpoint import checkpoint_id, load_checkpoint
from sim.engine import WorldSim

SIZE = 32
MAZE_ACTIONS = list(scenes.game_class("maze").ACTIONS)
STUDENT_CONFIG = {"scene": "maze", "actions": MAZE_ACTIONS, "resolution": [SIZE, SIZE],
                  "sampler": {"kind": "few-step", "k_max": 4, "shift": 3.0, "cache_last_step": False},
                  "training": {"stage": "distill", "steps": 12, "frames": 4608, "minutes": 0.1},
                  "metrics": {"heldout_psnr_db": 30.5}}
DSA_LABELS = ("fixed1", "fixed2", "tau0.9")
KEPT = ("scene", "actions", "resolution", "sampler", "training", "kind", "autoencoder", "latent_scale", "model")


@pytest.fixture(scope="module")
def student(tmp_path_factory, make_tiny_world):
    model, ae = make_tiny_world(seed=3, size=SIZE)
    return save_world(tmp_path_factory.mktemp("src") / "checkpoint", STUDENT_CONFIG, ae, model)


@pytest.fixture(scope="module")
def eval_json(student, tmp_path_factory):
    """A real eval.json of the student (both policies, 2 seeds, horizon 8, one step per frame), with
    the DSA summary that `--dsa` adds made by `sim.eval.dsa_summary` from known per-seed values
    (a real --dsa pass measures five settings: too slow for a unit test on a CPU)."""
    out = tmp_path_factory.mktemp("eval")
    sim = WorldSim.load(student, num_sessions=2, device="cpu")
    report = ev.run_eval(sim, "maze", ev.held_out_seeds(2), horizon=8, steps=[1], out=out, progress=False,
                         config={"checkpoint": str(student), "checkpoint_id": sim.config["id"], "scene": "maze"})
    rng = np.random.default_rng(0)
    values = {f"{policy}/{label}/{kind}/{metric}": rng.uniform(*span, (2, 8)).round(1)  # [B, H] per seed and frame
              for policy in ev.POLICIES for label in DSA_LABELS for kind in ("next_frame", "rollout")
              for metric, span in (("psnr", (10, 30)), ("steps", (1, 4)), ("confidence", (0, 1)))}
    report["dsa"] = ev.dsa_summary(values, ev.POLICIES, DSA_LABELS)
    (out / "eval.json").write_text(json.dumps(ev._json_clean(report)))
    return out / "eval.json"


def run(*args) -> export.Exported:
    return export.main([str(a) for a in args])


def exits_2(*args) -> None:
    with pytest.raises(SystemExit) as e:
        run(*args)
    assert e.value.code == 2


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ---- the export itself ------------------------------------------------------------------------
def test_round_trip_bf16_config_kept_and_manifest_valid(student, tmp_path, capsys):
    dest = tmp_path / "weights" / "maze"
    out = run("--checkpoint", student, "--dest", dest)
    src_config, src = load_checkpoint(student)
    config, tensors = load_checkpoint(dest)
    assert set(tensors) == set(src)
    for name, t in src.items():
        assert tensors[name].dtype == (torch.bfloat16 if t.is_floating_point() else t.dtype), name
        assert torch.equal(tensors[name], t.bfloat16() if t.is_floating_point() else t), name
    for key in KEPT:
        assert config[key] == src_config[key], key
    assert config["metrics"] == STUDENT_CONFIG["metrics"]  # no --eval-json: the training figures, nothing added
    rec = config["export"]
    assert rec["source"] == student.as_posix() and rec["source_id"] == checkpoint_id(student)
    assert rec["dtype"] == "bfloat16" and rec["date"][:2] == "20"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in dest.iterdir()} - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (dest / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert out.folder == dest and out.checkpoint_id == checkpoint_id(dest) and out.files == len(list(dest.iterdir()))
    assert out.total_bytes == sum(p.stat().st_size for p in dest.iterdir())
    assert out.config == config
    assert not leftovers(dest.parent)
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by whoever runs the installed package
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(dest) in last and f"{out.files} files" in last and "MiB" in last and out.checkpoint_id in last


def test_engine_plays_the_export(student, tmp_path):
    dest = tmp_path / "maze"
    run("--checkpoint", student, "--dest", dest)
    sim = WorldSim.load(dest, num_sessions=1, device="cpu")
    assert sim.few_step and sim.scene == "maze" and sim.frame_shape == (SIZE, SIZE, 3)
    sim.reset(np.zeros((1, 2, SIZE, SIZE, 3), np.uint8), np.zeros((1, 2, 6), np.float32))
    frames, reports = sim.step(np.eye(1, 6, dtype=np.float32))
    assert frames.shape == (1, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert 1 <= reports[0]["steps"] <= 4


def test_default_dest_is_the_shipped_folder_of_the_scene(student, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "SHIPPED_DIR", tmp_path / "weights")
    out = run("--checkpoint", student)
    assert out.folder == tmp_path / "weights" / "maze" and (out.folder / "manifest.json").is_file()


# ---- an existing checkpoint in --dest ---------------------------------------------------------
def test_existing_dest_is_refused_without_force_and_compared(student, eval_json, tmp_path, capsys):
    dest = tmp_path / "maze"
    run("--checkpoint", student, "--dest", dest)
    before = snapshot(dest)
    capsys.readouterr()
    exits_2("--checkpoint", student, "--dest", dest, "--eval-json", eval_json)
    captured = capsys.readouterr()
    assert snapshot(dest) == before and not leftovers(tmp_path)
    assert "--force" in captured.err and captured.err.count("\n") == 1
    assert "already holds checkpoint" in captured.out
    # the old export carries no eval figures, the new one does: shown side by side
    row = next(line for line in captured.out.splitlines() if line.startswith("explore/steps1 next PSNR mean"))
    assert row.split()[-2] == "-" and float(row.split()[-1]) > 0  # old: none, new: the eval's
    assert "heldout_psnr_db" in captured.out  # a figure both carry
    assert "no PSNR figure in both" in captured.out


def test_force_replaces_the_folder(student, eval_json, tmp_path, capsys):
    dest = tmp_path / "maze"
    first = run("--checkpoint", student, "--dest", dest)
    second = run("--checkpoint", student, "--dest", dest, "--force", "--eval-json", eval_json)
    assert second.checkpoint_id != first.checkpoint_id
    assert checkpoint_id(dest) == second.checkpoint_id and "eval" in second.config["metrics"]
    assert not leftovers(tmp_path)
    # a third export over one with the same figures: compared like for like, no PSNR figure is higher
    capsys.readouterr()
    run("--checkpoint", student, "--dest", dest, "--force", "--eval-json", eval_json)
    assert "new is higher on 0 of " in capsys.readouterr().out


def test_dest_with_other_files_is_never_replaced(student, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    exits_2("--checkpoint", student, "--dest", dest, "--force")
    assert snapshot(dest) == {"notes.txt": b"keep me"}


# ---- bad inputs -------------------------------------------------------------------------------
def test_corrupt_source_exits_2_and_writes_nothing(student, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(student, src)
    weights = src / "weights-00000.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    dest = tmp_path / "out" / "maze"
    exits_2("--checkpoint", src, "--dest", dest)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "corrupt" in err and err.count("\n") == 1
    assert not dest.exists() and not (tmp_path / "out").exists()


def test_wrong_scene_or_missing_source_exits_2(student, tmp_path):
    exits_2("--checkpoint", student, "--dest", tmp_path / "d", "--scene", "dungeon")
    exits_2("--checkpoint", tmp_path / "nowhere", "--dest", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_eval_figures_land_in_config(student, eval_json, tmp_path):
    report = json.loads(eval_json.read_text())
    out = run("--checkpoint", student, "--dest", tmp_path / "maze", "--eval-json", eval_json)
    figures = load_checkpoint(tmp_path / "maze")[0]["metrics"]["eval"]
    assert figures == out.config["metrics"]["eval"]
    assert figures["checkpoint_id"] == checkpoint_id(student) and figures["seeds"] == 2 and figures["horizon"] == 8
    assert set(figures["results"]) == set(ev.POLICIES) and set(figures["dsa"]) == set(ev.POLICIES)
    for policy in ev.POLICIES:
        settings = report["results"][policy]
        assert set(figures["results"][policy]) == set(settings) == {"steps1"}
        for label, res in settings.items():
            f = figures["results"][policy][label]
            assert f["next_psnr_mean"] == round(res["next_frame"]["psnr"]["mean"], 3)
            assert f["next_psnr_median"] == round(res["next_frame"]["psnr"]["median"], 3)
            assert f["rollout_psnr_mean"] == {"1": round(res["rollout"]["psnr"]["mean"][0], 3),
                                              "8": round(res["rollout"]["psnr"]["mean"][7], 3)}
            assert set(f["rollout_copy_psnr_mean"]) == {"1", "8"} and f["sampler_steps"] == 1
        assert set(figures["dsa"][policy]) == set(DSA_LABELS)
        for label, d in figures["dsa"][policy].items():
            want = report["dsa"][policy][label]
            assert d["mean_steps"] == round(want["mean_steps_rollout"], 3)
            assert d["next_psnr_mean"] == round(want["next_psnr_mean"], 3)
            assert d["rollout_psnr_mean"] == {h: round(want["rollout_psnr_mean"][h], 3) for h in ("1", "8")}
    assert len(json.dumps(figures)) < 8000  # headline figures, not the whole eval
    assert out.config["export"]["eval_json"] == eval_json.as_posix()


def test_eval_of_another_checkpoint_or_no_eval_exits_2(student, eval_json, tmp_path):
    report = json.loads(eval_json.read_text())
    report["config"]["checkpoint_id"] = "0123456789ab"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(report))
    exits_2("--checkpoint", student, "--dest", tmp_path / "a", "--eval-json", other)
    (tmp_path / "bad.json").write_text('{"results": 3}')
    exits_2("--checkpoint", student, "--dest", tmp_path / "b", "--eval-json", tmp_path / "bad.json")
    exits_2("--checkpoint", student, "--dest", tmp_path / "c", "--eval-json", tmp_path / "missing.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "other.json"]


# ---- size limits ------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["MAX_FILE_BYTES", "MAX_TOTAL_BYTES"])
def test_size_limits_fail_cleanly_and_keep_the_old_folder(student, tmp_path, monkeypatch, capsys, limit):
    dest = tmp_path / "maze"
    run("--checkpoint", student, "--dest", dest)
    before = snapshot(dest)
    biggest = max(len(b) for b in before.values())
    monkeypatch.setattr(export, limit, biggest - 1 if limit == "MAX_FILE_BYTES" else sum(map(len, before.values())) // 2)
    capsys.readouterr()
    exits_2("--checkpoint", student, "--dest", dest, "--force")
    err = capsys.readouterr().err
    assert "over the" in err and "limit" in err
    assert snapshot(dest) == before and not leftovers(tmp_path)
    exits_2("--checkpoint", student, "--dest", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and not leftovers(tmp_path)


# ---- the comparison ---------------------------------------------------------------------------
def test_comparison_counts_psnr_wins():
    def metrics(next_psnr, h8):
        return {"eval": {"seeds": 8, "horizon": 64, "results": {"explore": {"default": {
            "next_psnr_mean": next_psnr, "next_psnr_median": next_psnr - 1, "rollout_psnr_mean": {"8": h8}}}}}}
    table = export.compare_metrics(metrics(20.0, 15.0), metrics(21.5, 14.0))
    assert "new is higher on 2 of 3 PSNR figures" in table
    assert "+1.50" in table and "-1.00" in table
    assert "neither checkpoint" in export.compare_metrics({}, {})
