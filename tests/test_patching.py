"""Activation patching equals ``transformer_lens.patching``, cell for cell, and proves itself.

References run the library's per-cell loops on the same bridge; results must agree within
1e-5 (float32). In float64 the library stores its results in float32, so the tolerance there is
float32 rounding (1e-6).
"""

import pytest
import torch
from transformer_lens import patching as tl

from circuit import guards, patching
from circuit.metrics import EveryPosition, LogitDiffMetric, MetricError, normalised_metric
from circuit.patching import PatchingError, SweepStats, patch_heads, patch_resid
from fixtures.tiny_model import tokens_for

CASES = list(patching.LIBRARY_EQUIVALENTS)


class Problem:
    """Clean/corrupted prompts differing at two positions, answers, the normalised metric and
    the clean cache the library's functions take."""

    def __init__(self, model, n: int, seq: int, seed: int = 1) -> None:
        self.model = model
        self.clean = tokens_for(model, n, seq, seed)
        self.corrupted = self.clean.clone()
        swap = tokens_for(model, n, 2, seed + 100)
        self.corrupted[:, 2] = swap[:, 0]
        self.corrupted[:, seq - 3] = swap[:, 1]
        clean_logits, self.clean_cache = model.run_with_cache(self.clean)
        corrupted_logits = model(self.corrupted)
        # answers whose logit difference moves most between the runs, so that the normalised
        # metric is well conditioned even on random weights
        shift = clean_logits[:, -1] - corrupted_logits[:, -1]
        self.answers = torch.stack([shift.argmax(-1), shift.argmin(-1)], dim=-1)
        self.metric = normalised_metric(clean_logits, corrupted_logits, self.answers)

    def reference(self, component: str, by_position: bool, metric=None, **kwargs):
        fn = patching.library_equivalent(component, by_position)
        return fn(self.model, self.corrupted, self.clean_cache, metric or self.metric, **kwargs)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal within ``atol`` relative to the values' scale (per-prompt normalised values can
    reach ~10 where float32 keeps ~7 digits)."""
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.to(want), want, rtol=0, atol=atol * scale)


@pytest.fixture(scope="module")
def tiny32_problem(tiny32):
    return Problem(tiny32, 3, 7)


@pytest.fixture(scope="module")
def tiny64_problem(tiny64):
    return Problem(tiny64, 3, 7)


@pytest.mark.parametrize(("component", "by_position"), CASES)
def test_heads_equal_library_float32(tiny32_problem, component, by_position):
    p = tiny32_problem
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, by_position)
    want = p.reference(component, by_position)
    _close(got, want)
    assert want.abs().max() > 1e-3, "the reference is trivially zero"


@pytest.mark.parametrize(("component", "by_position"), CASES)
def test_heads_equal_library_float64(tiny64_problem, component, by_position):
    p = tiny64_problem
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, by_position)
    assert got.dtype == torch.float64
    _close(got, p.reference(component, by_position), atol=1e-6)


@pytest.mark.parametrize(("component", "by_position"), [("z", False), ("z", True), ("q", True)])
def test_heads_equal_library_sequential_block(tiny_sequential, component, by_position):
    """Without parallel attention the z shortcut does not apply: the general path runs."""
    p = Problem(tiny_sequential, 3, 6)
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, by_position)
    _close(got, p.reference(component, by_position))


def test_resid_equals_library_sequential_block(tiny_sequential):
    """A sequential block takes the plain batched path (no skipped block)."""
    p = Problem(tiny_sequential, 3, 7)
    _close(
        patch_resid(p.model, p.clean, p.corrupted, p.metric),
        tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, p.metric),
    )


@pytest.mark.parametrize(("first", "seq", "most"), [(0, 1, 4), (2, 8, 99), (4, 22, 99), (0, 30, 3)])
def test_resid_position_groups_cover_every_position_within_the_waste_bound(first, seq, most):
    groups = patching._position_groups(first, seq, most)
    assert [p for a, b in groups for p in range(a, b)] == list(range(first, seq))
    for start, stop in groups:
        assert stop - start <= most
        needed = sum(seq - p for p in range(start, stop))
        assert (stop - start) * (seq - start) <= patching.RESID_GROUP_WASTE * needed


@pytest.mark.parametrize(
    ("component", "by_position"), [("z", False), ("v", True), ("pattern", True)]
)
def test_per_prompt_equals_library_reduce_none(tiny32_problem, component, by_position):
    p = tiny32_problem
    got = patch_heads(
        p.model, p.clean, p.corrupted, p.metric, component, by_position, per_prompt=True
    )
    want = p.reference(component, by_position, metric=p.metric.with_per_prompt(True), reduce="none")
    _close(got, want.values.movedim(-1, 0))
    mean = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, by_position)
    _close(got.mean(0), mean, atol=1e-6)


def test_resid_equals_library(tiny32_problem):
    p = tiny32_problem
    want = tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, p.metric)
    _close(patch_resid(p.model, p.clean, p.corrupted, p.metric), want)
    per_prompt = tl.get_act_patch_resid_pre(
        p.model, p.corrupted, p.clean_cache, p.metric.with_per_prompt(True), reduce="none"
    )
    got = patch_resid(p.model, p.clean, p.corrupted, p.metric, per_prompt=True)
    _close(got, per_prompt.values.movedim(-1, 0))


def test_resid_equals_library_float64(tiny64_problem):
    p = tiny64_problem
    want = tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, p.metric)
    _close(patch_resid(p.model, p.clean, p.corrupted, p.metric), want, atol=1e-6)


def _generic_metric(logits: torch.Tensor) -> torch.Tensor:
    """Reads an early position too, so by-position sweeps must supply unchanged logits."""
    return logits[:, 1, 5].mean() - logits[:, -1, 7].mean() + logits[:, 4].logsumexp(-1).mean()


@pytest.mark.parametrize(("component", "by_position"), [("q", False), ("v", True), ("z", True)])
def test_generic_metric_equals_library(tiny32_problem, component, by_position):
    p = tiny32_problem
    got = patch_heads(p.model, p.clean, p.corrupted, _generic_metric, component, by_position)
    _close(got, p.reference(component, by_position, metric=_generic_metric))


def test_generic_metric_resid_and_per_prompt(tiny32_problem):
    p = tiny32_problem

    def per_prompt_metric(logits):
        return logits[:, 3, 11] - logits[:, -1, 2]

    want = tl.get_act_patch_resid_pre(
        p.model, p.corrupted, p.clean_cache, per_prompt_metric, reduce="none"
    )
    got = patch_resid(p.model, p.clean, p.corrupted, per_prompt_metric, per_prompt=True)
    _close(got, want.values.movedim(-1, 0))


def test_unnormalised_metric(tiny32_problem):
    p = tiny32_problem
    raw = LogitDiffMetric(p.answers)
    _close(patch_heads(p.model, p.clean, p.corrupted, raw, "k", True), p.reference("k", True, raw))


def test_chunking_changes_nothing(tiny32_problem):
    """One prompt per chunk and one head per forward give the default result."""
    p = tiny32_problem
    default_stats, tiny_stats = SweepStats(), SweepStats()
    for per_prompt in (False, True):
        default = patch_heads(
            p.model, p.clean, p.corrupted, p.metric, "v", True, per_prompt, stats=default_stats
        )
        tiny = patch_heads(
            p.model,
            p.clean,
            p.corrupted,
            p.metric,
            "v",
            True,
            per_prompt,
            memory_budget=1,
            stats=tiny_stats,
        )
        _close(tiny, default)
    assert tiny_stats.forwards > default_stats.forwards


@pytest.mark.parametrize(
    ("component", "by_position", "metric"),
    [("v", True, None), ("pattern", True, None), ("z", False, None), ("q", True, "generic")],
)
def test_a_cell_mask_sweeps_only_its_cells(tiny32_problem, component, by_position, metric):
    """Marked cells equal the full sweep's; the others are NaN and cost no forward rows."""
    p = tiny32_problem
    chosen = _generic_metric if metric == "generic" else p.metric
    per_prompt = metric is None  # the generic metric returns the batch's scalar
    full_stats, masked_stats = SweepStats(), SweepStats()
    full = patch_heads(
        p.model, p.clean, p.corrupted, chosen, component, by_position, per_prompt, stats=full_stats
    )
    if not per_prompt:
        full = full[None]
    cells = torch.zeros(full.shape[1:], dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    cells[torch.rand(cells.shape, generator=generator) < 0.3] = True
    masked = patch_heads(
        p.model,
        p.clean,
        p.corrupted,
        chosen,
        component,
        by_position,
        per_prompt,
        stats=masked_stats,
        cells=cells,
    )
    if not per_prompt:
        masked = masked[None]
    _close(masked[:, cells], full[:, cells])
    assert bool(masked[:, ~cells].isnan().all())
    assert masked_stats.rows < full_stats.rows


def test_a_cell_mask_is_checked(tiny32_problem):
    p = tiny32_problem
    layers, heads = p.model.cfg.n_layers, p.model.cfg.n_heads
    with pytest.raises(PatchingError, match="has shape"):
        patch_heads(
            p.model, p.clean, p.corrupted, p.metric, "v", True, cells=torch.ones(layers, heads) > 0
        )
    with pytest.raises(PatchingError, match="boolean"):
        patch_heads(p.model, p.clean, p.corrupted, p.metric, "v", cells=torch.ones(layers, heads))
    with pytest.raises(PatchingError, match="no cell"):
        patch_heads(
            p.model, p.clean, p.corrupted, p.metric, "v", cells=torch.zeros(layers, heads) > 0
        )


def test_forward_counts(tiny32_problem):
    """One forward per layer (all heads batched), per layer and position when by position;
    each by-position forward runs only the positions from the patched one on."""
    p = tiny32_problem
    n, seq = p.clean.shape
    layers, heads = p.model.cfg.n_layers, p.model.cfg.n_heads
    stats = SweepStats()
    patch_heads(p.model, p.clean, p.corrupted, p.metric, "k", stats=stats)
    assert stats.forwards == layers
    assert stats.rows == layers * heads * n
    stats = SweepStats()
    patch_heads(p.model, p.clean, p.corrupted, p.metric, "k", True, stats=stats)
    assert stats.forwards == layers * seq
    reference = (layers * seq * heads) * n * layers * seq  # one full forward per cell
    assert stats.row_layer_positions < reference * 0.5


@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_heads_equal_library_pythia_70m(pythia70, component):
    p = Problem(pythia70, 3, 6)
    _close(
        patch_heads(p.model, p.clean, p.corrupted, p.metric, component),
        p.reference(component, False),
    )


@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_heads_by_position_equal_library_pythia_70m_sampled_cells(pythia70, component):
    """The full by-position sweep against the library on 12 random cells (the library's
    ``index_df`` mode runs only those); the slow tests below compare every cell."""
    import pandas as pd

    p = Problem(pythia70, 3, 6)
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, True)
    generator = torch.Generator().manual_seed(0)
    shape = got.shape
    cells = torch.stack([torch.randint(0, size, (12,), generator=generator) for size in shape], 1)
    names = (
        ["layer", "head_index", "dest_pos"] if component == "pattern" else ["layer", "pos", "head"]
    )
    index_df = pd.DataFrame(cells.tolist(), columns=names)
    want = p.reference(component, True, index_axis_names=None, index_df=index_df)
    _close(got[tuple(cells.T)], want)


