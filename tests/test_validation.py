"""The validation loss: pictures held out of training (--validation-split) and the loss at draws fixed for the run."""

import csv
import shutil

import pytest
import torch
from conftest import fresh_model, interrupt_loss_at, train_config, write_images

from textinv.config import TrainConfig
from textinv.errors import ConfigError, DataError
from textinv.train import TrainingInterrupted, train
from textinv.validation import held_out, held_out_by_subset


def vectors(result):
    return next(iter(result.embedding.vectors.values()))


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_split_holds_out_a_share_at_least_one_and_never_all():
    assert len(held_out(5, 0.2, 0)) == 1 and len(held_out(10, 0.25, 0)) == 2  # (round(2.5): 2)
    assert len(held_out(4, 0.01, 0)) == 1  # (at least one)
    assert len(held_out(2, 0.9, 0)) == 1  # (one left to train on)
    assert held_out(8, 0.25, 3) == held_out(8, 0.25, 3)
    assert len({tuple(held_out(8, 0.25, seed)) for seed in range(6)}) > 1  # (the seed chooses)


def test_validation_leaves_training_as_it_was_and_scores_fixed_draws(sd1_dir, images, tmp_path):
    """Scoring the validation loss draws nothing from the training's generators: the vectors and losses are those
    of a run without it. Its draws are fixed: at a rate of 0 every step's validation loss is the same number, and
    with a moving vector it changes."""
    plain = train(train_config(images, tmp_path / "plain"), model=fresh_model(sd1_dir), progress=False)
    scored = train(train_config(images, tmp_path / "v", validate_every=2), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(vectors(scored), vectors(plain)) and scored.losses == plain.losses
    assert [s for s, _ in scored.validation] == [0, 2, 4, 6]
    assert [int(r["step"]) for r in rows(tmp_path / "v" / "validation.csv")] == [0, 2, 4, 6]
    assert len({v for _, v in scored.validation}) == 4  # (the vectors moved)
    again = train(train_config(images, tmp_path / "again", validate_every=2), model=fresh_model(sd1_dir),
                  progress=False)
    assert again.validation == scored.validation
    still = train(train_config(images, tmp_path / "still", validate_every=3, lr=1e-30, weight_decay=0.0),
                  model=fresh_model(sd1_dir), progress=False)
    assert [s for s, _ in still.validation] == [0, 3, 6] and len({v for _, v in still.validation}) == 1
    reseeded = train(train_config(images, tmp_path / "seed", validate_every=3, validation_seed=7),
                     model=fresh_model(sd1_dir), progress=False)
    assert reseeded.validation[0][1] != still.validation[0][1]  # (other draws of the same starting vectors)


def test_the_pictures_held_out_are_not_trained_on(sd1_dir, tmp_path, capsys):
    """A run holding out one picture of four learns what a run on the other three learns, and prints which."""
    folder = write_images(tmp_path / "four", n=4)
    (out,) = held_out(4, 0.25, 0)
    three = tmp_path / "three"
    three.mkdir()
    for k in range(4):
        if k != out:
            shutil.copy(folder / f"img{k}.png", three / f"img{k}.png")
    split = train(train_config(folder, tmp_path / "split", validation_split=0.25), model=fresh_model(sd1_dir))
    assert f"held out for the validation loss: img{out}.png" in capsys.readouterr().out
    alone = train(train_config(three, tmp_path / "alone"), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(vectors(split), vectors(alone))
    # (--save-every 0: the end alone, beside the start)
    assert [s for s, _ in split.validation] == [0, 6]


def test_the_run_names_the_step_with_the_lowest_validation_loss(sd1_dir, images, tmp_path, capsys):
    result = train(train_config(images, tmp_path / "run", steps=4, save_every=2, validation_split=0.25),
                   model=fresh_model(sd1_dir))
    step, loss = min(result.validation, key=lambda entry: entry[1])
    assert [s for s, _ in result.validation] == [0, 2, 4]  # (--save-every's steps by default)
    assert f"lowest validation loss {loss:.6f} at step {step} (validation.csv)" in capsys.readouterr().out


def test_a_resumed_run_scores_what_the_uninterrupted_one_scores(sd1_dir, images, tmp_path, monkeypatch):
    settings = dict(steps=6, save_every=2, validation_split=0.25, validate_every=1)
    straight = train(train_config(images, tmp_path / "a", **settings), model=fresh_model(sd1_dir), progress=False)
    undo = interrupt_loss_at(monkeypatch, 14)  # (in step 4's validation or step: the checkpoint is step 2's)
    with pytest.raises(TrainingInterrupted):
        train(train_config(images, tmp_path / "b", **settings), model=fresh_model(sd1_dir), progress=False)
    undo()
    resumed = train(train_config(images, tmp_path / "b", **settings, resume=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert resumed.validation == straight.validation and torch.equal(vectors(resumed), vectors(straight))
    assert rows(tmp_path / "b" / "validation.csv") == rows(tmp_path / "a" / "validation.csv")


def test_several_concepts_each_get_a_column(sd1_dir, tmp_path):
    a, b = write_images(tmp_path / "a", n=3), write_images(tmp_path / "b", n=3, seed=1)
    result = train(TrainConfig(concepts=[f"{a}=<a>=dog", f"{b}=<b>=cat"], out=str(tmp_path / "run"), steps=2,
                               batch=2, save_every=0, sample_every=0, validate_every=2), model=fresh_model(sd1_dir),
                   progress=False)
    table = rows(tmp_path / "run" / "validation.csv")
    assert list(table[0]) == ["step", "validation_loss", "<a>", "<b>"]
    for row, (step, total) in zip(table, result.validation):
        assert float(row["<a>"]) + float(row["<b>"]) == pytest.approx(total, abs=2e-6)


@pytest.mark.parametrize("settings, message", [
    (dict(validation_split=1.0), r"validation_split= is the share .* in \[0, 1\)"),
    (dict(validation_split=0.2, validate_every=0), r"validate_every=0 with validation_split=0.2"),
    (dict(validation_seed=3), r"validation_seed= seeds the validation loss, which is off"),
    (dict(validate_every=2, validation_draws=0), r"validation_draws= must be a whole number >= 1"),
])
def test_bad_validation_settings_are_refused(settings, message, images, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train_config(images, tmp_path / "run", **settings).validate()


def test_a_split_of_a_single_picture_is_refused_before_the_model_loads(tmp_path):
    folder = write_images(tmp_path / "one", n=1)
    with pytest.raises(ConfigError, match=r"holds one picture .* leave out validation_split="):
        train(train_config(folder, tmp_path / "run", validation_split=0.5, model="no/such-model"), progress=False)


def test_kohyas_dataset_config_gives_the_split_and_its_seed(tmp_path):
    from textinv.kohya import apply_dataset_config

    folder = write_images(tmp_path / "a", n=4)
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nvalidation_split = 0.25\nvalidation_seed = 3\n[[datasets]]\n'
                       f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    config = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert (config.validation_split, config.validation_seed, config.validating_every) == (0.25, 3, 500)


def test_a_folder_of_validation_pictures_is_scored_and_not_trained_on(sd1_dir, images, tmp_path):
    kept = write_images(tmp_path / "kept", n=2, seed=5)
    plain = train(train_config(images, tmp_path / "plain", validate_every=3), model=fresh_model(sd1_dir),
                  progress=False)
    held = train(train_config(images, tmp_path / "held", validation_images=str(kept), save_every=3),
                 model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(vectors(held), vectors(plain))  # (the training pictures are --images' alone)
    assert [s for s, _ in held.validation] == [0, 3, 6]  # (--save-every's steps)
    assert held.validation[0][1] != plain.validation[0][1]  # (other pictures scored)


def test_validation_pictures_that_are_trained_on_too_are_refused(images, tmp_path):
    with pytest.raises(ConfigError, match=r"img0.png, img1.png, img2.png, img3.png are trained on too"):
        train(train_config(images, tmp_path / "run", validation_images=str(images), model="no/such-model"),
              progress=False)


@pytest.mark.parametrize("make, message", [
    (lambda folder: None, r"validation_images=\S+kept': the image folder \S+kept does not exist"),
    (lambda folder: folder.mkdir(), r"validation_images=\S+kept': no images found"),
    (lambda folder: (write_images(folder, n=2, seed=5) / "img0.txt").write_bytes(b"\xff a dog"),
     r"validation_images=\S+kept': the caption file \S+img0.txt is not UTF-8"),
])
def test_a_bad_folder_of_validation_pictures_is_named_before_the_model_loads(make, message, images, tmp_path):
    make(tmp_path / "kept")
    with pytest.raises(DataError, match=message):
        train(train_config(images, tmp_path / "run", validation_images=str(tmp_path / "kept"), model="no/such-model"),
              progress=False)


@pytest.mark.parametrize("settings, message", [
    (dict(validation_split=0.2), r"validation_images= and validation_split= both"),
    (dict(validate_every=0), r"validate_every=0 with validation_images="),
])
def test_validation_pictures_with_a_split_or_no_scores_are_refused(settings, message, images, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train_config(images, tmp_path / "run", validation_images=str(images), **settings).validate()
    with pytest.raises(ConfigError, match=r"with several concepts= use validation_split="):
        TrainConfig(concepts=[f"{images}=<a>=dog", f"{images}=<b>=cat"], out="o",
                    validation_images=str(images)).validate()


def test_a_resume_may_score_more_or_less_often(sd1_dir, images, tmp_path):
    settings = dict(steps=4, save_every=2, validation_split=0.25)
    train(train_config(images, tmp_path / "run", **settings), model=fresh_model(sd1_dir), progress=False)
    more = train(train_config(images, tmp_path / "run", **{**settings, "steps": 6}, validate_every=1, resume=True),
                 model=fresh_model(sd1_dir), progress=False)
    assert [s for s, _ in more.validation] == [0, 2, 4, 5, 6]


def test_a_resume_after_a_picture_was_added_names_that_picture_not_one_the_split_moved(sd1_dir, tmp_path):
    """A picture added to the folder changes which pictures the split holds out: the refusal names the new picture,
    not a training picture the split now holds out as missing, nor the one it held out as new."""
    folder = write_images(tmp_path / "five", n=5)
    settings = dict(steps=2, save_every=2, validation_split=0.2)
    train(train_config(folder, tmp_path / "run", **settings), model=fresh_model(sd1_dir), progress=False)
    shutil.copy(write_images(tmp_path / "six", n=6) / "img5.png", folder / "img5.png")
    assert held_out(5, 0.2, 0) != held_out(6, 0.2, 0)  # (the split moves: what the message must see through)
    with pytest.raises(ConfigError, match=r"changed since the run started \(new: img5.png\)"):
        train(train_config(folder, tmp_path / "run", **{**settings, "steps": 4}, resume=True),
              model=fresh_model(sd1_dir), progress=False)


def test_a_resume_whose_validation_pictures_changed_says_so(sd1_dir, images, tmp_path):
    kept = write_images(tmp_path / "kept", n=2, seed=5)
    settings = dict(steps=4, save_every=2, validation_images=str(kept))
    train(train_config(images, tmp_path / "run", **settings), model=fresh_model(sd1_dir), progress=False)
    (kept / "img1.png").unlink()
    with pytest.warns(UserWarning, match=r"other pictures than when the run began \(missing now: img1.png\): "
                                         r"validation.csv scores those before step 4"):
        train(train_config(images, tmp_path / "run", **{**settings, "steps": 6}, resume=True),
              model=fresh_model(sd1_dir), progress=False)


def test_a_resume_takes_the_validation_pictures_where_they_are_now(sd1_dir, images, tmp_path, capsys):
    """As --images may move between a run and its resume, so may --validation-images (its pictures, by name, must
    be the same, else a warning says so)."""
    kept = write_images(tmp_path / "kept", n=2, seed=5)
    settings = dict(steps=4, save_every=2)
    straight = train(train_config(images, tmp_path / "a", **{**settings, "steps": 6}, validation_images=str(kept)),
                     model=fresh_model(sd1_dir), progress=False)
    train(train_config(images, tmp_path / "b", **settings, validation_images=str(kept)), model=fresh_model(sd1_dir),
          progress=False)
    moved = shutil.move(str(kept), str(tmp_path / "elsewhere"))
    resumed = train(train_config(images, tmp_path / "b", **{**settings, "steps": 6}, validation_images=moved,
                                 resume=True), model=fresh_model(sd1_dir))
    assert resumed.validation == straight.validation
    assert f"--validation-images now {moved} (was {kept})" in capsys.readouterr().out


def test_the_end_names_the_best_steps_embedding_file_where_one_was_kept(tmp_path):
    from textinv.validation import _lowest_validation

    def files(at):
        return [tmp_path / f"e-{at}.safetensors"]
    files(2)[0].write_bytes(b"x")
    assert _lowest_validation([(0, 0.3), (2, 0.1), (4, 0.2)], 4, files).endswith(
        f"at step 2 (validation.csv); that step's embedding: {files(2)[0]}")
    assert _lowest_validation([(0, 0.3), (3, 0.1), (4, 0.2)], 4, files).endswith(
        "at step 3 (validation.csv); no embedding of that step is kept (--save-every N keeps one every N steps)")
    assert _lowest_validation([(0, 0.3), (4, 0.2)], 4, files).endswith("the embedding saved")
    assert _lowest_validation([(0, 0.1), (4, 0.2)], 4, files).endswith("the starting vectors: training has not "
                                                                        "lowered it")
    assert _lowest_validation([(0, 0.3), (4, 0.2)], 4, lambda at: files(at) * 2).startswith(
        "lowest validation loss (summed over the concepts) 0.200000 at step 4")


def test_validation_pictures_take_the_subsets_caption_extension(tmp_path):
    """With kohya's subsets the captions are NAME + their caption_extension: the validation folder's are read so too
    (a caption file that is not UTF-8 under that name is found, before the model loads)."""
    from textinv.kohya import apply_dataset_config

    train_folder, kept = write_images(tmp_path / "a", n=3), write_images(tmp_path / "kept", n=1, seed=5)
    (kept / "img0.cap").write_bytes(b"\xff a dog")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{train_folder}"\ncaption_extension = ".cap"\n')
    config = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out=str(tmp_path / "run"),
                                              validation_images=str(kept), model="no/such-model"))
    with pytest.raises(DataError, match=r"validation_images=\S+kept': the caption file \S+img0.cap is not UTF-8"):
        train(config, progress=False)


def test_kohya_subsets_hold_out_each_its_own_share_as_kohya_counts_it():
    """kohya's split_train_val runs on each subset alone: round(share x its pictures) of each, Python's rounding
    (half to even), as textinv's; pooled, [3, 3] at 0.5 held out round(3.0) = 3, kohya 2 + 2; [5, 5] at 0.1 one,
    kohya none. Each subset keeps one to train on, as kohya's ceil((1 - share) x n) does."""
    assert len(held_out_by_subset([3, 3], 0.5, 0)) == 4 and len(held_out(6, 0.5, 0)) == 3
    assert held_out_by_subset([5, 5], 0.1, 0) == [] and len(held_out(10, 0.1, 0)) == 1
    assert len(held_out_by_subset([10, 4], 0.25, 0)) == 2 + 1  # (round(2.5) = 2, round(1.0) = 1)
    out = held_out_by_subset([3, 2, 1], 0.6, 0)  # (round(1.8) = 2, round(1.2) = 1, round(0.6) = 1: all but one: 0)
    assert len([k for k in out if k < 3]) == 2 and len([k for k in out if 3 <= k < 5]) == 1 and 5 not in out
    assert held_out_by_subset([4, 4], 0.5, 3) == held_out_by_subset([4, 4], 0.5, 3)
    assert len({tuple(held_out_by_subset([4, 4], 0.5, seed)) for seed in range(6)}) > 1  # (the seed chooses)


def _two_subsets_half_held_out(tmp_path):
    """A kohya dataset config (d.toml) of two subsets of 3 pictures each (folders a and b), validation_split 0.5."""
    a, b = write_images(tmp_path / "a", n=3), write_images(tmp_path / "b", n=3, seed=1)
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[general]\nvalidation_split = 0.5\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{a}"\n'
                       f'[[datasets.subsets]]\nimage_dir = "{b}"\n')
    return dataset


def test_a_dataset_configs_split_is_kohyas_count_and_one_holding_out_none_is_refused(sd1_dir, tmp_path, capsys):
    dataset = _two_subsets_half_held_out(tmp_path)
    run = dict(dataset_config=str(dataset), token="<zq>", init="dog", steps=2, batch=2, save_every=0,
               sample_every=0)
    train(TrainConfig(out=str(tmp_path / "o"), **run), model=fresh_model(sd1_dir))
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("held out for"))
    assert said.count(", ") + 1 == 4  # (2 of each subset of 3; pooled, round(0.5 x 6) = 3)
    dataset.write_text(dataset.read_text().replace("0.5", "0.1"))
    with pytest.raises(ConfigError, match=r"validation_split=0.1 holds out none of the kohya subsets .*'s "
                                          r"pictures, counted as kohya counts them \(round\(0.1 x each subset's "
                                          r"pictures, 3, 3\), .*give a share above 0.166667"):
        train(TrainConfig(out=str(tmp_path / "p"), **run), model=fresh_model(sd1_dir))


def test_a_subsets_run_started_with_the_pooled_split_resumes_with_the_pictures_it_held_out(sd1_dir, tmp_path,
                                                                                          monkeypatch):
    """A run of several kohya subsets started before each subset held out its own share (one share of all their
    pictures together) goes on with the pictures its checkpoint held out: it was refused as if the folders had
    changed ("other pictures held out"), and putting them back, as that said, could not help."""
    from textinv import validation

    dataset = _two_subsets_half_held_out(tmp_path)
    run = dict(dataset_config=str(dataset), token="<zq>", init="dog", batch=2, save_every=2, sample_every=0,
               validate_every=2)
    real, pooled = validation.split_pictures, []
    with monkeypatch.context() as m:  # (the count before: round(0.5 x 6) = 3 of the six, not 2 of each subset)
        m.setattr(validation, "split_pictures", lambda p, share, seed, **_: pooled.append(p) or real(p, share, seed))
        straight = train(TrainConfig(out=str(tmp_path / "s"), steps=4, **run), model=fresh_model(sd1_dir),
                         progress=False)
        train(TrainConfig(out=str(tmp_path / "r"), steps=2, **run), model=fresh_model(sd1_dir), progress=False)
    assert len(pooled) == 2  # (the two runs started with the pooled split: the stand-in is where it is looked up)
    resumed = train(TrainConfig(out=str(tmp_path / "r"), steps=4, resume=True, **run), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.validation == straight.validation


def test_kohyas_folder_layout_holds_out_each_folders_own_share_as_its_subsets_do(sd1_dir, tmp_path, capsys):
    """kohya makes each N_words folder of its layout a subset of its own, and splits each subset alone; the folders
    were pooled: round(0.5 x 6) = 3 held out, where kohya holds out 2 of each folder of 3."""
    folder = tmp_path / "img"
    write_images(folder / "1_dog", n=3)
    write_images(folder / "2_toy", n=3, seed=1)
    train(train_config(folder, tmp_path / "o", steps=1, validation_split=0.5), model=fresh_model(sd1_dir))
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("held out for"))
    held = said.split(": ", 1)[1].split(", ")
    assert len(held) == 4 and sum(name.startswith("1_dog/") for name in held) == 2
