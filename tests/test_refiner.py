"""generate --refiner: the web UI's Refiner (a second model draws the last steps of the same sampling)."""

import warnings

import numpy as np
import pytest
import torch

from textinv.config import GenerateConfig
from textinv.errors import ConfigError, FormatError, ModelError
from textinv.formats import LearnedEmbedding, save_embedding
from textinv.generate import generate, install_embedding, render
from textinv.models import load_model
from textinv.refiner import Refiner
from textinv.tiny import build_tiny_xl_pipeline, build_tiny_xl_refiner

PROMPT = ["a photo of a dog"]


@pytest.fixture(scope="module")
def xl_dirs(tmp_path_factory):
    """A tiny SDXL model and its tiny refiner (text_encoder_2 only, 5 time ids), saved as diffusers folders."""
    root = tmp_path_factory.mktemp("tiny-xl-refiner")
    base = build_tiny_xl_pipeline()
    base.save_pretrained(root / "base")
    build_tiny_xl_refiner(base, seed=1).save_pretrained(root / "refiner")
    return root / "base", root / "refiner"


@pytest.fixture(scope="module")
def models(xl_dirs):
    return load_model(xl_dirs[0]), load_model(xl_dirs[1], refiner=True)


def _counting(unet, seen: list):
    """Record each UNet call's time ids and text conditioning."""
    def note(module, args, kwargs):
        seen.append((kwargs["added_cond_kwargs"]["time_ids"].clone(), kwargs["encoder_hidden_states"].clone()))
    return unet.register_forward_pre_hook(note, with_kwargs=True)


def _drawn(model, refiner, switch_at=0.8, steps=10, prompts=PROMPT, negative=""):
    base_calls, refiner_calls = [], []
    hooks = [_counting(model.unet, base_calls), _counting(refiner.unet, refiner_calls)]
    try:
        images = render(model, prompts, [0], steps=steps, negative_prompt=negative,
                        refiner=Refiner(refiner, switch_at) if switch_at is not None else None)
    finally:
        for hook in hooks:
            hook.remove()
    return np.asarray(images[0], dtype=float), base_calls, refiner_calls


def test_the_refiner_draws_the_steps_past_the_switch_and_the_base_those_before(models):
    """10 Euler steps (timesteps 901, 801, ..., 1): at 0.8 the web UI switches at the first step whose training
    timestep is at most 199 (its completed ratio (999 - t) / 1000 >= 0.8): the last 2; at 0.5, the last 5."""
    model, refiner = models
    alone, calls, none = _drawn(model, refiner, None)
    assert (len(calls), len(none)) == (10, 0)
    refined, base_calls, refiner_calls = _drawn(model, refiner, 0.8)
    assert (len(base_calls), len(refiner_calls)) == (8, 2)
    assert np.abs(refined - alone).max() > 0
    _, base_calls, refiner_calls = _drawn(model, refiner, 0.5)
    assert (len(base_calls), len(refiner_calls)) == (5, 5)
    assert model.pipeline.unet is model.unet and model.unet is not refiner.unet  # (given back after the pass)


def test_a_switch_past_the_last_step_draws_as_without_a_refiner(models):
    model, refiner = models
    alone = _drawn(model, refiner, None)[0]
    late, _, refiner_calls = _drawn(model, refiner, 0.9999)
    assert refiner_calls == [] and np.array_equal(late, alone)


def test_the_refiner_is_conditioned_on_its_encoder_and_the_web_ui_s_aesthetic_scores(models):
    """Its time ids are (height, width, crop top, crop left, aesthetic score): 2.5 for the negative prompt, 6.0 for
    the prompt (the web UI's sdxl_refiner_low/high_aesthetic_score); its text conditioning is its one encoder's."""
    model, refiner = models
    _, _, refiner_calls = _drawn(model, refiner, 0.8, negative="blue")
    time_ids, hidden = refiner_calls[0]
    assert time_ids.tolist() == [[16, 16, 0, 0, 2.5], [16, 16, 0, 0, 6.0]]
    assert hidden.shape[-1] == refiner.widths[0] == 64


def _embedding(clip_l: float, clip_g: float) -> LearnedEmbedding:
    g = torch.Generator().manual_seed(0)
    return LearnedEmbedding("<rq>", {"text_encoder": clip_l * torch.randn(1, 32, generator=g),
                                     "text_encoder_2": clip_g * torch.randn(1, 64, generator=g)})


