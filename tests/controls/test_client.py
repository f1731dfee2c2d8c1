"""Agents' side: the Gymnasium envs over a server and in-process, the vector env, registration."""
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import controls.client  # noqa: F401  (registers dsa-sim/<Scene>-v0)
from controls.client import Client, SimEnv, SimVectorEnv

A = 6


def actions(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, (n, A)).astype(np.int8)


def play(env, seed, keys):
    obs, _ = env.reset(seed=seed)
    return [obs] + [env.step(k)[0] for k in keys]


@pytest.fixture(scope="module")
def endpoint(start_server):
    return start_server(max_sessions=8).endpoint


def test_registered_ids_for_every_scene():
    import scenes
    for name in scenes.names():
        spec = gymnasium.spec(f"dsa-sim/{name.capitalize()}-v0")
        assert spec.kwargs == {"scene": name} and spec.nondeterministic


def test_check_env_over_the_socket(endpoint):
    env = gymnasium.make("dsa-sim/Maze-v0", endpoint=endpoint)
    check_env(env.unwrapped)
    env.close()


def test_check_env_in_process(world_checkpoint, one_torch_thread):
    env = gymnasium.make("dsa-sim/Maze-v0", checkpoint=str(world_checkpoint), sampler_steps=1)
    check_env(env.unwrapped)
    env.close()


def test_remote_and_in_process_envs_make_the_same_frames(endpoint, world_checkpoint, one_torch_thread):
    keys = actions(6)
    remote = SimEnv(endpoint)
    local = SimEnv(checkpoint=str(world_checkpoint), sampler_steps=1)
    assert remote.observation_space == local.observation_space and remote.action_space == local.action_space
    runs = [play(remote, 21, keys), play(remote, 21, keys), play(local, 21, keys)]
    for frames in zip(*runs):
        assert frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
        assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], frames[2])
    assert not np.array_equal(play(remote, 22, keys)[0], runs[0][0])
    _, reward, terminated, truncated, info = remote.step(keys[0])
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert {"steps", "passes", "confidence", "latency_ms", "wall_ms", "batch", "tick", "over_budget"} <= set(info)
    with pytest.raises(ValueError, match="shape"):
        remote.step(np.zeros(A + 1))
    remote.close(), local.close()
    remote.close()  # twice is fine


def test_env_snapshot_restore_and_a_lost_session(endpoint):
    env = SimEnv(endpoint, policy="idle")
    env.reset(seed=3)
    snap = env.snapshot()
    keys = actions(4, seed=1)
    ahead = [env.step(k)[0] for k in keys]
    obs, info = env.restore(snap)
    assert info["tick"] == 0
    assert all(np.array_equal(a, env.step(k)[0]) for a, k in zip(ahead, keys))
    env.client.close_session(env.session)  # as if it had expired
    obs, info = env.reset(seed=3)          # a fresh session, transparently
    assert info["tick"] == 0 and obs.shape == (32, 32, 3)
    env.close()


def test_vector_env_spreads_over_endpoints_batches_and_autoresets(start_server):
    servers = [start_server(max_sessions=4), start_server(max_sessions=4)]
    envs = SimVectorEnv(4, endpoints=[s.endpoint for s in servers], max_episode_steps=3)
    obs, infos = envs.reset(seed=0)
    assert obs.shape == (4, 32, 32, 3) and list(infos["seed"]) == [0, 1, 2, 3]
    assert [s.host.stats()["sessions"] for s in servers] == [2, 2]
    batches = []
    for t in range(4):
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert obs.shape == (4, 32, 32, 3) and rewards.shape == (4,)
        assert list(truncated) == [t == 2] * 4 and not terminated.any()
        if t < 3:
            batches.append(infos["batch"])
    assert list(infos["tick"]) == [0] * 4 and "batch" not in infos  # next-step autoreset: this step reset them
    assert np.mean(batches) > 1, "requests sent together should be batched by each server"
    envs.close()
    assert [s.host.stats()["sessions"] for s in servers] == [0, 0]
    for s in servers:
        s.stop()


def test_vector_env_in_process_and_through_make_vec(world_checkpoint, endpoint, one_torch_thread):
    local = SimVectorEnv(3, checkpoint=str(world_checkpoint), sampler_steps=1)
    local.reset(seed=5)
    _, _, _, _, infos = local.step(local.action_space.sample())
    assert list(infos["batch"]) == [3, 3, 3]  # one engine step for all three
    lost = local.sessions[1]
    local.clients[0].close_session(lost)  # as if it had expired
    local.reset(seed=5)
    assert lost not in local.sessions and None not in local.sessions
    local.close()
    envs = gymnasium.make_vec("dsa-sim/Maze-v0", num_envs=2, endpoint=endpoint)
    assert isinstance(envs, SimVectorEnv) and envs.num_envs == 2
    obs, _ = envs.reset(seed=1)
    assert envs.step(envs.action_space.sample())[0].shape == obs.shape == (2, 32, 32, 3)
    envs.close()


def test_a_scene_mismatch_is_refused(endpoint):
    with pytest.raises(ValueError, match="runs scene 'maze', not 'dungeon'"):
        SimEnv(endpoint, scene="dungeon")
    with Client(endpoint) as c:
        assert c.ping() > 0 and c.spec()["scene"] == "maze"