@pytest.mark.slow
@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_heads_by_position_equal_library_pythia_70m(pythia70, component):
    p = Problem(pythia70, 2, 6)
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, True)
    _close(got, p.reference(component, True))


def test_resid_equals_library_pythia_70m(pythia70):
    p = Problem(pythia70, 3, 6)
    want = tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, p.metric)
    _close(patch_resid(p.model, p.clean, p.corrupted, p.metric), want)


# Guards ------------------------------------------------------------------------------------


def test_rejects_shape_mismatch(tiny32_problem):
    p = tiny32_problem
    with pytest.raises(PatchingError, match="differ in shape"):
        patch_heads(p.model, p.clean, p.corrupted[:, :-1], p.metric, "z")
    with pytest.raises(PatchingError, match="differ in shape"):
        patch_resid(p.model, p.clean[:2], p.corrupted, p.metric)


def test_rejects_tokens_that_are_not_2d_long(tiny32_problem):
    p = tiny32_problem
    with pytest.raises(PatchingError, match="2-D LongTensor"):
        patch_heads(p.model, p.clean.float(), p.corrupted.float(), p.metric, "z")
    with pytest.raises(PatchingError, match="2-D LongTensor"):
        patch_heads(p.model, p.clean[0], p.corrupted[0], p.metric, "z")
    with pytest.raises(PatchingError, match=r"torch\.Tensor"):
        patch_resid(p.model, p.clean.tolist(), p.corrupted, p.metric)


