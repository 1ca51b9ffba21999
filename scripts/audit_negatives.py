"""Negative-class audit of AGCL: what the weights and false-negative masks do to in-batch negatives.

Replays the batches the training sampler builds on a synthetic catalogue's ``train`` split and
classifies every (query anchor ``i``, candidate ``j != i``) pair with the audit truth
(``truth/train_listings.jsonl``, which training never reads):

* ``dup``: candidate ``j``'s second view *is* anchor ``i``'s listing (cross-seller pairs share
  listings: row ``j = (B, A)`` holds row ``i = (A, B)``'s first view), a false negative at cosine 1;
* ``same``: another listing of the anchor's product (a false negative, not a copy);
* ``twin``: a product of the same family (differs in exactly one attribute), the hard negative;
* ``cat``: same category, other family;  ``other``: another category.

For each loss form it prints, per class, the mean log-weight relative to the positive
(``log w_ij - log w_ii``, what the softmax sees) and the share of pairs masked as false negatives,
then each filter's precision (the class mix of the masked pairs) and recall (the share of ``dup`` /
``same`` pairs it masks). Weights and masks are read off :class:`trainers.agcl.loss.AGCLLoss`
itself, so the audit measures what training computes. Margin filters compare embeddings: they come
from ``--model`` (an untrained checkpoint shows the start of training, a trained one the end).

    python scripts/audit_negatives.py --data CAT --model CKPT [--sampler mixed] [--json audit.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CLASSES = ("dup", "same", "twin", "cat", "other")


def pair_classes(truth: list[dict], categories: list[str], batch: list[int]):
    """``[B, B]`` long tensor: index into :data:`CLASSES` for query ``i`` vs candidate ``j``
    (``-1`` on the diagonal)."""
    import torch

    out = torch.full((len(batch), len(batch)), -1, dtype=torch.long)
    for a, i in enumerate(batch):
        for b, j in enumerate(batch):
            if a == b:
                continue
            ti, tj = truth[i], truth[j]
            if tj["pos_listing_id"] == ti["listing_id"]:
                out[a, b] = 0
            elif tj["product_id"] == ti["product_id"]:
                out[a, b] = 1
            elif tj["family_id"] == ti["family_id"]:
                out[a, b] = 2
            else:
                out[a, b] = 3 if categories[i] == categories[j] else 4
    return out


def loss_forms() -> dict[str, dict]:
    """name -> AGCLLoss keyword arguments: the chosen defaults, the paper's form, each filter."""
    from trainers.agcl.arguments import AGCL_DEFAULTS, PAPER_FORM

    return {
        "chosen (defaults)": dict(AGCL_DEFAULTS),
        "paper form": dict(PAPER_FORM),
        "margin filter, delta 0.1": {"weighting": "none", "false_negatives": "margin"},
        "attribute filter, overlap 1.0": {
            "weighting": "none",
            "false_negatives": "attributes",
            "attribute_overlap": 1.0,
        },
        "margin_compatible, delta 0": {
            "weighting": "none",
            "false_negatives": "margin_compatible",
            "delta": 0.0,
        },
        "self-normalised BM25 weight": {
            "weighting": "bm25",
            "bm25_normalization": "self",
            "false_negatives": "none",
        },
    }


def encode_views(model_path: str, train, batch_size: int):
    """``([N, D], [N, D])`` listing embeddings of the two views of every train row."""
    import torch

    from afmrl.models import load_model
    from afmrl.retrieval.encoding import encode_split

    model = load_model(model_path)
    first = encode_split(model, train, "listing", batch_size=batch_size, desc="view 1")
    second_rows = train.select_columns(["pos_image", "pos_title"]).rename_columns(
        {"pos_image": "image", "pos_title": "title"}
    )
    second = encode_split(model, second_rows, "listing", batch_size=batch_size, desc="view 2")
    return torch.from_numpy(first), torch.from_numpy(second)


