"""`--device`: which device each command runs on, and the refusal of one this machine does not have. The tests run on
the CPU; CUDA and MPS machines are simulated by patching what torch reports (only the choosing is simulated, never a
run on them)."""

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
        with pytest.raises(ConfigError, match=f"--device {device}: under accelerate launch each process takes its "
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
