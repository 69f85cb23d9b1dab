"""Model loading: every kind of source, family detection, and clear errors for what cannot be used."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from textinv.errors import ModelError
from textinv.models import checkpoint_family, load_model, resolve_source


def test_diffusers_folder_loads_frozen_with_its_prediction_type(sd1_dir, sd2_dir):
    m1, m2 = load_model(sd1_dir), load_model(sd2_dir)
    assert (m1.prediction_type, m2.prediction_type) == ("epsilon", "v_prediction")
    assert m1.family == "custom" and m1.width == 32 and m1.resolution == 16
    assert not any(p.requires_grad for p in m1.pipeline.unet.parameters())
    assert load_model(sd1_dir, prediction_type="v_prediction").prediction_type == "v_prediction"


def test_a_model_folder_can_name_its_guidance_scale_else_sd_s(sd1_dir, tmp_path):
    """A folder whose training.json records `config.sample_guidance` (what `textinv.shapes.pretrain` exports) loads
    with that guidance; any other folder, or an unreadable record, gets SD's 7.5."""
    assert load_model(sd1_dir).guidance == 7.5
    folder = tmp_path / "recorded"
    shutil.copytree(sd1_dir, folder)
    (folder / "training.json").write_text(json.dumps({"config": {"sample_guidance": 2.5}}))
    assert load_model(folder).guidance == 2.5
    for broken in ("{not json", json.dumps({"config": {"sample_guidance": -1}}), json.dumps([1])):
        (folder / "training.json").write_text(broken)
        assert load_model(folder).guidance == 7.5


def test_a_hub_model_reads_its_own_guidance_and_words_at_its_revision_offline(hub_cache):
    """The shapes model pushed to the hub (`--model owner/name`) samples at its training.json's guidance and trains
    with its own words, as its folder does, from the revision it was loaded at; a repo without the file gets SD's
    7.5 and no words, quietly."""
    from conftest import cache_branch, cache_snapshot
    from textinv.tiny import build_tiny_pipeline

    main = cache_snapshot(hub_cache, "me/shapes")
    build_tiny_pipeline("sd1", seed=4).save_pretrained(main)
    shutil.copytree(main, cache_snapshot(hub_cache, "me/plain"), dirs_exist_ok=True)
    shutil.copytree(main, cache_branch(hub_cache, "me/shapes", "v1"), dirs_exist_ok=True)
    words = {"object": {"init": "shape", "templates": ["a {} on grey"]}}
    (main / "training.json").write_text(json.dumps({"config": {"sample_guidance": 3}, "prompting": words}))
    (cache_branch(hub_cache, "me/shapes", "v1") / "training.json").write_text(
        json.dumps({"config": {"sample_guidance": 2}}))
    shapes = load_model("me/shapes")
    assert shapes.guidance == 3 and shapes.prompting == words
    assert load_model("me/shapes", revision="v1").guidance == 2  # (the branch's own record, not main's)
    plain = load_model("me/plain")
    assert (plain.guidance, plain.prompting) == (7.5, {})


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="not found"):
        resolve_source("./models/sd15.safetensors")
    with pytest.raises(ModelError, match="no model_index.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelError, match="not a model checkpoint"):
        resolve_source(str(tmp_path / "notes.txt"))
    assert resolve_source("stable-diffusion-v1-5/stable-diffusion-v1-5") == ("hub", "stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="network") as info:
        load_model("someone/no-such-model-here")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message
    assert "\n" not in message and "stacktrace" not in message  # one line, not diffusers' wording


def test_a_hub_model_cached_as_its_fp16_variant_alone_loads_offline(hub_cache, monkeypatch):
    """A hub model whose cache holds only its fp16 files (diffusers' variant="fp16" fetched them, or `hf download
    --include '*.fp16.*'`) was said not to be in the cache at all; its plain files are still taken first."""
    from conftest import cache_snapshot
    from textinv.models import model_fingerprints
    from textinv.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1", seed=4)
    pipe.save_pretrained(cache_snapshot(hub_cache, "me/half"), variant="fp16")
    plain = cache_snapshot(hub_cache, "me/both")
    pipe.save_pretrained(plain)
    build_tiny_pipeline("sd1", seed=5).save_pretrained(plain, variant="fp16")  # (told apart from the plain ones)
    half = load_model("me/half", dtype=torch.float16)
    assert half.source == "me/half" and half.unet.dtype == torch.float16
    pipe.to(torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(half.unet.state_dict().values(), pipe.unet.state_dict().values()))
    assert model_fingerprints(load_model("me/both", dtype=torch.float16)) == model_fingerprints(half)  # the plain
    with pytest.raises(ModelError, match="is not in the local Hugging Face cache"):
        load_model("me/missing")


def test_a_hub_models_revision_and_variant_load_what_they_name_offline(hub_cache):
    """--revision loads that branch's weights, not main's; --variant fp16 its fp16 files, not the plain ones; both
    are recorded in `loaded_with`. A revision not in the cache is one line that names it."""
    from conftest import cache_branch, cache_snapshot
    from textinv.tiny import build_tiny_pipeline

    main, branch = build_tiny_pipeline("sd1", seed=4), build_tiny_pipeline("sd1", seed=5)
    main.save_pretrained(cache_snapshot(hub_cache, "me/old"))
    branch.save_pretrained(cache_branch(hub_cache, "me/old", "fp16"))
    half = build_tiny_pipeline("sd1", seed=6)
    half.save_pretrained(cache_branch(hub_cache, "me/old", "fp16"), variant="fp16")  # (beside the branch's plain)

    def same(model, pipe):
        return torch.equal(model.unet.conv_in.weight, pipe.unet.conv_in.weight.to(model.unet.dtype))

    assert same(load_model("me/old"), main) and load_model("me/old").loaded_with == {}
    on_branch = load_model("me/old", revision="fp16")
    assert same(on_branch, branch) and on_branch.loaded_with == {"revision": "fp16"}
    both = load_model("me/old", revision="fp16", variant="fp16", dtype=torch.float16)
    assert same(both, half) and both.loaded_with == {"revision": "fp16", "variant": "fp16"}
    with pytest.raises(ModelError, match="with revision 'v9' is not in the local Hugging Face cache") as info:
        load_model("me/old", revision="v9")
    assert "\n" not in str(info.value) and "--revision v9" in str(info.value)
    with pytest.raises(ModelError, match="with variant 'fp16' is not in the local Hugging Face cache"):
        load_model("me/old", variant="fp16")  # (main has no fp16 files: no fallback to the plain ones)


def test_a_revision_or_variant_a_local_model_cannot_have_is_refused(sd1_dir, tmp_path):
    """A folder or file is one version: --revision is refused naming --model; --variant names one of a folder's
    variants (refused listing those it has) and is refused for a single file."""
    from textinv.tiny import build_tiny_pipeline

    with pytest.raises(ModelError, match=r"--revision fp16 is for a hub id; --model .* is a local folder"):
        load_model(sd1_dir, revision="fp16")
    with pytest.raises(ModelError, match=r"--revision fp16 is for a hub id; --model shapes is a bundled model"):
        load_model("shapes", revision="fp16")
    with pytest.raises(ModelError, match=r"--variant fp16: .* has no fp16 weights \(its variants: none\)"):
        load_model(sd1_dir, variant="fp16")
    folder = tmp_path / "both"
    build_tiny_pipeline("sd1", seed=4).save_pretrained(folder)
    half = build_tiny_pipeline("sd1", seed=5)
    half.save_pretrained(folder, variant="fp16")
    with pytest.raises(ModelError, match=r"has no ema weights \(its variants: fp16\)"):
        load_model(folder, variant="ema")
    model = load_model(folder, variant="fp16")
    assert torch.equal(model.unet.conv_in.weight, half.unet.conv_in.weight) and model.loaded_with == {"variant": "fp16"}
    checkpoint = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(1)}, checkpoint)
    with pytest.raises(ModelError, match=r"--variant fp16 is for a hub id or a diffusers folder; --model .* is a "
                                         r"single file"):
        load_model(checkpoint, variant="fp16")
    with pytest.raises(ModelError, match=r"--revision main is for a hub id; --model .* is a single file"):
        load_model(checkpoint, revision="main")


