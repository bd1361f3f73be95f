"""What the benchmarks record besides time: peak memory growth and bridge forward passes."""

import threading
import time

import psutil
import torch


class PeakRss:
    """Peak growth of this process's resident memory while the block runs (sampled)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._process = psutil.Process()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss - self._start)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._start = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        """Peak growth in MiB, one decimal."""
        return round(self.peak / 2**20, 1)


class ForwardCounter:
    """Counts the bridge's full forward passes (calls of its token embedding)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self._handle = model.embed.register_forward_hook(self._hook)

    def _hook(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()
