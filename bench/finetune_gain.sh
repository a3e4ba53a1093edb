#!/usr/bin/env bash
# Does pre-training pay downstream? Pre-train a small model with the mlm target on the shared CLUE
# sample plus the (unlabelled) texts of the book_review training set, then fine-tune it on
# book_review -- on the first N labelled examples, for each N in SIZES -- and compare with the same
# classifier trained from random initialisation with the same steps and settings.
# Usage: bash bench/finetune_gain.sh [pretrain_steps] [epochs] ["sizes"]
#   e.g. bash bench/finetune_gain.sh 1000 3 "500 2000 20000"  (the full training set takes about an hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1000}
EPOCHS=${2:-3}
SIZES=${3:-"500 2000"}
S=../shared
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/small.json" <<JSON
{"emb_size": 256, "hidden_size": 256, "feedforward_size": 1024, "heads_num": 4, "layers_num": 4, "dropout": 0.1}
JSON
V=$S/models/google_zh_vocab.txt
D=$S/datasets/book_review
{ cat $S/corpora/CLUECorpusSmall_sampled.txt; tail -n +2 $D/train.tsv | cut -f2; } > "$W/corpus.txt"
python3 preprocess.py --corpus_path "$W/corpus.txt" --vocab_path $V \
    --dataset_path "$W/mlm.pt" --target mlm --dynamic_masking --full_sentences --seq_length 128 --processes_num 2
python3 pretrain.py --dataset_path "$W/mlm.pt" --vocab_path $V --config_path "$W/small.json" --target mlm \
    --output_model_path "$W/pre.bin" --total_steps "$STEPS" --report_steps 100 --batch_size 32 \
    --learning_rate 1e-3 --warmup 0.05 --bf16 --save_checkpoint_steps 100000
declare -A RESULT
for n in $SIZES; do
    head -n $((n + 1)) $D/train.tsv > "$W/train_$n.tsv"
    for init in pretrained random; do
        extra=()
        [ "$init" = pretrained ] && extra=(--pretrained_model_path "$W/pre.bin")
        echo "== $n training examples, $init initialisation"
        python3 finetune/run_classifier.py "${extra[@]}" --vocab_path $V --config_path "$W/small.json" \
            --train_path "$W/train_$n.tsv" --dev_path $D/dev.tsv --test_path $D/test.tsv \
            --epochs_num "$EPOCHS" --batch_size 32 --seq_length 128 --learning_rate 1e-4 \
            --report_steps 100000 --bf16 --output_model_path "$W/ft.bin" | tee "$W/log" | grep -E "accuracy"
        RESULT[$n,$init]="$(grep -oE "best [0-9.]+" "$W/log" | grep -oE "[0-9.]+$") / $(grep -oE "Test accuracy [0-9.]+" "$W/log" | grep -oE "[0-9.]+$")"
    done
done
echo
echo "| training examples | pre-trained: best dev / test | random init: best dev / test |"
echo "|---|---|---|"
for n in $SIZES; do echo "| $n | ${RESULT[$n,pretrained]} | ${RESULT[$n,random]} |"; done
