"""Play a world model: `python play.py` (see README.md, "Play").

    python play.py                                          # the shipped model of the default scene
    python play.py --checkpoint runs/maze-teacher --side-by-side
    python play.py --headless --frames 100                  # no window: a recording + a preview GIF
    python play.py --replay recordings/x.dsarec             # watch a recording
    python play.py --replay recordings/x.dsarec --rerun     # feed its actions to the model again

Thin: arguments -> engine + input source + pygame window -> loop. The device is chosen here,
once, and printed. Every error a user can cause is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

DEFAULT_SCENE = "maze"
DEFAULT_STEPS = {"cpu": 4, "cuda": 16}  # a teacher's steps; CPU: 4.6-5.2 frames/s with the small maze teacher on 2 cores
PREVIEW_FRAMES = 200                     # frames in the headless run's preview GIF, at most
HEADLESS_FRAMES = 100

EPILOG = """\
keys: F1 in the window lists them (scene keys, then H HUD, P pause, R reset, N new world,
Tab re-sync, [ ] fixed steps, 0 adaptive steps, F12 screenshot, Esc quit); gamepads work
when plugged in, at any time.

no display: play.py says so in one line and exits (status 2); --headless runs without one.

examples:
  python play.py --checkpoint runs/maze-teacher --side-by-side --record run.dsarec
  python play.py --checkpoint runs/maze-teacher --headless --frames 100
  python -m controls.recording export run.dsarec run.mp4
