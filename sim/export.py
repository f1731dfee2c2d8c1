"""Export: a trained world checkpoint -> the shipped checkpoint inside the package.

    python -m sim.export --checkpoint runs/maze/distill/checkpoint --eval-json runs/eval/eval.json
    python -m sim.export --checkpoint runs/maze/teacher/checkpoint --dest /tmp/maze-bf16

The source (the output of `python -m sim.train --stage teacher` or `--stage distill`) is
loaded and verified with `sim.bundle.load_world`, then written as a bf16 copy into --dest,
by default sim/weights/<scene>/, which `python play.py` loads when no --checkpoint is given
(`sim.bundle.shipped_checkpoint`). The copy keeps the source's config (scene, actions,
resolution, sampler, training record, metrics) and adds an "export" record: source path and
id, date, dtype. --eval-json (an eval.json of `python -m sim.eval` on the same checkpoint)
puts its headline figures into config["metrics"]["eval"]: next-frame PSNR mean/median and
rollout PSNR at horizons 1/8/16/64 per policy and setting, each beside its copy baseline,
and the DSA summary when the eval ran with --dsa.

The project ships weights only when they beat what is shipped, so when --dest already holds
a checkpoint its headline figures are printed beside the new ones, and the old folder is
replaced only with --force. The new folder is written beside --dest under a hidden name,
checked (every file <= 16 MiB, the folder <= 32 MiB, loads back with the same config and
the bf16 rounding of every source tensor), and only then swapped in: a failure at any
point leaves --dest as it was. Every error a user can cause is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sim.bundle import SHIPPED_DIR, load_world, prefixed, save_world
from sim.checkpoint import CONFIG_FILE, MANIFEST_FILE, MAX_FILE_BYTES, CheckpointError, checkpoint_id
from sim.eval import TABLE_HORIZONS

MAX_TOTAL_BYTES = 32 * 2**20  # the whole shipped folder: what a package (and a git host) carries comfortably
FULL_PRECISION = {"ae.latent_scale"}  # load_world restores it from config.json, unrounded


class ExportError(ValueError):
    """One sentence a user can act on: a bad source, eval file, destination or size."""


@dataclass
class Exported:
    folder: Path         # where the checkpoint now is
    checkpoint_id: str   # sim.checkpoint.checkpoint_id of it
    files: int           # files in the folder (config, manifest, weights)
    total_bytes: int
    config: dict         # its config.json


# ---------------------------------------------------------------------------------------------
# eval figures: what of an eval.json goes into config["metrics"]["eval"], and what is compared


def _r(x: Any) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def eval_figures(report: dict) -> dict:
    """The headline figures of an eval.json (`sim.eval.run_eval`), small enough for config.json.

    {"checkpoint_id", "date", "seeds", "horizon",
     "results": {policy: {setting: {"sampler_steps", "next_psnr_mean", "next_psnr_median",
                 "next_ssim_mean", "next_copy_psnr_mean", "rollout_psnr_mean": {"1": .., "8": ..},
                 "rollout_copy_psnr_mean": {...}}}},
     "dsa": {policy: {setting: {"mean_steps", "next_psnr_mean", "rollout_psnr_mean": {...},
             "spearman_confidence_vs_error"}}}}   (only when the eval ran with --dsa)
    Raises KeyError / TypeError / IndexError on a dict of another shape.
    """
    cfg = report.get("config", {})
    out: dict[str, Any] = {"checkpoint_id": cfg.get("checkpoint_id"), "date": cfg.get("date"),
                           "seeds": len(cfg.get("seeds") or []), "horizon": cfg.get("horizon"), "results": {}}
    for policy, settings in report["results"].items():
        for label, res in settings.items():
            n, roll = res["next_frame"], res["rollout"]
            hs = [h for h in TABLE_HORIZONS if h in roll["horizon"]]
            at = {h: roll["horizon"].index(h) for h in hs}
            out["results"].setdefault(policy, {})[label] = {
                "sampler_steps": res.get("sampler_steps"),
                "next_psnr_mean": _r(n["psnr"]["mean"]), "next_psnr_median": _r(n["psnr"]["median"]),
                "next_ssim_mean": _r(n["ssim"]["mean"]), "next_copy_psnr_mean": _r(n["copy_psnr"]["mean"]),
                "rollout_psnr_mean": {str(h): _r(roll["psnr"]["mean"][at[h]]) for h in hs},
                "rollout_copy_psnr_mean": {str(h): _r(roll["copy_psnr"]["mean"][at[h]]) for h in hs},
            }
    if report.get("dsa"):
        out["dsa"] = {}
        for policy, settings in report["dsa"].items():
            for label, d in settings.items():
                roll = {str(h): v for h, v in d["rollout_psnr_mean"].items()}  # int keys before JSON, str after
                out["dsa"].setdefault(policy, {})[label] = {
                    "mean_steps": _r(d["mean_steps_rollout"]), "next_psnr_mean": _r(d["next_psnr_mean"]),
                    "rollout_psnr_mean": {str(h): _r(roll[str(h)]) for h in TABLE_HORIZONS if str(h) in roll},
                    "spearman_confidence_vs_error": _r(d.get("spearman_confidence_vs_error")),
                }
    return out


def read_eval(path: str | os.PathLike, source_id: str, scene: str | None) -> dict:
    """eval_figures of an eval.json, checked to be of this checkpoint and scene."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        figures = eval_figures(report)
    except FileNotFoundError:
        raise ExportError(f"no eval file at {path}; write one with `python -m sim.eval --checkpoint <checkpoint>`") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ExportError(f"{path} is not an eval.json written by `python -m sim.eval` ({type(e).__name__}: {e}); "
                          "pass the eval.json from its --out folder") from None
    measured = figures["checkpoint_id"]
    if measured is not None and measured != source_id:
        raise ExportError(f"{path} measured checkpoint {measured}, not this one ({source_id}); "
                          "re-run `python -m sim.eval` on the checkpoint you export")
    eval_scene = report.get("config", {}).get("scene")
    if eval_scene and scene and eval_scene != scene:
        raise ExportError(f"{path} measured scene {eval_scene!r} but the checkpoint is a {scene!r} model; "
                          "pass an eval of this checkpoint on its own scene")
    return figures


