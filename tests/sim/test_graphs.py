"""The graph runner's buckets and padding, on the CPU: `capture=False` runs the same static,
padded buffers eagerly, so everything but the capture itself is held to the plain model here.
(The capture is checked against eager on the GPU by `python -m sim.bench --check`.)"""
import numpy as np
import pytest
import torch

from sim.allocator import AllocatorConfig
from sim.engine import WorldSim
from sim.graphs import BucketedGraphs, FrameGraphs, bucket_sizes
from sim.sampler import SamplerConfig

from tests.sim.test_engine import actions, prompt


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_bucketed_graphs_pad_and_slice():
    seen = []

    def fn(x, rows):
        seen.append((x.shape[0], rows.tolist()))
        return [x * 2, rows + 0]

    g = BucketedGraphs(fn, [((2,), torch.float32, None), ((), torch.long, 9)], max_batch=5,
                       device=torch.device("cpu"))
    out, rows = g(torch.ones(3, 2), torch.tensor([4, 1, 0]))
    assert out.shape == (3, 2) and torch.equal(out, torch.full((3, 2), 2.0))
    assert rows.tolist() == [4, 1, 0]
    assert seen[-1] == (4, [4, 1, 0, 9]), "a batch of 3 runs in the bucket of 4, padded with the pad value"
    g(torch.ones(1, 2), torch.tensor([2]))
    assert seen[-1] == (1, [2])
    assert g.captured == [1, 4]
    with pytest.raises(ValueError, match="exceeds"):
        g(torch.ones(6, 2), torch.arange(6))


def test_frame_graphs_equal_the_model_and_padding_touches_no_session(make_tiny_world):
    model, _ = make_tiny_world()
    cfg = model.cfg
    sessions = 5
    torch.manual_seed(0)
    caches = [model.setup_cache(sessions + 1) for _ in range(2)]
    for c in caches[1:]:
        c.k.copy_(caches[0].k.normal_())
        c.v.copy_(caches[0].v.normal_())
    for c in caches:
        c.length.copy_(torch.tensor([3, 0, 9, 1, 5, 0]))
    graphs = FrameGraphs(model, caches[1], pad_row=sessions, capture=False)
    for rows in ([2, 0, 4], [1], [0, 1, 2, 3, 4]):  # buckets 4 (one padded row), 1, 5
        rows = torch.tensor(rows)
        x = torch.randn(len(rows), cfg.latent_channels, cfg.latent_h, cfg.latent_w)
        s, a = torch.rand(len(rows)), torch.randn(len(rows), cfg.action_dim)
        with torch.no_grad():
            want = model.forward_frame(x, s, a, caches[0], rows)
            got = graphs.forward_frame(x, s, a, caches[1], rows)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        # every session's row of the cache is the same; only the pad row may differ
        torch.testing.assert_close(caches[1].k[:, :sessions], caches[0].k[:, :sessions])
        torch.testing.assert_close(caches[1].v[:, :sessions], caches[0].v[:, :sessions])
    with pytest.raises(ValueError, match="another cache"):
        graphs.forward_frame(x, s, a, caches[0], rows)


@pytest.mark.parametrize("student", [False, True])
def test_engine_with_graph_buffers_gives_the_same_frames(student, tiny_checkpoint, tiny_student_checkpoint):
    ckpt = tiny_student_checkpoint if student else tiny_checkpoint
    runs = []
    for graphs in (False, True):
        sim = WorldSim.load(ckpt, num_sessions=3, device="cpu", sampler=SamplerConfig(steps=3), seed=4, graphs=graphs)
        if student:  # sessions leave the batch at different steps: buckets of 3, 2 and 1
            sim.set_allocator(AllocatorConfig(mode="adaptive", k_min=1, k_max=4, tau=0.5))
        sim.reset(*prompt(3, seed=2))
        frames, steps = [], []
        for t in range(4):
            f, reports = sim.step(actions(3, t))
            frames.append(f)
            steps.append([r["steps"] for r in reports])
        runs.append((frames, steps))
    (f0, s0), (f1, s1) = runs
    assert s0 == s1
    if student:
        assert len({k for st in s0 for k in st}) > 1, "the sessions should exit at different steps here"
    for a, b in zip(f0, f1):
        np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)


def test_engine_warmup_captures_every_bucket_without_touching_sessions(tiny_student_checkpoint):
    sim = WorldSim.load(tiny_student_checkpoint, num_sessions=5, device="cpu", seed=1, graphs=True)
    sim.reset(*prompt(5, seed=3))
    before = (sim.cache.k[:, :5].clone(), sim.cache.length.clone())
    sim.warmup()
    assert sim.net.graphs.captured == [1, 2, 4, 5] and sim._decode_graphs.graphs.captured == [1, 2, 4, 5]
    assert torch.equal(sim.cache.k[:, :5], before[0]) and torch.equal(sim.cache.length, before[1])
    assert not sim.cache.k.requires_grad, "captures run without autograd"
    assert not any(p.requires_grad for p in sim.model.parameters())


def test_guidance_keeps_its_conditional_pass_when_the_bucket_replays_twice(make_tiny_world):
    """A replay's outputs live in the bucket's buffers (the CPU twin keeps them there too), so the
    unconditional pass of guidance would overwrite the conditional one unless it is kept."""
    from sim.sampler import predict_velocity
    model, _ = make_tiny_world()
    cfg = model.cfg
    caches = [model.setup_cache(3) for _ in range(2)]
    for c in caches:
        c.length.fill_(2)
    graphs = FrameGraphs(model, caches[1], pad_row=2, capture=False)
    torch.manual_seed(0)
    x = torch.randn(2, cfg.latent_channels, cfg.latent_h, cfg.latent_w)
    s, a, rows = torch.full((2,), 0.5), torch.randn(2, cfg.action_dim) * 3, torch.tensor([0, 1])
    with torch.no_grad():
        want, _ = predict_velocity(model, x, s, a, caches[0], rows, guidance=4.0)
        plain, _ = predict_velocity(model, x, s, a, caches[0], rows, guidance=1.0)
        got, _ = predict_velocity(graphs, x, s, a, caches[1], rows, guidance=4.0)
    assert not torch.allclose(want, plain, atol=1e-4), "guidance must change v here, or the test shows nothing"
    torch.testing.assert_close(got, want)


def test_a_students_noise_depends_on_its_frame_not_on_steps_spent(tiny_student_checkpoint):
    states = []
    for k in (1, 4):
        sim = WorldSim.load(tiny_student_checkpoint, num_sessions=1, device="cpu", seed=9)
        sim.sampler_steps = k
        sim.reset(*prompt(1, seed=1))
        sim.step(actions(1, 0))
        states.append(sim.noise.state(0))
    assert torch.equal(*states), "one frame takes k_max draws whatever its step count"


def test_no_garbage_collection_frees_cycles_first_and_holds_the_collector_off():
    """Graphs dying in a reference cycle must be freed before a capture, never inside one."""
    import gc
    import weakref

    from sim.graphs import no_garbage_collection

    class Holder:  # stands in for an object owning CUDA graphs, kept alive only by a cycle
        pass

    h = Holder()
    h.me = h
    alive = weakref.ref(h)
    del h
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        with no_garbage_collection():
            assert alive() is None  # collected on entry
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError), no_garbage_collection():
            raise RuntimeError("a failed capture")
        assert gc.isenabled()  # restored after a failure too
        gc.disable()
        with no_garbage_collection():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable() if was_enabled else gc.disable()
