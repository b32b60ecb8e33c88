#!/usr/bin/env bash
# The recipe comparison of benchmarks/README.md ("Quality"), side by side on one GPU, without Ray (the
# plain loop: a GPU box needs only torch, numpy, pandas, pyarrow and pillow). Each variant is one of
# emokp train's recipes plus --set changes, the same command the README's row names.
#
#   bash benchmarks/gpu_quality.sh emotion   prepared/fer OUT_DIR   # 4 variants at once
#   bash benchmarks/gpu_quality.sh keypoints prepared/kp  OUT_DIR   # 3 variants at once
#
# prepared/fer: `emokp data prepare ../shared/data/fer2013/fer2013.csv.gz --out prepared/fer`
# prepared/kp:  `emokp data prepare ../shared/data/facial-keypoints/training.csv.gz --out prepared/kp`
# Each run's console log and metrics.jsonl land in OUT_DIR (its result JSON: OUT_DIR/LABEL.json).
set -euo pipefail
task=$1 data=$2 out=$3
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
ours="--set optimizer=adamw --set schedule=onecycle"
if [ "$task" = emotion ]; then
  fer48="$ours --set input_size=48 --set lr=2e-3 --set weight_decay=5e-4 --set batch_size=128 --set label_smoothing=0.1"
  variants=(
    "default|$fer48 --set model=wide --set epochs=40 --set imbalance=sampling"
    "wide|$fer48 --set model=wide --set epochs=40 --set imbalance=weights"
    "course48|$fer48 --set epochs=50 --set imbalance=weights"
    "course|"
  )
else
  kp="$ours --set lr=1e-3 --set weight_decay=1e-4 --set batch_size=64 --set augment=true"
  variants=(
    "default|$kp"
    "wide|$kp --set model=wide --set epochs=45"
    "course|"
  )
fi
for variant in "${variants[@]}"; do
  label=${variant%%|*} changes=${variant#*|}
  # shellcheck disable=SC2086  # the changes are separate words
  python3 benchmarks/quality.py "$task" --data "$data" --recipe course $changes --run-dir "$out/run-$label" \
    --out "$out/$label.json" > "$out/${task:0:2}-$label.log" 2>&1 &
done
wait
for variant in "${variants[@]}"; do
  label=${variant%%|*}
  cp "$out/run-$label/metrics.jsonl" "$out/${task:0:2}-$label-metrics.jsonl"
  tail -n 1 "$out/${task:0:2}-$label.log"
done
