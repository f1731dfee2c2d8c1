"""step_many (protocol 2): several of one client's sessions in one request, one reply."""
import math

import msgpack
import numpy as np
import pytest
import zmq

from controls import protocol as P
from controls.client import Client, LocalClient, ServerError, SimVectorEnv, local_host

A = 6


def key(t, k=0):
    a = np.zeros(A, np.float32)
    a[(t + k) % A] = 1
    return a


def keys(t, n):
    return np.stack([key(t, i) for i in range(n)])


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(max_sessions=8)


def ask_all(endpoint, requests):
    """Send every request on one bare DEALER socket before reading any reply; the replies."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    for i, r in enumerate(requests):
        s.send(P.pack({"id": i, **r}))
    replies = []
    for _ in requests:
        assert s.poll(10_000), "no reply"
        replies.append(msgpack.unpackb(s.recv(), raw=False))
    s.close()
    return replies


def test_the_protocol_checks_step_many_requests():
    ok = {"op": "step_many", "sessions": ["a" * 16, "b" * 16], "actions": [[0] * A, [1] * A]}
    assert P.check_request(ok) == ("step_many", {"sessions": ok["sessions"], "actions": ok["actions"]})
    bad = [{**ok, "sessions": []}, {**ok, "sessions": ["a" * 16, 3]}, {**ok, "sessions": "a" * 16},
           {**ok, "actions": [[0] * A]}, {**ok, "actions": [[0] * A, 1]}, {**ok, "sessions": ["a" * 16] * 2},
           {"op": "step_many", "sessions": ok["sessions"]}, {**ok, "session": "a" * 16}]
    for request in bad:
        with pytest.raises(P.ProtocolError) as e:
            P.check_request(request)
        assert e.value.code == P.BAD_REQUEST, request
    assert "step_many" in P.OPS and P.PROTOCOL_VERSION >= P.STEP_MANY_VERSION


def test_step_many_actions_are_read_in_bulk_and_a_bad_one_is_named():
    good = P.decode_actions([[0, 1, 0, 0, 1, 0], [True, False, 0.5, 0, 0, 1]], A)
    assert good.dtype == np.float32 and good.shape == (2, A) and good[1, 2] == 0.5
    for rows, code in [([[0] * A, ["1"] + [0] * 5], P.BAD_ACTION),   # numpy would read "1" as a number
                       ([[0] * A, [0] * (A - 1)], P.BAD_ACTION), ([[0] * A, [math.nan] * A], P.BAD_ACTION),
                       ([[0] * A, [0] * A, [2] + [0] * 5], P.BAD_ACTION), ([[0] * A, [{}] * A], P.BAD_ACTION),
                       ([[0] * A, [1.00000001] + [0] * 5], P.BAD_ACTION)]:  # as step refuses it (not rounded first)
        with pytest.raises(P.ProtocolError) as e:
            P.decode_actions(rows, A)
        assert e.value.code == code and f"sessions[{len(rows) - 1}]" in e.value.message, rows


def test_step_many_makes_the_frames_single_steps_make(server):
    n, T = 3, 4
    with Client(server.endpoint) as c:
        sessions = [c.reset(seed=30 + i)[0] for i in range(n)]
        together = []
        for t in range(T):
            frames, rewards, terminated, truncated, infos = c.step_many(keys(t, n), sessions)
            assert frames.shape == (n, 32, 32, 3) and frames.dtype == np.uint8
            assert rewards.shape == terminated.shape == truncated.shape == (n,)
            assert [i["tick"] for i in infos] == [t + 1] * n and all(i["batch"] >= n for i in infos)
            together.append(frames)
        for i, s in enumerate(sessions):
            c.reset(seed=30 + i, session=s)
            alone = [c.step(key(t, i), s)[0] for t in range(T)]
            for t in range(T):
                assert np.array_equal(together[t][i], alone[t]), f"session {i}, step {t}"
        c.request("close")


def test_step_many_refuses_the_whole_request_and_steps_no_session(server):
    with Client(server.endpoint) as alice, Client(server.endpoint) as bob:
        mine = [alice.reset(seed=40 + i)[0] for i in range(2)]
        theirs, _, _ = bob.reset(seed=50)
        with pytest.raises(ServerError, match=r"sessions\[1\].*no session was stepped") as e:
            alice.step_many(keys(0, 2), [mine[0], theirs])
        assert e.value.code == P.NO_SESSION
        reply = ask_all(server.endpoint, [{"op": "step_many", "sessions": mine, "actions": [[0] * A, [math.nan] * A]}])
        assert reply[0]["error"]["code"] == P.NO_SESSION  # another socket: not its sessions at all
        bad_action = {"sessions": mine, "actions": [[0] * A, [0] * (A + 1)]}
        with pytest.raises(ServerError, match=r"sessions\[1\]") as e:
            alice.request("step_many", **bad_action)
        assert e.value.code == P.BAD_ACTION
        with pytest.raises(ValueError, match="one key vector per session"):
            alice.step_many(keys(0, 3), mine)
        # nothing was stepped: every session is still at its reset
        assert [alice.step(key(0), s)[4]["tick"] for s in mine] == [1, 1]
        assert bob.step(key(0), theirs)[4]["tick"] == 1
        alice.request("close"), bob.request("close")


def test_step_many_keeps_its_place_among_a_clients_requests(server):
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)

    def ask(request):
        raw.send(P.pack(request))
        assert raw.poll(10_000)
        return msgpack.unpackb(raw.recv(), raw=False)

    s1, s2 = (ask({"op": "reset", "id": -1 - i, "seed": 60 + i})["session"] for i in range(2))
    ops = [{"op": "step", "session": s1, "action": [0] * A},
           {"op": "step_many", "sessions": [s1, s2], "actions": [[1] + [0] * 5, [0] * A]},
           {"op": "step", "session": s2, "action": [0] * A}, {"op": "ping"},
           {"op": "step_many", "sessions": [s2, s1], "actions": [[0] * A, [0] * A]}]
    for i, op in enumerate(ops):
        raw.send(P.pack({"id": i, **op}))
    replies = [msgpack.unpackb(raw.recv(), raw=False) for _ in ops]
    assert [r["id"] for r in replies] == list(range(len(ops)))
    assert replies[0]["info"]["tick"] == 1
    assert [i["tick"] for i in replies[1]["info"]] == [2, 1] and replies[1]["sessions"] == [s1, s2]
    assert replies[2]["info"]["tick"] == 2 and replies[3]["pong"] is True
    assert [i["tick"] for i in replies[4]["info"]] == [3, 3] and replies[4]["sessions"] == [s2, s1]
    assert replies[4]["obs"]["shape"] == [2, 32, 32, 3] and len(replies[4]["obs"]["frame"]) == 2 * 32 * 32 * 3
    raw.close()


def test_the_vector_env_sends_one_request_per_server_per_step(start_server):
    srv = start_server(max_sessions=4)
    envs = SimVectorEnv(4, endpoints=srv.endpoint)
    envs.reset(seed=0)
    before = srv.server.requests
    for _ in range(3):
        obs, rewards, _, _, infos = envs.step(envs.action_space.sample())
        assert obs.shape == (4, 32, 32, 3) and list(infos["batch"]) == [4] * 4
    assert srv.server.requests - before == 3
    envs.close()
    srv.stop()


def test_in_process_step_many_matches_the_server(server, world_checkpoint, one_torch_thread):
    local = LocalClient(local_host(str(world_checkpoint), num_sessions=2, sampler_steps=1))
    with Client(server.endpoint) as remote:
        runs = []
        for c in (local, remote):
            sessions = [c.reset(seed=70 + i)[0] for i in range(2)]
            runs.append([c.step_many(keys(t, 2), sessions)[0] for t in range(3)])
            c.request("close")
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
