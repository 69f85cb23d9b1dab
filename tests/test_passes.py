"""`generate --init-image` (img2img) and the hires fix: the second passes `refine` and `generate.render` draw."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conftest import again_warned, fresh_model, recorded_arguments
from textinv import refine
from textinv.config import GenerateConfig
from textinv.errors import ConfigError
from textinv.formats import RECORD_KEY
from textinv.generate import generate, render
from textinv.models import load_model
from textinv.refine import Hires


def test_the_hires_sizes_are_the_web_uis():
    # by a scale; to one side (the other at the first pass's proportions); to both (enlarged to cover, then cropped)
    assert refine.hires_size(512, 768, 2.0, None, None) == ((1024, 1536), (0, 0))
    assert refine.hires_size(512, 768, 1.7, None, None) == ((870, 1305), (0, 0))
    assert refine.hires_size(512, 768, None, 1024, None) == ((1024, 1536), (0, 0))
    assert refine.hires_size(512, 768, None, None, 1024) == ((682, 1024), (0, 0))
    assert refine.hires_size(512, 768, None, 1024, 1024) == ((1024, 1536), (0, 64))  # (taller: rows cut)
    assert refine.hires_size(768, 512, None, 1024, 1024) == ((1536, 1024), (64, 0))
    # whole latents, less the crop
    assert refine.final_size((870, 1305), (0, 0)) == (864, 1304)
    assert refine.final_size((1024, 1536), (0, 64)) == (1024, 1024)
    latents = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    assert refine.cropped(latents, (3, 0)).shape == (1, 2, 8, 5)  # one column off the left, two off the right
    assert torch.equal(refine.cropped(latents, (3, 0)), latents[:, :, :, 1:6])


def test_a_pass_runs_the_web_uis_steps_of_the_web_uis_schedule():
    assert refine.pass_steps(20, 0.7, hires=True) == (28, 20)  # all hires steps, of a longer schedule
    assert refine.pass_steps(20, 1.0, hires=True) == (20, 20)
    assert refine.pass_steps(20, 0.75, hires=False) == (20, 16)  # int(d x steps) + 1 of the steps
    assert refine.pass_steps(20, 1.0, hires=False) == (20, 20)
    assert refine.pass_steps(10, 0.01, hires=False) == (10, 1)
    for schedule in range(1, 200):  # the strength diffusers' pipelines take for that count, rounding aside
        for run in range(1, schedule + 1):
            assert min(int(schedule * refine.strength(schedule, run)), schedule) == run


def test_an_init_pictures_size_keeps_its_proportions_unless_both_sides_are_given():
    assert refine.start_size((4000, 3000), None, None, 512) == (584, 440)  # the model's area, its proportions
    assert refine.start_size((3000, 4000), 384, None, 512) == (384, 512)
    assert refine.start_size((3000, 4000), None, 640, 512) == (480, 640)
    assert refine.start_size((3000, 4000), 512, 512, 512) == (512, 512)  # (cropped to them when drawn)


def _unet_calls(model):
    """The UNet's calls, each as (batch rows, timestep, its encoder_hidden_states)."""
    calls = []

    def record(module, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        calls.append((args[0].shape, float(args[1].flatten()[0]), hidden.detach().clone()))

    model.unet.register_forward_pre_hook(record, with_kwargs=True)
    return calls


def test_the_hires_fix_draws_the_first_pass_then_its_steps_at_the_larger_size(sd1_dir):
    model = load_model(sd1_dir, dtype=torch.bfloat16)
    dtypes = {name: module.dtype for name, module in model.pipeline.components.items() if hasattr(module, "dtype")}
    calls = _unet_calls(model)
    pictures = render(model, ["a dog"], [3], steps=3, width=24, height=16, sampler="ddim",
                      hires=Hires(scale=2, steps=5, denoise=0.5))
    assert pictures[0].size == (48, 32)
    # the img2img pipeline shares the modules as they were (diffusers' from_pipe would cast them to float32)
    assert {name: module.dtype for name, module in model.pipeline.components.items()
            if hasattr(module, "dtype")} == dtypes
    factor = model.pipeline.vae_scale_factor
    sizes = [shape[-2:] for shape, _, _ in calls]
    assert sizes == [(16 // factor, 24 // factor)] * 3 + [(32 // factor, 48 // factor)] * 5
    # the second pass runs its 5 steps as the last 5 of a schedule of 10 (DDIM: from timestep 500 or so down)
    second = [t for _, t, _ in calls[3:]]
    assert second == sorted(second, reverse=True) and 400 <= second[0] <= 600 and second[-1] < 100
    # the web UI's "Hires steps: 0": as many as the first pass's
    calls.clear()
    render(model, ["a dog"], [3], steps=3, width=24, height=16, sampler="ddim", hires=Hires(scale=2, denoise=0.5))
    assert len(calls) == 3 + 3


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_a_seed_draws_the_same_hires_picture_at_any_batch_size(sd1_dir, upscaler):
    model = fresh_model(sd1_dir)
    hires = Hires(width=32, height=24, steps=2, upscaler=upscaler)  # (24x24 enlarged to 32x32, 1 latent row cut)
    together = render(model, ["a dog", "a dog"], [5, 6], steps=2, width=24, hires=hires)
    alone = render(model, ["a dog"], [6], steps=2, width=24, hires=hires)
    assert together[1].size == alone[0].size == (32, 24)
    a, b = (np.asarray(p).astype(int) for p in (alone[0], together[1]))
    assert np.abs(a - b).max() <= 1
    assert np.abs(np.asarray(together[0]).astype(int) - b).max() > 10


def test_prompt_editing_in_a_second_pass_switches_halfway_through_the_steps_it_runs(sd1_dir):
    """The pass runs the last steps of its schedule: the switch is counted over the steps run, not the schedule's.
    As in the web UI (1.6 on), 1.5 is halfway through the second pass (0.5 is the first pass's half, done by then)."""
    model = fresh_model(sd1_dir)
    calls = _unet_calls(model)
    render(model, ["a [cat:dog:1.5] on grass"], [1], steps=2, width=16, sampler="ddim",
           hires=Hires(scale=2, steps=4, denoise=0.5))
    hidden = [h[-1] for _, _, h in calls[2:]]  # (the prompt's row; the negative's is the first)
    # the edit at step 2 of 4 (counted from 0): the web UI switches after 3 steps
    assert torch.equal(hidden[0], hidden[1]) and torch.equal(hidden[1], hidden[2])
    assert not torch.equal(hidden[2], hidden[3])
    calls.clear()
    render(model, ["a dog on grass"], [1], steps=1, width=16, sampler="ddim")
    assert torch.allclose(calls[0][2][-1], hidden[3])


def test_an_init_picture_is_redrawn_more_the_higher_the_denoise():
    """On the bundled model (a VAE that keeps a picture): a little denoise keeps the picture, a lot redraws it."""
    model = load_model("shapes")
    picture = render(model, ["a red circle on a blue background"], [0], steps=8)[0]
    calls = _unet_calls(model)

    def off(denoise, steps=10):
        calls.clear()
        drawn = render(model, ["a green square on a yellow background"], [1], steps=steps, start=[picture],
                       denoise=denoise, sampler="ddim")[0]
        assert drawn.size == picture.size
        return np.abs(np.asarray(drawn).astype(float) - np.asarray(picture)).mean()

    light, heavy = off(0.15), off(0.95)
    assert len(calls) == int(0.95 * 10) + 1
    assert light < 12 < 25 < heavy


def _picture(path, parameters):
    info = PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_generate_writes_the_hires_fix_as_the_web_ui_and_again_draws_it_again(sd1_dir, tmp_path):
    from textinv.again import again_config

    config = GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                            out=str(tmp_path / "a"), hires_scale=1.5, hires_upscaler="Latent (nearest)",
                            hires_sampler="euler_a")
    first = generate(config, progress=False)[0]
    text = Image.open(first).text
    assert ("Size: 16x16, Model: " in text["parameters"] and "Denoising strength: 0.7, Hires upscale: 1.5, Hires "
            "upscaler: Latent (nearest), Hires sampler: Euler a" in text["parameters"])
    settings = json.loads(text[RECORD_KEY])["settings"]
    assert (settings["hires_scale"], settings["hires_upscaler"], settings["denoise"]) == (1.5, "latent-nearest", 0.7)
    again, _ = again_config(first, {"out": str(tmp_path / "b"), "model": str(sd1_dir)})
    assert (again.hires_scale, again.hires_upscaler, again.hires_sampler, again.width) == (1.5, "latent-nearest",
                                                                                           "euler_a", 16)
    second = generate(again, progress=False)[0]
    assert Image.open(second).size == (24, 24)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def _web_ui_hires_sampler(fields: dict) -> str | None:
    """textinv's name for the sampler the web UI redraws a picture's hires pass with, reading its text as its
    get_hr_sampler_and_scheduler does: the Hires sampler, on the Hires schedule type, else the first pass's Schedule
    type, else Automatic (the sampler's own)."""
    from textinv.samplers import from_webui

    schedule = fields.get("Hires schedule type") or fields.get("Schedule type") or "Automatic"
    return from_webui(fields["Hires sampler"], schedule)


def test_the_hires_sampler_is_written_so_the_web_ui_redraws_its_pass_on_the_same_schedule():
    """For every first pass and hires sampler the web UI has, the text names the hires pass's schedule where the web UI
    would otherwise take another: Euler on the model's spacing after DPM++ 2M Karras says "Uniform" (the web UI read
    the first pass's Karras for it). The Hires schedule type is written only where it differs from the Schedule
    type, as the web UI writes it."""
    from textinv.samplers import SAMPLERS, webui_hires_names, webui_names

    assert webui_hires_names("euler", "dpm++2m_karras") == ("Euler", "Uniform")
    for first in SAMPLERS:
        written = webui_names(first) or (None, None)
        for name in SAMPLERS:
            names = webui_hires_names(name, first)
            if names is None:
                assert webui_names(name) is None
                continue
            fields = {"Sampler": written[0], "Schedule type": written[1], "Hires sampler": names[0],
                      "Hires schedule type": names[1]}
            assert _web_ui_hires_sampler(fields) == name, (first, name)
            assert names[1] is None or names[1] != written[1], (first, name)


def test_generate_writes_a_hires_sampler_on_the_models_spacing_after_a_karras_first_pass(sd1_dir, tmp_path):
    from textinv.again import again_config

    config = GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                            out=str(tmp_path / "a"), sampler="dpm++2m_karras", hires_scale=1.5, hires_sampler="euler")
    path = generate(config, progress=False)[0]
    text = Image.open(path).text["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text
    assert "Hires sampler: Euler, Hires schedule type: Uniform" in text
    fields = dict(part.split(": ", 1) for part in text.splitlines()[-1].split(", ") if ": " in part)
    assert _web_ui_hires_sampler(fields) == "euler"
    assert again_config(path, {"out": str(tmp_path / "b"), "model": str(sd1_dir)})[0].hires_sampler == "euler"


def test_again_reads_a_web_ui_pictures_hires_fix(sd1_dir, tmp_path):
    from textinv.again import again_config

    flags = {"model": str(sd1_dir)}
    path = _picture(tmp_path / "w.png", "a cat\nSteps: 20, Sampler: Euler a, Seed: 3, Size: 512x768, Denoising "
                                        "strength: 0.55, Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent "
                                        "(bicubic antialiased), Hires sampler: DPM++ 2M, Hires schedule type: Karras")
    config, _ = again_config(path, flags)
    assert (config.denoise, config.hires_scale, config.hires_steps) == (0.55, 2.0, 12)
    assert (config.hires_upscaler, config.hires_sampler) == ("latent-bicubic-antialiased", "dpm++2m_karras")
    path = _picture(tmp_path / "r.png", "a cat\nSteps: 20, Seed: 3, Size: 512x768, Denoising strength: 0.4, Hires "
                                        "resize: 1024x0, Hires upscaler: R-ESRGAN 4x+")
    with pytest.warns(UserWarning, match=r"'R-ESRGAN 4x\+', an upscaling network textinv does not run: it is "
                                         r"enlarged with Lanczos"):
        config, _ = again_config(path, flags)
    assert (config.hires_width, config.hires_height, config.hires_upscaler) == (1024, None, "lanczos")
    path = _picture(tmp_path / "s.png", "a cat\nSteps: 20, Seed: 3, Size: 64x64, Denoising strength: 0.4, Hires "
                                        "upscale: 2, Hires sampler: DPM fast")
    with pytest.raises(ConfigError, match="hires fix with the web UI's sampler 'DPM fast'.*--hires-sampler"):
        again_config(path, flags)
    assert again_config(path, {**flags, "hires_sampler": "euler"})[0].hires_sampler == "euler"


def test_again_reads_a_web_ui_hires_sampler_with_no_schedule_written_on_the_first_passs(sd1_dir, tmp_path):
    """The web UI writes a Hires schedule type only where it differs from the first pass's Schedule type: a hires
    sampler with a schedule of its own (Restart, DPM++ 2S a, DPM++ 2M: Automatic is Karras) and none written drew on
    the first pass's, Exponential here (it was read as Karras or as the model's spacing). Euler has none of its own:
    the first pass's Automatic gave it none, so it stays plain. A first pass's schedule textinv lacks is named where
    the hires sampler is refused on it."""
    from textinv.again import again_config

    for hires_sampler, ours in (("Restart", "restart_exponential"), ("DPM++ 2S a", "dpm++2s_a_exponential"),
                                ("DPM++ 2M", "dpm++2m_exponential"), ("DPM++ 2M Karras", "dpm++2m_karras"),
                                ("Euler", "euler")):
        path = _picture(tmp_path / "w.png", f"a cat\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Exponential, "
                                            f"Seed: 3, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Hires "
                                            f"sampler: {hires_sampler}")
        assert again_config(path, {"model": str(sd1_dir)})[0].hires_sampler == ours, hires_sampler
    path = _picture(tmp_path / "w.png", "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Align Your Steps, Seed: "
                                        "3, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Hires sampler: "
                                        "DPM++ 2S a")
    with pytest.raises(ConfigError, match="hires fix with the web UI's sampler 'DPM\\+\\+ 2S a, Schedule type Align "
                                          "Your Steps', which textinv does not have"):
        again_config(path, {"model": str(sd1_dir), "sampler": "dpm++2m"})  # (the first pass's is refused too)

def test_again_draws_a_web_ui_img2img_picture_from_its_picture_or_says_it_draws_from_the_prompt(sd1_dir, tmp_path):
    from textinv.again import again_config

    path = _picture(tmp_path / "w.png", "a cat\nSteps: 20, Seed: 3, Size: 24x16, Denoising strength: 0.3")
    with pytest.warns(UserWarning, match="img2img from a picture of its own.*give that picture with --init-image"):
        config, _ = again_config(path, {"model": str(sd1_dir)})
    assert config.denoise is None and config.init_image is None
    start = tmp_path / "start.png"
    Image.new("RGB", (30, 20), "red").save(start)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config, _ = again_config(path, {"model": str(sd1_dir), "init_image": str(start)})
    assert (config.denoise, config.init_image, config.width, config.height) == (0.3, str(start), 24, 16)
    assert not [w for w in caught if "img2img" in str(w.message)]  # (given its picture, nothing is missing)


def test_an_odd_init_picture_just_works_upright_at_its_proportions(sd1_dir, tmp_path):
    """A 16-bit grey picture stored on its side (EXIF orientation 6: turn it a quarter) draws upright: 40x80."""
    stored = Image.fromarray((np.arange(80 * 40).reshape(40, 80) * 20).astype(np.uint16))
    assert stored.mode == "I;16"
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "side.png", exif=exif.tobytes())
    paths = generate(GenerateConfig(prompt=["a dog"], n=2, steps=2, width=16, model=str(sd1_dir),
                                    init_image=str(tmp_path / "side.png"), out=str(tmp_path / "out")), progress=False)
    assert [Image.open(p).size for p in paths] == [(16, 32)] * 2
    text = Image.open(paths[0]).text
    assert "Size: 16x32" in text["parameters"] and "Denoising strength: 0.75" in text["parameters"]
    assert json.loads(text[RECORD_KEY])["settings"]["init_image"] == "side.png"  # (shareable: its name only)


@pytest.mark.parametrize("settings, message", [
    ({"hires_scale": 1.0}, r"hires_scale= must be a number above 1"),
    ({"hires_scale": 2, "hires_width": 64}, r"hires_scale= or hires_width=/hires_height=, not both"),
    ({"hires_width": 60}, r"hires_width= must be a multiple of 8"),
    ({"hires_steps": 3}, r"hires_steps= sets the hires fix, which hires_scale= .* turns on"),
    ({"hires_upscaler": "lanczos", "hires_sampler": "euler"}, r"hires_upscaler= and hires_sampler= set the hires"),
    ({"hires_prompt": "a cat", "hires_negative_prompt": "blurry"},
     r"hires_prompt= and hires_negative_prompt= set the hires fix, which hires_scale= .* turns on"),
    ({"hires_upscaler": "R-ESRGAN 4x+", "hires_scale": 2},
     r"hires_upscaler='R-ESRGAN 4x\+' is the web UI's upscaling network, .* textinv does not run: give lanczos"),
    ({"hires_upscaler": "lanczoss", "hires_scale": 2}, r"hires_upscaler='lanczoss' is not one of: latent"),
    ({"denoise": 0.5}, r"denoise= says how much of a picture is redrawn: give the picture \(init_image=\)"),
    ({"denoise": 0, "hires_scale": 2}, r"denoise= must be above 0 and at most 1"),
    ({"denoise": 1.5, "hires_scale": 2}, r"denoise= must be above 0 and at most 1"),
    ({"init_image": "nowhere.png"}, r"init_image='nowhere.png' does not exist"),
    ({"init_image": __file__, "hires_scale": 2}, r"init_image= and the hires fix do not go together"),
])
def test_passes_settings_that_cannot_be_drawn_are_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(prompt=["a dog"], **settings).validate()


@pytest.mark.parametrize("name", ["ESRGAN_4x", "R-ESRGAN 4x+ Anime6B", "SwinIR 4x", "LDSR", "4x-UltraSharp", "ScuNET GAN",
                                  "DAT x4"])
def test_the_web_uis_upscaling_networks_are_refused_on_the_command_line_naming_textinvs_upscalers(name, capsys):
    """The web UI's upscaling networks were argparse's "invalid choice", which said nothing of what they are: they
    are named as what textinv does not run, with its own upscalers and the one --again uses for them (lanczos)."""
    from textinv.cli import _parse, make_parser

    with pytest.raises(SystemExit):
        _parse(make_parser(), ["generate", "--prompt", "a dog", "--hires-scale", "2", "--hires-upscaler", name])
    err = capsys.readouterr().err
    assert "invalid choice" not in err
    assert f"argument --hires-upscaler: {name!r} is the web UI's upscaling network" in err
    assert "latent, latent-antialiased" in err and "give lanczos" in err and "--again" in err


def test_a_bad_init_picture_is_said_before_the_model_loads(tmp_path, monkeypatch):
    from textinv import generate as generate_module
    from textinv.errors import DataError

    (tmp_path / "bad.png").write_bytes(b"not a picture")
    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(DataError, match="cannot read the picture .*bad.png"):
        generate(GenerateConfig(prompt=["a dog"], init_image=str(tmp_path / "bad.png"), out=str(tmp_path / "o")),
                 progress=False)


def test_a_variation_seed_blends_each_pictures_noise_toward_its_own_as_the_web_ui_does(sd1_dir):
    model = fresh_model(sd1_dir)

    def draw(seeds, variation=None):
        return [np.asarray(p).astype(int) for p in render(model, ["a dog"] * len(seeds), seeds, steps=2, width=16,
                                                          sampler="ddim", variation=variation)]

    plain, other = draw([5])[0], draw([9])[0]
    assert np.array_equal(draw([5], ([9], 0.0))[0], plain)
    assert np.abs(draw([5], ([9], 1.0))[0] - other).max() <= 1  # (all the way: the variation seed's noise)
    between = draw([5], ([9], 0.3))[0]
    assert np.abs(between - plain).max() > 10 and np.abs(between - other).max() > 10
    together = draw([4, 5], ([8, 9], 0.3))  # (each picture its own variation seed, at any batch size)
    assert np.abs(together[1] - between).max() <= 1
    # the web UI's slerp: unit noise stays unit-sized halfway, where a straight line would shrink it by ~1/sqrt(2)
    a, b = (torch.randn((4, 64, 64), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    from textinv.generate import seed_noise

    halfway = seed_noise([torch.Generator().manual_seed(1)], (4, 64, 64), ([2], 0.5))[0]
    assert abs(halfway.std().item() - 1) < 0.05 and abs(((a + b) / 2).std().item() - 0.71) < 0.05


def test_generate_records_each_pictures_variation_seed_and_tiling_and_again_draws_them(sd1_dir, tmp_path):
    from textinv.again import again_config

    paths = generate(GenerateConfig(prompt=["a dog"], n=2, seed=4, steps=2, width=16, model=str(sd1_dir),
                                    variation_seed=20, variation_strength=0.25, tiling=True, metadata="full",
                                    out=str(tmp_path / "a")), progress=False)
    text = Image.open(paths[1]).text["parameters"]
    assert "Seed: 5, Variation seed: 21, Variation seed strength: 0.25" in text and "Tiling: True" in text
    config, keep = again_config(paths[1], {"out": str(tmp_path / "b")})
    assert (config.seed, config.variation_seed, config.variation_strength, config.tiling) == (4, 20, 0.25, True)
    again = generate(config, progress=False, keep_seeds=keep)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[1])))
    alone, _ = again_config(paths[1], {"out": str(tmp_path / "c"), "seed": 5})  # (picture 1 alone: its own seeds)
    assert (alone.seed, alone.variation_seed) == (5, 21)
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Seed: 3, Variation seed: 77, Variation seed strength: 0.4, "
                                       "Size: 16x16, Tiling: True")
    config, _ = again_config(web, {"model": str(sd1_dir)})
    assert (config.variation_seed, config.variation_strength, config.tiling) == (77, 0.4, True)


