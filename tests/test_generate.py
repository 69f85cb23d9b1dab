"""Generation with learned tokens, and interoperability with diffusers' own textual-inversion loader."""

import errno
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file

from conftest import CtrlCInFinalizer, again_warned, fresh_model, recorded_arguments, saved_whole, web_ui_picture
from textinv import dynamic
from textinv.config import GenerateConfig
from textinv.errors import ConfigError, DeviceMemoryError, FormatError, TokenError
from textinv.formats import LearnedEmbedding, load_embedding, save_embedding
from textinv.generate import GenerationInterrupted, expand_all, generate, install_embedding, render
from textinv.tokens import expand_prompt
from textinv.models import load_model
from textinv.tiny import build_tiny_pipeline


def test_embedding_of_another_width_is_refused_naming_both(sd1_dir):
    model = fresh_model(sd1_dir)
    emb = LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, 768)})
    with pytest.raises(FormatError, match=r"768 \(Stable Diffusion 1.x\).*32 \(no known"):
        install_embedding(model, emb)
    xl = LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, 768), "text_encoder_2": torch.zeros(1, 1280)})
    with pytest.raises(FormatError, match=r"768 \+ 1280 \(Stable Diffusion XL\).*32"):
        install_embedding(model, xl)


def test_an_embedding_of_another_width_names_the_model_its_file_says_it_was_trained_on(sd1_dir):
    """`generate --embedding runs/my-dog` with --model left out draws on the bundled model: the refusal of an
    embedding trained on another names that model, as the file records it, for --model."""
    model = fresh_model(sd1_dir)
    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    emb = LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, 768)}, {"base_model": sd15})
    with pytest.raises(FormatError, match=re.escape(f"family (this one was trained on {sd15!r}: give that as model=)")):
        install_embedding(model, emb)
    with pytest.raises(FormatError) as unrecorded:
        install_embedding(model, LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, 768)}))
    assert "trained on" not in str(unrecorded.value)


def test_an_embedding_file_of_another_width_is_named_with_the_settings_that_draw_it(sd1_dir, tmp_path, capsys):
    """`generate --embedding A --embedding B`, one of another width: the refusal named the token, not which file
    to take out, and said --model and --emphasis comfy from Python too. The file, and each setting as its user
    gives it."""
    from textinv.cli import main

    sd15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    wide = tmp_path / "wide.safetensors"
    save_embedding(LearnedEmbedding("<w>", {"text_encoder": torch.zeros(1, 768)}, {"base_model": sd15}), wide)
    settings = dict(prompt=["a <w>"], embedding=[str(wide)], out=str(tmp_path / "o"), n=1, steps=1)
    with pytest.raises(FormatError) as refused:
        generate(GenerateConfig(**settings), model=fresh_model(sd1_dir), progress=False)
    assert str(refused.value).startswith(f"{wide}: embedding '<w>' has width 768")
    assert "give that as model=)" in str(refused.value) and "so does emphasis='comfy'" in str(refused.value)
    assert main(["generate", "--model", str(sd1_dir), "--prompt", "a <w>", "--embedding", str(wide), "--out",
                 str(tmp_path / "o"), "-n", "1", "--steps", "1"]) == 2
    said = capsys.readouterr().err
    assert f"error: {wide}: embedding '<w>' has width 768" in said
    assert "give that as --model)" in said and "so does --emphasis comfy" in said


def test_installing_an_embedding_builds_the_vocabulary_as_often_for_many_vectors_as_for_one(sd1_dir, monkeypatch):
    """get_vocab() builds the whole vocabulary (49,408 entries on a real CLIP tokenizer) as a new dict: the checks
    built it twice for each of the token's vector names, and once more for each as they were added."""
    from textinv.generate import unload_embeddings

    model = fresh_model(sd1_dir)
    real, calls = model.tokenizer.get_vocab, []
    monkeypatch.setattr(model.tokenizer, "get_vocab", lambda: calls.append(1) or real())  # (the copy keeps it too)
    built = []
    for n in (1, 4):
        calls.clear()
        install_embedding(model, LearnedEmbedding(f"<v{n}>", {"text_encoder": torch.randn(n, 32)}))
        unload_embeddings(model)
        built.append(len(calls))
    assert built[0] == built[1]


def test_an_sdxl_embedding_on_a_one_encoder_model_of_its_clip_l_width_uses_that_half(sd1_dir, tmp_path):
    """An SDXL file (clip_l + clip_g) on an SD 1.x model was refused for its width; ComfyUI uses its clip_l half
    there (the web UI skips it), so do we, saying so. The tiny model's 32 stands for SD 1.x's 768: its rows are the
    file's clip_l exactly, and it draws as a file of that half alone does."""
    clip_l = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 3
    xl = LearnedEmbedding("<q>", {"text_encoder": clip_l, "text_encoder_2": torch.randn(2, 64)})
    xl_path = save_embedding(xl, tmp_path / "q.safetensors", "sdxl")[0]
    half_path = save_embedding(LearnedEmbedding("<q>", {"text_encoder": clip_l}), tmp_path / "half.safetensors")[0]
    model = fresh_model(sd1_dir)
    with pytest.warns(UserWarning, match=r"'<q>' is an SDXL embedding \(width 32 \+ 64 .*only its clip_l half"):
        install_embedding(model, load_embedding(xl_path))
    ids = model.tokenizer.convert_tokens_to_ids(["<q>", "<q>_1"])
    assert torch.equal(model.text_encoder.get_input_embeddings()(torch.tensor(ids)), clip_l)
    pictures = []
    for i, path in enumerate((xl_path, half_path)):
        cfg = GenerateConfig(prompt=["a photo of <q>"], embedding=[str(path)], out=str(tmp_path / str(i)), n=1,
                             steps=2, model=str(sd1_dir))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            pictures.append(np.asarray(Image.open(generate(cfg, progress=False)[0])))
        assert any("only its clip_l half" in str(w.message) for w in said) == (i == 0)
    assert np.array_equal(*pictures)
    from textinv.inspect import inspect_file  # (inspect says what these commands do with it)

    assert "only its clip_l half is used" in inspect_file(xl_path, model=str(sd1_dir))["model_mismatch"]


def test_an_sdxl_embedding_fitting_neither_width_of_a_one_encoder_model_is_still_refused(tmp_path):
    """SD 2.x (1024 wide) fits neither half of an SDXL file (768 + 1280): refused as before, naming both widths."""
    path = tmp_path / "sd2"
    build_tiny_pipeline("sd2", seed=1, width=48).save_pretrained(path)
    xl = LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 64)})
    with pytest.raises(FormatError, match=r"has width 32 \+ 64 .* has width 48"):
        install_embedding(load_model(path), xl)


def test_an_embedding_of_more_vectors_than_a_prompt_window_is_warned_about_and_still_draws(sd1_dir):
    """A file of one key holding a [200, d] tensor loads as an embedding, but no 77-token window holds its token:
    it is split across chunks, read apart (ComfyUI does the same; the web UI fails on it). Said, not silent; 75
    vectors, which fit, are not warned about."""
    from textinv.conditioning import encode_prompts
    from textinv.generate import unload_embeddings

    model = fresh_model(sd1_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        install_embedding(model, LearnedEmbedding("<fits>", {"text_encoder": torch.randn(75, 32)}))
    long = LearnedEmbedding("<long>", {"text_encoder": torch.randn(200, 32)})
    with pytest.warns(UserWarning, match=r"'<long>' has 200 vectors, more than the 75 one pass of the text encoder "
                                         r"reads: it is split across 3 chunks"):
        install_embedding(model, long)
    hidden, _ = encode_prompts(model, [expand_all("a photo of <long>", [long])])
    assert hidden.shape == (1, 4 * 77, 32)  # "a photo of", then its 200 vectors as 75 + 75 + 50
    unload_embeddings(model)


def test_generate_writes_pngs_with_settings_and_token_changes_output(sd1_dir, tmp_path):
    emb_path = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32) * 3}),
                              tmp_path / "learned_embeds.safetensors")[0]
    cfg = GenerateConfig(prompt=["a photo of <q>"], embedding=[str(emb_path)], out=str(tmp_path / "r"), n=2,
                         steps=3, model=str(sd1_dir))
    paths = generate(cfg, progress=False)
    assert [p.name for p in paths] == ["000-a-photo-of-q-s0.png", "000-a-photo-of-q-s1.png"]
    img = Image.open(paths[1])
    assert img.size == (16, 16)
    assert img.text["prompt"] == "a photo of <q>" and img.text["expanded_prompt"] == "a photo of <q> <q>_1"
    assert img.text["seed"] == "1" and "Steps: 3" in img.text["parameters"]
    assert img.text["guidance"] == "7.5"  # the tiny model records no guidance of its own: SD's
    # image 1 (seed 1) can be made again alone, and the token changes the picture
    again = generate(GenerateConfig(prompt=["a photo of <q>"], embedding=[str(emb_path)], out=str(tmp_path / "s"),
                                    n=1, seed=1, steps=3, model=str(sd1_dir)), progress=False)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(img))
    plain = generate(GenerateConfig(prompt=["a photo of dog"], out=str(tmp_path / "t"), n=1, seed=1, steps=3,
                                    model=str(sd1_dir)), progress=False)
    assert not np.array_equal(np.asarray(Image.open(plain[0])), np.asarray(img))


def test_two_embeddings_in_one_prompt_and_clash_refused(sd1_dir, tmp_path):
    a = save_embedding(LearnedEmbedding("<a>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "a.safetensors", "kohya")[0]
    b = save_embedding(LearnedEmbedding("<b>", {"text_encoder": torch.randn(3, 32)}), tmp_path / "b.pt", "a1111")[0]
    paths = generate(GenerateConfig(prompt=["<a> next to <b>"], embedding=[str(a), str(b)], out=str(tmp_path / "r"),
                                    n=1, steps=2, model=str(sd1_dir)), progress=False)
    assert Image.open(paths[0]).text["expanded_prompt"] == "<a> next to <b> <b>_1 <b>_2"
    with pytest.raises(TokenError, match="both define"):
        generate(GenerateConfig(prompt=["<a>"], embedding=[str(a), str(a)], out=str(tmp_path / "x"), n=1, steps=2,
                                model=str(sd1_dir)), progress=False)
    with pytest.raises(TokenError, match=r"with token=\)"):
        generate(GenerateConfig(prompt=["dog"], embedding=[str(a)], token=["dog"], out=str(tmp_path / "x"), n=1,
                                steps=2, model=str(sd1_dir)), progress=False)


def test_an_embedding_whose_token_the_model_has_saved_in_it_is_refused_in_generates_words(sd1_dir):
    """The diffusers script's --save_as_full_pipeline saves the model with its learned token in the tokenizer, and
    its learned_embeds.safetensors beside it: given both, generate said "training it would overwrite the meaning of
    an existing word", of a command that trains nothing."""
    model = fresh_model(sd1_dir)
    model.tokenizer.add_tokens(["<cat-toy>"])
    model.text_encoder.resize_token_embeddings(len(model.tokenizer))
    emb = LearnedEmbedding("<cat-toy>", {"text_encoder": torch.randn(1, model.width)})
    with pytest.raises(TokenError) as caught:
        install_embedding(model, emb)
    said = str(caught.value)
    assert "training" not in said
    assert "the model's tokenizer has '<cat-toy>' already" in said and "--save_as_full_pipeline" in said
    assert "pass another name for the embedding with token=" in said  # (from Python: its keyword)


def test_an_embedding_whose_token_has_spaces_is_refused_naming_the_setting_that_renames_it(sd1_dir, tmp_path,
                                                                                         capsys):
    """The refusal said "pass a different name with --token" from Python too, where the setting is token=."""
    from textinv.cli import main

    emb = LearnedEmbedding("my dog", {"text_encoder": torch.randn(1, 32)})
    with pytest.raises(TokenError, match=r"one non-empty word without spaces, .*\(pass a different name with "
                                         r"token=\)$"):
        install_embedding(fresh_model(sd1_dir), emb)
    path = save_embedding(emb, tmp_path / "e.safetensors", "diffusers")[0]
    with pytest.warns(UserWarning, match="is in no --prompt"):
        assert main(["generate", "--prompt", "a dog", "--embedding", str(path), "--model", str(sd1_dir), "-n", "1",
                     "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert "(pass a different name with --token)" in capsys.readouterr().err


def test_a_multi_vector_token_the_model_has_saved_in_it_draws_with_all_its_vectors_as_in_diffusers(
        sd1_dir, tmp_path, monkeypatch):
    """The diffusers script's --save_as_full_pipeline with --num_vectors 2 saves `<cat-toy>` and `<cat-toy>_1` in
    the model's tokenizer, and diffusers' pipelines turn `<cat-toy>` in a prompt into both: generate drew that
    model's `<cat-toy>` with its first vector alone."""
    import textinv.generate as gen

    pipe = saved_whole(sd1_dir, tmp_path / "whole")
    seen = recorded_arguments(monkeypatch, gen, "render", "prompts", "negative_prompt")
    generate(GenerateConfig(prompt=["a photo of <cat-toy>"], negative_prompt="<cat-toy>", out=str(tmp_path / "out"),
                            n=1, steps=2, model=str(tmp_path / "whole")), progress=False)
    theirs = pipe.maybe_convert_prompt("a photo of <cat-toy>", pipe.tokenizer)
    assert seen == [([theirs], "<cat-toy> <cat-toy>_1")]
    assert theirs == "a photo of <cat-toy> <cat-toy>_1"


def test_trained_file_loads_through_diffusers_own_loader_and_matches_our_generation(sd1_dir, images, tmp_path):
    from textinv.config import TrainConfig
    from textinv.train import train

    result = train(TrainConfig(images=str(images), token="<zq>", init="dog", out=str(tmp_path / "run"), steps=3,
                               batch=2, save_every=0, sample_every=0, vectors=2, lr=0.5), model=fresh_model(sd1_dir),
                   progress=False)
    path = result.files[0]
    pipe = StableDiffusionPipeline.from_pretrained(sd1_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def run(p, prompt):
        return p(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), height=16, width=16,
                 output_type="np").images[0]

    before = run(pipe, "a photo of <zq>")
    pipe.load_textual_inversion(str(path))
    after = run(pipe, "a photo of <zq>")
    assert not np.allclose(before, after), "the learned token did not change diffusers' output"
    ids = pipe.tokenizer.convert_tokens_to_ids(["<zq>", "<zq>_1"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows, result.embedding.vectors["text_encoder"])
    # our own generation with the same file gives the same image diffusers gives
    ours = fresh_model(sd1_dir)
    install_embedding(ours, result.embedding)
    mine = render(ours, [expand_all("a photo of <zq>", [result.embedding])], seeds=[0], steps=3)[0]
    theirs = (after * 255).round().astype("uint8")
    assert np.abs(np.asarray(mine).astype(int) - theirs.astype(int)).max() <= 1


def test_generate_defaults_to_the_models_own_guidance(sd1_dir, tmp_path):
    """A model folder that records its guidance scale (the bundled shapes model: 3) is sampled with it unless
    --guidance says otherwise; the PNG says which was used."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(sd1_dir, folder)
    (folder / "training.json").write_text(json.dumps({"config": {"sample_guidance": 2.0}}))

    def drawn(**flags):
        cfg = GenerateConfig(prompt=["a photo"], out=str(tmp_path / str(len(flags))), n=1, steps=2, model=str(folder),
                             **flags)
        return Image.open(generate(cfg, progress=False)[0]).text["guidance"]

    assert drawn() == "2.0"
    assert drawn(guidance=5.0) == "5.0"


def test_render_defaults_to_the_models_own_guidance(sd1_dir):
    """The library call follows the model too, as the commands above it do: no guidance given is the model's."""
    model = fresh_model(sd1_dir)
    model.guidance = 2.0

    def drawn(**kwargs):
        return np.asarray(render(model, ["a photo"], seeds=[0], steps=2, **kwargs)[0])

    assert np.array_equal(drawn(), drawn(guidance=2.0))
    assert not np.array_equal(drawn(), drawn(guidance=7.5))


def test_negative_prompt_uses_every_vector_of_a_learned_negative_embedding(sd1_dir, tmp_path, monkeypatch):
    """A negative embedding (EasyNegative-style) with 3 vectors: the negative prompt is expanded like the prompt,
    so its 3 vectors all act, and the picture differs from one made with its first vector alone."""
    import textinv.generate as gen

    vectors = torch.randn(3, 32) * 3
    many = save_embedding(LearnedEmbedding("<bad>", {"text_encoder": vectors}), tmp_path / "bad.pt", "a1111")[0]
    one = save_embedding(LearnedEmbedding("<bad>", {"text_encoder": vectors[:1]}), tmp_path / "one.pt", "a1111")[0]
    seen = recorded_arguments(monkeypatch, gen, "render", "negative_prompt")
    pictures = [generate(GenerateConfig(prompt=["a dog"], negative_prompt="<BAD>, blurry", embedding=[str(path)],
                                        out=str(tmp_path / path.stem), n=1, steps=3, model=str(sd1_dir)),
                         progress=False)[0] for path in (many, one)]
    assert seen == [("<bad> <bad>_1 <bad>_2, blurry",), ("<BAD>, blurry",)]  # (case is the tokenizer's business)
    assert not np.array_equal(*(np.asarray(Image.open(p)) for p in pictures))
    assert "Negative prompt: <BAD>, blurry" in Image.open(pictures[0]).text["parameters"]
    assert "CFG scale: 7.5" in Image.open(pictures[0]).text["parameters"]  # A1111's own label


def test_generate_hands_a_given_model_back_as_it_was(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    size = len(model.tokenizer)
    emb = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "q.pt", "a1111")[0]
    for run in ("a", "b"):  # the second call would find <q> already in the vocabulary
        generate(GenerateConfig(prompt=["<q>"], embedding=[str(emb)], out=str(tmp_path / run), n=1, steps=2,
                                model=str(sd1_dir)), model=model, progress=False)
        assert len(model.tokenizer) == size


def test_generate_settings_refused_before_loading(tmp_path):

    (tmp_path / "file.png").write_bytes(b"x")
    for settings, message in (({"seed": 2**64}, "seed= must be -1 .* or between"), ({"seed": -2}, "seed= must be"),
                              ({"seed": 2**64 - 1, "n": 2}, "seed= must be"),
                              ({"out": str(tmp_path / "file.png")}, "is a file"),
                              ({"precision": "int8"}, "precision='int8' is not one of: auto, fp32")):
        with pytest.raises(ConfigError, match=message):
            generate(GenerateConfig(prompt=["a dog"], model=str(tmp_path / "no-model"), **settings), progress=False)


def test_seed_minus_one_draws_a_seed_that_is_recorded(sd1_dir, tmp_path):
    from PIL import Image

    config = GenerateConfig(prompt=["a dog"], seed=-1, n=2, steps=1, out=str(tmp_path / "r"), model=str(sd1_dir))
    paths = generate(config, progress=False)
    seed = int(Image.open(paths[0]).text["seed"])  # drawn once, A1111's -1
    assert 0 <= seed < 2**32
    assert [p.name for p in paths] == [f"000-a-dog-s{seed}.png", f"000-a-dog-s{seed + 1}.png"]
    assert Image.open(paths[1]).text["seed"] == str(seed + 1)  # so the picture can be made again


def test_a_prompt_longer_than_the_text_encoder_reads_is_encoded_in_chunks_as_the_web_ui_does(sd1_dir, tmp_path):
    from textinv.emphasis import token_chunks
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    install_embedding(model, LearnedEmbedding("<q>", {"text_encoder": torch.randn(8, 32)}))
    long = "a photo of <q> " + "dog " * 66  # 3 + 8 vectors + 66 = 77 tokens once <q> is expanded: two chunks
    expanded = expand_all(long, [LearnedEmbedding("<q>", {"text_encoder": torch.zeros(8, 32)})])
    assert len(token_chunks(model.tokenizer, expanded)) == 2
    assert len(token_chunks(model.tokenizer, "a photo of <q> " + "dog " * 64)) == 1
    hidden = encode_prompts(model, [expanded + "cat", expanded + "house", ""], chunks=3)[0]
    assert hidden.shape == (3, 3 * 77, 32)
    assert not torch.equal(hidden[0], hidden[1])  # the words past the 75th are read, not cut
    assert torch.equal(hidden[0, :77], hidden[1, :77])  # ... in the second chunk only
    empty = encode_prompts(model, [""])[0][0]
    assert all(torch.equal(hidden[2, k * 77:(k + 1) * 77], empty) for k in range(3))  # padded with empty chunks
    paths = generate(GenerateConfig(prompt=[long], embedding=[str(save_embedding(
        LearnedEmbedding("<q>", {"text_encoder": torch.randn(8, 32)}), tmp_path / "q.pt", "a1111")[0])],
        out=str(tmp_path / "r"), n=1, steps=1, negative_prompt="blurry", model=str(sd1_dir)), progress=False)
    assert len(paths) == 1


def test_long_prompts_are_cut_into_chunks_at_commas_breaks_and_around_learned_tokens(sd1_dir):
    from textinv.emphasis import CHUNK, token_chunks

    model = fresh_model(sd1_dir)
    tok = model.tokenizer
    one = tok("dog", add_special_tokens=False).input_ids[0]
    comma = tok(",", add_special_tokens=False).input_ids[0]

    def words(chunk):  # a chunk's tokens between start and end
        ids = chunk[0]
        return ids[1:ids.index(tok.eos_token_id)]

    chunks = token_chunks(tok, "dog " * 70 + ", " + "dog " * 10)  # 81 tokens; the comma is 11 from the end
    assert [len(words(c)) for c in chunks] == [71, 10] and words(chunks[0])[-1] == comma
    assert all(len(c[0]) == len(c[1]) == CHUNK + 2 for c in chunks)
    chunks = token_chunks(tok, "dog " * 40 + ", " + "dog " * 40)  # the comma is 35 back: too far, cut at 75
    assert [len(words(c)) for c in chunks] == [75, 6]
    assert [len(words(c)) for c in token_chunks(tok, "dog dog BREAK dog")] == [2, 1]
    assert [c[1][1:3] for c in token_chunks(tok, "(dog:1.5) BREAK [dog]")] == [[1.5, 1.0], [round(1 / 1.1, 5), 1.0]]
    assert [len(words(c)) for c in token_chunks(tok, "dog " * 54 + ", " + "dog " * 21)] == [75, 1]  # 21 back: cut
    assert [len(words(c)) for c in token_chunks(tok, "dog " * 55 + ", " + "dog " * 20)] == [56, 20]  # 20: moved on
    chunks = token_chunks(tok, "dog " * 60 + ", " + "dog " * 14 + ", dog")  # the 76th token, a comma, moves on
    assert [len(words(c)) for c in chunks] == [75, 2] and words(chunks[1])[0] == comma
    install_embedding(model, LearnedEmbedding("<q>", {"text_encoder": torch.randn(4, 32)}))
    install_embedding(model, LearnedEmbedding("<r>", {"text_encoder": torch.randn(4, 32)}))
    q, r = expand_prompt("<q>", "<q>", 4), expand_prompt("<r>", "<r>", 4)
    chunks = token_chunks(model.tokenizer, "dog " * 73 + q)  # the token's 4 vectors do not fit: all go on
    assert [len(words(c)) for c in chunks] == [73, 4] and one not in words(chunks[1])
    # two learned tokens side by side are two units, not one of 8; and a late comma still cuts first
    assert [len(words(c)) for c in token_chunks(model.tokenizer, "dog " * 70 + f"{q} {r}")] == [74, 4]
    assert [len(words(c)) for c in token_chunks(model.tokenizer, "dog " * 60 + ", " + "dog " * 14 + q)] == [61, 18]


def test_generate_takes_a_replacement_vae(sd1_dir, tmp_path):
    from textinv.tiny import _tiny_vae

    torch.manual_seed(5)
    _tiny_vae().save_pretrained(tmp_path / "vae")
    pictures = [np.asarray(Image.open(generate(GenerateConfig(prompt=["a dog"], out=str(tmp_path / name), n=1,
                                                              steps=2, model=str(sd1_dir), **extra),
                                               progress=False)[0]))
                for name, extra in (("own", {}), ("other", {"vae": str(tmp_path / "vae")}))]
    assert not np.array_equal(*pictures)  # the same latents, decoded by another VAE


def test_a_second_run_into_the_same_folder_keeps_the_first_runs_pictures(sd1_dir, tmp_path):
    """The names say prompt and seed, not the embedding, steps or guidance: comparing two embeddings with the same
    prompt into the default --out overwrote the first run's pictures in silence. A later run gets one suffix."""
    def run(steps, n=2):
        return generate(GenerateConfig(prompt=["a dog"], out=str(tmp_path / "r"), n=n, steps=steps,
                                       model=str(sd1_dir)), progress=False)

    first = run(2)
    before = [p.read_bytes() for p in first]
    second, third = run(3), run(2, n=3)
    assert [p.name for p in second] == ["000-a-dog-s0-2.png", "000-a-dog-s1-2.png"]
    assert [p.name for p in third] == ["000-a-dog-s0-3.png", "000-a-dog-s1-3.png", "000-a-dog-s2-3.png"]
    assert [p.read_bytes() for p in first] == before
    assert Image.open(second[0]).text["steps"] == "3"


def test_file_names_keep_the_words_of_non_ascii_prompts(sd1_dir, tmp_path):
    paths = generate(GenerateConfig(prompt=["un chien à Zürich", "一只猫"], out=str(tmp_path / "ü r"), n=1,
                                    steps=1, model=str(sd1_dir)), progress=False)
    assert [p.name for p in paths] == ["000-un-chien-à-Zürich-s0.png", "001-一只猫-s0.png"]
    assert Image.open(paths[1]).text["prompt"] == "一只猫"
    # combining marks belong to their word: Devanagari's vowel signs, an accent typed decomposed (macOS)
    import unicodedata

    from textinv.generate import _slug

    assert _slug("नमस्ते दुनिया") == "नमस्ते-दुनिया"
    assert _slug(unicodedata.normalize("NFD", "café crème")) == unicodedata.normalize("NFD", "café-crème")


def test_steps_beyond_the_schedule_and_infinite_guidance_are_refused_before_drawing(sd1_dir, tmp_path):

    for settings, message in (({"steps": 1001}, r"steps=1001 is more than the 1000 noise levels"),
                              ({"guidance": float("inf")}, r"guidance= must be a finite number")):
        with pytest.raises(ConfigError, match=message):  # (DDIM raised a ValueError mid-call; inf drew NaN)
            generate(GenerateConfig(prompt=["a dog"], out=str(tmp_path / "r"), n=1, model=str(sd1_dir), **settings),
                     progress=False)
    assert not (tmp_path / "r").exists()  # (nothing drawn: the folder made for the run is gone again)


def test_an_out_that_cannot_be_a_folder_is_refused_before_the_model_loads(tmp_path):

    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"--out .*file.png/renders: cannot create the folder"):
        generate(GenerateConfig(prompt=["a dog"], out=str(tmp_path / "file.png" / "renders"),
                                model=str(tmp_path / "no-model")), progress=False)


def test_an_out_folder_without_write_permission_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """A folder that is there but not writable (another user's, chmod 555) was found out only when the first
    picture was written, after the model had loaded and drawn it. (The tests may run as root, who may write
    anywhere: the permission is faked.)"""
    import os

    import textinv.generate as generate_module

    folder = tmp_path / "theirs"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and access(path, mode, **kw))
    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"--out .*theirs: cannot write into the folder \(no permission\); make it "
                                          r"writable, or choose another --out"):
        generate(GenerateConfig(prompt=["a dog"], out=str(folder)), progress=False)


def test_a_size_far_above_the_models_is_warned_about_by_its_area(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    native = model.resolution

    def draw(out, **size):
        return generate(GenerateConfig(prompt=["a dog"], n=1, steps=1, out=str(tmp_path / out), model=str(sd1_dir),
                                       **size), model=model, progress=False)

    with pytest.warns(UserWarning, match=r"64x64 is 16x the pixels of the 16x16 .* about 16x as long"):
        draw("a", resolution=4 * native)
    with pytest.warns(UserWarning, match=r"48x32 is 6x the pixels .* about 6x as long"):
        draw("b", width=3 * native, height=2 * native)
    with warnings.catch_warnings():  # a long side 3x the model's, but 3x its pixels: as slow as a square 1.7x
        warnings.simplefilter("error")
        draw("c", width=3 * native)


def test_a_size_far_below_the_models_is_warned_about_once_a_run(sd1_dir, tmp_path):
    """`--width 8 --height 8` on the bundled 64x64 model (or 1008x8 on SD's 512) drew noise silently: a first pass
    with a side under a quarter of the model's own is warned of, once for its size in a run, naming both sizes."""
    model = fresh_model(sd1_dir)
    model.unet.register_to_config(sample_size=32)  # (the tiny UNet told it was made for 64x64, as the shapes model)
    assert model.resolution == 64

    def said(out, **settings):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(GenerateConfig(prompt=["a dog", "a cat"], n=2, steps=1, out=str(tmp_path / out),
                                    model=str(sd1_dir), **settings), model=model, progress=False)
        return [str(w.message) for w in caught if "far below" in str(w.message)]

    assert said("a", width=8, height=8) == [f"8x8 is far below the 64x64 {model.source} was trained at, a side under "
                                            f"a quarter of its own: models draw noise or mush there; draw at 64x64 "
                                            f"or near it"]
    assert len(said("b", width=64, height=8)) == 1  # (one side is enough)
    assert said("c", width=16, height=16) == said("d") == []  # (a quarter itself, and the model's own size)


def test_a_non_square_picture_has_the_asked_size_and_says_it_as_the_web_ui_does(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)

    def draw(out, **size):
        path = generate(GenerateConfig(prompt=["a dog"], n=1, seed=3, steps=2, out=str(tmp_path / out),
                                       model=str(sd1_dir), **size), model=model, progress=False)[0]
        return Image.open(path)

    wide = draw("a", width=24)  # the height stays the model's own 16
    assert wide.size == (24, 16) and wide.text["size"] == "24x16" and "Size: 24x16" in wide.text["parameters"]
    tall = draw("b", resolution=24, height=40)
    assert tall.size == (24, 40) and "Size: 24x40" in tall.text["parameters"]  # width first, as A1111 writes it
    # a square asked either way is the square --resolution always drew (its seed's noise is unchanged)
    square = np.asarray(draw("c", resolution=24))
    assert np.array_equal(np.asarray(draw("d", width=24, height=24)), square)
    assert np.array_equal(np.asarray(render(model, ["a dog"], [3], steps=2, resolution=24)[0]), square)


@pytest.mark.parametrize("settings, message", [
    ({"width": 500}, r"width= must be a multiple of 8 pixels, got 500; the nearest: 496 or 504"),
    ({"height": 4}, r"height= must be a multiple of 8 pixels, got 4; the nearest: 8$"),
    ({"resolution": 0}, r"resolution= must be a multiple of 8 pixels, got 0; the nearest: 8$"),
    ({"batch_size": 0}, r"batch_size= must be >= 1, got 0"),
])
def test_a_bad_size_is_refused_before_loading_naming_the_flag_and_the_nearest_valid_sizes(tmp_path, settings,
                                                                                          message):
    with pytest.raises(ConfigError, match=message):
        generate(GenerateConfig(prompt=["a dog"], model=str(tmp_path / "no-model"), **settings), progress=False)


def test_a_size_the_models_vae_cannot_draw_is_refused_with_the_nearest_it_can(sd1_dir):
    model = fresh_model(sd1_dir)
    model.pipeline.vae_scale_factor = 16  # (as a VAE that downscales 16x would be)
    with pytest.raises(ConfigError, match=r"width= must be a multiple of 16 pixels, got 24; the nearest: 16 or 32"):
        render(model, ["a dog"], [0], steps=1, width=24, height=32)


@pytest.mark.parametrize("sampler", ["default", "euler_a", "lcm", "tcd"])
def test_a_seed_draws_the_same_picture_at_any_batch_size(sd1_dir, tmp_path, sampler):
    model = fresh_model(sd1_dir)
    calls = []
    model.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))

    def draw(out, batch_size):
        calls.clear()
        paths = generate(GenerateConfig(prompt=["a dog"], n=3, seed=5, steps=2, sampler=sampler, width=24,
                                        batch_size=batch_size, out=str(tmp_path / out), model=str(sd1_dir)),
                         model=model, progress=False)
        return [np.asarray(Image.open(p)) for p in paths], set(calls)

    alone, sizes = draw("a", 1)
    assert sizes == {2}  # one picture a call (with its negative, for guidance)
    together, sizes = draw("b", 3)
    assert sizes == {6}
    # the same pictures, up to rounding: the CPU's kernels sum a batch of 6 in another order than one of 2 (1e-6
    # apart), which can tip a pixel's colour by a level; another seed's picture is far off
    for a, b in zip(alone, together):
        assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(alone[0].astype(int) - together[1]).max() > 10


@pytest.mark.parametrize("masked", [False, True])
def test_an_init_image_folders_pictures_of_one_size_share_calls_wherever_they_lie(sd1_dir, tmp_path, monkeypatch,
                                                                                masked):
    """A folder whose pictures alternate between two drawn sizes (wide, tall, wide, tall) draws in two pipeline
    calls, one a size, not one each time the size changes: the files are written in the order and with the names
    they had, each picture the one a folder holding it alone draws (under one --mask too)."""
    from textinv import generate as generating

    photos = tmp_path / "photos"
    photos.mkdir()
    for place, (name, size) in enumerate((("a", (40, 20)), ("b", (20, 40)), ("c", (40, 20)), ("d", (20, 40)))):
        Image.fromarray(np.random.default_rng(place).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                        ).save(photos / f"{name}.png")
    mask = tmp_path / "mask.png"
    square = Image.new("L", (32, 32), 0)
    square.paste(255, (8, 8, 24, 24))
    square.save(mask)
    model = fresh_model(sd1_dir)
    settings = dict(prompt=["a dog"], n=2, seed=2, steps=2, width=16, denoise=0.5, model=str(sd1_dir),
                    metadata="none", **({"mask": str(mask), "mask_blur": 0} if masked else {}))
    calls = recorded_arguments(monkeypatch, generating, "render", "seeds", "width", "height")
    written = recorded_arguments(monkeypatch, generating, "_save_new", "name")
    paths = generate(GenerateConfig(**settings, init_image=str(photos), batch_size=8, out=str(tmp_path / "all")),
                     model=model, progress=False)
    assert calls == [([2, 3, 2, 3], 16, 8), ([2, 3, 2, 3], 16, 32)]
    names = [f"000-a-dog-{name}-s{seed}" for name in "abcd" for seed in (2, 3)]
    assert [p.name for p in paths] == [f"{name}.png" for name in names] and written == [(n,) for n in names]
    for name in "abcd":
        alone = generate(GenerateConfig(**settings, init_image=str(photos / f"{name}.png"), batch_size=8,
                                        out=str(tmp_path / name)), model=model, progress=False)
        for one in alone:  # (named without the folder's part: 000-a-dog-s2.png)
            mine = tmp_path / "all" / one.name.replace("-dog-", f"-dog-{name}-")
            # (up to a batch's rounding, as at any --batch-size: the same bits here, but a call of 4 rows and one of
            # 2 may sum in other orders on other kernels)
            assert np.abs(np.asarray(Image.open(mine)).astype(int) - np.asarray(Image.open(one))).max() <= 1


def _wide_tall_wide(folder: Path) -> Path:
    """A folder of pictures drawn at two sizes, a and c wide, b tall: a and c share the first call, and c is held
    until b, drawn in the second, is written."""
    folder.mkdir()
    for name, size in (("a", (40, 20)), ("b", (20, 40)), ("c", (40, 20))):
        Image.new("RGB", size, "red").save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("stop, raised, message", [
    (KeyboardInterrupt(), GenerationInterrupted, "^2 of 3 pictures had been written to .*, each whole$"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), RuntimeError, "^mat1 and mat2"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), DeviceMemoryError, "Pictures written before it: 2, in "),
])
def test_a_folder_run_stopped_between_its_sizes_calls_writes_the_pictures_it_held(sd1_dir, tmp_path, monkeypatch,
                                                                                    stop, raised, message):
    """Ctrl-C, or a failed (out of memory) call, after the wide pictures' call of a wide, tall, wide folder: the
    first picture is written, and the third, drawn in that call and held for the second, is written too, with its
    name, text and pixels as a run that is not stopped writes it, and counted in what is said (it was dropped,
    finished)."""
    from conftest import interrupted_at
    from textinv import generate as generating

    photos = _wide_tall_wide(tmp_path / "photos")
    settings = dict(prompt=["a dog"], n=1, seed=2, steps=1, width=16, model=str(sd1_dir), init_image=str(photos),
                    batch_size=8)
    model = fresh_model(sd1_dir)
    whole = {p.name: Image.open(p) for p in generate(GenerateConfig(**settings, out=str(tmp_path / "whole")),
                                                      model=model, progress=False)}
    interrupted_at(monkeypatch, generating, "render", 2, stop)
    with pytest.raises(raised, match=message):
        generate(GenerateConfig(**settings, out=str(tmp_path / "r")), model=model, progress=False)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["000-a-dog-a-s2.png", "000-a-dog-c-s2.png"]
    held = Image.open(tmp_path / "r" / "000-a-dog-c-s2.png")
    assert held.text == whole["000-a-dog-c-s2.png"].text and "Seed: 2," in held.text["parameters"]
    assert np.array_equal(np.asarray(held), np.asarray(whole["000-a-dog-c-s2.png"]))


