"""The attribute probe: its file format round-trips, its command line works end to end, and the shipped weights read
fresh renders (and the benchmark concepts' own pictures) back correctly."""

import json

import pytest
import torch
from safetensors.torch import save_file

from textinv.errors import ConfigError, ModelError
from textinv.shapes import probe as probe_mod
from textinv.shapes import world
from textinv.shapes.probe import (ATTRIBUTES, CLASS_HEADS, DEFAULT_PATH, Probe, ProbeNet, evaluate, matches,
                                  train_probe)


@pytest.fixture(scope="module")
def tiny_probe():
    return train_probe(steps=2, batch=4, widths=(4, 4, 8, 8), hidden=8, log=None)


def test_net_has_one_output_per_head():
    out = ProbeNet((4, 4, 8, 8), 8)(torch.rand(2, 3, 64, 64))
    assert set(out) == set(ATTRIBUTES)
    assert out["shape"].shape == (2, len(world.SHAPES)) and out["hue"].shape == (2, 2)
    # other sizes are resized to 64 first
    assert ProbeNet((4, 4, 8, 8), 8)(torch.rand(1, 3, 128, 128))["style"].shape == (1, len(world.STYLES))


def test_predict_gives_names_angles_and_none_for_a_missing_second_object(tiny_probe):
    pred = tiny_probe.predict(torch.rand(3, 3, 64, 64))
    assert set(pred) == set(ATTRIBUTES) and all(len(v) == 3 for v in pred.values())
    assert all(v in world.SHAPES for v in pred["shape"])
    assert all(0 <= h < 360 for h in pred["hue"]) and all(0 <= a < 180 for a in pred["stripe_angle"])
    for has, shape in zip(pred["has_second"], pred["second_shape"]):
        assert isinstance(has, bool) and ((shape in world.SHAPES) if has else (shape is None))


def test_save_then_load_gives_the_same_predictions(tiny_probe, tmp_path):
    path = tiny_probe.save(tmp_path / "p.safetensors")
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["format"] == probe_mod.FORMAT and meta["config"]["hidden"] == 8
    a, b = Probe.load(path), Probe.load(path)
    images = world.render(world.sample_batch(6, torch.Generator().manual_seed(0)))
    assert a.predict(images) == b.predict(images)
    # float16 storage changes the outputs only a little
    full, half = tiny_probe.logits(images), a.logits(images)
    assert all(torch.allclose(full[k], half[k], atol=0.05) for k in full)


