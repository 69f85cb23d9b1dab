"""A run's folder across crashes: one writer at a time, a second Ctrl-C at any moment, lost grids, full disks."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textinv import cli
from textinv import io as textinv_io
from textinv import train as train_module
from textinv.config import SETTINGS_END, SETTINGS_END_NOTE, TrainConfig, config_file_settings, read_config_file
from textinv.errors import ConfigError
from textinv.run_folder import LOCK_FILE, checkpoints, read_loss_log, read_run_settings, run_lock
from textinv.tracking import RunTracker
from textinv.train import TrainingInterrupted, train
from conftest import CtrlCInFinalizer, fresh_model, train_config


config = train_config  # (a short run's settings, `kw` over them)


def test_a_second_run_on_a_folder_being_written_is_refused(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):  # (another textinv train holding the folder; flock refuses a second open file even here)
        for extra in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(ConfigError, match="being written by another textinv train .pid"):
                train(config(images, out, **extra), model=fresh_model(sd1_dir), progress=False)
    train(config(images, out), model=fresh_model(sd1_dir), progress=False)  # released: the folder is free again


def test_a_killed_runs_lock_does_not_hold_the_folder(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from textinv.run_folder import run_lock\n"
                               f"with run_lock(Path({str(out)!r})):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
        train(config(images, out), model=fresh_model(sd1_dir), progress=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).exists()  # (left behind by the kill, but no longer held)
    train(config(images, out, overwrite=True), model=fresh_model(sd1_dir), progress=False)
    assert not (out / LOCK_FILE).exists()  # (a run that ends takes its file with it, as score and the demo do)


def test_a_folder_on_a_file_system_without_locks_is_written_with_a_warning(sd1_dir, images, tmp_path, monkeypatch):
    """flock fails with ENOLCK on NFS without its lock daemon (and is not there on some FUSE mounts): the run
    stopped before its first step, saying "No locks available: a file", and left its lock file in a new folder."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"takes no locks \(No locks available\): a second textinv command on it is "
                                         r"not refused"):
        train(config(images, out), model=fresh_model(sd1_dir), progress=False)
    assert (out / "learned_embeds.safetensors").exists() and not (out / LOCK_FILE).exists()


def test_a_run_that_fails_on_its_inputs_leaves_no_folder(sd1_dir, images, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(Exception):
        train(config(tmp_path / "no-such-pictures", out), model=fresh_model(sd1_dir), progress=False)
    assert not out.exists()
    with pytest.raises(Exception):  # (nor the folders made above it)
        train(config(tmp_path / "no-such-pictures", tmp_path / "a" / "b"), model=fresh_model(sd1_dir), progress=False)
    assert not (tmp_path / "a").exists()


def _twice_ctrl_c_at(monkeypatch, target, name, call):
    real, calls = getattr(target, name), []

    def then_twice(*a, **k):
        result = real(*a, **k)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)  # noted: stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # "again stops at once": here, after the update was applied
        return result

    monkeypatch.setattr(target, name, then_twice)
    return lambda: monkeypatch.setattr(target, name, real)


