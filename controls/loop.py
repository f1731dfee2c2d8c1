"""The play loop: a pygame window at a fixed tick rate, or a headless run.

Window, each tick:  events -> keymap (keyboard | gamepad) -> step (offer input, one frame due)
                    -> draw (newest frame, HUD, overlays) -> clock.tick(fps)
The model runs on the generator thread (`controls.generator`), so a slow frame never
holds up input or drawing: the window redraws the last frame and the HUD shows the model
falling behind. Everything that comes out (prompts, frames) is written to the recording
from this thread, in order, tagged with the tick it went on screen.

Headless: the same session and recording, no window and no clock: frames are made back to
back from a scene policy's input (or a recording's, for a re-run), as fast as the model goes.
"""
from __future__ import annotations

import datetime
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controls.generator import Result, produce
from controls.hud import (PlayStats, draw_help, draw_hud, draw_slow_badge, draw_status, load_font)
from controls.recording import FrameRecord, PromptRecord, RecordingWriter

MESSAGE_SECONDS = 2.5
GAP = 6  # px between dream and reality at scale 1 (scaled with the frames)


@dataclass
class WindowConfig:
    fps: float = 20.0                  # tick rate of the loop
    scale: int | None = None           # integer upscaling of the frames; None: about 512 px high
    side_by_side: bool = False         # reality beside the dream
    hud: bool = True
    screenshot_dir: Path = Path("screenshots")
    title: str = "dsa-sim"
    commands: frozenset = frozenset({"help", "hud", "pause", "reset", "new_world", "resync", "fewer_steps",
                                     "more_steps", "auto_steps", "screenshot", "quit"})  # the ones this mode allows
    max_ticks: int | None = None       # stop after this many ticks (tests, scripted captures)
    max_frames: int | None = None      # stop after this many new frames
    exit_when_finished: bool = False   # quit when the producer's input runs out (re-run, replay)


def display_problem() -> str | None:
    """Why no window can open here, or None. Opens pygame's display as a side effect."""
    import pygame

    asked = os.environ.get("SDL_VIDEODRIVER")
    if sys.platform.startswith(("linux", "freebsd", "openbsd")) and not asked \
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        # said before SDL probes (and prints its own complaints about) the drivers it has
        return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set, so no window can open"
    try:
        pygame.display.init()
    except pygame.error as e:
        return f"no display: pygame cannot open a window ({e})"
    # SDL quietly falls back to an invisible offscreen surface when there is no display; that
    # is only what someone wants who asked for it (tests set SDL_VIDEODRIVER=dummy)
    if pygame.display.get_driver() in ("offscreen", "dummy") and not asked:
        pygame.display.quit()
        return "no display: pygame found no screen to open a window on (no DISPLAY or WAYLAND_DISPLAY)"
    return None


def default_record_path(scene: str, seed: int, folder: str | os.PathLike = "recordings") -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{scene}-{seed}-{stamp}.dsarec"


@dataclass
class Screen:
    """The latest images and flags the window draws from."""
    dream: np.ndarray | None = None   # uint8 [H, W, 3]
    real: np.ndarray | None = None
    show_help: bool = False
    paused: bool = False
    prompting: bool = True
    finished: bool = False
    message: str = ""
    message_until: float = 0.0
    rerun_frames: int = 0
    rerun_equal: int = 0
    help_rows: list = field(default_factory=list)  # (keys, what) rows of the F1 overlay

    def say(self, text: str) -> None:
        self.message, self.message_until = text, time.perf_counter() + MESSAGE_SECONDS


_FONTS: dict[int, object] = {}


