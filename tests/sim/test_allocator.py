"""The step allocator: thresholds, k_min/k_max, fixed steps, the budget on a fake clock, tau control."""
import numpy as np
import pytest

from sim.allocator import AllocatorConfig, StepAllocator, StepCostModel, calibrate_tau_steps


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def advance_ms(self, ms):
        self.t += ms / 1e3


def test_adaptive_stops_on_confidence_but_not_before_k_min():
    alloc = StepAllocator(AllocatorConfig(mode="adaptive", k_min=2, k_max=4, tau=0.8))
    conf = np.array([0.95, 0.5, 0.81])
    assert alloc.stop(1, conf, 3).tolist() == [False, False, False]  # k < k_min: nobody stops
    assert alloc.stop(2, conf, 3).tolist() == [True, False, True]
    assert alloc.stop(4, np.array([0.0]), 3).tolist() == [True]  # k_max ends every frame


def test_sessions_are_independent():
    alloc = StepAllocator(AllocatorConfig(mode="adaptive", k_min=1, k_max=4, tau=0.6))
    together = alloc.stop(1, np.array([0.1, 0.9, 0.6, 0.59]), 4)
    alone = [alloc.stop(1, np.array([c]), 1)[0] for c in (0.1, 0.9, 0.6, 0.59)]
    assert together.tolist() == alone == [False, True, True, False]


def test_fixed_mode_ignores_confidence():
    alloc = StepAllocator(AllocatorConfig(mode="fixed", k_max=4, fixed_steps=3))
    assert not alloc.stop(2, np.array([1.0, 1.0]), 2).any()
    assert alloc.stop(3, np.array([0.0, 0.0]), 2).all()


@pytest.mark.parametrize("budget_ms", [12.0, 25.0, 33.0, 47.0, 100.0])
def test_budget_is_never_exceeded_on_a_fake_clock(budget_ms):
    clock = FakeClock()
    cost = StepCostModel()
    step_ms = {1: 4.0, 2: 6.0, 3: 8.0, 4: 10.0}  # one step for b sessions
    finish_ms = 5.0  # cache pass + decode for the frame
    for b, ms in step_ms.items():
        cost.record_step(b, ms)
    cost.record_finish(4, finish_ms)
    alloc = StepAllocator(AllocatorConfig(mode="budget", k_max=8, tau=0.99, budget_ms=budget_ms), cost, clock)
    rng = np.random.default_rng(0)
    for _ in range(50):  # frames: low confidence, so only the budget stops them early
        alloc.begin_frame()
        active, k = 4, 0
        while active:
            if not alloc.can_start(k + 1, active, 4):
                break
            k += 1
            clock.advance_ms(step_ms[active])
            stop = alloc.stop(k, rng.random(active) * 0.5, 4)
            active -= int(stop.sum())
        clock.advance_ms(finish_ms)
        # a frame's first step always runs; every later one fits the budget
        assert alloc.elapsed_ms() <= max(budget_ms, step_ms[4] + finish_ms) + 1e-9
        if budget_ms >= 100:
            assert k == 8


def test_cost_model_never_guesses_low():
    cost = StepCostModel()
    cost.record_step(8, 3.0)
    cost.record_step(32, 7.0)
    assert cost.step(8) == 3.0 and cost.step(9) == 7.0 and cost.step(64) == 7.0 and cost.step(1) == 3.0


def test_target_mean_steps_moves_tau():
    alloc = StepAllocator(AllocatorConfig(mode="adaptive", k_max=4, tau=0.5, target_mean_steps=2.0, tau_rate=0.05))
    alloc.end_frame(np.array([4, 4, 4]))  # too many steps: stop sooner
    assert alloc.tau < 0.5
    low = alloc.tau
    alloc.end_frame(np.array([1, 1]))  # too few: refine more
    assert alloc.tau > low


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="mode"):
        AllocatorConfig(mode="greedy")
    with pytest.raises(ValueError, match="k_min"):
        AllocatorConfig(k_min=5, k_max=4)
    with pytest.raises(ValueError, match="budget_ms"):
        AllocatorConfig(mode="budget")


def test_per_step_thresholds_replace_tau():
    alloc = StepAllocator(AllocatorConfig(mode="adaptive", k_max=4, tau=0.9, tau_steps=(0.3, 0.5, 0.7)))
    conf = np.array([0.35, 0.6, 0.8])
    assert alloc.stop(1, conf, 3).tolist() == [True, True, True]
    assert alloc.stop(2, conf, 3).tolist() == [False, True, True]
    assert alloc.stop(3, conf, 3).tolist() == [False, False, True]
    assert alloc.stop(4, conf, 3).all()
    # sessions stay independent: each decision reads its own confidence only
    assert [alloc.stop(2, np.array([c]), 1)[0] for c in conf] == alloc.stop(2, conf, 3).tolist()


def test_calibrated_thresholds_stop_the_asked_share_at_each_step():
    rng = np.random.default_rng(0)
    # a head whose confidence climbs with the step, as trained students' do, and that is
    # correlated across one frame's steps (an easy frame is easy at every step)
    ease = rng.normal(0, 0.08, size=(2000, 1))
    traces = np.clip(np.array([0.3, 0.4, 0.6, 0.99]) + ease + rng.normal(0, 0.04, size=(2000, 4)), 0, 1)
    tau_steps = calibrate_tau_steps(traces.tolist(), share=0.25, k_max=4)
    assert len(tau_steps) == 3 and tau_steps[0] < tau_steps[1] < tau_steps[2]
    alloc = StepAllocator(AllocatorConfig(mode="adaptive", k_max=4, tau_steps=tau_steps))
    running = np.arange(2000)
    for k in (1, 2, 3):  # frames leave as the engine lets them: a quarter of those left, each step
        stop = alloc.stop(k, traces[running, k - 1], 2000)
        assert abs(stop.mean() - 0.25) < 0.02
        running = running[~stop]


def test_bad_per_step_thresholds_are_refused():
    with pytest.raises(ValueError, match="one threshold per step"):
        AllocatorConfig(k_max=4, tau_steps=(0.5, 0.6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AllocatorConfig(k_max=3, tau_steps=(0.5, 1.5))
    with pytest.raises(ValueError, match="does not combine"):
        AllocatorConfig(k_max=3, tau_steps=(0.5, 0.6), target_mean_steps=2.0)
    with pytest.raises(ValueError, match="share"):
        calibrate_tau_steps([[0.1, 0.2, 0.3]], share=1.0, k_max=3)
    with pytest.raises(ValueError, match="traces"):
        calibrate_tau_steps([[0.1]], share=0.5, k_max=3)


def test_decided_says_when_no_confidence_is_needed():
    adaptive = StepAllocator(AllocatorConfig(mode="adaptive", k_min=1, k_max=4, tau=0.5))
    assert [adaptive.decided(k) for k in (1, 2, 3, 4)] == [None, None, None, True]
    fixed = StepAllocator(AllocatorConfig(mode="fixed", k_max=4, fixed_steps=2))
    assert [fixed.decided(k) for k in (1, 2, 3)] == [False, True, True]
    budget = StepAllocator(AllocatorConfig(mode="budget", k_max=3, budget_ms=5.0))
    assert [budget.decided(k) for k in (1, 2, 3)] == [None, None, True]
    # where it decides, stop() agrees for any confidences
    for alloc in (adaptive, fixed):
        for k in (1, 2, 3, 4):
            d = alloc.decided(k)
            if d is not None and k <= alloc.cfg.k_max:
                assert alloc.stop(k, np.array([0.0, 1.0]), 2).tolist() == [d, d]