def _with_embedding(xl_dirs, emb):
    model, refiner = load_model(xl_dirs[0]), load_model(xl_dirs[1], refiner=True)
    install_embedding(model, emb)
    install_embedding(refiner, emb)
    return _drawn(model, refiner, 0.8, prompts=["a photo of <rq>"])


def test_a_learned_token_s_clip_g_vectors_condition_the_refiner_and_its_clip_l_ones_do_not(xl_dirs):
    image, _, refiner_calls = _with_embedding(xl_dirs, _embedding(1, 1))
    other_l, _, l_calls = _with_embedding(xl_dirs, _embedding(3, 1))
    other_g, _, g_calls = _with_embedding(xl_dirs, _embedding(1, 3))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(refiner_calls, l_calls))  # (the base's part differs)
    assert not np.array_equal(image, other_l)
    assert not torch.equal(refiner_calls[0][1], g_calls[0][1]) and not np.array_equal(image, other_g)


def test_an_embedding_without_clip_g_vectors_is_refused_by_the_refiner(models):
    _, refiner = models
    with pytest.raises(FormatError, match="no vectors for the SDXL refiner .* clip_g"):
        install_embedding(refiner, LearnedEmbedding("<sd1>", {"text_encoder": torch.zeros(1, 32)}))


def test_comfy_emphasis_draws_the_refiner_without_an_embedding_it_cannot_read_as_comfyui_does(xl_dirs, tmp_path):
    """ComfyUI's refiner reads a file's clip_g vectors (1280 wide) and leaves an SD 1.x embedding (768) out of its
    prompt with a warning (comfy/sd1_clip.py: shape mismatch): under --emphasis comfy the refiner draws without it
    (its ids taken out of the chunk, which closes up), the base still reading it on CLIP-L; it was refused, as the
    other modes still do, the error naming --emphasis comfy (from Python: emphasis='comfy')."""
    sd1 = LearnedEmbedding("<sd1>", {"text_encoder": 3 * torch.randn(2, 32, generator=torch.Generator().manual_seed(0))})
    model, refiner = load_model(xl_dirs[0]), load_model(xl_dirs[1], refiner=True)
    with pytest.raises(FormatError, match="no vectors for the SDXL refiner .* emphasis='comfy'"):
        install_embedding(refiner, sd1)
    with pytest.warns(UserWarning, match=r"embedding '<sd1>' has width 32 .*and fits none of .* text encoders "
                                         r"\(width 64 .*: it is left out of the prompt"):
        install_embedding(refiner, sd1, comfy=True)
    with pytest.warns(UserWarning, match="applied to the SDXL model .* width 32 alone"):
        install_embedding(model, sd1, comfy=True)

    def refiner_sees(prompt):
        seen = []
        hook = _counting(refiner.unet, seen)
        try:
            render(model, [prompt], [0], steps=10, emphasis_mode="comfy", refiner=Refiner(refiner, 0.8))
        finally:
            hook.remove()
        return seen[0][1]

    torch.testing.assert_close(refiner_sees("a photo of <sd1> <sd1>_1"), refiner_sees("a photo of"))
    save_embedding(sd1, tmp_path / "sd1.pt", "a1111")
    with warnings.catch_warnings():  # (generate --refiner: the refiner takes it as comfy reads it too)
        warnings.simplefilter("ignore")
        generate(GenerateConfig(prompt=["a photo of <sd1>"], embedding=[str(tmp_path / "sd1.pt")], n=1, steps=2,
                                model=str(xl_dirs[0]), refiner=str(xl_dirs[1]), emphasis="comfy",
                                out=str(tmp_path / "out")), progress=False)


@pytest.mark.parametrize("switch_at", [0, 1, 1.5, -0.2, float("nan")])
def test_a_switch_outside_0_to_1_is_refused_naming_the_flag(switch_at):
    with pytest.raises(ConfigError, match="refiner_switch_at=.* above 0 and below 1"):
        GenerateConfig(prompt=PROMPT, refiner="x", refiner_switch_at=switch_at).validate()
    with pytest.raises(ConfigError, match="refiner_switch_at= .* give the refiner too"):
        GenerateConfig(prompt=PROMPT, refiner_switch_at=0.5).validate()


