"""kohya's dataset config (`--dataset-config FILE.toml`): its subsets train what the same kohya folders train, keys
default as kohya's do, and every key textinv cannot train as it is is refused by name, saying what to do."""

import json
import math
import re
import shutil
import warnings

import pytest
import torch
import yaml
from conftest import recorded_caption_banks, write_images

from textinv.cli import main
from textinv.config import TrainConfig, build, config_file_settings
from textinv.data import CaptionLinesWarning, SkippedFilesWarning
from textinv.errors import ConfigError, DataError
from textinv.kohya import AT_DEFAULT, DatasetConfigWarning, apply_dataset_config
from textinv.train import train


def toml(path, text):
    path.write_text(text)
    return path


def pictures(tmp_path):
    """Two folders of arbitrary names: `my dog` (2 pictures, .txt captions) and `close ups` (1 picture, a .caption
    caption and a .txt decoy its subset's caption_extension leaves unread)."""
    a, b = write_images(tmp_path / "my dog", n=2, seed=1), write_images(tmp_path / "close ups", n=1, seed=2)
    (a / "img0.txt").write_text("a photo of {} on grass")
    (a / "img1.txt").write_text("{}, sitting")
    (b / "img0.caption").write_text("{}, close up")
    (b / "img0.txt").write_text("a decoy {} caption")
    return a, b


TWO_SUBSETS = """
[general]
flip_aug = false
caption_extension = ".txt"

[[datasets]]
resolution = 16
batch_size = 2

  [[datasets.subsets]]
  image_dir = "{a}"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "{b}"
  num_repeats = 3
  caption_extension = ".caption"
"""


def test_two_subsets_train_what_the_same_kohya_folders_train_and_resume_exactly(sd1_dir, tmp_path, capsys):
    """Subsets of 10 and 3 repeats with .txt and .caption captions: the run's sampler table, captions and settings
    are those of `img/10_a/`, `img/3_b/` (kohya's folder layout) with --batch 2 --no-flip --resolution 16, so the
    two runs learn the same vectors; config.yaml records what the file gave, and the run resumes from it alone to
    the uninterrupted run's result."""
    a, b = pictures(tmp_path)
    img = tmp_path / "img"
    shutil.copytree(a, img / "10_a")
    (img / "3_b").mkdir()
    for name in ("img0.png", "img0.caption"):  # (not the decoy: a kohya folder reads .txt first)
        shutil.copy(b / name, img / "3_b" / name)
    dataset = toml(tmp_path / "dataset.toml", TWO_SUBSETS.format(a=a, b=b))
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=4, save_every=2, sample_every=0, log_every=2,
                  lr=5e-2)
    folders = train(TrainConfig(images=str(img), batch=2, flip=False, resolution=16, out=str(tmp_path / "f"),
                                **common), progress=False)
    read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common))
    assert f"{dataset}: 2 kohya subsets: my dog (2 pictures x10, captions .txt), close ups (1 x3, captions " \
           ".caption)" in capsys.readouterr().out
    assert torch.equal(read.embedding.vectors["text_encoder"], folders.embedding.vectors["text_encoder"])
    assert read.losses == folders.losses
    state = torch.load(tmp_path / "d" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert torch.bincount(state["samplers"][0]["order"]).tolist() == [10, 10, 3]
    assert state["pictures"] == [["1/img0.png", "1/img1.png", "2/img0.png"]]  # (each subset's number and name)
    text = (tmp_path / "d" / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["subsets"] == [{"images": str(a), "repeats": 10, "caption_extension": ".txt"},
                                {"images": str(b), "repeats": 3, "caption_extension": ".caption"}]
    assert (saved["dataset_config"], saved["batch"], saved["flip"], saved["resolution"]) == (None, 2, False, 16)
    assert f"# subsets and settings as read from kohya's dataset config {dataset}\n" in text

    # stopped at step 2, resumed from its folder alone (the file edited meanwhile: the record is what was read)
    main(["train", "--dataset-config", str(dataset), "--out", str(tmp_path / "r"), "--steps", "2",
          *[f"--{k.replace('_', '-')}={v}" for k, v in common.items() if k != "steps"]])
    toml(dataset, TWO_SUBSETS.format(a=a, b=b).replace("num_repeats = 3", "num_repeats = 5"))
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "4"]) == 0
    resumed = torch.load(tmp_path / "r" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert torch.equal(resumed["vectors"][0], state["vectors"][0])
    assert f"kohya's dataset config {dataset}" in (tmp_path / "r" / "config.yaml").read_text()  # (the note kept)
    # given the file again, its edit is caught before the model loads
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "6", "--dataset-config",
                 str(dataset)]) == 2
    assert f"cannot resume {tmp_path / 'r'} with --dataset-config {dataset}: its subsets (" \
           f"{a} x10 .txt, {b} x5 .caption) are not the run's" in capsys.readouterr().err


