"""Training invariants on tiny random SD 1.x / 2.x models: what changes, what must not, resume, and failures."""

import os
import warnings

import pytest
import torch
from safetensors.torch import load_file

from textinv.config import DEFAULT_LR, DEFAULT_STEPS, TrainConfig
from textinv.errors import ConfigError, DataError, FormatError, TrainingError
from textinv.formats import load_embedding
from textinv.models import load_model
from textinv.tokens import base_embedding, encode_init, init_vectors
from textinv import batches, latent_cache, run_folder
from textinv import train as train_module
from textinv.run_folder import read_loss_log, read_run_settings
from textinv.train import TrainingInterrupted, train
from conftest import fresh_model, recorded_caption_banks, recorded_rates, recorded_results, train_config


config = train_config  # (a short run's settings, `kw` over them)


def frozen_state(model):
    return {f"{name}.{k}".replace("token_embedding.base.", "token_embedding."): v.clone() for name, m in (("unet", model.unet), ("vae", model.vae),
                                                      ("te", model.text_encoder)) for k, v in m.state_dict().items()
            if "token_embedding.rows" not in k}


def test_a_fresh_model_shares_nothing_with_the_next_one(sd1_dir, images, tmp_path):
    """`fresh_model` copies one load per session: what a test does to its copy (train on it, change a weight, a
    token added) is not in the next test's copy, which equals a load of its own."""
    model = fresh_model(sd1_dir)
    train(config(images, tmp_path / "out", steps=1), model=model, progress=False)
    model.tokenizer.add_tokens(["<left-behind>"])
    with torch.no_grad():
        model.unet.conv_in.weight.zero_()
    again, loaded = fresh_model(sd1_dir), load_model(sd1_dir)
    assert len(again.tokenizer) == len(loaded.tokenizer) and "<left-behind>" not in again.tokenizer.get_vocab()
    for part in ("unet", "vae", "text_encoder"):
        got, want = getattr(again, part).state_dict(), getattr(loaded, part).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), part


