"""Noise streams: a draw made ahead is the draw the stream would have given then."""
import torch

from sim.noise import NoiseStreams

SHAPE = (3, 2, 4, 4)


def plain_draws(seed: int, rows, shapes) -> list[torch.Tensor]:
    """What per-session generators give with nothing drawn ahead: one fresh stream set per call."""
    gens = {r: torch.Generator().manual_seed(seed + r) for r in rows}
    return [torch.stack([torch.randn(shape, generator=gens[r]) for r in rows]) for shape in shapes]


def test_drawing_ahead_changes_no_value():
    want = plain_draws(5, [0, 2], [SHAPE] * 3)
    streams = NoiseStreams(3, torch.device("cpu"), seed=5)
    got = [streams.draw([0, 2], SHAPE)]
    streams.prefetch([0, 2], SHAPE)
    streams.prefetch([0], SHAPE)  # already ahead: no second draw
    got.append(streams.draw([0, 2], SHAPE))
    streams.prefetch([2], SHAPE)  # only one row ahead
    got.append(streams.draw([0, 2], SHAPE))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_a_draw_ahead_of_another_shape_is_rewound():
    want = plain_draws(1, [0], [(5,), (7,)])
    streams = NoiseStreams(1, torch.device("cpu"), seed=1)
    assert torch.equal(streams.draw([0], (5,)), want[0])
    streams.prefetch([0], (9,))
    assert torch.equal(streams.draw([0], (7,)), want[1])


def test_state_is_as_if_nothing_was_drawn_ahead():
    streams = NoiseStreams(2, torch.device("cpu"), seed=3)
    streams.draw([1], SHAPE)
    before = streams.state(1)
    streams.prefetch([1], SHAPE)
    assert torch.equal(streams.state(1), before)
    next_draw = streams.draw([1], SHAPE)
    streams.set_state(0, before)  # another row branches from the snapshot
    assert torch.equal(streams.draw([0], SHAPE), next_draw)


def test_seeding_drops_the_draw_ahead():
    streams = NoiseStreams(1, torch.device("cpu"), seed=0)
    streams.prefetch([0], SHAPE)
    streams.seed([0], [11])
    assert torch.equal(streams.draw([0], SHAPE), plain_draws(11, [0], [SHAPE])[0])
