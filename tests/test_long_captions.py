"""--max-token-length 150 | 225: training captions read past 75 tokens as kohya's scripts read them (75-token chunks,
each encoded on its own, their states laid end to end), on SD 1.x, 2.x and SDXL; the default 75 runs as it always
did."""

import pytest
import torch
import yaml

from textinv import batches, losses, train as train_module
from textinv.config import TrainConfig
from textinv.errors import ConfigError
from textinv.formats import load_embedding
from textinv.models import encode_text, load_model
from textinv.tiny import build_tiny_xl_pipeline
from textinv.tokens import base_embedding
from textinv.losses import encode_captions
from textinv.batches import long_caption_ids
from textinv.train import train

from test_train import config
from conftest import fresh_model


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-xl")
    build_tiny_xl_pipeline().save_pretrained(path)
    return path


def caption_all(images, text: str) -> None:
    """Give every picture in `images` the caption `text` ({} marks the token)."""
    for path in images.glob("*.png"):
        path.with_suffix(".txt").write_text(text)


def words(tokenizer, n: int) -> str:
    """`n` tokens of words the tiny tokenizer knows, each one token."""
    text = " ".join((["red", "dog"] * n)[:n])
    assert len(tokenizer(text, add_special_tokens=False).input_ids) == n
    return text


def chunks_by_hand(tokenizer, text: str, n: int) -> list[list[int]]:
    """kohya's chunks of one caption, written out from its rules: the caption's ids, padded or cut to 75n tokens,
    every 75 of them between the start id and the caption's last id (the end id after a full chunk, or before an
    empty one, where padding is not the end id)."""
    body = tokenizer(text, add_special_tokens=False).input_ids[:75 * n]
    end, pad, start = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    full = [start] + body + [end] + [pad] * (75 * n - len(body))  # (75n + 2 ids; a cut caption ends with its end)
    out = []
    for k in range(n):
        chunk = [start] + full[1 + 75 * k:76 + 75 * k] + [full[-1]]
        if pad != end:
            if chunk[-2] not in (end, pad):
                chunk[-1] = end
            if chunk[1] == pad:
                chunk[1] = end
        out.append(chunk)
    return out


@pytest.mark.parametrize("length", [150, 225])
@pytest.mark.parametrize("which", ["sd1", "xl-second"])  # (pads with its end id; pads with '!', as SD 2.x's)
def test_caption_ids_are_kohyas_chunks(which, length, sd1_dir, xl_dir):
    model = load_model(sd1_dir if which == "sd1" else xl_dir)
    tok = model.tokenizer if which == "sd1" else model.pipeline.tokenizer_2
    n = length // 75
    # short; exactly one chunk (its end id starts the next); over a chunk; past the whole window (cut)
    texts = ["a photo of a dog", words(tok, 75), words(tok, 100), words(tok, 240)]
    ids = long_caption_ids(tok, texts, length)
    assert ids.shape == (len(texts), n * 77)
    for row, text in zip(ids, texts):
        assert row.view(n, 77).tolist() == chunks_by_hand(tok, text, n), text
    if which == "xl-second":
        second = ids[0].view(n, 77)[1]  # (an empty chunk: <start> <end> <pad>...)
        assert second[:2].tolist() == [tok.bos_token_id, tok.eos_token_id] and (second[2:] == tok.pad_token_id).all()


def kohya_layout_by_hand(model, chunk_ids: list[torch.Tensor], n: int, clip_skip: int = 1):
    """The conditioning kohya lays out, built from `encode_text` on each chunk alone: the first chunk's start
    state, every chunk's 75 token states, the last chunk's last state; SDXL's pooled output, the first chunk's."""
    per_chunk = [encode_text(model, [ids.view(len(ids), n, 77)[:, k] for ids in chunk_ids], clip_skip)
                 for k in range(n)]
    hidden = torch.cat([per_chunk[0][0][:, :1]] + [h[:, 1:76] for h, _ in per_chunk] + [per_chunk[-1][0][:, 76:]],
                       dim=1)
    return hidden, per_chunk[0][1], per_chunk


@pytest.mark.parametrize("family, clip_skip, length", [("sd1", 1, 150), ("sd1", 2, 225), ("sd2", 1, 150),
                                                       ("sdxl", 1, 225)])
