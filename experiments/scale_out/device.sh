#!/usr/bin/env bash
# Issue [9/9] on one GPU: FSDP training of the `base` LRDM and of the 5B CameraWan for a few steps, a pre-emption
# (SIGTERM) in the middle, the identical command again (it continues from last.ckpt), the sharded checkpoint
# consolidated into one .safetensors, and that file loaded into a single-process inference pipeline.
# Results: experiments/scale_out/README.md.
#   bash experiments/scale_out/device.sh setup    # wheels (gsplat, diffusers, hydra, ...) into /tmp/site, at the versions
#                                                 # of requirements/gpu-constraints.txt
#   bash experiments/scale_out/device.sh lrdm     # base LRDM, trainer=fsdp, 128² synthetic clips
#   bash experiments/scale_out/device.sh camwan   # 5B CameraWan (random init, LoRA 32 + camera branch), trainer=fsdp2,
#                                                 # 352x640x49 procedural videos through a random Wan2.2-layout VAE
# Environment: OUT (where logs go; default /tmp/out), RUNS (run folders; /tmp/runs), STEPS, STOP_AT (the logged step
# after which SIGTERM is sent), TRAINER (lrdm: fsdp), TRAINER_EXTRA (more overrides). A CPU dry run of the lrdm part:
#   PY=.venv/bin/python TRAINER=cpu TRAINER_EXTRA="model.dim=64 model.depth=2 model.num_heads=2 data.num_workers=0" \
#     STEPS=8 STOP_AT=3 bash experiments/scale_out/device.sh lrdm
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 PYTHONUNBUFFERED=1 WANDB_MODE=offline
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$OUT" "$RUNS"
PY=${PY:-python3}

COMMON=(logger=csv +logger.csv.flush_logs_every_n_steps=1 extras.print_config=false "~callbacks.progress_bar"
        "~callbacks.media" "~callbacks.model_checkpoint" "~callbacks.periodic_checkpoint"
        +trainer.enable_progress_bar=false trainer.log_every_n_steps=1 test=false "paths.output_root=$RUNS"
        optimized_metric=train/loss)

# Run "$@" (a training command), send SIGTERM once it has logged step STOP_AT, wait for the exit
# (143: stopped by the signal after writing a fresh last.ckpt), then run the identical command to the end.
preempt_and_resume() {
  local run_dir=$1 stop_at=$2 log=$3
  shift 3
  rm -rf "$run_dir"
  "$@" >"$log.1" 2>&1 &
  local pid=$!
  until [ "$(latest_step "$run_dir")" -ge "$stop_at" ]; do
    kill -0 $pid 2>/dev/null || { echo "training exited before step $stop_at"; tail -40 "$log.1"; return 1; }
    sleep 2
  done
  kill -TERM $pid
  local rc=0
  wait $pid || rc=$?
  echo "first run: exit $rc after SIGTERM (143 expected), last logged step $(latest_step "$run_dir")"
  "$@" >"$log.2" 2>&1
  echo "second run (the same command): exit 0, last logged step $(latest_step "$run_dir")"
  grep -h "Resumed at global step" "$log.2" || true
}

# The last logged global step of a run (its CSV metrics, flushed every step; -1 before the first).
latest_step() {
  $PY - "$1" <<'EOF'
import csv, glob, sys
steps = [int(r["step"]) for f in glob.glob(sys.argv[1] + "/csv/*/metrics.csv") for r in csv.DictReader(open(f))
         if r.get("step") and r.get("train/loss")]
print(max(steps, default=-1))
EOF
}

case "${1:-}" in
setup)
  # the carried wheels must be the pinned versions (pip refuses a wheel that contradicts the constraints)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    -c requirements/gpu-constraints.txt .whl/*.whl
  ;;
lrdm)
  STEPS=${STEPS:-60}
  STOP_AT=${STOP_AT:-20}
  export DIFF4SPLAT_RUN_ID=lrdm_base_fsdp
  run=$RUNS/lrdm_base_fsdp/runs/$DIFF4SPLAT_RUN_ID
  cmd=($PY -m diff4splat.train task_name=lrdm_base_fsdp model=lrdm_base system=reconstruction data=synthetic trainer=${TRAINER:-fsdp}
       trainer.devices=1 "${COMMON[@]}" data.synthetic.synthetic.height=128 data.synthetic.synthetic.width=128
       data.sampling.resolution=128 data.sampling.size_divisor=16 +data.synthetic_pool=16 +data.synthetic_val_pool=2
       data.batch_size=4 data.num_workers=4 data.batches_per_epoch=1000 data.val_batches=1 system.loss.lpips=0
       trainer.max_steps=$STEPS trainer.val_check_interval=1000 callbacks.last_checkpoint.every_n_train_steps=10
       ${TRAINER_EXTRA:-})
  start=$(date +%s)
  preempt_and_resume "$run" "$STOP_AT" "$OUT/lrdm_train.log" "${cmd[@]}"
  echo "lrdm: training (both runs) $(( $(date +%s) - start )) s"
  ls -la "$run/checkpoints" "$run/checkpoints/last.ckpt" | head -20
  $PY -m diff4splat.checkpoints consolidate "$run/checkpoints/last.ckpt" /tmp/lrdm_base.safetensors
  $PY - "$run" <<'EOF'
