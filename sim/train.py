"""Training stages: `python -m sim.train --stage ae|teacher|distill|export [--preset small] [--scene maze] [--minutes 10]`.

    ae       the autoencoder, on frames streamed from the scene
    teacher  the action-conditioned causal DiT, many-step, by teacher forcing (flow matching)
    distill  DSA: the few-step student and its confidence head, by Self-Forcing + DMD (sim.distill)
    export   the shipped bf16 checkpoint in the package (sim.export): <out>/distill/checkpoint,
             else <out>/teacher/checkpoint, unless --checkpoint; other flags go to sim.export

Each stage writes into <out>/<stage>/:
    checkpoint/     the usable result (EMA weights for the teacher), a world checkpoint
    state/          everything needed to resume (weights, EMA, optimizer), same format
    metrics.jsonl   one JSON object per logged step
A stage resumes from state/ when it exists; `--minutes` is the time box of this invocation.
Runs on CPU (tiny preset) and on CUDA with bf16 autocast; under `torchrun` it uses
DistributedDataParallel (rank 0 logs and saves).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import scenes
from sim.autoencoder import AE_PRESETS, Autoencoder, AutoencoderConfig, ae_loss, frames_to_tensor
from sim.bundle import load_autoencoder, load_world, prefixed, save_world, unprefixed
from sim.checkpoint import checkpoint_id, load_checkpoint, save_checkpoint
from sim.data import ClipConfig, scene_loader
from sim.distill import (FrameDiscriminator, Rollout, RolloutNet, clip_inputs, confidence_loss, critic_loss,
                         discriminator_loss, rollout, student_levels, student_losses)
from sim.metrics import psnr
from sim.model import ModelConfig, WorldModel, count_params
from sim.sampler import shift_levels

STAGES = ("ae", "teacher", "distill", "export")
CONF_TARGETS = ("kmax", "real")  # what the confidence head learns (TrainConfig.conf_target)
DEFAULT_LR = {"ae": 1e-3, "teacher": 3e-4, "distill": 2e-5}


@dataclass
class TrainConfig:
    stage: str = "teacher"  # ae, teacher or distill
    scene: str = "maze"  # the scene whose world is learned
    preset: str = "small"  # model preset; the autoencoder preset of the same name (base/large -> base)
    out: str = "runs/maze"  # run folder; each stage writes <out>/<stage>/
    minutes: float = 10.0  # time box of this invocation
    max_steps: int = 0  # stop after this many total steps (0 = only the time box)
    batch_size: int = 32  # clips per step (per rank)
    clip_frames: int = 12  # frames per training clip (teacher, distill)
    width: int = 128  # frame width in pixels (multiple of 8)
    height: int = 128  # frame height in pixels (multiple of 8)
    lr: float = 0.0  # learning rate; 0 = the stage default (ae 1e-3, teacher 3e-4, distill 2e-5)
    warmup_steps: int = 300  # linear learning-rate warm-up
    lr_final: float = 1.0  # learning rate at the end of this time box, as a share of lr (cosine from 1); 1 = constant
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # gradient norm clip
    ema: float = 0.999  # EMA decay of the weights the checkpoint carries
    workers: int = 4  # data worker processes (per rank)
    seed: int = 0  # seeds the model init and the data stream
    compile: bool = False  # torch.compile the model (CUDA)
    log_every: int = 25  # steps between metrics.jsonl rows
    save_every_minutes: float = 5.0  # minutes between checkpoints (and one at the end)
    ae: str = ""  # teacher: autoencoder checkpoint (default <out>/ae/checkpoint)
    init: str = ""  # start from this checkpoint's weights with a fresh optimizer (when there is no state to resume)
    # teacher: flow matching
    level_shift: float = 2.0  # training noise levels: shift(sigmoid(N(0, 1)))
    context_noise: float = 0.1  # context frames get a level in [0, this] ...
    context_noise_prob: float = 0.5  # ... with this probability, else stay clean
    action_dropout: float = 0.1  # per frame: the null action, so guidance on actions is possible
    replay_clips: int = 8192  # encoded clips kept on the device, sampled each step
    refill_every: int = 2  # pull one fresh batch from the scene every this many steps
    # distill (DSA): clips are prompt_frames real frames + (clip_frames - prompt_frames) generated
    teacher: str = ""  # teacher checkpoint (default <out>/teacher/checkpoint)
    k_max: int = 4  # most denoising steps a frame may take
    student_shift: float = 3.0  # the student's step levels: shift(linspace(1, 0, k_max + 1))
    prompt_frames: int = 4  # real frames that prompt each rollout
    critic_steps: int = 2  # critic (fake score) updates per student update
    dmd_guidance: float = 1.0  # action guidance on the teacher's score; 1 = off
    conf_scale: float = 0.05  # latent MSE at which the confidence target is 1/e
    conf_target: str = "kmax"  # the confidence head's target: closeness of the exit step's x0 to the k_max x0 (kmax) or to the clip's real frame (real)
    conf_frames: int = 1  # conf_target real: the head learns on the first N generated frames of each rollout (their context is near the real one)
    head_only: bool = False  # distill: train the confidence head alone on the student's rollouts (the generator, critic and DMD untouched; --init a student)
    conf_weight: float = 1.0  # weight of the confidence loss beside DMD
    regress_weight: float = 0.0  # weight of an MSE pull of each generated frame toward the clip's real frame; 0 = DMD only
    regress_frames: int = 0  # the pull only on the first N generated frames of each rollout (DMD alone on the rest); 0 = all
    cache_last_step: bool = False  # commit the exit step's K/V instead of a separate t=0 cache pass
    gan_weight: float = 0.0  # weight of the student's GAN loss against a real/generated classifier on the critic's features (DMD2); 0 = off
    gan_critic_weight: float = 0.01  # weight of that classifier's loss in each critic update


# ---- distributed helpers ---------------------------------------------------------------------------
def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun: one process per GPU (or gloo on CPU)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ---- state that survives a restart ----------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # short memory early on
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.float(), 1 - d)
            else:
                self.shadow[k].copy_(v)


def lineage(path: str, config: dict) -> dict:
    """What an --init checkpoint was: its path and id, and its own training record (which nests its own --init)."""
    return {"checkpoint": str(path), "id": config.get("id") or checkpoint_id(path), "training": config.get("training")}


def lr_at(step: int, cfg: TrainConfig, lr: float, progress: float = 0.0) -> float:
    """Linear warm-up over the first steps, then a cosine from lr to lr * lr_final over the time box.

    `progress` is the share of this invocation's time box that has passed (the stages are time-boxed,
    so the anneal follows the clock, not a step count).
    """
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    p = min(max(progress, 0.0), 1.0)
    anneal = cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr * warm * anneal


# ---- data on the device ---------------------------------------------------------------------------
class LatentReplay:
    """A ring of encoded clips on the device: training samples from it, the scene refills it.

    Decouples the step rate from the rate the scene renders at: each rendered clip is seen a
    few times, at different noise levels, instead of the GPU waiting for the CPU.
    """

    def __init__(self, capacity: int, T: int, latent_shape: tuple, action_dim: int, device, dtype=torch.bfloat16):
        self.z = torch.empty((capacity, T, *latent_shape), device=device, dtype=dtype)
        self.a = torch.empty((capacity, T, action_dim), device=device)
        self.capacity, self.size, self.head = capacity, 0, 0

    def add(self, z: torch.Tensor, a: torch.Tensor) -> None:
        n = z.shape[0]
        idx = (self.head + torch.arange(n, device=z.device)) % self.capacity
        self.z[idx], self.a[idx] = z.to(self.z.dtype), a.to(self.a.dtype)
        self.head = (self.head + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,), device=self.z.device)
        return self.z[idx].float(), self.a[idx]


@torch.no_grad()
def encode_clips(ae: Autoencoder, frames: torch.Tensor, device, chunk: int = 256) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> latents [B, T, C, h, w] (fp32)."""
    B, T = frames.shape[:2]
    flat = frames.reshape(B * T, *frames.shape[2:])
    out = []
    for i in range(0, flat.shape[0], chunk):
        x = frames_to_tensor(flat[i:i + chunk], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(ae.encode(x).float())
    z = torch.cat(out)
    return z.view(B, T, *z.shape[1:])


def heldout_frames(scene: str, n: int, width: int, height: int) -> np.ndarray:
    """n frames from held-out worlds (seeds >= 10**9) under the moving tour, for quick checks."""
    from sim.data import HELD_OUT_SEED_BASE
    envs = min(n, 8)
    game = scenes.make_batch(scene, envs, width=width, height=height)
    game.reset(HELD_OUT_SEED_BASE + np.arange(envs))
    policy = scenes.make_policy(game, "explore", seed=HELD_OUT_SEED_BASE)
    frames = []
    while sum(len(f) for f in frames) < n:
        for _ in range(7):  # frames a few ticks apart
            game.step(policy(game))
        frames.append(game.render())
    return np.concatenate(frames)[:n]


# ---- the loop ------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        if cfg.stage not in STAGES or cfg.stage == "export":
            raise SystemExit(f"unknown training stage {cfg.stage!r}; choose one of {STAGES[:-1]}")
        if cfg.scene not in scenes.names():
            raise SystemExit(f"unknown scene {cfg.scene!r}; choose one of {scenes.names()}")
        self.cfg = cfg
        self.rollout_net: RolloutNet | None = None  # distill: the student as served, made at the first rollout
        self.rank, self.world, self.device = setup_distributed()
        torch.manual_seed(cfg.seed + self.rank)
        self.dir = Path(cfg.out) / cfg.stage
        self.main = self.rank == 0
        self.amp = self.device.type == "cuda"
        game_cls = scenes.game_class(cfg.scene)
        self.action_names = list(game_cls.ACTIONS)
        ae_preset = cfg.preset if cfg.preset in AE_PRESETS else "base"
        # the training record of the checkpoint this run started from (--init), kept in this run's record
        # so a warm-started checkpoint still says everything that went into it
        self.init_record: dict | None = None
        self.teacher_record: dict | None = None  # distill: the teacher's path, id and training record
        if cfg.stage == "ae":
            if cfg.init:
                self.ae, init_config = load_autoencoder(cfg.init, device=self.device)
                self.init_record = lineage(cfg.init, init_config)
            else:
                self.ae = Autoencoder(AutoencoderConfig.from_name(ae_preset)).to(self.device)
            self.module = self.ae
            clip_frames = 2
        elif cfg.stage == "distill":
            teacher_dir = Path(cfg.teacher or Path(cfg.out) / "teacher" / "checkpoint")
            self.teacher, self.ae, teacher_config = load_world(teacher_dir, device=self.device)
            self.teacher.requires_grad_(False)
            self.ae.requires_grad_(False)
            if teacher_config.get("sampler", {}).get("kind") == "few-step":
                raise SystemExit(f"{teacher_dir} is already a distilled student; point --teacher at a teacher checkpoint")
            self.teacher_record = lineage(str(teacher_dir), teacher_config)
            self.model = copy.deepcopy(self.teacher).requires_grad_(True)
            if cfg.init:
                init_model, _, init_config = load_world(cfg.init)
                self.model.load_state_dict(init_model.state_dict())
                self.init_record = lineage(cfg.init, init_config)
            if cfg.head_only:  # the generator stays as it is: only its confidence head learns
                self.model.requires_grad_(False).confidence.requires_grad_(True)
            self.critic = copy.deepcopy(self.teacher).requires_grad_(True)
            self.critic.confidence.requires_grad_(False)
            self.module = self.model
            self.levels = student_levels(cfg.k_max, cfg.student_shift, self.device)
            clip_frames = cfg.clip_frames
            if not 1 <= cfg.prompt_frames < clip_frames:
                raise SystemExit(f"need 1 <= --prompt-frames < --clip-frames, got {cfg.prompt_frames} and {clip_frames}")
        else:
            ae_dir = Path(cfg.ae or cfg.init or Path(cfg.out) / "ae" / "checkpoint")
            self.ae, _ = load_autoencoder(ae_dir, device=self.device)
            self.ae.requires_grad_(False)
            ae_cfg = self.ae.config
            self.model = WorldModel(ModelConfig.from_name(
                cfg.preset, action_dim=len(self.action_names), latent_channels=ae_cfg.latent_channels,
                latent_h=cfg.height // 8, latent_w=cfg.width // 8)).to(self.device)
            if cfg.init:
                init_model, _, init_config = load_world(cfg.init)
                if init_model.cfg != self.model.cfg:
                    raise SystemExit(f"--init {cfg.init} holds a {init_model.cfg} model, not the {cfg.preset} preset asked for")
                self.model.load_state_dict(init_model.state_dict())
                self.init_record = lineage(cfg.init, init_config)
            self.model.confidence.requires_grad_(False)  # trained by the distill stage
            self.module = self.model
            clip_frames = cfg.clip_frames
        self.lr = cfg.lr or DEFAULT_LR[cfg.stage]
        self.opt = torch.optim.AdamW([p for p in self.module.parameters() if p.requires_grad], lr=self.lr,
                                     betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        # modules trained beside the main one, saved and resumed with it: name -> (module, optimizer)
        self.extra: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
        self.disc: FrameDiscriminator | None = None  # distill with the GAN term: the real/generated classifier
        if cfg.stage == "distill":
            self.extra["critic"] = (self.critic, torch.optim.AdamW(
                [p for p in self.critic.parameters() if p.requires_grad], lr=self.lr, betas=(0.9, 0.99),
                weight_decay=cfg.weight_decay))
            if cfg.gan_weight > 0:
                if self.world > 1:
                    raise SystemExit("--gan-weight runs on one process only (its classifier reads the critic "
                                     "outside DistributedDataParallel); drop it or train on one GPU")
                self.disc = FrameDiscriminator(self.critic.cfg.d_model).to(self.device)
                self.extra["disc"] = (self.disc, torch.optim.AdamW(
                    self.disc.parameters(), lr=self.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay))
        self.ema = EMA(self.module, cfg.ema)
        self.step = 0
        self.frames_seen = 0
        self.minutes_done = 0.0
        self._resume()
        self.net = self.module
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        if cfg.stage == "distill":
            critic = self.critic
            if self.world > 1:
                critic = torch.nn.parallel.DistributedDataParallel(critic, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.critic_net = torch.compile(critic) if cfg.compile else critic
        data_cfg = ClipConfig(scene=cfg.scene, clip_frames=clip_frames, batch_size=cfg.batch_size,
                              width=cfg.width, height=cfg.height, seed=cfg.seed + 1000 * self.step)
        self.loader = iter(scene_loader(data_cfg, num_workers=cfg.workers, rank=self.rank, world_size=self.world,
                                        # distill captures CUDA graphs (its rollouts, Triton's autotuning)
                                        # mid-run: no pin-memory thread making CUDA calls beside them
                                        pin_memory=self.device.type == "cuda" and cfg.stage != "distill"))
        if self.main:
            n = count_params(self.module)
            devices = f"{self.device}" + (f" x{self.world}" if self.world > 1 else "")
            resume = f", resuming at step {self.step}" if self.step else ""
            print(f"dsa-sim train: stage {cfg.stage}, scene {cfg.scene}, preset {cfg.preset}, {n / 1e6:.2f}M params, "
                  f"device {devices}, {'bf16 autocast' if self.amp else 'fp32'}, lr {self.lr:g}{resume}")

    # ---- checkpoints ---------------------------------------------------------------------------
    def _resume(self) -> None:
        state = self.dir / "state"
        if not (state / "manifest.json").exists():
            return
        config, tensors = load_checkpoint(state, device=self.device)
        self.module.load_state_dict(unprefixed("net", tensors))
        self.ema.shadow = {k: v.float() for k, v in unprefixed("ema", tensors).items()}
        load_optimizer_tensors(self.opt, {k: v for k, v in tensors.items() if k.startswith("opt.")})
        for name, (module, opt) in self.extra.items():
            # "<name>.opt.*" are its optimizer's, saved under the same prefix
            module.load_state_dict({k: v for k, v in unprefixed(name, tensors).items() if not k.startswith("opt.")})
            load_optimizer_tensors(opt, {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.opt.")})
        self.step, self.frames_seen = config["step"], config["frames_seen"]
        self.minutes_done = config.get("minutes", 0.0)
        self.init_record = (config.get("record") or {}).get("init", self.init_record)

    def _record(self, minutes: float) -> dict:
        record = {"stage": self.cfg.stage, "steps": self.step, "frames": self.frames_seen,
                  "minutes": round(minutes, 2), "batch_size": self.cfg.batch_size * self.world,
                  "world_size": self.world, "config": asdict(self.cfg)}
        if self.init_record is not None:
            record["init"] = self.init_record
        if self.teacher_record is not None:
            record["teacher"] = self.teacher_record
        return record

    def save(self, minutes: float, metrics: dict | None = None) -> None:
        if not self.main:
            return
        record = self._record(minutes)
        tensors = {**prefixed("net", self.module), **{f"ema.{k}": v for k, v in self.ema.shadow.items()},
                   **optimizer_tensors(self.opt)}
        for name, (module, opt) in self.extra.items():
            tensors.update(prefixed(name, module))
            tensors.update({f"{name}.{k}": v for k, v in optimizer_tensors(opt).items()})
        save_checkpoint(self.dir / "state", {"step": self.step, "frames_seen": self.frames_seen, "minutes": minutes,
                                              "record": record}, tensors)
        # the usable checkpoint carries the EMA weights
        live = {k: v.clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict({k: v.to(live[k].dtype) for k, v in self.ema.shadow.items()})
        base = {"scene": self.cfg.scene, "actions": self.action_names, "resolution": [self.cfg.height, self.cfg.width],
                "training": record, "metrics": metrics or {}}
        if self.cfg.stage == "distill":
            base["sampler"] = {"kind": "few-step", "k_max": self.cfg.k_max, "shift": self.cfg.student_shift,
                               "cache_last_step": self.cfg.cache_last_step}
        if self.cfg.stage == "ae":
            save_world(self.dir / "checkpoint", base, self.ae)
        else:
            save_world(self.dir / "checkpoint", base, self.ae, self.model)
        self.module.load_state_dict(live)

    # ---- one step ------------------------------------------------------------------------------
    def ae_step(self) -> dict:
        batch = next(self.loader)
        frames = batch["frames"].flatten(0, 1)  # (B*T, H, W, 3)
        x = frames_to_tensor(frames, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, metrics = ae_loss(self.module if self.cfg.compile else self.net, x)
        self.frames_seen += x.shape[0] * self.world
        return loss, metrics

    def latent_clips(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of encoded clips (B, T, C, h, w) and their actions (B, T, A) from the replay."""
        cfg = self.cfg
        if self.step % cfg.refill_every == 0 or self.replay.size < cfg.batch_size:
            batch = next(self.loader)
            self.replay.add(encode_clips(self.ae, batch["frames"], self.device), batch["actions"].to(self.device))
        return self.replay.sample(cfg.batch_size)

    def teacher_step(self) -> dict:
        cfg = self.cfg
        z, a = self.latent_clips()  # (B, T, C, h, w), (B, T, A)
        B, T = z.shape[:2]
        noise = torch.randn_like(z)
        s = shift_levels(torch.sigmoid(torch.randn(B, T, device=self.device)), cfg.level_shift)
        x = (1 - s[..., None, None, None]) * z + s[..., None, None, None] * noise
        s_ctx = torch.rand(B, T, device=self.device) * cfg.context_noise
        s_ctx = torch.where(torch.rand(B, T, device=self.device) < cfg.context_noise_prob, s_ctx, torch.zeros_like(s_ctx))
        ctx = (1 - s_ctx[..., None, None, None]) * z + s_ctx[..., None, None, None] * torch.randn_like(z)
        drop = torch.rand(B, T, device=self.device) < cfg.action_dropout
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            v = self.net(x, s, a, ctx, s_ctx, drop)
        loss = F.mse_loss(v.float(), noise - z)
        self.frames_seen += B * T * self.world
        return loss, {"loss": loss.item()}

    def distill_step(self) -> dict:
        cfg = self.cfg
        z, a = self.latent_clips()
        B, K = z.shape[0], cfg.prompt_frames
        z_prompt = z[:, :K]
        exit_step = torch.randint(1, cfg.k_max + 1, (B,), device=self.device)
        # the rollout runs the student as it is served (bf16, Triton kernels, CUDA graphs)
        if self.rollout_net is None:
            self.rollout_net = RolloutNet(self.module, B)
        self.rollout_net.sync(self.module)
        ro = rollout(self.rollout_net.net, z_prompt, a, z.shape[1] - K, self.levels, exit_step, cfg.conf_scale,
                     cfg.cache_last_step, cache=self.rollout_net.cache)
        ro = Rollout(*(t.float() for t in (ro.x_in, ro.s_exit, ro.x0, ro.conf_target)))
        conf_frames = 0  # the head learns on every generated frame ...
        if cfg.conf_target == "real":  # ... or on the first ones, toward their closeness to the real frames
            conf_frames = min(cfg.conf_frames, ro.x0.shape[1])
            mse = (ro.x0[:, :conf_frames] - z[:, K:K + conf_frames].float()).pow(2).flatten(2).mean(-1)
            ro.conf_target[:, :conf_frames] = torch.exp(-mse / cfg.conf_scale)
        self.frames_seen += B * (z.shape[1] - K) * self.world
        if cfg.head_only:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, metrics = confidence_loss(self.net, ro, z_prompt, a, cfg.cache_last_step, conf_frames)
            metrics["loss"] = loss.item()
            return loss, metrics
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            ctx, s_ctx = clip_inputs(z_prompt, ro, cfg.cache_last_step)
            critic_opt = self.extra["critic"][1]
            trained = [p for p in self.critic.parameters() if p.requires_grad]
            d_metrics = {}
            for _ in range(cfg.critic_steps):
                c_loss = critic_loss(self.critic_net, ro.x0, z_prompt, a, ctx, s_ctx)
                loss_c = c_loss
                if self.disc is not None:
                    d_loss, d_metrics = discriminator_loss(self.critic, self.disc, ro.x0, z[:, K:], z_prompt, a, ctx, s_ctx)
                    loss_c = c_loss + cfg.gan_critic_weight * d_loss
                    self.extra["disc"][1].zero_grad(set_to_none=True)
                critic_opt.zero_grad(set_to_none=True)
                loss_c.backward()
                torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
                critic_opt.step()
                if self.disc is not None:
                    self.extra["disc"][1].step()
            dmd, conf_loss, gan, regress, metrics = student_losses(
                self.net, ro, self.teacher, self.critic if self.disc is not None else self.critic_net, z_prompt, a,
                cfg.cache_last_step, cfg.dmd_guidance, z_real=z[:, K:], regress_frames=cfg.regress_frames,
                disc=self.disc, conf_frames=conf_frames)
        metrics["critic_loss"] = c_loss.item()
        metrics.update(d_metrics)
        loss = dmd + cfg.conf_weight * conf_loss + cfg.regress_weight * regress
        if gan is not None:
            loss = loss + cfg.gan_weight * gan
        metrics["loss"] = loss.item()
        return loss, metrics

    def run(self) -> dict:
        cfg = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        if cfg.stage in ("teacher", "distill"):
            mcfg = self.model.cfg
            self.replay = LatentReplay(cfg.replay_clips, cfg.clip_frames,
                                       (mcfg.latent_channels, mcfg.latent_h, mcfg.latent_w), mcfg.action_dim, self.device)
        step_fn = {"ae": self.ae_step, "teacher": self.teacher_step, "distill": self.distill_step}[cfg.stage]
        t_start = time.time()
        deadline = t_start + cfg.minutes * 60
        last_save, last_log, frames_at_log = t_start, t_start, self.frames_seen
        log = open(self.dir / "metrics.jsonl", "a") if self.main else None
        bar = tqdm(total=int(cfg.minutes * 60), unit="s", desc=f"{cfg.stage}", disable=not self.main,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total}s {postfix}")
        self.module.train()
        metrics: dict = {}
        while True:
            now = time.time()
            stop = now >= deadline or (cfg.max_steps and self.step >= cfg.max_steps)
            if any_rank(bool(stop), self.device):
                break
            lr = lr_at(self.step, cfg, self.lr, (now - t_start) / max(cfg.minutes * 60, 1e-9))
            for g in self.opt.param_groups:
                g["lr"] = lr
            loss, metrics = step_fn()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], cfg.grad_clip)
            self.opt.step()
            self.ema.update(self.module, self.step)
            self.step += 1
            if self.step % cfg.log_every == 0 and self.main:
                now = time.time()
                fps = (self.frames_seen - frames_at_log) / max(now - last_log, 1e-9)
                last_log, frames_at_log = now, self.frames_seen
                row = {"step": self.step, **metrics, "grad_norm": float(gnorm), "lr": lr,
                       "frames_per_s": round(fps, 1), "frames": self.frames_seen, "elapsed_s": round(now - t_start, 1)}
                if self.device.type == "cuda":
                    row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix_str(f"step {self.step} loss {metrics.get('loss', float('nan')):.4f} {fps:,.0f} frames/s")
                bar.n = min(bar.total, int(now - t_start))
                bar.refresh()
            if time.time() - last_save > cfg.save_every_minutes * 60:
                self.save(self.minutes_done + (time.time() - t_start) / 60)
                last_save = time.time()
        bar.close()
        minutes = self.minutes_done + (time.time() - t_start) / 60
        final = self.finish()
        self.save(minutes, final)
        if self.main:
            summary = {"stage": cfg.stage, "steps": self.step, "frames": self.frames_seen, "minutes": round(minutes, 2), **final}
            log.write(json.dumps({"summary": summary}) + "\n")
            log.close()
            print(json.dumps(summary))
            return summary
        return {}

    @torch.no_grad()
    def finish(self) -> dict:
        """End-of-stage figures (rank 0): the autoencoder's held-out PSNR and its latent scale."""
        if not self.main or self.cfg.stage != "ae":
            return {}
        self.ae.eval()
        frames = heldout_frames(self.cfg.scene, 256, self.cfg.width, self.cfg.height)
        ema_ae = Autoencoder(self.ae.config).to(self.device)
        ema_ae.load_state_dict({k: v.to(self.device) for k, v in self.ema.shadow.items()})
        train_frames = next(self.loader)["frames"].flatten(0, 1)
        scale = ema_ae.fit_latent_scale(train_frames)
        self.ema.shadow["latent_scale"] = torch.tensor(scale, device=self.device)
        x = frames_to_tensor(frames, self.device)
        rec = torch.cat([ema_ae.decode(ema_ae.encode(x[i:i + 64])) for i in range(0, len(x), 64)])
        from sim.autoencoder import tensor_to_frames
        val = float(np.mean(psnr(tensor_to_frames(rec).cpu().numpy(), frames)))
        print(f"autoencoder: held-out PSNR {val:.2f} dB over {len(frames)} frames, latent scale {scale:.4f}")
        return {"heldout_psnr_db": round(val, 3), "latent_scale": scale}


def field_comments(cls) -> dict[str, str]:
    """The `# comment` beside each dataclass field: the one place an option is described."""
    import inspect
    import re
    found = re.findall(r"^\s+(\w+): [^=]+= [^#\n]+#\s*(.+)$", inspect.getsource(cls), re.M)
    return dict(found)


CHOICES = {"stage": STAGES, "conf_target": CONF_TARGETS}


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m sim.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    comments = field_comments(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"{comments.get(f.name, '')} (default: {f.default!r})".lstrip()
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            kw = {"choices": CHOICES[f.name]} if f.name in CHOICES else {}
            p.add_argument(flag, type=kind, default=f.default, help=text, **kw)
    args = p.parse_args(argv)
    if not 0.0 <= args.lr_final <= 1.0:
        p.error(f"--lr-final must lie in [0, 1] (a share of --lr), got {args.lr_final}")
    if not (args.regress_weight >= 0.0 and math.isfinite(args.regress_weight)):
        p.error(f"--regress-weight must be a finite number >= 0, got {args.regress_weight}")
    for flag in ("gan_weight", "gan_critic_weight"):
        value = getattr(args, flag)
        if not (value >= 0.0 and math.isfinite(value)):
            p.error(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.regress_frames < 0:
        p.error(f"--regress-frames must be >= 0 (0 = every generated frame), got {args.regress_frames}")
    if args.conf_frames < 1:
        p.error(f"--conf-frames must be >= 1, got {args.conf_frames}")
    if not (args.conf_scale > 0 and math.isfinite(args.conf_scale)):
        p.error(f"--conf-scale must be a finite number > 0, got {args.conf_scale}")
    if args.head_only and (args.stage != "distill" or not args.init):
        p.error("--head-only trains a distilled student's confidence head: use it with --stage distill --init STUDENT")
    return TrainConfig(**vars(args))


def export_stage(argv: list[str]) -> None:
    """`--stage export`: the newest stage's checkpoint of --out (or --checkpoint) -> sim.export."""
    from sim import export  # noqa: PLC0415
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage")
    pre.add_argument("--out", default=TrainConfig.out)
    pre.add_argument("--scene", default=None)
    pre.add_argument("--checkpoint", default=None)
    ns, rest = pre.parse_known_args(argv)
    source = ns.checkpoint
    if source is None:
        found = [Path(ns.out) / st / "checkpoint" for st in ("distill", "teacher")]
        found = [f for f in found if (f / "manifest.json").exists()]
        if not found:
            raise SystemExit(f"error: no distill or teacher checkpoint under {ns.out}; pass --out or --checkpoint")
        source = str(found[0])
    export.main(rest + ["--checkpoint", source] + (["--scene", ns.scene] if ns.scene else []))


def main(argv=None) -> None:
    import sys  # noqa: PLC0415
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", default=None)
    if pre.parse_known_args(argv)[0].stage == "export":
        export_stage(argv)
        return
    Trainer(parse_args(argv)).run()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