def test_rejects_unknown_component(tiny32_problem):
    p = tiny32_problem
    with pytest.raises(PatchingError, match="unknown component 'attn_out'"):
        patch_heads(p.model, p.clean, p.corrupted, p.metric, "attn_out")


def test_rejects_metric_of_wrong_shape(tiny32_problem):
    p = tiny32_problem
    with pytest.raises(PatchingError, match=r"expected a scalar"):
        patch_heads(p.model, p.clean, p.corrupted, lambda logits: logits[:, -1, 0], "z")
    with pytest.raises(PatchingError, match=r"expected a \[n\] = \[3\] tensor"):
        patch_heads(
            p.model,
            p.clean,
            p.corrupted,
            lambda logits: logits[:, -1, 0].mean(),
            "z",
            per_prompt=True,
        )
    with pytest.raises(PatchingError, match="answers are for 2 prompts"):
        patch_heads(p.model, p.clean, p.corrupted, LogitDiffMetric(p.answers[:2]), "z")


def test_head_and_layer_checks():
    guards.check_heads([(0, 1), (2, 3)], n_layers=3, n_heads=4)
    with pytest.raises(PatchingError, match="head list is empty"):
        guards.check_heads([], 3, 4)
    with pytest.raises(PatchingError, match="layer 3 out of range"):
        guards.check_heads([(3, 0)], 3, 4)
    with pytest.raises(PatchingError, match="head 4 of layer 0 out of range"):
        guards.check_heads([(0, 4)], 3, 4)
    with pytest.raises(PatchingError, match="layer -1 out of range"):
        guards.check_layer(-1, 3)
    with pytest.raises(PatchingError, match="repeated heads"):
        guards.check_heads([(1, 1), (1, 1)], 3, 4)


