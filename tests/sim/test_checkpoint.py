"""The checkpoint folder: exact round trips, splitting, and one clear sentence per fault."""
import json

import numpy as np
import pytest
import safetensors.torch
import torch

from sim.checkpoint import CheckpointError, check_config, checkpoint_id, load_checkpoint, save_checkpoint

CONFIG = {"model": {"preset": "tiny", "d_model": 64, "channels": (8, 16, 16)}, "latent_scale": 0.731,
          "record": {"step": 120, "psnr": np.float32(31.5)}}


def make_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder.conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "encoder.conv.bias": torch.randn(8, generator=g),
        "head.weight": torch.randn(24, 32, generator=g),
        "decoder.weight": torch.randn(16, 32, generator=g),
        "latent_scale": torch.tensor(0.731),
        "steps": torch.arange(10, dtype=torch.int64),
        "mask": torch.rand(5, generator=g) > 0.5,
    }


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "ckpt", CONFIG, make_tensors(), max_file_bytes=4096)


def weight_files(folder):
    return sorted(p.name for p in folder.glob("weights-*.safetensors"))


def test_round_trip_is_exact(tmp_path):
    tensors = make_tensors()
    save_checkpoint(tmp_path / "ckpt", CONFIG, tensors)
    config, loaded = load_checkpoint(tmp_path / "ckpt")
    assert config == json.loads(json.dumps(CONFIG, default=lambda o: o.tolist()))  # tuples -> lists, numpy -> float
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name], t), name
    assert weight_files(tmp_path / "ckpt") == ["weights-00000.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_bf16_cast_only_touches_floats(tmp_path):
    tensors = make_tensors()
    save_checkpoint(tmp_path / "ckpt", CONFIG, tensors, dtype=torch.bfloat16)
    _, loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["head.weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["head.weight"], tensors["head.weight"].bfloat16())
    assert loaded["steps"].dtype == torch.int64 and torch.equal(loaded["steps"], tensors["steps"])
    assert loaded["mask"].dtype == torch.bool and torch.equal(loaded["mask"], tensors["mask"])


def test_views_tied_and_noncontiguous_tensors(tmp_path):
    base = torch.randn(8, 6)
    tensors = {"a": base, "tied": base, "t": base.t(), "slice": base[2:4]}
    save_checkpoint(tmp_path / "ckpt", {}, tensors)
    _, loaded = load_checkpoint(tmp_path / "ckpt")
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name


def test_splits_across_files_under_the_limit(ckpt):
    files = weight_files(ckpt)
    assert len(files) == 3  # 1.2 KiB | 3 KiB | 2 KiB and the small ones, in 4 KiB files
    assert all((ckpt / f).stat().st_size <= 4096 for f in files)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and set(manifest["files"]) == {"config.json", *files}
    _, loaded = load_checkpoint(ckpt)
    for name, t in make_tensors().items():
        assert torch.equal(loaded[name], t)


def test_tensor_over_the_limit_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"tensor 'head.weight' is .* over the .* limit"):
        save_checkpoint(tmp_path / "ckpt", {}, {"head.weight": torch.zeros(64, 64)}, max_file_bytes=8192)
    assert not (tmp_path / "ckpt").exists()


def test_flipped_byte_is_detected(ckpt):
    path = ckpt / "weights-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt: weights-00001\.safetensors has sha256 [0-9a-f]{12}\.\. but the manifest says"):
        load_checkpoint(ckpt)
    load_checkpoint(ckpt, verify=False)  # sizes still match: only the hash could tell


def test_missing_file_is_named(ckpt):
    (ckpt / "weights-00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: weights-00001\.safetensors is missing"):
        load_checkpoint(ckpt)


def test_extra_weights_file_is_named(ckpt):
    safetensors.torch.save_file({"x": torch.zeros(2)}, ckpt / "weights-00099.safetensors")
    with pytest.raises(CheckpointError, match=r"weights-00099\.safetensors"):
        load_checkpoint(ckpt)


