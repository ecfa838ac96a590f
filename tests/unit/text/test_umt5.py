"""UMT5-XXL (CLIPLoader type `wan`) on a tiny random file whose SentencePiece model is stored in the
file (`spiece_model`), as ComfyUI's UMT5 files carry theirs: tokenization rules, attention masking,
zeroed padding rows, weights, and the errors for files without a vocabulary or of another kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece
import torch

from diffmesh.errors import ModelError
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import WeightStore
from diffmesh.models.text import tokenizers as tk
from diffmesh.models.text.load import build_text_encoder, check_files
from diffmesh.models.text.testfiles import make_text_encoder, text_encoder_state_dict


@pytest.fixture(scope="module")
def umt5_file(tmp_path_factory) -> Path:
    return Path(make_text_encoder("umt5xxl", "tiny", tmp_path_factory.mktemp("umt5") / "tiny-umt5xxl.safetensors"))


@pytest.fixture(scope="module")
def encoder(umt5_file):
    return build_text_encoder(ModelHandle(str(umt5_file), "clip", "wan"), torch.device("cpu"), torch.float32,
                              WeightStore())


def _ids(encoder, text):
    return tk.token_ids(encoder.row(text))


def test_wan_type_takes_a_umt5_file_and_names_the_kind_otherwise(umt5_file, tmp_path):
    assert check_files([umt5_file], "wan", "CLIPLoader") == "wan"
    t5 = Path(make_text_encoder("t5xxl", "tiny", tmp_path / "t5.safetensors"))
    with pytest.raises(ModelError, match="type 'wan' needs UMT5, found t5.safetensors: T5-XXL"):
        check_files([t5], "wan", "CLIPLoader")


def test_tokens_come_from_the_files_sentencepiece_model(encoder, umt5_file):
    """No start token, the end token 1 after the prompt, 0-padding to 512; ids are the stored model's."""
    from safetensors import safe_open

    with safe_open(str(umt5_file), "pt") as f:
        proto = f.get_tensor("spiece_model").numpy().tobytes()
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    ids = _ids(encoder, "a photo of a cat")
    expected = sp.encode("a photo of a cat")
    assert ids[:len(expected) + 1] == expected + [1]
    assert len(ids) == 512 and set(ids[len(expected) + 1:]) == {0}


def test_long_prompts_are_never_truncated(encoder):
    ids = _ids(encoder, "waves crash on the rocks " * 80)
    assert len(ids) > 512 and ids[-1] == 1 and 0 not in ids


def test_weights_split_the_prompt_and_weight_their_tokens(encoder):
    row = encoder.row("(red:1.2) fox")
    weights = [w for _t, w in row]
    n_red = _ids(encoder, "red").index(1)                          # pieces of "red" alone
    assert weights[:n_red] == [1.2] * n_red and set(weights[n_red:]) == {1.0}


def test_rows_after_the_end_token_are_zero_and_the_prompt_rows_are_not(encoder):
    cond, options = encoder.encode("a photo of a cat")[0]
    n = _ids(encoder, "a photo of a cat").index(1) + 1            # prompt tokens + end token
    assert cond.shape == (1, 512, 64) and options == {"pooled_output": None}
    assert torch.equal(cond[0, n:], torch.zeros(512 - n, 64))
    assert (cond[0, :n].abs().sum(-1) > 0).all()


def test_padding_is_masked_out_of_the_attention(encoder):
    """The prompt rows do not depend on how many pad tokens follow (the mask hides them)."""
    row = encoder.row("a photo of a cat")
    n = tk.token_ids(row).index(1) + 1
    ids = torch.tensor([tk.token_ids(row)[:n]])
    with torch.no_grad():
        short = encoder.model(encoder.model.embed(ids, {}), mask=torch.ones_like(ids)).float()
    padded = encoder.encode("a photo of a cat")[0][0]
    assert torch.allclose(padded[:, :n], short, atol=1e-5)


def test_a_weight_moves_only_its_rows_away_from_the_empty_prompt(encoder):
    plain = encoder.encode("red fox")[0][0]
    heavy = encoder.encode("(red:1.5) fox")[0][0]
    n_red = _ids(encoder, "red").index(1)
    changed = (heavy - plain).abs().sum(-1)[0]
    assert (changed[:n_red] > 1e-3).all()


def test_clip_set_last_layer_takes_an_earlier_block(umt5_file, encoder):
    earlier = build_text_encoder(ModelHandle(str(umt5_file), "clip", "wan", clip_skip=-2), torch.device("cpu"),
                                 torch.float32, WeightStore())
    a, b = encoder.encode("a cat")[0][0], earlier.encode("a cat")[0][0]
    assert not torch.allclose(a, b, atol=1e-3) and torch.equal(b[0, 10:], torch.zeros(502, 64))


def test_a_file_without_its_vocabulary_says_which_file_to_use(tmp_path):
    from safetensors.torch import save_file

    sd = text_encoder_state_dict("umt5xxl", "tiny")
    del sd["spiece_model"]
    path = tmp_path / "no-vocab.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelError, match="no 'spiece_model' tensor.*umt5_xxl_fp16.safetensors"):
        build_text_encoder(ModelHandle(str(path), "clip", "wan"), torch.device("cpu"), torch.float32, WeightStore())
