"""Agents' side: a ZeroMQ client, Gymnasium envs over it, and the same envs in-process.

    client = Client("tcp://127.0.0.1:5555")
    session, obs, info = client.reset(seed=0)
    obs, reward, terminated, truncated, info = client.step([1, 0, 0, 0, 0, 0], session)

    env = SimEnv(endpoint="tcp://127.0.0.1:5555")        # a gymnasium.Env over the socket
    env = SimEnv(checkpoint="runs/maze/teacher/checkpoint")  # the same env, in-process, no server
    envs = SimVectorEnv(16, endpoints=["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"])
    env = gymnasium.make("dsa-sim/Maze-v0", endpoint="tcp://127.0.0.1:5555")  # after `import controls.client`

`Client` and `LocalClient` answer the same calls: `send(op, **fields)` returns a request id at
once and `recv(id)` waits for that reply, so a caller can have many requests out before
gathering any (the vector env does this, and the server batches what arrives together).

| SimEnv         | value                                                                   |
|----------------|-------------------------------------------------------------------------|
| action         | MultiBinary(A): one entry per key of the scene, 1 = held this tick      |
| observation    | uint8 [H, W, 3], the generated frame                                    |
| reward         | 0.0: the world model has no reward head                                 |
| terminated     | False: the model never ends an episode                                  |
| truncated      | after max_episode_steps (server default 2000)                           |
| info (step)    | steps, passes, confidence, latency_ms (engine), wall_ms (arrival to     |
|                | frame), batch, tick, over_budget                                        |
"""
from __future__ import annotations

import abc
import time
from typing import Any, Sequence

import gymnasium
import numpy as np
import zmq
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from zmq.utils.monitor import recv_monitor_message

from controls.protocol import (DEFAULT_ENDPOINT, INFO_COLUMNS_VERSION, MAX_STEP_MANY, NO_SESSION, NO_SNAPSHOT,
                               OBS_PART_VERSION, STEP_MANY_VERSION, ProtocolError, check_request, decode_frame, pack,
                               unpack_reply)

TICK_RATE_HZ = 20
PARTS = "__parts__"  # where a reply read off the socket keeps its message parts after the first


