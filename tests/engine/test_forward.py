"""The functional forward equals the bridge's own forward, hook by hook, and its edits equal
hooked runs of the bridge.

Models: a tiny GPT-NeoX with random weights (LayerNorm weights and biases perturbed so that
folding matters) in float32 and float64, and Pythia-70m's shape with random weights.
The models come from ``fixtures/tiny_model.py``, shared with the other tests.
"""

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from circuit.engine import forward as F
from circuit.engine import memory as M
from circuit.engine.weights import weights_of
from fixtures.tiny_model import tokens_for

HOOKS = {
    "resid_pre": "hook_resid_pre",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}


def _tolerance(model: TransformerBridge) -> float:
    return 1e-10 if model.cfg.dtype == torch.float64 else 1e-5


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = max(1.0, float(want.abs().max()))
    return float((got.to(want) - want).abs().max()) / scale


MODELS = ["tiny32", "tiny64", "tiny_sequential", "pythia70"]


@pytest.mark.parametrize("name", MODELS)
def test_run_equals_bridge_at_every_hook(name, request):
    model = request.getfixturevalue(name)
    tokens = tokens_for(model, 3, 9)
    logits, cache = model.run_with_cache(tokens)
    w = weights_of(model)
    assert w.dtype == model.cfg.dtype
    assert weights_of(model) is w, "weights are extracted once per model"
    ours = F.run(w, tokens)
    tol = _tolerance(model)
    for layer in range(model.cfg.n_layers):
        for site, hook in HOOKS.items():
            want = cache[f"blocks.{layer}.{hook}"]
            got = ours.activation(site, layer)
            assert got.shape == want.shape, (site, layer)
            assert _relative_error(got, want) < tol, (site, layer)
        want = cache[f"blocks.{layer}.hook_resid_post"]
        assert _relative_error(ours.resid_post(layer), want) < tol
    assert _relative_error(ours.scale_final, cache["ln_final.hook_scale"]) < tol
    assert _relative_error(F.logits_of(w, ours), logits) < tol
    answers = tokens_for(model, 3, 2, seed=5)
    got = F.answer_logits(w, ours.resid_final[:, -1], answers)
    assert _relative_error(got, logits[:, -1].gather(1, answers)) < tol


@pytest.mark.parametrize("name", ["tiny32", "tiny64", "pythia70"])
def test_start_layer_and_position_reproduce_the_run(name, request):
    model = request.getfixturevalue(name)
    w = weights_of(model)
    tokens = tokens_for(model, 2, 8)
    base = F.run(w, tokens)
    answers = tokens_for(model, 2, 2, seed=3)
    want = F.answer_logits(w, base.resid_final[:, -1], answers)
    tol = _tolerance(model)
    for layer in range(w.n_layers):
        for pos in (0, 3, 7):
            out = F.forward(
                w,
                base.resid_pre[layer][:, pos:],
                start_layer=layer,
                start_pos=pos,
                prefix=base,
                answers=answers,
                record=[(w.n_layers - 1, "z")],
            )
            assert out.resid.shape == (2, 8 - pos, w.d_model)
            assert _relative_error(out.resid, base.resid_final[:, pos:]) < tol
            assert _relative_error(out.answer_logits, want) < tol
            recorded = out.records[(w.n_layers - 1, "z")]
            assert _relative_error(recorded, base.z[-1][:, pos:]) < tol
        final = F.forward(w, base.resid_pre[layer], start_layer=layer, final_only=True)
        assert final.resid.shape == (2, 1, w.d_model)
        assert _relative_error(final.resid[:, 0], base.resid_final[:, -1]) < tol


def _hooked_logits(model, tokens, layer, site, value, mask):
    def hook(activation, hook):
        return torch.where(mask, value.to(activation), activation)

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.{HOOKS[site]}", hook)])


