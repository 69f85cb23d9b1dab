"""`--device`: which device each command runs on, and the refusal of one this machine does not have. The tests run on
the CPU; CUDA and MPS machines are simulated by patching what torch reports (only the choosing is simulated, never a
run on them)."""

import os
import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from textinv import models
from textinv import train as train_module
from textinv.cli import main
from textinv.config import GenerateConfig, TrainConfig
from textinv.errors import ConfigError
from textinv.formats import load_embedding
from textinv.generate import drawing_dtype, generate
from textinv.models import load_model, pick_device
from textinv.run_folder import read_run_settings
from conftest import fresh_model, write_images
from textinv.train import resolve_precision, train


def machine(monkeypatch, cuda: int = 0, mps: bool = False) -> None:
    """Make torch report `cuda` CUDA devices and MPS available or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, picked", [(0, False, "cpu"), (0, True, "mps"), (1, True, "cuda"),
                                               (2, False, "cuda")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, picked):
    machine(monkeypatch, cuda, mps)
    assert pick_device("auto") == torch.device(picked)


def test_a_device_this_machine_lacks_is_refused_naming_the_flag_and_what_there_is(monkeypatch):
    machine(monkeypatch, cuda=1)
    assert pick_device("cuda:0") == torch.device("cuda:0") and pick_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"--device cuda:1: this machine has 1 CUDA device \(cuda:0\); use one "
                                          r"of: auto, cpu, cuda:0"):
        pick_device("cuda:1")
    with pytest.raises(ConfigError, match=r"--device mps: PyTorch's MPS backend is not available here \(Apple "
                                          r"Silicon with macOS 12.3\+ only\)"):
        pick_device("mps")
    machine(monkeypatch, mps=True)
    with pytest.raises(ConfigError, match=r"--device cuda: .* CUDA.*; use one of: auto, cpu, mps$"):
        pick_device("cuda")
    for text in ("gpu", "cuda:x", "cuda:-1", "cpu:0", "mps:1", ""):
        with pytest.raises(ConfigError, match="is no device; give auto, cpu, cuda, cuda:N"):
            pick_device(text)


def test_on_this_machine_cuda_3_and_mps_are_refused():
    if torch.cuda.device_count() > 3 or torch.backends.mps.is_available():
        pytest.skip("this machine has them")
    for device in ("cuda:3", "mps"):
        with pytest.raises(ConfigError, match=f"--device {device}: "):
            pick_device(device)


def _no_model_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the device was checked")


def test_every_command_refuses_a_missing_device_before_the_model_loads(monkeypatch, capsys, sd1_dir, images,
                                                                       tmp_path):
    machine(monkeypatch, cuda=1)
    monkeypatch.setattr(train_module, "load_model", _no_model_load)
    with pytest.raises(ConfigError, match="--device mps: PyTorch's MPS backend"):
        train(TrainConfig(images=str(images), token="<zq>", out=str(tmp_path / "run"), device="mps"),
              progress=False)
    assert not (tmp_path / "run").exists()
    emb = tmp_path / "e.safetensors"
    from textinv.formats import LearnedEmbedding, save_embedding

    save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.zeros(1, 32)}), emb)
    import textinv.generate as generate_module
    import textinv.score as score_module

    monkeypatch.setattr(generate_module, "load_model", _no_model_load)
    with pytest.raises(ConfigError, match=r"--device cuda:1: this machine has 1 CUDA device"):
        generate(GenerateConfig(prompt=["a <zq>"], embedding=[str(emb)], out=str(tmp_path / "r"), device="cuda:1"),
                 progress=False)
    monkeypatch.setattr(score_module, "load_model", _no_model_load)
    monkeypatch.setattr(score_module.ClipJudge, "load", _no_model_load)
    assert main(["score", "--embedding", str(emb), "--images", str(images), "--model", str(sd1_dir), "--out",
                 str(tmp_path / "s"), "--device", "cuda:1"]) == 2
    assert not (tmp_path / "s").exists() and "--device cuda:1: this machine has 1" in capsys.readouterr().err
    monkeypatch.setattr(models, "load_model", _no_model_load)
    assert main(["evaluate", "--fast", "--concepts", "1", "--device", "mps"]) == 2
    assert "--device mps: PyTorch's MPS backend" in capsys.readouterr().err


def test_device_cpu_trains_as_the_default_does_and_config_yaml_records_it(sd1_dir, images, tmp_path):
    if pick_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU here")
    common = ["train", "--model", sd1_dir, "--images", images, "--token", "<t>", "--init", "dog", "--steps", "3",
              "--batch", "2", "--save-every", "0", "--sample-every", "0", "--lr", "0.05"]
    assert main([*map(str, common), "--out", str(tmp_path / "auto")]) == 0
    assert main([*map(str, common), "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    vectors = [load_embedding(tmp_path / run / "learned_embeds.safetensors").vectors["text_encoder"]
               for run in ("auto", "cpu")]
    assert torch.equal(*vectors)
    assert "\ndevice: cpu\n" in (tmp_path / "cpu" / "config.yaml").read_text()
    assert "\ndevice: auto\n" in (tmp_path / "auto" / "config.yaml").read_text()


def test_on_mps_auto_precision_is_fp32_and_nothing_asks_cuda(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a torch.cuda call for an MPS device")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda)
    monkeypatch.setattr(torch.Tensor, "pin_memory", no_cuda)
    # a host tensor goes to a device other than CUDA without pinned memory ("meta" stands in for MPS here)
    assert train_module._to_device(torch.ones(2), torch.device("meta")).device.type == "meta"
    mps = torch.device("mps")
    assert resolve_precision("auto", mps) == torch.float32 and drawing_dtype("auto", mps) == torch.float32
    assert resolve_precision("fp16", mps) == torch.float16 and drawing_dtype("bf16", mps) == torch.bfloat16
    # a numbered GPU draws in fp16 as "cuda" does
    assert drawing_dtype("auto", torch.device("cuda:1")) == drawing_dtype("auto", "cuda") == torch.float16


def launched(**tells):
    """A stand-in for accelerate's PartialState that tells every process `tells` (num_processes, device, ...)."""
    return lambda cpu=False, **kwargs: SimpleNamespace(**tells)


