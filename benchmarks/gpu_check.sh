#!/usr/bin/env bash
# benchmarks/gpu_check.sh: check the multi-GPU path and the real throughput on a GPU machine, in one
# go, from a checkout of this repository (what benchmarks/flops.py predicts, measured).
#
#   bash benchmarks/gpu_check.sh                  # every visible GPU; ~10-20 min, most of it setup
#   bash benchmarks/gpu_check.sh --cpu_dry_run    # the same steps on the CPU (smoke preset, tiny)
#
# Options:
#   --work_dir DIR    where everything is written (default: benchmarks/.work/gpu_check-<time>);
#                     created here; an existing non-empty DIR not made by this script is refused;
#                     one it made is reused (its images kept, every timed stage rerun)
#   --venv DIR        virtual environment to create or reuse (default: the active one, else
#                     benchmarks/.work/venv-gpu)
#   --skip_install    do not run pip (the venv already has the package)
#   --instances N     synthetic garments of the timed run (default 1000: 2,500 images at 224 px)
#   --steps N         extractor steps per epoch of each timed run (default 40; 2 epochs, the
#                     second one is measured)
#   --no_small_stages skip the features/embedders/manipulator per-step timing
#   --cpu_dry_run     no GPU needed: smoke preset, a few steps, replicas on 2 logical CPUs
#
# Steps: (1) venv + `pip install -e '.[gpu,test]'`; (2) nvidia-smi and TensorFlow's GPUs (stops
# with a clear message if there are none); (3) the 2-replica tests, tests/test_distribute.py, with
# their MirroredStrategy moved from 2 logical CPUs onto 2 GPUs (2 logical GPUs on one physical
# GPU when there is only one) by a pytest plugin this script writes into the work dir, TF32 off
# (the tests compare float32 updates at 1e-4); (4) a short timed run of the paper preset's
# extractor (ResNet50-SPoC, 224 px, global batch 128 PK + 32 attribute images) with
# MirroredStrategy over every GPU, once from the decode cache and once decoding the files, then
# the small stages' per-step time; (5) measured images/s next to benchmarks/flops.json's
# prediction for this GPU class, GPU count and vCPU count. Writes <work_dir>/summary.json.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK=""
VENV=""
INSTALL=1
INSTANCES=1000
STEPS=40
SMALL_STAGES=1
DRY_RUN=0

