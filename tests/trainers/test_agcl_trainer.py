"""AGCLTrainer, its collator, batch sampler, checkpoints/resume and the train-encoder CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import REPO, TESTS, tiny_listings

from trainers.agcl.collator import AGCLCollator, resolve_columns
from trainers.agcl.config import AGCLConfig
from trainers.agcl.loss import AGCLLoss
from trainers.agcl.sampler import ListingBatchSampler
from trainers.agcl.trainer import MASKED_PAIRS_FILE, AGCLTrainer, contrastive_step
from trainers.feature_cache import FrozenFeatureCache, pooled_features, pooled_output
from trainers.freezing import configure_trainable, tower_units


def tiny_config(tmp_path, **kwargs) -> AGCLConfig:
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "train_vision_blocks": 0,
        "train_text_layers": 1,
        "warmup_steps": 0,
        "seed": 0,
    }
    return AGCLConfig(**{**defaults, **kwargs})


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


# ------------------------------------------------------------------------------- collator


def test_collator_builds_both_views_and_appends_attributes():
    from tiny_models import tiny_dual_model

    model = tiny_dual_model()
    ds = tiny_listings(6)
    collate = AGCLCollator(
        model.processor,
        text_attributes_column="teacher_attributes",
        loss_attributes_column="teacher_attributes",
    )
    rows = [ds[i] for i in range(3)]
    batch = collate(rows)
    assert batch["pixel_values"].shape[0] == 6 and batch["input_ids"].shape[0] == 6
    tok = model.processor.tokenizer
    first = tok.decode(batch["input_ids"][0], skip_special_tokens=False)
    pos_first = tok.decode(batch["input_ids"][3], skip_special_tokens=False)
    assert "navy mug number 0" in first and "category : mug" in first
    assert first.index("number 0") < first.index("[SEP]") < first.index("category")
    assert "mug, navy" in pos_first and "category : mug" in pos_first
    assert batch["attribute_texts"] == [r["teacher_attributes"] for r in rows]
    assert batch["listing_ids"] == ["l000", "l001", "l002"]
    # The two views differ (pos_image is rotated).
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][3])

    titles_only = AGCLCollator(model.processor)(rows)
    assert "category" not in tok.decode(titles_only["input_ids"][0])
    assert titles_only["attribute_texts"] is None


def test_collator_augments_a_second_view_when_the_data_has_none():
    from tiny_models import tiny_dual_model

    model = tiny_dual_model()
    ds = tiny_listings(4, pos=False)
    config = AGCLConfig(output_dir="unused", loss="infonce", report_to="none")
    columns = resolve_columns(config, ds.column_names)
    assert columns["augment"] is True
    collate = AGCLCollator(model.processor, augment=True)
    rows = [ds[i] for i in range(2)]
    torch.manual_seed(0)
    a = collate(rows)
    torch.manual_seed(0)
    b = collate(rows)
    assert torch.equal(a["pixel_values"], b["pixel_values"])  # reproducible under the RNG
    assert not torch.allclose(a["pixel_values"][0], a["pixel_values"][2])  # augmented view
    assert torch.equal(a["input_ids"][0], a["input_ids"][2])  # same title


def test_column_errors_name_the_column():
    ds = tiny_listings(4)
    base = {"output_dir": "unused", "report_to": "none"}
    with pytest.raises(ValueError, match="no 'photo' column"):
        resolve_columns(AGCLConfig(**base, image_column="photo"), ds.column_names)
    with pytest.raises(ValueError, match=r"'extracted' .*text_attributes_column"):
        resolve_columns(AGCLConfig(**base, text_attributes_column="extracted"), ds.column_names)
    no_attrs = ds.remove_columns("teacher_attributes")
    with pytest.raises(ValueError, match="needs attributes"):
        resolve_columns(AGCLConfig(**base), no_attrs.column_names)
    ok = resolve_columns(AGCLConfig(**base, loss="infonce"), no_attrs.column_names)
    assert ok["loss_attributes_column"] is None
    ok = resolve_columns(
        AGCLConfig(**base, false_negatives="margin", weighting="none"), no_attrs.column_names
    )
    assert ok["loss_attributes_column"] is None
    with pytest.raises(ValueError, match="no 'pos_image' column"):
        resolve_columns(
            AGCLConfig(**base, augment_second_view=False),
            ds.remove_columns("pos_image").column_names,
        )
    with pytest.raises(ValueError, match="must be one of"):
        AGCLConfig(**base, batch_sampler="category")
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        AGCLConfig(**base, dataloader_drop_last=False)


# ------------------------------------------------------------------------------- sampler


def test_sampler_is_a_seeded_permutation_per_epoch():
    s = ListingBatchSampler(50, 8, "random", seed=3)
    e0, e1 = s.order(0), s.order(1)
    assert sorted(e0) == list(range(50)) and sorted(e1) == list(range(50))
    assert e0 != e1 and e0 == ListingBatchSampler(50, 8, "random", seed=3).order(0)
    s.set_epoch(1)
    assert list(iter(s)) == e1 and len(s) == 50
    assert e0 != ListingBatchSampler(50, 8, "random", seed=4).order(0)


def test_attribute_sampler_groups_similar_listings():
    rng = np.random.default_rng(0)
    attrs = [
        {"category": f"c{rng.integers(6)}", "colour": f"k{rng.integers(5)}", "size": f"s{i % 7}"}
        for i in range(240)
    ]

    def same_category_share(sampler):
        same = total = 0
        for batch in sampler.batches(0):
            cats = [attrs[i]["category"] for i in batch]
            same += sum(a == b for k, a in enumerate(cats) for b in cats[k + 1 :])
            total += len(cats) * (len(cats) - 1) // 2
        return same / total

    grouped = ListingBatchSampler(240, 16, "attributes", attrs, seed=0)
    shuffled = ListingBatchSampler(240, 16, "random", seed=0)
    assert sorted(grouped.order(0)) == list(range(240))
    assert same_category_share(grouped) > 0.8 > 0.3 > same_category_share(shuffled)
    assert grouped.order(0) != grouped.order(1)
    with pytest.raises(ValueError, match="needs one attribute dict per item"):
        ListingBatchSampler(10, 4, "attributes")
    with pytest.raises(ValueError, match="got 3 attribute dicts for a dataset of 10"):
        ListingBatchSampler(10, 4, "attributes", attrs[:3])
    with pytest.raises(ValueError, match="must be one of"):
        ListingBatchSampler(10, 4, "hard")


def test_second_view_gets_its_own_attributes_when_the_data_has_them(caplog):
    """Cross-seller pairs: the second view is another listing, so it gets that listing's
    attributes (``pos_<column>``), not a copy of the first view's (a shortcut)."""
    from tiny_models import tiny_dual_model

    model = tiny_dual_model()
    ds = tiny_listings(6)
    ds = ds.add_column("pos_teacher_attributes", [f"category: bag; count: {i}" for i in range(6)])
    config = AGCLConfig(output_dir="/tmp/unused", text_attributes_column="teacher_attributes",
                        use_cpu=True)  # fmt: skip
    columns = resolve_columns(config, ds.column_names)
    assert columns["pos_text_attributes_column"] == "pos_teacher_attributes"
    assert "pos_teacher_attributes" in columns["keep"]
    collate = AGCLCollator(
        model.processor,
        text_attributes_column="teacher_attributes",
        pos_text_attributes_column=columns["pos_text_attributes_column"],
    )
    batch = collate([ds[i] for i in range(3)])
    tok = model.processor.tokenizer
    first, second = (tok.decode(batch["input_ids"][i]) for i in (0, 3))
    assert "colour : navy" in first and "count : 0" not in first
    assert "count : 0" in second and "colour" not in second
    # Without a pos_ column both views get the first one's attributes, with a warning.
    plain = resolve_columns(config, tiny_listings(6).column_names)
    assert plain["pos_text_attributes_column"] == "teacher_attributes"
    with pytest.raises(ValueError, match="pos_text_attributes_column"):
        resolve_columns(
            AGCLConfig(
                output_dir="/tmp/unused",
                text_attributes_column="teacher_attributes",
                pos_text_attributes_column="nope",
                use_cpu=True,
            ),
            ds.column_names,
        )


