"""Placeholder tokens: naming, prompt expansion, init vectors, clashes, and the extended embedding table."""

import os

import pytest
import torch
from torch import nn

from textinv.errors import TokenError
from textinv.tiny import build_tiny_pipeline
from textinv.tokens import (
    ExtendedEmbedding, add_tokens, base_embedding, check_new_token, encode_init, expand_prompt, init_vectors,
    token_names, webui_init_ids,
)


@pytest.fixture
def pipe():
    return build_tiny_pipeline("sd1")


def test_expand_prompt_leaves_expanded_entries_and_other_text():
    assert expand_prompt("<t> and <t>", "<t>", 3) == "<t> <t>_1 <t>_2 and <t> <t>_1 <t>_2"
    once = expand_prompt("a <t>", "<t>", 2)
    assert expand_prompt(once, "<t>", 2) == once
    assert expand_prompt("a <t>", "<t>", 1) == "a <t>"


def test_multi_vector_token_tokenizes_to_consecutive_new_ids(pipe):
    tok, te = pipe.tokenizer, pipe.text_encoder
    v0 = len(tok)
    add_tokens(tok, te, token_names("<dog-x>", 3), torch.randn(3, 32))
    ids = tok(expand_prompt("a photo of <dog-x>", "<dog-x>", 3), add_special_tokens=False).input_ids
    assert ids[-3:] == [v0, v0 + 1, v0 + 2]


def test_a_token_that_begins_another_does_not_expand_inside_it(pipe):
    # <dog> and <dog>2 loaded together: the tokenizer reads <dog>2 as itself (longest match), so must the expansion
    from textinv.generate import expand_all
    from textinv.formats import LearnedEmbedding

    tok, te = pipe.tokenizer, pipe.text_encoder
    v0 = len(tok)
    add_tokens(tok, te, token_names("<dog>", 2), torch.randn(2, 32))
    add_tokens(tok, te, token_names("<dog>2", 3), torch.randn(3, 32))
    embs = [LearnedEmbedding("<dog>", {"text_encoder": torch.randn(2, 32)}),
            LearnedEmbedding("<dog>2", {"text_encoder": torch.randn(3, 32)})]
    for order in (embs, embs[::-1]):
        prompt = expand_all("<dog>2 chases <dog>", order)
        assert prompt == "<dog>2 <dog>2_1 <dog>2_2 chases <dog> <dog>_1"
        chases = tok("chases", add_special_tokens=False).input_ids
        assert tok(prompt, add_special_tokens=False).input_ids == [v0 + 2, v0 + 3, v0 + 4, *chases, v0, v0 + 1]
    assert expand_prompt("<dog>2", "<dog>", 2) == "<dog> <dog>_12"  # what it did without knowing the other token


def test_extended_embedding_reads_old_rows_from_table_and_new_rows_from_vectors():
    table = nn.Embedding(5, 3)
    new = torch.randn(2, 3)
    ext = ExtendedEmbedding(table, new)
    out = ext(torch.tensor([[0, 4, 5, 6]]))
    assert torch.equal(out[0, :2], table.weight[[0, 4]])
    assert torch.equal(out[0, 2:], new)


def test_gradient_reaches_only_the_new_vectors(pipe):
    # (not the plain sum of the hidden states: the final layer norm makes each position's sum over its features a
    # constant, so that gradient is zero but for float rounding, and the check passed or failed on the rounding)
    tok, te = pipe.tokenizer, pipe.text_encoder
    te.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ext = add_tokens(tok, te, ["<g>"], torch.randn(1, 32, generator=g))
    ids = tok("a photo of <g>", return_tensors="pt").input_ids
    hidden = te(ids)[0]
    (hidden * torch.randn(hidden.shape, generator=g)).sum().backward()
    assert ext.vectors.grad is not None and ext.vectors.grad.abs().sum() > 0
    assert te.dtype == torch.float32 and [n for n, p in te.named_parameters() if p.grad is not None] == [
        "embeddings.token_embedding.rows.weight"]
    assert all(p.grad is None for n, p in te.named_parameters() if n != "embeddings.token_embedding.rows.weight")