def test_empty_tokenizer_folder_is_caught(sd1_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd1_dir, broken)
    for f in (broken / "tokenizer").iterdir():
        f.unlink()
    (broken / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    with pytest.raises(ModelError):
        load_model(broken)


def test_sdxl_folder_loads_with_both_encoders(tmp_path):
    from textinv.tiny import build_tiny_xl_pipeline

    build_tiny_xl_pipeline().save_pretrained(tmp_path / "xl")
    model = load_model(tmp_path / "xl")
    assert model.family == "sdxl" and model.is_xl and model.widths == (32, 64)
    assert [name for name, _, _ in model.encoders] == ["text_encoder", "text_encoder_2"]


def test_a_pipeline_that_is_not_stable_diffusion_is_refused(sd1_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sd1_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusion3Pipeline"
    index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError):
        load_model(other)


def _fake_checkpoint(path, keys):
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, path)
    return path


def test_single_file_family_is_read_from_keys(tmp_path):
    unet = "model.diffusion_model."
    sd1 = _fake_checkpoint(tmp_path / "sd1.safetensors", {
        unet + "output_blocks.11.0.skip_connection.weight": (2, 2),
        unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
        unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    })
    sd2 = _fake_checkpoint(tmp_path / "sd2.safetensors", {
        unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
        unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    })
    xl = _fake_checkpoint(tmp_path / "xl.safetensors", {
        unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
    })
    assert checkpoint_family(sd1) == "sd1"
    assert checkpoint_family(sd2) == "sd2"
    assert checkpoint_family(xl) == "sdxl"
    with pytest.raises(ModelError, match="--single-file-config"):  # offline: its configs cannot be fetched
        load_model(xl)


def test_single_file_that_is_not_a_checkpoint(tmp_path):
    emb = _fake_checkpoint(tmp_path / "emb.safetensors", {"emb_params": (1, 768)})
    with pytest.raises(ModelError, match="--embedding"):
        load_model(emb)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_model(bad)


def test_vae_option_replaces_the_models_vae(sd1_dir, tmp_path):
    from textinv.tiny import _tiny_vae

    torch.manual_seed(5)
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    model = load_model(sd1_dir, vae=tmp_path / "vae")
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(ModelError, match="--vae .* not found"):
        load_model(sd1_dir, vae=tmp_path / "missing-vae")


def test_single_file_vae_takes_the_models_own_vae_config(sd1_dir, tmp_path, monkeypatch):
    """A VAE file holds weights only: its architecture and scaling factor come from the model's own VAE, offline,
    not from the SD 1.5 config diffusers would fetch from the hub (wrong for SDXL's 0.13025)."""
    import json

    from diffusers import AutoencoderKL

    seen = {}

    def from_single_file(path, config=None, torch_dtype=None):
        seen["config"] = json.loads((Path(config) / "config.json").read_text())
        return AutoencoderKL.from_config(seen["config"]).to(torch_dtype)

    monkeypatch.setattr(AutoencoderKL, "from_single_file", from_single_file)
    (tmp_path / "fixed-vae.safetensors").write_bytes(b"weights")
    own = load_model(sd1_dir).vae.config
    model = load_model(sd1_dir, vae=tmp_path / "fixed-vae.safetensors")
    assert seen["config"]["scaling_factor"] == own.scaling_factor
    assert seen["config"]["block_out_channels"] == list(own.block_out_channels)
    assert model.vae.config.latent_channels == own.latent_channels


def test_prediction_type_override_reaches_the_sampler_and_the_training_schedule(sd1_dir):
    from textinv.generate import render

    own, forced = load_model(sd1_dir), load_model(sd1_dir, prediction_type="v_prediction")
    assert own.pipeline.scheduler.config.prediction_type == "epsilon"
    assert forced.pipeline.scheduler.config.prediction_type == "v_prediction"
    assert type(forced.pipeline.scheduler) is type(own.pipeline.scheduler)
    assert forced.noise_scheduler().config.prediction_type == "v_prediction"
    assert not np.array_equal(np.asarray(render(own, ["a dog"], [0], steps=2)[0]),
                              np.asarray(render(forced, ["a dog"], [0], steps=2)[0]))
    with pytest.raises(ModelError, match="'sample' is not supported"):
        load_model(sd1_dir, prediction_type="sample")


def _saved_with_unet_channels(path, channels, class_name):
    from diffusers import UNet2DConditionModel

    from textinv.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": channels})
    pipe.save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    return path


def test_inpainting_and_other_image_conditioned_models_are_refused(tmp_path):
    inpaint = _saved_with_unet_channels(tmp_path / "inpaint", 9, "StableDiffusionInpaintPipeline")
    with pytest.raises(ModelError, match="is an inpainting model; textinv needs a base text-to-image model"):
        load_model(inpaint)
    depth = _saved_with_unet_channels(tmp_path / "depth", 5, "StableDiffusionDepth2ImgPipeline")
    with pytest.raises(ModelError, match="5 input channels, the VAE makes 4"):
        load_model(depth)
    # single files are told apart from their keys, before diffusers loads anything
    unet = "model.diffusion_model."
    sd1_inpaint = _fake_checkpoint(tmp_path / "inpaint.safetensors", {unet + "input_blocks.0.0.weight": (320, 9, 3, 3)})
    with pytest.raises(ModelError, match="an inpainting model"):
        load_model(sd1_inpaint)
    refiner = _fake_checkpoint(tmp_path / "refiner.safetensors", {
        unet + "input_blocks.0.0.weight": (384, 4, 3, 3),
        "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
    })
    with pytest.raises(ModelError, match="an SDXL refiner"):
        checkpoint_family(refiner)


