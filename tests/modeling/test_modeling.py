"""AFMRLConfig / AFMRLModel / AFMRLProcessor on tiny real models (timm, BERT, Qwen2-VL), offline.

Numbers are checked against independent references (numpy loops, sentence-transformers' own
MiniLM pipeline, the backbones' own weights), and every public entry point is exercised on the
awkward inputs real catalogues contain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import (
    TITLES,
    chat_tokenizer,
    minilm_path,
    sample_images,
    tiny_bert_config,
    tiny_dual_model,
    tiny_extractor,
    tiny_qwen2_vl_config,
    tiny_qwen2_vl_processor,
    tiny_vlm_model,
)

from modeling_afmrl import AFMRLConfig, AFMRLModel, AFMRLProcessor
from modeling_afmrl.attributes import ATTRIBUTE_FORMAT_VERSION, render_attributes
from modeling_afmrl.modeling_afmrl import info_nce, last_token_pool, mean_pool

torch.set_num_threads(1)
FAMILIES = ("dual", "vlm")


@pytest.fixture(scope="module")
def models():
    return {"dual": tiny_dual_model(), "vlm": tiny_vlm_model()}


@pytest.fixture(scope="module")
def extractor_model():
    return tiny_dual_model(extractor=True, seed=3)


def unit_norm(emb: torch.Tensor) -> bool:
    return bool(torch.isfinite(emb).all()) and torch.allclose(
        emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_are_the_embedded_default_architecture():
    config = AFMRLConfig()
    assert config.encoder_type == "dual"
    assert config.vision_config.model_type == "timm_wrapper"
    assert config.vision_config.architecture == "efficientnet_lite0"
    assert (config.text_config.model_type, config.text_config.hidden_size) == ("bert", 384)
    assert config.embed_dim == 256 and config.matryoshka_dims == [256, 128, 64, 32]
    assert config.text_pooling == "mean"
    assert config.projection_dim == 256  # what sentence-transformers reads
    assert config.attribute_format_version == ATTRIBUTE_FORMAT_VERSION
    assert math.isclose(config.logit_scale_init, math.log(1 / 0.07))


def test_config_round_trip_rebuilds_sub_configs_through_autoconfig(tmp_path):
    tok = chat_tokenizer()
    extractor = tiny_qwen2_vl_config(tok)
    config = AFMRLConfig(
        text_config=tiny_bert_config(),
        extractor_config=extractor,
        embed_dim=48,
        matryoshka_dims=[16, 48, 24],
        fusion="mlp",
    )
    config.save_pretrained(tmp_path)
    loaded = AFMRLConfig.from_pretrained(tmp_path)
    assert type(loaded.extractor_config).__name__ == "Qwen2VLConfig"
    assert loaded.extractor_config.image_token_id == extractor.image_token_id
    assert loaded.extractor_config.text_config.hidden_size == 32
    assert loaded.text_config.hidden_size == 32 and loaded.text_config.num_hidden_layers == 2
    assert loaded.matryoshka_dims == [48, 24, 16]
    assert (loaded.fusion, loaded.embed_dim) == ("mlp", 48)


def test_vlm_config_defaults_to_the_language_model_width():
    vlm = tiny_qwen2_vl_config(chat_tokenizer())
    config = AFMRLConfig(encoder_type="vlm", vlm_config=vlm)
    assert config.embed_dim == 32 and config.text_pooling == "last"
    assert config.vision_config is None and config.text_config is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder_type": "triple"}, "encoder_type"),
        ({"fusion": "concat"}, "fusion"),
        ({"encoder_type": "vlm"}, "vlm_config"),
        ({"matryoshka_dims": [512]}, "matryoshka_dims"),
        ({"matryoshka_dims": [0, 64]}, "matryoshka_dims"),
        ({"embed_dim": -3}, "embed_dim"),
        ({"text_pooling": "max"}, "text_pooling"),
    ],
)
def test_config_rejects_bad_fields_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AFMRLConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# pure functions vs independent references
# ---------------------------------------------------------------------------------------------


def test_pooling_matches_python_loops():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for b in range(3):
        idx = [i for i in range(5) if mask[b, i]]
        assert torch.allclose(mean_pool(hidden, mask)[b], hidden[b, idx].mean(0), atol=1e-6)
        assert torch.equal(last_token_pool(hidden, mask)[b], hidden[b, idx[-1]])


def test_info_nce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6))
    b = rng.normal(size=(4, 6))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    scale = 7.5
    sims = scale * a @ b.T
    row = -np.mean([sims[i, i] - np.log(np.exp(sims[i]).sum()) for i in range(4)])
    col = -np.mean([sims[i, i] - np.log(np.exp(sims[:, i]).sum()) for i in range(4)])
    got = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(scale))
    assert got.item() == pytest.approx((row + col) / 2, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_encode_equals_one_by_one(models, family):
    model = models[family]
    images = sample_images()
    attrs = [
        {"category": "mug", "colour": "dark blue"},
        None,
        "colour: navy; count: 2",
        {},
        None,
        None,
    ]
    for kwargs in (
        {"images": images, "texts": TITLES, "attributes": attrs},
        {"texts": TITLES},
        {"images": images},
    ):
        batched = model.encode(**kwargs, batch_size=4)
        single = torch.cat(
            [model.encode(**{k: [v[i]] for k, v in kwargs.items()}) for i in range(len(TITLES))]
        )
        assert batched.shape == (len(TITLES), model.config.embed_dim)
        assert unit_norm(batched)
        assert (batched - single).abs().max().item() < 1e-4, kwargs.keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_awkward_images_and_texts_encode(models, family, tmp_path):
    model = models[family]
    rng = np.random.default_rng(1)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    images = [
        *sample_images(),  # RGB, RGBA, P, L, CMYK, I;16
        Image.new("RGB", (1, 1), "red"),
        Image.new("RGB", (4000, 3000), "navy"),
        Image.new("RGB", (600, 2), "white"),  # extreme aspect ratio
        path,
        str(path),
        rng.integers(0, 255, (20, 24, 3), dtype=np.uint8),  # HWC uint8
        torch.rand(3, 20, 24),  # CHW float in [0, 1]
    ]
    titles = ["", "x" * 10_000, "Кружка синяя", "青いマグカップ", "كوب أزرق", "🙂 mug", *["t"] * 7]
    emb = model.encode(images=images, texts=titles[: len(images)])
    assert emb.shape == (len(images), model.config.embed_dim) and unit_norm(emb)
    assert unit_norm(model.encode(texts=titles))
    batch = torch.rand(2, 3, 16, 16)  # a 4-D tensor is a batch
    assert model.encode(images=batch).shape[0] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_equivalent_image_forms_give_equal_embeddings(models, family, tmp_path):
    model = models[family]
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    forms = [Image.fromarray(pixels), pixels, torch.from_numpy(pixels).permute(2, 0, 1), path]
    emb = model.encode(images=forms)
    assert (emb - emb[0]).abs().max().item() < 1e-6
    # Transparency is flattened onto white; 16-bit images are scaled to 8 bits.
    clear = Image.new("RGBA", (32, 32), (10, 200, 30, 0))
    grey8 = rng.integers(0, 255, (24, 24), dtype=np.uint8)
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)
    emb = model.encode(
        images=[clear, Image.new("RGB", (32, 32), "white"), grey16, Image.fromarray(grey8)]
    )
    assert (emb[0] - emb[1]).abs().max().item() < 1e-6
    assert (emb[2] - emb[3]).abs().max().item() < 1e-6


def test_datasets_columns_are_batches(models):
    """A ``datasets`` column (not a list in datasets 5) is a batch of images / titles."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(3)
    imgs = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(3)]
    titles = ["red mug", "blue cap", "green bottle"]
    ds = Dataset.from_dict(
        {"image": imgs, "title": titles},
        features=Features({"image": ImageFeature(), "title": Value("string")}),
    )
    model = models["dual"]
    from_columns = model.encode(images=ds["image"], texts=ds["title"])
    from_lists = model.encode(images=imgs, texts=titles)
    assert from_columns.shape == (3, model.config.embed_dim)
    assert (from_columns - from_lists).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_long_titles_are_truncated_not_rejected(models, family):
    model = models[family]
    head = "navy mug " * 400
    a, b = model.encode(texts=[head + "red", head + "green"])
    assert (a - b).abs().max().item() < 1e-6  # the tails lie beyond text_max_tokens


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([Image.new("RGB", (8, 8)), 42], TypeError, r"images\[1\].*int"),
        ([{"width": 3}], TypeError, r"images\[0\]"),
        ([np.zeros((5, 6, 7), dtype=np.uint8)], ValueError, r"images\[0\].*shape"),
        ([np.zeros((0, 4, 3), dtype=np.uint8)], ValueError, r"images\[0\].*empty"),
        ([np.full((4, 4), np.nan)], ValueError, r"images\[0\].*NaN"),
        (["no/such/photo.jpg"], FileNotFoundError, "no/such/photo.jpg"),
    ],
)
def test_non_images_get_clear_errors(models, images, error, match):
    with pytest.raises(error, match=match):
        models["dual"].encode(images=images)


