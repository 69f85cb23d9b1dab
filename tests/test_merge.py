"""`textinv merge`: weighted sums, concatenation, slices and words, its refusals, and the command line."""

import re
import warnings

import pytest
import torch

from conftest import fresh_model
from textinv.cli import main
from textinv.conditioning import encode_prompts
from textinv.config import MergeConfig
from textinv.errors import ConfigError, FormatError, ModelError, TokenError
from textinv.formats import LearnedEmbedding, load_embedding, save_embedding
from textinv.generate import expand_all, install_embedding, unload_embeddings
from textinv.merge import Part, merge, merge_embeddings, parse_term, take
from textinv.models import load_model
from textinv.tiny import build_tiny_xl_pipeline
from textinv.tokens import base_embedding


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-xl")
    build_tiny_xl_pipeline().save_pretrained(path)
    return path


def saved(path, n, widths=(768,), token="<e>", fmt=None, seed=0, **metadata):
    """A random embedding of `n` vectors per width written to `path`; returns it as written."""
    gen = torch.Generator().manual_seed(seed)
    names = ("text_encoder", "text_encoder_2")
    emb = LearnedEmbedding(token, {name: torch.randn(n, w, generator=gen) for name, w in zip(names, widths)},
                           metadata)
    save_embedding(emb, path, fmt or ("sdxl" if len(widths) == 2 else "diffusers"))
    return emb


def run(tmp_path, *terms, out="out.safetensors", **settings):
    return merge(MergeConfig(out=str(tmp_path / out), token="<m>", terms=list(terms), **settings))


def test_a_weighted_sum_is_the_arithmetic_on_the_loaded_tensors(tmp_path):
    saved(tmp_path / "a.pt", 3, fmt="a1111", seed=1)
    saved(tmp_path / "b.safetensors", 3, fmt="kohya", seed=2)
    saved(tmp_path / "c.safetensors", 1, seed=3)
    a, b, c = (load_embedding(tmp_path / f).vectors["text_encoder"] for f in ("a.pt", "b.safetensors", "c.safetensors"))
    result = run(tmp_path, f"{tmp_path}/a.pt*0.7 + {tmp_path}/b.safetensors*0.3 + {tmp_path}/c.safetensors*-2")
    expected = 0.7 * a + 0.3 * b + -2 * c  # (c, one vector, is added to each of the three)
    assert torch.equal(result.embedding.vectors["text_encoder"], expected)
    assert torch.equal(load_embedding(result.files[0]).vectors["text_encoder"], expected)


def test_a_bare_word_that_names_no_file_is_answered_with_the_quotes_words_take(tmp_path, capsys):
    """`textinv merge mix.pt --token '<m>' "dog.pt*0.5 + circle*0.5"` said only "circle: no such file": a word
    of the vocabulary is written in single quotes, which the error now says."""
    saved(tmp_path / "dog.safetensors", 1)
    out = str(tmp_path / "mix.pt")
    assert main(["merge", out, "--token", "<m>", f"{tmp_path / 'dog.safetensors'}*0.5 + circle*0.5"]) == 2
    assert "circle: no such file; a word of the model's vocabulary goes in single quotes, \"'circle'\", with " \
           "--model" in capsys.readouterr().err


def test_concatenation_keeps_the_order_and_slices_take_their_rows(tmp_path):
    a = saved(tmp_path / "a.safetensors", 4, seed=1).vectors["text_encoder"]
    b = saved(tmp_path / "b.safetensors", 3, seed=2).vectors["text_encoder"]
    result = run(tmp_path, f"{tmp_path}/b.safetensors[1:]", f"{tmp_path}/a.safetensors[-1]",
                 f"{tmp_path}/a.safetensors[:2]*0.5", f"{tmp_path}/b.safetensors[0]")
    assert torch.equal(result.embedding.vectors["text_encoder"], torch.cat([b[1:], a[3:], 0.5 * a[:2], b[:1]]))
    assert result.embedding.num_vectors == 6 and load_embedding(result.files[0]).num_vectors == 6


