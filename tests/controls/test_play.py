"""The play loop with a tiny model on the CPU: headless runs, the window (SDL dummy driver),
pacing of the generator thread, re-runs, replays and the errors a user can cause."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import time

import numpy as np
import pygame
import pytest
import torch

import play
from controls.generator import Generator, LiveInput, ReplayPlayer
from controls.hud import PlayStats
from controls.keymaps import KEYMAPS, SYSTEM_KEYS, Keyboard
from controls.loop import WindowConfig, display_problem, run_window
from controls.recording import FrameRecord, PromptRecord, read_recording
from controls.session import PlaySession
from sim.autoencoder import Autoencoder, AutoencoderConfig
from sim.bundle import save_world
from sim.engine import WorldSim
from sim.model import ModelConfig, WorldModel

SIZE = 32
MAZE = ["forward", "back", "turn_left", "turn_right", "strafe_left", "strafe_right"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny maze world at 32x32 (latent 4x4)."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.from_name("tiny"))
    model = WorldModel(ModelConfig.from_name("tiny", action_dim=6, latent_channels=ae.config.latent_channels,
                                             latent_h=SIZE // 8, latent_w=SIZE // 8))
    with torch.no_grad():  # zero-initialised output layers would make every frame the same
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-maze"
    save_world(folder, {"scene": "maze", "actions": MAZE, "resolution": [SIZE, SIZE]}, ae, model)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two cores shared with other work: torch's worker threads wait for each other at every op,
    so one descheduled worker stalls a step (hundreds of ms instead of a few). One thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The same kind of tiny world, marked as a distilled few-step student (k_max 4)."""
    torch.manual_seed(1)
    ae = Autoencoder(AutoencoderConfig.from_name("tiny"))
    model = WorldModel(ModelConfig.from_name("tiny", action_dim=6, latent_channels=ae.config.latent_channels,
                                             latent_h=SIZE // 8, latent_w=SIZE // 8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-student"
    save_world(folder, {"scene": "maze", "actions": MAZE, "resolution": [SIZE, SIZE],
                        "sampler": {"kind": "few-step", "k_max": 4, "shift": 3.0}}, ae, model)
    return folder


def session_of(checkpoint, steps=2):
    session = PlaySession(WorldSim.load(checkpoint, num_sessions=1, device="cpu"), "maze")
    session.use_fixed_steps(steps)
    return session


# ---- headless -----------------------------------------------------------------------------------
def test_headless_run_writes_a_recording_and_a_preview(checkpoint, tmp_path, capsys):
    out = tmp_path / "run.dsarec"
    assert play.main(["--checkpoint", str(checkpoint), "--headless", "--frames", "8", "--seed", "3",
                      "--record", str(out), "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "device cpu" in text and "8 frames" in text and "world seed 3" in text
    r = read_recording(out)
    assert r.num_frames == 8 and r.cut_bytes == 0 and r.header["seed"] == 3 and r.header["scene"] == "maze"
    assert [p.reason for p in r.prompts] == ["start"] and r.prompts[0].frames.shape == (4, SIZE, SIZE, 3)
    assert all(f.steps == 2 and f.real is not None for f in r.frame_records)
    assert [f.tick for f in r.frame_records] == list(range(8))
    assert out.with_suffix(".gif").exists()


def test_rerunning_a_recording_with_its_seed_gives_the_same_frames(checkpoint, tmp_path, capsys):
    first = tmp_path / "first.dsarec"
    play.main(["--checkpoint", str(checkpoint), "--headless", "--frames", "6", "--seed", "11", "--record", str(first),
               "--policy", "random"])
    again = tmp_path / "again.dsarec"
    assert play.main(["--replay", str(first), "--rerun", "--headless", "--record", str(again)]) == 0
    assert "6/6 frames identical" in capsys.readouterr().out
    a, b = read_recording(first), read_recording(again)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert np.array_equal(a.prompts[0].frames, b.prompts[0].frames)
    assert np.array_equal(np.stack([f.real for f in a.frame_records]), np.stack([f.real for f in b.frame_records]))


def test_a_resync_in_a_recording_is_rerun_too(checkpoint, tmp_path):
    """Prompts in the middle of a recording (reset, re-sync) are replayed as they happened."""
    from controls.generator import RecordedInput, produce
    from controls.recording import RecordingWriter, make_header

    s = session_of(checkpoint)
    path = tmp_path / "r.dsarec"
    with RecordingWriter(path, make_header("maze", MAZE, (SIZE, SIZE), 5, 20)) as w:
        w.write(s.prompt(5))
        for t in range(3):
            w.write(s.step(np.eye(6, dtype=np.float32)[t]))
        w.write(s.resync())
        w.write(s.step(np.eye(6, dtype=np.float32)[0]))
        w.write(s.prompt(None, "reset"))
        w.write(s.step(np.eye(6, dtype=np.float32)[3]))
    recorded = read_recording(path)
    s2 = session_of(checkpoint)
    source = RecordedInput(recorded.records)
    frames = []
    while (result := produce(s2, source, 2)).record is not None:
        if isinstance(result.record, FrameRecord):
            frames.append(result.record)
    assert len(frames) == 5
    for new, old in zip(frames, recorded.frame_records):
        assert np.array_equal(new.frame, old.frame) and np.array_equal(new.real, old.real)


def test_a_distilled_student_plays_with_adaptive_steps_and_reruns_them(student, tmp_path, capsys):
    first = tmp_path / "student.dsarec"
    assert play.main(["--checkpoint", str(student), "--headless", "--frames", "6", "--seed", "2",
                      "--record", str(first), "--budget-ms", "1000"]) == 0
    out = capsys.readouterr().out
    assert "adaptive steps (1 to 4" in out and "budget 1000 ms" in out and "not enforced" not in out
    r = read_recording(first)
    assert r.header["steps"] == "budget"
    assert all(1 <= f.steps <= 4 and np.isfinite(f.confidence) for f in r.frame_records)
    again = tmp_path / "again.dsarec"
    assert play.main(["--replay", str(first), "--rerun", "--headless", "--record", str(again)]) == 0
    assert "6/6 frames identical" in capsys.readouterr().out
    assert [f.steps for f in read_recording(again).frame_records] == [f.steps for f in r.frame_records]
    # a fixed count is the student's to take, up to its k_max
    assert play.main(["--checkpoint", str(student), "--headless", "--frames", "2", "--steps", "3",
                      "--record", str(tmp_path / "fixed.dsarec")]) == 0
    assert {f.steps for f in read_recording(tmp_path / "fixed.dsarec").frame_records} == {3}
    assert play.main(["--checkpoint", str(student), "--headless", "--steps", "9"]) == 2
    assert "1 to 4 steps" in capsys.readouterr().err


# ---- the generator thread -----------------------------------------------------------------------
class SlowSession:
    """Stands in for PlaySession: each frame takes `seconds` and remembers the action it was made from."""
    num_actions = 2

    def __init__(self, seconds):
        self.seconds, self.actions = seconds, []

    def prompt(self, seed, reason):
        return PromptRecord(0, np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 2), np.float32), 0, 0, reason)

    def step(self, action, steps=None):
        self.actions.append(np.asarray(action).copy())  # counted when started
        time.sleep(self.seconds)
        return FrameRecord(0, action, np.zeros((4, 4, 3), np.uint8), steps, float("nan"), self.seconds * 1e3)


def test_a_slow_model_makes_frames_back_to_back_from_fresh_input_and_never_queues():
    session, live = SlowSession(0.05), LiveInput(2)
    gen = Generator(session, live, steps=1, seed=0).start()
    made = []
    deadline = time.perf_counter() + 0.6
    tick = 0
    while time.perf_counter() < deadline:  # a 200 Hz window: four ticks per frame
        live.offer([tick % 2, 1], [0, 0])
        gen.tick()
        made += [r for r in gen.drain() if isinstance(r.record, FrameRecord)]
        tick += 1
        time.sleep(0.005)
    ticks_stopped = len(session.actions)  # frames started, one of them maybe still running
    time.sleep(0.2)
    gen.stop()
    assert 6 <= ticks_stopped <= 13, "frames should come back to back at the model's pace"
    assert len(session.actions) - ticks_stopped <= 1, "one due frame at most: no backlog of ticks may run on after the window stops asking"
    assert all(a[1] == 1 for a in session.actions)
    assert all(r.finished - r.started >= 0.045 for r in made)


def test_a_fast_model_makes_one_frame_per_tick():
    session, live = SlowSession(0.0), LiveInput(2)
    gen = Generator(session, live, steps=1, seed=0).start()
    for _ in range(10):
        gen.tick()
        time.sleep(0.03)
    gen.stop()
    assert 8 <= len(session.actions) <= 10  # one per tick, never more (a tick the thread slept through merges)


def test_an_error_in_the_generator_reaches_the_window_thread():
    class Broken(SlowSession):
        def step(self, action, steps=None):
            raise RuntimeError("engine fell over")

    gen = Generator(Broken(0), LiveInput(2), steps=1, seed=0).start()
    gen.tick()
    time.sleep(0.1)
    with pytest.raises(RuntimeError, match="fell over"):
        gen.drain()
        gen.drain()
    gen.stop()


# ---- the window (SDL dummy driver) --------------------------------------------------------------
def key(kind, name):
    return pygame.event.Event(kind, key=pygame.key.key_code(name), mod=0, unicode="", scancode=0)


def test_the_window_plays_held_keys_records_them_and_obeys_commands(checkpoint, tmp_path):
    from controls.gamepad import GAMEPAD_MAPS, Gamepads
    from controls.recording import RecordingWriter, make_header

    session = session_of(checkpoint)
    live = LiveInput(6)
    gen = Generator(session, live, steps=2, seed=4)
    pygame.display.init()
    keyboard = Keyboard(KEYMAPS["maze"], MAZE, SYSTEM_KEYS)
    pads = Gamepads(GAMEPAD_MAPS["maze"], MAZE)
    writer = RecordingWriter(tmp_path / "w.dsarec", make_header("maze", MAZE, (SIZE, SIZE), 4, 50))
    for event in (key(pygame.KEYDOWN, "w"), key(pygame.KEYDOWN, "f1"), key(pygame.KEYDOWN, "f12"),
                  key(pygame.KEYDOWN, "]"), key(pygame.KEYDOWN, "tab"),
                  pygame.event.Event(pygame.JOYBUTTONDOWN, instance_id=0, joy=0, button=5)):  # RB: turn right
        pygame.event.post(event)
    cfg = WindowConfig(fps=50, side_by_side=True, max_frames=6, screenshot_dir=tmp_path / "shots")
    stats = run_window(gen, PlayStats(50, 20), cfg, (SIZE, SIZE), keyboard=keyboard, gamepads=pads, live=live,
                       help_rows=[("maze keys", None), ("W", "forward")], writer=writer)
    writer.close()
    r = read_recording(tmp_path / "w.dsarec")
    assert stats.frames == 6 and r.num_frames == 6
    assert all(f.action.tolist() == [1, 0, 0, 1, 0, 0] for f in r.frame_records)  # W + RB, held throughout
    assert [p.reason for p in r.prompts] == ["start", "resync"]
    assert {f.steps for f in r.frame_records} == {3}  # "]" asked for one step more before the first frame
    assert len(list((tmp_path / "shots").glob("*.png"))) == 1
    ticks = [f.tick for f in r.frame_records]
    assert ticks == sorted(ticks)


@pytest.mark.parametrize("keys, mode", [(["["], "fixed"), (["[", "0"], "budget")])
def test_step_keys_switch_a_student_between_fixed_and_adaptive_steps(student, keys, mode):
    session = PlaySession(WorldSim.load(student, num_sessions=1, device="cpu"), "maze")
    session.use_adaptive_steps(budget_ms=1000)
    live = LiveInput(6)
    gen = Generator(session, live, steps=None, seed=1)
    pygame.display.init()
    for name in keys:
        pygame.event.post(key(pygame.KEYDOWN, name))
    stats = run_window(gen, PlayStats(50, 1000), WindowConfig(fps=50, max_frames=3), (SIZE, SIZE),
                       keyboard=Keyboard(KEYMAPS["maze"], MAZE, SYSTEM_KEYS), live=live)
    assert stats.steps_mode == mode
    if mode == "fixed":
        assert set(stats.steps) == {1}  # "[" from no frame yet: one step


def test_a_resized_window_gets_the_largest_integer_scale_that_fits_centred():
    from controls.loop import GAP, _layout

    assert _layout((512, 512), (128, 128), 1) == (4, 0, 0)
    assert _layout((700, 530), (128, 128), 1) == (4, 94, 9)
    width = 2 * 128 * 3 + GAP * 3
    assert _layout((width + 1, 400), (128, 128), 2) == (3, 0, 8)  # the height allows 3 too
    assert _layout((100, 50), (128, 128), 2)[0] == 1  # never below 1


def test_a_replay_shows_the_recording_at_its_ticks(tmp_path):
    recs = [PromptRecord(0, np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 2), np.float32), 0, 0)]
    recs += [FrameRecord(3 * i, np.zeros(2, np.float32), np.full((8, 8, 3), i, np.uint8), 1, 0.5, 1.0) for i in range(4)]
    player = ReplayPlayer(recs).start()
    shown = []
    for tick in range(12):
        player.tick()
        shown += [(tick, r.record.frame[0, 0, 0]) for r in player.drain() if isinstance(r.record, FrameRecord)]
    assert shown == [(0, 0), (3, 1), (6, 2), (9, 3)] and player.finished
    player.command("reset")
    player.tick()
    assert len(player.drain()) == 2  # prompt and first frame again


