"""Params sections ``baseline`` (the control CLIP) and ``train`` (the MOFI candidates)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mofi_core.config.section import Section
from mofi_core.recipes import CONTROL_RECIPES, MOFI_RECIPES, RECIPES, RecipeSpec


class TrainConfig(Section):
    """Shared by ``baseline`` (recipe ``clip``) and ``train`` (the MOFI recipes).

    ``batch_size`` is per process and micro-batch: one optimiser step sees
    ``batch_size x grad_accum x processes`` images."""

    # where and how the loop runs; a checkpoint written under other values still resumes
    RUNTIME = ("device", "threads", "log_every", "checkpoint_every", "keep_checkpoints",
               "checkpoint_dir", "compile")

    recipe: Literal[tuple(RECIPES)]  # type: ignore[valid-type]  # rows of mofi_core/recipes.py
    model: str = Field("mofi-tiny", description="mofi or open_clip architecture (ViT-B-16...)")
    pretrained: str = Field("", description=(
        "local open_clip-format checkpoint of `model` the towers start from (.safetensors, or "
        "a state dict read with weights_only=True); empty = random init"))
    nproc_per_node: int | Literal["auto"] = Field(1, description=(
        "processes the stage command launches on this node through torch.distributed.run "
        "(elastic, standalone rendezvous), so dvc repro and the Prefect flow train on the whole "
        "node; auto = one per visible GPU (1 without a GPU). batch_size is per process"))
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # supervised / multitask head
    head: Literal["linear", "cosine"] = "linear"
    shard_head: bool = Field(False, description=(
        "split the classifier over the torchrun processes (a 2M-class head per GPU would not "
        "fit); exact: the loss and gradients equal the full head's"))
    head_scale: float = Field(16.0, gt=0, description="cosine head: logit scale")
    head_margin: float = Field(0.0, ge=0, lt=1, description="cosine head: additive margin")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    multi_label: Literal["uniform", "score", "top"] = Field("uniform", description=(
        "soft target of an image with several entities: equal weights, weights by CLIP score, "
        "or only the best-scoring entity"))
    max_labels: int = Field(8, ge=1, description="labels per image kept in the target")
    # contrastive / multitask text
    entity_text: Literal["name", "name_description"] = "name_description"
    text_source: Literal["entity", "alt_text", "mix"] = Field("entity", description=(
        "multitask: the contrastive text is the entity text, the raw alt-text, or a mix"))
    alt_text_prob: float = Field(0.5, ge=0, le=1, description="text_source=mix: alt-text share")
    loss_weights: tuple[float, float] = Field((1.0, 1.0), description=(
        "multitask: (supervised, contrastive) weights"))
    # data
    shuffle_buffer: int = Field(1000, ge=1)
    num_workers: int = Field(1, ge=0)
    resampled: bool = Field(False, description=(
        "draw shards with replacement (multi-node); resume then re-seeds instead of replaying"))
    data_in_memory: bool | Literal["auto"] = Field("auto", description=(
        "decode the training set once into memory and augment batches as tensors (no "
        "DataLoader worker) instead of streaming the shards; auto = when the data is local "
        "and its decoded images fit in 2 GiB. A result key: the sample order differs"))
    # execution
    compile: bool = Field(False, description="torch.compile the network")
    grad_checkpointing: bool = False
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    data: str = Field("", description=(
        "where the training shards are read from: empty = the stage's own input folder "
        "(data/i2e, data/ingest for baseline); s3://bucket/prefix = a dataset folder in S3 "
        "(shards/*.tar + vocab.json, e.g. written by build.publish), streamed by every rank"))
    checkpoint_dir: str = Field("", description=(
        "where checkpoints go; empty = .mofi/state/<stage>/checkpoints (git- and DVC-ignored); "
        "s3://bucket/prefix = staged there and copied to S3 after each checkpoint, resumed "
        "from S3 when the local copy is missing or older"))
    log_every: int = Field(10, ge=1)
    seed: int = 0
    device: str = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads per process; 0 = cores/processes")

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        if isinstance(self.nproc_per_node, int) and self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node {self.nproc_per_node}: at least 1, or auto")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        if min(self.loss_weights) < 0 or sum(self.loss_weights) == 0:
            raise ValueError(f"loss_weights {self.loss_weights}: both >= 0 and not both 0")
        return self

    @property
    def spec(self) -> RecipeSpec:
        """This recipe's row of the recipe table."""
        return RECIPES[self.recipe]



class BaselineConfig(TrainConfig):
    """The paper's control: always CLIP on the raw alt-text."""

    recipe: Literal[CONTROL_RECIPES] = "clip"  # type: ignore[valid-type]


class MofiTrainConfig(TrainConfig):
    """The candidates: every recipe in ``recipes`` is trained with these keys (its own DVC
    stage ``train@<recipe>``, model folder ``models/<recipe>``), then evaluated and registered.
    ``recipe`` is set per stage instance from the list (by the stage runner), never in
    params.yaml (:func:`parse_params` says so)."""

    recipes: tuple[Literal[MOFI_RECIPES], ...] = Field(  # type: ignore[valid-type]
        ("supervised", "multitask"), min_length=1, description=(
            "the MOFI recipes trained and compared with the control; multitask is the paper's "
            "final model (reports call it MOFI)"))
    recipe: Literal[MOFI_RECIPES] = "supervised"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _unique(self) -> MofiTrainConfig:
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"train.recipes lists a recipe twice: {list(self.recipes)}")
        return self

    def result_key(self) -> dict[str, Any]:
        # the list says which instances exist, not what one of them computes
        return {k: v for k, v in super().result_key().items() if k != "recipes"}
