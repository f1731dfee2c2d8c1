"""Recordings of play sessions: an append-only msgpack stream, its writer, reader and export.

    with RecordingWriter("run.dsarec", header) as rec:   # header: see `make_header`
        rec.write(PromptRecord(...))                     # what the engine was prompted with
        rec.write(FrameRecord(...))                      # one per generated frame
    recording = read_recording("run.dsarec")             # everything in memory
    for record in RecordingReader("run.dsarec"): ...     # streamed, for long files

    python -m controls.recording info run.dsarec
    python -m controls.recording export run.dsarec out.mp4 [--scale 2] [--side-by-side]

## Format (version 1)

A file is a sequence of msgpack maps, each flushed as soon as it is written, so a crash
(even kill -9) loses at most the record being written; a reader stops at the last whole
record and reports the cut tail. The first map is the header:

| key           | value                                                                  |
|---------------|------------------------------------------------------------------------|
| format        | "dsa-sim-recording"                                                    |
| version       | 1                                                                      |
| scene         | scene name, e.g. "maze"                                               |
| checkpoint    | checkpoint id (sha256 of its manifest), or null for scene-only runs    |
| checkpoint_path | where the checkpoint was loaded from (a hint for re-runs)            |
| seed          | world seed of the first prompt                                         |
| resolution    | [H, W] of every frame                                                  |
| actions       | action names, in action-vector order                                   |
| tick_hz       | tick rate of the loop that recorded it                                 |
| frame_codec   | "zlib" (deflate of the raw bytes) or "raw"                             |
| steps, budget_ms, side_by_side, device, torch_threads, created, source | facts about the run (steps: the fixed count, or "adaptive" / "budget"); a re-run on the CPU uses torch_threads |

Then records, in the order they happened, each with "kind":

| kind     | keys                                                                          |
|----------|-------------------------------------------------------------------------------|
| "prompt" | tick, frames (K frames, uint8 [K, H, W, 3] bytes), actions [K][A], world_seed, noise_seed, reason ("start", "reset", "new-world", "resync") |
| "frame"  | tick, action [A], frame (uint8 [H, W, 3] bytes), steps, confidence, latency_ms, and optionally real (the scene's frame under the same actions) and psnr |

A prompt resets the engine: the frames that follow it continue from its last frame. The
prompt frames are real frames, so prompt + frames is a clip of consecutive ticks, which is
how `sim.data` reads a recording as training data. `tick` counts loop ticks: a frame is
on screen from its tick until the next frame's tick (more than one tick apart when the
model was slower than the tick rate).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import msgpack
import numpy as np

FORMAT = "dsa-sim-recording"
VERSION = 1
SUFFIX = ".dsarec"
HEADER_KEYS = ("scene", "seed", "resolution", "actions", "tick_hz", "frame_codec")
CODECS = ("zlib", "raw")
ZLIB_LEVEL = 1  # 4-17x smaller on scene frames at ~0.3 ms per 128x128 frame; higher levels buy little


class RecordingError(ValueError):
    """A recording that cannot be read: not a recording, a corrupt header or record."""


# ---- records ----------------------------------------------------------------------------------
@dataclass
class PromptRecord:
    """The engine was (re-)prompted with these real frames and the actions that produced them."""
    tick: int
    frames: np.ndarray   # uint8 [K, H, W, 3]
    actions: np.ndarray  # float32 [K, A]; actions[0] is zeros right after a world reset
    world_seed: int
    noise_seed: int
    reason: str = "start"


@dataclass
class FrameRecord:
    """One generated frame and what it took."""
    tick: int
    action: np.ndarray   # float32 [A], the keys held while it was generated
    frame: np.ndarray    # uint8 [H, W, 3]
    steps: int
    confidence: float    # nan where the engine has no confidence head output
    latency_ms: float    # engine time for this frame
    real: np.ndarray | None = None  # uint8 [H, W, 3], the scene under the same actions
    psnr: float | None = None       # dB of frame against real


Record = PromptRecord | FrameRecord


def make_header(scene: str, actions: Sequence[str], resolution: Sequence[int], seed: int, tick_hz: float,
                checkpoint: str | None = None, **facts: Any) -> dict:
    """A version-1 header; `facts` (steps, budget_ms, side_by_side, ...) ride along."""
    return {"format": FORMAT, "version": VERSION, "scene": scene, "checkpoint": checkpoint, "seed": int(seed),
            "resolution": [int(r) for r in resolution], "actions": list(actions), "tick_hz": float(tick_hz),
            "frame_codec": "zlib", "created": datetime.datetime.now().isoformat(timespec="seconds"), **facts}


# ---- writing ----------------------------------------------------------------------------------
def _encode(frames: np.ndarray, codec: str) -> bytes:
    raw = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    return zlib.compress(raw, ZLIB_LEVEL) if codec == "zlib" else raw


class RecordingWriter:
    """Appends records to a recording file, flushing each one (so a kill -9 cuts at most one)."""

    def __init__(self, path: str | os.PathLike, header: dict):
        missing = [k for k in HEADER_KEYS if k not in header]
        if missing or header.get("frame_codec") not in CODECS:
            raise ValueError(f"recording header lacks {missing} or has an unknown frame_codec; build it with make_header")
        self.path = Path(path)
        self.header = dict(header)
        self.shape = (*self.header["resolution"], 3)
        self.num_actions = len(self.header["actions"])
        self.codec = self.header["frame_codec"]
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._put(self.header)

    def _put(self, obj: dict) -> None:
        self._file.write(msgpack.packb(obj, use_bin_type=True))
        # to the OS, not the disk: a killed process loses nothing the kernel holds; an fsync
        # per frame would cost milliseconds on slow disks for protection against power loss only
        self._file.flush()

    def _check(self, frames: np.ndarray, lead: tuple[int, ...], what: str) -> None:
        if frames.shape != (*lead, *self.shape) or frames.dtype != np.uint8:
            raise ValueError(f"{what} must be uint8 {(*lead, *self.shape)}, got {frames.dtype} {frames.shape}")

    def write(self, record: Record) -> None:
        if isinstance(record, PromptRecord):
            K = len(record.actions)
            self._check(record.frames, (K,), "prompt frames")
            self._put({"kind": "prompt", "tick": int(record.tick), "frames": _encode(record.frames, self.codec),
                       "actions": np.asarray(record.actions, np.float32).reshape(K, self.num_actions).tolist(),
                       "world_seed": int(record.world_seed), "noise_seed": int(record.noise_seed),
                       "reason": record.reason})
            return
        self._check(record.frame, (), "frame")
        obj = {"kind": "frame", "tick": int(record.tick),
               "action": np.asarray(record.action, np.float32).reshape(self.num_actions).tolist(),
               "frame": _encode(record.frame, self.codec), "steps": int(record.steps),
               "confidence": float(record.confidence), "latency_ms": float(record.latency_ms)}
        if record.real is not None:
            self._check(record.real, (), "real frame")
            obj["real"] = _encode(record.real, self.codec)
            obj["psnr"] = None if record.psnr is None else float(record.psnr)
        self._put(obj)
        self.frames_written += 1

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- reading ----------------------------------------------------------------------------------
class RecordingReader:
    """Streams the records of a recording. The header is read and checked on construction.

    After iterating: `frames_read` whole frame records, `cut_bytes` bytes after the last
    whole record (a file cut mid-write, e.g. by kill -9; 0 for a clean file).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no recording at {self.path}")
        self.size = self.path.stat().st_size
        self.frames_read = 0
        self.cut_bytes = 0
        with open(self.path, "rb") as f:
            unpacker = self._unpacker(f)
            try:
                header = next(unpacker, None)
            except (msgpack.UnpackException, ValueError) as e:
                header = e
            self._start = unpacker.tell()
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            what = "the file is empty" if self.size == 0 else \
                "no recording header at its start: corrupt, cut inside the header, or another kind of file"
            raise RecordingError(f"{self.path} is not a readable dsa-sim recording ({what}); "
                                 "record a new one with `python play.py --record FILE`")
        if not isinstance(header.get("version"), int) or header["version"] > VERSION:
            raise RecordingError(f"{self.path} has recording format version {header.get('version')!r}; this "
                                 f"reader knows up to {VERSION}: update dsa-sim")
        missing = [k for k in HEADER_KEYS if k not in header]
        if missing or header["frame_codec"] not in CODECS:
            raise RecordingError(f"{self.path} has a corrupt header (missing {missing} or unknown frame_codec "
                                 f"{header.get('frame_codec')!r})")
        self.header = header
        self.shape = (*header["resolution"], 3)
        self.num_actions = len(header["actions"])

    @staticmethod
    def _unpacker(f) -> msgpack.Unpacker:
        # strict_map_key=False: nothing here uses non-string keys, but a hand-made file might
        return msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=512 * 2**20)

    def _decode(self, blob: Any, lead: tuple[int, ...], where: str) -> np.ndarray:
        try:
            raw = zlib.decompress(blob) if self.header["frame_codec"] == "zlib" else bytes(blob)
            return np.frombuffer(raw, np.uint8).reshape(*lead, *self.shape).copy()  # writable, as frames usually are
        except (zlib.error, ValueError, TypeError) as e:
            raise RecordingError(f"{self.path}: corrupt frame bytes in {where} ({e})") from None

    def _record(self, obj: Any, n: int) -> Record:
        where = f"record {n} (after {self.frames_read} frames)"
        try:
            kind = obj["kind"]
            if kind == "prompt":
                actions = np.asarray(obj["actions"], np.float32).reshape(-1, self.num_actions)
                return PromptRecord(int(obj["tick"]), self._decode(obj["frames"], (len(actions),), where), actions,
                                    int(obj["world_seed"]), int(obj["noise_seed"]), str(obj.get("reason", "start")))
            if kind == "frame":
                real = obj.get("real")
                return FrameRecord(int(obj["tick"]), np.asarray(obj["action"], np.float32).reshape(self.num_actions),
                                   self._decode(obj["frame"], (), where), int(obj["steps"]), float(obj["confidence"]),
                                   float(obj["latency_ms"]), None if real is None else self._decode(real, (), where),
                                   None if obj.get("psnr") is None else float(obj["psnr"]))
            raise KeyError(f"kind {kind!r}")
        except RecordingError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise RecordingError(f"{self.path}: corrupt {where}: {type(e).__name__} {e}") from None

    def __iter__(self) -> Iterator[Record]:
        self.frames_read = 0
        with open(self.path, "rb") as f:
            f.seek(self._start)
            unpacker = self._unpacker(f)
            end, n = self._start, 0
            while True:
                try:
                    obj = next(unpacker)
                except StopIteration:  # whatever is left is a cut tail: an incomplete record
                    break
                except (msgpack.UnpackException, ValueError) as e:
                    raise RecordingError(f"{self.path}: unreadable bytes after byte {end} ({type(e).__name__}); the "
                                         f"first {self.frames_read} frames are whole") from None
                end = self._start + unpacker.tell()
                record = self._record(obj, n)
                n += 1
                if isinstance(record, FrameRecord):
                    self.frames_read += 1
                yield record
            self.cut_bytes = self.size - end


