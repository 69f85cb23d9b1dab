"""Placeholder tokens: add them to a tokenizer, hold their vectors as the only trainable parameter, expand prompts.

Textual inversion (Gal et al. 2023, sec. 3) learns new rows of the text encoder's token-embedding table while every
other weight stays frozen. Rather than train the whole 49,408-row table and copy the old rows back after each step
(the diffusers example does this; it keeps the full table in AdamW and applies weight decay to frozen rows), we keep
the frozen table as it is and put the new rows in their own small parameter, `(num_new, dim)`, read on the forward
pass for ids past the end of the table (as peft's trainable-tokens method does).

A token with N vectors is N tokenizer entries named as diffusers names them: `<tok>`, `<tok>_1`, ... `<tok>_{N-1}`;
`expand_prompt` rewrites `<tok>` in a prompt into all N of them, in training and in generation alike.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TokenError, setting


def token_names(token: str, num_vectors: int) -> list[str]:
    """The tokenizer entries of a token with `num_vectors` vectors, diffusers' naming.

    >>> token_names("<cat-toy>", 3)
    ['<cat-toy>', '<cat-toy>_1', '<cat-toy>_2']
    """
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_prompt(prompt: str, token: str, num_vectors: int, others: Iterable[str] = ()) -> str:
    """Replace each standalone `token` in `prompt` with its N entries (unchanged when N is 1).

    An entry that is already expanded (`<tok>_1`) is left alone, so expanding twice is harmless. Case does not
    matter, as it does not to CLIP's tokenizer (it lowercases the prompt): `<MyDog>` in a prompt is `<mydog>`.
    `others`: the other tokens loaded beside it. One that begins with `token` is matched as itself, as the
    tokenizer matches the longest added token: with `<dog>` and `<dog>2` loaded, `<dog>2` is not `<dog>` + "2".

    >>> expand_prompt("a photo of <t> on a table", "<t>", 2)
    'a photo of <t> <t>_1 on a table'
    >>> expand_prompt("a photo of <mydog>", "<MyDog>", 2)
    'a photo of <MyDog> <MyDog>_1'
    >>> expand_prompt("<dog> beside <dog>2", "<dog>", 2, others=["<dog>2"])
    '<dog> <dog>_1 beside <dog>2'
    """
    if num_vectors == 1:
        return prompt
    t = re.escape(token)
    longer = [re.escape(o) for o in others if len(o) > len(token) and o.lower().startswith(token.lower())]
    not_longer = f"(?!{'|'.join(longer)})" if longer else ""
    # not a longer token, not an entry, nor already expanded
    pattern = re.compile(not_longer + t + r"(?!_\d)(?!\s+" + t + r"_1(?!\d))", re.IGNORECASE)
    return pattern.sub(" ".join(token_names(token, num_vectors)), prompt)


def saved_tokens(tokenizer) -> dict[str, int]:
    """The multi-vector tokens saved in `tokenizer`, with their vector counts: each added token `<t>` that has
    `<t>_1` ... `<t>_{N-1}` beside it, as the diffusers script's --save_as_full_pipeline saves them. diffusers'
    pipelines write all N for `<t>` in a prompt (`maybe_convert_prompt`), so a model saved so draws them all here too.

    >>> from textinv.vocab import build_tokenizer
    >>> tokenizer = build_tokenizer(["cat"])
    >>> tokenizer.add_tokens(["<cat-toy>", "<cat-toy>_1", "<one>"])
    3
    >>> saved_tokens(tokenizer)
    {'<cat-toy>': 2}
    """
    added = set(tokenizer.get_added_vocab())
    counts = {}
    for token in added:
        n = 1
        while f"{token}_{n}" in added:
            n += 1
        if n > 1:
            counts[token] = n
    return counts


class _Rows(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)


class ExtendedEmbedding(nn.Module):
    """A frozen `nn.Embedding` of V rows plus extra rows held in `self.vectors` (a parameter), for ids V, V+1, ...

    The extra rows are kept in float32 whatever the frozen table's dtype (the optimizer's master copy) and cast to
    the table's dtype on the way out, so a bf16 text encoder still trains fp32 vectors.

    >>> table = nn.Embedding(10, 4)
    >>> ext = ExtendedEmbedding(table, torch.ones(2, 4))
    >>> ext(torch.tensor([[1, 10, 11]])).shape
    torch.Size([1, 3, 4])
    """

    def __init__(self, base: nn.Embedding, vectors: torch.Tensor):
        super().__init__()
        self.base = base
        self.num_base = base.num_embeddings
        # A child module registered after `base`, so the model's first parameter (what `model.dtype` reports, and
        # what pipelines cast prompt embeddings to) stays the frozen table's dtype.
        self.rows = _Rows(vectors.detach().to(device=base.weight.device, dtype=torch.float32).clone())

    @property
    def vectors(self) -> nn.Parameter:
        """The added rows, `(num_added, dim)`, float32: the only trainable parameter."""
        return self.rows.weight

    @property
    def weight(self) -> torch.Tensor:
        """The base table only: code that reads `.weight` (vocabulary norms, nearest tokens) sees real words."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        is_new = input_ids >= self.num_base
        out = self.base(input_ids.clamp(max=self.num_base - 1))
        if self.vectors.shape[0] == 0:
            return out
        # an embedding lookup, not `vectors[ids]`: the indexing's backward on the CPU adds a float32 gradient of
        # 32,768+ elements (here B x 77 x C) into the rows with atomic adds when torch has 2+ threads, so the
        # vectors' gradient came out summed in a different order, a different last bit, from run to run;
        # the embedding's backward sums each row's contributions in the order of the ids, at any thread count
        extra = F.embedding((input_ids - self.num_base).clamp(min=0, max=self.vectors.shape[0] - 1),
                            self.vectors.to(out.dtype))
        return torch.where(is_new.unsqueeze(-1), extra, out)