def test_grouped_and_mixed_samplers():
    rng = np.random.default_rng(1)
    attrs = [
        {"category": f"c{rng.integers(6)}", "colour": f"k{rng.integers(5)}", "size": f"s{i % 7}"}
        for i in range(250)
    ]

    def same_category_share(sampler):
        same = total = 0
        for batch in sampler.batches(0)[:-1]:
            cats = [attrs[i]["category"] for i in batch]
            same += sum(a == b for k, a in enumerate(cats) for b in cats[k + 1 :])
            total += len(cats) * (len(cats) - 1) // 2
        return same / total

    default = ListingBatchSampler(250, 16, "attributes", attrs, seed=2)
    assert ListingBatchSampler(250, 16, "attributes", attrs, seed=2, group_size=16).order(0) == (
        default.order(0)
    )
    grouped = ListingBatchSampler(250, 16, "attributes", attrs, seed=2, group_size=4)
    assert sorted(grouped.order(0)) == list(range(250))
    for batch in grouped.batches(0)[:-1]:
        for g in range(0, 16, 4):
            group = [attrs[i]["category"] for i in batch[g : g + 4]]
            assert len(set(group)) <= 2  # a run of sorted neighbours (one boundary at most)
    shares = {}
    for frac in (0.0, 0.5, 1.0):
        mixed = ListingBatchSampler(250, 16, "mixed", attrs, seed=2, hard_fraction=frac)
        order = mixed.order(3)
        assert sorted(order) == list(range(250)) and order == mixed.order(3)
        shares[frac] = same_category_share(mixed)
    assert (
        ListingBatchSampler(250, 16, "mixed", attrs, seed=2, hard_fraction=1.0).batches(0)[:-1]
        == default.batches(0)[:-1]
    )
    assert shares[0.0] < 0.3 < shares[0.5] < shares[1.0]
    with pytest.raises(ValueError, match="hard_fraction"):
        ListingBatchSampler(10, 4, "mixed", attrs[:10], hard_fraction=1.5)
    with pytest.raises(ValueError, match="needs one attribute dict per item"):
        ListingBatchSampler(10, 4, "mixed")


