"""Root conftest: offline defaults, the circuit-claims pytest plugin, hypothesis profiles.

The Hugging Face libraries run offline unless ``CIRCUIT_ALLOW_DOWNLOAD=1`` asks for downloads
(``circuit.models``: a hub name not in the local cache is then fetched, after a quick check
that the hub can be reached).
"""

import os

if os.environ.get("CIRCUIT_ALLOW_DOWNLOAD") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile(
    "fast",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("fast"),
    derandomize=True,
    print_blob=True,
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "fast")
)
