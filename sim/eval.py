"""Quality of a world model against the scene engine's own frames, on held-out seeds.

    python -m sim.eval --checkpoint runs/maze/teacher                  # 8 seeds, horizon 64
    python -m sim.eval --checkpoint runs/maze/teacher --steps 8 16 32  # one pass per step count
    python -m sim.eval --long 2000 --seeds 2 --steps 4                 # does a long rollout collapse?

For every policy (the scene's exploration policy "random" and its moving tour "explore")
the real scene is rolled for K + H ticks from held-out world seeds (10**9 + i, never seen
in training), one engine session per seed, all in one batch. Then:

  (a) next frame, real context: prompt with real frames 0..K-1, then for j = 0..H-1 step
      with the real action and observe the real frame, so every generated frame K + j
      follows real context. Scored against real frame K + j; the copy baseline is real
      frame K + j - 1 against it.
  (b) free rollout: prompt again with frames 0..K-1, then H steps on the model's own
      frames. Horizon h = 1..H is generated frame K - 1 + h; its copy baseline is the last
      prompt frame K - 1 (the real frame h steps earlier).

Game frames often barely change, so each figure stands beside its copy baseline: a model is
judged by how far it beats copying. Means and medians both, since a few frames where the
view moves dominate the mean. Writes into --out: eval.json (summaries + config),
eval_values.npz (every per-seed value), rollout.png (PSNR/SSIM vs horizon, model vs copy)
and strip_<policy>_<setting>.png (real row over generated row at a few horizons).

`--long N` measures instead whether a long free rollout collapses (`run_long`): per seed, the
model free-rolls N frames from the real prompt under the policy's keys (by default the moving
tour), the real scene beside it taking the same keys, and the run is cut into windows of
--long-window frames. A window passes if the generated frames' mean sharpness is at least
0.70 of the real frames' and each channel's mean and std lie within the range of the real
frames' per-frame values over the run (exact terms: LONG_DEFINITIONS). Writes
eval.json["long_rollout"], long_rollout.png and long_strip_<policy>_<setting>.png.

The measuring functions (`collect_real`, `eval_next_frame`, `eval_rollout`) take any object
with the engine's interface, so tests drive them with a fake engine, and the DSA eval
(`--dsa`: quality against mean steps for fixed k = 1..k_max and adaptive thresholds, the step
histogram, and how well confidence ranks per-frame error) reuses them: see `dsa_settings`.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from sim.metrics import laplacian_variance, psnr, ssim, summarize

HELD_OUT_SEED_BASE = 10 ** 9    # world seeds >= this are never used for training
POLICIES = ("random", "explore")
STRIP_HORIZONS = (1, 2, 4, 8, 16, 32, 64)
TABLE_HORIZONS = (1, 8, 16, 64)


# ---------------------------------------------------------------------------------------------
# real frames


@dataclass
class RealClips:
    """What the scene engine did for B held-out seeds under one policy.

    frames[:, t] is the frame after tick t; actions[:, t] is the key vector that produced it
    (zeros for t = 0, the frame right after reset). The first `context` frames prompt the
    model; the remaining T - context are what it is scored on.
    """
    scene: str
    policy: str
    seeds: list[int]
    context: int
    frames: np.ndarray   # uint8 [B, T, H, W, 3], T = context + horizon
    actions: np.ndarray  # float32 [B, T, A]

    @property
    def horizon(self) -> int:
        return self.frames.shape[1] - self.context


def held_out_seeds(n: int) -> list[int]:
    return [HELD_OUT_SEED_BASE + i for i in range(n)]


def make_game(scene: Any, num_envs: int, height: int = 128, width: int = 128) -> Any:
    """A scene name -> `scenes.make_batch(scene, num_envs)` at height x width; a `Game` -> itself,
    checked to hold num_envs envs."""
    if isinstance(scene, str):
        import scenes  # every scene module, only when one is asked for by name
        return scenes.make_batch(scene, num_envs, width=width, height=height)
    if scene.num_envs != num_envs:
        raise ValueError(f"the game has {scene.num_envs} envs but {num_envs} seeds were given")
    return scene


def real_ticks(game: Any, policy: str, seeds: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reset `game` at `seeds`, then tick it under the named policy for as long as asked.

    Yields (actions float32 [B, A], frame uint8 [B, H, W, 3]): first zeros and the reset frame,
    then each tick's keys and the frame they produced. The policy is seeded with seeds[0].
    """
    from scenes.core import make_policy

    pol = make_policy(game, policy, seed=int(seeds[0]))
    frame = game.reset(list(seeds))
    pol.reset()
    yield np.zeros((game.num_envs, game.num_actions), dtype=np.float32), frame
    while True:
        keys = pol(game)  # bool [B, A]
        game.step(keys)
        yield keys.astype(np.float32), game.render()


def collect_real(scene: Any, policy: str, seeds: Sequence[int], context: int, horizon: int,
                 height: int = 128, width: int = 128, progress: bool = True) -> RealClips:
    """Roll the real scene for context + horizon ticks, one env per seed, all batched.

    scene: a scene name (built with `scenes.make_batch` at height x width) or a `Game`
    instance already built with len(seeds) envs.
    """
    game = make_game(scene, len(seeds), height, width)
    ticks = real_ticks(game, policy, seeds)
    B, T, A = len(seeds), context + horizon, game.num_actions
    frames = np.empty((B, T, game.height, game.width, 3), dtype=np.uint8)
    actions = np.empty((B, T, A), dtype=np.float32)
    for t in tqdm(range(T), desc=f"real {game.name}/{policy}", disable=not progress, leave=False):
        actions[:, t], frames[:, t] = next(ticks)
    return RealClips(game.name, policy, [int(s) for s in seeds], context, frames, actions)


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Scores:
    """Per-session scores of one measurement, all [B, H]: column j is the j-th scored frame
    (next-frame: frame K + j; rollout: horizon j + 1)."""
    psnr: np.ndarray
    ssim: np.ndarray
    copy_psnr: np.ndarray
    copy_ssim: np.ndarray
    sharpness: np.ndarray       # laplacian variance of the generated frames
    real_sharpness: np.ndarray  # ... and of the real ones, for scale
    steps: np.ndarray           # from the engine's reports
    latency_ms: np.ndarray
    confidence: np.ndarray
    first_session: np.ndarray   # uint8 [H, h, w, 3]: generated frames of session 0, for strips

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if k != "first_session"}


