"""circuit: patching routines and syllogism datasets for checking circuit claims.

Public entry points: :func:`circuit.load_model` (a TransformerBridge in the study's
compatibility mode) and :func:`circuit.syllogisms.build_dataset`.
"""

from circuit.models import load_model

__all__ = ["load_model"]
