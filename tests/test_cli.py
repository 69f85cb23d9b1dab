"""The real command line, end to end on a tiny model: train -> generate -> convert -> inspect, and its errors."""

import dataclasses
import json
import os
import re
import subprocess
import signal
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import web_ui_picture
from textinv.cli import main
from textinv.config import GenerateConfig, TrainConfig, build, read_config_file
from textinv.errors import ConfigError
from textinv.formats import load_embedding


def run_cli(*args):
    """Run `python -m textinv ARGS` as a user would; returns the completed process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "textinv", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_then_generate_end_to_end(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--model", sd1_dir, "--images", images, "--token", "<my-dog>", "--init", "dog",
                   "--vectors", "2", "--steps", "4", "--batch", "2", "--save-every", "2", "--sample-every", "2",
                   "--sample-steps", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    # the only bars are diffusers' over the components and ours; no notes on torchvision, which textinv never uses
    assert "torchvision" not in proc.stderr and "Loading weights" not in proc.stderr
    assert "Loading pipeline components" in proc.stderr and "train: 100%" in proc.stderr
    emb = load_embedding(out / "learned_embeds.safetensors")
    assert emb.token == "<my-dog>" and emb.num_vectors == 2 and emb.metadata["steps"] == "4"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["vectors"] == 2 and saved["token"] == "<my-dog>"
    # (generate in this process: a second interpreter would only import torch again; what a fresh process prints
    # is checked on train's above)
    assert main(["generate", "--model", str(sd1_dir), "--embedding", str(out / "learned_embeds.safetensors"),
                 "--prompt", "a photo of <my-dog>", "-n", "2", "--steps", "2", "--out", str(tmp_path / "renders")]) == 0
    pngs = sorted((tmp_path / "renders").glob("*.png"))
    assert len(pngs) == 2
    assert Image.open(pngs[0]).text["expanded_prompt"] == "a photo of <my-dog> <my-dog>_1"


def test_config_file_with_flag_override(sd1_dir, images, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'images = "{images}"\ntoken = "<t>"\ninit = "dog"\nsteps = 50\nbatch = 1\n'
                   f'sample-every = 0\nsave_every = 0\nmodel = "{sd1_dir}"\nformat = "kohya"\n')
    assert main(["train", "--config", str(cfg), "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    emb = load_embedding(tmp_path / "o" / "t.safetensors")
    assert emb.metadata["steps"] == "2"  # the flag beat the file's 50


def test_errors_are_one_clear_line_and_exit_2(tmp_path, images, capsys):
    code = main(["train", "--images", str(tmp_path / "missing"), "--token", "<t>", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "textinv train: error:" in err and "missing" in err and "Traceback" not in err
    code = main(["train", "--images", str(images), "--token", "<t>", "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "no-model")])
    assert code == 2 and "not found" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lerning_rate: 1\n")
    code = main(["train", "--config", str(cfg), "--images", str(images), "--token", "<t>", "--out", str(tmp_path)])
    assert code == 2 and "unknown setting 'lerning_rate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses a choice typo itself
        main(["train", "--property", "objet"])


def test_convert_refuses_a_token_with_spaces_as_train_and_merge_do(tmp_path, capsys):
    """`--token '<a b>'` made a file that generate (and diffusers' loader) then refused: refused here, naming the
    flag, and nothing written."""
    from textinv.formats import LearnedEmbedding, save_embedding

    src = save_embedding(LearnedEmbedding("<c>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "c.safetensors")[0]
    assert main(["convert", str(src), str(tmp_path / "d.pt"), "--token", "<a b>"]) == 2
    assert capsys.readouterr().err == ("textinv convert: error: --token '<a b>' must be one word without spaces, e.g. "
                                       "'<my-dog>': the word prompts call the embedding by\n")
    assert not (tmp_path / "d.pt").exists()

def test_inspect_says_a_vector_of_zeros_reads_as_nothing(tmp_path, sd1_dir, capsys):
    """A merge whose weights cancel writes a vector of zeros; its nearest tokens were the table's first rows (byte
    symbols) at similarity 0.00, as if it read as them."""
    from textinv.formats import LearnedEmbedding, save_embedding

    vectors = torch.cat([torch.zeros(1, 32), torch.randn(1, 32)])
    (file,) = save_embedding(LearnedEmbedding("<z>", {"text_encoder": vectors}), tmp_path / "z.pt")
    assert main(["inspect", str(file), "--model", str(sd1_dir), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "vector 0 reads as: nothing (a vector of zeros)" in lines
    assert any(line.startswith("vector 1 reads as: ") and line.count("(") == 2 for line in lines), lines
    assert main(["inspect", str(file), "--model", str(sd1_dir), "--json"]) == 0
    near = json.loads(capsys.readouterr().out)["nearest_tokens"]["text_encoder"]
    assert near[0] == [] and len(near[1]) == 5

def test_convert_and_inspect(tmp_path, sd1_dir, capsys):
    from textinv.formats import LearnedEmbedding, save_embedding

    src = save_embedding(LearnedEmbedding("<c>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "learned_embeds.safetensors")[0]
    assert main(["convert", str(src), str(tmp_path / "c.pt")]) == 0
    assert torch.equal(load_embedding(tmp_path / "c.pt").vectors["text_encoder"],
                       load_embedding(src).vectors["text_encoder"])
    capsys.readouterr()
    before = (tmp_path / "c.pt").read_bytes()  # a second convert to the same file is refused, unless --overwrite
    assert main(["convert", str(src), str(tmp_path / "c.pt"), "--token", "<d>"]) == 2
    assert "c.pt already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "c.pt").read_bytes() == before
    assert main(["convert", str(src), str(tmp_path / "c.pt"), "--token", "<d>", "--overwrite"]) == 0
    assert load_embedding(tmp_path / "c.pt").token == "<d>"
    assert main(["convert", str(src), str(tmp_path / "c.pt"), "--overwrite"]) == 0  # (back to "<c>")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "c.pt"), "--model", str(sd1_dir), "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "token: <c>" in text and "vectors: 2" in text and "vector 1 reads as:" in text and "a1111" in text
    for k in ("0", "-1"):
        assert main(["inspect", str(tmp_path / "c.pt"), "--model", str(sd1_dir), "--top-k", k]) == 2
        assert "--top-k must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_accelerate_two_cpu_processes_match_one_process_with_twice_the_batch(sd1_dir, images, tmp_path):
    """Data parallel: 2 processes x batch 2 draw the same global batch as 1 process x batch 4 and average grads."""
    common = ["--model", sd1_dir, "--images", images, "--token", "<t>", "--init", "dog", "--steps", "3",
              "--save-every", "0", "--sample-every", "0", "--lr", "0.05"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "textinv", "train", *map(str, common), "--batch", "2", "--out", str(tmp_path / "ddp"),
                           "--log-with", "tensorboard"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --log-with: the main process alone writes the events, one file with loss.csv's loss
    from test_tracking import read_events, scalars
    from textinv.run_folder import read_loss_log

    assert len(list((tmp_path / "ddp" / "logs").rglob("events.*"))) == 1
    assert scalars(read_events(tmp_path / "ddp" / "logs" / "ddp"))["loss"] == [
        (3, pytest.approx(read_loss_log(tmp_path / "ddp" / "loss.csv")[0][1], abs=1e-6))]
    # config.yaml says how to rerun it: with as many processes (each draws --batch samples)
    assert "accelerate launch --num_processes 2" in (tmp_path / "ddp" / "config.yaml").read_text().splitlines()[0]
    assert main(["train", *map(str, common), "--batch", "4", "--out", str(tmp_path / "single")]) == 0
    assert "accelerate launch" not in (tmp_path / "single" / "config.yaml").read_text()
    ddp = load_embedding(tmp_path / "ddp" / "learned_embeds.safetensors").vectors["text_encoder"]
    single = load_embedding(tmp_path / "single" / "learned_embeds.safetensors").vectors["text_encoder"]
    assert torch.allclose(ddp, single, atol=1e-5), (ddp - single).abs().max()
    # the logged loss is the global batch's too, not the main process's half of it
    logged = [read_loss_log(tmp_path / run / "loss.csv") for run in ("ddp", "single")]
    assert [s for s, _ in logged[0]] == [s for s, _ in logged[1]] == [3]
    assert logged[0][0][1] == pytest.approx(logged[1][0][1], rel=1e-5), logged


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


# (a launched script's line: registered before train() registers its own, so it runs after that one at exit, and
# says whether the process group is still running then; a group still running it ends, so the launch exits cleanly)
AT_EXIT = ("import atexit, torch; atexit.register(lambda: (print(f'process {os.environ[\"RANK\"]} exits with the "
           "process group running: {torch.distributed.is_initialized()}', flush=True), "
           "torch.distributed.is_initialized() and torch.distributed.destroy_process_group()))")


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
@pytest.mark.parametrize("caller_started_it", [False, True])
def test_accelerate_the_process_group_train_started_is_ended_as_the_process_exits(sd1_dir, images, tmp_path,
                                                                                   caller_started_it):
    """Left to the interpreter's exit, the gloo process group aborted a process now and then ("terminate called
    without an active exception") while the other one was still at work, and the launcher reported a finished run
    as failed. train() ends the group it started as the process exits; a second run goes on in it (a launch cannot
    start it twice); a group the caller started is left to the caller."""
    import textwrap

    script = tmp_path / "twice.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from accelerate import PartialState
        from textinv.config import TrainConfig
        from textinv.train import train
        {AT_EXIT}
        if {caller_started_it}:
            PartialState(cpu=True)
        for out in ("a", "b"):
            train(TrainConfig(model={str(sd1_dir)!r}, images={str(images)!r}, token="<t>", init="dog", steps=1,
                              batch=2, save_every=0, sample_every=0, out={str(tmp_path)!r} + "/" + out), progress=False)
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*ACCELERATE, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "b" / "learned_embeds.safetensors").exists()
    for rank in (0, 1):
        assert f"process {rank} exits with the process group running: {caller_started_it}" in proc.stdout, proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_a_launched_run_of_one_process_ends_the_process_group_it_started(sd1_dir, images, tmp_path):
    """torchrun --nproc_per_node 1 (any launcher that sets LOCAL_RANK) has accelerate start a process group of one:
    train() started it, so it ends it as the process exits (left running, NCCL warns there that it was not
    destroyed). A group of one has no peer to wait for, so nothing can hang."""
    import socket
    import textwrap

    script = tmp_path / "one.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from textinv.config import TrainConfig
        from textinv.train import train
        {AT_EXIT}
        train(TrainConfig(model={str(sd1_dir)!r}, images={str(images)!r}, token="<t>", init="dog", steps=1,
                          batch=1, save_every=0, sample_every=0, out={str(tmp_path / "run")!r}), progress=False)
    """))
    with socket.socket() as s:  # (a free port for the group's rendezvous)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LOCAL_RANK": "0", "RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 0 exits with the process group running: False" in proc.stdout, proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_accelerate_a_signal_to_one_process_stops_both_at_one_step_and_the_run_resumes(sd1_dir, images, tmp_path):
    """SIGTERM that reaches only process 1 (a scheduler signals each process on its own; they never get it at the
    same instant): both processes stop after the same step and the main one saves. It was process 1 alone that
    stopped, while the main one went on into a step its peer never took and died there without saving."""
    import textwrap

    from textinv.run_folder import read_loss_log

    out = tmp_path / "ddp"
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from textinv.config import TrainConfig
        from textinv.train import TrainingInterrupted, train
        {AT_EXIT}
        rank = int(os.environ["RANK"])
        config = TrainConfig(model={str(sd1_dir)!r}, images={str(images)!r}, token="<t>", init="dog", steps=4,
                             batch=2, save_every=0, sample_every=0, log_every=1, lr=0.05, out={str(out)!r})
        try:
            train(config, progress=False,
                  on_step=lambda step: rank == 1 and step == 2 and os.kill(os.getpid(), signal.SIGTERM))
        except TrainingInterrupted as e:
            print(f"process {{rank}} stopped at step {{e.step}}", flush=True)
            sys.exit(130)
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*ACCELERATE, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert "process 0 stopped at step 2" in proc.stdout and "process 1 stopped at step 2" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
    # stopped together: the process group train() started is ended as the processes exit
    assert "process 0 exits with the process group running: False" in proc.stdout, proc.stdout
    assert "process 1 exits with the process group running: False" in proc.stdout, proc.stdout
    assert (out / "checkpoints" / "step-000002.pt").exists()
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "2"
    proc = subprocess.run([*ACCELERATE, "-m", "textinv", "train", "--out", str(out), "--resume"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<t>", "--init", "dog",
                 "--steps", "4", "--batch", "4", "--save-every", "0", "--sample-every", "0", "--log-every", "1",
                 "--lr", "0.05", "--out", str(tmp_path / "single")]) == 0
    resumed = load_embedding(out / "learned_embeds.safetensors").vectors["text_encoder"]
    single = load_embedding(tmp_path / "single" / "learned_embeds.safetensors").vectors["text_encoder"]
    assert torch.allclose(resumed, single, atol=1e-5), (resumed - single).abs().max()
    logged = [read_loss_log(path / "loss.csv") for path in (out, tmp_path / "single")]
    assert [s for s, _ in logged[0]] == [1, 2, 3, 4]
    assert [v for _, v in logged[0]] == pytest.approx([v for _, v in logged[1]], rel=1e-5), logged


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_accelerate_a_ctrl_c_kept_as_one_process_loads_stops_both_at_step_0(sd1_dir, images, tmp_path):
    """A Ctrl-C that process 1 alone kept as the model loaded (`EarlyInterrupt`: Python dropped it inside a
    `__del__`) was raised there alone as its loop began: process 0 waited for it at its first step boundary until
    the launcher killed it, and nothing was saved. It is process 1's stop request now: both stop at step 0, saved."""
    import textwrap

    out = tmp_path / "ddp"
    script = tmp_path / "kept.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import textinv.train as train_module
        from textinv.config import TrainConfig
        from textinv.train import TrainingInterrupted, train
        {AT_EXIT}
        rank = int(os.environ["RANK"])

        class CtrlCInFinalizer:  # (conftest's: its Ctrl-C is dropped as it is let go of)
            def __del__(self):
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

        loaded = train_module._start_or_resume  # (the last phase of loading)

        def start_or_resume(run):
            loaded(run)
            if rank == 1:
                CtrlCInFinalizer()

        train_module._start_or_resume = start_or_resume
        config = TrainConfig(model={str(sd1_dir)!r}, images={str(images)!r}, token="<t>", init="dog", steps=4,
                             batch=2, save_every=0, sample_every=0, out={str(out)!r})
        try:
            train(config, progress=False)
        except TrainingInterrupted as e:
            print(f"process {{rank}} stopped at step {{e.step}}", flush=True)
            sys.exit(130)
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*ACCELERATE, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert "Exception ignored in" in proc.stderr, proc.stderr[-3000:]  # (the Ctrl-C was the dropped one)
    assert "process 0 stopped at step 0" in proc.stdout and "process 1 stopped at step 0" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"process {rank} exits with the process group running: False" in proc.stdout, proc.stdout
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000000.pt"]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over localhost")
def test_accelerate_a_picture_one_process_cannot_read_stops_both_with_its_error(sd1_dir, images, tmp_path):
    """Process 1 alone meets a truncated picture (its folder stands for a file that one machine reads cut short). It
    raised its error alone: process 0 wrote config.yaml and waited for it at its first step until gloo failed
    ("Connection closed by peer") and the launcher killed the rest. Both stop at the set-up's agreement now: process
    1 with its error, process 0 naming it, before any file is written."""
    import shutil
    import textwrap

    broken = tmp_path / "broken"
    shutil.copytree(images, broken)
    whole = (broken / "img3.png").read_bytes()
    (broken / "img3.png").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "ddp"
    script = tmp_path / "one_broken.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from textinv.cli import main
        {AT_EXIT}
        images = {str(images)!r} if os.environ["RANK"] == "0" else {str(broken)!r}
        sys.exit(main(["train", "--model", {str(sd1_dir)!r}, "--images", images, "--token", "<t>", "--init", "dog",
                       "--steps", "2", "--batch", "2", "--save-every", "0", "--sample-every", "0", "--out",
                       {str(out)!r}]))
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*ACCELERATE, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert f"textinv train: error: cannot read the picture {broken / 'img3.png'}" in proc.stderr, proc.stderr[-3000:]
    assert "textinv train: error: process 1 failed as the run was set up (its own message says why)" in proc.stderr, \
        proc.stderr[-3000:]
    assert "Connection closed by peer" not in proc.stderr
    for rank in (0, 1):  # (both ended at the agreement, not killed: the group ends as they exit)
        assert f"process {rank} exits with the process group running: False" in proc.stdout, proc.stdout
    assert not out.exists()  # (the main process wrote nothing: the folder it made for the lock is gone)


