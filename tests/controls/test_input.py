"""Keyboard and gamepad: events map to the right actions, remapping files, one clear error each."""
import json
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np
import pygame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scenes
from controls.gamepad import GAMEPAD_MAPS, SYSTEM_BUTTONS, Gamepads, load_gamepad_maps, stick_actions
from controls.generator import LiveInput
from controls.keymaps import (COMMANDS, KEYMAPS, SYSTEM_KEYS, Keyboard, KeymapError, check_keymap, help_lines,
                              load_keymaps)


@pytest.fixture(scope="module", autouse=True)
def display():
    pygame.display.init()
    yield
    pygame.display.quit()


def key(kind, name):
    return pygame.event.Event(kind, key=pygame.key.key_code(name), mod=0, unicode="", scancode=0)


def vector(actions, *held):
    v = np.zeros(len(actions), dtype=bool)
    for a in held:
        v[actions.index(a)] = True
    return v


# ---- keyboard -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scene", scenes.names())
def test_every_scene_has_a_valid_keymap_that_reaches_every_action(scene):
    actions = list(scenes.game_class(scene).ACTIONS)
    check_keymap(KEYMAPS[scene], actions, SYSTEM_KEYS)  # raises on an unknown key name or action
    assert set(KEYMAPS[scene].values()) == set(actions)
    assert not set(KEYMAPS[scene]) & set(SYSTEM_KEYS), "a key must not be both an action and a command"
    assert set(SYSTEM_KEYS.values()) == set(COMMANDS)
    rows = help_lines(scene, actions, KEYMAPS[scene], SYSTEM_KEYS)
    assert {what for _, what in rows} >= set(actions)


@pytest.mark.parametrize("scene", scenes.names())
def test_key_events_map_to_the_scenes_actions(scene):
    actions = list(scenes.game_class(scene).ACTIONS)
    kb = Keyboard(KEYMAPS[scene], actions, SYSTEM_KEYS)
    for name, action in KEYMAPS[scene].items():
        kb.handle(key(pygame.KEYDOWN, name))
        assert np.array_equal(kb.held_actions(), vector(actions, action)), name
        kb.handle(key(pygame.KEYUP, name))
        assert not kb.held_actions().any()
        assert np.array_equal(kb.take_presses(), vector(actions, action))  # the press counted once
        assert not kb.take_presses().any()


def test_keys_combine_and_commands_come_back():
    actions = list(scenes.game_class("maze").ACTIONS)
    kb = Keyboard(KEYMAPS["maze"], actions, SYSTEM_KEYS)
    for name in ("w", "left", "d"):
        assert kb.handle(key(pygame.KEYDOWN, name)) is None
    assert np.array_equal(kb.held_actions(), vector(actions, "forward", "turn_left", "strafe_right"))
    for name, command in SYSTEM_KEYS.items():
        assert kb.handle(key(pygame.KEYDOWN, name)) == command
    kb.handle(pygame.event.Event(pygame.WINDOWFOCUSLOST))
    assert not kb.held_actions().any(), "keys held when the window lost focus must not stick"


def test_keymap_file_merges_unbinds_and_rejects_bad_entries(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"maze": {"i": "forward", "w": None}, "system": {"f5": "screenshot"}}))
    keymaps, system = load_keymaps(f)
    assert keymaps["maze"]["i"] == "forward" and "w" not in keymaps["maze"] and keymaps["maze"]["up"] == "forward"
    assert system["f5"] == "screenshot" and system["f12"] == "screenshot"
    actions = list(scenes.game_class("maze").ACTIONS)
    kb = Keyboard(keymaps["maze"], actions, system)
    kb.handle(key(pygame.KEYDOWN, "i"))
    assert np.array_equal(kb.held_actions(), vector(actions, "forward"))

    for bad, words in [({"maze": {"nosuchkey": "forward"}}, "unknown key name"),
                       ({"maze": {"x": "fly"}}, "not an action"),
                       ({"system": {"x": "explode"}}, "unknown command"),
                       ({"moon": {"x": "forward"}}, "unknown table")]:
        f.write_text(json.dumps(bad))
        with pytest.raises(KeymapError, match=words):
            keymaps, system = load_keymaps(f)
            check_keymap(keymaps["maze"], actions, system)
    f.write_text("{not json")
    with pytest.raises(KeymapError, match="not valid JSON"):
        load_keymaps(f)
    with pytest.raises(KeymapError, match="no keymap file"):
        load_keymaps(tmp_path / "missing.json")


# ---- gamepad ------------------------------------------------------------------------------------
def pad(kind, **kw):
    return pygame.event.Event(kind, instance_id=kw.pop("instance_id", 0), joy=0, **kw)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-1, 1), y=st.floats(-1, 1), dead=st.floats(0, 0.9))