def test_a_stopped_again_run_writes_the_kept_seeds_held_pictures_alone_and_counts_them(sd1_dir, tmp_path,
                                                                                        monkeypatch):
    """With `keep_seeds` (--again), Ctrl-C after the wide call writes the kept seed's held picture, not its
    batch's others, and counts the pictures the run writes (one a picture), not every one it draws."""
    from conftest import interrupted_at
    from textinv import generate as generating

    photos = _wide_tall_wide(tmp_path / "photos")
    interrupted_at(monkeypatch, generating, "_draw_batch", 2)
    with pytest.raises(GenerationInterrupted, match="^2 of 3 pictures had been written"):
        generate(GenerateConfig(prompt=["a dog"], n=2, seed=2, steps=1, width=16, model=str(sd1_dir),
                                init_image=str(photos), batch_size=8, out=str(tmp_path / "r")),
                 progress=False, keep_seeds={3})
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["000-a-dog-a-s3.png", "000-a-dog-c-s3.png"]


@pytest.mark.parametrize("failing", ["a", "every"])
def test_a_picture_that_cannot_be_written_still_lets_the_held_ones_be_written(sd1_dir, tmp_path, monkeypatch,
                                                                              failing):
    """A full disk as the first picture is written (the wide call's a, with c held behind b): c is written still
    where it can be, and the error said is the first picture's, whether or not c could be written."""
    from textinv import generate as generating

    photos = _wide_tall_wide(tmp_path / "photos")
    real = generating._save_new

    def full(img, out, name, *args, **kwargs):
        if failing == "every" or name == "000-a-dog-a-s2":
            raise OSError(errno.ENOSPC, "No space left on device", str(out / f"{name}.png"))
        return real(img, out, name, *args, **kwargs)

    monkeypatch.setattr(generating, "_save_new", full)
    with pytest.raises(ConfigError, match=r"cannot write 000-a-dog-a-s2\.png \(No space left on device\); no "
                                          r"picture was written: make room"):
        generate(GenerateConfig(prompt=["a dog"], n=1, seed=2, steps=1, width=16, model=str(sd1_dir),
                                init_image=str(photos), batch_size=8, out=str(tmp_path / "r")), progress=False)
    # (a folder made for the run is removed again where nothing was written into it)
    assert sorted(p.name for p in (tmp_path / "r").glob("*")) == (["000-a-dog-c-s2.png"] if failing == "a" else [])


def test_emphasis_is_read_as_the_a1111_web_ui_reads_it():
    from textinv.emphasis import parse, plain_text

    assert parse("a photo of a dog") == [("a photo of a dog", 1.0)]
    assert parse("a (red:1.5) car") == [("a ", 1.0), ("red", 1.5), (" car", 1.0)]
    assert parse("((shiny)) [[dull]]") == [("shiny", 1.21), (" ", 1.0), ("dull", round(1 / 1.21, 5))]
    assert parse("((a) b:2)") == [("a", 2.2), (" b", 2.0)]  # nested weights multiply
    assert parse(r"\(not weighted\) \[nor this\]") == [("(not weighted) [nor this]", 1.0)]
    assert parse("open (rest") == [("open ", 1.0), ("rest", 1.1)]  # a bracket left open weighs the rest
    assert parse("a smile :) 12:30") == [("a smile :) 12:30", 1.0)]  # what closes nothing is text
    assert plain_text("a (<q> <q>_1:1.2) on [grass]") == "a <q> <q>_1 on grass"


def test_emphasis_scales_its_tokens_and_plain_prompts_encode_as_in_training(sd1_dir):
    from textinv.conditioning import encode_prompts
    from textinv.models import encode_text

    model = fresh_model(sd1_dir)
    tok = model.tokenizer
    prompts = ["a photo of a dog", "dog " * 75]  # 75 words: one chunk, no padding
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    assert torch.equal(encode_prompts(model, prompts)[0], encode_text(model, [ids])[0])
    plain = encode_prompts(model, ["a photo of a dog"])[0][0]
    assert torch.equal(encode_prompts(model, ["a photo of a (dog:1)"])[0][0], plain)
    literal = tok(["a photo of a (dog)"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(encode_prompts(model, [r"a photo of a \(dog\)"])[0], encode_text(model, [literal])[0])
    weighted = encode_prompts(model, ["a photo of a (dog:1.5)"])[0][0]
    # positions: start, a, photo, of, a, dog; every hidden state is scaled by one factor that keeps the mean, and
    # the weighted token's by 1.5 more
    factor = plain.mean() / (plain * torch.tensor([1.5 if i == 5 else 1.0 for i in range(77)])[:, None]).mean()
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    assert torch.allclose(weighted[2], plain[2] * factor, atol=1e-5)
    assert torch.allclose(weighted[5], plain[5] * 1.5 * factor, atol=1e-5)


def test_a_prompt_without_emphasis_encodes_as_alone_beside_one_with_it(sd1_dir):
    """A batch with emphasis scales back only its weighted prompts' chunks: a plain one is what it is alone (the tiny
    model's 'a blue cat' averages exactly 0, which 0 / 0 made NaN)."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    alone = encode_prompts(model, ["a blue cat"])[0][0]
    weighted, plain = encode_prompts(model, ["(sun:1.2)", "a blue cat"])[0]
    assert torch.equal(plain, alone)
    assert torch.equal(weighted, encode_prompts(model, ["(sun:1.2)"])[0][0])

def test_emphasis_is_scaled_back_to_the_mean_of_all_a_prompts_scheduled_texts_as_the_web_ui_does(sd1_dir):
    """The web UI encodes a prompt's prompt-editing and alternation texts as one batch and scales each chunk back
    to the whole batch's mean (sd_hijack_clip's forward, sd_emphasis.EmphasisOriginal), so `[(red:1.5)|blue] car`'s
    "blue car" is scaled by the factor "(red:1.5) car" needs. Each text was scaled to its own mean: "blue car" was
    left as it is."""
    from textinv.emphasis import token_chunks
    from textinv.conditioning import _prompted
    from textinv.models import encode_text

    model = fresh_model(sd1_dir)
    # (the tiny encoder's final layer norm leaves every token's mean at 0, and a mean of 0 cannot be scaled back to)
    torch.nn.init.constant_(model.text_encoder.final_layer_norm.bias, 0.5)
    chunks = [token_chunks(model.tokenizer, text)[0] for text in ("(red:1.5) car", "blue car")]
    states = encode_text(model, [torch.tensor([ids for ids, _ in chunks])])[0]
    weights = torch.tensor([w for _, w in chunks])[..., None]
    expected = states * weights * (states.mean() / (states * weights).mean())
    pipe = model.pipeline
    ends, given, _ = _prompted(model, pipe, pipe.unet, ["[(red:1.5)|blue] car"], "", 2, 1, (64, 64), "original", [0])
    assert ends == [1, 2]
    assert torch.allclose(given[0]["prompt_embeds"][0], expected[0], atol=1e-5)
    assert torch.allclose(given[1]["prompt_embeds"][0], expected[1], atol=1e-5)


def test_generate_draws_emphasis_and_names_files_by_the_words(sd1_dir, tmp_path):
    def draw(prompt, out):
        path = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=2, model=str(sd1_dir)),
                        progress=False)[0]
        return path, np.asarray(Image.open(path))

    path, weighted = draw("a photo of a (dog:1.8)", "w")
    assert path.name == "000-a-photo-of-a-dog-s0.png" and Image.open(path).text["prompt"] == "a photo of a (dog:1.8)"
    assert not np.array_equal(weighted, draw("a photo of a dog", "p")[1])
    # prompt editing: named by what the picture ends as ("cat-dog-0-5-BREAK" once)
    path, _ = draw("a [cat:dog:0.5] BREAK on grass", "e")
    assert path.name == "000-a-dog-on-grass-s0.png"


def test_a_composable_prompts_weights_are_not_among_the_words_it_is_named_by():
    """A sub-prompt's weight (`a castle AND a dragon:0.8`) is syntax, as `(red:1.5)`'s is: the file was named
    000-a-castle-AND-a-dragon-0-8-s0.png."""
    from textinv.emphasis import words_drawn
    from textinv.generate import _slug

    assert _slug(words_drawn("a castle:1.5 AND a (dragon:1.2) : 0.8 AND 16:9 frame")) == \
        "a-castle-AND-a-dragon-AND-16-9-frame"


NEW_SAMPLERS = ["heun", "dpm2", "dpm2_a", "dpm2_karras", "dpm2_a_karras", "plms", "dpm++2s", "dpm++2s_a",
                "dpm++2s_a_karras", "restart", "lcm", "lcm_karras", "tcd"]
# the web UI's SDE samplers, DDPM and LMS, and sigma schedules beside Karras
SDE_SAMPLERS = ["dpm++2m_sde", "dpm++2m_sde_heun", "dpm++3m_sde", "dpm++sde", "ddpm", "lms", "dpm++2m_sde_karras",
                "dpm++2m_exponential", "euler_beta", "dpm++sde_karras"]


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "dpm++2m", "dpm++2m_karras", "ddim", "unipc", "unipc_bh2",
                                     "dpm++3m_sde_comfy_exponential", *NEW_SAMPLERS, *SDE_SAMPLERS])
def test_every_sampler_draws_on_the_models_schedule_and_is_recorded(sd1_dir, tmp_path, sampler):
    from textinv.samplers import webui_names

    model = fresh_model(sd1_dir)
    own = model.pipeline.scheduler
    config = GenerateConfig(prompt=["a photo of a dog"], out=str(tmp_path / "r"), n=1, steps=4, sampler=sampler,
                            model=str(sd1_dir))
    path = generate(config, model=model, progress=False)[0]
    assert model.pipeline.scheduler is own  # the model's own scheduler is put back
    img = Image.open(path)
    assert img.text["sampler"] == sampler
    if webui_names(sampler) is None:  # the web UI has no such sampler (its "DPM++ 2S a" is ancestral, its UniPC bh1,
        assert "Sampler" not in img.text["parameters"]  # its DPM++ 3M SDE discards a sigma; no TCD): none is written
    else:
        assert f"Sampler: {webui_names(sampler)[0]}, " in img.text["parameters"]
    pixels = np.asarray(img)
    assert pixels.std() > 0  # a picture, not a blank from a sampler that failed on the schedule
    default = generate(GenerateConfig(prompt=["a photo of a dog"], out=str(tmp_path / "d"), n=1, steps=4,
                                      model=str(sd1_dir)), model=model, progress=False)[0]
    assert type(own).__name__ == "DDIMScheduler"  # the tiny model's own: "ddim" draws as the default, the rest not
    assert np.array_equal(np.asarray(Image.open(default)), pixels) == (sampler == "ddim")
    assert "Sampler" not in Image.open(default).text["parameters"]


@pytest.mark.parametrize("sampler", NEW_SAMPLERS + SDE_SAMPLERS)
def test_each_new_sampler_draws_a_seed_the_same_twice_and_again_bit_for_bit(sd1_dir, tmp_path, sampler):
    """heun, dpm2, dpm2_a, their Karras versions, plms and dpm++2s (the web UI's and kohya's samplers that diffusers
    has) were refused, and so were the web UI's DPM++ 2S a and Restart (textinv's own schedulers). Each draws a seed's
    picture the same every time, the ancestral ones too (their noise at each step comes from the picture's seed),
    and `--again` draws it again from its record, bit for bit."""
    import json

    from textinv.cli import main

    def draw(out):
        assert main(["generate", "--model", str(sd1_dir), "--prompt", "a photo of a dog", "-n", "1", "--seed", "3",
                     "--steps", "3", "--width", "24", "--height", "16", "--sampler", sampler, "--metadata", "full",
                     "--out", str(tmp_path / out)]) == 0
        (path,) = (tmp_path / out).glob("*.png")
        return path

    first = draw("a")
    assert json.loads(Image.open(first).text["textinv_settings"])["settings"]["sampler"] == sampler
    assert np.array_equal(_pixels(draw("b")), _pixels(first))
    assert main(["generate", "--again", str(first), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(_pixels(tmp_path / "again" / first.name), _pixels(first))


def test_a_sampler_named_as_the_web_ui_or_kohya_name_it_draws_as_textinvs_and_is_recorded_so(sd1_dir, tmp_path):
    """'Euler a' (the web UI) and k_euler_a (kohya) are textinv's euler_a: the same picture, recorded as textinv
    names it (and as the web UI writes it in `parameters`), so --again and config.yaml read it back."""
    model = fresh_model(sd1_dir)

    def draw(out, sampler):
        path = generate(GenerateConfig(prompt=["a dog"], out=str(tmp_path / out), n=1, steps=2, sampler=sampler,
                                       model=str(sd1_dir)), model=model, progress=False)[0]
        return Image.open(path)

    ours, web_ui, kohya = draw("a", "euler_a"), draw("b", "Euler a"), draw("c", "k_euler_a")
    assert np.array_equal(np.asarray(ours), np.asarray(web_ui)) and np.array_equal(np.asarray(ours), np.asarray(kohya))
    assert web_ui.text["sampler"] == kohya.text["sampler"] == "euler_a"
    assert "Sampler: Euler a, " in kohya.text["parameters"]


def test_an_unknown_sampler_is_refused_with_the_list():

    with pytest.raises(ConfigError, match=r"sampler='pndm' is not one of the [0-9]* samplers \(default, euler, "):
        GenerateConfig(prompt=["a dog"], sampler="pndm").validate()


def test_a_samplers_sigma_spacing_is_its_own_not_the_models_scheduler_configs(sd1_dir):
    """A model whose scheduler config ships Karras spacing (some fine-tunes' DPM-Solver configs do) drew "euler" and
    "dpm++2m" with it, recorded as plain Euler and DPM++ 2M: the web UI redraws them otherwise."""
    import diffusers

    from textinv.samplers import scheduler_for

    model = fresh_model(sd1_dir)
    shipped = diffusers.DPMSolverMultistepScheduler.from_config(model.pipeline.scheduler.config,
                                                                use_karras_sigmas=True, use_exponential_sigmas=False)
    for sampler in ("euler", "dpm++2m", "heun", "dpm2", "unipc", "dpm++2s"):
        assert not scheduler_for(shipped, sampler).config.use_karras_sigmas, sampler
    for sampler in ("dpm++2m_karras", "dpm2_karras", "dpm2_a_karras"):
        assert scheduler_for(shipped, sampler).config.use_karras_sigmas, sampler
    # each schedule gives its own spacing and no other
    for sampler, flag in [("dpm++2m_sde_exponential", "use_exponential_sigmas"), ("euler_beta", "use_beta_sigmas"),
                          ("lms_karras", "use_karras_sigmas"), ("dpm++2m_sde", None)]:
        made = scheduler_for(shipped, sampler).config
        assert [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if made[k]] == \
            ([flag] if flag else []), sampler
    assert scheduler_for(shipped, "default") is shipped  # (the model's own, as it is)


def test_unipc_is_the_web_uis_and_comfyuis_bh1_at_order_3_and_comfyuis_bh2_is_its_own(sd1_dir):
    """The web UI's UniPC runs variant bh1 at order 3, lowering the order at the end (its uni_pc_variant, uni_pc_order
    and uni_pc_lower_order_final defaults), as ComfyUI's uni_pc does; ComfyUI's uni_pc_bh2 is bh2 at order 3. Both
    were diffusers' default, bh2 at order 2, and took a last step to sigma 0, which bh1 cannot take."""
    from textinv.samplers import from_comfy, from_webui, scheduler_for, webui_names

    own = fresh_model(sd1_dir).pipeline.scheduler
    for name, variant in [("unipc", "bh1"), ("unipc_bh2", "bh2")]:
        made = scheduler_for(own, name)
        assert (made.config.solver_type, made.config.solver_order, made.config.lower_order_final) == (variant, 3, True)
        # both stop at the model's smallest noise level, as the web UI's and ComfyUI's (their t = 1/N)
        made.set_timesteps(4)
        assert made.sigmas[-1].item() == pytest.approx(((1 - own.alphas_cumprod[0]) / own.alphas_cumprod[0]) ** 0.5)
    # (ComfyUI's uni_pc and uni_pc_bh2 step to sigma 0.001 at the last: not these, `COMFY_UNLIKE`)
    assert from_webui("UniPC", None) == "unipc" and from_comfy("uni_pc", "normal") is None
    assert from_comfy("uni_pc_bh2", "karras") is None and from_comfy("uni_pc_bh2", "normal") is None
    assert webui_names("unipc") == ("UniPC", None) and webui_names("unipc_bh2") is None  # (the web UI's is bh1)


def _schedule(scheduler, steps: int) -> list[float]:
    """The sigmas a scheduler steps through for `steps` steps, ending at 0 (DPM2's tables hold each one twice)."""
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas
    if hasattr(scheduler, "sigmas_interpol"):
        sigmas = torch.cat([sigmas[:1], sigmas[1::2][:-1]])
    return [round(s, 4) for s in sigmas.tolist()]


@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_dpm2_dpm2_a_and_dpm3m_sde_discard_the_next_to_last_sigma_as_the_web_ui_does(sd1_dir, spacing):
    """The web UI's DPM2, DPM2 a and DPM++ 3M SDE (discard_next_to_last_sigma in its sampler table) draw n steps on the
    n + 1 step schedule less its smallest non-zero sigma, on every schedule type; its other samplers do not."""
    import diffusers

    from textinv.samplers import BASES, COMFY_RULES, SCHEDULES, _comfy_spaced, scheduler_for

    own = fresh_model(sd1_dir).pipeline.scheduler
    # (the model's own, a name without schedule's), over 100 training timesteps, not 1,000: DPM2's and DPM2 a's
    # schedulers work out a timestep for each of their 2N - 1 sigmas as they are made (the table for every training
    # timestep), 65 of them here, which was most of this test's time; what is discarded is the same at any N
    own = type(own).from_config(own.config, timestep_spacing=spacing, num_train_timesteps=100)
    discarding = {"dpm2", "dpm2_a", "dpm++3m_sde"}
    for base in ["dpm2", "dpm2_a", "dpm++3m_sde", "dpm++2m_sde", "euler"]:
        for schedule in ("", *(s for s in SCHEDULES if s != "ddim_uniform")):  # (a spacing: test_schedulers')
            name = f"{base}_{schedule}" if schedule else base
            made = scheduler_for(own, name)
            # the same scheduler without the discard (diffusers' own class, same config; ComfyUI's schedules drawn
            # where its Karras one would be)
            cls = getattr(diffusers, type(made).__name__)
            plain = (_comfy_spaced(cls, schedule) if schedule in COMFY_RULES else cls).from_config(made.config)
            if base in discarding:
                longer = _schedule(plain, 5)
                assert _schedule(made, 4) == longer[:-2] + [0.0], name
                assert len(made.timesteps) == len(plain.timesteps) - plain.order  # one step fewer
            else:
                assert _schedule(made, 4) == _schedule(plain, 4), name
    assert {name for name, base in BASES.items() if getattr(base, "discard", False)} == discarding
    # at every training timestep there is no longer schedule to take one from: diffusers' own (its __init__ sets it)
    made = scheduler_for(own, "dpm2")
    made.set_timesteps(own.config.num_train_timesteps)
    assert len(made.timesteps) == 2 * own.config.num_train_timesteps - 1
    # the steps taken out leave the tables diffusers builds itself for that schedule (here through its Karras hook)
    for name in ("dpm2_karras", "dpm2_a_karras"):
        made = scheduler_for(own, name)
        cls = getattr(diffusers, type(made).__name__)

        class Shorter(cls):
            def _convert_to_karras(self, in_sigmas, num_inference_steps):
                return super()._convert_to_karras(in_sigmas, num_inference_steps + 1)[:-1]

        made.set_timesteps(6)
        expected = Shorter.from_config(made.config)
        expected.set_timesteps(6)
        for table in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down", "timesteps"):
            if hasattr(expected, table):
                ours = getattr(made, table).float()
                if table == "timesteps":  # (the steps' unrounded, `_unrounded`; diffusers rounds them on Karras's)
                    ours[0::2] = ours[0::2].round()
                assert torch.allclose(ours, getattr(expected, table).float(), atol=1e-4, equal_nan=True), (name, table)


def test_a_sigma_schedule_spans_the_models_whole_noise_range_at_any_timestep_spacing(sd1_dir):
    """The web UI's Karras, Exponential and Beta schedules run from the model's largest sigma to its smallest.
    Diffusers' Euler, Heun, DPM2 and DPM++ SDE took the range from the model's timestep spacing: on a "leading" one
    (SD 2.x's, SDXL's) 4 Karras steps started at sigma 4.1 of SD's 14.6 and ended at 0.04, not 0.03."""
    from textinv.samplers import scheduler_for

    own = fresh_model(sd1_dir).pipeline.scheduler
    leading = type(own).from_config(own.config, timestep_spacing="leading")
    alphas = leading.alphas_cumprod
    top, bottom = (((1 - alphas) / alphas) ** 0.5)[[-1, 0]].tolist()
    for name in ("euler_karras", "heun_karras", "dpm2_karras", "dpm++2m_karras", "euler_exponential", "heun_beta",
                 "dpm2_a_exponential", "dpm++3m_sde_karras"):
        sigmas = _schedule(scheduler_for(leading, name), 4)
        assert sigmas[0] == round(top, 4), name
        if "dpm2" not in name and "3m" not in name:  # (those discard the smallest)
            assert sigmas[-2] == round(bottom, 4), name
    assert scheduler_for(leading, "euler").config.timestep_spacing == "leading"  # no schedule: the model's spacing


def test_karras_sampling_is_refused_on_a_zero_terminal_snr_schedule(sd1_dir):
    from textinv.samplers import scheduler_for

    model = fresh_model(sd1_dir)
    zero_snr = type(model.pipeline.scheduler).from_config(model.pipeline.scheduler.config, rescale_betas_zero_snr=True)
    with pytest.raises(ConfigError, match="dpm\\+\\+2m_karras' cannot sample a model with a zero-terminal-SNR"):
        scheduler_for(zero_snr, "dpm++2m_karras")
    assert scheduler_for(zero_snr, "dpm++2m").config.rescale_betas_zero_snr  # the schedule is kept
    for sampler in ("euler_normal", "dpm++2m_sgm_uniform", "lcm_simple"):  # (ComfyUI's top sigma is not diffusers')
        with pytest.raises(ConfigError, match=f"{re.escape(sampler)}' cannot sample a model with a zero-terminal-SNR "
                                              f".*sigma 4.5e3 and diffusers elsewhere"):
            scheduler_for(zero_snr, sampler)
    # diffusers' Heun, KDPM2, PNDM and single-step DPM-Solver have no zero-terminal-SNR option: they would sample SD's
    # unrescaled schedule, so they are refused too (the Karras ones with them)
    for sampler in [s for s in NEW_SAMPLERS if not s.startswith(("lcm", "tcd"))] + ["dpm++sde", "lms"]:
        with pytest.raises(ConfigError, match=f"sampler='{re.escape(sampler)}' cannot sample a model with a "
                                              f"zero-terminal-SNR .* has none; use euler, euler_a, dpm\\+\\+2m, "
                                              f"dpm\\+\\+2m_sde, dpm\\+\\+2m_sde_heun, dpm\\+\\+3m_sde, "
                                              f"dpm\\+\\+3m_sde_comfy, ddim, "
                                              f"ddpm, unipc, unipc_bh2, lcm or tcd"):
            scheduler_for(zero_snr, sampler)
    # the SDE samplers keep the schedule; no sigma schedule can (its largest noise level is infinite)
    assert scheduler_for(zero_snr, "dpm++3m_sde").config.rescale_betas_zero_snr
    assert scheduler_for(zero_snr, "lcm").config.rescale_betas_zero_snr  # (on Euler's tables)
    assert scheduler_for(zero_snr, "tcd").config.rescale_betas_zero_snr
    for sampler in ("dpm++2m_sde_exponential", "euler_beta", "lcm_karras"):
        with pytest.raises(ConfigError, match=f"{re.escape(sampler)}' cannot sample a model with a zero-terminal-SNR"):
            scheduler_for(zero_snr, sampler)
    model.pipeline.scheduler = zero_snr
    with pytest.raises(ConfigError, match="zero-terminal-SNR"):
        render(model, ["a dog"], [0], steps=2, sampler="dpm++2m_karras")


def test_lms_counts_its_order_from_the_passs_first_step_as_the_web_uis_sample_lms(sd1_dir):
    """The web UI's LMS (k-diffusion's sample_lms) takes a pass's first step at first order, its second at second,
    up to fourth; diffusers' counts from the schedule's first step, so an img2img, inpainting or hires pass (which
    starts later in it) took its first steps with the fourth-order coefficients of the one or two derivatives it had.
    Every order integrates a constant derivative exactly; a pass from the start is drawn as diffusers draws it."""
    pytest.importorskip("scipy")
    import diffusers

    from textinv.samplers import scheduler_for

    made = scheduler_for(fresh_model(sd1_dir).pipeline.scheduler, "lms")
    plain = diffusers.LMSDiscreteScheduler.from_config(made.config)
    x, eps = torch.randn(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(scheduler, begin, outputs):  # (epsilon: the derivative is the output itself)
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(begin)
        sample = x
        for t, out in zip(scheduler.timesteps[begin:], outputs):
            scheduler.scale_model_input(sample, t)  # (as a pipeline asks before each step; diffusers warns without)
            sample = scheduler.step(out, t, sample).prev_sample
        return sample

    stepped = run(made, 5, [eps] * 3)
    torch.testing.assert_close(stepped, x + (made.sigmas[8] - made.sigmas[5]) * eps)
    varied = [eps * (k + 1) for k in range(6)]
    assert torch.equal(run(made, 0, varied), run(plain, 0, varied))


def test_every_other_sampler_draws_the_bundled_zero_terminal_snr_model():
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    model = load_model("shapes")  # v-prediction on SD's schedule rescaled to zero terminal SNR, trailing steps
    for sampler in ("euler", "euler_a", "dpm++2m", "ddim", "unipc", "dpm++2m_sde", "dpm++3m_sde", "ddpm"):
        pixels = np.asarray(render(model, ["a red star on a navy background"], [0], steps=6, sampler=sampler)[0])
        assert pixels.std() > 10, sampler  # a drawing, not a flat or broken picture


def test_generate_draws_with_the_clip_skip_the_embedding_was_trained_with(sd1_dir, tmp_path):
    from safetensors.torch import save_file

    def draw(out, **kw):
        path = generate(GenerateConfig(prompt=["a photo of <q>"], embedding=[str(emb)], out=str(tmp_path / out), n=1,
                                       steps=2, model=str(sd1_dir), **kw), progress=False)[0]
        return Image.open(path)

    vectors = {"text_encoder": torch.randn(1, 32) * 3}
    emb = save_embedding(LearnedEmbedding("<q>", vectors, {"clip_skip": "2"}), tmp_path / "q.safetensors")[0]
    trained = draw("a")
    assert trained.text["clip_skip"] == "2" and "Clip skip: 2" in trained.text["parameters"]
    assert np.array_equal(np.asarray(draw("b", clip_skip=2)), np.asarray(trained))
    with pytest.warns(UserWarning, match="drawing with clip skip 1, but <q> was trained with 2"):
        last = draw("c", clip_skip=1)
    assert "Clip skip" not in last.text["parameters"] and not np.array_equal(np.asarray(last), np.asarray(trained))
    emb = save_embedding(LearnedEmbedding("<q>", vectors), tmp_path / "plain.safetensors")[0]  # says nothing
    assert draw("d").text["clip_skip"] == "1"
    # kohya's sd-scripts write the clip skip a file was trained with as ModelSpec's encoder_layer
    emb = tmp_path / "<q>.safetensors"
    save_file({"emb_params": vectors["text_encoder"]}, str(emb), metadata={"modelspec.encoder_layer": "2"})
    assert np.array_equal(np.asarray(draw("e")), np.asarray(trained))


@pytest.mark.parametrize("sampler", ["euler_a", "dpm++2m_sde", "dpm++3m_sde", "dpm++sde", "ddpm", "lcm", "tcd"])
def test_a_sampler_that_adds_noise_draws_each_picture_from_its_own_seed(sd1_dir, tmp_path, sampler):
    """An ancestral or SDE sampler draws fresh noise at every step: from the picture's own seed (DPM++ SDE's
    Brownian tree too, one a picture), so picture i of a batch is the picture its seed draws alone."""
    def draw(out, n, seed):
        return [np.asarray(Image.open(p)) for p in generate(GenerateConfig(
            prompt=["a photo of a dog"], out=str(tmp_path / out), n=n, seed=seed, steps=4, sampler=sampler,
            model=str(sd1_dir)), progress=False)]

    alone = draw("a", 1, 1)[0]
    assert np.array_equal(draw("b", 1, 1)[0], alone)  # the same seed, the same picture
    assert np.array_equal(draw("c", 2, 0)[1], alone)  # picture i of a batch uses seed + i, as alone


def test_web_ui_syntax_textinv_does_not_apply_is_warned_about(sd1_dir, tmp_path):
    from textinv.emphasis import unsupported

    assert unsupported("a [cat:dog:0.5] on [grass|sand] <hypernet:style:0.8> <lora:x>") == \
        ["extra-network tags <hypernet:style:0.8>"]
    assert unsupported(r"a (red:1.2) [blue] \[a:b\] <my-token> 12:30") == []
    assert unsupported("a castle AND a dragon:0.8 AND fog") == []  # (composable diffusion is drawn: see below)
    with pytest.warns(UserWarning, match="uses the web UI's extra-network tags <hypernet:x:1>, which textinv does not"):
        generate(GenerateConfig(prompt=["a <hypernet:x:1> cat"], out=str(tmp_path / "r"), n=1, steps=1,
                                model=str(sd1_dir)), progress=False)


def test_a_token_no_embedding_given_holds_is_warned_about(sd1_dir, tmp_path):
    """`--prompt "a photo of <ball>"` without `--embedding` drew the letters' pieces of words, silently: a <token> the
    model's vocabulary lacks is named, with the flag that gives its file (from Python its keyword); one given, or
    another tool's tag, is not."""
    from textinv.cli import main

    config = GenerateConfig(prompt=["a photo of <ball> and [<cube>:<ball>:2] <lora-like:x>"], out=str(tmp_path / "r"),
                            n=1, steps=1, width=16, model=str(sd1_dir))
    with pytest.warns(UserWarning, match=r"<ball>, <cube> are in no embedding given and not in the model's "
                                         r"vocabulary: .* give the file with embedding="):
        generate(config, progress=False)
    with pytest.warns(UserWarning, match=r"<ball> is in no embedding given .* give the file with --embedding \("):
        assert main(["generate", "--model", str(sd1_dir), "--prompt", "a photo of <ball>", "-n", "1", "--steps", "1",
                     "--width", "16", "--out", str(tmp_path / "cli")]) == 0
    (path,) = save_embedding(LearnedEmbedding("<ball>", {"text_encoder": torch.zeros(1, 32)}), tmp_path / "b.pt",
                             "a1111")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        generate(GenerateConfig(prompt=["a photo of <ball>"], embedding=[str(path)], out=str(tmp_path / "s"), n=1,
                                steps=1, width=16, model=str(sd1_dir)), progress=False)
    assert not [w for w in said if "vocabulary" in str(w.message)]


def test_a_learned_token_in_another_case_is_not_warned_of_and_a_misspelled_one_names_the_near_token(sd1_dir, tmp_path):
    """`<MY-DOG>` draws `<my-dog>` (the tokenizer reads case-blind) but was warned of as drawn as pieces of words;
    `<my-dgo>` was warned of without naming the token it misspells."""
    (path,) = save_embedding(LearnedEmbedding("<My-Dog>", {"text_encoder": torch.zeros(1, 32)}), tmp_path / "d.pt",
                             "a1111")

    def said(prompt):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(GenerateConfig(prompt=[prompt], embedding=[str(path)], out=str(tmp_path / "o"), n=1, steps=1,
                                    width=16, model=str(sd1_dir)), progress=False)
        return [str(w.message) for w in caught if "vocabulary" in str(w.message)]

    assert said("a <my-dog> and a <MY-DOG>") == []
    (warned,) = said("a <My-Dog> beside <my-dgo>")
    assert warned.startswith("<my-dgo> (the learned <My-Dog> misspelled?) is in no embedding given")
    assert warned.endswith("without a concept; fix the spelling in prompt=")  # (not: give its file)
    (warned,) = said("a <My-Dog> beside <ball>")
    assert warned.startswith("<ball> is in no") and "give the file with embedding=" in warned  # (nothing near it)
    (warned,) = said("<my-dgo> beside <ball>")  # (one misspelled, one not given: its file is still the advice)
    assert "(the learned <My-Dog> misspelled?)" in warned and "give the file with embedding=" in warned


def test_a_misspelled_token_in_the_negative_prompt_is_said_to_be_misspelled_there(sd1_dir, tmp_path):
    """The advice to fix a misspelling names the flag whose text writes it (`--negative-prompt`), as typed."""
    from textinv.cli import main

    (path,) = save_embedding(LearnedEmbedding("<my-dog>", {"text_encoder": torch.zeros(1, 32)}), tmp_path / "d.pt",
                             "a1111")
    with pytest.warns(UserWarning, match=r"misspelled\?\) is in no embedding given .*; fix the spelling in "
                                         r"--negative-prompt$"):
        assert main(["generate", "--model", str(sd1_dir), "--embedding", str(path), "--prompt", "a <my-dog>",
                     "--negative-prompt", "<my-dgo>", "-n", "1", "--steps", "1", "--width", "16",
                     "--out", str(tmp_path / "cli")]) == 0


def test_lora_tags_are_read_as_the_web_ui_reads_them():
    from textinv.emphasis import LoraTag, lora_tags

    text, tags = lora_tags("a <my-dog> <lora:a> [<lora:b:0.5>:x:3] <LyCo:c:0.2:0.7> <lora:d:1:unet=0.3:te=0.6> "
                           "<lora:e:0.4:0.9:8>")
    assert text == "a <my-dog>  [:x:3]   "
    assert tags == [LoraTag("a", 1, 1), LoraTag("b", 0.5, 0.5), LoraTag("c", 0.2, 0.7), LoraTag("d", 0.6, 0.3),
                    LoraTag("e", 0.4, 0.9)]
    for bad in ("<lora:a:strong>", "<lora::0.5>"):
        with pytest.raises(ConfigError, match="LoRA"):
            lora_tags(bad)


def _save_tiny_lora(folder, name):
    """A LoRA (UNet and text encoder parts, nonzero) for the tiny SD 1.x pipeline, as `folder/name.safetensors`."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from textinv.tiny import build_tiny_pipeline

    torch.manual_seed(5)
    pipe = build_tiny_pipeline("sd1")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    # (peft's own injection: transformers' add_adapter asks for a newer peft than the one on PyPI)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), pipe.text_encoder)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder))
    (folder / "pytorch_lora_weights.safetensors").rename(folder / f"{name}.safetensors")


def test_lora_tags_apply_their_loras_at_their_multipliers_and_leave_the_model_clean(sd1_dir, tmp_path):
    loras = tmp_path / "Lora"
    (loras / "styles").mkdir(parents=True)
    _save_tiny_lora(loras / "styles", "mystyle")
    model = fresh_model(sd1_dir)

    def draw(*prompts, out):
        paths = generate(GenerateConfig(prompt=list(prompts), out=str(tmp_path / out), n=1, steps=2,
                                        lora_dir=[str(loras)]), model=model, progress=False)
        return paths, [np.asarray(Image.open(p)) for p in paths]

    _, (plain,) = draw("a photo of a dog", out="plain")
    paths, (full, off, te_only, unet_only, after) = draw(
        "a photo of a dog <lora:mystyle:1>", "a photo of a dog <lora:mystyle:0>", "a photo of a dog <lora:mystyle:1:0>",
        "a photo of a dog <lora:mystyle:0:1>", "a photo of a dog", out="tagged")
    assert not np.array_equal(full, plain)
    assert np.array_equal(off, plain)  # a multiplier of 0 is no LoRA
    assert not np.array_equal(te_only, plain) and not np.array_equal(te_only, full)  # each part on its own
    assert not np.array_equal(unet_only, plain) and not np.array_equal(unet_only, full)
    assert np.array_equal(after, plain)  # a later prompt without the tag draws without it
    assert paths[0].name == "000-a-photo-of-a-dog-s0.png"  # the tag is not part of the name
    _, (again,) = draw("a photo of a dog", out="again")
    assert np.array_equal(again, plain) and not hasattr(model, "_loras")  # the model handed back clean
    from peft.tuners.lora import LoraLayer

    assert not any(isinstance(m, LoraLayer) for m in list(model.unet.modules()) + list(model.text_encoder.modules()))


def test_pictures_that_drew_other_loras_are_drawn_in_calls_of_their_own(sd1_dir, tmp_path, monkeypatch):
    """A pipeline call has one set of LoRAs on: dynamic prompts that drew other LoRAs are not drawn in one batch,
    the others are, and each picture is the one its prompt and seed draw on their own."""
    import textinv.generate as gen

    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "mystyle")
    model = fresh_model(sd1_dir)
    calls, render = [], gen.render
    monkeypatch.setattr(gen, "render", lambda m, prompts, *a, **k: calls.append(prompts) or render(m, prompts, *a, **k))
    common = dict(steps=2, width=32, lora_dir=[str(loras)], model=str(sd1_dir))
    paths = generate(GenerateConfig(prompt=["a {dog <lora:mystyle:1>|cat|bird|fish}"], n=8, batch_size=8,
                                    out=str(tmp_path / "mixed"), **common), model=model, progress=False)
    assert {len({"dog" in p for p in c}) for c in calls} == {1} and max(len(set(c)) for c in calls) > 1
    assert any("dog" in p for c in calls for p in c)
    for path in paths:
        text = Image.open(path).text
        alone, = generate(GenerateConfig(prompt=[dynamic.literal(text["prompt"])], seed=int(text["seed"]), n=1,
                                         out=str(tmp_path / "alone"), **common), model=model, progress=False)
        assert np.abs(np.asarray(Image.open(path)).astype(int) - np.asarray(Image.open(alone))).max() <= 1

def test_lora_tags_without_their_file_are_refused_before_the_model_loads(tmp_path):
    missing_model = str(tmp_path / "no-model")
    loras = tmp_path / "Lora"
    loras.mkdir()
    (loras / "old.pt").write_bytes(b"pickle")
    cases = [([], "<lora:x:1>", "give lora_dir="), ([str(loras)], "<lora:x:1>", "no x.safetensors in lora_dir="),
             ([str(loras)], "<lora:old>", "pickled file"), ([str(tmp_path / "nope")], "<lora:x>", "is not a folder")]
    for folders, tag, message in cases:
        with pytest.raises(ConfigError, match=message):
            generate(GenerateConfig(prompt=[f"a cat {tag}"], out=str(tmp_path / "r"), model=missing_model,
                                    lora_dir=folders), progress=False)



def test_a_file_that_is_no_lora_for_the_model_is_refused_by_name(sd1_dir, tmp_path):
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(3)}, str(tmp_path / "junk.safetensors"))
    model = fresh_model(sd1_dir)
    with pytest.raises(FormatError, match="<lora:junk> .*junk.safetensors. could not be applied"):
        generate(GenerateConfig(prompt=["a cat <lora:junk:0.5>"], out=str(tmp_path / "r"), n=1, steps=1,
                                lora_dir=[str(tmp_path)]), model=model, progress=False)
    assert not hasattr(model, "_loras")


def test_a_lora_that_fails_part_way_leaves_the_model_clean_and_the_next_one_loads(sd1_dir, tmp_path):
    """A LoRA whose text-encoder part does not fit gets its UNet part in before it fails (so does the UNet part of a
    LoRA of another family): the model was handed back drawing with it, and the next LoRA failed as 'lora0 already
    in use', blamed on its family. A file cut short (an interrupted download) was a traceback."""
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file, save_file

    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "good")
    state = load_file(str(loras / "good.safetensors"))
    save_file({k: torch.zeros(v.shape[0], 2 * v.shape[1]) if k.startswith("text_encoder") and "lora_A" in k else v
               for k, v in state.items()}, str(loras / "halfway.safetensors"))
    (loras / "cut.safetensors").write_bytes((loras / "good.safetensors").read_bytes()[:300])
    model = fresh_model(sd1_dir)

    def draw(prompt, out, model=model):
        (path,) = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=2,
                                          lora_dir=[str(loras)]), model=model, progress=False)
        return np.asarray(Image.open(path))

    plain = draw("a dog", "plain")
    for name, message in (("halfway", "could not be applied"), ("cut", "could not be read.*download it again")):
        with pytest.raises(FormatError, match=f"<lora:{name}> .*{message}"):
            draw(f"a dog <lora:{name}>", name)
        assert not any(isinstance(m, LoraLayer) for m in list(model.unet.modules()) + list(model.text_encoder.modules()))
        assert np.array_equal(draw("a dog", f"after-{name}"), plain) and not hasattr(model, "_loras")
    assert np.array_equal(draw("a dog <lora:good>", "good"), draw("a dog <lora:good>", "fresh", fresh_model(sd1_dir)))