def test_tiling_draws_a_picture_that_wraps_around(sd1_dir, monkeypatch):
    """Tiled, every convolution pads circularly, so the drawing commutes with a circular shift: noise rolled by
    some latent columns draws the same picture rolled by as many columns' pixels. Padded with zeros it does not."""
    from textinv import generate as generate_module

    model = fresh_model(sd1_dir)
    factor = model.pipeline.vae_scale_factor
    own = generate_module.seed_noise
    roll = {"by": 0}
    monkeypatch.setattr(generate_module, "seed_noise",
                        lambda *args: torch.roll(own(*args), roll["by"], dims=-1))

    def draw(tiling, by):
        roll["by"] = by
        return np.asarray(render(model, ["a dog"], [3], steps=2, width=32, height=16, tiling=tiling)[0]).astype(int)

    tiled, rolled = draw(True, 0), draw(True, 4)
    assert np.abs(np.roll(tiled, 4 * factor, axis=1) - rolled).max() <= 2
    plain, rolled = draw(False, 0), draw(False, 4)
    assert np.abs(np.roll(plain, 4 * factor, axis=1) - rolled).max() > 20
    assert all(m.padding_mode == "zeros" for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("settings, message", [
    ({"variation_strength": 1.5}, r"variation_strength= must be from 0 to 1"),
    ({"variation_seed": 3}, r"variation_seed= needs variation_strength="),
    ({"variation_seed": -5, "variation_strength": 0.2}, r"variation_seed= must be -1 \(a random one\) or between"),
])
def test_a_variation_that_cannot_be_drawn_is_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(prompt=["a dog"], **settings).validate()
    drawn = GenerateConfig(prompt=["a dog"], variation_strength=0.2).validate()  # (left out: drawn, as -1)
    assert 0 <= drawn.variation_seed < 2**32


def test_the_web_uis_emphasis_settings_weigh_as_it_does_and_are_written_and_read_back(sd1_dir, tmp_path):
    from textinv.again import again_config
    from textinv.conditioning import _encode_chunks, _prompt_chunks

    model = fresh_model(sd1_dir)
    rows = [_prompt_chunks(model, ["a (red:1.5) dog"])[0]]
    plain = _encode_chunks(model, [_prompt_chunks(model, ["a red dog"])[0]], 1, 1)[0]
    original, no_norm, ignore = (_encode_chunks(model, rows, 1, 1, mode)[0] for mode in ("original", "no-norm",
                                                                                           "ignore"))
    assert torch.equal(ignore, plain)  # (the syntax read: the same tokens, no weight)
    red = 2  # (<start>, a, red)
    assert torch.allclose(no_norm[0, red], plain[0, red] * 1.5) and torch.allclose(no_norm[0, 1], plain[0, 1])
    assert torch.allclose(original, no_norm * (plain.mean() / no_norm.mean()))  # (scaled back to the plain mean)
    path = generate(GenerateConfig(prompt=["a (red:1.5) dog"], n=1, steps=2, width=16, model=str(sd1_dir),
                                   emphasis="No norm", metadata="full", out=str(tmp_path / "a")), progress=False)[0]
    assert "Emphasis: No norm" in Image.open(path).text["parameters"]
    assert again_config(path, {"out": str(tmp_path / "b")})[0].emphasis == "no-norm"
    web = _picture(tmp_path / "w.png", "a (cat:1.2)\nSteps: 4, Seed: 3, Size: 16x16, Emphasis: None")
    with pytest.warns(UserWarning, match="Emphasis None, its brackets read as words.*--emphasis ignore"):
        assert again_config(web, {"model": str(sd1_dir)})[0].emphasis == "ignore"


def test_comfy_emphasis_reads_comfyuis_prompt_syntax():
    """ComfyUI's CLIPTextEncode (comfy/sd1_clip.py, token_weights) weighs round brackets alone, sets `(x:N)` at N
    whatever holds it, and reads square brackets, BREAK and a backslash as words: read as the web UI's syntax, its
    `[dull]` weighed 1/1.1, `((red:1.3))` 1.43 and `[cat:dog:0.5]` was prompt editing."""
    from textinv.emphasis import comfy_syntax, parse

    assert parse(comfy_syntax("a ((red:1.3)) car, [dull] (sky) BREAK")) == [
        ("a ", 1.0), ("red", 1.3), (" car, [dull] ", 1.0), ("sky", 1.1), (" break", 1.0)]
    assert parse(comfy_syntax(r"\(x\) (a (b) c:2) C:\dir")) == [
        ("(x) ", 1.0), ("a ", 2.0), ("b", 2.2), (" c", 2.0), (" C:\\dir", 1.0)]
    assert parse(comfy_syntax("[cat:dog:0.5] x) (y")) == [("[cat:dog:0.5] x) (y", 1.0)]  # (a ")" first: no weight)
    assert parse(comfy_syntax("(faint:1e-5) (loud:2E1)")) == [("faint", 1e-05), (" ", 1.0), ("loud", 20.0)]
    # textinv's own syntax kept: ComfyUI's embedding names, LoRA tags, AND (a ConditioningCombine read by --again)
    kept = "(embedding:cat:1.2) <lora:x:0.5> a:0.5 AND b"
    assert comfy_syntax(kept) == kept
    with pytest.raises(ConfigError, match="write N as a number"):
        comfy_syntax("(x:inf)")


def test_comfy_emphasis_reads_each_bracket_as_words_of_its_own(sd1_dir):
    """ComfyUI tokenizes each bracket's text on its own (comfy/sd1_clip.py, tokenize_with_weights), so `(red)(car)`
    is the words red and car; the web UI's syntax joins neighbours of one weight into one text, `redcar`, other
    tokens."""
    from textinv.emphasis import comfy_syntax, comfy_token_chunks, parse

    tok = fresh_model(sd1_dir).tokenizer
    words = tok("red", add_special_tokens=False).input_ids + tok("car", add_special_tokens=False).input_ids
    assert tok("redcar", add_special_tokens=False).input_ids != words  # (else the test would not tell)
    for prompt in ["(red)(car)", "red(car:1)", "(red:1.2)((car:1.2))"]:
        ids, _ = comfy_token_chunks(tok, comfy_syntax(prompt))[0]
        assert ids[1:len(words) + 2] == words + [tok.eos_token_id], prompt
    assert comfy_syntax("(red) car") == "(red:1.1) car"  # (a space there already: none added)
    assert parse(comfy_syntax("(red:1.2)(car:1.200001)")) == [("red", 1.2), (" ", 1.0), ("car", 1.2)]


def test_comfy_emphasis_cuts_a_long_prompt_into_chunks_as_comfyui_does(sd1_dir):
    """ComfyUI cuts a prompt by its pieces (comfy/sd1_clip.py, tokenize_with_weights: each bracket's text, cut before
    each embedding): a chunk takes up to 75 tokens with no look back for a comma, a piece that does not fit goes whole
    into the next chunk, one of 8 tokens or more fills the chunk and goes on in the next, and an embedding's vectors
    are a piece of their own. The web UI's cut (after a comma among a chunk's last 20 tokens) was used, then one word
    by word (ComfyUI's before it tokenized a piece whole: a long prompt's last word was moved, not split)."""
    from textinv.emphasis import comfy_token_chunks
    from textinv.conditioning import _layout

    model = fresh_model(sd1_dir)
    tok = model.tokenizer
    tok.add_tokens(["<q>", "<q>_1", "<q>_2"])
    dog, comma, cat, q = (tok(w, add_special_tokens=False).input_ids for w in ("dog", ",", "cat", "<q> <q>_1 <q>_2"))
    word = tok("photograph", add_special_tokens=False).input_ids  # (6 tokens in the tiny vocabulary)
    large = tok("supercalifragilistic", add_special_tokens=False).input_ids  # (18)
    end = [tok.eos_token_id]
    for prompt, first, second in [("dog " * 70 + ", " + "cat " * 10, dog * 70 + comma + cat * 4, cat * 6),
                                  ("dog " * 72 + "photograph", dog * 72 + word[:3], word[3:]),
                                  ("dog " * 72 + "(photograph:1.2)", dog * 72, word),
                                  ("dog " * 70 + "<q> <q>_1 <q>_2 " + "cat " * 10, dog * 70 + q + cat * 2, cat * 8),
                                  ("dog " * 73 + "<q> <q>_1 <q>_2 " + "cat " * 8, dog * 73, q + cat * 8),
                                  ("dog " * 70 + "supercalifragilistic", dog * 70 + large[:5], large[5:]),
                                  ("dog " * 73 + "<q> <q>_1 <q>_2", dog * 73, q)]:
        (ids, _), (more, _) = comfy_token_chunks(tok, prompt)
        assert ids[1:len(first) + 2] == first + end and more[1:len(second) + 2] == second + end, prompt
    prompt = "dog " * 70 + ", (cat:1.2) " * 5
    assert _layout(model, [prompt], "", 2, comfy=True).rows[0][0][0] == comfy_token_chunks(
        tok, "dog " * 70 + ", (cat:1.2) " * 5)


def test_comfy_emphasis_moves_weighted_tokens_from_the_empty_prompts_states_as_comfyui_does(sd1_dir, tmp_path):
    """ComfyUI weighs a token's hidden state z as z_empty + w (z - z_empty), z_empty the empty prompt's at its place
    (comfy/sd1_clip.py, encode_token_weights), and scales nothing back to a mean; its prompt editing brackets are
    words. Read as the web UI's, `(red:1.5)` was scaled and the chunk scaled back, `[red:blue:0.5]` edited."""
    from textinv.again import again_config
    from textinv.conditioning import _encode_chunks, _prompt_chunks, _prompted, encode_prompts

    model = fresh_model(sd1_dir)
    plain, empty = (_encode_chunks(model, [_prompt_chunks(model, [p])[0]], 1, 1)[0] for p in ("a red dog", ""))
    comfy = _encode_chunks(model, [_prompt_chunks(model, ["a (red:1.5) dog"])[0]], 1, 1, "comfy")[0]
    red = 2  # (<start>, a, red)
    assert torch.allclose(comfy[0, red], empty[0, red] + 1.5 * (plain[0, red] - empty[0, red]), atol=1e-6)
    assert torch.equal(comfy[0, :red], plain[0, :red]) and torch.equal(comfy[0, red + 1:], plain[0, red + 1:])
    pipe = model.pipeline
    ends, given, _ = _prompted(model, pipe, pipe.unet, ["a [red:blue:0.5] dog"], "", 2, 1, (64, 64), "comfy", [0])
    assert ends == [2] and torch.equal(given[0]["prompt_embeds"], encode_prompts(model, [r"a \[red:blue:0.5\] dog"])[0])
    # recorded for --again, not in the web UI's text (it has no such Emphasis)
    path = generate(GenerateConfig(prompt=["a (red:1.5) dog"], n=1, steps=2, width=16, model=str(sd1_dir),
                                   emphasis="ComfyUI", metadata="full", out=str(tmp_path / "a")), progress=False)[0]
    assert "Emphasis" not in Image.open(path).text["parameters"]
    assert again_config(path, {"out": str(tmp_path / "b")})[0].emphasis == "comfy"


def test_old_prompt_editing_timelines_are_drawn_written_and_read_back_as_the_web_ui_does(sd1_dir, tmp_path):
    """--old-prompt-editing draws `[red:blue:1.5]` at 4 steps red for step 0-1 (the old timelines: step 1), not
    all 4 (the new: a fraction past the end), and is written as the web UI writes it; --again reads it back, and
    gives it to a web UI picture before 1.6.0 with a `[` in its prompt, as the web UI redraws one."""
    from textinv.again import again_config

    def draw(name, prompt, **old):
        return generate(GenerateConfig(prompt=[prompt], n=1, seed=2, steps=4, width=16, model=str(sd1_dir),
                                       metadata="full", out=str(tmp_path / name), **old), progress=False)[0]

    old = draw("old", "a [red:blue:1.5] dog", old_prompt_editing=True)
    assert np.array_equal(np.asarray(Image.open(old)), np.asarray(Image.open(draw("same", "a [red:blue:1] dog"))))
    assert not np.array_equal(np.asarray(Image.open(old)),
                              np.asarray(Image.open(draw("new", "a [red:blue:1.5] dog"))))
    assert "Old prompt editing timelines: True" in Image.open(old).text["parameters"]
    unchanged = draw("unchanged", "a [red:blue:2] dog", old_prompt_editing=True)  # (the same either way: unsaid)
    assert "Old prompt editing" not in Image.open(unchanged).text["parameters"]
    hires = draw("hires", "a [red:blue:2] dog", old_prompt_editing=True, hires_scale=1.5)  # (its second pass's)
    assert "Old prompt editing timelines: True" in Image.open(hires).text["parameters"]
    assert again_config(old, {"out": str(tmp_path / "b")})[0].old_prompt_editing
    edited = "a [red:blue:1.5] dog"
    for version, prompt, expected in [("v1.5.2", edited, True), ("v1.6.0", edited, False),
                                      ("v1.5.2", "a red dog", False),
                                      (None, edited, False)]:  # (no Version: the web UI leaves it, as its own)
        field = f", Version: {version}" if version else ""
        web = _picture(tmp_path / "w.png", f"{prompt}\nSteps: 4, Seed: 3, Size: 16x16{field}")
        config, said = again_warned(web, {"model": str(sd1_dir)})  # (a Version is said not to be applied)
        assert config.old_prompt_editing is expected and ("Version" in said) == bool(version), version
    web = _picture(tmp_path / "w.png", "a [red:blue:1.5] dog\nSteps: 4, Seed: 3, Size: 16x16, "
                                       "Old prompt editing timelines: True, Version: v1.9.0")
    assert again_warned(web, {"model": str(sd1_dir)})[0].old_prompt_editing


def test_the_ti_hashes_name_an_embedding_only_a_passs_own_schedule_brings_in(sd1_dir, tmp_path):
    """`[a cat:a <q>:1.5]` at 4 steps draws <q> from step 1 on the old timelines and never on the new: the picture's
    TI hashes followed the new ones, so an --old-prompt-editing picture left out the embedding it drew with; and
    they read every pass as a first pass of plain steps, so the hires fix's and a second-order sampler's left it out
    too."""
    from textinv.again import parse_a1111_parameters
    from textinv.formats import LearnedEmbedding, save_embedding

    q = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "q.safetensors")[0]

    def hashes(prompt="[a cat:a <q>:1.5]", **settings):
        [drawn] = generate(GenerateConfig(prompt=[prompt], embedding=[str(q)], n=1, seed=2, steps=4, width=16,
                                          model=str(sd1_dir), out=str(tmp_path / str(len(list(tmp_path.iterdir())))),
                                          **settings), progress=False)
        return parse_a1111_parameters(Image.open(drawn).text["parameters"])[2].get("TI hashes", "")

    assert hashes(old_prompt_editing=True).startswith("<q>: ")
    assert hashes() == ""  # (on the new timelines 1.5 is past the last step: <q> is never drawn)
    # each pass on its own schedule: the hires pass counts on from the first (1.5: halfway through it), a
    # second-order sampler over its model calls (4 Heun steps are 7 calls: the edit at 5 comes in)
    assert hashes(hires_scale=1.5).startswith("<q>: ")
    assert hashes("[a cat:a <q>:5]", sampler="heun").startswith("<q>: ")
    assert hashes("[a cat:a <q>:5]") == ""  # (4 steps of a first-order sampler: never)