def test_a_patch_that_does_nothing_is_caught(tiny32_problem, monkeypatch):
    """Sabotage the edit (an all-false mask): the sweep must fail its proof, not return."""
    p = tiny32_problem
    real = patching._head_edit

    def silent(*args):
        edit = real(*args)
        return type(edit)(edit.layer, edit.site, edit.value, torch.zeros_like(edit.mask))

    monkeypatch.setattr(patching, "_head_edit", silent)
    with pytest.raises(guards.PatchNotApplied):
        patch_heads(p.model, p.clean, p.corrupted, p.metric, "v")


def test_a_patch_at_the_wrong_head_is_caught(tiny32_problem, monkeypatch):
    p = tiny32_problem
    real = patching._head_edit

    def shifted(component, layer, heads, pos, clean, n):
        return real(component, layer, (heads + 1) % p.model.cfg.n_heads, pos, clean, n)

    monkeypatch.setattr(patching, "_head_edit", shifted)
    with pytest.raises(guards.PatchNotApplied):
        patch_heads(p.model, p.clean, p.corrupted, p.metric, "q", True)


def test_verify_cell_checks_the_site(tiny32_problem):
    """The bridge-side proof accepts the true value and rejects a wrong value or a run whose
    input at the patched layer is not the corrupted run's."""
    p = tiny32_problem
    model = p.model
    _, corrupted_cache = model.run_with_cache(p.corrupted)
    name = "blocks.1.attn.hook_v"
    clean_v, corrupted_v = p.clean_cache[name], corrupted_cache[name]
    cell = guards.Cell("v", 1, 2, None)
    good = patch_heads(model, p.clean, p.corrupted, p.metric, "v", verify=False)[1, 2]
    guards.verify_cell(model, cell, p.corrupted, clean_v, corrupted_v, p.metric, good, 1e-4)
    with pytest.raises(guards.PatchNotApplied, match="differs from the hooked model"):
        guards.verify_cell(
            model, cell, p.corrupted, clean_v, corrupted_v, p.metric, good + 0.1, 1e-4
        )
    with pytest.raises(guards.PatchNotApplied, match="entering the hook differs"):
        guards.verify_cell(model, cell, p.corrupted, clean_v, clean_v, p.metric, good, 1e-4)