def test_words_are_the_models_token_embedding_rows(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    table = base_embedding(model.text_encoder).weight
    ids = model.tokenizer("red dog", add_special_tokens=False).input_ids
    result = merge(MergeConfig(out=str(tmp_path / "w.pt"), token="<w>", terms=["'red dog'", "'cat'*2"],
                               model=str(sd1_dir)))
    assert len(ids) == 2
    cat = table[model.tokenizer("cat", add_special_tokens=False).input_ids]
    assert torch.equal(result.embedding.vectors["text_encoder"], torch.cat([table[ids], 2 * cat]))
    assert result.embedding.metadata["base_model"] == sd1_dir.name  # (its name alone, as train records a folder)


def test_sdxl_words_are_the_rows_of_both_encoders(xl_dir, tmp_path):
    model = load_model(xl_dir)
    result = merge(MergeConfig(out=str(tmp_path / "w.safetensors"), token="<w>", terms=["'photo of a dog'[1:]"]),
                   model=model)
    for name, tokenizer, encoder in model.encoders:
        ids = tokenizer("of a dog", add_special_tokens=False).input_ids
        assert torch.equal(result.embedding.vectors[name], base_embedding(encoder).weight[ids])
    raw = load_embedding(result.files[0])
    assert raw.widths == (32, 64) and raw.num_vectors == 3


def test_sdxl_files_are_merged_in_both_halves(tmp_path):
    a = saved(tmp_path / "a.safetensors", 2, widths=(768, 1280), seed=1)
    b = saved(tmp_path / "b.safetensors", 2, widths=(768, 1280), seed=2)
    result = run(tmp_path, f"{tmp_path}/a.safetensors*0.25 + {tmp_path}/b.safetensors", f"{tmp_path}/b.safetensors[1]")
    for name in ("text_encoder", "text_encoder_2"):
        want = torch.cat([0.25 * a.vectors[name] + b.vectors[name], b.vectors[name][1:]])
        assert torch.equal(result.embedding.vectors[name], want)
    assert load_embedding(result.files[0]).family == "sdxl"
    assert result.embedding.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    pair = merge(MergeConfig(out=f"{tmp_path}/pair/", token="<m>", terms=[f"{tmp_path}/a.safetensors"],
                             to="diffusers"))  # (a folder, written as convert --to diffusers writes SDXL)
    assert [f.name for f in pair.files] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    assert torch.equal(load_embedding(pair.files[0]).vectors["text_encoder_2"], a.vectors["text_encoder_2"])


def test_one_embedding_alone_with_weight_1_is_the_original(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    original = saved(tmp_path / "a.pt", 2, widths=(32,), token="<a>", fmt="a1111", base_model="x", steps="40")
    result = run(tmp_path, f"{tmp_path}/a.pt*1", out="same.pt")
    merged = load_embedding(result.files[0], token="<a>")
    assert torch.equal(merged.vectors["text_encoder"], original.vectors["text_encoder"])
    assert merged.metadata["base_model"] == "x"
    conditioning = []
    for emb in (original, merged):
        install_embedding(model, emb)
        conditioning.append(encode_prompts(model, [expand_all("a photo of <a>", [emb])])[0])
        unload_embeddings(model)
    assert torch.equal(*conditioning)


def test_the_metadata_keeps_what_the_parts_agree_on(tmp_path):
    saved(tmp_path / "a.safetensors", 1, seed=1, base_model="sd15", family="sd1", steps="100")
    saved(tmp_path / "b.safetensors", 1, seed=2, base_model="sd15", family="sd1", steps="200")
    saved(tmp_path / "c.safetensors", 1, seed=3, base_model="other", family="sd1")
    agreed = run(tmp_path, f"{tmp_path}/a.safetensors+{tmp_path}/b.safetensors", out="ab.safetensors")
    meta = load_embedding(agreed.files[0]).metadata
    assert meta["base_model"] == "sd15" and "steps" not in meta and meta["vectors"] == "1"
    assert meta["merged_from"] == '"a.safetensors + b.safetensors"'  # (files by their names alone)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.title"] == "<m>"
    mixed = run(tmp_path, f"{tmp_path}/a.safetensors", f"{tmp_path}/c.safetensors", out="ac.safetensors")
    assert "base_model" not in mixed.embedding.metadata and mixed.embedding.metadata["family"] == "sd1"


@pytest.mark.parametrize("widths", [(1024,), (768, 1280)])
def test_parts_of_other_families_are_refused(tmp_path, widths):
    saved(tmp_path / "sd1.safetensors", 1, seed=1)
    saved(tmp_path / "other.safetensors", 1, widths=widths, seed=2)
    with pytest.raises(FormatError, match=r"other\.safetensors has width .*but .*sd1\.safetensors has 768 "
                                          r"\(Stable Diffusion 1\.x\).*leave"):
        run(tmp_path, f"{tmp_path}/sd1.safetensors + {tmp_path}/other.safetensors")
    with pytest.raises(FormatError, match="other.safetensors has width"):  # (laid side by side just the same)
        run(tmp_path, f"{tmp_path}/sd1.safetensors", f"{tmp_path}/other.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_part_that_does_not_fit_the_model_is_refused(sd1_dir, tmp_path):
    saved(tmp_path / "a.safetensors", 1)
    with pytest.raises(FormatError, match=r"a\.safetensors has width 768 .* but model='.*' has 32"):
        run(tmp_path, f"'dog' + {tmp_path}/a.safetensors", model=str(sd1_dir))


def test_an_sdxl_part_gives_its_clip_l_half_on_an_sd1_model_as_generate_does(sd1_dir, xl_dir, tmp_path):
    """generate draws an SDXL file's clip_l half on SD 1.x (as ComfyUI does), with a warning; merge with that
    --model takes the same half, so its file is what generate would draw. SD 1.x parts on SDXL stay refused."""
    xl = saved(tmp_path / "xl.safetensors", 2, widths=(32, 64), family="sdxl")
    one = saved(tmp_path / "one.safetensors", 2, widths=(32,), seed=3)
    with pytest.warns(UserWarning, match="only its clip_l half"):
        result = run(tmp_path, f"{tmp_path}/xl.safetensors*0.5 + {tmp_path}/one.safetensors", model=str(sd1_dir))
    assert set(result.embedding.vectors) == {"text_encoder"}
    assert torch.allclose(result.embedding.vectors["text_encoder"],
                          0.5 * xl.vectors["text_encoder"] + one.vectors["text_encoder"])
    assert load_embedding(result.files[0]).family != "sdxl"
    with pytest.raises(FormatError, match=r"one\.safetensors has width 32 .* but model='.*' has"):
        run(tmp_path, f"{tmp_path}/one.safetensors", model=str(xl_dir), out="xl-out.safetensors")


def test_words_need_a_model_and_must_be_in_its_vocabulary(sd1_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"'dog' is words.*give the model with model= \(the one"):
        run(tmp_path, "'dog'")
    with pytest.raises(TokenError, match=r"does not know dgo \(d \+ g \+ o\)"):
        run(tmp_path, "'a dgo'", model=str(sd1_dir))
    with pytest.raises(ConfigError, match="empty quotes"):
        run(tmp_path, "' '", model=str(sd1_dir))
    assert not (tmp_path / "out.safetensors").exists()


def test_a_sum_of_parts_of_different_counts_is_refused(tmp_path):
    saved(tmp_path / "a.safetensors", 3)
    saved(tmp_path / "b.safetensors", 2)
    with pytest.raises(ConfigError, match=r"different numbers of vectors \(.*a\.safetensors 3, .*b\.safetensors "
                                          r"2\): take as many of each \(\[0:2\]\)"):
        run(tmp_path, f"{tmp_path}/a.safetensors + {tmp_path}/b.safetensors")
    result = run(tmp_path, f"{tmp_path}/a.safetensors[0:2] + {tmp_path}/b.safetensors")  # (the fix it names)
    assert result.embedding.num_vectors == 2


@pytest.mark.parametrize("rows, match", [("3", "out of range: it has 3 vectors"), ("0:4", "out of range"),
                                         ("-4", "out of range"), ("2:1", "takes no vectors"),
                                         ("1:1", "takes no vectors"), ("a", "no index or slice")])
def test_a_slice_out_of_range_or_empty_is_refused(tmp_path, rows, match):
    saved(tmp_path / "a.safetensors", 3)
    with pytest.raises(ConfigError, match=match):
        run(tmp_path, f"{tmp_path}/a.safetensors[{rows}]")
    assert not (tmp_path / "out.safetensors").exists()


def test_more_than_75_vectors_are_written_with_a_warning(tmp_path):
    saved(tmp_path / "a.safetensors", 40)
    with pytest.warns(UserWarning, match="80 vectors, more than the 75"):
        result = run(tmp_path, f"{tmp_path}/a.safetensors", f"{tmp_path}/a.safetensors")
    assert load_embedding(result.files[0]).num_vectors == 80
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (75 fit one pass: no warning)
        run(tmp_path, f"{tmp_path}/a.safetensors", f"{tmp_path}/a.safetensors[:35]", out="b.safetensors")


@pytest.mark.parametrize("terms, match", [([], "nothing to merge"), (["  "], "is empty"),
                                          (["a.pt +"], "ends in \\+"), (["a.pt*x"], "no number"),
                                          (["a.pt*"], r"the \* of '\*' has no number"), (["'dog"], "cannot read")])
def test_an_empty_or_unreadable_merge_is_refused(tmp_path, terms, match):
    with pytest.raises(ConfigError, match=match):
        run(tmp_path, *terms)


def test_parse_term_reads_parts_slices_and_weights():
    assert parse_term(" runs/my dog/x.pt [ 0 : 2 ] * 0.5 * -2 +'a cat'[-1] ") == [
        Part("runs/my dog/x.pt", take="0:2", weight=-1.0), Part("a cat", words=True, take="-1")]


def test_an_existing_out_is_refused_unless_overwrite(tmp_path):
    a = saved(tmp_path / "a.safetensors", 1, seed=1)
    b = saved(tmp_path / "b.safetensors", 1, seed=2)
    run(tmp_path, f"{tmp_path}/a.safetensors")
    with pytest.raises(ConfigError, match="already exists; pass overwrite=True"):
        run(tmp_path, f"{tmp_path}/b.safetensors")
    assert torch.equal(load_embedding(tmp_path / "out.safetensors").vectors["text_encoder"], a.vectors["text_encoder"])
    run(tmp_path, f"{tmp_path}/b.safetensors", overwrite=True)
    assert torch.equal(load_embedding(tmp_path / "out.safetensors").vectors["text_encoder"], b.vectors["text_encoder"])


def test_a_term_may_be_a_path_and_the_model_a_loaded_one(sd1_dir, tmp_path):
    a = saved(tmp_path / "a.safetensors", 1, widths=(32,))
    result = run(tmp_path, tmp_path / "a.safetensors")
    assert torch.equal(result.embedding.vectors["text_encoder"], a.vectors["text_encoder"])
    with pytest.raises(ConfigError, match="a term is text or a Path, got int"):
        run(tmp_path, 3, out="b.safetensors")
    with pytest.raises(ModelError, match="model= takes a Model from textinv.models.load_model, got str"):
        merge(MergeConfig(out=str(tmp_path / "c.pt"), token="<c>", terms=["'dog'"]), model=str(sd1_dir))


def test_merge_embeddings_takes_plain_objects():
    a = LearnedEmbedding("<a>", {"text_encoder": torch.randn(2, 8)})
    b = LearnedEmbedding("<b>", {"text_encoder": torch.randn(1, 8)})
    emb = merge_embeddings([[(a, 0.5), (b, 2)], [take(a, "1")]], "<ab>")
    assert torch.equal(emb.vectors["text_encoder"], torch.cat([0.5 * a.vectors["text_encoder"]
                                                               + 2 * b.vectors["text_encoder"],
                                                               a.vectors["text_encoder"][1:]]))
    assert emb.metadata["merged_from"] == '"<a>*0.5 + <b>*2" "<a>"'
    with pytest.raises(ConfigError, match="a weight is a finite number, got nan"):
        merge_embeddings([[(a, float("nan"))]], "<x>")
    with pytest.raises(FormatError, match="<c> has width 9"):
        merge_embeddings([[a], [LearnedEmbedding("<c>", {"text_encoder": torch.randn(1, 9)})]], "<x>")


def test_the_command_line_end_to_end(sd1_dir, tmp_path, capsys):
    saved(tmp_path / "a.safetensors", 2, widths=(32,), seed=1)
    args = ["merge", str(tmp_path / "mix.pt"), "--token", "<mix>", "--model", str(sd1_dir),
            f"{tmp_path}/a.safetensors*0.5 + 'dog'*0.5", "'red cat'"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'mix.pt'}" in out and "token: <mix>, 4 vectors" in out
    assert "text_encoder (width 32): norms " in out and "vocabulary's words" in out
    emb = load_embedding(tmp_path / "mix.pt")
    assert emb.token == "<mix>" and emb.num_vectors == 4
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--to", "kohya"]) == 2  # (.pt is no kohya file: said, nothing written)
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "x.safetensors"), "--token", "<x>", "'dog'"]) == 2
    assert "--model" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_a_training_runs_folder_is_read_as_its_embedding(sd1_dir, images, tmp_path):
    """A run saved as a1111 keeps its file under the token's name (`run_folder.embedding_file` finds it), and what
    the run recorded and the words' model agree on (the base model, family, prediction type) is kept."""
    from textinv.config import TrainConfig
    from textinv.train import train

    model = fresh_model(sd1_dir)
    run_out = tmp_path / "run"
    trained = train(TrainConfig(model=str(sd1_dir), images=str(images), token="<t>", init="dog", out=str(run_out),
                                steps=2, batch=1, save_every=0, sample_every=0, format="a1111"),
                    model=model, progress=False).embedding
    result = merge(MergeConfig(out=str(tmp_path / "m.safetensors"), token="<m>", terms=[f"{run_out} + 'dog'"]),
                   model=model)
    dog = base_embedding(model.text_encoder).weight[model.tokenizer("dog", add_special_tokens=False).input_ids]
    assert torch.equal(result.embedding.vectors["text_encoder"], trained.vectors["text_encoder"] + dog)
    meta = result.embedding.metadata
    assert meta["base_model"] == sd1_dir.name and meta["family"] == "custom" and "steps" not in meta
    assert meta["merged_from"] == "\"run + 'dog'\""