def test_a_damaged_model_index_is_a_model_error(sd1_dir, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(sd1_dir, folder)
    for broken in ('{"_class_name": "StableDiffusionPipeline", "unet": [', "[1, 2]", ""):
        (folder / "model_index.json").write_text(broken)
        with pytest.raises(ModelError, match=r"model_index.json is damaged or incomplete"):
            load_model(folder)


def test_single_files_old_torch_format_empty_and_upper_case_suffix(tmp_path):
    unet = "model.diffusion_model."
    keys = {unet + "input_blocks.0.0.weight": (320, 4, 3, 3),
            unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    # the pickle format torch wrote before 1.6 (many SD 1.x .ckpt files): no mmap, but readable
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {k: torch.zeros(s) for k, s in keys.items()}, "global_step": 1}, old,
               _use_new_zipfile_serialization=False)
    assert checkpoint_family(old) == "sd1"
    for name in ("empty.ckpt", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ModelError, match=r"is empty \(0 bytes\): the download did not finish"):
            load_model(tmp_path / name)
    upper = _fake_checkpoint(tmp_path / "sd1.SAFETENSORS", keys)
    assert checkpoint_family(upper) == "sd1"
    with pytest.raises(ModelError, match="rename it to sd1.safetensors"):  # diffusers goes by the lower-case suffix
        load_model(upper)


