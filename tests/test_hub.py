"""Embeddings by hub id (read through a Hugging Face cache laid out by hand, offline, as huggingface_hub lays it
out), and `textinv push` (against a stand-in for HfApi that records what would be uploaded: no network here)."""

import hashlib
import importlib
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cache_snapshot
from textinv.cli import main
from textinv.errors import ConfigError, FormatError
from textinv.formats import LearnedEmbedding, load_embedding, save_embedding
from textinv.hub import push


def cache_repo(cache, repo: str, files: dict) -> None:
    """`files` (name -> bytes, or an embedding to save under that name) as a model repo's main branch in `cache`:
    models--OWNER--NAME/refs/main holds the commit, snapshots/COMMIT/ the files (huggingface_hub's layout, where
    each snapshot file links to a blob; a plain file is read the same)."""
    snapshot = cache_snapshot(cache, repo)
    for name, content in files.items():
        if isinstance(content, LearnedEmbedding):
            fmt = {".bin": "diffusers-bin", ".pt": "a1111"}.get(name[name.rfind("."):], "diffusers")
            save_embedding(content, snapshot / name, format=fmt)
        else:
            (snapshot / name).write_bytes(content)


def concept(token="<cat-toy>", n=1, width=32, seed=0):
    return LearnedEmbedding(token, {"text_encoder": torch.randn(n, width, generator=torch.Generator().manual_seed(seed))})


def test_a_hub_id_reads_the_repos_embedding_from_the_cache_offline(hub_cache):
    """sd-concepts-library's layout: learned_embeds.bin, token_identifier.txt, type_of_concept.txt."""
    emb = concept()
    cache_repo(hub_cache, "sd-concepts-library/cat-toy", {"learned_embeds.bin": emb, "token_identifier.txt": b"<cat-toy>",
                                                          "type_of_concept.txt": b"object"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the token identifier agrees: nothing to say)
        got = load_embedding("sd-concepts-library/cat-toy")
    assert got.token == "<cat-toy>" and torch.equal(got.vectors["text_encoder"], emb.vectors["text_encoder"])


def test_the_safetensors_file_is_taken_before_the_bin_as_diffusers_takes_it(hub_cache):
    cache_repo(hub_cache, "me/dog", {"learned_embeds.bin": concept("<bin>"),
                                     "learned_embeds.safetensors": concept("<st>")})
    assert load_embedding("me/dog").token == "<st>"


def test_a_named_file_in_a_repo_is_read_as_diffusers_weight_name(hub_cache):
    cache_repo(hub_cache, "me/embeds", {"charturner.pt": concept("charturner", n=3),
                                        "sub/other.safetensors": concept("<o>")})
    assert load_embedding("me/embeds/charturner.pt").num_vectors == 3
    assert load_embedding("me/embeds/sub/other.safetensors").token == "<o>"


def test_a_named_second_file_of_a_diffusers_sdxl_pair_fetches_and_reads_the_first(hub_cache, monkeypatch):
    import huggingface_hub

    pair = LearnedEmbedding("<xl>", {"text_encoder": torch.randn(1, 768), "text_encoder_2": torch.randn(1, 1280)})
    save_embedding(pair, cache_snapshot(hub_cache, "me/xl") / "learned_embeds.safetensors", "diffusers-sdxl")
    asked, download = [], huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: asked.append(name) or
                        download(repo, name, **kw))
    assert load_embedding("me/xl/learned_embeds_2.safetensors").widths == (768, 1280)
    assert asked == ["learned_embeds_2.safetensors", "learned_embeds.safetensors"]


def test_a_token_identifier_that_differs_from_the_files_token_is_warned_about(hub_cache):
    cache_repo(hub_cache, "me/dog", {"learned_embeds.bin": concept("<dog>"), "token_identifier.txt": b"<puppy>\n"})
    with pytest.warns(UserWarning, match=r"token_identifier.txt names the token '<puppy>', but its embedding file "
                                         r"holds '<dog>'"):
        assert load_embedding("me/dog").token == "<dog>"  # (the file's, as diffusers loads it)


