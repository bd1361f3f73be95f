"""How fast a patching sweep can be made: the multiply-adds a patch must recompute, against
the reference's.

A patch at layer ``L`` from position ``p`` on changes nothing before ``L`` or before ``p``, so
an exact sweep must recompute, for each cell, layers ``L ..`` at positions ``p ..`` (the last
layer only at the final position, plus the keys and values it reads) and the two answer
columns of the unembedding. The reference (``transformer_lens.patching``) runs one whole
forward per cell and unembeds every position over the whole vocabulary. The ratio of the two
counts is the speed-up an exact fast routine gets when it runs at the reference's
multiply-adds per second; a larger speed-up needs a higher rate than the reference's, not less
work. Attention-score multiply-adds (``positions x keys x d_head`` per head) are counted on
both sides.

``python benchmarks/flop_bound.py`` prints the bound for ``benchmarks/bench_patching.py``'s
sweeps on the ``pythia-70m`` shape. Not collected by pytest (arithmetic only, no model).
"""

import argparse
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A transformer's sizes (GPT-NeoX family: untied unembedding)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int

    @property
    def projection(self) -> int:
        """Multiply-adds of one head-group projection (q, k, v or out) at one position."""
        return self.d_model * self.n_heads * self.d_head

    @property
    def mlp(self) -> int:
        return 2 * self.d_model * self.d_mlp

    def scores(self, queries: int, keys: int) -> int:
        """Pattern and pattern @ v for ``queries`` query positions over ``keys`` keys."""
        return 2 * queries * keys * self.n_heads * self.d_head

    def layer(self, positions: int, seq: int) -> int:
        """One whole layer at the last ``positions`` positions of a ``seq``-token prompt."""
        return positions * (4 * self.projection + self.mlp) + self.scores(positions, seq)


PYTHIA_70M = Shape(n_layers=6, d_model=512, n_heads=8, d_head=64, d_mlp=2048, d_vocab=50304)


def reference_macs(shape: Shape, forwards: int, batch: int, seq: int) -> int:
    """``forwards`` whole forwards of ``batch`` prompts with full-vocabulary unembedding."""
    per_prompt = shape.n_layers * shape.layer(seq, seq) + seq * shape.d_model * shape.d_vocab
    return forwards * batch * per_prompt


def minimal_macs(shape: Shape, batch: int, seq: int, cells: Iterable[tuple[int, int]]) -> int:
    """What the cells ``(layer, first position)`` must recompute: the layers from ``layer`` at
    the positions from ``first``, the last layer's query, output and MLP only at the final
    position (its keys and values at every recomputed position), and two answer columns."""
    total = 0
    last = shape.n_layers - 1
    for layer, first in cells:
        positions = seq - first
        for _ in range(layer, last):
            total += shape.layer(positions, seq)
        if layer < last:
            total += positions * 2 * shape.projection
        total += 2 * shape.projection + shape.mlp + shape.scores(1, seq)
        total += 2 * shape.d_model
    return batch * total


@dataclass(frozen=True)
class Sweep:
    """One benchmarked sweep: its reference forwards and the cells it patches."""

    name: str
    forwards: int
    seq: int
    cells: tuple[tuple[int, int], ...]


def sweeps(shape: Shape, all_pos_seq: int, first_diff: int, by_pos_seq: int) -> list[Sweep]:
    """``bench_patching.py``'s sweeps: every head at all positions (from the first position where
    clean and corrupted differ), every head x position, and ``resid_pre`` by position."""
    layers, heads = range(shape.n_layers), range(shape.n_heads)
    all_pos = tuple((layer, first_diff) for layer in layers for _ in heads)
    by_pos = tuple((layer, pos) for layer in layers for pos in range(by_pos_seq) for _ in heads)
    resid = tuple((layer, pos) for layer in layers for pos in range(by_pos_seq))
    return [
        Sweep("patch_heads, all positions", len(all_pos), all_pos_seq, all_pos),
        Sweep("patch_heads, by position", len(by_pos), by_pos_seq, by_pos),
        Sweep("patch_resid (by position)", len(resid), by_pos_seq, resid),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--all-pos-seq", type=int, default=22)
    parser.add_argument("--first-diff", type=int, default=4)
    parser.add_argument("--by-pos-seq", type=int, default=8)
    args = parser.parse_args()
    print("| sweep | reference GMAC | minimal GMAC | speed-up at the reference's rate |")
    print("| --- | --- | --- | --- |")
    for sweep in sweeps(PYTHIA_70M, args.all_pos_seq, args.first_diff, args.by_pos_seq):
        reference = reference_macs(PYTHIA_70M, sweep.forwards, args.batch, sweep.seq)
        minimal = minimal_macs(PYTHIA_70M, args.batch, sweep.seq, sweep.cells)
        print(
            f"| {sweep.name} | {reference / 1e9:.1f} | {minimal / 1e9:.2f} | "
            f"{reference / minimal:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
