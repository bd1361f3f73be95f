"""The rank-``d_head`` next block equals the plain forward of the same patched stream."""

import pytest
import torch

from circuit.engine import forward as F
from circuit.engine import lowrank
from circuit.engine.weights import weights_of
from fixtures.tiny_model import boot, save_tiny_neox, tokens_for


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def _plain(w, base, layer, heads, z_diff, start_pos):
    """The same variants through :func:`circuit.engine.forward.forward`: add the head writes to
    ``resid_post(layer)`` and run one block."""
    delta = torch.einsum("npve,ved->vnpd", z_diff, w.W_O[layer][heads])
    resid = (base.resid_post(layer)[:, start_pos:] + delta).flatten(0, 1)
    out = F.forward(
        w, resid, start_layer=layer + 1, stop_layer=layer + 2, start_pos=start_pos, prefix=base
    )
    return out.resid


@pytest.mark.parametrize("name", ["tiny32", "tiny64", "pythia70"])
@pytest.mark.parametrize("start_pos", [0, 3])
def test_next_block_equals_the_plain_forward(name, start_pos, request):
    """Head patches from another run (real ``z`` differences) and random ones, at every layer
    with a following block that is not the last, several heads per batch."""
    model = request.getfixturevalue(name)
    w = weights_of(model)
    tol = 1e-10 if w.dtype == torch.float64 else 2e-5
    base = F.run(w, tokens_for(model, 3, 8))
    donor = F.run(w, tokens_for(model, 3, 8, seed=5))
    generator = torch.Generator().manual_seed(0)
    heads = torch.tensor([w.n_heads - 1, 0, 1])
    for layer in range(w.n_layers - 2):
        patched = (donor.z[layer] - base.z[layer])[:, start_pos:, heads]
        noise = torch.randn(patched.shape, generator=generator, dtype=w.dtype)
        for z_diff in (patched, noise):
            prepared = lowrank.prepare_next_block(w, base, layer)
            got = lowrank.block_after_head_write(w, base, prepared, heads, z_diff, start_pos)
            want = _plain(w, base, layer, heads, z_diff, start_pos)
            assert got.shape == want.shape == (3 * len(heads), 8 - start_pos, w.d_model)
            assert _relative_error(got, want) < tol, (layer, start_pos)
            unpatched = base.resid_post(layer + 1)[:, start_pos:]
            assert not torch.allclose(got[:3], unpatched), "the write changed nothing"


def test_a_zero_write_reproduces_the_base_run(tiny64):
    w = weights_of(tiny64)
    base = F.run(w, tokens_for(tiny64, 2, 6))
    prepared = lowrank.prepare_next_block(w, base, 0)
    z_diff = torch.zeros(2, 6, 2, w.d_head, dtype=w.dtype)
    got = lowrank.block_after_head_write(w, base, prepared, torch.tensor([0, 3]), z_diff, 0)
    assert _relative_error(got, base.resid_post(1).repeat(2, 1, 1)) < 1e-12


def test_needs_a_parallel_model_and_a_block_that_is_not_last(tiny32, tmp_path):
    w = weights_of(tiny32)
    base = F.run(w, tokens_for(tiny32, 2, 5))
    with pytest.raises(ValueError, match="not the last"):
        lowrank.prepare_next_block(w, base, w.n_layers - 2)
    sequential = boot(save_tiny_neox(tmp_path / "seq", parallel=False))
    ws = weights_of(sequential)
    with pytest.raises(ValueError, match="parallel"):
        lowrank.prepare_next_block(ws, F.run(ws, tokens_for(sequential, 2, 5)), 0)


@pytest.mark.parametrize("name", ["tiny32", "pythia70"])
@pytest.mark.parametrize("start_pos", [0, 3])
def test_next_mlp_with_frozen_attention_equals_the_plain_forward(name, start_pos, request):
    """Path patching's step 2: the block after the senders with its attention frozen to the
    base run's, the MLP input at rank ``d_head``, against the plain forward of the same stream
    with an ``attn_out`` edit; every layer with a following block."""
    model = request.getfixturevalue(name)
    w = weights_of(model)
    base = F.run(w, tokens_for(model, 3, 8))
    donor = F.run(w, tokens_for(model, 3, 8, seed=5))
    heads = torch.tensor([w.n_heads - 1, 0, 1])
    for layer in range(w.n_layers - 1):
        z_diff = (donor.z[layer] - base.z[layer])[:, start_pos:, heads]
        delta = torch.einsum("npve,ved->vnpd", z_diff, w.W_O[layer][heads])
        prepared = lowrank.prepare_next_mlp(w, base, layer)
        x_new, got = lowrank.mlp_after_head_write(
            w, base, prepared, heads, z_diff, delta, start_pos
        )
        block = layer + 1
        frozen = F.Edit(block, "attn_out", base.attn_out[block], None)
        want = F.forward(
            w,
            (base.resid_post(layer)[:, start_pos:] + delta).flatten(0, 1),
            start_layer=block,
            stop_layer=block + 1,
            start_pos=start_pos,
            prefix=base,
            edits=[frozen],
        ).resid
        assert got.shape == want.shape == (3 * len(heads), 8 - start_pos, w.d_model)
        assert _relative_error(got, want) < 2e-5, (layer, start_pos)
        torch.testing.assert_close(
            x_new, (base.resid_pre[block][:, start_pos:] + delta).flatten(0, 1)
        )
        assert not torch.allclose(got[:3], base.resid_post(block)[:, start_pos:])


def test_a_zero_write_through_the_next_mlp_is_the_base_run_exactly(pythia70):
    """No write, no change: the null variant of path patching must move no receiver input."""
    w = weights_of(pythia70)
    base = F.run(w, tokens_for(pythia70, 2, 6))
    prepared = lowrank.prepare_next_mlp(w, base, 1)
    z_diff = torch.zeros(2, 4, 2, w.d_head, dtype=w.dtype)
    delta = torch.zeros(2, 2, 4, w.d_model, dtype=w.dtype)
    x_new, got = lowrank.mlp_after_head_write(
        w, base, prepared, torch.tensor([0, 3]), z_diff, delta, 2
    )
    assert torch.equal(got, base.resid_post(2)[:, 2:].repeat(2, 1, 1))
    assert torch.equal(x_new, base.resid_pre[2][:, 2:].repeat(2, 1, 1))


def test_the_next_mlp_needs_a_parallel_model_and_a_next_block(tiny_sequential, tiny32):
    with pytest.raises(ValueError, match="parallel"):
        lowrank.prepare_next_mlp(weights_of(tiny_sequential), None, 0)
    w = weights_of(tiny32)
    with pytest.raises(ValueError, match="block after"):
        lowrank.prepare_next_mlp(w, None, w.n_layers - 1)
