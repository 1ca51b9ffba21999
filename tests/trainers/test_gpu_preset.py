"""The GPU preset: ``configs/accelerate/*.yaml`` and the paper's commands, ``configs/paper/paper.sh``.

* every accelerate config loads with accelerate's own loader, passes ``accelerate launch``'s
  validation and gives the processes the environment (mixed precision, DeepSpeed stage) docs/gpu.md
  says; every config the preset uses is one of them;
* the preset's command lines (read from the script itself) parse with the real CLI, and
  docs/gpu.md shows the same commands;
* every stage of the script runs 2 steps through the real CLI on CPU, on a checkpoint built by the
  script's own build step from a tiny random Qwen2-VL encoder and a tiny Qwen2.5-VL extractor (the
  paper's two architectures), with the preset's settings (LoRA, the paper's AGCL form, the recall
  reward...) and only sizes shrunk. vLLM is not installed here, so the preset's ``--use-vllm`` is
  checked to reach TRL (which refuses it) and the two steps run without it. Each stage's output
  loads, and CIT also runs under ``accelerate launch`` with the DDP config (2 CPU processes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import REPO

PRESET = REPO / "configs" / "paper" / "paper.sh"
ACCELERATE = REPO / "configs" / "accelerate"
DOCS = REPO / "docs" / "gpu.md"
STAGES = ("train-extractor", "extract", "train-encoder", "train-rar", "cit")
#: What each accelerate config must give the processes it launches.
EXPECTED = {
    "ddp_8gpu_bf16.yaml": {"type": "MULTI_GPU", "processes": 8, "precision": "bf16"},
    "deepspeed_zero2_8gpu_bf16.yaml": {"type": "DEEPSPEED", "processes": 8, "precision": "bf16"},
    "single_gpu_bf16.yaml": {"type": "NO", "processes": 1, "precision": "bf16"},
}
#: The only flags the CPU run changes: sizes (steps, batches, budgets, gallery) and the display.
SHRINK = {
    "train-extractor": ["--max-steps", "2", "--batch-size", "4", "--threads", "1"],
    "extract": ["--batch-size", "16", "--max-new-tokens", "8", "--no-progress"],
    "train-encoder": ["--max-steps", "2", "--batch-size", "4", "--threads", "1", "--no-progress"],
    "train-rar": ["--max-steps", "2", "--group-size", "2", "--batch-size", "4",
                  "--completion-length", "8", "--gallery-size", "8", "--threads", "1",
                  "--no-progress"],
    "cit": ["--max-steps", "2", "--batch-size", "4", "--threads", "1", "--no-progress"],
}  # fmt: skip
#: Parsed settings the shrinking may change (everything else must stay the preset's).
SIZE_KEYS = {
    "max_steps", "per_device_train_batch_size", "batch_size", "threads", "no_progress",
    "max_new_tokens", "num_generations", "max_completion_length", "gallery_size",
}  # fmt: skip


# ------------------------------------------------------------------------ reading the script


def _script() -> str:
    return PRESET.read_text(encoding="utf-8")


def build_program() -> str:
    """The Python program of the script's build step (its ``<<'PY'`` here-document)."""
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", _script(), flags=re.S)
    assert match, "configs/paper/paper.sh has no build step"
    return match.group(1)


def preset_commands(variables: dict[str, str]) -> dict[str, tuple[str | None, list[str]]]:
    """``{stage: (accelerate config file or None, afmrl argv)}`` of the script's command lines,
    with ``$VAR`` / ``"$VAR"`` replaced from ``variables``."""
    text = re.sub(r"<<'PY'\n.*?\nPY\n", "\n", _script(), flags=re.S).replace("\\\n", " ")
    commands: dict[str, tuple[str | None, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(("accelerate launch", "afmrl ")):
            continue
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], line)
        words = shlex.split(line, comments=True)
        if words[0] == "afmrl":
            config, argv = None, words[1:]
        else:
            at = words.index("afmrl.cli")
            assert words[at - 1] == "-m", line
            launch = words[2 : at - 1]
            config = launch[launch.index("--config_file") + 1]
            argv = words[at + 1 :]
        assert argv[0] not in commands, f"{argv[0]} appears twice"
        commands[argv[0]] = (config, argv)
    return commands


PLACEHOLDERS = {
    "DATA": "DATA", "WORK": "WORK", "VLM": "VLM", "EXTRACTOR": "EXTRACTOR",
    "MAX_PIXELS": "200704", "DDP": "configs/accelerate/ddp_8gpu_bf16.yaml",
}  # fmt: skip


