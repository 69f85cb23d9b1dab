"""The web UI's X/Y/Z plot for generate (`textinv.xyz`): values, cells drawn as plain generate draws them, the grid."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.cli import main
from textinv.config import GenerateConfig
from textinv.errors import ConfigError, TextinvError
from textinv.formats import RECORD_KEY, LearnedEmbedding, save_embedding
from textinv.generate import generate
from textinv import generate as generate_module
from textinv import xyz
from conftest import fresh_model


def pixels(path_or_image):
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(img.convert("RGB"))


def cells_of(grid_path, nx, ny, width, height):
    """The grid's cells (x fastest), found below and right of its legend's margins."""
    grid = Image.open(grid_path)
    left, top = grid.width - nx * width, grid.height - ny * height
    return grid, left, top, [pixels(grid.crop((left + ix * width, top + iy * height, left + (ix + 1) * width,
                                              top + (iy + 1) * height))) for iy in range(ny) for ix in range(nx)]


def test_values_are_read_as_the_web_uis_ranges_counts_and_steps():
    assert xyz.numbers(["1-5"], int) == [1, 2, 3, 4, 5]
    assert xyz.numbers(["1-10 (+3)", "20"], int) == [1, 4, 7, 10, 20]
    assert xyz.numbers(["10-1 (-3)"], int) == [10, 7, 4, 1]
    assert xyz.numbers(["1-10 [4]"], int) == [1, 4, 7, 10]
    assert xyz.numbers(["0-10 [4]"], int) == [0, 3, 6, 10]  # (cut toward 0, as the web UI's int()...
    assert xyz.numbers(["-10-0 [4]"], int) == [-10, -6, -3, 0]  # (...so -6.67 is -6)
    assert xyz.numbers(["3-12 (+4.5)", "7.5"], float) == [3.0, 7.5, 12.0, 7.5]
    assert xyz.numbers(["0.1-0.3 (+0.1)"], float) == [0.1, 0.2, 0.3]  # (not 0.30000000000000004, nor a fourth)
    assert xyz.numbers(["2-3 [3]"], float) == [2.0, 2.5, 3.0]
    assert xyz.numbers(["- 1", "-2 - -1", "1 -3"], int) == [-1, -2, -1, 1, 2, 3]  # (a sign may stand apart)
    assert xyz.split_values(' a photo, "b, c" ,d') == ["a photo", "b, c", "d"]
    import dataclasses

    help_text = {f.name: f for f in dataclasses.fields(GenerateConfig)}["x"].metadata["help"]
    assert "(axes: " + ", ".join(xyz.AXES) + ";" in help_text  # (--help lists every axis there is)
    for bad, kind, said in (("1.5", int, "not a whole number"), ("x", float, "not a number"),
                            ("5-1", int, "gives no values"), ("1-5 (+0)", int, "a step of 0"),
                            ("inf", float, "not a finite number"), ("20 30", int, "'20 30' is not a whole number"),
                            ("3 7.5", float, "'3 7.5' is not a number"), ("1-5 [0]", int, "gives 0 values"),
                            ("1-1000000000", int, "gives 1000000000 values; a range gives 1 to 10000")):
        with pytest.raises(ValueError, match=said):
            xyz.numbers([bad], kind)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every refusal comes before it."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(generate_module, "load_model", refuse)


def _config(tmp_path, **settings):
    return GenerateConfig(**{"prompt": ["a photo of dog"], "out": str(tmp_path / "r"), "n": 1, "steps": 2,
                             "model": str(tmp_path / "no-model"), **settings})


@pytest.mark.parametrize("settings, said", [
    ({"x": "colour=1,2"}, r"x='colour=1,2': no axis 'colour'; the axes: seed, steps"),
    ({"x": "sampel=euler"}, r"did you mean sampler\?"),
    ({"x": "guidance"}, r"^x='guidance': write AXIS=VALUES, e.g. x='guidance=3,7.5,12' \(axes: "),
    ({"x": "steps="}, r"^x='steps=': no values; .* e.g. x='steps=10-30 \(\+10\)'$"),
    ({"y": "sampler=euler,euler_z"}, r"y='sampler=euler,euler_z': 'euler_z' is not one of the [0-9]+ samplers "
                                     r"\(default, euler, .*; textinv.samplers.SAMPLERS lists every one\); did you "
                                     r"mean 'euler_a'"),
    ({"x": "steps=0,2"}, r"x='steps=0': steps= must be >= 1, got 0"),
    ({"x": "denoise=0.3,0.6"}, r"x='denoise=0.3': denoise= says how much of a picture is redrawn"),
    ({"x": "size=16x17"}, r"x='size=16x17': height= must be a multiple of 8"),
    ({"x": "prompt-sr=cat,dog"}, r"the first value 'cat' is in no prompt= or negative_prompt="),
    ({"x": "steps=1,2", "z": "steps=3"}, r"x= and z= both vary steps"),
    ({"x": "steps=1,2", "xyz_margin": -2}, r"xyz_margin= must be 0 to 500 pixels .*, got -2"),
    ({"x": "steps=1,2", "xyz_margin": 100_000}, r"xyz_margin= must be 0 to 500 pixels .*, got 100000"),
    ({"x": "seed=1-11", "y": "steps=1-10"}, r"^x='seed=1-11' y='steps=1-10' make 11 x 10 x 1 = 110 cells, more "
                                             r"than xyz_max_cells=100"),
    # (each seed the plot draws, offset by --ensd, named: not the command's --seed alone)
    ({"x": f"seed=1,{2**64 - 5}", "ensd": 31337}, r"^x='seed=18446744073709551611': ensd=31337: picture seed "
                                                  r"18446744073709551611 \+ ENSD is 18446744073709582948, past 2\^64 - 1"),
    ({"x": "seed=1,2", "n": 3, "ensd": 2**64 - 4}, r"^x='seed=2': ensd=18446744073709551612: picture seed 4 \+ "),
    # (DPM++ SDE and 3M SDE take --eta and --sigma-noise; the cell of a sampler that does not is named)
    ({"x": "sampler=dpm++sde,dpm++3m_sde,dpm++2m", "eta": 0.5}, r"^x='sampler=dpm\+\+2m': eta=0.5: sampler="
                                                                r"'dpm\+\+2m' takes no eta"),
    ({"x": "sampler=dpm++3m_sde,dpm++sde,euler_a", "sigma_noise": 0.5}, r"^x='sampler=euler_a': sigma_noise=0.5: "
                                                                        r"sampler='euler_a' takes no sigma noise"),
    # (the web UI's axes textinv lacks: said so, with the way to get the same)
    ({"x": "Checkpoint name=a.safetensors,b.safetensors"}, r"^x='Checkpoint name=a.safetensors,b.safetensors': the "
                                                           r"web UI's Checkpoint name axis is no axis textinv has: "
                                                           r"textinv draws one --model a run: run generate once per"),
    ({"y": "Styles=cinematic"}, r"Styles axis is no axis textinv has: .*write the style's text into --prompt"),
    ({"x": "face restore=CodeFormer"}, r"Face restore axis is no axis textinv has: face restoration .* not in textinv"),
    ({"x": "schedule=Karras", "sampler": "euler_a"}, r"^x='schedule=Karras': the sampler euler_a is not drawn on "),
    ({"x": "schedule=Karras"}, r"^x='schedule=Karras': the sampler default is the model's own scheduler"),
    ({"x": "Schedule type=Automatic,Polyexponential", "sampler": "euler"}, r"'Polyexponential' is no schedule type"),
    ({"x": "hires-upscaler=Latent,R-ESRGAN 4x+", "hires_scale": 1.5}, r"'R-ESRGAN 4x\+' is the web UI's upscaling "),
    ({"x": "discard-penultimate-sigma=maybe"}, r"'maybe' is neither True nor False"),
    ({"x": "var-seed=1,2"}, r"^x='var-seed=1': variation_seed= needs variation_strength="),
    ({"x": "Eta=0.5,1"}, r"^x='eta=0.5': eta=0.5: sampler='default' takes no eta"),
])
def test_bad_axes_are_refused_before_the_model_loads(tmp_path, no_model, settings, said):
    with pytest.raises(ConfigError, match=said):
        generate(_config(tmp_path, **settings), progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("axes, said", [
    (["--x", "colour=1,2"], "--x 'colour=1,2': no axis 'colour'"),
    (["--x", "guidance"], "--x 'guidance': write AXIS=VALUES, e.g. --x guidance=3,7.5,12 (axes: "),
    (["--x", "steps=0,2"], "--x steps=0: --steps must be >= 1, got 0"),
    (["--x", "steps=1,2", "--z", "steps=3"], "--x and --z both vary steps"),
    (["--x", "prompt-sr=cat,dog"], "--x 'prompt-sr=cat,dog': the first value 'cat' is in no --prompt or "
                                   "--negative-prompt;"),
    (["--x", "guidance=3,7", "--y", "prompt-sr=dog,{cat"], "--y prompt-sr={cat: "),
])
def test_the_command_line_names_an_axis_by_its_flag(tmp_path, no_model, capsys, axes, said):
    """From Python an axis is named as its keyword (`x='steps=0'`, above); on the command line as its flag."""
    assert main(["generate", "--model", str(tmp_path / "no-model"), "--prompt", "a photo of dog", "-n", "1",
                 "--steps", "2", "--out", str(tmp_path / "r"), *axes]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("settings, said", [
    ({"embedding": ["none.safetensors"], "x": "guidance=3,7"}, r"^(?!x=).*none.safetensors"),
    ({"prompt": ["a {red|blue dog"], "x": "guidance=3,7"}, r"^(?!x=).*\{red\|blue dog"),
    ({"x": "guidance=3,7", "y": "prompt-sr=dog,{cat"}, r"^y='prompt-sr=\{cat': .*\{cat"),
])
def test_what_a_cell_names_is_checked_before_the_model_loads(tmp_path, no_model, settings, said):
    """Each cell is checked as generate checks its settings before loading (the files and prompts they name), so a
    plot is not stopped by its fourth cell once three are drawn; the error is the command's where it gives it."""
    with pytest.raises(TextinvError, match=said):
        generate(_config(tmp_path, **settings), progress=False)
    assert not (tmp_path / "r").exists()


def test_values_that_need_each_other_are_checked_together(tmp_path, no_model):
    """--denoise alone needs --init-image or the hires fix: along an axis beside a hires-scale axis it is the hires
    fix's, and each cell is checked with both."""
    cells = xyz.plan(_config(tmp_path, x="denoise=0.3,0.6", y="hires-scale=1.5,2")).cells
    assert [(c.denoise, c.hires_scale) for c in cells] == [(0.3, 1.5), (0.6, 1.5), (0.3, 2.0), (0.6, 2.0)]


