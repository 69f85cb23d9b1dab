"""`textinv score`: the paper's CLIP measures of an embedding, on tiny random SD and CLIP models built in code."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from textinv.cli import main
from textinv.config import TrainConfig
from textinv.data import find_images, load_image
from textinv.errors import ConfigError, DataError, FormatError, ModelError
from textinv.models import load_model
from textinv.score import (EDITS, ClipJudge, ScoreConfig, _template, concept_similarity, run_settings, score,
                           scored_text, training_similarity)
from textinv.tiny import save_tiny_clip
from textinv.train import train

from conftest import write_images


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def judge(clip_dir):
    return ClipJudge.load(str(clip_dir))


@pytest.fixture(scope="module")
def run_dir(sd1_dir, tmp_path_factory):
    """A finished training run on the tiny SD 1.x model: config.yaml, loss.csv, learned_embeds.safetensors."""
    root = tmp_path_factory.mktemp("score-run")
    images = write_images(root / "images", n=3)
    train(TrainConfig(images=str(images), token="<zq>", init="dog", model=str(sd1_dir), out=str(root / "run"),
                      steps=4, batch=2, save_every=0, sample_every=0, log_every=1, lr=5e-2), progress=False)
    return root / "run"


def settings(run_dir, clip_dir, out, **kw):
    return ScoreConfig(**{**dict(embedding=str(run_dir), clip=str(clip_dir), out=str(out), n=2, steps=2), **kw})


def _reference_features(clip_dir, pictures):
    """CLIP image features by transformers' own entry point (not the judge's code), unnormalised."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    pixels = CLIPImageProcessor.from_pretrained(str(clip_dir))(images=pictures, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_scored_text_leaves_the_concept_out_and_templates_take_the_token():
    assert scored_text("a photo of {} on a sandy beach") == "a photo of on a sandy beach"
    assert scored_text("{} floating in outer space") == "floating in outer space"
    assert scored_text("an (oil:1.2) painting of {}, detailed") == "an oil painting of, detailed"
    assert _template("a photo of <zq> in snow", "<zq>") == "a photo of {} in snow"
    with pytest.raises(ConfigError, match="where the concept goes"):
        _template("a photo of a dog", "<zq>")
    assert all("{}" in t for kind in EDITS.values() for t in kind)


def test_similarities_are_the_mean_cosine_over_pairs(clip_dir, judge, tmp_path):
    pictures = [load_image(p) for p in find_images(write_images(tmp_path / "a", n=3, seed=1))]
    others = [load_image(p) for p in find_images(write_images(tmp_path / "b", n=2, seed=2))]
    ref = _reference_features(clip_dir, pictures + others)
    train_ref, drawn_ref = ref[:3], ref[3:]
    got = concept_similarity(judge.images(others), judge.images(pictures))
    for i in range(2):
        want = sum(torch.cosine_similarity(drawn_ref[i], t, dim=0) for t in train_ref) / 3
        assert got[i].item() == pytest.approx(want.item(), abs=1e-5)
    pairs = [torch.cosine_similarity(train_ref[i], train_ref[j], dim=0).item()
             for i in range(3) for j in range(3) if i != j]
    assert training_similarity(judge.images(pictures)) == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    assert training_similarity(judge.images(pictures[:1])) is None


def test_score_reports_what_its_pictures_show(run_dir, clip_dir, judge, sd1_dir, tmp_path):
    out = tmp_path / "report"
    result = score(settings(run_dir, clip_dir, out, description="a red square"), judge=judge, progress=False)
    report = json.loads(result.scores.read_text())
    assert [m["name"] for m in report["methods"]] == ["textual inversion", "init word", "description"]
    assert [m["words"] for m in report["methods"]] == ["<zq>", "dog", "a red square"]  # the init word: the run's
    assert result.html.is_file() and Image.open(result.png).size[0] >= 900
    assert report["seeds"] == [0, 1] and report["settings"]["property"] == "object"
    assert len(report["loss"]) == 4  # the run's loss curve, from its loss.csv
    training = judge.images([load_image(p) for p in find_images(report["images"])])
    html = result.html.read_text()
    for m in report["methods"]:
        assert len(m["prompts"]) == 1 + len(EDITS["object"])
        for row in m["prompts"]:
            assert row["prompt"].startswith(("a photo of", "an oil", "a pencil", row["prompt"][:3]))
            assert len(row["files"]) == 2
            drawn = judge.images([Image.open(out / f) for f in row["files"]])  # the saved pictures, judged again
            assert row["concept"] == pytest.approx(concept_similarity(drawn, training).tolist(), abs=1e-3)
            text = judge.texts([row["scored_text"]])[0]
            assert row["text"] == pytest.approx((drawn @ text).tolist(), abs=1e-3)
            assert all(f in html for f in row["files"])
        recon = m["prompts"][0]
        assert m["reconstruction"] == pytest.approx(sum(recon["concept"]) / 2, abs=1e-3)
        edits = [v for row in m["prompts"][1:] for v in row["text"]]
        assert m["editability"] == pytest.approx(sum(edits) / len(edits), abs=1e-3)
    # same seeds for every method: the init word's pictures are the ones `generate` draws from its prompt
    from textinv.generate import render

    model = load_model(str(sd1_dir))
    again = render(model, ["a photo of dog"], [1], steps=2)[0]
    first = Image.open(out / report["methods"][1]["prompts"][0]["files"][1])
    assert list(again.getdata()) == list(first.convert("RGB").getdata())
    # the learned token draws other pictures than its init word at the same seeds
    ti = Image.open(out / report["methods"][0]["prompts"][0]["files"][1])
    assert list(ti.convert("RGB").getdata()) != list(first.convert("RGB").getdata())