def test_a_token_the_models_vocabulary_has_is_refused_before_writing(sd1_dir, tmp_path):
    """generate refuses such a file (it would overwrite a word's meaning): with --model, merge says so first."""
    model = fresh_model(sd1_dir)
    with pytest.raises(TokenError, match=r"^token='dog' cannot be used with model='.*'.*existing token 'dog</w>'"):
        merge(MergeConfig(out=str(tmp_path / "dog.pt"), token="dog", terms=["'cat'"]), model=model)
    with pytest.raises(TokenError, match=r"^token='Cat'.*existing token 'cat</w>' \(CLIP lower-cases"):
        merge(MergeConfig(out=str(tmp_path / "cat.pt"), token="Cat", terms=["'dog'"]), model=model)
    assert not list(tmp_path.iterdir())
    assert merge(MergeConfig(out=str(tmp_path / "new.pt"), token="<dog-2>", terms=["'cat'"]), model=model).files


def test_the_token_check_reads_each_tokenizers_vocabulary_once(sd1_dir, monkeypatch):
    """get_vocab() builds the whole vocabulary (49,408 entries on a real CLIP tokenizer) as a new dict: the check
    built it twice for each of the token's vector names."""
    from textinv.merge import _check_token_is_new

    model = fresh_model(sd1_dir)
    real, calls = model.tokenizer.get_vocab, []
    monkeypatch.setattr(model.tokenizer, "get_vocab", lambda: calls.append(1) or real())
    _check_token_is_new(LearnedEmbedding("<new>", {"text_encoder": torch.randn(4, 32)}), model)
    assert len(calls) == 1


