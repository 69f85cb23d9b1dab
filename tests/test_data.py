"""Tests for textinv.data: finding, loading and preparing training pictures, and their captions."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import threading
import unicodedata
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageDraw

from textinv import data
from textinv.data import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    AnimatedImageWarning,
    CaptionLinesWarning,
    CaptionSampler,
    CaptionWithoutMarkerWarning,
    EmptyCaptionWarning,
    SkippedFilesWarning,
    SmallImageWarning,
    TrainingImage,
    bucket_size,
    bucket_sizes,
    check_property,
    default_templates,
    find_images,
    flip_default,
    load_image,
    load_training_images,
    make_caption,
    no_upscale_size,
    prepare_image,
    random_hflip,
    random_windows,
    read_caption,
    read_template_file,
    to_rgb,
)
from textinv.errors import ConfigError, DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(path, color=RED, size=(16, 16), mode="RGB", **save):
    Image.new(mode, size, color).save(path, **save)
    return path


def noise_png(path, size=(32, 32)):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def caught(category):
    """Collect warnings of one category raised inside the `with` block."""

    class Recorder:
        def __enter__(self):
            self._cm = warnings.catch_warnings(record=True)
            self._all = self._cm.__enter__()
            warnings.simplefilter("always")
            return self

        def __exit__(self, *exc):
            self._cm.__exit__(*exc)
            self.list = [w.message for w in self._all if issubclass(w.category, category)]

    return Recorder()


def pixel(tensor, row, col):
    """The 0..255 RGB colour of a prepared tensor at (row, col)."""
    return tuple(round(float(v)) for v in (tensor[:, row, col] + 1) * 127.5)


def close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------------------
# finding images


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        find_images(tmp_path / "nowhere")


def test_a_file_is_not_a_folder(tmp_path):
    path = solid(tmp_path / "a.png")
    with pytest.raises(DataError, match="a.png"):
        find_images(path)


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no images found in .*3-10"):
        find_images(tmp_path)


def test_junk_is_skipped_with_one_warning_naming_it(tmp_path):
    solid(tmp_path / "b.jpg")
    solid(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a {} on a beach")  # caption beside a picture: expected
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))  # hidden: expected
    (tmp_path / "Thumbs.db").write_bytes(bytes(64))  # OS litter: expected
    (tmp_path / "junk.bin").write_bytes(np.random.default_rng(1).bytes(200))
    (tmp_path / "notes.md").write_text("# my cat\n")
    (tmp_path / "fake.png").write_bytes(np.random.default_rng(2).bytes(200))  # named like a picture, is not
    (tmp_path / "orphan.txt").write_text("a caption for nothing")
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "c.png")  # subfolders are not searched

    with caught(SkippedFilesWarning) as rec:
        found = find_images(tmp_path)

    assert found == [tmp_path / "a.png", tmp_path / "b.jpg"]
    assert len(rec.list) == 1
    message = str(rec.list[0])
    for name in ("junk.bin", "notes.md", "fake.png", "orphan.txt"):
        assert name in message
    assert "fake.png (named as a picture but unreadable" in message  # not left to look like a misplaced file
    assert "; and it holds pictures itself, so only they are read, not its subfolders (sub): subfolders are not " \
           "searched" in message  # (in the same one warning)
    for name in ("a.txt", ".DS_Store", "Thumbs.db", "c.png"):
        assert name not in message


def test_a_picture_that_cannot_be_opened_is_said_to_be_so_not_damaged(tmp_path, monkeypatch):
    """A picture copied with another user's permissions (sudo cp, a container's volume) was "named as a picture but
    unreadable: damaged ...; re-save it", advice that cannot be followed on a file one cannot open."""
    solid(tmp_path / "a.png")
    solid(tmp_path / "locked.png")

    def guarded(path, *args, **kwargs):
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", guarded, raising=False)
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    assert "locked.png (cannot be opened: Permission denied; give yourself read permission" in str(rec.list[0])


def test_a_skipped_picture_says_what_to_do(tmp_path):
    """An empty file (a download or sync that never finished) is said to be empty, and one Pillow cannot decode
    (such as a float RGB TIFF) gets the fix: the message only said "damaged, or not what its name says"."""
    solid(tmp_path / "a.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "hdr.tif").write_bytes(b"II*\x00" + bytes(60))  # a TIFF header Pillow cannot make sense of
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    message = str(rec.list[0])
    assert "empty.jpg (an empty file" in message
    assert "hdr.tif (named as a picture but unreadable" in message and "re-save it as PNG or JPEG" in message


# the start of an iPhone's HEIC photo (an ISO box "ftyp" of brand heic) and of a JPEG XL codestream
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
JXL_HEAD = b"\xff\x0a" + bytes(64)


def test_a_heic_or_jpeg_xl_photo_is_said_to_need_converting_not_to_be_damaged(tmp_path):
    """An iPhone's HEIC photo was "named as a picture but unreadable: damaged, not what its name says, or a kind
    Pillow cannot decode, such as float TIFF" and then "(Pillow cannot read HEIC photos...)" in a second bracket; given
    by name (--init-image, caption) it said only "Pillow recognises no picture in it"."""
    solid(tmp_path / "a.png")
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIC_HEAD)
    (tmp_path / "scan.jxl").write_bytes(JXL_HEAD)
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    message = str(rec.list[0])
    assert ("IMG_0001.HEIC (HEIC, which this Pillow cannot read: convert it to JPEG or PNG; an iPhone takes JPEG "
            "photos with Settings > Camera > Formats > Most Compatible)") in message
    assert "scan.jxl (JPEG XL, which this Pillow cannot read: convert it to JPEG or PNG)" in message
    assert "damaged" not in message
    with pytest.raises(DataError, match=r"IMG_0001.HEIC: it is HEIC, which this Pillow cannot read: convert it"):
        load_image(tmp_path / "IMG_0001.HEIC")


def test_an_avif_is_said_to_need_a_newer_pillow_only_where_pillow_cannot_read_avif(tmp_path, monkeypatch):
    """Pillow reads AVIF from 11.2 (built with libavif): there a bad .avif is damaged; before, it needs converting."""
    (tmp_path / "a.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(64))
    readable = {**Image.registered_extensions(), ".avif": "AVIF"}
    monkeypatch.setattr(Image, "registered_extensions", lambda: readable)
    with pytest.raises(DataError) as known:
        load_image(tmp_path / "a.avif")
    monkeypatch.setattr(Image, "registered_extensions", lambda: {k: v for k, v in readable.items() if k != ".avif"})
    with pytest.raises(DataError) as unknown:
        load_image(tmp_path / "a.avif")
    assert "Pillow 11.2" not in str(known.value)
    assert str(unknown.value).endswith("a.avif: it is AVIF, which this Pillow cannot read: convert it to JPEG or "
                                       "PNG, or use Pillow 11.2 or later built with AVIF")


def test_folder_of_only_junk_is_a_data_error(tmp_path):
    (tmp_path / "notes.md").write_text("nothing here")
    with pytest.warns(SkippedFilesWarning), pytest.raises(DataError, match="no images found"):
        find_images(tmp_path)


def test_folder_whose_pictures_are_in_subfolders_names_them(tmp_path):
    # subfolders not in kohya's layout are not searched: the error names them and both ways out
    (tmp_path / "sks dog").mkdir()
    solid(tmp_path / "sks dog" / "a.png")
    with pytest.raises(DataError, match=r"subfolders \(sks dog\) are not searched.*e.g. .*sks dog, or name the "
                                        r"subfolders as kohya does.*10_sks dog"):
        find_images(tmp_path)
    with pytest.raises(DataError, match=r"10_sks dog\), to score with them all$"):
        find_images(tmp_path, "score")


def test_a_training_runs_folder_given_as_the_pictures_is_said_to_be_one(tmp_path):
    """A run's --out as the pictures (score takes it as --embedding) was refused in training's words, "give the
    folder that holds the pictures itself, e.g. run1/checkpoints ... to train on them all"."""
    run = tmp_path / "run1"
    for sub in ("checkpoints", "samples"):
        (run / sub).mkdir(parents=True)
    (run / "config.yaml").write_text("token: <x>\n")
    with pytest.raises(DataError, match=rf"^{run} is a training run's folder \(it holds config.yaml\), not a folder "
                                        rf"of pictures; give the run with embedding='{run}', and with images= the "
                                        rf"folder of the pictures themselves") as caught, \
            pytest.warns(SkippedFilesWarning, match="config.yaml"):
        find_images(run, "score")
    assert "checkpoints" not in str(caught.value) and "to train on" not in str(caught.value)
    with pytest.raises(DataError, match=r"not a folder of pictures; give the folder of the pictures themselves$"), \
            pytest.warns(SkippedFilesWarning):
        find_images(run)


def test_kohya_layout_reads_each_folder_with_its_repeat_count(tmp_path):
    """`--images img/` with kohya's `img/10_a/`, `img/3_b/`: was "no images found ... not searched"."""
    from textinv.data import describe_kohya, picture_names, picture_repeats

    for name in ("10_a", "3_b toy"):
        (tmp_path / name).mkdir()
    solid(tmp_path / "10_a" / "x.png")
    solid(tmp_path / "10_a" / "y.jpg")
    (tmp_path / "10_a" / "x.txt").write_text("a {} on grass")  # captions beside the pictures, as in a plain folder
    solid(tmp_path / "3_b toy" / "x.png")  # (the same name as 10_a's: told apart by the folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        found = find_images(tmp_path)
    assert found == [tmp_path / "10_a" / "x.png", tmp_path / "10_a" / "y.jpg", tmp_path / "3_b toy" / "x.png"]
    assert picture_repeats(tmp_path, found) == [10, 10, 3]
    assert picture_names(tmp_path, found) == ["10_a/x.png", "10_a/y.jpg", "3_b toy/x.png"]
    assert describe_kohya(tmp_path, found) == f"{tmp_path}: 2 kohya folders, 10_a (2 pictures x10), 3_b toy (1 x3)"
    assert [p.caption for p in load_training_images(found, 8)] == ["a {} on grass", None, None]
    # a plain folder, even one named as a kohya folder (given directly), is read as it always was
    plain = find_images(tmp_path / "10_a")
    assert picture_repeats(tmp_path / "10_a", plain) == [1, 1] and describe_kohya(tmp_path / "10_a", plain) is None


def test_kohya_subfolders_without_a_repeat_count_are_warned_and_skipped(tmp_path):
    """As kohya's sd-scripts skips ("ignore directory without repeats") a folder whose name does not start with a
    number and an underscore, and one of 0 repeats; an empty one is said too."""
    for name in ("10_a", "extra", "0_old", "5_empty", "10"):
        (tmp_path / name).mkdir()
        if name != "5_empty":
            solid(tmp_path / name / "p.png")
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "10_a" / "p.png"]
    assert len(rec.list) == 1
    message = str(rec.list[0])
    for said in ("extra (not named <repeats>_<words>", "0_old (0 repeats)", "5_empty (no pictures", "10 (not named"):
        assert said in message
    assert "10_a" not in message
    (tmp_path / "10_a" / "p.png").unlink()
    with pytest.warns(SkippedFilesWarning), pytest.raises(DataError, match="no images found in the kohya folders"):
        find_images(tmp_path)


