"""The embedded `shapes` model: the bundled folder loads offline and generates, and its pretraining command runs."""

import json
import shutil

import pytest
import torch

from textinv.errors import ConfigError
from textinv.models import BUNDLED_MODELS, load_model
from textinv.shapes import world
from textinv.shapes.pretrain import STAGES, PretrainConfig, build_tokenizer_for_world, main as pretrain_main

BUNDLED = BUNDLED_MODELS["shapes"]
needs_bundled = pytest.mark.skipif(not (BUNDLED / "model_index.json").exists(),
                                   reason="the shapes model is not exported yet (python -m textinv.shapes.pretrain)")


@pytest.fixture(scope="module")
def shapes_model():
    return load_model("shapes")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `--quick --steps 2` run at the default seed: (its work folder, its export). Tests only read them; one that
    trains on or changes the work folder takes a copy (`quick_work`): each quick run is seconds of rendering and
    training on both stages, and a dozen tests began with one of these settings (or --steps 1)."""
    base = tmp_path_factory.mktemp("quick")
    work, out = base / "work", base / "model"
    assert pretrain_main(["--quick", "--work", str(work), "--out", str(out), "--steps", "2"]) == 0
    return work, out


def quick_work(quick_run, folder):
    """A copy of `quick_run`'s work folder (both stages at step 2, checkpoints and log) at `folder`, to go on with."""
    shutil.copytree(quick_run[0], folder)
    return folder


def refused(argv, message):
    """pretrain's command line refuses `argv` with one `error:` line holding `message`, exit 2, no traceback."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert pretrain_main(argv) == 2
    assert err.getvalue().startswith("error: ") and message in err.getvalue(), err.getvalue()


def vae_only(config, work):
    """A work folder at `work` with a 2-step VAE and no UNet, its checkpoint holding a latent scale as a VAE kept
    from an export does: UNet runs that are compared with each other need not each measure it (512 renders)."""
    from textinv.shapes.pretrain import train_vae

    train_vae(config, work, minutes=5, max_steps=2, log=lambda _: None)
    state = json.loads((work / "vae" / "state.json").read_text())
    (work / "vae" / "state.json").write_text(json.dumps({**state, "scaling_factor": 3.0}))


def test_world_tokenizer_has_every_word_as_one_token():
    tok = build_tokenizer_for_world()
    split = {w: tok.tokenize(w) for w in world.VOCABULARY if len(tok.tokenize(w)) != 1}
    assert split == {}


@needs_bundled
def test_bundled_model_loads_as_float32_with_a_complete_tokenizer(shapes_model):
    assert shapes_model.family == "custom"
    assert shapes_model.resolution == world.RESOLUTION
    assert shapes_model.prediction_type == "v_prediction"
    for module in (shapes_model.unet, shapes_model.vae, shapes_model.text_encoder):
        assert next(module.parameters()).dtype == torch.float32
    # Zero terminal SNR: training reached pure noise, and sampling starts there.
    assert shapes_model.noise_scheduler().alphas_cumprod[-1] < 1e-6
    scheduler = type(shapes_model.pipeline.scheduler).from_config(shapes_model.pipeline.scheduler.config)
    scheduler.set_timesteps(25)
    assert int(scheduler.timesteps[0]) == 999
    # Both tokenizer formats are there, so slow and fast tokenizers (and other tools) can read it.
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (BUNDLED / "tokenizer" / name).is_file()
    record = json.loads((BUNDLED / "training.json").read_text())
    assert record["stages"]["vae"]["steps"] > 0
    # It samples best at a lower guidance than SD's 7.5, and says so: generate, evaluate and demo default to it.
    assert shapes_model.guidance == record["config"]["sample_guidance"] < 7.5


@needs_bundled
def test_bundled_tokenizer_knows_every_world_word(shapes_model):
    tok = shapes_model.tokenizer
    split = [w for w in world.VOCABULARY if len(tok(w, add_special_tokens=False).input_ids) != 1]
    assert split == []
    assert tok.model_max_length == shapes_model.text_encoder.config.max_position_embeddings == 77


@needs_bundled
def test_bundled_model_says_its_own_init_words_and_templates_in_words_it_knows(shapes_model):
    """`textinv train` on the bundled model without --init or --templates takes these (models.recorded_prompting):
    SD's defaults ("object", "a painting in the style of {}") are fragments in its 760-word vocabulary."""
    from textinv.tokens import encode_init, split_words

    tok = shapes_model.tokenizer
    assert set(shapes_model.prompting) == {"object", "style"}
    for prop, own in shapes_model.prompting.items():
        texts = [own["init"]] + [t.replace("{}", "") for t in own["templates"]]
        assert own["templates"] and all(split_words(tok, encode_init(tok, text)) == [] for text in texts if text.strip())
    assert split_words(tok, encode_init(tok, "object")) != []  # (what the paper's default would have been)


@needs_bundled
def test_bundled_model_generates_a_64px_picture(shapes_model):
    pipe = shapes_model.pipeline
    out = pipe("a red star on a white background", num_inference_steps=4, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    image = out.images
    assert image.shape == (1, 3, 64, 64)
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def test_quick_pretraining_runs_end_to_end(quick_run, tmp_path):
    """`--quick` (tiny sizes, both stages, export) is the whole pipeline in about 10 s, well under a minute."""
    work, out = quick_run
    log = json.loads((work / "log.json").read_text())
    assert log["vae"]["steps"] == 2 and log["unet"]["steps"] == 2
    record = json.loads((out / "training.json").read_text())
    assert record["stages"]["unet"]["steps"] == 2 and "command" in record
    model = load_model(out)
    assert model.resolution == world.RESOLUTION
    assert model.prediction_type == "v_prediction"
    assert next(model.unet.parameters()).dtype == torch.float32
    # A re-run resumes from the checkpoint instead of starting over.
    work = quick_work(quick_run, tmp_path / "work")
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0
    assert json.loads((work / "log.json").read_text())["unet"]["steps"] == 3


def test_fresh_pretraining_runs_are_reproducible_from_the_seed(quick_run, tmp_path):
    """Two fresh runs with one seed export the same weights (initial weights included); another seed does not. (The
    first is `quick_run`'s, at the default seed.)"""
    from safetensors.torch import load_file

    def run(name, *seed):
        out = tmp_path / f"{name}-model"
        assert pretrain_main(["--quick", "--work", str(tmp_path / name), "--out", str(out), "--steps", "2",
                              *seed]) == 0
        return out

    def weights(out):
        return {part: load_file(str(out / part / f"{file}.safetensors")) for part, file in
                (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))}

    a, b, c = weights(quick_run[1]), weights(run("b")), weights(run("c", "--seed", "4"))
    for part in a:
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
        assert not all(torch.equal(a[part][k], c[part][k]) for k in a[part]), part


