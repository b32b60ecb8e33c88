#!/usr/bin/env bash
# The quality runs of the README's results table, side by side on one GPU, without Ray (the plain
# loop: a GPU box needs only torch, numpy, pandas, pyarrow and pillow).
#
#   bash benchmarks/gpu_quality.sh emotion   prepared/fer OUT_DIR   # 4 recipes at once
#   bash benchmarks/gpu_quality.sh keypoints prepared/kp  OUT_DIR   # 3 recipes at once
#
# prepared/fer: `emokp data prepare ../shared/data/fer2013/fer2013.csv.gz --out prepared/fer`
# prepared/kp:  `emokp data prepare ../shared/data/facial-keypoints/training.csv.gz --out prepared/kp`
# Each run's console log and metrics.jsonl land in OUT_DIR (quality JSON in OUT_DIR/res-*).
set -euo pipefail
task=$1 data=$2 out=$3
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "$task" = emotion ]; then
  runs="default:default wide:wide course48:course48 course:course"
else
  runs="default:default wide:wide course:course"
fi
for spec in $runs; do
  recipe=${spec%%:*} label=${spec#*:}
  python3 benchmarks/quality.py "$task" --data "$data" --recipe "$recipe" --out "$out/run-$label" \
    --results "$out/res-$label" > "$out/${task:0:2}-$label.log" 2>&1 &
done
wait
for spec in $runs; do
  label=${spec#*:}
  cp "$out/run-$label/metrics.jsonl" "$out/${task:0:2}-$label-metrics.jsonl"
  tail -n 1 "$out/${task:0:2}-$label.log"
done