def _parse(argv: list[str]):
    from afmrl.cli import build_parser

    return build_parser().parse_args(argv)


# ------------------------------------------------------------------------ fast checks


def _launch_env(config_file: Path) -> tuple[object, dict[str, str]]:
    """What ``accelerate launch --config_file config_file -m afmrl.cli ...`` would do: the loaded
    config and the environment its processes get (accelerate's own functions)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launching

    loaded = load_config_from_file(str(config_file))
    args = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "-m", "afmrl.cli", "train-encoder", "--help"]
    )
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mp_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = launching.prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu:
        env = launching.prepare_multi_gpu_env(args)
    else:
        _, env = launching.prepare_simple_launcher_cmd_env(args)
    assert args.num_processes == loaded.num_processes
    return loaded, env


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_configs_load_and_launch_as_documented(name, monkeypatch):
    path = ACCELERATE / name
    loaded, env = _launch_env(path)
    want = EXPECTED[name]
    assert loaded.distributed_type.value == want["type"]
    assert loaded.num_processes == want["processes"]
    assert loaded.mixed_precision == want["precision"] == env["ACCELERATE_MIXED_PRECISION"]
    assert not loaded.use_cpu
    if want["type"] == "DEEPSPEED":
        # The plugin every process builds from that environment (no deepspeed import needed).
        from accelerate.utils import DeepSpeedPlugin

        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == 2  # parameters replicated: the stages' save_pretrained needs them
        assert zero["offload_optimizer"]["device"] == "none"
    assert f"configs/accelerate/{name}" in DOCS.read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_stages_train_in_the_precision_the_launch_sets(tmp_path, monkeypatch):
    """The checkpoints load in fp32 and the CLI asks for no precision (SFT and AGCL): the bf16 of
    the preset reaches the Trainers through the environment ``accelerate launch`` exports."""
    from trainers.agcl.config import AGCLConfig
    from trainers.extractor_sft.config import ExtractorSFTConfig

    _, env = _launch_env(ACCELERATE / "ddp_8gpu_bf16.yaml")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env["ACCELERATE_MIXED_PRECISION"])
    out = str(tmp_path)
    # As `afmrl train-extractor` and `afmrl train-encoder` / `afmrl cit` build them.
    for config in (
        ExtractorSFTConfig(output_dir=out, use_cpu=True, bf16=False),
        AGCLConfig(output_dir=out, use_cpu=True),
    ):
        assert config.mixed_precision == "bf16"  # what the Trainer gives its Accelerator
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert AGCLConfig(output_dir=out, use_cpu=True).mixed_precision == "no"


def test_the_config_folder_holds_exactly_the_documented_configs():
    assert sorted(p.name for p in ACCELERATE.glob("*")) == sorted(EXPECTED)


def test_preset_commands_parse_and_docs_show_the_same_commands():
    commands = preset_commands(PLACEHOLDERS)
    assert tuple(commands) == STAGES
    for stage, (config, argv) in commands.items():
        args = _parse(argv)
        assert args.command == stage
        if config is not None:
            assert (REPO / config).is_file(), config
            assert Path(config).name in EXPECTED
    agcl = _parse(commands["train-encoder"][1])
    assert agcl.use_lora is True and agcl.loss == "agcl"
    assert (agcl.weighting, agcl.false_negatives, agcl.false_negative_handling) == (
        "bm25", "both", "remove",
    )  # the paper's form of AGCL  # fmt: skip
    rar = _parse(commands["train-rar"][1])
    assert rar.use_vllm and rar.vllm_mode == "colocate" and rar.lora == "on"
    assert rar.reward_mode == "recall" and rar.beta > 0
    assert rar.gallery_attributes_column == "pos_attributes"  # what `extract` wrote
    assert _parse(commands["train-extractor"][1]).lora_r > 0
    # docs/gpu.md shows exactly these command lines.
    docs = " ".join(DOCS.read_text(encoding="utf-8").replace("\\\n", " ").split())
    script = re.sub(r"<<'PY'\n.*?\nPY\n", "\n", _script(), flags=re.S).replace("\\\n", " ")
    for line in script.splitlines():
        if line.strip().startswith(("accelerate launch", "afmrl ")):
            assert " ".join(line.split()) in docs, line


# ------------------------------------------------------------------------ every stage on CPU


def tiny_qwen2_5_vl(tokenizer):
    """A tiny random Qwen2.5-VL (the paper's extractor architecture: windowed vision attention with
    one full-attention block) and its processor, matching ``tokenizer``."""
    from tiny_models import tiny_qwen2_vl_config
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    qwen2_vl = tiny_qwen2_vl_config(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=qwen2_vl.text_config.to_dict(),
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1],
        },
        image_token_id=qwen2_vl.image_token_id,
        video_token_id=qwen2_vl.video_token_id,
        vision_start_token_id=qwen2_vl.vision_start_token_id,
        vision_end_token_id=qwen2_vl.vision_end_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _tiny_backbones(root: Path) -> tuple[str, str]:
    """The preset's two backbones, tiny and random, saved with their processors as Hub-style
    folders: a Qwen2-VL base model (the encoder) and a Qwen2.5-VL for generation (the extractor)."""
    import torch
    from tiny_models import chat_tokenizer, tiny_qwen2_vl_config, tiny_qwen2_vl_processor
    from transformers import AutoModel

    tokenizer = chat_tokenizer()
    torch.manual_seed(0)
    vlm = AutoModel.from_config(tiny_qwen2_vl_config(tokenizer, tie_word_embeddings=False))
    vlm.save_pretrained(root / "vlm")
    tiny_qwen2_vl_processor(tokenizer).save_pretrained(root / "vlm")
    extractor, processor = tiny_qwen2_5_vl(tokenizer)
    extractor.save_pretrained(root / "extractor")
    processor.save_pretrained(root / "extractor")
    return str(root / "vlm"), str(root / "extractor")


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


def _changed(before: dict, after: dict, prefix: str, inside: bool = True) -> bool:
    import torch

    keys = [k for k in before if k.startswith(prefix) == inside]
    assert keys and before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in keys)


def _run(argv: list[str], capsys) -> str:
    from afmrl.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_every_stage_of_the_preset_runs_two_steps_on_tiny_qwen_vl_models(
    tmp_path, capsys, monkeypatch
):
    from tiny_models import tiny_catalog

    from afmrl.models import load_model

    data = tiny_catalog()
    vlm, extractor = _tiny_backbones(tmp_path / "backbones")
    work = tmp_path / "work"
    work.mkdir()
    variables = {**PLACEHOLDERS, "DATA": data, "WORK": str(work), "VLM": vlm,
                 "EXTRACTOR": extractor, "MAX_PIXELS": str(112 * 112)}  # fmt: skip
    commands = preset_commands(variables)

    def shrunk(stage: str) -> list[str]:
        argv = [*commands[stage][1], *SHRINK[stage]]
        full, small = vars(_parse(commands[stage][1])), vars(_parse(argv))
        changed = {k for k in full if k != "_run" and full[k] != small[k]}
        assert changed <= SIZE_KEYS, changed  # only sizes differ from the preset
        return argv

    # 0. The script's build step, run as the script runs it.
    monkeypatch.setattr(sys, "argv", ["-", vlm, extractor, str(112 * 112), str(work / "base")])
    exec(compile(build_program(), str(PRESET), "exec"), {"__name__": "__main__"})
    capsys.readouterr()
    base = load_model(work / "base", need_extractor=True)
    assert base.config.encoder_type == "vlm"
    assert type(base.vlm).__name__ == "Qwen2VLModel"
    assert type(base.extractor).__name__ == "Qwen2_5_VLForConditionalGeneration"
    for processor in (base.processor.encoder_processor, base.processor.extractor_processor):
        assert processor.image_processor.size["longest_edge"] == 112 * 112  # the build's limit

    # 1. Extractor SFT with LoRA: the extractor changes (adapters merged), the encoder does not.
    _run(shrunk("train-extractor"), capsys)
    before, after = _weights(work / "base"), _weights(work / "sft")
    assert not any("lora" in k for k in after)
    assert _changed(before, after, "extractor.") and not _changed(
        before, after, "extractor.", False
    )
    assert json.loads((work / "sft" / "extractor_sft.json").read_text())["steps"] == 2
    load_model(work / "sft", need_extractor=True)

    # 2. Extraction: every split gets the column (and the train split its second view's).
    _run(shrunk("extract"), capsys)
    from datasets import load_from_disk

    catalog = load_from_disk(str(work / "catalog"))
    assert all("attributes" in split.column_names for split in catalog.values())
    assert "pos_attributes" in catalog["train"].column_names
    report = json.loads((work / "catalog" / "extraction.json").read_text())
    assert set(report["splits"]) == set(catalog)

    # 3. AGCL with LoRA on the Qwen2-VL encoder, the paper's form of the loss.
    _run(shrunk("train-encoder"), capsys)
    summary = json.loads((work / "agcl" / "agcl_training.json").read_text())
    assert summary["global_step"] == 2 and summary["use_lora"] is True
    assert (summary["resolved_weighting"], summary["resolved_false_negatives"]) == ("bm25", "both")
    assert summary["false_negative_handling"] == "remove"
    assert summary["text_attributes_column"] == "attributes"
    before, after = after, _weights(work / "agcl")
    assert not any("lora" in k for k in after)
    assert _changed(before, after, "vlm.language_model.")
    assert not _changed(before, after, "extractor.")
    agcl = load_model(work / "agcl", need_extractor=True)
    emb = agcl.encode(images=catalog["gallery"]["image"][:2], texts=["a mug", "a shoe"])
    assert emb.shape == (2, agcl.config.embed_dim)

    # 4. RAR. The preset's vLLM settings reach TRL's GRPOConfig and GRPOTrainer, which refuses
    #    them without vLLM (not installed here); the two steps then run with TRL's own generation.
    from trl import GRPOConfig

    from afmrl.cli.train_rar import rar_config

    config = rar_config(_parse(commands["train-rar"][1]), str(tmp_path / "c"), gpu=False)
    assert isinstance(config, GRPOConfig)
    assert config.use_vllm is True and config.vllm_mode == "colocate"
    assert (config.num_generations, config.beta, config.loss_type) == (8, 0.04, "dapo")
    from afmrl.cli import main

    assert main(shrunk("train-rar")) == 2
    err = capsys.readouterr().err
    assert "afmrl train-rar: error: vLLM is not available and `use_vllm` is set to True" in err
    assert not (work / "rar").exists()
    _run([a for a in shrunk("train-rar") if a != "--use-vllm"], capsys)
    summary = json.loads((work / "rar" / "rar_training.json").read_text())
    assert summary["steps"] == 2 and summary["lora"] is True
    assert summary["settings"]["reward_mode"] == "recall" and summary["settings"]["beta"] == 0.04
    before, after = after, _weights(work / "rar")
    assert not any("lora" in k for k in after)
    assert not _changed(before, after, "extractor.", inside=False)  # the encoder is frozen
    load_model(work / "rar", need_extractor=True)

    # 5. CIT: continues AGCL with the stage-1 settings carried along, evaluates on validation.
    _run(shrunk("cit"), capsys)
    summary = json.loads((work / "cit" / "cit_training.json").read_text())
    assert summary["steps"] == 2 and summary["stage1_settings_found"] is True
    carried = summary["agcl_settings"]
    assert carried["use_lora"] is True and carried["weighting"] == "bm25"
    assert carried["false_negatives"] == "both"
    assert json.loads((work / "cit" / "cit_eval.json").read_text())["split"] == "validation"
    before, after = after, _weights(work / "cit")
    assert _changed(before, after, "vlm.language_model.")
    assert not _changed(before, after, "extractor.")

    # The final checkpoint loads as users load it (remote code, a fresh import of the classes).
    from transformers import AutoModel

    final = AutoModel.from_pretrained(work / "cit", trust_remote_code=True)
    got = final.encode(images=catalog["gallery"]["image"][:2], texts=["a mug", "a shoe"])
    assert got.shape == (2, final.config.embed_dim)

    # 6. The same CIT command launched as the preset launches it -- `accelerate launch
    #    --config_file <the DDP config>` -- with 2 CPU processes (gloo) instead of 8 GPUs: one
    #    global batch across both, and only the main process writes the output.
    config_file, _ = commands["cit"]
    argv = [a if a != str(work / "cit") else str(work / "cit2") for a in shrunk("cit")]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
              "--num_processes", "2", "--mixed_precision", "no", "-m", "afmrl.cli", *argv]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("[cit] saved") == 1  # the main process alone
    summary = json.loads((work / "cit2" / "cit_training.json").read_text())
    assert summary["steps"] == 2
    assert summary["agcl_settings"]["per_device_train_batch_size"] == 4
    log = json.loads((work / "cit2" / "agcl_training.json").read_text())
    assert log["world_size"] == 2
    load_model(work / "cit2", need_extractor=True)