die() { echo "gpu_check: error: $*" >&2; exit 2; }
say() { printf '\n== %s\n' "$*"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --work_dir) [[ $# -ge 2 ]] || die "--work_dir needs a value"; WORK="$2"; shift 2 ;;
    --venv) [[ $# -ge 2 ]] || die "--venv needs a value"; VENV="$2"; shift 2 ;;
    --skip_install) INSTALL=0; shift ;;
    --instances) [[ $# -ge 2 ]] || die "--instances needs a value"; INSTANCES="$2"; shift 2 ;;
    --steps) [[ $# -ge 2 ]] || die "--steps needs a value"; STEPS="$2"; shift 2 ;;
    --no_small_stages) SMALL_STAGES=0; shift ;;
    --cpu_dry_run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ "$INSTANCES" =~ ^[0-9]+$ && "$INSTANCES" -ge 200 ]] || die "--instances must be an integer >= 200"
[[ "$STEPS" =~ ^[0-9]+$ && "$STEPS" -ge 2 ]] || die "--steps must be an integer >= 2"

cd "$REPO"
[[ -f setup.py && -d flam_tf ]] || die "run from a checkout of the flam_tf repository ($REPO)"

# -- work dir --------------------------------------------------------------------------------------
if [[ -z "$WORK" ]]; then
  WORK="$REPO/benchmarks/.work/gpu_check-$(date +%Y%m%d-%H%M%S)"
fi
if [[ -e "$WORK" && ! -d "$WORK" ]]; then
  die "--work_dir $WORK exists and is not a directory"
fi
if [[ -d "$WORK" && -n "$(ls -A "$WORK")" && ! -f "$WORK/.gpu_check" ]]; then
  die "--work_dir $WORK is not empty and was not made by this script; give a new one"
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
touch "$WORK/.gpu_check"
LOG="$WORK/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
trap 'rc=$?; if [[ $rc -ne 0 ]]; then echo "gpu_check: stopped (exit $rc); logs in $WORK" >&2; fi' EXIT
echo "gpu_check: $(date -Is) repo $REPO, work dir $WORK"
[[ $DRY_RUN -eq 1 ]] && echo "gpu_check: CPU DRY RUN (smoke preset): checks the script, measures nothing of a GPU"

# -- 1. venv -------------------------------------------------------------------------------------
say "1. virtual environment"
if [[ -z "$VENV" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then VENV="$VIRTUAL_ENV"; else VENV="$REPO/benchmarks/.work/venv-gpu"; fi
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v python3 >/dev/null || die "python3 not found: install Python 3.10+ first"
  echo "creating $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
PY="$VENV/bin/python"
echo "python: $($PY --version 2>&1) at $PY"
EXTRAS="gpu,test"
[[ $DRY_RUN -eq 1 ]] && EXTRAS="test"
if [[ $INSTALL -eq 1 ]]; then
  echo "pip install -e '.[$EXTRAS]'"
  "$PY" -m pip install -q -e ".[$EXTRAS]"
else
  echo "pip install skipped (--skip_install)"
fi
"$PY" -c "import flam_tf, tensorflow, keras, pytest" 2>/dev/null \
  || die "the venv $VENV lacks flam_tf/tensorflow/keras/pytest; run without --skip_install"

# -- 2. GPUs -------------------------------------------------------------------------------------
say "2. GPUs"
NGPU=0
GPU_NAME="none"
if [[ $DRY_RUN -eq 0 ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "nvidia-smi not found: this machine has no NVIDIA driver. This check needs an NVIDIA GPU
(A100/H100 class); to try the script itself on a CPU, run: bash benchmarks/gpu_check.sh --cpu_dry_run"
  fi
  nvidia-smi || die "nvidia-smi failed: the NVIDIA driver is not working on this machine"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
else
  echo "nvidia-smi: skipped (--cpu_dry_run)"
fi
NGPU="$("$PY" - <<'EOF'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import sys
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
info = tf.sysconfig.get_build_info()
print(f"tensorflow {tf.__version__}, built with CUDA {info.get('cuda_version', '-')}, "
      f"cuDNN {info.get('cudnn_version', '-')}", file=sys.stderr)
print(f"tf.config.list_physical_devices('GPU'): {gpus}", file=sys.stderr)
print(len(gpus))
EOF
)"
if [[ $DRY_RUN -eq 0 && "$NGPU" -lt 1 ]]; then
  die "TensorFlow sees no GPU although nvidia-smi does. Install the CUDA libraries with
pip install -e '.[gpu,test]' (tensorflow[and-cuda]), check that the driver is recent enough for the
CUDA version printed above, and that CUDA_VISIBLE_DEVICES is not empty (${CUDA_VISIBLE_DEVICES-unset})."
fi
case "$GPU_NAME" in
  *A100*) GPU_CLASS=A100 ;;
  *H100*|*H200*|*GH200*) GPU_CLASS=H100 ;;
  *) GPU_CLASS="" ;;
esac
VCPUS="$(nproc)"
echo "GPUs seen by TensorFlow: $NGPU ($GPU_NAME); vCPUs: $VCPUS"

# -- 3. the 2-replica tests on the GPUs -----------------------------------------------------------
say "3. tests/test_distribute.py (2 replicas)"
PLUGIN_DIR="$WORK/pytest_plugin"
mkdir -p "$PLUGIN_DIR"
cat > "$PLUGIN_DIR/flam_gpu_replicas.py" <<'EOF'
"""pytest plugin written by benchmarks/gpu_check.sh: tests/test_distribute.py builds its
MirroredStrategy over ["/cpu:0", "/cpu:1"]; with FLAM_CHECK_REPLICAS=GPU the two replicas go to
the first two GPUs instead (two logical GPUs on one physical GPU if there is only one). TF32 is
turned off: the tests compare float32 updates at a 1e-4 relative tolerance."""
import os

import tensorflow as tf

KIND = os.environ.get("FLAM_CHECK_REPLICAS", "GPU")
LOG = os.environ.get("FLAM_CHECK_REPLICAS_LOG")

if KIND == "GPU":
    _gpus = tf.config.list_physical_devices("GPU")
    if len(_gpus) == 1:
        tf.config.set_logical_device_configuration(
            _gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=4096)] * 2)
    tf.config.experimental.enable_tensor_float_32_execution(False)