@pytest.fixture(scope="module")
def tiny32_six(tiny32):
    return Problem(tiny32, 6, 7)


def test_bridge_proof_reruns_a_few_prompts(tiny32_six, monkeypatch):
    """With the logit-difference metric the hooked model re-runs the first
    ``VERIFY_PROMPTS`` prompts (per-prompt values compared), and so it does with a callable
    that reads the final position only (those prompts' final logits at the columns it reads
    compared); both stop at the unembedding's input (final-position logits only). A metric
    that reads every position re-runs all prompts to the full logits."""
    p = tiny32_six
    seen = []
    real = guards.verify_cell

    def spy(model, cell, tokens, clean_act, corrupted_act, to_value, value, atol, final_only):
        seen.append((tokens.shape[0], clean_act.shape[0], tuple(value.shape), final_only))
        return real(
            model, cell, tokens, clean_act, corrupted_act, to_value, value, atol, final_only
        )

    monkeypatch.setattr(guards, "verify_cell", spy)
    patch_heads(p.model, p.clean, p.corrupted, p.metric, "z")
    rows = guards.VERIFY_PROMPTS
    assert seen == [(rows, rows, (rows,), True)]
    seen.clear()
    patch_heads(p.model, p.clean, p.corrupted, _generic_metric, "z")
    assert seen == [(6, 6, (), False)]
    seen.clear()
    patch_heads(p.model, p.clean, p.corrupted, _tl_metric(p), "z")
    patch_resid(p.model, p.clean, p.corrupted, _tl_metric(p))
    columns = len(set(p.answers.flatten().tolist()))  # what the callable reads
    assert seen == [(rows, rows, (rows, columns), True)] * 2


def _reads_position_0_on_the_last_prompt(p: "Problem"):
    """The final-position logit difference, plus position 0 of the last prompt when that
    prompt's difference matches neither baseline: invisible to the probe (baselines only) and
    to the hooked re-run of the first ``VERIFY_PROMPTS`` prompts."""
    right, wrong, rows = p.answers[:, 0], p.answers[:, 1], torch.arange(len(p.answers))
    with torch.inference_mode():
        known = [
            (logits[rows, -1, right] - logits[rows, -1, wrong])[-1]
            for logits in (p.model(p.clean), p.model(p.corrupted))
        ]

    def sneaky(logits):
        diff = logits[rows, -1, right] - logits[rows, -1, wrong]
        seen = torch.zeros_like(diff[-1], dtype=torch.bool)
        for value in known:
            seen = seen | torch.isclose(diff[-1], value.to(diff), rtol=0, atol=1e-4)
        extra = torch.where(seen, 0.0, logits[-1, 0, right[-1]])
        return diff.mean() + extra

    return sneaky


@pytest.mark.parametrize("routine", ["z", "resid"])
def test_a_metric_reading_an_earlier_position_of_a_prompt_not_re_run_is_caught(tiny32_six, routine):
    """The proof calls the metric once on every prompt, earlier positions NaN where the hooked
    model did not re-run the prompt: a wrong final-only guess on a later prompt fails loudly."""
    p = tiny32_six
    sneaky = _reads_position_0_on_the_last_prompt(p)
    loud = (guards.PatchNotApplied, MetricError)
    if routine == "resid":
        sweep = lambda: patch_resid(p.model, p.clean, p.corrupted, sneaky)  # noqa: E731
    else:
        sweep = lambda: patch_heads(p.model, p.clean, p.corrupted, sneaky, "z")  # noqa: E731
    with pytest.raises(loud, match="judged to read only the final position"):
        sweep()


@pytest.mark.parametrize(
    ("component", "by_position"), [("v", False), ("pattern", True), ("resid", True)]
)
def test_the_proof_reruns_the_cell_when_the_sweep_kept_nothing(
    tiny32_six, monkeypatch, component, by_position
):
    """Past ``REMEMBER_BYTES`` the proved cell is re-run by the sweep's code path; the values
    and the proof's verdict do not depend on it."""
    p = tiny32_six
    metric = _tl_metric(p)

    def run():
        if component == "resid":
            return patch_resid(p.model, p.clean, p.corrupted, metric)
        return patch_heads(p.model, p.clean, p.corrupted, metric, component, by_position)

    kept = run()
    monkeypatch.setattr(patching, "REMEMBER_BYTES", 0)
    rerun = run()
    torch.testing.assert_close(rerun, kept, rtol=0, atol=0)


