import json
import random

import pytest

from vadr1_lib.model import tokenizer as qt


@pytest.fixture(scope="module")
def qwen():
    return qt.qwen_tokenizer()


def test_known_ids(qwen):
    assert qwen("<|im_start|>hello<|im_end|>", add_special_tokens=False)["input_ids"] == [151644, 14990, 151645]
    assert qwen("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert qwen.convert_tokens_to_ids("<|video_pad|>") == 151656
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|file_sep|>": 151664}
    assert {t: qwen.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(qwen) == 151_665
    assert qwen.eos_token == "<|im_end|>" and qwen.pad_token == "<|endoftext|>"


def test_matches_dashscope_reference_tokenizer(qwen):
    """dashscope's own tiktoken-based tokenizer is an independent implementation of the same BPE."""
    from dashscope.tokenizers.qwen_tokenizer import QwenTokenizer

    reference = QwenTokenizer(str(qt.tiktoken_path()))
    for text in ["Hello world", "The anomaly occurs at <when>[0.113, 0.646]</when>.", "  spaces\n\n and\ttabs 12345", "火灾 и взрыв 🔥"]:
        assert qwen(text, add_special_tokens=False)["input_ids"] == reference.encode(text)


def _varied_strings(release_rows: list[dict]) -> list[str]:
    rng = random.Random(0)
    texts = [row["think"] for row in release_rows[:150]] + [row["answer"] for row in release_rows[-150:]]
    alphabet = "abcXYZ 0123456789\n\t.,;:!?'\"-_<>[]{}()/\\éüßøñ中文日本語한국어😀🔥\u200b\u00a0"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(100)]
    return texts


def test_decode_round_trips_on_real_and_random_text(qwen, release_sft_path):
    rows = [json.loads(line) for line in release_sft_path.read_text().splitlines()]
    texts = _varied_strings(rows)
    assert len(texts) >= 300
    for text in texts:
        ids = qwen(text, add_special_tokens=False)["input_ids"]
        # Qwen2.5 normalises to NFC before encoding; these strings are NFC already.
        assert qwen.decode(ids) == text


def test_restricted_vocabulary_segments_its_corpus_like_qwen(qwen, release_sft_path):
    rows = [json.loads(line) for line in release_sft_path.read_text().splitlines()]
    corpus = [row["think"] + "\n" + row["answer"] for row in rows[:40]]
    small = qt.restricted_tokenizer(corpus)
    assert 1000 < len(small) < 20_000
    for text in corpus:
        full_tokens = qwen.convert_ids_to_tokens(qwen(text, add_special_tokens=False)["input_ids"])
        small_tokens = small.convert_ids_to_tokens(small(text, add_special_tokens=False)["input_ids"])
        assert small_tokens == full_tokens
    # Text outside the corpus still encodes (smaller pieces) and decodes losslessly.
    for text in [rows[-1]["think"], "Zebra-crossing 💥 explosion at 03:14!", "完全不同的文本"]:
        ids = small(text, add_special_tokens=False)["input_ids"]
        assert small.decode(ids) == text
    # Special tokens follow the BPE tokens in Qwen's order.
    n_bpe = len(small) - len(qt.ADDED_TOKENS)
    assert small.convert_tokens_to_ids("<|endoftext|>") == n_bpe
    assert small.convert_tokens_to_ids("<|video_pad|>") == n_bpe + 13
    assert small("<|im_start|>x<|im_end|>", add_special_tokens=False)["input_ids"][0] == n_bpe + 1


def test_count_tokens_is_qwen_length():
    assert qt.count_tokens("Hello world") == 2
    assert qt.count_tokens("") == 0
