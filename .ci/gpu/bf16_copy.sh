#!/usr/bin/env bash
# A checkpoint's bf16 copy, small enough to come back through $OUT (split it into 15 MB parts):
#   bash .ci/gpu/bf16_copy.sh CHECKPOINT DEST
# Its id is dropped: save_world gives the copy its own.
set -euo pipefail
python3 -c "
import sys, torch; from sim.bundle import load_world, save_world
m, ae, cfg = load_world(sys.argv[1]); cfg.pop('id', None)
save_world(sys.argv[2], cfg, ae, m, dtype=torch.bfloat16)" "${1:?usage: bf16_copy.sh CHECKPOINT DEST}" "${2:?usage: bf16_copy.sh CHECKPOINT DEST}"
