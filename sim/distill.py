"""DSA distillation: a few-step student with a confidence head, by Self-Forcing and DMD.

One generator update:
1. Self-Forcing rollout (no gradient): prompt the student's KV cache with K real frames, then
   let it generate the next frames one after another exactly as at inference: from noise,
   step k predicts x0_k = x - s_k v and re-noises it to s_{k+1}; the frame committed to the
   cache is x0 at the rollout's exit step k* (random per sample in 1..k_max), so every step
   count learns to give a usable frame. All k_max steps are run to know x0_{k_max}.
2. The exit step again, with gradient, for every generated frame at once: the model's
   teacher-forcing forward over [context | noisy] equals frame-by-frame inference through
   the cache (tests hold this), so one pass over the clip, with the generated frames as
   detached context, gives each frame's exit-step output with its gradient and nothing else.
3. DMD: noise the student's x0 to a random level t; the frozen teacher (real score) and an
   online critic (fake score, trained by flow matching on the student's own frames) each
   predict x0; the student moves along (fake - real), normalised per frame (DMD2).
4. Confidence: the head at step k* learns exp(-mse(x0_k*, x0_kmax) / conf_scale), a target
   that needs no extra data: 1 when more steps would change nothing. Or (conf_target "real")
   exp(-mse(x0_k*, real) / conf_scale) on the first generated frames, whose context is still
   near the real clip's: how good this frame is, the per-frame error the eval ranks, so a frame
   the head calls hard gets more steps. The head reads detached features either way, so it can
   also learn alone on a finished student's rollouts (`confidence_loss`, `--head-only`).
5. Optional regression (`regress_weight` > 0): the exit step's x0 is also pulled, by MSE, toward
   the real frame the clip holds at that position. The rollout followed the clip's own actions, so
   that frame is what a perfect student would have made from its own (imperfect) context: the
   student learns to correct its drift. DMD alone matches the teacher's many-step samples, which
   score lower in PSNR than its few-step mean-like frames; the pull trades some of DMD's
   sharpness for closeness to the real game. `regress_frames` > 0 pulls only the first frames of
   each rollout: far from the prompt the real future is uncertain, the pull's optimum there is the
   mean of the futures (a blur), and a blur fed back as context compounds over a long rollout.
6. Optional GAN term (`gan_weight` > 0, DMD2): a small classifier on the critic's last hidden
   tokens (`FrameDiscriminator`) tells noised real frames, in their real clip, from noised
   generated ones, in their rollout; it trains with the critic, and the student gets its
   non-saturating loss. DMD's reverse KL seeks the teacher's commonest modes (the tenth session's
   students lost the maze's rarer wall colours to grey stone over long rollouts); the classifier
   sees real frames, so it rewards what the real game shows and the student stopped drawing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sim.graphs import FrameGraphs
from sim.kv_cache import KVCache
from sim.model import WorldModel
from sim.sampler import shift_levels


def student_levels(k_max: int, shift: float, device=None) -> torch.Tensor:
    """[k_max + 1] noise levels: step k (1-based) runs at levels[k-1]; levels[k_max] = 0."""
    return shift_levels(torch.linspace(1.0, 0.0, k_max + 1, device=device), shift)


@dataclass
class Rollout:
    x_in: torch.Tensor  # [B, G, C, h, w] the exit step's input, per generated frame
    s_exit: torch.Tensor  # [B] noise level of the exit step
    x0: torch.Tensor  # [B, G, C, h, w] the committed frames (x0 at the exit step)
    conf_target: torch.Tensor  # [B, G] closeness of x0_k* to x0_kmax, in (0, 1]


class RolloutNet:
    """The student as it is served, for Self-Forcing rollouts: a copy of its weights in the serving
    dtype (bf16 on CUDA), run by the serving kernels (kernels.ops on its default backend) with the
    frame step captured in CUDA graphs (sim.graphs) on a persistent cache. `sync` copies the live
    weights in before a rollout; the copy keeps its addresses, so the graphs stay valid. The rollout
    is then what a player would see, at the engine's speed instead of eager PyTorch's.

    rollouts of `batch` sessions: `rollout(rn.net, ..., cache=rn.cache)`.
    """

    def __init__(self, student: WorldModel, batch: int, dtype: torch.dtype | None = None,
                 graphs: bool | None = None):
        device = student.pos_embed.device
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.model = copy.deepcopy(student).to(device, self.dtype).eval().requires_grad_(False)
        self.cache = self.model.setup_cache(batch + 1, device, self.dtype)  # + the graphs' padding row
        use_graphs = device.type == "cuda" if graphs is None else graphs
        self.net = (FrameGraphs(self.model, self.cache, pad_row=batch, capture=device.type == "cuda")
                    if use_graphs else self.model)

    @torch.no_grad()
    def sync(self, student: WorldModel) -> None:
        for dst, src in zip(self.model.parameters(), student.parameters()):
            dst.copy_(src)


@torch.no_grad()
def rollout(student, z_prompt: torch.Tensor, actions: torch.Tensor, gen_frames: int,
            levels: torch.Tensor, exit_step: torch.Tensor, conf_scale: float,
            cache_last_step: bool = False, cache: KVCache | None = None) -> Rollout:
    """z_prompt [B, K, C, h, w] real latents; actions [B, K + G, A]; exit_step int [B] in 1..k_max.

    student: anything with `forward_frame` (a WorldModel, or a RolloutNet's `net` with its `cache`,
    whose rows 0..B-1 are used and emptied first). Outputs are in the cache's dtype.
    """
    B, K = z_prompt.shape[:2]
    k_max = levels.numel() - 1
    if cache is None:
        cache = student.setup_cache(B, z_prompt.device, z_prompt.dtype)
    cache.reset()
    z_prompt, actions = z_prompt.to(cache.k.dtype), actions.to(cache.k.dtype)
    zero = torch.zeros(B, device=z_prompt.device)
    rows = torch.arange(B, device=z_prompt.device)  # the cache may hold a padding row beyond them
    for t in range(K):
        student.forward_frame(z_prompt[:, t], zero, actions[:, t], cache, rows)
        cache.advance(rows)
    sel = (exit_step - 1)[:, None, None, None]  # which step each sample commits
    x_in, x0s, targets = [], [], []
    for g in range(gen_frames):
        a = actions[:, K + g]
        x = torch.randn_like(z_prompt[:, 0])
        steps_x0, steps_in = [], []
        for k in range(k_max):
            s = levels[k].expand(B)
            v, _ = student.forward_frame(x, s, a, cache, rows)
            x0 = x - levels[k] * v
            steps_in.append(x)
            steps_x0.append(x0)
            x = (1 - levels[k + 1]) * x0 + levels[k + 1] * torch.randn_like(x0)
        all_x0, all_in = torch.stack(steps_x0, 1), torch.stack(steps_in, 1)  # (B, k_max, C, h, w)
        idx = sel[:, None].expand(-1, 1, *all_x0.shape[2:])
        x0_exit, in_exit = all_x0.gather(1, idx)[:, 0], all_in.gather(1, idx)[:, 0]
        mse = (x0_exit - all_x0[:, -1]).pow(2).flatten(1).mean(1)
        targets.append(torch.exp(-mse / conf_scale))
        # commit the exit frame: its clean K/V (cache pass), or the exit step's own K/V
        if cache_last_step:
            student.forward_frame(in_exit, levels[exit_step - 1], a, cache, rows)
        else:
            student.forward_frame(x0_exit, zero, a, cache, rows)
        cache.advance(rows)
        x_in.append(in_exit)
        x0s.append(x0_exit)
    return Rollout(torch.stack(x_in, 1), levels[exit_step - 1], torch.stack(x0s, 1), torch.stack(targets, 1))


def clip_inputs(z_prompt: torch.Tensor, ro: Rollout, cache_last_step: bool):
    """The teacher-forcing sequence for the whole clip [prompt | generated]:
    (context [B, T, ...], context levels [B, T]) with T = K + G, generated context detached."""
    B, K = z_prompt.shape[:2]
    G = ro.x0.shape[1]
    if cache_last_step:
        ctx_gen, s_gen = ro.x_in, ro.s_exit[:, None].expand(B, G)
    else:
        ctx_gen, s_gen = ro.x0, torch.zeros(B, G, device=ro.x0.device)
    ctx = torch.cat([z_prompt, ctx_gen], 1)
    s_ctx = torch.cat([torch.zeros(B, K, device=ctx.device), s_gen], 1)
    return ctx, s_ctx


def with_prompt(z_prompt: torch.Tensor, x_gen: torch.Tensor, s_gen: torch.Tensor):
    """Noisy inputs for the whole clip: prompt frames are placeholders whose outputs are unused."""
    B, K = z_prompt.shape[:2]
    x = torch.cat([z_prompt, x_gen], 1)
    s = torch.cat([torch.zeros(B, K, device=x.device), s_gen], 1)
    return x, s


def dmd_target(x0_student: torch.Tensor, teacher, critic, z_prompt, actions, ctx, s_ctx,
               guidance: float = 1.0, t_range=(0.02, 0.98)) -> torch.Tensor:
    """The point each generated x0 [B, G, ...] should move to: x0 - w * (x0_fake - x0_real)."""
    B, G = x0_student.shape[:2]
    K = z_prompt.shape[1]
    with torch.no_grad():
        t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(B, G, device=x0_student.device)
        tt = t[..., None, None, None]
        x_t = (1 - tt) * x0_student.detach() + tt * torch.randn_like(x0_student)
        x, s = with_prompt(z_prompt, x_t, t)
        v_real = teacher(x, s, actions, ctx, s_ctx)[:, K:]
        if guidance != 1.0:
            drop = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
            v_uncond = teacher(x, s, actions, ctx, s_ctx, drop)[:, K:]
            v_real = v_uncond + guidance * (v_real - v_uncond)
        v_fake = critic(x, s, actions, ctx, s_ctx)[:, K:]
        x0_real, x0_fake = x_t - tt * v_real.float(), x_t - tt * v_fake.float()
        # DMD2: normalise per frame by how far the student is from the real score's x0
        w = 1.0 / (x0_student.detach() - x0_real).abs().flatten(2).mean(-1).clamp_min(1e-4)
        return (x0_student.detach() - w[..., None, None, None] * (x0_fake - x0_real)).detach()


def critic_loss(critic, x0_gen: torch.Tensor, z_prompt, actions, ctx, s_ctx) -> torch.Tensor:
    """Flow matching on the student's own frames: the critic learns the student's distribution."""
    B, G = x0_gen.shape[:2]
    K = z_prompt.shape[1]
    t = torch.rand(B, G, device=x0_gen.device)
    tt = t[..., None, None, None]
    e = torch.randn_like(x0_gen)
    x, s = with_prompt(z_prompt, (1 - tt) * x0_gen + tt * e, t)
    v = critic(x, s, actions, ctx, s_ctx)[:, K:]
    return F.mse_loss(v.float(), e - x0_gen)


class StudentLosses(NamedTuple):
    dmd: torch.Tensor
    confidence: torch.Tensor
    gan: torch.Tensor | None  # the GAN term, when a classifier is given
    regress: torch.Tensor | None  # the pull toward the real frames, when they are given
    metrics: dict


class FrameDiscriminator(nn.Module):
    """DMD2's classifier head: a logit per frame, real (> 0) or generated, from the critic's last
    hidden tokens of that frame (`WorldModel.hidden`), one logit per token averaged over the frame."""

    def __init__(self, d_model: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """tokens [B, frames * N, D] -> logits [B, frames]."""
        B = tokens.shape[0]
        return self.net(tokens).view(B, frames, -1).mean(-1).float()


def frame_logits(critic: WorldModel, disc: FrameDiscriminator, x0: torch.Tensor, z_prompt, actions, ctx, s_ctx,
                 t_range=(0.02, 0.98)) -> torch.Tensor:
    """The classifier's logits [B, G] for frames x0 [B, G, ...] noised to a random level each,
    in the clip ctx (prompt + the frames they follow); gradient flows to x0 if it has any."""
    B, G = x0.shape[:2]
    K = z_prompt.shape[1]
    t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(B, G, device=x0.device)
    tt = t[..., None, None, None]
    x, s = with_prompt(z_prompt, (1 - tt) * x0 + tt * torch.randn_like(x0), t)
    tok, _, _ = critic.hidden(x, s, actions, ctx, s_ctx)
    return disc(tok, x.shape[1])[:, K:]


def discriminator_loss(critic: WorldModel, disc: FrameDiscriminator, x0_gen: torch.Tensor, z_real: torch.Tensor,
                       z_prompt, actions, ctx, s_ctx) -> tuple[torch.Tensor, dict]:
    """The classifier's loss (logistic, both ways): generated frames in their rollout's clip
    (ctx, s_ctx) against the real frames z_real [B, G, ...] in the real clip."""
    B, G = x0_gen.shape[:2]
    real_ctx = torch.cat([z_prompt, z_real], 1)
    fake = frame_logits(critic, disc, x0_gen.detach(), z_prompt, actions, ctx, s_ctx)
    real = frame_logits(critic, disc, z_real, z_prompt, actions, real_ctx, torch.zeros_like(s_ctx))
    loss = F.softplus(fake).mean() + F.softplus(-real).mean()
    return loss, {"d_loss": loss.item(), "d_real": real.mean().item(), "d_fake": fake.mean().item(),
                  "d_acc": 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean()).item()}


def generator_gan_loss(critic: WorldModel, disc: FrameDiscriminator, x0: torch.Tensor, z_prompt, actions,
                       ctx, s_ctx) -> torch.Tensor:
    """The student's non-saturating GAN loss on its exit-step frames x0 [B, G, ...] (with gradient).
    The critic and classifier are only read: their weights get no gradient from it."""
    frozen = [p for p in (*critic.parameters(), *disc.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return F.softplus(-frame_logits(critic, disc, x0, z_prompt, actions, ctx, s_ctx)).mean()
    finally:
        for p in frozen:
            p.requires_grad_(True)


def confidence_bce(conf: torch.Tensor, target: torch.Tensor, frames: int = 0) -> torch.Tensor:
    """Binary cross-entropy of confidences [B, G] against soft targets [B, G] in [0, 1], over the
    first `frames` generated frames (0: all), written out so that it is autocast-safe."""
    n = frames or conf.shape[1]
    c, t = conf[:, :n].float().clamp(1e-6, 1 - 1e-6), target[:, :n].float()
    return -(t * c.log() + (1 - t) * (1 - c).log()).mean()


def confidence_loss(student, ro: Rollout, z_prompt, actions, cache_last_step: bool,
                    frames: int = 0) -> tuple[torch.Tensor, dict]:
    """The confidence head's loss alone (`--head-only`): the exit step's forward for every generated
    frame, as in `student_losses`, with no teacher, critic or generator gradient."""
    K = z_prompt.shape[1]
    ctx, s_ctx = clip_inputs(z_prompt, ro, cache_last_step)
    B, G = ro.x0.shape[:2]
    x, s = with_prompt(z_prompt, ro.x_in, ro.s_exit[:, None].expand(B, G))
    _, conf = student(x, s, actions, ctx, s_ctx, return_confidence=True, detach_confidence=True)
    loss = confidence_bce(conf[:, K:], ro.conf_target, frames)
    n = frames or G
    return loss, {"conf_loss": loss.item(), "conf_target": ro.conf_target[:, :n].mean().item(),
                  "conf": conf[:, K:K + n].float().mean().item()}


def student_losses(student, ro: Rollout, teacher, critic, z_prompt, actions, cache_last_step: bool,
                   guidance: float = 1.0, z_real: torch.Tensor | None = None, regress_frames: int = 0,
                   disc: FrameDiscriminator | None = None, conf_frames: int = 0) -> StudentLosses:
    """The student's losses for one rollout, with gradient through the exit step. z_real
    [B, G, C, h, w]: the clip's real latents at the generated positions; the regression loss is
    their MSE to the exit step's x0 over the first `regress_frames` generated frames (0: all G;
    None without z_real). With `disc`, the GAN term (the critic given must then be the bare
    WorldModel, whose `hidden` the classifier reads). The confidence head learns on the first
    `conf_frames` generated frames (0: all)."""
    K = z_prompt.shape[1]
    ctx, s_ctx = clip_inputs(z_prompt, ro, cache_last_step)
    B, G = ro.x0.shape[:2]
    x, s = with_prompt(z_prompt, ro.x_in, ro.s_exit[:, None].expand(B, G))
    v, conf = student(x, s, actions, ctx, s_ctx, return_confidence=True, detach_confidence=True)
    x0 = ro.x_in - ro.s_exit[:, None, None, None, None] * v[:, K:].float()
    target = dmd_target(x0, teacher, critic, z_prompt, actions, ctx, s_ctx, guidance)
    dmd = 0.5 * F.mse_loss(x0, target)
    conf_loss = confidence_bce(conf[:, K:], ro.conf_target, conf_frames)
    n = regress_frames or G
    regress = F.mse_loss(x0[:, :n], z_real[:, :n].float()) if z_real is not None else None
    metrics = {"dmd": dmd.item(), "conf_loss": conf_loss.item(),
               "conf_target": ro.conf_target.mean().item(), "conf": conf[:, K:].mean().item(),
               "rollout_gap": (x0.detach() - ro.x0).abs().mean().item()}
    if regress is not None:
        metrics["regress"] = regress.item()
    gan = None
    if disc is not None:
        gan = generator_gan_loss(critic, disc, x0, z_prompt, actions, ctx, s_ctx)
        metrics["gan"] = gan.item()
    return StudentLosses(dmd, conf_loss, gan, regress, metrics)
