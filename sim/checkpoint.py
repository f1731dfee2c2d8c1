"""The checkpoint format: one folder, no pickle.

    ckpt/
      config.json                  whatever the caller gives: presets, action space, latent
                                   scale, training record, measured metrics
      weights-00000.safetensors    the tensors, split greedily by tensor into files of at
      weights-00001.safetensors    most 16 MiB each (so each fits hosting and git limits)
      manifest.json                format version, then byte size and sha256 of every file

    save_checkpoint("ckpt", config, model.state_dict(), dtype=torch.bfloat16)
    config, tensors = load_checkpoint("ckpt")
    check_config(config["model"], asdict(model_config))

Saving writes a hidden temp folder beside the target and renames it into place, so a crash
never leaves a half-written checkpoint under the real name; an existing checkpoint is
renamed aside first and deleted only once the new one is in. Loading verifies the manifest
before it trusts anything, and every problem is one `CheckpointError` sentence that names
the file and says what to do. The manifest is written last and hashed into `checkpoint_id`,
so the id changes whenever any byte of the checkpoint does.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

FORMAT = "dsa-sim-checkpoint"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 16 * 2**20
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
WEIGHTS_PATTERN = re.compile(r"weights-\d{5}\.safetensors")
WEIGHTS_METADATA = {"format": "pt"}  # the tag other safetensors readers expect from PyTorch files


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, from another format or for another model."""


# ---------------------------------------------------------------------------------------------
# save


def save_checkpoint(folder: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor], *,
                    max_file_bytes: int = MAX_FILE_BYTES, dtype: torch.dtype | None = None) -> Path:
    """Write `config` and `tensors` as a checkpoint folder, atomically replacing any old one.

    Tensors are detached, moved to the CPU and made contiguous; `dtype` (e.g. torch.bfloat16
    for shipping) casts floating-point tensors only, so integer buffers keep their values.
    """
    folder = Path(folder)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    config_bytes = json.dumps(config, indent=2, default=_jsonable).encode() + b"\n"
    groups = _group_tensors(_prepare_tensors(tensors, dtype), max_file_bytes)
    _check_replaceable(folder)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        files = {CONFIG_FILE: _write_file(tmp / CONFIG_FILE, config_bytes)}
        for i, group in enumerate(groups):
            data = safetensors.torch.save(group, metadata=WEIGHTS_METADATA)
            if len(data) > max_file_bytes:  # the header estimate in _group_tensors was too small
                raise CheckpointError(f"weights file {i} came out at {len(data)} bytes, over max_file_bytes={max_file_bytes}; "
                                      "raise max_file_bytes a little")
            files[f"weights-{i:05d}.safetensors"] = _write_file(tmp / f"weights-{i:05d}.safetensors", data)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
        _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        _fsync_dir(tmp)
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback: numpy and torch scalars/arrays (metrics often are) become lists/numbers."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"config must be JSON-serialisable, but holds {obj!r} of type {type(obj).__name__}")