@pytest.mark.parametrize("site", ["q", "k", "v", "pattern", "z"])
@pytest.mark.parametrize("name", ["tiny32", "tiny64", "tiny_sequential"])
def test_edits_equal_hooked_bridge_runs(site, name, request):
    """An edit of some heads, some rows and (from ``start_pos``) some positions gives the
    logits of the bridge run with a hook making the same edit."""
    model = request.getfixturevalue(name)
    w = weights_of(model)
    tokens = tokens_for(model, 3, 8)
    other = tokens_for(model, 3, 8, seed=9)
    base, donor = F.run(w, tokens), F.run(w, other)
    layer, pos = 1, 4
    value = donor.activation(site, layer)
    mask = torch.zeros_like(value, dtype=torch.bool)
    if site == "pattern":
        mask[[0, 2], 1, pos:] = True
        mask[1, 3, pos] = True
    else:
        mask[[0, 2], pos:, 1] = True
        mask[1, pos, 3] = True
    want = _hooked_logits(model, tokens, layer, site, value, mask)
    out = F.forward(
        w,
        base.resid_pre[layer],
        start_layer=layer,
        start_pos=pos,
        prefix=base,
        edits=[F.Edit(layer, site, value, mask)],
        full_logits=True,
        record=[(layer, site)],
    )
    tol = _tolerance(model)
    assert _relative_error(out.logits, want[:, pos:]) < tol
    recorded = out.records[(layer, site)]
    pos_dim = 2 if site == "pattern" else 1
    expected = torch.where(mask, value, base.activation(site, layer)).narrow(pos_dim, pos, 8 - pos)
    assert _relative_error(recorded, expected) < tol
    assert not torch.allclose(out.logits, F.logits_of(w, base)[:, pos:]), "the edit did nothing"


