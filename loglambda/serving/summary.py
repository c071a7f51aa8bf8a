"""The traffic summary: GoAccess's general statistics over every event ingested.

Unique visitors follow GoAccess 1.7: requests with the same client IP, date and
user agent are one visitor; the date is the UTC date of the event. Like GoAccess's
default (its ``--4xx-to-unique-count`` is off), requests answered with a 4xx status do
not create visitors: a scanner probing for /wp-login.php is not an audience.
Pass ``count_4xx_visitors=True`` for the other definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loglambda.serving.sql import QueryEngine


@dataclass(frozen=True)
class Summary:
    """Totals a user checks first; ``to_json`` is the stable ``--json`` shape."""

    requests: int
    bytes: int
    status_classes: dict[str, int]
    unique_visitors: int
    top_paths: list[dict[str, Any]]
    first_ts: str | None
    last_ts: str | None
    log_records: int

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def render(self) -> str:
        classes = "  ".join(f"{k} {v:,}" for k, v in self.status_classes.items())
        lines = [
            f"requests        {self.requests:,}",
            f"bandwidth       {self.bytes:,} bytes ({self.bytes / 2**30:.2f} GiB)",
            f"status classes  {classes or '-'}",
            f"unique visitors {self.unique_visitors:,}",
            f"time range      {self.first_ts or '-'} .. {self.last_ts or '-'} (UTC)",
            f"log records     {self.log_records:,}",
            "top paths:",
        ]
        lines += [f"  {p['requests']:>10,}  {p['path']}" for p in self.top_paths]
        return "\n".join(lines)


def summarize(engine: QueryEngine, top: int = 10, *, count_4xx_visitors: bool = False) -> Summary:
    """Compute the summary over every event: the master dataset plus the events of the
    event log not written to it yet (the SQL engine's raw ``traffic`` and ``logs``
    tables, each event once). Visitors are counted exactly, not from a sketch: this is
    the number users compare with GoAccess."""
    visitor_filter = "" if count_4xx_visitors else "FILTER (WHERE status NOT BETWEEN 400 AND 499)"
    totals = engine.run(
        f"""
        SELECT count(*), coalesce(sum(bytes), 0),
               count(DISTINCT (client_ip, CAST(ts AS DATE), coalesce(user_agent, '')))
                 {visitor_filter},
               strftime(min(ts), '%Y-%m-%dT%H:%M:%SZ'), strftime(max(ts), '%Y-%m-%dT%H:%M:%SZ'),
               (SELECT count(*) FROM logs)
        FROM traffic
        """
    )
    requests, nbytes, visitors, first, last, log_records = totals.table.to_pylist()[0].values()
    classes = engine.run(
        "SELECT (status // 100) || 'xx' AS c, count(*) AS n FROM traffic GROUP BY c ORDER BY c"
    ).table.to_pylist()
    paths = engine.run(
        f"SELECT path, count(*) AS n, sum(bytes) AS b FROM traffic GROUP BY path "
        f"ORDER BY n DESC, path LIMIT {int(top)}"
    ).table.to_pylist()
    return Summary(
        requests=int(requests),
        bytes=int(nbytes),
        status_classes={r["c"]: int(r["n"]) for r in classes},
        unique_visitors=int(visitors),
        top_paths=[
            {"path": r["path"], "requests": int(r["n"]), "bytes": int(r["b"])} for r in paths
        ],
        first_ts=first,
        last_ts=last,
        log_records=int(log_records),
    )
