"""--optimizer, --optimizer-args and the schedules kohya's configs name: the default run as it always was, each
optimizer's run resumed exactly, kohya's names and arguments taken, and what cannot work refused before any step."""

import importlib.util
import sys
import types
import warnings

import pytest
import torch
from diffusers.optimization import get_scheduler

from textinv import optimizers
from textinv import train as train_module
from textinv.cli import main
from textinv.config import TrainConfig, build, config_file_settings
from textinv.errors import ConfigError
from textinv.optimizers import _clip_rows, _step_skipping_overflows, make_optimizer, parse_optimizer_args
from textinv.train import TrainingInterrupted, train
from conftest import fresh_model, recorded_rates, train_config


config = train_config  # (a short run's settings, `kw` over them)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def vectors(result):
    return result.embedding.vectors["text_encoder"]


def test_the_default_run_is_todays_adamw_bit_for_bit(sd1_dir, images, tmp_path, monkeypatch):
    """--optimizer adamw, the default, builds torch's AdamW with the rate and weight decay alone, as train did before
    the flag: the same vectors and losses as that line, and a kohya AdamW8bit config trains the same run."""
    default = train(config(images, tmp_path / "a"), model=fresh_model(sd1_dir), progress=False)
    with pytest.warns(UserWarning, match=r"--optimizer AdamW8bit: taken as adamw; 8-bit and paged optimizers save "
                                         r"memory on billions of weights"):
        eight_bit = train(config(images, tmp_path / "b", optimizer="AdamW8bit"), model=fresh_model(sd1_dir),
                          progress=False)
    built = []
    monkeypatch.setattr(train_module, "make_optimizer", lambda name, params, lr, weight_decay, args, **_: built.append(
        name) or torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))  # (the line train had)
    before = train(config(images, tmp_path / "c"), model=fresh_model(sd1_dir), progress=False)
    assert built == ["adamw"]
    for other in (eight_bit, before):
        assert torch.equal(vectors(default), vectors(other)) and default.losses == other.losses
    p = torch.zeros(2, 3, requires_grad=True)
    assert type(make_optimizer("adamw", [p], 0.1, 0.01)) is torch.optim.AdamW
    assert make_optimizer("adamw", [p], 0.1, 0.01).state_dict() == \
        torch.optim.AdamW([p], lr=0.1, weight_decay=0.01).state_dict()


@pytest.mark.parametrize("optimizer, schedule", [
    ("adafactor", dict(lr_schedule="cosine_with_restarts", lr_cycles=2, warmup_steps=1)),
    ("SGDNesterov", dict(lr_schedule="polynomial", lr_power=2.0)),
    pytest.param("AdamWScheduleFree", dict(lr_schedule="constant_with_warmup", warmup_steps=2, save_every=2),
                 marks=pytest.mark.skipif(not _has("schedulefree"), reason="needs schedulefree")),
    pytest.param("Lion", dict(lr_schedule="linear", lr=1e-3),
                 marks=pytest.mark.skipif(not _has("lion_pytorch"), reason="needs lion-pytorch")),
    pytest.param("Prodigy", dict(lr_schedule="constant", lr=1.0),
                 marks=pytest.mark.skipif(not _has("prodigyopt"), reason="needs prodigyopt")),
    pytest.param("DAdaptAdam", dict(lr_schedule="cosine"),
                 marks=[pytest.mark.skipif(not _has("dadaptation"), reason="needs dadaptation"),
                        pytest.mark.filterwarnings("ignore:--optimizer dadapt-adam estimates")]),
])
def test_each_optimizer_resumes_to_the_uninterrupted_run_bit_for_bit(optimizer, schedule, sd1_dir, images, tmp_path,
                                                                      monkeypatch):
    """The optimizer's state (Adafactor's factored moments and step count, SGD's momentum, the schedule-free
    iterate z and step count beside the point y it steps from, D-Adaptation's and Prodigy's estimate d and its sums,
    Lion's momentum) and kohya's schedules are in each checkpoint: a run
    stopped (Ctrl-C) after step 4 and resumed ends where the uninterrupted one does."""
    from conftest import interrupt_loss_at

    settings = dict(steps=8, optimizer=optimizer, **schedule)
    straight = train(config(images, tmp_path / "a", **settings), model=fresh_model(sd1_dir), progress=False)
    undo = interrupt_loss_at(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted) as info:
        train(config(images, tmp_path / "b", **settings), model=fresh_model(sd1_dir), progress=False)
    assert info.value.step == 4
    undo()
    resumed = train(config(images, tmp_path / "b", **settings, resume=True), model=fresh_model(sd1_dir),
                    progress=False)
    assert torch.equal(vectors(resumed), vectors(straight)) and resumed.losses == straight.losses
    adamw = train(config(images, tmp_path / "c", steps=8, **schedule), model=fresh_model(sd1_dir), progress=False)
    assert not torch.equal(vectors(straight), vectors(adamw))  # (the optimizer asked for is the one that ran)


