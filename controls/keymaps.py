"""Keyboard maps: which key holds which action of each scene, and the keys that drive the player.

Keymaps are plain dicts from pygame key names (`pygame.key.name`: "w", "up", "left shift",
"space", "[") to names: scene action names in `KEYMAPS[scene]`, player commands in
`SYSTEM_KEYS`. Several keys may hold one action. A key held = its action is 1 for every frame
generated while it is down; a key tapped between two frames still counts for the next frame.

## Scene keys

| scene      | action       | keys                |
|------------|--------------|---------------------|
| maze       | forward      | W, Up               |
| maze       | back         | S, Down             |
| maze       | turn_left    | Left, Q             |
| maze       | turn_right   | Right, E            |
| maze       | strafe_left  | A                   |
| maze       | strafe_right | D                   |
| dungeon    | up           | W, Up               |
| dungeon    | down         | S, Down             |
| dungeon    | left         | A, Left             |
| dungeon    | right        | D, Right            |
| dungeon    | interact     | Space, E, J         |
| platformer | left         | A, Left             |
| platformer | right        | D, Right            |
| platformer | jump         | Space, W, Up, K     |

## Player keys (every scene)

| key      | command     | does                                                                  |
|----------|-------------|-----------------------------------------------------------------------|
| F1       | help        | show / hide the key overlay                                           |
| H        | hud         | show / hide the HUD                                                   |
| P, Pause | pause       | pause / resume generation                                             |
| R        | reset       | re-prompt the model from the real scene, same world seed (replay: play again from the start) |
| N        | new_world   | re-prompt from a new world (fresh random seed)                        |
| Tab      | resync      | re-prompt the dream from the real scene's last frames: the dream catches up with reality |
| [        | fewer_steps | one step fewer per frame, fixed from then on                          |
| ]        | more_steps  | one step more per frame, fixed from then on                           |
| 0        | auto_steps  | back to adaptive steps (DSA; distilled students only)                 |
| F12      | screenshot  | save the window (HUD included) as PNG under screenshots/              |
| Esc      | quit        | quit (closing the window does too)                                    |

The real scene runs beside the model in every mode (`--side-by-side` only shows it), so Tab
works without it too. A replay (`--replay`) takes F1, H, P, R, F12, Esc; a re-run
(`--replay --rerun`) takes F1, H, P, F12, Esc: anything that re-prompts would leave the
recorded path.

## Remapping

`python play.py --keymap keys.json` merges a small JSON file over these tables; a null
unbinds a key, and a "gamepad" table remaps the pad (see controls/gamepad.py):

    {"maze": {"i": "forward", "k": "back", "w": null},
     "system": {"f5": "screenshot"}}

An unknown key name, action, command or table is one clear error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

KEYMAPS: dict[str, dict[str, str]] = {
    "maze": {"w": "forward", "up": "forward", "s": "back", "down": "back",
             "left": "turn_left", "q": "turn_left", "right": "turn_right", "e": "turn_right",
             "a": "strafe_left", "d": "strafe_right"},
    "dungeon": {"w": "up", "up": "up", "s": "down", "down": "down", "a": "left", "left": "left",
                "d": "right", "right": "right", "space": "interact", "e": "interact", "j": "interact"},
    "platformer": {"a": "left", "left": "left", "d": "right", "right": "right",
                   "space": "jump", "w": "jump", "up": "jump", "k": "jump"},
}

SYSTEM_KEYS: dict[str, str] = {
    "f1": "help", "h": "hud", "p": "pause", "break": "pause", "r": "reset", "n": "new_world",
    "tab": "resync", "[": "fewer_steps", "]": "more_steps", "0": "auto_steps", "f12": "screenshot", "escape": "quit",
}
COMMANDS = ("help", "hud", "pause", "reset", "new_world", "resync", "fewer_steps", "more_steps", "auto_steps",
            "screenshot", "quit")
COMMAND_HELP = {
    "help": "this help", "hud": "HUD on/off", "pause": "pause / resume", "reset": "re-prompt from the real scene",
    "new_world": "new world (new seed)", "resync": "re-sync dream from reality", "fewer_steps": "fewer steps (fixed)",
    "more_steps": "more steps (fixed)", "auto_steps": "adaptive steps (students)", "screenshot": "screenshot (PNG)",
    "quit": "quit",
}


class KeymapError(ValueError):
    """A keymap file or table that names unknown keys, actions or commands."""


def _check_key_name(name: str) -> None:
    import pygame  # only the player needs key codes; the tables above stay importable anywhere
    try:
        pygame.key.key_code(name)
    except ValueError:
        raise KeymapError(f"unknown key name {name!r}; use pygame key names such as 'w', 'up', 'space', 'left shift'") from None


def load_keymaps(path: str | os.PathLike | None = None) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(scene keymaps, system keys): the defaults, with the JSON file at `path` merged over them."""
    keymaps = {scene: dict(keys) for scene, keys in KEYMAPS.items()}
    system = dict(SYSTEM_KEYS)
    if path is None:
        return keymaps, system
    path = Path(path)
    try:
        custom = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeymapError(f"no keymap file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KeymapError(f"keymap file {path} is not valid JSON ({e})") from None
    if not isinstance(custom, dict) or not all(isinstance(v, dict) for v in custom.values()):
        raise KeymapError(f"keymap file {path} must map scene names (or 'system') to {{key name: action}} objects")
    for table, keys in custom.items():
        if table == "gamepad":  # controls.gamepad reads that one
            continue
        target = system if table == "system" else keymaps.get(table)
        if target is None:
            raise KeymapError(f"keymap file {path} names unknown table {table!r}; use one of "
                              f"{sorted(keymaps) + ['system', 'gamepad']}")
        for key, name in keys.items():
            key = key.lower()
            if name is None:
                target.pop(key, None)
            else:
                target[key] = name
    return keymaps, system


def check_keymap(keymap: dict[str, str], actions: Sequence[str], system: dict[str, str]) -> None:
    """One clear error for a key name pygame does not know, an action the scene lacks, an unknown command."""
    for key, action in keymap.items():
        _check_key_name(key)
        if action not in actions:
            raise KeymapError(f"key {key!r} is mapped to {action!r}, which is not an action of this scene {list(actions)}")
    for key, command in system.items():
        _check_key_name(key)
        if command not in COMMANDS:
            raise KeymapError(f"key {key!r} is mapped to unknown command {command!r}; commands: {list(COMMANDS)}")


def keys_for(table: dict[str, str], name: str) -> list[str]:
    """The key names bound to one action or command, for help text."""
    return [k for k, v in table.items() if v == name]


KEY_LABELS = {"escape": "Esc", "break": "Pause", "space": "Space", "tab": "Tab"}


def key_label(name: str) -> str:
    """How a pygame key name is shown: "w" -> "W", "escape" -> "Esc", "left shift" -> "Left Shift"."""
    return KEY_LABELS.get(name, name.upper() if len(name) == 1 else name.title())


def help_lines(scene: str, actions: Sequence[str], keymap: dict[str, str], system: dict[str, str],
               gamepad_lines: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str | None]]:
    """The F1 overlay as (keys, what) rows; (title, None) starts a section."""
    fmt = lambda keys: ", ".join(key_label(k) for k in keys) or "-"
    rows: list[tuple[str, str | None]] = [(f"{scene} keys", None)]
    rows += [(fmt(keys_for(keymap, a)), a) for a in actions]
    rows.append(("player keys", None))
    rows += [(fmt(keys_for(system, c)), COMMAND_HELP[c]) for c in COMMANDS if keys_for(system, c)]
    gamepad_lines = list(gamepad_lines)
    if gamepad_lines:
        rows.append(("gamepad", None))
        rows += gamepad_lines
    return rows


