"""The server over real sockets on 127.0.0.1: concurrency, bad input, isolation, forks, limits, shutdown."""
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controls import protocol as P
from controls.client import Client, ServerError, ServerGone, ServerRestarted
from controls.server import LIVE_WINDOW_S, Server, ServerConfig, check_bind, is_loopback

A = 6
INT64 = st.integers(-2**63, 2**63 - 1)


def key(t, k=0):
    a = np.zeros(A, np.float32)
    a[(t + k) % A] = 1
    return a


def rollout(client, session, n, k=0):
    return [client.step(key(t, k), session)[0] for t in range(n)]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(max_sessions=16, max_snapshots_per_client=4)


def test_sixteen_concurrent_clients_get_every_reply_to_its_own_request(server):
    n_clients, n_steps = 16, 200
    before = server.host.frames
    results, errors = {}, []
    start = threading.Barrier(n_clients)

    def agent(c):
        try:
            with Client(server.endpoint, timeout_s=30) as client:
                session, _, info = client.reset(seed=100 + c)
                assert info["seed"] == 100 + c
                start.wait()
                ticks = []
                for t in range(n_steps):
                    _, reward, terminated, truncated, info = client.step(key(t, c), session)
                    ticks.append(info["tick"])
                results[c] = (session, ticks, client.stats()["frames"])
                client.close_session(session)
        except Exception as e:  # reported below, with the client's number
            errors.append((c, repr(e)))

    threads = [threading.Thread(target=agent, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == n_clients and len({s for s, _, _ in results.values()}) == n_clients
    for c, (_, ticks, _) in results.items():
        assert ticks == list(range(1, n_steps + 1)), f"client {c} got replies out of order or lost"
    assert server.host.frames - before == n_clients * n_steps
    stats = Client(server.endpoint).stats()
    assert stats["mean_batch_size"] > 2, "concurrent steps should share engine batches"
    assert stats["sessions"] == 0 and math.isfinite(stats["overhead_share"])


# ---- malformed input ------------------------------------------------------------------------------
class Raw:
    """A bare DEALER socket: sends any bytes, reads one reply."""

    def __init__(self, endpoint):
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def ask(self, data: bytes, timeout_s=10.0) -> dict:
        self.socket.send(data)
        assert self.socket.poll(timeout_s * 1e3), "no reply: the server dropped a request or died"
        return msgpack.unpackb(self.socket.recv(), raw=False)


@pytest.fixture(scope="module")
def attacker(server):
    raw = Raw(server.endpoint)
    reply = raw.ask(P.pack({"op": "reset", "id": 0, "seed": 1}))
    victim = Client(server.endpoint)
    session, _, _ = victim.reset(seed=2)
    snap = victim.snapshot(session)
    before = rollout(victim, session, 4)
    yield raw, reply["session"], victim, session, snap, before
    victim.close()


def assert_error(reply, *codes):
    assert "error" in reply, reply
    assert reply["error"]["code"] in (codes or P.ERROR_CODES) and reply["error"]["message"]


def bad_steps(attacker_session, victim_session):
    ok = [0.0] * A
    return st.one_of(
        st.builds(lambda a: {"op": "step", "session": attacker_session, "action": a},
                  st.lists(st.floats(allow_nan=True), min_size=0, max_size=12).filter(
                      lambda a: len(a) != A or not all(math.isfinite(x) and 0 <= x <= 1 for x in a))),
        st.builds(lambda v: {"op": "step", "session": attacker_session, "action": v},
                  st.one_of(st.text(max_size=5), INT64, st.none(),
                            st.dictionaries(st.text(max_size=3), INT64, max_size=2))),
        st.just({"op": "step", "session": victim_session, "action": ok}),
        st.just({"op": "snapshot", "session": victim_session}),
        st.just({"op": "close", "session": victim_session}),
        st.just({"op": "restore", "session": attacker_session, "snapshot": "0" * 16}),
        st.builds(lambda s: {"op": "step", "session": s, "action": ok}, st.text(min_size=1, max_size=20)),
        st.builds(lambda op: {"op": op}, st.text(max_size=10).filter(lambda o: o not in P.OPS)),
        st.builds(lambda n: {"op": "step", "session": attacker_session, "action": [0.0] * n},
                  st.integers(P.Limits.max_array_len + 1, 5000)),
        # step_many: a foreign session beside one's own, a session twice, bad actions, bad shapes
        st.just({"op": "step_many", "sessions": [attacker_session, victim_session], "actions": [ok, ok]}),
        st.builds(lambda n: {"op": "step_many", "sessions": [attacker_session] * n, "actions": [ok] * n},
                  st.integers(2, 5)),
        st.builds(lambda a: {"op": "step_many", "sessions": [attacker_session], "actions": [a]},
                  st.lists(st.floats(allow_nan=True), min_size=0, max_size=12).filter(
                      lambda a: len(a) != A or not all(math.isfinite(x) and 0 <= x <= 1 for x in a))),
        st.builds(lambda v, w: {"op": "step_many", "sessions": v, "actions": w},
                  st.one_of(st.none(), st.text(max_size=5), st.lists(INT64, max_size=3), st.just([])),
                  st.one_of(st.none(), st.lists(st.lists(INT64, max_size=2), max_size=3), INT64)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_an_error_reply_and_hurts_no_one(server, attacker, data):
    raw, mine, victim, theirs, _, _ = attacker
    kind = data.draw(st.sampled_from(["bytes", "not-a-map", "request", "huge"]))
    if kind == "bytes":
        payload = data.draw(st.binary(min_size=0, max_size=256))
    elif kind == "not-a-map":
        payload = P.pack(data.draw(st.one_of(INT64, st.text(max_size=10), st.lists(INT64, max_size=5))))
    elif kind == "huge":
        limit = P.Limits.max_message_bytes
        payload = data.draw(st.binary(min_size=limit + 1, max_size=limit + 64))
    else:
        payload = P.pack({"id": 9, **data.draw(bad_steps(mine, theirs))})
    reply = raw.ask(payload)
    if kind == "bytes" and "error" not in reply:  # random bytes can spell a valid request, e.g. a bare map
        return
    assert_error(reply)


def test_the_server_and_other_sessions_survive_the_fuzzing(server, attacker):
    raw, mine, victim, theirs, snap, before = attacker
    assert_error(raw.ask(P.pack({"op": "restore", "id": 1, "session": mine, "snapshot": snap})), P.NO_SNAPSHOT)
    assert_error(raw.ask(P.pack({"op": "step", "id": 2, "session": theirs, "action": [0] * A})), P.NO_SESSION)
    assert raw.ask(P.pack({"op": "ping", "id": 3}))["pong"] is True
    # the victim's session goes on from where it was, and its snapshot replays what it made before
    assert victim.step(key(0), theirs)[4]["tick"] == 5
    victim.restore(snap, theirs)
    assert all(np.array_equal(a, b) for a, b in zip(before, rollout(victim, theirs, 4)))
    assert raw.ask(P.pack({"op": "step", "id": 4, "session": mine, "action": [1] + [0] * 5}))["info"]["tick"] >= 1


def test_a_client_without_a_session_is_told_to_reset(server):
    raw = Raw(server.endpoint)
    reply = raw.ask(P.pack({"op": "step", "id": 1, "action": [0] * A}))
    assert_error(reply, P.NO_SESSION)
    assert "reset" in reply["error"]["message"] and reply["id"] == 1
    assert_error(raw.ask(P.pack({"op": "snapshot", "id": 2})), P.NO_SESSION)
    assert_error(raw.ask(P.pack({"op": "ping", "id": [1]})), P.BAD_REQUEST)
    assert raw.ask(P.pack({"op": "ping", "id": [1]}))["id"] is None


def test_replies_come_in_request_order_even_when_pipelined(server):
    raw = Raw(server.endpoint)
    session = raw.ask(P.pack({"op": "reset", "id": 0, "seed": 4}))["session"]
    ops = [{"op": "step", "session": session, "action": [0] * A}, {"op": "ping"},
           {"op": "step", "session": session, "action": [1] + [0] * 5}, {"op": "bogus"},
           {"op": "step", "session": session, "action": [math.nan] * A}, {"op": "snapshot", "session": session},
           {"op": "step", "session": session, "action": [0] * A}, {"op": "stats"}]
    for i, op in enumerate(ops):
        raw.socket.send(P.pack({"id": i + 1, **op}))
    replies = [msgpack.unpackb(raw.socket.recv(), raw=False) for _ in ops]
    assert [r["id"] for r in replies] == list(range(1, len(ops) + 1))
    assert [r["info"]["tick"] for r in replies if "info" in r] == [1, 2, 3]
    assert [("error" in r) for r in replies] == [False, False, False, True, True, False, False, False]
    assert replies[5]["tick"] == 2  # the snapshot saw the two steps before it and not the one after


def test_a_req_socket_works_too(server):
    req = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(server.endpoint)
    req.send(P.pack({"op": "spec", "id": "s"}))
    assert req.poll(10_000)
    spec = msgpack.unpackb(req.recv(), raw=False)
    assert spec["id"] == "s" and spec["protocol"] == P.PROTOCOL_VERSION and spec["frame_shape"] == [32, 32, 3]
    req.close()


# ---- isolation and forks ----------------------------------------------------------------------------
def test_clients_cannot_touch_each_others_sessions_or_snapshots(server):
    alice, bob = Client(server.endpoint), Client(server.endpoint)
    a, _, _ = alice.reset(seed=7)
    snap = alice.snapshot(a)
    b, _, _ = bob.reset(seed=7)
    for call in (lambda: bob.step(key(0), a), lambda: bob.snapshot(a), lambda: bob.close_session(a),
                 lambda: bob.restore(snap, b), lambda: bob.release(snap), lambda: bob.restore(snap, new_session=True)):
        with pytest.raises(ServerError) as e:
            call()
        assert e.value.code in (P.NO_SESSION, P.NO_SNAPSHOT)
    bob.request("close")  # everything bob holds, nothing of alice's
    assert [f.shape for f in rollout(alice, a, 2)] == [(32, 32, 3)] * 2
    alice.restore(snap, a)
    alice.close_session(a)
    alice.close(), bob.close()


def test_same_seed_same_actions_same_frames_and_different_seeds_differ(server):
    with Client(server.endpoint) as c:
        s, first, _ = c.reset(seed=11)
        run1 = rollout(c, s, 5)
        _, again, _ = c.reset(seed=11, session=s)
        run2 = rollout(c, s, 5)
        _, other, _ = c.reset(seed=12, session=s)
        assert np.array_equal(first, again) and not np.array_equal(first, other)
        assert all(np.array_equal(x, y) for x, y in zip(run1, run2))
        c.close_session(s)


def test_snapshot_restore_gives_identical_continuations(server):
    with Client(server.endpoint) as c:
        s, _, _ = c.reset(seed=5)
        rollout(c, s, 3)
        snap = c.snapshot(s)
        ahead = rollout(c, s, 6, k=2)
        _, obs, info = c.restore(snap, s)
        assert info["tick"] == 3 and info["restored"] == snap
        again = rollout(c, s, 6, k=2)
        fork, fork_obs, _ = c.restore(snap, new_session=True)  # a second session from the same point
        assert fork != s and np.array_equal(fork_obs, obs)
        forked = rollout(c, fork, 6, k=2)
        assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(ahead, again, forked))
        assert not np.array_equal(rollout(c, fork, 3, k=4)[-1], again[2])  # and it branches where told to
        for _ in range(3):
            c.snapshot(s)
        with pytest.raises(ServerError, match="snapshot limit") as e:
            c.snapshot(s)
        assert e.value.code == P.LIMIT
        c.release(snap)
        c.snapshot(s)
        c.request("close")


# ---- limits, budgets, expiry --------------------------------------------------------------------------
def test_session_limit_and_idle_expiry(start_server):
    small = start_server(max_sessions=2, idle_timeout_s=0.4)
    with Client(small.endpoint) as c:
        s1, _, _ = c.reset(seed=1)
        c.reset(seed=2)
        with pytest.raises(ServerError, match="max-sessions") as e:
            c.reset(seed=3)
        assert e.value.code == P.LIMIT
        with pytest.raises(ServerError, match="name one"):
            c.step(key(0))  # two sessions: which one?
        time.sleep(0.8)
        with pytest.raises(ServerError, match="without a request") as e:
            c.step(key(0), s1)
        assert e.value.code == P.NO_SESSION
        c.reset(seed=3)  # the rows are free again
    small.stop()


def test_a_latency_budget_cuts_the_batch_wait(start_server):
    slow = start_server(max_sessions=3, batch_wait_ms=1000)
    with Client(slow.endpoint) as patient, Client(slow.endpoint) as hurried:
        p, _, _ = patient.reset(seed=1)
        h, _, _ = hurried.reset(seed=2, options={"latency_budget_ms": 50})
        patient.step(key(0), p)
        # the patient session is live (it just stepped) and not stepping now: a step with a budget goes alone
        _, _, _, _, info = hurried.step(key(0), h)
        assert info["wall_ms"] < 150 and info["batch"] == 1
        # one without waits for the hurried session, until that one has been quiet for the live window
        _, _, _, _, info = patient.step(key(1), p)
        assert 1e3 * LIVE_WINDOW_S * 0.6 <= info["wall_ms"] < 900 and info["batch"] == 1
        _, _, _, _, info = hurried.step(key(0), h)
        assert info["over_budget"] == (info["wall_ms"] > 50)
    slow.stop()


def test_a_distilled_engine_spends_fewer_steps_under_a_tight_budget(start_server, world_checkpoint, tmp_path):
    from sim.bundle import load_world, save_world
    model, ae, config = load_world(world_checkpoint)
    config = {k: v for k, v in config.items() if k not in ("id", "model", "autoencoder", "latent_scale", "kind")}
    student = save_world(tmp_path / "student", dict(config, sampler={"kind": "few-step", "k_max": 4, "shift": 3.0}),
                         ae, model)
    served = start_server(max_sessions=2, checkpoint=student)
    allocator = served.host.engine.allocator
    mode = allocator.cfg.mode
    with Client(served.endpoint) as c:
        free, _, _ = c.reset(seed=1)
        tight, _, _ = c.reset(seed=1, options={"latency_budget_ms": 0.01})
        free_steps = [c.step(key(t), free)[4]["steps"] for t in range(3)]
        tight_steps = [c.step(key(t), tight)[4]["steps"] for t in range(3)]
    # the random confidence head never reaches tau: unbudgeted frames run to k_max
    assert free_steps == [4, 4, 4] and tight_steps == [1, 1, 1]
    assert allocator.cfg.mode == mode  # the budget applied to its batches only
    served.stop()


def test_truncation_after_max_episode_steps(server):
    with Client(server.endpoint) as c:
        s, _, _ = c.reset(seed=1, options={"max_episode_steps": 2, "policy": "idle"})
        assert [c.step(key(t), s)[3] for t in range(3)] == [False, True, True]
        c.close_session(s)


# ---- restart, shutdown, security ----------------------------------------------------------------------
def test_a_restarted_server_gives_the_client_a_clear_error(start_server):
    first = start_server(max_sessions=2)
    endpoint = first.endpoint
    c = Client(endpoint, timeout_s=1.0)
    s, _, _ = c.reset(seed=1)
    first.stop()
    with pytest.raises(ServerGone, match=r"(no reply from|cannot reach) the dsa-sim server at tcp://127\.0\.0\.1:\d+"):
        c.step(key(0), s)
    second = start_server(bind=endpoint, max_sessions=2)
    c.timeout_s = 10.0
    with pytest.raises(ServerRestarted, match="restarted.*reset"):
        c.step(key(0), s)
    s2, _, _ = c.reset(seed=1)
    assert c.step(key(0), s2)[4]["tick"] == 1
    c.close()
    second.stop()


def test_no_server_is_a_clear_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"tcp://127.0.0.1:{port}", timeout_s=0.3) as c:
        with pytest.raises(ServerGone, match="cannot reach the dsa-sim server.*not running there.*controls.server"):
            c.ping()


def test_a_connected_server_that_does_not_answer_is_called_stuck_not_absent():
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # takes requests, never replies
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=0.5) as c:
            with pytest.raises(ServerGone, match="no reply from the dsa-sim server.*which is connected.*'ping'"):
                c.ping()
    finally:
        silent.close()


def test_a_reply_that_arrived_stays_readable_after_the_server_is_gone(start_server):
    served = start_server(max_sessions=1)
    with Client(served.endpoint, timeout_s=10) as c:
        rid = c.send("ping")
        assert c._socket.poll(10_000, zmq.POLLIN)  # the reply is here, not read yet
        served.stop()  # the server closes its socket: the connection drops
        time.sleep(0.3)
        assert c.recv(rid)["pong"]
        c.timeout_s = 0.5
        with pytest.raises(ServerGone, match="cannot reach.*stopped or crashed"):
            c.ping()


def test_binding_beyond_loopback_needs_curve_or_insecure():
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5") and is_loopback("ipc:///tmp/x")
    assert is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://eth0:1")
    with pytest.raises(ValueError, match="CURVE"):
        check_bind(ServerConfig(bind="tcp://0.0.0.0:5555"))
    with pytest.raises(ValueError, match="insecure"):
        Server(None, ServerConfig(bind="tcp://*:5555"))  # refused before any socket exists
    check_bind(ServerConfig(bind="tcp://0.0.0.0:5555", insecure=True))
    check_bind(ServerConfig(bind="tcp://0.0.0.0:5555", curve_secret_key="s", curve_allowed_keys="d"))


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_lets_in_allowed_keys_only(start_server, tmp_path):
    from controls.server import make_keys
    import zmq.auth
    make_keys(str(tmp_path))
    zmq.auth.create_certificates(tmp_path, "stranger")
    secure = start_server(max_sessions=2, curve_secret_key=str(tmp_path / "server.key_secret"),
                          curve_allowed_keys=str(tmp_path / "allowed"))
    with Client(secure.endpoint, server_key=str(tmp_path / "server.key"),
                client_key=str(tmp_path / "client.key_secret")) as c:
        assert c.spec()["scene"] == "maze"
    for keys in ({}, {"server_key": str(tmp_path / "server.key"), "client_key": str(tmp_path / "stranger.key_secret")}):
        with Client(secure.endpoint, timeout_s=0.5, **keys) as c:
            with pytest.raises(ServerGone):
                c.ping()
    secure.stop()


def test_sigterm_closes_sessions_and_flushes_recordings(world_checkpoint, tmp_path):
    from controls.recording import FrameRecord, PromptRecord, read_recording
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "controls.server", "--checkpoint", str(world_checkpoint),
                             "--bind", endpoint, "--device", "cpu", "--sampler-steps", "1", "--max-sessions", "2",
                             "--record", str(tmp_path / "rec")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with Client(endpoint, timeout_s=60) as c:
            s, _, _ = c.reset(seed=3)
            frames = rollout(c, s, 5)
            snap = c.snapshot(s)
            c.restore(snap, s)
            rollout(c, s, 2)  # a restored branch is not a clip: not recorded
            c.reset(seed=4, session=s)
            frames += rollout(c, s, 1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "sessions closed" in out
    [path] = list(Path(tmp_path / "rec").glob("*.dsarec"))
    recording = read_recording(path)
    assert recording.cut_bytes == 0 and recording.header["seed"] == 3
    kinds = [type(r).__name__ for r in recording.records]
    assert kinds == ["PromptRecord"] + ["FrameRecord"] * 5 + ["PromptRecord", "FrameRecord"]
    assert all(np.array_equal(r.frame, f) for r, f in zip(recording.frame_records, frames))
    assert [r.world_seed for r in recording.prompts] == [3, 4]
    assert isinstance(recording.records[0], PromptRecord) and isinstance(recording.records[1], FrameRecord)


def test_bench_server_runs_and_reports(world_checkpoint, one_torch_thread, capsys):
    from controls.bench_server import main
    result = main(["--checkpoint", str(world_checkpoint), "--device", "cpu", "--sessions", "3", "--seconds", "0.5",
                   "--warmup", "0.2", "--sampler-steps", "1", "--in-process"])
    out = capsys.readouterr().out
    assert result["sessions"] == 3 and result["frames_per_s"] > 0 and result["frames_per_s_1"] > 0
    assert result["latency_ms_p50"] > 0 and result["latency_ms_p99"] >= result["latency_ms_p50"]
    assert 0 <= result["overhead_share"] < 10 and result["mean_batch_size"] >= 1
    assert "frames/s" in out and "overhead" in out