def test_pretraining_continues_from_an_exported_model(quick_run, tmp_path, monkeypatch):
    """Without the original checkpoints, a new work folder starts from an exported model's weights and steps; with
    no further training, exporting it again gives the same pipeline. A start killed midway leaves nothing the next
    try stumbles on (it left a half folder that made the next try fail with a traceback)."""
    from safetensors.torch import load_file

    from textinv.shapes import pretrain

    first = quick_run[1]
    assert load_model(first).prompting["object"]["init"] == "shape"  # the export records the world's own words
    work = tmp_path / "w2"
    write = pretrain._write_json

    def killed_at_the_config(path, data):
        if path.name == "config.json":
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(pretrain, "_write_json", killed_at_the_config)
    with pytest.raises(KeyboardInterrupt):
        pretrain.start_from_model(first, work, log=lambda _: None)
    monkeypatch.undo()
    assert not work.exists()
    assert pretrain_main(["--from-model", str(first), "--work", str(work)]) == 0
    assert json.loads((work / "unet" / "state.json").read_text())["step"] == 2
    again = tmp_path / "again"
    assert pretrain_main(["--export", "--work", str(work), "--out", str(again)]) == 0
    for part, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        a, b = (load_file(str(d / part / f"{name}.safetensors")) for d in (first, again))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0
    assert json.loads((work / "log.json").read_text())["unet"]["steps"] == 3
    refused(["--from-model", str(first), "--work", str(work)], "already holds a run")


def test_a_new_unet_of_other_sizes_trains_on_a_kept_vae(tmp_path):
    """`--from-model M --keep vae` keeps the autoencoder bit-equal and starts a new UNet + text encoder, whose sizes
    `--set` may change; once a stage has a checkpoint its sizes are fixed (the error names the way out)."""
    from safetensors.torch import load_file

    first = tmp_path / "first"
    assert pretrain_main(["--quick", "--work", str(tmp_path / "w1"), "--out", str(first), "--steps", "2",
                          "--set", "unet_lr=1e-5"]) == 0  # as a final fine-tune leaves it
    work, out = tmp_path / "w2", tmp_path / "wider"
    assert pretrain_main(["--from-model", str(first), "--work", str(work), "--keep", "vae"]) == 0
    assert not (work / "unet").exists() and set(json.loads((work / "log.json").read_text())) == {"vae"}
    assert json.loads((work / "config.json").read_text())["unet_lr"] == PretrainConfig().unet_lr  # a new UNet's rate
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "2", "--set", "unet_channels=16,24",
                          "--set", "unet_layers=2", "--set", "unet_attention=1,1"]) == 0
    assert pretrain_main(["--export", "--work", str(work), "--out", str(out)]) == 0
    unet = load_model(out).unet
    assert tuple(unet.config.block_out_channels) == (16, 24) and unet.config.layers_per_block == 2
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 2
    a, b = (load_file(str(d / "vae" / "diffusion_pytorch_model.safetensors")) for d in (first, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((work / "log.json").read_text())["unet"]["steps"] == 2  # a new UNet counts from 0
    refused(["--stage", "unet", "--work", str(work), "--steps", "3", "--set", "unet_layers=1"],
            "made with another unet_layers")
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3", "--set", "ema_decay=0.99"]) == 0
    refused(["--from-model", str(first), "--work", str(tmp_path / "w3"), "--keep", "unet"], "keep 'vae' or 'vae,unet'")


def test_a_new_unet_on_a_kept_vae_takes_the_exports_scale_without_measuring(quick_run, tmp_path, monkeypatch,
                                                                              capsys):
    """`--keep vae` keeps the export's latent scaling factor with the VAE: the new UNet's first chunk uses it (it
    rendered and encoded 512 pictures to measure it again); once a VAE chunk changes the encoder, it is measured."""
    from textinv.shapes import pretrain

    first, work = quick_run[1], tmp_path / "w2"
    measured = []
    real = pretrain.latent_scale
    monkeypatch.setattr(pretrain, "latent_scale", lambda *a, **kw: measured.append(1) or real(*a, **kw))
    assert pretrain_main(["--from-model", str(first), "--keep", "vae", "--work", str(work)]) == 0
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "1"]) == 0
    exported = json.loads((first / "training.json").read_text())["scaling_factor"]
    assert json.loads((work / "unet" / "state.json").read_text())["scaling_factor"] == exported
    assert load_model(first).vae.config.scaling_factor == exported and not measured
    assert "(the kept VAE's)" in capsys.readouterr().out
    assert pretrain_main(["--stage", "vae", "--work", str(work), "--steps", "3"]) == 0
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "2"]) == 0
    assert measured == [1]


def test_measuring_the_latent_scale_leaves_torchs_global_generator_alone():
    """The posterior's noise comes from the measurement's own generator, so where it is measured (first chunk or
    not) does not change what a run draws afterwards."""
    from textinv.shapes.pretrain import QUICK, build_vae, latent_scale

    vae = build_vae(PretrainConfig(**QUICK))  # (its initial weights come from the global generator)
    before = torch.get_rng_state()
    scale = latent_scale(vae, "cpu", n=64)
    assert torch.equal(before, torch.get_rng_state()) and scale > 0


def test_a_folder_made_from_an_exported_model_takes_the_seed_flag(quick_run, tmp_path):
    """`--seed` is the seed of a new work folder, one that `--from-model` makes too (with `--keep vae` it seeds the
    new UNet); flags refused with --from-model are refused before its folder is written."""
    first = quick_run[1]
    work = tmp_path / "w2"
    assert pretrain_main(["--from-model", str(first), "--keep", "vae", "--work", str(work), "--seed", "5"]) == 0
    assert json.loads((work / "config.json").read_text())["seed"] == 5
    with pytest.raises(SystemExit):
        pretrain_main(["--from-model", str(first), "--work", str(tmp_path / "w3"), "--decoder-only"])
    assert not (tmp_path / "w3").exists()


def test_a_kept_unet_grows_attention_that_starts_as_the_identity(quick_run, tmp_path):
    """`--from-model M --set unet_attention=1,1` adds attention at the level that had none: the grown UNet predicts
    exactly what the export did (the new blocks' output projections start at zero), trains from there (the new
    blocks move), and exports a UNet with the block; any other size change of a kept UNet or VAE is refused."""
    first = quick_run[1]
    work, grown_out = tmp_path / "grown", tmp_path / "grown-model"
    assert pretrain_main(["--from-model", str(first), "--work", str(work), "--set", "unet_attention=1,1",
                          "--set", "unet_heads=1,2"]) == 0
    assert pretrain_main(["--export", "--work", str(work), "--out", str(grown_out)]) == 0
    before, after = load_model(first).unet, load_model(grown_out).unet
    assert [type(b).__name__ for b in before.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert [type(b).__name__ for b in after.down_blocks] == ["CrossAttnDownBlock2D"] * 2
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 900])
    context = torch.randn(2, 77, before.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        assert torch.allclose(before(x, t, context).sample, after(x, t, context).sample, atol=1e-6)
    new = {k: v.clone() for k, v in after.state_dict().items() if k.startswith("down_blocks.0.attentions.")}
    assert new and not any(torch.equal(v, torch.zeros_like(v)) for k, v in new.items() if "proj_in" in k)
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "4"]) == 0
    assert pretrain_main(["--export", "--work", str(work), "--out", str(tmp_path / "trained")]) == 0
    trained = load_model(tmp_path / "trained").unet.state_dict()
    moved = [k for k in new if "proj_out" in k and not torch.equal(trained[k], new[k])]
    assert moved  # the zero projection leaves zero once trained: the block joins in
    for setting, message in (("unet_attention=1,0", "can only gain attention"), ("unet_layers=2", "can only gain"),
                             ("unet_heads=1", "can only gain"), ("vae_channels=8,16,16", "the VAE is kept")):
        refused(["--from-model", str(first), "--work", str(tmp_path / setting.split("=")[0]), "--set", setting],
                message)


