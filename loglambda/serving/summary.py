"""The traffic summary: GoAccess's general statistics over the master dataset.

Unique visitors follow GoAccess 1.7: requests with the same client IP, date and
user agent are one visitor; the date is the UTC date of the event. Like GoAccess's
default (its ``--4xx-to-unique-count`` is off), requests answered with a 4xx status do
not create visitors: a scanner probing for /wp-login.php is not an audience.
Pass ``count_4xx_visitors=True`` for the other definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from loglambda.batch.master import Snapshot


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


def summarize(snapshot: Snapshot, top: int = 10, *, count_4xx_visitors: bool = False) -> Summary:
    """Compute the summary from a master snapshot with DuckDB."""
    con = duckdb.connect()
    files = [str(p) for p in snapshot.files("traffic")]
    log_records = snapshot.rows("logs")
    if not files:
        return Summary(0, 0, {}, 0, [], None, None, log_records)
    con.execute("SET TimeZone = 'UTC'")
    con.read_parquet(files).create_view("traffic")
    visitor_filter = "" if count_4xx_visitors else "FILTER (WHERE status NOT BETWEEN 400 AND 499)"
    requests, nbytes, visitors, first, last = con.execute(
        f"""
        SELECT count(*), coalesce(sum(bytes), 0),
               count(DISTINCT (client_ip, CAST(ts AS DATE), coalesce(user_agent, '')))
                 {visitor_filter},
               strftime(min(ts), '%Y-%m-%dT%H:%M:%SZ'), strftime(max(ts), '%Y-%m-%dT%H:%M:%SZ')
        FROM traffic
        """
    ).fetchone() or (0, 0, 0, None, None)
    classes = con.execute(
        "SELECT (status // 100) || 'xx' AS c, count(*) FROM traffic GROUP BY c ORDER BY c"
    ).fetchall()
    paths = con.execute(
        "SELECT path, count(*) AS n, sum(bytes) FROM traffic GROUP BY path "
        "ORDER BY n DESC, path LIMIT $top",
        {"top": top},
    ).fetchall()
    return Summary(
        requests=int(requests),
        bytes=int(nbytes),
        status_classes={c: int(n) for c, n in classes},
        unique_visitors=int(visitors),
        top_paths=[{"path": p, "requests": int(n), "bytes": int(b)} for p, n, b in paths],
        first_ts=first,
        last_ts=last,
        log_records=log_records,
    )