def test_a_resume_with_another_optimizer_or_its_args_is_refused(sd1_dir, images, tmp_path):
    train(config(images, tmp_path / "b", steps=2, save_every=2, optimizer="sgd"), model=fresh_model(sd1_dir),
          progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .* \(optimizer: 'sgd' -> 'adamw'\)"):
        train(config(images, tmp_path / "b", steps=4, resume=True), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match=r"optimizer_args: \[\] -> \['momentum=0.5'\]"):
        train(config(images, tmp_path / "b", steps=4, resume=True, optimizer="sgd", optimizer_args=["momentum=0.5"]),
              model=fresh_model(sd1_dir), progress=False)


@pytest.mark.parametrize("schedule, shape", [("cosine_with_restarts", dict(num_cycles=3)),
                                             ("polynomial", dict(power=3.0))])
def test_kohyas_schedules_give_diffusers_rates_with_their_cycles_and_power(schedule, shape, sd1_dir, images,
                                                                            tmp_path, monkeypatch):
    seen = recorded_rates(monkeypatch)
    flag = {"num_cycles": "lr_cycles", "power": "lr_power"}
    train(config(images, tmp_path / "a", steps=9, warmup_steps=2, lr_schedule=schedule,
                 **{flag[k]: v for k, v in shape.items()}), model=fresh_model(sd1_dir), progress=False)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-2)
    lr_schedule = get_scheduler(schedule, reference, num_warmup_steps=2, num_training_steps=9, **shape)
    assert seen == [5e-2 * lr_schedule.lr_lambdas[0](s) for s in range(9)]  # (LambdaLR's own expression)
    plain = get_scheduler(schedule, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=5e-2),
                          num_warmup_steps=2, num_training_steps=9)
    assert [plain.lr_lambdas[0](s) for s in range(9)] != [lr_schedule.lr_lambdas[0](s) for s in range(9)]


def test_kohyas_optimizer_args_are_read_as_kohya_reads_them():
    assert parse_optimizer_args(["betas=0.9,0.99", "eps=1e-6", "d_coef=2", "use_bias_correction=True",
                                 "safeguard_warmup=false", "betas2=[0.9, 0.999]"]) == {
        "betas": (0.9, 0.99), "eps": 1e-6, "d_coef": 2, "use_bias_correction": True, "safeguard_warmup": False,
        "betas2": (0.9, 0.999)}
    p = torch.zeros(2, 3, requires_grad=True)
    adamw = make_optimizer("adamw", [p], 0.1, 0.0, ["betas=0.9,0.99", "eps=1e-6"])
    assert adamw.defaults["betas"] == (0.9, 0.99) and adamw.defaults["eps"] == 1e-6
    sgd = make_optimizer("sgd", [p], 0.1, 0.0)  # (kohya's SGDNesterov: momentum 0.9 unless given)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adafactor = make_optimizer("adafactor", [p], 0.1, 0.0, ["clip_threshold=2.0"])
    assert adafactor.defaults["lr"] == 0.1 and not adafactor.defaults["relative_step"]
    assert adafactor.defaults["clip_threshold"] == 2.0


