"""Shared machinery of the data generators: the simulated world, sampling, rendering.

Traffic and app logs are generated separately but describe one world: they share the
diurnal load curve and the incident windows (derived from the seed, start and length
only), so app-log error bursts line up with 5xx bursts when both are generated with the
same seed. Both also render the same way, for speed: every column is a numpy array and
lines are assembled by Arrow kernels from lookup tables, never one Python call per field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

DEFAULT_START: Final = datetime(2026, 11, 1, tzinfo=UTC)
# Cap on time bins so a long span with few lines does not allocate per-second arrays.
MAX_BINS: Final = 2_000_000

# Random stream ids: each concern draws from its own stream so changing one (say, the
# malformed share) does not reshuffle everything else.
STREAM_TIMELINE: Final = 1
STREAM_INCIDENTS: Final = 2
STREAM_VOCAB: Final = 3
STREAM_CHUNK: Final = 4
STREAM_MALFORMED: Final = 5
STREAM_MALFORMED_TEXT: Final = 6

# Relative human activity per UTC hour: night trough, morning ramp, lunch plateau,
# evening peak. Interpolated linearly between hours.
# fmt: off
HOURLY: Final = np.array(
    [0.34, 0.25, 0.18, 0.14, 0.12, 0.14, 0.22, 0.38, 0.58, 0.74, 0.84, 0.9,
     0.95, 0.92, 0.88, 0.88, 0.9, 0.94, 0.99, 1.0, 0.95, 0.83, 0.66, 0.48],
    dtype=np.float64,
)
# fmt: on
_HOURLY_MEAN: Final = float(HOURLY.mean())
WEEKEND_FACTOR: Final = 0.8


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent, reproducible random stream for (seed, key...).

    The key goes in as a spawn key, which (unlike extra entropy words) keeps trailing
    zeros significant: (seed, 4) and (seed, 4, 0) are different streams.
    """
    seq = np.random.SeedSequence(seed, spawn_key=key)
    return np.random.Generator(np.random.PCG64(seq))


def to_utc(start: datetime) -> datetime:
    """A naive datetime is taken as UTC; an aware one is converted to UTC."""
    return start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)


