# Type stub of the C extension _accessscan.c (see access_fast.py for the buffers).
from typing import Any

import numpy as np

Buffer = np.ndarray[Any, Any]

N_STR: int
COPY_SLACK: int

def scan(
    data: bytes,
    fmt: int,
    max_line_bytes: int,
    cap: int,
    rows: Buffer,
    starts: Buffer,
    ts: Buffer,
    status: Buffer,
    nbytes: Buffer,
    latency: Buffer,
    lat_valid: Buffer,
    offsets: Buffer,
    valid: Buffer,
    strdata: Buffer,
    spans: Buffer,
    slow: Buffer,
    /,
) -> tuple[int, int, int]: ...
def count(data: bytes | memoryview, byte: int, /) -> int: ...
