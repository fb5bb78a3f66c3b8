"""encode_texts: cutting the padding after the end token must not change the embeddings."""

from __future__ import annotations

import pytest
import torch

from mofi_core.models.factory import (
    arch_config,
    build_clip,
    cuts_after_end_token,
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
    assert cuts_after_end_token(clip)
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
    assert not cuts_after_end_token(last)
    got = encode_texts(last, tokenizer, TEXTS[:9], torch.device("cpu"), 4)
    # plain encode_text in batches of 4 vs one batch of 9: BLAS kernels may round the two
    # batch shapes differently in the last bits (they do on some Intel hosts); a cut would
    # move the pooled position and differ by far more
    torch.testing.assert_close(got, reference(last, tokenizer, TEXTS[:9]), rtol=0, atol=1e-6)


def test_no_texts_gives_an_empty_tensor(tiny) -> None:
    clip, tokenizer = tiny
    assert encode_texts(clip, tokenizer, [], torch.device("cpu")).numel() == 0


@pytest.mark.parametrize("recipe", ["clip", "multitask"])
def test_training_on_the_cut_batch_gives_the_padded_batch_loss_and_gradients(recipe: str) -> None:
    """The train recipes cut the text batch after its longest end token: the loss and every
    gradient equal those of plain ``encode_text`` on the padded batch (the cut positions
    never reach the pooled output, so their parameters get exactly no gradient either way)."""
    from mofi_core.config.train import TrainConfig
    from mofi_core.train.losses import build_recipe

    cfg = arch_config("mofi-tiny")
    tokens = tokenizer_for(cfg)(TEXTS[:12])  # longest: 13 tokens of the 32
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]
    g = torch.Generator().manual_seed(3)
    images = torch.randn(12, 3, 64, 64, generator=g)
    batch = (images, tokens) if recipe == "clip" else (
        images, torch.randint(0, 5, (12, 1), generator=g), torch.ones(12, 1), tokens)

    def run(cut: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        r = build_recipe(TrainConfig(recipe=recipe, batch_size=12), cfg, 5)
        assert r.net.cut
        r.net.cut = cut
        loss, _ = r.loss(batch)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in r.model.named_parameters()
                               if p.grad is not None}

    (cut_loss, cut_grads), (full_loss, full_grads) = run(True), run(False)
    torch.testing.assert_close(cut_loss, full_loss, rtol=0, atol=1e-6)
    assert cut_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(cut_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the padding's positions: no gradient in the padded run either
    pos = full_grads["clip.positional_embedding"] if recipe == "multitask" else \
        full_grads["positional_embedding"]
    assert pos[int(tokens.argmax(-1).max()) + 1:].abs().max() == 0