def _frames_np(x: Any) -> np.ndarray:
    """Engine output (numpy or torch, any device) -> uint8 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.uint8)


def prompt(sim: Any, frames: np.ndarray, actions: np.ndarray, seeds: Sequence[int]) -> None:
    """sim.reset with the prompt frames [B, K, H, W, 3] and actions [B, K, A], one session per seed."""
    B = frames.shape[0]
    if "seeds" in inspect.signature(sim.reset).parameters:
        # common random numbers: every setting draws the same noise for the same world, so the
        # differences between settings are theirs, not the noise's
        sim.reset(frames, actions, seeds=list(seeds))
    else:
        sim.reset(frames, actions)
    if sim.num_sessions != B:
        raise ValueError(f"the engine holds {sim.num_sessions} sessions but {B} seeds are measured; "
                         f"load it with num_sessions={B}")


def _score(sim: Any, real: RealClips, observe: bool, desc: str, progress: bool) -> Scores:
    """Prompt with the first K real frames, step H times, score step j against real frame K + j.

    observe=True feeds real frame K + j back as context (next-frame eval); False lets the
    model run on its own frames (free rollout). The baseline copies real frame K + j - 1
    (next-frame) or K - 1 (rollout).
    """
    K, H = real.context, real.horizon
    B = real.frames.shape[0]
    prompt(sim, real.frames[:, :K], real.actions[:, :K], real.seeds)
    generated = np.empty((B, H, *real.frames.shape[2:]), dtype=np.uint8)  # [B, H, h, w, 3]
    reports = np.empty((3, B, H))  # steps, latency_ms, confidence
    for j in tqdm(range(H), desc=desc, disable=not progress, leave=False):
        t = K + j
        out, rep = sim.step(real.actions[:, t], observe=real.frames[:, t] if observe else None)
        generated[:, j] = _frames_np(out)
        for b, r in enumerate(rep):
            reports[:, b, j] = r.get("steps", math.nan), r.get("latency_ms", math.nan), r.get("confidence", math.nan)
    target = real.frames[:, K:]                                        # [B, H, h, w, 3]
    if observe:
        copy = real.frames[:, K - 1:-1]                                # frame t - 1 for every t
    else:
        copy = np.broadcast_to(real.frames[:, K - 1:K], target.shape)  # the last prompt frame
    return Scores(psnr=psnr(generated, target), ssim=ssim(generated, target),
                  copy_psnr=psnr(copy, target), copy_ssim=ssim(copy, target),
                  sharpness=laplacian_variance(generated), real_sharpness=laplacian_variance(target),
                  steps=reports[0], latency_ms=reports[1], confidence=reports[2],
                  first_session=generated[0])


def eval_next_frame(sim: Any, real: RealClips, progress: bool = True) -> Scores:
    """(a) every frame generated from real context; scores [B, H] against real frames K..K+H-1."""
    return _score(sim, real, observe=True, desc=f"next-frame {real.policy}", progress=progress)


def eval_rollout(sim: Any, real: RealClips, progress: bool = True) -> Scores:
    """(b) free rollout from a real prompt; scores [B, H], column h - 1 is horizon h."""
    return _score(sim, real, observe=False, desc=f"rollout {real.policy}", progress=progress)


def summarize_next_frame(s: Scores) -> dict:
    """Over seeds x frames: {metric: {mean, median, p10, p90, n}}."""
    return {k: summarize(v) for k, v in s.arrays().items()}


def summarize_rollout(s: Scores) -> dict:
    """Per horizon, over seeds: {"horizon": [1..H], metric: {"mean": [H], "median": [H]}}."""
    out: dict[str, Any] = {"horizon": list(range(1, s.psnr.shape[1] + 1))}
    with warnings.catch_warnings():  # all-NaN columns (engines without confidence) stay NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, v in s.arrays().items():
            out[k] = {"mean": np.nanmean(v, axis=0).tolist(), "median": np.nanmedian(v, axis=0).tolist()}
    return out


# ---------------------------------------------------------------------------------------------
# settings: what the engine is asked to do while it is measured


def step_settings(steps: Sequence[int] | None) -> list[tuple[str, Callable[[Any], None]]]:
    """(label, configure(sim)) for each sampler setting to measure, one after another.

    No --steps measures the engine as loaded. This is where the DSA eval plugs in: `--dsa`
    will add settings for fixed k = 1..k_max and for adaptive confidence thresholds, each
    measured by the same functions; the reports' `steps` then give quality vs mean steps.
    """
    if not steps:
        return [("default", lambda sim: None)]

    def fixed(n: int) -> Callable[[Any], None]:
        def configure(sim: Any) -> None:
            sim.sampler_steps = n
        return configure

    return [(f"steps{n}", fixed(int(n))) for n in steps]


def dsa_settings(sim: Any, taus: Sequence[float], shares: Sequence[float] = (),
                 tau_steps: Callable[[float], tuple[float, ...]] | None = None) -> list[tuple[str, Callable[[Any], None]]]:
    """Fixed k = 1..k_max, then adaptive at each tau, then adaptive with the per-step thresholds
    `tau_steps(share)` that stop each `share` of frames at each step, for a distilled student."""
    from sim.allocator import AllocatorConfig
    k_max = sim.allocator.cfg.k_max

    def fixed(k: int) -> Callable[[Any], None]:
        return lambda s: s.set_allocator(AllocatorConfig(mode="fixed", k_max=k_max, fixed_steps=k))

    def adaptive(tau: float) -> Callable[[Any], None]:
        return lambda s: s.use_adaptive_steps(tau)

    def per_step(share: float) -> Callable[[Any], None]:
        return lambda s: s.use_adaptive_steps(tau_steps=tau_steps(share))

    if shares and tau_steps is None:
        raise ValueError("share settings need their calibrated thresholds")
    return ([(f"fixed{k}", fixed(k)) for k in range(1, k_max + 1)] + [(f"tau{t:g}", adaptive(t)) for t in taus]
            + [(f"share{q:g}", per_step(q)) for q in shares])


def is_adaptive(label: str) -> bool:
    """A setting whose step count the confidence head decides (one tau, or a threshold per step)."""
    return label.startswith(("tau", "share"))


def calibration_seeds(n: int) -> list[int]:
    """World seeds 0..n-1, from the training range: per-step thresholds are never fit on the
    held-out worlds they are measured on."""
    return list(range(n))


def confidence_traces(sim: Any, scene: Any, policy: str, seeds: Sequence[int], context: int, frames: int,
                      progress: bool = True) -> np.ndarray:
    """[len(seeds) * frames, k_max]: a student's confidence after each of its k_max steps, every
    frame run to k_max with real context (next-frame), on `seeds` under `policy`."""
    from sim.allocator import AllocatorConfig
    k_max = sim.allocator.cfg.k_max
    sim.set_allocator(AllocatorConfig(mode="fixed", k_max=k_max, fixed_steps=k_max))
    height, width = frame_size(sim)
    real = collect_real(scene, policy, seeds, context, frames, height, width, progress)
    prompt(sim, real.frames[:, :context], real.actions[:, :context], real.seeds)
    out = []
    for j in tqdm(range(frames), desc=f"calibrate {policy}", disable=not progress, leave=False):
        t = context + j
        _, reports = sim.step(real.actions[:, t], observe=real.frames[:, t])
        out.extend(r["confidence_trace"] for r in reports)
    return np.asarray(out, dtype=np.float64)


Setting = tuple[str, Any, Callable[[Any], None]]  # (label, engine, configure(engine)): one setting to measure


def teacher_references(teacher: Any, steps: Sequence[int]) -> list[Setting]:
    """A many-step teacher engine at each step count, as references "teacher<N>" beside a student."""
    return [(f"teacher{n}", teacher, lambda s, n=n: setattr(s, "sampler_steps", n)) for n in steps]


def engine_settings(sim: Any, steps: Sequence[int] | None = None, dsa_taus: Sequence[float] | None = None,
                    references: Sequence[Setting] = (), dsa_shares: Sequence[float] = (),
                    tau_steps: Callable[[float], tuple[float, ...]] | None = None) -> list[Setting]:
    """(label, engine, configure) to measure in turn: the DSA settings with dsa_taus, else the
    --steps ones, then the reference engines."""
    settings = [(label, sim, configure) for label, configure in
                (dsa_settings(sim, dsa_taus, dsa_shares, tau_steps) if dsa_taus is not None else step_settings(steps))]
    return settings + list(references)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN pairs dropped."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3:
        return math.nan

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(v.size)
        r[order] = np.arange(v.size)
        for val in np.unique(v[np.r_[np.diff(np.sort(v)) == 0, False]]):  # average tied ranks
            r[v == val] = r[v == val].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def dsa_summary(values: dict[str, np.ndarray], policies: Sequence[str], labels: Sequence[str]) -> dict:
    """Per policy and setting: mean steps, next-frame and rollout PSNR, confidence vs error."""
    out: dict[str, dict] = {}
    for policy in policies:
        out[policy] = {}
        for label in labels:
            v = lambda kind, k: values[f"{policy}/{label}/{kind}/{k}"]  # noqa: E731 ([B, H] arrays)
            psnr_next, conf_next = v("next_frame", "psnr"), v("next_frame", "confidence")
            roll = v("rollout", "psnr")
            H = roll.shape[1]
            out[policy][label] = {
                "mean_steps_next": float(np.nanmean(v("next_frame", "steps"))),
                "mean_steps_rollout": float(np.nanmean(v("rollout", "steps"))),
                "next_psnr_mean": float(np.mean(psnr_next)), "next_psnr_median": float(np.median(psnr_next)),
                "rollout_psnr_mean": {h: float(np.mean(roll[:, h - 1])) for h in (1, 8, 16, 32, 64) if h <= H},
                # error = -PSNR of the final frame: a good confidence correlates negatively with it
                "spearman_confidence_vs_error": spearman(conf_next, -psnr_next),
                "steps_histogram": np.bincount(v("rollout", "steps").astype(int).ravel()).tolist(),
            }
    return out


def dsa_verdict(dsa: dict, k_max: int, teacher: str | None = None, horizons: Sequence[int] = (16, 64)) -> dict:
    """The DSA claims, per policy, from `dsa_summary` (quality = free-rollout PSNR mean):

    equal_steps: each adaptive setting minus fixed k at the same mean steps per frame (the
        fixed-k curve interpolated linearly between integer k), at each horizon;
    passes_to_fixed_kmax: the fewest mean steps among adaptive settings at least as good as
        fixed k_max at every horizon; k_max / that (how many times fewer denoising passes) and
        (k_max + 1) / (that + 1) (fewer forward passes, the t = 0 cache pass counted on both sides);
    student_vs_teacher: fixed k_max minus the teacher, per horizon and next-frame;
    spearman: confidence against per-frame error for every student setting.
    """
    out: dict[str, dict] = {}
    for policy, rows in dsa.items():
        fixed = sorted(((r["mean_steps_rollout"], r) for lab, r in rows.items() if lab.startswith("fixed")),
                       key=lambda t: t[0])
        adaptive = {lab: r for lab, r in rows.items() if is_adaptive(lab)}
        hs = [h for h in horizons if all(h in r["rollout_psnr_mean"] for _, r in fixed)]
        if not fixed or not hs:
            continue
        ks = np.array([m for m, _ in fixed])

        def fixed_at(m, h):
            return float(np.interp(m, ks, [r["rollout_psnr_mean"][h] for _, r in fixed]))

        equal = {lab: {"mean_steps": r["mean_steps_rollout"],
                       **{f"h{h}": r["rollout_psnr_mean"][h] - fixed_at(r["mean_steps_rollout"], h) for h in hs}}
                 for lab, r in adaptive.items()}
        top = fixed[-1][1]
        reaching = [r["mean_steps_rollout"] for r in adaptive.values()
                    if all(r["rollout_psnr_mean"][h] >= top["rollout_psnr_mean"][h] for h in hs)]
        best = min(reaching) if reaching else None
        v = {"horizons": hs, "equal_steps": equal,
             "passes_to_fixed_kmax": {"mean_steps": best, "fewer_passes_x": (k_max / best) if best else None,
                                      "fewer_forward_passes_x": ((k_max + 1) / (best + 1)) if best else None},
             "spearman": {lab: r["spearman_confidence_vs_error"] for lab, r in rows.items()
                          if not lab.startswith("teacher")}}
        if teacher and teacher in rows:
            t = rows[teacher]
            v["student_vs_teacher"] = {"next_frame": top["next_psnr_mean"] - t["next_psnr_mean"],
                                       **{f"h{h}": top["rollout_psnr_mean"][h] - t["rollout_psnr_mean"][h] for h in hs}}
        out[policy] = v
    return out


def plot_dsa(path: Path, summary: dict) -> None:
    """Quality against mean steps (fixed k as a line, adaptive thresholds as points) and step histograms."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    policies = list(summary)
    fig, axes = plt.subplots(2, len(policies), figsize=(6 * len(policies), 8), squeeze=False)
    for col, policy in enumerate(policies):
        rows = summary[policy]
        ax = axes[0, col]
        for metric, style in (("next", "o"), ("h16", "s")):
            def y(r):
                return r["next_psnr_mean"] if metric == "next" else r["rollout_psnr_mean"].get(16, math.nan)
            fixed = [(r["mean_steps_rollout"], y(r)) for lab, r in rows.items() if lab.startswith("fixed")]
            adapt = [(r["mean_steps_rollout"], y(r), lab) for lab, r in rows.items() if is_adaptive(lab)]
            line, = ax.plot(*zip(*fixed), style + "-", label=f"fixed k ({metric})")
            for lab, r in rows.items():
                if lab.startswith("teacher"):  # many steps: a level to compare with, not a point on the axis
                    ax.axhline(y(r), color=line.get_color(), ls=":", label=f"{lab} ({metric})")
            if adapt:
                ax.plot([a[0] for a in adapt], [a[1] for a in adapt], style, mfc="none", ms=9, label=f"adaptive ({metric})")
                for a in adapt:
                    ax.annotate(a[2], (a[0], a[1]), fontsize=7)
        ax.set(title=f"{policy}: PSNR vs mean steps per frame", xlabel="mean denoising steps per frame", ylabel="PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for lab, r in rows.items():
            if is_adaptive(lab):
                hist = np.asarray(r["steps_histogram"][1:], float)
                ax.plot(np.arange(1, hist.size + 1), hist / max(hist.sum(), 1), "o-", label=lab)
        ax.set(title=f"{policy}: steps per frame (adaptive, rollout)", xlabel="steps", ylabel="share of frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_eval(sim: Any, scene: Any, seeds: Sequence[int], horizon: int = 64, context: int | None = None,
             policies: Sequence[str] = POLICIES, steps: Sequence[int] | None = None,
             out: str | Path = "runs/eval", config: dict | None = None, progress: bool = True,
             dsa_taus: Sequence[float] | None = None, references: Sequence[Setting] = (),
             dsa_shares: Sequence[float] = ()) -> dict:
    """Measure `sim` on held-out seeds of `scene`, write eval.json, eval_values.npz and PNGs into `out`.

    scene: a scene name, or a `Game` built with len(seeds) envs (see `collect_real`).
    references: (label, engine, configure) measured on the same real clips, settings beside the
    others (the teacher beside its student: `teacher_references(teacher, [4, 32])`); the student's
    verdict is against the last one.
    dsa_shares: with dsa_taus, also adaptive with per-step thresholds, calibrated once on
    training-range worlds (`calibration_seeds`) under the first policy, next-frame.
    Returns the eval.json dict.
    """
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    K = context_length(sim, context)
    height, width = frame_size(sim)
    calibration: dict[str, Any] = {}  # filled by the first share setting, then reused (and reported)

    def tau_steps(share: float) -> tuple[float, ...]:
        from sim.allocator import calibrate_tau_steps
        if "traces" not in calibration:
            calibration.update(seeds=calibration_seeds(len(seeds)), policy=policies[0], frames=min(horizon, 32),
                               tau_steps={})
            calibration["traces"] = confidence_traces(sim, scene, calibration["policy"], calibration["seeds"], K,
                                                      calibration["frames"], progress)
        thresholds = calibration["tau_steps"]
        if f"share{share:g}" not in thresholds:
            thresholds[f"share{share:g}"] = calibrate_tau_steps(calibration["traces"], share, sim.allocator.cfg.k_max)
        return thresholds[f"share{share:g}"]

    settings = engine_settings(sim, steps, dsa_taus, references, dsa_shares, tau_steps)
    results: dict[str, dict] = {}
    values: dict[str, np.ndarray] = {}
    strips: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for policy in policies:
        real = collect_real(scene, policy, seeds, K, horizon, height, width, progress)
        results[policy] = {}
        for label, engine, configure in settings:
            configure(engine)
            nxt, roll = eval_next_frame(engine, real, progress), eval_rollout(engine, real, progress)
            results[policy][label] = {"sampler_steps": getattr(engine, "sampler_steps", None),
                                      "next_frame": summarize_next_frame(nxt),
                                      "rollout": summarize_rollout(roll)}
            for kind, s in (("next_frame", nxt), ("rollout", roll)):
                for k, v in s.arrays().items():
                    values[f"{policy}/{label}/{kind}/{k}"] = v
            hs = [h for h in STRIP_HORIZONS if h <= real.horizon]
            write_strip(out / f"strip_{policy}_{label}.png",
                        [real.frames[0, K - 1 + h] for h in hs], [roll.first_session[h - 1] for h in hs])
    report = {"config": dict(config or {}, seeds=[int(s) for s in seeds], horizon=horizon, context=K,
                             policies=list(policies), steps=list(steps) if steps else None,
                             resolution=[height, width], settings=[label for label, _, _ in settings],
                             date=datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
              "results": results, "wall_s": round(time.time() - t0, 1)}
    if calibration:
        report["config"]["calibration"] = {
            "seeds": calibration["seeds"], "policy": calibration["policy"], "frames": calibration["frames"],
            "mean_confidence_per_step": calibration["traces"].mean(axis=0).tolist(),
            "tau_steps": {label: list(t) for label, t in calibration["tau_steps"].items()}}
    if dsa_taus is not None:
        report["dsa"] = dsa_summary(values, policies, [label for label, _, _ in settings])
        report["dsa_verdict"] = dsa_verdict(report["dsa"], sim.allocator.cfg.k_max,
                                            references[-1][0] if references else None)
        plot_dsa(out / "dsa.png", report["dsa"])
    (out / "eval.json").write_text(json.dumps(_json_clean(report), indent=2) + "\n")
    np.savez_compressed(out / "eval_values.npz", **values)
    plot_rollout(out / "rollout.png", results)
    return report


def context_length(sim: Any, context: int | None) -> int:
    """Prompt frames: --context, else the model's context_frames; fewer than the model needs is refused."""
    K = int(context or sim.context_frames)
    if K < sim.context_frames:
        raise ValueError(f"the model needs {sim.context_frames} context frames, got --context {K}")
    return K


def frame_size(sim: Any) -> tuple[int, int]:
    """(H, W) of the engine's frames: `frame_shape` (H, W, 3), else `resolution`, else 128x128."""
    shape = getattr(sim, "frame_shape", None) or getattr(sim, "resolution", None) or (128, 128)
    return int(shape[0]), int(shape[1])


def _json_clean(x: Any) -> Any:
    """NaN/inf -> None (strict JSON has neither); numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------------------
# long free rollout (--long): does the picture hold over thousands of frames


LONG_WINDOW = 100          # rollout frames per statistics window
LONG_MIN_SHARPNESS = 0.70  # generated / real sharpness that every window must reach
LONG_STRIP_COLUMNS = 8     # window ends shown in long_strip_<policy>_<setting>.png
CHANNELS = "RGB"

LONG_DEFINITIONS = {
    "frames": "rollout frame n = 1..N follows the real prompt (real frames 0..K-1) and the model's own frames "
              "before it, never a real one; it is made under the action of real tick K - 1 + n, and the real "
              "scene, given the same action, shows real frame n beside it",
    "window": "rollout frames [first, last], `window` of them (the last window may be shorter)",
    "sharpness": "laplacian variance of luma (sim.metrics.laplacian_variance), averaged over seeds x window frames; "
                 "sharpness_ratio = generated average / real average (a ratio of means; NaN if the real one is 0); "
                 "sharpness_ratio_worst_seed: the same ratio per seed, the lowest",
    "colour": "per frame and channel (R, G, B on 0..255): mean and std over the pixels; a window's mean / std is "
              "the average of those over seeds x window frames",
    "real_range": "per channel: [min, max] of the real frames' per-frame means (stds), over every seed and all "
                  "N rollout frames",
    "verdict": "sharpness_ok: sharpness_ratio >= min_sharpness_ratio in every window; colour_ok: in every window "
               "each channel's generated mean lies in real_range.mean and its std in real_range.std; "
               "passes: both",
}


@dataclass
class LongTrack:
    """Per-frame statistics of a long free rollout beside the real scene, B seeds by N frames.

    Column n - 1 is rollout frame n (LONG_DEFINITIONS["frames"]). Only these numbers are kept,
    never the frames, so N can be thousands; `snapshots` holds (n, real, generated) uint8
    frames of session 0 at the last frame of each window, for the strip.
    """
    sharpness: np.ndarray       # [B, N] laplacian variance of the generated frames
    real_sharpness: np.ndarray  # [B, N] ... and of the real ones
    mean: np.ndarray            # [B, N, 3] per-channel mean over pixels, generated
    std: np.ndarray             # [B, N, 3] per-channel std over pixels, generated
    real_mean: np.ndarray       # [B, N, 3]
    real_std: np.ndarray        # [B, N, 3]
    snapshots: list[tuple[int, np.ndarray, np.ndarray]]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if k != "snapshots"}


def channel_stats(frames: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame, per-channel mean and std over the pixels: [..., H, W, 3] -> float64 [..., 3] twice."""
    x = np.asarray(frames, dtype=np.float64)
    return x.mean(axis=(-3, -2)), x.std(axis=(-3, -2))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else math.nan


def roll_long(sim: Any, scene: Any, policy: str, seeds: Sequence[int], context: int, frames: int,
              window: int = LONG_WINDOW, height: int = 128, width: int = 128, desc: str = "long",
              progress: bool = True) -> LongTrack:
    """Prompt with `context` real frames, then `frames` steps on the model's own frames, the real scene beside.

    scene: a scene name or a `Game` with len(seeds) envs (see `make_game`). The policy plays the
    real game; the model is given the same keys, so a tour that steers by the real maze steers
    the model's too.
    """
    game = make_game(scene, len(seeds), height, width)
    ticks = real_ticks(game, policy, seeds)
    B, K, N = len(seeds), context, frames
    first = [next(ticks) for _ in range(K)]
    prompt(sim, np.stack([f for _, f in first], axis=1), np.stack([a for a, _ in first], axis=1), seeds)
    sharp, real_sharp = np.empty((B, N)), np.empty((B, N))
    mean, std, real_mean, real_std = (np.empty((B, N, 3)) for _ in range(4))
    snapshots = []
    bar = tqdm(range(N), desc=desc, unit="frame", disable=not progress, leave=False)
    for n in bar:
        actions, real = next(ticks)
        generated = _frames_np(sim.step(actions)[0])  # no observe: the model's frame becomes its context
        sharp[:, n], real_sharp[:, n] = laplacian_variance(generated), laplacian_variance(real)
        mean[:, n], std[:, n] = channel_stats(generated)
        real_mean[:, n], real_std[:, n] = channel_stats(real)
        if (n + 1) % window == 0 or n + 1 == N:
            snapshots.append((n + 1, real[0].copy(), generated[0].copy()))
            w = slice(n - n % window, n + 1)  # the window just ended
            bar.set_postfix(sharpness_ratio=f"{_ratio(sharp[:, w].mean(), real_sharp[:, w].mean()):.2f}")
    return LongTrack(sharp, real_sharp, mean, std, real_mean, real_std, snapshots)


def long_windows(track: LongTrack, window: int) -> list[dict]:
    """One row per `window` rollout frames (the last may be shorter), as LONG_DEFINITIONS says."""
    N = track.sharpness.shape[1]
    rows = []
    for a in range(0, N, window):
        w = slice(a, min(a + window, N))
        s, r = track.sharpness[:, w], track.real_sharpness[:, w]  # [B, n]
        rows.append({"frames": [a + 1, w.stop], "sharpness": float(s.mean()), "real_sharpness": float(r.mean()),
                     "sharpness_ratio": _ratio(s.mean(), r.mean()),
                     "sharpness_ratio_worst_seed": min(_ratio(sb.mean(), rb.mean()) for sb, rb in zip(s, r)),
                     **{k: getattr(track, k)[:, w].mean(axis=(0, 1)).tolist()
                        for k in ("mean", "std", "real_mean", "real_std")}})
    return rows


def real_range(track: LongTrack) -> dict:
    """{"mean" | "std": {"min": [3], "max": [3]}} over every real frame of every seed."""
    return {k: {"min": v.min(axis=(0, 1)).tolist(), "max": v.max(axis=(0, 1)).tolist()}
            for k, v in (("mean", track.real_mean), ("std", track.real_std))}


def long_verdict(windows: Sequence[dict], colour_range: dict, min_ratio: float = LONG_MIN_SHARPNESS) -> dict:
    """The collapse test of LONG_DEFINITIONS["verdict"] on `long_windows` rows and a `real_range`.

    A NaN (or None, from JSON) sharpness ratio fails its window. Reports the lowest and the
    last ratio, the windows that fail each test (0-based) and the share in colour range.
    """
    ratios = np.array([w["sharpness_ratio"] for w in windows], dtype=np.float64)  # None -> NaN
    sharp_ok = np.nan_to_num(ratios, nan=-math.inf) >= min_ratio
    colour_ok = np.array([all(lo <= x <= hi for k in ("mean", "std")
                              for x, lo, hi in zip(w[k], colour_range[k]["min"], colour_range[k]["max"]))
                          for w in windows], dtype=bool)
    return {"min_sharpness_ratio": min_ratio, "windows": len(windows),
            "sharpness_ratio_min": float(np.min(ratios)), "sharpness_ratio_last": float(ratios[-1]),
            "windows_below_sharpness": np.flatnonzero(~sharp_ok).tolist(),
            "sharpness_ok": bool(sharp_ok.all()),
            "windows_out_of_colour_range": np.flatnonzero(~colour_ok).tolist(),
            "colour_in_range_fraction": float(colour_ok.mean()),
            "colour_ok": bool(colour_ok.all()),
            "passes": bool(sharp_ok.all() and colour_ok.all())}


def run_long(sim: Any, scene: Any, seeds: Sequence[int], frames: int, window: int = LONG_WINDOW,
             context: int | None = None, policies: Sequence[str] = ("explore",), steps: Sequence[int] | None = None,
             out: str | Path = "runs/eval", config: dict | None = None, progress: bool = True,
             dsa_taus: Sequence[float] | None = None, references: Sequence[Setting] = (),
             min_ratio: float = LONG_MIN_SHARPNESS) -> dict:
    """`--long N`: per policy and setting, a free rollout of N frames (`roll_long`) cut into windows
    (`long_windows`) and judged against the real frames (`long_verdict`).

    Writes into `out`: eval.json with "config", "long_rollout" ({"config", "definitions", "results":
    {policy: {setting: {"windows", "real_range", "verdict", ...}}}, "passes"}) and "wall_s", but no
    next-frame or rollout "results"; eval_values.npz (the per-frame LongTrack arrays under
    "<policy>/<setting>/long/<name>"); long_rollout.png (`plot_long`) and long_strip_<policy>_<setting>.png
    (real row over generated row at window ends). Returns the eval.json dict.
    """
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    K = context_length(sim, context)
    height, width = frame_size(sim)
    settings = engine_settings(sim, steps, dsa_taus, references)
    results: dict[str, dict] = {}
    values: dict[str, np.ndarray] = {}
    for policy in policies:
        results[policy] = {}
        for label, engine, configure in settings:
            configure(engine)
            t1 = time.time()
            track = roll_long(engine, scene, policy, seeds, K, frames, window, height, width,
                              desc=f"long {policy}/{label}", progress=progress)
            windows, colour_range = long_windows(track, window), real_range(track)
            verdict = long_verdict(windows, colour_range, min_ratio)
            for i, w in enumerate(windows):
                w["sharpness_ok"] = i not in verdict["windows_below_sharpness"]
                w["colour_in_range"] = i not in verdict["windows_out_of_colour_range"]
            results[policy][label] = {"sampler_steps": getattr(engine, "sampler_steps", None), "windows": windows,
                                      "real_range": colour_range, "verdict": verdict,
                                      "wall_s": round(time.time() - t1, 1)}
            values.update({f"{policy}/{label}/long/{k}": v for k, v in track.arrays().items()})
            snaps = track.snapshots
            picks = np.unique(np.linspace(0, len(snaps) - 1, min(LONG_STRIP_COLUMNS, len(snaps))).round().astype(int))
            write_strip(out / f"long_strip_{policy}_{label}.png", [snaps[i][1] for i in picks],
                        [snaps[i][2] for i in picks])
    labels = [label for label, _, _ in settings]
    report = {"config": dict(config or {}, seeds=[int(s) for s in seeds], context=K, policies=list(policies),
                             steps=list(steps) if steps else None, resolution=[height, width], settings=labels,
                             long=frames, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
              "long_rollout": {"config": {"frames": frames, "window": window, "min_sharpness_ratio": min_ratio,
                                          "context": K, "seeds": [int(s) for s in seeds], "policies": list(policies),
                                          "settings": labels},
                               "definitions": LONG_DEFINITIONS, "results": results,
                               "passes": all(r["verdict"]["passes"] for by in results.values() for r in by.values())},
              "wall_s": round(time.time() - t0, 1)}
    (out / "eval.json").write_text(json.dumps(_json_clean(report), indent=2) + "\n")
    np.savez_compressed(out / "eval_values.npz", **values)
    plot_long(out / "long_rollout.png", results)
    return report


def plot_long(path: Path, results: dict) -> None:
    """Per window, one column per policy and setting: generated / real sharpness against the 0.70 line
    (top) and the channel means, generated solid, real dashed, the real per-frame range shaded (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(policy, label, res) for policy, by in results.items() for label, res in by.items()]
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 7), squeeze=False)
    for col, (policy, label, res) in enumerate(runs):
        x = [w["frames"][1] for w in res["windows"]]
        ax = axes[0, col]
        ax.plot(x, [w["sharpness_ratio"] for w in res["windows"]], "o-", label="all seeds")
        ax.plot(x, [w["sharpness_ratio_worst_seed"] for w in res["windows"]], ".--", label="worst seed")
        ax.axhline(res["verdict"]["min_sharpness_ratio"], color="0.3", ls=":", label="target")
        ax.set(title=f"{policy} {label}: sharpness generated / real", xlabel="rollout frame (window end)",
               ylabel="laplacian variance ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for c, (name, colour) in enumerate(zip(CHANNELS, ("tab:red", "tab:green", "tab:blue"))):
            ax.plot(x, [w["mean"][c] for w in res["windows"]], "o-", color=colour, ms=3, label=f"{name} generated")
            ax.plot(x, [w["real_mean"][c] for w in res["windows"]], "--", color=colour, label=f"{name} real")
            lo, hi = res["real_range"]["mean"]["min"][c], res["real_range"]["mean"]["max"][c]
            ax.axhspan(lo, hi, color=colour, alpha=0.07)
        ax.set(title=f"{policy} {label}: channel means (shaded: real per-frame range)",
               xlabel="rollout frame (window end)", ylabel="mean (0..255)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_long(report: dict) -> str:
    """Per policy and setting: one line per window (sharpness and colour, generated beside real), then the verdict."""
    lr = report["long_rollout"]
    cfg = lr["config"]

    def f(x: Any, spec: str = ".2f") -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    def rgb(v: Sequence[float]) -> str:
        return "/".join(f(x, ".0f") for x in v)

    lines = []
    for policy, by_setting in lr["results"].items():
        for label, res in by_setting.items():
            lines.append(f"{policy} {label}: {cfg['frames']} free frames, {len(cfg['seeds'])} seeds, "
                         f"windows of {cfg['window']}")
            head = (f"{'frames':>11}{'sharp gen':>11}{'real':>8}{'ratio':>7}{'worst':>7}"
                    f"{'mean RGB gen':>15}{'real':>13}{'std RGB gen':>14}{'real':>11}  colour")
            lines += [head, "-" * len(head)]
            for w in res["windows"]:
                lines.append(f"{str(w['frames'][0]) + '-' + str(w['frames'][1]):>11}{f(w['sharpness'], '.1f'):>11}"
                             f"{f(w['real_sharpness'], '.1f'):>8}{f(w['sharpness_ratio']):>7}"
                             f"{f(w['sharpness_ratio_worst_seed']):>7}{rgb(w['mean']):>15}{rgb(w['real_mean']):>13}"
                             f"{rgb(w['std']):>14}{rgb(w['real_std']):>11}  {'in' if w['colour_in_range'] else 'OUT'}")
            v, rr = res["verdict"], res["real_range"]
            n = v["windows"]
            lines.append(f"real range: mean {rgb(rr['mean']['min'])} .. {rgb(rr['mean']['max'])}, "
                         f"std {rgb(rr['std']['min'])} .. {rgb(rr['std']['max'])}")
            lines.append(f"sharpness ratio min {f(v['sharpness_ratio_min'])}, last {f(v['sharpness_ratio_last'])}, "
                         f">= {v['min_sharpness_ratio']:.2f} in {n - len(v['windows_below_sharpness'])}/{n} windows: "
                         f"{'PASS' if v['sharpness_ok'] else 'FAIL'}; colour in range in "
                         f"{n - len(v['windows_out_of_colour_range'])}/{n} windows "
                         f"({100 * v['colour_in_range_fraction']:.0f}%): {'PASS' if v['colour_ok'] else 'FAIL'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pictures and the table


def write_strip(path: Path, real: list[np.ndarray], generated: list[np.ndarray], gap: int = 2) -> None:
    """Real frames on top, generated below, one column per horizon (1, 2, 4, ... 64), upscaled 2x."""
    import imageio.v3 as iio

    h, w, _ = real[0].shape
    n = len(real)
    canvas = np.full((2 * h + gap, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i, (r, g) in enumerate(zip(real, generated)):
        x = i * (w + gap)
        canvas[:h, x:x + w] = r
        canvas[h + gap:, x:x + w] = g
    iio.imwrite(path, canvas.repeat(2, axis=0).repeat(2, axis=1))


def plot_rollout(path: Path, results: dict) -> None:
    """PSNR (top) and SSIM (bottom) vs horizon, one column per policy: model vs copy, mean solid, median dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    policies = list(results)
    fig, axes = plt.subplots(2, len(policies), figsize=(5.5 * len(policies), 7), squeeze=False)
    for col, policy in enumerate(policies):
        for row, metric in enumerate(("psnr", "ssim")):
            ax = axes[row, col]
            copy_drawn = False
            for label, res in results[policy].items():
                r = res["rollout"]
                line, = ax.plot(r["horizon"], r[metric]["mean"], label=f"model {label} mean")
                ax.plot(r["horizon"], r[metric]["median"], "--", color=line.get_color(), label=f"model {label} median")
                if not copy_drawn:  # the baseline does not depend on the setting
                    ax.plot(r["horizon"], r[f"copy_{metric}"]["mean"], color="0.4", label="copy mean")
                    ax.plot(r["horizon"], r[f"copy_{metric}"]["median"], "--", color="0.4", label="copy median")
                    copy_drawn = True
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ScalarFormatter())  # 1 2 4 8, not 2^0 2^1
            ax.set_xlabel("horizon (frames)")
            ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "SSIM")
            ax.set_title(f"{policy}: free rollout {metric.upper()}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict) -> str:
    """Next-frame PSNR/SSIM and rollout PSNR at a few horizons, model beside copy."""
    H = report["config"]["horizon"]
    hs = [h for h in TABLE_HORIZONS if h <= H]
    head = (f"{'policy':<9}{'setting':<10}{'next PSNR mean/med':>20}{'copy mean/med':>16}{'next SSIM':>11}{'copy':>7}"
            + "".join(f"{f'h={h} PSNR':>14}" for h in hs))
    lines = [head, "-" * len(head)]

    def f(x: Any, spec: str = ".1f") -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    for policy, by_setting in report["results"].items():
        for label, res in by_setting.items():
            n, r = res["next_frame"], res["rollout"]
            row = (f"{policy:<9}{label:<10}"
                   f"{f(n['psnr']['mean']) + ' / ' + f(n['psnr']['median']):>20}"
                   f"{f(n['copy_psnr']['mean']) + ' / ' + f(n['copy_psnr']['median']):>16}"
                   f"{f(n['ssim']['mean'], '.3f'):>11}{f(n['copy_ssim']['mean'], '.3f'):>7}")
            row += "".join(f"{f(r['psnr']['mean'][h - 1]) + ' (' + f(r['copy_psnr']['mean'][h - 1]) + ')':>14}" for h in hs)
            lines.append(row)
    lines.append("rollout columns: model mean (copy mean) in dB; PSNR capped at 100 dB for identical frames")
    return "\n".join(lines)


def format_dsa(report: dict) -> str:
    """Mean steps, quality and confidence ranking per setting, then the DSA claims (`dsa_verdict`)."""
    lines = []
    for policy, rows in report["dsa"].items():
        hs = sorted({int(h) for r in rows.values() for h in r["rollout_psnr_mean"]})  # int keys, or str from JSON
        lines.append(f"{policy}: {'setting':<11}{'steps':>6}{'next':>7}" + "".join(f"{f'h{h}':>7}" for h in hs)
                     + f"{'spearman':>10}  steps histogram")
        for label, r in rows.items():
            sp = r["spearman_confidence_vs_error"]
            roll = {int(h): v for h, v in r["rollout_psnr_mean"].items()}
            lines.append(f"{'':<{len(policy) + 2}}{label:<11}{r['mean_steps_rollout']:6.2f}{r['next_psnr_mean']:7.2f}"
                         + "".join(f"{roll.get(h, math.nan):7.2f}" for h in hs)
                         + f"{math.nan if sp is None else sp:10.2f}  {r['steps_histogram'][1:]}")
        v = report.get("dsa_verdict", {}).get(policy)
        if v:
            eq = "; ".join(f"{lab} ({e['mean_steps']:.2f} steps) " + " ".join(f"{k} {e[k]:+.2f}" for k in e if k != "mean_steps")
                           for lab, e in v["equal_steps"].items())
            lines.append(f"  adaptive minus fixed at equal mean steps (dB): {eq}")
            pf = v["passes_to_fixed_kmax"]
            lines.append("  fixed k_max quality reached at " + (
                f"{pf['mean_steps']:.2f} mean steps: {pf['fewer_passes_x']:.2f}x fewer denoising passes "
                f"({pf.get('fewer_forward_passes_x') or math.nan:.2f}x counting the cache pass)"
                if pf["mean_steps"] else "no adaptive setting"))
            if "student_vs_teacher" in v:
                lines.append("  student at k_max minus teacher (dB): " + " ".join(f"{k} {d:+.2f}" for k, d in v["student_vs_teacher"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def load_world_sim(checkpoint: str, num_sessions: int, device: str | None, graphs: bool | None = None) -> Any:
    """The real engine, with one session per seed."""
    from sim.engine import WorldSim

    return WorldSim.load(checkpoint, num_sessions=num_sessions, device=device, graphs=graphs)


def default_checkpoint(scene: str | None) -> str:
    from sim.bundle import shipped_checkpoint

    folder = shipped_checkpoint(scene or "maze")
    if folder is None:
        sys.exit(f"no shipped checkpoint for scene {scene or 'maze'!r} in this install; pass --checkpoint DIR "
                 "(the output of `python -m sim.train --stage teacher` or later)")
    return str(folder)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim.eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="world checkpoint folder (default: the shipped one for --scene)")
    p.add_argument("--scene", default=None, help="scene to measure on (default: the checkpoint's)")
    p.add_argument("--seeds", type=int, default=8, help=f"held-out world seeds {HELD_OUT_SEED_BASE} + i, one session each")
    p.add_argument("--horizon", type=int, default=64, help="frames scored per seed (and longest rollout)")
    p.add_argument("--context", type=int, default=None, help="prompt frames (default: the model's context_frames)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="sampler steps per frame; several values run one after another")
    p.add_argument("--policies", nargs="+", default=None,
                   help=f"action sources (default: {' '.join(POLICIES)}; with --long: explore, the moving tour)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if present)")
    p.add_argument("--out", default="runs/eval", help="folder for eval.json and the PNGs")
    p.add_argument("--dsa", action="store_true",
                   help="distilled student: quality vs mean steps for fixed k = 1..k_max and adaptive --taus, "
                        "step histograms, confidence-vs-error rank correlation (dsa.png, eval.json['dsa'])")
    p.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95],
                   help="confidence thresholds measured with --dsa")
    p.add_argument("--shares", type=float, nargs="+", default=[],
                   help="with --dsa: also adaptive with one confidence threshold per step, set on training-range "
                        "worlds so that this share of the running frames stops at each step")
    p.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                   help="with --dsa: also measure this many-step teacher on the same clips, as setting teacher<N>")
    p.add_argument("--teacher-steps", type=int, nargs="+", default=[32],
                   help="the --teacher's Euler steps per frame; several values measure it at each (the verdict "
                        "compares the student with the last)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA graphs for the engine's step (default: on with CUDA)")
    p.add_argument("--context-noise", type=float, default=None, metavar="LEVEL",
                   help="commit each finished frame to the cache labelled with this noise level (the "
                        "teacher saw context at levels 0-0.1 in training; default: the checkpoint's, 0)")
    p.add_argument("--shift", type=float, default=None, metavar="S",
                   help="a teacher's sampler shift of its Euler noise levels (default: the engine's, 3); "
                        "higher spends more of the steps at high noise")
    p.add_argument("--guidance", type=float, default=None, metavar="G",
                   help="a teacher's action guidance: v_uncond + G * (v_cond - v_uncond), two passes per step "
                        "(default: the engine's, 1 = off; the teacher saw the null action on 10%% of frames)")
    p.add_argument("--long", type=int, default=None, metavar="N",
                   help="instead of the tables above: a free rollout of N frames per seed beside the real scene, "
                        "sharpness and colour per window against the real frames' (eval.json['long_rollout'], "
                        "long_rollout.png); --horizon is unused")
    p.add_argument("--long-window", type=int, default=LONG_WINDOW, metavar="FRAMES",
                   help="with --long: rollout frames per statistics window")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.horizon < 1:
        p.error("--seeds and --horizon must be >= 1")
    if args.long is not None and args.long < 1:
        p.error(f"--long must be >= 1 (frames of the free rollout), got {args.long}")
    if args.long_window < 1:
        p.error(f"--long-window must be >= 1 frame, got {args.long_window}")
    args.policies = args.policies or (["explore"] if args.long else list(POLICIES))
    if args.steps and min(args.steps) < 1:
        p.error("--steps values must be >= 1")
    if args.shares and not args.dsa:
        p.error("--shares are settings of the DSA eval: add --dsa")
    if any(not 0.0 < q < 1.0 for q in args.shares):
        p.error(f"--shares must lie in (0, 1), got {args.shares}")
    if args.shares and args.long:
        p.error("--shares are not measured with --long")
    if args.shift is not None and not args.shift > 0:
        p.error(f"--shift must be > 0, got {args.shift}")
    if args.shift is not None and args.dsa:
        p.error("--shift sets a teacher's Euler levels; a student's levels are fixed by its training")
    if args.guidance is not None and not args.guidance > 0:
        p.error(f"--guidance must be > 0, got {args.guidance}")
    if args.guidance is not None and args.dsa:
        p.error("--guidance sets a teacher's sampler; a student's steps take one pass each")
    if args.context_noise is not None and not 0.0 <= args.context_noise < 1.0:
        p.error(f"--context-noise must lie in [0, 1), got {args.context_noise}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint(args.scene)
    seeds = held_out_seeds(args.seeds)
    try:
        sim = load_world_sim(checkpoint, len(seeds), args.device, args.graphs)
        references: list[Setting] = []
        if args.teacher:
            if not args.dsa:
                sys.exit("error: --teacher is measured beside a student: add --dsa")
            teacher = load_world_sim(args.teacher, len(seeds), args.device, args.graphs)
            references = teacher_references(teacher, args.teacher_steps)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError and says what to do
        sys.exit(f"error: {e}")
    if args.context_noise is not None:
        sim.sampler.context_noise = args.context_noise
    if args.shift is not None:
        sim.sampler.shift = args.shift
    if args.guidance is not None:
        sim.sampler.guidance = args.guidance
    if args.dsa and not getattr(sim, "few_step", False):
        sys.exit(f"error: --dsa measures a distilled student; {checkpoint} is a many-step teacher")
    scene = args.scene or sim.scene
    if not scene:
        sys.exit(f"checkpoint {checkpoint} names no scene; pass --scene")
    if sim.scene and scene != sim.scene:
        print(f"warning: measuring a {sim.scene!r} model on scene {scene!r}", file=sys.stderr)
    ckpt_id = getattr(sim, "checkpoint_id", None) or getattr(sim, "config", {}).get("id")
    what = (f"a free rollout of {args.long} frames in windows of {args.long_window}" if args.long
            else f"horizon {args.horizon}")
    print(f"eval: {checkpoint} (id {ckpt_id}) on {scene}, device {getattr(sim, 'device', args.device)}, "
          f"{len(seeds)} seeds, {what}")
    config = {"checkpoint": str(checkpoint), "checkpoint_id": ckpt_id, "scene": scene,
              "device": str(getattr(sim, "device", args.device)),
              "context_noise": float(getattr(getattr(sim, "sampler", None), "context_noise", 0.0)),
              "shift": float(getattr(getattr(sim, "sampler", None), "shift", float("nan"))),
              "guidance": float(getattr(getattr(sim, "sampler", None), "guidance", 1.0)),
              "command": "python -m sim.eval " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.long:
        report = run_long(sim, scene, seeds, args.long, args.long_window, context=args.context, policies=args.policies,
                          steps=args.steps, out=args.out, dsa_taus=args.taus if args.dsa else None,
                          references=references, config=config)
        print(format_long(report))
        print(f"wrote {Path(args.out) / 'eval.json'}, long_rollout.png and long strips in {report['wall_s']} s")
        return report
    report = run_eval(sim, scene, seeds, horizon=args.horizon, context=args.context, policies=args.policies,
                      steps=args.steps, out=args.out, dsa_taus=args.taus if args.dsa else None, references=references,
                      config=config, dsa_shares=args.shares if args.dsa else ())
    print(format_table(report))
    if "dsa" in report:
        print(format_dsa(report))
    print(f"wrote {Path(args.out) / 'eval.json'}, rollout.png and strips in {report['wall_s']} s")
    return report


if __name__ == "__main__":
    main()
