"""A dataset's summary on a model: filters' kept/total and the clean/corrupted baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tabulate import tabulate

from circuit.dataset import SyllogismDataset
from circuit.metrics import logit_diff

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class Baselines:
    """Mean logit difference (right minus wrong) on clean and on corrupted prompts."""

    clean: float
    corrupted: float
    clean_accuracy: float


def baselines(model: TransformerBridge, dataset: SyllogismDataset) -> Baselines:
    """Run the clean and corrupted prompts once and read the final-position logit diffs."""
    with torch.inference_mode():
        device = model.cfg.device
        clean = logit_diff(model(dataset.clean_tokens.to(device)), dataset.answers).cpu()
        corrupted = logit_diff(model(dataset.corrupted_tokens.to(device)), dataset.answers).cpu()
    values = torch.stack([clean.mean(), corrupted.mean(), (clean > 0).double().mean()])
    return Baselines(*values.tolist())


def summary_table(dataset: SyllogismDataset, measured: Baselines) -> str:
    """The filters and baselines as a table."""
    rows = [[f.name, f"{f.kept}/{f.total}"] for f in dataset.filters]
    rows += [
        ["prompts (pairs x 2)", str(len(dataset))],
        ["clean logit diff (mean)", f"{measured.clean:.4f}"],
        ["corrupted logit diff (mean)", f"{measured.corrupted:.4f}"],
        ["clean accuracy (right > wrong)", f"{measured.clean_accuracy:.3f}"],
        ["roles", ", ".join(f"{k}={v}" for k, v in dataset.roles.items())],
    ]
    return tabulate(rows, headers=[f"{dataset.variant} (seed {dataset.seed})", "value"])
