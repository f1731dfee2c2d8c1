"""Gamepads through `pygame.joystick`: sticks with dead zones, the d-pad (hat), buttons, hot-plug.

State is kept from pygame's joystick events (axis, hat and button motion, device added and
removed), not by polling devices, so a pad plugged in mid-game just works, a pad pulled out
releases everything it held, and tests can post events without hardware. Every pad plugged
in drives the same player; their actions are OR-ed with the keyboard's.

Numbering is SDL's joystick numbering for an Xbox-style pad on Linux (others are close):
axes 0/1 left stick x/y, 3/4 right stick x/y (2/5 are the triggers, resting at -1);
buttons 0 A, 1 B, 2 X, 3 Y, 4 LB, 5 RB, 6 Back, 7 Start; hat 0 the d-pad (y = +1 is up).

## Default mapping

| scene      | left stick                         | right stick x        | d-pad                   | buttons          |
|------------|------------------------------------|----------------------|-------------------------|------------------|
| maze       | x: strafe_left/right, y: forward/back | turn_left/right   | x: turn, y: forward/back | LB/RB: turn      |
| dungeon    | x: left/right, y: up/down          | -                    | x: left/right, y: up/down | A, X: interact |
| platformer | x: left/right                      | -                    | x: left/right           | A, B: jump       |

| button | command                                  |
|--------|------------------------------------------|
| Start  | pause / resume                           |
| Back   | reset (re-prompt from the real scene)    |
| Y      | re-sync the dream from reality           |

A stick counts as pushed past `dead_zone` (default 0.3 of full travel). Remap in the keymap
file (`--keymap`) under "gamepad", e.g.
`{"gamepad": {"dead_zone": 0.2, "maze": {"buttons": {"0": "forward"}}, "system": {"9": "pause"}}}`;
a scene's entry replaces its "axes", "hat_x", "hat_y" or "buttons" table as a whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from controls.keymaps import COMMAND_HELP, COMMANDS, KeymapError

# axes: axis -> [action when pushed negative, action when pushed positive] (None: nothing)
# hat_x / hat_y: the same for the d-pad (hat 0); buttons: button -> action
GAMEPAD_MAPS: dict[str, dict] = {
    "maze": {"axes": {0: ["strafe_left", "strafe_right"], 1: ["forward", "back"], 3: ["turn_left", "turn_right"]},
             "hat_x": ["turn_left", "turn_right"], "hat_y": ["back", "forward"],
             "buttons": {4: "turn_left", 5: "turn_right"}},
    "dungeon": {"axes": {0: ["left", "right"], 1: ["up", "down"]},
                "hat_x": ["left", "right"], "hat_y": ["down", "up"],
                "buttons": {0: "interact", 2: "interact"}},
    "platformer": {"axes": {0: ["left", "right"]},
                   "hat_x": ["left", "right"], "hat_y": [None, None],
                   "buttons": {0: "jump", 1: "jump"}},
}
SYSTEM_BUTTONS: dict[int, str] = {7: "pause", 6: "reset", 3: "resync"}
DEAD_ZONE = 0.3
BUTTON_NAMES = {0: "A", 1: "B", 2: "X", 3: "Y", 4: "LB", 5: "RB", 6: "Back", 7: "Start"}


def load_gamepad_maps(path: str | os.PathLike | None = None) -> tuple[dict[str, dict], dict[int, str], float]:
    """(scene maps, system buttons, dead zone): the defaults with the keymap file's "gamepad" table merged in."""
    maps = {scene: {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in m.items()}
            for scene, m in GAMEPAD_MAPS.items()}
    system, dead_zone = dict(SYSTEM_BUTTONS), DEAD_ZONE
    if path is None:
        return maps, system, dead_zone
    try:
        custom = json.loads(Path(path).read_text()).get("gamepad", {})
        for table, entry in custom.items():
            if table == "dead_zone":
                dead_zone = float(entry)
                if not 0 <= dead_zone < 1:
                    raise ValueError(f"dead_zone must lie in [0, 1), got {dead_zone}")
            elif table == "system":
                for button, command in entry.items():
                    if command is None:
                        system.pop(int(button), None)
                    elif command not in COMMANDS:
                        raise ValueError(f"button {button} is mapped to unknown command {command!r}")
                    else:
                        system[int(button)] = command
            elif table in maps:
                for part, value in entry.items():
                    if part in ("axes", "buttons"):
                        maps[table][part] = {int(k): v for k, v in value.items()}
                    elif part in ("hat_x", "hat_y"):
                        maps[table][part] = list(value)
                    else:
                        raise ValueError(f"unknown gamepad table {part!r} for scene {table!r}")
            else:
                raise ValueError(f"unknown gamepad table {table!r}")
    except FileNotFoundError:
        raise KeymapError(f"no keymap file at {path}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise KeymapError(f"the \"gamepad\" table of keymap file {path} is malformed: {e}") from None
    return maps, system, dead_zone