def base_embedding(text_encoder: nn.Module) -> nn.Embedding:
    """The text encoder's frozen vocabulary table, whether or not our extension is installed."""
    emb = text_encoder.get_input_embeddings()
    return emb.base if isinstance(emb, ExtendedEmbedding) else emb


def check_new_token(tokenizer, token: str, vocab: dict | None = None) -> None:
    """Refuse a placeholder that the tokenizer already reads as one known token (it must not be silently reused).

    CLIP lower-cases text before matching, so `<Dog>` clashes with an existing `<dog>`: both are caught here.
    `vocab`: `tokenizer.get_vocab()` where the caller has it already (it builds the whole vocabulary, a new dict).
    """
    if not token or token != token.strip() or any(c.isspace() for c in token):
        raise TokenError(f"token {token!r} must be one non-empty word without spaces, e.g. '<my-dog>'")
    instead = f"<{re.sub('[<>]', '', token)}-concept>"
    if token in tokenizer.get_added_vocab() and token not in tokenizer.all_special_tokens:
        raise TokenError(
            f"token {token!r} is a learned token the model holds already (as the diffusers script's "
            f"--save_as_full_pipeline saves one in it), not a word of its own; to go on training it, give the model "
            f"it was trained on as {setting('model')} and its embedding file (learned_embeds.safetensors) as "
            f"{setting('init_embedding')}, or pick a new string, e.g. {instead!r}."
        )
    if token in (vocab if vocab is not None else tokenizer.get_vocab()):
        raise TokenError(
            f"token {token!r} is already in the tokenizer's vocabulary; training it would overwrite the meaning of "
            f"an existing word. Pick a new string, e.g. {instead!r}."
        )
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) == 1 and ids[0] not in tokenizer.all_special_ids:
        known = tokenizer.convert_ids_to_tokens(ids)[0]
        why = " (CLIP lower-cases text before matching)" if token.lower() != token else ""
        raise TokenError(
            f"token {token!r} is read by the tokenizer as the existing token {known!r}{why}; pick a string it "
            f"does not know yet, e.g. {instead!r}."
        )


def token_clash(tokenizers, names: list[str]) -> tuple[str, TokenError | None] | None:
    """The first of `names` that one of `tokenizers` (each checked before the next) already reads as one of its
    tokens: (name, None) where it is in the vocabulary as it is (a word of its own or a token installed earlier), (name,
    `check_new_token`'s error) where the tokenizer reads it as another known token (or it is no word); None where
    none clashes. Each tokenizer's vocabulary is built once (`get_vocab` makes a new dict of all of it)."""
    for tokenizer in tokenizers:
        vocab = tokenizer.get_vocab()
        for name in names:
            if name in vocab:
                return name, None
            try:
                check_new_token(tokenizer, name, vocab)
            except TokenError as e:
                return name, e
    return None


