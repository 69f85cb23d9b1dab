"""Dynamic prompts: sd-dynamic-prompts' variants and wildcards in `generate`'s prompts (textinv.dynamic)."""

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import again_warned, fresh_model, web_ui_picture
from textinv import dynamic, emphasis
from textinv.config import GenerateConfig
from textinv.errors import ConfigError
from textinv.generate import generate


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
    ("{2$$a|b}", {"a,b", "b,a"}),  # (joined by ",", the extension's default: "A red,pink rose")
    ("{2$$ and $$a|b}", {"a and b", "b and a"}),
    ("{2$$ | $$a|b}", {"a | b", "b | a"}),  # (a separator may hold a bar, as dynamicprompts reads it)
    ("{1-2$$-$$a|b}", {"a", "b", "a-b", "b-a"}),
    ("{-1$$a|b}", {"a", "b"}),
    ("{2-1$$a|b}", {"a", "b", "a,b", "b,a"}),  # (a range written backwards, as dynamicprompts reads it)
    ("{2$$a|}", {"a"}),  # (joined less a separator at either end, as dynamicprompts joins them)
    ("{1-2$$ and $$|a}", {"", "a"}),
    ("{2-$$a|b}", {"a,b", "b,a"}),
    ("{5$$a|b}", {"a,b", "b,a"}),  # (more than it has: as many as it has)
    ("{0-1$$a}", {"", "a"}),
    ("{2 :: a|b}", {"2 :: a", "b"}),  # (a space before `::`: text, as dynamicprompts' weight, a number then `::`)
    ("{|a}", {"", "a"}),
    ("{[cat|dog]|bird}", {"[cat|dog]", "bird"}),  # (an alternation's bar is its own)
])
def test_each_variant_form_draws_what_sd_dynamic_prompts_draws(template, seen):
    assert set(_draws(template)) == seen


@pytest.mark.parametrize("template, drawn", [
    ("%{(...:1.2)$${cat|cat}}", "(cat:1.2)"),
    ("a %{ [...] $$ dog} c", "a [dog]  c"),  # (the whitespace after `%{` and `$$` left out)
    ("%{x\u2026y$$z}", "xzy"),  # (Unicode's ellipsis too)
    ("%{no marker$$x}", "no markerx"),
    ("100%{a|a}", "100%a"),  # (no `$$`: a `%` before a variant, as before; dynamicprompts refuses it)
])
def test_a_wrap_command_draws_its_inner_text_where_its_wrapper_has_dots(template, drawn):
    """dynamicprompts' `%{wrapper$$inner}`: the drawn inner text stands in the wrapper's first `...`."""
    assert set(_draws(template, range(3))) == {drawn}


def test_a_wrap_commands_parts_come_from_wildcards_and_combine_in_order(wildcards):
    (wildcards / "wraps.txt").write_text("(...:1.2)\n[...]\n")
    assert set(_draws("%{__wraps__$$a {cat|dog}}", folder=wildcards)) == {
        "(a cat:1.2)", "(a dog:1.2)", "[a cat]", "[a dog]"}
    assert [j.prompt for j in dynamic.jobs(["%{{a...|b...}$${x|y}}"], "", [0], combinatorial=True)] == [
        "ax", "ay", "bx", "by"]  # (as dynamicprompts 0.31 gives them)
    with pytest.raises(ConfigError, match=r"the '%\{' at character 1 is never closed, or holds a '\|' after its "
                                          r"'\$\$': write %\{wrapper ... \$\$inner\}"):
        dynamic.jobs(["%{a$$b|c}"], "", [0])


def test_a_variable_set_with_a_bang_is_drawn_once_else_at_each_use():
    assert set(_draws("${s=!{a|b|c}}${s} ${s} ${s}")) == {"a a a", "b b b", "c c c"}
    drawn = set(_draws("${s={a|b|c}}${s} ${s} ${s}", range(200)))
    assert len(drawn) > 10 and "a b c" in drawn  # (each use drawn anew)
    assert set(_draws("${s=summer}in ${s}")) == {"in summer"}
    assert set(_draws("${a=!{x|y}}${b=!${a}${a}}${b}-${a}")) == {"xx-x", "yy-y"}  # (a setting sees those before it)


@pytest.mark.parametrize("template, seen", [
    ("{a ${s:dry}|b ${s:dry}}", {"a dry", "b dry"}),  # a default where it is not set
    ("${s=!{wet|cold}}{a ${s:dry}|b {${s}|c}}", {"a wet", "a cold", "b wet", "b cold", "b c"}),  # in nested variants
    ("${s:{x|y}}", {"x", "y"}),  # a default is a template
    ("${s = wet }${s}", {"wet "}),
    ("${s=! {wet|cold}} a ${s} day", {" a wet day", " a cold day"}),  # (spaces after `=!` left out; the text's kept)
    ("(${s=!{a|b}}${s}:1.2) [${s}|x] [${s}:x:0.5]", {"(a:1.2) [a|x] [a:x:0.5]", "(b:1.2) [b|x] [b:x:0.5]"}),
    ("${s=a}${s?=b}${s}", {"a"}),  # `?=` keeps a value set
    ("${s?=b}${s}", {"b"}),
    ("${s}${s=late}", {"late"}),  # (a setting holds for the whole text it stands in)
    (r"$\{s\} costs $5", {r"$\{s\} costs $5"}),
    # (dynamicprompts refuses a `$` or `%` that starts nothing; every prompt here takes the syntax, so a plain
    # "a $5 bill, 100% cotton" is drawn as the text it is)
    ("costs $5, 100% cotton, 100%{a|a}", {"costs $5, 100% cotton, 100%a"}),
])
def test_variables_are_used_as_sd_dynamic_prompts_uses_them(template, seen):
    assert set(_draws(template)) == seen


def test_variables_reach_wildcard_files_and_a_wildcards_own_variables_its_lines(wildcards):
    (wildcards / "outfit.txt").write_text("a ${season:spring} coat\n")
    (wildcards / "weather.txt").write_text("${sky=!{grey|blue}}${sky} sky, ${sky} sea, __outfit__\n")
    assert set(_draws("${season=!{summer|winter}}__outfit__, ${season}", folder=wildcards)) == {
        "a summer coat, summer", "a winter coat, winter"}
    assert set(_draws("__outfit__", folder=wildcards)) == {"a spring coat"}
    assert set(_draws("__outfit__${s:!}", folder=wildcards)) == {"a spring coat!"}  # (a wildcard, then a variable)
    assert set(_draws("__outfit(season=winter)__ __outfit(season={wet|dry})__", folder=wildcards)) == {
        "a winter coat a wet coat", "a winter coat a dry coat"}
    assert set(_draws("{2$$__outfit(season=autumn)__}", folder=wildcards)) == {"a autumn coat"}
    assert set(_draws("${season=dry}__weather__", folder=wildcards)) == {"grey sky, grey sea, a dry coat",
                                                                           "blue sky, blue sea, a dry coat"}
    with pytest.raises(ConfigError, match=r"\$\{sky\} is used where no \$\{sky=...\} sets it"):
        _draws("__weather__ ${sky}", folder=wildcards)  # (a line's variables are its own)


def test_combinatorial_mode_takes_each_value_of_a_variable_set_once(wildcards):
    (wildcards / "outfit.txt").write_text("a ${season} coat\n")
    jobs = dynamic.jobs(["${s=!{a|b}}${s}-${s} {x|y}"], "", [0], combinatorial=True)
    assert [j.prompt for j in jobs] == ["a-a x", "a-a y", "b-b x", "b-b y"]
    jobs = dynamic.jobs(["${s={a|b}}${s}${s} __outfit(season={c|d})__"], "", [0], str(wildcards), combinatorial=True)
    assert [j.prompt for j in jobs] == ["aa a c coat", "aa a d coat", "ab a c coat", "ab a d coat", "ba a c coat",
                                        "ba a d coat", "bb a c coat", "bb a d coat"]