def test_a_refiner_of_another_family_is_refused_before_anything_loads(xl_dirs, sd1_dir, tmp_path, monkeypatch):
    import textinv.generate as generating

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(generating, "load_model", no_loading)
    for model, refiner in ((sd1_dir, xl_dirs[1]), (xl_dirs[0], sd1_dir)):
        with pytest.raises(ConfigError, match=r"refiner=.* must be of the same kind"):
            generate(GenerateConfig(prompt=PROMPT, model=str(model), refiner=str(refiner), out=str(tmp_path)),
                     progress=False)


def test_an_inpainting_refiner_is_refused_before_anything_loads(sd1_dir, tmp_path, monkeypatch):
    """Its UNet reads a mask and a masked picture (9 channels), which a refiner going on with the latents has not:
    told from a folder's config or a file's keys, before the model loads (once loaded it was refused too, late)."""
    import textinv.generate as generating
    from test_models import _fake_checkpoint, _saved_with_unet_channels

    folder = _saved_with_unet_channels(tmp_path / "inpaint", 9, "StableDiffusionInpaintPipeline")
    file = _fake_checkpoint(tmp_path / "inpaint.safetensors",
                            {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)})
    monkeypatch.setattr(generating, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for refiner in (folder, file):
        with pytest.raises(ConfigError, match=f"refiner='{refiner}' is an inpainting model .* give a text-to-image"):
            generate(GenerateConfig(prompt=PROMPT, model=str(sd1_dir), refiner=str(refiner),
                                    out=str(tmp_path / "out")), progress=False)


def test_training_on_the_refiner_stays_refused(xl_dirs):
    with pytest.raises(ModelError, match="is an SDXL refiner"):
        load_model(xl_dirs[1])


def test_generate_draws_with_the_refiner_records_it_and_again_draws_it_bit_for_bit(xl_dirs, tmp_path, monkeypatch):
    """The learned token goes into both models (the refiner: its clip_g); the picture's text names the refiner as
    the web UI does (Refiner, Refiner switch at) and its record holds it, so --again draws the same picture."""
    from PIL import Image

    from textinv.cli import main
    from textinv.formats import save_embedding

    save_embedding(_embedding(1, 1), tmp_path / "rq.safetensors", "sdxl")
    common = ["generate", "--model", str(xl_dirs[0]), "--embedding", str(tmp_path / "rq.safetensors"), "--prompt",
              "a photo of <rq>", "-n", "2", "--steps", "6", "--metadata", "full"]
    assert main(common + ["--out", str(tmp_path / "base")]) == 0
    assert main(common + ["--refiner", str(xl_dirs[1]), "--refiner-switch-at", "0.5",
                          "--out", str(tmp_path / "refined")]) == 0
    name = "000-a-photo-of-rq-s1.png"
    picture = tmp_path / "refined" / name
    text = Image.open(picture).text
    assert f"Refiner: {xl_dirs[1].name}, Refiner switch at: 0.5" in text["parameters"]
    assert not np.array_equal(_pixels(picture), _pixels(tmp_path / "base" / name))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--again", str(picture), "--out", "again"]) == 0
    assert np.array_equal(_pixels(tmp_path / "again" / name), _pixels(picture))


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def test_again_reads_a_web_ui_pictures_refiner_and_asks_for_its_model(xl_dirs, tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 4, Sampler: Euler, Seed: 3, Size: 16x16, Model: sd_xl_base_1.0, "
                                "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.7")
    Image.new("RGB", (8, 8)).save(tmp_path / "webui.png", pnginfo=info)
    with pytest.raises(ConfigError, match=r"with the Refiner sd_xl_refiner_1.0 \[7440042bbd\].*give it with "
                                          r"--refiner"):
        again_config(tmp_path / "webui.png", {"model": str(xl_dirs[0])})
    with pytest.warns(UserWarning, match="not applied"):  # (its Model, as ever)
        config, _ = again_config(tmp_path / "webui.png", {"model": str(xl_dirs[0]), "refiner": str(xl_dirs[1])})
    assert (config.refiner, config.refiner_switch_at) == (str(xl_dirs[1]), 0.7)


def test_prompt_editing_goes_on_in_the_refiner_with_its_own_encoding(models):
    """[from:to:0.7] over 10 steps draws 'from' for steps 0-7 and 'to' for 8-9: the refiner (steps 5-9 at 0.5)
    reads its own encoding of each, switching where the base would have."""
    model, refiner = models
    _, base_calls, refiner_calls = _drawn(model, refiner, 0.5, prompts=["a photo of [a dog:a cat:0.7]"])
    hidden = [h for _, h in refiner_calls]
    assert len(hidden) == 5 and hidden[0].shape[-1] == 64
    assert torch.equal(hidden[0], hidden[2]) and torch.equal(hidden[3], hidden[4])
    assert not torch.equal(hidden[2], hidden[3])


def test_with_the_hires_fix_the_refiner_draws_the_last_steps_of_the_second_pass(models):
    """The web UI's default (hires_fix_refiner_pass: second pass): the first pass is the base's alone."""
    from textinv.refine import Hires

    model, refiner = models
    base_calls, refiner_calls = [], []
    hooks = [_counting(model.unet, base_calls), _counting(refiner.unet, refiner_calls)]
    seen = []
    hooks.append(refiner.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1])))
    try:
        render(model, PROMPT, [0], steps=10, hires=Hires(scale=2), refiner=Refiner(refiner, 0.8))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(base_calls) > 10 and refiner_calls and set(seen) == {16}  # (the second pass's latents: 16 x 16)


