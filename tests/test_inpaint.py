"""`generate --init-image PICTURE --mask MASK`: inpainting as the web UI's img2img Inpaint upload draws it."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fresh_model
from textinv import inpaint, refine
from textinv.config import GenerateConfig
from textinv.data import prepare_image
from textinv.errors import ConfigError
from textinv.formats import RECORD_KEY
from textinv.generate import generate, render, seed_noise
from textinv.inpaint import Inpaint
from textinv.models import load_model


def _picture(size=(32, 32), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _square_mask(size=(32, 32), box=(8, 8, 24, 24)):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_a_mask_keeps_the_init_pictures_pixels_exactly_and_redraws_the_rest(sd1_dir):
    model = fresh_model(sd1_dir)
    init, mask = _picture(), _square_mask()
    white = np.asarray(mask) > 0
    for fill in inpaint.FILLS:
        drawn = np.asarray(render(model, ["a photo of a dog"], [3], steps=4, width=32, height=32, start=[init],
                                  denoise=0.9, inpaint=Inpaint(mask, blur=0, fill=fill))[0])
        assert np.array_equal(drawn[~white], np.asarray(init)[~white]), fill
        assert (drawn[white] != np.asarray(init)[white]).mean() > 0.9, fill
    # blurred, the seam is soft: pixels just outside the mask's edge are a mix, far from it still the picture's
    drawn = np.asarray(render(model, ["a photo of a dog"], [3], steps=4, width=32, height=32, start=[init],
                              denoise=0.9, inpaint=Inpaint(mask, blur=2))[0])
    assert np.array_equal(drawn[:2], np.asarray(init)[:2])
    assert not np.array_equal(drawn[6:8, 8:24], np.asarray(init)[6:8, 8:24])


def test_the_noised_blend_keeps_the_init_pictures_latents_noised_to_each_steps_level(sd1_dir):
    """--inpaint-blend noised: every UNet call reads, outside the mask, the init picture's latents noised with the
    pass's noise to that call's timestep (DDIM: the UNet's input is the latents as they are)."""
    model = fresh_model(sd1_dir)
    init, mask = _picture(), _square_mask()
    calls = []
    hook = model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0][:1].clone(), args[1].flatten()[:1].clone())), with_kwargs=True)
    render(model, ["a photo of a dog"], [3], steps=6, width=32, height=32, start=[init], denoise=0.8,
           sampler="ddim", inpaint=Inpaint(mask, blur=0, blend="noised"))
    hook.remove()
    pipe = model.pipeline
    latents = refine.encode(pipe.vae, torch.stack([prepare_image(init, 0, size=(32, 32))]))
    noise = seed_noise([torch.Generator().manual_seed(3)], tuple(latents.shape[1:]))
    kept = ~inpaint.prepare(Inpaint(mask, blur=0), init, (32, 32), pipe.vae_scale_factor).redraw.bool()  # (1, h, w)
    assert len(calls) == 5 and kept.any() and (~kept).any()
    for k, (sample, t) in enumerate(calls):
        expected = pipe.scheduler.add_noise(latents, noise, t.long())
        assert torch.allclose(sample[:, :, kept[0]], expected[:, :, kept[0]], atol=1e-5)
        # (the mask's part starts there too, then goes its own way)
        assert torch.allclose(sample[:, :, ~kept[0]], expected[:, :, ~kept[0]], atol=1e-5) == (k == 0)


def _kept_part(model, init, mask):
    """The init picture's latents (1, C, h, w) and the latent mask's kept part (h, w)."""
    latents = refine.encode(model.pipeline.vae, torch.stack([prepare_image(init, 0, size=(32, 32))]))
    kept = ~inpaint.prepare(Inpaint(mask, blur=0), init, (32, 32), model.pipeline.vae_scale_factor).redraw.bool()
    return latents, kept[0]


def _drawn_latents(model, sampler, monkeypatch):
    """The init picture's latents, the latent mask's kept part and the pass's latents after its last step, before
    and after the web UI's last blend (`keep_init`), drawn with `sampler` and the default blend."""
    init, mask = _picture(), _square_mask()
    latents, kept = _kept_part(model, init, mask)
    before, after = [], []
    real = inpaint.keep_init

    def spied(init_latents, redraw):
        keep = real(init_latents, redraw)

        def step(pipe, i, t, tensors):
            out = keep(pipe, i, t, tensors)
            before.append(tensors["latents"].clone())
            after.append(out.get("latents", tensors["latents"]).clone())
            return out
        return step

    monkeypatch.setattr(inpaint, "keep_init", spied)
    render(model, ["a photo of a dog"], [3], steps=8, width=32, height=32, start=[init], denoise=0.9,
           sampler=sampler, inpaint=Inpaint(mask, blur=0))
    assert before, "the pass never put the init latents back as the web UI does at its end (keep_init)"
    return latents, kept, before[-1], after[-1]


