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

import contextlib
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
    text = value.as_posix() if isinstance(value, Path) else str(value)
    if not text or (Path(base or ".") / Path(text).expanduser()).exists():
        return None
    from .models import _is_hub_id, _is_local_path  # (a file that is there never gets this far)

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

    from .formats import first_file, second_file
    from .models import offline_note

    key = (repo, file, str(constants.HF_HUB_CACHE))
    if key in _fetched and _fetched[key].is_file():  # (generate reads it, then hashes it for the pictures' record)
        return _fetched[key]
    names = [file] if file else list(DEFAULT_FILES)
    unreached = []  # the names that were neither in the cache nor reachable
    for name in names:
        try:
            with _quiet():
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
            if found.suffix == ".safetensors":  # diffusers' SDXL pair: its other file, beside it if the repo has one
                first = first_file(Path(name))
                _fetch_quietly(repo, (first or second_file(Path(name))).as_posix())
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
    found = _fetch_quietly(repo, TOKEN_FILE)
    text = found.read_text(encoding="utf-8", errors="replace").strip() if found is not None else ""
    return text or None


def _fetch_quietly(repo: str, name: str, revision: str | None = None) -> Path | None:
    """`name` of `repo` (at `revision`, a branch, tag or commit; else main) fetched into the cache, or None when it
    is not there (or not cached offline, or the hub cannot be reached): for the files an embedding may have beside
    it, and a hub model's `training.json` (`models.load_model`)."""
    from huggingface_hub import hf_hub_download

    try:
        with _quiet():
            return Path(hf_hub_download(repo, name, revision=revision))
    except Exception:  # (none in the repo, not cached offline, no network: nothing beside it)
        return None


@contextlib.contextmanager
def _quiet():
    """huggingface_hub's notes (symlinks, and each failed request's log line: the error that follows says it once)
    kept out of the command's output."""
    from huggingface_hub.utils import logging as hub_logging

    from .models import _log_level_error

    with warnings.catch_warnings(), _log_level_error(hub_logging):
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------------------------------------------
# publishing: `textinv push`

CARD_FILE = "README.md"
GRID_FILE = "sample-grid.png"  # the run's last sample grid, shown on the card
_FAMILY_TAGS = {"sd1": ["stable-diffusion", "stable-diffusion-diffusers"], "sd2": ["stable-diffusion",
                "stable-diffusion-diffusers"], "sdxl": ["stable-diffusion-xl"]}