def test_an_sd1_model_takes_an_sd1_refiner_and_refuses_one_that_predicts_otherwise(sd1_dir, sd2_dir, tmp_path):
    """The web UI takes any checkpoint as refiner: an SD 1.x one continues an SD 1.x model's latents; the tiny SD
    2.x model predicts v, which the sampler would read as the SD 1.x model's epsilon."""
    from textinv.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1", seed=3).save_pretrained(tmp_path / "other")
    model, other = load_model(sd1_dir), load_model(tmp_path / "other", refiner=True)
    base_calls, refiner_calls = [], []
    hooks = [model.unet.register_forward_pre_hook(lambda *a: base_calls.append(1)),
             other.unet.register_forward_pre_hook(lambda *a: refiner_calls.append(1))]
    try:
        refined = render(model, PROMPT, [0], steps=10, refiner=Refiner(other, 0.5))
    finally:
        for hook in hooks:
            hook.remove()
    assert (len(base_calls), len(refiner_calls)) == (5, 5)
    assert not np.array_equal(np.asarray(refined[0]), np.asarray(render(model, PROMPT, [0], steps=10)[0]))
    with pytest.raises(ConfigError, match="predicts v_prediction, model=.* epsilon"):
        render(model, PROMPT, [0], steps=10, refiner=Refiner(load_model(sd2_dir, refiner=True), 0.5))


def test_a_multistep_sampler_goes_on_with_the_base_steps_history(models):
    """DPM++ 2M's second-order step reads the previous step's output: at the refiner's first step it is the base's,
    as in the web UI's k-diffusion loop (one sampler run, the model swapped under it)."""
    model, refiner = models
    history = []

    def note(module, args):
        if not history:
            history.append([o is not None for o in model.pipeline.scheduler.model_outputs])

    hook = refiner.unet.register_forward_pre_hook(note)
    try:
        render(model, PROMPT, [0], steps=10, sampler="dpm++2m", refiner=Refiner(refiner, 0.5))
    finally:
        hook.remove()
    assert history == [[True, True]]


def test_inpainting_holds_the_refiners_steps_to_the_kept_part_too(models):
    """--mask's blend (the kept part held to the picture at every UNet call) hooks the refiner's UNet as well."""
    from PIL import Image

    from textinv.inpaint import Inpaint

    model, refiner = models
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    hooked = []
    note = refiner.unet.register_forward_pre_hook(lambda m, a: hooked.append(len(refiner.unet._forward_hooks)))
    try:
        render(model, PROMPT, [0], steps=10, start=[Image.new("RGB", (16, 16), "red")], denoise=0.9,
               inpaint=Inpaint(mask), refiner=Refiner(refiner, 0.5))
    finally:
        note.remove()
    assert hooked and all(n >= 1 for n in hooked) and not refiner.unet._forward_hooks


def test_composable_diffusion_goes_on_in_the_refiner(models):
    """A prompt with AND: the refiner's UNet reads the negative and each sub-prompt (1 + 2 rows), as the base's does."""
    model, refiner = models
    rows = {"base": [], "refiner": []}
    hooks = [unet.register_forward_hook(lambda m, a, k, out, seen=seen: seen.append(k["encoder_hidden_states"].shape),
                                        with_kwargs=True)
             for unet, seen in ((model.unet, rows["base"]), (refiner.unet, rows["refiner"]))]
    try:
        render(model, ["a dog AND a cat"], [0], steps=10, refiner=Refiner(refiner, 0.8))
    finally:
        for hook in hooks:
            hook.remove()
    assert [shape[0] for shape in rows["base"]] == [3] * 8 and [shape[0] for shape in rows["refiner"]] == [3] * 2
    assert rows["refiner"][0][-1] == 64