def epoch_us(when: datetime) -> int:
    return (to_utc(when) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def from_epoch_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def human_activity(ts_s: F64) -> F64:
    """Human load at epoch seconds ``ts_s`` relative to the daily mean (weekday ~1.0)."""
    hour = (ts_s % 86_400.0) / 3_600.0
    curve = np.interp(hour, np.arange(25.0), np.append(HOURLY, HOURLY[0])) / _HOURLY_MEAN
    # 1970-01-01 was a Thursday, so (days + 3) % 7 counts from Monday = 0.
    weekday = ((ts_s // 86_400.0) + 3.0) % 7.0
    out: F64 = np.where(weekday >= 5.0, curve * WEEKEND_FACTOR, curve)
    return out


@dataclass(frozen=True)
class Incident:
    """A window in which a share (``severity``) of user-facing requests fail."""

    start_us: int
    end_us: int
    severity: float


def incidents_for(seed: int, start_us: int, span_us: int) -> tuple[Incident, ...]:
    """Incident windows for a period: identical for traffic and app logs of one seed."""
    rng = rng_for(seed, STREAM_INCIDENTS)
    days = span_us / 86_400e6
    # At least one, so every demo has an outage to find; ~1.5 a day beyond that.
    count = max(1, int(rng.poisson(1.5 * days)))
    out = []
    for _ in range(count):
        begin = start_us + int(rng.integers(0, max(1, span_us)))
        length = int(rng.integers(3 * 60, 20 * 60)) * 1_000_000
        # Most incidents are partial degradations; a few are near-total outages.
        severity = float(rng.choice([0.08, 0.2, 0.35, 0.6], p=[0.35, 0.35, 0.2, 0.1]))
        out.append(Incident(begin, min(begin + length, start_us + span_us), severity))
    return tuple(sorted(out, key=lambda i: i.start_us))


def severity_at(incidents: Sequence[Incident], ts_us: I64) -> F64:
    sev = np.zeros(len(ts_us), dtype=np.float64)
    for inc in incidents:
        inside = (ts_us >= inc.start_us) & (ts_us < inc.end_us)
        sev[inside] = np.maximum(sev[inside], inc.severity)
    return sev


class Timeline:
    """Line timestamps drawn from the load curve, in order, computable chunk by chunk.

    The span is cut into bins; a multinomial draw over the bins' intensities fixes how
    many lines fall in each. Line ``k`` of a bin holding ``c`` lines lands in the k-th
    of ``c`` equal slices of the bin, so any range of line numbers yields sorted
    timestamps without generating the lines before it.
    """

    def __init__(
        self,
        *,
        seed: int,
        stream: int,
        start_us: int,
        span_us: int,
        lines: int,
        human_share: float,
        incidents: Sequence[Incident],
    ) -> None:
        rng = rng_for(seed, stream, STREAM_TIMELINE)
        span_s = max(1, math.ceil(span_us / 1e6))
        width_s = max(1, math.ceil(span_s / MAX_BINS))
        nbins = math.ceil(span_s / width_s)
        self.start_us = start_us
        self.bin_start = start_us + np.arange(nbins, dtype=np.int64) * (width_s * 1_000_000)
        self.bin_width = np.full(nbins, width_s * 1_000_000, dtype=np.int64)
        self.bin_width[-1] = start_us + span_us - self.bin_start[-1]
        mids = (self.bin_start + self.bin_width // 2).astype(np.float64)
        load = human_share * human_activity(mids / 1e6) + (1.0 - human_share)
        # Minute-to-minute noise so the curve is not suspiciously smooth.
        minute = ((mids - start_us) // 60e6).astype(np.int64)
        noise = np.exp(0.12 * rng.standard_normal(int(minute[-1]) + 1))
        # Incidents bring retries: load rises with severity.
        load = load * noise[minute] * (1.0 + 0.5 * severity_at(incidents, self.bin_start))
        self.counts = rng.multinomial(lines, load / load.sum()).astype(np.int64)
        self.cum = np.cumsum(self.counts)

    def timestamps(self, first: int, stop: int, rng: np.random.Generator) -> I64:
        """Sorted timestamps (epoch µs) of lines ``first`` .. ``stop - 1``."""
        idx = np.arange(first, stop, dtype=np.int64)
        b = np.searchsorted(self.cum, idx, side="right")
        within = idx - (self.cum[b] - self.counts[b])
        frac = (within + rng.random(len(idx))) / self.counts[b]
        return self.bin_start[b] + (frac * self.bin_width[b]).astype(np.int64)


def displace(
    ts_us: I64, rng: np.random.Generator, *, jitter_share: float, late_share: float, floor_us: int
) -> I64:
    """Push a few lines back in time, leaving their position in the file unchanged.

    Jitter (1-8 s) is what buffered multi-worker writers produce; late lines (2 min to
    4 h, log-uniform) are what relays and retried batches produce. Both are what
    watermarks and late-data handling downstream exist for.
    """
    n = len(ts_us)
    out = ts_us.copy()
    jitter = rng.random(n) < jitter_share
    out[jitter] -= rng.integers(1_000_000, 8_000_000, int(jitter.sum()))
    late = rng.random(n) < late_share
    delay = np.exp(rng.uniform(math.log(120.0), math.log(4 * 3600.0), int(late.sum())))
    out[late] -= (delay * 1e6).astype(np.int64)
    return np.maximum(out, floor_us)


def zipf_weights(n: int, s: float) -> F64:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s


def grouped_cdf(weights: Sequence[F64]) -> F64:
    """Concatenated CDFs, group ``g`` occupying (g, g+1], for ``sample_grouped``."""
    parts = []
    for g, w in enumerate(weights):
        c = np.cumsum(w) / w.sum()
        c[-1] = 1.0  # exact, so no draw can fall into the next group
        parts.append(g + c)
    return np.concatenate(parts)


def sample_grouped(cdf: F64, group: npt.NDArray[np.integer], rng: np.random.Generator) -> I64:
    """For each line, an index into the concatenated items of its group."""
    u = rng.random(len(group))
    return np.searchsorted(cdf, group + u, side="right").astype(np.int64)


def choose(rng: np.random.Generator, n: int, probs: Sequence[float]) -> I64:
    """Vectorised categorical draw of ``n`` indices."""
    c = np.cumsum(np.asarray(probs, dtype=np.float64))
    return np.searchsorted(c / c[-1], rng.random(n), side="right").astype(np.int64)


def strings(values: Sequence[str]) -> pa.StringArray:
    arr: pa.StringArray = pa.array(list(values), pa.string())
    return arr


def take(vocab: pa.Array, idx: npt.NDArray[np.integer]) -> pa.Array:
    return vocab.take(pa.array(idx))


def int_strings(values: npt.NDArray[np.integer]) -> pa.Array:
    return pc.cast(pa.array(values, pa.int64()), pa.string())


@cache
def pad_digits(width: int) -> pa.StringArray:
    return strings([f"{i:0{width}d}" for i in range(10**width)])


@cache
def time_of_day() -> pa.StringArray:
    """'HH:MM:SS' for each second of a day: timestamps are rendered by lookup."""
    return strings([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)])


MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf_day(d: date) -> str:
    """'01/Nov/2026': English month names whatever the process locale (strftime's %b is not)."""
    return f"{d.day:02d}/{MONTHS[d.month - 1]}/{d.year:04d}"


def iso_day(d: date) -> str:
    return d.isoformat()


def day_strings(day: I64, render: Callable[[date], str]) -> pa.Array:
    """Render day numbers (days since epoch) through a small per-chunk lookup table."""
    lo, hi = int(day.min()), int(day.max())
    epoch = date(1970, 1, 1)
    return take(strings([render(epoch + timedelta(days=d)) for d in range(lo, hi + 1)]), day - lo)


def hex_strings(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """``n`` random lowercase hex strings of ``nbytes`` bytes each, without a Python loop."""
    width = 2 * nbytes
    text = rng.bytes(n * nbytes).hex().encode("ascii")
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def millis_text(ms: I64) -> pa.Array:
    """Milliseconds as seconds with three decimals ('0.123'), like nginx's $request_time."""
    return pc.binary_join_element_wise(
        int_strings(ms // 1000), ".", take(pad_digits(3), ms % 1000), ""
    )


def join(*parts: pa.Array | str) -> pa.Array:
    """Concatenate columns and literals element-wise."""
    return pc.binary_join_element_wise(*parts, "")
