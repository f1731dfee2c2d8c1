"""CUDA graphs for the frame step: each batch-size bucket captured once, then replayed.

At the batch sizes of a game (1 to 64 sessions) a denoising step is a few dozen small
kernels, and launching them one by one from Python costs more than running them. A graph
launches them all at once. What a graph needs, and this module provides:

- static inputs: each bucket b (1, 2, 4, ... up to the number of sessions) owns fixed
  buffers; a call with n <= b rows copies its inputs into the first n and pads the rest;
- no host values inside: positions, ring slots and windows are read from the cache's device
  tensors (`KVCache.length`) by the captured kernels, so a replay sees the cache as it is now;
- a harmless place for padding: the cache has one spare row (`pad_row`) that no session
  owns; padded rows read and write only it, and their outputs are dropped;
- warm-up before capture, on a side stream, with every row on the spare row: lazy
  initialisation and Triton autotuning run there, never inside a capture, and no session's
  cache is touched (the tuner waits for the device before it times: `kernels.autotune`).

    graphs = FrameGraphs(model, cache, pad_row=num_sessions)
    v, conf = graphs.forward_frame(x, s, actions, cache, rows)   # model.forward_frame's signature

Outputs are views into the bucket's static buffers: valid until that bucket is replayed
again (a caller that runs the same bucket twice before using the first result, as guidance
does, clones it). Each bucket has its own memory pool, so replaying one never overwrites
another's.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Callable, Sequence

import torch

from sim.kv_cache import KVCache
from sim.model import WorldModel


def bucket_sizes(max_batch: int) -> list[int]:
    """Powers of two below max_batch, then max_batch itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


@contextlib.contextmanager
def no_garbage_collection():
    """Collect now, then no cyclic garbage collection until the block ends.

    A CUDA graph that dies in a reference cycle is freed whenever the collector next runs; if
    that is inside a capture (ours, or the one Triton's autotuner makes to time a config), its
    destructor's CUDA calls are not permitted there and invalidate the capture
    (cudaErrorStreamCaptureInvalidated). Graphs, pools and autotuning must not meet a collection.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class BucketedGraphs:
    """fn(*inputs) -> tensor outputs, captured once per bucket of the leading (batch) dimension.

    inputs: per input (shape without the batch dim, dtype, padding value). A call takes the
    smallest bucket >= its batch; padded rows get the padding value (None: left as they were).
    capture=False runs fn eagerly on the same static, padded buffers: the CPU twin (tests).
    """

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[tuple[tuple, torch.dtype, object]],
                 max_batch: int, device: torch.device, warmup: int = 3, capture: bool | None = None):
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.fn, self.specs, self.device, self.warmup = fn, list(inputs), device, warmup
        self.buckets = bucket_sizes(max_batch)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]]] = {}

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} exceeds the largest graph bucket {self.buckets[-1]}")

    @torch.no_grad()  # a capture with autograd on would record the kernels' differentiable twins
    def _capture(self, b: int) -> None:
        static = []
        for shape, dtype, pad in self.specs:
            t = torch.zeros((b, *shape), dtype=dtype, device=self.device)
            if pad is not None:
                t.fill_(pad)
            static.append(t)
        if not self.capture:  # the CPU twin still warms up on the padding, as a capture does
            self.fn(*static)
            self._graphs[b] = (None, static, [])
            return
        with no_garbage_collection():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):  # Triton autotuning runs here, in graphs of its own
                    self.fn(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # a pool of its own: outputs live until this bucket replays; thread-local, so CUDA calls of
            # other threads (a DataLoader's pin-memory thread) cannot break the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = list(self.fn(*static))
        self._graphs[b] = (graph, static, outputs)

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        n = inputs[0].shape[0]
        b = self.bucket(n)
        if b not in self._graphs:
            self._capture(b)
        graph, static, outputs = self._graphs[b]
        for dst, src, (_, _, pad) in zip(static, inputs, self.specs):
            dst[:n].copy_(src)
            if n < b and pad is not None:
                dst[n:].fill_(pad)
        if graph is None:  # the CPU twin: fn run eagerly, its results kept in the bucket's buffers as a replay's are
            fresh = self.fn(*static)
            if not outputs:
                outputs.extend(o.clone() for o in fresh)
            for dst, src in zip(outputs, fresh):
                dst.copy_(src)
        else:
            graph.replay()
        return [o[:n] for o in outputs]

    @property
    def captured(self) -> list[int]:
        return sorted(self._graphs)

    def capture_all(self) -> None:
        """Capture every bucket now (warm-up and autotuning included), not on first use."""
        for b in self.buckets:
            if b not in self._graphs:
                self._capture(b)


class FrameGraphs:
    """`WorldModel.forward_frame` on one cache, replayed from CUDA graphs. Drop-in for the model
    wherever the sampler and engine call `forward_frame` (same signature and results)."""

    def __init__(self, model: WorldModel, cache: KVCache, pad_row: int, max_batch: int | None = None,
                 capture: bool | None = None):
        if not 0 <= pad_row < cache.batch:
            raise ValueError(f"pad_row {pad_row} is not a row of the cache (it holds {cache.batch})")
        self.model, self.cache, self.pad_row = model, cache, pad_row
        cfg = model.cfg
        dtype, device = model.pos_embed.dtype, model.pos_embed.device
        self.latent_shape = (cfg.latent_channels, cfg.latent_h, cfg.latent_w)
        specs = [(self.latent_shape, dtype, None), ((), torch.float32, None), ((cfg.action_dim,), dtype, None),
                 ((), torch.bool, False), ((), torch.long, pad_row)]
        self.graphs = BucketedGraphs(self._step, specs, max_batch or cache.batch - 1, device, capture=capture)
        self._keep_actions = torch.zeros(self.graphs.buckets[-1], dtype=torch.bool, device=device)  # drop none

    def _step(self, x, s, actions, drop, rows):
        return self.model.forward_frame(x, s, actions, self.cache, rows, drop_action=drop)

    @property
    def cfg(self):
        return self.model.cfg

    def capture_all(self) -> None:
        self.graphs.capture_all()

    def forward_frame(self, x: torch.Tensor, s: torch.Tensor, actions: torch.Tensor, cache: KVCache,
                      rows: torch.Tensor | None = None, drop_action: torch.Tensor | None = None):
        if cache is not self.cache:
            raise ValueError("these graphs were captured on another cache")
        n = x.shape[0]
        rows = self.cache.all_rows[:n] if rows is None else rows
        drop = self._keep_actions[:n] if drop_action is None else drop_action
        v, conf = self.graphs(x, s.expand(n), actions, drop, rows)
        return v, conf


class DecodeGraphs:
    """The autoencoder's decoder to uint8 frames, replayed from CUDA graphs per bucket."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], latent_shape: tuple, dtype: torch.dtype,
                 max_batch: int, device: torch.device, capture: bool | None = None):
        self.graphs = BucketedGraphs(lambda z: [decode(z)], [(latent_shape, dtype, None)], max_batch, device,
                                     capture=capture)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.graphs(z)[0]

    def capture_all(self) -> None:
        self.graphs.capture_all()
