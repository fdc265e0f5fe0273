#!/usr/bin/env bash
# The GPU work of issue [5/9], as run on the lent H100 (see README.md beside this file for the results).
#   bash experiments/lrdm_synthetic_gpu/device.sh prepare   # wheels, gsplat JIT build + GPU tests, benchmark
#   bash experiments/lrdm_synthetic_gpu/device.sh shards    # synthetic 256x256 shards rendered with gsplat
#   bash experiments/lrdm_synthetic_gpu/device.sh train     # static and dynamic runs side by side, then test
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 WANDB_MODE=offline
OUT=${OUT:-/tmp/out}
SH=/tmp/shards
case "$1" in
prepare)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  python3 -m pytest tests/test_render_gpu.py -q -m gpu --noconftest -p no:cacheprovider 2>&1 | tail -3  # builds gsplat
  python3 experiments/benchmarks/lrdm.py --out $OUT
  ;;
shards)
  rm -rf $SH
  # synthetic 256x256 clips, 13 frames: 7 writers per kind, and held-out scenes (other seeds) for validation/test
  for k in 0 1 2 3 4 5 6; do
    python3 -m datamodules.synthetic --out $SH/static_$k --clips 48 --static --size 256 --seed $k --device cuda > /dev/null &
    python3 -m datamodules.synthetic --out $SH/dynamic_$k --clips 48 --size 256 --seed $((100 + k)) --device cuda > /dev/null &
  done
  python3 -m datamodules.synthetic --out $SH/static_val --clips 16 --static --size 256 --seed 900 --split test --device cuda &
  python3 -m datamodules.synthetic --out $SH/dynamic_val --clips 16 --size 256 --seed 901 --split test --device cuda &
  wait
  du -sh $SH
  ;;
train)
  for kind in static dynamic; do
    python3 -m diff4splat.train experiment=lrdm_synthetic_${kind}_gpu logger=csv extras.print_config=false \
      ~callbacks.media ~callbacks.progress_bar +trainer.enable_progress_bar=false paths.output_root=/tmp/runs \
      "data.synthetic={}" "data.sources.synthetic.shards=$SH/${kind}_*/train-*.tar" \
      "data.sources.synthetic.val_shards=$SH/${kind}_val/test-*.tar" trainer.max_time=${MAX_TIME:-00:00:07:00} \
      > $OUT/train_${kind}.log 2>&1 &
  done
  wait
  for kind in static dynamic; do
    run=$(ls -d /tmp/runs/lrdm_synthetic_${kind}_gpu/runs/*/ | head -1)
    cp $run/summary.json $OUT/summary_${kind}.json
    cp $run/csv/metrics.csv $OUT/metrics_${kind}.csv
  done
  ;;
esac