@pytest.mark.parametrize("metric_kind", ["logit_diff", "callable"])
def test_a_wrong_rank_d_head_block_is_caught(tiny32_six, monkeypatch, metric_kind):
    """Sabotage the next-block shortcut (it sees three times the head's write): the largest
    cell's value no longer matches the hooked model, on the prompts re-run (with a
    final-position callable, the sweep's own final logits of that cell are compared)."""
    p = tiny32_six
    metric = p.metric if metric_kind == "logit_diff" else _tl_metric(p)
    real = patching.block_after_head_write

    def inflated(w, base, prepared, heads, z_diff, start_pos):
        return real(w, base, prepared, heads, 3 * z_diff, start_pos)

    monkeypatch.setattr(patching, "block_after_head_write", inflated)
    with pytest.raises(guards.PatchNotApplied, match="differs from the hooked model"):
        patch_heads(p.model, p.clean, p.corrupted, metric, "z")


class SyllogismProblem(Problem):
    """The study's task on the bundled model: the first prompts of its ``study`` dataset."""

    def __init__(self, model, n: int) -> None:
        from circuit.syllogisms import build_dataset

        dataset = build_dataset(model, variant="study")
        self.model = model
        self.clean = dataset.clean_tokens[:n]
        self.corrupted = dataset.corrupted_tokens[:n]
        self.answers = dataset.answers[:n]
        clean_logits, self.clean_cache = model.run_with_cache(self.clean)
        self.metric = normalised_metric(clean_logits, model(self.corrupted), self.answers)


@pytest.fixture(scope="module")
def syllogisms(bundled_model):
    return SyllogismProblem(bundled_model, 6)


@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_heads_equal_library_on_the_bundled_model(syllogisms, component):
    p = syllogisms
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component)
    _close(got, p.reference(component, False))
    per_prompt = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, per_prompt=True)
    _close(per_prompt.mean(0), got)


@pytest.mark.parametrize("component", ["z", "q", "k", "v", "pattern"])
def test_heads_by_position_equal_library_on_the_bundled_model(syllogisms, component):
    """Every cell at the descriptor's and the final position, and 16 random others."""
    import pandas as pd

    p = syllogisms
    got = patch_heads(p.model, p.clean, p.corrupted, p.metric, component, True)
    n_layers, n_heads, seq = p.model.cfg.n_layers, p.model.cfg.n_heads, p.clean.shape[1]
    generator = torch.Generator().manual_seed(0)
    chosen = [
        (layer, pos, head)
        for layer in range(n_layers)
        for head in range(n_heads)
        for pos in (4, seq - 1)
    ]
    chosen += torch.stack(
        [torch.randint(0, size, (16,), generator=generator) for size in (n_layers, seq, n_heads)],
        1,
    ).tolist()
    cells = torch.tensor(chosen)
    if component == "pattern":
        cells = cells[:, [0, 2, 1]]
        names = ["layer", "head_index", "dest_pos"]
    else:
        names = ["layer", "pos", "head"]
    index_df = pd.DataFrame(cells.tolist(), columns=names)
    want = p.reference(component, True, index_axis_names=None, index_df=index_df)
    _close(got[tuple(cells.T)], want)


def test_resid_equals_library_on_the_bundled_model(syllogisms):
    p = syllogisms
    want = tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, p.metric)
    _close(patch_resid(p.model, p.clean, p.corrupted, p.metric), want)


# --- callable metrics of the TransformerLens kind: the final-position fast path -------------


def _tl_metric(p: "Problem"):
    """``logits -> scalar`` as a TransformerLens user writes it, from tensors of answer ids."""
    right, wrong = p.answers[:, 0], p.answers[:, 1]
    rows = torch.arange(len(right))
    return lambda logits: (logits[rows, -1, right] - logits[rows, -1, wrong]).mean()


def _tl_per_prompt_metric(p: "Problem"):
    right, wrong = p.answers[:, 0], p.answers[:, 1]
    rows = torch.arange(len(right))
    return lambda logits: logits[rows, -1, right] - logits[rows, -1, wrong]