def _font(window_h: int):
    """The text size for a window this high (13 px at 512), loaded once per size."""
    size = int(np.clip(window_h // 39, 11, 22))
    if size not in _FONTS:
        _FONTS[size] = load_font(size)
    return _FONTS[size]


def _layout(window_size, frame_hw, panels: int) -> tuple[int, int, int]:
    """(scale, x0, y0): the largest integer scale whose panels fit the window, centred."""
    H, W = frame_hw
    win_w, win_h = window_size
    scale = max(1, min(win_w // (panels * W + (panels - 1) * GAP), win_h // H))
    content_w = panels * W * scale + (panels - 1) * GAP * scale
    return scale, (win_w - content_w) // 2, (win_h - H * scale) // 2


def _blit_frame(window, frame: np.ndarray, x: int, y: int, scale: int) -> None:
    import pygame

    surf = pygame.surfarray.make_surface(np.ascontiguousarray(frame.swapaxes(0, 1)))  # (W, H, 3)
    window.blit(pygame.transform.scale(surf, (frame.shape[1] * scale, frame.shape[0] * scale)), (x, y))


def _label(window, font, text: str, x: int, y: int) -> None:
    import pygame

    img = font.render(text, True, (235, 235, 235))
    shade = pygame.Surface((img.get_width() + 8, img.get_height() + 4), pygame.SRCALPHA)
    shade.fill((0, 0, 0, 165))
    window.blit(shade, (x, y))
    window.blit(img, (x + 4, y + 2))


def run_window(producer, stats: PlayStats, cfg: WindowConfig, frame_hw: tuple[int, int], *,
               keyboard=None, gamepads=None, live=None, help_rows=(), writer: RecordingWriter | None = None,
               rng: np.random.Generator | None = None) -> PlayStats:
    """Open the window and play until quit (or a limit of `cfg`); returns the stats."""
    import pygame

    pygame.display.init()
    pygame.font.init()
    pygame.joystick.init()  # pads plugged in now or later arrive as JOYDEVICEADDED events
    panels = 2 if cfg.side_by_side else 1
    H, W = frame_hw
    scale = cfg.scale or max(1, round(512 / H))
    size = (panels * W * scale + (panels - 1) * GAP * scale, H * scale)
    window = pygame.display.set_mode(size, pygame.RESIZABLE)
    pygame.display.set_caption(cfg.title)
    clock = pygame.time.Clock()
    screen = Screen(help_rows=list(help_rows))
    rng = rng or np.random.default_rng()
    steps_asked = producer.steps  # None: adaptive
    tick = frames = 0
    running = True
    producer.start()
    try:
        while running:
            now = time.perf_counter()
            shoot = False
            # ---- events -> commands and held keys -------------------------------------------
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    running = False
                    continue
                command = None
                if keyboard is not None:
                    command = keyboard.handle(event)
                if command is None and gamepads is not None:
                    command = gamepads.handle(event)
                    if gamepads.last_event:
                        screen.say(gamepads.last_event)
                        gamepads.last_event = ""
                if command is None:
                    continue
                if command not in cfg.commands:
                    screen.say(f"{command.replace('_', ' ')}: not in this mode")
                elif command == "quit":
                    running = False
                elif command == "help":
                    screen.show_help = not screen.show_help
                elif command == "hud":
                    cfg.hud = not cfg.hud
                elif command == "pause":
                    screen.paused = not screen.paused
                    producer.set_paused(screen.paused)
                elif command == "reset":
                    producer.command("prompt", None, "reset")  # the same world, from its start
                    screen.prompting, screen.finished = True, False
                    screen.say("reset: re-prompting from the real scene")
                elif command == "new_world":
                    seed = int(rng.integers(2**31 - 1))
                    producer.command("prompt", seed, "new-world")
                    screen.prompting = True
                    screen.say(f"new world (seed {seed})")
                elif command == "resync":
                    producer.command("resync")
                    screen.prompting = True
                    screen.say("re-sync: dream restarts from reality")
                elif command in ("fewer_steps", "more_steps"):
                    # from what was last asked for: the generator takes it up between frames
                    base = steps_asked or (stats.steps[-1] if stats.steps else 1)
                    steps_asked = int(np.clip(base + (1 if command == "more_steps" else -1), 1, producer.max_steps))
                    producer.command("steps", steps_asked)
                    screen.say(f"{steps_asked} fixed steps per frame" + ("  (0: adaptive again)" if producer.adaptive_capable else ""))
                elif command == "auto_steps":
                    if producer.adaptive_capable:
                        producer.command("steps", None)
                        steps_asked = None
                        screen.say("adaptive steps: the confidence head ends each frame")
                    else:
                        screen.say("fixed steps only: this model is a many-step teacher")
                elif command == "screenshot":
                    shoot = True
            # ---- keymap -> input; step -> one frame due ---------------------------------------
            if live is not None:
                held = keyboard.held_actions() if keyboard is not None else np.zeros(0, bool)
                pressed = keyboard.take_presses() if keyboard is not None else np.zeros(0, bool)
                if gamepads is not None:
                    held, pressed = held | gamepads.held_actions(), pressed | gamepads.take_presses()
                live.offer(held, pressed)
            producer.tick()
            stats.tick(now)
            stats.steps_mode = producer.steps_mode
            for result in producer.drain():
                frames += _show(result, screen, stats, writer, tick)
            # ---- draw -------------------------------------------------------------------------
            _draw(window, _font(window.get_height()), screen, stats, cfg, frame_hw, producer, writer)
            if shoot:
                cfg.screenshot_dir.mkdir(parents=True, exist_ok=True)
                path = cfg.screenshot_dir / f"dsa-sim-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}.png"
                pygame.image.save(window, str(path))
                screen.say(f"screenshot: {path}")
            pygame.display.flip()
            clock.tick(cfg.fps)
            tick += 1
            if (cfg.max_ticks is not None and tick >= cfg.max_ticks) or \
                    (cfg.max_frames is not None and frames >= cfg.max_frames) or \
                    (cfg.exit_when_finished and screen.finished):
                running = False
    finally:
        producer.stop()
        pygame.display.quit()
        _FONTS.clear()  # fonts die with the display module
    stats.fields["rerun"] = (screen.rerun_equal, screen.rerun_frames)
    return stats


def _show(result: Result, screen: Screen, stats: PlayStats, writer: RecordingWriter | None, tick: int) -> int:
    """Put one result on screen and into the recording; returns 1 for a new frame."""
    record = result.record
    if record is None:
        screen.finished = True
        screen.say("end of the recording")
        return 0
    record.tick = tick
    if writer is not None:
        writer.write(record)
    if isinstance(record, PromptRecord):
        screen.dream = screen.real = record.frames[-1]  # real until the first dreamt frame
        screen.prompting = False
        return 0
    screen.dream, screen.real = record.frame, record.real
    screen.prompting = False
    stats.frame(record, result.started, time.perf_counter())
    if result.recorded is not None:
        screen.rerun_frames += 1
        screen.rerun_equal += int(np.array_equal(result.recorded.frame, record.frame))
    return 1


def _draw(window, font, screen: Screen, stats: PlayStats, cfg: WindowConfig, frame_hw, producer, writer) -> None:
    window.fill((16, 16, 20))
    panels = 2 if cfg.side_by_side else 1
    scale, x0, y0 = _layout(window.get_size(), frame_hw, panels)
    H, W = frame_hw
    if screen.dream is not None:
        _blit_frame(window, screen.dream, x0, y0, scale)
        if cfg.side_by_side:
            xr = x0 + (W + GAP) * scale
            if screen.real is not None:
                _blit_frame(window, screen.real, xr, y0, scale)
            # above the status strip, which takes the bottom line of the window
            y = min(y0 + H * scale, window.get_height() - font.get_linesize() - 6) - font.get_linesize() - 8
            _label(window, font, "dream (model)", x0 + 4, y)
            psnr = f"  PSNR {stats.psnr[-1]:.1f} dB" if stats.psnr else ""
            _label(window, font, f"reality (scene){psnr}", xr + 4, y)
    if cfg.hud and not screen.show_help:
        draw_hud(window, font, stats, (x0 + 4, y0 + 4), show_psnr=cfg.side_by_side, max_steps=producer.max_steps if producer.adaptive_capable else 1)
    elif not screen.show_help:
        draw_slow_badge(window, font, stats, (x0 + W * scale, y0))
    if screen.show_help:
        draw_help(window, font, screen.help_rows)
    now = time.perf_counter()
    if now < screen.message_until:
        draw_status(window, font, screen.message)
    elif screen.finished:
        draw_status(window, font, "end of the recording: R plays it again, Esc quits", "warn")
    elif screen.prompting:
        draw_status(window, font, "prompting the model with real frames...", "warn")
    elif screen.paused:
        draw_status(window, font, "PAUSED (P resumes)", "warn")
    elif screen.rerun_frames:
        draw_status(window, font, f"re-run: {screen.rerun_equal}/{screen.rerun_frames} frames identical to the recording")
    elif writer is not None:
        draw_status(window, font, f"REC {writer.path.name}  {writer.frames_written} frames", "bad")


def run_headless(session, source, num_frames: int, steps: int, stats: PlayStats, seed: int | None,
                 writer: RecordingWriter | None = None, progress: bool = True) -> PlayStats:
    """Make `num_frames` frames back to back. `seed`: prompt from that world first (None: the
    source's first record is the prompt, as in a re-run)."""
    from tqdm import tqdm

    if seed is not None:
        t = time.perf_counter()
        record = session.prompt(seed, "start")
        if writer is not None:
            writer.write(record)
        stats.fields["prompt_ms"] = (time.perf_counter() - t) * 1e3
    equal = total = 0
    start = time.perf_counter()
    with tqdm(total=num_frames, desc="headless", unit="frame", disable=not progress, leave=False) as bar:
        while stats.frames < num_frames:
            result = produce(session, source, steps)
            record = result.record
            if record is None:
                break
            record.tick = stats.frames
            if writer is not None:
                writer.write(record)
            if isinstance(record, FrameRecord):
                stats.tick(result.finished)
                stats.frame(record, result.started, result.finished)
                bar.update(1)
                if result.recorded is not None:
                    total += 1
                    equal += int(np.array_equal(result.recorded.frame, record.frame))
    seconds = time.perf_counter() - start
    stats.fields.update(seconds=seconds, fps=stats.frames / seconds if seconds > 0 else math.nan, rerun=(equal, total))
    return stats
