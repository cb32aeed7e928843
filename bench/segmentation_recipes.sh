#!/usr/bin/env bash
# Measured segmentation recipes: UNet from scratch on PennFudan (person masks) and Oxford-IIIT Pet
# (trimaps). Prints each run's wall time (start-up included) and test metrics.
#   DATA_DIR=<folder with PennFudanPed/ and oxford-iiit-pet/> bash bench/segmentation_recipes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for experiment in pennfudan_unet pet_unet; do
    start=$(date +%s)
    python train.py experiment="$experiment" extras.print_config=false callbacks.progress_bar=null "$@" > /dev/null 2>&1
    end=$(date +%s)
    run=$(ls -d outputs/"$experiment"/runs/* | tail -n 1)
    python - "$run" "$experiment" "$((end - start))" <<'PY'
import json, sys
run, experiment, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = json.loads(open(f"{run}/metrics.json").read())
print(f"{experiment}: wall {seconds // 60} min {seconds % 60} s, test/miou {m['test/miou']:.4f}, "
      f"test/pixel_acc {m['test/pixel_acc']:.4f}, test/dice {m['test/dice']:.4f}  ({run})")
PY
done
