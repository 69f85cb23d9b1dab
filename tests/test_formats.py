"""Embedding files: every writer round-trips exactly, every foreign layout of FORMATS.md loads, bad files are refused
with a FormatError, and a file we write loads through diffusers' own textual-inversion loader."""

from __future__ import annotations

import base64
import json
import os
import struct
import warnings
import zlib

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

from textinv import a1111_pixels
from textinv.errors import FormatError
from textinv.formats import (
    LearnedEmbedding,
    convert,
    default_filename,
    describe,
    detect_format,
    first_file,
    holds_png_embedding,
    load_embedding,
    load_embedding_pair,
    save_embedding,
    second_file,
    step_filename,
)

WIDTHS = {"sd1": (768,), "sd2": (1024,), "sdxl": (768, 1280)}
SINGLE = ("diffusers", "diffusers-bin", "a1111", "a1111-png", "kohya")
PAIR = ("sdxl", "diffusers-sdxl")
META = {"base_model": "tiny/model", "steps": "500", "vectors": "3", "textinv_version": "0.1.0"}


def make_emb(family="sd1", n=3, token="<my-dog>", metadata=None, seed=0) -> LearnedEmbedding:
    g = torch.Generator().manual_seed(seed)
    vectors = {name: torch.randn(n, w, generator=g) * 0.02
               for name, w in zip(("text_encoder", "text_encoder_2"), WIDTHS[family])}
    return LearnedEmbedding(token, vectors, dict(META if metadata is None else metadata))


def assert_same_vectors(a: LearnedEmbedding, b: LearnedEmbedding):
    assert list(a.vectors) == list(b.vectors)
    for name in a.vectors:
        assert b.vectors[name].dtype == torch.float32 and b.vectors[name].is_contiguous()
        assert torch.equal(a.vectors[name], b.vectors[name]), name


def own_metadata(emb: LearnedEmbedding) -> dict:
    """An embedding's metadata without the ModelSpec keys its safetensors file also carries."""
    return {k: v for k, v in emb.metadata.items() if not k.startswith("modelspec.")}


def safetensors_header(path) -> dict:
    """Parse the header by hand (8-byte little-endian length, then JSON), independently of our reader."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


# --------------------------------------------------------------------------------------------------------------------
# LearnedEmbedding


def test_learned_embedding_properties_and_copies():
    t = torch.randn(2, 768, dtype=torch.float16)
    emb = LearnedEmbedding("<x>", {"text_encoder": t}, {"steps": 10})
    assert (emb.num_vectors, emb.widths, emb.family) == (2, (768,), "sd1")
    assert emb.vectors["text_encoder"].dtype == torch.float32
    assert emb.metadata == {"steps": "10"}
    sdxl = LearnedEmbedding("<x>", {"text_encoder_2": torch.zeros(1, 1280), "text_encoder": torch.zeros(1, 768)})
    assert sdxl.widths == (768, 1280) and sdxl.family == "sdxl"  # TEXT_ENCODERS order, whatever the dict order
    t32 = torch.zeros(1, 768)
    LearnedEmbedding("<x>", {"text_encoder": t32}).vectors["text_encoder"].add_(1)
    assert t32.sum() == 0  # the embedding holds its own copy


@pytest.mark.parametrize("token, vectors, match", [
    ("", {"text_encoder": torch.zeros(1, 8)}, "token"),
    ("<x>", {"text_encoder": torch.zeros(8)}, "shape"),
    ("<x>", {"text_encoder": torch.zeros(0, 8)}, "shape"),
    ("<x>", {"text_encoder": torch.zeros(1, 8, dtype=torch.long)}, "dtype"),
    ("<x>", {"text_encoder": torch.full((1, 8), float("nan"))}, "NaN"),
    ("<x>", {"text_encoder": torch.zeros(2, 8), "text_encoder_2": torch.zeros(3, 8)}, "disagree"),
    ("<x>", {"text_encoder_3": torch.zeros(1, 8), "text_encoder": torch.zeros(1, 8)}, "text_encoder_3"),
    ("<x>", {"text_encoder_2": torch.zeros(1, 8)}, "no 'text_encoder'"),
])
def test_learned_embedding_validation(token, vectors, match):
    with pytest.raises(FormatError, match=match):
        LearnedEmbedding(token, vectors)


# --------------------------------------------------------------------------------------------------------------------
# Writers round-trip exactly


ROUND_TRIPS = [(f, fam, n) for f in SINGLE for fam in ("sd1", "sd2") for n in (1, 3)]
ROUND_TRIPS += [(f, "sdxl", n) for f in PAIR for n in (1, 3)]


@pytest.mark.parametrize("fmt, family, n", ROUND_TRIPS)
def test_round_trip(tmp_path, fmt, family, n):
    emb = make_emb(family, n)
    written = save_embedding(emb, tmp_path, format=fmt)  # a folder: the default file name is used
    assert written[0] == tmp_path / default_filename(fmt, emb.token)
    assert all(p.is_file() for p in written)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no leftovers
    if fmt == "diffusers-sdxl":
        assert [p.name for p in written] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]

    back = load_embedding(written[0])
    assert back.token == emb.token
    assert back.family == family and back.num_vectors == n
    assert_same_vectors(emb, back)
    if fmt == "diffusers-bin":
        assert back.metadata == {}  # exactly one key is all diffusers accepts: no room for metadata
    else:
        assert own_metadata(back) == {**emb.metadata, "token": emb.token}
    # safetensors files also say what they are (ModelSpec); a pickle or a PNG has no place for it
    assert any(k.startswith("modelspec.") for k in back.metadata) == written[0].name.endswith(".safetensors")
    assert detect_format(written[0]) == fmt


def test_written_files_follow_the_documented_layouts(tmp_path):
    """Check the bytes against FORMATS.md with plain readers, not ours, so a format change is caught."""
    sd1, sdxl = make_emb("sd1", 3), make_emb("sdxl", 2)
    (p,) = save_embedding(sd1, tmp_path / "learned_embeds.safetensors")
    header = safetensors_header(p)
    assert header["__metadata__"]["format"] == "pt" and header["__metadata__"]["base_model"] == "tiny/model"
    assert header["<my-dog>"]["dtype"] == "F32" and header["<my-dog>"]["shape"] == [3, 768]
    assert set(header) == {"__metadata__", "<my-dog>"}

    (p,) = save_embedding(sd1, tmp_path / "learned_embeds.bin", format="diffusers-bin")
    raw = torch.load(p, weights_only=True)
    assert list(raw) == ["<my-dog>"] and torch.equal(raw["<my-dog>"], sd1.vectors["text_encoder"])

    (p,) = save_embedding(sd1, tmp_path / "my-dog.pt", format="a1111")
    raw = torch.load(p, weights_only=True)
    assert raw["string_to_token"] == {"*": 265} and raw["name"] == "<my-dog>" and raw["step"] == 500
    assert torch.equal(raw["string_to_param"]["*"], sd1.vectors["text_encoder"])
    assert raw["sd_checkpoint_name"] == "tiny/model" and raw["sd_checkpoint"] is None

    (p,) = save_embedding(sd1, tmp_path / "my-dog.png", format="a1111-png")
    with Image.open(p) as image:
        data = json.loads(base64.b64decode(image.text["sd-ti-embedding"]))
    assert data["name"] == "<my-dog>" and data["string_to_token"] == {"*": 265}
    assert torch.equal(torch.tensor(data["string_to_param"]["*"]["TORCHTENSOR"]), sd1.vectors["text_encoder"])

    (p,) = save_embedding(sd1, tmp_path / "my-dog.safetensors", format="kohya")
    assert list(load_file(p)) == ["emb_params"]

    (p,) = save_embedding(sdxl, tmp_path / "my-dog.safetensors", format="sdxl")
    header = safetensors_header(p)
    assert header["clip_l"]["shape"] == [2, 768] and header["clip_g"]["shape"] == [2, 1280]
    assert header["__metadata__"]["token"] == "<my-dog>"

    p1, p2 = save_embedding(sdxl, tmp_path / "learned_embeds.safetensors", format="diffusers-sdxl")
    assert load_file(p1)["<my-dog>"].shape == (2, 768) and load_file(p2)["<my-dog>"].shape == (2, 1280)


def test_a_pair_whose_files_were_saved_at_different_steps_is_refused(tmp_path):
    """A diffusers-sdxl pair is written a file at a time, its second file first: a run killed between the two left
    the second a save ahead of the first, and the two loaded as one embedding of two steps' halves."""
    def at(step, folder):
        emb = LearnedEmbedding("<cat>", {"text_encoder": torch.full((1, 768), float(step)),
                                         "text_encoder_2": torch.full((1, 1280), float(step))}, {"steps": str(step)})
        return save_embedding(emb, tmp_path / folder / "learned_embeds.safetensors", format="diffusers-sdxl")

    first, second = at(2, "run")
    assert load_embedding(first).widths == (768, 1280)
    second.write_bytes(at(4, "later")[1].read_bytes())  # (the next save's second file, then the kill)
    with pytest.raises(FormatError, match=r"saved at different steps \(2 and 4\).*--resume writes both again"):
        load_embedding(first)