@pytest.mark.parametrize("family_dir", ["sd1_dir", "sd2_dir"])
def test_only_new_rows_change_and_frozen_weights_are_bit_identical(family_dir, request, images, tmp_path):
    model = fresh_model(request.getfixturevalue(family_dir))
    before = frozen_state(model)
    table_before = base_embedding(model.text_encoder).weight.detach().clone()
    init_row = table_before[model.tokenizer("dog", add_special_tokens=False).input_ids[0]].clone()
    result = train(config(images, tmp_path / "out", vectors=2), model=model, progress=False)
    after = frozen_state(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"frozen weight {key} changed"
    assert torch.equal(base_embedding(model.text_encoder).weight, table_before)
    learned = result.embedding.vectors["text_encoder"]
    assert learned.shape == (2, 32)
    assert not torch.allclose(learned[0], init_row), "the new vector did not move"
    for p in list(model.unet.parameters()) + list(model.vae.parameters()):
        assert p.grad is None


def test_v_prediction_model_trains_on_velocity(sd2_dir, images, tmp_path, monkeypatch):
    model = fresh_model(sd2_dir)
    assert model.prediction_type == "v_prediction"
    seen = []
    real = model.noise_scheduler

    def spy():
        sched = real()
        original = sched.get_velocity
        sched.get_velocity = lambda *a: seen.append(1) or original(*a)
        return sched

    monkeypatch.setattr(model, "noise_scheduler", spy)
    train(config(images, tmp_path / "out", steps=2), model=model, progress=False)
    assert seen, "v-prediction model was not trained on the velocity target"


def test_outputs_written_and_embedding_file_is_diffusers_layout(sd1_dir, images, tmp_path):
    out = tmp_path / "out"
    train(config(images, out, steps=4, save_every=2, sample_every=2, sample_steps=2), model=fresh_model(sd1_dir),
          progress=False)
    raw = load_file(out / "learned_embeds.safetensors")
    assert list(raw) == ["<zq>"] and raw["<zq>"].shape == (1, 32)
    emb = load_embedding(out / "learned_embeds.safetensors")
    assert emb.metadata["steps"] == "4" and emb.metadata["token"] == "<zq>" and "textinv_version" in emb.metadata
    assert (out / "config.yaml").exists()
    assert [s for s, _ in read_loss_log(out / "loss.csv")] == [2, 4]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000000.png", "step-000002.png",
                                                                  "step-000004.png"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002.pt", "step-000004.pt"]


def test_a1111_pt_records_a_single_file_models_short_hash_and_name_as_the_web_ui(sd1_dir, images, tmp_path,
                                                                               monkeypatch):
    """--format a1111 writes the web UI's sd_checkpoint (the checkpoint file's SHA-256, first 10 digits) and
    sd_checkpoint_name (its name without the suffix) when the model is a single file, where sd_checkpoint was
    empty; the file is read once per run, not at every save. A diffusers folder has none, as before."""
    import hashlib

    from safetensors.torch import save_file
    from test_models import _ldm_state_dict
    from textinv.tiny import build_tiny_pipeline

    checkpoint = tmp_path / "tiny sd15.safetensors"
    save_file(_ldm_state_dict(build_tiny_pipeline("sd1", seed=0)), checkpoint)
    hashed = recorded_results(monkeypatch, train_module, "webui_checkpoint")
    train(config(images, tmp_path / "file", model=str(checkpoint), single_file_config=str(sd1_dir), steps=4,
                 save_every=2, format="a1111"), progress=False)
    assert len(hashed) == 1
    steps_saved = list((tmp_path / "file" / "embeddings").iterdir())
    assert steps_saved
    for saved in (tmp_path / "file" / "zq.pt", *steps_saved):
        data = torch.load(saved, weights_only=True)
        assert data["sd_checkpoint"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10], saved
        assert data["sd_checkpoint_name"] == "tiny sd15"
    train(config(images, tmp_path / "folder", steps=1, format="a1111"), model=fresh_model(sd1_dir), progress=False)
    data = torch.load(tmp_path / "folder" / "zq.pt", weights_only=True)
    assert data["sd_checkpoint"] is None and data["sd_checkpoint_name"] == sd1_dir.name


@pytest.mark.parametrize("fmt, name", [("a1111", "zq.pt"), ("kohya", "zq.safetensors")])
def test_other_save_formats(fmt, name, sd1_dir, images, tmp_path):
    out = tmp_path / "out"
    result = train(config(images, out, steps=2, format=fmt), model=fresh_model(sd1_dir), progress=False)
    loaded = load_embedding(out / name)
    assert loaded.token == "<zq>"
    assert torch.equal(loaded.vectors["text_encoder"], result.embedding.vectors["text_encoder"])


def fixed_batch_loss(model, images, prompt, n=64, seed=123):
    """The denoising loss on one fixed set of (picture, noise, timestep) draws: comparable across vectors."""
    from textinv.data import find_images, load_training_images
    from textinv.losses import diffusion_loss
    from textinv.latent_cache import encode_latents

    pixels = torch.stack([p.pixels for p in load_training_images(find_images(images), model.resolution)])
    mean, _ = encode_latents(model.vae, pixels)
    g = torch.Generator().manual_seed(seed)
    latents = mean[torch.randint(len(mean), (n,), generator=g)] * model.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    ids = model.tokenizer([prompt] * n, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return diffusion_loss(model, model.noise_scheduler(), latents, noise, t, [ids]).mean().item()


def test_loss_goes_down_on_a_tiny_learnable_target(sd1_dir, images, tmp_path):
    from textinv.generate import install_embedding

    model = fresh_model(sd1_dir)
    # (40 steps: the fixed batch's loss is as far down after 40 as after 150 were, 1.8%, in a quarter of the time)
    result = train(config(images, tmp_path / "out", steps=40, batch=4, lr=5e-2, log_every=20, vectors=2),
                   model=model, progress=False)
    install_embedding(model, result.embedding)  # (the model came back without the token)
    ext = model.text_encoder.get_input_embeddings()
    prompt = "a photo of a <zq> <zq>_1"
    learned = fixed_batch_loss(model, images, prompt)
    with torch.no_grad():
        ext.vectors.copy_(init_vectors(base_embedding(model.text_encoder).weight,
                                       encode_init(model.tokenizer, "dog"), 2))
    initial = fixed_batch_loss(model, images, prompt)
    assert learned < initial * 0.995, (learned, initial, result.losses)  # seen: 1.8% lower with seeds 0 and 1


@pytest.mark.parametrize("noise_offset", [0.0, 0.1])
def test_resume_equals_uninterrupted_run_bit_for_bit(noise_offset, sd1_dir, images, tmp_path):
    straight = train(config(images, tmp_path / "a", steps=8, save_every=4, noise_offset=noise_offset),
                     model=fresh_model(sd1_dir), progress=False)
    first = train(config(images, tmp_path / "b", steps=4, save_every=4, noise_offset=noise_offset),
                  model=fresh_model(sd1_dir), progress=False)
    assert not torch.equal(first.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    resumed = train(config(images, tmp_path / "b", steps=8, save_every=4, resume=True, noise_offset=noise_offset),
                    model=fresh_model(sd1_dir), progress=False)
    assert resumed.steps == 8
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def test_resume_with_changed_settings_is_refused(sd1_dir, images, tmp_path):
    train(config(images, tmp_path / "b", steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(config(images, tmp_path / "b", steps=4, lr=1e-3, resume=True), model=fresh_model(sd1_dir),
              progress=False)


def test_resume_or_start_starts_resumes_to_the_uninterrupted_run_and_then_finds_it_complete(sd1_dir, images,
                                                                                             tmp_path, monkeypatch):
    """A requeued cluster job runs one command each time (the diffusers script's --resume_from_checkpoint latest):
    the first starts the run, the next after an interruption goes on from its checkpoint to where the run would
    have ended, and one after the run is done learns nothing and leaves its files as they were."""
    from conftest import interrupted_at

    straight = train(config(images, tmp_path / "a", save_every=2), model=fresh_model(sd1_dir), progress=False)
    out = tmp_path / "b"
    real = train_module.diffusion_loss
    interrupted_at(monkeypatch, train_module, "diffusion_loss", 4)
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, out, save_every=2, resume_or_start=True), model=fresh_model(sd1_dir), progress=False)
    assert info.value.step == 3 and not (out / "checkpoints" / "step-000006.pt").exists()
    monkeypatch.setattr(train_module, "diffusion_loss", real)
    resumed = train(config(images, out, save_every=2, resume_or_start=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses and read_run_settings(out)["resume_or_start"] is False
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "config.yaml"}
    again = train(config(images, out, save_every=2, resume_or_start=True), model=fresh_model(sd1_dir),
                  progress=False)
    assert again.steps == 6 and again.losses == straight.losses
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "config.yaml"} == files


def test_resume_or_start_refuses_a_folder_of_other_files_or_another_runs_settings(sd1_dir, images, tmp_path):
    """It never empties a folder: files that are no run's are refused, as without it, and a run given other
    settings than its own is refused as --resume refuses it, before the model loads."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=f"resume_or_start=: output folder {out} holds files but no textinv run"):
        train(config(images, out, resume_or_start=True), model=fresh_model(sd1_dir), progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.md"]
    other = tmp_path / "other"
    train(config(images, other, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* with different settings \(lr: 0.05 -> 0.001\)"):
        train(config(images, other, steps=2, lr=1e-3, resume_or_start=True), model=fresh_model(sd1_dir),
              progress=False)
    with pytest.raises(ConfigError, match="resume_or_start= and resume=: give one"):
        train(config(images, other, resume=True, resume_or_start=True), model=fresh_model(sd1_dir), progress=False)


def test_a_resume_after_a_picture_was_added_names_the_runs_file_to_start_from(sd1_dir, images, tmp_path):
    """A picture added, then --resume: refused (the checkpoint's epoch order counts the pictures), and besides
    --overwrite, which starts from nothing, the way to keep what the run learned, naming its file."""
    import shutil

    out = tmp_path / "run"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    shutil.copy(images / "img0.png", images / "img9.png")
    with pytest.raises(ConfigError) as e:
        train(config(images, out, steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert str(e.value).endswith(f"(new: img9.png); put the folder back as it was, or start a new run with "
                                 f"overwrite=True, or keep what it learned: start a new run from its vectors with "
                                 f"init_embedding='{out / 'learned_embeds.safetensors'}', out='NEW_DIR'"), e.value
    kept = train(config(images, tmp_path / "new", steps=2, init=None,
                        init_embedding=str(out / "learned_embeds.safetensors")), model=fresh_model(sd1_dir),
                 progress=False)
    assert kept.steps == 2


def test_existing_output_folder_is_not_overwritten_silently(sd1_dir, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="resume=True .* overwrite=True"):
        train(config(images, out), model=fresh_model(sd1_dir), progress=False)
    train(config(images, out, steps=2, overwrite=True), model=fresh_model(sd1_dir), progress=False)
    assert (out / "keep.txt").read_text() == "mine"  # --overwrite removes only what a run writes
    assert (out / "learned_embeds.safetensors").exists()


def test_a_folder_holding_only_what_a_file_browser_leaves_is_an_empty_one(sd1_dir, images, tmp_path):
    """An --out made in Finder or Explorer for the run, and looked into, holds .DS_Store (desktop.ini, Thumbs.db):
    it was refused as "not empty", with --resume or --overwrite as the way on."""
    out = tmp_path / "out"
    out.mkdir()
    for name in (".DS_Store", "._.DS_Store", "desktop.ini", "Thumbs.db"):
        (out / name).write_bytes(b"\0")
    train(config(images, out, steps=2), model=fresh_model(sd1_dir), progress=False)
    assert (out / "learned_embeds.safetensors").is_file() and (out / ".DS_Store").read_bytes() == b"\0"


def test_overwrite_keeps_the_old_run_until_the_inputs_load_and_deletes_only_its_files(sd1_dir, images, tmp_path):
    """A run that fails on its inputs leaves the folder as it was; a good one replaces the old run's files and
    keeps the user's own: a model file, another embedding, notes."""
    out = tmp_path / "out"
    train(config(images, out, steps=2, format="a1111"), model=fresh_model(sd1_dir), progress=False)
    old = (out / "zq.pt").read_bytes()
    mine = {"model.safetensors": b"weights", "other-lora.pt": b"lora", "notes.md": b"notes",
            "learned_embeds-backup.safetensors": b"an older run the user kept"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    with pytest.raises(DataError, match="goood"):
        train(config(tmp_path / "goood", out, steps=2, overwrite=True), model=fresh_model(sd1_dir), progress=False)
    assert (out / "zq.pt").read_bytes() == old and (out / "config.yaml").exists()
    train(config(images, out, steps=2, overwrite=True), model=fresh_model(sd1_dir), progress=False)
    assert not (out / "zq.pt").exists() and (out / "learned_embeds.safetensors").exists()  # the old run is gone
    assert {name: (out / name).read_bytes() for name in mine} == mine


def test_concepts_whose_tokens_would_share_a_folder_are_refused(images, tmp_path):
    with pytest.raises(ConfigError, match="share an output folder"):
        train(TrainConfig(concepts=[f"{images}=<zq>", f"{images}=zq"], out=str(tmp_path / "o"), steps=1),
              progress=False)


@pytest.mark.parametrize("tokens, vectors, message", [
    (["<loss.csv>", "<b>"], 1, "where the run keeps its own loss.csv"),  # was an IsADirectoryError after training
    (["<b>", "<checkpoints>"], 1, "where the run keeps its own checkpoints"),
    (["<a>", "<a>_1"], 2, "both need the tokenizer entry '<a>_1' .with vectors=2, '<a>' also takes '<a>_1'"),
    (["<a>", "<A>"], 1, "both need the tokenizer entry '<a>' .the tokenizer lower-cases text"),
])
def test_concept_tokens_that_clash_with_the_run_or_each_other_are_refused_before_loading(tokens, vectors, message,
                                                                                         images, tmp_path):
    """A concept named like the run's own files, or two whose tokenizer entries coincide, are refused by name
    before the model loads (the model here does not exist)."""
    with pytest.raises(ConfigError, match=message):
        train(TrainConfig(concepts=[f"{images}={t}" for t in tokens], vectors=vectors, out=str(tmp_path / "o"),
                          model=str(tmp_path / "no-model"), steps=1), progress=False)
    assert not (tmp_path / "o").exists()


def test_resume_after_the_pictures_changed_is_refused_before_loading(sd1_dir, tmp_path, monkeypatch):
    """The checkpoint's epoch order indexes the pictures: fewer pictures were an IndexError mid-run, more a silently
    different run. Now the resume names the folder and what changed."""
    import shutil

    from conftest import write_images

    dogs, cats = write_images(tmp_path / "dogs", n=4, seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    run = dict(concepts=[f"{dogs}=<jd>", f"{cats}=<jc>"], out=str(tmp_path / "o"), model=str(sd1_dir), steps=2,
               batch=3, save_every=2, sample_every=0)
    train(TrainConfig(**run), progress=False)
    kept = (cats / "img2.png").read_bytes()
    (cats / "img2.png").unlink()
    real_load = train_module.load_model
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ConfigError, match=f"pictures in {cats} changed since the run started .missing now: "
                                          "img2.png.*put the folder back"):
        train(TrainConfig(**run, resume=True), progress=False)
    (cats / "img2.png").write_bytes(kept)  # (the picture itself: another of its name is refused as edited)
    shutil.copy(dogs / "img0.png", dogs / "img9.png")
    with pytest.raises(ConfigError, match=f"pictures in {dogs} changed since the run started .new: img9.png"):
        train(TrainConfig(**run, resume=True), progress=False)
    (dogs / "img9.png").unlink()
    monkeypatch.setattr(train_module, "load_model", real_load)
    assert train(TrainConfig(**{**run, "steps": 4}, resume=True), progress=False).steps == 4


def test_a_folder_whose_names_came_back_in_another_unicode_form_resumes_the_same_run(sd1_dir, tmp_path):
    """macOS writes 'e' + a combining accent (NFD) where Linux keeps the composed letter (NFC): the same folder moved
    between them holds other bytes, which also sort otherwise ('e\u0301' before 'f', '\u00e9' after). The resume
    was refused as "pictures changed"; it now takes them as the same, in the checkpoint's order."""
    import unicodedata

    from conftest import write_images

    def named(folder, form):
        for i, name in enumerate(["\u00e9t\u00e9.png", "f.png", "caf\u00e9.png"]):
            (folder / f"img{i}.png").rename(folder / unicodedata.normalize(form, name))
        return folder

    composed = named(write_images(tmp_path / "nfc", n=3, seed=4), "NFC")
    decomposed = named(write_images(tmp_path / "nfd", n=3, seed=4), "NFD")
    assert sorted(p.name for p in composed.iterdir()) != [unicodedata.normalize("NFC", p.name)
                                                          for p in sorted(decomposed.iterdir())]
    straight = train(config(composed, tmp_path / "a", steps=4, save_every=2, batch=1), model=fresh_model(sd1_dir),
                     progress=False)
    train(config(composed, tmp_path / "b", steps=2, save_every=2, batch=1), model=fresh_model(sd1_dir),
          progress=False)
    resumed = train(config(decomposed, tmp_path / "b", steps=4, save_every=2, batch=1, resume=True),
                    model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def test_a_run_moved_with_its_pictures_resumes_given_where_they_are_now(sd1_dir, tmp_path):
    """A run folder moved with its picture folders (to another disk or machine): its config.yaml names where they
    were. The resume says which flag gives where they are now; --concepts given again (the same tokens, each with its
    new folder) was refused as other settings. Both resume to the run left where it was."""
    import shutil

    from conftest import write_images

    dogs, cats = write_images(tmp_path / "dogs", n=3, seed=1), write_images(tmp_path / "cats", n=2, seed=2)
    common = dict(model=str(sd1_dir), batch=2, save_every=2, sample_every=0, log_every=2)
    one = dict(images=str(dogs), token="<zq>", init="dog", **common)
    two = dict(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>"], **common)
    for run, name in ((one, "one"), (two, "two")):
        train(TrainConfig(**run, out=str(tmp_path / f"{name}-a"), steps=4), progress=False)
        train(TrainConfig(**run, out=str(tmp_path / name), steps=2), progress=False)
        shutil.move(tmp_path / name, tmp_path / "moved" / name)
    for folder in (dogs, cats):
        shutil.move(folder, tmp_path / "moved" / folder.name)
    new = tmp_path / "moved"
    with pytest.raises(DataError, match=f"{dogs} does not exist.*the pictures {new / 'one' / 'config.yaml'} names; "
                                        f"if they moved, resume with --images with where they are now"):
        train(TrainConfig(**one, out=str(new / "one"), steps=4, resume=True), progress=False)
    with pytest.raises(DataError, match="resume with --concepts, each concept's FOLDER=TOKEN as it is now"):
        train(TrainConfig(**two, out=str(new / "two"), steps=4, resume=True), progress=False)
    with pytest.raises(ConfigError, match="cannot resume .* with different settings .concepts"):  # (other tokens)
        train(TrainConfig(**{**two, "concepts": [f"{new / 'dogs'}=<jd>", f"{new / 'cats'}=<jx>"]},
                          out=str(new / "two"), steps=4, resume=True), progress=False)
    resumed = train(TrainConfig(**{**one, "images": str(new / "dogs")}, out=str(new / "one"), steps=4, resume=True),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"],
                       load_embedding(tmp_path / "one-a" / "learned_embeds.safetensors").vectors["text_encoder"])
    resumed = train(TrainConfig(**{**two, "concepts": [f"{new / 'dogs'}=<jd>", f"{new / 'cats'}=<jc>"]},
                                out=str(new / "two"), steps=4, resume=True), progress=False)
    for emb, token in zip(resumed.embeddings, ("jd", "jc")):
        saved = load_embedding(tmp_path / "two-a" / token / "learned_embeds.safetensors")
        assert emb.token == saved.token and torch.equal(emb.vectors["text_encoder"], saved.vectors["text_encoder"])


def test_an_epoch_holds_each_picture_its_own_repeat_count_times():
    """kohya's folders give pictures different repeat counts: each epoch holds picture i exactly counts[i] times,
    and one count for all draws exactly what runs drew before counts per picture."""
    from textinv.batches import BatchSampler

    sampler = BatchSampler(3, [20, 20, 6], flip=False, seed=0)
    drawn = torch.cat([sampler.draw(23, (1,), (0, 10))["image"] for _ in range(4)])  # two whole epochs of 46
    assert torch.bincount(drawn[:46]).tolist() == [20, 20, 6]
    assert torch.bincount(drawn[46:]).tolist() == [20, 20, 6]
    assert not torch.equal(drawn[:46], drawn[46:])  # (each epoch shuffled anew)
    same = BatchSampler(3, 4, flip=False, seed=5)._next_images(24)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(same, torch.cat([torch.randperm(12, generator=g) % 3 for _ in range(2)]))
    assert torch.equal(BatchSampler(3, [4, 4, 4], flip=False, seed=5)._next_images(24), same)


def test_noise_offset_adds_one_normal_number_per_sample_and_channel_and_off_draws_what_runs_always_drew():
    """kohya's --noise_offset: noise + X * randn(B, C, 1, 1). Off (0, the default), the draws and the generator's
    state after them are the stream runs drew before the setting (no extra number drawn: every later step's draws
    are unchanged); on, only the noise changes, by a constant over each sample's channel whose spread is X, so each
    (sample, channel) mean of the noise spreads by about sqrt(X^2 + 1/(h w)) instead of 1/sqrt(h w)."""
    from textinv.batches import BatchSampler

    def sampler(**kw):
        return BatchSampler(3, 2, flip=True, seed=7, **kw)

    shape, n, x = (4, 32, 32), 1000, 0.1
    for off in (sampler(), sampler(noise_offset=0.0)):  # one epoch of 3 pictures x 2, in the draws' order
        g = torch.Generator().manual_seed(7)
        want = {"image": torch.randperm(6, generator=g) % 3, "flip": torch.rand(6, generator=g) < 0.5,
                "caption": torch.rand(6, generator=g), "eps_latent": torch.randn((6, *shape), generator=g),
                "noise": torch.randn((6, *shape), generator=g), "timestep": torch.randint(0, 1000, (6,), generator=g)}
        got = off.draw(6, shape, (0, 1000))
        assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items())
        assert torch.equal(off.generator.get_state(), g.get_state())
    plain, on = sampler(), sampler(noise_offset=x)
    drawn = {"plain": plain.draw(n, shape, (0, 1000)), "on": on.draw(n, shape, (0, 1000))}
    assert all(torch.equal(drawn["on"][k], v) for k, v in drawn["plain"].items() if k != "noise")
    shift = drawn["on"]["noise"] - drawn["plain"]["noise"]  # (n, 4, 32, 32)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # one number per sample, channel
    assert shift[:, :, 0, 0].std().item() == pytest.approx(x, rel=0.05)
    assert abs(shift[:, :, 0, 0].mean().item()) < 0.01
    means = {name: d["noise"].mean(dim=(2, 3)).std().item() for name, d in drawn.items()}  # over (n, 4)
    assert means["plain"] == pytest.approx(1 / 32, rel=0.05)
    assert means["on"] == pytest.approx((x ** 2 + 1 / 32 ** 2) ** 0.5, rel=0.05)
    # the next draw goes on from the generator's own state: resumable as ever
    again = sampler(noise_offset=x)
    again.load_state_dict(on.state_dict())
    assert torch.equal(again.draw(4, shape, (0, 1000))["noise"], on.draw(4, shape, (0, 1000))["noise"])


def test_noise_offset_noise_is_what_the_latents_are_noised_with_and_the_velocity_target_of(sd2_dir, tmp_path,
                                                                                            monkeypatch):
    """v-prediction (SD 2.x 768, the bundled model): the target depends on the noise; as in kohya's scripts the
    offset noise is both what the latents are noised with and what the velocity is made of. With --buckets each
    sample's noise (its corner of the largest shape) keeps its channels' offset."""
    from conftest import record_noise

    pictures = _mixed_pictures(tmp_path / "mixed")
    seen = []
    record_noise(monkeypatch, seen)
    runs = {}
    for x in (0.0, 0.5):
        seen.clear()
        train(config(pictures, tmp_path / f"o{x}", steps=1, batch=3, buckets=True, noise_offset=x),
              model=fresh_model(sd2_dir), progress=False)
        assert [kind for kind, _ in seen] == ["add", "v"] * (len(seen) // 2) and len(seen) >= 4  # (several shapes)
        assert all(torch.equal(a, v) for (_, a), (_, v) in zip(seen[::2], seen[1::2]))
        runs[x] = [noise for kind, noise in seen if kind == "add"]
    assert [n.shape for n in runs[0.0]] == [n.shape for n in runs[0.5]]
    for plain, offset in zip(runs[0.0], runs[0.5]):  # (B_shape, 4, h, w): one number per sample and channel
        shift = offset - plain
        assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
        assert shift[:, :, 0, 0].abs().min() > 0


@pytest.mark.parametrize("value", [-0.05, float("nan"), float("inf"), True, "0.1"])
def test_a_noise_offset_that_is_no_number_from_0_up_is_refused_naming_the_flag(value, images, tmp_path):
    # (a value of another type is refused as Python gives it, by `config.check_types`)
    message = (r"noise_offset= takes a number, got" if isinstance(value, (bool, str)) else
               r"noise_offset= must be a number >= 0 \(0: off; 0.05-0.1 is typical\)")
    with pytest.raises(ConfigError, match=message):
        config(images, tmp_path / "o", noise_offset=value).validate()
    assert config(images, tmp_path / "o", noise_offset=0).validate().noise_offset == 0  # (off: valid)


def test_a_kohya_folder_trains_each_picture_by_its_folders_count_and_resumes(sd1_dir, tmp_path, monkeypatch, capsys):
    """`img/10_a/` (2 pictures) and `img/3_b/` (1) as one of --concepts, with --repeats 2: each epoch draws a's
    pictures 20 times each and b's 6 times; the checkpoint tells 3_b/img0.png from 10_a/img0.png, a resume
    continues the run exactly, and renaming a folder (its count) is refused."""
    from conftest import write_images

    img, flat = tmp_path / "img", write_images(tmp_path / "flat", n=2, seed=3)
    write_images(img / "10_a", n=2, seed=1)
    write_images(img / "3_b", n=1, seed=2)
    run = dict(concepts=[f"{img}=<ka>", f"{flat}=<kb>"], model=str(sd1_dir), steps=4, batch=2, save_every=2,
               sample_every=0, log_every=2, repeats=2)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **run), progress=True)
    assert f"{img}: 2 kohya folders, 10_a (2 pictures x10), 3_b (1 x3)" in capsys.readouterr().out
    state = torch.load(tmp_path / "a" / "checkpoints" / "step-000004.pt", weights_only=True)
    assert state["pictures"] == [["10_a/img0.png", "10_a/img1.png", "3_b/img0.png"], ["img0.png", "img1.png"]]
    assert torch.bincount(state["samplers"][0]["order"]).tolist() == [20, 20, 6]  # the epoch being drawn
    assert torch.bincount(state["samplers"][1]["order"]).tolist() == [2, 2]

    train(TrainConfig(out=str(tmp_path / "b"), **{**run, "steps": 2}), progress=False)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **run), progress=False)
    for mine, theirs in zip(resumed.embeddings, straight.embeddings, strict=True):
        assert torch.equal(mine.vectors["text_encoder"], theirs.vectors["text_encoder"]), mine.token
    assert resumed.losses == straight.losses

    (img / "3_b").rename(img / "5_b")
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ConfigError, match=f"pictures in {img} changed since the run started .missing now: "
                                          "3_b/img0.png; new: 5_b/img0.png"):
        train(TrainConfig(out=str(tmp_path / "b"), resume=True, **{**run, "steps": 6}), progress=False)


def test_resume_with_another_number_of_processes_is_refused(sd1_dir, images, tmp_path, monkeypatch):
    """Each process draws its slice of a global batch of --batch x processes: resuming a 2-process run in one
    process would silently halve the batch of every remaining step."""
    out = tmp_path / "o"
    train(config(images, out, steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    path = out / "checkpoints" / "step-000002.pt"
    state = torch.load(path, weights_only=True)
    assert state["processes"] == 1
    torch.save({**state, "processes": 2}, path)  # as a 2-process run saves it
    monkeypatch.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ConfigError, match="trained by 2 process.*this launch has 1.*--num_processes 2"):
        train(config(images, out, steps=4, resume=True), progress=False)


def test_out_that_cannot_be_made_fails_before_the_model_loads(images, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(config(images, tmp_path / "a-file" / "run", model=str(tmp_path / "no-model")), progress=False)


def test_resume_from_another_directory_and_another_spelling_of_the_folder(sd1_dir, images, tmp_path, monkeypatch):
    """Relative --images and --out, then resumed from elsewhere with the folder written absolute with a slash:
    the same run (the saved paths are absolute)."""
    straight = train(config(images, tmp_path / "a", steps=4, save_every=2), model=fresh_model(sd1_dir),
                     progress=False)
    monkeypatch.chdir(images.parent)
    train(config(images.name, "b", steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = train(config(f"../{images.name}", str(images.parent / "b") + "/", steps=4, save_every=2, resume=True),
                    model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_sigterm_saves_like_ctrl_c(sd1_dir, images, tmp_path):
    import os
    import signal

    out = tmp_path / "b"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, out, steps=6), model=fresh_model(sd1_dir), progress=False,
              on_step=lambda step: step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    assert info.value.step == 2 and info.value.signum == signal.SIGTERM  # (the command exits 143)
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "2"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_non_finite_loss_stops_and_keeps_last_good_vectors(sd1_dir, images, tmp_path, monkeypatch):
    real = train_module.diffusion_loss
    calls = []

    def poisoned(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", poisoned)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="non-finite.*--lr"):
        train(config(images, out, steps=10, log_every=2), model=fresh_model(sd1_dir), progress=False)
    saved = load_embedding(out / "learned_embeds.safetensors")
    assert torch.isfinite(saved.vectors["text_encoder"]).all()
    logged = read_loss_log(out / "loss.csv")  # the curve up to the last finite interval, to see where it went
    assert [s for s, _ in logged] == [2, 4] and all(v == v for _, v in logged)


def test_ctrl_c_saves_current_vectors_and_resume_finishes_the_run(sd1_dir, images, tmp_path, monkeypatch):
    from conftest import interrupt_loss_at

    straight = train(config(images, tmp_path / "a", steps=6), model=fresh_model(sd1_dir), progress=False)
    undo = interrupt_loss_at(monkeypatch, 4)
    out = tmp_path / "b"
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, out, steps=6), model=fresh_model(sd1_dir), progress=False)
    assert info.value.step == 3
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "3"
    undo()
    resumed = train(config(images, out, steps=6, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_min_snr_weighting_changes_the_loss(sd1_dir, images, tmp_path):
    plain = train(config(images, tmp_path / "a", steps=2), model=fresh_model(sd1_dir), progress=False)
    snr = train(config(images, tmp_path / "b", steps=2, min_snr_gamma=1.0), model=fresh_model(sd1_dir),
                progress=False)
    assert plain.losses != snr.losses


def test_timesteps_are_drawn_only_from_the_given_range(sd1_dir, images, tmp_path, monkeypatch):
    real, seen = train_module.diffusion_loss, []

    def recording(model, scheduler, latents, noise, timesteps, *a, **k):
        seen.append(timesteps.clone())
        return real(model, scheduler, latents, noise, timesteps, *a, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", recording)
    train(config(images, tmp_path / "a", min_timestep=300, max_timestep=310), model=fresh_model(sd1_dir),
          progress=False)
    drawn = torch.cat(seen)
    assert len(drawn) == 12 and drawn.min() >= 300 and drawn.max() < 310 and len(drawn.unique()) > 1
    with pytest.raises(ConfigError, match="do not fit the model's 1000 timesteps"):
        train(config(images, tmp_path / "b", max_timestep=1001), model=fresh_model(sd1_dir), progress=False)
    for bad in (dict(min_timestep=-1), dict(min_timestep=500, max_timestep=500)):
        with pytest.raises(ConfigError, match="timestep= must be a whole number"):
            config(images, tmp_path / "c", **bad).validate()


def test_loss_weights_cap_the_clean_latent_weight_at_gamma():
    """Min-SNR in the terms of the error of the predicted clean latent (epsilon loss = SNR x that error, v loss =
    (SNR + 1) x that error), finite at SNR 0 (a zero-terminal-SNR schedule's last timestep)."""
    from textinv.losses import loss_weights

    alphas = torch.tensor([0.0, 1e-3, 0.5, 0.9, 0.999])
    snr = alphas / (1 - alphas)
    eps, v, v1 = (loss_weights(alphas, 5.0, p, plus_one=one) for p, one in
                  (("epsilon", False), ("v_prediction", False), ("v_prediction", True)))
    for w in (eps, v, v1):
        assert torch.isfinite(w).all() and (w <= 1).all() and (w > 0)[1:].all()
    torch.testing.assert_close(eps[1:] * snr[1:], snr[1:].clamp(max=5.0))
    assert eps[0] == 1.0  # the limit of min(SNR, gamma) / SNR
    torch.testing.assert_close(v * (snr + 1), snr.clamp(max=5.0))
    torch.testing.assert_close(v1 * (snr + 1), (snr + 1).clamp(max=5.0))
    assert v[0] == 0.0 and v1[0] == 1.0


def test_grad_accumulation_and_clipping_run(sd1_dir, images, tmp_path):
    result = train(config(images, tmp_path / "a", steps=2, grad_accum=2, max_grad_norm=1e-6, lr_schedule="cosine",
                          warmup_steps=1), model=fresh_model(sd1_dir), progress=False)
    assert result.steps == 2


def test_bad_settings_fail_before_loading_anything(tmp_path, images):
    with pytest.raises(ConfigError, match="property='objet' is not one of"):
        train(config(images, tmp_path / "o", property="objet"), progress=False)
    with pytest.raises(DataError, match="no images"):
        (tmp_path / "empty").mkdir()
        train(config(tmp_path / "empty", tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="vectors= must be a whole number >= 1"):
        train(config(images, tmp_path / "o", vectors=0), progress=False)
    with pytest.raises(ConfigError, match="lr= must be > 0 and at most"):  # Adam's first step would overflow
        train(config(images, tmp_path / "o", lr=1e38), progress=False)
    with pytest.raises(ConfigError, match="init='' is empty"):  # (it started from 'object', said nowhere)
        train(config(images, tmp_path / "o", init=""), progress=False)
    for item in (f"{images}=<zq>=", {"images": str(images), "token": "<zq>", "init": " "}):  # (a concept's, too)
        with pytest.raises(ConfigError, match="concept .*: its init is empty"):
            train(TrainConfig(concepts=[item], out=str(tmp_path / "o")), progress=False)
    with pytest.raises(ConfigError, match="token 'My Dog' must be one word without spaces, e.g. '<my-dog>'"):
        train(config(images, tmp_path / "o", token="My Dog"), progress=False)  # (the web UI's names may hold them)


def test_a_caption_whose_token_falls_past_the_text_window_is_refused(sd1_dir, images, tmp_path):
    # 75 vectors after "a photo of the cool": the last ones would lie past the 77-token window, never trained
    with pytest.raises(ConfigError, match="cuts the token's 75 vector"):
        train(config(images, tmp_path / "a", vectors=75, steps=1), model=fresh_model(sd1_dir), progress=False)
    # a caption file that writes the token at the end of 100 words loses it: refused, naming the caption
    first = sorted(images.glob("*.png"))[0]
    first.with_suffix(".txt").write_text("word " * 100 + "{}")
    with pytest.raises(ConfigError, match="training caption 'word word"):
        train(config(images, tmp_path / "b", steps=1), model=fresh_model(sd1_dir), progress=False)
    # a long caption with its token early is only cut at the end, as everywhere: it trains, even when the end it
    # loses names the token again
    first.with_suffix(".txt").write_text("{} " + "word " * 100 + "{}")
    assert train(config(images, tmp_path / "c", steps=1), model=fresh_model(sd1_dir), progress=False).steps == 1


def test_checkpoints_are_ordered_by_step_past_six_digits(tmp_path):
    folder = tmp_path / run_folder.CHECKPOINT_DIR
    folder.mkdir()
    for step in (1_000_000, 999_999, 2):
        run_folder.checkpoint_path(tmp_path, step).write_bytes(b"")
    assert [p.name for p in run_folder.checkpoints(tmp_path)] == ["step-000002.pt", "step-999999.pt",
                                                                     "step-1000000.pt"]



def test_only_the_newest_keep_checkpoints_checkpoints_are_kept(sd1_dir, images, tmp_path):
    train(config(images, tmp_path / "a", steps=6, save_every=2, keep_checkpoints=2), model=fresh_model(sd1_dir),
          progress=False)
    assert [p.name for p in run_folder.checkpoints(tmp_path / "a")] == ["step-000004.pt", "step-000006.pt"]

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_loss_curve_matches_fp32(precision, sd1_dir, images, tmp_path):
    """Frozen weights in bf16/fp16 (vectors stay fp32, fp16 with loss scaling) track the fp32 run."""
    kw = dict(steps=6, log_every=2)
    ref = train(config(images, tmp_path / "a", **kw), model=fresh_model(sd1_dir), progress=False)
    half = train(config(images, tmp_path / "b", precision=precision, **kw), progress=False,
                 model=load_model(sd1_dir, dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])))
    assert half.embedding.vectors["text_encoder"].dtype == torch.float32
    for (s1, l1), (s2, l2) in zip(ref.losses, half.losses):
        assert s1 == s2 and abs(l1 - l2) / l1 < 0.02, (ref.losses, half.losses)  # within 2% (seen: < 0.1%)


@pytest.mark.parametrize("noise_offset", [0.0, 0.1])
def test_several_concepts_in_one_run_each_equal_to_its_own_run(noise_offset, sd1_dir, tmp_path):
    """K concepts share the frozen model and each batch, yet each learns what a run of its own learns."""
    from conftest import each_concept_alone, write_images

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    common = dict(steps=4, batch=2, save_every=0, sample_every=0, log_every=2, lr=5e-2, max_grad_norm=0.05,
                  noise_offset=noise_offset)
    joint = train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", {"images": str(cats), "token": "<jc>", "init": "cat"}],
                              out=str(tmp_path / "joint"), **common), model=fresh_model(sd1_dir), progress=False)
    assert [e.token for e in joint.embeddings] == ["<jd>", "<jc>"]
    for mine, alone in zip(joint.embeddings, each_concept_alone(sd1_dir, tmp_path, [f"{dogs}=<jd>=dog",
                                                                                 f"{cats}=<jc>=cat"], **common)):
        assert torch.allclose(mine.vectors["text_encoder"], alone.vectors["text_encoder"], atol=1e-5)
    assert load_embedding(tmp_path / "joint" / "jd" / "learned_embeds.safetensors").token == "<jd>"
    assert load_embedding(tmp_path / "joint" / "jc" / "learned_embeds.safetensors").token == "<jc>"


def test_an_interrupted_run_of_several_concepts_resumes_to_the_uninterrupted_one(sd1_dir, tmp_path):
    """Concepts of 1 and 4 pictures (their epochs turn over at different steps), stopped mid log interval."""
    import os
    import signal

    from conftest import write_images

    one, four = write_images(tmp_path / "one", n=1, seed=1), write_images(tmp_path / "four", seed=2)
    run = dict(concepts=[f"{one}=<jd>=dog", f"{four}=<jc>=cat"], steps=6, batch=3, save_every=4, sample_every=0,
               log_every=4, lr=5e-2)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **run), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(out=str(tmp_path / "b"), **run), model=fresh_model(sd1_dir), progress=False,
              on_step=lambda step: step == 3 and os.kill(os.getpid(), signal.SIGTERM))
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **run), model=fresh_model(sd1_dir),
                    progress=False)
    for mine, theirs in zip(resumed.embeddings, straight.embeddings, strict=True):
        assert torch.equal(mine.vectors["text_encoder"], theirs.vectors["text_encoder"]), mine.token
    assert resumed.losses == straight.losses
    assert read_loss_log(tmp_path / "b" / "loss.csv") == read_loss_log(tmp_path / "a" / "loss.csv")
    # with several concepts loss.csv also gives each concept's own loss (columns named by token; they sum to loss)
    import csv

    for folder in ("a", "b"):
        rows = list(csv.DictReader(open(tmp_path / folder / "loss.csv", newline="")))
        assert list(rows[0]) == ["step", "loss", "<jd>", "<jc>", "learn_rate", "epoch"]
        assert [r["step"] for r in rows] == ["4", "6"]
        for r in rows:
            assert float(r["<jd>"]) > 0 and float(r["<jc>"]) > 0
            assert float(r["<jd>"]) + float(r["<jc>"]) == pytest.approx(float(r["loss"]), abs=2e-6)
    assert (tmp_path / "b" / "loss.csv").read_text() == (tmp_path / "a" / "loss.csv").read_text()


def test_a_diverging_concept_of_several_is_named(sd1_dir, tmp_path, monkeypatch):
    from conftest import write_images

    real = train_module.diffusion_loss

    def second_concept_diverges(*a, **k):
        loss = real(*a, **k)  # (K * B,): the second concept's samples are the second half
        return torch.cat([loss[: len(loss) // 2], loss[len(loss) // 2:] * float("nan")])

    monkeypatch.setattr(train_module, "diffusion_loss", second_concept_diverges)
    one, two = write_images(tmp_path / "one", n=2, seed=1), write_images(tmp_path / "two", n=2, seed=2)
    with pytest.raises(TrainingError, match=r"the loss \(<jc>'s\) became non-finite"):
        train(TrainConfig(concepts=[f"{one}=<jd>=dog", f"{two}=<jc>=cat"], steps=2, batch=2, save_every=0,
                          sample_every=0, log_every=1, out=str(tmp_path / "o")), model=fresh_model(sd1_dir),
              progress=False)


def test_concepts_settings_are_checked(images, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(images=str(images), token="<a>", concepts=[f"{images}=<b>"], out=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="repeats a token"):
        TrainConfig(concepts=[f"{images}=<b>", f"{images}=<b>"], out=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="FOLDER=TOKEN"):
        TrainConfig(concepts=[f"{images}"], out=str(tmp_path)).validate()
    # (each token heads a column of loss.csv, beside its own columns: two of one name read as one, the sum hidden)
    for token in ("step", "loss", "validation_loss", "learn_rate", "epoch"):
        with pytest.raises(ConfigError, match=f"^token '{token}' is the name of a column of loss.csv .*: the two "
                                              f"would read as one; name the concept otherwise, e.g. '<{token}>'$"):
            TrainConfig(concepts=[f"{images}=<b>", f"{images}={token}"], out=str(tmp_path)).validate()
    TrainConfig(images=str(images), token="epoch", out=str(tmp_path)).validate()  # (one concept: no token column)
    odd = tmp_path / "size=large"  # a folder whose name holds "=" is found as the folder
    odd.mkdir()
    specs = TrainConfig(concepts=[f"{odd}=<b>=dog", f"{images}=<c>"], out=str(tmp_path)).concept_list()
    assert [(s["images"], s["token"], s["init"]) for s in specs] == [(str(odd), "<b>", "dog"),
                                                                      (str(images), "<c>", "object")]


def test_a_caption_prefix_or_suffix_naming_a_token_is_refused_in_a_run_of_several_concepts(images, tmp_path):
    """--caption-prefix "<b>" marks the token of a run of one concept; in a run of several it goes on every
    concept's captions, so another concept's samples would name <b>: refused before anything loads, naming the
    flag (it was refused after the latents were encoded, blaming a caption file that does not name it)."""
    concepts = [f"{images}=<b>", f"{images}=<c>"]
    for given, flag in ((dict(caption_prefix="<B>, photo"), "caption_prefix="),
                        (dict(caption_suffix="by <c>"), "caption_suffix=")):
        with pytest.raises(ConfigError, match=f"{flag}'.*' names the token <[bc]>"):
            TrainConfig(concepts=concepts, out=str(tmp_path), **given).validate()
    TrainConfig(concepts=concepts, out=str(tmp_path), caption_prefix="<bc> photo").validate()  # (no token: a word)
    TrainConfig(images=str(images), token="<b>", out=str(tmp_path), caption_prefix="<b>").validate()


def one_attention_model(folder):
    """`fresh_model(folder)` with a smaller UNet of its own, the same weights each call: two levels of 32 channels,
    no middle block, and its one cross-attention in the first down block, so the text's whole gradient comes back
    through every up block. Torch 2.13's CPU inductor compiles it wrong too (the gradient to the text 56% off; the
    tiny UNet's 24%), in two thirds of the tiny UNet's CPU time with an empty cache; dynamo traces it faster too."""
    return small_unet_model(folder, up_block_types=("UpBlock2D", "UpBlock2D"))


def two_attention_model(folder):
    """`one_attention_model(folder)` with a second cross-attention, in the last up block, for the regional compile's
    checks in channels-last: its transformer blocks are compiled as the tiny UNet's are, a first one whose input
    carries no gradient (only the text's comes back through it) and a later one whose input does (the gradient also
    goes back through its self-attention and feed-forward), without the tiny UNet's third, in its middle block: the
    later kind again at another width, a graph more to compile in each memory layout that checks nothing new (the
    regional compile tests took 70 s with an empty compile cache on 2 loaded cores, 36 s without it)."""
    return small_unet_model(folder, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def small_unet_model(folder, up_block_types):
    """`fresh_model(folder)` with a UNet of two levels of 32 channels, no middle block, a cross-attention in the
    first down block and `up_block_types`, the same weights each call."""
    from diffusers import UNet2DConditionModel

    model = fresh_model(folder)
    torch.manual_seed(0)
    model.pipeline.unet = UNet2DConditionModel.from_config(
        {**model.unet.config, "block_out_channels": (32, 32), "mid_block_type": None,
         "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": up_block_types},
    ).requires_grad_(False)
    return model


@pytest.mark.parametrize("levers, model", [(dict(channels_last=True), two_attention_model),
                                           (dict(compile="blocks"), fresh_model),
                                           (dict(compile="blocks", channels_last=True), two_attention_model)])
def test_speed_levers_compute_what_the_plain_path_computes(levers, model, sd1_dir):
    """channels-last and regional torch.compile change how the UNet runs, not what it computes: its output and the
    gradient it sends back to the text conditioning match the plain UNet's to float rounding. Regional compile alone
    is checked on the tiny UNet: its blocks come in two widths, as SD's do, so dynamo compiles the ones after the
    first with symbolic shapes, as it does for users; and they are the graphs `benchmarks.compile_check --arch tiny
    --compile blocks` compiles (test_benchmarks.py), so inductor's cache has them and the suite compiles them once
    (on `two_attention_model`'s UNet, two graphs more to compile with an empty cache). With channels-last, on
    `two_attention_model`'s UNet: both kinds of block the tiny UNet has, at one width, in half its compile time;
    the graphs `test_compiled_runs_track_the_plain_run` trains on."""
    from textinv.speed import _unet_and_input_gradient, speed_up_unet, unet_example

    plain, fast = model(sd1_dir), model(sd1_dir)
    speed_up_unet(fast.unet, **levers)
    if levers.get("channels_last"):
        assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    if levers.get("compile"):
        assert any(getattr(m, "_compiled_call_impl", None) is not None for m in fast.unet.modules())
    example = unet_example(plain, 2, (4, 8, 8))
    for got, want in zip(_unet_and_input_gradient(fast.unet, example), _unet_and_input_gradient(plain.unet, example)):
        error = ((got - want).norm() / want.norm()).item()
        assert error < 1e-4, error  # seen: up to 1.4e-6


def test_compile_check_uncompiles_a_unet_whose_gradients_are_wrong(sd1_dir):
    """The safety net for compiler bugs: a 'compiled' block that cuts the gradient is caught and removed, with a
    warning; a faithful one is kept."""
    from textinv.speed import check_compiled_unet, unet_example

    model = fresh_model(sd1_dir)
    block = model.unet.up_blocks[0]
    example = unet_example(model, 2, (4, 8, 8))
    faithful = block._call_impl
    block._compiled_call_impl = faithful
    assert check_compiled_unet(model.unet, example) is True
    assert block._compiled_call_impl is faithful
    block._compiled_call_impl = lambda *a, **k: faithful(*a, **k).detach()  # what torch 2.13's CPU inductor did
    with pytest.warns(RuntimeWarning, match="torch.compile changed the UNet's result"):
        assert check_compiled_unet(model.unet, example) is False
    assert block._compiled_call_impl is None


def graphs_compiled(monkeypatch, model, cfg) -> int:
    """Train with `cfg` (a --compile run), the UNet compiled with dynamo's eager backend (only the graphs are
    counted, not what inductor makes of them); returns how many graphs dynamo compiled, the check's included."""
    from torch._dynamo.utils import counters

    checked = []
    real_check = train_module.check_compiled_unet
    monkeypatch.setattr(train_module, "speed_up_unet", lambda unet, *a: unet.compile(backend="eager"))
    monkeypatch.setattr(train_module, "check_compiled_unet", lambda *a: checked.append(real_check(*a)))
    torch._dynamo.reset()
    counters.clear()
    try:
        train(cfg, model=model, progress=False)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert checked == [True]
    return graphs


@pytest.mark.parametrize("sample_every", [0, 2])
def test_the_compile_check_runs_the_graph_that_training_runs(sample_every, sd1_dir, images, tmp_path, monkeypatch):
    """The check before training calls the compiled UNet as the training step does: called otherwise (keywords
    against positions, another memory layout), dynamo's guards fail at the first step and the whole UNet compiles a
    second time (minutes of a GPU lease at SD size), and the graph that was checked is not the one that trains. The
    sample grids (no gradient, another batch) run it uncompiled, or they would compile it again. (On the smaller
    UNet of `one_attention_model`, which dynamo traces in less time: how the UNet is called is the same.)"""
    model = one_attention_model(sd1_dir)
    cfg = config(images, tmp_path / "run", steps=3, compile="unet", sample_every=sample_every, sample_steps=2)
    assert graphs_compiled(monkeypatch, model, cfg) == 1  # compiled once, by the check; the steps ran that graph
    assert model.unet._compiled_call_impl is not None  # (compiled again after each grid)
    if sample_every:
        assert len(list((tmp_path / "run" / "samples").glob("*.png"))) == 3  # steps 0, 2, 3


@pytest.mark.parametrize("levers", [dict(compile="blocks", channels_last=True), dict(compile="unet")])
def test_compiled_runs_track_the_plain_run(levers, sd1_dir, images, tmp_path):
    """A whole run with the levers on tracks the plain fp32 run (inductor reorders sums: seen 1e-4 relative after
    4 steps at this high learning rate). A whole-UNet compile that computes wrong gradients falls back to the
    plain UNet (it does with torch 2.13 on the CPU), so its run tracks too: on `one_attention_model`'s UNet, whose
    compile torch gets as wrong in less time than the tiny model's. The regional compile's run is on
    `two_attention_model`'s UNet: the blocks compiled by the test of the levers above (its graphs, run as the
    training steps run them: channels-last, a batch of two 8x8 latents), so after it dynamo compiles nothing here."""
    import warnings

    kw = dict(steps=4, log_every=1)
    model = one_attention_model if levers["compile"] == "unet" else two_attention_model
    plain = train(config(images, tmp_path / "a", **kw), model=model(sd1_dir), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = train(config(images, tmp_path / "b", **levers, **kw), model=model(sd1_dir), progress=False)
    for (s1, l1), (s2, l2) in zip(plain.losses, fast.losses, strict=True):
        assert s1 == s2 and abs(l1 - l2) <= 1e-3 * l1, (plain.losses, fast.losses)
    # the vectors learned track too: the losses alone missed a wrong compile kept (the fall-back taken out, they
    # tracked to 5e-4 while the vectors strayed by 29%; seen: 8e-7 with regional compile and channels-last, 0 after
    # a fall-back)
    want, got = plain.embedding.vectors["text_encoder"], fast.embedding.vectors["text_encoder"]
    assert (got - want).norm() <= 1e-3 * want.norm(), ((got - want).norm() / want.norm()).item()


def test_a_signal_that_lands_inside_a_step_stops_the_run_between_steps(sd1_dir, images, tmp_path, monkeypatch):
    """Ctrl-C arriving just after the optimizer's update (here: inside GradScaler.update of step 3) must not leave a
    checkpoint labelled step 2 holding step 3's vectors: the run finishes the step, stops, and resumes exactly."""
    import os
    import signal

    straight = train(config(images, tmp_path / "a", steps=6), model=fresh_model(sd1_dir), progress=False)
    real, calls = torch.amp.GradScaler.update, []

    def update_then_signal(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update_then_signal)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "b"
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, out, steps=6), model=fresh_model(sd1_dir), progress=False)
    assert info.value.step == 3 and signal.getsignal(signal.SIGINT) == before
    monkeypatch.setattr(torch.amp.GradScaler, "update", real)
    resumed = train(config(images, out, steps=6, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_resumed_loss_log_is_the_uninterrupted_runs(sd1_dir, images, tmp_path):
    """Stopped inside a log interval (step 4 of intervals of 3), the checkpoint keeps the interval's loss so far:
    loss.csv after the resume has the uninterrupted run's rows."""
    import os
    import signal

    straight = train(config(images, tmp_path / "a", steps=8, log_every=3), model=fresh_model(sd1_dir),
                     progress=False)
    out = tmp_path / "b"
    with pytest.raises(TrainingInterrupted):
        train(config(images, out, steps=8, log_every=3), model=fresh_model(sd1_dir), progress=False,
              on_step=lambda step: step == 4 and os.kill(os.getpid(), signal.SIGTERM))
    resumed = train(config(images, out, steps=8, log_every=3, resume=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert resumed.losses == straight.losses and [s for s, _ in resumed.losses] == [3, 6, 8]
    assert read_loss_log(out / "loss.csv") == read_loss_log(tmp_path / "a" / "loss.csv")


def test_resume_with_fewer_steps_than_done_is_refused(sd1_dir, images, tmp_path):
    out = tmp_path / "b"
    train(config(images, out, steps=4), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match="at step 4 with steps=2.*steps=4 or more"):
        train(config(images, out, steps=2, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert "steps: 4" in (out / "config.yaml").read_text()  # the record still says what made the file


def test_a_run_with_a_relative_model_and_concepts_resumes_from_anywhere(sd1_dir, images, tmp_path, monkeypatch):
    """--model and --concepts given relative to where the run started are stored absolute, like --images."""
    import shutil

    shutil.copytree(sd1_dir, tmp_path / "sd1")
    shutil.copytree(images, tmp_path / "pics")
    monkeypatch.chdir(tmp_path)
    run = dict(concepts=["pics=<zq>=dog", "pics=<zr>=cat"], out="multi", model="sd1", steps=4, batch=2,
               save_every=2, sample_every=0, log_every=2)
    with pytest.raises(TrainingInterrupted):
        import os
        import signal

        train(TrainConfig(**run), progress=False, on_step=lambda s: s == 2 and os.kill(os.getpid(), signal.SIGTERM))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    from textinv.cli import main

    assert main(["train", "--out", str(tmp_path / "multi"), "--resume"]) == 0
    for name in ("zq", "zr"):
        assert load_embedding(tmp_path / "multi" / name / "learned_embeds.safetensors").metadata["steps"] == "4"


def test_clip_skip_reads_an_earlier_layer_in_training_and_is_recorded_in_the_file(sd1_dir, images, tmp_path):
    from textinv.models import check_clip_skip, encode_text

    model = fresh_model(sd1_dir)
    ids = model.tokenizer(["a photo of a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    te = model.text_encoder
    norm = getattr(te, "final_layer_norm", None) or te.text_model.final_layer_norm  # (transformers 5, 4)
    penultimate = norm(te(ids, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(encode_text(model, [ids], clip_skip=2)[0], penultimate)
    assert torch.equal(encode_text(model, [ids], clip_skip=1)[0], te(ids)[0])
    assert not torch.allclose(penultimate, te(ids)[0])
    with pytest.raises(ConfigError, match="more than the 2 layers"):
        check_clip_skip(model, 3)
    plain = train(config(images, tmp_path / "a"), model=fresh_model(sd1_dir), progress=False)
    skipped = train(config(images, tmp_path / "b", clip_skip=2), model=fresh_model(sd1_dir), progress=False)
    assert plain.losses != skipped.losses
    assert (plain.embedding.metadata["clip_skip"], skipped.embedding.metadata["clip_skip"]) == ("1", "2")
    assert load_embedding(tmp_path / "b" / "learned_embeds.safetensors").metadata["clip_skip"] == "2"
    with pytest.raises(ConfigError, match="clip_skip= must be a whole number >= 1"):
        config(images, tmp_path / "c", clip_skip=0).validate()


def test_a1111_stepped_learning_rate_changes_the_rate_at_its_steps_and_resumes(sd1_dir, images, tmp_path):
    def vectors(out, **kw):
        result = train(config(images, tmp_path / out, **kw), model=fresh_model(sd1_dir), progress=False)
        return result.embedding.vectors["text_encoder"]

    stepped = vectors("a", lr=None, lr_steps="0.05:3, 1e-9")  # 6 steps: three at 0.05, then (almost) none
    assert torch.allclose(stepped, vectors("b", steps=3, lr=0.05), atol=1e-6)
    assert not torch.allclose(stepped, vectors("c", lr=0.05), atol=1e-4)
    vectors("d", steps=3, save_every=3, lr=None, lr_steps="0.05:3, 1e-9")
    assert torch.equal(vectors("d", steps=6, lr=None, lr_steps="0.05:3, 1e-9", resume=True), stepped)


def test_loss_csv_gives_each_rows_rate_and_epoch_as_the_web_uis_log_and_old_files_still_read(sd1_dir, images,
                                                                                                tmp_path):
    """The web UI's textual_inversion_loss.csv has learn_rate and epoch columns; loss.csv had step and loss only.
    They come after the old columns, so a reader of those (read_loss_log, a column's place) reads both."""
    import csv

    train(config(images, tmp_path / "a", batch=3, lr=TrainConfig.lr, lr_steps="0.05:3, 0.01"),
          model=fresh_model(sd1_dir), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "a" / "loss.csv", newline="")))
    assert list(rows[0]) == ["step", "loss", "learn_rate", "epoch"]
    # (4 pictures, 3 samples a step: step 2's last sample is the 6th, in epoch 2; step 6's the 18th, in epoch 5)
    assert [(r["step"], float(r["learn_rate"]), r["epoch"]) for r in rows] == [
        ("2", 0.05, "2"), ("4", 0.01, "3"), ("6", 0.01, "5")]
    assert [s for s, _ in read_loss_log(tmp_path / "a" / "loss.csv")] == [2, 4, 6]
    (tmp_path / "old.csv").write_text("step,loss\n2,0.500000\n4,0.250000\n")  # (written before these columns)
    assert read_loss_log(tmp_path / "old.csv") == [(2, 0.5), (4, 0.25)]


def test_a_stepped_rate_with_a_last_step_ends_the_run_there_as_the_web_uis(sd1_dir, images, tmp_path, capsys):
    """The web UI stops at the last rate's step ("0.05:2, 0.01:4" trains 4 steps), where textinv ran on to --steps;
    a --steps past it, or --epochs, is refused as saying otherwise."""
    result = train(config(images, tmp_path / "a", steps=TrainConfig.steps, lr=TrainConfig.lr, log_every=1,
                          lr_steps="0.05:2, 0.01:4"), model=fresh_model(sd1_dir), progress=True)
    assert [step for step, _ in result.losses] == [1, 2, 3, 4]
    assert "--lr-steps ends at step 4, its last rate's step" in capsys.readouterr().out
    assert "\nsteps: 4\n" in (tmp_path / "a" / "config.yaml").read_text()  # (so a resume runs to it too)
    with pytest.raises(ConfigError, match=r"ends the run at step 4 .*, before steps=6: leave out steps=, or end"):
        config(images, tmp_path / "b", lr=TrainConfig.lr, lr_steps="0.05:2, 0.01:4").validate()
    with pytest.raises(ConfigError, match="and epochs=2 gives the length too: leave out epochs="):
        config(images, tmp_path / "b", steps=TrainConfig.steps, epochs=2, lr=TrainConfig.lr,
               lr_steps="0.05:2, 0.01:4").validate()
    config(images, tmp_path / "b", steps=3, lr=TrainConfig.lr, lr_steps="0.05:2, 0.01:4").validate()  # (stops first)


def test_a_steps_given_as_the_defaults_number_is_given_beside_a_stepped_rate_that_ends(sd1_dir, images, tmp_path,
                                                                                        capsys):
    """`--steps 3000` (the default's number) given with a stepped rate ending at step 4 is a --steps past its end:
    refused, on the command line, in a config file and from Python, where it read as left out and the run quietly
    took 4 steps. Left out, the run still ends at the stepped rate's last step."""
    from textinv.cli import main

    run = ["train", "--images", str(images), "--token", "<zq>", "--model", str(sd1_dir), "--lr-steps", "0.05:2, 0.01:4"]
    assert main(run + ["--out", str(tmp_path / "a"), "--steps", str(DEFAULT_STEPS)]) == 2
    assert f"ends the run at step 4 (its last rate's step, as the web UI's), before --steps {DEFAULT_STEPS}" in (
        capsys.readouterr().err)
    (tmp_path / "run.yaml").write_text(f"steps: {DEFAULT_STEPS}\n")
    assert main(run + ["--out", str(tmp_path / "b"), "--config", str(tmp_path / "run.yaml")]) == 2
    assert f"before --steps {DEFAULT_STEPS}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=f"before steps={DEFAULT_STEPS}"):
        config(images, tmp_path / "c", steps=DEFAULT_STEPS, lr=TrainConfig.lr, lr_steps="0.05:2, 0.01:4").validate()
    assert TrainConfig().steps is None and TrainConfig(lr_steps="0.05:2, 0.01:4").steps_to_run() == 4
    assert main(run + ["--out", str(tmp_path / "d"), "--batch", "2", "--save-every", "0", "--sample-every", "0"]) == 0
    assert load_embedding(tmp_path / "d" / "learned_embeds.safetensors").metadata["steps"] == "4"


def test_an_lr_given_as_the_defaults_number_beside_a_stepped_rate_is_refused(sd1_dir, images, tmp_path, capsys):
    """`--lr 0.005` (the default's number) given with --lr-steps is refused as any other --lr is, on the command
    line, in a config file and from Python, where it read as left out. Left out, config.yaml records no lr beside
    the stepped rate (the default's 0.005 without one); a flag's --lr-steps replaces a config file's lr; and a run's
    config.yaml an older textinv wrote, with its default lr beside the stepped rate, still resumes."""
    from textinv.cli import main

    run = ["train", "--images", str(images), "--token", "<zq>", "--model", str(sd1_dir), "--batch", "2",
           "--save-every", "0", "--sample-every", "0"]
    stepped = ["--lr-steps", "0.05:2, 0.01:4"]
    assert main(run + stepped + ["--out", str(tmp_path / "a"), "--lr", "0.005"]) == 2
    assert "--lr-steps gives the rates: leave out --lr" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("lr: 0.005\nlr_steps: '0.05:2, 0.01:4'\n")
    assert main(run + ["--out", str(tmp_path / "b"), "--config", str(tmp_path / "run.yaml")]) == 2
    assert "--lr-steps gives the rates: leave out --lr" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"leave out lr= \(got 0.005\)"):
        config(images, tmp_path / "c", lr=DEFAULT_LR, lr_steps="0.05:2, 0.01:4").validate()
    assert TrainConfig().lr is None and TrainConfig(images="x", token="<t>", out="o").validate().lr == DEFAULT_LR
    # left out: none recorded beside the stepped rate, so the file reruns (--config) and resumes as it is
    assert main(run + stepped + ["--out", str(tmp_path / "d")]) == 0
    saved = tmp_path / "d" / "config.yaml"
    assert "\nlr: null\n" in saved.read_text()
    assert main(run + ["--out", str(tmp_path / "e"), "--config", str(saved)]) == 0
    assert main(run + ["--out", str(tmp_path / "f"), "--steps", "2"]) == 0  # (no stepped rate: the default's rate)
    assert f"\nlr: {DEFAULT_LR}\n" in (tmp_path / "f" / "config.yaml").read_text()
    # (a flag's --lr-steps replaces a config file's lr, as a flag's --epochs its steps: the file reruns stepped)
    assert main(run + stepped + ["--out", str(tmp_path / "g"), "--config", str(tmp_path / "f" / "config.yaml")]) == 0
    # a run an older textinv saved (its default lr written beside the stepped rate) resumes, from the CLI and Python
    old = tmp_path / "old"
    assert main(run + stepped + ["--out", str(old), "--save-every", "2", "--steps", "2"]) == 0
    text = (old / "config.yaml").read_text()
    (old / "config.yaml").write_text(text.replace("\nlr: null\n", f"\nlr: {DEFAULT_LR}\n"))
    assert read_run_settings(old)["lr"] is None  # (what a resume from Python reads too)
    assert main(["train", "--out", str(old), "--resume", "--steps", "3"]) == 0
    assert load_embedding(old / "learned_embeds.safetensors").metadata["steps"] == "3"


@pytest.mark.parametrize("text, error", [("0.05:10, fast", "'fast' is not RATE:STEP"),
                                         ("0.05, 0.01:10", "only the last rate may go without a step"),
                                         ("0.05:10, 0.01:5, 0.001", "the steps must rise from 1, got 5 after 10"),
                                         ("0:10, 0.01", "the rate 0 must be > 0"), (" , ", "holds no rate")])
def test_bad_stepped_learning_rates_are_refused_naming_the_part(images, tmp_path, text, error):
    with pytest.raises(ConfigError, match=error):
        config(images, tmp_path / "a", lr_steps=text).validate()
    with pytest.raises(ConfigError, match="lr_steps= is a schedule of its own"):
        config(images, tmp_path / "a", lr_steps="0.05", lr_schedule="cosine").validate()
    with pytest.raises(ConfigError, match="lr_steps= gives the rates: leave out lr="):
        config(images, tmp_path / "a", lr_steps="0.05").validate()  # (the tests' config sets --lr 5e-2)


def test_stepped_rates_read_the_web_uis_to_the_end_and_trailing_comma():
    from textinv.config import parse_lr_steps

    assert parse_lr_steps("0.05:10, 0.005:-1") == parse_lr_steps("0.05:10, 0.005,") == [(0.05, 10), (0.005, None)]


def test_training_can_start_from_an_embedding_file(sd1_dir, images, tmp_path):
    from textinv.formats import LearnedEmbedding, save_embedding

    start = torch.randn(2, 32)
    path = save_embedding(LearnedEmbedding("<old>", {"text_encoder": start}), tmp_path / "old.pt", "a1111")[0]
    result = train(config(images, tmp_path / "a", vectors=2, init=None, init_embedding=str(path), lr=1e-9, steps=1),
                   model=fresh_model(sd1_dir), progress=False)
    assert torch.allclose(result.embedding.vectors["text_encoder"], start, atol=1e-5)  # (one step at a rate of ~0)
    assert result.embedding.metadata["init"] == f"embedding {path.name}"  # (not where it lies)
    moved = train(config(images, tmp_path / "b", vectors=2, init=None, init_embedding=str(path)),
                  model=fresh_model(sd1_dir), progress=False).embedding.vectors["text_encoder"]
    assert not torch.allclose(moved, start, atol=1e-3)  # and it learns from there
    with pytest.raises(ConfigError, match=r"has 2 vector\(s\) per encoder, vectors=3 asks for 3: leave vectors= "
                                          r"out \(it is then the file's count\) or give vectors=2$"):
        train(config(images, tmp_path / "c", vectors=3, init=None, init_embedding=str(path)),
              model=fresh_model(sd1_dir), progress=False)
    assert not (tmp_path / "c").exists()  # (refused before the model loads, nothing written)
    wide = save_embedding(LearnedEmbedding("<w>", {"text_encoder": torch.randn(1, 1024)}), tmp_path / "w.pt", "a1111")[0]
    with pytest.raises(FormatError, match="has width 1024"):
        train(config(images, tmp_path / "d", init=None, init_embedding=str(wide)), model=fresh_model(sd1_dir),
              progress=False)
    long = save_embedding(LearnedEmbedding("<l>", {"text_encoder": torch.randn(76, 32)}), tmp_path / "l.pt", "a1111")[0]
    with pytest.raises(ConfigError, match=r"has 76 vectors per encoder, more than a 77-token prompt holds"):
        train(config(images, tmp_path / "g", init=None, init_embedding=str(long)), progress=False)
    with pytest.raises(FormatError):  # an unreadable file: said before the model loads
        train(config(images, tmp_path / "e", init=None, init_embedding=str(images / "missing.pt")), progress=False)
    with pytest.raises(ConfigError, match="leave out init="):
        config(images, tmp_path / "f", init_embedding=str(path)).validate()
    with pytest.raises(ConfigError, match="init_embedding= needs an embedding file"):
        config(images, tmp_path / "f", init=None, init_embedding=" ").validate()


def test_vectors_left_out_are_the_init_embeddings_count(sd1_dir, images, tmp_path):
    """The diffusers script's --num_vectors had to be given again as --vectors to start from a saved embedding of
    several vectors: left out, it is the file's count now, which config.yaml records (a resume reads it there)."""
    from textinv.formats import LearnedEmbedding, save_embedding
    from textinv.run_folder import read_run_settings

    start = torch.randn(3, 32)
    path = save_embedding(LearnedEmbedding("<old>", {"text_encoder": start}), tmp_path / "old.pt", "a1111")[0]
    settings = dict(init=None, init_embedding=str(path), lr=1e-9, save_every=1)
    result = train(config(images, tmp_path / "a", steps=1, **settings), model=fresh_model(sd1_dir), progress=False)
    assert torch.allclose(result.embedding.vectors["text_encoder"], start, atol=1e-5)
    assert result.embedding.metadata["vectors"] == "3"
    assert read_run_settings(tmp_path / "a")["vectors"] == 3
    resumed = train(config(images, tmp_path / "a", steps=2, resume=True, **settings), model=fresh_model(sd1_dir),
                    progress=False)  # (left out again: the run's 3, not a change of settings)
    assert resumed.embedding.vectors["text_encoder"].shape == (3, 32)
    assert config(images, tmp_path / "b").validate().vectors == 1  # (without a file: 1, as before)


def test_a_result_can_be_refined_in_place_with_overwrite(sd1_dir, images, tmp_path):
    """--init-embedding OUT/learned_embeds.safetensors --out OUT --overwrite: the file is read, kept while the old
    run's other files are cleared (so after a crash before the first checkpoint the same command starts again from
    it), and replaced by the refined result, which equals a refinement elsewhere."""
    import shutil

    first = train(config(images, tmp_path / "a", steps=3, save_every=0), model=fresh_model(sd1_dir), progress=False)
    learned = tmp_path / "a" / "learned_embeds.safetensors"
    shutil.copy(learned, tmp_path / "copy.safetensors")
    refine = dict(init=None, steps=4, save_every=2)

    def crash(step):
        raise RuntimeError("the machine went down")

    with pytest.raises(RuntimeError, match="went down"):
        train(config(images, tmp_path / "a", init_embedding=str(learned), overwrite=True, **refine),
              model=fresh_model(sd1_dir), progress=False, on_step=crash)
    assert learned.exists()
    again = train(config(images, tmp_path / "a", init_embedding=str(learned), overwrite=True, **refine),
                  model=fresh_model(sd1_dir), progress=False)
    elsewhere = train(config(images, tmp_path / "b", init_embedding=str(tmp_path / "copy.safetensors"), **refine),
                      model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(again.embedding.vectors["text_encoder"], elsewhere.embedding.vectors["text_encoder"])
    assert not torch.equal(again.embedding.vectors["text_encoder"], first.embedding.vectors["text_encoder"])
    assert torch.equal(load_embedding(learned).vectors["text_encoder"], again.embedding.vectors["text_encoder"])


def test_a_run_started_from_an_embedding_file_resumes_without_it(sd1_dir, images, tmp_path):
    from textinv.formats import LearnedEmbedding, save_embedding

    path = save_embedding(LearnedEmbedding("<old>", {"text_encoder": torch.randn(2, 32)}), tmp_path / "old.pt",
                          "a1111")[0]
    settings = dict(vectors=2, init=None, init_embedding=str(path))
    straight = train(config(images, tmp_path / "a", **settings), model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "b", steps=3, save_every=3, **settings), model=fresh_model(sd1_dir),
          progress=False)
    path.unlink()  # the checkpoint holds the vectors now
    resumed = train(config(images, tmp_path / "b", resume=True, **settings), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.embedding.metadata["init"] == f"embedding {path.name}"  # (not where it lies)
    with pytest.raises(FormatError, match="^init_embedding=: "):  # a fresh run needs it, and says which flag
        train(config(images, tmp_path / "c", **settings), model=fresh_model(sd1_dir), progress=False)


def cut_out(images, folder, keep=lambda a: a):
    """RGBA copies of `images` whose opaque part is `keep(alpha)` of the left part of the bright square, wider in
    each picture (the rest transparent: asymmetric, so a mirrored picture's weights differ, and every picture's
    differ from the others')."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    for i, path in enumerate(sorted(images.glob("*.png"))):
        rgb = np.array(Image.open(path).convert("RGB"))
        size = rgb.shape[0]
        alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)
        alpha[size // 4: 3 * size // 4, size // 4: size // 2 + 2 * i] = 255
        Image.fromarray(np.dstack([rgb, keep(alpha)]), "RGBA").save(folder / path.name)
    return folder


def test_weighted_loss_ignores_pixels_of_weight_zero_and_keeps_the_plain_scale():
    from diffusers import DDPMScheduler

    from textinv.losses import denoising_loss

    scheduler = DDPMScheduler()
    g = torch.Generator().manual_seed(0)
    latents, noise, pred = (torch.randn(3, 4, 6, 6, generator=g) for _ in range(3))
    t = torch.tensor([5, 500, 995])
    weight = torch.zeros(3, 1, 6, 6)
    weight[:, :, :, :3] = 1.0  # the left half counts
    other = pred.clone()
    other[..., 3:] += 10.0  # a worse prediction where the weight is 0
    for kind in ("epsilon", "v_prediction"):
        a, b = (denoising_loss(scheduler, p, latents, noise, t, kind, pixel_weight=weight) for p in (pred, other))
        torch.testing.assert_close(a, b)
        left = denoising_loss(scheduler, pred[..., :3], latents[..., :3], noise[..., :3], t, kind)
        torch.testing.assert_close(a, left)  # the plain mean over the weighted pixels, not a smaller number
        torch.testing.assert_close(denoising_loss(scheduler, pred, latents, noise, t, kind,
                                                  pixel_weight=torch.full_like(weight, 0.3)),
                                   denoising_loss(scheduler, pred, latents, noise, t, kind))


def test_alpha_mask_weighs_each_drawn_picture_by_its_own_alpha(sd1_dir, images, tmp_path, monkeypatch):
    from textinv.data import latent_weights, load_training_images

    cut = cut_out(images, tmp_path / "cut")
    for i, path in enumerate(sorted(cut.glob("*.png"))):
        path.with_suffix(".txt").write_text(f"{{}} number {i}")  # the caption tells which picture a sample is
    real, drawn = train_module._draw, []

    model = fresh_model(sd1_dir)

    def recording(c, *args, **kwargs):
        part = real(c, *args, **kwargs)
        texts = model.pipeline.tokenizer.batch_decode(part["ids"][0], skip_special_tokens=True)
        drawn.extend(zip(texts, part["pixel_weight"]))
        return part

    monkeypatch.setattr(train_module, "_draw", recording)
    masked = train(config(cut, tmp_path / "a", alpha_mask=True, steps=8), model=model, progress=False)
    pictures = load_training_images(sorted(cut.glob("*.png")), model.resolution, use_alpha=True)
    known = latent_weights(pictures, drawn[0][1].shape[-2:], cut)  # the pictures', then the mirrored pictures'
    assert len(drawn) == 16 and len({known[i].sum().item() for i in range(4)}) == 4  # four different cut-outs
    mirrored = 0
    for text, weight in drawn:
        i = int(text.split()[-1])
        assert torch.equal(weight, known[i]) or torch.equal(weight, known[i + 4]), text  # its own picture's
        mirrored += torch.equal(weight, known[i + 4])
    assert 0 < mirrored < 16  # plain and mirrored pictures both drawn, the mirror with mirrored weights
    monkeypatch.undo()
    plain = train(config(cut, tmp_path / "b", steps=8), model=fresh_model(sd1_dir), progress=False)
    assert not torch.allclose(masked.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    assert "alpha_mask: true" in (tmp_path / "a" / "config.yaml").read_text()


def test_alpha_mask_on_opaque_pictures_learns_what_a_plain_run_learns(sd1_dir, images, tmp_path):
    opaque = cut_out(images, tmp_path / "opaque", keep=lambda a: a * 0 + 255)
    runs = [train(config(opaque, tmp_path / name, alpha_mask=mask), model=fresh_model(sd1_dir), progress=False)
            for name, mask in (("a", True), ("b", False))]
    torch.testing.assert_close(runs[0].embedding.vectors["text_encoder"], runs[1].embedding.vectors["text_encoder"],
                               rtol=1e-5, atol=1e-6)


def test_shuffled_tags_reach_the_training_prompts_and_resume_exactly(sd1_dir, images, tmp_path, monkeypatch):
    for i, path in enumerate(sorted(images.glob("*.png"))):
        path.with_suffix(".txt").write_text(f"{{}}, red square, dark background, picture {i}, small")
    banks = recorded_caption_banks(monkeypatch)
    shuffled = train(config(images, tmp_path / "a", shuffle_tags=True, tag_dropout=0.3, keep_tags=1),
                     model=fresh_model(sd1_dir), progress=False)
    texts = banks[-1].texts
    assert len(texts) == 4 * 256 and all(t.split(",")[0] == "<zq>" for t in texts)  # the kept first tag
    assert len(set(texts)) > 150 and any("small" not in t for t in texts)  # of 4 x 65 possible
    plain = train(config(images, tmp_path / "b"), model=fresh_model(sd1_dir), progress=False)
    assert len(banks[-1].texts) == 4
    assert not torch.equal(shuffled.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    tags = dict(shuffle_tags=True, tag_dropout=0.3, keep_tags=1, save_every=3)  # the bank is rebuilt the same
    train(config(images, tmp_path / "c", steps=3, **tags), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, tmp_path / "c", resume=True, **tags), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], shuffled.embedding.vectors["text_encoder"])
    with pytest.raises(ConfigError, match="tag_dropout= is a chance in"):
        config(images, tmp_path / "d", tag_dropout=1.0).validate()


def test_caption_dropout_drops_samples_at_its_rate_and_off_draws_what_runs_always_drew():
    """kohya's caption_dropout_rate: each sample's caption dropped with that chance, drawn from the run's seeded
    generator after everything else, so a run without it draws what it always drew."""
    from textinv.batches import BatchSampler

    dropping = BatchSampler(4, 25, flip=True, seed=0, caption_dropout=0.3)
    plain = BatchSampler(4, 25, flip=True, seed=0)
    dropped = []
    for _ in range(50):
        drawn, before = dropping.draw(40, (1, 2, 2), (0, 1000)), plain.draw(40, (1, 2, 2), (0, 1000))
        assert "dropped" not in before and all(torch.equal(drawn[k], before[k]) for k in before)
        dropped.append(drawn["dropped"])
        plain.generator.set_state(dropping.generator.get_state())  # (past the dropout's own draws)
    share = torch.cat(dropped).float().mean().item()  # of 2000 samples
    assert abs(share - 0.3) < 0.03, share
    again = BatchSampler(4, 25, flip=True, seed=0, caption_dropout=0.3)
    assert torch.equal(again.draw(40, (1, 2, 2), (0, 1000))["dropped"], dropped[0])  # (seeded)


def test_caption_dropout_every_n_epochs_drops_exactly_those_epochs_and_resumes_mid_epoch():
    """kohya's caption_dropout_every_n_epochs N: every sample of epochs N, 2N, ... (counted from 1, as kohya's
    current_epoch) is dropped, also where an epoch ends inside a batch; a sampler restored from a checkpoint's
    state goes on dropping what the uninterrupted one drops."""
    from textinv.batches import BatchSampler

    sampler = BatchSampler(3, 2, flip=False, seed=1, dropout_every=2)  # epochs of 6 samples, batches of 4
    dropped = torch.cat([sampler.draw(4, (1,), (0, 10))["dropped"] for _ in range(9)])  # 6 epochs
    epochs = torch.arange(36) // 6 + 1
    assert torch.equal(dropped, epochs % 2 == 0)
    saved = BatchSampler(3, 2, flip=False, seed=1, dropout_every=4, caption_dropout=0.2)
    for _ in range(4):
        saved.draw(4, (1,), (0, 10))
    restored = BatchSampler(3, 2, flip=False, seed=1, dropout_every=4, caption_dropout=0.2)
    restored.load_state_dict(saved.state_dict())
    for _ in range(5):
        a, b = saved.draw(4, (1,), (0, 10)), restored.draw(4, (1,), (0, 10))
        assert torch.equal(a["dropped"], b["dropped"]) and torch.equal(a["image"], b["image"])


def test_a_dropped_caption_trains_on_the_empty_prompt_and_resumes_exactly(sd1_dir, images, tmp_path, monkeypatch):
    """A dropped sample's prompt is the empty one, with no token, template, prefix or suffix: kohya's
    process_caption empties the caption and skips its textual inversion's replacements (the templates among
    them) then. With --caption-dropout-every 2, 4 pictures and 12 samples, exactly the second epoch (samples 4 to
    7) is; a run stopped and resumed learns what the uninterrupted run learns."""
    for path in sorted(images.glob("*.png"))[:2]:  # (two with a caption file, two with the templates)
        path.with_suffix(".txt").write_text("{}, red square")
    picks = recorded_results(monkeypatch, batches.CaptionBank, "pick")
    banks = recorded_caption_banks(monkeypatch)
    every = train(config(images, tmp_path / "a", caption_dropout_every=2, caption_prefix="art,"),
                  model=fresh_model(sd1_dir), progress=False)
    empty = banks[-1].empty[0]
    assert banks[-1].texts[-1] != "" and (empty[0] == empty[0, -1]).sum() >= 75  # (start, end and padding)
    rows = torch.cat([ids[0] for ids in picks])  # (12, 77)
    assert [bool((row == empty[0]).all()) for row in rows] == [False] * 4 + [True] * 4 + [False] * 4
    plain = train(config(images, tmp_path / "b", caption_prefix="art,"), model=fresh_model(sd1_dir), progress=False)
    assert not torch.equal(every.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    dropout = dict(caption_dropout=0.4, caption_dropout_every=3, save_every=3)
    straight = train(config(images, tmp_path / "c", **dropout), model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "d", steps=3, **dropout), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, tmp_path / "d", resume=True, **dropout), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses[-1] == straight.losses[-1]


def test_a_caption_naming_a_token_the_model_has_saved_in_it_trains_on_all_its_vectors(sd1_dir, images, tmp_path,
                                                                                       monkeypatch):
    """On a model the diffusers script saved whole (--save_as_full_pipeline --num_vectors 2: `<cat-toy>` and
    `<cat-toy>_1` in its tokenizer), a caption naming `<cat-toy>` trained the new token beside its first vector
    alone, where generate, the grids and diffusers' pipelines read both (`tokens.saved_tokens`)."""
    from conftest import saved_whole

    pipe = saved_whole(sd1_dir, tmp_path / "whole")
    for path in images.glob("*.png"):
        path.with_suffix(".txt").write_text("{} beside <cat-toy>, red square")
    banks = recorded_caption_banks(monkeypatch)
    train(config(images, tmp_path / "run", model=str(tmp_path / "whole"), vectors=2, steps=1), progress=False)
    saved = pipe.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"])
    assert banks[0].texts and all(text.endswith("beside <cat-toy> <cat-toy>_1, red square") for text in banks[0].texts)
    for row in banks[0].ids[0]:  # (each caption's ids: both, one after the other)
        at = row.tolist().index(saved[0])
        assert row[at + 1] == saved[1] and (row == saved[0]).sum() == (row == saved[1]).sum() == 1


@pytest.mark.parametrize("given, said", [
    (dict(caption_dropout=1.5), r"caption_dropout= is a chance in \[0, 1\), got 1.5"),
    (dict(caption_dropout=-0.1), r"caption_dropout= is a chance in \[0, 1\), got -0.1"),
    (dict(caption_dropout=1.0), "caption_dropout= at 1 drops every caption, so the vectors would learn nothing"),
    (dict(caption_dropout_every=-2), r"caption_dropout_every= must be a whole number >= 0 \(0: never\), got -2"),
    (dict(caption_dropout_every=1), "caption_dropout_every= at 1 drops the captions of every epoch"),
])
def test_caption_dropout_that_cannot_be_trained_is_refused_by_name(given, said, images, tmp_path):
    with pytest.raises(ConfigError, match=said):
        config(images, tmp_path / "o", **given).validate()


def _fp16_parts():
    """Two encoders' stand-ins of (4, 3) vectors each, their AdamW optimizer and a GradScaler at scale 1024, started
    as a scaled loss starts it: what `_step_skipping_overflows` steps."""
    from types import SimpleNamespace

    encoders = [SimpleNamespace(vectors=torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator()
                                                                       .manual_seed(i)))) for i in range(2)]
    optimizer = torch.optim.AdamW([e.vectors for e in encoders], lr=0.1, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # (as a scaled loss would: the scale starts here)
    return encoders, optimizer, scaler


def test_an_fp16_overflow_skips_only_its_own_concepts_step():
    """Under fp16 loss scaling, a concept whose gradients overflowed keeps its vectors and Adam moments, while the
    other concepts (rows of the same tensors) take the step their own runs would; the scale is lowered."""
    from textinv.optimizers import _step_skipping_overflows

    rows = [[slice(0, 2)] * 2, [slice(2, 4)] * 2]  # concept A: rows 0-1 of both encoders; B: rows 2-3

    def step(encoders, optimizer, scaler, overflow_in_a: bool):
        for i, e in enumerate(encoders):
            e.vectors.grad = torch.full((4, 3), 1024.0 * (i + 1))  # scaled gradients
            if overflow_in_a:
                e.vectors.grad[0, 1] = float("inf")
        scaler.unscale_(optimizer)
        _step_skipping_overflows(scaler, optimizer, encoders, rows)

    encoders, optimizer, scaler = _fp16_parts()
    step(encoders, optimizer, scaler, False)  # a normal step first, so there are moments to keep
    before = [e.vectors.detach().clone() for e in encoders]
    moments = [optimizer.state[e.vectors]["exp_avg"].clone() for e in encoders]
    step(encoders, optimizer, scaler, True)
    assert scaler.get_scale() < 1024.0
    reference, ref_optimizer, ref_scaler = _fp16_parts()  # B's own run: two finite steps
    step(reference, ref_optimizer, ref_scaler, False)
    step(reference, ref_optimizer, ref_scaler, False)
    for e, ref, old, m in zip(encoders, reference, before, moments):
        assert torch.equal(e.vectors[:2], old[:2]) and torch.equal(optimizer.state[e.vectors]["exp_avg"][:2], m[:2])
        torch.testing.assert_close(e.vectors[2:], ref.vectors[2:])
        assert not torch.equal(e.vectors[2:], old[2:])
    encoders, optimizer, scaler = _fp16_parts()  # every concept overflowed: nothing moves, as GradScaler does
    start = [e.vectors.detach().clone() for e in encoders]
    for e in encoders:
        e.vectors.grad = torch.full((4, 3), float("inf"))
    scaler.unscale_(optimizer)
    _step_skipping_overflows(scaler, optimizer, encoders, rows)
    assert all(torch.equal(e.vectors, s) for e, s in zip(encoders, start)) and scaler.get_scale() < 1024.0


def test_a_concept_that_skipped_an_fp16_step_alone_goes_on_with_its_own_runs_adam_step_count():
    """Adam's bias correction divides by 1 - beta^t, t the steps taken. A concept that skipped a step alone (its
    gradients overflowed) has taken one step fewer than the shared count says, as in its own run, where GradScaler
    skips the whole step: its next steps must be its own run's, not ones corrected for a step it never took."""
    from textinv.optimizers import _step_skipping_overflows

    rows = [[slice(0, 2)] * 2, [slice(2, 4)] * 2]  # concept A: rows 0-1 of both encoders; B: rows 2-3

    def step(encoders, optimizer, scaler, overflow: slice | None, skipped, k: int):
        for i, e in enumerate(encoders):
            e.vectors.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * k + i)) * scaler.get_scale()
            if overflow is not None:
                e.vectors.grad[overflow] = float("inf")
        scaler.unscale_(optimizer)
        _step_skipping_overflows(scaler, optimizer, encoders, rows, skipped)

    joint, optimizer, scaler = _fp16_parts()
    skipped = [0, 0]
    for k, overflow in enumerate([None, slice(0, 2), None, None]):  # A overflows alone at the second step
        step(joint, optimizer, scaler, overflow, skipped, k)
    assert skipped == [1, 0]
    own, own_optimizer, own_scaler = _fp16_parts()  # A's own run: its second step skipped whole, by GradScaler
    own_skipped = [0, 0]
    for k, overflow in enumerate([None, slice(None), None, None]):
        step(own, own_optimizer, own_scaler, overflow, own_skipped, k)
    assert own_skipped == [0, 0] and own_optimizer.state[own[0].vectors]["step"] == 3
    other, other_optimizer, other_scaler = _fp16_parts()  # B's own run: four steps
    for k in range(4):
        step(other, other_optimizer, other_scaler, None, [0, 0], k)
    for e, mine, theirs in zip(joint, own, other):
        torch.testing.assert_close(e.vectors[:2], mine.vectors[:2], rtol=0, atol=0)
        torch.testing.assert_close(e.vectors[2:], theirs.vectors[2:], rtol=0, atol=0)


def test_overwrite_keeps_an_init_embedding_with_its_partner_and_in_a_concept_folder(tmp_path):
    """clear_run keeps the --init-embedding file wherever the old run put it: an SDXL pair's second file beside
    it, or inside one concept's folder of a run of several (that folder's other files go)."""
    from textinv.run_folder import clear_run

    out = tmp_path / "out"
    (out / "dg" / "checkpoints").mkdir(parents=True)
    (out / "ct").mkdir()
    for name in ("config.yaml", "loss.csv", "learned_embeds.safetensors", "learned_embeds_2.safetensors", "notes.md",
                 "dg/learned_embeds.safetensors", "dg/checkpoints/step-2.pt", "ct/learned_embeds.safetensors"):
        (out / name).write_text("x")
    previous = {"concepts": ["a=<dg>", "b=<ct>"], "out": str(out)}
    clear_run(out, previous, keep=out / "dg" / "learned_embeds.safetensors")
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["dg/learned_embeds.safetensors", "notes.md"]
    for name in ("learned_embeds.safetensors", "learned_embeds_2.safetensors", "config.yaml"):
        (out / name).write_text("x")
    clear_run(out, {"token": "<xq>", "images": "a"}, keep=out / "learned_embeds.safetensors")
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == ["dg/learned_embeds.safetensors", "learned_embeds.safetensors", "learned_embeds_2.safetensors",
                    "notes.md"]


def test_a_saved_run_older_than_a_setting_resumes_only_with_its_default(sd1_dir, images, tmp_path):
    train(config(images, tmp_path / "a", steps=2, save_every=1), model=fresh_model(sd1_dir), progress=False)
    saved = tmp_path / "a" / "config.yaml"
    saved.write_text("\n".join(line for line in saved.read_text().splitlines()
                               if not line.startswith("alpha_mask:")) + "\n")  # as a run saved before it existed
    with pytest.raises(ConfigError, match="alpha_mask: False -> True"):
        train(config(images, tmp_path / "a", steps=3, save_every=1, alpha_mask=True, resume=True),
              model=fresh_model(sd1_dir), progress=False)
    assert train(config(images, tmp_path / "a", steps=3, save_every=1, resume=True), model=fresh_model(sd1_dir),
                 progress=False).steps == 3


def test_a_shuffled_long_caption_that_loses_its_token_names_keep_tags(sd1_dir, images, tmp_path):
    for path in sorted(images.glob("*.png")):
        path.with_suffix(".txt").write_text("{}, " + ", ".join(f"tag{i} word{i} more{i}" for i in range(30)))
    with pytest.raises(ConfigError, match="--keep-tags 1 keeps a first tag"):
        train(config(images, tmp_path / "a", shuffle_tags=True), model=fresh_model(sd1_dir), progress=False)
    assert train(config(images, tmp_path / "b", shuffle_tags=True, keep_tags=1, steps=1),
                 model=fresh_model(sd1_dir), progress=False).steps == 1


def _nan_loss_after(monkeypatch, calls: int) -> None:
    """Make the training loss NaN from its (calls + 1)th evaluation on (and so the vectors, one step later)."""
    real, seen = train_module.diffusion_loss, []

    def poisoned(*a, **k):
        seen.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(seen) > calls else loss

    monkeypatch.setattr(train_module, "diffusion_loss", poisoned)


def test_vectors_gone_non_finite_between_loss_checks_draw_no_sample_grid(sd1_dir, images, tmp_path, monkeypatch):
    """The vectors go NaN at step 5, the loss is checked every 4 steps, samples are drawn every 3: the sample step 6
    finds them broken and stops there (it drew a grid of NaN vectors, and the run went on to step 8)."""
    _nan_loss_after(monkeypatch, 4)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"non-finite .* by step 6; the last good vectors \(step 4\)"):
        train(config(images, out, steps=12, log_every=4, save_every=0, sample_every=3, sample_steps=2),
              model=fresh_model(sd1_dir), progress=False)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000000.png", "step-000003.png"]


def test_a_run_stopped_by_a_non_finite_loss_writes_no_step_file_of_an_earlier_steps_vectors(sd1_dir, images,
                                                                                           tmp_path, monkeypatch):
    """The loss goes NaN at step 5 and the check at step 6 stops the run, saving the last good vectors (step 4's):
    they were also written as step 6's embedding, which a user picking steps by their names would take."""
    _nan_loss_after(monkeypatch, 4)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="non-finite"):
        train(config(images, out, steps=8, log_every=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    names = sorted(p.name for p in (out / "embeddings").iterdir())
    assert names == ["learned_embeds-steps-2.safetensors", "learned_embeds-steps-4.safetensors"]


def test_each_saved_step_keeps_its_embedding_and_a_resumed_run_writes_the_same(sd1_dir, images, tmp_path):
    straight = train(config(images, tmp_path / "a", steps=6, save_every=2, keep_checkpoints=3),
                     model=fresh_model(sd1_dir), progress=False)
    steps = tmp_path / "a" / "embeddings"
    names = [f"learned_embeds-steps-{n}.safetensors" for n in (2, 4, 6)]
    assert sorted(p.name for p in steps.iterdir()) == sorted(names)
    for n, name in zip((2, 4, 6), names):
        emb = load_embedding(steps / name)
        saved = torch.load(tmp_path / "a" / "checkpoints" / f"step-{n:06d}.pt", weights_only=True)["vectors"][0]
        assert emb.metadata["steps"] == str(n) and emb.token == "<zq>"
        assert torch.equal(emb.vectors["text_encoder"], saved[-1:])  # the step's vectors, not the last ones
    assert torch.equal(load_embedding(steps / names[-1]).vectors["text_encoder"],
                       straight.embedding.vectors["text_encoder"])
    train(config(images, tmp_path / "b", steps=4, save_every=2), model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "b", steps=6, save_every=2, resume=True), model=fresh_model(sd1_dir),
          progress=False)
    resumed = sorted((tmp_path / "b" / "embeddings").iterdir())
    assert [p.name for p in resumed] == sorted(names)
    for mine, theirs in zip(resumed, sorted(steps.iterdir())):  # (safetensors orders its metadata at random)
        a, b = load_embedding(mine), load_embedding(theirs)
        assert torch.equal(a.vectors["text_encoder"], b.vectors["text_encoder"]) and a.metadata == b.metadata


def test_step_embeddings_are_named_as_the_formats_tools_name_them_and_can_be_left_out(sd1_dir, images, tmp_path):
    train(config(images, tmp_path / "a", steps=2, save_every=1, format="a1111"), model=fresh_model(sd1_dir),
          progress=False)
    assert sorted(p.name for p in (tmp_path / "a" / "embeddings").iterdir()) == ["zq-1.pt", "zq-2.pt"]
    assert load_embedding(tmp_path / "a" / "embeddings" / "zq-1.pt").metadata["steps"] == "1"
    # each holds the web UI's step name, as its own step files do (diffusers loads a .pt by it); the run's file and
    # textinv's reading (its record in the file), which an embedding axis over the steps draws each by, keep <zq>
    assert [torch.load(tmp_path / "a" / name, weights_only=True)["name"]
            for name in ("zq.pt", "embeddings/zq-1.pt", "embeddings/zq-2.pt")] == ["<zq>", "zq-1", "zq-2"]
    from textinv import xyz
    from textinv.config import GenerateConfig

    steps = xyz.embedding_values([str(tmp_path / "a" / "embeddings" / "*.pt")],
                                 GenerateConfig(prompt=["a photo of <zq>"]))
    assert [(f.path.split(os.sep)[-1], f.tokens, load_embedding(f.path).token) for f in steps] == [
        ("zq-1.pt", None, "<zq>"), ("zq-2.pt", None, "<zq>")]
    train(config(images, tmp_path / "b", steps=2, save_every=1, step_embeddings=False), model=fresh_model(sd1_dir),
          progress=False)
    assert not (tmp_path / "b" / "embeddings").exists()


def test_overwrite_deletes_the_step_embeddings_but_not_a_users_file_or_the_init_embedding(sd1_dir, images, tmp_path):
    out = tmp_path / "out"
    train(config(images, out, steps=3, save_every=1), model=fresh_model(sd1_dir), progress=False)
    (out / "embeddings" / "my-favourite.pt").write_bytes(b"mine")
    (out / "embeddings" / "any-3.pt").write_bytes(b"mine too")  # (named like a step file of no token of the run)
    start = out / "embeddings" / "learned_embeds-steps-2.safetensors"
    vectors = load_embedding(start).vectors["text_encoder"]
    result = train(config(images, out, steps=1, save_every=1, init=None, init_embedding=str(start), overwrite=True),
                   model=fresh_model(sd1_dir), progress=False)
    left = sorted(p.name for p in (out / "embeddings").iterdir())
    assert left == ["any-3.pt", "learned_embeds-steps-1.safetensors", "learned_embeds-steps-2.safetensors",
                    "my-favourite.pt"]
    assert torch.equal(load_embedding(start).vectors["text_encoder"], vectors)  # the file it started from
    assert not torch.equal(result.embedding.vectors["text_encoder"], vectors)


def _mixed_pictures(folder, alpha=False):
    """Pictures of three proportions (2:1, 1:2, square), so --buckets gives three latent shapes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in {"wide": (48, 24), "tall": (24, 48), "square": (32, 32)}.items():
        arr = rng.integers(0, 255, (h, w, 4 if alpha else 3), dtype=np.uint8)
        if alpha:
            arr[..., 3] = 0
            arr[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 3] = 255
        Image.fromarray(arr).save(folder / f"{name}.png")
    return folder


def test_buckets_train_each_picture_at_its_own_shape_and_resume_exactly(sd1_dir, tmp_path, monkeypatch):
    pictures = _mixed_pictures(tmp_path / "mixed")
    seen = []
    real = train_module.diffusion_loss

    def spy(model, scheduler, latents, *a, **k):
        seen.append(tuple(latents.shape[-2:]))
        return real(model, scheduler, latents, *a, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    straight = train(config(pictures, tmp_path / "a", steps=6, batch=3, save_every=2, buckets=True),
                     model=fresh_model(sd1_dir), progress=False)
    assert set(seen) == {(6, 10), (10, 6), (8, 8)}  # 20x12, 12x20, 16x16 pixels: the buckets of 2:1, 1:2, 1:1
    monkeypatch.setattr(train_module, "diffusion_loss", real)
    square = train(config(pictures, tmp_path / "s", steps=6, batch=3), model=fresh_model(sd1_dir), progress=False)
    assert not torch.equal(straight.embedding.vectors["text_encoder"], square.embedding.vectors["text_encoder"])
    train(config(pictures, tmp_path / "b", steps=4, batch=3, save_every=2, buckets=True), model=fresh_model(sd1_dir),
          progress=False)
    resumed = train(config(pictures, tmp_path / "b", steps=6, batch=3, save_every=2, buckets=True, resume=True),
                    model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    assert resumed.losses == straight.losses


def test_buckets_on_square_pictures_change_nothing(sd1_dir, images, tmp_path):
    plain = train(config(images, tmp_path / "a", steps=4), model=fresh_model(sd1_dir), progress=False)
    bucketed = train(config(images, tmp_path / "b", steps=4, buckets=True), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(plain.embedding.vectors["text_encoder"], bucketed.embedding.vectors["text_encoder"])


def test_grouped_loss_is_each_shapes_loss_in_the_batchs_order(sd1_dir, monkeypatch):
    from textinv import losses
    from textinv.losses import diffusion_loss
    from textinv.train import grouped_loss

    model = fresh_model(sd1_dir)
    encodings = []
    real_encode = losses.encode_text  # (where `encode_captions` looks it up)
    monkeypatch.setattr(losses, "encode_text", lambda m, ids, *a: encodings.append(len(ids[0])) or
                        real_encode(m, ids, *a))
    scheduler = model.noise_scheduler()
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (6, 10), (8, 8), (10, 6), (6, 10)]
    latents = [torch.randn(4, *s, generator=g) for s in shapes]
    noise = [torch.randn(4, *s, generator=g) for s in shapes]
    steps = torch.randint(0, 1000, (5,), generator=g)
    ids = [torch.randint(0, 40, (5, 77), generator=g)]
    with torch.no_grad():
        got = grouped_loss(model, scheduler, latents, noise, steps, ids)
        assert encodings == [5]  # the text encoder ran once, on the whole batch; the UNet once per shape
        for group in ([0, 2], [1, 4], [3]):
            at = torch.tensor(group)
            want = diffusion_loss(model, scheduler, torch.stack([latents[n] for n in group]),
                                  torch.stack([noise[n] for n in group]), steps[at], [ids[0][at]])
            assert torch.equal(got[at], want)
        same = [torch.stack([latents[0], latents[2]])], [torch.stack([noise[0], noise[2]])]
        at = torch.tensor([0, 2])
        assert torch.equal(grouped_loss(model, scheduler, same[0][0], same[1][0], steps[at], [ids[0][at]]),
                           grouped_loss(model, scheduler, list(same[0][0]), list(same[1][0]), steps[at], [ids[0][at]]))


def test_grouped_loss_sends_its_indices_to_the_device_without_a_host_sync(sd1_dir, monkeypatch):
    """`torch.tensor(list, device="cuda")` copies from pageable memory and waits for the GPU: once per shape, each
    --buckets step would wait for the previous shape's UNet before launching the next. The indices are made on the
    host and go through `_to_device` (pinned, non-blocking), as the draws do."""
    import sys

    from textinv.train import grouped_loss

    model = fresh_model(sd1_dir)
    made_on_device, moved = [], []
    real_tensor, real_move = torch.tensor, train_module._to_device

    def tensor(*a, **kw):
        if kw.get("device") is not None and sys._getframe(1).f_code.co_filename == train_module.__file__:
            made_on_device.append(a[0])
        return real_tensor(*a, **kw)

    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(train_module, "_to_device", lambda t, device: moved.append(t.tolist()) or real_move(t, device))
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(4, *s, generator=g) for s in [(8, 8), (6, 10), (8, 8)]]
    with torch.no_grad():
        grouped_loss(model, model.noise_scheduler(), latents, [torch.randn_like(x) for x in latents],
                     torch.tensor([5, 500, 900]), [torch.zeros(3, 77, dtype=torch.long)])
    assert made_on_device == [] and moved == [[0, 2], [1], [0, 2, 1]]


def test_buckets_with_alpha_masks_and_sdxl(tmp_path):
    from textinv.tiny import build_tiny_xl_pipeline

    folder = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(folder)
    pictures = _mixed_pictures(tmp_path / "cut", alpha=True)
    model = load_model(folder)
    seen = []
    real = train_module.diffusion_loss

    def spy(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k):
        seen.append((tuple(latents.shape[-2:]), time_ids[:, 4:].tolist(), tuple(pixel_weight.shape[-2:])))
        return real(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k)

    train_module.diffusion_loss, saved = spy, train_module.diffusion_loss
    try:
        result = train(config(pictures, tmp_path / "o", steps=2, batch=3, buckets=True, alpha_mask=True),
                       model=model, progress=False)
    finally:
        train_module.diffusion_loss = saved
    assert result.steps == 2 and {hw for hw, _, _ in seen} == {(6, 10), (10, 6), (8, 8)}
    for latent_hw, targets, weight_hw in seen:  # SDXL is told each bucket's size; the masks are at latent size
        assert weight_hw == latent_hw
        assert all(t == [latent_hw[0] * 2, latent_hw[1] * 2] for t in targets)


@pytest.mark.parametrize("noise_offset", [0.0, 0.1])
def test_bucketed_concepts_of_a_joint_run_each_equal_their_own_run(noise_offset, sd1_dir, tmp_path):
    from conftest import each_concept_alone, write_images

    mixed, squares = _mixed_pictures(tmp_path / "mixed"), write_images(tmp_path / "squares", n=2, seed=3)
    common = dict(steps=3, batch=2, save_every=0, sample_every=0, log_every=1, lr=5e-2, buckets=True,
                  noise_offset=noise_offset)
    concepts = [f"{mixed}=<jm>=dog", f"{squares}=<js>=cat"]
    joint = train(TrainConfig(concepts=concepts, out=str(tmp_path / "joint"), **common), model=fresh_model(sd1_dir),
                  progress=False)
    for mine, alone in zip(joint.embeddings, each_concept_alone(sd1_dir, tmp_path, concepts, **common)):
        assert torch.allclose(mine.vectors["text_encoder"], alone.vectors["text_encoder"], atol=1e-5)


def test_vectors_gone_non_finite_between_loss_checks_stop_at_the_save_with_the_last_good_ones(sd1_dir, images,
                                                                                             tmp_path, monkeypatch):
    """The loss (and so the vectors) goes NaN at step 5; the loss is checked every 4 steps, the run saved every 3:
    the save at step 6 finds the vectors broken, keeps step 4's and says so (it died writing a NaN file)."""
    _nan_loss_after(monkeypatch, 4)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"non-finite .* by step 6; the last good vectors \(step 4\)"):
        train(config(images, out, steps=12, log_every=4, save_every=3), model=fresh_model(sd1_dir), progress=False)
    saved = load_embedding(out / "learned_embeds.safetensors")
    assert torch.isfinite(saved.vectors["text_encoder"]).all() and saved.metadata["steps"] == "4"


def test_interrupt_after_the_vectors_went_non_finite_between_loss_checks_keeps_the_last_good_ones(
        sd1_dir, images, tmp_path, monkeypatch):
    """NaN from step 5, the loss checked every 4 steps, SIGTERM at step 6: the stop must not die writing a NaN
    file (nor leave a checkpoint of NaN vectors to resume from); it keeps step 4's and says why."""
    import os
    import signal

    _nan_loss_after(monkeypatch, 4)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"non-finite .* by step 6; the last good vectors \(step 4\)"):
        train(config(images, out, steps=12, log_every=4), model=fresh_model(sd1_dir), progress=False,
              on_step=lambda step: step == 6 and os.kill(os.getpid(), signal.SIGTERM))
    saved = load_embedding(out / "learned_embeds.safetensors")
    assert torch.isfinite(saved.vectors["text_encoder"]).all() and saved.metadata["steps"] == "4"


def test_a_save_between_loss_checks_is_the_last_good_point_a_later_stop_falls_back_to(sd1_dir, images, tmp_path,
                                                                                      monkeypatch):
    """Loss checked every 4 steps, saved every 3, NaN from step 7: the check at step 8 stops the run and keeps step
    6's saved vectors, not step 4's (which would overwrite the newer good file with older ones)."""
    _nan_loss_after(monkeypatch, 6)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"by step 8; the last good vectors \(step 6\)"):
        train(config(images, out, steps=12, log_every=4, save_every=3), model=fresh_model(sd1_dir), progress=False)
    saved = load_embedding(out / "learned_embeds.safetensors")
    step6 = load_embedding(out / "embeddings" / "learned_embeds-steps-6.safetensors")
    assert saved.metadata["steps"] == "6" and torch.equal(saved.vectors["text_encoder"], step6.vectors["text_encoder"])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_resume_with_raised_steps_takes_the_longer_schedules_rate_from_its_first_step(schedule, sd1_dir, images,
                                                                                      tmp_path, monkeypatch):
    """README: raising --steps on resume makes the rest of the run follow the longer schedule. The first resumed
    step took the rate the old schedule had set in the optimizer (0 at the end of a linear one), a wasted step."""
    straight = recorded_rates(monkeypatch)
    train(config(images, tmp_path / "a", steps=8, lr_schedule=schedule), model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "b", steps=4, save_every=4, lr_schedule=schedule), model=fresh_model(sd1_dir),
          progress=False)
    resumed = recorded_rates(monkeypatch)
    train(config(images, tmp_path / "b", steps=8, save_every=4, lr_schedule=schedule, resume=True),
          model=fresh_model(sd1_dir), progress=False)
    assert resumed == straight[4:8], (resumed, straight)


def test_training_on_a_one_encoder_model_can_start_from_an_sdxl_files_clip_l_half(sd1_dir, images, tmp_path):
    """--init-embedding with an SDXL file (clip_l + clip_g) on an SD 1.x model starts from its clip_l half, as
    generate draws with it there (the tiny model's 32 stands for CLIP-L's 768), saying so; it was refused."""
    from textinv.formats import LearnedEmbedding, save_embedding

    clip_l = torch.randn(2, 32)
    xl = LearnedEmbedding("<old>", {"text_encoder": clip_l, "text_encoder_2": torch.randn(2, 64)})
    path = save_embedding(xl, tmp_path / "old.safetensors", "sdxl")[0]
    with pytest.warns(UserWarning, match="only its clip_l half"):
        result = train(config(images, tmp_path / "a", vectors=2, init=None, init_embedding=str(path), lr=1e-9,
                              steps=1), model=fresh_model(sd1_dir), progress=False)
    assert list(result.embedding.vectors) == ["text_encoder"]
    assert torch.allclose(result.embedding.vectors["text_encoder"], clip_l, atol=1e-5)  # (one step at a rate of ~0)


def test_warnings_raised_inside_a_run_name_the_line_that_called_train(sd1_dir, images, tmp_path):
    """A warning a run raises names the user's `train(...)` line, however deep in the run it was raised: the SDXL
    file's clip_l half (generate's), the files skipped and the picture smaller than the training size (data's), an
    --init word the model does not know (train's own), a key kohya's dataset config gives to no use (kohya's), and
    another --precision asked for on resume (run_folder's); once the run's phases were functions of their own,
    each named a line inside textinv."""
    import numpy as np
    from PIL import Image

    from textinv.formats import LearnedEmbedding, save_embedding

    xl = LearnedEmbedding("<old>", {"text_encoder": torch.randn(2, 32), "text_encoder_2": torch.randn(2, 64)})
    path = save_embedding(xl, tmp_path / "old.safetensors", "sdxl")[0]
    small = tmp_path / "small"
    small.mkdir()
    for i, size in enumerate(((40, 40), (10, 14))):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(small / f"{i}.png")
    (small / "notes.md").write_text("not a picture")
    dataset = tmp_path / "d.toml"
    dataset.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{images}"\ncache_info = true\n')
    with pytest.warns(UserWarning) as said:
        train(config(images, tmp_path / "a", vectors=2, init=None, init_embedding=str(path), steps=1),
              model=fresh_model(sd1_dir), progress=False)
        train(config(small, tmp_path / "b", steps=1, buckets=True, init="zqxzqx"), model=fresh_model(sd1_dir),
              progress=False)
        kohya = dict(dataset_config=str(dataset), token="<zq>", init="dog", out=str(tmp_path / "c"), batch=2,
                     save_every=2, sample_every=0)
        train(TrainConfig(**kohya, steps=2), model=fresh_model(sd1_dir), progress=False)
        train(TrainConfig(**kohya, steps=4, resume=True, precision="bf16", model=str(sd1_dir)), progress=False)
    messages = "\n".join(str(w.message) for w in said)
    for what in ("only its clip_l half", "skipped 1 file(s)", "smaller than the training resolution",
                 "does not know", "left unused: cache_info", "as asked: it ran at fp32"):
        assert what in messages, what
    assert [(w.filename, w.lineno) for w in said if w.filename != __file__] == []


def test_training_leaves_an_installed_embeddings_vectors_alone(sd1_dir, images, tmp_path):
    """A model that already holds a token (`install_embedding`, or a token learned before) trains a new one: the
    installed token's vectors share the trained parameter, and AdamW's weight decay shrank them every step. The
    diffusers script puts every row but the new token's back after each step."""
    from textinv.formats import LearnedEmbedding
    from textinv.generate import install_embedding

    model = fresh_model(sd1_dir)
    before = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    install_embedding(model, LearnedEmbedding("<had>", {"text_encoder": before.clone()}, {}))
    seen = []  # the rows as the run's last step left them (the model comes back with its own table after the run)
    result = train(config(images, tmp_path / "out", weight_decay=0.5), model=model, progress=False,
                   on_step=lambda step: seen.append(model.text_encoder.get_input_embeddings().vectors.detach().clone()))
    after = seen[-1]
    assert torch.equal(after[:2], before), (after[:2] - before).abs().max()
    assert torch.equal(after[2:], result.embedding.vectors["text_encoder"])


def test_sample_prompts_may_name_the_token_as_generate_prompts_do(sd1_dir, images, tmp_path):
    """`--sample-prompts "a photo of <zq> on grass"` (the prompt as the user writes it for `textinv generate`) was
    refused: "has no '{}' where the token goes", though caption files and `score --prompts` take the token itself."""
    import numpy as np
    from PIL import Image

    grids = []
    for name, prompt in (("braces", "a photo of {} on grass"), ("token", "a photo of <ZQ> on grass")):
        out = tmp_path / name
        train(config(images, out, steps=1, sample_every=1, sample_steps=2, sample_prompts=[prompt]).validate(),
              model=fresh_model(sd1_dir), progress=False)
        grids.append(np.asarray(Image.open(out / "samples" / "step-000001.png")))
    assert np.array_equal(grids[0], grids[1])
    with pytest.raises(ConfigError, match="has no '{}' \\(or the token\\)"):
        config(images, tmp_path / "x", sample_prompts=["a photo of a dog"]).validate()


def test_an_init_word_the_tokenizer_splits_into_fragments_is_warned_about(sd1_dir, images, tmp_path):
    """`--init dgo` (a typo; the diffusers script refuses a multi-token init, kohya warns) trained silently from the
    mean of the fragments d + g + o. On the bundled shapes model even the default init, 'object', is six letters."""
    import warnings

    with pytest.warns(UserWarning, match=r"^init='dgo'.*dgo \(d \+ g \+ o\)"):
        train(config(images, tmp_path / "typo", init="dgo", steps=1), model=fresh_model(sd1_dir), progress=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(config(images, tmp_path / "word", init="small red dog, toy", steps=1), model=fresh_model(sd1_dir),
              progress=False)
    assert not [w for w in seen if "init=" in str(w.message)]


def test_init_spread_webui_starts_from_the_tokens_the_web_ui_reads(sd1_dir, images, tmp_path, monkeypatch):
    """--init-spread webui: SD 1.x's tokenizer cuts the init text at --vectors tokens in the web UI, so 2 vectors
    from "small red dog, toy" are "small" and "red"; textinv's default averages the tokens' two runs. Refused beside
    --init-embedding, which gives the vectors."""
    model = fresh_model(sd1_dir)
    table = base_embedding(model.text_encoder).weight.detach().clone()
    ids = encode_init(model.tokenizer, "small red dog, toy")
    assert len(ids) > 2
    starts = recorded_results(monkeypatch, train_module, "init_vectors")
    for spread in ("webui", "average"):
        train(config(images, tmp_path / spread, init="small red dog, toy", vectors=2, steps=1, init_spread=spread),
              model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(starts[0], table[ids[:2]])
    assert torch.allclose(starts[1], torch.stack([c.mean(0) for c in torch.tensor_split(table[ids], 2)]))
    with pytest.raises(ConfigError, match="init_embedding= gives them: leave out init_spread="):
        config(images, tmp_path / "c", init=None, init_embedding="a.pt", init_spread="webui").validate()


def test_a_model_that_records_its_own_words_gives_the_init_and_templates_left_out(sd1_dir, images, tmp_path,
                                                                                  monkeypatch):
    """The bundled shapes model knows neither "object" nor the paper's templates' words: its training.json says its
    own, and a run that gives no --init or --templates takes them; given ones win."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(sd1_dir, folder)
    (folder / "training.json").write_text(json.dumps(
        {"prompting": {"object": {"init": "cat", "templates": ["a drawing of {}", "{} on grass"]}}}))
    seen = []
    real = train_module.CaptionSampler

    def spy(pictures, templates, *a, **k):
        seen.append(list(templates))
        return real(pictures, templates, *a, **k)

    monkeypatch.setattr(train_module, "CaptionSampler", spy)
    own = train(config(images, tmp_path / "a", steps=1, init=None), model=load_model(folder), progress=False)
    assert seen == [["a drawing of {}", "{} on grass"]] and own.embedding.metadata["init"] == "cat"
    plain = train(config(images, tmp_path / "p", steps=1, init="cat", templates=None), model=fresh_model(sd1_dir),
                  progress=False)
    assert plain.embedding.metadata["init"] == "cat" and seen[-1] != seen[0]  # (a model without a record: the paper's)
    template_file = tmp_path / "t.txt"
    template_file.write_text("a sketch of {}\n")
    given = train(config(images, tmp_path / "g", steps=1, init="dog", templates=str(template_file)),
                  model=load_model(folder), progress=False)
    assert seen[-1] == ["a sketch of {}"] and given.embedding.metadata["init"] == "dog"


def test_a_concept_without_an_init_takes_the_models_own_word_as_a_lone_concept_does(sd1_dir, images, tmp_path):
    """--concepts FOLDER=TOKEN leaves the init to the same default as --images/--token: --init, else the model's own
    word (the bundled model's 'shape'), else the --property word. The run folder's bookkeeping (paths made
    absolute) once filled in the property's word first, so the model's own never came."""
    import json
    import shutil

    import yaml

    folder = tmp_path / "model"
    shutil.copytree(sd1_dir, folder)
    (folder / "training.json").write_text(json.dumps({"prompting": {"object": {"init": "cat"}}}))
    run = train(TrainConfig(concepts=[f"{images}=<ja>", f"{images}=<jb>=dog"], out=str(tmp_path / "o"), steps=1,
                            batch=1, save_every=0, sample_every=0), model=load_model(folder), progress=False)
    assert [e.metadata["init"] for e in run.embeddings] == ["cat", "dog"]
    # the saved settings leave it to the default as given, so the rerun and a resume read it alike
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert [c["init"] for c in saved["concepts"]] == [None, "dog"]


def test_latents_are_cached_a_batch_at_a_time_with_the_mirror_images_after(sd1_dir, tmp_path):
    """500 pictures at 512 held as one stacked tensor plus its mirrored copy were 8 GB of RAM before the VAE ran
    (32 GB at SDXL's 1024); each batch is now stacked, mirrored and encoded on its own, in the same layout and the
    same batches (so the same latents, bit for bit). The pictures are not their own mirror images (the `images`
    fixture's centred squares are: with them, a cache without the mirror images passed too)."""
    import numpy as np
    from PIL import Image

    from textinv.data import find_images, load_training_images
    from textinv.latent_cache import encode_latents

    folder = tmp_path / "lopsided"
    folder.mkdir()
    for i in range(4):
        arr = np.full((24, 24, 3), 40 * i, dtype=np.uint8)
        arr[:, :4 + 3 * i] = (230, 40, 40)  # a bar along the left edge, wider in each picture
        Image.fromarray(arr).save(folder / f"img{i}.png")
    vae = fresh_model(sd1_dir).vae
    pictures = [p.pixels for p in load_training_images(find_images(folder), 24)]
    assert not any(torch.equal(p, p.flip(-1)) for p in pictures)
    seen = []
    real_encode = vae.encode
    vae.encode = lambda x: seen.append(len(x)) or real_encode(x)
    mean, std = encode_latents(vae, pictures, batch=3, mirrored=True)
    assert seen == [3, 3, 2]  # the pictures, then their mirror images, 3 at a time
    stacked = torch.stack(pictures)
    expected = encode_latents(vae, torch.cat([stacked, stacked.flip(-1)]), batch=3)
    assert torch.equal(mean, expected[0]) and torch.equal(std, expected[1])


def test_pictures_of_several_shapes_are_cached_with_their_mirror_images_after(sd1_dir, tmp_path):
    """--buckets' pictures are encoded one at a time (`_latents_each`), laid out as `encode_latents` lays them: the
    pictures', then their mirror images'. With the mirror left out, the buckets tests passed too."""
    from types import SimpleNamespace

    from textinv.latent_cache import _latents_each, encode_latents

    vae = fresh_model(sd1_dir).vae
    g = torch.Generator().manual_seed(0)
    pictures = [SimpleNamespace(pixels=torch.rand(3, *size, generator=g) * 2 - 1) for size in ((16, 24), (24, 16))]
    means, stds, weights = _latents_each(vae, pictures, tmp_path, False, "cpu")
    assert len(means) == len(stds) == 4 and weights is None
    for k, p in enumerate(pictures):
        mean, std = encode_latents(vae, p.pixels.flip(-1)[None])
        torch.testing.assert_close(means[2 + k], mean[0])
        torch.testing.assert_close(stds[2 + k], std[0])
        assert not torch.allclose(means[2 + k], means[k])


def test_a_caption_that_is_not_utf8_is_refused_before_loading(images, tmp_path):
    """Captions were first read after the model had loaded (minutes for SDXL), so a latin-1 caption failed late."""
    (images / "img1.txt").write_bytes("a photo of {} caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="img1.txt is not UTF-8"):
        train(config(images, tmp_path / "o", model=str(tmp_path / "no-model")), progress=False)


def test_the_runs_config_records_what_it_ran_with_and_the_defaults_it_resolved(sd1_dir, images, tmp_path):
    """A bit-for-bit rerun needs the same torch (and device, precision and CPU threads), and a setting left to its
    default means whatever this version and this model made of it: config.yaml's header says both; reading it back
    ignores them."""
    import yaml
    from importlib.metadata import version

    from textinv.config import build, read_config_file
    from textinv.data import flip_default

    train(config(images, tmp_path / "a", init=None, steps=1, property="style"), model=fresh_model(sd1_dir),
          progress=False)
    header = [line for line in (tmp_path / "a" / "config.yaml").read_text().splitlines() if line.startswith("#")]
    assert f"torch {version('torch')}, diffusers {version('diffusers')}" in header[1]
    assert header[1].endswith("on cpu, torch.float32, 1 thread")  # (the tests' thread count, conftest.py)
    resolved = yaml.safe_load(header[2].removeprefix("# defaults as resolved: "))
    assert resolved == {"resolution": fresh_model(sd1_dir).resolution, "format": "diffusers",
                        "flip": flip_default("style"), "max_timestep": 1000, "init": "style"}
    assert build(TrainConfig, read_config_file(tmp_path / "a" / "config.yaml")).resolution is None


def test_a_joint_fp16_run_with_one_concepts_overflow_equals_the_concepts_own_runs_and_resumes(sd1_dir, tmp_path):
    """Under fp16 loss scaling the concept whose gradients overflow at step 2 skips that step alone; from then on it
    goes on as its own run does (where GradScaler skips the whole step), the other concept never notices, and a
    run stopped after the skip resumes to the uninterrupted one (the checkpoint keeps the count of skipped steps)."""
    import os
    import signal

    from conftest import write_images
    from textinv.batches import concept_seed

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    common = dict(steps=5, batch=2, save_every=0, sample_every=0, log_every=1, lr=5e-2, precision="fp16")

    def fp16_model():
        return load_model(sd1_dir, dtype=torch.float16)

    def overflow_at(model, token: str, at: int, stop_after: int | None = None):
        """on_step: `token`'s scaled gradient is inf in step `at`, as an fp16 overflow makes it."""
        hooks = []

        def on_step(step):
            ext = model.text_encoder.get_input_embeddings()
            row = model.tokenizer.convert_tokens_to_ids(token) - ext.num_base
            if step == at - 1:
                hooks.append(ext.vectors.register_hook(lambda g: g.index_fill(0, torch.tensor([row]), float("inf"))))
            if step == at:
                hooks.pop().remove()
            if step == stop_after:
                os.kill(os.getpid(), signal.SIGTERM)
        return on_step

    joint_model = fp16_model()
    joint = train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], out=str(tmp_path / "joint"),
                              **common), model=joint_model, progress=False, on_step=overflow_at(joint_model, "<jc>", 2))
    alone_d = train(TrainConfig(images=str(dogs), token="<jd>", init="dog", out=str(tmp_path / "d"), **common),
                    model=fp16_model(), progress=False)
    cat_model = fp16_model()
    alone_c = train(TrainConfig(images=str(cats), token="<jc>", init="cat", out=str(tmp_path / "c"),
                                seed=concept_seed(0, 1), **common), model=cat_model, progress=False,
                    on_step=overflow_at(cat_model, "<jc>", 2))
    for mine, alone in zip(joint.embeddings, (alone_d, alone_c)):
        torch.testing.assert_close(mine.vectors["text_encoder"], alone.embedding.vectors["text_encoder"],
                                   rtol=0, atol=1e-6)
    # stopped after step 3 (the skip is behind it), resumed from the checkpoint of step 3
    run = dict(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], out=str(tmp_path / "stopped"),
               **{**common, "save_every": 3})
    stopped_model = fp16_model()
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(**run), model=stopped_model, progress=False,
              on_step=overflow_at(stopped_model, "<jc>", 2, stop_after=3))
    resumed = train(TrainConfig(**run, resume=True), model=fp16_model(), progress=False)
    for mine, theirs in zip(resumed.embeddings, joint.embeddings, strict=True):
        assert torch.equal(mine.vectors["text_encoder"], theirs.vectors["text_encoder"]), mine.token


def test_a_caption_that_names_another_concepts_token_is_refused(sd1_dir, tmp_path):
    """Concepts learn independently: a caption of one concept's picture that names another concept's token would
    train that token from the wrong pictures (in its own run the text is plain word pieces), so it is refused by
    picture and token before any step."""
    from conftest import write_images

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    (dogs / "img1.txt").write_text("a photo of {} beside <JC>")  # (CLIP reads it lower-cased: <jc>)
    run = dict(out=str(tmp_path / "o"), steps=2, batch=2, save_every=0, sample_every=0)
    with pytest.raises(ConfigError, match=r"caption of img1\.png .*names <jc>, another concept's token"):
        train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], **run), model=fresh_model(sd1_dir),
              progress=False)
    assert not (tmp_path / "o" / "jd").exists()
    (dogs / "img1.txt").write_text("a photo of {} beside <jcat>")  # another word that begins like it: plain text
    train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], **{**run, "overwrite": True}),
          model=fresh_model(sd1_dir), progress=False)