def test_again_takes_a_flag_that_draws_another_way_over_the_pictures_way(sd1_dir, tmp_path):
    """--again's flags go over the picture's settings: one that draws a setting another way replaces the picture's
    way (its hires size by another, its hires fix by --init-image and back, its variation by strength 0), rather
    than being refused as if both had been given."""
    from textinv.again import again_config

    start = tmp_path / "start.png"
    Image.new("RGB", (16, 16), "red").save(start)
    hires = generate(GenerateConfig(prompt=["a dog"], seed=4, steps=2, width=16, model=str(sd1_dir), hires_scale=2,
                                    hires_steps=3, variation_strength=0.3, metadata="full",
                                    out=str(tmp_path / "a")), progress=False)[0]

    def again(path, **flags):
        return again_config(path, {"out": str(tmp_path / "b"), **flags})[0].validate()

    wide = again(hires, hires_width=48)
    assert (wide.hires_scale, wide.hires_width, wide.hires_height, wide.hires_steps) == (None, 48, None, 3)
    assert (again(hires, hires_height=40).hires_scale, again(hires, hires_height=40).hires_height) == (None, 40)
    redrawn = again(hires, init_image=str(start))
    assert redrawn.init_image == str(start) and not redrawn.hires() and redrawn.hires_steps is None
    plain = again(hires, variation_strength=0.0)
    assert (plain.variation_seed, plain.variation_strength) == (None, 0.0)
    img2img = generate(GenerateConfig(prompt=["a dog"], seed=4, steps=2, width=16, model=str(sd1_dir),
                                      init_image=str(start), metadata="full", out=str(tmp_path / "c")),
                       progress=False)[0]
    enlarged = again(img2img, hires_scale=2)
    assert (enlarged.init_image, enlarged.hires_scale) == (None, 2)
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Seed: 3, Size: 16x16, Denoising strength: 0.4, Hires "
                                       "resize: 32x0")
    assert (again(web, model=str(sd1_dir), hires_scale=1.5).hires_width, again(web, model=str(sd1_dir),
            hires_scale=1.5).hires_scale) == (None, 1.5)
    unknown = _picture(tmp_path / "u.png", "a cat\nSteps: 4, Seed: 3, Size: 16x16, Denoising strength: 0.4, Hires "
                                            "upscale: 2, Hires sampler: DPM fast")
    assert again(unknown, model=str(sd1_dir), init_image=str(start)).hires_sampler is None  # (not asked for)