# k-diffusion samplers of each kind: first order, ancestral, second order (Heun, DPM2 at its midpoints, DPM++ SDE),
# multistep, on the model's spacing and on Karras's; then the web UI's timestep samplers
@pytest.mark.parametrize("sampler", ["euler", "euler_a", "heun", "dpm2", "dpm++2s_a", "dpm++sde", "dpm++2m_karras",
                                     "lms", "dpm++3m_sde", "ddpm", "ddim", "plms", "unipc"])
def test_the_denoised_blend_carries_the_kept_latents_to_the_init_pictures_with_every_sampler(sd1_dir, sampler,
                                                                                              monkeypatch):
    """The default blend, the web UI's: the kept part of every step's denoised estimate is the init latents, so the
    sampler's own steps end there (all but the timestep samplers, before the web UI's last blend, `keep_init`);
    after it the kept latents are the init picture's exactly."""
    if sampler == "dpm++sde":
        pytest.importorskip("torchsde")
    latents, kept, before, after = _drawn_latents(fresh_model(sd1_dir), sampler, monkeypatch)
    assert torch.equal(after[:, :, kept], latents[:, :, kept])  # (the web UI's last blend)
    assert (after - latents)[:, :, ~kept].abs().mean() > 0.1  # (the rest drawn anew)
    carried = (before - latents)[:, :, kept].abs().mean()
    if sampler in ("ddim", "plms", "unipc"):  # (the web UI blends the UNet's input for these: nothing is carried)
        assert carried > 0.1
    else:  # (the latents spread 0.05 about their mean: held to within 1e-5)
        assert carried < 1e-5, carried


def test_the_denoised_blend_holds_a_v_prediction_models_kept_latents(sd2_dir, monkeypatch):
    latents, kept, before, _ = _drawn_latents(fresh_model(sd2_dir), "heun", monkeypatch)
    assert (before - latents)[:, :, kept].abs().mean() < 1e-5


def test_with_a_timestep_sampler_the_unet_reads_the_init_latents_in_the_kept_part(sd1_dir):
    """DDIM, PLMS and UniPC: as the web UI's (sd_samplers_timesteps.py, mask_before_denoising), each UNet call reads
    the init picture's latents themselves outside the mask, not noised; the mask's part is the sampler's own."""
    model = fresh_model(sd1_dir)
    init, mask = _picture(), _square_mask()
    latents, kept = _kept_part(model, init, mask)
    calls = []
    hook = model.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].clone()),
                                                with_kwargs=True)
    render(model, ["a photo of a dog"], [3], steps=6, width=32, height=32, start=[init], denoise=0.8,
           sampler="ddim", inpaint=Inpaint(mask, blur=0))
    hook.remove()
    assert len(calls) == 5
    for sample in calls:  # (uncond and cond rows alike)
        assert torch.equal(sample[:, :, kept], latents.expand(2, -1, -1, -1)[:, :, kept])
        assert not torch.allclose(sample[:, :, ~kept], latents.expand(2, -1, -1, -1)[:, :, ~kept])