@pytest.mark.parametrize("settings, said", [
    (dict(optimizer="adafactor", optimizer_args=["betas=0.9,0.99"]),
     r"optimizer_args='betas=\.\.\.': transformers.optimization.Adafactor \(optimizer='adafactor'\) takes no betas; "
     r"its arguments are: eps, clip_threshold, decay_rate, beta1, scale_parameter, relative_step, warmup_init$"),
    (dict(optimizer_args=["weight_decay=0.1"]), r"weight_decay=\.\.\.': give it as weight_decay="),
    (dict(optimizer_args=["betas"]), r"optimizer_args='betas' is not KEY=VALUE"),
    (dict(optimizer="sgd", optimizer_args=["momentum=0"]), r"optimizer='sgd' with optimizer_args='momentum=0': SGD "
                                                           r"says: Nesterov momentum requires a momentum"),
    (dict(optimizer="adafactor", optimizer_args=["relative_step=True"]), r"Adafactor would then set its own rate"),
    (dict(optimizer="CAME"), r"optimizer='CAME' is not one of: adamw, lion, prodigy, adafactor, sgd"),
    (dict(optimizer="sgd", reference_like=True), r"reference_like= does what the diffusers example does, .* its "
                                                 r"optimizer is AdamW"),
    (dict(lr_cycles=2), r"lr_cycles=2 shapes lr_schedule='cosine_with_restarts', and the schedule is constant"),
    (dict(lr_schedule="cosine", lr_power=2.0), r"lr_power=2.0 shapes lr_schedule='polynomial'"),
    (dict(lr_schedule="cosine_with_restarts", lr_cycles=0), r"lr_cycles= must be a whole number >= 1"),
    (dict(lr_schedule="polynomial", lr=1e-8), r"decays lr= to 1e-7, and lr= is 1e-08"),
])
def test_what_an_optimizer_or_schedule_cannot_take_is_refused_before_anything_loads(settings, said, tmp_path):
    with pytest.raises(ConfigError, match=said):
        config(tmp_path / "nowhere", tmp_path / "o", **settings).validate()


@pytest.mark.parametrize("name, package", [("lion", "lion-pytorch"), ("Prodigy", "prodigyopt")])
def test_an_optimizer_whose_package_is_missing_is_refused_naming_the_pip_command(name, package, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, package.replace("-", "_"), None)  # (missing, even where it is installed)
    with pytest.raises(ConfigError, match=rf"optimizer='{name.lower()}' needs the {package} package .*: pip "
                                          rf"install {package}, or choose another optimizer="):
        config(tmp_path / "nowhere", tmp_path / "o", optimizer=name).validate()


def _fake_package(monkeypatch, module: str, cls: str, **own):
    """A stand-in for a package that is not installed here: an optimizer class of its name and arguments (SGD's
    step underneath, so a run goes on), recording what it was built with."""
    built = []

    def __init__(self, params, lr=1e-4, weight_decay=0.0, **kwargs):
        unknown = set(kwargs) - set(own)
        if unknown:
            raise TypeError(f"unexpected {unknown}")
        built.append(dict(lr=lr, weight_decay=weight_decay, **kwargs))
        torch.optim.SGD.__init__(self, params, lr=lr, weight_decay=weight_decay)

    import inspect
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
              for n, d in [("self", inspect.Parameter.empty), ("params", inspect.Parameter.empty), ("lr", 1e-4),
                           ("weight_decay", 0.0), *own.items()]]
    __init__.__signature__ = inspect.Signature(params)
    fake = types.ModuleType(module)
    setattr(fake, cls, type(cls, (torch.optim.SGD,), {"__init__": __init__}))
    monkeypatch.setitem(sys.modules, module, fake)
    return built


def test_lion_and_prodigy_are_built_from_their_packages_with_kohyas_args(sd1_dir, images, tmp_path, monkeypatch):
    lion = _fake_package(monkeypatch, "lion_pytorch", "Lion", betas=(0.9, 0.99), use_triton=False)
    result = train(config(images, tmp_path / "a", steps=2, optimizer="Lion", optimizer_args=["betas=0.95,0.98"],
                          weight_decay=0.1, lr=1e-4), model=fresh_model(sd1_dir), progress=False)
    assert result.steps == 2
    assert lion[-1] == dict(lr=1e-4, weight_decay=0.1, betas=(0.95, 0.98))  # (the run's own; a stand-in's first)
    prodigy = _fake_package(monkeypatch, "prodigyopt", "Prodigy", d_coef=1.0, use_bias_correction=False)
    with pytest.warns(UserWarning, match=r"--optimizer prodigy .* meant to run at --lr 1.0"):
        config(images, tmp_path / "b", optimizer="prodigy", lr=0.5).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (at --lr 1.0, nothing to say)
        config(images, tmp_path / "b", optimizer="prodigy", lr=1.0, optimizer_args=["d_coef=2"]).validate()
    assert prodigy[-1] == dict(lr=1.0, weight_decay=0.01, d_coef=2)
    with pytest.raises(ConfigError, match=r"prodigyopt.Prodigy \(optimizer='prodigy'\) takes no betas; its "
                                          r"arguments are: d_coef, use_bias_correction$"):
        config(images, tmp_path / "b", optimizer="prodigy", lr=1.0, optimizer_args=["betas=0.9,0.99"]).validate()


