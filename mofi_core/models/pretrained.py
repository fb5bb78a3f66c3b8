"""Weights you bring: a local open_clip-format checkpoint, read without unpickling.

A checkpoint is ``.safetensors`` or a ``torch.save``d state dict (optionally under a
``state_dict`` key, as open_clip's training writes it) read with ``weights_only=True``: tensors
and plain containers only, never an arbitrary pickled object. Keys are open_clip ``CLIP`` names
(``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``logit_scale``...); a
``module.`` prefix from DistributedDataParallel is dropped. What does not fit the architecture
is one error line naming the file, how many keys are missing / unexpected / of another shape,
and an example of each.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mofi_core.models.factory import CONFIG_DIR, arch_config, build_clip


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely, or does not fit the architecture."""


def read_checkpoint(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors / the unpickler refuse in many ways: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot be read as weights only ({first}); save a state dict "
            "(torch.save(model.state_dict(), ...)) or a .safetensors file") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a state dict of "
                              "tensors")
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} entries are not tensors (e.g. {bad[0]!r}); "
                              "expected a state dict")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Every parameter and buffer of ``model`` from ``state``, names and shapes exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: file "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        raise CheckpointError(f"{source}: does not fit the architecture: keys "
                              + "; ".join(parts) + ". Check the architecture name it was "
                              "trained with")
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own})


def clip_from_checkpoint(arch: str, path: Path | str) -> nn.Module:
    """An open_clip CLIP of architecture ``arch`` holding the file's weights."""
    clip = build_clip(arch_config(arch))
    load_into(clip, read_checkpoint(path), path)
    return clip


def register_local_configs() -> None:
    """Make mofi's own architectures (``models/configs``) known to open_clip's factory too."""
    import open_clip

    if not set(p.stem for p in CONFIG_DIR.glob("*.json")) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def import_clip(arch: str, weights: Path | str, out: Path | str,
                mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
                ) -> Path:
    """A mofi model folder (kind ``clip``) from an open_clip architecture and a local weights
    file: what ``evaluate`` compares and the registry can hold, like any trained model."""
    from mofi_core.io.hashing import file_sha256
    from mofi_core.models.artifact import default_meta, save_model

    cfg = arch_config(arch)
    clip = build_clip(cfg)
    load_into(clip, read_checkpoint(weights), weights)
    meta = default_meta("clip", arch, cfg, recipe="imported",
                        extra={"weights": Path(weights).name, "weights_sha256":
                               file_sha256(Path(weights))})
    if mean is not None or std is not None:
        from dataclasses import replace

        meta = replace(meta, mean=tuple(mean or meta.mean), std=tuple(std or meta.std))
    save_model(out, clip, meta)
    return Path(out)