def test_a_second_lora_with_a_text_encoder_part_loads_without_false_alarms(sd1_dir, tmp_path):
    """transformers reported the first LoRA's text-encoder weights 'MISSING ... newly initialized' (they are not:
    the pictures are the fresh model's) and peft warned of several adapters, on every run with two LoRAs."""
    import io
    import logging
    import warnings

    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "one")
    (loras / "two.safetensors").write_bytes((loras / "one.safetensors").read_bytes())
    said = io.StringIO()
    handler = logging.StreamHandler(said)
    logging.getLogger("transformers").addHandler(handler)  # (its own handler writes to the stderr it first saw)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            paths = generate(GenerateConfig(prompt=["a dog <lora:one:0.5>", "a dog <lora:two:1:0.5> <lora:one:0.3>"],
                                            out=str(tmp_path / "r"), n=1, steps=2, lora_dir=[str(loras)]),
                             model=fresh_model(sd1_dir), progress=False)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert "MISSING" not in said.getvalue() and "newly initialized" not in said.getvalue(), said.getvalue()
    assert not [w for w in seen if "peft_config" in str(w.message)]
    fresh = generate(GenerateConfig(prompt=["a dog <lora:two:1:0.5> <lora:one:0.3>"], out=str(tmp_path / "f"), n=1,
                                    steps=2, lora_dir=[str(loras)]), model=fresh_model(sd1_dir), progress=False)
    assert np.array_equal(np.asarray(Image.open(paths[1])), np.asarray(Image.open(fresh[0])))


@pytest.mark.parametrize("prompt, steps, schedule", [
    ("a [cat:dog:0.5] on [grass::3]", 10, [(3, "a cat on grass"), (5, "a cat on "), (10, "a dog on ")]),
    ("a [dog:4]", 8, [(4, "a "), (8, "a dog")]),  # [to:when]: added after step 4
    ("[cat:dog:3]", 2, [(2, "cat")]),  # a step past the end: cut to it
    ("[cat:dog:0]", 5, [(5, "dog")]), ("[cat:dog:1.0]", 5, [(5, "cat")]),  # "1.0" is a fraction: all of them
    ("[cat:dog:0.25]", 10, [(2, "cat"), (10, "dog")]),  # int(2.5)
    ("[cat:dog:+2]", 5, [(2, "cat"), (5, "dog")]), ("[cat:dog:-1]", 5, [(5, "dog")]),  # signed numbers,
    ("[cat:dog:1e1]", 20, [(10, "cat"), (20, "dog")]),  # and exponents, as the web UI's grammar reads them
    ("[red|blue] car", 3, [(1, "red car"), (2, "blue car"), (3, "red car")]),
    ("[a|b|] x", 4, [(1, "a x"), (2, "b x"), (3, " x"), (4, "a x")]),
    ("[[red|blue]:green:2] car", 4, [(1, "red car"), (2, "blue car"), (4, "green car")]),  # nested
    ("a ([cat:dog:0.5]:1.2), [x]", 4, [(2, "a (cat:1.2), [x]"), (4, "a (dog:1.2), [x]")]),  # inside emphasis
    ("[(cat:1.3):dog:1]", 3, [(1, "(cat:1.3)"), (3, "dog")]),  # holding it
    (r"a \[cat:dog:0.5\] [b:c] [a:b:c:0.5] [open:x:1", 4, [(4, r"a \[cat:dog:0.5\] [b:c] [a:b:c:0.5] [open:x:1")]),
])
def test_prompt_editing_and_alternation_are_scheduled_as_the_web_ui_does(prompt, steps, schedule):
    from textinv.emphasis import prompt_schedule

    assert prompt_schedule(prompt, steps) == schedule


@pytest.mark.parametrize("prompt, schedule", [
    ("a [b:.5] c", [(10, "a b c")]),  # (the web UI's own examples: 10 first steps, 10 hires steps)
    ("a [b:1.5] c", [(5, "a  c"), (10, "a b c")]),
    ("[cat:dog:15]", [(5, "cat"), (10, "dog")]), ("[cat:dog:5]", [(10, "dog")]),  # steps count on from the first
    ("[red|blue] car", [(1, "red car"), (2, "blue car"), (3, "red car")] + [(n, ("red", "blue")[(n - 1) % 2] + " car")
                                                                          for n in range(4, 11)]),
])
def test_prompt_editing_in_the_hires_fixs_pass_counts_on_from_the_first_pass_as_the_web_ui_does(prompt, schedule):
    """The web UI (1.6 on) schedules the hires pass's prompt on from the first pass: a fraction below 1 is of the first
    pass (done by then), one above 1 of the hires pass, a step counts on from the first pass's steps. Each pass was
    scheduled on its own, so `[<style>:0.3]` left the style out of the hires pass's first 30%."""
    from textinv.emphasis import prompt_schedule

    assert prompt_schedule(prompt, 10, first=10) == schedule


@pytest.mark.parametrize("prompt, first, schedule", [
    ("a [b:c:0.5] [d:e:1.5]", None, [(1, "a b d"), (5, "a b e"), (10, "a c e")]),  # 1.5: step 1; 0.5: half
    ("[cat:dog:1.0]", None, [(1, "cat"), (10, "dog")]),  # (the new timelines: "cat" all 10 steps)
    ("[cat:dog:0.5]", 8, [(4, "cat"), (8, "dog")]),  # the hires pass: the first pass's schedule, counted from 0
    ("[cat:dog:3]", 8, [(3, "cat"), (8, "dog")]),
])
def test_the_old_prompt_editing_timelines_are_the_web_uis_use_old_scheduling(prompt, first, schedule):
    """The web UI's "Old prompt editing timelines" (before 1.6): a number below 1 is a fraction of the steps and any
    other a step, whether it has a decimal point or not, and the hires pass takes the first pass's schedule."""
    from textinv.emphasis import prompt_schedule

    assert prompt_schedule(prompt, 10, first=first, old=True) == schedule


def test_the_hires_pass_draws_a_prompt_edit_past_its_first_pass_throughout(sd1_dir, tmp_path):
    """`[cat:dog:0.5]` with the hires fix: the first pass switches halfway, the hires pass draws "dog" all through,
    the picture its hires prompt "dog" draws."""
    model = fresh_model(sd1_dir)

    def draw(out, **kw):
        return np.asarray(Image.open(generate(GenerateConfig(
            prompt=["a [cat:dog:0.5]"], out=str(tmp_path / out), n=1, steps=4, hires_scale=1.5, hires_steps=4,
            model=str(sd1_dir), **kw), model=model, progress=False)[0]))

    assert np.array_equal(draw("edited"), draw("dog", hires_prompt="a dog"))


def test_the_hires_pass_counts_on_from_a_second_order_first_pass_by_its_model_calls(sd1_dir, tmp_path):
    """The web UI counts the hires pass's steps on from the first pass's model calls (firstpass_steps: Heun's 4
    steps are 8), so after a Heun first pass `[cat:dog:10]` switches after step 2 of a 4-step Euler hires pass,
    as `[cat:dog:1.5]` does."""
    model = fresh_model(sd1_dir)

    def draw(out, hires_prompt):
        return np.asarray(Image.open(generate(GenerateConfig(
            prompt=["a cat"], out=str(tmp_path / out), n=1, steps=4, sampler="heun", hires_scale=1.5, hires_steps=4,
            hires_sampler="euler", hires_prompt=hires_prompt, model=str(sd1_dir)), model=model, progress=False)[0]))

    assert np.array_equal(draw("step", "a [cat:dog:10]"), draw("fraction", "a [cat:dog:1.5]"))


def test_pictures_drawn_on_copies_of_a_made_sampler_are_those_drawn_on_samplers_made_afresh(sd1_dir, tmp_path,
                                                                                             monkeypatch):
    """A sampler is made once and each pass draws on a copy (`samplers._made`): two pictures of a batch, each with
    a DPM2 a first pass and a DPM++ 2S a hires pass, are bit for bit those of samplers made afresh for every pass."""
    from textinv import samplers

    model = fresh_model(sd1_dir)

    def draw(out):
        paths = generate(GenerateConfig(prompt=["a cat"], out=str(tmp_path / out), n=2, seed=5, steps=3,
                                        sampler="dpm2_a", hires_scale=1.5, hires_steps=3, hires_sampler="dpm++2s_a",
                                        model=str(sd1_dir)), model=model, progress=False)
        return [np.asarray(Image.open(path)) for path in paths]

    copied = draw("copied")
    monkeypatch.setattr(samplers, "_made", lambda cls, config, options: cls.from_config(config, **options),
                        raising=False)
    afresh = draw("afresh")
    assert len(copied) == 2 and not np.array_equal(*copied)
    for a, b in zip(copied, afresh, strict=True):
        assert np.array_equal(a, b)


def test_an_img2img_pass_schedules_prompt_editing_over_all_its_steps_from_its_first_as_the_web_ui_does(sd1_dir,
                                                                                                     tmp_path):
    """The web UI schedules an img2img pass's prompt over all of --steps and counts the steps it runs from 0: at 4
    steps and denoise 0.5 it runs 3 (steps 0-2), and `[cat:dog:0.5]` switches after step 2, so all three are "cat".
    Scheduled over the 3 steps run, "dog" drew the last."""
    model = fresh_model(sd1_dir)
    Image.new("RGB", (16, 16), (200, 120, 40)).save(tmp_path / "init.png")

    def draw(out, prompt):
        return np.asarray(Image.open(generate(GenerateConfig(
            prompt=[prompt], out=str(tmp_path / out), n=1, steps=4, init_image=str(tmp_path / "init.png"),
            denoise=0.5, model=str(sd1_dir)), model=model, progress=False)[0]))

    assert np.array_equal(draw("edited", "a [cat:dog:0.5]"), draw("cat", "a cat"))


def _conditioning_seen(model):
    """Each UNet call's text conditioning (encoder hidden states and SDXL's pooled text embedding), in order."""
    seen = []

    def hook(module, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        pooled = (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
        seen.append((hidden.clone(), None if pooled is None else pooled.clone()))

    model.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("guidance, scheduler, steps_of_calls", [
    (7.5, "euler", [0, 1, 2, 3]), (1.0, "euler", [0, 1, 2, 3]),
    (7.5, "pndm", [0, 1, 1, 2, 3]),  # SD 1.x's own sampler: 5 UNet calls for 4 steps, one timestep twice
])
def test_an_edited_prompt_conditions_each_step_with_its_own_text(sd1_dir, guidance, scheduler, steps_of_calls):
    """As the web UI: step s (from 0) takes the first text whose last step is >= s, so `[red:blue:2]` draws red
    for steps 0-2 and `[ugly|dark]` goes ugly, ugly, dark, ugly; a sampler's extra calls keep their step's text."""
    from diffusers import PNDMScheduler

    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    sampler = "euler"
    if scheduler == "pndm":
        model.pipeline.scheduler = PNDMScheduler.from_config(model.pipeline.scheduler.config, skip_prk_steps=True)
        sampler = "default"
    seen = _conditioning_seen(model)
    edited = render(model, ["a [red:blue:2] dog"], [0], steps=4, guidance=guidance, negative_prompt="[ugly|dark]",
                    sampler=sampler)
    red, blue = (encode_prompts(model, [f"a {c} dog"])[0] for c in ("red", "blue"))
    ugly, dark = (encode_prompts(model, [c])[0] for c in ("ugly", "dark"))
    assert len(seen) == len(steps_of_calls)
    for step, (hidden, _) in zip(steps_of_calls, seen):
        cond = red if step <= 2 else blue
        expected = torch.cat([dark if step == 2 else ugly, cond]) if guidance > 1 else cond
        torch.testing.assert_close(hidden, expected)
    plain = render(fresh_model(sd1_dir), ["a red dog"], [0], steps=4, guidance=guidance, negative_prompt="ugly",
                   sampler="euler")
    if scheduler == "euler":
        assert not np.array_equal(np.asarray(edited[0]), np.asarray(plain[0]))
    whole = render(fresh_model(sd1_dir), ["a [red:blue:1.0] dog"], [0], steps=4, guidance=guidance,
                   negative_prompt="ugly", sampler="euler")  # one stretch: the plain path, the same picture
    assert np.array_equal(np.asarray(whole[0]), np.asarray(plain[0]))


def test_prompt_editing_on_the_ddim_schedule_types_extra_steps_counts_them_as_the_web_ui_does(sd1_dir):
    """The web UI's DDIM schedule type draws 31 steps at 30; its step counter counts them 0 to 30, over the prompt's
    schedule of 30, so `[red:blue:15]` draws red for steps 0-15 and blue for the 15 after. Spread over the 30 steps
    asked, red drew one step more."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    seen = _conditioning_seen(model)
    render(model, ["a [red:blue:15] dog"], [0], steps=30, guidance=1.0, sampler="euler_ddim_uniform")
    red, blue = (encode_prompts(model, [f"a {c} dog"])[0] for c in ("red", "blue"))
    assert len(seen) == 31
    for step, (hidden, _) in enumerate(seen):
        torch.testing.assert_close(hidden, red if step <= 15 else blue, msg=f"step {step}")


@pytest.mark.parametrize("sampler", ["heun", "dpm2_karras", "dpm2_a", "dpm++sde", "dpm++2s_a_karras", "restart"])
def test_a_second_order_samplers_prompt_editing_counts_its_model_calls_as_the_web_ui_does(sd1_dir, sampler):
    """The web UI schedules a second-order sampler's prompt editing over twice the steps and counts its model calls
    (step_multiplier): `[red:blue:2]` at 4 steps (7 calls) draws red for calls 0-2, not for the first 3 steps' 5."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    seen = _conditioning_seen(model)
    render(model, ["a [red:blue:2] dog"], [0], steps=4, guidance=7.5, negative_prompt="", sampler=sampler)
    red, blue = (encode_prompts(model, [f"a {c} dog"])[0] for c in ("red", "blue"))
    assert len(seen) == 7
    for call, (hidden, _) in enumerate(seen):
        torch.testing.assert_close(hidden[1:], red if call <= 2 else blue)


def test_restarts_img2img_pass_plans_the_steps_it_runs_as_the_web_ui_hands_them_to_it(sd1_dir, tmp_path):
    """The web UI runs Restart on the sigmas of the steps an img2img pass runs: 22 of 30 steps (denoise 0.7) are
    planned on their own, with a restart of their own. The pipeline takes its timesteps before it sets the
    scheduler's begin index, and the UNet is called at the replanned ones, 2 x 22 - 1 calls."""
    from textinv.samplers import scheduler_for

    model = fresh_model(sd1_dir)
    Image.new("RGB", (16, 16), (200, 120, 40)).save(tmp_path / "init.png")
    seen = []
    model.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(float(
        (args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0])), with_kwargs=True)
    generate(GenerateConfig(prompt=["a cat"], out=str(tmp_path / "r"), n=1, steps=30, sampler="restart",
                            init_image=str(tmp_path / "init.png"), denoise=0.7, model=str(sd1_dir)), model=model,
             progress=False)
    planned = scheduler_for(model.pipeline.scheduler, "restart")
    planned.set_timesteps(30)
    whole = planned.timesteps.tolist()
    planned.set_begin_index(2 * 8)
    assert len(seen) == 2 * 22 - 1 and seen != whole[16:]
    assert seen == pytest.approx(planned.timesteps[16:].tolist())
    assert any(b > a for a, b in zip(seen, seen[1:]))  # (back up: a restart)


@pytest.mark.parametrize("pass_", ["hires", "img2img"])
def test_a_restart_pass_the_web_ui_would_draw_short_is_refused_before_the_unet_is_called(sd1_dir, pass_):
    """A pass that starts below Restart's restart interval with 20 steps or more to run, where the web UI's Restart
    takes 9 fewer (a hires pass of 20 steps at --hires-denoise 0.1 on the Karras schedule, from sigma 0.07; an
    img2img pass of 21 of 200 steps at --denoise 0.1), is refused naming the flags before any UNet call: it was the
    scheduler's ValueError from inside the pipeline, the hires fix's once its first pass had drawn."""
    from textinv.refine import Hires

    model = fresh_model(sd1_dir)
    calls = []
    model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    if pass_ == "hires":
        drawing = dict(steps=2, hires=Hires(scale=2, steps=20, denoise=0.1))
        flags = r"hires_steps=20 at hires_denoise=0.1"
    else:
        drawing = dict(steps=200, start=[Image.new("RGB", (16, 16), (200, 120, 40))], denoise=0.1)
        flags = r"steps=200 at denoise=0.1"
    with pytest.raises(ConfigError, match=f"sampler='restart_karras': {flags} runs the last 2[01] steps of 200, "
                                          r"from sigma 0\.07[0-9]*, below Restart's restart interval"):
        render(model, ["a cat"], [0], width=16, height=16, sampler="restart_karras", **drawing)
    assert not calls


def test_the_refiner_switch_of_a_restart_img2img_pass_is_found_on_the_steps_planned_for_it(sd1_dir):
    """The check before drawing (`_refiner_span`) reads the pass's noise levels as the pipeline's scheduler has them
    once it has set its begin index, where the hand-on reads them: Restart's img2img pass plans its own steps."""
    from types import SimpleNamespace

    from textinv.refiner import _refiner_span, _switch_iteration
    from textinv.samplers import scheduler_for

    model = fresh_model(sd1_dir)
    planned = scheduler_for(model.pipeline.scheduler, "restart")
    planned.set_timesteps(30)  # (denoise 0.7: the last 22 steps, 43 calls, from call 16)
    whole = _switch_iteration(planned, 43, 0.5)
    planned.set_begin_index(16)
    assert _refiner_span(model, SimpleNamespace(switch_at=0.5), 30, "restart", 0.7, None) == \
        (_switch_iteration(planned, 43, 0.5), 43) != (whole, 43)


def test_a_folder_of_embeddings_is_read_as_the_web_uis_embeddings_folder(sd1_dir, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_embedding(LearnedEmbedding("whatever", {"text_encoder": torch.randn(2, 32) * 3}), folder / "EasyNeg.pt",
                   "a1111")
    save_embedding(LearnedEmbedding("<wide>", {"text_encoder": torch.randn(1, 1024)}), folder / "unused.pt", "a1111")
    (folder / "notes.txt").write_text("not an embedding")

    def draw(out, negative, **kw):
        path = generate(GenerateConfig(prompt=["a dog"], negative_prompt=negative, embedding=[str(folder)],
                                       out=str(tmp_path / out), n=1, steps=2, model=str(sd1_dir), **kw),
                        progress=False)[0]
        return np.asarray(Image.open(path))

    # the file's name is its token (its own says "whatever"); the unused file of another width is not even read
    with_it = draw("a", "easyneg, blurry")
    with pytest.warns(UserWarning, match="no embedding in the folder .* is named in the prompts"):
        without = draw("b", "easynegative, blurry")  # (not its name: a word inside another is no match)
    assert not np.array_equal(with_it, without)
    with pytest.raises(ConfigError, match="token='x' renames one embedding file; .* is a folder"):
        draw("c", "easyneg", token=["x"])


def test_an_embeddings_folders_subfolders_are_read_and_its_preview_pictures_left_out_as_in_the_web_ui(tmp_path):
    """The web UI walks its embeddings folder's subfolders (embeddings/negative/easyneg.pt) and leaves out a picture
    that holds no embedding (a preview, mydog.png beside mydog.pt): the subfolder's file was not found, so the
    prompt drew its name as words, and the preview was refused as an embedding that could not be read."""
    from textinv.embedding_names import embedding_files

    folder = tmp_path / "embeddings"
    for name in ("negative/easyneg", "mydog"):
        save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(2, 32)}), folder / f"{name}.pt", "a1111")
    Image.new("RGB", (8, 8)).save(folder / "mydog.png")
    Image.new("RGB", (8, 8)).save(folder / "cat.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a preview beside its embedding is left out without a word)
        assert embedding_files([str(folder)], [None], "mydog, easyneg") == [
            (str(folder / "mydog.pt"), "mydog"), (str(folder / "negative" / "easyneg.pt"), "easyneg")]
    with pytest.warns(UserWarning, match=r"left out \S+cat.png: a picture without an embedding"):
        assert embedding_files([str(folder)], [None], "a cat, mydog") == [(str(folder / "mydog.pt"), "mydog")]


def test_an_embeddings_folders_webp_embedding_is_read_and_its_webp_preview_left_out_as_in_the_web_ui(tmp_path):
    """The web UI reads an embedding picture saved as WebP (lossless: the copy in its pixels survives) as it reads a
    PNG; the folder's .webp files were skipped without a word, and the prompt drew the name as words under a warning
    that no embedding of the folder was named."""
    from textinv.embedding_names import embedding_files

    folder = tmp_path / "embeddings"
    emb = LearnedEmbedding("hero", {"text_encoder": torch.randn(2, 32)})
    save_embedding(emb, tmp_path / "hero.png", "a1111-png")
    (folder / "chars").mkdir(parents=True)
    with Image.open(tmp_path / "hero.png") as picture:
        picture.save(folder / "chars" / "hero.webp", lossless=True)
    Image.new("RGB", (8, 8)).save(folder / "cat.webp", lossless=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert embedding_files([str(folder)], [None], "a photo of hero") == [(str(folder / "chars" / "hero.webp"),
                                                                               "hero")]
    assert torch.equal(load_embedding(folder / "chars" / "hero.webp").vectors["text_encoder"],
                       emb.vectors["text_encoder"])
    with pytest.warns(UserWarning, match=r"left out \S+cat.webp: a picture without an embedding"):
        assert embedding_files([str(folder)], [None], "a cat, hero") == [(str(folder / "chars" / "hero.webp"),
                                                                           "hero")]


def test_one_name_in_two_subfolders_of_an_embeddings_folder_is_refused_saying_to_rename_a_file(sd1_dir, tmp_path):
    """The refusal said to rename one with --token, which a folder's files do not take (that was refused in turn);
    two files given each as its own --embedding are still told to use --token."""
    folder = tmp_path / "embeddings"
    for sub in ("style", "chars"):
        save_embedding(LearnedEmbedding("twin", {"text_encoder": torch.randn(1, 32)}), folder / sub / "twin.pt",
                       "a1111")

    def draw(embedding):
        generate(GenerateConfig(prompt=["a photo of twin"], embedding=embedding, out=str(tmp_path / "out"), n=1,
                                steps=2, model=str(sd1_dir)), progress=False)

    with pytest.raises(TokenError, match=r"style/twin.pt and \S+chars/twin.pt both define the token 'twin': a file "
                                         r"in an --embedding folder is called by its file's name.*takes no --token; "
                                         r"rename one of the files"):
        draw([str(folder)])
    with pytest.raises(TokenError, match=r"both define the token 'twin'; rename one with --token"):
        draw([str(folder / "style" / "twin.pt"), str(folder / "chars" / "twin.pt")])


def test_an_embedding_folder_that_is_empty_or_a_model_is_said_so(sd1_dir, tmp_path):
    """`--embedding` of an empty folder warned that no embedding in it "is named in the prompts", as if it held
    some; a model folder given there drew without a word of it but that one."""
    from textinv.embedding_names import embedding_files

    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match=r"the folder \S+empty holds no embedding file \(.pt, .bin, .safetensors, "
                                         r".png, .webp, in it or its subfolders\): check the --embedding path"):
        assert embedding_files([str(tmp_path / "empty")], [None], "a photo of <ball>") == []
    with pytest.raises(ConfigError, match=r"is a diffusers model folder \(it holds model_index.json\), not "
                                          r"embeddings: give it as model="):
        embedding_files([str(sd1_dir)], [None], "a photo of <ball>")


def test_an_embeddings_folders_file_named_with_a_space_is_refused_naming_the_file_to_rename(tmp_path):
    """The web UI calls `My Dog.pt` "My Dog"; a learned token here is one word. It was refused once the model had
    loaded, saying to pass --token, which a folder's files do not take."""
    from textinv.embedding_names import embedding_files

    folder = tmp_path / "embeddings"
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(2, 32)}), folder / "My Dog.pt", "a1111")
    with pytest.raises(ConfigError, match=r"\S+/My Dog.pt: .* one word without spaces: rename the file \(My_Dog.pt\) "
                                          r"and write My_Dog in the prompt"):
        embedding_files([str(folder)], [None], "a photo of my dog")


def test_comfyuis_embedding_names_in_a_prompt_draw_as_the_names_alone(sd1_dir, tmp_path):
    """ComfyUI writes `embedding:NAME` (the suffix and a subfolder optional, inside a weight too): it was read as the
    words "embedding" and ":" beside the name, another picture; a name given by no --embedding is refused (ComfyUI
    drops it with a warning, and the picture lacks the concept)."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_embedding(LearnedEmbedding("whatever", {"text_encoder": torch.randn(2, 32) * 3}), folder / "EasyNeg.pt",
                   "a1111")
    save_embedding(LearnedEmbedding("<dog>", {"text_encoder": torch.randn(1, 32) * 3}), tmp_path / "dog.safetensors")

    def draw(out, prompt, negative):
        path = generate(GenerateConfig(prompt=[prompt], negative_prompt=negative, out=str(tmp_path / out), n=1,
                                       steps=2, model=str(sd1_dir),
                                       embedding=[str(folder), str(tmp_path / "dog.safetensors")]),
                        progress=False)[0]
        return np.asarray(Image.open(path)), Image.open(path).text

    web_ui, _ = draw("a", "a photo of (<dog>:1.2)", "EasyNeg, blurry")
    comfy, text = draw("b", "a photo of (embedding:dog.safetensors:1.2)", "embedding:sub/EasyNeg.pt, blurry")
    assert np.array_equal(web_ui, comfy)
    assert "a photo of (<dog>:1.2)" in text["parameters"]  # (the token: as the web UI reads it)
    with pytest.raises(ConfigError, match="embedding:charturner in the prompt names no embedding given: pass its "
                                          "file with --embedding"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (and the folder's files none of the prompt's names)
        draw("c", "embedding:charturner a dog", "")


def test_comfyuis_embedding_names_on_both_sides_of_a_prompt_edit_draw_both(sd1_dir, tmp_path):
    """`[embedding:cat:embedding:dog:0.5]`: the name after the edit's colon was left as the words "embedding:dog",
    so the second half drew other words, and <dog> was warned about as in no prompt."""
    for token in ("cat", "dog"):
        save_embedding(LearnedEmbedding(f"<{token}>", {"text_encoder": torch.randn(1, 32) * 3}),
                       tmp_path / f"{token}.safetensors")

    def draw(out, prompt):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (neither embedding is unused)
            path = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=2, model=str(sd1_dir),
                                           embedding=[str(tmp_path / "cat.safetensors"),
                                                      str(tmp_path / "dog.safetensors")]), progress=False)[0]
        return np.asarray(Image.open(path)), Image.open(path).text

    web_ui, _ = draw("a", "a photo of [<cat>:<dog>:0.5]")
    comfy, text = draw("b", "a photo of [embedding:cat:embedding:dog:0.5]")
    assert np.array_equal(web_ui, comfy)
    assert text["parameters"].startswith("a photo of [<cat>:<dog>:0.5]")


def test_comfy_emphasis_names_embeddings_as_comfyui_does_a_bare_file_name_being_words(sd1_dir, tmp_path):
    """Under --emphasis comfy a prompt names an embedding as ComfyUI does, `embedding:NAME`: a bare word that is a
    file's name loaded an embeddings folder's file (`a mydog` drew mydog.pt) and named a file whose stored token is
    another (charturnerv2.pt) as the web UI reads it, where ComfyUI draws the words."""
    import json

    folder = tmp_path / "embeddings"
    for name in ("easyneg", "mydog"):
        save_embedding(LearnedEmbedding(f"<{name}-stored>", {"text_encoder": torch.randn(2, 32) * 3}),
                       folder / f"{name}.pt", "a1111")
    turner = tmp_path / "charturnerv2.pt"
    save_embedding(LearnedEmbedding("charturner", {"text_encoder": torch.randn(1, 32) * 3}), turner, "a1111")
    zz = save_embedding(LearnedEmbedding("<zz>", {"text_encoder": torch.randn(1, 32) * 3}),
                        tmp_path / "zz.safetensors")[0]

    def draw(out, prompt, embedding, mode="comfy"):
        path = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=1, model=str(sd1_dir),
                                       embedding=[str(e) for e in embedding], emphasis=mode), progress=False)[0]
        return np.asarray(Image.open(path))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the folder's mydog.pt is not loaded, so not warned about)
        comfy = draw("a", "embedding:easyneg, a mydog", [folder])
    (png,) = (tmp_path / "a").iterdir()
    text = Image.open(png).text  # (recorded as written: redrawn with the folder, it names the file again)
    assert json.loads(text["textinv_settings"])["settings"]["prompt"] == ["embedding:easyneg, a mydog"]
    assert 'TI hashes: "easyneg: ' in text["parameters"]
    assert np.array_equal(comfy, draw("b", "embedding:easyneg, a mydog", [folder / "easyneg.pt"]))
    # (the folder's file is drawn where embedding:NAME names it alone; its bare name is words)
    assert np.array_equal(draw("b2", "embedding:easyneg, easyneg a mydog", [folder]),
                          draw("b3", "embedding:easyneg, easyneg a mydog", [folder / "easyneg.pt"]))
    web_ui = draw("c", "embedding:easyneg, a mydog", [folder], "original")  # (it loads and draws mydog.pt)
    assert not np.array_equal(web_ui, comfy)
    with pytest.warns(UserWarning, match=r"charturnerv2.pt is left out: the prompt writes 'charturnerv2' as a bare "
                                         r"word, which --emphasis comfy reads as words, as ComfyUI does; write "
                                         r"embedding:charturnerv2 where the concept goes"):
        words = draw("d", "a charturnerv2 dog", [turner])
    assert np.array_equal(words, draw("e", "a charturnerv2 dog", []))
    assert not np.array_equal(draw("g", "a embedding:zz dog", [zz]), draw("i", "a zz dog", []))


def test_comfy_emphasis_reads_the_token_a_file_stores_written_bare_as_words_as_comfyui_does(sd1_dir, tmp_path):
    """ComfyUI draws an embedding where `embedding:NAME` names it alone: `<zz>` written bare is the words "<zz>".
    Under --emphasis comfy it drew the embedding (textinv's way); it is words now, with one warning naming the token
    and the `embedding:` form, and the embedding is left out where no `embedding:NAME` names it. The picture
    records the prompt as written, which draws it again alike."""
    import json

    from textinv.again import again_config

    zz = save_embedding(LearnedEmbedding("<zz>", {"text_encoder": torch.randn(2, 32) * 3}),
                        tmp_path / "zz.safetensors")[0]

    def draw(out, prompt, embedding, negative=""):
        path = generate(GenerateConfig(prompt=[prompt], negative_prompt=negative, out=str(tmp_path / out), n=1,
                                       steps=1, model=str(sd1_dir), embedding=[str(e) for e in embedding],
                                       emphasis="comfy"), progress=False)[0]
        return np.asarray(Image.open(path)), path

    with pytest.warns(UserWarning, match=r"zz.safetensors is left out: the prompt writes '<zz>' as a bare word, "
                                         r"which --emphasis comfy reads as words, as ComfyUI does; write "
                                         r"embedding:zz where the concept goes"):
        words, _ = draw("a", "a <zz> dog", [zz])
    assert np.array_equal(words, draw("b", "a <zz> dog", [])[0])
    named, path = draw("c", "a embedding:zz dog", [zz])
    assert not np.array_equal(named, words)
    assert json.loads(Image.open(path).text["textinv_settings"])["settings"]["prompt"] == ["a embedding:zz dog"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = again_config(path, {"out": str(tmp_path / "again"), "model": str(sd1_dir), "embedding": [str(zz)]})
        assert np.array_equal(np.asarray(Image.open(generate(config, progress=False)[0])), named)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        both, _ = draw("d", "a embedding:zz <zz> dog, <zz>", [zz], negative="<zz>")
    said = [str(w.message) for w in heard if "<zz>" in str(w.message)]
    assert len(said) == 1 and "zz.safetensors: the prompt writes '<zz>' as a bare word" in said[0]
    assert not np.array_equal(both, words)


def test_again_draws_an_older_textinv_comfy_picture_whose_bare_token_drew_the_embedding_as_it_was_drawn(sd1_dir,
                                                                                                         tmp_path):
    """A picture textinv drew under --emphasis comfy before a token written bare was words there records its prompt
    with the token bare (`a <zz> dog`), which drew the embedding: --again reads it as `embedding:<zz>`, the same
    picture; it drew the words, another picture. Its record lacks the mark newer comfy pictures carry."""
    from textinv.again import again_config

    zz = save_embedding(LearnedEmbedding("<zz>", {"text_encoder": torch.randn(2, 32) * 3}),
                        tmp_path / "zz.safetensors")[0]
    common = dict(n=1, steps=1, model=str(sd1_dir), embedding=[str(zz)], emphasis="comfy", negative_prompt="<zz>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the negative's <zz> is words)
        (path,) = generate(GenerateConfig(prompt=["a embedding:zz dog"], out=str(tmp_path / "a"), **common),
                           progress=False)
    (drawn,) = generate(GenerateConfig(prompt=["a embedding:zz dog"], out=str(tmp_path / "b"),
                                       **{**common, "negative_prompt": "embedding:zz"}), progress=False)
    older = _as_older_comfy_picture(drawn, tmp_path / "older.png", prompt=["a <zz> dog"], negative_prompt="<zz>")
    config, _ = again_config(older, {"out": str(tmp_path / "again"), "model": str(sd1_dir), "embedding": [str(zz)]})
    assert (config.prompt, config.negative_prompt) == (["a embedding:<zz> dog"], "embedding:<zz>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (again,) = generate(config, progress=False)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(drawn)))
    assert not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(drawn)))


def _as_older_comfy_picture(drawn, older, **settings):
    """The textinv comfy picture `drawn` saved as `older` as a textinv before a bare token was words there wrote it:
    its record without the comfy_bare_tokens mark, with `settings` (its prompts, as that textinv recorded them)."""
    from PIL.PngImagePlugin import PngInfo

    text = dict(Image.open(drawn).text)
    record = json.loads(text["textinv_settings"])
    assert record.pop("comfy_bare_tokens") == "words"
    record["settings"].update(settings)
    text["textinv_settings"] = json.dumps(record)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.open(drawn).save(older, pnginfo=info)
    return older


def test_again_names_an_older_comfy_pictures_token_glued_to_a_word_or_a_mark_as_the_tokenizer_read_it(sd1_dir,
                                                                                                      tmp_path):
    """CLIP's tokenizer cuts a learned token out of the text wherever it stands, so in a picture an older textinv
    drew under --emphasis comfy `of<zz>`, `[cat:<zz>:0.5]` and `<zz>-style` drew the embedding: --again left them
    bare, words now, another picture; and it wrote `<zz>.` as `embedding:<zz>.`, a name no file has, refused. Each is
    `embedding:<zz>`, set apart by a space from what it was glued to, which the tokenizer reads as the same ids."""
    from textinv.again import again_config

    zz = save_embedding(LearnedEmbedding("<zz>", {"text_encoder": torch.randn(2, 32) * 3}),
                        tmp_path / "zz.safetensors")[0]
    (drawn,) = generate(GenerateConfig(prompt=["a embedding:zz dog"], out=str(tmp_path / "a"), n=1, steps=1,
                                       model=str(sd1_dir), embedding=[str(zz)], emphasis="comfy"), progress=False)
    older = _as_older_comfy_picture(drawn, tmp_path / "older.png",
                                    prompt=["a photo of<zz>, [cat:<zz>:0.5] <zz>-style, embedding:zz <ZZ>."])
    config, _ = again_config(older, {"out": str(tmp_path / "again"), "model": str(sd1_dir), "embedding": [str(zz)]})
    assert config.prompt == ["a photo of embedding:<zz>, [cat:embedding:<zz>:0.5] embedding:<zz> -style, "
                             "embedding:zz embedding:<zz> ."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(config, progress=False)  # (each name finds the file)

def test_comfy_emphasis_finds_an_embeddings_file_by_its_exact_name_as_comfyui_on_linux(sd1_dir, tmp_path):
    """ComfyUI looks `embedding:NAME` up as a file, NAME or NAME.safetensors/.pt/.bin, which on Linux is exact:
    `embedding:easyneg` misses EasyNeg.pt, and `embedding:up` misses up.PT (only `embedding:up.PT` finds it), and
    ComfyUI then draws without it, warning. --emphasis comfy found them ignoring case; it now refuses the name,
    naming the file and how to write it. Outside comfy the names are read ignoring case, as the web UI reads them."""
    folder = tmp_path / "embeddings"
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), folder / "EasyNeg.pt", "a1111")
    up = tmp_path / "up.PT"
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), tmp_path / "up.pt", "a1111")
    (tmp_path / "up.pt").rename(up)

    def draw(out, prompt, embedding, mode="comfy"):
        return generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=1, model=str(sd1_dir),
                                       embedding=[str(embedding)], emphasis=mode), progress=False)

    with pytest.raises(ConfigError, match=r"embedding:easyneg in the prompt names \S+/EasyNeg.pt only ignoring "
                                          r"case: ComfyUI \(on Linux\) finds an embedding by its file's exact name, "
                                          r"and draws without it where none is; write embedding:EasyNeg"):
        draw("a", "a embedding:easyneg dog", folder)
    with pytest.raises(ConfigError, match=r"embedding:up in the prompt names \S+/up.PT only ignoring case: .* "
                                          r"write embedding:up.PT"):
        draw("b", "a embedding:up dog", up)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (each found, and drawn)
        draw("c", "a embedding:EasyNeg dog", folder)
        draw("d", "a embedding:sub/up.PT dog", up)
        draw("e", "a embedding:easyneg dog", folder, "original")


def test_comfy_emphasis_refuses_a_name_two_embeddings_folders_hold_and_takes_its_subfolder_or_suffix(sd1_dir,
                                                                                                      tmp_path):
    """ComfyUI finds `embedding:NAME` in any of its embeddings folders and their subfolders, searched in no fixed
    order (comfy/sd1_clip.py, expand_directory_list: a set), so a name two folders hold draws either file: it was
    refused as a clash of tokens with --token for the fix, which a folder's file does not take. It is refused naming
    both files and the fixes ComfyUI reads too; a subfolder written before the name tells them apart, as there, and
    in one folder NAME.safetensors comes before NAME.pt, as ComfyUI tries the suffixes in that order."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, seed in ((first, 1), (second / "style", 2), (tmp_path / "one", 3)):
        torch.manual_seed(seed)
        save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32) * 3}), folder / "easyneg.pt",
                       "a1111")
    torch.manual_seed(4)
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32) * 3}),
                   tmp_path / "one" / "easyneg.safetensors", "kohya")

    def draw(out, prompt, embedding):
        path = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=1, model=str(sd1_dir),
                                       embedding=[str(e) for e in embedding], emphasis="comfy"), progress=False)[0]
        return np.asarray(Image.open(path))

    with pytest.raises(TokenError, match=r"embedding:easyneg in the prompt finds both \S+/first/easyneg.pt and "
                                         r"\S+/second/style/easyneg.pt: ComfyUI looks a name up in each of its "
                                         r"embeddings folders and their subfolders, in no fixed order, so which one "
                                         r"it draws is not knowable; write the subfolder that tells them apart "
                                         r"\(embedding:style/easyneg\), give --embedding only the one meant, or "
                                         r"rename one of the files"):
        draw("a", "a embedding:easyneg dog", [first, second])
    with pytest.raises(TokenError, match=r"finds both \S+/first/easyneg.pt and \S+/second/style/easyneg.pt"):
        draw("b", "a embedding:easyneg dog", [first / "easyneg.pt", second / "style" / "easyneg.pt"])
    styled = draw("c", "a embedding:style/easyneg dog", [first, second])
    assert np.array_equal(styled, draw("d", "a embedding:easyneg dog", [second / "style" / "easyneg.pt"]))
    assert not np.array_equal(styled, draw("e", "a embedding:easyneg dog", [first]))
    # (one folder: the .safetensors file for the name alone, the .pt by its whole name)
    both = draw("f", "a embedding:easyneg embedding:easyneg.pt dog", [tmp_path / "one"])
    safetensors = draw("g", "a embedding:easyneg dog", [tmp_path / "one" / "easyneg.safetensors"])
    assert np.array_equal(draw("h", "a embedding:easyneg dog", [tmp_path / "one"]), safetensors)
    assert not np.array_equal(both, safetensors)


