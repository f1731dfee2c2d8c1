"""Shared fixtures for the controls tests: a tiny world checkpoint and servers on 127.0.0.1."""
import threading

import pytest
import torch


@pytest.fixture(scope="session")
def world_checkpoint(tiny_checkpoint):
    """The tiny 32x32 maze world of tests/conftest.py."""
    return tiny_checkpoint


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