class Keyboard:
    """Held and freshly pressed keys -> action vectors, from pygame key events (so tests can post them)."""

    def __init__(self, keymap: dict[str, str], actions: Sequence[str], system: dict[str, str]):
        import pygame

        check_keymap(keymap, actions, system)
        self.num_actions = len(actions)
        index = {a: i for i, a in enumerate(actions)}
        self.action_of = {pygame.key.key_code(k): index[a] for k, a in keymap.items()}   # key code -> action index
        self.command_of = {pygame.key.key_code(k): c for k, c in system.items()}         # key code -> command
        self.held: set[int] = set()
        self.pressed = np.zeros(self.num_actions, dtype=bool)  # pressed since the last take_presses()

    def handle(self, event) -> str | None:
        """Track one event; return the command a key press asks for, if any."""
        import pygame

        if event.type == pygame.KEYDOWN:
            if event.key in self.command_of:
                return self.command_of[event.key]
            if event.key in self.action_of:
                self.held.add(event.key)
                self.pressed[self.action_of[event.key]] = True
        elif event.type == pygame.KEYUP:
            self.held.discard(event.key)
        elif event.type == pygame.WINDOWFOCUSLOST:
            self.held.clear()  # a key released while the window is in the background sends no KEYUP
        return None

    def held_actions(self) -> np.ndarray:
        """bool [A]: the actions whose keys are down now."""
        keys = np.zeros(self.num_actions, dtype=bool)
        for code in self.held:
            keys[self.action_of[code]] = True
        return keys

    def take_presses(self) -> np.ndarray:
        """bool [A]: actions whose keys went down since the last call (a quick tap counts once)."""
        pressed, self.pressed = self.pressed, np.zeros(self.num_actions, dtype=bool)
        return pressed