@dataclass
class Recording:
    """A whole recording in memory. Frame arrays hold the frame records in order."""
    path: Path
    header: dict
    records: list[Record] = field(repr=False)
    cut_bytes: int = 0

    @property
    def frame_records(self) -> list[FrameRecord]:
        return [r for r in self.records if isinstance(r, FrameRecord)]

    @property
    def prompts(self) -> list[PromptRecord]:
        return [r for r in self.records if isinstance(r, PromptRecord)]

    @property
    def num_frames(self) -> int:
        return len(self.frame_records)

    @property
    def frames(self) -> np.ndarray:
        """uint8 [N, H, W, 3], the generated frames."""
        fr = self.frame_records
        return np.stack([r.frame for r in fr]) if fr else np.zeros((0, *self.header["resolution"], 3), np.uint8)

    @property
    def actions(self) -> np.ndarray:
        """float32 [N, A]"""
        return np.array([r.action for r in self.frame_records], np.float32).reshape(-1, len(self.header["actions"]))


def read_recording(path: str | os.PathLike) -> Recording:
    """Every whole record of a recording; a cut tail is left out (see `cut_bytes`)."""
    reader = RecordingReader(path)
    records = list(reader)
    return Recording(reader.path, reader.header, records, reader.cut_bytes)


# ---- export -----------------------------------------------------------------------------------
def _panel(record: FrameRecord, side_by_side: bool, scale: int) -> np.ndarray:
    image = record.frame
    if side_by_side and record.real is not None:
        gap = np.full((image.shape[0], 2, 3), 40, np.uint8)
        image = np.concatenate([image, gap, record.real], axis=1)  # dream | reality
    return image.repeat(scale, 0).repeat(scale, 1) if scale > 1 else image


