"""--log-with: experiment trackers get what loss.csv and samples/ hold, a resumed run goes on in the same logs, and a
tracker that is not installed is refused before anything loads. TensorBoard's events are read back from the files."""

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboardX.proto.event_pb2 import Event  # (tensorboardX is in the test extra: these tests never skip)

from textinv.config import TrainConfig
from textinv.errors import ConfigError
from textinv.run_folder import checkpoints, read_loss_log
from textinv.train import TrainingInterrupted, train
from conftest import fresh_model, train_config


def config(images, out, **kw):
    return train_config(images, out, **{"log_with": "tensorboard", **kw})


def read_events(folder: Path) -> list[Event]:
    """The events TensorBoard reads from a run's folder: every events file in name (= time) order, each a TFRecord
    file (uint64 length, uint32 its CRC, the Event protobuf, uint32 its CRC), and, as TensorBoard's reader does
    (EventAccumulator's restart check), a writer's start at step S (SummaryWriter's purge_step) drops the events
    of step S and later read before it."""
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no events file in {folder}"
    kept: list[Event] = []
    for path in files:
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                kept = [e for e in kept if e.step < event.step]
            kept.append(event)
    return kept


def scalars(events: list[Event]) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} in the order read."""
    out: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for v in e.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
            elif v.HasField("tensor") and v.tensor.float_val:  # (the newer writers' scalar layout)
                out.setdefault(v.tag, []).append((e.step, v.tensor.float_val[0]))
    return out


def images_of(events: list[Event]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """{tag: [(step, (H, W, 3) pixels), ...]} of the image summaries, in the order read."""
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("image"):
                pixels = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)).convert("RGB"))
                out.setdefault(v.tag, []).append((e.step, pixels))
    return out


def test_tensorboard_gets_loss_csvs_values_at_its_steps_and_the_sample_grids(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    result = train(config(images, out, steps=6, sample_every=3, sample_steps=2), model=fresh_model(sd1_dir),
                   progress=False)
    events = read_events(out / "logs" / "run")  # (--log-dir's default, OUT/logs, then the run's folder name)
    logged = scalars(events)
    assert sorted(logged) == ["loss", "lr"]
    # the same steps and values as loss.csv (its 6 decimals) and the run's history (float32 in the event)
    csv = read_loss_log(out / "loss.csv")
    assert [s for s, _ in logged["loss"]] == [s for s, _ in csv] == [2, 4, 6]
    for (step, value), (_, written), (_, kept) in zip(logged["loss"], csv, result.losses, strict=True):
        assert value == np.float32(kept) and value == pytest.approx(written, abs=1e-6), step
    assert logged["lr"] == [(2, pytest.approx(5e-2)), (4, pytest.approx(5e-2)), (6, pytest.approx(5e-2))]
    # each grid, pixel for pixel the PNG in samples/, at its step
    grids = images_of(events)["samples"]
    assert [s for s, _ in grids] == [0, 3, 6]
    for step, pixels in grids:
        assert np.array_equal(pixels, np.asarray(Image.open(out / "samples" / f"step-{step:06d}.png").convert("RGB")))
    # logging changes nothing the run learns or writes
    plain = train(config(images, tmp_path / "plain", steps=6, sample_every=3, sample_steps=2, log_with=None),
                  model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(result.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    assert (out / "loss.csv").read_bytes() == (tmp_path / "plain" / "loss.csv").read_bytes()
    assert not (tmp_path / "plain" / "logs").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] == "tensorboard"


def test_several_concepts_each_log_their_own_loss_and_grid(sd1_dir, tmp_path):
    from conftest import write_images

    one, two = write_images(tmp_path / "one", n=2, seed=1), write_images(tmp_path / "two", n=2, seed=2)
    out = tmp_path / "pets"
    train(TrainConfig(concepts=[f"{one}=<jd>=dog", f"{two}=<jc>=cat"], out=str(out), steps=2, batch=1, save_every=0,
                      sample_every=2, sample_steps=2, log_every=1, log_with="tensorboard",
                      log_dir=str(tmp_path / "tb")),
          model=fresh_model(sd1_dir), progress=False)
    events = read_events(tmp_path / "tb" / "pets")  # (--log-dir given: its folder, then the run's name)
    logged = scalars(events)
    assert sorted(logged) == ["loss", "loss/jc", "loss/jd", "lr"]
    for token, tag in (("<jd>", "loss/jd"), ("<jc>", "loss/jc")):
        assert logged[tag] == [(s, pytest.approx(v, abs=1e-6)) for s, v in read_loss_log(out / "loss.csv", token)]
    assert {tag: [s for s, _ in grids] for tag, grids in images_of(events).items()} == {"samples/jd": [0, 2],
                                                                                         "samples/jc": [0, 2]}


def test_a_run_resumed_after_a_crash_logs_each_step_once(sd1_dir, images, tmp_path, monkeypatch):
    """A crash after step 6 whose checkpoint is step 4's: the tracker has steps 2, 4, 6 and the grid of step 4; the
    resumed run logs step 6 again, and TensorBoard reads each step once, with the resumed run's values. Both runs
    start their writers in the same second, as a quick restart may: each keeps a file of its own."""
    from types import SimpleNamespace

    import tensorboardX.event_file_writer
    from conftest import interrupt_loss_at

    monkeypatch.setattr(tensorboardX.event_file_writer, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    out = tmp_path / "run"
    run = dict(steps=8, save_every=4, sample_every=4, sample_steps=2, keep_checkpoints=2)
    undo = interrupt_loss_at(monkeypatch, 7)  # (a Ctrl-C in step 7: steps 2, 4, 6 logged, a checkpoint at 6)
    with pytest.raises(TrainingInterrupted):
        train(config(images, out, **run), model=fresh_model(sd1_dir), progress=False)
    undo()
    assert [s for s, _ in scalars(read_events(out / "logs" / "run"))["loss"]] == [2, 4, 6]
    checkpoints(out)[-1].unlink()  # the crash: step 6 logged, its checkpoint never written
    train(config(images, out, resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    events = read_events(out / "logs" / "run")
    logged = scalars(events)
    assert [s for s, _ in logged["loss"]] == [s for s, _ in logged["lr"]] == [2, 4, 6, 8]
    assert logged["loss"] == [(s, pytest.approx(v, abs=1e-6)) for s, v in read_loss_log(out / "loss.csv")]
    assert [s for s, _ in images_of(events)["samples"]] == [0, 4, 8]


def test_log_with_may_change_on_resume_and_is_recorded(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    run = dict(model=str(sd1_dir), save_every=2)
    train(config(images, out, steps=4, log_with=None, **run), model=fresh_model(sd1_dir), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] is None
    train(config(images, out, steps=8, resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] == "tensorboard"
    assert [s for s, _ in scalars(read_events(out / "logs" / "run"))["loss"]] == [6, 8]
    # the command line resumes with the recorded tracker, and --log-with none turns it off
    from textinv.cli import main

    assert main(["train", "--out", str(out), "--resume", "--steps", "10"]) == 0
    assert [s for s, _ in scalars(read_events(out / "logs" / "run"))["loss"]] == [6, 8, 10]
    assert main(["train", "--out", str(out), "--resume", "--steps", "12", "--log-with", "none"]) == 0
    assert [s for s, _ in scalars(read_events(out / "logs" / "run"))["loss"]] == [6, 8, 10]
    assert [s for s, _ in read_loss_log(out / "loss.csv")][-1] == 12
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] == "none"


def test_a_missing_tracker_package_is_refused_before_the_model_loads(images, tmp_path, monkeypatch):
    from textinv import train as train_module

    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for module in ("tensorboard", "tensorboardX"):  # (None in sys.modules: `import` fails, as when not installed)
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=r"log_with='tensorboard': the tensorboard package is not installed; "
                                          r"pip install tensorboard"):
        train(config(images, tmp_path / "run"), progress=False)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"log_with='wandb': the wandb package is not installed; pip install wandb"):
        train(config(images, tmp_path / "run", log_with="wandb"), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_whose_tracker_is_missing_is_told_to_turn_it_off_not_to_leave_out_log_with(images, tmp_path,
                                                                                           monkeypatch):
    """A resumed run takes --log-with from its config.yaml, so "leave out --log-with" would not help one resumed in
    another environment without the package: --log-with none does."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"log_with='wandb': the wandb package is not installed; pip install wandb, "
                                          r"or resume with log_with='none' \(the run's config.yaml names wandb\)"):
        config(images, tmp_path / "run", log_with="wandb", resume=True).validate()
    from accelerate import tracking

    monkeypatch.delitem(tracking.LOGGER_TYPE_TO_CLASS, "tensorboard")
    with pytest.raises(ConfigError, match=r"pip install -U accelerate, or resume with log_with='none'"):
        config(images, tmp_path / "run", resume=True).validate()