def _as_process_0_of_2(monkeypatch, all_reduce) -> None:
    """torch.distributed as process 0 of 2 sees it, its all-reduce over the stop request's group `all_reduce`
    (which plays process 1's part: what it adds to the flags)."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "get_world_size", lambda group: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group: 0)


def test_a_data_parallel_set_up_says_a_ctrl_c_in_one_process_to_the_others(monkeypatch):
    """A Ctrl-C that reaches one process as the run is set up (a KeyboardInterrupt there) is said at the set-up's
    agreement, as an error is: that process stops with it, the others with an error naming it. (The agreement's
    all-reduce is played here by a peer, process 1, that says what it was given.)"""
    from textinv.errors import TrainingError
    from textinv.stopping import _StopRequest

    heard = []

    def all_reduce(flags, op, group):  # (process 1 says `peer`)
        heard.append(flags.tolist())
        flags[1] = peer

    _as_process_0_of_2(monkeypatch, all_reduce)
    peer = 0
    stop = _StopRequest(group="the CPU group")
    with pytest.raises(KeyboardInterrupt), stop.setting_up():
        raise KeyboardInterrupt  # (this process's own Ctrl-C: raised here, once process 1 has heard it)
    assert heard == [[2, 0, 0, 0]] and not stop.pending  # (then whether each resumes: not said)
    peer = 2
    stop = _StopRequest(group="the CPU group")
    with pytest.raises(TrainingError, match=r"process 1 was interrupted as the run was set up \(its own message says "
                                            r"why\); every process stopped before the first step"), stop.setting_up():
        stop.agree_set_up()
    assert heard[1:] == [[0, 0, 0, 0]]  # (said once: not again as the error leaves `setting_up`)
    stop = _StopRequest()  # one process: nothing to ask
    with stop.setting_up():
        stop.agree_set_up(last=True)
    assert len(heard) == 2


def test_data_parallel_processes_that_found_the_folder_otherwise_all_stop_before_the_first_step(monkeypatch):
    """--resume-or-start is decided by each process from the folder as it finds it (one that cannot see the run's
    checkpoint, on a disk of its own node, would start while the others resume, and train from other vectors
    unseen): the decisions are compared at the set-up's agreement, and every process stops. (Process 1, played by
    the all-reduce, resumes; this one, process 0, starts.)"""
    from textinv.errors import TrainingError
    from textinv.stopping import _StopRequest

    def all_reduce(flags, op, group):
        flags[3] = peer

    _as_process_0_of_2(monkeypatch, all_reduce)
    peer = 2
    stop = _StopRequest(group="the CPU group")
    with pytest.raises(TrainingError, match=r"process\(es\) 1 resume the run there, the others start it"):
        with stop.setting_up():
            stop.agree_set_up(resumes=False)
    assert not stop.pending
    peer = 1  # (both start: the set-up goes on)
    stop = _StopRequest(group="the CPU group")
    with stop.setting_up():
        stop.agree_set_up(resumes=False)
    assert stop.pending


def test_an_interrupted_data_parallel_run_says_how_to_continue_once(images, tmp_path, monkeypatch, capsys):
    import textinv.train as train_module

    signum = []

    def interrupted(config, **kw):
        raise train_module.TrainingInterrupted(3, tmp_path / "run" / "learned_embeds.safetensors", *signum)

    monkeypatch.setattr(train_module, "train", interrupted)
    args = ["train", "--images", str(images), "--token", "<t>", "--init", "dog", "--out", str(tmp_path / "run")]
    for rank, says in (("1", False), ("0", True)):  # accelerate sets RANK in every process; the main one is 0
        monkeypatch.setenv("RANK", rank)
        assert main(args) == 130  # Ctrl-C's status, as a shell gives it
        assert ("Continue with: textinv train" in capsys.readouterr().err) == says
    signum.append(signal.SIGTERM)
    assert main(args) == 143  # SIGTERM's


def test_resume_needs_only_the_output_folder(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    args = ["--model", str(sd1_dir), "--images", str(images), "--token", "<r>", "--init", "dog", "--batch", "1",
            "--sample-every", "0", "--save-every", "2"]
    assert main(["train", *args, "--steps", "2", "--out", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "4"
    assert main(["train", "--out", str(out), "--resume", "--steps", "5", "--lr", "0.1"]) == 2  # a changed setting


@pytest.mark.parametrize("given, ours", [("Euler a", "euler_a"), ("DPM++ 2M Karras", "dpm++2m_karras"),
                                          ("dpm++ 2m", "dpm++2m"), ("UniPC", "unipc"), ("k_euler_a", "euler_a"),
                                          ("k_euler", "euler"), ("dpmsolver++", "dpm++2m"), ("EULER_A", "euler_a"),
                                          ("Heun", "heun"), ("DPM2 a Karras", "dpm2_a_karras"), ("PLMS", "plms"),
                                          ("DPM2 Karras", "dpm2_karras"), ("k_dpm_2_a", "dpm2_a"), ("dpm_2", "dpm2"),
                                          ("dpmsingle", "dpm++2s"), ("DPM++ 2M SDE Karras", "dpm++2m_sde_karras"),
                                          ("k_lms", "lms"), ("LMS Karras", "lms_karras"), ("ddpm", "ddpm"),
                                          ("DPM++ SDE Karras", "dpm++sde_karras"), ("DPM++ 3M SDE", "dpm++3m_sde"),
                                          ("Euler Exponential", "euler_exponential"), ("DPM2 a Beta", "dpm2_a_beta"),
                                          ("DPM++ 2S a", "dpm++2s_a"), ("DPM++ 2S a Karras", "dpm++2s_a_karras"),
                                          ("dpmpp_2s_ancestral", "dpm++2s_a"), ("Restart", "restart"),
                                          ("LCM", "lcm"), ("LCM Karras", "lcm_karras")])
def test_the_web_uis_and_kohyas_sampler_names_are_taken_as_textinvs(tmp_path, given, ours):
    """`--sampler k_euler_a` (kohya's gen_img) or 'Euler a' (the web UI, as its pictures name it) was argparse's
    "invalid choice" for the very scheduler textinv draws as euler_a: on the command line, in a config file and from
    Python the name becomes textinv's, which the run records."""
    from textinv.cli import _config_from_args, _parse, make_parser
    from textinv.score import ScoreConfig

    parser = make_parser()
    args = _parse(parser, ["generate", "--prompt", "a dog", "--sampler", given])
    assert args.sampler == ours
    (tmp_path / "generate.yaml").write_text(yaml.safe_dump({"prompt": ["a dog"], "sampler": given}))
    args = _parse(parser, ["generate", "--config", str(tmp_path / "generate.yaml")])
    assert _config_from_args(GenerateConfig, args).validate().sampler == ours
    assert GenerateConfig(prompt=["a dog"], sampler=given).validate().sampler == ours
    assert ScoreConfig(embedding=str(tmp_path), sampler=given).validate().sampler == ours


def test_a_sampler_textinv_does_not_have_is_still_refused_by_any_name(capsys):
    for name in ("pndm", "dpmsolver", "DPM fast", "Euler a Karras", "DPM++ 2M Align Your Steps"):
        with pytest.raises(SystemExit):
            main(["generate", "--prompt", "a dog", "--sampler", name])
        assert f"invalid choice: '{name}'" in capsys.readouterr().err


def test_config_file_values_take_their_settings_types(tmp_path):
    """PyYAML reads `lr: 1e-4` as text and `center_crop: "false"` would be true in Python: values become the
    setting's type, and what cannot be meant as it is refused naming the setting, never a traceback."""
    from textinv.config import TrainConfig, build, read_config_file
    from textinv.errors import ConfigError

    cfg = tmp_path / "train.yaml"
    cfg.write_text('lr: 1e-4\nsteps: "20"\ncenter_crop: "false"\nflip: no\nresolution: 64.0\nsample_prompts: "a {}"\n'
                   "weight_decay: 1e-2\n")
    config = build(TrainConfig, read_config_file(cfg), {"out": "o", "images": "i", "token": "<t>"}).validate()
    assert (config.lr, config.steps, config.center_crop, config.flip, config.resolution, config.weight_decay) == \
        (1e-4, 20, False, False, 64, 0.01)
    assert config.sample_prompts == ["a {}"] and type(config.lr) is float and type(config.steps) is int
    for text, message in (("lr: fast\n", "'lr' must be a number"), ("steps: 2.5\n", "'steps' must be a whole number"),
                          ("center_crop: maybe\n", "'center_crop' must be true or false"),
                          ("batch:\n", "'batch' needs a value"), ("sample_prompts: [[1]]\n", "each entry must be text"),
                          ("weight_decay: .nan\n", "weight_decay= must be >= 0"), ("1: 2\n", "unknown setting '1'")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            build(TrainConfig, read_config_file(cfg), {"out": "o", "images": "i", "token": "<t>"}).validate()
    cfg.write_text('lr_steps: 0.05:10, 0.005\n')  # (YAML reads this as text: it holds a decimal point)
    assert read_config_file(cfg)["lr_steps"] == "0.05:10, 0.005"
    cfg.write_text("lr_steps: 1:30\n")  # YAML 1.1's base 60: the number 90, which would train at a rate of 90
    with pytest.raises(ConfigError, match="put lr_steps in quotes .* here 90"):
        read_config_file(cfg)
    cfg.write_bytes(b"init: \xff\xfe dog\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_config_file(cfg)
    upper = tmp_path / "train.TOML"
    upper.write_text("steps = 7\n")
    assert read_config_file(upper) == {"steps": 7}


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "nowhere"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "holds no config.yaml" in err


def test_resume_of_the_diffusers_scripts_output_folder_names_its_last_step_file_to_start_from(tmp_path, capsys):
    """`--resume_from_checkpoint latest` on the diffusers script's --output_dir becomes `--out DIR --resume`: its
    checkpoint-N folders are accelerate states textinv cannot read, and the error only said no run was started."""
    out = tmp_path / "textual_inversion_cat"
    for step in (500, 1000):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"learned_embeds-steps-{step}.safetensors").write_bytes(b"")
    (out / "learned_embeds.safetensors").write_bytes(b"")
    code = main(["train", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no config.yaml" in err
    assert "checkpoint-1000 is the diffusers script's" in err
    assert f"--init-embedding {out / 'learned_embeds-steps-1000.safetensors'}" in err
    assert "--out NEW_DIR" in err


def test_resume_or_start_is_one_command_for_every_requeue_of_a_job(sd1_dir, images, tmp_path, capsys):
    """The command a requeued cluster job runs each time: it starts the run, goes on with it, and once it is done
    says there is nothing left to learn; the diffusers script's folder is answered as --resume answers it."""
    out = tmp_path / "run"
    def command(steps, folder=out):
        return ["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<r>", "--init", "dog",
                "--batch", "1", "--sample-every", "0", "--save-every", "2", "--steps", steps, "--out", str(folder),
                "--resume-or-start"]
    assert main(command("2")) == 0
    assert "learned <r> in 2 steps" in capsys.readouterr().out
    assert main(command("4")) == 0  # (the job given more steps, as --resume takes them)
    assert "learned <r>: steps 3-4" in capsys.readouterr().out
    assert main(command("4")) == 0
    said = capsys.readouterr().out
    assert "<r>: nothing to learn, the run was at step 4 already" in said, said
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "4"
    diffusers = tmp_path / "textual_inversion_cat"
    (diffusers / "checkpoint-500").mkdir(parents=True)
    (diffusers / "learned_embeds-steps-500.safetensors").write_bytes(b"")
    assert main(command("4", diffusers)) == 2
    err = capsys.readouterr().err
    assert f"--resume-or-start: {diffusers} holds no config.yaml, so no textinv run; its checkpoint-500 is the " \
           f"diffusers script's" in err and "--out NEW_DIR" in err, err


def test_an_interrupted_resume_or_start_job_says_its_own_command_goes_on(images, tmp_path, monkeypatch, capsys):
    import textinv.train as train_module

    def interrupted(config, **kw):
        raise train_module.TrainingInterrupted(3, tmp_path / "run" / "learned_embeds.safetensors")

    monkeypatch.setattr(train_module, "train", interrupted)
    args = ["train", "--images", str(images), "--token", "<t>", "--init", "dog", "--out", str(tmp_path / "run"),
            "--resume-or-start"]
    assert main(args) == 130
    assert f"Continue with: textinv train --out {tmp_path / 'run'} --resume (or the same command again: " \
           "--resume-or-start resumes it)" in capsys.readouterr().err


@pytest.mark.parametrize("stop", ["interrupted", "disk full"])
def test_a_run_given_threads_is_told_to_continue_at_that_count(images, tmp_path, monkeypatch, capsys, stop):
    """The printed command goes on bit for bit: a CPU step's sums depend on the thread count, which is not in the
    run's config.yaml, so the --threads the run was given is in the command (torch's own count otherwise)."""
    import errno

    import textinv.train as train_module

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step-000002.pt").write_bytes(b"")

    def stopped(config, **kw):
        if stop == "interrupted":
            raise train_module.TrainingInterrupted(3, out / "learned_embeds.safetensors")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "loss.csv"))

    monkeypatch.setattr(train_module, "train", stopped)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (this test process keeps its own count)
    args = ["train", "--images", str(images), "--token", "<t>", "--init", "dog", "--out", str(out)]
    main(args + ["--threads", "1"])
    assert f"ontinue with: textinv train --out {out} --resume --threads 1" in capsys.readouterr().err
    main(args)
    err = capsys.readouterr().err
    assert f"ontinue with: textinv train --out {out} --resume" in err and "--threads" not in err, err


def test_the_diffusers_scripts_resume_latest_is_answered_with_resume_or_start(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "run", "--resume_from_checkpoint", "latest"])
    err = capsys.readouterr().err
    assert "--resume_from_checkpoint" in err and "latest is --resume-or-start: textinv train --out DIR " \
           "--resume-or-start" in err, err


def test_a_mistyped_choice_is_one_line_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--precision", "fp33"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "invalid choice: 'fp33'" in err[0] and "--help" in err[0]


def test_a_mistyped_choice_names_the_nearest_and_a_long_list_is_left_to_help(capsys):
    """`--sampler eulr` printed all 61 sampler names and not the one meant: the nearest is named, a list of more
    than 16 left to --help; a short list stays."""
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "a dog", "--sampler", "eulr"])
    err = capsys.readouterr().err
    assert re.search(r"invalid choice: 'eulr' \(one of \d+ names; did you mean 'euler'\?\)", err)
    assert "'dpm2_a_beta'" not in err
    with pytest.raises(SystemExit):
        main(["train", "--property", "objct"])
    assert "(choose from 'object', 'style'; did you mean 'object'?)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "generate"])