def test_a_hires_pass_that_cannot_be_drawn_is_refused_before_the_first_pass_draws():
    """The second pass's sampler and schedule are checked before any UNet call, naming the hires flags."""
    model = load_model("shapes")  # (a zero-terminal-SNR schedule, which heun cannot sample)
    calls = _unet_calls(model)
    with pytest.raises(ConfigError, match=r"hires_sampler='heun' cannot sample a model with a zero-terminal-SNR"):
        render(model, ["a red circle"], [0], steps=2, hires=Hires(scale=2, sampler="heun"))
    with pytest.raises(ConfigError, match=r"hires_steps=20 at denoise=0.01 runs the last of a schedule of 2000 "
                                         r"steps, more than the 1000 noise levels shapes was trained with: give fewer "
                                         r"hires_steps= or a higher denoise="):
        render(model, ["a red circle"], [0], steps=2, hires=Hires(scale=2, steps=20, denoise=0.01))
    assert calls == []


def test_render_refuses_an_init_picture_with_the_hires_fix_rather_than_drop_one(sd1_dir):
    model = fresh_model(sd1_dir)
    with pytest.raises(ConfigError, match=r"render takes `start` \(img2img\) or `hires` \(the hires fix\), not both"):
        render(model, ["a dog"], [1], steps=2, width=16, start=[Image.new("RGB", (16, 16))], hires=Hires(scale=2))


def test_render_refuses_each_mistake_in_one_order_before_it_draws(sd1_dir):
    """render's checks, each given with every later one's mistake too: the size, the guidance, the steps, the clip
    skip, an init picture beside the hires fix, the hires fix's own settings, a mask without an init picture."""
    from textinv.inpaint import Inpaint

    model = fresh_model(sd1_dir)
    calls = _unet_calls(model)
    mistakes = [({"width": 20}, r"width= must be a multiple of 8 pixels, got 20"),
                ({"guidance": float("inf")}, r"guidance= must be a finite number, got inf"),
                ({"steps": 5000}, r"steps=5000 is more than the 1000 noise levels"),
                ({"clip_skip": 99}, r"clip_skip=99 is more than the"),
                ({"start": [Image.new("RGB", (16, 16))]}, r"render takes `start` \(img2img\) or `hires`"),
                ({"hires": Hires(scale=2, guidance=0.5)}, r"hires_guidance= must be a finite number of at least 1"),
                ({"inpaint": Inpaint(Image.new("L", (16, 16)))}, r"render's `inpaint` masks the pictures in `start`")]
    for i, (_, message) in enumerate(mistakes):
        given = {key: value for settings, _ in mistakes[i:] for key, value in settings.items()}
        with pytest.raises(ConfigError, match=message):
            render(model, ["a dog"], [0], **{"steps": 2, "width": 16, **given})
    assert calls == []


def test_again_warns_of_an_init_picture_replaced_since_and_a_switch_of_pass_takes_its_own_denoise(sd1_dir, tmp_path):
    from textinv.again import again_config

    start = tmp_path / "start.png"
    Image.new("RGB", (16, 16), "red").save(start)
    path = generate(GenerateConfig(prompt=["a dog"], n=1, steps=2, width=16, model=str(sd1_dir), denoise=0.4,
                                   init_image=str(start), metadata="full", out=str(tmp_path / "a")), progress=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the same picture: nothing to say)
        again_config(path, {"out": str(tmp_path / "b")})
    Image.new("RGB", (16, 16), "blue").save(start)
    with pytest.warns(UserWarning, match=r"drawn from other contents of .*start.png \(--init-image"):
        config, _ = again_config(path, {"out": str(tmp_path / "b")})
    assert config.denoise == 0.4
    # the hires fix over an img2img picture: the img2img's denoise is not the hires fix's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = again_config(path, {"out": str(tmp_path / "c"), "hires_scale": 2.0})
    assert (config.init_image, config.hires_scale, config.denoise) == (None, 2.0, None)
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Seed: 3, Size: 16x16, Denoising strength: 0.5, Hires "
                                       "upscale: 1, Hires upscaler: Latent")
    with pytest.warns(UserWarning, match="Hires upscale 1 enlarges nothing.*drawn in one"):
        config, _ = again_config(web, {"model": str(sd1_dir)})
    assert (config.hires_scale, config.hires_upscaler, config.denoise) == (None, None, None)


def test_an_init_image_folder_redraws_each_of_its_pictures_with_every_prompt(sd1_dir, tmp_path):
    from textinv.again import again_config

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 20), "red").save(photos / "wide.png")
    Image.new("RGB", (20, 40), "blue").save(photos / "tall.jpg")
    (photos / "tall.txt").write_text("a caption, skipped quietly")
    paths = generate(GenerateConfig(prompt=["a dog", "a cat"], n=1, seed=2, steps=2, width=16, model=str(sd1_dir),
                                    init_image=str(photos), metadata="full", out=str(tmp_path / "a")), progress=False)
    assert [p.name for p in paths] == ["000-a-dog-tall-s2.png", "000-a-dog-wide-s2.png", "001-a-cat-tall-s2.png",
                                       "001-a-cat-wide-s2.png"]
    assert [Image.open(p).size for p in paths] == [(16, 32), (16, 8)] * 2  # (each at its own proportions)
    settings = json.loads(Image.open(paths[1]).text[RECORD_KEY])["settings"]
    assert settings["init_image"] == str(photos / "wide.png")  # (each picture records the one it redrew)
    config, keep = again_config(paths[1], {"out": str(tmp_path / "b")})
    again = generate(config, progress=False, keep_seeds=keep)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[1])))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^init_image='.*empty' is a folder without pictures"):
        generate(GenerateConfig(prompt=["a dog"], model=str(sd1_dir), init_image=str(tmp_path / "empty"),
                                out=str(tmp_path / "c")), progress=False)


def test_a_hires_prompt_and_negative_prompt_condition_the_second_pass_only(sd1_dir):
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    calls = _unet_calls(model)
    render(model, ["a dog"], [3], steps=2, width=16, negative_prompt="ugly",
           hires=Hires(scale=2, steps=2, prompt="a red cat", negative_prompt="blurry"))
    assert len(calls) == 4
    first, second = torch.cat(encode_prompts(model, ["ugly", "a dog"])[0].split(1)), \
        torch.cat(encode_prompts(model, ["blurry", "a red cat"])[0].split(1))
    for _, _, hidden in calls[:2]:  # rows: the negative's, the prompt's
        assert torch.allclose(hidden, first, atol=1e-5)
    for _, _, hidden in calls[2:]:
        assert torch.allclose(hidden, second, atol=1e-5)
    calls.clear()  # (None: the first pass's own)
    render(model, ["a dog"], [3], steps=2, width=16, negative_prompt="ugly", hires=Hires(scale=2, steps=2))
    assert all(torch.allclose(hidden, first, atol=1e-5) for _, _, hidden in calls)


def test_generate_writes_the_hires_prompts_as_the_web_ui_and_again_draws_them(sd1_dir, tmp_path, monkeypatch):
    import textinv.generate as gen
    from textinv.again import again_config, read_picture
    from textinv.formats import LearnedEmbedding, save_embedding

    emb = tmp_path / "zq.safetensors"  # (two vectors: a hires prompt's token is expanded as the prompt's)
    save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.randn(2, fresh_model(sd1_dir).widths[0])}), emb)
    seen = recorded_arguments(monkeypatch, gen, "render", "hires")
    config = GenerateConfig(prompt=["a dog", "a cat, detailed"], n=1, seed=4, steps=2, width=16,
                            model=str(sd1_dir), embedding=[str(emb)], out=str(tmp_path / "a"), hires_scale=1.5,
                            hires_prompt="a cat, detailed", hires_negative_prompt="blurry <zq>")
    dog, cat = generate(config, progress=False)
    # (the two prompts share one call since pictures of different prompts are batched together)
    assert [(h.prompt, h.negative_prompt) for (h,) in seen] == [("a cat, detailed", "blurry <zq> <zq>_1")]
    text = Image.open(dog).text
    # written as the web UI writes them (quoted where a comma or colon would split the field), only where they differ
    assert ('Hires prompt: "a cat, detailed", Hires negative prompt: blurry <zq>' in text["parameters"])
    assert "Hires prompt" not in Image.open(cat).text["parameters"]
    assert "Hires negative prompt: blurry <zq>" in Image.open(cat).text["parameters"]
    assert "<zq>: " in text["ti_hashes"]  # (the embedding drew, in the hires pass)
    monkeypatch.undo()
    for path in (dog, tmp_path / "w.png"):  # textinv's record, the web UI's text
        if path != dog:
            _picture(path, text["parameters"])
        picture = read_picture(path)
        assert (picture.settings["hires_prompt"], picture.settings["hires_negative_prompt"]) == \
            ("a cat, detailed", "blurry <zq>")
        assert not any("Hires prompt" in note for note in picture.notes)  # (read, not named as unused)
    again, _ = again_config(dog, {"out": str(tmp_path / "b"), "model": str(sd1_dir), "embedding": [str(emb)]})
    redrawn = generate(again, progress=False)[0]
    assert np.array_equal(np.asarray(Image.open(dog)), np.asarray(Image.open(redrawn)))
    assert np.abs(np.asarray(Image.open(dog)).astype(int)
                  - np.asarray(Image.open(generate(GenerateConfig(
                      prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir), out=str(tmp_path / "c"),
                      hires_scale=1.5), progress=False)[0])).astype(int)).max() > 2  # (without them: another picture)


def _recorded_loras(tmp_path, monkeypatch) -> tuple:
    """A LoRA folder holding a tiny `film` LoRA, and the list each `apply_loras` call adds its (name, te) tags to."""
    import textinv.generate as gen
    from test_generate import _save_tiny_lora

    loras = tmp_path / "Lora"
    loras.mkdir()
    _save_tiny_lora(loras, "film")
    applied = []
    apply = gen.apply_loras

    def record(model, tags, files):
        applied.append([(t.name, t.te) for t in tags])
        return apply(model, tags, files)

    monkeypatch.setattr(gen, "apply_loras", record)
    return loras, applied