def test_a_path_term_is_its_file_whatever_its_name_holds(tmp_path):
    """A term written as text is read as parts ([ ] + * ' are its syntax); a Path is one file, named as it is."""
    a = saved(tmp_path / "dog [v2]+cat*2.safetensors", 2)
    result = run(tmp_path, tmp_path / "dog [v2]+cat*2.safetensors")
    assert torch.equal(result.embedding.vectors["text_encoder"], a.vectors["text_encoder"])
    assert result.embedding.metadata["merged_from"] == '"dog [v2]+cat*2.safetensors"'


def test_the_recipe_records_each_weight_as_given(tmp_path):
    """merged_from makes the merge again: a weight is written to 15 digits (`:g` kept six, 0.123457), as many as a
    typed number comes back with, leaving out a product's rounding (1e-7*3 is 3.0000000000000004e-07)."""
    saved(tmp_path / "a.safetensors", 1)
    result = run(tmp_path, f"{tmp_path}/a.safetensors*0.123456789 + {tmp_path}/a.safetensors*1e-7*3")
    assert result.embedding.metadata["merged_from"] == '"a.safetensors*0.123456789 + a.safetensors*3e-07"'
    a = LearnedEmbedding("<a>", {"text_encoder": torch.randn(1, 8)})
    assert merge_embeddings([[(a, 2 / 3)]], "<x>").metadata["merged_from"] == '"<a>*0.666666666666667"'