def test_a_pair_of_two_saves_without_steps_is_refused_and_a_save_made_whole_loads(tmp_path, monkeypatch):
    """A merge or convert into an existing pair killed between its two files left the new second file beside the
    old first, which recorded no steps to tell them apart: they loaded as one embedding of two saves' halves."""
    import textinv.formats as formats

    def emb(value):
        return LearnedEmbedding("<cat>", {"text_encoder": torch.full((1, 768), value),
                                          "text_encoder_2": torch.full((1, 1280), value)})

    path = tmp_path / "learned_embeds.safetensors"
    save_embedding(emb(1.0), path, format="diffusers-sdxl")
    written, real = [], formats._write_safetensors

    def killed_before_the_first_file(target, *args):
        written.append(target)
        if len(written) == 2:
            raise KeyboardInterrupt
        return real(target, *args)

    monkeypatch.setattr(formats, "_write_safetensors", killed_before_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        save_embedding(emb(2.0), path, format="diffusers-sdxl")
    monkeypatch.undo()
    with pytest.raises(FormatError, match=r"learned_embeds_2.safetensors is not the one saved with it.*save it again"):
        load_embedding(path)
    save_embedding(emb(2.0), path, format="diffusers-sdxl")  # (saved again whole)
    loaded = load_embedding(path)
    assert [float(v[0, 0]) for v in loaded.vectors.values()] == [2.0, 2.0]
    assert not any("pair" in key for key in loaded.metadata)  # (the record of its partner is the file's, not kept)


def test_png_keeps_the_preview_image_without_its_caption(tmp_path):
    """Uncaptioned (caption=False; convert --no-caption, train --no-png-caption), the preview sits whole between the
    two strips of the embedding's pixel copy, one black column either side."""
    preview = Image.new("RGB", (40, 30), (200, 10, 10))
    (p,) = save_embedding(make_emb(), tmp_path / "dog.png", format="a1111-png", preview=preview, caption=False)
    with Image.open(p) as image:
        strip = (image.width - 40 - 2) // 2
        assert image.height == 30 and strip > 0
        assert image.convert("RGB").crop((strip + 1, 0, strip + 41, 30)).tobytes() == preview.tobytes()
        assert {image.getpixel((x, y)) for x in (strip, strip + 41) for y in range(30)} == {(0, 0, 0)}


def _preview_part(path, preview_size):
    """The preview's place in an A1111 PNG: between the strips and their black columns (RGB)."""
    width, height = preview_size
    with Image.open(path) as image:
        strip = (image.width - width - 2) // 2
        return image.convert("RGB").crop((strip + 1, 0, strip + 1 + width, height))


def test_png_embedding_is_captioned_as_the_web_ui_captions_it(tmp_path):
    """The web UI's "save images with embedding in PNG chunks" captions the picture (caption_image_overlay, as
    textual_inversion.train_embedding calls it): title "<NAME>" at the top, footer "MODEL", "[HASH]", "Nv Ss" on a
    band darkened toward the edges. The title's corner differs from the plain picture, the middle is dimmed (by
    about a third), and the file still round-trips the same vectors from its chunk and from its pixels."""
    preview = Image.new("RGB", (256, 192), (200, 180, 160))
    emb = make_emb(metadata={**META, "sd_checkpoint": "6ce0161689", "sd_checkpoint_name": "v1-5-pruned"})
    (p,) = save_embedding(emb, tmp_path / "my-dog.png", format="a1111-png", preview=preview)
    (plain,) = save_embedding(emb, tmp_path / "plain" / "my-dog.png", format="a1111-png", preview=preview,
                              caption=False)
    captioned, uncaptioned = _preview_part(p, preview.size), _preview_part(plain, preview.size)
    assert uncaptioned.tobytes() == preview.tobytes()
    title = (10, 10, 120, 40)  # (the title's corner; the first rows are black, the band's darkest)
    assert captioned.crop(title).tobytes() != uncaptioned.crop(title).tobytes()
    assert captioned.getpixel((0, 0)) == (0, 0, 0)
    middle = captioned.getpixel((5, 96))  # (no text at the left edge, halfway down)
    assert all(0.6 * c < m < 0.8 * c for m, c in zip(middle, (200, 180, 160)))
    white = {(x, y) for x in range(256) for y in range(192) if captioned.getpixel((x, y)) == (255, 255, 255)}
    assert any(y < 60 for _, y in white) and any(y > 150 for _, y in white)  # (the title, and the footer)
    for path in (p, _pixels_only(p, tmp_path / "hosted.png")):  # (its chunk; its pixels, once the chunk is gone)
        loaded = load_embedding(path)
        assert loaded.token == "<my-dog>"
        assert_same_vectors(emb, loaded)


def test_convert_no_caption_turns_the_caption_off(tmp_path):
    """`convert` to .png captions its placeholder picture (its first rows black, the band's darkest);
    --no-caption leaves it plain."""
    from textinv.cli import main

    src = tmp_path / "my-dog.pt"
    save_embedding(make_emb(), src, format="a1111")
    assert main(["convert", str(src), str(tmp_path / "a" / "my-dog.png")]) == 0
    assert main(["convert", str(src), str(tmp_path / "b" / "my-dog.png"), "--no-caption"]) == 0
    assert _preview_part(tmp_path / "a" / "my-dog.png", (256, 256)).getpixel((0, 0)) == (0, 0, 0)
    assert _preview_part(tmp_path / "b" / "my-dog.png", (256, 256)).getpixel((0, 0)) == (40, 44, 52)


def test_caption_texts_are_the_web_uis():
    """textual_inversion.train_embedding's caption: title f"<{name}>", footer checkpoint.model_name,
    f"[{checkpoint.shorthash}]", f"{vectorSize}v {steps_done}s". A token in brackets is not bracketed twice, and a
    checkpoint not known (a hub model has no file hash) leaves its text out."""
    from textinv.formats import _caption_texts

    web_ui = {"name": "zq-500", "step": 500, "sd_checkpoint": "6ce0161689", "sd_checkpoint_name": "v1-5-pruned"}
    assert _caption_texts(web_ui, 2) == ("<zq-500>", "v1-5-pruned", "[6ce0161689]", "2v 500s")
    hub = {"name": "<my-dog>", "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None}
    assert _caption_texts(hub, 3) == ("<my-dog>", "", "", "3v 0s")


def test_a_picture_the_web_ui_captioned_reads_from_its_pixels(tmp_path):
    """The web UI adds the strips to the captioned picture (RGBA, its alpha dropped on the RGB background): a
    picture of its making, darkest at the top, text over it, transparent in places, gives its vectors back."""
    preview = Image.new("RGBA", (120, 90), (10, 200, 90, 0))  # (transparent: the caption's RGBA keeps alpha)
    vectors = torch.randn(2, 768, generator=torch.Generator().manual_seed(3))
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": vectors.tolist()}},
            "name": "zq-2", "step": 2, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "model"}
    picture = a1111_pixels.caption(preview, "<zq-2>", "model", "[0123456789]", "2v 2s")
    assert picture.mode == "RGBA"
    a1111_pixels.hide(picture, data, vectors[0].tolist()).save(tmp_path / "zq-2.png")
    loaded = load_embedding(tmp_path / "zq-2.png")
    assert loaded.token == "zq-2" and torch.equal(loaded.vectors["text_encoder"], vectors)


def _pixels_only(path, to):
    """`path` saved again from its pixels alone, as an image host that strips PNG text chunks serves it."""
    with Image.open(path) as image:
        Image.frombytes("RGB", image.size, image.convert("RGB").tobytes()).save(to)
    with Image.open(to) as image:
        assert not image.text
    return to


def test_png_embedding_loads_from_its_pixels_once_its_text_chunk_is_stripped(tmp_path):
    """The web UI hides a second copy of a PNG embedding in the picture's pixels, which it reads when the text chunk
    is gone; so do we, and ours carries it too: the same vectors, bit for bit, the token and the metadata."""
    emb = make_emb("sd2", 4, metadata={**META, "vectors": "4"})
    (p,) = save_embedding(emb, tmp_path / "my-dog.png", format="a1111-png")
    bare = _pixels_only(p, tmp_path / "hosted.png")
    loaded = load_embedding(bare)
    assert loaded.token == "<my-dog>" and own_metadata(loaded) == own_metadata(load_embedding(p))
    assert_same_vectors(emb, loaded)
    assert detect_format(bare) == "a1111-png" and holds_png_embedding(bare)


def test_a_picture_whose_pixel_copy_is_lost_is_refused_clearly(tmp_path):
    """Resized (or saved lossy), the hidden copy is gone: with no text chunk either, the error says both are missing;
    a plain picture is no embedding, which a folder of embeddings leaves out as a preview."""
    (p,) = save_embedding(make_emb(), tmp_path / "my-dog.png", format="a1111-png")
    with Image.open(_pixels_only(p, tmp_path / "bare.png")) as image:
        image.resize((image.width // 2, image.height // 2)).save(tmp_path / "small.png")
    Image.new("RGB", (64, 64), (40, 90, 160)).save(tmp_path / "photo.png")
    for picture in ("small.png", "photo.png"):
        with pytest.raises(FormatError, match="no 'sd-ti-embedding' text chunk and no embedding hidden in its pixels"):
            load_embedding(tmp_path / picture)
        assert not holds_png_embedding(tmp_path / picture)


def test_the_pixel_copy_follows_the_web_uis_layout(tmp_path):
    """Facts from the web UI's modules/textual_inversion/image_embedding.py, not from our encoder:
    - lcg(): its self-test (`__main__`) pins the first bytes of the seed-0 stream, reference_random =
      [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, ...], and 12731374 as the sum of the 100000 after the first 100.
    - insert_image_data_embed(): a stream of n bytes beside a picture h high is padded to n + h - n % h cells, then
      up to the next multiple of 3h that is larger (h = 100: 1000 bytes give 1100, then 1200 cells, 4 columns a strip;
      1100 and 1199 bytes give 1200, then 1500 cells, 5 columns);
      the picture is [low nibbles][black column][picture][black column][high nibbles], row by row, 3 channels a
      pixel, each cell xored with its place's LCG byte & 0x0F (xor_block, started afresh for each strip).
    - the stream is zlib at level 9, whose first two bytes are 0x78 0xDA (RFC 1950), so the left strip's first
      pixel's low nibbles are 0x8 ^ (253 & 15) and 0xA ^ (242 & 15), and the right strip's 0x7 ^ (253 & 15) and
      0xD ^ (242 & 15)."""
    reference = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79, 78, 14, 52, 215]
    stream = a1111_pixels.lcg_bytes(100_100)
    assert stream[:20].tolist() == reference and int(stream[100:].sum(dtype=int)) == 12731374
    assert [a1111_pixels.strip_columns(n, 100) for n in (1, 1000, 1099, 1100, 1199)] == [1, 4, 4, 5, 5]

    emb = make_emb()
    (p,) = save_embedding(emb, tmp_path / "my-dog.png", format="a1111-png", preview=Image.new("RGB", (50, 60)))
    with Image.open(p) as image:
        pixels = image.convert("RGB")
    strip = (pixels.width - 50 - 2) // 2
    compressed = len(zlib.compress(json.dumps(a1111_pixels.find(pixels)).encode("utf-8"), 9))
    assert strip == a1111_pixels.strip_columns(compressed, 60)
    left, right = pixels.getpixel((0, 0)), pixels.getpixel((pixels.width - strip, 0))
    assert [c & 0x0F for c in left[:2]] == [0x8 ^ 13, 0xA ^ 2] and [c & 0x0F for c in right[:2]] == [0x7 ^ 13, 0xD ^ 2]


def test_default_filename():
    assert default_filename("diffusers", "<my-dog>") == "learned_embeds.safetensors"
    assert default_filename("diffusers-bin", "<my-dog>") == "learned_embeds.bin"
    assert default_filename("diffusers-sdxl", "<my-dog>") == "learned_embeds.safetensors"
    assert default_filename("a1111", "<my-dog>") == "my-dog.pt"
    assert default_filename("a1111-png", "<my-dog>") == "my-dog.png"
    assert default_filename("kohya", "<my-dog>") == "my-dog.safetensors"
    assert default_filename("sdxl", "<a/b c>") == "a_b_c.safetensors"
    assert second_file("x/learned_embeds.safetensors").name == "learned_embeds_2.safetensors"
    assert second_file("x/learned_embeds-steps-500.safetensors").name == "learned_embeds_2-steps-500.safetensors"
    assert second_file("x/dog.safetensors").name == "dog_2.safetensors"
    with pytest.raises(FormatError, match="unknown embedding format"):
        default_filename("ckpt", "<x>")


# (not diffusers: for SDXL it names diffusers-sdxl, as convert's --to diffusers does)
@pytest.mark.parametrize("fmt", [fmt for fmt in SINGLE if fmt != "diffusers"])
def test_sdxl_pair_is_refused_by_single_encoder_formats(tmp_path, fmt):
    with pytest.raises(FormatError, match="'sdxl'.*'diffusers-sdxl'"):
        save_embedding(make_emb("sdxl"), tmp_path, format=fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", PAIR)
def test_single_encoder_embedding_is_refused_by_sdxl_formats(tmp_path, fmt):
    with pytest.raises(FormatError, match="Stable Diffusion 1.x"):
        save_embedding(make_emb("sd1"), tmp_path, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_wrong_extension_and_unknown_format(tmp_path):
    with pytest.raises(FormatError, match=r"\.pt or \.bin"):
        save_embedding(make_emb(), tmp_path / "dog.safetensors", format="a1111")
    with pytest.raises(FormatError, match="choose one of"):
        save_embedding(make_emb(), tmp_path / "dog.safetensors", format="ckpt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------------
# Foreign layouts, built here from FORMATS.md


def test_a1111_pt(tmp_path):
    t = torch.randn(4, 768)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t.clone().requires_grad_()},
                "name": "charturner", "step": 1200, "sd_checkpoint": "a1b2c3", "sd_checkpoint_name": "v1-5"},
               tmp_path / "charturner-v2.pt")
    emb = load_embedding(tmp_path / "charturner-v2.pt")
    assert emb.token == "charturner" and torch.equal(emb.vectors["text_encoder"], t)
    assert emb.metadata == {"steps": "1200", "sd_checkpoint": "a1b2c3", "sd_checkpoint_name": "v1-5"}
    assert detect_format(tmp_path / "charturner-v2.pt") == "a1111"


def test_old_a1111_pt_without_name_is_named_after_its_file(tmp_path):
    t = torch.randn(2, 1024)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t}}, tmp_path / "old-style.pt")
    emb = load_embedding(tmp_path / "old-style.pt")
    assert emb.token == "old-style" and emb.family == "sd2" and emb.metadata == {}
    assert load_embedding(tmp_path / "old-style.pt", token="<new>").token == "<new>"  # an explicit token wins


