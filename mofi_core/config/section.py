"""What every params section is: a frozen pydantic model whose unknown keys are errors.

A section's keys decide what its stage computes; a few only decide how it runs (worker counts,
threads, device, batch sizes of inference, logging and checkpoint cadence) and never change a
result. Those are listed in the section's ``RUNTIME`` and live in ``params.yaml`` under the
top-level ``runtime:`` section (``runtime.train.log_every``), which no ``dvc.yaml`` stage
tracks. :meth:`Section.result_key` is what identifies a result (resume fingerprints): the
section minus its runtime keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names the key and the fix."""


class Section(BaseModel):
    # no NaN or infinity anywhere: `lr: .inf` is an error, not a run that diverges
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    RUNTIME: ClassVar[tuple[str, ...]] = ()  # keys that never change a result (runtime.<section>)

    def result_key(self) -> dict[str, Any]:
        """The keys that decide what the stage computes (JSON-able; runtime keys left out)."""
        return self.model_dump(mode="json", exclude=set(self.RUNTIME))
