"""Shipper envelopes: NDJSON records that carry one raw log line each.

Log shippers that tail files and post over HTTP wrap every line in a JSON object with
their own metadata. Two shapes cover the common ones:

* Vector's ``http`` sink (``encoding.codec = "json"``) sends the line in ``message``
  beside ``timestamp``, ``host``, ``file``, ``source_type``;
* Fluent Bit's ``http`` output (``format json_lines``, its ``tail`` input) sends it in
  ``log`` beside ``date`` (the ``json_date_key``), and Docker's ``json-file`` lines
  keep their trailing newline there.

``POST /v1/ingest?format=F`` with a JSON content type reads each record, takes the
first non-null of ``message`` and ``log`` as the raw line (one trailing ``\\r\\n``/``\\n``
dropped), and hands those lines to format F's parser with the record's position in
the body. The shipper's own fields are not stored: the raw line is the event. A record
that is not a JSON object is ``bad_json``; one without either key ``missing_field``;
one whose key is not a string ``bad_type``; and a carried line goes through the same
checks as a line read from a file (``nul_byte``, ``line_too_long``, ``blank``).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES, LineBlock, split_block
from loglambda.core.quarantine import RejectBuilder
from loglambda.ingest.events_json import read_json_lines

LINE_KEYS: Final = ("message", "log")
_SCHEMA: Final = pa.schema([pa.field(key, pa.string()) for key in LINE_KEYS])


def envelope_lines(
    data: bytes, *, source: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> LineBlock:
    """The raw log lines an NDJSON body of envelopes carries, positioned at their
    records (``source_line`` = record line, ``source_offset`` = its byte offset);
    ``read`` counts every record, and each unusable one is already a reject."""
    # The envelope may be longer than the line it carries (metadata, escapes).
    block = split_block(
        data, source=source, base_offset=0, base_line=1, max_line_bytes=2 * max_line_bytes
    )
    return unwrap(block, max_line_bytes=max_line_bytes)


def unwrap(block: LineBlock, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> LineBlock:
    """Replace each envelope of ``block`` by the line it carries (see the module doc)."""
    rejects = RejectBuilder(block.source)
    rejects.extend(block.rejects)
    n = len(block)
    carried = _fast(block.lines) if n else pa.nulls(0, pa.string())
    # Records the vectorised read could not take (or that lack a line) go one by one;
    # that is also where every reason is decided.
    missing = np.flatnonzero(np.asarray(pc.is_null(carried).to_numpy(zero_copy_only=False)))
    if len(missing):
        values = carried.to_pylist()
        texts = block.lines.take(pa.array(missing)).to_pylist()
        for i, text in zip(missing.tolist(), texts, strict=True):
            values[i] = _one(text, block, i, rejects)
        carried = pa.array(values, pa.string())
    # One trailing newline is framing (Docker's json-file log keeps it), not content.
    carried = pc.replace_substring_regex(carried, r"\r?\n\z", "")
    keep = pc.is_valid(carried)
    for reason, detail, bad in (
        ("nul_byte", "NUL byte", pc.match_substring(carried, "\x00")),
        (
            "line_too_long",
            f"over {max_line_bytes} bytes",
            pc.greater(_size(carried), max_line_bytes),
        ),
        ("blank", "empty line", pc.equal(carried, "")),
    ):
        hit = pc.and_(keep, pc.fill_null(bad, False))
        for i in np.flatnonzero(np.asarray(hit.to_numpy(zero_copy_only=False))).tolist():
            rejects.add(
                line=block.line_no[i].as_py(),
                offset=block.offset[i].as_py(),
                reason=reason,
                detail=f"{detail} in the carried line",
                raw=block.lines[i].as_py(),
            )
        keep = pc.and_(keep, pc.invert(hit))
    return LineBlock(
        source=block.source,
        lines=carried.filter(keep),
        line_no=block.line_no.filter(keep),
        offset=block.offset.filter(keep),
        rejects=rejects,
        read=block.read,
    )


def _size(values: pa.Array) -> pa.Array:
    return pc.binary_length(values)


def _fast(lines: pa.StringArray) -> pa.Array:
    """The carried line of every record in one ``pyarrow.json`` read; all null when the
    body needs the row path (a bad record anywhere makes pyarrow refuse it whole)."""
    table = read_json_lines(lines, _SCHEMA)
    if table is None:
        return pa.nulls(len(lines), pa.string())
    return pc.coalesce(*(table.column(key).chunk(0) for key in LINE_KEYS))


def _one(text: str, block: LineBlock, i: int, rejects: RejectBuilder) -> str | None:
    """The line one record carries, or None after quarantining the record."""
    line, offset = block.line_no[i].as_py(), block.offset[i].as_py()
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        # The usual cause: raw lines sent with a JSON content type.
        obj, why = None, f"not valid JSON: {err} (raw lines need Content-Type: text/plain)"
    else:
        why = f"expected a JSON object, got {type(obj).__name__}"
    if not isinstance(obj, dict):
        rejects.add(line=line, offset=offset, reason="bad_json", detail=why, raw=text)
        return None
    for key in LINE_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            return value
        rejects.add(
            line=line,
            offset=offset,
            reason="bad_type",
            detail=f"field {key!r} is {type(value).__name__}, expected the log line as a string",
            raw=text,
        )
        return None
    rejects.add(
        line=line,
        offset=offset,
        reason="missing_field",
        detail=f"no log line: expected a string in one of {', '.join(LINE_KEYS)}",
        raw=text,
    )
    return None
