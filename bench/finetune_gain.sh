#!/usr/bin/env bash
# Does pre-training pay downstream? Pre-train a small model with the mlm target on the shared CLUE
# sample plus the (unlabelled) texts of the book_review training set, then fine-tune it on
# book_review and compare with the same classifier trained from random initialisation at the same
# budget. Usage: bash bench/finetune_gain.sh [pretrain_steps] [epochs]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}
EPOCHS=${2:-1}
S=../shared
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/small.json" <<JSON
{"emb_size": 256, "hidden_size": 256, "feedforward_size": 1024, "heads_num": 4, "layers_num": 4, "dropout": 0.1}
JSON
V=$S/models/google_zh_vocab.txt
{ cat $S/corpora/CLUECorpusSmall_sampled.txt; tail -n +2 $S/datasets/book_review/train.tsv | cut -f2; } > "$W/corpus.txt"
python3 preprocess.py --corpus_path "$W/corpus.txt" --vocab_path $V \
    --dataset_path "$W/mlm.pt" --target mlm --dynamic_masking --full_sentences --seq_length 128 --processes_num 2
python3 pretrain.py --dataset_path "$W/mlm.pt" --vocab_path $V --config_path "$W/small.json" --target mlm \
    --output_model_path "$W/pre.bin" --total_steps "$STEPS" --report_steps 100 --batch_size 32 \
    --learning_rate 5e-4 --warmup 0.05 --bf16 --save_checkpoint_steps 100000
D=$S/datasets/book_review
for init in pretrained random; do
    extra=()
    [ "$init" = pretrained ] && extra=(--pretrained_model_path "$W/pre.bin")
    echo "== fine-tuning from $init initialisation"
    python3 finetune/run_classifier.py "${extra[@]}" --vocab_path $V --config_path "$W/small.json" \
        --train_path $D/train.tsv --dev_path $D/dev.tsv --test_path $D/test.tsv --epochs_num "$EPOCHS" \
        --batch_size 32 --seq_length 128 --learning_rate 1e-4 --report_steps 1000 --bf16 \
        --output_model_path "$W/ft_$init.bin" | grep -E "accuracy"
done