# ------------------------------------------------------------------------------- model setup


def test_configure_trainable_freezes_what_it_should():
    from tiny_models import tiny_dual_model

    model = tiny_dual_model()
    config = AGCLConfig(
        output_dir="unused", report_to="none", train_vision_blocks=2, train_text_layers=1
    )
    model, frozen = configure_trainable(model, config)
    vision_units = tower_units(model.vision_model)
    text_units = tower_units(model.text_model)
    assert len(text_units) == 3  # embeddings + 2 layers
    trainable = lambda m: all(p.requires_grad for p in m.parameters())  # noqa: E731
    frozen_all = lambda m: not any(p.requires_grad for p in m.parameters())  # noqa: E731
    assert all(trainable(u) for u in vision_units[-2:]) and all(
        frozen_all(u) for u in vision_units[:-2]
    )
    assert trainable(text_units[-1]) and frozen_all(text_units[0]) and frozen_all(text_units[1])
    assert frozen_all(model.text_model.pooler)  # unused by mean pooling: no gradient, not trained
    assert trainable(model.vision_projection) and trainable(model.text_projection)
    assert model.logit_scale.requires_grad
    assert text_units[0] in frozen


def test_contrastive_step_equals_the_loss_of_separately_embedded_views():
    from tiny_models import tiny_dual_model

    model = no_dropout(tiny_dual_model().eval())
    ds = tiny_listings(8)
    batch = AGCLCollator(model.processor, loss_attributes_column="teacher_attributes")(list(ds))
    loss_fn = AGCLLoss("agcl", delta=0.0)
    got, ids = contrastive_step(model, batch, loss_fn, matryoshka=True)
    assert ids == [f"l{i:03d}" for i in range(8)]
    proc = model.processor
    q = model.embed_listings(**proc(images=ds["image"], text=ds["title"])).embeddings
    c = model.embed_listings(**proc(images=ds["pos_image"], text=ds["pos_title"])).embeddings
    scale = model.logit_scale.exp()
    ref = loss_fn(
        q,
        c,
        ds["teacher_attributes"],
        logit_scale=scale,
        matryoshka_dims=model.config.matryoshka_dims,
    )
    assert torch.allclose(got.loss, ref.loss, atol=1e-5)
    assert torch.equal(got.mask, ref.mask)


def test_frozen_tower_cache_returns_the_towers_output(tmp_path):
    from tiny_models import tiny_dual_model

    model = tiny_dual_model().eval()
    pixels = model.processor(images=tiny_listings(5)["image"])["pixel_values"]

    def cache(tower):
        return FrozenFeatureCache(
            tower, keep=pooled_features, rebuild=pooled_output, directory=tmp_path / "cache"
        )

    with torch.no_grad():
        expected = model.embed_listings(pixel_values=pixels).embeddings
        first_cache = cache(model.vision_model)
        with first_cache.attach():
            first = model.embed_listings(pixel_values=pixels[:3]).embeddings
            both = model.embed_listings(pixel_values=pixels).embeddings
    assert (first_cache.misses, first_cache.hits) == (5, 3)
    assert torch.allclose(first, expected[:3], atol=1e-5) and torch.allclose(
        both, expected, atol=1e-5
    )
    assert "forward" not in model.vision_model.__dict__
    # A second cache on the same tower reads the saved features; another tower does not.
    assert len(cache(model.vision_model).store) == 5
    other = tiny_dual_model(seed=1)
    assert len(cache(other.vision_model).store) == 0