@pytest.mark.parametrize("log_with, message", [
    ("tensorbord", r"'tensorbord' is no tracker textinv knows; give one or more of: tensorboard, wandb, comet_ml"),
    ("all", r"'all' is not taken: name them"),
    (" , ", r"names no tracker"),
])
def test_an_unknown_tracker_is_refused_with_the_list(log_with, message, images, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config(images, tmp_path / "run", log_with=log_with).validate()


def test_a_log_dir_without_a_tracker_is_refused(images, tmp_path):
    with pytest.raises(ConfigError, match="log_dir=.* add log_with='tensorboard'"):
        config(images, tmp_path / "run", log_with=None, log_dir=str(tmp_path / "tb")).validate()
    config(images, tmp_path / "run", log_with="none", log_dir=str(tmp_path / "tb")).validate()  # (a resume's off)


def test_overwrite_deletes_the_previous_runs_logs_in_out(sd1_dir, images, tmp_path):
    out = tmp_path / "run"
    train(config(images, out, steps=2), model=fresh_model(sd1_dir), progress=False)
    (out / "logs" / "mine.txt").write_text("a user's file")
    [first] = (out / "logs" / "run").glob("events.*")
    old = first.rename(first.with_name("events.out.tfevents.0000000001.old"))  # (the new run's may take its name)
    train(config(images, out, steps=2, overwrite=True), model=fresh_model(sd1_dir), progress=False)
    assert not old.exists() and (out / "logs" / "mine.txt").exists()
    assert len(list((out / "logs" / "run").glob("events.*"))) == 1
    (out / "logs" / "mine.txt").unlink()
    train(config(images, out, steps=2, overwrite=True, log_with=None), model=fresh_model(sd1_dir), progress=False)
    assert not (out / "logs").exists()  # (the folder it made, left empty, goes too)


def test_the_trackers_leave_accelerates_global_state_to_the_caller(sd1_dir, images, tmp_path):
    """train() called from a program that uses accelerate itself: an Accelerator made before it (at bf16, say) does
    not stop the trackers, and one made after it may choose its own mixed precision. (accelerate's AcceleratorState is
    one per process and refuses a second precision: the trackers must not make one.)"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # (a test before may have left one)
    try:
        train(config(images, tmp_path / "a", steps=2), model=fresh_model(sd1_dir), progress=False)
        Accelerator(cpu=True, mixed_precision="bf16")  # (the caller's own, after textinv's run)
        train(config(images, tmp_path / "b", steps=2), model=fresh_model(sd1_dir), progress=False)
        assert [s for s, _ in scalars(read_events(tmp_path / "b" / "logs" / "b"))["loss"]] == [2]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_tracker_the_installed_accelerate_lacks_is_refused_before_the_model_loads(images, tmp_path, monkeypatch):
    """accelerate>=1.0 is all textinv requires, and its trackers came over its versions (swanlab, trackio later):
    one the installed accelerate does not have is refused with the upgrade, not found missing after the model load."""
    from accelerate import tracking

    monkeypatch.delitem(tracking.LOGGER_TYPE_TO_CLASS, "tensorboard")  # (as in an accelerate without it)
    with pytest.raises(ConfigError, match=r"log_with='tensorboard': the installed accelerate \(.*\) has no tensorboard "
                                          r"tracker yet; pip install -U accelerate"):
        config(images, tmp_path / "run").validate()


def test_overwrite_deletes_the_logs_of_a_run_whose_logging_was_turned_off_on_resume(sd1_dir, images, tmp_path):
    """config.yaml records --log-with none after a resume turned logging off; the events its first part wrote are
    still the old run's, and go with it."""
    out = tmp_path / "run"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    train(config(images, out, steps=4, save_every=2, resume=True, log_with="none"), model=fresh_model(sd1_dir),
          progress=False)
    assert list((out / "logs" / "run").glob("events.*"))
    train(config(images, out, steps=2, overwrite=True, log_with=None), model=fresh_model(sd1_dir), progress=False)
    assert not (out / "logs").exists()


def test_a_tracker_that_cannot_start_is_a_one_line_error_with_the_fix(sd1_dir, images, tmp_path, monkeypatch,
                                                                      capsys):
    """wandb not logged in, run without a terminal to ask in, raises as its tracker starts: that was a traceback after
    the model had loaded, and the folder it left was refused without a word about why. It is an error naming the
    tracker, its message and what to do."""
    from accelerate.tracking import TensorBoardTracker

    from textinv.cli import main

    def cannot_start(self, *args, **kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setattr(TensorBoardTracker, "__init__", cannot_start)
    out = tmp_path / "run"
    args = ["train", "--images", str(images), "--token", "<zq>", "--model", str(sd1_dir), "--out", str(out),
            "--steps", "2", "--save-every", "1", "--sample-every", "0", "--log-with", "tensorboard"]
    assert main(args) == 2
    assert ("error: --log-with tensorboard: the tensorboard tracker could not start (RuntimeError: api_key not "
            "configured (no-tty)); fix that, or leave out --log-with; the run took no step, so start it again with "
            "--overwrite") in capsys.readouterr().err
    monkeypatch.undo()
    assert main(args + ["--overwrite"]) == 0  # (as it says)
    monkeypatch.setattr(TensorBoardTracker, "__init__", cannot_start)
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 2
    assert "could not start (RuntimeError: api_key not configured (no-tty)); fix that, or resume with --log-with " \
           "none (the run's config.yaml names tensorboard)\n" in capsys.readouterr().err


def test_a_tracker_that_cannot_close_is_warned_about_and_hides_no_error(sd1_dir, images, tmp_path, monkeypatch):
    """A tracker's finish runs as the run ends, also when it ends in an error or Ctrl-C; one that failed there (wandb
    without its network) replaced that error with its own, or failed a run whose files were saved. It is a warning
    now, and the other trackers still close."""
    from accelerate.tracking import TensorBoardTracker
    from conftest import interrupt_loss_at

    def cannot_close(self):
        raise ConnectionError("no network")

    monkeypatch.setattr(TensorBoardTracker, "finish", cannot_close)
    with pytest.warns(UserWarning, match=r"the tensorboard tracker could not be closed \(ConnectionError: no network"):
        result = train(config(images, tmp_path / "done"), model=fresh_model(sd1_dir), progress=False)
    assert result.steps == 6 and (tmp_path / "done" / "loss.csv").is_file()
    undo = interrupt_loss_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted), pytest.warns(UserWarning, match="could not be closed"):
        train(config(images, tmp_path / "stopped"), model=fresh_model(sd1_dir), progress=False)
    undo()


def test_tensorboard_gets_the_validation_loss_of_validation_csv(sd1_dir, tmp_path):
    from conftest import write_images

    one, two = write_images(tmp_path / "one", n=2, seed=1), write_images(tmp_path / "two", n=2, seed=2)
    out = tmp_path / "pets"
    result = train(TrainConfig(concepts=[f"{one}=<jd>=dog", f"{two}=<jc>=cat"], out=str(out), steps=2, batch=1,
                               save_every=0, sample_every=0, log_every=1, validate_every=1, log_with="tensorboard"),
                   model=fresh_model(sd1_dir), progress=False)
    logged = scalars(read_events(out / "logs" / "pets"))
    assert logged["validation_loss"] == [(s, pytest.approx(v, abs=1e-6)) for s, v in result.validation]
    for token, tag in (("<jd>", "validation_loss/jd"), ("<jc>", "validation_loss/jc")):
        rows = read_loss_log(out / "validation.csv", token)
        assert [s for s, _ in rows] == [0, 1, 2] and logged[tag] == [(s, pytest.approx(v, abs=1e-6)) for s, v in rows]
