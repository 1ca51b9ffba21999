#!/usr/bin/env bash
# The paper's setting, every stage, on one machine with 8 GPUs (docs/gpu.md explains each choice
# and the memory each stage needs):
#
#   encoder    Qwen2-VL-2B-Instruct, VLM2Vec-style last-token pooling, LoRA on its language model
#   extractor  Qwen2.5-VL-3B-Instruct, LoRA (SFT on the teacher attributes, then RAR with GRPO)
#   stage 1    AGCL in the paper's form: BM25 hard-negative weights, the margin and attribute
#              false-negative filters, flagged pairs removed from the denominator
#   stage 2    RAR: Recall@k reward (k = 0.05% of the reward gallery, the paper's k=50 of ~100k),
#              KL to the SFT extractor, generation with TRL's vLLM integration (colocated)
#   CIT        one round on 30% of the train pairs
#
# Usage (needs GPUs, the Hub or local copies of the two backbones, and `pip install -e .[vllm]`):
#
#   DATA=my_catalog WORK=outputs/paper bash configs/paper/paper.sh
#
# DATA is a catalogue in the data contract (README.md, "The data format"). Every command below is
# an ordinary `afmrl` command: run them one by one to resume after a failure (add --resume to the
# training commands). tests/trainers/test_gpu_preset.py runs these same command lines on CPU with
# tiny random Qwen2-VL models and shrunk sizes.
set -euo pipefail

: "${DATA:?set DATA to a catalogue (save_to_disk folder, CSV/JSONL folder or Hub dataset id)}"
WORK=${WORK:-outputs/paper}
VLM=${VLM:-Qwen/Qwen2-VL-2B-Instruct}
EXTRACTOR=${EXTRACTOR:-Qwen/Qwen2.5-VL-3B-Instruct}
# Images are resized to at most this many pixels (448 x 448: 256 visual tokens per photo).
MAX_PIXELS=${MAX_PIXELS:-200704}
DDP=${DDP:-configs/accelerate/ddp_8gpu_bf16.yaml}
mkdir -p "$WORK"

# 0. One AFMRL checkpoint from the two backbones (the projection head is new; nothing is trained).
python - "$VLM" "$EXTRACTOR" "$MAX_PIXELS" "$WORK/base" <<'PY'
import sys

from transformers import AutoProcessor

from modeling_afmrl import AFMRLModel

vlm, extractor, max_pixels, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
pixels = {"size": {"shortest_edge": 28 * 28, "longest_edge": max_pixels}}  # in pixels
model = AFMRLModel.from_backbones(
    vlm=vlm,
    extractor=extractor,
    encoder_processor=AutoProcessor.from_pretrained(vlm, **pixels),
    extractor_processor=AutoProcessor.from_pretrained(extractor, **pixels),
)
model.save_pretrained(out)
print(f"[build] {out}: encoder {vlm}, extractor {extractor}, images <= {max_pixels} px")
PY

# 1. The extractor's SFT warm-up on the teacher attributes (LoRA, merged back when saved).
accelerate launch --config_file "$DDP" -m afmrl.cli train-extractor \
    --model "$WORK/base" --data "$DATA" --out "$WORK/sft" \
    --lora-r 16 --epochs 3 --lr 1e-4 --batch-size 8 --scheduler cosine --warmup-steps 0.03 \
    --save-steps 500

# 2. Attribute extraction for every split with the SFT extractor (greedy, batched, resumable).
afmrl extract --model "$WORK/sft" --data "$DATA" --out "$WORK/catalog" \
    --batch-size 32 --max-new-tokens 96

# 3. Stage 1, AGCL on the encoder (LoRA), the extracted attributes in the text and in the loss.
accelerate launch --config_file "$DDP" -m afmrl.cli train-encoder \
    --model "$WORK/sft" --data "$WORK/catalog" --out "$WORK/agcl" \
    --attributes attributes --loss agcl --weighting bm25 --false-negatives both \
    --false-negative-handling remove --delta 0.1 \
    --lora --lora-r 16 --batch-size 32 --lr 1e-4 --head-lr 1e-3 --max-steps 2000 --warmup 0.05 \
    --save-steps 500

# 4. Stage 2, RAR: GRPO on the extractor (LoRA), retrieval with the frozen AGCL encoder as reward.
accelerate launch --config_file "$DDP" -m afmrl.cli train-rar \
    --model "$WORK/agcl" --data "$WORK/catalog" --out "$WORK/rar" \
    --reward-mode recall --gallery-attributes-column pos_attributes \
    --lora on --lora-r 16 --group-size 8 --batch-size 64 \
    --completion-length 96 --lr 1e-5 --beta 0.04 --loss-type dapo --scale-rewards group \
    --max-steps 500 --save-steps 100 --use-vllm --vllm-mode colocate

# 5. CIT: re-extract 30% of the train pairs with the RAR extractor, continue AGCL, evaluate.
accelerate launch --config_file "$DDP" -m afmrl.cli cit \
    --model "$WORK/rar" --data "$WORK/catalog" --out "$WORK/cit" --fraction 0.3