def _prepare_tensors(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out, storages = {}, set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights) or view into a larger
        # buffer; a private copy of those is cheap next to the write itself
        storage = t.untyped_storage()
        if storage.data_ptr() in storages or storage.nbytes() != t.nbytes:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _group_tensors(tensors: dict[str, torch.Tensor], max_file_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split into files of at most max_file_bytes, greedily in the given order."""
    file_overhead = 8 + 8 + len(json.dumps({"__metadata__": WEIGHTS_METADATA}))  # length prefix, padding, metadata
    groups, group, group_bytes = [], {}, file_overhead
    for name, t in tensors.items():
        # header entry: "name":{"dtype":"BF16","shape":[..],"data_offsets":[a,b]}, with room for 20-digit offsets
        cost = t.nbytes + len(json.dumps(name)) + len(json.dumps(list(t.shape))) + 96
        if file_overhead + cost > max_file_bytes:
            raise CheckpointError(f"tensor {name!r} is {_size(t.nbytes)} ({str(t.dtype)[6:]} {list(t.shape)}), over the "
                                  f"{_size(max_file_bytes)} limit for one weights file; split it or raise max_file_bytes")
        if group and group_bytes + cost > max_file_bytes:
            groups.append(group)
            group, group_bytes = {}, file_overhead
        group[name] = t
        group_bytes += cost
    if group:
        groups.append(group)
    return groups


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _check_replaceable(folder: Path) -> None:
    """Only ever replace a checkpoint or an empty folder: never a user's other data."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {folder}: it is a file; choose another path")
    if not (folder / MANIFEST_FILE).is_file() and any(folder.iterdir()):
        raise CheckpointError(f"cannot save a checkpoint to {_shown(folder)}: the folder holds other files and no "
                              f"{MANIFEST_FILE}; choose another path or empty it")


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the renames are still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """tmp -> folder. An old folder goes aside first and is deleted only after the new one is in."""
    if not folder.exists():
        os.rename(tmp, folder)
    else:
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(folder.parent)


# ---------------------------------------------------------------------------------------------
# load


def load_checkpoint(folder: str | os.PathLike, *, verify: bool = True,
                    device: torch.device | str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a checkpoint folder -> (config, tensors). Raises CheckpointError on any problem.

    Files are always checked for presence and size; `verify` also checks every sha256
    (about 1 s per GB). Each file is read once, and the bytes that were hashed are the
    bytes that get parsed.
    """
    folder = Path(folder)
    shown = _shown(folder)
    manifest = _read_manifest(folder)
    files: dict[str, dict] = manifest["files"]
    extra = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in files)
    if extra:
        raise CheckpointError(f"checkpoint {shown} holds weights files its manifest does not list ({', '.join(extra)}); "
                              "remove them or re-export the checkpoint")

    contents = {}
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {shown} is incomplete: {name} is missing but the manifest lists it; "
                                  "re-download or re-export it")
        data = path.read_bytes()
        if len(data) != entry["bytes"]:
            raise CheckpointError(f"checkpoint {shown} is corrupt: {name} is {len(data)} bytes but the manifest says "
                                  f"{entry['bytes']} (cut short or overwritten?); re-download or re-export it")
        if verify:
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise CheckpointError(f"checkpoint {shown} is corrupt: {name} has sha256 {digest[:12]}.. but the manifest "
                                      f"says {entry['sha256'][:12]}..; re-download or re-export it")
        contents[name] = data

    try:
        config = json.loads(contents[CONFIG_FILE])
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"checkpoint {shown} is corrupt: {CONFIG_FILE} is not valid JSON ({e}); "
                              "re-download or re-export it") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {shown} is corrupt: {CONFIG_FILE} holds a {type(config).__name__}, "
                              "not an object; re-download or re-export it")

    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(n for n in contents if n != CONFIG_FILE):
        try:
            loaded = safetensors.torch.load(contents[name])
        except Exception as e:  # SafetensorError and friends: the header or data is malformed
            raise CheckpointError(f"checkpoint {shown} is corrupt: {name} is not a readable safetensors file ({e}); "
                                  "re-download or re-export it") from None
        for key, t in loaded.items():
            if key in tensors:
                raise CheckpointError(f"checkpoint {shown} is corrupt: tensor {key!r} appears in {name} and in an "
                                      "earlier weights file; re-export it")
            tensors[key] = t.to(device)
    return config, tensors


def _read_manifest(folder: Path) -> dict:
    shown = _shown(folder)
    if not folder.exists():
        raise CheckpointError(f"no checkpoint at {shown}: the folder does not exist; check the path")
    if not folder.is_dir():
        raise CheckpointError(f"not a dsa-sim checkpoint: {folder} is a file; pass the checkpoint folder")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"not a dsa-sim checkpoint: {shown} has no {MANIFEST_FILE}; "
                              "pass a folder written by save_checkpoint")

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {shown} is corrupt: {MANIFEST_FILE} {why}; re-download or re-export it")

    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as e:
        raise corrupt(f"is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"not a dsa-sim checkpoint: {shown}{MANIFEST_FILE} does not say format {FORMAT!r}; "
                              "pass a folder written by save_checkpoint")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise corrupt("has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {shown} has format version {version} but this dsa-sim reads up to "
                              f"{FORMAT_VERSION}; upgrade dsa-sim")
    files = manifest.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files:
        raise corrupt(f"does not list {CONFIG_FILE}")
    for name, entry in files.items():
        if name != CONFIG_FILE and not WEIGHTS_PATTERN.fullmatch(name):  # also rules out paths like ../x
            raise corrupt(f"lists an unexpected file {name!r}")
        if (not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int)
                or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256")))):
            raise corrupt(f"has no valid size and sha256 for {name}")
    return manifest


def _shown(folder: Path) -> str:
    return folder.as_posix().rstrip("/") + "/"


# ---------------------------------------------------------------------------------------------
# identity and compatibility


def checkpoint_id(folder: str | os.PathLike) -> str:
    """A short stable id: the first 12 hex digits of the manifest's sha256 (which covers every file)."""
    folder = Path(folder)
    _read_manifest(folder)
    return hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()[:12]


def check_config(config: dict, expected: dict, _prefix: str = "") -> None:
    """Raise CheckpointError at the first key of `expected` whose value `config` does not share.

    Nested dicts are compared key by key (names like model.d_model); tuples equal lists,
    as they do after a trip through JSON. Keys of `config` not in `expected` are ignored.
    """
    for key, want in expected.items():
        path = f"{_prefix}{key}"
        if not isinstance(config, dict) or key not in config:
            raise CheckpointError(f"checkpoint config has no {path} but the config asks for {_fmt(want)}; "
                                  "use a checkpoint made for this model")
        have = config[key]
        if isinstance(want, dict) and isinstance(have, dict):
            check_config(have, want, f"{path}.")
        elif _json_value(have) != _json_value(want):
            raise CheckpointError(f"checkpoint was trained with {path}={_fmt(have)} but the config asks for {_fmt(want)}; "
                                  "use a matching checkpoint or the checkpoint's settings")


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_jsonable))


def _fmt(value: Any) -> str:
    return json.dumps(value, default=_jsonable)