@pytest.mark.parametrize("name", ["adafactor", "prodigy"])
def test_an_optimizer_that_mixes_the_concepts_rows_is_refused_with_several_concepts(name, tmp_path, monkeypatch):
    _fake_package(monkeypatch, "prodigyopt", "Prodigy")
    with pytest.raises(ConfigError, match=rf"optimizer='{name}' with several concepts=: .* so a concept would not "
                                          rf"learn what its own run learns"):
        TrainConfig(concepts=["a=<a>", "b=<b>"], out=str(tmp_path / "o"), optimizer=name, lr=1.0).validate()
    TrainConfig(concepts=["a=<a>", "b=<b>"], out=str(tmp_path / "o"), optimizer="sgd").validate()


def test_clipping_scales_the_given_rows_of_every_encoder_by_one_factor_to_the_norm_and_leaves_the_rest():
    """--max-grad-norm clips each concept's rows on their own, their norm taken over all encoders together (a run of
    that concept alone clips the same numbers). Nothing else checked that the clip happened: every run that clips
    compared it with another run that clips."""
    first, second = torch.full((4, 3), 2.0), torch.full((4, 2), 2.0)  # rows 0-1: a norm of sqrt(10 x 4)
    _clip_rows([(first, slice(0, 2)), (second, slice(0, 2))], 1.0)
    torch.testing.assert_close(first[:2], torch.full((2, 3), 2.0 / 40 ** 0.5))
    torch.testing.assert_close(second[:2], torch.full((2, 2), 2.0 / 40 ** 0.5))
    assert first[2:].eq(2.0).all() and second[2:].eq(2.0).all()  # (another concept's rows)
    small = torch.full((2, 3), 0.01)  # under the norm: left as it is
    _clip_rows([(small, slice(None))], 1.0)
    assert small.eq(0.01).all()


def test_a_concept_that_skipped_an_fp16_step_alone_goes_on_as_its_own_sgd_run():
    """Several concepts in fp16: a concept whose gradients overflow alone keeps its vectors and momentum, and goes on
    as its own run, where GradScaler skips the whole step. The Adam step-count correction is AdamW's alone (it read
    AdamW's betas from SGD's settings)."""
    from types import SimpleNamespace

    def setup():
        encoders = [SimpleNamespace(vectors=torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator()
                                                                           .manual_seed(i)))) for i in range(2)]
        optimizer = make_optimizer("sgd", [e.vectors for e in encoders], 0.1, 0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(torch.ones(()))
        return encoders, optimizer, scaler

    rows = [[slice(0, 2)] * 2, [slice(2, 4)] * 2]  # concept A: rows 0-1 of both encoders; B: rows 2-3

    def run(overflows, skipped):
        encoders, optimizer, scaler = setup()
        for k, overflow in enumerate(overflows):
            for i, e in enumerate(encoders):
                e.vectors.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * k + i)) * \
                    scaler.get_scale()
                if overflow is not None:
                    e.vectors.grad[overflow] = float("inf")
            scaler.unscale_(optimizer)
            _step_skipping_overflows(scaler, optimizer, encoders, rows, skipped)
        return encoders

    skipped = [0, 0]
    joint = run([None, slice(0, 2), None, None], skipped)  # A overflows alone at the second step
    assert skipped == [1, 0]
    own = run([None, slice(None), None, None], [0, 0])  # A's own run: that step skipped whole
    other = run([None] * 4, [0, 0])  # B's own run
    for e, mine, theirs in zip(joint, own, other):
        assert torch.equal(e.vectors[:2], mine.vectors[:2]) and torch.equal(e.vectors[2:], theirs.vectors[2:])


def test_a_config_file_with_kohyas_optimizer_and_schedule_loads_and_kohyas_keys_are_answered(tmp_path, capsys):
    cfg = tmp_path / "kohya.toml"
    cfg.write_text('token = "<t>"\nimages = "pics"\noptimizer = "AdaFactor"\n'
                   'optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]\n'
                   'lr_schedule = "cosine_with_restarts"\nlr_cycles = 3\nlr = 1e-3\n')
    settings = config_file_settings(TrainConfig, cfg)
    loaded = build(TrainConfig, settings, {"out": str(tmp_path / "o")}).validate()
    assert (loaded.optimizer, loaded.lr_schedule, loaded.lr_cycles) == ("adafactor", "cosine_with_restarts", 3)
    assert loaded.optimizer_args == ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
    cfg.write_text('optimizer_type = "AdamW8bit"\nlr_scheduler_num_cycles = 3\nlr_scheduler_power = 2\n')
    with pytest.raises(ConfigError, match=r"(?s)'optimizer_type': that is kohya's name; textinv calls it "
                                          r"'optimizer' .*'lr_scheduler_num_cycles': .* textinv calls it 'lr_cycles' .*"
                                          r"'lr_scheduler_power': .* textinv calls it 'lr_power'"):
        config_file_settings(TrainConfig, cfg)
    with pytest.raises(SystemExit):
        main(["train", "--optimizer_args", "betas=0.9,0.99"])
    assert "--optimizer_args is kohya's name; textinv calls it --optimizer-args" in capsys.readouterr().err