def test_subset_keys_default_from_their_dataset_then_general_then_textinvs_settings(tmp_path):
    """As kohya's BlueprintGenerator: a subset's key is its own, else its dataset's, else [general]'s, else the
    command line's (here textinv's settings); a dataset's key is its own, else [general]'s."""
    folders = [write_images(tmp_path / name, n=1) for name in ("a", "b", "c", "d")]
    dataset = toml(tmp_path / "d.toml", f"""
[general]
num_repeats = 5
caption_extension = ".txt"
batch_size = 3
shuffle_caption = true

[[datasets]]
num_repeats = 7
caption_extension = ".tags"
  [[datasets.subsets]]
  image_dir = "{folders[0]}"
  [[datasets.subsets]]
  image_dir = "{folders[1]}"
  num_repeats = 2

[[datasets]]
batch_size = 3
  [[datasets.subsets]]
  image_dir = "{folders[2]}"
  [[datasets.subsets]]
  image_dir = "{folders[3]}"
  caption_extension = ".caption"
""")
    read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out=str(tmp_path / "o")))
    assert [(s["repeats"], s["caption_extension"]) for s in read.subsets] == [(7, ".tags"), (2, ".tags"),
                                                                             (5, ".txt"), (5, ".caption")]
    assert (read.batch, read.shuffle_tags, read.dataset_config) == (3, True, None)
    # what the file leaves out is textinv's: --keep-tags given, the flips (textinv's default) as they are
    given = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o", keep_tags=2))
    assert (given.keep_tags, given.flip, given.buckets) == (2, None, False)
    # a flag that says what the file says is no conflict (a resume's saved settings do); another value is
    assert apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o", batch=3)).batch == 3
    with pytest.raises(ConfigError, match=rf"batch=5 and {re.escape(str(dataset))}'s batch_size = 3 "
                                          r"\(\[general\]\) both give the batch: leave one out"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o", batch=5))
    # a subset left to the command line takes textinv's setting: here --flip (on) beside a subset's false
    text = dataset.read_text().replace('num_repeats = 2\n', 'num_repeats = 2\n  flip_aug = false\n')
    with pytest.raises(ConfigError, match=r"\[\[datasets\]\] 1, \[\[datasets.subsets\]\] 1 gives no flip_aug, so it "
                                          r"takes textinv's flip= \(on\), where \[\[datasets\]\] 1, "
                                          r"\[\[datasets.subsets\]\] 2 gives false; .* give flip_aug in \[general\]"):
        apply_dataset_config(TrainConfig(dataset_config=str(toml(dataset, text)), token="<t>", out="o"))
    # and two subsets that differ are refused
    text = text.replace('[[datasets]]\nbatch_size = 3\n', '[[datasets]]\nbatch_size = 3\nflip_aug = true\n')
    with pytest.raises(ConfigError, match=r"flip_aug differs between subsets \(\[\[datasets\]\] 1, "
                                          r"\[\[datasets.subsets\]\] 2: false, \[\[datasets\]\] 2: true\)"):
        apply_dataset_config(TrainConfig(dataset_config=str(toml(dataset, text)), token="<t>", out="o"))


def test_caption_prefix_suffix_and_random_crop_train_as_the_flags_do(sd1_dir, tmp_path):
    """kohya's caption_prefix, caption_suffix and random_crop are --caption-prefix, --caption-suffix and
    --random-crop: the file's run learns what the flags' run learns, which is not what a run without them learns;
    config.yaml records them."""
    a, _ = pictures(tmp_path)
    dataset = toml(tmp_path / "d.toml", f'[general]\ncaption_prefix = "masterpiece,"\n[[datasets]]\n'
                                        f'caption_suffix = "best quality"\n[[datasets.subsets]]\nimage_dir = "{a}"\n'
                                        f'random_crop = true\n')
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=2, save_every=0, sample_every=0, lr=5e-2,
                  resolution=16)
    read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common), progress=False)
    flags = train(TrainConfig(images=str(a), caption_prefix="masterpiece,", caption_suffix="best quality",
                              random_crop=True, out=str(tmp_path / "f"), **common), progress=False)
    plain = train(TrainConfig(images=str(a), out=str(tmp_path / "p"), **common), progress=False)
    assert torch.equal(read.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    assert not torch.equal(read.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    saved = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert (saved["caption_prefix"], saved["caption_suffix"], saved["random_crop"]) == ("masterpiece,",
                                                                                        "best quality", True)
    with pytest.raises(ConfigError, match=r"caption_prefix must be text"):
        apply_dataset_config(TrainConfig(dataset_config=str(toml(dataset, dataset.read_text().replace(
            '"masterpiece,"', "3"))), token="<t>", out="o"))


def test_kohyas_separators_train_as_the_flags_do_and_a_resume_keeps_them(sd1_dir, tmp_path):
    """caption_separator, keep_tokens_separator and secondary_separator are --tag-separator, --keep-tags-separator
    and --tag-joiner: the file's run learns what the flags' run learns, not what a run without them learns;
    config.yaml records them, and a resume given other ones is refused."""
    a = write_images(tmp_path / "a", n=2, seed=1)
    (a / "img0.txt").write_text("{}; ink ||| cat::black; hat; red ||| art")
    (a / "img1.txt").write_text("{}; sitting; grass::green")
    dataset = toml(tmp_path / "d.toml", f'[general]\nshuffle_caption = true\ncaption_separator = ";"\n'
                                        f'keep_tokens_separator = "|||"\nsecondary_separator = "::"\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{a}"\n')
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=2, save_every=0, sample_every=0, lr=5e-2,
                  resolution=16, shuffle_tags=True)
    separators = dict(tag_separator=";", keep_tags_separator="|||", tag_joiner="::")
    read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common), progress=False)
    flags = train(TrainConfig(images=str(a), out=str(tmp_path / "f"), **common, **separators), progress=False)
    plain = train(TrainConfig(images=str(a), out=str(tmp_path / "p"), **common), progress=False)
    assert torch.equal(read.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    assert not torch.equal(read.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    saved = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert {k: saved[k] for k in separators} == separators
    with pytest.raises(ConfigError, match=r"cannot resume .* with different settings \(tag_separator: ';' -> ','\)"):
        train(TrainConfig(images=str(a), out=str(tmp_path / "f"), resume=True, **common,
                          **{**separators, "tag_separator": ","}), progress=False)


def test_enable_wildcard_trains_as_caption_wildcards_and_a_resume_draws_the_same(sd1_dir, tmp_path):
    """kohya's enable_wildcard is --caption-wildcards: the file's run learns what the flag's run learns, not what a
    run reading the lines as one caption learns; the lines are drawn from --seed, so a run resumed at step 2 ends
    where the run straight through ends. Its several lines are meant: no CaptionLinesWarning."""
    a = write_images(tmp_path / "a", n=2, seed=1)
    (a / "img0.txt").write_text("{} on a {red|blue} sofa\na {} toy, {big|small}\n")
    (a / "img1.txt").write_text("{} asleep\n{} awake")
    dataset = toml(tmp_path / "d.toml", f'[general]\nenable_wildcard = true\n[[datasets]]\n[[datasets.subsets]]\n'
                                        f'image_dir = "{a}"\n')
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=4, save_every=0, sample_every=0, lr=5e-2,
                  resolution=16, batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionLinesWarning)
        read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common), progress=False)
    flags = train(TrainConfig(images=str(a), caption_wildcards=True, out=str(tmp_path / "f"), **common),
                  progress=False)
    with pytest.warns(CaptionLinesWarning):
        plain = train(TrainConfig(images=str(a), out=str(tmp_path / "p"), **common), progress=False)
    assert torch.equal(read.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    assert not torch.equal(read.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    assert yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())["caption_wildcards"] is True
    halves = dict(common, caption_wildcards=True, save_every=2)
    train(TrainConfig(images=str(a), out=str(tmp_path / "r"), **dict(halves, steps=2)), progress=False)
    resumed = train(TrainConfig(images=str(a), out=str(tmp_path / "r"), resume=True, **halves), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    with pytest.raises(ConfigError, match=r"with different settings \(caption_wildcards: True -> False\)"):
        train(TrainConfig(images=str(a), out=str(tmp_path / "r"), resume=True, **dict(halves, caption_wildcards=False)),
              progress=False)


def test_the_token_warmup_trains_as_the_flags_do_grows_the_tags_and_resumes_exactly(sd1_dir, tmp_path, monkeypatch):
    """kohya's token_warmup_min and token_warmup_step (a share of the steps below 1) are --tag-warmup-min and
    --tag-warmup-steps: the file's run learns what the flags' run learns, not what a run without them learns; the
    first step's captions hold token_warmup_min tags, the last step's all; a run resumed at step 2 ends where the
    run straight through ends (the tags used follow the step)."""
    banks = recorded_caption_banks(monkeypatch)
    a = write_images(tmp_path / "a", n=2, seed=1)
    (a / "img0.txt").write_text("{}, red, on grass, sunny, small")
    (a / "img1.txt").write_text("{}, asleep, on a sofa")
    dataset = toml(tmp_path / "d.toml", f'[general]\ntoken_warmup_min = 1\ntoken_warmup_step = 0.5\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{a}"\n')
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=8, save_every=0, sample_every=0, lr=5e-2,
                  resolution=16, batch=1)
    read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common), progress=False)
    flags = train(TrainConfig(images=str(a), tag_warmup_min=1, tag_warmup_steps=0.5, out=str(tmp_path / "f"),
                              **common), progress=False)
    plain = train(TrainConfig(images=str(a), out=str(tmp_path / "p"), **common), progress=False)
    assert torch.equal(read.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    assert not torch.equal(read.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    saved = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert (saved["tag_warmup_min"], saved["tag_warmup_steps"]) == (1, 0.5)
    bank = banks[1]  # (the flags' run: 4 steps of warm-up, half of 8)

    def texts(step):
        ids = bank.pick(torch.tensor([0] * 20), torch.rand(20), step)[0]
        return {bank.texts[(bank.ids[0] == row).all(1).nonzero()[0].item()] for row in ids}
    assert texts(0) == {"<kd>"} and texts(2) == {"<kd>, red, on grass"} and texts(4) == texts(None) == \
        {"<kd>, red, on grass, sunny, small"}
    # (a share counts the --steps of each command: 4 steps the same in the run stopped at 2 as in the one of 8)
    halves = dict(common, tag_warmup_min=1, tag_warmup_steps=4, save_every=2)
    train(TrainConfig(images=str(a), out=str(tmp_path / "r"), **dict(halves, steps=2)), progress=False)
    resumed = train(TrainConfig(images=str(a), out=str(tmp_path / "r"), resume=True, **halves), progress=False)
    assert not torch.equal(resumed.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    assert torch.equal(resumed.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])


@pytest.mark.parametrize("given, said", [
    (dict(tag_separator=""), r"tag_separator= must be the text between a caption's tags, such as ',' or ';', "
                             r"got ''"),
    (dict(tag_joiner=" "), r"tag_joiner= must be text such as '\|\|\|' \(or '' for none\), got ' '"),
    (dict(tag_joiner=",,"), r"tag_separator=',' and tag_joiner=',,' overlap, so a caption could not say which "
                            r"is meant; give tag_joiner= other text"),
    (dict(keep_tags_separator="|||", tag_joiner="||"), r"keep_tags_separator='\|\|\|' and tag_joiner='\|\|' "
                                                       r"overlap"),
    (dict(tag_warmup_steps=10.5), r"tag_warmup_steps= must be a whole number of steps, or a share of steps= "
                                   r"below 1 \(0: no warm-up\), got 10.5"),
    (dict(tag_warmup_steps=math.inf), r"tag_warmup_steps= must be a whole number of steps, or a share of steps= "
                                      r"below 1 \(0: no warm-up\), got inf"),
    (dict(tag_warmup_min=-1), r"tag_warmup_min= must be a whole number >= 0"),
    (dict(tag_warmup_steps=0.5, caption_wildcards=True), r"tag_warmup_steps= and caption_wildcards= cannot be "
                                                         r"given together"),
])
def test_separators_and_warmups_that_cannot_be_trained_are_refused(given, said, tmp_path):
    with pytest.raises(ConfigError, match=said):
        TrainConfig(images=str(tmp_path), token="<t>", out=str(tmp_path / "o"), **given).validate()


def test_datasets_of_different_resolutions_are_refused(tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{folder}"'
                                        f'\n[[datasets]]\nresolution = [768, 768]\n[[datasets.subsets]]\n'
                                        f'image_dir = "{folder}"\n')
    with pytest.raises(ConfigError, match=r"resolution differs between \[\[datasets\]\] \(\[\[datasets\]\] 1: 512, "
                                          r"\[\[datasets\]\] 2: 768\); textinv has one resolution="):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    toml(dataset, dataset.read_text().replace("[768, 768]", "[512, 512]"))  # (one side twice: the same square)
    assert apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o")).resolution == 512


def test_a_datasets_width_and_height_train_at_that_size_as_kohya_reads_them(sd1_dir, tmp_path):
    """resolution = [24, 16] (kohya's BaseDataset reads it as width, height) was refused: textinv trained squares
    only. It is --resolution 24x16 now: the run trains 24 wide and 16 high, and records the size."""
    folder = write_images(tmp_path / "a", n=2)
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\nresolution = [24, 16]\n[[datasets.subsets]]\n'
                                        f'image_dir = "{folder}"\n')
    config = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert config.resolution == [24, 16]
    result = train(TrainConfig(dataset_config=str(dataset), model=str(sd1_dir), token="<t>", init="dog", steps=1,
                               batch=2, save_every=0, sample_every=0, out=str(tmp_path / "o")), progress=False)
    assert result.embeddings[0].metadata["resolution"] == "24x16"


def test_kohyas_dropout_keys_train_as_the_flags_do_and_tag_dropout_keeps_the_first_keep_tokens(sd1_dir, tmp_path,
                                                                                                 monkeypatch):
    """caption_dropout_rate, caption_dropout_every_n_epochs, caption_tag_dropout_rate and keep_tokens are
    --caption-dropout, --caption-dropout-every, --tag-dropout and --keep-tags: the file's run learns what the flags'
    run learns; the tags are dropped after the first keep_tokens, as kohya's `process_caption` keeps them;
    config.yaml records the settings."""
    a = write_images(tmp_path / "a", n=2, seed=1)
    (a / "img0.txt").write_text("{}, ink, red, hat, sky, art")
    (a / "img1.txt").write_text("{}, ink, grass, sitting, blue")
    dataset = toml(tmp_path / "d.toml", f'[general]\ncaption_tag_dropout_rate = 0.5\nkeep_tokens = 2\n'
                                        f'caption_dropout_rate = 0.3\n[[datasets]]\n[[datasets.subsets]]\n'
                                        f'image_dir = "{a}"\ncaption_dropout_every_n_epochs = 2\n')
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), steps=4, save_every=0, sample_every=0, lr=5e-2,
                  resolution=16, batch=1)
    banks = recorded_caption_banks(monkeypatch)
    read = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "d"), **common), progress=False)
    texts = [t.split(", ") for t in banks[-1].texts]
    assert all(t[:2] == ["<kd>", "ink"] for t in texts) and any(len(t) == 2 for t in texts)
    flags = train(TrainConfig(images=str(a), out=str(tmp_path / "f"), tag_dropout=0.5, keep_tags=2,
                              caption_dropout=0.3, caption_dropout_every=2, **common), progress=False)
    assert torch.equal(read.embedding.vectors["text_encoder"], flags.embedding.vectors["text_encoder"])
    saved = yaml.safe_load((tmp_path / "d" / "config.yaml").read_text())
    assert (saved["caption_dropout"], saved["caption_dropout_every"], saved["tag_dropout"]) == (0.3, 2, 0.5)


