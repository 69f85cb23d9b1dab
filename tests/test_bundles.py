"""Embeddings bundled in LoRA files (bundle_emb.NAME.KEY, as the A1111 web UI, Forge and OneTrainer keep them):
read, inspected and converted as one embedding, and installed by a prompt's <lora:...> tag."""

import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import fresh_model
from textinv.config import GenerateConfig
from textinv.errors import ConfigError, FormatError, TokenError
from textinv.formats import LearnedEmbedding, convert, detect_format, load_embedding, save_embedding
from textinv.generate import generate
from textinv.inspect import inspect_file
from textinv.models import load_model
from textinv.tiny import build_tiny_xl_pipeline
from test_generate import _save_tiny_lora


def _bundle(lora, out, bundles):
    """`lora`'s tensors (None: none) and `bundles` ({NAME: {KEY: tensor}}) as `out`, the web UI's key layout."""
    tensors = dict(load_file(str(lora))) if lora is not None else {}
    for name, vectors in bundles.items():
        tensors.update({f"bundle_emb.{name}.{key}": v.clone() for key, v in vectors.items()})
    save_file(tensors, str(out), metadata={"ss_network_module": "networks.lora"})
    return out


@pytest.fixture
def loras(tmp_path):
    """Two LoRA folders holding mystyle.safetensors, the same LoRA: `plain` without, `bundled` with the bundled
    embedding "bund" (2 vectors, the A1111 .pt's string_to_param layout); and those vectors."""
    plain, bundled = tmp_path / "plain", tmp_path / "bundled"
    plain.mkdir(), bundled.mkdir()
    _save_tiny_lora(plain, "mystyle")
    torch.manual_seed(3)
    vectors = torch.randn(2, 32)
    _bundle(plain / "mystyle.safetensors", bundled / "mystyle.safetensors", {"bund": {"string_to_param.*": vectors}})
    return plain, bundled, vectors


def test_a_bundled_embedding_reads_as_one_embedding_under_its_name(loras, tmp_path):
    _, bundled, vectors = loras
    lora = bundled / "mystyle.safetensors"
    emb = load_embedding(lora)  # (its only one)
    assert emb.token == "bund" and torch.equal(emb.vectors["text_encoder"], vectors)
    assert detect_format(lora) == "lora-bundle" and emb.metadata == {}
    # convert takes it out bit-exact, into any layout
    for name in ("bund.pt", "bund.safetensors"):
        convert(f"{lora}::bund", tmp_path / name)
        assert torch.equal(load_embedding(tmp_path / name).vectors["text_encoder"], vectors)
    # each vector key the web UI reads: emb_params, clip_l + clip_g (SDXL), any single tensor
    l, g = torch.randn(1, 32), torch.randn(1, 64)
    several = _bundle(None, tmp_path / "several.safetensors", {"k": {"emb_params": vectors}, "x": {"clip_l": l,
                                                                                                   "clip_g": g}})
    assert torch.equal(load_embedding(f"{several}::k").vectors["text_encoder"], vectors)
    xl = load_embedding(f"{several}::x")
    assert xl.token == "x" and torch.equal(xl.vectors["text_encoder"], l)
    assert torch.equal(xl.vectors["text_encoder_2"], g)
    # OneTrainer's bundles: clip_l (SD 1.x), its output vectors beside (clip_l_out) left out
    onetrainer = _bundle(None, tmp_path / "ot.safetensors", {"<ot>": {"clip_l": l, "clip_l_out": l + 1}})
    assert torch.equal(load_embedding(onetrainer).vectors["text_encoder"], l)


def test_bundles_are_named_or_refused_with_the_names_there_are(loras, tmp_path):
    plain, bundled, vectors = loras
    several = _bundle(None, tmp_path / "several.safetensors",
                      {"a": {"emb_params": vectors}, "b": {"emb_params": vectors}})
    with pytest.raises(FormatError, match=r"bundles 2 embeddings \(a, b\): name one as .*several.safetensors::a"):
        load_embedding(several)
    with pytest.raises(FormatError, match=r"bundles no embedding 'c' \(it bundles a, b\)"):
        load_embedding(f"{several}::c")
    # a LoRA without bundles is refused as before, and one named with ::NAME says it bundles none
    with pytest.raises(FormatError, match=r"this is a LoRA .*<lora:mystyle> in a prompt"):
        load_embedding(plain / "mystyle.safetensors")
    with pytest.raises(FormatError, match="it bundles no embeddings"):
        load_embedding(f"{plain / 'mystyle.safetensors'}::bund")