@pytest.mark.parametrize("given, settings, field, values, labels", [
    ("Var. seed=3-5", {"variation_strength": 0.5}, "variation_seed", [3, 4, 5], "Var. seed: 3"),
    ("var-strength=0.1-0.3 [3]", {"variation_seed": 7}, "variation_strength", [0.1, 0.2, 0.3], "Var. strength: 0.1"),
    ("Eta=0.5,1", {"sampler": "euler_a"}, "eta", [0.5, 1.0], "Eta: 0.5"),
    ("ensd=0,31337", {}, "ensd", [0, 31337], "Eta noise seed delta: 31337"),
    ("Sigma Churn=0,1", {"sampler": "euler"}, "sigma_churn", [0.0, 1.0], "Sigma Churn: 1.0"),
    ("Sigma min=0,0.5", {"sampler": "euler", "sigma_churn": 1.0}, "sigma_tmin", [0.0, 0.5], "Sigma min: 0.5"),
    ("sigma-tmax=5,10", {"sampler": "euler", "sigma_churn": 1.0}, "sigma_tmax", [5.0, 10.0], "Sigma max: 5.0"),
    ("Sigma noise=1,1.003", {"sampler": "heun", "sigma_churn": 1.0}, "sigma_noise", [1.0, 1.003], "Sigma noise: 1.003"),
    ("Schedule type=Automatic,Uniform,Karras,exponential", {"sampler": "dpm++2m"}, "sampler",
     ["dpm++2m_karras", "dpm++2m", "dpm++2m_karras", "dpm++2m_exponential"], "Schedule type: Karras"),
    ("Always discard next-to-last sigma=False,True", {"sampler": "euler"}, "discard_penultimate_sigma",
     [False, True], "Always discard next-to-last sigma: True"),
    ("Hires sampler=Euler,DPM++ 2M Karras", {"hires_scale": 1.5}, "hires_sampler", ["euler", "dpm++2m_karras"],
     "Hires sampler: dpm++2m_karras"),
    ("Hires upscaler=Latent (bicubic),lanczos", {"hires_scale": 1.5}, "hires_upscaler", ["latent-bicubic", "lanczos"],
     "Hires upscaler: Latent (bicubic)"),
])
def test_the_web_uis_other_axes_each_set_their_setting_in_each_cell(tmp_path, no_model, given, settings, field,
                                                                   values, labels):
    """Each axis of the web UI's that textinv has a setting for, by its web UI label (so --again of a web UI grid
    reads it) or textinv's name, sets that setting in its cells, its values read as the web UI reads them, and its
    legend labelled as the web UI labels it."""
    ready = xyz.plan(_config(tmp_path, x=given, **settings).validate())
    assert [getattr(c, field) for c in ready.cells] == values
    assert labels in ready.axes[0].labels


def test_a_schedule_type_puts_each_cells_sampler_on_it_whichever_axis_gives_the_sampler(tmp_path, no_model):
    """The web UI's Schedule type is its sampler's schedule, a setting of its own: textinv's sampler name carries
    it, so the schedule is applied to each cell's sampler after a sampler axis sets it, on whichever axis."""
    ready = xyz.plan(_config(tmp_path, x="schedule=Uniform,Karras", y="sampler=euler,dpm++2m_exponential").validate())
    assert [c.sampler for c in ready.cells] == ["euler", "euler_karras", "dpm++2m", "dpm++2m_karras"]


def test_a_schedule_type_z_axis_over_a_sampler_axis_writes_its_sub_grids(sd1_dir, tmp_path):
    """A --z value's grid alone keeps the command's settings with the value's (for its --again): a schedule type
    is the cells' sampler's, which the sampler axis gives, so it is their records', not the command's to change."""
    paths = generate(_config(tmp_path, model=str(sd1_dir), steps=1, x="sampler=euler,dpm++2m",
                             z="schedule=Uniform,Karras", xyz_sub_grids=True), model=fresh_model(sd1_dir), progress=False)
    assert [p.name for p in paths[:3]] == ["xyz_grid-0000.png", "xyz_grid-0001.png", "xyz_grid-0002.png"]
    assert [Image.open(p).text["sampler"] for p in paths[3:]] == ["euler", "dpm++2m", "euler_karras", "dpm++2m_karras"]
    # its text keeps the schedule as a --z of that one value: the sampler axis alone would draw every cell on its
    # sampler's own schedule; --again draws the grid of that value, then that grid alone (--xyz-sub-grids)
    sub = Image.open(paths[2])
    assert json.loads(sub.text[RECORD_KEY])["settings"]["z"] == "schedule=Karras"
    assert sub.text["parameters"].endswith("X Type: Sampler, X Values: \"euler,dpm++2m\", Z Type: Schedule type, "
                                           "Z Values: Karras")
    assert main(["generate", "--again", str(paths[2]), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 0
    again = (tmp_path / "a").glob("*.png")
    assert sorted(Image.open(p).text["sampler"] for p in again if not p.name.startswith("xyz_grid")) == \
        ["dpm++2m_karras", "euler_karras"]
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0001.png"), pixels(paths[2]))
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png")[-16:, -32:], pixels(paths[2])[-16:, -32:])


def test_a_var_strength_axis_draws_one_variation_seed_for_the_plot_and_none_at_strength_0(tmp_path, no_model):
    """As the web UI's: a variation seed left out (-1) is drawn once for the plot, so every cell varies toward the
    same noise; at strength 0 a cell is drawn without variation (and a var-seed axis's seed is left out there)."""
    cells = xyz.plan(_config(tmp_path, x="var-strength=0,0.3,0.6").validate()).cells
    assert cells[0].variation_seed is None and cells[1].variation_seed == cells[2].variation_seed is not None
    cells = xyz.plan(_config(tmp_path, x="var-strength=0,0.5", y="var-seed=4,5").validate()).cells
    assert [(c.variation_seed, c.variation_strength) for c in cells] == [(None, 0), (4, 0.5), (None, 0), (5, 0.5)]


def test_embedding_axis_files_that_are_no_embedding_or_hold_other_tokens_are_refused(tmp_path, no_model):
    a = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "a.safetensors")[0]
    b = save_embedding(LearnedEmbedding("<w>", {"text_encoder": torch.randn(1, 32)}), tmp_path / "b.safetensors")[0]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not an embedding")
    prompt = {"prompt": ["a photo of <q>"]}
    with pytest.raises(ConfigError, match=r"junk.safetensors is not an embedding textinv reads"):
        generate(_config(tmp_path, x=f"embedding={a},{junk}", **prompt), progress=False)
    with pytest.raises(ConfigError, match=r"hold different tokens \(<q> in a.safetensors, <w> in b.safetensors\)"):
        generate(_config(tmp_path, x=f"embedding={a},{b}", **prompt), progress=False)
    with pytest.raises(ConfigError, match=r"their token '<w>' is in no prompt="):
        generate(_config(tmp_path, x=f"embedding={b}", **prompt), progress=False)
    with pytest.raises(ConfigError, match=r"matches no file"):
        generate(_config(tmp_path, x=f"embedding={tmp_path}/none-*.pt", **prompt), progress=False)
    # --token names each file of the axis: then their own tokens do not matter
    cells = xyz.plan(_config(tmp_path, x=f"embedding={a},{b}", embedding=[str(a)], token=["<q>"], **prompt)).cells
    assert [c.embedding for c in cells] == [[str(a)], [str(b)]] and [c.token for c in cells] == [["<q>"]] * 2


def test_the_grid_lays_out_each_cell_x_fastest_and_each_is_the_plain_generates_picture(sd1_dir, tmp_path):
    """Each cell is the picture generate draws with the cell's settings, bit for bit; the grid holds them x fastest
    (the web UI's order), right of the row labels and below the column labels, and names its axes in its text."""
    model = fresh_model(sd1_dir)
    config = _config(tmp_path, model=str(sd1_dir), x="guidance=3,9", y="steps=1-2", seed=4)
    paths = generate(config, model=model, progress=False)
    grid_path, cells = paths[0], paths[1:]
    assert grid_path.name == "xyz_grid-0000.png" and len(cells) == 4
    grid, left, top, drawn = cells_of(grid_path, 2, 2, 16, 16)
    assert left > 0 and top > 0  # (the legend's margins: row labels left, column labels above)
    for (steps, guidance), cell, picture in zip([(1, 3.0), (1, 9.0), (2, 3.0), (2, 9.0)], cells, drawn):
        plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / "plain"), seed=4, steps=steps,
                                 guidance=guidance), model=model, progress=False)[0]
        assert np.array_equal(pixels(cell), pixels(plain)) and np.array_equal(picture, pixels(plain))
        assert Image.open(cell).text["guidance"] == str(guidance) and Image.open(cell).text["steps"] == str(steps)
    assert not np.array_equal(drawn[0], drawn[1])
    text = grid.text
    assert text["parameters"].endswith("Script: X/Y/Z plot, X Type: CFG Scale, X Values: \"3,9\", Y Type: Steps, "
                                       "Y Values: 1-2")
    record = json.loads(text["xyz_plot"])
    assert record["x"]["labels"] == ["CFG Scale: 3.0", "CFG Scale: 9.0"] and record["y"]["axis"] == "steps"
    assert record["cells"] == [[c.name] for c in cells]
    # --again on the grid draws the plot again: its first cell's settings with the axes
    assert main(["generate", "--again", str(grid_path), "--model", str(sd1_dir), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(pixels(tmp_path / "again" / "xyz_grid-0000.png"), pixels(grid_path))


def test_a_z_axis_draws_its_grids_side_by_side_in_one_and_each_alone_with_sub_grids(sd1_dir, tmp_path):
    """-n 2: each cell holds both seeds' pictures side by side (the web UI's batch grid); --z seed: the grid of all
    (each seed's grid side by side under its label), then with --xyz-sub-grids each seed's grid alone, numbered on
    from the grids already there; --xyz-margin puts its pixels between the cells (not between the --z grids, as the
    web UI's)."""
    out = tmp_path / "r"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "xyz_grid-0003.png")
    model = fresh_model(sd1_dir)
    paths = generate(_config(tmp_path, model=str(sd1_dir), n=2, x="steps=1,2", z="seed=0,10", xyz_sub_grids=True,
                             xyz_margin=6), model=model, progress=False)
    (whole, *subs), cells = paths[:3], paths[3:]
    assert [g.name for g in paths[:3]] == ["xyz_grid-0004.png", "xyz_grid-0005.png", "xyz_grid-0006.png"]
    assert len(cells) == 8
    for iz, (sub, seed) in enumerate(zip(subs, (0, 10))):
        mine = cells[iz * 4:(iz + 1) * 4]
        assert [int(Image.open(c).text["seed"]) for c in mine] == [seed, seed + 1] * 2
        grid = Image.open(sub)
        top = grid.height - 16
        assert grid.width == 2 * 32 + 6 and top > 0  # (two cells of 32 x 16, the margin between; the x labels)
        for ix, pair in enumerate((mine[:2], mine[2:])):  # (both pictures of a cell, side by side)
            drawn = pixels(grid.crop((ix * 38, top, ix * 38 + 32, top + 16)))
            assert np.array_equal(drawn, np.concatenate([pixels(p) for p in pair], axis=1))
        assert json.loads(grid.text["xyz_plot"])["z_value"] == f"Seed: {seed}"
        assert "Z Type" not in grid.text["parameters"]  # (the web UI's sub-grid names its X and Y only)
    # the grid of all: the seeds' grids side by side, their labels above them
    grid, sub_grids = Image.open(whole), [Image.open(s) for s in subs]
    title = grid.height - sub_grids[0].height
    assert grid.width == sum(s.width for s in sub_grids) and title > 0
    for iz, sub in enumerate(sub_grids):
        assert np.array_equal(pixels(grid.crop((iz * sub.width, title, (iz + 1) * sub.width, grid.height))),
                              pixels(sub))
    assert grid.text["parameters"].endswith("Z Type: Seed, Z Values: \"0,10\", Fixed Z Values: \"0, 10\"")
    assert json.loads(grid.text["xyz_plot"])["cells"] == [[c.name for c in cells[i:i + 2]] for i in range(0, 8, 2)]
    # --again on the grid of all draws them all again; on one seed's grid, that grid alone, every picture of each
    # cell again, in batches of the size they were drawn in
    assert main(["generate", "--again", str(whole), "--model", str(sd1_dir), "--out", str(tmp_path / "all")]) == 0
    for name, drawn in zip(("xyz_grid-0000.png", "xyz_grid-0001.png", "xyz_grid-0002.png"), (whole, *subs)):
        assert np.array_equal(pixels(tmp_path / "all" / name), pixels(drawn))
    assert main(["generate", "--again", str(subs[1]), "--model", str(sd1_dir), "--batch-size", "1", "--out",
                 str(tmp_path / "a")]) == 0  # (a flag beside it: still -n 2, every picture)
    assert [p.name for p in (tmp_path / "a").glob("xyz_grid-*")] == ["xyz_grid-0000.png"]
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png"), pixels(subs[1]))
    for again, batch in ((tmp_path / "a", 1), (tmp_path / "all", 4)):
        record = json.loads(Image.open(again / "000-a-photo-of-dog-s11.png").text[RECORD_KEY])
        assert record["settings"]["batch_size"] == batch


def test_a_z_axis_writes_one_grid_by_default_and_no_legend_leaves_the_labels_out(sd1_dir, tmp_path):
    """The web UI's defaults: the grid of all alone; Draw legend off: the cells and nothing else."""
    paths = generate(_config(tmp_path, model=str(sd1_dir), x="guidance=3,9", z="steps=1,2", xyz_legend=False),
                     model=fresh_model(sd1_dir), progress=False)
    grid, cells = paths[0], paths[1:]
    assert len(cells) == 4 and [p.name for p in (tmp_path / "r").glob("xyz_grid-*")] == ["xyz_grid-0000.png"]
    assert Image.open(grid).size == (64, 16)
    assert np.array_equal(pixels(grid), np.concatenate([pixels(c) for c in cells], axis=1))


def test_a_z_axis_alone_writes_no_sub_grids(sd1_dir, tmp_path):
    """With --z alone a value's grid would be its cell, whose pictures are written already, and whose record names
    no axis: --again on it drew its first picture alone, not the grid. The grid of all is written, nothing more."""
    paths = generate(_config(tmp_path, model=str(sd1_dir), n=2, z="seed=1,5", xyz_sub_grids=True),
                     model=fresh_model(sd1_dir), progress=False)
    assert [p.name for p in paths if p.name.startswith("xyz_grid")] == ["xyz_grid-0000.png"] and len(paths) == 5


def test_again_on_a_grid_draws_every_prompt_and_each_cells_drawn_variant(sd1_dir, tmp_path):
    """The grid's record is its first cell's first picture's, whose prompt is the one it drew: the grid keeps the
    command's prompts instead (each --prompt, a dynamic one's template), so each cell draws its own again."""
    prompts = ["a photo of {dog|cat|bird|fish|cow|horse}", "a drawing of a tree"]
    grid, *cells = generate(_config(tmp_path, model=str(sd1_dir), prompt=prompts, x="seed=1-3"),
                            model=fresh_model(sd1_dir), progress=False)
    assert len({Image.open(c).text["prompt"] for c in cells[::2]}) > 1  # (the seeds drew other animals)
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 0
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png"), pixels(grid))


def test_again_on_a_web_ui_grid_draws_its_plot_along_the_axes_its_text_names(sd1_dir, tmp_path):
    """The web UI's grid text names the X/Y/Z plot's axes (`Script: X/Y/Z plot, X Type: CFG Scale, X Values: ...`),
    which its PNG Info restores: --again left them out, among the fields "not applied", and drew the first cell
    alone. A seed axis takes the seeds it drew (`Fixed X Values`); an axis textinv lacks is left out, with a note."""
    from conftest import again_warned, web_ui_picture

    grid = web_ui_picture(tmp_path / "grid.png", (
        'a photo of a dog\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 16x16, Model: v1-5, Script: X/Y/Z '
        'plot, X Type: CFG Scale, X Values: "3,7", Y Type: Seed, Y Values: "-1, 4", Fixed Y Values: "812, 4", '
        'Z Type: Checkpoint name, Z Values: "v1-5.safetensors, dreamshaper.safetensors", Version: v1.10.1'))
    config, warned = again_warned(grid, {"model": str(sd1_dir), "out": str(tmp_path / "a")})
    assert (config.x, config.y, config.z) == ("guidance=3,7", "seed=812, 4", None)
    assert ("its Z axis, Checkpoint name (v1-5.safetensors, dreamshaper.safetensors), is no axis textinv has" in warned
            and "X Type" not in warned)
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--steps", "1", "--out",
                 str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "a").glob("xyz_grid-*.png"))) == 1 and len(list((tmp_path / "a").glob("0*.png"))) == 4