def test_paper_code_parameter_dict(tmp_path):
    """rinongal/textual_inversion saves string_to_param as an nn.ParameterDict, which weights_only refuses."""
    t = torch.randn(1, 768)
    torch.save({"string_to_token": {"*": torch.tensor(265)},
                "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(t.clone())})},
               tmp_path / "embeddings_gs-6099.pt")
    emb = load_embedding(tmp_path / "embeddings_gs-6099.pt")
    assert emb.token == "embeddings_gs-6099" and torch.equal(emb.vectors["text_encoder"], t)
    assert detect_format(tmp_path / "embeddings_gs-6099.pt") == "a1111"


def test_a1111_png_chunk(tmp_path):
    t = torch.randn(2, 768)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": t.tolist()}},
            "name": "pngdog", "step": 300, "sd_checkpoint": None, "sd_checkpoint_name": None}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    Image.new("RGB", (16, 16)).save(tmp_path / "whatever.png", pnginfo=info)
    emb = load_embedding(tmp_path / "whatever.png")
    assert emb.token == "pngdog" and emb.metadata == {"steps": "300"}
    assert torch.equal(emb.vectors["text_encoder"], t)
    assert detect_format(tmp_path / "whatever.png") == "a1111-png"


def test_kohya(tmp_path):
    t = torch.randn(3, 768, dtype=torch.float16)
    save_file({"emb_params": t}, tmp_path / "kdog.safetensors",
              metadata={"modelspec.architecture": "stable-diffusion-v1/textual-inversion"})
    emb = load_embedding(tmp_path / "kdog.safetensors")
    assert emb.token == "kdog" and torch.equal(emb.vectors["text_encoder"], t.float())
    assert emb.metadata == {"modelspec.architecture": "stable-diffusion-v1/textual-inversion"}
    assert detect_format(tmp_path / "kdog.safetensors") == "kohya"


def test_onetrainer_ignores_emp_params_out(tmp_path):
    t = torch.randn(2, 768)
    save_file({"emp_params": t, "emp_params_out": torch.randn(2, 768)}, tmp_path / "otdog.safetensors")
    emb = load_embedding(tmp_path / "otdog.safetensors")
    assert emb.token == "otdog" and torch.equal(emb.vectors["text_encoder"], t)
    assert detect_format(tmp_path / "otdog.safetensors") == "onetrainer"


def test_sdxl_clip_l_clip_g(tmp_path):
    l, g = torch.randn(2, 768), torch.randn(2, 1280)
    save_file({"clip_g": g, "clip_l": l}, tmp_path / "xl-dog.safetensors")
    emb = load_embedding(tmp_path / "xl-dog.safetensors")
    assert emb.token == "xl-dog" and emb.family == "sdxl"
    assert torch.equal(emb.vectors["text_encoder"], l) and torch.equal(emb.vectors["text_encoder_2"], g)
    assert detect_format(tmp_path / "xl-dog.safetensors") == "sdxl"
    # OneTrainer also stores its output vectors; A1111 and ComfyUI read such files by clip_l and clip_g alone
    save_file({"clip_g": g, "clip_l": l, "clip_l_out": l + 1, "clip_g_out": g + 1}, tmp_path / "ot-xl.safetensors")
    emb = load_embedding(tmp_path / "ot-xl.safetensors")
    assert torch.equal(emb.vectors["text_encoder"], l) and torch.equal(emb.vectors["text_encoder_2"], g)


def test_clip_l_alone_is_an_sd1_embedding_named_like_kohya(tmp_path):
    """diffusers' advanced SD 1.5 script writes {"clip_l": [n, 768]}: one encoder in the SDXL naming. Its token is
    the metadata's or the file's name, not the key."""
    l = torch.randn(2, 768)
    save_file({"clip_l": l}, tmp_path / "my-toy.safetensors")
    emb = load_embedding(tmp_path / "my-toy.safetensors")
    assert emb.token == "my-toy" and emb.family == "sd1" and torch.equal(emb.vectors["text_encoder"], l)
    assert detect_format(tmp_path / "my-toy.safetensors") == "clip_l"
    save_file({"clip_l": l}, tmp_path / "x.safetensors", metadata={"token": "<toy>"})
    assert load_embedding(tmp_path / "x.safetensors").token == "<toy>"


@pytest.mark.parametrize("fmt", ["a1111", "diffusers-bin"])
def test_pickled_files_pass_a1111s_safe_loader_checks(fmt, tmp_path):
    """A1111 (modules/safe.py) refuses a zip archive with entries beyond data.pkl, data/N, version, byteorder and
    .data/serialization_id; newer torch adds .format_version and .storage_alignment. We write the non-zip layout,
    which A1111 reads with its restricted unpickler instead."""
    import pickletools
    import zipfile

    (path,) = save_embedding(make_emb("sd1", 2), tmp_path, format=fmt)
    assert not zipfile.is_zipfile(path)
    globals_used = set()
    with open(path, "rb") as f:
        for _ in range(5):  # magic number, protocol, sys info, the object, the storage keys (A1111 reads these 5)
            for op, arg, _pos in pickletools.genops(f):
                if op.name in ("GLOBAL", "STACK_GLOBAL") and arg:
                    globals_used.add(arg)
    allowed = {"torch._utils _rebuild_tensor_v2", "collections OrderedDict", "torch FloatStorage",
               "torch._utils _rebuild_parameter"}
    assert globals_used <= allowed, globals_used - allowed
    assert_same_vectors(make_emb("sd1", 2), load_embedding(path))


def test_diffusers_bin_with_one_dimensional_tensor(tmp_path):
    t = torch.randn(768)
    torch.save({"<cat-toy>": t}, tmp_path / "learned_embeds.bin")
    emb = load_embedding(tmp_path)  # a diffusers output folder
    assert emb.token == "<cat-toy>" and emb.num_vectors == 1
    assert torch.equal(emb.vectors["text_encoder"], t[None])
    assert detect_format(tmp_path / "learned_embeds.bin") == "diffusers-bin"


def test_a_pairs_second_file_alone_finds_its_first_beside_it(tmp_path):
    """As the first file finds the second, the second given alone (--embedding out/learned_embeds_2.safetensors)
    finds the first beside it, by the same rules: the same token at SDXL's two widths, and steps that agree."""
    l, g = torch.randn(3, 768), torch.randn(3, 1280)
    first = tmp_path / "learned_embeds-steps-500.safetensors"
    second = tmp_path / "learned_embeds_2-steps-500.safetensors"
    save_file({"<cat>": l}, first, metadata={"format": "pt", "steps": "500"})
    save_file({"<cat>": g}, second, metadata={"format": "pt", "steps": "500"})
    emb = load_embedding(second)
    assert emb.token == "<cat>" and emb.family == "sdxl" and detect_format(second) == "diffusers-sdxl"
    assert torch.equal(emb.vectors["text_encoder"], l) and torch.equal(emb.vectors["text_encoder_2"], g)
    assert first_file(second) == first and first_file(first) is None
    assert first_file(tmp_path / "dog_2.pt") == tmp_path / "dog.pt"
    convert(second, tmp_path / "cat.safetensors", to="sdxl")  # (convert, inspect, merge read it so too)
    assert load_embedding(tmp_path / "cat.safetensors").widths == (768, 1280)
    save_file({"<cat>": g}, second, metadata={"format": "pt", "steps": "400"})  # two steps' files mixed
    with pytest.raises(FormatError, match="different steps"):
        load_embedding(second)
    save_file({"<cat>": torch.randn(3, 1024)}, first)  # an SD 2.x file beside: no pair of SDXL's widths
    save_file({"<cat>": torch.randn(3, 768)}, second)
    assert load_embedding(second).widths == (768,)