@pytest.mark.parametrize("text, error", [("unet_layers", "KEY=VALUE"), ("wings=2", "KEY=VALUE"),
                                         ("unet_layers=two", "'two' is not a whole number"),
                                         ("unet_attention=1,maybe", "'maybe' is not true or false")])
def test_bad_settings_name_the_setting(text, error):
    from textinv.shapes.pretrain import parse_setting

    with pytest.raises(ConfigError, match=error):
        parse_setting(text)


def test_a_killed_chunk_keeps_its_record_up_to_its_last_checkpoint(tmp_path, monkeypatch):
    """log.json is written with each checkpoint, not only at a chunk's normal end: a run killed mid-chunk (a lost
    GPU lease, Ctrl-C) keeps the steps it checkpointed on record, and the next chunk carries on from there."""
    import textinv.shapes.pretrain as pretrain

    config = pretrain.PretrainConfig(**{**pretrain.QUICK, "checkpoint_minutes": 1e-9})  # a checkpoint every step
    steps, real_step = [], pretrain._optimizer_step

    def dies_on_the_third(*args):
        steps.append(1)
        if len(steps) == 3:
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(pretrain, "_optimizer_step", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train_vae(config, tmp_path, minutes=5, max_steps=10, log=lambda line: None)
    log = json.loads((tmp_path / "log.json").read_text())["vae"]
    assert [(c["step_start"], c["step_end"]) for c in log["chunks"]] == [(0, 2)] and log["steps"] == 2
    assert json.loads((tmp_path / "vae" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(pretrain, "_optimizer_step", real_step)
    assert pretrain.train_vae(config, tmp_path, minutes=5, max_steps=3, log=lambda line: None) == 3
    log = json.loads((tmp_path / "log.json").read_text())["vae"]
    assert [(c["step_start"], c["step_end"]) for c in log["chunks"]] == [(0, 2), (2, 3)] and log["steps"] == 3
    assert log["chunks"][-1]["batch"] == config.vae_batch and log["chunks"][-1]["lr"] == config.vae_lr


def test_a_decoder_only_chunk_keeps_the_latents_and_the_unet_trained_on_them(quick_run, tmp_path, capsys):
    """`--decoder-only` changes the decoder and nothing that makes latents (encoder and quant_conv stay bit-equal),
    so the next UNet chunk goes on with its latent scale instead of re-fitting to new latents; a full VAE chunk
    after it changes the encoder again and the UNet notices."""
    from safetensors.torch import load_file

    work = quick_work(quick_run, tmp_path / "work")
    before = load_file(str(work / "vae" / "vae.safetensors"))
    scale = json.loads((work / "unet" / "state.json").read_text())["scaling_factor"]
    assert pretrain_main(["--stage", "vae", "--decoder-only", "--work", str(work), "--steps", "5"]) == 0
    after = load_file(str(work / "vae" / "vae.safetensors"))
    makes_latents = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert makes_latents and all(torch.equal(before[k], after[k]) for k in makes_latents)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    log = json.loads((work / "log.json").read_text())["vae"]
    assert log["steps"] == 5 and log["chunks"][-1]["trained"] == "decoder"

    capsys.readouterr()
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0
    said = capsys.readouterr().out
    assert "fine-tuning on its latents" not in said
    assert "unet: 1 step in" in said and "now at step 3" in said  # a chunk says where it ended
    assert json.loads((work / "unet" / "state.json").read_text())["scaling_factor"] == scale

    assert pretrain_main(["--stage", "vae", "--work", str(work), "--steps", "6"]) == 0  # the whole VAE again
    assert json.loads((work / "log.json").read_text())["vae"]["chunks"][-1]["trained"] == "all"
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "4"]) == 0
    assert "encoder is now at step 6 (was 2); fine-tuning on its latents" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pretrain_main(["--stage", "unet", "--decoder-only", "--work", str(work)])


def _write_log_entries(work, stage, n):
    from textinv.shapes.pretrain import _log_chunk

    for i in range(n):
        _log_chunk(work, stage, {"step_start": 0, "step_end": i + 1, "seconds": 1.0}, update=i > 0)


def test_two_stages_running_at_once_both_keep_their_log(tmp_path):
    """A VAE and a UNet chunk in one work folder each rewrite log.json at their checkpoints; neither may lose the
    other's record (the file is read, changed and replaced under a lock)."""
    assert _each_stage_at_once(_write_log_entries, tmp_path, 300) == [0, 0]
    log = json.loads((tmp_path / "log.json").read_text())
    assert {stage: log[stage]["steps"] for stage in STAGES} == {stage: 300 for stage in STAGES}


def _each_stage_at_once(target, work, n) -> list[int]:
    """`target(work, stage, n)` for every stage, each in a forked process of its own, all at once: their exit codes."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=target, args=(work, stage, n)) for stage in STAGES]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    return [w.exitcode for w in writers]


def _write_config(work, stage, n):
    from textinv.shapes.pretrain import _write_json

    for i in range(n):
        _write_json(work / "config.json", {"stage": stage, "i": i, "padding": "x" * 2000})


def test_two_stages_started_at_once_both_write_the_config(tmp_path):
    """Each chunk writes config.json as it starts, under no lock: with one temporary name for both, one renamed
    the other's half-written file and the other stopped on its own rename (FileNotFoundError)."""
    assert _each_stage_at_once(_write_config, tmp_path, 200) == [0, 0]
    assert json.loads((tmp_path / "config.json").read_text())["i"] == 199


def test_deterministic_vae_posterior_samples_its_mean_and_keeps_it():
    from textinv.shapes.pretrain import PretrainConfig, QUICK, build_vae, make_deterministic

    vae = build_vae(PretrainConfig(**QUICK)).eval()
    x = world.render(world.sample_batch(4, torch.Generator().manual_seed(0))) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        assert (before.sample() - before.mean).abs().max() > 0.1  # a fresh VAE's posterior is wide
        make_deterministic(vae)
        after = vae.encode(x).latent_dist
    assert torch.equal(after.mean, before.mean)
    assert (after.sample() - after.mean).abs().max() < 1e-5


def test_object_weights_put_the_weight_on_the_objects():
    from textinv.shapes.pretrain import object_weights

    scenes = [world.Scene(world.ObjectSpec("square", "red", size="large"), background="white"),
              world.Scene(world.ObjectSpec("circle", "blue", size="small"), background="black", style="sketchy")]
    batch = world.SceneBatch.from_scenes(scenes)
    images = world.render(batch)
    w = object_weights(batch, images, 8.0)
    assert w.shape == (2, 1, 64, 64)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(2))
    for i in range(2):
        on_object = (images[i] - batch.background_rgb[i].view(3, 1, 1)).abs().amax(0) > 0.3
        assert w[i, 0][on_object].min() > 4 * w[i, 0][~on_object].min()
    assert torch.equal(object_weights(batch, images, 0.0), torch.ones_like(w))