@pytest.mark.parametrize("given, said", [
    # (the first check takes 1, which the second refuses saying why: the first did not say it took 1)
    ("caption_dropout_rate = 1.5", r"\[general\]: caption_dropout_rate must be a chance from 0 to 1 \(below 1 for "
                                   r"the vectors to learn: 1 drops every caption\), got 1.5"),
    ('caption_dropout_rate = "half"', r'caption_dropout_rate must be a chance from 0 to 1 \(.*\), got "half"'),
    ("caption_dropout_rate = -0.5", "caption_dropout_rate must be a chance"),
    ("caption_dropout_rate = 1", r"d.toml's caption_dropout_rate \(\[general\]\) at 1 drops every caption, so the "
                                 r"vectors would learn nothing"),
    ("caption_dropout_every_n_epochs = -1", r"\[general\]: caption_dropout_every_n_epochs must be a whole number >= "
                                            r"0, got -1"),
    ("caption_dropout_every_n_epochs = 1", r"d.toml's caption_dropout_every_n_epochs \(\[general\]\) at 1 drops "
                                           r"the captions of every epoch"),
])
def test_kohyas_caption_dropout_keys_are_the_flags_and_bad_values_are_refused_naming_the_key(given, said,
                                                                                             tmp_path):
    """caption_dropout_rate and caption_dropout_every_n_epochs are --caption-dropout and --caption-dropout-every
    (kohya's LoRA scripts take them; its textual inversion refuses them); a value that cannot be trained is refused
    naming the file's key."""
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\ncaption_dropout_rate = 0.25\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n'
                                        f'caption_dropout_every_n_epochs = 3\n')
    read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert (read.caption_dropout, read.caption_dropout_every) == (0.25, 3)
    toml(dataset, f'[general]\n{given}\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    with pytest.raises(ConfigError, match=said):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))


# a value that changes something for each key textinv takes only at kohya's default
CHANGING = {"color_aug": "true", "face_crop_aug_range": "[2.0, 4.0]",
            "is_reg": "true",
            "resize_interpolation": '"lanczos"', "metadata_file": '"meta.json"', "conditioning_data_dir": '"masks"'}


@pytest.mark.parametrize("key", sorted(AT_DEFAULT))
def test_each_key_textinv_has_no_equivalent_for_is_refused_by_name_with_what_to_do(key, tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    places, _, fix = AT_DEFAULT[key]
    in_subset = "[[datasets.subsets]]" in places and len(places) == 1
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\n{"" if in_subset else f"{key} = {CHANGING[key]}"}\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n'
                                        f'{f"{key} = {CHANGING[key]}" if in_subset else ""}\n')
    where = r"\[\[datasets\]\] 1, \[\[datasets.subsets\]\] 1" if in_subset else r"\[\[datasets\]\] 1"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(dataset))}: {where}: {key} = "
                                          rf"{re.escape(CHANGING[key])}: {re.escape(fix)}$"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    # at kohya's default it changes nothing, and is taken (a key with no default is refused at any value)
    defaults = AT_DEFAULT[key][1]
    if defaults:
        value = json.dumps(defaults[0])  # (TOML writes true, 0, "," as JSON does)
        toml(dataset, dataset.read_text().replace(f"{key} = {CHANGING[key]}", f"{key} = {value}"))
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))


