"""Bad input to the Python API never yields a misleading error or a silent wrong number.

A table-driven battery over patching, path patching, attribution, metrics, datasets, models,
the engine and head notations, on a tiny random GPT-NeoX (2 layers x 4 heads, the bundled
tokenizer): each case asserts the exception type and that the one-line message names the
culprit.
"""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from circuit import attribution, guards, patching, paths
from circuit import engine as forward
from circuit.engine import ForwardError
from circuit.guards import PatchingError
from circuit.heads import Head
from circuit.metrics import LogitDiffMetric, MetricError, logit_diff
from circuit.models import ModelSpecError, load_model
from circuit.syllogisms import DatasetError, build_dataset
from fixtures.tiny_model import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
CLAIMS_DIR = ROOT / "claims"
NO_CUDA = not torch.cuda.is_available()
MISSING_HUB_MODEL = "circuit-claims-test/no-such-model"


@dataclass
class Ctx:
    """What API cases call with: a model, a small dataset and its metric."""

    model: torch.nn.Module
    clean: torch.Tensor
    corrupted: torch.Tensor
    answers: torch.Tensor
    metric: LogitDiffMetric
    tiny_path: Path
    scratch: Path

    @property
    def vocab(self) -> int:
        return int(self.model.cfg.d_vocab)

    def tokens_with(self, value: int) -> torch.Tensor:
        tokens = self.clean.clone()
        tokens[0, 3] = value
        return tokens

    def answers_with(self, value: int) -> torch.Tensor:
        answers = self.answers.clone()
        answers[1, 0] = value
        return answers