from flam_tf import distribute  # noqa: E402

_get_strategy = distribute.get_strategy


def _replica_devices(name, devices):
    if KIND == "GPU" and name == "mirrored" and devices is not None and \
            [str(d).lower() for d in devices] == ["/cpu:0", "/cpu:1"]:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if len(gpus) < 2:
            raise RuntimeError(f"need 2 (logical) GPUs for the replicas, found {gpus}")
        return gpus[:2]
    return devices


def get_strategy(name="default", devices=None):
    strategy = _get_strategy(name, _replica_devices(name, devices))
    if LOG and name == "mirrored":
        with open(LOG, "a") as f:
            f.write(f"{list(strategy.extended.worker_devices)}\n")
    return strategy


distribute.get_strategy = get_strategy
EOF
REPLICAS_LOG="$WORK/test_replicas.txt"
: > "$REPLICAS_LOG"
REPLICA_KIND=GPU
[[ $DRY_RUN -eq 1 ]] && REPLICA_KIND=CPU
TEST_RC=0
PYTHONPATH="$PLUGIN_DIR${PYTHONPATH:+:$PYTHONPATH}" FLAM_CHECK_REPLICAS="$REPLICA_KIND" \
  FLAM_CHECK_REPLICAS_LOG="$REPLICAS_LOG" \
  "$PY" -m pytest -q -p flam_gpu_replicas tests/test_distribute.py || TEST_RC=$?
echo "replica devices the tests used: $(sort -u "$REPLICAS_LOG" | tr '\n' ' ')"
if [[ $TEST_RC -ne 0 ]]; then
  echo "gpu_check: WARNING: tests/test_distribute.py failed on the $REPLICA_KIND replicas (exit $TEST_RC);"
  echo "           the timed runs below still run. Rerun on the CPU to compare:"
  echo "           CUDA_VISIBLE_DEVICES= python -m pytest -q tests/test_distribute.py"
fi

# -- 4. timed runs ---------------------------------------------------------------------------------
HELP="$("$PY" -m flam_tf.train --helpfull 2>&1 || true)"
has_flag() { grep -qE -- "--(\[no\])?$1[:= ]" <<<"$HELP"; }
for flag in preset run_dir stages strategy extractor_epochs extractor_steps_per_epoch; do
  has_flag "$flag" || die "python -m flam_tf.train has no --$flag flag any more; update this script"
done
if [[ $DRY_RUN -eq 1 ]]; then
  PRESET=smoke
  DEVICES="the CPU (dry run)"
  # Every run into one run directory takes the same flags (config.json must match).
  COMMON=(--preset=smoke --strategy=mirrored --extractor_epochs=2
          "--extractor_steps_per_epoch=$(( STEPS < 5 ? STEPS : 5 ))"
          --embedder_epochs=2 --manipulator_epochs=2 --manipulator_paper_epochs=2)
else
  PRESET=paper
  DEVICES="$NGPU GPU(s)"
  COMMON=(--preset=paper --strategy=mirrored "--data_num_instances=$INSTANCES"
          --extractor_epochs=2 "--extractor_steps_per_epoch=$STEPS"
          --embedder_epochs=4 --manipulator_epochs=4 --manipulator_paper_epochs=4)