def test_unet_object_weight_weighs_the_objects_latent_pixels_in_the_unet_loss(tmp_path):
    """`unet_object_weight` gives the UNet stage's inputs latent-pixel weights that are higher where the objects
    are, and the step's loss uses them: the same two steps move the weights otherwise than a plain run does."""
    import shutil

    import numpy as np
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from textinv.shapes.pretrain import (QUICK, _CaptionIds, _unet_draws, _unet_inputs, _unet_pictures,
                                         train_unet)

    config = PretrainConfig(**{**QUICK, "unet_batch": 4, "unet_object_weight": 8.0})
    ids_of = _CaptionIds(build_tokenizer_for_world())
    drawn = _unet_draws(config, torch.Generator().manual_seed(0), np.random.default_rng(0), ids_of, (4, 16, 16), 1000)
    inputs, _ = _unet_pictures(drawn, False, config.unet_object_weight, 16)
    w, images, background = inputs["w"], (inputs["x"] + 1) / 2, drawn[0].background_rgb.view(-1, 3, 1, 1)
    assert w.shape == (4, 1, 16, 16)
    on_object = F.avg_pool2d(((images - background).abs().amax(1, keepdim=True) > 0.1).float(), 4)
    for i in range(4):  # (each picture's weights have mean 1)
        assert w[i][on_object[i] == 1].min() > 4 * w[i][on_object[i] == 0].min()
    plain, _ = _unet_inputs(PretrainConfig(**{**QUICK, "unet_batch": 4}), torch.Generator().manual_seed(0),
                            np.random.default_rng(0), ids_of, (4, 16, 16), 1000, False)
    assert "w" not in plain and torch.equal(plain["x"], inputs["x"])  # (the default run's inputs as before)

    vae_only(config, tmp_path / "vae-only")
    weights = {}
    for weight in (0.0, 8.0):
        work = tmp_path / f"w{weight}"
        shutil.copytree(tmp_path / "vae-only", work)
        train_unet(PretrainConfig(**{**QUICK, "unet_batch": 4, "unet_object_weight": weight}), work, minutes=5,
                   max_steps=2, log=lambda _: None)
        weights[weight] = load_file(str(work / "unet" / "unet.safetensors"))
    assert max((weights[0.0][k] - weights[8.0][k]).abs().max().item() for k in weights[0.0]) > 1e-6


