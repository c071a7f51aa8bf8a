"""`loglambda import` end to end: the real CLI, real Parquet files, real DuckDB summary."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

import loglambda.batch.master as master_mod
from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.core.cli import main
from loglambda.core.lines import split_block
from loglambda.core.parsers.access import COMBINED

pytestmark = pytest.mark.integration

# GoAccess 1.7 on the shared sample (see ../shared/data/README.md).
GOACCESS = {
    "requests": 10_000,
    "bytes": 2_747_282_740,
    "status_classes": {"2xx": 9_171, "3xx": 609, "4xx": 217, "5xx": 3},
    "unique_visitors": 2_095,
}
CLOSING_10K = "read 10,000 = imported 10,000 + quarantined 0"


def run(*args: str | Path, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def summary(home: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run("summary", "--json", "--home", home).stdout)
    return out


def totals(home: Path) -> dict[str, Any]:
    s = summary(home)
    return {k: s[k] for k in GOACCESS}


def master_files(home: Path) -> list[Path]:
    return sorted((home / "master").glob("traffic/**/*.parquet"))


def query(sql: str, files: list[Path]) -> tuple[Any, ...]:
    """One result row of ``sql`` over ``read_parquet($files)``."""
    row = duckdb.connect().execute(sql, {"files": [str(p) for p in files]}).fetchone()
    assert row is not None
    return tuple(row)


def provenance(home: Path) -> tuple[int, int]:
    """(rows, distinct (source, source_line)) over every file the manifest lists."""
    row = query(
        "SELECT count(*), count(DISTINCT (source, source_line)) FROM read_parquet($files)",
        MasterDataset(home).snapshot().files("traffic"),
    )
    return int(row[0]), int(row[1])


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, sample_log: Path) -> tuple[Path, Result]:
    """One import of the 10k sample, shared by the read-only tests below."""
    home = tmp_path_factory.mktemp("imported") / "home"
    return home, run("import", sample_log, "--home", home)


@pytest.fixture
def small_log(tmp_path: Path, sample_log: Path) -> Path:
    """The first 1,000 lines of the sample, for tests that import several times."""
    path = tmp_path / "small.log"
    with sample_log.open("rb") as fh:
        path.write_bytes(b"".join(fh.readline() for _ in range(1_000)))
    return path


# --- importing the sample ---------------------------------------------------------------


def test_import_reconciles(imported: tuple[Path, Result], sample_log: Path) -> None:
    _, result = imported
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"{sample_log}: {CLOSING_10K}"


def test_summary_matches_goaccess(imported: tuple[Path, Result]) -> None:
    home, _ = imported
    got = summary(home)
    assert {k: got[k] for k in GOACCESS} == GOACCESS
    assert got["first_ts"] == "2015-05-17T10:05:00Z"
    assert got["last_ts"] == "2015-05-20T21:05:59Z"
    assert got["log_records"] == 0


def test_summary_table_shows_the_same_numbers(imported: tuple[Path, Result]) -> None:
    home, _ = imported
    text = run("summary", "--home", home).stdout
    assert "requests        10,000" in text
    assert "bandwidth       2,747,282,740 bytes" in text
    assert "2xx 9,171  3xx 609  4xx 217  5xx 3" in text
    assert "unique visitors 2,095" in text


def test_auto_detection_is_reported(imported: tuple[Path, Result]) -> None:
    _, result = imported
    assert "detected format: combined" in result.stderr
    assert "detected format" not in result.stdout  # stdout stays the machine-readable result


def test_parquet_ts_is_int64_utc_micros_not_int96(imported: tuple[Path, Result]) -> None:
    home, _ = imported
    files = master_files(home)
    assert files
    for path in files:
        assert pq.read_schema(path).field("ts").type == pa.timestamp("us", tz="UTC")
        parquet_schema = pq.ParquetFile(path).schema
        column = parquet_schema.column(parquet_schema.names.index("ts"))
        assert column.physical_type == "INT64", path


def test_partitions_are_date_and_hour_of_the_event(
    imported: tuple[Path, Result], sample_log: Path
) -> None:
    home, _ = imported
    pattern = re.compile(r"traffic/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/[^/]+\.parquet")
    seen: set[tuple[str, str]] = set()
    for path in master_files(home):
        rel = path.relative_to(home / "master").as_posix()
        match = pattern.fullmatch(rel)
        assert match, rel
        date, hour = match.groups()
        seen.add((date, hour))
        ts = pq.read_table(path, columns=["ts"]).column("ts").to_pylist()
        assert {(t.strftime("%Y-%m-%d"), t.strftime("%H")) for t in ts} == {(date, hour)}, rel
    # Every hour that has a request in the sample, and no other, has a partition.
    expected = set()
    for line in sample_log.read_text().splitlines():
        stamp = line[line.index("[") + 1 : line.index("]")]
        t = datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
        expected.add((t.strftime("%Y-%m-%d"), t.strftime("%H")))
    assert seen == expected
    # The manifest lists exactly the files on disk.
    listed = {p.resolve() for p in MasterDataset(home).snapshot().files("traffic")}
    assert listed == {p.resolve() for p in master_files(home)}


def test_every_line_is_in_master_once(imported: tuple[Path, Result]) -> None:
    home, _ = imported
    assert provenance(home) == (10_000, 10_000)


# --- deduplication ---------------------------------------------------------------------


def test_reimport_is_skipped(home: Path, sample_log: Path) -> None:
    run("import", sample_log, "--home", home)
    before = totals(home)
    again = run("import", sample_log, "--home", home)
    assert "already imported" in again.stdout
    assert "imported 10,000" not in again.stdout
    assert totals(home) == before == GOACCESS
    assert len(MasterDataset(home).entries()) == 1


def test_file_imported_before_the_hash_switch_is_still_a_duplicate(
    home: Path, sample_log: Path
) -> None:
    """Manifests written before BLAKE3 name files by SHA-256; those still dedupe."""
    run("import", sample_log, "--home", home)
    (entry_file,) = (home / "master" / "_manifest").glob("*.json")
    entry = json.loads(entry_file.read_text())
    origin = entry["origin"]
    origin.pop("file_blake3"), origin.pop("content_blake3")
    origin["file_sha256"] = origin["content_sha256"] = hashlib.sha256(
        sample_log.read_bytes()
    ).hexdigest()
    entry_file.write_text(json.dumps(entry))
    again = run("import", sample_log, "--home", home)
    assert "already imported" in again.stdout
    assert totals(home) == GOACCESS


def test_rotated_file_is_a_duplicate(home: Path, tmp_path: Path, small_log: Path) -> None:
    """logrotate renames access.log to access.log.1: same bytes, new name, skipped."""
    run("import", small_log, "--home", home)
    rotated = tmp_path / "access.log.1"
    rotated.write_bytes(small_log.read_bytes())
    assert "already imported" in run("import", rotated, "--home", home).stdout
    assert summary(home)["requests"] == 1_000


def test_a_grown_file_imports_only_its_new_lines(home: Path, small_log: Path) -> None:
    """An access log imported nightly grows between imports: each import adds what is
    new, numbered on from the earlier import, and the master holds every line once."""
    lines = small_log.read_bytes().splitlines(keepends=True)
    log = small_log.with_name("access.log")
    log.write_bytes(b"".join(lines[:600]))
    run("import", log, "--home", home)
    log.write_bytes(b"".join(lines[:900]))
    second = run("import", log, "--home", home).stdout
    assert "read 300 = imported 300 + quarantined 0" in second
    assert "new lines only, from line 601 (the 600 before it came in manifest seq 1)" in second
    log.write_bytes(b"".join(lines))
    third = run("import", log, "--home", home).stdout
    assert "read 100 = imported 100" in third and "manifest seq 2" in third
    assert "already imported" in run("import", log, "--home", home).stdout
    assert provenance(home) == (1_000, 1_000)
    offsets = query(
        "SELECT min(source_line), min(source_offset) FROM read_parquet($files)",
        [home / "master" / f.path for f in MasterDataset(home).entries()[1].files],
    )
    assert offsets == (601, len(b"".join(lines[:600])))
    # Same answer as importing the whole file once.
    once = home.parent / "once"
    run("import", small_log, "--home", once)
    assert summary(home) == summary(once)


def test_lines_written_during_an_import_are_left_for_the_next(home: Path, small_log: Path) -> None:
    """The manifest records the bytes the import read, not the file's size at the end."""
    lines = small_log.read_bytes().splitlines(keepends=True)
    log = small_log.with_name("access.log")
    log.write_bytes(b"".join(lines[:900]))

    def server_writes(_position: int) -> None:  # called once the import has read to EOF
        if log.stat().st_size == len(b"".join(lines[:900])):
            with log.open("ab") as fh:
                fh.write(b"".join(lines[900:]))

    first = import_file(MasterDataset(home), log, "combined", on_progress=server_writes)
    assert (first.read, log.stat().st_size) == (900, small_log.stat().st_size)
    again = run("import", log, "--home", home).stdout
    assert "read 100 = imported 100" in again and "from line 901" in again
    assert provenance(home) == (1_000, 1_000)