def test_a_diffusers_sdxl_save_cut_short_between_its_files_leaves_no_first_file_alone(tmp_path, monkeypatch):
    """The first file is what users point at, and alone it loads as an SD 1.x embedding: it is written last, once
    its partner is complete. A save stopped after one file's rename leaves only the second file."""
    real, renames = os.replace, []

    def replace(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "learned_embeds.safetensors"
    emb = LearnedEmbedding("<cat>", {"text_encoder": torch.randn(2, 768), "text_encoder_2": torch.randn(2, 1280)})
    with pytest.raises(KeyboardInterrupt):
        save_embedding(emb, path, "diffusers-sdxl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learned_embeds_2.safetensors"]


def test_diffusers_sdxl_example_pair(tmp_path):
    l, g = torch.randn(3, 768), torch.randn(3, 1280)
    first = tmp_path / "learned_embeds-steps-500.safetensors"
    second = tmp_path / "learned_embeds_2-steps-500.safetensors"
    save_file({"<cat>": l}, first, metadata={"format": "pt"})
    save_file({"<cat>": g}, second, metadata={"format": "pt"})
    emb = load_embedding(first)
    assert emb.token == "<cat>" and emb.family == "sdxl" and emb.metadata == {}
    assert torch.equal(emb.vectors["text_encoder"], l) and torch.equal(emb.vectors["text_encoder_2"], g)
    assert load_embedding(first, pair=False).family == "sd1"
    assert load_embedding(second, pair=False).widths == (1280,)
    assert torch.equal(load_embedding_pair(first, second).vectors["text_encoder_2"], g)
    swapped = load_embedding_pair(second, first)  # handed over the wrong way round: the widths tell
    assert torch.equal(swapped.vectors["text_encoder"], l) and torch.equal(swapped.vectors["text_encoder_2"], g)
    assert detect_format(first) == "diffusers-sdxl"

    save_file({"<cat>": g[:1]}, second)  # a partner from another run: refuse rather than guess
    with pytest.raises(FormatError, match="hold 3 and 1 vectors"):
        load_embedding(first)
    save_file({"<other>": g[:1]}, second)  # a different token: not a partner, the first file loads alone
    assert load_embedding(first).family == "sd1"


def test_two_versions_of_one_embedding_are_not_paired(tmp_path):
    save_file({"<dog>": torch.randn(2, 768)}, tmp_path / "dog.safetensors")
    save_file({"<dog>": torch.randn(2, 768)}, tmp_path / "dog_2.safetensors")  # same token and width: a re-run
    assert load_embedding(tmp_path / "dog.safetensors").widths == (768,)


def test_legacy_torch_pickle(tmp_path):
    """torch.save before the zip format (A1111 files from 2022 and older scripts) starts with a raw pickle."""
    t = torch.randn(2, 768)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": "legacy"},
               tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"
    emb = load_embedding(tmp_path / "legacy.pt")
    assert emb.token == "legacy" and torch.equal(emb.vectors["text_encoder"], t)


# --------------------------------------------------------------------------------------------------------------------
# Bad files


def test_unknown_layout_names_the_keys(tmp_path):
    save_file({"alpha": torch.zeros(1, 8), "beta": torch.zeros(1, 8)}, tmp_path / "two.safetensors")
    with pytest.raises(FormatError, match="'alpha', 'beta'") as info:
        load_embedding(tmp_path / "two.safetensors")
    assert "two.safetensors" in str(info.value)


class _Evil:
    """A pickle payload that would run a shell command if unpickled with plain pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


LORA_KEYS = {  # kohya / A1111 LoRA, and diffusers' (peft) LoRA
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (),
}
PEFT_LORA_KEYS = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320),
                  "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": (320, 4)}
CHECKPOINT_KEYS = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4),
                   "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 8),
                   "first_stage_model.decoder.conv_in.weight": (8, 4)}


@pytest.mark.parametrize("keys, match", [
    (LORA_KEYS, r"lora\.safetensors: this is a LoRA.*<lora:lora> in a prompt, with --lora-dir"),
    (PEFT_LORA_KEYS, "this is a LoRA"),
    (CHECKPOINT_KEYS, r"lora\.safetensors: this is a Stable Diffusion model.*--model"),
])
def test_model_weights_are_named_for_what_they_are_without_loading_them(tmp_path, monkeypatch, keys, match):
    """A LoRA or a checkpoint handed over as an embedding is named as such, with where it goes instead; the
    tensors are not read (a checkpoint's are gigabytes), only the safetensors header's names."""
    import safetensors

    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, tmp_path / "lora.safetensors")
    real, loaded = safetensors.safe_open, []

    class Spy:  # safe_open, counting the tensors read
        def __init__(self, *args, **kwargs):
            self.opened = real(*args, **kwargs)

        def __enter__(self):
            self.f = self.opened.__enter__()
            return self

        def __exit__(self, *exc):
            return self.opened.__exit__(*exc)

        def get_tensor(self, key):
            loaded.append(key)
            return self.f.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    with pytest.raises(FormatError, match=match):
        load_embedding(tmp_path / "lora.safetensors")
    assert loaded == []


def test_pickled_model_weights_are_named(tmp_path):
    torch.save({"state_dict": {k: torch.zeros(shape) for k, shape in CHECKPOINT_KEYS.items()}, "global_step": 5},
               tmp_path / "v1-5.ckpt")
    with pytest.raises(FormatError, match=r"v1-5\.ckpt: this is a Stable Diffusion model checkpoint.*--model"):
        load_embedding(tmp_path / "v1-5.ckpt")
    torch.save({k: torch.zeros(shape) for k, shape in LORA_KEYS.items()}, tmp_path / "style.pt")
    with pytest.raises(FormatError, match="this is a LoRA"):
        load_embedding(tmp_path / "style.pt")


def _sparse(path, head: bytes, size: int):
    """A file of `size` bytes that starts with `head` and takes no disk space past it."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def test_files_far_larger_than_any_embedding_are_refused_before_loading(tmp_path):
    """An embedding is kilobytes (75 SDXL vectors are 600 KB): a 200 MB file is a model, and loading it whole only
    to refuse it would take its size in memory."""
    size = 200 * 2**20
    _sparse(tmp_path / "model.ckpt", b"PK\x03\x04", size)  # torch.save's zip archive: a .ckpt
    with pytest.raises(FormatError, match=r"model\.ckpt: 200 MB is far larger than any embedding.*--model"):
        load_embedding(tmp_path / "model.ckpt")
    # one tensor under one name reads as a diffusers file, whatever its size: a vocabulary table, say
    header = json.dumps({"<t>": {"dtype": "F32", "shape": [size // 4 // 768, 768],
                                 "data_offsets": [0, size // 4 // 768 * 768 * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    _sparse(tmp_path / "table.safetensors", struct.pack("<Q", len(header)) + header,
            8 + len(header) + size // 4 // 768 * 768 * 4)
    with pytest.raises(FormatError, match=r"table\.safetensors: 200 MB is far larger than any embedding"):
        load_embedding(tmp_path / "table.safetensors")


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"<x>": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(FormatError, match="refusing to unpickle evil.pt: it is not a plain tensor file") as info:
        load_embedding(tmp_path / "evil.pt")
    assert "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_pickle_of_a_newer_protocol_is_refused_as_that_not_as_code(tmp_path, protocol):
    """torch's safe loader reads pickle protocols 2 and 3 only: a plain embedding saved with pickle_protocol=4 was
    refused as "not a plain tensor file, and loading it could run code"."""
    torch.save({"<x>": torch.zeros(1, 8)}, tmp_path / "new.pt", pickle_protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's own note on the protocol)
        with pytest.raises(FormatError, match=r"new.pt: new.pt was pickled with protocol 4 or 5 .* If you trust its "
                                              r"source, load it with torch.load\(\.\.\., weights_only=False\) and "
                                              r"save it again"):
            load_embedding(tmp_path / "new.pt")


def test_parameter_dict_fallback_still_refuses_code(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, 8))}),
                "extra": _Evil(marker)}, tmp_path / "mixed.pt")
    with pytest.raises(FormatError, match="refusing to unpickle"):
        load_embedding(tmp_path / "mixed.pt")
    assert not marker.exists()


def test_truncated_and_empty_files(tmp_path):
    save_file({"<x>": torch.randn(3, 768)}, tmp_path / "full.safetensors")
    raw = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-100])
    with pytest.raises(FormatError, match="cut.safetensors.*truncated or damaged"):
        load_embedding(tmp_path / "cut.safetensors")
    (tmp_path / "header.safetensors").write_bytes(raw[:20])
    with pytest.raises(FormatError, match="truncated safetensors"):
        load_embedding(tmp_path / "header.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        load_embedding(tmp_path / "empty.safetensors")
    torch.save({"<x>": torch.randn(3, 768)}, tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:200])
    with pytest.raises(FormatError, match="cut.pt"):
        load_embedding(tmp_path / "cut.pt")
    (tmp_path / "notes.txt").write_text("hello, not an embedding")
    with pytest.raises(FormatError, match="not an embedding file"):
        load_embedding(tmp_path / "notes.txt")


@pytest.mark.parametrize("text, fix", [
    ("<!DOCTYPE html>\n<html><body>Sign in to download</body></html>", "it is a web page, which a download got in "
                                                                        "place of the file .*: download it again"),
    ("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3\n", "it is a Git LFS pointer, not the file: "
                                                                            "run `git lfs pull`"),
    ("garbage", "it may be damaged or cut short: get the file again")])
def test_a_file_that_is_no_embedding_is_said_what_it_is_and_how_to_get_the_file(tmp_path, text, fix):
    """A failed download saves a model site's sign-in page under the file's name, and a repository cloned without
    Git LFS holds pointers: they were refused as "not an embedding file", without saying what they are or the fix."""
    (tmp_path / "easyneg.pt").write_text(text)
    with pytest.raises(FormatError, match=f"easyneg.pt: not an embedding file: .*; {fix}"):
        load_embedding(tmp_path / "easyneg.pt")


def test_png_without_chunk(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    with pytest.raises(FormatError, match="photo.png.*no 'sd-ti-embedding'"):
        load_embedding(tmp_path / "photo.png")


@pytest.mark.parametrize("chunk", ["!!! not base64 !!!", base64.b64encode(b'{"string_to_param": {"*": {"TORCH').decode(),
                                   base64.b64encode(b'{"string_to_param": {"*": {"TORCHTENSOR": [[1], [2, 3]]}}}').decode()])
def test_a_png_whose_embedding_chunk_is_damaged_says_to_get_it_again(tmp_path, chunk):
    """A damaged chunk (bad base64, JSON cut short, a ragged tensor) was named, but with no fix."""
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", chunk)
    Image.new("RGB", (8, 8)).save(tmp_path / "emb.png", pnginfo=info)
    with pytest.raises(FormatError, match=r"emb.png: the 'sd-ti-embedding' chunk is not base64-encoded JSON of an "
                                          r"embedding \(.*\), so the embedding in this picture is damaged: get the "
                                          r"picture again, or the embedding's .pt or .safetensors file$"):
        load_embedding(tmp_path / "emb.png")


def test_a_png_cut_short_says_to_get_it_again(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", "x" * 4000)
    Image.new("RGB", (64, 64)).save(tmp_path / "emb.png", pnginfo=info)
    data = (tmp_path / "emb.png").read_bytes()
    (tmp_path / "emb.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(FormatError, match=r"emb.png: cannot read this image .*truncated or damaged: get the file "
                                          r"again$"):
        load_embedding(tmp_path / "emb.png")


def test_a_file_of_no_tensors_says_so(tmp_path):
    """A safetensors file of metadata alone, or a pickled empty dict, was an "unknown embedding layout with keys ."."""
    save_file({}, tmp_path / "none.safetensors", metadata={"format": "pt"})
    torch.save({}, tmp_path / "none.pt")
    for name in ("none.safetensors", "none.pt"):
        with pytest.raises(FormatError, match=rf"{name}: holds no tensors at all, so no embedding: .* get the file "
                                              r"again$"):
            load_embedding(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="nope.pt: no such file"):
        load_embedding(tmp_path / "nope.pt")
    with pytest.raises(FormatError, match="folder without"):
        load_embedding(tmp_path)


@pytest.mark.parametrize("content, match", [
    ({"<x>": torch.zeros(2, 3, 4)}, r"shape \[2, 3, 4\]"),
    ({"<x>": torch.zeros(0, 768)}, r"shape \[0, 768\]"),
    ({"string_to_param": {"*": torch.zeros(1, 8), "@": torch.zeros(1, 8)}}, "holds 2 embeddings"),
    ([torch.zeros(1, 8)], "holds a list"),
    ({"hash": "abc", "optimizer_state_dict": {}}, r"\.pt\.optim"),
])
def test_bad_pickled_contents(tmp_path, content, match):
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(FormatError, match=match):
        load_embedding(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------------------------------
# convert and describe


def test_convert_chain_is_exact(tmp_path):
    emb = make_emb("sd1", 3)
    save_embedding(emb, tmp_path / "learned_embeds.safetensors")
    assert convert(tmp_path / "learned_embeds.safetensors", tmp_path / "a.pt") == [tmp_path / "a.pt"]
    convert(tmp_path / "a.pt", tmp_path / "b.png")
    convert(tmp_path / "b.png", tmp_path / "c.safetensors", to="kohya")
    convert(tmp_path / "c.safetensors", tmp_path / "d.bin")
    back = load_embedding(tmp_path / "c.safetensors")
    assert back.token == emb.token and own_metadata(back) == {**emb.metadata, "token": emb.token}
    assert_same_vectors(emb, back)
    assert_same_vectors(emb, load_embedding(tmp_path / "d.bin"))
    assert [detect_format(tmp_path / n) for n in ("a.pt", "b.png", "c.safetensors", "d.bin")] == \
        ["a1111", "a1111-png", "kohya", "diffusers-bin"]

    convert(tmp_path / "a.pt", tmp_path / "renamed.safetensors", token="<cat>")
    renamed = load_embedding(tmp_path / "renamed.safetensors")
    assert renamed.token == "<cat>" and renamed.metadata["token"] == "<cat>"


def test_convert_refuses_an_existing_output_unless_told_to_overwrite(tmp_path):
    """A mistyped dst (another embedding's name, the source itself) must not silently replace a file; train refuses
    a used --out the same way. overwrite=True (--overwrite) replaces it, atomically."""
    emb, other = make_emb("sd1", 2), make_emb("sd1", 1, token="<cat>", seed=1)
    (src,) = save_embedding(emb, tmp_path / "learned_embeds.safetensors")
    (kept,) = save_embedding(other, tmp_path / "cat.pt", format="a1111")
    before = kept.read_bytes()
    with pytest.raises(FormatError, match=r"cat\.pt already exists; pass overwrite=True"):
        convert(src, kept)
    assert kept.read_bytes() == before
    with pytest.raises(FormatError, match="already exists"):  # a folder: the file it would get inside is checked
        convert(tmp_path / "cat.pt", tmp_path)
    with pytest.raises(FormatError, match="already exists"):  # in place, e.g. only to rename the token
        convert(src, src, token="<new>")
    assert load_embedding(src).token == "<my-dog>"
    # diffusers-sdxl writes two files: the second is checked too, before either is written
    xl = make_emb("sdxl", 2)
    (sdxl_src,) = save_embedding(xl, tmp_path / "xl.safetensors", format="sdxl")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "learned_embeds_2.safetensors").write_bytes(b"someone else's")
    with pytest.raises(FormatError, match="learned_embeds_2.safetensors already exists"):
        convert(sdxl_src, tmp_path / "d" / "learned_embeds.safetensors", to="diffusers")
    assert not (tmp_path / "d" / "learned_embeds.safetensors").exists()

    assert convert(src, kept, overwrite=True) == [kept]
    assert_same_vectors(emb, load_embedding(kept))
    convert(src, src, token="<new>", overwrite=True)
    assert load_embedding(src).token == "<new>"
    written = convert(sdxl_src, tmp_path / "d" / "learned_embeds.safetensors", to="diffusers", overwrite=True)
    assert_same_vectors(xl, load_embedding(written[0]))


def test_a_new_folder_written_with_a_trailing_slash_gets_the_file_inside(tmp_path):
    """`textinv convert x.pt out/ --to diffusers` with no out/ yet: Path drops the slash, and the folder was taken
    for a file name without a suffix (refused for its extension, or with --to written as the file 'out')."""
    emb = make_emb("sd1", 2)
    (src,) = save_embedding(emb, tmp_path / "a.pt", format="a1111")
    (written,) = convert(src, f"{tmp_path / 'new'}/", to="diffusers")
    assert written == tmp_path / "new" / "learned_embeds.safetensors"
    (written,) = convert(src, f"{tmp_path / 'new2'}{os.sep}")  # (no --to: a folder means safetensors)
    assert written.parent == tmp_path / "new2" and written.suffix == ".safetensors"
    assert_same_vectors(emb, load_embedding(written))


def test_convert_unknown_extension_names_the_flag(tmp_path, capsys):
    """An extension that names no format is refused naming the setting that gives one: --to on the command line,
    from Python the keywords (it said --to there too)."""
    from textinv.cli import main

    save_embedding(make_emb("sd1", 1), tmp_path / "learned_embeds.safetensors")
    with pytest.raises(FormatError, match=r"give the format \(to=, save_embedding's format=\): diffusers, "):
        convert(tmp_path / "learned_embeds.safetensors", tmp_path / "out.txt")
    assert main(["convert", str(tmp_path / "learned_embeds.safetensors"), str(tmp_path / "out.txt")]) == 2
    assert "give the format (--to): diffusers, diffusers-bin, a1111," in capsys.readouterr().err


def test_convert_sdxl(tmp_path):
    emb = make_emb("sdxl", 2)
    save_embedding(emb, tmp_path / "xl.safetensors", format="sdxl")
    convert(tmp_path / "xl.safetensors", tmp_path / "out.safetensors")  # .safetensors + a pair -> sdxl
    assert detect_format(tmp_path / "out.safetensors") == "sdxl"
    written = convert(tmp_path / "out.safetensors", tmp_path / "d" / "learned_embeds.safetensors", to="diffusers-sdxl")
    assert_same_vectors(emb, load_embedding(written[0]))
    with pytest.raises(FormatError, match="'sdxl'"):
        convert(tmp_path / "xl.safetensors", tmp_path / "xl.pt")
    with pytest.raises(FormatError, match="extension '.ckpt'"):
        convert(tmp_path / "xl.safetensors", tmp_path / "xl.ckpt")


def test_inspect_says_the_name_the_web_ui_calls_a_file_by(tmp_path):
    """A1111 and ComfyUI call an embedding by its file name, whatever token it stores: inspect says that name when
    it differs, since it is what a web UI user must type."""
    from textinv.inspect import inspect_file

    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 768)}, "name": "charturner"},
               tmp_path / "charturnerv2.pt")
    report = inspect_file(tmp_path / "charturnerv2.pt")
    assert report["token"] == "charturner" and report["web_ui_name"] == "charturnerv2"
    assert "A1111 web UI and ComfyUI: charturnerv2" in report["text"]
    (path,) = save_embedding(make_emb("sd1", 1), tmp_path, format="kohya")  # my-dog.safetensors for "<my-dog>"
    assert inspect_file(path)["web_ui_name"] == "my-dog"
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}, "name": "same"}, tmp_path / "same.pt")
    report = inspect_file(tmp_path / "same.pt")
    assert "web_ui_name" not in report and "calls an embedding" not in report["text"]


