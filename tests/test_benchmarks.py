"""The speed benchmark runs (fast, tiny architecture), and its reference-like mode learns what our path learns."""

import json
import os

import pytest
import torch

from benchmarks.train_speed import main as train_speed
from textinv.models import load_model
from textinv.tokens import base_embedding
from textinv.train import train

from test_train import config


def test_train_speed_benchmark_prints_both_modes_and_the_ratio(capsys):
    assert train_speed(["--arch", "tiny", "--batch", "1", "2", "--steps", "2", "--warmup", "1",
                        "--profile-first"]) == 0
    out = capsys.readouterr().out
    # --profile-first: the first measurement's setup and first step, by operation, once; the convolutions among them
    assert out.count("# first step profile") == 1 and out.index("# first step profile: textinv batch 1,") < \
        out.index("\ntextinv ")  # (printed as the first step ends, before its row)
    profiled = [line.split() for line in out.splitlines() if line.startswith("#   ") and "aten::" in line]
    assert any(row[-1] == "aten::mkldnn_convolution" and float(row[2]) > 0 for row in profiled)
    rows = [line.split() for line in out.splitlines() if line.startswith(("textinv ", "reference "))]
    assert [(r[0], r[1]) for r in rows] == [("textinv", "1"), ("reference", "1"), ("textinv", "2"),
                                            ("reference", "2")]
    assert all(float(r[3]) > 0 for r in rows)  # samples/s
    assert out.count("textinv over reference") == 2
    worked = [line for line in out.splitlines() if "(worked out " in line]  # (step_memory's count, ours only)
    assert [line.split()[:2] for line in worked] == [["textinv", "1"], ["textinv", "2"]]
    assert all(float(line.split("(worked out ")[1].split()[0]) > 0 for line in worked)


def test_train_speed_benchmark_times_levers_on_sdxl_and_a_whole_run_from_disk(capsys):
    """Each lever is its own row; the model comes back unchanged between modes; a whole run includes the load."""
    assert train_speed(["--arch", "tiny-xl", "--batch", "2", "--steps", "1", "--warmup", "1", "--modes", "textinv",
                        "channels-last", "checkpointing", "buckets", "textinv", "--wall-samples", "6"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["textinv"], ["channels-last"],
                                                                              ["checkpointing"], ["buckets"])]
    assert [r[0] for r in rows] == ["textinv", "channels-last", "checkpointing", "buckets", "textinv"]
    assert all(float(r[3]) > 0 for r in rows)
    wall = next(line for line in out.splitlines() if line.startswith("wall "))
    assert "6 samples (3 steps)" in wall and "load" in wall


def test_reset_unet_undoes_every_lever(sd1_dir):
    from benchmarks.train_speed import reset_unet
    from textinv.speed import speed_up_unet

    unet = load_model(sd1_dir).unet
    speed_up_unet(unet, compile="blocks", channels_last=True)
    unet.enable_gradient_checkpointing()
    reset_unet(unet)
    assert not unet.is_gradient_checkpointing
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in unet.modules())
    assert all(p.is_contiguous() for p in unet.parameters())