def test_local_paths_that_do_not_exist_are_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_source("models/sd15") == ("hub", "models/sd15")  # no models/ folder here: it reads as a hub id
    (tmp_path / "models").mkdir()
    for missing in ("models/sd15", "./x", "x/", "~/no-such-textinv-model", "a/b/c", "models\\sd15", "sd15.ckpt",
                    "owner/name.safetensors", str(tmp_path / "nope")):
        with pytest.raises(ModelError, match="does not exist"):
            resolve_source(missing)
    for hub_id in ("runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0"):
        assert resolve_source(hub_id) == ("hub", hub_id)
    checkpoint = _fake_checkpoint(tmp_path / "sd1.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    for missing in ("./configs/sd15", "models/sd15", str(checkpoint)):
        with pytest.raises(ModelError, match="--single-file-config .* is not a folder"):
            load_model(checkpoint, single_file_config=missing)


def test_a_model_folder_missing_a_component_names_it_and_fp16_only_weights_load(sd1_dir, tmp_path):
    """diffusers' own error names a file ("no file named config.json found in directory ..."), or for a component
    the index leaves out, lists what it expected; ours names the part that is missing. A folder downloaded with
    only the `*.fp16.safetensors` files is complete: it loads as that variant."""
    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(sd1_dir, folder)
        change(folder)
        return folder

    cases = {
        "no-unet": (lambda f: shutil.rmtree(f / "unet"), r"its unet/ folder is missing or empty"),
        "empty-text-encoder": (lambda f: [p.unlink() for p in (f / "text_encoder").iterdir()],
                               r"its text_encoder/ folder is missing or empty"),
        "no-vae-weights": (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").unlink(),
                           r"vae/ has no weights"),
        "index-without-text-encoder": (
            lambda f: (f / "model_index.json").write_text(json.dumps(
                {**json.loads((f / "model_index.json").read_text()), "text_encoder": [None, None]})),
            r"model_index.json lists no text_encoder"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(ModelError, match=message):
            load_model(broken(name, change))
    fp16 = broken("fp16-only", lambda f: [p.rename(p.with_name(p.name.replace(".safetensors", ".fp16.safetensors")))
                                          for p in f.glob("*/*.safetensors")])
    model = load_model(fp16)
    want = load_model(sd1_dir)
    assert torch.equal(model.unet.conv_in.weight, want.unet.conv_in.weight)


def test_a_model_folder_missing_a_parts_config_names_the_part(sd1_dir, tmp_path):
    """Without text_encoder/config.json transformers built a text encoder of its default size and failed on the
    weights' shapes, after a table of every mismatched tensor; the part and its file are named instead."""
    for part in ("text_encoder", "unet", "vae"):
        folder = tmp_path / part
        shutil.copytree(sd1_dir, folder)
        (folder / part / "config.json").unlink()
        with pytest.raises(ModelError, match=rf"is incomplete: {part}/ has no config.json; download or copy"):
            load_model(folder)


def test_single_file_config_must_be_a_model_folder_of_the_checkpoints_family(sd1_dir, tmp_path):
    sd1 = _fake_checkpoint(tmp_path / "sd1.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"is not a diffusers model folder \(no model_index.json\).*1\.x"):
        load_model(sd1, single_file_config=tmp_path / "empty")
    for name, index, width, theirs in (("xl", {"_class_name": "StableDiffusionXLPipeline"}, 768, "XL"),
                                       ("sd2", {"_class_name": "StableDiffusionPipeline"}, 1024, "2.x")):
        (tmp_path / name / "text_encoder").mkdir(parents=True)
        (tmp_path / name / "model_index.json").write_text(json.dumps(index))
        (tmp_path / name / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": width}))
        with pytest.raises(ModelError, match=rf"is a Stable Diffusion {theirs} model but the checkpoint is Stable "
                                             rf"Diffusion 1\.x"):
            load_model(sd1, single_file_config=tmp_path / name)
    # a checkpoint without some component's weights (a UNet-only file): diffusers' several lines and code to
    # paste become one line that says what the file lacks
    with pytest.raises(ModelError, match="not a complete checkpoint") as info:
        load_model(sd1, single_file_config=sd1_dir)
    assert "\n" not in str(info.value)


def test_a_vae_that_is_missing_offline_or_of_another_latent_shape_is_refused(sd1_dir, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:  # said before the model loads, and not sent to the hub
        m.setattr("textinv.models.StableDiffusionPipeline.from_pretrained", lambda *a, **k: pytest.fail("loaded"))
        for missing in ("vae-typo", "./vae", str(tmp_path / "nope")):
            with pytest.raises(ModelError, match=r"--vae .* not found: the path .* does not exist"):
                load_model(sd1_dir, vae=missing)
    with pytest.raises(ModelError, match=r"--vae 'someone/no-such-vae' is not in the local Hugging Face cache") as info:
        load_model(sd1_dir, vae="someone/no-such-vae")
    assert "\n" not in str(info.value)
    AutoencoderKL(block_out_channels=(16, 32), latent_channels=16, norm_num_groups=16,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  ).save_pretrained(tmp_path / "vae16")
    with pytest.raises(ModelError, match=r"makes 16-channel latents but the model's UNet works on 4"):
        load_model(sd1_dir, vae=tmp_path / "vae16")


# --- single files as the web UI, ComfyUI and kohya load them -----------------------------------------------------

_SD2_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
             "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
_XL_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}


def _loads_as(monkeypatch, cls_name, pipe):
    """diffusers' from_single_file stood in by a tiny pipeline (its own prediction type), for files of fake keys."""
    monkeypatch.setattr(f"textinv.models.{cls_name}.from_single_file", lambda *a, **k: pipe)


def test_an_sdxl_file_marked_v_pred_loads_as_v_prediction_with_zero_snr(tmp_path, monkeypatch):
    """v-prediction SDXL fine-tunes (NoobAI-XL v-pred and others) carry empty `v_pred` (and `ztsnr`) tensors;
    ComfyUI's SDXL.model_type (comfy/supported_models.py) reads them. The SDXL base config says epsilon."""
    from textinv.tiny import build_tiny_xl_pipeline

    marked = _fake_checkpoint(tmp_path / "vpred.safetensors", {**_XL_KEYS, "v_pred": (0,), "ztsnr": (0,)})
    _loads_as(monkeypatch, "StableDiffusionXLPipeline", build_tiny_xl_pipeline())
    model = load_model(marked)
    assert model.prediction_type == "v_prediction"
    assert model.pipeline.scheduler.config.prediction_type == "v_prediction"
    assert model.pipeline.scheduler.config.rescale_betas_zero_snr
    schedule = model.noise_scheduler()
    assert schedule.config.rescale_betas_zero_snr and float(schedule.alphas_cumprod[-1]) < 1e-6
    _loads_as(monkeypatch, "StableDiffusionXLPipeline", build_tiny_xl_pipeline())
    assert load_model(marked, prediction_type="epsilon").prediction_type == "epsilon"  # the user's word wins
    plain = _fake_checkpoint(tmp_path / "plain.safetensors", _XL_KEYS)
    _loads_as(monkeypatch, "StableDiffusionXLPipeline", build_tiny_xl_pipeline())
    assert load_model(plain).prediction_type == "epsilon"


def test_the_web_ui_yaml_beside_a_checkpoint_gives_its_prediction_type(tmp_path, monkeypatch):
    """The web UI reads `<checkpoint>.yaml` first (sd_models_config.find_checkpoint_config_near_filename): SD 2.x
    768 fine-tunes ship one with `parameterization: "v"`; without it an LDM config means epsilon. The config
    diffusers falls back on (the hub's or --single-file-config's) knows nothing of the file."""
    from textinv.tiny import build_tiny_pipeline

    ldm = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    linear_start: 0.00085\n"
    v_file = _fake_checkpoint(tmp_path / "sd21-768-finetune.safetensors", _SD2_KEYS)
    (tmp_path / "sd21-768-finetune.yaml").write_text(ldm + '    parameterization: "v"\n')
    _loads_as(monkeypatch, "StableDiffusionPipeline", build_tiny_pipeline("sd1"))  # an epsilon config
    assert load_model(v_file).prediction_type == "v_prediction"
    eps_file = _fake_checkpoint(tmp_path / "sd21-base-finetune.safetensors", _SD2_KEYS)
    (tmp_path / "sd21-base-finetune.yaml").write_text(ldm)
    _loads_as(monkeypatch, "StableDiffusionPipeline", build_tiny_pipeline("sd2"))  # a v-prediction config
    model = load_model(eps_file)
    assert model.prediction_type == "epsilon" and model.pipeline.scheduler.config.prediction_type == "epsilon"


def _lightning_checkpoint(path, state):
    """A .ckpt as PyTorch Lightning wrote the original SD ones: the weights under `state_dict`, beside a pickled
    `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` (not installed here, as for most users)."""
    import sys
    import types

    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    callback = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules = {name: types.ModuleType(name) for name in names}
    modules[names[-1]].ModelCheckpoint = callback
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(modules)
    try:
        instance = callback()
        instance.__dict__.update(monitor=None, best_model_path="")
        torch.save({"state_dict": state, "global_step": 470000, "callbacks": {callback: instance}}, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


def test_a_lightning_ckpt_with_its_callback_state_loads(sd1_dir, tmp_path):
    """The web UI's safe unpickler (modules/safe.py) allows Lightning's ModelCheckpoint, which SD's original .ckpt
    files hold; torch's weights-only load refuses it, and the message said to check the file was complete."""
    from textinv.tiny import build_tiny_pipeline

    theirs = build_tiny_pipeline("sd1", seed=3)
    ckpt = _lightning_checkpoint(tmp_path / "sd-v1-x.ckpt", _ldm_state_dict(theirs))
    assert checkpoint_family(ckpt) == "sd1"
    model = load_model(ckpt, single_file_config=sd1_dir)
    assert torch.equal(model.unet.conv_in.weight, theirs.unet.conv_in.weight)


def test_an_unreadable_ckpt_is_said_in_one_line(tmp_path):
    import pickle

    bad = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "extra": pickle.loads(pickle.dumps(np.float32))}, bad)  # an unlisted global
    with pytest.raises(ModelError, match=r"cannot read checkpoint .*odd\.ckpt") as info:
        load_model(bad)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert ".safetensors" in message and "complete" not in message


def test_old_text_encoder_key_layout_loads_the_files_own_text_encoder(sd1_dir, tmp_path):
    """SD 1.x files saved with transformers before 4.x lack `text_model.` in the text encoder's keys; the web UI
    (sd_models.checkpoint_dict_replacements_sd1) and ComfyUI rename them. diffusers does not see a text encoder,
    so textinv refused the file as incomplete."""
    from textinv.tiny import build_tiny_pipeline

    theirs = build_tiny_pipeline("sd1", seed=3)
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in _ldm_state_dict(theirs).items()}
    for path in (tmp_path / "old.safetensors", tmp_path / "old.ckpt"):
        save_file(old, path) if path.suffix == ".safetensors" else torch.save({"state_dict": old}, path)
        model = load_model(path, single_file_config=sd1_dir)
        ours, want = model.text_encoder.state_dict(), theirs.text_encoder.state_dict()
        assert all(torch.equal(ours[k], want[k]) for k in want)


def _ldm_state_dict(pipe):
    """A tiny SD 1.x pipeline's weights in the original single-file (LDM) key layout, as the web UI saves them."""
    import re

    unet, n = pipe.unet.config, pipe.unet.config.layers_per_block
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def res(rest):
        name, tail = rest.split(".", 1)
        return f"{resnet[name]}.{tail}"

    out = {}
    for k, v in pipe.unet.state_dict().items():
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            block = (n + 1) * i + j + (1 if side == "down" else 0)
            key = f"{'input' if side == 'down' else 'output'}_blocks.{block}." + (
                f"0.{res(rest)}" if kind == "resnets" else f"1.{rest}")
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            key = f"input_blocks.{(n + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            with_attention = "CrossAttn" in unet.up_block_types[int(m[1])]
            key = f"output_blocks.{(n + 1) * int(m[1]) + n}.{2 if with_attention else 1}.conv.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            key = f"middle_block.{2 * int(m[1])}.{res(m[2])}"
        elif k.startswith("mid_block.attentions.0."):
            key = "middle_block.1." + k[len("mid_block.attentions.0."):]
        else:
            module, param = k.rsplit(".", 1)
            key = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                   "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}[module]
            key += "." + param
        out["model.diffusion_model." + key] = v
    blocks = len(pipe.vae.config.block_out_channels)
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in pipe.vae.state_dict().items():
        key = k.replace("conv_shortcut", "nin_shortcut")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.|downsamplers\.0\.)(.*)", key):
            key = f"encoder.down.{m[1]}." + (f"block.{m[3]}" if m[2] == "resnets." else f"downsample.{m[3]}")
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.|upsamplers\.0\.)(.*)", key):
            key = f"decoder.up.{blocks - 1 - int(m[1])}." + (f"block.{m[3]}" if m[2] == "resnets." else f"upsample.{m[3]}")
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            key = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
            key = f"{m[1]}.mid.attn_1.{attention[m[2]]}.{m[3]}"
            v = v[:, :, None, None] if v.ndim == 2 else v
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            key = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + key] = v
    for k, v in pipe.text_encoder.state_dict().items():  # transformers 5 drops the `text_model.` level
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return {k: v.clone().contiguous() for k, v in out.items()}