def test_cnn_prefix_cache_equals_the_tower_and_trains_its_tail(tmp_path):
    from tiny_models import tiny_dual_model

    from trainers.feature_cache import cached_cnn_prefix

    model = tiny_dual_model().eval()
    tower = model.vision_model
    units = tower_units(tower)
    for unit in units[-2:]:
        unit.requires_grad_(True)
    pixels = model.processor(images=tiny_listings(4)["image"])["pixel_values"]
    with torch.no_grad():
        expected = tower(pixel_values=pixels).pooler_output
    with cached_cnn_prefix(tower, units, trainable=2, directory=tmp_path) as cache:
        first = tower(pixel_values=pixels).pooler_output
        again = tower(pixel_values=pixels).pooler_output
        again.sum().backward()
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(first, again) and (cache.misses, cache.hits) == (4, 4)
    assert all(p.grad is not None for p in units[-1].parameters())
    assert "forward_features" not in tower.timm_model.__dict__  # restored on exit
    with (
        pytest.raises(ValueError, match="frozen and some trainable"),
        cached_cnn_prefix(tower, units, trainable=0),
    ):
        pass


# ------------------------------------------------------------------------------- training


def test_training_trains_the_right_parameters_and_saves_a_loadable_checkpoint(tmp_path):
    from tiny_models import tiny_dual_model
    from transformers import AutoModel

    model = tiny_dual_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = tiny_config(tmp_path, log_masked_pairs=True, head_learning_rate=1e-2)
    trainer = AGCLTrainer(model, config, train_dataset=tiny_listings(16))
    groups = trainer.create_optimizer().param_groups
    assert sorted({g["lr"] for g in groups}) == [config.learning_rate, 1e-2]
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("vision_model.") for k in changed)
    assert any(k.startswith("text_model.encoder.layer.1.") for k in changed)
    assert not any(k.startswith("text_model.encoder.layer.0.") for k in changed)
    assert {"vision_projection.weight", "text_projection.weight", "logit_scale"} <= changed

    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3 and all({"masked", "accuracy", "logit_scale"} <= set(e) for e in logs)
    assert logs[-1]["vision_cache_hits"] > 0  # step 3 is in the second epoch: cached features
    # The twins (identical attributes) are masked; the log names their listing ids.
    lines = (tmp_path / "out" / MASKED_PAIRS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and all(len(r["listing_ids"]) == 8 for r in records)
    masked = {frozenset(p) for r in records for p in r["masked"]}
    assert masked and masked <= {frozenset(("l000", "l001")), frozenset(("l002", "l003"))}

    out = trainer.save_final_model(tmp_path / "final")
    loaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    listing = tiny_listings(3, seed=7)
    expected = trainer.model.encode(images=listing["image"], texts=listing["title"])
    got = loaded.encode(images=listing["image"], texts=listing["title"])
    assert torch.allclose(expected, got, atol=1e-5)
    summary = json.loads((Path(out) / "agcl_training.json").read_text())
    assert (
        summary["resolved_weighting"] == "none"
        and summary["resolved_false_negatives"] == "attributes"
        and summary["global_step"] == 3
    )


@pytest.mark.parametrize(
    ("family", "adapted", "untouched"),
    [
        ("vlm", "vlm.language_model.layers.0.self_attn.q_proj.weight", "vlm.visual."),
        ("dual", "text_model.encoder.layer.0.attention.self.query.weight", "vision_model."),
    ],
)
def test_lora_is_merged_into_the_saved_checkpoint(tmp_path, family, adapted, untouched):
    from safetensors import safe_open
    from tiny_models import tiny_model
    from transformers import AutoModel

    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = tiny_config(
        tmp_path, max_steps=2, learning_rate=1e-2, per_device_train_batch_size=4, use_lora=True
    )
    trainer = AGCLTrainer(model, config, train_dataset=tiny_listings(8))
    assert type(trainer.model).__name__ == "PeftModel"
    lora_modules = [n for n, _ in trainer.model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and not any("pooler" in n for n in lora_modules)
    trainer.train()
    out = trainer.save_final_model(tmp_path / "final")
    with safe_open(Path(out) / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert not any("lora" in k for k in keys)
        assert not torch.equal(f.get_tensor(adapted), before[adapted])
        frozen = next(k for k in keys if k.startswith(untouched))
        assert torch.equal(f.get_tensor(frozen), before[frozen])
    loaded = AutoModel.from_pretrained(out, trust_remote_code=True)
    emb = loaded.encode(images=tiny_listings(2)["image"], texts=["a", "b"])
    assert emb.shape == (2, loaded.config.embed_dim) and torch.isfinite(emb).all()


# ------------------------------------------------------------------------------- resume

RESUME_SCRIPT = """
import os, signal, sys
sys.path[:0] = [{here!r}, {tests!r}, {repo!r}]
import torch
from transformers import TrainerCallback
from test_agcl_trainer import tiny_config
from tiny_models import tiny_dual_model, tiny_listings
from trainers.agcl.trainer import AGCLTrainer
from pathlib import Path

mode, out = sys.argv[1], Path(sys.argv[2])

class KillAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if mode == "kill" and state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)

config = tiny_config(
    out.parent, output_dir=str(out), max_steps=8, save_strategy="steps", save_steps=2,
    per_device_train_batch_size=4, train_text_layers=2, batch_sampler="attributes",
    save_total_limit=None,
)
model = tiny_dual_model()  # dropout on: the resumed run must replay the RNG too
data = tiny_listings(12)
trainer = AGCLTrainer(model, config, train_dataset=data, callbacks=[KillAfterCheckpoint()])
trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
trainer.save_final_model(out / "final")
"""


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    """SIGKILL right after the step-4 checkpoint (mid second epoch), resume in a fresh process."""
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    here = Path(__file__).resolve().parent
    script.write_text(
        textwrap.dedent(RESUME_SCRIPT.format(here=str(here), tests=str(TESTS), repo=str(REPO)))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(mode, out):
        return subprocess.run(
            [sys.executable, str(script), mode, str(out)], env=env, capture_output=True, text=True
        )

    full = run("full", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run("kill", tmp_path / "resumed")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()
    assert not (tmp_path / "resumed" / "final").exists()
    resumed = run("resume", tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    init = load_file(tmp_path / "full" / "checkpoint-2" / "model.safetensors")
    assert a.keys() == b.keys()
    moved = [k for k in a if not torch.equal(a[k], init[k])]
    assert len(moved) > 10  # training did change the weights after step 2
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


# ------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory):
    from datasets import DatasetDict

    path = tmp_path_factory.mktemp("catalog")
    DatasetDict({"train": tiny_listings(16)}).save_to_disk(str(path))
    return path


def test_cli_trains_and_writes_a_checkpoint(tmp_path, tiny_catalog):
    from tiny_models import saved_tiny_checkpoint
    from transformers import AutoModel

    from afmrl.cli import main

    out = tmp_path / "enc"
    argv = [
        "train-encoder", "--model", saved_tiny_checkpoint("dual"), "--data", str(tiny_catalog),
        "--out", str(out), "--batch-size", "8", "--max-steps", "2", "--save-steps", "1",
        "--no-progress", "--batch-sampler", "attributes", "--attributes", "teacher",
        "--threads", "1",
    ]  # fmt: skip
    threads, tiny = torch.get_num_threads(), torch.tensor([1e-39])
    assert main(argv) == 0
    # The run used 1 thread and flush-denormal mode, and put both back.
    assert torch.get_num_threads() == threads and (tiny * 1).item() != 0.0
    assert not Path(f"{out}.checkpoints").exists()  # removed after the final save
    summary = json.loads((out / "agcl_training.json").read_text())
    assert summary["text_attributes_column"] == "teacher_attributes"
    assert summary["batch_sampler"] == "attributes" and summary["global_step"] == 2
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.encode(texts=["red mug"], attributes=["colour: red"]).shape[0] == 1


def test_cli_errors(tmp_path, tiny_catalog, capsys):
    from tiny_models import saved_tiny_checkpoint

    from afmrl.cli import main

    model = saved_tiny_checkpoint("dual")
    common = ["train-encoder", "--model", model, "--data", str(tiny_catalog), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "no checkpoint-* folder" in capsys.readouterr().err.splitlines()[-1]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    assert main([*common, "--out", str(tmp_path / "b")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "c"), "--batch-size", "64"]) == 2
    assert "fewer than one global batch" in capsys.readouterr().err
    bad_column = ["--out", str(tmp_path / "d"), "--batch-size", "8", "--attributes", "extracted"]
    assert main([*common, *bad_column]) == 2
    assert "'extracted'" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "e"), "--loss", "triplet"]) == 2
    assert "--loss: invalid choice: 'triplet'" in capsys.readouterr().err