def test_a_line_unfinished_at_the_first_import_is_not_read_twice(
    home: Path, small_log: Path
) -> None:
    """The writer was mid-line when the first import ran: that import read the line's
    start, the next reads its rest. Both halves are quarantined, no byte twice."""
    data = small_log.read_bytes()
    cut = len(b"".join(data.splitlines(keepends=True)[:499])) + 30  # inside the time
    log = small_log.with_name("access.log")
    log.write_bytes(data[:cut])
    first = run("import", log, "--home", home).stdout
    assert "read 500 = imported 499 + quarantined 1" in first
    log.write_bytes(data)
    second = run("import", log, "--home", home).stdout
    assert "read 501 = imported 500 + quarantined 1" in second
    assert "from inside line 500, which manifest seq 1 read unfinished" in second
    assert summary(home)["requests"] == 999
    rows = run("quarantine", "--home", home, "--limit", "5").stdout
    assert rows.count("access.log") == 2  # the two halves of line 500


@pytest.mark.parametrize("change", ["edited", "gzip"])
def test_a_file_that_did_not_only_grow_is_imported_whole(
    home: Path, small_log: Path, change: str
) -> None:
    """Only a plain file's exact prefix is taken as already imported."""
    data = small_log.read_bytes()
    lines = data.splitlines(keepends=True)
    log = small_log.with_name("access.log")
    log.write_bytes(b"".join(lines[:500]))
    run("import", log, "--home", home)
    grown = b"".join(lines[:800])
    if change == "edited":
        grown = grown.replace(lines[3], lines[4], 1)
    if change == "gzip":
        log = log.with_name("access.log.gz")
        grown = gzip.compress(grown)
    log.write_bytes(grown)
    again = run("import", log, "--home", home).stdout
    assert "read 800 = imported 800" in again and "new lines only" not in again