def test_a_single_file_in_the_original_layout_loads_its_own_weights(sd1_dir, tmp_path):
    """(The test helper above round-trips: the file's UNet, VAE and text encoder are what loads.)"""
    from textinv.tiny import build_tiny_pipeline

    theirs = build_tiny_pipeline("sd1", seed=3)
    save_file(_ldm_state_dict(theirs), tmp_path / "m.safetensors")
    model = load_model(tmp_path / "m.safetensors", single_file_config=sd1_dir)
    for name in ("unet", "vae", "text_encoder"):
        ours, want = getattr(model.pipeline, name).state_dict(), getattr(theirs, name).state_dict()
        assert all(torch.equal(ours[k], want[k]) for k in want), name


def test_a_models_fingerprint_is_its_weights_wherever_and_however_they_were_loaded(sd1_dir, tmp_path):
    """What a checkpoint records of its model (run_folder.check_same_model): one model as a single file and as a
    diffusers folder, in fp32 and in fp16, with an embedding installed or not, is one model; another seed is not."""
    from textinv.models import model_fingerprints, same_model
    from textinv.tiny import build_tiny_pipeline
    from textinv.tokens import add_tokens

    theirs = build_tiny_pipeline("sd1", seed=3)
    theirs.save_pretrained(tmp_path / "folder")
    save_file(_ldm_state_dict(theirs), tmp_path / "m.safetensors")
    folder = model_fingerprints(load_model(tmp_path / "folder"))
    assert set(folder) == {"fp32", "fp16", "bf16"}  # (fp32 weights can be read in each)
    assert model_fingerprints(load_model(tmp_path / "m.safetensors", single_file_config=sd1_dir)) == folder
    half = model_fingerprints(load_model(tmp_path / "folder", dtype=torch.float16))
    assert half == {"fp16": folder["fp16"]} and same_model(folder, half)
    assert same_model(half, model_fingerprints(load_model(tmp_path / "folder", dtype=torch.bfloat16))) is None
    installed = load_model(tmp_path / "folder")
    add_tokens(installed.tokenizer, installed.text_encoder, ["<zz>"], torch.ones(1, installed.width))
    assert model_fingerprints(installed) == folder
    other = model_fingerprints(load_model(sd1_dir))
    assert same_model(folder, other) is False and same_model(half, other) is False
    nudged = load_model(tmp_path / "folder")
    with torch.no_grad():  # (one weight of the UNet's last layer, as a fine-tune moves them all)
        nudged.unet.conv_out.bias[-1] += 1e-3
    assert same_model(folder, model_fingerprints(nudged)) is False


def test_files_a_web_ui_keeps_beside_its_checkpoints_are_named_with_where_they_go(sd1_dir, tmp_path):
    """Embeddings, LoRAs and VAEs sit beside checkpoints in a web UI's folders, and a diffusers folder's component
    files look like checkpoints: each given as --model says what it is and what to pass instead (the message said
    "if it is an embedding, pass it to --embedding" for all of them)."""
    def saved(name, tensors):
        path = tmp_path / name
        save_file(tensors, path) if path.suffix == ".safetensors" else torch.save(tensors, path)
        return path

    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}
    peft_lora = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}
    vae = {k: v for k, v in _ldm_state_dict(load_model(sd1_dir).pipeline).items() if k.startswith("first_stage_model.")}
    cases = [
        (saved("style.safetensors", lora), r"is a LoRA, not a model: .*--lora-dir .*<lora:style>"),
        (saved("peft.safetensors", peft_lora), r"is a LoRA, not a model"),
        (saved("vae-ft-mse.safetensors", vae), r"is a VAE alone, not a whole model: pass it to --vae"),
        (saved("bare-vae.safetensors", {k[len("first_stage_model."):]: v for k, v in vae.items()}), r"VAE alone"),
        (sd1_dir / "unet" / "diffusion_pytorch_model.safetensors",
         rf"holds only the UNet of a diffusers model: .*model_index.json \({sd1_dir}\)"),
        (sd1_dir / "text_encoder" / "model.safetensors", r"holds only the text encoder of a diffusers model"),
    ]
    embedding = r"is a textual-inversion embedding, not a model: .*generate --embedding"
    paper = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 768))})  # the paper's code saves one
    for name, tensors in (("kohya.safetensors", {"emb_params": torch.zeros(2, 768)}),
                          ("xl.safetensors", {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}),
                          ("learned_embeds.bin", {"<cat>": torch.zeros(768)}),
                          ("a1111.pt", {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(1, 768)},
                                        "name": "a1111", "step": 100}),
                          ("paper.pt", {"string_to_token": {"*": 265}, "string_to_param": paper})):
        cases.append((saved(name, tensors), embedding))
    for path, message in cases:
        with pytest.raises(ModelError, match=message):
            load_model(path)