def test_the_noise_level_is_asked_of_the_scheduler_in_float32():
    """Apple's MPS has no float64, and DPM2 keeps its midpoint sigmas on the device: a float64 1 divided by one
    there fails. Asked in float32 (the scheduler's own precision), the level is as exact."""
    class OnMps:
        def scale_model_input(self, sample, timestep):
            if sample.dtype == torch.float64:
                raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
                                "float64")
            return sample / torch.tensor(2.0 ** 2 + 1) ** 0.5  # (sigma 2)

    alpha, sigma = inpaint.input_level(OnMps(), torch.tensor(500))
    assert alpha == pytest.approx(5 ** -0.5) and sigma == pytest.approx(2 * 5 ** -0.5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_blending_cond_and_uncond_before_guidance_blends_the_guided_denoised_estimate(prediction_type):
    """The web UI blends the guided denoised estimate; `kept_prediction` blends each UNet row before guidance.
    Guidance is affine in the prediction and the prediction in x0, so both give x0 = init (1 - m) + x0 m, with a
    soft mask too."""
    torch.manual_seed(0)
    alpha, sigma = 0.6, 0.8
    x, init, cond, uncond = (torch.randn(2, 4, 3, 3) for _ in range(4))
    redraw = torch.rand(2, 1, 3, 3)

    def x0(prediction):  # (as a scheduler takes x0 back from the prediction)
        return {"epsilon": (x - sigma * prediction) / alpha, "v_prediction": alpha * x - sigma * prediction,
                "sample": prediction}[prediction_type]

    def blended(prediction):
        return inpaint.kept_prediction(prediction, x, init, redraw, alpha, sigma, prediction_type)

    guided = blended(uncond) + 7.5 * (blended(cond) - blended(uncond))
    plain = uncond + 7.5 * (cond - uncond)
    assert torch.allclose(x0(guided), init * (1 - redraw) + x0(plain) * redraw, atol=1e-5)
    assert torch.allclose(guided, blended(plain), atol=1e-5)


def test_the_denoised_blend_draws_otherwise_than_the_noised_one_with_an_inpainting_model_too(sd1_dir,
                                                                                              inpainting_dir):
    """The web UI blends the denoised estimate whatever the model (its CFG denoiser takes the mask for an
    inpainting model as for any other), so an inpainting model draws each blend as it says."""
    init, mask = _picture(), _square_mask()
    white = np.asarray(mask) > 0

    def drawn(path, blend):
        return np.asarray(render(load_model(path, inpainting=True), ["a photo of a dog"], [3], steps=4, width=32,
                                 height=32, start=[init], denoise=0.9, inpaint=Inpaint(mask, blur=0, blend=blend))[0])

    denoised, noised = drawn(sd1_dir, "denoised"), drawn(sd1_dir, "noised")
    assert np.array_equal(denoised[~white], noised[~white])  # (both the init picture's, pasted back)
    assert (denoised[white] != noised[white]).mean() > 0.5
    denoised, noised = drawn(inpainting_dir, "denoised"), drawn(inpainting_dir, "noised")
    assert np.array_equal(denoised[~white], noised[~white])
    assert (denoised[white] != noised[white]).mean() > 0.5


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_an_inpainting_model_holds_the_kept_latents_as_any_model_does(inpainting_dir, sampler, monkeypatch):
    """With an inpainting model the UNet reads 9 channels, the latents first: the denoised blend holds the kept
    part of the denoised estimate (Euler) or of the UNet's latents (DDIM) to the init picture's, as with any
    model."""
    model = load_model(inpainting_dir, inpainting=True)
    if sampler == "euler":
        latents, kept, before, after = _drawn_latents(model, sampler, monkeypatch)
        assert (before - latents)[:, :, kept].abs().mean() < 1e-5
        assert torch.equal(after[:, :, kept], latents[:, :, kept])
        return
    latents, kept = _kept_part(model, _picture(), _square_mask())
    calls = []
    hook = model.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].clone()),
                                                with_kwargs=True)
    render(model, ["a photo of a dog"], [3], steps=6, width=32, height=32, start=[_picture()], denoise=0.8,
           sampler=sampler, inpaint=Inpaint(_square_mask(), blur=0))
    hook.remove()
    assert len(calls) == 5
    for sample in calls:  # (the latents, before the mask and the masked picture's latents are laid after them)
        assert torch.equal(sample[:, :, kept], latents.expand(2, -1, -1, -1)[:, :, kept])


def test_the_blend_hooks_are_gone_after_the_pass_even_one_that_fails(sd1_dir):
    """The denoised blend hooks the UNet for its pass only: the next picture drawn in the same process (an X/Y/Z
    plot's next cell) is drawn as if no inpainting had been, after a pass that stopped halfway too."""
    model = fresh_model(sd1_dir)
    init, mask = _picture(), _square_mask()

    def plain():
        return np.asarray(render(model, ["a dog"], [3], steps=3, width=32, height=32, start=[init], denoise=0.8,
                                 sampler="euler")[0])

    first, hooks = plain(), (list(model.unet._forward_pre_hooks), list(model.unet._forward_hooks))
    for sampler in ("euler", "ddim"):  # (the output hook, the input one)
        render(model, ["a dog"], [3], steps=3, width=32, height=32, start=[init], denoise=0.8, sampler=sampler,
               inpaint=Inpaint(mask, blur=0))
    calls = []

    def stop(module, args, kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")

    handle = model.unet.register_forward_pre_hook(stop, with_kwargs=True)
    with pytest.raises(RuntimeError, match="stopped"):
        render(model, ["a dog"], [3], steps=3, width=32, height=32, start=[init], denoise=0.8, sampler="euler",
               inpaint=Inpaint(mask, blur=0))
    handle.remove()
    assert (list(model.unet._forward_pre_hooks), list(model.unet._forward_hooks)) == hooks
    assert np.array_equal(plain(), first)


def test_the_noised_blend_is_written_read_back_and_redrawn_bit_for_bit(sd1_dir, tmp_path):
    from textinv.again import again_config

    room, mask = _files(tmp_path)
    path = generate(GenerateConfig(prompt=["a dog"], n=1, steps=3, model=str(sd1_dir), init_image=room, mask=mask,
                                   inpaint_blend="noised", metadata="full", out=str(tmp_path / "a")),
                    progress=False)[0]
    text = Image.open(path).text
    assert text["parameters"].endswith("Denoising strength: 0.75, Mask blur: 4, Inpaint blend: noised")
    assert json.loads(text[RECORD_KEY])["settings"]["inpaint_blend"] == "noised"
    config, keep = again_config(path, {"out": str(tmp_path / "b")})
    assert config.inpaint_blend == "noised"
    again = generate(config, keep_seeds=keep, progress=False)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(path)))
    # a picture inpainted before the choice was drawn noised (all there was); its record says nothing of it
    record = json.loads(text[RECORD_KEY])
    del record["settings"]["inpaint_blend"]
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text(RECORD_KEY, json.dumps(record))
    Image.open(path).save(tmp_path / "old.png", pnginfo=info)
    config, _ = again_config(tmp_path / "old.png", {"out": str(tmp_path / "c")})
    assert config.inpaint_blend == "noised"


