"""What the benchmarks record besides time: peak memory growth and bridge forward passes."""

import threading
import time
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kib("VmHWM") <= _status_kib("VmRSS") + 4
    except (OSError, KeyError, ValueError):
        return False


class PeakRss:
    """Peak growth of this process's resident memory while the block runs.

    On Linux the kernel's own high-water mark is reset on entry and read on exit (exact, and
    no thread competes with the measured code for the CPU or the GIL, which would slow
    Python-heavy code more than matrix multiplies and bias a time ratio); elsewhere a thread
    samples the resident size every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss - self._start)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._kernel = _reset_high_water_mark()
        self._start = self._process.memory_info().rss
        if not self._kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._kernel:
            self.peak = max(0, _status_kib("VmHWM") * 1024 - self._start)
            return
        self._stop.set()
        if self._thread is not None:
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
