"""Fixtures shared by every room's tests: tiny world checkpoints made on the fly."""
import pytest
import torch

from sim.autoencoder import Autoencoder, AutoencoderConfig
from sim.bundle import save_world
from sim.model import ModelConfig, WorldModel

MAZE_ACTIONS = ["forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right"]


def tiny_world(seed: int = 0, size: int = 32):
    """A randomly initialised tiny model + autoencoder for `size`x`size` maze frames."""
    torch.manual_seed(seed)
    ae = Autoencoder(AutoencoderConfig.from_name("tiny"))
    cfg = ModelConfig.from_name("tiny", action_dim=6, latent_channels=ae.config.latent_channels,
                                latent_h=size // 8, latent_w=size // 8)
    model = WorldModel(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every frame the same
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), ae.eval()


@pytest.fixture(scope="session")
def make_tiny_world():
    return tiny_world


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    model, ae = tiny_world()
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-maze"
    save_world(folder, {"scene": "maze", "actions": MAZE_ACTIONS, "resolution": [32, 32]}, ae, model)
    return folder


@pytest.fixture(scope="session")
def tiny_student_checkpoint(tmp_path_factory):
    """A tiny world marked as a few-step (distilled) student, k_max 4."""
    model, ae = tiny_world(seed=1)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-student"
    save_world(folder, {"scene": "maze", "actions": MAZE_ACTIONS, "resolution": [32, 32],
                        "sampler": {"kind": "few-step", "k_max": 4, "shift": 3.0}}, ae, model)
    return folder
