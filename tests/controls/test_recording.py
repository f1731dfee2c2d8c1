"""Recordings: round trip, cut tails (by truncation and by kill -9), bad files, export, training data."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scenes
from controls import recording as rec
from controls.recording import (FrameRecord, PromptRecord, RecordingError, RecordingReader, RecordingWriter,
                                export, make_header, read_recording)

ROOT = Path(__file__).resolve().parents[2]
H = W = 16
A = 3


def header(codec="zlib", **kw):
    h = make_header("maze", ["a", "b", "c"], (H, W), seed=5, tick_hz=20, checkpoint="abc", **kw)
    h["frame_codec"] = codec
    return h


def records(n, seed=0, real=True):
    rng = np.random.default_rng(seed)
    out = [PromptRecord(0, rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8), np.zeros((2, A), np.float32), 5, 99)]
    for t in range(n):
        out.append(FrameRecord(t, (rng.random(A) > 0.5).astype(np.float32), rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                               steps=int(rng.integers(1, 9)), confidence=float(rng.random()), latency_ms=float(rng.random() * 100),
                               real=rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if real else None,
                               psnr=float(rng.random() * 40) if real else None))
    return out


def write(path, recs, **kw):
    with RecordingWriter(path, header(**kw)) as w:
        for r in recs:
            w.write(r)
    return path


def same(a, b):
    assert type(a) is type(b)
    for k, v in vars(a).items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, getattr(b, k)), k
        else:
            assert v == getattr(b, k), k


@pytest.mark.parametrize("codec", ["zlib", "raw"])
@pytest.mark.parametrize("real", [True, False])
def test_round_trip(tmp_path, codec, real):
    recs = records(7, real=real)
    path = write(tmp_path / "r.dsarec", recs, codec=codec)
    back = read_recording(path)
    assert back.cut_bytes == 0 and back.num_frames == 7 and len(back.prompts) == 1
    assert back.header["scene"] == "maze" and back.header["actions"] == ["a", "b", "c"] and back.header["seed"] == 5
    for a, b in zip(recs, back.records):
        same(a, b)
    assert back.frames.shape == (7, H, W, 3) and back.actions.shape == (7, A)
    assert "7 whole frames" in rec.describe(path)


def test_writer_rejects_frames_of_the_wrong_shape(tmp_path):
    with RecordingWriter(tmp_path / "r.dsarec", header()) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.write(FrameRecord(0, np.zeros(A), np.zeros((H + 1, W, 3), np.uint8), 1, 0.0, 1.0))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A recording and the byte offset at which each of its records ends."""
    path = write(tmp_path_factory.mktemp("cut") / "whole.dsarec", records(6, real=False))
    data = path.read_bytes()
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    ends = []
    for _ in unpacker:
        ends.append(unpacker.tell())
    return data, ends  # ends[0]: header, ends[1]: prompt, ends[2:]: frames


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1))
def test_a_cut_recording_reads_up_to_its_last_whole_frame(tmp_path, whole, frac):
    data, ends = whole
    cut = ends[0] + int(frac * (len(data) - ends[0]))
    path = tmp_path / "cut.dsarec"
    path.write_bytes(data[:cut])
    back = read_recording(path)
    whole_records = sum(e <= cut for e in ends[1:])
    assert len(back.records) == whole_records
    assert back.num_frames == max(0, whole_records - 1)
    assert back.cut_bytes == cut - ([ends[0]] + [e for e in ends if e <= cut])[-1]


