"""Prompt weights, tokenization and chunking as ComfyUI does them (spec §6.8)."""

import pytest

from diffmesh.models import tokenizer as tk
from diffmesh.models.prompt_weights import parse_prompt_weights


@pytest.fixture(scope="module")
def tok():
    return tk.CLIPTokenizer()


def test_parentheses_multiply_by_1_1_per_level_and_explicit_weights_replace():
    got = parse_prompt_weights("a (b) ((c)) (d:1.5) ((e:0.5))")
    weights = {text.strip(): round(w, 4) for text, w in got if text.strip()}
    assert weights == {"a": 1.0, "b": 1.1, "c": 1.21, "d": 1.5, "e": 0.5}


def test_escaped_parentheses_are_literal_text():
    assert parse_prompt_weights(r"x \(y\) z") == [("x (y) z", 1.0)]


def test_non_numeric_weight_keeps_colon_text_at_1_1():
    assert parse_prompt_weights("(a:b)") == [("a:b", 1.1)]


def test_known_prompt_tokenizes_to_reference_ids(tok):
    assert tok.encode("a photograph of an astronaut riding a horse") == [320, 8853, 539, 550, 18376, 6765, 320, 4558]


def test_short_prompt_is_one_padded_chunk_of_77(tok):
    chunks = tk.chunk_tokens(tk.token_groups(tok, [("a cat", 1.0)]), pad_token=0)
    assert len(chunks) == 1 and len(chunks[0]) == 77
    ids = [t for t, _ in chunks[0]]
    assert ids[0] == tk.START_TOKEN and ids[3] == tk.END_TOKEN and ids[4:] == [0] * 73


def test_long_prompt_makes_more_chunks_each_framed_by_start_and_end(tok):
    text = ", ".join(["red apple"] * 40)  # 119 tokens
    chunks = tk.chunk_tokens(tk.token_groups(tok, [(text, 1.0)]), pad_token=tk.END_TOKEN)
    assert len(chunks) == 2
    for chunk in chunks:
        assert len(chunk) == 77 and chunk[0][0] == tk.START_TOKEN and chunk[76][0] == tk.END_TOKEN


def test_small_group_that_does_not_fit_moves_whole_to_next_chunk():
    big = [(1, 1.0)] * 70
    small = [(2, 1.3)] * 7
    chunks = tk.chunk_tokens([big, small], pad_token=0)
    assert [t for t, _ in chunks[0]][71:] == [tk.END_TOKEN] + [0] * 5
    assert [t for t, _ in chunks[1]][1:8] == [2] * 7


def test_large_group_is_split_at_the_chunk_boundary():
    big = [(1, 1.0)] * 70
    large = [(2, 1.3)] * 10
    chunks = tk.chunk_tokens([big, large], pad_token=0)
    assert [t for t, _ in chunks[0]][71:76] == [2] * 5 and chunks[0][76][0] == tk.END_TOKEN
    assert [t for t, _ in chunks[1]][1:6] == [2] * 5
