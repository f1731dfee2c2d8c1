"""step_many (protocol 2): several of one client's sessions in one request, one reply."""
import math
import time

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


def test_the_vector_env_splits_its_step_at_the_servers_step_many_limit(start_server, monkeypatch):
    monkeypatch.setattr("controls.server.MAX_STEP_MANY", 2)  # published in spec; the real limit is 256
    srv = start_server(max_sessions=5)
    envs = SimVectorEnv(5, endpoints=srv.endpoint)
    assert envs.info["max_step_many"] == 2
    envs.reset(seed=0)
    before = srv.server.requests
    for t in range(2):
        obs, _, _, _, infos = envs.step(envs.action_space.sample())
        assert obs.shape == (5, 32, 32, 3) and list(infos["tick"]) == [t + 1] * 5
    assert srv.server.requests - before == 2 * 3  # 5 envs: requests of 2, 2 and 1
    envs.close()
    srv.stop()


def test_a_request_over_the_unpacking_limits_fails_at_once_and_the_client_goes_on(server):
    with Client(server.endpoint, timeout_s=30) as c:
        assert c.spec()["max_step_many"] == P.MAX_STEP_MANY
        sessions = [c.reset(seed=3)[0]] * (P.MAX_STEP_MANY + 1)  # one array item too many: its id is unreadable
        t0 = time.monotonic()
        with pytest.raises(ServerError) as e:
            c.step_many(keys(0, len(sessions)), sessions)
        assert e.value.code == P.BAD_MESSAGE and time.monotonic() - t0 < 10
        obs, *_ = c.step_many(keys(0, 1), sessions[:1])  # the next request gets its own reply
        assert obs.shape == (1, 32, 32, 3)
        c.request("close")


def test_obs_part_sends_the_same_frames_as_a_message_part_of_their_own(server):
    n, T = 3, 3
    with Client(server.endpoint) as c:
        assert c.spec()["protocol"] >= P.OBS_PART_VERSION
        sessions = [c.reset(seed=60 + i)[0] for i in range(n)]
        runs = {}
        for part in (False, True):
            for i, s in enumerate(sessions):
                c.reset(seed=60 + i, session=s)
            runs[part] = [c.step_many(keys(t, n), sessions, obs_part=part)[0] for t in range(T)]
        for inline, parted in zip(runs[False], runs[True]):
            assert parted.shape == (n, 32, 32, 3) and parted.dtype == np.uint8 and np.array_equal(inline, parted)
        assert runs[True][0].flags.writeable and runs[False][0].flags.writeable  # the message is the reply's own
        c.request("close")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)
    raw.send(P.pack({"op": "reset", "id": 0, "seed": 1}))
    assert raw.poll(10_000)
    session = msgpack.unpackb(raw.recv(), raw=False)["session"]
    raw.send(P.pack({"op": "step_many", "id": 1, "sessions": [session], "actions": [[0] * A], "obs_part": True}))
    assert raw.poll(10_000)
    body, frames = raw.recv_multipart()
    reply = msgpack.unpackb(body, raw=False)
    assert reply["id"] == 1 and reply["obs"] == {"part": 1, "shape": [1, 32, 32, 3], "dtype": "uint8"}
    assert len(frames) == 32 * 32 * 3
    raw.send(P.pack({"op": "step_many", "id": 2, "sessions": [session], "actions": [[0] * A], "obs_part": 1}))
    assert raw.poll(10_000)
    parts = raw.recv_multipart()
    assert len(parts) == 1 and msgpack.unpackb(parts[0], raw=False)["error"]["code"] == P.BAD_REQUEST
    raw.close()


def test_a_frame_naming_a_missing_part_is_a_clear_error():
    obs, frames = P.part_frame(np.zeros((2, 4, 4, 3), np.uint8))
    assert np.array_equal(P.decode_frame(obs, [None, memoryview(frames.tobytes())]), frames)
    for parts in (None, [None], [b"x"]):
        with pytest.raises(ValueError, match="message part"):
            P.decode_frame(obs, parts)


def test_info_columns_carry_the_same_infos_as_one_map_per_session(server, world_checkpoint, one_torch_thread):
    n = 3
    local = LocalClient(local_host(str(world_checkpoint), num_sessions=n, sampler_steps=1))
    with Client(server.endpoint) as remote:
        assert remote.spec()["protocol"] >= P.INFO_COLUMNS_VERSION
        for c in (remote, local):
            sessions = [c.reset(seed=80 + i)[0] for i in range(n)]
            rows = c.step_many(keys(0, n), sessions, obs_part=True)[4]
            columns = c.step_many(keys(1, n), sessions, obs_part=True, info_columns=True)[4]
            assert isinstance(rows, list) and isinstance(columns, dict)
            assert list(columns) == list(rows[0])  # the same keys, in the same order
            assert all(len(v) == n for v in columns.values())
            for i, row in enumerate(rows):  # the next step of the same session: one tick on, the rest alike
                assert columns["tick"][i] == row["tick"] + 1 and columns["steps"][i] == row["steps"]
                assert columns["batch"][i] == row["batch"] == n
                assert all(type(columns[k][i]) is type(v) for k, v in row.items())
            c.request("close")
    with pytest.raises(ServerError) as e:
        local.request("step_many", sessions=["a" * 16], actions=[[0] * A], info_columns=1)
    assert e.value.code == P.BAD_REQUEST


def test_the_vector_env_lays_info_columns_into_the_infos_gymnasium_would_make(start_server):
    srv = start_server(max_sessions=4)
    envs = SimVectorEnv(4, endpoints=srv.endpoint)
    assert all(envs._columns.values())
    envs.reset(seed=0)
    a = envs.action_space.sample()
    _, _, _, _, columns = envs.step(a)
    envs._columns = dict.fromkeys(envs._columns, False)  # as against a protocol 3 server: one map per env
    _, _, _, _, rows = envs.step(a)
    assert sorted(columns) == sorted(rows) and "_tick" in columns
    for k in rows:
        assert columns[k].dtype == rows[k].dtype and columns[k].shape == rows[k].shape, k
    assert list(rows["tick"]) == [t + 1 for t in columns["tick"]] and columns["_steps"].all()
    assert np.array_equal(columns["steps"], rows["steps"]) and np.array_equal(columns["batch"], rows["batch"])
    envs.close()
    srv.stop()


def test_info_columns_of_any_kind_make_the_infos_gymnasium_would():
    envs = SimVectorEnv.__new__(SimVectorEnv)  # only num_envs and gymnasium's _add_info are used
    envs.num_envs = 4
    at = np.array([3, 1])
    columns = {"steps": [2, 4], "confidence": [0.5, float("nan")], "over": [True, False],
               "f32": [np.float32(1.5), np.float32(2.5)], "name": ["a", "b"],
               "trace": [np.ones(2), np.zeros(2)], "nested": [{"k": 1}, {"k": 2}]}
    by_columns = envs._add_info_columns({}, columns, at)
    by_rows: dict = {}
    for j, i in enumerate(at):
        by_rows = envs._add_info(by_rows, {k: v[j] for k, v in columns.items()}, int(i))
    assert sorted(by_columns) == sorted(by_rows)
    for k, v in by_rows.items():
        if isinstance(v, dict):
            assert all(np.array_equal(v[n], by_columns[k][n]) for n in v), k
        else:
            assert v.dtype == by_columns[k].dtype and v.shape == by_columns[k].shape, k
            assert np.array_equal(v, by_columns[k], equal_nan=v.dtype.kind == "f"), k