def test_the_conditioning_is_kohyas_layout(family, clip_skip, length, sd1_dir, sd2_dir, xl_dir):
    model = load_model({"sd1": sd1_dir, "sd2": sd2_dir, "sdxl": xl_dir}[family])
    n = length // 75
    texts = ["a photo of a dog", words(model.tokenizer, 90), words(model.tokenizer, 160)]
    ids = [long_caption_ids(tok, texts, length) for _, tok, _ in model.encoders]
    with torch.no_grad():
        hidden, pooled = encode_captions(model, ids, clip_skip)
        want, want_pooled, per_chunk = kohya_layout_by_hand(model, ids, n, clip_skip)
    assert hidden.shape == (3, 2 + 75 * n, sum(model.widths))
    torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-6)
    if family == "sdxl":  # the pooled output kohya takes: the first chunk's, read at its end token
        torch.testing.assert_close(pooled, want_pooled, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(pooled[1], per_chunk[1][1][1])  # (the second chunk's is another)
    else:
        assert pooled is None


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_default_reads_one_pass_of_77_as_always(family, sd1_dir, xl_dir, images, tmp_path, monkeypatch):
    """At --max-token-length 75 the conditioning is `encode_text` of the 77 ids, and a run is the run made with the
    feature's code left out: its chunked ids never built, its conditioning `encode_text`'s, bit for bit."""
    where = {"sd1": sd1_dir, "sdxl": xl_dir}[family]
    model = load_model(where)
    ids = [tok(["a photo of a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
           for _, tok, _ in model.encoders]
    with torch.no_grad():
        for mine, plain in zip(encode_captions(model, ids), encode_text(model, ids)):
            assert mine is plain or torch.equal(mine, plain)
    run = dict(steps=3, vectors=2)
    default = train(config(images, tmp_path / "a", **run), model=load_model(where), progress=False)
    assert "max_token_length" not in default.embedding.metadata  # (the file as it always was)
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["max_token_length"] == 75

    def absent(*a, **k):
        raise AssertionError("the long captions' code ran in a default run")

    monkeypatch.setattr(batches, "long_caption_ids", absent)  # (as `CaptionBank` looks it up)
    def plain(m, ids, clip_skip=1):
        return encode_text(m, ids, clip_skip)

    monkeypatch.setattr(losses, "encode_captions", plain)  # (as `diffusion_loss` looks it up)
    monkeypatch.setattr(train_module, "encode_captions", plain)  # (as `grouped_loss` does, with --buckets)
    without = train(config(images, tmp_path / "b", **run), model=load_model(where), progress=False)
    for name in default.embedding.vectors:
        assert torch.equal(default.embedding.vectors[name], without.embedding.vectors[name])
    assert default.losses == without.losses


@pytest.mark.parametrize("family_dir", ["sd1_dir", "xl_dir"])
def test_a_token_past_the_75th_token_trains_with_150_and_is_refused_at_75(family_dir, request, images, tmp_path):
    """Each picture's caption is 80 words and then the token: one pass of the text encoder cuts it (refused, as
    before, now naming --max-token-length 150), kohya's layout reads it, and its vectors learn."""
    where = request.getfixturevalue(family_dir)
    model = load_model(where)
    caption_all(images, words(model.tokenizer, 80) + " {}")
    with pytest.raises(ConfigError, match=r"reads the first 77, so it cuts the token's 2 vector.*"
                                          r"with --max-token-length 150 \(kohya's layout"):
        train(config(images, tmp_path / "a", steps=1, vectors=2), model=model, progress=False)
    model = load_model(where)
    starts = [base_embedding(te).weight[tok("dog", add_special_tokens=False).input_ids[0]].clone()
              for _, tok, te in model.encoders]
    result = train(config(images, tmp_path / "b", steps=3, vectors=2, max_token_length=150), model=model,
                   progress=False)
    for (name, _, _), start in zip(model.encoders, starts):
        for row in result.embedding.vectors[name]:  # (both vectors, in the second chunk)
            assert not torch.allclose(row, start), name
    assert result.embedding.metadata["max_token_length"] == "150"
    assert load_embedding(tmp_path / "b" / result.files[0].name).metadata["max_token_length"] == "150"
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["max_token_length"] == 150
    # past 150 tokens: --max-token-length 150 cuts it too, and says so, with 225
    caption_all(images, words(model.tokenizer, 160) + " {}")
    with pytest.raises(ConfigError, match=r"--max-token-length 150 reads the first 152, so it cuts.*"
                                          r"with --max-token-length 225"):
        train(config(images, tmp_path / "c", steps=1, max_token_length=150), model=load_model(where), progress=False)


def test_a_token_across_a_chunks_end_trains_every_vector(sd1_dir, images, tmp_path, monkeypatch):
    """kohya cuts every 75 tokens, whatever is there: a token of 2 vectors at tokens 75 and 76 has its first in the
    first chunk and its second in the next; both learn, and the conditioning the UNet gets holds both."""
    model = fresh_model(sd1_dir)
    caption_all(images, words(model.tokenizer, 74) + " {}")
    seen = []
    real = losses.encode_captions  # (where `diffusion_loss` looks it up)
    monkeypatch.setattr(losses, "encode_captions", lambda *a: seen.append(a[1][0]) or real(*a))
    init = base_embedding(model.text_encoder).weight[model.tokenizer("dog", add_special_tokens=False).input_ids[0]]
    init = init.clone()
    result = train(config(images, tmp_path / "a", steps=3, vectors=2, max_token_length=150), model=model,
                   progress=False)
    new = len(model.tokenizer)  # (the token's ids: the vocabulary's next two, while the run holds them)
    assert seen[0].shape[1] == 154
    assert (seen[0][:, 75] == new).all() and (seen[0][:, 77 + 1] == new + 1).all()  # (chunk 1's first token)
    for row in result.embedding.vectors["text_encoder"]:
        assert not torch.allclose(row, init)


def test_resume_is_exact_and_refuses_another_length(sd1_dir, images, tmp_path):
    caption_all(images, "{} " + words(fresh_model(sd1_dir).tokenizer, 100))
    long = dict(max_token_length=225, vectors=2)
    straight = train(config(images, tmp_path / "a", steps=4, **long), model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "b", steps=2, save_every=2, **long), model=fresh_model(sd1_dir), progress=False)
    resumed = train(config(images, tmp_path / "b", steps=4, save_every=2, resume=True, **long),
                    model=fresh_model(sd1_dir), progress=False)
    assert torch.equal(resumed.embedding.vectors["text_encoder"], straight.embedding.vectors["text_encoder"])
    for was, now in ((225, 150), (225, 75)):
        with pytest.raises(ConfigError, match=f"cannot resume .*max_token_length: {was} -> {now}"):
            train(config(images, tmp_path / "b", steps=6, resume=True, vectors=2, max_token_length=now),
                  model=fresh_model(sd1_dir), progress=False)
    train(config(images, tmp_path / "c", steps=2, save_every=2), model=fresh_model(sd1_dir), progress=False)
    with pytest.raises(ConfigError, match="max_token_length: 75 -> 150"):
        train(config(images, tmp_path / "c", steps=4, resume=True, max_token_length=150), model=fresh_model(sd1_dir),
              progress=False)


@pytest.mark.parametrize("value", [100, 300, 76])
def test_other_lengths_are_refused_naming_the_allowed_ones(value, images, tmp_path, capsys):
    from textinv.cli import main

    with pytest.raises(ConfigError, match=f"max_token_length={value} is not one of: 75, 150, 225"):
        config(images, tmp_path / "a", max_token_length=value).validate()
    with pytest.raises(SystemExit):
        main(["train", "--images", str(images), "--token", "<t>", "--out", str(tmp_path / "b"),
              "--max-token-length", str(value)])
    assert f"invalid choice: {value} (choose from 75, 150, 225)" in capsys.readouterr().err


def test_kohyas_name_on_the_command_line_and_in_a_dataset_config_is_answered_with_the_flag(images, tmp_path,
                                                                                            capsys):
    from textinv.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--images", str(images), "--token", "<t>", "--out", str(tmp_path / "a"),
              "--max_token_length", "150"])
    assert "--max_token_length is kohya's name; textinv calls it --max-token-length" in capsys.readouterr().err
    (tmp_path / "data.toml").write_text(f'[general]\nmax_token_length = 150\n\n[[datasets]]\n\n'
                                        f'  [[datasets.subsets]]\n  image_dir = "{images}"\n')
    with pytest.raises(ConfigError, match="max_token_length.*give it as max_token_length="):
        TrainConfig(dataset_config=str(tmp_path / "data.toml"), token="<t>", out=str(tmp_path / "b")).validate()
    # kohya's training settings file (its --config_file) holds it as textinv's --config takes it
    (tmp_path / "train.toml").write_text(f'images = "{images}"\ntoken = "<t>"\nmax_token_length = 225\n')
    from textinv.config import build, config_file_settings

    assert build(TrainConfig, config_file_settings(TrainConfig, tmp_path / "train.toml")).max_token_length == 225


