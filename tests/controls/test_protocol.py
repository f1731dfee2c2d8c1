"""The wire format on its own: limits while unpacking, request checks, actions, frames."""
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controls import protocol as P

LIMITS = P.Limits()


def refused(code, fn, *args):
    with pytest.raises(P.ProtocolError) as e:
        fn(*args)
    assert e.value.code == code, e.value.message
    return e.value.message


def test_a_request_round_trips_and_is_checked():
    data = P.pack({"op": "step", "id": 3, "session": "abc", "action": [1, 0, 0, 0, 0, 0]})
    message = P.unpack_request(data, LIMITS)
    assert P.request_id(message) == 3
    assert P.check_request(message) == ("step", {"session": "abc", "action": [1, 0, 0, 0, 0, 0]})
    assert P.check_request({"op": "reset", "seed": 5, "options": {"policy": "random", "max_episode_steps": 9}}) == \
        ("reset", {"seed": 5, "options": {"policy": "random", "max_episode_steps": 9}})


def test_limits_while_unpacking():
    assert "exceeds" in refused(P.TOO_LARGE, P.unpack_request, b"\x00" * (LIMITS.max_message_bytes + 1), LIMITS)
    huge = P.pack({"op": "step", "action": [0] * (LIMITS.max_array_len + 1)})
    assert len(huge) < LIMITS.max_message_bytes
    refused(P.BAD_MESSAGE, P.unpack_request, huge, LIMITS)
    refused(P.BAD_MESSAGE, P.unpack_request, P.pack({"op": "x" * (LIMITS.max_str_len + 1)}), LIMITS)
    refused(P.BAD_MESSAGE, P.unpack_request, P.pack({"op": b"\x00" * (LIMITS.max_bin_len + 1)}), LIMITS)
    refused(P.BAD_MESSAGE, P.unpack_request, P.pack({str(i): i for i in range(LIMITS.max_map_len + 1)}), LIMITS)
    refused(P.BAD_MESSAGE, P.unpack_request, msgpack.packb(msgpack.ExtType(1, b"abc")), LIMITS)
    refused(P.BAD_MESSAGE, P.unpack_request, P.pack([1, 2, 3]), LIMITS)           # not a map
    refused(P.BAD_MESSAGE, P.unpack_request, P.pack({"op": "ping"}) + b"\x01", LIMITS)  # trailing bytes
    refused(P.BAD_MESSAGE, P.unpack_request, b"\x91" * 5000, LIMITS)             # nested past the stack


def test_malformed_requests_name_what_is_wrong():
    assert "ops are" in refused(P.UNKNOWN_OP, P.check_request, {"op": "launch"})
    refused(P.BAD_REQUEST, P.check_request, {"id": 1})
    refused(P.BAD_REQUEST, P.check_request, {"op": 5})
    assert "'action'" in refused(P.BAD_REQUEST, P.check_request, {"op": "step"})
    assert "not ['seeds']" in refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "seeds": 1})
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": "left"})
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": [1], "session": 7})
    refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "seed": -1})
    refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "seed": 1.5})
    refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "options": {"policy": "teleport"}})
    refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "options": {"latency_budget_ms": -3}})
    refused(P.BAD_REQUEST, P.check_request, {"op": "reset", "options": {"fly": True}})
    refused(P.BAD_REQUEST, P.check_request, {"op": "restore"})
    refused(P.BAD_REQUEST, P.check_request, {"op": "ping", "id": [1, 2]})
    assert P.request_id({"id": [1, 2]}) is None and P.request_id({"id": "x" * 65}) is None
    assert P.request_id({"id": "req-1"}) == "req-1"


def test_actions():
    assert P.decode_action([1, 0, True, 0.5, 0, 0], 6).dtype == np.float32
    assert "6 numbers (a, b" in refused(P.BAD_ACTION, P.decode_action, [1, 0], 6, ["a", "b"])
    refused(P.BAD_ACTION, P.decode_action, [math.nan] * 6, 6)
    refused(P.BAD_ACTION, P.decode_action, [math.inf] + [0] * 5, 6)
    refused(P.BAD_ACTION, P.decode_action, [2] + [0] * 5, 6)
    refused(P.BAD_ACTION, P.decode_action, ["1"] + [0] * 5, 6)
    refused(P.BAD_ACTION, P.decode_action, [[1]] + [0] * 5, 6)


def test_frames_round_trip_as_raw_bytes():
    frame = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    obs = P.encode_frame(frame)
    assert obs["shape"] == [32, 24, 3] and obs["dtype"] == "uint8" and len(obs["frame"]) == frame.size
    back = P.decode_frame(msgpack.unpackb(P.pack(obs)))
    assert np.array_equal(back, frame) and back.flags.writeable
    with pytest.raises(ValueError, match="malformed frame"):
        P.decode_frame({"frame": b"123", "shape": [2, 2, 3]})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_unpack_to_a_map_or_a_protocol_error(data):
    try:
        message = P.unpack_request(data, LIMITS)
    except P.ProtocolError as e:
        assert e.code in P.ERROR_CODES
    else:
        assert isinstance(message, dict)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
json_like = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(P.OPS), json_like), st.dictionaries(
    st.sampled_from(["id", "session", "snapshot", "seed", "options", "action", "new_session", "extra"]), json_like,
    max_size=4))
def test_any_map_is_a_checked_request_or_a_protocol_error(op, fields):
    try:
        got_op, got = P.check_request({"op": op, **fields})
    except P.ProtocolError as e:
        assert e.code in P.ERROR_CODES and e.message
    else:
        assert got_op in P.OPS and "id" not in got


def test_steps_checked_in_place_agree_with_the_general_checks():
    """A step takes a short path through check_request; what it accepts and refuses is unchanged."""
    assert P.check_request({"op": "step", "action": [0, 1]}) == ("step", {"action": [0, 1]})
    assert P.check_request({"op": "step", "id": None, "action": [1], "session": "s1"}) == \
        ("step", {"action": [1], "session": "s1"})
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "id": [1], "action": [1]})       # a bad id
    assert "not ['foo']" in refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": [1], "foo": 1})
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": [1], "session": ""})   # an empty token
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": [1], "session": "s", "x": 2})
    refused(P.BAD_REQUEST, P.check_request, {"op": "step", "action": (1,), "session": "s"})  # not a list
