"""Dynamic prompts: sd-dynamic-prompts' variants and wildcards in `generate`'s prompts (textinv.dynamic)."""

import random

import pytest

from textinv import dynamic
from textinv.errors import ConfigError


def _draws(template, seeds=range(40), folder=None):
    wildcards = dynamic.Wildcards(folder)
    nodes = dynamic.parse(template)
    dynamic.check(nodes, wildcards)
    return [dynamic.draw(nodes, random.Random(seed), wildcards) for seed in seeds]


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "colors").mkdir(parents=True)
    (folder / "styles.txt").write_text("# styles, one a line\n\noil painting\n  watercolor  \n# pencil\n")
    (folder / "colors" / "warm.txt").write_text("red\norange\n")
    (folder / "colors" / "cold.txt").write_text("blue\n")
    (folder / "hats.txt").write_text("a __colors/warm__ {hat|cap}\n")
    return folder


@pytest.mark.parametrize("template, seen", [
    ("a {cat|dog|bird}", {"a cat", "a dog", "a bird"}),
    ("a {big {red|blue}|small} box", {"a big red box", "a big blue box", "a small box"}),
    ("{0::a|1::b}", {"b"}),
    ("{2$$a|b}", {"a, b", "b, a"}),
    ("{2$$ and $$a|b}", {"a and b", "b and a"}),
    ("{1-2$$-$$a|b}", {"a", "b", "a-b", "b-a"}),
    ("{-1$$a|b}", {"a", "b"}),
    ("{2-$$a|b}", {"a, b", "b, a"}),
    ("{5$$a|b}", {"a, b", "b, a"}),  # (more than it has: as many as it has)
    ("{0-1$$a}", {"", "a"}),
    ("{[cat|dog]|bird}", {"[cat|dog]", "bird"}),  # (an alternation's bar is its own)
])
def test_each_variant_form_draws_what_sd_dynamic_prompts_draws(template, seen):
    assert set(_draws(template)) == seen


def test_weights_draw_options_as_often_as_they_weigh():
    drawn = _draws("{1::a|3::b}", range(2000))
    assert 0.7 < drawn.count("b") / len(drawn) < 0.8


def test_wildcards_read_lines_subfolders_globs_and_nest(wildcards):
    assert set(_draws("__styles__", folder=wildcards)) == {"oil painting", "watercolor"}  # (comments, blanks out)
    assert set(_draws("__colors/warm__", folder=wildcards)) == {"red", "orange"}
    assert set(_draws("__colors/*__", folder=wildcards)) == {"red", "orange", "blue"}
    hats = {f"a {c} {h}" for c in ("red", "orange") for h in ("hat", "cap")}
    assert set(_draws("__hats__", folder=wildcards)) == hats
    assert {tuple(sorted(d.split(", "))) for d in _draws("{2$$__colors/*__}", folder=wildcards)} <= {
        ("blue", "orange"), ("blue", "red"), ("orange", "red")}  # (a wildcard alone: its lines, none twice)


@pytest.mark.parametrize("prompt", [
    "a photo of <my-dog>, (red:1.2) [cat:dog:0.5] [a|b] BREAK <lora:ghibli:0.8> AND a cat:0.5",
    r"a \{literal\} brace \| and \_\_name\_\_",
    "16:9, [x|y], a_b __ c", "",
])
def test_the_web_uis_own_syntax_passes_through_unchanged(prompt):
    nodes = dynamic.parse(prompt)
    assert not dynamic.is_dynamic(nodes)
    (job,) = dynamic.jobs([prompt], "", [0, 1])
    assert (job.prompt, job.seeds, job.template) == (prompt, (0, 1), None)


def test_a_drawn_prompt_keeps_escapes_for_emphasis_and_draws_itself_again():
    from textinv import emphasis

    (drawn,) = _draws(r"\{a\} {b|b} \(c\)", [0])
    assert drawn == r"\{a\} b \(c\)" and emphasis.plain_text(drawn) == "{a} b (c)"
    assert not dynamic.is_dynamic(dynamic.parse(drawn))


def test_a_pictures_prompt_is_its_seeds_whatever_n_and_the_first_seed():
    template = ["a {cat|dog|bird|fish|cow} {red|blue|green}"]
    wide = {s: j.prompt for j in dynamic.jobs(template, "{x|y}", list(range(20))) for s in j.seeds}
    narrow = {s: j.prompt for j in dynamic.jobs(template, "{x|y}", list(range(7, 10))) for s in j.seeds}
    assert narrow == {s: wide[s] for s in (7, 8, 9)}
    assert len(set(wide.values())) > 5  # (pictures draw different prompts)
    negatives = {s: j.negative for j in dynamic.jobs(template, "{x|y}", list(range(20))) for s in j.seeds}
    assert set(negatives.values()) == {"x", "y"}


def test_combinatorial_mode_gives_every_combination_in_order_up_to_max_prompts(wildcards):
    jobs = dynamic.jobs(["{a|b} __colors/warm__", "plain"], "", [3, 4], str(wildcards), combinatorial=True)
    assert [(j.index, j.prompt, j.seeds) for j in jobs] == [
        (0, "a red", (3, 4)), (1, "a orange", (3, 4)), (2, "b red", (3, 4)), (3, "b orange", (3, 4)),
        (4, "plain", (3, 4))]
    assert [j.prompt for j in dynamic.jobs(["{2$$a|b|c}"], "", [0], combinatorial=True)] == ["a, b", "a, c", "b, c"]
    with pytest.warns(UserWarning, match=r"more combinations than --max-prompts 3: the first 3 are drawn"):
        jobs = dynamic.jobs(["{a|b} {c|d}"], "", [0], combinatorial=True, max_prompts=3)
    assert [j.prompt for j in jobs] == ["a c", "a d", "b c"]


@pytest.mark.parametrize("template, folder, message", [
    ("a {cat|dog", None, r"the '\{' at character 3 is never closed: close it with '\}', or write \\\{"),
    ("a cat} dog", None, r"a '\}' at character 6 closes no '\{'"),
    ("__styles__", None, r"__styles__ is a wildcard, and no --wildcards-dir was given: pass the folder that holds "
                         r"styles.txt"),
    ("__nope__", "wildcards", r"__nope__: no wildcard file nope.txt in --wildcards-dir .*wildcards \(it holds: "
                              r"colors/cold, colors/warm, empty, hats, loop_a, loop_b, styles\)"),
    ("__empty__", "wildcards", r"__empty__: the wildcard file .*empty.txt holds no options"),
    ("{a|__loop_a__}", "wildcards", r"wildcards draw one another in a loop: __loop_a__ -> __loop_b__ -> __loop_a__"),
    ("__../secret__", "wildcards", r"no wildcard file ../secret.txt"),
])
def test_bad_templates_and_wildcards_are_refused_naming_the_fix(wildcards, template, folder, message):
    (wildcards / "empty.txt").write_text("# nothing yet\n\n")
    (wildcards / "loop_a.txt").write_text("x __loop_b__\n")
    (wildcards / "loop_b.txt").write_text("{y|__loop_a__}\n")
    (wildcards.parent / "secret.txt").write_text("hidden\n")
    with pytest.raises(ConfigError, match=message):
        dynamic.jobs([template], "", [0], str(wildcards) if folder else None)
