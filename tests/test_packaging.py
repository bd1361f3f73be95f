"""The distribution as a user gets it: a wheel installed (not editable) into a fresh venv
judges a claim file from an empty directory, on the bundled model and on a local model
directory, with the plugin found through its ``pytest11`` entry point.

The fresh venv holds only the wheel; the heavy dependencies (torch, transformer-lens, ...)
come from this environment's site-packages through a ``.pth`` file, which adds their
directory to ``sys.path`` without running this environment's editable-install hooks, so
``circuit`` can only be imported from the wheel.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from fixtures.tiny_model import write_tiny_model
from tests.support import claim_file, shipped_claim_file

ROOT = Path(__file__).resolve().parent.parent
PIP = (sys.executable, "-m", "pip")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
REPORT = ("--claims-json", "r.json", "--claims-table", "compact")


def _run(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False, timeout=900
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv with the project's wheel installed (not editable)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # built from a copy: setuptools writes build/ into its source
    shutil.copytree(ROOT / "circuit", source / "circuit", ignore=IGNORED)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = _run(
        [
            *PIP,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(base / "dist"),
            source,
        ],
        cwd=base,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("circuit_claims-*.whl")
    environment = base / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base
        ).stdout.strip()
    )
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(purelib), str(wheel)],
        cwd=base,
    )
    assert install.returncode == 0, install.stderr
    return python


def test_the_wheel_ships_the_package_and_the_bundled_model(installed: Path, tmp_path: Path):
    where = _run(
        [str(installed), "-c", "import circuit.models as m; print(m.__file__, m.BUNDLED_DIR)"],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    module, bundled = where.stdout.split()
    assert str(installed.parent.parent) in module  # imported from the wheel, not the checkout
    assert str(ROOT) not in module
    assert (Path(bundled) / "model.safetensors").is_file()
    assert (Path(bundled) / "revisions.json").is_file()


@pytest.mark.parametrize("model", ["bundled", "local"])
def test_a_claim_file_alone_is_judged_by_the_installed_plugin(installed, tmp_path, model):
    empty = tmp_path / "project"
    empty.mkdir()
    if model == "bundled":  # a claim the bundled model carries (claims/bundled.toml)
        spec, text = "bundled", shipped_claim_file()
    else:
        spec = str(write_tiny_model(tmp_path / "tiny"))
        text = claim_file(spec).replace('"heldout", "unfiltered"', '"heldout"')
    (empty / "mine.toml").write_text(text)
    result = _run(
        [installed, "-m", "pytest", "-p", "no:cacheprovider", "--claims", "mine.toml", *REPORT],
        cwd=empty,
    )
    assert "circuit-claims: model" in result.stdout, result.stdout + result.stderr
    assert "claim verdicts" in result.stdout
    records = json.loads((empty / "r.json").read_text())["records"]
    assert [(r["kind"], r["variant"], r["model"]) for r in records] == [
        ("word-movers", "heldout", spec)
    ]
    if model == "bundled":
        assert records[0]["verdict"] == "CONFIRMED", result.stdout
        assert result.returncode == 0
    else:  # random weights: never CONFIRMED, so the run fails
        assert records[0]["verdict"] != "CONFIRMED"
        assert result.returncode == 1
