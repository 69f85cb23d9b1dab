"""`textinv inspect`: what an embedding file holds, which model family it fits, and what each vector "reads as"; of a
drawn picture, the settings `generate --again` reads from it (`inspect_picture`).

With a model, each vector is compared with the model's vocabulary: its norm against the norms of the vocabulary's
words (`word_rows`; a learned vector far longer than any word tends to dominate prompts and hurt editability), and
the vocabulary tokens nearest to it by cosine similarity.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import modelspec
from .emphasis import CHUNK
from .errors import ConfigError
from .families import FAMILY_NAMES, FAMILY_WIDTHS, describe_widths
from .formats import (BUNDLE_SEPARATOR, ModelSpecWarning, _resolve, a1111_png_name, bundled_names, describe,
                      load_bundled, read_embedding, split_bundle)
from .generate import file_sha256, uses_clip_l_half
from .models import load_model
from .tokens import base_embedding


def nearest_tokens(table: torch.Tensor, vectors: torch.Tensor, tokenizer, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each vector (n, d), the `k` vocabulary tokens of `table` (V, d) nearest by cosine similarity, written as
    a person reads them (`_readable`). A vector of zeros (a merge whose weights cancel) is near none: [] (its
    similarity to every token is 0, and the top k of those ties were the table's first rows, byte symbols)."""
    sims = torch.nn.functional.normalize(vectors.float(), dim=1) @ torch.nn.functional.normalize(table.float(), dim=1).T
    top = sims.topk(min(k, table.shape[0]), dim=1)
    return [[(_readable(tokenizer.convert_ids_to_tokens(int(i))), round(float(s), 4)) for s, i in zip(vals, ids)]
            if vector.any() else [] for vector, vals, ids in zip(vectors, top.values, top.indices)]


def word_rows(table: torch.Tensor, tokenizer) -> torch.Tensor:
    """The rows of `table` (V, d) that the vocabulary's whole words are read as: entries ending in CLIP's end-of-word
    mark `</w>`, single bytes left out; every row if there are none. A learned vector stands beside words in a
    prompt, so their norms are its reference. The other rows are word pieces, the 512 byte symbols and special
    tokens; in a small model (the shapes model: 760 rows, 65 words, each one token) most are rows no text produces,
    left near their initial norm (0.15, against 2.4 for its words), which pulled the mean far below any word's.
    SD's CLIP saw every row of its 49,408 in training, and there too a vector is now measured against words.

    >>> shapes = load_model("shapes")                                           # doctest: +SKIP
    >>> word_rows(base_embedding(shapes.text_encoder).weight, shapes.tokenizer).shape  # doctest: +SKIP
    torch.Size([64, 128])
    """
    ids = [i for t, i in tokenizer.get_vocab().items()
           if t.endswith("</w>") and len(t) > len("x</w>") and i < table.shape[0]]
    return table[sorted(ids)] if ids else table


def _readable(token: str) -> str:
    """A CLIP BPE token as text: a whole word without its end-of-word mark ("dog</w>" -> "dog"), the start of a
    word with a trailing ellipsis ("do" -> "do…")."""
    return token[:-len("</w>")] if token.endswith("</w>") else token if token.startswith("<|") else token + "…"