@pytest.mark.parametrize("terms, match", [
    (lambda a: [a, a], r"a term is a list of parts, got LearnedEmbedding"),
    (lambda a: [[(a, "0.5")]], r"a part is a LearnedEmbedding or \(LearnedEmbedding, weight\), got tuple"),
    (lambda a: [[(a, 0.5, 1)]], r"got tuple"),
    (lambda a: [[a.vectors["text_encoder"]]], r"got Tensor")])
def test_merge_embeddings_refuses_terms_of_another_shape(terms, match):
    a = LearnedEmbedding("<a>", {"text_encoder": torch.randn(1, 8)})
    with pytest.raises(ConfigError, match=match):
        merge_embeddings(terms(a), "<x>")


def test_an_out_that_does_not_fit_to_is_refused_before_the_model_is_loaded(tmp_path):
    """--to kohya with mix.pt was said only after --model was loaded and every part read."""
    with pytest.raises(FormatError, match=r"mix\.pt: a 'kohya' file must end in \.safetensors"):
        merge(MergeConfig(out=str(tmp_path / "mix.pt"), token="<m>", terms=["'dog'"], to="kohya",
                          model=str(tmp_path / "no-such-model")))


@pytest.mark.parametrize("name", ["dog [v2].safetensors", "dog+cat.safetensors", "it's.safetensors"])
def test_a_file_whose_name_holds_the_syntax_is_said_to_be_renamed(tmp_path, name):
    saved(tmp_path / name, 1)
    with pytest.raises(ConfigError, match=r"is a file, but \+ \* \[ \] ' in a term are read as its syntax.*rename"):
        run(tmp_path, f"{tmp_path}/{name}")