def test_a_folder_that_is_not_a_model_points_at_the_model_or_its_checkpoints(sd1_dir, tmp_path):
    with pytest.raises(ModelError, match=rf"no model_index.json\). It is the unet/ part of the diffusers model "
                                         rf"{sd1_dir}: pass that folder"):
        resolve_source(str(sd1_dir / "unet"))
    webui = tmp_path / "models" / "Stable-diffusion"  # the web UI's checkpoint folder
    webui.mkdir(parents=True)
    for name in ("dreamshaper_8.safetensors", "v1-5-pruned-emaonly.ckpt", "readme.txt"):
        (webui / name).write_bytes(b"x")
    with pytest.raises(ModelError, match=r"It holds checkpoint files \(dreamshaper_8.safetensors, "
                                         r"v1-5-pruned-emaonly.ckpt\): pass one of them"):
        resolve_source(str(webui))


def test_a_training_runs_folder_given_as_model_points_at_its_model_and_embedding(tmp_path):
    """`StableDiffusionPipeline.from_pretrained(output_dir)` is the diffusers habit; --model given a textinv run's
    --out, or the diffusers script's --output_dir saved without --save_as_full_pipeline, said "It holds checkpoint
    files (learned_embeds.safetensors): pass one of them", an embedding that --model then refuses."""
    run = tmp_path / "runs" / "my-dog"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: stable-diffusion-v1-5/stable-diffusion-v1-5\nsteps: 100\n")
    save_file({"<my-dog>": torch.zeros(1, 8)}, run / "learned_embeds.safetensors")
    with pytest.raises(ModelError) as caught:
        resolve_source(str(run))
    said = str(caught.value)
    assert "checkpoint files" not in said
    assert (f"It is a textinv training run: its embedding goes to `textinv generate --embedding {run}` (or `train "
            f"--init-embedding`), its model to --model stable-diffusion-v1-5/stable-diffusion-v1-5") in said
    theirs = tmp_path / "textual_inversion_cat"
    theirs.mkdir()
    save_file({"<cat-toy>": torch.zeros(1, 8)}, theirs / "learned_embeds.safetensors")
    with pytest.raises(ModelError) as caught:
        resolve_source(str(theirs))
    said = str(caught.value)
    assert "checkpoint files" not in said
    assert (f"It holds a textual-inversion embedding (learned_embeds.safetensors), no model: give it to `textinv "
            f"generate --embedding {theirs}` (or `train --init-embedding`), with the model it was trained on as "
            f"--model (the diffusers script saves the whole model there only with --save_as_full_pipeline)") in said


def test_a_pickle_with_code_names_what_it_asks_for(tmp_path):
    import os

    class Runs:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"state_dict": {}, "x": Runs()}, tmp_path / "bad.ckpt")
    with pytest.raises(ModelError, match=r"pickled Python objects beyond its weights \((posix|nt)\.system\)"):
        load_model(tmp_path / "bad.ckpt")


def test_a_single_file_offline_names_the_hub_model_its_configs_come_from_and_the_fix(tmp_path, monkeypatch):
    """Offline, without --single-file-config, the message was huggingface_hub's (it said to set HF_HUB_OFFLINE=0)
    with our hint after it; it says which hub model the configs come from and what to pass."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd1 = _fake_checkpoint(tmp_path / "sd1.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    xl = _fake_checkpoint(tmp_path / "xl.safetensors", _XL_KEYS)
    for path, family, repo, config in ((sd1, "1.x", "stable-diffusion-v1-5/stable-diffusion-v1-5", None),
                                       (xl, "XL", "stabilityai/stable-diffusion-xl-base-1.0", None),
                                       (sd1, "1.x", "someone/sd15-configs", "someone/sd15-configs")):
        with pytest.raises(ModelError) as info:
            load_model(path, single_file_config=config)
        message = str(info.value)
        assert message.startswith(f"{path} is a Stable Diffusion {family} checkpoint"), message
        assert f"the hub model {repo!r}, which is not in the local Hugging Face cache" in message
        assert "--single-file-config with a local diffusers folder of a Stable Diffusion" in message
        assert "HF_HUB_OFFLINE=0" not in message and "\n" not in message


def _open_clip_state_dict(encoder, prefix):
    """A CLIP text encoder's weights in OpenCLIP's layout (SD 2.x's and SDXL's second encoder in a single file)."""
    import re

    state = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
             for k, v in encoder.state_dict().items()}
    names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"]}
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].T
    for k, v in state.items():
        if m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", k):
            layer, module, kind = m.groups()
            block = f"{prefix}transformer.resblocks.{layer}."
            if module == "self_attn.q_proj":  # q, k, v in one projection
                qkv = [state[f"text_model.encoder.layers.{layer}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                out[block + f"attn.in_proj_{kind}"] = torch.cat(qkv)
            elif module in names:
                out[block + f"{names[module]}.{kind}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def _tiny_xl_single_file(seed):
    """A tiny SDXL pipeline and its weights in the original single-file layout, with the weights diffusers' key
    checks read as SDXL base (a 10-block second encoder)."""
    from transformers import CLIPTextModelWithProjection

    from textinv.tiny import build_tiny_xl_pipeline

    xl = build_tiny_xl_pipeline(seed=seed)
    xl.text_encoder_2 = CLIPTextModelWithProjection(xl.text_encoder_2.config.__class__(
        **{**xl.text_encoder_2.config.to_dict(), "num_hidden_layers": 10}))
    unet = {k: v for k, v in xl.unet.state_dict().items() if not k.startswith("add_embedding.")}
    as_sd1 = SimpleNamespace(unet=SimpleNamespace(config=xl.unet.config, state_dict=lambda: unet), vae=xl.vae,
                             text_encoder=xl.text_encoder)
    state = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in _ldm_state_dict(as_sd1).items()}
    for theirs, ours in ((1, 0), (2, 2)):  # SDXL's size-and-crop embedding
        for kind in ("weight", "bias"):
            state[f"model.diffusion_model.label_emb.0.{ours}.{kind}"] = xl.unet.state_dict()[
                f"add_embedding.linear_{theirs}.{kind}"]
    state.update(_open_clip_state_dict(xl.text_encoder_2, "conditioner.embedders.1.model."))
    return xl, state


def test_sd2_and_sdxl_single_files_load_offline_with_a_config_folder_and_fp16_trains_in_fp32(images, tmp_path):
    """Files in the original layout, as the web UI saves them, with the weights diffusers' key checks read as SD 2.x
    (1024-wide cross-attention) and SDXL (a 10-block second encoder): each loads offline with a diffusers folder
    of its family as --single-file-config, with its own weights; an fp16 one loads and trains in fp32 on the CPU."""
    from diffusers import UNet2DConditionModel

    from textinv.config import TrainConfig
    from textinv.tiny import build_tiny_pipeline
    from textinv.train import train

    sd2 = build_tiny_pipeline("sd2", seed=3, width=1024)
    sd2.unet = UNet2DConditionModel.from_config({**sd2.unet.config, "layers_per_block": 2})  # input_blocks.2.1
    sd2.save_pretrained(tmp_path / "sd2")
    state = {k: v for k, v in _ldm_state_dict(sd2).items() if not k.startswith("cond_stage_model.")}
    state.update(_open_clip_state_dict(sd2.text_encoder, "cond_stage_model.model."))
    save_file(state, tmp_path / "sd2.safetensors")

    xl, state = _tiny_xl_single_file(seed=3)
    xl.save_pretrained(tmp_path / "xl")
    save_file({k: v.half() for k, v in state.items()}, tmp_path / "xl-fp16.safetensors")

    for pipe, family, file, parts in ((sd2, "sd2", "sd2.safetensors", ("unet", "vae", "text_encoder")),
                                      (xl, "sdxl", "xl-fp16.safetensors", ("unet", "vae", "text_encoder",
                                                                           "text_encoder_2"))):
        model = load_model(tmp_path / file, single_file_config=tmp_path / family.replace("sdxl", "xl"))
        assert model.family == family
        for name in parts:
            ours, want = getattr(model.pipeline, name).state_dict(), getattr(pipe, name).state_dict()
            cast = torch.float16 if "fp16" in file else torch.float32
            assert all(ours[k].dtype == torch.float32 and torch.equal(ours[k], want[k].to(cast).float())
                       for k in want), name
    result = train(TrainConfig(model=str(tmp_path / "xl-fp16.safetensors"), single_file_config=str(tmp_path / "xl"),
                               images=str(images), token="<zq>", init="dog", out=str(tmp_path / "run"), steps=2,
                               batch=1, save_every=0, sample_every=0, log_every=1, resolution=16), progress=False)
    assert result.embedding.widths == (32, 64)
    assert all(torch.isfinite(v).all() for v in result.embedding.vectors.values())


def _vae_of(state):
    """The VAE's weights of an original-layout state dict, `first_stage_model.` prefix and all."""
    return {k: v for k, v in state.items() if k.startswith("first_stage_model.")}