def inspect_file(path, model: str | None = None, top_k: int = 5, *, revision: str | None = None,
                 variant: str | None = None) -> dict:
    """A report on an embedding file as a dict, with a human-readable `text` entry. A modelspec architecture that
    does not fit the vectors is said in the report ("modelspec_mismatch"), not warned about. `model` is loaded at
    `revision` and `variant` (a hub id's branch, tag or commit and its weights' variant, `models.load_model`'s),
    which the report records beside it.

    >>> inspect_file("my-dog.pt", model="me/sd15", revision="v2")["revision"]   # doctest: +SKIP
    'v2'

    A LoRA file that bundles embeddings is reported as the list of them (`bundled`); `FILE::NAME` inspects one (with
    `model`, a LoRA that bundles one alone is inspected as that one).
    """
    file, bundle = split_bundle(path)
    names = bundled_names(file) if bundle is None else []
    if names and model is not None:
        if len(names) > 1:
            raise ConfigError(f"{path} is a LoRA that bundles {len(names)} embeddings ({', '.join(names)}): name the "
                              f"one to compare with --model as {path}{BUNDLE_SEPARATOR}{names[0]}")
        path, file, bundle = f"{file}{BUNDLE_SEPARATOR}{names[0]}", file, names[0]
    elif names:
        return bundle_report(file)
    emb, layout, mismatch = _read_noting_modelspec(path)
    report = {"file": str(path), "format": layout}
    nearest = None
    if model is not None:
        nearest = _compare_with_model(report, emb, model, top_k, revision, variant)
    else:
        report.update(describe(emb))
    # (a folder: the file in it that was read, learned_embeds.safetensors or .bin)
    shown = f"{path} ({_resolve(file).name})" if Path(file).is_dir() else str(path)
    lines = [f"{shown}: {report['format']} format", f"token: {emb.token}",
             f"vectors: {emb.num_vectors}", f"fits: {report['family']}"]
    lines += _modelspec_lines(report)
    if mismatch:
        report["modelspec_mismatch"] = mismatch[0]
        lines.append(mismatch[0])
    lines += _web_ui_name(report, emb, file) + _web_ui_hash(report, file)
    lines += encoder_lines(report["encoders"])
    for name, per_vector in (nearest or {}).items():
        where = f" ({name})" if len(nearest) > 1 else ""
        for i, near in enumerate(per_vector):
            lines.append(f"vector {i}{where} reads as: " + (", ".join(f"{t} ({s:.2f})" for t, s in near)
                                                            or "nothing (a vector of zeros)"))
    lines += _notes(report, emb)
    if "model_mismatch" in report:
        lines.append(report["model_mismatch"])
    # (sorted: safetensors hands the metadata back in another order each run, though the file keeps it sorted)
    own = sorted((k, v) for k, v in emb.metadata.items() if not k.startswith(modelspec.PREFIX))  # (shown above)
    if own:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in own))
    report["text"] = "\n".join(lines)
    return report


