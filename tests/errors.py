"""How tests hold an error message: to its substance, not its words.

A refusal must be one line naming what it is about (the key, the path, the offending value or
sample) and, usually, what to do; its exact wording is the project's to change. Exact sentences
are asserted only where the project promises them: the one-line errors of the bad-input matrix
(``tests/system/test_hostile_inputs.py``) and the reject reasons recorded in ``rejects.parquet``.
"""

from __future__ import annotations


def names(err: BaseException | str, *parts: str) -> str:
    """Assert that the message is one line and names each of ``parts``; returns it."""
    text = str(err)
    assert text and "\n" not in text, f"not one line: {text!r}"
    missing = [p for p in parts if p not in text]
    assert not missing, f"{text!r} does not name {missing}"
    return text