import csv, glob, json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = []
for f in sorted(glob.glob(str(run / "csv" / "**" / "metrics.csv"), recursive=True)):
    for r in csv.DictReader(open(f)):
        if r.get("train/loss"):
            rows.append((Path(f).parent.name, int(r["step"]), float(r["train/loss"])))
print("train/loss by (csv version, step):", [(v, s, round(l, 4)) for v, s, l in rows])
EOF
  # single-process inference with the consolidated weights: a photo + an orbit -> reconstruct -> 4D scene
  $PY -c "import numpy as np; from PIL import Image; y, x = np.mgrid[0:128, 0:128]; Image.fromarray(np.stack([x * 2, y * 2, (x // 16 + y // 16) % 2 * 200], -1).astype(np.uint8)).save('/tmp/photo.png')"
  $PY -m diff4splat.preprocess --image /tmp/photo.png --trajectory orbit --num-frames 13 --out /tmp/scene.npz
  $PY -m diff4splat.reconstruct --weights /tmp/lrdm_base.safetensors --input /tmp/scene.npz --out /tmp/recon --overwrite
  ls /tmp/recon /tmp/recon/ply | head -20
  cp "$OUT/lrdm_train.log.2" "$OUT/lrdm_train_resumed.log" 2>/dev/null || true
  ;;
camwan)
  STEPS=${STEPS:-8}
  STOP_AT=${STOP_AT:-3}
  export DIFF4SPLAT_RUN_ID=camwan_5b_fsdp2
  run=$RUNS/camctrl_5b/runs/$DIFF4SPLAT_RUN_ID
  cmd=($PY -m diff4splat.train experiment=camctrl_5b model.init=random model.lora_rank=32 "${COMMON[@]}"
       data=synthetic_video data.synthetic.num_frames=49 data.synthetic.height=352 data.synthetic.width=640
       +data.synthetic.device=cuda data.pool=2 data.val_pool=1 data.batch_size=1 data.batches_per_epoch=1000
       data.val_batches=1 data.num_workers=0 system.vae=tiny system.vae_z_dim=48 system.text_cache=null
       trainer.devices=1 trainer.max_steps=$STEPS trainer.val_check_interval=1000
       callbacks.last_checkpoint.every_n_train_steps=2 callbacks.ema.decay=0.99 ${TRAINER_EXTRA:-})
  start=$(date +%s)
  preempt_and_resume "$run" "$STOP_AT" "$OUT/camwan_train.log" "${cmd[@]}"
  echo "camwan: training (both runs) $(( $(date +%s) - start )) s"
  du -sh "$run/checkpoints/last.ckpt"
  $PY -m diff4splat.checkpoints consolidate "$run/checkpoints/last.ckpt" /tmp/camwan.safetensors \
      --camera-weights /tmp/camera.safetensors
  ls -la /tmp/camwan.safetensors /tmp/camera.safetensors
  # single-process inference: the consolidated CameraWan samples a video along a trajectory (CFG, 4 UniPC steps)
  $PY - <<'EOF'
import time, torch
from safetensors.torch import load_file
from safetensors import safe_open
from diff4splat.checkpoints import load_camera_wan
from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.models.camera_wan import plucker_for_latents
from diff4splat.pipelines.camera_video import SamplingConfig, sample_latents
state = load_file("/tmp/camwan.safetensors")
with safe_open("/tmp/camwan.safetensors", "pt") as f:
    meta = f.metadata()
t0 = time.perf_counter()
model = load_camera_wan(state, meta).to("cuda", torch.bfloat16).eval()
print(f"single-process CameraWan from the consolidated file: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B "
      f"parameters, step {meta.get('global_step')}, loaded in {time.perf_counter() - t0:.1f} s")
traj = make_trajectory("orbit", 49, strength=0.3)
h, w = 352, 640
plucker = plucker_for_latents(traj.c2w[None].float().cuda(), traj.fxfycxcy[None].float().cuda(), h, w)
cond = torch.randn(1, 48, 1, h // 16, w // 16, device="cuda")
text = torch.zeros(2, 512, model.text_dim, device="cuda")
with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
    lat = sample_latents(model, cond, 13, text[:1], text[1:], plucker, SamplingConfig(steps=4, guidance_scale=5.0))
print("sampled latents", tuple(lat.shape), "finite:", bool(torch.isfinite(lat).all()))
EOF
  ;;
*)
  echo "usage: $0 setup|lrdm|camwan" >&2
  exit 2
  ;;
esac