fi
train() {  # train LOGFILE ARGS...: one python -m flam_tf.train, its output kept in LOGFILE
  local logfile="$1"; shift
  echo "\$ python -m flam_tf.train $*"
  local start=$SECONDS
  "$PY" -m flam_tf.train "$@" > "$logfile" 2>&1 || {
    tail -n 30 "$logfile"; die "python -m flam_tf.train failed (log: $logfile)"; }
  grep -E "^== " "$logfile" || true
  echo "   ($(( SECONDS - start )) s)"
}

say "4a. data: the $PRESET preset's synthetic images"
RUN_CACHE="$WORK/run_cache"
train "$WORK/data.log" "${COMMON[@]}" --stages=data --run_dir="$RUN_CACHE"

RUN_FILES=""
if has_flag data_decode_cache_mb; then
  RUN_FILES="$WORK/run_files"
  if [[ ! -d "$RUN_FILES/data" ]]; then  # the same images; data done, config.json written anew
    mkdir -p "$RUN_FILES"
    cp -r "$RUN_CACHE/data" "$RUN_FILES/data"
    "$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); \
json.dump({'data': s['data']}, open(sys.argv[2], 'w'))" "$RUN_CACHE/stages.json" "$RUN_FILES/stages.json"
  fi
fi

say "4b. extractor, MirroredStrategy over $DEVICES, images from the decode cache"
train "$WORK/extractor_cache.log" "${COMMON[@]}" --stages=extractor --run_dir="$RUN_CACHE" --force

if [[ -n "$RUN_FILES" ]]; then
  say "4c. extractor, images decoded from the files every step (--data_decode_cache_mb=0)"
  train "$WORK/extractor_files.log" "${COMMON[@]}" --stages=extractor --run_dir="$RUN_FILES" \
    --data_decode_cache_mb=0 --force
else
  echo "gpu_check: --data_decode_cache_mb is gone from flam_tf.train; the from-files run is skipped"
fi

if [[ $SMALL_STAGES -eq 1 ]]; then
  say "4d. features, embedders, manipulator (per-step time of the small models)"
  train "$WORK/small_stages.log" "${COMMON[@]}" --stages=features,embedders,manipulator \
    --run_dir="$RUN_CACHE" --force
fi

# -- 5. measured against predicted -------------------------------------------------------------------
say "5. measured images/s against benchmarks/flops.json"
PRED_GPU="${GPU_CLASS:-A100}"
PRED_GPUS=$(( NGPU > 0 ? NGPU : 1 ))
PRED_CACHE="{}"
PRED_FILES="{}"
if [[ -f benchmarks/flops.json ]]; then
  PRED_CACHE="$("$PY" benchmarks/flops.py --predict --gpu="$PRED_GPU" --gpus="$PRED_GPUS" \
    --vcpus="$VCPUS" --strategy=mirrored)"
  PRED_FILES="$("$PY" benchmarks/flops.py --predict --gpu="$PRED_GPU" --gpus="$PRED_GPUS" \
    --vcpus="$VCPUS" --strategy=mirrored --from_files)"
else
  echo "gpu_check: benchmarks/flops.json is missing; run python benchmarks/flops.py for predictions"
fi
WORK="$WORK" PRED_CACHE="$PRED_CACHE" PRED_FILES="$PRED_FILES" DRY_RUN="$DRY_RUN" NGPU="$NGPU" \
  GPU_NAME="$GPU_NAME" GPU_CLASS="$GPU_CLASS" VCPUS="$VCPUS" TEST_RC="$TEST_RC" \
  RUN_FILES="$RUN_FILES" SMALL_STAGES="$SMALL_STAGES" "$PY" - <<'EOF'
import json
import os
import re
import statistics

work = os.environ["WORK"]
STEP = re.compile(r"^\s*(\d+)/(\d+) - [\d.]+m?s - ([\d.]+)(us|ms|s)/step")
SCALE = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def fits(path):
    """Per fit in a train log: the per-step seconds Keras printed for each epoch."""
    out, current = [], None
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            if re.match(r"^Epoch 1/\d+", line.strip()):
                current = []
                out.append(current)
            m = STEP.match(line)
            if m and current is not None:
                current.append(float(m.group(3)) * SCALE[m.group(4)])
    return out