@pytest.mark.parametrize("name", ["object_weight", "unet_object_weight"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_loss_weight_that_is_no_finite_number_at_least_0_is_refused(name, value):
    """`--set unet_object_weight=nan` (or inf) passed the check `< 0` and made every step's loss nan."""
    from textinv.shapes.pretrain import parse_setting

    with pytest.raises(ConfigError, match=rf"{name} must be a finite number >= 0, got {value}"):
        PretrainConfig(**dict([parse_setting(f"{name}={value}")]))


def test_noise_schedule_is_sd_rescaled_to_zero_terminal_snr_with_trailing_steps():
    """The shapes model's schedule is SD's scaled-linear one with its last timestep moved to pure noise (so the
    background cannot leak through the noisy input's mean), and sampling starts at that last timestep. The first
    exports' schedule (SD's own, epsilon, leading steps) stays available."""
    from diffusers import DDPMScheduler

    from textinv.shapes.pretrain import PretrainConfig, build_scheduler

    def schedule(config):
        sampler = build_scheduler(config)
        sampler.set_timesteps(25)
        return DDPMScheduler.from_config(sampler.config).alphas_cumprod, int(sampler.timesteps[0])

    zero, first = schedule(PretrainConfig())
    sd, sd_first = schedule(PretrainConfig(prediction_type="epsilon", zero_terminal_snr=False))
    assert zero[-1] < 1e-6 and first == 999
    assert abs(float(sd[-1]) - 0.0047) < 2e-4 and sd_first < 999  # SD 1.x: alpha-bar 0.0047 at the end
    torch.testing.assert_close(zero[0], sd[0])  # the rescale keeps the clean end


def test_zero_terminal_snr_needs_v_prediction():
    from textinv.shapes.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="zero_terminal_snr needs prediction_type 'v_prediction'"):
        PretrainConfig(prediction_type="epsilon")
    with pytest.raises(ConfigError, match="prediction_type must be"):
        PretrainConfig(prediction_type="sample")


def test_an_epsilon_run_resumes_as_a_v_prediction_fine_tune(quick_run, tmp_path, capsys):
    """A work folder from before the schedule change (its state names no objective: epsilon on SD's schedule) goes
    on with the current objective, says so, and records it."""
    work = quick_work(quick_run, tmp_path / "work")
    state_path = work / "unet" / "state.json"
    state = json.loads(state_path.read_text())
    assert (state["prediction_type"], state["zero_terminal_snr"]) == ("v_prediction", True)
    del state["prediction_type"], state["zero_terminal_snr"]
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0
    assert "fine-tuning from epsilon (zero terminal SNR: False) to v_prediction" in capsys.readouterr().out
    assert json.loads(state_path.read_text())["prediction_type"] == "v_prediction"


@needs_bundled
def test_bundled_autoencoder_keeps_what_the_probe_reads(shapes_model):
    """Renders through the bundled VAE and back still read as their scenes (colour, background, position: the
    attributes it keeps best), and a picture is not another's: the round trip is the ceiling of caption fidelity."""
    from textinv.shapes.evaluate import round_trip
    from textinv.shapes.probe import Probe

    batch = world.sample_batch(32, torch.Generator().manual_seed(3), second_prob=0.0, free_hue_prob=0.0)
    images = world.render(batch)
    back = round_trip(shapes_model, images)
    assert back.shape == images.shape and 0 <= back.min() and back.max() <= 1
    read = Probe.load().predict(back)
    for attr in ("color", "background", "position"):
        truth = [getattr(sc.obj, attr) if attr != "background" else sc.background for sc in batch.scenes()]
        assert sum(r == t for r, t in zip(read[attr], truth)) >= 29, attr


@needs_bundled
def test_bundled_model_draws_the_background_its_caption_names(shapes_model):
    """The same starting noise under captions that differ only in the background gives those backgrounds. The first
    exports (SD's schedule, which leaves signal at the last timestep) drew the background from the starting noise's
    mean instead: with one seed, one background whatever the caption said."""
    from textinv.generate import render
    from textinv.shapes.evaluate import to_tensor
    from textinv.shapes.probe import Probe

    backgrounds, seeds = ("white", "black", "navy", "maroon"), [0, 1, 2, 3]
    prompts = [f"a red circle on a {b} background" for b in backgrounds for _ in seeds]
    images = render(shapes_model, prompts, seeds * len(backgrounds), steps=10, guidance=7.5)
    drawn = Probe.load().predict(to_tensor(images))["background"]
    expected = [b for b in backgrounds for _ in seeds]
    assert sum(d == e for d, e in zip(drawn, expected)) >= 12, list(zip(expected, drawn))


def test_export_refuses_to_replace_what_is_not_an_export_and_needs_checkpoints(quick_run, tmp_path):
    """The export swaps its --out folder whole, so --out must be new, empty or an earlier export; a --work with no
    checkpoint (a typo) exports nothing and creates nothing; an export only reads the work folder."""
    work = quick_work(quick_run, tmp_path / "w")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me")
    for out, message in ((work, "would replace the work folder"), (tmp_path, "would replace the work folder"),
                         (notes, "not an earlier export"), (tmp_path / "file", "not an earlier export")):
        refused(["--export", "--work", str(work), "--out", str(out)], message)
    assert (notes / "todo.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "keep me"
    assert (work / "vae" / "state.json").exists()
    refused(["--export", "--work", str(tmp_path / "typo"), "--out", str(tmp_path / "m")], "no config.json")
    assert not (tmp_path / "typo").exists() and not (tmp_path / "m").exists()
    # an earlier export is replaced, without writing to the work folder (a finished run on a read-only disk)
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    assert pretrain_main(["--export", "--work", str(work), "--out", str(tmp_path / "again")]) == 0
    assert pretrain_main(["--export", "--work", str(work), "--out", str(tmp_path / "again")]) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == before
    load_model(tmp_path / "again")


def test_a_death_between_the_two_renames_of_a_checkpoint_loses_nothing(quick_run, tmp_path):
    """A checkpoint is swapped in as `vae` -> `vae.old`, `vae.tmp` -> `vae`. Killed between the two, the next chunk
    takes `vae.old` back and resumes from it instead of starting over (and deleting it)."""
    work = quick_work(quick_run, tmp_path / "w")
    (work / "vae").rename(work / "vae.old")  # what the kill leaves
    assert pretrain_main(["--stage", "vae", "--work", str(work), "--steps", "3"]) == 0
    assert json.loads((work / "vae" / "state.json").read_text())["step"] == 3 and not (work / "vae.old").exists()


def _save_tiny_checkpoint(folder, step):
    from textinv.shapes.pretrain import save_checkpoint

    module = torch.nn.Linear(2, 2)
    params = list(module.parameters())
    save_checkpoint(folder, {"vae": module}, torch.optim.AdamW(params), params, {"step": step})


def _lock_is_free(work):
    """Whether another process could take the work folder's lock now (the one `log.json` and the swaps go under)."""
    import fcntl

    with open(work / "log.json.lock", "w") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(probe, fcntl.LOCK_UN)
        return True


def test_a_chunk_starting_beside_one_mid_swap_waits_for_the_swap(tmp_path, monkeypatch):
    """A decoder-only VAE chunk may run beside a UNet chunk. One starting while the other is between its checkpoint's
    two renames (`vae` moved to `vae.old`, `vae.tmp` not yet in) must not take `vae.old` back as a dead chunk's
    leftover: the writer's second rename would then fail. The swap holds the work folder's lock, and so does the
    recovery at start, which therefore waits for the swap."""
    import os
    import threading

    from textinv.shapes.pretrain import _recover_checkpoints

    _save_tiny_checkpoint(tmp_path / "vae", 1)
    between, go, rename = threading.Event(), threading.Event(), os.replace
    lock_free_mid_swap = []

    def paused_replace(src, dst):
        rename(src, dst)
        if str(dst).endswith("vae.old"):  # the first of the two renames
            lock_free_mid_swap.append(_lock_is_free(tmp_path))
            between.set()
            go.wait()

    monkeypatch.setattr(os, "replace", paused_replace)
    errors = []

    def run(target):
        try:
            target()
        except Exception as e:  # (a thread's exception is otherwise only printed)
            errors.append(e)

    writer = threading.Thread(target=run, args=(lambda: _save_tiny_checkpoint(tmp_path / "vae", 2),))
    starter = threading.Thread(target=run, args=(lambda: _recover_checkpoints(tmp_path, ("vae",)),))
    writer.start()
    assert between.wait(60)
    starter.start()
    go.set()
    writer.join()
    starter.join()
    assert errors == [] and lock_free_mid_swap == [False]
    assert json.loads((tmp_path / "vae" / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.json.lock", "vae"]


def test_a_unet_chunk_reads_the_vae_under_the_swap_lock(quick_run, tmp_path, monkeypatch):
    """A UNet chunk loads the VAE while a decoder-only VAE chunk beside it may swap a new checkpoint in: it reads
    under the lock the swap holds, so it never finds `vae` gone (moved to `vae.old`) or half replaced."""
    from textinv.shapes import pretrain

    work = quick_work(quick_run, tmp_path / "w")
    load, lock_free_at_read = pretrain.load_weights, []

    def probing_load(folder, name):
        if name == "vae":
            lock_free_at_read.append(_lock_is_free(work))
        return load(folder, name)

    monkeypatch.setattr(pretrain, "load_weights", probing_load)
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0
    assert lock_free_at_read == [False]


def test_an_export_reads_the_checkpoints_under_the_swap_lock(quick_run, tmp_path, monkeypatch):
    """An export beside a running chunk read the checkpoints without the lock the chunk swaps them in under: mid-swap
    it could find `unet` gone (and export an untrained UNet, with a warning) or read one checkpoint's files and the
    next one's. It reads under the lock; an export from a read-only disk still writes nothing (see above)."""
    from textinv.shapes import pretrain

    work = quick_work(quick_run, tmp_path / "w")
    build, lock_free_at_read = pretrain.build_pipeline, []

    def probing_build(config, folder, *a, **k):
        lock_free_at_read.append(_lock_is_free(work))
        return build(config, folder, *a, **k)

    monkeypatch.setattr(pretrain, "build_pipeline", probing_build)
    assert pretrain_main(["--export", "--work", str(work), "--out", str(tmp_path / "m")]) == 0
    assert lock_free_at_read == [False]


def _killed_mid_swap(folder):
    import os
    import signal

    def replace_then_die(src, dst, rename=os.replace):
        rename(src, dst)
        if str(dst).endswith(".old"):
            os.kill(os.getpid(), signal.SIGKILL)  # holding the work folder's lock

    os.replace = replace_then_die
    _save_tiny_checkpoint(folder, 2)


def test_a_chunk_killed_mid_swap_leaves_no_lock_behind(tmp_path):
    """The swap's lock is the operating system's, dropped with the killed process: the next start takes it and puts
    the last good checkpoint back."""
    import multiprocessing

    from textinv.shapes.pretrain import _recover_checkpoints

    _save_tiny_checkpoint(tmp_path / "vae", 1)
    killed = multiprocessing.get_context("fork").Process(target=_killed_mid_swap, args=(tmp_path / "vae",))
    killed.start()
    killed.join()
    assert killed.exitcode < 0 and (tmp_path / "vae.old").exists() and not (tmp_path / "vae").exists()
    _recover_checkpoints(tmp_path, ("vae",))
    assert json.loads((tmp_path / "vae" / "state.json").read_text())["step"] == 1


def test_pretrain_settings_are_checked_before_anything_is_stored(quick_run, tmp_path):
    work = quick_work(quick_run, tmp_path / "w")
    refused(["--stage", "unet", "--work", str(work), "--set", "text_heads=3", "--steps", "3"],
            "must be a multiple of text_heads 3")
    refused(["--stage", "unet", "--work", str(work), "--lr", "0", "--steps", "3"], "unet_lr must be positive")
    refused(["--stage", "vae", "--work", str(work), "--batch", "0", "--steps", "3"], "vae_batch must be at least 1")
    refused(["--stage", "unet", "--work", str(work), "--seed", "7", "--steps", "3"], "made with another seed")
    assert json.loads((work / "config.json").read_text())["text_heads"] == 2  # nothing bad was stored
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3"]) == 0


def test_vae_chunks_with_a_sampled_posterior_equal_one_run(tmp_path):
    """The posterior's noise is drawn by step, so two chunks give the weights one run gives (moments are stored in
    bf16, so the two agree to that precision, not bit for bit)."""
    from safetensors.torch import load_file

    quick = ["--set", "vae_posterior=sample", "--set", "vae_channels=8,8,16", "--set", "vae_groups=4",
             "--batch", "4", "--set", "warmup=2"]
    for name, chunks in (("one", [4]), ("two", [2, 4])):
        for steps in chunks:
            assert pretrain_main(["--stage", "vae", "--work", str(tmp_path / name), "--steps", str(steps)]
                                 + quick) == 0
    a, b = (load_file(str(tmp_path / n / "vae" / "vae.safetensors")) for n in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-3


def test_caption_ids_are_the_tokenizers_own():
    """The pretraining's word-by-word ids equal the tokenizer's for captions of every kind, the empty one (the
    dropped captions) and one too long to keep whole."""
    import numpy as np

    from textinv.shapes.pretrain import _CaptionIds, _tokenize

    tok = build_tokenizer_for_world()
    texts = world.captions(world.sample_batch(400, torch.Generator().manual_seed(0)), np.random.default_rng(0))
    texts += ["", "a red star, flat style", " ".join(["red star,"] * 40)]
    assert torch.equal(_CaptionIds(tok)(texts), _tokenize(tok, texts, "cpu"))


def test_unet_inputs_made_ahead_train_as_made_in_turn_and_chunks_resume_where_one_run_is(tmp_path):
    """With the next step's inputs made by a thread (a GPU's way), a run is the run made in turn, bit for bit; and
    a checkpoint keeps the generators as they were after its own step's draws, not the one made ahead, so two
    chunks draw what one run draws."""
    import shutil

    from safetensors.torch import load_file

    from textinv.shapes.pretrain import QUICK, train_unet

    config = PretrainConfig(**{**QUICK, "unet_batch": 4})
    vae_only(config, tmp_path / "vae-only")
    runs = {}
    for name, ahead, threads, chunks in (("in-turn", False, 1, [4]), ("ahead", True, 1, [4]),
                                         ("3-renders", True, 3, [4]), ("two-chunks", True, 3, [2, 4])):
        work = tmp_path / name
        shutil.copytree(tmp_path / "vae-only", work)
        for steps in chunks:
            train_unet(config, work, minutes=5, max_steps=steps, log=lambda _: None, ahead=ahead,
                       render_threads=threads)
        runs[name] = (load_file(str(work / "unet" / "unet.safetensors")),
                      json.loads((work / "unet" / "state.json").read_text()))
    (a, sa), (b, sb), (d, sd), (c, sc) = (runs[k] for k in ("in-turn", "ahead", "3-renders", "two-chunks"))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], d[k]) for k in a)
    assert (sa["generator"], sa["rng"]) == (sb["generator"], sb["rng"]) == (sd["generator"], sd["rng"]) \
        == (sc["generator"], sc["rng"])
    assert max((a[k] - c[k]).abs().max().item() for k in a) < 2e-3  # (moments kept in bf16 between chunks)


def test_inputs_rendered_by_several_threads_are_the_inputs_made_in_turn():
    """With pictures rendered by three threads, a batch at a time each, every step's pictures, caption ids, noise,
    timesteps and generator states (what its checkpoint keeps) are bit for bit those made in turn: one thread still
    draws the random numbers, step after step."""
    import numpy as np

    from textinv.shapes.pretrain import _Ahead, _CaptionIds, _unet_draws, _unet_inputs, _unet_pictures

    config = PretrainConfig(unet_batch=16)
    ids_of = _CaptionIds(build_tokenizer_for_world())

    def generators():
        return torch.Generator().manual_seed(7), np.random.default_rng(7)

    g, rng = generators()
    in_turn = [_unet_inputs(config, g, rng, ids_of, (4, 16, 16), 1000, False) for _ in range(7)]
    g, rng = generators()
    with _Ahead(lambda: _unet_draws(config, g, rng, ids_of, (4, 16, 16), 1000),
                lambda drawn: _unet_pictures(drawn, False), enabled=True, workers=3) as ahead:
        made = [ahead.next() for _ in range(7)]
    for (want, want_states), (got, got_states) in zip(in_turn, made):
        assert want.keys() == got.keys() == {"x", "ids", "noise", "t"}
        assert all(torch.equal(want[k], got[k]) for k in want)
        assert want_states == got_states
    assert not torch.equal(made[0][0]["x"], made[1][0]["x"])  # (fresh pictures each step)


def test_the_unet_stage_through_a_captured_step_trains_as_the_plain_step(tmp_path, monkeypatch):
    """--cuda-graphs' path for the pretraining step (its gradients are the graph's outputs, given to clipping and
    AdamW as they are, not copied), run eagerly, under torch.cuda's capture faked on the CPU (replays write over
    the outputs; every tensor the graph reads must stay put) and after a capture that failed: every checkpoint file
    (UNet, text encoder, EMA, AdamW's moments) is the plain step's bit for bit, and the chunk's record in log.json
    says how its step ran."""
    import shutil

    from safetensors.torch import load_file

    from graph_fakes import FakeCapture
    from textinv import graphs
    from textinv.shapes import pretrain
    from textinv.shapes.pretrain import QUICK, train_unet

    config = PretrainConfig(**{**QUICK, "unet_batch": 4})
    vae_only(config, tmp_path / "vae-only")
    calls = []
    real_call = graphs.CapturedStep.__call__
    monkeypatch.setattr(graphs.CapturedStep, "__call__", lambda self, x: calls.append(1) or real_call(self, x))

    def run(name: str, cuda_graphs: bool) -> tuple[str | None, dict]:
        work = tmp_path / name
        shutil.copytree(tmp_path / "vae-only", work)
        train_unet(config, work, minutes=5, max_steps=4, log=lambda _: None, cuda_graphs=cuda_graphs)
        record = json.loads((work / "log.json").read_text())["unet"]["chunks"][-1]
        files = sorted((work / "unet").glob("*.safetensors"))
        return record.get("cuda_graphs"), {f"{f.stem}.{k}": v for f in files for k, v in load_file(str(f)).items()}

    (plain_record, plain), (eager_record, eager) = run("plain", False), run("eager", True)
    assert len(calls) == 4
    with monkeypatch.context() as patch:  # a capture that fails (on the CPU: no CUDA streams), then eager steps
        patch.setattr(pretrain, "CapturedStep", lambda *a, **kw: graphs.CapturedStep(*a, **{**kw, "capture": True}))
        with pytest.warns(UserWarning, match="could not be captured"):
            failed_record, failed = run("failed", True)
    fake = FakeCapture(monkeypatch)
    faked_record, faked = run("faked", True)
    assert (fake.captures, fake.replays) == (1, 4)
    assert {k.split(".")[0] for k in plain} == {"unet", "text_encoder", "ema", "optimizer"} and len(plain) > 100
    for run_ in (eager, failed, faked):
        assert run_.keys() == plain.keys() and all(torch.equal(plain[k], run_[k]) for k in plain)
    assert plain_record is None and eager_record == "eager (not on a GPU)" and faked_record == "captured"
    assert failed_record.startswith("eager (RuntimeError: ") and "CUDA" in failed_record


def test_no_render_runs_while_the_unet_step_is_captured(tmp_path, monkeypatch):
    """torch.cuda.graph captures in "global" mode, where a CUDA call made meanwhile on any other thread fails, and
    a render thread makes some (it pins its pictures for the copy to the GPU): the renders under way finish before
    the step is captured, and the run goes on making its inputs ahead."""
    import time

    from graph_fakes import FakeCapture
    from textinv.shapes import pretrain
    from textinv.shapes.pretrain import QUICK, train_unet, train_vae

    config = PretrainConfig(**{**QUICK, "unet_batch": 4})
    train_vae(config, tmp_path, minutes=5, max_steps=2, log=lambda _: None)
    fake = FakeCapture(monkeypatch)
    rendering, rendered, real_render = [], [], pretrain._unet_pictures

    def slow_render(drawn, pin, *weighting):  # (renders after the first outlast the first step's warm-up: overlap)
        rendering.append(1)
        try:
            if rendered:
                time.sleep(0.5)
            return real_render(drawn, pin, *weighting)
        finally:
            rendering.pop()
            rendered.append(1)

    under_way, real_graph = [], torch.cuda.graph
    monkeypatch.setattr(pretrain, "_unet_pictures", slow_render)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: under_way.append(len(rendering)) or real_graph(g))
    assert train_unet(config, tmp_path, minutes=5, max_steps=3, log=lambda _: None, ahead=True, render_threads=2,
                      cuda_graphs=True) == 3
    assert fake.captures == 1 and under_way == [0] and len(rendered) >= 3


def test_cuda_graphs_in_pretraining_go_with_the_unet_stage_on_a_gpu(tmp_path, monkeypatch):
    from textinv.shapes import pretrain

    refused(["--stage", "vae", "--work", str(tmp_path / "w"), "--cuda-graphs"], "--cuda-graphs goes with")
    refused(["--stage", "unet", "--work", str(tmp_path / "w"), "--cuda-graphs"], "--cuda-graphs goes with")
    assert not (tmp_path / "w").exists()
    given = {}  # with a GPU (faked), the UNet stage is asked for the captured step
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pretrain, "train_unet", lambda *args, **kw: given.update(kw) or 0)
    assert pretrain_main(["--stage", "unet", "--work", str(tmp_path / "w"), "--device", "cuda", "--cuda-graphs"]) == 0
    assert given["cuda_graphs"] is True