def test_a_name_holding_the_separator_is_read_after_the_first_one_that_leaves_a_file(tmp_path):
    """FILE::NAME splits where FILE is a file: a NAME with :: in it (which the key bundle_emb.NAME.KEY allows) was
    cut at its last ::, so FILE was looked for as 'several.safetensors::a' and never found."""
    one, two = torch.randn(1, 32), torch.randn(2, 32)
    several = _bundle(None, tmp_path / "several.safetensors", {"a::b": {"emb_params": one}, "c": {"emb_params": two}})
    emb = load_embedding(f"{several}::a::b")
    assert emb.token == "a::b" and torch.equal(emb.vectors["text_encoder"], one)
    assert detect_format(f"{several}::a::b") == "lora-bundle"
    odd = shutil.copy(several, tmp_path / "x::y.safetensors")  # (a FILE holding :: is found as before)
    assert torch.equal(load_embedding(f"{odd}::c").vectors["text_encoder"], two)
    assert load_embedding(f"{odd}::a::b").token == "a::b"
    with pytest.raises(FormatError, match=r"missing\.safetensors::a: no such file"):  # (none there: the last ::)
        load_embedding(f"{tmp_path}/missing.safetensors::a::b")


def test_a_path_in_the_home_folder_is_read_with_its_tilde_as_the_command_line_reads_it(tmp_path, monkeypatch):
    """load_embedding("~/dog.pt") said no such file, FILE::NAME too (a name holding '::' was even cut at the wrong
    one), where the command line and the config classes expand '~'."""
    from textinv.formats import load_bundled, load_embedding_pair, on_disk

    monkeypatch.setenv("HOME", str(tmp_path))
    vectors, wide = torch.randn(2, 32), torch.randn(2, 64)
    save_embedding(LearnedEmbedding("<dog>", {"text_encoder": vectors}), tmp_path / "dog.pt", "a1111")
    save_embedding(LearnedEmbedding("<w>", {"text_encoder": wide}), tmp_path / "w.safetensors", "diffusers")
    _bundle(None, tmp_path / "s.safetensors", {"k": {"emb_params": vectors}, "a::b": {"emb_params": wide}})
    assert torch.equal(load_embedding("~/dog.pt").vectors["text_encoder"], vectors)
    assert detect_format("~/dog.pt") == "a1111"
    assert torch.equal(load_embedding("~/s.safetensors::k").vectors["text_encoder"], vectors)
    assert torch.equal(load_embedding("~/s.safetensors::a::b").vectors["text_encoder"], wide)
    assert detect_format("~/s.safetensors::k") == "lora-bundle"
    assert on_disk("~/s.safetensors::a::b") == tmp_path / "s.safetensors"
    assert sorted(emb.token for emb in load_bundled("~/s.safetensors")) == ["a::b", "k"]
    assert load_embedding_pair("~/dog.pt", "~/w.safetensors").widths == (32, 64)


def test_inspect_lists_a_loras_bundled_embeddings(sd1_dir, loras, tmp_path):
    _, bundled, vectors = loras
    several = _bundle(bundled / "mystyle.safetensors", tmp_path / "several.safetensors",
                      {"other": {"emb_params": torch.randn(3, 32)}})
    report = inspect_file(several)
    assert report["format"] == "lora-bundle"
    assert [(b["token"], b["num_vectors"]) for b in report["bundled"]] == [("bund", 2), ("other", 3)]
    assert "several.safetensors::bund" in report["text"] and "other: 3 vectors" in report["text"]
    one = inspect_file(f"{several}::other")
    assert one["token"] == "other" and one["num_vectors"] == 3
    with pytest.raises(ConfigError, match=r"bundles 2 embeddings \(bund, other\): name the one to compare with "
                                          r"--model as .*several.safetensors::bund"):
        inspect_file(several, model="shapes")
    compared = inspect_file(bundled / "mystyle.safetensors", model=str(sd1_dir))  # (its one bundle, to the model)
    assert compared["token"] == "bund" and len(compared["nearest_tokens"]["text_encoder"]) == 2


def _draw(model, tmp_path, out, prompt, **settings):
    paths = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=2, **settings), model=model,
                     progress=False)
    return np.asarray(Image.open(paths[0])), Image.open(paths[0]).text


