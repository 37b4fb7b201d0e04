"""The feature service on a real socket and as ``python -m features serve``: the header-read
timeout (issue 11 §5), an Authorization header that is not UTF-8 (401, issue 11 §5), and the
command's startup line and one-line errors (issue 12 §5)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from features.service.resolve import engine_gateway
from hearth.settings import load_settings
from tests.conftest import ROOT, free_port
from tests.support.service import seed_user, serve_in_thread

TOKENS = json.dumps({"conn-read-token-0123456789": ["features:read"]})


@pytest.fixture(scope="module")
def seeded(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, "bd-u1", consent_from=None)
    return database_url


# --- header-read timeout ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded(seeded: str) -> Iterator[tuple[str, int]]:
    """The app served on a real socket with a 0.5 s header timeout: (host, port)."""
    settings = load_settings(database_url=seeded, api_tokens=TOKENS, http_header_timeout_s=0.5)
    with serve_in_thread(settings) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        yield host, int(port)


def _closed_within(sock: socket.socket, deadline_s: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < deadline_s:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_connection_without_headers_is_closed(threaded: tuple[str, int]) -> None:
    with socket.create_connection(threaded) as silent:
        closed = _closed_within(silent, 5.0)
    assert closed is not None and closed < 3.0, closed


def test_trickled_headers_are_cut_off(threaded: tuple[str, int]) -> None:
    with socket.create_connection(threaded) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        end = time.monotonic() + 5.0
        closed = None
        while closed is None and time.monotonic() < end:
            with contextlib.suppress(OSError):
                slow.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s, never the end
            closed = _closed_within(slow, 0.2)
    assert closed is not None and time.monotonic() < end


def test_prompt_requests_and_idle_keepalive_are_served(threaded: tuple[str, int]) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(threaded) as sock:
        sock.sendall(request)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        # Idle longer than the header timeout with no byte of a next request: a pooled
        # keep-alive connection, left to the keep-alive timeout.
        assert _closed_within(sock, 1.2) is None
        sock.sendall(request)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def _read_response(sock: socket.socket) -> bytes:
    sock.settimeout(5.0)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
    return data


# --- Authorization that is not UTF-8 ----------------------------------------------------------


def test_non_utf8_authorization_is_401(threaded: tuple[str, int]) -> None:
    with socket.create_connection(threaded) as sock:
        sock.sendall(
            b"GET /v1/users/bd-u1/features HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe\xc3(token\r\nConnection: close\r\n\r\n"
        )
        reply = _read_response(sock)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "unauthorized"


# --- python -m features serve -------------------------------------------------------------------


def _serve_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "HEARTH_DATABASE_URL": database_url,
        "HEARTH_API_TOKENS": TOKENS,
        "HEARTH_LOG_LEVEL": "INFO",
    }


def test_serve_logs_address_and_feature_set_version(seeded: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "features", "serve", "--port", str(port)],
        cwd=ROOT,
        env=_serve_env(seeded),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "event=service_started" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(20), lines
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        reader.join(timeout=5)
    line = next(x for x in lines if "event=service_started" in x)
    assert f"address=http://127.0.0.1:{port}" in line
    assert f"feature_set_version={engine_gateway.feature_set_version()}" in line
    assert code == 0  # SIGTERM: a clean stop
    assert not any("Traceback" in x for x in lines), lines


def test_serve_on_a_port_in_use_is_one_line_exit_69(seeded: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "features", "serve", "--port", str(port)],
            cwd=ROOT,
            env=_serve_env(seeded),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 69, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in proc.stderr


def test_serve_with_a_bad_port_is_a_usage_error(seeded: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "features", "serve", "--port", "70000"],
        cwd=ROOT,
        env=_serve_env(seeded),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --port 70000: use 1-65535"
