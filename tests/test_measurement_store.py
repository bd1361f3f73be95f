"""The measurement store: each measurement computed once per run; the disk cache keyed by what
determines it."""

import pytest
import torch

from circuit.measurement_store import MeasurementStore, SubjectKey, model_fingerprint, tensor_digest

SUBJECT = SubjectKey("bundled", None, "float32", "cpu", "heldout", 42, 8)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"x": torch.arange(6.0).reshape(2, 3) * self.calls}


def test_each_sweep_is_computed_once_per_run():
    lines: list[str] = []
    store = MeasurementStore(progress=lines.append)
    compute = Counter()
    first = store.get(SUBJECT, "dla", None, compute)
    again = store.get(SUBJECT, "dla", None, compute)
    assert compute.calls == 1
    assert again is first
    store.get(SUBJECT, "path_query", "L1H0", compute)
    store.get(SUBJECT, "path_query", "L1H1", compute)
    assert compute.calls == 3
    assert store.computed == {"dla": 1, "path_query": 2}
    assert len(lines) == 3
    assert "measurement dla on bundled@default/heldout" in lines[0]


def test_other_subjects_do_not_share_results():
    store = MeasurementStore()
    compute = Counter()
    store.get(SUBJECT, "dla", None, compute)
    for other in (
        SubjectKey("bundled", None, "float32", "cpu", "unfiltered", 42, 8),
        SubjectKey("bundled", "step100", "float32", "cpu", "heldout", 42, 8),
        SubjectKey("bundled", None, "float64", "cpu", "heldout", 42, 8),
        SubjectKey("bundled", None, "float32", "cpu", "heldout", 43, 8),
    ):
        store.get(other, "dla", None, compute)
    assert compute.calls == 5


def test_disk_cache_round_trips_and_is_keyed_by_fingerprint(tmp_path):
    compute = Counter()
    first = MeasurementStore(cache_dir=tmp_path).get(SUBJECT, "dla", None, compute, "weights-a")
    fresh = MeasurementStore(cache_dir=tmp_path)
    loaded = fresh.get(SUBJECT, "dla", None, compute, "weights-a")
    assert compute.calls == 1
    assert fresh.loaded == {"dla": 1}
    torch.testing.assert_close(loaded["x"], first["x"])
    changed = MeasurementStore(cache_dir=tmp_path).get(SUBJECT, "dla", None, compute, "weights-b")
    assert compute.calls == 2
    assert not torch.equal(changed["x"], first["x"])
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_digests_see_every_byte():
    a = torch.zeros(3)
    b = torch.zeros(3)
    b[2] = 1e-7
    assert tensor_digest([a]) != tensor_digest([b])
    assert tensor_digest([a]) != tensor_digest([a.double()])
    model = torch.nn.Linear(2, 2)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.bias[0] += 1
    assert model_fingerprint(model) != before


# The sweep cache -----------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"not a pickle", "list"], ids=["bytes", "a list"])
def test_a_corrupted_cache_entry_is_said_recomputed_and_overwritten(tmp_path, garbage) -> None:
    subject = SubjectKey("m", None, "float32", "cpu", "heldout", 1, 6)
    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return {"x": torch.arange(3)}

    MeasurementStore(tmp_path).get(subject, "sweep", None, compute)
    (entry,) = tmp_path.glob("*.pt")
    if garbage == "list":
        torch.save([1, 2], entry)
    else:
        entry.write_bytes(garbage)
    lines: list[str] = []
    store = MeasurementStore(tmp_path, lines.append)
    result = store.get(subject, "sweep", None, compute)
    assert torch.equal(result["x"], torch.arange(3))
    assert len(calls) == 2
    assert store.corrupted == 1
    said = [line for line in lines if "corrupted" in line]
    assert len(said) == 1
    assert entry.name in said[0]
    assert "recomputing" in said[0]
    assert torch.equal(torch.load(entry, weights_only=True)["x"], torch.arange(3))
    assert MeasurementStore(tmp_path).get(subject, "sweep", None, compute)
    assert len(calls) == 2
