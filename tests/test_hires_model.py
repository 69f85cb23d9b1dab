"""generate --hires-model and --hires-guidance: the web UI's Hires checkpoint (another model of the family draws the
hires fix's second pass) and Forge's Hires CFG Scale (that pass's guidance)."""

import numpy as np
import pytest
import torch

from textinv.config import GenerateConfig
from textinv.errors import ConfigError
from textinv.formats import LearnedEmbedding, save_embedding
from textinv.generate import generate, render
from textinv.models import load_model
from textinv.refine import Hires
from textinv.tiny import build_tiny_pipeline

PROMPT = ["a photo of a dog"]


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    """A second tiny SD 1.x model (other weights than `sd1_dir`'s)."""
    path = tmp_path_factory.mktemp("tiny-sd1-other")
    build_tiny_pipeline("sd1", seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(sd1_dir, other_dir):
    return load_model(sd1_dir), load_model(other_dir)


def _calls(*modules):
    """Each module's calls (the shape of its first input), and the hooks that note them."""
    seen = [[] for _ in modules]
    hooks = [m.register_forward_pre_hook(lambda m, args, kwargs, s=s: s.append(
        (args[0] if args else next(iter(kwargs.values()))).shape), with_kwargs=True)
             for m, s in zip(modules, seen)]
    return seen, hooks


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_the_hires_model_draws_the_second_pass_alone_with_its_own_vae(models, upscaler):
    """4 steps at 8 x 8 latents by --model, then 4 at 16 x 16 by the hires model, whose VAE decodes the picture
    (and, for a picture upscaler, encodes the enlarged first pass, which --model's VAE decoded)."""
    model, other = models
    (base, hires, base_dec, hires_dec, hires_enc), hooks = _calls(model.unet, other.unet, model.vae.decoder,
                                                                  other.vae.decoder, other.vae.encoder)
    try:
        image = render(model, PROMPT, [0], steps=4, hires=Hires(scale=2, upscaler=upscaler, model=other))[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(base) == 4 and {s[-1] for s in base} == {8}
    assert len(hires) == 4 and {s[-1] for s in hires} == {16}
    pictured = upscaler == "lanczos"
    assert len(hires_dec) == 1 and len(base_dec) == pictured and len(hires_enc) == pictured
    alone = render(model, PROMPT, [0], steps=4, hires=Hires(scale=2, upscaler=upscaler))[0]
    assert image.size == alone.size == (32, 32) and not np.array_equal(np.asarray(image), np.asarray(alone))
    assert model.pipeline.unet is model.unet and other.pipeline.unet is other.unet


def test_the_hires_guidance_guides_the_second_pass_only(models, monkeypatch):
    import textinv.generate as generating

    model, _ = models
    given = []
    real = generating._pass

    def noting(model, pipe, *args, guidance, **kwargs):
        given.append(guidance)
        return real(model, pipe, *args, guidance=guidance, **kwargs)

    monkeypatch.setattr(generating, "_pass", noting)
    guided = render(model, PROMPT, [0], steps=4, guidance=7, hires=Hires(scale=2, guidance=3))[0]
    assert given == [7, 3]
    same = render(model, PROMPT, [0], steps=4, guidance=7, hires=Hires(scale=2))[0]
    assert given[2:] == [7, 7] and not np.array_equal(np.asarray(guided), np.asarray(same))


def _embedding(scale: float) -> LearnedEmbedding:
    vectors = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    return LearnedEmbedding("<rq>", {"text_encoder": scale * vectors})


def test_the_learned_token_conditions_the_hires_model(sd1_dir, other_dir, tmp_path, monkeypatch):
    """generate installs the embeddings into the hires model too: its UNet reads the token's vectors, and it is
    given back without them."""
    import textinv.generate as generating

    loaded, seen = [], []
    real = generating.load_model

    def noting(source, **kwargs):
        made = real(source, **kwargs)
        if str(source) == str(other_dir):
            loaded.append(made)
            made.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()),
                                                with_kwargs=True)
        return made

    monkeypatch.setattr(generating, "load_model", noting)
    for scale in (1, 3):
        save_embedding(_embedding(scale), tmp_path / f"rq{scale}.safetensors", "diffusers")
        generate(GenerateConfig(prompt=["a photo of <rq>"], embedding=[str(tmp_path / f"rq{scale}.safetensors")],
                                steps=4, n=1, hires_scale=2, hires_model=str(other_dir), model=str(sd1_dir),
                                out=str(tmp_path / str(scale))), progress=False)
        assert "<rq>" not in loaded[-1].pipeline.tokenizer.get_vocab()  # (taken out again after the run)
    assert len(loaded) == 2 and len(seen) == 8
    assert not torch.equal(seen[0], seen[4])


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def test_generate_records_the_hires_model_and_guidance_as_the_web_ui_and_again_draws_bit_for_bit(
        sd1_dir, other_dir, tmp_path, monkeypatch):
    from PIL import Image

    from textinv.cli import main

    common = ["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "2", "--steps", "4", "--hires-scale",
              "2", "--metadata", "full"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--hires-model", str(other_dir), "--hires-guidance", "3.5", "--out",
                          str(tmp_path / "hires")]) == 0
    name = "000-a-dog-s1.png"
    picture = tmp_path / "hires" / name
    text = Image.open(picture).text["parameters"]
    assert f"Hires CFG Scale: 3.5, Hires checkpoint: {other_dir.name}" in text
    assert not np.array_equal(_pixels(picture), _pixels(tmp_path / "plain" / name))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--again", str(picture), "--out", "again"]) == 0
    assert np.array_equal(_pixels(tmp_path / "again" / name), _pixels(picture))


