"""circuit: patching routines, syllogism datasets and claim verdicts for transformer circuits.

Public entry points: :func:`circuit.load_model` (a TransformerBridge in the study's
compatibility mode), :func:`circuit.syllogisms.build_dataset`, the claim pipeline
(:mod:`circuit.pipeline`) and the pytest plugin (:mod:`circuit.pytest_plugin`).
``load_model`` is imported on first use, so that importing the plugin stays cheap.
"""

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from circuit.models import load_model

        return load_model
    raise AttributeError(f"module 'circuit' has no attribute {name!r}")
