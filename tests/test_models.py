"""Model loading: every kind of source, family detection, and clear errors for what cannot be used."""

import json
import shutil

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
    with pytest.raises(ModelError, match="network"):
        load_model("someone/no-such-model-here")


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
    with pytest.raises(ModelError, match="cannot load the VAE"):
        load_model(sd1_dir, vae=tmp_path / "missing-vae")
