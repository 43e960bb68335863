#!/usr/bin/env bash
# Build the example chat datasets (no download):
#   data/example-chat-dataset  from examples/example_chat_data.json (a few ShareGPT conversations)
#   data/chat-synthetic         from a few thousand synthetic conversations (greetings, arithmetic with held-out
#                              number pairs, facts, multi-turn recall), the default of --config-name cfg_chat
# then train on it:  python pretrain.py --config-name cfg_chat
set -euo pipefail
cd "$(dirname "$0")/.."
python -m dataset.build_chat_dataset --input-file examples/example_chat_data.json \
    --output-dir data/example-chat-dataset --format sharegpt --tokenizer byte --max-length 512 --train-split 0.8
python examples/make_synthetic_chat.py --output-dir data/synthetic-chat-raw --num-conversations 4000 --seed 0
python -m dataset.build_chat_dataset --input-file data/synthetic-chat-raw/train.json \
    --output-dir data/chat-synthetic --format sharegpt --tokenizer byte --max-length 256 --train-split 0.95
