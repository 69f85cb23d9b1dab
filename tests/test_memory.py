"""Running out of GPU memory: one textinv error that says where, the fixes with the run's own numbers, and a run
folder that resumes. The device's error is simulated on the CPU: the UNet's nth call raises what CUDA's allocator
(or MPS's) raises."""

import dataclasses
import re
import warnings

import pytest
import torch

from conftest import CUDA_OUT_OF_MEMORY, fresh_model, out_of_memory_at, train_config
from textinv import cli
from textinv import latent_cache, losses, memory, train as train_module, train_memory
from textinv.errors import ON_COMMAND_LINE, DeviceMemoryError
from textinv.memory import device_note, is_out_of_memory
from textinv.models import load_model
from textinv.run_folder import checkpoints, run_lock
from textinv.train import train
from textinv.train_memory import _memory_error, _Where

MPS_MESSAGE = ("MPS backend out of memory (MPS allocated: 17.90 GB, other allocations: 40.00 MB, max allowed: 18.13 "
               "GB). Tried to allocate 256.00 MB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable "
               "upper limit for memory allocations (may cause system failure).")


def config(images, out, **kw):
    return train_config(images, out, **{"batch": 4, **kw})


def test_out_of_memory_in_a_step_names_it_with_the_fixes_and_the_run_resumes_to_the_same_result(
        sd1_dir, images, tmp_path, monkeypatch):
    straight = train(config(images, tmp_path / "a"), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    undo, seen = out_of_memory_at(monkeypatch, 4)  # (one UNet call a step: step 4)
    real_save, held_at_save = train_module.save_checkpoint, []

    def save_checkpoint(*a, **k):
        held_at_save.append(seen[-1]() is not None)
        return real_save(*a, **k)

    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    real_finish, finished = train_module.RunTracker.finish, []
    monkeypatch.setattr(train_module.RunTracker, "finish", lambda self: finished.append(real_finish(self)))
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, out, log_with="tensorboard"), model=fresh_model(sd1_dir), progress=False)
    undo()
    assert held_at_save == [False]  # the failed step's tensors were let go of before the save
    assert len(finished) == 1  # the tracker closed
    message = str(info.value)
    assert message.startswith("out of memory on cpu in training step 4 (batch 4, 16x16, fp32): torch tried to "
                              "allocate 2.00 GiB more. Settings that need less memory, from the one that changes "
                              "the result least: ")
    fixes = ["gradient_checkpointing=True (the same result, about a third slower)",
             "batch=2, grad_accum=2 (the same 4 samples a step, drawn in 2 passes)", "precision='bf16'",
             "resolution=8 (the pictures are learned at that size)"]
    assert "; ".join(fixes) in message
    assert message.endswith(f"The run is saved at step 3: out={str(out)!r}, resume=True continues it with "
                            f"gradient_checkpointing=True, which changes nothing that is learned; the other settings "
                            f"change what is learned: they start the run again with overwrite=True, or in another out=")
    # the folder is a resumable run: the last finished step saved, the lock released, no write left half done
    assert [p.name for p in checkpoints(out)] == ["step-000003.pt"]
    assert not list(out.rglob("*.tmp"))
    with run_lock(out):  # (flock refuses a second open file even in this process: it would fail while held)
        pass
    resumed = train(config(images, out, resume=True, gradient_checkpointing=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def test_the_error_holds_none_of_the_failed_steps_tensors_and_the_model_trains_again(sd1_dir, images, tmp_path,
                                                                                     monkeypatch):
    """A notebook keeps the last error (sys.last_exc): through the frames in its traceback (or its context's), the
    failed step's tensors would stay on the GPU, and a second try with a smaller batch would not fit either."""
    model = fresh_model(sd1_dir)
    size = len(model.tokenizer)
    undo, seen = out_of_memory_at(monkeypatch, 2)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, tmp_path / "run"), model=model, progress=False)
    undo()
    kept = info.value  # (held, as a notebook holds it)
    assert kept.__context__ is None and kept.__cause__ is None
    assert seen[-1]() is None  # the failing call's input is gone, without a garbage collection
    assert len(model.tokenizer) == size and not model.unet.training
    again = train(config(images, tmp_path / "run", batch=2, grad_accum=2, overwrite=True), model=model,
                  progress=False)
    assert again.steps == 6


def test_out_of_memory_in_a_sample_grid_resumes_without_grids(sd1_dir, images, tmp_path, monkeypatch):
    grids = dict(sample_every=2, sample_steps=2, steps=4)
    straight = train(config(images, tmp_path / "a", **grids), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    # the UNet's calls: the grid of step 0 (two denoising steps), steps 1 and 2, then the grid of step 2
    undo, _ = out_of_memory_at(monkeypatch, 5)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, out, **grids), model=fresh_model(sd1_dir), progress=False)
    undo()
    message = str(info.value)
    assert message.startswith("out of memory on cpu drawing the sample grid of step 2 (4 prompts at 16x16): ")
    assert ("from the one that changes the result least: fewer sample_prompts= (the grid draws its 4 at once); "
            "sample_every=0 (no grids). ") in message
    assert message.endswith(f"The run is saved at step 2: out={str(out)!r}, resume=True continues it with "
                            f"fewer sample_prompts= or sample_every=0, which change nothing that is learned")
    assert [p.name for p in checkpoints(out)] == ["step-000002.pt"]
    resumed = train(config(images, out, resume=True, **{**grids, "sample_every": 0}), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_out_of_memory_in_the_last_grid_says_the_run_had_finished(sd1_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "b"
    undo, _ = out_of_memory_at(monkeypatch, 9)  # (grids of steps 0 and 2 two calls each, a call a step: step 4's)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, out, sample_every=2, sample_steps=2, steps=4), model=fresh_model(sd1_dir),
              progress=False)
    undo()
    assert str(info.value).endswith("The run had finished: its embedding and checkpoint of step 4 are saved; only "
                                    "the grid is missing")
    assert [p.name for p in checkpoints(out)] == ["step-000004.pt"]
    assert (out / "learned_embeds.safetensors").is_file()


def test_mps_running_out_is_the_same_error(sd1_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "b"
    undo, _ = out_of_memory_at(monkeypatch, 1, RuntimeError(MPS_MESSAGE))
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, out, batch=3, precision="bf16"), model=load_model(sd1_dir, dtype=torch.bfloat16),
              progress=False)
    undo()
    message = str(info.value)
    assert message.startswith("out of memory on cpu in training step 1 (batch 3, 16x16, bf16): torch tried to "
                              "allocate 256.00 MB more. ")
    assert ("least: gradient_checkpointing=True (the same result, about a third slower); batch=1, grad_accum=3 (the "
            "same 3 samples a step, drawn in 3 passes); resolution=8 (the pictures are learned at that size). ") \
        in message
    assert "precision=" not in message  # (bf16 already)
    assert message.endswith("No step had finished: run it again with one of them and overwrite=True")


