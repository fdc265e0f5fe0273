#!/usr/bin/env bash
# The GPU work of issue [5/9], as run on the lent H100 (see README.md beside this file for the results).
#   bash experiments/lrdm_synthetic_gpu/device.sh setup    # wheels (.whl/, pinned by requirements/gpu-constraints.txt),
#                                                          # gsplat JIT build (through the GPU render tests)
#   bash experiments/lrdm_synthetic_gpu/device.sh shards   # 256x256 procedural shards rendered with gsplat
#   MAX_TIME=00:00:12:50 bash experiments/lrdm_synthetic_gpu/device.sh train   # static and dynamic from scratch side
#       by side, each then tested (a second call with a larger MAX_TIME continues both from their last.ckpt)
#   bash experiments/lrdm_synthetic_gpu/device.sh dynamic-from-static   # 7 min of dynamic from the static weights
# Environment: OUT (logs and results; /tmp/out), DATA_ROOT (/tmp/data), RUNS (/tmp/runs), MAX_TIME (training time of
# each run, D:HH:MM:SS), WORKERS (loader workers per run; 6), EXTRA (more Hydra overrides), RUN_ID.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 WANDB_MODE=offline
OUT=${OUT:-/tmp/out}
export DATA_ROOT=${DATA_ROOT:-/tmp/data}
RUNS=${RUNS:-/tmp/runs}
PRESETS="arc_left arc_right truck_left truck_right dolly_in dolly_out pan_left pan_right zoom_in zoom_out spiral"
SCENES="--size 256 --texture smooth --strength 0.5 1.0 --device cuda --trajectories $PRESETS"
mkdir -p "$OUT"

# summarise RUN NAME: the run's summary.json and its validation/test PSNR by step into $OUT
summarise() {
  cp $1/summary.json $OUT/summary_$2.json || true
  python3 - $1/csv $OUT/val_$2.txt <<'EOF'
import csv, glob, sys
rows = [r for f in sorted(glob.glob(sys.argv[1] + "/**/metrics.csv", recursive=True)) for r in csv.DictReader(open(f))]
with open(sys.argv[2], "w") as out:
    for r in rows:
        if r.get("val/psnr"):
            print("step", r["step"], "val/psnr", r["val/psnr"], "nearest", r.get("val/psnr_nearest_input"),
                  "ssim", r.get("val/ssim"), "depth_abs_rel", r.get("val/depth_abs_rel"), file=out)
        if r.get("test/psnr"):
            print("TEST psnr", r["test/psnr"], "nearest", r.get("test/psnr_nearest_input"), "ssim", r.get("test/ssim"),
                  file=out)
EOF
  cat $OUT/val_$2.txt
}

case "$1" in
setup)
  # the carried wheels must be the pinned versions (pip refuses a wheel that contradicts the constraints)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    -c requirements/gpu-constraints.txt .whl/*.whl
  python3 -m pytest tests/test_render_gpu.py -q -m gpu -p no:cacheprovider 2>&1 | tail -3  # builds gsplat
  ;;
shards)
  for kind in static dynamic; do
    flag=$([ $kind = static ] && echo --static || echo --dynamic)
    base=$([ $kind = static ] && echo 0 || echo 100)
    for k in 0 1 2 3 4 5 6 7; do
      python3 -m datamodules.synthetic --out $DATA_ROOT/shards/synthetic_${kind}_256/w$k --clips 64 $flag \
        --seed $((base + k)) $SCENES > /dev/null &
    done
    python3 -m datamodules.synthetic --out $DATA_ROOT/shards/synthetic_${kind}_256/val --clips 32 $flag \
      --seed $((base + 900)) --split test $SCENES > /dev/null &
  done
  wait
  du -sh $DATA_ROOT/shards/*
  ;;
train)  # static and dynamic from scratch side by side (the first runs of 2026-11-25)
  for kind in static dynamic; do
    DIFF4SPLAT_RUN_ID=h100_$kind python3 -m diff4splat.train experiment=lrdm_synthetic_${kind}_gpu logger=csv \
      extras.print_config=false "~callbacks.media" "~callbacks.progress_bar" +trainer.enable_progress_bar=false \
      paths.output_root=$RUNS data.num_workers=${WORKERS:-6} trainer.max_time=${MAX_TIME:-00:00:05:00} \
      ${EXTRA:-} >> $OUT/train_${kind}.log 2>&1 &
  done
  wait
  for kind in static dynamic; do summarise $RUNS/lrdm_synthetic_${kind}_gpu/runs/h100_$kind $kind; done
  ;;
dynamic-from-static)  # the progressive schedule's second stage, from the static run's exported EMA weights
  init=$RUNS/lrdm_synthetic_static_gpu/runs/h100_static/checkpoints/last.safetensors
  DIFF4SPLAT_RUN_ID=${RUN_ID:-h100_dyn_from_static} python3 -m diff4splat.train experiment=lrdm_synthetic_dynamic_gpu \
    logger=csv extras.print_config=false "~callbacks.media" "~callbacks.progress_bar" +trainer.enable_progress_bar=false \
    paths.output_root=$RUNS data.num_workers=8 system.init_from=$init ${EXTRA:-} > $OUT/train_dyn_from_static.log 2>&1
  summarise $RUNS/lrdm_synthetic_dynamic_gpu/runs/${RUN_ID:-h100_dyn_from_static} dyn_from_static
  ;;
esac
