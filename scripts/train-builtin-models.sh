#!/usr/bin/env bash
# Retrain the built-in models from the shared data with the recorded commands.
#
#   scripts/train-builtin-models.sh [nuclei|nuclei-depth4|nuclei-v2|nuclei-sized|nuclei-wide|em-membranes ...]   (default: all)
#
# Environment: DATA (default ../shared/data), OUT (default runs), DEVICE (default auto),
# MINUTES (training budget per model, default 6), WORKERS (patch workers, default 4),
# TU (the command, default `tiled-unet`; e.g. "python -m tiled_unet.cli" from a source tree),
# PYTHON (the interpreter of the experiment scripts, default `python`).
# The shipped models were trained on one GPU with MINUTES=6; on a 2-core CPU the same step
# count takes many hours (see the model cards for steps and time). The nuclei models' post-
# processing is then tuned on 74 training images (configs/nuclei-tune-ids.txt) with
# `tiled-unet evaluate --optimize`.
# The shipped nuclei model had a second stage, `nuclei-finetune` (run it after `nuclei`): 100
# minutes of fine-tuning on a 2-core CPU (3,370 steps) with colour images linked 3 times, then
# the same tuning. A third stage, `nuclei-polish` (run it after `nuclei-finetune`), continued
# it on one GPU in two steps (8 + 3.4 minutes, 4,934 + 2,222 steps); the shipped file is
# $OUT/nuclei-polished-tuned.pt. POLISH_STEPS="4934 2222" repeats those step counts exactly.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
DEVICE=${DEVICE:-auto}
MINUTES=${MINUTES:-6}
WORKERS=${WORKERS:-4}
TU=${TU:-tiled-unet}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

common=(--minutes "$MINUTES" --schedule cosine --workers "$WORKERS" --device "$DEVICE" --seed 0 --half
        --no-progress --overwrite)

train_nuclei() {  # $1 = name, $2 = config, $3 = patch
    $TU train --images "$DATA/dsb2018/images" --labels "$DATA/dsb2018/labels" \
        --val-ids "$DATA/dsb2018/val.txt" --config "$here/configs/$2.json" --out "$OUT/$1.pt" \
        --patch "$3" --batch-size 8 --lr 1e-3 --val-every 1000 --name "$1" "${common[@]}"
}

tune_nuclei() {  # $1 = name: pick the post-processing on 74 training images (never val.txt)
    $TU evaluate --model "$OUT/$1.pt" --images "$DATA/dsb2018/images" --labels "$DATA/dsb2018/labels" \
        --ids "$here/configs/nuclei-tune-ids.txt" --device "$DEVICE" --optimize "$OUT/$1-tuned.pt" --overwrite
}

link_nuclei_data() {  # $1 = folder, $2... = id files left out: colour images linked 3 times
    local data="$1" id modality reps i suffix
    shift
    rm -rf "$data" && mkdir -p "$data/images" "$data/labels"
    while IFS=, read -r id _ _ _ modality; do
        [ "$id" = image_id ] && continue
        grep -qxF "$id" "$@" && continue
        reps=1; [[ "$modality" == color* ]] && reps=3
        for ((i = 0; i < reps; i++)); do
            suffix=""; [ "$i" -gt 0 ] && suffix="_rep$i"
            ln -s "$(realpath "$DATA"/dsb2018/images/"$id".*)" "$data/images/$id$suffix.png"
            ln -s "$(realpath "$DATA"/dsb2018/labels/"$id".*)" "$data/labels/$id$suffix.tif"
        done
    done < "$DATA/dsb2018/metadata.csv"
}

finetune_nuclei() {  # second stage on the CPU: colour images weighted up (3 links each)
    local data="$OUT/nuclei-finetune-data"
    link_nuclei_data "$data" "$DATA/dsb2018/val.txt"
    $TU train --images "$data/images" --labels "$data/labels" --init "$OUT/nuclei.pt" \
        --out "$OUT/nuclei-finetuned.pt" --minutes "${FT_MINUTES:-100}" --schedule cosine --lr 5e-4 \
        --patch 284 --batch-size 8 --workers 1 --seed 1 --half --name nuclei --device "$DEVICE" \
        --no-progress --overwrite
}

