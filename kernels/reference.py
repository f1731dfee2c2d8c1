"""Plain-PyTorch twins of every op in `kernels.ops`: the definition of each function.

They run on any device and are what the CPU uses. The Triton backend must compute the same
function; tests hold the two together on random inputs.

Shapes: B query rows (sessions being computed), Bc cache rows (all sessions), N tokens per
frame, nh heads, hd head dim, S slots in the ring buffer (frames), D model width, F frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + hd/2]) by the angles behind cos/sin [..., hd/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.float(), sin.float()
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).to(x.dtype)


def qk_norm_rope_append(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        q_weight: torch.Tensor, k_weight: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor,
                        rows: torch.Tensor, slot: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise and rotate q and k of one frame; write k and v into each session's slot.

    q, k, v: [B, N, nh, hd] (straight from the qkv projection); q_weight, k_weight: [hd];
    cos, sin: [B, N, hd/2]; k_cache, v_cache: [Bc, nh, S*N, hd]; rows: int64 [B] cache row of
    each query row; slot: int64 [B] ring slot this frame occupies. Returns q: [B, nh, N, hd].
    """
    B, N, nh, hd = q.shape
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # (B, N, 1, hd/2): same angles for every head
    q = apply_rope(rms_norm(q, q_weight, eps), c, s)
    k = apply_rope(rms_norm(k, k_weight, eps), c, s)
    token = slot[:, None] * N + torch.arange(N, device=q.device)  # (B, N) row in the S*N axis
    b_idx = rows[:, None].expand(B, N)
    k_cache[b_idx, :, token] = k.to(k_cache.dtype)  # advanced indexing: (B, N) -> [nh, hd] each
    v_cache[b_idx, :, token] = v.to(v_cache.dtype)
    return q.transpose(1, 2)  # (B, nh, N, hd)


def window_mask(rows: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                num_slots: int, tokens_per_frame: int) -> torch.Tensor:
    """bool [B, S*N]: which cached keys each query row may see (slots start .. start+count-1 mod S)."""
    slots = torch.arange(num_slots, device=start.device)
    offset = (slots[None, :] - start[rows][:, None]) % num_slots  # (B, S) distance past start
    valid = offset < count[rows][:, None]
    return valid.repeat_interleave(tokens_per_frame, dim=1)


def frame_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    rows: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """One frame's queries against its session's window of the ring buffer (itself included).

    q: [B, nh, N, hd]; caches [Bc, nh, S*N, hd]; rows: int64 [B]; start, count: int64 [Bc]
    first slot and number of slots of each session's window. Returns [B, N, nh*hd].
    Keys within the window are unordered for attention, so the slot order needs no masking
    beyond which slots are live.
    """
    B, nh, N, hd = q.shape
    S = k_cache.shape[2] // N
    k = k_cache.index_select(0, rows).to(q.dtype)
    v = v_cache.index_select(0, rows).to(q.dtype)
    mask = window_mask(rows, start, count, S, N)[:, None, None, :]  # (B, 1, 1, S*N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hd)
    return out.transpose(1, 2).reshape(B, N, nh * hd)


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                         eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine, then per-frame x * (1 + scale) + shift.

    x: [B, F*N, D]; shift, scale: [B, F, D] (one row per frame, broadcast over its N tokens).
    """
    B, L, D = x.shape
    Fr = shift.shape[1]
    xn = F.layer_norm(x.float(), (D,), eps=eps).view(B, Fr, L // Fr, D)
    out = xn * (1 + scale.float()[:, :, None]) + shift.float()[:, :, None]
    return out.view(B, L, D).to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * y with a per-frame gate. x, y: [B, F*N, D]; gate: [B, F, D]."""
    B, L, D = x.shape
    Fr = gate.shape[1]
    return (x.view(B, Fr, L // Fr, D) + gate[:, :, None] * y.view(B, Fr, L // Fr, D)).view(B, L, D)


# ---- fused block ops: a linear layer with the adaLN pieces around it ---------------------------
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def modulated_ln_linear(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                        weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False,
                        eps: float = 1e-6) -> torch.Tensor:
    """act(modulated_layer_norm(x) @ weight.T + bias): the norm that feeds a block's MLP.

    x: [B, F*N, D]; shift, scale: [B, F, D]; weight: [O, D]; bias: [O]. Returns [B, F*N, O].
    """
    y = F.linear(modulated_layer_norm(x, shift, scale, eps), weight, bias)
    return gelu_tanh(y) if gelu else y


def linear_gated_residual(x: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * (inp @ weight.T + bias): a block's output projection back into the stream.

    x: [B, F*N, D]; inp: [B, F*N, K]; weight: [D, K]; bias: [D]; gate: [B, F, D].
    """
    return gated_residual(x, F.linear(inp, weight, bias), gate)


def modulated_ln_qkv_append(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                            qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                            q_weight: torch.Tensor, k_weight: torch.Tensor,
                            cos: torch.Tensor, sin: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor,
                            rows: torch.Tensor, slot: torch.Tensor, n_heads: int,
                            eps: float = 1e-6) -> torch.Tensor:
    """The attention half of a block up to the scores: modulated LN -> qkv -> QK norm + RoPE,
    k and v into the cache. x: [B, N, D] (one frame); shift, scale: [B, 1, D];
    qkv_weight: [3D, D] (q, k, v stacked, heads inside each). Returns q: [B, nh, N, hd].
    """
    B, N, D = x.shape
    qkv = F.linear(modulated_layer_norm(x, shift, scale, eps), qkv_weight, qkv_bias)
    q, k, v = qkv.view(B, N, 3, n_heads, D // n_heads).unbind(2)  # (B, N, nh, hd) each
    return qk_norm_rope_append(q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, rows, slot, eps)
