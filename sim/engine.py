"""The engine: a trained world as a steppable simulator for B sessions at once.

    sim = WorldSim.load("runs/maze/teacher", num_sessions=4)
    sim.reset(frames, actions)          # prompt: uint8 [B, K, H, W, 3], float32 [B, K, A]
    frames, reports = sim.step(actions)  # uint8 [B, H, W, 3], one report dict per session

Each session is a row of one batch with its own KV-cache row, its own noise stream and its
own frame counter. The engine never needs a scene: it is given context frames.

Two samplers, chosen by the checkpoint: a teacher runs `sampler.steps` Euler steps on the
flow; a distilled student (config "sampler": {"kind": "few-step"}) runs up to k_max
x0-predicting steps, and after each step the allocator (sim.allocator) ends the frame for
the sessions that are done: they leave the batch, the others go on. Then one cache pass
commits every session's frame.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from sim.allocator import AllocatorConfig, StepAllocator
from sim.autoencoder import Autoencoder, frames_to_tensor, tensor_to_frames
from sim.bundle import load_world
from sim.distill import student_levels
from sim.graphs import DecodeGraphs, FrameGraphs
from sim.model import WorldModel
from sim.noise import NoiseStreams
from sim.sampler import SamplerConfig, commit_frame, sample_frame


def pick_device(device: str | None = None) -> torch.device:
    """The device the entry point asked for, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class WorldSim:
    def __init__(self, model: WorldModel, ae: Autoencoder, config: dict | None = None,
                 num_sessions: int = 1, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, sampler: SamplerConfig | None = None, seed: int = 0,
                 allocator: AllocatorConfig | None = None, graphs: bool | None = None, verbose: bool = False):
        self.device = pick_device(str(device) if device is not None else None)
        # bf16 on CUDA; fp32 on the CPU, where bf16 matmuls are several times slower
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.ae = ae.to(self.device, self.dtype).eval().requires_grad_(False)
        self.config = config or {}
        self.num_sessions = int(num_sessions)
        self.sampler = sampler or SamplerConfig()
        # one row more than sessions: the padding row of the graph buckets, owned by no session
        self.cache = self.model.setup_cache(self.num_sessions + 1, self.device, self.dtype)
        cfg = self.model.cfg
        self.latent_shape = (cfg.latent_channels, cfg.latent_h, cfg.latent_w)
        # CUDA graphs per batch-size bucket on CUDA (graphs=True on the CPU runs their padded
        # buffers eagerly, for tests); `self.net` is what the samplers call forward_frame on
        self.use_graphs = self.device.type == "cuda" if graphs is None else bool(graphs)
        if self.use_graphs:
            capture = self.device.type == "cuda"
            self.net = FrameGraphs(self.model, self.cache, pad_row=self.num_sessions, capture=capture)
            self._decode_graphs = DecodeGraphs(self._decode_tensor, self.latent_shape, self.dtype,
                                               self.num_sessions, self.device, capture=capture)
        else:
            self.net = self.model
        self.action_dim = cfg.action_dim
        self.frame_shape = (cfg.latent_h * 8, cfg.latent_w * 8, 3)
        # one noise stream per session, on the engine's device: drawing 64 sessions' noise on the host
        # cost more than their whole step (Box-Muller on the CPU); on the GPU it is 64 small launches,
        # made a frame ahead while the host waits for the GPU anyway (sim.noise)
        self.noise = NoiseStreams(self.num_sessions, self.device, seed)
        self._prompted = np.zeros(self.num_sessions, dtype=bool)
        # recorded after each frame's cache pass, which runs after step() returns (see _step_few)
        self._commit_done = torch.cuda.Event() if self.device.type == "cuda" else None
        few_step = self.config.get("sampler", {})
        self.few_step = few_step.get("kind") == "few-step"
        if self.few_step:
            k_max = int(few_step["k_max"])
            self.levels = student_levels(k_max, float(few_step["shift"]), self.device)
            self._levels_x = self.levels.to(self.dtype)  # the same levels in the latents' dtype, for their arithmetic
            self.cache_last_step = bool(few_step.get("cache_last_step", False))
            self.allocator = StepAllocator(AllocatorConfig(k_max=k_max, fixed_steps=k_max))
            self.set_allocator(allocator or self.allocator.cfg)
        if verbose:
            from kernels import ops  # noqa: PLC0415 (only to report it)
            print(f"dsa-sim engine: {self.device} {str(self.dtype).replace('torch.', '')}, "
                  f"{self.num_sessions} session(s), scene {self.scene!r}, kernels {ops.backend()}, "
                  f"CUDA graphs {'on' if self.use_graphs and self.device.type == 'cuda' else 'off'}")

    def warmup(self) -> float:
        """Capture the CUDA graphs of every batch-size bucket now (Triton autotuning included), so no
        step of a running session pays for a capture; a server calls this at start. No session's
        state is touched (captures run on the padding row). Returns the seconds it took."""
        t0 = time.perf_counter()
        if self.use_graphs:
            self.net.capture_all()
            self._decode_graphs.capture_all()
        return time.perf_counter() - t0

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, num_sessions: int = 1, device=None, **kwargs) -> "WorldSim":
        model, ae, config = load_world(Path(checkpoint), device="cpu")
        return cls(model, ae, config, num_sessions=num_sessions, device=device, **kwargs)

    # ---- facts -------------------------------------------------------------------------------
    @property
    def scene(self) -> str | None:
        return self.config.get("scene")

    @property
    def actions(self) -> list[str]:
        return list(self.config.get("actions", []))

    @property
    def context_frames(self) -> int:
        """Frames a prompt should hold: the whole window the model attends to."""
        return self.model.cfg.window

    @property
    def sampler_steps(self) -> int:
        """Steps per frame: the teacher's Euler steps, or a student's fixed k (its k_max when adaptive)."""
        if self.few_step:
            cfg = self.allocator.cfg
            return cfg.fixed_steps if cfg.mode == "fixed" else cfg.k_max
        return self.sampler.steps

    @sampler_steps.setter
    def sampler_steps(self, steps: int) -> None:
        """A fixed number of steps per frame (for a student: allocator mode "fixed")."""
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        if self.few_step:
            k_max = self.levels.numel() - 1
            if steps > k_max:
                raise ValueError(f"this student takes at most {k_max} steps per frame, got {steps}")
            self.set_allocator(AllocatorConfig(mode="fixed", k_max=k_max, fixed_steps=int(steps)))
        else:
            self.sampler.steps = int(steps)

    def use_adaptive_steps(self, tau: float | None = None, tau_steps=None) -> None:
        """A student's confidence head ends each frame after 1 to k_max steps, at confidence >= tau
        (default: the allocator's current tau), or >= tau_steps[k-1] after step k when given
        (`sim.allocator.calibrate_tau_steps`)."""
        if not self.few_step:
            raise ValueError("this checkpoint is a many-step teacher: adaptive steps need a distilled student")
        cfg = self.allocator.cfg
        self.set_allocator(AllocatorConfig(mode="adaptive", k_min=1, k_max=cfg.k_max, tau=cfg.tau if tau is None else tau,
                                           tau_steps=tuple(tau_steps or ())))

    def set_allocator(self, cfg: AllocatorConfig) -> None:
        """Change how a student spends steps (fixed / adaptive / budget); keeps the measured costs."""
        if not self.few_step:
            raise ValueError("this checkpoint is a many-step teacher: step allocation needs a distilled student")
        if cfg.k_max > self.levels.numel() - 1:
            raise ValueError(f"allocator k_max {cfg.k_max} exceeds the student's k_max {self.levels.numel() - 1}")
        self.allocator = StepAllocator(cfg, self.allocator.cost)

    # ---- input checks ------------------------------------------------------------------------
    def _actions(self, actions, n: int) -> torch.Tensor:
        a = np.asarray(actions, dtype=np.float32) if not isinstance(actions, torch.Tensor) else actions.float().cpu().numpy()
        if a.shape != (n, self.action_dim):
            raise ValueError(f"actions must have shape ({n}, {self.action_dim}) ({self.actions or 'key vector'}), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("actions must be finite (got NaN or inf)")
        return torch.from_numpy(a).to(self.device, self.dtype)

    def _frames(self, frames, lead: tuple[int, ...]) -> np.ndarray:
        f = np.asarray(frames)
        if f.dtype != np.uint8 or f.shape != (*lead, *self.frame_shape):
            raise ValueError(f"frames must be uint8 {(*lead, *self.frame_shape)}, got {f.dtype} {f.shape}")
        return f

    def _ids(self, sessions) -> np.ndarray:
        """The session rows asked for, on the host (checked)."""
        ids = np.arange(self.num_sessions) if sessions is None else np.asarray(sessions, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_sessions):
            raise IndexError(f"sessions must lie in [0, {self.num_sessions}), got {ids.tolist()}")
        return ids

    def _rows(self, sessions) -> torch.Tensor:
        return torch.as_tensor(self._ids(sessions), device=self.device)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> latents [B, C, h, w] in the engine's dtype."""
        return self.ae.encode(frames_to_tensor(frames, self.device).to(self.dtype))

    def _decode_tensor(self, z: torch.Tensor) -> torch.Tensor:
        return tensor_to_frames(self.ae.decode(z))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """latents [B, C, h, w] -> uint8 frames [B, H, W, 3] on the host (the copy synchronises)."""
        frames = self._decode_graphs(z) if self.use_graphs else self._decode_tensor(z)
        return frames.to("cpu", copy=True).numpy()  # a copy even on the CPU: graph outputs are reused buffers

    def _noise_shape(self, draws: int | None = None) -> tuple[int, ...]:
        return self.latent_shape if draws is None else (draws, *self.latent_shape)

    def _noise(self, ids: np.ndarray, draws: int | None = None) -> torch.Tensor:
        """Gaussian latents from each session's own stream: [B, C, h, w], or [B, draws, C, h, w]."""
        return self.noise.draw(ids.tolist(), self._noise_shape(draws)).to(self.dtype)

    # ---- sessions ----------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, frames, actions, sessions=None, seeds=None) -> None:
        """Prompt sessions with K real frames [B, K, H, W, 3] and the actions that produced them [B, K, A].

        sessions: which rows (default all). seeds: per-session noise seeds (default unchanged).
        """
        rows = self._rows(sessions)
        B = rows.numel()
        f = np.asarray(frames)
        if f.ndim != 5 or f.shape[0] != B or f.shape[1] < 1:
            raise ValueError(f"prompt frames must be uint8 [{B}, K, H, W, 3] with K >= 1, got {f.dtype} {f.shape}")
        K = f.shape[1]
        f = self._frames(f, (B, K))
        a = self._actions(np.asarray(actions, dtype=np.float32).reshape(B * K, -1), B * K).view(B, K, -1)
        if seeds is not None:
            self.noise.seed(rows.tolist(), np.broadcast_to(np.asarray(seeds), (B,)).tolist())
        self.cache.reset(rows)
        z = self.encode(f.reshape(B * K, *self.frame_shape)).view(B, K, *self.latent_shape)
        for k in range(K):
            commit_frame(self.net, self.cache, z[:, k], a[:, k], self.sampler, rows)
        self._prompted[rows.cpu().numpy()] = True

    @torch.no_grad()
    def step(self, actions, observe=None, sessions=None) -> tuple[np.ndarray, list[dict]]:
        """Generate the next frame of each session under `actions` [B, A].

        observe: real next frames uint8 [B, H, W, 3]; when given, they (not the generated
        frames) become the context for what follows (teacher-forced evaluation).
        Returns the generated frames uint8 [B, H, W, 3] and one report per session.
        """
        ids = self._ids(sessions)  # checked on the host: no device round trip before the frame starts
        B = ids.size
        if not self._prompted[ids].all():
            raise RuntimeError("prompt every session with reset(frames, actions) before step()")
        a = self._actions(actions, B)
        rows = torch.as_tensor(ids, device=self.device)
        if self.few_step:
            return self._step_few(a, rows, observe, ids)
        t0 = time.perf_counter()
        x0 = sample_frame(self.net, self.cache, a, self._noise(ids), self.sampler, rows)
        self.noise.prefetch(ids.tolist(), self._noise_shape())  # the next frame's, while the GPU samples
        context = x0 if observe is None else self.encode(self._frames(observe, (B,)))
        frames = self.decode(x0)  # the copy to host waits for the sampler and the decoder, not the cache pass
        latency_ms = (time.perf_counter() - t0) * 1e3
        commit_frame(self.net, self.cache, context, a, self.sampler, rows)  # runs while the caller uses the frame
        passes = self.sampler.steps * (2 if self.sampler.guidance != 1.0 else 1)
        reports = [{"steps": self.sampler.steps, "passes": passes + 1, "latency_ms": latency_ms, "confidence": float("nan")}
                   for _ in range(B)]
        return frames, reports

    @torch.no_grad()
    def _step_few(self, a: torch.Tensor, rows: torch.Tensor, observe, ids: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """Adaptive few-step sampling: sessions leave the batch when the allocator says they are done.

        While every session is still in, the step runs on the whole batch with no gathers or
        scatters (the usual case for one player); the arithmetic is the same either way, so a
        session's frame does not depend on which path its batch took. The host waits for a
        step's confidences only when the allocator needs them to decide: after the last step
        (k_max, or a fixed k) the next launches go out at once, and every confidence is read
        back with the frames."""
        alloc, levels, lx = self.allocator, self.levels, self._levels_x
        B, k_max = rows.numel(), alloc.cfg.k_max
        alloc.begin_frame()
        t0 = time.perf_counter()
        # the last frame's cache pass may still be on the GPU, ahead of this frame's first step: that
        # step's time then is not a step's cost, and the cost model does not learn it
        commit_pending = self._commit_done is not None and not self._commit_done.query()
        # every frame takes k_max draws from each session's stream, whatever it spends: a session's
        # noise then depends on its seed and frame number only, not on how many steps earlier
        # frames took (so settings compared on the same seeds see the same noise)
        noise = self._noise(ids, k_max)  # (B, k_max, C, h, w)
        x = noise[:, 0].clone()
        x0 = torch.empty_like(x)
        conf_all = torch.zeros(B, k_max, device=self.device)  # step k's confidences in column k-1
        steps = np.zeros(B, dtype=np.int64)
        active = np.arange(B)
        for k in range(1, k_max + 1):
            if not alloc.can_start(k, len(active), B):
                break
            t_step = time.perf_counter()
            full = len(active) == B
            idx = None if full else torch.as_tensor(active, device=self.device)
            s = levels[k - 1].expand(len(active))
            if full:
                v, conf = self.net.forward_frame(x, s, a, self.cache, rows)
                torch.addcmul(x, v, lx[k - 1], value=-1.0, out=x0)  # x0 = x - s v
                conf_all[:, k - 1] = conf
            else:
                v, conf = self.net.forward_frame(x[idx], s, a[idx], self.cache, rows[idx])
                x0[idx] = torch.addcmul(x[idx], v, lx[k - 1], value=-1.0)
                conf_all[idx, k - 1] = conf.to(conf_all.dtype)  # an indexed put does not cast; a copy does
            if k == 1:  # the next frame's noise, drawn while the GPU runs this step (sim.noise)
                self.noise.prefetch(ids.tolist(), self._noise_shape(k_max))
            steps[active] = k
            decided = alloc.decided(k)
            if decided is None:  # the allocator reads this step's confidences: wait for them
                conf_np = conf.float().cpu().numpy()  # the copy synchronises: the step time is real
                if not (k == 1 and commit_pending):
                    alloc.cost.record_step(len(active), (time.perf_counter() - t_step) * 1e3)
                still = active[~alloc.stop(k, conf_np, B)]
            else:
                still = active[:0] if decided else active
            if not len(still):
                break
            # the next step's input: x0 noised back to level k, from this step's own draw
            if len(still) == B:
                torch.lerp(x0, noise[:, k], lx[k], out=x)
            else:
                idx = torch.as_tensor(still, device=self.device)
                x[idx] = torch.lerp(x0[idx], noise[idx, k], lx[k])
            active = still
        t_finish = time.perf_counter()
        # decode first: the copy to host waits for the last step and the decoder only, and the cache
        # pass launched after it runs on the GPU while the caller sends the frames on (the next
        # frame's first step queues behind it). Its time is in no frame's latency but the next
        # frame's first step, when that starts before it is done.
        frames = self.decode(x0)
        conf_host = conf_all.cpu().numpy()
        alloc.cost.record_finish(B, (time.perf_counter() - t_finish) * 1e3)
        alloc.end_frame(steps)
        latency_ms = (time.perf_counter() - t0) * 1e3
        if observe is not None:
            commit_frame(self.net, self.cache, self.encode(self._frames(observe, (B,))), a, self.sampler, rows)
        elif self.cache_last_step:
            self.cache.advance(rows)  # each session's slot already holds its exit step's K/V
        else:
            commit_frame(self.net, self.cache, x0, a, self.sampler, rows)
        if self._commit_done is not None:
            self._commit_done.record()
        passes = steps + (0 if self.cache_last_step and observe is None else 1)
        reports = []
        for i in range(B):
            trace = conf_host[i, :steps[i]].tolist()
            reports.append({"steps": int(steps[i]), "passes": int(passes[i]), "latency_ms": latency_ms,
                            "confidence": trace[-1], "confidence_trace": trace})
        return frames, reports

    def snapshot(self, session: int) -> dict:
        """A copy of one session's state (cache, noise stream), to branch from with `restore`."""
        return {"cache": self.cache.snapshot(session), "rng": self.noise.state(session),
                "prompted": bool(self._prompted[session])}

    def restore(self, session: int, snap: dict) -> None:
        self.cache.restore(session, snap["cache"])
        self.noise.set_state(session, snap["rng"])
        self._prompted[session] = snap["prompted"]