def push(source, repo: str, *, private: bool = False, hub_token: str | None = None, api=None) -> str:
    """Publish an embedding on the Hugging Face hub: its file(s) as they are, a README.md model card (token, init,
    base model, family, steps, how to load it, the run's last sample grid) and token_identifier.txt, as the
    sd-concepts-library repos hold them, in one commit to `repo` (made if need be; `private` then). `source`: a
    training run's --out (or one concept's folder of it) or an embedding file. `api`: an `HfApi` (default: one with
    `hub_token`, else the token of HF_TOKEN or `hf auth login`). Returns the repo's address.

    >>> push("runs/my-dog", "me/my-dog")   # doctest: +SKIP
    'https://huggingface.co/me/my-dog'
    """
    import shutil
    import tempfile

    # 1. what the command line alone tells (`_check_names`), the hub reached (`_check_reachable`), then everything
    # checked and the card written before it is asked more
    source = Path(source).expanduser()
    _check_names(source, repo)
    _check_reachable(repo, api)
    files, emb, run = _published_files(source)
    with tempfile.TemporaryDirectory(prefix="textinv-push-") as staging:
        staging = Path(staging)
        for file in files:
            shutil.copyfile(file, staging / file.name)
        grid = _last_grid(files[0].parent)
        if grid is not None:
            shutil.copyfile(grid, staging / GRID_FILE)
        (staging / TOKEN_FILE).write_text(emb.token + "\n", encoding="utf-8")
        if run is not None:  # (the concepts library's other file: what the concept is)
            (staging / "type_of_concept.txt").write_text(run.property + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(model_card(emb, repo, [f.name for f in files], grid), encoding="utf-8")
        # 2. one commit: a repo never holds the card of one run beside the file of another
        return _upload(staging, repo, private, hub_token, api, f"textinv: {emb.token}"
                       + (f", {emb.metadata['steps']} steps" if emb.metadata.get("steps") else ""))


def _published_files(source: Path):
    """The embedding file(s) `source` names (a diffusers-sdxl pair: both), the embedding, and its run's settings
    (a TrainConfig, or None for a file from elsewhere)."""
    from .errors import ConfigError
    from .formats import diffusers_file, read_embedding, second_file
    from .run_folder import embedding_file, saved_run

    file = embedding_file(source)  # (a run of several concepts is refused here, naming their folders)
    if file.is_dir():
        file = diffusers_file(file)
        if file is None:
            raise ConfigError(f"{source} holds no embedding file textinv wrote (no config.yaml naming one, no "
                              f"learned_embeds.*): give the embedding file itself")
    emb, layout = read_embedding(file)
    pair = layout == "diffusers-sdxl"  # (read with its second file beside it)
    found = saved_run(file.parent) or saved_run(file.parent.parent)
    return [file, second_file(file)] if pair else [file], emb, found[0] if found else None


def _last_grid(folder: Path) -> Path | None:
    """The newest sample grid a run wrote beside its embedding (samples/step-NNNNNN.png), or None."""
    from .run_folder import SAMPLES_DIR

    grids = sorted((folder / SAMPLES_DIR).glob("step-*.png"), key=lambda p: (len(p.stem), p.stem))
    return grids[-1] if grids else None


def model_card(emb, repo: str, files: list[str], grid: Path | None = None) -> str:
    """The README.md of a published embedding: front matter the hub reads (tags, base_model when it is a hub id;
    the license left for the author to choose), what the embedding is, and how to load it with textinv, diffusers
    and the web UIs.

    >>> print(model_card(LearnedEmbedding("<my-dog>", {"text_encoder": torch.zeros(1, 768)}), "me/my-dog",
    ...                  ["learned_embeds.safetensors"]))   # doctest: +SKIP
    ---
    tags:
    - textual_inversion
    ...
    """
    from .families import family_for_widths
    from .models import _is_hub_id

    family = family_for_widths(emb.widths) or emb.metadata.get("family")
    base = emb.metadata.get("base_model")
    on_hub = bool(base) and _is_hub_id(base)
    body = _card_about(emb, family, base, on_hub)
    if grid is not None:
        step = grid.stem.removeprefix("step-").lstrip("0") or "0"
        body += [f"![samples]({GRID_FILE})", "", f"The training run's sample grid at step {step}.", ""]
    body += _card_use(emb, repo, files, family, base, on_hub) + _card_web_ui(emb, files, family)
    return "\n".join(_card_front_matter(family, base, on_hub) + body)


def _card_front_matter(family: str | None, base: str | None, on_hub: bool) -> list[str]:
    """The model card's front matter lines: base_model (when it is a hub id), the library, the tags and a note on
    the license."""
    tags = ["textual_inversion", *_FAMILY_TAGS.get(family, []), "text-to-image", "textinv"]
    return (["---"] + ([f"base_model: {base}"] if on_hub else []) + ["library_name: diffusers", "tags:"]
            + [f"- {tag}" for tag in tags]
            + ["# license: choose one: https://huggingface.co/docs/hub/repositories-licenses (the base model's "
               "license may bind what you choose)", "---", ""])


def _card_about(emb, family: str | None, base: str | None, on_hub: bool) -> list[str]:
    """The model card's heading, what the embedding is, and a table of what its metadata records."""
    from .families import FAMILY_NAMES, describe_widths

    meta = emb.metadata
    rows = [("token", f"`{emb.token}`" + (f" ({emb.num_vectors} vectors)" if emb.num_vectors > 1 else "")),
            ("init", meta.get("init")), ("base model", f"[{base}](https://huggingface.co/{base})" if on_hub else base),
            ("family", FAMILY_NAMES.get(family, describe_widths(emb.widths))), ("steps", meta.get("steps")),
            ("learned", meta.get("property")), ("resolution", meta.get("resolution")),
            ("clip skip", meta.get("clip_skip") if meta.get("clip_skip") not in (None, "1") else None),
            # (recorded only when it is not 75: captions read in kohya's 75-token chunks)
            ("caption tokens read", meta.get("max_token_length"))]
    return [f"# {emb.token}", "", f"A textual-inversion embedding: the new word `{emb.token}` for a concept, learned "
            "from a few pictures with the model kept frozen, by textinv"
            + (f" {meta['textinv_version']}." if meta.get("textinv_version") else "."), "",
            "| | |", "| --- | --- |", *(f"| {k} | {str(v).replace('|', '&#124;')} |" for k, v in rows if v), ""]


def _card_use(emb, repo: str, files: list[str], family: str | None, base: str | None, on_hub: bool) -> list[str]:
    """The model card's "Use" section: how to load the embedding with textinv and with diffusers."""
    weight = "" if files[0] == "learned_embeds.safetensors" or files[0] == "learned_embeds.bin" else \
        f', weight_name="{files[0]}"'
    prompt = f"a photo of {emb.token}"
    # (a local base model by its name alone, as the file records it: the reader gives the path of their copy)
    lines = ["## Use", "", "With textinv, on the base model it was learned on"
             + ("" if on_hub or not base else f" (`{base}`: the path of your copy)") + ":", "", "```sh",
             f"textinv generate --embedding {repo}" + (f"/{files[0]}" if weight else "")
             + (f" --model {base}" if base else "") + f' --prompt "{prompt}"', "```", ""]
    if family == "sdxl":
        return lines + ["With diffusers, each text encoder's half is loaded into its own encoder (see diffusers' "
                        "[textual inversion guide](https://huggingface.co/docs/diffusers/using-diffusers/textual_"
                        "inversion_inference)).", ""]
    return lines + ["With diffusers:", "", "```python", f'pipe.load_textual_inversion("{repo}"{weight})',
                    f'image = pipe("{prompt}").images[0]', "```", ""]


def _card_web_ui(emb, files: list[str], family: str | None) -> list[str]:
    """The model card's lines on the AUTOMATIC1111 web UI and ComfyUI: where the file goes and the word to write
    (none for a diffusers SDXL pair, which they do not read)."""
    from .formats import default_filename

    name = Path(files[0]).stem
    if files[0].startswith("learned_embeds"):  # (they call an embedding by its file name: one to write in prompts)
        name = Path(default_filename("kohya", emb.token)).stem
        where = f"save `{files[0]}` in the embeddings folder as `{name}{Path(files[0]).suffix}`"
    else:
        where = f"put `{files[0]}` in the embeddings folder"
    if family != "sdxl" or len(files) == 1:  # (the web UIs read an SDXL embedding as one file, not diffusers' pair)
        return [f"In the AUTOMATIC1111 web UI or ComfyUI: {where} and write `{name}` in the prompt (they call an "
                "embedding by its file name).", ""]
    return []


def _check_names(source: Path, repo: str) -> None:
    """Refuse a missing `source` and a `repo` that is no OWNER/NAME before the hub is asked: offline, they were
    answered "the hub could not be reached", which running it again with a network would not have mended. Neither
    check imports torch (`models._is_hub_id`, the same test, does)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .errors import ConfigError, given

    if not source.exists():
        raise ConfigError(f"{source}: no such file or folder: give a training run's --out folder or an embedding file")
    try:
        validate_repo_id(repo)
        named = repo.count("/") == 1
    except HFValidationError:
        named = False
    if not named:
        raise ConfigError(f"{given('repo', repo)} is not a hub repo id: give OWNER/NAME, e.g. your-name/my-dog")


def _check_reachable(repo: str, api=None) -> None:
    """Refuse a push at once when the hub (`api`'s endpoint, else HF_ENDPOINT's) cannot be reached: HF_HUB_OFFLINE is
    set, or one request, bounded by huggingface_hub's metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s), gets no answer.
    First, so it is said at once, not after the embedding is read and the card written (which import torch and
    diffusers: half a minute on a busy machine), nor by HfApi's requests, which wait without a timeout. Any answer
    at all, an error status too, is a hub reached."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(getattr(api, "endpoint", None) or constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except _no_route() as e:
        raise _unreached(repo, e) from None


def _no_route() -> tuple[type[Exception], ...]:
    """The errors of a hub that cannot be reached: HF_HUB_OFFLINE's OfflineModeIsEnabled (a ConnectionError), the
    OSErrors of a network that is down, and, with no route to it, huggingface_hub's HTTP library's own errors (httpx's
    ConnectError or a timeout, which are no OSError), which share that library's HTTPError, the base HfHubHTTPError is
    made from."""
    from huggingface_hub.errors import HfHubHTTPError

    return ConnectionError, OSError, HfHubHTTPError.__mro__[1]


def _unreached(repo: str, error: Exception):
    """The one-line error of a push that could not reach the hub, for `error`."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    from .errors import ConfigError

    # (models.offline_note's words, told by huggingface_hub's refusal: importing models imports torch and diffusers)
    note = " (HF_HUB_OFFLINE is set)" if isinstance(error, OfflineModeIsEnabled) else ""
    return ConfigError(f"--repo {repo}: the Hugging Face hub could not be reached{note} ({type(error).__name__}); "
                       "nothing was published: run it again with a network")


def _upload(folder: Path, repo: str, private: bool, hub_token: str | None, api, message: str) -> str:
    """`folder`'s files as one commit to `repo`, made first if need be (private, if asked); the hub's refusals and
    an unreachable hub as one line each."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    from .errors import ConfigError

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=hub_token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", commit_message=message)
    except LocalTokenNotFoundError:
        raise ConfigError(f"--repo {repo}: publishing needs a Hugging Face token that can write: log in with `hf auth "
                          "login`, set HF_TOKEN, or pass --hub-token") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = ("the token was refused, or cannot write there: log in again with `hf auth login` (a token with "
               "write access), or pass --hub-token" if status in (401, 403) else str(e).splitlines()[0])
        raise ConfigError(f"--repo {repo}: the hub refused the upload ({status or type(e).__name__}): {why}") from None
    except _no_route() as e:  # (after the refusals above: HfHubHTTPError is that library's HTTPError too)
        raise _unreached(repo, e) from None
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo}")
