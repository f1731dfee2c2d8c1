"""The world model and its KV cache: the cache must compute exactly what training computes."""
import time

import pytest
import torch
import torch.nn.functional as F

from sim.model import ModelConfig, WorldModel, train_attention_mask
from sim.sampler import shift_levels


def randomised(cfg: ModelConfig, seed: int = 0) -> WorldModel:
    """A model whose zero-initialised layers are not zero, so every path carries signal."""
    torch.manual_seed(seed)
    m = WorldModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.15 if p.dim() > 1 else 0.05)
    return m


def inputs(cfg, B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, cfg.latent_channels, cfg.latent_h, cfg.latent_w)
    return dict(x=torch.randn(shape, generator=g), ctx=torch.randn(shape, generator=g),
                s=torch.rand(B, T, generator=g), s_ctx=torch.rand(B, T, generator=g) * 0.1,
                actions=(torch.rand(B, T, cfg.action_dim, generator=g) > 0.5).float())


@pytest.mark.parametrize("T", [3, 9])  # 9 > window + 1: the ring wraps
def test_training_forward_equals_frame_by_frame_inference(T):
    cfg = ModelConfig.from_name("tiny")
    m = randomised(cfg)
    d = inputs(cfg, 2, T)
    with torch.no_grad():
        v, conf = m(d["x"], d["s"], d["actions"], d["ctx"], d["s_ctx"], return_confidence=True)
        cache = m.setup_cache(2)
        for t in range(T):
            vf, cf = m.forward_frame(d["x"][:, t], d["s"][:, t], d["actions"][:, t], cache)
            torch.testing.assert_close(vf, v[:, t], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(cf, conf[:, t], atol=2e-5, rtol=1e-4)
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], cache)  # cache pass
            cache.advance()


def test_attention_mask_is_block_causal_within_window():
    T, N, W = 5, 2, 2
    mask = train_attention_mask(T, N, W).view(2 * T, N, 2 * T, N)[:, 0, :, 0]  # frame level
    ctx, noisy = slice(0, T), slice(T, 2 * T)
    assert mask[ctx, ctx][4].tolist() == [False, False, True, True, True]
    assert mask[noisy, ctx][4].tolist() == [False, False, True, True, False]
    assert mask[noisy, noisy][3].tolist() == [False, False, False, True, False]
    assert not mask[ctx, noisy].any()


def test_ring_buffer_past_wraparound_equals_recomputation_over_last_window():
    # One layer: a cached frame's K/V then depend on that frame alone, so after any number of
    # wraps the cache must hold exactly what a fresh cache fed only the last W frames holds,
    # although the frame positions differ (13.. vs 0..): RoPE sees only their differences.
    cfg = ModelConfig.from_name("tiny", n_layers=1)  # window 4, 5 slots
    m = randomised(cfg, seed=3)
    W, T = cfg.window, 13
    d = inputs(cfg, 1, T + 1, seed=4)
    with torch.no_grad():
        long = m.setup_cache(1)
        for t in range(T):  # wraps the ring twice
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], long)
            long.advance()
        v_long, _ = m.forward_frame(d["x"][:, T], d["s"][:, T], d["actions"][:, T], long)
        fresh = m.setup_cache(1)  # only the last W frames, starting at frame position 0
        for t in range(T - W, T):
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], fresh)
            fresh.advance()
        v_fresh, _ = m.forward_frame(d["x"][:, T], d["s"][:, T], d["actions"][:, T], fresh)
    assert long.length.item() == T and fresh.length.item() == W
    torch.testing.assert_close(v_long, v_fresh, atol=2e-5, rtol=1e-4)


def test_sessions_at_different_fill_levels_match_running_alone():
    cfg = ModelConfig.from_name("tiny")
    m = randomised(cfg, seed=5)
    d = inputs(cfg, 2, 8, seed=6)
    lengths = [2, 7]  # session 0 has 2 frames of context, session 1 has 7 (wrapped)
    with torch.no_grad():
        both = m.setup_cache(2)
        for b, n in enumerate(lengths):
            rows = torch.tensor([b])
            for t in range(n):
                m.forward_frame(d["ctx"][b:b + 1, t], d["s_ctx"][b:b + 1, t], d["actions"][b:b + 1, t], both, rows)
                both.advance(rows)
        v_both, _ = m.forward_frame(d["x"][:, 7], d["s"][:, 7], d["actions"][:, 7], both)
        for b, n in enumerate(lengths):
            alone = m.setup_cache(1)
            for t in range(n):
                m.forward_frame(d["ctx"][b:b + 1, t], d["s_ctx"][b:b + 1, t], d["actions"][b:b + 1, t], alone)
                alone.advance()
            v_alone, _ = m.forward_frame(d["x"][b:b + 1, 7], d["s"][b:b + 1, 7], d["actions"][b:b + 1, 7], alone)
            torch.testing.assert_close(v_both[b:b + 1], v_alone, atol=2e-5, rtol=1e-4)