def test_a_lora_in_the_hires_prompt_is_active_for_the_second_pass_only(sd1_dir, tmp_path, monkeypatch):
    loras, applied = _recorded_loras(tmp_path, monkeypatch)
    common = dict(prompt=["a dog"], n=2, batch_size=1, steps=2, width=16, model=str(sd1_dir), hires_scale=1.5,
                  lora_dir=[str(loras)])
    paths = generate(GenerateConfig(**common, hires_prompt="a dog <lora:film:0.5>", out=str(tmp_path / "a")),
                     progress=False)
    # each batch: the prompt's LoRAs (none) for the first pass, the hires prompt's for the second
    assert applied == [[], [("film", 0.5)], [], [("film", 0.5)]]
    assert "film: " in Image.open(paths[0]).text["lora_hashes"]
    from textinv.again import again_config  # (its LoRA folder, recorded by name, is asked for: the hires prompt's tag)

    with pytest.raises(ConfigError, match="pass --lora-dir with where Lora is"):
        again_config(paths[0], {"model": str(sd1_dir)})
    plain = generate(GenerateConfig(**common, hires_prompt="a dog", out=str(tmp_path / "b")), progress=False)
    assert np.abs(np.asarray(Image.open(paths[0])).astype(int)
                  - np.asarray(Image.open(plain[0])).astype(int)).max() > 2
    applied.clear()  # the same LoRAs in both: nothing to switch
    generate(GenerateConfig(**{**common, "prompt": ["a dog <lora:film:0.5>"]}, hires_prompt="a cat <lora:film:0.5>",
                            out=str(tmp_path / "c")), progress=False)
    assert applied == [[("film", 0.5)]]


def test_again_gives_a_web_ui_pictures_hires_prompt_only_with_its_hires_fix(sd1_dir, tmp_path):
    from textinv.again import again_config

    path = _picture(tmp_path / "w.png", 'a cat\nSteps: 20, Seed: 3, Size: 64x64, Denoising strength: 0.4, Hires '
                                        'upscale: 2, Hires prompt: "a cat, sharp: detailed"')
    config, _ = again_config(path, {"model": str(sd1_dir)})
    assert (config.hires_prompt, config.hires_negative_prompt) == ("a cat, sharp: detailed", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = again_config(path, {"model": str(sd1_dir), "init_image": __file__})
    assert config.hires_prompt is None  # (--init-image draws without the hires fix: its prompt goes with it)


def test_a_hires_prompt_without_lora_tags_draws_the_second_pass_without_the_prompts_loras(sd1_dir, tmp_path,
                                                                                          monkeypatch):
    # the web UI activates the hires prompt's extra networks for the second pass, and every network it does not name
    # with none (extra_networks.activate): a hires prompt without tags switches the prompt's LoRAs off
    loras, applied = _recorded_loras(tmp_path, monkeypatch)
    paths = generate(GenerateConfig(prompt=["a dog <lora:film:0.5>"], n=2, batch_size=1, steps=2, width=16,
                                    model=str(sd1_dir), hires_scale=1.5, lora_dir=[str(loras)], hires_prompt="a dog",
                                    out=str(tmp_path / "a")), progress=False)
    assert applied == [[("film", 0.5)], [], [("film", 0.5)], []]
    assert "film: " in Image.open(paths[0]).text["lora_hashes"]  # (the first pass drew with it)


def _text_but_the_batch(path: Path) -> dict:
    """A picture's PNG text without what tells the batch it was drawn in (its call's seeds, the --batch-size)."""
    text = dict(Image.open(path).text)
    record = json.loads(text.pop(RECORD_KEY))
    record.pop("batch_seeds")
    record["settings"].pop("batch_size", None)
    return {**text, RECORD_KEY: record}


def test_an_init_image_folders_pictures_of_one_size_share_a_call_each_drawn_from_its_own(sd1_dir, tmp_path,
                                                                                         monkeypatch):
    """A folder of three pictures of one size at --batch-size 3 draws in one pipeline call, a row for each picture:
    the files, their names, order and text are those of --batch-size 1 (but for the batch each records), and
    --again redraws one of them."""
    from textinv import generate as generating
    from textinv.again import again_config

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "yellow")):
        Image.new("RGB", (40, 20), colour).save(photos / f"{name}.png")
    model = fresh_model(sd1_dir)
    calls = recorded_arguments(monkeypatch, generating, "render", "seeds", "start")
    settings = dict(prompt=["a dog"], n=1, seed=2, steps=2, width=16, model=str(sd1_dir), init_image=str(photos),
                    denoise=0.25, metadata="full")
    together = generate(GenerateConfig(**settings, batch_size=3, out=str(tmp_path / "b")), model=model,
                        progress=False)
    assert [(seeds, [p.getpixel((0, 0)) for p in start]) for seeds, start in calls] == [
        ([2, 2, 2], [(255, 0, 0), (0, 0, 255), (255, 255, 0)])]
    calls.clear()
    alone = generate(GenerateConfig(**settings, batch_size=1, out=str(tmp_path / "a")), model=model, progress=False)
    assert len(calls) == 3
    assert [p.name for p in together] == [p.name for p in alone] == ["000-a-dog-a-s2.png", "000-a-dog-b-s2.png",
                                                                     "000-a-dog-c-s2.png"]
    drawn = [np.asarray(Image.open(p)).astype(int) for p in together]
    for mine, one in zip(together, alone):  # (up to rounding, as at any --batch-size)
        assert np.abs(np.asarray(Image.open(mine)).astype(int) - np.asarray(Image.open(one))).max() <= 1
        assert _text_but_the_batch(mine) == _text_but_the_batch(one)
    assert np.abs(drawn[0] - drawn[1]).max() > 10  # (each row from its own picture)
    assert json.loads(Image.open(together[1]).text[RECORD_KEY])["batch_seeds"] == [2, 2, 2]
    config, keep = again_config(together[1], {"out": str(tmp_path / "c")})
    again = generate(config, model=model, progress=False, keep_seeds=keep)
    assert len(again) == 1  # (of the kept seed alone, drawn in a batch of as many, each row from b.png)
    assert np.abs(np.asarray(Image.open(again[0])).astype(int) - drawn[1]).max() <= 1


def test_init_pictures_drawn_at_different_sizes_never_share_a_call(sd1_dir, tmp_path, monkeypatch):
    """Pictures share a call where they draw at one size (`refine.start_size`: a 40x20 and an 80x40 both at 16x8),
    wherever they lie in the folder: a tall picture between them has a call of its own and cuts no batch."""
    from textinv import generate as generating

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, size in (("a", (40, 20)), ("b", (80, 40)), ("c", (20, 40)), ("d", (40, 20))):
        Image.new("RGB", size, "red").save(photos / f"{name}.png")
    calls = recorded_arguments(monkeypatch, generating, "render", "seeds", "width", "height")
    paths = generate(GenerateConfig(prompt=["a dog"], n=2, seed=2, steps=1, width=16, batch_size=8,
                                    model=str(sd1_dir), init_image=str(photos), out=str(tmp_path / "a")),
                     progress=False)
    assert calls == [([2, 3, 2, 3, 2, 3], 16, 8), ([2, 3], 16, 32)]
    assert [Image.open(p).size for p in paths] == [(16, 8)] * 4 + [(16, 32)] * 2 + [(16, 8)] * 2


def test_again_of_a_shareable_folder_drawn_picture_given_the_folder_redraws_that_picture(sd1_dir, tmp_path):
    # the refusal asks for "--init-image with where wide.png is": the folder it lies in is an answer, and draws the
    # picture recorded, not every picture of the folder
    from textinv.again import again_config

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 20), "red").save(photos / "wide.png")
    Image.new("RGB", (20, 40), "blue").save(photos / "tall.png")
    paths = generate(GenerateConfig(prompt=["a dog"], n=1, seed=2, steps=2, width=16, model=str(sd1_dir),
                                    init_image=str(photos), metadata="shareable", out=str(tmp_path / "a")),
                     progress=False)
    wide = next(p for p in paths if "wide" in p.name)
    with pytest.raises(ConfigError, match="--init-image with where wide.png is"):
        again_config(wide, {"model": str(sd1_dir), "out": str(tmp_path / "b")})
    config, keep = again_config(wide, {"model": str(sd1_dir), "out": str(tmp_path / "b"), "init_image": str(photos)})
    assert Path(config.init_image) == photos / "wide.png"
    again = generate(config, progress=False, keep_seeds=keep)
    assert len(again) == 1 and np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(wide)))
    with warnings.catch_warnings(record=True) as caught:  # (its SHA-256 is checked as a file's given is)
        warnings.simplefilter("always")
        Image.new("RGB", (40, 20), "green").save(photos / "wide.png")
        again_config(wide, {"model": str(sd1_dir), "out": str(tmp_path / "c"), "init_image": str(photos)})
    assert any("other contents of" in str(w.message) for w in caught)


def test_an_init_image_folders_pictures_whose_names_shorten_alike_are_each_named_their_own(sd1_dir, tmp_path):
    # a.png and a.jpg, or two screenshots of one day, whose names are alike in their first 24 letters: each picture's
    # file is named its own, not the second's taken as another run's (a '-2' on it and on every later file)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Screenshot 2024-01-01 at 12.34.56.png", "Screenshot 2024-01-01 at 12.40.00.png", "a.png", "a.jpg"):
        Image.new("RGB", (16, 16), "red").save(photos / name)
    paths = generate(GenerateConfig(prompt=["a dog"], n=2, seed=2, steps=2, width=16, model=str(sd1_dir),
                                    init_image=str(photos), metadata="none", out=str(tmp_path / "a")),
                     progress=False)
    names = [p.name for p in paths]
    assert len(set(names)) == 8 and not any(n.endswith("-2.png") for n in names)


def _sampled(model, sampler: str, seeds=(5,), **settings) -> list[np.ndarray]:
    """The pictures of "a dog" at each of `seeds`, drawn together by `sampler` in 3 steps at 16x16 with `settings`,
    as int arrays: what the sampler-noise tests below compare."""
    return [np.asarray(p).astype(int) for p in render(model, ["a dog"] * len(seeds), list(seeds), steps=3, width=16,
                                                      sampler=sampler, **settings)]


def test_ensd_seeds_each_steps_noise_from_seed_plus_the_delta_as_the_web_ui_does(sd1_dir):
    """The web UI's Eta noise seed delta: once a pass's starting noise is drawn from the seed, its sampler's noise
    at every step is drawn from seed + ENSD (its ImageRNG), for each picture of a batch; an SDE sampler's Brownian
    noise it does not reach, and a sampler that draws none (Euler) is unchanged. ENSD 0 is the drawing as it was."""
    from textinv.generate import _step_noise

    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    _step_noise(generators, [5, 6], 31337, "euler_a")
    for g, seed in zip(generators, (5, 6)):
        assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(
            seed + 31337)))
    model = load_model(sd1_dir)

    def draw(sampler, seeds=(5,), **settings):
        return _sampled(model, sampler, seeds, **settings)

    plain = draw("euler_a")[0]
    assert np.array_equal(draw("euler_a", ensd=0)[0], plain)
    delta = draw("euler_a", ensd=31337)[0]
    assert np.abs(delta - plain).max() > 10
    assert np.abs(draw("euler_a", (4, 5), ensd=31337)[1] - delta).max() <= 1  # (each picture its own)
    assert np.array_equal(draw("euler", ensd=31337)[0], draw("euler")[0])
    assert np.array_equal(draw("dpm++2m_sde", ensd=31337)[0], draw("dpm++2m_sde")[0])
    hires = Hires(scale=2.0, denoise=0.6, sampler="euler_a")  # (its pass's noise too)
    assert np.abs(draw("euler", hires=hires, ensd=7)[0] - draw("euler", hires=hires)[0]).max() > 10


@pytest.mark.parametrize("sampler", ["lcm", "tcd"])
def test_lcm_and_tcd_draw_fresh_noise_at_each_step_from_the_pictures_seeds(sd1_dir, sampler):
    """LCM and TCD add fresh noise after every step but the last, drawn (after the starting noise) from each
    picture's generator, so --ensd moves it and the starting noise stays: TCD at its gamma 0.3, though the
    pipeline hands a step its eta, 0 (diffusers' TCDScheduler drew at gamma 0 there, with no noise, the same picture
    at any ENSD)."""
    model = load_model(sd1_dir)

    def draw(**settings):
        return _sampled(model, sampler, **settings)[0]

    plain = draw()
    assert np.array_equal(draw(ensd=0), plain)
    assert np.abs(draw(ensd=31337) - plain).max() > 10


def test_eta_sets_ddims_and_the_ancestral_samplers_noise_and_its_default_draws_as_before(sd1_dir):
    model = load_model(sd1_dir)

    def draw(sampler, **settings):
        return _sampled(model, sampler, **settings)[0]

    for sampler, default in (("ddim", 0.0), ("euler_a", 1.0), ("dpm2_a", 1.0)):
        plain = draw(sampler)
        assert np.array_equal(draw(sampler, eta=default), plain)
        assert np.abs(draw(sampler, eta=0.5) - plain).max() > 10, sampler
    # at eta 0 DPM2 a adds no noise: it is DPM2 (the same steps and midpoints)
    assert np.abs(draw("dpm2_a", eta=0.0) - draw("dpm2")).max() <= 1
    with pytest.raises(ConfigError, match=r"eta=0.5: sampler='dpm\+\+2m' takes no eta; give one that does: "
                                          r"euler_a, dpm\+\+2m_sde, dpm\+\+2m_sde_heun, dpm\+\+3m_sde, "
                                          r"dpm\+\+3m_sde_comfy, dpm\+\+sde, "
                                          r"dpm2_a, dpm\+\+2s_a "
                                          r"\(the web UI.s Eta, default 1\) or ddim"):
        render(model, ["a dog"], [5], steps=3, width=16, sampler="dpm++2m", eta=0.5)


