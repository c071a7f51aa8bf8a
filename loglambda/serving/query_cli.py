"""``loglambda query`` (one statement) and ``loglambda sql`` (an interactive shell).

Both run through ``serving.sql.QueryEngine``: read-only SQL over the merged views and
raw events, locked down, limited, each result followed by its freshness (in ``table``
output after the rows, as the ``freshness`` field in ``json``, on stderr with ``csv``
so that stdout stays a clean CSV file).

The shell reads statements ending with ``;`` over several lines, keeps a readline
history in ``$LOGLAMBDA_HOME/.sql_history`` (a multi-line statement is one entry), and
knows ``.tables``, ``.schema NAME``, ``.output MODE``, ``.help`` and ``.quit``. Piped
input (not a terminal) runs the same way without prompts, which is how tests drive it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import decimal
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import click
import duckdb

from loglambda.core.cli import HOME_OPTION
from loglambda.core.config import Settings
from loglambda.serving.sql import Limits, QueryEngine, QueryError, QueryResult
from loglambda.serving.sql_functions import helpers_text

OUTPUTS: Final = ("table", "csv", "json")
HISTORY_FILE: Final = ".sql_history"
_CELL_WIDTH: Final = 48


def _opt(name: str, env: str, **kw: Any) -> Callable[[Any], Any]:
    """A flag backed by the env var ``LOGLAMBDA_<env>``."""
    return click.option(name, envvar=f"LOGLAMBDA_{env}", show_envvar=True, **kw)


def _limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        HOME_OPTION,
        _opt("--output", "QUERY_OUTPUT", type=click.Choice(OUTPUTS), default="table"),
        _opt("--max-rows", "QUERY_MAX_ROWS", type=click.IntRange(min=0), default=10_000,
             help="Rows returned at most; more are cut and the output says so."),
        _opt("--timeout", "QUERY_TIMEOUT", type=click.FloatRange(min=0.001), default=30.0,
             help="Seconds a statement may run before it is stopped."),
        _opt("--memory-limit", "QUERY_MEMORY_LIMIT", default="1GB",
             help="DuckDB memory limit per statement (no spilling to disk)."),
        _opt("--threads", "QUERY_THREADS", type=click.IntRange(min=1), default=2),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _engine(
    home: Path | None, max_rows: int, timeout: float, memory: str, threads: int
) -> QueryEngine:
    limits = Limits(max_rows=max_rows, timeout_s=timeout, memory_limit=memory, threads=threads)
    try:
        return QueryEngine(Settings.load(home), limits=limits)
    except QueryError as err:
        raise click.ClickException(str(err)) from err


@click.command("query")
@click.argument("sql")
@_limit_options
def query_cmd(
    sql: str,
    home: Path | None,
    output: str,
    max_rows: int,
    timeout: float,
    memory_limit: str,
    threads: int,
) -> None:
    """Run one read-only SQL statement (SQL '-' reads it from stdin) over the merged views
    and raw events; the answer ends with its freshness. `.tables` in `loglambda sql`, or
    SELECT * FROM views, lists what can be queried."""
    engine = _engine(home, max_rows, timeout, memory_limit, threads)
    text = sys.stdin.read() if sql == "-" else sql
    try:
        result = engine.run(text)
    except QueryError as err:
        raise click.ClickException(str(err)) from err
    emit(result, output, sys.stdout, sys.stderr)


@click.command("sql")
@_limit_options
def sql_cmd(
    home: Path | None,
    output: str,
    max_rows: int,
    timeout: float,
    memory_limit: str,
    threads: int,
) -> None:
    """Interactive SQL shell: statements end with ';', history is kept, .help for help."""
    engine = _engine(home, max_rows, timeout, memory_limit, threads)
    shell = _Shell(engine, output, interactive=sys.stdin.isatty())
    with _history(engine.settings.home / HISTORY_FILE, enabled=shell.interactive):
        shell.loop()


# -- the shell --------------------------------------------------------------------


class _Shell:
    def __init__(self, engine: QueryEngine, output: str, *, interactive: bool) -> None:
        self.engine = engine
        self.output = output
        self.interactive = interactive

    def loop(self) -> None:
        if self.interactive:
            click.echo(
                f"loglambda sql on {self.engine.settings.home}: {len(self.engine.tables)} "
                "tables. End statements with ';'. .help for help, .quit to leave."
            )
        buffer: list[str] = []
        for line in self._lines(buffer):
            if not buffer and line.strip().startswith("."):
                if not self.command(line.strip()):
                    return
                continue
            buffer.append(line)
            if line.rstrip().endswith(";"):
                self.statements("\n".join(buffer))
                buffer.clear()
        if "".join(buffer).strip():
            self.statements("\n".join(buffer))  # piped input may omit the last ';'

    def _lines(self, buffer: list[str]) -> Iterator[str]:
        while True:
            if not self.interactive:
                line = sys.stdin.readline()
                if not line:
                    return
                yield line.rstrip("\n")
                continue
            try:
                line = input("    ...> " if buffer else "loglambda> ")
            except EOFError:
                click.echo()
                return
            except KeyboardInterrupt:  # Ctrl-C drops the statement being typed
                click.echo("^C")
                buffer.clear()
                continue
            if buffer and line.rstrip().endswith(";"):
                _join_history(len(buffer) + 1)
            yield line

    def statements(self, text: str) -> None:
        # One statement per query: split a line like "SELECT 1; SELECT 2;" here (parse
        # only). Text that does not parse goes whole, so the engine reports the error.
        try:
            parts = [s.query for s in duckdb.extract_statements(text)] or [text]
        except duckdb.Error:
            parts = [text]
        for sql in parts:
            try:
                result = self.engine.run(sql)
            except QueryError as err:
                click.echo(f"Error: {err}", err=True)
                continue
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                continue
            emit(result, self.output, sys.stdout, sys.stderr)

    def command(self, line: str) -> bool:
        """Run a dot command; False to leave the shell."""
        word, _, arg = line.partition(" ")
        arg = arg.strip().rstrip(";")
        if word in (".quit", ".exit", ".q"):
            return False
        if word == ".tables":
            width = max(len(t) for t in self.engine.tables)
            for name in self.engine.tables:
                click.echo(f"{name:<{width}}  {self.engine.describe(name)}")
        elif word == ".schema" and arg:
            try:
                schema = self.engine.schema(arg)
            except QueryError as err:
                click.echo(f"Error: {err}", err=True)
                return True
            click.echo(f"{arg.lower()}: {self.engine.describe(arg)}")
            for f in schema:
                click.echo(f"  {f.name:<24} {f.type}{'' if f.nullable else ' not null'}")
        elif word == ".output" and arg in OUTPUTS:
            self.output = arg
        elif word == ".help":
            click.echo(_HELP + "\n\n" + helpers_text())
        else:
            click.echo(f"Error: unknown command {line!r}; .help lists the commands", err=True)
        return True


_HELP: Final = """Statements end with ';' and may span lines. Read-only SQL (SELECT, WITH, VALUES,
DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) over the tables; each answer ends with its freshness.
  .tables                 the tables: one per view, raw traffic and logs, views, freshness
  .schema NAME            columns of a table
  .output table|csv|json  how results are printed
  .help                   this text
  .quit                   leave (or Ctrl-D)"""


@contextlib.contextmanager
def _history(path: Path, *, enabled: bool) -> Iterator[None]:
    """Readline history kept in ``path`` (only for a terminal)."""
    try:
        import readline
    except ImportError:  # no readline (Windows): the shell works without history
        enabled = False
    if not enabled:
        yield
        return
    readline.set_history_length(1000)
    readline.clear_history()
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)


def _join_history(lines: int) -> None:
    """Replace the last ``lines`` history entries (one statement) by one entry."""
    try:
        import readline
    except ImportError:
        return
    count = readline.get_current_history_length()  # items are 1-based, removal 0-based
    items = [readline.get_history_item(i) for i in range(max(1, count - lines + 1), count + 1)]
    for _ in items:
        readline.remove_history_item(readline.get_current_history_length() - 1)
    readline.add_history(" ".join(i.strip() for i in items if i and i.strip()))


# -- output -----------------------------------------------------------------------


def emit(result: QueryResult, output: str, out: TextIO, err: TextIO) -> None:
    """Print ``result`` in ``output`` form; freshness goes where the form allows."""
    if output == "json":
        out.write(json.dumps(result_json(result)) + "\n")
        return
    rows = result.table.to_pylist()
    names = result.table.column_names
    summary = f"{len(rows):,} row{'s' if len(rows) != 1 else ''} in {result.elapsed_ms:g} ms"
    if result.truncated:
        summary += f" (cut at {len(rows):,}: raise --max-rows)"
    if output == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([_csv_value(r[n]) for n in names] for r in rows)
        err.write(f"{summary}\n{result.freshness_text()}\n")
        return
    out.write(render_table(names, rows) + f"{summary}\n{result.freshness_text()}\n")


def result_json(result: QueryResult) -> dict[str, Any]:
    """A result as a JSON-ready document (``--output json``; the HTTP API can share it)."""
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in result.table.schema],
        "rows": [{k: _json_value(v) for k, v in r.items()} for r in result.table.to_pylist()],
        "row_count": result.table.num_rows,
        "truncated": result.truncated,
        "elapsed_ms": result.elapsed_ms,
        "tables": list(result.tables),
        "freshness": result.freshness_json(),
    }


def render_table(names: list[str], rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table (numbers right-aligned, long cells cut)."""
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names)]
    numeric = [bool(rows) and all(_is_number(r[n]) for r in rows) for n in names]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    parts = [line(names), "  ".join("-" * w for w in widths)]
    parts.extend(line(c) for c in cells)
    return "\n".join(parts) + "\n"


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float | decimal.Decimal) and not isinstance(v, bool))


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return f"<sketch {len(v)} B>"
    if isinstance(v, float):
        return (
            f"{v:.6g}"
            if abs(v) >= 1e15 or 0 < abs(v) < 1e-3
            else f"{v:.3f}".rstrip("0").rstrip(".")
        )
    if isinstance(v, decimal.Decimal) and v == v.to_integral_value():
        return str(int(v))
    if isinstance(v, list) and v and all(isinstance(e, dict) and "count" in e for e in v):
        return f"<histogram {sum(int(e['count']) for e in v):,} values>"
    text = str(v)
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 1] + "…"


def _json_value(v: Any) -> Any:
    """A JSON-safe value: sketches as base64, times as ISO-8601, decimals as numbers."""
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, list):
        return [_json_value(e) for e in v]
    if isinstance(v, dict):
        return {k: _json_value(e) for k, e in v.items()}
    return v


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    j = _json_value(v)
    return json.dumps(j) if isinstance(j, list | dict) else j