def test_a_kohya_folder_named_by_a_date_is_refused_not_read_as_millions_of_repeats(tmp_path):
    """'20240101_trip' would be 20 million repeats: an epoch table of gigabytes, built before the first step."""
    for name in ("20240101_trip", "10_a"):
        (tmp_path / name).mkdir()
        solid(tmp_path / name / "p.png")
    with pytest.raises(DataError, match=r"20240101_trip reads as 20,240,101 repeats .*rename it .*10_20240101_trip"):
        find_images(tmp_path)
    (tmp_path / "20240101_trip").rename(tmp_path / "10000_trip")  # the largest count taken
    assert len(find_images(tmp_path)) == 2


def test_pictures_beside_kohya_folders_are_read_and_the_folders_named_as_left_out(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "10_more").mkdir()
    solid(tmp_path / "10_more" / "b.png")
    (tmp_path / "backup").mkdir()  # (named in the same one warning: every subfolder left out is)
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    assert len(rec.list) == 1
    said = str(rec.list[0])
    assert "holds pictures itself, so only they are read, not its subfolders (10_more, backup)" in said
    assert f"to train on its kohya folders (10_more) too, move the pictures into a folder of their own such as " \
           f"{tmp_path / '1_pictures'}" in said


def test_a_plain_subfolder_beside_pictures_is_named_as_left_out(tmp_path):
    """A subfolder not in kohya's `<repeats>_<words>` way (`raw/`) beside the pictures was passed over without a
    word: its pictures are not read (subfolders are not searched), and the warning says so, once."""
    solid(tmp_path / "a.png")
    for name in ("raw", "more"):
        (tmp_path / name).mkdir()
        solid(tmp_path / name / "b.png")
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    assert [str(w) for w in rec.list] == [
        f"{tmp_path} holds pictures itself, so only they are read, not its subfolders (more, raw): subfolders are "
        f"not searched; to train on their pictures, move them into {tmp_path}, or give a subfolder as the folder of "
        f"pictures"]


def test_camera_raw_is_skipped_with_a_hint_not_trained_from_its_preview(tmp_path):
    solid(tmp_path / "a.png")
    solid(tmp_path / "IMG_0001.DNG", format="TIFF", size=(160, 120))  # a RAW file is a TIFF with a preview first
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    assert len(rec.list) == 1 and "IMG_0001.DNG (camera RAW" in str(rec.list[0])


def test_eps_without_ghostscript_is_skipped_with_a_hint(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: False)
    solid(tmp_path / "a.png")
    solid(tmp_path / "logo.eps")  # Pillow reads an EPS header, but needs Ghostscript to draw it
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png"]
    assert len(rec.list) == 1 and "logo.eps (EPS needs Ghostscript" in str(rec.list[0])