def _webui_picture(tmp_path, fields: str):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", f"a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 16x16, Model: "
                                f"v1-5, Denoising strength: 0.5, {fields}")
    Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)
    return tmp_path / "webui.png"


def test_again_reads_a_web_ui_pictures_hires_checkpoint_and_cfg_and_asks_for_its_model(sd1_dir, other_dir, tmp_path):
    from textinv.again import again_config

    picture = _webui_picture(tmp_path, "Hires upscale: 2, Hires upscaler: Latent, Hires CFG Scale: 4.5, "
                                       "Hires checkpoint: dreamshaper_8 [879db523c3]")
    with pytest.raises(ConfigError, match=r"Hires checkpoint dreamshaper_8 \[879db523c3\].*--hires-model"):
        again_config(picture, {"model": str(sd1_dir)})
    with pytest.warns(UserWarning, match=r"parameters: Model \("):
        config, _ = again_config(picture, {"model": str(sd1_dir), "hires_model": str(other_dir)})
    assert (config.hires_guidance, config.hires_model, config.hires_scale) == (4.5, str(other_dir), 2)
    with pytest.warns(UserWarning, match=r"parameters: Model \("):  # (reForge's 0: the first pass's)
        config, _ = again_config(_webui_picture(tmp_path, "Hires upscale: 2, Hires CFG Scale: 0"),
                                 {"model": str(sd1_dir)})
    assert (config.hires_guidance, config.hires_scale) == (None, 2)


def test_again_reads_a_web_ui_pictures_hires_steps_0_as_the_first_passs_steps(sd1_dir, tmp_path):
    """The web UI's Hires steps 0 is "as many as the first pass": it was read as --hires-steps 0 and refused."""
    from textinv.again import again_config

    with pytest.warns(UserWarning, match=r"parameters: Model \("):
        config, _ = again_config(_webui_picture(tmp_path, "Hires upscale: 2, Hires steps: 0"), {"model": str(sd1_dir)})
    assert (config.hires_steps, config.hires_scale) == (None, 2)
    config.validate()


