"""Command line of the scenes: watch a policy play, measure speed, measure exploration.

    python -m scenes preview --scene maze --out maze.gif          # one scene, as a GIF
    python -m scenes preview --scene all --out docs/scenes.gif    # all scenes side by side (README)
    python -m scenes preview --scene all --out docs/scenes.png    # a still contact sheet instead
    OMP_NUM_THREADS=1 python -m scenes bench --one-core           # batched frames/s on one core
    python -m scenes coverage --steps 2000 --seeds 0 1 2 3        # how much of the map policies see

Every command plays the batched game (`scenes.make_batch`) under one of the scene's policies
(`scenes.make_policy`); envs whose episode ends are rebuilt from a fresh seed, as a data
stream would do.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

import scenes
from scenes.core import TICK_RATE_HZ, Game, Policy

# Thread pools numpy's BLAS (and friends) size at import time; `--one-core` needs them at 1.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
GAP = 4                                        # pixels between scenes / frames on a sheet
GAP_COLOUR = np.array([24, 24, 28], np.uint8)  # dark grey, distinct from black backgrounds


# ---- playing -------------------------------------------------------------------------------
class Runner:
    """Steps a batched game under a policy; envs whose episode ended restart from a fresh seed.

    `on_end(ids)` is called with the ids of ended envs before their worlds are rebuilt, so
    callers can read the final state (e.g. coverage) of the episode.
    """

    def __init__(self, game: Game, policy: Policy, seeds: Sequence[int],
                 on_end: Callable[[np.ndarray], None] | None = None):
        self.game, self.policy, self.on_end = game, policy, on_end
        self.frames = game.reset(list(seeds))
        policy.reset()
        self.next_seed = int(max(seeds)) + 1  # fresh worlds never repeat one of the start seeds

    def tick(self) -> np.ndarray:
        """One tick: policy, step, render. Returns the frames uint8 [N, H, W, 3] after the step."""
        keys = self.policy(self.game)
        _, terminated = self.game.step(keys)
        self.frames = self.game.render()
        if terminated.any():
            ids = np.flatnonzero(terminated)
            if self.on_end is not None:
                self.on_end(ids)
            seeds = np.arange(self.next_seed, self.next_seed + ids.size)
            self.next_seed += ids.size
            self.game.reset(seeds, env_ids=ids)
            self.policy.reset(ids)
        return self.frames


def progress(total: int, desc: str):
    """A tqdm bar on stderr; silent when stderr is not a terminal (logs, CI, tests)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=None, leave=False, unit="tick")


def selected(scene: str) -> list[str]:
    return scenes.names() if scene == "all" else [scene]


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain fixed-width table: first column left-aligned, the rest right-aligned."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


# ---- preview -------------------------------------------------------------------------------
def cmd_preview(args: argparse.Namespace) -> int:
    """Play one scene (or all, side by side) under a policy and write a GIF or a PNG sheet.

    The GIF runs at the tick rate (20 fps) and holds `--frames` frames: the first world after
    reset, then one per tick. A .png output is a still contact sheet instead: one row per
    scene, `--columns` frames evenly spaced over the run.
    """
    names = selected("all" if args.grid else args.scene)
    clips = []  # per scene: uint8 [frames, H, W, 3]
    for name in names:
        game = scenes.make_batch(name, 1, width=args.width, height=args.height)
        runner = Runner(game, scenes.make_policy(game, args.policy, seed=args.seed), [args.seed])
        frames = [runner.frames[0]]
        with progress(args.frames - 1, f"preview {name}") as bar:
            for _ in range(args.frames - 1):
                frames.append(runner.tick()[0])
                bar.update()
        clips.append(np.stack(frames))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        picks = np.linspace(0, args.frames - 1, min(args.columns, args.frames)).round().astype(int)
        rows = [join([clip[i] for i in picks], axis=1) for clip in clips]
        write_png(out, upscale(join(rows, axis=0), args.scale))
        print(f"wrote {out}: {len(names)} scene(s) x {len(picks)} frames (ticks {picks.tolist()})")
    else:
        # side by side, tick by tick
        video = [upscale(join([clip[t] for clip in clips], axis=1), args.scale) for t in range(args.frames)]
        write_gif(out, video, fps=TICK_RATE_HZ)
        h, w = video[0].shape[:2]
        print(f"wrote {out}: {len(video)} frames of {w}x{h} at {TICK_RATE_HZ} fps "
              f"({', '.join(names)}, policy {args.policy}, seed {args.seed})")
    return 0


