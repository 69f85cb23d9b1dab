"""A compact CLIP-style byte-level BPE vocabulary built from a word list.

CLIP's tokenizer is byte-level BPE: every byte has a symbol, every symbol also exists with the end-of-word marker
`</w>`, and ranked merges join symbols into words. Real Stable Diffusion ships 49,408 tokens; our embedded "shapes"
model and the tests need only a few hundred, so we build a vocabulary of the same kind from the words we know. Any
text still tokenizes (unknown words fall back to smaller pieces, down to single bytes), exactly as with real CLIP.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE (a published, fixed table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style (vocab, merges) pair in which each of `words` (lower case ASCII) becomes one token.

    Merges join a word's characters left to right; they are ranked in the order the words come, so a word given
    earlier wins a conflict. Returns the dict and the merge list that `CLIPTokenizer(vocab=..., merges=...)` takes.

    >>> vocab, merges = build_vocab(["dog", "cat"])
    >>> "dog</w>" in vocab and ("d", "o") in merges
    True
    """
    spaced = [w for w in words if len(w.split()) > 1]
    if spaced:  # CLIP splits text at whitespace before BPE, so no merge can make a token across it
        raise ValueError(f"words must not contain spaces, got {spaced}; give each word on its own")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in dict.fromkeys(w.strip().lower() for w in words if w.strip()):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            if merged not in seen:
                merges.append((left, right))
                tokens.append(merged)
                seen.add(merged)
            left = merged
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _join_split_words(words: list[str], vocab: dict[str, int], merges: list[tuple[str, str]]):
    """Make every word one token. BPE applies merges by rank across the whole word, so a merge made for an earlier
    word can split a later one ('cres' + 'cen' + 't'); for each word that still comes out in pieces, merges joining
    those pieces are appended (`_append_words`). Ranked last, they cannot change a word that is already one token.
    The new tokens come before the start and end tokens, which stay the last two ids, as `build_vocab` numbers them."""
    vocab, merges = _append_words(words, vocab, merges)
    tokens = [t for t in sorted(vocab, key=vocab.get) if t not in (BOS, EOS)]
    return {t: i for i, t in enumerate(tokens + [BOS, EOS])}, merges


def _append_words(words: list[str], vocab: dict[str, int], merges: list[tuple[str, str]]):
    """`vocab` and `merges` with each of `words` made one token, every existing entry keeping its id: a word's pieces
    (as the tokenizer splits it now) are joined by merges ranked last, the new tokens numbered after the last id.
    A merge ranked last cannot change a word that is already one token (see `_join_split_words`), so a model's
    embedding rows stay valid and it grows by rows at the end."""
    vocab, merges = dict(vocab), list(merges)
    current = None  # (the tokenizer of `vocab` and `merges` as they are: built again only once they change)
    for word in dict.fromkeys(w.strip().lower() for w in words if w.strip()):
        if current is None:
            current = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        pieces = current.tokenize(word)
        if len(pieces) < 2:
            continue
        left = pieces[0]
        for right in pieces[1:]:
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
        current = None
    return vocab, merges


def build_tokenizer(words: list[str], model_max_length: int = 77, size: int | None = None,
                    appended: list[str] = ()) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary holds each of `words` as one token (plus every byte, as in CLIP).

    `appended`: more words, each one token too, numbered after everything else (the end-of-text token included),
    so the tokenizer of `words` alone keeps every id: what a model trained on it needs to learn new words.

    >>> tok = build_tokenizer(["a", "photo", "of", "dog"])
    >>> len(tok("a photo of a dog").input_ids)   # BOS + 5 words + EOS
    7
    >>> more = build_tokenizer(["a", "photo", "of", "dog"], appended=["puppy"])
    >>> more.convert_tokens_to_ids("puppy</w>") >= len(tok), more.eos_token_id == tok.eos_token_id
    (True, True)
    """
    vocab, merges = _join_split_words(words, *build_vocab(words))
    if size is not None:  # pad to a real model's vocabulary size (e.g. 49,408) with entries no text produces
        if size < len(vocab):
            raise ValueError(f"size {size} is smaller than the {len(vocab)} entries the words need")
        specials = [BOS, EOS]
        tokens = [t for t in vocab if t not in specials]
        tokens += [f"<|filler-{i}|>" for i in range(size - len(vocab))]
        vocab = {tok: i for i, tok in enumerate(tokens + specials)}
    if appended:
        vocab, merges = _append_words(list(appended), vocab, merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