@pytest.mark.parametrize("template, message", [
    ("a ${season} day", r"\$\{season\} is used where no \$\{season=...\} sets it: set it before .* or give a "
                        r"default: \$\{season:value\}"),
    ("{a|${s=b}}", r"the '\$\{' at character 4 sets \$\{s\} inside a variant or a variable: set it before"),
    ("${s=a|b}", r"\$\{s\}'s value holds a '\|' at character 6: .*wrap options in a variant"),
    ("${s=a", r"the '\$\{' at character 1 is never closed"),
    ("${1s}", r"the '\$\{' at character 1 starts no variable .* write \$\\\{ for the characters"),
    ("${s={a|${s}}}${s}", r"a variable draws itself in a loop: \$\{s\} -> \$\{s\}"),
    ("__styles(a)__", r"the wildcard __styles\(a\)__ sets its variables as name=value"),
    ("${s=cold}__colors/${s}__", r"the wildcard at character 10 is named by a variable, which textinv does not read"),
    ("a __styles(x=a, s=(red:1.2))__", r"the wildcard at character 3 sets a variable to a value in parentheses, which "
                                  r"textinv does not read: set it before \(\$\{s=\(red:1.2\)\}__styles__\)"),
])
def test_bad_variables_are_refused_naming_the_fix(wildcards, template, message):
    with pytest.raises(ConfigError, match=message):
        dynamic.jobs([template], "", [0], str(wildcards))


def test_double_underscores_before_a_variable_are_text_where_no_wildcard_is_closed(wildcards):
    """A wildcard named by a variable is refused only where dynamicprompts reads one: `__`, a name not starting with a
    space, its variables, and a closing `__` (a name may hold spaces since it is read as there); `snake_case__ and
    ${s}` is text and a variable, as it was before names held spaces."""
    for template, drawn in [("snake_case__ and ${s=x} ${s}", "snake_case__ and  x"),
                            ("tail__ x ${v=1}y__z", "tail__ x y__z"), ("my__var ${v=1} here", "my__var  here")]:
        assert [j.prompt for j in dynamic.jobs([template], "", [0], str(wildcards))] == [drawn]
    for template in ["${s=cold}__colors/${s}__", "${s=cold}__${s} colors__", "${s=cold}__my colors/${s}__"]:
        with pytest.raises(ConfigError, match="is named by a variable"):
            dynamic.jobs([template], "", [0], str(wildcards))


def test_a_variable_or_wildcard_refused_names_the_prompt_it_is_in(wildcards):
    with pytest.raises(ConfigError, match=r"^--prompt 'b \$\{s\}': \$\{s\} is used where no"):
        dynamic.jobs(["a", "b ${s}"], "", [0])
    with pytest.raises(ConfigError, match=r"^--negative-prompt '__nope__': __nope__: no wildcard file nope.txt"):
        dynamic.jobs(["a"], "__nope__", [0], str(wildcards))


def test_weights_draw_options_as_often_as_they_weigh():
    drawn = _draws("{1::a|3::b}", range(2000))
    assert 0.7 < drawn.count("b") / len(drawn) < 0.8


def test_wildcards_read_lines_subfolders_globs_and_nest(wildcards):
    assert set(_draws("__styles__", folder=wildcards)) == {"oil painting", "watercolor"}  # (comments, blanks out)
    assert set(_draws("__colors/warm__", folder=wildcards)) == {"red", "orange"}
    assert set(_draws("__colors/*__", folder=wildcards)) == {"red", "orange", "blue"}
    hats = {f"a {c} {h}" for c in ("red", "orange") for h in ("hat", "cap")}
    assert set(_draws("__hats__", folder=wildcards)) == hats
    assert {tuple(sorted(d.split(","))) for d in _draws("{2$$__colors/*__}", folder=wildcards)} <= {
        ("blue", "orange"), ("blue", "red"), ("orange", "red")}  # (a wildcard alone: its lines, none twice)


def test_a_hash_starts_a_comment_to_the_end_of_a_wildcard_files_line_as_the_extensions_parser_reads_it(wildcards):
    """dynamicprompts leaves out lines starting with `#`, and its parser reads a `#` anywhere in a line as a comment
    to the line's end (textinv leaves out the spaces before it too); `\\#` is the character."""
    (wildcards / "hues.txt").write_text("red # a warm one\n  # indented\n{teal|navy}# cool ones\nno\\#1\n")
    (wildcards / "hues.yaml").write_text("more: ['green # cool', \"# only a comment\"]\n")
    assert set(_draws("__hues__", folder=wildcards)) == {"red", "teal", "navy", "no\\#1"}
    assert set(_draws("__more__", folder=wildcards)) == {"green"}


def test_wildcards_whose_names_hold_spaces_are_read_as_the_extension_reads_them(wildcards):
    """dynamicprompts reads a wildcard's name up to its closing `__`, spaces and all, so files and folders named with
    spaces are wildcards; `__` with a space after it (or before the closing one) stays text."""
    (wildcards / "eye colors").mkdir()
    (wildcards / "eye colors" / "deep ones.txt").write_text("brown\n")
    (wildcards / "hair color.txt").write_text("blond\n")
    assert set(_draws("__hair color__, __eye colors/deep ones__ eyes", folder=wildcards)) == {"blond, brown eyes"}
    assert not dynamic.is_dynamic(dynamic.parse("a __ b __ c, x__ y__"))
    assert not dynamic.is_dynamic(dynamic.parse(dynamic.literal("__hair color__")))


def test_a_wildcard_found_nowhere_by_its_name_is_looked_for_in_the_subfolders_with_a_warning(wildcards):
    """dynamicprompts, finding no wildcard of the name, tries `**/name` (a file of that name in any subfolder) and warns
    which it used, so prompts written for a collection laid out in folders still draw."""
    (wildcards / "people" / "hair").mkdir(parents=True)
    (wildcards / "people" / "hair" / "long.txt").write_text("braids\n")
    with pytest.warns(UserWarning) as caught:
        assert set(_draws("__warm__ __hair/long__", folder=wildcards)) == {"red braids", "orange braids"}
    assert [str(w.message) for w in caught] == [
        "__warm__: no wildcard of that name; drawn from colors/warm, as the extension draws **/warm: name it so",
        "__hair/long__: no wildcard of that name; drawn from people/hair/long, as the extension draws **/hair/long: "
        "name it so"]
    with pytest.raises(ConfigError, match=r"__cold/x__: no wildcard file cold/x.txt"):
        _draws("__cold/x__", folder=wildcards)


def test_yaml_and_json_files_hold_wildcards_named_by_their_keys(wildcards):
    """As dynamicprompts reads them: a mapping's keys name the wildcards (not the file), nested keys as `key/sub`, under
    the file's folder; a file that is one list is named as a .txt file; globs cover them beside the .txt files."""
    (wildcards / "palette.yaml").write_text("colors:\n  pale: [white, 'ivory']\nwarm: [amber]\n")
    (wildcards / "colors" / "more.json").write_text('{"shades": {"dark": ["black"]}}')
    (wildcards / "flat.yml").write_text("- one\n- two\n")
    (wildcards / "toys.yaml").write_text("toys:\n  - |\n    # Usage: __toys(figure=elephant)__\n"
                                          "    a ${figure} plush toy\n")
    assert set(_draws("__colors/pale__", folder=wildcards)) == {"white", "ivory"}
    assert set(_draws("__warm__ __flat__", folder=wildcards)) == {"amber one", "amber two"}
    assert set(_draws("__colors/shades/dark__", folder=wildcards)) == {"black"}
    assert set(_draws("__colors/*__", folder=wildcards, seeds=range(100))) == {
        "red", "orange", "blue", "white", "ivory", "black"}
    assert set(_draws("__toys(figure=elephant)__", folder=wildcards)) == {"a elephant plush toy"}


