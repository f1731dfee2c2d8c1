"""The world model: an action-conditioned causal DiT over latent frames, with a KV cache.

A frame is a latent [C, h, w] cut into N = (h/p) * (w/p) tokens of width D. Every frame has
its own conditioning (timestep + action) that modulates every block through adaLN-zero.
Attention: a frame's tokens see each other fully and the previous W frames (block-causal).

Two ways through the same weights:
- `forward`: training over T frames at once. Teacher forcing: the sequence is the T context
  frames (clean or lightly noised) followed by the T noisy frames; noisy frame t sees context
  frames t-W .. t-1 and itself, context frame t sees context frames t-W .. t. So every noisy
  frame is conditioned exactly as at inference, and one clip trains T predictions.
- `forward_frame`: inference, one frame of B sessions against the KV cache (sim.kv_cache).
  Its K/V go to the session's scratch slot; `cache.advance()` commits them.

Positions: RoPE over (frame, y, x). Frame angles are harmonics of a period P (2*pi*k*f/P), so
rotating by f mod P equals rotating by f: the frame index can wrap without ever changing a
score, and a rolling cache never runs out of positions.

Flow matching: x_s = (1 - s) x0 + s e for s in [0, 1]; the network predicts v = e - x0, so
x0 = x_s - s v.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ops
from sim.kv_cache import KVCache


@dataclass
class ModelConfig:
    d_model: int = 256
    n_layers: int = 10
    n_heads: int = 4
    mlp_ratio: float = 4.0
    patch: int = 2
    latent_channels: int = 8
    latent_h: int = 16
    latent_w: int = 16
    window: int = 8  # previous frames each frame attends to
    action_dim: int = 6
    spatial_rope_base: float = 100.0
    confidence_hidden: int = 128

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_h // self.patch) * (self.latent_w // self.patch)

    @property
    def rope_frame_period(self) -> int:
        return 4 * (self.window + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, latent_channels=4, window=4, confidence_hidden=32),
    "small": dict(d_model=256, n_layers=10, n_heads=4, latent_channels=8, window=8),
    "base": dict(d_model=384, n_layers=12, n_heads=6, latent_channels=8, window=16),
    "large": dict(d_model=768, n_layers=16, n_heads=12, latent_channels=8, window=16),
}


# ---- helpers -----------------------------------------------------------------------------------
def timestep_embedding(s: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of noise levels s in [0, 1] (scaled to 0..1000). [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
    args = (s.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate_params(mod: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Split [B, F, n*D] conditioning into n tensors [B, F, D]."""
    return list(mod.chunk(n, dim=-1))


class Rope(nn.Module):
    """Angles for (frame, y, x) RoPE. hd/2 frequency pairs: a quarter for the frame axis,
    the rest split between y and x."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        half = cfg.head_dim // 2
        n_f = max(1, half // 4)
        n_y = (half - n_f) // 2
        n_x = half - n_f - n_y
        gh, gw = cfg.latent_h // cfg.patch, cfg.latent_w // cfg.patch
        # frame axis: harmonics of the period, so angles are exact modulo P
        self.period = cfg.rope_frame_period
        self.register_buffer("frame_freqs", 2 * math.pi * torch.arange(1, n_f + 1).float() / self.period, persistent=False)
        fy = cfg.spatial_rope_base ** (-torch.arange(n_y).float() / max(n_y, 1))
        fx = cfg.spatial_rope_base ** (-torch.arange(n_x).float() / max(n_x, 1))
        ys, xs = torch.meshgrid(torch.arange(gh).float(), torch.arange(gw).float(), indexing="ij")
        spatial = torch.cat([ys.reshape(-1, 1) * fy, xs.reshape(-1, 1) * fx], dim=-1)  # (N, n_y + n_x)
        self.register_buffer("spatial", spatial, persistent=False)

    def forward(self, frame_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_index: int [...]. Returns cos, sin [..., N, hd/2]."""
        f = (frame_index % self.period).float()[..., None] * self.frame_freqs  # (..., n_f)
        N = self.spatial.shape[0]
        f = f[..., None, :].expand(*f.shape[:-1], N, f.shape[-1])
        sp = self.spatial.expand(*f.shape[:-2], *self.spatial.shape)
        ang = torch.cat([f, sp], dim=-1)
        return torch.cos(ang), torch.sin(ang)