@pytest.mark.parametrize("settings, message", [
    ({"eta": 1.5, "sampler": "euler_a"}, r"eta= must be from 0 to 1"),
    ({"eta": 0.5}, r"eta=0.5: sampler='default' takes no eta; give one that does: euler_a, .*dpm\+\+3m_sde, "
                   r"dpm\+\+3m_sde_comfy, dpm\+\+sde, .* or ddim \(its Eta DDIM, default 0\), with a schedule or "
                   r"without$"),
    ({"eta": 0.5, "sampler": "dpm++2m_karras"}, r"sampler='dpm\+\+2m_karras' takes no eta"),
    ({"eta": 0.5, "sampler": "tcd"}, r"sampler='tcd' takes no eta; .* tcd at its gamma 0.3 only \(TCD's eta\)"),
    ({"eta": 0.5, "sampler": "lcm"}, r"sampler='lcm' takes no eta"),
    ({"ensd": -1}, r"ensd= must be 0 or more"),
])
def test_an_eta_or_ensd_that_cannot_be_drawn_is_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(prompt=["a dog"], **settings).validate()
    # an eta the hires fix's sampler takes
    GenerateConfig(prompt=["a dog"], eta=0.5, hires_scale=2, hires_sampler="euler_a").validate()


def test_generate_writes_eta_and_ensd_as_the_web_ui_and_again_draws_them(sd1_dir, tmp_path):
    from textinv.again import again_config

    paths = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                    sampler="euler_a", eta=0.5, ensd=31337, metadata="full",
                                    out=str(tmp_path / "a")), progress=False)
    text = Image.open(paths[0]).text["parameters"]
    assert "Sampler: Euler a, " in text and "Eta: 0.5, ENSD: 31337" in text
    config, keep = again_config(paths[0], {"out": str(tmp_path / "b")})
    assert (config.eta, config.ensd) == (0.5, 31337)
    again = generate(config, progress=False, keep_seeds=keep)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[0])))
    # at the defaults neither is written, nor recorded (so an older textinv reads the record without a warning)
    plain = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                    sampler="ddim", metadata="full", out=str(tmp_path / "c")), progress=False)[0]
    assert "Eta" not in Image.open(plain).text["parameters"]
    assert not {"eta", "ensd"} & set(json.loads(Image.open(plain).text[RECORD_KEY])["settings"])
    ddim = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                   sampler="ddim", eta=0.25, out=str(tmp_path / "d")), progress=False)[0]
    assert "Eta DDIM: 0.25" in Image.open(ddim).text["parameters"]


def test_ensd_is_written_as_the_web_ui_writes_it_and_recorded_for_any_sampler(sd1_dir, tmp_path):
    """The web UI writes ENSD for its ancestral samplers (uses_ensd) at an eta not 0 only; textinv wrote it for any
    sampler. Its record keeps --ensd all the same, so --again redraws a DDIM picture drawn with one bit for bit."""
    from textinv.again import again_config

    def draw(out, **settings):
        return generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=3, width=16, model=str(sd1_dir),
                                       out=str(tmp_path / out), **settings), progress=False)[0]

    ddim = draw("a", sampler="ddim", eta=0.5, ensd=31337)
    text = Image.open(ddim).text
    assert "Eta DDIM: 0.5" in text["parameters"] and "ENSD" not in text["parameters"]
    assert json.loads(text[RECORD_KEY])["settings"]["ensd"] == 31337
    config, keep = again_config(ddim, {"out": str(tmp_path / "b"), "model": str(sd1_dir)})
    assert config.ensd == 31337
    again = generate(config, progress=False, keep_seeds=keep)[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(ddim)))
    assert not np.array_equal(np.asarray(Image.open(draw("c", sampler="ddim", eta=0.5))),
                              np.asarray(Image.open(ddim)))  # (the delta drew it)
    assert "ENSD" not in Image.open(draw("d", sampler="euler_a", eta=0, ensd=31337)).text["parameters"]
    assert "ENSD" not in Image.open(draw("e", sampler="euler", ensd=31337)).text["parameters"]
    assert "ENSD: 31337" in Image.open(draw("f", sampler="dpm2_a", ensd=31337)).text["parameters"]


@pytest.mark.parametrize("sampler, settings, written", [
    ("dpm++2m_sde_karras", {"eta": 0.5}, "Eta: 0.5"), ("dpm++3m_sde", {"eta": 0.5}, "Eta: 0.5"),
    ("dpm++sde_karras", {"eta": 0.5}, "Eta: 0.5"), ("dpm++3m_sde_karras", {"sigma_noise": 0.6}, "Sigma noise: 0.6"),
    ("dpm++sde", {"sigma_noise": 0.6}, "Sigma noise: 0.6")])
def test_an_sde_sampler_at_an_eta_or_sigma_noise_is_written_and_drawn_again(sd1_dir, tmp_path, sampler, settings,
                                                                             written):
    """--eta or --sigma-noise on DPM++ 2M SDE, 3M SDE or SDE draws another picture than at its defaults, 1, writes
    "Eta" or "Sigma noise" as the web UI does (not ENSD: the web UI draws its noise from a Brownian tree), and
    --again draws the same picture from it."""
    from textinv.again import again_config

    def draw(out, **given):
        return generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=3, width=16, model=str(sd1_dir),
                                       sampler=sampler, ensd=31337, metadata="full",
                                       out=str(tmp_path / out), **given), progress=False)[0]

    drawn, plain = draw("a", **settings), draw("b")
    text = Image.open(drawn).text["parameters"]
    assert written in text and "ENSD" not in text
    assert "Eta" not in Image.open(plain).text["parameters"] and "Sigma" not in Image.open(plain).text["parameters"]
    assert not np.array_equal(np.asarray(Image.open(drawn)), np.asarray(Image.open(plain)))
    config, keep = again_config(drawn, {"out": str(tmp_path / "c")})
    assert config.sampler == sampler and all(getattr(config, key) == value for key, value in settings.items())
    again = generate(config, progress=False, keep_seeds=keep)[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(drawn)))


def test_again_reads_the_web_uis_eta_eta_ddim_and_ensd(sd1_dir, tmp_path):
    web = _picture(tmp_path / "a.png", "a cat\nSteps: 4, Sampler: Euler a, Seed: 3, Size: 16x16, Eta: 0.6, "
                                       "ENSD: 31337")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert (config.sampler, config.eta, config.ensd) == ("euler_a", 0.6, 31337) and "Eta" not in said
    web = _picture(tmp_path / "b.png", "a cat\nSteps: 4, Sampler: DDIM, Seed: 3, Size: 16x16, Eta DDIM: 0.3")
    config, _ = again_warned(web, {"model": str(sd1_dir)})
    assert (config.sampler, config.eta, config.ensd) == ("ddim", 0.3, 0)
    # the SDE samplers' Eta, drawn here as there
    for name, sampler, eta, drawn in [("c.png", "DPM++ 2M SDE", 0.5, "dpm++2m_sde_karras"),
                                      ("d.png", "DPM++ 3M SDE", 0.5, "dpm++3m_sde_karras"),
                                      ("e.png", "DPM++ SDE", 0.7, "dpm++sde_karras")]:
        web = _picture(tmp_path / name, f"a cat\nSteps: 4, Sampler: {sampler}, Schedule type: Karras, Seed: 3, "
                                        f"Size: 16x16, Eta: {eta}")
        config, said = again_warned(web, {"model": str(sd1_dir)})
        assert (config.sampler, config.eta) == (drawn, eta) and "Eta" not in said, sampler
    # a sampler with no eta: named as not applied
    web = _picture(tmp_path / "f.png", "a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 3, "
                                       "Size: 16x16, Eta: 0.5")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert config.eta is None and "not applied from its A1111 parameters: Eta" in said
    # another sampler given beside it, which takes none: drawn without, said
    config, said = again_warned(tmp_path / "a.png", {"model": str(sd1_dir), "sampler": "DPM++ 2M"})
    assert config.eta is None and config.ensd == 31337 and "drawn at eta 0.6" in said


def test_sigma_churn_draws_euler_heun_and_dpm2_with_fresh_noise_and_at_0_as_before(sd1_dir):
    """The web UI's Sigma churn: Euler, Heun and DPM2 add each picture's own noise before each step (so a picture is
    its seed's at any batch size); at churn 0 they draw as they did, whatever tmin, tmax and noise say. A hires
    pass whose sampler takes it churns too."""
    from textinv.samplers import Churn

    model = load_model(sd1_dir)

    def draw(sampler, seeds=(5,), **settings):
        return _sampled(model, sampler, seeds, **settings)

    for sampler in ("euler", "heun_karras", "dpm2"):
        plain = draw(sampler)[0]
        assert np.array_equal(draw(sampler, churn=Churn(0.0, 0.5, 5.0, 0.5))[0], plain)
        churned = draw(sampler, churn=Churn(churn=1.0))[0]
        assert np.abs(churned - plain).max() > 10, sampler
        assert np.array_equal(draw(sampler, churn=Churn(churn=1.0))[0], churned)  # (the seed's noise)
        assert np.abs(draw(sampler, (4, 5), churn=Churn(churn=1.0))[1] - churned).max() <= 1
    hires = Hires(scale=2.0, denoise=0.6, sampler="euler")
    assert np.abs(draw("euler_a", hires=hires, churn=Churn(churn=1.0))[0]
                  - draw("euler_a", hires=hires)[0]).max() > 10
    with pytest.raises(ConfigError, match=r"sigma_churn=1.0: sampler='euler_a' takes no sigma churn settings; give "
                                          r"one that does: euler, heun, dpm2"):
        render(model, ["a dog"], [5], steps=3, width=16, sampler="euler_a", churn=Churn(churn=1.0))


@pytest.mark.parametrize("settings, message", [
    ({"sigma_churn": -1, "sampler": "euler"}, r"sigma_churn= must be a number from 0, got -1"),
    ({"sigma_noise": float("nan"), "sampler": "euler"}, r"sigma_noise= must be a number from 0"),
    ({"sigma_tmax": 0.0, "sampler": "euler"}, r"sigma_tmax=0.0 must be above 0 .* leave it out for no upper limit"),
    ({"sigma_tmin": 2.0, "sigma_tmax": 1.0, "sampler": "heun"}, r"sigma_tmax=1.0 must be above 0 and not below "
                                                                r"sigma_tmin=2.0"),
    ({"sigma_churn": 0.5}, r"sigma_churn=0.5: sampler='default' takes no sigma churn settings"),
    ({"sigma_noise": 0.5, "sampler": "dpm++2m"}, r"sigma_noise=0.5: sampler='dpm\+\+2m' takes no sigma noise; "),
    ({"sigma_noise": 0.5, "sampler": "euler_a"}, r"sigma_noise=0.5: sampler='euler_a' takes no sigma noise; give one "
                                                 r"that does: euler, heun, dpm2 \(the churn's noise\), dpm2_a, "
                                                 r"dpm\+\+2s_a, dpm\+\+2m_sde, dpm\+\+2m_sde_heun, dpm\+\+3m_sde, "
                                                 r"dpm\+\+3m_sde_comfy, dpm\+\+sde \(their fresh noise\)"),
    ({"sigma_churn": 0.5, "sigma_noise": 0.5, "sampler": "dpm2_a"}, r"sigma_churn=0.5: sampler='dpm2_a' takes no "
                                                                    r"sigma churn settings"),
])
def test_sigma_churn_settings_that_cannot_be_drawn_are_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(prompt=["a dog"], **settings).validate()
    # settings the hires fix's sampler takes; the noise alone, an ancestral sampler's
    GenerateConfig(prompt=["a dog"], sigma_churn=0.5, hires_scale=2, hires_sampler="dpm2_karras").validate()
    GenerateConfig(prompt=["a dog"], sigma_noise=0.5, sampler="dpm++2s_a_karras").validate()