def test_a_lora_tag_installs_its_bundled_embeddings_as_the_same_vectors_given_as_embedding(sd1_dir, loras, tmp_path):
    plain, bundled, vectors = loras
    model = fresh_model(sd1_dir)
    sizes = [len(tok) for _, tok, _ in model.encoders]
    pt = save_embedding(LearnedEmbedding("bund", {"text_encoder": vectors}), tmp_path / "bund.pt", "a1111")[0]
    prompt = "a photo of bund <lora:mystyle:0.5>"  # (the multiplier is the LoRA's, never the vectors')
    drawn, text = _draw(model, tmp_path, "bundled", prompt, lora_dir=[str(bundled)])
    given, _ = _draw(model, tmp_path, "given", prompt, lora_dir=[str(plain)], embedding=[str(pt)])
    words, _ = _draw(model, tmp_path, "words", prompt, lora_dir=[str(plain)])
    assert np.array_equal(drawn, given) and not np.array_equal(drawn, words)
    assert 'TI hashes: "bund: mystyle"' in text["parameters"]  # (the web UI's: the LoRA's name as its hash)
    assert [len(tok) for _, tok, _ in model.encoders] == sizes and not hasattr(model, "_loras")


def test_an_embedding_given_beside_a_bundle_of_its_name_wins_as_in_the_web_ui(sd1_dir, loras, tmp_path):
    plain, bundled, vectors = loras
    model = fresh_model(sd1_dir)
    other = save_embedding(LearnedEmbedding("bund", {"text_encoder": vectors.flip(0)}), tmp_path / "bund.pt",
                           "a1111")[0]
    prompt = "a photo of bund <lora:mystyle:1>"
    with pytest.warns(UserWarning, match="bundles the embedding 'bund', which an embedding= gives too: the "
                                         "embedding= is drawn"):
        drawn, _ = _draw(model, tmp_path, "both", prompt, lora_dir=[str(bundled)], embedding=[str(other)])
    loose, _ = _draw(model, tmp_path, "loose", prompt, lora_dir=[str(plain)], embedding=[str(other)])
    assert np.array_equal(drawn, loose)


def test_comfy_emphasis_leaves_a_loras_bundled_embeddings_out_as_comfyui_does(sd1_dir, loras, tmp_path):
    """ComfyUI's LoRA loader leaves a LoRA's bundle_emb keys unread (comfy/lora.py: "lora key not loaded"), and a
    prompt there names an embedding by `embedding:NAME`, a file in its embeddings folders. Under --emphasis comfy a
    tag installed the bundle under its stored name, so its name written bare drew it, and beside an --embedding of
    that name (installed as `embedding:NAME`) the check for a duplicate missed it. The bundle is left out, its name
    is words, and a warning names the way to draw it."""
    plain, bundled, vectors = loras
    model = fresh_model(sd1_dir)
    given = save_embedding(LearnedEmbedding("x", {"text_encoder": vectors.flip(0)}), tmp_path / "bund.pt",
                           "a1111")[0]
    prompt = "a photo of embedding:bund <lora:mystyle:1>, bund"
    with pytest.warns(UserWarning, match=r"<lora:mystyle> bundles the embedding 'bund', which the prompt writes: "
                                         r"ComfyUI does not read a LoRA's bundled embeddings, nor does "
                                         r"emphasis='comfy', so it is words; to draw it, give embedding='\S+mystyle"
                                         r".safetensors::bund' and write embedding:bund"):
        drawn, _ = _draw(model, tmp_path, "bundled", prompt, lora_dir=[str(bundled)], embedding=[str(given)],
                         emphasis="comfy")
    without, _ = _draw(model, tmp_path, "plain", prompt, lora_dir=[str(plain)], embedding=[str(given)],
                       emphasis="comfy")
    assert np.array_equal(drawn, without)