def test_yaml_values_and_one_list_files_are_read_as_the_extension_reads_them(wildcards):
    """dynamicprompts 0.31 reads a key holding one string as one option, a key holding nothing as none, keys nested
    any depth as `key/sub/subsub`, and a file that is one list as its strings written out: `2::red` is that text
    (it weighs a key's list alone), and its other items are left out (textinv warns of both)."""
    (wildcards / "palette.yaml").write_text("solo: just red\nplaceholder:\nnested:\n  deep:\n    deeper: [x]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(_draws("__solo__ __nested/deep/deeper__", folder=wildcards)) == {"just red x"}
    with pytest.raises(ConfigError, match=r"__placeholder__: the wildcard file .*palette.yaml holds no options under "
                                          r"placeholder"):
        _draws("__placeholder__", folder=wildcards)
    (wildcards / "flat.yaml").write_text("- 2::red\n- blue\n- {text: green, weight: 3}\n- 7\n-\n")
    with pytest.warns(UserWarning, match=r"flat.yaml is one list, which the extension reads as text alone: '2::red' is "
                                         r"drawn as written, not weighed, and 2 item\(s\) that are not text are left "
                                         r"out; put the list under a key \(flat: \[...\]\) to weigh its options"):
        assert set(_draws("__flat__", folder=wildcards)) == {"2::red", "blue"}


def test_options_in_yaml_and_json_files_weigh_what_they_say(wildcards):
    (wildcards / "w.json").write_text('{"w": ["3::b", "a", {"text": "c", "weight": 0}, {"content": "d", "weight": 0},'
                                      ' "", null, "2::x::y"]}')
    drawn = _draws("__w__", range(2000), folder=wildcards)
    assert set(drawn) == {"a", "b", "2::x::y"}
    assert 0.55 < drawn.count("b") / len(drawn) < 0.65
    assert [j.prompt for j in dynamic.jobs(["__w__"], "", [0], str(wildcards), combinatorial=True)] == [
        "2::x::y", "a", "b", "b", "b"]  # (sorted by their text, each as often as it weighs, cut to a whole number:
    # those weighing 0 left out, as dynamicprompts 0.31's combinatorial sampler, _get_wildcard, takes them)


@pytest.mark.parametrize("name, text, used, message", [
    ("bad.yaml", "a: [x\n", "a", r"__a__: no wildcard file a.txt .*; it may be in a wildcard file that does not "
                                 r"read: the wildcard file .*bad.yaml is not YAML \(.*\): fix it, or move it out"),
    ("bad.json", '{"a": [x]}', "a", r"the wildcard file .*bad.json is not JSON \(Expecting value at line 1 column 8\)"),
    ("bad.yaml", "a:\n  flurp: 12345\n", "a/flurp", r"bad.yaml: the key a/flurp holds 12345 \(int\), where a list "
                                                    r"of options or a mapping of names is expected"),
    ("bad.yaml", "a: [x, 1990]\n", "a", r"bad.yaml: item 2 of the key a is 1990 \(int\), not an option's text: quote"),
    ("bad.yaml", "a: [{x|y}, z]\n", "a", r"bad.yaml: item 1 of the key a is \{'x\|y': None\} \(dict\), not an option's "
                                        r"text \(YAML reads \{a\|b\} unquoted as a mapping: quote it, '\{a\|b\}'\)"),
    ("bad.json", '{"a": [{"text": "x", "weight": "heavy"}]}', "a", r"item 1 of the key a weighs 'heavy', not a number"),
    ("bad.yaml", "1234: [x]\n", "1234", r"bad.yaml: the key 1234 \(int\) is not a name: quote it"),
    ("bad.yaml", "just text\n", "a", r"bad.yaml holds str, where a mapping of names to lists of options"),
    ("bad.json", '{"a": [{"text": "x", "weight": -1}]}', "a", r"item 1 of the key a weighs -1: a weight is 0 or more"),
    ("bad.yaml", "styles: [x]\n", "styles", r"__styles__ is given twice in wildcards_dir=.*: by .*bad.yaml \(key "
                                            r"styles\) and .*styles.txt; rename or remove one"),
])
def test_a_bad_yaml_or_json_wildcard_file_or_key_is_skipped_with_a_warning_and_refused_where_used(wildcards, name,
                                                                                                   text, used, message):
    """As dynamicprompts skips a structured file that does not read, or a key it cannot take, with a warning: the
    other wildcards draw; the bad one, used, is refused naming the file."""
    (wildcards / name).write_text(text)
    with pytest.warns(UserWarning, match=name):
        assert {j.prompt for j in dynamic.jobs(["__colors/*__ __hats__"], "", [0], str(wildcards))}
    with pytest.warns(UserWarning, match=name), pytest.raises(ConfigError, match=message):
        dynamic.jobs([f"__{used}__ __hats__"], "", [0], str(wildcards))


def test_an_empty_key_is_refused_where_used(wildcards):
    (wildcards / "bad.yaml").write_text("a: []\n")
    with pytest.raises(ConfigError, match=r"__a__: the wildcard file .*bad.yaml holds no options under a"):
        dynamic.jobs(["__a__ __styles__"], "", [0], str(wildcards))


def test_a_yaml_or_json_file_that_never_ends_expands_past_counting_or_nests_too_deeply_is_refused(wildcards,
                                                                                                     monkeypatch):
    """YAML's aliases can make a mapping hold itself, or a few lines stand for billions of keys; brackets may nest
    thousands deep: each file is skipped with a warning and named where its wildcard is used, not a hang or a
    RecursionError. The count's limit is lowered for the test (counting to the real million took seconds)."""
    def refused(prompt, message):
        with pytest.warns(UserWarning, match="left out with its wildcards"), pytest.raises(ConfigError, match=message):
            dynamic.jobs([prompt], "", [0], str(wildcards))

    (wildcards / "self.yaml").write_text("a: &x\n  b: [red]\n  c: *x\n")
    refused("__a/b__", r"self.yaml: the key a/c holds a mapping around it \(a YAML alias of its own anchor\), so its "
                       r"names never end: ")
    readme = " ".join((Path(__file__).resolve().parent.parent / "docs" / "generate.md").read_text(encoding="utf-8").split())
    assert dynamic.MAX_STRUCTURED == 1_000_000 and "stand for over a million keys and options" in readme
    levels = ["l0: &l0 [x]"] + [f"l{k}: &l{k} {{" + ", ".join(f"k{j}: *l{k - 1}" for j in range(10)) + "}"
                                for k in range(1, 4)]
    (wildcards / "self.yaml").write_text("\n".join(levels) + "\n")  # (1234 keys and 1111 options, aliases expanded)
    monkeypatch.setattr(dynamic, "MAX_STRUCTURED", 2345)  # each alias's keys and options counted, as often as used
    assert [j.prompt for j in dynamic.jobs(["__l0__"], "", [0], str(wildcards))] == ["x"]
    monkeypatch.setattr(dynamic, "MAX_STRUCTURED", 2344)
    refused("__l0__", r"self.yaml holds more than 2344 keys and options \(its aliases expanded\)")
    monkeypatch.undo()
    (wildcards / "self.yaml").unlink()
    (wildcards / "deep.json").write_text('{"a":' * 5000 + '["x"]' + "}" * 5000)
    refused("__a__", r"deep.json nests too deeply to read")
    (wildcards / "deep.json").write_text('{"a":' * 150 + '["x"]' + "}" * 150)
    refused("__a__", r"deep.json: the key a/a/.*/a nests its keys too deeply")


def test_a_cyclical_part_gives_the_ith_seed_its_ith_text_whatever_n(wildcards):
    """`{@...}` and `__@...__` (dynamicprompts' cyclical sampler): options in turn, an option's own parts turning once
    a round; picture i (of --seed, --seed + 1, ...) takes the i-th."""
    def prompts(template, seeds=range(10, 16)):
        return [j.prompt for seed in seeds for j in dynamic.jobs([template], "", list(seeds), str(wildcards))
                if seed in j.seeds]

    assert prompts("{@a|b|c} {@x|y}") == ["a x", "b y", "c x", "a y", "b x", "c y"]
    assert prompts("{@a|b|c} {@x|y}", range(10, 13)) == ["a x", "b y", "c x"]
    assert prompts("{@a|{b|c}}") == ["a", "b", "a", "c", "a", "b"]
    assert prompts("__@colors/*__") == ["blue", "orange", "red", "blue", "orange", "red"]
    assert prompts("{@2$$a|b|c}", range(7)) == ["a,b", "a,c", "b,a", "b,c", "c,a", "c,b", "a,b"]
    assert set(prompts("{@a|{~b|c}}")[1::2]) <= {"b", "c"}
    with pytest.raises(ConfigError, match=r"a cyclical variant \{@2\$\$...\} has no 2 different options to choose"):
        prompts("{@2$$a|a}")  # (dynamicprompts turns forever)


def test_random_and_combinatorial_marks_draw_as_dynamicprompts_draws_them(wildcards):
    """`~` draws at random, `!` enumerates: in random mode both draw as unmarked parts do (dynamicprompts cannot
    enumerate within random drawing); in combinatorial mode a `~` part is drawn once each combination, and `@` takes
    its next text."""
    assert _draws("{~a|b|c} {!x|y} __~styles__", folder=wildcards) == _draws("{a|b|c} {x|y} __styles__",
                                                                                 folder=wildcards)
    assert _draws("{ ~2$$a|b|c}") == _draws("{2$$a|b|c}")
    jobs = [j.prompt for j in dynamic.jobs(["{!a|b|c|d} {~x|y|z} {@p|q|r}"], "", [0, 1], combinatorial=True)]
    assert [p[0] for p in jobs] == ["a", "b", "c", "d"] and {p[2] for p in jobs} <= {"x", "y", "z"}
    assert [p[-1] for p in jobs] == ["p", "q", "r", "p"]
    again = [j.prompt for j in dynamic.jobs(["{!a|b|c|d} {~x|y|z} {@p|q|r}"], "", [0, 5], combinatorial=True)]
    assert again == jobs  # (drawn from the first seed)
    assert [j.prompt for j in dynamic.jobs(["__!colors/*__ __@styles__"], "", [0], str(wildcards),
                                           combinatorial=True)] == ["blue oil painting", "orange watercolor",
                                                                    "red oil painting"]


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


@pytest.mark.parametrize("template, drawn", [
    ("a photo # a comment\nof a dog", "a photo  \nof a dog"),  # (the text either side joined by a space)
    ("# a note\na dog", "\na dog"),
    ("// a note\na dog", "\na dog"),
    ("/* a note */a dog", "a dog"),
    ("{red|red} // a note\ndog", "red\ndog"),  # (where a part starts, with the whitespace before it)
    ("{red|red}\n\n// one\n# two\n/* three */ dog", "red dog"),
    ("{red|red}/* a\nnote */ dog", "red dog"),
    ("http://x.org/a // b /* c */", "http://x.org/a // b /* c */"),  # (within text: text)
    ("{ # note\n red|red}", "red"),
    ("{2::/* note */red|red}", "red"),
    ("${s= # note\n red}${s}", "red"),
    ("{red # note\n}", "red  \n"),
    ("no\\#1 # note", "no\\#1 "),  # (textinv's escape: the character)
])
def test_comments_in_a_prompt_are_left_out_as_dynamicprompts_parser_leaves_them_out(template, drawn):
    """dynamicprompts' parser ignores `#` to the end of its line anywhere in text, and `//` to the line's end and
    `/* */` where a part starts (the prompt's or an option's start, after a variant, wildcard or variable): the drawn
    texts here are the ones dynamicprompts 0.31 gives for them."""
    assert set(_draws(template, range(3))) == {drawn}


def test_a_prompt_with_comments_alone_is_drawn_less_them_and_records_its_template():
    (job,) = dynamic.jobs(["a dog # a note"], "// a note\nblurry", [0, 1])
    assert (job.prompt, job.negative, job.template, job.negative_template) == (
        "a dog ", "\nblurry", "a dog # a note", "// a note\nblurry")
    with pytest.raises(ConfigError, match=r"the '\{' at character 1 is never closed \(a # in it starts a comment to "
                                          r"the end of its line: write \\# for the character\)"):
        dynamic.jobs(["{a|b # note}"], "", [0])


def test_a_drawn_prompt_keeps_escapes_for_emphasis_and_draws_itself_again():
    from textinv import emphasis

    (drawn,) = _draws(r"\{a\} {b|b} \(c\)", [0])
    assert drawn == r"\{a\} b \(c\)" and emphasis.plain_text(drawn) == "{a} b (c)"
    assert not dynamic.is_dynamic(dynamic.parse(drawn))


@pytest.mark.parametrize("text", ["__w(s=(x:1.2))__ ${s} $\\{t} __a__", "{{best}} __init__(self) a\\{b",
                                  " // a #1 fan /* x */"])
def test_a_pictures_prompt_made_literal_is_drawn_as_the_text_it_is(text):
    literal = dynamic.literal(text)
    assert not dynamic.is_dynamic(dynamic.parse(literal))
    assert emphasis.plain_text(literal) == emphasis.plain_text(text)
    (job,) = dynamic.jobs([literal], "", [0])
    assert emphasis.plain_text(job.prompt) == emphasis.plain_text(text)


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
        (0, "a orange", (3, 4)), (1, "a red", (3, 4)), (2, "b orange", (3, 4)), (3, "b red", (3, 4)),
        (4, "plain", (3, 4))]
    assert [j.prompt for j in dynamic.jobs(["{2$$a|b|c}"], "", [0], combinatorial=True)] == [
        "a,b", "a,c", "b,a", "b,c", "c,a", "c,b"]  # (each order, as dynamicprompts 0.31 enumerates them)
    with pytest.warns(UserWarning, match=r"more combinations than --max-prompts 3: the first 3 are drawn"):
        jobs = dynamic.jobs(["{a|b} {c|d}"], "", [0], combinatorial=True, max_prompts=3)
    assert [j.prompt for j in jobs] == ["a c", "a d", "b c"]


