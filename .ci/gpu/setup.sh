# Sourced at the start of every GPU command: the device machine has torch and triton but
# no package registry, so missing pure-Python packages travel as wheels in .whl/ (carry it).
set -euo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  # once per machine: scripts that source this concurrently must not install over each other
  if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$(ls .whl)" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    ls .whl > /tmp/site/.wheels
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu-out}
mkdir -p "$OUT"
python3 - <<'PY'
import torch, triton, datetime
p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC | torch {torch.__version__} | triton {triton.__version__} | "
      f"{p.name if p else 'no GPU'}" + (f", {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB" if p else ""))
PY