def test_truncated_file_is_named(ckpt):
    path = ckpt / "weights-00000.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"weights-00000\.safetensors is 100 bytes but the manifest says"):
        load_checkpoint(ckpt, verify=False)


def test_corrupt_config_is_named(ckpt):
    (ckpt / "config.json").write_text('{"model": ')
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(ckpt)
    # a config rewritten together with its manifest entry is caught by the parser instead
    data = b'{"model": '
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["config.json"]["bytes"] = len(data)
    manifest["files"]["config.json"]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    (ckpt / "config.json").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_checkpoint(ckpt)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nowhere/: the folder does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a dsa-sim checkpoint: .*empty/ has no manifest\.json"):
        load_checkpoint(tmp_path / "empty")


def test_manifest_from_a_newer_format(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["format_version"] = 99
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format version 99 .* upgrade dsa-sim"):
        load_checkpoint(ckpt)


def test_failed_save_leaves_the_old_checkpoint_intact(ckpt, monkeypatch):
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    old_id = checkpoint_id(ckpt)
    real_save, calls = safetensors.torch.save, []

    def save_then_fail(tensors, metadata=None):
        calls.append(1)
        if len(calls) == 2:  # the first weights file is on disk, the second never arrives
            raise RuntimeError("disk full")
        return real_save(tensors, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save", save_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(ckpt, {"other": 1}, make_tensors(seed=1), max_file_bytes=4096)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert checkpoint_id(ckpt) == old_id
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]  # the temp folder is gone
    load_checkpoint(ckpt)


def test_replace_and_id(ckpt):
    old_id = checkpoint_id(ckpt)
    assert len(old_id) == 12 and int(old_id, 16) >= 0
    assert checkpoint_id(ckpt) == old_id  # stable
    save_checkpoint(ckpt, {"other": 1}, make_tensors(seed=1))
    config, loaded = load_checkpoint(ckpt)
    assert config == {"other": 1} and torch.equal(loaded["head.weight"], make_tensors(seed=1)["head.weight"])
    assert weight_files(ckpt) == ["weights-00000.safetensors"]  # old split files did not linger
    assert checkpoint_id(ckpt) != old_id
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt"]


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="holds other files"):
        save_checkpoint(tmp_path / "notes", {}, make_tensors())
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_check_config_names_the_mismatch():
    config = {"model": {"d_model": 256, "channels": [8, 16, 16], "preset": "tiny"}, "latent_scale": 0.7}
    check_config(config, {"model": {"d_model": 256, "channels": (8, 16, 16)}})  # tuple == list
    with pytest.raises(CheckpointError, match=r"trained with d_model=256 but the config asks for 384"):
        check_config(config["model"], {"channels": (8, 16, 16), "d_model": 384})
    with pytest.raises(CheckpointError, match=r"model\.preset=\"tiny\" but the config asks for \"small\""):
        check_config(config, {"model": {"preset": "small"}})
    with pytest.raises(CheckpointError, match=r"has no model\.n_layers"):
        check_config(config, {"model": {"n_layers": 12}})


def test_autoencoder_survives_a_bf16_checkpoint(tmp_path):
    from dataclasses import asdict

    from sim.autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    cfg = AutoencoderConfig.from_name("tiny")
    ae = Autoencoder(cfg)
    ae.latent_scale.fill_(0.5)
    save_checkpoint(tmp_path / "ckpt", {"autoencoder": asdict(cfg)}, ae.state_dict(), dtype=torch.bfloat16)
    config, tensors = load_checkpoint(tmp_path / "ckpt")
    check_config(config["autoencoder"], asdict(cfg))
    ae2 = Autoencoder(AutoencoderConfig(**config["autoencoder"]))
    ae2.load_state_dict(tensors)  # bf16 -> fp32 on copy
    assert float(ae2.latent_scale) == 0.5
    for (name, p), p2 in zip(ae.state_dict().items(), ae2.state_dict().values()):
        assert torch.equal(p2, p.bfloat16().float()), name
