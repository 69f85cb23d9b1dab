"""--cuda-graphs: the captured step's path (static inputs, autograd.grad into outputs, accumulation into .grad)
learns what the plain step learns; what it cannot take is refused; a capture that fails falls back to the plain
step. The capture itself needs a GPU: on the CPU the same path runs without it (`CapturedStep(capture=False)`),
and the last test compares a real capture with the plain step where a GPU is present."""

import warnings

import pytest
import torch

from textinv import graphs
from textinv import train as train_module
from textinv.config import TrainConfig
from textinv.errors import ConfigError, DeviceMemoryError
from textinv.models import load_model
from textinv.train import train

from test_train import config


@pytest.fixture
def on_the_cpu(monkeypatch):
    """Let --cuda-graphs run on the CPU (its path without the capture) and count the captured step's calls."""
    monkeypatch.setattr(train_module, "check_graph_device", lambda device: None)
    calls = []
    real = graphs.CapturedStep.__call__
    monkeypatch.setattr(graphs.CapturedStep, "__call__", lambda self, inputs: calls.append(1) or real(self, inputs))
    return calls


def same_run(a, b):
    for x, y in zip(a.embeddings, b.embeddings):
        for name in x.vectors:
            assert torch.equal(x.vectors[name], y.vectors[name]), name
    assert a.losses == b.losses


@pytest.mark.parametrize("settings, precision", [
    (dict(grad_accum=2, max_grad_norm=0.05), "fp32"),
    (dict(min_snr_gamma=5.0, vectors=2), "fp32"),
    (dict(grad_accum=2), "fp16"),  # (the loss scale is applied inside the captured step)
])
def test_the_captured_path_learns_what_the_plain_step_learns(settings, precision, on_the_cpu, sd1_dir, images,
                                                             tmp_path):
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    plain = train(config(images, tmp_path / "a", precision=precision, **settings),
                  model=load_model(sd1_dir, dtype=dtype), progress=False)
    graphed = train(config(images, tmp_path / "b", precision=precision, cuda_graphs=True, **settings),
                    model=load_model(sd1_dir, dtype=dtype), progress=False)
    assert len(on_the_cpu) == 6 * settings.get("grad_accum", 1)  # every micro-batch went through it
    same_run(plain, graphed)


def test_several_concepts_and_sdxl_through_the_captured_path(on_the_cpu, sd1_dir, tmp_path):
    from conftest import write_images
    from textinv.tiny import build_tiny_xl_pipeline

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    common = dict(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], steps=4, batch=2, save_every=0,
                  sample_every=0, log_every=2, lr=5e-2, max_grad_norm=0.05)
    plain = train(TrainConfig(out=str(tmp_path / "a"), **common), model=load_model(sd1_dir), progress=False)
    graphed = train(TrainConfig(out=str(tmp_path / "b"), cuda_graphs=True, **common), model=load_model(sd1_dir),
                    progress=False)
    same_run(plain, graphed)

    xl = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(xl)
    common = dict(images=str(dogs), token="<zx>", init="dog", model=str(xl), steps=3, batch=2, save_every=0,
                  sample_every=0, log_every=1)
    plain = train(TrainConfig(out=str(tmp_path / "xa"), **common), progress=False)
    graphed = train(TrainConfig(out=str(tmp_path / "xb"), cuda_graphs=True, **common), progress=False)
    assert set(plain.embedding.vectors) == {"text_encoder", "text_encoder_2"}  # both encoders' vectors learn through it
    same_run(plain, graphed)


def test_cuda_graphs_may_be_turned_on_when_resuming(on_the_cpu, sd1_dir, images, tmp_path):
    straight = train(config(images, tmp_path / "a", steps=4), model=load_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=load_model(sd1_dir), progress=False)
    resumed = train(config(images, out, steps=4, save_every=2, resume=True, cuda_graphs=True),
                    model=load_model(sd1_dir), progress=False)
    same_run(straight, resumed)


def test_what_a_captured_step_cannot_take_is_refused(images, tmp_path, sd1_dir):
    with pytest.raises(ConfigError, match="--cuda-graphs and --buckets"):
        config(images, tmp_path, cuda_graphs=True, buckets=True).validate()
    with pytest.raises(ConfigError, match="--compile-mode reduce-overhead"):
        config(images, tmp_path, cuda_graphs=True, compile="unet", compile_mode="reduce-overhead").validate()
    config(images, tmp_path, cuda_graphs=True, compile="blocks").validate()  # (regional compile is captured too)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU; this run is on cpu: leave --cuda-graphs out"):
            train(config(images, tmp_path / "run", cuda_graphs=True), model=load_model(sd1_dir), progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_capture_that_fails_warns_once_and_the_step_runs_without_it():
    """Here the capture fails as it does on a machine without CUDA; the step's results are the plain ones."""
    weight = torch.randn(3, requires_grad=True)

    def losses(x):
        return (x["a"] * weight).sum(dim=1)

    step = graphs.CapturedStep(losses, [weight], capture=True)
    with pytest.warns(UserWarning, match="could not be captured as a CUDA graph"):
        out = step({"a": torch.ones(2, 3)})
    assert torch.equal(out, torch.full((2,), float(weight.sum())))
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not tried again
        step({"a": torch.ones(2, 3)})
    assert torch.equal(weight.grad, torch.full((3,), 4.0))  # added up, as backward() adds
    with pytest.raises(RuntimeError, match="changed shape from \\(2, 3\\) to \\(4, 3\\)"):
        step({"a": torch.ones(4, 3)})


def test_running_out_of_memory_while_capturing_is_the_runs_error(on_the_cpu, sd1_dir, images, tmp_path,
                                                                 monkeypatch):
    def capture_runs_out(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(graphs.CapturedStep, "_capture", capture_runs_out)
    real_init = graphs.CapturedStep.__init__
    monkeypatch.setattr(graphs.CapturedStep, "__init__",
                        lambda self, *a, **kw: real_init(self, *a, **{**kw, "capture": True}))
    with pytest.raises(DeviceMemoryError, match="training step 1"):
        train(config(images, tmp_path / "run", cuda_graphs=True), model=load_model(sd1_dir), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_captured_step_learns_what_the_plain_step_learns(sd1_dir, images, tmp_path):
    common = dict(device="cuda", steps=6, grad_accum=2)
    plain = train(config(images, tmp_path / "a", **common), model=load_model(sd1_dir, device="cuda"),
                  progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--cuda-graphs")  # captured, not fallen back
        graphed = train(config(images, tmp_path / "b", cuda_graphs=True, **common),
                        model=load_model(sd1_dir, device="cuda"), progress=False)
    for (s1, l1), (s2, l2) in zip(plain.losses, graphed.losses):
        assert s1 == s2 and abs(l1 - l2) <= 1e-4 * abs(l1)
    torch.testing.assert_close(graphed.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"],
                               rtol=1e-4, atol=1e-5)
