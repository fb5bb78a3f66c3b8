"""Mutation testing of the modules behind the numbers users read (``make mutation``).

mutmut (config: ``[tool.mutmut]`` in pyproject.toml) copies the project into ``mutants/``, makes
each single-point change ("mutant") of every function in the listed modules, and runs, for each
mutant, only the tests of the listed test files that call the changed function. A mutant the
tests do not notice "survives": it is either a gap (a test is missing) or an equivalent mutant
(the change cannot alter behaviour); the equivalent ones are listed, each with its reason, in
``tools/mutation/equivalent.yaml``. :mod:`tools.mutation.score` turns mutmut's results into the
score per module (killed / (all - equivalent)) in ``reports/mutation.{json,md}``.
"""
