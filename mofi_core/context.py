"""What a stage function gets beside its params section (:class:`StageContext`).

Its own module, below the stage modules and the runner alike: a stage names the type without
importing the runner that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from mofi_core import tracking
from mofi_core.config.load import Params
from mofi_core.config.section import Section
from mofi_core.io.layout import Layout
from mofi_core.io.storage import StageStorage
from mofi_core.stages import StageSpec

S = TypeVar("S", bound=Section)


@dataclass
class StageContext(Generic[S]):
    """What a stage function gets beside its params section: where things are, where to log."""

    spec: StageSpec
    layout: Layout
    tracker: tracking.Tracker
    artifacts: list[Path] = field(default_factory=list)  # logged to the run at the end
    storage: StageStorage | None = None  # set when a storage root (s3://) is configured
    params: Params | None = None  # every section: for the keys in the row's ``also_params``
