"""The wire protocol between agents and the server: msgpack maps over ZeroMQ, version 2.

    request  {"op": "step", "id": 7, "session": "9f2c...", "action": [1, 0, 0, 0, 0, 0]}
    reply    {"id": 7, "boot": "a1b2c3d4", "session": "9f2c...", "obs": {"frame": b"...",
              "shape": [128, 128, 3], "dtype": "uint8"}, "reward": 0.0, "terminated": false,
              "truncated": false, "info": {"steps": 4, "confidence": 0.93, "latency_ms": 9.1, ...}}
    request  {"op": "step_many", "id": 8, "sessions": ["9f2c...", "07ab..."], "actions": [[1, 0, ...], [0, ...]]}
    reply    {"id": 8, "boot": ..., "sessions": [...], "obs": {"frame": b"...", "shape": [2, 128, 128, 3], ...},
              "reward": [0.0, 0.0], "terminated": [...], "truncated": [...], "info": [{...}, {...}]}
    error    {"id": 7, "boot": "a1b2c3d4", "error": {"code": "bad_action", "message": "..."}}

PROTOCOL.md at the repository root is the full specification; this module is its code:
the error codes, the limits a server applies while unpacking, per-op request checks and
the frame encoding. Nothing here touches a socket or the engine, so the server, the client
and the in-process env all share it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 4  # 2 added step_many, 3 its obs_part, 4 its info_columns; a version 1 peer reads the rest the same
STEP_MANY_VERSION = 2  # the first version with step_many (a client asks spec before sending one)
OBS_PART_VERSION = 3  # the first with step_many's obs_part: the frames as a second message part
INFO_COLUMNS_VERSION = 4  # the first with step_many's info_columns: info as one map of lists
MAX_STEP_MANY = 256  # sessions in one step_many: the unpacking limit on a request's arrays (spec.max_step_many)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
OPS = ("spec", "reset", "step", "step_many", "snapshot", "restore", "close", "ping", "stats")
PROMPT_POLICIES = ("explore", "random", "idle")  # what the real scene does during a prompt

# ---- error codes ------------------------------------------------------------------------------
BAD_MESSAGE = "bad_message"      # not msgpack, not a map, over a msgpack limit
TOO_LARGE = "too_large"          # over max_message_bytes
UNKNOWN_OP = "unknown_op"
BAD_REQUEST = "bad_request"      # a missing, unknown or mistyped field
BAD_ACTION = "bad_action"        # wrong length, not finite, out of [0, 1]
NO_SESSION = "no_session"        # none open, not this client's, closed or timed out
NO_SNAPSHOT = "no_snapshot"      # unknown, not this client's, or released
LIMIT = "limit"                  # sessions, snapshots or queued requests at their maximum
SHUTTING_DOWN = "shutting_down"
INTERNAL = "internal"            # a bug: the server stays up and says so
ERROR_CODES = (BAD_MESSAGE, TOO_LARGE, UNKNOWN_OP, BAD_REQUEST, BAD_ACTION, NO_SESSION, NO_SNAPSHOT, LIMIT,
               SHUTTING_DOWN, INTERNAL)


class ProtocolError(Exception):
    """A request the server refuses: becomes the reply {"id", "error": {"code", "message"}}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---- unpacking under limits -------------------------------------------------------------------
@dataclass
class Limits:
    """What a server accepts in one request. Requests are small: an action is a few numbers."""
    max_message_bytes: int = 64 * 1024
    max_str_len: int = 1024
    max_bin_len: int = 1024
    max_array_len: int = MAX_STEP_MANY  # also bounds step_many's sessions and actions
    max_map_len: int = 32


def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack_request(data: bytes, limits: Limits) -> dict:
    """bytes -> the request map, or ProtocolError (too large, not msgpack, not a map)."""
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(TOO_LARGE, f"request of {len(data)} bytes exceeds the server's limit of "
                                       f"{limits.max_message_bytes} bytes")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                                  max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                                  max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
                                  max_ext_len=0)
    except Exception as e:  # msgpack raises ValueError, FormatError, StackError, ExtraData, UnicodeDecodeError...
        raise ProtocolError(BAD_MESSAGE, f"request is not a msgpack map within the server's limits "
                                         f"({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_MESSAGE, f"a request is a msgpack map {{op, id, ...}}, got {type(message).__name__}")
    return message


def unpack_reply(data: bytes) -> dict:
    """Replies come from a server the client chose to trust; only the structure is checked."""
    reply = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(reply, dict):
        raise ValueError(f"a reply is a msgpack map, got {type(reply).__name__}")
    return reply


# ---- requests ---------------------------------------------------------------------------------
def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float))  # bool is an int: a held key may be sent as true