def test_a_term_longer_than_a_file_name_may_be_is_read(tmp_path, monkeypatch):
    """A term of many parts is one name of over 255 characters to the system, which is no error here."""
    monkeypatch.chdir(tmp_path)
    a = saved(tmp_path / "a-long-enough-name.safetensors", 1).vectors["text_encoder"]
    term = " + ".join(["a-long-enough-name.safetensors*0.05"] * 10)
    assert len(term) > 255
    assert torch.allclose(run(tmp_path, term).embedding.vectors["text_encoder"], 0.5 * a)


def test_a_missing_token_is_said_to_be_required(tmp_path, capsys):
    saved(tmp_path / "a.safetensors", 1)
    assert main(["merge", str(tmp_path / "m.pt"), f"{tmp_path}/a.safetensors"]) == 2
    assert "--token is required" in capsys.readouterr().err  # (it said "--token None must be one word")


def test_take_reads_an_index_given_as_a_number_and_refuses_a_slice_object():
    a = LearnedEmbedding("<a>", {"text_encoder": torch.randn(3, 8)})
    assert torch.equal(take(a, -1).vectors["text_encoder"], take(a, "-1").vectors["text_encoder"])
    with pytest.raises(ConfigError, match=r"<a>: the vectors to take are .* written as text, got slice.*\"0:2\""):
        take(a, slice(0, 2))


