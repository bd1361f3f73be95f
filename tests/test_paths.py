"""circuit.paths: equal to the study's path patching and to transformer_lens's direct paths."""

import pytest
import torch

from circuit.engine import kernels
from circuit.guards import PatchingError
from circuit.metrics import LogitDiffMetric, MetricError, normalised_metric
from circuit.paths import (
    PatchNotAppliedError,
    PathPatchError,
    compare_path_modes,
    path_patch,
    path_patch_detailed,
)
from fixtures.planted import random_neox, random_pythia_70m
from fixtures.references import direct_path_patch, study_path_patch, tl_direct_path_patch
from fixtures.tiny_model import boot, save_tiny_neox

TOLERANCE = 1e-5


def assert_equal_with_nans(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan())
    torch.testing.assert_close(actual.nan_to_num(), expected.nan_to_num(), atol=TOLERANCE, rtol=0.0)


def make_task(vocab: int, n: int, seq: int, seed: int):
    """Random prompts; the corrupted ones differ at two positions; random answer pairs."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n, seq), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, vocab, (n,), generator=generator)
    corrupted[:, seq - 3] = torch.randint(1, vocab, (n,), generator=generator)
    answers = torch.randint(1, vocab, (n, 2), generator=generator)
    return clean, corrupted, LogitDiffMetric(answers)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 layers x 4 heads, randomised LayerNorms (folding exercised), weights large enough
    (std 0.2) that path effects are ~0.1, far above the 1e-5 tolerance."""
    return random_neox(
        tmp_path_factory.mktemp("tiny"), seed=1, vocab_size=300, initializer_range=0.2
    )


@pytest.fixture(scope="module")
def task(tiny):
    return make_task(tiny.cfg.d_vocab, n=3, seq=8, seed=2)


RECEIVER_SETS = [[(2, 1)], [(1, 0), (2, 3)], [(2, 0), (2, 2)]]


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
@pytest.mark.parametrize("receivers", RECEIVER_SETS, ids=str)
def test_freeze_equals_study_algorithm(tiny, task, receivers, receiver_input):
    clean, corrupted, metric = task
    expected = study_path_patch(tiny, clean, corrupted, metric, receivers, receiver_input)
    actual = path_patch(tiny, clean, corrupted, metric, receivers, receiver_input)
    assert_equal_with_nans(actual, expected)
    assert actual[: max(layer for layer, _ in receivers)].isfinite().all()


@pytest.mark.parametrize(
    "receiver_input",
    ["q", pytest.param("k", marks=pytest.mark.slow), pytest.param("v", marks=pytest.mark.slow)],
)
def test_direct_equals_transformer_lens(tiny, task, receiver_input):
    clean, corrupted, metric = task
    expected = tl_direct_path_patch(tiny, clean, corrupted, metric, (2, 1), receiver_input)
    actual = path_patch(tiny, clean, corrupted, metric, [(2, 1)], receiver_input, mode="direct")
    assert_equal_with_nans(actual, expected)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_direct_with_several_receivers_equals_reference(tiny, task, receiver_input):
    clean, corrupted, metric = task
    receivers = [(1, 0), (2, 3)]
    expected = direct_path_patch(tiny, clean, corrupted, metric, receivers, receiver_input)
    actual = path_patch(tiny, clean, corrupted, metric, receivers, receiver_input, mode="direct")
    assert_equal_with_nans(actual, expected)


@pytest.mark.parametrize("mode", ["freeze", "direct"])
def test_per_prompt_values_and_their_mean(tiny, task, mode):
    clean, corrupted, metric = task
    receivers = [(1, 0), (2, 3)]
    reference = study_path_patch if mode == "freeze" else direct_path_patch
    expected = reference(
        tiny, clean, corrupted, metric.with_per_prompt(True), receivers, "k", per_prompt=True
    )
    actual = path_patch(tiny, clean, corrupted, metric, receivers, "k", mode, per_prompt=True)
    assert actual.shape == (clean.shape[0], 3, 4)
    assert_equal_with_nans(actual, expected)
    mean = path_patch(tiny, clean, corrupted, metric, receivers, "k", mode)
    assert_equal_with_nans(actual.mean(dim=0), mean)