def test_only_masked_redraws_the_masks_box_at_the_drawn_size_and_pastes_it_back(sd1_dir):
    model = fresh_model(sd1_dir)
    init, mask = _picture((64, 48)), _square_mask((64, 48), (40, 8, 48, 16))
    sizes = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    drawn = render(model, ["a photo of a dog"], [3], steps=2, width=16, height=16, start=[init], denoise=0.9,
                   inpaint=Inpaint(mask, blur=0, area="masked", padding=4))[0]
    hook.remove()
    factor = model.pipeline.vae_scale_factor
    assert drawn.size == (64, 48)  # (the picture at its own size)
    assert set(sizes) == {(16 // factor, 16 // factor)}  # (the box drawn at the run's size)
    # the mask's box, 4 pixels wider each side, is square as the drawn size: the box the picture changes in
    assert inpaint.crop_box(mask, 4, (16, 16)) == (36, 4, 52, 20)
    a, b = np.asarray(drawn), np.asarray(init)
    changed = np.argwhere((a != b).any(axis=2))
    assert changed.min(axis=0).tolist() >= [8, 40] and changed.max(axis=0).tolist() <= [15, 47]
    assert (a[8:16, 40:48] != b[8:16, 40:48]).any(axis=2).mean() > 0.9


def test_the_crop_box_is_widened_to_the_drawn_sizes_proportions_inside_the_picture():
    mask = _square_mask((100, 50), (90, 10, 100, 20))
    assert inpaint.crop_box(mask, 0, (20, 10)) == (80, 10, 100, 20)  # (twice as wide as tall, moved inside)
    assert inpaint.crop_box(mask, 0, (10, 20)) == (90, 5, 100, 25)
    assert inpaint.crop_box(mask, 100, (10, 10)) == (0, 0, 100, 50)  # (padding up to the picture, then cut to it)


def test_a_mask_is_read_by_its_transparency_or_else_its_luminance(tmp_path):
    grey = Image.new("L", (8, 8), 100)
    grey.paste(200, (0, 0, 4, 8))
    grey.save(tmp_path / "grey.png")
    assert np.asarray(inpaint.read_mask(tmp_path / "grey.png"))[0].tolist() == [255] * 4 + [0] * 4
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # black, see-through except for an opaque stroke
    rgba.paste((0, 0, 0, 255), (0, 0, 8, 2))
    rgba.save(tmp_path / "alpha.png")
    assert np.asarray(inpaint.read_mask(tmp_path / "alpha.png"))[:, 0].tolist() == [255] * 2 + [0] * 6
    opaque = Image.new("RGBA", (8, 8), (255, 255, 255, 255))  # (opaque everywhere: by its colours)
    opaque.paste((0, 0, 0, 255), (0, 0, 8, 4))
    opaque.save(tmp_path / "opaque.png")
    assert np.asarray(inpaint.read_mask(tmp_path / "opaque.png"))[:, 0].tolist() == [0] * 4 + [255] * 4


def test_the_mask_blur_is_a_gaussian_of_that_sigma_and_inversion_comes_first():
    mask = _square_mask((40, 40), (20, 0, 40, 40))
    blurred = np.asarray(inpaint.blur(mask, 4)).astype(int)
    row = blurred[5]
    # (the edge between pixels 19 and 20: a Gaussian of sigma 4 half a pixel from its middle has 45% on one side)
    assert row[0] == 0 and row[-1] == 255 and row[19] == 115 and row[20] == 140
    assert (np.diff(row) >= 0).all() and (blurred == row).all()  # (along the width only: every row alike)
    assert np.array_equal(np.asarray(inpaint.blur(mask, 0)), np.asarray(mask))
    flipped = np.asarray(Inpaint(mask, blur=4, invert=True).for_picture((40, 40))).astype(int)
    assert np.abs(flipped - (255 - blurred)).max() <= 1


def test_fill_paints_the_masked_part_from_the_colours_around_it_and_latent_fills_replace_its_latents():
    picture = Image.new("RGB", (32, 32), (200, 20, 20))
    picture.paste((0, 0, 255), (8, 8, 24, 24))
    filled = np.asarray(inpaint.fill(picture, _square_mask())).astype(int)
    assert np.abs(filled[16, 16] - [200, 20, 20]).max() <= 2  # (the blue square gone: the red around it)
    latents, noise = torch.ones(1, 4, 4, 4), torch.full((1, 4, 4, 4), 7.0)
    redraw = torch.zeros(1, 1, 4, 4)
    redraw[..., 1:3, 1:3] = 1
    assert inpaint.start_latents(latents, redraw, "original", noise).equal(latents)
    assert inpaint.start_latents(latents, redraw, "latent-nothing", noise)[0, 0].tolist()[1] == [1, 0, 0, 1]
    assert inpaint.start_latents(latents, redraw, "latent-noise", noise)[0, 0].tolist()[1] == [1, 7, 7, 1]


def test_the_latent_fills_encode_the_filled_picture_as_the_web_ui_does():
    """The web UI paints the masked part from the colours around it for every Masked content but original, so
    the latents kept at the mask's edge, encoded with some of the masked part in view, are those of the filled
    picture there too."""
    picture = Image.new("RGB", (32, 32), (200, 20, 20))
    picture.paste((0, 0, 255), (8, 8, 24, 24))
    mask = Inpaint(_square_mask(), blur=0)

    def redrawn(fill):
        return np.asarray(inpaint.prepare(replace(mask, fill=fill), picture, (32, 32), 8).picture)

    assert np.array_equal(redrawn("original"), np.asarray(picture))
    assert np.array_equal(redrawn("latent-noise"), redrawn("fill"))
    assert np.array_equal(redrawn("latent-nothing"), redrawn("fill"))


@pytest.mark.parametrize("settings, message", [
    ({"mask": "m.png"}, r"mask='m.png' masks a picture: give the picture to redraw with init_image="),
    ({"init_image": __file__, "mask": "nowhere.png"}, r"mask='nowhere.png' does not exist"),
    ({"mask_blur": 8, "inpaint_fill": "fill"}, r"mask_blur= and inpaint_fill= set inpainting, which mask= turns"),
    ({"mask_invert": True}, r"mask_invert= set inpainting, which mask= turns on"),
    ({"init_image": __file__, "mask": __file__, "mask_blur": -1}, r"mask_blur= must be 0 or more pixels, got -1"),
    ({"init_image": __file__, "mask": __file__, "masked_padding": 8}, r"masked_padding= widens the box inpaint_area="),
    ({"init_image": __file__, "mask": __file__, "inpaint_fill": "noise"}, r"inpaint_fill='noise' is not one of"),
    ({"inpaint_blend": "noised"}, r"inpaint_blend= set inpainting, which mask= turns on"),
    ({"init_image": __file__, "mask": __file__, "inpaint_blend": "x0"}, r"inpaint_blend='x0' is not one of"),
])
def test_mask_settings_that_cannot_be_drawn_are_refused_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(prompt=["a dog"], **settings).validate()


def test_a_bad_mask_is_said_before_the_model_loads(tmp_path, monkeypatch):
    from textinv import generate as generate_module

    _picture().save(tmp_path / "room.png")
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    Image.new("L", (32, 32), 0).save(tmp_path / "black.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")
    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))

    def draw(mask, **settings):
        generate(GenerateConfig(prompt=["a dog"], init_image=str(tmp_path / "room.png"), mask=str(tmp_path / mask),
                                out=str(tmp_path / "o"), **settings), progress=False)

    with pytest.raises(ConfigError, match=r"mask=.*bad.png' cannot be read: .*give a picture, white where"):
        draw("bad.png")
    (tmp_path / "masks").mkdir()  # (a folder of masks, as the web UI's batch tab takes: was said not to exist)
    with pytest.raises(ConfigError, match=r"mask=.*masks' is a folder; give one mask picture, white where the picture "
                                          r"is redrawn \(it masks each picture of an init_image= folder alike\)"):
        draw("masks")
    with pytest.raises(ConfigError, match=r"mask=.*black.png' has nothing white: nothing would be redrawn"):
        draw("black.png")
    with pytest.raises(ConfigError, match=r"mask=.*white.png' has nothing black \(mask_invert="):
        draw("white.png", mask_invert=True)
    # a soft mask, grey at most 128 where it is painted: the brightest grey is named as read black
    Image.new("L", (32, 32), 128).save(tmp_path / "grey.png")
    with pytest.raises(ConfigError, match=r"grey.png' has nothing white \(its brightest grey, 128 of 255, is read as "
                                          r"black: only above 128 is white\): nothing would be redrawn"):
        draw("grey.png")
    Image.new("L", (32, 32), 129).save(tmp_path / "light.png")
    with pytest.raises(ConfigError, match=r"light.png' has nothing black \(mask_invert=.*; its darkest grey, 129 of "
                                          r"255, is read as white: only 128 and below is black\)"):
        draw("light.png", mask_invert=True)
    Image.new("LA", (32, 32), (255, 100)).save(tmp_path / "faint.png")  # (a see-through stroke: by its opacity)
    with pytest.raises(ConfigError, match=r"faint.png' has nothing white \(its highest opacity, 100 of 255, is read as "
                                          r"black: only above 128 is white\)"):
        draw("faint.png")