"""


def parse_args(argv=None) -> argparse.Namespace:
    import scenes
    from controls.session import steps_arg

    p = argparse.ArgumentParser(prog="python play.py", description="Play a dsa-sim world model with keyboard or gamepad.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", choices=scenes.names(), default=None,
                   help=f"scene to play (default: the checkpoint's scene, else {DEFAULT_SCENE})")
    p.add_argument("--checkpoint", default=None,
                   help="world checkpoint folder (default: the model shipped for the scene; with --rerun, the recorded one)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if present, else cpu)")
    p.add_argument("--fps", type=float, default=None,
                   help="tick rate of the loop, Hz (default: the scene's 20; a replay's recorded rate)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="per-frame latency budget, ms (default: one tick, shown only). Given with a distilled student "
                        "in adaptive mode, it is enforced: no denoising step starts that cannot finish in time. "
                        "With fixed steps (and with every many-step teacher) it is shown in the HUD and stored, not enforced")
    p.add_argument("--steps", type=steps_arg, default=None, metavar="N|adaptive",
                   help="denoising steps per frame. A distilled student defaults to 'adaptive' (DSA: its confidence "
                        "head ends each frame, 1 to k_max steps); N fixes the count. A many-step teacher has fixed "
                        f"steps only (default {DEFAULT_STEPS['cpu']} on CPU, {DEFAULT_STEPS['cuda']} on CUDA); "
                        "'adaptive' with a teacher says so in one line and uses that default")
    p.add_argument("--seed", type=int, default=None, help="world seed of the real scene that prompts the model (default: random, printed)")
    p.add_argument("--record", metavar="FILE", default=None,
                   help="write a recording of the session (default: none; headless runs always record, under recordings/)")
    p.add_argument("--replay", metavar="FILE", default=None, help="show a recording (no model needed)")
    p.add_argument("--rerun", action="store_true",
                   help="with --replay: feed the recording's prompts and actions to the model again and compare the frames")
    p.add_argument("--side-by-side", action="store_true",
                   help="show the real scene beside the model, on the same actions, with live PSNR (Tab re-syncs)")
    p.add_argument("--headless", action="store_true",
                   help="no window: make --frames frames from --policy input, write a recording and a preview GIF beside it")
    p.add_argument("--frames", type=int, default=None,
                   help=f"with --headless: frames to make (default {HEADLESS_FRAMES}; with --rerun: the whole recording)")
    p.add_argument("--policy", default="explore", choices=("explore", "random", "idle"),
                   help="with --headless: the scene policy that plays (default explore)")
    p.add_argument("--scale", type=int, default=None, help="integer window scale (default: about 512 px high); the window is resizable")
    p.add_argument("--keymap", metavar="FILE", default=None, help="JSON file of key and gamepad remappings (see controls/keymaps.py)")
    p.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H toggles it)")
    args = p.parse_args(argv)
    if args.frames is not None and not args.headless:
        p.error("--frames needs --headless (the window plays until you quit)")
    if args.frames is not None and args.frames < 1:
        p.error("--frames must be >= 1")
    if args.rerun and not args.replay:
        p.error("--rerun needs --replay FILE")
    if args.replay and args.record and not args.rerun:
        p.error("--record with --replay needs --rerun (a plain replay makes nothing new)")
    if args.headless and args.replay and not args.rerun:
        p.error("a replay without a window shows nothing: export it with `python -m controls.recording export FILE out.mp4`")
    return args


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def configure_steps(session, asked, budget_ms: float | None, device_type: str) -> int | None:
    """Steps per frame: a fixed count (returned), or None for adaptive allocation (DSA), which
    distilled students do by default and teachers cannot do at all."""
    default = DEFAULT_STEPS.get(device_type, DEFAULT_STEPS["cpu"])
    if session.adaptive_capable and asked in (None, "adaptive"):
        session.use_adaptive_steps(budget_ms=budget_ms)
        return None
    if asked == "adaptive":
        print(f"dsa-sim: this checkpoint is a many-step teacher, which has fixed steps only (adaptive steps "
              f"need a distilled student: python -m sim.train --stage distill); using {default} steps")
    steps = default if asked in (None, "adaptive") else asked
    session.use_fixed_steps(min(steps, session.max_steps) if asked is None else steps)
    return session.fixed_steps


def cpu_threads(args: argparse.Namespace, recording) -> int:
    """Torch threads on the CPU. A re-run uses the count its recording was made with, since the
    order of float sums, and so the frames, depend on it. A window leaves one core to itself:
    torch's worker threads wait for each other at every op, so one descheduled by the window's
    drawing (or anything else running) stalls the frame, and from the generator thread a second
    thread bought nothing anyway (maze teacher, 4 steps, 2 cores: 5.7 frames/s either way, p99
    184 ms with one thread, 217 ms with two). Headless runs have the machine to themselves and
    use every core (8.5 frames/s against 6.1 with one thread on an idle 2-core machine)."""
    import torch

    if args.rerun and recording.header.get("torch_threads"):
        return int(recording.header["torch_threads"])
    if args.headless:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def main(argv=None) -> int:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    args = parse_args(argv)
    from controls.keymaps import KeymapError
    from controls.recording import RecordingError
    from sim.checkpoint import CheckpointError

    try:
        return play(args)
    except (UserError, CheckpointError, RecordingError, KeymapError, FileNotFoundError) as e:
        print(f"dsa-sim: {e}", file=sys.stderr)
        return 2


def play(args: argparse.Namespace) -> int:
    from controls.loop import WindowConfig, display_problem
    from controls.recording import read_recording
    from scenes.core import TICK_RATE_HZ

    if not args.headless:
        problem = display_problem()
        if problem:
            raise UserError(f"{problem}. Run `python play.py --headless --frames N` to play without a window "
                            "(writes a recording and a preview GIF), or start one, e.g. `xvfb-run python play.py`")
    recording = None
    if args.replay:
        recording = read_recording(args.replay)
        h = recording.header
        cut = f", cut tail of {recording.cut_bytes} bytes left out" if recording.cut_bytes else ""
        print(f"dsa-sim: recording {args.replay}: scene {h['scene']}, seed {h['seed']}, {recording.num_frames} frames{cut}")
        if recording.num_frames == 0:
            raise UserError(f"recording {args.replay} holds no whole frame")
    fps = args.fps or (recording.header["tick_hz"] if recording else TICK_RATE_HZ)
    window = WindowConfig(fps=fps, scale=args.scale, side_by_side=args.side_by_side, hud=not args.no_hud)
    if recording is not None and not args.rerun:
        return watch(args, recording, window)
    return play_model(args, recording, window)


def watch(args: argparse.Namespace, recording, window) -> int:
    """A recording on screen at the ticks it was recorded at: no model, no scene."""
    from controls.generator import ReplayPlayer
    from controls.hud import PlayStats
    from controls.keymaps import Keyboard, help_lines, load_keymaps
    from controls.loop import run_window

    h = recording.header
    window.commands = frozenset({"help", "hud", "pause", "reset", "screenshot", "quit"})
    window.title = f"dsa-sim replay: {Path(args.replay).name}"
    system = {k: v for k, v in load_keymaps(args.keymap)[1].items() if v in window.commands}
    stats = PlayStats(tick_hz=window.fps, budget_ms=float(h.get("budget_ms") or 1000 / window.fps))
    run_window(ReplayPlayer(recording.records), stats, window, tuple(h["resolution"]),
               keyboard=Keyboard({}, h["actions"], system), help_rows=help_lines(h["scene"], h["actions"], {}, system))
    return 0


def load_session(args: argparse.Namespace, recording):
    """The engine on the chosen device (printed) and the session around it: (session, checkpoint, steps)."""
    import torch

    from controls.session import PlaySession
    from sim.bundle import shipped_checkpoint
    from sim.engine import WorldSim, pick_device

    scene = args.scene or (recording.header["scene"] if recording else None)
    checkpoint = args.checkpoint
    if checkpoint is None and recording is not None and recording.header.get("checkpoint_path") \
            and Path(recording.header["checkpoint_path"]).exists():
        checkpoint = recording.header["checkpoint_path"]
    if checkpoint is None:
        checkpoint = shipped_checkpoint(scene or DEFAULT_SCENE)
        if checkpoint is None:
            raise UserError(f"this install ships no trained model for scene {scene or DEFAULT_SCENE!r}; pass "
                            "--checkpoint DIR, a world checkpoint from `python -m sim.train` (README.md, 'Train')")
    device = pick_device(args.device)
    threads = ""
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(args, recording))
        n = torch.get_num_threads()
        threads = f", {n} thread{'s' if n != 1 else ''}"
    sim = WorldSim.load(checkpoint, num_sessions=1, device=device)
    print(f"dsa-sim: device {device} ({str(sim.dtype).replace('torch.', '')}{threads}); model {checkpoint}, "
          f"scene {sim.scene}, {sim.frame_shape[0]}x{sim.frame_shape[1]}")
    if recording is not None and recording.header.get("checkpoint") not in (None, sim.config.get("id")):
        print("dsa-sim: warning: this is not the checkpoint the recording was made with; the frames will differ")
    try:
        session = PlaySession(sim, scene)
        steps = configure_steps(session, args.steps, args.budget_ms, device.type)
    except ValueError as e:
        raise UserError(str(e)) from None
    return session, checkpoint, steps


def play_model(args: argparse.Namespace, recording, window) -> int:
    """Play (or re-run a recording) with the model, in the window or headless."""
    import numpy as np
    import torch

    from controls.gamepad import Gamepads, load_gamepad_maps
    from controls.generator import Generator, LiveInput, PolicyInput, RecordedInput
    from controls.hud import PlayStats, budget_text
    from controls.keymaps import Keyboard, help_lines, load_keymaps
    from controls.loop import default_record_path, run_headless, run_window
    from controls.recording import RecordingWriter, make_header

    keymaps, system_keys = load_keymaps(args.keymap)  # a bad file fails before the model loads
    pad_maps, pad_system, dead_zone = load_gamepad_maps(args.keymap)
    session, checkpoint, steps = load_session(args, recording)
    sim, fps = session.sim, window.fps
    seed = args.seed if args.seed is not None else (recording.header["seed"] if recording else secrets.randbelow(2**31 - 1))
    budget_ms = args.budget_ms if args.budget_ms is not None else 1000.0 / fps
    mode = "fixed" if steps is not None else session.allocation.mode
    stats = PlayStats(tick_hz=fps, budget_ms=budget_ms, steps_mode=mode)
    how = f"{steps} steps per frame" if steps is not None else \
        f"adaptive steps (1 to {session.max_steps}, confidence >= {session.allocation.tau:g})"
    print(f"dsa-sim: scene {session.scene}, world seed {seed}, {how}, tick {fps:g} Hz, {budget_text(stats)}")

    record_path = Path(args.record) if args.record else (default_record_path(session.scene, seed) if args.headless else None)
    writer = None
    if record_path is not None:
        header = make_header(session.scene, session.actions, sim.frame_shape[:2], seed, fps, sim.config.get("id"),
                             checkpoint_path=str(checkpoint), steps=steps if steps is not None else mode,
                             budget_ms=budget_ms,
                             side_by_side=args.side_by_side, source="rerun" if args.rerun else "play",
                             device=str(sim.device), torch_threads=torch.get_num_threads())
        writer = RecordingWriter(record_path, header)
        print(f"dsa-sim: recording to {record_path}")
    try:
        if args.headless:
            source = RecordedInput(recording.records) if args.rerun else PolicyInput(session, args.policy, seed)
            frames = args.frames or (recording.num_frames if args.rerun else HEADLESS_FRAMES)
            run_headless(session, source, frames, steps, stats, None if args.rerun else seed, writer)
        else:
            keyboard = Keyboard(keymaps.get(session.scene, {}), session.actions, system_keys)
            gamepads = Gamepads(pad_maps[session.scene], session.actions, pad_system, dead_zone) \
                if session.scene in pad_maps else None
            live = None if args.rerun else LiveInput(session.num_actions)
            producer = Generator(session, RecordedInput(recording.records) if args.rerun else live, steps, seed,
                                 prompt=not args.rerun)
            if args.rerun:  # anything that re-prompts would leave the recording's path
                window.commands = frozenset({"help", "hud", "pause", "screenshot", "quit"})
            window.title = f"dsa-sim: {session.scene}" + (" (re-run)" if args.rerun else "")
            rows = help_lines(session.scene, session.actions, keymaps.get(session.scene, {}),
                              {k: v for k, v in system_keys.items() if v in window.commands},
                              gamepads.help_lines() if gamepads else ())
            run_window(producer, stats, window, sim.frame_shape[:2], keyboard=keyboard, gamepads=gamepads,
                       live=live, help_rows=rows, writer=writer, rng=np.random.default_rng(seed))
    except KeyboardInterrupt:
        print("dsa-sim: interrupted")
    finally:
        if writer is not None:
            writer.close()
    report(stats, writer, side_by_side=args.side_by_side, preview=args.headless)
    return 0


def report(stats, writer, side_by_side: bool, preview: bool) -> None:
    """The end-of-run lines: frames, speed, latency, PSNR, re-run match, and the preview GIF."""
    import math

    from controls.recording import export

    s = stats.summary()
    fps_text = f", {stats.fields['fps']:.2f} frames/s" if "fps" in stats.fields else ""
    psnr_text = f", PSNR vs real {s['mean_psnr_db']:.2f} dB" if math.isfinite(s["mean_psnr_db"]) else ""
    print(f"dsa-sim: {s['frames']} frames{fps_text}, latency p50 {s['latency_p50_ms']:.0f} ms, "
          f"p99 {s['latency_p99_ms']:.0f} ms, mean steps {s['mean_steps']:.1f}{psnr_text}")
    equal, total = stats.fields.get("rerun", (0, 0))
    if total:
        print(f"dsa-sim: re-run: {equal}/{total} frames identical to the recording")
    if writer is not None:
        print(f"dsa-sim: wrote {writer.frames_written} frames to {writer.path}")
        if preview and writer.frames_written:
            gif = writer.path.with_suffix(".gif")
            n = export(writer.path, gif, side_by_side=side_by_side, max_frames=PREVIEW_FRAMES)
            print(f"dsa-sim: preview {gif} ({n} frames)")


if __name__ == "__main__":
    sys.exit(main())
