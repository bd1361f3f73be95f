"""Option defaults the pytest plugin reads without importing the claim pipeline."""

TABLE_LAYOUTS: tuple[str, ...] = ("auto", "full", "compact")
"""``--claims-table``: ``full`` (every column), ``compact`` (fits 100 columns), ``auto``."""

BASELINE_NAME = "baseline"
"""``--claims-baseline-save`` / ``--claims-baseline-compare`` without a name."""

BASELINE_DIRECTORY = ".claims-baselines"
"""Where baselines are stored, relative to the rootdir (ini ``claims_baseline_dir``)."""

BASELINE_RULES = "verdict,overlap"
"""``--claims-baseline-fail`` by default: a changed verdict or disjoint intervals fail."""