def encode_init(tokenizer, text: str) -> list[int]:
    """The token ids of an init word or phrase, without BOS/EOS; TokenError if it yields nothing usable."""
    ids = tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []
    # CLIP's unk is its EOS token: an id of it means the text had something the vocabulary cannot spell. BOS/EOS
    # written out in the text are markers, not words: their rows mean nothing to start from.
    markers = {tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id} - {None}
    if not ids or markers.intersection(ids):
        raise TokenError(
            f"init text {text!r} cannot be encoded by this model's tokenizer (it gives {ids}); use a plain word "
            f"close to your concept, e.g. {setting('init', 'dog')}"
        )
    return ids


def split_words(tokenizer, ids: list[int]) -> list[str]:
    """The words of an init text that the tokenizer does not know whole, each with the pieces it reads instead
    ("ball (ba + l + l)"): CLIP's BPE ends a word's last piece with </w>, so a piece without it is part of a word.

    Their vectors are sub-word fragments, and their mean starts the learned vector far from the word meant (a typo
    such as --init dgo reads as d + g + o)."""
    def said(word: list[str]) -> str:
        shown = [p.replace("</w>", "") for p in word]
        return f"{''.join(shown)} ({' + '.join(shown)})"

    pieces = tokenizer.convert_ids_to_tokens(ids)
    words, current = [], []
    for piece in pieces:
        current.append(piece)
        if piece.endswith("</w>"):
            if len(current) > 1:
                words.append(said(current))
            current = []
    if len(current) > 1 or (current and not words and len(pieces) > 1):
        words.append(said(current))
    return words


