"""LoRAs in prompts: the web UI's `<lora:NAME:multiplier>` tags (`emphasis.lora_tags`) as diffusers applies them.

`lora_files` finds each tag's file in the --lora-dir folders as the web UI finds it, before the model loads;
`apply_loras` makes exactly a pass's tags active on the model, at their text-encoder and UNet multipliers, each file
loaded once a run (a LoRA that bundles embeddings from a copy without them: `_lora_weights`); `unload_loras` takes
them all off again. `lora_sha256` is the hash the web UI's "Lora hashes" give a file, which a picture records and
`again` checks the files against. Kept apart from `generate`, which calls these for each pass: none of it draws.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path

from . import emphasis
from .errors import ConfigError, FormatError, setting
from .formats import BUNDLE_PREFIX, bundled_names
from .models import Model, _first_line, _quiet_diffusers, quiet_transformers
from .run_folder import _nfc


PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin")


def lora_files(tags: list[emphasis.LoraTag], folders: list[str]) -> dict[str, Path]:
    """The file of each LoRA the prompts name, found as the web UI finds it: by file name (without its suffix) in
    the folders and their subfolders. Checked before the model loads; refuses a missing file, a missing --lora-dir,
    a pickled file (it could carry code) and a missing peft (what diffusers loads LoRAs with), each with the fix.
    Names are compared in one Unicode form (`run_folder.same_names`): macOS keeps café.safetensors with the accent
    apart (NFD), a typed <lora:café> has it composed (NFC)."""
    if not tags:
        return {}
    named = ", ".join(f"<lora:{t.name}>" for t in tags)
    if not folders:
        raise ConfigError(f"the prompt names {named}: give {setting('lora_dir')} the folder of your LoRA files (the "
                          f"web UI's models/Lora)")
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"the prompt names {named}; diffusers applies LoRAs with the peft package: pip install peft")
    found: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{setting('lora_dir', folder)} is not a folder")
    candidates = [f for folder in folders for f in sorted(Path(folder).rglob("*")) if f.is_file()]
    for tag in tags:
        name = _nfc(tag.name)
        same = ([f for f in candidates if _nfc(f.stem) == name]
                or [f for f in candidates if _nfc(f.stem).lower() == name.lower()])
        usable = [f for f in same if f.suffix.lower() == ".safetensors"]
        if usable:
            found[tag.name] = usable[0]
        elif any(f.suffix.lower() in PICKLE_SUFFIXES for f in same):
            raise ConfigError(f"<lora:{tag.name}> is a pickled file ({same[0]}); textinv loads LoRAs only from "
                              f".safetensors (a pickle can carry code): use the .safetensors version")
        else:
            raise ConfigError(f"<lora:{tag.name}>: no {tag.name}.safetensors in "
                              f"{setting('lora_dir', ', '.join(map(str, folders)))} or its subfolders; the tag names "
                              f"the file without its suffix")
    return found


def apply_loras(model: Model, tags: list[emphasis.LoraTag], files: dict[str, Path]) -> None:
    """Make exactly `tags` active on the model, at their multipliers (text encoders and UNet apart, as the web UI
    applies them); each file is loaded once per run. No tags: any loaded LoRA is switched off."""
    pipe = model.pipeline
    loaded: dict[str, str] = model.__dict__.setdefault("_loras", {})  # LoRA name -> adapter name
    tags = list({t.name: t for t in tags}.values())  # a LoRA named twice: its last tag counts
    with _quiet_lora_loading():
        for tag in tags:
            if tag.name not in loaded:
                adapter = f"lora{len(loaded)}"
                loaded[tag.name] = adapter if _load_lora(model, tag.name, files[tag.name], adapter) else None
        tags = [t for t in tags if loaded[t.name] is not None]  # (a file of bundled embeddings alone: no weights)
        if not tags:
            if any(loaded.values()):
                pipe.disable_lora()
            return
        pipe.enable_lora()
        parts = pipe.get_list_adapters()  # {component: [adapters]}: a LoRA's weight goes to the parts it has
        pipe.set_adapters([loaded[t.name] for t in tags],
                          [{part: t.unet if part == "unet" else t.te for part, has in parts.items()
                            if loaded[t.name] in has} for t in tags])


def _load_lora(model: Model, name: str, path: Path, adapter: str) -> bool:
    """Load one LoRA file as `adapter`; False: it holds no weights, only bundled embeddings. A file that fails can
    fail part-way (a LoRA of another family leaves its adapter in the UNet, one whose text-encoder part does not fit
    leaves its UNet part): every LoRA comes off then, or the model would be handed back with half of it, and the
    next file would find its adapter name taken."""
    try:
        with _lora_weights(name, path) as weights:
            if weights is None:
                return False
            model.pipeline.load_lora_weights(str(weights), adapter_name=adapter)
            return True
    except Exception as e:
        model.__dict__.pop("_loras", None)
        model.pipeline.unload_lora_weights()
        why = _first_line(e).split(". For details look at the above report")[0].rstrip(":")  # (a report not shown)
        if isinstance(e, ConfigError):  # (said already: the temporary copy's, `_lora_weights`)
            raise
        if isinstance(e, OSError):  # (what diffusers makes of a file safetensors cannot read)
            raise FormatError(f"<lora:{name}> ({path}) could not be read: {why}; is the file whole? download it "
                              f"again") from None
        if isinstance(e, (ValueError, KeyError, RuntimeError)):  # not a LoRA, or one for another architecture
            raise FormatError(f"<lora:{name}> ({path}) could not be applied to {model.source}: {why}; is it a LoRA "
                              f"for this model's family ({model.family})?") from None
        raise


@contextlib.contextmanager
def _lora_weights(name: str, path: Path):
    """The file diffusers loads for <lora:`name`>: `path`, or for one that bundles embeddings a copy without them,
    its metadata kept (diffusers refuses a tensor name that is no LoRA's; the web UI sets them apart), in the
    system's temporary folder and removed however the run ends; None when it holds nothing else (the web UI then
    changes no weights)."""
    if not bundled_names(path):
        yield path
        return
    import tempfile

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys() if not key.startswith(BUNDLE_PREFIX)}
    if not tensors:
        yield None
        return
    with contextlib.ExitStack() as stack:
        try:  # (a full or missing temporary folder is no fault of the LoRA's file)
            copy_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="textinv-lora-"))) / path.name
            save_file(tensors, str(copy_path), metadata=metadata)
        except OSError as e:
            raise ConfigError(f"<lora:{name}> bundles embeddings, so its weights are loaded from a copy without them, "
                              f"which could not be written in {tempfile.gettempdir()} ({e.strerror or e}): free space "
                              f"there, or set TMPDIR to a folder with room for {path.name}") from None
        yield copy_path


@contextlib.contextmanager
def _quiet_lora_loading():
    """The libraries' notes while LoRAs load, which mislead: diffusers' that a LoRA has no text-encoder part (which
    is common); transformers' report that a second LoRA loaded into a text encoder leaves the first one's weights
    'MISSING ... newly initialized' (they are untouched), and peft's warning that the model now holds several
    adapters (as meant). A file that fails is refused in our words (`_load_lora`)."""
    with quiet_transformers(), _quiet_diffusers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield


def unload_loras(model: Model) -> None:
    """Take every LoRA `apply_loras` loaded off the model: its weights are as before."""
    if any((model.__dict__.pop("_loras", None) or {}).values()):  # (None: a file of bundled embeddings alone)
        model.pipeline.unload_lora_weights()


def _lora_set(tags: list[emphasis.LoraTag]) -> dict[str, tuple[float, float]]:
    """The LoRAs `apply_loras` makes active for `tags`: each by its name, its last tag's multipliers."""
    return {t.name: (t.te, t.unet) for t in tags}


def lora_sha256(path: str | Path) -> str:
    """The hash the A1111 web UI gives a .safetensors LoRA (`NetworkOnDisk`), which civitai looks LoRAs up by: the
    `sshs_model_hash` its trainer wrote into the file's metadata (kohya's sd-scripts) when there is one, else the
    "addnet" hash (kohya's, sd-webui-additional-networks'): the SHA-256 of the bytes after the safetensors header,
    the tensors alone, so an edit of the metadata leaves it. Reads the whole file once (tens to hundreds of MB)."""
    with open(path, "rb") as f:
        header = f.read(int.from_bytes(f.read(8), "little"))  # (8 bytes: the header's length, little-endian)
        try:
            own = (json.loads(header).get("__metadata__") or {}).get("sshs_model_hash")
        except (ValueError, AttributeError):
            own = None
        if isinstance(own, str) and own:
            return own
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
