"""The KV cache: a ring buffer of frames for every session and every layer, at fixed addresses.

Layout per layer: k, v [Bc, nh, S*N, hd] with S = window + 1 slots of N tokens each. Frame f
of a session lives in slot f % S. The frame being generated uses slot `length % S` as its
scratch space: each denoising step writes its K/V there (that slot holds the frame that just
left the window), and the final pass at t = 0 leaves the clean K/V there for good, after
which `advance()` commits it. So the frame's own keys and the window are one contiguous run
of slots modulo S, and the attention op needs only (start, count) per session.

Positions are not stored: keys are written already rotated (RoPE), with frame angles that
are periodic in the frame index (see `sim.model.rope_frame_period`), so the buffer never
runs out of positions.
"""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, window: int,
                 tokens_per_frame: int, device=None, dtype=torch.float32):
        super().__init__()
        self.n_layers, self.batch, self.window = n_layers, batch, window
        self.num_slots = window + 1
        self.tokens_per_frame = tokens_per_frame
        shape = (n_layers, batch, n_heads, self.num_slots * tokens_per_frame, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        # frames committed per session; the frame being generated is frame number `length`
        self.register_buffer("length", torch.zeros(batch, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("all_rows", torch.arange(batch, device=device), persistent=False)

    # ---- where the current frame goes and what it sees --------------------------------------
    def slot(self) -> torch.Tensor:
        """int64 [Bc]: ring slot of each session's current frame."""
        return self.length % self.num_slots

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, count) int64 [Bc]: the window of slots each session's current frame attends to."""
        count = torch.clamp(self.length, max=self.window) + 1
        start = (self.length - count + 1) % self.num_slots
        return start, count

    # ---- session bookkeeping ----------------------------------------------------------------
    def advance(self, rows: torch.Tensor | None = None) -> None:
        """Commit the current frame (its K/V already sit in its slot) for these sessions."""
        if rows is None:
            self.length += 1
        else:
            self.length.index_add_(0, rows, torch.ones_like(rows))

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Empty these sessions' windows. Stale K/V are left in place: `bounds` hides them."""
        if rows is None:
            self.length.zero_()
        else:
            self.length[rows] = 0

    def snapshot(self, row: int) -> dict[str, torch.Tensor]:
        """A copy of one session's cache state, for branching (restore it into any row)."""
        return {"k": self.k[:, row].clone(), "v": self.v[:, row].clone(), "length": self.length[row].clone()}

    def restore(self, row: int, snap: dict[str, torch.Tensor]) -> None:
        if snap["k"].shape != self.k[:, row].shape:
            raise ValueError(f"snapshot of shape {tuple(snap['k'].shape)} does not fit this cache "
                             f"({tuple(self.k[:, row].shape)})")
        self.k[:, row].copy_(snap["k"])
        self.v[:, row].copy_(snap["v"])
        self.length[row] = snap["length"]