def test_bad_hires_settings_are_refused_before_anything_loads(sd1_dir, tmp_path, monkeypatch):
    import textinv.generate as generating
    from textinv.tiny import build_tiny_xl_pipeline

    build_tiny_xl_pipeline().save_pretrained(tmp_path / "xl")

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(generating, "load_model", no_loading)
    out = str(tmp_path / "out")
    for model, hires in ((sd1_dir, tmp_path / "xl"), (tmp_path / "xl", sd1_dir)):
        with pytest.raises(ConfigError, match=r"hires_model=.* must be of the same family"):
            generate(GenerateConfig(prompt=PROMPT, model=str(model), hires_scale=2, hires_model=str(hires), out=out),
                     progress=False)
    for settings, said in (({"hires_guidance": 3}, "hires_guidance= sets the hires fix"),
                           ({"hires_model": str(sd1_dir)}, "hires_model= sets the hires fix"),
                           ({"hires_scale": 2, "hires_guidance": 0.5}, "hires_guidance= must be .* at least 1"),
                           ({"hires_scale": 2, "hires_guidance": float("inf")}, "hires_guidance= must be a finite")):
        with pytest.raises(ConfigError, match=said):
            generate(GenerateConfig(prompt=PROMPT, model=str(sd1_dir), out=out, **settings), progress=False)


def test_the_hires_model_draws_with_the_loras_of_its_pass_and_is_handed_back_without_them(
        sd1_dir, other_dir, tmp_path, monkeypatch):
    """As the web UI activates the hires pass's networks once the Hires checkpoint is loaded: the hires model draws
    the second pass with the prompt's LoRAs (or the hires prompt's, which replace them), the first pass's model with
    the prompt's, and both are handed back clean."""
    from peft.tuners.lora import LoraLayer
    from PIL import Image
    from test_generate import _save_tiny_lora

    import textinv.generate as generating
    from textinv.cli import main

    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "mystyle")
    loaded, real = [], generating.load_model
    monkeypatch.setattr(generating, "load_model", lambda source, **k: loaded.append(real(source, **k)) or loaded[-1])

    def draw(out, prompt, hires_prompt=None):
        path, = generate(GenerateConfig(prompt=[prompt], hires_prompt=hires_prompt, model=str(sd1_dir), steps=4, n=1,
                                        hires_scale=2, hires_model=str(other_dir), lora_dir=[str(loras)],
                                        out=str(tmp_path / out), metadata="full"), progress=False)
        return path

    tagged = draw("tagged", "a dog <lora:mystyle:1>")
    again = draw("again", "a dog <lora:mystyle:1>", hires_prompt="a dog <lora:mystyle:1>")
    first_only = draw("first", "a dog <lora:mystyle:1>", hires_prompt="a dog")
    second_only = draw("second", "a dog", hires_prompt="a dog <lora:mystyle:1>")
    plain = draw("plain", "a dog")
    assert np.array_equal(_pixels(tagged), _pixels(again))  # (an empty hires prompt: the prompt's LoRAs)
    assert not np.array_equal(_pixels(tagged), _pixels(first_only))  # the hires model drew with the LoRA
    assert not np.array_equal(_pixels(second_only), _pixels(plain))  # (only its pass differs)
    text = Image.open(tagged).text["parameters"]
    assert "Lora hashes: \"mystyle: " in text and f"Hires checkpoint: {other_dir.name}" in text
    assert main(["generate", "--again", str(tagged), "--out", str(tmp_path / "redrawn")]) == 0
    assert np.array_equal(_pixels(tmp_path / "redrawn" / tagged.name), _pixels(tagged))
    assert all(not hasattr(m, "_loras") and not any(isinstance(x, LoraLayer) for x in m.unet.modules())
               for m in loaded)


def test_a_loaded_hires_model_of_other_latents_or_the_sdxl_refiner_is_refused(models, tmp_path):
    from textinv.tiny import build_tiny_xl_pipeline, build_tiny_xl_refiner

    model, _ = models
    base = build_tiny_xl_pipeline()
    build_tiny_xl_refiner(base, seed=1).save_pretrained(tmp_path / "refiner")
    base.save_pretrained(tmp_path / "xl")
    xl, refiner = load_model(tmp_path / "xl"), load_model(tmp_path / "refiner", refiner=True)
    for first, second in ((model, xl), (xl, refiner)):
        with pytest.raises(ConfigError, match="hires_model=.* does not draw in the latents of model="):
            render(first, PROMPT, [0], steps=4, hires=Hires(scale=2, model=second))