# ---- errors a user can cause --------------------------------------------------------------------
def test_user_errors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    def one_line(argv, *words):
        assert play.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("dsa-sim: "), err
        for w in words:
            assert w in err, err

    one_line(["--checkpoint", str(tmp_path / "nowhere"), "--headless"], "nowhere")
    bad = tmp_path / "bad-ckpt"
    bad.mkdir()
    for f in checkpoint.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = sorted(bad.glob("weights-*"))[0]
    weights.write_bytes(weights.read_bytes()[:-10] + b"0" * 10)
    one_line(["--checkpoint", str(bad), "--headless"], "bad-ckpt")
    one_line(["--checkpoint", str(checkpoint), "--scene", "dungeon", "--headless"], "maze", "dungeon")
    junk = tmp_path / "junk.dsarec"
    junk.write_bytes(b"hello")
    one_line(["--replay", str(junk)], "not a readable dsa-sim recording")
    one_line(["--scene", "platformer", "--headless"], "--checkpoint")  # nothing shipped for it in a checkout
    with pytest.raises(SystemExit):
        play.main(["--scene", "moon"])
    assert "invalid choice" in capsys.readouterr().err
    # no display: one line that names --headless
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    pygame.display.quit()
    assert display_problem() is not None
    one_line(["--checkpoint", str(checkpoint)], "no display", "--headless")


def test_adaptive_steps_fall_back_to_fixed_with_one_line(checkpoint, tmp_path, capsys):
    assert play.main(["--checkpoint", str(checkpoint), "--headless", "--frames", "1", "--steps", "adaptive",
                      "--record", str(tmp_path / "a.dsarec")]) == 0
    out = capsys.readouterr().out
    assert "fixed steps only" in out and f"{play.DEFAULT_STEPS['cpu']} steps per frame" in out
