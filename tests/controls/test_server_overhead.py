"""The server's own cost, with the engine taken out (controls.bench_server.FakeEngine): replies packed
in one reused buffer arrive intact, a waiting batch does not spin, and the fake-engine bench runs."""
import threading
import time

import numpy as np
import pytest

from controls.bench_server import FakeEngine
from controls.bench_server import main as bench
from controls.client import Client
from controls.server import Host, Server, ServerConfig


@pytest.fixture
def serve_fake():
    """serve_fake(sessions, resolution=..., **ServerConfig fields) -> a Server on a thread, over a FakeEngine."""
    running = []

    def start(sessions, resolution=32, **fields):
        config = ServerConfig(bind="tcp://127.0.0.1:*", max_sessions=sessions, **fields)
        server = Server(Host(FakeEngine(sessions, resolution=resolution), config), config)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.stop()
        thread.join(timeout=10)


def test_replies_packed_in_one_reused_buffer_each_keep_their_own_frame(serve_fake):
    # 160x160x3 is over pyzmq's zero-copy threshold (64 KiB): the reply must still be copied at send
    server = serve_fake(4, resolution=160, batch_wait_ms=200)
    clients = [Client(server.endpoint, timeout_s=10) for _ in range(4)]
    try:
        sessions = [c.reset(seed=i)[0] for i, c in enumerate(clients)]
        for t in range(4):  # all four in flight at once: once all are live, one batch of four replies
            ids = [c.send("step", action=[0] * 6, session=s) for c, s in zip(clients, sessions)]
            for c, s, rid in zip(clients, sessions, ids):
                reply = c.recv(rid)
                assert reply["info"]["batch"] == 4 or t == 0  # the first steps find no session live yet
                assert np.array_equal(reply["obs"], server.host.engine._frames[server.host.sessions[s].row])
    finally:
        for c in clients:
            c.close()


def test_a_batch_waiting_for_its_deadline_does_not_spin(serve_fake):
    server = serve_fake(2, batch_wait_ms=30)
    turns = []
    due = server._batch_due
    server._batch_due = lambda now: turns.append(now) or due(now)
    with Client(server.endpoint) as waiting, Client(server.endpoint) as idle:
        a, _, _ = waiting.reset(seed=1)
        b, _, _ = idle.reset(seed=2)
        idle.step([0] * 6, b)  # live: the next batch waits for it until the deadline
        # a reply leaves mid-turn and the turn's busy time is added after it: let the loop finish
        # the turn (the resets' world generation) before reading, and the step's turn after
        time.sleep(0.1)
        turns.clear()
        busy = server.busy_s
        info = waiting.step([0] * 6, a)[4]
        time.sleep(0.1)
    assert info["batch"] == 1 and info["wall_ms"] >= 25
    # poll waits are whole milliseconds: the loop wakes a few times, not on every poll(0) of the last one
    assert len(turns) < 10, f"{len(turns)} turns of the loop while one batch waited 30 ms"
    assert server.busy_s - busy < 0.01


def test_the_server_counts_its_receiving_and_the_collectors_pauses(serve_fake):
    import gc
    server = serve_fake(1)
    with Client(server.endpoint) as c:
        c.reset(seed=0)
        drained = server.drain_s
        c.step([0] * 6)
        assert server.drain_s > drained  # the step's arrival was received and checked in the loop
        runs = server.gc_runs
        gc.collect()  # the collector's callbacks are the process's: a pause anywhere is counted
        stats = c.stats()
    assert stats["gc_runs"] >= runs + 1 and stats["gc_s"] > 0 and stats["drain_s"] <= stats["busy_s"]
    timed, runs = server.gc_s, server.gc_runs
    server._on_gc("stop", {})  # the end of a collection that began before the count did: not timed
    assert (server.gc_s, server.gc_runs) == (timed, runs)
    server.stop()
    time.sleep(0.3)  # the loop ends and lets go of the collector
    runs = server.gc_runs
    gc.collect()
    assert server.gc_runs == runs