def _again_on_web_ui_grid(tmp_path, parameters: str, **given):
    """What --again reads from a web UI grid whose PNG text is `parameters` (on the bundled model, `given` beside it):
    its config, the warnings it gave, and the cells that config's plot draws."""
    from conftest import again_warned, web_ui_picture

    grid = web_ui_picture(tmp_path / "grid.png", parameters)
    config, warned = again_warned(grid, {"model": "shapes", "out": str(tmp_path / "a"), **given})
    return config, warned, xyz.plan(config.validate()).cells


def test_again_on_a_web_ui_grid_reads_its_sampling_axes_and_says_how_to_get_one_textinv_lacks(tmp_path):
    """The web UI's axes textinv has a setting for are read by their labels (a Var. seed axis with the seeds it
    drew); one it lacks is left out with the way to get the same with textinv."""
    config, warned, cells = _again_on_web_ui_grid(tmp_path, (
        'a photo of a dog\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 16x16, '
        'Variation seed: 3, Variation seed strength: 0.5, Script: X/Y/Z plot, X Type: Schedule type, X Values: '
        '"Automatic, Exponential", Y Type: Var. seed, Y Values: "-1, 4", Fixed Y Values: "812, 4", Z Type: Styles, '
        'Z Values: "cinematic, anime", Version: v1.10.1'))
    assert (config.x, config.y, config.z) == ("schedule=Automatic, Exponential", "var-seed=812, 4", None)
    assert "its Z axis, Styles (cinematic, anime), is no axis textinv has (textinv has no saved styles: write" in warned
    assert [(c.sampler, c.variation_seed) for c in cells] == [
        ("dpm++2m_karras", 812), ("dpm++2m_exponential", 812), ("dpm++2m_karras", 4), ("dpm++2m_exponential", 4)]


_SAMPLER_AXIS = 'X Type: Sampler, X Values: "Euler,DPM++ 2M"'


@pytest.mark.parametrize("schedule, axes, samplers", [
    # the picture's Schedule type is each cell's (its first cell's, a --z value's grid alone's: the web UI writes
    # no Z fields there), which the web UI puts each Sampler value on
    ("Karras", _SAMPLER_AXIS, ["euler_karras", "dpm++2m_karras"]),
    ("Automatic", _SAMPLER_AXIS, ["euler", "dpm++2m_karras"]),  # (each sampler's own)
    ("Exponential", 'X Type: Sampler, X Values: "Euler,DPM++ 2M", Y Type: Steps, Y Values: "2,3"',
     ["euler_exponential", "dpm++2m_exponential"] * 2),
    # before the web UI had the setting: no schedule is the model's spacing, a name may carry one, Restart's Karras
    (None, 'X Type: Sampler, X Values: "DPM++ 2M,DPM++ 2M Karras,Restart"', ["dpm++2m", "dpm++2m_karras",
                                                                             "restart_karras"]),
    # a Schedule type axis beside it, either way round, is each cell's schedule
    ("Exponential", _SAMPLER_AXIS + ', Y Type: Schedule type, Y Values: "Uniform,Karras"',
     ["euler", "dpm++2m", "euler_karras", "dpm++2m_karras"]),
    ("Exponential", 'X Type: Schedule type, X Values: "Uniform,Karras", Y Type: Sampler, Y Values: "Euler,DPM++ 2M"',
     ["euler", "euler_karras", "dpm++2m", "dpm++2m_karras"]),
])
def test_again_on_a_web_ui_grid_draws_its_sampler_axis_on_its_schedule_type(tmp_path, schedule, axes, samplers):
    """The web UI's Sampler axis sets each cell's sampler alone, its Schedule type (the picture's, or an axis's)
    staying the cell's: --again read the axis's samplers on their own schedules, so a grid drawn on Karras came back
    without it (DPM++ 2M on Automatic, its own Karras, drew on the model's spacing)."""
    scheduled = f"Schedule type: {schedule}, " if schedule else ""
    *_, cells = _again_on_web_ui_grid(tmp_path, (
        f"a photo of a dog\nSteps: 2, Sampler: Euler, {scheduled}CFG scale: 7, Seed: 5, Size: 16x16, Script: X/Y/Z "
        f"plot, {axes}"))
    assert [c.sampler for c in cells] == samplers


def test_again_on_a_web_ui_grid_asks_for_a_sampler_axis_textinv_lacks_on_its_schedule_type(tmp_path):
    """A Sampler value textinv does not draw on the grid's Schedule type (diffusers' Euler a takes no Karras) is asked
    for by the axis's flag, as a picture's own sampler is by --sampler; given beside --again, the axis is drawn."""
    from conftest import again_warned, web_ui_picture
    from textinv.again import again_config

    grid = web_ui_picture(tmp_path / "grid.png", (
        'a photo of a dog\nSteps: 2, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 16x16, '
        'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "3,7", Y Type: Sampler, Y Values: "Euler,Euler a"'))
    with pytest.raises(ConfigError, match=r"its Y axis, Sampler \(Euler,Euler a\), drew 'Euler a' on Schedule type "
                                          r"Karras, which textinv does not have: give the axis beside --again, --y "):
        again_config(grid, {"model": "shapes", "out": str(tmp_path / "a")})
    config, _ = again_warned(grid, {"model": "shapes", "out": str(tmp_path / "a"), "y": "sampler=euler_karras,euler_a"})
    assert [c.sampler for c in xyz.plan(config.validate()).cells] == ["euler_karras"] * 2 + ["euler_a"] * 2


def test_again_on_a_grid_with_sampler_and_schedule_axes_draws_each_cell_on_its_schedule(sd1_dir, tmp_path):
    """textinv's own grid of a sampler axis beside a schedule axis, either way round: --again draws each cell's
    sampler on its row's or column's schedule, from the grid's record and from its web UI fields alike."""
    from conftest import again_warned, web_ui_picture

    model = fresh_model(sd1_dir)
    for x, y, samplers in (("sampler=euler,dpm++2m", "schedule=Karras,Exponential",
                            ["euler_karras", "dpm++2m_karras", "euler_exponential", "dpm++2m_exponential"]),
                           ("schedule=Karras,Exponential", "sampler=euler,dpm++2m",
                            ["euler_karras", "euler_exponential", "dpm++2m_karras", "dpm++2m_exponential"])):
        out = tmp_path / x.partition("=")[0]
        grid, *cells = generate(_config(tmp_path, model=str(sd1_dir), steps=1, x=x, y=y, out=str(out)), model=model,
                                progress=False)
        assert [Image.open(p).text["sampler"] for p in cells] == samplers
        assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(out / "a")]) == 0
        again = json.loads(Image.open(out / "a" / "xyz_grid-0000.png").text["xyz_plot"])["cells"]  # (x fastest)
        assert [Image.open(out / "a" / name).text["sampler"] for name, in again] == samplers
        fields = web_ui_picture(tmp_path / "fields.png", Image.open(grid).text["parameters"])  # (without its record)
        config, _ = again_warned(fields, {"model": str(sd1_dir), "out": str(out / "b")})
        assert [c.sampler for c in xyz.plan(config.validate()).cells] == samplers