def test_comfy_emphasis_draws_case_twins_in_one_folder_each_by_its_exact_name(sd1_dir, tmp_path):
    """easyneg.pt and EasyNeg.pt are two files to ComfyUI on Linux, `embedding:easyneg` and `embedding:EasyNeg`:
    both were loaded for either name (the folder's names were compared ignoring case) and clashed as tokens, which
    the text encoders' tokenizer reads ignoring case. Each is drawn by its exact name alone, both in one prompt too,
    and the prompt the picture records draws it again alike."""
    import json

    folder, alone = tmp_path / "embeddings", tmp_path / "alone"
    for name, seed in (("easyneg", 1), ("EasyNeg", 2)):
        torch.manual_seed(seed)
        vectors = torch.randn(2, 32) * 3
        save_embedding(LearnedEmbedding("x", {"text_encoder": vectors}), folder / f"{name}.pt", "a1111")
        save_embedding(LearnedEmbedding("x", {"text_encoder": vectors}), alone / f"{name.lower()}{seed}.pt", "a1111")

    def draw(out, prompt, embedding):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (no twin is left unused)
            path = generate(GenerateConfig(prompt=[prompt], out=str(tmp_path / out), n=1, steps=1,
                                           model=str(sd1_dir), embedding=[str(embedding)], emphasis="comfy"),
                            progress=False)[0]
        return np.asarray(Image.open(path)), json.loads(Image.open(path).text["textinv_settings"])

    upper, _ = draw("a", "a embedding:EasyNeg dog", folder)
    assert np.array_equal(upper, draw("b", "a embedding:easyneg2 dog", alone / "easyneg2.pt")[0])
    lower, _ = draw("c", "a embedding:easyneg dog", folder)
    assert np.array_equal(lower, draw("d", "a embedding:easyneg1 dog", alone / "easyneg1.pt")[0])
    both, record = draw("e", "a embedding:easyneg embedding:EasyNeg dog", folder)
    assert np.array_equal(both, draw("f", "a embedding:easyneg1 embedding:easyneg2 dog", alone)[0])
    assert np.array_equal(both, draw("g", record["settings"]["prompt"][0], folder)[0])
    # a twin given as a file of its own that no name finds exactly is left out, said; a third twin has no name left
    with pytest.warns(UserWarning, match=r"easyneg.pt is left out: no embedding:NAME in the prompts finds it by its "
                                         r"file's exact name, as ComfyUI \(on Linux\) finds a file; write "
                                         r"embedding:easyneg where the concept goes"):
        generate(GenerateConfig(prompt=["a embedding:EasyNeg dog"], out=str(tmp_path / "h"), n=1, steps=1,
                                model=str(sd1_dir), embedding=[str(folder / "easyneg.pt"), str(folder / "EasyNeg.pt")],
                                emphasis="comfy"), progress=False)
    save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), folder / "EASYNEG.pt", "a1111")
    with pytest.raises(TokenError, match=r"(?i)easyneg.pt: every name that finds it in a prompt \(embedding:easyneg, "
                                         r"embedding:easyneg.pt\) is, ignoring case as the text encoders' tokenizers "
                                         r"read a prompt, another embedding's given beside it; rename the file"):
        draw("i", "a embedding:easyneg embedding:EasyNeg embedding:EASYNEG dog", folder)


def test_zero_negative_guides_against_zeros_on_sd1_as_comfyuis_conditioning_zero_out(sd1_dir, tmp_path):
    """ComfyUI's ConditioningZeroOut on a sampler's negative guides against zeros on any model; textinv drew zeros
    on SDXL alone (for an empty negative), so an SD 1.x picture drawn so could not be redrawn. A negative prompt
    beside it is refused, before any drawing."""
    import json
    from dataclasses import replace

    from textinv.models import load_model

    model = load_model(sd1_dir)
    seen = _conditioning_seen(model)
    config = GenerateConfig(prompt=["a dog"], zero_negative=True, out=str(tmp_path / "a"), n=1, steps=1,
                            model=str(sd1_dir))
    (png,) = generate(config, model=model, progress=False)
    hidden = seen[0][0]
    assert not hidden[:1].any() and hidden[1:].any()  # (the negative's row zeros, the prompt's not)
    assert json.loads(Image.open(png).text["textinv_settings"])["settings"]["zero_negative"] is True
    with pytest.raises(ConfigError, match="zero_negative= guides against zeros in place of a negative prompt: "
                                          "leave negative_prompt= out, or zero_negative="):
        generate(replace(config, negative_prompt="blurry"), model=model, progress=False)


def test_prompt_l_is_refused_where_it_cannot_apply_before_any_drawing(sd1_dir, tmp_path):
    """SDXL's CLIP-L text (ComfyUI's CLIPTextEncodeSDXL text_l) on a model of one text encoder, beside a hires
    prompt (whose pass would have none) or AND (sub-prompts drawn apart): refused, naming the fix."""
    common = dict(n=1, steps=1, out=str(tmp_path / "a"), emphasis="comfy")
    for config, message in (
            (GenerateConfig(prompt=["a dog"], prompt_l="a cat", model=str(sd1_dir), **common),
             "prompt_l= and negative_prompt_l= give SDXL's CLIP-L its own text; .* has one text encoder"),
            (GenerateConfig(prompt=["a dog"], negative_prompt_l="dark", hires_scale=2, hires_prompt="a cat",
                            **common), "negative_prompt_l= gives the prompts' CLIP-L text, which the hires fix's"),
            (GenerateConfig(prompt=["a dog AND a cat"], prompt_l="a cat", **common),
             "prompt_l= gives a prompt's CLIP-L text whole, which a prompt of AND sub-prompts draws apart"),
            # (a LoRA tag there was drawn as words, the LoRA not applied)
            (GenerateConfig(prompt=["a dog"], negative_prompt_l="<lora:film:0.5> dark", **common),
             "negative_prompt_l='<lora:film:0.5> dark' holds a LoRA tag, which applies to the whole picture: "
             "write it in prompt=")):
        with pytest.raises(ConfigError, match=message):
            generate(config, progress=False)
    assert not list((tmp_path / "a").glob("*.png"))


def test_a_run_refused_once_its_model_has_loaded_leaves_no_empty_folder_it_made(sd1_dir, tmp_path):
    """--out is made before the model loads (a file in the way is said at once); a refusal that needs the model
    (here --prompt-l on a model of one text encoder) takes the folder away again where the run made it and wrote
    nothing there, and leaves one that was there before, empty or not."""
    settings = dict(prompt=["a dog"], prompt_l="a cat", model=str(sd1_dir), n=1, steps=1, emphasis="comfy")
    made = tmp_path / "new" / "out"
    with pytest.raises(ConfigError, match="prompt_l="):
        generate(GenerateConfig(out=str(made), **settings), progress=False)
    assert not made.exists()
    there = tmp_path / "there"
    there.mkdir()
    with pytest.raises(ConfigError, match="prompt_l="):
        generate(GenerateConfig(out=str(there), **settings), progress=False)
    assert there.is_dir()


def test_a_run_folder_copied_from_a_mac_names_its_token_named_files_in_either_unicode_form(sd1_dir, images,
                                                                                           tmp_path):
    """A run's token-named folder and file (`<café>`: café/café.pt) come back from macOS with the accent as a
    combining character (NFD): --embedding with the run's folder, or the concept's, still finds the file."""
    import unicodedata

    from textinv.config import TrainConfig
    from textinv.run_folder import embedding_file
    from textinv.train import train

    token = "<caf\u00e9>"
    common = dict(model=str(sd1_dir), steps=1, batch=1, save_every=0, sample_every=0, format="a1111")
    train(TrainConfig(images=str(images), token=token, out=str(tmp_path / "one"), **common), progress=False)
    train(TrainConfig(concepts=[f"{images}={token}", f"{images}=<b>"], out=str(tmp_path / "two"), **common),
          progress=False)
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    (tmp_path / "one" / "caf\u00e9.pt").rename(tmp_path / "one" / f"{nfd}.pt")
    (tmp_path / "two" / "caf\u00e9" / "caf\u00e9.pt").rename(tmp_path / "two" / "caf\u00e9" / f"{nfd}.pt")
    (tmp_path / "two" / "caf\u00e9").rename(tmp_path / "two" / nfd)
    assert embedding_file(tmp_path / "one") == tmp_path / "one" / f"{nfd}.pt"
    assert embedding_file(tmp_path / "two" / nfd) == tmp_path / "two" / nfd / f"{nfd}.pt"
    assert load_embedding(embedding_file(tmp_path / "two" / nfd)).token == token


def test_embedding_files_named_on_a_mac_answer_to_a_typed_prompt(sd1_dir, tmp_path):
    """macOS keeps café.pt with the accent apart (NFD); a typed prompt has it composed (NFC). The file names were
    compared byte for byte with the prompt's words: a web UI embeddings folder's café.pt was not found, a single
    file did not answer to its name, and ComfyUI's embedding:café named no embedding."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    folder = tmp_path / "embeddings"
    folder.mkdir()
    save_embedding(LearnedEmbedding("whatever", {"text_encoder": torch.randn(1, 32) * 3}), folder / f"{nfd}.pt",
                   "a1111")
    single = tmp_path / f"{nfd}2.pt"
    save_embedding(LearnedEmbedding("stored", {"text_encoder": torch.randn(1, 32) * 3}), single, "a1111")
    assert sorted(p.name for p in folder.iterdir()) == [f"{nfd}.pt"]  # (the disk keeps the bytes it was given)

    def draw(out, prompt, embedding):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (an embedding not found, or not named by the prompt, is warned about)
            (png,) = generate(GenerateConfig(prompt=[prompt], embedding=[str(embedding)], out=str(tmp_path / out),
                                             n=1, steps=1, model=str(sd1_dir)), progress=False)
        return Image.open(png).text["parameters"]

    assert draw("a", "a caf\u00e9 dog", folder).startswith("a caf\u00e9 dog\n")
    assert "TI hashes: \"caf\u00e9: " in draw("b", "a caf\u00e9 dog", folder)  # (drawn with it, under its typed name)
    assert "TI hashes: \"caf\u00e92: " in draw("c", "a caf\u00e92 dog", single)
    assert draw("d", "a embedding:caf\u00e92 dog", single).startswith("a stored dog\n")  # (its token, as before)
    # a prompt pasted from a Finder file name is itself decomposed: read as the text encoder's tokenizer reads it
    assert draw("e", f"a {nfd} dog", folder).startswith("a caf\u00e9 dog\n")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "e" / next(p.name for p in (tmp_path / "e").iterdir()))),
                          np.asarray(Image.open(tmp_path / "a" / next(p.name for p in (tmp_path / "a").iterdir()))))


def test_a_lora_file_named_on_a_mac_is_found_by_a_typed_tag(tmp_path):
    """<lora:café:0.8> typed (NFC) against café.safetensors written on macOS (NFD): compared byte for byte, the file
    was 'not in --lora-dir'."""
    import unicodedata

    from textinv.emphasis import lora_tags
    from textinv.loras import lora_files

    nfd = unicodedata.normalize("NFD", "Caf\u00e9")
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / f"{nfd}.safetensors").write_bytes(b"")  # (found by name; read only when applied)
    tags = lora_tags("a dog <lora:caf\u00e9:0.8> <lora:CAF\u00c9:0.5>")[1]
    assert lora_files(tags, [str(tmp_path)]) == {"caf\u00e9": tmp_path / "styles" / f"{nfd}.safetensors",
                                                 "CAF\u00c9": tmp_path / "styles" / f"{nfd}.safetensors"}


def test_a_renamed_embedding_file_answers_to_its_file_name_as_in_the_web_ui(sd1_dir, tmp_path):
    """A downloaded charturnerv2.pt whose A1111 record says name "charturner": the web UI and ComfyUI call it
    "charturnerv2" (a file's name, see FORMATS.md), diffusers "charturner". A prompt written for the web UI must draw
    it as charturnerv2, not as the added token "charturner" plus a stray "v2"; a prompt with the stored name still
    works."""
    vectors = torch.randn(2, 32) * 3
    path = tmp_path / "charturnerv2.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "charturner",
                "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)

    def draw(out, prompt):
        (png,) = generate(GenerateConfig(prompt=[prompt], embedding=[str(path)], out=str(tmp_path / out), n=1,
                                         steps=2, model=str(sd1_dir)), progress=False)
        return Image.open(png)

    web_ui = draw("a", "a charturnerv2 sheet")
    assert web_ui.text["expanded_prompt"] == "a charturnerv2 charturnerv2_1 sheet"
    stored = draw("b", "a charturner sheet")
    assert stored.text["expanded_prompt"] == "a charturner charturner_1 sheet"
    assert np.array_equal(np.asarray(web_ui), np.asarray(stored))  # the same vectors under either name


# ---------------------------------------------------------------------------------------------------------------
# Review against the A1111 web UI's own code (modules/prompt_parser.py, sd_hijack_clip.py, sd_emphasis.py,
# sd_samplers_cfg_denoiser.py)


def test_sdxl_emphasis_restores_each_text_encoders_mean_on_its_own(tmp_path):
    """The web UI wraps SDXL's two text encoders one by one (sd_hijack: FrozenCLIPEmbedderForSDXLWithCustomWords,
    FrozenOpenCLIPEmbedder2WithCustomWords), and each applies the emphasis to its own output and scales it back to
    its own mean (sd_emphasis.EmphasisOriginal) before the conditioner lays the two side by side."""
    from textinv.conditioning import encode_prompts
    from textinv.tiny import build_tiny_xl_pipeline

    build_tiny_xl_pipeline().save_pretrained(tmp_path / "xl")
    model = load_model(tmp_path / "xl")
    first = model.widths[0]
    plain = encode_prompts(model, ["a photo of a dog"])[0][0]
    weighted = encode_prompts(model, ["a photo of a (dog:1.5)"])[0][0]
    for half in (slice(0, first), slice(first, None)):
        torch.testing.assert_close(weighted[:, half].mean(), plain[:, half].mean(), atol=1e-6, rtol=1e-5)
        factor = plain[:, half].mean() / (plain[:, half] * torch.tensor(
            [1.5 if i == 5 else 1.0 for i in range(77)])[:, None]).mean()
        torch.testing.assert_close(weighted[2, half], plain[2, half] * factor, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weighted[5, half], plain[5, half] * 1.5 * factor, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt", [
    "a | b [cat:dog:2]",  # a bar outside an alternation
    "[cat:dog:2] [x|y",  # an alternation never closed
    "[cat:dog:2] [x:y|z]",  # a bar in a bracket that is no alternation
])
def test_a_stray_bar_leaves_the_whole_prompt_unscheduled_as_in_the_web_ui(prompt):
    """The web UI's schedule grammar has `|` only between an alternation's options (`plain` excludes it and `start`
    takes only stray `[ ] ( ) :`), so any other `|` fails the parse and the prompt is one text for every step
    (get_learned_conditioning_prompt_schedules: `except lark.exceptions.LarkError: return [[steps, prompt]]`)."""
    from textinv.emphasis import prompt_schedule

    assert prompt_schedule(prompt, 4) == [(4, prompt)]
    assert prompt_schedule(r"a \| b [cat:dog:2]", 4) == [(2, r"a \| b cat"), (4, r"a \| b dog")]  # escaped: fine
    assert prompt_schedule("[a|b] [cat:dog:2]", 2) == [(1, "a cat"), (2, "b cat")]


def test_a_backslash_that_escapes_nothing_is_dropped_as_in_the_web_ui():
    """parse_prompt_attention's `\\\\` alternative (a backslash before anything but ( ) [ ] \\) appends text[1:],
    an empty string: the backslash is not read as a word."""
    from textinv.emphasis import parse

    assert parse(r"a\b c") == [("ab c", 1.0)]
    assert parse("end\\") == [("end", 1.0)]
    assert parse(r"(a\:1.5)") == [("a", 1.5)]  # (it escapes no colon either)
    assert parse(r"\\ and \(x\)") == [("\\ and (x)", 1.0)]


@pytest.mark.parametrize("when", ["1e400", "-1e400", "1.5e400"])
def test_an_edit_step_too_large_for_a_float_is_cut_to_the_steps_not_a_crash(when):
    from textinv.emphasis import prompt_schedule

    schedule = prompt_schedule(f"[cat:dog:{when}]", 4)
    assert schedule == ([(4, "dog")] if when.startswith("-") else [(4, "cat")])


@pytest.mark.parametrize("prompt, negative", [("a photo of a " + "dog " * 80, "ugly"),  # a long prompt,
                                              ("a dog", "ugly, " * 50)])  # a long negative
def test_a_prompt_and_negative_of_different_lengths_are_each_read_at_their_own_length(sd1_dir, prompt, negative):
    """The web UI does not pad the shorter of the prompt and its negative by default (shared_options:
    pad_cond_uncond=False, "changes seeds"): CFGDenoiser.forward runs each through the UNet at its own length
    (`else:` branch when tensor.shape[1] != uncond.shape[1]); padding with empty chunks adds keys that its
    cross-attention reads, and changes the picture."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    calls = []
    model.unet.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs, out)),
                                     with_kwargs=True)
    render(model, [prompt], [0], steps=2, guidance=7.5, negative_prompt=negative, sampler="euler")
    cond, uncond = encode_prompts(model, [prompt])[0], encode_prompts(model, [negative])[0]
    assert calls
    hooks = model.unet._forward_hooks.copy()
    model.unet._forward_hooks.clear()
    for args, kwargs, out in calls:
        sample, t = args[0], args[1]
        own = [model.unet(sample[i:i + 1], t, encoder_hidden_states=h, return_dict=False)[0]
               for i, h in enumerate((uncond, cond))]
        torch.testing.assert_close(out[0], torch.cat(own), atol=1e-5, rtol=1e-4)
    model.unet._forward_hooks.update(hooks)


@pytest.mark.parametrize("prompt, negative, row", [
    ("[a red dog:a photo of a " + "dog " * 80 + ":1]", "ugly", 1),  # the prompt two chunks long from step 2 on
    ("a red dog", "[ugly:a photo of a " + "dog " * 80 + ":1]", 0),  # the negative
    ("[a red dog:a photo of a " + "dog " * 80 + ":1] AND a cat", "ugly", None),  # a sub-prompt: both rows
])
def test_a_prompt_edited_to_another_length_is_read_at_each_steps_own_length(sd1_dir, prompt, negative, row):
    """The web UI reads each step's conditioning at that step's text's length (reconstruct_cond_batch picks one
    text's tensor; CFGDenoiser.forward, pad_cond_uncond off): a prompt or negative of one chunk, edited into two
    after step 1, is read at 77 tokens in steps 0-1, not with the later text's second chunk's padding."""
    model = fresh_model(sd1_dir)
    unet = model.pipeline.unet
    masks = []
    forward = unet.forward

    def record(*args, **kwargs):  # (what the UNet is called with once every hook has run)
        masks.append(kwargs.get("encoder_attention_mask"))
        return forward(*args, **kwargs)

    unet.forward = record
    try:
        render(model, [prompt], [0], steps=4, guidance=7.5, negative_prompt=negative, sampler="euler")
    finally:
        del unet.forward
    assert len(masks) == 4 and all(m is not None and m.shape[1] == 154 for m in masks)
    rows = [row] if row is not None else [1, 2]
    for call, mask in enumerate(masks):
        for r in rows:
            assert int(mask[r].sum()) == (77 if call <= 1 else 154), (call, r)


# ---------------------------------------------------------------------------------------------------------------
# User review: a training run's --out folder, whatever --format it saved


def test_a_training_runs_folder_draws_its_token_whatever_format_it_saved(sd1_dir, images, tmp_path):
    """`textinv generate --embedding runs/my-dog` after `textinv train --format a1111` (or an SDXL run, whose
    default file is named after the token without brackets, or a run of several concepts) drew the prompt without
    the concept: the folder was read as a web UI embeddings folder, where the token is the file name ('my-dog'),
    so the '<my-dog>' the user trained was not loaded (a warning only)."""
    import warnings

    from textinv.config import TrainConfig
    from textinv.train import train

    model = fresh_model(sd1_dir)
    common = dict(steps=2, batch=2, save_every=0, sample_every=0, lr=0.5)
    train(TrainConfig(images=str(images), token="<zq>", init="dog", out=str(tmp_path / "run"), format="a1111",
                      **common), model=model, progress=False)
    train(TrainConfig(concepts=[f"{images}=<ka>=dog", f"{images}=<kb>=cat"], out=str(tmp_path / "pets"),
                      format="kohya", **common), model=model, progress=False)

    def draw(out, prompt, folder):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (no "no embedding in the folder ... is named" warning)
            paths = generate(GenerateConfig(prompt=[prompt], embedding=[str(tmp_path / folder)],
                                            out=str(tmp_path / out), n=1, steps=2, model=str(sd1_dir)),
                             progress=False)
        return Image.open(paths[0]).text["expanded_prompt"]

    assert draw("a", "a photo of <zq>", "run") == "a photo of <zq>"
    assert draw("b", "<ka> and <kb>", "pets") == "<ka> and <kb>"
    assert draw("c", "a photo of <kb>", "pets/kb") == "a photo of <kb>"
    with pytest.raises(ConfigError, match="training run of 2 concepts"):
        generate(GenerateConfig(prompt=["<ka>"], embedding=[str(tmp_path / "pets")], token=["<x>"],
                                out=str(tmp_path / "d"), n=1, steps=2, model=str(sd1_dir)), progress=False)


# --- generate --again: a picture drawn again from its PNG text --------------------------------------------------


def _pixels(path):
    return np.asarray(Image.open(path))


def test_again_draws_a_picture_again_bit_for_bit_from_another_working_directory(sd1_dir, tmp_path, monkeypatch):
    """The record held the prompt, seed and sizes but not --token, --lora-dir, --vae or the precision, and paths as
    typed: a picture drawn with a renamed embedding, a LoRA and a VAE, from relative paths, could not be drawn
    again. It also draws the picture in the batch it came from: alone, a pixel can round another way."""
    import json
    import os

    from textinv.cli import main
    from textinv.tiny import _tiny_vae

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "Lora").mkdir(parents=True)
    elsewhere.mkdir()
    save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32) * 3}), work / "q.safetensors")
    _save_tiny_lora(work / "Lora", "mystyle")
    torch.manual_seed(5)
    _tiny_vae().save_pretrained(work / "vae")
    monkeypatch.chdir(work)
    assert main(["generate", "--model", os.path.relpath(sd1_dir, work), "--embedding", "q.safetensors", "--token",
                 "<zz>", "--lora-dir", "Lora", "--vae", "vae", "--prompt", "a photo of <zz> <lora:mystyle:0.7>",
                 "-n", "3", "--seed", "5", "--width", "32", "--batch-size", "3", "--steps", "3", "--out", "r",
                 "--metadata", "full"]) == 0
    picture = work / "r" / "000-a-photo-of-zz-s6.png"  # the middle one of its batch
    record = json.loads(Image.open(picture).text["textinv_settings"])
    assert record["batch_seeds"] == [5, 6, 7] and record["settings"]["token"] == ["<zz>"]
    assert record["settings"]["lora_dir"] == [str(work / "Lora")] and record["settings"]["precision"] == "fp32"

    monkeypatch.chdir(elsewhere)
    assert main(["generate", "--again", str(picture), "--out", "again"]) == 0
    assert [p.name for p in (elsewhere / "again").iterdir()] == [picture.name]
    assert np.array_equal(_pixels(elsewhere / "again" / picture.name), _pixels(picture))

    # flags beside it override: other seeds for variations, another prompt with every other setting kept
    assert main(["generate", "--again", str(picture), "--seed", "9", "-n", "2", "--out", "var"]) == 0
    assert sorted(p.name for p in (elsewhere / "var").iterdir()) == ["000-a-photo-of-zz-s10.png",
                                                                     "000-a-photo-of-zz-s9.png"]
    assert main(["generate", "--again", str(picture), "--prompt", "a photo of <zz>", "--out", "new"]) == 0
    (new,) = (elsewhere / "new").iterdir()
    settings = json.loads(Image.open(new).text["textinv_settings"])["settings"]
    assert settings.pop("prompt") == ["a photo of <zz>"]
    assert settings == {k: v for k, v in record["settings"].items() if k != "prompt"}


