#!/usr/bin/env bash
# The main job on built-in synthetic data (run by `make demo`).
#
# Until the federated trainer exists this generates the synthetic BraTS-style
# data set and prepares it as per-institution TFRecord shards; both steps are
# no-ops when their outputs already exist with the same parameters.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo_output}
python=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

echo "== 1/2 synthetic BraTS-style data (40 cases, 4 institutions, 64^3)"
"$python" -m experiments.make_synthetic_brats \
  --output_dir="$out/synthetic_brats" \
  --num_cases=40 --num_institutions=4 --shape=64,64,64 --seed=0

echo "== 2/2 per-institution TFRecord shards + manifest"
"$python" -m experiments.prepare_data \
  --data_dir="$out/synthetic_brats" \
  --output_dir="$out/prepared" \
  --partition=brats18_institutions --validation_fraction=0.2 --seed=0

echo
echo "Synthetic NIfTI cases:  $out/synthetic_brats"
echo "Prepared client shards: $out/prepared/shards"
echo "Manifest:               $out/prepared/manifest.json"
