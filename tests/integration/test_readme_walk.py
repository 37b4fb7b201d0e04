"""The README walked as a newcomer would (issue 12 §5), against real services.

Every fenced block preceded by ``<!-- walk -->`` in README.md, then in docs/operations.md, runs in
document order: ``sh`` blocks in bash (``set -euo pipefail``; exported variables carry over to
the next block), ``python`` blocks with the project's interpreter. The blocks are read from the
documents themselves, so a command that stops working fails this test. Marker options:

- ``background until URL`` — start the block and keep it running (a service) until URL answers
  200; it is stopped with SIGTERM when the walk ends.
- ``retry S`` — the block checks something the previous one set in motion (the collector commits
  within its batch age): run it again until it succeeds, for at most S seconds.

The only rewriting is of addresses: this test's services listen on free ports (other test runs
share the machine), so the documented defaults ``127.0.0.1:8080`` (feature service),
``127.0.0.1:9108`` (collector metrics) and ``-p 1883`` (broker) are replaced by them. Each walk
gets a fresh database, so the documented ids (alice, bob) are free.

Not walked: ``scripts/demo`` (its own test runs it) and ``scripts/test`` (CI itself).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth.settings import Settings
from hearth.signals import SIGNALS
from tests.conftest import Broker, free_port, fresh_database

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "operations.md")
VENV_BIN = ROOT / ".venv" / "bin"
_MARKER = re.compile(r"^<!-- walk(?::\s*(?P<options>.*?))?\s*-->$")
_BACKGROUND = re.compile(r"^background until (?P<url>\S+)$")
_RETRY = re.compile(r"^retry (?P<seconds>\d+)$")
STEP_TIMEOUT_S = 180


@dataclass(frozen=True)
class Step:
    where: str  # "README.md:123"
    language: str  # "sh" | "python"
    code: str
    ready_url: str | None = None
    retry_s: float | None = None


def walked_blocks(path: Path) -> list[Step]:
    """The marked fenced blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i].strip())
        i += 1
        if marker is None:
            continue
        where = f"{path.relative_to(ROOT)}:{i}"
        while i < len(lines) and not lines[i].strip():
            i += 1
        fence = lines[i].strip() if i < len(lines) else ""
        assert fence in ("```sh", "```python"), f"{where}: a walk marker must precede a block"
        i += 1
        start = i
        while lines[i].strip() != "```":
            i += 1
        code = "\n".join(lines[start:i]) + "\n"
        options = (marker.group("options") or "").strip()
        ready = _BACKGROUND.match(options)
        retry = _RETRY.match(options)
        assert not options or ready or retry, f"{where}: unknown walk option {options!r}"
        steps.append(
            Step(
                where,
                fence.removeprefix("```"),
                code,
                ready_url=ready.group("url") if ready else None,
                retry_s=float(retry.group("seconds")) if retry else None,
            )
        )
    return steps


@pytest.fixture
def walk_database() -> Iterator[str]:
    """A fresh database of its own: the README's ids must be free."""
    with fresh_database("hearth_walk") as url:
        yield url