def test_a_hub_models_revision_and_variant_are_recorded_in_the_picture_and_again_draws_with_them(hub_cache,
                                                                                                   tmp_path):
    """--revision and --variant load that branch's variant weights (not main's); the picture's record and its
    text hold both, and --again draws it again from them bit for bit."""
    import json

    from conftest import cache_branch, cache_snapshot
    from textinv.cli import main

    build_tiny_pipeline("sd1", seed=4).save_pretrained(cache_snapshot(hub_cache, "me/old"))
    branch = cache_branch(hub_cache, "me/old", "v1")
    build_tiny_pipeline("sd1", seed=5).save_pretrained(branch)
    build_tiny_pipeline("sd1", seed=6).to(torch.float16).save_pretrained(branch, variant="fp16")
    drawn = ["--prompt", "a photo", "-n", "1", "--seed", "3", "--width", "32", "--steps", "2"]
    assert main(["generate", "--model", "me/old", "--revision", "v1", "--variant", "fp16", *drawn,
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["generate", "--model", "me/old", *drawn, "--out", str(tmp_path / "main")]) == 0
    (picture,) = (tmp_path / "r").iterdir()
    text = Image.open(picture).text
    settings = json.loads(text["textinv_settings"])["settings"]
    assert settings["model"] == "me/old" and settings["revision"] == "v1" and settings["variant"] == "fp16"
    assert text["revision"] == "v1" and text["variant"] == "fp16"  # (each setting under its own key)
    assert not np.array_equal(_pixels(picture), _pixels(tmp_path / "main" / picture.name))  # (another model)
    assert main(["generate", "--again", str(picture), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(_pixels(tmp_path / "again" / picture.name), _pixels(picture))


def test_again_draws_a_picture_in_the_batch_it_was_drawn_in(sd1_dir, tmp_path):
    """A batch's kernels sum in another order than one picture's: drawn alone, a picture of a batch of 3 can come
    out a pixel off (on this CPU, seed 6's did). Its batch is drawn again, and only the picture is written."""
    from textinv.again import again_config

    model = fresh_model(sd1_dir)
    calls = []
    model.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    paths = generate(GenerateConfig(prompt=["a dog"], n=3, seed=5, steps=3, width=32, batch_size=3,
                                    out=str(tmp_path / "r"), model=str(sd1_dir), metadata="full"), model=model,
                     progress=False)
    calls.clear()
    config, keep = again_config(paths[1], {"out": str(tmp_path / "again")})
    (again,) = generate(config, model=model, progress=False, keep_seeds=keep)
    assert set(calls) == {6} and again.name == paths[1].name  # 3 pictures a call (and their negatives), 1 written
    assert np.array_equal(_pixels(again), _pixels(paths[1]))
    calls.clear()
    config, keep = again_config(paths[1], {"out": str(tmp_path / "alone"), "batch_size": 1})
    assert keep is None and (config.seed, config.n) == (6, 1)  # a flag beside it: drawn alone, as asked


def test_again_reads_the_web_uis_parameters_and_says_what_it_cannot_use(sd1_dir, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config

    def picture(parameters):
        info = PngInfo()
        info.add_text("parameters", parameters)
        Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)
        return tmp_path / "webui.png"

    path = picture("a (red:1.2) cat\nwith a hat\nNegative prompt: blurry, ugly\nSteps: 4, Sampler: DPM++ 2M, "
                   "Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 24x16, Model hash: abc123, "
                   'Model: v1-5-pruned, Clip skip: 2, Lora hashes: "a: 1f, b: 2e", Version: v1.9.4')
    with pytest.raises(ConfigError, match=r"webui.png was drawn by the A1111 web UI \(Model v1-5-pruned, Model hash "
                                          r"abc123\).*give it with --model"), warnings.catch_warnings():
        warnings.simplefilter("error")  # (the error first: no warning about what a refused redraw would not apply)
        again_config(path, {})
    with pytest.warns(UserWarning, match="not applied.*: Model hash, Model, Version"):
        config, keep = again_config(path, {"model": str(sd1_dir)})
    assert (config.prompt, config.negative_prompt) == (["a (red:1.2) cat\nwith a hat"], "blurry, ugly")
    assert (config.steps, config.sampler, config.guidance, config.seed) == (4, "dpm++2m_karras", 6.5, 1234)
    assert (config.width, config.height, config.clip_skip, config.n, keep) == (24, 16, 2, 1, None)
    path = picture("a cat\nSteps: 4, Sampler: DPM fast, Seed: 3, Size: 16x16")
    with pytest.raises(ConfigError, match="sampler 'DPM fast', which textinv does not have: choose one with --sampler"):
        again_config(path, {"model": str(sd1_dir)})
    assert again_config(path, {"model": str(sd1_dir), "sampler": "euler"})[0].sampler == "euler"
    # the web UI's Heun, DPM2 and PLMS are textinv's; a Karras one by its old name or its Schedule type (v1.9 on)
    for text, ours in [("Sampler: Heun", "heun"), ("Sampler: DPM2 a Karras", "dpm2_a_karras"), ("Sampler: PLMS", "plms"),
                       ("Sampler: DPM2, Schedule type: Karras", "dpm2_karras"), ("Sampler: DPM2 a", "dpm2_a"),
                       ("Sampler: DPM++ 2S a, Schedule type: Karras", "dpm++2s_a_karras"),
                       ("Sampler: DPM++ 2S a, Schedule type: Automatic", "dpm++2s_a_karras"),
                       ("Sampler: DPM++ 2S a, Schedule type: Exponential", "dpm++2s_a_exponential"),
                       ("Sampler: DPM++ 2S a, Schedule type: Uniform", "dpm++2s_a"),
                       ("Sampler: DPM++ 2S a Karras", "dpm++2s_a_karras"), ("Sampler: Restart", "restart_karras"),
                       ("Sampler: Restart, Schedule type: Uniform", "restart"), ("Sampler: LCM", "lcm"),
                       ("Sampler: LCM, Schedule type: Automatic", "lcm"),
                       ("Sampler: LCM, Schedule type: Karras", "lcm_karras")]:
        path = picture(f"a cat\nSteps: 4, {text}, Seed: 3, Size: 16x16")
        assert again_config(path, {"model": str(sd1_dir)})[0].sampler == ours, text


def test_again_checks_the_lora_files_found_against_a_web_ui_pictures_lora_hashes(sd1_dir, tmp_path):
    """A web UI picture's Lora hashes were named 'not applied'; `--again` with `--lora-dir` now tells a LoRA file the
    prompt's tag finds there that is not the one the picture was drawn with (a retrained or other version)."""
    from PIL.PngImagePlugin import PngInfo
    from safetensors.torch import load_file, save_file

    from textinv.again import again_config

    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.mkdir(), wrong.mkdir()
    _save_tiny_lora(right, "my,style")  # (the web UI's hashes list it as 'mystyle')
    tensors = load_file(str(right / "my,style.safetensors"))
    save_file({k: v * 2 for k, v in tensors.items()}, str(wrong / "my,style.safetensors"))
    data = (right / "my,style.safetensors").read_bytes()
    short = _webui_short_hash(data[8 + int.from_bytes(data[:8], "little"):])
    info = PngInfo()
    info.add_text("parameters", f'a cat <lora:my,style:0.7>\nSteps: 2, Seed: 3, Size: 16x16, Lora hashes: "mystyle: '
                                f'{short}", Version: v1')
    Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)

    def said(flags):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again_config(tmp_path / "webui.png", {"model": str(sd1_dir), **flags})
        return " ".join(str(w.message) for w in caught)

    assert "other LoRA files" not in said({"lora_dir": [str(right)]})
    assert f"other LoRA files than {wrong / 'my,style.safetensors'} (its hash begins" in said({"lora_dir": [str(wrong)]})
    assert "other LoRA files" not in said({"lora_dir": [str(wrong)], "prompt": ["a cat"]})  # (no tag: no LoRA used)
    assert "not applied from its A1111 parameters: Version (" in said({})  # (Lora hashes are used now)


def test_again_on_a_web_ui_picture_drawn_with_its_own_vae_names_the_vae_flag(sd1_dir, tmp_path):
    """A web UI picture's `VAE` and `VAE hash` are not applied (textinv draws with the model's VAE unless --vae is
    given): the note named --model, --embedding and --lora-dir as what gives such files, never --vae."""
    def said(parameters):
        picture = web_ui_picture(tmp_path / "webui.png", f"a cat\nSteps: 2, Seed: 3, Size: 16x16, {parameters}"
                                                         f"Version: v1")
        return again_warned(picture, {"model": str(sd1_dir)})[1]

    assert "--vae gives its VAE (sdxl_vae.safetensors); --model" in said(
        "VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, ")
    assert "--vae gives its VAE; --model" in said("VAE hash: 235745af8d, ")
    assert "--vae" not in said("")


def _exif_picture(path, comment, fmt=None, pnginfo=None):
    """A picture whose EXIF holds `comment` as its UserComment's raw bytes, as the web UI saves a JPEG or WebP."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment  # the Exif sub-IFD's UserComment
    extra = {"pnginfo": pnginfo} if pnginfo else {}
    Image.new("RGB", (8, 8)).save(path, format=fmt, exif=exif.tobytes(), **extra)  # (bytes: an AVIF drops an Exif)
    return path


_WEBUI_TEXT = ("a (red:1.2) café cat\nwith a hat\nNegative prompt: blurry, ugly\nSteps: 4, Sampler: DPM++ 2M, "
               "Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 24x16, Model hash: abc123, "
               'Model: v1-5-pruned, Clip skip: 2, Lora hashes: "a: 1f, b: 2e", Version: v1.9.4')


@pytest.mark.parametrize("name, fmt, comment", [
    # what the web UI writes (piexif's UserComment "unicode": the character code, then UTF-16 big-endian)
    ("webui.jpg", "JPEG", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16-be")),
    ("webui.webp", "WEBP", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16-be")),
    ("webui.avif", "AVIF", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16-be")),
    # other writers: UTF-16 in the EXIF's little-endian order, or with a byte-order mark; UTF-8 under "ASCII"
    ("le.jpg", "JPEG", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16-le")),
    ("bom.webp", "WEBP", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16")),
    ("ascii.jpg", "JPEG", b"ASCII\0\0\0" + _WEBUI_TEXT.encode("utf-8") + b"\0"),
])
def test_again_reads_the_web_uis_exif_user_comment_as_it_reads_a_pngs_parameters(sd1_dir, tmp_path, name, fmt,
                                                                                   comment):
    """The web UI saves a JPEG, WebP or AVIF's generation parameters in its EXIF UserComment, and that is how its
    pictures are shared; --again refused them ("a JPEG file"). Read, they give the PNG's settings and warnings."""
    from PIL import features
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config, read_picture

    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    info = PngInfo()
    info.add_text("parameters", _WEBUI_TEXT)
    png = tmp_path / "webui.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    path = _exif_picture(tmp_path / name, comment, fmt)
    assert read_picture(path).settings == read_picture(png).settings
    assert read_picture(path).settings["prompt"] == ["a (red:1.2) café cat\nwith a hat"]
    with pytest.raises(ConfigError, match=rf"{name} was drawn by the A1111 web UI \(Model v1-5-pruned.*--model"):
        again_config(path, {})
    said = {}
    for picture in (png, path):
        with pytest.warns(UserWarning, match="not applied") as caught:
            config, keep = again_config(picture, {"model": str(sd1_dir)})
        said[picture] = ([str(w.message).replace(str(picture), "PICTURE") for w in caught], config, keep)
    assert said[png] == said[path]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_drawn_jpeg_or_webp_given_as_an_embedding_is_pointed_to_again(tmp_path, fmt):
    """A web UI picture (its settings in EXIF) given as --embedding is named a drawn picture with the command that
    redraws it; a plain one is told to use the embedding's file. (A JPEG was "neither safetensors, ...".)"""
    from textinv.formats import load_embedding

    drawn = _exif_picture(tmp_path / f"drawn.{fmt.lower()}", b"UNICODE\0" + _WEBUI_TEXT.encode("utf-16-be"), fmt)
    with pytest.raises(FormatError, match=r"drawn picture .*textinv generate --again .*drawn\."):
        load_embedding(drawn)
    plain = tmp_path / f"plain.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(plain, format=fmt)
    with pytest.raises(FormatError, match=r"plain\.\w+: this image has no .*use the embedding's \.pt"):
        load_embedding(plain)
    # a camera's photo: cameras write a UserComment too, padding or their own text, which --again refuses
    for name, comment in (("padded", b"ASCII\0\0\0" + b" " * 40), ("camera", b"ASCII\0\0\0Shot at golden hour")):
        photo = _exif_picture(tmp_path / f"{name}.{fmt.lower()}", comment, fmt)
        with pytest.raises(FormatError, match=rf"{name}\.\w+: this image has no .*use the embedding's \.pt"):
            load_embedding(photo)


def test_again_reads_a_pngs_text_before_its_exif_and_refuses_a_cameras_comment(tmp_path, capsys):
    """A PNG's own text comes first (an EXIF beside it may be a camera's); a comment that is no web UI text, or one
    only padding, is refused naming the file, not read as a prompt."""
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import read_picture
    from textinv.cli import main

    def webui(seed):
        return b"UNICODE\0" + f"a cat\nSteps: 4, Seed: {seed}, Size: 16x16".encode("utf-16-be")

    info = PngInfo()
    info.add_text("parameters", "a dog\nSteps: 4, Seed: 1, Size: 16x16")
    both = _exif_picture(tmp_path / "both.png", webui(2), pnginfo=info)
    assert read_picture(both).settings["seed"] == 1
    assert read_picture(_exif_picture(tmp_path / "exif.png", webui(3))).settings["seed"] == 3
    camera = _exif_picture(tmp_path / "camera.jpg", b"ASCII\0\0\0Shot at golden hour, ND filter")
    padded = _exif_picture(tmp_path / "padded.jpg", b"ASCII\0\0\0" + b" " * 40)
    with pytest.raises(ConfigError, match=r"camera.jpg: its EXIF UserComment 'Shot at golden hour, ND filter' is "
                                          r"not the web UI's generation parameters"):
        read_picture(camera)
    with pytest.raises(ConfigError, match=r"padded.jpg holds no generation settings"):
        read_picture(padded)
    assert main(["generate", "--again", str(camera)]) == 2
    assert "textinv generate: error: --again" in capsys.readouterr().err


def test_again_refuses_a_picture_without_settings_and_an_a1111_embedding_png(tmp_path, capsys):
    from textinv.again import read_picture
    from textinv.cli import main

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (emb,) = save_embedding(LearnedEmbedding("<e>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "e.png",
                            "a1111-png")
    with Image.open(emb) as image:  # (an image host's copy: its text chunk stripped, the pixels' copy kept)
        image.convert("RGB").save(tmp_path / "hosted.png")
    cases = [("plain.png", r"plain.png holds no generation settings \(no textinv record, no A1111 'parameters' "
                           r"text, no ComfyUI 'prompt' graph, no EXIF UserComment\): give a picture that textinv, "
                           r"the web UI or ComfyUI drew"),
             ("photo.jpg", r"photo.jpg holds no generation settings"),
             ("e.png", r"e.png is an A1111 embedding .*: load it with --embedding .*e.png"),
             ("hosted.png", r"hosted.png is an A1111 embedding \(an embedding hidden in a picture's pixels, its "
                            r"'sd-ti-embedding' text gone\), not a drawn picture's settings: load it with --embedding"),
             ("gone.png", r"gone.png: no such file")]
    for name, message in cases:
        with pytest.raises(ConfigError, match=message):
            read_picture(tmp_path / name)
    assert main(["generate", "--again", str(tmp_path / "plain.png")]) == 2
    assert "textinv generate: error: --again" in capsys.readouterr().err
    assert main(["generate", "--again", str(emb), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "give the ones to change as flags" in capsys.readouterr().err


# --- generate --again: a ComfyUI picture, from the graph in its 'prompt' text ----------------------------------------


def _comfy_graph():
    """ComfyUI's default text-to-image graph in its API format, as it saves it in a PNG's 'prompt' text: {node id:
    {class_type, inputs}}, an input another node gives being [node id, output index]."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1234, "steps": 2, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 24, "height": 16, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) cat embedding:zz", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def _comfy_picture(path, graph, size=(24, 16)):
    """A PNG as ComfyUI saves one: its graph as the 'prompt' text, the editor's layout as 'workflow'."""
    import json

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", graph if isinstance(graph, str) else json.dumps(graph))
    info.add_text("workflow", json.dumps({"nodes": [], "links": [], "version": 0.4}))
    Image.new("RGB", size).save(path, pnginfo=info)
    return path


def _notes(path, flags):
    """The settings --again reads from `path` with `flags`, and the warnings it gives (the picture's path left out)."""
    from textinv.again import again_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config, _ = again_config(path, flags)
    return config, [str(w.message).replace(str(path), "PICTURE") for w in caught]


def test_again_draws_a_comfyui_picture_from_its_graph_once_the_model_is_given(sd1_dir, tmp_path, capsys):
    """ComfyUI keeps a picture's settings as its graph (the PNG's 'prompt' text), which --again did not read ("holds
    no generation settings"). The sampler's seed, steps, cfg, sampler and scheduler, the prompts its links reach, the
    empty latent's size are drawn; the checkpoint, which no name finds, is asked for by --model."""
    import json

    from textinv.again import again_config
    from textinv.cli import main

    emb = save_embedding(LearnedEmbedding("<zz>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "zz.safetensors")[0]
    picture = _comfy_picture(tmp_path / "ComfyUI_00001_.png", _comfy_graph())
    assert main(["generate", "--again", str(picture), "--out", str(tmp_path / "r")]) == 2
    assert re.search(r"ComfyUI_00001_.png was drawn by ComfyUI \(checkpoint sd15/v1-5-pruned-emaonly.safetensors\); "
                     r"textinv cannot find a model by ComfyUI's name: give it with --model", capsys.readouterr().err)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (nothing in this graph goes unapplied)
        again_config(picture, {"model": str(sd1_dir)})
    assert main(["generate", "--again", str(picture), "--model", str(sd1_dir), "--embedding", str(emb),
                 "--out", str(tmp_path / "r")]) == 0
    (drawn,) = (tmp_path / "r").iterdir()
    settings = json.loads(Image.open(drawn).text["textinv_settings"])["settings"]
    assert settings["prompt"] == ["a (red:1.2) cat embedding:zz"]  # (as ComfyUI wrote it: <zz> bare is words)
    assert settings["emphasis"] == "comfy"  # (its (red:1.2) as ComfyUI weighs it)
    assert (settings["negative_prompt"], settings["seed"], settings["steps"], settings["guidance"]) == (
        "blurry", 1234, 2, 6.5)
    assert (settings["width"], settings["height"], settings["sampler"], settings["clip_skip"]) == (
        24, 16, "dpm++2m_karras", 1)
    assert Image.open(drawn).size == (24, 16)
    # flags beside it override what the graph says, the rest is kept
    config, said = _notes(picture, {"model": str(sd1_dir), "seed": 9, "steps": 1, "sampler": "euler",
                                    "prompt": ["a dog"]})
    assert (config.seed, config.steps, config.sampler, config.prompt) == (9, 1, "euler", ["a dog"])
    assert (config.guidance, config.negative_prompt, config.width, config.height) == (6.5, "blurry", 24, 16)


def test_again_reads_a_comfyui_webp_from_its_exif(tmp_path):
    """ComfyUI's WebP saver (SaveAnimatedWEBP) keeps the graph in the EXIF Model tag as "prompt:{...}" (the layout in
    Make, "workflow:{...}"), where the PNG has its 'prompt' text: the picture was refused as holding no settings.
    Given as an embedding, it was told to use the embedding's file, where a drawn PNG is told it is a drawn picture."""
    import json

    from textinv.again import holds_settings, read_picture
    from textinv.errors import FormatError

    image = Image.new("RGB", (24, 16))
    exif = image.getexif()
    exif[0x0110] = "prompt:" + json.dumps(_comfy_graph())
    exif[0x010F] = "workflow:" + json.dumps({"nodes": [], "links": []})
    image.save(tmp_path / "ComfyUI_00001_.webp", exif=exif)
    picture = read_picture(tmp_path / "ComfyUI_00001_.webp")
    assert (picture.origin, picture.settings["seed"], picture.settings["prompt"]) == (
        "comfyui", 1234, ["a (red:1.2) cat embedding:zz"])
    assert holds_settings(tmp_path / "ComfyUI_00001_.webp")
    with pytest.raises(FormatError, match=r"it is a drawn picture with its generation settings; `textinv generate "
                                          r"--again .*ComfyUI_00001_.webp` draws it again"):
        load_embedding(tmp_path / "ComfyUI_00001_.webp")


def test_again_reads_clip_skip_loras_and_a_batch_from_a_comfyui_graph_and_names_what_it_cannot_apply(sd1_dir,
                                                                                                       tmp_path):
    """CLIPSetLastLayer is clip skip; each LoraLoader is a tag in the prompt, at the strengths ComfyUI applied; a
    picture of a batch, a VAE of its own and a ControlNet are said, the last as not applied."""
    graph = _comfy_graph()
    graph.update({
        "10": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]}},
        "11": {"class_type": "LoraLoader", "inputs": {"lora_name": "styles\\ghibli.safetensors", "strength_model": 0.8,
                                                      "strength_clip": 0.8, "model": ["4", 0], "clip": ["10", 0]}},
        "12": {"class_type": "LoraLoader", "inputs": {"lora_name": "film.safetensors", "strength_model": 1.0,
                                                      "strength_clip": 0.5, "model": ["11", 0], "clip": ["11", 1]}},
        "13": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}},
        "14": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
        "15": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["13", 0],
                                                           "image": ["14", 0], "strength": 1.0}},
        "16": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-ft-mse-840000.safetensors"}},
    })
    graph["3"]["inputs"].update(model=["12", 0], positive=["15", 0])
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["12", 1]
    graph["5"]["inputs"]["batch_size"] = 4
    graph["8"]["inputs"]["vae"] = ["16", 0]
    config, said = _notes(_comfy_picture(tmp_path / "c.png", graph), {"model": str(sd1_dir)})
    assert config.clip_skip == 2
    # (ComfyUI counts the layers of the full encoder: on SD 2.x and SDXL its -2 is textinv's 1, which it says)
    assert any(s.startswith("PICTURE: its ComfyUI CLIPSetLastLayer node 10 stops at layer -2, read as clip skip 2, "
                            "as ComfyUI means it on SD 1.x; on SD 2.x its -2 is textinv's clip skip 1") for s in said)
    assert config.prompt == ["a (red:1.2) cat embedding:zz <lora:ghibli:0.8> <lora:film:0.5:1>"]
    assert any(s.startswith("PICTURE: its LoRAs are drawn by the tags <lora:ghibli:0.8> <lora:film:0.5:1> added to "
                            "its prompt") and "--lora-dir" in s for s in said)
    assert "PICTURE is one of a batch of 4 (EmptyLatentImage node 5): ComfyUI draws a batch's noise from one seed, " \
           "so the seed draws the batch's first picture again; the others have no seed of their own" in said
    assert any("ComfyUI's VAE vae-ft-mse-840000.safetensors (VAELoader node 16), not its checkpoint's: give it with "
               "--vae" in s for s in said)
    assert [s for s in said if "not applied" in s] == [
        "PICTURE: not applied from its ComfyUI graph: ControlNetLoader node 13, LoadImage node 14, ControlNetApply "
        "node 15 (textinv draws with the model, prompts, LoRAs and VAE alone), so the redraw is without them"]
    # a LoRA only on the model (LoraLoaderModelOnly) is drawn on the UNet alone; SDXL's two prompts: both read
    graph["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "ghibli.safetensors",
                                                                   "strength_model": 0.7, "model": ["4", 0]}}
    graph["12"]["inputs"]["clip"] = ["10", 0]
    graph["6"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "text_g": "a cat", "text_l": "a cat, film grain", "clip": ["12", 1], "width": 1024, "height": 1024,
        "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}}
    config, said = _notes(_comfy_picture(tmp_path / "c.png", graph), {"model": str(sd1_dir)})
    assert config.prompt == ["a cat <lora:ghibli:0:0.7> <lora:film:0.5:1>"]
    assert (config.prompt_l, config.negative_prompt_l) == ("a cat, film grain", None)  # (CLIP-L's, as it encodes)
    assert not any("text_g" in s or "CLIP-L" in s for s in said)
    graph["20"] = {"class_type": "StringConcatenate", "inputs": {"string_a": "a", "string_b": "b", "delimiter": ""}}
    graph["6"]["inputs"]["text_l"] = ["20", 0]
    with pytest.raises(ConfigError, match=r"the text_l of its CLIPTextEncodeSDXL node 6 comes from a node textinv "
                                          r"cannot read: give it with --prompt-l"):
        _notes(_comfy_picture(tmp_path / "c.png", graph), {"model": str(sd1_dir)})
    graph["6"]["inputs"]["text_l"] = "a cat, film grain"
    # its size conditioning, which textinv sets to the size drawn, was dropped unsaid
    assert "PICTURE: its CLIPTextEncodeSDXL node 6 tells SDXL an original size of 1024x1024, a crop at (0, 0) and a " \
           "target size of 1024x1024; textinv tells it the size drawn, 24x16, and no crop, so the redraw differs" in said
    graph["6"]["inputs"].update(width=24, height=16, target_width=24, target_height=16)
    assert not any("tells SDXL" in s for s in _notes(_comfy_picture(tmp_path / "c.png", graph),
                                                     {"model": str(sd1_dir)})[1])


def _comfy_hires_graph():
    """ComfyUI's two-pass hires fix: the default graph's KSampler (node 3, 24x16), its latent enlarged 2x
    (LatentUpscaleBy node 10), redrawn by a second KSampler at denoise 0.5 (node 11), which the saved picture comes
    from; the first pass's picture is looked at (PreviewImage node 13)."""
    graph = _comfy_graph()
    graph.update({
        "10": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": 2.0}},
        "11": {"class_type": "KSampler", "inputs": {
            "seed": 77, "steps": 3, "cfg": 5.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
            "denoise": 0.5, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    })
    graph["8"]["inputs"]["samples"] = ["11", 0]
    return graph


def test_again_reads_a_comfyui_graph_whose_latents_go_round_in_a_loop_without_recursing_forever(tmp_path):
    """An edited graph whose first sampler's latent comes from the second, which enlarges the first's: following the
    latents back raised RecursionError. The loop is a latent that starts from no empty one (as an img2img's), said."""
    from textinv.again import read_picture

    graph = _comfy_hires_graph()
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    picture = read_picture(_comfy_picture(tmp_path / "loop.png", graph, (48, 32)))
    assert (picture.settings["seed"], picture.settings["width"], picture.settings["height"]) == (77, 48, 32)
    assert any("refined a picture it was given" in note for note in picture.notes), picture.notes


def test_again_reads_the_sampler_a_comfyui_picture_comes_from_of_several(sd1_dir, tmp_path):
    """Two samplers that are no hires fix textinv draws (the first refined a latent itself): the one the saved picture
    comes from is read (its size the upscaled one), the other named, drawing from noise said. Of two saved pictures
    (the first pass's too), the one whose size is the picture's."""
    graph = _comfy_hires_graph()
    graph["3"]["inputs"]["denoise"] = 0.8
    config, said = _notes(_comfy_picture(tmp_path / "two-pass.png", graph, (48, 32)), {"model": str(sd1_dir)})
    assert (config.seed, config.steps, config.guidance, config.sampler) == (77, 3, 5.0, "euler_a")
    assert (config.width, config.height, config.prompt) == (48, 32, ["a (red:1.2) cat embedding:zz"])
    assert config.hires() is False and config.denoise is None
    assert "PICTURE: its ComfyUI graph has other samplers than KSampler node 11, which the saved picture comes " \
           "from and which is read: KSampler node 3: seed 1234, 2 steps (not applied)" in said
    assert any(s.startswith("PICTURE was drawn by ComfyUI's KSampler node 11 with denoise 0.5: it refined a picture "
                            "it was given") and "textinv draws it from noise (text to image)" in s for s in said)
    assert any("not applied from its ComfyUI graph: LatentUpscaleBy node 10 " in s for s in said)
    # both passes of a hires fix saved: the picture's size tells which it is (the first pass alone, or both)
    graph = _comfy_hires_graph()
    graph["13"]["class_type"] = "SaveImage"
    for size, hires_scale in (((24, 16), None), ((48, 32), 2.0)):
        config, said = _notes(_comfy_picture(tmp_path / "two.png", graph, size), {"model": str(sd1_dir)})
        assert (config.seed, config.width, config.hires_scale) == (1234, 24, hires_scale)
        assert any("its ComfyUI graph saves the pictures of 2 samplers; read as" in s for s in said)
    # a picture's latent (VAEEncode) that is no img2img textinv draws (the picture changed on the way, by a node it
    # lacks): its size is the saved picture's, the decoder's own, and the refinement is said
    graph = _comfy_img2img_graph()
    graph["12"] = {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}}
    graph["11"]["inputs"]["pixels"] = ["12", 0]
    config, said = _notes(_comfy_picture(tmp_path / "img2img.png", graph, (40, 24)), {"model": str(sd1_dir)})
    assert (config.width, config.height, config.steps, config.denoise) == (40, 24, 20, None)
    assert any("KSampler node 3 with denoise 0.6: it refined a picture it was given (img2img" in s for s in said)
    assert any("not applied from its ComfyUI graph: LoadImage node 10, VAEEncode node 11, ImageInvert node 12 " in s
               for s in said)
    # KSamplerAdvanced: its noise_seed; one that ran only some of its steps (an SDXL refiner's) is said to
    graph = _comfy_graph()
    inputs = graph["3"]["inputs"]
    del inputs["seed"], inputs["denoise"]
    inputs.update(noise_seed=55, add_noise="enable", start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable")
    graph["3"]["class_type"] = "KSamplerAdvanced"
    config, said = _notes(_comfy_picture(tmp_path / "adv.png", graph), {"model": str(sd1_dir)})
    assert (config.seed, config.steps, said) == (55, 2, [])
    inputs.update(start_at_step=1, add_noise="disable")
    config, said = _notes(_comfy_picture(tmp_path / "adv.png", graph), {"model": str(sd1_dir)})
    assert any(s.startswith("PICTURE was drawn by ComfyUI's KSamplerAdvanced node 3 from step 1 to 10000 of 2 "
                            "without adding noise: it refined a picture it was given") for s in said)


def test_again_follows_a_comfyui_hires_fix_in_latents_into_textinvs_hires_settings(sd1_dir, tmp_path):
    """ComfyUI's hires fix (KSampler, LatentUpscale or LatentUpscaleBy, a second KSampler at denoise < 1) was read
    from its second sampler alone, drawn from noise at the enlarged size. Now the first sampler's seed, steps, cfg,
    sampler and empty latent are the drawing's, the second's steps, denoise and sampler the hires fix's, the upscale
    node its size and upscaler; what textinv draws otherwise (one seed, one cfg) is said."""
    from textinv.again import read_picture

    def read(graph, size=(48, 32)):
        return _notes(_comfy_picture(tmp_path / "hires.png", graph, size), {"model": str(sd1_dir)})

    config, said = read(_comfy_hires_graph())
    assert (config.seed, config.steps, config.guidance, config.sampler) == (1234, 2, 6.5, "dpm++2m_karras")
    assert (config.width, config.height, config.prompt) == (24, 16, ["a (red:1.2) cat embedding:zz"])
    assert (config.hires_scale, config.hires_width, config.hires_height) == (2.0, None, None)
    assert (config.hires_steps, config.denoise) == (3, 0.5)
    assert (config.hires_upscaler, config.hires_sampler) == ("latent-nearest-exact", "euler_a")
    assert said == [
        "PICTURE: its ComfyUI hires fix draws its second pass's noise from seed 77 (KSampler node 11), its first's "
        "from 1234; textinv draws both passes from one seed, the first's, so expect the finer detail to differ",
        "PICTURE: its ComfyUI hires fix's second pass (KSampler node 11) has another cfg than its first (KSampler node "
        "3); textinv redraws with the first's"]
    # one seed, one cfg, one sampler: nothing to say, no --hires-sampler
    graph = _comfy_hires_graph()
    graph["11"]["inputs"].update(seed=1234, cfg=6.5, sampler_name="dpmpp_2m", scheduler="karras")
    config, said = read(graph)
    assert (config.hires_sampler, said) == (None, [])
    # a third sampler is named as not applied
    graph["20"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "seed": 5}}
    assert read(graph)[1] == ["PICTURE: its ComfyUI graph has other samplers than KSampler node 11, which the saved "
                              "picture comes from, and its hires fix's first pass KSampler node 3, which are read: "
                              "KSampler node 20: seed 5, 2 steps (not applied)"]
    del graph["20"]
    # another prompt on the second pass is said (textinv has one prompt for both)
    graph["14"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat, detailed", "clip": ["4", 1]}}
    graph["11"]["inputs"]["positive"] = ["14", 0]
    assert read(graph)[1] == ["PICTURE: its ComfyUI hires fix's second pass (KSampler node 11) has another positive "
                              "prompt than its first (KSampler node 3); textinv redraws with the first's"]
    # LatentUpscale: to a width (0 height: the first pass's proportions), to both sides at its proportions, and to
    # other proportions, which ComfyUI stretches (or crops from the middle before it enlarges): both sides, said
    graph = _comfy_hires_graph()
    graph["10"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "bilinear",
                                                             "width": 48, "height": 0, "crop": "disabled"}}
    config, said = read(graph)
    assert (config.hires_scale, config.hires_width, config.hires_height, config.hires_upscaler) == (
        None, 48, None, "latent")
    graph["10"]["inputs"]["height"] = 32
    assert (read(graph)[0].hires_width, read(graph)[0].hires_height) == (48, None)
    graph["10"]["inputs"]["height"] = 40
    config, said = read(graph, (48, 40))
    assert (config.hires_width, config.hires_height) == (48, 40)
    assert "PICTURE: its ComfyUI hires fix enlarged its first pass of 24x16 to 48x40 (LatentUpscale node 10), other " \
           "proportions: ComfyUI stretched the picture to them; textinv enlarges it to cover them and cuts the " \
           "overhang from the middle (the web UI's way), so the redraw keeps the shapes' proportions where " \
           "ComfyUI's changed them" in said
    graph["10"]["inputs"]["crop"] = "center"
    assert any("ComfyUI cut the middle at their proportions, then enlarged that; textinv enlarges, then cuts whole "
               "latents from the middle (the web UI's way)" in s for s in read(graph, (48, 40))[1])
    # ComfyUI's methods textinv lacks: the nearest it has, said
    for method, ours in (("area", "latent-nearest"), ("bislerp", "latent"), ("bicubic", "latent-bicubic")):
        graph = _comfy_hires_graph()
        graph["10"]["inputs"]["upscale_method"] = method
        config, said = read(graph)
        assert config.hires_upscaler == ours
        named = [s for s in said if "which textinv does not have" in s]
        assert named == ([] if method == "bicubic" else [
            f"PICTURE: its ComfyUI hires fix enlarged its first pass's latent with {method!r} (LatentUpscaleBy node "
            f"10), which textinv does not have: read as --hires-upscaler {ours}, the nearest it has"])
    # a second sampler textinv does not have is asked for by --hires-sampler
    graph = _comfy_hires_graph()
    graph["11"]["inputs"]["scheduler"] = "beta"
    with pytest.raises(ConfigError, match=r"redrawn by its hires fix with ComfyUI's sampler 'euler_ancestral' and "
                                          r"scheduler 'beta' \(KSampler node 11\).*--hires-sampler"):
        read(graph)
    assert _notes(_comfy_picture(tmp_path / "h.png", graph, (48, 32)), {"model": str(sd1_dir),
                                                                       "hires_sampler": "euler"})[0].hires_sampler \
        == "euler"
    # not a hires fix textinv draws: a second pass at denoise 1, or one no larger than the first (read as before)
    for change in ({"denoise": 1.0}, ):
        graph = _comfy_hires_graph()
        graph["11"]["inputs"].update(change)
        assert read_picture(_comfy_picture(tmp_path / "h.png", graph, (48, 32))).settings.get("hires_scale") is None
    graph = _comfy_hires_graph()
    graph["10"]["inputs"]["scale_by"] = 1.0
    picture = read_picture(_comfy_picture(tmp_path / "h.png", graph, (24, 16)))
    assert picture.settings["seed"] == 77 and "hires_scale" not in picture.settings
    assert any("KSampler node 11 with denoise 0.5: it refined a picture" in s for s in picture.notes)


def test_again_follows_a_comfyui_hires_fix_in_pictures_and_with_advanced_samplers(sd1_dir, tmp_path):
    """The hires fix in pixels (VAEDecode, ImageScale or ImageScaleBy, or an upscaling network, then VAEEncode) and
    with KSamplerAdvanced (its second pass starting at a step: the same pass as a denoise) is followed too; a network
    textinv does not run is Lanczos's, said."""
    def read(graph, size=(48, 32)):
        return _notes(_comfy_picture(tmp_path / "hires.png", graph, size), {"model": str(sd1_dir)})

    graph = _comfy_hires_graph()
    graph.update({
        "10": {"class_type": "ImageScaleBy", "inputs": {"image": ["12", 0], "upscale_method": "lanczos",
                                                        "scale_by": 2.0}},
        "14": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
    })
    graph["11"]["inputs"].update(latent_image=["14", 0], seed=1234, cfg=6.5)
    config, said = read(graph)
    assert (config.seed, config.width, config.height, config.hires_scale) == (1234, 24, 16, 2.0)
    assert (config.hires_upscaler, config.hires_steps, config.denoise, said) == ("lanczos", 3, 0.5, [])
    # ImageScale to a size, with a method textinv lacks for pictures
    graph["10"] = {"class_type": "ImageScale", "inputs": {"image": ["12", 0], "upscale_method": "bilinear",
                                                          "width": 0, "height": 32, "crop": "disabled"}}
    config, said = read(graph)
    assert (config.hires_scale, config.hires_width, config.hires_height, config.hires_upscaler) == (
        None, 48, None, "lanczos")
    assert said == ["PICTURE: its ComfyUI hires fix enlarged its first pass's picture with 'bilinear' (ImageScale "
                    "node 10), which textinv does not have: read as --hires-upscaler lanczos, the nearest it has"]
    # an upscaling network, then halved: its size is the saved picture's
    graph.update({
        "10": {"class_type": "ImageScaleBy", "inputs": {"image": ["15", 0], "upscale_method": "nearest-exact",
                                                        "scale_by": 0.5}},
        "15": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["16", 0], "image": ["12", 0]}},
        "16": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}},
    })
    config, said = read(graph)
    assert (config.hires_width, config.hires_height, config.hires_upscaler) == (48, None, "lanczos")
    assert said == ["PICTURE: its ComfyUI hires fix enlarged its first pass with the upscaling network "
                    "4x-UltraSharp.pth (ImageUpscaleWithModel node 15), which textinv does not run: it is enlarged "
                    "with Lanczos (--hires-upscaler lanczos), then redrawn as ComfyUI redrew it, so expect the finer "
                    "detail to differ"]
    # KSamplerAdvanced: the second pass's steps 10 from step 4 are 6 hires steps of a schedule of 10 (denoise 0.6)
    graph = _comfy_hires_graph()
    for node, seed, start in (("3", 1234, 0), ("11", 1234, 4)):
        inputs = graph[node]["inputs"]
        del inputs["seed"], inputs["denoise"]
        inputs.update(noise_seed=seed, add_noise="enable", start_at_step=start, end_at_step=10000,
                      return_with_leftover_noise="disable", cfg=6.5)
        graph[node]["class_type"] = "KSamplerAdvanced"
    graph["11"]["inputs"]["steps"] = 10
    config, said = read(graph)
    assert (config.seed, config.steps, config.hires_steps, config.denoise, config.hires_scale) == (
        1234, 2, 6, 0.6, 2.0)
    from textinv.refine import pass_steps

    assert pass_steps(config.hires_steps, config.denoise, hires=True) == (10, 6)
    # one that adds no noise (an SDXL refiner's handing on) is no hires fix: read as before, said
    graph["11"]["inputs"]["add_noise"] = "disable"
    config, said = read(graph)
    assert (config.seed, config.hires_scale) == (1234, None)
    assert any("KSamplerAdvanced node 11 from step 4 to 10000 of 10 without adding noise" in s for s in said)


def test_again_redraws_a_comfyui_hires_fix_at_its_enlarged_size(sd1_dir, tmp_path):
    """End to end: a ComfyUI hires picture drawn again on the tiny model is drawn by textinv's hires fix at the
    enlarged size, its record holding the hires settings read from the graph."""
    import json

    from textinv.cli import main

    graph = _comfy_hires_graph()
    graph["6"]["inputs"]["text"] = "a red cat"
    graph["11"]["inputs"].update(seed=1234, cfg=6.5)
    picture = _comfy_picture(tmp_path / "ComfyUI_hires.png", graph, (48, 32))
    with pytest.warns(UserWarning, match=r"48x32 is 6x the pixels of the 16x16"):  # (the tiny model's size)
        assert main(["generate", "--again", str(picture), "--model", str(sd1_dir), "--out", str(tmp_path / "r")]) == 0
    (drawn,) = (tmp_path / "r").iterdir()
    assert Image.open(drawn).size == (48, 32)
    settings = json.loads(Image.open(drawn).text["textinv_settings"])["settings"]
    assert (settings["width"], settings["height"], settings["hires_scale"], settings["hires_steps"]) == (24, 16, 2.0, 3)
    assert (settings["denoise"], settings["hires_upscaler"], settings["hires_sampler"]) == (
        0.5, "latent-nearest-exact", "euler_a")