def test_a_token_identifier_in_another_unicode_form_is_the_same_name(hub_cache):
    """token_identifier.txt written decomposed (a Mac's) names the token the file holds composed: no warning."""
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "<caf\u00e9>").encode()
    cache_repo(hub_cache, "me/cafe", {"learned_embeds.bin": concept("<caf\u00e9>"), "token_identifier.txt": decomposed})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_embedding("me/cafe").token == "<caf\u00e9>"


def test_a_repo_not_in_the_cache_is_one_clear_line_offline(hub_cache, capsys):
    with pytest.raises(FormatError, match=r"^nobody/nothing: no such file here, and learned_embeds.safetensors or "
                                          r"learned_embeds.bin of the hub repo 'nobody/nothing' is not in the local "
                                          r"Hugging Face cache and the hub could not be reached \(HF_HUB_OFFLINE is "
                                          r"set\)"):
        load_embedding("nobody/nothing")
    assert main(["inspect", "nobody/nothing/x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textinv inspect: error: nobody/nothing/x.safetensors: no such file here, and x.safetensors "
                          "of the hub repo 'nobody/nothing' is not in") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["./cat-toy", "cat-toy.pt", "me/dog.pt", "runs/dog", "runs/dog/x.safetensors",
                                   "~/x/y"])
def test_a_path_that_looks_local_stays_a_no_such_file_error(value, hub_cache, tmp_path, monkeypatch):
    """As --model reads a value: ./ or ~, a file suffix, or a first part that is a folder here is a path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    cache_repo(hub_cache, "runs/dog", {"learned_embeds.bin": concept()})  # (not taken: runs/ is a folder here)
    with pytest.raises(FormatError, match="no such file: check the path"):
        load_embedding(value)


def test_convert_inspect_and_a_config_files_setting_take_a_hub_id(hub_cache, tmp_path, capsys):
    from textinv.config import GenerateConfig, TrainConfig, config_file_settings
    from textinv.score import ScoreConfig

    cache_repo(hub_cache, "me/q", {"learned_embeds.safetensors": concept("<q>", n=2)})
    assert main(["convert", "me/q", str(tmp_path / "q.pt")]) == 0
    assert load_embedding(tmp_path / "q.pt").token == "<q>"
    assert main(["inspect", "me/q"]) == 0 and "<q>" in capsys.readouterr().out
    # a config file's relative paths are read from its folder; a hub id stays one
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "g.yaml").write_text("embedding: [me/q, local.pt]\n")
    (tmp_path / "configs" / "t.yaml").write_text("init_embedding: me/q\n")
    assert config_file_settings(GenerateConfig, tmp_path / "configs" / "g.yaml")["embedding"] == [
        "me/q", str(tmp_path / "configs" / "local.pt")]
    assert config_file_settings(TrainConfig, tmp_path / "configs" / "t.yaml")["init_embedding"] == "me/q"
    assert ScoreConfig(embedding="me/q").validate().embedding == "me/q"  # (not "does not exist")


def test_a_hub_embedding_answers_to_its_repos_name_as_a_file_to_its_own(sd1_dir, hub_cache, tmp_path):
    """A hub embedding answered to its token and to 'learned_embeds' (Path.stem of the id took 'Teal' from
    'me/Teal.Star-v1'): ComfyUI's embedding:Teal.Star-v1 was refused as naming no embedding given."""
    from textinv.config import GenerateConfig
    from textinv.generate import generate

    cache_repo(hub_cache, "me/Teal.Star-v1", {"learned_embeds.safetensors": concept("<q>", n=2, width=32)})

    def draw(out, prompt):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (picture,) = generate(GenerateConfig(prompt=[prompt], embedding=["me/Teal.Star-v1"], n=1, steps=2,
                                                 model=str(sd1_dir), out=str(tmp_path / out)), progress=False)
        with Image.open(picture) as image:
            return image.tobytes()

    by_token = draw("a", "a photo of <q>")
    assert draw("b", "a photo of embedding:Teal.Star-v1") == by_token
    assert draw("c", "a photo of Teal.Star-v1") == by_token  # (the web UIs' file-name rule)