class Walk:
    def __init__(self, database_url: str, broker: Broker, workdir: Path) -> None:
        self.workdir = workdir
        self.http_port, self.metrics_port = free_port(), free_port()
        self.addresses = {
            "127.0.0.1:8080": f"127.0.0.1:{self.http_port}",
            "127.0.0.1:9108": f"127.0.0.1:{self.metrics_port}",
            "-p 1883": f"-p {broker.port}",
        }
        tag = secrets.token_hex(3)
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HEARTH_DATABASE_URL": database_url,
            "HEARTH_MQTT_URL": broker.url,
            "HEARTH_MQTT_CLIENT_ID": f"walk-{tag}",
            "HEARTH_MQTT_SHARE_GROUP": f"walk-{tag}",
            "HEARTH_COLLECTOR_HTTP_PORT": str(self.metrics_port),
            "HEARTH_HTTP_PORT": str(self.http_port),
            "HEARTH_STATE_DIR": str(workdir / ".hearth"),
        }
        self.background: list[tuple[Step, subprocess.Popen[bytes], Path]] = []

    def localise(self, text: str) -> str:
        for documented, here in self.addresses.items():
            text = text.replace(documented, here)
        return text

    def run(self, step: Step) -> None:
        if step.ready_url is not None:
            self._start(step)
            return
        deadline = time.monotonic() + (step.retry_s or 0)
        while True:
            proc = self._once(step)
            if proc.returncode == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)  # polling a documented check until its deadline
        assert proc.returncode == 0, (
            f"{step.where} failed (exit {proc.returncode}):\n{step.code}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )

    def _once(self, step: Step) -> subprocess.CompletedProcess[str]:
        code = self.localise(step.code)
        if step.language == "python":
            script = self.workdir / "walk_step.py"
            script.write_text(code)
            return subprocess.run(
                [str(VENV_BIN / "python"), str(script)],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
            )
        env_out = self.workdir / "walk_env"
        proc = subprocess.run(
            ["bash", "-c", f'set -euo pipefail\n{code}\nenv -0 > "{env_out}"'],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        if proc.returncode == 0:  # what the block exported holds for the next ones
            pairs = env_out.read_bytes().decode().split("\0")
            self.env = dict(p.split("=", 1) for p in pairs if "=" in p)
        return proc

    def _start(self, step: Step) -> None:
        assert step.ready_url is not None
        log = self.workdir / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"set -euo pipefail\n{self.localise(step.code)}"],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one at the end
            )
        self.background.append((step, proc, log))
        url = self.localise(step.ready_url)
        deadline = time.monotonic() + 60
        while not _answers_200(url):
            assert proc.poll() is None, f"{step.where} exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{step.where}: {url} not ready after 60 s"
            time.sleep(0.2)

    def stop(self) -> list[str]:
        """SIGTERM every background block; the logs of those that were not running."""
        problems = []
        for step, proc, log in self.background:
            if proc.poll() is not None:
                problems.append(f"{step.where} had exited {proc.returncode}:\n{log.read_text()}")
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
                _wait_group_gone(proc.pid, 30)
            except (subprocess.TimeoutExpired, TimeoutError):
                os.killpg(proc.pid, signal.SIGKILL)
                problems.append(f"{step.where} ignored SIGTERM:\n{log.read_text()[-2000:]}")
        return problems


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_group_gone(pgid: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise TimeoutError(f"process group {pgid} still running")


def test_every_walked_block_of_the_readme_and_the_operators_guide_runs(
    walk_database: str, broker: Broker, tmp_path: Path
) -> None:
    steps = [step for doc in DOCUMENTS for step in walked_blocks(doc)]
    code = "".join(s.code for s in steps)
    # The list: quick-start commands, both request bodies, the client and transformer.
    for needed in (
        "python -m collector run",
        "python -m features serve",
        "/v1/features/online",
        "/v1/features/historical",
        "HearthClient(",
        "HearthFeatures(",
        "audit_subject",
    ):
        assert needed in code, f"no walked block contains {needed!r}"
    walk = Walk(walk_database, broker, tmp_path)
    try:
        for step in steps:
            walk.run(step)
    finally:
        problems = walk.stop()
    assert not problems, "\n".join(problems)


# --- tables that must say what the code says -------------------------------------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_readme_signal_table_is_the_catalogue() -> None:
    table = readme_section("Signals and consent categories")
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z_]+) \|", table, re.M)
    assert dict(rows) == {name: s.category.value for name, s in SIGNALS.items()}
    assert len(rows) == len(SIGNALS)  # each signal once


def test_readme_lists_every_endpoint_and_setting() -> None:
    from features.service.routes import ENDPOINTS

    api = readme_section("HTTP API")
    missing = [f"{e.method} {e.path}" for e in ENDPOINTS if f"`{e.method} {e.path}" not in api]
    assert not missing, f"endpoints missing from the README's HTTP API table: {missing}"
    config = readme_section("Configuration")
    unlisted = [f for f in Settings.model_fields if f"HEARTH_{f.upper()}" not in config]
    assert not unlisted, f"settings missing from the README's configuration table: {unlisted}"
