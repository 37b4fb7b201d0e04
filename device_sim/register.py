"""Registration and consent through the product's admin CLI, run as subprocesses.

The simulator never imports the collector (docs/architecture.md); it registers like an operator
would:

* ``python -m collector devices add --batch FILE`` — FILE has JSON lines ``{"user_id", "kind",
  "format", "external_id", "tz", "user_tz", "bound_at"}`` (bound a day before the simulated
  history, which the collector would otherwise refuse); stdout has JSON lines with ``device_id``,
  ``external_id``, ``format``, ``mqtt_username``, ``mqtt_password``, ``topics``.
* ``python -m collector consent grant --batch FILE`` — ``{"user_id", "category", "at"}`` with
  ``at`` backdated before the simulated history, so point-in-time features see consent.
* ``python -m collector consent withdraw --batch FILE`` — run at the end of a run (the CLI stamps
  withdrawals with the current time).

``run`` registers in a few growing batches (the first stream part's devices first), so the first
part is published while the rest of the fleet is still being registered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from device_sim.publish import Credentials


class RegistrationError(Exception):
    """The admin CLI failed; the message carries its stderr (one line)."""


def _run(args: list[str], timeout_s: float = 600.0) -> str:
    cmd = [sys.executable, "-m", "collector", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RegistrationError(f"{' '.join(cmd[2:])}: no answer in {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RegistrationError(f"{' '.join(cmd[2:5])} exited {proc.returncode}: {last}")
    return proc.stdout


def _private_file(path: Path, *, append: bool) -> TextIO:
    """Open ``path`` for writing with mode 0600, also when it already exists (an older run may
    have left it world-readable): it holds device passwords."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w")


def load_devices(out_dir: Path) -> list[dict[str, Any]]:
    with (out_dir / "devices.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def register_devices(
    out_dir: Path, devices: list[dict[str, Any]] | None = None, batch_name: str = ""
) -> Credentials:
    """Register ``devices`` (default: all of ``devices.jsonl``); return device key → (username,
    password). A named batch appends to ``registered_devices.jsonl`` (the first truncates it)."""
    if devices is None:
        devices = load_devices(out_dir)
    batch = out_dir / f"register_devices{batch_name}.jsonl"
    fields = ("user_id", "kind", "format", "external_id", "tz", "user_tz", "bound_at")
    with batch.open("w") as f:
        for dev in devices:
            record = {k: dev[k] for k in fields if k in dev}  # older plans have no bound_at
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    stdout = _run(["devices", "add", "--batch", str(batch)])
    by_external = {(d["format"], d["external_id"]): d["key"] for d in devices}
    creds: Credentials = {}
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        key = by_external.get((rec.get("format"), rec.get("external_id")))
        if key is None:
            continue
        records.append(rec)
        user, password = rec.get("mqtt_username"), rec.get("mqtt_password")
        if user and password:
            creds[key] = (str(user), str(password))
    # Keep what the registry answered (device ids, topics) next to the stream; the passwords
    # stay in this file only, which lives in the output directory the operator chose and is
    # readable by its owner only.
    with _private_file(out_dir / "registered_devices.jsonl", append=bool(batch_name)) as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    if len(records) != len(devices):
        raise RegistrationError(
            f"devices add answered for {len(records)} of {len(devices)} devices"
        )
    return creds


def read_credentials(out_dir: Path) -> Credentials:
    """Device key → (username, password) from ``registered_devices.jsonl`` (what the last
    registration answered), for publishing a generated fleet later."""
    path = out_dir / "registered_devices.jsonl"
    if not path.is_file():
        return {}
    keys = {(d["format"], d["external_id"]): d["key"] for d in load_devices(out_dir)}
    creds: Credentials = {}
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            key = keys.get((rec.get("format"), rec.get("external_id")))
            user, password = rec.get("mqtt_username"), rec.get("mqtt_password")
            if key and user and password:
                creds[key] = (str(user), str(password))
    return creds


def grant_consent(
    out_dir: Path, grants: list[dict[str, str]] | None = None, batch_name: str = ""
) -> int:
    """Grant ``grants`` (default: all of ``consent_grants.jsonl``); returns how many."""
    path = out_dir / "consent_grants.jsonl"
    if grants is not None:
        path = out_dir / f"consent_grants{batch_name}.jsonl"
        with path.open("w") as f:
            for row in grants:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
    lines = sum(1 for line in path.open() if line.strip())
    if lines:
        _run(["consent", "grant", "--batch", str(path)])
    return lines


def withdraw_consent(out_dir: Path) -> int:
    path = out_dir / "consent_withdrawals.jsonl"
    lines = sum(1 for line in path.open() if line.strip())
    if lines:
        _run(["consent", "withdraw", "--batch", str(path)])
    return lines