def steady(path):
    """Median per-step seconds over every epoch but each fit's first (which traces)."""
    steps = [s for fit in fits(path) for s in (fit[1:] if len(fit) > 1 else fit)]
    return statistics.median(steps) if steps else None


def images_per_step(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        c = json.load(f)["extractor"]
    return c["instances_per_batch"] * c["images_per_instance"] + (
        c["attribute_batch_size"] if c.get("attribute_weight", 0) else 0)


images = images_per_step(os.path.join(work, "run_cache"))
pred = {"cache": json.loads(os.environ["PRED_CACHE"] or "{}"),
        "files": json.loads(os.environ["PRED_FILES"] or "{}")}
rows = {}
for feed, log in (("cache", "extractor_cache.log"), ("files", "extractor_files.log")):
    step = steady(os.path.join(work, log))
    if step:
        rows[feed] = {"step_s": step, "images_per_step": images, "img_s": images / step}
small = {}
if os.environ["SMALL_STAGES"] == "1":
    text = open(os.path.join(work, "small_stages.log"), errors="replace").read()
    for stage in ("embedders", "manipulator"):
        part = text.split(f"== {stage}\n", 1)[-1].split("\n== ", 1)[0]
        tmp = os.path.join(work, f".{stage}.part")
        with open(tmp, "w") as f:
            f.write(part)
        small[stage] = steady(tmp)
        os.remove(tmp)
dry = os.environ["DRY_RUN"] == "1"
ngpu = int(os.environ["NGPU"])
print(f"GPU: {os.environ['GPU_NAME']} x {ngpu}, vCPUs {os.environ['VCPUS']}, strategy mirrored, "
      f"global batch {images} images/step ({images / max(ngpu, 1):.0f} per replica)")
if dry:
    print("CPU DRY RUN: the measured numbers are the smoke preset on the CPU; the predictions are "
          "the paper preset on an A100-class GPU, shown only to exercise the comparison.")
if not os.environ["GPU_CLASS"] and not dry:
    print("no calibration for this GPU: predictions are for an A100-class GPU")
print(f"{'extractor feed':24s} {'measured img/s':>15s} {'predicted: compute':>19s} "
      f"{'input':>8s} {'expected':>9s} {'meas/exp':>9s}")
for feed in ("cache", "files"):
    p = pred.get(feed) or {}
    m = rows.get(feed)
    ratio = f"{m['img_s'] / p['expected_img_s']:9.2f}" if m and p else f"{'-':>9s}"
    print(f"{feed:24s} {m['img_s'] if m else float('nan'):15.1f} "
          f"{p.get('compute_img_s', float('nan')):19.1f} {p.get('input_img_s', float('nan')):8.1f} "
          f"{p.get('expected_img_s', float('nan')):9.1f} {ratio}")
if small:
    assumed = (pred.get("cache") or {}).get("mirrored_small_step_s")
    for stage, s in small.items():
        print(f"{stage:24s} {s * 1e3 if s else float('nan'):10.1f} ms/step (assumed in flops.json: "
              f"{assumed * 1e3 if assumed else float('nan'):.0f} ms/step)")
summary = {"dry_run": dry, "gpu_name": os.environ["GPU_NAME"], "gpus": ngpu,
           "gpu_class": os.environ["GPU_CLASS"] or None, "vcpus": int(os.environ["VCPUS"]),
           "distribute_tests_exit_code": int(os.environ["TEST_RC"]),
           "extractor": rows, "predicted": pred, "small_step_s": small}
with open(os.path.join(work, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"wrote {os.path.join(work, 'summary.json')}")
EOF
echo "gpu_check: done; logs and run directories in $WORK ($(du -sh "$WORK" | cut -f1)), safe to delete"
if [[ $TEST_RC -ne 0 ]]; then
  echo "gpu_check: the 2-replica tests FAILED (see above)"
  exit 1
fi
