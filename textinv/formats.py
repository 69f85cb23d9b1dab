"""Embedding files: read every layout the ecosystem writes, write the ones other tools read.

A learned embedding is a token plus, for each text encoder of the pipeline, a `(num_vectors, width)` float32 tensor.
The files that carry it (see /work/shared/FORMATS.md for the full table):

    diffusers        learned_embeds.safetensors   {token: [n, d]}, metadata {"format": "pt", "modelspec.*", ...}
    diffusers-bin    learned_embeds.bin           torch.save({token: [n, d]}); a 1-D [d] means n = 1
    a1111            <name>.pt                    {"string_to_token": {"*": 265}, "string_to_param": {"*": [n, d]},
                                                   "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    a1111-png        <name>.png                   text chunk "sd-ti-embedding" = base64(JSON of the a1111 dict), and
                                                  the same JSON hidden in pixel strips either side (`a1111_pixels`)
    kohya            <name>.safetensors           {"emb_params": [n, d]}, metadata may carry "modelspec.*" keys
    onetrainer       <name>.safetensors           {"emp_params": [n, d]} (+ "emp_params_out", ignored); read only
    sdxl             <name>.safetensors           {"clip_l": [n, 768], "clip_g": [n, 1280]}
    diffusers-sdxl   learned_embeds.safetensors + learned_embeds_2.safetensors, one {token: [n, d]} per encoder
    lora-bundle      <lora>.safetensors           a LoRA's tensors + "bundle_emb.<NAME>.<key>" per embedding; read only

Decisions worth knowing:
- Files are recognised by their bytes (safetensors header, torch zip/pickle, PNG/WebP signature), never by the
  extension alone. Pickles are only ever opened with `torch.load(..., weights_only=True)`.
- The paper's code stores `string_to_param` as an `nn.ParameterDict`, which `weights_only` refuses. We map that one
  class name onto an inert stand-in that only keeps the pickled state, so those files load without running code.
- Every writer that has room for metadata also records `token`, so a kohya or sdxl file (whose tensors are not named
  after the token) gives the same token back. The safetensors container key `format` is not part of the metadata.
- Every safetensors file we write (diffusers, kohya, sdxl, both files of diffusers-sdxl) also carries ModelSpec keys
  beside ours, as kohya's sd-scripts write them (see `modelspec`): modelspec.architecture "<base>/textual-inversion"
  for the family it was trained on (stable-diffusion-v1, -v2-512, -v2-768-v, -xl-v1-base), title (the token),
  date, resolution and prediction type as trained, hash_sha256 of the tensors, and implementation "diffusers" for
  the diffusers layouts, "https://github.com/Stability-AI/generative-models" (kohya's) for emb_params and
  clip_l/clip_g. Loaders ignore them: diffusers, A1111 and ComfyUI read the tensors alone. A file read with them
  keeps them in its metadata, so `convert` carries them (title, date, author, SD 2.x's variant) and refreshes what
  belongs to the new file (implementation, hash). The pickles and PNG have no place for them.
- A modelspec.architecture that is no textual inversion (".../lora", a whole model's "stable-diffusion-v1") is
  refused as what it says, like tensor names that are a LoRA's or a model's (`_unknown_layout`); one that
  contradicts the vectors (SDXL on one 768-wide tensor) is warned about (`ModelSpecWarning`), and the vectors decide.
- diffusers-sdxl: `load_embedding("learned_embeds.safetensors")` also reads `learned_embeds_2.safetensors` beside it
  when that file is keyed by the same token and has another width (diffusers' SDXL example writes exactly this pair,
  also as `learned_embeds-steps-N` / `learned_embeds_2-steps-N`; for other names the partner of `x.safetensors` is
  `x_2.safetensors`, as our writer names it); the second file given alone finds the first beside it the same way
  (`first_file`). A partner with another number of vectors is an error. Pass
  `pair=False` to read one file alone, or name both files with `load_embedding_pair`.
- lora-bundle: a LoRA may carry embeddings, as the A1111 web UI (extensions-builtin/Lora/networks.py), Forge and
  OneTrainer's "bundle embeddings" write and read them: `bundle_emb.NAME.KEY`, where NAME (no dot) is what prompts
  call it and KEY one tensor name of an embedding file: `string_to_param.*` (an A1111 .pt's dict), `emb_params`, or
  `clip_l` + `clip_g` (any single tensor name reads as its one tensor, as the web UI reads it). `FILE::NAME` names one
  (`split_bundle`); a file that bundles one alone gives it without; a LoRA that bundles none is refused as a LoRA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import pickle
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple

import torch

from . import a1111_pixels, modelspec
from .data import MAX_IMAGE_PIXELS, _open_image
from .errors import ON_COMMAND_LINE, ConfigError, FormatError, TextinvWarning, given, setting, warn
from .families import FAMILY_NAMES, TEXT_ENCODERS, describe_widths, family_for_widths
from .io import absolute, atomic_path

# Formats we write, and the ones `detect_format` can name (we read OneTrainer files but do not write them).
FORMATS = ("diffusers", "diffusers-bin", "a1111", "a1111-png", "kohya", "sdxl", "diffusers-sdxl")
TOKEN_FREE_FORMATS = ("diffusers", "diffusers-bin", "diffusers-sdxl")  # files named learned_embeds.*, any token
DETECTED_FORMATS = ("diffusers", "diffusers-bin", "a1111", "a1111-png", "kohya", "onetrainer", "sdxl", "clip_l",
                    "diffusers-sdxl", "lora-bundle")
# a diffusers-sdxl first file's record of its second (`_pair_hash`): a save cut short between the two is seen
PAIR_KEY = "textinv_pair_sha256"
BUNDLE_PREFIX = "bundle_emb."  # a LoRA's bundled embeddings: bundle_emb.<NAME>.<the embedding file's tensor name>
BUNDLE_SEPARATOR = "::"  # FILE::NAME, one embedding bundled in a LoRA file

PNG_CHUNK = "sd-ti-embedding"  # the text chunk A1111 reads an embedding from
RECORD_KEY = "textinv_settings"  # the text chunk of a picture textinv drew: its settings, as JSON (`generate`)
A1111_STAR_ID = 265  # CLIP's id for "*", the placeholder string A1111 files are keyed by

_SINGLE_ENCODER_FORMATS = ("diffusers", "diffusers-bin", "a1111", "a1111-png", "kohya")
_TWO_ENCODER_FORMATS = ("sdxl", "diffusers-sdxl")
_SUFFIXES = {  # what each format's file must be called for the tools that pick a loader by extension
    "diffusers": (".safetensors",),
    "diffusers-bin": (".bin", ".pt"),
    "a1111": (".pt", ".bin"),
    "a1111-png": (".png",),
    "kohya": (".safetensors",),
    "sdxl": (".safetensors",),
    "diffusers-sdxl": (".safetensors",),
}
_SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}  # the standard SDXL file's names for our encoders
_DIFFUSERS_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")  # what a diffusers output folder holds
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library refuses larger headers too
# An embedding is small (75 SDXL vectors in float32: 600 KB); a file this large is a model or a LoRA, refused before
# its tensors are loaded (a checkpoint's would take gigabytes of memory only to be refused)
_MAX_EMBEDDING_BYTES = 50 * 2**20
# Tensor names that say what a file of model weights is (`weights_kind`): kohya/A1111 LoRA (lora_unet_...,
# .lora_down.), diffusers' and peft's (.lora_A., .lora.down.), LyCORIS (hada_, lokr_); a VAE alone, in the original
# layout (vae-ft-mse-840000-ema-pruned, sdxl_vae), diffusers' or a checkpoint's; a single-file checkpoint
# (A1111/CompVis names, or a .ckpt's "state_dict"); and a diffusers model's UNet or text encoder
_LORA_NAMES = re.compile(r"(^|[._])lora[._]|lora_(down|up|A|B)\b|(^|[._])(hada|lokr)_")
_VAE_NAMES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")
_CHECKPOINT_NAMES = re.compile(r"^(model\.diffusion_model|first_stage_model|cond_stage_model|conditioner\.embedders|"
                               r"model_ema|state_dict$)")
_PART_NAMES = {"UNet": ("down_blocks.", "mid_block.", "conv_in."),
               "text encoder": ("text_model.", "embeddings.token_embedding")}


@dataclass
class LearnedEmbedding:
    """A placeholder token and its vectors, one `(num_vectors, width)` tensor per text encoder.

    The tensors are stored as float32 CPU contiguous copies, so the caller can keep changing its own.

    >>> emb = LearnedEmbedding("<my-dog>", {"text_encoder": torch.zeros(2, 768)})
    >>> emb.num_vectors, emb.widths, emb.family
    (2, (768,), 'sd1')
    """

    token: str
    vectors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.token, str) or not self.token.strip():
            raise FormatError(f"the token must be a non-empty string, got {self.token!r}")
        # composed (NFC), as CLIP's tokenizers read text: a token stored decomposed (macOS file names are) draws the
        # same, but compared with the prompt's words it was "in no prompt", and two forms of one name were two tokens
        self.token = unicodedata.normalize("NFC", self.token)
        if not isinstance(self.vectors, Mapping) or not self.vectors:
            raise FormatError(f"vectors must map text-encoder names {TEXT_ENCODERS} to tensors, got {self.vectors!r}")
        unknown = [name for name in self.vectors if name not in TEXT_ENCODERS]
        if unknown:
            raise FormatError(f"unknown text encoder(s) {unknown} in vectors: use the names {TEXT_ENCODERS}")
        if "text_encoder" not in self.vectors:
            raise FormatError("vectors has no 'text_encoder' entry: every pipeline has one, SDXL adds 'text_encoder_2'")
        vectors = {}
        for name in TEXT_ENCODERS:  # keep the pipeline's order whatever order the caller used
            if name not in self.vectors:
                continue
            t = self.vectors[name]
            if not isinstance(t, torch.Tensor):
                raise FormatError(f"vectors[{name!r}] is a {type(t).__name__}, not a tensor")
            if t.dim() != 2 or t.numel() == 0:
                raise FormatError(f"vectors[{name!r}] has shape {list(t.shape)}: it must be (num_vectors, width), "
                                  "both at least 1")
            if not t.is_floating_point():
                raise FormatError(f"vectors[{name!r}] has dtype {t.dtype}: embeddings are floating-point")
            t = t.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
            if not torch.isfinite(t).all():
                raise FormatError(f"vectors[{name!r}] contains NaN or infinite values: this embedding is broken "
                                  "(training diverged?); use an earlier checkpoint")
            vectors[name] = t
        counts = {name: t.shape[0] for name, t in vectors.items()}
        if len(set(counts.values())) > 1:
            raise FormatError(f"the text encoders disagree on the number of vectors: {counts}")
        self.vectors = vectors

        if not isinstance(self.metadata, Mapping):
            raise FormatError(f"metadata must be a dict of strings, got {type(self.metadata).__name__}")
        metadata = {}
        for key, value in self.metadata.items():
            if not isinstance(value, (str, int, float, bool)):  # files store strings; other types do not round-trip
                raise FormatError(f"metadata[{key!r}] is a {type(value).__name__}; use a str, int, float or bool")
            metadata[str(key)] = str(value)
        self.metadata = metadata

    def __repr__(self) -> str:
        """The token, each encoder's (vectors, width) and the metadata's size: the tensors' numbers and the
        ModelSpec keys were a screenful where a notebook shows an embedding (or a result that holds one)."""
        shapes = {name: tuple(t.shape) for name, t in self.vectors.items()}
        return f"LearnedEmbedding(token={self.token!r}, vectors={shapes}, metadata=<{len(self.metadata)} keys>)"

    @property
    def num_vectors(self) -> int:
        return self.vectors["text_encoder"].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(t.shape[1] for t in self.vectors.values())  # vectors is kept in TEXT_ENCODERS order

    @property
    def family(self) -> str | None:
        return family_for_widths(self.widths)


# ---------------------------------------------------------------------------------------------------------------------
# File names


def default_filename(format: str, token: str) -> str:
    """The file name a format's readers expect. A1111 and ComfyUI call an embedding by its file name, so those
    formats are named after the token (without its angle brackets); diffusers looks for `learned_embeds.*`.
    For diffusers-sdxl this is the first file; `second_file` gives the other.

    >>> default_filename("a1111", "<my-dog>"), default_filename("diffusers", "<my-dog>")
    ('my-dog.pt', 'learned_embeds.safetensors')
    """
    _check_format(format)
    if format in ("diffusers", "diffusers-sdxl"):
        return "learned_embeds.safetensors"
    if format == "diffusers-bin":
        return "learned_embeds.bin"
    # characters that are not allowed (or mean something else) in file names on some system become "_"
    name = re.sub(r'[\\/:*?"<>|\s\x00-\x1f]', "_", token.strip().strip("<>")).strip("._") or "embedding"
    return name + {"a1111": ".pt", "a1111-png": ".png"}.get(format, ".safetensors")


def step_filename(format: str, token: str, step: int) -> str:
    """The name of one step's embedding as the format's own training tools name it: the diffusers script's
    `learned_embeds-steps-500.safetensors` (its SDXL pair's second file follows by `second_file`), the A1111
    web UI's `my-dog-500.pt` (and the same for the other token-named formats).

    >>> step_filename("diffusers", "<my-dog>", 500), step_filename("a1111", "<my-dog>", 500)
    ('learned_embeds-steps-500.safetensors', 'my-dog-500.pt')
    """
    name = Path(default_filename(format, token))
    joint = "-steps-" if format in TOKEN_FREE_FORMATS else "-"
    return f"{name.stem}{joint}{step}{name.suffix}"


def second_file(path: str | Path) -> Path:
    """Where diffusers' SDXL example keeps the second text encoder's vectors, beside `path`.

    >>> second_file("out/learned_embeds-steps-500.safetensors").name
    'learned_embeds_2-steps-500.safetensors'
    """
    path = Path(path)
    prefix = "learned_embeds"
    if path.name.startswith(prefix) and not path.name.startswith(prefix + "_2"):
        return path.with_name(prefix + "_2" + path.name[len(prefix):])
    return path.with_name(f"{path.stem}_2{path.suffix}")


def first_file(path: str | Path) -> Path | None:
    """The file whose `second_file` is `path` (a diffusers SDXL pair's first, beside its second), or None where
    `path` is named as no second file is.

    >>> first_file("out/learned_embeds_2-steps-500.safetensors").name
    'learned_embeds-steps-500.safetensors'
    """
    path = Path(path)
    prefix = "learned_embeds_2"
    if path.name.startswith(prefix):
        first = path.with_name("learned_embeds" + path.name[len(prefix):])
    elif path.stem.endswith("_2"):
        first = path.with_name(path.stem[:-2] + path.suffix)
    else:
        return None
    return first if second_file(first) == path else None


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def save_embedding(emb: LearnedEmbedding, path: str | Path, format: str | None = None, preview=None, *,
                   overwrite: bool = True, date: str | None = None, caption: bool = True,
                   name: str | None = None) -> list[Path]:
    """Write `emb` to `path` in `format` (one of FORMATS), atomically; return the files written, absolute (as
    `train` returns its own: found from any working directory).

    The format is chosen as `convert` chooses it (`format_for`): left out, it is the one path's extension names
    (.pt: a1111; .safetensors or a folder: diffusers, sdxl for SDXL's two encoders); "diffusers" for SDXL is
    diffusers-sdxl; a format whose files do not end in path's extension is refused, naming both.

    `path` may be a folder (one that exists, or a new one written with a trailing slash, `out/`), in which case
    the file gets `default_filename(format, emb.token)`. For diffusers-sdxl `path` names the first file and the
    second is written beside it (see `second_file`). `preview`, a PIL image, is only used by a1111-png (a plain
    placeholder picture is drawn when it is None), captioned as the web UI captions it unless `caption` is False
    (`a1111_pixels.caption`). With `overwrite=False` a file already there is refused (before
    anything is written) instead of replaced. The safetensors formats also carry ModelSpec keys (`modelspec`);
    `date` is their `modelspec.date` (default: the one the embedding was read with, else now). `name` is an a1111
    file's `name` where it is not the token (a training step's file: the web UI's `my-dog-500`); the token stays in
    textinv's own record, which textinv reads it by.

    >>> save_embedding(emb, "out/my-dog.pt")   # doctest: +SKIP
    [PosixPath('/home/me/out/my-dog.pt')]
    """
    # 1. Check everything before touching the disk.
    if format is not None:
        _check_format(format)
    if not isinstance(emb, LearnedEmbedding):
        raise FormatError(f"save_embedding needs a LearnedEmbedding, got {type(emb).__name__}")
    try:
        format = format_for(path, format, "text_encoder_2" in emb.vectors)  # (a name too long fails in is_dir)
        path = check_writable(path, format, emb.token, emb.widths, overwrite)
        # 2. Write.
        return [Path(absolute(p)) for p in _write_embedding(emb, path, format, preview, date, caption, name)]
    except OSError as e:  # a read-only or full disk, a file where a folder should be, a name too long: say which
        raise FormatError(f"cannot write {path}: {e.strerror or e}; choose another output path") from None


def check_writable(path: str | Path, format: str, token: str, widths: tuple[int, ...], overwrite: bool = True
                   ) -> Path:
    """The file `save_embedding` writes for `path` (a folder: the format's file name in it, `default_filename`),
    once the checks it makes before writing pass: `format` holds an embedding of `widths` (one text encoder's, or
    SDXL's two), the name ends in the format's extension, and without `overwrite` no file is there already (for
    diffusers-sdxl, neither of the two). `merge` makes them before its model loads.

    >>> check_writable("out/", "a1111", "<my-dog>", (768,))
    PosixPath('out/my-dog.pt')
    """
    _check_format(format)
    two = len(widths) == 2
    if format in _SINGLE_ENCODER_FORMATS and two:
        raise FormatError(
            f"the {format!r} format holds the vectors of one text encoder, but {token!r} has two "
            f"({describe_widths(widths)}): save it as 'sdxl' (one file, read by A1111, ComfyUI and kohya) or "
            "'diffusers-sdxl' (two files, one per encoder)")
    if format in _TWO_ENCODER_FORMATS and not two:
        raise FormatError(
            f"the {format!r} format is for SDXL's two text encoders, but {token!r} has one "
            f"({describe_widths(widths)}): save it as 'diffusers', 'a1111' or 'kohya'")
    file = Path(path) / default_filename(format, token) if _names_folder(path) else Path(path)
    check_suffix(file, format, token)
    if not overwrite:
        for target in (file, second_file(file)) if format == "diffusers-sdxl" else (file,):
            if target.exists():
                raise FormatError(f"{target} already exists; pass {setting('overwrite', True)} to replace it, or "
                                  f"choose another output path")
    return file


def check_suffix(path: str | Path, format: str, token: str) -> None:
    """Refuse a file name whose extension `format`'s readers do not take (tools choose their loader by extension);
    a folder (`out/`, or one that exists) passes: the file in it gets the format's own name.

    >>> check_suffix("my-dog.pt", "kohya", "<my-dog>")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    textinv.errors.FormatError: my-dog.pt: a 'kohya' file must end in .safetensors ...
    """
    if not _names_folder(path) and Path(path).suffix.lower() not in _SUFFIXES[format]:
        named = Path(path).with_suffix(_SUFFIXES[format][0]) if Path(path).stem else default_filename(format, token)
        suffix = Path(path).suffix.lower()  # (the formats whose own suffix it is first: .pt is a1111's)
        fits = sorted((name for name, suffixes in _SUFFIXES.items() if suffix in suffixes),
                      key=lambda name: _SUFFIXES[name].index(suffix))
        other = f" ({suffix} is {' or '.join(map(repr, fits))})" if fits else ""
        raise FormatError(
            f"{path}: a {format!r} file must end in {' or '.join(_SUFFIXES[format])} (tools choose their loader "
            f"by extension): name it {str(named)!r}, or pick another format{other}")


def _write_embedding(emb: LearnedEmbedding, path: Path, format: str, preview, date: str | None = None,
                     caption: bool = True, name: str | None = None) -> list[Path]:
    vectors = {name: t.detach().to(torch.float32).contiguous().clone() for name, t in emb.vectors.items()}
    if format in modelspec.IMPLEMENTATIONS:  # the safetensors formats: each file says what it is
        metadata = {k: v for k, v in emb.metadata.items() if not k.startswith(modelspec.PREFIX) and k != PAIR_KEY}
        metadata.update(modelspec.keys_for(emb.token, emb.widths, emb.metadata, format, date))
    if format == "diffusers":
        _write_safetensors(path, {emb.token: vectors["text_encoder"]}, emb.token, metadata)
    elif format == "kohya":
        _write_safetensors(path, {"emb_params": vectors["text_encoder"]}, emb.token, metadata)
    elif format == "sdxl":
        _write_safetensors(path, {key: vectors[name] for key, name in _SDXL_KEYS.items()}, emb.token, metadata)
    elif format == "diffusers-sdxl":
        second = second_file(path)
        # the second file first: the one users point at appears last, once its partner is complete, naming it (a
        # save cut short between the two left the new second file beside the old first)
        _write_safetensors(second, {emb.token: vectors["text_encoder_2"]}, emb.token, metadata)
        _write_safetensors(path, {emb.token: vectors["text_encoder"]}, emb.token,
                           {**metadata, PAIR_KEY: _pair_hash(vectors["text_encoder_2"])})
        return [path, second]
    elif format == "diffusers-bin":
        _write_pickle(path, {emb.token: vectors["text_encoder"]})  # diffusers wants exactly one key: no metadata
    elif format == "a1111":
        _write_pickle(path, _a1111_dict(emb, vectors["text_encoder"], name))
    elif format == "a1111-png":
        _write_a1111_png(path, emb, vectors["text_encoder"], preview, caption)
    return [path]


def _write_pickle(path: Path, obj: dict) -> None:
    """torch.save in the pre-1.6 (non-zip) layout. A1111 checks a zip archive's entry names against a fixed list
    (modules/safe.py) that newer torch's `.format_version` and `.storage_alignment` entries are not on, and skips
    such an embedding; the old layout it reads with its restricted unpickler, and every torch.load reads it too."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp, _use_new_zipfile_serialization=False)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], token: str, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    # "format": "pt" is what diffusers' own files carry; the token is kept for layouts not keyed by it
    metadata = {**metadata, "token": token, "format": "pt"}
    if modelspec.PREFIX + "architecture" in metadata:
        # ModelSpec's hash is of the tensor bytes, which the header (and so the hash in it) does not change
        metadata[modelspec.PREFIX + "hash_sha256"] = modelspec.tensor_hash(save(tensors))
    data = _sorted_metadata(save(tensors, metadata=metadata))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _sorted_metadata(data: bytes) -> bytes:
    """A safetensors file's bytes with its metadata keys in sorted order. safetensors writes them in the order of a
    Rust HashMap, another at every save, so the same embedding got other bytes, and another SHA-256, each time it
    was written: the hash the web UI's "TI hashes" and `generate --again`'s check of a file go by. The header stays
    what safetensors writes (compact JSON, padded with spaces to 8 bytes); the tensors' offsets are from its end."""
    n = int.from_bytes(data[:8], "little")
    return _with_header(json.loads(data[8:8 + n]), data[8 + n:])


def _with_header(header: dict, body: bytes) -> bytes:
    """A safetensors file's bytes: `header` (its metadata keys sorted, see `_sorted_metadata`), then `body`, the
    tensors' bytes its offsets point into."""
    header = {**header, "__metadata__": dict(sorted(header.get("__metadata__", {}).items()))}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


LEGACY_HASH_SLICE = (0x100000, 0x10000)  # the old "addnet" hash: SHA-256 of the 64 KiB at 1 MiB into the file


def _rehashed(data: bytes) -> bytes:
    """A LoRA's safetensors bytes with the hashes of the file its metadata carries computed anew on these bytes:
    kohya's sd-scripts write `sshs_model_hash` and `sshs_legacy_hash` (train_util's precalculate_safetensors_hashes:
    sd-webui-additional-networks' hashes), and the web UI's "Lora hashes" and civitai take the first as the file's
    hash; `modelspec.hash_sha256` is the first again. The first is the SHA-256 of the bytes after the header (the
    header's own changes leave it); the legacy one the first 8 hex digits of the SHA-256 of `LEGACY_HASH_SLICE`,
    which the header's length moves: it is computed with its own 8 digits in place, and left out where the header
    reaches into the slice (over 1 MiB of header: it would hash itself). Keys the file lacks are not added."""
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    metadata = header.get("__metadata__") or {}
    if not {"sshs_model_hash", "sshs_legacy_hash", modelspec.PREFIX + "hash_sha256"} & metadata.keys():
        return data
    for key, value in (("sshs_model_hash", hashlib.sha256(body).hexdigest()),
                       (modelspec.PREFIX + "hash_sha256", modelspec.tensor_hash(data))):
        if key in metadata:
            metadata[key] = value
    if "sshs_legacy_hash" in metadata:
        metadata["sshs_legacy_hash"] = "0" * 8  # (its length kept: the header's, and so the slice's bytes, are known)
        start, size = LEGACY_HASH_SLICE
        placed = _with_header(header, body)
        if len(placed) - len(body) > start:
            del metadata["sshs_legacy_hash"]
        else:
            metadata["sshs_legacy_hash"] = hashlib.sha256(placed[start:start + size]).hexdigest()[:8]
    return _with_header(header, body)


def _a1111_dict(emb: LearnedEmbedding, tensor, name: str | None = None) -> dict:
    """The dict A1111 pickles into a .pt (and JSON-encodes into a PNG); loaders ignore our extra "textinv" key.
    `name` (default: the token) is what the web UI calls an image embedding (see `_write_a1111_png`), and diffusers
    a .pt (the web UI calls a .pt by its file's name)."""
    try:
        step = int(emb.metadata.get("steps", 0))
    except ValueError:
        step = 0
    return {
        "string_to_token": {"*": A1111_STAR_ID},
        "string_to_param": {"*": tensor},
        "name": emb.token if name is None else name,
        "step": step,
        "sd_checkpoint": emb.metadata.get("sd_checkpoint"),
        "sd_checkpoint_name": emb.metadata.get("sd_checkpoint_name", emb.metadata.get("base_model")),
        "textinv": {**emb.metadata, "token": emb.token},
    }


def _write_a1111_png(path: Path, emb: LearnedEmbedding, tensor, preview, caption: bool = True) -> None:
    from PIL import Image, ImageDraw, PngImagePlugin

    # The web UI names a .pt by its file name but an image by the chunk's "name" (EmbeddingDatabase.load_from_file).
    # A file named for the token keeps the token; another (a step's my-dog-500.png) is named as the web UI names its
    # own step files, so the steps of one run do not all register under one name. The token stays in our record.
    own = Path(default_filename("a1111-png", emb.token)).stem
    data = _a1111_dict(emb, None, name=None if path.stem == own else path.stem)
    # float32 -> Python float -> JSON text is exact both ways: repr() of a double round-trips
    data["string_to_param"] = {"*": {"TORCHTENSOR": tensor.tolist()}}
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_CHUNK, base64.b64encode(json.dumps(data).encode("utf-8")).decode("ascii"))
    if preview is None:
        image = Image.new("RGB", (256, 256), (40, 44, 52))
        if not caption:  # (the caption says the name and the vectors)
            ImageDraw.Draw(image).text((12, 12), f"{emb.token}\n{emb.num_vectors} x {describe_widths(emb.widths)}",
                                       fill=(230, 230, 230))
    elif not isinstance(preview, Image.Image):
        raise FormatError(f"preview must be a PIL image, got {type(preview).__name__}")
    else:
        image = preview
    if caption:
        image = a1111_pixels.caption(image, *_caption_texts(data, len(tensor)))
    # the web UI's second copy, in strips of pixels either side: an image host that strips the chunk keeps it
    image = a1111_pixels.hide(image, data, tensor[0].tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def _caption_texts(data: dict, vectors: int) -> tuple[str, str, str, str]:
    """The texts the web UI captions an embedding's picture with (textual_inversion.train_embedding): "<NAME>", the
    checkpoint's name, "[its short hash]" and "Nv Ss" (vectors, steps); a checkpoint not known (a hub model has no
    file hash) leaves its text out. A token already in brackets is not bracketed again."""
    name = data["name"]
    title = name if name.startswith("<") and name.endswith(">") else f"<{name}>"
    mid = f"[{data['sd_checkpoint']}]" if data.get("sd_checkpoint") else ""
    return title, data.get("sd_checkpoint_name") or "", mid, f"{vectors}v {data['step']}s"


# ---------------------------------------------------------------------------------------------------------------------
# Reading


class _Read(NamedTuple):
    """One file, understood: its format, vectors per encoder (raw tensors), the token it names (or None), metadata."""

    format: str
    vectors: dict[str, torch.Tensor]
    token: str | None
    metadata: dict[str, str]


def load_embedding(path: str | Path, token: str | None = None, *, pair: bool = True) -> LearnedEmbedding:
    """Read an embedding file of any layout in FORMATS.md.

    The token is, in order: `token` if given; the key of a diffusers file; the `name` of an A1111 file; the
    metadata's "token"; the file name without extension (what A1111 and ComfyUI call it). `path` may be a diffusers
    output folder holding learned_embeds.safetensors or .bin. With `pair` (the default) a diffusers file whose
    diffusers-sdxl partner (`second_file(path)`, or for a second file `first_file(path)`) lies beside it, keyed by
    the same token at another width, is read as one SDXL pair.

    >>> emb = load_embedding("embeddings/charturner.pt")   # doctest: +SKIP
    >>> emb.token, emb.num_vectors, emb.family              # doctest: +SKIP
    ('charturner', 6, 'sd1')
    """
    path, read = _located_read(path, token, pair)
    return _build(path, read, token)


def read_embedding(path: str | Path) -> tuple[LearnedEmbedding, str]:
    """`load_embedding(path)` and the layout it was read as (`detect_format`'s answer), from one reading of the file.

    >>> emb, layout = read_embedding("embeddings/charturner.pt")   # doctest: +SKIP
    >>> layout                                                    # doctest: +SKIP
    'a1111'
    """
    path, read = _located_read(path, None, True)
    return _build(path, read, None), read.format


def _located_read(path, token: str | None, pair: bool) -> tuple[Path, _Read]:
    """The file `path` names (`_resolve`) and what it holds (`_read_paired`); for a hub repo's default file, with the
    token its token_identifier.txt names when no `token` is given (`_with_token_identifier`)."""
    from .hub import fetch_embedding, hub_reference

    path, bundle = split_bundle(path)
    if bundle is not None:  # (named as the web UI and prompts call it; never one half of a pair)
        file = _local_file(path)
        return Path(f"{file}{BUNDLE_SEPARATOR}{bundle}"), _read(file, bundle)
    reference = hub_reference(path)  # (once: it looks at the disk)
    file = fetch_embedding(*reference) if reference is not None else _local_file(path)
    read = _read_paired(file, pair)
    if reference is not None and reference[1] is None and token is None:
        read = _with_token_identifier(reference[0], read)
    return file, read


def _with_token_identifier(repo: str, read: _Read) -> _Read:
    """`read` checked against the repo's token_identifier.txt (the sd-concepts-library repos': the token their cards
    tell users to write). diffusers' file holds its token already, which is what diffusers and textinv use: one that
    differs is warned about; a file that holds none takes it."""
    from .hub import TOKEN_FILE, token_identifier

    named = token_identifier(repo)
    held = read.token or read.metadata.get("token")
    if named is None or held is not None and unicodedata.normalize("NFC", named) == unicodedata.normalize("NFC", held):
        return read  # (one name: a token is read composed, `LearnedEmbedding`)
    if held is None:
        return read._replace(token=named)
    warn(f"{repo}: its {TOKEN_FILE} names the token {named!r}, but its embedding file holds {held!r}, which "
         f"is the one loaded (as diffusers loads it): write {held} in prompts, or rename it with --token "
         f"{named}", stacklevel=4)
    return read


def _read_paired(path: Path, pair: bool = True) -> _Read:
    """`_read`, and with `pair` a diffusers file's diffusers-sdxl partner beside it read in (see load_embedding):
    the second file (`second_file(path)`) beside a first, or the first (`first_file(path)`) beside a second."""
    read = _read(path)
    if not (pair and read.format == "diffusers" and set(read.vectors) == {"text_encoder"}):
        return read
    second, first = second_file(path), first_file(path)
    if second != path and second.is_file():
        return _joined(path, read, second, _read(second)) or read
    if first is not None and first.is_file():
        return _joined(first, _read(first), path, read) or read
    return read


def _joined(path1: Path, first: _Read, path2: Path, second: _Read) -> _Read | None:
    """The diffusers-sdxl pair of a first file and its second (`second_file`), or None where they are no pair."""
    # a partner holds the same token at another width (768 vs 1280 for SDXL); two versions of one
    # embedding have equal widths and must not be fused
    vectors1, vectors2 = first.vectors.get("text_encoder"), second.vectors.get("text_encoder")
    if (vectors2 is None or set(first.vectors) != {"text_encoder"} or set(second.vectors) != {"text_encoder"}
            or first.format != "diffusers" or second.format != "diffusers" or first.token != second.token
            or not _may_pair(vectors1.shape[-1], vectors2.shape[-1])):
        return None
    n1, n2 = vectors1.shape[0], vectors2.shape[0]
    if n1 != n2:
        raise FormatError(f"{path1} and {path2} look like one diffusers-sdxl pair for {first.token!r} but "
                          f"hold {n1} and {n2} vectors: they come from different runs; load one with "
                          "pair=False or pass the two right files to load_embedding_pair")
    # (written a file at a time, the second first: a run killed between them left its halves of two saves)
    steps = first.metadata.get("steps"), second.metadata.get("steps")
    if all(steps) and steps[0] != steps[1]:
        raise FormatError(f"{path1} and {path2} are one diffusers-sdxl pair for {first.token!r} saved at "
                          f"different steps ({steps[0]} and {steps[1]}): the run was stopped between "
                          "writing them (textinv train --resume writes both again), or two steps' files "
                          "were mixed; give the pair of one step (a run's embeddings/ folder keeps "
                          "each --save-every step's)")
    said = first.metadata.get(PAIR_KEY)
    if said is not None and said != _pair_hash(vectors2):
        raise FormatError(f"{path1} and {path2} look like one diffusers-sdxl pair for {first.token!r}, but {path2} is "
                          f"not the one saved with it (a save stopped between writing the two, or two saves' files "
                          f"mixed): save it again, or pass the two right files to load_embedding_pair")
    return first._replace(format="diffusers-sdxl", vectors={"text_encoder": vectors1, "text_encoder_2": vectors2},
                          metadata={k: v for k, v in first.metadata.items() if k != PAIR_KEY})


def _pair_hash(second: torch.Tensor) -> str:
    """SHA-256 of a diffusers-sdxl pair's second vectors as written (float32), which its first file records."""
    return hashlib.sha256(second.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


def _may_pair(width1: int, width2: int) -> bool:
    """Whether two single-encoder files of these widths can be one embedding's two halves: the widths differ, and
    they are a known two-encoder family's (SDXL's 768 + 1280) or not two one-encoder families' (768 and 1024 are a
    concept's SD 1.x and SD 2.x versions, not one embedding); other widths (small test models) may pair."""
    if width1 == width2:
        return False
    if family_for_widths((width1, width2)) is not None:
        return True
    return not (family_for_widths((width1,)) and family_for_widths((width2,)))


def load_embedding_pair(path1: str | Path, path2: str | Path, token: str | None = None) -> LearnedEmbedding:
    """Read one SDXL embedding kept as two single-encoder files (diffusers' SDXL example writes
    learned_embeds.safetensors for the first text encoder and learned_embeds_2.safetensors for the second).

    >>> load_embedding_pair("learned_embeds.safetensors", "learned_embeds_2.safetensors").family  # doctest: +SKIP
    'sdxl'
    """
    path1, path2 = _resolve(path1), _resolve(path2)
    first, second = _read(path1), _read(path2)
    for p, r in ((path1, first), (path2, second)):
        if set(r.vectors) != {"text_encoder"}:
            raise FormatError(f"{p} already holds two text encoders' vectors ({r.format} layout): load it alone "
                              "with load_embedding")
    vectors = [first.vectors["text_encoder"], second.vectors["text_encoder"]]
    if vectors[0].shape[1] > vectors[1].shape[1]:  # handed over as (second, first): SDXL's first encoder (CLIP-L,
        vectors.reverse()                           # 768) is the narrower one
    read = first._replace(format="diffusers-sdxl", vectors=dict(zip(("text_encoder", "text_encoder_2"), vectors)),
                          metadata={k: v for k, v in {**second.metadata, **first.metadata}.items() if k != PAIR_KEY})
    try:
        return _build(path1, read, token)
    except FormatError as e:
        raise FormatError(f"{e} (second file: {path2})") from None


def detect_format(path: str | Path) -> str:
    """Which layout a file has (one of DETECTED_FORMATS), judged from its content; a diffusers file with its SDXL
    partner beside it is "diffusers-sdxl", as load_embedding reads it.

    >>> detect_format("embeddings/charturner.pt")   # doctest: +SKIP
    'a1111'
    """
    path, bundle = split_bundle(path)
    return _read(_local_file(path), bundle).format if bundle is not None else _read_paired(_resolve(path)).format


def split_bundle(path: str | Path) -> tuple[str | Path, str | None]:
    """(file, NAME) for `FILE::NAME`, one embedding bundled in a LoRA file (see lora-bundle above); anything else,
    a file that is there whatever its name holds included, as it is with None. Either side may hold `::`: FILE ends
    at the first `::` before which a file is there (`style.safetensors::a::b` is style's bundle `a::b`); where none
    is, at the last (and the missing FILE is said).

    >>> split_bundle("Lora/style.safetensors::mystyle"), split_bundle("my-dog.pt")
    (('Lora/style.safetensors', 'mystyle'), ('my-dog.pt', None))
    """
    text = str(path)
    if BUNDLE_SEPARATOR not in text or Path(text).expanduser().exists():
        return path, None
    pieces = text.split(BUNDLE_SEPARATOR)
    splits = [(BUNDLE_SEPARATOR.join(pieces[:i]), BUNDLE_SEPARATOR.join(pieces[i:])) for i in range(1, len(pieces))]
    return next((split for split in splits if Path(split[0]).expanduser().is_file()), splits[-1])


def on_disk(path: str | Path) -> Path:
    """The file or folder on disk an embedding entry names: FILE of `FILE::NAME` (`split_bundle`), else `path`, with
    `~` expanded; for the checks that an entry is there before anything is read.

    >>> on_disk("Lora/style.safetensors::mystyle")
    PosixPath('Lora/style.safetensors')
    """
    return Path(split_bundle(Path(path).expanduser())[0])


def bundled_names(path: str | Path) -> list[str]:
    """The names of the embeddings a LoRA file bundles (`bundle_emb.NAME.KEY`), in the file's order, read from its
    header alone; [] for any other file (one that is no safetensors file too).

    >>> bundled_names("Lora/style.safetensors")   # doctest: +SKIP
    ['mystyle']
    """
    from safetensors import safe_open

    try:
        with safe_open(str(Path(path).expanduser()), framework="pt", device="cpu") as f:
            return _bundle_names(f.keys())
    except Exception:  # (not a safetensors file: it bundles nothing)
        return []


def _bundle_names(keys) -> list[str]:
    rests = [k[len(BUNDLE_PREFIX):] for k in map(str, keys) if k.startswith(BUNDLE_PREFIX)]
    return list(dict.fromkeys(rest.split(".", 1)[0] for rest in rests if "." in rest))


def load_bundled(path: str | Path) -> list[LearnedEmbedding]:
    """Every embedding a LoRA file bundles, each with its NAME as token, as the web UI installs them when a prompt
    names the LoRA; [] for a LoRA that bundles none.

    >>> [emb.token for emb in load_bundled("Lora/style.safetensors")]   # doctest: +SKIP
    ['mystyle']
    """
    return [load_embedding(f"{path}{BUNDLE_SEPARATOR}{name}") for name in bundled_names(path)]


def diffusers_file(folder: Path) -> Path | None:
    """The embedding file a diffusers output folder holds (`learned_embeds.safetensors`, else its `.bin`), or None."""
    return next((folder / name for name in _DIFFUSERS_NAMES if (folder / name).is_file()), None)


def _resolve(path: str | Path) -> Path:
    """The file to read for `path`: itself, a diffusers folder's learned_embeds file, or for a hub id ('owner/name',
    'owner/name/file.safetensors', naming nothing here: `hub.hub_reference`) its file in the Hugging Face cache,
    fetched if need be."""
    from .hub import fetch_embedding, hub_reference

    reference = hub_reference(path)
    return fetch_embedding(*reference) if reference is not None else _local_file(path)


def _check_lora_path(lora: Path) -> None:
    """Refuse a folder as `bundle_into_lora`'s LoRA before `_local_file` reads it as an embedding's (a training
    run's --out, the likely mistake, gives its learned_embeds file, which would be refused as holding no LoRA)."""
    folder = lora.expanduser()
    if not folder.is_dir():
        return
    held = diffusers_file(folder)
    what = (f"an embedding's folder (it holds {held.name}, as a training run's folder does), which convert takes "
            f"as src" if held is not None else "a folder")
    raise FormatError(f"{given('into_lora', str(lora))} is {what}, not a LoRA: {setting('into_lora')} takes the LoRA "
                      f".safetensors file to bundle the embedding into (e.g. Lora/style.safetensors)")


def _embedding_note(lora: Path) -> str:
    """What a refusal of a file that holds no LoRA's tensors adds where the file is an embedding (the likely mix-up:
    an embedding file given for the LoRA), which would else be said as a key of it, "e.g. '<x>'"."""
    try:
        emb = load_embedding(lora)
    except FormatError:  # (no embedding either: the refusal's own words stand)
        return ""
    return f"; it is an embedding ({emb.token!r}), which convert takes as src, not a LoRA"


def _local_file(path: str | Path) -> Path:
    """`_resolve` for a `path` that names no hub repo: itself (`~` expanded), or a diffusers folder's learned_embeds
    file."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = diffusers_file(path)
        if found is not None:
            return found
        if (path / "model_index.json").is_file():
            raise FormatError(f"{path} is a diffusers model folder (it holds model_index.json), not an embedding: "
                              f"name an embedding file (a model goes to --model)")
        raise FormatError(f"{path} is a folder without {' or '.join(_DIFFUSERS_NAMES)}: name the embedding file")
    if not path.is_file():
        raise FormatError(f"{path}: no such file: check the path (embedding files end in .safetensors, .pt, .bin "
                          "or .png)")
    return path


def _build(path: Path, read: _Read, token: str | None) -> LearnedEmbedding:
    own = read.token or read.metadata.get("token") or path.stem
    token = token if token is not None else own
    metadata = dict(read.metadata)
    if "token" in metadata:  # keep the metadata in step with the token actually used
        metadata["token"] = token
    if metadata.get(modelspec.PREFIX + "title") == own:  # (a title that only named the old token follows it)
        metadata[modelspec.PREFIX + "title"] = token
    try:
        emb = LearnedEmbedding(token, read.vectors, metadata)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    wrong = modelspec.contradiction(emb.metadata, emb.widths)
    if wrong:  # the vectors are what a loader uses; the metadata is only a label (ModelSpec: tools warn)
        warn(ModelSpecWarning(f"{path}: {wrong}"), stacklevel=3)
    return emb


class ModelSpecWarning(TextinvWarning):
    """A file's modelspec.architecture does not fit its vectors."""


def _read(path: Path, bundle: str | None = None) -> _Read:
    """Open `path` as whatever its first bytes say it is and interpret the content's layout; `bundle`: the NAME of
    one embedding a LoRA file bundles (see lora-bundle above)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise FormatError(f"{path}: the file is empty: the download or save did not finish; get the file again")
    if head.startswith(b"\x89PNG\r\n\x1a\n") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return _interpret(path, _read_image(path), {}, "a1111-png")
    if head.startswith(b"\xff\xd8\xff"):  # a JPEG holds no embedding, but may be a drawn picture: said so
        _read_image(path)
    header_len = int.from_bytes(head[:8], "little")
    safetensors = head[8:9] == b"{" and header_len <= _MAX_SAFETENSORS_HEADER  # first: a length can start 0x80
    if bundle is not None and not safetensors:
        raise FormatError(f"{path}{BUNDLE_SEPARATOR}{bundle}: {path} is no LoRA .safetensors file, so it bundles no "
                          f"embeddings; name the embedding file alone")
    if safetensors:
        obj, metadata, bundle = _read_safetensors(path, header_len, bundle)
        if bundle is None:
            return _interpret(path, obj, metadata, "diffusers")
        # the web UI calls a bundled embedding by its NAME, whatever the tensor inside is keyed by
        read = _interpret(Path(f"{path}{BUNDLE_SEPARATOR}{bundle}"), obj, {}, "diffusers")
        return read._replace(format="lora-bundle", token=bundle)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy raw pickle
        _check_size(path, None)  # (a pickle's names are only known once the whole file is loaded)
        return _interpret(path, _read_pickle(path), {}, "diffusers-bin")
    raise FormatError(f"{path}: not an embedding file: it is neither safetensors, a torch .pt/.bin, nor a PNG/WebP "
                      f"with an embedding chunk; {_what_instead(path)}")


def _what_instead(path: Path) -> str:
    """What a file that is no embedding most often is, from its first bytes, and the fix: a web page a download
    got in place of the file (a model site's sign-in or error page, saved under the file's name), a Git LFS pointer
    (a repository cloned without Git LFS), else a damaged file."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return ("it is a web page, which a download got in place of the file (a sign-in or error page): download it "
                "again, in the browser where the site asks you to sign in")
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file: run `git lfs pull` in its repository, or download the file"
    return "it may be damaged or cut short: get the file again"


def _read_safetensors(path: Path, header_len: int, bundle: str | None = None) -> tuple[dict, dict, str | None]:
    """The tensors and metadata of an embedding file, with None; of a LoRA that bundles embeddings, the one named
    `bundle` (or its only one) as the web UI gives it to its embedding loader, no metadata (the LoRA's is not the
    embedding's), and its NAME."""
    from safetensors import safe_open

    size = path.stat().st_size
    if 8 + header_len > size:
        raise FormatError(f"{path}: truncated safetensors file (its header needs {8 + header_len} bytes, the file "
                          f"has {size}): the download or save did not finish; get the file again")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            keys = list(f.keys())
            names = _bundle_names(keys)
            if names or bundle is not None:  # (before the size check: a LoRA is megabytes)
                bundle = _pick_bundle(path, names, bundle)
                return _bundle_dict(f, keys, bundle), {}, bundle
            # named now, from the header: the tensors may be a model's gigabytes. Names that are no embedding's, or
            # a modelspec that says the file is something else (a LoRA's...), refuse it
            if not embedding_layout(keys) or modelspec.other_kind(metadata) is not None:
                raise _unknown_layout(path, keys, metadata)
            _check_size(path, keys)
            tensors = {key: f.get_tensor(key) for key in keys}
    except FormatError:
        raise
    except Exception as e:  # SafetensorError and friends: the header does not match the bytes that follow
        raise FormatError(f"{path}: not a readable safetensors file ({e}); it may be truncated or damaged: "
                          "get the file again") from None
    metadata.pop("format", None)  # the container's own tag ("pt"), not something about the embedding
    return tensors, metadata, None


def _pick_bundle(path: Path, names: list[str], bundle: str | None) -> str:
    """The NAME of the bundled embedding to read: `bundle`, else the file's only one; a name the file does not
    bundle, or a choice left open among several, is refused with the names there are."""
    listed = ", ".join(names)
    if bundle is None and len(names) > 1:
        raise FormatError(f"{path}: a LoRA that bundles {len(names)} embeddings ({listed}): name one as "
                          f"{path}{BUNDLE_SEPARATOR}{names[0]}")
    if bundle is None:
        return names[0]
    # (in one Unicode form: a name kept decomposed, as macOS keeps café's accent apart, answers to the name typed)
    bundle = next((n for n in names if unicodedata.normalize("NFC", n) == unicodedata.normalize("NFC", bundle)),
                  bundle)
    if bundle not in names:
        held = f"it bundles {listed}" if names else "it bundles no embeddings"
        raise FormatError(f"{path}{BUNDLE_SEPARATOR}{bundle}: {path} bundles no embedding {bundle!r} ({held}); "
                          + (f"name one of them after {BUNDLE_SEPARATOR}" if names else
                             f"give the file without {BUNDLE_SEPARATOR}{bundle}"))
    return bundle


def _bundle_dict(f, keys: list[str], name: str) -> dict:
    """One bundled embedding's tensors as the web UI's LoRA loader hands them to its embedding loader:
    `bundle_emb.NAME.string_to_param.K` as an A1111 file's {"string_to_param": {K: tensor}}, any other
    `bundle_emb.NAME.KEY` (emb_params, clip_l, clip_g) as {KEY: tensor}; OneTrainer's `KEY_out` beside KEY left out
    (the web UI reads an SDXL bundle's as the extra keys they are, and fails on an SD 1.x one's)."""
    prefix = f"{BUNDLE_PREFIX}{name}."
    held = {key[len(prefix):] for key in keys if key.startswith(prefix)}
    obj: dict = {}
    for key in keys:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.endswith("_out") and rest[:-len("_out")] in held:
                continue  # OneTrainer's output vectors (clip_l_out...), which loaders ignore
            if rest.startswith("string_to_param."):
                obj.setdefault("string_to_param", {})[rest.split(".", 1)[1]] = f.get_tensor(key)  # (several: refused)
            else:
                obj[rest] = f.get_tensor(key)
    return obj


class _PickledParameterDict:
    """Stands in for `torch.nn.ParameterDict` while unpickling: the paper's code saves `string_to_param` as one.

    It only keeps the pickled attribute dict (whose `_parameters` holds the tensors); unlike the real class it runs
    no code of the file's choosing, so `weights_only` stays safe.
    """

    def __setstate__(self, state):
        self._parameters = dict(state.get("_parameters") or {}) if isinstance(state, dict) else {}


_PARAMETER_DICT = "torch.nn.modules.container.ParameterDict"
# pickle's opcodes from 0x8c (SHORT_BINUNICODE) on are protocol 4's and 5's, which torch's weights_only unpickler
# does not know ("Unsupported operand 149": the FRAME every protocol-4 pickle starts with)
_FIRST_PROTOCOL_4_OPCODE = 0x8C


def _torch_load(path: Path):
    # From an open file, not the path: newer torch picks its loader by the name, and a torch file renamed
    # .safetensors must still be read by its bytes.
    with open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _read_pickle(path: Path):
    try:
        try:
            return _torch_load(path)
        except pickle.UnpicklingError as e:
            if _PARAMETER_DICT not in str(e) or not hasattr(torch.serialization, "safe_globals"):
                raise
        # The paper's file: read it again with our inert stand-in allow-listed under ParameterDict's name (torch
        # >= 2.6 substitutes (object, "name") pairs). Only here, so no other file ever depends on that feature.
        with torch.serialization.safe_globals([(_PickledParameterDict, _PARAMETER_DICT)]):
            return _torch_load(path)
    except pickle.UnpicklingError as e:
        newer = re.search(r"Unsupported operand (\d+)", str(e))
        if newer and int(newer.group(1)) >= _FIRST_PROTOCOL_4_OPCODE:
            raise FormatError(
                f"{path}: {path.name} was pickled with protocol 4 or 5 (as torch.save(..., pickle_protocol=4) "
                "writes), which torch's safe loader (weights_only) cannot read, so it is not loaded. If you trust its "
                "source, load it with torch.load(..., weights_only=False) and save it again with torch.save's "
                "default protocol, or as .safetensors") from None
        # weights_only stopped at something that is not a tensor, a container or a number: possibly code
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"WeightsUnpickler error: ([^\n]+)", str(e))
        reason = f" (it asks for {found.group(1)})" if found else ""
        raise FormatError(
            f"{path}: refusing to unpickle {path.name}: it is not a plain tensor file{reason}, and loading it could "
            "run code. If you trust its source, re-save the embedding with plain tensors (or as .safetensors) "
            "and load that") from None
    except Exception as e:  # a damaged zip, a cut-off pickle...
        raise FormatError(f"{path}: cannot read this torch file ({type(e).__name__}: {e}); it may be truncated or "
                          "damaged: get the file again") from None


_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286  # the Exif sub-IFD's pointer in IFD0, and its UserComment tag


def exif_comment(image) -> bytes | None:
    """The raw bytes of a picture's EXIF UserComment (none: None). Pillow reads EXIF from JPEG, WebP, AVIF and PNG."""
    exif = image.getexif()
    value = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT, exif.get(_USER_COMMENT))  # (some writers put it in IFD0)
    if isinstance(value, str):  # written as an ASCII-typed tag, which Pillow hands back as latin-1 text
        value = value.encode("latin-1", "replace")
    return value if isinstance(value, bytes) else None


def _read_image(path: Path) -> dict:
    try:
        with _open_image(path) as image:  # (Pillow's decompression-bomb error lifted: the limit is textinv's, here)
            if image.width * image.height > MAX_IMAGE_PIXELS:  # (before its text: a PNG's means decoding all of it)
                raise FormatError(f"{path} is {image.width}x{image.height} pixels, more than the "
                                  f"{MAX_IMAGE_PIXELS:,} textinv reads: no embedding picture (the web UI's are its "
                                  f"preview's size); use the embedding's .pt or .safetensors file instead")
            chunks = getattr(image, "text", None) or image.info  # PNG text chunks; other formats' info
            chunk = chunks.get(PNG_CHUNK)
            # without the chunk (an image host strips text), the web UI reads the copy hidden in the pixels
            hidden = None if isinstance(chunk, (str, bytes)) else a1111_pixels.find(image, _decode_json_tensor)
    except (OSError, ValueError, SyntaxError) as e:
        raise FormatError(f"{path}: cannot read this image ({e}); it may be truncated or damaged: get the file "
                          "again") from None
    if hidden is not None:
        return hidden
    if not isinstance(chunk, (str, bytes)):
        # a picture textinv (RECORD_KEY), the web UI or ComfyUI drew holds its settings, which --again reads: in its
        # PNG text, its EXIF UserComment (the web UI's JPEG and WebP) or EXIF Model tag (ComfyUI's WebP)
        from .again import holds_settings  # (here: again.py imports this module)

        drawn = holds_settings(path)
        raise FormatError(
            f"{path}: this image has no {PNG_CHUNK!r} text chunk and no embedding hidden in its pixels (the web "
            "UI's second copy, lost when the picture is resized or saved lossy), so it carries no embedding: "
            + (f"it is a drawn picture with its generation settings; `textinv generate --again {path}` draws it "
               "again" if drawn else "use the embedding's .pt or .safetensors file instead"))
    try:
        return json.loads(base64.b64decode(chunk, validate=True), object_hook=_decode_json_tensor)
    except (ValueError, TypeError, RuntimeError, binascii.Error) as e:
        raise FormatError(f"{path}: the {PNG_CHUNK!r} chunk is not base64-encoded JSON of an embedding ({e}), so the "
                          "embedding in this picture is damaged: get the picture again, or the embedding's .pt or "
                          ".safetensors file") from None


def holds_png_embedding(path: str | Path) -> bool:
    """Whether a picture carries an A1111 embedding, in its text chunk (`PNG_CHUNK`) or its pixels
    (`a1111_pixels`); a preview picture does not. One that cannot be read counts as one, so that reading it says
    what is wrong."""
    try:
        with _open_image(Path(path)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:  # (`_read_image` says why it is refused)
                return True
            return PNG_CHUNK in (getattr(image, "text", None) or image.info) or a1111_pixels.find(image) is not None
    except (OSError, ValueError, SyntaxError):
        return True


def a1111_png_name(path: str | Path) -> str | None:
    """The name the A1111 web UI calls an image embedding by: its chunk's "name", not the file's (a renamed PNG
    keeps it), or None where the chunk has none.

    >>> a1111_png_name("my-dog-500.png")   # doctest: +SKIP
    'my-dog-500'
    """
    name = _read_image(Path(path)).get("name")
    return name if isinstance(name, str) and name else None


def _decode_json_tensor(obj: dict):
    # A1111 writes each tensor as {"TORCHTENSOR": nested list}; float64 keeps every decimal digit JSON carried
    if set(obj) == {"TORCHTENSOR"}:
        return torch.tensor(obj["TORCHTENSOR"], dtype=torch.float64)
    return obj


def _interpret(path: Path, obj, metadata: dict, container_format: str) -> _Read:
    """Recognise the layout of a loaded object. `container_format` is the format a single {token: tensor} dict
    has in this container (diffusers in safetensors, diffusers-bin in a pickle, a1111-png for an image)."""
    metadata = {str(k): str(v) for k, v in metadata.items()}
    if isinstance(obj, torch.Tensor):  # a bare tensor, as some scripts torch.save; the token must come from elsewhere
        return _Read("diffusers-bin", {"text_encoder": _vectors(path, obj, "the tensor")}, None, metadata)
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors: not an embedding file")
    keys = set(obj)

    if "string_to_param" in obj:  # A1111 .pt / PNG, and the paper's code
        params = obj["string_to_param"]
        params = getattr(params, "_parameters", params)  # the paper's ParameterDict (see _PickledParameterDict)
        if not isinstance(params, Mapping) or not params:
            raise FormatError(f"{path}: 'string_to_param' holds {type(params).__name__}, not a dict with one tensor: "
                              "the A1111 file is damaged")
        if len(params) != 1:
            raise FormatError(f"{path}: the A1111 file holds {len(params)} embeddings ({sorted(map(str, params))}); "
                              "textinv reads files with one")
        (key, tensor), = params.items()
        name = obj.get("name")
        extra = obj.get("textinv")
        if isinstance(extra, dict):  # our own full record, written by _a1111_dict
            metadata = {str(k): str(v) for k, v in extra.items()}
            if isinstance(extra.get("token"), str) and extra["token"].strip():
                name = extra["token"]  # an image's "name" may be its file's (see _write_a1111_png)
        else:
            for field_name, meta_key in (("step", "steps"), ("sd_checkpoint", "sd_checkpoint"),
                                         ("sd_checkpoint_name", "sd_checkpoint_name")):
                if obj.get(field_name) is not None:
                    metadata[meta_key] = str(obj[field_name])
        fmt = "a1111-png" if container_format == "a1111-png" else "a1111"
        vectors = {"text_encoder": _vectors(path, tensor, f"string_to_param[{key!r}]")}
        return _Read(fmt, vectors, name if isinstance(name, str) and name else None, metadata)

    # OneTrainer adds "clip_l_out"/"clip_g_out" (its output vectors) that A1111 and ComfyUI ignore; so do we
    if set(_SDXL_KEYS) <= keys <= {*_SDXL_KEYS, "clip_l_out", "clip_g_out"}:
        return _Read("sdxl", {name: _vectors(path, obj[key], key) for key, name in _SDXL_KEYS.items()}, None, metadata)
    if "clip_g" in keys and "clip_l" not in keys and keys <= {*_SDXL_KEYS, "clip_l_out", "clip_g_out"}:
        raise FormatError(f"{path}: an SDXL embedding with 'clip_g' (the second text encoder's vectors) but no "
                          "'clip_l' (the first's): the file is incomplete; get the whole file again")
    if keys == {"clip_l"}:  # the SDXL naming for one CLIP-L encoder (diffusers' advanced SD 1.5 script writes it)
        return _Read("clip_l", {"text_encoder": _vectors(path, obj["clip_l"], "clip_l")}, None, metadata)
    if keys == {"emb_params"}:
        return _Read("kohya", {"text_encoder": _vectors(path, obj["emb_params"], "emb_params")}, None, metadata)
    if "emp_params" in keys and keys <= {"emp_params", "emp_params_out"}:  # OneTrainer's spelling; "_out" unused
        return _Read("onetrainer", {"text_encoder": _vectors(path, obj["emp_params"], "emp_params")}, None, metadata)
    if len(obj) == 1:
        (key, tensor), = obj.items()
        if isinstance(key, str) and isinstance(tensor, torch.Tensor):
            fmt = "diffusers-bin" if container_format == "diffusers-bin" else "diffusers"
            return _Read(fmt, {"text_encoder": _vectors(path, tensor, repr(key))}, key, metadata)

    raise _unknown_layout(path, keys, metadata)


def embedding_layout(keys) -> bool:
    """Whether these top-level names can be an embedding's (see `_interpret`): a file of other names is refused
    before its tensors are loaded (and `--model` names such a file an embedding)."""
    keys = set(keys)
    return ("string_to_param" in keys or len(keys) == 1 or keys == {"emb_params"}
            or bool(keys & {"clip_l", "clip_g"}) and keys <= {*_SDXL_KEYS, "clip_l_out", "clip_g_out"}
            or "emp_params" in keys and keys <= {"emp_params", "emp_params_out"})


def _unknown_layout(path: Path, keys, metadata: Mapping[str, str] | None = None) -> FormatError:
    """The error for a file that is no embedding: what it is when its names tell (`weights_kind`, A1111's optimizer
    state) or else its safetensors `metadata`'s modelspec.architecture does, and where it goes instead; else the
    names found and the layouts textinv reads."""
    shown, metadata = sorted(map(str, keys)), metadata or {}
    kind, held = weights_kind(shown) or (None, None)
    evidence = f"it holds {held!r}"
    if kind is None and modelspec.other_kind(metadata) is not None:
        kind, evidence = (modelspec.other_kind(metadata),
                          f"its modelspec.architecture is {modelspec.architecture_of(metadata)!r}")
    if kind == "LoRA":
        return FormatError(f"{path}: this is a LoRA ({evidence}), not a textual-inversion embedding: use it as "
                           f"<lora:{path.stem}> in a prompt, with --lora-dir {path.parent} (textinv generate)")
    if kind == "VAE":
        return FormatError(f"{path}: this is a VAE ({evidence}), not an embedding: pass it as --vae")
    if kind == "checkpoint" and (held is not None or modelspec.family_of(metadata) is not None):
        return FormatError(f"{path}: this is a Stable Diffusion model checkpoint ({evidence}), not an "
                           f"embedding: pass it as --model")
    if kind == "checkpoint":  # a whole model of an architecture textinv does not know
        return FormatError(f"{path}: this is a model ({evidence}), not a textual-inversion embedding")
    if kind in _PART_NAMES:
        return FormatError(f"{path}: this is the {kind} of a diffusers model ({evidence}), not an embedding: "
                           f"pass the model's folder (the one with model_index.json) as --model")
    if kind is not None:  # another adapter by its modelspec (a controlnet...)
        return FormatError(f"{path}: this is a {kind} ({evidence}), not a textual-inversion embedding")
    if not shown:  # ("unknown embedding layout with keys ." said nothing)
        return FormatError(f"{path}: holds no tensors at all, so no embedding: the save that wrote it did not finish, "
                           "or it was made empty; get the file again")
    names = ", ".join(repr(k) for k in shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")
    hint = (" This is A1111's optimizer state (.pt.optim), not the embedding: load the .pt beside it."
            if "optimizer_state_dict" in keys else "")
    return FormatError(
        f"{path}: unknown embedding layout with keys {names}. textinv reads one {{token: tensor}} (diffusers), "
        "'string_to_param' (A1111), 'emb_params' (kohya), 'emp_params' (OneTrainer) or 'clip_l' (+ 'clip_g' for "
        "SDXL)."
        + hint)


def weights_kind(keys) -> tuple[str, str] | None:
    """What a file of model weights is, by its tensor names, and a name that shows it: "LoRA", "VAE" (alone),
    "checkpoint" (a single-file model's names), or a diffusers model's "UNet" or "text encoder"; None when the names
    say none of these. One reading for both directions: an embedding's loader and `--model` name a file alike.

    >>> weights_kind(["encoder.conv_in.weight", "decoder.conv_in.weight"])
    ('VAE', 'decoder.conv_in.weight')
    """
    names = sorted(map(str, keys))
    lora = next((k for k in names if is_lora_key(k)), None)
    if lora is not None:
        return "LoRA", lora
    if names and all(k.startswith(_VAE_NAMES) for k in names):
        return "VAE", names[0]
    checkpoint = next((k for k in names if _CHECKPOINT_NAMES.search(k)), None)
    if checkpoint is not None:
        return "checkpoint", checkpoint
    for part, prefixes in _PART_NAMES.items():
        held = next((k for k in names if k.startswith(prefixes)), None)
        if held is not None:
            return part, held
    return None


def is_lora_key(name: str) -> bool:
    """Whether a tensor name is a LoRA's (kohya/A1111, diffusers/peft, LyCORIS): such a file is neither an embedding
    nor a model."""
    return _LORA_NAMES.search(name) is not None


def _check_size(path: Path, keys) -> None:
    """Refuse a file far larger than any embedding before it is loaded (see _MAX_EMBEDDING_BYTES)."""
    size = path.stat().st_size
    if size > _MAX_EMBEDDING_BYTES:
        held = f" (it holds {sorted(map(str, keys))[0]!r})" if keys else ""
        raise FormatError(
            f"{path}: {size / 2**20:,.0f} MB is far larger than any embedding{held} (they are kilobytes, a few MB at "
            "most): this looks like a model checkpoint (pass it as --model), a VAE (--vae) or a LoRA (use it as "
            "<lora:NAME> in a prompt, with --lora-dir)")


def _vectors(path: Path, value, where: str) -> torch.Tensor:
    """Check one stored tensor and give it the (num_vectors, width) shape; a diffusers file may store one [d]."""
    if not isinstance(value, torch.Tensor):
        raise FormatError(f"{path}: {where} is a {type(value).__name__}, not a tensor")
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if value.dim() != 2 or value.numel() == 0:
        raise FormatError(f"{path}: {where} has shape {list(value.shape)}, but an embedding is (num_vectors, width) "
                          "with both at least 1")
    if not value.is_floating_point():
        raise FormatError(f"{path}: {where} has dtype {value.dtype}, but embeddings are floating-point")
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Converting and describing


def convert(src: str | Path, dst: str | Path, to: str | None = None, token: str | None = None,
            second: str | Path | None = None, overwrite: bool = False,
            into_lora: str | Path | None = None, caption: bool = True) -> list[Path]:
    """Read `src` (any layout) and write it to `dst` as `to`; return the files written, absolute.

    Without `to`, the format follows dst's extension: .pt -> a1111, .png -> a1111-png, .bin -> diffusers-bin,
    .safetensors (or a folder) -> sdxl for an SDXL pair, else diffusers; `to="diffusers"` for an SDXL pair writes
    diffusers-sdxl (two files), as training does. `token` renames the embedding. `second`: the other half of an SDXL
    embedding kept as two single-encoder files (`load_embedding_pair`), for names that do not pair by themselves.
    A file already at the destination is refused unless `overwrite` (as train refuses a used --out). `into_lora`:
    write the LoRA file it names with the embedding bundled in it instead (`bundle_into_lora`). `caption`: an
    a1111-png's picture captioned as the web UI's (`save_embedding`).

    >>> convert("learned_embeds.safetensors", "my-dog.pt")   # doctest: +SKIP
    [PosixPath('/home/me/my-dog.pt')]
    """
    if into_lora is not None and to is not None:
        raise FormatError(f"{setting('to', to)} names an embedding format; {setting('into_lora')} writes the LoRA's "
                          f".safetensors with the embedding bundled in it: give one of them")
    if token is not None and any(c.isspace() for c in token):  # (an empty one: load_embedding refuses it)
        # (as train and merge refuse it: generate and diffusers' loader refuse the file it would make)
        raise ConfigError(f"{given('token', token)} must be one word without spaces, e.g. '<my-dog>': the word "
                          f"prompts call the embedding by")
    emb = load_embedding(src, token=token) if second is None else load_embedding_pair(src, second, token=token)
    if into_lora is not None:
        return [Path(absolute(bundle_into_lora(emb, into_lora, dst, overwrite=overwrite)))]
    return save_embedding(emb, dst, format=to, overwrite=overwrite, caption=caption)


def bundle_into_lora(emb: LearnedEmbedding, lora: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Write `lora`'s tensors and metadata to `dst` with `emb` bundled as the web UI reads it (see lora-bundle
    above): `bundle_emb.TOKEN.string_to_param.*` (an A1111 .pt's layout) for one text encoder, `.clip_l` and
    `.clip_g` for SDXL; `<lora:...>` then installs it under its token. The LoRA's metadata is kept, its hashes of
    the file (`sshs_model_hash`, the web UI's and civitai's hash for it...) computed anew for the file written
    (`_rehashed`): its bytes are another file's. A token with a dot (the web UI ends the NAME there), a NAME the LoRA
    bundles already, an embedding of another family than the LoRA's modelspec names, a `lora` that is no LoRA
    .safetensors file and a `dst` there already (unless `overwrite`) are refused before anything is written.

    >>> dog = load_embedding("my-dog.pt")                                                    # doctest: +SKIP
    >>> bundle_into_lora(dog, "Lora/style.safetensors", "Lora/style-dog.safetensors")       # doctest: +SKIP
    PosixPath('Lora/style-dog.safetensors')
    """
    from safetensors import safe_open

    lora, dst = Path(lora), Path(dst)
    if "." in emb.token:
        raise FormatError(f"{emb.token!r}: a bundled embedding's name ends at its first dot (bundle_emb.NAME.KEY), "
                          f"so the web UI would call it {emb.token.split('.')[0]!r}: rename it with {setting('token')}")
    if dst.suffix.lower() != ".safetensors":
        raise FormatError(f"{dst}: a LoRA with bundled embeddings is a .safetensors file: end the name in .safetensors")
    if dst.exists() and not overwrite:
        raise FormatError(f"{dst} already exists; pass {setting('overwrite', True)} to replace it, or choose another "
                          f"output path")
    _check_lora_path(lora)
    try:
        with safe_open(str(_local_file(lora)), framework="pt", device="cpu") as f:
            metadata, keys = dict(f.metadata() or {}), list(f.keys())
            if not any(is_lora_key(k) for k in keys):
                raise FormatError(f"{setting('into_lora', lora)}: it holds no LoRA's tensors (e.g. "
                                  f"{sorted(keys)[0] if keys else 'none at all'!r}){_embedding_note(lora)}: give the "
                                  f"LoRA file to bundle into")
            tensors = {key: f.get_tensor(key) for key in keys}
    except FormatError:
        raise
    except Exception as e:  # (a pickle, a damaged file)
        raise FormatError(f"{setting('into_lora', lora)}: not a readable .safetensors LoRA ({e}); textinv bundles into "
                          f".safetensors files only") from None
    if emb.token in _bundle_names(keys):
        raise FormatError(f"{setting('into_lora', lora)} bundles an embedding {emb.token!r} already: rename this one "
                          f"with {setting('token')}")
    family = modelspec.family_of(metadata)  # (the web UI skips a bundled embedding of another width than its model's)
    if family is not None and not modelspec.fits(family, emb.widths):
        raise FormatError(f"{setting('into_lora', lora)} is a LoRA for {FAMILY_NAMES[family]} (its "
                          f"modelspec.architecture), {emb.token!r} is {describe_widths(emb.widths)}: the web UI would "
                          f"never draw it with this LoRA; bundle it into a LoRA of its own family")
    prefix = f"{BUNDLE_PREFIX}{emb.token}."
    if len(emb.vectors) == 2:
        tensors.update({prefix + key: emb.vectors[name] for key, name in _SDXL_KEYS.items()})
    else:
        tensors[prefix + "string_to_param.*"] = emb.vectors["text_encoder"]
    from safetensors.torch import save

    try:
        data = _rehashed(_sorted_metadata(save(tensors, metadata=metadata or None)))  # (the same bytes each time)
        with atomic_path(dst) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise FormatError(f"cannot write {dst}: {e.strerror or e}; choose another output path") from None
    return dst


def format_for(dst: str | Path, to: str | None, two: bool) -> str:
    """The format `convert` (and `merge`) write to `dst`: `to`, else the one dst's extension names (see `convert`);
    `two`: the embedding holds SDXL's two encoders' vectors.

    >>> format_for("my-dog.pt", None, False), format_for("out/", "diffusers", True)
    ('a1111', 'diffusers-sdxl')
    """
    if to == "diffusers" and two:  # as training's --format diffusers on SDXL
        return "diffusers-sdxl"
    if to is not None:
        return to
    suffix = Path(dst).suffix.lower()
    if _names_folder(dst) or suffix == ".safetensors":
        return "sdxl" if two else "diffusers"
    to = {".pt": "a1111", ".png": "a1111-png", ".bin": "diffusers-bin"}.get(suffix)
    if to is None:
        named = "--to" if ON_COMMAND_LINE.get() else "to=, save_embedding's format="  # (as its user writes it)
        raise FormatError(f"{dst}: cannot tell the format from the extension {suffix or '(none)'!r}: end it in "
                          f".safetensors, .pt, .bin or .png, or give the format ({named}): {', '.join(FORMATS)}")
    return to


def _names_folder(path: str | Path) -> bool:
    """Whether `path` means a folder: one that exists, or a name written with a trailing slash (`out/`), which
    Path would drop; the folder is then made and the file named within it."""
    return Path(path).is_dir() or isinstance(path, str) and path.endswith(("/", os.sep))


def describe(emb: LearnedEmbedding, vocab_norms: torch.Tensor | Mapping[str, torch.Tensor] | None = None) -> dict:
    """A summary of `emb` for `textinv inspect`: token, vector count, widths, family, each vector's L2 norm, and the
    file's ModelSpec keys (`modelspec.summary`; "made_for": the family its architecture names).

    `vocab_norms` gives, per text encoder, the row norms of the model's vocabulary (a bare tensor means
    "text_encoder"); their mean and standard deviation are added so a norm far off the vocabulary's shows.

    >>> describe(LearnedEmbedding("<x>", {"text_encoder": torch.ones(1, 768)}))["encoders"]["text_encoder"]["norms"]
    [27.712812423706055]
    """
    if isinstance(vocab_norms, torch.Tensor):
        vocab_norms = {"text_encoder": vocab_norms}
    vocab_norms = dict(vocab_norms or {})
    unknown = [name for name in vocab_norms if name not in emb.vectors]
    if unknown:
        raise ConfigError(f"vocab_norms names {unknown}, but {emb.token!r} has vectors for {list(emb.vectors)}")
    encoders = {}
    for name, t in emb.vectors.items():
        norms = t.norm(dim=1)
        entry = {"width": t.shape[1], "norms": norms.tolist(), "mean_norm": norms.mean().item()}
        if name in vocab_norms:
            v = vocab_norms[name]
            if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() == 0:
                raise ConfigError(f"vocab_norms[{name!r}] must be a non-empty 1-D tensor of row norms")
            v = v.detach().float().cpu()
            entry["vocab_norm_mean"] = v.mean().item()
            entry["vocab_norm_std"] = v.std(correction=0).item()
        encoders[name] = entry
    summary = {
        "token": emb.token,
        "num_vectors": emb.num_vectors,
        "widths": list(emb.widths),
        "family": describe_widths(emb.widths),
        "encoders": encoders,
        "metadata": dict(emb.metadata),
    }
    spec = modelspec.summary(emb.metadata)
    if spec:
        summary["modelspec"] = spec
        family = modelspec.family_of(emb.metadata)
        if family is not None:
            summary["made_for"] = family
    return summary


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise FormatError(f"unknown embedding format {format!r}: choose one of {', '.join(FORMATS)}")


__all__ = [
    "FORMATS", "DETECTED_FORMATS", "PNG_CHUNK", "a1111_png_name", "holds_png_embedding", "LearnedEmbedding",
    "default_filename", "second_file", "first_file",
    "save_embedding", "load_embedding", "load_embedding_pair", "detect_format", "convert", "format_for",
    "check_suffix", "check_writable", "describe",
    "split_bundle", "on_disk", "bundled_names", "load_bundled", "bundle_into_lora",
]
