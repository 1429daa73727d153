#!/usr/bin/env bash
# Retrain both toy models on a lent GPU machine in one call (issue 18): the UNet (train_toy.py), the flow
# transformer (train_toy_flow.py) and, as the auxiliary loss's ablation, the flow transformer without it, all
# three at once on the one GPU, each from the committed model's VAE (--vae-from), on SCENES training scenes, for
# BUDGET minutes of denoiser training (--budget-min sets the step count from the measured speed). Everything the
# runs wrote (exported weights, records, logs) goes to OUT as a tar in parts of 15 MB (the device tool brings back
# files up to 16 MiB). Also runs on the CPU for a smoke test (DEVICE=cpu SCENES=200 BUDGET=0.2).
#
#   COMFYUI_PATH=<host> OUT=<folder> bash scripts/device_train.sh
#
# On the lent machine, which has torch but no host: copy a host's source (without .git) into a folder of this repo
# that .git/info/exclude ignores, e.g. .host/ComfyUI, carry that folder with the call, and set COMFYUI_PATH to it
# (2026-12-04: ComfyUI 0.3.64, 16 MB; the trainers import only its model code: hostenv.import_host_models).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
SCENES="${SCENES:-50000}"
BUDGET="${BUDGET:-6}"
BATCH="${BATCH:-256}"
WORK="${WORK:-out/device}"
PY="${PYTHON:-python3}"
OUT="${OUT:?set OUT}"
STOP=$("$PY" -c "print($BUDGET + 1.0)")
mkdir -p "$WORK"/unet "$WORK"/flow "$WORK"/flow_noaux "$OUT"
export PYTHONUNBUFFERED=1 COMFYUI_TEST_ARGS="--cpu --use-pytorch-cross-attention"
common=(--device "$DEVICE" --scenes "$SCENES" --batch "$BATCH" --budget-min "$BUDGET" --stop-after-min "$STOP"
        --probe-every 500 --ckpt-every 500)

unet() {
  "$PY" scripts/train_toy.py --work "$WORK/unet" --out "$WORK/unet/toy_sd15.safetensors" "${common[@]}" \
    --vae-from assets/toy/toy_sd15.safetensors --unet-steps 100000 --lr 1e-3 --x0-weight 20 --attn-loss 0.005 "$@"
}
flow() {  # $1: work folder, $2: auxiliary loss weight
  local w="$1" a="$2"; shift 2
  "$PY" scripts/train_toy_flow.py --work "$WORK/$w" --out "$WORK/$w/toy_sd3.safetensors" "${common[@]}" \
    --vae-from assets/toy/toy_sd3.safetensors --steps 100000 --lr 1e-3 --attn-loss "$a" "$@"
}
all_stages() {  # every stage; a run stopped by --stop-after-min (exit 3) still gets its weights exported
  "$@" --stage all; local rc=$?
  if [ $rc -eq 3 ]; then "$@" --stage export; else return $rc; fi
}
t0=$(date +%s)
(all_stages unet > "$WORK/unet/run.log" 2>&1) &
(all_stages flow flow 0.005 > "$WORK/flow/run.log" 2>&1) &
(until [ -f "$WORK/flow/latents.pt" ] || [ $(( $(date +%s) - t0 )) -gt 300 ]; do sleep 2; done
 # the ablation shares the main flow run's encoded latents (same VAE, same scenes)
 ln -sf ../flow/latents.pt "$WORK/flow_noaux/latents.pt"; cp "$WORK/flow/vae.pt" "$WORK/flow_noaux/vae.pt"
 all_stages flow flow_noaux 0 > "$WORK/flow_noaux/run.log" 2>&1) &
wait
echo "all runs done in $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null || true
for d in unet flow flow_noaux; do tail -n 3 "$WORK/$d/run.log"; done
tar cf - -C "$WORK" unet/log.jsonl unet/run.log unet/toy_sd15.safetensors unet/TRAINING.json \
  flow/log.jsonl flow/run.log flow/toy_sd3.safetensors flow/TRAINING_SD3.json \
  flow_noaux/log.jsonl flow_noaux/run.log flow_noaux/toy_sd3.safetensors flow_noaux/TRAINING_SD3.json 2>/dev/null \
  | split -b 15000000 -d - "$OUT/runs.tar.part"
ls -l "$OUT"
