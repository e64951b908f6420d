#!/usr/bin/env bash
# F1 @ IoU 0.5 of nuclei models on a list of DSB2018 images as they are, downscaled 0.5x and
# upscaled 2.5x (labels resampled with them), automatic object size, as `tiled-unet evaluate`
# reports it (pooled counts over images; colour and fluorescence groups from metadata.csv).
#
#   scripts/experiments/compare_nuclei.sh IDS_FILE MODEL [MODEL ...]
#
# Environment: DATA (default ../shared/data), TU (default tiled-unet), ZOOMS (default "0.5 1 2.5").
set -euo pipefail
DATA=${DATA:-../shared/data}
TU=${TU:-tiled-unet}
ids=$1
shift
for model in "$@"; do
    for zoom in ${ZOOMS:-0.5 1 2.5}; do
        start=$(date +%s)
        line=$($TU evaluate --model "$model" --images "$DATA/dsb2018/images" --labels "$DATA/dsb2018/labels" \
            --ids "$ids" --groups-csv "$DATA/dsb2018/metadata.csv" --zoom "$zoom" --json)
        python3 -c 'import json, sys
r = json.loads(sys.argv[1]); m, z, t = sys.argv[2:5]
cells = "  ".join("%s %.3f" % (k[:5], v["f1_0.5"]) for k, v in r.items())
print(f"{m}  zoom {z}: {cells}  ({t} s)")' "$line" "$model" "$zoom" "$(($(date +%s) - start))"
    done
done