def test_stick_past_the_dead_zone_holds_exactly_its_direction(x, y, dead):
    actions = list(scenes.game_class("maze").ACTIONS)
    index = {a: i for i, a in enumerate(actions)}
    got = stick_actions({0: x, 1: y}, (0, 0), set(), GAMEPAD_MAPS["maze"], index, dead)
    want = set()
    if abs(x) > dead:
        want.add("strafe_left" if x < 0 else "strafe_right")
    if abs(y) > dead:
        want.add("forward" if y < 0 else "back")  # stick up is negative y
    assert np.array_equal(got, vector(actions, *want))


@pytest.mark.parametrize("scene", scenes.names())
def test_gamepad_events_map_to_actions_and_unplugging_releases_them(scene):
    actions = list(scenes.game_class(scene).ACTIONS)
    mapping = GAMEPAD_MAPS[scene]
    pads = Gamepads(mapping, actions)
    for axis, (neg, pos) in mapping["axes"].items():
        for value, action in ((-0.9, neg), (0.9, pos)):
            pads.handle(pad(pygame.JOYAXISMOTION, axis=axis, value=value))
            assert np.array_equal(pads.held_actions(), vector(actions, *[a for a in [action] if a])), (axis, value)
        pads.handle(pad(pygame.JOYAXISMOTION, axis=axis, value=0.1))  # inside the dead zone
        assert not pads.held_actions().any()
    for button, action in mapping["buttons"].items():
        pads.handle(pad(pygame.JOYBUTTONDOWN, button=button))
        assert np.array_equal(pads.held_actions(), vector(actions, action))
        pads.handle(pad(pygame.JOYBUTTONUP, button=button))
        assert not pads.held_actions().any()
        assert pads.take_presses()[actions.index(action)]
    if mapping["hat_x"][1]:
        pads.handle(pad(pygame.JOYHATMOTION, hat=0, value=(1, 0)))
        assert np.array_equal(pads.held_actions(), vector(actions, mapping["hat_x"][1]))
    # a second pad holds something too; pulling the first out releases only what it held
    first = next(iter(mapping["axes"]))
    pads.handle(pad(pygame.JOYAXISMOTION, axis=first, value=0.95, instance_id=1))
    pads.handle(pygame.event.Event(pygame.JOYDEVICEREMOVED, instance_id=0))
    assert np.array_equal(pads.held_actions(), vector(actions, mapping["axes"][first][1]))
    pads.handle(pygame.event.Event(pygame.JOYDEVICEREMOVED, instance_id=1))
    assert not pads.held_actions().any()
    for button, command in SYSTEM_BUTTONS.items():
        assert pads.handle(pad(pygame.JOYBUTTONDOWN, button=button)) == command


def test_gamepad_hot_plug_of_a_missing_device_is_harmless():
    pads = Gamepads(GAMEPAD_MAPS["maze"], list(scenes.game_class("maze").ACTIONS))
    pygame.joystick.init()
    pads.handle(pygame.event.Event(pygame.JOYDEVICEADDED, device_index=7))  # no such device here
    assert pads.devices == {} and not pads.held_actions().any()


def test_gamepad_remap_from_the_keymap_file(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"gamepad": {"dead_zone": 0.5, "maze": {"buttons": {"0": "forward"}}, "system": {"9": "pause"}}}))
    maps, system, dead = load_gamepad_maps(f)
    assert dead == 0.5 and maps["maze"]["buttons"] == {0: "forward"} and system[9] == "pause"
    assert load_keymaps(f)[0]["maze"] == KEYMAPS["maze"]  # the keyboard part ignores the gamepad table
    f.write_text(json.dumps({"gamepad": {"dead_zone": 3}}))
    with pytest.raises(KeymapError, match="dead_zone"):
        load_gamepad_maps(f)


# ---- the input slot the generator reads ---------------------------------------------------------
def test_live_input_keeps_the_newest_and_counts_a_tap_once():
    live = LiveInput(3)
    live.offer([1, 0, 0], [1, 0, 0])
    live.offer([0, 1, 0], [0, 1, 0])   # a newer tick: held keys are overwritten, not queued
    live.offer([0, 0, 0], [0, 0, 0])   # ... and released again before the frame started
    assert live.take().tolist() == [1, 1, 0]  # both taps count for the next frame
    assert live.take().tolist() == [0, 0, 0]  # once
    live.offer([0, 0, 1], [0, 0, 1])
    assert live.take().tolist() == [0, 0, 1] and live.take().tolist() == [0, 0, 1]  # held keeps holding
