"""Ground truth: the routines recover a hand-planted circuit and find none in random weights.

The planted model (``fixtures/planted.py``): ``L0H0`` is a previous-token head whose output feeds
the KEY of the mover ``L2H0``, which copies the token after the marker to the answer logit.

"Comparable" is one scale-free rule, :func:`dominant`: the top head's effect is at least
``MIN_SHARE`` of the clean-minus-corrupted logit-difference gap *and* at least ``MIN_RATIO``
times the next head's. The planted paths must be dominant; the planted model's other paths
(q, v) and every routine on random models of the same shape must not be.
"""

import pytest
import torch

from circuit.attribution import logit_attribution
from circuit.metrics import LogitDiffMetric, logit_diff
from circuit.patching import patch_heads
from circuit.paths import compare_path_modes, path_patch
from fixtures.planted import MOVER_HEAD, PREV_TOKEN_HEAD, planted_neox, planted_task, random_neox

MIN_SHARE = 0.5
MIN_RATIO = 10.0
RANDOM_SEEDS = (1, 2, 3)


def dominant(effects: torch.Tensor) -> tuple[int, int] | None:
    """The head that carries the effect alone (see the module docstring), else None."""
    flat = effects.nan_to_num(0.0).flatten()
    ranked = flat.abs().argsort(descending=True)
    top, second = flat[ranked[0]], flat[ranked[1]].abs()
    if top < MIN_SHARE or top < MIN_RATIO * second:
        return None
    n_heads = effects.shape[-1]
    return int(ranked[0]) // n_heads, int(ranked[0]) % n_heads


def shares(model, task):
    """Effects of every routine as shares: of the clean-minus-corrupted logit-diff gap for
    patching, of the clean logit difference for direct logit attribution."""
    metric = LogitDiffMetric(task.answers)
    clean_ld = logit_diff(model(task.clean_tokens), task.answers).mean()
    corrupted_ld = logit_diff(model(task.corrupted_tokens), task.answers).mean()
    gap = clean_ld - corrupted_ld
    effects = {}
    for receiver_input in ("q", "k", "v"):
        values = path_patch(
            model, task.clean_tokens, task.corrupted_tokens, metric, [MOVER_HEAD], receiver_input
        )
        effects[f"path_{receiver_input}"] = (clean_ld - values) / gap
    restored = patch_heads(model, task.clean_tokens, task.corrupted_tokens, metric, "z")
    effects["activation_z"] = (restored - corrupted_ld) / gap
    attribution = logit_attribution(model, task.clean_tokens, task.answers)
    effects["attribution"] = attribution.heads.mean(dim=0) / attribution.total.mean()
    return effects


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_neox(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def task():
    return planted_task()


@pytest.fixture(scope="module")
def planted_effects(planted, task):
    return shares(planted, task)


def test_planted_task_is_solved(planted, task):
    clean = logit_diff(planted(task.clean_tokens), task.answers)
    corrupted = logit_diff(planted(task.corrupted_tokens), task.answers)
    assert (clean > 4).all()
    assert (corrupted < -4).all()


def test_direct_logit_attribution_puts_the_mover_first(planted_effects):
    assert dominant(planted_effects["attribution"]) == MOVER_HEAD


def test_activation_patching_finds_the_two_planted_heads(planted_effects):
    effects = planted_effects["activation_z"].flatten()
    n_heads = planted_effects["activation_z"].shape[-1]
    top_two = {divmod(int(index), n_heads) for index in effects.argsort(descending=True)[:2]}
    assert top_two == {MOVER_HEAD, PREV_TOKEN_HEAD}
    others = effects.clone()
    for layer, head in (MOVER_HEAD, PREV_TOKEN_HEAD):
        others[layer * n_heads + head] = 0.0
    assert effects.sort(descending=True).values[1] > MIN_SHARE
    assert others.abs().max() < effects.max() / MIN_RATIO


def test_key_path_ranks_the_previous_token_head_first(planted_effects):
    assert dominant(planted_effects["path_k"]) == PREV_TOKEN_HEAD


@pytest.mark.parametrize("receiver_input", ["q", "v"])
def test_query_and_value_paths_show_nothing_comparable(planted_effects, receiver_input):
    effects = planted_effects[f"path_{receiver_input}"]
    assert dominant(effects) is None
    top_key = planted_effects["path_k"][PREV_TOKEN_HEAD]
    assert effects.nan_to_num(0.0).abs().max() < top_key / MIN_RATIO


def test_direct_edge_agrees_on_the_planted_key_path(planted, task):
    clean = logit_diff(planted(task.clean_tokens), task.answers).mean()
    gap = clean - logit_diff(planted(task.corrupted_tokens), task.answers).mean()
    comparison = compare_path_modes(
        planted,
        task.clean_tokens,
        task.corrupted_tokens,
        LogitDiffMetric(task.answers),
        [MOVER_HEAD],
        "k",
    )
    assert dominant(comparison.direct_effect / gap) == PREV_TOKEN_HEAD
    assert dominant(comparison.freeze_effect / gap) == PREV_TOKEN_HEAD


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_weights_show_no_circuit(tmp_path_factory, task, seed):
    model = random_neox(tmp_path_factory.mktemp(f"random-{seed}"), seed=seed)
    effects = shares(model, task)
    found = {name: dominant(values) for name, values in effects.items()}
    assert all(head is None for head in found.values()), found