def test_a_recording_killed_mid_write_reads_up_to_its_last_whole_frame(tmp_path):
    path = tmp_path / "killed.dsarec"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from controls.recording import RecordingWriter, FrameRecord, make_header
        w = RecordingWriter({str(path)!r}, make_header("maze", ["a"], (64, 64), 1, 20))
        rng = np.random.default_rng(0)
        t = 0
        while True:  # big incompressible frames, so the kill lands inside a write now and then
            w.write(FrameRecord(t, np.ones(1), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), 1, 0.5, 1.0))
            t += 1
            if t == 5:
                print("go", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == b"go"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    back = read_recording(path)
    assert back.num_frames >= 5
    ticks = [r.tick for r in back.frame_records]
    assert ticks == list(range(len(ticks)))
    assert all(r.frame.shape == (64, 64, 3) for r in back.frame_records)


def test_bad_files_get_one_clear_error(tmp_path):
    path = write(tmp_path / "ok.dsarec", records(2))
    data = path.read_bytes()
    cases = {"empty": b"", "not msgpack": b"\xc1\xc1\xc1 hello", "another format": msgpack.packb({"format": "png"}),
             "header cut": data[:20]}
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.dsarec"
        bad.write_bytes(blob)
        with pytest.raises(RecordingError, match="not a readable dsa-sim recording"):
            RecordingReader(bad)
    newer = tmp_path / "newer.dsarec"
    newer.write_bytes(msgpack.packb({**header(), "version": 99}))
    with pytest.raises(RecordingError, match="version 99"):
        RecordingReader(newer)
    # a whole record that is not one: corrupt, not a cut tail
    broken = tmp_path / "broken.dsarec"
    broken.write_bytes(data + msgpack.packb({"kind": "frame", "tick": 9}))
    with pytest.raises(RecordingError, match="corrupt record"):
        read_recording(broken)
    with pytest.raises(FileNotFoundError):
        RecordingReader(tmp_path / "nope.dsarec")
    assert rec.main(["info", str(tmp_path / "empty.dsarec")]) == 2


def count_video_frames(path):
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return reader.count_frames()
    finally:
        reader.close()


def test_export_mp4_and_gif_have_the_right_frame_count(tmp_path):
    recs = records(9)
    for i, r in enumerate(recs[1:]):
        r.tick = 2 * i  # each frame stayed on screen for two ticks
    path = write(tmp_path / "r.dsarec", recs)
    assert rec.main(["export", str(path), str(tmp_path / "out.mp4")]) == 0
    assert count_video_frames(tmp_path / "out.mp4") == 9
    assert export(path, tmp_path / "slow.mp4", real_time=True, side_by_side=True) == 17
    assert count_video_frames(tmp_path / "slow.mp4") == 17
    import imageio.v2 as imageio

    assert export(path, tmp_path / "out.gif", scale=1) == 9
    gif = imageio.mimread(tmp_path / "out.gif")
    assert len(gif) == 9 and gif[0].shape[:2] == (H, W)
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        export(path, tmp_path / "out.avi")


def test_a_recording_is_training_data_that_replays_from_its_seed(tmp_path):
    """Real frames of a recording come out of sim.data as clips that the scene replays bit for bit,
    across a re-sync prompt in the middle and up to a cut tail."""
    from sim.data import ShardClips

    size, K, n1, n2 = 32, 3, 20, 10
    game = scenes.make_batch("maze", 1, width=size, height=size)
    policy = scenes.make_policy(game, "random", seed=1)
    frames = [game.reset([77])[0]]
    actions = [np.zeros(6, np.float32)]
    for _ in range(K + n1 + n2 - 1):
        keys = policy(game)
        game.step(keys)
        frames.append(game.render()[0])
        actions.append(keys[0].astype(np.float32))
    frames, actions = np.stack(frames), np.stack(actions)

    def shown(t):  # what the model showed; the real frame is the data
        return FrameRecord(t, actions[t], np.zeros_like(frames[t]), 1, 0.5, 1.0, real=frames[t], psnr=0.0)

    path = tmp_path / "play.dsarec"
    with RecordingWriter(path, make_header("maze", game.ACTIONS, (size, size), seed=77, tick_hz=20)) as w:
        w.write(PromptRecord(0, frames[:K], actions[:K], 77, 1))
        for t in range(K, K + n1):
            w.write(shown(t))
        end = K + n1  # the dream restarts from reality's last K frames
        w.write(PromptRecord(end, frames[end - K:end], actions[end - K:end], 77, 2, "resync"))
        for t in range(end, end + n2):
            w.write(shown(t))
        w._file.write(b"\x85\xa4kind")  # a cut tail, as after kill -9
    data = ShardClips([path], batch_size=4, epochs=1)
    assert data.num_clips == ((K + n1 - 12) // 6 + 1) + ((K + n2 - 12) // 6 + 1)
    batches = list(data)
    assert sum(len(b["frames"]) for b in batches) == data.num_clips
    starts = []
    for b in batches:
        assert b["frames"].shape[1:] == (12, size, size, 3) and b["actions"].shape[1:] == (12, 6)
        for clip in range(len(b["frames"])):
            start = int(b["start_tick"][clip])
            starts.append(start)
            assert int(b["seed"][clip]) == 77
            assert np.array_equal(b["frames"][clip].numpy(), frames[start:start + 12])
            assert np.array_equal(b["actions"][clip].numpy(), actions[start:start + 12])
    assert max(starts) >= end - K, "clips of the timeline after the re-sync"