def test_under_accelerate_launch_a_numbered_gpu_or_mps_is_refused(monkeypatch, images, tmp_path):
    import accelerate

    machine(monkeypatch, cuda=2, mps=True)
    monkeypatch.setattr(accelerate, "PartialState", launched(num_processes=2, process_index=0, is_main_process=True,
                                                             device=torch.device("cuda:0")))
    monkeypatch.setattr(train_module, "load_model", _no_model_load)
    for device in ("cuda:1", "mps"):
        with pytest.raises(ConfigError, match=f"device='{device}': under accelerate launch each process takes its "
                                              f"own GPU.*--gpu_ids"):
            train(TrainConfig(images=str(images), token="<zq>", out=str(tmp_path / "run"), device=device),
                  progress=False)


def test_a_model_passed_in_trains_on_its_own_device(monkeypatch, sd1_dir, images, tmp_path):
    """`evaluate` and `demo` load the model and pass it in: it trains where it is, whatever accelerate would pick
    (on a GPU machine accelerate says cuda while their model is on the CPU; simulated here by another device)."""
    import accelerate

    monkeypatch.setattr(accelerate, "PartialState", launched(num_processes=1, process_index=0, is_main_process=True,
                                                             device=torch.device("meta")))
    result = train(TrainConfig(images=str(images), token="<zq>", init="dog", out=str(tmp_path / "run"), steps=2,
                               batch=2, save_every=0, sample_every=0), model=load_model(sd1_dir), progress=False)
    assert result.embedding.vectors["text_encoder"].isfinite().all()