def test_encode_argument_errors(models):
    model = models["dual"]
    with pytest.raises(ValueError, match="different numbers"):
        model.encode(images=sample_images()[:2], texts=TITLES[:3])
    with pytest.raises(ValueError, match="Matryoshka"):
        model.encode(texts=["a"], truncate_dim=50)
    with pytest.raises(ValueError, match="needs images, texts or attributes"):
        model.encode()
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model.encode(texts=["a", 3])
    with pytest.raises(TypeError, match=r"attributes\[0\]"):
        model.encode(texts=["a"], attributes=[3.5])


def test_truncate_dim_renormalises_the_prefix(models):
    model = models["dual"]
    full = model.encode(texts=TITLES)
    short = model.encode(texts=TITLES, truncate_dim=32)
    expected = full[:, :32] / full[:, :32].norm(dim=-1, keepdim=True)
    assert short.shape == (len(TITLES), 32) and torch.allclose(short, expected, atol=1e-6)


def test_attributes_are_appended_in_the_attribute_format(models):
    model = models["dual"]
    attrs = {"Color": "Dark Blue", "category": "mug"}
    text = f"Navy mug{model.processor.attribute_separator}{render_attributes(attrs)}"
    assert text.endswith("[SEP] category: mug; colour: navy")
    a = model.encode(texts=["Navy mug"], attributes=[attrs])
    b = model.encode(texts=[text])
    c = model.encode(texts=["Navy mug"], attributes=["colour: navy; category: mug"])
    assert (a - b).abs().max().item() < 1e-6 and (a - c).abs().max().item() < 1e-6
    assert (a - model.encode(texts=["Navy mug"])).abs().max().item() > 1e-3


