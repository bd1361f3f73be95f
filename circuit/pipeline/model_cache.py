"""The models of a run, loaded one at a time; why one cannot be loaded, remembered.

At most one model is held: loading another releases it, so a run over many revisions (or
many models) needs the memory of one. The cases of a run are judged grouped by model and
revision (:func:`circuit.pipeline.judging.judge_cases`), so each loads once.
"""

import gc
import time
from dataclasses import dataclass
from typing import Any

from circuit.measurement_store import Progress
from circuit.models import ModelUnavailableError, load_model, resolve


@dataclass
class ModelCache:
    """Holds the last loaded (model, revision); remembers why one is unavailable."""

    device: str | None = None
    dtype: str = "float32"
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self._models: dict[tuple[str, str | None], Any] = {}
        self._unavailable: dict[tuple[str, str | None], str] = {}
        self.loads = 0

    def unavailable_reason(self, model: str, revision: str | None) -> str | None:
        """Why the model cannot be loaded here (None when its weights are here), without
        loading it: its weights missing, or a load that already failed."""
        key = (model, revision)
        if key not in self._unavailable:
            try:
                resolve(model, revision)
            except ModelUnavailableError as exc:
                self._unavailable[key] = f"model unavailable: {exc}"
        return self._unavailable.get(key)

    def release(self) -> None:
        """Drop the held model (its memory is freed once nothing else refers to it)."""
        self._models.clear()
        gc.collect()

    def get(self, model: str, revision: str | None) -> Any | None:
        """The loaded model, or None when its weights are unavailable here."""
        key = (model, revision)
        if key in self._models:
            return self._models[key]
        if key in self._unavailable:
            return None
        self.release()
        start = time.perf_counter()
        try:
            loaded = load_model(model, revision=revision, device=self.device, dtype=self.dtype)
        except ModelUnavailableError as exc:
            self._unavailable[key] = f"model unavailable: {exc}"
            return None
        loaded.eval()
        self.loads += 1
        self._models[key] = loaded
        if self.progress is not None:
            self.progress(
                f"loaded {model}@{revision or 'default'} in {time.perf_counter() - start:.1f}s"
            )
        return loaded
