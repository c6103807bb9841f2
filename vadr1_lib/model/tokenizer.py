"""The real Qwen2.5 tokenizer, built offline, and vocabularies restricted to a corpus.

Qwen2.5 (and so Qwen2.5-VL) uses a byte-level BPE with 151,643 ranked tokens followed by
added special tokens. The ranks ship as ``qwen.tiktoken`` inside the ``dashscope``
package (Alibaba's Qwen SDK), so the exact tokenizer can be rebuilt with no hub download:

- a tiktoken file lists each token's bytes and its rank; a Hugging Face BPE needs merge
  rules instead. The merge that creates a token is found by running BPE on the token's
  own bytes with only the lower ranks allowed: it ends in exactly two parts, and that pair
  is the token's merge. Merges are listed in rank order, which is BPE's priority order;
- ids are the ranks, then Qwen2.5-VL's added tokens at their fixed ids (151643 ...).

The result is a ``Qwen2Tokenizer``, the class ``Qwen/Qwen2.5-VL-7B-Instruct`` loads, with
the same normaliser (NFC), pre-tokeniser regex and byte-level decoder. Token counts from it
are the counts the 7B model sees (dataset statistics, the length reward's ranges).

Restricted vocabularies (why: the full 151,936-row embedding makes a tiny model's training
step ~50x slower on a CPU; ``docs/measurements.md``). BPE applies, at each step,
the lowest-ranked merge that applies. If a subset of merges contains every merge the full
tokenizer uses on a text (every final token of the text and every intermediate token on
the way, i.e. the subset is closed under "the two parts of my merge"), then on that text
the subset's lowest applicable merge is always the full tokenizer's choice too, so both
produce the same tokens. Keeping the 256 single-byte tokens means any other text still
encodes (in smaller pieces) and decodes losslessly.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer

from vadr1_lib import paths

NUM_BPE_TOKENS = 151_643
HUB_EMBEDDING_ROWS = 151_936  # vocab_size in Qwen2.5-VL-3B-Instruct's config.json (the 7B pads to 152,064)

# Qwen2.5-VL-7B-Instruct's added tokens, in id order from 151643. `special` marks those
# the tokenizer treats as control tokens (never split, skipped by skip_special_tokens).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# The chat template that ships with Qwen/Qwen2.5-VL-7B-Instruct (its chat_template.json),
# verbatim. It has no `{% generation %}` markers, and neither does any other Hub checkpoint's,
# so the SFT loss finds the assistant's reply from the rendered prompt instead
# (:func:`vadr1_lib.training.sft.reply_token_mask`); the tiny model ships this very template so that
# the CPU profiles take the same path as a downloaded checkpoint.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiktoken_path() -> Path:
    return Path(str(importlib.resources.files("dashscope") / "resources" / "qwen.tiktoken"))


@functools.lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    """Token bytes -> rank, from dashscope's ``qwen.tiktoken``."""
    ranks: dict[bytes, int] = {}
    for line in tiktoken_path().read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != NUM_BPE_TOKENS:
        raise RuntimeError(f"{tiktoken_path()}: expected {NUM_BPE_TOKENS} ranks, found {len(ranks)}")
    return ranks


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _as_unicode(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates ``token``: BPE on its bytes with lower ranks only."""
    max_rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise RuntimeError(f"token {token!r} is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def _merge_table_path() -> Path:
    return paths.data_dir() / "tokenizer" / "qwen2.5-merges.json"


@functools.lru_cache(maxsize=1)
def merge_table() -> dict[int, tuple[int, int]]:
    """Rank of every multi-byte token -> ranks of its two parts (cached on disk: ~10 s to derive)."""
    cache = _merge_table_path()
    source = tiktoken_path()
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("source_size") == source.stat().st_size:
            return {int(k): (v[0], v[1]) for k, v in stored["merges"].items()}
    ranks = load_ranks()
    table = {}
    for token, rank in ranks.items():
        if len(token) > 1:
            left, right = _merge_of(token, ranks)
            table[rank] = (ranks[left], ranks[right])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source_size": source.stat().st_size, "merges": table}))
    tmp.replace(cache)
    return table


def _build_tokenizer(kept_ranks: Iterable[int]) -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` over the given BPE ranks (kept in rank order, renumbered densely)."""
    ranks = load_ranks()
    by_rank = {rank: token for token, rank in ranks.items()}
    order = sorted(set(kept_ranks))
    vocab = {_as_unicode(by_rank[rank]): new_id for new_id, rank in enumerate(order)}
    kept = set(order)
    table = merge_table()
    merges = [
        (_as_unicode(by_rank[table[rank][0]]), _as_unicode(by_rank[table[rank][1]]))
        for rank in order
        if rank in table
    ]
    for rank in order:
        if rank in table and not set(table[rank]) <= kept:
            raise ValueError(f"rank {rank} is kept without the two parts of its merge")
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    # Added in Qwen's order first, so that they land on consecutive ids after the BPE
    # tokens; naming eos/pad in the constructor would add those two first.
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=1)
def qwen_tokenizer() -> Qwen2Tokenizer:
    """The exact Qwen2.5(-VL) tokenizer: 151,643 BPE tokens + the added tokens at 151643+."""
    tokenizer = _build_tokenizer(range(NUM_BPE_TOKENS))
    for offset, (text, _) in enumerate(ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(text) != NUM_BPE_TOKENS + offset:
            raise RuntimeError(f"{text} did not land on id {NUM_BPE_TOKENS + offset}")
    return tokenizer


def count_tokens(text: str) -> int:
    """Number of Qwen2.5 tokens in ``text`` (what the 7B model would see)."""
    return len(qwen_tokenizer()(text, add_special_tokens=False)["input_ids"])


def restricted_tokenizer(corpus: Iterable[str]) -> Qwen2Tokenizer:
    """Qwen2.5's BPE restricted to what ``corpus`` needs: identical segmentation on it.

    Kept: every token of the corpus's Qwen segmentation, every intermediate token on the
    way there (recursively, the two parts of each kept token's merge), all 256 single-byte
    tokens, and the added special tokens (after the BPE tokens, in Qwen's order).
    """
    full = qwen_tokenizer()
    table = merge_table()
    ranks = load_ranks()
    kept: set[int] = {ranks[bytes([b])] for b in range(256)}
    stack: list[int] = []
    for text in corpus:
        stack.extend(i for i in full(text, add_special_tokens=False)["input_ids"] if i < NUM_BPE_TOKENS)
    while stack:
        rank = stack.pop()
        if rank in kept:
            continue
        kept.add(rank)
        stack.extend(table.get(rank, ()))
    return _build_tokenizer(kept)