def headline(metrics: dict) -> dict[str, float]:
    """The figures to hold two checkpoints against each other, by name, from config["metrics"]."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():  # the training stage's own figures, e.g. the autoencoder's held-out PSNR
        if key != "eval" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    ev = metrics.get("eval") or {}
    for policy, settings in (ev.get("results") or {}).items():
        for label, r in settings.items():
            out[f"{policy}/{label} next PSNR mean"] = r.get("next_psnr_mean")
            out[f"{policy}/{label} next PSNR median"] = r.get("next_psnr_median")
            for h, x in (r.get("rollout_psnr_mean") or {}).items():
                out[f"{policy}/{label} rollout h{h} PSNR"] = x
    for policy, settings in (ev.get("dsa") or {}).items():
        for label, d in settings.items():
            out[f"dsa {policy}/{label} next PSNR mean"] = d.get("next_psnr_mean")
            out[f"dsa {policy}/{label} mean steps"] = d.get("mean_steps")
    return {k: float(v) for k, v in out.items() if v is not None}


def compare_metrics(old: dict, new: dict, old_name: str = "shipped", new_name: str = "new") -> str:
    """Side by side: the headline figures of two configs' "metrics", the change, and a tally of PSNR wins."""
    a, b = headline(old), headline(new)
    keys = list(a) + [k for k in b if k not in a]
    if not keys:
        return ("neither checkpoint carries quality figures in its config metrics; pass --eval-json "
                "(from `python -m sim.eval`) to see whether the new weights beat the old")
    width = max(len(k) for k in keys + ["figure"])
    lines = [f"{'figure':<{width}}  {old_name:>10}  {new_name:>10}  {'change':>8}"]
    for k in keys:
        x, y = a.get(k), b.get(k)
        change = f"{y - x:+.2f}" if x is not None and y is not None else ""
        shown = ["-" if v is None else f"{v:.2f}" for v in (x, y)]
        lines.append(f"{k:<{width}}  {shown[0]:>10}  {shown[1]:>10}  {change:>8}")
    shared = [k for k in keys if "PSNR" in k and k in a and k in b]
    if shared:
        wins = sum(b[k] > a[k] for k in shared)
        lines.append(f"{new_name} is higher on {wins} of {len(shared)} PSNR figures both carry")
    else:
        lines.append(f"no PSNR figure in both: this cannot tell whether {new_name} beats {old_name}; "
                     "pass --eval-json with an eval of each on the same seeds")
    ea, eb = old.get("eval") or {}, new.get("eval") or {}
    if ea and eb and (ea.get("seeds"), ea.get("horizon")) != (eb.get("seeds"), eb.get("horizon")):
        lines.append(f"note: the evals differ ({ea.get('seeds')} seeds, horizon {ea.get('horizon')} against "
                     f"{eb.get('seeds')} seeds, horizon {eb.get('horizon')}): the figures are not like for like")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# checks on the written folder