def test_generate_writes_the_sigma_churn_settings_as_the_web_ui_and_again_draws_them(sd1_dir, tmp_path):
    from textinv.again import again_config

    paths = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                    sampler="heun", sigma_churn=0.5, sigma_tmin=0.1, sigma_tmax=20.0,
                                    sigma_noise=0.9, metadata="full", out=str(tmp_path / "a")), progress=False)
    text = Image.open(paths[0]).text["parameters"]
    assert "Sigma churn: 0.5, Sigma tmin: 0.1, Sigma tmax: 20.0, Sigma noise: 0.9" in text
    config, keep = again_config(paths[0], {"out": str(tmp_path / "b")})
    assert (config.sigma_churn, config.sigma_tmin, config.sigma_tmax, config.sigma_noise) == (0.5, 0.1, 20.0, 0.9)
    again = generate(config, progress=False, keep_seeds=keep)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[0])))
    # at the defaults none is written, nor recorded (so an older textinv reads the record without a warning)
    plain = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                    sampler="heun", metadata="full", out=str(tmp_path / "c")), progress=False)[0]
    assert "Sigma" not in Image.open(plain).text["parameters"]
    assert not any(k.startswith("sigma_") for k in json.loads(Image.open(plain).text[RECORD_KEY])["settings"])
    # only the ones not at their default
    only = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                   sampler="euler", sigma_churn=0.3, out=str(tmp_path / "d")), progress=False)[0]
    assert "Sigma churn: 0.3," in Image.open(only).text["parameters"]
    assert "Sigma tmin" not in Image.open(only).text["parameters"]


def test_sigma_noise_scales_an_ancestral_samplers_noise_written_and_drawn_again(sd1_dir, tmp_path):
    """--sigma-noise on DPM2 a draws another picture than without, writes "Sigma noise" as the web UI does, and
    --again draws the same picture from it."""
    from textinv.again import again_config

    def draw(out, **noise):
        return generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=3, width=16, model=str(sd1_dir),
                                       sampler="dpm2_a", metadata="full", out=str(tmp_path / out), **noise),
                        progress=False)[0]

    scaled, plain = draw("a", sigma_noise=0.7), draw("b")
    assert "Sigma noise: 0.7" in Image.open(scaled).text["parameters"]
    assert "Sigma" not in Image.open(plain).text["parameters"]
    assert not np.array_equal(np.asarray(Image.open(scaled)), np.asarray(Image.open(plain)))
    config, keep = again_config(scaled, {"out": str(tmp_path / "c")})
    assert (config.sampler, config.sigma_noise) == ("dpm2_a", 0.7)
    again = generate(config, progress=False, keep_seeds=keep)[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(scaled)))


def test_again_reads_the_web_uis_sigma_churn_settings(sd1_dir, tmp_path):
    web = _picture(tmp_path / "a.png", "a cat\nSteps: 4, Sampler: Euler, Schedule type: Karras, Seed: 3, "
                                       "Size: 16x16, Sigma churn: 0.4, Sigma tmin: 0.2, Sigma tmax: 10.0, "
                                       "Sigma noise: 0.95")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert (config.sampler, config.sigma_churn, config.sigma_tmin, config.sigma_tmax, config.sigma_noise) == (
        "euler_karras", 0.4, 0.2, 10.0, 0.95) and "Sigma" not in said
    # DPM2 a's Sigma noise, which scales its ancestral noise there and here
    web = _picture(tmp_path / "b.png", "a cat\nSteps: 4, Sampler: DPM2 a, Seed: 3, Size: 16x16, Sigma noise: 0.5")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert (config.sampler, config.sigma_noise) == ("dpm2_a", 0.5) and "Sigma" not in said
    # DPM++ 3M SDE's and DPM++ SDE's, which scale their fresh noise there and here
    for sampler, ours in (("DPM++ 3M SDE", "dpm++3m_sde"), ("DPM++ SDE", "dpm++sde")):
        web = _picture(tmp_path / "c.png", f"a cat\nSteps: 4, Sampler: {sampler}, Seed: 3, Size: 16x16, "
                                           f"Sigma noise: 0.5")
        config, said = again_warned(web, {"model": str(sd1_dir)})
        assert (config.sampler, config.sigma_noise) == (ours, 0.5) and "Sigma" not in said
    # a sampler that takes none: named as not applied
    web = _picture(tmp_path / "d.png", "a cat\nSteps: 4, Sampler: DPM++ 2M, Seed: 3, Size: 16x16, Sigma noise: 0.5")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert config.sigma_noise == 1.0 and "not applied from its A1111 parameters: Sigma noise" in said
    # an ancestral sampler given beside Euler's: its noise kept, the churn's other settings drawn without, said
    config, said = again_warned(tmp_path / "a.png", {"model": str(sd1_dir), "sampler": "DPM2 a"})
    assert (config.sigma_churn, config.sigma_tmin, config.sigma_noise) == (0.0, 0.0, 0.95)
    assert "drawn at sigma churn 0.4, sigma tmin 0.2, sigma tmax 10.0" in said and "sigma noise" not in said
    # another sampler given beside it, which takes none: drawn without, said
    config, said = again_warned(tmp_path / "a.png", {"model": str(sd1_dir), "sampler": "DPM++ 2M"})
    assert config.sigma_churn == 0.0 and config.sigma_tmax is None and "drawn at sigma churn 0.4" in said


def test_discard_penultimate_sigma_is_drawn_written_and_read_as_the_web_uis(sd1_dir, tmp_path):
    """--discard-penultimate-sigma draws Euler on the longer schedule less its next-to-last sigma, writes "Discard
    penultimate sigma: True" as the web UI does (not for DPM2, which discards it always), and --again reads it from
    textinv's pictures and the web UI's."""
    from textinv.again import again_config

    def draw(out, **settings):
        return generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=3, width=16, model=str(sd1_dir),
                                       metadata="full", out=str(tmp_path / out), **settings), progress=False)[0]

    discarded = draw("a", sampler="euler", discard_penultimate_sigma=True)
    assert "Discard penultimate sigma: True" in Image.open(discarded).text["parameters"]
    plain = draw("b", sampler="euler")
    assert np.abs(np.asarray(Image.open(discarded)).astype(int) - np.asarray(Image.open(plain))).max() > 10
    assert "Discard" not in Image.open(plain).text["parameters"]
    assert "discard_penultimate_sigma" not in json.loads(Image.open(plain).text[RECORD_KEY])["settings"]
    config, keep = again_config(discarded, {"out": str(tmp_path / "c")})
    assert config.discard_penultimate_sigma
    again = generate(config, progress=False, keep_seeds=keep)[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(discarded)))
    dpm2 = draw("d", sampler="dpm2", discard_penultimate_sigma=True)
    assert "Discard" not in Image.open(dpm2).text["parameters"]
    assert np.array_equal(np.asarray(Image.open(dpm2)), np.asarray(Image.open(draw("e", sampler="dpm2"))))
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Sampler: Heun, Seed: 3, Size: 16x16, "
                                       "Discard penultimate sigma: True")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert config.sampler == "heun" and config.discard_penultimate_sigma and "Discard" not in said
    config, said = again_warned(web, {"model": str(sd1_dir), "sampler": "ddim"})
    assert not config.discard_penultimate_sigma and "next-to-last sigma discarded" in said
    web = _picture(tmp_path / "x.png", "a cat\nSteps: 4, Sampler: UniPC, Seed: 3, Size: 16x16, "
                                       "Discard penultimate sigma: True")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert not config.discard_penultimate_sigma and "not applied from its A1111 parameters: Discard" in said
    with pytest.raises(ConfigError, match=r"discard_penultimate_sigma=: sampler='ddim' takes no sigma schedule to "
                                          r"discard it from .* give one that does: euler, euler_a"):
        GenerateConfig(prompt=["a dog"], sampler="ddim", discard_penultimate_sigma=True).validate()


def test_restart_with_the_penultimate_sigma_discarded_is_drawn_written_and_read_as_the_web_uis(sd1_dir, tmp_path):
    """The web UI's "Always discard next-to-last sigma" reaches its Restart: textinv's draws it on the longer schedule
    less that sigma, writes "Discard penultimate sigma: True" and --again draws it again; where Restart would go down
    to sigma 0 twice (the model's spacing at 20 to 24 steps), it is refused before anything is drawn."""
    from textinv.again import again_config

    def draw(out, **settings):
        return generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, width=16, model=str(sd1_dir), metadata="full",
                                       out=str(tmp_path / out), **{"steps": 3, **settings}), progress=False)[0]

    discarded = draw("a", sampler="restart_karras", discard_penultimate_sigma=True)
    assert "Discard penultimate sigma: True" in Image.open(discarded).text["parameters"]
    plain = draw("b", sampler="restart_karras")  # (Heun's steps below 20: the last, to 0, moves the picture least)
    assert np.abs(np.asarray(Image.open(discarded)).astype(int) - np.asarray(Image.open(plain))).max() > 1
    config, keep = again_config(discarded, {"out": str(tmp_path / "c")})
    assert config.sampler == "restart_karras" and config.discard_penultimate_sigma
    again = generate(config, progress=False, keep_seeds=keep)[0]
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(discarded)))
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Sampler: Restart, Schedule type: Karras, Seed: 3, "
                                       "Size: 16x16, Discard penultimate sigma: True")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert config.sampler == "restart_karras" and config.discard_penultimate_sigma and "Discard" not in said
    with pytest.raises(ConfigError, match=r"sampler='restart': steps=22 with discard_penultimate_sigma=: "
                                          r"Restart's level nearest sigma 0.1 on this schedule is 0"):
        draw("d", sampler="restart", steps=22, discard_penultimate_sigma=True)
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").iterdir())


def test_the_refiners_switch_is_read_on_the_discarded_schedule():
    """With --discard-penultimate-sigma the steps' sigmas are the longer schedule's, so the refiner's switch (the
    first step whose noise level is past it) is found on those: Euler at 4 steps switches at 0.5 after its third step
    there, after its second on its own schedule."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from textinv.refiner import _refiner_start

    own = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=False, timestep_spacing="linspace")
    model, refiner = SimpleNamespace(pipeline=SimpleNamespace(scheduler=own)), SimpleNamespace(switch_at=0.5)
    assert _refiner_start(model, refiner, "euler", 4, 4) == (2, 4)
    assert _refiner_start(model, refiner, "euler", 4, 4, discard=True) == (3, 4)


def test_eta_is_the_first_samplers_kind_and_a_pass_of_the_other_kind_draws_at_its_own(sd1_dir, tmp_path,
                                                                                       monkeypatch):
    """The web UI's Eta (the ancestral samplers') and Eta DDIM are two settings: a hires pass with DDIM after Euler a
    at Eta 0.5 draws at Eta DDIM's 0, and a redraw with a sampler of the other kind at its own default. textinv
    drew both passes at --eta (the picture saying Eta alone), and --again --sampler euler_a of a DDIM picture at Eta
    DDIM 0.3 drew Euler a at 0.3."""
    from textinv import generate as generating

    calls, step = [], generating._pass  # (each pass's sampler and eta)
    monkeypatch.setattr(generating, "_pass", lambda *a, **kw: (calls.append((a[3], kw.get("eta"))), step(*a, **kw))[1])
    (png,) = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                     sampler="euler_a", eta=0.5, hires_scale=2, hires_sampler="ddim",
                                     out=str(tmp_path / "a")), progress=False)
    assert calls == [("euler_a", 0.5), ("ddim", None)]
    text = Image.open(png).text["parameters"]
    assert "Eta: 0.5" in text and "Eta DDIM" not in text
    ddim = generate(GenerateConfig(prompt=["a dog"], n=1, seed=4, steps=2, width=16, model=str(sd1_dir),
                                   sampler="ddim", eta=0.3, out=str(tmp_path / "b")), progress=False)[0]
    config, said = again_warned(ddim, {"model": str(sd1_dir), "sampler": "Euler a"})
    assert config.eta is None and "drawn at Eta DDIM 0.3, which Euler a does not take (its Eta is the web UI's other " \
                                  "setting): it draws at its own default" in said
    config, said = again_warned(ddim, {"model": str(sd1_dir), "sampler": "DDIM"})
    assert config.eta == 0.3 and "drawn at" not in said
    # a web UI picture's Eta DDIM of a DDIM hires pass after Euler a: --eta would draw it on Euler a's pass
    web = _picture(tmp_path / "w.png", "a cat\nSteps: 4, Sampler: Euler a, Seed: 3, Size: 16x16, Hires upscale: 2, "
                                       "Hires sampler: DDIM, Eta DDIM: 0.3")
    config, said = again_warned(web, {"model": str(sd1_dir)})
    assert config.eta is None and "not applied from its A1111 parameters: Eta DDIM" in said


def test_an_x_y_z_plots_eta_is_checked_against_each_cells_sampler(tmp_path):
    from textinv.xyz import plan

    ready = plan(GenerateConfig(prompt=["a dog"], eta=0.5, x="sampler=euler_a,ddim", out=str(tmp_path)).validate())
    assert [cell.sampler for cell in ready.cells] == ["euler_a", "ddim"]
    with pytest.raises(ConfigError, match=r"x='sampler=dpm\+\+2m': eta=0.5: sampler='dpm\+\+2m' takes no eta"):
        plan(GenerateConfig(prompt=["a dog"], eta=0.5, x="sampler=euler_a,dpm++2m", out=str(tmp_path)).validate())


def test_comfy_emphasis_draws_a_dynamic_prompts_escape_as_its_character(sd1_dir):
    """Under --emphasis comfy a `#`, `{`, `}`, a wildcard's `_` or a leading `//` written escaped (`\\#`: what
    `dynamic.literal` writes of a picture's prompt for --again, and how a prompt gives one now that `#` starts a
    comment) is the character, as the web UI's syntax reads it: ComfyUI's syntax kept the backslash, a token more
    (a ComfyUI picture's `#` redrew as `\\#`, and no prompt could draw a `#`)."""
    from textinv.dynamic import jobs, literal
    from textinv.emphasis import comfy_syntax, comfy_token_chunks

    tok = load_model(sd1_dir).tokenizer
    for written in ["a #1 {red} car", "__init__ a b", "// a b", "(a #1:1.2) \\(x\\) C:\\dir"]:
        (job,) = jobs([literal(written)], "", [0], None, False, 1)
        assert comfy_token_chunks(tok, comfy_syntax(job.prompt)) == comfy_token_chunks(tok, comfy_syntax(written))


LONG = "a photo of a " + "dog " * 80  # (two chunks of 77)


def _drawn_with_unet_calls(model, prompt: str, negative: str, pad_conds: str):
    """`render`'s picture of `prompt` against `negative` under `pad_conds` (two Euler steps at 16x16), and each UNet
    call it made: (args, kwargs, output)."""
    calls = []
    hook = model.unet.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs, out)),
                                            with_kwargs=True)
    drawn = render(model, [prompt], [0], steps=2, width=16, guidance=7.5, negative_prompt=negative, sampler="euler",
                   pad_conds=pad_conds)[0]
    hook.remove()
    return drawn, calls