def _comfy_img2img_graph():
    """ComfyUI's img2img: the default graph's KSampler (node 3, 20 steps at denoise 0.6) over a loaded picture
    (LoadImage node 10, VAEEncode node 11) instead of an empty latent."""
    graph = _comfy_graph()
    graph.update({"10": {"class_type": "LoadImage", "inputs": {"image": "photo.png", "upload": "image"}},
                  "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}})
    del graph["5"]
    graph["3"]["inputs"].update(latent_image=["11", 0], denoise=0.6, steps=20)
    return graph


def test_again_reads_a_comfyui_img2img_as_textinvs_counting_the_same_steps_of_the_same_schedule(sd1_dir, tmp_path):
    """ComfyUI's img2img (LoadImage, VAEEncode, a KSampler at denoise < 1) was drawn from noise with a note. It is
    textinv's img2img now: ComfyUI runs its steps as the last of a schedule int(steps / d) long, textinv's img2img
    int(denoise x steps) + 1 of --steps, so it is read as --steps int(steps / d) at a --denoise that runs ComfyUI's
    steps of them (`refine.pass_steps`). Without --init-image (the graph names the picture, the PNG lacks it) it is
    drawn from the prompt alone with the sampler's own steps, said naming the file."""
    from textinv.refine import pass_steps

    start = tmp_path / "photo.png"
    Image.new("RGB", (40, 24), "red").save(start)

    def read(graph, flags=(), size=(40, 24)):
        return _notes(_comfy_picture(tmp_path / "i.png", graph, size), {"model": str(sd1_dir), **dict(flags)})

    with_init = {"init_image": str(start)}
    config, said = read(_comfy_img2img_graph(), with_init)
    assert (config.init_image, config.steps, config.denoise, config.width, config.height) == (
        str(start), 33, 0.6, 40, 24)
    assert pass_steps(config.steps, config.denoise, hires=False) == (33, 20)  # (ComfyUI: the last 20 of int(20/0.6))
    assert (config.seed, config.guidance, config.sampler, said) == (1234, 6.5, "dpm++2m_karras", [])
    config, said = read(_comfy_img2img_graph())
    assert (config.init_image, config.steps, config.denoise, config.width, config.height) == (None, 20, None, 40, 24)
    assert said == ["PICTURE was drawn by ComfyUI's img2img from the picture 'photo.png' (LoadImage node 10), which "
                    "its graph names but does not hold: give that picture with --init-image, or it is drawn from the "
                    "prompt alone, with the 20 steps of KSampler node 3"]
    assert read(_comfy_img2img_graph(), {"steps": 8, "hires_scale": 2.0})[0].steps == 8  # (a flag is the flag's)
    assert read(_comfy_img2img_graph(), {"hires_scale": 2.0})[0].denoise is None  # (an img2img count: not the hires')
    # every denoise: the same steps of the same schedule, at ComfyUI's denoise where it runs them (0.5 of 20 does
    # not: 21 of 40, so 0.48; 0.05 of 1: 2 of 20, so 0.01); a KSamplerAdvanced's steps from start_at_step, and a
    # denoise of 1 (all, from the picture's latent with the seed's noise, as ComfyUI adds it)
    for steps, d, denoise in ((20, 0.5, 0.48), (20, 0.75, 0.75), (7, 0.3, 0.3), (20, 0.95, 0.95), (20, 1.0, 1.0),
                              (2, 0.6, 0.6), (1, 0.05, 0.01)):
        graph = _comfy_img2img_graph()
        graph["3"]["inputs"].update(steps=steps, denoise=d)
        config, said = read(graph, with_init)
        assert (config.steps, config.denoise, said) == (int(steps / d), denoise, [])
        assert pass_steps(config.steps, config.denoise, hires=False) == (int(steps / d), steps)
    graph = _comfy_img2img_graph()
    inputs = graph["3"]["inputs"]
    del inputs["seed"], inputs["denoise"]
    inputs.update(noise_seed=55, add_noise="enable", start_at_step=4, end_at_step=10000, steps=10,
                  return_with_leftover_noise="disable")
    graph["3"]["class_type"] = "KSamplerAdvanced"
    config, said = read(graph, with_init)
    assert (config.seed, config.steps, config.denoise, said) == (55, 10, 0.5, [])
    assert pass_steps(10, 0.5, hires=False) == (10, 6)
    assert read(graph)[0].steps == 6  # (from the prompt alone: the steps it ran)
    inputs["start_at_step"] = 0
    assert read(graph, with_init)[0].denoise == 1.0
    # a schedule textinv's count cannot end on: said, with what it runs instead (3000 steps: more than textinv takes)
    inputs.update(steps=3000, start_at_step=1)
    config, said = read(graph, with_init)
    assert (config.steps, said) == (3000, [
        "PICTURE: its ComfyUI KSamplerAdvanced node 3 ran the last 2999 steps of a schedule of 3000; textinv's img2img "
        "runs int(--denoise x --steps) + 1 of --steps (at most 0.999 of them, as the web UI), and no --denoise runs "
        "2999 of 3000: read as --steps 3000 --denoise 0.999667, which runs 2998"])
    # one that adds no noise, or stops early, is no img2img textinv draws: read as before
    inputs.update(steps=10, start_at_step=4, add_noise="disable")
    config, said = read(graph, with_init)
    assert (config.steps, config.denoise) == (10, None)
    assert any("from step 4 to 10000 of 10 without adding noise: it refined a picture" in s for s in said)


def test_again_reads_a_comfyui_img2img_size_from_its_picture_or_its_scale_node(sd1_dir, tmp_path):
    """ImageScale or ImageScaleBy between LoadImage and VAEEncode: the size ComfyUI drew at is the saved picture's
    (textinv fits --init-image to it), or, where the picture was resized after the sampler, ImageScale's; a stretch
    to other proportions is said when drawn from a picture."""
    start = tmp_path / "photo.png"
    Image.new("RGB", (40, 24), "red").save(start)

    def read(graph, size, flags=()):
        return _notes(_comfy_picture(tmp_path / "i.png", graph, size), {"model": str(sd1_dir), **dict(flags)})

    graph = _comfy_img2img_graph()
    graph["12"] = {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "lanczos",
                                                          "width": 48, "height": 32, "crop": "disabled"}}
    graph["11"]["inputs"]["pixels"] = ["12", 0]
    config, said = read(graph, (48, 32), {"init_image": str(start)})
    assert (config.width, config.height, config.steps, config.denoise) == (48, 32, 33, 0.6)
    assert said == ["PICTURE: ComfyUI stretched its picture 'photo.png' to 48x32 (ImageScale node 12); textinv cuts "
                    "--init-image to the drawing's proportions from the middle, then resizes it, so a picture of "
                    "other proportions is redrawn unstretched"]
    assert not any("stretched" in s for s in read(graph, (48, 32))[1])  # (no picture: nothing is stretched)
    graph["12"]["inputs"]["crop"] = "center"  # (ComfyUI cuts the middle too)
    assert read(graph, (48, 32), {"init_image": str(start)})[1] == []
    # the saved picture enlarged after the sampler: ImageScale's size is the one drawn at; ImageScaleBy's is not known
    graph["13"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "lanczos",
                                                            "scale_by": 2.0}}
    graph["9"]["inputs"]["images"] = ["13", 0]
    config, said = read(graph, (96, 64), {"init_image": str(start)})
    assert (config.width, config.height, config.steps) == (48, 32, 33)
    assert [s for s in said if "not applied" in s] == [
        "PICTURE: not applied from its ComfyUI graph: ImageScaleBy node 13 (textinv draws with the model, prompts, "
        "LoRAs and VAE alone), so the redraw is without them"]
    graph["12"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["10", 0], "upscale_method": "lanczos",
                                                            "scale_by": 1.5}}
    config, said = read(graph, (96, 64), {"init_image": str(start)})
    assert (config.width, config.height, config.steps) == (None, None, 33)
    assert any("does not say the size KSampler node 3 drew at" in s for s in said)
    del graph["13"]
    graph["9"]["inputs"]["images"] = ["8", 0]
    config, said = read(graph, (56, 32), {"init_image": str(start)})
    assert (config.width, config.height, said) == (56, 32, [])


def test_again_redraws_a_comfyui_img2img_from_its_picture(sd1_dir, tmp_path, monkeypatch):
    """End to end: a ComfyUI img2img picture drawn again on the tiny model with --init-image is textinv's img2img of
    that picture, its steps the schedule's and its denoise the one that runs ComfyUI's steps of it: the UNet is
    called for ComfyUI's 2 steps, not 4."""
    import json

    from diffusers import UNet2DConditionModel

    from textinv.cli import main

    calls = []
    forward = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward",
                        lambda self, *args, **kwargs: calls.append(1) or forward(self, *args, **kwargs))

    start = tmp_path / "photo.png"
    Image.new("RGB", (24, 16), "red").save(start)
    graph = _comfy_img2img_graph()
    graph["6"]["inputs"]["text"] = "a red cat"
    graph["3"]["inputs"].update(steps=2, denoise=0.5)  # (the last 2 of a schedule of 4)
    picture = _comfy_picture(tmp_path / "ComfyUI_img2img.png", graph, (24, 16))
    assert main(["generate", "--again", str(picture), "--model", str(sd1_dir), "--init-image", str(start),
                 "--out", str(tmp_path / "r")]) == 0
    (drawn,) = (tmp_path / "r").iterdir()
    assert Image.open(drawn).size == (24, 16)
    text = Image.open(drawn).text
    settings = json.loads(text["textinv_settings"])["settings"]
    assert (settings["init_image"], settings["steps"], settings["denoise"]) == ("photo.png", 4, 0.3)
    assert "Steps: 4" in text["parameters"] and "Denoising strength: 0.3" in text["parameters"]
    assert len(calls) == 2  # (one call a step: the negative and the prompt in one batch)


def test_again_redraws_comfyuis_last_steps_of_a_ddim_uniform_schedule_it_draws_more_of(sd1_dir, tmp_path):
    """ComfyUI's KSampler at denoise d runs the last `steps` sigmas of its schedule of int(steps / d); textinv's passes
    (as the web UI's) run theirs from step schedule - run on. Where ddim_uniform draws more steps than the schedule's
    count (29 at 28: 20 steps at denoise 0.7) those were other steps: the img2img is read as 19 of 28 (--denoise
    0.65), which draws ComfyUI's last 20 of its 29 timesteps, and a hires fix's second pass as --hires-steps 19 of a
    schedule of 28."""
    from textinv.refine import pass_steps
    from textinv.samplers import ddim_uniform_times

    start = tmp_path / "photo.png"
    Image.new("RGB", (24, 16), "red").save(start)
    graph = _comfy_img2img_graph()
    graph["6"]["inputs"]["text"] = "a red cat"
    graph["3"]["inputs"].update(sampler_name="euler", scheduler="ddim_uniform", steps=20, denoise=0.7)
    config, said = _notes(_comfy_picture(tmp_path / "i.png", graph, (24, 16)),
                          {"model": str(sd1_dir), "init_image": str(start), "out": str(tmp_path / "r")})
    assert (config.sampler, config.steps, config.denoise, said) == ("euler_ddim_uniform", 28, 0.65, [])
    assert pass_steps(config.steps, config.denoise, hires=False) == (28, 19)
    model = fresh_model(sd1_dir)
    seen = _unet_timesteps(model)
    generate(config, model=model, progress=False)
    assert len(ddim_uniform_times(28)) == 29 and seen == pytest.approx(ddim_uniform_times(28)[-20:], abs=2e-3)
    hires = _comfy_hires_graph()
    hires["11"]["inputs"].update(sampler_name="euler", scheduler="ddim_uniform", steps=20, denoise=0.7)
    config, _ = _notes(_comfy_picture(tmp_path / "h.png", hires, (48, 32)), {"model": str(sd1_dir)})
    assert (config.hires_sampler, config.hires_steps) == ("euler_ddim_uniform", 19)
    assert pass_steps(config.hires_steps, config.denoise, hires=True) == (28, 19)


def _comfy_combined_graph():
    """The default graph whose positive prompt is two prompts' conditioning joined (ConditioningCombine node 15)."""
    graph = _comfy_graph()
    graph.update({"14": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog, 16:9", "clip": ["4", 1]}},
                  "15": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0],
                                                                         "conditioning_2": ["14", 0]}}})
    graph["3"]["inputs"]["positive"] = ["15", 0]
    return graph


def test_again_reads_comfyuis_conditioning_combine_as_and_at_one_over_k(sd1_dir, tmp_path, monkeypatch):
    """ComfyUI's ConditioningCombine was no prompt textinv could read (--prompt asked for). Its sampler averages the
    k joined conditionings' predictions, then guides by cfg: composable diffusion at weight 1/k each, the prompts
    joined by AND. Nested, the lists join into one (1/3 each); a combined negative (one text here) is asked for, a
    text with AND of its own read with it as a word (as ComfyUI reads it); encoders on other CLIPs are said."""
    from textinv.emphasis import composable_parts

    def read(graph, flags=()):
        return _notes(_comfy_picture(tmp_path / "c.png", graph), {"model": str(sd1_dir), **dict(flags)})

    config, said = read(_comfy_combined_graph())
    assert config.prompt == ["a (red:1.2) cat embedding:zz:0.5 AND a dog, 16:9:0.5"]
    assert composable_parts(config.prompt[0]) == [("a (red:1.2) cat embedding:zz", 0.5), (" a dog, 16:9", 0.5)]
    assert said == []  # (the combine is drawn: not named as not applied)
    # drawn by composable diffusion: each UNet call takes the negative and both prompts (3 rows)
    from diffusers import UNet2DConditionModel

    from textinv.cli import main

    rows = []
    forward = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward",
                        lambda self, sample, *args, **kwargs: rows.append(sample.shape[0]) or forward(
                            self, sample, *args, **kwargs))
    graph = _comfy_combined_graph()
    graph["6"]["inputs"]["text"] = "a red cat"
    assert main(["generate", "--again", str(_comfy_picture(tmp_path / "c.png", graph)), "--model", str(sd1_dir),
                 "--out", str(tmp_path / "r")]) == 0
    assert rows == [3, 3]
    monkeypatch.undo()
    graph = _comfy_combined_graph()
    graph["16"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "at night", "clip": ["4", 1]}}
    graph["17"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["15", 0],
                                                                   "conditioning_2": ["16", 0]}}
    graph["3"]["inputs"]["positive"] = ["17", 0]
    config, said = read(graph)
    assert [w for _, w in composable_parts(config.prompt[0])] == pytest.approx([1 / 3] * 3, abs=1e-12)
    assert [t.strip() for t, _ in composable_parts(config.prompt[0])] == [
        "a (red:1.2) cat embedding:zz", "a dog, 16:9", "at night"]
    # LoRA tags follow the last prompt's weight, outside it; another CLIP on one encoder is said
    graph = _comfy_combined_graph()
    graph["12"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "film.safetensors", "strength_model": 1.0,
                                                          "strength_clip": 1.0, "model": ["4", 0], "clip": ["4", 1]}}
    graph["3"]["inputs"]["model"] = ["12", 0]
    graph["6"]["inputs"]["clip"] = ["12", 1]
    config, said = read(graph)
    assert config.prompt == ["a (red:1.2) cat embedding:zz:0.5 AND a dog, 16:9:0.5 <lora:film:1>"]
    assert said[0] == ("PICTURE: its combined prompts are encoded by other CLIPs (another clip skip or LoRA on one: "
                       "CLIPTextEncode node 6, CLIPTextEncode node 14); textinv encodes every prompt with one: the "
                       "first's, CLIPTextEncode node 6's")
    # ComfyUI's prompt editing (two step ranges combined) is no average: asked for
    graph = _comfy_combined_graph()
    for node, (start, end), cond in (("20", (0.0, 0.5), "6"), ("21", (0.5, 1.0), "14")):
        graph[node] = {"class_type": "ConditioningSetTimestepRange", "inputs": {
            "conditioning": [cond, 0], "start": start, "end": end}}
    graph["15"]["inputs"].update(conditioning_1=["20", 0], conditioning_2=["21", 0])
    with pytest.raises(ConfigError, match=r"\(its ConditioningCombine node 15 joins a conditioning that "
                                          r"ConditioningSetTimestepRange node 20 changed \(an area, a strength, a "
                                          r"step range\), which textinv's AND does not draw\): give it with --prompt"):
        read(graph)
    # ComfyUI reads AND as a word: as `and` (the same tokens to CLIP, which lowercases), alone or combined; a
    # combined negative is two negatives, which textinv's one text is not
    graph = _comfy_combined_graph()
    graph["14"]["inputs"]["text"] = "black AND white"
    config, said = read(graph)
    assert [t.strip() for t, _ in composable_parts(config.prompt[0])] == ["a (red:1.2) cat embedding:zz",
                                                                          "black and white"]
    config, said = read(_comfy_graph() | {"6": {"class_type": "CLIPTextEncode",
                                                "inputs": {"text": "salt AND pepper", "clip": ["4", 1]}}})
    assert config.prompt == ["salt and pepper"]
    graph = _comfy_graph()
    graph.update({"14": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["4", 1]}},
                  "15": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["7", 0],
                                                                         "conditioning_2": ["14", 0]}}})
    graph["3"]["inputs"]["negative"] = ["15", 0]
    with pytest.raises(ConfigError, match=r"the negative prompt .* \(it combines 2 prompts \(ConditioningCombine\), "
                                          r"whose predictions ComfyUI averages; textinv's negative prompt is one "
                                          r"text\): give it with --negative-prompt"):
        read(graph)
    config, said = read(graph, {"negative_prompt": "blurry, lowres"})
    assert config.negative_prompt == "blurry, lowres"


def test_again_maps_comfyuis_samplers_and_schedulers_and_asks_for_one_textinv_lacks(sd1_dir, tmp_path):
    """ComfyUI's sampler and scheduler are one of textinv's samplers, named base + schedule; a pair textinv does not
    have is asked for by --sampler, naming both. Its normal (the default), simple and sgm_uniform were read as the
    model's own spacing, which they are not (SD's at 20 steps starts at sigma 11.0, normal at 14.6): they are
    textinv's schedules of those names, for a sampler that takes a sigma schedule."""
    import textinv.again
    from textinv.again import read_picture

    def read(sampler_name, scheduler):
        graph = _comfy_graph()
        graph["3"]["inputs"].update(sampler_name=sampler_name, scheduler=scheduler)
        return read_picture(_comfy_picture(tmp_path / "s.png", graph))

    for pair, ours in [(("euler", "normal"), "euler_normal"), (("euler_ancestral", "simple"), "euler_a"),
                       (("dpmpp_2m", "normal"), "dpm++2m_normal"), (("dpm_2_ancestral", "karras"), "dpm2_a_karras"),
                       (("heun", "sgm_uniform"), "heun_sgm_uniform"),
                       (("ddim", "ddim_uniform"), "euler_ddim_uniform"),
                       # (ddim_uniform was the model's own spacing: ComfyUI's timesteps only under a "leading" config,
                       # and not for DPM-Solver, which spaces "leading" otherwise)
                       (("dpmpp_2m", "ddim_uniform"), "dpm++2m_ddim_uniform"),
                       (("euler_ancestral", "ddim_uniform"), "euler_a_ddim_uniform"),
                       (("dpmpp_2s_ancestral", "karras"), "dpm++2s_a_karras"), (("ddim", "simple"), "euler_simple"),
                       (("dpmpp_2s_ancestral", "normal"), "dpm++2s_a_normal"),
                       (("lcm", "sgm_uniform"), "lcm_sgm_uniform"), (("euler_ancestral", "normal"), "euler_a"),
                       (("lcm", "karras"), "lcm_karras"),
                       # (ComfyUI's ddim is its Euler, on every schedule: to sigma 0, where diffusers' DDIM stops
                       # at the model's smallest under SD's config; on Karras's it was refused as no ddim_karras)
                       (("ddim", "karras"), "euler_karras")]:
        assert read(*pair).settings["sampler"] == ours, pair
    # (ComfyUI's uni_pc and uni_pc_bh2 end at sigma 0.001, not the model's smallest as textinv's, the web UI's)
    for pair in [("uni_pc", "normal"), ("uni_pc_bh2", "normal"), ("dpmpp_2s_ancestral_cfg_pp", "normal"),
                 # (ComfyUI's lcm takes ddim_uniform's stride over its 50 levels, not textinv's lcm spacing)
                 ("lcm", "ddim_uniform"), ("ddim", "beta"), ("euler", "kl_optimal")]:
        assert "sampler" not in read(*pair).settings
    path = tmp_path / "s.png"
    with pytest.raises(ConfigError, match=r"s.png was drawn with ComfyUI's sampler 'euler' and scheduler 'kl_optimal' "
                                          r"\(KSampler node 3\), which textinv does not have: choose one with "
                                          r"--sampler \(textinv generate --help lists them\), or default"):
        textinv.again.again_config(path, {"model": str(sd1_dir)})
    assert textinv.again.again_config(path, {"model": str(sd1_dir), "sampler": "euler"})[0].sampler == "euler"
    read("uni_pc_bh2", "normal")  # (what differs is said)
    with pytest.raises(ConfigError, match=r"sampler 'uni_pc_bh2' and scheduler 'normal' \(KSampler node 3\), which "
                                          r"textinv does not have \(uni_pc_bh2: its last step goes to sigma 0.001, .*"
                                          r"where textinv's unipc_bh2, the web UI's UniPC, .*\): choose one with"):
        textinv.again.again_config(tmp_path / "s.png", {"model": str(sd1_dir)})
    # the SDE samplers and the schedules beside Karras; ComfyUI's sampler names are --sampler's spellings too
    for sampler_name, scheduler, ours, base in [("dpmpp_2m_sde_gpu", "karras", "dpm++2m_sde_karras", "dpm++2m_sde"),
                                                # (ComfyUI's 3M SDE keeps the next-to-last sigma: its own)
                                                ("dpmpp_3m_sde", "exponential", "dpm++3m_sde_comfy_exponential",
                                                 "dpm++3m_sde_comfy"),
                                                ("lms", "karras", "lms_karras", "lms"),
                                                ("dpmpp_sde", "normal", "dpm++sde_normal", "dpm++sde"),
                                                # (k-diffusion's sample_dpmpp_2m_sde with solver_type heun, as the
                                                # web UI's DPM++ 2M SDE Heun: was refused, "textinv does not have")
                                                ("dpmpp_2m_sde_heun_gpu", "karras", "dpm++2m_sde_heun_karras",
                                                 "dpm++2m_sde_heun")]:
        assert read(sampler_name, scheduler).settings["sampler"] == ours, sampler_name
        assert GenerateConfig(prompt=["a dog"], sampler=sampler_name).validate().sampler == base


@pytest.mark.parametrize("sampler, timesteps", [
    # ComfyUI's normal: timesteps evenly from the last to the first, 999 - 999 k / (n - 1); sgm_uniform: the first n of
    # n + 1 so spaced, 999 - 999 k / n; simple: 999 - int(k 1000 / n), whole ones (comfy/samplers.py)
    ("euler_normal", [999, 666, 333, 0]), ("euler_sgm_uniform", [999, 749.25, 499.5, 249.75]),
    ("euler_simple", [999, 749, 499, 249]),
    ("euler", [751, 501, 251, 1]),  # (the model's own spacing, SD's "leading": what ComfyUI's were read as)
    # ddim_uniform: 1 + k (1000 // n), where DPM-Solver's "leading" (what it was read as) is 801, 601, 401, 201
    ("dpm++2m_ddim_uniform", [751, 501, 251, 1]), ("euler_a_ddim_uniform", [751, 501, 251, 1])])
def test_a_comfyui_schedule_reaches_the_unet_at_its_timesteps(sd1_dir, sampler, timesteps):
    """A picture drawn on ComfyUI's normal, simple or sgm_uniform calls the model at the timesteps of ComfyUI's sigmas,
    each the timestep it was taken at, end to end through the pipeline."""
    model = fresh_model(sd1_dir)
    unet = model.pipeline.unet
    seen = []
    forward = unet.forward

    def record(sample, timestep, *args, **kwargs):
        seen.append(float(timestep))
        return forward(sample, timestep, *args, **kwargs)

    unet.forward = record
    try:
        render(model, ["a dog"], [0], steps=4, guidance=7.5, sampler=sampler)
    finally:
        del unet.forward
    assert seen == pytest.approx(timesteps, abs=2e-3)


def _unet_timesteps(model) -> list[float]:
    """The timesteps `model`'s UNet is called at from now on, one a call, as they come."""
    unet, seen = model.pipeline.unet, []
    forward = unet.forward

    def record(sample, timestep, *args, **kwargs):
        seen.append(float(timestep))
        return forward(sample, timestep, *args, **kwargs)

    unet.forward = record
    return seen


@pytest.mark.parametrize("sampler, calls", [
    # ComfyUI's ddim_uniform at 30: its 31 timesteps 33 apart from 1, one model call each
    ("euler_ddim_uniform", [1 + 33 * k for k in range(30, -1, -1)]),
    # its dpm_2 (DPM2, two calls a step, one for the last) on the schedule of 31 less its next-to-last sigma: 31 steps
    ("dpm2_ddim_uniform", 2 * 31 - 1)])
def test_a_ddim_uniform_sampler_at_steps_comfyui_draws_more_of_makes_comfyuis_model_calls(sd1_dir, sampler, calls):
    """At 30 steps ComfyUI's ddim_uniform draws 31 (1000 // 30 does not fit); textinv refused the count. A picture at
    30 calls the UNet as ComfyUI does, at its timesteps."""
    model = fresh_model(sd1_dir)
    seen = _unet_timesteps(model)
    render(model, ["a dog"], [0], steps=30, guidance=7.5, sampler=sampler)
    if isinstance(calls, list):
        assert seen == pytest.approx(calls, abs=2e-3)
    else:
        assert len(seen) == calls and seen[0] == pytest.approx(993, abs=2e-3)  # (32 apart from 1: 31's)


def test_again_redraws_a_comfyui_picture_on_ddim_uniform_at_steps_it_draws_more_of_as_comfyui_draws_it(
        sd1_dir, tmp_path):
    """ComfyUI's ddim_uniform draws 31 steps at 30 (timesteps 33 apart from 1): --again refused such a picture, as
    textinv's 30 would be others. It is read at 30 steps and drawn with ComfyUI's 31 model calls at its timesteps;
    the picture's record keeps the 30 asked for (its parameters "Steps: 30", as the web UI writes its DDIM schedule
    type's), so --again of it draws it again, the same picture."""
    import textinv.again
    from textinv.samplers import ddim_uniform_times

    graph = _comfy_graph()
    graph["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="ddim_uniform", steps=30)
    graph["6"]["inputs"]["text"] = "a (red:1.2) cat"
    config = textinv.again.again_config(_comfy_picture(tmp_path / "s.png", graph),
                                        {"model": str(sd1_dir), "out": str(tmp_path / "a")})[0]
    assert (config.sampler, config.steps) == ("dpm++2m_ddim_uniform", 30)
    model = fresh_model(sd1_dir)
    seen = _unet_timesteps(model)
    (drawn,) = generate(config, model=model, progress=False)
    assert seen == pytest.approx(ddim_uniform_times(30), abs=2e-3) and len(seen) == 31
    picture = Image.open(drawn)
    assert json.loads(picture.text["textinv_settings"])["settings"]["steps"] == 30
    assert "Steps: 30, Sampler: DPM++ 2M, Schedule type: DDIM" in picture.text["parameters"]
    again = textinv.again.again_config(drawn, {"model": str(sd1_dir), "out": str(tmp_path / "b")})[0]
    assert (again.sampler, again.steps) == ("dpm++2m_ddim_uniform", 30)
    (redrawn,) = generate(again, model=model, progress=False)
    assert np.array_equal(np.asarray(Image.open(redrawn)), np.asarray(picture))


def test_comfyuis_beta_scheduler_is_not_read_as_the_web_uis_beta_schedule(sd1_dir, tmp_path):
    """ComfyUI's "beta" scheduler takes the steps at beta quantiles of the model's timesteps; the web UI's Beta (and
    diffusers' use_beta_sigmas, textinv's _beta) spaces the noise levels themselves between the largest and the
    smallest: on SD's schedule at 10 steps its middle step is at sigma 8.4 where ComfyUI's is at 2.6. --again read
    ComfyUI's as textinv's _beta and drew another schedule: it asks for --sampler, as for a scheduler textinv lacks.
    The web UI's Beta stays textinv's."""
    from textinv.again import again_config, read_picture
    from textinv.samplers import from_comfy, from_webui

    assert from_comfy("euler", "beta") is None and from_comfy("dpmpp_2m_sde", "beta") is None
    assert from_webui("Euler", "Beta") == "euler_beta"
    graph = _comfy_graph()
    graph["3"]["inputs"].update(sampler_name="lms", scheduler="beta")
    path = _comfy_picture(tmp_path / "b.png", graph)
    assert "sampler" not in read_picture(path).settings
    with pytest.raises(ConfigError, match=r"ComfyUI's sampler 'lms' and scheduler 'beta' \(KSampler node 3\), which "
                                          r"textinv does not have: choose one with --sampler"):
        again_config(path, {"model": str(sd1_dir)})


def test_again_follows_a_comfyui_prompt_to_a_primitive_and_asks_for_one_it_cannot_read(sd1_dir, tmp_path):
    """A prompt or seed can come from another node (a Primitive, a string node): followed to its value, and that
    node is not named as unapplied. A prompt built by a node textinv cannot read (joined strings, a text file) is
    asked for by its flag, as is a negative that is no text (ComfyUI's ConditioningZeroOut)."""
    graph = _comfy_graph()
    graph.update({"20": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat from a primitive"}},
                  "21": {"class_type": "PrimitiveInt", "inputs": {"value": 77}}})
    graph["6"]["inputs"]["text"] = ["20", 0]
    graph["3"]["inputs"]["seed"] = ["21", 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config, _ = _notes(_comfy_picture(tmp_path / "p.png", graph), {"model": str(sd1_dir)})
    assert (config.prompt, config.seed, config.negative_prompt) == (["a cat from a primitive"], 77, "blurry")
    for source in ({"class_type": "StringConcatenate", "inputs": {"string_a": "a cat", "string_b": "a hat",
                                                                   "delimiter": ", "}},
                   {"class_type": "LoadTextFile", "inputs": {"path": "prompts/cat.txt"}}):
        graph["20"] = source
        path = _comfy_picture(tmp_path / "p.png", graph)
        with pytest.raises(ConfigError, match=r"p.png: the positive prompt of its ComfyUI KSampler node 3 is no "
                                              r"text textinv can read \(the text of its CLIPTextEncode node 6 "
                                              r"comes from a node textinv cannot read\): give it with --prompt"):
            _notes(path, {"model": str(sd1_dir)})
        assert _notes(path, {"model": str(sd1_dir), "prompt": ["a cat"]})[0].prompt == ["a cat"]
    # (a ConditioningCombine is read as AND: test_again_reads_comfyuis_conditioning_combine_as_and_at_one_over_k)
    graph["30"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    graph["3"]["inputs"]["negative"] = ["30", 0]
    path = _comfy_picture(tmp_path / "p.png", graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (its node is drawn, not named as not applied)
        config, _ = _notes(path, {"model": str(sd1_dir), "prompt": ["a cat"]})
    assert (config.negative_prompt, config.zero_negative) == ("", True)  # (zeros, on SD 1.x as on any model)
    graph["3"]["inputs"]["negative"], graph["3"]["inputs"]["positive"] = ["7", 0], ["30", 0]
    with pytest.raises(ConfigError, match=r"the positive prompt of its ComfyUI KSampler node 3 is no text textinv "
                                          r"can read \(its ConditioningZeroOut node 30 gives zeros, which textinv "
                                          r"draws in place of a sampler's negative prompt alone \(--zero-negative\)"
                                          r"\): give it with --prompt"):
        _notes(_comfy_picture(tmp_path / "p.png", graph), {"model": str(sd1_dir)})


def test_again_refuses_a_comfyui_graph_it_cannot_follow_naming_the_file(tmp_path):
    """A graph whose saved picture comes from no KSampler (a custom sampler), one with no save node, a 'prompt' text
    that is no JSON and a PNG whose layout alone (its 'workflow') holds no nodes are refused naming the file and why.
    A ComfyUI picture given as --embedding is pointed to --again, as the web UI's is."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from textinv.again import read_picture
    from textinv.formats import load_embedding

    graph = _comfy_graph()
    graph["3"]["class_type"] = "SamplerCustomNoise"  # (a custom node's sampler)
    with pytest.raises(ConfigError, match=r"c.png: textinv reads the KSampler, KSamplerAdvanced, SamplerCustom or "
                                          r"SamplerCustomAdvanced a ComfyUI picture comes from, and its saved picture "
                                          r"comes from SamplerCustomNoise node 3, not such a sampler"):
        read_picture(_comfy_picture(tmp_path / "c.png", graph))
    del graph["9"]
    with pytest.raises(ConfigError, match=r"c.png: .*and it has no SaveImage or PreviewImage node"):
        read_picture(_comfy_picture(tmp_path / "c.png", graph))
    with pytest.raises(ConfigError, match=r"c.png: its ComfyUI 'prompt' text is not JSON"):
        read_picture(_comfy_picture(tmp_path / "c.png", '{"3": {"class_type": "KSampler", '))
    info = PngInfo()
    info.add_text("workflow", json.dumps({"nodes": [], "links": []}))
    Image.new("RGB", (8, 8)).save(tmp_path / "layout.png", pnginfo=info)
    with pytest.raises(ConfigError, match=r"layout.png: .*and it has no SaveImage or PreviewImage node"):
        read_picture(tmp_path / "layout.png")
    with pytest.raises(FormatError, match=r"drawn picture .*textinv generate --again .*drawn\.png"):
        load_embedding(_comfy_picture(tmp_path / "drawn.png", _comfy_graph()))


def _comfy_lora_graph():
    """The default graph (`_comfy_graph`) with clip skip 2 (CLIPSetLastLayer node 10) and a LoRA (LoraLoader node
    11) on its model and CLIP, in the API format."""
    graph = _comfy_graph()
    graph.update({
        "10": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]}},
        "11": {"class_type": "LoraLoader", "inputs": {"lora_name": "film.safetensors", "strength_model": 1.0,
                                                      "strength_clip": 0.5, "model": ["4", 0], "clip": ["10", 0]}},
    })
    graph["3"]["inputs"]["model"] = ["11", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["11", 1]
    return graph


def _comfy_editor_workflow():
    """`_comfy_lora_graph` as ComfyUI's editor saves it ("Save", a PNG's 'workflow'): nodes with their widgets_values
    (KSampler's control_after_generate after its seed) and links [id, from node, from slot, to node, to slot, type].
    Its seed comes from a Primitive (node 20), its model through a Reroute (21), the negative prompt's CLIP through a
    bypassed LoRA (12); a muted ControlNetLoader (14) and a note (13) are not in the graph ComfyUI runs."""
    def node(id, type, widgets, inputs=(), outputs=(), mode=0):
        return {"id": id, "type": type, "mode": mode, "widgets_values": widgets,
                "inputs": [{"name": name, "type": kind, "link": link, **({"widget": {"name": name}} if widget else {})}
                           for name, kind, link, widget in inputs],
                "outputs": [{"name": kind.lower(), "type": kind} for kind in outputs]}

    nodes = [
        node(3, "KSampler", [1234, "randomize", 2, 6.5, "dpmpp_2m", "karras", 1.0],
             [("model", "MODEL", 1, False), ("positive", "CONDITIONING", 2, False),
              ("negative", "CONDITIONING", 3, False), ("latent_image", "LATENT", 4, False), ("seed", "INT", 5, True)],
             ["LATENT"]),
        node(4, "CheckpointLoaderSimple", ["sd15/v1-5-pruned-emaonly.safetensors"], (), ["MODEL", "CLIP", "VAE"]),
        node(5, "EmptyLatentImage", [24, 16, 1], (), ["LATENT"]),
        node(6, "CLIPTextEncode", ["a (red:1.2) cat embedding:zz"], [("clip", "CLIP", 6, False)], ["CONDITIONING"]),
        node(7, "CLIPTextEncode", ["blurry"], [("clip", "CLIP", 7, False)], ["CONDITIONING"]),
        node(8, "VAEDecode", [], [("samples", "LATENT", 8, False), ("vae", "VAE", 9, False)], ["IMAGE"]),
        node(9, "SaveImage", ["ComfyUI"], [("images", "IMAGE", 10, False)]),
        node(10, "CLIPSetLastLayer", [-2], [("clip", "CLIP", 11, False)], ["CLIP"]),
        node(11, "LoraLoader", ["film.safetensors", 1.0, 0.5], [("model", "MODEL", 12, False),
                                                                ("clip", "CLIP", 13, False)], ["MODEL", "CLIP"]),
        node(12, "LoraLoader", ["ghibli.safetensors", 0.8, 0.8], [("model", "MODEL", None, False),
                                                                  ("clip", "CLIP", 14, False)], ["MODEL", "CLIP"],
             mode=4),
        node(13, "Note", ["the cat prompt"]),
        node(14, "ControlNetLoader", ["canny.safetensors"], (), ["CONTROL_NET"], mode=2),
        node(20, "PrimitiveNode", [1234, "fixed"], (), ["INT"]),
        node(21, "Reroute", [], [("", "*", 15, False)], ["MODEL"]),
    ]
    links = [[1, 21, 0, 3, 0, "MODEL"], [2, 6, 0, 3, 1, "CONDITIONING"], [3, 7, 0, 3, 2, "CONDITIONING"],
             [4, 5, 0, 3, 3, "LATENT"], [5, 20, 0, 3, 4, "INT"], [6, 11, 1, 6, 0, "CLIP"], [7, 12, 1, 7, 0, "CLIP"],
             [8, 3, 0, 8, 0, "LATENT"], [9, 4, 2, 8, 1, "VAE"], [10, 8, 0, 9, 0, "IMAGE"], [11, 4, 1, 10, 0, "CLIP"],
             [12, 4, 0, 11, 0, "MODEL"], [13, 10, 0, 11, 1, "CLIP"], [14, 11, 1, 12, 1, "CLIP"],
             [15, 11, 0, 21, 0, "MODEL"]]
    return {"last_node_id": 21, "last_link_id": 15, "nodes": nodes, "links": links, "groups": [], "version": 0.4}


def test_again_reads_a_comfyui_workflow_file_in_either_format_as_the_picture_it_drew(sd1_dir, tmp_path):
    """ComfyUI saves a workflow as a .json file, in its API format ("Save (API Format)": the picture's 'prompt'
    graph) or the editor's ("Save": nodes with their widgets_values, and links); a picture may hold the editor's
    alone (its 'workflow'). --again took each for a picture and refused it ("cannot read it as a picture", "holds no
    generation settings"): each is read, to the same settings as the picture the graph drew."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from textinv.again import holds_settings, read_picture
    from textinv.cli import main
    from textinv.comfy_workflow import api_graph

    # (the Primitive's seed, the Reroute and the bypassed LoRA passed through, the note and the muted node dropped)
    assert api_graph(_comfy_editor_workflow(), tmp_path / "editor.json") == _comfy_lora_graph()
    drawn = read_picture(_comfy_picture(tmp_path / "drawn.png", _comfy_lora_graph()))
    (tmp_path / "api.json").write_text(json.dumps(_comfy_lora_graph()))
    (tmp_path / "editor.json").write_text(json.dumps(_comfy_editor_workflow()))
    info = PngInfo()
    info.add_text("workflow", json.dumps(_comfy_editor_workflow()))
    Image.new("RGB", (24, 16)).save(tmp_path / "layout.png", pnginfo=info)
    webp = Image.new("RGB", (24, 16))  # (SaveAnimatedWEBP's layout: the EXIF Make tag, "workflow:{...}")
    exif = webp.getexif()
    exif[0x010F] = "workflow:" + json.dumps(_comfy_editor_workflow())
    webp.save(tmp_path / "layout.webp", exif=exif)
    assert drawn.settings["clip_skip"] == 2 and drawn.settings["seed"] == 1234
    assert drawn.settings["prompt"] == ["a (red:1.2) cat embedding:zz <lora:film:0.5:1>"]
    for name in ("api.json", "editor.json", "layout.png", "layout.webp"):
        picture = read_picture(tmp_path / name)
        assert (picture.origin, picture.settings, list(picture.needs)) == ("comfyui", drawn.settings, ["model"]), name
    assert holds_settings(tmp_path / "layout.png")
    # a prompt typed into core's String node, its link read as the picture's graph reads it
    workflow = _comfy_editor_workflow()
    workflow["nodes"].append({"id": 22, "type": "PrimitiveStringMultiline", "widgets_values": ["a dog"],
                              "outputs": [{"name": "STRING", "type": "STRING"}]})
    workflow["nodes"][3]["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 16})
    workflow["links"].append([16, 22, 0, 6, 1, "STRING"])
    (tmp_path / "string.json").write_text(json.dumps(workflow))
    assert read_picture(tmp_path / "string.json").settings["prompt"] == ["a dog <lora:film:0.5:1>"]
    with warnings.catch_warnings(record=True) as said:  # (its clip skip and LoRA, as from the picture)
        warnings.simplefilter("always")
        assert main(["generate", "--again", str(tmp_path / "editor.json"), "--model", str(sd1_dir), "--prompt",
                     "a cat", "--out", str(tmp_path / "r")]) == 0
    assert any("editor.json: its LoRAs are drawn by the tags <lora:film:0.5:1>" in str(w.message) for w in said)
    (redrawn,) = (tmp_path / "r").iterdir()
    settings = json.loads(Image.open(redrawn).text["textinv_settings"])["settings"]
    assert (settings["seed"], settings["steps"], settings["clip_skip"], Image.open(redrawn).size) == (1234, 2, 2,
                                                                                                     (24, 16))
    # without a picture, a size the graph does not say is asked for (a picture's is the size drawn)
    graph = _comfy_hires_graph()
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    (tmp_path / "loop.json").write_text(json.dumps(graph))
    picture = read_picture(tmp_path / "loop.json")
    assert "width" not in picture.settings
    assert any("does not say the size KSampler node 11 drew at (it did not start from an EmptyLatentImage, and a "
               "workflow file holds no picture): give --width and --height" in note for note in picture.notes)


def test_again_refuses_a_comfyui_workflow_file_it_cannot_read_naming_it(tmp_path, capsys):
    """A .json that is no JSON, JSON that is neither of ComfyUI's formats, an editor's workflow with a node type
    textinv cannot translate (its widgets' order is its own) or with other widgets than its type's: each refused
    naming the file, the node and the fix, before anything loads."""
    import json

    from textinv.again import read_picture
    from textinv.cli import main

    (tmp_path / "broken.json").write_text('{"nodes": [')
    (tmp_path / "other.json").write_text(json.dumps({"settings": {"seed": 1}}))
    short = _comfy_editor_workflow()
    short["nodes"][0]["widgets_values"] = [1234, 2, 6.5, "dpmpp_2m", "karras", 1.0]  # (no control_after_generate)
    (tmp_path / "short.json").write_text(json.dumps(short))
    cases = [("broken.json", r"broken.json: cannot read it as a ComfyUI workflow's JSON"),
             ("other.json", r"other.json is no ComfyUI workflow: neither the editor's format \(ComfyUI's \"Save\": "
                            r"\"nodes\" and \"links\"\) nor the API format"),
             ("short.json", r"short.json: its ComfyUI workflow's KSampler node \(3\) holds 6 widget values, where "
                            r"textinv reads 7 \(seed, control_after_generate, steps, .*\"Save \(API Format\)\"")]
    for name, message in cases:
        with pytest.raises(ConfigError, match=message):
            read_picture(tmp_path / name)
    assert main(["generate", "--again", str(tmp_path / "short.json")]) == 2
    assert "KSampler node (3)" in capsys.readouterr().err


def test_a_comfyui_workflow_node_textinv_does_not_translate_is_named_as_not_applied_where_the_picture_passed(tmp_path):
    """An editor workflow's node of a type textinv has no widget order for (ImageSharpen, a ControlNet node) comes
    with its links alone: between the decoder and the saver it is named as not applied, as in an API-format graph;
    unconnected, it is passed over; the settings read are the plain workflow's either way."""
    from textinv.again import read_picture

    plain = read_picture(_write_json(tmp_path / "plain.json", _comfy_editor_workflow()))
    apart = _comfy_editor_workflow()
    apart["nodes"].append({"id": 15, "type": "ControlNetApply", "mode": 0, "widgets_values": [1.0], "inputs": []})
    between = _comfy_editor_workflow()
    between["nodes"].append({"id": 16, "type": "ImageSharpen", "mode": 0, "widgets_values": [1, 1.0, 1.0],
                             "inputs": [{"name": "image", "type": "IMAGE", "link": 16}],
                             "outputs": [{"name": "IMAGE", "type": "IMAGE"}]})
    between["links"] = [link for link in between["links"] if link[0] != 10] + [[10, 16, 0, 9, 0, "IMAGE"],
                                                                              [16, 8, 0, 16, 0, "IMAGE"]]
    saver = next(node for node in between["nodes"] if node["type"] == "SaveImage")
    assert saver["inputs"][0]["link"] == 10  # (the saver now reads the sharpened picture through link 10)
    read = read_picture(_write_json(tmp_path / "apart.json", apart))
    sharpened = read_picture(_write_json(tmp_path / "between.json", between))
    assert read.settings == plain.settings == sharpened.settings
    def said(picture):  # (each note without the file it names)
        return [note.split(": ", 1)[1] for note in picture.notes]

    assert said(read) == said(plain) and not any("not applied from its ComfyUI graph" in n for n in said(plain))
    assert said(sharpened)[:len(said(plain))] == said(plain)
    assert [n for n in said(sharpened) if n.startswith("not applied from its ComfyUI graph: ImageSharpen")]


def _write_json(path, data):
    import json

    path.write_text(json.dumps(data))
    return path


def test_again_tells_a_training_runs_folder_retrained_since(sd1_dir, tmp_path):
    """The README's `--embedding runs/my-dog` (a run's folder, not its file): the picture records the SHA-256 of the
    file the folder gave, so a run retrained since (`--overwrite`) is warned about on --again, as a file is; the
    file itself given for the folder is compared with the same record."""
    import hashlib
    import json

    from textinv.again import again_config

    run = tmp_path / "runs" / "my-dog"
    run.mkdir(parents=True)
    save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), run / "learned_embeds.safetensors")
    (path,) = generate(GenerateConfig(prompt=["a <q>"], embedding=[str(run)], out=str(tmp_path / "r"), n=1, steps=1,
                                      model=str(sd1_dir), metadata="full"), progress=False)
    record = json.loads(Image.open(path).text["textinv_settings"])
    digest = hashlib.sha256((run / "learned_embeds.safetensors").read_bytes()).hexdigest()
    assert record["embedding_sha256"] == [digest]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the same bytes: no word about them, by the folder or by its file)
        again_config(path, {})
        again_config(path, {"embedding": [str(run / "learned_embeds.safetensors")]})
    save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), run / "learned_embeds.safetensors")
    with pytest.warns(UserWarning, match=rf"drawn with other contents of {run} .*will differ"):
        again_config(path, {})


def test_again_names_a_moved_file_and_ignores_a_newer_textinvs_settings_with_a_warning(sd1_dir, tmp_path):
    import json
    import shutil

    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config
    from textinv.formats import load_embedding

    shutil.copytree(sd1_dir, tmp_path / "model")
    emb = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "q.safetensors")[0]
    (path,) = generate(GenerateConfig(prompt=["a <w>"], embedding=[str(emb)], token=["<w>"], out=str(tmp_path / "r"),
                                      n=1, steps=1, model=str(tmp_path / "model"), metadata="full"), progress=False)
    with pytest.raises(FormatError, match="drawn picture .*textinv generate --again"):  # not an embedding
        load_embedding(path)
    emb.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ConfigError, match=rf"its --embedding {emb} no longer exists.*pass --embedding with where"):
        again_config(path, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the same bytes: no word about them)
        config, _ = again_config(path, {"embedding": [str(tmp_path / "moved.safetensors")]})
    assert config.token == ["<w>"]  # the same file, moved: its --token name kept
    # retrained at the same path: the redraw draws other vectors, and says so
    save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "retrained.safetensors")
    with pytest.warns(UserWarning, match=r"drawn with other contents of .*retrained.safetensors .*will differ"):
        again_config(path, {"embedding": [str(tmp_path / "retrained.safetensors")]})
    (tmp_path / "model").rename(tmp_path / "model2")
    with pytest.raises(ConfigError, match=rf"its --model {tmp_path / 'model'} no longer exists.*pass --model"):
        again_config(path, {"embedding": [str(tmp_path / "moved.safetensors")]})

    # a record from a newer textinv: its unknown settings are named, ignored, and the rest is drawn
    text = Image.open(path).text
    record = json.loads(text["textinv_settings"])
    record["textinv_version"] = "9.0"
    record["settings"]["future_knob"] = 3
    record["future"] = {}
    info = PngInfo()
    info.add_text("textinv_settings", json.dumps(record))
    Image.open(path).save(tmp_path / "newer.png", pnginfo=info)
    with pytest.warns(UserWarning) as caught:
        config, _ = again_config(tmp_path / "newer.png", {"model": str(sd1_dir),
                                                          "embedding": [str(tmp_path / "moved.safetensors")]})
    said = " ".join(str(w.message) for w in caught)
    assert "does not know, from textinv 9.0: future, future_knob; they are ignored" in said
    assert "drawn by textinv 9.0" in said and config.prompt == ["a <w>"] and config.seed == 0