def test_dual_fused_embedding_lives_in_the_single_modality_space(models):
    model = models["dual"]
    images = sample_images()
    image, text = model.encode(images=images), model.encode(texts=TITLES)
    fused = model.encode(images=images, texts=TITLES)
    expected = torch.nn.functional.normalize(image + text, dim=-1)
    assert (fused - expected).abs().max().item() < 1e-5


def test_mlp_fusion_starts_as_the_mean():
    model = tiny_dual_model(fusion="mlp")
    images = sample_images()[:3]
    fused = model.encode(images=images, texts=TITLES[:3])
    mean = torch.nn.functional.normalize(
        model.encode(images=images) + model.encode(texts=TITLES[:3]), dim=-1
    )
    assert (fused - mean).abs().max().item() < 1e-5
    assert all(float(p.detach().abs().sum()) == 0 for p in model.fusion.mlp[-1].parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_methods_forward_and_loss(models, family):
    model = models[family]
    processor = model.processor
    images, titles = sample_images()[:4], TITLES[:4]
    text_in = processor(text=titles)
    image_in = processor(images=images)
    both_in = processor(images=images, text=titles)
    text_out = model.get_text_features(**text_in)
    image_out = model.get_image_features(**image_in)
    assert type(text_out).__name__ == "BaseModelOutputWithPooling"
    assert torch.allclose(text_out.pooler_output, model.encode(texts=titles), atol=1e-5)
    assert torch.allclose(image_out.pooler_output, model.encode(images=images), atol=1e-5)

    pos = {f"pos_{k}": v for k, v in processor(images=images[::-1], text=titles[::-1]).items()}
    model.train()
    try:
        out = model(**both_in, **pos)
        out.loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    a = model.encode(images=images, texts=titles)
    b = model.encode(images=images[::-1], texts=titles[::-1])
    scale = math.exp(model.config.logit_scale_init)
    reference = np.mean(
        [
            info_nce(
                a[:, :d] / a[:, :d].norm(dim=-1, keepdim=True),
                b[:, :d] / b[:, :d].norm(dim=-1, keepdim=True),
                torch.tensor(scale),
            ).item()
            for d in model.config.matryoshka_dims
        ]
    )
    # train() enables dropout in BERT, so compare the loss in eval mode.
    with torch.no_grad():
        eval_loss = model(**both_in, **pos).loss.item()
    assert eval_loss == pytest.approx(reference, rel=1e-4)
    assert out.logits.shape == (4, 4) and out.embeddings.shape == (4, model.config.embed_dim)
    with pytest.raises(ValueError, match="second view"):
        model(**both_in, return_loss=True)


def test_loss_trains_the_projections_and_temperature(models):
    model = models["dual"]
    processor = model.processor
    batch = processor(images=sample_images()[:4], text=TITLES[:4])
    pos = {f"pos_{k}": v for k, v in processor(text=TITLES[:4]).items()}
    model.zero_grad(set_to_none=True)
    model(**batch, **pos).loss.backward()
    grads = {
        "logit_scale": model.logit_scale.grad,
        "vision_projection": model.vision_projection.weight.grad,
        "text_projection": model.text_projection.weight.grad,
        "text_tower": model.text_model.embeddings.word_embeddings.weight.grad,
    }
    model.zero_grad(set_to_none=True)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_encode_restores_train_modes_and_builds_no_graph(models):
    model = models["dual"]
    model.train()
    model.vision_model.eval()  # e.g. a frozen tower kept in eval mode by a trainer
    try:
        emb = model.encode(images=sample_images()[:2], texts=TITLES[:2])
        assert model.training and model.text_model.training and not emb.requires_grad
        assert not model.vision_model.training and not model.vision_model.timm_model.training
    finally:
        model.eval()


# ---------------------------------------------------------------------------------------------
# save / load in process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(models, family, tmp_path):
    model = models[family]
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names and not any(
        n.endswith((".bin", ".pt", ".pth")) for n in names
    )
    assert {"processor_config.json", "modules.json", "sentence_bert_config.json"} <= names
    if family == "vlm":
        assert (tmp_path / "encoder_processor" / "processor_config.json").is_file()
    loaded = AFMRLModel.from_pretrained(tmp_path).eval()
    images = sample_images()
    for kwargs in ({"images": images, "texts": TITLES}, {"texts": TITLES}, {"images": images}):
        assert (loaded.encode(**kwargs) - model.encode(**kwargs)).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="safetensors"):
        model.save_pretrained(tmp_path / "bin", safe_serialization=False)


