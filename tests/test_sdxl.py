"""SDXL: training on both text encoders, its file layouts through diffusers' loader, generation, unload."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from textinv.conditioning import encode_prompts
from textinv.config import GenerateConfig, TrainConfig
from textinv.errors import ConfigError, ModelError
from textinv.formats import load_embedding
from textinv.generate import generate, install_embedding, render, unload_embeddings
from textinv.models import encode_text, load_model
from textinv.tiny import build_tiny_xl_pipeline
from textinv.tokens import base_embedding
from textinv.train import train
from conftest import fresh_model, recorded_arguments


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-xl")
    build_tiny_xl_pipeline().save_pretrained(path)
    return path


def xl_config(images, out, **kw):
    base = dict(images=str(images), token="<xq>", init="dog", out=str(out), steps=4, batch=2, save_every=2,
                sample_every=0, log_every=2, lr=5e-2, vectors=2)
    base.update(kw)
    return TrainConfig(**base)


def test_trains_both_encoders_only_new_rows_and_writes_the_sdxl_file(xl_dir, images, tmp_path):
    model = fresh_model(xl_dir)
    frozen = {f"{n}.{k}": v.clone() for n, m in (("unet", model.unet), ("te1", model.pipeline.text_encoder),
                                                  ("te2", model.pipeline.text_encoder_2), ("vae", model.vae))
              for k, v in m.state_dict().items()}
    starts = [base_embedding(te).weight[tok("dog", add_special_tokens=False).input_ids[0]].clone()
              for _, tok, te in model.encoders]
    result = train(xl_config(images, tmp_path / "run"), model=model, progress=False)
    after = {f"{n}.{k}".replace("token_embedding.base.", "token_embedding."): v
             for n, m in (("unet", model.unet), ("te1", model.pipeline.text_encoder),
                          ("te2", model.pipeline.text_encoder_2), ("vae", model.vae))
             for k, v in m.state_dict().items() if "token_embedding.rows" not in k}
    assert frozen.keys() == after.keys() and all(torch.equal(frozen[k], after[k]) for k in frozen)
    emb = result.embedding
    assert emb.widths == (32, 64) and emb.num_vectors == 2
    for (name, _, _), start in zip(model.encoders, starts):
        assert not torch.allclose(emb.vectors[name][0], start)
    raw = load_file(tmp_path / "run" / "xq.safetensors")
    assert raw["clip_l"].shape == (2, 32) and raw["clip_g"].shape == (2, 64)


@pytest.mark.parametrize("noise_offset", [0.0, 0.1])
def test_diffusers_format_writes_the_two_file_layout_and_resume_is_exact(noise_offset, xl_dir, images, tmp_path):
    straight = train(xl_config(images, tmp_path / "a", format="diffusers", noise_offset=noise_offset),
                     model=fresh_model(xl_dir), progress=False)
    assert (tmp_path / "a" / "learned_embeds.safetensors").exists()
    assert load_file(tmp_path / "a" / "learned_embeds_2.safetensors")["<xq>"].shape == (2, 64)
    train(xl_config(images, tmp_path / "b", steps=2, noise_offset=noise_offset), model=fresh_model(xl_dir),
          progress=False)
    resumed = train(xl_config(images, tmp_path / "b", resume=True, noise_offset=noise_offset),
                    model=fresh_model(xl_dir), progress=False)
    for name in ("text_encoder", "text_encoder_2"):
        assert torch.equal(resumed.embedding.vectors[name], straight.embedding.vectors[name])


def test_single_encoder_formats_are_refused_for_sdxl(xl_dir, images, tmp_path):
    with pytest.raises(ConfigError, match="one text encoder"):
        train(xl_config(images, tmp_path / "a", format="a1111"), model=fresh_model(xl_dir), progress=False)


def test_format_kohya_on_sdxl_names_the_format_kohyas_sdxl_script_writes(xl_dir, images, tmp_path):
    """kohya's SDXL textual inversion writes clip_l + clip_g, textinv's 'sdxl': a kohya user's --format kohya was
    told only that it "holds one text encoder", which kohya's SDXL files do not."""
    with pytest.raises(ConfigError, match=r"kohya's sdxl_train_textual_inversion.py writes the 'sdxl' one \(clip_l "
                                          r"\+ clip_g\): format='sdxl'"):
        train(xl_config(images, tmp_path / "a", format="kohya"), model=fresh_model(xl_dir), progress=False)


def test_pooled_embedding_is_read_at_end_of_text_not_at_a_new_token(xl_dir):
    model = fresh_model(xl_dir)
    assert model.pipeline.text_encoder_2.config.eos_token_id == 2  # the old config value real SDXL has
    install_embedding(model, load_embedding_from(model, "<pq>"))
    _, tok, te = model.encoders[1]
    ids = tok(["a <pq> dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    _, pooled = encode_text(model, [model.tokenizer(["a <pq> dog"], padding="max_length", max_length=77,
                                                    return_tensors="pt").input_ids, ids])
    eos = (ids[0] == tok.eos_token_id).nonzero()[0, 0]
    expected = te.text_projection(te(ids).last_hidden_state[0, eos])
    assert torch.allclose(pooled[0], expected, atol=1e-6)


def test_emphasis_weighs_both_encoders_halves_and_leaves_the_pooled_embedding(xl_dir):
    model = fresh_model(xl_dir)
    plain, pooled = encode_prompts(model, ["a photo of a dog"])
    weighted, weighted_pooled = encode_prompts(model, ["a photo of a (dog:1.5)"])
    assert torch.equal(weighted_pooled, pooled)  # the web UI leaves the pooled embedding unweighted too
    ratio = weighted[0] / plain[0]  # (77, 768 + 1280): one factor in each encoder's part (each to its own mean, as
    for half in (slice(0, model.widths[0]), slice(model.widths[0], None)):  # the web UI), 1.5 times it on "dog"
        factor = ratio[2, half][0]
        assert torch.allclose(ratio[5, half], 1.5 * factor * torch.ones_like(ratio[5, half]), atol=1e-4)
        assert torch.allclose(ratio[2, half], factor * torch.ones_like(ratio[2, half]), atol=1e-4)
        assert torch.allclose(weighted[0, :, half].mean(), plain[0, :, half].mean(), atol=1e-6)