def _held(reader: RecordingReader, real_time: bool) -> Iterator[tuple[FrameRecord, int]]:
    """(frame record, video frames to show it for): one each, or the ticks it stayed on screen."""
    previous = None
    for record in reader:
        if isinstance(record, FrameRecord):
            if previous is not None:
                yield previous, max(1, record.tick - previous.tick) if real_time else 1
            previous = record
    if previous is not None:
        yield previous, 1


def export(path: str | os.PathLike, out: str | os.PathLike, fps: float | None = None, scale: int = 2,
           side_by_side: bool = False, real_time: bool = False, max_frames: int | None = None) -> int:
    """Write the frames of a recording as MP4 or GIF (by `out`'s suffix); returns frames written.

    One video frame per recorded frame at the recording's tick rate (or `fps`). real_time:
    repeat each frame for the ticks it stayed on screen, so the video plays at the speed seen.
    side_by_side: dream | reality, where the recording holds real frames.
    """
    import imageio.v2 as imageio

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".mp4", ".gif"):
        raise ValueError(f"export writes .mp4 or .gif, not {out.name!r}")
    reader = RecordingReader(path)
    fps = float(fps or reader.header["tick_hz"])
    if kind == ".mp4":
        # H = W = 128 * scale is a multiple of 16 for the codec; odd sizes would be resized by ffmpeg
        writer = imageio.get_writer(out, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=2, ffmpeg_log_level="error")
    else:
        writer = imageio.get_writer(out, format="GIF", mode="I", duration=1000.0 / fps, loop=0)
    written = 0
    try:
        for record, repeats in _held(reader, real_time):
            for _ in range(repeats):
                if max_frames is not None and written >= max_frames:
                    return written
                writer.append_data(_panel(record, side_by_side, scale))
                written += 1
    finally:
        writer.close()
    return written