def join(images: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate HxWx3 images along rows (axis 0) or columns (axis 1) with a thin gap."""
    parts = []
    for i, img in enumerate(images):
        if i:
            shape = list(img.shape)
            shape[axis] = GAP
            parts.append(np.broadcast_to(GAP_COLOUR, shape))
        parts.append(img)
    return np.concatenate(parts, axis=axis)


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscale of an HxWx3 image (keeps pixel art crisp)."""
    if scale == 1:
        return img
    return img.repeat(scale, axis=0).repeat(scale, axis=1)


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    import imageio.v3 as iio  # imported here: bench and coverage do not need it

    # GIF delays are whole centiseconds; 20 fps = 50 ms = 5 cs, exact. loop=0: forever.
    # Pillow stores a run of identical frames as one frame shown that much longer, so a
    # reader may count fewer frames than written; the playing time is exact.
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)


def write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, image, extension=".png")


# ---- bench ---------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """Batched step + render throughput: frames/s = envs x ticks / seconds.

    The timed loop is what a training data stream does every tick: the policy picks keys,
    the game steps, the game renders all envs, ended episodes restart. A few untimed
    warm-up ticks come first. Prints the setting (command line, CPU, date, threads) so a
    number can be traced back to how it was taken.
    """
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all"
    print(f"command: {shlex.join(['python', '-m', 'scenes', *sys.argv[1:]])}")
    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu:     {cpu_model()} (process may run on cpus {affinity} of {os.cpu_count()})")
    print("threads: " + " ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARS))
    print(f"python {platform.python_version()}, numpy {np.__version__}, policy {args.policy}")
    print()

    rows = []
    for name in selected(args.scene):
        game = scenes.make_batch(name, args.envs, width=args.width, height=args.height)
        runner = Runner(game, scenes.make_policy(game, args.policy, seed=0), range(args.envs))
        for _ in range(args.warmup):
            runner.tick()
        with progress(args.ticks, f"bench {name}") as bar:
            start = time.perf_counter()
            for _ in range(args.ticks):
                runner.tick()
                bar.update()
            seconds = time.perf_counter() - start
        rows.append((name, args.envs, f"{args.width}x{args.height}",
                     f"{args.envs * args.ticks / seconds:,.0f}", f"{1000 * seconds / args.ticks:.2f}"))
    print_table(("scene", "envs", "resolution", "frames/s", "ms/batch tick"), rows)
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pin_to_one_core(argv: Sequence[str]) -> None:
    """Run on the first allowed CPU with single-threaded math libraries.

    Affinity can be set at any time, but BLAS/OpenMP thread pools are sized when numpy is
    imported, which `python -m scenes` has already done. So when the thread variables are
    not all 1 yet, set them and re-execute this same command once; the affinity survives
    exec. (numpy's element-wise kernels are single-threaded anyway; this mainly rules out
    BLAS threads stealing the second core.)
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if any(os.environ.get(v) != "1" for v in THREAD_VARS):
        env = {**os.environ, **{v: "1" for v in THREAD_VARS}}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "scenes", *argv], env)


# ---- coverage ------------------------------------------------------------------------------
def cmd_coverage(args: argparse.Namespace) -> int:
    """Share of each world's reachable area visited within `--steps` ticks, per policy.

    One batched game holds one env per seed. Coverage is the scene's own `coverage()` of the
    first episode: if an episode ends before `--steps`, its coverage is taken at that moment
    (the env keeps running on a fresh world, which is not counted). The "ended" column says
    how many seeds ended early.
    """
    rows = []
    for name in selected(args.scene):
        for policy_name in args.policies:
            game = scenes.make_batch(name, len(args.seeds), width=args.width, height=args.height)
            final = np.full(game.num_envs, np.nan)

            def freeze(ids: np.ndarray) -> None:
                # keep only the first episode's value
                first = ids[np.isnan(final[ids])]
                final[first] = game.coverage()[first]

            # one policy for the batch; its seed is the first world seed, so runs are reproducible
            policy = scenes.make_policy(game, policy_name, seed=args.seeds[0])
            runner = Runner(game, policy, args.seeds, on_end=freeze)
            with progress(args.steps, f"coverage {name}/{policy_name}") as bar:
                for _ in range(args.steps):
                    runner.tick()
                    bar.update()
            ended = int((~np.isnan(final)).sum())
            final = np.where(np.isnan(final), game.coverage(), final)
            rows.append((name, policy_name, args.steps, len(args.seeds), f"{final.mean():.3f}",
                         f"{final.min():.3f}", f"{final.max():.3f}", ended))
    print_table(("scene", "policy", "steps", "seeds", "coverage", "min", "max", "ended"), rows)
    return 0