def audit(data: str, model: str, sampler: str, hard_fraction: float, epochs: int, batch: int):
    """The audit as a JSON-ready dict (see the module docstring)."""
    import torch

    from afmrl.data import load_catalog
    from modeling_afmrl.attributes import canonical_attribute_text
    from trainers.agcl.loss import AGCLLoss, attribute_dict
    from trainers.agcl.sampler import ListingBatchSampler

    train = load_catalog(data, splits=["train"], check_images=False)["train"]
    truth_file = Path(data) / "truth" / "train_listings.jsonl"
    truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
    if [t["listing_id"] for t in truth] != list(train["listing_id"]):
        raise SystemExit(f"{truth_file}: rows do not follow the train split's listing_id order")
    if "pos_listing_id" not in truth[0]:
        raise SystemExit(
            f"{truth_file}: no pos_listing_id (rebuild the catalogue with afmrl synth)"
        )
    attributes = [canonical_attribute_text(a) for a in train["teacher_attributes"]]
    dicts = [attribute_dict(a) for a in attributes]
    categories = [d.get("category", "") for d in dicts]
    first, second = encode_views(model, train, batch)
    losses = {name: AGCLLoss("agcl", **kw) for name, kw in loss_forms().items()}
    sampler_ = ListingBatchSampler(
        len(train), batch, sampler, attributes=dicts, seed=0, hard_fraction=hard_fraction
    )
    pairs = torch.zeros(len(CLASSES))
    weight = {name: torch.zeros(len(CLASSES)) for name in losses}
    masked = {name: torch.zeros(len(CLASSES)) for name in losses}
    anchors = 0
    for epoch in range(epochs):
        for rows in sampler_.batches(epoch):
            if len(rows) < batch:  # the trainer's dataloader drops a short last batch
                continue
            anchors += len(rows)
            classes = pair_classes(truth, categories, rows)
            index = torch.tensor(rows)
            batch_attrs = [attributes[i] for i in rows]
            with torch.no_grad():
                for name, fn in losses.items():
                    out = fn(first[index], second[index], batch_attrs)
                    rel = None
                    if out.log_weights is not None:
                        rel = out.log_weights - out.log_weights.diagonal().unsqueeze(1)
                    for k in range(len(CLASSES)):
                        where = classes == k
                        if rel is not None:
                            weight[name][k] += rel[where].sum()
                        masked[name][k] += out.mask[where].sum()
            for k in range(len(CLASSES)):
                pairs[k] += (classes == k).sum()
    filters = lambda name: losses[name].false_negatives != "none"  # noqa: E731
    per_class = lambda v, d: {c: float(v[k] / max(1.0, float(d[k]))) for k, c in enumerate(CLASSES)}  # noqa: E731
    return {
        "data": data,
        "model": model,
        "sampler": sampler,
        "hard_fraction": hard_fraction if sampler == "mixed" else None,
        "epochs": epochs,
        "batch_size": batch,
        "anchors": anchors,
        "negatives_per_anchor": {c: float(pairs[k]) / anchors for k, c in enumerate(CLASSES)},
        "relative_log_weight": {
            name: per_class(v, pairs)
            for name, v in weight.items()
            if losses[name].weighting != "none"
        },
        "masked_share": {name: per_class(v, pairs) for name, v in masked.items() if filters(name)},
        "masked_per_anchor": {
            name: float(v.sum()) / anchors for name, v in masked.items() if filters(name)
        },
        "mask_precision": {
            name: {c: float(v[k] / max(1.0, float(v.sum()))) for k, c in enumerate(CLASSES)}
            for name, v in masked.items()
            if filters(name)
        },
    }


def markdown(result: dict) -> str:
    """The audit's tables in Markdown."""
    head = "| | " + " | ".join(CLASSES) + " |\n|---" + "|---:" * len(CLASSES) + "|"
    lines = [
        f"Sampler `{result['sampler']}`"
        + (f" (hard fraction {result['hard_fraction']})" if result["hard_fraction"] else "")
        + f", batch {result['batch_size']}, {result['epochs']} epochs, {result['anchors']} anchors;"
        f" embeddings of `{result['model']}`.",
        "",
        head,
        "| negatives per anchor | "
        + " | ".join(f"{result['negatives_per_anchor'][c]:.2f}" for c in CLASSES)
        + " |",
    ]
    for name, v in result["relative_log_weight"].items():
        lines.append(
            f"| log w_ij - log w_ii, {name} | " + " | ".join(f"{v[c]:+.3f}" for c in CLASSES) + " |"
        )
    for name, v in result["masked_share"].items():
        lines.append(
            f"| masked share, {name} | " + " | ".join(f"{v[c]:.3f}" for c in CLASSES) + " |"
        )
    lines += [
        "",
        "| false-negative rule | masked per anchor | "
        + " | ".join(f"% {c}" for c in CLASSES)
        + " | recall dup | recall same |",
        "|---" + "|---:" * (len(CLASSES) + 3) + "|",
    ]
    for name, precision in result["mask_precision"].items():
        share = result["masked_share"][name]
        lines.append(
            f"| {name} | {result['masked_per_anchor'][name]:.2f} | "
            + " | ".join(f"{100 * precision[c]:.1f}" for c in CLASSES)
            + f" | {share['dup']:.3f} | {share['same']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="synthetic catalogue (with truth/)")
    parser.add_argument(
        "--model", required=True, help="checkpoint whose embeddings margin rules use"
    )
    parser.add_argument("--sampler", default="mixed", choices=("random", "attributes", "mixed"))
    parser.add_argument("--hard-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = audit(
        args.data, args.model, args.sampler, args.hard_fraction, args.epochs, args.batch_size
    )
    print(markdown(result))
    if args.json:
        from afmrl.io import write_json_atomic

        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
