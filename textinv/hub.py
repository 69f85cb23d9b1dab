"""Embeddings on the Hugging Face hub: read one by its repo id, as diffusers' `load_textual_inversion` does, and
publish a run's (`textinv push`).

    textinv generate --embedding sd-concepts-library/cat-toy --prompt "a <cat-toy> on a beach"
    textinv inspect someone/embeddings/charturner.safetensors      # a named file in a repo (diffusers' weight_name)
    textinv push runs/my-dog --repo me/my-dog                      # the embedding, a model card, the sample grid

A value is read from the hub only when it names nothing on disk and reads as a repo id (`hub_reference`), by the
rules `--model` reads one by (`models._is_local_path`, `_is_hub_id`): `./x`, `x.pt` or `runs/x` with a `runs/`
folder here stay local paths, and a missing one stays a "no such file" error. Files come through huggingface_hub's
cache (`hf_hub_download`), so a repo fetched once is read offline (HF_HUB_OFFLINE=1) from there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import FormatError

# what diffusers' load_textual_inversion looks for in a repo, in its order (the safetensors file first)
DEFAULT_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")
TOKEN_FILE = "token_identifier.txt"  # the sd-concepts-library repos' token, as their cards tell it
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".png")  # a named file: what textinv reads an embedding from
_fetched: dict[tuple[str, str | None, str], Path] = {}  # (repo, file, cache) -> the cached file, once a process


def hub_reference(value, base: Path | None = None) -> tuple[str, str | None] | None:
    """(repo id, file in it or None for diffusers' default) when `value` names an embedding on the hub: it names
    nothing on disk, and is 'owner/name' or 'owner/name/path/in/repo.safetensors' (.bin, .pt, .png), with no sign
    of a local path (`models._is_local_path`'s: ./ ~ / \\ at the start, a trailing slash, a file suffix on
    'owner/name', a first part that is a folder here: in `base`, a config file's folder, else the working
    directory). None: a local path.

    >>> hub_reference("sd-concepts-library/cat-toy"), hub_reference("me/embeds/dog.safetensors")
    (('sd-concepts-library/cat-toy', None), ('me/embeds', 'dog.safetensors'))
    >>> hub_reference("./cat-toy"), hub_reference("my-dog.pt"), hub_reference("me/dog.pt")
    (None, None, None)
    """
    from .models import _is_hub_id, _is_local_path

    text = value.as_posix() if isinstance(value, Path) else str(value)
    if not text or (Path(base or ".") / Path(text).expanduser()).exists():
        return None
    parts = text.split("/")
    if len(parts) < 2 or "" in parts or not _is_hub_id("/".join(parts[:2])):
        return None
    if len(parts) == 2:
        return None if _is_local_path(text, base) else (text, None)
    file = "/".join(parts[2:])
    if _is_local_path(parts[0] + "/x", base) or Path(file).suffix.lower() not in _FILE_SUFFIXES or ".." in parts:
        return None
    return "/".join(parts[:2]), file


def fetch_embedding(repo: str, file: str | None = None) -> Path:
    """The local file of an embedding on the hub: `file` in `repo`, or diffusers' default learned_embeds.safetensors,
    else learned_embeds.bin. Downloaded into the Hugging Face cache the first time; offline, read from it. Raises
    FormatError, in one line, for a repo or file that is not there, or not in the cache without a network.

    >>> fetch_embedding("sd-concepts-library/cat-toy")   # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--sd-concepts-library--cat-toy/snapshots/.../learned_embeds.bin')
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    from .models import offline_note

    key = (repo, file, str(constants.HF_HUB_CACHE))
    if key in _fetched and _fetched[key].is_file():  # (generate reads it, then hashes it for the pictures' record)
        return _fetched[key]
    names = [file] if file else list(DEFAULT_FILES)
    unreached = []  # the names that were neither in the cache nor reachable
    for name in names:
        try:
            with warnings.catch_warnings():  # (huggingface_hub's notes on symlinks and the like)
                warnings.simplefilter("ignore")
                found = Path(hf_hub_download(repo, name))
        except LocalEntryNotFoundError:
            unreached.append(name)
        except EntryNotFoundError:  # (the hub answered: the repo has no such file)
            continue
        except RepositoryNotFoundError:
            raise FormatError(f"{repo}: no such file here, and no model repo {repo!r} on the Hugging Face "
                              f"hub (or it is private or gated: log in with `hf auth login`, or set HF_TOKEN); check "
                              f"the name") from None
        except (HfHubHTTPError, OSError) as e:  # (a server error, a cache folder that cannot be written)
            raise FormatError(f"{repo}: {name} could not be fetched from the Hugging Face hub "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); try again, or "
                              f"download it and give its path") from None
        else:
            _fetched[key] = found
            return found
    shown = "/".join([repo, file]) if file else repo
    if unreached:
        raise FormatError(f"{shown}: no such file here, and {' or '.join(unreached)} of the hub repo {repo!r} is not "
                          f"in the local Hugging Face cache and the hub could not be reached{offline_note()}: run once "
                          f"with a network, or download it (`hf download {repo}`) and give its path")
    wanted = f"no {file}" if file else f"neither {' nor '.join(DEFAULT_FILES)} (what diffusers loads)"
    raise FormatError(f"{shown}: the hub repo {repo!r} holds {wanted}; name its embedding file after the "
                      f"repo id, e.g. {repo}/my-embedding.safetensors (diffusers' weight_name)")


def token_identifier(repo: str) -> str | None:
    """The token the repo's token_identifier.txt names (the sd-concepts-library repos have one), or None: none
    there, or not cached offline. Never raises: the embedding file is what counts, this only checks it."""
    from huggingface_hub import hf_hub_download

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = Path(hf_hub_download(repo, TOKEN_FILE)).read_text(encoding="utf-8").strip()
    except Exception:  # (none in the repo, not cached offline, no network: nothing to check against)
        return None
    return text or None
