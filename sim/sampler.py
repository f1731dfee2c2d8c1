"""Many-step sampling of one frame on the flow, then the cache pass that commits it.

    x_1 = noise;  for each step: x_{s'} = x_s + (s' - s) * v(x_s, s)   (Euler on the flow)
    x0 = x_0;  model(x0 at s = context_noise) writes the frame's K/V;  cache.advance()

Noise levels follow a shifted schedule: s' = shift * s / (1 + (shift - 1) * s) spends more of
the steps at high noise, where the frame's layout is decided.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sim.kv_cache import KVCache
from sim.model import WorldModel


@dataclass
class SamplerConfig:
    steps: int = 16
    shift: float = 3.0
    guidance: float = 1.0  # action guidance scale; 1 = off (one pass per step)
    context_noise: float = 0.0  # noise level the finished frame is committed to the cache at


def shift_levels(s: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * s / (1 + (shift - 1) * s)


def schedule(steps: int, shift: float, device=None) -> torch.Tensor:
    """[steps + 1] noise levels from 1 down to 0."""
    return shift_levels(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def predict_velocity(model: WorldModel, x: torch.Tensor, s: torch.Tensor, actions: torch.Tensor,
                     cache: KVCache, rows: torch.Tensor | None, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v and confidence at one level; with guidance, v_uncond + g * (v_cond - v_uncond)."""
    v, conf = model.forward_frame(x, s, actions, cache, rows)
    if guidance != 1.0:
        v, conf = v.clone(), conf.clone()  # a graph replay's outputs are overwritten by the next replay
        drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        v_u, _ = model.forward_frame(x, s, actions, cache, rows, drop_action=drop)
        v = v_u + guidance * (v - v_u)
    return v, conf


@torch.no_grad()
def sample_frame(model: WorldModel, cache: KVCache, actions: torch.Tensor, noise: torch.Tensor,
                 cfg: SamplerConfig, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise one frame for B sessions from noise [B, C, h, w]; returns the clean latent x0."""
    levels = schedule(cfg.steps, cfg.shift, noise.device)
    x = noise
    for i in range(cfg.steps):
        s = levels[i].expand(x.shape[0])
        v, _ = predict_velocity(model, x, s, actions, cache, rows, cfg.guidance)
        x = x + (levels[i + 1] - levels[i]) * v
    return x


@torch.no_grad()
def commit_frame(model: WorldModel, cache: KVCache, x0: torch.Tensor, actions: torch.Tensor,
                 cfg: SamplerConfig, rows: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None) -> None:
    """The cache pass: run the finished frame at s = context_noise so its K/V land in its slot."""
    s = torch.full((x0.shape[0],), cfg.context_noise, device=x0.device)
    x = x0 if noise is None or cfg.context_noise == 0 else (1 - cfg.context_noise) * x0 + cfg.context_noise * noise
    model.forward_frame(x, s, actions, cache, rows)
    cache.advance(rows)