def test_a_shareable_picture_names_its_refiner_and_again_asks_where_it_is(xl_dirs, tmp_path):
    from textinv.again import again_config
    from textinv.cli import main

    assert main(["generate", "--model", str(xl_dirs[0]), "--refiner", str(xl_dirs[1]), "--prompt", "a dog", "-n", "1",
                 "--steps", "4", "--metadata", "shareable", "--out", str(tmp_path)]) == 0
    (picture,) = tmp_path.glob("*.png")
    with pytest.raises(ConfigError, match=f"--refiner with where {xl_dirs[1].name} is"):
        again_config(picture, {"model": str(xl_dirs[0])})
    config, _ = again_config(picture, {"model": str(xl_dirs[0]), "refiner": str(xl_dirs[1])})
    assert (config.refiner, config.switch_at()) == (str(xl_dirs[1]), 0.8)


def _counted_loads(monkeypatch) -> list[tuple[str, bool]]:
    """generate's model loads from now on, each as (source, whether as a refiner), in the list returned."""
    import textinv.generate as generating

    loads = []
    real = generating.load_model

    def counting(source, *args, **kwargs):
        loads.append((str(source), kwargs.get("refiner", False)))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(generating, "load_model", counting)
    return loads


def test_an_xyz_plot_loads_the_refiner_once_for_all_its_cells(xl_dirs, tmp_path, monkeypatch):
    """The plot draws each cell with generate on the one model it loaded; the refiner is loaded once too (an SDXL
    refiner is gigabytes: read again for each cell, a plot of 12 cells would read it 12 times)."""
    loads = _counted_loads(monkeypatch)
    generate(GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), refiner=str(xl_dirs[1]), n=1, steps=4,
                            x="guidance=3,7", y="seed=1,2", out=str(tmp_path)), progress=False)
    assert [load for load in loads if load[1]] == [(str(xl_dirs[1]), True)]
    assert len(list(tmp_path.glob("*.png"))) == 5  # (the grid and its 4 cells)


def test_a_refiner_that_is_missing_or_not_a_model_is_said_of_refiner_before_the_model_loads(xl_dirs, tmp_path,
                                                                                             monkeypatch):
    """models' messages name --model; for --refiner's file they name --refiner, before anything loads."""
    import textinv.generate as generating
    from textinv.formats import save_embedding

    monkeypatch.setattr(generating, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    save_embedding(_embedding(1, 1), tmp_path / "rq.safetensors", "sdxl")
    for refiner, said in ((tmp_path / "missing.safetensors", "does not exist"),
                          (tmp_path / "rq.safetensors", "embedding, not a model: --refiner takes")):
        with pytest.raises(ModelError, match=f"^--refiner {refiner}: .*{said}") as caught:
            generate(GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), refiner=str(refiner),
                                    out=str(tmp_path / "out")), progress=False)
        assert "--model" not in str(caught.value)


def test_the_model_itself_as_refiner_is_refused_before_anything_loads(xl_dirs, tmp_path, monkeypatch):
    """The web UI draws without a refiner when its Refiner is the checkpoint loaded (and writes no Refiner); here it
    would load the model a second time to draw the same steps, so it is refused, however the path is written."""
    import textinv.generate as generating

    monkeypatch.setattr(generating, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.chdir(xl_dirs[0].parent)
    with pytest.raises(ConfigError, match=r"refiner='\./base/' is model=.*; leave refiner= out"):
        generate(GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), refiner="./base/", out=str(tmp_path)),
                 progress=False)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim"])