def test_precision_no_the_diffusers_scripts_and_accelerates_word_for_fp32_is_answered(command, capsys, tmp_path):
    """`--mixed_precision no` typed as `--precision no` said only "invalid choice" (a config file too)."""
    with pytest.raises(SystemExit) as info:
        main([command, "--precision", "no"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert "--precision: 'no' is the diffusers script's and accelerate's word for full precision: give fp32" in err[0]
    config = tmp_path / "run.yaml"
    config.write_text(f"precision: 'no'\nout: {tmp_path / 'out'}\nimages: {tmp_path}\ntoken: <t>\n"
                      if command == "train" else f"precision: 'no'\nout: {tmp_path / 'out'}\nprompt: [x]\n")
    assert main([command, "--config", str(config)]) == 2
    assert "give fp32" in capsys.readouterr().err
    config.write_text(config.read_text().replace("'no'", "no"))  # (YAML's false)
    assert main([command, "--config", str(config)]) == 2
    assert "got bool False (YAML reads an unquoted yes, no, on or off as true or false: put the word in quotes)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("word, layout", [("safetensors", "give kohya"), ("pt", "give a1111"),
                                          ("ckpt", "give a1111"), (".bin", "give diffusers")])
def test_a_file_suffix_given_to_format_is_answered_with_the_layout_that_writes_it(word, layout, capsys, tmp_path):
    """kohya's `--save_model_as safetensors` typed as `--format safetensors` (as the answer to --save_model_as says
    to) got only "invalid choice": --format names a layout, the suffix follows from it (a config file too)."""
    with pytest.raises(SystemExit) as info:
        main(["train", "--format", word])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert f"--format: {word!r} is a file's suffix (kohya's --save_model_as); --format names the layout" in err[0]
    assert layout in err[0]
    config = tmp_path / "run.yaml"
    config.write_text(f"format: {word}\nout: {tmp_path / 'out'}\nimages: {tmp_path}\ntoken: <t>\n")
    assert main(["train", "--config", str(config)]) == 2
    assert layout in capsys.readouterr().err


