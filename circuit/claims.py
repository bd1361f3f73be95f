"""Claim files: schema, parsing and validation.

A claim file is TOML, one per model::

    model = "EleutherAI/pythia-410m"      # a circuit.load_model spec
    revision = "step143000"               # optional
    description = "..."                   # optional

    [dataset]                             # the dataset recipe
    variants = ["study", "heldout", "unfiltered"]   # default variants for every claim
    seed = 42
    n_pairs = 56                          # optional: sampled pairs (2 prompts each)

    [verdict]                             # optional overrides of VerdictSettings
    alpha = 0.05

    [fuzz]                                # optional, for --claims-fuzz (docs/fuzzing.md)
    examples = 10

    [[claims]]
    id = "word-movers"
    kind = "word-movers"
    heads = ["L18H0", "L19H4", "L20H2"]
    roles = { attends_to = "descriptor" }
    thresholds = { share = 0.5, top_k = 3, spearman = 0.3 }
    variants = ["heldout"]                # optional; defaults to [dataset].variants
    family = "two-premise"                # optional; defaults to [dataset].family

Which head lists, roles and thresholds a kind needs is declared in :data:`KIND_SCHEMAS`
(data, checked here); what a kind measures lives in ``circuit.kinds``. Every problem is a
:class:`ClaimFileError` naming the file, the claim id (when there is one) and the reason.
"""

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from circuit.dataset import ROLE_NAMES
from circuit.heads import Head
from circuit.kinds import KINDS
from circuit.kinds.base import KindSchema
from circuit.statistics import MIN_HEAD_SHARE, VerdictSettings
from circuit.syllogisms import VARIANTS
from circuit.templates import FAMILIES


class ClaimFileError(ValueError):
    """A claim file is malformed; the message names the file, the claim and the reason."""

    def __init__(self, path: Path | str, reason: str, claim_id: str | None = None) -> None:
        self.path = str(path)
        self.claim_id = claim_id
        self.reason = reason
        where = f"{self.path}: claim {claim_id!r}" if claim_id else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class DatasetRecipe:
    """How each variant's dataset is built: ``build_dataset(model, variant, seed, n_pairs=...)``."""

    variants: tuple[str, ...]
    seed: int = 42
    n_pairs: int | None = None
    family: str = "study"
    """The prompt family (``circuit.templates.FAMILIES``), e.g. ``"two-premise"``."""


@dataclass(frozen=True)
class FuzzSettings:
    """The ``[fuzz]`` table: draws per claim (None: ``--claims-fuzz``; 0: never fuzz this
    file), the hypothesis seed, and the most judgements one counterexample's shrinking may
    spend (docs/fuzzing.md)."""

    examples: int | None = None
    seed: int = 0
    shrink: int = 20


