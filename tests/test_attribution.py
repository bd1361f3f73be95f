"""Direct logit attribution and the word-mover profile against the study's cache-based code."""

import pytest
import torch

from circuit.attribution import head_writes, logit_attribution, word_mover_profile
from circuit.guards import PatchingError
from circuit.metrics import logit_diff
from fixtures.tiny_model import boot, pythia_70m, save_tiny_neox, tokens_for


@pytest.fixture(scope="module", params=["tiny32", "tiny64", "pythia70"])
def model(request, tmp_path_factory):
    if request.param == "pythia70":
        return pythia_70m()
    dtype = torch.float64 if request.param == "tiny64" else torch.float32
    return boot(save_tiny_neox(tmp_path_factory.mktemp("tiny")), dtype)


def _tol(model) -> float:
    return 1e-9 if model.cfg.dtype == torch.float64 else 2e-5


def _problem(model, n=4, seq=8):
    tokens = tokens_for(model, n, seq)
    answers = tokens_for(model, n, 2, seed=11)
    return tokens, answers


def test_components_sum_to_the_logit_difference(model):
    tokens, answers = _problem(model)
    attribution = logit_attribution(model, tokens, answers)
    logits = model(tokens)
    want = logit_diff(logits, answers)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(attribution.total, want, rtol=0, atol=_tol(model) * scale)
    torch.testing.assert_close(attribution.component_sum(), want, rtol=0, atol=_tol(model) * scale)
    assert attribution.heads.shape == (4, model.cfg.n_layers, model.cfg.n_heads)
    assert attribution.heads.abs().max() > 0


def test_heads_equal_the_studys_ln_scaled_stack(model):
    """``stack_head_results`` + ``apply_ln_to_stack`` + ``tokens_to_residual_directions``
    (the notebook's ``residual_stack_to_logit_diff``), per prompt and mean."""
    tokens, answers = _problem(model)
    _, cache = model.run_with_cache(tokens)
    per_head = cache.stack_head_results(layer=-1, pos_slice=-1)
    scaled = cache.apply_ln_to_stack(per_head, layer=-1, pos_slice=-1)
    directions = model.tokens_to_residual_directions(answers)
    diff = directions[:, 0] - directions[:, 1]
    want = torch.einsum("cnd,nd->nc", scaled, diff).reshape(
        len(tokens), model.cfg.n_layers, model.cfg.n_heads
    )
    attribution = logit_attribution(model, tokens, answers)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(attribution.heads, want, rtol=0, atol=_tol(model) * scale)
    torch.testing.assert_close(
        attribution.mean_heads, want.mean(0), rtol=0, atol=_tol(model) * scale
    )
    layers, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_layer = torch.einsum(
        "cnd,nd->nc", cache.apply_ln_to_stack(layers, layer=-1, pos_slice=-1), diff
    )
    attn = per_layer[:, [i for i, label in enumerate(labels) if label.endswith("attn_out")]]
    mlp = per_layer[:, [i for i, label in enumerate(labels) if label.endswith("mlp_out")]]
    torch.testing.assert_close(attribution.attn, attn, rtol=0, atol=_tol(model) * scale)
    torch.testing.assert_close(attribution.mlp, mlp, rtol=0, atol=_tol(model) * scale)


def test_word_mover_profile_equals_the_studys_scatter(model):
    """Attention from the final position to the role positions and the head's LN-scaled output
    dotted with the answers' residual directions, as in the notebook's scatter."""
    tokens, answers = _problem(model)
    heads = [(model.cfg.n_layers - 1, 1), (1, 0)]
    right, wrong = 3, 5
    profile = word_mover_profile(model, tokens, answers, heads, right, wrong)
    _, cache = model.run_with_cache(tokens)
    per_head = cache.stack_head_results(layer=-1, pos_slice=-1)
    scaled = cache.apply_ln_to_stack(per_head, layer=-1, pos_slice=-1)
    directions = model.tokens_to_residual_directions(answers)
    for k, (layer, head) in enumerate(heads):
        pattern = cache["pattern", layer][:, head, -1]
        head_resid = scaled[layer * model.cfg.n_heads + head]
        tol = _tol(model)
        torch.testing.assert_close(profile.attn_right[:, k], pattern[:, right], rtol=0, atol=tol)
        torch.testing.assert_close(profile.attn_wrong[:, k], pattern[:, wrong], rtol=0, atol=tol)
        torch.testing.assert_close(
            profile.proj_right[:, k],
            torch.einsum("nd,nd->n", head_resid, directions[:, 0]),
            rtol=0,
            atol=tol,
        )
        torch.testing.assert_close(
            profile.proj_wrong[:, k],
            torch.einsum("nd,nd->n", head_resid, directions[:, 1]),
            rtol=0,
            atol=tol,
        )
    assert profile.correlation().shape == (2,)
    assert profile.query_position == tokens.shape[1] - 1


def test_bad_inputs_are_rejected(model):
    tokens, answers = _problem(model)
    with pytest.raises(PatchingError, match="head list is empty"):
        word_mover_profile(model, tokens, answers, [], 3)
    with pytest.raises(PatchingError, match="out of range"):
        word_mover_profile(model, tokens, answers, [(model.cfg.n_layers, 0)], 3)
    with pytest.raises(PatchingError, match="position 8 out of range"):
        word_mover_profile(model, tokens, answers, [(0, 0)], 8)
    with pytest.raises(PatchingError, match="answers must be"):
        logit_attribution(model, tokens, answers[:2])
    with pytest.raises(PatchingError, match="2-D LongTensor"):
        logit_attribution(model, tokens[0], answers)


def test_head_writes_equal_the_cache_based_clean_run(model):
    """The one per-head routine against the cache-based computation ``clean_run`` and
    ``circuit.training.attribution`` used before, written out plainly as the reference."""
    tokens, answers = _problem(model)
    logits, cache = model.run_with_cache(tokens)
    stacked = cache.stack_head_results(layer=-1, pos_slice=-1)
    scaled = cache.apply_ln_to_stack(stacked, layer=-1, pos_slice=-1)  # [L*H, n, d]
    directions = model.tokens_to_residual_directions(answers).reshape(len(tokens), 2, -1)
    shape = (len(tokens), model.cfg.n_layers, model.cfg.n_heads)
    right = torch.einsum("knd,nd->nk", scaled, directions[:, 0]).reshape(shape)
    wrong = torch.einsum("knd,nd->nk", scaled, directions[:, 1]).reshape(shape)
    attention = torch.stack(
        [cache["pattern", layer][:, :, -1, :] for layer in range(model.cfg.n_layers)], dim=1
    )
    writes = head_writes(model, tokens, answers)
    atol = 1e-9 if model.cfg.dtype == torch.float64 else 1e-4
    assert writes.right.shape == writes.wrong.shape == writes.dla.shape == shape
    assert writes.attention.shape == (*shape, tokens.shape[1])
    torch.testing.assert_close(writes.right, right, rtol=0, atol=atol)
    torch.testing.assert_close(writes.wrong, wrong, rtol=0, atol=atol)
    torch.testing.assert_close(writes.dla, right - wrong, rtol=0, atol=atol)
    torch.testing.assert_close(writes.attention, attention, rtol=0, atol=atol)
    torch.testing.assert_close(writes.logit_diff, logit_diff(logits, answers), rtol=0, atol=atol)
    torch.testing.assert_close(
        writes.dla, logit_attribution(model, tokens, answers).heads, rtol=0, atol=atol
    )
