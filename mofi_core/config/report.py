"""Params section ``report``: label quality and the paper's directions."""

from __future__ import annotations

from pydantic import Field

from mofi_core.config.section import Section


class ReportConfig(Section):
    require_paper_direction: bool = Field(
        False, description="fail the stage if any of the paper's directions this run can check "
                           "does not hold (mofi_core/claims.py; a regression check for the demo "
                           "world)")