def test_several_concepts_at_150_each_learn_what_their_own_run_learns(sd1_dir, tmp_path):
    from conftest import each_concept_alone, write_images

    dogs, cats = write_images(tmp_path / "dogs", seed=1), write_images(tmp_path / "cats", n=3, seed=2)
    tok = fresh_model(sd1_dir).tokenizer
    caption_all(dogs, words(tok, 90) + " {}")
    caption_all(cats, "{} " + words(tok, 30))
    common = dict(steps=3, batch=2, save_every=0, sample_every=0, log_every=1, lr=5e-2, max_token_length=150)
    concepts = [f"{dogs}=<jd>=dog", f"{cats}=<jc>=cat"]
    joint = train(TrainConfig(concepts=concepts, out=str(tmp_path / "joint"), **common), model=fresh_model(sd1_dir),
                  progress=False)
    for mine, alone in zip(joint.embeddings, each_concept_alone(sd1_dir, tmp_path, concepts, **common)):
        assert torch.allclose(mine.vectors["text_encoder"], alone.vectors["text_encoder"], atol=1e-5)
        assert mine.metadata["max_token_length"] == "150"


def test_the_compile_check_runs_the_graph_of_the_long_conditioning(sd1_dir, images, tmp_path, monkeypatch):
    """--compile's check calls the UNet with the conditioning's own length (2 + 150 here, not 77): the steps run the
    graph it checked, compiled once. (On `one_attention_model`'s smaller UNet, which dynamo traces in less time.)"""
    from test_train import graphs_compiled, one_attention_model

    cfg = config(images, tmp_path / "run", steps=2, compile="unet", max_token_length=150)
    assert graphs_compiled(monkeypatch, one_attention_model(sd1_dir), cfg) == 1