def test_with_a_refiner_it_draws_the_last_steps_of_the_hires_model_s_pass(models, tmp_path):
    """As the web UI's second-pass refiner: --model draws the first pass, the hires model the second's first steps,
    the refiner that pass's last ones."""
    from textinv.refiner import Refiner
    from textinv.tiny import build_tiny_pipeline

    model, other = models
    build_tiny_pipeline("sd1", seed=5).save_pretrained(tmp_path / "refiner")
    refiner = load_model(tmp_path / "refiner", refiner=True)
    (base, hires, refined), hooks = _calls(model.unet, other.unet, refiner.unet)
    try:
        render(model, PROMPT, [0], steps=10, hires=Hires(scale=2, model=other), refiner=Refiner(refiner, 0.5))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(base) == 10 and {s[-1] for s in base} == {8}
    assert hires and refined and {s[-1] for s in hires + refined} == {16} and len(hires) + len(refined) == 10


def test_a_shareable_picture_names_its_hires_model_and_again_asks_where_it_is(sd1_dir, other_dir, tmp_path):
    from textinv.again import again_config
    from textinv.cli import main

    assert main(["generate", "--model", str(sd1_dir), "--hires-scale", "2", "--hires-model", str(other_dir),
                 "--prompt", "a dog", "-n", "1", "--steps", "4", "--metadata", "shareable", "--out",
                 str(tmp_path)]) == 0
    (picture,) = tmp_path.glob("*.png")
    with pytest.raises(ConfigError, match=f"--hires-model with where {other_dir.name} is"):
        again_config(picture, {"model": str(sd1_dir)})
    config, _ = again_config(picture, {"model": str(sd1_dir), "hires_model": str(other_dir)})
    assert (config.hires_model, config.hires_guidance) == (str(other_dir), None)


def test_a_hires_model_that_predicts_otherwise_samples_with_its_own_scheduler(models, sd2_dir, monkeypatch):
    """The tiny SD 2.x model predicts v: its pass's sampler is made from its own scheduler, which reads v."""
    import textinv.generate as generating

    model, _ = models
    made = []
    real = generating.scheduler_for

    def noting(own, *args, **kwargs):
        made.append(own.config.prediction_type)
        return real(own, *args, **kwargs)

    monkeypatch.setattr(generating, "scheduler_for", noting)
    render(model, PROMPT, [0], steps=4, hires=Hires(scale=2, model=load_model(sd2_dir)))
    assert made == ["epsilon", "v_prediction"]


@pytest.mark.parametrize("guidance", [float("nan"), 0.5])
def test_render_refuses_a_hires_guidance_it_cannot_guide_at(models, guidance):
    with pytest.raises(ConfigError, match="hires_guidance= must be a finite number of at least 1"):
        render(models[0], PROMPT, [0], steps=4, hires=Hires(scale=2, guidance=guidance))


def test_the_hires_model_loads_with_the_models_variant(sd1_dir, tmp_path):
    """--variant picks the hires model folder's fp16 weights, as --model's (a single file has none: not given it)."""
    from textinv.generate import hires_model

    model = load_model(sd1_dir)
    build_tiny_pipeline("sd1", seed=3).save_pretrained(tmp_path / "both")
    fp16 = build_tiny_pipeline("sd1", seed=4)
    fp16.save_pretrained(tmp_path / "both", variant="fp16")
    config = GenerateConfig(prompt="a photo", model=str(sd1_dir), hires_model=str(tmp_path / "both"),
                            hires_scale=2, variant="fp16")
    assert torch.equal(hires_model(config, model).unet.conv_in.weight, fp16.unet.conv_in.weight)