def stick_actions(axes: dict[int, float], hat: tuple[int, int], buttons: set[int], mapping: dict,
                  index: dict[str, int], dead_zone: float = DEAD_ZONE) -> np.ndarray:
    """bool [A] for one pad's state: axes {axis: value in [-1, 1]}, hat (x, y), buttons held."""
    keys = np.zeros(len(index), dtype=bool)

    def push(names, value):
        name = names[0] if value < 0 else names[1]
        if name is not None:
            keys[index[name]] = True

    for axis, value in axes.items():
        if axis in mapping["axes"] and abs(value) > dead_zone:
            push(mapping["axes"][axis], value)
    for value, part in ((hat[0], "hat_x"), (hat[1], "hat_y")):
        if value:
            push(mapping[part], value)
    for button in buttons:
        if button in mapping["buttons"]:
            keys[index[mapping["buttons"][button]]] = True
    return keys


def check_mapping(mapping: dict, actions: Sequence[str]) -> None:
    named = [n for pair in mapping["axes"].values() for n in pair] + list(mapping["hat_x"]) + list(mapping["hat_y"]) \
        + list(mapping["buttons"].values())
    for name in named:
        if name is not None and name not in actions:
            raise KeymapError(f"gamepad mapping names {name!r}, which is not an action of this scene {list(actions)}")


class Gamepads:
    """Every connected pad's state, from events; `held_actions()` ORs them all."""

    def __init__(self, mapping: dict, actions: Sequence[str], system: dict[int, str] | None = None,
                 dead_zone: float = DEAD_ZONE):
        check_mapping(mapping, actions)
        self.mapping, self.dead_zone = mapping, dead_zone
        self.system = dict(SYSTEM_BUTTONS if system is None else system)
        self.index = {a: i for i, a in enumerate(actions)}
        self.devices: dict[int, object] = {}          # instance id -> open pygame Joystick
        self.axes: dict[int, dict[int, float]] = {}   # instance id -> {axis: value}
        self.hats: dict[int, tuple[int, int]] = {}
        self.buttons: dict[int, set[int]] = {}
        self.pressed = np.zeros(len(actions), dtype=bool)
        self.last_event = ""                          # "pad connected: ..." for the HUD

    def _forget(self, iid: int) -> None:
        for table in (self.devices, self.axes, self.hats, self.buttons):
            table.pop(iid, None)

    def handle(self, event) -> str | None:
        """Track one event; return the command a system button asks for, if any."""
        import pygame

        iid = getattr(event, "instance_id", None)
        if event.type == pygame.JOYDEVICEADDED:
            try:
                pad = pygame.joystick.Joystick(event.device_index)  # opening it is what makes it send events
                self.devices[pad.get_instance_id()] = pad
                self.last_event = f"pad connected: {pad.get_name()}"
            except pygame.error:  # unplugged again before we got to it
                pass
        elif event.type == pygame.JOYDEVICEREMOVED:
            self._forget(iid)  # whatever it held is released
            self.last_event = "pad disconnected"
        elif event.type == pygame.JOYAXISMOTION:
            self.axes.setdefault(iid, {})[event.axis] = float(event.value)
        elif event.type == pygame.JOYHATMOTION and event.hat == 0:
            self.hats[iid] = tuple(event.value)
            self.pressed |= stick_actions({}, self.hats[iid], set(), self.mapping, self.index)
        elif event.type == pygame.JOYBUTTONDOWN:
            if event.button in self.system:
                return self.system[event.button]
            self.buttons.setdefault(iid, set()).add(event.button)
            self.pressed |= stick_actions({}, (0, 0), {event.button}, self.mapping, self.index)
        elif event.type == pygame.JOYBUTTONUP:
            self.buttons.get(iid, set()).discard(event.button)
        return None

    def held_actions(self) -> np.ndarray:
        keys = np.zeros(len(self.index), dtype=bool)
        for iid in set(self.axes) | set(self.hats) | set(self.buttons):
            keys |= stick_actions(self.axes.get(iid, {}), self.hats.get(iid, (0, 0)), self.buttons.get(iid, set()),
                                  self.mapping, self.index, self.dead_zone)
        return keys

    def take_presses(self) -> np.ndarray:
        pressed, self.pressed = self.pressed, np.zeros(len(self.index), dtype=bool)
        return pressed

    def help_lines(self) -> list[tuple[str, str]]:
        """(control, action) rows for the F1 overlay."""
        m = self.mapping
        stick = {0: "left stick x", 1: "left stick y", 3: "right stick x", 4: "right stick y"}
        pair = lambda names: " / ".join(n or "-" for n in names)
        rows = [(stick.get(a, f"axis {a}"), pair(names)) for a, names in m["axes"].items()]
        rows += [(what, pair(m[part])) for part, what in (("hat_x", "d-pad x"), ("hat_y", "d-pad y")) if any(m[part])]
        rows += [(BUTTON_NAMES.get(b, f"button {b}"), a) for b, a in m["buttons"].items()]
        rows += [(BUTTON_NAMES.get(b, f"button {b}"), COMMAND_HELP[c]) for b, c in self.system.items()]
        return rows