def test_inspect_says_the_name_the_web_ui_calls_an_image_embedding_by(tmp_path):
    """The web UI calls an image embedding by the name in its text chunk, not its file name: a PNG written under
    another name than the token's (a step's, or `convert ... concept.png`) is called by that name there."""
    from textinv.inspect import inspect_file

    (path,) = save_embedding(make_emb("sd1", 1), tmp_path / "dog-500.png", format="a1111-png")
    report = inspect_file(path)
    assert report["token"] == "<my-dog>" and report["web_ui_name"] == "dog-500"
    assert "A1111 web UI: dog-500" in report["text"]
    path.rename(tmp_path / "renamed.png")  # (the chunk's name goes with it: the file's new name is not it)
    assert inspect_file(tmp_path / "renamed.png")["web_ui_name"] == "dog-500"
    (path,) = save_embedding(make_emb("sd1", 1), tmp_path, format="a1111-png")  # my-dog.png: the chunk names the token
    report = inspect_file(path)
    assert "web_ui_name" not in report and "calls an image embedding" not in report["text"]


def test_inspect_says_the_hash_the_web_ui_names_a_file_by(tmp_path):
    """The web UI's "TI hashes" (and its embedding cards) name a file by its SHA-256's first 12 hex digits: inspect
    says it, so a picture's TI hashes can be matched to a file."""
    import hashlib

    from textinv.inspect import inspect_file

    (path,) = save_embedding(make_emb("sd1", 1), tmp_path, format="a1111")
    report = inspect_file(path)
    assert report["web_ui_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert f"web UI hash: {report['web_ui_hash']}" in report["text"]


def test_a_model_folder_read_as_an_embedding_is_named_a_model(sd1_dir):
    """`textinv inspect MODEL_FOLDER` said "a folder without learned_embeds.safetensors or learned_embeds.bin: name
    the embedding file", as for any folder: a model folder is said to be one, and where a model goes."""
    with pytest.raises(FormatError, match=r"is a diffusers model folder \(it holds model_index.json\), not an "
                                          r"embedding: name an embedding file \(a model goes to --model\)"):
        load_embedding(sd1_dir)


def test_inspect_lists_a_files_metadata_in_sorted_order(tmp_path):
    """safetensors reads a file's metadata back in another order each run, so the line read differently for the
    same file from one inspect to the next; it is sorted by key."""
    from textinv.inspect import inspect_file

    keys = ["vectors", "token", "steps", "resolution", "property", "init", "family", "clip_skip", "base_model"]
    save_file({"<ball>": torch.randn(1, 768)}, tmp_path / "ball.safetensors",
              metadata={key: str(i) for i, key in enumerate(keys)} | {"token": "<ball>"})
    line = next(line for line in inspect_file(tmp_path / "ball.safetensors")["text"].splitlines()
                if line.startswith("metadata: "))
    shown = [pair.split("=")[0] for pair in line.removeprefix("metadata: ").split(", ")]
    assert shown == sorted(keys)


def test_inspect_of_a_folder_names_the_file_in_it_that_it_read(tmp_path):
    """`inspect runs/c` headed its report "runs/c: diffusers format", naming no file: a folder's file is named."""
    from textinv.inspect import inspect_file

    (tmp_path / "c").mkdir()
    save_embedding(LearnedEmbedding("<ball>", {"text_encoder": torch.randn(1, 768)}), tmp_path / "c", "diffusers")
    assert inspect_file(tmp_path / "c")["text"].splitlines()[0] == \
        f"{tmp_path / 'c'} (learned_embeds.safetensors): diffusers format"
    (tmp_path / "c" / "learned_embeds.safetensors").rename(tmp_path / "c.safetensors")
    assert inspect_file(tmp_path / "c.safetensors")["text"].splitlines()[0] == \
        f"{tmp_path / 'c.safetensors'}: diffusers format"


def test_inspect_says_an_embedding_longer_than_a_prompt_window_is_split(tmp_path):
    """76+ vectors cannot sit in one 75-token pass of CLIP: inspect says so (generate warns when it loads it)."""
    from textinv.inspect import inspect_file

    for n in (75, 76):
        save_file({"emb_params": torch.randn(n, 768)}, str(tmp_path / f"long{n}.safetensors"))
    assert "note_length" not in inspect_file(tmp_path / "long75.safetensors")
    report = inspect_file(tmp_path / "long76.safetensors")
    assert "76 vectors: more than the 75" in report["note_length"] and report["note_length"] in report["text"]


def test_inspect_measures_norms_against_the_models_words_not_its_untrained_rows(tmp_path):
    """The shapes model's 760 rows are mostly byte symbols and word pieces no text produces, left near their
    initial norm; their mean made an embedding made of the model's own words read as several deviations too long.
    A vector copied from a word's row must sit within the reference the report gives."""
    from textinv.inspect import inspect_file
    from textinv.models import load_model
    from textinv.shapes.world import VOCABULARY
    from textinv.tokens import base_embedding

    model = load_model("shapes")
    table = base_embedding(model.text_encoder).weight.detach()
    ids = [model.tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("circle", "red", "background")]
    (path,) = save_embedding(LearnedEmbedding("<words>", {"text_encoder": table[ids]}), tmp_path / "words.pt", "a1111")
    entry = inspect_file(path, model="shapes")["encoders"]["text_encoder"]
    for norm in entry["norms"]:
        assert abs(norm - entry["vocab_norm_mean"]) < 2 * entry["vocab_norm_std"], entry
    words = {model.tokenizer.convert_tokens_to_ids(w + "</w>") for w in VOCABULARY if len(w) > 1}
    assert entry["vocab_norm_mean"] == pytest.approx(table[sorted(words)].norm(dim=1).mean().item(), rel=1e-5)


def test_describe():
    emb = LearnedEmbedding("<x>", {"text_encoder": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}, {"steps": "5"})
    info = describe(emb, vocab_norms=torch.tensor([1.0, 3.0]))
    assert info["token"] == "<x>" and info["num_vectors"] == 2 and info["widths"] == [2]
    assert info["family"] == "2 (no known Stable Diffusion family)" and info["metadata"] == {"steps": "5"}
    enc = info["encoders"]["text_encoder"]
    assert enc["norms"] == [5.0, 1.0] and enc["mean_norm"] == 3.0
    assert enc["vocab_norm_mean"] == 2.0 and enc["vocab_norm_std"] == 1.0


def test_an_embedding_of_the_bundled_shapes_model_is_described_as_its():
    """inspect said "fits: 128 (no known Stable Diffusion family)" of an embedding learned on the bundled model."""
    from pathlib import Path

    import textinv
    from textinv.families import SHAPES_WIDTHS

    config = json.loads((Path(textinv.__file__).parent / "shapes/model/text_encoder/config.json").read_text())
    assert SHAPES_WIDTHS == (config["hidden_size"],)  # (the model's width, named where it is described)
    emb = LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, config["hidden_size"])})
    assert describe(emb)["family"] == "128 (the bundled shapes model)"
    xl = describe(make_emb("sdxl", 1), vocab_norms={"text_encoder_2": torch.ones(4)})
    assert xl["family"] == "768 + 1280 (Stable Diffusion XL)"
    assert "vocab_norm_mean" not in xl["encoders"]["text_encoder"]
    assert xl["encoders"]["text_encoder_2"]["vocab_norm_std"] == 0.0
    json.dumps(xl)  # plain data, ready for the CLI to print