def test_combinatorial_mode_gives_a_wildcards_text_again_for_each_line_that_draws_it(wildcards):
    """dynamicprompts 0.31's combinatorial sampler (samplers/combinatorial.py, `_get_wildcard`) gives every text of
    each of a wildcard's lines, none left out for being given before, while its variants (`_get_variant`) give each
    choice once and a `{2$$...}` choice no text twice. The wildcard manager reads a line written twice once (its
    default, dedup_wildcards), so here `red` twice and `{red|blue}` give red, red, blue: the lists are the ones
    dynamicprompts 0.31 gives."""
    (wildcards / "twice.txt").write_text("red\nred\n{red|blue}\n")
    def prompts(template):
        return [j.prompt for j in dynamic.jobs([template], "", [0], str(wildcards), combinatorial=True)]

    assert prompts("__twice__") == ["red", "red", "blue"]
    assert prompts("{a|a|b} __twice__") == ["a red", "a red", "a blue", "b red", "b red", "b blue"]
    assert prompts("x {__twice__|y}") == ["x red", "x blue", "x y"]  # (a variant's texts: each once)
    assert prompts("{2$$a|a|b}") == ["a,b", "b,a"]
    assert prompts("{2$$__twice__}") == ["red,blue", "blue,red"]
    assert prompts("{2$$a|{b|c}}") == ["a,b", "a,c", "b,a", "c,a"]  # (every text of an option, whatever its place)
    assert prompts("{x|{a|a}}") == ["x", "a"]