def _strings(value):
    """Every string in a decoded JSON value, keys too."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


def _drawn_with_paths(sd1_dir, tmp_path, metadata):
    """A picture drawn with every local path setting (model, embedding, LoRA folder, VAE), from `tmp_path / work`,
    written with `--metadata metadata`."""
    import os
    import shutil

    from textinv.cli import main
    from textinv.tiny import _tiny_vae

    work = tmp_path / "work"
    if not work.exists():
        (work / "Lora").mkdir(parents=True)
        shutil.copytree(sd1_dir, work / "sd15")
        save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32) * 3}), work / "q.safetensors")
        _save_tiny_lora(work / "Lora", "mystyle")
        torch.manual_seed(5)
        _tiny_vae().save_pretrained(work / "vae")
    assert main(["generate", "--model", str(work / "sd15"), "--embedding", str(work / "q.safetensors"), "--lora-dir",
                 str(work / "Lora"), "--vae", str(work / "vae"), "--prompt", "a photo of <q> <lora:mystyle:0.7>",
                 "-n", "2", "--seed", "5", "--batch-size", "2", "--steps", "2", "--out", str(tmp_path / metadata),
                 "--metadata", metadata]) == 0
    return tmp_path / metadata / "000-a-photo-of-q-s6.png", os.sep


def test_a_shareable_picture_names_its_files_without_saying_where_they_are(sd1_dir, tmp_path):
    """The record held the absolute paths of the model, embeddings, LoRA folders and VAE, and `parameters` the
    model's: a shared picture told the user's name and folder layout (/home/alice/clients/acme/...). Shareable, the
    default, keeps their names and the embeddings' SHA-256 only; a bundled model or a hub id is no path."""
    import hashlib
    import json
    import re

    from textinv.infotext import shareable_record

    picture, sep = _drawn_with_paths(sd1_dir, tmp_path, "shareable")
    text = Image.open(picture).text
    record = json.loads(text["textinv_settings"])
    strings = _strings(record) + list(text.values())
    assert not [s for s in strings if str(tmp_path) in s or str(sd1_dir) in s or s.startswith(sep)]
    assert not [s for s in text.values() if re.search(rf"(^|[\s:,=\"]){re.escape(sep)}\w", s)]
    settings = record["settings"]
    assert (settings["model"], settings["embedding"], settings["lora_dir"], settings["vae"]) == (
        "sd15", ["q.safetensors"], ["Lora"], "vae")
    assert record["by_name"] == ["model", "embedding", "lora_dir", "vae"] and settings["metadata"] == "shareable"
    digest = hashlib.sha256((tmp_path / "work" / "q.safetensors").read_bytes()).hexdigest()
    assert record["embedding_sha256"] == [digest] and re.search(r"Model: sd15(,|$)", text["parameters"])
    # what names no local file stays as it is, and is not asked for
    names = {"model": "shapes", "embedding": [], "lora_dir": [], "vae": "madebyollin/sdxl-vae-fp16-fix",
             "single_file_config": None}
    assert shareable_record(names) == (names, [])


def test_no_metadata_writes_no_text_and_full_keeps_the_paths(sd1_dir, tmp_path):
    import json

    from textinv.again import read_picture

    picture, _ = _drawn_with_paths(sd1_dir, tmp_path, "none")
    assert Image.open(picture).text == {}
    with pytest.raises(ConfigError, match="holds no generation settings.*--metadata none writes none"):
        read_picture(picture)
    full, _ = _drawn_with_paths(sd1_dir, tmp_path, "full")
    record = json.loads(Image.open(full).text["textinv_settings"])
    assert record["settings"]["embedding"] == [str(tmp_path / "work" / "q.safetensors")] and "by_name" not in record
    assert np.array_equal(_pixels(full), _pixels(picture))  # the text changes, not the picture


def test_the_parameters_name_a_single_file_model_as_the_web_ui_does_and_again_still_finds_it(sd1_dir, tmp_path):
    """The web UI's infotext writes `Model: <name>`, its checkpoint's file name without the suffix
    (sd_models.CheckpointInfo.model_name), where textinv wrote the file's name or (--metadata full) its path; --again
    finds the model by textinv's record, not by that name, so a full picture redraws without --model and a shareable
    one asks for it."""
    from safetensors.torch import save_file
    from test_models import _ldm_state_dict
    from textinv.again import again_config

    save_file(_ldm_state_dict(build_tiny_pipeline("sd1", seed=0)), tmp_path / "sd15 v2.safetensors")
    model = tmp_path / "sd15 v2.safetensors"
    for metadata in ("shareable", "full"):
        [picture] = generate(GenerateConfig(prompt=["a dog"], model=str(model), single_file_config=str(sd1_dir),
                                            out=str(tmp_path / metadata), n=1, seed=1, steps=2, metadata=metadata),
                             progress=False)
        text = Image.open(picture).text
        assert re.search(r"Model: sd15 v2(,|$)", text["parameters"]), text["parameters"]
        assert text["model"] == ("sd15 v2.safetensors" if metadata == "shareable" else str(model))
    assert again_config(picture, {"out": str(tmp_path / "again")})[0].model == str(model)
    with pytest.raises(ConfigError, match=r"--model with where sd15 v2.safetensors is"):
        again_config(tmp_path / "shareable" / picture.name, {"out": str(tmp_path / "again")})
    from textinv.infotext import png_text  # (a folder, a hub id and a bundled name, as the web UI has none: as given)

    for given, named in ((str(sd1_dir), sd1_dir.name), ("sd15", "sd15"), ("org/sd-1.5", "org/sd-1.5"),
                         ("shapes", "shapes")):
        assert f"Model: {named}" in png_text({"prompt": "a", "model": given}).chunks[-1][1].decode()


def test_again_on_a_shareable_picture_asks_for_each_path_and_draws_it_bit_for_bit_when_given(sd1_dir, tmp_path,
                                                                                              monkeypatch):
    import json

    from textinv.again import again_config
    from textinv.cli import main

    full, _ = _drawn_with_paths(sd1_dir, tmp_path, "full")
    shared, _ = _drawn_with_paths(sd1_dir, tmp_path, "shareable")
    assert np.array_equal(_pixels(full), _pixels(shared))
    with pytest.raises(ConfigError, match=r"names its files without saying where they are .*--metadata shareable.*"
                                          r"pass --model with where sd15 is; --embedding with where q.safetensors is; "
                                          r"--lora-dir with where Lora is; --vae with where vae is"):
        again_config(shared, {})
    with pytest.raises(ConfigError, match=r"pass --vae with where vae is$"):  # only what is still missing
        again_config(shared, {"model": "m", "embedding": ["e"], "lora_dir": ["l"]})
    # without a LoRA in the prompt the LoRA folder is not needed
    with pytest.raises(ConfigError, match=r"pass --model with where sd15 is; --embedding .*; --vae"):
        again_config(shared, {"prompt": ["a photo of <q>"]})
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    paths = ["--model", str(work / "sd15"), "--embedding", str(work / "q.safetensors"), "--lora-dir",
             str(work / "Lora"), "--vae", str(work / "vae")]
    assert main(["generate", "--again", str(shared), "--out", "again", *paths]) == 0
    assert [p.name for p in (elsewhere / "again").iterdir()] == [shared.name]
    redrawn = elsewhere / "again" / shared.name
    assert np.array_equal(_pixels(redrawn), _pixels(full))
    assert json.loads(Image.open(redrawn).text["textinv_settings"])["by_name"]  # written as the picture was
    # another file given for the embedding is warned about, by the SHA-256 the picture kept
    save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "other.safetensors")
    with pytest.warns(UserWarning, match=r"drawn with other contents of .*other.safetensors"):
        again_config(shared, {"model": "m", "embedding": [str(tmp_path / "other.safetensors")], "lora_dir": ["l"],
                              "vae": "v"})


def test_again_reads_an_older_textinvs_per_key_text(sd1_dir, tmp_path):
    from textinv.again import again_config
    from textinv.infotext import png_text

    old = {"prompt": "a dog", "expanded_prompt": "a dog", "negative_prompt": "cat", "seed": 7, "steps": 3,
           "sampler": "euler", "guidance": 5.0, "size": "24x16", "clip_skip": 1, "model": str(sd1_dir),
           "embeddings": "", "textinv_version": "0.0.9"}
    Image.new("RGB", (24, 16)).save(tmp_path / "old.png", pnginfo=png_text(old))
    with pytest.warns(UserWarning, match="textinv 0.0.9, which did not record the precision, --vae"), \
            pytest.warns(UserWarning, match="drawn by textinv 0.0.9, this is"):
        config, keep = again_config(tmp_path / "old.png", {})
    assert (config.prompt, config.negative_prompt, config.seed, config.steps, config.sampler) == (["a dog"], "cat", 7,
                                                                                                   3, "euler")
    assert (config.guidance, config.width, config.height, config.model, config.embedding) == (5.0, 24, 16,
                                                                                              str(sd1_dir), [])


def _webui_short_hash(data: bytes) -> str:
    """The web UI's short hash, from its definition: the first 12 hex digits of a SHA-256 (Embedding.shorthash, of
    the whole file; a LoRA's, NetworkOnDisk.shorthash, of the safetensors bytes after the header)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()[:12]


def test_pictures_name_the_embeddings_and_loras_they_used_by_the_web_uis_hashes(sd1_dir, tmp_path, monkeypatch):
    """The web UI writes 'TI hashes: "name: shorthash, ..."' and 'Lora hashes: ...' into its parameters, which civitai
    links the resources by; textinv wrote neither. Each picture names the embeddings its own prompt and the negative
    draw with, by the names the prompt used; a LoRA's hash is its trainer's sshs_model_hash when the file has one."""
    from safetensors.torch import load_file, save_file

    import textinv.generate as gen
    from textinv.again import parse_a1111_parameters, parse_webui_hashes

    q = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "q.safetensors")[0]
    bad = save_embedding(LearnedEmbedding("bad", {"text_encoder": torch.randn(1, 32)}), tmp_path / "bad.pt", "a1111")[0]
    unused = save_embedding(LearnedEmbedding("<u>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "u.pt",
                            "a1111")[0]
    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "my,style")
    save_file(load_file(str(loras / "my,style.safetensors")), str(loras / "kohya.safetensors"),
              metadata={"sshs_model_hash": "0123456789abcdef" * 4, "ss_output_name": "kohya"})
    data = (loras / "my,style.safetensors").read_bytes()
    addnet = _webui_short_hash(data[8 + int.from_bytes(data[:8], "little"):])  # the tensors after the header
    config = GenerateConfig(prompt=["a photo of <Q> <lora:my,style:0.5> <lora:kohya:0.2>", "[a cat:a <q>:2]", "a dog"],
                            negative_prompt="BAD, blurry", embedding=[str(q), str(bad), str(unused)],
                            out=str(tmp_path / "r"), n=1, steps=3, lora_dir=[str(loras)])
    model = fresh_model(sd1_dir)
    with pytest.warns(UserWarning, match="'<u>'"):  # (no prompt uses it)
        first, edited, plain = generate(config, model=model, progress=False)
    texts = [parse_a1111_parameters(Image.open(p).text["parameters"]) for p in (first, edited, plain)]
    ti = [f"<q>: {_webui_short_hash(q.read_bytes())}", f"bad: {_webui_short_hash(bad.read_bytes())}"]
    assert texts[0][2]["TI hashes"] == ", ".join(ti)  # (the prompt's, then the negative's)
    assert texts[0][2]["Lora hashes"] == f"mystyle: {addnet}, kohya: 0123456789ab"  # (no comma in a name)
    assert 'TI hashes: "<q>: ' in Image.open(first).text["parameters"]  # quoted, as the web UI quotes it
    assert texts[1][2]["TI hashes"] == ", ".join(ti) and "Lora hashes" not in texts[1][2]  # (<q> from step 2 on)
    assert parse_webui_hashes(texts[2][2]["TI hashes"]) == {"bad": ti[1][5:]}  # (the negative's alone)
    assert (texts[0][0], texts[0][1]) == (config.prompt[0], "BAD, blurry")  # the rest of the text reads as before

    def no_hashing(path):
        raise AssertionError("a LoRA hashed for a picture that records nothing")

    monkeypatch.setattr(gen, "lora_sha256", no_hashing)
    with pytest.warns(UserWarning, match="'<u>'"):
        none = generate(GenerateConfig(**{**config.__dict__, "metadata": "none", "out": str(tmp_path / "none")}),
                        model=model, progress=False)
    assert all(Image.open(p).text == {} for p in none)


def test_again_checks_the_embedding_files_given_against_a_web_ui_pictures_ti_hashes(sd1_dir, tmp_path):
    """A web UI picture's TI hashes were named 'not applied'; `--again` with `--embedding FILE` now tells a file that
    is not the one the picture was drawn with, as it tells one that is not in textinv's own record."""
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config

    right = save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), tmp_path / "easyneg.pt",
                           "a1111")[0]
    (tmp_path / "v2").mkdir()
    wrong = save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), tmp_path / "v2" / "easyneg.pt",
                           "a1111")[0]
    info = PngInfo()
    info.add_text("parameters", 'a cat\nNegative prompt: easyneg, hands\nSteps: 2, Seed: 3, Size: 16x16, TI hashes: '
                                f'"easyneg: {_webui_short_hash(right.read_bytes())}, hands: 0123456789ab", Version: v1')
    Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)
    ours = {"model": str(sd1_dir)}

    def said(flags):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again_config(tmp_path / "webui.png", {**ours, **flags})
        return " ".join(str(w.message) for w in caught)

    assert "other embedding files" not in said({"embedding": [str(right)]})
    assert "no --embedding given is" in said({"embedding": [str(right)]})  # (hands is not given)
    assert f"other embedding files than {wrong} (its SHA-256 begins" in said({"embedding": [str(wrong)]})
    assert "other embedding files" in said({"embedding": [str(tmp_path / "v2")]})  # a folder: its easyneg
    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(right.read_bytes())
    assert "other embedding files" not in said({"embedding": [str(renamed)]})  # known by its hash, whatever its name
    assert f"other embedding files than {wrong}" in said({"embedding": [str(wrong)], "token": ["hands"]})
    assert "not applied from its A1111 parameters: Version (" in said({})  # (TI hashes are used now)


def test_again_finds_a_web_ui_pictures_ti_hashes_in_a_folder_whose_names_came_from_a_mac(sd1_dir, tmp_path):
    """The picture's TI hashes name café (composed, NFC); the embeddings folder copied from macOS holds café.pt
    with the accent apart (NFD). Compared byte for byte, the file was not looked at: a wrong version went unsaid,
    and café was named as an embedding no --embedding gives."""
    import unicodedata

    folder = tmp_path / "embeddings"
    folder.mkdir()
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    wrong = save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}), folder / f"{nfd}.pt",
                           "a1111")[0]
    picture = web_ui_picture(tmp_path / "webui.png", 'a caf\u00e9 cat\nSteps: 2, Seed: 3, Size: 16x16, TI hashes: '
                                                     '"caf\u00e9: 0123456789ab", Version: v1')
    _, said = again_warned(picture, {"model": str(sd1_dir), "embedding": [str(folder)]})
    assert f"other embedding files than {wrong} (its SHA-256 begins" in said
    assert "no --embedding given is" not in said


def test_again_finds_a_web_ui_pictures_ti_hashes_in_the_subfolders_of_an_embeddings_folder(sd1_dir, tmp_path):
    """The web UI reads its embeddings folder's subfolders, so the picture's easyneg may be negative/easyneg.pt: it
    was named as an embedding no --embedding gives, and a wrong version there went unsaid."""
    folder = tmp_path / "embeddings"
    wrong = save_embedding(LearnedEmbedding("x", {"text_encoder": torch.randn(1, 32)}),
                           folder / "negative" / "easyneg.pt", "a1111")[0]
    picture = web_ui_picture(tmp_path / "webui.png", 'a cat\nNegative prompt: easyneg\nSteps: 2, Seed: 3, Size: 16x16, '
                                                     'TI hashes: "easyneg: 0123456789ab", Version: v1')
    _, said = again_warned(picture, {"model": str(sd1_dir), "embedding": [str(folder)]})
    assert f"other embedding files than {wrong} (its SHA-256 begins" in said
    assert "no --embedding given is" not in said


def test_a_clip_skip_written_in_other_digits_is_read_as_unsaid_or_as_its_number():
    """str.isdigit() takes '²', which int() refuses: a file saying encoder_layer '²' crashed generate. Decimal digits
    of any script are numbers (int() reads them); other digit-like characters leave the clip skip unsaid."""
    from textinv.generate import trained_clip_skip

    def said(value):
        return trained_clip_skip(LearnedEmbedding("<q>", {"text_encoder": torch.zeros(1, 32)},
                                                  {"modelspec.encoder_layer": value}))

    assert said("²") is None and said("2") == "2" and int(said("٢")) == 2


def test_a_run_drawing_into_the_same_folder_at_once_keeps_the_other_runs_pictures(sd1_dir, tmp_path, monkeypatch):
    """Two generates into one --out at once (the default renders, two embeddings compared in two shells) both chose
    the free names before either wrote, and the later picture replaced the other run's in silence."""
    from textinv import generate as generate_module

    out, real = tmp_path / "r", generate_module.render

    def render(*args, **kwargs):  # (the other run writes its first picture just after this one chose its names)
        (out / "000-a-dog-s0.png").write_bytes(b"the other run's")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "render", render)
    paths = generate(GenerateConfig(prompt=["a dog"], out=str(out), n=2, steps=1, model=str(sd1_dir)), progress=False)
    assert [p.name for p in paths] == ["000-a-dog-s0-2.png", "000-a-dog-s1-2.png"]
    assert (out / "000-a-dog-s0.png").read_bytes() == b"the other run's"
    assert sorted(p.name for p in out.iterdir()) == ["000-a-dog-s0-2.png", "000-a-dog-s0.png", "000-a-dog-s1-2.png"]


def test_the_web_ui_names_of_each_sampler_read_back_as_it(sd1_dir, tmp_path):
    """Each sampler is written into `parameters` as the web UI (1.9 on) writes it, its schedule as `Schedule type`,
    and `--again` reads that back as the same sampler. A sampler whose web UI "Automatic" schedule is not the
    model's spacing (DPM++ 2M's is Karras) says "Uniform", or the web UI would redraw it on its own choice."""
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config
    from textinv.infotext import png_text
    from textinv.samplers import SAMPLERS

    def written(sampler):
        path = tmp_path / "p.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=png_text({"prompt": "a cat", "steps": "4", "sampler": sampler,
                                                              "seed": "3", "size": "16x16"}))
        return path

    text = {s: Image.open(written(s)).text["parameters"] for s in ("dpm++2m", "dpm++2m_sde_karras", "euler", "dpm++2s",
                                                                  "euler_beta", "dpm2", "heun_sgm_uniform")}
    assert "Sampler: Heun, Schedule type: SGM Uniform, Seed" in text["heun_sgm_uniform"]
    assert text["dpm++2m"] == "a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Uniform, Seed: 3, Size: 16x16"
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras, Seed" in text["dpm++2m_sde_karras"]
    assert "Sampler: Euler, Seed" in text["euler"] and "Sampler" not in text["dpm++2s"]
    assert "Sampler: Euler, Schedule type: Beta," in text["euler_beta"]
    assert "Sampler: DPM2, Schedule type: Uniform," in text["dpm2"]  # (the web UI's DPM2 is Karras by itself)
    for sampler in SAMPLERS:
        path = written(sampler)
        if "Sampler" in Image.open(path).text["parameters"]:
            assert again_config(path, {"model": str(sd1_dir)})[0].sampler == sampler, sampler
    # the web UI's "Automatic" is the sampler's own choice: Karras for DPM++ 2M, Exponential for the SDE ones
    for text, ours in [("Sampler: DPM++ 2M, Schedule type: Automatic", "dpm++2m_karras"),
                       ("Sampler: DPM++ 3M SDE, Schedule type: Automatic", "dpm++3m_sde_exponential"),
                       ("Sampler: Euler a, Schedule type: Automatic", "euler_a"),
                       ("Sampler: DPM++ 2M SDE Karras", "dpm++2m_sde_karras"),
                       # (the web UI's SGM Uniform, Normal and Simple, 1.10 on, are ComfyUI's rules: textinv's)
                       ("Sampler: DPM++ 2M SDE, Schedule type: SGM Uniform", "dpm++2m_sde_sgm_uniform"),
                       ("Sampler: Euler, Schedule type: Normal", "euler_normal"),
                       ("Sampler: Euler a, Schedule type: Simple", "euler_a")]:
        path = tmp_path / "w.png"
        info = PngInfo()
        info.add_text("parameters", f"a cat\nSteps: 4, {text}, Seed: 3, Size: 16x16")
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        assert again_config(path, {"model": str(sd1_dir)})[0].sampler == ours, text
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Align Your Steps, Seed: 3")
    Image.new("RGB", (8, 8)).save(tmp_path / "ays.png", pnginfo=info)
    with pytest.raises(ConfigError, match="sampler 'DPM\\+\\+ 2M, Schedule type Align Your Steps', which textinv does "
                                          "not have"):
        again_config(tmp_path / "ays.png", {"model": str(sd1_dir)})


@pytest.mark.parametrize("sampler, package", [("lms", "scipy"), ("euler_beta", "scipy"), ("dpm++sde", "torchsde"),
                                              # (both: torchsde for the sampler, SciPy for its schedule)
                                              ("dpm++sde_beta", "scipy"), ("dpm++sde_beta", "torchsde")])
def test_a_sampler_whose_package_is_missing_is_refused_when_read(monkeypatch, tmp_path, sampler, package):
    """LMS and the Beta schedule need SciPy, DPM++ SDE torchsde, which diffusers does not install: without them the
    sampler is refused when the settings are read (naming the install), not by diffusers at the first picture."""
    import importlib.util

    from textinv.config import TrainConfig
    from textinv.score import ScoreConfig

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else found(name, *a))
    said = f" needs the {package} package .*pip install {package} \\(or pip install 'textinv\\[samplers\\]'"
    named = f"sampler='{re.escape(sampler)}'{said}"
    with pytest.raises(ConfigError, match=f"^{named}"):
        GenerateConfig(prompt=["a dog"], sampler=sampler).validate()
    with pytest.raises(ConfigError, match=f"^hires_{named}"):
        GenerateConfig(prompt=["a dog"], hires_scale=2, hires_sampler=sampler).validate()
    with pytest.raises(ConfigError, match=f"^{named}"):
        ScoreConfig(embedding=str(tmp_path), sampler=sampler).validate()
    (tmp_path / "p.txt").write_text(f"a {{}} --ss {sampler}\n")
    with pytest.raises(ConfigError, match=f"line 1: --ss {re.escape(sampler)}{said}"):
        TrainConfig(images="x", token="<zq>", out="o", sample_prompts=[str(tmp_path / "p.txt")]).validate()
    monkeypatch.undo()
    assert GenerateConfig(prompt=["a dog"], sampler=sampler).validate().sampler == sampler


def test_composable_diffusion_prompts_are_split_and_weighed_as_the_web_ui_reads_them():
    from textinv.emphasis import composable_parts, has_and

    assert composable_parts("a:2 AND b") == [("a", 2.0), (" b", 1.0)]
    # a trailing weight with spaces around its colon, signed, or with a bare decimal point
    assert composable_parts("a castle : 0.8  AND fog :-1 AND rain:.5 AND sun:2.") == \
        [("a castle", 0.8), (" fog", -1.0), (" rain", 0.5), (" sun", 2.0)]
    # a colon that is not a sub-prompt's trailing weight is text: emphasis, a ratio, a word after it
    assert composable_parts("(red:1.2) car AND 16:9 frame AND a: b") == \
        [("(red:1.2) car", 1.0), (" 16:9 frame", 1.0), (" a: b", 1.0)]
    # AND in capitals, a whole word: "and", ANDROID and sANDy are words
    assert [has_and(p) for p in ("a AND b", "black and white, ANDROID, sANDy")] == [True, False]
    assert composable_parts("black and white") == [("black and white", 1.0)]


def _drawn(model, prompts, seeds=(0,), steps=3, **kwargs):
    return [np.asarray(img, dtype=int) for img in render(model, list(prompts), list(seeds), steps=steps, **kwargs)]


@pytest.mark.parametrize("prompts, negatives", [
    (["a dog", "a cat"], ["ugly", "(blurry:1.3), [dark:fog:1]"]),  # emphasis, prompt editing in one
    (["a red dog AND fog", "a cat AND sun:0.5"], ["ugly", "blurry, dark"]),  # composable diffusion
    (["a BREAK b BREAK c", "x BREAK y BREAK z"], ["ugly", "fog BREAK dark"]),  # each negative at its own length
])
def test_pictures_of_different_negatives_share_a_call_each_drawn_as_alone(sd1_dir, prompts, negatives):
    """As the web UI stacks each picture's negative in a batch's uncond: one UNet call a step for the batch, each
    row given its own picture's negative (and hidden padding), each picture the one drawn alone."""
    model = fresh_model(sd1_dir)
    seen = _conditioning_seen(model)
    together = _drawn(model, prompts, seeds=(0, 1), negative_prompt=negatives)
    rows = [hidden for hidden, _ in seen]  # (each call's: the negatives, then the prompts' rows)
    assert len(rows) == 3
    for i, (prompt, negative) in enumerate(zip(prompts, negatives)):
        seen.clear()
        alone, = _drawn(model, [prompt], seeds=(i,), negative_prompt=negative)
        assert len(seen) == 3 and np.abs(together[i] - alone).max() <= 1
        for hidden, (own, _) in zip(rows, seen):  # its negative's row, each step, as drawn alone
            torch.testing.assert_close(hidden[i, :own.shape[1]], own[0], rtol=0, atol=1e-5)


def test_render_refuses_negatives_that_are_not_one_a_prompt(sd1_dir):
    model = fresh_model(sd1_dir)
    with pytest.raises(ConfigError, match="one negative prompt, or one for each prompt: got 1 negative prompts for 2"):
        render(model, ["a dog", "a cat"], [0, 1], steps=2, negative_prompt=["ugly"])


def test_composable_diffusion_guides_with_each_sub_prompt(sd1_dir):
    """"a AND b" is neither "a b" nor "a"; "x:0.5 AND x:0.5" reduces to "x" (uncond + 0.5 g (x - uncond) twice), at
    guidance 1 too (no CFG: uncond + sum w (cond - uncond), as the web UI draws at CFG scale 1)."""
    model = fresh_model(sd1_dir)
    both, = _drawn(model, ["a red dog AND a blue cat"])
    assert np.abs(both - _drawn(model, ["a red dog a blue cat"])[0]).max() > 2
    assert np.abs(both - _drawn(model, ["a red dog"])[0]).max() > 2
    for guidance in (7.5, 1.0):
        alone, = _drawn(model, ["a red dog"], guidance=guidance)
        halves, = _drawn(model, ["a red dog :0.5 AND a red dog:0.5"], guidance=guidance)
        assert np.abs(halves - alone).max() <= 1
    # a weight scales its sub-prompt's guidance: 0 leaves it out, 2 doubles it (at guidance 1 as well: the
    # negative is drawn there too, uncond + 2 (cond - uncond) being "a red dog" at guidance 2)
    assert np.abs(_drawn(model, ["a red dog AND a blue cat:0"])[0] - _drawn(model, ["a red dog"])[0]).max() <= 1
    for guidance in (3.5, 1.0):
        doubled, = _drawn(model, ["a red dog:2 AND a blue cat:0"], guidance=guidance, negative_prompt="ugly")
        assert np.abs(doubled - _drawn(model, ["a red dog"], guidance=2 * guidance, negative_prompt="ugly")[0]).max() <= 1


