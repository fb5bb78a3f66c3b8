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
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 MOFI_TRACKING=off
cd "$ROOT/benchmarks"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible"'

timeout 270 "$PYTHON" gpu_train.py --arch ViT-B-16 --recipe multitask --batch-size 256 \
  --steps 150 --warmup 15 --out "$OUT" 2>&1 | tee "$OUT/gpu_train.log"

timeout 130 "$PYTHON" bench_score.py --arch ViT-B-16 --device cuda --samples 6000 \
  --batch-size 256 --repeats 3 --json "$OUT/score.json" 2>&1 | tee "$OUT/score.log"

timeout 60 "$PYTHON" bench_retrieval_size.py --out "$OUT/retrieval.json" 2>&1 \
  | tee "$OUT/retrieval.log"
"$PYTHON" - "$OUT" <<'PY'
import json, sys, time
from pathlib import Path
import torch
out = Path(sys.argv[1])
merged = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
for name in ("gpu_train", "score", "retrieval"):
    f = out / f"{name}.json"
    merged[name] = json.loads(f.read_text()) if f.exists() else {"error": f"no {f.name}"}
(out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
PY
echo "gpu check done: $OUT"
