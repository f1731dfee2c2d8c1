"""The HUD: what the player loop measures (frame rates, latency, steps, confidence, budget, PSNR)
and how it is drawn over the window, plus the F1 help overlay.

`PlayStats` is plain Python (the headless run reports it too); the drawing functions import
pygame when called.

HUD lines:
    display 20.0 fps  model 8.3 fps  SLOW x2.4     the window's tick rate and the model's frame
                                                   rate; SLOW when the model makes fewer frames
                                                   than ticks (each frame stays up x ticks)
    latency p50 121 p99 160 ms  engine 118 ms      input taken -> frame on screen, last 100 frames;
                                                   engine: the model's own time for the last frame
    steps 4 fixed [history bars]                  steps of this frame (fixed, adaptive, budget) and
                                                   a bar per frame for the last 48
    confidence 0.93 | n/a                          the confidence head's last value (n/a: none)
    budget 50 ms (not enforced: fixed steps)       per-frame latency budget; enforced in mode budget
    PSNR 18.4 dB                                   dream vs reality, this frame
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

STEP_HISTORY = 48
WINDOW_FRAMES = 100   # latency percentiles over this many frames
RATE_SECONDS = 2.0    # frame rates over this long
SLOW_RATIO = 0.9      # model fps below this share of the tick rate: the HUD says SLOW


@dataclass
class PlayStats:
    tick_hz: float
    budget_ms: float
    steps_mode: str = "fixed"   # "fixed", "adaptive", "budget" (the budget is enforced), "recorded"
    ticks: deque = field(default_factory=lambda: deque(maxlen=400))        # perf_counter of loop ticks
    frame_times: deque = field(default_factory=lambda: deque(maxlen=400))  # perf_counter of new frames
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW_FRAMES))  # input -> on screen
    engine_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW_FRAMES))
    steps: deque = field(default_factory=lambda: deque(maxlen=STEP_HISTORY))
    psnr: deque = field(default_factory=lambda: deque(maxlen=WINDOW_FRAMES))
    confidence: float = float("nan")
    frames: int = 0
    all_latency_ms: list = field(default_factory=list)  # every frame, for the end-of-run summary
    all_psnr: list = field(default_factory=list)
    all_steps: list = field(default_factory=list)
    fields: dict = field(default_factory=dict)          # whatever else a run wants to report

    def tick(self, now: float | None = None) -> None:
        self.ticks.append(time.perf_counter() if now is None else now)

    def frame(self, record, started: float, shown: float) -> None:
        """A new frame went on screen at `shown`; its input was taken at `started`."""
        self.frames += 1
        self.frame_times.append(shown)
        self.latency_ms.append((shown - started) * 1e3)
        self.all_latency_ms.append((shown - started) * 1e3)
        self.engine_ms.append(record.latency_ms)
        self.steps.append(record.steps)
        self.all_steps.append(record.steps)
        self.confidence = record.confidence
        if record.psnr is not None:
            self.psnr.append(record.psnr)
            self.all_psnr.append(record.psnr)

    @staticmethod
    def _rate(times: deque, now: float) -> float:
        recent = [t for t in times if now - t <= RATE_SECONDS]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def display_fps(self, now: float | None = None) -> float:
        return self._rate(self.ticks, time.perf_counter() if now is None else now)

    def model_fps(self, now: float | None = None) -> float:
        return self._rate(self.frame_times, time.perf_counter() if now is None else now)

    def ticks_per_frame(self, now: float | None = None) -> float:
        """How many ticks each frame stays on screen (1 = the model keeps up)."""
        fps = self.model_fps(now)
        return self.tick_hz / fps if fps > 0 else math.inf

    def summary(self) -> dict:
        lat = np.asarray(self.all_latency_ms) if self.all_latency_ms else np.zeros(1)
        return {"frames": self.frames, "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p99_ms": float(np.percentile(lat, 99)),
                "mean_steps": float(np.mean(self.all_steps)) if self.all_steps else 0.0,
                "mean_psnr_db": float(np.mean(self.all_psnr)) if self.all_psnr else float("nan")}


BUDGET_NOTES = {"budget": "", "fixed": " (not enforced: fixed steps)", "recorded": " (as recorded)",
                "adaptive": " (not enforced: confidence decides; --budget-ms enforces one)"}


def budget_text(stats: PlayStats) -> str:
    return f"budget {stats.budget_ms:.0f} ms" + BUDGET_NOTES.get(stats.steps_mode, "")


def hud_lines(stats: PlayStats, show_psnr: bool, now: float | None = None) -> list[tuple[str, str]]:
    """(text, colour name) rows; colour names: "text", "warn", "bad"."""
    now = time.perf_counter() if now is None else now
    model, ratio = stats.model_fps(now), stats.ticks_per_frame(now)
    slow = stats.frames > 2 and model < SLOW_RATIO * stats.tick_hz
    rows = [(f"display {stats.display_fps(now):4.1f} fps  model {model:4.1f} fps"
             + (f"  SLOW x{ratio:.1f}" if slow and math.isfinite(ratio) else ""), "bad" if slow else "text")]
    if stats.latency_ms:
        lat = np.asarray(stats.latency_ms)
        rows.append((f"latency p50 {np.percentile(lat, 50):.0f} p99 {np.percentile(lat, 99):.0f} ms"
                     f"  engine {stats.engine_ms[-1]:.0f} ms", "text"))
    else:
        rows.append(("latency -", "text"))
    rows.append((f"steps {stats.steps[-1] if stats.steps else '-'} {stats.steps_mode}", "text"))
    conf = stats.confidence
    rows.append((f"confidence {conf:.2f}" if math.isfinite(conf) else "confidence n/a", "text"))
    over = stats.engine_ms and stats.engine_ms[-1] > stats.budget_ms
    rows.append((budget_text(stats), "warn" if over else "text"))
    if show_psnr and stats.psnr:
        rows.append((f"PSNR {stats.psnr[-1]:.1f} dB (dream vs reality)", "text"))
    return rows


COLOURS = {"text": (235, 235, 235), "warn": (255, 190, 60), "bad": (255, 90, 70), "dim": (160, 160, 170),
           "panel": (0, 0, 0, 165), "bar": (120, 200, 255)}


def load_font(size: int):
    import pygame

    # a monospace face keeps the numbers from jittering; pygame's own font if there is none
    return pygame.font.SysFont("dejavusansmono,liberationmono,monospace", size) or pygame.font.Font(None, size)


def _panel(surface, rect, opaque: bool = False) -> None:
    import pygame

    shade = pygame.Surface(rect.size, pygame.SRCALPHA)
    shade.fill((12, 12, 16, 235) if opaque else COLOURS["panel"])
    surface.blit(shade, rect.topleft)


def draw_hud(surface, font, stats: PlayStats, topleft: tuple[int, int], show_psnr: bool, max_steps: int) -> None:
    """The HUD panel; the steps row carries a bar graph of the steps history (one bar per frame)."""
    import pygame

    rows = hud_lines(stats, show_psnr)
    line_h = font.get_linesize()
    steps_w = font.size("steps 00 adaptive ")[0]
    graph_w = STEP_HISTORY * 3
    width = max(max(font.size(text)[0] for text, _ in rows), steps_w + graph_w) + 12
    rect = pygame.Rect(topleft, (width, len(rows) * line_h + 8))
    _panel(surface, rect)
    x, y = rect.x + 6, rect.y + 4
    for text, colour in rows:
        surface.blit(font.render(text, True, COLOURS[colour]), (x, y))
        if text.startswith("steps"):
            top = max(max_steps, max(stats.steps, default=1), 1)
            h_max = line_h - 4
            for i, s in enumerate(stats.steps):  # 2 px wide, height = steps / most steps
                h = max(1, round(h_max * s / top))
                surface.fill(COLOURS["bar"], pygame.Rect(x + steps_w + 3 * i, y + 2 + h_max - h, 2, h))
        y += line_h


def draw_slow_badge(surface, font, stats: PlayStats, topright: tuple[int, int]) -> None:
    """A small red mark that stays when the HUD is hidden: the model is behind the tick rate."""
    if stats.frames > 2 and stats.model_fps() < SLOW_RATIO * stats.tick_hz:
        label = font.render(f"SLOW x{min(stats.ticks_per_frame(), 99):.1f}", True, COLOURS["bad"])
        surface.blit(label, (topright[0] - label.get_width() - 4, topright[1] + 4))


def _sections(rows: list[tuple[str, str | None]]) -> list[list[tuple[str, str | None]]]:
    out: list[list] = []
    for row in rows:
        if row[1] is None or not out:
            out.append([])
        out[-1].append(row)
    return out


def draw_help(surface, font, rows: list[tuple[str, str | None]]) -> None:
    """The F1 overlay, centred: sections (a title, then key | what rows) flowed into as many
    columns as the window's height needs."""
    import pygame

    if not rows:
        return
    line_h = font.get_linesize()
    room = max(1, (surface.get_height() - 24) // line_h)
    columns: list[list] = [[]]
    for section in _sections(rows):
        if columns[-1] and len(columns[-1]) + len(section) > room:
            columns.append([])
        columns[-1].extend(section)
    widths = []
    for col in columns:
        key_w = max((font.size(k)[0] for k, v in col if v is not None), default=0) + 12
        text_w = max(max((font.size(v)[0] for k, v in col if v is not None), default=0) + key_w,
                     max((font.size(k)[0] for k, v in col if v is None), default=0))
        widths.append((key_w, text_w + 20))
    rect = pygame.Rect(0, 0, sum(w for _, w in widths) + 16, line_h * max(len(c) for c in columns) + 16)
    rect.center = surface.get_rect().center
    rect.top = max(rect.top, 0)
    _panel(surface, rect, opaque=True)
    x = rect.x + 10
    for col, (key_w, width) in zip(columns, widths):
        y = rect.y + 8
        for key, text in col:
            if text is None:
                surface.blit(font.render(key, True, COLOURS["warn"]), (x, y))
            else:
                surface.blit(font.render(key, True, COLOURS["text"]), (x + 8, y))
                surface.blit(font.render(text, True, COLOURS["dim"]), (x + 8 + key_w, y))
            y += line_h
        x += width


def draw_status(surface, font, text: str, colour: str = "text", bottom: bool = True) -> None:
    """One line on a dark strip at the bottom of the window (paused, prompting, messages)."""
    import pygame

    label = font.render(text, True, COLOURS[colour])
    h = label.get_height() + 6
    rect = pygame.Rect(0, surface.get_height() - h if bottom else 0, surface.get_width(), h)
    _panel(surface, rect)
    surface.blit(label, (6, rect.y + 3))