def test_composable_diffusion_picture_is_its_own_at_any_batch_size_and_length(sd1_dir):
    """A picture's batch-mates (another prompt with more sub-prompts, longer ones) do not change it, nor does a
    sub-prompt longer than one chunk change another's picture: each is read at its own length."""
    model = fresh_model(sd1_dir)
    alone, = _drawn(model, ["a red dog AND a blue cat"], negative_prompt="ugly")
    mates = _drawn(model, ["a red dog AND a blue cat", "fog AND " + "tree, " * 40 + " AND sun:0.3"], seeds=(0, 1),
                   negative_prompt="ugly")
    assert np.abs(mates[0] - alone).max() <= 1


def test_composable_sub_prompts_of_different_lengths_are_padded_with_their_last_vector(sd1_dir):
    """As the web UI stacks sub-prompts (prompt_parser.stack_conds): a sub-prompt shorter than its picture's longest
    is read at that length, its own chunks followed by copies of its last vector (not empty chunks, not hidden);
    the negative is read at its own length (the web UI's pad_cond_uncond off)."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    unet = model.pipeline.unet
    seen = []
    forward = unet.forward

    def record(*args, **kwargs):  # (what the UNet is called with once every hook has run)
        seen.append((kwargs["encoder_hidden_states"].clone(), kwargs.get("encoder_attention_mask")))
        return forward(*args, **kwargs)

    unet.forward = record
    try:
        _drawn(model, ["a red dog AND " + "tree, " * 40], steps=1, negative_prompt="ugly")
    finally:
        del unet.forward
    hidden, mask = seen[0]  # rows: the negative, the short sub-prompt, the long one (chunks of 77)
    assert hidden.shape[0] == 3 and hidden.shape[1] >= 154
    short = encode_prompts(model, ["a red dog "])[0][0]  # (77, C): its one chunk
    assert torch.allclose(hidden[1, :77], short, atol=1e-5)
    assert torch.equal(hidden[1, 77:], hidden[1, 76].expand(hidden.shape[1] - 77, -1))  # copies of its last vector
    assert not torch.allclose(hidden[1, 77:], hidden[0, 77:], atol=1e-3)  # (not the empty chunk)
    assert mask is not None and mask[1:].all()  # both sub-prompts read at the longer's length
    assert mask[0, :77].all() and not mask[0, 77:].any()  # the negative at its own


def test_prompt_editing_and_learned_tokens_work_inside_each_sub_prompt(sd1_dir):
    model = fresh_model(sd1_dir)
    emb = LearnedEmbedding("<zq>", {"text_encoder": torch.randn(2, model.widths[0], generator=torch.Generator()
                                                                 .manual_seed(0)) * 2})
    install_embedding(model, emb)
    prompts = ["[a red dog:a blue cat:1] AND fog", "a red dog AND fog", "a blue cat AND fog"]
    edited, before, after = (_drawn(model, [p], steps=4)[0] for p in prompts)
    assert np.abs(edited - before).max() > 0 and np.abs(edited - after).max() > 0
    learned, plain = (_drawn(model, [expand_all(p, [emb])], steps=3)[0] for p in ("fog AND a <zq>", "fog AND a dog"))
    assert np.abs(learned - plain).max() > 2


def test_a_prompt_without_and_draws_as_before(sd1_dir, monkeypatch):
    """A prompt without AND never reaches composable diffusion's code, and draws as the pipeline draws its
    conditioning directly."""
    import textinv.conditioning as conditioning
    import textinv.generate as gen
    from textinv.emphasis import composable_parts

    model = fresh_model(sd1_dir)
    assert composable_parts("a photo of a dog") == [("a photo of a dog", 1.0)]  # (the split alone changes nothing)
    ours, = _drawn(model, ["a photo of a dog"], steps=3)

    def refuse(*args, **kwargs):
        raise AssertionError("composable diffusion's code reached for a prompt without AND")

    monkeypatch.setattr(conditioning, "_composing", refuse)
    monkeypatch.setattr(gen.emphasis, "composable_parts", refuse)
    assert np.array_equal(_drawn(model, ["a photo of a dog"], steps=3)[0], ours)
    monkeypatch.undo()
    pipe = model.pipeline
    cond, uncond = (conditioning.encode_prompts(model, [text])[0] for text in ("a photo of a dog", ""))
    size = model.resolution
    latents = torch.randn((pipe.unet.config.in_channels, size // pipe.vae_scale_factor,
                           size // pipe.vae_scale_factor), generator=torch.Generator().manual_seed(0))[None]
    direct = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=3,
                  guidance_scale=model.guidance_or_own(None), height=size, width=size, latents=latents,
                  generator=[torch.Generator().manual_seed(0)], output_type="pil").images[0]
    assert np.array_equal(np.asarray(direct, dtype=int), ours)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one, said)
@pytest.mark.parametrize("settings", [{}, {"x": "steps=1,2"}], ids=["pictures", "xyz-plot"])
def test_a_ctrl_c_that_lands_in_a_finalizer_as_the_model_loads_stops_generate(settings, sd1_dir, tmp_path,
                                                                              monkeypatch, pythons_sigint):
    """Python drops an exception raised inside a `__del__` (garbage collected as the model loads), printing
    "Exception ignored in": the KeyboardInterrupt of a Ctrl-C landing there went with it, and every picture was drawn
    as if none had come (train stops on it: test_crash)."""
    import signal

    from textinv import generate as generate_module, xyz

    real = generate_module.drawing_model

    def drawing_model(*a, **k):
        model = real(*a, **k)
        CtrlCInFinalizer()
        return model

    for module in (generate_module, xyz):
        monkeypatch.setattr(module, "drawing_model", drawing_model)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateConfig(prompt=["a dog"], n=1, steps=1, out=str(out), model=str(sd1_dir), **settings),
                 progress=False)
    assert not out.exists() or not list(out.iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_generate_draws_at_the_non_square_size_the_embedding_was_trained_at(sd1_dir, tmp_path):
    """A run at --resolution WIDTHxHEIGHT records it in its file: a picture drawn with it and no size of its own is
    drawn at that size, and records it; a size given, a square's record or an embedding the prompt does not draw
    with leaves the model's own."""
    model = load_model(sd1_dir)
    side = model.resolution

    def drawn(embeddings, prompt="a photo of <q>", **kw):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "drawing at")  # (no warning where the embeddings agree)
            path = generate(GenerateConfig(prompt=[prompt], embedding=[str(e) for e in embeddings], n=1, steps=1,
                                           out=str(tmp_path / f"r{len(list(tmp_path.iterdir()))}"), **kw),
                            model=model, progress=False)[0]
        picture = Image.open(path)
        recorded = json.loads(picture.text["textinv_settings"])["settings"]
        assert (recorded["width"], recorded["height"]) == picture.size
        return picture.size

    def saved(name, resolution, token="<q>", format="diffusers"):
        metadata = {"resolution": resolution} if resolution else {}
        return save_embedding(LearnedEmbedding(token, {"text_encoder": torch.randn(1, 32)}, metadata),
                              tmp_path / name, format)[0]

    wide = saved("wide.safetensors", f"{side}x{side * 2}")
    assert drawn([wide]) == (side, side * 2)
    assert drawn([saved("wide.pt", f"{side}x{side * 2}", format="a1111")]) == (side, side * 2)  # (its textinv dict)
    assert drawn([wide], width=side * 3) == (side * 3, side)  # (a size given: as given, the rest the model's)
    assert drawn([wide], resolution=side) == (side, side)
    assert drawn([wide], prompt="a photo of a dog") == (side, side)  # (given, but not drawn with)
    assert drawn([saved("square.safetensors", str(side * 2))]) == (side, side)  # (a square: the model's own)
    assert drawn([saved("plain.safetensors", None)]) == (side, side)
    # kohya's sd-scripts write the size as ModelSpec's resolution
    kohya = tmp_path / "<k>.safetensors"
    save_file({"emb_params": torch.randn(1, 32)}, str(kohya), metadata={"modelspec.resolution": f"{side * 2}x{side}"})
    assert drawn([kohya], prompt="a photo of <k>") == (side * 2, side)
    # two that agree, or one that does not say beside it: theirs
    other = saved("other.safetensors", f"{side}x{side * 2}", "<r>")
    assert drawn([wide, other, saved("p.safetensors", None, "<p>")], prompt="<p> beside <q> and <r>") == \
        (side, side * 2)


def test_embeddings_trained_at_different_sizes_draw_at_the_models_own_and_say_so_once(sd1_dir, tmp_path):
    model = load_model(sd1_dir)
    side = model.resolution
    tall, wide = [save_embedding(LearnedEmbedding(token, {"text_encoder": torch.randn(1, 32)},
                                                  {"resolution": size}), tmp_path / f"{i}.safetensors")[0]
                  for i, (token, size) in enumerate([("<q>", f"{side}x{side * 2}"), ("<r>", f"{side * 2}x{side}")])]
    with pytest.warns(UserWarning) as heard:
        paths = generate(GenerateConfig(prompt=["<q> and <r>", "<q> beside <r>"], embedding=[str(tall), str(wide)],
                                        n=2, steps=1, out=str(tmp_path / "r")), model=model, progress=False)
    assert [Image.open(p).size for p in paths] == [(side, side)] * 4
    said = [str(w.message) for w in heard if "trained at" in str(w.message)]
    assert said == [f"drawing at {side}x{side}, the model's own size: <q> was trained at {side}x{side * 2}, <r> was "
                    f"trained at {side * 2}x{side}; pass width= and height="]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one, said)
@pytest.mark.parametrize("settings", [{}, {"x": "steps=1,2"}], ids=["pictures", "xyz-plot"])
def test_a_ctrl_c_that_lands_in_a_finalizer_as_generate_draws_stops_it_before_the_next_batch(settings, sd1_dir,
                                                                                           tmp_path, monkeypatch,
                                                                                           pythons_sigint):
    """Once the model had loaded, Python's own handler was back: the KeyboardInterrupt of a Ctrl-C landing in a
    `__del__` as a batch was drawn went with the finalizer, and every later picture was drawn as if none had come."""
    import signal

    from textinv import generate as generate_module

    real = generate_module._draw_batch

    def draw_batch(*a, **k):
        real(*a, **k)
        CtrlCInFinalizer()

    monkeypatch.setattr(generate_module, "_draw_batch", draw_batch)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateConfig(prompt=["a dog"], n=3, batch_size=1, steps=1, out=str(out), model=str(sd1_dir),
                                **settings), progress=False)
    assert len(list(out.rglob("*.png"))) == 1  # (the first batch's picture, written before the Ctrl-C landed)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- generate --again: ComfyUI's custom sampling (SamplerCustom, SamplerCustomAdvanced) ------------------------------


def _comfy_custom_graph(advanced=True):
    """The default graph (`_comfy_graph`) sampled by ComfyUI's custom sampling nodes, as SDXL workflows sample:
    SamplerCustomAdvanced (node 3) with RandomNoise (30), CFGGuider (31), KSamplerSelect (32) and BasicScheduler
    (33); `advanced` False: SamplerCustom, whose noise_seed and cfg are its own. The same drawing as the KSampler's."""
    graph = _comfy_graph()
    graph.update({
        "32": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "33": {"class_type": "BasicScheduler", "inputs": {"scheduler": "karras", "steps": 2, "denoise": 1.0,
                                                          "model": ["4", 0]}}})
    drawn = {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0]}
    if advanced:
        graph["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["30", 0], "guider": ["31", 0], "sampler": ["32", 0], "sigmas": ["33", 0],
            "latent_image": ["5", 0]}}
        graph["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 1234}}
        graph["31"] = {"class_type": "CFGGuider", "inputs": {"cfg": 6.5, **drawn}}
    else:
        graph["3"] = {"class_type": "SamplerCustom", "inputs": {
            "add_noise": True, "noise_seed": 1234, "cfg": 6.5, **drawn, "sampler": ["32", 0], "sigmas": ["33", 0],
            "latent_image": ["5", 0]}}
    return graph


def _karras(steps=2, **given):
    """ComfyUI's KarrasScheduler node at its defaults (SD's whole noise range, rho 7) but `given`."""
    return {"class_type": "KarrasScheduler", "inputs": {"steps": steps, "sigma_max": 14.614642,
                                                        "sigma_min": 0.0291675, "rho": 7.0, **given}}


def _sampler_node(cls, **inputs):
    return {"class_type": cls, "inputs": inputs}


def test_again_reads_comfyuis_custom_sampling_as_the_ksampler_that_draws_the_same(sd1_dir, tmp_path):
    """SDXL workflows sample with ComfyUI's custom sampling nodes, which --again refused ("textinv reads the KSampler
    or KSamplerAdvanced"). SamplerCustomAdvanced and SamplerCustom are read as the KSampler that draws the same: the
    seed (RandomNoise, or its own), cfg and prompts (CFGGuider, or its own), sampler (KSamplerSelect, or a sampler
    node's, its eta and s_noise as --eta and --sigma-noise), schedule, steps and denoise (BasicScheduler, or the
    Karras and exponential schedulers over SD's noise range), with nothing said."""
    from textinv.again import again_config, read_picture

    ksampler = read_picture(_comfy_picture(tmp_path / "k.png", _comfy_graph()))
    for advanced in (True, False):
        path = _comfy_picture(tmp_path / "c.png", _comfy_custom_graph(advanced))
        assert read_picture(path).settings == ksampler.settings, advanced
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (its noise, guider, sampler and scheduler nodes are read, not named)
            assert again_config(path, {"model": str(sd1_dir)})[0].seed == 1234

    def read(**nodes):
        graph = _comfy_custom_graph()
        graph.update(nodes)
        return read_picture(_comfy_picture(tmp_path / "c.png", graph)).settings

    basic = {"33": _sampler_node("BasicScheduler", scheduler="normal", steps=2, denoise=1.0, model=["4", 0])}
    for nodes, sampler, options in [
            ({"33": _karras()}, "dpm++2m_karras", {}),
            ({"33": _sampler_node("ExponentialScheduler", steps=2, sigma_max=14.614642, sigma_min=0.0291675)},
             "dpm++2m_exponential", {}),
            # (polyexponential at rho 1 is exponential: its ramp to the power 1)
            ({"33": _sampler_node("PolyexponentialScheduler", steps=2, sigma_max=14.614642, sigma_min=0.0291675,
                                  rho=1.0)}, "dpm++2m_exponential", {}),
            ({"32": _sampler_node("SamplerEulerAncestral", eta=0.5, s_noise=1.0), **basic}, "euler_a", {"eta": 0.5}),
            ({"32": _sampler_node("SamplerDPMPP_SDE", eta=0.7, s_noise=0.8, r=0.5, noise_device="gpu")},
             "dpm++sde_karras", {"eta": 0.7, "sigma_noise": 0.8}),
            ({"32": _sampler_node("SamplerDPMPP_2M_SDE", solver_type="heun", eta=1.0, s_noise=1.0,
                                  noise_device="cpu")}, "dpm++2m_sde_heun_karras", {}),
            ({"32": _sampler_node("SamplerDPMPP_2M_SDE", solver_type="midpoint", eta=0.25, s_noise=1.0,
                                  noise_device="gpu"), "33": _karras()}, "dpm++2m_sde_karras", {"eta": 0.25}),
            ({"32": _sampler_node("SamplerDPMPP_3M_SDE", eta=1.0, s_noise=0.5, noise_device="cpu")},
             "dpm++3m_sde_comfy_karras", {"sigma_noise": 0.5}),  # (ComfyUI's: no sigma discarded)
            ({"32": _sampler_node("SamplerDPMPP_2S_Ancestral", eta=0.4, s_noise=1.0)}, "dpm++2s_a_karras",
             {"eta": 0.4}),
            ({"32": _sampler_node("SamplerLMS", order=4)}, "lms_karras", {}),
            # (SamplerTCD's eta is TCD's gamma, at ComfyUI's default the 0.3 textinv's tcd draws at: not --eta)
            ({"32": _sampler_node("SamplerTCD", eta=0.3), **basic}, "tcd", {}),
            ({"32": _sampler_node("KSamplerSelect", sampler_name="ddim")}, "euler_karras", {})]:
        settings = read(**nodes)
        assert settings["sampler"] == sampler, nodes
        assert {key: settings[key] for key in ("eta", "sigma_noise") if key in settings} == options, nodes
    # its denoised_output (the model's last estimate) decoded in place of its output: said
    graph = _comfy_custom_graph()
    graph["8"]["inputs"]["samples"] = ["3", 1]
    assert any("its ComfyUI picture is the denoised_output of SamplerCustomAdvanced node 3" in note
               for note in read_picture(_comfy_picture(tmp_path / "c.png", graph)).notes)
    # a BasicGuider guides by the positive prompt alone: cfg 1, where ComfyUI and diffusers draw no negative
    settings = read(**{"31": _sampler_node("BasicGuider", model=["4", 0], conditioning=["6", 0])})
    assert (settings["guidance"], settings["negative_prompt"]) == (1.0, "")
    # DisableNoise over BasicScheduler's last 2 steps of 4: a pass over the latent it is given, said as
    # KSamplerAdvanced's; a SamplerCustom's add_noise off alike
    graph = _comfy_custom_graph()
    graph["30"] = _sampler_node("DisableNoise")
    graph["33"]["inputs"]["denoise"] = 0.5
    picture = read_picture(_comfy_picture(tmp_path / "c.png", graph))
    assert any("drawn by ComfyUI's SamplerCustomAdvanced node 3 from step 2 to 10000 of 4 without adding noise: it "
               "refined a picture it was given" in note for note in picture.notes)
    graph = _comfy_custom_graph(advanced=False)
    graph["3"]["inputs"]["add_noise"] = False
    picture = read_picture(_comfy_picture(tmp_path / "c.png", graph))
    assert any("SamplerCustom node 3 from step 0 to 10000 of 2 without adding noise" in note for note in picture.notes)


@pytest.mark.parametrize("nodes, why", [
    ({"33": _karras(sigma_max=10.0)}, r"its KarrasScheduler node 33's sigmas at sigma_max 10, sigma_min 0.0291675, "
                                      r"rho 7, where textinv's _karras schedule spans the model's whole noise range "
                                      r"\(SD's, SDXL's: sigma_max 14.614642, sigma_min 0.0291675, rho 7\)"),
    ({"33": _karras(rho=5.0)}, r"its KarrasScheduler node 33's sigmas at .*rho 5, where textinv's _karras"),
    ({"33": _sampler_node("PolyexponentialScheduler", steps=2, sigma_max=14.614642, sigma_min=0.0291675, rho=2.0)},
     r"its PolyexponentialScheduler node 33's sigmas at .*rho 2, where textinv's _exponential schedule"),
    ({"33": _sampler_node("BetaSamplingScheduler", model=["4", 0], steps=2, alpha=0.6, beta=0.6)},
     r"its BetaSamplingScheduler node 33's steps at beta quantiles of the model's timesteps .*which no textinv "
     r"schedule draws"),
    ({"33": _sampler_node("SDTurboScheduler", model=["4", 0], steps=2, denoise=1.0)},
     r"its SDTurboScheduler node 33's SD Turbo's timesteps"),
    ({"32": _sampler_node("SamplerEulerAncestral", eta=1.0, s_noise=0.5),
      "33": _sampler_node("BasicScheduler", scheduler="normal", steps=2, denoise=1.0, model=["4", 0])},
     r"its SamplerEulerAncestral node 32 at s_noise 0.5, which textinv's euler_a does not take"),
    ({"32": _sampler_node("SamplerDPMPP_3M_SDE", eta=1.5, s_noise=1.0, noise_device="cpu")},
     r"its SamplerDPMPP_3M_SDE node 32 at eta 1.5, where textinv's --eta is 0 to 1"),
    ({"32": _sampler_node("SamplerDPMPP_SDE", eta=1.0, s_noise=1.0, r=0.3, noise_device="cpu")},
     r"its SamplerDPMPP_SDE node 32 at r 0.3, where textinv's dpm\+\+sde takes its midpoint at r 0.5 only"),
    ({"32": _sampler_node("SamplerLMS", order=3)}, r"its SamplerLMS node 32 of order 3, where textinv's lms is of "
                                                   r"order 4"),
    ({"32": _sampler_node("SamplerTCD", eta=0.5), "33": _sampler_node("BasicScheduler", scheduler="sgm_uniform",
                                                                      steps=2, denoise=1.0, model=["4", 0])},
     r"its SamplerTCD node 32 at eta 0.5, TCD's gamma, where textinv's tcd draws at gamma 0.3"),
    ({"32": _sampler_node("KSamplerSelect", sampler_name="dpm_2")},
     r"its sampler 'dpm_2' on the sigmas it is given, where ComfyUI's KSampler, as textinv draws it, discards the "
     r"next-to-last sigma \(KSamplerSelect node 32\)"),
    ({"32": _sampler_node("KSamplerSelect", sampler_name="uni_pc_bh2")},
     r"its sampler 'uni_pc_bh2', whose last step goes to sigma 0.001 where textinv's unipc_bh2 steps to the model's "
     r"smallest noise level \(KSamplerSelect node 32\)"),
    ({"32": _sampler_node("KSamplerSelect", sampler_name="euler_ancestral")},
     r"its sampler 'euler_ancestral' on the 'karras' schedule, which textinv does not have"),
])
def test_again_asks_for_a_sampler_for_comfyuis_custom_sampling_textinv_does_not_draw(sd1_dir, tmp_path, nodes, why):
    """A custom sampler whose sampler or sigmas textinv draws no such way (another noise range or rho, ComfyUI's
    beta or SD Turbo schedule, a sampler setting textinv's sampler lacks) is refused naming the node and the values,
    until --sampler chooses one, as a KSampler's sampler textinv lacks is."""
    from textinv.again import again_config

    graph = _comfy_custom_graph()
    graph.update(nodes)
    path = _comfy_picture(tmp_path / "c.png", graph)
    with pytest.raises(ConfigError, match=r"c.png was drawn by ComfyUI's SamplerCustomAdvanced node 3 with " + why
                       + r".*: choose a sampler with --sampler \(textinv generate --help lists them\), or default"):
        again_config(path, {"model": str(sd1_dir)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no eta of a sampler it did not draw with, said as dropped)
        config = again_config(path, {"model": str(sd1_dir), "sampler": "euler"})[0]
    assert (config.sampler, config.steps, config.seed) == ("euler", 2, 1234)


def test_again_refuses_comfyuis_custom_sampling_it_cannot_follow_naming_the_node(tmp_path):
    """A custom sampler whose guider, noise, sampler or sigmas come from a node textinv does not read (a custom
    guider, SplitSigmas, ...) is refused naming it and what textinv reads there."""
    from textinv.again import read_picture

    for node, part, cls, reads in [("31", "guider", "DualCFGGuider", "CFGGuider or BasicGuider"),
                                   ("30", "noise", "Noise_EmptyNoise", "RandomNoise or DisableNoise"),
                                   ("33", "sigmas", "SplitSigmas", "BasicScheduler or KarrasScheduler"),
                                   ("32", "sampler", "SamplerDPMAdaptative", "KSamplerSelect or")]:
        graph = _comfy_custom_graph()
        graph[node] = {"class_type": cls, "inputs": {}}
        with pytest.raises(ConfigError, match=rf"c.png: its ComfyUI SamplerCustomAdvanced node 3 is custom sampling "
                                              rf"textinv cannot follow: its {part} comes from {cls} node {node}, where "
                                              rf"textinv reads {reads}.*draw it with `textinv generate` and its "
                                              rf"settings as flags"):
            read_picture(_comfy_picture(tmp_path / "c.png", graph))
    # a value it needs from a node that gives no plain value (joined numbers, a switch): its add_noise, or the steps
    # of a pass that adds no noise
    graph = _comfy_custom_graph(advanced=False)
    graph["3"]["inputs"]["add_noise"] = ["40", 0]
    graph["40"] = {"class_type": "LogicSwitch", "inputs": {"a": True, "b": False}}
    with pytest.raises(ConfigError, match=r"SamplerCustom node 3 is custom sampling textinv cannot follow: its "
                                          r"add_noise comes from a node textinv cannot read it from"):
        read_picture(_comfy_picture(tmp_path / "c.png", graph))
    graph = _comfy_custom_graph()
    graph["30"] = _sampler_node("DisableNoise")
    graph["33"]["inputs"]["steps"] = ["40", 0]
    graph["40"] = {"class_type": "MathExpression", "inputs": {"a": 2, "b": 2}}
    with pytest.raises(ConfigError, match=r"SamplerCustomAdvanced node 3 adds no noise, and its steps come from a "
                                          r"node textinv cannot read them from"):
        read_picture(_comfy_picture(tmp_path / "c.png", graph))


def test_again_reads_comfyuis_custom_sampling_from_the_editors_workflow(tmp_path):
    """The editor's format ("Save", a PNG's 'workflow') of the custom sampling nodes, each node's widgets in the
    order ComfyUI writes them, translates into the graph ComfyUI runs, read as the picture's 'prompt' is."""
    import json

    from textinv.again import read_picture
    from textinv.comfy_workflow import api_graph

    def node(id, type, widgets, inputs=()):
        return {"id": id, "type": type, "mode": 0, "widgets_values": widgets,
                "inputs": [{"name": name, "type": kind, "link": link} for name, kind, link in inputs]}

    nodes = [
        node(3, "SamplerCustomAdvanced", [], [("noise", "NOISE", 1), ("guider", "GUIDER", 2), ("sampler", "SAMPLER", 3),
                                              ("sigmas", "SIGMAS", 4), ("latent_image", "LATENT", 5)]),
        node(30, "RandomNoise", [1234, "fixed"]),
        node(31, "CFGGuider", [6.5], [("model", "MODEL", 6), ("positive", "CONDITIONING", 7),
                                      ("negative", "CONDITIONING", 8)]),
        node(32, "SamplerDPMPP_2M_SDE", ["heun", 0.5, 0.75, "gpu"]),
        node(33, "KarrasScheduler", [2, 14.614642, 0.0291675, 7]),
        node(4, "CheckpointLoaderSimple", ["sdxl.safetensors"]),
        node(5, "EmptyLatentImage", [24, 16, 1]),
        node(6, "CLIPTextEncode", ["a cat"], [("clip", "CLIP", 9)]),
        node(7, "CLIPTextEncode", ["blurry"], [("clip", "CLIP", 10)]),
        node(8, "VAEDecode", [], [("samples", "LATENT", 11), ("vae", "VAE", 12)]),
        node(9, "SaveImage", ["ComfyUI"], [("images", "IMAGE", 13)]),
    ]
    links = [[1, 30, 0, 3, 0, "NOISE"], [2, 31, 0, 3, 1, "GUIDER"], [3, 32, 0, 3, 2, "SAMPLER"],
             [4, 33, 0, 3, 3, "SIGMAS"], [5, 5, 0, 3, 4, "LATENT"], [6, 4, 0, 31, 0, "MODEL"],
             [7, 6, 0, 31, 1, "CONDITIONING"], [8, 7, 0, 31, 2, "CONDITIONING"], [9, 4, 1, 6, 0, "CLIP"],
             [10, 4, 1, 7, 0, "CLIP"], [11, 3, 0, 8, 0, "LATENT"], [12, 4, 2, 8, 1, "VAE"], [13, 8, 0, 9, 0, "IMAGE"]]
    workflow = {"nodes": nodes, "links": links, "version": 0.4}
    graph = api_graph(workflow, tmp_path / "w.json")
    assert graph["30"]["inputs"] == {"noise_seed": 1234}
    assert graph["32"]["inputs"] == {"solver_type": "heun", "eta": 0.5, "s_noise": 0.75, "noise_device": "gpu"}
    (tmp_path / "w.json").write_text(json.dumps(workflow))
    settings = read_picture(tmp_path / "w.json").settings
    assert (settings["seed"], settings["steps"], settings["guidance"], settings["sampler"]) == (
        1234, 2, 6.5, "dpm++2m_sde_heun_karras")
    assert (settings["eta"], settings["sigma_noise"], settings["prompt"], settings["negative_prompt"]) == (
        0.5, 0.75, ["a cat"], "blurry")
    # SamplerCustom's widgets: add_noise, noise_seed (its control_after_generate after it), cfg
    nodes[0] = node(3, "SamplerCustom", [True, 99, "randomize", 4.0],
                    [("model", "MODEL", 6), ("positive", "CONDITIONING", 7), ("negative", "CONDITIONING", 8),
                     ("sampler", "SAMPLER", 3), ("sigmas", "SIGMAS", 4), ("latent_image", "LATENT", 5)])
    workflow["links"] = [link for link in links if link[3] != 31] + [
        [6, 4, 0, 3, 0, "MODEL"], [7, 6, 0, 3, 1, "CONDITIONING"], [8, 7, 0, 3, 2, "CONDITIONING"]]
    (tmp_path / "w.json").write_text(json.dumps(workflow))
    settings = read_picture(tmp_path / "w.json").settings
    assert (settings["seed"], settings["guidance"], settings["negative_prompt"]) == (99, 4.0, "blurry")


def test_again_follows_a_comfyui_hires_fix_drawn_by_custom_samplers(sd1_dir, tmp_path):
    """A hires fix of two SamplerCustom passes (the second's BasicScheduler at denoise 0.5 over the enlarged
    latent) is read as the KSampler hires fix: the first pass's settings the drawing's, the second's the hires
    fix's, its eta --eta where the first's sampler takes none; where both take one (textinv's one --eta draws both),
    the second's other eta is said. A second pass textinv has no sampler for is asked for by --hires-sampler."""
    graph = _comfy_hires_graph()
    first = _comfy_custom_graph(advanced=False)["3"]
    graph.update({"3": first, "32": _sampler_node("KSamplerSelect", sampler_name="dpmpp_2m"),
                  "33": _karras(),
                  "11": {"class_type": "SamplerCustom", "inputs": {**first["inputs"], "latent_image": ["10", 0],
                                                                    "sampler": ["34", 0], "sigmas": ["35", 0]}},
                  "34": _sampler_node("SamplerEulerAncestral", eta=0.5, s_noise=1.0),
                  "35": _sampler_node("BasicScheduler", scheduler="normal", steps=3, denoise=0.5, model=["4", 0])})
    config, said = _notes(_comfy_picture(tmp_path / "hires.png", graph, (48, 32)), {"model": str(sd1_dir)})
    assert (config.seed, config.steps, config.guidance, config.sampler) == (1234, 2, 6.5, "dpm++2m_karras")
    assert (config.hires_scale, config.hires_steps, config.denoise) == (2.0, 3, 0.5)
    assert (config.hires_sampler, config.hires_upscaler, config.eta, said) == (
        "euler_a", "latent-nearest-exact", 0.5, [])
    graph["32"] = _sampler_node("SamplerDPMPP_2M_SDE", solver_type="midpoint", eta=0.25, s_noise=1.0,
                                noise_device="cpu")
    config, said = _notes(_comfy_picture(tmp_path / "hires.png", graph, (48, 32)), {"model": str(sd1_dir)})
    assert (config.sampler, config.hires_sampler, config.eta) == ("dpm++2m_sde_karras", "euler_a", 0.25)
    assert said == ["PICTURE: its ComfyUI hires fix's second pass (SamplerCustom node 11) draws at eta 0.5, where "
                    "textinv's --eta and --sigma-noise, one for both passes, draw it at eta 0.25"]
    graph["34"] = _sampler_node("SamplerLMS", order=2)
    with pytest.raises(ConfigError, match=r"redrawn by its hires fix by ComfyUI's SamplerCustom node 11 with its "
                                          r"SamplerLMS node 34 of order 2, .*: choose a sampler with --hires-sampler"):
        _notes(_comfy_picture(tmp_path / "hires.png", graph, (48, 32)), {"model": str(sd1_dir)})


def test_again_redraws_a_comfyui_custom_sampling_picture_as_generate_draws_its_settings(sd1_dir, tmp_path):
    """End to end: a SamplerCustomAdvanced picture (DPM++ 2M SDE at eta 0.5 and s_noise 0.8 on Karras's schedule)
    drawn again on the tiny model is the picture `generate` draws with those settings as flags."""
    import numpy as np

    from textinv.cli import main

    graph = _comfy_custom_graph()
    graph["6"]["inputs"]["text"] = "a red cat"
    graph["32"] = _sampler_node("SamplerDPMPP_2M_SDE", solver_type="midpoint", eta=0.5, s_noise=0.8,
                                noise_device="cpu")
    graph["33"] = _karras()
    picture = _comfy_picture(tmp_path / "ComfyUI_custom.png", graph, (24, 16))
    assert main(["generate", "--again", str(picture), "--model", str(sd1_dir), "--out", str(tmp_path / "again")]) == 0
    assert main(["generate", "--model", str(sd1_dir), "--prompt", "a red cat", "--negative-prompt", "blurry",
                 "--seed", "1234", "--steps", "2", "--guidance", "6.5", "--sampler", "dpm++2m_sde_karras",
                 "--eta", "0.5", "--sigma-noise", "0.8", "--width", "24", "--height", "16", "--emphasis", "comfy",
                 "-n", "1", "--out", str(tmp_path / "direct")]) == 0
    (again,), (direct,) = (tmp_path / "again").iterdir(), (tmp_path / "direct").iterdir()
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(direct)))


def test_comfyuis_tcd_eta_is_the_gamma_textinvs_tcd_draws_at():
    """What --again reads SamplerTCD's eta as: ComfyUI's TCD (k-diffusion's sample_tcd, on latents x / sqrt(a) at
    sigma) takes the model's x0 and eps to the timestep s = floor((1 - eta) t') of the next step's t', then noise up
    to sigma'; diffusers' TCDScheduler, textinv's tcd, takes the same step at its gamma. So SamplerTCD at eta 0.3 is
    textinv's tcd (its gamma 0.3; --eta is refused for tcd) and another eta is refused."""
    import math

    from diffusers import DDIMScheduler

    from textinv.samplers import scheduler_for

    tcd = scheduler_for(DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), "tcd")
    tcd.set_timesteps(4)
    a = tcd.alphas_cumprod.double()
    t, t_next = (int(step) for step in tcd.timesteps[:2])
    start = torch.Generator().manual_seed(0)
    x, eps = (torch.randn(1, 4, 2, 2, generator=start, dtype=torch.float64) for _ in range(2))
    x = a[t].sqrt() * x + (1 - a[t]).sqrt() * eps  # (the latents at t, whose noise is eps)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1)).double()
    # ComfyUI's step at eta 0.3, its latents x / sqrt(a) at sigma, its denoised x0
    sigma, sigma_next = ((1 - a[t]) / a[t]).sqrt(), ((1 - a[t_next]) / a[t_next]).sqrt()
    x0 = (x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()
    s = math.floor((1 - 0.3) * t_next)
    at_s = a[s].sqrt() * x0 + (1 - a[s]).sqrt() * ((x / a[t].sqrt() - x0) / sigma)
    comfy = at_s / a[s].sqrt() + noise * (sigma_next ** 2 + 1 - 1 / a[s]).sqrt()
    drawn = tcd.step(eps.float(), t, x.float(), generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(drawn.double() / a[t_next].sqrt(), comfy, rtol=1e-4, atol=1e-4)


def test_a_file_is_named_by_the_words_its_own_steps_end_on(sd1_dir, tmp_path):
    """`[a:b:7]` of 2 steps draws "a" at every step (the edit's step is past the last), but its file was named by
    the words of step 100, 000-b-s0.png."""
    from textinv.generate import checked_settings, run_names

    def named(prompt, **settings):
        config = GenerateConfig(prompt=[prompt], out=str(tmp_path / "o"), n=1, model=str(sd1_dir), **settings)
        return run_names(checked_settings(config))[0][1]

    assert named("[a:b:7]", steps=2) == "000-a-s0"
    assert named("[a:b:7]", steps=8) == "000-b-s0"
    assert named("[a:b:3]", steps=2, sampler="heun") == "000-b-s0"  # (scheduled over its 4 model calls)
    assert named("[a:b:1.5]", steps=4) == "000-a-s0"  # (a fraction: 6 steps, past the 4)
    assert named("[a:b:1.5]", steps=4, old_prompt_editing=True) == "000-b-s0"  # (the old timelines: step 1)


def test_a_long_prompt_of_four_byte_letters_beside_a_long_picture_name_still_fits_a_file_name(sd1_dir, tmp_path):
    """A file name holds 255 bytes: 40 letters of a CJK extension (4 bytes each) beside an --init-image folder
    picture's 24 and a seed of 20 digits made one of 287, and the run stopped with a traceback (File name too long)."""
    letters = "\U00020000" * 60
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16), "red").save(tmp_path / "in" / f"{letters}.png")
    (path,) = generate(GenerateConfig(prompt=[letters], init_image=str(tmp_path / "in"), out=str(tmp_path / "o"), n=1,
                                      steps=2, seed=2**64 - 2, width=16, model=str(sd1_dir)), progress=False)
    assert path.name.startswith("000-" + "\U00020000" * 30 + "-" + "\U00020000" * 18 + "-s18446744073709551614")
    assert len(path.name.encode()) + len(".x.12345678.tmp".encode()) <= 255  # (and its temporary file's name)
