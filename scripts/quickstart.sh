#!/usr/bin/env bash
# Install uer and run a small BERT pre-training end to end on a corpus generated here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install
mkdir -p demo
# bf16 autocast only where the CPU runs bf16 natively: emulated, it is many times slower than fp32
precision=$(python3 -c "from uer.train.precision import cpu_has_native_bf16; print('--bf16' if cpu_has_native_bf16() else '')")
python3 scripts/make_demo_corpus.py --output_path demo/corpus.txt --documents 3000
python3 scripts/build_vocab.py --corpus_path demo/corpus.txt --vocab_path demo/vocab.txt --tokenizer space
python3 preprocess.py --corpus_path demo/corpus.txt --vocab_path demo/vocab.txt --tokenizer space \
    --dataset_path demo/dataset.pt --processes_num 2 --target bert --seq_length 64 --dup_factor 2
python3 pretrain.py --dataset_path demo/dataset.pt --vocab_path demo/vocab.txt \
    --config_path models/bert_tiny_config.json --output_model_path demo/model.bin \
    --embedding word_pos_seg --encoder transformer --mask fully_visible --target bert \
    --total_steps 150 --report_steps 15 --save_checkpoint_steps 150 --batch_size 16 \
    --learning_rate 5e-4 --warmup 0.1 --overwrite $precision  # a demo: each run starts afresh