def test_a_run_resumes_on_another_device(sd1_dir, images, tmp_path):
    """Where a run runs is no setting of what it learns (as `auto` already resumes a run on another machine): a run
    started on one GPU resumes on another, or on the CPU, and continues as it would have."""
    if pick_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU here")
    common = dict(images=str(images), token="<zq>", init="dog", batch=2, save_every=2, sample_every=0, lr=5e-2)
    straight = train(TrainConfig(**common, out=str(tmp_path / "a"), steps=4, device="cpu"), model=load_model(sd1_dir),
                     progress=False)
    train(TrainConfig(**common, out=str(tmp_path / "b"), steps=2, device="cpu"), model=load_model(sd1_dir),
          progress=False)
    resumed = train(TrainConfig(**common, out=str(tmp_path / "b"), steps=4, resume=True, device="auto"),
                    model=load_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_missing_device_is_refused_before_generate_or_evaluate_makes_its_out_folder(monkeypatch, capsys, tmp_path):
    """A refused command leaves nothing behind: not the empty --out folder (train and score already keep to that)."""
    from textinv.formats import LearnedEmbedding, save_embedding

    machine(monkeypatch, cuda=1)
    emb = tmp_path / "e.safetensors"
    save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.zeros(1, 32)}), emb)
    with pytest.raises(ConfigError, match=r"--device cuda:1: this machine has 1 CUDA device"):
        generate(GenerateConfig(prompt=["a <zq>"], embedding=[str(emb)], out=str(tmp_path / "r"), device="cuda:1"),
                 progress=False)
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(models, "load_model", _no_model_load)
    assert main(["evaluate", "--fast", "--concepts", "1", "--device", "mps", "--out", str(tmp_path / "e")]) == 2
    assert "--device mps: PyTorch's MPS backend" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def _as_on_a_gpu(precision: str, device: torch.device) -> torch.dtype:
    """`resolve_precision` as on a CUDA GPU that has bf16: what `auto` is there."""
    return torch.bfloat16 if precision == "auto" else models.DTYPES[precision]


def _run(images, sd1_dir, out, steps, **kw) -> TrainConfig:
    return TrainConfig(images=str(images), model=str(sd1_dir), token="<zq>", init="dog", out=str(out), steps=steps,
                       batch=2, save_every=2, sample_every=0, lr=5e-2, **kw)


def test_fp16_trains_on_the_cpu_with_loss_scaling(sd1_dir, images, tmp_path, monkeypatch):
    """`--precision fp16` on the CPU, which torch (2.13) computes in: the frozen weights load at fp16, the loss is
    scaled as on a GPU, the learned vector moves while every other row and weight stays as loaded, and the file
    saves at fp32 and loads back as trained."""
    from conftest import recorded_results
    from textinv.tokens import base_embedding, encode_init

    loaded = recorded_results(monkeypatch, train_module, "load_model")
    out = tmp_path / "out"
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<zq>", "--init", "dog",
                 "--out", str(out), "--steps", "4", "--batch", "2", "--lr", "0.05", "--save-every", "4",
                 "--sample-every", "4", "--sample-steps", "2", "--precision", "fp16", "--device", "cpu"]) == 0
    [model], as_loaded = loaded, load_model(sd1_dir, dtype=torch.float16)
    assert model.unet.dtype == torch.float16 and model.unet.device.type == "cpu"
    for part in ("unet", "vae"):
        got, want = getattr(model, part).state_dict(), getattr(as_loaded, part).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), part
    table = base_embedding(as_loaded.text_encoder).weight
    assert torch.equal(base_embedding(model.text_encoder).weight, table)  # (the vocabulary's rows as loaded)
    learned = load_embedding(out / "learned_embeds.safetensors")
    assert learned.vectors["text_encoder"].dtype == torch.float32 and learned.metadata["steps"] == "4"
    assert torch.isfinite(learned.vectors["text_encoder"]).all()
    dog = table[encode_init(as_loaded.tokenizer, "dog")[0]].float()
    assert not torch.allclose(learned.vectors["text_encoder"][0], dog), "the new vector did not move"
    state = torch.load(out / "checkpoints" / "step-000004.pt", weights_only=True)
    assert (state["precision"], state["device"]) == ("fp16", "cpu")
    assert state["scaler"]["scale"] > 1  # (GradScaler on: fp32 and bf16 runs save it off, an empty state)
    assert torch.equal(state["vectors"][0], learned.vectors["text_encoder"])
    assert (out / "samples" / "step-000004.png").exists()


