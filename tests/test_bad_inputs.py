"""Bad input never yields a green run, a misleading error or a silent wrong number.

A table-driven battery: every bad input to the Python API (patching, path patching,
attribution, metrics, datasets, models, the functional forward, head notations), to claim
files and to the pytest plugin's options. Each case asserts the exception type (or the exit
code), that the one-line message names the culprit, and that no output file is left behind.

Python API cases run in-process on a tiny random GPT-NeoX (2 layers x 4 heads, the bundled
tokenizer); command-line cases run pytest in-process (pytester), where a usage error stops
the run at configure time, before any model loads.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from circuit import attribution, guards, patching, paths
from circuit import engine as forward
from circuit.claims import ClaimFileError, parse_claim_text
from circuit.engine import ForwardError
from circuit.guards import PatchingError
from circuit.heads import Head
from circuit.metrics import LogitDiffMetric, MetricError, logit_diff
from circuit.models import ModelSpecError, ModelUnavailableError, load_model, resolve
from circuit.pipeline.cases import select_cases
from circuit.pipeline.options import (
    ClaimOptions,
    ClaimSetupError,
    check_cache_dir,
    check_options,
    check_output_file,
    select_files,
    unique_paths,
)
from circuit.reports import write_json
from circuit.sweeps import SubjectKey, SweepStore
from circuit.syllogisms import DatasetError, build_dataset
from fixtures.tiny_model import write_tiny_model
from tests.support import claims_project, collected_cases, run_claims, write_claims

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent.parent
CLAIMS_DIR = ROOT / "claims"
NO_CUDA = not torch.cuda.is_available()
MISSING_HUB_MODEL = "circuit-claims-test/no-such-model"


# Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-NeoX directory (config, weights, the bundled tokenizer)."""
    return write_tiny_model(tmp_path_factory.mktemp("bad-inputs") / "tiny")


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