def init_vectors(table: torch.Tensor, ids: list[int], num_vectors: int, spread: str = "average") -> torch.Tensor:
    """Starting vectors `(num_vectors, dim)` from the init text's token rows.

    The init tokens are split into `num_vectors` contiguous runs and each vector is the mean of its run: one vector
    from a phrase is the phrase's mean; N vectors from N tokens copy them one for one; more vectors than tokens
    repeat each token over a contiguous block (vector i takes token floor(i * len / N)). With `spread` "webui"
    vector i copies token floor(i * len / N) for more tokens than vectors too, as the A1111 web UI's
    create_embedding does: the tokens between are left out, not averaged (`webui_init_ids`: the ones it reads).

    >>> table = torch.arange(12.0).reshape(6, 2)
    >>> init_vectors(table, [1, 3], 1).tolist(), init_vectors(table, [1, 3], 1, "webui").tolist()
    ([[4.0, 5.0]], [[2.0, 3.0]])
    >>> init_vectors(table, [1, 3], 4).tolist()
    [[2.0, 3.0], [2.0, 3.0], [6.0, 7.0], [6.0, 7.0]]
    """
    if not ids:
        raise TokenError(f"no init token ids to start from; give a word or phrase, e.g. {setting('init', 'dog')}")
    beyond = [i for i in ids if not 0 <= i < table.shape[0]]
    if beyond:  # an id past the frozen table is a token added in this session, such as another concept's
        raise TokenError(
            f"init token id(s) {beyond} have no row in the model's vocabulary of {table.shape[0]} tokens: the init "
            "text names a new token (another concept's?), which has no meaning yet; start from plain words, "
            f"e.g. {setting('init', 'dog')}"
        )
    rows = table[torch.tensor(ids, device=table.device)].float()  # (L, C)
    n = len(ids)
    if num_vectors >= n or spread == "webui":
        return rows[[i * n // num_vectors for i in range(num_vectors)]].clone()
    return torch.stack([chunk.mean(0) for chunk in torch.tensor_split(rows, num_vectors)])


def webui_init_ids(ids: list[int], num_vectors: int, open_clip: bool) -> list[int]:
    """The init tokens the A1111 web UI starts an embedding from: its SD 1.x text encoder's tokenizer (CLIP ViT-L's,
    also SDXL's first) is called with max_length=num_vectors, which transformers takes as a cut to that many
    tokens; OpenCLIP's (SD 2.x, SDXL's second) reads them all. `init_vectors(..., "webui")` then picks among them.

    >>> webui_init_ids([5, 6, 7], 2, open_clip=False), webui_init_ids([5, 6, 7], 2, open_clip=True)
    ([5, 6], [5, 6, 7])
    """
    return list(ids) if open_clip else list(ids[:num_vectors])


def add_tokens(tokenizer, text_encoder: nn.Module, names: list[str], vectors: torch.Tensor) -> ExtendedEmbedding:
    """Add tokenizer entries `names` and their rows `vectors` (len(names), dim) to a tokenizer/text-encoder pair.

    Installs an `ExtendedEmbedding` on the text encoder (or grows the one already there) and returns it. The new
    ids must follow the table's last row in order; checks run before anything is changed.
    """
    table = base_embedding(text_encoder)
    if vectors.ndim != 2 or vectors.shape[0] != len(names) or vectors.shape[1] != table.embedding_dim:
        raise TokenError(
            f"{len(names)} token(s) need vectors of shape ({len(names)}, {table.embedding_dim}); got {tuple(vectors.shape)}"
        )
    vocab = tokenizer.get_vocab()
    for name in names:
        check_new_token(tokenizer, name, vocab)
    current = text_encoder.get_input_embeddings()
    existing = current.vectors.detach() if isinstance(current, ExtendedEmbedding) else vectors.new_zeros(0, vectors.shape[1])
    if len(tokenizer) != table.num_embeddings + existing.shape[0]:
        raise TokenError(
            f"the tokenizer has {len(tokenizer)} entries but the text encoder {table.num_embeddings} rows "
            f"(+{existing.shape[0]} added); they must match before new tokens can be added: the model's tokenizer "
            "and text encoder do not belong together (one saved with tokens added, the other without?)"
        )
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    expected = list(range(table.num_embeddings + existing.shape[0], table.num_embeddings + existing.shape[0] + len(names)))
    if ids != expected:  # cannot happen with a consistent tokenizer; never leave a half-installed token
        raise TokenError(f"tokenizer gave ids {ids} to {names}, expected {expected}")
    ext = ExtendedEmbedding(table, torch.cat([existing.float(), vectors.detach().float().to(existing.device)]))
    text_encoder.set_input_embeddings(ext)
    return ext


# a tokenizer's parts that stay as they are once it is made, which its copies share: transformers' (5.x) CLIP
# tokenizer keeps the merge list it built its backend from (SD's: 48,894 pairs, half the time of a deep copy), read
# only then; the backend, which the added tokens go into, is copied
_SHARED_PARTS = ("_merges",)


def tokenizer_copy(tokenizer):
    """A copy of `tokenizer` to add tokens to, leaving the original as it is: one loaded model's tokenizer may be
    shared (a second pipeline made of `model.pipeline.components`, a reference a notebook kept), and added tokens
    cannot be taken out of a tokenizer again.

    transformers' CLIP tokenizer wraps its backend's `decode` so that the BPE end-of-word marker reads as a space;
    a deep copy keeps the backend but not the wrapper, and decoded "a</w>photo</w>". The copy is wrapped again (the
    wrapper is idempotent, so a copy that kept it is unharmed).

    The parts no added token changes (`_SHARED_PARTS`) are shared with the original rather than copied."""
    shared = [part for part in (getattr(tokenizer, name, None) for name in _SHARED_PARTS) if part is not None]
    copied = copy.deepcopy(tokenizer, {id(part): part for part in shared})
    if hasattr(copied, "_wrap_decode_method_backend_tokenizer"):
        copied._wrap_decode_method_backend_tokenizer()
    return copied


@contextlib.contextmanager
def scratch_tokens(model):
    """Undo on exit every token added to `model` (a `textinv.models.Model`) inside the block, so one loaded model
    can serve several training runs (`train` does this to a model passed in; evaluation, benchmarks). The block
    works on copies of the tokenizers; on exit the tokenizer objects and embedding tables the model had are put
    back, and so is what `generate.unload_embeddings` would restore: a reference to `model.tokenizer` taken before
    the block never sees the block's tokens.

    >>> with scratch_tokens(model):        # doctest: +SKIP
    ...     install_embedding(model, emb)
    """
    attrs = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
    saved = [(attrs[name], tok, te, te.get_input_embeddings()) for name, tok, te in model.encoders]
    pristine = getattr(model, "_pristine", None)
    try:
        for attr, tok, _, _ in saved:
            setattr(model.pipeline, attr, tokenizer_copy(tok))
        yield model
    finally:
        for attr, tok, te, table in saved:
            setattr(model.pipeline, attr, tok)
            te.set_input_embeddings(table)
        if pristine is not None:
            model._pristine = pristine
        elif hasattr(model, "_pristine"):
            del model._pristine
