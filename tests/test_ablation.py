"""Batched head ablation equals the plain hook implementation, and proves itself.

``circuit.ablation.ablate_heads`` runs many head masks per forward through
``circuit.engine``; ``reference_ablate_heads`` runs one bridge forward per mask with
``blocks.{l}.attn.hook_z`` hooks. They must agree within 1e-5 (relative to the values'
scale) on the bundled model and on ``random:pythia-70m``, for every ablation method and
source, at all positions and at chosen positions.
"""

import pytest
import torch

from circuit import ablation as ablation_module
from circuit.ablation import (
    Ablation,
    AblationStats,
    ablate_heads,
    derangement,
    reference_ablate_heads,
)
from circuit.guards import PatchingError, PatchNotApplied
from circuit.metrics import normalised_metric
from circuit.syllogisms import build_dataset

ABLATIONS = [
    Ablation("mean", "clean"),
    Ablation("mean", "corrupted"),
    Ablation("resample", "clean"),
    Ablation("resample", "corrupted"),
    Ablation("zero"),
]


def _close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.to(want), want, rtol=0, atol=atol * scale)


class Problem:
    """A few syllogism prompts on a model, the normalised metric and head masks."""

    def __init__(self, model, n_pairs: int, n_masks: int, seed: int = 0) -> None:
        self.model = model
        data = build_dataset(model, "unfiltered", seed=42, n_pairs=n_pairs)
        self.roles = data.roles
        self.clean, self.corrupted = data.clean_tokens, data.corrupted_tokens
        clean_logits, corrupted_logits = model(self.clean), model(self.corrupted)
        self.metric = normalised_metric(clean_logits, corrupted_logits, data.answers)
        layers, heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        generator = torch.Generator().manual_seed(seed)
        masks = torch.rand(n_masks, layers, heads, generator=generator) < 0.4
        masks[0] = False  # nothing ablated: the clean run
        masks[1] = True  # everything ablated
        masks[2] = False
        masks[2, layers - 1, 0] = True  # one head of the last layer
        self.masks = masks

    def both(self, ablation: Ablation, **kwargs):
        stats = AblationStats()
        fast = ablate_heads(
            self.model, self.clean, self.corrupted, self.metric, self.masks, ablation,
            stats=stats, **kwargs,
        )  # fmt: skip
        want = reference_ablate_heads(
            self.model, self.clean, self.corrupted, self.metric, self.masks, ablation
        )
        return fast, want, stats


@pytest.fixture(scope="module")
def bundled_problem(bundled_model):
    return Problem(bundled_model, n_pairs=3, n_masks=10)


@pytest.fixture(scope="module")
def pythia_problem(random_pythia_70m):
    try:
        return Problem(random_pythia_70m, n_pairs=2, n_masks=5, seed=1)
    except ValueError as error:  # no usable words under this tokenizer
        pytest.skip(f"no syllogism dataset on random:pythia-70m: {error}")


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: f"{a.method}-{a.source}")
def test_equals_hooks_on_bundled(bundled_problem, ablation):
    fast, want, stats = bundled_problem.both(ablation)
    assert fast.shape == (bundled_problem.clean.shape[0], len(bundled_problem.masks))
    _close(fast, want)
    assert stats.rows == fast.numel()  # every mask ran in the batch, once per prompt
    assert (want[:, 1] - want[:, 0]).abs().max() > 1e-2, "ablating everything changed nothing"


def test_equals_hooks_at_chosen_positions(bundled_problem):
    roles = bundled_problem.roles
    ablation = Ablation("mean", "clean", (roles["descriptor"], roles["final"]))
    fast, want, _ = bundled_problem.both(ablation)
    _close(fast, want)
    everywhere, _, _ = bundled_problem.both(Ablation("mean", "clean"))
    assert not torch.allclose(fast, everywhere)  # positions do matter


@pytest.mark.parametrize("ablation", [ABLATIONS[0], ABLATIONS[3], ABLATIONS[4]], ids=str)
def test_equals_hooks_on_pythia_70m(pythia_problem, ablation):
    fast, want, _ = pythia_problem.both(ablation)
    _close(fast, want)


def test_batch_mean_and_chunking(bundled_problem):
    ablation = Ablation("mean", "clean")
    full, _, _ = bundled_problem.both(ablation)
    p = bundled_problem
    small = ablate_heads(
        p.model, p.clean, p.corrupted, p.metric, p.masks, ablation, memory_budget=2**16
    )
    _close(small, full)
    mean = ablate_heads(p.model, p.clean, p.corrupted, p.metric, p.masks, ablation, False)
    _close(mean, full.mean(dim=0))


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 10, 57):
        target = derangement(n, seed=n)
        assert sorted(target.tolist()) == list(range(n))
        assert not bool((target == torch.arange(n)).any())


