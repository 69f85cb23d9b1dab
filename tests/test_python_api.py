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
