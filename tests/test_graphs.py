"""--cuda-graphs: the captured step's path (static inputs, autograd.grad into outputs, accumulation into .grad)
learns what the plain step learns; what it cannot take is refused; a capture that fails falls back to the plain
step. The capture itself needs a GPU: on the CPU the same path runs without it (`CapturedStep(capture=False)`),
or with torch.cuda's capture faked (`FakeCapture`: replays write over the graph's outputs, and every tensor the
graph reads must stay where it was for the whole run), and the last test compares a real capture with the plain
step where a GPU is present."""

import gc
import warnings

import pytest
import torch

from textinv import graphs
from textinv import train as train_module
from textinv.config import TrainConfig
from textinv.errors import ConfigError, DeviceMemoryError
from textinv.models import load_model
from textinv.train import train

from graph_fakes import FakeCapture
from test_train import config
from conftest import fresh_model


@pytest.fixture
def on_the_cpu(monkeypatch):
    """Let --cuda-graphs run on the CPU (its path without the capture) and count the captured step's calls."""
    monkeypatch.setattr(train_module, "check_graph_device", lambda device: None)
    calls = []
    real = graphs.CapturedStep.__call__
    monkeypatch.setattr(graphs.CapturedStep, "__call__", lambda self, inputs: calls.append(1) or real(self, inputs))
    return calls


@pytest.fixture
def fake_capture(monkeypatch):
    monkeypatch.setattr(train_module, "check_graph_device", lambda device: None)
    return FakeCapture(monkeypatch)


def weights(model) -> dict:
    """Every parameter and buffer of the model's UNet and text encoders, by name."""
    parts = [("unet", model.unet)] + [(name, te) for name, _, te in model.encoders]
    return {f"{part}.{name}": t for part, module in parts
            for name, t in list(module.named_parameters()) + list(module.named_buffers())}


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
    plain = train(TrainConfig(out=str(tmp_path / "a"), **common), model=fresh_model(sd1_dir), progress=False)
    graphed = train(TrainConfig(out=str(tmp_path / "b"), cuda_graphs=True, **common), model=fresh_model(sd1_dir),
                    progress=False)
    same_run(plain, graphed)

    xl = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(xl)
    common = dict(images=str(dogs), token="<zx>", init="dog", model=str(xl), steps=3, batch=2, save_every=0,
                  sample_every=0, log_every=1, device="cpu")  # (the path without the capture, on a GPU machine too)
    plain = train(TrainConfig(out=str(tmp_path / "xa"), **common), progress=False)
    graphed = train(TrainConfig(out=str(tmp_path / "xb"), cuda_graphs=True, **common), progress=False)
    assert set(plain.embedding.vectors) == {"text_encoder", "text_encoder_2"}  # both encoders' vectors learn through it
    same_run(plain, graphed)


def test_cuda_graphs_may_be_turned_on_when_resuming(on_the_cpu, sd1_dir, images, tmp_path):
    straight = train(config(images, tmp_path / "a", steps=4), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, out, steps=4, save_every=2, resume=True, cuda_graphs=True),
                    model=fresh_model(sd1_dir), progress=False)
    same_run(straight, resumed)


