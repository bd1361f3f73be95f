"""Property-based fuzzing of claims: judge each claim on datasets that hypothesis draws.

``pools`` (word pools and a template family that keeps the roles), ``strategies`` (whole
dataset recipes), ``recipes`` (the checks a draw must pass, JSON round trip), ``engine``
(draw, measure, judge with the run, shrink a failure), ``report`` (the terminal table and the
JSON report's ``fuzz`` key), ``repro`` (``python -m circuit fuzz-repro``) and ``pytest_fuzz``
(the ``-fuzz`` test items). ``docs/fuzzing.md`` describes what is drawn and the rule.
"""
