"""What drives the loop and what watches it.

A person playing (`python play.py`):
    keymaps.py       keyboard maps per scene (plain dicts), remapping file, key state from events
    gamepad.py       pygame.joystick pads: sticks with dead zones, d-pad, buttons, hot-plug
    session.py       one player's session: the model's dream and the real scene in lockstep
    generator.py     the model on its own thread (pacing), re-run input, replay of a recording
    hud.py           play statistics, the HUD and the help overlay
    loop.py          the pygame window loop and the headless run
    recording.py     the recording format: writer, reader (tolerates a cut tail), MP4/GIF export, CLI

Agents over ZeroMQ:
    protocol.py      the wire protocol: msgpack maps, versioned
    server.py        a batched multi-session server over one engine
    client.py        the agents' client and Gymnasium envs over it
    bench_server.py  how fast the server serves

Nothing here imports pygame at module level: headless runs, the server and the recording
tools work without a display.
"""