def test_render_threads_below_one_are_refused(tmp_path):
    from textinv.shapes.pretrain import train_unet

    refused(["--stage", "unet", "--work", str(tmp_path / "w"), "--render-threads", "0"], "--render-threads 1 or more")
    assert not (tmp_path / "w").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="render threads must be at least 1"):
        train_unet(PretrainConfig(), tmp_path, minutes=1, render_threads=0)


def test_the_ema_is_one_call_a_step_for_every_parameter(tmp_path, monkeypatch):
    """On a GPU the shapes UNet's step is a few milliseconds of kernels and the host's launches set the rate: the
    EMA of its ~500 tensors is one foreach call a step, not a launch per tensor; the average it keeps is the same."""
    from safetensors.torch import load_file

    from textinv.shapes.pretrain import QUICK, train_unet, train_vae

    config = PretrainConfig(**{**QUICK, "unet_batch": 2})
    train_vae(config, tmp_path, minutes=5, max_steps=1, log=lambda _: None)
    calls, real = [], torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda a, b, w: calls.append((len(a), w)) or real(a, b, w))
    train_unet(config, tmp_path, minutes=5, max_steps=2, log=lambda _: None)
    ema = load_file(str(tmp_path / "unet" / "ema.safetensors"))
    weights = load_file(str(tmp_path / "unet" / "unet.safetensors"))
    assert [n for n, _ in calls] == [len(ema)] * 2 and calls[0][1] == 1 - 2 / 11  # (the warm-up's first decay)
    assert not all(torch.equal(ema[f"unet.{k}"].float(), v) for k, v in weights.items())  # it lags the weights