def test_clean_folder_gives_no_warning(tmp_path):
    solid(tmp_path / "a.webp")
    solid(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("{} in snow")
    (tmp_path / "b.TXT").write_text("{} on grass")  # upper case, as Windows tools may write it
    with caught(Warning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.webp", tmp_path / "b.png"]
    assert rec.list == []
    assert read_caption(tmp_path / "a.webp") == "{} in snow"
    assert read_caption(tmp_path / "b.png") == "{} on grass"


def test_a_caption_file_of_several_lines_is_joined_and_said(tmp_path):
    """kohya's scripts train on a caption file's first line (its wildcard option picks a line a step); textinv
    joins the lines, as the web UI reads the file: said once, naming the file, so alternatives are not trained as
    one caption unnoticed. Blank lines around one caption are no second line."""
    for name in "abc":
        solid(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a {} on grass\n\n")
    (tmp_path / "b.txt").write_text("a {} on grass\r\na {} in snow\n")
    with caught(CaptionLinesWarning) as rec:
        pictures = load_training_images(find_images(tmp_path), 8)
    assert [p.caption for p in pictures] == ["a {} on grass", "a {} on grass a {} in snow", None]
    assert len(rec.list) == 1 and f"{tmp_path / 'b.txt'} (2 lines)" in str(rec.list[0])
    assert "a.txt" not in str(rec.list[0]) and "give --caption-wildcards to draw one of them" in str(rec.list[0])
    with warnings.catch_warnings():  # (with wildcards the lines are meant: each a caption, `CaptionSampler`)
        warnings.simplefilter("error", CaptionLinesWarning)
        load_training_images(find_images(tmp_path), 8, wildcards=True)


def test_empty_caption_files_are_said_once_naming_the_first_few(tmp_path):
    """An empty caption file silently meant "no caption" (the templates train its picture), where kohya's scripts
    train on the empty text: said once, with how many there are and the first three, and what textinv does."""
    for name in "abcde":
        solid(tmp_path / f"{name}.png")
    for name in "abcd":
        (tmp_path / f"{name}.txt").write_text(" \n" if name == "b" else "")
    (tmp_path / "e.txt").write_text("a {} on grass")
    with caught(EmptyCaptionWarning) as rec:
        pictures = load_training_images(find_images(tmp_path), 8)
    assert [p.caption for p in pictures] == [None] * 4 + ["a {} on grass"]
    assert len(rec.list) == 1, [str(r) for r in rec.list]
    said = str(rec.list[0])
    assert said.startswith(f"4 caption file(s) are empty: {tmp_path / 'a.txt'}, {tmp_path / 'b.txt'}, "
                           f"{tmp_path / 'c.txt'}, ...;"), said
    assert "d.txt" not in said and "train on the templates" in said and "kohya's scripts train on the empty" in said
    (tmp_path / "a.txt").unlink()  # (no caption file at all: the templates, as meant, said nowhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyCaptionWarning)
        load_training_images([tmp_path / "a.png", tmp_path / "e.png"], 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need os.mkfifo")
def test_named_pipe_is_skipped_not_opened(tmp_path):
    solid(tmp_path / "a.png")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    result = {}

    def run():
        with caught(SkippedFilesWarning) as rec:
            result["found"] = find_images(tmp_path)
        result["warnings"] = rec.list

    # in a thread, so that a find_images that opens the pipe (and waits for a writer) fails the test, not hangs it
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        with contextlib.suppress(OSError):  # be the writer the open waits for, so the thread ends
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
        pytest.fail("find_images opened the named pipe and blocked")
    assert result["found"] == [tmp_path / "a.png"]
    assert len(result["warnings"]) == 1
    assert "pipe.png (not a regular file)" in str(result["warnings"][0])


def test_broken_link_is_reported_as_one(tmp_path):
    solid(tmp_path / "a.png")
    try:
        (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
        (tmp_path / "b.png").symlink_to(tmp_path / "a.png")  # a link to a picture is a picture
    except OSError:
        pytest.skip("cannot make symbolic links here")
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.png"]
    assert len(rec.list) == 1
    assert "gone.jpg (a broken link)" in str(rec.list[0])


# ---------------------------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file_is_a_data_error_naming_it(tmp_path, fmt):
    whole = tmp_path / f"whole.{fmt}"
    noise_png(tmp_path / "n.png")
    Image.open(tmp_path / "n.png").save(whole)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    assert find_images(tmp_path)  # the header is intact, so it counts as a picture...
    with pytest.raises(DataError, match=f"cut.{fmt}"):
        load_image(cut)  # ...but reading it fails cleanly
    assert load_image(whole).size == (32, 32)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="gone.png"):
        load_image(tmp_path / "gone.png")


def test_transparency_is_composited_onto_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not black
    assert out.getpixel((1, 0)) == RED  # opaque stays as it was
    assert close(out.getpixel((2, 0)), (127, 127, 255), tol=2)  # half-transparent blue over white


def test_grey_with_alpha_is_composited_onto_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (10, 255)])
    img.save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (10, 10, 10)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 green, index 1 red
    img.putdata([0, 1])
    img.save(tmp_path / "p.png", transparency=0)  # index 0 is transparent
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == RED


@pytest.mark.parametrize("fmt, tol", [("tiff", 0), ("jpeg", 4)])
def test_cmyk_cyan_becomes_rgb_cyan(tmp_path, fmt, tol):
    path = solid(tmp_path / f"c.{fmt}", color=(255, 0, 0, 0), size=(8, 8), mode="CMYK")
    out = load_image(path)
    assert out.mode == "RGB"
    assert close(out.getpixel((4, 4)), (0, 255, 255), tol)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # (65280 = 255 x 256 tells 257 from 256: 254.0 of 255, where / 256 gives 255)
    Image.fromarray(np.array([[0, 32768, 65535, 257, 65280]], dtype=np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really 16-bit on disk
    out = load_image(tmp_path / "g16.png")
    assert [out.getpixel((x, 0)) for x in range(5)] == [(v, v, v) for v in (0, 128, 255, 1, 254)]


def test_big_endian_sixteen_bit_tiff(tmp_path):
    img = Image.new("I;16B", (2, 1))
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    img.save(tmp_path / "g16b.tiff")
    out = load_image(tmp_path / "g16b.tiff")
    assert [out.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (128, 128, 128)]


def test_float_grey_in_unit_range(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tiff")
    out = load_image(tmp_path / "f.tiff")
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I", [0, 32768, 65280, 65535], [0, 128, 254, 255]),  # 16-bit data held as 32-bit ints
        ("I", [0, 100, 255], [0, 100, 255]),  # 8-bit data held as ints
        ("I", [-1000, 0, 1000], [0, 128, 255]),  # no known range: stretched
        ("F", [0.0, 127.0, 255.0], [0, 127, 255]),
    ],
)
def test_wide_grey_ranges(mode, values, expected):
    dtype = np.int32 if mode == "I" else np.float32
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    out = to_rgb(img)
    assert [out.getpixel((x, 0))[0] for x in range(len(values))] == expected


@pytest.mark.parametrize(
    "mode, value",
    [("F", -5.0), ("F", 1e6), ("I", 70000), ("I", -3)],  # outside every fixed range, so there is no range to stretch
)
def test_constant_wide_grey_is_mid_grey(tmp_path, mode, value):
    dtype = np.int32 if mode == "I" else np.float32
    Image.fromarray(np.full((4, 3), value, dtype=dtype)).save(tmp_path / "c.tiff")
    assert Image.open(tmp_path / "c.tiff").mode == mode
    out = load_image(tmp_path / "c.tiff")
    assert set(out.getdata()) == {(128, 128, 128)}


def test_constant_float_grey_keeps_infinities_extreme():
    img = Image.fromarray(np.array([[-5.0, np.inf, -np.inf, np.nan]], dtype=np.float32))
    out = to_rgb(img)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [128, 255, 0, 0]


def test_any_conversion_failure_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    path = solid(tmp_path / "odd.png")

    def broken(img):
        raise OSError("decoder exploded")

    monkeypatch.setattr(data, "to_rgb", broken)
    with pytest.raises(DataError, match=r"odd\.png.*decoder exploded"):
        load_image(path)


def test_sixteen_bit_grey_transparency_is_composited_onto_white(tmp_path):
    values = np.array([[1000, 1001, 0, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "t16.png", transparency=1000)
    with Image.open(tmp_path / "t16.png") as img:
        assert img.mode == "I;16" and img.info["transparency"] == 1000  # really 16-bit with a tRNS key on disk
    out = load_image(tmp_path / "t16.png")
    # the key -> white; 1001 (the same 8-bit level, 4) stays opaque and dark
    assert [out.getpixel((x, 0)) for x in range(4)] == [(255, 255, 255), (4, 4, 4), (0, 0, 0), (255, 255, 255)]


def test_one_bit_and_grey_become_rgb(tmp_path):
    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    bw.save(tmp_path / "bw.png")
    out = load_image(tmp_path / "bw.png")
    assert out.mode == "RGB" and [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]
    out = load_image(solid(tmp_path / "l.png", color=77, mode="L"))
    assert out.getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("orientation, top, bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_rotation_is_applied(tmp_path, orientation, top, bottom):
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: turn 90 degrees clockwise to view; 8: anticlockwise
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)

    out = load_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)  # portrait now
    assert close(out.getpixel((10, 5)), top, tol=8)
    assert close(out.getpixel((10, 34)), bottom, tol=8)


def test_embedded_srgb_profile_keeps_colours(tmp_path):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    solid(tmp_path / "p.png", color=(200, 100, 50), icc_profile=profile)
    assert close(load_image(tmp_path / "p.png").getpixel((0, 0)), (200, 100, 50), tol=1)


def _xyz_tag(x, y, z):
    return b"XYZ " + bytes(4) + b"".join(struct.pack(">i", round(v * 65536)) for v in (x, y, z))


def rgb_icc_profile(red, green, blue):
    """A minimal ICC v2 RGB profile with these primaries (D50 XYZ) and linear tone curves."""
    linear = b"curv" + bytes(4) + struct.pack(">I", 0)
    tags = [(b"wtpt", _xyz_tag(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz_tag(*red)), (b"gXYZ", _xyz_tag(*green)),
            (b"bXYZ", _xyz_tag(*blue)), (b"rTRC", linear), (b"gTRC", linear), (b"bTRC", linear)]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, payload in tags:
        table += signature + struct.pack(">II", start + len(body), len(payload))
        body += payload + bytes(-len(payload) % 4)
    header = (struct.pack(">I", start + len(body)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(28) + _xyz_tag(0.9642, 1.0, 0.8249)[8:] + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + body


def test_embedded_profile_is_converted_to_srgb(tmp_path):
    # sRGB's primaries adapted to D50, with red and green swapped: stored red means sRGB green
    srgb_red, srgb_green, srgb_blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    swapped = rgb_icc_profile(srgb_green, srgb_red, srgb_blue)
    solid(tmp_path / "p.png", color=RED, icc_profile=swapped)
    assert close(load_image(tmp_path / "p.png").getpixel((0, 0)), GREEN, tol=2)


def test_broken_profile_falls_back_to_plain_conversion(tmp_path):
    solid(tmp_path / "p.png", color=(200, 100, 50), icc_profile=b"not a profile")
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (200, 100, 50)


def test_palette_picture_with_a_profile_is_converted_to_srgb(tmp_path):
    srgb_red, srgb_green, srgb_blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    swapped = rgb_icc_profile(srgb_green, srgb_red, srgb_blue)
    Image.new("RGB", (8, 8), RED).convert("P").save(tmp_path / "p.png", icc_profile=swapped)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert close(load_image(tmp_path / "p.png").getpixel((0, 0)), GREEN, tol=2)


def test_pillow_bomb_limit_is_lifted_and_ours_applies(tmp_path, monkeypatch):
    path = solid(tmp_path / "a.png", size=(32, 32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse 1024 pixels (> 2 x 100)
    with caught(Warning) as rec:
        assert find_images(tmp_path) == [path]
        assert load_image(path).size == (32, 32)
    assert rec.list == []
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's setting is put back

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="32x32"):
        load_image(path)


# ---------------------------------------------------------------------------------------------------------------
# preparing


def test_tiny_image_is_upscaled_with_a_warning(tmp_path):
    path = solid(tmp_path / "tiny.png", color=(255, 0, 128), size=(8, 8))
    with pytest.warns(SmallImageWarning) as rec:
        (image,) = load_training_images([path], 32)
    message = str(rec[0].message)
    assert "tiny.png" in message and "8x8" in message and "32" in message
    assert image.pixels.shape == (3, 32, 32) and image.pixels.dtype == torch.float32
    expected = torch.tensor([1.0, -1.0, 128 / 127.5 - 1]).view(3, 1, 1)
    assert torch.allclose(image.pixels, expected.expand(3, 32, 32), atol=1e-6)


@pytest.mark.parametrize("name, save", [
    ("turn.gif", {}), ("turn.png", {}), ("turn.webp", {"lossless": True}), ("pages.tif", {})])
def test_an_animated_or_multi_page_picture_trains_its_first_frame_and_says_so(tmp_path, name, save):
    """A GIF, APNG or WebP of a turning object, or a TIFF of several pages, trained its first frame in silence: a
    user who gave it for its many views learned one."""
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    path = tmp_path / name
    frames[0].save(path, save_all=True, append_images=frames[1:], **save)
    still = solid(tmp_path / "still.gif")
    with caught(AnimatedImageWarning) as rec:
        first, _ = load_training_images([path, still], 16)
    assert [str(w) for w in rec.list] == [
        f"1 picture(s) are animated or have several pages, and only the first frame of each is trained: {path} "
        "(3 frames); to train on other frames, save them as pictures of their own"]
    assert close(pixel(first.pixels, 8, 8), RED)


def test_a_phone_jpeg_holding_more_pictures_is_no_animation(tmp_path):
    """A phone's JPEG is often an MPO, its second picture a preview, a depth or an HDR gain map: not a frame."""
    path = tmp_path / "IMG_0001.jpg"
    solid(path, format="MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))])
    with Image.open(path) as opened:
        assert opened.n_frames == 2
    with caught(AnimatedImageWarning) as rec:
        load_training_images([path], 16)
    assert rec.list == []


def test_big_photo_is_cropped_from_its_centre(tmp_path):
    img = Image.new("RGB", (4000, 3000), BLUE)
    img.paste(RED, (0, 0, 2000, 3000))  # left half red; the centre square spans x = 500..3500
    img.save(tmp_path / "big.jpg")
    with caught(Warning) as rec:
        (image,) = load_training_images([tmp_path / "big.jpg"], 64)
    assert rec.list == []
    assert image.pixels.shape == (3, 64, 64)
    assert close(pixel(image.pixels, 32, 10), RED, tol=6)
    assert close(pixel(image.pixels, 32, 54), BLUE, tol=6)


def big_photo(path, size, orientation=1, mode="RGB", **save):
    """A smooth, lopsided picture of `size` as stored, saved as JPEG with an EXIF orientation (1: upright)."""
    coarse = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95, **save)
    return path


def decoded_sizes(monkeypatch):
    """The size of every picture `load_training_images` hands to `prepare_image`, as decoded."""
    sizes = []
    prepare = data.prepare_image
    monkeypatch.setattr(data, "prepare_image", lambda img, *a, **k: sizes.append(img.size) or prepare(img, *a, **k))
    return sizes


@pytest.mark.parametrize("orientation, mode, save", [(o, "RGB", {}) for o in range(1, 9)] + [
    (6, "L", {}), (1, "CMYK", {}), (8, "RGB", {"progressive": True})])
def test_a_big_jpeg_is_decoded_at_a_reduced_scale_and_trains_on_the_same_pixels(tmp_path, monkeypatch, orientation,
                                                                                  mode, save):
    # 1601x1199 stored; at 64 (x3: Pillow's reducing gap) libjpeg may decode it at 1/4, 401x300, whose last column
    # and row are part-pixels (400.25 x 299.75), on the left or top once EXIF turns it
    path = big_photo(tmp_path / "big.jpg", (1601, 1199), orientation, mode, **save)
    turned = orientation >= 5
    whole = prepare_image(load_image(path), 64)  # the whole picture decoded, upright, then cropped and scaled
    sizes = decoded_sizes(monkeypatch)
    (image,) = load_training_images([path], 64)
    assert sizes == [(300, 401) if turned else (401, 300)]  # not 1601x1199
    assert image.original_size == ((1601, 1199) if turned else (1199, 1601))  # (H, W) as SDXL conditions on it
    levels = (image.pixels - whole).abs() * 127.5
    assert levels.mean() < 0.5 and levels.max() <= 3, (levels.mean(), levels.max())  # the crop is where it was


def test_a_jpegs_fine_detail_survives_its_reduced_decoding(tmp_path):
    # thin red lines 37 pixels apart, 2 apart at 64: decoded at the smallest scale that covers 64 (1/8, block
    # averages) they came out 5-6 levels of 255 softer on average; at 3x the size, Lanczos does the rest as before
    img = Image.new("RGB", (1601, 1199), "white")
    draw = ImageDraw.Draw(img)
    for x in range(0, 1601, 37):
        draw.line([(x, 0), (x + 300, 1199)], fill=(200, 30, 30), width=3)
    img.save(tmp_path / "lines.jpg", quality=95)
    whole = prepare_image(load_image(tmp_path / "lines.jpg"), 64)
    (image,) = load_training_images([tmp_path / "lines.jpg"], 64)
    levels = (image.pixels - whole).abs() * 127.5
    assert levels.mean() < 2 and levels.max() <= 8, (levels.mean(), levels.max())


def test_a_jpeg_is_reduced_no_further_than_its_bucket_needs(tmp_path, monkeypatch):
    # stored 1200x2400, turned upright a 2400x1200 landscape: its bucket at 64 is 88x40, which it keeps three times
    # over at 1/8 (300x150 upright); the sides as stored (2400 wide for 88) would have stopped at 1/4
    path = big_photo(tmp_path / "wide.jpg", (1200, 2400), orientation=6)
    sizes = decoded_sizes(monkeypatch)
    (image,) = load_training_images([path], 64, bucket_step=8)
    size = bucket_size(2400, 1200, 64, 8)
    assert image.pixels.shape == (3, size[1], size[0])
    assert sizes == [(300, 150)] and 300 >= 3 * size[0] and 150 >= 3 * size[1]


def test_a_picture_is_not_copied_whole_after_decoding(tmp_path, monkeypatch):
    path = noise_png(tmp_path / "scan.png", size=(600, 400))
    copied = []
    copy = Image.Image.copy
    monkeypatch.setattr(Image.Image, "copy", lambda self: copied.append(self.size) or copy(self))
    (image,) = load_training_images([path], 64)
    assert (600, 400) not in copied  # (ImageOps.exif_transpose copied it to outlive closing the file)
    assert image.original_size == (400, 600)


@pytest.mark.parametrize("landscape", [True, False])
def test_centre_crop_keeps_the_centre(landscape):
    img = Image.new("RGB", (60, 20), GREEN)
    img.paste(RED, (20, 0, 40, 20))
    img.paste(BLUE, (40, 0, 60, 20))  # green | red | blue
    if not landscape:
        img = img.transpose(Image.Transpose.ROTATE_90)  # 20 wide, 60 tall: blue on top

    cropped = prepare_image(img, 10)
    for row in range(2, 8):
        for col in range(2, 8):
            assert close(pixel(cropped, row, col), RED, tol=2)

    squeezed = prepare_image(img, 12, center_crop=False)  # the whole picture, squeezed
    along = (lambda i: pixel(squeezed, 6, i)) if landscape else (lambda i: pixel(squeezed, i, 6))
    first, last = (GREEN, BLUE) if landscape else (BLUE, GREEN)
    assert close(along(1), first, tol=10) and close(along(6), RED, tol=10) and close(along(10), last, tol=10)


def test_a_width_by_height_size_covers_and_cuts_the_centre_or_squashes_the_whole(tmp_path):
    """--resolution 10x20 (W x H): a 60x20 green | red | blue picture is scaled to cover 10x20 (it already does) and
    its centre cut, all red; with --no-center-crop the whole of it is squashed to 10x20, all three colours."""
    img = Image.new("RGB", (60, 20), GREEN)
    img.paste(RED, (20, 0, 40, 20))
    img.paste(BLUE, (40, 0, 60, 20))
    img.save(tmp_path / "wide.png")
    (cut,) = load_training_images([tmp_path / "wide.png"], (10, 20))
    (squashed,) = load_training_images([tmp_path / "wide.png"], (10, 20), center_crop=False)
    assert cut.pixels.shape == squashed.pixels.shape == (3, 20, 10)
    assert all(close(pixel(cut.pixels, row, col), RED, tol=2) for row in range(20) for col in range(10))
    assert cut.crop_top_left() == (0, 25) and squashed.crop_top_left(center_crop=False) == (0, 0)
    assert close(pixel(squashed.pixels, 10, 1), GREEN, tol=10) and close(pixel(squashed.pixels, 10, 5), RED, tol=10) \
        and close(pixel(squashed.pixels, 10, 8), BLUE, tol=10)
    with pytest.raises(ValueError, match="buckets are made about a square's area"):
        load_training_images([tmp_path / "wide.png"], (10, 20), bucket_step=8)


def test_values_span_minus_one_to_one():
    img = Image.new("RGB", (16, 16), (0, 0, 0))
    img.paste((255, 255, 255), (8, 0, 16, 16))
    pixels = prepare_image(img, 16)
    assert pixels.min().item() == -1.0 and pixels.max().item() == 1.0
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = prepare_image(noisy, 24)
    assert out.dtype == torch.float32 and -1.0 <= out.min() and out.max() <= 1.0


def test_prepare_refuses_bad_input():
    with pytest.raises(ConfigError, match="resolution"):
        prepare_image(Image.new("RGB", (8, 8)), 0)
    with pytest.raises(ValueError, match="RGBA"):
        prepare_image(Image.new("RGBA", (8, 8)), 8)


def test_random_hflip_is_reproducible_and_mirrors():
    pixels = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(random_hflip(pixels, p=1.0), pixels.flip(-1))
    assert torch.equal(random_hflip(pixels, p=0.0), pixels)

    def corners(seed):
        generator = torch.Generator().manual_seed(seed)
        return [random_hflip(pixels, generator)[0, 0, 0].item() for _ in range(20)]

    assert corners(3) == corners(3)
    assert set(corners(3)) == {0.0, 2.0}  # both outcomes happen


# ---------------------------------------------------------------------------------------------------------------
# captions


def test_template_constants():
    for template in OBJECT_TEMPLATES + STYLE_TEMPLATES:
        assert template.count("{}") == 1, template
    assert len(OBJECT_TEMPLATES) == 27 and len(STYLE_TEMPLATES) == 19
    assert "a photo of a {}" in OBJECT_TEMPLATES and "a painting in the style of {}" in STYLE_TEMPLATES
    assert default_templates("object") is OBJECT_TEMPLATES and default_templates("style") is STYLE_TEMPLATES


def test_invalid_property_is_a_config_error():
    with pytest.raises(ConfigError, match="'object', 'style'.*'styel'"):
        check_property("styel")
    with pytest.raises(ConfigError):
        default_templates("Object")
    with pytest.raises(ConfigError):
        flip_default("thing")
    assert flip_default("object") is True and flip_default("style") is True


def test_template_file_with_a1111_markers(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a [name]\n\n  a painting of [filewords], art by [name]  \na {} , [filewords]\n")
    templates = read_template_file(path)
    assert templates == ["a photo of a {}", "a painting of [filewords], art by {}", "a {} , [filewords]"]
    assert make_caption(templates[1], "<s>", "a harbour") == "a painting of a harbour, art by <s>"
    assert make_caption(templates[1], "<s>") == "a painting of art by <s>"
    assert make_caption(templates[2], "<s> <s>_1") == "a <s> <s>_1"
    assert make_caption("[filewords], by [name]", "<s>") == "by <s>"
    assert make_caption("a, [filewords], by {}", "<s>") == "a, by <s>"


def test_template_line_without_marker_is_a_data_error(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}\n\nan oil painting\n")
    with pytest.raises(DataError, match=r"t\.txt, line 3.*an oil painting"):
        read_template_file(path)


def test_empty_or_missing_template_file(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no templates"):
        read_template_file(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="gone.txt"):
        read_template_file(tmp_path / "gone.txt")
    # the web UI's Train tab lists its own files by name: one given so is said to be in the web UI's folder
    with pytest.raises(DataError, match="subject_filewords.txt is one of the web UI's, in its folder "
                                        "stable-diffusion-webui/textual_inversion_templates/"):
        read_template_file(tmp_path / "subject_filewords.txt")


def test_make_caption_refuses_text_without_marker():
    with pytest.raises(ConfigError):
        make_caption("a photo", "<t>")
    with pytest.raises(ConfigError):
        make_caption("a photo of {}", "")


def image(tmp_path, name, caption=None):
    path = solid(tmp_path / f"{name}.png", size=(8, 8))
    if caption is not None:
        (tmp_path / f"{name}.txt").write_text(caption)
    return TrainingImage(path=path, pixels=torch.zeros(3, 8, 8), caption=read_caption(path))


def test_own_caption_is_used_and_others_draw_templates(tmp_path):
    images = [image(tmp_path, "a", "a [name] on a\nbeach\n"), image(tmp_path, "b")]
    assert images[0].caption == "a {} on a beach"
    sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t> <t>_1", torch.Generator().manual_seed(0))
    assert [sampler(0) for _ in range(5)] == ["a <t> <t>_1 on a beach"] * 5
    filled = {t.replace("{}", "<t> <t>_1") for t in OBJECT_TEMPLATES}
    drawn = [sampler(1) for _ in range(30)]
    assert set(drawn) <= filled and len(set(drawn)) > 5


def test_caption_sampling_is_reproducible(tmp_path):
    images = [image(tmp_path, "a")]

    def run(seed):
        sampler = CaptionSampler(images, STYLE_TEMPLATES, "<s>", torch.Generator().manual_seed(seed))
        return [sampler(0) for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_caption_without_marker_gets_token_in_front_with_one_warning(tmp_path):
    images = [image(tmp_path, "a", "on a beach"), image(tmp_path, "b", "in snow"), image(tmp_path, "c", "{} x")]
    with pytest.warns(CaptionWithoutMarkerWarning) as rec:
        sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>")
    assert len(rec) == 1 and "a.txt" in str(rec[0].message) and "b.txt" in str(rec[0].message)
    assert "c.txt" not in str(rec[0].message)
    assert sampler(0) == "<t> on a beach" and sampler(2) == "<t> x"


def test_filewords_templates_take_the_caption_or_else_the_file_name(tmp_path):
    images = [image(tmp_path, "a", "a red hat"), image(tmp_path, "0002"), image(tmp_path, "00003-a blue_cap")]
    with caught(CaptionWithoutMarkerWarning) as rec:
        sampler = CaptionSampler(images, ["a photo of [name], [filewords]"], "<t>")
    assert rec.list == []  # in [filewords] use a caption is not a prompt, so it needs no marker
    assert sampler(0) == "a photo of <t>, a red hat"
    assert sampler(1) == "a photo of <t>"  # a name of numbers only has no words
    assert sampler(2) == "a photo of <t>, a blue_cap"  # as A1111: the file name less its leading numbers
    assert CaptionSampler(images[2:], OBJECT_TEMPLATES, "<t>").captions == [None]  # only for [filewords]


def test_kohya_caption_files_are_read_and_not_called_strays(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("a {} on the grass")
    solid(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("from the txt")
    (tmp_path / "b.caption").write_text("from the caption file")  # both: .txt wins, as the docs say
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [tmp_path / "a.png", tmp_path / "b.png"]
    assert rec.list == []
    assert read_caption(tmp_path / "a.png") == "a {} on the grass"
    assert read_caption(tmp_path / "b.png") == "from the txt"
    solid(tmp_path / "c.png")  # a name made where case does not matter
    (tmp_path / "c.CAPTION").write_text("my dog on a sofa")
    assert read_caption(tmp_path / "c.png") == "my dog on a sofa"
    with caught(CaptionWithoutMarkerWarning) as rec:  # the warning names the file to edit
        CaptionSampler([TrainingImage(path=tmp_path / "c.png", pixels=torch.zeros(3, 8, 8),
                                      caption=read_caption(tmp_path / "c.png"))], OBJECT_TEMPLATES, "<t>")
    assert "c.CAPTION" in str(rec.list[0])


def test_caption_that_names_the_token_gets_all_its_vectors_once(tmp_path):
    # kohya's and A1111's captions write the token itself where it goes, in any case
    images = [image(tmp_path, "a", "a photo of <my-dog> on a sofa"), image(tmp_path, "b", "<My-Dog>, outdoors"),
              image(tmp_path, "c", "<my-dog> <my-dog>_1 asleep"), image(tmp_path, "d", "<my-dog>_1 alone")]
    placeholder = "<my-dog> <my-dog>_1"
    with caught(CaptionWithoutMarkerWarning) as rec:
        sampler = CaptionSampler(images, OBJECT_TEMPLATES, placeholder)
    assert [str(w) for w in rec.list if "a.txt" in str(w) or "b.txt" in str(w) or "c.txt" in str(w)] == []
    assert sampler(0) == "a photo of <my-dog> <my-dog>_1 on a sofa"
    assert sampler(1) == "<my-dog> <my-dog>_1, outdoors"
    assert sampler(2) == "<my-dog> <my-dog>_1 asleep"  # already expanded: kept as it is
    assert sampler(3) == "<my-dog> <my-dog>_1 <my-dog>_1 alone"  # one entry is not the token: warned, put in front
    assert len(rec.list) == 1 and "d.txt" in str(rec.list[0])

    filewords = CaptionSampler(images[:1], ["a [name], [filewords]"], placeholder)
    assert filewords(0) == "a <my-dog> <my-dog>_1, a photo of <my-dog> <my-dog>_1 on a sofa"

    # a bare-word token (kohya's "sks") only as a whole word
    bare = CaptionSampler([image(tmp_path, "e", "sks asks for a Sks treat")], OBJECT_TEMPLATES, "sks sks_1")
    assert bare(0) == "sks sks_1 asks for a sks sks_1 treat"


def test_sampler_refuses_bad_templates(tmp_path):
    images = [image(tmp_path, "a")]
    with pytest.raises(ConfigError):
        CaptionSampler(images, [], "<t>")
    with pytest.raises(ConfigError):
        CaptionSampler(images, "a photo of {}", "<t>")
    with pytest.raises(ConfigError, match="a photo"):
        CaptionSampler(images, ["a photo"], "<t>")


@pytest.mark.parametrize("picture_form, caption_form", [("NFD", "NFC"), ("NFC", "NFD")])
def test_a_caption_named_in_the_other_unicode_form_is_its_pictures(tmp_path, picture_form, caption_form):
    """`café.png` copied from a Mac keeps its é as e + accent (NFD); a `café.txt` written on Linux has the one letter
    (NFC). Linux tells the names apart, so the caption was called a stray and its picture trained on templates."""
    picture = solid(tmp_path / unicodedata.normalize(picture_form, "café.png"))
    (tmp_path / unicodedata.normalize(caption_form, "café.txt")).write_text("a {} in a café", encoding="utf-8")
    with caught(SkippedFilesWarning) as rec:
        assert find_images(tmp_path) == [picture]
    assert rec.list == []
    assert read_caption(picture) == "a {} in a café"


def test_non_utf8_caption_is_a_data_error(tmp_path):
    solid(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 {}")
    with pytest.raises(DataError, match="a.txt"):
        read_caption(tmp_path / "a.png")


# ----------------------------------------------------------------------------------------------------------------
# --alpha-mask: each picture's transparency, prepared as its pixels are


def test_alpha_is_read_from_every_kind_of_transparency(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(9, 9, 9, 0), (9, 9, 9, 200)])
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 255, 0, 255, 0, 0] + [0] * (254 * 3))
    palette.putdata([0, 1])
    palette.save(tmp_path / "p.png", transparency=0)
    Image.fromarray(np.array([[1000, 5]], dtype=np.uint16)).save(tmp_path / "t16.png", transparency=1000)
    Image.new("RGB", (2, 1), RED).save(tmp_path / "opaque.png")
    alphas = {name: data.load_image_and_alpha(tmp_path / name)[1] for name in ("rgba.png", "p.png", "t16.png",
                                                                              "opaque.png")}
    assert list(alphas["rgba.png"].getdata()) == [0, 200]
    assert list(alphas["p.png"].getdata()) == [0, 255]
    assert list(alphas["t16.png"].getdata()) == [0, 255]
    assert alphas["opaque.png"] is None
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)  # the picture is as it was


def test_training_alpha_is_cropped_scaled_and_turned_as_the_picture_is(tmp_path):
    """An EXIF-rotated landscape RGBA photo whose left third is transparent: after the turn to portrait and the
    centre crop, the alpha lines up with the pixels (transparent where the picture shows white)."""
    arr = np.zeros((60, 90, 4), dtype=np.uint8)
    arr[..., :3] = (200, 30, 30)
    arr[..., 3] = 255
    arr[:, :30, 3] = 0  # the left third transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the transparent third ends up at the top
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png", exif=exif)
    (picture,) = load_training_images([tmp_path / "a.png"], 30, use_alpha=True)
    assert picture.alpha.shape == (1, 30, 30) and 0.0 <= picture.alpha.min() and picture.alpha.max() <= 1.0
    white = (picture.pixels > 0.95).all(dim=0)  # composited onto white where transparent
    # turned to 60x90 portrait, rows 15-75 kept (the transparent rows 15-30 of them), scaled by 1/2: rows 0-7.5
    assert white[:7].all() and not white[8:].any()
    assert picture.alpha[0, :5].max() == 0.0 and picture.alpha[0, 7].sub(0.5).abs().max() < 0.01
    assert picture.alpha[0, 10:].min() == 1.0  # (Lanczos rings by 2% beside the edge)
    (plain,) = load_training_images([tmp_path / "a.png"], 30)
    assert plain.alpha is None and torch.equal(plain.pixels, picture.pixels)


def test_a_picture_transparent_all_over_is_refused_with_alpha_mask(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "ghost.png")
    with pytest.raises(DataError, match="ghost.png is transparent all over"):
        load_training_images([tmp_path / "ghost.png"], 8, use_alpha=True)
    assert load_training_images([tmp_path / "ghost.png"], 8)[0].alpha is None  # without it, a white picture


def test_latent_weights_average_the_alpha_and_mirror_with_the_latents(tmp_path):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[..., 3] = 255
    arr[:, :4, 3] = 0  # the left quarter transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "b.png")
    pictures = load_training_images([tmp_path / "a.png", tmp_path / "b.png"], 16, use_alpha=True)
    weights = data.latent_weights(pictures, (2, 2), tmp_path)  # (2 pictures + 2 mirrored, 1, 2, 2)
    assert weights.shape == (4, 1, 2, 2)
    assert torch.allclose(weights[0, 0], torch.tensor([[0.5, 1.0], [0.5, 1.0]]))  # a left latent: half its pixels
    assert torch.equal(weights[1], torch.ones(1, 2, 2)) and torch.equal(weights[3], torch.ones(1, 2, 2))
    assert torch.equal(weights[2], weights[0].flip(-1))
    with pytest.warns(data.AlphaMaskWarning, match="no picture in .* has an alpha channel"):
        data.latent_weights(pictures[1:], (2, 2), tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# tag shuffling and dropout


def test_tag_variation_shuffles_drops_and_keeps_what_it_must():
    rng = np.random.default_rng(0)
    tags = ["red", "on grass", "sunny", "{}", "close-up", "blurry"]
    text = ", ".join(["a photo", *tags])
    shuffled = [data.TagVariation(shuffle=True, keep=1).vary(text, rng) for _ in range(200)]
    assert all(s.startswith("a photo, ") and sorted(s.split(", ")[1:]) == sorted(tags) for s in shuffled)
    assert len(set(shuffled)) > 100
    thinned = [data.TagVariation(dropout=0.5, keep=1).vary(text, rng).split(", ") for _ in range(2000)]
    assert all(t[0] == "a photo" and "{}" in t for t in thinned)  # kept, and the token's tag never dropped
    assert all(t[1:] == [x for x in tags if x in t[1:]] for t in thinned)  # no shuffle: the order stays
    kept = sum(len(t) - 2 for t in thinned) / (2000 * 5)  # each other tag's share of prompts it is in
    assert abs(kept - 0.5) < 0.03
    assert data.TagVariation().vary(text, rng) == text  # nothing asked: the caption as it was


def test_captions_get_seeded_tag_variants_and_templates_stay_as_they_are(tmp_path):
    images = [image(tmp_path, "a", "{}, red, on grass, sunny"), image(tmp_path, "b")]

    def sampler(seed, **kw):
        return CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(seed=seed, **kw))

    varied = sampler(3, shuffle=True).candidates(0)
    assert len(varied) == 256 and all(sorted(v.split(", ")) == ["<t>", "on grass", "red", "sunny"] for v in varied)
    assert len(set(varied)) == 24  # every order of the four tags turns up
    assert varied == sampler(3, shuffle=True).candidates(0) and varied != sampler(4, shuffle=True).candidates(0)
    assert sampler(3, shuffle=True).candidates(1) == sampler(3).candidates(1)  # no caption: the templates
    assert sampler(3).candidates(0) == ["<t>, red, on grass, sunny"]  # nothing asked: one prompt, as before
    filewords = CaptionSampler(images[:1], ["a photo of [name], [filewords]", "art by [name], [filewords]"], "<t>",
                               tags=data.TagVariation(dropout=0.5, seed=0)).candidates(0)
    assert {v.split(",")[0] for v in filewords} == {"a photo of <t>", "art by <t>"}  # templates drawn too
    assert len({len(v.split(", ")) for v in filewords}) > 2  # tags left out in some, not in others
    with pytest.warns(data.TagOptionsWarning, match="no picture has a caption"):
        CaptionSampler(images[1:], OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(shuffle=True))


def test_a_caption_prefix_and_suffix_go_around_each_caption_file_and_leave_the_templates(tmp_path):
    """kohya's caption_prefix and caption_suffix (`process_caption`): prefix + " " + caption + " " + suffix, before
    the tags are varied; its textual inversion's templates replace the whole caption, so they are drawn as they
    are. A prefix naming the token marks it, as kohya's TI users write caption_prefix = their token."""
    images = [image(tmp_path, "a", "{}, red, on grass"), image(tmp_path, "b")]
    sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", prefix="masterpiece,", suffix="best quality")
    assert sampler.candidates(0) == ["masterpiece, <t>, red, on grass best quality"]
    assert sampler.candidates(1) == CaptionSampler(images, OBJECT_TEMPLATES, "<t>").candidates(1)
    varied = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", prefix="masterpiece,",
                            tags=data.TagVariation(shuffle=True, keep=1)).candidates(0)
    assert all(v.startswith("masterpiece, ") for v in varied) and len(set(varied)) > 1  # a tag of the caption's
    marked = [image(tmp_path, "c", "red ball")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.CaptionWithoutMarkerWarning)
        prefixed = CaptionSampler(marked, OBJECT_TEMPLATES, "<t> <t>_1", prefix="<t>")
    assert prefixed.candidates(0) == ["<t> <t>_1 red ball"]
    with pytest.warns(data.TagOptionsWarning, match="a caption prefix or suffix was given, but no picture has a "
                                                    "caption file"):
        CaptionSampler(images[1:], OBJECT_TEMPLATES, "<t>", suffix="best quality")


def test_tag_variation_takes_any_seed_and_keeps_an_unmarked_captions_token_a_tag_of_its_own(tmp_path):
    images = [image(tmp_path, "a", "red, on grass, sunny")]  # no marker: the token goes in front
    with pytest.warns(data.CaptionWithoutMarkerWarning):
        sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(dropout=0.9, seed=-1))
    variants = sampler.candidates(0)  # a negative seed, as `--seed -1` gives
    assert all(v.split(", ")[0] == "<t>" for v in variants)
    assert any(v == "<t>" for v in variants)  # "red" can be left out too: it is not glued to the token


def test_buckets_keep_a_pictures_proportions_within_the_area_and_steps():
    from textinv.data import bucket_size, bucket_sizes

    for resolution, step in ((512, 64), (1024, 64), (64, 16), (16, 4)):
        sizes = bucket_sizes(resolution, step)
        assert (resolution, resolution) in sizes
        for w, h in sizes:
            assert w % step == 0 and h % step == 0 and w * h <= resolution ** 2
            assert resolution // 2 <= min(w, h) and max(w, h) <= 2 * resolution
    assert bucket_size(1000, 1000, 512, 64) == (512, 512)
    assert bucket_size(2000, 3000, 512, 64) == (384, 640) and bucket_size(3000, 2000, 512, 64) == (640, 384)
    assert bucket_size(5000, 1000, 512, 64) == (1024, 256)  # as far as buckets go


@pytest.mark.parametrize("resolution, step", [(624, 64), (500, 64), (96, 64), (1016, 32), (32, 64)])
def test_square_pictures_stay_square_at_a_resolution_between_the_buckets_steps(tmp_path, resolution, step):
    """At a --resolution that is not a multiple of the model's step no width's largest height is its own: square
    pictures were cut to a 9:10 portrait (624 on SD) or to 1:2 (96), the narrowest buckets passed 4:1, and below
    one step there was no bucket at all. The square is the resolution's own, as without buckets."""
    from textinv.data import bucket_size, bucket_sizes

    sizes = bucket_sizes(resolution, step)
    assert bucket_size(900, 900, resolution, step) == (resolution, resolution)
    for w, h in set(sizes) - {(resolution, resolution)}:
        assert w % step == 0 and h % step == 0 and w * h <= resolution ** 2
        assert resolution // 2 <= min(w, h) and max(w, h) <= 2 * resolution
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:, :4] = 255  # a white band at the left edge, which a portrait crop would cut off
    Image.fromarray(arr).save(tmp_path / "square.png")
    (square,) = load_training_images([tmp_path / "square.png"], 24)
    (bucketed,) = load_training_images([tmp_path / "square.png"], 24, bucket_step=16)
    assert torch.equal(bucketed.pixels, square.pixels) and bucketed.crop_top_left() == square.crop_top_left()


def test_a_bucketed_picture_keeps_what_the_square_crops_off(tmp_path):
    arr = np.full((40, 80, 3), 128, np.uint8)  # 2:1, a red band at the left edge, a blue one at the right
    arr[:, :16] = (255, 0, 0)
    arr[:, -16:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    (square,) = load_training_images([tmp_path / "wide.png"], 32)
    (bucketed,) = load_training_images([tmp_path / "wide.png"], 32, bucket_step=8)
    assert square.pixels.shape == (3, 32, 32) and bucketed.pixels.shape == (3, 24, 40)
    assert square.pixels[0, :, 0].mean() < 0.1 and square.pixels[2, :, -1].mean() < 0.1  # the square lost both bands
    assert bucketed.pixels[0, :, 0].mean() > 0.9 and bucketed.pixels[2, :, -1].mean() > 0.9
    # SDXL's crop ids: the 80x40 picture scaled to cover 40x24 is 48x24, cut 4 pixels in from the left
    assert bucketed.crop_top_left() == (0, 4) and square.crop_top_left() == (0, 16)
    (tall,) = load_training_images([tmp_path / "wide.png"], 32, bucket_step=8, center_crop=False)
    assert tall.pixels.shape == (3, 24, 40)


@pytest.mark.parametrize("resolution, step", [(512, 64), (768, 64), (1024, 64), (640, 64), (624, 64)])
def test_buckets_are_the_same_for_portraits_and_landscapes(resolution, step):
    """kohya's make_bucket_resolutions adds every (w, h) with its (h, w); textinv listed each width's largest height
    only, so a 704x320 landscape had its own bucket at 512 and a 320x704 portrait was cut to 320x768's proportions
    (8% of its height gone: the head or the feet)."""
    sizes = set(bucket_sizes(resolution, step))
    assert all((h, w) in sizes for w, h in sizes)
    for short in range(100, 1000, 7):
        w, h = bucket_size(short, 1000, resolution, step)
        assert bucket_size(1000, short, resolution, step) == (h, w)
    assert bucket_size(320, 704, 512, 64) == (320, 704)


def test_keep_tags_counts_the_caption_files_tags_not_the_token_put_in_front(tmp_path):
    """--keep-tags N is kohya's --keep_tokens: the caption file's first N tags stay first and are never dropped. For a
    caption without the token, the token put in front took one of the N places, so the first tag was dropped."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("red, on grass, sunny, outdoors")
    images = load_training_images([tmp_path / "a.png"], 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.CaptionWithoutMarkerWarning)
        sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>",
                                 tags=data.TagVariation(shuffle=True, dropout=0.5, keep=1))
    variants = sampler.candidates(0)
    assert all(v.startswith("<t>, red") for v in variants)
    assert any("on grass" not in v for v in variants) and len({v for v in variants}) > 1  # the rest still varies


def test_an_empty_caption_file_gives_no_filewords_not_the_file_name(tmp_path):
    """A1111 (dataset.py, PersonalizedBase) reads an existing NAME.txt as the picture's words even when it is empty,
    and takes the file name only when there is no .txt. textinv put 'IMG_1234' into every prompt instead."""
    Image.new("RGB", (8, 8)).save(tmp_path / "IMG_1234.png")
    (tmp_path / "IMG_1234.txt").write_text("\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "00007-a red ball.png")  # no caption file: the file name's words
    images = load_training_images([tmp_path / "IMG_1234.png", tmp_path / "00007-a red ball.png"], 8)
    sampler = CaptionSampler(images, ["a photo of [name], [filewords]"], "<t>")
    assert sampler.candidates(0) == ["a photo of <t>"]
    assert sampler.candidates(1) == ["a photo of <t>, a red ball"]


def test_a_subsets_caption_extension_is_its_caption_file_and_no_stray(tmp_path):
    """A subset's caption_extension (".tags") names the file read, whatever else lies beside the picture; its
    caption files are not called strays, as other files are."""
    from conftest import write_images

    from textinv.data import picture_set

    folder = write_images(tmp_path / "a", n=2)
    (folder / "img0.tags").write_text("{}, red square")
    (folder / "img0.txt").write_text("not read")
    (folder / "notes.md").write_text("a stray")
    with pytest.warns(SkippedFilesWarning, match=r"skipped 1 file\(s\) in .*: notes.md$"):
        found = picture_set(subsets=[{"images": str(folder), "repeats": 2, "caption_extension": ".tags"}])
    assert (found.repeats, found.caption_extensions) == ([2, 2], [".tags", ".tags"])
    loaded = load_training_images(found.paths, 16, caption_extensions=found.caption_extensions)
    assert [p.caption for p in loaded] == ["{}, red square", None]


def test_a_subsets_subfolders_are_named_as_left_out(tmp_path):
    """A kohya subset's image_dir is read as kohya reads it, the pictures in it and not in its subfolders (kohya's
    schema has no key to search deeper): its subfolders were passed over without a word; they are named, once."""
    from textinv.data import picture_set

    folder = tmp_path / "dog"
    for name in ("raw", "10_more"):
        (folder / name).mkdir(parents=True)
        solid(folder / name / "b.png")
    solid(folder / "a.png")
    with caught(SkippedFilesWarning) as rec:
        found = picture_set(subsets=[{"images": str(folder), "repeats": 2, "caption_extension": None}])
    assert found.paths == [folder / "a.png"]
    assert [str(w) for w in rec.list] == [
        f"{folder} holds pictures itself, so only they are read, not its subfolders (10_more, raw): a kohya "
        f"subset's pictures are those in its folder (image_dir), not in its subfolders; to train on theirs, move "
        f"them into {folder}, or give each subfolder as a subset of its own"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_a_caption_file_in_utf_16_or_with_a_byte_order_mark_reads_as_in_utf_8(tmp_path, encoding):
    """Windows Notepad saves "Unicode" as UTF-16 with its byte-order mark: it was refused as not UTF-8; the mark says
    what it is, so it reads as the same caption (a template file too)."""
    solid(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a {} in the café", encoding=encoding)
    assert read_caption(tmp_path / "a.png") == "a {} in the café"
    (tmp_path / "t.txt").write_text("a photo of {}\na drawing of {}\n", encoding=encoding)
    assert data.read_template_file(tmp_path / "t.txt") == ["a photo of {}", "a drawing of {}"]
    (tmp_path / "bad.png").write_bytes((tmp_path / "a.png").read_bytes())
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")  # (Latin-1, no mark: not guessed)
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_caption(tmp_path / "bad.png")


def _unit(arr: np.ndarray) -> torch.Tensor:  # (H, W, C) uint8 as prepare_image's (C, H, W) in [-1, 1]
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0


@pytest.mark.parametrize("full, resolution, step, want", [
    ((500, 300), 512, 64, ((500, 300), (448, 256))),  # within the area: its own size, cut down to steps
    ((512, 512), 512, 64, ((512, 512), (512, 512))),
    ((3000, 2000), 512, 64, ((576, 384), (576, 384))),  # a tie of both roundings: kohya takes the height's
    ((700, 1200), 512, 64, ((384, 658), (384, 640))),  # the width's rounding keeps 7:12 closer
    ((1200, 700), 512, 64, ((658, 384), (640, 384))),
    ((40, 900), 512, 64, ((40, 900), (0, 896))),
])
def test_no_upscale_sizes_are_kohyas(full, resolution, step, want):
    """kohya's BucketManager.select_bucket with no_upscale: (resized_size, bucket_reso)."""
    assert no_upscale_size(*full, resolution, step) == want


def test_bucket_no_upscale_keeps_a_small_pictures_own_pixels_and_crop(tmp_path):
    """A picture within the resolution's area trains at its own size cut down to the step, its centre as it is (no
    pixel resampled), with no warning of upscaling; plain buckets enlarge it to a bucket of about the area."""
    arr = np.random.default_rng(0).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "small.png")
    with caught(SmallImageWarning) as small:
        (own,) = load_training_images([tmp_path / "small.png"], 64, bucket_step=8, no_upscale=True, use_alpha=True)
    assert not small.list
    rgb = np.array(to_rgb(Image.open(tmp_path / "small.png")))  # (the transparent parts as textinv reads them)
    assert own.pixels.shape == (3, 24, 48) and torch.equal(own.pixels, _unit(rgb[3:27, 1:49]))
    assert torch.equal(own.alpha, torch.from_numpy(arr[3:27, 1:49, 3:]).permute(2, 0, 1).float() / 255.0)
    assert own.crop_top_left() == (3, 1) and own.original_size == (30, 50)
    with caught(SmallImageWarning) as small:
        (enlarged,) = load_training_images([tmp_path / "small.png"], 64, bucket_step=8)
    assert small.list and enlarged.pixels.shape[-2:] == (48, 80)
    # without --center-crop the whole picture, squeezed into its bucket (by less than a step)
    (squeezed,) = load_training_images([tmp_path / "small.png"], 64, bucket_step=8, no_upscale=True,
                                       center_crop=False)
    assert squeezed.pixels.shape == (3, 24, 48) and squeezed.crop_top_left(center_crop=False) == (0, 0)


def test_bucket_no_upscale_scales_a_large_picture_down_to_the_area(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "large.png")
    (picture,) = load_training_images([tmp_path / "large.png"], 64, bucket_step=8, no_upscale=True)
    assert no_upscale_size(300, 200, 64, 8) == ((72, 48), (72, 48))
    whole = np.array(Image.fromarray(arr).resize((72, 48), Image.Resampling.LANCZOS, reducing_gap=3.0))
    assert picture.pixels.shape == (3, 48, 72)
    assert (picture.pixels - _unit(whole)).abs().max() < 0.05  # (the same picture, up to the resampler's rounding)
    assert picture.crop_top_left() == (0, 0) and picture.original_size == (200, 300)


def test_bucket_no_upscale_random_windows_are_cut_from_the_picture_at_its_own_size(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "small.png")
    (picture,) = load_training_images([tmp_path / "small.png"], 64, bucket_step=8, no_upscale=True,
                                      random_crop=True)
    assert torch.equal(picture.cover, torch.from_numpy(arr).permute(2, 0, 1))  # (not scaled to cover 48x24)
    for window in random_windows([picture], 8, seed=0):
        assert window.pixels.shape == (3, 24, 48)
        assert any(torch.equal(window.pixels, picture.cover[:, t:t + 24, l:l + 48])
                   for t in range(7) for l in range(3))


def test_bucket_no_upscale_refuses_a_picture_under_one_step(tmp_path):
    Image.new("RGB", (6, 40)).save(tmp_path / "thin.png")
    with pytest.raises(DataError, match=r"thin.png is 6x40 pixels, a side under the 8-pixel step of the buckets: "
                                        r"with --bucket-no-upscale a picture is never enlarged"):
        load_training_images([tmp_path / "thin.png"], 64, bucket_step=8, no_upscale=True)


def test_kohyas_separators_split_keep_and_join_tags_as_its_process_caption_does():
    """kohya's caption_separator, keep_tokens_separator and secondary_separator (sd-scripts' `process_caption`):
    tags split by the separator, the part before "|||" kept in front and the part after a second one at the end
    (in place of --keep-tags), tags glued by ";;;" varied as one and then written with the separator; the varied
    tags joined with ", ". Without variation the "|||" is taken out all the same, and ";;;" written as the
    separator."""
    rng = np.random.default_rng(0)
    text = "{}, ink ||| cat;;;black, hat, red, sky ||| art, hd"
    tags = data.TagVariation(shuffle=True, dropout=0.3, keep=3, keep_separator="|||", joiner=";;;")
    varied = [tags.vary(text, rng).split(", ") for _ in range(300)]
    assert all(v[:2] == ["{}", "ink"] and v[-2:] == ["art", "hd"] for v in varied)  # in front, and at the end
    middles = [v[2:-2] for v in varied]
    assert all(set(m) <= {"cat,black", "hat", "red", "sky"} for m in middles)  # glued: one tag, then ","
    assert len({tuple(m) for m in middles}) > 20 and any(len(m) < 4 for m in middles)  # shuffled and dropped
    assert data.TagVariation(keep_separator="|||", joiner=";;;").plain(text) == "{}, ink, cat,black, hat, red, sky, " \
                                                                                "art, hd"
    # another separator: the tags split by it (a comma inside a tag stays), joined with ", " as kohya joins them
    semi = data.TagVariation(shuffle=True, keep=1, separator=";")
    assert {semi.vary("{}; a, b; c", rng) for _ in range(50)} == {"{}, a, b, c", "{}, c, a, b"}
    assert semi.plain("{}; a, b; c") == "{}; a, b; c"  # unvaried: as written, as kohya's
    # one "|||": the part after it varies, and --keep-tags is not used
    once = data.TagVariation(shuffle=True, keep=2, keep_separator="|||")
    assert {once.vary("{}, a ||| c, d", rng) for _ in range(50)} == {"{}, a, c, d", "{}, a, d, c"}


def test_a_sampler_trains_kohyas_separators_and_a_token_put_in_front_is_a_tag_of_its_own(tmp_path):
    images = [image(tmp_path, "a", "{} ||| red; on grass ||| photo"), image(tmp_path, "b", "red; blue")]
    tags = data.TagVariation(separator=";", keep_separator="|||", seed=0)
    assert CaptionSampler(images[:1], OBJECT_TEMPLATES, "<t>", tags=tags).candidates(0) == \
        ["<t>, red, on grass, photo"]  # no variation: "|||" taken out all the same, the tags joined as varied
    varied = CaptionSampler(images[:1], OBJECT_TEMPLATES, "<t>", tags=dataclasses.replace(tags, shuffle=True))
    assert {v for v in varied.candidates(0)} == {"<t>, red, on grass, photo", "<t>, on grass, red, photo"}
    with pytest.warns(data.CaptionWithoutMarkerWarning):
        unmarked = CaptionSampler(images[1:], OBJECT_TEMPLATES, "<t>",
                                  tags=dataclasses.replace(tags, dropout=0.9, keep_separator=""))
    assert "<t>" in {v for v in unmarked.candidates(0)}  # "red" left out too: the token is not glued to it


# ----------------------------------------------------------------------------------------------------------------
# kohya's wildcards (enable_wildcard, --caption-wildcards)


def test_wildcards_draw_one_choice_each_as_kohya_reads_them():
    """sd-scripts' `process_caption`: each {a|b|c} one choice, uniformly; {{ and }} a literal brace; an empty
    choice no word; {} (textinv's marker) no wildcard."""
    rng = np.random.default_rng(0)
    drawn = [data.expand_wildcards("{} in a {red|blue|green} car{, fast|}", rng) for _ in range(3000)]
    assert set(drawn) == {f"{{}} in a {c} car{f}" for c in ("red", "blue", "green") for f in (", fast", "")}
    assert abs(sum("red" in d for d in drawn) / 3000 - 1 / 3) < 0.03
    assert data.expand_wildcards("{{logo}} {{{a}}}", rng) == "{logo} {a}"  # (a one-choice wildcard in braces)
    assert data.expand_wildcards("{} no choices", rng) == "{} no choices"


def test_caption_wildcards_draw_a_line_and_its_choices_seeded_then_vary_the_tags(tmp_path):
    """With wildcards a caption file's lines are its captions: each of a picture's 256 prompts draws a line and
    its choices from the seed (the same every time the bank is built: a resume sees the same), then the tags are
    varied; kohya's prefix goes before the file's first line and its suffix after its last, as it puts them
    around the file's text. Without wildcards the lines are one caption and the braces stay as written."""
    images = [image(tmp_path, "a", "{} on a {red|blue} sofa\n\n  a {} toy, {big|small}\n"), image(tmp_path, "b")]

    def sampler(seed=0, **kw):
        return CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(seed=seed, wildcards=True, **kw),
                              prefix="photo,", suffix="hd")

    drawn = sampler().candidates(0)
    assert len(drawn) == 256 and set(drawn) == {"photo, <t> on a red sofa", "photo, <t> on a blue sofa",
                                                "a <t> toy, big hd", "a <t> toy, small hd"}
    assert abs(sum(d.startswith("photo") for d in drawn) / 256 - 0.5) < 0.1  # a line each, equally likely
    assert drawn == sampler().candidates(0) and drawn != sampler(1).candidates(0)
    assert sampler().candidates(1) == CaptionSampler(images, OBJECT_TEMPLATES, "<t>").candidates(1)  # templates
    # the choices drawn before the tags vary: "red, big" gives two tags, shuffled apart
    toy = [image(tmp_path, "c", "{}, {red, big|blue}, toy")]
    shuffled = [v.split(", ") for v in CaptionSampler(toy, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(
        wildcards=True, shuffle=True, keep=1)).candidates(0)]
    assert {frozenset(v) for v in shuffled} == {frozenset({"<t>", "red", "big", "toy"}), frozenset({"<t>", "blue",
                                                                                                    "toy"})}
    assert any(v.index("big") < v.index("red") for v in shuffled if "red" in v)
    plain = CaptionSampler(images, OBJECT_TEMPLATES, "<t>").candidates(0)
    assert plain == ["<t> on a {red|blue} sofa a <t> toy, {big|small}"]


def test_a_wildcard_line_without_the_token_gets_it_in_front_and_one_draw_is_one_prompt(tmp_path):
    images = [image(tmp_path, "a", "{} on a sofa\na dog, {red|blue}"), image(tmp_path, "b", "{} asleep")]
    with pytest.warns(data.CaptionWithoutMarkerWarning, match=r"a\.txt"):
        sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(wildcards=True, dropout=0.9,
                                                                                         keep=1))
    drawn = set(sampler.candidates(0))  # the token a tag of its own in front, and --keep-tags 1 the file's first
    assert {"<t> on a sofa", "<t>, a dog", "<t>, a dog, red"} <= drawn and all(d.startswith("<t>") for d in drawn)
    assert all(d.startswith("<t>, a dog") for d in drawn if "dog" in d)
    assert CaptionSampler(images[1:], OBJECT_TEMPLATES, "<t>",
                          tags=data.TagVariation(wildcards=True)).candidates(0) == ["<t> asleep"]  # not 256 alike


# ----------------------------------------------------------------------------------------------------------------
# kohya's tag warm-up (token_warmup_min, token_warmup_step; --tag-warmup-min, --tag-warmup-steps)


def test_the_tag_warmup_counts_and_cuts_the_tags_as_kohyas_process_caption_does():
    """kohya: at step s < W, floor(s * (n - min) / W) + min of the n varied tags, the first ones in the caption's
    order, then shuffled and dropped; all from step W on. The tag holding the token stays, as under dropout."""
    tags = data.TagVariation(shuffle=True, keep=1, warmup_min=2, warmup_steps=8)
    assert [tags.tags_used(s, 6) for s in range(10)] == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert tags.tags_used(None, 6) == 6 and data.TagVariation(warmup_steps=0).tags_used(0, 6) == 6
    rng = np.random.default_rng(0)
    cut = [tags.vary("photo, a, b, {} here, c, d", rng, used=2).split(", ") for _ in range(100)]
    assert {frozenset(v[1:]) for v in cut} == {frozenset({"a", "b", "{} here"})} and all(v[0] == "photo" for v in cut)
    assert len({tuple(v) for v in cut}) == 6  # the first two, and the token's, shuffled


def test_a_sampler_gives_each_warmup_level_its_own_prompts(tmp_path):
    images = [image(tmp_path, "a", "{}, red, on grass, sunny")]
    sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=data.TagVariation(warmup_min=1, warmup_steps=4))
    assert sampler.varied_count(0) == 4  # (the token's tag too: without --keep-tags it is one of them)
    assert sampler.candidates(0, used=1) == ["<t>"] and sampler.candidates(0, used=2) == ["<t>, red"]
    assert sampler.candidates(0) == ["<t>, red, on grass, sunny"]  # no level: the whole caption, as before


def test_the_warmup_levels_of_a_long_caption_together_hold_about_as_many_prompts_as_the_whole_caption(tmp_path):
    """Each count of tags a warm-up uses is trained for a few steps only, so its levels share the picture's
    `variants` prompts: with 256 each, 50 pictures of 30 tags made 384,000 prompts to tokenize up front (80 s and
    8 GB on the CPU), where without the warm-up they are 12,800."""
    words = ", ".join(f"tag{k}" for k in range(30))
    images = [image(tmp_path, "a", f"{{}}, {words}")]
    tags = data.TagVariation(shuffle=True, keep=1, warmup_min=1, warmup_steps=100)
    sampler = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=tags)
    levels = [sampler.candidates(0, used) for used in range(1, 30)]
    assert sum(map(len, levels)) <= 256 + 29 and len(sampler.candidates(0)) == 256
    assert all(len(level) == 9 for level in levels[3:])  # (ceil(256 / 29) each; the first few have fewer orders)
    assert all(set(level[0].split(", ")[1:]) <= {f"tag{k}" for k in range(used)} for used, level in
               enumerate(levels, start=1))
    again = CaptionSampler(images, OBJECT_TEMPLATES, "<t>", tags=tags)
    assert [again.candidates(0, used) for used in range(1, 30)] == levels  # (seeded: a resume draws the same)