def test_a_prompt_given_again_in_combinatorial_mode_is_drawn_with_seeds_of_its_own(wildcards):
    """The extension draws each prompt of its list with a seed of its own, so a text given again is another picture;
    here each prompt is drawn with every seed, and its k-th time with the seeds k blocks of -n further on."""
    (wildcards / "twice.txt").write_text("red\n{red|blue}\n")
    jobs = dynamic.jobs(["a __twice__"], "{@x|y|z|w}", [5, 6], str(wildcards), combinatorial=True)
    assert [(j.index, j.prompt, j.seeds) for j in jobs] == [(0, "a red", (5,)), (0, "a red", (6,)),
                                                             (1, "a red", (7,)), (1, "a red", (8,)),
                                                             (2, "a blue", (5,)), (2, "a blue", (6,))]
    assert [j.negative for j in jobs] == ["x", "y", "z", "w", "x", "y"]  # (a cyclical part: the picture's turn)
    with pytest.warns(UserWarning, match="more combinations than --max-prompts 2"):  # (each time counted)
        assert [j.prompt for j in dynamic.jobs(["__twice__"], "", [0], str(wildcards), combinatorial=True,
                                               max_prompts=2)] == ["red", "red"]


def test_a_wildcard_alone_in_a_variant_may_give_a_line_weighing_2_twice(wildcards):
    """dynamicprompts 0.31 turns `{2$$__name__}` into a variant of the wildcard's lines, each as many times as it
    weighs (samplers/utils.py, `wildcard_to_variant`), drawn without replacement from those copies (utils.py,
    `choose_without_replacement`): a line weighing 3 may be drawn twice, and as many are drawn as the wildcard has
    lines, each counted once. Two lines that draw one text may give it twice too (`red` and `{red|blue}`). The
    drawn lists here are the ones dynamicprompts 0.31 gives for these seeds."""
    (wildcards / "w.yaml").write_text("w: ['3::a', b]\n")
    (wildcards / "twice.txt").write_text("red\n{red|blue}\n")
    assert set(_draws("{5$$__w__}", range(100), folder=wildcards)) == {"a,a", "a,b", "b,a"}
    assert set(_draws("{1-3$$__w__}", range(100), folder=wildcards)) == {"a", "b", "a,a", "a,b", "b,a"}
    assert _draws("{2$$__w__}", range(6), folder=wildcards) == ["b,a", "a,b", "a,a", "a,a", "a,b", "a,b"]
    assert set(_draws("{2$$__twice__}", range(100), folder=wildcards)) == {"red,red", "red,blue", "blue,red"}


def test_a_wildcards_weights_count_as_the_extension_counts_them_in_cyclical_and_combinatorial_drawing(wildcards):
    """dynamicprompts takes a wildcard's option as often as its weight, cut to a whole number, where it does not draw
    at random: a cyclical wildcard turns through them so, `{__name__}` draws by them, and combinatorial mode leaves
    out those weighing under 1 (the lists here are the ones dynamicprompts 0.31 gives)."""
    (wildcards / "w.yaml").write_text("w: ['2.7::heavy', '0.5::half', plain, {text: zero, weight: 0}]\n"
                                      "light: ['0.5::a', '0.2::b']\n")
    cycled = {s: j.prompt for j in dynamic.jobs(["__@w__"], "", list(range(4)), str(wildcards)) for s in j.seeds}
    assert cycled == {0: "heavy", 1: "heavy", 2: "plain", 3: "heavy"}
    assert [j.prompt for j in dynamic.jobs(["__w__", "{__w__}"], "", [0], str(wildcards), combinatorial=True)] == [
        "heavy", "heavy", "plain", "heavy", "plain"]
    drawn = _draws("{__w__}", range(3000), folder=wildcards)
    assert set(drawn) == {"heavy", "plain"} and 0.62 < drawn.count("heavy") / len(drawn) < 0.72
    assert {"half", "heavy", "plain"} == set(_draws("__w__", range(300), folder=wildcards))  # (at random: as weighed)
    with pytest.raises(ConfigError, match=r"__light__: its options all weigh under 1, .*: weigh one 1 or more"):
        dynamic.jobs(["__@light__"], "", [0], str(wildcards))


def test_a_wildcards_lines_are_drawn_each_once_in_sorted_order_as_sd_dynamic_prompts_reads_them(wildcards):
    """The extension's wildcard manager (its defaults: dedupe, sort) reads a file's lines, and a glob's, each once
    (a line written twice weighs as one) and sorted by their text, which cyclical and combinatorial drawing follow."""
    (wildcards / "twice.txt").write_text("red\nred\nred\nblue\n")
    drawn = _draws("__twice__", range(2000), folder=wildcards)
    assert 0.45 < drawn.count("red") / len(drawn) < 0.55
    assert [j.prompt for j in dynamic.jobs(["__colors/*__"], "", [0], str(wildcards), combinatorial=True)] == [
        "blue", "orange", "red"]
    cycled = {s: j.prompt for j in dynamic.jobs(["__@colors/warm__"], "", [0, 1, 2], str(wildcards)) for s in j.seeds}
    assert cycled == {0: "orange", 1: "red", 2: "orange"}


