"""Odd but valid pictures, and files that are no picture, at every place textinv opens a picture the user names.

Each entry point is called where it reads the file (no model loads): training's `load_image`, generate's
--init-image (`_InitPictures`) and --mask (`read_mask`), `score`'s training pictures, `caption`'s check and decode,
`generate --again`'s `read_picture` and an embedding kept in a picture (`load_embedding`). A valid picture must
read, and as training reads it (the same colours, transparency on white, rotation, first frame); a bad file must
give textinv's error naming it, never a traceback. tests/test_data.py checks the conversions themselves.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from textinv import again, caption, data, formats, generate, inpaint, score
from textinv.errors import ConfigError, DataError, FormatError, TextinvError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _declared(path, width, height):
    """A PNG whose header says `width` x `height` but that holds 4 x 4 pixels: a decompression bomb's header,
    without the memory one would take to make or decode."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), RED).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # and its checksum
    path.write_bytes(bytes(png))


def _odd_pictures(folder):
    """{name: what a valid picture's top-left pixel reads as through `load_image`, or None for a bad file}."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 0, 0))  # magenta ink
    cmyk.save(folder / "cmyk.jpg")
    # Pillow makes no CMYK profile; one of the wrong colour space, or a broken one, cannot be used: the plain
    # conversion applies, as without one
    cmyk.save(folder / "cmyk-rgb-profile.jpg", icc_profile=srgb)
    cmyk.save(folder / "cmyk-broken-profile.jpg", icc_profile=b"not a profile" * 20)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "srgb-profile.jpg", icc_profile=srgb, quality=100)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black, opaque red in the corner
    rgba.putpixel((7, 7), RED + (255,))
    rgba.save(folder / "rgba.png")
    Image.new("LA", (8, 8), (0, 0)).save(folder / "la.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.putpixel((7, 7), 1)
    palette.save(folder / "p.png", transparency=0)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(folder / "i16.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "f.tif")
    Image.new("1", (8, 8), 1).save(folder / "1bit.png")
    for orientation in (6, 8):  # 16 x 8, its left half white: turned clockwise (6) it is on top, else below
        turned = Image.new("RGB", (16, 8))
        turned.paste((255, 255, 255), (0, 0, 8, 8))
        exif = Image.Exif()
        exif[0x0112] = orientation
        turned.save(folder / f"exif{orientation}.jpg", exif=exif, quality=100)
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    Image.new("RGB", (1, 1), (1, 2, 3)).save(folder / "1x1.png")
    _declared(folder / "16000x16000.png", 16000, 16000)  # (more than Pillow takes, less than textinv: cut short)
    _declared(folder / "20000x20000.png", 20000, 20000)  # (more than textinv takes)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not a picture\n")
    return {"cmyk.jpg": (255, 0, 255), "cmyk-rgb-profile.jpg": (255, 0, 255),
            "cmyk-broken-profile.jpg": (255, 0, 255), "srgb-profile.jpg": (200, 30, 30),
            "rgba.png": (255, 255, 255), "la.png": (255, 255, 255), "p.png": (255, 255, 255),
            "i16.png": (156, 156, 156), "f.tif": (128, 128, 128), "1bit.png": (255, 255, 255),
            "exif6.jpg": (255, 255, 255), "exif8.jpg": (0, 0, 0), "animated.gif": RED, "animated.webp": RED,
            "1x1.png": (1, 2, 3), "16000x16000.png": None, "20000x20000.png": None, "truncated.jpg": None,
            "empty.png": None, "text.png": None}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, _odd_pictures(folder)


def _score(path, tmp_path):
    """`score`'s training pictures, from a folder holding `path` alone."""
    folder = tmp_path / path.name.replace(".", "-")  # (animated.gif and animated.webp: two folders)
    folder.mkdir(parents=True)
    shutil.copy(path, folder)
    return score._training_pictures(str(folder), None)[0]


def _caption(path):
    caption._check_readable([path])  # (before BLIP loads)
    return data.load_image(path, shown_at=caption.BLIP_SIDE)


READERS = {
    "train": lambda path, tmp_path: data.load_image(path),
    "init-image": lambda path, tmp_path: generate._InitPictures([path]).picture(path),
    "score": _score,
    "caption": lambda path, tmp_path: _caption(path),
}


@pytest.mark.parametrize("entry", list(READERS))
def test_every_picture_reader_reads_odd_pictures_as_training_does_and_names_a_bad_file(entry, odd, tmp_path):
    """The same rule everywhere: upright, 8-bit sRGB, transparency on white, the first frame; a file that cannot be
    used is textinv's error naming it (score's folder of it: named in the warning that skips it, as training does)."""
    folder, expected = odd
    for name, pixel in expected.items():
        path = folder / name
        if pixel is None:
            with warnings.catch_warnings(record=True) as said, pytest.raises(DataError) as refused:
                warnings.simplefilter("always")
                READERS[entry](path, tmp_path)
            assert name in " ".join([str(refused.value), *(str(w.message) for w in said)]), (entry, name)
            continue
        picture = READERS[entry](path, tmp_path)
        assert (picture.mode, picture.getpixel((0, 0))) == ("RGB", pixel), name
        assert picture.tobytes() == data.load_image(path).tobytes(), name


