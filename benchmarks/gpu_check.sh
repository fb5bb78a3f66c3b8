#!/usr/bin/env bash
# The prepared GPU check: one short run (at most 8 minutes: the step timeouts add up to 7 min
# 40 s) for when a CUDA machine is available. Writes its results into OUT_DIR:
#   gpu_train.json  training images/s and MFU, ViT-B-16 multitask, bf16, torch.compile off and on
#   score.json      score stage vs bare bf16 encode_image, ViT-B-16 (target ratio >= 0.85)
#   retrieval.json  GPR1200-size retrieval (12,000 x 512, 1,200 classes): seconds and memory
#   results.json    all of the above in one file, with the GPU's name and the date
#   *.log           the printed output of each step
#
#   bash benchmarks/gpu_check.sh OUT_DIR          (PYTHON=... to choose the interpreter)
set -euo pipefail
OUT=$(realpath -m "${1:?usage: benchmarks/gpu_check.sh OUT_DIR}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
rm -f "$OUT/failures.log"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 MOFI_TRACKING=off
cd "$ROOT/benchmarks"

# GPU_CHECK_SMOKE=1: the same steps at toy size with mofi-tiny on the CPU, so that the script's
# plumbing is tested (tests/unit/test_gpu_check_scripts.py) between the sessions that get a GPU
if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then
  DEVICE=cpu ARCH=mofi-tiny
  TRAIN=(--steps 2 --warmup 1 --batch-size 4 --classes 10 --compile off)
  SCORE=(--samples 200 --batch-size 32 --repeats 1)
  RETRIEVAL=(--images 200 --dim 16)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
  "$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"'
  DEVICE=cuda ARCH=ViT-B-16
  TRAIN=(--batch-size 256 --steps 150 --warmup 15)
  SCORE=(--samples 6000 --batch-size 256 --repeats 3)
  RETRIEVAL=()
fi

# step NAME SECONDS COMMAND...: output to NAME.log; a failed or timed-out step is written to
# failures.log and the next steps still run (one short GPU loan should give every number it can)
step() {
  local name=$1 limit=$2 rc
  shift 2
  set +e
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  if (( rc != 0 )); then
    echo "$name: exit $rc$( (( rc == 124 )) && echo " (timed out after $limit s)")" \
      | tee -a "$OUT/failures.log"
  fi
}

step gpu_train 270 "$PYTHON" gpu_train.py --arch "$ARCH" --device "$DEVICE" \
  --recipe multitask "${TRAIN[@]}" --out "$OUT"
step score 130 "$PYTHON" bench_score.py --arch "$ARCH" --device "$DEVICE" "${SCORE[@]}" \
  --json "$OUT/score.json"
step retrieval 60 "$PYTHON" bench_retrieval_size.py "${RETRIEVAL[@]}" --out "$OUT/retrieval.json"
"$PYTHON" - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path
import torch
out = Path(sys.argv[1])
merged = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke)",
          "torch": torch.__version__}
for name in ("gpu_train", "score", "retrieval"):
    f = out / f"{name}.json"
    merged[name] = json.loads(f.read_text()) if f.exists() else {"error": f"no {f.name}"}
failures = out / "failures.log"
merged["failures"] = failures.read_text().splitlines() if failures.exists() else []
(out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
PY
if [[ -s "$OUT/failures.log" ]]; then
  echo "gpu check done with failures (see $OUT/failures.log): $OUT"
else
  echo "gpu check done: $OUT"
fi
