"""What the frozen vision features allow: linear probes and a majority-class baseline per key.

Reference rows for the extractor's comparison table (not a generator; Stage 2 needs the generative
extractor). For every attribute key:

- **majority**: the most frequent teacher value of the key in ``train``, predicted for every row;
- **probe**: a multinomial logistic regression (scikit-learn) on the extractor's frozen
  EfficientNet stage map (mean- and max-pooled over the grid), trained on ``train``'s two views
  with the teacher values as labels, predicting the key for every validation row.

Both are scored with :func:`afmrl.evaluation.attribute_metrics.attribute_metrics` against
``gold_attributes`` on ``validation_query + validation_gallery``, like the extractor. The probe
sees the image only (no title), so keys that only the title states are out of its reach.

    python scripts/probe_attributes.py --model CKPT --data CAT [--untrained U] [--sft CKPT2]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from modeling_afmrl.attributes import parse_attributes, render_attributes


def majority_predictions(train_attrs: list[dict[str, str]], n: int) -> list[str]:
    """The same attribute string for all ``n`` rows: each key's most frequent training value."""
    counts: dict[str, Counter] = {}
    for attrs in train_attrs:
        for k, v in attrs.items():
            counts.setdefault(k, Counter())[v] += 1
    majority = {k: c.most_common(1)[0][0] for k, c in counts.items()}
    return [render_attributes(majority)] * n


def pooled_features(model, images, batch_size: int = 64):
    """``[N, 2C]`` mean- and max-pooled frozen stage-map features of the extractor's tower."""
    import torch

    image_processor = model.processor.extractor_processor.image_processor
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            out = model.extractor.model.get_image_features(pixel_values=pixels, return_dict=True)
            chunks.append(out.last_hidden_state.float())
    tokens = torch.cat(chunks)
    return torch.cat([tokens.mean(1), tokens.amax(1)], dim=1).numpy()


def probe_predictions(
    train_x, train_attrs: list[dict[str, str]], eval_x, min_count: int = 2, seed: int = 0
) -> list[str]:
    """One logistic-regression probe per key; returns one attribute string per eval row."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    tx, ex = scaler.transform(train_x), scaler.transform(eval_x)
    keys = sorted({k for a in train_attrs for k in a})
    preds: list[dict[str, str]] = [{} for _ in range(len(eval_x))]
    for key in keys:
        rows = [i for i, a in enumerate(train_attrs) if key in a]
        labels = [train_attrs[i][key] for i in rows]
        counts = Counter(labels)
        if len(rows) < min_count:
            continue
        if len(counts) == 1:
            predicted = [labels[0]] * len(eval_x)
        else:
            clf = LogisticRegression(max_iter=300, C=0.5, random_state=seed)
            clf.fit(tx[np.array(rows)], labels)
            predicted = list(clf.predict(ex))
        for i, v in enumerate(predicted):
            preds[i][key] = v
    return [render_attributes(p) for p in preds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint whose extractor tower is probed")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default=None, help="write metrics.json + report.md here")
    parser.add_argument("--untrained", default=None, help="also score this (untrained) extractor")
    parser.add_argument("--sft", nargs="*", default=[], help="also score these SFT checkpoints")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    from afmrl.runtime import torch_settings

    with torch_settings(flush_denormal=True):
        return _probe(args)


def _probe(args: argparse.Namespace) -> int:
    from afmrl.data import load_catalog
    from afmrl.evaluation.attribute_metrics import attribute_metrics
    from afmrl.evaluation.attributes import (
        VALIDATION_SPLITS,
        _concat,
        evaluate_attributes,
        format_attribute_table,
    )
    from afmrl.models import load_model

    data = load_catalog(args.data)
    train = data["train"]
    evals = _concat(data, VALIDATION_SPLITS, "gold_attributes")
    gold = list(evals["gold_attributes"])
    train_attrs = [parse_attributes(t).attributes for t in train["teacher_attributes"]]
    systems: dict[str, dict] = {}
    systems["majority"] = attribute_metrics(majority_predictions(train_attrs, len(gold)), gold)

    model = load_model(args.model)
    train_x = pooled_features(model, list(train["image"]) + list(train["pos_image"]))
    eval_x = pooled_features(model, list(evals["image"]))
    probe = probe_predictions(train_x, train_attrs + train_attrs, eval_x)
    systems["linear probe (image)"] = attribute_metrics(probe, gold)
    for name, path in [("untrained", args.untrained)] + [(Path(p).name, p) for p in args.sft]:
        if path is None:
            continue
        m = load_model(path)
        systems[name] = evaluate_attributes(m, data, batch_size=64,
                                            max_new_tokens=args.max_new_tokens)  # fmt: skip
    table = format_attribute_table(systems)
    print(table)
    if args.out:
        from afmrl.io import write_json_atomic, write_text_atomic

        write_json_atomic(Path(args.out) / "metrics.json", systems)
        write_text_atomic(Path(args.out) / "report.md", table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