def test_exif_turned_pictures_come_upright_at_every_reader(odd, tmp_path):
    folder, _ = odd
    for entry, read in READERS.items():
        for name in ("exif6.jpg", "exif8.jpg"):
            assert read(folder / name, tmp_path / f"{entry}-{name}").size == (8, 16), (entry, name)


def test_a_mask_reads_every_odd_picture_or_names_it(odd):
    """--mask: by its transparency where it has any (opaque: redrawn), else its brightness over half."""
    folder, expected = odd
    # {name: (a pixel redrawn, one kept or None)}; the others have nothing white: la.png is transparent all over,
    # the rest darker than half (magenta, red, the 1x1's near-black, f.tif's 128 exactly)
    redrawn = {"rgba.png": ((7, 7), (0, 0)), "p.png": ((7, 7), (0, 0)), "i16.png": ((0, 0), None),
               "1bit.png": ((0, 0), None), "exif6.jpg": ((0, 0), (0, 15)), "exif8.jpg": ((0, 15), (0, 0))}
    for name, pixel in expected.items():
        path = folder / name
        if pixel is None:
            with pytest.raises(ConfigError, match=f"mask='{re.escape(str(path))}' cannot be read"):
                inpaint.read_mask(path)
        elif name in redrawn:
            mask, (white, black) = inpaint.read_mask(path), redrawn[name]
            assert mask.mode == "L" and mask.getpixel(white) == 255, name
            assert black is None or mask.getpixel(black) == 0, name
        else:
            with pytest.raises(ConfigError, match="has nothing white"):
                inpaint.read_mask(path)


def test_again_and_embedding_pictures_read_odd_pictures_or_name_them(odd):
    """--again and an embedding PNG read a picture's text, never its colours: every odd picture is one without
    settings or embedding, said as that, and a bad file is named; none is a traceback."""
    folder, expected = odd
    for name in expected:
        path = folder / name
        with pytest.raises(ConfigError, match=f"--again {re.escape(str(path))}"):
            again.read_picture(path)
        with pytest.raises(FormatError) as refused:
            formats.load_embedding(path)
        assert str(path) in str(refused.value)
        assert again.holds_settings(path) is False


def test_a_decompression_bomb_is_named_not_a_traceback(tmp_path):
    """Pillow raises DecompressionBombError (no OSError) on opening a picture of over 179 megapixels, which --again
    and an embedding PNG let through: textinv's limit (`data.MAX_IMAGE_PIXELS`) applies there, as in training."""
    bomb, huge = tmp_path / "bomb.png", tmp_path / "huge.png"
    _declared(bomb, 16000, 16000)
    _declared(huge, 20000, 20000)
    with pytest.raises(ConfigError, match=f"--again {bomb}: cannot read it as a picture .*truncated"):
        again.read_picture(bomb)
    with pytest.raises(ConfigError, match=f"--again {huge} is 20000x20000 pixels, more than the 300,000,000"):
        again.read_picture(huge)
    with pytest.raises(FormatError, match=f"{bomb}: cannot read this image .*truncated"):
        formats.load_embedding(bomb)
    with pytest.raises(FormatError, match=f"{huge} is 20000x20000 pixels, .* use the embedding's .pt"):
        formats.load_embedding(huge)
    assert again.holds_settings(huge) is False and formats.holds_png_embedding(huge) is True
    with pytest.raises(DataError, match=f"{huge} is 20000x20000 pixels"):
        data.load_image(huge)


def test_a_file_that_is_no_picture_is_said_as_that(tmp_path):
    """A file named on the command line (--init-image, --mask, caption's) that Pillow cannot identify: said as
    empty, or as no picture it knows, not as Pillow's "cannot identify image file <_io.BufferedReader ...>"."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture\n")
    with pytest.raises(DataError, match=f"picture {tmp_path / 'empty.png'}: it is an empty file .* copy it again"):
        data.load_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match=f"{tmp_path / 'text.png'}: Pillow recognises no picture .* PNG or JPEG"):
        data.load_image(tmp_path / "text.png")
    with pytest.raises(TextinvError) as refused:
        inpaint.read_mask(tmp_path / "text.png")
    assert "BufferedReader" not in str(refused.value)


def test_a_bad_init_image_is_said_as_the_setting(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    with pytest.raises(DataError, match=f"^init_image={re.escape(repr(str(tmp_path / 'cut.jpg')))}: cannot read the "
                                        f"picture"):
        generate._InitPictures([tmp_path / "cut.jpg"])