def test_pictures_drawn_with_a_hub_embedding_record_its_id_and_draw_again(sd1_dir, hub_cache, tmp_path):
    """The record names the hub id, never the file's place in the cache (another machine's cache is elsewhere), and
    the SHA-256 of the file read, so --again tells an embedding updated on the hub since."""
    from textinv.config import GenerateConfig
    from textinv.generate import generate

    cache_repo(hub_cache, "me/q", {"learned_embeds.safetensors": concept("<q>", n=2, width=32)})
    (cached,) = hub_cache.glob("models--me--q/snapshots/*/learned_embeds.safetensors")
    for metadata in ("shareable", "full"):  # (--again the full one: the shareable one asks where the model is)
        (picture,) = generate(GenerateConfig(prompt=["a photo of <q>"], embedding=["me/q"], n=1, steps=2,
                                             model=str(sd1_dir), out=str(tmp_path / metadata), metadata=metadata),
                              progress=False)
        record = json.loads(Image.open(picture).text["textinv_settings"])
        assert record["settings"]["embedding"] == ["me/q"] and "embedding" not in record.get("by_name", [])
        assert record["embedding_sha256"] == [hashlib.sha256(cached.read_bytes()).hexdigest()]
        assert Image.open(picture).text["embeddings"] == "me/q"
        assert "TI hashes" in Image.open(picture).text["parameters"]
    assert main(["generate", "--again", str(picture), "--out", str(tmp_path / "again")]) == 0
    (again,) = (tmp_path / "again").iterdir()
    assert Image.open(again).tobytes() == Image.open(picture).tobytes()
    save_embedding(concept("<q>", n=2, width=32, seed=1), cached)  # updated on the hub since
    with pytest.warns(UserWarning, match="redraw"):
        assert main(["generate", "--again", str(picture), "--out", str(tmp_path / "changed")]) == 0


def test_train_starts_from_a_hub_embedding_and_records_its_id(sd1_dir, images, hub_cache, tmp_path):
    import yaml

    start = concept("<t>", width=32)
    cache_repo(hub_cache, "me/start", {"learned_embeds.safetensors": start})
    out = tmp_path / "run"
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<t>", "--init-embedding",
                 "me/start", "--steps", "1", "--batch", "1", "--lr", "1e-9", "--save-every", "0", "--sample-every", "0",
                 "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["init_embedding"] == "me/start"  # (not made absolute)
    learned = load_embedding(out / "learned_embeds.safetensors")
    assert learned.metadata["init"] == "embedding me/start"
    assert torch.allclose(learned.vectors["text_encoder"], start.vectors["text_encoder"], atol=1e-6)  # (one tiny step)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi (no network here): records the calls, and the files of the folder
    uploaded as they were at that moment (push's staging folder is gone afterwards)."""

    made: list = []

    def __init__(self, token=None):
        self.token, self.calls, self.files = token, [], {}
        FakeHfApi.made.append(self)

    def create_repo(self, repo_id, *, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, "type": repo_type}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, commit_message))
        self.files = {p.relative_to(folder_path).as_posix(): p.read_bytes()
                      for p in sorted(Path(folder_path).rglob("*")) if p.is_file()}


@pytest.fixture
def fake_hub(monkeypatch):
    """FakeHfApi in place of HfApi, and the hub taken as reached (push asks it first: `hub._check_reachable`)."""
    import huggingface_hub

    from textinv import hub

    FakeHfApi.made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "_check_reachable", lambda repo, api=None: None)
    return FakeHfApi.made