def train_attention_mask(T: int, N: int, window: int, device=None) -> torch.Tensor:
    """bool [2T*N, 2T*N] for the teacher-forcing sequence [context frames | noisy frames].

    True = may attend. Context t -> context t-W .. t. Noisy t -> context t-W .. t-1 and noisy t.
    """
    t = torch.arange(T, device=device)
    dt = t[:, None] - t[None, :]  # query frame - key frame
    ctx_ctx = (dt >= 0) & (dt <= window)
    noisy_ctx = (dt >= 1) & (dt <= window)
    noisy_noisy = dt == 0
    no = torch.zeros_like(ctx_ctx)
    frames = torch.cat([torch.cat([ctx_ctx, no], 1), torch.cat([noisy_ctx, noisy_noisy], 1)], 0)  # (2T, 2T)
    return frames.repeat_interleave(N, 0).repeat_interleave(N, 1)


# ---- blocks ------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.q_norm = nn.Parameter(torch.ones(cfg.head_dim))
        self.k_norm = nn.Parameter(torch.ones(cfg.head_dim))

    def forward(self, x, cos, sin, mask):
        """Training: x [B, L, D], cos/sin [L, hd/2], mask bool [L, L]."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)  # (B, L, nh, hd) each
        c, s = cos[:, None], sin[:, None]  # (L, 1, hd/2)
        q = ops.apply_rope(ops.rms_norm(q, self.q_norm), c, s).transpose(1, 2)  # (B, nh, L, hd)
        k = ops.apply_rope(ops.rms_norm(k, self.k_norm), c, s).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """adaLN-zero transformer block: modulated LN -> attention -> gated residual, same for MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        hidden = int(cfg.d_model * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, cfg.d_model))
        self.ada = nn.Linear(cfg.d_model, 6 * cfg.d_model)  # per-frame shift/scale/gate x2

    def _mlp(self, x, shift, scale, gate):
        return ops.gated_residual(x, self.mlp(ops.modulated_layer_norm(x, shift, scale)), gate)

    def forward(self, x, c, cos, sin, mask):
        sa, ca, ga, sm, cm, gm = modulate_params(self.ada(c), 6)  # each (B, F, D)
        x = ops.gated_residual(x, self.attn(ops.modulated_layer_norm(x, sa, ca), cos, sin, mask), ga)
        return self._mlp(x, sm, cm, gm)

    def forward_frame(self, x, mod, cos, sin, k_cache, v_cache, rows, slot, start, count):
        """Inference, the same function as `forward` for one frame: x [B, N, D]; mod: this block's
        six (B, 1, D) modulations; cos/sin [B, N, hd/2]; caches of this layer. Four fused ops
        around the attention (see kernels.fused_linear, kernels.qkv_append)."""
        sa, ca, ga, sm, cm, gm = mod
        attn = self.attn
        q = ops.modulated_ln_qkv_append(x, sa, ca, attn.qkv.weight, attn.qkv.bias, attn.q_norm, attn.k_norm, cos, sin,
                                        k_cache, v_cache, rows, slot, attn.n_heads)  # (B, nh, N, hd)
        attn_out = ops.frame_attention(q, k_cache, v_cache, rows, start, count)  # (B, N, D)
        x = ops.linear_gated_residual(x, attn_out, attn.proj.weight, attn.proj.bias, ga)
        hidden = ops.modulated_ln_linear(x, sm, cm, self.mlp[0].weight, self.mlp[0].bias, gelu=True)  # (B, N, 4D)
        return ops.linear_gated_residual(x, hidden, self.mlp[2].weight, self.mlp[2].bias, gm)