def _read_noting_modelspec(path):
    """The embedding at `path`, its layout, and the messages of the `ModelSpecWarning`s reading it raised (kept for
    the report, not warned); its other warnings are warned as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, layout = read_embedding(path)  # (the file read once)
    mismatch = [str(w.message) for w in caught if issubclass(w.category, ModelSpecWarning)]
    for w in caught:
        if not issubclass(w.category, ModelSpecWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return emb, layout, mismatch


def _compare_with_model(report: dict, emb, model: str, top_k: int, revision: str | None,
                        variant: str | None) -> dict | None:
    """Add to `report` the model compared with (and which version of it), the embedding's summary measured against
    its vocabulary, and the vocabulary tokens nearest each vector, which it returns; or, where the embedding does
    not fit the model, its summary alone and why it does not fit (returning None)."""
    loaded = load_model(model, revision=revision, variant=variant)
    # the model compared with, and which version of it, as generate's record and score's report name them
    version = {k: loaded.loaded_with[k] for k in ("revision", "variant") if k in loaded.loaded_with}
    report.update({"model": str(model), **version})
    compared = str(model) + "".join(f" ({k} {v})" for k, v in version.items())
    tables = {name: base_embedding(te).weight.detach() for name, _, te in loaded.encoders}
    tokenizers = {name: tok for name, tok, _ in loaded.encoders}
    if emb.widths == loaded.widths and set(emb.vectors) == set(tables):
        report.update(describe(emb, {name: word_rows(t, tokenizers[name]).float().norm(dim=1)
                                     for name, t in tables.items()}))
        nearest = {name: nearest_tokens(tables[name], emb.vectors[name], tokenizers[name], top_k)
                   for name in emb.vectors}
        report["nearest_tokens"] = nearest
        return nearest
    report.update(describe(emb))
    report["model_mismatch"] = (f"this embedding ({describe_widths(emb.widths)}) does not fit "
                                f"{compared} ({describe_widths(loaded.widths)})")
    if uses_clip_l_half(loaded, emb):  # (what generate, score and train then do)
        report["model_mismatch"] += (": only its clip_l half is used there (as ComfyUI does), and it was "
                                     "trained for SDXL's reading of CLIP-L, so it may draw differently")
    return None


def _modelspec_lines(report: dict) -> list[str]:
    """The report's lines on what the file's modelspec metadata says."""
    lines = []
    spec = report.get("modelspec", {})
    if "architecture" in spec:  # what the file says it was made for: SD 2.x's 512 or 768-v, a test model's family
        made_for = report.get("made_for")
        lines.append(f"made for: {spec['architecture']}" + (f", {FAMILY_NAMES[made_for]}" if made_for else "")
                     + " (its modelspec)")
    for key in ("title", "resolution"):
        if key in spec:
            lines.append(f"{key}: {spec[key]}")
    rest = {k: v for k, v in spec.items()
            if k not in ("architecture", "title", "resolution", "sai_model_spec", "implementation", "hash_sha256")}
    if rest:
        lines.append("modelspec: " + ", ".join(f"{k}={v}" for k, v in sorted(rest.items())))
    return lines


def _web_ui_name(report: dict, emb, file) -> list[str]:
    """Where the web UIs call the embedding in `file` by another name than its token: that name added to `report`
    ("web_ui_name"), and its line."""
    # The web UIs call a file by its name, whatever token it stores (an image by its chunk's name, and they do not
    # read a diffusers-sdxl pair as one embedding): what their users type in a prompt
    file = _resolve(Path(file))  # (a diffusers folder: its learned_embeds file)
    stem = file.stem
    if report["format"] == "lora-bundle":  # (called by its NAME, the token)
        return []
    if report["format"] == "a1111-png":  # (ComfyUI reads no image embeddings)
        called = a1111_png_name(file)
        if called and called != emb.token:
            report["web_ui_name"] = called
            return [f"in the A1111 web UI: {called} (it calls an image embedding by the name in its text chunk)"]
    elif report["format"] != "diffusers-sdxl" and stem != emb.token:
        report["web_ui_name"] = stem
        return [f"in the A1111 web UI and ComfyUI: {stem} (they call an embedding by its file name)"]
    return []


def _web_ui_hash(report: dict, file) -> list[str]:
    """The hash the web UI's "TI hashes" name the embedding file by (its SHA-256's first 12 digits), added to `report`
    ("web_ui_hash"), and its line; none for a LoRA's bundled embedding or a diffusers SDXL pair, which the web UI
    does not read as a file of their own."""
    if report["format"] in ("lora-bundle", "diffusers-sdxl"):
        return []
    report["web_ui_hash"] = file_sha256(_resolve(Path(file)))[:12]
    return [f"web UI hash: {report['web_ui_hash']} (its TI hashes name the file so: its SHA-256's first 12 digits)"]


def _notes(report: dict, emb) -> list[str]:
    """Notes on an embedding the tools read otherwise than one might expect (the second half of an SDXL pair alone,
    more vectors than one pass of the text encoder reads), added to `report` and as lines."""
    lines = []
    if emb.widths == (FAMILY_WIDTHS["sdxl"][1],):  # alone, the second half of diffusers' two-file SDXL layout
        report["note"] = (f"{FAMILY_WIDTHS['sdxl'][1]} is the width of SDXL's second text encoder: this file "
                          f"looks like the second half of an SDXL embedding kept as two files (learned_embeds and "
                          f"learned_embeds_2); inspect or use the first file, which finds this one beside it")
        lines.append(report["note"])
    if emb.num_vectors > CHUNK:  # (generate warns too, when it loads it)
        report["note_length"] = (f"{emb.num_vectors} vectors: more than the {CHUNK} one pass of the text encoder "
                                 f"reads, so a prompt splits it across chunks read apart, and the A1111 web UI "
                                 f"cannot use it")
        lines.append(report["note_length"])
    return lines


def bundle_report(path) -> dict:
    """`inspect_file`'s report on a LoRA file that bundles embeddings: each one's summary (`formats.describe`) in
    "bundled", and a line for each in `text`: its name (what prompts call it, and `FILE::NAME` inspects it alone),
    vectors and family."""
    bundled = [describe(emb) for emb in load_bundled(path)]
    lines = [f"{path}: a LoRA that bundles {len(bundled)} embedding{'s' * (len(bundled) != 1)}, installed with it by "
             f"<lora:{Path(path).stem}> in a prompt (inspect one as {path}{BUNDLE_SEPARATOR}NAME)"]
    lines += [f"{b['token']}: {b['num_vectors']} vectors, fits {b['family']} ({path}{BUNDLE_SEPARATOR}{b['token']})"
              for b in bundled]
    return {"file": str(path), "format": "lora-bundle", "bundled": bundled, "text": "\n".join(lines)}


def encoder_lines(encoders: dict) -> list[str]:
    """A line per text encoder of `formats.describe`'s "encoders": its width and each vector's norm, beside the
    vocabulary's words' where they were measured."""
    lines = []
    for name, entry in encoders.items():
        norms = ", ".join(f"{n:.3f}" for n in entry["norms"])
        line = f"{name} (width {entry['width']}): norms {norms}"
        if "vocab_norm_mean" in entry:
            line += f" (vocabulary's words: {entry['vocab_norm_mean']:.3f} +/- {entry['vocab_norm_std']:.3f})"
        lines.append(line)
    return lines


def inspect_picture(path) -> dict:
    """What `textinv generate --again` reads from a drawn picture (textinv's, the A1111 web UI's or ComfyUI's), as
    the web UI's PNG Info tab shows it: a dict with its origin, its settings by flag name, the settings that must be
    given beside --again (with why), its notes, the web UI's TI and Lora hashes, the --again command line, and a
    human-readable `text` entry. A file that holds no generation settings is refused (`again.read_picture`).

    >>> inspect_picture("renders/000-a-dog-s3.png")["settings"]["--seed"]   # doctest: +SKIP
    3
    """
    import shlex

    from .again import read_picture
    from .emphasis import lora_tags

    picture = read_picture(path)
    # a setting left at nothing (no VAE, no negative prompt, tiling off) is no flag the redraw is given
    # (the prompts and seed first, as the web UI's text has them; a seed of 0 is a seed)
    first = [n for n in ("prompt", "negative_prompt", "seed") if n in picture.settings]
    settings = {"--" + name.replace("_", "-"): picture.settings[name]
                for name in first + [n for n in picture.settings if n not in first]
                if not (picture.settings[name] is None or picture.settings[name] is False
                        or picture.settings[name] in ("", []))}
    needs = dict(picture.needs)
    prompts = [*(picture.settings.get("prompt") or []), picture.settings.get("hires_prompt") or ""]
    for name in picture.by_name:  # (--metadata shareable: a file named without where it is, asked for by --again)
        value = picture.settings.get(name)
        if value and name not in needs and (name != "lora_dir" or any(lora_tags(p)[1] for p in prompts)):
            values = value if isinstance(value, list) else [value]  # (--embedding's and --lora-dir's are lists)
            where = "they are" if len(values) > 1 else "it is"
            needs[name] = (f"--{name.replace('_', '-')}: the picture names {', '.join(map(str, values))} without "
                           f"saying where {where}")
    needs.update({name: why for name, why in _files_named(picture, prompts).items() if name not in needs})
    command = ["textinv", "generate", "--again", str(path)]
    for name in needs:
        command += ["--" + name.replace("_", "-"), name.upper()]
    report = {"file": str(path), "format": "picture", "origin": picture.origin, "settings": settings,
              "needs": [needs[name] for name in needs], "notes": list(picture.notes),
              "ti_hashes": dict(picture.ti_hashes), "lora_hashes": dict(picture.lora_hashes),
              "again": shlex.join(command)}
    if picture.version:
        report["textinv_version"] = picture.version
    lines = [f"{path}: a picture {_ORIGINS[picture.origin]} drew, with its generation settings (no embedding)"]
    for flag, value in settings.items():
        values = value if isinstance(value, list) else [value]
        lines.append(f"  {flag}" + ("" if value is True else " " + " ".join(shlex.quote(str(v)) for v in values)))
    for title, hashes in (("TI hashes", picture.ti_hashes), ("Lora hashes", picture.lora_hashes)):
        if hashes:
            lines.append(f"{title}: " + ", ".join(f"{name}: {digest}" for name, digest in hashes.items()))
    lines += [f"needs: {why}" for why in report["needs"]] + [f"note: {note}" for note in picture.notes]
    lines.append(f"draw it again: {report['again']}")
    report["text"] = "\n".join(lines)
    return report


def _files_named(picture, prompts: list[str]) -> dict[str, str]:
    """The files a picture's text names by name alone, with why each must be given beside --again: the embeddings of
    a web UI picture's TI hashes (but those bundled in a LoRA its prompt's tags name, which come with it; --again
    warns that the prompt reads the others' names as words) and the LoRAs of its prompt's `<lora:...>` tags
    (refused without --lora-dir). A picture whose record holds the files' places needs neither."""
    from .emphasis import lora_tags
    from .run_folder import _nfc

    tagged = list(dict.fromkeys(tag.name for prompt in prompts for tag in lora_tags(prompt)[1]))
    loras = {_nfc(name).lower() for name in tagged}
    embeddings = [name for name, short in picture.ti_hashes.items() if _nfc(short).lower() not in loras]
    needs = {}
    if embeddings and not picture.settings.get("embedding"):
        needs["embedding"] = (f"--embedding: the picture was drawn with the embeddings {', '.join(embeddings)} (its "
                              f"TI hashes): give their files or the web UI's embeddings folder, or the prompt reads "
                              f"their names as words")
    if tagged and not picture.settings.get("lora_dir"):
        needs["lora_dir"] = (f"--lora-dir: the prompt names {', '.join(f'<lora:{name}>' for name in tagged)}: give "
                             f"the folder of your LoRA files (the web UI's models/Lora)")
    return needs


_ORIGINS = {"textinv": "textinv", "a1111": "the A1111 web UI", "comfyui": "ComfyUI"}