# --- captions that name the fill's orientation (angle_caption_share) ------------------------------------------------


def test_the_orientation_words_come_after_every_id_of_the_world_tokenizer():
    """The committed model's tokenizer and text encoder rows stay valid: each of its ids means the same entry with
    the orientation words, which are one token each after them; without them the tokenizer is the one it was."""
    plain, more = build_tokenizer_for_world(), build_tokenizer_for_world(angle_words=True)
    old, new = plain.get_vocab(), more.get_vocab()
    assert all(new[t] == i for t, i in old.items()) and len(new) > len(old)
    assert (plain.bos_token_id, plain.eos_token_id, plain.pad_token_id) == (more.bos_token_id, more.eos_token_id,
                                                                           more.pad_token_id)
    assert all(more.tokenize(w) == [w + "</w>"] and new[w + "</w>"] >= len(old) for w in world.ORIENTATION_WORDS)
    text = "a photo of a small red star with checks, flat style on a navy background"
    assert plain(text).input_ids == more(text).input_ids
    if (BUNDLED / "tokenizer" / "vocab.json").exists():  # the committed model's words, ids and size
        assert json.loads((BUNDLED / "tokenizer" / "vocab.json").read_text()) == old


def test_unet_steps_with_an_angle_share_see_the_orientation_words_and_share_0_the_old_stream():
    import numpy as np

    from textinv.shapes.pretrain import _CaptionIds, _unet_draws

    def draws(config):
        ids = _CaptionIds(build_tokenizer_for_world(config.angle_words))
        return _unet_draws(config, torch.Generator().manual_seed(1), np.random.default_rng(1), ids, (4, 16, 16),
                           1000)[1]["ids"]

    more = build_tokenizer_for_world(angle_words=True)
    word_ids = torch.tensor([more.get_vocab()[w + "</w>"] for w in world.ORIENTATION_WORDS])
    assert not torch.isin(draws(PretrainConfig()), word_ids).any()
    assert torch.equal(draws(PretrainConfig()), draws(PretrainConfig(angle_caption_share=0.0)))
    shared = draws(PretrainConfig(angle_caption_share=1.0, unet_batch=64))
    assert torch.isin(shared, word_ids).any(1).sum() > 20
    assert PretrainConfig(angle_caption_share=0.5).angle_words and not PretrainConfig().angle_words
    with pytest.raises(ConfigError, match="angle_caption_share"):
        PretrainConfig(angle_caption_share=2.0)


