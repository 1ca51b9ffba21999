"""Gradient caching (GradCache) for AGCL: the cached step equals the plain one.

Losses and every parameter gradient of :func:`cached_contrastive_step` are compared with the plain
:func:`contrastive_step` on tiny real AFMRL models (dual: EfficientNet-Lite0 + BERT; vlm: Qwen2-VL
with LoRA), with AGCL's BM25 weighting and false-negative filters on; with dropout on against a
plain step over the same chunks; through ``AGCLTrainer`` (gradient accumulation, augmented second
views), the ``afmrl train-encoder`` CLI, and two gloo processes under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from test_agcl_trainer import no_dropout, tiny_config
from tiny_models import REPO, TESTS, run_two_processes, tiny_listings

from trainers.agcl.arguments import PAPER_FORM
from trainers.agcl.cached import (
    cached_contrastive_step,
    chunk_ranges,
    listing_count,
    slice_listings,
)
from trainers.agcl.collator import AGCLCollator
from trainers.agcl.config import AGCLConfig
from trainers.agcl.loss import AGCLLoss
from trainers.agcl.trainer import AGCLTrainer, contrastive_step
from trainers.freezing import configure_trainable

HERE = Path(__file__).resolve().parent

#: Loss settings compared: the paper's form (BM25 weights, both filters, removal; delta 0 so the
#: margin filter fires on random weights), the defaults (attribute filter, attraction), InfoNCE.
FORMS = {
    "paper": {"loss": "agcl", **PAPER_FORM, "delta": 0.0},
    "default": {"loss": "agcl"},
    "infonce": {"loss": "infonce"},
}


def trainable_model(family: str = "dual", dropout: bool = False, dtype=torch.float32, **kwargs):
    """A tiny model set up as ``AGCLTrainer`` trains it: towers' tails trainable, BatchNorm eval."""
    from tiny_models import tiny_model

    settings = {"train_vision_blocks": 2, "train_text_layers": 2, **kwargs}
    config = AGCLConfig(output_dir="unused", report_to="none", use_cpu=True, **settings)
    model = tiny_model(family)
    if not dropout:
        no_dropout(model)
    model, _ = configure_trainable(model, config)
    model.to(dtype).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def batch_of(model, n: int = 16, **kwargs):
    data = tiny_listings(n, **kwargs)
    return AGCLCollator(model.processor, loss_attributes_column="teacher_attributes")(list(data))


def grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            out[name] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------------------- splitting


def test_chunks_cover_the_batch_and_split_vlm_patches_by_listing():
    from tiny_models import tiny_vlm_model

    assert chunk_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_ranges(4, 10) == [(0, 4)]
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_ranges(4, 0)

    model = tiny_vlm_model()
    data = tiny_listings(3)
    full = model.processor(images=data["image"], text=data["title"])
    n = listing_count(full)
    assert n == 3 and full["pixel_values"].shape[0] != n  # flattened patches
    parts = [slice_listings(full, b, e) for b, e in chunk_ranges(n, 2)]
    for key in full:
        assert torch.equal(torch.cat([p[key] for p in parts]), full[key]), key
    # Listing 2 alone: its own patches, as the processor gives them for that listing alone.
    alone = model.processor(images=data["image"][2:], text=data["title"][2:])
    assert torch.equal(parts[1]["pixel_values"], alone["pixel_values"])
    assert torch.equal(parts[1]["image_grid_thw"], alone["image_grid_thw"])

    bad = {**full, "image_grid_thw": full["image_grid_thw"][:2]}
    with pytest.raises(ValueError, match="image_grid_thw has 2 rows for 3 listings"):
        slice_listings(bad, 0, 1)
    with pytest.raises(ValueError, match=r"cannot split input 'extra'"):
        slice_listings({**full, "extra": torch.zeros(5)}, 0, 1)