def test_an_ablation_that_does_not_take_effect_is_caught(bundled_problem, monkeypatch):
    """The guard re-runs masks through the bridge's hooks: a fast forward whose edits were
    lost (here: masked to no site at all) disagrees with the hooked model and raises."""
    edits = ablation_module._edits

    def lost(masks, values, where, *args):
        return edits(masks, values, torch.zeros_like(where), *args)

    monkeypatch.setattr(ablation_module, "_edits", lost)
    p = bundled_problem
    with pytest.raises(PatchNotApplied, match="ablation mask"):
        ablate_heads(p.model, p.clean, p.corrupted, p.metric, p.masks, Ablation("zero"))


def test_bad_inputs(bundled_problem):
    p = bundled_problem
    with pytest.raises(PatchingError, match="unknown ablation"):
        Ablation("median")
    with pytest.raises(PatchingError, match="ablation source"):
        Ablation("mean", "noise")
    with pytest.raises(PatchingError, match="masks must be"):
        ablate_heads(p.model, p.clean, p.corrupted, p.metric, p.masks[:, :1], Ablation("zero"))
    with pytest.raises(PatchingError, match="bool"):
        ablate_heads(p.model, p.clean, p.corrupted, p.metric, p.masks.int(), Ablation("zero"))
    with pytest.raises(PatchingError, match="outside"):
        ablate_heads(
            p.model, p.clean, p.corrupted, p.metric, p.masks, Ablation("zero", "clean", (99,))
        )


@pytest.mark.parametrize("ablation", [ABLATIONS[0], ABLATIONS[2]], ids=str)
def test_equals_hooks_on_a_sequential_block(tiny_sequential, ablation):
    """Attention then MLP in sequence (no parallel-block shortcut): random prompts."""
    from fixtures.tiny_model import tokens_for

    model = tiny_sequential
    clean = tokens_for(model, 4, 7, seed=3)
    corrupted = clean.clone()
    corrupted[:, 2] = tokens_for(model, 4, 1, seed=4)[:, 0]
    shift = model(clean)[:, -1] - model(corrupted)[:, -1]
    answers = torch.stack([shift.argmax(-1), shift.argmin(-1)], dim=-1)
    metric = normalised_metric(model(clean), model(corrupted), answers)
    layers, heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    masks = torch.rand(6, layers, heads, generator=torch.Generator().manual_seed(5)) < 0.5
    masks[:, 0] = True  # a shared first layer, then masks that differ
    fast = ablate_heads(model, clean, corrupted, metric, masks, ablation)
    _close(fast, reference_ablate_heads(model, clean, corrupted, metric, masks, ablation))


@pytest.mark.parametrize("ablation", [ABLATIONS[0], ABLATIONS[3]], ids=str)
def test_equals_hooks_with_shared_layers(bundled_problem, ablation):
    """Masks as a sufficiency sweep has them: the first layers wholly ablated by every mask
    (run once, attention skipped), then masks that differ (the head-write shortcut)."""
    p = bundled_problem
    masks = torch.ones(5, 4, 8, dtype=torch.bool)
    for row, kept in enumerate([(1, 3, 6), (2, 2, 0), (1, 1, 7), (2, 3, 3), (0, 0, 0)]):
        layer, first, second = kept
        masks[row, layer, [first, second]] = False
    masks[:4, 0] = True
    fast = ablate_heads(p.model, p.clean, p.corrupted, p.metric, masks, ablation)
    _close(fast, reference_ablate_heads(p.model, p.clean, p.corrupted, p.metric, masks, ablation))
    for count in (1, 4):  # one mask; four that share layer 0
        part = ablate_heads(p.model, p.clean, p.corrupted, p.metric, masks[:count], ablation)
        _close(part, fast[:, :count])


def test_the_proof_tolerance_follows_the_normalised_metric_scale():
    """A normalised metric divides by the clean-corrupted gap; on random weights that gap is
    about 0.01 logits, so the proof's tolerance grows by 1/gap (and never shrinks below 1x)."""
    from circuit.ablation import _metric_scale
    from circuit.metrics import LogitDiffMetric

    answers = torch.tensor([[1, 2]])
    assert _metric_scale(LogitDiffMetric(answers)) == 1.0
    assert _metric_scale(LogitDiffMetric(answers, 0.02, 0.01)) == pytest.approx(100.0)
    assert _metric_scale(LogitDiffMetric(answers, 7.0, -7.0)) == 1.0