def test_processor_round_trip_keeps_nested_processors(tmp_path):
    _, extractor_processor = tiny_extractor()
    processor = AFMRLProcessor(
        encoder_type="vlm",
        encoder_processor=tiny_qwen2_vl_processor(chat_tokenizer()),
        extractor_processor=extractor_processor,
        text_max_tokens=40,
    )
    processor.save_pretrained(tmp_path)
    loaded = AFMRLProcessor.from_pretrained(tmp_path)
    assert type(loaded.encoder_processor).__name__ == "Qwen2VLProcessor"
    assert type(loaded.extractor_processor).__name__ == "Qwen2VLProcessor"
    assert (loaded.text_max_tokens, loaded.encoder_type) == (40, "vlm")
    images = sample_images()[:3]
    for a, b in (
        (processor(images=images, text=TITLES[:3]), loaded(images=images, text=TITLES[:3])),
        (
            processor.extractor_inputs(images, TITLES[:3]),
            loaded.extractor_inputs(images, TITLES[:3]),
        ),
    ):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# attribute extraction
# ---------------------------------------------------------------------------------------------


def forcing(tokenizer, texts: list[str], prompt_length: int):
    """``prefix_allowed_tokens_fn`` making greedy ``generate`` write exactly ``texts[i]``."""
    targets = [
        tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for t in texts
    ]

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        step = input_ids.shape[-1] - prompt_length
        target = targets[batch_id]
        return [target[min(step, len(target) - 1)]]

    return allowed


