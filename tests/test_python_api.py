"""textinv from Python, as a notebook uses it: one loaded model through several calls, settings given as Python
values, and the README's "Use from Python" example run as written."""

import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import interrupt_loss_at
from textinv.config import GenerateConfig, TrainConfig
from textinv.errors import ConfigError, ModelError
from textinv.generate import generate
from textinv.models import load_model
from textinv.train import TrainingInterrupted, train

ROOT = Path(__file__).resolve().parent.parent


def test_load_model_leaves_the_warning_filters_as_they_were(sd1_dir):
    """load_model added an "ignore" filter for diffusers' torch_dtype notice to the process's warning filters, where
    it stayed, hiding that notice from the user's own diffusers calls."""
    before = list(warnings.filters)
    load_model(sd1_dir)
    assert warnings.filters == before


def run_config(images, out, **kw):
    return TrainConfig(**{**dict(images=images, token="<zq>", init="dog", out=out, steps=2, batch=2, save_every=0,
                                 sample_every=0), **kw})


@pytest.mark.parametrize("given", ["name", "pipeline"])
def test_a_model_argument_that_is_no_loaded_model_is_refused(given, sd1_dir, images, tmp_path):
    """model="shapes" or a diffusers pipeline failed with an AttributeError (no .unet / no .check_trainable), after
    the output folder was made."""
    model = str(sd1_dir) if given == "name" else load_model(sd1_dir).pipeline
    what = "got str" if given == "name" else "got StableDiffusionPipeline"
    with pytest.raises(ModelError, match=f"model= takes a Model from textinv.models.load_model, {what}"):
        train(run_config(images, tmp_path / "o"), model=model, progress=False)
    with pytest.raises(ModelError, match=what):
        generate(GenerateConfig(prompt=["a photo"], out=str(tmp_path / "r")), model=model, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