@dataclass(frozen=True)
class Claim:
    """One claim: a kind, named head lists, roles and thresholds, and its variants."""

    id: str
    kind: str
    heads: Mapping[str, tuple[Head, ...]]
    roles: Mapping[str, str]
    thresholds: Mapping[str, float]
    variants: tuple[str, ...]
    description: str = ""
    options: Mapping[str, str | tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """The kind's further fields (see :attr:`KindSchema.options`), as stated."""
    family: str | None = None
    """The prompt family this claim is judged on; None: the file's ``[dataset]`` family."""

    @property
    def primary_heads(self) -> tuple[Head, ...]:
        """The heads the claim is about (its ``heads`` list)."""
        return self.heads["heads"]

    @property
    def label(self) -> str:
        """Readable name, e.g. ``word-movers[L18H0,L19H4,L20H2]``."""
        return f"{self.id}[{','.join(str(h) for h in self.primary_heads)}]"


@dataclass(frozen=True)
class ClaimFile:
    """A parsed claim file: the model it is about, its dataset recipe and its claims."""

    path: Path
    model: str
    revision: str | None
    dataset: DatasetRecipe
    verdict: VerdictSettings
    claims: tuple[Claim, ...]
    description: str = ""
    fuzz: FuzzSettings = FuzzSettings()

    def cases(self) -> list[tuple[Claim, str]]:
        """Every (claim, variant) pair, in file order."""
        return [(claim, variant) for claim in self.claims for variant in claim.variants]


@dataclass(frozen=True)
class _Context:
    path: Path
    claim_id: str | None = None

    def error(self, reason: str) -> ClaimFileError:
        return ClaimFileError(self.path, reason, self.claim_id)


def parse_head(text: object, ctx: _Context) -> Head:
    """``"L18H0"`` -> ``Head(18, 0)``."""
    head = Head.parse(text) if isinstance(text, str) else None
    if head is None:
        raise ctx.error(f"head {text!r} is not of the form 'L<layer>H<head>' (e.g. 'L18H0')")
    return head


def _table(raw: Mapping[str, Any], key: str, ctx: _Context) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ctx.error(f"{key!r} must be a table, got {type(value).__name__}")
    return value


def _variants(value: object, ctx: _Context, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ctx.error(f"{what} must be a non-empty list of variant names, got {value!r}")
    unknown = [v for v in value if v not in VARIANTS]
    if unknown:
        raise ctx.error(f"unknown dataset variant(s) {unknown} in {what}; known: {list(VARIANTS)}")
    if len(set(value)) != len(value):
        raise ctx.error(f"{what} lists a variant twice: {value}")
    return tuple(value)


def _parse_dataset(raw: Mapping[str, Any], ctx: _Context) -> DatasetRecipe:
    table = _table(raw, "dataset", ctx)
    if "variants" not in table:
        raise ctx.error("[dataset] must name its variants, e.g. variants = ['heldout']")
    unknown = set(table) - {"variants", "seed", "n_pairs", "family"}
    if unknown:
        raise ctx.error(f"[dataset] has unknown keys {sorted(unknown)}")
    family = table.get("family", "study")
    if family not in FAMILIES:
        raise ctx.error(f"[dataset] family must be one of {list(FAMILIES)}, got {family!r}")
    seed, size = table.get("seed", 42), table.get("n_pairs")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ctx.error(f"[dataset] seed must be an integer, got {seed!r}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 2):
        raise ctx.error(f"[dataset] n_pairs must be an integer >= 2, got {size!r}")
    variants = _variants(table["variants"], ctx, "[dataset] variants")
    return DatasetRecipe(variants, seed, size, family)


def _parse_verdict(raw: Mapping[str, Any], ctx: _Context) -> VerdictSettings:
    table = dict(_table(raw, "verdict", ctx))
    known = set(VerdictSettings.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise ctx.error(f"[verdict] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        settings = VerdictSettings(**table)
    except (TypeError, ValueError) as exc:
        raise ctx.error(f"[verdict] is invalid: {exc}") from None
    defaults = VerdictSettings()
    for name in FLOORS:
        if getattr(settings, name) < getattr(defaults, name):
            raise ctx.error(
                f"[verdict] {name} = {getattr(settings, name):g} lowers the rule's floor "
                f"({getattr(defaults, name):g}): a claim file may raise a floor, never lower it"
            )
    return settings


def _parse_fuzz(raw: Mapping[str, Any], ctx: _Context) -> FuzzSettings:
    table = _table(raw, "fuzz", ctx)
    unknown = set(table) - {"examples", "seed", "shrink"}
    if unknown:
        raise ctx.error(f"[fuzz] has unknown keys {sorted(unknown)}; known: examples, seed, shrink")
    for name, minimum in (("examples", 0), ("seed", None), ("shrink", 0)):
        value = table.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(f"[fuzz] {name} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ctx.error(f"[fuzz] {name} must be an integer >= {minimum}, got {value!r}")
    return FuzzSettings(table.get("examples"), table.get("seed", 0), table.get("shrink", 20))


FLOORS: tuple[str, ...] = ("min_clusters", "min_gap", "min_head_share", "min_head_effect")
"""Verdict settings a claim file may raise but not lower (they guard against false CONFIRMED)."""


@dataclass(frozen=True)
class ThresholdRange:
    """The values a threshold may take: ``low``..``high``, each end open or closed."""

    low: float
    high: float
    meaning: str
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


THRESHOLD_RANGES: Mapping[str, ThresholdRange] = MappingProxyType(
    {
        "share": ThresholdRange(0.0, 1.0, "a fraction of the effect", low_open=True),
        "effect": ThresholdRange(0.0, 1.0, "a fraction of the clean-corrupted gap", low_open=True),
        "spearman": ThresholdRange(-1.0, 1.0, "a rank correlation"),
        "recovered": ThresholdRange(
            0.0, 1.0, "a fraction of the clean-corrupted gap kept", low_open=True
        ),
        "drop": ThresholdRange(0.0, 1.0, "a fraction of the clean-corrupted gap", low_open=True),
        "loss": ThresholdRange(0.0, 1.0, "a fraction of the clean-corrupted gap", low_open=True),
        "top_k": ThresholdRange(1.0, math.inf, "a number of heads"),
        "min_head_share": ThresholdRange(
            MIN_HEAD_SHARE, 1.0, "each head's share of the logit diff, at least the rule's floor"
        ),
        "min_head_effect": ThresholdRange(
            MIN_HEAD_SHARE, 1.0, "each head's share of the gap, at least the rule's floor"
        ),
    }
)
"""Allowed values of each threshold (any threshold must also be finite); add new ones here."""


def _parse_claim(raw: object, index: int, recipe: DatasetRecipe, path: Path) -> Claim:
    if not isinstance(raw, Mapping):
        raise ClaimFileError(path, f"claims[{index}] must be a table")
    claim_id = raw.get("id")
    if not isinstance(claim_id, str) or not claim_id.strip():
        raise ClaimFileError(path, f"claims[{index}] has no 'id' (a non-empty string)")
    ctx = _Context(path, claim_id)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ctx.error(f"unknown kind {kind!r}; known kinds: {sorted(KINDS)}")
    schema = KINDS[kind].schema
    allowed = {"id", "kind", "roles", "thresholds", "variants", "description", "family"}
    allowed |= set(schema.heads)
    allowed |= set(schema.options)
    unknown = set(raw) - allowed
    if unknown:
        raise ctx.error(f"unknown keys {sorted(unknown)} for kind {kind!r}")

    heads: dict[str, tuple[Head, ...]] = {}
    for name in schema.heads:
        value = raw.get(name)
        if not isinstance(value, list) or not value:
            raise ctx.error(f"{name!r} must be a non-empty list of heads like ['L18H0']")
        parsed = tuple(parse_head(h, ctx) for h in value)
        if len(set(parsed)) != len(parsed):
            raise ctx.error(f"{name!r} names a head twice: {value}")
        heads[name] = parsed

    roles = _table(raw, "roles", ctx)
    missing_roles = [r for r in schema.roles if r not in roles]
    if missing_roles:
        raise ctx.error(f"missing role(s) {missing_roles} for kind {kind!r}")
    extra_roles = set(roles) - set(schema.roles)
    if extra_roles:
        raise ctx.error(f"unexpected role field(s) {sorted(extra_roles)} for kind {kind!r}")
    for field_name, role in roles.items():
        if role not in ROLE_NAMES:
            raise ctx.error(
                f"unknown role {role!r} for {field_name!r}; known roles: {list(ROLE_NAMES)}"
            )

    thresholds = _table(raw, "thresholds", ctx)
    missing = [t for t in schema.thresholds if t not in thresholds]
    if missing:
        raise ctx.error(f"missing threshold(s) {missing} for kind {kind!r}")
    extra = set(thresholds) - set(schema.thresholds) - set(schema.optional_thresholds)
    if extra:
        raise ctx.error(f"unexpected threshold(s) {sorted(extra)} for kind {kind!r}")
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.error(f"threshold {name!r} must be a number, got {value!r}")
        if name in schema.integer_thresholds and (not isinstance(value, int) or value < 1):
            raise ctx.error(f"threshold {name!r} must be a positive integer, got {value!r}")
        if not math.isfinite(value):
            raise ctx.error(f"threshold {name!r} must be a finite number, got {value!r}")
        allowed_range = THRESHOLD_RANGES.get(name)
        if allowed_range is not None and not allowed_range.admits(value):
            raise ctx.error(
                f"threshold {name!r} = {value!r} is impossible: {name} is "
                f"{allowed_range.meaning}, in {allowed_range}"
            )

    variants = _variants(raw["variants"], ctx, "variants") if "variants" in raw else recipe.variants
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ctx.error("description must be a string")
    options = _parse_options(raw, schema, ctx)
    family = raw.get("family")
    if family is not None and family not in FAMILIES:
        raise ctx.error(f"family must be one of {list(FAMILIES)}, got {family!r}")
    claim = Claim(
        id=claim_id,
        kind=kind,
        heads=MappingProxyType(heads),
        roles=MappingProxyType(dict(roles)),
        thresholds=MappingProxyType({k: float(v) for k, v in thresholds.items()}),
        variants=variants,
        description=description,
        options=options,
        family=family,
    )
    _check_kind_consistency(claim, ctx)
    return claim


def _parse_options(
    raw: Mapping[str, Any], schema: KindSchema, ctx: _Context
) -> Mapping[str, str | tuple[str, ...]]:
    """The kind's option fields, each a string or a non-empty list of distinct strings."""
    missing = [name for name in schema.required_options if name not in raw]
    if missing:
        raise ctx.error(f"missing field(s) {missing}; allowed values: {dict(schema.options)}")
    options: dict[str, str | tuple[str, ...]] = {}
    for name, allowed in schema.options.items():
        if name not in raw:
            continue
        value = raw[name]
        items = value if isinstance(value, list) and name == "positions" else [value]
        if isinstance(value, list) and "all" in value:
            items = []
        if (
            not items
            or not all(isinstance(v, str) and v in allowed for v in items)
            or len(set(items)) != len(items)
        ):
            raise ctx.error(
                f"{name} = {value!r} is not allowed: give one of {list(allowed)}"
                + (" or a list of distinct ones" if name == "positions" else "")
            )
        options[name] = tuple(items) if isinstance(value, list) else value
    return MappingProxyType(options)


def _check_kind_consistency(claim: Claim, ctx: _Context) -> None:
    """Cross-field rules that do not need the model."""
    top_k = claim.thresholds.get("top_k")
    if top_k is not None and top_k < len(claim.primary_heads):
        raise ctx.error(
            f"top_k = {top_k:g} is smaller than the {len(claim.primary_heads)} claimed heads"
        )
    problem = KINDS[claim.kind].check(claim)
    if problem is not None:
        raise ctx.error(problem)


def parse_claim_text(text: str, path: Path | str = "<string>") -> ClaimFile:
    """Parse claim-file TOML text (``path`` is only used in messages and the result)."""
    path = Path(path)
    ctx = _Context(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ctx.error(f"invalid TOML: {exc}") from None
    known = {"model", "revision", "description", "dataset", "verdict", "claims", "fuzz"}
    unknown = set(raw) - known
    if unknown:
        raise ctx.error(f"unknown top-level keys {sorted(unknown)}")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ctx.error("'model' must name the model (a circuit.load_model spec)")
    revision = raw.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ctx.error(f"'revision' must be a string, got {revision!r}")
    recipe = _parse_dataset(raw, ctx)
    verdict = _parse_verdict(raw, ctx)
    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, list) or not claims_raw:
        raise ctx.error("no claims: add at least one [[claims]] table")
    claims = tuple(_parse_claim(c, i, recipe, path) for i, c in enumerate(claims_raw))
    ids = [c.id for c in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ClaimFileError(path, f"duplicate claim ids {duplicates}", duplicates[0])
    return ClaimFile(
        path=path,
        model=model,
        revision=revision,
        dataset=recipe,
        verdict=verdict,
        claims=claims,
        description=str(raw.get("description", "")),
        fuzz=_parse_fuzz(raw, ctx),
    )


def load_claim_file(path: Path | str) -> ClaimFile:
    """Read and parse one claim file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaimFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_claim_text(text, path)


def validate_for_model(claim_file: ClaimFile, n_layers: int, n_heads: int) -> None:
    """Check every head of every claim exists in a model of ``n_layers`` x ``n_heads``."""
    for claim in claim_file.claims:
        for name, heads in claim.heads.items():
            bad = [str(h) for h in heads if not (0 <= h.layer < n_layers and 0 <= h.head < n_heads)]
            if bad:
                raise ClaimFileError(
                    claim_file.path,
                    f"{name} {bad} out of range for a model with {n_layers} layers x "
                    f"{n_heads} heads (valid: L0H0..L{n_layers - 1}H{n_heads - 1})",
                    claim.id,
                )


def discover_claim_files(directory: Path | str) -> list[Path]:
    """Every ``*.toml`` claim file in ``directory`` (sorted)."""
    return sorted(Path(directory).glob("*.toml"))


def files_for_model(files: Iterable[ClaimFile], model: str) -> list[ClaimFile]:
    """The claim files whose ``model`` is ``model``."""
    return [f for f in files if f.model == model]


@dataclass(frozen=True)
class ClaimCase:
    """One test: a claim judged on one dataset variant of one model."""

    file: ClaimFile
    claim: Claim
    variant: str
    model: str
    revision: str | None
    prefix: str = field(default="")
    revision_in_id: bool = False
    """Whether the test id names the revision (a run over several revisions)."""

    @property
    def test_id(self) -> str:
        """Readable test id, e.g. ``word-movers[L18H0,L19H4,L20H2]-heldout`` (with
        ``@step400`` appended in a run over several revisions)."""
        suffix = f"@{self.revision}" if self.revision_in_id else ""
        return f"{self.prefix}{self.claim.label}-{self.variant}{suffix}"

    @property
    def dataset(self) -> DatasetRecipe:
        """The recipe this case's dataset is built from: the file's, in the claim's family."""
        family = self.claim.family
        if family is None or family == self.file.dataset.family:
            return self.file.dataset
        return replace(self.file.dataset, family=family)

    @property
    def key(self) -> tuple[str, str, str | None, str, str]:
        """Identity of the case within a run."""
        return (str(self.file.path), self.claim.id, self.revision, self.model, self.variant)