@pytest.mark.parametrize("where", ["update", "schedule"])
def test_a_second_ctrl_c_inside_a_steps_update_still_resumes_exactly(where, sd1_dir, images, tmp_path, monkeypatch):
    """Without the hold, a second Ctrl-C right after the optimizer's update (or before the schedule's step) saved
    step 3's update under step 2 (or step 3 with step 2's rate), and the resumed vectors differed by up to 0.04."""
    run = dict(steps=6, lr_schedule="linear")
    straight = train(config(images, tmp_path / "a", **run), model=fresh_model(sd1_dir), progress=False)
    if where == "update":
        undo = _twice_ctrl_c_at(monkeypatch, train_module, "_step_skipping_overflows", 3)
    else:  # (get_last_lr is called between `step += 1` and `lr_schedule.step()`)
        undo = _twice_ctrl_c_at(monkeypatch, torch.optim.lr_scheduler.LambdaLR, "get_last_lr", 3)
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, tmp_path / "b", **run), model=fresh_model(sd1_dir), progress=False)
    assert info.value.step == 3
    undo()
    resumed = train(config(images, tmp_path / "b", resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def _a_ctrl_c_in_a_finalizer_after(monkeypatch, name: str) -> None:
    """A Ctrl-C that lands in a `__del__` run as train's `name` (a phase of loading) ends: Python drops the
    KeyboardInterrupt raised there, printing "Exception ignored in"."""
    real = getattr(train_module, name)

    def phase(run, *a, **k):
        real(run, *a, **k)
        CtrlCInFinalizer()

    monkeypatch.setattr(train_module, name, phase)


def _left_open(monkeypatch) -> set:
    """The training bars and trackers made from now on that are not closed (finished): each is in the set returned
    from when it is made until then."""
    left, real_bar, real_init, real_finish = set(), train_module.tqdm, RunTracker.__init__, RunTracker.finish

    def bar(*a, **k):
        made = real_bar(*a, **k)
        left.add(("bar", id(made)))
        real_close = made.close
        made.close = lambda: left.discard(("bar", id(made))) or real_close()
        return made

    def init(self, *a, **k):
        left.add(("tracker", id(self)))
        real_init(self, *a, **k)

    monkeypatch.setattr(train_module, "tqdm", bar)
    monkeypatch.setattr(RunTracker, "__init__", init)
    monkeypatch.setattr(RunTracker, "finish", lambda self: left.discard(("tracker", id(self))) or real_finish(self))
    return left


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one, said)
def test_a_ctrl_c_that_lands_in_a_finalizer_as_the_model_loads_still_stops_the_run(sd1_dir, images, tmp_path,
                                                                                   monkeypatch, pythons_sigint):
    """Python drops an exception raised inside a `__del__` (garbage collected as the model loads), printing
    "Exception ignored in": the KeyboardInterrupt of a Ctrl-C landing there went with it, and the run trained on as
    if none had come (seen on `textinv train --resume`, killed then with SIGKILL)."""
    _a_ctrl_c_in_a_finalizer_after(monkeypatch, "_prepare_step")
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(config(images, out, save_every=2), model=fresh_model(sd1_dir), progress=False)
    assert not checkpoints(out) and not (out / "learned_embeds.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one, said)
def test_a_ctrl_c_kept_as_the_model_loads_stops_the_run_before_its_tracker_and_bar_are_made(sd1_dir, images,
                                                                                           tmp_path, monkeypatch,
                                                                                           pythons_sigint):
    """The kept Ctrl-C was raised once the loop had made its tracker and progress bar, before the part that closes
    them: the tracker was never finished (a notebook kept it open, and the bar)."""
    left = _left_open(monkeypatch)
    _a_ctrl_c_in_a_finalizer_after(monkeypatch, "_start_or_resume")
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(config(images, out, log_with="tensorboard"), model=fresh_model(sd1_dir), progress=False)
    assert not left and not checkpoints(out)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signals", [1, 2])
def test_a_ctrl_c_as_the_loop_sets_up_is_the_runs_and_leaves_its_tracker_finished(signals, sd1_dir, images, tmp_path,
                                                                                  monkeypatch):
    """A Ctrl-C landing between the loop's tracker and its progress bar came out of `train` as Python's bare
    KeyboardInterrupt, with the tracker never finished: only the steps' part of the loop undid what it had made. Now
    the run's handlers are in first: one Ctrl-C is noted and saves the run before its first step, a second stops at
    once; either way the tracker is finished and the handlers put back."""
    left = _left_open(monkeypatch)
    real_bar = train_module.tqdm

    def bar(*a, **k):  # (made once the tracker is)
        for _ in range(signals):  # noted; then "again stops at once"
            os.kill(os.getpid(), signal.SIGINT)
        return real_bar(*a, **k)

    monkeypatch.setattr(train_module, "tqdm", bar)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(config(images, out, log_with="tensorboard"), model=fresh_model(sd1_dir), progress=False)
    assert isinstance(stopped.value, TrainingInterrupted) == (signals == 1)
    assert [c.stem for c in checkpoints(out)] == (["step-000000"] if signals == 1 else [])
    assert not left
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_grid_lost_after_its_checkpoint_is_drawn_again_on_resume(sd1_dir, images, tmp_path):
    """--save-every and --sample-every coincide by default (500): a run killed after a step's checkpoint and before
    its grid resumed from that checkpoint and never drew the grid."""
    out = tmp_path / "b"
    run = dict(save_every=2, sample_every=2, sample_steps=2)
    train(config(images, out, steps=2, **run), model=fresh_model(sd1_dir), progress=False)
    drawn = (out / "samples" / "step-000002.png").read_bytes()
    (out / "samples" / "step-000002.png").unlink()  # (what a kill between the two writes leaves)
    train(config(images, out, steps=4, resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    assert (out / "samples" / "step-000002.png").read_bytes() == drawn
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"step-00000{i}.png" for i in (0, 2, 4)]


def test_a_resumed_runs_record_reruns_the_run_elsewhere(sd1_dir, images, tmp_path):
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2, model=str(sd1_dir)), progress=False)
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    text = (out / "config.yaml").read_text()
    assert "resume: false" in text and "overwrite: false" in text
    assert cli.main(["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert cli.main(["train", "--config", str(out / "config.yaml"), "--overwrite"]) == 0


def disk_full_at(monkeypatch, part: str, nth: int = 1):
    """Every atomic write syncs its temporary file once (`io`): the `nth` sync of a temporary whose name holds
    `part` fails as a full disk does. Returns the real `os.fsync`, to put back."""
    real, seen = os.fsync, []

    def fsync(fd):
        if part in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(textinv_io.os, "fsync", fsync)
    return real


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_go_on(sd1_dir, images, tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / "b"
    real = disk_full_at(monkeypatch, ".step-000004.pt.")  # (the second checkpoint's)
    args = ["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out), "--model",
            str(sd1_dir), "--steps", "6", "--batch", "2", "--save-every", "2", "--sample-every", "0"]
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][-1]
    assert err == (f"textinv train: error: No space left on device: {out / 'checkpoints' / 'step-000004.pt'}; the "
                   f"last checkpoint (step-000002.pt) is kept: make room, then continue with: textinv train --out "
                   f"{out} --resume")
    assert [p.name for p in checkpoints(out)] == ["step-000002.pt"]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(textinv_io.os, "fsync", real)
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0


def test_temporaries_of_writes_cut_short_are_cleared_by_the_next_run(sd1_dir, images, tmp_path):
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    litter = [out / ".learned_embeds.safetensors.ab12_x9z.tmp", out / "checkpoints" / ".step-000004.pt.q0w9e8r7.tmp"]
    mine = out / "notes.tmp"  # (not a name textinv writes: kept)
    for path in litter + [mine]:
        path.write_bytes(b"half")
    train(config(images, out, steps=4, save_every=2, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert [p.exists() for p in litter] == [False, False] and mine.exists()


def test_a_run_clearing_its_folder_leaves_a_live_write_below_it(sd1_dir, images, tmp_path):
    """A `generate --out` inside the run's folder (previews of its steps) writing a picture as the run resumes: the
    run took the picture's temporary file for a kill's, and the picture was lost with an error."""
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    with textinv_io.atomic_path(out / "previews" / "00000-1.png") as tmp:
        tmp.write_bytes(b"a picture")
        train(config(images, out, steps=4, save_every=2, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert (out / "previews" / "00000-1.png").read_bytes() == b"a picture"


def test_an_overwrite_cut_short_leaves_the_record_that_names_the_old_runs_files(sd1_dir, images, tmp_path,
                                                                                  monkeypatch):
    """The old run's config.yaml went before its steps' files: a kill between left files named by a token that the
    next --overwrite, finding no record, no longer knew, and they stayed among the new run's."""
    out = tmp_path / "run"
    train(config(images, out, steps=3, save_every=1, format="a1111"), model=fresh_model(sd1_dir), progress=False)
    real = Path.unlink

    def unlink(self, *a, **k):  # (a kill the moment the record is gone)
        real(self, *a, **k)
        if self.name == "config.yaml":
            raise KeyboardInterrupt
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        train(config(images, out, steps=2, save_every=2, format="a1111", overwrite=True), model=fresh_model(sd1_dir),
              progress=False)
    monkeypatch.setattr(Path, "unlink", real)
    train(config(images, out, steps=2, save_every=2, format="a1111", overwrite=True), model=fresh_model(sd1_dir),
          progress=False)
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["zq-2.pt"]


def test_a_second_ctrl_c_as_the_last_score_is_written_leaves_no_row_out(sd1_dir, images, tmp_path, monkeypatch):
    """The run ends complete, its checkpoint holding the last step's validation loss: validation.csv, written only
    as a step is scored, lacked that row for good (a resume has nothing to score again)."""
    real, written = train_module.write_loss_log, []

    def cut_short(path, *a, **k):  # (the second Ctrl-C, landing as step 4's score is written)
        if k.get("column") == "validation_loss":
            written.append(1)
            if len(written) == 3:
                raise KeyboardInterrupt
        return real(path, *a, **k)
    monkeypatch.setattr(train_module, "write_loss_log", cut_short)
    out = tmp_path / "run"
    train(config(images, out, steps=4, validate_every=2), model=fresh_model(sd1_dir), progress=False)
    assert [step for step, _ in read_loss_log(out / "validation.csv", "validation_loss")] == [0, 2, 4]


def test_ctrl_c_saves_the_run_when_its_log_reader_has_gone(sd1_dir, images, tmp_path):
    """`textinv train ... 2>&1 | tee train.log`: Ctrl-C stops tee too, and the run's next line on stderr (its
    progress bar, the signal's note) raised BrokenPipeError mid-step: it died without saving."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "textinv", "train", "--model", str(sd1_dir), "--images", str(images),
                            "--token", "<zq>", "--init", "dog", "--out", str(out), "--steps", "100000", "--batch", "1",
                            "--save-every", "0", "--sample-every", "0"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env=env)
    seen = b""
    while not re.search(rb"\| *[1-9][0-9]*/100000 ", seen):  # (a step taken, under the run's signal handling)
        seen += run.stderr.read1(4096) or pytest.fail(f"the run ended: {seen.decode()}")
    run.stderr.close()  # tee has gone
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    assert checkpoints(out) and (out / "learned_embeds.safetensors").is_file()


def test_sigterm_during_the_last_save_lets_it_finish(sd1_dir, images, tmp_path, monkeypatch):
    """The handlers were put back before the final save: a SIGTERM then killed the process (no save, litter)."""
    real, sent = train_module.save_embedding, []

    def save_with_signal(*a, **k):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    class Killed(Exception):
        pass

    def default(signum, frame):  # (stands for SIGTERM's default action, which would end pytest itself)
        raise Killed

    monkeypatch.setattr(train_module, "save_embedding", save_with_signal)
    before = signal.signal(signal.SIGTERM, default)
    try:
        out = tmp_path / "b"
        result = train(config(images, out, steps=4), model=fresh_model(sd1_dir), progress=False)  # the final save
    finally:
        signal.signal(signal.SIGTERM, before)
    assert result.steps == 4 and [p.name for p in checkpoints(out)] == ["step-000004.pt"]


def test_a_second_ctrl_c_in_the_last_save_ends_a_complete_run_not_an_interrupted_one(sd1_dir, images, tmp_path,
                                                                                     monkeypatch, capsys):
    """Stopped in the last save (the kill-fuzz's SIGTERMs), the run saved its last step again and said "interrupted:
    ... Continue with: textinv train --out X --resume", exit 143, though every file was there and a resume had
    nothing to learn."""
    out = tmp_path / "b"
    _twice_ctrl_c_at(monkeypatch, train_module, "_write_embedding", 1)  # (save_every 0: the last save's first file)
    args = ["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out), "--model",
            str(sd1_dir), "--steps", "4", "--batch", "2", "--save-every", "0", "--sample-every", "0"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "interrupted" not in err and "--resume" not in err
    assert [p.name for p in checkpoints(out)] == ["step-000004.pt"] and (out / "learned_embeds.safetensors").is_file()


def test_a_signal_while_a_saved_run_tidies_up_ends_nothing_and_closes_the_tracker(sd1_dir, images, tmp_path,
                                                                                  monkeypatch, capsys):
    """A second Ctrl-C after the last save, in train's tidying up, came out of `train` as a bare KeyboardInterrupt
    ("interrupted", 130) and skipped the rest of it: the tracker was not closed, and the run's signal handlers stayed
    installed (a Ctrl-C in the notebook after it would only be noted). Handlers put back before the tracker's close
    had the same effect for a signal landing between the two."""
    done, real_bar, real_finish = [], train_module.tqdm, RunTracker.finish

    def bar(*a, **k):  # (the training bar's close: the first thing the run tidies up)
        made = real_bar(*a, **k)
        real_close = made.close

        def close():
            real_close()
            if not done:
                done.append("bar")
                os.kill(os.getpid(), signal.SIGINT)  # noted
                os.kill(os.getpid(), signal.SIGINT)  # "again stops at once"

        made.close = close
        return made

    def finish(self):
        done.append("tracker")
        real_finish(self)

    model = fresh_model(sd1_dir)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train_module, "tqdm", bar)
    monkeypatch.setattr(RunTracker, "finish", finish)
    try:
        result = train(config(images, tmp_path / "b", steps=4, log_with="tensorboard"), model=model, progress=False)
    except KeyboardInterrupt:  # (a failure, not pytest's own Ctrl-C, which would end the session)
        pytest.fail("the signal in the tidying up came out of train")
    assert result.steps == 4 and done == ["bar", "tracker"]
    assert "SIGINT: the run is complete and saved, finishing up; Ctrl-C again stops at once" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:100])


def _a_vector_byte_changed(path):  # (torch.load read it without a word: the resume went on from other vectors)
    data = bytearray(path.read_bytes())
    at = data.find(torch.load(path, weights_only=True)["vectors"][0].numpy().tobytes())
    data[at + 5] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_cut_short, _a_vector_byte_changed])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_to_the_same_result(damage, sd1_dir, images,
                                                                                    tmp_path):
    """An atomic write never leaves half a checkpoint, but a disk error or a copy cut short can: the newest one
    stopped the resume with torch's own error, though the one before it was whole."""
    run = dict(save_every=2, keep_checkpoints=3)
    whole = train(config(images, tmp_path / "whole", steps=6, **run), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "damaged"
    train(config(images, out, steps=4, **run), model=fresh_model(sd1_dir), progress=False)
    damage(checkpoints(out)[-1])
    with pytest.warns(UserWarning, match="step-000004.pt cannot be read .*resuming from step-000002.pt"):
        resumed = train(config(images, out, steps=6, resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    assert resumed.embedding.vectors.keys() == whole.embedding.vectors.keys()
    assert all(torch.equal(resumed.embedding.vectors[k], whole.embedding.vectors[k]) for k in whole.embedding.vectors)
    for path in checkpoints(out):
        path.write_bytes(b"")
    with pytest.raises(ConfigError, match="every checkpoint .* is damaged"), pytest.warns(UserWarning):
        train(config(images, out, steps=8, resume=True, **run), model=fresh_model(sd1_dir), progress=False)


def test_a_full_disk_at_the_first_checkpoint_says_how_to_go_on(sd1_dir, images, tmp_path, monkeypatch, capsys):
    """It said "no checkpoint was saved yet" and stopped there: the same command was then refused on the folder
    the run had begun."""
    out = tmp_path / "b"
    real = disk_full_at(monkeypatch, ".step-000002.pt.")
    args = ["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out), "--model",
            str(sd1_dir), "--steps", "4", "--batch", "2", "--save-every", "2", "--sample-every", "0"]
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][-1]
    assert err == (f"textinv train: error: No space left on device: {out / 'checkpoints' / 'step-000002.pt'}; no "
                   f"checkpoint was saved yet: make room, then start the run again with --overwrite")
    monkeypatch.setattr(textinv_io.os, "fsync", real)
    assert cli.main(args + ["--overwrite"]) == 0


def test_a_full_disk_at_an_embedding_file_says_how_to_go_on_too(sd1_dir, images, tmp_path, monkeypatch, capsys):
    """The embedding's own write said "choose another output path" (convert's advice) where a run needs --resume."""
    out = tmp_path / "b"
    disk_full_at(monkeypatch, ".learned_embeds.safetensors.", nth=2)  # (step 4's, after step 2's and a checkpoint)
    args = ["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out), "--model",
            str(sd1_dir), "--steps", "6", "--batch", "2", "--save-every", "2", "--sample-every", "0",
            "--no-step-embeddings"]
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][-1]
    assert err == (f"textinv train: error: No space left on device: {out / 'learned_embeds.safetensors'}; the last "
                   f"checkpoint (step-000002.pt) is kept: make room, then continue with: textinv train --out {out} "
                   f"--resume")


def test_a_refused_folder_keeps_the_temporaries_of_other_writers(sd1_dir, images, tmp_path):
    """A folder that is not this run's (not empty, no --resume or --overwrite) is refused untouched: another run
    writing below it (its temporaries) and the folder's own files stay, and no lock file is left in it."""
    parent = tmp_path / "runs"
    other = parent / "cat" / ".learned_embeds.safetensors.ab12cd34.tmp"  # another run's write in progress
    other.parent.mkdir(parents=True)
    other.write_bytes(b"being written")
    with pytest.raises(ConfigError, match="not empty"):
        train(config(images, parent), model=fresh_model(sd1_dir), progress=False)
    assert other.exists()
    assert sorted(p.name for p in parent.iterdir()) == ["cat"]


def test_the_windows_lock_takes_the_same_byte_whatever_the_file_holds(tmp_path, monkeypatch):
    """msvcrt.locking locks from the file's position: "a+" put it at the end of the holder's line, so a second run
    locked another byte and was let in."""
    import types

    held = {}

    def locking(fd, mode, count):  # (Windows' semantics: `count` bytes from the current position, per file)
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        if held.setdefault(key, fd) != fd:
            raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setitem(sys.modules, "fcntl", None)  # (import fcntl fails, as on Windows)
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(LK_NBLCK=2, locking=locking))
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(ConfigError, match="being written by another textinv train .pid"):
            with run_lock(out):
                pass


def test_a_resumed_run_says_which_steps_it_learned(sd1_dir, images, tmp_path, capsys):
    """It said "learned <zq> in 4 steps (0 s)" after a resume that had run two of them."""
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=True)
    assert "learned <zq> in 2 steps (" in capsys.readouterr().out
    train(config(images, out, steps=4, save_every=2, resume=True), model=fresh_model(sd1_dir), progress=True)
    assert "learned <zq>: steps 3-4 (" in capsys.readouterr().out
    train(config(images, out, steps=4, save_every=2, resume=True), model=fresh_model(sd1_dir), progress=True)
    assert "<zq>: nothing to learn, the run was at step 4 already (" in capsys.readouterr().out
    train(config(images, out, steps=5, save_every=2, resume=True), model=fresh_model(sd1_dir), progress=True)
    assert "learned <zq>: step 5 (" in capsys.readouterr().out  # (it said "steps 5-5")


def test_a_run_of_one_step_says_step(sd1_dir, images, tmp_path, capsys):
    """It said "learned <zq> in 1 steps"."""
    train(config(images, tmp_path / "a", steps=1), model=fresh_model(sd1_dir), progress=True)
    assert "learned <zq> in 1 step (" in capsys.readouterr().out


def test_gradient_checkpointing_may_be_turned_on_when_resuming_to_the_same_result(sd1_dir, images, tmp_path):
    """It runs the UNet's forward again in the backward pass: the same numbers in less memory, so a run that ran out
    of memory goes on with it (it was refused as a changed setting)."""
    straight = train(config(images, tmp_path / "a", steps=4), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, out, steps=4, save_every=2, resume=True, gradient_checkpointing=True),
                    model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def test_a_full_disk_while_drawing_is_one_line_and_keeps_the_pictures_drawn(sd1_dir, tmp_path, monkeypatch, capsys):
    """train said a full disk in one line; generate (and score, demo) ended in a traceback."""
    out = tmp_path / "renders"
    disk_full_at(monkeypatch, "-s1.png.")  # (the second picture)
    code = cli.main(["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "3", "--steps", "1", "--out",
                     str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"textinv generate: error: --out {out}: cannot write 000-a-dog-s1.png (No space "
                                    f"left on device); the 1 picture written before it is in {out}: make room, then "
                                    f"run the command again")  # (on a line of its own, after the bar)
    # (and no temporary file; the third, drawn in the call that drew the second, is written still)
    assert sorted(p.name for p in out.iterdir()) == ["000-a-dog-s0.png", "000-a-dog-s2.png"]


@pytest.mark.parametrize("damage", ["", "# textinv 0.1.0\n", "model: [cut"])
def test_a_resume_whose_saved_settings_are_damaged_says_which_file_and_what_to_do(damage, images, tmp_path, capsys):
    """The record's damage was told as a --config file's: "... or leave out --config", which no one had given."""
    out = tmp_path / "b"
    out.mkdir()
    (out / "config.yaml").write_text(damage)
    said = (f"cannot resume {out}: its settings file {out / 'config.yaml'} cannot be read (damaged from outside: "
            f"textinv writes it whole); put back a copy of it, or start the run again with --overwrite")
    assert cli.main(["train", "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == f"textinv train: error: {said}"
    with pytest.raises(ConfigError) as e:
        train(config(images, out, resume=True), progress=False)
    assert str(e.value) == said.replace("--overwrite", "overwrite=True")  # (from Python, its keyword)


def test_a_settings_file_cut_short_at_any_line_is_refused_and_an_older_ones_resumes(sd1_dir, images, tmp_path,
                                                                                   capsys):
    """A config.yaml cut at a line (a copy cut short) still parsed, and --resume took the settings lost for their
    defaults. The files older versions wrote have no last line to look for, and must still resume."""
    out = tmp_path / "b"
    train(config(images, out, steps=2, lr_schedule="linear"), model=fresh_model(sd1_dir), progress=False)
    saved = out / "config.yaml"
    lines = saved.read_text().splitlines(keepends=True)
    assert lines[-1] == SETTINGS_END + "\n" and SETTINGS_END_NOTE + "\n" in lines
    unreadable = (f"cannot resume {out}: its settings file {saved} cannot be read (damaged from outside: textinv "
                  f"writes it whole); put back a copy of it, or start the run again with --overwrite")
    said = (f"cannot resume {out}: its settings file {saved} is cut short (its last line, {SETTINGS_END!r}, is "
            f"missing: a copy cut short, or an edit that took it out), so the settings after the cut would be lost; "
            f"put back a copy of it (or that line, if the settings are whole), or start the run again with --overwrite")
    for n in range(len(lines)):
        saved.write_text("".join(lines[:n]))
        with pytest.raises(ConfigError) as e:
            read_run_settings(out)
        keyword = str(e.value).replace("overwrite=True", "--overwrite")  # (from Python, its keyword)
        assert keyword in (unreadable, said), n  # (the header alone, no setting yet: one that cannot be read)
    assert keyword == said  # the last cut: every setting there, yet refused
    assert read_config_file(saved)["lr_schedule"] == "linear"
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == f"textinv train: error: {said}"
    # as a --config file it is the user's to cut or edit: no last line needed
    assert config_file_settings(TrainConfig, saved)["lr_schedule"] == "linear"
    # an older textinv's file: no note in its header, no last line
    saved.write_text("".join(line for line in lines if line.strip() not in (SETTINGS_END, SETTINGS_END_NOTE)))
    resumed = train(config(images, out, steps=4, lr_schedule="linear", resume=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert resumed.steps == 4 and saved.read_text().endswith(SETTINGS_END + "\n")  # (written anew, whole)


def test_a_run_whose_pictures_moved_resumes_from_where_they_are_now(sd1_dir, images, tmp_path, capsys):
    """A resume after the picture folder moved (renamed, the project taken to another disk) was refused both ways:
    without --images "the image folder ... does not exist; give the folder that holds your pictures", and with it
    "cannot resume with different settings (images: ...)". The checkpoint's picture names are still checked."""
    out, moved = tmp_path / "b", tmp_path / "moved pictures"
    whole = train(config(images, tmp_path / "whole", steps=4), model=fresh_model(sd1_dir), progress=False)
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    images.rename(moved)
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 2
    assert f"the image folder {images} does not exist" in capsys.readouterr().err
    (moved / "img0.png").rename(moved / "other.png")
    with pytest.raises(ConfigError, match="missing now: img0.png; new: other.png"):
        train(config(moved, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    (moved / "other.png").rename(moved / "img0.png")
    resumed = train(config(moved, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], whole.embedding.vectors["text_encoder"])
    assert read_config_file(out / "config.yaml")["images"] == str(moved)  # (a later resume finds them there)


def test_a_run_whose_model_moved_resumes_with_it_given_where_it_is_now(sd1_dir, images, tmp_path):
    """A resume with --model where the model is now (the folder moved, or the single file converted to one) was
    refused as "different settings (model: ...)": the checkpoint did not say which model it was made with. Now it
    holds the model's fingerprints: the same model anywhere resumes to the uninterrupted result, another is refused,
    and the same source holding other weights since is warned about."""
    import shutil
    import warnings

    from textinv.run_folder import ModelChangedWarning
    from textinv.tiny import build_tiny_pipeline

    here, moved, other = tmp_path / "model", tmp_path / "moved model", tmp_path / "other model"
    shutil.copytree(sd1_dir, here)
    build_tiny_pipeline("sd1", seed=5).save_pretrained(other)
    out = tmp_path / "b"
    whole = train(config(images, tmp_path / "whole", steps=4, model=str(here)), progress=False)
    train(config(images, out, steps=2, save_every=2, model=str(here)), progress=False)
    here.rename(moved)
    with pytest.raises(ConfigError, match=f"with model: '{here}' -> '{other}': that is not the model the run was "
                                          "trained with .its weights differ."):
        train(config(images, out, steps=4, resume=True, model=str(other)), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChangedWarning)
        resumed = train(config(images, out, steps=4, resume=True, model=str(moved)), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], whole.embedding.vectors["text_encoder"])
    assert read_config_file(out / "config.yaml")["model"] == str(moved)  # (a later resume finds it there)

    # the same folder, other weights since (a model saved over it): the run can only go on, and says so
    shutil.rmtree(moved)
    shutil.copytree(other, moved)
    with pytest.warns(ModelChangedWarning, match=f"the model {moved} has changed since the run started"):
        train(config(images, out, steps=6, resume=True, model=str(moved)), progress=False)


def test_a_resume_whose_model_is_gone_says_the_flag_that_gives_its_new_place(sd1_dir, images, tmp_path):
    """A run whose model (and VAE) folders moved, resumed as it was: the error said only that the saved path does
    not exist ('Check the path, or give a hub id ...'), not that --model where it is now resumes; a model given
    anew that is not there is the user's own path, said as before."""
    import shutil

    from textinv.errors import ModelError

    here, vae = tmp_path / "model", tmp_path / "vae"
    shutil.copytree(sd1_dir, here)
    shutil.copytree(sd1_dir / "vae", vae)
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2, model=str(here), vae=str(vae)), progress=False)
    as_saved = config(images, out, steps=4, resume=True, model=str(here), vae=str(vae))  # (what config.yaml has)
    here.rename(tmp_path / "moved")
    with pytest.raises(ModelError, match=r"the run's --model, as .*config.yaml names it; if it moved, resume with "
                                         r"--model where it is now"):
        train(as_saved, progress=False)
    vae.rename(tmp_path / "moved vae")
    with pytest.raises(ModelError, match=r"the run's --model and --vae, as .* names them; if they moved, resume with "
                                         r"--model and --vae where they are now"):
        train(as_saved, progress=False)
    with pytest.raises(ModelError) as given:
        train(config(images, out, steps=4, resume=True, model=str(tmp_path / "typo"),
                     vae=str(tmp_path / "moved vae")), progress=False)
    assert "config.yaml" not in str(given.value)
    train(config(images, out, steps=4, resume=True, model=str(tmp_path / "moved"), vae=str(tmp_path / "moved vae")),
          progress=False)


def test_a_resume_says_what_it_takes_from_where_it_is_now(sd1_dir, images, tmp_path, capsys):
    """A moved folder is checked by its pictures' names only, so a resume from the wrong directory, whose relative
    folder names another project's pictures of the same names, went on without a word: it says each place now."""
    import shutil

    here, model = tmp_path / "model", tmp_path / "moved model"
    shutil.copytree(sd1_dir, here)
    out, moved = tmp_path / "b", tmp_path / "moved pictures"
    train(config(images, out, steps=2, save_every=2, model=str(here)), progress=False)
    images.rename(moved)
    here.rename(model)
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4", "--images", str(moved),
                     "--model", str(model)]) == 0
    said = capsys.readouterr().out
    assert (f"resuming {out} at step 2 of 4\n  pictures now {moved} (was {images})\n  --model now {model} "
            f"(was {here})\n") in said
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    assert f"resuming {out} at step 4 of 6\n" in capsys.readouterr().out  # (nothing moved since: nothing said)


def test_a_checkpoint_without_the_models_fingerprint_resumes_only_with_the_model_where_it_was(sd1_dir, images,
                                                                                            tmp_path):
    """Checkpoints saved before fingerprints were kept cannot tell a moved model from another: refused, by name."""
    import shutil

    here = tmp_path / "model"
    shutil.copytree(sd1_dir, here)
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2, model=str(here)), progress=False)
    [path] = checkpoints(out)
    state = torch.load(path, weights_only=False)
    del state["model"]
    state["textinv_version"] = "0.1.0"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=f"model given anew .model: '{here}' -> '{sd1_dir}'.: its checkpoints were "
                                          "saved by textinv 0.1.0, which did not record"):
        train(config(images, out, steps=4, resume=True, model=str(sd1_dir)), progress=False)
    train(config(images, out, steps=4, resume=True, model=str(here)), progress=False)  # (where it was: as before)


def test_a_resume_whose_settings_file_was_deleted_says_it_is_gone_not_that_no_run_was_started(sd1_dir, images,
                                                                                               tmp_path, capsys):
    """It said "no run was started there; start a new run without --resume", which the folder's checkpoints then
    refused: put the record back, or start again."""
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    (out / "config.yaml").unlink()
    for argv in (["train", "--out", str(out), "--resume"],
                 ["train", "--images", str(images), "--token", "<zq>", "--model", str(sd1_dir), "--out", str(out),
                  "--resume"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert (f"cannot resume: {out} holds the run's checkpoints but not its config.yaml, the settings a resume "
                f"goes on with: put back a copy of it, or start the run again with --overwrite") in err
    with pytest.raises(ConfigError, match="holds the run's checkpoints but not its config.yaml"):
        train(config(images, out, resume=True), model=fresh_model(sd1_dir), progress=False)


def test_a_resume_without_checkpoints_says_how_to_go_on_from_the_saved_vectors(sd1_dir, images, tmp_path, capsys):
    """Checkpoints deleted after a run (to make room), then --resume --steps more: the message said the run had
    stopped before its first save, and its fix, --overwrite, deletes the run's embedding with the rest."""
    out = tmp_path / "b"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    for path in checkpoints(out):
        path.unlink()
    with pytest.raises(ConfigError) as e:
        train(config(images, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert str(e.value) == (f"cannot resume: {out / 'checkpoints'} holds no checkpoint (the run stopped before its "
                            f"first save_every= step, or they were deleted); start it again with overwrite=True, and "
                            f"init_embedding='{out / 'learned_embeds.safetensors'}' (in place of init=) to start "
                            f"from the vectors it saved")
    train(config(images, out, steps=2, overwrite=True, init=None,  # (the way it gives)
                 init_embedding=str(out / "learned_embeds.safetensors")), model=fresh_model(sd1_dir), progress=False)


def test_a_resume_without_checkpoints_names_the_newest_saved_vectors_that_load(sd1_dir, images, tmp_path):
    """Its embedding file damaged too (a copy cut short), the message named it all the same, and following it
    ended on "truncated safetensors file"; the steps' files in embeddings/ hold the vectors too."""
    out = tmp_path / "b"
    train(config(images, out, steps=4, save_every=2), model=fresh_model(sd1_dir), progress=False)
    shutil.rmtree(out / "checkpoints")
    main = out / "learned_embeds.safetensors"
    main.write_bytes(main.read_bytes()[:300])
    newest = out / "embeddings" / "learned_embeds-steps-4.safetensors"
    with pytest.raises(ConfigError, match=f"init_embedding='{re.escape(str(newest))}' .in place of init=."):
        train(config(images, out, steps=6, resume=True), model=fresh_model(sd1_dir), progress=False)
    newest.write_bytes(b"")  # (and that one emptied: the step before it)
    before = newest.with_name(newest.name.replace("4", "2"))
    with pytest.raises(ConfigError, match=f"init_embedding='{re.escape(str(before))}' "):
        train(config(images, out, steps=6, resume=True), model=fresh_model(sd1_dir), progress=False)


def test_a_hub_models_revision_and_variant_are_recorded_and_a_resume_that_gives_others_is_the_model_anew(
        hub_cache, images, tmp_path, capsys):
    """--revision and --variant are written to config.yaml and the embedding, so --resume loads the same; given
    otherwise on resume they are the model given anew: another branch with the same weights resumes, other weights
    are refused, and the fp16 variant (rounded once more) is refused saying to give the run's variant."""
    import shutil

    from conftest import cache_branch, cache_snapshot
    from textinv.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1", seed=4)
    main = cache_snapshot(hub_cache, "me/old")
    pipe.save_pretrained(main)
    pipe.save_pretrained(cache_branch(hub_cache, "me/old", "v1"))  # (the same weights on another branch)
    pipe.to(torch.float16).save_pretrained(main, variant="fp16")  # (the same model, rounded to fp16)
    build_tiny_pipeline("sd1", seed=5).save_pretrained(cache_branch(hub_cache, "me/old", "other"))
    out = tmp_path / "b"
    done = train(config(images, out, steps=2, save_every=2, model="me/old", revision="v1"), progress=False)
    saved = read_config_file(out / "config.yaml")
    assert saved["revision"] == "v1" and saved["variant"] is None
    assert done.embedding.metadata["base_model_revision"] == "v1"
    with pytest.raises(ConfigError, match="with revision: 'v1' -> 'other': that is not the model the run was "
                                          "trained with .its weights differ"):
        train(config(images, out, steps=4, resume=True, model="me/old", revision="other"), progress=False)
    with pytest.raises(ConfigError, match=r"the weights' variant differs from the run's.*resume with variant=None "
                                          r"\(the plain weights\), as the run started, or start a new run with "
                                          r"overwrite=True"):
        train(config(images, out, steps=4, resume=True, model="me/old", revision="main", variant="fp16"),
              progress=False)
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4", "--revision", "main"]) == 0
    assert read_config_file(out / "config.yaml")["revision"] == "main"
    assert "--revision now main (was v1)" in capsys.readouterr().out
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0  # (left out: the run's own)
    assert read_config_file(out / "config.yaml")["revision"] == "main"
    train(config(images, out, steps=8, resume=True, model="me/old"), progress=False)  # (as train() is called)
    assert read_config_file(out / "config.yaml")["revision"] == "main"
    # the hub model downloaded to a folder: that holds one version, so the run's revision is not asked of it
    shutil.copytree(main, tmp_path / "downloaded")
    train(config(images, out, steps=10, resume=True, model=str(tmp_path / "downloaded")), progress=False)
    assert read_config_file(out / "config.yaml")["revision"] is None


def test_a_lock_file_removed_as_it_was_taken_is_taken_again(tmp_path, monkeypatch):
    """`take_lock` (score's and the demo's hold, whose holder removes its file when done): a holder that finished
    between this process's opening the file and locking it has removed it, and a lock on the removed file would hold
    nothing; the file at the path is taken instead."""
    from textinv import run_folder
    from textinv.run_folder import drop_lock, take_lock

    lock, real, opened = tmp_path / ".x.lock", run_folder.hold_file, []

    def hold_file(path, refusal):  # (the first one opened is removed by the holder that finished meanwhile)
        f = real(path, refusal)
        if not opened:
            path.unlink()
        opened.append(os.fstat(f.fileno()).st_ino)
        return f

    monkeypatch.setattr(run_folder, "hold_file", hold_file)
    held = take_lock(lock, str)
    assert len(opened) == 2 and os.fstat(held.fileno()).st_ino == os.stat(lock).st_ino
    with pytest.raises(ConfigError):  # (held: another process, here another open file, is refused)
        take_lock(lock, str)
    drop_lock(held, lock)
    assert not lock.exists() and held.closed


def test_a_signal_as_a_finished_run_lets_go_of_its_folder_is_the_runs_not_pythons(sd1_dir, images, tmp_path,
                                                                                   monkeypatch, capsys):
    """The run's handlers went back before `train` let go of the folder and the model: a Ctrl-C then was Python's
    KeyboardInterrupt ("interrupted", 130, for a run complete and saved), a SIGTERM its kill (no message, the lock
    file left). Now the run ends as it would have, saying the signal came as it finished, and the handlers go back
    after."""
    import contextlib

    real_lock, sent = train_module.run_lock, []

    @contextlib.contextmanager
    def run_lock(out, is_main=True):
        with real_lock(out, is_main):
            yield
            os.kill(os.getpid(), sent[-1])  # (the run has returned; the folder is let go of next)

    class Killed(Exception):
        pass

    def default(signum, frame):  # (stands for SIGTERM's default action, which would end pytest itself)
        raise Killed

    monkeypatch.setattr(train_module, "run_lock", run_lock)
    sent.append(signal.SIGINT)
    out = tmp_path / "cli"
    assert cli.main(["train", "--images", str(images), "--token", "<zq>", "--init", "dog", "--out", str(out),
                     "--model", str(sd1_dir), "--steps", "2", "--batch", "2", "--sample-every", "0"]) == 0
    err = capsys.readouterr().err
    assert "SIGINT: the run is complete and saved, finishing up" in err and "interrupted" not in err
    assert not (out / LOCK_FILE).exists()
    sent.append(signal.SIGTERM)
    before = signal.signal(signal.SIGTERM, default)
    try:
        result = train(config(images, tmp_path / "api", steps=2), model=fresh_model(sd1_dir), progress=False)
        assert signal.getsignal(signal.SIGTERM) is default  # (put back once the run is done)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert result.steps == 2 and "SIGTERM: the run is complete and saved, finishing up" in capsys.readouterr().err


def _generate_config(model_dir, out, **kw):
    from textinv.config import GenerateConfig

    return GenerateConfig(**{"prompt": ["a dog"], "out": str(out), "n": 3, "steps": 2, "model": str(model_dir), **kw})


def test_a_generate_killed_mid_picture_leaves_it_under_no_name_and_the_next_run_clears_its_temporary(sd1_dir,
                                                                                                        tmp_path):
    """kill -9 while the second picture's PNG is half written: the first is whole, the second is no file of its
    name, and its temporary file, left behind, is removed by the next run into the folder (a user's hidden file
    and a live write's temporary are kept), which writes its own set beside the first's (suffix -2)."""
    from PIL import Image

    from textinv.generate import generate

    out = tmp_path / "r"
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\nfrom PIL import Image\n"
                             "real, calls = Image.Image.save, []\n"
                             "def save(self, fp, *a, **k):\n calls.append(fp)\n if len(calls) == 2:\n"
                             "  open(fp, 'wb').write(b'\\x89PNG half')\n  os.kill(os.getpid(), signal.SIGKILL)\n"
                             " return real(self, fp, *a, **k)\n"
                             "Image.Image.save = save\nfrom textinv import cli\n"
                             f"cli.main(['generate', '--model', {str(sd1_dir)!r}, '--prompt', 'a dog', '-n', '3', "
                             f"'--steps', '2', '--batch-size', '1', '--out', {str(out)!r}])"],
                            stderr=subprocess.DEVNULL)
    assert killed.returncode == -signal.SIGKILL
    first = (out / "000-a-dog-s0.png").read_bytes()
    assert Image.open(out / "000-a-dog-s0.png").text["seed"] == "0"
    [stale] = out.glob(".*.tmp")
    assert stale.name.startswith(".000-a-dog-s1.png.") and not (out / "000-a-dog-s1.png").exists()
    mine = out / ".000-a-dog-s1.png.abcdefgh.tmp.keep"
    mine.write_text("a user's")
    with textinv_io.atomic_path(out / "000-a-cat-s0.png") as live:  # (another run drawing into the folder)
        paths = generate(_generate_config(sd1_dir, out), progress=False)
        assert live.exists()
    assert [p.name for p in paths] == [f"000-a-dog-s{seed}-2.png" for seed in range(3)]
    assert not stale.exists() and mine.exists() and (out / "000-a-dog-s0.png").read_bytes() == first
    assert Image.open(out / "000-a-dog-s0-2.png").tobytes() == Image.open(out / "000-a-dog-s0.png").tobytes()


def test_an_out_folder_removed_while_drawing_is_not_made_again_and_the_error_says_so(sd1_dir, tmp_path,
                                                                                       monkeypatch):
    """A folder removed mid-run (or its disk unmounted) was made again for the next picture: on an unmounted disk,
    a folder on the disk below it. Said instead, with the count of pictures written, as a CLI error, not a
    traceback."""
    import shutil

    from textinv import generate as generate_module

    out = tmp_path / "r"
    real = generate_module._save_new

    def then_removed(*a, **k):
        written = real(*a, **k)
        shutil.rmtree(out)
        return written

    monkeypatch.setattr(generate_module, "_save_new", then_removed)
    with pytest.raises(ConfigError, match=rf"out='{re.escape(str(out))}' was removed .* after 1 picture had been "
                                          r"written to it; nothing more was written"):
        generate_module.generate(_generate_config(sd1_dir, out), progress=False)
    assert not out.exists()


def test_a_picture_that_cannot_be_written_is_a_cli_error_naming_it_and_the_pictures_kept(sd1_dir, tmp_path,
                                                                                           monkeypatch, capsys):
    """A folder made read-only mid-run (root ignores a chmod: the write's refusal stands in) was a traceback."""
    from textinv import generate as generate_module

    out = tmp_path / "r"
    real, calls = generate_module.atomic_path, []

    def refused_second(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(generate_module, "atomic_path", refused_second)
    assert cli.main(["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "3", "--steps", "2",
                     "--out", str(out)]) == 2
    said = capsys.readouterr().err
    assert f"--out {out}: cannot write 000-a-dog-s1.png (Permission denied); the 1 picture written before it is in " \
           f"{out}: make the folder writable, or choose another --out" in said and "Traceback" not in said
    # (only the second write was refused: the third picture, drawn in the same call, is written still)
    assert sorted(p.name for p in out.iterdir()) == ["000-a-dog-s0.png", "000-a-dog-s2.png"]


def _requeued_job_killed_at(monkeypatch, name: str, images, out, sd1_dir) -> None:
    """A --resume-or-start run of `out` killed (a SIGKILL: SystemExit 137, nothing of Python's clean-up) as it calls
    train's `name`; `name` is put back after it."""
    def killed(*a, **k):
        raise SystemExit(137)
    real = getattr(train_module, name)
    monkeypatch.setattr(train_module, name, killed)
    with pytest.raises(SystemExit):
        train(config(images, out, save_every=3, resume_or_start=True), model=fresh_model(sd1_dir), progress=False)
    monkeypatch.setattr(train_module, name, real)


def test_resume_or_start_starts_again_a_run_killed_before_its_first_checkpoint(sd1_dir, images, tmp_path,
                                                                               monkeypatch):
    """A requeued job killed before its first checkpoint left its folder (and lock) with config.yaml at most: the
    same command starts the run again, cleanly, to the result of one never killed, and does not refuse the folder
    as --resume ("holds no checkpoint") or a plain start ("not empty") would."""
    straight = train(config(images, tmp_path / "a", save_every=3), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("pid 1 on a node gone\n")  # (killed as the folder was made: its lock, held by none)

    _requeued_job_killed_at(monkeypatch, "_loop", images, out, sd1_dir)  # (config.yaml written, before any step)
    assert (out / "config.yaml").is_file() and not checkpoints(out)
    (out / "samples").mkdir()
    (out / "samples" / "step-000000.png").write_bytes(b"the first grid")
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        train(config(images, out, save_every=3, resume=True), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match="is not empty"):
        train(config(images, out, save_every=3), model=fresh_model(sd1_dir), progress=False)
    again = train(config(images, out, save_every=3, resume_or_start=True), model=fresh_model(sd1_dir),
                  progress=False)
    assert torch.equal(again.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert not (out / "samples").exists() and [p.name for p in checkpoints(out)] == ["step-000003.pt",
                                                                                      "step-000006.pt"]


def test_resume_or_start_keeps_a_run_whose_checkpoints_were_deleted(sd1_dir, images, tmp_path):
    """A finished run whose checkpoints were deleted to make room has config.yaml and no checkpoint, as a run killed
    before its first one has: but it holds what it learned, which starting again would delete; refused, naming the
    file and how to start from it."""
    out = tmp_path / "run"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    for path in checkpoints(out):
        path.unlink()
    learned = (out / "learned_embeds.safetensors").read_bytes()
    with pytest.raises(ConfigError) as e:
        train(config(images, out, steps=2, resume_or_start=True), model=fresh_model(sd1_dir), progress=False)
    assert str(e.value) == (f"resume_or_start=: {out} holds the finished run's learned vectors "
                            f"({out / 'learned_embeds.safetensors'}) but no checkpoint to resume from, and starting "
                            f"it again would delete them; start it again with overwrite=True, and init_embedding="
                            f"'{out / 'learned_embeds.safetensors'}' (in place of init=) to start from the vectors it "
                            f"saved, or give another out=")
    assert (out / "learned_embeds.safetensors").read_bytes() == learned


def test_resume_or_start_starts_again_a_run_killed_between_its_first_files_and_checkpoint(sd1_dir, images, tmp_path,
                                                                                         monkeypatch):
    """A save writes the embedding file, then the checkpoint: a kill between them, at the first save, left the run's
    vectors and no checkpoint, which is no finished run to keep (its step is short of the run's): started again, said
    in a warning, to the result of a run never killed."""
    straight = train(config(images, tmp_path / "a", save_every=3), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "run"

    _requeued_job_killed_at(monkeypatch, "save_checkpoint", images, out, sd1_dir)
    assert (out / "learned_embeds.safetensors").is_file() and not checkpoints(out)
    with pytest.warns(UserWarning, match=f"{out} holds the run's vectors of step 3 .* but no checkpoint to go on "
                                         f"from them .a kill as the run saved, or checkpoints deleted.: the run "
                                         f"starts again from its first step"):
        again = train(config(images, out, save_every=3, resume_or_start=True), model=fresh_model(sd1_dir),
                      progress=False)
    assert torch.equal(again.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_resume_after_a_picture_or_caption_changed_in_place_is_refused_naming_them(sd1_dir, images, tmp_path):
    """The names alone said nothing of a picture edited in place or a caption written, edited or deleted: the run
    went on with them, silently not ending where it would have. Each checkpoint keeps their bytes' digests now."""
    out = tmp_path / "run"
    (images / "img3.txt").write_text("a {} on a table")
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    kept = {name: (images / name).read_bytes() for name in ("img1.png", "img3.txt")}
    shutil.copy(images / "img0.png", images / "img1.png")
    (images / "img2.txt").write_text("a {} in a box")
    (images / "img3.txt").write_text("a {} under a table")
    with pytest.raises(ConfigError) as e:
        train(config(images, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert (f"the pictures in {images} changed since the run started (edited: img1.png; caption added: img2.png; "
            f"caption edited: img3.png); put the folder back as it was") in str(e.value), e.value
    (images / "img3.txt").unlink()
    (images / "img2.txt").unlink()
    with pytest.raises(ConfigError, match=r"\(edited: img1.png; caption deleted: img3.png\)"):
        train(config(images, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    for name, data in kept.items():
        (images / name).write_bytes(data)
    assert train(config(images, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False).steps == 4


def test_a_resume_from_the_command_line_takes_its_runs_thread_count(sd1_dir, images, tmp_path):
    """The line an interrupted run prints, `textinv train --out DIR --resume`, names no --threads: a run started
    with `--threads 1` went on at torch's own count (one per core), whose float sums are split otherwise, and did
    not end bit for bit where it would have. Left out, the count is the run's now, as its other settings are."""
    out = tmp_path / "run"
    torch.set_num_threads(2)  # (what --threads 2 sets; config.yaml's header records it)
    train(config(images, out, steps=2, save_every=2, model=str(sd1_dir)), progress=False)
    torch.set_num_threads(1)  # (another count, as a new process on another machine has it)
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert torch.get_num_threads() == 2
    assert "on cpu, torch.float32, 2 threads\n" in (out / "config.yaml").read_text()
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "6", "--threads", "1"]) == 0  # (given: its)
    assert "on cpu, torch.float32, 1 thread\n" in (out / "config.yaml").read_text()


def test_a_resume_on_a_machine_of_fewer_cores_keeps_its_own_thread_count(sd1_dir, images, tmp_path, monkeypatch):
    """A run of 2 threads moved to a machine of 1 core goes on at that machine's count: 2 threads there would
    crawl, and end otherwise anyway (another machine's kernels)."""
    out = tmp_path / "run"
    torch.set_num_threads(2)
    train(config(images, out, steps=2, save_every=2, model=str(sd1_dir)), progress=False)
    torch.set_num_threads(1)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 1)
    assert cli.main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 0
    assert torch.get_num_threads() == 1


def test_a_resume_without_an_out_is_told_to_give_one(capsys):
    """(Not a TypeError from looking for its run's thread count in no folder.)"""
    assert cli.main(["train", "--resume"]) == 2
    assert "--out is required" in capsys.readouterr().err