def test_other_runtime_errors_pass_through_as_they_are(sd1_dir, images, tmp_path, monkeypatch):
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x32 and 64x32)")
    undo, _ = out_of_memory_at(monkeypatch, 2, bug)
    with pytest.raises(RuntimeError) as info:
        train(config(images, tmp_path / "b"), model=fresh_model(sd1_dir), progress=False)
    undo()
    assert info.value is bug and type(info.value) is RuntimeError
    assert checkpoints(tmp_path / "b") == []  # (saved as a crash leaves a run: not as running out of memory)
    assert not is_out_of_memory(bug) and is_out_of_memory(RuntimeError(MPS_MESSAGE))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))


@pytest.mark.parametrize("module, where, said, fixes", [
    (train_module, "load_model", "loading the model (fp32)", "precision='bf16'"),
    (latent_cache, "encode_latents", "caching the pictures' latents (the VAE encoding them at 16x16, fp32)",
     "precision='bf16'; resolution=8 (the pictures are learned at that size)"),
])
def test_out_of_memory_before_the_run_starts_leaves_the_folder_as_it_was(module, where, said, fixes, sd1_dir, images,
                                                                          tmp_path, monkeypatch):
    def fails(*a, **k):
        raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)

    monkeypatch.setattr(module, where, fails)
    out = tmp_path / "b"
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, out, model=str(sd1_dir)), progress=False)
    assert str(info.value) == (f"out of memory on cpu {said}: torch tried to allocate 2.00 GiB more. Settings that "
                               f"need less memory, from the one that changes the result least: {fixes}. Nothing was "
                               f"written: out={str(out)!r} is left as it was")
    assert not out.exists()


@pytest.mark.parametrize("settings, fixes", [
    (dict(batch=6, grad_accum=2), ["gradient_checkpointing=True", "batch=3, grad_accum=4 (the same 12 samples a "
                                   "step, drawn in 4 passes)", "precision='bf16'", "resolution=384"]),
    (dict(batch=1, gradient_checkpointing=True, resolution=1024),
     ["precision='bf16'", "resolution=768"]),
])
def test_the_fixes_are_those_the_run_can_take(settings, fixes, images, tmp_path):
    where = _Where(config(images, tmp_path, **settings), torch.float32, stage="step", step=7,
                   resolution=settings.get("resolution", 512))
    message = str(_memory_error(where, torch.device("cpu"), torch.OutOfMemoryError("")))
    listed = message.split("least: ", 1)[1].split(". ", 1)[0].split("; ")
    assert [fix.split(" (")[0] if fix.startswith("gradient") or fix.startswith("res") else fix
            for fix in listed] == fixes
    assert ("gradient_checkpointing=True)" in message) == bool(settings.get("gradient_checkpointing"))


def test_a_cuda_device_says_its_size_and_the_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2 ** 30, 24 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: int(22.5 * 2 ** 30))
    error = torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)
    assert device_note("cuda:0", error) == ("torch tried to allocate 2.00 GiB more; cuda:0 has 24.0 GiB and this "
                                            "process's tensors took up to 22.5 GiB of it")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2 ** 30)
    assert device_note("cuda:0").endswith("took up to 3.0 GiB of it; other programs may hold much of the rest "
                                          "(nvidia-smi lists them)")
    assert device_note("cpu") == ""