polish_nuclei() {  # third stage (one GPU): 284-px patches at lr 3e-4, then 380-px ones at 2e-4
    local data="$OUT/nuclei-finetune-data"  # made by nuclei-finetune: colour images linked 3 times
    local steps=(${POLISH_STEPS:-})
    local budget_a=(--minutes 8) budget_b=(--minutes 3.4)
    [ ${#steps[@]} -eq 2 ] && budget_a=(--steps "${steps[0]}") budget_b=(--steps "${steps[1]}")
    local same=(--images "$data/images" --labels "$data/labels" --schedule cosine --batch-size 8
                --workers "$WORKERS" --half --name nuclei --device "$DEVICE" --no-progress --overwrite)
    $TU train "${same[@]}" --init "$OUT/nuclei-finetuned-tuned.pt" --out "$OUT/nuclei-polish-a.pt" \
        "${budget_a[@]}" --lr 3e-4 --patch 284 --seed 3
    $TU train "${same[@]}" --init "$OUT/nuclei-polish-a.pt" --out "$OUT/nuclei-polished.pt" \
        "${budget_b[@]}" --lr 2e-4 --patch 380 --seed 8
}

select_nuclei() {  # $1 = folder: 40 training images held out to choose a checkpoint
    local sel="$1"
    rm -rf "$sel" && mkdir -p "$sel/images" "$sel/labels"
    while read -r id; do
        ln -s "$(realpath "$DATA"/dsb2018/images/"$id".*)" "$sel/images/$id.png"
        ln -s "$(realpath "$DATA"/dsb2018/labels/"$id".*)" "$sel/labels/$id.tif"
    done < "$here/configs/nuclei-select-ids.txt"
}

nuclei_v2() {  # the shipped nuclei one level deeper, trained on with scale and appearance changes
    local data="$OUT/nuclei-v2-data" sel="$OUT/nuclei-v2-select"
    link_nuclei_data "$data" "$DATA/dsb2018/val.txt" "$here/configs/nuclei-select-ids.txt"
    select_nuclei "$sel"
    $TU train --images "$data/images" --labels "$data/labels" --val-images "$sel/images" \
        --val-labels "$sel/labels" --init nuclei --deepen --out "$OUT/nuclei-v2.pt" \
        --minutes "${V2_MINUTES:-85}" --schedule cosine --lr 2e-4 --patch 380 --batch-size 8 \
        --zoom 0.6 1.6 --blur 1.5 --colour-jitter 0.2 --grey 0.2 --val-every 300 \
        --workers 1 --seed 21 --half --name nuclei --device "$DEVICE" --no-progress --overwrite
}

nuclei_sized() {  # the shipped nuclei trained on at its object size (20 px), where Segment predicts
    local data="$OUT/nuclei-sized-data" sel="$OUT/nuclei-sized-select"
    link_nuclei_data "$data" "$DATA/dsb2018/val.txt" "$here/configs/nuclei-select-ids.txt"
    select_nuclei "$sel"
    $TU train --images "$data/images" --labels "$data/labels" --val-images "$sel/images" \
        --val-labels "$sel/labels" --init nuclei --object-size 20 --out "$OUT/nuclei-sized.pt" \
        --minutes "${SIZED_MINUTES:-100}" --schedule cosine --lr 2e-4 --patch 284 --batch-size 8 \
        --zoom 0.67 1.5 --blur 1 --colour-jitter 0.2 --grey 0.1 --val-every 400 \
        --workers 1 --seed 31 --half --name nuclei --device "$DEVICE" --no-progress --overwrite
}

nuclei_wide() {  # nuclei-sized with 24 base features (Net2Net widening of the shipped weights)
    local data="$OUT/nuclei-wide-data" sel="$OUT/nuclei-wide-select"
    link_nuclei_data "$data" "$DATA/dsb2018/val.txt" "$here/configs/nuclei-select-ids.txt"
    select_nuclei "$sel"
    $TU train --images "$data/images" --labels "$data/labels" --val-images "$sel/images" \
        --val-labels "$sel/labels" --init nuclei --widen 24 --object-size 20 --out "$OUT/nuclei-wide.pt" \
        --minutes "${WIDE_MINUTES:-100}" --schedule cosine --lr 2e-4 --patch 284 --batch-size 8 \
        --zoom 0.67 1.5 --blur 1 --colour-jitter 0.2 --grey 0.1 --val-every 400 \
        --workers 1 --seed 41 --half --name nuclei --device "$DEVICE" --no-progress --overwrite
}

train_em() {
    printf '%s\n' 20 21 22 23 24 > "$OUT/isbi-val.txt"
    $TU train --images "$DATA/isbi2012/train/images" --labels "$DATA/isbi2012/train/labels" \
        --val-ids "$OUT/isbi-val.txt" --config "$here/configs/em-membranes.json" \
        --targets semantic --class-names membrane,cell --out "$OUT/em-membranes.pt" \
        --patch 572 --batch-size 4 --lr 5e-4 --val-every 250 --name em-membranes "${common[@]}"
    # instances: cells flooded over the membranes, the setting of least Rand error on training slices
    "${PYTHON:-python}" "$here/experiments/em_instances.py" --slices 10-19 --model "$OUT/em-membranes.pt" \
        --tune "$OUT/em-membranes-tuned.pt"
}

models=("$@")
[ ${#models[@]} -eq 0 ] && models=(nuclei nuclei-depth4 em-membranes)
pids=()
for m in "${models[@]}"; do
    case "$m" in
        nuclei) { train_nuclei nuclei nuclei 284 && tune_nuclei nuclei; } > "$OUT/nuclei.log" 2>&1 & pids+=($!) ;;
        nuclei-depth4) { train_nuclei nuclei-depth4 nuclei-depth4 380 && tune_nuclei nuclei-depth4; } \
            > "$OUT/nuclei-depth4.log" 2>&1 & pids+=($!) ;;
        nuclei-finetune) { finetune_nuclei && tune_nuclei nuclei-finetuned; } \
            > "$OUT/nuclei-finetune.log" 2>&1 & pids+=($!) ;;
        nuclei-polish) { polish_nuclei && tune_nuclei nuclei-polished; } \
            > "$OUT/nuclei-polish.log" 2>&1 & pids+=($!) ;;
        nuclei-v2) { nuclei_v2 && tune_nuclei nuclei-v2; } > "$OUT/nuclei-v2.log" 2>&1 & pids+=($!) ;;
        nuclei-sized) { nuclei_sized && tune_nuclei nuclei-sized; } > "$OUT/nuclei-sized.log" 2>&1 & pids+=($!) ;;
        nuclei-wide) { nuclei_wide && tune_nuclei nuclei-wide; } > "$OUT/nuclei-wide.log" 2>&1 & pids+=($!) ;;
        em-membranes) train_em > "$OUT/em-membranes.log" 2>&1 & pids+=($!) ;;
        *) echo "unknown model: $m" >&2; exit 2 ;;
    esac
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