def test_adding_a_second_token_keeps_the_first_tokens_vectors_and_every_word(pipe):
    # a second embedding loaded (or a concept's tokens installed beside another's) grows the added rows: the rows
    # there before, and the frozen table, read as they did
    tok, te = pipe.tokenizer, pipe.text_encoder
    first, second = torch.randn(2, 32), torch.randn(1, 32)
    table = base_embedding(te).weight.clone()
    add_tokens(tok, te, token_names("<a-x>", 2), first)
    ext = add_tokens(tok, te, ["<b-x>"], second)
    v0 = table.shape[0]
    assert torch.equal(ext.vectors.detach(), torch.cat([first, second]))
    out = ext(torch.tensor([[0, v0 - 1, v0, v0 + 1, v0 + 2]]))[0]
    assert torch.equal(out[:2], table[[0, v0 - 1]]) and torch.equal(out[2:], torch.cat([first, second]))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two threads race only on two or more cores")
def test_vectors_gradient_is_the_same_bits_every_time_at_two_threads():
    # a training batch's worth of positions (4 x 77 x 128 > 32,768 elements): `vectors[ids]`'s backward added
    # these with atomic adds in whatever order the threads ran; on the 2-core VM 13-99% of repeats differed in a
    # last bit, and 50 repeats caught it in 10 runs of 10
    ext = ExtendedEmbedding(nn.Embedding(10, 128), torch.randn(2, 128, generator=torch.Generator().manual_seed(0)))
    ids = torch.randint(0, 12, (4, 77), generator=torch.Generator().manual_seed(1))
    grad_out = torch.randn(4, 77, 128, generator=torch.Generator().manual_seed(2))

    def gradient():
        ext.vectors.grad = None
        ext(ids).backward(grad_out)
        return ext.vectors.grad.clone()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = gradient()
        assert all(torch.equal(gradient(), first) for _ in range(50))
    finally:
        torch.set_num_threads(threads)


def test_init_single_word_copies_its_row(pipe):
    tok, te = pipe.tokenizer, pipe.text_encoder
    ids = encode_init(tok, "dog")
    assert len(ids) == 1
    v = init_vectors(base_embedding(te).weight, ids, 1)
    assert torch.equal(v[0], base_embedding(te).weight[ids[0]])


def test_init_phrase_is_averaged_or_spread(pipe):
    table = base_embedding(pipe.text_encoder).weight
    ids = encode_init(pipe.tokenizer, "red dog")
    assert len(ids) == 2
    one = init_vectors(table, ids, 1)
    assert torch.allclose(one[0], table[ids].mean(0))
    two = init_vectors(table, ids, 2)
    assert torch.equal(two, table[ids])
    four = init_vectors(table, ids, 4)
    assert torch.equal(four, table[[ids[0], ids[0], ids[1], ids[1]]])