def test_a_loose_file_that_does_not_fit_gives_way_to_the_bundle_of_its_name_that_does(sd1_dir, loras, tmp_path):
    """The web UI skips an embeddings-folder file of another shape, so a LoRA's bundle of its name is the one it
    draws: so here, with a warning naming the file skipped; where neither fits, the loose file is refused as before."""
    _, bundled, _ = loras
    model = fresh_model(sd1_dir)
    wide = save_embedding(LearnedEmbedding("bund", {"text_encoder": torch.randn(2, 64)}), tmp_path / "bund.pt",
                          "a1111")[0]
    prompt = "a photo of bund <lora:mystyle:1>"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn, text = _draw(model, tmp_path, "skipped", prompt, lora_dir=[str(bundled)], embedding=[str(wide)])
    assert any(re.search(r"bund\.pt \(embedding 'bund', width 64.*is skipped: <lora:mystyle>'s", str(w.message))
               for w in caught)
    alone, _ = _draw(model, tmp_path, "alone", prompt, lora_dir=[str(bundled)])
    assert np.array_equal(drawn, alone) and 'TI hashes: "bund: mystyle"' in text["parameters"]
    (tmp_path / "wide").mkdir()
    both_wide = _bundle(None, tmp_path / "wide" / "mystyle.safetensors",
                        {"bund": {"string_to_param.*": torch.randn(2, 64)}})
    with pytest.raises(FormatError, match=r"embedding 'bund' has width 64.*but the model"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (that the --embedding is drawn: said before the model loads)
        _draw(model, tmp_path, "neither", prompt, lora_dir=[str(both_wide.parent)], embedding=[str(wide)])


def test_bundled_names_outside_their_loras_prompts_and_clashing_bundles_are_refused(loras, tmp_path):
    plain, bundled, vectors = loras
    missing = str(tmp_path / "no-model")  # (refused before any model loads)
    with pytest.raises(ConfigError, match=r"writes 'bund', an embedding bundled in <lora:mystyle>, which its pass "
                                          r"does not apply.*<lora:mystyle:0>"):
        generate(GenerateConfig(prompt=["a <lora:mystyle>", "a photo of bund"], out=str(tmp_path / "r"),
                                model=missing, lora_dir=[str(bundled)]), progress=False)
    _bundle(None, bundled / "second.safetensors", {"bund": {"emb_params": vectors.flip(0)}})
    with pytest.raises(TokenError, match=r"<lora:mystyle> and <lora:second> both bundle an embedding 'bund'"):
        generate(GenerateConfig(prompt=["bund <lora:mystyle> <lora:second>"], out=str(tmp_path / "r"),
                                model=missing, lora_dir=[str(bundled)]), progress=False)


def test_an_sdxl_bundle_installs_both_halves(tmp_path):
    folder = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(folder)
    model = load_model(folder)
    torch.manual_seed(4)
    halves = {"clip_l": torch.randn(2, model.widths[0]), "clip_g": torch.randn(2, model.widths[1])}
    loras = tmp_path / "Lora"
    loras.mkdir()
    _bundle(None, loras / "xlstyle.safetensors", {"xq": halves})  # (a file of bundled embeddings alone)
    file = save_embedding(LearnedEmbedding("xq", {"text_encoder": halves["clip_l"],
                                                  "text_encoder_2": halves["clip_g"]}), tmp_path / "xq.safetensors",
                          "sdxl")[0]
    drawn, _ = _draw(model, tmp_path, "bundled", "a photo of xq <lora:xlstyle>", lora_dir=[str(loras)])
    given, _ = _draw(model, tmp_path, "given", "a photo of xq", embedding=[str(file)])
    assert np.array_equal(drawn, given)
    # each half matters: the clip_g half changed alone draws another picture
    _bundle(None, loras / "xlstyle.safetensors", {"xq": {**halves, "clip_g": halves["clip_g"].flip(0)}})
    other, _ = _draw(model, tmp_path, "other", "a photo of xq <lora:xlstyle>", lora_dir=[str(loras)])
    assert not np.array_equal(drawn, other)


def test_embedding_takes_one_bundled_embedding_by_file_and_name(sd1_dir, loras, tmp_path):
    plain, bundled, vectors = loras
    model = fresh_model(sd1_dir)
    pt = save_embedding(LearnedEmbedding("bund", {"text_encoder": vectors}), tmp_path / "bund.pt", "a1111")[0]
    named, _ = _draw(model, tmp_path, "named", "a photo of bund",
                     embedding=[f"{bundled / 'mystyle.safetensors'}::bund"])
    given, _ = _draw(model, tmp_path, "given", "a photo of bund", embedding=[str(pt)])
    assert np.array_equal(named, given)


def test_a_bundle_given_as_embedding_is_in_ti_hashes_by_its_loras_name_and_again_reads_it_back(sd1_dir, loras,
                                                                                                tmp_path):
    """--embedding FILE::NAME (or a LoRA that bundles it alone) is listed as the web UI lists a bundled embedding,
    with its LoRA's name for a hash; --again of that text given the same entry finds it, and tells another LoRA."""
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config

    _, bundled, _ = loras
    lora = bundled / "mystyle.safetensors"
    model = fresh_model(sd1_dir)
    for k, entry in enumerate((f"{lora}::bund", str(lora))):
        _, text = _draw(model, tmp_path, f"d{k}", "a photo of bund", embedding=[entry])
        assert 'TI hashes: "bund: mystyle"' in text["parameters"]
    info = PngInfo()  # (the parameters alone, as a web UI reads them)
    info.add_text("parameters", text["parameters"])
    Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)

    def said(entry):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again_config(tmp_path / "webui.png", {"model": str(sd1_dir), "embedding": [entry]})
        return " ".join(str(w.message) for w in caught)

    assert "TI hashes" not in said(f"{lora}::bund") and "TI hashes" not in said(str(lora))
    shutil.copy(lora, tmp_path / "other.safetensors")
    assert "bundled in the LoRA other; the picture's bund mystyle" in said(f"{tmp_path / 'other.safetensors'}::bund")


