"""The engine on a thread of its own: batches overlap the socket work, halves alternate on the engine,
engine requests wait for the running batch (and are not starved by the next), failures and shutdown
answer every step."""
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from controls import protocol as P
from controls.bench_server import FakeEngine
from controls.client import Client, ServerError
from controls.server import Host, Server, ServerConfig

A = 6


class SlowEngine(FakeEngine):
    """A fake engine whose step takes `step_s`, and which checks that nothing else uses it meanwhile."""

    def __init__(self, sessions, step_s=0.02, fail_at=None):
        super().__init__(sessions, resolution=16)
        self.step_s, self.fail_at = step_s, fail_at
        self.stepping = False
        self.calls = []         # (thread name, batch size) per step
        self.collisions = []    # what ran while a step was on the engine

    def step(self, actions, observe=None, sessions=None):
        if self.stepping:
            self.collisions.append("step")
        self.stepping = True
        try:
            self.calls.append((threading.current_thread().name, len(sessions)))
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                raise RuntimeError("the GPU fell over")
            time.sleep(self.step_s)
            return super().step(actions, observe, sessions)
        finally:
            self.stepping = False

    def _not_stepping(self, what):
        if self.stepping:
            self.collisions.append(what)

    def reset(self, frames, actions, sessions=None, seeds=None):
        self._not_stepping("reset")

    def snapshot(self, session):
        self._not_stepping("snapshot")
        return {}

    def restore(self, session, snap):
        self._not_stepping("restore")


@pytest.fixture
def serve_slow():
    """serve_slow(engine, **ServerConfig fields) -> (server, thread), serving on a thread of the test
    (with the engine on its own thread unless overlap=False)."""
    running = []

    def start(engine, **fields):
        fields.setdefault("overlap", True)
        config = ServerConfig(bind="tcp://127.0.0.1:*", max_sessions=engine.num_sessions, **fields)
        server = Server(Host(engine, config), config)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        running.append((server, thread))
        return server, thread

    yield start
    for server, thread in running:
        server.stop()
        thread.join(timeout=10)


