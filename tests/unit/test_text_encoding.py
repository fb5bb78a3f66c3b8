"""encode_texts: cutting the padding after the end token must not change the embeddings."""

from __future__ import annotations

import pytest
import torch

from mofi_core.models.factory import (
    _cuts_after_end_token,
    arch_config,
    build_clip,
    encode_texts,
    tokenizer_for,
)

# lengths from 3 tokens to the context's end (the last ones are truncated by the tokenizer)
TEXTS = [f"a photo of {'word ' * (i % 11)}number {i}." for i in range(40)] + [
    "x " * 200, "", "ü ∑ 漢字 emoji 🙂"]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    cfg = arch_config("mofi-tiny")
    return build_clip(cfg).eval(), tokenizer_for(cfg)


def reference(clip: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.normalize(clip.encode_text(tokenizer(texts)), dim=-1)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_cut_padding_gives_encode_text_embeddings_in_input_order(tiny, batch_size: int) -> None:
    clip, tokenizer = tiny
    assert _cuts_after_end_token(clip)
    got = encode_texts(clip, tokenizer, TEXTS, torch.device("cpu"), batch_size)
    want = reference(clip, tokenizer, TEXTS)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # a row cut to 3 tokens and the one truncated at the context length both match
    assert (got - want).abs().max(dim=1).values.max() < 1e-5


def test_models_that_pool_elsewhere_get_plain_encode_text(tiny) -> None:
    _, tokenizer = tiny
    torch.manual_seed(1)
    cfg = arch_config("mofi-tiny")
    cfg["text_cfg"]["pool_type"] = "last"  # the pooled position would move if padding were cut
    last = build_clip(cfg).eval()
    assert not _cuts_after_end_token(last)
    got = encode_texts(last, tokenizer, TEXTS[:9], torch.device("cpu"), 4)
    # plain encode_text in batches of 4 vs one batch of 9: BLAS kernels may round the two
    # batch shapes differently in the last bits (they do on some Intel hosts); a cut would
    # move the pooled position and differ by far more
    torch.testing.assert_close(got, reference(last, tokenizer, TEXTS[:9]), rtol=0, atol=1e-6)


def test_no_texts_gives_an_empty_tensor(tiny) -> None:
    clip, tokenizer = tiny
    assert encode_texts(clip, tokenizer, [], torch.device("cpu")).numel() == 0
