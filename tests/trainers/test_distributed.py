"""Two gloo processes on a global batch of 8 give the loss and gradients of one process on the 8."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import run_two_processes

from trainers.distributed import (
    gather_embeddings_and_attributes,
    gather_objects,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)

HERE = Path(__file__).resolve().parent
GLOBAL_BATCH = 8

WORKER = """
import json, os, sys
sys.path[:0] = [{here!r}, {tests!r}, {repo!r}]
import torch
import torch.distributed as dist
from safetensors.torch import save_file

torch.set_num_threads(1)
out = sys.argv[1]
from tiny_models import tiny_listings
from test_distributed import SETTINGS, build_model
from trainers.agcl.collator import AGCLCollator
from trainers.agcl.trainer import AGCLTrainer, contrastive_step

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
try:
    data = tiny_listings({n})
    # Part 1: DDP by hand, the trainer's loss step, gradients after DDP's averaging.
    model, config, loss_fn = build_model(out)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    per = len(data) // world
    rows = [data[i] for i in range(rank * per, (rank + 1) * per)]
    batch = AGCLCollator(model.processor, loss_attributes_column="teacher_attributes")(rows)
    result, ids = contrastive_step(ddp, batch, loss_fn)
    result.loss.backward()
    grads = {{n: p.grad.contiguous() for n, p in model.named_parameters() if p.requires_grad}}
    grads["loss"] = result.loss.detach().reshape(1)
    save_file(grads, os.path.join(out, f"grads-{{rank}}.safetensors"))
    json.dump(ids, open(os.path.join(out, f"ids-{{rank}}.json"), "w"))

    # Part 2: one AGCLTrainer step (SGD, lr 1) under torchrun: the sampler, the sharding, DDP.
    model, config, _ = build_model(out)
    trainer = AGCLTrainer(model, config, train_dataset=data)
    trainer.train()
    if rank == 0:
        params = {{n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}}
        params["loss"] = torch.tensor([trainer.state.log_history[0]["loss"]])
        save_file(params, os.path.join(out, "trained.safetensors"))
finally:
    dist.barrier()
    dist.destroy_process_group()
"""

#: One SGD step of lr 1 and nothing else: the weight change is minus the gradient.
SETTINGS = {
    "max_steps": 1,
    "optim": "sgd",
    "learning_rate": 1.0,
    "head_learning_rate": None,
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "warmup_steps": 0,
    "train_vision_blocks": 1,
    "train_text_layers": 1,
    "delta": 0.0,
}


def build_model(out):
    """The same tiny model, trainable set and loss in every process (dropout off)."""
    from test_agcl_trainer import no_dropout, tiny_config
    from tiny_models import tiny_dual_model

    from trainers.freezing import configure_trainable

    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = tiny_config(Path(out), per_device_train_batch_size=GLOBAL_BATCH // world, **SETTINGS)
    model = no_dropout(tiny_dual_model(seed=0))
    model, _ = configure_trainable(model, config)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model, config, config.build_loss()


def test_helpers_are_no_ops_in_one_process():
    assert not is_distributed() and world_size() == 1 and rank() == 0
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_objects(["a", None]) == ["a", None]
    q, c, attrs = gather_embeddings_and_attributes(x, x, ["a", "b", "c"])
    assert q is x and c is x and attrs == ["a", "b", "c"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    from safetensors.torch import load_file
    from tiny_models import REPO, TESTS, tiny_listings

    from trainers.agcl.collator import AGCLCollator
    from trainers.agcl.trainer import AGCLTrainer, contrastive_step

    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            WORKER.format(here=str(HERE), tests=str(TESTS), repo=str(REPO), n=GLOBAL_BATCH)
        )
    )
    out = tmp_path / "dist"
    out.mkdir()
    run_two_processes(worker, str(out), tmp_path=tmp_path)

    # The reference: one process, the same 8 rows.
    data = tiny_listings(GLOBAL_BATCH)
    model, _, loss_fn = build_model(tmp_path / "single")
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = AGCLCollator(model.processor, loss_attributes_column="teacher_attributes")(list(data))
    result, ids = contrastive_step(model, batch, loss_fn)
    result.loss.backward()
    assert result.num_masked > 0  # the twins: the filter acts on the global batch

    for r in (0, 1):
        got = load_file(out / f"grads-{r}.safetensors")
        assert abs(got.pop("loss").item() - result.loss.item()) < 1e-5
        assert got.keys() == initial.keys()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert torch.allclose(got[name], p.grad, atol=1e-5, rtol=0), name
    assert json.loads((out / "ids-0.json").read_text()) == ids  # the global batch, in order

    # The trainer: 2 x 4 under torchrun == 1 x 8 here, after one SGD step.
    trained = load_file(out / "trained.safetensors")
    model2, config2, _ = build_model(tmp_path / "single-trainer")
    trainer = AGCLTrainer(model2, config2, train_dataset=data)
    trainer.train()
    assert abs(trained.pop("loss").item() - trainer.state.log_history[0]["loss"]) < 1e-5
    for name, p in model2.named_parameters():
        if p.requires_grad:
            step = initial[name] - trained[name]  # = gradient (lr 1, plain SGD)
            assert torch.allclose(trained[name], p.detach(), atol=1e-5, rtol=0), name
            assert torch.allclose(step, model.get_parameter(name).grad, atol=1e-5, rtol=0), name