@needs_bundled
def test_the_committed_model_continued_with_an_angle_share_grows_its_text_encoder(tmp_path):
    """`--from-model textinv/shapes/model --set angle_caption_share=0.5`: the kept text encoder gets a row for each
    new token, every old row (weights and EMA) as exported, the new ones the mean of the world's word rows."""
    from safetensors.torch import load_file

    from textinv.shapes.pretrain import start_from_model

    work = tmp_path / "w"
    config = start_from_model(BUNDLED, work, settings={"angle_caption_share": 0.5}, log=lambda _: None)
    assert config.angle_caption_share == 0.5 and config.angle_words
    assert json.loads((work / "config.json").read_text())["angle_caption_share"] == 0.5
    exported = load_file(str(BUNDLED / "text_encoder" / "model.safetensors"))
    (key,) = [k for k in exported if k.endswith("token_embedding.weight")]
    old = exported[key].float()  # (760, 128), stored as float16
    rows = load_file(str(work / "unet" / "text_encoder.safetensors"))[key]
    ema = load_file(str(work / "unet" / "ema.safetensors"))["text_encoder." + key].float()
    grown = len(build_tokenizer_for_world(angle_words=True))
    assert rows.shape == (grown, old.shape[1]) and ema.shape == rows.shape
    assert torch.equal(rows[:len(old)], old) and torch.equal(ema[:len(old)], old)
    vocab = build_tokenizer_for_world().get_vocab()
    mean = old[[vocab[w + "</w>"] for w in world.VOCABULARY]].mean(0)
    assert torch.allclose(rows[len(old):], mean.expand(grown - len(old), -1))
    assert (rows[len(old):].norm(dim=1) > 0).all()


def test_a_quick_run_with_an_angle_share_exports_a_model_that_knows_the_orientation_words(quick_run, tmp_path):
    """The pipeline end to end with the share: the export loads with the normal loader, its tokenizer files (all
    three) hold the words as one token each and its text encoder has their rows; a later chunk at share 0 keeps
    them, and a folder trained without them cannot take a share (its text encoder has no rows for them)."""
    from transformers import CLIPTokenizer

    from textinv.shapes.evaluate import knows_orientations

    work, out = tmp_path / "work", tmp_path / "model"
    assert pretrain_main(["--quick", "--work", str(work), "--out", str(out), "--steps", "2", "--set",
                          "angle_caption_share=0.5"]) == 0
    model = load_model(out)
    words = len(build_tokenizer_for_world(angle_words=True))
    assert len(model.tokenizer) == model.text_encoder.get_input_embeddings().num_embeddings == words
    assert knows_orientations(model) and all(len(model.tokenizer.tokenize(w)) == 1 for w in world.ORIENTATION_WORDS)
    merges = (out / "tokenizer" / "merges.txt").read_text().splitlines()[1:]  # (after its "#version" line)
    slow = CLIPTokenizer(vocab=json.loads((out / "tokenizer" / "vocab.json").read_text()),
                         merges=[tuple(m.split()) for m in merges])
    text = "a red star with rising stripes on a navy background"
    assert slow(text).input_ids == model.tokenizer(text).input_ids
    assert json.loads((out / "training.json").read_text())["config"]["angle_caption_share"] == 0.5
    assert pretrain_main(["--stage", "unet", "--work", str(work), "--steps", "3", "--set",
                          "angle_caption_share=0"]) == 0  # (its text encoder loads: the words stay)
    assert json.loads((work / "config.json").read_text())["angle_words"] is True
    if (BUNDLED / "model_index.json").exists():
        assert not knows_orientations(load_model("shapes"))
    plain = quick_work(quick_run, tmp_path / "plain")
    refused(["--stage", "unet", "--work", str(plain), "--steps", "3", "--set", "angle_caption_share=0.5"],
            "--from-model M --set angle_caption_share")


@pytest.mark.skipif(not (BUNDLED.parent / "probe" / "probe.safetensors").exists(), reason="needs the bundled probe")
def test_the_caption_check_reports_how_the_named_stripe_orientations_came_out(monkeypatch):
    """A 'model' that draws each caption's true scene gets the stripes' angles right; one that draws every picture
    mirrored (stripes at -angle) mostly out of the named bin. The check's prompts name the orientation."""
    import textinv.shapes.evaluate as ev
    from textinv.shapes.probe import DEFAULT_PATH, Probe

    n, seed = 64, 2000
    truth = world.render(world.sample_batch(n, torch.Generator().manual_seed(seed), second_prob=0.0,
                                            free_hue_prob=0.0))
    asked = []
    monkeypatch.setattr(ev, "sample", lambda model, prompts, seeds, *a: asked.extend(prompts) or pictures)
    monkeypatch.setattr(ev, "describe_model", lambda model: {"description": "renderer"})
    monkeypatch.setattr(ev, "round_trip", lambda model, images: images)
    probe = Probe.load(DEFAULT_PATH)
    pictures = truth
    right = ev.caption_fidelity(None, probe, n, seed=seed, guidance=3.0, orientation=True)
    assert any(" with rising stripes " in p or " with falling stripes " in p for p in asked)
    drawn = right["orientation"]["drawn"]
    assert drawn["striped"] >= 8 and drawn["read_striped"] >= drawn["striped"] - 2
    assert drawn["angle_error"] < 8 and drawn["in_bin"] > 0.8
    assert "stripes as captioned" in ev.format_fidelity(right)
    pictures = truth.flip(-1)  # mirrored: a stripe at a degrees becomes one at -a
    wrong = ev.caption_fidelity(None, probe, n, seed=seed, guidance=3.0, orientation=True)["orientation"]["drawn"]
    assert wrong["angle_error"] > 20 and wrong["in_bin"] < drawn["in_bin"] - 0.3
    plain = ev.caption_fidelity(None, probe, n, seed=seed, guidance=3.0)  # (a stand-in: knows no words)
    assert "orientation" not in plain and "stripes as captioned" not in ev.format_fidelity(plain)