@pytest.fixture(scope="module")
def ctx(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    model = load_model(str(tiny_path), device="cpu")
    data = build_dataset(model, "heldout", seed=1, n_pairs=3)
    return Ctx(
        model,
        data.clean_tokens,
        data.corrupted_tokens,
        data.answers,
        LogitDiffMetric(data.answers),
        tiny_path,
        tmp_path_factory.mktemp("scratch"),
    )


# Python API ----------------------------------------------------------------------------------


def nan_metric(logits: torch.Tensor) -> torch.Tensor:
    """A batch metric that is NaN (e.g. a division by a zero baseline)."""
    return logits[:, -1, 0].mean() * float("nan")


def nan_on_prompt_1(logits: torch.Tensor) -> torch.Tensor:
    """A per-prompt metric that is NaN on prompt 1 only."""
    values = logits[:, -1, 0].clone()
    values[1] = float("nan")
    return values


def patch_z(c: Ctx, **changes) -> Callable[[], object]:
    args = {"model": c.model, "clean_tokens": c.clean, "corrupted_tokens": c.corrupted}
    args |= {"metric": c.metric, "component": "z"} | changes
    return lambda: patching.patch_heads(**args)


def patch_resid(c: Ctx, **changes) -> Callable[[], object]:
    args = {"model": c.model, "clean_tokens": c.clean, "corrupted_tokens": c.corrupted}
    args |= {"metric": c.metric} | changes
    return lambda: patching.patch_resid(**args)


def path_q(c: Ctx, **changes) -> Callable[[], object]:
    args = {"model": c.model, "clean_tokens": c.clean, "corrupted_tokens": c.corrupted}
    args |= {"metric": c.metric, "receivers": [(1, 0)], "receiver_input": "q"} | changes
    return lambda: paths.path_patch(**args)


def dataset(c: Ctx, *args, **kwargs) -> Callable[[], object]:
    return lambda: build_dataset(c.model, *args, **kwargs)


def no_tokenizer_dir(c: Ctx) -> str:
    directory = c.scratch / "no-tokenizer"
    if not directory.exists():
        directory.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(c.tiny_path / name, directory / name)
    return str(directory)


def with_revisions_dir(c: Ctx) -> str:
    """The tiny model with the bundled model's revisions layout: final ``step2``, checkpoint
    ``step1`` (other weights) under ``revisions/step1/``."""
    directory = c.scratch / "with-revisions"
    if not directory.exists():
        shutil.copytree(c.tiny_path, directory)
        write_tiny_model(directory / "revisions" / "step1", seed=1)
        (directory / "revisions.json").write_text(json.dumps({"final": "step2"}))
    return str(directory)


@dataclass(frozen=True)
class ApiCase:
    """A bad call (built from the context), the error it must raise and what it must name."""

    id: str
    call: Callable[[Ctx], Callable[[], object]]
    error: type[Exception]
    names: tuple[str, ...]
    needs_no_cuda: bool = False


# fmt: off
API_CASES: tuple[ApiCase, ...] = (
    # patch_heads: model, tokens, metric, sizes, flags
    ApiCase("patch_heads model=None", lambda c: patch_z(c, model=None), PatchingError,
            ("patch_heads", "model must be a TransformerBridge", "NoneType")),
    ApiCase("patch_heads negative token id", lambda c: patch_z(c, clean_tokens=c.tokens_with(-1)),
            PatchingError, ("clean_tokens", "token id -1", "[0, 3]")),
    ApiCase("patch_heads token id = vocab",
            lambda c: patch_z(c, corrupted_tokens=c.tokens_with(c.vocab)),
            PatchingError, ("corrupted_tokens", "token id 831", "[0, 831)")),
    ApiCase("patch_heads float tokens", lambda c: patch_z(c, clean_tokens=c.clean.float()),
            PatchingError, ("clean_tokens", "LongTensor", "float32")),
    ApiCase("patch_heads memory_budget=0", lambda c: patch_z(c, memory_budget=0),
            PatchingError, ("memory_budget", "positive integer", "got 0")),
    ApiCase("patch_heads memory_budget=-1", lambda c: patch_z(c, memory_budget=-1),
            PatchingError, ("memory_budget", "got -1")),
    ApiCase("patch_heads memory_budget=1.5", lambda c: patch_z(c, memory_budget=1.5),
            PatchingError, ("memory_budget", "got 1.5")),
    ApiCase("patch_heads memory_budget=True", lambda c: patch_z(c, memory_budget=True),
            PatchingError, ("memory_budget", "got True")),
    ApiCase("patch_heads component", lambda c: patch_z(c, component="zz"), PatchingError,
            ("unknown component 'zz'",)),
    ApiCase("patch_heads per_prompt='yes'", lambda c: patch_z(c, per_prompt="yes"),
            PatchingError, ("per_prompt", "'yes'")),
    ApiCase("patch_heads by_position=1", lambda c: patch_z(c, by_position=1), PatchingError,
            ("by_position", "got 1")),
    ApiCase("patch_heads answers outside vocab",
            lambda c: patch_z(c, metric=LogitDiffMetric(c.answers_with(c.vocab + 5))),
            PatchingError, ("metric answers", "token id 836", "[1, 0]")),
    ApiCase("patch_heads metric not callable", lambda c: patch_z(c, metric=5), PatchingError,
            ("metric must be a LogitDiffMetric or a callable", "int")),
    ApiCase("patch_heads NaN metric", lambda c: patch_z(c, metric=nan_metric), MetricError,
            ("nan", "z patch at L0H0", "prompts 0..5")),
    ApiCase("patch_heads NaN per-prompt metric",
            lambda c: patch_z(c, metric=nan_on_prompt_1, per_prompt=True, by_position=True),
            MetricError, ("nan", "z patch at L0H0 pos 0", "prompt(s) [1]")),
    ApiCase("patch_heads metric returns None", lambda c: patch_z(c, metric=lambda logits: None),
            PatchingError, ("metric returned None",)),
    ApiCase("patch_heads metric of wrong shape",
            lambda c: patch_z(c, metric=lambda logits: logits[:, -1, 0]),
            PatchingError, ("shape (6,)", "expected a scalar")),
    # patch_resid
    ApiCase("patch_resid model=None", lambda c: patch_resid(c, model=None), PatchingError,
            ("patch_resid", "model must be")),
    ApiCase("patch_resid memory_budget=0", lambda c: patch_resid(c, memory_budget=0),
            PatchingError, ("memory_budget", "got 0")),
    ApiCase("patch_resid NaN metric", lambda c: patch_resid(c, metric=nan_metric), MetricError,
            ("nan", "resid_pre patch at L0 pos 0")),
    # path_patch
    ApiCase("path_patch NaN metric", lambda c: path_q(c, metric=nan_metric), MetricError,
            ("nan", "sender L0H0", "L1H0 (q)", "prompts 0..5")),
    ApiCase("path_patch NaN per-prompt metric",
            lambda c: path_q(c, metric=nan_on_prompt_1, per_prompt=True), MetricError,
            ("sender L0H0", "prompt(s) [1]")),
    ApiCase("path_patch model=None", lambda c: path_q(c, model=None), PatchingError,
            ("path_patch", "model must be")),
    ApiCase("path_patch receiver out of range", lambda c: path_q(c, receivers=["L9H0"]),
            PatchingError, ("layer 9 out of range", "2 layers")),
    ApiCase("path_patch receiver text", lambda c: path_q(c, receivers=["X1"]), PatchingError,
            ("'X1'", "L<layer>H<head>")),
    ApiCase("path_patch receivers empty", lambda c: path_q(c, receivers=[]), PatchingError,
            ("receivers is empty",)),
    ApiCase("path_patch float head", lambda c: path_q(c, receivers=[(1.0, 0)]), PatchingError,
            ("(1.0, 0)", "must be integers")),
    ApiCase("path_patch head a number", lambda c: path_q(c, receivers=[5]), PatchingError,
            ("head 5", "not a (layer, head) pair")),
    ApiCase("path_patch repeated receiver", lambda c: path_q(c, receivers=[Head(1, 0), "L1H0"]),
            PatchingError, ("repeated heads in receivers", "L1H0")),
    ApiCase("path_patch chunk_bytes=0", lambda c: path_q(c, chunk_bytes=0), PatchingError,
            ("chunk_bytes", "got 0")),
    ApiCase("path_patch negative token id",
            lambda c: path_q(c, corrupted_tokens=c.tokens_with(-3)), PatchingError,
            ("corrupted_tokens", "token id -3")),
    ApiCase("path_patch answers outside vocab",
            lambda c: path_q(c, metric=LogitDiffMetric(c.answers_with(10**6))), PatchingError,
            ("metric answers", "token id 1000000")),
    ApiCase("path_patch mode", lambda c: path_q(c, mode="edge"), PatchingError,
            ("mode must be one of", "'edge'")),
    ApiCase("path_patch receiver_input", lambda c: path_q(c, receiver_input="z"),
            PatchingError, ("receiver_input", "'z'")),
    # metrics
    ApiCase("LogitDiffMetric float answers", lambda c: lambda: LogitDiffMetric(c.answers.float()),
            MetricError, ("answers", "LongTensor", "float32")),
    ApiCase("LogitDiffMetric negative answer",
            lambda c: lambda: LogitDiffMetric(c.answers_with(-2)), MetricError,
            ("answers", "token id -2", "[1, 0]")),
    ApiCase("LogitDiffMetric answers [n, 3]",
            lambda c: lambda: LogitDiffMetric(torch.zeros(2, 3, dtype=torch.long)), MetricError,
            ("answers must be [n, 2]", "(2, 3)")),
    ApiCase("LogitDiffMetric answers a list", lambda c: lambda: LogitDiffMetric([[1, 2]]),
            MetricError, ("answers must be a torch.Tensor", "list")),
    ApiCase("LogitDiffMetric NaN baseline",
            lambda c: lambda: LogitDiffMetric(c.answers, float("nan"), 0.0), MetricError,
            ("clean_baseline", "finite", "nan")),
    ApiCase("LogitDiffMetric text baseline",
            lambda c: lambda: LogitDiffMetric(c.answers, 1.0, "0"), MetricError,
            ("corrupted_baseline", "number", "'0'")),
    ApiCase("LogitDiffMetric per_prompt='no'",
            lambda c: lambda: LogitDiffMetric(c.answers, per_prompt="no"), MetricError,
            ("per_prompt", "'no'")),
    ApiCase("LogitDiffMetric answers outside the logits",
            lambda c: lambda: LogitDiffMetric(c.answers_with(900))(torch.zeros(6, 5, 831)),
            MetricError, ("token id 900", "vocabulary of 831")),
    ApiCase("logit_diff integer logits",
            lambda c: lambda: logit_diff(torch.zeros(6, 831, dtype=torch.long), c.answers),
            MetricError, ("logits", "floating-point", "int64")),
    # attribution
    ApiCase("logit_attribution model=None",
            lambda c: lambda: attribution.logit_attribution(None, c.clean, c.answers),
            PatchingError, ("logit_attribution", "model must be")),
    ApiCase("logit_attribution token id = vocab",
            lambda c: lambda: attribution.logit_attribution(c.model, c.tokens_with(831), c.answers),
            PatchingError, ("tokens", "token id 831")),
    ApiCase("logit_attribution float answers",
            lambda c: lambda: attribution.logit_attribution(c.model, c.clean, c.answers.float()),
            PatchingError, ("answers", "LongTensor", "float32")),
    ApiCase("word_mover_profile head out of range",
            lambda c: lambda: attribution.word_mover_profile(
                c.model, c.clean, c.answers, ["L1H9"], 3),
            PatchingError, ("head 9 of layer 1 out of range", "4 heads")),
    ApiCase("word_mover_profile float position",
            lambda c: lambda: attribution.word_mover_profile(
                c.model, c.clean, c.answers, [(1, 0)], 1.5),
            PatchingError, ("position must be an integer", "1.5")),
    # datasets
    ApiCase("build_dataset seed='abc'", lambda c: dataset(c, "heldout", seed="abc"),
            DatasetError, ("seed", "'abc'", "integer")),
    ApiCase("build_dataset seed=1.5", lambda c: dataset(c, "heldout", seed=1.5), DatasetError,
            ("seed", "1.5")),
    ApiCase("build_dataset seed=True", lambda c: dataset(c, "heldout", seed=True), DatasetError,
            ("seed", "True")),
    ApiCase("build_dataset n_pairs='5'", lambda c: dataset(c, "heldout", n_pairs="5"),
            DatasetError, ("n_pairs", "'5'", "integer >= 1")),
    ApiCase("build_dataset n_pairs=0", lambda c: dataset(c, "heldout", n_pairs=0), DatasetError,
            ("n_pairs", "got 0")),
    ApiCase("build_dataset n_pairs=100000", lambda c: dataset(c, "heldout", n_pairs=100000),
            DatasetError, ("n_pairs = 100000", "heldout filters leave only", "allow_fewer=True")),
    ApiCase("build_dataset variant", lambda c: dataset(c, "train"), DatasetError,
            ("unknown dataset variant 'train'",)),
    ApiCase("build_dataset variant None", lambda c: dataset(c, None), DatasetError,
            ("unknown dataset variant None",)),
    ApiCase("build_dataset model=None", lambda c: lambda: build_dataset(None, "heldout"),
            DatasetError, ("model must be", "NoneType")),
    ApiCase("build_dataset unknown option", lambda c: dataset(c, "heldout", npairs=5),
            DatasetError, ("unknown dataset option", "npairs")),
    ApiCase("build_dataset allow_fewer='yes'",
            lambda c: dataset(c, "heldout", allow_fewer="yes"), DatasetError,
            ("allow_fewer", "'yes'")),
    # models
    ApiCase("load_model directory without tokenizer",
            lambda c: lambda: load_model(no_tokenizer_dir(c)), ModelSpecError,
            ("no-tokenizer", "no tokenizer files", "tokenizer.json")),
    ApiCase("load_model --revision on a plain directory",
            lambda c: lambda: load_model(str(c.tiny_path), revision="step100"), ModelSpecError,
            ("revision 'step100'", "bad-inputs", "has no revisions")),
    ApiCase("load_model unknown revision of a directory with revisions",
            lambda c: lambda: load_model(with_revisions_dir(c), revision="step9"),
            ModelSpecError, ("no revision 'step9'", "['step1', 'step2']")),
    ApiCase("load_model missing directory", lambda c: lambda: load_model("/nonexistent"),
            ModelSpecError, ("/nonexistent", "does not exist")),
    ApiCase("load_model dtype float8", lambda c: lambda: load_model("bundled", dtype="float8"),
            ModelSpecError, ("'float8'",)),
    ApiCase("load_model device cuda", lambda c: lambda: load_model("bundled", device="cuda"),
            ModelSpecError, ("'cuda'", "CUDA is not available"), needs_no_cuda=True),
    ApiCase("load_model device tpu", lambda c: lambda: load_model("bundled", device="tpu"),
            ModelSpecError, ("'tpu'",)),
    ApiCase("load_model random:unknown", lambda c: lambda: load_model("random:unknown"),
            ModelSpecError, ("'unknown'", "random shape")),
    ApiCase("load_model typo", lambda c: lambda: load_model("bundlde"), ModelSpecError,
            ("'bundlde'", "neither 'bundled'")),
    ApiCase("load_model bundled step999",
            lambda c: lambda: load_model("bundled", revision="step999"), ModelSpecError,
            ("no revision 'step999'", "step3000")),
    ApiCase("load_model revision of random weights",
            lambda c: lambda: load_model("random:bundled", revision="step1"), ModelSpecError,
            ("random:bundled", "no revisions", "'step1'")),
    # the functional forward
    ApiCase("weights_of(None)", lambda c: lambda: forward.weights_of(None), ForwardError,
            ("model must be a TransformerBridge", "NoneType")),
    ApiCase("forward.run token id = vocab",
            lambda c: lambda: forward.run(forward.weights_of(c.model), c.tokens_with(831)),
            ForwardError, ("id 831", "[0, 831)")),
    ApiCase("plan_sweep memory_budget=0",
            lambda c: lambda: forward.plan_for(forward.weights_of(c.model), 6, 22, 4, 0),
            ForwardError, ("memory_budget", "got 0")),
    # head notations
    ApiCase("as_heads a number", lambda c: lambda: guards.as_heads(5, 2, 4), PatchingError,
            ("heads must be a list of heads", "5")),
    ApiCase("as_heads a triple", lambda c: lambda: guards.as_heads([(0, 1, 2)], 2, 4),
            PatchingError, ("(0, 1, 2)", "not a (layer, head) pair")),
    ApiCase("as_heads bool layer", lambda c: lambda: guards.as_heads([(True, 0)], 2, 4),
            PatchingError, ("(True, 0)", "integers")),
    ApiCase("as_heads Head out of range", lambda c: lambda: guards.as_heads([Head(0, 4)], 2, 4),
            PatchingError, ("head 4 of layer 0 out of range",)),
)
# fmt: on


@pytest.mark.parametrize("case", API_CASES, ids=[case.id for case in API_CASES])
def test_api_refuses_bad_input_in_one_line(ctx: Ctx, case: ApiCase) -> None:
    if case.needs_no_cuda and not NO_CUDA:
        pytest.skip("CUDA is available here")
    with pytest.raises(case.error) as raised:
        case.call(ctx)()
    message = str(raised.value)
    assert "\n" not in message
    for name in case.names:
        assert name in message, f"{name!r} not in {message!r}"


def test_every_head_notation_gives_the_same_path_patch(ctx: Ctx) -> None:
    args = (ctx.model, ctx.clean, ctx.corrupted, ctx.metric)
    by_tuple = paths.path_patch(*args, [(1, 0), (1, 2)], "q", verify=False)
    by_head = paths.path_patch(*args, [Head(1, 0), Head(1, 2)], "q", verify=False)
    by_text = paths.path_patch(*args, ["L1H0", "L1H2"], "q", verify=False)
    lone = paths.path_patch(*args, "L1H0", "q", verify=False)
    assert torch.equal(by_tuple.nan_to_num(), by_head.nan_to_num())
    assert torch.equal(by_tuple.nan_to_num(), by_text.nan_to_num())
    assert lone.shape == by_tuple.shape
    profile = attribution.word_mover_profile(ctx.model, ctx.clean, ctx.answers, ["L1H0"], 3)
    assert profile.heads == [(1, 0)]


def test_allow_fewer_uses_every_pair_and_says_so(ctx: Ctx) -> None:
    data = build_dataset(ctx.model, "heldout", n_pairs=100000, allow_fewer=True)
    sample = data.filters[-1]
    assert "asked for 100000 pairs (allow_fewer)" in sample.name
    assert sample.kept == sample.total < 100000


def test_a_directory_with_revisions_honours_revision(ctx: Ctx) -> None:
    directory = with_revisions_dir(ctx)
    final = load_model(directory, revision="step2")
    checkpoint = load_model(directory, revision="step1")
    assert torch.equal(final.W_U, ctx.model.W_U)
    assert not torch.equal(checkpoint.W_U, final.W_U)


def test_hooked_final_logits_are_the_full_forwards_final_position(bundled_model) -> None:
    """The early-stopped hooked run gives the full hooked run's last-position logits (to float
    rounding), applies the caller's hooks, and leaves no hook behind."""
    tokens = torch.randint(
        1, bundled_model.cfg.d_vocab, (3, 9), generator=torch.Generator().manual_seed(0)
    )

    def silence_head(z: torch.Tensor, hook: object) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    hooks = [("blocks.1.attn.hook_z", silence_head)]
    full = bundled_model.run_with_hooks(tokens, fwd_hooks=hooks)
    final = guards.hooked_final_logits(bundled_model, tokens, hooks)
    assert final.shape == (3, 1, bundled_model.cfg.d_vocab)
    torch.testing.assert_close(final[:, 0], full[:, -1], rtol=0, atol=1e-5)
    assert (final[:, 0] - bundled_model(tokens)[:, -1]).abs().max() > 1e-3
    assert all(not point._forward_hooks for point in bundled_model.hook_dict.values())
    assert torch.equal(bundled_model(tokens), bundled_model.run_with_hooks(tokens, fwd_hooks=[]))


def test_hooked_final_logits_refuse_a_run_that_never_reaches_the_unembedding() -> None:
    class Halting(torch.nn.Module):
        def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: list) -> torch.Tensor:
            return tokens

    with pytest.raises(guards.PatchNotApplied, match=r"unembed\.hook_in hook fired 0 times"):
        guards.hooked_final_logits(Halting(), torch.zeros(1, 2, dtype=torch.long))