def test_again_takes_a_web_ui_pictures_bundled_embedding_from_its_lora_tag(sd1_dir, tmp_path):
    """The web UI lists a bundled embedding in TI hashes with its LoRA's name for a hash: no file is missing when the
    prompt's tag names that LoRA."""
    from conftest import again_warned, web_ui_picture

    def said(prompt):
        picture = web_ui_picture(tmp_path / "webui.png", f'{prompt}\nSteps: 2, Seed: 3, Size: 16x16, TI hashes: '
                                                         f'"bund: MyStyle"')
        return again_warned(picture, {"model": str(sd1_dir)})[1]

    assert "no --embedding given is" not in said("a photo of bund <lora:MyStyle:0.5>")
    assert "drawn with the embeddings bund (its TI hashes), which no --embedding given is" in said("a photo of bund")


def test_convert_into_lora_bundles_an_embedding_the_web_ui_way(loras, tmp_path):
    from textinv.cli import main

    plain, _, vectors = loras
    lora = plain / "mystyle.safetensors"
    pt = save_embedding(LearnedEmbedding("<dog>", {"text_encoder": vectors}), tmp_path / "dog.pt", "a1111")[0]
    out = tmp_path / "style-dog.safetensors"
    assert main(["convert", str(pt), str(out), "--into-lora", str(lora)]) == 0
    written, before = load_file(str(out)), load_file(str(lora))
    assert set(written) == set(before) | {"bundle_emb.<dog>.string_to_param.*"}
    assert all(torch.equal(written[k], before[k]) for k in before)  # the LoRA as it was
    assert torch.equal(load_embedding(f"{out}::<dog>").vectors["text_encoder"], vectors)
    xl = save_embedding(LearnedEmbedding("xq", {"text_encoder": vectors, "text_encoder_2": torch.randn(2, 64)}),
                        tmp_path / "xq.safetensors", "sdxl")[0]
    convert(xl, tmp_path / "xl.safetensors", into_lora=lora)
    assert {k for k in load_file(str(tmp_path / "xl.safetensors")) if k.startswith("bundle_emb")} == \
        {"bundle_emb.xq.clip_l", "bundle_emb.xq.clip_g"}
    cases = [(dict(dst=out), "already exists; pass overwrite=True"),
             (dict(dst=tmp_path / "x.pt"), "end the name in .safetensors"),
             (dict(token="a.b"), "ends at its first dot"),
             (dict(into_lora=out), r"^into_lora='\S+' bundles an embedding '<dog>' already: rename this one with "
                                   r"token=$"),
             (dict(into_lora=pt), "not a readable .safetensors LoRA"),
             (dict(into_lora=tmp_path / "xq.safetensors"), "holds no LoRA's tensors"),
             (dict(to="a1111"), "^to='a1111' names an embedding format; into_lora= writes .* give one of them")]
    for change, message in cases:
        settings = {"dst": tmp_path / "new.safetensors", "into_lora": lora, **change}
        with pytest.raises(FormatError, match=message):
            convert(pt, **settings)
    assert not (tmp_path / "new.safetensors").exists()


def test_score_takes_a_bundled_embedding_by_file_and_name_as_generate_does(sd1_dir, loras, tmp_path):
    from conftest import write_images
    from textinv.score import ScoreConfig, score
    from textinv.tiny import save_tiny_clip

    _, bundled, vectors = loras
    lora = bundled / "mystyle.safetensors"
    clip = save_tiny_clip(tmp_path / "clip")
    two = _bundle(lora, tmp_path / "two.safetensors", {"other": {"emb_params": vectors.flip(0)}})
    config = ScoreConfig(embedding=f"{lora}::bund", compare=[f"{two}::other", f"{lora}::bund"], clip=str(clip),
                         model=str(sd1_dir), images=str(write_images(tmp_path / "images", n=2)),
                         out=str(tmp_path / "o"), n=1, steps=1, prompts=["{} on a table"], init="none")
    report = score(config, progress=False).report
    assert report["embedding"]["token"] == "bund"
    # the compared one under its NAME; the scored one named again is drawn once
    assert [m["words"] for m in report["methods"]] == ["bund", "<other>"]
    with pytest.raises(ConfigError, match="does not exist"):
        ScoreConfig(embedding=f"{tmp_path / 'gone.safetensors'}::bund").validate()


def test_an_embedding_axis_takes_bundled_embeddings_by_file_and_name(loras, tmp_path):
    from textinv import xyz

    _, bundled, vectors = loras
    lora = bundled / "mystyle.safetensors"
    two = _bundle(None, tmp_path / "two.safetensors", {"bund": {"emb_params": vectors.flip(0)}})
    config = GenerateConfig(prompt=["a photo of bund"], out=str(tmp_path / "r"), n=1, steps=2,
                            model=str(tmp_path / "no-model"), x=f"embedding={lora}::bund,{two}::bund")
    cells = xyz.plan(config).cells
    assert [c.embedding for c in cells] == [[f"{lora}::bund"], [f"{two}::bund"]]
    with pytest.raises(ConfigError, match=r"gone.safetensors::bund does not exist"):
        xyz.plan(GenerateConfig(**{**config.__dict__, "x": f"embedding={tmp_path / 'gone.safetensors'}::bund"}))


