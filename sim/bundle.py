"""A world checkpoint: the autoencoder and the world model of one scene, in one folder.

config.json holds what it takes to rebuild and use them:
    {"kind": "world" | "autoencoder", "scene", "actions": [key names], "resolution": [H, W],
     "autoencoder": {...}, "latent_scale", "model": {...} (world only),
     "training": {stage, steps, frames, minutes, ...}, "metrics": {...}}
Tensors are prefixed "ae." and "model.". The format itself (manifest, hashes, split files)
is `sim.checkpoint`'s.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from sim.autoencoder import Autoencoder, AutoencoderConfig
from sim.checkpoint import CheckpointError, checkpoint_id, load_checkpoint, save_checkpoint
from sim.model import ModelConfig, WorldModel

# the default shipped checkpoints live inside the installed package
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def shipped_checkpoint(scene: str) -> Path | None:
    """The shipped checkpoint folder for a scene, or None if this install ships none."""
    folder = SHIPPED_DIR / scene
    return folder if (folder / "manifest.json").exists() else None


def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def save_world(folder: str | os.PathLike, config: dict, ae: Autoencoder, model: WorldModel | None = None,
               dtype: torch.dtype | None = None) -> Path:
    tensors = prefixed("ae", ae)
    config = dict(config, kind="world" if model is not None else "autoencoder",
                  autoencoder=ae.config.__dict__ if hasattr(ae, "config") else config.get("autoencoder"),
                  latent_scale=float(ae.latent_scale))
    if model is not None:
        tensors.update(prefixed("model", model))
        config["model"] = model.cfg.to_dict()
    return save_checkpoint(folder, config, tensors, dtype=dtype)


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, folder) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {folder} does not fit its own {what} config: "
                              f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}; re-export it")


def load_autoencoder(folder: str | os.PathLike, device="cpu") -> tuple[Autoencoder, dict]:
    config, tensors = load_checkpoint(folder, device=device)
    if "autoencoder" not in config:
        raise CheckpointError(f"checkpoint {folder} holds no autoencoder; train one with `python -m sim.train --stage ae`")
    ae = Autoencoder(AutoencoderConfig(**config["autoencoder"]))
    _load_module(ae, {k: v.float() for k, v in unprefixed("ae", tensors).items()}, "autoencoder", folder)
    if "latent_scale" in config:  # the exact fp32 value: a bf16 checkpoint rounds the buffer
        ae.latent_scale.fill_(float(config["latent_scale"]))
    return ae.to(device).eval(), config


def load_world(folder: str | os.PathLike, device="cpu") -> tuple[WorldModel, Autoencoder, dict]:
    """(model, autoencoder, config) from a world checkpoint, verified, in fp32 on `device`."""
    config, tensors = load_checkpoint(folder, device=device)
    if config.get("kind") != "world" or "model" not in config:
        raise CheckpointError(f"checkpoint {folder} is not a world model (kind={config.get('kind')!r}); "
                              "point at the output of `python -m sim.train --stage teacher` or later")
    try:
        mcfg = ModelConfig.from_dict(config["model"])
        ae = Autoencoder(AutoencoderConfig(**config["autoencoder"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder} has a config this version cannot read ({e})") from None
    model = WorldModel(mcfg)
    _load_module(model, {k: v.float() for k, v in unprefixed("model", tensors).items()}, "model", folder)
    _load_module(ae, {k: v.float() for k, v in unprefixed("ae", tensors).items()}, "autoencoder", folder)
    if "latent_scale" in config:  # the exact fp32 value: a bf16 checkpoint rounds the buffer
        ae.latent_scale.fill_(float(config["latent_scale"]))
    config["id"] = checkpoint_id(folder)
    return model.to(device).eval(), ae.to(device).eval(), config
