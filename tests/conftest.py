"""Shared fixtures: tiny random SD 1.x / 2.x pipelines saved once per session, and small image folders."""

import copy
import os
import signal
import sys
import warnings
import weakref

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# (and one thread in each process a test starts, as in this one below: a benchmark's or the GPU session's commands
# ran on every core, and on 2 shared cores their OpenMP threads spun waiting for each other)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A test that asks for 2 threads (`shapes_speed --threads 1 2`) has them sleep while they wait, not spin: with another
# process on one of the 2 cores, a spinning thread held the core its partner needed, and a step of the bundled
# model took seconds instead of ~0.1 s (read by OpenMP as torch loads it, so it is set before the import below)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.tiny import build_tiny_pipeline

# Tiny models run fastest on one thread, and two threads crawl when another process holds a core.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd1_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd1")
    build_tiny_pipeline("sd1", seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sd2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd2")
    build_tiny_pipeline("sd2", seed=1).save_pretrained(path)
    return path


_LOADED = {}  # (fresh_model's loads, by folder: never handed out, only copied)


def fresh_model(folder):
    """`load_model(folder)` for a test to train on or change as it likes: the folder is loaded once a session, and
    each call returns a deep copy of that load, which shares nothing with it (a third of a load's time; the tiny
    models were loaded ~600 times a run). A test of loading itself calls `load_model`."""
    from textinv.models import load_model

    key = str(folder)
    if key not in _LOADED:
        _LOADED[key] = load_model(folder)
    return copy.deepcopy(_LOADED[key])


def saved_whole(sd1_dir, folder):
    """The tiny SD 1.x model saved to `folder` as the diffusers script's --save_as_full_pipeline --num_vectors 2
    saves it: `<cat-toy>` and `<cat-toy>_1` in its tokenizer and text encoder. Returns the pipeline."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd1_dir)
    pipe.tokenizer.add_tokens(["<cat-toy>", "<cat-toy>_1"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture
def pythons_sigint():
    """SIGINT under Python's own handler for the test, as in a fresh process, and put back after: a Ctrl-C test of
    `EarlyInterrupt` (which steps in only where Python's handler is) must not depend on what ran before it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    if previous is not signal.default_int_handler:
        print(f"(SIGINT's handler was {previous!r})", file=sys.stderr)
    yield
    signal.signal(signal.SIGINT, previous)


class CtrlCInFinalizer:
    """An object whose `__del__` (run as it is let go of) runs Ctrl-C's handler, as a Ctrl-C landing in a finalizer
    does: Python drops an exception raised there, printing "Exception ignored in"."""

    def __del__(self):
        # (the handler run inside the finalizer: where Python runs a raised SIGINT's handler depends on when the
        # interpreter next checks for signals, which other threads and the suite's state move)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


def recorded_results(monkeypatch, module, name: str) -> list:
    """What `module.name` returns from now on, each call's result appended to the list returned."""
    results = []
    real = getattr(module, name)

    def recording(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, recording)
    return results


def recorded_rates(monkeypatch, cls=torch.optim.AdamW) -> list:
    """The learning rate of every `cls` optimizer step taken from now on (read as the step is taken), in the list
    returned."""
    seen, real = [], cls.step

    def step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, "step", step)
    return seen


def interrupted_at(monkeypatch, module, name: str, call: int, error: BaseException | None = None) -> list:
    """`module.name` made to raise KeyboardInterrupt (a Ctrl-C; or `error`: a failed call) at its `call`-th call
    (1: the first), itself otherwise; returned: the list its calls are counted in (one entry a call), to read or
    reset."""
    real, calls = getattr(module, name), []

    def stand_in(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise error or KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, stand_in)
    return calls


def recorded_arguments(monkeypatch, module, name: str, *arguments: str) -> list:
    """The named arguments of each call of `module.name` from now on, a tuple a call, in the list returned: by name,
    so a parameter added to the function does not move them (`generate.render` takes two dozen)."""
    import inspect

    seen = []
    real = getattr(module, name)
    signature = inspect.signature(real)

    def recording(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        seen.append(tuple(bound.arguments[a] for a in arguments))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def recorded_caption_banks(monkeypatch) -> list:
    """The CaptionBanks train builds from now on (the captions it trains on), in the list returned."""
    import textinv.train as train_module

    return recorded_results(monkeypatch, train_module, "CaptionBank")


def write_images(folder, n=4, size=24, seed=0):
    """`n` small random-colour pictures with a bright square in each (so there is something to learn)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.full((size, size, 3), rng.integers(0, 80, 3), dtype=np.uint8)
        arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (230, 40, 40)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images")


@pytest.fixture(autouse=True)
def _one_thread_again():
    """Each test starts on the one thread set above: a benchmark run in-process sets the process's torch threads
    (`shapes_speed --threads 1 2` left 2, as did `hue_by_guidance`'s default), and every later test ran on them."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _put_back(handlers: dict) -> list[str]:
    """Put SIGINT's and SIGTERM's handlers back to `handlers`; returns those that had changed, named."""
    changed = [f"{sig.name} {was!r} -> {signal.getsignal(sig)!r}" for sig, was in handlers.items()
               if signal.getsignal(sig) != was]
    for sig, was in handlers.items():
        if was is not None:  # (None: a handler not set from Python, which cannot be put back from it)
            signal.signal(sig, was)
    return changed


_HANDLERS_AT_START = _handlers()


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """Fail a test that leaves SIGINT's or SIGTERM's handler other than it found it, and one that finds them other
    than the session started with (a module or session fixture changed them): a leaked handler changes what a
    Ctrl-C does in every later test (one did, and the Ctrl-C-in-a-finalizer tests failed only in the whole suite).
    Either way they are put back, so only that test fails."""
    changed = _put_back(_HANDLERS_AT_START)
    if changed:
        pytest.fail("signal handlers were changed before this test, by a fixture of a wider scope: "
                    + ", ".join(changed), pytrace=False)
    yield
    changed = _put_back(_HANDLERS_AT_START)
    if changed:
        pytest.fail("the test left signal handlers changed: " + ", ".join(changed), pytrace=False)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def interrupt_loss_at(monkeypatch, n):
    """Make training's `n`th loss raise KeyboardInterrupt, as a Ctrl-C in the middle of a step; returns the undo."""
    from textinv import train as train_module

    real, calls = train_module.diffusion_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", interrupted)
    return lambda: monkeypatch.setattr(train_module, "diffusion_loss", real)


CUDA_OUT_OF_MEMORY = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of "
                      "which 1.06 GiB is free. Of the allocated memory 21.3 GiB is allocated by PyTorch")


def out_of_memory_at(monkeypatch, n, error=None):
    """Make the UNet's `n`th call raise `error` (torch.OutOfMemoryError, as CUDA's allocator raises it), keeping a
    weak reference to each call's input in `seen`; returns (undo, seen)."""
    from diffusers import UNet2DConditionModel

    real, seen = UNet2DConditionModel.forward, []

    def forward(self, sample, *a, **k):
        seen.append(weakref.ref(sample))
        if len(seen) == n:
            raise error if error is not None else torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)
        return real(self, sample, *a, **k)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    return (lambda: monkeypatch.setattr(UNet2DConditionModel, "forward", real)), seen


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import,
    so its constants are set too (the environment is for the subprocesses a test starts)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_snapshot(cache, repo: str):
    """The folder of `repo`'s main branch in the Hugging Face cache `cache`, made empty: models--OWNER--NAME/refs/main
    holds the commit, snapshots/COMMIT/ the files (huggingface_hub's layout, where each snapshot file links to a
    blob; a plain file is read the same)."""
    import hashlib

    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def each_concept_alone(model_dir, tmp_path, concepts: list[str], **settings):
    """Each of `concepts` ("FOLDER=TOKEN=INIT") learned in a run of its own, at the seed a joint run of them gives
    it (`batches.concept_seed`), on a fresh copy of the model (`fresh_model`): the embeddings a joint run's must
    equal."""
    from textinv.config import TrainConfig
    from textinv.batches import concept_seed
    from textinv.train import train

    alone = []
    for k, concept in enumerate(concepts):
        folder, token, init = concept.split("=")
        config = TrainConfig(images=folder, token=token, init=init, out=str(tmp_path / f"alone-{k}"),
                             **{**settings, "seed": concept_seed(settings.get("seed", 0), k)})
        alone.append(train(config, model=fresh_model(model_dir), progress=False).embedding)
    return alone


def cache_branch(cache, repo: str, branch: str):
    """The folder of `repo`'s `branch` (or tag) in the Hugging Face cache `cache`, made if new, beside its main
    branch (`cache_snapshot`): refs/BRANCH holds the branch's own commit."""
    import hashlib

    commit = hashlib.sha1(f"{repo}@{branch}".encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / branch).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def record_noise(monkeypatch, seen: list) -> None:
    """Append ("add", noise) for each DDPM add_noise call and ("v", noise) for each get_velocity call to `seen`: the
    noise the latents are noised with and the noise a velocity target is made of."""
    from diffusers import DDPMScheduler

    real_add, real_velocity = DDPMScheduler.add_noise, DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "add_noise", lambda self, x, noise, t: seen.append(("add", noise.clone()))
                        or real_add(self, x, noise, t))
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, x, noise, t: seen.append(("v", noise.clone()))
                        or real_velocity(self, x, noise, t))


def train_config(images, out, **kw):
    """A short training run's settings on the tiny models (6 steps at batch 2, no checkpoints or grids, the loss
    logged every 2 steps, a high learning rate so the vectors move), `kw` over them."""
    from textinv.config import TrainConfig

    return TrainConfig(**{**dict(images=str(images), token="<zq>", init="dog", out=str(out), steps=6, batch=2,
                                 save_every=0, sample_every=0, log_every=2, lr=5e-2), **kw})


def web_ui_picture(path, parameters: str):
    """An 8x8 PNG at `path` holding `parameters` as the A1111 web UI's generation text; returns `path`."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def again_warned(picture, flags: dict):
    """`again_config(picture, flags)` with every warning it gives recorded: (its config, the warnings' text joined)."""
    from textinv.again import again_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config, _ = again_config(picture, flags)
    return config, " ".join(str(w.message) for w in caught)
