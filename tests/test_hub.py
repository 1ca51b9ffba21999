"""``afmrl push`` and its cards: the Hub patched at its boundary (``HfApi.create_repo`` /
``create_commit``), every committed file list asserted, nothing sent anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import FakeHub, saved_tiny_checkpoint, tiny_catalog

METRICS = {
    "recall@1": 0.61, "recall@5": 0.93, "recall@10": 0.97, "map@10": 0.70, "mrr": 0.75,
    "ndcg@10": 0.78, "hard_recall@1": 0.66, "num_queries": 10, "num_gallery": 20,
    "config": {"split": "test", "attributes": "none"},
}  # fmt: skip


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_sent_anywhere")
    return FakeHub.install(monkeypatch)


def _metrics_file(tmp_path) -> str:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(METRICS))
    return str(path)


def _checkpoint_files(checkpoint: str) -> set[str]:
    root = Path(checkpoint)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_push_commits_the_model_dataset_and_space(hub, tmp_path, capsys):
    from datasets import get_dataset_config_names, load_dataset, load_from_disk
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    from afmrl.cli import main
    from afmrl.data.catalog import _load_hub

    checkpoint, data = saved_tiny_checkpoint("dual"), tiny_catalog()
    before = {p: p.read_bytes() for p in Path(checkpoint).rglob("*") if p.is_file()}
    code = main([
        "push", "--checkpoint", checkpoint, "--repo-id", "me/afmrl-tiny",
        "--metrics", _metrics_file(tmp_path), "--data", data, "--dataset-repo", "me/tiny-catalog",
        "--space-repo", "me/tiny-demo", "--private",
    ])  # fmt: skip
    assert code == 0
    assert hub.repos == ["me/afmrl-tiny", "me/tiny-catalog", "me/tiny-demo"]
    types = [(k["repo_type"], k["private"], k.get("space_sdk")) for k in hub.repo_kwargs]
    assert types == [("model", True, None), ("dataset", True, None), ("space", True, "gradio")]
    model, dataset, space = hub.commits
    assert [c["repo_type"] for c in hub.commits] == ["model", "dataset", "space"]

    # the model: exactly the checkpoint's files and the card; the folder itself is untouched
    assert set(model["files"]) == _checkpoint_files(checkpoint) | {"README.md"}
    assert {p: p.read_bytes() for p in Path(checkpoint).rglob("*") if p.is_file()} == before
    card_path = tmp_path / "README.md"
    card_path.write_bytes(model["files"]["README.md"])
    results = metadata_load(card_path)["model-index"][0]["results"][0]
    assert results["dataset"] == {"name": "me/tiny-catalog", "type": "me/tiny-catalog",
                                  "split": "test"}  # fmt: skip
    assert {m["type"]: m["value"] for m in results["metrics"]} == {
        k: METRICS[k] for k in ("recall@1", "recall@5", "recall@10", "map@10", "mrr", "ndcg@10",
                                "hard_recall@1")
    }  # fmt: skip
    card = ModelCard.load(card_path)
    assert card.data.library_name == "transformers" and "afmrl" in card.data.tags
    assert "trust_remote_code=True" in card.text and "me/afmrl-tiny" in card.text

    # the dataset: one parquet per split under data/, images embedded, and its card
    splits = ["train", "validation_query", "validation_gallery", "query", "gallery"]
    parquet = {f"data/{s}-00000-of-00001.parquet" for s in splits}
    assert set(dataset["files"]) == parquet | {"README.md"}
    for name in parquet:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(dataset["files"][name])
    (tmp_path / "README.md").write_bytes(dataset["files"]["README.md"])
    # the folder stands in for the dataset repository: its card's `configs` map files to splits
    assert sorted(get_dataset_config_names(str(tmp_path))) == ["default", "pairs"]
    assert list(load_dataset(str(tmp_path), "pairs")) == ["train"]
    reloaded = _load_hub(str(tmp_path), revision=None, cache_dir=str(tmp_path / "cache"))
    assert sorted(reloaded) == sorted(splits)
    original = load_from_disk(data)
    for name in splits:
        assert reloaded[name].column_names == original[name].column_names
        assert reloaded[name]["listing_id"] == original[name]["listing_id"]
    assert reloaded["gallery"][0]["image"].tobytes() == original["gallery"][0]["image"].tobytes()
    assert reloaded["train"][0]["pos_image"].size == original["train"][0]["pos_image"].size

    # the Space: app, the packages the demo imports, requirements, its config and README
    files = set(space["files"])
    assert {"app.py", "requirements.txt", "space.json", "README.md"} <= files
    assert "afmrl/cli/demo.py" in files and "modeling_afmrl/modeling_afmrl.py" in files
    assert not any(f.startswith(("tests/", "benchmarks/", "outputs/")) for f in files)
    assert not any("__pycache__" in f for f in files)
    assert json.loads(space["files"]["space.json"]) == {
        "MODEL_ID": "me/afmrl-tiny", "DATA_ID": "me/tiny-catalog"
    }  # fmt: skip
    header = space["files"]["README.md"].decode()
    assert "sdk: gradio" in header and "app_file: app.py" in header and "- me/afmrl-tiny" in header
    requirements = space["files"]["requirements.txt"].decode().splitlines()
    assert any(r.startswith("gradio") for r in requirements)
    assert any(r.startswith("torch") for r in requirements)
    assert not any("extra ==" in r for r in requirements)
    printed = capsys.readouterr().out
    assert printed.count("[push] ") == 3
    _space_starts_from_its_own_files(space["files"], tmp_path / "space")


def _space_starts_from_its_own_files(files: dict[str, bytes], folder: Path) -> None:
    """The Space's files alone (this checkout's editable install hidden) build the demo's
    command line: ``python app.py --help`` from the Space's folder."""
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    code = (
        "import os, runpy, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if '__editable__' not in getattr(f, '__module__', '')]\n"
        "sys.argv = ['app.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('app.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "import afmrl, trainers\n"
        "print('FROM', os.path.dirname(os.path.dirname(afmrl.__file__)),\n"
        "      os.path.dirname(os.path.dirname(trainers.__file__)))\n"
        "sys.exit(status)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: afmrl demo" in done.stdout
    assert f"FROM {folder} {folder}" in done.stdout, done.stdout[-500:]


def test_model_only_push_without_metrics_says_not_evaluated(hub, tmp_path):
    from afmrl.cli import main

    checkpoint = saved_tiny_checkpoint("dual")
    assert main(["push", "--checkpoint", checkpoint, "--repo-id", "me/afmrl-tiny"]) == 0
    (commit,) = hub.commits
    card = commit["files"]["README.md"].decode()
    assert "model-index" not in card and "Not evaluated yet" in card


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--repo-id", "no-namespace"], "give it as ORG/NAME"),
        (["--repo-id", "me/bad name"], "--repo-id 'me/bad name'"),
        (["--repo-id", "me/x", "--data", "{data}"], "--data and --dataset-repo go together"),
        (["--repo-id", "me/x", "--metrics", "{missing}"], "no such file"),
        (["--repo-id", "me/x", "--metrics", "{notmetrics}"], "not an `afmrl evaluate` metrics"),
    ],
)
def test_bad_arguments_are_one_line_before_any_upload(extra, says, hub, tmp_path, capsys):
    from afmrl.cli import main

    notmetrics = tmp_path / "other.json"
    notmetrics.write_text('{"loss": 1}')
    values = {"data": tiny_catalog(), "missing": str(tmp_path / "nope.json"),
              "notmetrics": str(notmetrics)}  # fmt: skip
    argv = ["push", "--checkpoint", saved_tiny_checkpoint("dual"),
            *(a.format(**values) for a in extra)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert hub.repos == [] and hub.commits == []


def test_no_token_is_one_line(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    from afmrl.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake = FakeHub.install(monkeypatch)
    argv = ["push", "--checkpoint", saved_tiny_checkpoint("dual"), "--repo-id", "me/x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "Traceback" not in err
    assert fake.repos == []


def test_offline_hub_is_one_line(monkeypatch, capsys):
    """The real ``HfApi`` (not patched) under HF_HUB_OFFLINE=1: refused before any request."""
    import huggingface_hub.constants

    from afmrl.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_sent_anywhere")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["push", "--checkpoint", saved_tiny_checkpoint("dual"), "--repo-id", "me/x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE is set" in err[0] and "me/x" in err[0], err


@pytest.mark.parametrize(("status", "says"), [(409, "another type"), (403, "may not write")])
def test_hub_refusals_are_one_line(status, says, hub, monkeypatch, capsys):
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from afmrl.cli import main

    def refuse(api, repo_id, **kwargs):
        request = httpx.Request("POST", "http://127.0.0.1/api/repos/create")
        raise HfHubHTTPError("refused", response=httpx.Response(status, request=request))

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    argv = ["push", "--checkpoint", saved_tiny_checkpoint("dual"), "--repo-id", "me/x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "model repository me/x" in err[0], err
    assert hub.commits == []


def test_a_trained_checkpoint_gets_a_card_describing_its_training(tmp_path):
    import shutil

    from huggingface_hub import ModelCard

    from hub_cards.cards import write_model_card

    folder = tmp_path / "agcl"
    shutil.copytree(saved_tiny_checkpoint("dual"), folder)
    (folder / "agcl_training.json").write_text(
        json.dumps({"loss": "agcl", "global_step": 200, "per_device_train_batch_size": 64})
    )
    card = ModelCard.load(write_model_card(folder, repo_id=str(folder)))
    assert "stage 1 agcl (200 steps, batch 64 x 1)" in card.text
    assert f'AutoModel.from_pretrained("{folder}", trust_remote_code=True)' in card.text
    assert card.data.to_dict().get("model-index") is None  # not evaluated yet
