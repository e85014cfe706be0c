#!/usr/bin/env bash
# One short, prepared GPU check (at most ~8 minutes: 90 + 60 + 60 + 100 + 100 + 60 s of limits). Not run in the build session
# (no GPU was lent); run it where one is:   bash bench/gpu_check.sh [OUT_DIR]
# 1. the tests that exercise a device (CUDA paths of the device resolution, encoders, methods);
# 2. bench/bench_gpu.py: knn, patchcore, winclip, btf at batch 1 and 32 on cuda (fp32, then
#    winclip in bf16) with images/s, peak GPU memory and the CPU/GPU ratio;
# 3. bench_winclip on cuda is not needed: bench_gpu's winclip row is the WinCLIP number
#    (aim >= 20 images/s at 240 px; knn aim >= 200 images/s).
# Every step has its own timeout so one stuck step cannot eat the budget; results in OUT_DIR.
set -u
OUT="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE FSIAD_HOME="${FSIAD_HOME:-$(mktemp -d)}"
{
  echo "date: $(date -Is)"; echo "host: $(hostname)"; echo "uptime: $(uptime)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
echo "== tests (device-related, 90 s max)"
timeout 90 "$PY" -m pytest -p no:dash -q -x -m "not slow" -k "device or cuda or gpu" tests 2>&1 | tail -5 | tee "$OUT/tests.txt"
# one method per call, each with its own time limit, so one slow method cannot starve the others
for spec in knn:60 patchcore:60 winclip:100 btf:100; do
  m="${spec%%:*}"; t="${spec##*:}"
  echo "== bench_gpu $m fp32 (${t} s max)"
  timeout "$t" "$PY" -m bench.bench_gpu --device cuda --batches 1,32 --methods "$m" --precision fp32 \
    --repeats 2 --cpu-images 2 --json "$OUT/bench_gpu_${m}_fp32.json" 2>&1 | tee "$OUT/bench_gpu_${m}_fp32.txt"
done
echo "== bench_gpu winclip bf16 (60 s max)"
timeout 60 "$PY" -m bench.bench_gpu --device cuda --batches 32 --methods winclip --precision bf16 \
  --repeats 2 --cpu-images 0 --json "$OUT/bench_gpu_winclip_bf16.json" 2>&1 | tee "$OUT/bench_gpu_winclip_bf16.txt"
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> "$OUT/machine.txt" 2>&1
echo "results in $OUT"