def test_extract_attributes_runs_on_the_tiny_extractor(extractor_model):
    images, titles = sample_images(), TITLES
    attrs = extractor_model.extract_attributes(images, titles, max_new_tokens=6, batch_size=4)
    assert isinstance(attrs, list) and len(attrs) == len(titles)
    assert all(isinstance(a, dict) for a in attrs)
    # An untrained extractor writes junk: it must come back as {} with valid=False, not raise.
    tokenizer = extractor_model.processor.extractor_processor.tokenizer
    banned = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
    banned += tokenizer("\n", add_special_tokens=False)["input_ids"]
    junk = {"max_new_tokens": 8, "suppress_tokens": banned, "return_raw": True}
    result = extractor_model.extract_attributes(images, titles, batch_size=4, **junk)
    assert len(result.raw) == len(result.valid) == len(titles)
    assert all(r.strip() for r in result.raw)
    assert result.valid == [False] * len(titles) and result.attributes == [{}] * len(titles)
    one_by_one = extractor_model.extract_attributes(images, titles, batch_size=1, **junk)
    assert one_by_one.raw == result.raw  # left padding does not change greedy outputs


def test_extract_attributes_parses_valid_and_malformed_generations(extractor_model):
    processor = extractor_model.processor
    tokenizer = processor.extractor_processor.tokenizer
    images, titles = sample_images()[:4], TITLES[:4]
    generations = [
        "category: mug; color: Dark Blue; count: 2",
        "colour navy;; ???",
        "category: mug; category: cup",
        "size: 350ml",
    ]
    prompt_length = processor.extractor_inputs(images, titles)["input_ids"].shape[1]
    result = extractor_model.extract_attributes(
        images,
        titles,
        return_raw=True,
        batch_size=4,
        max_new_tokens=30,
        prefix_allowed_tokens_fn=forcing(tokenizer, generations, prompt_length),
    )
    assert result.raw == generations
    assert result.valid == [True, False, False, True]
    assert result.attributes == [
        {"category": "mug", "colour": "navy", "count": "2"},
        {},
        {},
        {"size": "350ml"},
    ]
    partial = extractor_model.extract_attributes(
        images,
        titles,
        batch_size=4,
        keep_partial=True,
        max_new_tokens=30,
        prefix_allowed_tokens_fn=forcing(tokenizer, generations, prompt_length),
    )
    assert partial[2] == {"category": "mug"}


def test_extract_attributes_without_extractor_is_a_clear_error(models):
    with pytest.raises(ValueError, match="no attribute extractor"):
        models["dual"].extract_attributes(sample_images()[:1], ["mug"])


def test_extractor_weights_survive_save_load_with_tied_embeddings(extractor_model, tmp_path):
    assert extractor_model.extractor.config.tie_word_embeddings
    extractor_model.save_pretrained(tmp_path)
    loaded = AFMRLModel.from_pretrained(tmp_path).eval()
    head = loaded.extractor.lm_head.weight
    assert head.data_ptr() == loaded.extractor.model.language_model.embed_tokens.weight.data_ptr()
    original = extractor_model.extractor.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in loaded.extractor.state_dict().items())
    images = sample_images()[:3]
    a = extractor_model.extract_attributes(images, TITLES[:3], return_raw=True, max_new_tokens=5)
    b = loaded.extract_attributes(images, TITLES[:3], return_raw=True, max_new_tokens=5)
    assert a.raw == b.raw


# ---------------------------------------------------------------------------------------------
# from_backbones
# ---------------------------------------------------------------------------------------------


def test_from_backbones_loads_pretrained_minilm_and_timm_towers(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, TimmWrapperConfig

    timm_dir = tmp_path / "timm"
    torch.manual_seed(0)
    # A timm folder keeps its preprocessing in config.json's pretrained_cfg.
    scaling = {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}
    pretrained_cfg = {"input_size": (3, 64, 64), "crop_pct": 1.0, "interpolation": "bicubic"}
    timm_config = TimmWrapperConfig(
        architecture="efficientnet_lite0", pretrained_cfg={**pretrained_cfg, **scaling}
    )
    timm_tower = AutoModel.from_config(timm_config)
    timm_tower.save_pretrained(timm_dir)

    model = AFMRLModel.from_backbones(vision=timm_dir, text=minilm_path(), embed_dim=64).eval()
    assert model.config.text_config.hidden_size == 384
    saved = timm_tower.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.vision_model.state_dict().items())
    minilm = AutoModel.from_pretrained(minilm_path()).state_dict()
    assert all(torch.equal(v, minilm[k]) for k, v in model.text_model.state_dict().items())

    # The text tower reproduces sentence-transformers' all-MiniLM-L6-v2 sentence embeddings.
    reference = SentenceTransformer(minilm_path()).encode(TITLES, convert_to_tensor=True)
    inputs = model.processor(text=TITLES)
    with torch.no_grad():
        hidden = model.get_text_features(**inputs).last_hidden_state
    ours = torch.nn.functional.normalize(mean_pool(hidden, inputs["attention_mask"]), dim=-1)
    assert (ours - reference).abs().max().item() < 1e-5
    # The image processor is the tower's own, and the config records its preprocessing.
    assert model.processor.image_processor.data_config["input_size"] == (3, 64, 64)
    assert model.config.image_size == 64
    assert model.config.image_mean == pytest.approx([127 / 255] * 3)
    assert unit_norm(model.encode(images=sample_images(), texts=TITLES))


