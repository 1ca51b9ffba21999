"""``model.push_to_hub`` goes through the normal transformers path; the Hub is patched at its boundary
(``HfApi.create_repo`` / ``HfApi.create_commit``) and the committed files are inspected."""

from __future__ import annotations

import json

import pytest
from tiny_models import FakeHub, tiny_model


@pytest.fixture
def hub(monkeypatch):
    return FakeHub.install(monkeypatch)


@pytest.mark.parametrize("family", ["dual", "vlm"])
def test_push_to_hub_commits_a_complete_remote_code_checkpoint(hub, family):
    model = tiny_model(family, extractor=family == "vlm")
    model.push_to_hub("someone/afmrl-tiny", commit_message="tiny AFMRL")

    assert hub.repos == ["someone/afmrl-tiny"]
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_id"] == "someone/afmrl-tiny" and commit["commit_message"] == "tiny AFMRL"
    files = commit["files"]
    expected = {
        "config.json",
        "model.safetensors",
        "configuration_afmrl.py",
        "modeling_afmrl.py",
        "processing_afmrl.py",
        "attributes.py",
        "modeling_timm_llava.py",
        "processor_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    }
    if family == "vlm":
        expected |= {
            "encoder_processor/processor_config.json",
            "extractor_processor/processor_config.json",
            "extractor_processor/tokenizer.json",
        }
    assert expected <= set(files), expected - set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)

    config = json.loads(files["config.json"])
    assert config["model_type"] == "afmrl" and config["architectures"] == ["AFMRLModel"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_afmrl.AFMRLConfig",
        "AutoModel": "modeling_afmrl.AFMRLModel",
    }
    processor = json.loads(files["processor_config.json"])
    assert processor["auto_map"] == {"AutoProcessor": "processing_afmrl.AFMRLProcessor"}
    assert processor["encoder_type"] == family
    # The safetensors header lists the weights of every part of the model.
    header_size = int.from_bytes(files["model.safetensors"][:8], "little")
    names = set(json.loads(files["model.safetensors"][8 : 8 + header_size])) - {"__metadata__"}
    parts = {name.split(".")[0] for name in names}
    towers = {"vision_model", "text_model", "vision_projection", "text_projection"}
    assert parts >= ({"vlm", "extractor"} if family == "vlm" else towers) | {"logit_scale"}
    assert len(names) == len(model.state_dict()) - len(model.all_tied_weights_keys)