def test_load_refuses_what_is_not_a_probe_of_this_world(tiny_probe, tmp_path):
    with pytest.raises(ModelError, match="--train"):
        Probe.load(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="metadata"):
        Probe.load(tmp_path / "other.safetensors")
    path = tiny_probe.save(tmp_path / "p.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["textinv"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["classes"]["shape"] = meta["classes"]["shape"][:-1]  # as if the world lost a shape since
    save_file(tensors, str(path), metadata={"textinv": json.dumps(meta)})
    with pytest.raises(ModelError, match="different shapes world"):
        Probe.load(path)


def test_command_line_trains_saves_and_evaluates(tmp_path, capsys):
    out = tmp_path / "probe.safetensors"
    assert probe_mod._main(["--train", "--steps", "2", "--batch", "4", "--n", "16", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "probe.json").is_file()
    assert probe_mod._main(["--eval", "--weights", str(out), "--n", "16"]) == 0
    text = capsys.readouterr().out
    assert "shape" in text and "hue_error_deg" in text
    assert probe_mod._main(["--eval", "--weights", str(tmp_path / "nope.safetensors")]) == 2


def test_refine_hues_measures_the_object_not_the_background():
    scenes = [world.Scene(world.ObjectSpec(shape, rgb=world.color_at_hue(hue), pattern=pattern, size="small"),
                          background=bg, style=style)
              for shape, hue, pattern, bg, style in [("star", 163.0, "solid", "white", "flat"),
                                                     ("ring", 296.0, "dots", "navy", "shaded"),
                                                     ("heart", 41.0, "stripes", "maroon", "sketchy")]]
    rough = torch.tensor([175.0, 283.0, 50.0])  # what a biased head might say
    refined = probe_mod.refine_hues(world.render(scenes), rough)
    # within 5 degrees even where shading or crayon grain over a dark red background pull it a little
    assert torch.allclose(refined, torch.tensor([163.0, 296.0, 41.0]), atol=5.0)


def test_matches_compares_names_exactly_and_angles_around_the_circle():
    pred = {"shape": ["star", "ring"], "hue": [358.0, 20.0], "stripe_angle": [178.0, 90.0]}
    rows = matches(pred, {"shape": "star", "hue": 5.0, "stripe_angle": 3.0})
    assert rows == [{"shape": True, "hue": True, "stripe_angle": True},
                    {"shape": False, "hue": False, "stripe_angle": False}]
    with pytest.raises(ConfigError, match="does not read"):
        matches(pred, {"smell": "sweet"})


def test_concept_attributes_are_things_the_probe_reads():
    for c in world.BENCHMARK_CONCEPTS:
        assert set(c.attributes) <= set(ATTRIBUTES), c.name
        for name, value in c.attributes.items():
            if name in CLASS_HEADS:
                assert value in CLASS_HEADS[name], (c.name, name)
        for _, expected in c.edit_prompts():
            assert set(expected) <= set(ATTRIBUTES)


# --- the shipped weights ---------------------------------------------------------------------------------------

shipped = pytest.mark.skipif(not DEFAULT_PATH.is_file(),
                             reason=f"no trained probe at {DEFAULT_PATH}: train it with "
                                    f"`python -m textinv.shapes.probe --train`")


@pytest.fixture(scope="module")
def trained():
    return Probe.load()


@shipped
def test_shipped_probe_is_small():
    assert DEFAULT_PATH.stat().st_size < 2_000_000


# The shipped probe meets the 98 % target on every head but the pattern (and so the stripe angle, read on striped
# objects), which meets it only on pictures whose fill shows in enough pixels to be read: a small outlined ring
# shows its dots in none. Those two are checked separately (test_shipped_probe_reads_patterns).
BELOW_TARGET = {"pattern", "stripe_angle"}


@shipped
def test_shipped_probe_reads_fresh_renders(trained):
    # 256 renders the probe never saw (another seed than training's); the target is 98 %, this checks 95 %.
    result = evaluate(trained, n=256, seed=2024)
    for name in CLASS_HEADS:
        if name not in BELOW_TARGET:
            assert result[name] >= 0.95, (name, result[name])
    assert result["hue_error_deg"] < 3.0  # refined from the pixels (refine_hues)


@pytest.fixture(scope="module")
def read_1024(trained):
    """The shipped probe's `evaluate` on 1,024 fresh renders (more than 256: the pattern head sits near the line),
    read by the two pattern tests below; a pure function of the probe and the seed, worked out once."""
    return evaluate(trained, n=1024, seed=2024)


@shipped
def test_shipped_probe_reads_patterns(read_1024):
    # 2,048 renders: 0.961 overall, 0.984 where the fill shows in >= 32 pixels (the 98 % aim, met only there)
    result = read_1024
    assert result["pattern"] >= 0.95 and result["pattern_where_visible"] >= 0.97
    assert result["stripe_angle_error_deg"] < 8.0


@shipped
def test_about_half_the_pattern_misses_are_fills_that_hardly_show(read_1024):
    # 2026-12-03, 2,048 renders: 0.961 overall, 0.984 on the 94% of pictures whose fill shows in >= 32 pixels
    result = read_1024
    assert 0.85 < result["pattern_visible_share"] < 1.0
    assert result["pattern_where_visible"] > result["pattern"] + 0.01


@shipped
def test_shipped_probe_reads_the_benchmark_concepts(trained):
    # Reconstruction's upper bound: the concepts' own training pictures must score (almost) fully.
    for c in world.BENCHMARK_CONCEPTS:
        rows = matches(trained.predict(world.render(c.training_scenes(5, seed=0))), c.attributes)
        for name in set(c.attributes) - BELOW_TARGET:
            assert sum(r[name] for r in rows) >= 4, (c.name, name)


@shipped
def test_shipped_probe_confirms_true_renders_of_the_benchmark_prompts(trained):
    # The benchmark's ceilings: each prompt's own scene, rendered, judged as samples are. The concept itself must be
    # confirmed almost always; edits mostly (the outlined style hides some fills: the violet ring's dots in 12/32).
    from textinv.shapes.evaluate import prompt_sets, score_images

    for c in world.BENCHMARK_CONCEPTS:
        edits = []
        for kind, _, expected in prompt_sets(c, "textual-inversion"):
            passed, _, _ = score_images(trained, world.render(c.scenes_for(expected, 32, seed=1000)), expected)
            if kind == "reconstruction":
                assert sum(passed) >= 28, (c.name, expected, sum(passed))
            else:
                edits += passed
        assert sum(edits) / len(edits) >= 0.8, (c.name, sum(edits) / len(edits))


def test_a_damaged_probe_file_is_a_model_error(tmp_path):
    for content in (b"", b"not a safetensors file at all", b"\xff" * 64):
        path = tmp_path / "junk.safetensors"
        path.write_bytes(content)
        with pytest.raises(ModelError, match="not a readable safetensors file"):
            Probe.load(path)