def test_a_pass_that_starts_past_the_switch_is_drawn_by_the_refiner_all_through(models, sampler):
    """The hires fix's second pass at --denoise 0.15 starts past a switch at 0.8, as an img2img pass at 0.1 does
    past one at 0.5: the web UI's refiner takes over before that pass's first model call, so the refiner's UNet
    draws every step of it, conditioned as the refiner (its encoder, 5 time ids ending in the aesthetic score)."""
    from PIL import Image

    from textinv.refine import Hires

    model, refiner = models
    runs = {"text": ([], [])}
    hook = _counting(model.unet, runs["text"][0])
    try:
        render(model, PROMPT, [0], steps=10, sampler=sampler)  # (the hires fix's first pass)
    finally:
        hook.remove()
    for name, drawing in (("hires", dict(hires=Hires(scale=2, denoise=0.15), switch_at=0.8)),
                          ("img2img", dict(start=[Image.new("RGB", (16, 16), "red")], denoise=0.1, switch_at=0.5))):
        base_calls, refiner_calls = [], []
        hooks = [_counting(model.unet, base_calls), _counting(refiner.unet, refiner_calls)]
        switch_at = drawing.pop("switch_at")
        try:
            refined = render(model, PROMPT, [0], steps=10, sampler=sampler, refiner=Refiner(refiner, switch_at),
                             **drawing)
        finally:
            for hook in hooks:
                hook.remove()
        alone = render(model, PROMPT, [0], steps=10, sampler=sampler, **drawing)
        assert not np.array_equal(np.asarray(refined[0]), np.asarray(alone[0]))
        runs[name] = (base_calls, refiner_calls)
    (hires_base, hires_refiner), (img2img_base, img2img_refiner) = runs["hires"], runs["img2img"]
    assert len(hires_base) == len(runs["text"][0]) and img2img_base == []  # (the base drew the first pass alone)
    assert hires_refiner and img2img_refiner
    assert {ids.shape[-1] for ids, _ in hires_refiner} == {5}
    assert {tuple(ids[:, -1].tolist()) for ids, _ in hires_refiner} == {(2.5, 6.0)}
    assert {hidden.shape[-1] for _, hidden in hires_refiner} == {refiner.widths[0]}


def test_a_text_to_image_pass_that_starts_past_the_switch_is_refused_before_anything_is_drawn(models):
    """A text-to-image pass hands on only after its first step; a switch at 0.05 falls at the first of the tiny
    model's 10 Euler steps (its scheduler's first noise level lies below the top of the training schedule)."""
    model, refiner = models
    calls = []
    hook = model.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="refiner_switch_at=0.05 falls at the first step of the text-to-image"):
            render(model, PROMPT, [0], steps=10, sampler="euler", refiner=Refiner(refiner, 0.05))
    finally:
        hook.remove()
    assert calls == []


def test_an_xyz_plot_takes_a_refiner_passed_in_as_it_takes_the_model(models, xl_dirs, tmp_path, monkeypatch):
    import textinv.generate as generating

    model, refiner = models
    monkeypatch.setattr(generating, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    generate(GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), refiner=str(xl_dirs[1]), n=1, steps=4,
                            x="guidance=3,7", out=str(tmp_path)), model, progress=False, refiner=refiner)
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_the_refiner_loads_with_the_model_s_variant_and_single_file_config(sd1_dir, tmp_path, monkeypatch):
    """--variant picks the refiner folder's fp16 weights, as --model's; an SD 1.x refiner's single file loads offline
    with --single-file-config, as --model's does (without it its configs are fetched from the hub)."""
    from safetensors.torch import save_file
    from test_models import _ldm_state_dict
    from textinv.generate import refiner_model
    from textinv.tiny import build_tiny_pipeline

    model = load_model(sd1_dir)
    build_tiny_pipeline("sd1", seed=3).save_pretrained(tmp_path / "both")
    fp16 = build_tiny_pipeline("sd1", seed=4)
    fp16.save_pretrained(tmp_path / "both", variant="fp16")
    config = GenerateConfig(prompt=PROMPT, model=str(sd1_dir), refiner=str(tmp_path / "both"), variant="fp16")
    assert torch.equal(refiner_model(config, model).model.unet.conv_in.weight, fp16.unet.conv_in.weight)
    theirs = build_tiny_pipeline("sd1", seed=5)
    save_file(_ldm_state_dict(theirs), tmp_path / "refiner.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = GenerateConfig(prompt=PROMPT, model=str(sd1_dir), refiner=str(tmp_path / "refiner.safetensors"),
                            single_file_config=str(sd1_dir))
    assert torch.equal(refiner_model(config, model).model.unet.conv_in.weight, theirs.unet.conv_in.weight)