def test_a_single_file_saved_without_its_vae_loads_with_the_vae_given(sd1_dir, tmp_path):
    """Web-UI users meet checkpoints pruned of their VAE, used with a separate VAE file. --vae was swapped in only
    after diffusers had refused the file as incomplete; it goes in as the pipeline's VAE now, whichever way it is
    given: a VAE file as the web UI keeps it (vae-ft-mse-840000-ema-pruned.safetensors: `encoder.*`), one taken out
    of a checkpoint (`first_stage_model.*`), or a diffusers VAE folder. A single VAE file takes the model's VAE config
    (its scaling factor), from --single-file-config."""
    from textinv.tiny import build_tiny_pipeline

    config = tmp_path / "config"
    shutil.copytree(sd1_dir, config)
    vae_config = json.loads((config / "vae" / "config.json").read_text())
    (config / "vae" / "config.json").write_text(json.dumps({**vae_config, "scaling_factor": 0.3}))
    theirs, other = build_tiny_pipeline("sd1", seed=3), build_tiny_pipeline("sd1", seed=7)
    state = _ldm_state_dict(theirs)
    save_file({k: v for k, v in state.items() if k not in _vae_of(state)}, tmp_path / "no-vae.safetensors")
    vae = _vae_of(_ldm_state_dict(other))
    save_file({k[len("first_stage_model."):]: v for k, v in vae.items()}, tmp_path / "vae-ft-mse.safetensors")
    save_file(vae, tmp_path / "extracted-vae.safetensors")
    other.vae.save_pretrained(tmp_path / "vae-folder")

    with pytest.raises(ModelError, match=r"saved without its VAE .*pass the VAE it is used with as --vae, usually "
                                         r"vae-ft-mse-840000-ema-pruned\.safetensors"):
        load_model(tmp_path / "no-vae.safetensors", single_file_config=config)
    for given in ("vae-ft-mse.safetensors", "extracted-vae.safetensors", "vae-folder"):
        model = load_model(tmp_path / "no-vae.safetensors", single_file_config=config, vae=tmp_path / given)
        ours, want = model.vae.state_dict(), other.vae.state_dict()
        assert ours.keys() == want.keys() and all(torch.equal(ours[k], want[k]) for k in want), given
        ours, want = model.unet.state_dict(), theirs.unet.state_dict()
        assert all(torch.equal(ours[k], want[k]) for k in want), given
        if given.endswith(".safetensors"):
            assert model.vae.config.scaling_factor == 0.3, given
    # a whole file with --vae: the given VAE, not the file's own
    save_file(state, tmp_path / "whole.safetensors")
    model = load_model(tmp_path / "whole.safetensors", single_file_config=config,
                       vae=tmp_path / "vae-ft-mse.safetensors")
    assert torch.equal(model.vae.decoder.conv_out.weight, other.vae.decoder.conv_out.weight)


def test_an_sdxl_file_saved_without_its_vae_loads_with_sdxl_vae(tmp_path):
    """The SDXL case of the test above: sdxl_vae.safetensors keeps its weights as `encoder.*`; it takes SDXL's VAE
    config (scaling factor 0.13025) from --single-file-config."""
    from textinv.tiny import build_tiny_xl_pipeline

    xl, state = _tiny_xl_single_file(seed=3)
    xl.vae.register_to_config(scaling_factor=0.13025)
    xl.save_pretrained(tmp_path / "xl")
    save_file({k: v for k, v in state.items() if k not in _vae_of(state)}, tmp_path / "no-vae.safetensors")
    other = build_tiny_xl_pipeline(seed=7)
    as_sd1 = SimpleNamespace(unet=SimpleNamespace(config=other.unet.config, state_dict=dict), vae=other.vae,
                             text_encoder=SimpleNamespace(state_dict=dict))
    save_file({k[len("first_stage_model."):]: v for k, v in _ldm_state_dict(as_sd1).items()},
              tmp_path / "sdxl_vae.safetensors")

    with pytest.raises(ModelError, match=r"Diffusion XL checkpoint saved without its VAE .*sdxl_vae\.safetensors"):
        load_model(tmp_path / "no-vae.safetensors", single_file_config=tmp_path / "xl")
    model = load_model(tmp_path / "no-vae.safetensors", single_file_config=tmp_path / "xl",
                       vae=tmp_path / "sdxl_vae.safetensors")
    assert model.family == "sdxl" and model.vae.config.scaling_factor == 0.13025
    ours, want = model.vae.state_dict(), other.vae.state_dict()
    assert ours.keys() == want.keys() and all(torch.equal(ours[k], want[k]) for k in want)
    ours, want = model.pipeline.text_encoder_2.state_dict(), xl.text_encoder_2.state_dict()
    assert all(torch.equal(ours[k], want[k]) for k in want)