def test_kohyas_mask_path_is_answered_with_mask():
    from textinv.foreign import foreign_hint

    assert "textinv calls it --mask" in foreign_hint("--mask_path", "generate")


def _files(tmp_path, size=(32, 32)):
    _picture(size).save(tmp_path / "room.png")
    _square_mask(size, (8, 8, 24, 24)).save(tmp_path / "mask.png")
    return str(tmp_path / "room.png"), str(tmp_path / "mask.png")


def test_an_inpainted_pictures_text_is_the_web_uis_and_again_redraws_it_bit_for_bit(sd1_dir, tmp_path):
    from textinv.again import again_config

    room, mask = _files(tmp_path)
    paths = generate(GenerateConfig(prompt=["a dog"], n=2, steps=3, model=str(sd1_dir), init_image=room, mask=mask,
                                    metadata="full", out=str(tmp_path / "a")), progress=False)
    text = Image.open(paths[1]).text
    assert "Denoising strength: 0.75, Mask blur: 4\n" in text["parameters"] + "\n"
    record = json.loads(text[RECORD_KEY])
    assert {k: record["settings"][k] for k in ("mask", "mask_blur", "inpaint_fill", "mask_invert", "inpaint_area",
                                               "masked_padding", "inpaint_blend")} == {
        "mask": mask, "mask_blur": 4, "inpaint_fill": "original", "mask_invert": False, "inpaint_area": "whole",
        "masked_padding": None, "inpaint_blend": "denoised"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the same files: nothing to say)
        config, keep = again_config(paths[1], {"out": str(tmp_path / "b")})
    again = generate(config, keep_seeds=keep, progress=False)
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(paths[1])))
    _square_mask((32, 32), (0, 0, 8, 8)).save(mask)
    with pytest.warns(UserWarning, match=r"drawn from other contents of .*mask.png \(--mask"):
        again_config(paths[1], {"out": str(tmp_path / "c")})