@pytest.mark.parametrize("text, said", [
    ('[general]\nalpha_mask = true\n', r"\[general\]: alpha_mask is a \[\[datasets.subsets\]\] key, which kohya's "
                                       r"schema refuses in \[general\]; move it there"),
    ('[[datasets]]\nimage_dir = "x"\n', r"\[\[datasets\]\] 1: image_dir is a \[\[datasets.subsets\]\] key"),
    ('[general]\nnum_repeat = 3\n', r"\[general\]: unknown key 'num_repeat'; did you mean 'num_repeats'\?"),
    ('[general]\nbatch = 3\n', r"unknown key 'batch': that is textinv's name; kohya's file calls it batch_size"),
    ('[general]\nsteps = 3\n', r"unknown key 'steps': that is a textinv setting, not one of kohya's dataset keys; "
                               r"give it as steps="),
    ('steps = 30\n', r"holds textinv settings \(steps\), not kohya's \[general\] and \[\[datasets\]\]: give it to "
                     r"--config"),
    ('[general]\nenable_bucket = true\nresolution = [768, 512]\n',
     r"resolution = \[768, 512\] with enable_bucket \(or buckets=\): buckets= makes its sizes about one square's "
     r"area: give resolution= one number with it, e.g. 640"),
    ('[general]\nresolution = 500\n', r"\[general\]: resolution = 500: resolution must be a multiple of 8 pixels, "
                                      r"got 500; the nearest: 496 or 504"),
    ('[general]\nnum_repeats = "10"\n', r"\[general\]: num_repeats must be a whole number >= 1, got \"10\""),
    ('[general]\ncaption_extension = "."\n', r"caption_extension must be a file suffix, such as \"\.txt\""),
    ('[general]\nenable_bucket = true\nresolution = 1024\nmin_bucket_reso = 256\n',
     r"\[general\]: min_bucket_reso = 256: textinv's buckets have sides from half to twice the resolution, 512 to "
     r"2048 at 1024; set min_bucket_reso = 512, or remove it"),
    ('[general]\nenable_bucket = true\nbucket_reso_steps = 128\n', r"bucket_reso_steps = 128: textinv's buckets step "
                                                                   r"by the model's own down-sampling"),
    ('[general]\nenable_bucket = true\nmax_bucket_reso = 2048\n', r"max_bucket_reso = 2048 needs the resolution it is "
                                                                  r"measured against: give resolution"),
])
def test_a_key_in_the_wrong_table_of_the_wrong_type_or_of_sizes_textinv_lacks_is_refused(text, said, tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    subsets = f'\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n' if "[[datasets]]" not in text else \
        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n'
    dataset = toml(tmp_path / "d.toml", text + subsets)
    with pytest.raises(ConfigError, match=said):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))


@pytest.mark.parametrize("resolution, taken", [(512, True), (768, False)])
def test_kohya_guis_bucket_sizes_are_taken_where_they_make_textinvs_buckets(resolution, taken, tmp_path):
    """kohya's GUI writes min_bucket_reso = 256 and max_bucket_reso = 2048 into every dataset file. At 512 they make
    textinv's buckets (no side from 256 pairs with more than 1024 in 512x512's area): taken. At 768 a 256-pixel side
    pairs with 2048 (a bucket of 256x2048 that textinv lacks): refused, naming the size that makes it."""
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\nenable_bucket = true\nresolution = {resolution}\n'
                                        f'min_bucket_reso = 256\nmax_bucket_reso = 2048\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    config = TrainConfig(dataset_config=str(dataset), token="<t>", out="o")
    if taken:
        assert apply_dataset_config(config).buckets
    else:
        with pytest.raises(ConfigError, match=r"min_bucket_reso = 256: .* set min_bucket_reso = 384"):
            apply_dataset_config(config)
        toml(dataset, dataset.read_text().replace("min_bucket_reso = 256", "min_bucket_reso = 384"))
        assert apply_dataset_config(config).buckets  # (the fix it names: 2048 then binds nothing)


def test_bucket_sizes_textinvs_buckets_have_are_taken_and_unused_ones_said(tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\nenable_bucket = true\nresolution = 512\nmin_bucket_reso = 256\n'
                                        f'max_bucket_reso = 1024\nbucket_reso_steps = 64\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o")).buckets
    toml(dataset, dataset.read_text().replace("enable_bucket = true", "enable_bucket = false"))
    with pytest.warns(DatasetConfigWarning, match=r"min_bucket_reso \(\[general\]\), max_bucket_reso "
                                                  r"\(\[general\]\), bucket_reso_steps \(\[general\]\) left "
                                                  r"unused: the buckets are off"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))


def test_keys_kohyas_textual_inversion_leaves_unused_are_said_in_one_warning(tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\nclass_tokens = "sks dog"\n[[datasets]]\nnetwork_multiplier = 0.5'
                                        f'\n[[datasets.subsets]]\nimage_dir = "{folder}"\ncache_info = true\n')
    with pytest.warns(DatasetConfigWarning) as caught:
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    (message,) = [str(w.message) for w in caught]
    assert "class_tokens ([general]): not captions here" in message
    assert "network_multiplier ([[datasets]] 1): a LoRA setting" in message
    assert "cache_info ([[datasets]] 1, [[datasets.subsets]] 1): not needed" in message