def test_what_a_captured_step_cannot_take_is_refused(images, tmp_path, sd1_dir):
    with pytest.raises(ConfigError, match="cuda_graphs= and buckets="):
        config(images, tmp_path, cuda_graphs=True, buckets=True).validate()
    with pytest.raises(ConfigError, match="compile_mode='reduce-overhead'"):
        config(images, tmp_path, cuda_graphs=True, compile="unet", compile_mode="reduce-overhead").validate()
    config(images, tmp_path, cuda_graphs=True, compile="blocks").validate()  # (regional compile is captured too)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs an NVIDIA GPU; this run is on cpu: leave cuda_graphs= out"):
            train(config(images, tmp_path / "run", cuda_graphs=True), model=fresh_model(sd1_dir), progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_capture_that_fails_warns_once_and_the_step_runs_without_it(monkeypatch):
    """Here the capture fails as it does on a machine without CUDA (on one with CUDA these CPU tensors would make an
    empty graph, which torch only warns about); the step's results are the plain ones."""
    def no_cuda():
        raise RuntimeError("torch.cuda.Stream requires CUDA support")

    monkeypatch.setattr(torch.cuda, "Stream", no_cuda)
    weight = torch.randn(3, requires_grad=True)

    def losses(x):
        return (x["a"] * weight).sum(dim=1)

    step = graphs.CapturedStep(losses, [weight], capture=True)
    with pytest.warns(UserWarning, match="could not be captured as a CUDA graph"):
        out = step({"a": torch.ones(2, 3)})
    assert torch.equal(out, torch.full((2,), float(weight.detach().sum())))
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
        train(config(images, tmp_path / "run", cuda_graphs=True), model=fresh_model(sd1_dir), progress=False)


def test_a_replay_adds_its_own_gradients_and_returns_its_own_losses(fake_capture):
    """A replay writes over the graph's outputs: what a call returned, and what it added to .grad, are copies."""
    weight = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    step = graphs.CapturedStep(lambda x: (x["a"] * weight).sum(dim=1), [weight])
    first = step({"a": torch.ones(2, 3)})
    second = step({"a": torch.full((2, 3), 2.0)})  # (new values, copied into the captured input)
    assert (fake_capture.captures, fake_capture.replays) == (1, 2)
    assert first.tolist() == [6.0, 6.0] and second.tolist() == [12.0, 12.0]
    assert weight.grad.tolist() == [6.0, 6.0, 6.0]  # 2 + 4: each replay's gradient added once


@pytest.mark.parametrize("settings", [
    dict(precision="fp16", grad_accum=2, max_grad_norm=0.05),  # (loss scaling, clipping, accumulation)
    dict(min_snr_gamma=5.0, vectors=2, sample_every=3, sample_steps=2, save_every=3),  # (a grid, a save between)
    dict(gradient_checkpointing=True, weight_decay=0.5, installed=True),  # (an installed token's rows put back)
    dict(reference_like=True),  # (the whole table trained, the frozen rows put back)
    dict(max_token_length=150, vectors=2),  # (kohya's long captions: every chunk through the text encoder)
    # (kohya's noise, made before the step and copied in: the perturbed noise one more input; its loss and weights
    # computed inside the graph from the timesteps)
    dict(noise_offset=0.1, adaptive_noise_scale=0.05, noise_offset_random_strength=True, multires_noise_iterations=4,
         ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, loss_type="huber", huber_schedule="snr",
         debiased_estimation_loss=True, v_pred_like_loss=0.1, min_snr_gamma=5.0),
])
def test_replayed_on_the_cpu_the_captured_step_learns_what_the_plain_step_learns(settings, fake_capture, sd1_dir,
                                                                                  images, tmp_path):
    """Under a capture faked on the CPU (`FakeCapture`), the run replays one graph, never replaces a tensor the
    graph reads (the weights, the trained vectors, its inputs), and learns what the plain step learns."""
    from textinv.formats import LearnedEmbedding
    from textinv.generate import install_embedding

    settings = dict(settings)
    installed = settings.pop("installed", False)
    dtype = torch.float16 if settings.get("precision") == "fp16" else torch.float32
    runs = []
    for name, graphed in (("a", False), ("b", True)):
        model = load_model(sd1_dir, dtype=dtype)
        if installed:
            install_embedding(model, LearnedEmbedding("<had>", {"text_encoder": torch.ones(2, 32)}, {}))
        fake_capture.watch = lambda: weights(model)
        runs.append(train(config(images, tmp_path / name, cuda_graphs=graphed, **settings), model=model,
                          progress=False))
    assert (fake_capture.captures, fake_capture.replays) == (1, 6 * settings.get("grad_accum", 1))
    same_run(*runs)


def test_a_resumed_run_captures_its_step_again(fake_capture, sd1_dir, images, tmp_path):
    straight = train(config(images, tmp_path / "a", steps=4), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    model = fresh_model(sd1_dir)
    fake_capture.watch = lambda: weights(model)
    train(config(images, out, steps=2, save_every=2, cuda_graphs=True), model=model, progress=False)
    model = fresh_model(sd1_dir)
    resumed = train(config(images, out, steps=4, save_every=2, resume=True, cuda_graphs=True), model=model,
                    progress=False)
    assert (fake_capture.captures, fake_capture.replays) == (2, 4)
    same_run(straight, resumed)


def test_a_stopped_run_lets_go_of_its_graph(fake_capture, sd1_dir, images, tmp_path):
    """A graph holds a whole step's memory: an interrupted (or failed) run's traceback, which a notebook keeps,
    must not keep it."""
    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(train_module.TrainingInterrupted) as info:
        train(config(images, tmp_path / "run", cuda_graphs=True), model=fresh_model(sd1_dir), progress=False,
              on_step=stop)
    gc.collect()
    assert info.value.__traceback__ is not None and fake_capture.replays == 2
    assert all(ref() is None for ref in fake_capture.steps)


def ending_the_capture_fails_on(error):
    """A `_capture` that fails as `torch.cuda.graph` does when its body raised `error`: its exit, ending the broken
    capture, raises an error of its own with `error` as its context."""
    def capture(self):
        try:
            raise error
        except Exception:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
    return capture


def test_a_failed_capture_names_the_error_that_broke_it(monkeypatch):
    monkeypatch.setattr(graphs.CapturedStep, "_capture", ending_the_capture_fails_on(RuntimeError(
        "Cannot call CUDAGeneratorImpl::current_seed during CUDA graph capture.\nIf you need this call to be "
        "captured, please file an issue.")))
    weight = torch.ones(3, requires_grad=True)
    step = graphs.CapturedStep(lambda x: (x["a"] * weight).sum(dim=1), [weight])
    with pytest.warns(UserWarning, match=r"\(RuntimeError: Cannot call CUDAGeneratorImpl::current_seed during CUDA "
                                         r"graph capture\.\); training goes on without graphs"):
        step({"a": torch.ones(2, 3)})


def test_running_out_of_memory_inside_the_capture_is_the_runs_error(on_the_cpu, sd1_dir, images, tmp_path,
                                                                    monkeypatch):
    """The capture's end fails on the out-of-memory error its body raised: the run still says it ran out of memory,
    and leaving out --cuda-graphs is the first thing it suggests (a captured step keeps its memory for the run)."""
    monkeypatch.setattr(graphs.CapturedStep, "_capture", ending_the_capture_fails_on(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    real_init = graphs.CapturedStep.__init__
    monkeypatch.setattr(graphs.CapturedStep, "__init__",
                        lambda self, *a, **kw: real_init(self, *a, **{**kw, "capture": True}))
    with pytest.raises(DeviceMemoryError, match=r"in training step 1 \(batch 2, 16x16, fp32, cuda_graphs=True\).*"
                                                r"least: cuda_graphs=False \(the same result, slower at small "
                                                r"batches\); gradient_checkpointing=True"):
        train(config(images, tmp_path / "run", cuda_graphs=True), model=fresh_model(sd1_dir), progress=False)


def test_a_grid_that_runs_out_of_memory_beside_the_captured_step_suggests_leaving_it_out(images, tmp_path):
    from textinv.train_memory import _memory_error, _Where

    for graphed in (False, True):
        where = _Where(config(images, tmp_path, cuda_graphs=graphed, sample_every=5), torch.float16, stage="grid",
                       step=5, resolution=512)
        where.prompts, where.writing, where.saved = 4, True, 5
        message = str(_memory_error(where, torch.device("cpu"), torch.OutOfMemoryError("")))
        assert ("; cuda_graphs=False (the training step's memory is then free for the grid). " in message) == graphed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family, settings, must_capture", [
    ("sd1", dict(grad_accum=2), True),
    ("sd1", dict(precision="fp16", grad_accum=2, max_grad_norm=0.05), True),  # (the loss scale read in the graph)
    ("sd1", dict(precision="bf16", vectors=2, clip_skip=2), True),
    ("sd2", dict(min_snr_gamma=5.0), True),  # (v-prediction: the velocity target and its min-SNR weights)
    # (kohya's noise and loss: the perturbed noise an input of its own, the thresholds and weights in the graph)
    ("sd2", dict(noise_offset=0.1, adaptive_noise_scale=0.05, multires_noise_iterations=4, ip_noise_gamma=0.1,
                 loss_type="smooth_l1", huber_schedule="exponential", debiased_estimation_loss=True,
                 scale_v_pred_loss_like_noise_pred=True), True),
    ("sdxl", dict(batch=1), True),  # (two encoders, the pooled vector at the end-of-text token, time ids)
    # torch.utils.checkpoint saves and restores the RNG state, which some torch versions refuse while capturing:
    # captured or run eagerly with a warning (the summary says which), the same numbers either way
    ("sd1", dict(gradient_checkpointing=True), False),
])
def test_on_a_gpu_the_captured_step_learns_what_the_plain_step_learns(family, settings, must_capture, sd1_dir, sd2_dir,
                                                                     images, tmp_path):
    from textinv.models import DTYPES
    from textinv.tiny import build_tiny_xl_pipeline

    if family == "sdxl":
        source = tmp_path / "xl"
        build_tiny_xl_pipeline().save_pretrained(source)
    else:
        source = {"sd1": sd1_dir, "sd2": sd2_dir}[family]
    dtype = DTYPES[settings.get("precision", "fp32")]
    common = dict(device="cuda", steps=6, **settings)
    plain = train(config(images, tmp_path / "a", **common), model=load_model(source, dtype=dtype, device="cuda"),
                  progress=False)
    with warnings.catch_warnings():
        if must_capture:
            warnings.filterwarnings("error", message="--cuda-graphs")  # captured, not fallen back
        graphed = train(config(images, tmp_path / "b", cuda_graphs=True, **common),
                        model=load_model(source, dtype=dtype, device="cuda"), progress=False)
    within = 1e-4 if dtype == torch.float32 else 1e-2
    for (s1, l1), (s2, l2) in zip(plain.losses, graphed.losses, strict=True):
        assert s1 == s2 and abs(l1 - l2) <= within * abs(l1)
    for name, vectors in plain.embedding.vectors.items():
        torch.testing.assert_close(graphed.embedding.vectors[name], vectors, rtol=within, atol=within / 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_shapes_pretraining_step_is_captured_and_learns_what_the_plain_step_learns(tmp_path,
                                                                                                monkeypatch):
    """The shapes model's UNet stage with --cuda-graphs (`pretrain --cuda-graphs`): its step is captured, not fallen
    back (the text encoder's embedding backward over 64 x 77 ids takes CUDA's sorting path, which must keep its
    counts on the device), while two threads render the next steps' pictures, and each step's loss and gradient
    norm are the plain step's to bf16's precision (gradients from another step, or scaled twice, would not be)."""
    import json
    import shutil

    from textinv.shapes import pretrain

    config = pretrain.PretrainConfig(**{**pretrain.QUICK, "unet_batch": 64})
    pretrain.train_vae(config, tmp_path / "vae-only", minutes=5, max_steps=2, device="cuda", log=lambda _: None)
    seen = {}
    real_clip, real_tick = torch.nn.utils.clip_grad_norm_, pretrain._Chunk.tick

    def clip(params, max_norm, *args, **kwargs):
        norm = real_clip(params, max_norm, *args, **kwargs)
        seen["norms"].append(norm.detach().clone())
        return norm

    def tick(chunk, shown, name):
        seen["losses"].append(shown.detach().clone())
        return real_tick(chunk, shown, name)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(pretrain._Chunk, "tick", tick)
    runs = {}
    for name, cuda_graphs in (("plain", False), ("graphs", True)):
        seen.update(norms=[], losses=[])
        work = tmp_path / name
        shutil.copytree(tmp_path / "vae-only", work)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="--cuda-graphs")  # captured, not fallen back
            pretrain.train_unet(config, work, minutes=5, max_steps=5, device="cuda", log=lambda _: None, ahead=True,
                                render_threads=2, cuda_graphs=cuda_graphs)
        record = json.loads((work / "log.json").read_text())["unet"]["chunks"][-1]
        runs[name] = record.get("cuda_graphs"), torch.stack(seen["norms"]).cpu(), torch.stack(seen["losses"]).cpu()
    assert runs["plain"][0] is None and runs["graphs"][0] == "captured"
    for i in (1, 2):  # (bf16 autocast: the same kernels, replayed, may still round a little differently)
        assert runs["plain"][i].shape == (5,)
        torch.testing.assert_close(runs["graphs"][i], runs["plain"][i], rtol=2e-2, atol=0)