class ServerError(RuntimeError):
    """The server refused a request: `code` is one of controls.protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str, op: str | None = None):
        super().__init__(f"{op + ': ' if op else ''}{message} [{code}]")
        self.code = code
        self.message = message
        self.op = op


class ServerRestarted(ServerError):
    """The server restarted since this client last heard from it: its sessions and snapshots are gone."""


class ServerGone(ConnectionError):
    """No connection, or no reply within the timeout: the server is down, restarting or overloaded."""


# ---- the calls both clients answer ------------------------------------------------------------
class Calls(abc.ABC):
    """The protocol's ops as methods, over `send(op, **fields) -> id` and `recv(id) -> reply`."""

    endpoint = "in-process"
    boot: str | None = None
    _restarted = False

    @abc.abstractmethod
    def send(self, op: str, **fields: Any) -> Any:
        """Send a request now; return its id."""

    @abc.abstractmethod
    def recv(self, request_id: Any) -> dict:
        """Wait for the reply to one request; raise its error."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (sessions left open expire on the server)."""

    def request(self, op: str, **fields: Any) -> dict:
        return self.recv(self.send(op, **fields))

    def _finish(self, reply: dict, op: str) -> dict:
        """Raise the reply's error, note a restarted server, decode the frame."""
        boot = reply.get("boot")
        if boot is not None:
            if self.boot is not None and boot != self.boot:
                self._restarted = True
            self.boot = boot
        error = reply.get("error")
        if error is not None:
            code, message = error.get("code", "internal"), error.get("message", "")
            if self._restarted and code in (NO_SESSION, NO_SNAPSHOT):
                raise ServerRestarted(code, f"the server at {self.endpoint} restarted, so its sessions and snapshots "
                                            f"are gone: call reset() to open a new session ({message})", op)
            raise ServerError(code, message, op)
        if op in ("reset", "restore"):
            self._restarted = False
        if "obs" in reply and isinstance(reply["obs"], dict):
            reply["obs"] = decode_frame(reply["obs"], reply.pop(PARTS, None))
        return reply

    @staticmethod
    def action_list(action: Any) -> list:
        a = np.asarray(action, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"an action is one key vector [A], got shape {a.shape}")
        return a.tolist()

    def spec(self) -> dict:
        return self.request("spec")

    def ping(self) -> float:
        """Round trip in seconds."""
        t0 = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - t0

    def stats(self) -> dict:
        return self.request("stats")["stats"]

    def reset(self, seed: int | None = None, options: dict | None = None,
              session: str | None = None) -> tuple[str, np.ndarray, dict]:
        """Open a session (or reset `session`): (session id, first observation, info)."""
        r = self.request("reset", seed=seed, options=options, session=session)
        return r["session"], r["obs"], r["info"]

    def step(self, action: Any, session: str | None = None) -> tuple[np.ndarray, float, bool, bool, dict]:
        r = self.request("step", action=self.action_list(action), session=session)
        return r["obs"], r["reward"], r["terminated"], r["truncated"], r["info"]

    def step_many(self, actions: Any, sessions: Sequence[str], obs_part: bool = False, info_columns: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict] | dict[str, list]]:
        """Step several of this client's sessions in one request (protocol 2): actions [N, A], one
        row per session. (frames [N, H, W, 3], rewards [N], terminated [N], truncated [N], infos).
        One bad session or action refuses the whole request and no session steps.
        obs_part (protocol 3 servers): the frames travel as a message part of their own and come
        back as a view of the received message (this reply's own), with no copy on either side.
        info_columns (protocol 4 servers): infos is one map of N-long lists, not N maps."""
        r = self.request("step_many", **self.many_fields(actions, sessions, obs_part, info_columns))
        return (r["obs"], np.asarray(r["reward"], np.float32), np.asarray(r["terminated"], bool),
                np.asarray(r["truncated"], bool), r["info"])

    @staticmethod
    def many_fields(actions: Any, sessions: Sequence[str], obs_part: bool = False,
                    info_columns: bool = False) -> dict:
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != len(sessions):
            raise ValueError(f"step_many takes one key vector per session: {len(sessions)} sessions, "
                             f"actions of shape {a.shape}")
        return {"sessions": list(sessions), "actions": a.tolist(), "obs_part": obs_part or None,
                "info_columns": info_columns or None}

    def snapshot(self, session: str | None = None) -> str:
        """Fork point: an id the server keeps (the state never travels); restore it any number of times."""
        return self.request("snapshot", session=session)["snapshot"]

    def restore(self, snapshot: str, session: str | None = None,
                new_session: bool = False) -> tuple[str, np.ndarray, dict]:
        r = self.request("restore", snapshot=snapshot, session=session, new_session=new_session or None)
        return r["session"], r["obs"], r["info"]

    def close_session(self, session: str | None = None) -> None:
        """Close `session`; with None, every session and snapshot this client holds."""
        self.request("close", session=session)

    def release(self, snapshot: str) -> None:
        self.request("close", snapshot=snapshot)


