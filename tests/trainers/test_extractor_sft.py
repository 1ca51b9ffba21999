"""Extractor SFT: the frozen-feature cache, loss goes down, save / reload, LoRA on a Qwen2-VL, errors.

Everything is built offline (``tiny_models``): a tiny LLaVA-timm extractor (pinned EfficientNet-Lite0
weights at 64 px + a 2-layer Qwen2 decoder) inside a tiny AFMRL dual model, and a 30-product
synthetic catalogue at 64 px.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import (
    REPO,
    pinned_state_dict,
    saved_untrained_llava_checkpoint,
    sft_config,
    tiny_catalog,
    tiny_llava_model,
)


def _train_split():
    from datasets import load_from_disk

    return load_from_disk(tiny_catalog())["train"]


def _pixel_loss(model, split, config, n: int = 24) -> float:
    from trainers.extractor_sft.data import training_pairs
    from trainers.extractor_sft.trainer import sft_loss

    images, titles, targets, _ = training_pairs(split, config)
    return sft_loss(
        model.extractor, model.processor.extractor_processor, images[:n], titles[:n], targets[:n],
        config,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def test_collator_supervises_only_the_answer(tmp_path):
    from trainers.extractor_sft.data import PixelCollator, training_pairs

    model = tiny_llava_model()
    proc = model.processor.extractor_processor
    config = sft_config(tmp_path)
    images, titles, targets, _ = training_pairs(_train_split(), config)
    batch = PixelCollator(proc, config)(
        [{"image": im, "title": t, "target": y} for im, t, y in zip(images[:3], titles[:3], targets[:3], strict=True)]
    )  # fmt: skip
    n_answer = (batch["labels"][0] != -100).sum().item()
    answer = proc.tokenizer(targets[0], add_special_tokens=False)["input_ids"]
    assert n_answer == len(answer) + 1  # the answer and its end token
    assert targets[0] == targets[0].strip() and "; " in targets[0]


def test_feature_cache_serves_the_towers_own_output(tmp_path):
    """The cached stage maps equal the tower's; the second pass and a new process-level cache read
    them back; changed tower weights get another file (stale features are never reused)."""
    from trainers.extractor_sft.data import PixelCollator, training_pairs
    from trainers.feature_cache import FrozenFeatureCache, last_stage_map, stage_map_output

    model = tiny_llava_model()
    extractor, proc = model.extractor, model.processor.extractor_processor
    config = sft_config(tmp_path)
    images, titles, targets, _ = training_pairs(_train_split(), config)
    rows = [{"image": im, "title": t, "target": y} for im, t, y in zip(images[:4], titles[:4], targets[:4], strict=True)]  # fmt: skip
    batch = PixelCollator(proc, config)(rows)
    with torch.no_grad():
        ref = extractor(**batch).logits

    def cache():
        return FrozenFeatureCache(
            extractor.model.vision_tower, keep=last_stage_map, rebuild=stage_map_output,
            directory=tmp_path / "cache", tag="stage-2",
        )  # fmt: skip

    first = cache()
    with first.attach(), torch.no_grad():
        got = extractor(**batch).logits
        again = extractor(**batch).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(got, again)
    assert (first.misses, first.hits) == (4, 4)
    assert "forward" not in extractor.model.vision_tower.__dict__  # detached on exit
    second = cache()  # a later run: read from disk
    with second.attach(), torch.no_grad():
        torch.testing.assert_close(extractor(**batch).logits, ref, atol=1e-5, rtol=1e-5)
    assert (second.misses, second.hits) == (0, 4)
    with torch.no_grad():
        for p in extractor.model.vision_tower.parameters():
            p.mul_(0.5)
    assert cache().path != first.path and len(cache().store) == 0


@pytest.mark.slow
def test_sft_lowers_the_pixel_path_loss(tmp_path):
    """30 steps (frozen tower served from the cache) lower the answer loss through the pixel path."""
    from trainers.extractor_sft.trainer import train_extractor

    model = tiny_llava_model()
    split = _train_split()
    config = sft_config(tmp_path)
    before = _pixel_loss(model, split, config)
    result = train_extractor(
        model.extractor, model.processor.extractor_processor, split, config, progress=None
    )
    after = _pixel_loss(model, split, config)
    assert result.global_step == 30
    assert result.losses[-1][1] < result.losses[0][1]
    assert after < 0.6 * before, (before, after)
    assert result.cache_hits > 0  # later epochs read the frozen tower's features from the cache
    # The frozen tower did not move.
    ref = pinned_state_dict()
    tower = model.extractor.model.vision_tower.timm_model.state_dict()
    assert torch.equal(tower["conv_stem.weight"], ref["conv_stem.weight"])


@pytest.mark.slow
def test_cli_trains_saves_and_reloads_in_a_fresh_process(tmp_path):
    """`afmrl train-extractor` writes a checkpoint whose extractor (reloaded) has a lower loss."""
    from modeling_afmrl import AFMRLModel

    out = tmp_path / "sft_model"
    cmd = [
        sys.executable, "-m", "afmrl.cli", "train-extractor",
        "--model", saved_untrained_llava_checkpoint(), "--data", tiny_catalog(), "--out", str(out),
        "--max-steps", "20", "--lr", "3e-3", "--batch-size", "16", "--threads", "1",
        "--save-steps", "10",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "extractor_sft.json").read_text())
    assert summary["steps"] == 20 and summary["last_loss"] < summary["first_loss"]
    # Trainer checkpoints are removed after a finished run; the checkpoint is complete.
    assert not Path(f"{out}.checkpoints").exists()
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin"))

    trained = AFMRLModel.from_pretrained(out).eval()
    untrained = AFMRLModel.from_pretrained(saved_untrained_llava_checkpoint()).eval()
    config = sft_config(tmp_path)
    split = _train_split()
    assert _pixel_loss(trained, split, config) < 0.7 * _pixel_loss(untrained, split, config)
    # The encoder is untouched by extractor SFT.
    a, b = trained.state_dict(), untrained.state_dict()
    enc = [k for k in a if not k.startswith("extractor.")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    from trainers.extractor_sft.trainer import train_extractor

    split = _train_split()
    model = tiny_llava_model()
    config = sft_config(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    train_extractor(model.extractor, model.processor.extractor_processor, split, config, None)
    state = json.loads((tmp_path / "sft" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    longer = sft_config(tmp_path, max_steps=9, save_strategy="steps", save_steps=3)
    fresh = tiny_llava_model()
    result = train_extractor(
        fresh.extractor, fresh.processor.extractor_processor, split, longer, None,
        resume_from_checkpoint=True,
    )  # fmt: skip
    # Only the 3 missing steps ran (the logged steps start after 6).
    assert result.global_step == 9
    assert all(step > 6 for step, _ in result.losses)


def test_lora_sft_on_a_qwen2_vl_pixel_path(tmp_path):
    """A Hub-style VLM (tiny Qwen2-VL) trains through its processor with LoRA, merged afterwards."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from tiny_models import sample_images, tiny_extractor

    from trainers.extractor_sft.trainer import sft_loss, train_extractor

    model, processor = tiny_extractor()
    images = [im for im in sample_images() if hasattr(im, "convert")][:4] * 4
    titles = ["navy mug 350ml", "red striped t-shirt", "grey backpack", "pack of 2 bottles"] * 4
    targets = [
        "category: mug; colour: navy; size: 350ml",
        "category: t-shirt; colour: red; pattern: striped",
        "category: backpack; colour: grey",
        "category: bottle; count: 2",
    ] * 4
    split = Dataset.from_dict(
        {"image": [im.convert("RGB") for im in images], "title": titles,
         "teacher_attributes": targets},
        features=Features(
            {"image": ImageFeature(), "title": Value("string"), "teacher_attributes": Value("string")}
        ),
    )  # fmt: skip
    config = sft_config(tmp_path, max_steps=25, learning_rate=2e-2, per_device_train_batch_size=8,
                        lora_r=8, lora_alpha=64)  # fmt: skip
    before = sft_loss(model, processor, images[:4], titles[:4], targets[:4], config)
    q_name = next(
        n for n, _ in model.named_parameters() if "language_model" in n and "q_proj.weight" in n
    )
    q_before = dict(model.named_parameters())[q_name].detach().clone()
    result = train_extractor(model, processor, split, config, progress=None)
    after = sft_loss(model, processor, images[:4], titles[:4], targets[:4], config)
    assert result.global_step == 25
    # A random tiny decoder adapted through rank-8 LoRA only learns slowly, but it must learn.
    assert after < before - 0.15, (before, after)
    # LoRA was merged back: plain parameter names, changed base weights.
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert not torch.equal(dict(model.named_parameters())[q_name], q_before)