def test_the_refiner_loads_with_the_model_s_vae(xl_dirs, tmp_path):
    """The web UI's VAE setting holds for every checkpoint, the refiner too (it decodes what it took over in);
    --revision, a commit of --model's repository, does not."""
    from dataclasses import replace

    from textinv.generate import _refiner_settings, refiner_model
    from textinv.tiny import _tiny_vae

    torch.manual_seed(7)
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    model = load_model(xl_dirs[0], vae=tmp_path / "vae")
    config = GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), refiner=str(xl_dirs[1]), vae=str(tmp_path / "vae"))
    refiner = refiner_model(config, model).model
    assert torch.equal(refiner.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    own = load_model(xl_dirs[1], refiner=True).vae
    assert not torch.equal(own.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    assert "revision" not in _refiner_settings(replace(config, revision="v1.0"))


def test_the_refiner_s_vae_decodes_a_pass_it_took_over_in_and_the_model_s_one_it_did_not(models):
    """The web UI decodes with the model loaded after sampling: the refiner, once it has taken over."""
    from PIL import Image

    model, refiner = models
    decoded = []
    hooks = [model.vae.decoder.register_forward_pre_hook(lambda *a: decoded.append("model")),
             refiner.vae.decoder.register_forward_pre_hook(lambda *a: decoded.append("refiner"))]
    try:
        for switch_at, drawing in ((0.5, {}), (0.9999, {}),  # (a hand-on; none)
                                   (0.5, dict(start=[Image.new("RGB", (16, 16), "red")], denoise=0.1))):  # (all)
            render(model, PROMPT, [0], steps=4, refiner=Refiner(refiner, switch_at), **drawing)
    finally:
        for hook in hooks:
            hook.remove()
    assert decoded == ["refiner", "model", "refiner"]
    assert model.pipeline.vae is model.vae  # (given back after the pass)


def test_a_picture_the_refiner_did_not_take_over_in_names_no_refiner_and_again_draws_it_bit_for_bit(
        xl_dirs, tmp_path, monkeypatch):
    """The web UI writes Refiner and Refiner switch at when it switches (sd_samplers_common.apply_refiner): at 0.9999
    no step of 6 reaches the switch, so the picture's text names none; its record still holds --refiner."""
    import json

    from PIL import Image

    from textinv.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", str(xl_dirs[0]), "--prompt", "a photo of a dog", "-n", "1", "--steps", "6",
                 "--refiner", str(xl_dirs[1]), "--refiner-switch-at", "0.9999", "--metadata", "full",
                 "--out", "late"]) == 0
    picture = next((tmp_path / "late").glob("*.png"))
    text = Image.open(picture).text
    assert "Refiner" not in text["parameters"] and "refiner" not in text
    assert json.loads(text["textinv_settings"])["settings"]["refiner"]
    assert main(["generate", "--again", str(picture), "--out", "again"]) == 0
    assert np.array_equal(_pixels(tmp_path / "again" / picture.name), _pixels(picture))


def test_an_xyz_plot_varies_the_refiner_and_its_switch_loading_each_refiner_once(xl_dirs, tmp_path, monkeypatch):
    """The web UI's Refiner checkpoint (None: no refiner) and Refiner switch at axes. Along x, the fastest axis, the
    refiners alternate between cells: each is loaded once all the same, its cells drawn together."""
    import json

    from PIL import Image

    from textinv import xyz

    other = tmp_path / "other-refiner"
    build_tiny_xl_refiner(build_tiny_xl_pipeline(), seed=2).save_pretrained(other)
    loads = _counted_loads(monkeypatch)
    config = GenerateConfig(prompt=PROMPT, model=str(xl_dirs[0]), n=1, steps=4, metadata="full", out=str(tmp_path),
                            x=f"refiner={xl_dirs[1]},None,{other}", y="refiner switch at=0.5,0.9999")
    paths = generate(config, progress=False)
    assert [load for load in loads if load[1]] == [(str(xl_dirs[1]), True), (str(other), True)]
    cells = [np.asarray(Image.open(p)) for p in paths[1:]]  # (x fastest: r1, None, r2 at 0.5, then at 0.9999)
    assert np.array_equal(cells[1], cells[4]) and np.array_equal(cells[3], cells[4])  # (None; a switch never reached)
    assert not np.array_equal(cells[0], cells[1]) and not np.array_equal(cells[0], cells[2])
    said = [Image.open(p).text["parameters"] for p in paths[1:]]
    assert f"Refiner: {xl_dirs[1].name}, Refiner switch at: 0.5" in said[0]
    assert "Refiner" not in said[1] and "Refiner" not in said[3]
    axis = xyz.read_axis("x", f"refiner=none,{other}", config)
    assert axis.labels == ["Refiner checkpoint: None", "Refiner checkpoint: other-refiner"]
    # the grid's record names the refiners by their paths under --metadata full, by their names where shared
    record = json.loads(Image.open(paths[0]).text["textinv_settings"])
    assert record["settings"]["x"] == f"refiner={xl_dirs[1]},None,{other}"
    assert xyz._axis_setting(axis, full=False) == "refiner=None,other-refiner"