@pytest.mark.parametrize("settings, samplers, hires", [
    # the hires fix's sampler on the first pass's schedule (the web UI's "Use same scheduler") moves with it ...
    ({"hires_sampler": "dpm++2m_karras"}, ["euler_karras", "euler_exponential", "euler"],
     ["dpm++2m_karras", "dpm++2m_exponential", "dpm++2m_karras"]),  # (Automatic: each sampler's own)
    ({"sampler": "euler", "hires_sampler": "heun"}, ["euler_karras", "euler_exponential", "euler"],
     ["heun_karras", "heun_exponential", "heun"]),
    # ... one on a schedule of its own (the web UI's Hires schedule type) keeps it
    ({"hires_sampler": "heun_exponential"}, ["euler_karras", "euler_exponential", "euler"], ["heun_exponential"] * 3),
    ({"hires_sampler": "dpm++2m"}, ["euler_karras", "euler_exponential", "euler"], ["dpm++2m"] * 3),
])
def test_a_schedule_type_axis_puts_a_hires_sampler_on_the_first_passs_schedule_on_it(tmp_path, no_model, settings,
                                                                                       samplers, hires):
    """The web UI's hires pass draws on the first pass's Schedule type unless given a Hires schedule type of its own,
    so its Schedule type axis moves both passes: textinv's moved the first pass's sampler alone, and its grid's text
    (no Hires schedule type where the two are alike) told the web UI otherwise than it drew."""
    config = _config(tmp_path, x="schedule=Karras,Exponential,Automatic",
                     **{"sampler": "euler_karras", "hires_scale": 1.5, **settings})
    cells = xyz.plan(config.validate()).cells
    assert ([c.sampler for c in cells], [c.hires_sampler for c in cells]) == (samplers, hires)


def test_a_schedule_type_axis_beside_a_hires_sampler_axis_moves_the_values_on_the_first_passs_schedule(tmp_path,
                                                                                                      no_model):
    """Either way round; a hires sampler textinv lacks on the axis's schedule is refused, as a sampler is."""
    for x, y in (("hires-sampler=euler_karras,dpm++2m_exponential", "schedule=Karras,Uniform"),
                 ("schedule=Karras,Uniform", "hires-sampler=euler_karras,dpm++2m_exponential")):
        cells = xyz.plan(_config(tmp_path, sampler="dpm++2m_karras", hires_scale=1.5, x=x, y=y).validate()).cells
        hires = sorted(c.hires_sampler for c in cells)
        assert hires == ["dpm++2m_exponential", "dpm++2m_exponential", "euler", "euler_karras"]
    with pytest.raises(ConfigError, match=r"^y='schedule=Karras': the hires sampler euler_a is not drawn on 'Karras' "
                                          r"in textinv: give another schedule type or sampler"):
        xyz.plan(_config(tmp_path, sampler="euler", hires_scale=1.5, x="hires-sampler=euler,euler_a",
                         y="schedule=Uniform,Karras").validate())


_HIRES = "Denoising strength: 0.5, Hires upscale: 2"


@pytest.mark.parametrize("first, hires, axes, samplers", [
    # a Hires sampler axis: each value on the Hires schedule type, else on the first pass's Schedule type
    ("Euler, Schedule type: Karras", "", 'X Type: Hires sampler, X Values: "Euler,DPM++ 2M"',
     ["euler_karras", "dpm++2m_karras"]),
    ("Euler, Schedule type: Karras", ", Hires schedule type: Exponential",
     'X Type: Hires sampler, X Values: "Euler,DPM++ 2M"', ["euler_exponential", "dpm++2m_exponential"]),
    # (a Schedule type that is the sampler's own may be its Automatic, each hires sampler's own then; not where the
    # first cell's would have drawn on another on Automatic: a Hires schedule type would say so)
    ("DPM++ 2M SDE, Schedule type: Exponential", "", 'X Type: Hires sampler, X Values: "Euler,Restart"',
     ["euler", "restart_karras"]),
    ("DPM++ 2M SDE, Schedule type: Exponential", "", 'X Type: Hires sampler, X Values: "Restart,Euler"',
     ["restart_exponential", "euler_exponential"]),
    # beside a Schedule type axis: each cell's, unless a Hires schedule type is the hires pass's own
    ("Euler, Schedule type: Karras", "", 'X Type: Hires sampler, X Values: "Euler,DPM++ 2M", Y Type: Schedule type, '
                                         'Y Values: "Karras,Exponential"',
     ["euler_karras", "dpm++2m_karras", "euler_exponential", "dpm++2m_exponential"]),
    ("Euler, Schedule type: Karras", ", Hires schedule type: Uniform", 'X Type: Schedule type, X Values: '
                                                                         '"Karras,Exponential", Y Type: Hires sampler, '
                                                                         'Y Values: "Euler,DPM++ 2M"',
     ["euler", "euler", "dpm++2m", "dpm++2m"]),
    # the picture's own Hires sampler likewise, beside a Schedule type axis or a Sampler axis and one
    ("DPM++ 2M, Schedule type: Karras", ", Hires sampler: Heun", 'X Type: Schedule type, X Values: '
                                                                   '"Karras,Exponential"', ["heun_karras", "heun_exponential"]),
    ("DPM++ 2M, Schedule type: Karras", ", Hires sampler: Heun", 'X Type: Sampler, X Values: "DPM++ 2M,Euler", '
                                                                   'Y Type: Schedule type, Y Values: "Karras,Exponential"',
     ["heun_karras", "heun_karras", "heun_exponential", "heun_exponential"]),
])
def test_again_on_a_web_ui_grid_draws_its_hires_samplers_on_the_hires_passs_schedule_type(tmp_path, first, hires,
                                                                                          axes, samplers):
    """The web UI's hires pass draws on its Hires schedule type, else ("Use same scheduler") on the first pass's, a
    Schedule type axis's value in the cell: --again read a Hires sampler axis's values each on its own schedule, and
    the picture's Heun on none beside a Schedule type axis."""
    *_, cells = _again_on_web_ui_grid(tmp_path, (
        f"a photo of a dog\nSteps: 2, Sampler: {first}, CFG scale: 7, Seed: 5, Size: 16x16, {_HIRES}{hires}, "
        f"Script: X/Y/Z plot, {axes}"))
    assert [c.hires_sampler for c in cells] == samplers


def test_again_reads_a_web_ui_pictures_hires_sampler_on_a_schedule_type_chosen_for_the_first_pass(tmp_path):
    """Euler's Schedule type Karras is a choice (its Automatic is none), which a hires pass with no Hires schedule type
    of its own drew on: it was read on the model's spacing, as after a first pass whose schedule is its own."""
    from conftest import again_warned, web_ui_picture

    for first, ours in (("Euler", "heun_karras"), ("DPM++ 2M", "heun")):
        picture = web_ui_picture(tmp_path / "p.png", f"a dog\nSteps: 2, Sampler: {first}, Schedule type: Karras, "
                                                      f"Seed: 5, Size: 16x16, {_HIRES}, Hires sampler: Heun")
        assert again_warned(picture, {"model": "shapes", "out": str(tmp_path / "a")})[0].hires_sampler == ours


def test_again_on_a_web_ui_grid_asks_for_a_hires_sampler_axis_textinv_lacks_on_its_schedule_type(tmp_path):
    from conftest import web_ui_picture
    from textinv.again import again_config

    grid = web_ui_picture(tmp_path / "grid.png", (
        f'a photo of a dog\nSteps: 2, Sampler: Euler, Schedule type: Karras, Seed: 5, Size: 16x16, {_HIRES}, '
        f'Script: X/Y/Z plot, X Type: Hires sampler, X Values: "Euler,Euler a"'))
    with pytest.raises(ConfigError, match=r"its X axis, Hires sampler \(Euler,Euler a\), drew 'Euler a' on Schedule "
                                          r"type Karras, which textinv does not have: give the axis beside --again, "
                                          r"--x 'hires-sampler=...'"):
        again_config(grid, {"model": "shapes", "out": str(tmp_path / "a")})


def test_again_on_a_web_ui_grid_draws_a_sampler_named_with_a_schedule_on_a_schedule_type_axiss(tmp_path):
    """The web UI's Sampler axis takes a name that carries a schedule ("DPM++ 2M Karras") before version 1.9 only,
    where its Schedule type axis set the schedule of every sampler (Automatic left each its own), so the axis's
    schedule is the cell's; 1.9 on refuses the name (an unknown sampler). A guard: textinv does so already."""
    *_, cells = _again_on_web_ui_grid(tmp_path, (
        'a photo of a dog\nSteps: 2, Sampler: DPM++ 2M Karras, Seed: 5, Size: 16x16, Script: X/Y/Z plot, X Type: '
        'Sampler, X Values: "DPM++ 2M Karras,Euler", Y Type: Schedule type, Y Values: "exponential,Automatic"'))
    assert [c.sampler for c in cells] == ["dpm++2m_exponential", "euler_exponential", "dpm++2m_karras", "euler"]


def test_again_on_a_web_ui_grid_reads_an_upscaling_network_on_a_hires_upscaler_axis_as_lanczos(tmp_path):
    """A picture's Hires upscaler that is an upscaling network (R-ESRGAN 4x+) is read as Lanczos with a note; a Hires
    upscaler axis holding one was read as it is, and refused when the plot was drawn. Its values are read alike."""
    from conftest import again_warned, web_ui_picture

    grid = web_ui_picture(tmp_path / "grid.png", (
        'a photo of a dog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 16x16, Denoising strength: 0.5, '
        'Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, Script: X/Y/Z plot, X Type: Hires upscaler, X Values: '
        '"R-ESRGAN 4x+, Latent (bicubic), 4x-UltraSharp", Version: v1.10.1'))
    config, warned = again_warned(grid, {"model": "shapes", "out": str(tmp_path / "a")})
    assert config.x == "hires-upscaler=lanczos,latent-bicubic,lanczos"
    for network in ("'R-ESRGAN 4x+', an upscaling network", "'4x-UltraSharp', an upscaling network"):
        assert f"{grid} was enlarged for its hires fix by the web UI's {network}" in warned
    ready = xyz.plan(config.validate())
    assert [c.hires_upscaler for c in ready.cells] == ["lanczos", "latent-bicubic", "lanczos"]