def test_normalised_metric_and_generic_callable(tiny, task):
    clean, corrupted, metric = task
    normalised = normalised_metric(tiny(clean), tiny(corrupted), metric.answers)
    expected = study_path_patch(tiny, clean, corrupted, normalised, [(2, 1)], "q")
    assert_equal_with_nans(path_patch(tiny, clean, corrupted, normalised, [(2, 1)], "q"), expected)

    def reads_an_earlier_position(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 3, 7] - logits[:, -1, 5]).mean()

    expected = study_path_patch(tiny, clean, corrupted, reads_an_earlier_position, [(2, 1)], "v")
    actual = path_patch(tiny, clean, corrupted, reads_an_earlier_position, [(2, 1)], "v")
    assert_equal_with_nans(actual, expected)


def test_chunking_does_not_change_results(tiny, task):
    clean, corrupted, metric = task
    whole = path_patch(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "v")
    one_sender_per_chunk = path_patch_detailed(
        tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "v", chunk_bytes=1
    )
    assert one_sender_per_chunk.evidence.sender_chunks == 2 * 4  # the null row rides along
    assert_equal_with_nans(one_sender_per_chunk.values, whole)


def test_sender_in_a_receiver_layer_reaches_only_later_receivers(tiny, task):
    """Documented semantics: sender (1, h) cannot reach receiver (1, 0), only (2, 3)."""
    clean, corrupted, metric = task
    both = path_patch(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "q")
    later_only = path_patch(tiny, clean, corrupted, metric, [(2, 3)], "q")
    torch.testing.assert_close(both[1], later_only[1], atol=TOLERANCE, rtol=0.0)
    assert not torch.allclose(both[0], later_only[0], atol=TOLERANCE)


@pytest.mark.parametrize("mode", ["freeze", "direct"])
def test_evidence_proves_the_patch(tiny, task, mode):
    clean, corrupted, metric = task
    result = path_patch_detailed(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "k", mode)
    evidence = result.evidence
    assert evidence.outside_change == 0.0
    assert evidence.reproduction_error < TOLERANCE
    # one unhooked bridge run proves the functional forward, then the hooked re-run(s)
    assert evidence.model_forwards == (3 if mode == "freeze" else 2)
    assert evidence.verified_sender is not None
    assert evidence.verification_error < TOLERANCE
    assert evidence.receiver_change[2:].isnan().all()
    assert (evidence.receiver_change[:2] > 0).all()
    base_tokens = clean if mode == "freeze" else corrupted
    torch.testing.assert_close(evidence.base_value, metric(tiny(base_tokens)), atol=1e-5, rtol=0)


def test_verification_with_a_generic_metric_uses_every_prompt(tiny, task):
    clean, corrupted, metric = task

    def mean_logit_diff(logits: torch.Tensor) -> torch.Tensor:
        return metric(logits)

    result = path_patch_detailed(tiny, clean, corrupted, mean_logit_diff, [(2, 1)], "v")
    assert result.evidence.verification_error < TOLERANCE
    unverified = path_patch_detailed(
        tiny, clean, corrupted, mean_logit_diff, [(2, 1)], "v", verify=False
    )
    assert unverified.evidence.verified_sender is None
    assert unverified.evidence.model_forwards == 1


def _zero_mlp(w, layer, x):
    """A wrong MLP hidden layer (all zeros) for the engine's kernels."""
    return x.new_zeros(x[..., 0].numel(), w.d_mlp)


def test_a_fast_path_that_drifts_from_the_model_is_caught(tiny, task, monkeypatch):
    """A wrong MLP in the engine: the unpatched row no longer reproduces the bridge."""
    clean, corrupted, metric = task
    monkeypatch.setattr(kernels, "mlp_hidden", _zero_mlp)
    with pytest.raises(PatchNotAppliedError, match="does not reproduce the model"):
        path_patch(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "q")


def test_the_reproduction_proof_reruns_a_few_prompts(tiny, monkeypatch):
    """With the logit-difference metric the unhooked bridge re-runs the first
    ``VERIFY_PROMPTS`` base prompts, whose values the unpatched row must reproduce; a drifting
    fast path is still caught there."""
    import circuit.paths as paths

    clean, corrupted, metric = make_task(tiny.cfg.d_vocab, n=7, seq=8, seed=6)
    rows = []
    handle = tiny.embed.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    try:
        result = path_patch_detailed(tiny, clean, corrupted, metric, [(2, 1)], "q", verify=False)
    finally:
        handle.remove()
    assert rows == [paths.VERIFY_PROMPTS]
    assert result.evidence.reproduction_error < TOLERANCE
    monkeypatch.setattr(kernels, "mlp_hidden", _zero_mlp)
    with pytest.raises(PatchNotAppliedError, match="does not reproduce the model"):
        path_patch(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "q")