def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path, capsys, monkeypatch):
    folder = write_images(tmp_path / "a", n=1)
    bad = toml(tmp_path / "d.toml", '[[datasets]]\nresolution = 512\n[[datasets.subsets]\n')  # (a bracket short)
    assert main(["train", "--dataset-config", str(bad), "--token", "<t>", "--out", str(tmp_path / "o")]) == 2
    assert re.search(rf"error: cannot parse --dataset-config {re.escape(str(bad))}: .*line 3",
                     capsys.readouterr().err)
    toml(bad, f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n[[datasets.subsets]]\nnum_repeats = 2\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: \[\[datasets\]\] 1, \[\[datasets.subsets\]\] 2 "
                                          r"has no image_dir; kohya's subsets each name their folder"):
        apply_dataset_config(TrainConfig(dataset_config=str(bad), token="<t>", out="o"))
    # a relative folder is read from the working directory, as kohya reads it
    toml(bad, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nnum_repeats = 2\n')
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: \[\[datasets\]\] 1, \[\[datasets.subsets\]\] 1: "
                                          rf"image_dir 'a' does not exist \(kohya reads a relative path from the "
                                          rf"working directory, {re.escape(str(tmp_path / 'a'))}\)"):
        apply_dataset_config(TrainConfig(dataset_config=str(bad), token="<t>", out="o"))
    monkeypatch.chdir(tmp_path)
    assert apply_dataset_config(TrainConfig(dataset_config=str(bad), token="<t>", out="o")).subsets == [
        {"images": str(folder), "repeats": 2, "caption_extension": None}]
    with pytest.raises(ConfigError, match=r"dataset_config=.*missing.toml' does not exist"):
        apply_dataset_config(TrainConfig(dataset_config=str(tmp_path / "missing.toml"), token="<t>", out="o"))
    with pytest.raises(ConfigError, match=r"holds no \[\[datasets\]\]"):
        apply_dataset_config(TrainConfig(dataset_config=str(toml(bad, "[general]\nnum_repeats = 2\n")), token="<t>",
                                         out="o"))
    # an empty folder, found when the pictures are read
    (tmp_path / "empty").mkdir()
    toml(bad, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "empty"\n')
    with pytest.raises(DataError, match=r"no images found in .*empty, a kohya subset's folder"):
        train(TrainConfig(dataset_config=str(bad), token="<t>", out=str(tmp_path / "o")), progress=False)
    write_images(tmp_path / "empty" / "10_dog", n=1)  # (kohya's layout under a subset: its folders are not read)
    with pytest.raises(DataError, match=r"not in its subfolders: give each of 10_dog as a subset of its own"):
        train(TrainConfig(dataset_config=str(bad), token="<t>", out=str(tmp_path / "o")), progress=False)


def test_kohyas_training_settings_given_as_the_dataset_config_are_said_to_be_those(tmp_path):
    """kohya's GUI saves the training settings (its --config_file) as a TOML beside the dataset config; given to
    --dataset-config, it is named as what it is, with textinv's name for one of its keys."""
    path = toml(tmp_path / "config_lora.toml", 'pretrained_model_name_or_path = "model.safetensors"\n'
                                                'output_dir = "out"\ntrain_data_dir = "img"\nmax_train_steps = 900\n')
    with pytest.raises(ConfigError, match=r"holds kohya's training settings \(its --config_file: "
                                          r"pretrained_model_name_or_path, output_dir, train_data_dir, ...\), not its "
                                          r"dataset config .*pretrained_model_name_or_path is .* textinv calls it "
                                          r"--model"):
        apply_dataset_config(TrainConfig(dataset_config=str(path), token="<t>", out="o"))
    toml(path, "batch_size = 2\n[[datasets]]\n")  # (a dataset key above the tables: said as such)
    with pytest.raises(ConfigError, match=r"unknown key 'batch_size' at the top \(it is a \[general\] or "):
        apply_dataset_config(TrainConfig(dataset_config=str(path), token="<t>", out="o"))


def test_the_pictures_are_named_once_and_a_config_file_reads_the_dataset_config_from_its_folder(tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    (tmp_path / "cfg").mkdir()
    toml(tmp_path / "cfg" / "d.toml", f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    cfg = tmp_path / "cfg" / "train.yaml"
    cfg.write_text("dataset_config: d.toml\ntoken: <t>\n")
    settings = config_file_settings(TrainConfig, cfg)
    assert settings["dataset_config"] == str(tmp_path / "cfg" / "d.toml")
    config = build(TrainConfig, settings, {"out": str(tmp_path / "o")}).validate()
    assert config.subset_list() == [{"images": str(folder), "repeats": 1, "caption_extension": None}]
    with pytest.raises(ConfigError, match=r"images= and dataset_config=.*d.toml' both name the pictures"):
        build(TrainConfig, settings, {"images": str(folder), "out": "o"}).validate()
    # subsets, as config.yaml records them, are a config file's setting too (relative folders from its folder)
    cfg.write_text("subsets:\n- {images: ../a, repeats: 4}\ntoken: <t>\n")
    config = build(TrainConfig, config_file_settings(TrainConfig, cfg), {"out": "o"}).validate()
    assert config.subset_list() == [{"images": str(folder), "repeats": 4, "caption_extension": None}]
    with pytest.raises(ConfigError, match=r"subset .* repeats must be a whole number from 1"):
        TrainConfig(subsets=[{"images": str(folder), "repeats": 0}], token="<t>", out="o").validate()


def test_kohyas_flag_name_is_answered_with_textinvs_and_its_file_given_to_config_is_sent_on(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset_config", "d.toml"])
    assert "--dataset_config is kohya's name; textinv calls it --dataset-config (the same file" in \
           capsys.readouterr().err
    dataset = toml(tmp_path / "d.toml", '[general]\nnum_repeats = 2\n[[datasets]]\n[[datasets.subsets]]\n'
                                        'image_dir = "a"\n')
    assert main(["train", "--config", str(dataset), "--token", "<t>", "--out", str(tmp_path / "o")]) == 2
    assert "the file is kohya's dataset config ([general] and [[datasets]] tables); give it to --dataset-config" \
           in capsys.readouterr().err


def test_a_json_dataset_config_is_read_as_its_toml(tmp_path):
    """kohya's load_user_config reads .json as well as .toml."""
    a, b = pictures(tmp_path)
    text = TWO_SUBSETS.format(a=a, b=b)
    data = {"general": {"flip_aug": False, "caption_extension": ".txt"},
            "datasets": [{"resolution": 16, "batch_size": 2,
                          "subsets": [{"image_dir": str(a), "num_repeats": 10},
                                      {"image_dir": str(b), "num_repeats": 3, "caption_extension": ".caption"}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    read = [apply_dataset_config(TrainConfig(dataset_config=str(toml(tmp_path / name, text) if name.endswith("toml")
                                                                 else tmp_path / name), token="<t>", out="o"))
            for name in ("d.toml", "d.json")]
    assert read[0] == read[1] and read[0].subsets[1]["repeats"] == 3
    (tmp_path / "u16.toml").write_text(text, encoding="utf-16")  # (Notepad's "Unicode", with its byte-order mark)
    utf16 = TrainConfig(dataset_config=str(tmp_path / "u16.toml"), token="<t>", out="o")
    assert apply_dataset_config(utf16) == read[0]


def test_a_caption_extension_without_its_dot_is_read_as_kohya_reads_it(tmp_path):
    """kohya's DreamBoothSubset puts the dot in front of a caption_extension written without one: "txt" is .txt."""
    folder = write_images(tmp_path / "a", n=1)
    (folder / "img0.txt").write_text("{} on grass")
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n'
                                        f'caption_extension = "txt"\n')
    read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert read.subsets == [{"images": str(folder), "repeats": 1, "caption_extension": ".txt"}]
    assert read.validate().subset_list() == read.subsets  # (as config.yaml records it, and a resume reads it)


def test_a_folder_given_twice_in_one_dataset_is_trained_by_its_first_subset_as_in_kohya(tmp_path):
    """kohya's DreamBoothDataset leaves out a subset whose image_dir an earlier subset of the dataset has (its
    subsets are equal by image_dir), with a warning; in another [[datasets]] the folder is trained again."""
    a, b = write_images(tmp_path / "a", n=1), write_images(tmp_path / "b", n=1)
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{a}"\nnum_repeats = 2\n'
                                        f'flip_aug = false\n[[datasets.subsets]]\nimage_dir = "{a}"\nnum_repeats = 5\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{b}"\n'
                                        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{a}"\nnum_repeats = 3\n')
    with pytest.warns(DatasetConfigWarning, match=r"\[\[datasets\]\] 1, \[\[datasets.subsets\]\] 2 left out: its "
                                                  r"image_dir .* is that of \[\[datasets\]\] 1, "
                                                  r"\[\[datasets.subsets\]\] 1 in the same dataset"):
        # (the subsets after it keep their places in the file)
        with pytest.raises(ConfigError, match=r"\[\[datasets\]\] 1, \[\[datasets.subsets\]\] 3 gives no flip_aug"):
            apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    toml(dataset, dataset.read_text().replace("flip_aug = false\n", ""))
    with pytest.warns(DatasetConfigWarning):
        read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert [(s["images"], s["repeats"]) for s in read.subsets] == [(str(a), 2), (str(b), 1), (str(a), 3)]


def test_a_resume_given_the_file_again_takes_the_runs_subsets_where_its_folders_are_now(tmp_path, monkeypatch):
    """The run's config.yaml holds its subsets' folders absolute; the file's relative image_dir are read from the
    working directory, so given again from another one (the project moved) they name other folders: taken, as a
    moved --images folder is (the checkpoint's picture names are checked once the run reads them). A file whose
    subsets differ otherwise is refused, saying what may differ; a folder that is not there, which."""
    for project in ("one", "two"):
        write_images(tmp_path / project / "img" / "dog", n=1)
    dataset = toml(tmp_path / "d.toml", '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img/dog"\n')
    run = dict(dataset_config=str(dataset), token="<t>", out=str(tmp_path / "run"), resume=True,
               subsets=[{"images": str(tmp_path / "one" / "img" / "dog")}])
    monkeypatch.chdir(tmp_path / "two")
    assert apply_dataset_config(TrainConfig(**run)).subsets == [
        {"images": str(tmp_path / "two" / "img" / "dog"), "repeats": 1, "caption_extension": None}]
    for key in ("num_repeats = 2", 'caption_extension = ".tags"'):
        toml(dataset, f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img/dog"\n{key}\n')
        with pytest.raises(ConfigError, match=r"are not the run's .*: given again, the file must hold the run's "
                                              r"subsets in the run's order, each with its num_repeats, "
                                              r"caption_extension and skip_image_resolution \(only image_dir may "
                                              r"differ, where a folder "
                                              r"moved\); resume without --dataset-config"):
            apply_dataset_config(TrainConfig(**run))
    toml(dataset, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img/dog"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"image_dir 'img/dog' does not exist .*; give the folder of the subset's "
                                          r"pictures, or resume without --dataset-config"):
        apply_dataset_config(TrainConfig(**run))
    monkeypatch.chdir(tmp_path / "one")
    assert apply_dataset_config(TrainConfig(**run)).subsets[0]["images"] == str(tmp_path / "one" / "img" / "dog")


def test_a_run_whose_subsets_moved_resumes_given_the_dataset_config_again(sd1_dir, tmp_path, monkeypatch, capsys):
    """A project moved (renamed, taken to another disk) with its run and its subsets' folders: config.yaml names
    where the folders were, the folder alone was told to 'put it back', and the dataset config given again was
    refused as subsets 'not the run's'. The run's subsets with their folders where they are now (here the same
    file, its relative image_dir read in the moved project) resume to the uninterrupted run's result; the pictures
    are still checked by name, and a file whose subsets differ otherwise is refused."""
    project, moved = tmp_path / "project", tmp_path / "moved"
    pictures(project)
    toml(project / "dataset.toml", TWO_SUBSETS.format(a="my dog", b="close ups"))
    common = ["--token", "<kd>", "--init", "dog", "--model", str(sd1_dir), "--save-every", "2", "--sample-every",
              "0", "--log-every", "2", "--lr", "0.05", "--dataset-config", "dataset.toml"]
    monkeypatch.chdir(project)
    assert main(["train", "--out", "whole", "--steps", "4", *common]) == 0
    assert main(["train", "--out", "run", "--steps", "2", *common]) == 0
    project.rename(moved)
    monkeypatch.chdir(moved)
    capsys.readouterr()
    assert main(["train", "--out", "run", "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {moved / 'run'}: the subset folder {project / 'my dog'} does not exist (the 2 kohya subsets " \
           f"{moved / 'run' / 'config.yaml'} names); if the subsets moved, resume with --dataset-config" in err
    assert "put it back" not in err
    toml(moved / "other.toml", TWO_SUBSETS.format(a="my dog", b="close ups").replace("= 3", "= 5"))
    assert main(["train", "--out", "run", "--resume", "--steps", "4", "--dataset-config", "other.toml"]) == 2
    assert "are not the run's" in capsys.readouterr().err
    (moved / "close ups" / "img0.png").rename(moved / "close ups" / "img9.png")
    with pytest.warns(SkippedFilesWarning, match="img0.txt .a caption with no picture"):  # (its captions, left)
        assert main(["train", "--out", "run", "--resume", "--steps", "4", "--dataset-config", "dataset.toml"]) == 2
    assert f"(missing now: {(moved / 'close ups' / 'img0.png').as_posix()}; new: " \
           f"{(moved / 'close ups' / 'img9.png').as_posix()}); put the subsets' folders back" in capsys.readouterr().err
    (moved / "close ups" / "img9.png").rename(moved / "close ups" / "img0.png")

    assert main(["train", "--out", "run", "--resume", "--steps", "4", "--dataset-config", "dataset.toml"]) == 0
    said = capsys.readouterr().out
    assert f"  subset 1's pictures now {moved / 'my dog'} (were {project / 'my dog'})" in said
    assert f"  subset 2's pictures now {moved / 'close ups'} (were {project / 'close ups'})" in said
    resumed, whole = (torch.load(moved / run / "checkpoints" / "step-000004.pt", weights_only=True)
                      for run in ("run", "whole"))
    assert torch.equal(resumed["vectors"][0], whole["vectors"][0])
    assert (moved / "run" / "loss.csv").read_text() == (moved / "whole" / "loss.csv").read_text()
    # (where the pictures are now, for a later resume or score; the names in the checkpoint are the folders' own)
    assert [s["images"] for s in yaml.safe_load((moved / "run" / "config.yaml").read_text())["subsets"]] == \
           [str(moved / "my dog"), str(moved / "close ups")]
    assert resumed["pictures"] == whole["pictures"] == [["1/img0.png", "1/img1.png", "2/img0.png"]]


def test_a_checkpoint_naming_subset_pictures_by_whole_path_resumes_in_place_and_moved(sd1_dir, tmp_path):
    """textinv 0.1.0's checkpoints name each subset picture by its whole path: such a run resumes where its folders
    are, as before, and once they moved too (the dataset config given again), to the uninterrupted run's vectors."""
    a, b = pictures(tmp_path / "p")
    common = dict(token="<kd>", init="dog", model=str(sd1_dir), save_every=2, sample_every=0, log_every=2, lr=5e-2)
    dataset = toml(tmp_path / "d.toml", TWO_SUBSETS.format(a=a, b=b))
    whole = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "whole"), steps=4, **common),
                  progress=False)
    train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "run"), steps=2, **common), progress=False)
    path = tmp_path / "run" / "checkpoints" / "step-000002.pt"
    state = torch.load(path, weights_only=True)
    state["pictures"] = [[(a / "img0.png").as_posix(), (a / "img1.png").as_posix(), (b / "img0.png").as_posix()]]
    torch.save(state, path)
    shutil.copytree(tmp_path / "run", tmp_path / "run moved")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "4"]) == 0  # (the folder alone)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert torch.equal(resumed["vectors"][0], whole.embedding.vectors["text_encoder"])

    (tmp_path / "p").rename(tmp_path / "q")
    dataset = toml(tmp_path / "d.toml", TWO_SUBSETS.format(a=tmp_path / "q" / a.name, b=tmp_path / "q" / b.name))
    resumed = train(TrainConfig(dataset_config=str(dataset), out=str(tmp_path / "run moved"), steps=4, resume=True,
                                **common), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], whole.embedding.vectors["text_encoder"])


def sized(folder, sizes):
    """A picture of each (width, height) of `sizes`, named by its name there."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in sizes.items():
        Image.new("RGB", (width, height), (200, 40, 40)).save(folder / name)
    return folder


def test_skip_image_resolution_leaves_out_the_pictures_kohya_leaves_out(tmp_path):
    """sd-scripts' skip_image_resolution (a dataset's key, one number or [width, height]): a picture whose own area,
    width x height before any resize, is at most the threshold's is left out; by area, not by sides (a 64x16 picture
    has a side under 32 and 32x32's area: left out; 16x65 has more: kept), and at the threshold itself too (kohya's
    `<=`). The pictures left out are named in one warning, and a dataset without the key keeps all of its own."""
    from textinv.data import picture_set

    a = sized(tmp_path / "a", {"big.png": (40, 40), "edge.png": (32, 32), "wide.png": (64, 16),
                               "small.png": (16, 16), "tall.png": (16, 65)})
    b = sized(tmp_path / "b", {"one.png": (30, 30), "two.png": (40, 20)})
    dataset = toml(tmp_path / "d.toml", f"""