def test_a_var_seed_axis_draws_each_cell_as_generate_draws_that_variation_and_again_draws_it_again(sd1_dir,
                                                                                                  tmp_path):
    """End to end on the tiny model: each cell of a Var. seed axis is the plain generate of --variation-seed at that
    seed, bit for bit, the cells differ, and the grid's text names the axis as the web UI's, with the seeds drawn."""
    model = fresh_model(sd1_dir)
    grid, *cells = generate(_config(tmp_path, model=str(sd1_dir), seed=4, x="Var. seed=3,9", variation_strength=0.5),
                            model=model, progress=False)
    for seed, cell in zip((3, 9), cells):
        plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / f"plain{seed}"), seed=4,
                                 variation_seed=seed, variation_strength=0.5), model=model, progress=False)[0]
        assert np.array_equal(pixels(cell), pixels(plain))
    assert not np.array_equal(pixels(cells[0]), pixels(cells[1]))
    assert 'X Type: Var. seed, X Values: "3,9", Fixed X Values: "3, 9"' in Image.open(grid).text["parameters"]
    assert json.loads(Image.open(grid).text["xyz_plot"])["x"]["labels"] == ["Var. seed: 3", "Var. seed: 9"]
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 0
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png"), pixels(grid))


def test_again_on_a_var_strength_grid_draws_it_toward_the_variation_seed_drawn_for_it(sd1_dir, tmp_path):
    """A variation seed left out is drawn once for the plot; its first cell, at strength 0, records none, so the
    grid's record keeps the one drawn, and --again draws the same grid."""
    grid, *cells = generate(_config(tmp_path, model=str(sd1_dir), x="var-strength=0,0.5"), model=fresh_model(sd1_dir),
                            progress=False)
    assert "variation_seed" in Image.open(cells[1]).text[RECORD_KEY]
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 0
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png"), pixels(grid))


@pytest.mark.parametrize("metadata", ["full", "shareable"])
def test_again_on_a_grid_drawn_from_an_init_image_folder_draws_every_picture_of_it(sd1_dir, tmp_path, metadata):
    """Each cell holds every picture of the folder; the first cell's record names the one it redrew."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 16), "red").save(photos / "a.png")
    Image.new("RGB", (16, 16), "blue").save(photos / "b.png")
    grid, *cells = generate(_config(tmp_path, model=str(sd1_dir), init_image=str(photos), width=16, height=16,
                                    x="denoise=0.5,0.9", metadata=metadata), model=fresh_model(sd1_dir), progress=False)
    assert len(cells) == 4
    beside = [] if metadata == "full" else ["--init-image", str(photos)]  # (shareable: the folder by its name)
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a"), *beside]) == 0
    assert np.array_equal(pixels(tmp_path / "a" / "xyz_grid-0000.png"), pixels(grid))


def test_prompt_search_and_replace_replaces_the_first_value_in_the_prompt_and_the_negative(sd1_dir, tmp_path):
    model = fresh_model(sd1_dir)
    config = _config(tmp_path, model=str(sd1_dir), prompt=["a photo of dog"], negative_prompt="a dog, blurry",
                     x="prompt-sr=dog,cat")
    cells = generate(config, model=model, progress=False)[1:]
    texts = [Image.open(c).text for c in cells]
    assert [t["prompt"] for t in texts] == ["a photo of dog", "a photo of cat"]
    assert [t["negative_prompt"] for t in texts] == ["a dog, blurry", "a cat, blurry"]
    plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / "plain"), prompt=["a photo of cat"],
                             negative_prompt="a cat, blurry"), model=model, progress=False)[0]
    assert np.array_equal(pixels(cells[1]), pixels(plain))
    assert not np.array_equal(pixels(cells[0]), pixels(plain))


def test_prompt_search_and_replace_replaces_in_the_hires_prompts_too(tmp_path, no_model):
    """A --hires-prompt that kept the first value would redraw it over each cell's in the second pass."""
    cells = xyz.plan(_config(tmp_path, x="prompt-sr=dog,cat", hires_scale=1.5, hires_prompt="a sharp photo of dog",
                             hires_negative_prompt="a blurry dog")).cells
    assert [(c.prompt, c.hires_prompt, c.hires_negative_prompt) for c in cells] == [
        (["a photo of dog"], "a sharp photo of dog", "a blurry dog"),
        (["a photo of cat"], "a sharp photo of cat", "a blurry cat")]
    assert xyz.plan(_config(tmp_path, x="prompt-sr=dog,cat", hires_scale=1.5)).cells[1].hires_prompt is None


def test_prompt_search_and_replace_replaces_in_the_clip_l_prompts_too(tmp_path, no_model):
    """--prompt-l and --negative-prompt-l are CLIP-L's part of the prompts: a CLIP-L text that kept the first value
    would draw it beside each cell's. The first value may be in them alone."""
    comfy = {"emphasis": "comfy", "prompt_l": "a dog", "negative_prompt_l": "a dog, dark"}
    cells = xyz.plan(_config(tmp_path, x="prompt-sr=dog,cat", **comfy)).cells
    assert [(c.prompt, c.prompt_l, c.negative_prompt_l) for c in cells] == [
        (["a photo of dog"], "a dog", "a dog, dark"), (["a photo of cat"], "a cat", "a cat, dark")]
    cells = xyz.plan(_config(tmp_path, x="prompt-sr=dark,bright", **comfy)).cells
    assert [c.negative_prompt_l for c in cells] == ["a dog, dark", "a dog, bright"]
    with pytest.raises(ConfigError, match=r"'cat' is in no prompt= or negative_prompt= \(nor prompt_l= or "):
        xyz.plan(_config(tmp_path, x="prompt-sr=cat,bird", **comfy))