def check_sizes(folder: Path) -> tuple[int, int]:
    """(files, total bytes) of a folder; ExportError if a file is over MAX_FILE_BYTES or all over MAX_TOTAL_BYTES."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    for name, n in sorted(sizes.items()):
        if n > MAX_FILE_BYTES:
            raise ExportError(f"{name} came out at {n / 2**20:.2f} MiB, over the {MAX_FILE_BYTES / 2**20:.2f} MiB "
                              "limit for one shipped file; nothing was exported")
    total = sum(sizes.values())
    if total > MAX_TOTAL_BYTES:
        raise ExportError(f"the export came out at {total / 2**20:.2f} MiB, over the {MAX_TOTAL_BYTES / 2**20:.2f} MiB "
                          "limit for a shipped checkpoint; ship a smaller preset. Nothing was exported")
    return len(sizes), total


def _json_value(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.tolist()))


def check_round_trip(folder: Path, config: dict, model: torch.nn.Module, ae: torch.nn.Module,
                     dtype: torch.dtype) -> dict:
    """Load `folder` with load_world; ExportError unless it holds `config` and the `dtype` rounding
    of every tensor of `model` and `ae`. Returns the loaded config (with its "id")."""
    model2, ae2, config2 = load_world(folder)
    got = {k: v for k, v in config2.items() if k != "id"}
    if got != _json_value(config):
        keys = sorted(k for k in set(got) | set(config) if got.get(k) != _json_value(config.get(k)))
        raise ExportError(f"the written config differs from the source's in {keys}; nothing was exported")
    want = {**prefixed("model", model), **prefixed("ae", ae)}
    have = {**prefixed("model", model2), **prefixed("ae", ae2)}
    if set(want) != set(have):
        raise ExportError(f"the written checkpoint holds other tensors than the source "
                          f"({sorted(set(want) ^ set(have))[:3]}); nothing was exported")
    for name, t in want.items():
        expected = t if name in FULL_PRECISION or not t.is_floating_point() else t.to(dtype).to(t.dtype)
        if not torch.equal(have[name], expected):
            raise ExportError(f"tensor {name} did not survive the round trip through {str(dtype)[6:]}; nothing was exported")
    return config2


# ---------------------------------------------------------------------------------------------
# export


def _holds_checkpoint(folder: Path) -> bool:
    """True for a checkpoint folder, False for none or an empty one; ExportError for anything else."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ExportError(f"--dest {folder} is a file; pass a folder")
    if (folder / MANIFEST_FILE).is_file():
        return True
    if any(folder.iterdir()):
        raise ExportError(f"--dest {folder} holds other files and no checkpoint; choose another --dest or empty it")
    return False