def test_again_redraws_textinvs_own_pictures_drawn_with_bundled_embeddings(sd1_dir, loras, tmp_path):
    """Drawn by a LoRA tag or by --embedding FILE::NAME, the picture records where the LoRA is; --again finds it
    there, redraws it bit for bit, and tells a LoRA whose bundled vectors changed since."""
    import warnings

    from textinv.again import again_config

    _, bundled, vectors = loras
    lora = bundled / "mystyle.safetensors"
    model = fresh_model(sd1_dir)
    for prompt, settings in (("a photo of bund <lora:mystyle:0.5>", dict(lora_dir=[str(bundled)])),
                             ("a photo of bund", dict(embedding=[f"{lora}::bund"]))):
        out = tmp_path / f"r{len(settings)}{prompt[-2]}"
        (first,) = generate(GenerateConfig(prompt=[prompt], out=str(out), n=1, steps=2, model=str(sd1_dir),
                                           metadata="full", **settings), model=model, progress=False)
        config, keep = again_config(first, {"out": str(out / "again")})
        (second,) = generate(config, model=model, progress=False, keep_seeds=keep)
        assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    # the bundled vectors changed in place: said, as for any embedding file retrained since
    _bundle(tmp_path / "plain" / "mystyle.safetensors", lora, {"bund": {"string_to_param.*": vectors.flip(0)}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again_config(first, {"out": str(tmp_path / "again")})
    assert any("was drawn with other contents of" in str(w.message) for w in caught)


def test_a_bundle_of_two_string_to_param_terms_is_refused_as_such_a_loose_file_is(tmp_path):
    """The web UI's embedding loader refuses a string_to_param of several terms; read one after the other, the last
    one was taken silently."""
    two = _bundle(None, tmp_path / "two.safetensors", {"two": {"string_to_param.*": torch.randn(1, 32),
                                                                "string_to_param.b": torch.randn(2, 32)}})
    with pytest.raises(FormatError, match=r"two.safetensors::two: the A1111 file holds 2 embeddings"):
        load_embedding(two)


def test_into_lora_writes_the_new_files_own_sshs_hashes(loras, tmp_path):
    """kohya's sd-scripts write a LoRA's "addnet" hashes into its metadata (sshs_model_hash: the SHA-256 of the
    bytes after the header; sshs_legacy_hash: the first 8 hex digits of the SHA-256 of the 64 KiB at 1 MiB), and the
    web UI and civitai take them as the file's hash: with a bundle added the bytes differ, so the hashes are the new
    file's, recomputed here from its bytes. A LoRA without them gets none (the web UI computes the first itself)."""
    import hashlib
    import json

    from textinv.loras import lora_sha256

    plain, _, vectors = loras
    tensors = dict(load_file(str(plain / "mystyle.safetensors")))
    tensors["lora_unet_big.lora_down.weight"] = torch.randn(1000, 400)  # (1.6 MB: the legacy slice is in it)
    old = {"ss_network_module": "networks.lora", "sshs_model_hash": "a" * 64, "sshs_legacy_hash": "abcdef12"}
    save_file(tensors, str(tmp_path / "big.safetensors"), metadata=old)
    pt = save_embedding(LearnedEmbedding("dog", {"text_encoder": vectors}), tmp_path / "dog.pt", "a1111")[0]
    out = convert(pt, tmp_path / "out.safetensors", into_lora=tmp_path / "big.safetensors")[0]
    data = out.read_bytes()
    n = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + n])["__metadata__"]
    assert metadata["sshs_model_hash"] == hashlib.sha256(data[8 + n:]).hexdigest() == lora_sha256(out)
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert metadata["ss_network_module"] == "networks.lora" and "bundle_emb.dog.string_to_param.*" in load_file(out)
    bare = convert(pt, tmp_path / "bare.safetensors", into_lora=plain / "mystyle.safetensors")[0]
    data = bare.read_bytes()
    kept = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {})
    assert not {"sshs_model_hash", "sshs_legacy_hash"} & kept.keys()


