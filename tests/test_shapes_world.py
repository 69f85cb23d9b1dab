"""The shapes world: the renderer draws what a scene says, deterministically; sampling keeps held-out combinations
out; captions only say true things in the world's closed vocabulary; the benchmark concepts are well formed."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from textinv.errors import ConfigError
from textinv.shapes import world
from textinv.shapes.world import (BACKGROUNDS, BENCHMARK_CONCEPTS, COLOR_RGB, COLORS, HELDOUT_COMBINATIONS, PATTERNS,
                                  POSITIONS, SHAPES, SIZES, STYLES, VOCABULARY, ObjectSpec, Scene, caption, describe,
                                  render, sample_batch)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def plain(**obj):
    """A large solid red circle in the centre of a white background, flat, with `obj` changed."""
    return Scene(ObjectSpec(**{"shape": "circle", "color": "red", "size": "large", **obj}), background="white")


def object_mask(scene):
    """(H, W) bool: pixels that differ from the scene's background."""
    img = render(scene)[0]
    bg = torch.tensor(scene.background_rgb or BACKGROUNDS[scene.background]).view(3, 1, 1)
    return (img - bg).abs().amax(0) > 0.05


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


# --- rendering -------------------------------------------------------------------------------------------------


def test_render_gives_images_in_range():
    img = render(sample_batch(16, gen(0)))
    assert img.shape == (16, 3, 64, 64) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1


