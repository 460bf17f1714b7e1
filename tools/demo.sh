#!/usr/bin/env bash
# The main job on built-in synthetic data (run by `make demo`):
#
#   1. synthetic BraTS-style data: 40 cases, 4 institutions, 64^3;
#   2. per-institution TFRecord shards + manifest (32 training, 8 validation);
#   3. federated training across the 4 institutions with the sparse vector
#      technique, per-institution privacy accounting, validation, checkpoints
#      and the best model exported as a SavedModel;
#   4. prediction of one validation case to NIfTI with the exported model;
#   5. where everything is.
#
# Every step is skipped when its outputs already exist (a finished training
# run is kept; an interrupted one is resumed), so a second `make demo` only
# prints the summary. Usage: tools/demo.sh [output_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo_output}
python=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
run="$out/runs/svt"

echo "== 1/4 synthetic BraTS-style data (40 cases, 4 institutions, 64^3)"
"$python" -m experiments.make_synthetic_brats \
  --output_dir="$out/synthetic_brats" \
  --num_cases=40 --num_institutions=4 --shape=64,64,64 --seed=0

echo "== 2/4 per-institution TFRecord shards + manifest"
"$python" -m experiments.prepare_data \
  --data_dir="$out/synthetic_brats" \
  --output_dir="$out/prepared" \
  --partition=brats18_institutions --validation_fraction=0.2 --seed=0

echo "== 3/4 federated training with the sparse vector technique"
# Training crops; validation and prediction slide windows of the same size
# (the group normalisation sees a window's statistics, so larger windows
# than the training crops score lower).
crop=48,48,48
train_flags=(
  --data_dir="$out/prepared"
  --root_output_dir="$out/runs"
  --experiment_name=svt
  --total_rounds=20
  --client_epochs_per_round=1
  --client_learning_rate=1e-3
  --crop_size=$crop
  --crops_per_case=2
  --privacy_mechanism=sparse_vector
  --shared_fraction=1.0
  --clip_bound=1e-3
  --selection_epsilon=1e8
  --release_epsilon=1e8
  --threshold=0
  --rounds_per_eval=10
  --seed=0
)
# The console keeps the progress bar and a line per validation; the
# binary's full summary (JSON and privacy ledger, also in the run folder as
# summary.json and privacy_ledger.txt) goes to $out/train_federated.out, and
# the demo prints the results at the end.
if [[ -f "$run/summary.json" ]]; then
  echo "(done before: $run/summary.json)"
elif [[ -f "$run/hparams.json" ]]; then
  "$python" -m experiments.train_federated "${train_flags[@]}" --resume \
    >"$out/train_federated.out"
else
  "$python" -m experiments.train_federated "${train_flags[@]}" \
    >"$out/train_federated.out"
fi

echo "== 4/4 segment one validation case with the exported model"
read -r case_id case_dir < <("$python" -c 'import json, os, sys
m = json.load(open(sys.argv[1]))
case_id = m["validation"]["case_ids"][0]
print(case_id, os.path.dirname(m["cases"][case_id]["source_files"]["t1"]))' \
  "$out/prepared/manifest.json")
if [[ ! -f "$out/predictions/$case_id.nii.gz" ]]; then
  "$python" -m experiments.predict --model="$run/exported_model" \
    --case_dir="$case_dir" --output_dir="$out/predictions"
fi

echo
"$python" - "$run" <<'EOF'
import json, sys
run = sys.argv[1]
summary = json.load(open(f'{run}/summary.json'))
final = summary['final_validation'] or {}
def mean(key):
  return final[key]['mean'] if key in final else float('nan')
print(f"Rounds: {summary['rounds_completed']}/{summary['total_rounds']}; "
      f"best round {summary['best_round']} "
      f"(validation mean Dice {summary['best_val_dice_mean']:.3f})")
print('Final validation (mean over cases): '
      + ', '.join(f'Dice {r} {mean("dice_" + r):.3f}' for r in ('TC', 'WT', 'ET'))
      + '; '
      + ', '.join(f'HD95 {r} {mean("hd95_" + r):.1f} mm' for r in ('TC', 'WT', 'ET')))
print(open(f'{run}/privacy_ledger.txt').read().split('\n\n')[0])
EOF
echo
echo "Synthetic NIfTI cases:  $out/synthetic_brats"
echo "Prepared client shards: $out/prepared/shards"
echo "Training run:           $run (metrics.csv, learning_curves.png, tensorboard/)"
echo "Privacy ledger:         $run/privacy_ledger.txt"
echo "Training summary:       $out/train_federated.out (summary.json, the ledger)"
echo "Exported model:         $run/exported_model"
echo "Prediction (NIfTI):     $out/predictions"
