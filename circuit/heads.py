"""The one attention-head type of the project: ``Head(layer, head)``, written ``L{layer}H{head}``.

A :class:`Head` is a named pair, so it compares, hashes and unpacks as the ``(layer, head)``
tuple that ``transformer_lens`` users write; claim files and reports write it ``"L18H0"``.
"""

import re
from typing import NamedTuple

HEAD_TEXT = re.compile(r"^L(\d+)H(\d+)$")
"""How a head is written in claim files, test ids and reports."""


class Head(NamedTuple):
    """An attention head: its ``layer`` and its ``head`` index within the layer."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def flat(self, n_heads: int) -> int:
        """This head's index in a flattened ``[layer, head]`` grid of ``n_heads`` per layer."""
        return self.layer * n_heads + self.head

    @classmethod
    def from_flat(cls, index: int, n_heads: int) -> "Head":
        """The head at ``index`` of a flattened ``[layer, head]`` grid."""
        return cls(int(index) // n_heads, int(index) % n_heads)

    @classmethod
    def parse(cls, text: str) -> "Head | None":
        """``"L18H0"`` -> ``Head(18, 0)``; None when ``text`` is not written that way."""
        match = HEAD_TEXT.match(text.strip())
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2)))
