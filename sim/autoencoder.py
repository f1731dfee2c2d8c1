"""The frame autoencoder: RGB frames <-> latents 8x smaller in height and width.

    ae = Autoencoder(AutoencoderConfig.from_name("small"))
    x = frames_to_tensor(frames)         # uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]
    z = ae.encode(x)                     # [B, C, H/8, W/8], roughly unit variance
    frames = tensor_to_frames(ae.decode(z))   # uint8 [B, H, W, 3]

Deterministic (no KL, no sampling): the diffusion model needs a latent space that is
smooth and of known scale, and gets it from two things rather than from a posterior:
- a small L2 penalty on the raw latents in `ae_loss`, so the encoder cannot push
  information into ever larger magnitudes (the decoder's first layer is a plain conv,
  so without it the latent scale drifts freely during training);
- a stored `latent_scale` buffer, fitted after training from the std of raw latents
  (`fit_latent_scale`), that `encode` divides by and `decode` multiplies by, so the
  diffusion model always sees unit-variance latents.

Layout. Each of the three stages halves H and W (128 -> 64 -> 32 -> 16 px):

    encoder  stem conv 3->c1 (full res) | stage k: stride-2 conv -> n ResBlocks at c_k | to_latent
    decoder  from_latent | stage k: n ResBlocks at c_k -> 2x upsample to c_{k-1} | to_rgb

Upsampling is a conv to 4x the channels followed by pixel shuffle: the same FLOPs as
nearest-upsample-then-conv, but the conv runs at the low resolution with a wide output,
which is faster on CPU; ICNR initialisation makes it start as nearest upsampling, so
there are no checkerboard artefacts at init. The decoder has no conv at full resolution
(its last layer predicts each 2x2 pixel block from the 64x64 features), which is most of
why `small` decodes a frame in about 10 ms on two CPU cores.

Losses are pixel losses only (no pretrained perceptual network can be downloaded):
L1 + L2, which keeps both small errors (L1) and outliers such as thin sprites (L2) in view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DOWNSAMPLE = 8  # three stride-2 stages


@dataclass
class AutoencoderConfig:
    latent_channels: int = 8                      # C of the latent [B, C, H/8, W/8]
    channels: tuple[int, int, int] = (32, 64, 128)  # widths at H/2, H/4, H/8
    encoder_blocks: int = 2                       # ResBlocks per encoder stage
    decoder_blocks: int = 2                       # ResBlocks per decoder stage
    norm_groups: int = 8                          # GroupNorm groups; divides every width
    latent_l2: float = 1e-4                       # weight of mean(z_raw^2) in ae_loss

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"channels must give 3 stage widths, got {self.channels}")
        for c in self.channels:
            if c % self.norm_groups:
                raise ValueError(f"every width must be a multiple of norm_groups={self.norm_groups}, got {self.channels}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "AutoencoderConfig":
        if name not in AE_PRESETS:
            raise ValueError(f"unknown autoencoder preset {name!r}; choose one of {sorted(AE_PRESETS)}")
        return replace(AE_PRESETS[name], **overrides)


AE_PRESETS: dict[str, AutoencoderConfig] = {
    # a few 10k parameters: CPU tests
    "tiny": AutoencoderConfig(channels=(8, 16, 16), encoder_blocks=1, decoder_blocks=1, norm_groups=4),
    # shipped default: 2.05M parameters (4.1 MB in bf16), 9-10 ms per 128x128 decode on 2 CPU cores
    "small": AutoencoderConfig(),
    # for GPUs
    "base": AutoencoderConfig(channels=(64, 128, 256), encoder_blocks=2, decoder_blocks=3, norm_groups=32),
}


# ---------------------------------------------------------------------------------------------
# frames <-> tensors


def frames_to_tensor(frames, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 frames [B, H, W, 3] (numpy or torch) -> float32 [B, 3, H, W] in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [B, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    frames = frames.to(device) if device is not None else frames  # move as uint8: 4x fewer bytes
    return frames.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (B, 3, H, W)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] (nominally [-1, 1], clamped) -> uint8 [B, H, W, 3] on x's device."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected float [B, 3, H, W], got {tuple(x.shape)}")
    x = (x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return x.round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)


# ---------------------------------------------------------------------------------------------
# blocks


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the input. Widths in = out."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = conv3x3(channels, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class Upsample(nn.Module):
    """2x upsampling: conv c_in -> 4 c_out at the low resolution, then pixel shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv3x3(c_in, 4 * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)  # (B, 4 c_out, h, w) -> (B, c_out, 2h, 2w)


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.stem = conv3x3(3, c1)
        stages, c_prev = [], c1
        for c in cfg.channels:
            stages += [conv3x3(c_prev, c, stride=2)] + [ResBlock(c, cfg.norm_groups) for _ in range(cfg.encoder_blocks)]
            c_prev = c
        self.stages = nn.Sequential(*stages)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, c3)
        self.to_latent = conv3x3(c3, cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, c3, H/8, W/8)
        return self.to_latent(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.from_latent = conv3x3(cfg.latent_channels, c3)
        layers = []
        for c, c_next in ((c3, c2), (c2, c1)):
            layers += [ResBlock(c, cfg.norm_groups) for _ in range(cfg.decoder_blocks)] + [Upsample(c, c_next)]
        layers += [ResBlock(c1, cfg.norm_groups) for _ in range(cfg.decoder_blocks)]
        self.stages = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, c1)
        self.to_rgb = Upsample(c1, 3)  # the last 2x: H/2 -> H, straight to RGB

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.from_latent(z))  # (B, c1, H/2, W/2)
        return self.to_rgb(F.silu(self.norm_out(h)))  # (B, 3, H, W)


