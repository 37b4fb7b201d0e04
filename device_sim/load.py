"""Load mode: valid canonical messages as fast as asked, for ingest benchmarks.

Each worker process publishes its share of ``--messages`` at its share of ``--rate`` (0 = as
fast as possible) with QoS 1 and a bounded in-flight window, round-robin over device ids, and
waits for every PUBACK. Timestamps step back one second per message of a device, so natural
keys (device, event time, signal) never collide and nothing is deduplicated away.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from device_sim.publish import (
    Counts,
    Credentials,
    Endpoint,
    PublishError,
    WindowedClient,
    parse_mqtt_url,
)


@dataclass(frozen=True, slots=True)
class LoadJob:
    mqtt_url: str
    messages: int
    rate: float  # msg/s for this worker; 0 = unlimited
    device_ids: list[str]
    credentials: Credentials | None  # keyed by device id
    window: int
    worker: int
    topic_format: str


@dataclass(slots=True)
class LoadReport:
    counts: Counts
    elapsed_s: float
    processes: int

    @property
    def rate(self) -> float:
        return self.counts.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _payload(device_id: str, ts: int, seq: int) -> bytes:
    stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "ts": stamp,
        "device_id": device_id,
        "readings": {"online": 1, "uptime_s": 3600 + seq, "rssi_dbm": -50 - seq % 20},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _load_worker(job: LoadJob, out: Any) -> None:
    endpoint = parse_mqtt_url(job.mqtt_url)
    clients: dict[str, WindowedClient] = {}
    try:
        if job.credentials is None:
            shared = WindowedClient(
                endpoint, f"device-sim-load-{job.worker}-{os.getpid()}", job.window
            )
            clients = dict.fromkeys(job.device_ids, shared)
        else:
            per_device = max(20, job.window // max(1, len(job.device_ids)))
            for dev in job.device_ids:
                user, password = job.credentials[dev]
                clients[dev] = WindowedClient(
                    endpoint, user, per_device, username=user, password=password
                )
        now = int(time.time()) - 60
        seqs = dict.fromkeys(job.device_ids, 0)
        start = time.monotonic()
        n_dev = len(job.device_ids)
        for i in range(job.messages):
            dev = job.device_ids[i % n_dev]
            seq = seqs[dev]
            seqs[dev] = seq + 1
            clients[dev].publish(f"hearth/v1/{dev}/status", _payload(dev, now - seq, seq))
            if job.rate > 0 and i % 50 == 49:
                ahead = (i + 1) / job.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)  # rate limiting, not synchronisation
        counts = Counts()
        for client in {id(c): c for c in clients.values()}.values():
            client.close()
            counts.add(client.counts)
        out.put(("done", counts))
    except PublishError as exc:
        out.put(("error", str(exc)))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def read_device_ids(path: Path) -> tuple[list[str], Credentials | None]:
    """Device ids (and credentials) from JSON lines as ``devices add`` prints, or plain ids."""
    ids: list[str] = []
    creds: Credentials = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            rec = json.loads(line)
            dev = str(rec.get("external_id") or rec["device_id"])
            ids.append(dev)
            if rec.get("mqtt_username") and rec.get("mqtt_password"):
                creds[dev] = (str(rec["mqtt_username"]), str(rec["mqtt_password"]))
        else:
            ids.append(line)
    if creds and len(creds) != len(ids):
        raise ValueError("either every device line carries credentials or none does")
    return ids, (creds or None)


def run_load(
    mqtt_url: str,
    messages: int,
    rate: float,
    processes: int,
    device_ids: list[str],
    credentials: Credentials | None,
    window: int,
    topic_format: str = "hearth",
) -> LoadReport:
    if topic_format != "hearth":
        raise ValueError("only --topic-format hearth is supported in load mode")
    if not device_ids:
        raise ValueError("no device ids")
    endpoint: Endpoint = parse_mqtt_url(mqtt_url)
    del endpoint
    processes = max(1, min(processes, len(device_ids), max(1, messages)))
    ctx = multiprocessing.get_context("fork")
    out: Any = ctx.Queue()
    workers = []
    start = time.monotonic()
    for w in range(processes):
        ids = device_ids[w::processes]
        share = messages // processes + (1 if w < messages % processes else 0)
        creds = {d: credentials[d] for d in ids} if credentials else None
        job = LoadJob(mqtt_url, share, rate / processes, ids, creds, window, w, topic_format)
        proc = ctx.Process(target=_load_worker, args=(job, out), daemon=True)
        proc.start()
        workers.append(proc)
    total = Counts()
    errors: list[str] = []
    done = 0
    while done < processes:
        try:
            kind, value = out.get(timeout=1.0)
        except queue.Empty:
            if all(not p.is_alive() for p in workers) and out.empty():
                errors.append("a load process died")
                break
            continue
        done += 1
        if kind == "done":
            total.add(value)
        else:
            errors.append(str(value))
    elapsed = time.monotonic() - start
    for p in workers:
        p.join(timeout=10)
    if errors:
        raise PublishError(errors[0])
    return LoadReport(total, elapsed, processes)