def test_gzip_copy_of_imported_content_is_a_duplicate(
    home: Path, tmp_path: Path, sample_log: Path
) -> None:
    run("import", sample_log, "--home", home)
    gz = tmp_path / "access.log.gz"
    gz.write_bytes(gzip.compress(sample_log.read_bytes()))
    result = run("import", gz, "--home", home)
    assert "already imported" in result.stdout
    assert totals(home) == GOACCESS
    assert len(MasterDataset(home).entries()) == 1
    assert not any((home / "master" / "_staging").iterdir())  # the parsed copy was discarded


def test_plain_file_after_its_gzip_is_a_duplicate(
    home: Path, tmp_path: Path, small_log: Path
) -> None:
    gz = tmp_path / "small.log.gz"
    gz.write_bytes(gzip.compress(small_log.read_bytes()))
    first = run("import", gz, "--home", home)
    assert "read 1,000 = imported 1,000 + quarantined 0" in first.stdout
    second = run("import", small_log, "--home", home)
    assert "already imported" in second.stdout
    assert summary(home)["requests"] == 1_000


def test_several_files_print_a_total_line(home: Path, tmp_path: Path, small_log: Path) -> None:
    other = tmp_path / "other.log"
    other.write_bytes(b"".join(small_log.read_bytes().splitlines(keepends=True)[:10]))
    result = run("import", small_log, other, "--home", home)
    assert result.stdout.strip().splitlines()[-1] == (
        "total: read 1,010 = imported 1,010 + quarantined 0"
    )


# --- bad lines and the quarantine command ----------------------------------------------------


