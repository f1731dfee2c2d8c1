"""Shared fixtures for the controls tests: a tiny world checkpoint and servers on 127.0.0.1."""
import threading

import pytest
import torch

from sim.autoencoder import Autoencoder, AutoencoderConfig
from sim.bundle import save_world
from sim.model import ModelConfig, WorldModel

MAZE_ACTIONS = ["forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right"]


def tiny_maze_world(folder, seed: int = 0, size: int = 32):
    """A randomly initialised tiny model + autoencoder of `size`x`size` maze frames, saved as a checkpoint."""
    torch.manual_seed(seed)
    ae = Autoencoder(AutoencoderConfig.from_name("tiny"))
    cfg = ModelConfig.from_name("tiny", action_dim=6, latent_channels=ae.config.latent_channels,
                                latent_h=size // 8, latent_w=size // 8)
    model = WorldModel(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every frame the same
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_world(folder, {"scene": "maze", "actions": MAZE_ACTIONS, "resolution": [size, size]}, ae.eval(), model.eval())
    return folder


@pytest.fixture(scope="session")
def world_checkpoint(tmp_path_factory):
    return tiny_maze_world(tmp_path_factory.mktemp("controls-ckpt") / "tiny-maze")


class RunningServer:
    """A server's poll loop on a thread of the test process."""

    def __init__(self, server):
        self.server = server
        self.host = server.host
        self.endpoint = server.endpoint
        self.thread = threading.Thread(target=server.serve, name="dsa-server", daemon=True)
        self.thread.start()

    def stop(self):
        self.server.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the server loop did not stop"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Engines in these tests run beside client threads on few cores: one intra-op thread keeps a
    step from stalling on a descheduled worker (hundreds of ms instead of a few)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def start_server(world_checkpoint, one_torch_thread):
    """start_server(bind=..., max_sessions=..., steps=..., **ServerConfig fields) -> RunningServer."""
    from controls.server import Host, Server, ServerConfig
    from sim.engine import WorldSim
    from sim.sampler import SamplerConfig

    running = []

    def start(bind="tcp://127.0.0.1:*", max_sessions=8, steps=1, checkpoint=None, **fields):
        config = ServerConfig(bind=bind, max_sessions=max_sessions, **fields)
        engine = WorldSim.load(checkpoint or world_checkpoint, num_sessions=max_sessions, device="cpu",
                               sampler=SamplerConfig(steps=steps))
        server = RunningServer(Server(Host(engine, config), config))
        running.append(server)
        return server

    yield start
    for s in running:
        if s.thread.is_alive():
            s.stop()