def test_from_backbones_takes_the_towers_of_a_clip_checkpoint(tmp_path):
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    clip_config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 128,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(clip_config).eval()
    clip_dir = tmp_path / "clip"
    clip.save_pretrained(clip_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(clip_dir)

    model = AFMRLModel.from_backbones(vision=clip_dir, text=clip_dir, embed_dim=16).eval()
    assert type(model.vision_model).__name__ == "CLIPVisionModel"
    assert type(model.text_model).__name__ == "CLIPTextModel"
    assert model.config.text_pooling == "pooler"  # CLIP's EOS pooling
    reference = clip.state_dict()
    for prefix, tower in (("vision_model", model.vision_model), ("text_model", model.text_model)):
        loaded = tower.state_dict()
        expected = {k: v for k, v in reference.items() if k.startswith(f"{prefix}.")}
        assert len(loaded) == len(expected)
        for key, value in loaded.items():
            key = key if key.startswith(f"{prefix}.") else f"{prefix}.{key}"
            assert torch.equal(value, expected[key]), key
    # Same pooled text features as CLIP's own text tower (before either projection).
    inputs = model.processor(text=TITLES[:3])
    with torch.no_grad():
        ours = model.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        theirs = clip.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert unit_norm(model.encode(images=sample_images()[:3], texts=TITLES[:3]))


def test_from_backbones_vlm_and_extractor_from_folders(tmp_path):
    from transformers import AutoModel

    tokenizer = chat_tokenizer()
    folders = {}
    for name, seed in (("vlm", 1), ("extractor", 2)):
        model, processor = tiny_extractor(seed)
        folders[name] = (tmp_path / name, model)
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    model = AFMRLModel.from_backbones(vlm=folders["vlm"][0], extractor=folders["extractor"][0])
    assert model.config.encoder_type == "vlm" and model.config.embed_dim == 32
    base = AutoModel.from_pretrained(folders["vlm"][0]).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in model.vlm.state_dict().items())
    expected = folders["extractor"][1].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.extractor.state_dict().items())
    assert model.processor.encoder_processor.tokenizer.get_vocab() == tokenizer.get_vocab()

    model.save_pretrained(tmp_path / "afmrl")
    loaded = AFMRLModel.from_pretrained(tmp_path / "afmrl").eval()
    images = sample_images()[:3]
    assert (
        loaded.encode(images=images, texts=TITLES[:3])
        - model.eval().encode(images=images, texts=TITLES[:3])
    ).abs().max().item() < 1e-6
    assert isinstance(loaded.extract_attributes(images, TITLES[:3], max_new_tokens=4), list)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vision": "a", "vlm": "b"}, "either vlm or vision"),
        ({"vision": "a"}, "both vision and text"),
        ({"vision": 3, "text": "b"}, "vision must be"),
    ],
)
def test_from_backbones_argument_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AFMRLModel.from_backbones(**kwargs)


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------


def test_vlm_encoder_is_lora_ready():
    from peft import LoraConfig, get_peft_model

    model = tiny_vlm_model(extractor=True)
    before = model.encode(images=sample_images()[:2], texts=TITLES[:2])
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=model.encoder_lora_target_modules())
    )
    lora = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n and ".vlm.language_model." in n for n in lora)
    # LoRA B starts at zero: same embeddings, through the wrapper.
    after = peft_model.encode(images=sample_images()[:2], texts=TITLES[:2])
    assert (after - before).abs().max().item() < 1e-6

    processor = model.processor
    batch = processor(images=sample_images()[:3], text=TITLES[:3])
    pos = {f"pos_{k}": v for k, v in processor(text=TITLES[:3]).items()}
    peft_model.train()
    peft_model(**batch, **pos).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    frozen = model.vlm.language_model.layers[0].self_attn.q_proj.base_layer.weight
    assert frozen.grad is None