def test_the_copy_of_a_lora_without_its_bundles_is_made_in_the_temporary_folder_and_always_removed(
        sd1_dir, loras, tmp_path, monkeypatch):
    """diffusers refuses the bundle's tensors, so a LoRA that bundles embeddings is loaded from a copy without them,
    made in the system's temporary folder (never beside the user's LoRA) and removed however the run ends; a LoRA
    that bundles none is loaded as it is. A copy that cannot be written is said to be the temporary folder's fault,
    not the LoRA file's."""
    import tempfile

    plain, bundled, _ = loras
    model = fresh_model(sd1_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = []
    real = type(model.pipeline).load_lora_weights

    def load(pipe, path, **kw):
        loaded.append(path)
        if path.startswith(str(scratch)) and len(loaded) == 1:
            raise KeyboardInterrupt
        return real(pipe, path, **kw)

    monkeypatch.setattr(type(model.pipeline), "load_lora_weights", load)
    with pytest.raises(KeyboardInterrupt):
        _draw(model, tmp_path, "cut", "bund <lora:mystyle>", lora_dir=[str(bundled)])
    _draw(model, tmp_path, "plain", "a <lora:mystyle>", lora_dir=[str(plain)])
    assert loaded[1] == str(plain / "mystyle.safetensors") and not any(scratch.iterdir())
    assert sorted(p.name for p in bundled.iterdir()) == ["mystyle.safetensors"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"<lora:mystyle> bundles embeddings.*gone.*set TMPDIR"):
        _draw(model, tmp_path, "full", "bund <lora:mystyle>", lora_dir=[str(bundled)])
    assert not hasattr(model, "_loras")


def test_bundled_embeddings_the_prompts_do_not_write_are_left_out_and_a_name_of_two_words_is_refused(
        sd1_dir, loras, tmp_path):
    """The web UI installs a LoRA's every bundled embedding, and matches a name of several words (a space in it) in
    the prompt. textinv's tokens are one word, so such a name failed every prompt that applied the LoRA, after the
    model had loaded, with a fix (--token) a tag cannot take. Only the bundled names a prompt writes are installed
    (as a web UI embeddings folder's files are), and a name of several words that one writes is refused before the
    model loads, with how to draw it."""
    plain, bundled, vectors = loras
    _bundle(plain / "mystyle.safetensors", bundled / "mystyle.safetensors",
            {"bund": {"string_to_param.*": vectors}, "my style": {"emb_params": vectors.flip(0)}})
    model = fresh_model(sd1_dir)
    pt = save_embedding(LearnedEmbedding("bund", {"text_encoder": vectors}), tmp_path / "bund.pt", "a1111")[0]
    drawn, _ = _draw(model, tmp_path, "bundled", "a photo of bund <lora:mystyle>", lora_dir=[str(bundled)])
    given, _ = _draw(model, tmp_path, "given", "a photo of bund <lora:mystyle>", lora_dir=[str(plain)],
                     embedding=[str(pt)])
    assert np.array_equal(drawn, given)
    with pytest.raises(ConfigError, match=r"<lora:mystyle> bundles 'my style'.*one word.*convert "
                                          r".*mystyle.safetensors::my style.*--token"):
        generate(GenerateConfig(prompt=["a my style <lora:mystyle>"], out=str(tmp_path / "r"),
                                model=str(tmp_path / "no-model"), lora_dir=[str(bundled)]), progress=False)
    # a tag's own text writes no embedding: a LoRA named as it bundles is applied, the name left out
    from textinv.generate import checked_settings

    shutil.copy(bundled / "mystyle.safetensors", bundled / "my style.safetensors")
    assert checked_settings(GenerateConfig(prompt=["a dog <lora:my style>"], out=str(tmp_path / "r"),
                                           model=str(tmp_path / "no-model"), lora_dir=[str(bundled)])).bundled == {}


def test_a_bundled_name_kept_decomposed_answers_to_the_name_typed(sd1_dir, loras, tmp_path):
    """A bundle named on macOS keeps café's accent apart (NFD); prompts are read composed (NFC), as the web UI's
    tokenizer reads both: the name typed draws it, and names it in FILE::NAME."""
    plain, bundled, vectors = loras
    _bundle(plain / "mystyle.safetensors", bundled / "mystyle.safetensors",
            {"cafe\u0301": {"string_to_param.*": vectors}})
    model = fresh_model(sd1_dir)
    pt = save_embedding(LearnedEmbedding("caf\u00e9", {"text_encoder": vectors}), tmp_path / "c.pt", "a1111")[0]
    drawn, text = _draw(model, tmp_path, "bundled", "a photo of caf\u00e9 <lora:mystyle>", lora_dir=[str(bundled)])
    given, _ = _draw(model, tmp_path, "given", "a photo of caf\u00e9 <lora:mystyle>", lora_dir=[str(plain)],
                     embedding=[str(pt)])
    assert np.array_equal(drawn, given) and 'TI hashes: "caf\u00e9: mystyle"' in text["parameters"]
    # and FILE::NAME typed composed names it (as the refusal of a pass without the LoRA tells it to)
    named = load_embedding(f"{bundled / 'mystyle.safetensors'}::caf\u00e9")
    assert named.token == "caf\u00e9" and torch.equal(named.vectors["text_encoder"], vectors)


def test_a_bundled_embedding_conditions_the_hires_models_pass_as_given_as_embedding(sd1_dir, loras, tmp_path):
    """Written only in the hires prompt, a bundled embedding draws in --hires-model's pass alone, as the same vectors
    given as --embedding do there."""
    plain, bundled, vectors = loras
    pt = save_embedding(LearnedEmbedding("bund", {"text_encoder": vectors}), tmp_path / "bund.pt", "a1111")[0]
    hires = dict(hires_scale=2, hires_model=str(sd1_dir), hires_prompt="a photo of bund <lora:mystyle:0.5>")
    model = fresh_model(sd1_dir)
    drawn, text = _draw(model, tmp_path, "bundled", "a photo <lora:mystyle:0.5>", lora_dir=[str(bundled)], **hires)
    given, _ = _draw(model, tmp_path, "given", "a photo <lora:mystyle:0.5>", lora_dir=[str(plain)],
                     embedding=[str(pt)], **hires)
    words, _ = _draw(model, tmp_path, "words", "a photo <lora:mystyle:0.5>", lora_dir=[str(plain)], **hires)
    assert np.array_equal(drawn, given) and not np.array_equal(drawn, words)
    assert 'TI hashes: "bund: mystyle"' in text["parameters"]


def test_into_lora_refuses_an_embedding_of_another_family_than_the_loras(loras, tmp_path):
    """The web UI skips a bundled embedding whose width is not its model's: one of another family than the LoRA's
    own (its modelspec.architecture, which kohya's sd-scripts write) would never be drawn with it."""
    plain, _, _ = loras
    tensors = dict(load_file(str(plain / "mystyle.safetensors")))
    xl = save_file(tensors, str(tmp_path / "xl.safetensors"),
                   metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"})
    sd1 = save_embedding(LearnedEmbedding("dog", {"text_encoder": torch.randn(1, 768)}), tmp_path / "d.pt",
                         "a1111")[0]
    with pytest.raises(FormatError, match=r"^into_lora='.*xl.safetensors' is a LoRA for Stable Diffusion XL.*'dog' is "
                                          r"768 \(Stable Diffusion 1"):
        convert(sd1, tmp_path / "out.safetensors", into_lora=tmp_path / "xl.safetensors")
    assert xl is None and not (tmp_path / "out.safetensors").exists()
    both = save_embedding(LearnedEmbedding("dog", {"text_encoder": torch.randn(1, 768),
                                                   "text_encoder_2": torch.randn(1, 1280)}), tmp_path / "x.safetensors",
                          "sdxl")[0]
    convert(both, tmp_path / "out.safetensors", into_lora=tmp_path / "xl.safetensors")  # (its own family: written)


def test_convert_into_lora_says_a_run_folder_or_an_embedding_is_no_lora(tmp_path, capsys):
    """A training run's folder as --into-lora was read as its embedding file and refused as "it holds no LoRA's
    tensors (e.g. '<x>')", which says neither what was given nor what --into-lora takes."""
    from textinv.cli import main

    run = tmp_path / "run1"
    emb = LearnedEmbedding("<x>", {"text_encoder": torch.randn(1, 32)})
    save_embedding(emb, run / "learned_embeds.safetensors", "diffusers")
    (run / "config.yaml").write_text("token: <x>\n")
    pt = save_embedding(emb, tmp_path / "x.pt", "a1111")[0]
    assert main(["convert", str(pt), str(tmp_path / "out.safetensors"), "--into-lora", str(run)]) == 2
    said = capsys.readouterr().err
    assert f"--into-lora '{run}' is an embedding's folder (it holds learned_embeds.safetensors" in said
    assert "which convert takes as src, not a LoRA: --into-lora takes the LoRA .safetensors file" in said
    with pytest.raises(FormatError, match=r"^into_lora='\S+' is a folder, not a LoRA: into_lora= takes the LoRA"):
        convert(pt, tmp_path / "out.safetensors", into_lora=tmp_path)  # (a folder without an embedding)
    with pytest.raises(FormatError, match=r"holds no LoRA's tensors \(e.g. '<x>'\); it is an embedding \('<x>'\), "
                                          r"which convert takes as src, not a LoRA: give the LoRA file"):
        convert(pt, tmp_path / "out.safetensors", into_lora=run / "learned_embeds.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
