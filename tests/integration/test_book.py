"""The book end to end against the real database: bulk export, batch scores, online scores,
the score log, and what withdrawal and erasure do to it (issue 17)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from features.book import score_log
from features.book.batch import score_export
from features.book.export import export_book
from features.book.files import JOURNAL_FILE, sha256_of
from features.book.model import MODEL_FILE
from features.book.score_log import ONLINE, LogRow
from features.catalogue import FEATURE_SET_VERSION, sync_definitions
from features.service.app import create_app
from hearth import admin
from hearth.errors import ConfigError, Conflict
from hearth.settings import load_settings
from tests.support.book import CATEGORY, MODEL_FEATURES, fit_model, packed, seed_book
from tests.support.service import serve_in_thread

D = datetime(2026, 3, 17, tzinfo=UTC)
GRANTED = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
BOOK = [f"bk-{i:04d}" for i in range(150)]
NO_CONSENT = ["bk-nocon-0", "bk-nocon-1"]
STALE = ["bk-stale-0"]
NO_LOCATION = "bk-noloc"  # never granted location; its snapshot shows location values anyway
WITHDRAWN = "bk-wd"  # withdrew location the day before D
SCORER = "book-scores-token-0123456789"
READER = "book-features-token-0123456789"
LOCATION = [f for f in MODEL_FEATURES if CATEGORY[f] == "location"]


@dataclass(frozen=True)
class World:
    database_url: str
    model: Path
    export: Path
    scores: Path


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HEARTH_DATABASE_URL=database_url)
    return subprocess.run(
        [sys.executable, "-m", "features", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("book")
    with psycopg.connect(database_url, autocommit=True) as conn:
        sync_definitions(conn)
        seed_book(conn, BOOK, D - timedelta(hours=6), GRANTED)
        seed_book(conn, NO_CONSENT, D - timedelta(hours=6), GRANTED, categories=())
        seed_book(conn, STALE, D - timedelta(days=10), GRANTED)
        seed_book(conn, [WITHDRAWN], D - timedelta(hours=6), GRANTED)
        admin.withdraw_consent(
            conn, user_id=WITHDRAWN, category="location", at=D - timedelta(days=1)
        )
        others = ["connectivity", "device_health", "energy", "presence", "climate", "usage"]
        seed_book(conn, [NO_LOCATION], D - timedelta(hours=6), GRANTED, categories=others)
        # Worst possible location values: were location scored, it would lead the reasons.
        worst = {
            "home_night_share_30d": 0.0,
            "radius_of_gyration_km_30d": 30.0,
            "overnight_charge_share_30d": 0.05,
            "always_on_uptime_ratio_30d": 0.05,
            "daily_kwh_cv_30d": 0.95,
            "low_battery_day_share_30d": 0.95,
        }
        conn.execute(
            "UPDATE feature_snapshots SET (vals, covs) = (%s, %s) WHERE user_id = %s",
            (*packed(worst), NO_LOCATION),
        )
    model = fit_model(base / "model")
    export = base / "export"
    proc = _cli(
        database_url,
        "export",
        "--as-of",
        D.isoformat(),
        "--out",
        str(export),
        "--max-age",
        "36h",
        "--part-users",
        "40",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "rows=" in proc.stdout and "left_out_no_consent=" in proc.stdout
    scores = base / "scores"
    proc = _cli(
        database_url,
        "score",
        "--model",
        str(model),
        "--as-of",
        D.isoformat(),
        "--export",
        str(export),
        "--out",
        str(scores),
        "--no-progress",
        "--requested-by",
        "test:book",
    )
    assert proc.returncode == 0, proc.stderr
    return World(database_url, model, export, scores)


def _rows(directory: Path, prefix: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob(f"{prefix}-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            out[row["user_id"]] = row
    return out


def test_export_holds_consented_users_and_only_their_consented_categories(world: World) -> None:
    manifest = json.loads((world.export / "manifest.json").read_text())
    assert manifest["feature_set_version"] == FEATURE_SET_VERSION
    assert datetime.fromisoformat(manifest["as_of"]) == D
    for entry in manifest["files"]:  # rows and checksums as the manifest says
        path = world.export / entry["file"]
        assert sha256_of(path) == entry["sha256"]
        assert pq.ParquetFile(path).metadata.num_rows == entry["rows"]
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows"]
    rows = _rows(world.export, "part")
    assert set(BOOK) | {WITHDRAWN, NO_LOCATION} <= set(rows)
    assert not (set(NO_CONSENT) | set(STALE)) & set(rows)
    left = _rows(world.export, "left_out")
    assert {u: left[u]["reason"] for u in NO_CONSENT + STALE} == {
        **dict.fromkeys(NO_CONSENT, "no_consent"),
        **dict.fromkeys(STALE, "no_snapshot"),
    }
    assert manifest["left_out"]["no_consent"] >= 2 and manifest["left_out"]["no_snapshot"] >= 1
    for user in (WITHDRAWN, NO_LOCATION):
        assert rows[user]["consent__location"] is False and rows[user]["consent__energy"] is True
        assert all(rows[user][f] is None for f in LOCATION)
    assert rows[NO_LOCATION]["overnight_charge_share_30d"] == 0.05
    assert rows[BOOK[0]]["consent__location"] is True
    assert rows[BOOK[0]]["snapshot_as_of"] == D - timedelta(hours=6)


def test_export_describes_its_population_for_percentiles(world: World) -> None:
    population = json.loads((world.export / "population.json").read_text())
    assert population["n_users"] >= len(BOOK)
    grid = population["percentiles"]["overnight_charge_share_30d"]
    assert len(grid) == 99 and grid == sorted(grid) and 0 <= grid[0] < grid[-1] <= 1
    assert population["percentiles"]["is_power_90d"] is None  # nobody has it
    with psycopg.connect(world.database_url) as conn:
        stored = conn.execute(
            "SELECT array_agg(value ORDER BY level) FROM feature_population WHERE as_of = %s "
            "AND feature_set_version = %s AND feature = 'overnight_charge_share_30d'",
            (D, FEATURE_SET_VERSION),
        ).fetchone()
    assert stored is not None and list(stored[0]) == grid


def test_export_resumes_where_it_stopped_and_refuses_another_run(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    first = export_book(
        world.database_url, D, out, max_age=timedelta(hours=36), part_users=40, progress=False
    )
    journal = (out / JOURNAL_FILE).read_text().splitlines()
    last = json.loads(journal[-1])
    (out / JOURNAL_FILE).write_text("\n".join(journal[:-1]) + "\n")  # as if it stopped there
    if last["file"]:
        (out / last["file"]).unlink()
    second = export_book(
        world.database_url, D, out, max_age=timedelta(hours=36), part_users=40, progress=False
    )
    assert second.resumed_parts == first.parts - 1 and second.rows == first.rows
    assert (
        json.loads((out / "manifest.json").read_text())["files"]
        == json.loads((world.export / "manifest.json").read_text())["files"]
    )
    manifest = (out / "manifest.json").read_bytes()
    third = export_book(
        world.database_url, D, out, max_age=timedelta(hours=36), part_users=40, progress=False
    )
    assert third.resumed_parts == third.parts and third.rows == first.rows
    assert (out / "manifest.json").read_bytes() == manifest  # a finished export stays as it was
    with pytest.raises(Conflict, match="as_of"):
        export_book(
            world.database_url,
            D - timedelta(days=1),
            out,
            max_age=timedelta(hours=36),
            progress=False,
        )


@pytest.mark.slow
def test_export_and_score_on_a_dask_cluster_give_the_same_files(
    world: World, tmp_path: Path
) -> None:
    # Imported here: Dask's import costs about a second.
    from distributed import LocalCluster

    export, scores = tmp_path / "export", tmp_path / "scores"
    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=1,
        processes=True,
        dashboard_address=":0",
        env={"HEARTH_DATABASE_URL": world.database_url},
    ) as cluster:
        address = cluster.scheduler_address
        proc = _cli(world.database_url, "export", "--as-of", D.isoformat(), "--out", str(export),
                    "--max-age", "36h", "--part-users", "40", "--no-progress",
                    "--scheduler", address)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        proc = _cli(world.database_url, "score", "--model", str(world.model), "--as-of",
                    D.isoformat(), "--export", str(export), "--out", str(scores), "--no-progress",
                    "--requested-by", "test:dask", "--scheduler", address)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        ran = cluster.scheduler.transition_counter
    parts = json.loads((world.export / "manifest.json").read_text())["files"]
    assert ran >= 2 * len(parts)  # the parts were tasks of the cluster, not run here
    # The same Parquet files, byte for byte, as the in-process export of the fixture.
    assert json.loads((export / "manifest.json").read_text())["files"] == parts
    fields = ("probability", "points", "reasons", "model_version", "feature_set_version")
    here, there = _rows(world.scores, "scores"), _rows(scores, "scores")
    assert set(here) == set(there)
    for user, row in here.items():
        assert {f: row[f] for f in fields} == {f: there[user][f] for f in fields}, user


def test_batch_scores_every_exported_user_with_reasons_and_logs_each(world: World) -> None:
    manifest = json.loads((world.scores / "manifest.json").read_text())
    scores = _rows(world.scores, "scores")
    exported = _rows(world.export, "part")
    assert set(scores) == set(exported) and manifest["rows"] == len(scores)
    row = scores[BOOK[0]]
    assert row["model_version"] == manifest["model_version"]
    assert row["feature_set_version"] == FEATURE_SET_VERSION
    assert 0 < row["probability"] < 1 and isinstance(row["points"], int)
    for user in BOOK:
        reasons = scores[user]["reasons"]
        assert len(reasons) <= 4
        assert [r["points"] for r in reasons] == sorted(r["points"] for r in reasons)
        assert all(r["points"] < 0 and r["text"] for r in reasons)
    assert any(len(scores[u]["reasons"]) == 4 for u in BOOK)
    assert any(r["percentile"] is not None for u in BOOK for r in scores[u]["reasons"])
    for user in (WITHDRAWN, NO_LOCATION):  # a category not consented is never a reason
        assert not {r["feature"] for r in scores[user]["reasons"]} & set(LOCATION)
    assert len(scores[NO_LOCATION]["reasons"]) == 4  # the four other features, all bad
    with psycopg.connect(world.database_url) as conn:
        logged = conn.execute(
            "SELECT count(*), count(DISTINCT user_id), min(requested_by), min(channel) "
            "FROM score_log WHERE batch_id = %s",
            (manifest["batch_id"],),
        ).fetchone()
        reasons = conn.execute(
            "SELECT reasons FROM score_log WHERE batch_id = %s AND user_id = %s",
            (manifest["batch_id"], BOOK[0]),
        ).fetchone()
    assert logged == (len(scores), len(scores), "test:book", "batch")
    assert reasons is not None
    assert all(set(r) == {"feature", "text", "points"} for r in reasons[0])  # no values


def test_a_resumed_batch_logs_each_score_once(world: World, tmp_path: Path) -> None:
    out = tmp_path / "rescored"
    kwargs: dict[str, Any] = dict(
        as_of=D, database_url=world.database_url, requested_by="test:resume", progress=False
    )
    first = score_export(world.model, world.export, out, **kwargs)
    journal = (out / JOURNAL_FILE).read_text().splitlines()
    last = json.loads(journal[-1])
    (out / JOURNAL_FILE).write_text("\n".join(journal[:-1]) + "\n")
    (out / last["file"]).unlink()
    second = score_export(world.model, world.export, out, **kwargs)
    assert second.batch_id == first.batch_id and second.resumed_parts == first.parts - 1
    assert sha256_of(out / last["file"]) == last["sha256"]  # the same part again
    with psycopg.connect(world.database_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM score_log WHERE batch_id = %s", (first.batch_id,)
        ).fetchone()
    assert count == (first.rows,)


@pytest.fixture(scope="module")
def service(world: World) -> Iterator[str]:
    tokens = {SCORER: ["scores:read"], READER: ["features:read"]}
    settings = load_settings(
        database_url=world.database_url, api_tokens=json.dumps(tokens), score_model=world.model
    )
    with serve_in_thread(settings) as base_url:
        yield base_url


def _call(base_url: str, path: str, token: str, body: object | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        base_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_online_scores_equal_batch_scores(world: World, service: str) -> None:
    users = [*BOOK[:25], WITHDRAWN, NO_LOCATION]
    rows = [{"user_id": u, "as_of": D.isoformat()} for u in users]
    rows += [
        {"user_id": NO_CONSENT[0], "as_of": D.isoformat()},
        {"user_id": "bk-nobody", "as_of": D.isoformat()},
        {"user_id": STALE[0], "as_of": D.isoformat()},
    ]
    status, body = _call(service, "/v1/scores", SCORER, {"rows": rows})
    assert status == 200, body
    batch = _rows(world.scores, "scores")
    assert [s["row"] for s in body["scores"]] == list(range(len(users)))
    for online in body["scores"]:
        offline = batch[online["user_id"]]
        assert online["points"] == offline["points"]
        assert online["probability"] == offline["probability"]
        assert online["reasons"] == offline["reasons"]
        assert online["model_version"] == offline["model_version"]
        assert datetime.fromisoformat(online["snapshot_as_of"]) == offline["snapshot_as_of"]
    assert [(m["user_id"], m["reason"]) for m in body["missing"]] == [
        (NO_CONSENT[0], "no_consent"),
        ("bk-nobody", "unknown_user"),
        (STALE[0], "no_snapshot"),
    ]


def test_online_scores_are_logged_with_who_asked_and_read_back(world: World, service: str) -> None:
    user = BOOK[1]
    status, body = _call(
        service, "/v1/scores", SCORER, {"rows": [{"user_id": user, "as_of": D.isoformat()}]}
    )
    assert status == 200, body
    status, trail = _call(service, f"/v1/users/{user}/scores", SCORER)
    assert status == 200, trail
    channels = [s["channel"] for s in trail["scores"]]
    assert "online" in channels and "batch" in channels
    latest = trail["scores"][0]
    assert latest["channel"] == "online" and latest["requested_by"].startswith("token:")
    assert SCORER not in json.dumps(trail)  # the token itself is never logged
    assert latest["points"] == body["scores"][0]["points"]
    assert [r["feature"] for r in latest["reasons"]] == [
        r["feature"] for r in body["scores"][0]["reasons"]
    ]
    assert all(set(r) == {"feature", "text", "points"} for r in latest["reasons"])
    assert _call(service, f"/v1/users/{user}/scores", READER)[0] == 403
    assert _call(service, "/v1/scores", READER, {"rows": [{"user_id": user}]})[0] == 403
    assert _call(service, "/v1/users/bk-nobody/scores", SCORER)[0] == 404


def test_an_append_keeps_only_users_that_exist(world: World) -> None:
    """Migration 0077's one-statement append: the gate, then only rows of existing users (an
    erasure that committed first leaves nothing to log)."""
    rows = [
        LogRow(user, D, "m-0077", FEATURE_SET_VERSION, 600, 0.1, [], "cli:test", ONLINE)
        for user in (BOOK[3], "bk-never-existed")
    ]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        score_log.append(conn, rows)
        logged = conn.execute(
            "SELECT user_id FROM score_log WHERE model_version = 'm-0077'"
        ).fetchall()
    assert logged == [(BOOK[3],)]


def test_an_append_finds_its_users_by_key_not_by_scanning_them(
    own_database: tuple[str, str],
) -> None:
    """Migration 0078: an online append looks its users up by primary key. With 20,000 users,
    0077's join was planned as a hash join over a sequential scan of all of them per append
    (1.5 ms of server CPU for one row)."""
    url, _ = own_database
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy("COPY users (user_id) FROM STDIN") as copy:
            for i in range(20_000):
                copy.write_row((f"scan-{i:05d}",))
        conn.execute("ANALYZE users")
    rows = [
        LogRow(user, D, "m-0078", FEATURE_SET_VERSION, 600, 0.1, [], "cli:test", ONLINE)
        for user in ("scan-00042", "scan-never")
    ]
    with psycopg.connect(url) as conn:  # one transaction: its own table statistics
        score_log.append(conn, rows)
        scans = conn.execute(
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'users'"
        ).fetchone()
        logged = conn.execute("SELECT user_id FROM score_log").fetchall()
    assert scans is not None and scans[0] == 0 and scans[1] >= 1, scans
    assert logged == [("scan-00042",)]


def test_withdrawal_keeps_the_score_log_and_erasure_removes_it(world: World) -> None:
    user = BOOK[2]
    with psycopg.connect(world.database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM score_log WHERE user_id = %s", (user,))
        held = before.fetchone()
        assert held is not None and held[0] >= 1
        admin.withdraw_consent(conn, user_id=user, category="energy")
        after = conn.execute("SELECT count(*) FROM score_log WHERE user_id = %s", (user,))
        assert after.fetchone() == held  # the decision happened
        exported = admin.export_user(conn, user)
        assert len(exported["tables"]["score_log"]) == held[0]  # data-subject access covers it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM score_log WHERE user_id = %s", (user,))
        report = admin.erase_user(conn, user)
        assert report.status == "complete" and report.counts["score_log"] == held[0]
        gone = conn.execute("SELECT count(*) FROM score_log WHERE user_id = %s", (user,))
        assert gone.fetchone() == (0,)


def test_the_service_refuses_a_tampered_model(world: World, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "model.json").write_bytes((world.model / "model.json").read_bytes())
    data = bytearray((world.model / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / MODEL_FILE).write_bytes(bytes(data))
    settings = load_settings(database_url=world.database_url, score_model=tampered)
    with pytest.raises(ConfigError, match=r"HEARTH_SCORE_MODEL.*sha256"):
        create_app(settings)


def test_scores_without_a_model_are_unavailable(world: World) -> None:
    settings = load_settings(
        database_url=world.database_url, api_tokens=json.dumps({SCORER: ["scores:read"]})
    )
    with serve_in_thread(settings, cache_entries=0) as base_url:
        status, body = _call(base_url, "/v1/scores", SCORER, {"rows": [{"user_id": BOOK[0]}]})
    assert status == 503 and body["error"]["code"] == "no_model"


def test_the_lenders_example_turns_scores_into_a_preapproval_file(
    world: World, tmp_path: Path
) -> None:
    out = tmp_path / "preapproved.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/preapprove.py",
            str(world.scores),
            "--out",
            str(out),
            "--min-points",
            "500",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pre-approval file:" in proc.stdout
    assert proc.stdout.count("points, probability of default") == 3  # the printed sample
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == json.loads((world.scores / "manifest.json").read_text())["rows"]
    by_user = {r["user_id"]: r for r in rows}
    assert {r["decision"] for r in rows} <= {"pre-approved", "refer"}
    assert all((int(r["points"]) >= 500) == (r["decision"] == "pre-approved") for r in rows)
    assert (
        by_user[NO_LOCATION]["reasons"]
        and "Nights spent at home" not in by_user[NO_LOCATION]["reasons"]
    )