# ---------------------------------------------------------------------------------------------
# the autoencoder


class Autoencoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # std of raw latents; encode divides by it, decode multiplies. Saved with the weights.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")  # fan-in scaled
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock):  # each block starts as the identity
                nn.init.zeros_(m.conv2.weight)
            if isinstance(m, Upsample):  # ICNR: the 4 sub-pixels share a kernel -> nearest upsampling
                w = m.conv.weight  # (4 c_out, c_in, 3, 3)
                nn.init.kaiming_normal_(w[: w.shape[0] // 4], nonlinearity="linear")
                with torch.no_grad():
                    w.copy_(w[: w.shape[0] // 4].repeat_interleave(4, dim=0))
        with torch.no_grad():  # small output: start near mid-grey, not at a random image
            self.decoder.to_rgb.conv.weight.mul_(0.1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_size(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % DOWNSAMPLE or x.shape[3] % DOWNSAMPLE:
            raise ValueError(f"expected frames [B, 3, H, W] with H and W multiples of {DOWNSAMPLE}, got {tuple(x.shape)}")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> unscaled latents [B, C, H/8, W/8]."""
        self.check_size(x)
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> latents [B, C, H/8, W/8] of roughly unit variance."""
        return self.encode_raw(x) / self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] -> frames [B, 3, 8h, 8w], unbounded: clamp when converting."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents [B, {self.config.latent_channels}, h, w], got {tuple(z.shape)}")
        return self.decoder(z * self.latent_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    @torch.no_grad()
    def fit_latent_scale(self, frames, batch_size: int = 64) -> float:
        """Set `latent_scale` to the std of raw latents over `frames` and return it.

        frames: uint8 [B, H, W, 3] (numpy or torch) or float [B, 3, H, W] in [-1, 1].
        """
        device = self.latent_scale.device
        if frames.dtype in (np.uint8, torch.uint8):
            frames = frames_to_tensor(frames)
        sum_z, sum_z2, count = 0.0, 0.0, 0
        for i in range(0, frames.shape[0], batch_size):
            z = self.encode_raw(frames[i : i + batch_size].to(device)).double()
            sum_z, sum_z2, count = sum_z + z.sum().item(), sum_z2 + z.square().sum().item(), count + z.numel()
        mean = sum_z / count
        std = math.sqrt(max(sum_z2 / count - mean * mean, 0.0))
        if not std > 0.0:
            raise ValueError("latents have zero spread over these frames; fit the scale on varied frames")
        self.latent_scale.fill_(std)
        return std


def ae_loss(model: Autoencoder, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss on a batch x [B, 3, H, W] in [-1, 1]: L1 + L2 + latent_l2 * mean(z_raw^2).

    Metrics are floats: loss and its terms, and PSNR in dB of the clamped reconstruction
    on the [0, 1] pixel scale (the figure the eval reports).
    """
    ae = getattr(model, "module", model)  # under DistributedDataParallel: call the wrapper, read the model
    x_hat, z = model(x)
    l1 = (x_hat - x).abs().mean()
    l2 = (x_hat - x).square().mean()
    latent_l2 = (z * ae.latent_scale).square().mean()  # on raw latents: independent of the fitted scale
    loss = l1 + l2 + ae.config.latent_l2 * latent_l2
    with torch.no_grad():
        mse01 = ((x_hat.float().clamp(-1, 1) - x.float()) / 2).square().mean()  # on [0, 1]
        psnr = -10.0 * torch.log10(mse01.clamp_min(1e-10))
    metrics = {"loss": loss.item(), "l1": l1.item(), "l2": l2.item(), "latent_l2": latent_l2.item(), "psnr": psnr.item()}
    return loss, metrics