def _token(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64


def _seed(v: Any) -> bool:
    return v is None or (_int(v) and 0 <= v < 2**63)


def _options(v: Any) -> bool:
    return v is None or isinstance(v, dict)


# field -> (check, what it must be); fields not listed for an op are refused
FIELDS = {
    "session": (_token, "a session id string from reset"),
    "snapshot": (_token, "a snapshot id string from snapshot"),
    "seed": (_seed, "null or an integer in [0, 2**63)"),
    "options": (_options, "null or a map (see PROTOCOL.md)"),
    "action": (lambda v: isinstance(v, list), "a list of numbers, one per key"),
    "new_session": (lambda v: isinstance(v, bool), "true or false"),
    "sessions": (lambda v: isinstance(v, list) and len(v) > 0 and all(_token(t) for t in v),
                 "a non-empty list of session id strings"),
    "actions": (lambda v: isinstance(v, list) and all(type(a) is list for a in v),
                "a list of key vectors (lists of numbers), one per session"),
    "obs_part": (lambda v: isinstance(v, bool), "true or false"),
    "info_columns": (lambda v: isinstance(v, bool), "true or false"),
}
OP_FIELDS = {
    "spec": ((), ()),
    "ping": ((), ()),
    "stats": ((), ()),
    "reset": ((), ("session", "seed", "options")),
    "step": (("action",), ("session",)),
    "step_many": (("sessions", "actions"), ("obs_part", "info_columns")),
    "snapshot": ((), ("session",)),
    "restore": (("snapshot",), ("session", "new_session")),
    "close": ((), ("session", "snapshot")),
}
RESET_OPTIONS = {
    "policy": (lambda v: v in PROMPT_POLICIES, f"one of {list(PROMPT_POLICIES)}"),
    "max_episode_steps": (lambda v: v is None or (_int(v) and v >= 1), "null (never) or an integer >= 1"),
    "latency_budget_ms": (lambda v: v is None or (_number(v) and 0 < v < 1e6), "null or milliseconds > 0"),
}


def request_id(message: dict) -> int | str | None:
    """The id to echo: an int, a short string, or None when the request's own id is unusable."""
    rid = message.get("id")
    if (_int(rid) and -2**63 <= rid < 2**64) or (isinstance(rid, str) and len(rid) <= 64):
        return rid
    return None


def check_request(message: dict) -> tuple[str, dict]:
    """(op, fields) of a well-formed request, or ProtocolError naming what is wrong."""
    rid = message.get("id")
    if rid is not None and request_id(message) is None:
        raise ProtocolError(BAD_REQUEST, "id must be an integer or a string of at most 64 characters")
    op = message.get("op")
    if op == "step":  # the request a running agent sends most: {op, id?, action, session?}, checked in place
        action = message.get("action")
        others = len(message) - 1 - ("id" in message)  # fields besides op and id
        if type(action) is list:
            if others == 1:
                return op, {"action": action}
            session = message.get("session")
            if others == 2 and _token(session):
                return op, {"action": action, "session": session}
        # anything else about it: the general checks below name what is wrong
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, f"a request needs an op string, one of {list(OPS)}")
    if op not in OP_FIELDS:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op[:32]!r}; ops are {list(OPS)}")
    required, optional = OP_FIELDS[op]
    fields = {k: v for k, v in message.items() if k not in ("op", "id")}
    unknown = [k for k in fields if k not in required and k not in optional]
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"{op} takes fields {list(required + optional)}, not {unknown[:4]}")
    for name in required:
        if name not in fields:
            raise ProtocolError(BAD_REQUEST, f"{op} needs the field {name!r}: {FIELDS[name][1]}")
    for name, value in fields.items():
        check, what = FIELDS[name]
        if not check(value):
            raise ProtocolError(BAD_REQUEST, f"{op}: {name} must be {what}, got {type(value).__name__}")
    if op == "reset" and fields.get("options"):
        check_reset_options(fields["options"])
    if op == "step_many":
        sessions, actions = fields["sessions"], fields["actions"]
        if len(actions) != len(sessions):
            raise ProtocolError(BAD_REQUEST, f"step_many needs one action per session: {len(sessions)} sessions, "
                                             f"{len(actions)} actions")
        if len(set(sessions)) != len(sessions):
            raise ProtocolError(BAD_REQUEST, "step_many names a session twice: a session makes one frame per step")
    return op, fields