def test_the_command_line_takes_kohyas_optimizer_names_and_args(sd1_dir, images, tmp_path):
    out = tmp_path / "o"
    with pytest.warns(UserWarning, match="--optimizer PagedAdamW8bit: taken as adamw"):
        assert main(["train", "--model", str(sd1_dir), "--images", str(images), "--token", "<t>", "--init", "dog",
                     "--out", str(out), "--steps", "2", "--batch", "1", "--save-every", "0", "--sample-every", "0",
                     "--optimizer", "PagedAdamW8bit", "--optimizer-args", "betas=0.9,0.99", "eps=1e-6",
                     "--lr-schedule", "polynomial", "--lr-power", "2"]) == 0
    import yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optimizer"] == "adamw" and saved["optimizer_args"] == ["betas=(0.9, 0.99)", "eps=1e-06"]
    assert saved["lr_power"] == 2.0
    assert optimizers.memory_saver_note("adamw") is None


@pytest.mark.parametrize("name, args, first", [("sgd", [], 0), ("adamw", ["amsgrad=True", "betas=0.9,0.5"], 1),
                                               ("lion", [], 0)])
def test_a_concept_that_skipped_an_fp16_step_alone_goes_on_as_its_own_run(name, args, first):
    """As above, for the overflow at the first step (no state yet: SGD's momentum buffer, made then, held the weight
    decay of the rows put back) and for AdamW's amsgrad (its step divides by the running maximum of the second
    moment, not by the moment)."""
    from types import SimpleNamespace

    if name == "lion":
        pytest.importorskip("lion_pytorch")

    def run(overflows, skipped):
        encoders = [SimpleNamespace(vectors=torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator()
                                                                           .manual_seed(i)))) for i in range(2)]
        optimizer = make_optimizer(name, [e.vectors for e in encoders], 0.1, 0.01, args)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(torch.ones(()))
        for k, overflow in enumerate(overflows):
            for i, e in enumerate(encoders):
                e.vectors.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 * k + i)) * \
                    scaler.get_scale() * 10.0 ** -k  # (falling: amsgrad's maximum is an earlier moment)
                if overflow is not None:
                    e.vectors.grad[overflow] = float("inf")
            scaler.unscale_(optimizer)
            _step_skipping_overflows(scaler, optimizer, encoders, [[slice(0, 2)] * 2, [slice(2, 4)] * 2], skipped)
        return encoders

    overflows = [None] * 4
    overflows[first] = slice(0, 2)  # concept A (rows 0-1) overflows alone
    joint = run(overflows, [0, 0])
    overflows[first] = slice(None)
    own = run(overflows, [0, 0])  # A's own run: that step skipped whole
    other = run([None] * 4, [0, 0])  # B's own run
    for e, mine, theirs in zip(joint, own, other):
        torch.testing.assert_close(e.vectors[:2], mine.vectors[:2])
        torch.testing.assert_close(e.vectors[2:], theirs.vectors[2:])


def test_optimizer_args_are_recorded_one_way_so_a_resume_with_another_spelling_goes_on(images, tmp_path):
    """kohya's betas=0.9,0.99 and a config file's betas=0.9, 0.99 are the same arguments: recorded alike, so a resume
    given either spelling is the same run, not refused as a changed setting."""
    first = config(images, tmp_path / "a", optimizer_args=["betas=0.9,0.99"]).validate()
    second = config(images, tmp_path / "a", optimizer_args=["betas=0.9, 0.99"]).validate()
    assert first.optimizer_args == second.optimizer_args == ["betas=(0.9, 0.99)"]


# --- schedule-free (Defazio et al. 2024) -----------------------------------------------------------------------------

@pytest.mark.parametrize("kohya, ours, cls", [("AdamWScheduleFree", "adamw-schedulefree", "AdamWScheduleFree"),
                                              ("SGDScheduleFree", "sgd-schedulefree", "SGDScheduleFree"),
                                              ("RAdamScheduleFree", "radam-schedulefree", "RAdamScheduleFree")])