def test_push_publishes_a_runs_embedding_card_and_grid_in_one_commit(sd1_dir, images, tmp_path, hub_cache, fake_hub,
                                                                     capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<my-dog>", "--init", "dog",
                 "--steps", "2", "--batch", "1", "--save-every", "0", "--sample-every", "1", "--sample-steps", "1",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["push", str(run), "--repo", "me/my-dog", "--private", "--hub-token", "hf_secret"]) == 0
    assert capsys.readouterr().out == "published https://huggingface.co/me/my-dog\n"
    (api,) = fake_hub
    assert api.token == "hf_secret"
    assert api.calls == [("create_repo", "me/my-dog", {"private": True, "exist_ok": True, "type": "model"}),
                         ("upload_folder", "me/my-dog", "textinv: <my-dog>, 2 steps")]
    assert sorted(api.files) == ["README.md", "learned_embeds.safetensors", "sample-grid.png", "token_identifier.txt",
                                 "type_of_concept.txt"]
    assert api.files["learned_embeds.safetensors"] == (run / "learned_embeds.safetensors").read_bytes()
    assert api.files["sample-grid.png"] == (run / "samples" / "step-000002.png").read_bytes()  # (the last grid)
    assert api.files["token_identifier.txt"] == b"<my-dog>\n" and api.files["type_of_concept.txt"] == b"object\n"
    card = api.files["README.md"].decode()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "tags:\n- textual_inversion\n- text-to-image\n- textinv\n" in front  # (the tiny model: no family's tags)
    assert "library_name: diffusers" in front
    assert "\n# license: choose one" in front and "base_model" not in front  # (a local model: no hub id to name)
    for row in ("| token | `<my-dog>` |", "| init | dog |", f"| base model | {sd1_dir.name} |",
                "| family | 32 (no known Stable Diffusion family) |", "| steps | 2 |", "![samples](sample-grid.png)", "at step 2.",
                'pipe.load_textual_inversion("me/my-dog")',
                f'textinv generate --embedding me/my-dog --model {sd1_dir.name} --prompt',
                f"(`{sd1_dir.name}`: the path of your copy)",
                "save `learned_embeds.safetensors` in the embeddings folder as `my-dog.safetensors` and write `my-dog`"):
        assert row in body, row
    assert str(tmp_path) not in card  # (no local path of the author's)
    # what was published reads back by its hub id, as diffusers' load_textual_inversion("me/my-dog") reads it
    cache_repo(hub_cache, "me/my-dog", api.files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_embedding("me/my-dog").vectors["text_encoder"],
                           load_embedding(run).vectors["text_encoder"])


