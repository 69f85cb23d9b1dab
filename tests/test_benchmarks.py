"""The speed benchmark runs (fast, tiny architecture), and its reference-like mode learns what our path learns."""

import torch

from benchmarks.train_speed import main as train_speed
from textinv.models import load_model
from textinv.tokens import base_embedding
from textinv.train import train

from test_train import config


def test_train_speed_benchmark_prints_both_modes_and_the_ratio(capsys):
    assert train_speed(["--arch", "tiny", "--batch", "1", "2", "--steps", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("textinv ", "reference "))]
    assert [(r[0], r[1]) for r in rows] == [("textinv", "1"), ("reference", "1"), ("textinv", "2"),
                                            ("reference", "2")]
    assert all(float(r[3]) > 0 for r in rows)  # samples/s
    assert out.count("speedup over reference") == 2


def test_train_speed_benchmark_times_several_concepts_in_one_run(capsys):
    assert train_speed(["--arch", "tiny", "--batch", "1", "--steps", "2", "--warmup", "1", "--concepts", "2",
                        "--modes", "textinv"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("concepts"))
    assert "concepts per hour: joint" in line and line.rstrip().endswith("x)")


def test_reference_like_mode_learns_the_same_vectors_and_restores_the_table(sd1_dir, images, tmp_path):
    """Same seed: the whole-table AdamW with rows copied back and the VAE every step give our result."""
    ours = train(config(images, tmp_path / "a", steps=4), model=load_model(sd1_dir), progress=False)
    model = load_model(sd1_dir)
    table = base_embedding(model.text_encoder).weight.detach().clone()
    ref = train(config(images, tmp_path / "b", steps=4, reference_like=True), model=model, progress=False)
    assert torch.equal(base_embedding(model.text_encoder).weight, table)
    assert torch.allclose(ours.embedding.vectors["text_encoder"], ref.embedding.vectors["text_encoder"], atol=1e-5)
