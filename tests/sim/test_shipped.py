"""The model shipped inside the package: present, verified, within its size limits, playable."""
import numpy as np

from sim.bundle import shipped_checkpoint
from sim.engine import WorldSim


def test_shipped_maze_model_verifies_fits_and_steps():
    folder = shipped_checkpoint("maze")
    assert folder is not None, "the maze model must ship inside the package (sim/weights/maze)"
    sizes = [f.stat().st_size for f in folder.iterdir()]
    assert max(sizes) <= 16 * 2**20 and sum(sizes) <= 32 * 2**20
    sim = WorldSim.load(folder, device="cpu")  # verifies every file's sha256
    assert sim.scene == "maze" and sim.frame_shape == (128, 128, 3)
    sim.sampler_steps = 1
    sim.reset(np.zeros((1, 2, 128, 128, 3), np.uint8), np.zeros((1, 2, 6), np.float32))
    frames, reports = sim.step(np.eye(1, 6, dtype=np.float32))
    assert frames.shape == (1, 128, 128, 3) and reports[0]["steps"] == 1