def test_a_resets_engine_time_is_not_counted_as_receiving(serve_fake):
    server = serve_fake(1)
    reset = server.host.engine.reset

    def slow_reset(*args, **kwargs):  # a prompt that takes the engine 50 ms
        time.sleep(0.05)
        return reset(*args, **kwargs)

    server.host.engine.reset = slow_reset
    with Client(server.endpoint) as c:
        other, drained = server.host.engine_other_s, server.drain_s
        c.reset(seed=0)
        time.sleep(0.1)  # the turn that answered it ends
    assert server.host.engine_other_s - other >= 0.05 and server.drain_s - drained < 0.04


def test_the_fake_engine_bench_measures_the_server_alone(capsys):
    result = bench(["--fake-engine", "--sessions", "4", "--multiplexed", "--seconds", "0.3", "--warmup", "0.1"])
    one, many = result["phases"]
    assert result["server"] == "in-process thread" and result["clients"] == "multiplexed"
    assert result["frame_shape"] == [128, 128, 3] and many["sessions"] == 4 and many["frames"] > 0
    assert many["overhead_us_per_frame"] > 0 and many["steps_histogram"] == {"4": many["frames"]}
    parts = many["overhead_parts_ms_per_batch"]
    assert parts["replies"] > 0 and parts["bodies"] > 0 and parts["receiving"] > 0 and parts["rest"] >= 0
    # the parts split the overhead: together they are it (the rest is clipped at zero)
    assert parts["bodies"] + parts["replies"] <= many["overhead_ms_per_batch"] + 1e-6
    assert abs(sum(parts.values()) - many["overhead_ms_per_batch"]) < 1e-6 or parts["rest"] == 0
    out = capsys.readouterr().out
    assert "us per frame" in out and "packing + sending replies" in out
    with pytest.raises(SystemExit):
        bench(["--fake-engine", "--steps", "2"])


def test_the_logic_only_bench_times_the_handlers_without_sockets(tmp_path, capsys):
    result = bench(["--logic-only", "--sessions", "8", "--json", str(tmp_path / "logic.json")])
    assert result["sessions"] == 8 and result["receive_us_per_request"] > 0 and result["run_and_replies_us_per_request"] > 0
    assert "us per step" in capsys.readouterr().out and (tmp_path / "logic.json").exists()
    many = bench(["--logic-only", "--sessions", "8", "--vector", "4"])  # two clients' step_many of 4
    assert many["vector"] == 4 and many["receive_us_per_request"] > 0
    assert "step_many of 4 from each of 2 clients" in capsys.readouterr().out
    for bad in (["--logic-only", "--tau", "0.5"], ["--logic-only", "--sessions", "8", "--vector", "3"],
                ["--fake-engine", "--vector", "4", "--processes"]):
        with pytest.raises(SystemExit):
            bench(bad)


def test_the_bench_drives_vector_clients_with_step_many(capsys):
    result = bench(["--fake-engine", "--sessions", "4", "--vector", "2", "--seconds", "0.3", "--warmup", "0.1"])
    assert result["clients"] == "vector of 2" and result["phases"][1]["frames"] > 0
    assert result["mean_batch_size"] >= 2  # a request's two sessions always share a batch


def test_the_bench_runs_each_mode_on_one_engine_and_prints_them_side_by_side(capsys):
    result = bench(["--fake-engine", "--sessions", "4", "--multiplexed", "--seconds", "0.3", "--warmup", "0.1",
                    "--modes", "inline", "split", "--split-batches-at", "4"])
    inline, split = result["modes"]
    assert (inline["mode"], inline["overlap"], inline["split_batches_at"]) == ("inline", False, 0)
    assert (split["mode"], split["overlap"], split["split_batches_at"]) == ("split", True, 4)
    # 4 sessions stepping with the split at 4: no batch takes more than 2 of them
    assert inline["phases"][1]["mean_batch_size"] > 2 >= split["phases"][1]["mean_batch_size"]
    for r in (inline, split):
        assert 0 <= r["phases"][1]["engine_busy_share"] <= 1 and r["phases"][1]["engine_idle_share"] >= 0
    out = capsys.readouterr().out.splitlines()
    rows = out[out.index("modes side by side (one engine):") + 2:]
    assert [row.split()[:2] for row in rows] == [["inline", "4"], ["split", "4"], ["inline", "1"], ["split", "1"]]


