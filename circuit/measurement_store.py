"""Measure once, judge many: a store of measurements shared by every claim of a run.

A *measurement* is an expensive computation over one model on one dataset (direct logit
attribution of every head, value patching by position, path patching into some receivers'
queries, ...). Its result is a ``dict[str, torch.Tensor]`` of per-prompt data. The store
computes each distinct measurement once per run (in memory) and, given a ``cache_dir``, keeps it
on disk under a digest of everything that determines it: the model (spec, revision, dtype,
device and a fingerprint of its weights), the dataset (recipe and a digest of its tokens and
answers), the measurement's name and parameters, the library versions and the source of the
routines that compute it.
"""

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

MeasurementResult = dict[str, torch.Tensor]
Progress = Callable[[str], None]

CACHE_FORMAT = 1


@dataclass(frozen=True)
class SubjectKey:
    """One model on one dataset: everything that names the subject of a measurement."""

    model: str
    revision: str | None
    dtype: str
    device: str
    variant: str
    seed: int
    n_pairs: int | None
    family: str = "study"
    """The prompt family: datasets of different families never share a measurement."""

    def describe(self) -> str:
        """Short label for progress lines, e.g. ``bundled@final/heldout``
        (``bundled@final/two-premise:heldout`` for another family)."""
        variant = self.variant if self.family == "study" else f"{self.family}:{self.variant}"
        return f"{self.model}@{self.revision or 'default'}/{variant}"


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 over tensors' dtypes, shapes and bytes (order matters)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Digest of a model's parameter names, shapes and values."""
    named = sorted(model.named_parameters(), key=lambda item: item[0])
    digest = hashlib.sha256("|".join(name for name, _ in named).encode())
    digest.update(tensor_digest(p for _, p in named).encode())
    return digest.hexdigest()


def source_digest(modules: Iterable[object]) -> str:
    """Digest of the source files of the given modules (routines that compute measurements)."""
    digest = hashlib.sha256()
    for module in modules:
        path = getattr(module, "__file__", None)
        if path:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@dataclass
class MeasurementStore:
    """In-memory (and optionally on-disk) store of measurements for one run.

    ``get`` returns the stored result or computes it; ``computed`` counts the measurements that
    actually ran (name -> count), ``loaded`` those read back from disk, ``corrupted`` the
    unreadable disk entries that were recomputed and overwritten.
    """

    cache_dir: Path | None = None
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self._memory: dict[str, MeasurementResult] = {}
        self.computed: Counter[str] = Counter()
        self.loaded: Counter[str] = Counter()
        self.corrupted = 0

    def key(self, subject: SubjectKey, name: str, params: object, fingerprint: str) -> str:
        """Digest naming one measurement: subject, name, parameters and the caller's fingerprint."""
        payload = json.dumps(
            {
                "format": CACHE_FORMAT,
                "subject": asdict(subject),
                "sweep": name,
                "params": params,
                "fingerprint": fingerprint,
                "torch": torch.__version__,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def stored(
        self, subject: SubjectKey, name: str, params: object, fingerprint: str = ""
    ) -> MeasurementResult | None:
        """The measurement if this run already has it in memory, else None (never
        computes: figures read what the claims measured and skip what they did not)."""
        return self._memory.get(self.key(subject, name, params, fingerprint))

    def get(
        self,
        subject: SubjectKey,
        name: str,
        params: object,
        compute: Callable[[], MeasurementResult],
        fingerprint: str = "",
    ) -> MeasurementResult:
        """The measurement, computed at most once per run (and per cache)."""
        key = self.key(subject, name, params, fingerprint)
        if key in self._memory:
            return self._memory[key]
        label = f"measurement {name}{_params_text(params)} on {subject.describe()}"
        path = self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None
        start = time.perf_counter()
        result = self._load(path, label) if path is not None and path.is_file() else None
        if result is not None:
            self.loaded[name] += 1
            self._say(f"{label}: loaded from cache ({path.name[:12]})")
        else:
            result = {k: v.detach().to("cpu") for k, v in compute().items()}
            self.computed[name] += 1
            self._say(f"{label}: computed in {time.perf_counter() - start:.1f}s")
            if path is not None:
                self._save(path, result)
        self._memory[key] = result
        return result

    def _load(self, path: Path, label: str) -> MeasurementResult | None:
        """A cache entry, or None (said in one line) when it is unreadable or not a measurement
        result: the caller recomputes it and overwrites the entry."""
        try:
            result = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: any unpickling error
            first_line = (str(error).splitlines() or [""])[0][:120]
            reason = f"{type(error).__name__}: {first_line}"
        else:
            if isinstance(result, dict) and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in result.items()
            ):
                return result
            reason = f"holds a {type(result).__name__}, not a dict of tensors"
        self.corrupted += 1
        self._say(f"{label}: cache entry {path} is corrupted ({reason}); recomputing it")
        return None

    def _save(self, path: Path, result: MeasurementResult) -> None:
        """Write an entry atomically; a cache that cannot be written is said, not fatal."""
        partial = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(result, partial)
            partial.replace(path)
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            self._say(f"cannot write the measurement cache entry {path}: {error.strerror or error}")

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def _params_text(params: object) -> str:
    if params in (None, (), {}, ""):
        return ""
    return f"({params})"