def test_same_seed_same_pixels_different_seed_different_pixels():
    a, b, c = (render(sample_batch(12, gen(s))) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_a_scene_renders_the_same_alone_as_in_a_batch():
    batch = sample_batch(24, gen(3), second_prob=0.5)
    together = render(batch)
    scenes = batch.scenes()  # back to dataclasses and in again: exact values survive
    for i in (0, 5, 11, 23):
        assert torch.equal(render(scenes[i])[0], together[i])


def test_every_shape_has_its_own_silhouette():
    masks = [object_mask(plain(shape=s)) for s in SHAPES]
    assert all(m.sum() > 200 for m in masks)
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            # circle and hexagon are the closest pair (IoU about 0.91): still 60+ pixels apart at this size
            assert iou(masks[i], masks[j]) < 0.92 and (masks[i] ^ masks[j]).sum() > 50, (SHAPES[i], SHAPES[j])


def test_rotation_turns_a_square_but_not_a_circle():
    assert iou(object_mask(plain(shape="square")), object_mask(plain(shape="square", rotation=30))) < 0.9
    assert iou(object_mask(plain()), object_mask(plain(rotation=30))) > 0.97


def test_a_solid_object_has_its_colour_in_the_middle():
    for name in COLORS:
        centre = render(plain(color=name))[0, :, 32, 32]
        assert torch.allclose(centre, torch.tensor(COLOR_RGB[name]), atol=2e-3), name


def test_any_rgb_can_be_drawn_and_is_named_by_the_nearest_hue():
    obj = ObjectSpec("circle", rgb=(0.1, 0.8, 0.6), size="large")
    assert obj.color == world.nearest_color(obj.hue)
    centre = render(Scene(obj))[0, :, 32, 32]
    assert torch.allclose(centre, torch.tensor([0.1, 0.8, 0.6]), atol=2e-3)


def test_background_fills_the_corners():
    for name, rgb in BACKGROUNDS.items():
        img = render(Scene(ObjectSpec("star", "red"), background=name))[0]
        assert torch.allclose(img[:, 0, 0], torch.tensor(rgb), atol=1e-6), name


def test_patterns_differ_and_only_solid_is_uniform():
    inside = object_mask(plain(shape="square"))
    for dim in (0, 1):  # away from the edge
        inside = inside & torch.roll(inside, 3, dim) & torch.roll(inside, -3, dim)
    imgs = {p: render(plain(shape="square", pattern=p, pattern_angle=20))[0] for p in PATTERNS}
    for p, img in imgs.items():
        spread = img[:, inside].std(dim=1).max().item()
        assert (spread < 1e-3) if p == "solid" else (spread > 0.05), p
    for i, p in enumerate(PATTERNS):
        for q in PATTERNS[i + 1:]:
            assert (imgs[p] - imgs[q]).abs().mean() > 0.005, (p, q)


def test_stripe_angle_turns_the_stripes():
    a = render(plain(shape="square", pattern="stripes", pattern_angle=0))
    b = render(plain(shape="square", pattern="stripes", pattern_angle=90))
    assert (a - b).abs().mean() > 0.01
    assert torch.allclose(a, render(plain(shape="square", pattern="stripes", pattern_angle=180)), atol=1e-4)


def test_sizes_grow():
    areas = [object_mask(plain(shape="square", size=s)).sum().item() for s in SIZES]
    assert areas == sorted(areas) and areas[0] * 1.5 < areas[-1]


def test_position_moves_the_centroid_the_right_way():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    for name, (ax, ay) in POSITIONS.items():
        m = object_mask(plain(size="small", position=name)).float()
        cx, cy = (m * xs).sum() / m.sum() - 31.5, (m * ys).sum() / m.sum() - 31.5
        for centre, direction in ((cx, ax), (cy, ay)):
            assert (centre > 8) if direction > 0 else (centre < -8) if direction < 0 else (abs(centre) < 2), name


def test_styles_look_different():
    scenes = {s: replace(plain(shape="star", pattern="stripes"), style=s, seed=5) for s in STYLES}
    imgs = {s: render(sc)[0] for s, sc in scenes.items()}
    for i, a in enumerate(STYLES):
        for b in STYLES[i + 1:]:
            assert (imgs[a] - imgs[b]).abs().mean() > 0.005, (a, b)
    # outlined keeps only an edge band (and the pattern's marks): fewer object pixels than flat
    assert object_mask(scenes["outlined"]).sum() < object_mask(scenes["flat"]).sum()
    outlined_solid = replace(plain(shape="square"), style="outlined")
    assert object_mask(outlined_solid).sum() < 0.5 * object_mask(plain(shape="square")).sum()
    # sketchy adds grain to the background too; shaded casts a shadow (darker than the background somewhere)
    bg = torch.tensor(BACKGROUNDS["white"]).view(3, 1)
    assert (imgs["sketchy"][:, :8, :8].reshape(3, -1) - bg).abs().std() > 0.01
    assert (imgs["shaded"].reshape(3, -1) < bg - 0.1).all(0).any()


def test_other_resolutions_scale_the_picture():
    scene = plain(shape="heart")
    small, big = render(scene, resolution=32), render(scene, resolution=128)
    assert small.shape[-1] == 32 and big.shape[-1] == 128
    down = torch.nn.functional.avg_pool2d(big, 4)
    assert (down - small).abs().mean() < 0.03


def test_render_pil():
    image = world.render_pil(plain())
    assert image.size == (64, 64) and image.getpixel((32, 32))[0] > 200


# --- scenes and sampling ---------------------------------------------------------------------------------------


def test_bad_names_raise_errors_that_list_the_choices():
    with pytest.raises(ConfigError, match="choose one of circle"):
        ObjectSpec("blob", "red")
    with pytest.raises(ConfigError, match="background"):
        Scene(ObjectSpec("star", "red"), background="plaid")
    with pytest.raises(ConfigError, match="rgb"):
        ObjectSpec("star", rgb=(2.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="color name or an rgb"):
        ObjectSpec("star")


def test_heldout_combinations_are_never_sampled():
    def combos(objs):
        return {(SHAPES[s], list(COLORS)[c], PATTERNS[p]) for s, c, p in
                zip(objs.shape.tolist(), objs.color.tolist(), objs.pattern.tolist())}

    batch = sample_batch(40_000, gen(11), second_prob=0.5)
    seen = combos(batch.obj) | combos(batch.second.index(batch.has_second))
    assert not seen & HELDOUT_COMBINATIONS
    assert len(seen) > 250  # everything else does appear
    unfiltered = sample_batch(40_000, gen(11), exclude_heldout=False)
    assert HELDOUT_COMBINATIONS <= combos(unfiltered.obj)


def test_sampled_labels_are_consistent():
    batch = sample_batch(2000, gen(2), second_prob=0.5, free_hue_prob=0.5)
    hue = world.rgb_to_hue(batch.obj.rgb)
    names = [world.nearest_color(h) for h in hue.tolist()]
    assert names == [list(COLORS)[c] for c in batch.obj.color.tolist()]
    two = batch.has_second
    assert 0.4 < two.float().mean() < 0.6
    assert all(list(POSITIONS)[p] in world.TWO_OBJECT_POSITIONS for p in batch.obj.position[two].tolist())
    mirrored = [world.MIRROR[list(POSITIONS)[p]] for p in batch.obj.position[two].tolist()]
    assert mirrored == [list(POSITIONS)[p] for p in batch.second.position[two].tolist()]
    assert (batch.second.size[two] == list(SIZES).index("small")).all()
    assert (batch.second.pattern[two] == 0).all()
    # pattern periods follow the size, so small objects get patterns fine enough to show
    for size_id, name in enumerate(SIZES):
        periods = batch.obj.pattern_period[batch.obj.size == size_id]
        lo, hi = world.PATTERN_PERIODS[name]
        assert lo <= periods.min() and periods.max() <= hi


def test_a_small_dotted_object_shows_a_dot_in_its_middle():
    img = render(Scene(ObjectSpec("star", "orange", size="small", pattern="dots", pattern_period=6)))[0]
    dark = torch.tensor(COLOR_RGB["orange"]) * 0.45  # the shade used on light backgrounds
    assert torch.allclose(img[:, 32, 32], dark, atol=0.02)


def test_scene_random_is_deterministic_and_varied():
    assert Scene.random(4) == Scene.random(4)
    assert len({Scene.random(i).obj.shape for i in range(40)}) > 5


# --- words -----------------------------------------------------------------------------------------------------

PATTERN_WORDS = {"solid": "solid", "striped": "stripes", "stripes": "stripes", "dotted": "dots", "dots": "dots",
                 "checkered": "checks", "checks": "checks"}
POSITION_WORDS = {"left", "right", "top", "bottom", "center", "middle"}


def position_words(name):
    return {w for phrase in world._POSITION_PHRASES[name] for w in world._words(phrase)} & POSITION_WORDS


def check_caption_is_true(text, scene):
    words = world._words(text)
    assert set(words) <= set(VOCABULARY), text
    objs = [scene.obj] + ([scene.second] if scene.second else [])
    said = set(words)
    assert said & set(SHAPES) <= {o.shape for o in objs}, text
    assert said & set(COLORS) <= {o.color for o in objs}, text
    assert said & set(SIZES) <= {o.size for o in objs}, text
    assert {PATTERN_WORDS[w] for w in said & set(PATTERN_WORDS)} <= {scene.obj.pattern}, text
    assert said & set(BACKGROUNDS) <= {scene.background}, text
    assert said & set(STYLES) <= {scene.style}, text
    assert said & POSITION_WORDS <= set().union(*(position_words(o.position) for o in objs)), text
    nouns = [w for w in words if w in SHAPES or w == "shape"]
    assert nouns[0] in (scene.obj.shape, "shape"), text  # the main object is named first


def test_captions_are_true_varied_and_in_the_vocabulary():
    rng = np.random.default_rng(0)
    texts = []
    for scene in sample_batch(400, gen(5), second_prob=0.4).scenes():
        text = caption(scene, rng)
        check_caption_is_true(text, scene)
        texts.append(text)
    assert len(set(texts)) > 380
    scene = Scene.random(9, second_prob=1.0)
    variants = {caption(scene, seed) for seed in range(30)}
    assert len(variants) > 15
    assert caption(scene, 3) == caption(scene, 3)
    # attributes are left out sometimes and named sometimes
    mentions = [scene.background in world._words(caption(scene, s)) for s in range(60)]
    assert 5 < sum(mentions) < 55


def test_describe_names_every_attribute():
    scene = Scene(ObjectSpec("star", "red", pattern="dots", size="small", position="top-right"),
                  background="navy", style="sketchy", second=ObjectSpec("ring", "blue", size="small",
                                                                        position="bottom-left"))
    text = describe(scene)
    check_caption_is_true(text, scene)
    for word in ("star", "red", "dotted", "small", "top", "right", "navy", "sketchy", "ring", "blue", "bottom"):
        assert word in world._words(text), word
    for scene in sample_batch(50, gen(1), second_prob=0.5).scenes():
        check_caption_is_true(describe(scene), scene)


# Captions drawn before `angle_share` existed (2026-12-06, seed 7): at share 0 they must stay these, word for word.
CAPTIONS_SEED_7 = [
    "a rendering of a purple cross with checks at the bottom left",
    "a small pink triangle and a crescent at the bottom",
    "a rendering of a medium red striped square next to a small red cross at the bottom",
    "a drawing of a large diamond with checks",
    "an image of a purple checkered star against a navy background at the bottom right, in sketchy style",
    "a yellow hexagon",
    "a rendering of a medium yellow hexagon with checks, shaded style on the left next to a small triangle",
    "a rendering of a large cyan crescent on the right",
    "a picture of a pink shape with stripes on gray",
    "a picture of a red shape, in a outlined style in the bottom left corner",
]
CAPTIONS_SEED_3_SHA256 = "5eb7d63b2cf22bf5c6a9c2460a60f6820e17b2abc5017166b50b10e324d1ca6d"
"""sha256 of 512 captions (seed 3, joined by newlines) drawn before `angle_share` existed."""


def test_captions_at_angle_share_0_are_the_ones_before_the_setting_and_take_the_same_draws():
    """The committed model's training stream (and every test built on it) depends on these draws."""
    import hashlib

    assert world.captions(sample_batch(10, gen(7)), 7) == CAPTIONS_SEED_7
    assert world.captions(sample_batch(10, gen(7)), 7, angle_share=0.0) == CAPTIONS_SEED_7
    rng = np.random.default_rng(3)
    texts = world.captions(sample_batch(512, gen(3)), rng, angle_share=0.0)
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest() == CAPTIONS_SEED_3_SHA256
    assert rng.random() == 0.011585809170440275  # the draw after them, as it was: they took the same draws


@pytest.mark.parametrize("pattern", ["stripes", "dots", "checks"])
def test_the_orientation_word_is_the_angles_bin_at_every_angle(pattern):
    """A sweep over [-180, 360) in 0.25-degree steps: each word's angles form one interval per period, centred on
    the word's angle, as wide as the others, and the word repeats with the fill's own period (dots and checks
    every 90 degrees, stripes every 180)."""
    period, words = world.ORIENTATIONS[pattern]
    width = period / len(words)
    for angle in np.arange(-180.0, 360.0, 0.25):
        word = world.orientation_word(pattern, angle)
        centre = words.index(word) * width
        assert abs((angle - centre + period / 2) % period - period / 2) <= width / 2, (angle, word)
        assert world.orientation_word(pattern, angle + period) == word
    assert [world.orientation_word(pattern, i * width) for i in range(len(words))] == list(words)


def test_orientation_words_name_what_the_picture_shows():
    """Stripes at 45 degrees (counter-clockwise, y up) rise to the right: the picture is the same one step up and
    one to the right; at 135 one step down and one to the right; checks at 0 and 90 are the same picture."""
    def pixels(angle, pattern="stripes"):
        scene = Scene(ObjectSpec("square", "red", pattern=pattern, pattern_angle=angle, pattern_period=8.0,
                                 size="large"))
        return render(scene)[0, 0, 24:40, 24:40]  # (16, 16) inside the square, rows going down

    def shifted(img, rows, cols):  # mean change of the picture moved `rows` down and `cols` right
        a = img[max(0, rows):16 + min(0, rows), max(0, cols):16 + min(0, cols)]
        b = img[max(0, -rows):16 + min(0, -rows), max(0, -cols):16 + min(0, -cols)]
        return (a - b).abs().mean().item()

    rising, falling = pixels(45.0), pixels(135.0)
    assert world.orientation_word("stripes", 45.0) == "rising" and shifted(rising, -2, 2) < 0.01 < shifted(rising, 2, 2)
    assert world.orientation_word("stripes", 135.0) == "falling" and shifted(falling, 2, 2) < 0.01
    assert shifted(pixels(0.0), 0, 2) < 0.01 and shifted(pixels(90.0), 2, 0) < 0.01
    assert torch.allclose(pixels(0.0, "checks"), pixels(90.0, "checks"), atol=1e-4)


def test_captions_with_an_angle_share_name_the_true_orientation_at_that_rate():
    scenes = sample_batch(600, gen(11), second_prob=0.4).scenes()
    rng = np.random.default_rng(11)
    named = 0
    for scene in scenes:
        text = caption(scene, rng, angle_share=0.5)
        words = world._words(text)
        oriented = [w for w in words if w in world.ORIENTATION_WORDS]
        if scene.obj.pattern == "solid":
            assert not oriented, text
            continue
        if oriented:
            named += 1
            assert oriented == [world.orientation_word(scene.obj.pattern, scene.obj.pattern_angle)], text
            assert f"with {oriented[0]} {scene.obj.pattern}" in text, text
        check_caption_is_true(" ".join(w for w in words if w not in world.ORIENTATION_WORDS), scene)
    patterned = sum(s.obj.pattern != "solid" for s in scenes)
    assert 0.4 < named / patterned < 0.6
    assert all(w in world.ORIENTATION_WORDS for w in ("horizontal", "vertical", "diagonal"))
    assert not set(world.ORIENTATION_WORDS) & set(VOCABULARY)
    with pytest.raises(ConfigError, match="angle_share"):
        caption(scenes[0], 0, angle_share=1.5)


def test_describe_names_the_orientation_when_asked():
    scene = Scene(ObjectSpec("star", "red", pattern="stripes", pattern_angle=91.0))
    assert not set(world._words(describe(scene))) & set(world.ORIENTATION_WORDS) and "striped" in describe(scene)
    assert "with vertical stripes" in describe(scene, orientation=True)
    assert describe(Scene(ObjectSpec("star", "red")), orientation=True) == describe(Scene(ObjectSpec("star", "red")))


def test_vocabulary_is_small_and_closed():
    assert 40 < len(VOCABULARY) < 100
    assert VOCABULARY == tuple(sorted(set(VOCABULARY)))
    assert set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(STYLES) <= set(VOCABULARY)


# --- concepts --------------------------------------------------------------------------------------------------


def test_benchmark_concepts_are_well_formed():
    assert len(BENCHMARK_CONCEPTS) >= 6
    assert any(c.kind == "style" for c in BENCHMARK_CONCEPTS)
    tokens = [c.token for c in BENCHMARK_CONCEPTS]
    assert len(set(tokens)) == len(tokens)
    for c in BENCHMARK_CONCEPTS:
        assert c.token.startswith("<") and c.token.endswith(">") and c.init_word in VOCABULARY
        assert c.attributes and c.kind in ("object", "style")
        if c.kind == "object":
            # the exact combination was never shown in pretraining
            assert (c.base.shape, c.base.color, c.base.pattern) in HELDOUT_COMBINATIONS, c.name
            if "hue" in c.attributes:
                assert abs(c.base.hue - c.attributes["hue"]) < 0.5
                gaps = [abs((c.base.hue - h + 180) % 360 - 180) for h, _, _ in COLORS.values()]
                assert min(gaps) > world.HUE_JITTER, c.name  # truly between the named hues
        for template, expected in c.edit_prompts():
            assert template.count("{}") == 1 and expected


def _scene_value(scene, name):
    o = scene.obj
    return {"hue": o.hue, "stripe_angle": o.pattern_angle, "background": scene.background, "style": scene.style,
            "has_second": scene.second is not None,
            "second_shape": scene.second and scene.second.shape,
            "second_color": scene.second and scene.second.color}.get(name, getattr(o, name, None))


def test_scenes_for_draw_what_each_benchmark_prompt_asks():
    for c in BENCHMARK_CONCEPTS:
        prompts = [c.attributes] + [{**c.attributes, **edit} for _, edit in c.edit_prompts()]
        for expected in prompts:
            scenes = c.scenes_for(expected, k=12, seed=5)
            assert len(scenes) == 12 and scenes == c.scenes_for(expected, k=12, seed=5)
            for s in scenes:
                for name, want in expected.items():
                    got = _scene_value(s, name)
                    assert (abs(got - want) < 0.5 if name == "hue" else got == want), (c.name, expected, name, got)
                if s.second is not None:  # laid out as the world lays out two objects
                    assert s.obj.position in world.TWO_OBJECT_POSITIONS and s.obj.size != "large"
                    assert s.second.position == world.MIRROR[s.obj.position] and s.second.size == "small"
            # the rest still varies, as in the training pictures
            free = [n for n in ("background", "position") if n not in expected]
            assert all(len({_scene_value(s, n) for s in scenes}) > 1 for n in free), (c.name, expected)
    with pytest.raises(ConfigError, match="cannot draw"):
        BENCHMARK_CONCEPTS[0].scenes_for({"smell": "sweet"})


def test_training_scenes_show_the_concept_in_varied_settings():
    for c in BENCHMARK_CONCEPTS:
        scenes = c.training_scenes(5, seed=0)
        assert scenes == c.training_scenes(5, seed=0) and scenes != c.training_scenes(5, seed=1)
        assert len({s.obj.position for s in scenes}) == 5 and len({s.background for s in scenes}) == 5
        assert all(s.style == c.style and s.second is None for s in scenes)
        if c.kind == "object":
            assert all((s.obj.shape, s.obj.rgb, s.obj.pattern, s.obj.rotation) ==
                       (c.base.shape, c.base.rgb, c.base.pattern, c.base.rotation) for s in scenes)
        else:
            assert len({s.obj.shape for s in scenes}) > 1
        imgs = render(scenes)
        assert all((imgs[i] - imgs[j]).abs().mean() > 0.01 for i in range(5) for j in range(i + 1, 5))


def test_pattern_visibility_counts_the_pixels_a_fill_shows_in():
    big = Scene(ObjectSpec("square", "red", pattern="stripes", size="large"), background="white")
    thin = Scene(ObjectSpec("ring", "red", pattern="dots", size="small"), background="white", style="outlined",
                 style_strength=1.0)
    solid = Scene(ObjectSpec("square", "red", size="large"), background="white")
    seen = world.pattern_visibility([big, thin, solid]).tolist()
    assert seen[0] > 300 and seen[1] < 32 and seen[2] > 100  # a solid square has room for a pattern: it shows
    assert world.pattern_visibility(big).tolist() == seen[:1]  # a scene alone counts as in a batch
    batch = world.sample_batch(4, torch.Generator().manual_seed(3))
    before = batch.obj.pattern.clone()
    world.pattern_visibility(batch)
    assert torch.equal(batch.obj.pattern, before)  # the caller's batch is left as it was
