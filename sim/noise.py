"""One Gaussian noise stream per session, on the engine's device, drawable a frame ahead.

    streams = NoiseStreams(num_sessions, device, seed=0)
    z = streams.draw([0, 3], (4, C, h, w))      # float32 [2, 4, C, h, w]: each row from its own stream
    streams.prefetch([0, 3], (4, C, h, w))      # the next frame's draws, made now (while the GPU works)

A session's n-th draw depends on its seed and n only: not on which other sessions shared its
batch, and not on whether the draw was made ahead. `prefetch` exists for the engine's host time:
drawing 64 sessions' noise is 64 small launches (~0.8 ms of host work on an H200 machine), paid
at the start of a frame while the GPU waits. Made ahead, during a step the host would otherwise
spend waiting for the GPU, they cost the frame nothing; `draw` then hands out the tensor drawn
ahead, which holds the very values the stream would give now (the same generator call, made
earlier). A draw ahead of another shape than the one asked for is rewound, never used.

State (`state`, `set_state`, for snapshots) is the generator state as if nothing had been
drawn ahead, so a restored session draws the same values whatever was prefetched.
"""
from __future__ import annotations

from typing import Iterable

import torch


class NoiseStreams:
    def __init__(self, num_sessions: int, device: torch.device, seed: int = 0):
        self.device = device
        self._generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(num_sessions)]
        # row -> (generator state before the draw, the draw): values its stream gives next
        self._ahead: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _rewind(self, row: int) -> None:
        ahead = self._ahead.pop(row, None)
        if ahead is not None:
            self._generators[row].set_state(ahead[0])

    def seed(self, rows: Iterable[int], seeds: Iterable[int]) -> None:
        for r, s in zip(rows, seeds):
            self._ahead.pop(int(r), None)
            self._generators[int(r)].manual_seed(int(s))

    def _fresh(self, row: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self._generators[row], device=self.device)

    def draw(self, rows: Iterable[int], shape: tuple[int, ...]) -> torch.Tensor:
        """The next `shape` draw of each row's stream, stacked: float32 [len(rows), *shape]."""
        out = []
        for r in rows:
            r = int(r)
            ahead = self._ahead.get(r)
            if ahead is not None and tuple(ahead[1].shape) == tuple(shape):
                del self._ahead[r]
                out.append(ahead[1])
            else:
                self._rewind(r)
                out.append(self._fresh(r, shape))
        return torch.stack(out)

    def prefetch(self, rows: Iterable[int], shape: tuple[int, ...]) -> None:
        """Make each row's next `shape` draw now (rows already ahead are left as they are)."""
        for r in rows:
            r = int(r)
            if r not in self._ahead:
                before = self._generators[r].get_state()
                self._ahead[r] = (before, self._fresh(r, shape))

    def state(self, row: int) -> torch.Tensor:
        """The row's generator state, as if nothing had been drawn ahead (a copy)."""
        ahead = self._ahead.get(row)
        return (ahead[0] if ahead is not None else self._generators[row].get_state()).clone()

    def set_state(self, row: int, state: torch.Tensor) -> None:
        self._ahead.pop(row, None)
        self._generators[row].set_state(state)