# ------------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("form", "dtype", "chunk", "tol"),
    [
        ("paper", torch.float64, 5, 1e-12),
        ("paper", torch.float32, 5, 1e-5),
        ("default", torch.float32, 3, 1e-5),
        ("infonce", torch.float32, 32, 1e-5),  # one chunk: the whole batch
    ],
)
def test_cached_step_equals_the_plain_step(form, dtype, chunk, tol):
    model = trainable_model(dtype=dtype)
    batch = batch_of(model)
    options = dict(FORMS[form])
    loss_fn = AGCLLoss(options.pop("loss"), **options)

    plain, ids = contrastive_step(model, batch, loss_fn)
    plain.loss.backward()
    expected = grads(model)
    cached, cached_ids = cached_contrastive_step(model, batch, loss_fn, chunk)
    assert cached.loss.grad_fn is None and cached.loss.requires_grad  # a leaf with the hook
    assert all(p.grad is None for p in model.parameters())  # nothing until backward
    cached.loss.backward()
    got = grads(model)

    assert abs(cached.loss.item() - plain.loss.item()) < tol
    assert cached_ids == ids
    assert torch.equal(cached.mask, plain.mask) and torch.equal(cached.mask_t, plain.mask_t)
    if form != "infonce":
        assert plain.num_masked > 0  # the filters act (twins; margin hits)
    assert len(expected) > 20  # towers' tails, projections, fusion, logit scale
    assert max_diff(got, expected) < tol
    assert "logit_scale" in got and got["logit_scale"].abs().item() > 0

    # The gradient reaching the loss scales every replayed chunk (accumulation, loss scalers).
    cached, _ = cached_contrastive_step(model, batch, loss_fn, chunk)
    (cached.loss * 0.25).backward()
    quarter = grads(model)
    assert max_diff({k: 4 * v for k, v in quarter.items()}, expected) < 4 * tol


def test_vlm_with_lora_equals_the_plain_step():
    model = trainable_model("vlm", use_lora=True, lora_dropout=0.0)
    assert type(model).__name__ == "PeftModel"
    batch = batch_of(model, 8)
    loss_fn = AGCLLoss("agcl", **PAPER_FORM, delta=0.0)
    plain, _ = contrastive_step(model, batch, loss_fn)
    plain.loss.backward()
    expected = grads(model)
    cached, _ = cached_contrastive_step(model, batch, loss_fn, 3)
    cached.loss.backward()
    got = grads(model)
    assert any("lora_A" in k for k in got)
    assert abs(cached.loss.item() - plain.loss.item()) < 1e-5
    assert max_diff(got, expected) < 1e-5


