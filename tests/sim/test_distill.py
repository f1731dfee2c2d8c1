"""Self-Forcing rollouts: through the served copy of the student (RolloutNet) they equal rollouts
through the model itself, and the teacher-forcing pass that carries the gradient reproduces them;
the regression pull moves the student's frames toward the real ones; the GAN term's classifier
learns to tell real frames from generated ones, and its loss moves only the student."""
import copy

import torch

from sim.distill import (FrameDiscriminator, RolloutNet, clip_inputs, discriminator_loss, rollout, student_levels,
                         student_losses, with_prompt)


def clip(model, B=3, K=2, G=3, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, K, cfg.latent_channels, cfg.latent_h, cfg.latent_w, generator=g)
    a = (torch.rand(B, K + G, cfg.action_dim, generator=g) > 0.5).float()
    return z, a, G


def test_rollout_through_the_served_copy_equals_the_model(make_tiny_world):
    model, _ = make_tiny_world()
    z, a, G = clip(model)
    levels = student_levels(4, 3.0)
    exit_step = torch.tensor([1, 4, 2])
    torch.manual_seed(5)
    want = rollout(model, z, a, G, levels, exit_step, conf_scale=0.05)
    rn = RolloutNet(model, batch=3, graphs=True)  # on the CPU: the graphs' padded buffers, run eagerly
    for _ in range(2):  # a second rollout on the same cache starts from an empty window again
        torch.manual_seed(5)
        got = rollout(rn.net, z, a, G, levels, exit_step, conf_scale=0.05, cache=rn.cache)
        for g, w in zip((got.x_in, got.x0, got.conf_target), (want.x_in, want.x0, want.conf_target)):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_sync_brings_the_live_weights(make_tiny_world):
    model, _ = make_tiny_world()
    z, a, G = clip(model)
    levels, exit_step = student_levels(2, 3.0), torch.tensor([2, 2, 1])
    rn = RolloutNet(model, batch=3)
    with torch.no_grad():
        model.out.bias.add_(0.5)  # an optimizer step
    torch.manual_seed(1)
    stale = rollout(rn.net, z, a, G, levels, exit_step, 0.05, cache=rn.cache)
    rn.sync(model)
    torch.manual_seed(1)
    fresh = rollout(rn.net, z, a, G, levels, exit_step, 0.05, cache=rn.cache)
    torch.manual_seed(1)
    want = rollout(model, z, a, G, levels, exit_step, 0.05)
    torch.testing.assert_close(fresh.x0, want.x0, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stale.x0, want.x0, atol=1e-3)


def test_teacher_forcing_pass_reproduces_the_rollouts_exit_step(make_tiny_world):
    """The gradient pass: one forward over [prompt | generated] gives each frame's exit-step x0."""
    model, _ = make_tiny_world()
    z, a, G = clip(model)
    K = z.shape[1]
    levels, exit_step = student_levels(4, 3.0), torch.tensor([3, 1, 4])
    for cache_last_step in (False, True):
        torch.manual_seed(2)
        ro = rollout(model, z, a, G, levels, exit_step, 0.05, cache_last_step=cache_last_step)
        ctx, s_ctx = clip_inputs(z, ro, cache_last_step)
        x, s = with_prompt(z, ro.x_in, ro.s_exit[:, None].expand(3, G))
        with torch.no_grad():
            v = model(x, s, a, ctx, s_ctx)[:, K:]
        x0 = ro.x_in - ro.s_exit[:, None, None, None, None] * v
        torch.testing.assert_close(x0, ro.x0, atol=1e-4, rtol=1e-4)


def test_the_regression_pull_is_the_exit_frames_distance_to_the_real_ones_and_closes_it(make_tiny_world):
    model, _ = make_tiny_world()
    student = copy.deepcopy(model).requires_grad_(True)
    z, a, G = clip(model)
    z_real = torch.randn(3, G, *z.shape[2:], generator=torch.Generator().manual_seed(9))
    levels, exit_step = student_levels(3, 3.0), torch.tensor([1, 3, 2])

    def regress_after_rollout():
        torch.manual_seed(3)
        ro = rollout(student, z, a, G, levels, exit_step, 0.05)
        *_, regress, metrics = student_losses(student, ro, model, model, z, a, False, z_real=z_real)
        return ro, regress, metrics

    ro, regress, metrics = regress_after_rollout()
    # the gradient pass reproduces the rollout's committed frames, so the loss is their MSE to the real ones
    torch.testing.assert_close(regress, (ro.x0 - z_real).pow(2).mean(), atol=1e-4, rtol=1e-4)
    assert metrics["regress"] == regress.item()
    regress.backward()
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    opt.step()
    _, after, _ = regress_after_rollout()
    assert after.item() < regress.item() - 1e-4
    *_, none, metrics = student_losses(student, ro, model, model, z, a, False)
    assert none is None and "regress" not in metrics