# --------------------------------------------------------------------------------------------------------------------
# ModelSpec keys: written into every safetensors embedding, read from kohya's and others'

# The values ModelSpec defines (github.com/Stability-AI/ModelSpec, the 1.0.1 that kohya's sd-scripts write): each base
# model's architecture id, "/" and the adapter; "v" or "epsilon"; "WxH"; kohya names Stability AI's generative-models
# codebase for its textual-inversion files, and "diffusers" is the spec's own example for diffusers' layout
SPEC_BASES = {("sd1", "epsilon"): "stable-diffusion-v1", ("sd2", "epsilon"): "stable-diffusion-v2-512",
              ("sd2", "v_prediction"): "stable-diffusion-v2-768-v", ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base"}
SGM = "https://github.com/Stability-AI/generative-models"
SPEC_CASES = [("sd1", "epsilon", 512, "diffusers", "diffusers"), ("sd1", "epsilon", 512, "kohya", SGM),
              ("sd2", "epsilon", 512, "kohya", SGM), ("sd2", "v_prediction", 768, "diffusers", "diffusers"),
              ("sdxl", "epsilon", 1024, "sdxl", SGM), ("sdxl", "epsilon", 1024, "diffusers-sdxl", "diffusers")]
DATE = "2024-05-01T10:20:30+00:00"


def tensor_sha256(path) -> str:
    """ModelSpec's hash_sha256, by its definition: of all the file's bytes after the header."""
    import hashlib

    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return "0x" + hashlib.sha256(raw[8 + n:]).hexdigest()


@pytest.mark.parametrize("family, prediction, resolution, fmt, implementation", SPEC_CASES)
def test_modelspec_keys_say_what_each_file_is(tmp_path, family, prediction, resolution, fmt, implementation):
    trained = {**META, "family": family, "prediction_type": prediction, "resolution": str(resolution),
               "clip_skip": "1"}
    emb = make_emb(family, 2, metadata=trained)
    written = save_embedding(emb, tmp_path / "x.safetensors", format=fmt, date=DATE)
    for path in written:  # (both files of a diffusers-sdxl pair)
        meta = safetensors_header(path)["__metadata__"]
        spec = {k: v for k, v in meta.items() if k.startswith("modelspec.")}
        assert spec == {
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": SPEC_BASES[family, prediction] + "/textual-inversion",
            "modelspec.implementation": implementation,
            "modelspec.title": "<my-dog>",
            "modelspec.date": DATE,
            "modelspec.resolution": f"{resolution}x{resolution}",
            "modelspec.prediction_type": {"epsilon": "epsilon", "v_prediction": "v"}[prediction],
            "modelspec.hash_sha256": tensor_sha256(path),
        }  # (clip skip 1, every model's own reading: no encoder_layer)
        assert meta["format"] == "pt" and meta["token"] == "<my-dog>" and meta["base_model"] == "tiny/model"
    assert_same_vectors(emb, load_embedding(written[0]))
    # without a date given, the time of writing, in ISO 8601 with its time zone
    (path, *_) = save_embedding(emb, tmp_path / "y.safetensors", format=fmt)
    from datetime import datetime

    assert datetime.fromisoformat(safetensors_header(path)["__metadata__"]["modelspec.date"]).tzinfo is not None


@pytest.mark.parametrize("fmt", ["diffusers", "kohya", "sdxl", "diffusers-sdxl"])
def test_the_same_embedding_is_written_as_the_same_bytes(tmp_path, fmt):
    """safetensors writes the metadata keys in a hash map's order, another at every save: one embedding written twice
    had two SHA-256s (the file hash generate's "TI hashes" and --again's check go by)."""
    family = "sdxl" if "sdxl" in fmt else "sd1"
    emb = make_emb(family, 2, metadata={**META, "family": family, "resolution": "512"})
    first = save_embedding(emb, tmp_path / "a" / "x.safetensors", format=fmt, date=DATE)
    second = save_embedding(emb, tmp_path / "b" / "x.safetensors", format=fmt, date=DATE)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert list(safetensors_header(a)["__metadata__"]) == sorted(safetensors_header(a)["__metadata__"])
    assert_same_vectors(emb, load_embedding(first[0]))


def test_modelspec_resolution_of_a_width_by_height_run_is_its_size():
    """A run at --resolution 512x768 records "512x768" (a square's run "512"): modelspec's own WIDTHxHEIGHT."""
    from textinv.modelspec import keys_for

    assert keys_for("<t>", (768,), {"family": "sd1", "resolution": "512x768"}, "kohya")["modelspec.resolution"] \
        == "512x768"
    assert keys_for("<t>", (768,), {"family": "sd1", "resolution": "512"}, "kohya")["modelspec.resolution"] \
        == "512x512"


def test_modelspec_of_an_embedding_without_a_record_of_its_training(tmp_path):
    """A file from elsewhere (an A1111 .pt) is named by its widths; what is not known is left out, not guessed,
    except SD 2.x's variant, which the architecture must name: 768-v, as SwarmUI files every 1024-wide embedding."""
    def spec(emb):
        (path,) = save_embedding(emb, tmp_path / "x.safetensors", format="kohya")
        return {k: v for k, v in safetensors_header(path)["__metadata__"].items() if k.startswith("modelspec.")}

    sd1 = spec(make_emb("sd1", 1, metadata={}))
    assert sd1["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert "modelspec.resolution" not in sd1 and "modelspec.prediction_type" not in sd1
    assert spec(make_emb("sd2", 1, metadata={}))["modelspec.architecture"] == \
        "stable-diffusion-v2-768-v/textual-inversion"
    assert spec(make_emb("sd1", 1, metadata={"clip_skip": "2"}))["modelspec.encoder_layer"] == "2"
    # a width no family has (the shapes model's, a test model's): no architecture to name, so no keys at all
    assert spec(LearnedEmbedding("<x>", {"text_encoder": torch.zeros(1, 32)}, {"family": "custom"})) == {}
    # a recorded family the vectors contradict is not written; the vectors' is
    wrong = make_emb("sd2", 1, metadata={"family": "sd1"})
    assert spec(wrong)["modelspec.architecture"] == "stable-diffusion-v2-768-v/textual-inversion"


def kohya_file(path, tensors, **spec):
    """A file as kohya's train_textual_inversion.py writes it: its tensors and its ModelSpec keys."""
    meta = {"modelspec.sai_model_spec": "1.0.1", "modelspec.implementation": SGM, "modelspec.title": path.stem,
            "modelspec.date": "2024-03-02T11:22:33", **{f"modelspec.{k}": v for k, v in spec.items()}}
    save_file(tensors, str(path), metadata=meta)
    return path


def test_a_kohya_files_modelspec_is_read_and_shown_by_inspect(tmp_path):
    from textinv.inspect import inspect_file

    path = kohya_file(tmp_path / "kdog.safetensors", {"emb_params": torch.randn(2, 1024)},
                      architecture="stable-diffusion-v2-768-v/textual-inversion", resolution="768x768",
                      prediction_type="v", thumbnail="data:image/jpeg;base64," + "A" * 4000)
    emb = load_embedding(path)
    assert emb.metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v/textual-inversion"
    info = describe(emb)
    assert info["made_for"] == "sd2" and info["modelspec"]["resolution"] == "768x768"
    text = inspect_file(path)["text"].splitlines()
    # the widths say SD 2.x; the architecture adds which of its two (v-prediction, 768)
    assert "fits: 1024 (Stable Diffusion 2.x)" in text
    assert "made for: stable-diffusion-v2-768-v/textual-inversion, Stable Diffusion 2.x (its modelspec)" in text
    assert "title: kdog" in text and "resolution: 768x768" in text
    (rest,) = [line for line in text if line.startswith("modelspec: ")]
    assert "prediction_type=v" in rest and "thumbnail=(4023 characters)" in rest and "AAAA" not in rest
    # at a width no family has (a small test model's), the architecture is all that names the family
    small = kohya_file(tmp_path / "small.safetensors", {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 64)},
                       architecture="stable-diffusion-xl-v1-base/textual-inversion")
    assert "made for: stable-diffusion-xl-v1-base/textual-inversion, Stable Diffusion XL (its modelspec)" in \
        inspect_file(small)["text"]


def test_a_modelspec_that_contradicts_the_vectors_is_warned_about_not_refused(tmp_path):
    from textinv.formats import ModelSpecWarning
    from textinv.inspect import inspect_file

    half = kohya_file(tmp_path / "half.safetensors", {"emb_params": torch.randn(2, 768)},
                      architecture="stable-diffusion-xl-v1-base/textual-inversion")
    with pytest.warns(ModelSpecWarning, match=r"says 'stable-diffusion-xl-v1-base/textual-inversion' \(Stable "
                                              r"Diffusion XL\), but it holds only the first \(CLIP-L\) text encoder"):
        emb = load_embedding(half)
    assert emb.family == "sd1"  # the vectors decide how it is used
    wide = kohya_file(tmp_path / "wide.safetensors", {"emb_params": torch.randn(1, 1024)},
                      architecture="stable-diffusion-v1/textual-inversion")
    with pytest.warns(ModelSpecWarning, match=r"but its vectors are 1024 \(Stable Diffusion 2.x\)"):
        emb = load_embedding(wide)
    # inspect says it in its report instead of warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = inspect_file(wide)
    assert "but its vectors are 1024" in report["modelspec_mismatch"] and report["modelspec_mismatch"] in report["text"]
    # a converted file says what the vectors are
    with pytest.warns(ModelSpecWarning):
        (out,) = convert(wide, tmp_path / "fixed.safetensors", to="kohya")
    assert safetensors_header(out)["__metadata__"]["modelspec.architecture"] == \
        "stable-diffusion-v2-768-v/textual-inversion"
    # the first file of a diffusers-sdxl pair read alone is one half, and fits when read with its partner
    save_embedding(make_emb("sdxl", 1), tmp_path / "pair" / "learned_embeds.safetensors", format="diffusers-sdxl")
    with pytest.warns(ModelSpecWarning, match="one half of an SDXL embedding"):
        load_embedding(tmp_path / "pair" / "learned_embeds.safetensors", pair=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_embedding(tmp_path / "pair" / "learned_embeds.safetensors").family == "sdxl"


@pytest.mark.parametrize("architecture, match", [
    ("stable-diffusion-xl-v1-base/lora", r"this is a LoRA \(its modelspec.architecture is "
                                         r"'stable-diffusion-xl-v1-base/lora'\), not a textual-inversion embedding: "
                                         r"use it as <lora:x> in a prompt"),
    ("stable-diffusion-v1-lora", "this is a LoRA"),  # (the 1.0.0 draft's spelling)
    ("stable-diffusion-v1", r"this is a Stable Diffusion model checkpoint \(its modelspec.architecture is "
                            r"'stable-diffusion-v1'\), not an embedding: pass it as --model"),
    ("stable-diffusion-xl-v1-base/vae", "this is a VAE .* pass it as --vae"),
    ("flux-1-dev", r"this is a model \(its modelspec.architecture is 'flux-1-dev'\), not a textual-inversion"),
    ("stable-diffusion-xl-v1-base/controlnet", "this is a controlnet"),
])
def test_a_file_whose_modelspec_says_it_is_no_embedding_is_refused_as_what_it_is(tmp_path, architecture, match):
    """Its tensors may look like an embedding's (one tensor under one name); the modelspec says otherwise."""
    path = kohya_file(tmp_path / "x.safetensors", {"emb_params": torch.randn(1, 768)}, architecture=architecture)
    with pytest.raises(FormatError, match=match):
        load_embedding(path)


@pytest.mark.parametrize("tensors, architecture, family", [
    ({"emb_params": torch.randn(2, 768)}, "stable-diffusion-v1/", "sd1"),  # (an adapter left blank: no kind said)
    ({"emp_params": torch.randn(2, 768)}, "stable-diffusion-v1/embedding", "sd1"),
    ({"emp_params": torch.randn(2, 768)}, "stable-diffusion-v1/textual_inversion", "sd1"),  # (other tools' spellings)
    ({"emb_params": torch.randn(1, 768)}, "stable-diffusion-v1/TI", "sd1"),
    ({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, "stable-diffusion-xl-v1-base/embedding", "sdxl"),
    ({"emp_params": torch.randn(1, 768)}, "stable-diffusion-v1-inpainting/embedding", "sd1"),
])
def test_onetrainers_embedding_architecture_is_a_textual_inversion(tmp_path, tensors, architecture, family):
    """OneTrainer's model specs (resources/sd_model_spec/*-embedding.json) call a textual inversion ".../embedding";
    such a file was refused as "a embedding ..., not a textual-inversion embedding", which it is."""
    path = tmp_path / "ot.safetensors"
    save_file(tensors, str(path), metadata={"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                                            "modelspec.implementation": "https://github.com/huggingface/diffusers",
                                            "modelspec.title": "Stable Diffusion Embedding"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (and no contradiction to warn about)
        emb = load_embedding(path)
    assert emb.family == family
    (out,) = convert(path, tmp_path / "k.safetensors", to="sdxl" if family == "sdxl" else "kohya")
    assert safetensors_header(out)["__metadata__"]["modelspec.architecture"] == \
        ("stable-diffusion-xl-v1-base" if family == "sdxl" else "stable-diffusion-v1") + "/textual-inversion"


def test_convert_keeps_the_modelspec(tmp_path):
    src = kohya_file(tmp_path / "kdog.safetensors", {"emb_params": torch.randn(2, 1024)},
                     architecture="stable-diffusion-v2-512/textual-inversion", resolution="512x512",
                     author="someone", hash_sha256="0x" + "0" * 64, hash_md5="0x" + "0" * 32)
    (diffusers,) = convert(src, tmp_path / "d" / "learned_embeds.safetensors")
    meta = safetensors_header(diffusers)["__metadata__"]
    # the same embedding: its architecture (SD 2.x's 512, which the widths alone do not say), title, date, author
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-512/textual-inversion"
    assert (meta["modelspec.title"], meta["modelspec.date"]) == ("kdog", "2024-03-02T11:22:33")
    assert meta["modelspec.author"] == "someone" and meta["modelspec.resolution"] == "512x512"
    # another layout, and other tensor bytes: its implementation and hash are this file's
    assert meta["modelspec.implementation"] == "diffusers" and meta["modelspec.hash_sha256"] == tensor_sha256(diffusers)
    assert "modelspec.hash_md5" not in meta  # (another algorithm's hash of the old bytes: not carried)
    # through a pickle (whose record keeps textinv's metadata) and back
    convert(diffusers, tmp_path / "kdog.pt")
    (back,) = convert(tmp_path / "kdog.pt", tmp_path / "back.safetensors", to="kohya")
    again = safetensors_header(back)["__metadata__"]
    assert again["modelspec.architecture"] == meta["modelspec.architecture"]
    assert again["modelspec.implementation"] == SGM
    # a new token: a title that only named the old one follows it
    (renamed,) = convert(src, tmp_path / "cat.safetensors", token="<cat>")
    assert safetensors_header(renamed)["__metadata__"]["modelspec.title"] == "<cat>"


# --------------------------------------------------------------------------------------------------------------------
# diffusers' own loader reads what we write


def _tiny_clip(tmp_path):
    """A CLIP tokenizer (a character-level BPE vocabulary written here: no hub) and a tiny CLIPTextModel."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789<>-_"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"do": len(vocab), "dog</w>": len(vocab) + 1})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nd o\ndo g</w>\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=len(vocab), max_position_embeddings=77, pad_token_id=1,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    return tokenizer, CLIPTextModel(config)


@pytest.mark.parametrize("fmt", ["diffusers", "diffusers-bin", "a1111", "kohya"])
def test_diffusers_loader_reads_our_files(tmp_path, fmt):
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin

    class Pipe(TextualInversionLoaderMixin):
        hf_device_map = None  # the mixin checks these two pipeline attributes for offloading hooks
        components = {}

    tokenizer, text_encoder = _tiny_clip(tmp_path)
    assert tokenizer.tokenize("a dog") == ["a</w>", "dog</w>"]
    # recorded as trained on SD 1.x, so the safetensors files carry their ModelSpec keys at this small width too
    emb = LearnedEmbedding("<my-dog>", {"text_encoder": torch.randn(3, 32)}, {"family": "sd1", "resolution": "512"})
    (tmp_path / "out").mkdir()
    (path,) = save_embedding(emb, tmp_path / "out", format=fmt)
    if path.suffix == ".safetensors":
        meta = safetensors_header(path)["__metadata__"]
        assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion" and meta["format"] == "pt"
    # a kohya file is keyed "emb_params", not by its token: diffusers takes the token as an argument
    token = {"token": "<my-dog>"} if fmt == "kohya" else {}
    Pipe().load_textual_inversion(str(path), tokenizer=tokenizer, text_encoder=text_encoder, **token)
    ids = tokenizer.convert_tokens_to_ids(["<my-dog>", "<my-dog>_1", "<my-dog>_2"])
    rows = text_encoder.get_input_embeddings().weight[ids].detach()
    assert torch.equal(rows, emb.vectors["text_encoder"])
    assert Pipe().maybe_convert_prompt("a <my-dog>", tokenizer) == "a <my-dog> <my-dog>_1 <my-dog>_2"


def test_a_torch_file_named_safetensors_is_read_by_its_bytes(tmp_path):
    # newer torch.load picks its loader from a path's extension; files are recognised by their content here
    emb = make_emb("sd1", 2)
    for fmt, name in (("a1111", "a.pt"), ("diffusers-bin", "b.bin")):
        save_embedding(emb, tmp_path / name, fmt)
        wrong = tmp_path / (name + ".safetensors")
        wrong.write_bytes((tmp_path / name).read_bytes())
        assert detect_format(wrong) == fmt
        assert_same_vectors(emb, load_embedding(wrong))


def test_an_unwritable_destination_is_a_format_error_naming_it(tmp_path):
    emb = make_emb("sd1", 1)
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(FormatError, match="cannot write .*file.safetensors/e.pt"):
        save_embedding(emb, tmp_path / "file.safetensors" / "e.pt", "a1111")
    with pytest.raises(FormatError, match="cannot write .*File name too long"):  # (an OSError even for root)
        save_embedding(emb, tmp_path / ("x" * 300 + ".safetensors"))


def a1111_name(path) -> str:
    """The name the A1111 web UI registers an embedding file under (modules/textual_inversion/textual_inversion.py,
    EmbeddingDatabase.load_from_file): an image's is the `name` in its sd-ti-embedding chunk (the file name when it
    has none); a .pt, .bin or .safetensors file's is its file name without the extension."""
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext.upper() in (".PNG", ".WEBP"):
        with Image.open(path) as image:
            data = json.loads(base64.b64decode(image.text["sd-ti-embedding"]))
        return data.get("name", stem)
    return stem


def test_a1111_png_step_files_get_distinct_names_in_the_web_ui(tmp_path):
    """Each --save-every step of an a1111-png run is its own file (my-dog-500.png, my-dog-1000.png) beside the final
    my-dog.png. The web UI names image embeddings by the chunk's `name`, so if every file says "<my-dog>" they all
    register under one name and only one of them can be used (which one depends on the folder's listing order)."""
    names = {}
    for step in (500, 1000):
        emb = LearnedEmbedding("<my-dog>", {"text_encoder": torch.randn(2, 768)}, {"steps": str(step)})
        (path,) = save_embedding(emb, tmp_path / step_filename("a1111-png", emb.token, step), "a1111-png")
        names[path.name] = a1111_name(path)
        assert load_embedding(path).token == "<my-dog>"  # textinv still reads the step file as the run's token
    (path,) = save_embedding(LearnedEmbedding("<my-dog>", {"text_encoder": torch.randn(2, 768)}), tmp_path,
                             "a1111-png")
    names[path.name] = a1111_name(path)
    assert len(set(names.values())) == len(names), names
    assert names["my-dog-500.png"] == "my-dog-500"  # as the web UI names its own step files


def test_sd1_and_sd2_versions_of_one_concept_are_not_fused_into_an_sdxl_pair(tmp_path):
    """x.safetensors and x_2.safetensors keyed by the same token at 768 and 1024 are a concept's SD 1.x and SD 2.x
    versions, not diffusers' two-file SDXL layout (768 + 1280): the SD 1.x file must load alone."""
    sd1, sd2 = torch.randn(1, 768), torch.randn(1, 1024)
    save_file({"<cat-toy>": sd1}, tmp_path / "cat-toy.safetensors")
    save_file({"<cat-toy>": sd2}, tmp_path / "cat-toy_2.safetensors")
    emb = load_embedding(tmp_path / "cat-toy.safetensors")
    assert emb.widths == (768,) and emb.family == "sd1" and torch.equal(emb.vectors["text_encoder"], sd1)
    assert detect_format(tmp_path / "cat-toy.safetensors") == "diffusers"
    # the real SDXL pair, and a pair of widths no known family has (the tiny test models), still pair
    save_file({"<cat-toy>": torch.randn(1, 1280)}, tmp_path / "cat-toy_2.safetensors")
    assert load_embedding(tmp_path / "cat-toy.safetensors").family == "sdxl"
    save_file({"<t>": torch.randn(1, 32)}, tmp_path / "t.safetensors")
    save_file({"<t>": torch.randn(1, 64)}, tmp_path / "t_2.safetensors")
    assert load_embedding(tmp_path / "t.safetensors").widths == (32, 64)


VAE_KEYS = {  # a VAE alone: the original layout (vae-ft-mse-840000-ema-pruned, sdxl_vae), as a checkpoint's part,
    # and diffusers' (a model folder's vae/diffusion_pytorch_model.safetensors)
    "ldm": {"encoder.conv_in.weight": (8, 3, 3, 3), "encoder.down.0.block.0.conv1.weight": (8, 8, 3, 3),
            "decoder.conv_in.weight": (8, 4, 3, 3), "quant_conv.weight": (8, 8, 1, 1)},
    "prefixed": {"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3),
                 "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3)},
    "diffusers": {"encoder.conv_in.weight": (8, 3, 3, 3), "encoder.down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3),
                  "decoder.up_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3), "post_quant_conv.weight": (4, 4, 1, 1)},
}


@pytest.mark.parametrize("layout", VAE_KEYS)
def test_a_vae_given_as_an_embedding_is_named_a_vae_as_model_names_it(tmp_path, layout):
    """Web-UI users keep VAE files beside their embeddings and checkpoints. Given as --model a VAE is named one
    ("pass it to --vae"); given as an embedding it was an "unknown embedding layout" (original layout) or "a model
    checkpoint: pass it as --model" (diffusers' layout, which --model then refuses): one reading of the names, one
    answer, both ways."""
    from textinv.errors import ModelError
    from textinv.models import load_model

    path = tmp_path / "vae.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in VAE_KEYS[layout].items()}, path)
    with pytest.raises(FormatError, match=r"vae\.safetensors: this is a VAE .*not an embedding: pass it as --vae"):
        load_embedding(path)
    with pytest.raises(ModelError, match=r"is a VAE alone, not a whole model: pass it to --vae"):
        load_model(path)


@pytest.mark.parametrize("part, keys", [("UNet", {"down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3),
                                                  "mid_block.resnets.0.conv1.weight": (8, 8, 3, 3)}),
                                        ("text encoder", {"text_model.embeddings.token_embedding.weight": (10, 8),
                                                          "text_model.final_layer_norm.weight": (8,)})])
def test_a_diffusers_models_part_given_as_an_embedding_points_at_the_models_folder(tmp_path, part, keys):
    """A diffusers folder's component file is no model either: "pass it as --model" only led to --model's own
    refusal ("holds only the UNet of a diffusers model: pass the model's folder"); both now say the latter."""
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, path)
    with pytest.raises(FormatError, match=rf"this is the {part} of a diffusers model .*not an embedding: pass the "
                                          rf"model's folder \(the one with model_index.json\) as --model"):
        load_embedding(path)


def test_a_token_stored_decomposed_is_read_composed_and_found_in_the_prompt(sd1_dir, tmp_path):
    """A token saved in NFD (a name typed into a macOS file name, or from a tool that keeps it so) drew the same as
    its NFC form, CLIP's tokenizer composing both, but `generate` warned it was "in no --prompt" and two files of the
    one name were two tokens: a token is composed when read."""
    import unicodedata

    from textinv.config import GenerateConfig
    from textinv.generate import generate

    composed = "<caf\u00e9>"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    path = tmp_path / "e.safetensors"  # (diffusers' file: the token is its key, written as it was given)
    save_file({decomposed: torch.randn(32)}, str(path))
    assert load_embedding(path).token == composed
    assert LearnedEmbedding(decomposed, {"text_encoder": torch.randn(1, 32)}).token == composed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(GenerateConfig(prompt=[f"a photo of {composed}"], embedding=[str(path)], n=1, steps=1,
                                model=str(sd1_dir), out=str(tmp_path / "r")), progress=False)


def test_an_older_textinvs_drawn_picture_given_as_an_embedding_is_pointed_to_again(tmp_path):
    """A picture an older textinv drew keeps its settings as per-key text (prompt, seed, ... beside textinv_version),
    which `generate --again` reads; given as an embedding it was called a picture without settings."""
    info = PngImagePlugin.PngInfo()
    for key, value in (("textinv_version", "0.0.9"), ("prompt", "a dog"), ("seed", "3")):
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(tmp_path / "old.png", pnginfo=info)
    with pytest.raises(FormatError, match=r"drawn picture .*textinv generate --again"):
        load_embedding(tmp_path / "old.png")


def test_a_file_name_of_another_formats_suffix_is_answered_with_its_own_name_and_the_right_suffix(tmp_path):
    """`convert ball.pt ball2.safetensors --to a1111` was told to rename it 'ball.pt', the token's name (a file that
    may exist, and not the one asked for): the name given, with the format's suffix."""
    from textinv.formats import check_suffix

    with pytest.raises(FormatError, match=r"ball2\.safetensors: .* name it 'ball2\.pt', or pick another format"):
        check_suffix("ball2.safetensors", "a1111", "ball")
    with pytest.raises(FormatError, match=r"name it 'sub/mix\.safetensors'"):
        check_suffix("sub/mix.pt", "kohya", "<mix>")