def test_variants_batch_like_separate_forwards(tiny32):
    """Rows ``v * n + i`` with values shared over variants equal one forward per variant."""
    w = weights_of(tiny32)
    tokens, other = tokens_for(tiny32, 3, 7), tokens_for(tiny32, 3, 7, seed=2)
    base, donor = F.run(w, tokens), F.run(w, other)
    answers = tokens_for(tiny32, 3, 2, seed=4)
    masks = [F.head_mask(w, [h]) for h in range(w.n_heads)]
    batched_mask = torch.cat([m.expand(3, -1, -1, -1) for m in masks])
    batched = F.forward(
        w,
        base.resid_pre[2],
        start_layer=2,
        edits=[F.Edit(2, "v", donor.v[2], batched_mask)],
        answers=answers,
        final_only=True,
    )
    assert batched.answer_logits.shape == (w.n_heads * 3, 2)
    for h, mask in enumerate(masks):
        single = F.forward(
            w,
            base.resid_pre[2],
            start_layer=2,
            edits=[F.Edit(2, "v", donor.v[2], mask)],
            answers=answers,
        )
        torch.testing.assert_close(
            batched.answer_logits[3 * h : 3 * h + 3], single.answer_logits, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("name", ["tiny64", "tiny_sequential"])
def test_frozen_heads_let_mlps_recompute(name, request):
    """Freezing every head's z to the clean run's, except one head from the corrupted run, as
    the study's path patching step 2 does, equals the hooked bridge (MLPs recompute), and the
    recorded receiver queries equal the bridge's."""
    model = request.getfixturevalue(name)
    w = weights_of(model)
    clean_tokens, corrupted_tokens = tokens_for(model, 2, 6), tokens_for(model, 2, 6, seed=7)
    clean, corrupted = F.run(w, clean_tokens), F.run(w, corrupted_tokens)
    sender = (0, 2)

    def frozen(layer):
        z = clean.z[layer].clone()
        if layer == sender[0]:
            z[:, :, sender[1]] = corrupted.z[layer][:, :, sender[1]]
        return z

    def freeze(z, hook):
        return frozen(int(hook.name.split(".")[1])).to(z)

    with model.hooks(fwd_hooks=[(lambda name: name.endswith("attn.hook_z"), freeze)]):
        _, want = model.run_with_cache(
            clean_tokens, names_filter=lambda name: name.endswith("attn.hook_q")
        )
    for as_attn_out in (False, True):
        edits = []
        for layer in range(w.n_layers):
            if as_attn_out:
                attn_out = torch.einsum("nphe,hed->npd", frozen(layer), w.W_O[layer])
                edits.append(F.Edit(layer, "attn_out", attn_out + w.b_O[layer]))
            else:
                edits.append(F.Edit(layer, "z", frozen(layer)))
        out = F.forward(
            w,
            clean.resid_pre[0],
            edits=edits,
            record=[(layer, "q") for layer in range(1, w.n_layers)],
            stop_layer=w.n_layers,
        )
        for layer in range(1, w.n_layers):
            got = out.records[(layer, "q")]
            assert _relative_error(got, want[f"blocks.{layer}.attn.hook_q"]) < _tolerance(model)
        assert not torch.allclose(out.records[(2, "q")], clean.q[2]), "the sender changed nothing"


def test_final_logits_of_runs_equal_one_product_per_run(tiny32):
    w = weights_of(tiny32)
    runs = F.run(w, tokens_for(tiny32, 3, 7)), F.run(w, tokens_for(tiny32, 3, 7, seed=2))
    together = F.final_logits_of_runs(w, *runs)
    for run, logits in zip(runs, together, strict=True):
        alone = F.final_logits(w, run.resid_final[:, -1])
        assert logits.shape == (3, 1, w.d_vocab)
        torch.testing.assert_close(logits, alone, rtol=0, atol=1e-5)


def test_forward_rejects_bad_requests(tiny32):
    w = weights_of(tiny32)
    base = F.run(w, tokens_for(tiny32, 2, 5))
    resid = base.resid_pre[1]
    with pytest.raises(F.ForwardError, match="start_layer"):
        F.forward(w, resid, start_layer=3)
    with pytest.raises(F.ForwardError, match="prefix"):
        F.forward(w, resid[:, 2:], start_layer=1, start_pos=2)
    with pytest.raises(F.ForwardError, match="unknown edit site"):
        F.forward(w, resid, start_layer=1, edits=[F.Edit(1, "mlp_in", resid)])
    with pytest.raises(F.ForwardError, match="outside the layers run"):
        F.forward(w, resid, start_layer=1, edits=[F.Edit(0, "z", base.z[0])])
    with pytest.raises(F.ForwardError, match="last layer"):
        F.forward(w, resid, start_layer=1, stop_layer=2, full_logits=True)


def test_chunk_planner_respects_the_budget(tiny32):
    w = weights_of(tiny32)
    per_row = M.bytes_per_row(w, 20)
    assert per_row > 20 * w.d_model * w.bytes_per_element
    assert M.plan_chunk_rows(w, 20, 10, memory_budget=per_row * 10 * 3) == 3
    assert M.plan_chunk_rows(w, 20, 10, memory_budget=1) == 1
    assert M.plan_chunk_rows(w, 20, 10, memory_budget=2**40, max_variants=4) == 4
    assert M.bytes_per_row(w, 40) > 2 * per_row, "attention grows quadratically"


def test_pythia_410m_head_sweep_fits_24_gib():
    """The planner keeps a float32 Pythia-410m head sweep under 24 GiB (weights + the planned
    peak) for the study's batch (56 pairs of 22 tokens) and a large one (1024 prompts of 128
    tokens, which it splits into prompt chunks), with the default budget."""
    d_model, n_layers, n_heads, d_mlp, vocab = 1024, 24, 16, 4096, 50304
    d_head = d_model // n_heads
    weight_bytes = 4 * (n_layers * 12 * d_model**2 + 2 * vocab * d_model)
    for n, seq in ((56, 22), (1024, 128)):
        plan = M.plan_sweep(n_layers, d_model, n_heads, d_head, d_mlp, n, seq, n_heads, 4)
        assert 1 <= plan.prompts <= n
        assert 1 <= plan.variants <= n_heads
        assert plan.peak_bytes <= M.DEFAULT_MEMORY_BUDGET
        assert weight_bytes + plan.peak_bytes < 24 * 2**30
    small = M.plan_sweep(n_layers, d_model, n_heads, d_head, d_mlp, 56, 22, n_heads, 4)
    large = M.plan_sweep(n_layers, d_model, n_heads, d_head, d_mlp, 1024, 128, n_heads, 4)
    assert large.prompts < 1024, "a large batch is split into prompt chunks"
    assert small.prompts * small.variants >= large.prompts * large.variants


def test_bytes_estimate_bounds_a_measured_forward(tiny32):
    """The per-row estimate bounds the bytes a forward allocates per layer (all allocations,
    counted by the profiler on the CPU allocator: more than the peak)."""
    w = weights_of(tiny32)
    tokens = tokens_for(tiny32, 8, 16)
    base = F.run(w, tokens)
    edit = F.Edit(1, "v", base.v[1], F.head_mask(w, [0]))
    with torch.profiler.profile(
        profile_memory=True, activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        F.forward(w, base.resid_pre[1], start_layer=1, edits=[edit], full_logits=False)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.key_averages())
    layers_run = w.n_layers - 1
    assert allocated <= M.bytes_per_row(w, 16) * 8 * layers_run
    assert allocated >= M.bytes_per_row(w, 16) * 8 * layers_run / 4, "estimate is not loose"


def test_final_query_from_a_later_position_reproduces_the_run(pythia70):
    """The last layer's one-query attention (keys beyond the rotary dims and values folded
    through the pattern) reads earlier keys and values from the prefix, for variant rows too."""
    w = weights_of(pythia70)
    base = F.run(w, tokens_for(pythia70, 3, 9))
    last = w.n_layers - 1
    for pos in (0, 4, 8):
        resid = base.resid_pre[last][:, pos:].repeat(2, 1, 1)
        out = F.forward(w, resid, start_layer=last, start_pos=pos, prefix=base, final_only=True)
        assert out.resid.shape == (6, 1, w.d_model)
        want = base.resid_final[:, -1:].repeat(2, 1, 1)
        assert _relative_error(out.resid, want) < 1e-5


def test_run_pair_equals_two_runs_and_runs_each_sequence_once(tiny64, monkeypatch):
    w = weights_of(tiny64)
    clean = tokens_for(tiny64, 4, 6)
    corrupted = clean[[1, 0, 3, 2]].clone()
    corrupted[3, 2] = (corrupted[3, 2] + 1) % 300  # one corrupted prompt is new
    batches = []
    real_run = F.run

    def spy(w_, tokens, keep=None):
        batches.append(tokens.shape[0])
        return real_run(w_, tokens, keep)

    monkeypatch.setattr(F, "run", spy)
    got_clean, got_corrupted = F.run_pair(w, clean, corrupted, {"z"}, {"q", "k", "v", "z"})
    assert batches == [5], "4 clean prompts and one new corrupted one, run together once"
    monkeypatch.setattr(F, "run", real_run)
    for got, tokens, kept in ((got_clean, clean, {"z"}), (got_corrupted, corrupted, {"q", "z"})):
        want = F.run(w, tokens)
        assert torch.equal(got.tokens, tokens)
        assert _relative_error(got.resid_pre, want.resid_pre) < 1e-12
        assert _relative_error(got.resid_final, want.resid_final) < 1e-12
        for site in kept:
            assert _relative_error(got.activation(site, 1), want.activation(site, 1)) < 1e-12
    assert got_clean.q is None, "only the kept sites"
    assert got_clean.pattern is None, "only the kept sites"


def test_records_are_not_overwritten_by_later_forwards(tiny32):
    """Recorded q/k/v are views of the projection only when it is not a reused scratch buffer:
    a later forward of the same shape must leave them as they were."""
    w = weights_of(tiny32)
    base = F.run(w, tokens_for(tiny32, 2, 6))
    other = F.run(w, tokens_for(tiny32, 2, 6, seed=8))
    sites = [(1, "q"), (1, "k"), (1, "v")]
    first = F.forward(w, base.resid_pre[1], start_layer=1, record=sites)
    kept = {site: first.records[site].clone() for site in sites}
    F.forward(w, other.resid_pre[1], start_layer=1)
    F.forward(w, other.resid_pre[1], start_layer=1, record=sites)
    for site in sites:
        assert torch.equal(first.records[site], kept[site]), site


def test_cpu_plan_caps_the_widest_activation(tiny32):
    """On CPU the variants per forward keep ``rows x seq x max(d_mlp, 3 * heads * d_head)``
    under :data:`circuit.engine.memory.CPU_TENSOR_BYTES` (here: Pythia-70m's shape, 32 prompts of
    22 tokens, the benchmark's sweep)."""
    d_model, n_layers, n_heads, d_mlp = 512, 6, 8, 2048
    args = (n_layers, d_model, n_heads, 64, d_mlp, 32, 22, n_heads, 4)
    uncapped = M.plan_sweep(*args)
    capped = M.plan_sweep(*args, max_tensor_bytes=M.CPU_TENSOR_BYTES)
    assert uncapped.variants == n_heads
    assert capped.variants == 4
    assert capped.variants * 32 * 22 * d_mlp * 4 <= M.CPU_TENSOR_BYTES
    assert M.plan_sweep(*args, max_tensor_bytes=1).variants == 1, "one variant always runs"
    w = weights_of(tiny32)
    assert M.plan_for(w, 4, 7, 4, M.DEFAULT_MEMORY_BUDGET).variants == 4


@pytest.mark.parametrize("site", ["q", "k"])
def test_a_one_position_forward_records_the_edited_activation(tiny32, site):
    """From the last position alone (a by-position patch there), an edited ``q``/``k`` is
    recorded as edited: rotary must not be applied to the record in place (a transposed
    one-position tensor counts as contiguous, so ``.contiguous()`` would not copy)."""
    w = weights_of(tiny32)
    base, donor = F.run(w, tokens_for(tiny32, 2, 6)), F.run(w, tokens_for(tiny32, 2, 6, seed=4))
    mask = torch.zeros(2, 6, w.n_heads, 1, dtype=torch.bool)
    mask[:, 5, 1] = True
    for layer in range(w.n_layers):
        out = F.forward(
            w,
            base.resid_pre[layer][:, 5:],
            start_layer=layer,
            stop_layer=layer + 1,
            start_pos=5,
            prefix=base,
            edits=[F.Edit(layer, site, donor.activation(site, layer), mask)],
            record=[(layer, site)],
        )
        want = torch.where(mask, donor.activation(site, layer), base.activation(site, layer))
        assert _relative_error(out.records[(layer, site)], want[:, 5:]) < 1e-6, layer


@pytest.mark.parametrize("site", ["q", "k", "v"])
def test_input_projection_of_chosen_heads_equals_their_slice(tiny32, site):
    """Projecting only the receiver heads (path patching's last receiver layer) gives those
    heads' columns of the every-head projection, in the order asked for."""
    from circuit.engine.kernels import input_projection

    w = weights_of(tiny32)
    run = F.run(w, tokens_for(tiny32, n=2, seq=6))
    every = input_projection(w, 1, run.resid_pre[1], site)
    chosen = input_projection(w, 1, run.resid_pre[1], site, [3, 0])
    assert chosen.shape == (*every.shape[:2], 2, w.d_head)
    torch.testing.assert_close(chosen, every[:, :, [3, 0]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(every, run.activation(site, 1), rtol=1e-5, atol=1e-5)
