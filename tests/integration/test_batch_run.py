"""`loglambda batch run|status|rollback` over a real imported log, with the DuckDB engine.

The journey a user takes: import, publish a version, import more, publish a version
with a higher horizon, roll back. Plus the failure a user fears: a run dying halfway
must leave the served version alone, and the next run must clean up after it. And the
promise behind "rebuild from the master alone": the same master gives the same bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from loglambda.batch import engine_duckdb
from loglambda.batch.versions import VersionStore, open_view
from loglambda.core import catalog
from loglambda.core.cli import main

pytestmark = pytest.mark.integration

PUBLISHED = re.compile(
    r"^published version (\d+): horizon master_seq=(\d+), (\d+) views, ([\d,]+) rows in [\d.]+ s$",
    re.MULTILINE,
)


def _cli(*args: str, ok: bool = True, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("logs")
    first, second = out / "day1.log", out / "day2.log"
    _cli("generate", str(first), "--lines", "20000")
    _cli("generate", str(second), "--lines", "5000", "--seed", "7", "--start", "2026-11-02T00:00Z")
    return first, second


def _run(home: Path, *extra: str, **env: str) -> tuple[Result, tuple[int, int, int, int]]:
    result = _cli("batch", "run", "--home", str(home), *extra, env=env)
    match = PUBLISHED.search(result.stdout)
    assert match, result.output
    version, seq, views, rows = match.groups()
    return result, (int(version), int(seq), int(views), int(rows.replace(",", "")))


def _status(home: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(
        _cli("batch", "status", "--json", "--home", str(home)).stdout
    )
    return status


def test_run_import_run_rollback(home: Path, logs: tuple[Path, Path]) -> None:
    first, second = logs
    _cli("import", "--home", str(home), str(first))
    result, (version, seq, views, rows) = _run(home)
    assert (version, seq, views) == (1, 1, len(catalog.STANDARD_CATALOG))
    for name in catalog.STANDARD_CATALOG:
        assert re.search(rf"^  {name} +[\d,]+ rows +[\d.]+ s$", result.stdout, re.MULTILINE)
        assert all(p.is_file() for p in open_view(home, name))
    text = _cli("batch", "status", "--home", str(home)).stdout
    assert "* version 1 (current): horizon master_seq=1" in text
    assert "covers all of it" in text

    _cli("import", "--home", str(home), str(second))
    assert "1 batch(es) behind" in _cli("batch", "status", "--home", str(home)).stdout
    _, (version2, seq2, _, rows2) = _run(home)
    assert (version2, seq2) == (2, 2) and rows2 > rows
    status = _status(home)
    assert status["current"] == 2 and status["master_seq"] == 2
    assert [
        (v["version"], v["horizon"]["master_seq"], v["current"]) for v in status["versions"]
    ] == [
        (1, 1, False),
        (2, 2, True),
    ]

    back = _cli("batch", "rollback", "--home", str(home)).stdout
    assert back.startswith("current version is now 1 (was 2): horizon master_seq=1")
    assert _status(home)["current"] == 1
    name = next(iter(catalog.STANDARD_CATALOG))
    assert open_view(home, name)[0].parent.name == "v=1"
    refused = _cli("batch", "rollback", "--home", str(home), ok=False)
    assert refused.exit_code == 1 and "oldest kept version" in refused.output
    _, (version3, seq3, _, _) = _run(home)
    assert (version3, seq3) == (3, 2)  # numbers are never reused


def test_crash_mid_run_leaves_current_and_next_run_cleans(
    home: Path, logs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli("import", "--home", str(home), str(logs[0]))
    _run(home)
    current = home / "views" / "CURRENT"
    before = current.read_bytes()
    _cli("import", "--home", str(home), str(logs[1]))

    real = engine_duckdb.DuckDBEngine.compute
    calls: list[str] = []

    def dies_after_first_view(self: Any, view: Any, files: list[Path]) -> Any:
        if calls:
            raise RuntimeError("killed mid-run")
        calls.append(view.name)
        return real(self, view, files)

    monkeypatch.setattr(engine_duckdb.DuckDBEngine, "compute", dies_after_first_view)
    crashed = _cli("batch", "run", "--home", str(home), ok=False)
    assert isinstance(crashed.exception, RuntimeError)
    assert "CURRENT unchanged (version 1)" in crashed.stderr
    assert current.read_bytes() == before
    (leftover,) = (home / "views" / "_tmp").iterdir()
    assert (leftover / calls[0] / "part-0.parquet").is_file()
    monkeypatch.undo()

    result, (version, seq, _, _) = _run(home)
    assert f"removed temp output of an unfinished run: {leftover.name}" in result.stderr
    assert (version, seq) == (3, 2)
    assert not any((home / "views" / "_tmp").iterdir())
    assert [v["version"] for v in _status(home)["versions"]] == [1, 3]


def test_same_master_gives_identical_bytes(home: Path, logs: tuple[Path, Path]) -> None:
    _cli("import", "--home", str(home), str(logs[0]))
    _run(home)
    _run(home)
    store = VersionStore(home)
    first, second = store.list()
    assert first.horizon == second.horizon
    for name in catalog.STANDARD_CATALOG:
        (a,) = store.paths(first, name)
        (b,) = store.paths(second, name)
        assert a != b and a.read_bytes() == b.read_bytes(), name


def test_repair_subset_retention_and_env_vars(home: Path, logs: tuple[Path, Path]) -> None:
    _cli("import", "--home", str(home), str(logs[0]))
    _run(home)
    _cli("import", "--home", str(home), str(logs[1]))
    names = list(catalog.STANDARD_CATALOG)
    repaired, other = names[0], names[1:]
    result, (version, seq, views, _) = _run(home, LOGLAMBDA_VIEWS=repaired)
    # A repair stays at the served horizon and carries the other views by reference.
    assert (version, seq, views) == (2, 1, len(names))
    for name in other:
        assert re.search(rf"^  {name} .* carried over from version 1$", result.stdout, re.M)
    record = VersionStore(home).current()
    assert record is not None and record.views[repaired].built_in == 2
    assert all(record.views[n].built_in == 1 for n in other)

    for _ in range(2):
        _run(home, LOGLAMBDA_KEEP_VERSIONS="2")
    assert [v["version"] for v in _status(home)["versions"]] == [3, 4]
    assert VersionStore(home).current().horizon.master_seq == 2  # type: ignore[union-attr]

    bad = _cli("batch", "run", "--home", str(home), "--views", "nope", ok=False)
    assert bad.exit_code == 1 and f"the catalog has: {', '.join(names)}" in bad.output