def test_a_resume_at_the_same_precision_given_otherwise_goes_on_to_the_uninterrupted_run(sd1_dir, images, tmp_path):
    """`auto` is fp32 on the CPU, so `--precision fp32` resumes a run started with `auto` there (it was refused as
    another setting): the steps are the same arithmetic, and the run ends where the uninterrupted one does."""
    if pick_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU here")
    straight = train(_run(images, sd1_dir, tmp_path / "a", 4), progress=False)
    train(_run(images, sd1_dir, tmp_path / "b", 2), progress=False)
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", "--steps", "4", "--precision", "fp32"]) == 0
    resumed = load_embedding(tmp_path / "b" / "learned_embeds.safetensors")
    assert torch.equal(resumed.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    state = torch.load(tmp_path / "b" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert (state["precision"], state["device"]) == ("fp32", "cpu")


def test_a_run_moved_to_a_device_where_its_precision_is_another_is_refused_before_the_model_loads(
        sd1_dir, images, tmp_path, monkeypatch):
    """`auto` is bf16 on a CUDA GPU and fp32 on the CPU: a run resumed on the other one went on at the other
    precision, silently. Now the resume names both and the --precision that goes on as the run was; with it, it
    does. (The GPU is simulated: a checkpoint recording what a GPU's bf16 run records, and `auto` resolved as there.)"""
    if pick_device("auto").type != "cpu":
        pytest.skip("auto is not the CPU here")
    out = tmp_path / "b"
    straight = train(_run(images, sd1_dir, tmp_path / "a", 4), progress=False)
    train(_run(images, sd1_dir, out, 2), progress=False)
    [path] = out.glob("checkpoints/*.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "precision": "bf16", "device": "cuda"}, path)  # (a GPU's bf16 run, resumed on the CPU)
    real_load = train_module.load_model
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ConfigError, match=r"cannot resume .* at fp32 \(precision='auto' on cpu\): its "
                                          r"checkpoint step-000002.pt was trained at bf16 on cuda.*resume with "
                                          r"precision='bf16' to go on as it was, or with precision='fp32' to go on at "
                                          r"fp32 knowingly"):
        train(_run(images, sd1_dir, out, 4, resume=True), progress=False)
    torch.save(state, path)  # (the CPU's fp32 run, resumed on a GPU, where auto is bf16)
    monkeypatch.setattr(train_module, "resolve_precision", _as_on_a_gpu)
    with pytest.raises(ConfigError, match=r"at bf16 \(precision='auto' on cpu\): its checkpoint step-000002.pt was "
                                          r"trained at fp32 on cpu.*resume with precision='fp32'"):
        train(_run(images, sd1_dir, out, 4, resume=True), progress=False)
    monkeypatch.setattr(train_module, "load_model", real_load)
    resumed = train(_run(images, sd1_dir, out, 4, resume=True, precision="fp32"), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_checkpoint_without_the_precision_record_resumes_comparing_the_setting_as_written(sd1_dir, images,
                                                                                              tmp_path, monkeypatch):
    """Checkpoints saved before the record: the same word resumes whatever it resolves to now (as then); another
    word is a change asked for, warned about since the precision the steps were taken at cannot be told."""
    from textinv.run_folder import PrecisionChangedWarning

    for out in (tmp_path / "b", tmp_path / "c"):
        train(_run(images, sd1_dir, out, 2), progress=False)
        [path] = out.glob("checkpoints/*.pt")
        state = torch.load(path, weights_only=True)
        del state["precision"], state["device"]
        torch.save(state, path)
    with pytest.warns(PrecisionChangedWarning, match=r"at fp32 \(precision='fp32'\), as asked: it ran at a "
                                                     r"precision its checkpoint does not record \(precision='auto'\)"):
        assert train(_run(images, sd1_dir, tmp_path / "c", 4, resume=True, precision="fp32"),
                     progress=False).steps == 4
    monkeypatch.setattr(train_module, "resolve_precision", _as_on_a_gpu)  # (auto is bf16 now: not recorded then)
    assert train(_run(images, sd1_dir, tmp_path / "b", 4, resume=True), progress=False).steps == 4


def test_another_precision_asked_for_on_resume_goes_on_warned(sd1_dir, images, tmp_path, monkeypatch):
    """A GPU's bf16 run resumed on the CPU with --precision fp32 given: a change asked for, not one that `auto`
    made silently; it goes on at fp32, warned that it will not end exactly where it would have. The same word
    meaning the same dtype (fp32 for a CPU run of auto) says nothing."""
    from textinv.run_folder import PrecisionChangedWarning

    out = tmp_path / "b"
    train(_run(images, sd1_dir, out, 2), progress=False)
    [path] = out.glob("checkpoints/*.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "precision": "bf16", "device": "cuda"}, path)
    with pytest.warns(PrecisionChangedWarning, match=r"resuming .* at fp32 \(precision='fp32'\), as asked: it ran "
                                                     r"at bf16 on cuda \(precision='auto'\)"):
        resumed = train(_run(images, sd1_dir, out, 4, resume=True, precision="fp32"), progress=False)
    assert resumed.steps == 4


def test_a_resume_compares_the_precision_of_a_model_passed_in(sd1_dir, images, tmp_path):
    """A model passed to train() takes its steps at its own dtype, whatever --precision reads as: the checkpoint
    records that one, and a resume with a model at another (or none, where --precision gives another) is refused as
    one at another --precision is; the same model's dtype resumes."""
    bf16 = load_model(sd1_dir, dtype=torch.bfloat16)
    train(_run(images, sd1_dir, tmp_path / "b", 2), model=bf16, progress=False)
    state = torch.load(tmp_path / "b" / "checkpoints" / "step-000002.pt", weights_only=True)
    assert state["precision"] == "bf16"
    with pytest.raises(ConfigError, match=r"cannot resume .* at fp32 \(precision='auto' on cpu\): its checkpoint "
                                          r"step-000002.pt was trained at bf16 on cpu"):
        train(_run(images, sd1_dir, tmp_path / "b", 4, resume=True), progress=False)
    assert train(_run(images, sd1_dir, tmp_path / "b", 4, resume=True), model=bf16, progress=False).steps == 4
    train(_run(images, sd1_dir, tmp_path / "f", 2), model=load_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* at bf16 \(the model passed to train\(\)\): its "
                                          r"checkpoint step-000002.pt was trained at fp32 on cpu.*pass the model "
                                          r"loaded at torch.float32 \(load_model's dtype\)"):
        train(_run(images, sd1_dir, tmp_path / "f", 4, resume=True), model=bf16, progress=False)


def test_accelerate_launchs_mixed_precision_is_taken_where_precision_is_left_out(sd1_dir, images, tmp_path,
                                                                                monkeypatch, capsys):
    """The diffusers script takes its precision from `accelerate launch --mixed_precision bf16` or the `accelerate
    config` file, which accelerate passes on as ACCELERATE_MIXED_PRECISION; textinv only warned that it took
    --precision instead. Left out, --precision is the launch's now, and the run says so (config.yaml records it)."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*mixed precision")
        train(_run(images, sd1_dir, tmp_path / "a", 1), progress=True)
    assert ("--precision bf16: accelerate launch's mixed precision (its --mixed_precision or your accelerate "
            "config), with --precision left out") in capsys.readouterr().out
    assert read_run_settings(tmp_path / "a")["precision"] == "bf16"
    with pytest.warns(UserWarning, match=r"is bf16, not taken by textinv: this run takes fp32"):  # (a model passed
        train(_run(images, sd1_dir, tmp_path / "b", 1), model=fresh_model(sd1_dir), progress=False)  # in: its own)
    assert read_run_settings(tmp_path / "b")["precision"] == "auto"


@pytest.mark.parametrize("asked, given, taken, said", [
    ("bf16", "fp32", "fp32", r"give --precision bf16 \(or leave --precision out\)"),  # (the user's, warned about)
    ("fp8", None, "auto", "textinv has --precision fp32, fp16, bf16"),  # (none of textinv's)
    ("no", None, "auto", None),  # (every launch's default: nothing to say)
])
def test_accelerate_launchs_mixed_precision_that_the_run_does_not_take_is_warned_about(
        asked, given, taken, said, sd1_dir, images, tmp_path, monkeypatch):
    """A --precision given that differs from the launch's is kept, with a warning naming both; the launch's fp8
    (no precision of textinv's) leaves auto, warned about; its "no", every launch's default, says nothing."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", asked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_run(images, sd1_dir, tmp_path / "a", 1, precision=given), progress=False)
    warned = [str(w.message) for w in caught if "mixed precision" in str(w.message)]
    assert read_run_settings(tmp_path / "a")["precision"] == taken
    if said is None:
        assert not warned
    else:
        assert len(warned) == 1 and re.search(
            rf"accelerate launch's mixed precision \(its --mixed_precision or your accelerate config\) is {asked}, "
            rf"not taken by textinv: this run takes fp32 \(--precision {taken}\); {said}", warned[0]), warned


LAUNCH_SAID = ("--precision bf16: accelerate launch's mixed precision (its --mixed_precision or your accelerate "
               "config), with --precision left out")


def test_generate_takes_accelerate_launchs_mixed_precision_where_precision_is_left_out(sd1_dir, tmp_path, monkeypatch,
                                                                                      capsys):
    """As train: under `accelerate launch --mixed_precision bf16`, generate drew at auto (fp32 on the CPU), the
    launch's precision unread. Left out, --precision is the launch's, said as train says it (once for an X/Y/Z plot,
    not by each cell); given, or with a model passed in, the launch's is not taken."""
    import json

    from PIL import Image

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    runs = iter(range(10))

    def drawn_at(model=None, **settings):
        paths = generate(GenerateConfig(**{"prompt": ["a photo of a dog"], "model": str(sd1_dir), "n": 1, "steps": 1,
                                           "out": str(tmp_path / f"r{next(runs)}"), "metadata": "full", **settings}),
                         model=model, progress=True)
        return json.loads(Image.open(paths[-1]).text["textinv_settings"])["settings"]["precision"]

    assert drawn_at() == "bf16"
    assert capsys.readouterr().out.count(LAUNCH_SAID) == 1
    assert drawn_at(x="steps=1,2") == "bf16"  # (a 2x1 plot)
    assert capsys.readouterr().out.count(LAUNCH_SAID) == 1
    assert drawn_at(precision="fp32") == "fp32"
    assert drawn_at(model=fresh_model(sd1_dir)) == "fp32"  # (a model passed in draws at its own dtype)
    assert LAUNCH_SAID not in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # (every launch's default: auto)
    assert drawn_at() == "fp32" and LAUNCH_SAID not in capsys.readouterr().out


def test_score_takes_accelerate_launchs_mixed_precision_where_precision_is_left_out(sd1_dir, tmp_path, monkeypatch,
                                                                                   capsys):
    """score loads its model as generate does: at the launch's precision where --precision is left out."""
    from textinv import score as score_module
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.score import ScoreConfig, score

    class Loaded(Exception):
        pass

    def load(source, dtype, **kwargs):  # (the dtype asked for is all this test needs: no drawing)
        raise Loaded(dtype)

    monkeypatch.setattr(score_module, "load_model", load)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    file = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "q.safetensors")[0]
    images = write_images(tmp_path / "images", n=2)
    for precision, dtype in ((None, torch.bfloat16), ("fp32", torch.float32)):
        with pytest.raises(Loaded) as loaded:
            score(ScoreConfig(embedding=str(file), images=str(images), model=str(sd1_dir), n=1, steps=1,
                              out=str(tmp_path / "o"), precision=precision), judge=object(), progress=True)
        assert loaded.value.args == (dtype,)
        assert capsys.readouterr().out.count(LAUNCH_SAID) == (precision is None)


@pytest.mark.skipif(sys.platform != "linux", reason="a launched subprocess")
def test_the_accelerate_config_files_mixed_precision_reaches_train_through_the_launch(tmp_path):
    """`accelerate launch --config_file FILE` passes the file's mixed_precision on to the script it starts, as the
    ACCELERATE_MIXED_PRECISION that `launcher_precision` reads."""
    config = tmp_path / "default_config.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: bf16\n"
                      "num_machines: 1\nnum_processes: 1\nuse_cpu: true\n")
    script = tmp_path / "asked.py"
    script.write_text("from textinv.train import launcher_precision\nprint('asked', launcher_precision())\n")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--num_cpu_threads_per_process", "1"]
    proc = subprocess.run([*launch, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asked bf16" in proc.stdout