@pytest.mark.parametrize("template, folder, message", [
    ("a {cat|dog", None, r"the '\{' at character 3 is never closed: close it with '\}', or write \\\{"),
    ("a cat} dog", None, r"a '\}' at character 6 closes no '\{'"),
    ("__styles__", None, r"__styles__ is a wildcard, and no wildcards_dir= was given: pass the folder that holds "
                         r"styles.txt"),
    ("__nope__", "wildcards", r"__nope__: no wildcard file nope.txt in wildcards_dir=.*wildcards' \(it holds: "
                              r"colors/cold, colors/warm, empty, hats, latin, loop_a, loop_b, styles\)"),
    ("__empty__", "wildcards", r"__empty__: the wildcard file .*empty.txt holds no options"),
    ("{a|__loop_a__}", "wildcards", r"wildcards draw one another in a loop: __loop_a__ -> __loop_b__ -> __loop_a__"),
    ("__../secret__", "wildcards", r"no wildcard file ../secret.txt"),
    ("a photo of {}", None, r"'\{\}' marks the token in training's prompts; here it is an empty variant"),
    ("__latin__", "wildcards", r"__latin__: the wildcard file .*latin.txt is not UTF-8 text .*save it as UTF-8"),
])
def test_bad_templates_and_wildcards_are_refused_naming_the_fix(wildcards, template, folder, message):
    (wildcards / "empty.txt").write_text("# nothing yet\n\n")
    (wildcards / "loop_a.txt").write_text("x __loop_b__\n")
    (wildcards / "loop_b.txt").write_text("{y|__loop_a__}\n")
    (wildcards.parent / "secret.txt").write_text("hidden\n")
    (wildcards / "latin.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=message):
        dynamic.jobs([template], "", [0], str(wildcards) if folder else None)


def test_wildcards_drawing_one_another_hundreds_deep_are_refused_naming_the_chain(wildcards):
    for k in range(1000):
        (wildcards / f"deep{k}.txt").write_text(f"x __deep{k + 1}__\n" if k < 999 else "end\n")
    with pytest.raises(ConfigError, match=r"wildcards and variables draw one another more than 100 deep: __deep0__ "
                                          r"-> __deep1__ -> .* -> __deep100__; "):
        dynamic.jobs(["__deep0__"], "", [0], str(wildcards))


def test_braces_nested_hundreds_deep_are_refused_naming_the_prompt():
    with pytest.raises(ConfigError, match=r"--prompt '\{\{\{.*: its variants nest too deeply to read"):
        dynamic.jobs(["{" * 1000 + "a" + "}" * 1000], "", [0])
    for combinatorial in (False, True):  # (read, but drawn deeper)
        with pytest.raises(ConfigError, match=r"prompt=\['\{\{\{.*: variants nest too deeply to draw"):
            dynamic.jobs(["{" * 400 + "a|b" + "}" * 400], "", [0], combinatorial=combinatorial)


@pytest.mark.parametrize("prompt", ["__w0__ {__w0__|__w3__}", "${s=!{a|b}}${t={c|d}}__w0__ {__w0__|__w3__}"])
def test_each_wildcard_is_checked_once_not_once_for_each_way_to_reach_it(wildcards, monkeypatch, prompt):
    """Four lines each drawing the next wildcard, ten deep, reach the last one 4**9 ways (with the same variables
    set around it, as a prompt's variables are)."""
    for k in range(10):
        (wildcards / f"w{k}.txt").write_text("".join(f"{j} __w{k + 1}__\n" for j in range(4)) if k < 9 else "end\n")
    calls, check = [], dynamic.check
    monkeypatch.setattr(dynamic, "check", lambda *args, **kwargs: calls.append(1) or check(*args, **kwargs))
    dynamic.jobs([prompt], "", [0], str(wildcards))
    assert len(calls) < 200


def test_a_folder_named_like_a_wildcard_file_is_not_read_as_one(wildcards):
    (wildcards / "old.txt").mkdir()
    assert {j.prompt for j in dynamic.jobs(["__*__"], "", list(range(30)), str(wildcards))} >= {"blue", "watercolor"}


def test_files_in_hidden_folders_are_not_wildcards_as_the_extension_passes_those_folders_over(wildcards):
    """dynamicprompts walks --wildcards-dir leaving out folders whose names start with a dot (.git, an editor's
    .history): their copies of the files are no wildcards, and a bad YAML file there is no warning."""
    (wildcards / ".history").mkdir()
    (wildcards / ".history" / "styles.txt").write_text("an old style\n")
    (wildcards / ".history" / "bad.yaml").write_text("a: [x\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drawn = {j.prompt for j in dynamic.jobs(["__*__"], "", list(range(60)), str(wildcards))}
    assert "an old style" not in drawn and "watercolor" in drawn
    with pytest.raises(ConfigError, match=r"no wildcard file .history/styles.txt"):
        dynamic.jobs(["__.history/styles__"], "", [0], str(wildcards))


def test_generate_refuses_bad_dynamic_settings_before_the_model_loads(tmp_path):
    base = dict(out=str(tmp_path / "r"), model=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match="never closed"):
        generate(GenerateConfig(prompt=["{a|b"], **base), progress=False)
    with pytest.raises(ConfigError, match="--negative-prompt '\\{x': the '\\{' at character 1 is never closed"):
        generate(GenerateConfig(prompt=["a"], negative_prompt="{x", **base), progress=False)
    with pytest.raises(ConfigError, match="--hires-prompt '\\{a\\|b\\}': the hires fix's prompts take no"):
        generate(GenerateConfig(prompt=["a"], hires_scale=2, hires_prompt="{a|b}", **base), progress=False)
    with pytest.raises(ConfigError, match=r"--hires-negative-prompt '\$\{s:x\}': the hires fix's prompts take no .*"
                                          r"\$\{variables\} .*, or \\\{, \$\\\{ and \\_ for the characters"):
        generate(GenerateConfig(prompt=["a"], hires_scale=2, hires_negative_prompt="${s:x}", **base), progress=False)
    with pytest.raises(ConfigError, match="wildcards_dir=.*nowhere' is no folder"):
        generate(GenerateConfig(prompt=["a"], wildcards_dir=str(tmp_path / "nowhere"), **base), progress=False)
    with pytest.raises(ConfigError, match="max_prompts= must be >= 1"):
        generate(GenerateConfig(prompt=["a"], combinatorial=True, max_prompts=0, **base), progress=False)
    with pytest.raises(ConfigError, match="max_prompts= caps combinatorial's combinations: add combinatorial="):
        generate(GenerateConfig(prompt=["a"], max_prompts=5, **base), progress=False)


def _text(path):
    return Image.open(path).text


def test_each_picture_records_its_drawn_prompts_and_their_templates(sd1_dir, tmp_path, wildcards):
    model = fresh_model(sd1_dir)
    paths = generate(GenerateConfig(prompt=["a {cat|dog} in __styles__"], negative_prompt="{blurry|dark}",
                                    wildcards_dir=str(wildcards), n=6, batch_size=4, steps=2, width=32,
                                    out=str(tmp_path / "r"), model=str(sd1_dir)), model=model, progress=False)
    assert sorted(int(p.stem.split("-s")[-1]) for p in paths) == list(range(6))
    (expect,) = (j for j in dynamic.jobs(["a {cat|dog} in __styles__"], "{blurry|dark}", list(range(6)),
                                          str(wildcards)) if 0 in j.seeds)
    first = next(p for p in paths if p.stem.endswith("-s0"))
    text = _text(first)
    record = json.loads(text["textinv_settings"])
    assert record["settings"]["prompt"] == [expect.prompt] and record["settings"]["negative_prompt"] == expect.negative
    assert record["template"] == "a {cat|dog} in __styles__" and record["negative_template"] == "{blurry|dark}"
    assert text["prompt"] == expect.prompt and text["negative_prompt"] == expect.negative
    assert text["parameters"].startswith(f"{expect.prompt}\nNegative prompt: {expect.negative}\nSteps: 2")
    assert text["parameters"].endswith("\nTemplate: a {cat|dog} in __styles__\nNegative Template: {blurry|dark}")
    assert first.name.startswith("000-a-" + expect.prompt.split()[1])  # (named by its own words)
    negatives = {s: j.negative for j in dynamic.jobs(["a {cat|dog} in __styles__"], "{blurry|dark}",
                                                     list(range(6)), str(wildcards)) for s in j.seeds}
    batches = set()
    for path in paths:  # a batch holds pictures of any prompts and negative prompts, the seeds of its call
        record = json.loads(_text(path)["textinv_settings"])
        assert record["settings"]["seed"] in record["batch_seeds"]
        batches.add(tuple(record["batch_seeds"]))
    assert sorted(map(len, batches)) == [2, 4] and set(negatives.values()) == {"blurry", "dark"}


def test_a_pictures_prompt_does_not_depend_on_the_batch_size(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    drawn = {}
    for batch in (1, 4):
        paths = generate(GenerateConfig(prompt=["a {cat|dog|bird|fish}"], n=5, batch_size=batch, steps=2, width=32,
                                        out=str(tmp_path / str(batch)), model=str(sd1_dir)), model=model,
                         progress=False)
        drawn[batch] = {p.name: _text(p)["prompt"] for p in paths}
    assert drawn[1] == drawn[4] and len(set(drawn[1].values())) > 1


def test_again_redraws_a_dynamic_pictures_drawn_prompt_bit_for_bit(sd1_dir, tmp_path):
    """A picture's batch holds seeds that need not follow one another ([1, 3]: the pictures are drawn in the order of
    their prompts); --again draws the picture from its drawn prompt, first in a batch of as many, the same picture."""
    from textinv.again import again_config, parse_a1111_parameters

    model = fresh_model(sd1_dir)
    paths = generate(GenerateConfig(prompt=["a {cat|dog} on {grass|sand}"], n=8, batch_size=4, steps=3, width=32,
                                    out=str(tmp_path / "r"), model=str(sd1_dir), metadata="full"), model=model,
                     progress=False)
    batches = {p: json.loads(_text(p)["textinv_settings"])["batch_seeds"] for p in paths}
    picture = next(p for p, b in batches.items() if len(b) > 1 and b != list(range(b[0], b[0] + len(b)))
                   and not p.stem.endswith(f"-s{b[0]}"))
    config, keep = again_config(picture, {"out": str(tmp_path / "again")})
    assert config.prompt == [_text(picture)["prompt"]] and "{" not in config.prompt[0]
    (again,) = generate(config, model=model, progress=False, keep_seeds=keep)
    assert again.name == picture.name
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(picture)))
    assert "Template" not in _text(again)["parameters"]  # (its prompt is the drawn one now)
    prompt, _, fields = parse_a1111_parameters(_text(picture)["parameters"])
    assert prompt == _text(picture)["prompt"] and fields["Seed"] == str(config.seed)


def test_templates_of_several_lines_after_the_settings_are_left_out_of_the_web_uis_text():
    """sd-dynamic-prompts writes each template as it was typed after the settings line, so a template of several
    lines runs over several: the drawn prompts and the settings are still what is read."""
    from textinv.again import parse_a1111_parameters

    text = ("a cat\nby bob\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, Seed: 3, Size: 512x512\n"
            "Template: a {cat|dog}\nby {bob|al}\nNegative Template: {ugly|bad}\nBREAK {dark|grey}")
    assert parse_a1111_parameters(text) == ("a cat\nby bob", "ugly",
                                            {"Steps": "20", "Sampler": "Euler a", "Seed": "3", "Size": "512x512"})
    # (a prompt line that only looks like a template, before the settings, stays the prompt's)
    assert parse_a1111_parameters("Template: a cat\nSteps: 20, Seed: 3, Size: 512x512")[0] == "Template: a cat"


def test_templates_among_the_web_uis_settings_are_not_said_to_be_left_unapplied(sd1_dir, tmp_path):
    """Some sd-dynamic-prompts versions write the templates among the settings: the prompt is the drawn one, so the
    redraw lacks nothing, and no warning names them."""
    picture = web_ui_picture(tmp_path / "w.png", 'a cat\nNegative prompt: ugly\nSteps: 4, Seed: 3, Size: 32x32, '
                                                 'Template: "a {cat|dog}, b", Negative Template: {ugly|bad}, Version: v1')
    config, said = again_warned(picture, {"model": str(sd1_dir)})
    assert "not applied from its A1111 parameters: Version (" in said and "Template" not in said
    assert (config.prompt, config.negative_prompt, config.seed) == (["a cat"], "ugly", 3)


def test_again_draws_a_pictures_braces_and_underscores_as_the_text_it_drew(sd1_dir, tmp_path):
    """A picture's prompt is what it drew: braces in a web UI picture's (NovelAI's emphasis, drawn as text by a web
    UI without the extension, and by textinv before dynamic prompts) are not variants, and `{}` is no error."""
    from PIL.PngImagePlugin import PngInfo

    from textinv import emphasis
    from textinv.again import again_config

    info = PngInfo()
    info.add_text("parameters", "{{best}} a cat {} __x__ #1\nNegative prompt: // {ugly|bad}\nSteps: 2, Seed: 3, "
                                "Size: 16x16")  # (and a `#`, a leading `//`: text, not comments)
    Image.new("RGB", (8, 8)).save(tmp_path / "w.png", pnginfo=info)
    config, keep = again_config(tmp_path / "w.png", {"model": str(sd1_dir), "out": str(tmp_path / "o")})
    assert emphasis.parse(config.prompt[0]) == [("{{best}} a cat {} __x__ #1", 1.0)]
    assert emphasis.parse(config.negative_prompt) == [("// {ugly|bad}", 1.0)]
    (drawn,) = generate(config, keep_seeds=keep, progress=False)
    assert emphasis.parse(_text(drawn)["prompt"]) == [("{{best}} a cat {} __x__ #1", 1.0)]
    assert emphasis.parse(_text(drawn)["negative_prompt"]) == [("// {ugly|bad}", 1.0)]
    again, _ = again_config(drawn, {"model": str(sd1_dir)})  # (escaped once: the redraw's again is the same)
    assert (again.prompt, again.negative_prompt) == (config.prompt, config.negative_prompt)
    # a prompt given anew is a template, as always
    assert again_config(tmp_path / "w.png", {"model": str(sd1_dir), "prompt": ["a {cat|dog}"]})[0].prompt == [
        "a {cat|dog}"]


def test_a_prompt_without_the_new_syntax_draws_the_pictures_it_drew_before(sd1_dir, tmp_path, monkeypatch):
    """Compared with generate's drawing without jobs (each --prompt with every seed, as before dynamic prompts):
    the same files, pixels and text."""
    import inspect

    import textinv.generate as gen

    model = fresh_model(sd1_dir)
    settings = dict(prompt=["a (photo:1.2) of [cat|dog] BREAK x", r"a \{b\}"], negative_prompt="[ugly:0.5]", n=3,
                    batch_size=2, steps=2, width=32, model=str(sd1_dir))
    new = generate(GenerateConfig(out=str(tmp_path / "new"), **settings), model=model, progress=False)
    original = gen._draw_all
    jobs_at = list(inspect.signature(original).parameters).index("jobs")  # (its jobs left out)
    monkeypatch.setattr(gen, "_draw_all", lambda *a: original(*a[:jobs_at], None, *a[jobs_at + 1:]))
    old = generate(GenerateConfig(out=str(tmp_path / "old"), **settings), model=model, progress=False)
    assert [p.name for p in new] == [p.name for p in old] and len(new) == 6
    for a, b in zip(new, old):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        assert _text(a) == _text(b)


def test_the_command_line_takes_wildcards_and_combinatorial_mode(sd1_dir, tmp_path, wildcards):
    from textinv.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["generate", "--model", str(sd1_dir), "--prompt", "a __colors/warm__ {hat|cap}", "--wildcards-dir",
                     str(wildcards), "--combinatorial", "--max-prompts", "3", "-n", "1", "--steps", "1", "--width",
                     "32", "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["000-a-orange-hat-s0.png", "001-a-orange-cap-s0.png",
                                                                   "002-a-red-hat-s0.png"]


def test_the_command_line_draws_variables_yaml_wildcards_and_cyclical_parts(sd1_dir, tmp_path, wildcards):
    from textinv.cli import main

    (wildcards / "palette.yaml").write_text("colors:\n  pale: [white]\n")
    assert main(["generate", "--model", str(sd1_dir), "--prompt", "${c=!__colors/pale__}a ${c} {@hat|cap}",
                 "--wildcards-dir", str(wildcards), "-n", "2", "--steps", "1", "--width", "32", "--out",
                 str(tmp_path / "r")]) == 0
    drawn = {int(p.stem.split("-s")[-1]): _text(p)["prompt"] for p in (tmp_path / "r").iterdir()}
    assert drawn == {0: "a white hat", 1: "a white cap"}


def test_embeddings_and_loras_named_only_in_a_wildcard_file_are_loaded(sd1_dir, tmp_path):
    """A web UI embeddings folder loads the files the prompts name: here only a wildcard file's line names it."""
    import torch

    from textinv.formats import LearnedEmbedding, save_embedding

    folder, words = tmp_path / "embeddings", tmp_path / "wildcards"
    folder.mkdir()
    words.mkdir()
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(2, 32) * 3}), folder / "mystyle.pt", "a1111")
    (words / "styles.txt").write_text("mystyle\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "no embedding in the folder is named" warning)
        (path,) = generate(GenerateConfig(prompt=["a dog, __styles__"], embedding=[str(folder)],
                                          wildcards_dir=str(words), n=1, steps=1, width=32, out=str(tmp_path / "r"),
                                          model=str(sd1_dir)), progress=False)
    assert "TI hashes" in _text(path)["parameters"] and _text(path)["prompt"] == "a dog, mystyle"


def _drawn_batches(monkeypatch, model, sd1_dir, out, template, batch_size, n=8, **settings):
    """The pictures `generate` draws (paths), and the prompts of each `render` call (one pipeline call each)."""
    import textinv.generate as gen

    calls = []
    render = gen.render

    def spy(model, prompts, *args, **kwargs):
        calls.append(list(prompts))
        return render(model, prompts, *args, **kwargs)

    monkeypatch.setattr(gen, "render", spy)
    paths = generate(GenerateConfig(prompt=[template], n=n, batch_size=batch_size, steps=2, width=32, out=str(out),
                                    model=str(sd1_dir), **settings), model=model, progress=False)
    monkeypatch.setattr(gen, "render", render)
    return paths, calls


def _without_batch(text: dict) -> dict:
    record = json.loads(text["textinv_settings"])  # (less what tells the batches apart)
    del record["batch_seeds"], record["settings"]["batch_size"]
    return {**text, "textinv_settings": record}


@pytest.mark.parametrize("template", [
    "a photo of zz {on the beach|in snow|on the moon|at night}",
    "{a red dog|a (blue:1.3) cat|[fog:sun:1] hill|a [dog|cat] on grass}",  # emphasis, editing, alternation
    "{a red dog AND fog|a blue cat:0.5 AND a [hill:sun:1]|(sun:1.2) AND moon}",  # as many sub-prompts each
    "{fog BREAK sun|a (red:0.9) hill BREAK sky|a dog BREAK (cat:1.2)}",  # two chunks each, the negative one
])
def test_pictures_of_different_drawn_prompts_share_a_batch_each_the_picture_it_draws_alone(sd1_dir, tmp_path,
                                                                                           monkeypatch, template):
    """Random mode gives each seed its own prompt: batches of --batch-size pictures of mixed prompts, not a call for
    each prompt's few pictures. Each picture is the one drawn alone (one a call), up to the rounding of a batch's
    kernels; the files, their order and their text are the same (but for their call's seeds and size)."""
    model = fresh_model(sd1_dir)
    mixed, calls = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "mixed", template, 4, negative_prompt="ugly")
    alone, single = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "alone", template, 1,
                                   negative_prompt="ugly")
    assert len(single) == 8 and len(calls) == 2 and all(len(set(c)) > 1 for c in calls)
    assert [p.name for p in mixed] == [p.name for p in alone]
    for a, b in zip(mixed, alone):
        assert np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b))).max() <= 1
        assert _without_batch(_text(a)) == _without_batch(_text(b))
    record = json.loads(_text(mixed[0])["textinv_settings"])
    assert len(record["batch_seeds"]) == 4 and record["settings"]["seed"] in record["batch_seeds"]