def test_push_names_a_file_not_named_for_diffusers_in_the_cards_snippets(tmp_path, fake_hub):
    from textinv.hub import push

    emb = LearnedEmbedding("<q>", {"text_encoder": torch.zeros(2, 768)},
                           {"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "steps": "500"})
    (file,) = save_embedding(emb, tmp_path / "q.pt", format="a1111")
    assert push(file, "me/q") == "https://huggingface.co/me/q"
    files = fake_hub[0].files
    assert sorted(files) == ["README.md", "q.pt", "token_identifier.txt"]  # (no run: no grid, no concept type)
    card = files["README.md"].decode()
    front = card.split("---\n")[1]
    assert front.startswith("base_model: stable-diffusion-v1-5/stable-diffusion-v1-5\n")
    assert "- textual_inversion\n- stable-diffusion\n- stable-diffusion-diffusers\n" in front
    assert "| family | Stable Diffusion 1.x |" in card
    assert 'pipe.load_textual_inversion("me/q", weight_name="q.pt")' in card
    assert "textinv generate --embedding me/q/q.pt --model stable-diffusion-v1-5/stable-diffusion-v1-5" in card
    assert "| token | `<q>` (2 vectors) |" in card and "put `q.pt` in the embeddings folder and write `q` in" in card


def test_push_refuses_bad_input_before_the_hub_is_asked(tmp_path, fake_hub, capsys):
    (file,) = save_embedding(concept("<q>"), tmp_path / "learned_embeds.safetensors")
    for argv, said in ((["push", str(file)], "--repo OWNER/NAME is required"),
                       (["push", str(file), "--repo", "me"], "--repo 'me' is not a hub repo id: give OWNER/NAME"),
                       (["push", str(tmp_path / "nothing"), "--repo", "me/q"], "nothing: no such file or folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert not fake_hub


def test_push_offline_is_one_line_and_publishes_nothing(tmp_path, hub_cache, capsys):
    """The real HfApi, with HF_HUB_OFFLINE: said in one line, not huggingface_hub's traceback."""
    (file,) = save_embedding(concept("<q>"), tmp_path / "learned_embeds.safetensors")
    assert main(["push", str(file), "--repo", "me/q", "--hub-token", "hf_x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textinv push: error: --repo me/q: the Hugging Face hub could not be reached "
                          "(HF_HUB_OFFLINE is set)") and err.count("\n") == 1, err


@pytest.mark.parametrize("source, repo, said", [
    ("missing", "me/q", "{tmp}/missing: no such file or folder: give a training run's --out folder or an embedding file"),
    ("learned_embeds.safetensors", "q", "--repo 'q' is not a hub repo id: give OWNER/NAME, e.g. your-name/my-dog"),
])
def test_push_offline_names_a_wrong_source_or_repo_first(source, repo, said, tmp_path, hub_cache, capsys):
    """What the command line alone tells is said before the hub is asked: offline, a path that is not there and a
    repo that is no OWNER/NAME were "the hub could not be reached", which a network would not have mended."""
    save_embedding(concept("<q>"), tmp_path / "learned_embeds.safetensors")
    assert main(["push", str(tmp_path / source), "--repo", repo]) == 2
    assert capsys.readouterr().err == f"textinv push: error: {said.format(tmp=tmp_path)}\n"
    with pytest.raises(ConfigError, match=re.escape(said.format(tmp=tmp_path).replace("--repo 'q'", "repo='q'"))):
        push(tmp_path / source, repo)  # (from Python: the keyword)


def test_push_with_no_route_to_the_hub_is_one_line_and_publishes_nothing(tmp_path, fake_hub, monkeypatch, capsys):
    """No network and no HF_HUB_OFFLINE: huggingface_hub lets its HTTP library's own error through (httpx's
    ConnectError, which is no OSError), said in one line as the offline case is, not as a traceback."""
    from huggingface_hub.errors import HfHubHTTPError

    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__)  # (httpx's errors, as huggingface_hub's)

    def no_route(self, repo_id, **kwargs):
        raise http.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(FakeHfApi, "create_repo", no_route)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (file,) = save_embedding(concept("<q>"), tmp_path / "learned_embeds.safetensors")
    assert main(["push", str(file), "--repo", "me/q", "--hub-token", "hf_x"]) == 2
    err = capsys.readouterr().err
    assert err == ("textinv push: error: --repo me/q: the Hugging Face hub could not be reached (ConnectError); "
                   "nothing was published: run it again with a network\n"), err
    assert fake_hub[0].files == {}


@pytest.mark.parametrize("offline", [True, False])
def test_push_with_the_hub_unreachable_says_so_at_once_in_one_try(offline, tmp_path, monkeypatch, capsys):
    """The real HfApi with no route to the hub (each HTTP request counted): one request with a timeout (HfApi's have
    none), none with HF_HUB_OFFLINE, and said before the embedding is read (reading it and writing the card import
    torch and diffusers: the push took half a minute on a busy machine to say it could not publish)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    from textinv import formats

    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__)  # (huggingface_hub's HTTP library)
    tried = []

    def no_route(self, request):
        tried.append((request.method, request.extensions.get("timeout", {}).get("connect")))
        raise http.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(http.HTTPTransport, "handle_request", no_route)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    (file,) = save_embedding(concept("<q>"), tmp_path / "learned_embeds.safetensors")
    read, reader = [], formats.read_embedding
    monkeypatch.setattr(formats, "read_embedding", lambda *args, **kwargs: read.append(args) or reader(*args, **kwargs))
    assert main(["push", str(file), "--repo", "me/q", "--hub-token", "hf_x"]) == 2
    why = "(HF_HUB_OFFLINE is set) (OfflineModeIsEnabled)" if offline else "(ConnectError)"
    assert capsys.readouterr().err == (f"textinv push: error: --repo me/q: the Hugging Face hub could not be reached "
                                       f"{why}; nothing was published: run it again with a network\n")
    assert tried == ([] if offline else [("HEAD", constants.HF_HUB_ETAG_TIMEOUT)])
    assert not read


def test_the_card_says_how_many_caption_tokens_training_read_when_not_75():
    """A run with --max-token-length 150 or 225 records it in the embedding; the card says so (the web UI and
    ComfyUI read long prompts otherwise), and a run at the default says nothing."""
    from textinv.hub import model_card

    vectors = {"text_encoder": torch.zeros(1, 768)}
    files = ["learned_embeds.safetensors"]
    long = model_card(LearnedEmbedding("<q>", vectors, {"max_token_length": "225"}), "me/q", files)
    plain = model_card(LearnedEmbedding("<q>", vectors), "me/q", files)
    assert "| caption tokens read | 225 |" in long and "caption tokens" not in plain