def test_what_the_files_and_settings_tell_is_said_before_the_model_loads(sd1_dir, xl_dir, tmp_path,
                                                                         monkeypatch):
    """A model takes seconds to minutes to load: an OUT folder that holds the file it would get, a --to that cannot
    hold the files' merge, a sum of files of different counts, a slice out of range and files no model takes
    together were said only once it had loaded (here a model that is not there, which would fail to load)."""
    saved(tmp_path / "a.safetensors", 2)
    saved(tmp_path / "b.safetensors", 3, seed=1)
    saved(tmp_path / "sd2.safetensors", 1, widths=(1024,), seed=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "learned_embeds.safetensors").write_bytes(b"kept")
    a = f"{tmp_path}/a.safetensors"

    def merge_with(*terms, out="m.safetensors", **settings):
        return merge(MergeConfig(out=str(tmp_path / out), token="<m>", terms=list(terms),
                                 model=str(tmp_path / "no-such-model"), **settings))

    with pytest.raises(FormatError, match=r"out/learned_embeds\.safetensors already exists; pass overwrite=True"):
        merge_with(f"{a} + 'dog'", out="out")
    with pytest.raises(FormatError, match=r"the 'sdxl' format is for SDXL's two text encoders, but '<m>' has one"):
        merge_with(f"{a} + 'dog'", to="sdxl")
    with pytest.raises(ConfigError, match=r"different numbers of vectors \(.*a\.safetensors 2, .*b\.safetensors 3\)"):
        merge_with(f"{a} + {tmp_path}/b.safetensors + 'dog'")
    with pytest.raises(ConfigError, match=r"a\.safetensors\[2\] is out of range"):
        merge_with(f"{a}[2]")
    with pytest.raises(FormatError, match=r"sd2\.safetensors has width 1024"):
        merge_with(a, f"{tmp_path}/sd2.safetensors")
    assert (tmp_path / "out" / "learned_embeds.safetensors").read_bytes() == b"kept"
    # an SDXL file with --model is SDXL's merge on an SDXL model, as its folder tells, which an a1111 file cannot
    # hold; on SD 1.x it gives its clip_l half, which it holds
    saved(tmp_path / "xl.safetensors", 1, widths=(32, 64))
    with monkeypatch.context() as patched:
        patched.setattr("textinv.merge.load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
        with pytest.raises(FormatError, match=r"the 'a1111' format holds the vectors of one text encoder, but '<m>' "
                                              r"has two"):
            run(tmp_path, f"{tmp_path}/xl.safetensors", model=str(xl_dir), to="a1111", out="xl.pt")
    with pytest.warns(UserWarning, match="only its clip_l half"):
        result = run(tmp_path, f"{tmp_path}/xl.safetensors", model=str(sd1_dir), to="a1111", out="xl.pt")
    assert load_embedding(result.files[0]).widths == (32,)


def test_a_part_that_records_nothing_keeps_what_the_others_agree_on(tmp_path):
    """A diffusers .bin has no place for metadata: merged with parts that name their base model, it dropped it."""
    saved(tmp_path / "a.safetensors", 1, seed=1, base_model="sd15", family="sd1")
    saved(tmp_path / "b.bin", 1, seed=2, fmt="diffusers-bin")
    saved(tmp_path / "c.safetensors", 1, seed=3, base_model="other", family="sd1")
    assert load_embedding(tmp_path / "b.bin").metadata == {}
    meta = run(tmp_path, f"{tmp_path}/a.safetensors + {tmp_path}/b.bin").embedding.metadata
    assert meta["base_model"] == "sd15" and meta["family"] == "sd1"
    meta = run(tmp_path, f"{tmp_path}/b.bin", f"{tmp_path}/a.safetensors", f"{tmp_path}/c.safetensors",
               out="abc.safetensors").embedding.metadata
    assert "base_model" not in meta and meta["family"] == "sd1"  # (two that name theirs differ: neither is kept)


@pytest.mark.parametrize("term, at", [("a.pt*+2", r"\*\+"), ("a.pt * + b.pt", r"\* \+"), ("a.pt*[0]", r"\*\["),
                                      ("a.pt*'dog'", r"\*'"), ("a.pt*2*", r"\*")])
def test_a_star_without_a_number_is_said_to_want_a_weight(term, at):
    """It was met with the syntax of a whole term, which does not say the weight is what cannot be read."""
    with pytest.raises(ConfigError, match=rf"the term .*: the \* of .{at}. has no number after it; a weight is "
                                          r"written after the part and its \[start:stop\] as \*0\.5"):
        parse_term(term)
    with pytest.raises(ConfigError, match=r"\*1e is no number \(a \+ ends a part: write 1e5, not 1e\+5\)"):
        parse_term("a.pt*1e+5")
    assert parse_term("'a*b' + b.pt*2")[0] == Part("a*b", words=True)  # (a * in words is theirs)


def test_a_term_whose_vectors_are_no_finite_numbers_is_refused_naming_it(tmp_path):
    """*1e38 is a finite weight, but the vectors' norms came out as inf (and *1e200*1e200's inf, times 0, nan)."""
    saved(tmp_path / "a.safetensors", 1)
    a = f"{tmp_path}/a.safetensors"
    for weights in ("*1e38", "*1e39"):
        with pytest.raises(ConfigError, match=r"the term .*a\.safetensors\*1e\+\d+ gives vectors whose norms are "
                                              r"no finite number: .* give smaller weights"):
            run(tmp_path, a, f"{a}{weights}")
    with pytest.raises(ConfigError, match=r"the term .*: its weights \*1e200\*1e200 multiply to inf"):
        run(tmp_path, f"{a}*1e200*1e200 + {a}*0")
    big = LearnedEmbedding("<big>", {"text_encoder": torch.full((1, 8), 3e38)})
    with pytest.raises(ConfigError, match=r"the term <big> \+ <big> gives vectors whose norms"):
        merge_embeddings([[big, big]], "<x>")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_token_installed_in_a_models_tokenizer_is_refused_in_words_of_merging(sd1_dir, tmp_path):
    """An embedding installed in the model passed (by generate's install_embedding) holds the token: it was
    refused with check_new_token's words of training ("training it would overwrite")."""
    model = fresh_model(sd1_dir)
    install_embedding(model, LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}))
    with pytest.raises(TokenError) as refused:
        merge(MergeConfig(out=str(tmp_path / "q.pt"), token="<q>", terms=["'cat'"]), model=model)
    assert re.search(r"^token='<q>' cannot be used with model='.*': its tokenizer has '<q>' already, as a word of "
                     r"its own or a token installed into this model .*unload_embeddings.*a file merged under it .*; "
                     r"pick another token=$",
                     str(refused.value))
    assert "training" not in str(refused.value) and not (tmp_path / "q.pt").exists()
    unload_embeddings(model)
    assert merge(MergeConfig(out=str(tmp_path / "q.pt"), token="<q>", terms=["'cat'"]), model=model).files