def test_kohyas_schedule_free_names_build_the_packages_optimizers_in_training_mode(kohya, ours, cls, images,
                                                                                 tmp_path):
    schedulefree = pytest.importorskip("schedulefree")
    warm = dict(lr_schedule="constant_with_warmup", warmup_steps=3) if ours != "radam-schedulefree" else {}
    args = ["momentum=0.8"] if ours == "sgd-schedulefree" else ["betas=0.95,0.99"]
    checked = config(images, tmp_path / "o", optimizer=kohya, optimizer_args=args, **warm).validate()
    assert checked.optimizer == ours
    p = torch.zeros(2, 4, requires_grad=True)
    built = make_optimizer(ours, [p], 0.01, 0.02, checked.optimizer_args, warmup_steps=checked.warmup_steps)
    assert type(built) is getattr(schedulefree, cls)
    group = built.param_groups[0]
    assert group["train_mode"] and (group["lr"], group["weight_decay"]) == (0.01, 0.02)  # (it steps as it is)
    assert group.get("warmup_steps", 0) == warm.get("warmup_steps", 0)
    assert group.get("momentum", group.get("betas")) == (0.8 if ours == "sgd-schedulefree" else (0.95, 0.99))


@pytest.mark.parametrize("settings, said", [
    (dict(lr_schedule="cosine"), r"optimizer='adamw-schedulefree' with lr_schedule='cosine': a schedule-free "
                                 r"optimizer needs no rate schedule .* leave lr_schedule='constant'"),
    (dict(lr_steps="0.05:2, 0.01", lr=TrainConfig.lr), r"with lr_steps=: a schedule-free optimizer needs no rate"),
    (dict(optimizer_args=["warmup_steps=10"]), r"warmup_steps=\.\.\.': give it as warmup_steps="),
    (dict(optimizer="RAdamScheduleFree", lr_schedule="constant_with_warmup", warmup_steps=5),
     r"radam-schedulefree' with warmup_steps=: RAdam's rectification is its warm-up"),
])
def test_a_schedule_for_a_schedule_free_optimizer_is_refused_naming_the_fix(settings, said, tmp_path):
    pytest.importorskip("schedulefree")
    with pytest.raises(ConfigError, match=said):
        config(tmp_path / "nowhere", tmp_path / "o", **{"optimizer": "adamw-schedulefree", **settings}).validate()


def test_schedule_free_is_refused_without_its_package_naming_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    with pytest.raises(ConfigError, match=r"optimizer='sgd-schedulefree' needs the schedulefree package .*: pip "
                                          r"install schedulefree"):
        config(tmp_path / "nowhere", tmp_path / "o", optimizer="SGDScheduleFree").validate()


def _average(path, schedulefree):
    """The schedule-free average x of a checkpoint: its vectors (the point y it steps from) moved by the package's
    own eval()."""
    state = torch.load(path, weights_only=False)
    y = [v.clone().requires_grad_(True) for v in state["vectors"]]
    optimizer = schedulefree.AdamWScheduleFree(y, lr=1.0)
    optimizer.load_state_dict(state["optimizer"])
    optimizer.eval()
    return [v.detach() for v in y]


def test_schedule_free_saves_samples_and_scores_its_average_and_trains_only_the_new_rows(sd1_dir, images, tmp_path,
                                                                                         monkeypatch):
    """The files, the grids and the validation loss see the optimizer's average x (its eval mode), the checkpoint
    the point y it steps from (to go on exactly); the token's rows move and no other row of the table does."""
    schedulefree = pytest.importorskip("schedulefree")
    from textinv.formats import load_embedding

    seen = []

    def grid(model, *a, **k):  # (what the sampler would draw with: the row the prompt's token reads)
        seen.append(("grid", learned_rows()))
        return real_grid(model, *a, **k)

    def scored(*a, **k):  # (what the validation loss is of)
        seen.append(("loss", learned_rows()))
        return real_loss(*a, **k)

    def learned_rows():
        return model.encoders[0][2].get_input_embeddings().vectors.detach().clone()

    real_grid, real_loss = train_module.sample_grid, train_module.validation_loss
    monkeypatch.setattr(train_module, "sample_grid", grid)
    monkeypatch.setattr(train_module, "validation_loss", scored)
    model = fresh_model(sd1_dir)
    table = model.encoders[0][2].get_input_embeddings().weight.detach().clone()
    out = tmp_path / "o"
    result = train(config(images, out, steps=4, save_every=2, sample_every=2, sample_steps=1, step_embeddings=True,
                          validation_split=0.25, validate_every=2, optimizer="adamw-schedulefree",
                          lr_schedule="constant_with_warmup", warmup_steps=2), model=model, progress=False)
    at_2 = load_embedding(next((out / "embeddings").glob("*2.*"))).vectors["text_encoder"]
    average = _average(out / "checkpoints" / "step-000002.pt", schedulefree)[0]
    y = torch.load(out / "checkpoints" / "step-000002.pt", weights_only=False)["vectors"][0]
    assert torch.equal(at_2, average[-1:]) and not torch.equal(at_2, y[-1:])
    # (steps 0, 2 and 4: each scored, then drawn)
    assert [what for what, _ in seen] == ["loss", "grid"] * 3
    assert torch.equal(seen[2][1], average) and torch.equal(seen[3][1], average)
    final = _average(out / "checkpoints" / "step-000004.pt", schedulefree)[0]
    assert torch.equal(vectors(result), final[-1:])
    assert torch.equal(seen[4][1], final) and torch.equal(seen[5][1], final)
    assert not torch.equal(vectors(result), seen[0][1][-1:])  # (learned)
    after = model.encoders[0][2].get_input_embeddings().weight.detach()
    assert torch.equal(after[:len(table)], table)  # (every other row as it was)


