"""RAR with TRL's GRPOTrainer: the policy learns, the reward gets the photo and the listing id, the
reference model is a frozen copy of the SFT extractor, kill-and-resume, LoRA, the CLI and CIT.

The policy is the tiny LLaVA-timm extractor after 200 SFT steps (``trained_llava_checkpoint``: it
writes a mix of well-formed and malformed attribute strings, so GRPO groups have reward spread), on
the 30-product synthetic catalogue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import (
    REPO,
    TESTS,
    saved_untrained_llava_checkpoint,
    tiny_catalog,
    tiny_dual_model,
    trained_llava_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rar_config(out, **kwargs):
    from trainers.rar.config import RARConfig

    defaults = dict(
        output_dir=str(out), max_steps=2, num_generations=4, per_device_train_batch_size=8,
        max_completion_length=24, learning_rate=1e-4, use_cpu=True, bf16=False,
        save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    return RARConfig(**{**defaults, **kwargs})


def _train():
    from datasets import load_from_disk

    return load_from_disk(tiny_catalog())["train"]


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_two_grpo_steps_change_the_policy_and_feed_the_reward_the_photo_and_id(tmp_path):
    from afmrl.models import load_model
    from trainers.rar.reward import RetrievalReward, build_pair_reward
    from trainers.rar.trainer import train_rar, vision_tower

    seen: list[dict] = []

    class SeeingReward(RetrievalReward):
        """The real reward, keeping what TRL passed to it."""

        def __call__(self, prompts=None, completions=(), **columns):
            seen.append({"prompts": prompts, **columns})
            return super().__call__(prompts, completions, **columns)

    model = load_model(trained_llava_checkpoint())
    train = _train()
    reward, _ = build_pair_reward(model, train, max_new_tokens=24, show_progress=False)
    reward.__class__ = SeeingReward
    extractor_before = _state(model.extractor)
    encoder_before = {k: v for k, v in _state(model).items() if not k.startswith("extractor.")}
    config = rar_config(tmp_path / "out")
    result = train_rar(model, train, config, reward=reward, progress=None)

    assert result.global_step == 2 and len(result.history) == 2
    assert not result.lora
    after = _state(model.extractor)
    vision = {f"model.vision_tower.{k}" for k in vision_tower(model.extractor).state_dict()}
    changed = [k for k in after if not torch.equal(after[k], extractor_before[k])]
    assert changed, "GRPO did not change the policy"
    assert not [k for k in changed if k in vision], "the frozen vision tower moved"
    for k, v in encoder_before.items():
        assert torch.equal(model.state_dict()[k], v), f"encoder weight {k} changed"

    # TRL called the reward once per step with the dataset's columns: the listing's photo (as a
    # PIL image, repeated for the group) and its id, and the extractor's prompt.
    assert len(seen) == 2
    by_id = {row["listing_id"]: row for row in train}
    for call in seen:
        ids, images, titles = call["listing_id"], call["image"], call["title"]
        assert len(ids) == 8 and set(ids) <= set(by_id)
        assert ids[:4] == [ids[0]] * 4  # a group: one listing, num_generations completions
        for lid, image, title in zip(ids, images, titles, strict=True):
            want = by_id[lid]["image"].convert("RGB")
            assert image.size == want.size
            assert np.array_equal(np.asarray(image), np.asarray(want))
            assert title == by_id[lid]["title"]
        prompt = call["prompts"][0]
        assert prompt[0]["role"] == "user" and prompt[0]["content"][0]["type"] == "image"
        assert by_id[ids[0]]["title"].split()[0] in prompt[0]["content"][1]["text"]
    for entry in result.history:
        assert {"reward", "rar/valid_format", "rar/attribute_count", "kl"} <= set(entry)
    assert result.history[-1]["kl"] > 0  # the reference is the SFT policy, the policy moved


@pytest.mark.slow
def test_reference_model_is_a_frozen_copy_sharing_the_vision_tower(tmp_path):
    from afmrl.models import load_model
    from trainers.rar.reward import build_pair_reward
    from trainers.rar.trainer import RARTrainer, rar_dataset, vision_tower

    model = load_model(trained_llava_checkpoint())
    train = _train()
    reward, info = build_pair_reward(model, train, max_new_tokens=8, show_progress=False)
    extractor = model.extractor
    vision = vision_tower(extractor)
    for p in vision.parameters():
        p.requires_grad_(False)
    trainer = RARTrainer(
        model=extractor, reward_funcs=[reward], args=rar_config(tmp_path),
        train_dataset=rar_dataset(train, info.query_rows[:8], model.processor),
        processing_class=model.processor.extractor_processor, shared_modules=(vision,),
    )  # fmt: skip
    ref = trainer.ref_model
    assert ref is not None and ref is not extractor and trainer.beta == 0.04
    assert trainer.args.beta == 0.04
    assert vision_tower(ref) is vision
    assert not any(p.requires_grad for p in ref.parameters())
    for (name, a), b in zip(extractor.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name
        if not name.startswith("model.vision_tower"):
            assert a.data_ptr() != b.data_ptr(), name


@pytest.mark.slow
def test_lora_policy_trains_and_is_merged_back(tmp_path):
    """A Qwen2-VL extractor (the GPU preset's architecture, tiny) with LoRA: TRL's adapters-off
    reference, and the adapters merged into the extractor afterwards."""
    from trainers.rar.reward import build_pair_reward
    from trainers.rar.trainer import train_rar

    model = tiny_dual_model(extractor=True)
    train = _train()
    reward, _ = build_pair_reward(model, train, max_new_tokens=8, show_progress=False)
    config = rar_config(tmp_path, max_steps=1, lora="on", lora_r=4, max_completion_length=8)
    result = train_rar(model, train, config, reward=reward, progress=None)
    assert result.lora and result.global_step == 1
    names = [n for n, _ in model.extractor.named_modules()]
    assert not [n for n in names if "lora" in n.lower()]
    model.save_pretrained(tmp_path / "saved")


# ------------------------------------------------------------------------------- resume

RESUME_SCRIPT = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import torch
torch.set_num_threads(1)
from pathlib import Path
from transformers import TrainerCallback
from datasets import load_from_disk
from afmrl.models import load_model
from trainers.rar.config import RARConfig
from trainers.rar.trainer import train_rar

mode, out = sys.argv[1], Path(sys.argv[2])

class KillAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if mode == "kill" and state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

model = load_model({model!r})
train = load_from_disk({catalog!r})["train"]
config = RARConfig(
    output_dir=str(out), max_steps=4, num_generations=4, per_device_train_batch_size=8,
    max_completion_length=24, learning_rate=1e-4, use_cpu=True, bf16=False,
    save_strategy="steps", save_steps=2, disable_tqdm=True, seed=0,
)
result = train_rar(model, train, config, cache_dir=str(out / "reward"), progress=print,
                   resume_from_checkpoint=True if mode == "resume" else None,
                   callbacks=[KillAfterCheckpoint()])
print("STEPS", [h["step"] for h in result.history])
model.save_pretrained(out / "final")
"""


@pytest.mark.slow
def test_killed_and_resumed_run_continues_from_its_checkpoint(tmp_path):
    """SIGKILL right after the step-2 checkpoint; a fresh process resumes at step 3 and ends at
    step 4, with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT.format(
        tests=str(TESTS), repo=str(REPO), model=trained_llava_checkpoint(), catalog=tiny_catalog(),
    )))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(mode, out):
        return subprocess.run(
            [sys.executable, str(script), mode, str(out)], env=env, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip

    full = run("full", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run("kill", tmp_path / "resumed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "final").exists()
    resumed = run("resume", tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "STEPS [3, 4]" in resumed.stdout

    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    start = load_file(Path(trained_llava_checkpoint()) / "model.safetensors")
    moved = [k for k in a if k.startswith("extractor.") and not torch.equal(a[k], start[k])]
    assert moved
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


# ---------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_trains_and_saves_the_whole_checkpoint(tmp_path, capsys):
    from safetensors.torch import load_file

    from afmrl.cli import main
    from afmrl.models import load_model

    out = tmp_path / "rar"
    model, data = trained_llava_checkpoint(), tiny_catalog()
    capsys.readouterr()  # what building the fixtures printed
    code = main([
        "train-rar", "--model", model, "--data", data,
        "--out", str(out), "--max-steps", "2", "--group-size", "4", "--batch-size", "8",
        "--completion-length", "24", "--lr", "1e-4", "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "[rar] step 2/2 reward" in printed and "{'loss'" not in printed  # one line per step
    summary = json.loads((out / "rar_training.json").read_text())
    assert summary["steps"] == 2 and len(summary["history"]) == 2
    assert summary["recall_k"] == 1 and summary["lora"] is False
    assert (out / "rar_reward.png").stat().st_size > 1000
    assert "stage 2 RAR (GRPO, 2 steps, reward reciprocal_rank)" in (out / "README.md").read_text()
    assert not Path(f"{out}.checkpoints").exists()
    before = load_file(Path(trained_llava_checkpoint()) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        if not k.startswith("extractor."):
            assert torch.equal(before[k], after[k]), f"the encoder changed: {k}"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("extractor."))
    load_model(out, need_extractor=True)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--group-size", "3", "--batch-size", "8"], "divisible by num_generations"),
        (["--resume"], "no checkpoint-* folder"),
        (["--beta", "-1"], "beta must be >= 0"),
        (["--lr", "0"], "--lr"),
        (["--reward-mode", "ndcg"], "--reward-mode"),
    ],
)
def test_cli_errors_are_one_line(extra, says, tmp_path, capsys):
    from afmrl.cli import main

    code = main([
        "train-rar", "--model", saved_untrained_llava_checkpoint(), "--data", tiny_catalog(),
        "--out", str(tmp_path / "out"), *extra,
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("afmrl train-rar: error:") and says in last, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- CIT


@pytest.mark.slow
def test_cit_round_trains_the_encoder_on_a_fraction_with_new_attributes(tmp_path):
    from afmrl.models import load_model
    from afmrl.retrieval.attributes import generate_attributes
    from trainers.rar.cit import cit_round, cit_rows

    model = load_model(trained_llava_checkpoint())
    train = _train()
    extractor_before = _state(model.extractor)
    encoder_before = {k: v for k, v in _state(model).items() if not k.startswith("extractor.")}
    kwargs = dict(
        output_dir=str(tmp_path / "cit"), max_steps=2, per_device_train_batch_size=4,
        use_cpu=True, save_strategy="no", disable_tqdm=True, report_to="none",
    )  # fmt: skip
    result = cit_round(model, train, kwargs, fraction=0.3, seed=1, show_progress=False,
                       progress=None)  # fmt: skip
    assert result.rows == cit_rows(len(train), 0.3, 1) and len(result.rows) == 15
    assert result.global_step == 2
    trainer = result.trainer
    subset = trainer.train_dataset
    assert trainer.args.text_attributes_column == "cit_attributes"
    assert trainer.loss_attributes_column == "cit_attributes"
    expected = generate_attributes(model, train.select(result.rows), show_progress=False)
    assert list(subset["cit_attributes"]) == expected.texts
    after = _state(model)
    assert any(not torch.equal(after[k], v) for k, v in encoder_before.items())
    for k, v in extractor_before.items():
        assert torch.equal(after[f"extractor.{k}"], v)


@pytest.mark.slow
def test_cit_cli_saves_and_evaluates_on_validation(tmp_path):
    from afmrl.cli import main
    from afmrl.models import load_model

    out = tmp_path / "cit"
    code = main([
        "cit", "--model", trained_llava_checkpoint(), "--data", tiny_catalog(), "--out", str(out),
        "--max-steps", "2", "--batch-size", "4", "--threads", "1", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "cit_eval.json").read_text())
    assert metrics["split"] == "validation" and metrics["attributes"] == "generated"
    assert 0 <= metrics["recall@1"] <= 1
    summary = json.loads((out / "cit_training.json").read_text())
    assert summary["rows"] == 15 and summary["steps"] == 2
    load_model(out, need_extractor=True)
    assert main([
        "cit", "--model", trained_llava_checkpoint(), "--data", tiny_catalog(),
        "--out", str(tmp_path / "b"), "--fraction", "0.3",
    ]) == 2  # 15 rows < AGCL's default batch of 64  # fmt: skip
