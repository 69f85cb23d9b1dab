"""`textinv caption`: BLIP captions written beside the training pictures, on a tiny random BLIP built here."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from textinv import caption as caption_module
from textinv.caption import BLIP_PROMPT, CaptionConfig, caption_pictures, describe, load_blip
from textinv.cli import main
from textinv.data import find_images, load_training_images, picture_set, read_caption
from textinv.errors import ConfigError, DataError, ModelError
from textinv.kohya import dataset_subsets
from textinv.models import load_model
from textinv.train import train

from conftest import recorded_caption_banks, train_config, write_images

_WORDS = "a picture of dog cat red sofa on the in green grass small big lying sitting with".split()


def build_tiny_blip(folder, seed=0):
    """A random BLIP captioner (2 layers of width 16 a tower, 32-pixel pictures) with a BERT tokenizer of `_WORDS`,
    saved with its processor as the Salesforce models are."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # (BLIP's decoder starts from it, as the real ones)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    config = BlipConfig(vision_config=dict(**tower, image_size=32, patch_size=16),
                        text_config=dict(**tower, vocab_size=len(tokenizer), max_position_embeddings=80,
                                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        projection_dim=16)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "vocab.txt").unlink()  # (the saved tokenizer's own files hold it)
    return folder


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


def run(capsys, *argv):
    code = main(["caption", *map(str, argv), "--device", "cpu"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_caption_file_is_written_beside_each_picture_with_the_prefix_and_suffix(blip_dir, tmp_path, capsys):
    folder = write_images(tmp_path / "pics", n=3)
    code, out, _ = run(capsys, "--images", folder, "--model", blip_dir, "--prefix", "a photo of {},", "--suffix",
                       ", at night", "--batch", 2)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4 and lines[-1] == "wrote 3 caption file(s)"
    for i, line in enumerate(lines[:3]):
        text = (folder / f"img{i}.txt").read_text()
        assert re.fullmatch(r"a photo of \{\}, [a-z ]+, at night\n", text), text
        assert line == f"{folder / f'img{i}.png'} -> img{i}.txt: {text.strip()}"
    assert sorted(p.name for p in folder.iterdir()) == [f"img{i}.{s}" for i in range(3) for s in ("png", "txt")]


def test_blips_prompt_is_cut_from_the_caption(blip_dir, tmp_path):
    """BLIP writes after "a picture of" (its captioning prompt); the caption is what follows it."""
    blip = load_blip(str(blip_dir))
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    config = CaptionConfig(images="x", beam_search=True, num_beams=2, max_length=12)
    inputs = blip.processor(images=[picture], text=[BLIP_PROMPT], return_tensors="pt")
    whole = blip.processor.batch_decode(blip.model.generate(**inputs, num_beams=2, max_length=12, min_length=5),
                                        skip_special_tokens=True)[0]
    assert whole.startswith(BLIP_PROMPT + " ") and describe(blip, [picture], config) == [whole[13:]]


def test_the_same_seed_gives_the_same_captions_and_another_seed_others(blip_dir, tmp_path, capsys):
    """Sampling is seeded (kohya's 42 by default), and the caller's random numbers are left as they were."""
    folder = write_images(tmp_path / "pics", n=4)

    def captions(*flags):
        assert run(capsys, "--images", folder, "--model", blip_dir, "--overwrite", *flags)[0] == 0
        return [(folder / f"img{i}.txt").read_text() for i in range(4)]

    torch.manual_seed(5)
    first = captions()
    after = torch.rand(1)
    torch.manual_seed(5)
    assert captions() == first and torch.equal(torch.rand(1), after)
    assert captions("--seed", 7) != first


def test_a_picture_with_a_caption_keeps_it_unless_overwrite(blip_dir, tmp_path, capsys):
    folder = write_images(tmp_path / "pics", n=3)
    (folder / "img0.txt").write_text("my own words for {}\n")
    (folder / "img1.caption").write_text("kohya's caption\n")  # (train reads it: img1 has a caption too)
    code, out, _ = run(capsys, "--images", folder, "--model", blip_dir)
    assert code == 0 and out.splitlines()[:2] == [f"{folder / 'img0.png'}: kept img0.txt",
                                                  f"{folder / 'img1.png'}: kept img1.caption"]
    assert out.splitlines()[-1] == "wrote 1 caption file(s), kept 2 that had one (--overwrite replaces them)"
    assert (folder / "img0.txt").read_text() == "my own words for {}\n" and not (folder / "img1.txt").exists()
    assert (folder / "img2.txt").exists()
    code, out, _ = run(capsys, "--images", folder, "--model", blip_dir, "--overwrite")
    assert code == 0 and out.splitlines()[-1] == "wrote 3 caption file(s)"
    assert (folder / "img0.txt").read_text() != "my own words for {}\n" and not (folder / "img1.txt").exists()
    assert (folder / "img1.caption").read_text() != "kohya's caption\n"  # (the file that was there, replaced)


def test_overwrite_replaces_the_caption_file_train_reads(blip_dir, tmp_path, capsys):
    """With kohya's .caption asked for, a picture's NAME.txt is what train reads (it comes first): --overwrite
    replaces that file, not a NAME.caption train would never read."""
    folder = write_images(tmp_path / "pics", n=1)
    (folder / "img0.txt").write_text("old words\n")
    code, out, _ = run(capsys, "--images", folder, "--model", blip_dir, "--caption-extension", ".caption",
                       "--overwrite")
    assert code == 0 and out.splitlines()[0].startswith(f"{folder / 'img0.png'} -> img0.txt: ")
    assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img0.txt"]
    assert read_caption(folder / "img0.png") not in (None, "old words")


def test_pictures_that_would_share_a_caption_file_or_be_written_over_are_refused(blip_dir, tmp_path, capsys):
    """dog.jpg and dog.png both read dog.txt; a picture named dog.txt would be its own caption file: refused before
    any caption is written, the pictures as they were."""
    twins = tmp_path / "twins"
    twins.mkdir()
    for suffix in ("jpg", "png"):
        Image.new("RGB", (24, 24), (200, 30, 30)).save(twins / f"dog.{suffix}")
    code, _, err = run(capsys, "--images", twins, "--model", blip_dir)
    assert code == 2 and "dog.jpg and dog.png would share the caption file dog.txt" in err, err
    assert not list(twins.glob("*.txt"))
    named = tmp_path / "named"
    named.mkdir()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(named / "dog.txt", format="PNG")
    code, _, err = run(capsys, "--images", named, "--model", blip_dir, "--overwrite")
    assert code == 2 and "its caption file dog.txt would be written over the picture dog.txt" in err, err
    assert Image.open(named / "dog.txt").size == (24, 24)


def test_precision_is_the_models_and_auto_is_fp32_on_the_cpu(blip_dir, tmp_path, capsys, monkeypatch):
    folder = write_images(tmp_path / "pics", n=1)
    dtypes = []
    real = caption_module.describe
    monkeypatch.setattr(caption_module, "describe", lambda blip, pictures, config: dtypes.append(
        blip.model.dtype) or real(blip, pictures, config))
    for precision in ("bf16", "auto"):
        assert run(capsys, "--images", folder, "--model", blip_dir, "--precision", precision, "--overwrite")[0] == 0
    assert dtypes == [torch.bfloat16, torch.float32] and (folder / "img0.txt").exists()


def test_a_blip_model_without_the_caption_decoder_is_refused(blip_dir, tmp_path):
    """A BLIP image-text retrieval model loads as a captioner with a random decoder, said only in a log line."""
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    retrieval = tmp_path / "blip-itm"
    BlipForImageTextRetrieval(BlipForImageTextRetrieval.config_class.from_pretrained(blip_dir)).save_pretrained(
        retrieval)
    BlipProcessor.from_pretrained(blip_dir).save_pretrained(retrieval)
    with pytest.raises(ModelError, match="is not a whole BLIP captioning model: .* would be random"):
        load_blip(str(retrieval))


def test_pictures_that_all_have_captions_load_no_model(tmp_path, capsys):
    folder = write_images(tmp_path / "pics", n=2)
    for i in range(2):
        (folder / f"img{i}.caption").write_text("x")
    code, out, _ = run(capsys, "--images", folder, "--model", "nobody/no-such-blip", "--caption-extension", ".caption")
    assert code == 0 and out.splitlines()[-1] == "wrote 0 caption file(s), kept 2 that had one (--overwrite " \
                                                 "replaces them)"


def test_an_interrupted_write_leaves_the_old_caption_and_no_partial_file(blip_dir, tmp_path, monkeypatch):
    """A Ctrl-C (or a crash) while a caption is being written: the file is as it was, or not there."""
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr("textinv.io.os.fsync", interrupted)  # (after the bytes are written, before the rename)
    had = write_images(tmp_path / "had", n=1)
    (had / "img0.txt").write_text("old\n")
    fresh = write_images(tmp_path / "fresh", n=1)
    for folder in (had, fresh):
        with pytest.raises(KeyboardInterrupt):
            caption_pictures(CaptionConfig(images=str(folder), model=str(blip_dir), overwrite=True, device="cpu"))
    assert (had / "img0.txt").read_text() == "old\n"
    # no partial file, no temporary one
    assert sorted(p.name for p in had.iterdir()) == ["img0.png", "img0.txt"]
    assert sorted(p.name for p in fresh.iterdir()) == ["img0.png"]


def test_the_pictures_are_those_train_reads_as_train_reads_them(blip_dir, tmp_path, capsys, monkeypatch):
    """kohya's <repeats>_<words> subfolders are read, a file that is no picture is not; pictures come upright
    (EXIF rotation) and as RGB (transparency on white, 16-bit grey scaled)."""
    folder = tmp_path / "img"
    (folder / "10_dog").mkdir(parents=True)
    (folder / "3_toy").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: stored 40 wide, shown 40 tall
    Image.new("RGB", (40, 20), (10, 200, 10)).save(folder / "10_dog" / "turned.jpg", exif=exif)
    Image.new("RGBA", (24, 24), (0, 0, 0, 0)).save(folder / "10_dog" / "clear.png")
    Image.fromarray(np.full((24, 24), 65535, dtype=np.uint16)).save(folder / "3_toy" / "deep.png")
    (folder / "3_toy" / "notes.md").write_text("not a picture")
    seen = []
    real = caption_module.describe
    monkeypatch.setattr(caption_module, "describe", lambda blip, pictures, config: seen.extend(pictures) or real(
        blip, pictures, config))
    with pytest.warns(UserWarning, match="notes.md"):
        assert run(capsys, "--images", folder, "--model", blip_dir)[0] == 0
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt"))
    assert written == ["10_dog/clear.txt", "10_dog/turned.txt", "3_toy/deep.txt"]
    (folder / "3_toy" / "notes.md").unlink()
    assert [p.with_suffix(".txt").relative_to(folder).as_posix() for p in find_images(folder)] == written
    assert [(im.mode, im.size) for im in seen] == [("RGB", (24, 24)), ("RGB", (20, 40)), ("RGB", (24, 24))]
    assert seen[0].getpixel((0, 0)) == (255, 255, 255) and seen[2].getpixel((0, 0)) == (255, 255, 255)


def test_train_reads_the_written_captions(blip_dir, sd1_dir, tmp_path, capsys, monkeypatch):
    folder = write_images(tmp_path / "pics", n=2)
    assert run(capsys, "--images", folder, "--model", blip_dir, "--prefix", "a photo of {},")[0] == 0
    written = [(folder / f"img{i}.txt").read_text().strip() for i in range(2)]
    banks = recorded_caption_banks(monkeypatch)
    train(train_config(folder, tmp_path / "run", steps=1, batch=1), model=load_model(sd1_dir), progress=False)
    assert banks[-1].texts == [text.replace("{}", "<zq>") for text in written]
    assert all(text.startswith("a photo of <zq>, ") for text in banks[-1].texts)


@pytest.mark.parametrize("flags, error, words", [
    (["--images", "{tmp}/missing"], DataError, "does not exist; give the folder that holds your pictures"),
    (["--images", "{tmp}/file.txt"], DataError, "is a file, not a folder"),
    (["--images", "{tmp}/empty"], DataError, "no images found in"),
    (["--model", "nobody/no-such-blip"], ModelError, "'nobody/no-such-blip', the BLIP captioning model, is not in "
                                                     "the local Hugging Face cache and the hub could not be reached "
                                                     "(HF_HUB_OFFLINE is set); connect once"),
    (["--model", "./no/such/folder"], ModelError, "the folder no/such/folder does not exist"),
    (["--model", "{sd1}/text_encoder"], ModelError, "could not be loaded as a BLIP captioning model"),
    (["--revision", "v2"], ModelError, "--revision v2 is for a hub id"),
    (["--caption-extension", "txt"], ConfigError, "'txt' is no file suffix; give one such as .txt"),
    (["--caption-extension", ".PNG"], ConfigError, "is a picture's suffix"),
    # (the command line's words, and Python's where they name a setting: its keyword)
    (["--num-beams", "3"], ConfigError, ("--num-beams 3 is for beam search: add --beam-search",
                                         "num_beams=3 is for beam search: add beam_search=")),
    (["--beam-search", "--top-p", "0.5"], ConfigError, ("--top-p is for nucleus sampling",
                                                        "top_p= is for nucleus sampling")),
    (["--min-length", "9", "--max-length", "8"], ConfigError, ("--min-length 9 must be from 0 to --max-length (8)",
                                                               "min_length=9 must be from 0 to max_length= (8)")),
    (["--batch", "0"], ConfigError, ("--batch must be at least 1", "batch= must be at least 1")),
    (["--max-length", "4", "--min-length", "0"], ConfigError, ("--max-length 4 leaves no room for a word",
                                                               "max_length=4 leaves no room for a word")),
    (["--dataset-config", "{tmp}/d.toml"], ConfigError, ("--images and --dataset-config both name the pictures",
                                                         "images= and dataset_config= both name the pictures")),
], ids=["missing", "file", "empty", "unknown-hub-id", "missing-folder", "not-blip", "revision-of-folder",
        "extension-without-dot", "picture-suffix", "beams-without-beam-search", "top-p-with-beams", "lengths",
        "batch", "length-of-the-prompt", "images-and-dataset-config"])
def test_bad_input_is_refused_before_any_caption_is_written(blip_dir, sd1_dir, tmp_path, capsys, flags, error,
                                                            words):
    from textinv.cli import _config_from_args, _parse, make_parser

    folder = write_images(tmp_path / "pics", n=2)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    # (a flag given twice: the last is taken)
    argv = ["--images", folder, "--model", blip_dir] + [f.format(tmp=tmp_path, sd1=sd1_dir) for f in flags]
    said, python = words if isinstance(words, tuple) else (words, words)
    code, _, err = run(capsys, *argv)
    assert code == 2 and said in err, err
    assert not list(folder.glob("*.txt"))
    config = _config_from_args(CaptionConfig, _parse(make_parser(), ["caption", *map(str, argv)]))
    with pytest.raises(error, match=re.escape(python)):  # (from Python: the same, a setting named by its keyword)
        caption_pictures(config)


def test_an_empty_caption_file_is_captioned_as_train_reads_it_as_none(blip_dir, tmp_path, capsys):
    """train reads an empty (or blank) caption file as no caption (`read_caption`): the picture is captioned, into
    that file, and its line says it was empty."""
    folder = write_images(tmp_path / "pics", n=2)
    (folder / "img0.txt").write_text("")
    (folder / "img1.txt").write_text(" \n\n")
    assert [read_caption(folder / f"img{i}.png") for i in range(2)] == [None, None]
    code, out, _ = run(capsys, "--images", folder, "--model", blip_dir)
    assert code == 0 and out.splitlines()[-1] == "wrote 2 caption file(s)", out
    for i, line in enumerate(out.splitlines()[:2]):
        text = (folder / f"img{i}.txt").read_text().strip()
        assert text and line == f"{folder / f'img{i}.png'} -> img{i}.txt (was empty): {text}"


def test_unreadable_pictures_are_refused_together_before_the_model_loads(tmp_path, capsys):
    """A picture whose header reads but whose pixels do not (cut short) would stop train too: every such picture
    is named in one error before the model loads, no caption written."""
    folder = write_images(tmp_path / "pics", n=3)
    for name in ("img1.png", "img2.png"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    code, _, err = run(capsys, "--images", folder, "--model", "nobody/no-such-blip")  # (never loaded)
    assert code == 2 and "2 of the 3 pictures cannot be read" in err, err
    assert str(folder / "img1.png") in err and str(folder / "img2.png") in err and "move it out of the folder" in err
    assert not list(folder.glob("*.txt"))
    with pytest.raises(DataError, match="img1.png"):  # (train's loader, after its model loaded)
        load_training_images(find_images(folder), 32)


def test_a_dataset_configs_subsets_are_captioned_with_the_suffix_each_reads(blip_dir, tmp_path, capsys):
    """--dataset-config: each subset's pictures get the caption file that subset reads (its caption_extension,
    else train's own NAME.txt), and a caption file is kept only under that exact name."""
    a, b = write_images(tmp_path / "a", n=2), write_images(tmp_path / "b", n=2)
    (a / "img0.txt").write_text("not read by subset a\n")  # (a reads NAME.cap only: img0 has no caption)
    (a / "img1.cap").write_text("kept\n")
    (b / "img0.txt").write_text("kept too\n")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f'[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "{a}"\n  caption_extension = "cap"\n'
                       f'  [[datasets.subsets]]\n  image_dir = "{b}"\n')
    code, out, _ = run(capsys, "--dataset-config", dataset, "--model", blip_dir)
    assert code == 0 and out.splitlines()[-1].startswith("wrote 2 caption file(s), kept 2"), out
    assert f"{a / 'img0.png'} -> img0.cap: " in out and f"{b / 'img1.png'} -> img1.txt: " in out
    assert (a / "img0.txt").read_text() == "not read by subset a\n" and (a / "img1.cap").read_text() == "kept\n"
    assert not (a / "img1.txt").exists() and not list(b.glob("*.cap"))
    found = picture_set(subsets=dataset_subsets(dataset))
    captions = [read_caption(p, e) for p, e in zip(found.paths, found.caption_extensions)]
    assert None not in captions and captions[1] == "kept" and captions[2] == "kept too"


def test_a_killed_runs_temporary_caption_file_is_cleared_and_a_users_hidden_files_kept(blip_dir, tmp_path, capsys):
    """A kill mid-write left `.img1.txt.XXXXXXXX.tmp` beside the pictures; the next run writes img1.txt and removes
    it, not a hidden file of another name."""
    folder = write_images(tmp_path / "pics", n=2)
    stale, mine = folder / ".img1.txt.abcdefgh.tmp", folder / ".notes.txt.abcdefgh.tmp"
    stale.write_text("a half capt")
    mine.write_text("mine")
    assert run(capsys, "--images", folder, "--model", blip_dir)[0] == 0
    assert not stale.exists() and mine.exists() and (folder / "img1.txt").exists()