def test_only_masked_and_the_other_settings_are_written_as_the_web_ui_writes_them(sd1_dir, tmp_path):
    from textinv.again import again_config

    room, mask = _files(tmp_path, (48, 32))
    path = generate(GenerateConfig(prompt=["a dog"], n=1, steps=2, width=16, height=16, model=str(sd1_dir),
                                   init_image=room, mask=mask, mask_blur=0, inpaint_fill="fill", mask_invert=True,
                                   inpaint_area="masked", masked_padding=8, out=str(tmp_path / "a")),
                    progress=False)[0]
    assert Image.open(path).size == (48, 32)  # (pasted back into the picture at its own size)
    text = Image.open(path).text["parameters"]
    assert "Mask blur" not in text  # (the web UI writes it only above 0)
    assert text.endswith(f"Size: 16x16, Model: {sd1_dir.name}, Denoising strength: 0.75, Mask mode: Inpaint not "
                         f"masked, Masked content: fill, Inpaint area: Only masked, Masked area padding: 8")
    with pytest.raises(ConfigError, match=r"--init-image with where room.png is; --mask with where mask.png is"):
        again_config(path, {"out": str(tmp_path / "b"), "model": str(sd1_dir)})
    config, _ = again_config(path, {"out": str(tmp_path / "b"), "model": str(sd1_dir), "init_image": room,
                                    "mask": mask})
    assert (config.mask_blur, config.inpaint_fill, config.mask_invert, config.inpaint_area, config.masked_padding) \
        == (0, "fill", True, "masked", 8)
    # the hires fix instead: no picture, so no mask either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, _ = again_config(path, {"out": str(tmp_path / "c"), "hires_scale": 2.0, "model": str(sd1_dir)})
    assert (config.init_image, config.mask, config.mask_blur, config.inpaint_area) == (None, None, None, None)