# ---- command line -----------------------------------------------------------------------------
def describe(path: str | os.PathLike) -> str:
    """A few lines about a recording: header, frames, prompts, steps, latency, cut tail."""
    reader = RecordingReader(path)
    h = reader.header
    steps, latency, conf, psnrs, prompts = [], [], [], [], []
    for r in reader:
        if isinstance(r, PromptRecord):
            prompts.append(r.reason)
        else:
            steps.append(r.steps)
            latency.append(r.latency_ms)
            conf.append(r.confidence)
            if r.psnr is not None:
                psnrs.append(r.psnr)
    lines = [f"{reader.path}: {FORMAT} v{h['version']}, scene {h['scene']!r}, seed {h['seed']}, "
             f"{h['resolution'][0]}x{h['resolution'][1]}, {h['tick_hz']:g} Hz, checkpoint {h.get('checkpoint') or '-'}",
             f"actions: {', '.join(h['actions'])}",
             f"{reader.frames_read} whole frames, {len(prompts)} prompts ({', '.join(prompts) or '-'})"]
    if steps:
        finite = [c for c in conf if math.isfinite(c)]
        lines.append(f"steps per frame mean {np.mean(steps):.2f}; engine latency p50 {np.percentile(latency, 50):.1f} ms, "
                     f"p99 {np.percentile(latency, 99):.1f} ms; confidence "
                     + (f"mean {np.mean(finite):.3f}" if finite else "n/a"))
    if psnrs:
        lines.append(f"dream vs reality: PSNR mean {np.mean(psnrs):.2f} dB over {len(psnrs)} frames")
    lines.append(f"cut tail: {reader.cut_bytes} bytes after the last whole record" if reader.cut_bytes
                 else "file ends on a whole record")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controls.recording", description="Inspect or export a dsa-sim recording.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the header and a summary")
    info.add_argument("file", help="a recording (.dsarec)")
    ex = sub.add_parser("export", help="write the frames as MP4 or GIF")
    ex.add_argument("file", help="a recording (.dsarec)")
    ex.add_argument("out", help="output file, .mp4 or .gif")
    ex.add_argument("--fps", type=float, default=None, help="frames per second (default: the recording's tick rate)")
    ex.add_argument("--scale", type=int, default=2, help="integer upscaling, nearest neighbour (default 2)")
    ex.add_argument("--side-by-side", action="store_true", help="dream | reality, where the recording holds real frames")
    ex.add_argument("--real-time", action="store_true",
                    help="hold each frame for the ticks it was on screen, so the video plays at the speed seen")
    args = p.parse_args(argv)
    try:
        if args.command == "info":
            print(describe(args.file))
        else:
            n = export(args.file, args.out, fps=args.fps, scale=args.scale, side_by_side=args.side_by_side,
                       real_time=args.real_time)
            print(f"wrote {n} frames to {args.out}")
    except (RecordingError, FileNotFoundError, ValueError) as e:
        print(f"dsa-sim: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
