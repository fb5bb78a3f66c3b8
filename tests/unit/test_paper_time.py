"""How make paper states its time: the stages' summed time, and the invocation's wall time only
when a resume (or a pause) makes the two differ."""

from __future__ import annotations

import json

import pytest

from studies.paper import _time_line
from studies.worlds import TIMES, stage_seconds, timed


def test_timed_records_only_what_succeeded_and_keeps_earlier_entries(tmp_path):
    with timed(tmp_path, "a"):
        pass
    with pytest.raises(RuntimeError), timed(tmp_path, "b"):
        raise RuntimeError("stage failed")
    with timed(tmp_path, "c"):
        pass
    held = stage_seconds(tmp_path)
    assert set(held) == {"a", "c"} and all(v >= 0 for v in held.values())
    assert json.loads((tmp_path / TIMES).read_text()) == held
    assert stage_seconds(tmp_path / "nothing ran here") == {}


@pytest.mark.parametrize(("total", "wall", "line"), [
    (3000.0, 3050.0, "50 min of stage time on this machine"),
    (3000.0, 3301.0, "50 min of stage time on this machine (this invocation's wall time: 55 min)"),
    (3000.0, 200.0, "50 min of stage time on this machine (this invocation's wall time: 3 min)"),
    (None, 125.0, "125 s on this machine"),
])
def test_time_line(total, wall, line):
    assert _time_line({"stage_seconds": total, "seconds": wall}) == line