@pytest.mark.parametrize("mode", ["freeze", "direct"])
def test_a_patch_that_is_silently_dropped_is_caught(tiny, task, monkeypatch, mode):
    """Receivers fed their unpatched inputs (empty head masks, no first-layer write): the
    hooked re-run of one sender disagrees, or no receiver input moved at all."""
    import circuit.paths as paths

    def no_heads(w, heads, n_rows=1):
        return torch.zeros(n_rows, 1, w.n_heads, 1, dtype=torch.bool)

    def no_write(w, base, layer, heads, patched, start_pos=0):
        rows = next(iter(patched.values())).shape
        n = base.tokens.shape[0]
        return torch.zeros(rows[0] // n, n, rows[1], w.d_model)

    clean, corrupted, metric = task
    monkeypatch.setattr(paths, "head_mask", no_heads)
    monkeypatch.setattr(paths, "head_write", no_write)
    with pytest.raises(PatchNotAppliedError, match=r"hooked run gives a metric|no sender changed"):
        path_patch(tiny, clean, corrupted, metric, [(1, 0), (2, 3)], "k", mode)


@pytest.fixture(scope="module")
def tiny_sequential(tmp_path_factory):
    """3 layers x 4 heads, sequential blocks (``use_parallel_residual=False``)."""
    return boot(save_tiny_neox(tmp_path_factory.mktemp("sequential"), parallel=False))


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
@pytest.mark.parametrize("receivers", RECEIVER_SETS, ids=str)
def test_freeze_equals_study_algorithm_on_sequential_blocks(
    tiny_sequential, receivers, receiver_input
):
    clean, corrupted, metric = make_task(tiny_sequential.cfg.d_vocab, n=3, seq=8, seed=2)
    expected = study_path_patch(
        tiny_sequential, clean, corrupted, metric, receivers, receiver_input
    )
    actual = path_patch(tiny_sequential, clean, corrupted, metric, receivers, receiver_input)
    assert_equal_with_nans(actual, expected)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_direct_equals_reference_on_sequential_blocks(tiny_sequential, receiver_input):
    clean, corrupted, metric = make_task(tiny_sequential.cfg.d_vocab, n=3, seq=8, seed=2)
    receivers = [(1, 0), (2, 3)]
    expected = direct_path_patch(
        tiny_sequential, clean, corrupted, metric, receivers, receiver_input
    )
    actual = path_patch(
        tiny_sequential, clean, corrupted, metric, receivers, receiver_input, "direct"
    )
    assert_equal_with_nans(actual, expected)


def test_compare_modes(tiny, task):
    clean, corrupted, metric = task
    comparison = compare_path_modes(tiny, clean, corrupted, metric, [(2, 1)], "k")
    freeze = path_patch(tiny, clean, corrupted, metric, [(2, 1)], "k")
    direct = path_patch(tiny, clean, corrupted, metric, [(2, 1)], "k", mode="direct")
    assert_equal_with_nans(comparison.freeze, freeze)
    assert_equal_with_nans(comparison.direct, direct)
    assert_equal_with_nans(comparison.freeze_effect, metric(tiny(clean)) - freeze)
    assert_equal_with_nans(comparison.direct_effect, direct - metric(tiny(corrupted)))
    assert_equal_with_nans(
        comparison.difference, comparison.freeze_effect - comparison.direct_effect
    )


@pytest.mark.parametrize(
    ("receivers", "receiver_input", "message"),
    [
        ([], "q", "receivers is empty"),
        ([(3, 0)], "q", "out of range"),
        ([(1, 4)], "q", "out of range"),
        ([(-1, 0)], "q", "out of range"),
        ([(0, 1), (0, 2)], "q", "layer 0: no sender"),
        ([(2, 1)], "z", "receiver_input must be one of"),
        ([(2, 1)], "pattern", "receiver_input must be one of"),
        ([5], "q", "not a \\(layer, head\\) pair"),
        ([(2, 1), (2, 1)], "q", "repeated"),
    ],
)
def test_bad_receivers_raise_one_line_errors(tiny, task, receivers, receiver_input, message):
    clean, corrupted, metric = task
    with pytest.raises(PatchingError, match=message) as error:
        path_patch(tiny, clean, corrupted, metric, receivers, receiver_input)
    assert "\n" not in str(error.value)


def test_bad_inputs_raise_one_line_errors(tiny, task):
    clean, corrupted, metric = task
    with pytest.raises(PatchingError, match="differ in shape"):
        path_patch(tiny, clean, corrupted[:, :-1], metric, [(2, 1)], "q")
    with pytest.raises(PatchingError, match="2-D"):
        path_patch(tiny, clean[0], corrupted[0], metric, [(2, 1)], "q")
    with pytest.raises(PathPatchError, match="mode must be one of"):
        path_patch(tiny, clean, corrupted, metric, [(2, 1)], "q", mode="edge")
    with pytest.raises(PathPatchError, match="answers for 2 prompts"):
        path_patch(tiny, clean, corrupted, LogitDiffMetric(metric.answers[:2]), [(2, 1)], "q")


def test_metric_of_the_wrong_shape_is_refused(tiny, task):
    clean, corrupted, _ = task

    def per_prompt_metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 0]

    def scalar_metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 0].mean()

    with pytest.raises(PatchingError, match="expected a scalar"):
        path_patch(tiny, clean, corrupted, per_prompt_metric, [(2, 1)], "q")
    with pytest.raises(PatchingError, match="expected a \\[n\\]"):
        path_patch(tiny, clean, corrupted, scalar_metric, [(2, 1)], "q", per_prompt=True)