class Client(Calls):
    """A DEALER socket to one server. Not thread-safe: one Client per thread.

    timeout_s bounds each reply (a request to a server not reached yet goes out once it is: a
    server that starts within the timeout answers it). A reply that has arrived stays readable
    when the server goes away (so no ZMQ_IMMEDIATE: it drops what a lost connection had brought
    in); a socket monitor says whether the server was ever reached, for the error.
    CURVE: server_key is the server's public certificate file, client_key this client's secret
    certificate file (both made by `python -m controls.server --make-keys DIR`).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 30.0, *,
                 server_key: str | None = None, client_key: str | None = None, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1e3))  # (only a full send queue blocks)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._reached = self._up = False  # ever handshaken with a server; connected at the last event read
        if server_key:
            from zmq.auth import load_certificate
            if not client_key:
                raise ValueError("a CURVE server_key needs this client's secret certificate too (client_key=...)")
            self._socket.curve_serverkey = load_certificate(server_key)[0]
            public, secret = load_certificate(client_key)
            if not secret:
                raise ValueError(f"{client_key} holds no secret key: pass the client's .key_secret file")
            self._socket.curve_publickey, self._socket.curve_secretkey = public, secret
        self._socket.connect(endpoint)
        self._next_id = 0
        self._waiting: dict[int, str] = {}  # request id -> op
        self._replies: dict[int, dict] = {}

    def send(self, op: str, **fields: Any) -> int:
        rid = self._next_id
        self._next_id += 1
        message = {"op": op, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        try:
            self._socket.send(pack(message))
        except zmq.Again:
            raise self._gone(f"{len(self._waiting)} requests are waiting to go out") from None
        self._waiting[rid] = op
        return rid

    def _gone(self, what: str) -> ServerGone:
        """ServerGone, saying whether the server was ever reached (from the monitor's events)."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            self._reached |= event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self._up = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        if not self._up:
            where = "stopped or crashed" if self._reached else "not running there"
            return ServerGone(f"cannot reach the dsa-sim server at {self.endpoint} ({what}; it is {where}): start "
                              f"one with `python -m controls.server --checkpoint DIR --bind {self.endpoint}`")
        return ServerGone(f"no reply from the dsa-sim server at {self.endpoint}, which is connected ({what}): "
                          "it is overloaded or stuck")

    def recv(self, request_id: int) -> dict:
        if request_id not in self._waiting:
            raise KeyError(f"no request {request_id} is waiting for a reply")
        deadline = time.monotonic() + self.timeout_s
        while request_id not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0 or not self._socket.poll(left * 1e3, zmq.POLLIN):
                raise self._gone(f"no reply to {self._waiting.pop(request_id)!r} within {self.timeout_s:g} s")
            reply = unpack_reply(self._socket.recv())
            if self._socket.rcvmore:  # obs_part: the frames follow as a part of their own, not copied
                reply[PARTS] = [None] + [f.buffer for f in self._socket.recv_multipart(copy=False)]
            rid = reply.get("id")
            if rid is None and "error" in reply:
                # the server could not read that request's id (over its unpacking limits, not msgpack):
                # replies come in order, so it answers the oldest request still unanswered
                rid = min((k for k in self._waiting if k not in self._replies), default=None)
            if rid in self._waiting:  # else a late reply to a request that timed out
                self._replies[rid] = reply
        return self._finish(self._replies.pop(request_id), self._waiting.pop(request_id))

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalClient(Calls):
    """The same calls against a `controls.server.Host` in this process: no socket, no server.

    Requests queue until a reply is wanted; then they run in order, with consecutive steps of
    distinct sessions in one batched engine step, as the server would batch them.
    """

    owner = b"in-process"

    def __init__(self, host):
        self.host = host
        self.boot = "local"
        self._next_id = 0
        self._queue: list[tuple[int, str, dict | None, ProtocolError | None]] = []
        self._replies: dict[int, tuple[str, dict]] = {}

    def send(self, op: str, **fields: Any) -> int:
        rid = self._next_id
        self._next_id += 1
        message = {"op": op, "id": rid, **{k: v for k, v in fields.items() if v is not None}}
        try:
            op, fields = check_request(message)
            self._queue.append((rid, op, fields, None))
        except ProtocolError as e:
            self._queue.append((rid, op, None, e))
        return rid

    def recv(self, request_id: int) -> dict:
        if request_id not in self._replies:
            self._flush()
        op, reply = self._replies.pop(request_id)
        return self._finish(reply, op)

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        batch: list[tuple[int, str, list, dict]] = []  # (request id, op, its tickets, its fields)
        for rid, op, fields, error in queue:
            now = time.perf_counter()
            if error is None and op in ("step", "step_many"):
                try:
                    tickets = ([self.host.prepare_step(self.owner, fields, now)] if op == "step"
                               else self.host.prepare_steps(self.owner, fields, now))
                except ProtocolError as e:
                    error = e
                else:
                    batched = {id(t.session) for _, _, ts, _ in batch for t in ts}
                    if any(id(t.session) in batched for t in tickets):
                        self._run(batch)
                    batch.append((rid, op, tickets, fields))
                    continue
            self._run(batch)
            if error is None:
                try:
                    reply = self.host.handle(self.owner, op, fields, now)
                except ProtocolError as e:
                    error = e
            self._replies[rid] = (op, self._error(error) if error else self._copy(reply))
        self._run(batch)

    def _run(self, batch: list) -> None:
        if batch:
            results = self.host.run_steps([t for _, _, ts, _ in batch for t in ts], time.perf_counter())
            a = 0
            for rid, op, tickets, fields in batch:
                b = a + len(tickets)
                reply = results.body(a) if op == "step" else results.many(a, b, bool(fields.get("info_columns")))
                self._replies[rid] = (op, self._copy(reply))
                a = b
            batch.clear()

    @staticmethod
    def _error(e: ProtocolError) -> dict:
        return {"error": {"code": e.code, "message": e.message}}

    @staticmethod
    def _copy(reply: dict) -> dict:
        reply = dict(reply)
        if "obs" in reply:  # the host keeps its own reference to the frame
            reply["obs"] = np.array(reply["obs"], dtype=np.uint8, copy=True)
        if isinstance(reply.get("info"), dict):  # (step_many's: a list of maps, or of columns, made for it)
            reply["info"] = dict(reply["info"])
        return reply

    def close(self) -> None:
        """Nothing to release: the host and its engine go with the env that made them."""


def local_host(checkpoint: str | None = None, scene: str | None = None, num_sessions: int = 1,
               device: str | None = None, sampler_steps: int | None = None):
    """A Host over an engine loaded here, for the in-process envs."""
    from controls.server import Host, ServerConfig
    from sim.bundle import shipped_checkpoint
    from sim.engine import WorldSim
    checkpoint = checkpoint or shipped_checkpoint(scene or "maze")
    if checkpoint is None:
        raise ValueError(f"this install ships no model of scene {scene or 'maze'!r}: pass checkpoint=DIR "
                         "for an in-process env, or endpoint=... for a server")
    engine = WorldSim.load(checkpoint, num_sessions=num_sessions, device=device)
    if sampler_steps:
        engine.sampler_steps = sampler_steps
    return Host(engine, ServerConfig(max_sessions=num_sessions), scene=scene, checkpoint=str(checkpoint))


def _options(policy, max_episode_steps, latency_budget_ms) -> dict:
    options = {"policy": policy, "max_episode_steps": max_episode_steps, "latency_budget_ms": latency_budget_ms}
    return {k: v for k, v in options.items() if v is not None}


def _spaces(spec: dict, scene: str | None) -> tuple[spaces.Space, spaces.Space]:
    if scene is not None and spec["scene"] != scene:
        raise ValueError(f"the server runs scene {spec['scene']!r}, not {scene!r}")
    return spaces.MultiBinary(spec["action_space"]["n"]), spaces.Box(0, 255, tuple(spec["frame_shape"]), np.uint8)


# ---- Gymnasium ------------------------------------------------------------------------------------
class SimEnv(gymnasium.Env):
    """One session of the world model as a Gymnasium env: over a server (`endpoint`) or in-process.

    endpoint: a server's ZeroMQ endpoint. Without one, the env loads `checkpoint` (default:
    the shipped model of `scene`) into this process. `policy`, `max_episode_steps` and
    `latency_budget_ms` are sent as reset options (None: the server's default).
    server_key / client_key: CURVE certificate files, for a server bound beyond loopback.
    `snapshot()` / `restore(snapshot)` fork the session for search and planning.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICK_RATE_HZ}

    def __init__(self, endpoint: str | None = None, *, scene: str | None = None, checkpoint: str | None = None,
                 render_mode: str | None = "rgb_array", policy: str | None = None,
                 max_episode_steps: int | None = None, latency_budget_ms: float | None = None,
                 timeout_s: float = 30.0, device: str | None = None, sampler_steps: int | None = None,
                 server_key: str | None = None, client_key: str | None = None, client: Calls | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.render_mode = render_mode
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif endpoint is not None:
            self.client = Client(endpoint, timeout_s, server_key=server_key, client_key=client_key)
        else:
            self.client = LocalClient(local_host(checkpoint, scene, 1, device, sampler_steps))
        self.info = self.client.spec()
        self.action_space, self.observation_space = _spaces(self.info, scene)
        self.actions = tuple(self.info["actions"])
        self.options = _options(policy, max_episode_steps, latency_budget_ms)
        self.session: str | None = None
        self._frame: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        world_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        options = {**self.options, **(options or {})}
        try:
            self.session, obs, info = self.client.reset(world_seed, options or None, self.session)
        except ServerError as e:
            if e.code != NO_SESSION:
                raise
            # closed for idleness, or the server restarted: open a fresh one
            self.session, obs, info = self.client.reset(world_seed, options or None)
        self._frame = obs
        return obs.copy(), dict(info, session=self.session)

    def step(self, action: Any):
        if self.session is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action)
        if a.shape != self.action_space.shape:
            raise ValueError(f"expected an action of shape {self.action_space.shape} (keys {list(self.actions)}), "
                             f"got {a.shape}")
        obs, reward, terminated, truncated, info = self.client.step(a, self.session)
        self._frame = obs
        return obs.copy(), float(reward), bool(terminated), bool(truncated), info

    def snapshot(self) -> str:
        return self.client.snapshot(self.session)

    def restore(self, snapshot: str) -> tuple[np.ndarray, dict]:
        _, obs, info = self.client.restore(snapshot, self.session)
        self._frame = obs
        return obs.copy(), info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        return self._frame.copy()

    def close(self) -> None:
        if self.session is not None:
            try:
                self.client.close_session(self.session)
            except (ServerError, ServerGone):
                pass  # already gone: closed for idleness, or the server stopped
            self.session = None
        if self._own_client:
            self.client.close()


class SimVectorEnv(VectorEnv):
    """`num_envs` sessions stepped together: every request goes out before any reply is read.

    endpoints: one endpoint or a list (e.g. one server per GPU); env i uses endpoints[i % n].
    Without endpoints, one in-process engine holds all the sessions. Other arguments as SimEnv. Autoreset: next step
    (the step after a truncation resets that env and ignores its action).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": TICK_RATE_HZ, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, endpoints: str | Sequence[str] | None = None, *, scene: str | None = None,
                 checkpoint: str | None = None, render_mode: str | None = "rgb_array", policy: str | None = None,
                 max_episode_steps: int | None = None, latency_budget_ms: float | None = None,
                 timeout_s: float = 30.0, device: str | None = None, sampler_steps: int | None = None,
                 server_key: str | None = None, client_key: str | None = None, endpoint: str | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        endpoints = endpoints if endpoints is not None else endpoint  # gymnasium.make_vec passes endpoint=
        if endpoints is None:
            host = local_host(checkpoint, scene, self.num_envs, device, sampler_steps)
            self.clients: list[Calls] = [LocalClient(host)]
        else:
            endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
            self.clients = [Client(e, timeout_s, server_key=server_key, client_key=client_key) for e in endpoints]
        self.env_client = [self.clients[i % len(self.clients)] for i in range(self.num_envs)]
        specs = [c.spec() for c in self.clients]
        keys = ("scene", "actions", "frame_shape")
        if any(tuple(str(s[k]) for k in keys) != tuple(str(specs[0][k]) for k in keys) for s in specs):
            raise ValueError(f"the servers differ in scene, actions or frame shape: "
                             f"{[[s[k] for k in keys] for s in specs]}")
        self.info = specs[0]
        # each server's sub-envs step in step_many requests of at most its max_step_many sessions
        # (one request for up to 256 envs), unless it predates protocol 2: 0, one step per env
        self._many = {id(c): int(s.get("max_step_many", MAX_STEP_MANY)) if s.get("protocol", 1) >= STEP_MANY_VERSION
                      else 0 for c, s in zip(self.clients, specs)}
        # and from protocol 3 their frames come as a message part of their own (no msgpack copy)
        self._part = {id(c): s.get("protocol", 1) >= OBS_PART_VERSION for c, s in zip(self.clients, specs)}
        # and from protocol 4 their infos as columns, laid into the vector infos whole (not env by env)
        self._columns = {id(c): s.get("protocol", 1) >= INFO_COLUMNS_VERSION for c, s in zip(self.clients, specs)}
        self.single_action_space, self.single_observation_space = _spaces(self.info, scene)
        self.action_space = spaces.MultiBinary((self.num_envs, self.single_action_space.n))
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.options = _options(policy, max_episode_steps, latency_budget_ms)
        self.sessions: list[str | None] = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._frames = np.zeros((self.num_envs, *self.single_observation_space.shape), np.uint8)

    def _reset_ids(self, envs, seeds, options: dict) -> dict[int, tuple[Calls, int]]:
        """Send reset requests for `envs` (not waiting): env -> (client, request id)."""
        return {int(i): (self.env_client[i], self.env_client[i].send("reset", seed=s, options=options or None,
                                                                 session=self.sessions[i]))
                for i, s in zip(envs, seeds)}

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is None:
            seeds = [int(s) for s in self.np_random.integers(0, 2**31 - 1, self.num_envs)]
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
        options = {**self.options, **(options or {})}
        infos: dict = {}
        for i, (client, rid) in self._reset_ids(range(self.num_envs), seeds, options).items():
            try:
                reply = client.recv(rid)
            except ServerError as e:
                if e.code != NO_SESSION:
                    raise
                # closed for idleness, or the server restarted: open a fresh one
                reply = client.request("reset", seed=seeds[i], options=options or None)
            self.sessions[i] = reply["session"]
            self._frames[i] = reply["obs"]
            infos = self._add_info(infos, dict(reply["info"], session=reply["session"]), i)
        self._autoreset[:] = False
        return self._frames.copy(), infos

    def step(self, actions: Any):
        if any(s is None for s in self.sessions):
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"expected actions of shape {self.action_space.shape}, got {actions.shape}")
        resets = np.flatnonzero(self._autoreset)
        reset_set = set(resets.tolist())
        out = self._reset_ids(resets, [int(s) for s in self.np_random.integers(0, 2**31 - 1, len(resets))],
                              self.options)
        many: list[tuple[Calls, Any, np.ndarray]] = []  # (client, request id, its envs)
        for c in self.clients:  # all requests out before any reply is read
            envs = np.array([i for i in np.flatnonzero(~self._autoreset) if self.env_client[i] is c], dtype=int)
            if not len(envs):
                continue
            if self._many[id(c)]:
                for chunk in np.array_split(envs, -(-len(envs) // self._many[id(c)])):
                    fields = Calls.many_fields(actions[chunk], [self.sessions[i] for i in chunk], self._part[id(c)],
                                               self._columns[id(c)])
                    many.append((c, c.send("step_many", **fields), chunk))
            else:
                for i in envs:
                    out[int(i)] = (c, c.send("step", action=Calls.action_list(actions[i]), session=self.sessions[i]))
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        replies: dict[int, dict] = {}
        columns: list[tuple[np.ndarray, dict[str, list]]] = []
        for i, (client, rid) in sorted(out.items()):
            replies[i] = client.recv(rid)
        for client, rid, envs in many:
            r = client.recv(rid)
            self._frames[envs] = r["obs"]
            rewards[envs], terminated[envs], truncated[envs] = r["reward"], r["terminated"], r["truncated"]
            if isinstance(r["info"], dict):
                columns.append((envs, r["info"]))
            else:
                replies.update((int(i), {"info": info}) for i, info in zip(envs, r["info"]))
        infos: dict = {}
        for i in range(self.num_envs):
            reply = replies.get(i)
            if reply is None:  # its info came in columns
                continue
            if "obs" in reply:  # a reset or a single step
                self._frames[i] = reply["obs"]
                if i in reset_set:
                    self.sessions[i] = reply["session"]
                else:
                    rewards[i], terminated[i], truncated[i] = reply["reward"], reply["terminated"], reply["truncated"]
            infos = self._add_info(infos, reply["info"], i)
        for envs, info in columns:
            infos = self._add_info_columns(infos, info, envs)
        self._autoreset = terminated | truncated
        return self._frames.copy(), rewards, terminated, truncated, infos

    def _add_info_columns(self, infos: dict, columns: dict[str, list], envs: np.ndarray) -> dict:
        """One step_many reply's info columns into the vector infos at `envs`: the arrays and `_key`
        masks that `_add_info` would make of them env by env, made with one assignment per key."""
        for key, values in columns.items():
            kind = type(values[0])
            if kind is dict or kind is np.ndarray:  # nested or array values: gymnasium's own way, env by env
                for i, value in zip(envs, values):
                    infos = self._add_info(infos, {key: value}, int(i))
                continue
            array = infos.get(key)
            if array is None:
                array = (np.zeros(self.num_envs, dtype=kind) if kind in (int, float, bool) or issubclass(kind, np.number)
                         else np.full(self.num_envs, None, dtype=object))
            array[envs] = values
            mask = infos.get(f"_{key}")
            if mask is None:
                mask = np.zeros(self.num_envs, dtype=np.bool_)
            mask[envs] = True
            infos[key], infos[f"_{key}"] = array, mask
        return infos

    def render(self) -> np.ndarray | None:
        return None if self.render_mode is None else self._frames.copy()

    def close_extras(self, **kwargs: Any) -> None:
        for client in self.clients:
            try:
                client.request("close")  # every session and snapshot of this client
            except (ServerError, ServerGone):
                pass
            client.close()


def register_envs() -> list[str]:
    """dsa-sim/<Scene>-v0 for every scene: gymnasium.make(id, endpoint=...) or make(id, checkpoint=...)."""
    import scenes
    ids = []
    for scene in scenes.names():
        env_id = f"dsa-sim/{scene.capitalize()}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point="controls.client:SimEnv", kwargs={"scene": scene},
                               vector_entry_point="controls.client:SimVectorEnv",
                               # frames of a batched server may differ in the last bit with the batch's
                               # composition, and info carries timings
                               nondeterministic=True)
        ids.append(env_id)
    return ids


register_envs()
