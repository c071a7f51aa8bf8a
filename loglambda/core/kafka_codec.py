"""Kafka records <-> event tables for :mod:`loglambda.core.eventlog_kafka`.

Values are the local log's JSON lines, so decoding is the local log's vectorised parse;
what is Kafka's own lives here: delivery reports folded into offset ranges, values
from producers that are not loglambda (pretty-printed JSON, a trailing newline), an
error that names the first record that is not an event, and fetch errors mapped onto
the protocol's ``OffsetOutOfRange``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa

from loglambda.core.eventlog import OffsetOutOfRange, OffsetRange
from loglambda.core.eventlog_local import decode_events
from loglambda.core.schemas import Kind

if TYPE_CHECKING:
    from confluent_kafka import KafkaError


def kafka_module() -> Any:
    """The confluent_kafka module, or an error that says how to get it."""
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "Kafka support needs confluent-kafka: pip install 'loglambda[kafka]'"
        ) from exc
    return confluent_kafka


def delivery_ranges(kind: Kind, delivered: list[tuple[int, int]]) -> tuple[OffsetRange, ...]:
    """Delivery reports as runs of consecutive offsets, by partition then offset."""
    pairs = np.array(delivered, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    breaks = np.flatnonzero((np.diff(pairs[:, 0]) != 0) | (np.diff(pairs[:, 1]) != 1)) + 1
    return tuple(
        OffsetRange(f"{kind}/{int(run[0, 0])}", int(run[0, 1]), int(run[-1, 1]) + 1)
        for run in np.split(pairs, breaks)
    )


def decode_values(kind: Kind, partition: str, values: list[bytes], offsets: list[int]) -> pa.Table:
    """Record values as a table of the kind's schema, parsed in one vectorised call."""
    data = b"\n".join(values) + b"\n"
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
    try:
        if len(newlines) != len(values):
            # A foreign producer wrote pretty-printed JSON or a trailing newline:
            # re-encode the records compactly (the slow path, only when needed).
            data = b"".join(orjson.dumps(orjson.loads(v)) + b"\n" for v in values)
            newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A)
        table = decode_events(kind, data, newlines)
    except (orjson.JSONDecodeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _first_bad(kind, partition, values, offsets) from exc
    for field in table.schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            first = offsets[column.is_null().to_pylist().index(True)]
            raise ValueError(f"{partition} offset {first}: event without {field.name!r}")
    return table


def _first_bad(kind: Kind, partition: str, values: list[bytes], offsets: list[int]) -> ValueError:
    """Name the first record that is not an event, for an error a human can act on."""
    for value, offset in zip(values, offsets, strict=True):
        try:
            line = orjson.dumps(orjson.loads(value)) + b"\n"
            decode_events(kind, line, np.array([len(line) - 1]))
        except (orjson.JSONDecodeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            return ValueError(f"{partition} offset {offset}: not a {kind} event: {exc}")
    return ValueError(f"{partition} offsets {offsets[0]}-{offsets[-1]}: not {kind} events")


def fetch_failure(where: str, err: KafkaError) -> Exception:
    """A fetch error as an exception: offset-out-of-range ones as OffsetOutOfRange."""
    kafka = kafka_module()
    out_of_range = (kafka.KafkaError.OFFSET_OUT_OF_RANGE, kafka.KafkaError._AUTO_OFFSET_RESET)
    if err.code() in out_of_range:
        return OffsetOutOfRange(f"{where}: {err.str()}")
    exc: Exception = kafka.KafkaException(err)
    return exc