def test_bad_lines_reconcile_and_show_in_quarantine(
    home: Path, tmp_path: Path, small_log: Path
) -> None:
    lines = small_log.read_bytes().splitlines(keepends=True)[:100]
    good = lines[0].decode()
    injected = {
        # line number in the new file -> (the line's bytes, the reason expected)
        5: (good.replace(" 200 ", " 999 ").encode(), "bad_status"),
        20: (b"this is not an access log line\n", "no_match"),
        21: (b"\n", "blank"),
        50: (good.replace("Mozilla", "Moz\x00lla").encode(), "nul_byte"),
        77: (good.encode().replace(b"Mozilla", b"Moz\xffilla"), "invalid_utf8"),
        90: (good.replace("17/May/2015", "17/Mai/2015").encode(), "bad_timestamp"),
        101: (good.replace(" 203023 ", " -12 ").encode(), "bad_bytes"),
    }
    out: list[bytes] = []
    source = iter(lines)
    for n in range(1, len(lines) + len(injected) + 1):
        out.append(injected[n][0] if n in injected else next(source))
    path = tmp_path / "dirty.log"
    path.write_bytes(b"".join(out))

    result = run("import", path, "--format", "combined", "--home", home)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{path}: read 107 = imported 100 + quarantined 7 (")
    for reason in {r for _, r in injected.values()}:
        assert f"{reason} 1" in last
    assert summary(home)["requests"] == 100

    shown = run("quarantine", "--home", home).stdout
    for n, (_, reason) in injected.items():
        assert f"{path}:{n}: {reason}: " in shown, (n, reason, shown)
    assert "status '999' is not an HTTP status 100-599" in shown
    assert "response size '-12' is not a non-negative integer" in shown

    only = run("quarantine", "--reason", "bad_status", "--home", home).stdout
    assert f"{path}:5: bad_status" in only
    assert "no_match" not in only
    counts = run("quarantine", "--counts", "--home", home).stdout
    assert re.search(r"^\s+1  blank\s+" + re.escape(str(path)) + "$", counts, re.M), counts


def test_empty_quarantine(home: Path, small_log: Path) -> None:
    run("import", small_log, "--home", home)
    assert run("quarantine", "--home", home).stdout.strip() == "quarantine is empty"


# --- formats -----------------------------------------------------------------------------


def test_format_common(home: Path, tmp_path: Path, small_log: Path) -> None:
    # Cut each combined line after the size field: what Apache's "common" writes.
    common = [
        re.sub(r'^(.*?" \d{3} \S+) ".*$', r"\1", line)
        for line in small_log.read_text().splitlines()
    ]
    assert all(line.count('"') == 2 for line in common)
    path = tmp_path / "common.log"
    path.write_text("\n".join(common) + "\n")
    result = run("import", path, "--format", "common", "--home", home)
    assert result.stdout.strip().endswith("read 1,000 = imported 1,000 + quarantined 0")
    got = summary(home)
    assert got["requests"] == 1_000
    with_agent = query(
        "SELECT count(*) FROM read_parquet($files) "
        "WHERE user_agent IS NOT NULL OR referrer IS NOT NULL",
        master_files(home),
    )
    assert with_agent == (0,)


def test_format_auto_prints_the_detected_format(home: Path, small_log: Path) -> None:
    result = run("import", small_log, "--format", "auto", "--home", home)
    assert "detected format: combined" in result.stderr


def test_unknown_format_is_a_clear_error(home: Path, small_log: Path) -> None:
    result = run("import", small_log, "--format", "apache-ish", "--home", home, ok=False)
    assert result.exit_code != 0
    message = result.output
    assert "unknown format 'apache-ish'" in message
    for name in ("auto", "combined", "common", "vcombined", "nginx_json", "json"):
        assert name in message
    assert "Traceback" not in message
    assert MasterDataset(home).entries() == []


def test_formats_command_lists_every_format() -> None:
    listed = run("formats").stdout.split()
    for name in ("combined", "common", "vcombined", "nginx_json", "json"):
        assert name in listed


# --- crash safety ----------------------------------------------------------------------------


def test_crash_after_staging_is_discarded(home: Path, small_log: Path) -> None:
    run("import", small_log, "--home", home)
    before = summary(home)
    master = MasterDataset(home)
    table = pq.read_table(master_files(home)[0])
    staged = master.stage("import-crashed")
    staged.write("traffic", table)
    staged.write("traffic", table)
    # ... and the process dies here, before commit: writers never closed, and the OS
    # drops the batch's lock.
    os.close(staged._lock)
    assert summary(home) == before  # invisible even before recovery
    done = master.recover()
    assert done == ["discarded uncommitted batch import-crashed"]
    assert not (home / "master" / "_staging" / "import-crashed").exists()
    assert summary(home) == before
    assert provenance(home) == (1_000, 1_000)


def test_import_command_recovers_before_importing(home: Path, small_log: Path) -> None:
    run("import", small_log, "--home", home)
    staged = MasterDataset(home).stage("import-crashed")
    staged.write("traffic", pq.read_table(master_files(home)[0]))
    os.close(staged._lock)  # the writing process died: the OS released its lock
    result = run("import", small_log, "--home", home)
    assert "discarded uncommitted batch import-crashed" in result.stderr
    assert summary(home)["requests"] == 1_000


@pytest.fixture
def publish_fails_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Make the first move of staged files into place fail, as a crash there would."""
    real = master_mod._publish_files
    calls: list[int] = []

    def flaky(staged: Path, master_root: Path, home: Path) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("simulated crash between manifest link and publish")
        real(staged, master_root, home)

    monkeypatch.setattr(master_mod, "_publish_files", flaky)
    yield calls


def test_crash_after_manifest_link_rolls_forward(
    home: Path, small_log: Path, publish_fails_once: list[int]
) -> None:
    """The staged-batch level: commit dies after linking its manifest entry."""
    block = split_block(small_log.read_bytes(), source=str(small_log), base_offset=0, base_line=1)
    table = COMBINED.parse(block).events
    assert table.num_rows == 1_000
    master = MasterDataset(home)
    staged = master.stage("batch-rollforward")
    staged.write("traffic", table)
    with pytest.raises(OSError, match="simulated crash"):
        staged.commit({"type": "test"}, read=block.read)
    # Committed (the manifest lists it), but its files are still in staging.
    assert [e.batch_id for e in master.entries()] == ["batch-rollforward"]
    assert master_files(home) == []
    assert master.recover() == ["rolled forward batch batch-rollforward (seq 1)"]
    assert len(publish_fails_once) == 2
    assert provenance(home) == (1_000, 1_000)
    assert summary(home)["requests"] == 1_000
    assert master.recover() == []


def test_import_interrupted_after_manifest_link_keeps_its_rows(
    home: Path, sample_log: Path, publish_fails_once: list[int]
) -> None:
    """The same crash inside `import_file`: its cleanup must not delete committed data.

    Once the manifest entry is linked the batch is committed; the staged files are the
    only copy of its rows, and ``recover()`` needs them to roll forward.
    """
    master = MasterDataset(home)
    with pytest.raises(OSError, match="simulated crash"):
        import_file(master, sample_log, "combined")
    assert len(master.entries()) == 1
    master.recover()
    assert provenance(home) == (10_000, 10_000)
    assert totals(home) == GOACCESS


# --- the installed console script --------------------------------------------------------------


def test_console_script(tmp_path: Path, sample_log: Path) -> None:
    script = Path(sys.executable).with_name("loglambda")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    env = {**os.environ, "LOGLAMBDA_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [script, "import", sample_log], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == f"{sample_log}: {CLOSING_10K}"
    out = subprocess.run(
        [script, "summary", "--json"], capture_output=True, text=True, env=env, check=True
    )
    got = json.loads(out.stdout)
    assert {k: got[k] for k in GOACCESS} == GOACCESS


def test_recover_leaves_a_batch_that_is_still_being_written_alone(
    home: Path, small_log: Path
) -> None:
    """A scheduled `batch run` (which recovers) must not discard a concurrent import."""
    run("import", small_log, "--home", home)
    master = MasterDataset(home)
    table = pq.read_table(master_files(home)[0])
    before = master.snapshot().rows("traffic")
    staged = master.stage("import-live")
    staged.write("traffic", table)
    assert MasterDataset(home).recover() == []
    entry = staged.commit({"type": "test"}, read=table.num_rows)
    assert entry.accepted == table.num_rows
    assert MasterDataset(home).snapshot().rows("traffic") == before + table.num_rows