def test_prompts_the_hires_negative_lays_out_otherwise_are_not_drawn_in_one_batch(sd1_dir, tmp_path, monkeypatch):
    """Alike in the first pass (the long negative pads both to 3 chunks), a prompt of 1 chunk and one of 2 are not
    in the second pass, whose own negative is 1 chunk: they are drawn apart."""
    model = fresh_model(sd1_dir)
    paths, calls = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "r", "{a dog|a dog BREAK cat}", 8,
                                  negative_prompt="x BREAK y BREAK z", hires_scale=2, hires_negative_prompt="ugly")
    assert len(paths) == 8 and len(calls) == 2 and {len(set(c)) for c in calls} == {1}


@pytest.mark.parametrize("template, negative, settings", [
    ("a photo of a {dog|cat}", "{ugly|blurry, (dark:1.2)|[fog:sun:1]|}", {}),  # emphasis, editing, empty
    ("{a red dog AND fog|a cat:0.5 AND sun}", "{ugly|blurry, dark}", {}),  # as many sub-prompts each
    ("a dog BREAK sun BREAK sky", "{ugly|fog BREAK dark}", {}),  # each negative at its own length
    ("a photo of a {dog|cat}", "{ugly|[blurry:dark:3]}", {"hires_scale": 2}),  # both passes, edited on in the second
])
def test_pictures_of_different_drawn_negatives_share_a_batch_each_the_picture_it_draws_alone(
        sd1_dir, tmp_path, monkeypatch, template, negative, settings):
    """A dynamic negative prompt does not cut the batches: pictures whose negatives differ are drawn in one call
    (each row guided by its own negative, as the web UI stacks a batch's), each the picture drawn alone."""
    import textinv.generate as gen

    model = fresh_model(sd1_dir)
    negatives = []
    real = gen.render
    monkeypatch.setattr(gen, "render", lambda *a, negative_prompt, **k: negatives.append(negative_prompt)
                        or real(*a, negative_prompt=negative_prompt, **k))
    mixed, calls = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "mixed", template, 4,
                                  negative_prompt=negative, **settings)
    alone, single = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "alone", template, 1,
                                   negative_prompt=negative, **settings)
    assert len(single) == 8 and len(calls) == 2 and any(isinstance(n, list) for n in negatives[:2])
    assert [p.name for p in mixed] == [p.name for p in alone]
    for a, b in zip(mixed, alone):
        assert np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b))).max() <= 1
        assert _without_batch(_text(a)) == _without_batch(_text(b))


@pytest.mark.parametrize("template", [
    "{a red dog|a red dog AND fog}",  # another count of sub-prompts
    "{a red dog|" + "tree, " * 40 + "}",  # another count of chunks
])
def test_prompts_laid_out_otherwise_are_not_drawn_in_one_batch(sd1_dir, tmp_path, monkeypatch, template):
    """Where pictures cannot share a call as each is drawn alone, they are drawn apart, as before."""
    model = fresh_model(sd1_dir)
    paths, calls = _drawn_batches(monkeypatch, model, sd1_dir, tmp_path / "r", template, 8)
    assert len(paths) == 8 and len(calls) == 2
    assert {len({emphasis.has_and(p) for p in c}) for c in calls} == {1}
    assert {len({len(p) for p in c}) for c in calls} == {1}
