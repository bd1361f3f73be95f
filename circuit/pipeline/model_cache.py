"""Each model of a run loaded once; why one cannot be loaded, remembered."""

import time
from dataclasses import dataclass
from typing import Any

from circuit.models import ModelUnavailableError, load_model
from circuit.sweeps import Progress


@dataclass
class ModelCache:
    """Loads each (model, revision) once per run; remembers why one is unavailable."""

    device: str | None = None
    dtype: str = "float32"
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self._models: dict[tuple[str, str | None], Any] = {}
        self._unavailable: dict[tuple[str, str | None], str] = {}
        self.loads = 0

    def unavailable_reason(self, model: str, revision: str | None) -> str | None:
        """Why the model cannot be loaded here (None when it loads)."""
        self.get(model, revision)
        return self._unavailable.get((model, revision))

    def get(self, model: str, revision: str | None) -> Any | None:
        """The loaded model, or None when its weights are unavailable here."""
        key = (model, revision)
        if key in self._models:
            return self._models[key]
        if key in self._unavailable:
            return None
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