@pytest.fixture
def live_window(monkeypatch):
    """A 1 s live window instead of 0.25 s: on a loaded CI machine a client thread can stall past
    0.25 s between two steps, and its session would rightly drop out of the batch it is waited for."""
    import controls.server
    window = 1.0
    monkeypatch.setattr(controls.server, "LIVE_WINDOW_S", window)
    return window


def test_a_batch_is_due_when_its_last_live_session_steps_and_not_before(serve_fake, live_window):
    """`_batch_due` skips its scan while sessions live at the last batch are missing; it must still say
    yes the moment the last one arrives, and yes once a missing one has left the live window."""
    server = serve_fake(3, batch_wait_ms=5000)
    clients = [Client(server.endpoint, timeout_s=10) for _ in range(3)]
    try:
        sessions = [c.reset(seed=i)[0] for i, c in enumerate(clients)]
        for t in range(3):  # all three live: each batch goes when the third step is in, long before 5 s
            t0 = time.perf_counter()
            ids = [c.send("step", action=[0] * 6, session=s) for c, s in zip(clients, sessions)]
            infos = [c.recv(rid)["info"] for c, rid in zip(clients, ids)]
            if t:
                assert all(i["batch"] == 3 for i in infos) and time.perf_counter() - t0 < 2.0
        # one goes quiet: the other two wait for it for the live window only, not the 5 s deadline
        t0 = time.perf_counter()
        ids = [c.send("step", action=[0] * 6, session=s) for c, s in zip(clients[:2], sessions[:2])]
        infos = [c.recv(rid)["info"] for c, rid in zip(clients[:2], ids)]
        waited = time.perf_counter() - t0
        assert all(i["batch"] == 2 for i in infos) and 0.5 * live_window <= waited < 3.0
    finally:
        for c in clients:
            c.close()


def test_a_snapshot_keeps_its_own_frame_not_its_batch(serve_fake):
    server = serve_fake(2, batch_wait_ms=1)
    with Client(server.endpoint) as c:
        s, _, _ = c.reset(seed=1)
        c.step([0] * 6, s)
        token = c.snapshot(s)
    snaps = [snap for owned in server.host.snapshots.values() for snap in owned.values()]
    assert token is not None and len(snaps) == 1
    kept, live = snaps[0].facts["frame"], server.host.sessions[s].frame
    assert np.array_equal(kept, live) and live.base is not None  # the session's frame is a row of its batch
    assert kept.base is None  # the snapshot's is its own 12 KB, not a view holding the batch alive


def test_a_batch_is_due_at_once_when_a_live_session_closes(serve_fake, live_window):
    """A closed session is not waited for: the due check's shortcut is off once sessions change
    (waiting for it would take the live window, 1 s here)."""
    server = serve_fake(4, batch_wait_ms=5000)
    clients = [Client(server.endpoint, timeout_s=10) for _ in range(4)]
    try:
        sessions = [c.reset(seed=i)[0] for i, c in enumerate(clients)]  # the fourth never steps
        for _ in range(2):  # three live sessions, batches of three
            ids = [c.send("step", action=[0] * 6, session=s) for c, s in zip(clients[:3], sessions[:3])]
            infos = [c.recv(rid)["info"] for c, rid in zip(clients[:3], ids)]
        assert all(i["batch"] == 3 for i in infos)
        clients[2].close_session(sessions[2])
        t0 = time.perf_counter()
        ids = [c.send("step", action=[0] * 6, session=s) for c, s in zip(clients[:2], sessions[:2])]
        infos = [c.recv(rid)["info"] for c, rid in zip(clients[:2], ids)]
        assert all(i["batch"] == 2 for i in infos) and time.perf_counter() - t0 < 0.4 * live_window
    finally:
        for c in clients:
            c.close()