# ---- the model ---------------------------------------------------------------------------------
class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.d_model, cfg.patch, cfg.latent_channels
        self.patch_embed = nn.Linear(p * p * C, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens_per_frame, D))  # learned absolute (y, x)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.action_mlp = nn.Sequential(nn.Linear(cfg.action_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.null_action = nn.Parameter(torch.zeros(D))  # stands in for a dropped action (guidance)
        self.rope = Rope(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_ada = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, p * p * C)
        # confidence head: pooled final hidden state + timestep embedding -> (0, 1)
        self.confidence = nn.Sequential(nn.Linear(2 * D, cfg.confidence_hidden), nn.SiLU(), nn.Linear(cfg.confidence_hidden, 1))
        self.initialize_weights()

    def initialize_weights(self):
        def base(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(base)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.action_mlp[0].weight, std=0.02)
        nn.init.normal_(self.null_action, std=0.02)
        for blk in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(blk.ada.weight)
            nn.init.zeros_(blk.ada.bias)
        for m in (self.final_ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- shared pieces --------------------------------------------------------------------------
    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, N, p*p*C]."""
        B, C, h, w = z.shape
        p = self.cfg.patch
        z = z.view(B, C, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h/p, w/p, p, p, C)
        return z.reshape(B, (h // p) * (w // p), p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*C] -> [B, C, h, w]."""
        cfg, B = self.cfg, x.shape[0]
        p, C = cfg.patch, cfg.latent_channels
        gh, gw = cfg.latent_h // p, cfg.latent_w // p
        x = x.view(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h/p, p, w/p, p)
        return x.reshape(B, C, gh * p, gw * p)

    def condition(self, s: torch.Tensor, actions: torch.Tensor, drop_action: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """s [...], actions [..., A], drop [...] bool -> (c [..., D], time embedding [..., D])."""
        dtype = self.time_mlp[0].weight.dtype  # fp32 in training (autocast casts), bf16 when served in bf16
        t_emb = self.time_mlp(timestep_embedding(s, self.cfg.d_model).to(dtype))
        a_emb = self.action_mlp(actions.to(dtype))
        if drop_action is not None:
            a_emb = torch.where(drop_action[..., None], self.null_action.to(a_emb.dtype), a_emb)
        return F.silu(t_emb + a_emb), t_emb

    def head(self, x: torch.Tensor, c: torch.Tensor, t_emb: torch.Tensor,
             detach_confidence: bool = False, mod: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, F*N, D], c/t_emb [B, F, D] -> (v tokens [B, F*N, p*p*C], confidence [B, F]).

        detach_confidence: the confidence loss trains the head only, not the generator under it.
        mod: the final (shift, scale) when already computed (`frame_modulation`).
        """
        B, L, D = x.shape
        Fr = c.shape[1]
        shift, scale = mod if mod is not None else modulate_params(self.final_ada(c), 2)
        v = ops.modulated_ln_linear(x, shift, scale, self.out.weight, self.out.bias)
        pooled = x.view(B, Fr, L // Fr, D).mean(2)  # (B, F, D)
        feats = torch.cat([pooled, t_emb], -1)
        conf = torch.sigmoid(self.confidence(feats.detach() if detach_confidence else feats).squeeze(-1))
        return v, conf

    # ---- training: T frames at once ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, s: torch.Tensor, actions: torch.Tensor, ctx: torch.Tensor,
                s_ctx: torch.Tensor, drop_action: torch.Tensor | None = None,
                return_confidence: bool = False, detach_confidence: bool = False):
        """x, ctx: [B, T, C, h, w] noisy targets and context; s, s_ctx: [B, T]; actions [B, T, A].

        Returns v [B, T, C, h, w] for the noisy frames (and confidence [B, T] if asked).
        """
        tok, c, t_emb = self.hidden(x, s, actions, ctx, s_ctx, drop_action)
        v, conf = self.head(tok, c, t_emb, detach_confidence)
        v = self.unpatchify(v.reshape(x.shape[0] * x.shape[1], self.cfg.tokens_per_frame, -1)).view_as(x)
        return (v, conf) if return_confidence else v

    def hidden(self, x: torch.Tensor, s: torch.Tensor, actions: torch.Tensor, ctx: torch.Tensor,
               s_ctx: torch.Tensor, drop_action: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` up to the head: the last block's tokens of the noisy frames [B, T*N, D] and their
        conditioning and time embedding [B, T, D]. The distill stage's real/generated classifier
        (sim.distill.FrameDiscriminator) reads the critic's tokens here."""
        B, T = x.shape[:2]
        N, D = self.cfg.tokens_per_frame, self.cfg.d_model
        frames = torch.cat([ctx, x], 1).flatten(0, 1)  # (B*2T, C, h, w)
        tok = self.patch_embed(self.patchify(frames)) + self.pos_embed  # (B*2T, N, D)
        tok = tok.view(B, 2 * T * N, D)
        acts = torch.cat([actions, actions], 1)
        drop = None if drop_action is None else torch.cat([drop_action, drop_action], 1)
        c, t_emb = self.condition(torch.cat([s_ctx, s], 1), acts, drop)  # (B, 2T, D)
        fidx = torch.arange(T, device=x.device).repeat(2)  # both copies of frame t sit at position t
        cos, sin = self.rope(fidx)  # (2T, N, hd/2)
        cos, sin = cos.flatten(0, 1), sin.flatten(0, 1)
        mask = train_attention_mask(T, N, self.cfg.window, x.device)
        for blk in self.blocks:
            tok = blk(tok, c, cos, sin, mask)
        return tok[:, T * N:], c[:, T:], t_emb[:, T:]

    # ---- inference: one frame against the cache -----------------------------------------------
    def setup_cache(self, batch: int, device=None, dtype=torch.float32) -> KVCache:
        cfg = self.cfg
        device = device if device is not None else self.pos_embed.device
        return KVCache(cfg.n_layers, batch, cfg.n_heads, cfg.head_dim, cfg.window, cfg.tokens_per_frame, device, dtype)

    def forward_frame(self, x: torch.Tensor, s: torch.Tensor, actions: torch.Tensor, cache: KVCache,
                      rows: torch.Tensor | None = None, drop_action: torch.Tensor | None = None):
        """One frame for B sessions: x [B, C, h, w] at levels s [B], actions [B, A].

        rows: int64 [B] cache rows of these sessions (default: all rows in order). Writes the
        frame's K/V into each session's scratch slot. Returns (v [B, C, h, w], confidence [B]).
        """
        rows = cache.all_rows if rows is None else rows
        tok = self.patch_embed(self.patchify(x)) + self.pos_embed  # (B, N, D)
        c, t_emb = self.condition(s[:, None], actions[:, None], None if drop_action is None else drop_action[:, None])
        mods, final = self.frame_modulation(c)
        cos, sin = self.rope(cache.length.index_select(0, rows))  # (B, N, hd/2)
        slot = cache.slot().index_select(0, rows)
        start, count = cache.bounds()
        for i, blk in enumerate(self.blocks):
            tok = blk.forward_frame(tok, mods[i], cos, sin, cache.k[i], cache.v[i], rows, slot, start, count)
        v, conf = self.head(tok, c, t_emb, mod=final)
        return self.unpatchify(v), conf[:, 0]

    def frame_modulation(self, c: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Every block's adaLN projection and the head's, as one matmul: c [B, F, D] ->
        ([six (B, F, D) per block], [shift, scale]). The same values as each block's own `ada(c)`;
        one matmul instead of n_layers + 1 at the frame step, where launches are the cost. The
        weights are concatenated on every call (two copies, 8 MB for `small`): that keeps the
        matmul reading the live parameters, which training updates in place and CUDA graphs
        replay by address."""
        linears = [blk.ada for blk in self.blocks] + [self.final_ada]
        weight = torch.cat([m.weight for m in linears])  # (n_layers*6D + 2D, D)
        bias = torch.cat([m.bias for m in linears])
        chunks = modulate_params(F.linear(c, weight, bias), 6 * len(self.blocks) + 2)
        return [chunks[6 * i:6 * i + 6] for i in range(len(self.blocks))], chunks[-2:]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