def test_a_schedule_free_run_that_saves_and_scores_goes_on_as_one_that_does_not(sd1_dir, images, tmp_path):
    """Saving, sampling or scoring moves the vectors to the average and back: bit for bit back (the package's
    train() alone would be off by a rounding), so a run that saves every step ends where one that never saves does."""
    pytest.importorskip("schedulefree")
    settings = dict(steps=6, optimizer="adamw-schedulefree", validation_split=0.25)  # (the same pictures trained)
    quiet = train(config(images, tmp_path / "a", validate_every=6, **settings), model=fresh_model(sd1_dir),
                  progress=False)
    busy = train(config(images, tmp_path / "b", save_every=1, validate_every=1, **settings), model=fresh_model(sd1_dir),
                 progress=False)
    assert torch.equal(vectors(quiet), vectors(busy)) and quiet.losses == busy.losses


# --- D-Adaptation (Defazio & Mishchenko 2023) ------------------------------------------------------------------------

DADAPT_NAMES = [("DAdaptation", "dadapt-adam-preprint", "DAdaptAdamPreprint", ["decouple=True"]),
                ("DAdaptAdamPreprint", "dadapt-adam-preprint", "DAdaptAdamPreprint", ["betas=0.9,0.99"]),
                ("DAdaptAdaGrad", "dadapt-adagrad", "DAdaptAdaGrad", ["momentum=0.5"]),
                ("DAdaptAdam", "dadapt-adam", "DAdaptAdam", ["decouple=True", "use_bias_correction=True"]),
                ("DAdaptAdan", "dadapt-adan", "DAdaptAdan", ["betas=0.98,0.92,0.99", "no_prox=True"]),
                ("DAdaptAdanIP", "dadapt-adan-ip", "DAdaptAdanIP", ["no_prox=True"]),
                ("DAdaptLion", "dadapt-lion", "DAdaptLion", ["betas=0.95,0.98"]),
                ("DAdaptSGD", "dadapt-sgd", "DAdaptSGD", ["momentum=0.9", "growth_rate=1.02"])]


@pytest.mark.parametrize("kohya, ours, cls, args", DADAPT_NAMES)
def test_kohyas_dadaptation_names_build_the_packages_optimizers_with_their_args(kohya, ours, cls, args, images,
                                                                                tmp_path):
    """Each of kohya's DAdapt names is the class kohya's scripts build (DAdaptation: the preprint's Adam), with
    kohya's optimizer_args; run at --lr 1.0 (nothing said), they train the token's rows and no other."""
    dadaptation = pytest.importorskip("dadaptation")
    import dadaptation.experimental

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (at --lr 1.0, nothing to say)
        checked = config(images, tmp_path / "o", optimizer=kohya, optimizer_args=args, lr=1.0).validate()
    assert checked.optimizer == ours
    p = torch.zeros(2, 4, requires_grad=True)
    built = make_optimizer(ours, [p], 1.0, 0.02, checked.optimizer_args)
    assert type(built) is (getattr(dadaptation, cls, None) or getattr(dadaptation.experimental, cls))
    group = built.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (1.0, 0.02)
    assert all(group[key] == value for key, value in parse_optimizer_args(args).items())