def chunked_plain_step(model, batch, loss_fn, chunk):
    """The uncached loss over the same chunks: every chunk's graph kept until one backward."""
    inputs = {k: v for k, v in batch.items() if k not in ("attribute_texts", "listing_ids")}
    n = listing_count(inputs)
    parts = [
        model(**slice_listings(inputs, b, e), return_loss=False).embeddings
        for b, e in chunk_ranges(n, chunk)
    ]
    emb = torch.cat(parts)
    scale = model.logit_scale.exp().clamp(max=100.0)
    return loss_fn(
        emb[: n // 2],
        emb[n // 2 :],
        batch["attribute_texts"],
        logit_scale=scale,
        matryoshka_dims=model.config.matryoshka_dims,
    )


def test_dropout_masks_are_replayed():
    """Dropout on (BERT's, in the trained text layers): the replayed chunks draw the masks of the
    first pass, so the cached step equals a plain step over the same chunks, and it leaves the
    RNG where that step does (the next batch's augmentation draws the same)."""
    model = trainable_model(dropout=True)
    batch = batch_of(model)
    loss_fn = AGCLLoss("agcl", **PAPER_FORM, delta=0.0)

    torch.manual_seed(123)
    reference = chunked_plain_step(model, batch, loss_fn, 5)
    reference.loss.backward()
    after_reference = torch.get_rng_state()
    expected = grads(model)

    torch.manual_seed(123)
    cached, _ = cached_contrastive_step(model, batch, loss_fn, 5)
    cached.loss.backward()
    assert torch.equal(torch.get_rng_state(), after_reference)
    got = grads(model)
    assert abs(cached.loss.item() - reference.loss.item()) < 1e-5
    assert max_diff(got, expected) < 1e-5

    # Dropout did act: another seed gives other gradients, far beyond the tolerance.
    torch.manual_seed(124)
    other, _ = cached_contrastive_step(model, batch, loss_fn, 5)
    other.loss.backward()
    assert max_diff(grads(model), expected) > 1e-3


def test_without_gradients_the_loss_is_returned_plainly():
    model = trainable_model()
    batch = batch_of(model, 8)
    loss_fn = AGCLLoss("agcl")
    with torch.no_grad():
        plain, _ = contrastive_step(model, batch, loss_fn)
        cached, _ = cached_contrastive_step(model, batch, loss_fn, 3)
    assert not cached.loss.requires_grad
    assert abs(cached.loss.item() - plain.loss.item()) < 1e-5


def test_refusals_name_the_problem():
    model = trainable_model()
    batch = batch_of(model, 4)
    loss_fn = AGCLLoss("infonce")
    model.vision_model.timm_model.bn1.train()
    with pytest.raises(ValueError, match=r"BatchNorm in eval mode \('vision_model.timm_model.bn1'"):
        cached_contrastive_step(model, batch, loss_fn, 2)
    model.vision_model.timm_model.bn1.eval()
    odd = {k: v[:7] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with pytest.raises(ValueError, match="expected 2B listings"):
        cached_contrastive_step(model, odd, loss_fn, 2)
    with pytest.raises(ValueError, match="gradient_cache_chunk_size must be >= 1"):
        AGCLConfig(output_dir="unused", report_to="none", gradient_cache_chunk_size=0)


# ------------------------------------------------------------------------------- trainer, CLI


def train_weights(tmp_path, name: str, **kwargs) -> tuple[dict[str, torch.Tensor], list[float]]:
    from tiny_models import tiny_dual_model

    config = tiny_config(
        tmp_path / name,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        train_vision_blocks=1,
        train_text_layers=1,
        max_steps=3,
        **kwargs,
    )
    model = no_dropout(tiny_dual_model())
    data = tiny_listings(16, pos=False)  # second views by augmentation: drawn from the RNG
    trainer = AGCLTrainer(model, config, train_dataset=data)
    trainer.train()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return weights, [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_trainer_with_gradient_caching_trains_the_same_weights(tmp_path):
    """3 AdamW steps, batches of 4 pairs accumulated twice, second views augmented (the RNG the
    augmentation draws from must be where the plain run leaves it)."""
    from tiny_models import tiny_dual_model

    plain, plain_losses = train_weights(tmp_path, "plain")
    cached, cached_losses = train_weights(tmp_path, "cached", gradient_cache_chunk_size=3)
    initial = tiny_dual_model().state_dict()
    moved = [k for k in plain if not torch.equal(plain[k], initial[k])]
    assert len(moved) > 10
    assert (
        len(plain_losses) == 3
        and max(abs(a - b) for a, b in zip(plain_losses, cached_losses, strict=True)) < 1e-5
    )
    assert max((plain[k] - cached[k]).abs().max().item() for k in plain) < 1e-5


@pytest.fixture(scope="module")
def catalog_and_model(tmp_path_factory):
    """A 16-listing catalogue and a tiny dual checkpoint without dropout (dropout masks of one
    forward of 2B listings and of chunks of K differ; with them off the runs must agree)."""
    from datasets import DatasetDict
    from tiny_models import tiny_dual_model

    root = tmp_path_factory.mktemp("gradcache")
    DatasetDict({"train": tiny_listings(16)}).save_to_disk(str(root / "catalog"))
    model = tiny_dual_model()
    model.config.text_config.hidden_dropout_prob = 0.0
    model.config.text_config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(root / "model")
    return root / "catalog", root / "model"


def test_cli_gradient_cache_gives_the_weights_of_the_plain_run(tmp_path, catalog_and_model, capsys):
    from safetensors.torch import load_file

    from afmrl.cli import main

    catalog, model = catalog_and_model
    # The vision tower stays frozen: served from the frozen-feature cache in both passes.
    common = [
        "train-encoder", "--model", str(model), "--data", str(catalog), "--batch-size", "8",
        "--max-steps", "2", "--no-progress", "--threads", "1", "--train-text-layers", "1",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main([*common, "--out", str(tmp_path / "cached"), "--gradient-cache-chunk-size", "5"]) == 0
    )
    a = load_file(tmp_path / "plain" / "model.safetensors")
    b = load_file(tmp_path / "cached" / "model.safetensors")
    init = load_file(model / "model.safetensors")
    assert a.keys() == b.keys()
    assert sum(not torch.equal(a[k], init[k]) for k in a) > 10  # trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    summary = json.loads((tmp_path / "cached" / "agcl_training.json").read_text())
    assert summary["gradient_cache_chunk_size"] == 5

    assert main([*common, "--out", str(tmp_path / "bad"), "--gradient-cache-chunk-size", "0"]) == 2
    assert "--gradient-cache-chunk-size: expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-encoder", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--gradient-cache-chunk-size GRADIENT_CACHE_CHUNK_SIZE gradient caching (GradCache)" in (
        help_text
    )


# ------------------------------------------------------------------------------- distributed

WORKER = """
import os, sys
sys.path[:0] = [{here!r}, {tests!r}, {repo!r}]
import torch
import torch.distributed as dist
from safetensors.torch import save_file

torch.set_num_threads(1)
out = sys.argv[1]
from tiny_models import tiny_listings
from test_cached_agcl import distributed_trainer

dist.init_process_group("gloo")
try:
    trainer = distributed_trainer(out, cached=True)
    trainer.train()
    if dist.get_rank() == 0:
        model = trainer.model
        params = {{n: p.detach().contiguous() for n, p in model.named_parameters()
                   if p.requires_grad}}
        params["loss"] = torch.tensor([trainer.state.log_history[0]["loss"]])
        save_file(params, os.path.join(out, "trained.safetensors"))
finally:
    dist.barrier()
    dist.destroy_process_group()
"""

GLOBAL_BATCH = 8


def distributed_trainer(out, cached: bool) -> AGCLTrainer:
    """One SGD step of lr 1 (the weight change is minus the gradient) on the global batch of 8,
    with the paper's form of the loss; cached with chunks of 3 of each process's listings."""
    from test_distributed import SETTINGS
    from tiny_models import tiny_dual_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = tiny_config(
        Path(out),
        per_device_train_batch_size=GLOBAL_BATCH // world,
        gradient_cache_chunk_size=3 if cached else None,
        **{**SETTINGS, **PAPER_FORM},
    )
    model = no_dropout(tiny_dual_model(seed=0))
    return AGCLTrainer(model, config, train_dataset=tiny_listings(GLOBAL_BATCH))


@pytest.mark.slow
def test_two_cached_processes_match_one_plain_process(tmp_path):
    from safetensors.torch import load_file

    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(WORKER.format(here=str(HERE), tests=str(TESTS), repo=str(REPO)))
    )
    out = tmp_path / "dist"
    out.mkdir()
    run_two_processes(worker, str(out), tmp_path=tmp_path)

    trainer = distributed_trainer(tmp_path / "single", cached=False)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trained = load_file(out / "trained.safetensors")
    assert abs(trained.pop("loss").item() - trainer.state.log_history[0]["loss"]) < 1e-5
    moved = 0
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(trained[name], p.detach(), atol=1e-5, rtol=0), name
            moved += not torch.equal(trained[name], initial[name])
    assert moved > 10