def test_the_init_picture_and_the_mask_are_read_and_blurred_once_a_run_however_many_prompts_redraw_them(
        sd1_dir, tmp_path, monkeypatch):
    """Dynamic prompts' random mode draws one prompt per picture: each used to decode the picture, hash it and the
    mask, and blur the mask again. Past `KEEP_PIXELS` a picture is decoded for each batch instead, and draws the
    same."""
    from textinv import generate as generating

    room, mask = _files(tmp_path)
    decoded, hashed = [], []
    real_load, real_hash = generating.load_image, generating.file_sha256
    monkeypatch.setattr(generating, "load_image", lambda path, *a, **k: decoded.append(str(path)) or
                        real_load(path, *a, **k))
    monkeypatch.setattr(generating, "file_sha256", lambda path: hashed.append(str(path)) or real_hash(path))
    blurred = []
    real_blur = inpaint.blur
    monkeypatch.setattr(inpaint, "blur", lambda *a: blurred.append(1) or real_blur(*a))
    settings = dict(prompt=["a {cat|dog|bird|fish|cow}"], n=4, steps=2, model=str(sd1_dir), init_image=room,
                    mask=mask)
    kept = generate(GenerateConfig(**settings, out=str(tmp_path / "kept")), progress=False)
    prompts = len({p.name.split("-s")[0] for p in kept})
    assert prompts > 1  # (several prompts redrew the picture)
    assert decoded.count(room) == 1 and hashed.count(room) == 1 and hashed.count(mask) == 1
    assert len(blurred) == 1  # (the mask blurred at the picture's size once, not for every prompt and batch)
    monkeypatch.setattr(generating._InitPictures, "KEEP_PIXELS", 0)
    again = generate(GenerateConfig(**settings, out=str(tmp_path / "again")), progress=False)
    # (read before the model loads, then once for each batch: one here, the prompts drawn together)
    assert decoded.count(room) == 1 + 1 + 1
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in kept]


def test_again_reads_a_web_ui_inpainted_picture_with_its_mask_or_says_it_needs_one(sd1_dir, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from textinv.again import again_config

    room, mask = _files(tmp_path)

    def picture(fields):
        info = PngInfo()
        info.add_text("parameters", f"a cat\nSteps: 4, Seed: 3, Size: 32x32, Denoising strength: 0.5{fields}")
        Image.new("RGB", (8, 8)).save(tmp_path / "w.png", pnginfo=info)
        return tmp_path / "w.png"

    inpainted = picture(", Mask blur: 8, Mask mode: Inpaint not masked, Masked content: latent noise, Inpaint area: "
                        "Only masked, Masked area padding: 16")
    flags = {"model": str(sd1_dir), "init_image": room}
    config, _ = again_config(inpainted, {**flags, "mask": mask})
    assert (config.mask, config.mask_blur, config.mask_invert, config.inpaint_fill, config.inpaint_area,
            config.masked_padding) == (mask, 8, True, "latent-noise", "masked", 16)
    assert config.inpaint_blend is None  # (the web UI's own way: the default)
    config, _ = again_config(picture(", Mask blur: 4, Inpaint blend: noised"), {**flags, "mask": mask})
    assert (config.mask_blur, config.inpaint_blend) == (4, "noised")
    with pytest.warns(UserWarning, match=r"inpainted by the web UI through a mask its text does not hold: give it "
                                         r"with --mask"):
        config, _ = again_config(inpainted, flags)
    assert (config.mask, config.mask_blur, config.inpaint_area, config.init_image) == (None, None, None, room)
    # an img2img picture without the field: the web UI's Mask blur was 0 (it writes it above 0 only)
    config, _ = again_config(picture(""), {**flags, "mask": mask})
    assert (config.mask_blur, config.inpaint_fill, config.inpaint_area) == (0, None, None)


@pytest.fixture(scope="module")
def inpainting_dir(tmp_path_factory):
    """A tiny SD 1.x inpainting model: its UNet reads 9 channels, saved as diffusers saves sd-v1-5-inpainting."""
    from diffusers import UNet2DConditionModel

    from textinv.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-inpainting")
    pipe = build_tiny_pipeline("sd1")
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    pipe.save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    return path


def test_an_inpainting_model_reads_the_mask_then_the_masked_pictures_latents_after_the_latents(inpainting_dir,
                                                                                               monkeypatch):
    from diffusers import UNet2DConditionModel

    from textinv.errors import ModelError

    with pytest.raises(ModelError, match=r"is an inpainting model; .*generate` draws with it from a picture"):
        load_model(inpainting_dir)
    model = load_model(inpainting_dir, inpainting=True)
    seen, real = [], UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward",
                        lambda self, sample, *a, **k: seen.append(sample.clone()) or real(self, sample, *a, **k))
    init, mask = _picture(), _square_mask()
    drawn = render(model, ["a dog"], [3], steps=3, width=32, height=32, start=[init], denoise=0.8,
                   inpaint=Inpaint(mask, blur=0))[0]
    white = np.asarray(mask) > 0
    assert np.array_equal(np.asarray(drawn)[~white], np.asarray(init)[~white])
    pixels = prepare_image(init, 0, size=(32, 32))[None]
    pixel_mask = torch.from_numpy(white.astype(np.float32))[None, None]
    masked = refine.encode(model.pipeline.vae, pixels * (1 - pixel_mask))  # (the picture grey where redrawn)
    small = torch.nn.functional.interpolate(pixel_mask, size=masked.shape[-2:])
    assert len(seen) == 3 and seen[0].shape[:2] == (2, 9)  # (uncond and cond rows)
    for sample in seen:
        assert torch.equal(sample[:, 4:5], small.expand(2, -1, -1, -1))
        assert torch.allclose(sample[:, 5:], masked.expand(2, -1, -1, -1), atol=1e-6)
    # without a mask the whole picture is redrawn, the masked picture all grey, as the web UI's img2img gives it
    seen.clear()
    render(model, ["a dog"], [3], steps=1, width=32, height=32, start=[init], denoise=0.8)
    assert (seen[0][:, 4] == 1).all()
    assert torch.allclose(seen[0][:, 5:], refine.encode(model.pipeline.vae, torch.zeros_like(pixels)), atol=1e-6)
    with pytest.raises(ConfigError, match=r"is an inpainting model .*cannot draw from text"):
        render(model, ["a dog"], [3], steps=1, width=32, height=32)