def test_a_patch_that_changes_nothing_is_refused(tiny, task):
    clean, _, metric = task
    with pytest.raises(PatchNotAppliedError, match="no sender changed"):
        path_patch(tiny, clean, clean.clone(), metric, [(2, 1)], "k")


@pytest.fixture(scope="module")
def pythia(tmp_path_factory):
    return random_pythia_70m(tmp_path_factory.mktemp("pythia-70m"))


@pytest.mark.slow
@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_equals_study_algorithm_on_random_pythia_70m(pythia, receiver_input):
    clean, corrupted, metric = make_task(50000, n=2, seq=6, seed=3)
    receivers = [(1, 3), (2, 5)]
    expected = study_path_patch(pythia, clean, corrupted, metric, receivers, receiver_input)
    actual = path_patch(pythia, clean, corrupted, metric, receivers, receiver_input)
    assert_equal_with_nans(actual, expected)


@pytest.mark.slow
def test_direct_equals_reference_on_random_pythia_70m(pythia):
    clean, corrupted, metric = make_task(50000, n=2, seq=6, seed=4)
    receivers = [(1, 3), (2, 5)]
    expected = direct_path_patch(pythia, clean, corrupted, metric, receivers, "k")
    actual = path_patch(pythia, clean, corrupted, metric, receivers, "k", mode="direct")
    assert_equal_with_nans(actual, expected)


@pytest.fixture(scope="module")
def bundled():
    from circuit.models import ModelUnavailableError, load_model

    try:
        return load_model("bundled", device="cpu")
    except ModelUnavailableError as error:
        pytest.skip(f"bundled model not built: {error}")


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_equals_study_algorithm_on_bundled_model(bundled, receiver_input):
    n_layers = bundled.cfg.n_layers
    clean, corrupted, metric = make_task(bundled.cfg.d_vocab, n=4, seq=10, seed=5)
    receivers = [(n_layers - 1, 0), (n_layers - 2, 1)]
    expected = study_path_patch(bundled, clean, corrupted, metric, receivers, receiver_input)
    actual = path_patch(bundled, clean, corrupted, metric, receivers, receiver_input)
    assert_equal_with_nans(actual, expected)
    direct = direct_path_patch(bundled, clean, corrupted, metric, receivers, receiver_input)
    actual = path_patch(bundled, clean, corrupted, metric, receivers, receiver_input, "direct")
    assert_equal_with_nans(actual, direct)


# --- callable metrics of the TransformerLens kind: the final-position fast path -------------