def test_missing_target_column_is_named(tmp_path):
    from trainers.extractor_sft.trainer import train_extractor

    model = tiny_llava_model()
    split = _train_split().remove_columns("teacher_attributes")
    with pytest.raises(ValueError, match="teacher_attributes"):
        train_extractor(
            model.extractor, model.processor.extractor_processor, split, sft_config(tmp_path), None
        )


def test_attribute_tokens_make_values_single_tokens_shared_with_titles():
    import afmrl.defaults.embedded as dm
    from modeling_afmrl.attributes import extractor_messages

    corpus = [
        "category: phone case; colour: red; count: 1",
        "category: mug; colour: teal; size: 350ml",
        "category: phone case; colour: teal; count: 2",
    ] * 3
    plain = dm.build_extractor_tokenizer(corpus, vocab_size=400)
    tok = dm.build_extractor_tokenizer(corpus, vocab_size=400, attribute_tokens=True)
    answer = "category: phone case; colour: teal; count: 1"
    pieces = tok.convert_ids_to_tokens(tok(answer)["input_ids"])
    assert pieces == ["category: ", "phone case", "; colour: ", "teal", "; count: ", "1"]
    assert tok.decode(tok(answer)["input_ids"]) == answer
    assert len(plain(answer)["input_ids"]) > len(pieces)
    # A title word is the answer's token (case-insensitively); no match inside longer words.
    title = tok(
        tok.apply_chat_template(extractor_messages("Phone Case, TEAL, 1000ml"), tokenize=False)
    )
    title_pieces = tok.convert_ids_to_tokens(title["input_ids"])
    assert "phone case" in title_pieces and "teal" in title_pieces
    assert "1" not in title_pieces
    # The fixed instruction is one token.
    assert sum(p.startswith("List the key attributes") for p in title_pieces) == 1
