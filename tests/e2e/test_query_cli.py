"""A user's journey with ``loglambda query`` and ``loglambda sql`` on a served home.

Why: the CLI is how people ask ad-hoc questions. Each output form must carry the
answer's freshness without spoiling the data (CSV stays parseable), errors must say
what is wrong (an unknown table lists the tables), and the shell must take statements
over several lines, dot commands, and keep going after an error.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from loglambda.core import cli as core_cli
from loglambda.serving.query_cli import _history, _join_history, query_cmd, sql_cmd
from tests.served_home import TRAFFIC, build_served_home

pytestmark = pytest.mark.e2e

P95_BY_HOUR = (
    "SELECT date_trunc('hour', window_start) AS hour, sum(requests) AS requests, "
    "merged_quantile(latency, 0.95) AS p95 FROM traffic_minute GROUP BY hour ORDER BY hour"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose batch and speed layers hold a subset of the catalog: the CLI serves
    the standard catalog, and only the views a query names need to be there."""
    home = tmp_path_factory.mktemp("querycli") / "home"
    build_served_home(home)
    return home


def run(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(query_cmd, args, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_table_output_ends_with_the_freshness(served: Path) -> None:
    code, out, _ = run([P95_BY_HOUR, "--home", str(served)])
    assert code == 0, out
    header, _rule, *body = out.splitlines()
    assert header.split() == ["hour", "requests", "p95"]
    assert "3 rows in" in out
    assert "freshness: batch version" in out and "lag logs/0 0, traffic/0 0" in out
    assert sum(int(line.split()[2]) for line in body[:3]) == TRAFFIC


def test_json_output_has_rows_and_freshness(served: Path) -> None:
    code, out, _ = run(
        ["SELECT window_start, hll_estimate(visitors) AS u, visitors FROM visitors_day",
         "--home", str(served), "--output", "json"]
    )  # fmt: skip
    assert code == 0, out
    doc = json.loads(out)
    [row] = doc["rows"]
    assert row["window_start"].startswith("2026-11-18T00:00:00") and row["u"] > 0
    assert isinstance(row["visitors"], str)  # the sketch, base64
    fresh = doc["freshness"]
    assert fresh["positions"] == {"traffic/0": TRAFFIC, "logs/0": 450}
    assert fresh["lag"] == {"traffic/0": 0, "logs/0": 0}
    assert fresh["horizon"] and fresh["batch_version"] >= 1
    assert doc["truncated"] is False and doc["tables"] == ["visitors_day"]


def test_csv_output_is_clean_and_freshness_goes_to_stderr(served: Path) -> None:
    code, out, err = run(
        ["SELECT source_line, status FROM traffic ORDER BY source_line", "--home", str(served),
         "--output", "csv", "--max-rows", "5"]
    )  # fmt: skip
    assert code == 0, err
    parsed = list(csv.reader(io.StringIO(out)))
    assert parsed[0] == ["source_line", "status"] and len(parsed) == 6
    assert [r[0] for r in parsed[1:]] == ["0", "1", "2", "3", "4"]
    assert "cut at 5: raise --max-rows" in err
    assert "raw events: master seq" in err and "traffic/0 [4000, 4500)" in err


def test_flags_come_from_env_vars_and_sql_from_stdin(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGLAMBDA_HOME", str(served))
    monkeypatch.setenv("LOGLAMBDA_QUERY_OUTPUT", "json")
    monkeypatch.setenv("LOGLAMBDA_QUERY_MAX_ROWS", "2")
    code, out, _ = run(["-"], stdin="SELECT * FROM range(10)\n")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["row_count"] == 2 and doc["truncated"] is True


def test_errors_name_the_problem(served: Path) -> None:
    code, _, err = run(["SELECT * FROM visits", "--home", str(served)])
    assert code == 1
    assert "unknown table 'visits'" in err and "visitors_day" in err and "traffic" in err
    code, _, err = run(["COPY traffic TO 'out.csv'", "--home", str(served)])
    assert code == 1 and "not allowed: COPY" in err
    code, _, err = run(["SELECT 1", "--home", str(served / "missing")])
    assert code == 1 and "no data home" in err


def test_the_shell_runs_statements_and_dot_commands(served: Path) -> None:
    script = "\n".join(
        [
            ".tables",
            ".schema traffic_hour",
            "SELECT sum(requests) AS n",
            "  FROM traffic_minute;",
            "SELECT * FROM nope;",
            ".output csv",
            "SELECT 1 AS a; SELECT 2 AS b;",
            ".bogus",
            ".help",
            "SELECT 3 AS c",  # the last statement may omit its ';' in piped input
        ]
    )
    result = CliRunner().invoke(sql_cmd, ["--home", str(served)], input=script + "\n")
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    assert "traffic_minute" in out and "raw access-log events" in out  # .tables
    assert "latency_sum_us" in out and "list<item: struct<key: int32" in out  # .schema
    assert f"{TRAFFIC}" in out  # the multi-line statement ran
    assert "unknown table 'nope'" in err  # ...and the shell went on
    assert "a\n1\n" in out and "b\n2\n" in out and "c\n3\n" in out  # csv mode, split
    assert "unknown command '.bogus'" in err
    assert "merged_quantile(histogram, q)" in out and "unique_count(sketch)" in out


def test_lazy_command_entries_load_the_commands(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The entries the lead adds to core/cli.py's LAZY_COMMANDS.
    monkeypatch.setitem(core_cli.LAZY_COMMANDS, "query", "loglambda.serving.query_cli:query_cmd")
    monkeypatch.setitem(core_cli.LAZY_COMMANDS, "sql", "loglambda.serving.query_cli:sql_cmd")
    runner = CliRunner()
    result = runner.invoke(
        core_cli.main, ["query", "SELECT count(*) AS n FROM logs", "--home", str(served)]
    )
    assert result.exit_code == 0, result.output
    assert "450" in result.stdout
    shell = runner.invoke(core_cli.main, ["sql", "--home", str(served)], input=".quit\n")
    assert shell.exit_code == 0


def test_history_keeps_a_multi_line_statement_as_one_entry(tmp_path: Path) -> None:
    readline = pytest.importorskip("readline")
    path = tmp_path / ".sql_history"
    with _history(path, enabled=True):
        readline.add_history(".tables")
        for line in ("SELECT sum(requests)", "  FROM traffic_minute", ";"):
            readline.add_history(line)  # what input() does per line typed
        _join_history(3)
    assert path.read_text().splitlines()[-2:] == [
        ".tables",
        "SELECT sum(requests) FROM traffic_minute ;",
    ]
    with _history(path, enabled=True):  # the next session starts from the file
        count = readline.get_current_history_length()
        assert readline.get_history_item(count) == "SELECT sum(requests) FROM traffic_minute ;"