def test_an_accelerate_config_given_to_config_is_named_as_one(tmp_path, capsys):
    """The file `accelerate config` writes (the diffusers script's launch settings) given to --config was refused
    for its mixed_precision key alone, as if it were a textinv config with one wrong name."""
    config = tmp_path / "default_config.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: fp16\n"
                      "num_processes: 1\nuse_cpu: false\n")
    assert main(["train", "--config", str(config), "--images", str(tmp_path), "--token", "<t>",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{config} is an accelerate config (accelerate config writes it): give it to accelerate launch " \
           f"--config_file {config} -m textinv train ..." in err
    assert "train takes its mixed_precision from accelerate launch where --precision is left out" in err


def test_filewords_only_templates_train_and_draw_sample_grids(sd1_dir, images, tmp_path):
    """A1111's *_filewords.txt has [filewords] on every line; the sample grids fall back to the default templates."""
    templates = tmp_path / "style_filewords.txt"
    templates.write_text("a photo of [name], [filewords]\nan image of [name], [filewords]\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<t>", "--init", "dog",
                 "--steps", "2", "--batch", "1", "--sample-every", "2", "--sample-steps", "1", "--templates",
                 str(templates), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step-000000.png", "step-000002.png"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["out"] == str(out.resolve()) and saved["templates"] == str(templates.resolve())


def test_an_embedding_no_prompt_uses_is_warned_about(sd1_dir, tmp_path, capsys):
    from textinv.formats import LearnedEmbedding, save_embedding

    (emb,) = save_embedding(LearnedEmbedding("<my-star>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "s.pt",
                            "a1111")
    with pytest.warns(UserWarning, match="'<my-star>' .* is in no --prompt") as caught:
        assert main(["generate", "--model", str(sd1_dir), "--embedding", str(emb), "--prompt", "a photo of <my-stra>",
                     "-n", "1", "--steps", "1", "--out", str(tmp_path / "r")]) == 0
    from textinv.cli import _short_warning

    w = caught[0]
    assert _short_warning(w.message, w.category, w.filename, w.lineno) == f"textinv: warning: {w.message}\n"


def _drawing_three_pictures_that_warn(config, **kw):
    """generate, as a fake: a warning before its bar, then one as the second of three pictures is drawn."""
    import textinv.generate

    warnings.warn("before the bar")
    bar = textinv.generate.tqdm(total=3, desc="generate", unit="img")
    for picture in range(3):
        if picture == 1:
            warnings.warn("as the bar is drawn")
        bar.update()
    bar.close()
    return []


def test_a_warning_raised_as_a_bar_is_drawn_is_written_on_its_own_line_above_it(monkeypatch, capsys):
    """A warning raised mid-bar was written after the bar's text, on its line (`generate:  33%|███ | 1/3
    [00:01<00:02]textinv: warning: ...`), and the bar drawn over it; it is now written on its own line, as tqdm.write
    writes, with the bar drawn again below it. One raised with no bar drawn is written as it was."""
    import textinv.generate

    def written_as_python_does(msg):  # (CPython's `_showwarnmsg_impl`, which pytest's record of warnings replaces)
        (msg.file or sys.stderr).write(warnings.formatwarning(msg.message, msg.category, msg.filename, msg.lineno))

    monkeypatch.setattr(warnings, "_showwarnmsg_impl", written_as_python_does)
    monkeypatch.setattr(textinv.generate, "generate", _drawing_three_pictures_that_warn)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["generate", "--prompt", "a dog"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("textinv: warning: before the bar\n")
    assert "textinv: warning: as the bar is drawn" in re.split(r"[\r\n]", err)
    assert err.rindex("generate:") > err.index("as the bar is drawn") and "3/3" in err[err.index("as the bar"):]
    assert warnings.showwarning is before  # (Python's own again once the command returns)


def test_a_warning_raised_as_a_bar_is_drawn_is_still_recorded_by_catch_warnings(monkeypatch, capsys):
    """pytest.warns (catch_warnings(record=True)) around `main` records the warnings of a run, bar or none."""
    import textinv.generate

    monkeypatch.setattr(textinv.generate, "generate", _drawing_three_pictures_that_warn)
    with pytest.warns(UserWarning) as caught:
        assert main(["generate", "--prompt", "a dog"]) == 0
    assert [str(w.message) for w in caught] == ["before the bar", "as the bar is drawn"]
    assert "warning" not in capsys.readouterr().err


def test_inspect_writes_tokens_as_words():
    from textinv.inspect import _readable

    assert [_readable(t) for t in ("dog</w>", "do", "<|endoftext|>")] == ["dog", "do…", "<|endoftext|>"]


def test_inspect_shows_a_drawn_pictures_settings_as_the_web_uis_png_info_does(sd1_dir, tmp_path, capsys):
    """`inspect` on a drawn picture refused it ("no 'sd-ti-embedding' text chunk ... `generate --again` draws it
    again"); it now shows what --again reads from it: its settings by flag, what must be given beside --again, and the
    command line. A picture without settings keeps the refusal."""
    import json

    from PIL.PngImagePlugin import PngInfo

    assert main(["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "1", "--steps", "1", "--width", "16",
                 "--seed", "0", "--hires-scale", "1.5", "--out", str(tmp_path / "r")]) == 0
    (drawn,) = (tmp_path / "r").glob("*.png")
    capsys.readouterr()
    assert main(["inspect", str(drawn)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{drawn}: a picture textinv drew")
    # a seed of 0 is shown (0 is no unset value); the model is recorded by name (--metadata shareable), so asked for
    for line in ("  --prompt 'a dog'", "  --seed 0", "  --steps 1", "  --hires-scale 1.5",
                 f"  --model {sd1_dir.name}", f"draw it again: textinv generate --again {drawn} --model MODEL"):
        assert line in text.splitlines()
    assert "needs: --model" in text and "--vae" not in text  # (a setting left at nothing is no flag)
    assert main(["inspect", str(drawn), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["origin"], report["settings"]["--seed"], report["settings"]["--prompt"]) == ("textinv", 0, ["a dog"])

    info = PngInfo()
    info.add_text("parameters", "a photo of <my-dog>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG "
                  'scale: 7, Seed: 42, Size: 512x512, Model: v1-5, TI hashes: "my-dog: 0123456789ab"')
    Image.new("RGB", (8, 8)).save(tmp_path / "web.png", pnginfo=info)
    assert main(["inspect", str(tmp_path / "web.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["origin"] == "a1111" and report["ti_hashes"] == {"my-dog": "0123456789ab"}
    assert {k: report["settings"][k] for k in ("--prompt", "--negative-prompt", "--seed", "--sampler")} == {
        "--prompt": ["a photo of <my-dog>"], "--negative-prompt": "blurry", "--seed": 42, "--sampler": "euler_a"}
    assert "--model" in report["needs"][0] and report["again"].endswith("web.png --model MODEL --embedding EMBEDDING")
    assert any("Model" in note for note in report["notes"])
    assert "TI hashes: my-dog: 0123456789ab" in report["text"]
    assert main(["inspect", str(tmp_path / "web.png"), "--model", str(sd1_dir)]) == 2  # (no vectors to compare)
    assert "leave --model out" in capsys.readouterr().err

    # settings --again cannot read either (a ComfyUI graph whose picture comes from no sampler): said, not "--again
    # draws it again"
    info = PngInfo()
    info.add_text("prompt", json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                                        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "comfy.png", pnginfo=info)
    assert main(["inspect", str(tmp_path / "comfy.png")]) == 2
    said = capsys.readouterr().err
    assert "settings it holds cannot be read" in said and "LoadImage" in said and "draws it again" not in said
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")  # no settings, no embedding: refused as before
    assert main(["inspect", str(tmp_path / "photo.png")]) == 2
    assert "no 'sd-ti-embedding' text chunk" in capsys.readouterr().err


@pytest.mark.parametrize("name, text", [("run.toml", "steps = 7\n"), ("run.json", '{"steps": 7}'),
                                        ("run.yaml", "steps: 7\n")])
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_config_files_with_a_byte_order_mark_are_read(tmp_path, name, text, encoding):
    """Notepad and PowerShell 5 (`Out-File -Encoding utf8`) write UTF-8 with a BOM; YAML files were read, TOML and
    JSON ones refused ('Invalid statement', 'Unexpected UTF-8 BOM'). Captions and templates already drop it. Notepad's
    "Unicode" and PowerShell's default `Out-File` are UTF-16 with its mark: read alike (they were "not UTF-8")."""
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    assert read_config_file(path) == {"steps": 7}


@pytest.mark.parametrize("concept, key", [("{images: dogs, token: yes}", "token"),
                                          ("{images: dogs, token: [a, b]}", "token"),
                                          ("{images: [dogs], token: <d>}", "images"),
                                          ("{images: dogs, token: <d>, init: [dog]}", "init")])
def test_a_concept_mapping_of_the_wrong_type_is_refused_naming_it(tmp_path, concept, key):
    """The top-level settings are type-checked (`_coerce`), a config file's concept mappings were not: `token: yes`
    (YAML's true) and a list reached the training code and failed as AttributeError/TypeError with no setting named
    (`init: [dog]` only after the model had loaded)."""
    (tmp_path / "dogs").mkdir()
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out: {tmp_path / 'o'}\nconcepts:\n  - {concept}\n")
    with pytest.raises(ConfigError, match=f"{key} must be text"):
        build(TrainConfig, read_config_file(cfg)).validate()


def test_a_concept_mapping_with_a_number_is_read_as_text(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("out: o\nconcepts:\n  - {images: dogs, token: zq123, init: 5}\n")
    (spec,) = build(TrainConfig, read_config_file(cfg)).validate().concept_list()
    assert spec == {"images": "dogs", "token": "zq123", "init": "5"}


def test_a_bare_marker_prompt_in_yaml_is_named_as_a_mapping(tmp_path):
    """YAML reads an unquoted `- {}` (a sample prompt of the token alone) as an empty mapping; the error said
    "sample prompt {} has no '{}' where the token goes", which contradicts itself."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("out: o\nimages: dogs\ntoken: <d>\nsample_prompts:\n  - a photo of {}\n  - {}\n")
    with pytest.raises(ConfigError, match="mapping, not text.*quotes"):
        build(TrainConfig, read_config_file(cfg))


def test_a_learning_rate_far_above_any_used_is_warned_about_by_its_sign():
    """`--lr 5e3` (5000) is a valid number and the run dies on a NaN loss within steps: it is said up front."""
    with pytest.warns(UserWarning, match=r"learning rate 5000 is far above .* 5e-3 is 0.005"):
        TrainConfig(images="x", token="<t>", out="o", lr=5e3).validate()
    with pytest.warns(UserWarning, match="learning rate 50 "):
        TrainConfig(images="x", token="<t>", out="o", lr_steps="50:10, 0.005").validate()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(images="x", token="<t>", out="o", lr=5e-2).validate()
        TrainConfig(images="x", token="<t>", out="o", lr_steps="0.05:10, 0.005").validate()


def test_a_path_copied_from_windows_is_said_to_be_one(tmp_path):
    """On a system whose folders are separated by '/', `C:\\Users\\me\\pics` names nothing; the error says why."""
    from textinv.data import find_images
    from textinv.errors import DataError, ModelError
    from textinv.models import load_model

    with pytest.raises(DataError, match=r"backslashes, as on Windows; .* '/mnt/c/Users/me/pics' under WSL"):
        find_images(r"C:\Users\me\pics")
    with pytest.raises(ModelError, match=r"backslashes.*'models/sd15.safetensors'"):
        load_model(r"models\sd15.safetensors")
    with pytest.raises(ConfigError, match="backslashes"):
        read_config_file(r"configs\run.yaml")
    with pytest.raises(DataError) as plain:
        find_images(tmp_path / "missing")
    assert "backslashes" not in str(plain.value)


def test_inspect_and_convert_take_a_training_runs_folder_whatever_format_it_saved(sd1_dir, images, tmp_path, capsys):
    """As generate and score do: a run's --out names its embedding, here saved as <name>.pt (--format a1111)."""
    run = tmp_path / "run"
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<kq>", "--init", "dog",
                 "--steps", "2", "--batch", "1", "--save-every", "0", "--sample-every", "0", "--format", "a1111",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0
    assert "token=<kq>" in capsys.readouterr().out
    assert main(["convert", str(run), str(tmp_path / "kq.safetensors")]) == 0
    assert torch.equal(load_embedding(tmp_path / "kq.safetensors").vectors["text_encoder"],
                       load_embedding(run / "kq.pt").vectors["text_encoder"])


def test_a_seed_torch_cannot_take_is_refused_by_every_command_that_seeds(tmp_path):
    """torch.Generator takes -2**63 .. 2**64 - 1: a seed beyond it was a traceback from deep in the loop (train, demo,
    evaluate); the benchmark's seeds also go to numpy, where a negative one was a traceback after the learning."""
    from textinv.score import ScoreConfig
    from textinv.shapes.demo import DemoConfig
    from textinv.shapes.evaluate import EvalConfig

    train = build(TrainConfig, {"out": "o", "images": "i", "token": "<t>", "seed": 2**70})
    with pytest.raises(ConfigError, match=f"seed= must be a whole number from -{2**63} to .*, got {2**70}"):
        train.validate()
    with pytest.raises(ConfigError, match="seed="):
        DemoConfig(seed=2**70, quick=True).resolved()
    with pytest.raises(ConfigError, match="seed="):
        ScoreConfig(embedding=str(tmp_path), seed=2**70).validate()
    for seed in (-2, 2**70):
        with pytest.raises(ConfigError, match="seed= must be a whole number from 0 to"):
            EvalConfig(seed=seed).validate()
        with pytest.raises(ConfigError, match="--train-seed"):
            EvalConfig(train_seed=seed).validate()
    # training takes a negative seed as torch does (-1 is 2**64 - 1), and any its four sample-grid seeds fit
    for seed in (-1, 2**64 - 4):
        assert build(TrainConfig, {"out": "o", "images": "i", "token": "<t>", "seed": seed}).validate()
    assert DemoConfig(seed=-2, quick=True).resolved().seed == -2


@pytest.mark.parametrize("command", [["train", "--images", "i", "--token", "<t>", "--out", "o"],
                                     ["generate", "--prompt", "a dog"], ["score", "--embedding", "."]])
def test_a_resolution_no_model_draws_at_is_refused_before_anything_loads(command, tmp_path, capsys, monkeypatch):
    """--resolution 100000 went ahead: training asked PIL for 100000x100000 pictures and generation torch for 40 GB
    of noise, so the process was killed for memory (or, with a memory limit, a MemoryError traceback)."""
    monkeypatch.chdir(tmp_path)
    assert main(command + ["--resolution", "100000"]) == 2
    err = capsys.readouterr().err
    assert "--resolution must be a multiple of 8 from 8 to 8192, got 100000" in err and "Traceback" not in err


def test_ctrl_c_while_the_command_line_starts_is_130_without_a_traceback(monkeypatch, capsys):
    """Building the parser imports torch and diffusers (seconds): a Ctrl-C then printed a traceback. So importing the
    command line imports neither, and the parser is built where Ctrl-C is caught."""
    import textinv.cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(textinv.cli, "make_parser", interrupted)
    assert main(["convert", "a.pt", "b.pt"]) == 130
    assert "interrupted" in capsys.readouterr().err
    code = "import sys, textinv.cli; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_inspect_names_a_pictures_embeddings_as_words_not_a_python_list(tmp_path, capsys):
    """A picture drawn with --metadata shareable names its embedding files without their folders: inspect said
    "the picture names ['a.pt', 'b.pt'] without saying where it is"."""
    import json

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("textinv_settings", json.dumps({"textinv_version": "0.1.0", "by_name": ["embedding"], "settings": {
        "prompt": ["a photo of <a> <b>"], "seed": 0, "model": "shapes", "embedding": ["a.pt", "b.pt"]}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "drawn.png", pnginfo=info)
    assert main(["inspect", str(tmp_path / "drawn.png")]) == 0
    assert "needs: --embedding: the picture names a.pt, b.pt without saying where they are" in capsys.readouterr().out


def test_inspect_asks_for_the_embeddings_and_loras_a_web_ui_picture_names(tmp_path, capsys):
    """A web UI picture names its embeddings (TI hashes) and LoRAs (<lora:...> tags) by name alone: inspect's
    command line gave --model only, and that --again refused for the LoRA and drew the embeddings' names as words.
    An embedding bundled in a LoRA the prompt names comes with the LoRA; a picture without either needs neither."""
    import json

    picture = web_ui_picture(tmp_path / "web.png", (
        "a photo of charturner <lora:detail:0.8> <lora:detail:0.5>\nNegative prompt: easyneg\nSteps: 20, Seed: 1, "
        'Size: 512x512, Model: v1-5, TI hashes: "charturner: 0123456789ab, easyneg: 123456789abc, hero: detail"'))
    assert main(["inspect", str(picture), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["again"].endswith("web.png --model MODEL --embedding EMBEDDING --lora-dir LORA_DIR")
    assert ("--embedding: the picture was drawn with the embeddings charturner, easyneg (its TI hashes): give their "
            "files or the web UI's embeddings folder") in report["needs"][1]
    assert report["needs"][2] == ("--lora-dir: the prompt names <lora:detail>: give the folder of your LoRA files "
                                  "(the web UI's models/Lora)")
    plain = web_ui_picture(tmp_path / "plain.png", "a dog\nSteps: 20, Seed: 1, Size: 512x512, Model: v1-5")
    assert main(["inspect", str(plain), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["again"].endswith("plain.png --model MODEL")


@pytest.mark.parametrize("command", ["train", "generate", "score"])
def test_threads_sets_torchs_cpu_threads_before_the_run_and_is_checked(command, monkeypatch, capsys):
    """torch's default of one thread per core ran a shapes-model training step about 9 times slower on a 2-core
    machine busy with other work than one thread (and `score`'s 14 pictures 8 times): `--threads` sets it, as
    `demo`'s does, and 0 is refused first."""
    import textinv.generate
    import textinv.score
    import textinv.train

    seen = []
    monkeypatch.setattr(textinv.train, "train", lambda config: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(textinv.generate, "generate", lambda config, **kw: seen.append(torch.get_num_threads()) or [])
    monkeypatch.setattr(textinv.score, "score", lambda config: seen.append(torch.get_num_threads()))
    flags = {"train": ["--images", "x", "--token", "<t>", "--out", "o"], "generate": ["--prompt", "a dog"],
             "score": ["--embedding", "x"]}[command]
    before = torch.get_num_threads()
    try:
        assert main([command, *flags, "--threads", "0"]) == 2 and not seen
        assert "--threads must be at least 1, got 0" in capsys.readouterr().err
        torch.set_num_threads(2)
        main([command, *flags, "--threads", "1"])
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


def test_help_builds_only_the_named_commands_flags():
    """Building every command's flags imported torch and diffusers (5 s of CPU on the 2-core VM) before `textinv
    --help` or `textinv convert --help` could print: only the command named is built, the others' help line kept."""
    code = ("import sys, textinv.cli\ntry:\n    textinv.cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)), file=sys.stderr)")
    # (demo's and score's took the model loader, transformers and all: 4 s more; score's its CLIP judge too)
    for argv, imported in ((["--help"], "[]"), (["convert", "--help"], "[]"), (["generate", "--help"], "['torch']"),
                           (["demo", "--help"], "['torch']"), (["score", "--help"], "['torch']")):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        assert proc.stderr.strip() == imported, argv
    top = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True).stdout
    assert "score               how good is an embedding" in top and "evaluate            the quality" in top


def test_an_unknown_config_key_is_answered_with_the_nearest_setting(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("stpes: 10\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'stpes' in" in err and str(cfg) in err and "did you mean 'steps'?" in err
    with pytest.raises(ConfigError, match=r"unknown setting 'zzz'; known settings: images, token"):
        build(TrainConfig, {"zzz": 1})


def test_a_mistyped_flag_is_answered_with_the_commands_nearest(capsys):
    """argparse said only "unrecognized arguments: --stpes 3", from the top-level parser, which knows no command's
    flags."""
    for argv, said in ((["train", "--stpes", "3"], "--stpes (did you mean --steps?) 3"),
                       (["generate", "--widht=64"], "--widht=64 (did you mean --width?)"),
                       (["convert", "a.pt", "b.pt", "c.pt"], "unrecognized arguments: c.pt (see")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert said in capsys.readouterr().err


@pytest.mark.parametrize("argv, said", [
    (["train", "--placeholder_token", "<x>"],
     "--placeholder_token is the diffusers script's name; textinv calls it --token"),
    (["train", "--pretrained_model_name_or_path=sd15"], "textinv calls it --model"),
    (["train", "--learning_rate", "1e-4"], "textinv calls it --lr (textinv's default is the paper's 5e-3"),
    (["train", "--num_vectors_per_token", "4"], "textinv calls it --vectors"),
    (["train", "--sample_prompts", "prompts.txt"], "textinv calls it --sample-prompts (the same file (.txt, .toml or "
                                                   ".json) with its per-prompt options"),
    (["train", "--sample_sampler", "euler_a"], "unless a prompt of a --sample-prompts file (kohya's) chooses its own"),
    (["train", "--noise_offset", "0.1"], "--noise_offset is kohya's name; textinv calls it --noise-offset"),
    (["train", "--adaptive_noise_scale", "0.01"], "--adaptive_noise_scale is kohya's name; textinv calls it "
                                                  "--adaptive-noise-scale (with --noise-offset, as theirs)"),
    (["train", "--max_train_epochs", "10"], "--max_train_epochs is kohya's name; textinv calls it --epochs"),
    (["train", "--max_train_epochs", "10"], "every picture its folder's count x --repeats times"),
    (["train", "--num_train_epochs", "10"], "its E epochs are --epochs E --repeats 100"),
    (["train", "--mixed_precision", "bf16"], "textinv's default auto is bf16 on a CUDA GPU that has it"),
    (["generate", "--torch_dtype", "fp16"], "textinv's default auto is fp16 on a CUDA GPU, else fp32"),
    (["generate", "--num_inference_steps", "20"], "textinv calls it --steps"),
    (["generate", "--num_images_per_prompt", "2"], "textinv calls it -n"),
    # (the web UI's API names, typed dashed too: --cfg-scale was "did you mean --hires-scale?")
    (["generate", "--cfg-scale", "7"], "--cfg-scale is the web UI's name; textinv calls it --guidance (its CFG scale)"),
    (["generate", "--sampler_name", "Euler a"], "textinv calls it --sampler (its names, such as 'Euler a'"),
    (["train", "--push_to_hub"], "textinv publishes with a command of its own, once the run is done: textinv push OUT "
                                 "--repo OWNER/NAME"),
    (["train", "--hub_model_id", "me/dog"], "--hub_model_id is the diffusers script's name; it is --repo OWNER/NAME "
                                            "of textinv push OUT"),
    (["train", "--hub_token", "hf_x"], "it is --hub-token of textinv push OUT --repo OWNER/NAME"),
    (["train", "--allow_tf32"], "leaves PyTorch's TF32 defaults as they are"),
    (["train", "--skip_image_resolution", "512"], "a --dataset-config file's skip_image_resolution, in [general] or "
                                                  "a [[datasets]], leaves out its pictures of at most that area"),
    (["train", "--caption_prefix", "<dog>"], "--caption_prefix is kohya's name; textinv calls it --caption-prefix "
                                             "(put before each caption file's text"),
    (["train", "--caption_separator", ";"], "--caption_separator is kohya's name; textinv calls it --tag-separator"),
    (["train", "--keep_tokens_separator", "|||"], "textinv calls it --keep-tags-separator"),
    (["train", "--secondary_separator", ";;;"], "--secondary_separator is kohya's name; textinv calls it --tag-joiner"),
    (["train", "--enable_wildcard"], "--enable_wildcard is kohya's name; textinv calls it --caption-wildcards"),
    (["train", "--token_warmup_step", "0.5"], "--token_warmup_step is kohya's name; textinv calls it "
                                              "--tag-warmup-steps"),
    (["train", "--random_crop"], "--random_crop is kohya's name; textinv calls it --random-crop (as theirs, a "
                                 "window at a random place after the short side is resized"),
    (["train", "--caption_dropout_rate", "0.1"], "--caption_dropout_rate is kohya's name; textinv calls it "
                                                 "--caption-dropout (the sample trains on the empty prompt"),
    (["train", "--caption_dropout_every_n_epochs", "2"], "textinv calls it --caption-dropout-every"),
    (["push", "run", "--hub_model_id", "me/dog"], "--hub_model_id is the diffusers script's name; textinv calls it "
                                                  "--repo"),
])
def test_another_tools_flag_is_answered_with_textinvs_name(argv, said, capsys):
    """The nearest flag by spelling was often another setting (--placeholder_token: --token, not --init)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err
    flag = next(word for word in argv if word.startswith("-"))
    assert err.startswith(f"textinv {argv[0]}: error: unrecognized arguments: {flag}")
    assert "did you mean" not in err


def test_a_value_after_a_switch_is_said_to_be_one(capsys):
    """kohya's --resume takes a state folder; textinv's is a switch, and argparse named only the stray folder."""
    with pytest.raises(SystemExit):
        main(["train", "--out", "run", "--resume", "run/state-000500"])
    assert "run/state-000500 (a value after --resume, which takes none)" in capsys.readouterr().err


def test_a_path_after_resume_is_answered_with_the_command_that_resumes(tmp_path, capsys):
    """kohya's `--resume STATE` and a checkpoint of a textinv run given to --resume were answered only "a value
    after --resume, which takes none", leaving the user to find that the run's folder goes to --out; a path inside
    a run names that run's folder, any other path the form of the command."""
    run = tmp_path / "my-dog"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("token: <t>\n")
    for given in (run, run / "checkpoints" / "step-000500.pt", run / "checkpoints"):
        with pytest.raises(SystemExit):
            main(["train", "--resume", str(given)])
        err = capsys.readouterr().err
        assert f"--resume takes no path: it goes on with the run in --out from its last checkpoint; " \
               f"textinv train --out {run} --resume" in err, err
    with pytest.raises(SystemExit):
        main(["train", "--out", "run", "--resume", "latest"])
    err = capsys.readouterr().err
    assert "latest (a value after --resume, which takes none)" in err
    assert "--resume takes no path: it goes on with the run in --out from its last checkpoint; " \
           "textinv train --out DIR --resume" in err


def test_an_underscore_spelling_of_a_flag_is_answered_with_its_own(capsys):
    """Every flag of train and generate, spelt with underscores (as the diffusers and kohya scripts spell theirs),
    is answered with its own name: by the nearest name, or where another tool's flag of that spelling means
    something else (kohya's --sample_prompts), by the other tool's note, which names it too."""
    from textinv.cli import _parse, make_parser

    parser = make_parser()
    for command in ("train", "generate"):
        for flag in (f for a in parser.commands[command]._actions for f in a.option_strings if "-" in f[2:]):
            with pytest.raises(SystemExit):
                _parse(parser, [command, "--" + flag[2:].replace("-", "_")])
            assert flag in capsys.readouterr().err, (command, flag)


def test_a_config_key_of_another_tool_is_answered_with_textinvs_setting(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("learning_rate: 1e-4\nplaceholder_token: <x>\nsteps: 10\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # one a line, as the command line's are: a kohya GUI config's dozens were one line of thousands of characters
    assert f"unknown settings in {cfg}:\n  'learning_rate': that is the diffusers and kohya scripts' name; " \
           "textinv calls it 'lr'" in err
    assert "\n  'placeholder_token': that is the diffusers script's name; textinv calls it 'token'" in err
    with pytest.raises(ConfigError, match=r"'num_inference_steps': .* textinv calls it 'steps'"):
        build(GenerateConfig, {"num_inference_steps": 20})


def test_kohyas_config_file_tables_are_named_as_tables_with_their_keys_answered(tmp_path, capsys):
    """kohya's --config_file groups its settings in tables ([training_arguments]), which its read_config_from_file
    reads as one list: the error named the table as an unknown setting and listed every setting, saying nothing of
    the keys inside it."""
    cfg = tmp_path / "kohya.toml"
    cfg.write_text('[model_arguments]\npretrained_model_name_or_path = "sd15"\n'
                   '[training_arguments]\nmax_token_length = 150\nsteps = 10\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: [model_arguments] and [training_arguments] are tables, as kohya's --config_file groups its " \
           "settings; textinv reads settings at the top level: write them without the table headers" in err
    assert "'pretrained_model_name_or_path': that is the diffusers and kohya scripts' name; textinv calls it " \
           "'model'" in err
    assert "known settings:" not in err and "'max_token_length': that is" not in err  # (textinv's own name too)
    typo = tmp_path / "train.yaml"  # (a mistyped key holding a mapping in YAML is no kohya table)
    typo.write_text("sample_prompt:\n  prompt: a photo of {}\n")
    assert main(["train", "--config", str(typo), "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'sample_prompts'?" in capsys.readouterr().err


def test_the_web_uis_stepped_rate_given_as_lr_is_answered_with_lr_steps(tmp_path, capsys):
    """The web UI's one "Embedding Learning rate" field takes a stepped rate (0.05:10, 0.005): given as --lr it was
    argparse's "invalid float value", and in a config file "must be a number", neither naming --lr-steps."""
    with pytest.raises(SystemExit):
        main(["train", "--lr", "0.05:10, 0.005", "--token", "<t>", "--out", str(tmp_path / "o")])
    assert ("argument --lr: '0.05:10, 0.005' is the web UI's stepped rate (RATE:STEP, ..., RATE): give it as "
            "--lr-steps '0.05:10, 0.005' (see") in capsys.readouterr().err
    cfg = tmp_path / "train.yaml"
    cfg.write_text('lr: "0.005:500"\n')
    assert main(["train", "--config", str(cfg), "--token", "<t>", "--out", str(tmp_path / "o")]) == 2
    assert f"setting 'lr' in {cfg}: '0.005:500' is the web UI's stepped rate" in capsys.readouterr().err
    assert build(TrainConfig, {"lr": "5e-3"}).lr == 5e-3  # (a number as text, as YAML gives 5e-3)
    for text in ("fast", "0,005"):  # (a decimal comma is no stepped rate)
        with pytest.raises(SystemExit):
            main(["train", "--lr", text, "--token", "<t>", "--out", str(tmp_path / "o")])
        assert f"argument --lr: invalid float value: '{text}'" in capsys.readouterr().err


def test_kohyas_width_comma_height_resolution_is_answered_with_the_one_number_to_give(tmp_path, capsys):
    """kohya's --resolution takes "W,H" (its GUI writes resolution = "512,512" into its config): given to textinv's
    generate or score, it was argparse's "invalid int value" on the command line and "must be a whole number" in a
    --config file; train takes it (`test_train_takes_width_by_height_in_every_spelling_and_a_pair_of_one_side_is_the_square`)."""
    with pytest.raises(SystemExit):
        main(["score", "--resolution", "512,512", "--embedding", "e.safetensors"])
    assert "argument --resolution: 512,512 is kohya's W,H: textinv's --resolution is one side of a square; give " \
           "--resolution 512 (see" in capsys.readouterr().err
    cfg = tmp_path / "kohya.toml"
    cfg.write_text('resolution = "512, 768"\n')
    assert main(["generate", "--config", str(cfg), "--prompt", "a dog", "--out", str(tmp_path / "o")]) == 2
    assert f"setting 'resolution' in {cfg}: 512, 768 is kohya's W,H: textinv's --resolution is one side of a " \
           "square; give --width 512 --height 768" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"is kohya's W,H: .*give --width 512 --height 768"):
        build(GenerateConfig, {"resolution": "512,768"})
    assert build(TrainConfig, {"resolution": "512"}).resolution == 512  # (one number as text, as YAML may give it)
    with pytest.raises(SystemExit):
        main(["train", "--resolution", "big", "--token", "<t>", "--out", str(tmp_path / "o")])
    assert "argument --resolution: invalid int value: 'big'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # (score has neither --buckets nor --width)
        main(["score", "--resolution", "512,768", "--embedding", "e.safetensors"])
    assert "give --resolution 768 (the longer side) (see" in capsys.readouterr().err


@pytest.mark.parametrize("given, taken", [("512x768", [512, 768]), ("768,512", [768, 512]), ("512 X 768", [512, 768]),
                                          ("512x512", 512), ("512,512", 512), ("512", 512)])
def test_train_takes_width_by_height_in_every_spelling_and_a_pair_of_one_side_is_the_square(given, taken, tmp_path):
    """--resolution WIDTHxHEIGHT, or kohya's WIDTH,HEIGHT (its prepare_dataset_args reads the first as the width),
    on the command line and in a --config file; a pair of equal sides is that square's one number, so a run given
    512x512 is the run given 512."""
    from textinv.cli import _config_from_args, _parse, make_parser

    parser = make_parser()
    args = _parse(parser, ["train", "--resolution", given, "--token", "<t>", "--images", "i", "--out", "o"])
    assert _config_from_args(TrainConfig, args).resolution == taken
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"resolution": given}))
    args = _parse(parser, ["train", "--config", str(tmp_path / "train.yaml"), "--token", "<t>", "--images", "i",
                           "--out", "o"])
    assert _config_from_args(TrainConfig, args).resolution == taken
    assert build(TrainConfig, {"resolution": taken}).resolution == taken  # (config.yaml's list, read back)


@pytest.mark.parametrize("given, said", [
    ("500x768", r"--resolution's width must be a multiple of 8 pixels, got 500; the nearest: 496 or 504"),
    ("512x770", r"--resolution's height must be a multiple of 8 pixels, got 770; the nearest: 768 or 776"),
    ("512x0", r"--resolution's height must be a multiple of 8 pixels, got 0; the nearest: 8"),
])
def test_a_width_by_height_of_a_bad_side_is_refused_before_the_model_loads(given, said, tmp_path, capsys):
    missing = tmp_path / "no-such-model"  # (never reached: the size is checked first)
    assert main(["train", "--resolution", given, "--model", str(missing), "--token", "<t>", "--images",
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert re.search(said, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_a_width_by_height_with_buckets_is_refused_naming_a_square_of_about_its_area(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"buckets= makes its sizes about one square's area: give resolution= "
                                          r"one number with it, e.g. 640 \(about 512x768's area\)"):
        TrainConfig(images="i", token="<t>", out="o", resolution=[512, 768], buckets=True).validate()
    with pytest.raises(SystemExit):
        main(["train", "--resolution", "512x", "--token", "<t>", "--out", str(tmp_path / "o")])
    assert "argument --resolution: invalid int value: '512x'" in capsys.readouterr().err
    assert build(TrainConfig, {"resolution": 512.0}).resolution == 512  # (YAML's 512.0: a whole number, as before)
    with pytest.raises(ConfigError, match=r"resolution= takes a whole number of pixels \(512\) or \[width, height\]"):
        TrainConfig(images="i", token="<t>", out="o", resolution=512.5).validate()
    with pytest.raises(ConfigError, match=r"as a pair must be two whole numbers \[width, height\], got \[512, 768, 2\]"):
        TrainConfig(images="i", token="<t>", out="o", resolution=[512, 768, 2]).validate()


def test_the_table_of_other_tools_names_names_only_flags_textinv_has():
    """foreign.NAMES cannot rot: each textinv flag it names (in its column or its note) is one of that command's,
    and a config key of its config (push has none); a flag in a note that names `textinv push` may be push's; each
    other tool's name is none of the command's flags nor a prefix argparse would take for one (allow_abbrev), so it
    reaches the answer."""
    from textinv.cli import make_parser
    from textinv.config import TrainConfig
    from textinv.foreign import NAMES, setting_of

    parser = make_parser()
    from textinv.caption import CaptionConfig

    fields = {"train": TrainConfig, "generate": GenerateConfig, "caption": CaptionConfig}
    push = [f for a in parser.commands["push"]._actions for f in a.option_strings]
    for names, _whose, command, flag, note in NAMES:
        options = [f for a in parser.commands[command]._actions for f in a.option_strings]
        if flag is not None:
            assert flag in options, (names, flag)
            if command in fields:
                assert setting_of(flag) in {f.name for f in dataclasses.fields(fields[command])}, (names, flag)
        for named in re.findall(r"(?<![\w-])--?[a-z][\w-]*", re.sub(r"`[^`]*`", "", note)):  # (`...`: a command)
            # (an underscore: the other tool's own name)
            assert "_" in named or named in options or "textinv push" in note and named in push, (names, named)
        for name in names.split():
            assert not any(option.startswith("--" + name) for option in options), (command, name)


# Other tools' flags, as their parsers (or the web UI's train_embedding / create_embedding) spell them, by the textinv
# command they belong to; read from diffusers' examples/textual_inversion/textual_inversion.py and
# textual_inversion_sdxl.py (with --only_save_embeds of its older versions), kohya's train_textual_inversion.py and
# sdxl_train_textual_inversion.py with the library/ argument functions they call, kohya's gen_img.py and
# finetune/make_captions.py, and the diffusers pipelines' from_pretrained / __call__ arguments that foreign.NAMES
# covers; and the flags kohya's train_util added for its resume (initial_epoch, initial_step,
# skip_until_initial_step), its other scripts' weighted_captions (kohya's own habit, which "did you mean
# --weight-decay?" answered wrongly) and sdxl_train_util's text-encoder caching, which older versions give its SDXL
# textual inversion script.
_DIFFUSERS_TRAIN = """
save_steps save_as_full_pipeline only_save_embeds num_vectors pretrained_model_name_or_path revision variant
tokenizer_name train_data_dir placeholder_token initializer_token learnable_property repeats output_dir seed resolution
center_crop train_batch_size num_train_epochs max_train_steps gradient_accumulation_steps gradient_checkpointing
learning_rate scale_lr lr_scheduler lr_warmup_steps lr_num_cycles dataloader_num_workers use_8bit_adam adam_beta1
adam_beta2 adam_weight_decay adam_epsilon push_to_hub hub_token hub_model_id logging_dir mixed_precision allow_tf32
report_to validation_prompt num_validation_images validation_steps validation_epochs local_rank checkpointing_steps
checkpoints_total_limit resume_from_checkpoint enable_xformers_memory_efficient_attention no_safe_serialization
""".split()
_KOHYA_TRAIN = """
save_model_as weights num_vectors_per_token token_string init_word use_object_template use_style_template no_half_vae
console_log_level console_log_file console_log_simple
v2 v_parameterization pretrained_model_name_or_path tokenizer_cache_dir
metadata_title metadata_author metadata_description metadata_license metadata_tags
train_data_dir cache_info shuffle_caption caption_separator caption_extension caption_extention keep_tokens
keep_tokens_separator secondary_separator enable_wildcard caption_prefix caption_suffix color_aug flip_aug
face_crop_aug_range random_crop debug_dataset resolution cache_latents vae_batch_size cache_latents_to_disk
skip_cache_check enable_bucket min_bucket_reso max_bucket_reso bucket_reso_steps bucket_no_upscale resize_interpolation
skip_image_resolution
token_warmup_min token_warmup_step alpha_mask dataset_class reg_data_dir in_json dataset_repeats
output_dir output_name huggingface_repo_id huggingface_repo_type huggingface_path_in_repo huggingface_token
huggingface_repo_visibility save_state_to_huggingface resume_from_huggingface async_upload save_precision
save_every_n_epochs save_every_n_steps save_n_epoch_ratio save_last_n_epochs save_last_n_epochs_state
save_last_n_steps save_last_n_steps_state save_state save_state_on_train_end resume train_batch_size max_token_length
mem_eff_attn torch_compile dynamo_backend xformers sdpa vae max_train_steps max_train_epochs max_data_loader_n_workers
persistent_data_loader_workers seed gradient_checkpointing gradient_accumulation_steps mixed_precision full_fp16
full_bf16 fp8_base ddp_timeout ddp_gradient_as_bucket_view ddp_static_graph clip_skip logging_dir log_with log_prefix
log_tracker_name wandb_run_name log_tracker_config wandb_api_key log_config noise_offset noise_offset_random_strength
multires_noise_iterations ip_noise_gamma ip_noise_gamma_random_strength multires_noise_discount adaptive_noise_scale
zero_terminal_snr min_timestep max_timestep loss_type huber_schedule huber_c huber_scale lowram highvram
sample_every_n_steps sample_at_first sample_every_n_epochs sample_prompts sample_sampler config_file output_config
prior_loss_weight
conditioning_data_dir masked_loss
deepspeed zero_stage offload_optimizer_device offload_optimizer_nvme_path offload_param_device offload_param_nvme_path
zero3_init_flag zero3_save_16bit_model fp16_master_weights_and_gradients
optimizer_type use_8bit_adam use_lion_optimizer learning_rate max_grad_norm optimizer_args lr_scheduler_type
lr_scheduler_args lr_scheduler lr_warmup_steps lr_decay_steps lr_scheduler_num_cycles lr_scheduler_power
fused_backward_pass lr_scheduler_timescale lr_scheduler_min_lr_ratio
dataset_config
min_snr_gamma scale_v_pred_loss_like_noise_pred v_pred_like_loss debiased_estimation_loss
disable_mmap_load_safetensors
initial_epoch initial_step skip_until_initial_step weighted_captions cache_text_encoder_outputs
cache_text_encoder_outputs_to_disk
""".split()
_WEB_UI_TRAIN = """
embedding_name learn_rate batch_size gradient_step data_root log_directory training_width training_height varsize steps
clip_grad_mode clip_grad_value shuffle_tags tag_drop_out latent_sampling_method use_weight create_image_every
save_embedding_every template_filename template_file save_image_with_stored_embedding preview_from_txt2img
preview_prompt preview_negative_prompt preview_steps preview_sampler_name preview_sampler_index preview_cfg_scale
preview_seed preview_width preview_height
name num_vectors_per_token overwrite_old init_text
""".split()
# the web UI's Train tab's own form names (modules/ui.py: Create embedding, Train) and the keys of the settings-*.json
# it saves beside a run (modules/textual_inversion/saving_settings.py), where they differ from train_embedding's
_WEB_UI_FORM = """
new_embedding_name initialization_text nvpt overwrite_old_embedding train_embedding_name embedding_learn_rate
dataset_directory model_name model_hash initial_step num_of_dataset_images datetime
""".split()
_GENERATE = """
console_log_level console_log_file console_log_simple sdxl v1 v2 v_parameterization prompt from_file from_module
prompter_module_args interactive no_preview image_path mask_path strength images_per_prompt outdir sequential_file_name
use_original_file_name n_iter H W original_height original_width original_height_negative original_width_negative
crop_top crop_left batch_size vae_batch_size vae_slices no_half_vae steps sampler scale ckpt vae tokenizer_cache_dir seed
iter_same_seed shuffle_prompts fp16 bf16 xformers sdpa diffusers_xformers opt_channels_last network_module
network_weights network_mul network_args network_show_meta network_merge_n_models network_merge network_pre_calc
network_regional_mask_max_color_codes textual_inversion_embeddings clip_skip max_embeddings_multiples
emb_normalize_mode guide_image_path highres_fix_scale highres_fix_steps highres_fix_strength highres_fix_save_1st
highres_fix_latents_upscaling highres_fix_upscaler highres_fix_upscaler_args highres_fix_disable_control_net
negative_scale control_net_lllite_models control_net_models control_net_preps control_net_multipliers
control_net_ratios clip_vision_strength ds_depth_1 ds_timesteps_1 ds_depth_2 ds_timesteps_2 ds_ratio
gradual_latent_timesteps gradual_latent_ratio gradual_latent_ratio_step gradual_latent_every_n_steps
gradual_latent_s_noise gradual_latent_unsharp_params full_fp16 full_bf16
pretrained_model_name_or_path revision variant torch_dtype
prompt negative_prompt height width num_inference_steps guidance_scale num_images_per_prompt generator prompt_2
negative_prompt_2 output_type
""".split()


_KOHYA_CAPTION = """
train_data_dir caption_weights caption_extention caption_extension beam_search batch_size max_data_loader_n_workers
pin_memory num_beams top_p max_length min_length seed debug recursive
""".split()


@pytest.mark.parametrize("command, flags", [("train", _DIFFUSERS_TRAIN), ("train", _KOHYA_TRAIN),
                                            ("train", _WEB_UI_TRAIN), ("train", _WEB_UI_FORM),
                                            ("generate", _GENERATE), ("caption", _KOHYA_CAPTION)],
                         ids=["diffusers", "kohya", "web-ui", "web-ui-form", "generate", "kohya-make-captions"])
def test_every_flag_of_the_other_tools_is_textinvs_own_or_answered(command, flags, capsys):
    """Each of their flags is textinv's own (an underscore spelling of it is answered with it) or answered by
    foreign.NAMES, never left to the nearest name by spelling: --revision was "did you mean --precision?",
    --variant "--init", --tokenizer_name "--token", and --allow_tf32 or --local_rank only "unrecognized"."""
    from textinv.cli import _parse, make_parser
    from textinv.foreign import foreign_hint

    parser = make_parser()
    options = {f for a in parser.commands[command]._actions for f in a.option_strings}
    for name in flags:
        own = "--" + name.replace("_", "-")
        if own in options:
            continue
        assert foreign_hint("--" + name, command), (command, name)
        with pytest.raises(SystemExit):
            _parse(parser, [command, "--" + name])
        err = capsys.readouterr().err
        assert f"unrecognized arguments: --{name} (see" in err and "did you mean" not in err, (command, name, err)


def test_kohyas_initial_step_is_answered_as_kohyas_resume_not_only_as_the_web_uis_record():
    """--initial_step was answered as the web UI's record of a resumed run's step; in kohya's scripts it sets the
    step a run goes on from (with --resume and --skip_until_initial_step), which textinv's --resume does itself."""
    from textinv.foreign import foreign_hint

    for name in ("--initial_step", "--initial_epoch", "--skip_until_initial_step"):
        said = foreign_hint(name, "train")
        assert "kohya's" in said and "textinv train --out DIR --resume goes on from" in said, said


def test_a_runs_written_config_reruns_it_bit_for_bit_from_another_directory(sd1_dir, images, tmp_path, monkeypatch):
    """The promise of config.yaml: given back to `train --config`, it learns the same vectors, wherever it runs
    from; a flag that overrode the file is what the record says."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    cfg = tmp_path / "a" / "train.yaml"
    cfg.write_text(f"model: {sd1_dir}\nimages: {images}\ntoken: <t>\ninit: dog\nsteps: 2\nbatch: 1\nseed: 0\n"
                   "save_every: 0\nsample_every: 0\nlr: 0.05\n")
    assert main(["train", "--config", "train.yaml", "--seed", "3", "--out", "run"]) == 0
    saved = yaml.safe_load((tmp_path / "a" / "run" / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["images"] == str(images) and saved["model"] == str(sd1_dir)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "--config", str(tmp_path / "a" / "run" / "config.yaml"), "--out", "again"]) == 0
    assert main(["train", "--config", str(cfg), "--out", "seed0"]) == 0  # the file's own seed, 0
    first, again, seed0 = (load_embedding(path / "learned_embeds.safetensors").vectors["text_encoder"]
                           for path in (tmp_path / "a" / "run", tmp_path / "b" / "again", tmp_path / "b" / "seed0"))
    assert torch.equal(first, again) and not torch.equal(first, seed0)


def test_a_config_files_relative_paths_are_read_from_its_folder(sd1_dir, images, tmp_path, monkeypatch):
    """A config kept in a project (configs/dog.yaml: images: ../photos) works from any working directory, as compose
    files and pyproject.toml do; hub ids and bundled names stay as they are."""
    configs = tmp_path / "project" / "configs"
    configs.mkdir(parents=True)
    (configs / "templates.txt").write_text("a photo of {}\n")
    cfg = configs / "dog.yaml"
    cfg.write_text(f"model: {os.path.relpath(sd1_dir, configs)}\nimages: {os.path.relpath(images, configs)}\n"
                   "token: <t>\ninit: dog\nsteps: 1\nbatch: 1\nsave_every: 0\nsample_every: 0\n"
                   "templates: templates.txt\nout: ../runs/dog\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "project" / "runs" / "dog"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["images"] == str(images) and saved["templates"] == str(configs / "templates.txt")
    assert (run / "learned_embeds.safetensors").is_file()

    from textinv.config import GenerateConfig, config_file_settings

    (configs / "photos=1").mkdir()
    cfg.write_text("model: owner/name\nvae: shapes\n"
                   "concepts: ['photos=1=<a>', 'other=<b>=dog', {images: x, token: <c>}]\n")
    settings = config_file_settings(TrainConfig, cfg)
    assert settings["model"] == "owner/name" and settings["vae"] == "shapes"
    assert settings["concepts"] == [f"{configs / 'photos=1'}=<a>", f"{configs / 'other'}=<b>=dog",
                                    {"images": str(configs / "x"), "token": "<c>"}]
    cfg.write_text("embedding: [a.pt, /abs/b.pt]\nlora_dir: loras\nmodel: ../models/sd.safetensors\nout: renders\n")
    settings = config_file_settings(GenerateConfig, cfg)
    assert settings == {"embedding": [str(configs / "a.pt"), "/abs/b.pt"], "lora_dir": [str(configs / "loras")],
                        "model": str(tmp_path / "project" / "models" / "sd.safetensors"),
                        "out": str(configs / "renders")}
    from textinv.score import ScoreConfig

    cfg.write_text("embedding: run\nimages: ../photos\ncompare: [a.pt]\nclip: openai/clip-vit-base-patch32\n")
    assert config_file_settings(ScoreConfig, cfg) == {
        "embedding": str(configs / "run"), "images": str(tmp_path / "project" / "photos"),
        "compare": [str(configs / "a.pt")], "clip": "openai/clip-vit-base-patch32"}


@pytest.mark.parametrize("name, text, said", [
    ("empty.yaml", "", "config file {cfg} is empty; write the settings in it (e.g. `steps: 3000`)"),
    ("empty.json", " \n", "config file {cfg} is empty; write the settings in it (e.g. `{{\"steps\": 3000}}`)"),
    ("notes.yaml", "# to do\n", "config file {cfg} holds no settings, only comments"),
    ("train.ini", "[train]\nsteps=5\n", "config file {cfg}: textinv reads YAML (.yaml, .yml), TOML (.toml) or JSON "
                                        "(.json), not .ini"),
    ("steps.yaml", "steps: ten\n", "setting 'steps' in {cfg} must be a whole number, got 'ten'"),
    ("token.toml", 'token = ["a", "b"]\n', "setting 'token' in {cfg} must be text, got list"),
    ("generate.yaml", "prompt: [a photo of <t>]\nembedding: [t.pt]\nn: 2\n",
     "unknown settings 'prompt', 'embedding', 'n' in {cfg}: the file holds settings of `textinv generate`"),
])
def test_a_config_file_that_cannot_be_meant_for_train_says_which_file_and_why(tmp_path, capsys, name, text, said):
    cfg = tmp_path / name
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert said.format(cfg=cfg) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`textinv inspect F | head -3`: head leaves after three lines; the command stopped with a BrokenPipeError
    traceback (and another from the interpreter's own flush at exit). It now ends quietly, as Unix tools do."""
    from textinv.formats import LearnedEmbedding, save_embedding

    path = save_embedding(LearnedEmbedding("<p>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "p.pt", "a1111")[0]
    read, write = os.pipe()
    os.close(read)  # the reader has already gone: every write to the pipe fails
    try:
        proc = subprocess.run([sys.executable, "-m", "textinv", "inspect", str(path)], stdout=write,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 1


def test_output_in_an_encoding_without_the_tokens_characters_is_written_escaped(tmp_path):
    """Windows writes redirected output (`textinv inspect F > info.txt`) in its ANSI code page; a token of
    characters cp1252 lacks made the command fail with UnicodeEncodeError after its work. They are escaped now,
    in the output and in the errors and warnings on stderr alike."""
    from textinv.formats import LearnedEmbedding, save_embedding

    path = save_embedding(LearnedEmbedding("<漢字>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "q.pt", "a1111")[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "cp1252"}
    proc = subprocess.run([sys.executable, "-m", "textinv", "inspect", str(path)], capture_output=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode("cp1252")
    assert b"token: <\\u6f22\\u5b57>" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "textinv", "inspect", str(tmp_path / "漢.pt")], capture_output=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and b"\\u6f22.pt: no such file" in proc.stderr, proc.stderr


def test_a_config_files_model_is_told_from_a_hub_id_as_the_model_flag_tells_it(tmp_path, monkeypatch):
    """`--model` reads `sd15/` (a trailing slash) as a folder, never a hub id; a config file's `model: sd15/` took it
    for a hub id left as it stands, so it was looked for in the working directory, not the file's folder. One
    reading for both, from the file's folder; 'owner/name' stays a hub id."""
    from textinv.config import config_file_settings

    configs, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    configs.mkdir()
    (elsewhere / "sd15").mkdir(parents=True)  # a folder of that name where the command runs: not the one meant
    monkeypatch.chdir(elsewhere)
    cfg = configs / "train.yaml"
    cfg.write_text("model: sd15/\nvae: owner/vae\n")
    settings = config_file_settings(TrainConfig, cfg)
    assert settings["model"] == str(configs / "sd15") and settings["vae"] == "owner/vae"


# --- the README against the code: its commands, the train options table and the Layout section -------------------

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
# the README and the pages it sends readers to (docs/): the commands and flags they show are checked alike
DOCS = "\n".join([README] + [page.read_text(encoding="utf-8")
                              for page in sorted((Path(__file__).resolve().parent.parent / "docs").glob("*.md"))])
TRAIN_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "train.md").read_text(encoding="utf-8")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w])")  # (not kohya's --enable_bucket: an underscore follows)


def _readme_commands() -> list[str]:
    """Every command line the README and docs/ show: their fenced code lines and their `code` spans."""
    fenced = re.findall(r"```\w*\n(.*?)```", DOCS, re.S)
    lines = [line for block in fenced for line in block.splitlines()]
    return lines + re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", DOCS, flags=re.S))


def _module_flags(module: str) -> set[str]:
    """The flags of `python -m MODULE`, read from its --help."""
    import contextlib
    import importlib
    import io

    mod = importlib.import_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        (getattr(mod, "main", None) or mod._main)(["--help"])
    return set(_FLAG.findall(out.getvalue()))


def test_every_flag_the_readme_shows_with_a_command_is_one_of_its_flags():
    """`textinv CMD ... --flag` and `python -m MODULE ... --flag` in the README: each flag is the command's own (a
    renamed or dropped flag would otherwise live on in the documentation)."""
    from textinv.cli import make_parser

    commands = {name: {s for action in parser._actions for s in action.option_strings}
                for name, parser in make_parser().commands.items()}
    modules: dict[str, set[str]] = {}
    checked, wrong = 0, []
    for line in _readme_commands():
        command = re.match(r"(?:.*-m )?textinv (\w+)", line)
        module = re.match(r"python -m ((?:textinv|benchmarks)\.[\w.]+)", line)
        if command and command.group(1) in commands:
            known = commands[command.group(1)]
        elif module:
            if module.group(1) not in modules:
                modules[module.group(1)] = _module_flags(module.group(1))
            known = modules[module.group(1)]
        else:
            continue
        checked += 1
        wrong += [(line, flag) for flag in _FLAG.findall(line) if flag not in known]
    assert checked > 20 and not wrong, wrong
    # the train options table: every flag in its first column is train's
    table = TRAIN_PAGE.split("Useful options (all of them: `textinv train --help`):")[1].split("\n\n")[1]
    firsts = [row.split(" | ")[0] for row in table.splitlines()[2:]]
    unknown = [flag for row in firsts for flag in _FLAG.findall(row) if flag not in commands["train"]]
    assert len(firsts) > 20 and not unknown, unknown


# the other tools' dashed flags the README names in `code`: kohya's sample prompt options, TensorBoard's, kohya's
# attention switches and --weights, pip's
_OTHER_TOOLS_FLAGS = {"--n", "--d", "--l", "--s", "--ss", "--w", "--h", "--g", "--fs", "--ctr", "--rcfg", "--am", "--cn",
                      "--i", "--logdir", "--xformers", "--sdpa", "--weights", "--index-url", "--help",
                      "--revision", "--variant", "--include", "--local-dir"}  # (the last two: `hf download`'s)


def test_every_flag_the_readme_names_in_code_is_one_there_is():
    """A flag in `code` anywhere in the README, also in prose without its command ("such as `--no-buckets`", a
    switch textinv never had), is a flag of a textinv command or `python -m` module, or one of the other tools'."""
    from textinv.cli import make_parser

    known = {s for parser in make_parser().commands.values() for action in parser._actions
             for s in action.option_strings} | _OTHER_TOOLS_FLAGS
    for module in sorted(set(re.findall(r"python -m ((?:textinv|benchmarks)\.[\w.]+)", DOCS))):
        known |= _module_flags(module)
    named = {flag for span in _readme_commands() for flag in _FLAG.findall(span)}
    assert len(named) > 100 and not sorted(named - known), sorted(named - known)


def test_the_train_options_tables_defaults_are_the_codes():
    """Where the train options table (docs/train.md) states a default as a value (a number, a choice, on or off), it is
    TrainConfig's; a default the run resolves (the model's size, the property's word) is told in words."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    table = TRAIN_PAGE.split("Useful options (all of them: `textinv train --help`):")[1].split("\n\n")[1]
    compared, wrong = 0, []
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        flags = [_FLAG.findall(item)[0] for item in re.findall(r"`([^`]+)`", cells[0])]
        defaults = [d.strip() for d in cells[1].split(",")] if cells[1] else []
        if len(flags) != len(defaults):
            continue
        for flag, said in zip(flags, defaults):
            name = flag[2:].replace("-", "_")
            if name not in fields:
                continue
            f = fields[name]
            default = TrainConfig().use_flip if name == "flip" else f.default
            if said == "off":
                ok = default in (None, False, "off")
            elif said == "on":
                ok = default is True
            elif re.fullmatch(r"[\d.e+-]+", said):
                ok = not isinstance(default, bool) and isinstance(default, (int, float)) and float(said) == default
            elif said in f.metadata.get("choices", ()) and default is not None:
                ok = said == default
            else:  # (said in words: resolved by the run, e.g. "the model's")
                continue
            compared += 1
            if not ok:
                wrong.append(f"{flag}: README {said}, code {default!r}")
    assert compared > 20 and not wrong, (compared, wrong)


def test_the_readme_layout_names_every_module_and_only_those_there_are():
    root = Path(__file__).resolve().parent.parent
    layout = README.split("## Layout")[1].split("```")[1]
    files = [p for folder in ("textinv", "textinv/shapes", "benchmarks") for p in (root / folder).glob("*.py")
             if not p.name.startswith("__")]
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    assert not [p.relative_to(root).as_posix() for p in files if p.name not in named]
    assert named <= {p.name for p in files}
    top = set(re.findall(r"^  (\w+\.py) ", layout, re.M))  # textinv/'s own modules, one a line
    assert top == {p.name for p in files if p.parent.name == "textinv"}



def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_readme_and_docs_reaches_a_file_and_heading():
    """The README sends readers into docs/ and the pages link back and to each other by heading: each relative link
    names a file that is there, and a `#part` names one of that file's headings (a renamed heading or moved page
    would otherwise leave a link that opens the page's top, or nothing)."""
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    checked, broken = 0, []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+:", target):  # (https:, mailto:)
                continue
            path, _, part = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            checked += 1
            if not linked.is_file():
                broken.append(f"{page.name}: {target} (no such file)")
            elif part and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(encoding="utf-8"),
                                                             flags=re.S), re.M)
                if part not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert checked > 40 and not broken, broken

def test_epochs_and_steps_together_are_refused(images, tmp_path, capsys):
    """--epochs and --steps both say how long the run is: given together (flags, one config file, or Python) they
    are refused, before anything loads; a flag's --epochs replaces a config file's steps (and the other way)."""
    args = ["train", "--images", str(images), "--token", "<t>", "--out", str(tmp_path / "o")]
    assert main([*args, "--epochs", "2", "--steps", "10"]) == 2
    assert "give the run's length as --steps or as --epochs, not both" in capsys.readouterr().err
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 2\nsteps: 10\n")
    assert main([*args, "--config", str(cfg)]) == 2
    assert f"not both (--epochs E sets --steps to E epochs' steps); in {cfg} gives both" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="as steps= or as epochs=, not both"):
        TrainConfig(images="x", token="<t>", out="o", epochs=2, steps=10).validate()
    with pytest.raises(ConfigError, match="epochs= must be a whole number >= 1, got 0"):
        TrainConfig(images="x", token="<t>", out="o", epochs=0).validate()
    cfg.write_text("steps: 10\n")
    later_epochs = build(TrainConfig, {"steps": 10}, {"epochs": 2})
    assert (later_epochs.steps, later_epochs.epochs) == (None, 2)  # (the file's steps go: resolved from the epochs)
    later_steps = build(TrainConfig, {"epochs": 2}, {"steps": 10})
    assert (later_steps.steps, later_steps.epochs) == (10, None)


def test_an_epochs_run_resumes_to_the_uninterrupted_one(sd1_dir, images, tmp_path, monkeypatch):
    """An --epochs run stopped by Ctrl-C and resumed from its folder alone runs the steps config.yaml recorded and
    ends where the uninterrupted run ends; so does a run of fewer epochs resumed with more."""
    from conftest import interrupt_loss_at

    args = ["--model", str(sd1_dir), "--images", str(images), "--token", "<r>", "--init", "dog", "--batch", "2",
            "--repeats", "2", "--sample-every", "0", "--save-every", "2", "--log-every", "1"]
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0  # 4 x 2 x 2 / 2: 8 steps
    straight = load_embedding(tmp_path / "a" / "learned_embeds.safetensors")
    assert straight.metadata["steps"] == "8"
    undo = interrupt_loss_at(monkeypatch, 4)
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path / "b")]) == 130
    undo()
    assert load_embedding(tmp_path / "b" / "learned_embeds.safetensors").metadata["steps"] == "3"
    assert main(["train", "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert "# --epochs 2: 4 pictures x 2 repeats / batch 2 = 4 steps an epoch, 8 steps\n" in \
        (tmp_path / "b" / "config.yaml").read_text()  # (the resume keeps how the steps were counted)
    assert main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "c")]) == 0
    assert main(["train", "--out", str(tmp_path / "c"), "--resume", "--epochs", "2"]) == 0
    for run in "bc":
        resumed = load_embedding(tmp_path / run / "learned_embeds.safetensors")
        assert resumed.metadata["steps"] == "8", run
        assert torch.equal(resumed.vectors["text_encoder"], straight.vectors["text_encoder"]), run
        assert (tmp_path / run / "loss.csv").read_text() == (tmp_path / "a" / "loss.csv").read_text(), run


def test_a_home_folder_written_as_a_tilde_is_the_home_folder_in_every_command(sd1_dir, images, tmp_path,
                                                                              monkeypatch):
    """`--out=~/x`, a quoted '~/x' or a config file's `out: ~/x` reach textinv unexpanded (the shell expands a `~`
    only at the start of a word). Score read it as the home folder; generate, convert and inspect looked for a folder
    named `~` in the working directory (generate and convert made one there), and train made its run folder in the
    home folder but took its lock in `~/...` of the working directory: "No such file or directory", no run."""
    import shutil

    from textinv.formats import LearnedEmbedding, save_embedding

    home, here = tmp_path / "home ü", tmp_path / "here"
    here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    shutil.copytree(images, home / "pictures")
    (home / "train.yaml").write_text("images: ~/pictures\nout: ~/runs/dog\n")
    assert main(["train", "--config", "~/train.yaml", "--model", str(sd1_dir), "--token", "<d>", "--init", "dog",
                 "--steps", "1", "--sample-every", "0"]) == 0
    assert load_embedding(home / "runs" / "dog" / "learned_embeds.safetensors").token == "<d>"
    assert yaml.safe_load((home / "runs" / "dog" / "config.yaml").read_text())["images"] == str(home / "pictures")
    save_embedding(LearnedEmbedding("<c>", {"text_encoder": torch.randn(1, 32)}), home / "run" / "c.pt", "a1111")
    assert main(["inspect", "~/run/c.pt"]) == 0
    assert main(["convert", "~/run/c.pt", "~/converted/c.safetensors"]) == 0
    assert load_embedding(home / "converted" / "c.safetensors").token == "<c>"
    assert main(["generate", "--model", str(sd1_dir), "--embedding", "~/run/c.pt", "--prompt", "a <c>", "-n", "1",
                 "--steps", "1", "--out", "~/renders"]) == 0
    assert len(list((home / "renders").glob("*.png"))) == 1
    assert list(here.iterdir()) == []


def test_inspect_compares_with_a_hub_models_revision_and_variant_and_records_them(hub_cache, tmp_path, capsys):
    """`inspect --model` loads a hub id at --revision and --variant, as train, generate and score do (they were
    unknown flags), and the report names the version compared with; without --model they are refused, not ignored."""
    import json

    from conftest import cache_branch, cache_snapshot
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1", seed=4).save_pretrained(cache_snapshot(hub_cache, "me/old"))
    branch = cache_branch(hub_cache, "me/old", "v1")
    build_tiny_pipeline("sd1", seed=5).save_pretrained(branch)
    build_tiny_pipeline("sd1", seed=6).to(torch.float16).save_pretrained(branch, variant="fp16")
    path = tmp_path / "c.safetensors"
    save_embedding(LearnedEmbedding("<c>", {"text_encoder": torch.ones(1, 32)}), path)

    def inspected(*flags):
        assert main(["inspect", str(path), "--model", "me/old", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    main_branch, on_v1 = inspected(), inspected("--revision", "v1", "--variant", "fp16")
    assert "revision" not in main_branch and (on_v1["model"], on_v1["revision"], on_v1["variant"]) == \
        ("me/old", "v1", "fp16")
    vocab = [r["encoders"]["text_encoder"]["vocab_norm_mean"] for r in (main_branch, on_v1)]
    assert vocab[0] != vocab[1]  # (another model's vocabulary)
    assert main(["inspect", str(path), "--model", "me/old", "--revision", "v9"]) == 2
    assert "with revision 'v9' is not in the local Hugging Face cache" in capsys.readouterr().err
    assert main(["inspect", str(path), "--revision", "v1"]) == 2
    assert "--revision picks which version of --model to load; give --model too" in capsys.readouterr().err


def test_diffusers_sdxl_prompt_2_is_answered_with_the_flags_that_give_each_encoder_its_text():
    """Diffusers' SDXL pipeline gives its `prompt` to CLIP-L and `prompt_2` to OpenCLIP-G (whose pooled embedding
    SDXL reads); textinv's --prompt is OpenCLIP-G's (and CLIP-L's where --prompt-l is not given, under --emphasis
    comfy). It said textinv gives both encoders one prompt, which --prompt-l made untrue."""
    from textinv.foreign import foreign_hint

    assert foreign_hint("--prompt_2", "generate") == (
        "--prompt_2 is the diffusers pipelines' name; textinv calls it --prompt (OpenCLIP-G's text; diffusers' prompt, "
        "CLIP-L's, is then --prompt-l, with --emphasis comfy)")
    assert foreign_hint("--negative_prompt_2", "generate") == (
        "--negative_prompt_2 is the diffusers pipelines' name; textinv calls it --negative-prompt (OpenCLIP-G's text; "
        "diffusers' negative_prompt, CLIP-L's, is then --negative-prompt-l, with --emphasis comfy)")


def test_a_yaml_stepped_clip_value_of_whole_numbers_is_refused_unquoted_a_number_read(tmp_path):
    """YAML 1.1 reads `max_grad_norm: 1:30` (clip at 1 until step 30) as 90, base 60, and the run clipped at 90; it
    is refused as lr_steps' is, naming the quotes. A number, and a stepped value YAML keeps as text, still read."""
    from textinv.config import read_config_file

    cfg = tmp_path / "c.yaml"
    for name in ("max_grad_norm", "max-grad-value"):
        cfg.write_text(f"steps: 10\n{name}: 1:30  # (web UI)\n")
        with pytest.raises(ConfigError, match=f"put {name.replace('-', '_')} in quotes .* here 90"):
            read_config_file(cfg)
    cfg.write_text("max_grad_norm: 90\nmax_grad_value: 0.1:100, 0.05\n")
    assert read_config_file(cfg) == {"max_grad_norm": 90, "max_grad_value": "0.1:100, 0.05"}
    cfg.write_text('max_grad_norm: "1:30"\n')
    assert read_config_file(cfg) == {"max_grad_norm": "1:30"}


def test_a_ctrl_c_in_generate_says_how_many_pictures_were_written_and_where(sd1_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C while generate drew said only "interrupted"; it now says how many of the pictures had been written
    (each whole), and to which folder."""
    import textinv.generate as generate_module
    from conftest import interrupted_at

    calls = interrupted_at(monkeypatch, generate_module, "_draw_batch", 2)
    out = tmp_path / "r"
    args = ["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "3", "--batch-size", "1", "--steps", "1",
            "--width", "16", "--out", str(out)]
    assert main(args) == 130
    assert len(list(out.glob("*.png"))) == 1
    assert f"interrupted: 1 of 3 pictures had been written to {out}, each whole" in capsys.readouterr().err
    calls.clear()
    calls.append(1)  # (the next call is the second: stopped before any picture)
    assert main([*args[:-1], str(tmp_path / "none")]) == 130
    assert "interrupted: none of 3 pictures had been written" in capsys.readouterr().err