def _read_config(folder: Path) -> tuple[dict, str]:
    """(config, id) of an existing checkpoint, as far as they can be read: a broken one may still be replaced."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = {}
    try:
        ckpt_id = checkpoint_id(folder)
    except CheckpointError:
        ckpt_id = "unreadable"
    return (config if isinstance(config, dict) else {}), ckpt_id


def _replace(staging: Path, dest: Path) -> None:
    """staging -> dest by rename; an old dest goes aside first and is deleted only once the new one is in."""
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}" if dest.exists() else None
    if old is not None:
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_world(checkpoint: str | os.PathLike, dest: str | os.PathLike | None = None, *, scene: str | None = None,
                 force: bool = False, eval_json: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.bfloat16, log: Callable[[str], None] = print) -> Exported:
    """Write a `dtype` copy of the world checkpoint `checkpoint` into `dest` (default sim/weights/<scene>).

    Raises ExportError (one sentence: what is wrong, what to do) and leaves `dest` untouched on
    a bad source or eval file, a `dest` that holds a checkpoint when not `force`, or an export
    over the size limits. `log` gets the progress lines and the old-vs-new comparison.
    """
    source = Path(checkpoint)
    try:
        model, ae, src_config = load_world(source)
    except (CheckpointError, OSError, RuntimeError) as e:  # RuntimeError: tensor shapes that do not fit the config
        raise ExportError(" ".join(str(e).split())[:400]) from None
    source_id = src_config.pop("id")

    have_scene = src_config.get("scene")
    if scene and have_scene and scene != have_scene:
        raise ExportError(f"{source} is a {have_scene!r} model, not {scene!r}; drop --scene or pass a {scene} checkpoint")
    scene = scene or have_scene
    if not scene:
        raise ExportError(f"{source} names no scene in its config; pass --scene")
    dest = Path(dest) if dest is not None else SHIPPED_DIR / scene
    if dest.resolve() == source.resolve():
        raise ExportError(f"--dest {dest} is the source checkpoint itself; choose another --dest")
    replacing = _holds_checkpoint(dest)

    config = dict(src_config, scene=scene)
    config["metrics"] = dict(config.get("metrics") or {})
    if eval_json is not None:
        config["metrics"]["eval"] = read_eval(eval_json, source_id, scene)
    config["export"] = {"source": source.as_posix(), "source_id": source_id,
                        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "dtype": str(dtype).replace("torch.", "")}
    if eval_json is not None:
        config["export"]["eval_json"] = Path(eval_json).as_posix()
    stage = (config.get("training") or {}).get("stage", "?")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"export: {source} (id {source_id}, {stage}, {n_params / 1e6:.2f} M params) -> {dest} as {config['export']['dtype']}")

    if replacing:
        old_config, old_id = _read_config(dest)
        old_stage = (old_config.get("training") or {}).get("stage", "?")
        old_date = (old_config.get("export") or {}).get("date", "?")
        log(f"{dest} already holds checkpoint {old_id} ({old_stage}, exported {old_date}):")
        log(compare_metrics(old_config.get("metrics") or {}, config["metrics"], old_name=f"old {old_id[:8]}"))
        if not force:
            raise ExportError(f"{dest} already holds a checkpoint; pass --force to replace it "
                              "(ship new weights only when they beat what is shipped)")
    for name, t in {**prefixed("model", model), **prefixed("ae", ae)}.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ExportError(f"{source} has non-finite values in {name}; do not ship it")

    staging = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        try:
            save_world(staging, config, ae, model, dtype=dtype)
        except OSError as e:
            raise ExportError(f"cannot write beside {dest} ({e}); choose another --dest or check permissions") from None
        # the checkpoint format's temp folder is private (mkdtemp: 0700); a shipped one is read by every user
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        files, total = check_sizes(staging)
        try:
            written = check_round_trip(staging, config, model, ae, dtype)
        except CheckpointError as e:
            raise ExportError(f"the written checkpoint does not load back ({e}); nothing was exported") from None
        _replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported {dest}: {files} files, {total / 2**20:.2f} MiB, id {written['id']}")
    return Exported(dest, written["id"], files, total, {k: v for k, v in written.items() if k != "id"})


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="world checkpoint to export: the checkpoint/ folder of `python -m sim.train --stage teacher` "
                        "or `--stage distill`, e.g. runs/maze/distill/checkpoint")
    p.add_argument("--scene", default=None, metavar="NAME",
                   help="scene the checkpoint is shipped for (default: the checkpoint's own; "
                        "must match it when it names one)")
    p.add_argument("--dest", default=None, metavar="DIR",
                   help=f"folder to write (default: {SHIPPED_DIR}/<scene>, the one `python play.py` loads)")
    p.add_argument("--force", action="store_true",
                   help="replace a checkpoint already in --dest (without it the old and new figures are shown and "
                        "nothing is written)")
    p.add_argument("--eval-json", default=None, metavar="FILE",
                   help="eval.json written by `python -m sim.eval` on this checkpoint: its headline figures go into "
                        "config metrics.eval and into the comparison with what --dest holds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Exported:
    args = parse_args(argv)
    try:
        return export_world(args.checkpoint, args.dest, scene=args.scene, force=args.force, eval_json=args.eval_json)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
