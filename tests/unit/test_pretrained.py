"""Weights you bring: checkpoint files made here (a seeded random-init model, saved and read
back), never downloaded; read without unpickling; a file that does not fit is one line."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mofi_core.cli import app
from mofi_core.config.score import ScoreConfig
from mofi_core.config.train import TrainConfig
from mofi_core.models.artifact import LoadedModel
from mofi_core.models.factory import arch_config, build_clip
from mofi_core.models.pretrained import (
    CheckpointError,
    clip_from_checkpoint,
    load_into,
    read_checkpoint,
)
from mofi_core.train.losses import build_recipe

ARCH = "mofi-tiny"


@pytest.fixture(scope="module")
def clip_and_files(tmp_path_factory):
    """A seeded random-init CLIP and its weights as .safetensors and as a torch state dict
    (wrapped as open_clip's trainer saves it: {'state_dict': ...} with DDP's 'module.')."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(123)
    clip = build_clip(arch_config(ARCH)).eval()
    state = {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(root / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               root / "w.pt")
    return clip, root


def _images(n=4):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_both_formats_read_back_to_the_same_weights(clip_and_files, name):
    clip, root = clip_and_files
    assert _same_state(clip_from_checkpoint(ARCH, root / name), clip)


def test_a_pickled_object_is_refused_not_unpickled(tmp_path):
    torch.save(build_clip(arch_config(ARCH)), tmp_path / "whole_model.pt")  # a module object
    with pytest.raises(CheckpointError, match=r"whole_model\.pt: cannot be read as weights "
                                              r"only .*save a state dict"):
        read_checkpoint(tmp_path / "whole_model.pt")
    torch.save({"weight": torch.zeros(2), "step": 7}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"1 entries are not tensors \(e\.g\. 'step'\)"):
        read_checkpoint(tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "absent.safetensors")


def test_keys_or_shapes_that_do_not_fit_are_one_line(clip_and_files, tmp_path):
    _, root = clip_and_files
    state = read_checkpoint(root / "w.safetensors")
    state.pop("logit_scale")
    state["extra.weight"] = torch.zeros(1)
    state["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_into(build_clip(arch_config(ARCH)), state, "f.safetensors")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("f.safetensors: does not fit the architecture")
    assert "1 missing (e.g. logit_scale)" in msg and "1 unexpected (e.g. extra.weight)" in msg
    assert "1 of another shape (e.g. visual.proj: file (3, 3)" in msg
    result = CliRunner().invoke(app, ["model", "import", "ViT-B-32", str(root / "w.pt"),
                                      "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "does not fit the architecture" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("recipe", ["clip", "supervised", "multitask"])
def test_training_starts_from_the_file(clip_and_files, recipe):
    clip, root = clip_and_files
    cfg = TrainConfig(recipe=recipe, model=ARCH, pretrained=str(root / "w.safetensors"))
    torch.manual_seed(0)  # another seed than the file's: the weights must come from the file
    built = build_recipe(cfg, arch_config(ARCH), num_classes=5)
    fresh = build_recipe(TrainConfig(recipe=recipe, model=ARCH), arch_config(ARCH), 5)

    def towers(r):  # the CLIP (or, supervised, the image tower alone) inside a recipe's model
        if recipe == "clip":
            return r.model
        return r.model.visual if recipe == "supervised" else r.model.clip

    want = clip.visual if recipe == "supervised" else clip
    assert _same_state(towers(built), want)
    assert not _same_state(towers(fresh), want)  # without the file: random init


def test_an_imported_folder_embeds_like_the_original(clip_and_files, tmp_path):
    clip, root = clip_and_files
    result = CliRunner().invoke(app, ["model", "import", ARCH, str(root / "w.pt"),
                                      "--out", str(tmp_path / "models" / "mine")])
    assert result.exit_code == 0, result.output
    loaded = LoadedModel.load(tmp_path / "models" / "mine", torch.device("cpu"))
    assert loaded.meta.recipe == "imported" and loaded.has_text_tower
    assert len(loaded.meta.extra["weights_sha256"]) == 64
    batch = torch.stack([loaded.transform(im) for im in _images()])
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.model.encode_image(batch).numpy(),
                                      clip.encode_image(batch).numpy())


def test_score_loads_a_local_checkpoint_file(clip_and_files):
    from mofi_core.curate.score import _load_open_clip

    clip, root = clip_and_files
    model, preprocess, tokenizer = _load_open_clip(
        ScoreConfig(model=ARCH, pretrained=str(root / "w.safetensors")))
    assert _same_state(model, clip)
    batch = torch.stack([preprocess(im) for im in _images(2)])
    with torch.no_grad():
        assert torch.equal(model.encode_image(batch), clip.encode_image(batch))
    assert tokenizer(["a photo"]).shape[0] == 1
    bad = ScoreConfig(model="ViT-B-32", pretrained=str(root / "w.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        _load_open_clip(bad)


def test_extra_models_join_the_comparison_by_name(tmp_path):
    from types import SimpleNamespace

    from mofi_core.config.load import apply_overrides, parse_params
    from mofi_core.evaluate.run import compared_models
    from mofi_core.io.layout import Layout

    def ctx(extra):  # the real params object, as the stage runner passes it
        params = parse_params(apply_overrides({}, {
            "train.recipes": ["supervised", "multitask"], "evaluate.extra_models": list(extra)}))
        return SimpleNamespace(layout=Layout(tmp_path), params=params)

    models = compared_models(ctx(("openai-b32",)))
    assert list(models) == ["supervised", "multitask", "openai-b32", "baseline"]
    assert models["openai-b32"] == Layout(tmp_path).model("openai-b32")
    with pytest.raises(ValueError, match=r"extra_models \['multitask'\] clash"):
        compared_models(ctx(("multitask",)))