def test_the_regression_pull_on_the_first_frames_only_leaves_the_later_ones_to_dmd(make_tiny_world):
    model, _ = make_tiny_world()
    student = copy.deepcopy(model).requires_grad_(True)
    z, a, G = clip(model)
    assert G >= 2
    z_real = torch.randn(3, G, *z.shape[2:], generator=torch.Generator().manual_seed(9))
    torch.manual_seed(3)
    ro = rollout(student, z, a, G, student_levels(3, 3.0), torch.tensor([1, 3, 2]), 0.05)
    *_, first, _ = student_losses(student, ro, model, model, z, a, False, z_real=z_real, regress_frames=1)
    torch.testing.assert_close(first, (ro.x0[:, :1] - z_real[:, :1]).pow(2).mean(), atol=1e-4, rtol=1e-4)
    # the later frames' real frames do not enter the pull: moving them changes nothing
    moved = z_real.clone()
    moved[:, 1:] += 5.0
    *_, same, _ = student_losses(student, ro, model, model, z, a, False, z_real=moved, regress_frames=1)
    torch.testing.assert_close(same, first)
    *_, every, _ = student_losses(student, ro, model, model, z, a, False, z_real=z_real, regress_frames=0)
    torch.testing.assert_close(every, (ro.x0 - z_real).pow(2).mean(), atol=1e-4, rtol=1e-4)


def test_hidden_is_forward_up_to_the_head(make_tiny_world):
    model, _ = make_tiny_world()
    z, a, G = clip(model, K=3, G=3)
    x, s = torch.randn_like(z), torch.rand(3, 3)
    with torch.no_grad():
        tok, c, t_emb = model.hidden(x, s, a[:, :3], z, torch.zeros(3, 3))
        v, _ = model.head(tok, c, t_emb)
        want = model(x, s, a[:, :3], z, torch.zeros(3, 3))
    N = model.cfg.tokens_per_frame
    assert tok.shape == (3, 3 * N, model.cfg.d_model)
    torch.testing.assert_close(model.unpatchify(v.reshape(9, N, -1)).view_as(x), want)


def test_the_classifier_learns_to_tell_real_frames_from_generated_ones(make_tiny_world):
    """Generated frames that differ from the real ones in colour only (a shift of one latent
    channel, the failure of the tenth session's students): the classifier, trained alone on the
    frozen critic's features, separates them."""
    model, _ = make_tiny_world()
    critic = copy.deepcopy(model).requires_grad_(False)
    z, a, G = clip(model)
    gen = torch.Generator().manual_seed(4)
    z_real = torch.randn(3, G, *z.shape[2:], generator=gen)
    fake = z_real.clone()
    fake[:, :, 0] += 1.5
    disc = FrameDiscriminator(model.cfg.d_model, hidden=32)
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    ctx = torch.cat([z, fake], 1)
    s_ctx = torch.zeros(3, ctx.shape[1])
    torch.manual_seed(0)
    first = None
    for _ in range(60):
        loss, m = discriminator_loss(critic, disc, fake, z_real, z, a, ctx, s_ctx)
        first = first or m
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["d_loss"] < 0.5 * first["d_loss"]
    assert m["d_acc"] > 0.9 and m["d_real"] > 0 > m["d_fake"]
    assert all(p.grad is None for p in critic.parameters())  # the critic was frozen here


def test_the_gan_term_moves_the_student_only(make_tiny_world):
    model, _ = make_tiny_world()
    student = copy.deepcopy(model).requires_grad_(True)
    critic = copy.deepcopy(model).requires_grad_(True)
    disc = FrameDiscriminator(model.cfg.d_model, hidden=32)
    z, a, G = clip(model)
    torch.manual_seed(3)
    ro = rollout(student, z, a, G, student_levels(2, 3.0), torch.tensor([1, 2, 2]), 0.05)
    losses = student_losses(student, ro, model, critic, z, a, False, disc=disc)
    assert losses.gan is not None and torch.isfinite(losses.gan) and losses.metrics["gan"] == losses.gan.item()
    losses.gan.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in (*critic.parameters(), *disc.parameters()))
    # the critic's own training is untouched: its weights are trainable again afterwards
    assert all(p.requires_grad for p in (*critic.parameters(), *disc.parameters()))
    assert student_losses(student, ro, model, critic, z, a, False).gan is None
