#!/usr/bin/env bash
# GPU check of the attention paths and the CamI2V training step, in one go (step limits sum to 7.3 min).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: $OUT, else benchmarks/results/gpu_<time>
#
# Installs nothing: it runs the project's own benchmarks with the project's Python
# ($PYTHON, else .venv/bin/python, else python). Every step has its own time limit, so a slow
# step cannot eat the others' time; each writes its table (markdown) and log into OUT_DIR:
#   1. correctness.md  CUDA: dense / block-sparse / FlexAttention against one dense SDPA call, forward
#                      and input gradients (FlexAttention's backward only exists on the GPU), and the
#                      block sparsity of every level at 256x256 and 512x320.
#   2. attention_256.md, attention_512.md  benchmarks/attention.py: the public computation (CamI2V's
#                      bool-mask SDPA call; CVD's float-map call for cross_video) against ours (dense,
#                      sparse, flex), forward and forward+backward; an untimed first round (compilation,
#                      outputs, memory), then 2 timed rounds (the 3 calls per path of earlier versions).
#   3. backbone.md     benchmarks/backbone.py speed: CamI2V training step (Table 3 style), if present.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results/gpu_$(date +%Y%m%d_%H%M%S)}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=offline
START=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

log "python: $($PY -c 'import torch,sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' 2>&1)"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv >> "$OUT_DIR/gpu_check.log" 2>&1 || true

log "1/3 correctness and block sparsity"
timeout 110 "$PY" benchmarks/gpu_correctness.py > "$OUT_DIR/correctness.md" 2>> "$OUT_DIR/gpu_check.log" \
  || log "correctness step failed or timed out (rc=$?)"

log "2/3 attention benchmark 256x256"
timeout 120 "$PY" benchmarks/attention.py --sizes 256x256 --levels 32x32 16x16 --parts attention \
  --variants epipolar epipolar_ref cross_video --paths dense sparse flex --repeat 2 --max-cost 3e12 --timeout 100 \
  --out "$OUT_DIR/attention_256.md" \
  > /dev/null 2>> "$OUT_DIR/gpu_check.log" || log "attention 256x256 failed or timed out (rc=$?)"
log "2/3 attention benchmark 512x320"
timeout 120 "$PY" benchmarks/attention.py --sizes 512x320 --levels 40x64 20x32 --parts attention \
  --variants epipolar epipolar_ref cross_video --paths dense sparse flex --repeat 2 --max-cost 3e12 --timeout 100 \
  --out "$OUT_DIR/attention_512.md" \
  > /dev/null 2>> "$OUT_DIR/gpu_check.log" || log "attention 512x320 failed or timed out (rc=$?)"

log "3/3 CamI2V training step (benchmarks/backbone.py)"
if [ -f benchmarks/backbone.py ]; then
  timeout 90 "$PY" benchmarks/backbone.py speed --backbone dynamicrafter_256 --models dynamicrafter,cami2v \
    --phase training --frames 16 --batch 1 --steps 3 --repeat 2 --precision bf16 --device cuda \
    > "$OUT_DIR/backbone.md" 2>> "$OUT_DIR/gpu_check.log" || log "backbone step failed or timed out (rc=$?)"
else
  log "benchmarks/backbone.py is not in this checkout: training step not measured" | tee "$OUT_DIR/backbone.md"
fi
log "done; tables in $OUT_DIR"