def test_an_sd2_file_saved_without_its_vae_loads_with_the_vae_given(tmp_path):
    """The SD 2.x case of the two tests above (OpenCLIP text encoder under `cond_stage_model.model.`): refused
    without --vae, naming the VAE SD 2.x models are used with; loads with a VAE file or a diffusers VAE folder, each
    a file taking SD 2.x's VAE config from --single-file-config."""
    from diffusers import UNet2DConditionModel

    from textinv.tiny import build_tiny_pipeline

    sd2 = build_tiny_pipeline("sd2", seed=3, width=1024)
    sd2.unet = UNet2DConditionModel.from_config({**sd2.unet.config, "layers_per_block": 2})  # read as SD 2.x
    sd2.vae.register_to_config(scaling_factor=0.3)
    sd2.save_pretrained(tmp_path / "sd2")
    state = {k: v for k, v in _ldm_state_dict(sd2).items()
             if not k.startswith(("cond_stage_model.", "first_stage_model."))}
    state.update(_open_clip_state_dict(sd2.text_encoder, "cond_stage_model.model."))
    save_file(state, tmp_path / "no-vae.safetensors")
    other = build_tiny_pipeline("sd2", seed=7)
    save_file({k[len("first_stage_model."):]: v for k, v in _vae_of(_ldm_state_dict(other)).items()},
              tmp_path / "vae-ft-mse.safetensors")
    other.vae.save_pretrained(tmp_path / "vae-folder")

    with pytest.raises(ModelError, match=r"Stable Diffusion 2\.x checkpoint saved without its VAE .*--vae, usually "
                                         r"vae-ft-mse-840000-ema-pruned\.safetensors"):
        load_model(tmp_path / "no-vae.safetensors", single_file_config=tmp_path / "sd2")
    for given in ("vae-ft-mse.safetensors", "vae-folder"):
        model = load_model(tmp_path / "no-vae.safetensors", single_file_config=tmp_path / "sd2",
                           vae=tmp_path / given)
        assert model.family == "sd2", given
        if given.endswith(".safetensors"):  # (a folder has its own config)
            assert model.vae.config.scaling_factor == 0.3, given
        ours, want = model.vae.state_dict(), other.vae.state_dict()
        assert ours.keys() == want.keys() and all(torch.equal(ours[k], want[k]) for k in want), given
        ours, want = model.text_encoder.state_dict(), sd2.text_encoder.state_dict()
        assert all(torch.equal(ours[k], want[k]) for k in want), given


class _RunsCode:
    """Pickles as a call of `os.system`: what a malicious .ckpt carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickled_vae_file_loads_weights_only_and_one_that_carries_code_is_refused(sd1_dir, tmp_path):
    """VAEs are also shared as pickles: vae-ft-mse-840000-ema-pruned.ckpt (its weights under `state_dict`; here as
    Lightning saves a .ckpt, callback state and all) and the web UI's `.vae.pt` files (a bare state dict). Each loads
    as --vae, with a diffusers folder as with a single file, through torch's weights-only loader; a pickle that
    would run code is refused, by name, and the code never runs."""
    from textinv.tiny import build_tiny_pipeline

    theirs, other = build_tiny_pipeline("sd1", seed=3), build_tiny_pipeline("sd1", seed=7)
    state = _ldm_state_dict(theirs)
    save_file({k: v for k, v in state.items() if k not in _vae_of(state)}, tmp_path / "no-vae.safetensors")
    vae = {k[len("first_stage_model."):]: v for k, v in _vae_of(_ldm_state_dict(other)).items()}
    _lightning_checkpoint(tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt", vae)
    torch.save(vae, tmp_path / "anime.vae.pt")
    for given in ("vae-ft-mse-840000-ema-pruned.ckpt", "anime.vae.pt"):
        for model in (load_model(sd1_dir, vae=tmp_path / given),
                      load_model(tmp_path / "no-vae.safetensors", single_file_config=sd1_dir, vae=tmp_path / given)):
            ours, want = model.vae.state_dict(), other.vae.state_dict()
            assert ours.keys() == want.keys() and all(torch.equal(ours[k], want[k]) for k in want), given

    marker = tmp_path / "ran"
    torch.save({"state_dict": vae, "extra": _RunsCode(marker)}, tmp_path / "bad-vae.ckpt")
    for model in (sd1_dir, tmp_path / "no-vae.safetensors"):
        with pytest.raises(ModelError, match=r"cannot read VAE file .*bad-vae\.ckpt: it holds pickled Python objects "
                                             r"beyond its weights \((posix|os|nt)\.system\)") as info:
            load_model(model, single_file_config=sd1_dir if model != sd1_dir else None, vae=tmp_path / "bad-vae.ckpt")
        assert "\n" not in str(info.value) and ".safetensors" in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one, said)
def test_a_ctrl_c_dropped_in_a_block_within_a_block_stops_at_the_inner_blocks_end(pythons_sigint):
    """The inner `interrupt_kept` found the outer one's handler, not Python's, and left it in place: only the outer
    block noted the Ctrl-C, and the work after the inner block, on what it had loaded, went on until the outer one
    ended."""
    import signal

    from conftest import CtrlCInFinalizer
    from textinv.models import interrupt_kept

    went_on = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_kept():
            with interrupt_kept():
                CtrlCInFinalizer()
            went_on.append(True)
    assert not went_on
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_fp16_on_the_cpu_is_said_once_in_textinvs_words_not_three_times_as_failing(sd1_dir, capfd):
    """`--precision fp16` on the CPU (the diffusers script's `--mixed_precision fp16`, typed out of habit) printed
    diffusers' "Pipelines loaded with dtype=torch.float16 cannot run with cpu device ... running them will fail"
    three times, then trained: it runs, only slowly, which one warning says."""
    with pytest.warns(UserWarning, match=r"fp16 on the CPU runs, but slowly.*give --precision fp32") as said:
        load_model(sd1_dir, dtype=torch.float16, device="cpu")
    assert len([w for w in said if "fp16 on the CPU" in str(w.message)]) == 1
    assert "will fail" not in capfd.readouterr().err