@pytest.mark.parametrize(("component", "by_position"), CASES)
def test_final_position_callable_equals_library(tiny32_problem, component, by_position):
    p = tiny32_problem
    metric, stats = _tl_metric(p), SweepStats()
    got = patch_heads(p.model, p.clean, p.corrupted, metric, component, by_position, stats=stats)
    _close(got, p.reference(component, by_position, metric=metric))
    assert stats.metric_reads == "final", stats.metric_reason
    assert "and on 6 of its" in stats.metric_reason  # only the answers' columns unembedded
    assert stats.metric_calls == "vmap"


@pytest.mark.parametrize(("component", "by_position"), [("z", False), ("k", True)])
def test_per_prompt_final_callable_equals_library(tiny32_problem, component, by_position):
    p = tiny32_problem
    metric, stats = _tl_per_prompt_metric(p), SweepStats()
    want = p.reference(component, by_position, metric=metric, reduce="none")
    got = patch_heads(
        p.model, p.clean, p.corrupted, metric, component, by_position, True, stats=stats
    )
    _close(got, want.values.movedim(-1, 0))
    assert stats.metric_reads == "final"


def test_final_callable_resid_equals_library(tiny32_problem):
    p = tiny32_problem
    metric, stats = _tl_metric(p), SweepStats()
    want = tl.get_act_patch_resid_pre(p.model, p.corrupted, p.clean_cache, metric)
    _close(patch_resid(p.model, p.clean, p.corrupted, metric, stats=stats), want)
    assert stats.metric_reads == "final"


def test_final_callable_sequential_block(tiny_sequential):
    p = Problem(tiny_sequential, 3, 7)
    metric = _tl_metric(p)
    for component, by_position in (("z", False), ("q", True)):
        got = patch_heads(p.model, p.clean, p.corrupted, metric, component, by_position)
        _close(got, p.reference(component, by_position, metric=metric))


def test_a_callable_that_cannot_be_vectorised_runs_in_a_loop(tiny32_problem):
    p = tiny32_problem
    plain = _tl_metric(p)

    def branching(logits):
        if bool(logits[0, -1, 0] > 1e6):
            return logits[:, -1, 0].mean()
        return plain(logits)

    stats = SweepStats()
    got = patch_heads(p.model, p.clean, p.corrupted, branching, "v", stats=stats)
    _close(got, p.reference("v", False, metric=plain))
    assert stats.metric_reads == "final"
    assert stats.metric_calls.startswith("vmap failed")


def test_every_position_metric_takes_full_logits(tiny32_problem):
    p = tiny32_problem
    stats = SweepStats()
    got = patch_heads(p.model, p.clean, p.corrupted, _generic_metric, "z", True, stats=stats)
    _close(got, p.reference("z", True, metric=_generic_metric))
    assert stats.metric_reads == "all"
    assert "IndexError" in stats.metric_reason  # logits[:, 1] of [n, 1, vocab]


def test_a_metric_reading_position_0_on_some_inputs_is_caught(tiny32_problem):
    """Reads position 0 only on prompts whose logit difference matches neither baseline: the
    probe (run on the baselines) cannot see it, the hooked proof with full logits must."""
    p = tiny32_problem
    right, wrong, rows = p.answers[:, 0], p.answers[:, 1], torch.arange(3)
    with torch.inference_mode():
        known = [
            (logits[rows, -1, right] - logits[rows, -1, wrong])
            for logits in (p.model(p.clean), p.model(p.corrupted))
        ]

    def sneaky(logits):
        diff = logits[rows, -1, right] - logits[rows, -1, wrong]
        seen = torch.zeros_like(diff, dtype=torch.bool)
        for value in known:
            seen = seen | torch.isclose(diff, value.to(diff), rtol=0, atol=1e-4)
        return torch.where(seen, diff, diff + logits[:, 0, 5]).mean()

    loud = (guards.PatchNotApplied, MetricError)  # NaN in an unread column, or the hooked proof
    with pytest.raises(loud, match="judged to read only the final position"):
        patch_heads(p.model, p.clean, p.corrupted, sneaky, "z")
    guarded = patching.SweepStats()
    got = patch_heads(p.model, p.clean, p.corrupted, EveryPosition(sneaky), "z", stats=guarded)
    _close(got, p.reference("z", False, metric=sneaky))
    assert guarded.metric_reads == "all"
