"""``loglambda status``: where every consumer stands, how far behind, how fast.

One snapshot gathered from disk (or the Kafka broker): per event-log partition its
end offset, each consumer's committed position and lag, the batch horizon and how
many events lie above it (what the speed layer must cover), the master dataset's
size, and the running processes with their rates from their heartbeat files. The
same dictionary feeds ``--json`` and, later, the HTTP ``/metrics`` endpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from loglambda.core.cli_options import HOME_OPTION
from loglambda.core.config import Settings
from loglambda.core.schemas import KINDS

if TYPE_CHECKING:
    from loglambda.core.eventlog import EventLog


def collect_status(settings: Settings, log: EventLog | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as plain JSON-able data. ``log``: an open event log
    to reuse (the HTTP app's, so a scrape does not open a Kafka client each time)."""
    from loglambda.batch.master import MasterDataset
    from loglambda.batch.versions import VersionStore
    from loglambda.core.eventlog import open_event_log
    from loglambda.core.metrics import read_stats

    log = log if log is not None else open_event_log(settings)
    consumers = log.consumers()
    current = VersionStore(settings.home).current()
    horizon = current.horizon.offsets if current else {}
    partitions: list[dict[str, Any]] = []
    for kind in KINDS:
        for partition in log.partitions(kind):
            end = log.end_offset(kind, partition)
            h = horizon.get(partition, 0)
            partitions.append(
                {
                    "partition": partition,
                    "end_offset": end,
                    "batch_horizon": h,
                    "above_horizon": end - h,
                    "consumers": {
                        name: {
                            "committed": pos.get(partition, 0),
                            "lag": end - pos.get(partition, 0),
                        }
                        for name, pos in sorted(consumers.items())
                    },
                }
            )
    snapshot = MasterDataset(settings.home).snapshot()
    now = time.time()
    beats = read_stats(settings.home)
    speed_beat = next((p.doc for p in beats if p.name == "speed"), {})
    ends = {p["partition"]: p["end_offset"] for p in partitions}
    speed = _speed_status(settings, ends, speed_beat, now)
    processes = [
        {
            "name": p.name,
            "alive": p.alive,
            "state": p.state,
            "pid": p.doc.get("pid"),
            "age_s": round(now - float(p.doc.get("updated_at", now)), 1),
            "rates_per_s": p.doc.get("rates_per_s", {}),
            "counters": p.doc.get("counters", {}),
        }
        for p in beats
    ]
    return {
        "home": str(settings.home),
        "log_backend": settings.log_backend,
        "partitions": partitions,
        "master": {
            "seq": snapshot.seq,
            "batches": len(snapshot.entries),
            "rows": {k: snapshot.rows(k) for k in KINDS},
        },
        "batch": {
            "version": current.version if current else None,
            "horizon": horizon,
            "master_seq": current.horizon.master_seq if current else None,
        },
        "speed": speed,
        "processes": processes,
    }


def _speed_status(
    settings: Settings, ends: dict[str, int], beat: dict[str, Any], now: float
) -> dict[str, Any]:
    """The realtime store as serving sees it: positions, lag, partials, and freshness
    from the driver's heartbeat ``beat``."""
    from loglambda.speed.store import RealtimeStore

    state = RealtimeStore(settings.home).state()
    return {
        "generation": state.generation,
        "batch_version": state.batch_version,
        "positions": state.positions,
        "lag": {p: end - state.positions.get(p, 0) for p, end in ends.items()},
        "partials": len(state.partials),
        "committed_age_s": round(now - state.updated_at, 1) if state.updated_at else None,
        # Slice latency (read -> partials durable) of recent slices, from the driver.
        "slice_ms_p50": beat.get("slice_ms_p50"),
        "slice_ms_p99": beat.get("slice_ms_p99"),
        # Event appended -> its partial durable, over the driver's recent slices (the
        # oldest event of each slice, so an upper bound per slice).
        "freshness_s_p50": beat.get("freshness_s_p50"),
        "freshness_s_p99": beat.get("freshness_s_p99"),
    }


def render(status: dict[str, Any]) -> str:
    """The text form of ``collect_status``."""
    out = [f"home {status['home']} (event log: {status['log_backend']})", ""]
    out.append(f"{'partition':<12} {'end offset':>12}  consumer      position        lag")
    for p in status["partitions"]:
        out.append(f"{p['partition']:<12} {p['end_offset']:>12,}")
        for name, c in p["consumers"].items():
            out.append(f"{'':<12} {'':>12}  {name:<12} {c['committed']:>9,} {c['lag']:>10,}")
        out.append(
            f"{'':<12} {'':>12}  {'batch':<12} {p['batch_horizon']:>9,} "
            f"{p['above_horizon']:>10,}  (horizon; the speed layer covers what is above)"
        )
    m, b = status["master"], status["batch"]
    rows = ", ".join(f"{k} {v:,}" for k, v in m["rows"].items())
    out += ["", f"master dataset: seq {m['seq']}, {m['batches']} batches, rows: {rows}"]
    if b["version"] is None:
        out.append("batch views: none published (`loglambda batch run`)")
    else:
        behind = m["seq"] - b["master_seq"]
        out.append(
            f"batch views: version {b['version']} at master seq {b['master_seq']}"
            + (f" ({behind} batch(es) behind the master)" if behind else " (up to date)")
        )
    sp = status["speed"]
    if sp["generation"]:
        lag = ", ".join(f"{p} {n:,}" for p, n in sorted(sp["lag"].items()))
        latency = (
            f"; slices p50 {sp['slice_ms_p50']} ms, p99 {sp['slice_ms_p99']} ms"
            if sp["slice_ms_p50"] is not None
            else ""
        )
        if sp.get("freshness_s_p50") is not None:
            latency += (
                f"; freshness (append -> durable) p50 {sp['freshness_s_p50']} s, "
                f"p99 {sp['freshness_s_p99']} s"
            )
        out.append(
            f"speed layer: {sp['partials']} partials over batch version {sp['batch_version']}, "
            f"committed {sp['committed_age_s']} s ago; lag {lag}{latency}"
        )
    else:
        out.append("speed layer: never ran (`loglambda speed`)")
    if status["processes"]:
        out += ["", "processes:"]
        for p in status["processes"]:
            if p["alive"]:
                rates = ", ".join(f"{k} {v:,.0f}/s" for k, v in sorted(p["rates_per_s"].items()))
            else:  # a rate of a process that is gone would be a lie; show totals
                rates = ", ".join(f"{k} {v:,} in all" for k, v in sorted(p["counters"].items()))
            out.append(
                f"  {p['name']:<14} {p['state']:<8} pid {p['pid']}  "
                f"updated {p['age_s']:.0f} s ago  {rates}"
            )
    return "\n".join(out)


@click.command("status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="LOGLAMBDA_JSON",
    show_envvar=True,
    help="Print one JSON object instead of text.",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.2),
    default=None,
    envvar="LOGLAMBDA_STATUS_WATCH",
    show_envvar=True,
    help="Refresh every N seconds until Ctrl-C.",
)
@HOME_OPTION
def status_cmd(as_json: bool, watch: float | None, home: Path | None) -> None:
    """Consumer positions and lag per partition, batch horizon, master size, and the
    running processes' events/s."""
    settings = Settings.load(home)
    while True:
        status = collect_status(settings)
        if as_json:
            click.echo(json.dumps(status))
        else:
            if watch:
                click.clear()
            click.echo(render(status))
        if not watch:
            return
        time.sleep(watch)  # a refresh interval, not synchronisation