def test_the_embedding_axis_draws_each_file_under_one_token_in_training_step_order(sd1_dir, tmp_path):
    """The key use: a run's saved embeddings, by a glob, each drawn by the same prompt, in the order of their steps
    (not of their names: steps-1000 sorts before steps-500 as text); each cell is a plain generate with that file."""
    folder = tmp_path / "embeddings"
    files = {}
    for steps in (1000, 500):
        emb = LearnedEmbedding("<q>", {"text_encoder": torch.randn(2, 32, generator=torch.Generator().manual_seed(
            steps)) * 3}, {"steps": str(steps)})
        files[steps] = save_embedding(emb, folder / f"learned_embeds-steps-{steps}.safetensors")[0]
    model = fresh_model(sd1_dir)
    config = _config(tmp_path, model=str(sd1_dir), prompt=["a photo of <q>"], embedding=[str(files[500])],
                     x=f"embedding={folder}/*.safetensors")
    paths = generate(config, model=model, progress=False)
    cells = paths[1:]
    assert [Image.open(c).text["embeddings"] for c in cells] == [files[500].name, files[1000].name]
    assert not np.array_equal(pixels(cells[0]), pixels(cells[1]))
    for steps, cell in zip((500, 1000), cells):
        plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / f"plain{steps}"),
                                 prompt=["a photo of <q>"], embedding=[str(files[steps])]), model=model,
                         progress=False)[0]
        assert np.array_equal(pixels(cell), pixels(plain))
    record = json.loads(Image.open(paths[0]).text["xyz_plot"])
    assert record["x"]["labels"] == [f"Embedding: {files[500].name}", f"Embedding: {files[1000].name}"]
    # the glob's folder is not written (it tells where the user's files are): the files by their names
    assert (f'X Type: Embedding, X Values: "{files[500].name}, {files[1000].name}"' in Image.open(paths[0]).text[
        "parameters"]) and str(folder) not in str(Image.open(paths[0]).text)
    names = f"embedding={files[500].name},{files[1000].name}"
    assert json.loads(Image.open(paths[0]).text[RECORD_KEY])["settings"]["x"] == names
    # --metadata full: the files' paths, so --again finds them from anywhere
    full = generate(replace(config, metadata="full", out=str(tmp_path / "full")), model=model, progress=False)[0]
    assert main(["generate", "--again", str(full), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(pixels(tmp_path / "again" / "xyz_grid-0000.png"), pixels(full))
    assert model.tokenizer.convert_tokens_to_ids("<q>") == model.tokenizer.unk_token_id  # (handed back clean)


def test_the_other_embeddings_given_stay_in_every_cell(sd1_dir, tmp_path):
    """A negative embedding given with --embedding beside the axis is drawn in every cell: the axis's file takes
    the place of the --embedding that is its own (one of its files, or one holding its token), else is loaded
    beside them; each cell is the plain generate with both. The web UI's step files too, under the run's name."""
    neg = save_embedding(LearnedEmbedding("<neg>", {"text_encoder": torch.randn(2, 32) * 3}),
                         tmp_path / "neg.safetensors")[0]
    folder = tmp_path / "embeddings"
    files = {steps: save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(
        1, 32, generator=torch.Generator().manual_seed(steps)) * 3}, {"steps": str(steps)}),
        folder / f"learned_embeds-steps-{steps}.safetensors")[0] for steps in (500, 1000)}
    model = fresh_model(sd1_dir)
    settings = {"model": str(sd1_dir), "prompt": ["a photo of <q>"], "negative_prompt": "<neg>"}
    for given in ([str(neg)], [str(neg), str(files[500])]):  # (beside it; in the place of the axis's own)
        cells = generate(_config(tmp_path, out=str(tmp_path / f"r{len(given)}"), embedding=given,
                                 x=f"embedding={folder}/*.safetensors", **settings), model=model, progress=False)[1:]
        for steps, cell in zip((500, 1000), cells):
            plain = generate(_config(tmp_path, out=str(tmp_path / f"plain{steps}"), embedding=[str(neg), str(
                files[steps])], **settings), model=model, progress=False)[0]
            assert np.array_equal(pixels(cell), pixels(plain))
    # the web UI's: the negative embedding called by its file's name, not the token it holds, as generate calls it
    neg = tmp_path / "easynegqz.safetensors"
    (tmp_path / "neg.safetensors").rename(neg)
    steps = {step: web_ui_step(tmp_path / "web", "my-dog", step, seed=step) for step in (500, 1000)}
    settings = {**settings, "prompt": ["a photo of my-dog"], "negative_prompt": "easynegqz"}
    grid, *cells = generate(_config(tmp_path, out=str(tmp_path / "web-r"), embedding=[str(neg)],
                                    x=f"embedding={tmp_path}/web/*.pt", **settings), model=model, progress=False)
    for step, cell in zip((500, 1000), cells):
        plain = generate(_config(tmp_path, out=str(tmp_path / f"web{step}"), embedding=[str(neg), str(steps[step])],
                                 token=["easynegqz", "my-dog"], **settings), model=model, progress=False)[0]
        assert np.array_equal(pixels(cell), pixels(plain))
    # --again on the grid (--metadata shareable: the model and the files given beside it) draws it again
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--x", f"embedding={tmp_path}/web/*.pt",
                 "--embedding", str(neg), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(pixels(tmp_path / "again" / "xyz_grid-0000.png"), pixels(grid))


def test_the_axiss_token_is_looked_for_as_generate_looks_for_it(sd1_dir, tmp_path):
    """As generate's check and the tokenizer: an added token is read inside a longer word (CLIP's tokenizer splits
    "hotdogzq" into "hot" and the added "dogzq", so the cells draw it), and the hires fix's prompts draw it too,
    composed (NFC) as generate composes them; each cell is the plain generate's."""
    model = fresh_model(sd1_dir)
    folder = tmp_path / "e"
    for steps in (1, 2):
        save_embedding(LearnedEmbedding("dogzq", {"text_encoder": torch.randn(1, 32, generator=torch.Generator(
        ).manual_seed(steps)) * 3}, {"steps": str(steps)}), folder / f"learned_embeds-steps-{steps}.safetensors")
    first = str(folder / "learned_embeds-steps-1.safetensors")
    for i, settings in enumerate(({"prompt": ["a photo of a hotdogzq"]},
                                  {"prompt": ["a photo"], "hires_scale": 1.5, "hires_prompt": "a photo of dogzq"})):
        cell = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / f"r{i}"), **settings,
                                x=f"embedding={folder}/*.safetensors"), model=model, progress=False)[1]
        plain, without = (generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / f"p{i}{len(e)}"),
                                           embedding=e, **settings), model=model, progress=False)[0]
                          for e in ([first], []))
        assert np.array_equal(pixels(cell), pixels(plain)) and not np.array_equal(pixels(cell), pixels(without))
    cafe = save_embedding(LearnedEmbedding("<caf\u00e9>", {"text_encoder": torch.randn(1, 32)}),
                          tmp_path / "cafe.safetensors")[0]  # (its token composed: é as one character)
    assert len(xyz.plan(_config(tmp_path, prompt=["a <cafe\u0301>"], x=f"embedding={cafe}")).cells) == 1


def test_an_axis_whose_place_among_the_embeddings_given_is_unsaid_is_refused(tmp_path, no_model):
    """Two --embedding files that each hold the axis's token: which one each file of the axis replaces is unsaid."""
    a, b, c = (save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}),
                              tmp_path / f"{name}.safetensors")[0] for name in "abc")
    with pytest.raises(ConfigError, match=r"embedding= \S+a.safetensors and \S+b.safetensors are each the axis's "
                                          r"\(one of its files, or holding one of their tokens <q>\), .* leave out "
                                          r"all but one of them, or give the others a token= of their own"):
        generate(_config(tmp_path, prompt=["a photo of <q>"], embedding=[str(a), str(b)], x=f"embedding={a},{c}"),
                 progress=False)


def test_a_training_runs_folder_given_as_embedding_is_the_axiss_own_whatever_format_it_saved(sd1_dir, images,
                                                                                             tmp_path):
    """`--embedding runs/my-dog --x "embedding=runs/my-dog/embeddings/*.pt"` after `train --format a1111` (or an
    SDXL run, whose file is named after its token): the folder holds the axis's token, so each step file takes its
    place; it was refused as two files of one token, the folder's file not being found by its token."""
    from textinv.config import TrainConfig
    from textinv.train import train

    run = tmp_path / "run"
    train(TrainConfig(images=str(images), token="<zq>", init="dog", out=str(run), format="a1111", steps=2, batch=2,
                      save_every=1, sample_every=0), model=fresh_model(sd1_dir), progress=False)
    steps = sorted(str(f) for f in (run / "embeddings").glob("*.pt"))
    cells = xyz.plan(_config(tmp_path, prompt=["a photo of <zq>"], embedding=[str(run)],
                             x=f"embedding={run}/embeddings/*.pt")).cells
    assert [c.embedding for c in cells] == [[f] for f in steps]


def web_ui_step(folder, name, step, seed=0):
    """An embedding as the web UI saves a training step's: NAME-STEP.pt, holding the name NAME-STEP."""
    folder.mkdir(exist_ok=True)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(seed)) * 3
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": f"{name}-{step}",
                "step": step, "sd_checkpoint": None, "sd_checkpoint_name": None}, folder / f"{name}-{step}.pt")
    return folder / f"{name}-{step}.pt"


def test_the_web_uis_step_files_are_drawn_under_the_runs_name(sd1_dir, tmp_path):
    """The web UI names each step's embedding by its file (my-dog-500): on an axis each is loaded under the run's
    name, which the prompt writes, with no --token; each cell is a plain generate with that file under that name."""
    folder = tmp_path / "embeddings"
    files = {step: web_ui_step(folder, "my-dog", step, seed=step) for step in (1000, 500)}
    model = fresh_model(sd1_dir)
    config = _config(tmp_path, model=str(sd1_dir), prompt=["a photo of my-dog"], x=f"embedding={folder}/*.pt",
                     metadata="full")
    grid, *cells = generate(config, model=model, progress=False)
    assert [Path(Image.open(c).text["embeddings"]).name for c in cells] == ["my-dog-500.pt", "my-dog-1000.pt"]
    assert not np.array_equal(pixels(cells[0]), pixels(cells[1]))
    for step, cell in zip((500, 1000), cells):
        plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / f"plain{step}"),
                                 prompt=["a photo of my-dog"], embedding=[str(files[step])], token=["my-dog"]),
                         model=model, progress=False)[0]
        assert np.array_equal(pixels(cell), pixels(plain))
    assert main(["generate", "--again", str(grid), "--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(pixels(tmp_path / "again" / "xyz_grid-0000.png"), pixels(grid))


def test_step_files_whose_token_is_unsaid_are_refused(tmp_path, no_model):
    """Two runs' files, or a prompt that writes one step's own name: which token is meant is unsaid."""
    folder = tmp_path / "e"
    dog, dog2, cat = web_ui_step(folder, "my-dog", 500), web_ui_step(folder, "my-dog", 1000), \
        web_ui_step(folder, "cat", 500)
    with pytest.raises(ConfigError, match=r"hold different tokens \(my-dog-500 in my-dog-500.pt, cat-500 in "):
        generate(_config(tmp_path, prompt=["a my-dog and a cat"], x=f"embedding={dog},{cat}"), progress=False)
    with pytest.raises(ConfigError, match=r"each drawn as 'my-dog', but the prompt writes 'my-dog-500'"):
        generate(_config(tmp_path, prompt=["a photo of my-dog-500"], x=f"embedding={dog},{dog2}"), progress=False)
    dog50 = web_ui_step(tmp_path / "e50", "my-dog", 50)  # (its name is in my-dog-500, but not as a word)
    with pytest.raises(ConfigError, match=r"but the prompt writes 'my-dog-500', one step's own name"):
        generate(_config(tmp_path, prompt=["a photo of my-dog-500"], x=f"embedding={dog50},{dog}"), progress=False)
    # another --embedding beside the axis's is named as it names itself, the axis's files as their run
    cells = xyz.plan(_config(tmp_path, prompt=["my-dog, cat-500"], embedding=[str(dog), str(cat)],
                             x=f"embedding={dog},{dog2}")).cells
    assert [(c.embedding, c.token) for c in cells] == [([str(dog), str(cat)], ["my-dog", "cat-500"]),
                                                       ([str(dog2), str(cat)], ["my-dog", "cat-500"])]
    with pytest.raises(ConfigError, match=r"\S+/e50 is no file textinv reads alone .* one token= per embedding=, "
                                          r"my-dog for the axis's"):
        generate(_config(tmp_path, prompt=["my-dog"], embedding=[str(tmp_path / "e50")], x=f"embedding={dog},{dog2}"),
                 progress=False)
    cells = xyz.plan(_config(tmp_path, prompt=["a photo of my-dog"], x=f"embedding={folder}/my-dog-*.pt")).cells
    assert [(c.embedding, c.token) for c in cells] == [([str(dog)], ["my-dog"]), ([str(dog2)], ["my-dog"])]


def test_a_runs_name_ending_in_a_number_is_the_name_its_final_file_and_steps_are_drawn_under(tmp_path, no_model):
    """A run named bad-hands-5: its final file holds bad-hands-5 and its steps bad-hands-5-500, ... (not the steps
    of a run named bad-hands, and not two runs)."""
    folder = tmp_path / "e"
    final, step = web_ui_step(folder, "bad-hands", 5), web_ui_step(folder, "bad-hands-5", 500)
    cells = xyz.plan(_config(tmp_path, negative_prompt="bad-hands-5", x=f"embedding={step},{final}")).cells
    assert [(c.embedding, c.token) for c in cells] == [([str(step)], ["bad-hands-5"]), ([str(final)], ["bad-hands-5"])]


def test_files_are_taken_in_the_order_of_the_steps_they_record_else_of_the_numbers_in_their_names(tmp_path):
    def saved(name, steps=None):
        emb = LearnedEmbedding("<q>", {"text_encoder": torch.zeros(1, 32)}, {"steps": str(steps)} if steps else {})
        return str(save_embedding(emb, tmp_path / name)[0])

    recorded = [saved("a.safetensors", 900), saved("b.safetensors", 50)]
    assert xyz._by_step(recorded) == recorded[::-1]
    named = [saved("x-steps-1000.safetensors"), saved("x-steps-200.safetensors")]
    assert xyz._by_step(named) == named[::-1]


def test_a_glob_over_diffusers_sdxl_pairs_takes_each_pair_once(tmp_path, no_model):
    """diffusers' SDXL script saves each step as two files; the first reads the second beside it, so the second is
    no value of its own (it would draw a half alone, twice the cells)."""
    for step in (500, 1000):
        emb = LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 768), "text_encoder_2": torch.randn(1, 1280)},
                               metadata={"steps": str(step)})
        save_embedding(emb, tmp_path / f"learned_embeds-steps-{step}.safetensors", format="diffusers-sdxl")
    cells = xyz.plan(_config(tmp_path, prompt=["a photo of <q>"], x=f"embedding={tmp_path}/*.safetensors")).cells
    assert [Path(c.embedding[0]).name for c in cells] == ["learned_embeds-steps-500.safetensors",
                                                          "learned_embeds-steps-1000.safetensors"]


def test_the_grids_script_fields_end_its_settings_line_before_a_dynamic_prompts_template_lines():
    assert xyz._with_fields("a dog\nSteps: 2, Seed: 0\nTemplate: a {dog|cat}", "Script: X/Y/Z plot") == \
        "a dog\nSteps: 2, Seed: 0, Script: X/Y/Z plot\nTemplate: a {dog|cat}"
    assert xyz._with_fields("a dog\nSteps: 2", "Script: X/Y/Z plot") == "a dog\nSteps: 2, Script: X/Y/Z plot"
    assert xyz._with_fields("", "Script: X/Y/Z plot") == "Script: X/Y/Z plot"


def test_the_command_line_takes_x_y_z_and_the_cap(sd1_dir, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "1", "--steps", "1", "--out", str(out)]
    assert main([*args, "--x", "sampler=euler,Euler a", "--y", "cfg=2,4"]) == 0
    grid = Image.open(out / "xyz_grid-0000.png")
    assert "X Type: Sampler, X Values: \"euler,Euler a\", Y Type: CFG Scale" in grid.text["parameters"]
    assert json.loads(grid.text["xyz_plot"])["x"]["labels"] == ["euler", "euler_a"]
    assert main([*args, "--x", "seed=1-3", "--xyz-max-cells", "2"]) == 2
    assert "3 cells, more than --xyz-max-cells 2" in capsys.readouterr().err


def test_again_with_an_axis_draws_the_picture_along_it_and_metadata_none_writes_no_grid_text(sd1_dir, tmp_path):
    """`--again PICTURE --x guidance=...`: the picture's settings with the axis varied; the cell of the picture's own
    settings is the picture. It is redrawn in the batch it was drawn in (seeds 0 and 1 of -n 2): a seed axis moves
    that batch, the picture's place in it kept."""
    args = ["generate", "--model", str(sd1_dir), "--prompt", "a dog", "--steps", "2", "--guidance", "4"]
    assert main([*args, "-n", "2", "--out", str(tmp_path / "a")]) == 0
    picture = tmp_path / "a" / "000-a-dog-s1.png"
    again = ["generate", "--again", str(picture), "--model", str(sd1_dir)]
    assert main([*again, "--x", "guidance=4,6", "--out", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").glob("000-*")) == ["000-a-dog-s1-2.png", "000-a-dog-s1.png"]
    assert np.array_equal(pixels(tmp_path / "b" / "000-a-dog-s1.png"), pixels(picture))
    assert Image.open(tmp_path / "b" / "000-a-dog-s1-2.png").text["guidance"] == "6.0"
    assert main([*again, "--x", "seed=0,7", "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").glob("000-*")) == ["000-a-dog-s1.png", "000-a-dog-s8.png"]
    assert np.array_equal(pixels(tmp_path / "d" / "000-a-dog-s1.png"), pixels(picture))
    assert main([*args, "-n", "1", "--out", str(tmp_path / "c"), "--x", "steps=1,2", "--metadata", "none"]) == 0
    assert Image.open(tmp_path / "c" / "xyz_grid-0000.png").text == {}


def test_running_out_of_memory_as_the_model_loads_is_said_as_generate_says_it(tmp_path, monkeypatch):
    from conftest import CUDA_OUT_OF_MEMORY

    from textinv.errors import DeviceMemoryError

    def fails(*a, **k):
        raise torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)

    monkeypatch.setattr(generate_module, "load_model", fails)
    with pytest.raises(DeviceMemoryError, match=r"^out of memory on cpu loading the model \(fp32\): .*precision="
                                                r"'fp16'"):
        generate(_config(tmp_path, x="steps=1,2"), progress=False)


def test_running_out_of_memory_in_a_cell_names_the_cell_and_the_cells_written(tmp_path, monkeypatch):
    """generate's own message counts the cell's pictures alone ("No picture was written"); the plot's says which
    cell ran out and that the cells before it are written."""
    from textinv.errors import DeviceMemoryError

    def draws(cells, model, progress, keep_seeds, refiner, suffixes):
        if (cells[0].steps, cells[0].guidance) == (1, 7.5):
            raise DeviceMemoryError("out of memory on cuda drawing 1 picture at once. No picture was written")
        return [[] for _ in cells]

    monkeypatch.setattr(xyz, "generate_together", draws)
    (tmp_path / "r").mkdir()  # (as generate makes --out: the plot stops when it is gone after a cell)
    with pytest.raises(DeviceMemoryError, match=r"^the X/Y/Z plot's cell 4 of 6 \(x='steps=1', y='guidance=7.5'\): "
                                                r"out of memory .* The 3 cells before it are written in \S+r, with "
                                                r"no grid$"):
        xyz.plot(_config(tmp_path, x="steps=1-3", y="guidance=3,7.5"), model=object(), progress=False)


def test_a_killed_plots_half_written_grid_is_cleared_and_a_grid_that_cannot_be_written_is_said(sd1_dir, tmp_path,
                                                                                                monkeypatch):
    """The next plot into the folder removes the temporary file a kill left of a grid (not a user's file), and a
    grid that cannot be written (a full disk, the folder made read-only) is a ConfigError saying the cells'
    pictures are kept, not an OSError."""
    import errno

    out = tmp_path / "r"
    out.mkdir()
    stale, mine = out / ".xyz_grid-0000.png.abcdefgh.tmp", out / ".xyz_grid-notes.png.abcdefgh.tmp"
    stale.write_bytes(b"\x89PNG half")
    mine.write_text("a user's")
    model = fresh_model(sd1_dir)
    paths = generate(_config(tmp_path, model=str(sd1_dir), x="steps=1,2"), model=model, progress=False)
    assert paths[0].name == "xyz_grid-0000.png" and not stale.exists() and mine.exists()

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(xyz, "atomic_path", full)
    with pytest.raises(ConfigError, match=r"cannot write xyz_grid-0001.png \(No space left on device\); the 2 "
                                          r"pictures written before it are in"):
        generate(_config(tmp_path, model=str(sd1_dir), x="steps=1,2"), model=model, progress=False)
    monkeypatch.undo()
    real = xyz.generate_together

    def then_removed(*a, **k):  # (the folder removed after the first cell)
        import shutil

        written = real(*a, **k)
        shutil.rmtree(out)
        return written

    monkeypatch.setattr(xyz, "generate_together", then_removed)
    with pytest.raises(ConfigError, match=r"was removed .* after 1 picture had been written to it"):
        generate(_config(tmp_path, model=str(sd1_dir), x="steps=1,2"), model=model, progress=False)
    assert not out.exists()


def test_a_sampler_the_model_cannot_sample_is_refused_before_any_cell_is_drawn(sd1_dir, tmp_path):
    """A Karras schedule on a zero-terminal-SNR model (as the bundled shapes model's) is refused once the model has
    loaded, naming the axis, not after the cells before it have been written."""
    model = fresh_model(sd1_dir)
    scheduler = model.pipeline.scheduler
    model.pipeline.scheduler = type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=True)
    config = _config(tmp_path, model=str(sd1_dir), x="sampler=euler,dpm++2m_karras")
    with pytest.raises(ConfigError, match=r"x='sampler=euler,dpm\+\+2m_karras': sampler dpm\+\+2m_karras cannot"):
        generate(config, model=model, progress=False)
    assert not list((tmp_path / "r").glob("*.png"))


def test_a_restart_cell_that_would_take_fewer_calls_is_refused_before_any_cell_is_drawn(sd1_dir, tmp_path):
    """Restart with the next-to-last sigma discarded on the model's spacing at 20 to 24 steps would go down to sigma 0
    twice (`samplers.check_pass`): its cell is refused once the model has loaded, before the cells before it."""
    config = _config(tmp_path, model=str(sd1_dir), steps=22, discard_penultimate_sigma=True,
                     x="sampler=euler,restart")
    with pytest.raises(ConfigError, match=r"^x='sampler=euler,restart': sampler restart: steps=22 with "
                                          r"discard_penultimate_sigma=: Restart's level nearest sigma 0.1"):
        generate(config, model=fresh_model(sd1_dir), progress=False)
    assert not list((tmp_path / "r").glob("*.png"))


def test_a_notice_of_the_run_is_said_once_per_plot_not_once_per_cell(sd1_dir, tmp_path):
    """Each cell is drawn by generate, which warns of embeddings trained at different sizes (`generation_size`):
    a 2x1 plot said it twice, Python's once-a-line filter undone by each cell's checks."""
    model = fresh_model(sd1_dir)
    side = model.resolution
    files = [save_embedding(LearnedEmbedding(token, {"text_encoder": torch.randn(1, 32)}, {"resolution": size}),
                            tmp_path / f"{i}.safetensors")[0]
             for i, (token, size) in enumerate([("<q>", f"{side}x{side * 2}"), ("<r>", f"{side * 2}x{side}")])]
    with pytest.warns(UserWarning) as heard:
        generate(GenerateConfig(prompt=["<q> and <r>"], embedding=[str(f) for f in files], n=1, steps=1,
                                out=str(tmp_path / "r"), x="steps=1,2"), model=model, progress=False)
    said = [str(w.message) for w in heard if "the model's own size" in str(w.message)]
    assert len(said) == 1, said


def test_a_ctrl_c_in_a_cell_writes_the_partial_grid_of_the_cells_drawn_before_it(sd1_dir, tmp_path, monkeypatch,
                                                                                capsys):
    """A Ctrl-C in an X/Y/Z plot's cell says which cell it stopped in, what of it was written, and that the cells
    before it are written, with the grid of them: the cells not drawn black, as the web UI leaves a cell that drew
    nothing, its name and text saying it is partial; `--again` on it is refused naming the cells it lacks, unless its
    axis is given beside it (the whole plot drawn, as asked)."""
    from conftest import interrupted_at

    interrupted_at(monkeypatch, generate_module, "_draw_batch", 3)  # (the third cell's one batch)
    out = tmp_path / "r"
    command = ["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "1", "--steps", "1", "--width", "16",
               "--height", "16"]
    assert main([*command, "--out", str(out), "--x", "cfg=2,4", "--y", "steps=1,2"]) == 130
    said = capsys.readouterr().err
    grid = out / "xyz_grid-0000-partial.png"
    assert ("interrupted: in the X/Y/Z plot's cell 3 of 4 (--x guidance=2.0, --y steps=2), where none of 1 picture had "
            f"been written; the 2 cells before it are written in {out}, and the partial grid of them, {grid} (the 2 "
            f"cells not drawn left black)") in said
    assert [p.name for p in out.glob("xyz_grid*")] == [grid.name] and len(list(out.glob("*.png"))) == 3
    text = Image.open(grid).text
    plotted = json.loads(text["xyz_plot"])
    assert plotted["partial"] == {"cells": 4, "missing": [3, 4]}
    assert plotted["cells"] == [["000-a-dog-s0.png"], ["000-a-dog-s0-2.png"], None, None]
    _, _, _, cells = cells_of(grid, 2, 2, 16, 16)
    assert np.array_equal(cells[0], pixels(out / "000-a-dog-s0.png"))
    assert np.array_equal(cells[1], pixels(out / "000-a-dog-s0-2.png"))
    assert not cells[2].any() and not cells[3].any()  # (black)
    assert json.loads(text[RECORD_KEY])["xyz_partial"] == {"cells": 4, "missing": [3, 4]}

    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 2
    assert (f"error: --again {grid} is the grid of an X/Y/Z plot stopped part-way: its cells 3 and 4 of its 4 were "
            f"not drawn (black in it), so it is no whole plot to draw again; to draw the whole plot, give its axis "
            f"beside --again: --x guidance=2,4;") in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()
    assert main(["generate", "--again", str(grid), "--model", str(sd1_dir), "--out", str(tmp_path / "a"), "--x",
                 "guidance=2,4"]) == 0
    assert (tmp_path / "a" / "xyz_grid-0000.png").is_file() and len(list((tmp_path / "a").glob("*.png"))) == 5
    # a partial grid takes the next number, and a whole one the one after it
    assert main([*command, "--out", str(out), "--x", "cfg=2"]) == 0
    assert (out / "xyz_grid-0001.png").is_file()


def test_a_plot_stopped_in_its_first_cell_writes_no_grid(sd1_dir, tmp_path, monkeypatch, capsys):
    from conftest import interrupted_at

    interrupted_at(monkeypatch, generate_module, "_draw_batch", 1)
    out = tmp_path / "r"
    assert main(["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "1", "--steps", "1", "--width", "16",
                 "--out", str(out), "--x", "cfg=2,4,6"]) == 130
    assert ("interrupted: in the X/Y/Z plot's cell 1 of 3 (--x guidance=2.0), where none of 1 picture had been "
            f"written; the 0 cells before it are written in {out}, with no grid") in capsys.readouterr().err
    assert not list(out.glob("*.png"))


def test_running_out_of_memory_or_a_failed_write_in_a_later_cell_writes_the_partial_grid(sd1_dir, tmp_path,
                                                                                        monkeypatch):
    """Each with its own error, which says where the partial grid is; with --z and --xyz-sub-grids, a --z value's
    grid alone is partial where it lacks cells, whole where it has them all, and not written where it has none."""
    import errno

    from conftest import interrupted_at

    from textinv.errors import DeviceMemoryError

    model = fresh_model(sd1_dir)
    config = _config(tmp_path, model=str(sd1_dir), steps=1, x="guidance=2,4", y="steps=1,2",
                     z="size=16x16,16x24,24x16", xyz_sub_grids=True)
    interrupted_at(monkeypatch, generate_module, "_draw_batch", 6,
                   DeviceMemoryError("out of memory on cuda drawing 1 picture at once. No picture was written"))
    with pytest.raises(DeviceMemoryError, match=r"^the X/Y/Z plot's cell 6 of 12 .* The 5 cells before it are written "
                                                r"in \S+, and the partial grid of them, \S+xyz_grid-0000-partial.png, "
                                                r"\S+xyz_grid-0001.png, \S+xyz_grid-0002-partial.png \(the 7 cells not "
                                                r"drawn left black\)$"):
        xyz.plot(config, model=model, progress=False)
    out = Path(config.out)
    assert sorted(p.name for p in out.glob("xyz_grid*")) == ["xyz_grid-0000-partial.png", "xyz_grid-0001.png",
                                                              "xyz_grid-0002-partial.png"]
    assert "partial" not in json.loads(Image.open(out / "xyz_grid-0001.png").text["xyz_plot"])
    assert json.loads(Image.open(out / "xyz_grid-0002-partial.png").text["xyz_plot"])["partial"] == {
        "cells": 4, "missing": [2, 3, 4]}
    monkeypatch.undo()

    config = replace(config, z=None, xyz_sub_grids=False, out=str(tmp_path / "w"))
    interrupted_at(monkeypatch, generate_module, "_save_new", 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ConfigError, match=r"cannot write .*; in the X/Y/Z plot's cell 2 of 4 \(x='guidance=4.0', "
                                          r"y='steps=1'\): the 1 cell before it is written in \S+w, and the partial "
                                          r"grid of them, \S+xyz_grid-0000-partial.png \(the 3 cells not drawn left "
                                          r"black\)$"):
        xyz.plot(config, model=model, progress=False)
    # a grid that cannot be written either (the disk full): said, and the cell's error raised
    monkeypatch.undo()
    interrupted_at(monkeypatch, generate_module, "_save_new", 2, OSError(errno.ENOSPC, "No space left on device"))
    interrupted_at(monkeypatch, xyz, "_save_grid", 1, OSError(errno.ENOSPC, "No space left on device"))
    config = replace(config, out=str(tmp_path / "w2"))
    with pytest.raises(ConfigError, match=r"cannot write .*; in the X/Y/Z plot's cell 2 of 4 .*: the 1 cell before it "
                                          r"is written in \S+w2; the partial grid of them could not be written \(.*"
                                          r"cannot write a picture \(No space left on device\); the 1 picture written "
                                          r"before it is in \S+w2: make room, then run the command again\)$"):
        xyz.plot(config, model=model, progress=False)
    assert not list(Path(config.out).glob("xyz_grid*"))


def _text_but_the_batch(path):
    """A picture's PNG text without what tells the pipeline call it was drawn in from another's: the batch's seeds
    and --batch-size, in its record."""
    text = dict(Image.open(path).text)
    if RECORD_KEY in text:
        record = json.loads(text[RECORD_KEY])
        record.pop("batch_seeds", None)
        record["settings"].pop("batch_size", None)
        text[RECORD_KEY] = record
    return text


def test_cells_alike_but_for_their_prompts_and_seeds_share_pipeline_calls_each_drawn_as_alone(sd1_dir, tmp_path,
                                                                                              monkeypatch):
    """A Prompt S/R x Seed grid draws its 9 pictures in one pipeline call at --batch-size 9, not one call a cell: the
    cells, their files' names and texts and the grid are those of the grid drawn a picture a call (but for the batch
    each records), and each cell is the plain generate of its settings; each picture records the seeds of the call
    it was drawn in, so --again redraws it in a batch of as many."""
    from conftest import recorded_arguments

    model = fresh_model(sd1_dir)
    settings = dict(model=str(sd1_dir), negative_prompt="a dog, blurry", x="prompt-sr=dog,cat,bird", y="seed=1-3")
    calls = recorded_arguments(monkeypatch, generate_module, "render", "seeds")
    grid, *cells = generate(_config(tmp_path, out=str(tmp_path / "b"), batch_size=9, **settings), model=model,
                            progress=False)
    assert calls == [([1, 1, 1, 2, 2, 2, 3, 3, 3],)]
    calls.clear()
    one_grid, *one_cells = generate(_config(tmp_path, out=str(tmp_path / "one"), batch_size=1, **settings),
                                    model=model, progress=False)
    assert len(calls) == 9
    assert [c.name for c in cells] == [c.name for c in one_cells] and len(set(c.name for c in cells)) == 9
    for cell, one in zip([grid, *cells], [one_grid, *one_cells]):
        assert np.array_equal(pixels(cell), pixels(one)) and _text_but_the_batch(cell) == _text_but_the_batch(one)
    assert [Image.open(c).text["prompt"] for c in cells[:3]] == ["a photo of dog", "a photo of cat", "a photo of bird"]
    plain = generate(_config(tmp_path, out=str(tmp_path / "plain"), model=str(sd1_dir), prompt=["a photo of cat"],
                             negative_prompt="a cat, blurry", seed=2, batch_size=9), model=model, progress=False)[0]
    assert np.array_equal(pixels(cells[4]), pixels(plain))
    assert _text_but_the_batch(cells[4]) == _text_but_the_batch(plain)
    assert json.loads(Image.open(cells[4]).text[RECORD_KEY])["batch_seeds"] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert main(["generate", "--again", str(cells[4]), "--model", str(sd1_dir), "--out", str(tmp_path / "a")]) == 0
    assert np.array_equal(pixels(tmp_path / "a" / plain.name), pixels(plain))


def test_cells_of_a_seed_axis_drawn_together_count_their_variation_seeds_from_their_own_seeds(sd1_dir, tmp_path):
    """Picture i of a run varies toward --variation-seed + i, counted from its run's --seed: a cell of a seed axis
    drawn in one call with the others counts from its own seed, as its plain generate does."""
    model = fresh_model(sd1_dir)
    variation = dict(variation_seed=7, variation_strength=0.5)
    cells = generate(_config(tmp_path, model=str(sd1_dir), x="seed=1,5", n=2, **variation), model=model,
                     progress=False)[1:]
    plain = generate(_config(tmp_path, model=str(sd1_dir), out=str(tmp_path / "plain"), seed=5, n=2, **variation),
                     model=model, progress=False)
    assert [Image.open(c).text["variation_seed"] for c in cells] == ["7", "8", "7", "8"]
    for cell, alone in zip(cells[2:], plain):
        assert np.array_equal(pixels(cell), pixels(alone)) and _text_but_the_batch(cell) == _text_but_the_batch(alone)


def test_cells_that_differ_in_more_than_their_prompts_and_seeds_are_never_drawn_in_one_call(sd1_dir, tmp_path,
                                                                                            monkeypatch):
    """Each pipeline call draws one sampler at one number of steps: a Sampler x Seed x Steps plot's cells share calls
    along the seed axis alone."""
    from conftest import recorded_arguments

    calls = recorded_arguments(monkeypatch, generate_module, "render", "sampler", "steps", "seeds")
    generate(_config(tmp_path, model=str(sd1_dir), batch_size=8, x="sampler=euler,euler_a", y="seed=1,2",
                     z="steps=1,2"), model=fresh_model(sd1_dir), progress=False)
    assert calls == [("euler", 1, [1, 2]), ("euler_a", 1, [1, 2]), ("euler", 2, [1, 2]), ("euler_a", 2, [1, 2])]


@pytest.mark.parametrize("settings, groups", [
    ({"x": "prompt-sr=dog,cat", "y": "seed=1,2"}, [[0, 1, 2, 3]]),
    ({"x": "guidance=3,7", "y": "prompt-sr=dog,cat"}, [[0, 2], [1, 3]]),
    ({"x": "sampler=euler,euler_a", "y": "steps=1,2"}, [[0], [1], [2], [3]]),
    ({"x": "var-seed=1,2", "y": "seed=1,2", "variation_strength": 0.5}, [[0, 1, 2, 3]]),
    ({"x": "var-strength=0.2,0.4", "variation_seed": 3}, [[0], [1]]),
    ({"x": "prompt-sr=dog,cat", "hires_scale": 1.5, "hires_prompt": "a sharp dog"}, [[0], [1]]),  # (one hires prompt)
])
def test_only_cells_alike_but_for_their_prompts_and_seeds_are_drawn_together(tmp_path, no_model, settings, groups):
    """What a pipeline call mixes, each picture drawn as alone: the prompts, negative prompt, seed and variation
    seed; the hires fix's prompt is the run's."""
    ready = xyz.plan(_config(tmp_path, **settings).validate())
    assert xyz._groups(ready, list(range(len(ready.cells)))) == groups


def test_cells_drawn_apart_whose_embeddings_size_them_by_their_words(tmp_path, no_model):
    """A prompt writing an embedding trained at 16x32 draws at that size where none is given
    (`generate._trained_size_given`): its cells are drawn apart from those of other words; a size given draws
    every cell at it, and they are drawn together."""
    emb = save_embedding(LearnedEmbedding("<q>", {"text_encoder": torch.randn(1, 32)}, {"resolution": "16x32"}),
                         tmp_path / "q.safetensors")[0]
    settings = dict(prompt=["a photo of <q>"], embedding=[str(emb)], x="prompt-sr=<q>,dog")
    assert xyz._groups(xyz.plan(_config(tmp_path, **settings).validate()), [0, 1]) == [[0], [1]]
    assert xyz._groups(xyz.plan(_config(tmp_path, width=16, **settings).validate()), [0, 1]) == [[0, 1]]


def test_runs_that_differ_in_more_than_their_prompts_and_seeds_are_refused_together(tmp_path, no_model):
    with pytest.raises(ConfigError, match=r"differ in their prompts, negative prompts and seeds alone"):
        generate_module.generate_together([_config(tmp_path), _config(tmp_path, steps=3)])


def test_cells_drawn_together_are_named_as_drawn_one_after_the_other(sd1_dir, tmp_path):
    """Cells of the same files' names (a Prompt S/R of the negative prompt's words) take the suffixes they took
    drawn one by one in the web UI's order, though the cells of each steps value are drawn together."""
    paths = generate(_config(tmp_path, model=str(sd1_dir), negative_prompt="blurry", x="steps=1,2",
                             y="prompt-sr=blurry,sharp"), model=fresh_model(sd1_dir), progress=False)
    assert [p.name for p in paths[1:]] == ["000-a-photo-of-dog-s0.png", "000-a-photo-of-dog-s0-2.png",
                                           "000-a-photo-of-dog-s0-3.png", "000-a-photo-of-dog-s0-4.png"]
    assert [(Image.open(p).text["steps"], Image.open(p).text["negative_prompt"]) for p in paths[1:]] == [
        ("1", "blurry"), ("2", "blurry"), ("1", "sharp"), ("2", "sharp")]


def test_a_ctrl_c_in_cells_drawn_together_names_them(sd1_dir, tmp_path, monkeypatch, capsys):
    from conftest import interrupted_at

    interrupted_at(monkeypatch, generate_module, "_draw_batch", 2)
    out = tmp_path / "r"
    assert main(["generate", "--model", str(sd1_dir), "--prompt", "a dog", "-n", "1", "--steps", "1", "--width", "16",
                 "--batch-size", "1", "--out", str(out), "--x", "prompt-sr=dog,cat"]) == 130
    assert ("interrupted: in the X/Y/Z plot's cells 1 and 2 of 2, drawn together (--x prompt-sr=dog; --x "
            f"prompt-sr=cat), where 1 of 2 pictures had been written to {out}, each whole; the 0 cells before them "
            f"are written in {out}, with no grid") in capsys.readouterr().err