@pytest.mark.parametrize("kohya", ["DAdaptAdam", "DAdaptLion", "DAdaptSGD"])
def test_a_dadaptation_run_moves_the_tokens_rows_and_no_other(kohya, sd1_dir, images, tmp_path):
    pytest.importorskip("dadaptation")
    model = fresh_model(sd1_dir)
    table = model.encoders[0][2].get_input_embeddings().weight.detach().clone()
    init = table[model.encoders[0][1].convert_tokens_to_ids("dog")]
    result = train(config(images, tmp_path / "o", steps=4, optimizer=kohya, lr=1.0), model=model, progress=False)
    assert not torch.equal(vectors(result)[0], init) and torch.isfinite(vectors(result)).all()
    after = model.encoders[0][2].get_input_embeddings().weight.detach()
    assert torch.equal(after[:len(table)], table)


def test_dadaptation_is_refused_without_its_package_at_another_rate_said_and_with_several_concepts(tmp_path,
                                                                                                  monkeypatch):
    pytest.importorskip("dadaptation")
    with pytest.warns(UserWarning, match=r"--optimizer dadapt-lion estimates its own step size and is meant to run "
                                         r"at --lr 1.0 .*; --lr 0.05 scales that estimate by 0.05"):
        config(tmp_path / "nowhere", tmp_path / "o", optimizer="DAdaptLion", lr=0.05).validate()
    with pytest.raises(ConfigError, match=r"optimizer_args='lr=\.\.\.': give it as lr= \(for prodigy and the dadapt "
                                          r"ones, lr=1.0"):
        config(tmp_path / "nowhere", tmp_path / "o", optimizer="DAdaptAdam", optimizer_args=["lr=1.0"]).validate()
    with pytest.raises(ConfigError, match=r"optimizer='dadapt-adam' with several concepts=: D-Adaptation estimates "
                                          r"one step size from all the vectors at once"):
        TrainConfig(concepts=["a=<a>", "b=<b>"], out=str(tmp_path / "o"), optimizer="DAdaptAdam", lr=1.0).validate()
    monkeypatch.setitem(sys.modules, "dadaptation", None)
    monkeypatch.setitem(sys.modules, "dadaptation.experimental", None)
    for name in ("DAdaptAdam", "DAdaptation"):
        with pytest.raises(ConfigError, match=r"needs the dadaptation package .*: pip install dadaptation"):
            config(tmp_path / "nowhere", tmp_path / "o", optimizer=name, lr=1.0).validate()


def test_evaluating_puts_the_point_it_steps_from_back_when_eval_itself_is_interrupted():
    """A Ctrl-C (or any error) inside the optimizer's own eval() left the vectors at the average and the optimizer
    in eval mode: the checkpoint saved on the way out then held the average as the point to step from, and the
    next step was refused (schedulefree steps only in training mode)."""
    schedulefree = pytest.importorskip("schedulefree")

    class Interrupted(schedulefree.AdamWScheduleFree):
        def eval(self):
            super().eval()  # (the vectors moved, the mode switched)
            raise KeyboardInterrupt

    p = torch.randn(2, 4, requires_grad=True)
    optimizer = Interrupted([p], lr=0.1)
    optimizer.train()
    p.grad = torch.ones_like(p)
    optimizer.step()
    y = p.detach().clone()
    with pytest.raises(KeyboardInterrupt):
        with optimizers.evaluating(optimizer):
            pass
    assert torch.equal(p.detach(), y) and optimizer.param_groups[0]["train_mode"]


def test_schedule_free_samples_an_installed_tokens_vectors_as_they_were(sd1_dir, images, tmp_path, monkeypatch):
    """A token installed before the run shares the trained tensor; its rows are put back after every step, but the
    schedule-free z kept its weight decay, so the average the grids are drawn with moved the installed token."""
    pytest.importorskip("schedulefree")
    from textinv.formats import LearnedEmbedding
    from textinv.generate import install_embedding

    model = fresh_model(sd1_dir)
    before = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    install_embedding(model, LearnedEmbedding("<had>", {"text_encoder": before.clone()}, {}))
    seen = []

    def grid(*a, **k):  # (the installed token's rows as the grid is drawn)
        seen.append(model.text_encoder.get_input_embeddings().vectors.detach()[:2].clone())
        return real_grid(*a, **k)

    real_grid = train_module.sample_grid
    monkeypatch.setattr(train_module, "sample_grid", grid)
    train(config(images, tmp_path / "out", steps=4, sample_every=2, sample_steps=1, weight_decay=0.5,
                 optimizer="adamw-schedulefree"), model=model, progress=False)
    assert len(seen) == 3 and all(torch.equal(rows, before) for rows in seen)