def test_a_term_of_files_whose_weights_overflow_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """Its vectors are known from the files alone: `--model` took seconds to minutes to load before the term was
    refused. A term with words waits for the model, which gives their vectors."""
    saved(tmp_path / "a.safetensors", 1)
    a = f"{tmp_path}/a.safetensors"
    monkeypatch.setattr("textinv.merge.load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"the term .*a\.safetensors\*1e\+39 gives vectors whose norms are no "
                                          r"finite number"):
        run(tmp_path, "'dog'", f"{a}*1e39", model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match=r"the term .*a\.safetensors\*-1e\+38 \+ .*a\.safetensors\*-1e\+38 gives"):
        run(tmp_path, f"{a}*-1e38 + {a}*-1e38", "'dog'", model=str(tmp_path / "no-such-model"))


def test_a_term_whose_weights_cancel_is_written_with_a_warning(tmp_path):
    """Weights that sum to 0 over one file (or *0) give vectors of zeros, which stand for nothing in a prompt: they
    were written without a word; now said, naming the term and which of its vectors, and still written."""
    saved(tmp_path / "a.safetensors", 2)
    a = f"{tmp_path}/a.safetensors"
    with pytest.warns(UserWarning, match=r"the term .*a\.safetensors\*0\.5 \+ .*a\.safetensors\*-0\.5 gives 2 "
                                         r"vector\(s\) of zeros \(its \[0, 1\]\): its weights cancel"):
        result = run(tmp_path, f"{a}*0.5 + {a}*-0.5")
    assert not load_embedding(result.files[0]).vectors["text_encoder"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a difference of two files is no zero vector: nothing said)
        saved(tmp_path / "b.safetensors", 2, seed=1)
        run(tmp_path, f"{a} + {tmp_path}/b.safetensors*-1", out="d.safetensors")