def test_the_sdxl_refiner_s_single_file_takes_its_own_configs_not_single_file_config(tmp_path):
    """--single-file-config is a folder of --model's kind: the SDXL refiner's file (another UNet, one encoder) would
    be built from the base's configs, so it goes to a refiner file of the model's kind only."""
    from safetensors.torch import save_file
    from textinv.generate import _refiner_settings

    refiner = tmp_path / "refiner.safetensors"
    keys = {"model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3),
            "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, refiner)
    config = GenerateConfig(prompt=PROMPT, refiner=str(refiner), single_file_config=str(tmp_path), variant="fp16")
    assert _refiner_settings(config) == {"vae": None}  # (the --vae it takes as any refiner does: none here)


def _web_ui_switch(made, switch_at: float) -> int:
    """The model call the web UI's refiner takes over at (sd_samplers_common.apply_refiner) in a DPM2, DPM2 a or
    DPM++ 2S a pass on the step sigmas `made` holds: each call's sigma as k-diffusion calls the model (a step's
    second call at its midpoint: sqrt(sigma sigma_next) for sample_dpm_2, sqrt(sigma sigma_down) for the ancestral
    ones, sigma_down that of get_ancestral_step at eta 1), the training timestep t nearest it, the first call whose
    (T - 1 - t) / T >= switch_at; the calls if none is."""
    alphas = made.alphas_cumprod.double()
    table = ((1 - alphas) / alphas) ** 0.5
    steps = [float(s) for s in torch.cat([made.sigmas[:1], made.sigmas[1::2]])]
    steps = steps[:steps.index(0.0) + 1]
    ancestral = hasattr(made, "sigmas_up")
    calls = []
    for sigma, after in zip(steps[:-1], steps[1:]):
        calls.append(sigma)
        if after > 0:
            up = min(after, (after ** 2 * (sigma ** 2 - after ** 2) / sigma ** 2) ** 0.5)
            calls.append((sigma * ((after ** 2 - up ** 2) ** 0.5 if ancestral else after)) ** 0.5)
    assert len(calls) == len(made.timesteps)
    count = len(table)
    levels = [int(torch.argmin((table - sigma).abs())) for sigma in calls]
    return next((k for k, t in enumerate(levels) if (count - 1 - t) / count >= switch_at), len(calls))


@pytest.mark.parametrize("sampler", ["dpm2", "dpm2_karras", "dpm2_a", "dpm++2s_a_karras"])
def test_the_refiner_switch_of_a_dpm2_pass_reads_its_midpoint_calls_noise_level(sampler):
    """DPM2's second call of a step is at the step's midpoint, sqrt(sigma sigma_next), where diffusers' DPM2 table of
    sigmas holds sigma_next: read from that table, the midpoint call was found past a switch it has not reached, one
    call early. The switch is the web UI's at every Switch at (DPM2 a's and DPM++ 2S a's midpoint is sigma_next)."""
    from diffusers import DDIMScheduler

    from textinv.refiner import _switch_iteration
    from textinv.samplers import scheduler_for

    own = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=False, timestep_spacing="leading", steps_offset=1)
    made = scheduler_for(own, sampler)
    for steps in (7, 20):
        made.set_timesteps(steps)
        calls = len(made.timesteps)
        for switch_at in np.arange(0.02, 1.0, 0.02):
            assert _switch_iteration(made, calls, switch_at) == _web_ui_switch(made, switch_at), (steps, switch_at)


def test_a_dpm2_pass_hands_on_to_the_refiner_at_the_web_uis_call(models):
    """7 DPM2 steps (13 model calls): the base draws the calls before the web UI's switch, the refiner the rest."""
    from textinv.samplers import scheduler_for

    model, refiner = models
    made = scheduler_for(model.pipeline.scheduler, "dpm2")
    made.set_timesteps(7)
    switch = _web_ui_switch(made, 0.2)
    base_calls, refiner_calls = [], []
    hooks = [_counting(model.unet, base_calls), _counting(refiner.unet, refiner_calls)]
    try:
        render(model, PROMPT, [0], steps=7, sampler="dpm2", refiner=Refiner(refiner, 0.2))
    finally:
        for hook in hooks:
            hook.remove()
    assert (len(base_calls), len(refiner_calls)) == (switch, 13 - switch)