def _assert_rows_are_the_unets_own(model, calls, texts) -> None:
    """Each of the UNet `calls`' rows (`_drawn_with_unet_calls`: the negative's, then the prompt's) is the UNet's
    output for that row's text alone (`texts`: their encodings, in that order)."""
    assert calls  # (none: nothing checked)
    for args, _, out in calls:
        own = [model.unet(args[0][i:i + 1], args[1], encoder_hidden_states=h, return_dict=False)[0]
               for i, h in enumerate(texts)]
        torch.testing.assert_close(out[0], torch.cat(own), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prompt, negative, padded", [(LONG, "ugly", 0), ("a dog", "ugly, " * 50, 1)])
def test_pad_cond_uncond_reads_the_prompt_and_its_negative_at_the_longers_length(sd1_dir, prompt, negative, padded):
    """--pad-cond-uncond, the web UI's "Pad prompt/negative prompt to be same length" (CFGDenoiser.pad_cond_uncond):
    the shorter of the prompt and its negative is padded with the empty prompt's encoding to the longer's chunks and
    the UNet reads both whole, so a prompt of 2 chunks and a negative of 1 draw another picture than at their own
    lengths (the default). Each UNet row is the UNet's output for the padded text (`padded`: the negative, 0, or the
    prompt, 1)."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    drawn, calls = _drawn_with_unet_calls(model, prompt, negative, "empty")
    chunks = max(encode_prompts(model, [text])[0].shape[1] // 77 for text in (negative, prompt))
    texts = [encode_prompts(model, [text], chunks)[0] for text in (negative, prompt)]  # (padded with empty chunks)
    for _, kwargs, _ in calls:
        assert kwargs.get("encoder_attention_mask") is None  # (nothing hidden: both read whole)
    _assert_rows_are_the_unets_own(model, calls, texts)
    plain = render(model, [prompt], [0], steps=2, width=16, guidance=7.5, negative_prompt=negative, sampler="euler")[0]
    assert not np.array_equal(np.asarray(drawn), np.asarray(plain))


def test_render_refuses_a_pad_conds_it_does_not_know(sd1_dir):
    with pytest.raises(ConfigError, match=r"pad_conds must be one of .* got True"):
        render(fresh_model(sd1_dir), ["a dog"], [0], steps=1, width=16, pad_conds=True)


def test_pad_cond_uncond_changes_nothing_where_the_lengths_match(sd1_dir):
    """A prompt and a negative of one chunk each, or of two each, need no padding: the same picture either way."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    for prompt, negative in (("a dog", "ugly"), (LONG, "a photo of a " + "cat " * 80)):
        assert encode_prompts(model, [prompt])[0].shape == encode_prompts(model, [negative])[0].shape
        drawn = [render(model, [prompt], [0], steps=2, width=16, guidance=7.5, negative_prompt=negative,
                        sampler="euler", pad_conds="empty" if pad else None)[0] for pad in (False, True)]
        assert np.array_equal(np.asarray(drawn[0]), np.asarray(drawn[1])), prompt


def test_pad_cond_uncond_pads_each_picture_and_sub_prompt_as_the_web_ui(sd1_dir):
    """Composable diffusion (AND): a picture's sub-prompts are read at its longest's length (the web UI's
    stack_conds), and with padding the negative is read at it too, where it is shorter; in a batch each picture's
    rows are padded to its own longer, so a picture is its own at any batch size."""
    from textinv.conditioning import _layout, _padded_lengths

    assert _padded_lengths([[2, 1]], [[1, 1]], [0, 1]) == ([[2, 1]], [[2, 1]])  # (two pictures)
    assert _padded_lengths([[1, 1]], [[3]], [0, 0]) == ([[3, 3]], [[3]])  # (one picture of two sub-prompts)
    model = fresh_model(sd1_dir)
    at = _layout(model, [LONG + " AND a cat", "a cat"], "ugly", 2, pad="empty")
    # (picture 0: its sub-prompts and negative at 2 chunks; picture 1's at 1, the batch's padding hidden)
    assert at.lengths == ([[2, 2, 1]], [[2, 1]], 2) and at.padded
    alone = render(model, ["a cat"], [1], steps=2, width=16, negative_prompt="ugly", sampler="euler",
                   pad_conds="empty")[0]
    batch = render(model, [LONG, "a cat"], [0, 1], steps=2, width=16, negative_prompt="ugly", sampler="euler",
                   pad_conds="empty")[1]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(batch, np.int16)).max() <= 1


def test_pad_cond_uncond_is_written_and_read_back_as_the_web_ui_does(sd1_dir, tmp_path):
    """The web UI writes "Pad conds: True" (or "Pad conds v0: True") where it padded (at a pass's last step), and
    its infotext reading sets pad_cond_uncond (pad_cond_uncond_v0) from it; --again reads it back, from textinv's
    pictures and the web UI's."""
    from textinv.again import again_config

    def draw(name, negative, **pad):
        return generate(GenerateConfig(prompt=[LONG], negative_prompt=negative, n=1, seed=2, steps=2, width=16,
                                       model=str(sd1_dir), metadata="full", out=str(tmp_path / name), **pad),
                        progress=False)[0]

    padded = draw("padded", "ugly", pad_cond_uncond=True)
    assert "Pad conds: True" in Image.open(padded).text["parameters"]
    assert again_config(padded, {"out": str(tmp_path / "b")})[0].pad_cond_uncond
    same = draw("same", "a photo of a " + "cat " * 80, pad_cond_uncond=True)  # (nothing padded: unsaid, as there)
    assert "Pad conds" not in Image.open(same).text["parameters"]
    assert "Pad conds" not in Image.open(draw("off", "ugly")).text["parameters"]
    web = _picture(tmp_path / "w.png", "a dog\nSteps: 4, Seed: 3, Size: 16x16, Pad conds: True, Version: v1.9.0")
    assert again_warned(web, {"model": str(sd1_dir)})[0].pad_cond_uncond is True
    v0 = draw("v0", "ugly", pad_cond_uncond_v0=True)
    assert "Pad conds v0: True" in Image.open(v0).text["parameters"]
    assert "Pad conds:" not in Image.open(v0).text["parameters"]
    assert again_config(v0, {"out": str(tmp_path / "c")})[0].pad_cond_uncond_v0
    web = _picture(tmp_path / "w.png", "a dog\nSteps: 4, Seed: 3, Size: 16x16, Pad conds v0: True, Version: v1.9.0")
    assert again_warned(web, {"model": str(sd1_dir)})[0].pad_cond_uncond_v0 is True
    # the web UI's backcompat: a DDIM or PLMS picture from before 1.6 is redrawn with it
    for version, sampler, expected in [("v1.5.2", "DDIM", True), ("v1.5.2", "PLMS", True), ("v1.6.0", "DDIM", False),
                                       ("v1.5.2", "Euler", False), (None, "DDIM", False)]:
        field = f", Version: {version}" if version else ""
        web = _picture(tmp_path / "w.png", f"a dog\nSteps: 4, Sampler: {sampler}, Seed: 3, Size: 16x16{field}")
        assert again_warned(web, {"model": str(sd1_dir)})[0].pad_cond_uncond_v0 is expected, (version, sampler)


@pytest.mark.parametrize("hires, padded", [({}, False), ({"hires_prompt": LONG}, True),
                                            ({"hires_negative_prompt": "ugly, " * 50}, True)])
def test_pad_cond_uncond_is_written_where_the_hires_fixs_own_prompts_pad_its_pass(sd1_dir, tmp_path, hires, padded):
    """"Pad conds: True" is read at each pass's last step: a prompt and negative of one chunk each pad nothing in
    the first pass, but the hires fix's own prompt (or negative) of two chunks pads its pass."""
    path = generate(GenerateConfig(prompt=["a dog"], negative_prompt="ugly", n=1, seed=2, steps=2, width=16,
                                   hires_scale=2, pad_cond_uncond=True, model=str(sd1_dir), metadata="full",
                                   out=str(tmp_path / "a"), **hires), progress=False)[0]
    assert ("Pad conds: True" in Image.open(path).text["parameters"]) is padded


@pytest.mark.parametrize("prompt, negative", [(LONG, "ugly"), ("a dog", "ugly, " * 50)])
def test_pad_cond_uncond_v0_makes_the_negative_the_prompts_length(sd1_dir, prompt, negative):
    """--pad-cond-uncond-v0, the web UI's "Pad prompt/negative prompt (v0)" (CFGDenoiser.pad_cond_uncond_v0, its
    DDIM's padding before 1.6): a shorter negative gets its last vector repeated to the prompt's length, a longer one
    is cut to it; the prompt is read at its own. Each UNet row is the UNet's output for that text."""
    from textinv.conditioning import encode_prompts

    model = fresh_model(sd1_dir)
    drawn, calls = _drawn_with_unet_calls(model, prompt, negative, "v0")
    cond, uncond = encode_prompts(model, [prompt])[0], encode_prompts(model, [negative])[0]
    if uncond.shape[1] < cond.shape[1]:
        uncond = torch.cat([uncond, uncond[:, -1:].expand(1, cond.shape[1] - uncond.shape[1], -1)], dim=1)
    uncond = uncond[:, :cond.shape[1]]
    _assert_rows_are_the_unets_own(model, calls, (uncond, cond))
    for other in (None, "empty"):
        plain = render(model, [prompt], [0], steps=2, width=16, guidance=7.5, negative_prompt=negative,
                       sampler="euler", pad_conds=other)[0]
        assert not np.array_equal(np.asarray(drawn), np.asarray(plain)), other


@pytest.mark.parametrize("pad", ["empty", "v0"])
def test_pad_cond_uncond_pads_each_picture_to_its_own_negative_in_a_batch_of_several(sd1_dir, pad):
    """Pictures of different negatives share a call (each row guided by its own picture's negative), each padded to
    its own prompt and negative: a prompt shorter than its negative, one longer, one as long; each picture is the
    one drawn alone, which the padding changes."""
    model = fresh_model(sd1_dir)
    prompts, negatives = ["a dog", LONG, "a cat"], ["ugly, " * 50, "ugly", "blurry"]

    def drawn(prompts, seeds, negative, pad_conds):
        return [np.asarray(img, np.int16) for img in render(model, prompts, seeds, steps=2, width=16, guidance=7.5,
                                                            negative_prompt=negative, sampler="euler",
                                                            pad_conds=pad_conds)]

    together = drawn(prompts, [0, 1, 2], negatives, pad)
    for i, (prompt, negative) in enumerate(zip(prompts, negatives)):
        (alone,) = drawn([prompt], [i], negative, pad)
        assert np.abs(together[i] - alone).max() <= 1, i
        if i < 2:  # (padded: another picture than at their own lengths)
            assert not np.array_equal(alone, drawn([prompt], [i], negative, None)[0]), i
