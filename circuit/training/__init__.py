"""Training of the bundled model ``syllogism-neox``: tokenizer, corpus, model, revisions.

Run ``python -m circuit.training --out DIR`` to retrain from scratch and write the shipped
layout; ``python -m circuit.training.evaluate`` measures a saved model.
"""
