"""`textinv inspect`: what an embedding file holds, which model family it fits, and what each vector "reads as".

With a model, each vector is compared with the model's vocabulary: its norm against the vocabulary's row norms (a
learned vector far longer than any word tends to dominate prompts and hurt editability), and the vocabulary tokens
nearest to it by cosine similarity.
"""

from __future__ import annotations

import torch

from .formats import describe, detect_format, load_embedding
from .models import load_model
from .tokens import base_embedding


def nearest_tokens(table: torch.Tensor, vectors: torch.Tensor, tokenizer, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each vector (n, d), the `k` vocabulary tokens of `table` (V, d) nearest by cosine similarity."""
    sims = torch.nn.functional.normalize(vectors.float(), dim=1) @ torch.nn.functional.normalize(table.float(), dim=1).T
    top = sims.topk(min(k, table.shape[0]), dim=1)
    return [[(tokenizer.convert_ids_to_tokens(int(i)), round(float(s), 4)) for s, i in zip(vals, ids)]
            for vals, ids in zip(top.values, top.indices)]


def inspect_file(path, model: str | None = None, top_k: int = 5) -> dict:
    """A report on an embedding file as a dict, with a human-readable `text` entry."""
    emb = load_embedding(path)
    report = {"file": str(path), "format": detect_format(path)}
    nearest = None
    if model is not None:
        loaded = load_model(model)
        table = base_embedding(loaded.text_encoder).weight.detach()
        report.update(describe(emb, {"text_encoder": table.float().norm(dim=1)}))
        if emb.widths == (table.shape[1],):
            nearest = nearest_tokens(table, emb.vectors["text_encoder"], loaded.tokenizer, top_k)
            report["nearest_tokens"] = nearest
        else:
            report["model_mismatch"] = f"model width {table.shape[1]} does not fit this embedding"
    else:
        report.update(describe(emb))
    lines = [f"{report['file']}: {report['format']} format", f"token: {emb.token}",
             f"vectors: {emb.num_vectors}", f"fits: {report['family']}"]
    for name, entry in report["encoders"].items():
        norms = ", ".join(f"{n:.3f}" for n in entry["norms"])
        line = f"{name} (width {entry['width']}): norms {norms}"
        if "vocab_norm_mean" in entry:
            line += f" (vocabulary: {entry['vocab_norm_mean']:.3f} +/- {entry['vocab_norm_std']:.3f})"
        lines.append(line)
    for i, near in enumerate(nearest or []):
        lines.append(f"vector {i} reads as: " + ", ".join(f"{t} ({s:.2f})" for t, s in near))
    if "model_mismatch" in report:
        lines.append(report["model_mismatch"])
    if emb.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in emb.metadata.items()))
    report["text"] = "\n".join(lines)
    return report