@pytest.mark.parametrize("second, message", [("{cats}=cat", "token 'cat' is read by the tokenizer as the existing"),
                                             ("{cats}=<jc>=<|endoftext|>", "init text .* cannot be encoded")])
def test_a_bad_later_concept_leaves_the_given_model_as_it_was(second, message, sd1_dir, tmp_path):
    """Every concept's token and init are checked before any token is added: a model passed in (a notebook's, an
    evaluation's) is not left with the first concepts' tokens, which would refuse the corrected run as taken."""
    from conftest import write_images
    from textinv.errors import TokenError

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    model = fresh_model(sd1_dir)
    size, table = len(model.tokenizer), model.text_encoder.get_input_embeddings()
    with pytest.raises(TokenError, match=message):
        train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", second.format(cats=cats)], out=str(tmp_path / "o"), steps=1,
                          batch=1, save_every=0, sample_every=0), model=model, progress=False)
    assert len(model.tokenizer) == size and model.text_encoder.get_input_embeddings() is table
    train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], out=str(tmp_path / "o"), steps=1, batch=1,
                      save_every=0, sample_every=0), model=model, progress=False)


def test_an_init_text_that_names_another_concepts_token_starts_as_in_its_own_run(sd1_dir, tmp_path):
    """Init texts are read before any concept's token is added: one that names another concept's token is the
    word pieces it is in the concept's own run (with the warning for them), where it was refused once the other
    concept's token was in (and that token left in a model passed in)."""
    from conftest import write_images
    from textinv.batches import concept_seed

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    common = dict(steps=2, batch=2, save_every=0, sample_every=0, log_every=1, lr=5e-2)
    with pytest.warns(UserWarning, match="does not know"):
        joint = train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=<jd>"], out=str(tmp_path / "j"),
                                  **common), model=fresh_model(sd1_dir), progress=False)
    with pytest.warns(UserWarning, match="does not know"):  # (its own run warns alike)
        alone = train(TrainConfig(images=str(cats), token="<jc>", init="<jd>", out=str(tmp_path / "c"),
                                  seed=concept_seed(0, 1), **common), model=fresh_model(sd1_dir), progress=False)
    assert joint.embeddings[1].metadata["init"] == "<jd>"
    torch.testing.assert_close(joint.embeddings[1].vectors["text_encoder"], alone.embedding.vectors["text_encoder"],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("counts, batch, grad_accum, processes", [
    ([[1] * 5], 4, 1, 1),  # a plain folder
    ([[10] * 5], 4, 1, 1),  # --repeats 10
    ([[10, 10, 3]], 2, 3, 1),  # kohya's 10_a (2 pictures) and 3_b (1), with --grad-accum 3
    ([[2, 2], [1, 1, 1, 1, 1]], 2, 1, 2),  # --concepts: the larger one's epoch, two processes
])
def test_epochs_are_the_samplers_epochs(counts, batch, grad_accum, processes):
    """--epochs E: the steps draw E epochs of the largest concept's `BatchSampler` (every picture its count times
    each), and less than one step more; a concept's other pictures only ever come more often."""
    from textinv.batches import BatchSampler
    from textinv.train import steps_for_epochs

    epochs = 3
    steps, said = steps_for_epochs(epochs, counts, batch, grad_accum, processes, ["<a>", "<b>"][:len(counts)])
    per_step = batch * grad_accum * processes
    largest = max(sum(c) for c in counts)
    assert (steps - 1) * per_step < epochs * largest <= steps * per_step
    assert said.startswith(f"--epochs {epochs}") and said.endswith(f", {steps} steps")
    for each in counts:
        sampler = BatchSampler(len(each), each, flip=True, seed=0)
        drawn = torch.cat([sampler.draw(per_step, (4, 2, 2), (0, 10))["image"] for _ in range(steps)])
        whole = epochs * sum(each)  # E epochs of this concept's pictures, the first E * sum(each) samples
        assert torch.bincount(drawn[:whole], minlength=len(each)).tolist() == [epochs * n for n in each]


def test_epochs_give_the_steps_of_a_kohya_folder_and_keep_them_in_config_yaml(sd1_dir, tmp_path, capsys):
    """`img/2_a/` (2 pictures) and `img/1_b/` (1): an epoch is 5 samples, so --epochs 2 at --batch 2 --grad-accum 2
    is 10 / 4 samples a step, 3 steps; said in one line at the start, and config.yaml holds steps: 3 (and no
    epochs), so a rerun from it, or a resume, runs the same 3 steps."""
    import yaml

    from conftest import write_images

    img = tmp_path / "img"
    write_images(img / "2_a", n=2, seed=1)
    write_images(img / "1_b", n=1, seed=2)
    run = dict(images=str(img), token="<ep>", init="dog", model=str(sd1_dir), batch=2, grad_accum=2,
               sample_every=0, save_every=0, log_every=1)
    result = train(TrainConfig(out=str(tmp_path / "a"), epochs=2, **run), progress=True)
    assert result.steps == 3 == len(result.losses)
    said = "--epochs 2: 5 samples (3 pictures, each its kohya folder's count or subset's num_repeats x --repeats) / " \
           "batch 2 x grad-accum 2 = 1.25 steps an epoch, 3 steps"
    assert said in capsys.readouterr().out
    text = (tmp_path / "a" / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["steps"] == 3 and saved["epochs"] is None and f"# {said}\n" in text
    assert train(TrainConfig(out=str(tmp_path / "b"), epochs=2, **{**run, "repeats": 2}), progress=False).steps == 5


def test_a_resume_keeps_the_epochs_line_in_an_earlier_wording(tmp_path):
    """config.yaml's --epochs line is read back on resume (`_epochs_note`): a run folder an earlier textinv wrote,
    which said 'each its kohya folder's count' for a dataset config's num_repeats too, keeps its line."""
    from textinv.train import _epochs_note

    for each in ("its kohya folder's count", "its kohya folder's count or subset's num_repeats"):
        line = f"--epochs 2: 5 samples (3 pictures, each {each} x --repeats) / batch 2 = 2.5 steps an epoch, 5 steps"
        (tmp_path / "config.yaml").write_text(f"# {line}\nsteps: 5\n", encoding="utf-8")
        assert _epochs_note(tmp_path / "config.yaml", 5) == line
        assert _epochs_note(tmp_path / "config.yaml", 6) is None  # (a run of other steps: not how they were counted)


@pytest.mark.skipif(not hasattr(__import__("os"), "statvfs"), reason="statvfs: a POSIX system's")
def test_an_out_on_a_read_only_disk_is_said_to_be_on_one(monkeypatch, tmp_path):
    """A read-only mount (a camera card, an ISO, a container's read-only volume) refuses every user: 'not writable
    by you' would send them to change permissions. Faked here: no test can mount a disk."""
    import os
    from types import SimpleNamespace

    real_statvfs = os.statvfs
    monkeypatch.setattr(run_folder.os, "access", lambda path, mode: False)
    monkeypatch.setattr(run_folder.os, "statvfs", lambda path: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(ConfigError, match=rf"out='{tmp_path / 'run'}': {tmp_path} is on a read-only disk; choose"):
        run_folder.prepare_output(TrainConfig(images="x", token="<t>", out=str(tmp_path / "run")))
    monkeypatch.setattr(run_folder.os, "statvfs", real_statvfs)
    with pytest.raises(ConfigError, match=rf"{tmp_path} is not writable by you; choose another out="):
        run_folder.prepare_output(TrainConfig(images="x", token="<t>", out=str(tmp_path / "run")))


def test_more_sample_steps_than_the_models_noise_levels_are_refused_before_the_run_starts(sd1_dir, images, tmp_path):
    """--sample-steps past the model's training timesteps was taken, and the run failed at its first grid (after the
    model loaded and the folder was made), in the sampler's words."""
    model = fresh_model(sd1_dir)
    most = model.pipeline.scheduler.config.num_train_timesteps
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"sample_steps={most + 1} is more than the {most} noise levels"):
        train(config(images, out, sample_every=2, sample_steps=most + 1), model=model, progress=False)
    assert not out.exists()
    train(config(images, out, steps=2, sample_every=0, sample_steps=most + 1), model=model, progress=False)  # no grids


def wide_pictures(folder, n=3, alpha=False):
    """`n` noise pictures three times as wide as high (16 x 48): a square window of one can be cut at 33 places."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (16, 48, 4 if alpha else 3), dtype=np.uint8)
        if alpha:  # (the left third transparent)
            pixels[..., 3], pixels[:, :16, 3] = 255, 0
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def test_random_windows_are_views_of_the_covering_picture_drawn_from_the_seed(tmp_path):
    """kohya's random_crop: after the short side is resized, a window at a random place along the long side. Each
    window is the training size, lies within the picture (a slice of its cover), and is drawn from the seed and the
    picture's number; a window transparent all over is the picture's centre instead."""
    from textinv.data import load_training_images, random_windows

    paths = sorted(wide_pictures(tmp_path / "w").glob("*.png"))
    pictures = load_training_images(paths, 16, random_crop=True)
    assert pictures[0].cover.shape == (3, 16, 48) and pictures[0].pixels.shape == (3, 16, 16)
    windows = random_windows(pictures, 8, seed=5)
    assert len(windows) == 24 and all(w.path == paths[i % 3] for i, w in enumerate(windows))  # window-major
    for i, w in enumerate(windows):
        cover = pictures[i % 3].cover
        assert w.pixels.shape == (3, 16, 16)
        assert any(torch.equal(w.pixels, cover[:, :, x:x + 16]) for x in range(33))
    assert len({tuple(w.pixels[0, 0, :4].tolist()) for w in windows[0::3]}) > 1  # picture 0's windows differ
    again = random_windows(load_training_images(paths, 16, random_crop=True), 8, seed=5)
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(windows, again))
    other = random_windows(pictures, 8, seed=6)
    assert not all(torch.equal(a.pixels, b.pixels) for a, b in zip(windows, other))
    masked = load_training_images(sorted(wide_pictures(tmp_path / "a", alpha=True).glob("*.png")), 16,
                                  use_alpha=True, random_crop=True)
    for w in random_windows(masked, 32, seed=0):
        # (seed 0 draws the transparent left third, x = 0, for pictures 0 and 1: their centre instead)
        assert w.alpha.shape == (1, 16, 16) and w.alpha.max() > 0
    assert any(w.alpha.min() == 0 for w in random_windows(masked, 32, seed=0))


def test_random_windows_are_held_as_bytes_and_encode_as_their_float_windows_did(sd1_dir, tmp_path):
    """The covers (all pictures' at once) and their windows stay uint8, a quarter of float32's memory, and are
    turned into floats a batch at a time: the latents and alpha weights are, bit for bit, those of the float
    windows cut from float covers as before, with the float centres of windows transparent all over among them."""
    import dataclasses

    import numpy as np
    from textinv.data import covering, load_image_and_alpha, load_training_images, random_windows

    paths = sorted(wide_pictures(tmp_path / "a", alpha=True).glob("*.png"))
    pictures = load_training_images(paths, 16, use_alpha=True, random_crop=True)
    windows = random_windows(pictures, 32, seed=0)
    assert pictures[0].cover.dtype == pictures[0].cover_alpha.dtype == torch.uint8
    assert {w.pixels.dtype for w in windows} == {torch.uint8, torch.float32}  # (some are centres)
    old = []
    for i, w in enumerate(windows):  # the float covers as they were made, cut where this window was cut
        img, alpha = load_image_and_alpha(paths[i % 3], True)
        cover = torch.from_numpy(np.array(covering(img, (16, 16)))).to(torch.float32).permute(2, 0, 1) / 127.5 - 1.0
        cover_alpha = torch.from_numpy(np.array(covering(alpha, (16, 16)))).to(torch.float32)[None] / 255.0
        if w.pixels.dtype == torch.float32:
            old.append(w)
            continue
        x = next(x for x in range(33) if torch.equal(w.pixels, pictures[i % 3].cover[:, :, x:x + 16]))
        old.append(dataclasses.replace(w, pixels=cover[:, :, x:x + 16], alpha=cover_alpha[:, :, x:x + 16]))
    vae = fresh_model(sd1_dir).vae
    now, before = (latent_cache._encoded(vae, each, tmp_path, True, "cpu") for each in (windows, old))
    assert all(torch.equal(a, b) for a, b in zip(now, before))


def test_random_crop_trains_on_cached_windows_and_resumes_exactly(sd1_dir, tmp_path, monkeypatch):
    """With --random-crop the latents of 8 windows a picture are cached (and their mirror images), each sample
    takes one: the windows of one picture encode differently, the run learns other vectors than its centres'
    run, and a resumed run (the windows cut again from the seed) ends where the uninterrupted one does."""
    images = wide_pictures(tmp_path / "w")
    encoded = recorded_results(monkeypatch, train_module, "_encoded")
    crop = dict(resolution=16, random_crop=True)
    whole = train(config(images, tmp_path / "a", **crop), model=fresh_model(sd1_dir), progress=False)
    mean = encoded[-1][0]
    assert mean.shape[0] == 2 * 3 * latent_cache.RANDOM_CROPS
    assert not torch.allclose(mean[0], mean[3]) and not torch.allclose(mean[0], mean[6])  # picture 0's windows
    centre = train(config(images, tmp_path / "b", resolution=16), model=fresh_model(sd1_dir), progress=False)
    assert encoded[-1][0].shape[0] == 2 * 3
    assert not torch.equal(whole.embedding.vectors["text_encoder"], centre.embedding.vectors["text_encoder"])
    train(config(images, tmp_path / "c", steps=4, save_every=2, **crop), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, tmp_path / "c", save_every=2, resume=True, **crop), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], whole.embedding.vectors["text_encoder"])


def test_random_crop_works_with_buckets_alpha_masks_and_a_validation_split_and_is_refused_where_nothing_is_cut(
        sd1_dir, tmp_path):
    images = wide_pictures(tmp_path / "w", n=4, alpha=True)
    run = train(config(images, tmp_path / "a", resolution=16, random_crop=True, buckets=True, alpha_mask=True,
                       validation_split=0.25, validate_every=3), model=fresh_model(sd1_dir), progress=False)
    assert torch.isfinite(run.embedding.vectors["text_encoder"]).all()
    with pytest.raises(ConfigError, match="random_crop= and center_crop=False: squashed, the whole picture is its "
                                          "training size and there is nothing to crop"):
        config(images, tmp_path / "b", random_crop=True, center_crop=False).validate()
    with pytest.raises(ConfigError, match="random_crop= and reference_like="):
        config(images, tmp_path / "b", random_crop=True, reference_like=True).validate()


def _unequal_pictures(folder):
    """`_mixed_pictures` (each larger than the tiny models' 16x16 area) and one smaller, 14x10."""
    import numpy as np
    from PIL import Image

    _mixed_pictures(folder, alpha=True)
    arr = np.random.default_rng(1).integers(0, 255, (10, 14, 4), dtype=np.uint8)
    arr[..., 3] = 255
    Image.fromarray(arr).save(folder / "small.png")
    return folder


def test_bucket_no_upscale_trains_each_picture_at_its_own_size_and_tells_sdxl(tmp_path, monkeypatch):
    """kohya's --bucket_no_upscale: the small picture trains at its own 14x10 cut down to 12x8 (never enlarged),
    the larger ones scaled down to about the 16x16 area; SDXL is told each one's size as loaded, where its crop
    lies in it as scaled, and the size trained at."""
    from textinv.data import no_upscale_size
    from textinv.tiny import build_tiny_xl_pipeline

    folder = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(folder)
    pictures = _unequal_pictures(tmp_path / "cut")
    model = load_model(folder)
    step = train_module.bucket_step(model)
    seen = []
    real = train_module.diffusion_loss

    def spy(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k):
        seen.extend(map(tuple, time_ids.int().tolist()))
        return real(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    result = train(config(pictures, tmp_path / "o", steps=4, batch=4, buckets=True, bucket_no_upscale=True,
                          alpha_mask=True, validation_split=0.25, resolution=16),
                   model=model, progress=False)
    assert result.steps == 4
    want = set()
    for w, h in ((48, 24), (24, 48), (32, 32), (14, 10)):
        (scaled_w, scaled_h), (bucket_w, bucket_h) = no_upscale_size(w, h, 16, step)
        want.add((h, w, (scaled_h - bucket_h) // 2, (scaled_w - bucket_w) // 2, bucket_h, bucket_w))
    assert (10, 14, 1, 1, 8, 12) in want and set(seen) <= want and len(set(seen)) >= 2
    assert "bucket_no_upscale: true" in (tmp_path / "o" / "config.yaml").read_text()


def test_bucket_no_upscale_resumes_exactly_and_a_resume_without_it_is_refused(sd1_dir, tmp_path):
    from textinv.data import SmallImageWarning

    pictures = _unequal_pictures(tmp_path / "cut")
    kw = dict(steps=6, batch=3, save_every=2, buckets=True, bucket_no_upscale=True)
    straight = train(config(pictures, tmp_path / "a", **kw), model=fresh_model(sd1_dir), progress=False)
    with pytest.warns(SmallImageWarning):  # (plain buckets enlarge the small picture)
        plain = train(config(pictures, tmp_path / "p", **{**kw, "bucket_no_upscale": False}),
                      model=fresh_model(sd1_dir), progress=False)
    assert not torch.equal(straight.embedding.vectors["text_encoder"], plain.embedding.vectors["text_encoder"])
    train(config(pictures, tmp_path / "b", **{**kw, "steps": 4}), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* with different settings \(bucket_no_upscale"):
        train(config(pictures, tmp_path / "b", **{**kw, "bucket_no_upscale": False}, resume=True),
              model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(pictures, tmp_path / "b", **kw, resume=True), model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_bucket_no_upscale_without_buckets_is_refused(images, tmp_path):
    with pytest.raises(ConfigError, match=r"bucket_no_upscale= says how buckets= sizes each picture's bucket, and "
                                          r"the buckets are off: give buckets= too"):
        config(images, tmp_path / "o", bucket_no_upscale=True).validate()


def test_the_token_checks_build_the_vocabulary_as_often_for_many_vectors_as_for_one(sd1_dir, images, tmp_path,
                                                                                    monkeypatch):
    """get_vocab() builds the whole vocabulary (49,408 entries on a real CLIP tokenizer) as a new dict: the run's
    token checks built it once for each vector name of each concept; now once a tokenizer."""
    from transformers import CLIPTokenizer

    real, calls = CLIPTokenizer.get_vocab, []
    monkeypatch.setattr(CLIPTokenizer, "get_vocab", lambda self: calls.append(1) or real(self))
    built = []
    for n in (1, 4):
        calls.clear()
        train(TrainConfig(images=str(images), token=f"<v{n}>", init="dog", vectors=n, model=str(sd1_dir), steps=1,
                          save_every=0, sample_every=0, resolution=16, out=str(tmp_path / f"v{n}")), progress=False)
        built.append(len(calls))
    assert built[0] == built[1]


def test_max_grad_value_clips_each_number_of_the_gradient(sd1_dir, images, tmp_path):
    """The web UI's gradient clipping 'value': every number of the vectors' gradient is cut to [-V, V], so one SGD
    step (Nesterov momentum 0.9: 1.9 x lr x the gradient) moves no number further than 1.9 x lr x V."""
    from textinv.config import build

    model = fresh_model(sd1_dir)
    start = base_embedding(model.text_encoder).weight[model.tokenizer.convert_tokens_to_ids("dog</w>")].clone()
    settings = dict(steps=1, optimizer="sgd", weight_decay=0.0, lr=1.0)
    result = train(train_config(images, tmp_path / "a", max_grad_value=1e-7, **settings), model=model, progress=False)
    moved = (result.embedding.vectors["text_encoder"][0] - start).abs().max()
    assert 0 < moved <= 1.9 * 1e-7 * 1.01
    unclipped = train(train_config(images, tmp_path / "b", **settings), model=fresh_model(sd1_dir), progress=False)
    assert (unclipped.embedding.vectors["text_encoder"][0] - start).abs().max() > 100 * moved
    with pytest.raises(ConfigError, match="max_grad_norm= and max_grad_value="):
        build(TrainConfig, {"max_grad_value": 0.1, "max_grad_norm": 1.0})


def test_the_clip_value_may_be_stepped_as_the_web_uis(sd1_dir, images, tmp_path):
    """The web UI's clip value takes its stepped rate's syntax ('0.1:100, 0.05'); textinv's took one number."""
    from textinv.config import build

    settings = dict(optimizer="sgd", weight_decay=0.0, lr=1.0)

    def vectors(out, steps, **kw):
        result = train(train_config(images, tmp_path / out, steps=steps, **settings, **kw), model=fresh_model(sd1_dir),
                       progress=False)
        return result.embedding.vectors["text_encoder"]

    stepped = vectors("a", 2, max_grad_value="1e-7:1, 1e-3")  # (1e-7 at step 0, as the web UI counts, then 1e-3)
    assert torch.equal(vectors("b", 1, max_grad_value="1e-7:1, 1e-3"), vectors("c", 1, max_grad_value=1e-7))
    assert not torch.allclose(stepped, vectors("d", 2, max_grad_value=1e-7), atol=1e-5)
    given = {"images": str(images), "token": "<zq>", "out": str(tmp_path / "f")}  # (as a config file gives it)
    assert build(TrainConfig, {**given, "max_grad_norm": "0.1:100, 0.05"}).validate().max_grad_norm == "0.1:100, 0.05"
    assert build(TrainConfig, {**given, "max_grad_norm": 0.5}).max_grad_norm == "0.5"
    with pytest.raises(ConfigError, match="max_grad_norm='0.1:100, fast': 'fast' is not VALUE:STEP"):
        build(TrainConfig, {**given, "max_grad_norm": "0.1:100, fast"}).validate()
    with pytest.raises(ConfigError, match="max_grad_value= must be > 0 when given, got 0"):
        train_config(images, tmp_path / "f", max_grad_value=0).validate()
    # (a number given from Python, read back as text from config.yaml, resumes the same run)
    vectors("e", 1, max_grad_norm=0.05, save_every=1)
    vectors("e", 2, max_grad_norm=0.05, resume=True)


def test_latent_sampling_keeps_the_latents_as_the_web_uis_methods_do(sd1_dir, tmp_path, monkeypatch):
    """--latent-sampling, the web UI's latent sampling method: random draws a new latent from the picture's VAE
    distribution at each use; deterministic trains on its mean, once on one draw: the same latent every time."""
    from conftest import write_images

    one = write_images(tmp_path / "one", n=1)  # (one picture, not flipped: every sample is of the same latent)
    seen = {}
    for method in ("random", "deterministic", "once"):
        drawn = recorded_results(monkeypatch, train_module, "_draw")
        train(train_config(one, tmp_path / method, latent_sampling=method, flip=False), model=fresh_model(sd1_dir),
              progress=False)
        seen[method] = torch.cat([d["latents"] for d in drawn])  # (steps x batch, 4, h, w)
    assert not torch.equal(seen["random"][0], seen["random"][1])
    for method in ("deterministic", "once"):
        assert all(torch.equal(latent, seen[method][0]) for latent in seen[method])
    assert not torch.equal(seen["once"][0], seen["deterministic"][0])
    with pytest.raises(ConfigError, match="latent_sampling='once' and reference_like="):
        train_config(one, tmp_path / "r", latent_sampling="once", reference_like=True).validate()


def test_png_embeddings_put_each_grids_step_embedding_in_its_picture(sd1_dir, images, tmp_path):
    """--png-embeddings, the web UI's "save images with embedding in PNG chunks": beside each sample grid, the step's
    embedding inside that grid's picture, named as the web UI names its own (zq-2.png: called zq-2 there), and
    captioned as there (the picture differs from the grid)."""
    from PIL import Image

    from textinv.formats import a1111_png_name

    out = tmp_path / "a"
    result = train(train_config(images, out, steps=2, sample_every=2, sample_steps=2, png_embeddings=True),
                   model=fresh_model(sd1_dir), progress=False)
    png = out / "samples" / "zq-2.png"
    assert a1111_png_name(png) == "zq-2"
    torch.testing.assert_close(load_embedding(png).vectors, result.embedding.vectors, rtol=0, atol=0)
    grid, picture = Image.open(out / "samples" / "step-000002.png").convert("RGB"), Image.open(png).convert("RGB")
    strip = (picture.width - grid.width - 2) // 2  # (the web UI's pixel copy of the embedding, either side)
    assert picture.crop((strip + 1, 0, strip + 1 + grid.width, grid.height)).tobytes() != grid.tobytes()
    with pytest.raises(ConfigError, match="png_embeddings= .* sample_every=0"):
        train_config(images, tmp_path / "b", png_embeddings=True, sample_every=0).validate()


def test_a_resume_writes_the_png_embedding_a_run_stopped_before(sd1_dir, images, tmp_path):
    """--png-embeddings' picture is written after its step's grid: a run stopped between the two (after the step's
    checkpoint) resumed with the grid there and never wrote the picture. (--no-png-caption: the grid whole in it.)"""
    from PIL import Image

    out = tmp_path / "a"
    settings = dict(sample_every=2, sample_steps=2, save_every=2, png_embeddings=True, png_caption=False)
    train(train_config(images, out, steps=2, **settings), model=fresh_model(sd1_dir), progress=False)
    png = out / "samples" / "zq-2.png"
    png.unlink()
    train(train_config(images, out, steps=3, resume=True, **settings), model=fresh_model(sd1_dir), progress=False)
    assert png.is_file()
    grid, picture = Image.open(out / "samples" / "step-000002.png").convert("RGB"), Image.open(png).convert("RGB")
    strip = (picture.width - grid.width - 2) // 2
    assert picture.crop((strip + 1, 0, strip + 1 + grid.width, grid.height)).tobytes() == grid.tobytes()


def test_templates_without_filewords_are_said_unread_for_captioned_pictures(sd1_dir, images, tmp_path):
    """A picture with a caption file trains on its caption, not on --templates without [filewords] (the web UI's
    subject.txt leaves caption files unread instead): said, naming the pictures, once, before the model loads."""
    import warnings

    from textinv.data import UnreadTemplatesWarning

    (images / "img0.txt").write_text("a {} on a sofa")
    plain = tmp_path / "subject.txt"
    plain.write_text("a photo of a [name]\n")
    with pytest.warns(UnreadTemplatesWarning, match=rf"1 picture\(s\) with a caption file train on it instead of "
                                                    rf"the templates of {plain} \(img0.png\)"):
        train(train_config(images, tmp_path / "a", templates=str(plain), steps=1), model=fresh_model(sd1_dir),
              progress=False)
    filewords = tmp_path / "subject_filewords.txt"
    filewords.write_text("a photo of a [name], [filewords]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreadTemplatesWarning)
        train(train_config(images, tmp_path / "b", templates=str(filewords), steps=1), model=fresh_model(sd1_dir),
              progress=False)


def test_a_width_by_height_run_trains_at_that_size_and_tells_sdxl(tmp_path, monkeypatch):
    """--resolution 24x16 (W x H): each 24x24 picture is resized to cover 24x16 and its centre cut, so the latents
    are 16x24 over the VAE's scale; SDXL is told the size as loaded, the crop's top 4 and the 16x24 trained at; the
    learned rows move and no other row does; the embedding and config.yaml record the size, the grid draws it."""
    from PIL import Image

    from textinv.tiny import build_tiny_xl_pipeline

    folder = tmp_path / "xl"
    build_tiny_xl_pipeline().save_pretrained(folder)
    model = load_model(folder)
    before = [base_embedding(te).weight.detach().clone() for _, _, te in model.encoders]
    seen = []
    real = train_module.diffusion_loss

    def spy(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k):
        seen.append((tuple(latents.shape[-2:]), time_ids.int().tolist()))
        return real(model, scheduler, latents, noise, timesteps, ids, snr, time_ids, clip_skip, pixel_weight, **k)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    from conftest import write_images
    result = train(train_config(write_images(tmp_path / "i"), tmp_path / "o", steps=2, resolution=[24, 16],
                                sample_every=2, sample_steps=2), model=model, progress=False)
    scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    assert {hw for hw, _ in seen} == {(16 // scale, 24 // scale)}
    assert all(ids == [24, 24, 4, 0, 16, 24] for _, rows in seen for ids in rows)
    for (_, tok, te), old, rows in zip(model.encoders, before, result.embeddings[0].vectors.values()):
        dog = old[tok.convert_tokens_to_ids(tok.tokenize("dog"))[0]]  # (the init word's row, where training began)
        assert torch.equal(base_embedding(te).weight.detach()[:old.shape[0]], old) and not torch.allclose(rows[0], dog)
    assert result.embeddings[0].metadata["resolution"] == "24x16"
    assert "resolution:\n- 24\n- 16" in (tmp_path / "o" / "config.yaml").read_text()
    assert Image.open(tmp_path / "o" / "samples" / "step-000002.png").size == (4 * 24, 16)


def test_a_width_by_height_of_one_side_trains_bit_for_bit_as_that_square(sd1_dir, images, tmp_path):
    """--resolution 16x16 (or kohya's [16, 16]) is --resolution 16: the same vectors, the same recorded size."""
    runs = [train(train_config(images, tmp_path / str(i), model=str(sd1_dir), resolution=given), progress=False)
            for i, given in enumerate([16, [16, 16], "16x16"])]
    first = runs[0].embeddings[0]
    for run in runs[1:]:
        assert all(torch.equal(first.vectors[k], run.embeddings[0].vectors[k]) for k in first.vectors)
        assert run.embeddings[0].metadata["resolution"] == "16"
    assert "resolution: 16\n" in (tmp_path / "1" / "config.yaml").read_text()


def test_a_width_by_height_run_resumes_exactly_and_a_resume_at_another_size_is_refused(sd1_dir, images, tmp_path):
    kw = dict(model=str(sd1_dir), steps=4, save_every=2, resolution="24x16")
    straight = train(train_config(images, tmp_path / "a", **kw), progress=False)
    train(train_config(images, tmp_path / "b", **{**kw, "steps": 2}), progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* with different settings \(resolution"):
        train(train_config(images, tmp_path / "b", **{**kw, "resolution": "16x24"}, resume=True), progress=False)
    resumed = train(train_config(images, tmp_path / "b", **{**kw, "resolution": [24, 16]}, resume=True),
                    progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])


def test_a_stepped_rate_ending_in_a_step_still_resumes_to_a_raised_or_older_steps(sd1_dir, images, tmp_path):
    """On --resume a --steps past --lr-steps' last step goes on at its last rate, as a raised --steps did before the
    last step ended the run (--lr-steps itself cannot change on a resume): the run can be lengthened, and a run an
    older textinv started with such a --steps (config.yaml's steps: 6) resumes. Both were refused, the error
    saying to change --lr-steps, which the resume then refused."""
    from textinv.cli import main

    out = tmp_path / "a"
    train(config(images, out, model=str(sd1_dir), steps=TrainConfig.steps, lr=TrainConfig.lr, save_every=2,
                 lr_steps="0.05:2, 0.01:4"), progress=False)
    assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "6"
    old = tmp_path / "old"
    train(config(images, old, model=str(sd1_dir), steps=3, lr=TrainConfig.lr, save_every=2,
                 lr_steps="0.05:2, 0.01:3"), progress=False)
    saved = (old / "config.yaml").read_text()
    (old / "config.yaml").write_text(saved.replace("\nsteps: 3\n", "\nsteps: 6\n"))  # (as an older textinv saved it)
    assert main(["train", "--out", str(old), "--resume"]) == 0
    assert load_embedding(old / "learned_embeds.safetensors").metadata["steps"] == "6"


def test_a_resume_reads_a_clip_value_given_anew_as_a_number_or_text_alike(sd1_dir, images, tmp_path):
    """--max-grad-norm is text now (a stepped value, '0.1:100, 0.05'), a number from Python and a run saved before:
    a resume giving it again, the same value spelt as a number or as text, is the same setting. It was refused as
    another (max_grad_norm: 1.0 -> '1.0')."""
    from textinv.cli import main

    out = tmp_path / "a"
    train(config(images, out, model=str(sd1_dir), steps=4, save_every=2, max_grad_norm=1.0), progress=False)
    assert main(["train", "--out", str(out), "--resume", "--max-grad-norm", "1"]) == 0
    assert load_embedding(out / "learned_embeds.safetensors").metadata["steps"] == "4"


def test_a_run_an_older_textinv_started_with_a_stepped_rate_resumes_to_its_saved_steps(sd1_dir, images, tmp_path):
    """An older textinv ran a stepped rate ending in RATE:STEP on to --steps, its default 3000 saved as such in
    config.yaml: resumed, it goes on to those steps at the last rate. It was cut to the last rate's step, so a run
    past it could not resume (--steps 3000 given again read as left out)."""
    out = tmp_path / "old"
    run = dict(model=str(sd1_dir), lr=TrainConfig.lr, save_every=2, lr_steps="0.05:2, 0.01:3")
    train(config(images, out, steps=3, **run), progress=False)
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace("\nsteps: 3\n", f"\nsteps: {DEFAULT_STEPS}\n"))
    import os
    import signal

    with pytest.raises(TrainingInterrupted):  # (stopped at step 4, past the last rate's step, on its way to 3000)
        train(config(images, out, steps=TrainConfig.steps, resume=True, **run), progress=False,
              on_step=lambda s: s == 4 and os.kill(os.getpid(), signal.SIGTERM))


def test_loss_csv_keeps_the_rates_its_rows_trained_at_across_a_resume_with_a_raised_steps(sd1_dir, images, tmp_path):
    """A resume with a raised --steps stretches a cosine schedule; loss.csv's rows from before it trained at the
    first one's rates, which their learn_rate keeps. They were rewritten with the stretched schedule's (row 2:
    0.0481 for the 0.0427 it trained at)."""
    import csv

    def rates():
        return [float(r["learn_rate"]) for r in csv.DictReader(open(tmp_path / "a" / "loss.csv", newline=""))]

    run = dict(log_every=1, save_every=2, lr_schedule="cosine")
    train(config(images, tmp_path / "a", steps=4, **run), model=fresh_model(sd1_dir), progress=False)
    before = rates()
    train(config(images, tmp_path / "a", steps=8, resume=True, **run), model=fresh_model(sd1_dir), progress=False)
    assert rates()[:4] == before and rates()[4:] == [0.025, 0.0154329, 0.00732233, 0.00190301]  # (the new ones)


@pytest.mark.parametrize("size, cover", [((24, 16), (16, 48)), ((16, 24), (24, 72))])
def test_random_windows_at_a_width_by_height_cut_the_mask_with_the_picture(size, cover, tmp_path):
    """At --resolution WIDTHxHEIGHT each 48x16 picture is scaled to cover W x H (a 16x24 portrait: 72x24) and its
    windows are W x H, (3, H, W), each a slice of the cover along its width; its alpha is cut at the same place."""
    from textinv.data import load_training_images, random_windows

    paths = sorted(wide_pictures(tmp_path / "w", alpha=True).glob("*.png"))
    pictures = load_training_images(paths, size, use_alpha=True, random_crop=True)
    width, height = size
    assert pictures[0].pixels.shape == (3, height, width) and pictures[0].alpha.shape == (1, height, width)
    assert pictures[0].cover.shape == (3, *cover) and pictures[0].cover_alpha.shape == (1, *cover)
    places = set()
    for i, w in enumerate(random_windows(pictures, 8, seed=1)):
        p = pictures[i % 3]
        assert w.pixels.shape == (3, height, width) and w.alpha.shape == (1, height, width)
        if w.pixels.dtype == torch.float32:  # (a window transparent all over: the picture's centre)
            assert torch.equal(w.alpha, p.alpha)
            continue
        x = next(x for x in range(cover[1] - width + 1) if torch.equal(w.pixels, p.cover[:, :, x:x + width]))
        assert torch.equal(w.alpha, p.cover_alpha[:, :, x:x + width])
        places.add(x)
    assert len(places) > 1


def test_random_crop_and_alpha_mask_at_a_width_by_height_train_on_each_windows_own_weights(sd1_dir, tmp_path,
                                                                                           monkeypatch):
    """--resolution 24x16 with --random-crop and --alpha-mask: the latents and pixel weights of a step are
    (B, C, 16/f, 24/f), and each sample's weights are those of the window its latent was encoded from (or of its
    mirror image), not another's, nor the centre's."""
    from textinv.data import latent_weights, load_training_images, random_windows

    images = wide_pictures(tmp_path / "w", alpha=True)
    paths = sorted(images.glob("*.png"))
    model, seen = fresh_model(sd1_dir), []
    real = train_module._draw

    def recording(c, *args, **kwargs):
        part = real(c, *args, **kwargs)
        seen.append((part["latents"].shape, part["pixel_weight"]))
        return part

    monkeypatch.setattr(train_module, "_draw", recording)
    train(config(images, tmp_path / "a", resolution="24x16", random_crop=True, alpha_mask=True, steps=6),
          model=model, progress=False)
    scale = model.pipeline.vae_scale_factor
    windows = random_windows(load_training_images(paths, (24, 16), use_alpha=True, random_crop=True),
                             latent_cache.RANDOM_CROPS, batches.concept_seed(0, 0))
    known = latent_weights(windows, (16 // scale, 24 // scale), images)  # (the windows', then their mirrors')
    assert len({tuple(w.flatten().tolist()) for w in known}) > 2  # (windows of different weights)
    for shape, weights in seen:
        assert shape[-2:] == weights.shape[-2:] == (16 // scale, 24 // scale)
        assert all(any(torch.equal(w, k) for k in known) for w in weights)
    assert len({tuple(w.flatten().tolist()) for _, weights in seen for w in weights}) > 1


@pytest.mark.parametrize("settings", [dict(), dict(alpha_mask=True)])
def test_the_reference_like_mode_at_a_width_by_height_learns_what_the_cached_mode_learns(settings, sd1_dir, images,
                                                                                         tmp_path, monkeypatch):
    """The benchmark mode encodes the W x H pictures every step: its latents are (B, C, H/f, W/f) as the cached
    ones, and it learns the same vectors (with --alpha-mask, weighted by the same alpha)."""
    if settings:
        images = cut_out(images, tmp_path / "cut")
    shapes = []
    real = train_module.diffusion_loss

    def spy(model, scheduler, latents, *args, **kwargs):
        shapes.append(tuple(latents.shape[-2:]))
        return real(model, scheduler, latents, *args, **kwargs)

    monkeypatch.setattr(train_module, "diffusion_loss", spy)
    kw = dict(resolution="24x16", steps=4, **settings)
    ours = train(config(images, tmp_path / "a", **kw), model=fresh_model(sd1_dir), progress=False)
    ref = train(config(images, tmp_path / "b", reference_like=True, **kw), model=fresh_model(sd1_dir),
                progress=False)
    scale = fresh_model(sd1_dir).pipeline.vae_scale_factor
    assert set(shapes) == {(16 // scale, 24 // scale)} and len(shapes) == 8
    assert torch.allclose(ours.embedding.vectors["text_encoder"], ref.embedding.vectors["text_encoder"], atol=1e-5)


def test_a_resolution_far_from_the_models_own_size_is_warned_of(sd1_dir, images, tmp_path):
    """The diffusers script's --resolution 512, typed out of habit on the bundled 64 px model, trained at 512 without
    a word: 64 times the work a step, at a size the model never saw. Within half to twice its size (SDXL at 512, SD
    1.5 at 1024) nothing is said. (The tiny model is made for 16 px.)"""
    with pytest.warns(UserWarning, match=r"--resolution 48x40 is far from the 16x16 pictures .* was made for.* "
                                         r"each step costs 7.5 times as much.* leave --resolution out"):
        train(config(images, tmp_path / "far", steps=1, resolution="48x40"), model=fresh_model(sd1_dir),
              progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*--resolution")
        train(config(images, tmp_path / "near", steps=1, resolution=32), model=fresh_model(sd1_dir), progress=False)


def known_gradient_run(sd1_dir, images, out, monkeypatch, factors=(1.0,), **kw):
    """`train` with a loss of a known gradient in place of the model's: the n-th micro-batch's loss is
    factors[n % len(factors)] x the vectors' sum, so its gradient is that factor in every element. Returns the
    result, and what the optimizer saw at each step: the gradient of each parameter, and each group's rate."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    calls, seen = [], []

    def losses(self, inputs):
        calls.append(None)
        return (factors[(len(calls) - 1) % len(factors)] * self.exts[0].vectors.sum())[None]  # (K,) = (1,)

    def hook(optimizer, args, kwargs):
        seen.append(([p.grad.clone() for g in optimizer.param_groups for p in g["params"]],
                     [g["lr"] for g in optimizer.param_groups]))

    monkeypatch.setattr(train_module._Run, "concept_losses", losses)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        result = train(config(images, out, **kw), model=fresh_model(sd1_dir), progress=False)
    finally:
        handle.remove()
    return result, seen


def test_grad_accumulation_steps_on_the_mean_of_its_micro_batches_gradients_and_logs_their_mean_loss(
        sd1_dir, images, tmp_path, monkeypatch):
    """With --grad-accum N the step's gradient, and its logged loss, are the mean of the N micro-batches', not their
    sum: micro-batches of gradient 1 and 3 step on 2 (their sum would be 4). AdamW hides a gradient's scale, so
    the vectors alone do not tell."""
    result, seen = known_gradient_run(sd1_dir, images, tmp_path / "a", monkeypatch, (1.0, 3.0), steps=2,
                                      log_every=1, grad_accum=2)
    assert len(seen) == 2
    for (grad,), _ in seen:
        assert torch.equal(grad, torch.full_like(grad, 2.0))
    # the loss logged at step 1 is the mean of 1x and 3x the starting vectors' sum: 2x it
    model = fresh_model(sd1_dir)
    start = init_vectors(base_embedding(model.text_encoder).weight, encode_init(model.tokenizer, "dog"), 1)
    assert result.losses[0][0] == 1
    assert result.losses[0][1] == pytest.approx(2 * start.sum().item(), rel=1e-5)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_max_grad_norm_shrinks_a_larger_gradient_to_it_and_leaves_a_smaller_one(max_norm, sd1_dir, images, tmp_path,
                                                                                 monkeypatch):
    _, [((grad,), _)] = known_gradient_run(sd1_dir, images, tmp_path / "a", monkeypatch, (1.0,), steps=1,
                                           max_grad_norm=max_norm)
    norm = grad.shape.numel() ** 0.5  # (the gradient: 1 in every element)
    want = torch.full_like(grad, min(1.0, max_norm / (norm + 1e-6)))
    assert torch.allclose(grad, want, rtol=1e-6, atol=0)


def test_scale_lr_multiplies_the_rate_by_batch_grad_accum_and_processes(sd1_dir, images, tmp_path, monkeypatch):
    _, seen = known_gradient_run(sd1_dir, images, tmp_path / "a", monkeypatch, steps=1, batch=2, grad_accum=3,
                                 lr=1e-3, scale_lr=True)
    assert seen[0][1] == [pytest.approx(6e-3)]


def test_max_grad_value_keeps_an_fp16_overflow_so_only_its_concept_skips_the_step(sd1_dir, tmp_path, monkeypatch):
    """Clipped to the value, an overflowed gradient's inf would look finite, and the concepts' step be skipped
    whole (GradScaler found the inf before the clipping): the inf is kept, so the overflowed concept alone keeps
    its vectors and the other steps. A loss of 1e35 x the vectors is finite, its gradient times the loss scale
    (65,536) is not."""
    from conftest import write_images

    def losses(self, inputs):  # concept 0 overflows, concept 1 does not
        vectors = self.exts[0].vectors
        return torch.stack([f * vectors[c.rows[0]].sum() for f, c in zip((1e35, 1.0), self.concepts)])

    monkeypatch.setattr(train_module._Run, "concept_losses", losses)
    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    model = load_model(sd1_dir, dtype=torch.float16)
    start = [init_vectors(base_embedding(model.text_encoder).weight, encode_init(model.tokenizer, word), 1)
             for word in ("dog", "cat")]
    result = train(TrainConfig(concepts=[f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"], out=str(tmp_path / "joint"),
                               steps=1, batch=1, save_every=0, sample_every=0, lr=5e-2, precision="fp16",
                               max_grad_value=0.1), model=model, progress=False)
    overflowed, stepped = (e.vectors["text_encoder"] for e in result.embeddings)
    assert torch.equal(overflowed, start[0]) and not torch.equal(stepped, start[1])