def step_flat_out(endpoint, n_clients, n_steps, errors, results, started=None):
    def agent(c):
        try:
            with Client(endpoint, timeout_s=30) as client:
                session, _, _ = client.reset(seed=c)
                if started is not None:
                    started.wait()
                ticks = [client.step(np.eye(A)[(t + c) % A], session)[4]["tick"] for t in range(n_steps)]
                results[c] = ticks
                client.close_session(session)
        except Exception as e:
            errors.append((c, repr(e)))

    threads = [threading.Thread(target=agent, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    return threads


def test_with_many_sessions_halves_alternate_on_the_engine_thread_and_every_reply_arrives(serve_slow):
    engine = SlowEngine(9)
    server, _ = serve_slow(engine, split_batches_at=4, batch_wait_ms=50)
    errors, results = [], {}
    started = threading.Barrier(8)
    threads = step_flat_out(server.endpoint, 8, 30, errors, results, started)
    time.sleep(0.3)
    # a newcomer's reset (it uses the engine) waits for the running batch, not behind every next one
    with Client(server.endpoint, timeout_s=10) as late:
        t0 = time.perf_counter()
        session, obs, _ = late.reset(seed=99)
        reset_s = time.perf_counter() - t0
        assert obs.shape == (16, 16, 3) and late.snapshot(session)
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for c, ticks in results.items():
        assert ticks == list(range(1, 31)), f"client {c} got replies out of order or lost"
    assert not engine.collisions, f"used while a batch was on the engine: {engine.collisions}"
    steps_on = {name for name, _ in engine.calls}
    assert steps_on == {"dsa-sim-engine"}, steps_on
    sizes = [b for _, b in engine.calls]
    # 8 sessions stepping: no batch takes more than half of them, and once all are in, halves of 4 run
    assert max(sizes) <= 4 and sizes.count(4) >= len(sizes) // 2, sizes
    assert reset_s < 1.0, f"a reset waited {reset_s:.2f} s behind the stepping sessions"


def test_step_many_requests_stay_whole_when_batches_split(serve_slow):
    engine = SlowEngine(8, step_s=0.005)
    server, _ = serve_slow(engine, split_batches_at=4, batch_wait_ms=50)
    errors, results = [], {}

    def agent(c):  # four sessions in one step_many per tick, as a vector env steps them
        try:
            with Client(server.endpoint, timeout_s=30) as client:
                sessions = [client.reset(seed=10 * c + i)[0] for i in range(4)]
                ticks = []
                for t in range(20):
                    _, _, _, _, infos = client.step_many(np.eye(A)[[(t + i) % A for i in range(4)]], sessions)
                    ticks.append([i["tick"] for i in infos])
                results[c] = ticks
        except Exception as e:
            errors.append((c, repr(e)))

    threads = [threading.Thread(target=agent, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for c, ticks in results.items():
        assert ticks == [[t + 1] * 4 for t in range(20)], f"client {c} got replies out of order or lost"
    assert not engine.collisions
    # a request's four sessions are never cut apart: every batch is one or both requests whole
    assert {b for _, b in engine.calls} <= {4, 8}, engine.calls


def test_a_step_in_the_next_batch_still_holds_back_the_requests_behind_it(serve_slow):
    engine = SlowEngine(4, step_s=0.3)
    server, _ = serve_slow(engine, batch_wait_ms=0)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)

    def send(r):
        raw.send(P.pack(r))

    def recv():
        assert raw.poll(10_000), "no reply"
        return msgpack.unpackb(raw.recv(), raw=False)

    send({"op": "reset", "id": -1, "seed": 1})
    s1 = recv()["session"]
    send({"op": "reset", "id": -2, "seed": 2})
    s2 = recv()["session"]
    send({"op": "step_many", "id": 0, "sessions": [s1], "actions": [[0] * A]})
    time.sleep(0.1)  # on the engine: the next step gathers into the next batch, started as this one ends
    send({"op": "step", "id": 1, "session": s2, "action": [0] * A})
    send({"op": "ping", "id": 2})
    send({"op": "close", "id": 3, "session": s2})
    replies = [recv() for _ in range(4)]
    assert [r["id"] for r in replies] == [0, 1, 2, 3]  # the close waited for s2's step
    assert "error" not in replies[1] and replies[3]["closed"]["sessions"] == [s2]
    raw.close()


def test_without_overlap_the_loop_steps_the_engine_itself(serve_slow):
    engine = SlowEngine(2, step_s=0.0)
    server, thread = serve_slow(engine, overlap=False)
    with Client(server.endpoint, timeout_s=10) as c:
        session, _, _ = c.reset(seed=1)
        ticks = [c.step(np.eye(A)[0], session)[4]["tick"] for _ in range(3)]
        stats = c.stats()
    assert ticks == [1, 2, 3] and stats["overlap"] is False
    assert {name for name, _ in engine.calls} == {thread.name}


def test_an_engine_failure_on_its_thread_is_an_error_reply_and_the_server_goes_on(serve_slow):
    engine = SlowEngine(2, step_s=0.0, fail_at=2)
    server, _ = serve_slow(engine)
    with Client(server.endpoint, timeout_s=10) as c:
        session, _, _ = c.reset(seed=1)
        assert c.step(np.eye(A)[0], session)[4]["tick"] == 1
        with pytest.raises(ServerError) as failed:
            c.step(np.eye(A)[0], session)
        assert failed.value.code == P.INTERNAL and "the GPU fell over" in str(failed.value)
        assert c.step(np.eye(A)[0], session)[4]["tick"] == 2  # the failed step did not count
        assert c.ping()


def test_stopping_while_a_batch_is_on_the_engine_answers_it_with_its_frame(serve_slow):
    engine = SlowEngine(1, step_s=0.5)
    server, thread = serve_slow(engine)
    with Client(server.endpoint, timeout_s=10) as c:
        session, _, _ = c.reset(seed=1)
        rid = c.send("step", action=[0] * A, session=session)
        deadline = time.monotonic() + 10
        while not engine.stepping and time.monotonic() < deadline:  # until the step is on the engine
            time.sleep(0.005)
        assert engine.stepping
        server.stop()
        reply = c.recv(rid)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "error" not in reply and reply["info"]["tick"] == 1


def test_requests_not_yet_read_when_the_loop_stops_hear_it_is_shutting_down():
    engine = SlowEngine(1)
    config = ServerConfig(bind="tcp://127.0.0.1:*", max_sessions=1, overlap=True)
    server = Server(Host(engine, config), config)
    # the socket stays open until the replies are read here (a client disconnected from drops what
    # it had not read yet, and this test reads them only after the server is through)
    read, release = threading.Event(), server._release
    server._release = lambda **kw: (read.wait(10), release(**kw))
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)
    try:
        raw.send(msgpack.packb({"op": "ping", "id": 7}))
        raw.send(b"not msgpack")  # a malformed one too: it is answered like the rest
        assert server.socket.poll(5000, zmq.POLLIN)  # arrived; the loop has not started, so not read
        time.sleep(0.2)  # (the second one too: one connection, in order)
        server.stop()
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()  # stops at once, through the shutdown
        replies = []
        for _ in range(2):
            assert raw.poll(5000, zmq.POLLIN)
            replies.append(msgpack.unpackb(raw.recv()))
        read.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert [r["error"]["code"] for r in replies] == [P.SHUTTING_DOWN] * 2
        assert [r["id"] for r in replies] == [7, None]
    finally:
        read.set()
        raw.close()