def test_a_rerun_replaces_the_report_only_when_complete(run_dir, clip_dir, judge, tmp_path, monkeypatch):
    out = tmp_path / "report"
    score(settings(run_dir, clip_dir, out, init="none"), judge=judge, progress=False)
    first = (out / "scores.json").read_text()
    assert [m["name"] for m in json.loads(first)["methods"]] == ["textual inversion"]

    def broken(texts):
        raise RuntimeError("killed while judging")

    monkeypatch.setattr(judge, "texts", broken)
    with pytest.raises(RuntimeError, match="killed"):
        score(settings(run_dir, clip_dir, out, n=1), judge=judge, progress=False)
    assert (out / "scores.json").read_text() == first  # the last report stands
    monkeypatch.undo()
    score(settings(run_dir, clip_dir, out, n=1, init="none"), judge=judge, progress=False)
    report = json.loads((out / "scores.json").read_text())
    assert report["seeds"] == [0] and len(list((out / "pictures").rglob("*.png"))) == 1 + len(EDITS["object"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no half-built or set-aside folder is left


def test_running_out_of_memory_while_drawing_says_so_and_keeps_the_last_report(run_dir, clip_dir, judge, tmp_path,
                                                                               monkeypatch):
    from conftest import out_of_memory_at
    from textinv.errors import DeviceMemoryError

    out = tmp_path / "report"
    score(settings(run_dir, clip_dir, out, init="none", n=1), judge=judge, progress=False)
    first = (out / "scores.json").read_text()
    undo, seen = out_of_memory_at(monkeypatch, 3)
    with pytest.raises(DeviceMemoryError) as info:
        score(settings(run_dir, clip_dir, out, n=3), judge=judge, progress=False)
    undo()
    assert str(info.value) == (
        "out of memory on cpu drawing the report's pictures (3 at once at 16x16): torch tried to allocate 2.00 GiB "
        "more. Settings that need less memory, from the one that changes the scores least: precision='fp16'; "
        f"resolution=8 (other pictures, and scores not comparable with a report at 16). No report was written; "
        f"{out} is left as it was")
    assert seen[-1]() is None and (out / "scores.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_report_moved_aside_by_a_killed_swap_is_put_back(run_dir, clip_dir, judge, tmp_path, monkeypatch):
    out = tmp_path / "report"
    score(settings(run_dir, clip_dir, out, init="none", n=1), judge=judge, progress=False)
    first = (out / "scores.json").read_text()
    out.rename(tmp_path / ".report.previous")  # killed between the two renames of the swap
    monkeypatch.setattr(judge, "texts", lambda texts: 1 / 0)  # the next run fails after it has started
    with pytest.raises(ZeroDivisionError):
        score(settings(run_dir, clip_dir, out, n=2), judge=judge, progress=False)
    assert (out / "scores.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def _lone_copy(run_dir, tmp_path):
    """The run's embedding file alone, away from its config.yaml."""
    import shutil

    lone = tmp_path / "lone" / "zq.safetensors"
    lone.parent.mkdir()
    shutil.copy(run_dir / "learned_embeds.safetensors", lone)
    return lone


def test_bad_input_is_refused_before_anything_is_drawn(run_dir, clip_dir, judge, tmp_path, monkeypatch):
    lone = _lone_copy(run_dir, tmp_path)
    with pytest.raises(ConfigError, match="images= is required"):
        score(ScoreConfig(embedding=str(lone), clip=str(clip_dir), out=str(tmp_path / "o")), judge=judge)
    with pytest.raises(ConfigError, match="embedding=.* does not exist"):
        score(ScoreConfig(embedding=str(tmp_path / "nope.pt")), judge=judge)
    with pytest.raises(ConfigError, match="no {} and no <zq>"):
        score(settings(run_dir, clip_dir, tmp_path / "o", prompts=["a dog on a beach"]), judge=judge)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a score report"):
        score(settings(run_dir, clip_dir, busy), judge=judge)
    assert (busy / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="n= must be"):
        score(settings(run_dir, clip_dir, tmp_path / "o", n=0), judge=judge)
    with pytest.raises(ConfigError, match="sampler='pndm' is not one of"):
        score(settings(run_dir, clip_dir, tmp_path / "o", sampler="pndm"), judge=judge)


def test_an_unreachable_clip_model_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="^clip='openai/clip-vit-base-patch32'.*pass clip= a local folder"):
        ClipJudge.load("openai/clip-vit-base-patch32")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelError, match="could not be loaded as a CLIP model"):
        ClipJudge.load(str(tmp_path / "junk"))
    with pytest.raises(ModelError, match="no-clip does not exist; check the path"):  # not "not in the cache"
        ClipJudge.load(str(tmp_path / "no-clip"))


def test_an_unreachable_hub_is_said_at_once_without_retry_noise(hub_cache, monkeypatch, capfd, caplog):
    """Without HF_HUB_OFFLINE and without a network, `textinv score` (default --clip, a hub id) printed ten
    "thrown while requesting HEAD ... Retrying in 8s" lines and took about 50 s to say the hub could not be
    reached. A hub that refuses the connection (a closed local port) stands in for no network. huggingface_hub
    reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import, so its constants are set as they would set them (in a
    subprocess of its own, the import of torch and the libraries was all of this test's time: 9 s idle)."""
    from huggingface_hub import constants

    endpoint = "http://127.0.0.1:9"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(ModelError, match="could not be reached"):
        ClipJudge.load("openai/clip-vit-base-patch32")
    said = capfd.readouterr().err + caplog.text  # (huggingface_hub's log goes to the stderr it found at import)
    assert "Retrying" not in said, said  # each retry waited seconds: none is the speed asked for


def test_one_concept_of_a_run_of_several_finds_its_pictures_and_loss(sd1_dir, clip_dir, judge, tmp_path):
    a, b = write_images(tmp_path / "a", n=2, seed=3), write_images(tmp_path / "b", n=2, seed=4)
    run = tmp_path / "pets"
    train(TrainConfig(concepts=[f"{a}=<aa>=cat", f"{b}=<bb>=dog"], model=str(sd1_dir), out=str(run), steps=2,
                      batch=1, save_every=0, sample_every=0, log_every=1), progress=False)
    folder = next(p for p in run.iterdir() if p.is_dir() and "bb" in p.name)
    found = run_settings(folder, "<bb>")
    assert found["images"] == str(b) and found["init"] == "dog" and found["loss_column"] == "<bb>"
    result = score(ScoreConfig(embedding=str(folder), clip=str(clip_dir), out=str(tmp_path / "o"), n=1, steps=1,
                               prompts=["<bb> on a table"]), judge=judge, progress=False)
    report = result.report
    assert report["images"] == str(b) and len(report["loss"]) == 2
    assert [r["prompt"] for r in report["methods"][1]["prompts"]] == ["a photo of dog", "dog on a table"]


def test_the_command_line_prints_the_table(run_dir, clip_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["score", "--embedding", str(run_dir), "--clip", str(clip_dir), "-n", "1", "--steps", "1",
                 "--out", str(out), "--property", "style"]) == 0
    printed = capsys.readouterr().out
    assert "reconstruction" in printed and "<zq>" in printed and "init word 'dog'" in printed
    report = json.loads((out / "scores.json").read_text())
    assert report["methods"][0]["prompts"][1]["prompt"] == EDITS["style"][0].replace("{}", "<zq>")
    assert main(["score", "--embedding", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    assert main(["score", "--embedding", str(run_dir), "--clip", str(tmp_path / "no-clip"), "--out",
                 str(tmp_path / "o")]) == 2
    assert f"--clip '{tmp_path / 'no-clip'}': the folder" in capsys.readouterr().err  # (from Python: clip='...')


# ---------------------------------------------------------------------------------------------------------------
# found in review


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    from textinv.tiny import build_tiny_xl_pipeline

    path = tmp_path_factory.mktemp("tiny-xl")
    build_tiny_xl_pipeline().save_pretrained(path)
    return path


def _train(model_dir, images, out, **kw):
    train(TrainConfig(**{**dict(images=images and str(images), token="<zq>", init="dog", model=str(model_dir),
                                out=str(out), steps=1, batch=1, save_every=0, sample_every=0, log_every=1), **kw}),
          progress=False)
    return out


def _quick(embedding, clip_dir, out, **kw):
    return ScoreConfig(**{**dict(embedding=str(embedding), clip=str(clip_dir), out=str(out), n=1, steps=1,
                                 prompts=["{} on a table"]), **kw})


def test_a_run_folder_is_read_whatever_format_its_run_saved(sd1_dir, xl_dir, clip_dir, judge, tmp_path):
    images = write_images(tmp_path / "images", n=2)
    a1111 = _train(sd1_dir, images, tmp_path / "a1111", format="a1111")  # zq.pt, no learned_embeds.*
    report = score(_quick(a1111, clip_dir, tmp_path / "o1"), judge=judge, progress=False).report
    assert report["embedding"]["token"] == "<zq>" and report["images"] == str(images)
    xl = _train(xl_dir, images, tmp_path / "xl")  # SDXL's default: one zq.safetensors (clip_l + clip_g)
    report = score(_quick(xl, clip_dir, tmp_path / "o2"), judge=judge, progress=False).report
    assert report["embedding"]["vectors"] == 1 and [m["words"] for m in report["methods"]] == ["<zq>", "dog"]
    pair = _train(xl_dir, images, tmp_path / "pair", format="diffusers")  # learned_embeds + learned_embeds_2
    report = score(_quick(pair / "learned_embeds_2.safetensors", clip_dir, tmp_path / "o3"), judge=judge,
                   progress=False).report  # the second half names the pair
    assert report["embedding"]["token"] == "<zq>" and report["images"] == str(images)
    several = tmp_path / "pets"
    train(TrainConfig(concepts=[f"{images}=<aa>", f"{images}=<bb>"], model=str(sd1_dir), out=str(several),
                      steps=1, batch=1, save_every=0, sample_every=0, log_every=1), progress=False)
    with pytest.raises(ConfigError, match=r"run of 2 concepts.*pets/aa, .*pets/bb"):
        score(_quick(several, clip_dir, tmp_path / "o4"), judge=judge, progress=False)


def test_a_run_started_from_an_embedding_file_has_no_init_word(sd1_dir, clip_dir, judge, tmp_path):
    images = write_images(tmp_path / "images", n=2)
    first = _train(sd1_dir, images, tmp_path / "first")
    again = _train(sd1_dir, images, tmp_path / "again", init=None,
                   init_embedding=str(first / "learned_embeds.safetensors"))
    found = run_settings(again, "<zq>")
    assert found["init"].startswith("embedding ")  # not the --property word its config's concept list says
    report = score(_quick(again, clip_dir, tmp_path / "o"), judge=judge, progress=False).report
    assert [m["name"] for m in report["methods"]] == ["textual inversion"]


def test_token_renames_an_embedding_whose_name_the_tokenizer_knows(run_dir, sd1_dir, clip_dir, judge, tmp_path):
    from textinv.errors import TokenError
    from textinv.formats import LearnedEmbedding, load_embedding, save_embedding

    emb = load_embedding(run_dir)
    save_embedding(LearnedEmbedding("dog", emb.vectors), tmp_path / "dog.pt", "a1111")  # an A1111 file named 'dog'
    base = dict(images=str(run_dir.parent / "images"), model=str(sd1_dir), prompts=["a photo of {}"])
    with pytest.raises(TokenError, match=r"with token=\)"):
        score(_quick(tmp_path / "dog.pt", clip_dir, tmp_path / "o", **base), judge=judge, progress=False)
    report = score(_quick(tmp_path / "dog.pt", clip_dir, tmp_path / "o", token="<dg>", **base), judge=judge,
                   progress=False).report
    assert report["methods"][0]["words"] == "<dg>"
    with pytest.raises(ConfigError, match="token='my dog' must be one word"):
        ScoreConfig(embedding=str(tmp_path / "dog.pt"), token="my dog").validate()


def test_out_is_never_the_folder_the_command_runs_in(run_dir, clip_dir, judge, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "./", str(here), ".."):
        with pytest.raises(ConfigError, match="folder you are in"):
            score(_quick(run_dir, clip_dir, out), judge=judge, progress=False)
    score(_quick(run_dir, clip_dir, "report/", init="none"), judge=judge, progress=False)  # a trailing slash
    assert (here / "report" / "scores.json").is_file() and sorted(p.name for p in here.iterdir()) == ["report"]


def test_a_report_folder_with_a_users_file_in_it_is_not_replaced(run_dir, clip_dir, judge, tmp_path):
    out = tmp_path / "report"
    score(_quick(run_dir, clip_dir, out, init="none"), judge=judge, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / ".DS_Store").write_text("")  # a file browser's litter goes with the report
    with pytest.raises(ConfigError, match="more than a score report.*notes.txt"):
        score(_quick(run_dir, clip_dir, out, init="none"), judge=judge, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_load_leaves_no_half_built_report(run_dir, clip_dir, tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelError, match="could not be loaded as a CLIP model"):
        score(_quick(run_dir, tmp_path / "junk", tmp_path / "reports" / "report"), progress=False)
    assert list((tmp_path / "reports").iterdir()) == []  # no .report.partial


def test_prompts_take_the_token_in_any_case_and_score_the_text_drawn_last():
    assert _template("a photo of <ZQ> in snow", "<zq>") == "a photo of {} in snow"
    assert _template("<a{}b> on a table", "<a{}b>") == "{} on a table"  # a token holding {} is not cut in two
    assert scored_text("[a photo of {}:an oil painting of {}:0.5]") == "an oil painting of"
    assert scored_text("a photo of {} [:in the snow:3]") == "a photo of in the snow"
    assert scored_text("a photo of {} BREAK on a beach") == "a photo of on a beach"
    with pytest.raises(ConfigError, match="not text"):
        ScoreConfig(embedding=".", prompts=[{}]).validate()  # YAML's `- {}`


def test_the_runs_model_is_loaded_as_the_run_loaded_it(run_dir, clip_dir, judge, sd1_dir, tmp_path, monkeypatch):
    import textinv.score as score_module

    images = write_images(tmp_path / "images", n=2)
    run = _train(sd1_dir, images, tmp_path / "v", prediction_type="v_prediction")
    seen = []

    def spy(source, **kw):
        seen.append(kw)
        return load_model(source, **kw)

    monkeypatch.setattr(score_module, "load_model", spy)
    score(_quick(run, clip_dir, tmp_path / "o"), judge=judge, progress=False)
    assert seen[-1]["prediction_type"] == "v_prediction"
    score(_quick(run, clip_dir, tmp_path / "o", model=str(sd1_dir)), judge=judge, progress=False)
    assert seen[-1]["prediction_type"] is None  # another --model: the run's settings are not its


def test_a_hub_models_revision_and_variant_are_the_runs_or_the_embeddings_and_in_the_report(hub_cache, clip_dir,
                                                                                              judge, tmp_path,
                                                                                              monkeypatch):
    """A run on a hub id's branch is scored on that branch (from its config.yaml, or from the embedding's metadata
    for the file alone), and the report's settings name the revision and variant it was drawn with."""
    import shutil

    import textinv.score as score_module
    from conftest import cache_branch, cache_snapshot
    from textinv.tiny import build_tiny_pipeline

    build_tiny_pipeline("sd1", seed=4).save_pretrained(cache_snapshot(hub_cache, "me/old"))
    build_tiny_pipeline("sd1", seed=5).to(torch.float16).save_pretrained(cache_branch(hub_cache, "me/old", "v1"),
                                                                         variant="fp16")
    run = _train("me/old", write_images(tmp_path / "images", n=2), tmp_path / "run", revision="v1", variant="fp16")
    seen = []

    def spy(source, **kw):
        seen.append(kw)
        return load_model(source, **kw)

    monkeypatch.setattr(score_module, "load_model", spy)
    report = score(_quick(run, clip_dir, tmp_path / "o"), judge=judge, progress=False).report
    assert seen[-1]["revision"] == "v1" and seen[-1]["variant"] == "fp16"
    assert report["settings"]["revision"] == "v1" and report["settings"]["variant"] == "fp16"
    (tmp_path / "alone").mkdir()
    alone = shutil.copy(run / "learned_embeds.safetensors", tmp_path / "alone")
    score(_quick(alone, clip_dir, tmp_path / "o2", images=str(tmp_path / "images")), judge=judge, progress=False)
    assert seen[-1]["revision"] == "v1" and seen[-1]["variant"] == "fp16"


def test_a_run_whose_pictures_moved_says_so(run_dir, clip_dir, judge, sd1_dir, tmp_path):
    import shutil

    images = write_images(tmp_path / "images", n=2)
    run = _train(sd1_dir, images, tmp_path / "run")
    shutil.rmtree(images)
    with pytest.raises(DataError, match=r"config.yaml names; pass images= where they are now\)"):
        score(_quick(run, clip_dir, tmp_path / "o"), judge=judge, progress=False)


def test_a_run_of_kohya_subsets_is_scored_against_their_pictures(sd1_dir, clip_dir, judge, tmp_path):
    """A run trained from --dataset-config keeps its pictures as `subsets` in config.yaml, not `images`: score
    finds them there, each picture once, as it finds a folder's."""
    a, b = write_images(tmp_path / "a", n=2, seed=3), write_images(tmp_path / "b", n=1, seed=4)
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{a}"\nnum_repeats = 3\n'
                       f'[[datasets.subsets]]\nimage_dir = "{b}"\n')
    run = _train(sd1_dir, None, tmp_path / "run", dataset_config=str(dataset))
    report = score(_quick(run, clip_dir, tmp_path / "o"), judge=judge, progress=False).report
    assert report["images"] == f"{a}, {b}" and len(report["training_files"]) == 3


def test_pictures_are_judged_as_drawn_and_the_sheet_keeps_thumbnails(run_dir, clip_dir, judge, tmp_path,
                                                                       monkeypatch):
    import textinv.score as score_module

    kept = {}
    real = score_module.draw_sheet

    def spy(report, pictures, drawn, loss_png):
        kept.update(drawn)
        return real(report, pictures, drawn, loss_png)

    monkeypatch.setattr(score_module, "draw_sheet", spy)
    result = score(_quick(run_dir, clip_dir, tmp_path / "o", n=9, init="none"), judge=judge, progress=False)
    assert all(len(v) == score_module.SHEET_PICTURES for v in kept.values())  # not all 9 held to the end
    assert all(len(r["files"]) == len(r["concept"]) == 9 for r in result.report["methods"][0]["prompts"])


def test_thumbnails_crop_rather_than_squash():
    from textinv.score import THUMB, _thumb

    wide = Image.new("RGB", (3 * THUMB, THUMB), (200, 0, 0))
    wide.paste((0, 200, 0), (THUMB, 0, 2 * THUMB, THUMB))  # green middle third
    assert _thumb(wide).getpixel((2, THUMB // 2)) == (0, 200, 0)


def test_compare_scores_each_step_beside_the_embedding_at_the_same_seeds(sd1_dir, clip_dir, judge, tmp_path):
    images = write_images(tmp_path / "images", n=2)
    run = tmp_path / "run"
    train(TrainConfig(images=str(images), token="<zq>", init="dog", model=str(sd1_dir), out=str(run), steps=4,
                      batch=1, save_every=2, sample_every=0, log_every=1, lr=5e-2), progress=False)
    steps = sorted((run / "embeddings").iterdir())
    assert [p.name for p in steps] == ["learned_embeds-steps-2.safetensors", "learned_embeds-steps-4.safetensors"]
    result = score(settings(run, clip_dir, tmp_path / "o", n=1, steps=1, init="none",
                            compare=[str(p) for p in steps]), judge=judge, progress=False)
    methods = result.report["methods"]
    assert [m["label"] for m in methods] == ["<zq>", "learned_embeds-steps-2.safetensors (step 2)",
                                            "learned_embeds-steps-4.safetensors (step 4)"]
    files = [Image.open(tmp_path / "o" / m["prompts"][0]["files"][0]).convert("RGB") for m in methods]
    assert list(files[2].getdata()) == list(files[0].getdata())  # step 4 is the run's result: the same picture
    assert list(files[1].getdata()) != list(files[0].getdata())  # step 2 is not
    assert methods[2]["reconstruction"] == methods[0]["reconstruction"]
    from textinv.score import format_table

    table = format_table(result.report)
    assert all(m["label"] in table.splitlines()[k + 1] for k, m in enumerate(methods))  # whole, however long
    best = max(methods, key=lambda m: m["editability"])["label"]
    assert f"best editability: {best}" in table and "best reconstruction: " in table
    folder = score(settings(run, clip_dir, tmp_path / "o2", n=1, steps=1, init="none",
                            compare=[str(run / "embeddings")]), judge=judge, progress=False)  # the folder: its files
    assert [m["label"] for m in folder.report["methods"]] == [m["label"] for m in methods]
    with pytest.raises(ConfigError, match="compare=.* does not exist"):
        score(settings(run, clip_dir, tmp_path / "o", compare=[str(tmp_path / "none.pt")]), judge=judge)


def _a1111_copies(folder, vectors, token, names):
    """The same vectors saved as A1111 .pt files under `names` (A1111 reads a file's token from its 'name')."""
    from textinv.formats import LearnedEmbedding, save_embedding

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        save_embedding(LearnedEmbedding(token, {"text_encoder": vectors}, {"steps": "4"}), folder / name,
                       format="a1111")
    return [folder / name for name in names]


def _first_pictures(result, out):
    return [list(Image.open(out / m["prompts"][0]["files"][0]).convert("RGB").getdata())
            for m in result.report["methods"]]


def test_compare_tokens_do_not_hold_the_scored_token(sd1_dir, clip_dir, judge, tmp_path):
    """A web UI run: 'zqdogx.pt' (token 'zqdogx', no brackets, 2 vectors) and its step file 'zqdogx-4.pt'. The step
    file's token must not hold 'zqdogx', or the prompt expansion (and the tokenizer) read the scored token inside
    it and the step's pictures are the scored embedding's with stray characters: the same vectors must draw the
    same pictures."""
    images = write_images(tmp_path / "images", n=2)
    vectors = torch.randn(2, load_model(sd1_dir).widths[0]) * 0.02
    main, step = _a1111_copies(tmp_path / "emb", vectors, "zqdogx", ["zqdogx.pt", "zqdogx-4.pt"])
    out = tmp_path / "o"
    result = score(settings(main, clip_dir, out, n=1, steps=1, init="none", images=str(images), model=str(sd1_dir),
                            compare=[str(step)]), judge=judge, progress=False)
    first, other = _first_pictures(result, out)
    assert other == first
    assert "zqdogx" not in result.report["compared"][0]["token"]


def test_compare_files_named_with_spaces_or_brackets_are_drawn_with_their_vectors(sd1_dir, clip_dir, judge,
                                                                                  tmp_path):
    """A space cannot be in a token, and brackets are emphasis to the prompt parser: 'zq (copy).pt' was refused
    after the model loaded, 'zq[4].pt' drawn without its vectors at all."""
    images = write_images(tmp_path / "images", n=2)
    vectors = torch.randn(1, load_model(sd1_dir).widths[0]) * 0.02
    main, spaced, bracketed = _a1111_copies(tmp_path / "emb", vectors, "<zq>",
                                            ["zq.pt", "zq (copy).pt", "zq[4].pt"])
    out = tmp_path / "o"
    result = score(settings(main, clip_dir, out, n=1, steps=1, init="none", images=str(images), model=str(sd1_dir),
                            compare=[str(spaced), str(bracketed)]), judge=judge, progress=False)
    assert [m["label"] for m in result.report["methods"]][1:] == ["zq (copy).pt (step 4)", "zq[4].pt (step 4)"]
    first, *others = _first_pictures(result, out)
    assert all(o == first for o in others)


def test_compare_reads_each_embedding_once_and_names_files_of_one_name_apart(tmp_path):
    """`--compare run/embeddings/*` of a diffusers-sdxl run gives both files of each step's pair (each reads the
    pair), and a file given twice is the same embedding: each is scored once. Files of one name from two runs are
    labelled by their folders."""
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.score import _compared, _methods

    def xl(seed, steps):
        g = torch.Generator().manual_seed(seed)
        return LearnedEmbedding("<zq>", {"text_encoder": torch.randn(1, 768, generator=g),
                                         "text_encoder_2": torch.randn(1, 1280, generator=g)}, {"steps": steps})

    emb = xl(0, "4")
    steps = tmp_path / "run" / "embeddings"
    for k in (2, 4):
        save_embedding(xl(k, str(k)), steps / f"learned_embeds-steps-{k}.safetensors", format="diffusers-sdxl")
    for run in ("a", "b"):
        save_embedding(xl(5, "4"), tmp_path / run / "learned_embeds.safetensors", format="diffusers-sdxl")
    given = sorted(str(p) for p in steps.iterdir())  # the first and the second file of each step
    assert len(given) == 4
    found = _compared(given + [given[0]], emb)
    assert [Path(p).name for _, p in found] == ["learned_embeds-steps-2.safetensors",
                                                "learned_embeds-steps-4.safetensors"]
    found = _compared([str(tmp_path / run / "learned_embeds.safetensors") for run in ("a", "b")], emb)
    labels = [m["label"] for m in _methods(ScoreConfig(embedding=str(tmp_path), init="none"), emb, {}, found)]
    assert labels[1:] == ["a/learned_embeds.safetensors (step 4)", "b/learned_embeds.safetensors (step 4)"]


def test_a_compared_embedding_that_cannot_be_installed_leaves_the_model_as_it_was(sd1_dir, clip_dir, judge,
                                                                                 tmp_path, monkeypatch):
    import textinv.score as score_module
    from textinv.errors import TokenError

    model = load_model(sd1_dir)
    size = len(model.encoders[0][1])
    real, calls = score_module.install_embedding, []

    def second_fails(m, e):
        calls.append(e.token)
        if len(calls) == 2:
            raise TokenError(f"cannot add embedding {e.token!r}")
        real(m, e)

    monkeypatch.setattr(score_module, "install_embedding", second_fails)
    images = write_images(tmp_path / "images", n=2)
    main, other = _a1111_copies(tmp_path / "emb", torch.randn(1, model.widths[0]) * 0.02, "<zq>",
                                ["zq.pt", "zq-4.pt"])
    with pytest.raises(TokenError):
        score(settings(main, clip_dir, tmp_path / "o", n=1, steps=1, init="none", images=str(images),
                       model=str(sd1_dir), compare=[str(other)]), model=model, judge=judge, progress=False)
    assert len(model.encoders[0][1]) == size and not hasattr(model, "_pristine")


def test_a_compare_folder_gives_its_files_in_step_order(tmp_path):
    from textinv.score import _expand_folders

    steps = tmp_path / "embeddings"
    steps.mkdir()
    for n in (1000, 500, 1500):
        (steps / f"learned_embeds-steps-{n}.safetensors").write_bytes(b"x")
    (steps / "notes.txt").write_text("not an embedding")
    assert [Path(p).name for p, _ in _expand_folders([str(steps)])] == [
        "learned_embeds-steps-500.safetensors", "learned_embeds-steps-1000.safetensors",
        "learned_embeds-steps-1500.safetensors"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="folder without embedding files"):
        _expand_folders([str(tmp_path / "empty")])


def test_the_init_word_is_the_one_the_embedding_started_from(run_dir, clip_dir, judge, tmp_path):
    """A run that left --init to its model (the bundled model's own "shape") has the property word in its settings;
    the embedding records the word it started from, and that is the baseline drawn."""
    import shutil

    from textinv.formats import LearnedEmbedding, load_embedding, save_embedding

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    emb = load_embedding(run / "learned_embeds.safetensors")
    save_embedding(LearnedEmbedding(emb.token, emb.vectors, {**emb.metadata, "init": "cat"}),
                   run / "learned_embeds.safetensors", "diffusers")
    result = score(settings(run, clip_dir, tmp_path / "report", n=1), judge=judge, progress=False)
    report = json.loads(result.scores.read_text())
    assert [m["words"] for m in report["methods"]] == ["<zq>", "cat"]


def test_the_training_pictures_are_read_no_larger_than_the_report_and_clip_need(tmp_path):
    """score sees its training pictures only through CLIP (224) and 256-pixel thumbnails: a camera's big JPEG is
    decoded at a reduced scale (here 1/2), still three times 256 a side, not held whole."""
    from textinv.score import _training_pictures

    folder = tmp_path / "pics"
    folder.mkdir()
    Image.effect_noise((3201, 2401), 60).convert("RGB").save(folder / "big.jpg")
    Image.new("RGB", (300, 200), "red").save(folder / "small.png")
    big, small = sorted(_training_pictures(str(folder), None), key=lambda p: -p.width)
    assert big.size == (1601, 1201) and small.size == (300, 200)


def test_an_out_folder_of_the_users_own_is_not_replaced_for_its_folder_names(run_dir, clip_dir, judge, tmp_path):
    """`--images data/training --out data`: a folder holding only the user's own training/ (or pictures/) folder
    has the names of a report's parts, but no scores.json: it is not a report, and the swap would delete it."""
    data = tmp_path / "data"
    write_images(data / "training", n=1)
    with pytest.raises(ConfigError, match=r"not a score report \(it holds training\)"):
        score(_quick(run_dir, clip_dir, data, init="none", images=str(data / "training")), judge=judge,
              progress=False)
    assert (data / "training" / "img0.png").is_file()


def test_a_baseline_that_names_the_token_is_refused(run_dir, clip_dir, judge, tmp_path):
    """The prompt expansion and the tokenizer find the token in any words, in any case: a description naming it
    drew the learned vectors and was reported as the human-caption baseline."""
    with pytest.raises(ConfigError, match=r"^description='a <ZQ> dog' names the token <zq>: .*, e.g. "
                                          r"description='a corgi with a red collar'$"):
        score(_quick(run_dir, clip_dir, tmp_path / "o", description="a <ZQ> dog"), judge=judge, progress=False)
    with pytest.raises(ConfigError, match=r"^init='<zq>' names the token <zq>"):
        score(_quick(run_dir, clip_dir, tmp_path / "o", init="<zq>"), judge=judge, progress=False)
    assert not (tmp_path / "o").exists()  # refused before anything was drawn


def test_an_edit_prompt_of_the_concept_alone_is_refused():
    """Editability compares a picture with its prompt less the concept: of '{}' that is no text at all."""
    for prompt in ("{}", "<zq>", "({}:1.2), ", "[{}]"):
        with pytest.raises(ConfigError, match="the concept alone"):
            _template(prompt, "<zq>")
    assert _template("{} on a beach", "<zq>") == "{} on a beach"


def test_a_compare_folder_of_the_diffusers_script_gives_its_steps_and_skips_other_files(tmp_path):
    """The diffusers script writes its steps (learned_embeds-steps-500.safetensors) beside the final
    learned_embeds.safetensors in one folder: scored with --compare on that folder, the folder was read as the one
    final embedding, the scored one, and nothing was compared. A file there that is no embedding (a preview PNG,
    optimizer state) is skipped with a warning; a folder of nothing else is refused."""
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.score import _compared

    out = tmp_path / "textual_inversion_cat"
    embs = {k: LearnedEmbedding("<cat>", {"text_encoder": torch.randn(1, 32)}, {"steps": str(k)}) for k in (2, 4)}
    save_embedding(embs[2], out / "learned_embeds-steps-2.safetensors", "diffusers")
    save_embedding(embs[4], out / "learned_embeds.safetensors", "diffusers")
    Image.new("RGB", (8, 8)).save(out / "preview.png")
    (out / "optimizer.bin").write_bytes(b"not an embedding")
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) that are no embedding: optimizer.bin, preview.png"):
        found = _compared([str(out)], embs[4], out / "learned_embeds.safetensors")
    assert [Path(p).name for _, p in found] == ["learned_embeds-steps-2.safetensors"]
    assert torch.equal(found[0][0].vectors["text_encoder"], embs[2].vectors["text_encoder"])
    junk = tmp_path / "junk"
    junk.mkdir()
    Image.new("RGB", (8, 8)).save(junk / "preview.png")
    with pytest.raises(ConfigError, match="junk' holds no embedding file"):
        _compared([str(junk)], embs[4])
    with pytest.raises(Exception, match="preview.png"):  # a file named on its own: its own error
        _compared([str(junk / "preview.png")], embs[4])


def test_a_warning_raised_inside_score_names_the_line_that_called_it(clip_dir, tmp_path, monkeypatch):
    """score() is marked as train() and generate() are (`errors.warns_at_caller`): the files a --compare folder
    skips were said at a line inside score.py."""
    import inspect

    from textinv import score as score_module
    from textinv.formats import LearnedEmbedding, save_embedding

    emb = LearnedEmbedding("<cat>", {"text_encoder": torch.randn(1, 32)})
    scored = save_embedding(emb, tmp_path / "cat.safetensors", "diffusers")[0]
    steps = tmp_path / "steps"
    save_embedding(emb, steps / "learned_embeds-steps-2.safetensors", "diffusers")
    (steps / "optimizer.bin").write_bytes(b"not an embedding")

    def stop(*a, **k):  # (the warning is raised while planning; nothing needs loading or drawing)
        raise RuntimeError("stopped before loading")

    monkeypatch.setattr(score_module, "_load_parts", stop)
    config = ScoreConfig(embedding=str(scored), compare=[str(steps)], images=str(write_images(tmp_path / "i", n=2)),
                         model="unused", clip=str(clip_dir), out=str(tmp_path / "out"), n=1, steps=1)
    with pytest.warns(UserWarning, match="skipped 1 file") as said, pytest.raises(RuntimeError, match="stopped"):
        line = inspect.currentframe().f_lineno + 1
        score(config, progress=False)
    assert [(w.filename, w.lineno) for w in said if "skipped" in str(w.message)] == [(__file__, line)]


def test_a_clip_part_is_not_taken_for_a_whole_clip_model(sd1_dir, clip_dir, tmp_path):
    """transformers builds a CLIPModel from a folder of one CLIP tower (a model's text_encoder with its tokenizer
    and an image processor beside it), every weight it lacks random, and said nothing (its report is quieted): the
    judge scored noise."""
    import shutil

    part = tmp_path / "text-encoder"
    shutil.copytree(sd1_dir / "text_encoder", part)
    for f in list((sd1_dir / "tokenizer").iterdir()) + [clip_dir / "preprocessor_config.json"]:
        shutil.copy(f, part)
    with pytest.raises(ModelError, match="not a whole CLIP model"):
        ClipJudge.load(str(part))
    assert ClipJudge.load(str(clip_dir)).source == str(clip_dir)


def test_scores_json_names_its_files_by_absolute_paths(run_dir, clip_dir, judge, tmp_path, monkeypatch):
    """Paths given relative to the folder the command ran in were kept so: a script reading scores.json from
    anywhere else could not find the embedding, the pictures or the compared files it names."""
    monkeypatch.chdir(run_dir.parent)
    step = _a1111_copies(run_dir.parent / "steps", load_embedding_vectors(run_dir), "<zq>", ["zq-2.pt"])[0]
    report = score(_quick("run", clip_dir, tmp_path / "o", init="none", images="images",
                          compare=[str(step.relative_to(run_dir.parent))]), judge=judge, progress=False).report
    assert report["embedding"]["path"] == str(run_dir)
    assert report["images"] == str(run_dir.parent / "images")
    assert report["compared"][0]["path"] == str(step)
    assert (tmp_path / "o" / report["methods"][0]["prompts"][0]["files"][0]).is_file()  # (in the report folder)


def load_embedding_vectors(path):
    from textinv.formats import load_embedding

    return load_embedding(path).vectors["text_encoder"]


def test_an_embedding_names_a_local_model_by_name_alone_and_a_lone_file_asks_where_it_is(run_dir, sd1_dir, clip_dir,
                                                                                         judge, tmp_path):
    """A shared embedding file must not carry the trainer's folders (/home/alice/...): its base_model is the
    model's name. Scored alone, away from its run, that name says no place, so --model is asked for; the run
    folder itself still knows (its config.yaml keeps the path)."""
    from textinv.formats import load_embedding

    lone = _lone_copy(run_dir, tmp_path)
    assert load_embedding(lone).metadata["base_model"] == Path(sd1_dir).name
    images = run_dir.parent / "images"
    with pytest.raises(ConfigError, match=rf"model= is required: .*names '{Path(sd1_dir).name}', a local model's "
                                          rf"name.*pass model="):
        score(ScoreConfig(embedding=str(lone), images=str(images), clip=str(clip_dir), out=str(tmp_path / "o")),
              judge=judge)
    assert run_settings(run_dir, "<zq>")["model"] == str(sd1_dir)


def test_a_lone_file_whose_recorded_model_path_is_gone_is_said_to_be_a_path_not_a_name(run_dir, clip_dir, judge,
                                                                                        tmp_path):
    """An older file (or one from another machine) records its model's path: gone here, it is said to be a path
    that is not there, not 'a local model's name, which does not say where it is'."""
    from textinv.formats import LearnedEmbedding, load_embedding, save_embedding

    emb = load_embedding(run_dir / "learned_embeds.safetensors")
    gone = str(tmp_path / "home" / "alice" / "sd15")
    lone = tmp_path / "zq.safetensors"
    save_embedding(LearnedEmbedding(emb.token, emb.vectors, {**emb.metadata, "base_model": gone}), lone)
    with pytest.raises(ConfigError, match=rf"model= is required: .*names {gone!r}, a path not on this machine"
                                          rf".*pass model="):
        score(ScoreConfig(embedding=str(lone), images=str(run_dir.parent / "images"), clip=str(clip_dir),
                          out=str(tmp_path / "o")), judge=judge)


def test_an_sdxl_file_is_scored_on_a_one_encoder_model_with_its_clip_l_half(sd1_dir, clip_dir, judge, tmp_path):
    """An SDXL file (clip_l + clip_g) on an SD 1.x model is drawn with its clip_l half, as generate draws it (the
    tiny model's 32 stands for CLIP-L's 768), saying so; score refused it for its width."""
    from textinv.formats import LearnedEmbedding, save_embedding

    xl = LearnedEmbedding("<xq>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 64)})
    path = save_embedding(xl, tmp_path / "xq.safetensors", "sdxl")[0]
    base = dict(images=str(write_images(tmp_path / "images", n=2)), model=str(sd1_dir), prompts=["a photo of {}"])
    with pytest.warns(UserWarning, match="only its clip_l half"):
        report = score(_quick(path, clip_dir, tmp_path / "o", **base), judge=judge, progress=False).report
    assert report["embedding"]["token"] == "<xq>" and report["methods"][0]["words"] == "<xq>"


def test_a_model_with_an_embedding_installed_is_scored_twice_and_handed_back(sd1_dir, clip_dir, judge, tmp_path):
    """A model holding a notebook's installed embedding kept the scored one too: scoring it again was refused, its
    token "already in the tokenizer's vocabulary"."""
    from textinv.formats import LearnedEmbedding
    from textinv.generate import install_embedding

    model = load_model(sd1_dir)
    install_embedding(model, LearnedEmbedding("<mine>", {"text_encoder": torch.randn(1, model.widths[0])}))
    tokenizer, size = model.tokenizer, len(model.tokenizer)
    images = write_images(tmp_path / "images", n=2)
    (main,) = _a1111_copies(tmp_path / "emb", torch.randn(1, model.widths[0]) * 0.02, "<zq>", ["zq.pt"])
    for k in range(2):
        score(settings(main, clip_dir, tmp_path / f"o{k}", n=1, steps=1, init="none", images=str(images),
                       model=str(sd1_dir)), model=model, judge=judge, progress=False)
        assert model.tokenizer is tokenizer and len(tokenizer) == size


def test_a_second_score_into_the_same_out_is_refused_and_the_first_finishes(sd1_dir, run_dir, clip_dir, judge,
                                                                           tmp_path, monkeypatch):
    """Two scores into one --out (the default score-out, two embeddings scored in two shells): the second deleted the
    first one's half-built report as a killed run's, and the first then failed writing into it."""
    from textinv.score import Drawing

    out, real, second = tmp_path / "report", Drawing.row, []

    def row(self, *args, **kwargs):  # (while the first run draws, a second one starts)
        if not second:
            second.append(True)
            with pytest.raises(ConfigError, match=f"--out {out} is being written by another textinv score .pid"):
                score(settings(run_dir, clip_dir, out, n=1, init="none"), model=load_model(sd1_dir), judge=judge,
                      progress=False)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Drawing, "row", row)
    score(settings(run_dir, clip_dir, out, n=1, init="none"), judge=judge, progress=False)
    assert second and (out / "scores.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # (no lock file left beside it)
    monkeypatch.undo()
    score(settings(run_dir, clip_dir, out, n=1, init="none"), judge=judge, progress=False)  # free again


def test_an_out_that_cannot_be_made_is_named_as_given(run_dir, clip_dir, tmp_path):
    """The message named the hidden folder the report is built in (`.report.partial`), not the --out given."""
    (tmp_path / "a file").write_text("")
    out = tmp_path / "a file" / "report"
    with pytest.raises(ConfigError) as e:
        score(settings(run_dir, clip_dir, out, n=1), progress=False)
    assert str(e.value) == (f"out='{out}': cannot create the folder ({tmp_path / 'a file'} is a file, not a folder); "
                            f"choose another out=")


def test_compare_takes_hub_ids_as_embedding_does(run_dir, clip_dir, judge, hub_cache, tmp_path):
    """--compare took local files only: a hub id was refused as a path that does not exist. It is read as
    --embedding reads one (from the Hugging Face cache offline), named in the report by its id, not its place in
    the cache, and one not in the cache is refused with --embedding's own words."""
    from conftest import cache_snapshot
    from textinv.config import config_file_settings
    from textinv.formats import load_embedding, save_embedding

    scored = load_embedding(run_dir / "learned_embeds.safetensors")
    save_embedding(scored, cache_snapshot(hub_cache, "me/zq-copy") / "learned_embeds.safetensors")
    save_embedding(scored, cache_snapshot(hub_cache, "me/embeds") / "zq-2.safetensors")
    out = tmp_path / "o"
    result = score(_quick(run_dir, clip_dir, out, init="none", compare=["me/zq-copy", "me/embeds/zq-2.safetensors"]),
                   judge=judge, progress=False)
    assert [m["label"] for m in result.report["methods"]] == ["<zq>", "me/zq-copy (step 4)",
                                                             "me/embeds/zq-2.safetensors (step 4)"]
    compared = result.report["compared"]
    assert [c["path"] for c in compared] == ["me/zq-copy", "me/embeds/zq-2.safetensors"]
    assert [c["token"] for c in compared] == ["<zq-copy>", "<zq-2>"]  # (the repo's or file's name, as generate's)
    first, *others = _first_pictures(result, out)
    assert others == [first, first]  # (the same vectors: read from the cache, drawn under their own tokens)

    with pytest.raises(FormatError) as given:
        score(_quick("nobody/nothing", clip_dir, tmp_path / "o2"), judge=judge)
    with pytest.raises(FormatError) as compared:
        score(_quick(run_dir, clip_dir, tmp_path / "o3", compare=["nobody/nothing"]), judge=judge)
    assert str(compared.value) == str(given.value)
    assert "not in the local Hugging Face cache" in str(given.value)

    # a config file's compare: a hub id stays one, a relative file is read from the file's folder
    (tmp_path / "s.yaml").write_text("compare: [me/zq-copy, local.pt]\n")
    assert config_file_settings(ScoreConfig, tmp_path / "s.yaml")["compare"] == ["me/zq-copy",
                                                                                str(tmp_path / "local.pt")]


def test_a_hub_embedding_is_reported_by_its_id_and_reads_no_run_from_the_working_folder(
        run_dir, sd1_dir, clip_dir, judge, hub_cache, tmp_path, monkeypatch):
    """Scored from inside a training run's folder, a hub id 'me/x' took that folder (its parent's parent) for the
    run beside it; and the report named it as a path under the working folder."""
    from conftest import cache_snapshot
    from textinv.formats import load_embedding, save_embedding

    save_embedding(load_embedding(run_dir / "learned_embeds.safetensors"),
                   cache_snapshot(hub_cache, "me/zq") / "learned_embeds.safetensors")
    monkeypatch.chdir(run_dir)
    assert run_settings(Path("me/zq"), "<zq>") == {}
    report = score(_quick("me/zq", clip_dir, tmp_path / "o", init="none", images=str(run_dir.parent / "images"),
                          model=str(sd1_dir)), judge=judge, progress=False).report
    assert report["embedding"]["path"] == "me/zq"


def test_a_published_report_is_flushed_into_its_folder(tmp_path, monkeypatch):
    """The swap's renames are entries of the report's parent folder: flushed once the new report is in place."""
    from textinv import score as score_module

    out, partial, previous = tmp_path / "report", tmp_path / ".report.partial", tmp_path / ".report.previous"
    out.mkdir()
    (out / "scores.json").write_text("old")
    partial.mkdir()
    (partial / "scores.json").write_text("new")
    synced = []
    monkeypatch.setattr(score_module, "sync_folder", lambda folder: synced.append(
        (folder, (out / "scores.json").read_text())))
    score_module._swap_in(partial, out, previous)
    assert synced == [(tmp_path, "new")]
    assert not previous.exists()


def test_pictures_are_drawn_at_the_size_the_embedding_was_trained_at_as_generate_draws_it(sd1_dir, clip_dir, judge,
                                                                                           tmp_path):
    """Where no --resolution is given, the size a non-square embedding was trained at (`generate.generation_size`),
    in the pictures, their PNG text and scores.json; --resolution still wins, and a square's is the model's own."""
    from textinv.formats import LearnedEmbedding, save_embedding

    side = load_model(sd1_dir).resolution
    base = dict(images=str(write_images(tmp_path / "images", n=2)), model=str(sd1_dir), init="none")

    def drawn(size, out, **kw):
        emb = LearnedEmbedding("<wq>", {"text_encoder": torch.randn(1, 32)}, {"resolution": size})
        path = save_embedding(emb, tmp_path / f"{out}.safetensors", "diffusers")[0]
        report = score(_quick(path, clip_dir, tmp_path / out, **base, **kw), judge=judge, progress=False).report
        picture = Image.open(tmp_path / out / report["methods"][0]["prompts"][0]["files"][0])
        assert picture.text["size"] == "x".join(map(str, picture.size))
        return picture.size, report["settings"]["resolution"]

    assert drawn(f"{side}x{side * 2}", "tall") == ((side, side * 2), f"{side}x{side * 2}")
    assert drawn(f"{side}x{side * 2}", "given", resolution=side) == ((side, side), side)
    assert drawn(str(side * 2), "square") == ((side, side), side)


def test_score_takes_paths_as_text(run_dir, clip_dir, sd1_dir, tmp_path):
    """ScoreConfig's paths given as Path objects (as TrainConfig's and GenerateConfig's may be) failed at the very
    end, once every picture was drawn and judged, in the report's HTML escaping (Path has no .replace(a, b))."""
    out = tmp_path / "score"
    result = score(ScoreConfig(embedding=Path(run_dir), clip=Path(clip_dir), out=out, n=1, steps=2, init="none"),
                   progress=False)
    assert result.report["clip"] == str(clip_dir) and result.report["settings"]["out"] == str(out)
    assert json.loads(result.scores.read_text())["settings"]["embedding"] == str(run_dir)
    assert repr(result) == f"ScoreResult(html={result.html!r}, png={result.png!r}, scores={result.scores!r})"


def test_a_run_folder_as_images_and_a_missing_compare_say_what_to_give(tmp_path, capsys):
    """`--images RUN` (a training run's --out) was refused as training refuses it ("e.g. run1/checkpoints ... to
    train on them all"), and `--compare missing` said only "does not exist"; both are refused before any model
    loads."""
    from textinv.formats import LearnedEmbedding, save_embedding

    emb = save_embedding(LearnedEmbedding("<x>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "x.safetensors",
                         "diffusers")[0]
    run = tmp_path / "run1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("token: <x>\n")
    with pytest.warns(UserWarning, match="config.yaml"):
        assert main(["score", "--embedding", str(emb), "--images", str(run), "--out", str(tmp_path / "o")]) == 2
    said = capsys.readouterr().err
    assert (f"{run} is a training run's folder (it holds config.yaml), not a folder of pictures; give the run with "
            f"--embedding {run}, and with --images the folder of the pictures themselves") in said
    assert "to train on" not in said and "checkpoints" not in said
    assert main(["score", "--embedding", str(emb), "--compare", str(tmp_path / "missing")]) == 2
    assert (f"--compare '{tmp_path / 'missing'}' does not exist; --compare takes embedding files of the same "
            f"concept, a folder of them (e.g. a run's embeddings/) or hub ids") in capsys.readouterr().err
