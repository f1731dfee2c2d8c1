#!/usr/bin/env bash
# Kernels, graphs and the frame step on one GPU, checked then timed, in one device call:
#   bash .ci/gpu/check.sh [compile_batches] [engine_checkpoint]
# 1. python -m kernels.bench: every kernel against its torch twin on fresh random bf16 inputs,
#    then against SDPA flash / cuDNN / FlexAttention and the torch twins, per call and inside a
#    CUDA graph (table); SWEEP=1 adds the attention tile sweep (about a minute more; its limit is then 240 s);
# 2. python -m sim.bench --check: triton vs torch backend, graph replays vs eager, engine frames
#    with and without graphs; then step and frame times in eager / triton / torch+graphs /
#    triton+graphs at batch 1 8 32 64, and the engine's latency for one player and for 64
#    sessions, each with a profile of where its frame goes (device busy time, host operators);
# 3. python -m sim.bench --modes compile eager triton+graphs at the compile batches (default
#    "32"; "1 32" does not fit its limit): torch.compile(mode="max-autotune") beside the other two, in the same process
#    (max-autotune took 81-168 s per batch size on the H200: one batch size per call is safest;
#    COMPILE_S raises its 280 s limit, e.g. PARTS=compile COMPILE_S=540 bash .ci/gpu/check.sh 32).
# Run it alone on the GPU: its timings are only clean when nothing else shares the card. The three
# parts' limits (150 + 200 + 280 s) can exceed one device call's 600 s: split them with PARTS.
# Each part has its own time limit and a failure does not stop the next. Logs and JSON in $OUT.
# compile_batches "none" skips part 3; PARTS (default "kernels sim compile") picks the parts to run.
source .ci/gpu/setup.sh
set +e
COMPILE_BATCHES=${1:-32}; ENGINE=${2:-sim/weights/maze}; PARTS=${PARTS:-kernels sim compile}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit --format=csv | tee "$OUT/gpu.txt"
[[ " $PARTS " == *" kernels "* ]] && timeout "${KERNELS_S:-$([ -n "${SWEEP:-}" ] && echo 240 || echo 150)}" python3 -m kernels.bench ${SWEEP:+--sweep} --json "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels.bench: exit $?"
[[ " $PARTS " == *" sim "* ]] && timeout "${SIM_S:-200}" python3 -m sim.bench --check --modes eager triton torch+graphs triton+graphs --engine "$ENGINE" \
  --engine-sessions 1 64 --engine-profile --profile triton+graphs:1 triton+graphs:32 --json "$OUT/sim_bench.json" > "$OUT/sim_bench.log" 2>&1
echo "sim.bench: exit $?"
# shellcheck disable=SC2086 (the batches are words)
[[ " $PARTS " == *" compile "* ]] && [ "$COMPILE_BATCHES" != none ] && timeout "${COMPILE_S:-280}" python3 -m sim.bench --modes eager compile triton+graphs --batch $COMPILE_BATCHES \
  --json "$OUT/sim_compile.json" > "$OUT/sim_compile.log" 2>&1
echo "sim.bench compile: exit $?"
for f in kernels sim_bench sim_compile; do [ -f "$OUT/$f.log" ] || continue; echo "== $f"; grep -v -E '^\s*$' "$OUT/$f.log" | tail -28; done