def test_generate_loads_an_inpainting_model_for_an_init_picture_only(inpainting_dir, tmp_path):
    from textinv.errors import ModelError

    room, mask = _files(tmp_path)
    paths = generate(GenerateConfig(prompt=["a dog"], n=1, steps=2, model=str(inpainting_dir), init_image=room,
                                    mask=mask, out=str(tmp_path / "a")), progress=False)
    assert Image.open(paths[0]).size == (16, 16)  # (the model's own area)
    with pytest.raises(ModelError, match=r"is an inpainting model"):
        generate(GenerateConfig(prompt=["a dog"], n=1, steps=2, model=str(inpainting_dir), out=str(tmp_path / "b")),
                 progress=False)


def test_a_mask_whose_middle_is_all_kept_is_refused_for_a_picture_of_other_proportions(tmp_path, monkeypatch):
    from textinv import generate as generate_module

    _picture((16, 32)).save(tmp_path / "tall.png")
    _square_mask((32, 32), (0, 0, 4, 32)).save(tmp_path / "edge.png")  # (white at its left edge only)
    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"mask=.*edge.png' \(32x32\) redraws nothing of .*tall.png \(16x32\)"):
        generate(GenerateConfig(prompt=["a dog"], init_image=str(tmp_path / "tall.png"),
                                mask=str(tmp_path / "edge.png"), out=str(tmp_path / "o")), progress=False)
    assert inpaint.crop_box(Image.new("L", (8, 8)), 2, (8, 8)) == (0, 0, 8, 8)  # (none left: the whole picture)


def test_a_mask_whose_white_is_lost_in_scaling_to_the_picture_is_refused(tmp_path, monkeypatch):
    """A line one pixel wide on a mask four times the picture's size is a quarter white once scaled, so black at
    128: nothing would be redrawn, and the run would give back the picture as it was."""
    from textinv import generate as generate_module

    _picture((16, 16)).save(tmp_path / "small.png")
    _square_mask((64, 64), (30, 0, 31, 64)).save(tmp_path / "thin.png")
    monkeypatch.setattr(generate_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"mask=.*thin.png' \(64x64\) redraws nothing of .*small.png \(16x16\)"):
        generate(GenerateConfig(prompt=["a dog"], init_image=str(tmp_path / "small.png"),
                                mask=str(tmp_path / "thin.png"), out=str(tmp_path / "o")), progress=False)
    assert Inpaint(inpaint.read_mask(tmp_path / "thin.png")).for_picture((16, 16)).getbbox() is None


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_init_pictures_of_one_size_under_one_mask_share_a_call_each_inpainted_as_alone(sd1_dir, tmp_path,
                                                                                       monkeypatch, area):
    """A folder of pictures inpainted under one --mask draws them in one call at --batch-size 2, each row its own
    picture and its own part of the mask, each picture kept where the mask keeps it: what --batch-size 1 draws."""
    from conftest import recorded_arguments
    from textinv import generate as generating

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in (0, 1):
        _picture(seed=seed).save(photos / f"room{seed}.png")
    _square_mask().save(tmp_path / "mask.png")
    model = load_model(sd1_dir)
    calls = recorded_arguments(monkeypatch, generating, "render", "seeds")
    settings = dict(prompt=["a dog"], n=1, seed=3, steps=2, width=32, model=str(sd1_dir), init_image=str(photos),
                    mask=str(tmp_path / "mask.png"), inpaint_area=area, mask_blur=0)
    together = generate(GenerateConfig(**settings, batch_size=2, out=str(tmp_path / "b")), model=model,
                        progress=False)
    assert calls == [([3, 3],)]
    alone = generate(GenerateConfig(**settings, batch_size=1, out=str(tmp_path / "a")), model=model, progress=False)
    assert len(calls) == 3 and [p.name for p in together] == [p.name for p in alone]
    for seed, mine, one in zip((0, 1), together, alone):
        drawn = np.asarray(Image.open(mine)).astype(int)
        assert np.abs(drawn - np.asarray(Image.open(one))).max() <= 1
        kept = np.asarray(_square_mask()) == 0
        assert np.array_equal(drawn[kept], np.asarray(_picture(seed=seed))[kept])