def read_only_dir(tmp_path: Path) -> Path:
    """A directory no file can be created in (root ignores permission bits: use sysfs)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/sys")
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    return directory


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
            ("no revision 'step999'", "step800")),
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


# Claim files ---------------------------------------------------------------------------------

CLAIM_HEADER = 'model = "bundled"\n[dataset]\nvariants = ["heldout"]\nseed = 1\nn_pairs = 6\n'
MOVERS = """
[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L1H0", "L1H1"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 2, spearman = 0.3 }
"""
QUERIES = """
[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L0H1"]
receivers = ["L1H0"]
thresholds = { top_k = 1, effect = 0.01 }
"""

CLAIM_CASES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (id, claims text, replace "old|new" in it, names in the message)
    ("spearman 2.0", MOVERS, "spearman = 0.3|spearman = 2.0", ("'spearman' = 2.0", "[-1, 1]")),
    ("spearman -1.5", MOVERS, "spearman = 0.3|spearman = -1.5", ("'spearman' = -1.5",)),
    ("spearman inf", MOVERS, "spearman = 0.3|spearman = inf", ("'spearman'", "finite")),
    ("share 0", MOVERS, "share = 0.5|share = 0", ("'share' = 0", "(0, 1]")),
    ("share 1.5", MOVERS, "share = 0.5|share = 1.5", ("'share' = 1.5",)),
    ("share nan", MOVERS, "share = 0.5|share = nan", ("'share'", "finite")),
    ("share a string", MOVERS, "share = 0.5|share = '0.5'", ("'share'", "number", "'0.5'")),
    ("top_k below the heads", MOVERS, "top_k = 2|top_k = 1", ("top_k = 1", "2 claimed heads")),
    ("top_k 2.5", MOVERS, "top_k = 2|top_k = 2.5", ("'top_k'", "positive integer", "2.5")),
    ("top_k 0", MOVERS, "top_k = 2|top_k = 0", ("'top_k'", "positive integer")),
    ("effect -0.5", QUERIES, "effect = 0.01|effect = -0.5", ("'effect' = -0.5", "(0, 1]")),
    ("effect 2", QUERIES, "effect = 0.01|effect = 2.0", ("'effect' = 2.0",)),
    ("seed 'abc'", MOVERS, "seed = 1|seed = 'abc'", ("seed", "'abc'")),
    ("n_pairs 1", MOVERS, "n_pairs = 6|n_pairs = 1", ("n_pairs", ">= 2")),
    ("head twice", MOVERS, '"L1H0", "L1H1"|"L1H0", "L1H0"', ("names a head twice",)),
    ("head text", MOVERS, '"L1H0", "L1H1"|"L1H0", "1.1"', ("'1.1'", "L<layer>H<head>")),
    ("unknown kind", MOVERS, 'kind = "word-movers"|kind = "movers"', ("unknown kind 'movers'",)),
    ("unknown variant", MOVERS, 'variants = ["heldout"]|variants = ["train"]', ("'train'",)),
)


@pytest.mark.parametrize(
    ("text", "change", "names"),
    [case[1:] for case in CLAIM_CASES],
    ids=[case[0] for case in CLAIM_CASES],
)
def test_claim_file_refuses_impossible_values(text: str, change: str, names: tuple) -> None:
    full = CLAIM_HEADER + text
    old, new = change.split("|")
    assert old in full
    with pytest.raises(ClaimFileError) as raised:
        parse_claim_text(full.replace(old, new), "bad.toml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("bad.toml")
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"


# Options checked before anything loads -----------------------------------------------------


def options_cases(tmp_path: Path, tiny_path: Path) -> list[tuple[str, dict, tuple[str, ...]]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = read_only_dir(tmp_path)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_path / name, no_tokenizer / name)
    cases = [
        ("json a directory", {"json_path": tmp_path}, ("--claims-json", "is a directory")),
        ("json under a file", {"json_path": a_file / "r.json"}, ("--claims-json", "a-file")),
        (
            "json read-only",
            {"json_path": read_only / "sub" / "r.json"},
            ("--claims-json", "cannot write in", str(read_only)),
        ),
        ("cache a file", {"cache_dir": a_file}, ("--claims-cache", "is a file")),
        (
            "cache read-only",
            {"cache_dir": read_only / "cache"},
            ("--claims-cache", "cannot write in"),
        ),
        ("cache under a file", {"cache_dir": a_file / "c"}, ("--claims-cache", "not a directory")),
        ("model typo", {"model": "bundlde"}, ("--model bundlde", "bundled.toml (model bundled)")),
        (
            "model missing directory",
            {"model": "/nonexistent"},
            ("--model /nonexistent", "does not exist", "pythia-410m.toml"),
        ),
        ("dtype float8", {"dtype": "float8"}, ("--dtype float8",)),
        ("device tpu", {"device": "tpu"}, ("--device tpu",)),
        ("revision step999", {"revision": "step999"}, ("--revision step999", "no revision")),
        ("random:unknown", {"model": "random:unknown"}, ("--model random:unknown",)),
        (
            "no claim file for the model",
            {"model": "random:bundled"},
            ("no claim file is about model 'random:bundled'", "bundled.toml", "--claims FILE"),
        ),
        (
            "claims file missing",
            {"claim_files": (tmp_path / "nope.toml",)},
            ("--claims", "nope.toml", "does not exist"),
        ),
        (
            "model without tokenizer",
            {"model": str(no_tokenizer)},
            ("no-tokenizer", "tokenizer files"),
        ),
        (
            "revision of a plain directory",
            {"model": str(tiny_path), "revision": "step100"},
            ("--revision step100", "has no revisions"),
        ),
    ]
    if NO_CUDA:
        cases.append(("device cuda", {"device": "cuda"}, ("--device cuda", "CUDA")))
    return cases


def test_options_are_refused_before_anything_loads(tmp_path: Path, tiny_path: Path) -> None:
    cases = options_cases(tmp_path, tiny_path)
    before = sorted(tmp_path.iterdir())
    for name, changes, names in cases:
        options = ClaimOptions(claims_dir=CLAIMS_DIR, **changes)
        start = time.perf_counter()
        with pytest.raises(ClaimSetupError) as raised:
            check_options(options)
        assert time.perf_counter() - start < 1.0, name
        message = str(raised.value)
        assert "\n" not in message, name
        for text in names:
            assert text in message, f"{name}: {text!r} not in {message!r}"
    assert sorted(tmp_path.iterdir()) == before  # no report, no cache directory


def test_output_checks_leave_nothing_behind(tmp_path: Path) -> None:
    check_output_file(tmp_path / "deep" / "r.json", "--claims-json")  # fine: created later
    check_cache_dir(tmp_path / "cache", "--claims-cache")
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(path, {"statistic": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_the_same_claim_file_twice_is_judged_once(tmp_path: Path) -> None:
    bundled = CLAIMS_DIR / "bundled.toml"
    relative = Path(os.path.relpath(bundled))
    kept = unique_paths([bundled, relative, bundled])
    assert kept == (bundled,)


def test_cases_record_the_revision_actually_loaded() -> None:
    files = select_files(ClaimOptions(claims_dir=CLAIMS_DIR))
    cases = select_cases(files, ClaimOptions(claims_dir=CLAIMS_DIR))
    assert {case.revision for case in cases} == {"step800"}
    other = select_cases(files, ClaimOptions(model="random:bundled"))
    assert {case.revision for case in other} == {None}


# The sweep cache -----------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"not a pickle", "list"], ids=["bytes", "a list"])
def test_a_corrupted_cache_entry_is_said_recomputed_and_overwritten(tmp_path, garbage) -> None:
    subject = SubjectKey("m", None, "float32", "cpu", "heldout", 1, 6)
    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return {"x": torch.arange(3)}

    SweepStore(tmp_path).get(subject, "sweep", None, compute)
    (entry,) = tmp_path.glob("*.pt")
    if garbage == "list":
        torch.save([1, 2], entry)
    else:
        entry.write_bytes(garbage)
    lines: list[str] = []
    store = SweepStore(tmp_path, lines.append)
    result = store.get(subject, "sweep", None, compute)
    assert torch.equal(result["x"], torch.arange(3))
    assert len(calls) == 2
    assert store.corrupted == 1
    said = [line for line in lines if "corrupted" in line]
    assert len(said) == 1
    assert entry.name in said[0]
    assert "recomputing" in said[0]
    assert torch.equal(torch.load(entry, weights_only=True)["x"], torch.arange(3))
    assert SweepStore(tmp_path).get(subject, "sweep", None, compute)
    assert len(calls) == 2


# Downloads -----------------------------------------------------------------------------------


def test_the_download_switch_turns_offline_mode_off() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    code = "import os, conftest; print(os.environ.get('HF_HUB_OFFLINE'))"
    for allow, expected in (("1", "None"), ("0", "1")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "CIRCUIT_ALLOW_DOWNLOAD": allow},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("offline", [False, True], ids=["hub unreachable", "HF_HUB_OFFLINE"])
def test_a_download_fails_fast_in_one_line(monkeypatch, offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("CIRCUIT_ALLOW_DOWNLOAD", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as raised:
        resolve(MISSING_HUB_MODEL)
    assert time.perf_counter() - start < 5.0
    message = str(raised.value)
    assert "\n" not in message
    assert MISSING_HUB_MODEL in message
    assert ("HF_HUB_OFFLINE=1" if offline else "cannot be reached") in message


# The pytest plugin (in-process pytester runs) ----------------------------------------------


@pytest.fixture
def project(pytester: pytest.Pytester, tiny_path: Path) -> pytest.Pytester:
    """A project with one claim file about the tiny model."""
    tiny = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS
    write_claims(claims_project(pytester), "tiny.toml", tiny)
    return pytester


run = run_claims


def usage_cases(project: pytest.Pytester, tiny_path: Path) -> list[tuple[str, list, tuple]]:
    base = project.path
    a_file = base / "a-file"
    a_file.write_text("x")
    (base / "out").mkdir()
    read_only = read_only_dir(base)
    broken = base / "broken.toml"  # outside claims/: default runs do not read it
    text = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS
    broken.write_text(text.replace("spearman = 0.3", "spearman = 2.0"))
    tiny = str(base / "claims" / "tiny.toml")
    cases = [
        ("model typo", ["--model", "bundlde"], ("--model bundlde", "tiny.toml (model")),
        ("model missing", ["--model", "/nonexistent"], ("--model /nonexistent", "not exist")),
        (
            "model missing with --claims",
            ["--model", "/nonexistent", "--claims", tiny],
            ("--model /nonexistent", "does not exist"),
        ),
        ("dtype", ["--dtype", "float8"], ("--dtype float8", "unknown dtype")),
        (
            "revision",
            ["--model", "bundled", "--revision", "step999"],
            ("--revision step999", "no revision 'step999'"),
        ),
        ("random:unknown", ["--model", "random:unknown"], ("random:unknown", "random shape")),
        (
            "no claim file for the model",
            ["--model", "random:bundled"],
            ("no claim file is about model 'random:bundled'", "tiny.toml"),
        ),
        (
            "json a directory",
            ["--claims-json", str(base / "out")],
            ("--claims-json", "is a directory"),
        ),
        (
            "json read-only",
            ["--claims-json", str(read_only / "r.json")],
            ("--claims-json", "cannot write in"),
        ),
        ("cache a file", ["--claims-cache", str(a_file)], ("--claims-cache", "is a file")),
        (
            "cache read-only",
            ["--claims-cache", str(read_only / "cache")],
            ("--claims-cache", "cannot write in"),
        ),
        ("claims file missing", ["--claims", str(base / "nope.toml")], ("nope.toml", "not exist")),
        (
            "impossible threshold",
            ["--claims", str(broken)],
            ("broken.toml", "'spearman' = 2.0", "[-1, 1]"),
        ),
        (
            "revision of a plain directory",
            ["--model", str(tiny_path), "--revision", "step1"],
            ("--revision step1", "has no revisions"),
        ),
    ]
    if NO_CUDA:
        cases.append(("device cuda", ["--device", "cuda"], ("--device cuda", "CUDA")))
    return cases


def test_bad_options_are_one_line_usage_errors(project: pytest.Pytester, tiny_path: Path) -> None:
    """Exit code 4, the message once, no traceback, no report or cache left behind."""
    report = project.path / "report.json"
    cache = project.path / "sweep-cache"
    for name, args, names in usage_cases(project, tiny_path):
        extra = [] if "--claims-json" in args else ["--claims-json", str(report)]
        extra += [] if "--claims-cache" in args else ["--claims-cache", str(cache)]
        start = time.perf_counter()
        result = run(project, *args, *extra)
        elapsed = time.perf_counter() - start
        out = result.stdout.str() + "\n" + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{name}: {result.ret}\n{out}"
        errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1, f"{name}: {out}"
        assert out.count(errors[0].removeprefix("ERROR: ")) == 1, f"{name}: said twice: {out}"
        for text in names:
            assert text in errors[0], f"{name}: {text!r} not in {errors[0]!r}"
        assert "Traceback" not in out, name
        assert "During handling" not in out, name
        assert not report.exists(), name
        assert not cache.exists(), name
        assert elapsed < 3.0, f"{name} took {elapsed:.1f}s"


def test_a_head_out_of_range_is_one_usage_error(project: pytest.Pytester, tiny_path) -> None:
    far = project.path / "far.toml"
    text = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS.replace("L1H1", "L7H1")
    far.write_text(text)
    result = run(project, "--claims", str(far))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert error.count("ERROR:") == 1
    assert "heads ['L7H1'] out of range" in error
    assert "far.toml: claim 'movers'" in error
    assert "Traceback" not in error


def test_a_run_that_skips_everything_fails_and_reports_why(project, monkeypatch) -> None:
    monkeypatch.delenv("CIRCUIT_ALLOW_DOWNLOAD", raising=False)
    (project.path / "claims" / "tiny.toml").unlink()
    text = CLAIM_HEADER.replace('"bundled"', f'"{MISSING_HUB_MODEL}"') + MOVERS + QUERIES
    path = project.path / "claims" / "hub.toml"
    path.write_text(text)
    report = project.path / "report.json"
    result = run(project, "--claims", str(path), "--claims-json", str(report), "-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(skipped=2)  # no empty-parameter-set skip for value-position
    out = result.stdout.str()
    assert "empty parameter set" not in out
    assert out.count("[claims] error: nothing judged: every claim case (2) was skipped") == 1
    assert MISSING_HUB_MODEL in out
    assert "--claims-allow-skip" in out
    data = json.loads(report.read_text())
    assert data["records"] == []
    assert len(data["skipped"]) == 2
    assert MISSING_HUB_MODEL in data["nothing_judged"]
    assert data["environment"]["revision"] == "main"
    allowed = run(project, "--claims", str(path), "--claims-allow-skip")
    assert allowed.ret == pytest.ExitCode.OK
    allowed.assert_outcomes(skipped=2)


def test_claims_given_twice_are_collected_once(project: pytest.Pytester) -> None:
    tiny = project.path / "claims" / "tiny.toml"
    relative = os.path.relpath(tiny, project.path)
    result = run(project, "--claims", str(tiny), "--claims", relative, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected_cases(result) == ["movers[L1H0,L1H1]-heldout"]


def test_more_pairs_than_exist_fail_the_case_with_the_reason(project: pytest.Pytester) -> None:
    tiny = project.path / "claims" / "tiny.toml"
    tiny.write_text(tiny.read_text().replace("n_pairs = 6", "n_pairs = 100000"))
    report = project.path / "report.json"
    result = run(project, "--claims", str(tiny), "--claims-json", str(report))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    (record,) = json.loads(report.read_text())["records"]
    assert record["verdict"] == "ERROR"
    assert "n_pairs = 100000" in record["error"]
    assert "allow_fewer" in record["error"]