def test_the_command_line_says_it_in_one_line(sd1_dir, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    undo, _ = out_of_memory_at(monkeypatch, 3)
    args = ["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out), "--model",
            str(sd1_dir), "--steps", "6", "--batch", "2", "--sample-every", "0"]
    assert cli.main(args) == 2
    undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("textinv train: error: out of memory on cpu in training step 3 (batch 2, 16x16, fp32)")
    assert lines[0].endswith("--overwrite, or in another --out")
    assert f"textinv train --out {out} --resume continues it with --gradient-checkpointing, " in lines[0]
    assert "--batch 1 --grad-accum 2 (the same 2 samples" in lines[0]
    assert cli.main(["train", "--out", str(out), "--resume", "--gradient-checkpointing"]) == 0


@pytest.mark.parametrize("on_command_line, step, load", [
    (True, "(batch 2, 16x16, fp32, --cuda-graphs). Settings that need less memory, from the one that changes the "
           "result least: no --cuda-graphs (the same result, slower at small batches); --gradient-checkpointing (the "
           "same result, about a third slower); --batch 1 --grad-accum 2 (the same 2 samples a step, drawn in 2 "
           "passes); --precision bf16; --resolution 8 (the pictures are learned at that size). The run is saved at "
           "step 3: textinv train --out '{out}' --resume continues it with no --cuda-graphs or "
           "--gradient-checkpointing, which change nothing that is learned; the other settings change what is "
           "learned: they start the run again with --overwrite, or in another --out",
     "--precision bf16. Nothing was written: --out {out} is left as it was"),
    (False, "(batch 2, 16x16, fp32, cuda_graphs=True). Settings that need less memory, from the one that changes the "
            "result least: cuda_graphs=False (the same result, slower at small batches); gradient_checkpointing=True "
            "(the same result, about a third slower); batch=1, grad_accum=2 (the same 2 samples a step, drawn in 2 "
            "passes); precision='bf16'; resolution=8 (the pictures are learned at that size). The run is saved at "
            "step 3: out='{out}', resume=True, overwrite=False continues it with cuda_graphs=False or "
            "gradient_checkpointing=True, which change nothing that is learned; the other settings change what is "
            "learned: they start the run again with overwrite=True, or in another out=",
     "precision='bf16'. Nothing was written: out='{out}' is left as it was"),
])
def test_the_message_names_each_setting_as_its_user_gives_it(on_command_line, step, load, images, tmp_path):
    """On the command line its flags, and the command that resumes the run (the folder quoted for the shell); from
    Python its keywords, and the settings that resume it (a config's overwrite=True turned off: the two contradict
    each other)."""
    out = tmp_path / "my run"
    run = config(images, out, batch=2, cuda_graphs=True, overwrite=True)
    token = ON_COMMAND_LINE.set(on_command_line)
    try:
        stepping = _memory_error(_Where(run, torch.float32, stage="step", step=4, resolution=16, saved=3,
                                        writing=True), torch.device("cpu"), torch.OutOfMemoryError(""))
        loading = _memory_error(_Where(run, torch.float32), torch.device("cpu"), torch.OutOfMemoryError(""))
    finally:
        ON_COMMAND_LINE.reset(token)
    assert str(stepping) == "out of memory on cpu in training step 4 " + step.format(out=out)
    assert str(loading) == "out of memory on cpu loading the model (fp32). Settings that need less memory, from the " \
                           "one that changes the result least: " + load.format(out=out)


def test_from_python_a_run_resumed_or_started_goes_on_as_given():
    """resume_or_start=True is refused beside resume=True: the settings that resume it turn it off."""
    from textinv.config import TrainConfig

    assert train_memory._resume(TrainConfig(out="runs/dog", resume_or_start=True)) == \
        "out='runs/dog', resume=True, resume_or_start=False"


def test_out_of_memory_while_drawing_says_the_batch_and_what_was_written(sd1_dir, tmp_path, monkeypatch, capsys):
    from textinv.config import GenerateConfig
    from textinv.generate import generate

    model = fresh_model(sd1_dir)
    out = tmp_path / "renders"
    undo, seen = out_of_memory_at(monkeypatch, 3)  # (two denoising steps a call: the second call of 2 pictures)
    with pytest.raises(DeviceMemoryError) as info:
        generate(GenerateConfig(prompt=["a photo of dog"], n=4, batch_size=2, steps=2, out=str(out)), model=model,
                 progress=False)
    undo()
    assert str(info.value) == (
        "out of memory on cpu drawing 2 pictures at once at 16x16 (fp32): torch tried to allocate 2.00 GiB more. "
        "Settings that need less memory, from the one that changes the pictures least: batch_size=1 (the same "
        "pictures, up to float rounding); precision='fp16'; resolution=8 (other pictures). Pictures written before "
        f"it: 2, in {out}")
    assert seen[-1]() is None and info.value.__context__ is None
    assert len(list(out.glob("*.png"))) == 2 and not list(out.glob(".*.tmp"))
    undo, _ = out_of_memory_at(monkeypatch, 1)
    args = ["generate", "--model", str(sd1_dir), "--prompt", "a photo of dog", "-n", "1", "--steps", "2", "--out",
            str(tmp_path / "cli")]
    assert cli.main(args) == 2
    undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("textinv generate: error: out of memory on cpu drawing 1 picture at once at 16x16 "
                               "(fp32)")
    assert lines[0].endswith("--precision fp16; --resolution 8 (other pictures). No picture was written")
    assert cli.main(args[:-2] + ["--out", str(tmp_path / "cli"), "--precision", "fp32"]) == 0  # (it was only that)


@pytest.mark.parametrize("call, said, fixes", [
    (1, "2 of its 3 prompts at once at 16x16", "fewer sample_prompts= (the grid draws these 2 at once); "
                                                "sample_every=0 (no grids)"),
    (3, "1 of its 3 prompts at once at 24x8", "sample_every=0 (no grids)"),
])
def test_out_of_memory_in_a_grid_with_a_prompts_files_options_counts_the_pictures_drawn_at_once(
        call, said, fixes, sd1_dir, images, tmp_path, monkeypatch):
    """A prompt with its own options (kohya's sample prompts file) is drawn apart from the others, at its own size:
    the message names what was drawn at once, not the grid's every prompt at the training size."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of <zq>\n<zq> on grass\n<zq> at dusk --w 24 --h 8\n")
    # the UNet's calls in step 0's grid: the two prompts without options together (two denoising steps), then the
    # third's
    undo, _ = out_of_memory_at(monkeypatch, call)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, tmp_path / "b", sample_every=2, sample_steps=2, sample_prompts=[str(prompts)]),
              model=fresh_model(sd1_dir), progress=False)
    undo()
    message = str(info.value)
    assert message.startswith(f"out of memory on cpu drawing the sample grid of step 0 ({said}): ")
    assert f"from the one that changes the result least: {fixes}. " in message


def test_out_of_memory_installing_an_embedding_in_a_model_passed_in_says_so(sd1_dir, tmp_path, monkeypatch):
    """A model passed in (here one holding an embedding the notebook installed) is not loaded by generate: running
    out while its embeddings go in is said as that, and the model comes back as it came."""
    from textinv import generate as generate_module
    from textinv.config import GenerateConfig
    from textinv.formats import LearnedEmbedding, save_embedding

    model = fresh_model(sd1_dir)
    generate_module.install_embedding(model, LearnedEmbedding("<mine>", {"text_encoder": torch.randn(1, 32)}))
    tokenizer, table, size = model.tokenizer, model.text_encoder.get_input_embeddings(), len(model.tokenizer)
    file = save_embedding(LearnedEmbedding("<zq>", {"text_encoder": torch.randn(2, 32)}),
                          tmp_path / "zq.safetensors")[0]

    def fails(*a, **k):
        raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)

    monkeypatch.setattr(generate_module, "install_embedding", fails)
    with pytest.raises(DeviceMemoryError) as info:
        generate_module.generate(GenerateConfig(prompt=["a photo of <mine> <zq>"], embedding=[str(file)], n=1,
                                                steps=1, out=str(tmp_path / "r")), model=model, progress=False)
    assert str(info.value).startswith("out of memory on cpu installing the embeddings in the model (fp32): ")
    assert model.tokenizer is tokenizer and len(tokenizer) == size
    assert model.text_encoder.get_input_embeddings() is table


def test_live_memory_counts_new_storages_while_they_live_and_nothing_made_before_it():
    from textinv.memory import LiveMemory

    weight = torch.empty(10_000, dtype=torch.uint8, device="meta")  # made before: never counted
    with LiveMemory(block=1) as live:
        weight.t(), weight[:5_000].view(-1)  # (views of it: nothing new)
        a = torch.empty(1_000, dtype=torch.uint8, device="meta")
        b = torch.empty(2_000, dtype=torch.uint8, device="meta")
        b.add_(1), b.view(2, 1_000)  # (in place, and a view: the same storage)
        del a
        c = torch.empty(500, dtype=torch.uint8, device="meta")
    assert (live.peak, live.now) == (3_000, 2_500)
    del b
    assert live.now == 500
    with LiveMemory() as rounded:  # (as the CUDA caching allocator: 512-byte blocks)
        d = torch.empty(3, dtype=torch.uint8, device="meta")
    assert rounded.peak == 512 and c is not None and d is not None


def test_live_memory_counts_a_storage_an_op_grows():
    """An `out=` tensor too small for the result, or `resize_`, gets a larger storage in place: the same storage
    object, new memory (a GPU allocates a new block for it)."""
    from textinv.memory import LiveMemory

    a = torch.empty(1_000, dtype=torch.uint8, device="meta")
    early = torch.empty(0, dtype=torch.uint8, device="meta")  # (made before: only what it grows by is new)
    with LiveMemory(block=1) as live:
        out = torch.empty(0, dtype=torch.uint8, device="meta")
        torch.add(a, a, out=out)
        assert live.now == 1_000
        out.resize_(3_000)
        assert live.now == 3_000
        torch.add(a, a, out=early)
        assert live.now == 4_000
        del out
        assert live.now == 1_000
    del early
    assert live.now == 0 and live.peak == 4_000


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_attention_keeps_the_backward_from_holding_the_score_matrix(dtype):
    from textinv.memory import LiveMemory, fused_attention

    q = torch.zeros(1, 2, 1024, 8, device="meta", dtype=dtype, requires_grad=True)

    def peak() -> int:
        with LiveMemory() as live:
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape and out.requires_grad
        return live.peak

    plain = peak()
    with fused_attention():
        fused = peak()
    assert plain > 2 * 1024 * 1024 * 2 > fused  # (the math path keeps (1, 2, 1024, 1024) scores)
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_fused_attention_leaves_attention_on_real_tensors_as_it_was():
    """The block swaps a global of torch's for the seconds the count takes; attention that another thread runs
    meanwhile on a real device (a notebook drawing pictures) must run as it would have: the flash op has no CPU
    kernel, nor an fp32 or pre-Ampere one on CUDA."""
    from textinv.memory import fused_attention

    q = torch.randn(1, 2, 16, 8)
    plain = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with fused_attention():
        assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, q, q), plain)


def test_largest_batch_follows_the_line_and_checks_its_edge():
    from textinv.memory import RESERVE, largest_batch

    calls = []

    def step(batch):
        calls.append(batch)
        return 100 + 10 * batch + (15 if batch >= 9 else 0)  # (not quite a line: the edge is checked)

    assert largest_batch(step, room=int(201 * RESERVE)) == 8
    assert len(calls) <= 5
    assert largest_batch(lambda b: 1000 * b, room=500) == 0


@pytest.mark.parametrize("bend", ["flattens", "steepens"])
def test_largest_batch_takes_few_steps_where_the_line_from_batch_1_and_2_misses_the_edge(bend):
    """It runs on the error path, each batch a second or more on a full-size model: wherever the line through
    batches 1 and 2 lands, the edge is found in about twice log2(limit) batches, not by walking there one at a
    time (thousands)."""
    from textinv.memory import RESERVE, largest_batch

    calls = []

    def step(batch):  # (1,100 + b from batch 2: the line says ~20; or flat to 2, then 10 b: the line says the limit)
        calls.append(batch)
        return 1_000 + (100 * (batch >= 2) + batch if bend == "flattens" else 10 * batch * (batch > 2))

    edge = 1_900 if bend == "flattens" else 200
    assert largest_batch(step, room=int(3_000 * RESERVE)) == edge
    assert len(calls) <= 30 and len(set(calls)) == len(calls)


def test_the_meta_twin_takes_each_components_own_dtype_and_mode(sd1_dir):
    """A model passed in may keep its text encoder in fp32 beside a bf16 UNet; the twin's step must hold what that
    model's would, and run its layers as that model's are (eval: no dropout masks)."""
    from textinv.memory import meta_twin

    model = fresh_model(sd1_dir)
    model.unet.to(torch.bfloat16)
    twin, _ = meta_twin(model)
    assert next(twin.unet.parameters()).dtype == torch.bfloat16
    assert next(twin.text_encoder.parameters()).dtype == torch.float32
    assert not twin.text_encoder.training and not model.text_encoder.training


def _fake_cuda(monkeypatch, free: int, reserved: int, allocated: int, fraction: float = 1.0) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 24 * 2 ** 30))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: fraction)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2 ** 30)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_out_of_memory_in_a_step_on_a_gpu_says_which_batch_fits_worked_out_for_the_model(
        checkpointing, sd1_dir, images, tmp_path, monkeypatch):
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes

    model = fresh_model(sd1_dir)
    side = model.resolution
    twin, ids = meta_twin(model)
    held = 5_000_000  # (what the run holds between steps: weights, latents, the optimizer)

    def needs(n, kept=checkpointing):
        return held + WORKSPACE + step_bytes(twin, ids, n, side, kept)  # (and the libraries' workspaces)

    room = int(needs(3) * RESERVE) + 1  # a step of 3 samples fits, 4 does not
    assert needs(4) * RESERVE > room
    _fake_cuda(monkeypatch, free=room - 2_000_000, reserved=2_000_000, allocated=held)
    where = _Where(config(images, tmp_path, batch=8, gradient_checkpointing=checkpointing), torch.bfloat16,
                   stage="step", step=5, resolution=side, model=model)
    table, attention = model.text_encoder.get_input_embeddings(), torch.nn.functional.scaled_dot_product_attention
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    # the model and torch as they were: the count ran on a copy of the model, on the meta device
    assert not model.unet.training and not model.unet.is_gradient_checkpointing
    assert model.text_encoder.get_input_embeddings() is table and len(model.tokenizer) == table.num_embeddings
    assert torch.nn.functional.scaled_dot_product_attention is attention
    assert "batch=2, grad_accum=4 (the same 8 samples a step, drawn in 4 passes)" in message  # (not 4 x 2)
    worked = f"Worked out for this model ({side}x{side}, bf16): the room this GPU has takes 3 samples at once"
    if checkpointing:
        assert worked + ". Nothing was written" in message
    else:  # the figure said is the edge: it fits and one more does not (the step grows with the batch)
        said = re.search(re.escape(worked) + r", (\d+) with gradient_checkpointing=True\. ", message)
        kept = int(said.group(1)) if said else 0
        assert kept > 3 and needs(kept, True) * RESERVE <= room < needs(kept + 1, True) * RESERVE, message
        assert f"{worked}, {kept} with gradient_checkpointing=True. " in message


def test_the_worked_out_batch_of_several_concepts_says_the_batch_per_concept(sd1_dir, images, tmp_path, monkeypatch):
    """A step of 2 concepts with --grad-accum 2 runs --batch x 2 samples at once, twice: what fits is said as samples
    at once and as the --batch that gives them, not as "a step", which the same message uses for --batch x
    --grad-accum samples of each concept."""
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes

    model = fresh_model(sd1_dir)
    side = model.resolution
    twin, ids = meta_twin(model)
    held = 5_000_000

    def needs(n, kept=False):
        return held + WORKSPACE + step_bytes(twin, ids, n, side, kept)  # (and the libraries' workspaces)

    room = int(needs(5) * RESERVE) + 1  # (5 samples at once fit: --batch 2 of each concept)
    _fake_cuda(monkeypatch, free=room, reserved=0, allocated=held)
    run = dataclasses.replace(config(images, tmp_path, batch=4, grad_accum=2), images=None, token=None,
                              concepts=[f"{images}=<za>", f"{images}=<zb>"])
    where = _Where(run, torch.float32, stage="step", step=5, resolution=side, model=model)
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert "(batch 4 per concept x 2 concepts x grad-accum 2, " in message
    assert "batch=2, grad_accum=4 (the same 8 samples a step, drawn in 4 passes)" in message
    said = re.search(r"(\d+) with gradient_checkpointing=True \(batch=", message)  # (the edge: it fits, one more not)
    kept = int(said.group(1)) if said else 0
    assert kept >= 5 and needs(kept, True) * RESERVE <= room < needs(kept + 1, True) * RESERVE, message
    assert (f"the room this GPU has takes 5 samples at once (batch=2 for its 2 concepts), {kept} with "
            f"gradient_checkpointing=True (batch={kept // 2}). ") in message


def test_the_worked_out_batch_counts_what_the_run_held_as_its_steps_began(sd1_dir, images, tmp_path, monkeypatch):
    """By the time the message is made, the failed run's frames are let go of, and its cached latents (a megabyte a
    picture at SDXL's size) with them: torch's allocated bytes then are less than the run held between steps."""
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes

    model = fresh_model(sd1_dir)
    side = model.resolution
    twin, ids = meta_twin(model)
    held = 5_000_000
    room = int((held + WORKSPACE + step_bytes(twin, ids, 3, side, True)) * RESERVE) + 1  # (3 fit beside what it held)
    _fake_cuda(monkeypatch, free=room, reserved=0, allocated=1_000_000)  # (now: the weights alone)
    where = _Where(config(images, tmp_path, batch=8, gradient_checkpointing=True), torch.float32, stage="step",
                   step=5, resolution=side, model=model, held=held)
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert f"({side}x{side}, fp32): the room this GPU has takes 3 samples at once." in message


def test_the_worked_out_batch_is_left_out_where_it_cannot_explain_the_failure(sd1_dir, images, tmp_path, monkeypatch):
    model = fresh_model(sd1_dir)
    _fake_cuda(monkeypatch, free=2 ** 40, reserved=0, allocated=0)  # (room for any batch: says nothing)
    where = _Where(config(images, tmp_path, batch=8), torch.float32, stage="step", step=5,
                   resolution=model.resolution, model=model)
    roomy = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert "Worked out" not in roomy and "batch=4, grad_accum=2" in roomy
    _fake_cuda(monkeypatch, free=1, reserved=0, allocated=0)
    monkeypatch.setattr(train_memory, "meta_twin", lambda *a: 1 / 0)  # (a model it cannot rebuild: the plain message)
    assert str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY))) == roomy


def test_ctrl_c_while_the_batch_is_worked_out_shows_the_error_at_once(sd1_dir, images, tmp_path, monkeypatch):
    """The count takes seconds (9 for SD 1.5 on a 2-core machine) before anything shows: a Ctrl-C then means "stop
    waiting", and must not put a KeyboardInterrupt from deep in torch where the out-of-memory message would be."""
    import torch.nn.functional as F

    model = fresh_model(sd1_dir)
    _fake_cuda(monkeypatch, free=1, reserved=0, allocated=0)
    where = _Where(config(images, tmp_path, batch=8), torch.float32, stage="step", step=5,
                   resolution=model.resolution, model=model)
    attention = F.scaled_dot_product_attention

    def interrupted(*a, **k):
        assert F.scaled_dot_product_attention is not attention  # (in the middle of the count)
        raise KeyboardInterrupt

    monkeypatch.setattr(losses, "diffusion_loss", interrupted)  # (the step `step_bytes` runs)
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert message.startswith("out of memory on cuda in training step 5") and "Worked out" not in message
    assert F.scaled_dot_product_attention is attention


@pytest.mark.parametrize("settings", [dict(reference_like=True), dict(compile="unet", compile_mode="reduce-overhead"),
                                      dict(compile="blocks", compile_mode="max-autotune")])
def test_the_worked_out_batch_is_left_out_for_a_step_that_is_not_the_one_it_works_out(
        settings, sd1_dir, images, tmp_path, monkeypatch):
    """The reference-like mode runs the VAE every step and trains the whole table; inductor's CUDA graphs keep a
    pool of their own: the eager step it works out is not theirs."""
    model = fresh_model(sd1_dir)
    _fake_cuda(monkeypatch, free=1, reserved=0, allocated=0)  # (no room: it would say "not one sample")
    kw = dict(stage="step", step=5, resolution=model.resolution, model=model)
    plain = str(_memory_error(_Where(config(images, tmp_path, batch=8), torch.float32, **kw), torch.device("cuda"),
                              torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert "Worked out" in plain
    message = str(_memory_error(_Where(config(images, tmp_path, batch=8, **settings), torch.float32, **kw),
                                torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert "Worked out" not in message


def test_a_run_hands_its_model_and_size_to_the_worked_out_batch(sd1_dir, images, tmp_path, monkeypatch):
    model, asked = fresh_model(sd1_dir), []

    def batches_that_fit(where, device, batch):
        asked.append((where.model, where.resolution, where.clip_skip, where.held, batch))
        return 1, 5

    monkeypatch.setattr(train_memory, "_batches_that_fit", batches_that_fit)
    monkeypatch.setattr(train_module, "_allocated", lambda device: 123_456)  # (torch's count on a GPU)
    out_of_memory_at(monkeypatch, 2)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, tmp_path / "run", batch=4), model=model, progress=False)
    assert asked == [(model, model.resolution, 1, 123_456, 4)]
    assert "takes 1 sample at once, 5 with gradient_checkpointing=True. The run is saved at step 1" in \
        str(info.value)
    assert "batch=1, grad_accum=4" in str(info.value)


@pytest.mark.parametrize("arch, size", [("sd1", None), ("sd2", None), ("sdxl", None), ("sdxl", (24, 16))])
def test_the_twins_step_holds_what_the_trainers_own_step_holds(arch, size, sd1_dir, sd2_dir, images, tmp_path,
                                                                monkeypatch):
    """The count is of `step_bytes`'s step, not of the run's: the run's own step (two concepts drawn into one batch,
    --alpha-mask's pixel weights, min-SNR, --vectors 2, clip skip 2, SD 2's v-prediction, SDXL's two encoders, pooled
    output and time ids, checkpointing, --max-token-length's chunks, --resolution WIDTHxHEIGHT's latents) counted on
    the CPU must hold what the twin's does, attention on the math path on both sides (the CPU has no kernel the meta
    device can stand in for). A second text pass or a tensor the step keeps and the twin's does not would show
    here."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from textinv.models import check_clip_skip
    from textinv.tiny import build_tiny_xl_pipeline

    if arch == "sdxl":
        build_tiny_xl_pipeline().save_pretrained(tmp_path / "xl")
    where = {"sd1": sd1_dir, "sd2": sd2_dir, "sdxl": tmp_path / "xl"}[arch]
    settings = {"sd1": dict(alpha_mask=True, min_snr_gamma=5.0, clip_skip=2, grad_accum=2),
                "sd2": dict(noise_offset=0.1, max_token_length=150),
                "sdxl": dict(gradient_checkpointing=True, max_token_length=225)}[arch]
    if size:
        settings["resolution"] = list(size)
    run = dataclasses.replace(config(images, tmp_path / "run", batch=2, steps=1, vectors=2, **settings), images=None,
                              token=None, concepts=[f"{images}=<za>", f"{images}=<zb>"])
    live, marks = memory.LiveMemory(), {}
    micro_batch, update = train_module._micro_batch, train_module._step_skipping_overflows

    def first_pass(*a, **k):  # (the step's first pass begins: what lives now is the run's between steps)
        if "at" not in marks:
            marks["at"], live.peak = live.now, live.now
        return micro_batch(*a, **k)

    def updating(*a, **k):  # (forward and backward done)
        marks.setdefault("peak", live.peak)
        return update(*a, **k)

    monkeypatch.setattr(train_module, "_micro_batch", first_pass)
    monkeypatch.setattr(train_module, "_step_skipping_overflows", updating)
    with warnings.catch_warnings(), live, sdpa_kernel(SDPBackend.MATH):
        warnings.simplefilter("ignore")  # (--alpha-mask: pictures without alpha)
        train(run, model=load_model(where), progress=False)
    model = load_model(where)
    twin, ids = memory.meta_twin(model, run.vectors)
    monkeypatch.setattr(memory, "fused_attention", nullcontext)  # (the meta device's own choice: the math path)
    counted = memory.step_bytes(twin, ids, run.batch * 2, size or model.resolution, run.gradient_checkpointing,
                                check_clip_skip(model, run.clip_skip), run.max_token_length)
    assert counted == pytest.approx(marks["peak"] - marks["at"], rel=0.01)


def test_working_out_the_batch_says_so_while_it_works_only_when_the_run_shows_progress(sd1_dir, images, tmp_path,
                                                                                      monkeypatch, capsys):
    model = fresh_model(sd1_dir)
    _fake_cuda(monkeypatch, free=1, reserved=0, allocated=0)
    capsys.readouterr()  # (the load's own progress bar)
    for progress in (True, False):
        where = _Where(config(images, tmp_path, batch=8), torch.float32, stage="step", step=5,
                       resolution=model.resolution, model=model, progress=progress)
        _memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY))
        said = capsys.readouterr()
        assert said.out == ""
        assert (said.err == "out of memory in training step 5: working out how many samples fit on cuda (seconds; "
                            "Ctrl-C skips it)\n") if progress else said.err == ""


def test_the_worked_out_batch_keeps_within_the_part_of_the_gpu_the_process_may_use(sd1_dir, images, tmp_path,
                                                                                  monkeypatch):
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes

    model = fresh_model(sd1_dir)
    twin, ids = meta_twin(model)
    part = int((WORKSPACE + step_bytes(twin, ids, 3, model.resolution)) * RESERVE) + 1  # (room for 3 at once)
    # the GPU has 24 GiB free, but this process may use only `part` of it (set_per_process_memory_fraction)
    _fake_cuda(monkeypatch, free=24 * 2 ** 30, reserved=0, allocated=0, fraction=part / (24 * 2 ** 30))
    where = _Where(config(images, tmp_path, batch=8), torch.float32, stage="step", step=5,
                   resolution=model.resolution, model=model)
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert "the room this GPU has takes 3 samples at once" in message and "batch=2, grad_accum=4" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_worked_out_batch_trains_where_the_larger_one_ran_out(tmp_path):
    """SD 1.5's architecture (random weights, bf16, 512x512) on a GPU held to 12 GiB as a 12 GiB card would be: a
    step of 32 runs out of memory, the message works out how many samples fit, and a run at that batch trains."""
    import re

    from benchmarks.architectures import build
    from benchmarks.train_speed import _images
    from textinv.models import Model

    pipe = build("sd15", "cuda", torch.bfloat16)
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        module.requires_grad_(False)
    model = Model(pipeline=pipe, family="sd1", source="sd15", prediction_type="epsilon")
    images = _images(tmp_path / "images", size=512)
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(12 * 2 ** 30 / total)
    try:
        with pytest.raises(DeviceMemoryError) as info:
            train(config(images, tmp_path / "32", batch=32, steps=2), model=model, progress=False)
        fits = re.search(r"the room this GPU has takes (\d+) samples? at once", str(info.value))
        assert fits, str(info.value)
        n = int(fits.group(1))
        assert 1 <= n < 32
        result = train(config(images, tmp_path / "fits", batch=n, steps=2), model=model, progress=False)
        assert result.losses[-1][0] == 2
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_the_step_is_counted_by_its_pixels_width_by_height(sd1_dir, monkeypatch):
    """--resolution 512x768 is 393,216 pixels a picture, 1.5 times 512x512's, and fewer than 640x640's 409,600 (1.5625
    times): the step's bytes follow the pixels (the tiny model has no attention at these sizes to make them grow
    faster), whichever way round the picture is; a square given as (W, H) is that square."""
    from textinv.memory import meta_twin, step_bytes

    twin, ids = meta_twin(fresh_model(sd1_dir))
    counted = {size: step_bytes(twin, ids, 1, size) for size in [512, (512, 768), (768, 512), (640, 640)]}
    assert counted[(512, 768)] == counted[(768, 512)] < counted[(640, 640)]
    assert counted[(512, 768)] / counted[512] == pytest.approx(1.5, rel=0.01)
    assert counted[(640, 640)] / counted[512] == pytest.approx(1.5625, rel=0.01)
    monkeypatch.setattr(memory, "_counted", {})  # (counted afresh, not the count (640, 640) left)
    assert step_bytes(twin, ids, 1, 640) == counted[(640, 640)]


def test_a_step_is_counted_once_for_every_twin_of_the_model(sd1_dir, monkeypatch):
    """Working out what fits asks for the same steps again (without and with checkpointing, and at each failure of a
    run in a notebook), each time on a new twin of the model: each step is counted once."""
    model, counted, count = fresh_model(sd1_dir), [], memory._step_peak
    monkeypatch.setattr(memory, "_counted", {})
    monkeypatch.setattr(memory, "_step_peak", lambda *a: counted.append(a[2:]) or count(*a))
    assert len({memory.step_bytes(*memory.meta_twin(model), 3, 16, True) for _ in range(3)}) == 1
    assert counted == [(3, 16, True, 1, 75)]
    memory.step_bytes(*memory.meta_twin(model), 3, (16, 16), True)  # (the same step, its size as (W, H))
    assert len(counted) == 1


def test_a_kept_count_is_used_only_for_the_same_model_and_step(sd1_dir, monkeypatch):
    """Any other setting, a model in another dtype or other attention code is counted afresh (each of these holds
    other bytes)."""
    from contextlib import nullcontext

    model, bf16 = fresh_model(sd1_dir), fresh_model(sd1_dir)
    bf16.text_encoder.to(torch.bfloat16)
    monkeypatch.setattr(memory, "_counted", {})
    twin, ids = memory.meta_twin(model)
    first = memory.step_bytes(twin, ids, 2, 16)
    others = [(twin, ids, 3, 16, False, 1, 75), (twin, ids, 2, (16, 24), False, 1, 75),
              (twin, ids, 2, 16, True, 1, 75), (twin, ids, 2, 16, False, 2, 75), (twin, ids, 2, 16, False, 1, 150),
              (*memory.meta_twin(bf16), 2, 16, False, 1, 75)]
    for other in others:
        assert memory.step_bytes(*other) == memory._step_peak(*other) != first, other
    monkeypatch.setattr(memory, "fused_attention", nullcontext)  # (the meta device's own attention: the math path)
    assert memory.step_bytes(twin, ids, 2, 16) == memory._step_peak(twin, ids, 2, 16, False, 1, 75) != first


def test_the_counts_kept_are_the_latest(sd1_dir, monkeypatch):
    twin, ids = memory.meta_twin(fresh_model(sd1_dir))
    monkeypatch.setattr(memory, "_counted", {})
    monkeypatch.setattr(memory, "COUNTED_STEPS", 2)
    monkeypatch.setattr(memory, "_step_peak", lambda *a: a[2])  # (the batch for its bytes)
    for batch in (1, 2, 3):
        memory.step_bytes(twin, ids, batch, 16)
    assert sorted(memory._counted.values()) == [2, 3]


def test_out_of_memory_at_a_width_by_height_says_that_size_and_a_smaller_one(images, tmp_path):
    run = config(images, tmp_path, batch=1, gradient_checkpointing=True, resolution="512x768")
    where = _Where(run, torch.float32, stage="step", step=7, resolution=(512, 768))
    message = str(_memory_error(where, torch.device("cpu"), torch.OutOfMemoryError("")))
    assert message.startswith("out of memory on cpu in training step 7 (batch 1, 512x768, fp32, "
                              "gradient_checkpointing=True). ")
    assert "precision='bf16'; resolution='384x576' (the pictures are learned at that size)." in message
    where.stage = "latents"
    assert "(the VAE encoding them at 512x768, fp32)" in str(_memory_error(where, torch.device("cpu"),
                                                                            torch.OutOfMemoryError("")))


def test_the_worked_out_batch_of_a_width_by_height_run_counts_its_pixels(sd1_dir, images, tmp_path, monkeypatch):
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes

    model = fresh_model(sd1_dir)
    size = (model.resolution, model.resolution * 2)
    twin, ids = meta_twin(model)
    held = 5_000_000
    room = int((held + WORKSPACE + step_bytes(twin, ids, 3, size, True)) * RESERVE) + 1  # (3 fit, not 4)
    assert (held + WORKSPACE + step_bytes(twin, ids, 4, size, True)) * RESERVE > room
    _fake_cuda(monkeypatch, free=room, reserved=0, allocated=held)
    run = config(images, tmp_path, batch=8, gradient_checkpointing=True, resolution=list(size))
    where = _Where(run, torch.float32, stage="step", step=5, resolution=size, model=model)
    message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
    assert f"Worked out for this model ({size[0]}x{size[1]}, fp32): the room this GPU has takes 3 samples at " \
           f"once." in message


def test_a_width_by_height_run_hands_its_size_to_the_worked_out_batch(sd1_dir, images, tmp_path, monkeypatch):
    model, asked = fresh_model(sd1_dir), []

    def batches_that_fit(where, device, batch):
        asked.append(where.resolution)
        return 1, 5

    monkeypatch.setattr(train_memory, "_batches_that_fit", batches_that_fit)
    out_of_memory_at(monkeypatch, 2)
    with pytest.raises(DeviceMemoryError) as info:
        train(config(images, tmp_path / "run", batch=4, resolution="24x16"), model=model, progress=False)
    assert asked == [(24, 16)]
    assert "in training step 2 (batch 4, 24x16, fp32)" in str(info.value)
    assert "resolution='16x8' (the pictures are learned at that size)" in str(info.value)