# ---- argument parsing ----------------------------------------------------------------------
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def side(text: str) -> int:
    """A frame side in pixels: the games draw on an 8-pixel grid."""
    value = int(text)
    if value < 16 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 and at least 16, got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"seeds must be non-negative, got {text}")
    return value


def all_policies() -> list[str]:
    return sorted(set().union(*(scenes.game_class(n).POLICIES for n in scenes.names())) or {"explore", "random"})


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, and keep the commands' docstrings laid out as written."""


def build_parser() -> argparse.ArgumentParser:
    scene_names = scenes.names()
    policies = all_policies()
    parser = argparse.ArgumentParser(
        prog="python -m scenes",
        description="The procedural game scenes of dsa-sim: preview, benchmark, measure exploration.",
        epilog=f"scenes: {', '.join(scene_names)}. Run 'python -m scenes COMMAND --help' for a command's options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=inspect.cleandoc(func.__doc__),
                                  formatter_class=Formatter)
        sub.set_defaults(func=func)
        return sub

    def add_resolution(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--width", type=side, default=128, help="frame width in pixels")
        sub.add_argument("--height", type=side, default=128, help="frame height in pixels")

    p = add("preview", cmd_preview, "write a GIF (or PNG sheet) of a policy playing")
    p.add_argument("--scene", choices=[*scene_names, "all"], default="all",
                   help="scene to play; 'all' puts every scene side by side")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, help="output file: .gif for an animation, .png for a still sheet")
    p.add_argument("--policy", choices=policies, default="explore", help="who presses the keys")
    p.add_argument("--frames", type=positive_int, default=200, help="frames to write (reset frame + ticks)")
    p.add_argument("--seed", type=seed, default=0, help="world seed (the policy uses it too)")
    p.add_argument("--scale", type=positive_int, default=2, help="integer nearest-neighbour upscale")
    p.add_argument("--grid", action="store_true", help="all scenes side by side (same as --scene all)")
    p.add_argument("--columns", type=positive_int, default=6, help="frames per row of a .png sheet")
    add_resolution(p)

    b = add("bench", cmd_bench, "batched step+render throughput (frames/s)")
    b.add_argument("--scene", choices=[*scene_names, "all"], default="all", help="scene to measure")
    b.add_argument("--envs", type=positive_int, default=64, help="envs stepped together")
    b.add_argument("--ticks", type=positive_int, default=200, help="timed batch ticks")
    b.add_argument("--warmup", type=int, default=5, help="untimed ticks before timing")
    b.add_argument("--policy", choices=policies, default="explore", help="policy choosing the keys (timed too)")
    b.add_argument("--one-core", action="store_true",
                   help="pin to the first allowed CPU and set " + ", ".join(f"{v}=1" for v in THREAD_VARS)
                        + " (re-executes itself if they are not set yet)")
    add_resolution(b)

    c = add("coverage", cmd_coverage, "share of the map each policy visits in N steps")
    c.add_argument("--scene", choices=[*scene_names, "all"], default="all", help="scene to measure")
    c.add_argument("--steps", type=positive_int, default=2000, help="ticks per run")
    c.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2, 3], help="world seeds, one env each")
    c.add_argument("--policies", choices=policies, nargs="+", default=policies, help="policies to compare")
    add_resolution(c)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "one_core", False):
        pin_to_one_core(argv)
    # Every scene offers "random" and "explore", but a policy named here must exist for each
    # scene it is used with: say so in one line instead of failing halfway through.
    wanted = args.policies if args.command == "coverage" else [args.policy]
    for name in selected("all" if getattr(args, "grid", False) else args.scene):
        have = scenes.game_class(name).POLICIES
        if set(wanted) - set(have):
            parser.error(f"scene {name!r} has no policy {sorted(set(wanted) - set(have))}; it has {sorted(have)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