def test_the_memory_worked_out_counts_the_long_conditioning(sd1_dir, images, tmp_path, monkeypatch):
    """Out of memory on a GPU, the batch that fits is worked out for the run's step: with --max-token-length 225 the
    text encoders read three chunks a sample and the UNet attends to 227 states, so fewer samples fit."""
    from textinv.memory import RESERVE, WORKSPACE, meta_twin, step_bytes
    from textinv.train_memory import _memory_error, _Where

    from conftest import CUDA_OUT_OF_MEMORY
    from test_memory import _fake_cuda

    model = fresh_model(sd1_dir)
    twin, ids = meta_twin(model)
    side = model.resolution
    long = step_bytes(twin, ids, 3, side, max_token_length=225)
    assert long > step_bytes(twin, ids, 3, side)
    room = int((WORKSPACE + long) * RESERVE) + 1
    # (the most samples of 77 states that fit: a step's bytes grow with the batch, so the first batch from 4 on that
    # does not fit ends the count; each batch is a fraction of a second's work, even here)
    short = next((n for n in range(4, 9) if (WORKSPACE + step_bytes(twin, ids, n, side)) * RESERVE > room), 9) - 1
    assert 3 < short < 8  # (the same room takes more samples of 77 states)
    _fake_cuda(monkeypatch, free=room, reserved=0, allocated=0)
    for length, fit in ((225, 3), (75, short)):
        where = _Where(config(images, tmp_path, batch=8, max_token_length=length), torch.float32, stage="step",
                       step=5, resolution=side, model=model)
        message = str(_memory_error(where, torch.device("cuda"), torch.OutOfMemoryError(CUDA_OUT_OF_MEMORY)))
        assert f"the room this GPU has takes {fit} samples at once" in message, (length, message)