def test_subset_rows_leave_other_sessions_untouched():
    cfg = ModelConfig.from_name("tiny")
    m = randomised(cfg, seed=7)
    d = inputs(cfg, 3, 2, seed=8)
    with torch.no_grad():
        cache = m.setup_cache(3)
        m.forward_frame(d["ctx"][:, 0], d["s_ctx"][:, 0], d["actions"][:, 0], cache)
        cache.advance()
        k_before = cache.k.clone()
        rows = torch.tensor([2, 0])
        m.forward_frame(d["ctx"][rows, 1], d["s_ctx"][rows, 1], d["actions"][rows, 1], cache, rows)
        cache.advance(rows)
    assert cache.length.tolist() == [2, 1, 2]
    assert torch.equal(cache.k[:, 1], k_before[:, 1])
    assert not torch.equal(cache.k[:, 0], k_before[:, 0])


def test_snapshot_restore_gives_identical_continuation():
    cfg = ModelConfig.from_name("tiny")
    m = randomised(cfg, seed=9)
    d = inputs(cfg, 1, 6, seed=10)
    with torch.no_grad():
        cache = m.setup_cache(2)
        rows = torch.tensor([0])
        for t in range(3):
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], cache, rows)
            cache.advance(rows)
        snap = cache.snapshot(0)
        outs = []
        for t in range(3, 6):
            outs.append(m.forward_frame(d["x"][:, t], d["s"][:, t], d["actions"][:, t], cache, rows)[0])
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], cache, rows)
            cache.advance(rows)
        cache.restore(1, snap)  # branch into another row
        rows = torch.tensor([1])
        for i, t in enumerate(range(3, 6)):
            out = m.forward_frame(d["x"][:, t], d["s"][:, t], d["actions"][:, t], cache, rows)[0]
            assert torch.equal(out, outs[i])
            m.forward_frame(d["ctx"][:, t], d["s_ctx"][:, t], d["actions"][:, t], cache, rows)
            cache.advance(rows)


def test_actions_change_the_prediction():
    cfg = ModelConfig.from_name("tiny")
    m = randomised(cfg, seed=11)
    d = inputs(cfg, 1, 2, seed=12)
    a2 = 1 - d["actions"]
    drop = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        v1 = m(d["x"], d["s"], d["actions"], d["ctx"], d["s_ctx"])
        v2 = m(d["x"], d["s"], a2, d["ctx"], d["s_ctx"])
        n1 = m(d["x"], d["s"], d["actions"], d["ctx"], d["s_ctx"], drop)
        n2 = m(d["x"], d["s"], a2, d["ctx"], d["s_ctx"], drop)
    assert (v1 - v2).abs().max() > 1e-3
    torch.testing.assert_close(n1, n2)  # a dropped action is the null action, whatever was pressed


def test_tiny_overfits_a_short_clip_within_1500_steps():
    """Bounded by steps, not seconds, so a busy machine cannot fail it (about half a minute on 2 cores)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny")
    m = WorldModel(cfg)
    d = inputs(cfg, 1, 4, seed=13)
    z, a = d["ctx"], d["actions"]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    t0, losses = time.time(), []
    def loss_at(seed):
        g = torch.Generator().manual_seed(seed)
        e = torch.randn(z.shape, generator=g)
        s = shift_levels(torch.rand(1, 4, generator=g), 2.0)
        x = (1 - s[..., None, None, None]) * z + s[..., None, None, None] * e
        return F.mse_loss(m(x, s, a, z, torch.zeros(1, 4)), e - z)
    with torch.no_grad():
        first = sum(loss_at(10_000 + i).item() for i in range(8)) / 8
    step = 0
    while step < 1500:
        loss = loss_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                last = sum(loss_at(10_000 + i).item() for i in range(8)) / 8
            if last < first / 5:
                break
    with torch.no_grad():
        last = sum(loss_at(10_000 + i).item() for i in range(8)) / 8
    assert last < first / 5, f"loss fell from {first:.3f} to {last:.3f} in {step} steps, {time.time() - t0:.0f} s"