def test_init_spread_webui_copies_every_nth_token_as_the_web_ui(pipe):
    """The web UI's create_embedding fills vector i from init token i * n // N: fewer tokens than vectors repeat, as
    textinv's average does; more tokens than vectors are skipped over, not averaged (textinv's default)."""
    table = base_embedding(pipe.text_encoder).weight
    ids = encode_init(pipe.tokenizer, "red dog on a mat")  # (7 tokens in the tiny vocabulary)
    n = len(ids)
    assert n == 7
    for vectors in (2, 3, 5, 9):  # (n > N skips: tokens 0, 3 of 7 for 2; n < N repeats: 0, 0, 1, ... for 9)
        assert torch.equal(init_vectors(table, ids, vectors, "webui"), table[[ids[i * n // vectors]
                                                                              for i in range(vectors)]])
    assert torch.equal(init_vectors(table, ids, 9, "webui"), init_vectors(table, ids, 9))
    assert torch.allclose(init_vectors(table, ids, 2)[0], table[ids[:4]].mean(0))  # (the default still averages)
    assert webui_init_ids(ids, 2, open_clip=False) == ids[:2] and webui_init_ids(ids, 2, open_clip=True) == ids


def test_token_already_known_is_refused(pipe):
    with pytest.raises(TokenError, match="already"):
        check_new_token(pipe.tokenizer, "dog</w>")
    with pytest.raises(TokenError, match="existing token 'dog</w>'"):
        check_new_token(pipe.tokenizer, "dog")
    add_tokens(pipe.tokenizer, pipe.text_encoder, ["<cat-x>"], torch.zeros(1, 32))
    with pytest.raises(TokenError, match="lower-cases"):
        check_new_token(pipe.tokenizer, "<Cat-X>")


def test_bad_token_strings_are_refused(pipe):
    for bad in ("", "two words", " <x>"):
        with pytest.raises(TokenError):
            check_new_token(pipe.tokenizer, bad)


def test_init_text_that_cannot_be_encoded_is_refused(pipe):
    for bad in ("", "   "):
        with pytest.raises(TokenError, match="cannot be encoded"):
            encode_init(pipe.tokenizer, bad)


def test_add_tokens_checks_shape_before_changing_anything(pipe):
    size = len(pipe.tokenizer)
    with pytest.raises(TokenError, match="shape"):
        add_tokens(pipe.tokenizer, pipe.text_encoder, ["<a>", "<a>_1"], torch.zeros(1, 32))
    assert len(pipe.tokenizer) == size
    assert not isinstance(pipe.text_encoder.get_input_embeddings(), ExtendedEmbedding)


def test_built_vocabulary_keeps_every_word_one_token_even_when_merges_conflict():
    from textinv.vocab import build_tokenizer

    # 'cres' + 'cen' + 't': merges made for the earlier words split 'crescent' without the fix-up
    words = ["cent", "ce", "res", "crescent", "cyan", "hexagon", "triangle", "stripes", "striped"]
    tok = build_tokenizer(words)
    assert [w for w in words if len(tok.tokenize(w)) != 1] == []


def test_expansion_ignores_case_as_clip_does():
    from textinv.tokens import expand_prompt

    assert expand_prompt("a <mydog> and <MYDOG>", "<MyDog>", 2) == "a <MyDog> <MyDog>_1 and <MyDog> <MyDog>_1"
    assert expand_prompt("a <MyDog> <mydog>_1", "<MyDog>", 2) == "a <MyDog> <mydog>_1"  # already expanded


def test_init_from_a_token_added_in_this_session_is_a_token_error(pipe):
    # a second concept started from the first one's token: its id has no row in the frozen table
    add_tokens(pipe.tokenizer, pipe.text_encoder, ["<a-x>"], torch.zeros(1, 32))
    ids = encode_init(pipe.tokenizer, "<a-x>")
    with pytest.raises(TokenError, match="no row in the model's vocabulary"):
        init_vectors(base_embedding(pipe.text_encoder).weight, ids, 1)


def test_init_text_of_start_or_end_markers_is_refused(pipe):
    for bad in ("<|startoftext|>", "dog <|endoftext|>"):
        with pytest.raises(TokenError, match="cannot be encoded"):
            encode_init(pipe.tokenizer, bad)


def test_built_vocabulary_refuses_a_word_with_a_space():
    from textinv.vocab import build_tokenizer

    with pytest.raises(ValueError, match="ice cream"):
        build_tokenizer(["dog", "ice cream"])


def test_a_token_the_diffusers_script_saved_in_the_model_is_refused_as_such_with_the_way_to_go_on():
    """Training `<cat-toy>` on a model the diffusers script saved whole (--save_as_full_pipeline) was refused as
    "an existing word", and the name it offered for `<cat-toy>_1` was '<cat-toy>_1-concept>'."""
    from textinv.vocab import build_tokenizer

    tokenizer = build_tokenizer(["dog"])
    tokenizer.add_tokens(["<cat-toy>", "<cat-toy>_1"])
    with pytest.raises(TokenError) as caught:
        check_new_token(tokenizer, "<cat-toy>")
    said = str(caught.value)
    assert "is a learned token the model holds already (as the diffusers script's --save_as_full_pipeline saves " \
           "one in it)" in said
    assert "as model= and its embedding file (learned_embeds.safetensors) as init_embedding=" in said  # (Python's)
    assert "existing word" not in said
    with pytest.raises(TokenError, match=r"e\.g\. '<cat-toy_1-concept>'"):
        check_new_token(tokenizer, "<cat-toy>_1")
    with pytest.raises(TokenError, match="overwrite the meaning of an existing word"):
        check_new_token(tokenizer, "dog</w>")