def test_train_speed_benchmark_times_several_concepts_in_one_run(capsys):
    assert train_speed(["--arch", "tiny", "--batch", "1", "--steps", "2", "--warmup", "1", "--concepts", "2",
                        "--modes", "textinv"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("concepts"))
    assert "concepts per hour: joint" in line and line.rstrip().endswith("x)")


def test_reference_like_mode_learns_the_same_vectors_and_restores_the_table(sd1_dir, images, tmp_path):
    """Same seed: the whole-table AdamW with rows copied back and the VAE every step give our result."""
    ours = train(config(images, tmp_path / "a", steps=4), model=load_model(sd1_dir), progress=False)
    model = load_model(sd1_dir)
    table = base_embedding(model.text_encoder).weight.detach().clone()
    ref = train(config(images, tmp_path / "b", steps=4, reference_like=True), model=model, progress=False)
    assert torch.equal(base_embedding(model.text_encoder).weight, table)
    assert torch.allclose(ours.embedding.vectors["text_encoder"], ref.embedding.vectors["text_encoder"], atol=1e-5)


def test_compile_check_command_passes_a_faithful_regional_compile(capsys):
    """(torch's compile state reset first: after other tests' compiles in one process, torch met its recompile limit
    and ran the blocks uncompiled, so the check compared the plain UNet with itself.)"""
    import torch

    from benchmarks.compile_check import main as compile_check

    torch._dynamo.reset()
    assert compile_check(["--arch", "tiny", "--compile", "blocks"]) == 0
    assert "compiled UNet matches the plain one" in capsys.readouterr().out


# (runpy's warning that the tests imported a module, benchmarks.train_speed or the shapes pretraining, before the
# session runs it as `python -m` would)
@pytest.mark.filterwarnings("ignore:.* found in sys.modules after import of package:RuntimeWarning")
def test_gpu_session_runs_every_part_and_packs_a_loadable_model(tmp_path):
    """The one-call GPU script (here in its CPU --quick form): each part is recorded, and the shapes part's new UNet
    (other sizes, on the committed VAE) comes back as a model folder the normal loader takes. Each command parses
    its arguments and runs as its module's `python -m` would; --quick runs them in the session's one process
    (torch imported once a session, not once a command), here the test's own: a new process for each session
    spent ~5 s importing torch, diffusers and transformers again (what a command leaves set, pretrain's torch
    thread count, conftest puts back after the test)."""
    import tarfile

    from benchmarks.gpu_session import main as session
    from textinv.models import load_model
    from textinv.shapes import world

    out = tmp_path / "out"
    assert session(["--quick", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    parts = [line.split(": ", 1) for line in (out / "session.txt").read_text().splitlines()]
    assert [name for name, _ in parts] == ["environment", "speed", "shapes"]
    assert all(status.startswith("ok (") for _, status in parts), parts
    assert "reference" in (out / "speed.txt").read_text()
    with tarfile.open(out / "shapes-model.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    model = load_model(tmp_path / "unpacked" / "shapes-model")
    assert tuple(model.unet.config.block_out_channels) == (16, 16)
    bundled = load_model("shapes")
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), bundled.vae.state_dict().values()))
    # a later lease goes on training that model (and only that, with --speed-share 0), here with the fill's
    # orientation named in half the patterned objects' captions: its text encoder grows the words' rows
    again = tmp_path / "again"
    assert session(["--quick", "--out", str(again), "--work", str(tmp_path / "work2"), "--speed-share", "0",
                    "--shapes-from", str(tmp_path / "unpacked" / "shapes-model"), "--angle-share", "0.5"]) == 0
    assert [line.split(": ")[0] for line in (again / "session.txt").read_text().splitlines()] == ["environment",
                                                                                                  "shapes"]
    with tarfile.open(again / "shapes-model.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked2", filter="data")
    record = json.loads((tmp_path / "unpacked2" / "shapes-model" / "training.json").read_text())
    assert record["stages"]["unet"]["steps"] > 2  # the first lease's 2 steps and this one's
    assert record["config"]["angle_caption_share"] == 0.5
    later = load_model(tmp_path / "unpacked2" / "shapes-model")
    assert all(len(later.tokenizer.tokenize(w)) == 1 for w in world.ORIENTATION_WORDS)
    assert later.text_encoder.get_input_embeddings().num_embeddings > model.text_encoder.get_input_embeddings(
    ).num_embeddings
    assert not all(torch.equal(a, b) for a, b in zip(later.unet.state_dict().values(),
                                                       model.unet.state_dict().values()))


def test_shapes_speed_prints_a_row_per_thread_count(capsys):
    from benchmarks.shapes_speed import main as shapes_speed
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    assert shapes_speed(["--threads", "1", "2", "--pictures", "1", "--steps", "1", "--warmup", "1",
                         "--sample-steps", "2", "--precision", "fp32", "bf16"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith(("| fp32", "| bf16"))]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("fp32", "1"), ("fp32", "2"), ("bf16", "1"), ("bf16", "2")]
    assert all(float(r[3].split()[0]) > 0 and float(r[4]) > 0 for r in rows)


def test_a_benchmark_that_sets_torch_threads_sets_them_for_its_own_test():
    torch.set_num_threads(2)  # as shapes_speed's last --threads and hue_by_guidance's default leave them


def test_the_next_test_runs_on_the_one_thread_conftest_sets():
    """(with the test above, in this order: conftest's fixture puts the thread count back after each test)"""
    assert torch.get_num_threads() == 1


def test_shapes_inputs_prints_a_row_per_setting(capsys):
    from benchmarks.shapes_inputs import main as shapes_inputs

    assert shapes_inputs(["--render-threads", "1", "2", "--batch", "4", "--batches", "2", "--repeats", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert [r[2].strip() for r in rows] == ["draws only", "in turn", "1", "2"]
    # (a time, however short: a batch made ahead may be ready at once, which once printed as 0.0 ms)
    assert all(float(r[3].split()[0]) > 0 and float(r[4]) > 0 for r in rows)


def test_a_failing_mode_is_a_row_and_the_next_measurements_still_run(capsys, monkeypatch):
    import benchmarks.train_speed as ts

    monkeypatch.setitem(ts.MODES, "broken", {"lr": -1.0})  # refused by the trainer's settings check
    assert train_speed(["--arch", "tiny", "--batch", "1", "2", "--steps", "1", "--warmup", "1",
                        "--modes", "broken", "textinv"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    # (the mode's settings are a TrainConfig's, named as Python writes them)
    assert sum(line.startswith("broken ") and "ConfigError" in line and "lr=" in line for line in lines) == 2
    # the whole traceback goes to the log (stderr), so one lease's failure can be fixed without another lease
    assert err.count("# broken at batch ") == 2 and err.count("Traceback (most recent call last)") == 2
    assert "textinv/config.py" in err
    timed = [line.split() for line in lines if line.startswith("textinv ")]
    assert [row[1] for row in timed] == ["1", "2"] and all("warm-up" in " ".join(row) for row in timed)


def test_a_session_part_of_independent_commands_goes_on_past_a_failure(tmp_path):
    import sys

    from benchmarks.gpu_session import run_part

    ok, fail = [sys.executable, "-c", "print('ran')"], [sys.executable, "-c", "raise SystemExit(3)"]
    going = run_part("speed", [fail, ok], 60, tmp_path / "a.txt", keep_going=True)
    assert going["status"].startswith("failed (exit 3)") and "\nran\n" in (tmp_path / "a.txt").read_text()
    stopping = run_part("shapes", [fail, ok], 60, tmp_path / "b.txt")
    assert stopping["status"].startswith("failed (exit 3)") and "ran\n" not in (tmp_path / "b.txt").read_text()


def test_a_quick_sessions_commands_run_in_its_own_process_as_they_would_in_theirs(tmp_path, capsys):
    """--quick runs each command in the session's process (torch imported once): a module as `python -m` runs it,
    with its arguments, and code as `python -c` does; an exit status, a message or an error is the command's
    failure, and its prints go to the part's log, not the session's output."""
    import sys

    from benchmarks.gpu_session import run_part

    here = [sys.executable, "-c", "import os; print('pid', os.getpid())"]
    module = [sys.executable, "-m", "json.tool", "--indent", "1", str(tmp_path / "missing.json")]
    assert run_part("environment", [here], 60, tmp_path / "a.txt", here=True)["status"] == "ok"
    assert f"pid {os.getpid()}\n" in (tmp_path / "a.txt").read_text()
    failing = [[sys.executable, "-c", "raise SystemExit(3)"], [sys.executable, "-c", "raise SystemExit('no')"],
               [sys.executable, "-c", "1 / 0"], module]
    record = run_part("speed", failing, 60, tmp_path / "b.txt", keep_going=True, here=True)
    assert [problem.split(":")[0] for problem in record["status"].split("; ")] == [
        "failed (exit 3)", "failed (exit 1)", "failed (exit 1)", "failed (exit 2)"]  # (argparse's, for the module)
    log = (tmp_path / "b.txt").read_text()
    assert "\nno\n" in log and "ZeroDivisionError" in log and "missing.json" in log
    assert "ok in" in capsys.readouterr().out and sys.argv[0] != "json.tool"


def test_hue_by_guidance_prints_a_row_per_phrase_and_scale(capsys):
    from benchmarks.hue_by_guidance import main as hue_by_guidance
    from textinv.errors import ConfigError
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    assert hue_by_guidance(["--steps", "2", "--samples", "2", "--sample-steps", "2", "--guidance", "1", "3",
                            "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1:3] for r in rows[1:]] == [[" <teal-star> ", " 1 "], [" <teal-star> ", " 3 "],
                                                     [" cyan solid star ", " 1 "], [" cyan solid star ", " 3 "]]
    with pytest.raises(ConfigError, match="no exact hue"):
        hue_by_guidance(["--concept", "candy-heart"])


def test_signed_hue_error_is_positive_towards_the_named_colour():
    from benchmarks.hue_by_guidance import signed_hue_errors

    class Reads:  # a probe that reads the given hues
        def __init__(self, hues):
            self.hues = hues

        def predict(self, images):
            return {"hue": self.hues}

    pictures = torch.zeros(3, 3, 8, 8)
    assert signed_hue_errors(Reads([170.0, 160.0, 163.0]), pictures, 163.0, 185.0) == [7.0, -3.0, 0.0]
    assert signed_hue_errors(Reads([350.0, 10.0]), pictures, 355.0, 325.0) == [5.0, -15.0]  # around 0, towards pink


def _table(out: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]


def test_loss_by_words_pairs_the_draws_so_a_repeated_prompt_differs_by_nothing(capsys):
    from benchmarks.loss_by_words import main as loss_by_words
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    star, circle = "a photo of a cyan solid star", "a photo of a red striped circle"
    assert loss_by_words(["--no-learn", "--draws", "80", "--threads", "1", "--prompt", star, star, circle]) == 0
    rows = _table(capsys.readouterr().out)
    assert [r[0] for r in rows] == [f"`{star}`", f"`{star}`", f"`{circle}`"]
    assert rows[1][1] == rows[0][1] and rows[1][2] == "+0.0000 ± 0.0000"
    difference, error = (float(x) for x in rows[2][2].split(" ± "))
    assert difference > 5 * error  # the wrong words explain the teal star's pictures worse, well beyond the noise


def test_loss_by_words_learns_the_concept_and_scores_it_beside_its_words(capsys):
    from benchmarks.loss_by_words import main as loss_by_words
    from textinv.models import BUNDLED_MODELS

    if not (BUNDLED_MODELS["shapes"] / "model_index.json").exists():
        pytest.skip("needs the bundled shapes model")
    assert loss_by_words(["--steps", "2", "--draws", "40", "--threads", "1"]) == 0
    prompts = [r[0] for r in _table(capsys.readouterr().out)]
    assert prompts[:2] == ["`a photo of <teal-star>`", "`a photo of <teal-star> solid`"]
    assert "`a photo of a cyan solid star`" in prompts and "`a photo of a cyan dotted star`" in prompts
    with pytest.raises(SystemExit):
        loss_by_words(["--draws", "39"])


def test_timed_steps_sync_the_device_only_where_the_clock_is_read(monkeypatch, sd1_dir):
    """A device sync after every timed step drains the GPU's queue each step (the host's launches of the next step
    can then not overlap the GPU's work), so the trainer would be timed slower than it runs: the benchmark syncs
    at the end of the first step (untimed), of the warm-up and of the last timed step only."""
    import benchmarks.train_speed as ts

    synced: list[int] = []
    steps_done: list[int] = []
    real_train = ts.train

    def counting_train(config, model=None, progress=True, on_step=None):
        def hook(step):
            steps_done.append(step)
            on_step(step)
        return real_train(config, model=model, progress=progress, on_step=hook)

    monkeypatch.setattr(ts, "train", counting_train)
    monkeypatch.setattr(ts, "_sync", lambda device: synced.append(steps_done[-1]))
    with __import__("tempfile").TemporaryDirectory() as tmp:
        from pathlib import Path

        work = Path(tmp)
        ts._images(work / "images", n=2, size=16)
        r = ts.time_mode(load_model(sd1_dir), "textinv", 1, warmup=2, steps=5, precision="fp32", device="cpu",
                         work=work, resolution=16)
    assert synced == [1, 2, 7]  # first step, end of warm-up, end of the timed steps; none in between
    assert r["ms_per_step"] > 0 and r["first_step_s"] <= r["warmup_s"]
    assert r["recompiled"] == 0 and r["cudagraph_skips"] == 0


def test_peak_memory_counts_the_training_steps_not_the_blocks_cached_before_them(monkeypatch, sd1_dir, tmp_path):
    """On a GPU the caching allocator keeps the blocks the one-off latent caching (the VAE encoder at full
    resolution) and the compile check used; resetting the peak only sets the reserved peak to what is reserved then,
    so the benchmark frees those blocks first: else the reserved figure (what `fits` reads) carries them. The CUDA
    branch runs here with torch.cuda's memory calls recorded (the model itself on the CPU)."""
    import benchmarks.train_speed as ts

    calls = []
    real_train = ts.train

    def train_marking_steps(config, model=None, progress=True, on_step=None):
        return real_train(config, model=model, progress=progress,
                          on_step=lambda step: (calls.append(f"step {step}"), on_step(step)))

    monkeypatch.setattr(ts, "train", train_marking_steps)
    monkeypatch.setattr(ts, "_sync", lambda device: None)
    for name in ("empty_cache", "reset_peak_memory_stats", "max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: calls.append(name) or 0)
    ts._images(tmp_path / "images", n=2, size=16)
    r = ts.time_mode(load_model(sd1_dir), "textinv", 1, warmup=1, steps=1, precision="fp32", device="cuda",
                     work=tmp_path, resolution=16)
    assert "ms_per_step" in r, r
    first = calls.index("step 1")
    assert calls[first + 1:first + 3] == ["empty_cache", "reset_peak_memory_stats"]
    assert "reset_peak_memory_stats" not in calls[first + 3:]  # (the peak is read once, after the last step)


def test_draws_reach_a_gpu_through_pinned_non_blocking_copies(monkeypatch, sd1_dir, images, tmp_path):
    """`.to("cuda")` of pageable host memory synchronizes the stream (memcpy_and_sync): each step's draws would make
    the host wait for the previous step. Every draw goes through `_to_device`, which pins and copies without a sync."""
    import textinv.train as tr

    calls = []

    def pin(self):
        calls.append("pin")
        return self

    def to(self, *a, **kw):
        calls.append(("to", str(a[0]), kw.get("non_blocking", False)))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    tr._to_device(torch.zeros(2), torch.device("cuda"))
    tr._to_device(torch.zeros(2), torch.device("cpu"))
    monkeypatch.undo()
    assert calls == ["pin", ("to", "cuda", True), ("to", "cpu", False)]

    moved = []
    real = tr._to_device
    monkeypatch.setattr(tr, "_to_device", lambda t, device: moved.append(t.shape) or real(t, device))
    train(config(images, tmp_path / "run", steps=1, batch=2), model=load_model(sd1_dir), progress=False)
    assert len(moved) == 6  # image, flip, caption, latent noise, noise, timestep: all of one step's draws


def test_reference_like_mode_runs_the_text_encoder_under_autocast_as_accelerate_does(sd1_dir, images, tmp_path):
    """The diffusers example keeps the text encoder's weights in fp32, but under --mixed_precision bf16
    `accelerator.prepare` wraps its forward in autocast: its matmuls run in bf16. An fp32 forward would make the
    reference slower than the example (fp32 matmuls run at a small fraction of bf16's rate on an H100)."""
    model = load_model(sd1_dir, dtype=torch.bfloat16)
    te = model.text_encoder
    seen = []
    layer = next(m for m in te.modules() if isinstance(m, torch.nn.Linear))
    handle = layer.register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
    try:
        train(config(images, tmp_path / "ref", steps=1, reference_like=True, precision="bf16"), model=model,
              progress=False)
    finally:
        handle.remove()
    assert seen and all(w == torch.float32 and o == torch.bfloat16 for w, o in seen)
    assert "forward" not in vars(te)  # the wrapper goes with the run


def test_wall_run_is_a_fresh_process_with_empty_compile_caches(monkeypatch, tmp_path):
    """The 12,000-sample figure counts a user's whole run: a new process (imports, CUDA's start, loading), and
    compiling with no cache that this benchmark's own process warmed."""
    import subprocess
    import sys

    import benchmarks.train_speed as ts

    seen = {}

    def fake_run(command, env=None, **kw):
        seen.update(command=command, env=env)
        return subprocess.CompletedProcess(command, 0, "", "")

    class Pipe:
        def save_pretrained(self, folder):
            folder.mkdir()

    monkeypatch.setattr(ts.subprocess, "run", fake_run)
    w = ts.wall_run(Pipe(), "fast", 32, 12000, "bf16", "cuda", tmp_path, None)
    assert w["steps"] == 375 and w["samples"] == 12000 and w["wall_s"] > 0
    command = seen["command"]
    assert command[:4] == [sys.executable, "-m", "textinv", "train"]
    assert command[command.index("--steps") + 1] == "375" and command[command.index("--compile") + 1] == "unet"
    assert "--channels-last" in command and command[command.index("--compile-mode") + 1] == "reduce-overhead"
    caches = seen["env"]["TORCHINDUCTOR_CACHE_DIR"]
    assert str(tmp_path) in caches and seen["env"]["TRITON_CACHE_DIR"].startswith(str(tmp_path))


def test_a_failed_whole_run_leaves_its_traceback_in_the_log(monkeypatch, tmp_path, capsys):
    """The row keeps the last line of a failed `textinv train`; the end of its output (the traceback) goes to
    stderr, which the GPU session's log keeps."""
    import subprocess

    import benchmarks.train_speed as ts

    trace = "Traceback (most recent call last):\n  File \"textinv/train.py\", line 1, in <module>\nRuntimeError: boom"
    monkeypatch.setattr(ts.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, "", trace))

    class Pipe:
        def save_pretrained(self, folder):
            folder.mkdir()

    w = ts.wall_run(Pipe(), "textinv", 2, 4, "fp32", "cpu", tmp_path, None)
    assert w["error"] == "exit 1: RuntimeError: boom"
    assert trace in capsys.readouterr().err


def test_a_dropped_compile_says_by_how_much_it_differed(monkeypatch, sd1_dir, tmp_path, capsys):
    """A compile the trainer's check drops shows as a note on its row with the check's figures (output and gradient
    error against the allowed one): on a GPU lease, whether the tolerance or the compiler is at fault."""
    import warnings

    import benchmarks.train_speed as ts

    message = ("torch.compile changed the UNet's result (output 3.0e-02, gradient to the text 6.0e-02 relative to "
               "the uncompiled UNet; allowed 5e-02)")

    def train_warning(config, model=None, progress=True, on_step=None):
        warnings.warn(message, RuntimeWarning)
        for step in range(1, config.steps + 1):
            on_step(step)

    monkeypatch.setattr(ts, "train", train_warning)
    ts._images(tmp_path / "images", n=2, size=16)
    r = ts.time_mode(load_model(sd1_dir), "compile-unet", 1, warmup=1, steps=1, precision="fp32", device="cpu",
                     work=tmp_path, resolution=16)
    assert r["compile_dropped"] == message


def test_a_command_past_its_time_is_killed_with_its_children_and_leaves_time_for_the_next(tmp_path):
    """A hanging compile: the command and the processes it started (torch.compile's workers) are killed at its
    limit, and with `reserve` the commands after it still get their time."""
    import os
    import sys
    import time

    from benchmarks.gpu_session import run_part

    pid_file = tmp_path / "child.pid"
    hang = [sys.executable, "-c", "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(120)",
            str(pid_file)]
    ok = [sys.executable, "-c", "print('ran')"]
    started = time.monotonic()
    # (14 s, 7 kept back for `ok`: the hang gets 7, not all 14, nor its 120; run_part skips a command given 5 or less)
    record = run_part("speed", [hang, ok], 14, tmp_path / "log.txt", keep_going=True, reserve=7)
    assert time.monotonic() - started < 12
    assert record["status"].startswith("stopped at its time limit") and "\nran\n" in (tmp_path / "log.txt").read_text()
    child = int(pid_file.read_text())
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        alive = open(f"/proc/{child}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive


def test_a_quick_sessions_parts_each_log_their_own_warnings(tmp_path):
    """A logging handler that a command makes (transformers and diffusers make theirs at their first warning) goes
    on writing to the log of the part that runs: it wrote to the first part's log, closed by then ("--- Logging
    error ---", the warning lost)."""
    import logging
    import sys

    from benchmarks.gpu_session import run_part

    name = "textinv.tests.run_here"
    made = f"import logging; logging.getLogger('{name}').addHandler(logging.StreamHandler())"
    warns = f"import logging; logging.getLogger('{name}').warning('a warning of the second part')"
    try:
        assert run_part("environment", [[sys.executable, "-c", made]], 60, tmp_path / "a.txt", here=True)[
            "status"] == "ok"
        assert run_part("speed", [[sys.executable, "-c", warns]], 60, tmp_path / "b.txt", here=True)["status"] == "ok"
    finally:
        for handler in logging.getLogger(name).handlers[:]:
            logging.getLogger(name).removeHandler(handler)
    second = (tmp_path / "b.txt").read_text()
    assert "\na warning of the second part\n" in second and "Logging error" not in second
    assert "warning" not in (tmp_path / "a.txt").read_text()


def test_gpu_session_says_what_finished_when_it_is_killed_midway(monkeypatch, tmp_path):
    """session.txt is written as each part starts and ends: a session killed in its speed part (the lease's end)
    still records the environment part and where it stopped."""
    import benchmarks.gpu_session as gs

    real = gs.run_part

    def run_part(name, *a, **kw):
        if name == "speed":
            raise SystemExit(137)  # killed here
        return real(name, *a, **kw)

    monkeypatch.setattr(gs, "run_part", run_part)
    with pytest.raises(SystemExit):
        gs.main(["--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    lines = (tmp_path / "out" / "session.txt").read_text().splitlines()
    assert lines[0].startswith("environment: ok") and lines[1].startswith("speed: running or stopped here")


def test_the_gpu_sessions_commands_log_why_a_graph_compiled_again(monkeypatch, tmp_path):
    """On the lease, each command's log says why dynamo compiled a graph again (TORCH_LOGS=recompiles): the table
    only counts the graphs compiled in the timed steps, and one lease is all there is to find out why."""
    import benchmarks.gpu_session as gs

    monkeypatch.setenv("TORCH_LOGS", "")  # (so that the variable the session sets is removed after the test)
    monkeypatch.delenv("TORCH_LOGS")
    seen = {}

    def run_part(name, commands, *a, **kw):
        seen[name] = (os.environ.get("TORCH_LOGS"), commands)
        return {"part": name, "status": "ok", "seconds": 0.0}

    monkeypatch.setattr(gs, "run_part", run_part)
    monkeypatch.setattr(gs, "pack", lambda *a: None)
    gs.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])  # (the GPU plan, not run)
    assert seen["speed"][0] == "recompiles" and any("graphs-blocks" in c for c in seen["speed"][1])
    assert list(seen) == ["environment", "graphs-check", "speed", "shapes"]
    assert seen["graphs-check"][1][0][-4:] == ["tests/test_graphs.py", "tests/test_memory.py", "-k", "gpu"]


@pytest.mark.parametrize("arch", ["tiny", "tiny-xl"])
def test_step_overhead_step_reaches_its_offset_through_the_text_encoder_and_removes_its_hook(arch, capsys):
    """The probe's step is a textual-inversion step: its gradient reaches the learned offset, through each text
    encoder (SDXL's two: each its own part of the offset) or straight into the UNet's context, and the text encoders
    are left as they were (hooks removed)."""
    from benchmarks.architectures import build
    from benchmarks.step_overhead import main as step_overhead, make_step, text_encoders

    pipe = build(arch)  # (frozen, as every benchmark runs it)
    encoders = text_encoders(pipe)
    assert not any(p.requires_grad for m in (pipe.unet, pipe.vae, *encoders) for p in m.parameters())
    ids = torch.arange(8)[None]
    before = [te(ids)[0] for te in encoders]
    for with_text in (True, False):
        step, offset, hooks = make_step(pipe, 2, with_text, "cpu", torch.float32)
        step()
        assert offset.grad is not None and offset.grad.abs().sum() > 0
        if with_text:  # (every encoder's columns of the offset learn)
            parts = offset.grad.split([te.config.hidden_size for te in encoders], dim=-1)
            assert len(parts) == (2 if arch == "tiny-xl" else 1) and all(p.abs().sum() > 0 for p in parts)
        offset.data.fill_(0.5)  # (a hook left behind would now shift the text encoder's output)
        hooks.remove()
    assert all(torch.equal(te(ids)[0], b) for te, b in zip(encoders, before))
    assert step_overhead(["--arch", arch, "--batch", "2", "--steps", "1", "--warmup", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("    2")]
    assert [(r[0], r[1]) for r in rows] == [("2", "yes"), ("2", "no")] and all(float(r[2]) > 0 for r in rows)


def test_a_backend_flag_mode_sets_its_flag_for_its_run_only_and_an_uncaptured_graphs_row_says_so(monkeypatch,
                                                                                                  capsys):
    """`cudnn-benchmark` turns cuDNN's autotuning on for its own run and puts it back; a `graphs` row whose capture
    failed (here, as on any machine without CUDA) says it ran eagerly rather than passing for a captured one."""
    import benchmarks.train_speed as ts
    from textinv import graphs
    from textinv import train as train_module

    seen = []
    real_train = ts.train
    monkeypatch.setattr(ts, "train", lambda *a, **kw: seen.append(torch.backends.cudnn.benchmark) or
                        real_train(*a, **kw))
    monkeypatch.setattr(train_module, "check_graph_device", lambda device: None)
    real_init = graphs.CapturedStep.__init__
    monkeypatch.setattr(graphs.CapturedStep, "__init__",
                        lambda self, *a, **kw: real_init(self, *a, **{**kw, "capture": True}))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert train_speed(["--arch", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--modes", "textinv",
                        "cudnn-benchmark", "graphs"]) == 0
    assert seen == [False, True, False] and torch.backends.cudnn.benchmark is False
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("textinv ", "cudnn-benchmark ", "graphs "))}
    assert "not captured, ran eagerly" in rows["graphs"] and "not captured" not in rows["textinv"]


def test_step_ops_counts_what_launches_kernels_and_each_part_of_a_step(capsys):
    """Views and CPU-scalar reads are not counted as computing; the text encoder adds its ops to the TI step; the
    shapes step's AdamW is counted as a GPU runs it (foreach: a handful of ops for all 500-odd tensors)."""
    from benchmarks.step_ops import counted, main as step_ops, ti_step_ops

    count = counted(lambda: torch.ones(3).add(1).view(3, 1).t().sum().item())
    assert count.computing == 3 and sum(count.counts.values()) == 6  # ones, add, sum; view, t, item
    ti = ti_step_ops("tiny")
    assert ti["with text"].computing > ti["without"].computing > 100
    assert step_ops(["--ti-arch", "tiny"]) == 0
    rows = {line[:22].strip(): line for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == ["ti tiny, with text", "ti tiny, without", "shapes, forward", "shapes, backward",
                          "shapes, clip", "shapes, adamw", "shapes, ema", "shapes, whole step"]
    computing = {name: int(line[22:32].replace(",", "")) for name, line in rows.items()}
    assert computing["shapes, adamw"] < 20 and computing["shapes, backward"] > computing["shapes, forward"] > 300
    assert computing["shapes, whole step"] == sum(v for k, v in computing.items()
                                                  if k.startswith("shapes,") and k != "shapes, whole step")


def test_every_command_of_the_gpu_sessions_plan_parses(monkeypatch, tmp_path):
    """A lease is minutes long and starts from nothing: a misspelt flag or mode in the plan would cost its command's
    whole share. Each command the GPU plan runs (not the --quick one) is parsed by its own module's parser."""
    import argparse
    import importlib

    import benchmarks.gpu_session as gs

    planned = []
    monkeypatch.setattr(gs, "run_part", lambda name, commands, *a, **kw: planned.extend(commands) or
                        {"part": name, "status": "ok", "seconds": 0.0})
    monkeypatch.setattr(gs, "pack", lambda *a: None)
    monkeypatch.setenv("TORCH_LOGS", "")
    gs.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--angle-share", "0.5"])
    (start,) = [c for c in planned if "--from-model" in c]
    assert start[-2:] == ["--set", "angle_caption_share=0.5"]  # (a setting of the new folder: every chunk reads it)
    with pytest.raises(SystemExit):
        gs.main(["--out", str(tmp_path / "out"), "--angle-share", "1.5"])

    class Parsed(Exception):
        pass

    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        real(self, args, namespace)  # (a bad flag or choice exits here, with status 2)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    modules = [c[2] for c in planned if c[1:2] == ["-m"] and c[2] != "pytest"]
    assert {"benchmarks.train_speed", "benchmarks.step_overhead", "textinv.shapes.pretrain"} <= set(modules)
    for command in planned:
        if command[1:2] != ["-m"] or command[2] == "pytest":
            continue
        with pytest.raises(Parsed):
            importlib.import_module(command[2]).main(command[3:])


@pytest.mark.parametrize("arch", ["tiny", "tiny-xl"])
def test_step_memory_grows_with_the_batch_and_checkpointing_lowers_it(arch):
    from benchmarks.step_memory import trainer_model
    from textinv.memory import step_bytes

    _, twin, ids = trainer_model(arch)
    plain = [step_bytes(twin, ids, b, twin.resolution) for b in (1, 2, 4)]
    kept = [step_bytes(twin, ids, b, twin.resolution, checkpointing=True) for b in (1, 2, 4)]
    assert plain[0] < plain[1] < plain[2] and kept[0] < kept[1] < kept[2]
    assert all(k < 0.8 * p for k, p in zip(kept, plain))
    assert abs((plain[2] - plain[1]) - 2 * (plain[1] - plain[0])) < 0.1 * plain[2]  # (linear in the batch)


def test_step_memory_command_finds_the_largest_batch_that_fits(capsys, monkeypatch):
    import benchmarks.step_memory as step_memory
    from textinv.memory import step_bytes

    monkeypatch.setattr(step_memory, "CONTEXT_GIB", 0.0)
    assert step_memory.main(["--arch", "tiny", "--batch", "1", "2", "--fit", "0.02"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["no"], ["yes"])]
    assert [r[:2] for r in rows if r[1] != "largest"] == [["no", "1"], ["no", "2"], ["yes", "1"], ["yes", "2"]]
    pipe, twin, ids = step_memory.trainer_model("tiny")
    weights = step_memory.weight_bytes(pipe) / step_memory.GiB
    for checkpointing, row in zip((False, True), (r for r in rows if r[1] == "largest")):
        n = int(row[-1])

        def gib(b):
            return weights + step_bytes(twin, ids, b, twin.resolution, checkpointing) / step_memory.GiB
        assert n >= 1 and step_memory.card_fits(gib(n), 0.02) and not step_memory.card_fits(gib(n + 1), 0.02)


def test_step_memory_counts_long_captions_as_the_trainer_reads_them(capsys, monkeypatch):
    """--max-token-length 225: each sample's three chunks through the text encoder and 227 states for the UNet, as
    `textinv train --max-token-length 225` runs its step; more memory than the default's one pass of 77."""
    import benchmarks.step_memory as step_memory
    from textinv.memory import step_bytes

    counted = {}

    def counting(*a, **k):
        counted.setdefault(k.get("max_token_length", 75), []).append(step_bytes(*a, **k))
        return counted[k.get("max_token_length", 75)][-1]

    monkeypatch.setattr(step_memory, "step_bytes", counting)
    for length in (75, 225):
        assert step_memory.main(["--arch", "tiny", "--batch", "2", "--fit", "--max-token-length", str(length)]) == 0
        assert (", captions of 225 tokens:" in capsys.readouterr().out) == (length == 225)
    assert set(counted) == {75, 225} and all(long > short for short, long in zip(counted[75], counted[225]))


@pytest.mark.parametrize("arch, unet, text", [("sd15", 859_520_964, [123_060_480]),
                                              ("sdxl", 2_567_463_684, [123_060_480, 694_659_840])])
def test_full_size_architectures_build_with_their_published_sizes(arch, unet, text):
    from benchmarks.architectures import build

    pipe = build(arch, "meta", torch.bfloat16)  # (shapes only: seconds, no memory)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if arch == "sdxl" else [])
    assert sum(p.numel() for p in pipe.unet.parameters()) == unet
    assert [sum(p.numel() for p in te.parameters()) for te in encoders] == text
    assert type(pipe.scheduler).__name__ == ("EulerDiscreteScheduler" if arch == "sdxl" else "DDPMScheduler")


def test_roofline_counts_a_matmuls_flops_exactly_and_each_tensor_it_moves_once():
    """A (B, M, K) x (K, N) matmul is 2*M*K*N*B FLOPs whichever ATen op runs it; its bytes are what it reads and
    writes, a broadcast operand once; views launch nothing and are not recorded."""
    from benchmarks.step_roofline import Roofline

    B, M, K, N = 3, 5, 7, 11
    a = torch.zeros(B, M, K, device="meta", dtype=torch.bfloat16)
    w = torch.zeros(K, N, device="meta", dtype=torch.bfloat16)
    with Roofline() as roof:
        a @ w  # (folded into one mm of (B*M, K) x (K, N))
        torch.bmm(a, w.expand(B, K, N))  # (the weight broadcast over the batch: read once)
        a.transpose(1, 2).unsqueeze(0)[0].view(B, K, M)  # (no kernel)
        torch.empty_like(a).copy_(a)  # (an allocation, no kernel; then a copy: reads `a`, writes the new one)
    assert [(op.name, op.cls, op.flops) for op in roof.ops] == [("aten.mm", "matmul", 2 * M * K * N * B),
                                                                 ("aten.bmm", "matmul", 2 * M * K * N * B),
                                                                 ("aten.copy_", "copies", 0)]
    assert [op.bytes for op in roof.ops] == [2 * (B * M * K + K * N + B * M * N)] * 2 + [2 * 2 * B * M * K]


def test_roofline_counts_only_the_gradients_a_convolution_backward_is_asked_for():
    """Frozen weights: the backward of a convolution computes its input's gradient alone, one convolution's
    FLOPs; asked for the weight's too, it is two."""
    from benchmarks.step_roofline import Roofline

    conv = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False).to("meta", torch.bfloat16)
    forward = 2 * (2 * 16 * 10 * 10) * (8 * 3 * 3)  # 2 FLOPs a multiply-add, one per output and weight tap
    for frozen, expected in ((True, forward), (False, 2 * forward)):
        conv.requires_grad_(not frozen)
        x = torch.zeros(2, 8, 10, 10, device="meta", dtype=torch.bfloat16, requires_grad=True)
        with Roofline() as roof:
            conv(x).sum().backward()
        flops = {op.name: op.flops for op in roof.ops if op.cls == "convolution"}
        assert flops == {"aten.convolution": forward, "aten.convolution_backward": expected}


def test_roofline_counts_flash_attention_and_sums_floors_per_op():
    """FlashAttention is 4*B*H*Lq*Lk*D FLOPs forward and 2.5x that backward, as the fused kernel (no score
    matrix); a class's floor is its ops' floors summed, each op bound by its own arithmetic or traffic."""
    from textinv.memory import fused_attention
    from benchmarks.step_roofline import OpCost, Roofline, by_class

    B, H, L, D = 2, 4, 256, 32
    q = torch.zeros(B, H, L, D, device="meta", dtype=torch.bfloat16, requires_grad=True)
    with Roofline() as roof, fused_attention():
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    flops = {op.name: op.flops for op in roof.ops if op.cls == "attention"}
    assert flops == {"aten._scaled_dot_product_flash_attention": 4 * B * H * L * L * D,
                     "aten._scaled_dot_product_flash_attention_backward": 10 * B * H * L * L * D}
    ops = [OpCost("aten.mm", "matmul", 100, 1), OpCost("aten.mm", "matmul", 1, 100)]
    sums = by_class(ops, flops_per_s=10.0, bytes_per_s=10.0, issue_flops_per_s=5.0)
    assert sums["matmul"].floor_s == 20.0 and sums["matmul"].bandwidth_s == 10.0  # (not max(101, 101) / 10)
    assert sums["matmul"].floor_issue_s == 30.0 and sums["total"].ops == 2


def test_roofline_of_the_sd15_step_at_batch_1_is_issue_4s_arithmetic():
    """The textual-inversion step of the full SD 1.5 architecture (meta device): matmuls, convolutions and
    attention within 10% of issue 4's 1.65 TFLOP a sample (the UNet's forward 803 GFLOP, the text encoder's 13,
    the backward to the inputs about as much again)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.architectures import FLOP_PER_SAMPLE
    from benchmarks.step_roofline import step_roofline

    with FlopCounterMode(display=False) as pytorchs:
        roof = step_roofline("sd15", 1, with_text=True)
    heavy = sum(op.flops for op in roof.ops if op.cls in ("matmul", "convolution", "attention"))
    assert abs(heavy / FLOP_PER_SAMPLE["sd15"] - 1) < 0.10
    assert sum(op.flops for op in roof.ops) == heavy == pytorchs.get_total_flops()  # (PyTorch's own count agrees)
    assert {"aten._scaled_dot_product_flash_attention", "aten.native_group_norm_backward"} <= {
        op.name for op in roof.ops}


def test_step_roofline_command_prints_a_row_per_class_and_a_total(capsys):
    from benchmarks.step_roofline import CLASSES, main as step_roofline

    assert step_roofline(["--arch", "tiny", "--batch", "2", "--no-text", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()[0] in (*CLASSES, "total")}
    assert list(rows) == [*CLASSES, "total"]
    assert int(rows["total"][1].replace(",", "")) == sum(int(r[1].replace(",", "")) for c, r in rows.items()
                                                         if c != "total")
    floor, at_issue = float(rows["total"][4]), float(rows["total"][6])
    assert 0 < floor <= at_issue and float(rows["convolution"][2]) > 0
    assert sum(line.startswith("#   ") for line in lines) == 3
    with pytest.raises(SystemExit):
        step_roofline(["--arch", "tiny", "--bandwidth-tbs", "0"])


def test_step_memory_works_out_a_model_of_ones_own(sd2_dir, capsys, monkeypatch):
    import benchmarks.step_memory as step_memory
    from textinv.memory import step_bytes

    seen = []

    def counting(twin, *a, **k):
        seen.append((twin.prediction_type, twin.widths, twin.resolution))
        return step_bytes(twin, *a, **k)

    monkeypatch.setattr(step_memory, "step_bytes", counting)
    assert step_memory.main(["--model", str(sd2_dir), "--batch", "1", "--fit"]) == 0
    out = capsys.readouterr().out
    model = load_model(sd2_dir)
    assert out.startswith(f"{model.source} at {model.resolution}x{model.resolution}, bf16: frozen weights ")
    assert set(seen) == {("v_prediction", model.widths, model.resolution)}  # (its own architecture, not --arch's)
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["no", "1"], ["yes", "1"]]


def test_sampler_setup_prints_a_row_per_sampler(capsys):
    from benchmarks import sampler_setup

    assert sampler_setup.main(["--samplers", "euler", "dpm2_a", "--repeat", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| euler", "| dpm2_a"]


def test_xyz_speed_benchmark_draws_the_grid_both_ways_and_counts_their_calls(capsys):
    from benchmarks.xyz_speed import main as xyz_speed

    assert xyz_speed(["--steps", "1", "--repeat", "1", "--x", "prompt-sr=star,circle", "--y", "seed=1,2"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith(("| one", "| tog"))]
    assert [(row[0], row[1]) for row in rows] == [("| one run a cell (before)", "4"), ("| together", "1")]


def test_init_batch_speed_benchmark_draws_the_folder_both_ways_and_counts_their_calls(capsys):
    from benchmarks.init_batch_speed import main as init_batch_speed

    assert init_batch_speed(["--pictures", "3", "--steps", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in out if line.startswith("| ") and line[2].isdigit()]
    assert [(row[0], row[1]) for row in rows] == [("| 1", "3"), ("| 3", "1")]
    assert [line.split(" | ")[1:3] for line in out if line.startswith("| two sizes")] == [["3", "2"]]  # (a size each)