def check_reset_options(options: dict) -> None:
    for name, value in options.items():
        if name not in RESET_OPTIONS:
            raise ProtocolError(BAD_REQUEST, f"reset options are {list(RESET_OPTIONS)}, not {str(name)[:32]!r}")
        check, what = RESET_OPTIONS[name]
        if not check(value):
            raise ProtocolError(BAD_REQUEST, f"reset option {name} must be {what}, got {value!r:.40}")


_NUMBER_TYPES = frozenset({int, float, bool})  # what msgpack decodes numbers to


def decode_action(action: list, action_dim: int, names: list[str] | None = None) -> np.ndarray:
    """A key vector from the wire -> float32 [A]; ProtocolError if it is not one.

    Runs once per step request, so the usual case is kept to two C-level passes: the exact
    types msgpack decodes numbers to (other types fall back to the isinstance check), and
    the range, where 0 <= x <= 1 is false for NaN and for infinities too.
    """
    if len(action) != action_dim:
        keys = f" ({', '.join(names)})" if names else ""
        raise ProtocolError(BAD_ACTION, f"action must hold {action_dim} numbers{keys}, got {len(action)}")
    if not _NUMBER_TYPES.issuperset(map(type, action)) and not all(_number(x) for x in action):
        raise ProtocolError(BAD_ACTION, f"action must hold numbers, got {sorted({type(x).__name__ for x in action})}")
    if not all(0.0 <= x <= 1.0 for x in action):
        raise ProtocolError(BAD_ACTION, "action entries must be finite and in [0, 1] (1 = key held), "
                                        f"got {[x for x in action if not (math.isfinite(x) and 0 <= x <= 1)][:4]}")
    return np.asarray(action, dtype=np.float32)


def decode_actions(rows: list, action_dim: int, names: list[str] | None = None) -> np.ndarray:
    """step_many's key vectors -> float32 [N, A]; ProtocolError naming the first bad one.

    Read as one array and range-checked at once in the usual case; anything else (ragged rows,
    strings, which numpy would parse, NaN) goes through decode_action row by row for its error.
    """
    if all(_NUMBER_TYPES.issuperset(map(type, r)) for r in rows):
        with contextlib.suppress(ValueError, TypeError):
            a = np.asarray(rows, dtype=np.float64)  # the range on the numbers sent, as decode_action checks it
            if a.shape == (len(rows), action_dim) and ((a >= 0.0) & (a <= 1.0)).all():
                return a.astype(np.float32)
    decoded = []
    for i, row in enumerate(rows):
        try:
            decoded.append(decode_action(row, action_dim, names))
        except ProtocolError as e:
            raise ProtocolError(e.code, f"step_many sessions[{i}]: {e.message}") from None
    return np.stack(decoded)


# ---- frames -----------------------------------------------------------------------------------
def encode_frame(frame: np.ndarray) -> dict:
    """uint8 [H, W, 3] -> {"frame": raw bytes, "shape": [H, W, 3], "dtype": "uint8"}; step_many's
    frames, [N, H, W, 3], travel the same way as one obs.

    The bytes are a view of the array's memory, not a copy (msgpack packs a memoryview as
    bin, exactly as it packs bytes): pack the result before the array changes.
    """
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    return {"frame": memoryview(frame).cast("B"), "shape": list(frame.shape), "dtype": "uint8"}


def part_frame(frames: np.ndarray) -> tuple[dict, np.ndarray]:
    """step_many's frames [N, H, W, 3] with obs_part: (the obs map, the array sent as the reply's
    second message part, as it is: no msgpack copy, and libzmq reads it in place)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return {"part": 1, "shape": list(frames.shape), "dtype": "uint8"}, frames


def decode_frame(obs: dict, parts: list | None = None) -> np.ndarray:
    """The inverse of encode_frame: a fresh, writable uint8 array. An obs map naming a `part`
    reads that message part (obs_part): a view of the received message, the reply's own, not copied."""
    try:
        shape = tuple(int(n) for n in obs["shape"])
        if obs.get("dtype", "uint8") != "uint8":
            raise ValueError(f"dtype {obs['dtype']!r}")
        if "part" in obs:
            if not parts or not 0 < obs["part"] < len(parts):
                raise ValueError(f"it names message part {obs['part']!r} of {len(parts or ())}")
            return np.frombuffer(parts[obs["part"]], dtype=np.uint8).reshape(shape)
        return np.frombuffer(obs["frame"], dtype=np.uint8).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed frame in reply ({e}); is it a protocol {PROTOCOL_VERSION} server?") from None