def test_a_long_prompt_is_read_in_chunks_by_both_encoders_with_the_first_chunks_pooled_embedding(xl_dir):
    model = fresh_model(xl_dir)
    head = "a photo of a " + "dog " * 71  # 75 tokens: the first chunk
    short, short_pooled = encode_prompts(model, [head])
    long, long_pooled = encode_prompts(model, [head + "cat"])
    assert long.shape == (1, 154, short.shape[-1]) and torch.equal(long[:, :77], short)
    assert torch.equal(long_pooled, short_pooled)


def load_embedding_from(model, token):
    from textinv.formats import LearnedEmbedding

    g = torch.Generator().manual_seed(0)
    return LearnedEmbedding(token, {name: torch.randn(1, w, generator=g) for (name, _, _), w in
                                    zip(model.encoders, model.widths)})


def test_sdxl_file_loads_through_diffusers_into_each_encoder_and_matches_ours(xl_dir, images, tmp_path):
    result = train(xl_config(images, tmp_path / "run", vectors=1, lr=0.5), model=fresh_model(xl_dir), progress=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_dir)
    pipe.set_progress_bar_config(disable=True)
    state = load_file(tmp_path / "run" / "xq.safetensors")

    def run(p):
        return p("a photo of <xq>", num_inference_steps=3, generator=torch.Generator().manual_seed(0), height=16,
                 width=16, output_type="np").images[0]

    before = run(pipe)
    pipe.load_textual_inversion(state["clip_l"], token="<xq>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<xq>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    after = run(pipe)
    assert not np.allclose(before, after)
    for te, tok, name in ((pipe.text_encoder, pipe.tokenizer, "text_encoder"),
                          (pipe.text_encoder_2, pipe.tokenizer_2, "text_encoder_2")):
        row = te.get_input_embeddings().weight[tok.convert_tokens_to_ids("<xq>")]
        assert torch.equal(row, result.embedding.vectors[name][0])
    # our generation reads the pooled vector at end-of-text; diffusers' at the largest id (the new token) for
    # this old-style config, so only the hidden states are comparable: check those are the same
    ours = fresh_model(xl_dir)
    install_embedding(ours, result.embedding)
    hidden, _ = encode_prompts(ours, ["a photo of <xq>"])
    theirs = pipe.encode_prompt("a photo of <xq>", do_classifier_free_guidance=False)[0]
    assert torch.allclose(hidden, theirs, atol=1e-5)


def test_generate_sdxl_and_unload_restores_the_pipeline(xl_dir, tmp_path):
    model = fresh_model(xl_dir)
    sizes = [len(tok) for _, tok, _ in model.encoders]
    plain = np.asarray(render(model, ["a photo of a dog"], [0], steps=2)[0])
    install_embedding(model, load_embedding_from(model, "<gq>"))
    assert [len(tok) for _, tok, _ in model.encoders] == [s + 1 for s in sizes]
    with_token = np.asarray(render(model, ["a photo of a <gq>"], [0], steps=2)[0])
    assert not np.array_equal(plain, with_token)
    unload_embeddings(model)
    assert [len(tok) for _, tok, _ in model.encoders] == sizes
    assert np.array_equal(np.asarray(render(model, ["a photo of a dog"], [0], steps=2)[0]), plain)
    # and through the command-line path, from the one-file layout
    from textinv.formats import save_embedding

    path = save_embedding(load_embedding_from(model, "<gq>"), tmp_path / "gq.safetensors", "sdxl")[0]
    paths = generate(GenerateConfig(prompt=["a <gq>"], embedding=[str(path)], out=str(tmp_path / "r"), n=1, steps=2,
                                    model=str(xl_dir)), progress=False)
    assert Image.open(paths[0]).size == (16, 16)


def test_a_non_square_sdxl_picture_is_conditioned_on_its_own_size(xl_dir, tmp_path):
    """SDXL's UNet takes the picture's original and target size as (height, width) time ids, as diffusers'
    pipeline and SDXL's training lay them out; a landscape told it is a square draws as a cropped square."""
    model = fresh_model(xl_dir)
    seen = []
    model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
    paths = generate(GenerateConfig(prompt=["a dog"], n=1, steps=2, width=24, out=str(tmp_path / "r"),
                                    model=str(xl_dir)), model=model, progress=False)
    picture = Image.open(paths[0])
    assert picture.size == (24, 16) and "Size: 24x16" in picture.text["parameters"]
    assert seen and all(row == [16, 24, 0, 0, 16, 24] for ids in seen for row in ids)  # (prompt and negative)


def test_inspect_sdxl_file_against_the_model(xl_dir, tmp_path):
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.inspect import inspect_file

    model = fresh_model(xl_dir)
    dog = [base_embedding(te).weight[tok.convert_tokens_to_ids("dog</w>")] for _, tok, te in model.encoders]
    emb = LearnedEmbedding("<iq>", {"text_encoder": dog[0][None], "text_encoder_2": dog[1][None]})
    path = save_embedding(emb, tmp_path / "iq.safetensors", "sdxl")[0]
    report = inspect_file(path, model=str(xl_dir), top_k=1)
    assert report["format"] == "sdxl" and report["widths"] == [32, 64]
    assert report["nearest_tokens"]["text_encoder"][0][0][0] == "dog"  # (the token dog</w>, as read)
    assert report["nearest_tokens"]["text_encoder_2"][0][0][0] == "dog"
    assert "vocab_norm_mean" in report["encoders"]["text_encoder_2"]


def test_two_file_layout_loads_through_diffusers_each_file_into_its_encoder(xl_dir, images, tmp_path):
    result = train(xl_config(images, tmp_path / "run", format="diffusers", steps=2), model=fresh_model(xl_dir),
                   progress=False)
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_dir)
    pipe.set_progress_bar_config(disable=True)
    before = pipe("a photo of <xq>", num_inference_steps=2, generator=torch.Generator().manual_seed(0), height=16,
                  width=16, output_type="np").images[0]
    pipe.load_textual_inversion(str(tmp_path / "run" / "learned_embeds.safetensors"), text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(str(tmp_path / "run" / "learned_embeds_2.safetensors"),
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    after = pipe("a photo of <xq>", num_inference_steps=2, generator=torch.Generator().manual_seed(0), height=16,
                 width=16, output_type="np").images[0]
    assert not np.allclose(before, after)
    ids = pipe.tokenizer_2.convert_tokens_to_ids(["<xq>", "<xq>_1"])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[ids],
                       result.embedding.vectors["text_encoder_2"])
    # both files say what they are (ModelSpec), with the run's resolution and prediction type; diffusers ignored it
    side = fresh_model(xl_dir).resolution
    for name in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"):
        with safe_open(str(tmp_path / "run" / name), "pt") as f:
            meta = f.metadata()
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
        assert (meta["modelspec.resolution"], meta["modelspec.prediction_type"]) == (f"{side}x{side}", "epsilon")
        assert meta["modelspec.implementation"] == "diffusers" and meta["format"] == "pt"


def test_a_steps_embedding_file_has_the_main_files_modelspec_date(xl_dir, images, tmp_path, monkeypatch):
    """The step's file holds the main file's embedding at that step: one save, one date (each call of the clock
    here gives another second, as a slow disk could between the two writes)."""
    from textinv import modelspec

    ticks = iter(range(10_000))
    monkeypatch.setattr(modelspec, "now", lambda: f"2024-01-01T00:00:{next(ticks) % 60:02d}+00:00")
    train(xl_config(images, tmp_path / "run", steps=2, save_every=2), model=fresh_model(xl_dir), progress=False)
    dates = []
    for path in (tmp_path / "run" / "xq.safetensors", tmp_path / "run" / "embeddings" / "xq-2.safetensors"):
        with safe_open(str(path), "pt") as f:
            dates.append(f.metadata()["modelspec.date"])
    assert dates[0] == dates[1]


def test_a_finished_run_resumed_leaves_its_embedding_files_byte_for_byte(xl_dir, images, tmp_path, monkeypatch):
    """A resume with nothing left to learn (a notebook cell run again with resume=True) wrote the same vectors with
    a new modelspec.date: the file's SHA-256 changed, and pictures drawn with it named it "retrained or replaced"
    (--again) and by a hash no longer its own (TI hashes)."""
    from textinv import modelspec

    ticks = iter(range(10_000))
    monkeypatch.setattr(modelspec, "now", lambda: f"2024-01-01T00:{next(ticks) // 60 % 60:02d}:{next(ticks) % 60:02d}Z")
    model = fresh_model(xl_dir)
    run = tmp_path / "run"
    train(xl_config(images, run, steps=2, save_every=2), model=model, progress=False)
    files = [run / "xq.safetensors", run / "embeddings" / "xq-2.safetensors"]
    before = [f.read_bytes() for f in files]
    assert train(xl_config(images, run, steps=2, save_every=2, resume=True), model=model, progress=False).steps == 2
    assert [f.read_bytes() for f in files] == before
    # a resume that learns on writes the new vectors with their own date
    train(xl_config(images, run, steps=4, save_every=2, resume=True), model=model, progress=False)
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata()["steps"] == "4" and f.metadata()["modelspec.date"] != modelspec_date(before[0])


def modelspec_date(data: bytes) -> str:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"]["modelspec.date"]


def test_fp16_sdxl_renders_with_its_vae_kept_in_fp32(xl_dir, images):
    """SDXL's VAE stays fp32 under fp16 (it overflows in fp16): training encodes with it, and the pipeline's fp16
    latents are decoded by it (they met fp32 weights: "Input type (c10::Half) and bias type (float)")."""
    from textinv.data import find_images, load_training_images
    from textinv.latent_cache import encode_latents

    half = load_model(xl_dir, dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    image = np.asarray(render(half, ["a photo of a dog"], [0], steps=2)[0], dtype=float)
    full = np.asarray(render(fresh_model(xl_dir), ["a photo of a dog"], [0], steps=2)[0], dtype=float)
    assert image.shape == (16, 16, 3) and np.abs(image - full).max() <= 8
    pixels = torch.stack([p.pixels for p in load_training_images(find_images(str(images)), 16, True)])
    mean, std = encode_latents(half.vae, pixels)
    assert mean.shape == (len(pixels), 4, 8, 8) and torch.isfinite(mean).all() and torch.isfinite(std).all()


def test_an_sdxl_refiner_is_refused(tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    base = build_tiny_xl_pipeline()
    refiner = StableDiffusionXLImg2ImgPipeline(vae=base.vae, text_encoder=None, tokenizer=None,
                                               text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                                               unet=base.unet, scheduler=base.scheduler, requires_aesthetics_score=True)
    refiner.save_pretrained(tmp_path / "refiner")
    with pytest.raises(ModelError, match="is an SDXL refiner .*textinv needs a base text-to-image model"):
        load_model(tmp_path / "refiner")


def test_playground_style_edm_model_is_refused_for_training_but_still_generates(xl_dir, images, tmp_path):
    """Playground v2.5 loads as an SDXL pipeline but samples on an EDM schedule with normalised latents: DDPM
    training would run and learn the wrong thing, so it is refused before the loop; drawing with it works."""
    from diffusers import EDMDPMSolverMultistepScheduler

    model = fresh_model(xl_dir)
    model.pipeline.scheduler = EDMDPMSolverMultistepScheduler()
    with pytest.raises(ModelError, match="EDM noise schedule"):
        train(xl_config(images, tmp_path / "a"), model=model, progress=False)
    assert not (tmp_path / "a").exists()
    assert render(model, ["a dog"], [0], steps=2)[0].size == (model.resolution, model.resolution)
    normalised = fresh_model(xl_dir)
    normalised.vae.register_to_config(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    with pytest.raises(ModelError, match="normalised latents"):
        train(xl_config(images, tmp_path / "b"), model=normalised, progress=False)


def test_the_two_file_layout_given_as_two_embeddings_is_one_token(xl_dir, tmp_path):
    """diffusers users hand both halves over (as they call load_textual_inversion twice): by their own names, in
    either order, renamed, or beside the folder that already pairs them, they draw what the one-file layout draws."""
    from textinv.formats import save_embedding

    model = fresh_model(xl_dir)
    emb = load_embedding_from(model, "<gq>")
    one = save_embedding(emb, tmp_path / "one" / "gq.safetensors", "sdxl")[0]
    first, second = save_embedding(emb, tmp_path / "pair" / "learned_embeds.safetensors", "diffusers-sdxl")
    renamed = [tmp_path / "gq_l.safetensors", tmp_path / "gq_g.safetensors"]
    for src, dst in zip((first, second), renamed):
        dst.write_bytes(src.read_bytes())

    def draw(embeddings, name):
        config = GenerateConfig(prompt=["a <gq>"], embedding=[str(e) for e in embeddings], out=str(tmp_path / name),
                                n=1, steps=2, model=str(xl_dir))
        return np.asarray(Image.open(generate(config, model=model, progress=False)[0]))

    want = draw([one], "one")
    for k, embeddings in enumerate(([first, second], [second, first], renamed, [first.parent, second], [second])):
        assert np.array_equal(draw(embeddings, f"r{k}"), want), embeddings
    with pytest.raises(Exception, match="one half of an SDXL embedding.*pass both files"):
        draw([renamed[0]], "half")


def test_two_halves_given_together_are_not_warned_about_as_halves(xl_dir, tmp_path):
    """Each file of a pair textinv wrote says SDXL (its modelspec); read one by one, as --embedding A B reads them
    before joining them, each was warned about as "one half of an SDXL embedding" though both were given; and so
    was the first file given alone, found with its partner, when generate looked for its TI hash."""
    from textinv.formats import LearnedEmbedding, ModelSpecWarning, save_embedding

    model = fresh_model(xl_dir)
    emb = load_embedding_from(model, "<gq>")
    emb = LearnedEmbedding(emb.token, emb.vectors, {"family": "sdxl"})  # (as trained on SDXL)
    first, second = save_embedding(emb, tmp_path / "pair" / "learned_embeds.safetensors", "diffusers-sdxl")
    renamed = [tmp_path / "gq_l.safetensors", tmp_path / "gq_g.safetensors"]
    for src, dst in zip((first, second), renamed):
        dst.write_bytes(src.read_bytes())
    for k, embeddings in enumerate(([first], [first, second], [renamed[1], renamed[0]])):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ModelSpecWarning)
            generate(GenerateConfig(prompt=["a <gq>"], embedding=[str(e) for e in embeddings], n=1, steps=1,
                                    out=str(tmp_path / f"r{k}")), model=model, progress=False)
    # one half alone on a model of one encoder is still said to be one
    with pytest.warns(ModelSpecWarning, match="one half|metadata is wrong"):
        load_embedding(renamed[0])


def test_an_sdxl_file_without_clip_l_is_named_incomplete(tmp_path):
    from safetensors.torch import save_file

    from textinv.errors import FormatError

    save_file({"clip_g": torch.randn(1, 1280)}, str(tmp_path / "g.safetensors"))
    with pytest.raises(FormatError, match="'clip_g' .* but no 'clip_l'"):
        load_embedding(tmp_path / "g.safetensors")


def test_convert_to_diffusers_writes_the_sdxl_pair(xl_dir, tmp_path):
    from textinv.formats import convert, save_embedding

    emb = load_embedding_from(fresh_model(xl_dir), "<gq>")
    src = save_embedding(emb, tmp_path / "gq.safetensors", "sdxl")[0]
    written = convert(src, tmp_path / "out" / "learned_embeds.safetensors", to="diffusers")
    assert [p.name for p in written] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    back = load_embedding(written[0])
    assert all(torch.equal(back.vectors[k], emb.vectors[k]) for k in emb.vectors)


def test_convert_joins_two_renamed_halves(xl_dir, tmp_path):
    from textinv.cli import main
    from textinv.formats import save_embedding

    emb = load_embedding_from(fresh_model(xl_dir), "<gq>")
    first, second = save_embedding(emb, tmp_path / "pair" / "learned_embeds.safetensors", "diffusers-sdxl")
    halves = [tmp_path / "gq_l.safetensors", tmp_path / "gq_g.safetensors"]
    for src, dst in zip((first, second), halves):
        dst.write_bytes(src.read_bytes())
    assert main(["convert", str(halves[1]), str(tmp_path / "gq.safetensors"), "--second", str(halves[0])]) == 0
    back = load_embedding(tmp_path / "gq.safetensors")
    assert back.token == "<gq>" and all(torch.equal(back.vectors[k], emb.vectors[k]) for k in emb.vectors)


def test_inspect_names_a_lone_second_half_of_the_two_file_layout(tmp_path):
    """Alone, learned_embeds_2 (1280 wide) "fits no known family"; say what it is and which file to give."""
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.inspect import inspect_file

    emb = LearnedEmbedding("<hq>", {"text_encoder": torch.randn(1, 768), "text_encoder_2": torch.randn(1, 1280)})
    _, second = save_embedding(emb, tmp_path / "learned_embeds.safetensors", "diffusers-sdxl")
    assert "note" not in inspect_file(tmp_path / "learned_embeds.safetensors")
    assert "XL" in inspect_file(second)["family"] and "note" not in inspect_file(second)  # (it finds the first)
    (tmp_path / "learned_embeds.safetensors").unlink()
    report = inspect_file(second)
    assert "second half of an SDXL embedding kept as two files" in report["text"]


def test_clip_skip_2_on_sdxl_is_its_own_penultimate_reading_and_more_is_refused(xl_dir, images, tmp_path):
    """"Clip skip 2", as SDXL fine-tunes' pages ask for, is what SDXL reads anyway: the web UI ignores its clip skip
    on SDXL and ComfyUI's "stop at -2" is SDXL's default. It trains and draws as 1 does; 3 and more are refused."""
    import warnings

    plain = train(xl_config(images, tmp_path / "a"), model=fresh_model(xl_dir), progress=False)
    skipped = train(xl_config(images, tmp_path / "b", clip_skip=2), model=fresh_model(xl_dir), progress=False)
    assert all(torch.equal(plain.embedding.vectors[k], skipped.embedding.vectors[k]) for k in plain.embedding.vectors)
    assert skipped.embedding.metadata["clip_skip"] == "1"  # the layer read, in SDXL's numbering: its own
    model = fresh_model(xl_dir)

    def draw(out, **kw):
        config = GenerateConfig(prompt=["a photo of <xq>"], embedding=[str(tmp_path / "b")], out=str(tmp_path / out),
                                n=1, steps=2, model=str(xl_dir), **kw)
        return Image.open(generate(config, model=model, progress=False)[0])

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="drawing with clip skip")  # (trained with another one)
        two = draw("r2", clip_skip=2)
    assert np.array_equal(np.asarray(two), np.asarray(draw("r1", clip_skip=1)))
    with pytest.raises(ConfigError, match="SDXL reads its text encoders' penultimate layers.*3"):
        train(xl_config(images, tmp_path / "c", clip_skip=3), model=fresh_model(xl_dir), progress=False)
    with pytest.raises(ConfigError, match="SDXL reads"):
        draw("r3", clip_skip=3)


def test_starting_from_one_half_of_an_sdxl_pair_says_how_to_give_both(xl_dir, images, tmp_path):
    from textinv.formats import LearnedEmbedding, save_embedding

    half = save_embedding(LearnedEmbedding("<h>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "h.pt", "a1111")[0]
    with pytest.raises(Exception, match="join the two with textinv convert FIRST OUT --second SECOND"):
        train(xl_config(images, tmp_path / "a", init=None, init_embedding=str(half), vectors=1),
              model=fresh_model(xl_dir), progress=False)


def test_an_edited_sdxl_prompt_switches_the_pooled_embedding_too(xl_dir):
    from test_generate import _conditioning_seen

    model = fresh_model(xl_dir)
    seen = _conditioning_seen(model)
    render(model, ["[a dog:a cat:1]"], [0], steps=3)
    (dog, dog_pooled), (cat, cat_pooled) = (encode_prompts(model, [p]) for p in ("a dog", "a cat"))
    assert len(seen) == 3 and not torch.equal(dog_pooled, cat_pooled)
    for step, (hidden, pooled) in enumerate(seen):  # steps 0 and 1 (<= 1) the dog, then the cat
        want, want_pooled = (dog, dog_pooled) if step <= 1 else (cat, cat_pooled)
        torch.testing.assert_close(hidden[1:], want)  # (the negative, empty: zeros, first)
        torch.testing.assert_close(pooled[1:], want_pooled)
        assert not pooled[0].any()
    seen.clear()  # a negative that is empty only at some steps is encoded there, as "" (the web UI zeroes only
    render(model, ["a dog"], [0], steps=3, negative_prompt="[ugly::1]")  # one empty at every step)
    empty, empty_pooled = encode_prompts(model, [""])
    ugly, ugly_pooled = encode_prompts(model, ["ugly"])
    torch.testing.assert_close(seen[0][1][:1], ugly_pooled)
    torch.testing.assert_close(seen[2][0][:1], empty)
    torch.testing.assert_close(seen[2][1][:1], empty_pooled)
    assert seen[2][1][0].any()


def test_sdxl_zeroes_the_empty_negative_of_its_own_picture_in_a_batch_of_several(xl_dir):
    """A batch of pictures of other negatives zeroes (as diffusers and the web UI zero an empty one) the rows of
    those empty at every step alone, and each picture is the one drawn alone."""
    from test_generate import _conditioning_seen

    model = fresh_model(xl_dir)
    seen = _conditioning_seen(model)
    negatives = ["", "ugly", "[ugly::1]"]
    together = render(model, ["a dog"] * 3, [0, 1, 2], steps=3, negative_prompt=negatives)
    hidden, pooled = seen[0]  # rows: the three negatives, then the prompts
    assert len(seen) == 3 and not hidden[0].any() and not pooled[0].any() and hidden[1].any() and pooled[2].any()
    for i, negative in enumerate(negatives):
        alone, = render(model, ["a dog"], [i], steps=3, negative_prompt=negative)
        assert np.abs(np.asarray(together[i], dtype=int) - np.asarray(alone)).max() <= 1


def test_comfy_emphasis_encodes_an_empty_sdxl_negative_as_comfyui_does(xl_dir):
    """ComfyUI's CLIPTextEncode encodes an empty prompt as any other (zeros come from its ConditioningZeroOut node
    alone); diffusers' SDXL pipeline and the web UI zero it, and so did a ComfyUI picture's redraw."""
    from test_generate import _conditioning_seen

    model = fresh_model(xl_dir)
    seen = _conditioning_seen(model)
    render(model, ["a dog"], [0], steps=1, emphasis_mode="comfy")
    empty, empty_pooled = encode_prompts(model, [""])
    torch.testing.assert_close(seen[0][0][:1], empty)
    torch.testing.assert_close(seen[0][1][:1], empty_pooled)


def _overflowing_vae(folder, force_upcast: bool):
    """The tiny SDXL VAE with an encoder whose activations pass fp16's range (as SDXL's own VAE's do at full size),
    saved with its config's `force_upcast`: the flag the stock SDXL VAE sets and the fp16-fixed one clears."""
    vae = build_tiny_xl_pipeline().vae
    with torch.no_grad():  # (weights still within fp16's range: it is the activations that pass it)
        vae.encoder.conv_in.weight.mul_(1e5)
        vae.encoder.conv_in.bias.mul_(1e5)
    vae.register_to_config(force_upcast=force_upcast)
    vae.save_pretrained(folder)
    return folder


def test_fp16_sdxl_keeps_a_given_vae_that_says_it_overflows_in_fp32(xl_dir, images, tmp_path):
    """--vae with the stock SDXL VAE (its config: force_upcast true) under fp16 encoded the training pictures in fp16:
    infinite latents, NaN losses. Only a VAE that says it is fp16-safe (the fixed one: force_upcast false) stays
    in fp16, as the pipeline itself upcasts before decoding exactly when the flag is set."""
    from textinv.data import find_images, load_training_images
    from textinv.latent_cache import encode_latents

    pixels = torch.stack([p.pixels for p in load_training_images(find_images(str(images)), 16, True)])
    stock = load_model(xl_dir, dtype=torch.float16, vae=_overflowing_vae(tmp_path / "stock", True))
    assert stock.unet.dtype == torch.float16 and stock.vae.dtype == torch.float32
    mean, std = encode_latents(stock.vae, pixels)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert render(stock, ["a photo of a dog"], [0], steps=2)[0].size == (16, 16)  # fp16 latents, fp32 decoder
    fixed = load_model(xl_dir, dtype=torch.float16, vae=_overflowing_vae(tmp_path / "fixed", False))
    assert fixed.vae.dtype == torch.float16


def test_the_compile_check_runs_the_graph_that_sdxl_training_runs(xl_dir, images, tmp_path, monkeypatch):
    """SDXL's pooled text embedding requires a gradient in training (the second encoder's vectors learn through it):
    the check's does too, so the first step does not compile the UNet again, and its gradient is checked as well."""
    from test_train import graphs_compiled

    cfg = xl_config(images, tmp_path / "run", steps=2, save_every=0, compile="unet")
    assert graphs_compiled(monkeypatch, fresh_model(xl_dir), cfg) == 1


def test_the_compile_check_compares_the_gradient_to_the_pooled_embedding(xl_dir):
    """A compiled UNet that cut the gradient to SDXL's pooled embedding alone trains the second encoder's vectors
    wrong: the check catches it."""
    from textinv.speed import check_compiled_unet, unet_example

    model = fresh_model(xl_dir)
    model.unet.requires_grad_(False)
    example = unet_example(model, 2, (4, 8, 8))
    embedding = model.unet.add_embedding  # (what the pooled embedding and time ids go through)
    faithful = embedding._call_impl
    embedding._compiled_call_impl = lambda *a, **k: faithful(*a, **k).detach()
    with pytest.warns(RuntimeWarning, match="torch.compile changed the UNet's result"):
        assert check_compiled_unet(model.unet, example) is False


def test_an_sdxl_pictures_ti_hashes_name_one_file_embeddings_and_not_a_diffusers_pair(xl_dir, tmp_path):
    """The web UI hashes the one file it loads an embedding from: an SDXL file (clip_l + clip_g) is named by its
    SHA-256; diffusers' SDXL pair (two files, found beside the first or given as two) is no file the web UI reads
    as one embedding, and is not named."""
    import hashlib

    from textinv.again import parse_a1111_parameters
    from textinv.formats import save_embedding

    model = fresh_model(xl_dir)
    emb = load_embedding_from(model, "<gq>")
    one = save_embedding(emb, tmp_path / "gq.safetensors", "sdxl")[0]
    pair = save_embedding(emb, tmp_path / "pair" / "learned_embeds.safetensors", "diffusers-sdxl")

    def fields(*files):
        out = tmp_path / f"r{len(list(tmp_path.glob('r*')))}"
        path = generate(GenerateConfig(prompt=["a <gq>"], embedding=[str(f) for f in files], out=str(out), n=1,
                                       steps=1), model=model, progress=False)[0]
        return parse_a1111_parameters(Image.open(path).text["parameters"])[2]

    assert fields(one)["TI hashes"] == f"<gq>: {hashlib.sha256(one.read_bytes()).hexdigest()[:12]}"
    assert "TI hashes" not in fields(pair[0]) and "TI hashes" not in fields(*pair)


@pytest.mark.parametrize("sampler", ["dpm++sde_karras", "dpm++2m_sde_exponential", "dpm++3m_sde", "lms_beta"])
def test_the_sde_samplers_and_schedules_draw_sdxl_each_picture_from_its_seed(xl_dir, sampler):
    """The samplers that add noise at every step draw SDXL's pictures each from its own seed, as SD's."""
    model = fresh_model(xl_dir)
    pair = render(model, ["a dog", "a dog"], [4, 5], steps=3, sampler=sampler)
    alone = render(model, ["a dog"], [5], steps=3, sampler=sampler)[0]
    assert np.asarray(alone).std() > 0 and np.array_equal(np.asarray(pair[1]), np.asarray(alone))


def test_sdxl_draws_composable_diffusion_with_each_sub_prompts_pooled_embedding(xl_dir):
    """SDXL's UNet takes each sub-prompt's pooled text embedding and the time ids beside its hidden states: "x:0.5
    AND x:0.5" is "x", and "a AND b" guides with both (also with a sub-prompt edited and one longer than a chunk)."""
    model = fresh_model(xl_dir)

    def drawn(prompt, **kwargs):
        return np.asarray(render(model, [prompt], [0], steps=2, **kwargs)[0], dtype=int)

    alone = drawn("a photo of a dog")
    assert np.abs(drawn("a photo of a dog:0.5 AND a photo of a dog :0.5") - alone).max() <= 1
    both = drawn("a photo of a dog AND a red cat")
    assert np.abs(both - alone).max() > 2
    assert drawn("[a photo of a dog:a fish:1] AND " + "a red cat, " * 30, negative_prompt="ugly").shape == both.shape


def test_sdxl_draws_the_hires_fix_and_img2img_told_each_pass_its_own_size(xl_dir):
    """SDXL's img2img pipeline takes the latents as they are and each pass is told its own size (the time ids)."""
    from textinv.generate import render
    from textinv.refine import Hires

    model = fresh_model(xl_dir)
    told = []
    model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: told.append(kwargs["added_cond_kwargs"]["time_ids"][-1].tolist()), with_kwargs=True)
    pictures = render(model, ["a dog"], [2], steps=2, width=32, height=24,
                      hires=Hires(scale=2, steps=2, upscaler="lanczos"))
    assert pictures[0].size == (64, 48)
    assert told == [[24, 32, 0, 0, 24, 32]] * 2 + [[48, 64, 0, 0, 48, 64]] * 2
    told.clear()
    redrawn = render(model, ["a cat"], [2], steps=4, width=32, height=24, start=pictures, denoise=0.5)
    assert redrawn[0].size == (32, 24) and len(told) == 3


def test_random_crop_trains_sdxl_with_the_centre_crops_size_and_place(xl_dir, tmp_path, monkeypatch):
    """--random-crop on SDXL: each sample takes one of its picture's encoded windows, and SDXL's time ids stay the
    centre crop's, as kohya's (its trim_and_resize_if_required has no place for a random window)."""
    from textinv import train as train_module

    folder = tmp_path / "w"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    seen = []
    real = train_module._xl_time_ids
    monkeypatch.setattr(train_module, "_xl_time_ids", lambda *a: seen.append(real(*a)) or seen[-1])
    result = train(xl_config(folder, tmp_path / "run", resolution=16, random_crop=True), model=fresh_model(xl_dir),
                   progress=False)
    assert all(torch.isfinite(v).all() for v in result.embedding.vectors.values())
    assert seen[-1].tolist() == [[16, 48, 0, 16, 16, 16]] * 2  # (size, the centre crop's top-left, target)


def test_comfy_emphasis_applies_a_one_encoder_embedding_to_the_sdxl_encoder_of_its_width(xl_dir, tmp_path):
    """ComfyUI applies an SD 1.x embedding (768 wide, CLIP-L's width) on SDXL to CLIP-L and leaves it out of
    OpenCLIP-G's reading of the prompt (comfy/sd1_clip.py: its vectors taken out of the chunk, which closes up and is
    padded at its end). --emphasis comfy refused it, as the other modes still do (the web UI skips it)."""
    from dataclasses import replace

    from test_generate import _conditioning_seen

    from textinv.errors import FormatError
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.generate import expand_all

    vectors = torch.randn(2, 32) * 3  # (the tiny SDXL's CLIP-L is 32 wide, its OpenCLIP-G 64)
    path = tmp_path / "one.pt"
    save_embedding(LearnedEmbedding("<one>", {"text_encoder": vectors}), path, "a1111")
    config = GenerateConfig(prompt=["a embedding:one dog"], embedding=[str(path)], out=str(tmp_path / "a"), n=1,
                            steps=1, model=str(xl_dir), emphasis="comfy")
    with pytest.raises(FormatError, match="has width 32 .* but the model"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(replace(config, emphasis="original"), progress=False)
    model = load_model(xl_dir)
    seen = _conditioning_seen(model)
    with pytest.warns(UserWarning, match=r"embedding 'embedding:one' has width 32 .*: it is applied to the SDXL "
                                         r"model .* text encoder of width 32 alone and left out of the other's \(width 64\)"):
        generate(config, model=model, progress=False)
    hidden, pooled = seen[0][0][1:], seen[0][1][1:]  # (the prompt's row; the negative's is first)
    both = LearnedEmbedding("<one>", {"text_encoder": vectors, "text_encoder_2": torch.randn(2, 64)})
    install_embedding(model, both)
    with_clip_l = encode_prompts(model, [expand_all("a <one> dog", [both])])[0]
    unload_embeddings(model)
    without, without_pooled = encode_prompts(model, ["a dog"])
    torch.testing.assert_close(hidden[..., :32], with_clip_l[..., :32])
    torch.testing.assert_close(hidden[..., 32:], without[..., 32:])
    torch.testing.assert_close(pooled, without_pooled)


def test_comfy_emphasis_draws_an_embedding_that_fits_no_sdxl_encoder_without_it_as_comfyui_does(xl_dir, tmp_path):
    """An SD 2.x embedding (1024 wide) on SDXL fits neither CLIP-L (768) nor OpenCLIP-G (1280): ComfyUI leaves it
    out of both with a warning and draws the rest of the prompt. --emphasis comfy refused it; it now draws the
    picture of the prompt without the token, as there; the other modes still refuse it, naming --emphasis comfy."""
    from dataclasses import replace

    from textinv.errors import FormatError
    from textinv.formats import LearnedEmbedding, save_embedding

    path = tmp_path / "two.pt"  # (the tiny SDXL's encoders are 32 and 64 wide: 48 fits neither)
    save_embedding(LearnedEmbedding("<two>", {"text_encoder": torch.randn(2, 48) * 3}), path, "a1111")
    config = GenerateConfig(prompt=["a embedding:two dog"], embedding=[str(path)], out=str(tmp_path / "a"), n=1,
                            steps=2,
                            model=str(xl_dir), emphasis="comfy")
    with pytest.raises(FormatError, match="has width 48 .* but the model .* so does emphasis=.comfy."), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate(replace(config, emphasis="original"), progress=False)
    with pytest.warns(UserWarning, match=r"embedding 'embedding:two' has width 48 .*and fits none of .* text encoders "
                                         r"\(width 32 \+ 64"):
        (left_out,) = generate(config, progress=False)
    (without,) = generate(replace(config, prompt=["a dog"], embedding=[], out=str(tmp_path / "b")), progress=False)
    assert np.array_equal(np.asarray(Image.open(left_out)), np.asarray(Image.open(without)))


def test_an_embedding_left_out_of_an_encoders_chunk_closes_it_up_its_weights_staying_by_place():
    """As ComfyUI leaves out an embedding of another width: the ids go, the end token and the rest move up, padding
    fills the end, and each weight stays at its place (so the 1.5 after the embedding now falls on the end token)."""
    from textinv.conditioning import _left_out

    chunk = ([49406, 1, 500, 501, 2, 49407, 0, 0], [1.0, 1.0, 1.0, 1.0, 1.5, 1.0, 1.0, 1.0])
    assert _left_out(chunk, {500, 501}, 0) == ([49406, 1, 2, 49407, 0, 0, 0, 0], chunk[1])
    assert _left_out(chunk, None, 0) == chunk


def test_prompt_l_gives_sdxls_clip_l_its_own_text_as_comfyuis_clip_text_encode_sdxl(xl_dir, tmp_path):
    """ComfyUI's CLIPTextEncodeSDXL encodes its text_l with CLIP-L and its text_g with OpenCLIP-G (whose pooled
    embedding SDXL reads), the text of fewer chunks given empty ones; textinv gave both encoders text_g. --prompt-l
    and --negative-prompt-l give CLIP-L its text, under --emphasis comfy alone."""
    from dataclasses import replace

    from test_generate import _conditioning_seen

    model = load_model(xl_dir)
    seen = _conditioning_seen(model)
    long_l = " ".join(["red hat"] * 40)  # (past 75 tokens, no comma: cut alike as ComfyUI and the web UI cut it)
    config = GenerateConfig(prompt=["a dog"], prompt_l=long_l, negative_prompt="blurry", negative_prompt_l="dark",
                            out=str(tmp_path / "a"), n=1, steps=1, model=str(xl_dir), emphasis="comfy")
    (png,) = generate(config, model=model, progress=False)
    negative, positive = seen[0][0][:1], seen[0][0][1:]
    l_text = encode_prompts(model, [long_l])
    chunks = l_text[0].shape[1] // 77  # (CLIP-L's chunks, more than one; OpenCLIP-G's text is given empty ones)
    g_text = encode_prompts(model, ["a dog"], chunks=chunks)
    assert chunks > 1 and positive.shape[1] == 77 * chunks
    torch.testing.assert_close(positive[..., :32], l_text[0][..., :32])
    torch.testing.assert_close(positive[..., 32:], g_text[0][..., 32:])
    torch.testing.assert_close(seen[0][1][1:], g_text[1])
    torch.testing.assert_close(negative[:, :77, :32], encode_prompts(model, ["dark"])[0][..., :32])
    torch.testing.assert_close(negative[:, :77, 32:], encode_prompts(model, ["blurry"])[0][..., 32:])
    settings = json.loads(Image.open(png).text["textinv_settings"])["settings"]
    assert (settings["prompt_l"], settings["negative_prompt_l"]) == (long_l, "dark")
    with pytest.raises(ConfigError, match="prompt_l= is ComfyUI's CLIPTextEncodeSDXL text_l: add emphasis='comfy'"):
        generate(replace(config, emphasis="original"), model=model, progress=False)


def test_an_xyz_prompt_search_and_replace_draws_the_clip_l_text_replaced(xl_dir, tmp_path):
    """A Prompt S/R cell is the plain generate of its prompts replaced, --prompt-l's too (CLIP-L kept the first
    value, drawing it beside the cell's)."""
    model = fresh_model(xl_dir)
    settings = dict(prompt=["a photo"], negative_prompt="blurry", n=1, steps=1, width=16, height=16,
                    model=str(xl_dir), emphasis="comfy")
    cells = generate(GenerateConfig(prompt_l="a red dog", x="prompt-sr=red,blue", out=str(tmp_path / "a"),
                                    **settings), model=model, progress=False)[1:]
    plain = generate(GenerateConfig(prompt_l="a blue dog", out=str(tmp_path / "b"), **settings), model=model,
                     progress=False)[0]
    assert np.array_equal(np.asarray(Image.open(cells[1])), np.asarray(Image.open(plain)))
    assert not np.array_equal(np.asarray(Image.open(cells[0])), np.asarray(Image.open(plain)))


def test_prompt_l_takes_no_dynamic_prompts_and_again_draws_a_comfyui_text_l_as_written(xl_dir, tmp_path):
    """--prompt-l is drawn for every picture, as a hires prompt is: a variant or wildcard in it is refused (its
    braces were drawn as words, unsaid). A ComfyUI text_l holding `{`, `}` or `#` (text there) is read by --again
    as text and drawn so: CLIP-L reads what ComfyUI's CLIP-L read."""
    from test_generate import _comfy_graph, _comfy_picture, _conditioning_seen

    from textinv.again import again_config

    model = load_model(xl_dir)
    common = dict(out=str(tmp_path / "a"), n=1, steps=1, model=str(xl_dir), emphasis="comfy")
    for flag, given in (("--prompt-l", dict(prompt_l="a {cat|bird}")),
                        ("--negative-prompt-l", dict(negative_prompt_l="__colors__"))):
        with pytest.raises(ConfigError, match=f"{flag} .*: SDXL's CLIP-L texts take no {{a|b}} variants"):
            generate(GenerateConfig(prompt=["a dog"], **given, **common), model=model, progress=False)
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*.png"))
    graph = _comfy_graph()
    graph["6"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        "text_g": "a dog", "text_l": "a {red} car #1", "clip": ["4", 1], "width": 24, "height": 16, "crop_w": 0,
        "crop_h": 0, "target_width": 24, "target_height": 16}}
    config, _ = again_config(_comfy_picture(tmp_path / "c.png", graph), {"model": str(xl_dir),
                                                                        "out": str(tmp_path / "b")})
    seen = _conditioning_seen(model)
    generate(config, model=model, progress=False)
    torch.testing.assert_close(seen[0][0][1:, :77, :32], encode_prompts(model, ["a {red} car #1"])[0][..., :32])


def test_prompt_l_draws_a_multi_vector_token_the_model_has_saved_in_it_with_all_its_vectors(xl_dir, tmp_path,
                                                                                           monkeypatch):
    """A model the diffusers script saved whole holds `<cat-toy>` and `<cat-toy>_1` in both tokenizers; its prompt
    drew both vectors (`tokens.saved_tokens`), and --prompt-l / --negative-prompt-l, CLIP-L's texts, drew the first
    alone."""
    import textinv.generate as gen

    pipe = StableDiffusionXLPipeline.from_pretrained(xl_dir)
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokenizer.add_tokens(["<cat-toy>", "<cat-toy>_1"])
        encoder.resize_token_embeddings(len(tokenizer))
    pipe.save_pretrained(tmp_path / "whole")
    seen = recorded_arguments(monkeypatch, gen, "render", "prompts", "clip_l")
    generate(GenerateConfig(prompt=["a <cat-toy>"], prompt_l="a photo of <cat-toy>", negative_prompt_l="<cat-toy>",
                            out=str(tmp_path / "out"), n=1, steps=1, model=str(tmp_path / "whole"), emphasis="comfy"),
             progress=False)
    assert seen == [(["a <cat-toy> <cat-toy>_1"], ("a photo of <cat-toy> <cat-toy>_1", "<cat-toy> <cat-toy>_1"))]


def test_a_resume_without_checkpoints_names_a_diffusers_sdxl_pairs_first_step_file(xl_dir, images, tmp_path,
                                                                                    monkeypatch):
    """Its checkpoints gone and its embedding file damaged, --resume names the newest step's saved vectors: of a
    diffusers-sdxl pair that was the first file or the second (learned_embeds_2-steps-N, which reads as the second
    encoder's half alone) as embeddings/ listed them."""
    import shutil

    from textinv import run_folder

    out = tmp_path / "run"
    train(xl_config(images, out, format="diffusers"), model=fresh_model(xl_dir), progress=False)
    shutil.rmtree(out / "checkpoints")
    main = out / "learned_embeds.safetensors"
    main.write_bytes(main.read_bytes()[:300])
    listed = run_folder._step_files  # (the seconds listed first, as a folder may list them)
    monkeypatch.setattr(run_folder, "_step_files", lambda *a: sorted(listed(*a), key=lambda f: f[0].name)[::-1])
    first = out / "embeddings" / "learned_embeds-steps-4.safetensors"
    with pytest.raises(ConfigError, match=f"init_embedding='{re.escape(str(first))}' .in place of init=."):
        train(xl_config(images, out, format="diffusers", steps=6, resume=True), model=fresh_model(xl_dir),
              progress=False)


def test_pad_cond_uncond_pads_an_empty_negatives_zeros_with_empty_chunks(xl_dir):
    """SDXL's empty negative is zeros (the web UI's force_zero_negative_prompt), one chunk long; the web UI's
    pad_cond_uncond pads it to a long prompt's length with the empty prompt's encoding, not with more zeros."""
    model = fresh_model(xl_dir)
    seen = []
    model.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()),
                                         with_kwargs=True)
    long = "a photo of a " + "dog " * 80
    render(model, [long], [0], steps=1, width=64, guidance=7.5, negative_prompt="", pad_conds="empty")
    negative = seen[0][0]  # (the negative's row, then the prompt's)
    chunks = negative.shape[0] // 77
    empty = encode_prompts(model, [""], chunks)[0][0, 77:]  # (the empty chunks a one-chunk prompt is padded with)
    assert chunks > 1 and not negative[:77].any()
    torch.testing.assert_close(negative[77:], empty.to(negative.dtype))