def _tl_metric(answers: torch.Tensor, per_prompt: bool = False):
    right, wrong, rows = answers[:, 0], answers[:, 1], torch.arange(len(answers))

    def metric(logits):
        diff = logits[rows, -1, right] - logits[rows, -1, wrong]
        return diff if per_prompt else diff.mean()

    return metric


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_final_position_callable_equals_study_algorithm(tiny, task, receiver_input):
    clean, corrupted, metric = task
    plain = _tl_metric(metric.answers)
    receivers = [(1, 0), (2, 3)]
    expected = study_path_patch(tiny, clean, corrupted, plain, receivers, receiver_input)
    actual = path_patch(tiny, clean, corrupted, plain, receivers, receiver_input)
    assert_equal_with_nans(actual, expected)
    fast = path_patch(tiny, clean, corrupted, metric, receivers, receiver_input)
    assert_equal_with_nans(actual, fast)


def test_final_position_callable_direct_and_per_prompt(tiny, task):
    clean, corrupted, metric = task
    plain = _tl_metric(metric.answers)
    expected = tl_direct_path_patch(tiny, clean, corrupted, plain, (2, 1), "q")
    actual = path_patch(tiny, clean, corrupted, plain, [(2, 1)], "q", mode="direct")
    assert_equal_with_nans(actual, expected)
    per_prompt = _tl_metric(metric.answers, per_prompt=True)
    got = path_patch(tiny, clean, corrupted, per_prompt, [(2, 1)], "k", per_prompt=True)
    want = path_patch(tiny, clean, corrupted, metric, [(2, 1)], "k", per_prompt=True)
    assert_equal_with_nans(got, want)


@pytest.mark.parametrize("mode", ["freeze", "direct"])
def test_a_final_callable_path_proof_reruns_a_few_prompts_and_sees_every_one(tiny, mode):
    """With a final-position callable the bridge re-runs the first ``VERIFY_PROMPTS`` prompts
    (unhooked and hooked), and the metric, called once on every prompt with earlier positions
    NaN, still catches a read of an earlier position of the last prompt."""
    from circuit.guards import VERIFY_PROMPTS

    clean, corrupted, metric = make_task(tiny.cfg.d_vocab, n=6, seq=8, seed=2)
    sizes = []
    handle = tiny.embed.register_forward_hook(lambda module, args, out: sizes.append(out.shape[0]))
    try:
        plain = _tl_metric(metric.answers)
        got = path_patch(tiny, clean, corrupted, plain, [(2, 1)], "q", mode=mode)
    finally:
        handle.remove()
    assert sizes
    assert set(sizes) == {VERIFY_PROMPTS}
    assert_equal_with_nans(
        got, path_patch(tiny, clean, corrupted, metric, [(2, 1)], "q", mode=mode)
    )
    right, wrong, rows = metric.answers[:, 0], metric.answers[:, 1], torch.arange(6)
    with torch.no_grad():
        known = [
            (logits[rows, -1, right] - logits[rows, -1, wrong])[-1]
            for logits in (tiny(clean), tiny(corrupted))
        ]

    def sneaky(logits):
        diff = logits[rows, -1, right] - logits[rows, -1, wrong]
        seen = torch.zeros_like(diff[-1], dtype=torch.bool)
        for value in known:
            seen = seen | torch.isclose(diff[-1], value.to(diff), rtol=0, atol=1e-4)
        return diff.mean() + torch.where(seen, 0.0, logits[-1, 0, right[-1]])

    with pytest.raises(PatchNotAppliedError, match="judged to read only the final position"):
        path_patch(tiny, clean, corrupted, sneaky, [(2, 1)], "q", mode=mode)


def test_a_path_metric_reading_position_0_on_some_inputs_is_caught(tiny, task):
    """Reads position 0 only where the logit difference matches neither baseline."""
    clean, corrupted, metric = task
    right, wrong, rows = metric.answers[:, 0], metric.answers[:, 1], torch.arange(3)
    with torch.no_grad():
        known = [
            logits[rows, -1, right] - logits[rows, -1, wrong]
            for logits in (tiny(clean), tiny(corrupted))
        ]

    def sneaky(logits):
        diff = logits[rows, -1, right] - logits[rows, -1, wrong]
        seen = torch.zeros_like(diff, dtype=torch.bool)
        for value in known:
            seen = seen | torch.isclose(diff, value.to(diff), rtol=0, atol=1e-4)
        return torch.where(seen, diff, diff + logits[:, 0, 5]).mean()

    loud = (PatchNotAppliedError, MetricError)  # NaN in an unread column, or the hooked proof
    with pytest.raises(loud, match="judged to read only the final position"):
        path_patch(tiny, clean, corrupted, sneaky, [(2, 1)], "q")