[general]
skip_image_resolution = 32

[[datasets]]
  [[datasets.subsets]]
  image_dir = "{a}"

[[datasets]]
skip_image_resolution = [40, 20]
  [[datasets.subsets]]
  image_dir = "{b}"

[[datasets]]
skip_image_resolution = 0
  [[datasets.subsets]]
  image_dir = "{tmp_path / 'c'}"
""")
    sized(tmp_path / "c", {"tiny.png": (1, 1)})
    read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    assert [s["skip_image_resolution"] for s in read.subset_list()] == [[32, 32], [40, 20], [0, 0]]
    with pytest.warns(SkippedFilesWarning) as said:
        kept = picture_set(None, read.subset_list())
    assert [p.name for p in kept.paths] == ["big.png", "tall.png", "one.png", "tiny.png"]
    assert [str(w.message) for w in said] == [
        f"skipped 3 picture(s) in {a} of at most 32x32 pixels in area (its skip_image_resolution, as kohya skips "
        f"them): edge.png (32x32), small.png (16x16), wide.png (64x16)",
        f"skipped 1 picture(s) in {b} of at most 40x20 pixels in area (its skip_image_resolution, as kohya skips "
        f"them): two.png (40x20)"]
    assert kept.names == ["1/big.png", "1/tall.png", "2/one.png", "3/tiny.png"]  # (as a checkpoint records them)

    # a subset it leaves without pictures is refused, as an empty one is
    toml(dataset, dataset.read_text().replace("skip_image_resolution = 32", "skip_image_resolution = 40"))
    read = apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    with pytest.raises(DataError, match=rf"no picture in {re.escape(str(a))}, a kohya subset's folder \(image_dir\), "
                                        rf"is larger in area than its skip_image_resolution 40x40, which leaves out "
                                        rf"all 5: big.png \(40x40\), .*; give a smaller skip_image_resolution, or "
                                        rf"remove the subset"):
        picture_set(None, read.subset_list())


@pytest.mark.parametrize("value, said", [
    ("512.0", r"skip_image_resolution must be a number of pixels, such as 512, or \[width, height\]"),
    ("true", r"skip_image_resolution must be a number of pixels"),
    ("-1", r"skip_image_resolution must be a number of pixels"),
    ("[512]", r"skip_image_resolution must be a number of pixels"),
    ("[512, 768, 1]", r"skip_image_resolution must be a number of pixels"),
    ('"512,768"', r"skip_image_resolution = \"512,768\": kohya's dataset config takes a number or \[width, height\], "
                  r"not text \(\"W,H\" is its command line's form\); write skip_image_resolution = \[512, 768\]"),
])
def test_skip_image_resolution_in_a_form_kohya_refuses_is_refused(value, said, tmp_path):
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\nskip_image_resolution = {value}\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(dataset))}: \[general\]: {said}"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    # a dataset's key, as kohya's schema has it: not a subset's
    toml(dataset, f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\nskip_image_resolution = 512\n')
    with pytest.raises(ConfigError, match=r"skip_image_resolution is a \[general\] or \[\[datasets\]\] key, which "
                                          r"kohya's schema refuses in \[\[datasets.subsets\]\]; move it there"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    # the record's subsets (a --config file's) take it as the file does, one number as [n, n]
    assert TrainConfig(subsets=[{"images": str(folder), "skip_image_resolution": 512}]).subset_list()[0][
        "skip_image_resolution"] == [512, 512]
    with pytest.raises(ConfigError, match=r"skip_image_resolution must be a number of pixels or \[width, height\]"):
        TrainConfig(subsets=[{"images": str(folder), "skip_image_resolution": "512,512"}]).subset_list()


def test_skip_image_resolution_is_recorded_and_a_resume_skips_the_same_pictures(sd1_dir, tmp_path, capsys):
    """config.yaml records it with the subsets, so a resume from the run's folder alone trains the same pictures
    when the file has changed since; the file given again with another value is refused."""
    folder = sized(tmp_path / "a", {"big.png": (40, 40), "edge.png": (24, 24), "other.png": (32, 32)})
    dataset = toml(tmp_path / "d.toml", f'[general]\nskip_image_resolution = 24\nresolution = 16\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    common = ["--token", "<t>", "--init", "dog", "--model", str(sd1_dir), "--save-every", "2", "--sample-every", "0",
              "--batch", "1", "--lr", "0.05", "--out", str(tmp_path / "run")]
    with pytest.warns(SkippedFilesWarning, match=r"skipped 1 picture\(s\) .*: edge.png \(24x24\)"):
        assert main(["train", "--dataset-config", str(dataset), "--steps", "2", *common]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["subsets"] == [{"images": str(folder), "repeats": 1, "caption_extension": None,
                                 "skip_image_resolution": [24, 24]}]
    toml(dataset, dataset.read_text().replace("skip_image_resolution = 24", "skip_image_resolution = 32"))
    with pytest.warns(SkippedFilesWarning, match=r"edge.png \(24x24\)$"):  # (the run's 24, not the file's 32 now)
        assert main(["train", "--resume", "--steps", "4", *common]) == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert state["pictures"] == [["1/big.png", "1/other.png"]]
    from textinv.score import _training_pictures, run_settings  # (score judges against the pictures trained on)

    run = run_settings(tmp_path / "run", "<t>")
    with pytest.warns(SkippedFilesWarning):
        assert [p.size for p in _training_pictures(None, run, run["subsets"])] == [(40, 40), (32, 32)]
    capsys.readouterr()
    assert main(["train", "--resume", "--steps", "6", "--dataset-config", str(dataset), *common]) == 2
    assert f"its subsets ({folder} x1 skip_image_resolution 32x32) are not the run's ({folder} x1 " \
           f"skip_image_resolution 24x24)" in capsys.readouterr().err


def test_the_readmes_table_of_kohyas_keys_puts_each_key_in_the_row_that_says_what_textinv_does_with_it():
    """A key textinv takes (`SETTINGS`) is in no row of keys left unused or refused, and every key left unused
    (`IGNORED`) is in that row."""
    from pathlib import Path

    from textinv.kohya import IGNORED, SETTINGS

    readme = (Path(__file__).resolve().parent.parent / "docs" / "train.md").read_text(encoding="utf-8")
    table = readme.split("| kohya's keys | in textinv |")[1].split("\n\n")[0]
    rows = {cells[2].strip(): set(re.findall(r"`(\w+)`", cells[1]))
            for cells in (line.split("|") for line in table.splitlines()[2:])}
    unused = next(keys for said, keys in rows.items() if said.startswith("left unused"))
    at_default = next(keys for said, keys in rows.items() if said.startswith("taken at kohya's default"))
    assert unused == set(IGNORED)
    assert not (unused | at_default) & set(SETTINGS)


def test_bucket_no_upscale_is_taken_with_buckets_and_its_unused_sizes_said(tmp_path):
    """kohya's bucket_no_upscale: --bucket-no-upscale with enable_bucket. kohya ignores min_bucket_reso and
    max_bucket_reso then (each picture's size makes its bucket), with a warning, and so does textinv, even at sizes
    it would refuse; without enable_bucket it ignores bucket_no_upscale itself, and textinv says so."""
    folder = write_images(tmp_path / "a", n=1)
    dataset = toml(tmp_path / "d.toml", f'[general]\nenable_bucket = true\nbucket_no_upscale = true\n'
                                        f'resolution = 1024\nmin_bucket_reso = 256\n[[datasets]]\n'
                                        f'[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    config = TrainConfig(dataset_config=str(dataset), token="<t>", out="o")
    with pytest.warns(DatasetConfigWarning, match=r"min_bucket_reso \(\[general\]\) left unused: with "
                                                  r"bucket_no_upscale each picture's own size makes its bucket"):
        given = apply_dataset_config(config)
    assert given.buckets and given.bucket_no_upscale
    toml(dataset, dataset.read_text().replace("enable_bucket = true\n", "").replace("min_bucket_reso = 256\n", ""))
    with pytest.warns(DatasetConfigWarning, match=r"bucket_no_upscale = true left unused: the buckets are off"):
        given = apply_dataset_config(config)
    assert not given.buckets and not given.bucket_no_upscale


def test_caption_settings_that_do_not_go_together_are_refused_naming_the_files_keys(tmp_path):
    """token_warmup_step with enable_wildcard, and separators that overlap, are refused as their flags are, but
    naming the keys the file gives (and a flag only where it was given), not flags the user never typed."""
    folder = write_images(tmp_path / "dog", n=1)
    both = toml(tmp_path / "d.toml", f'[general]\nenable_wildcard = true\ntoken_warmup_step = 2\n[[datasets]]\n'
                                     f'[[datasets.subsets]]\nimage_dir = "{folder.as_posix()}"\n')
    with pytest.raises(ConfigError, match=r"d\.toml's token_warmup_step \(\[general\]\) and \S+d\.toml's "
                                          r"enable_wildcard \(\[general\]\) cannot be given together"):
        apply_dataset_config(TrainConfig(dataset_config=str(both), token="<t>", out="o"))
    one = toml(tmp_path / "e.toml", f'[general]\nenable_wildcard = true\n[[datasets]]\n'
                                    f'[[datasets.subsets]]\nimage_dir = "{folder.as_posix()}"\n')
    with pytest.raises(ConfigError, match=r"^tag_warmup_steps= and \S+e\.toml's enable_wildcard \(\[general\]\)"):
        apply_dataset_config(TrainConfig(dataset_config=str(one), token="<t>", out="o", tag_warmup_steps=3))
    overlap = toml(tmp_path / "f.toml", f'[general]\ncaption_separator = ","\nkeep_tokens_separator = ",,"\n'
                                        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder.as_posix()}"\n')
    with pytest.raises(ConfigError, match=r"f\.toml's caption_separator \(\[general\]\) ',' and \S+f\.toml's "
                                          r"keep_tokens_separator \(\[general\]\) ',,' overlap"):
        apply_dataset_config(TrainConfig(dataset_config=str(overlap), token="<t>", out="o"))


def test_a_setting_one_dataset_leaves_out_a_resume_at_other_settings_and_a_second_list_of_subsets_are_refused(
        tmp_path):
    """The refusals of `apply_dataset_config` the tests above do not reach: a [[datasets]] key one dataset leaves to
    the command line, a resume given the file again at another value than the run's, and subsets given twice."""
    a, b = write_images(tmp_path / "a", n=1), write_images(tmp_path / "b", n=1)
    dataset = toml(tmp_path / "d.toml", f'[[datasets]]\nresolution = 768\n[[datasets.subsets]]\nimage_dir = "{a}"\n'
                                        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{b}"\n')
    with pytest.raises(ConfigError, match=r"d.toml: \[\[datasets\]\] 2 gives no resolution, so it takes textinv's "
                                          r"resolution= \(None\), where \[\[datasets\]\] 1 gives 768; textinv has "
                                          r"one resolution= for all its pictures: give resolution in \[general\]$"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o"))
    toml(dataset, f'[general]\nbatch_size = 2\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{a}"\n')
    with pytest.raises(ConfigError, match=rf"^cannot resume o with dataset_config='{re.escape(str(dataset))}': its "
                                          r"batch_size = 2 \(\[general\]\) is not the run's batch=8; resume "
                                          r"without --dataset-config \(the run's config.yaml records what the file "
                                          r"gave when the run started\), or start a new run$"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o", resume=True, batch=8))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(dataset))}'s subsets \({re.escape(str(a))} x1\) and the "
                                          rf"subsets given \({re.escape(str(b))} x1\) both name the pictures: give one "
                                          r"of them$"):
        apply_dataset_config(TrainConfig(dataset_config=str(dataset), token="<t>", out="o",
                                         subsets=[{"images": str(b)}]))


def test_the_dataset_configs_warnings_point_at_the_line_that_validated_the_config(tmp_path):
    """Each warning reading the file gives names the caller of `TrainConfig.validate` (its stacklevel), not kohya.py."""
    folder = write_images(tmp_path / "a", n=1)
    unused = [("bucket_no_upscale = true\n", r"bucket_no_upscale = true left unused: the buckets are off"),
              ("min_bucket_reso = 256\n", r"min_bucket_reso \(\[general\]\) left unused: the buckets are off"),
              ("class_tokens = 'dog'\n", r"left unused: class_tokens")]
    for key, message in unused:
        dataset = toml(tmp_path / "d.toml", f'[general]\n{key}[[datasets]]\n[[datasets.subsets]]\n'
                                            f'image_dir = "{folder}"\n')
        with pytest.warns(DatasetConfigWarning, match=message) as record:
            TrainConfig(dataset_config=str(dataset), token="<t>", out="o").validate()
        assert [w.filename for w in record if w.category is DatasetConfigWarning] == [__file__]
