"""Wait until a Kafka broker answers a Metadata request (used by start-broker.sh).

    python wait_for_broker.py HOST:PORT [--timeout S] [--pid PID]

An open port is not enough: the broker must parse a request and answer it. This sends
a Metadata v0 request (all topics) by hand, standard library only, so it works before
any Kafka client is installed. Exits 0 when answered, 1 on timeout or if PID exited.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

CORRELATION_ID = 7


def metadata_request() -> bytes:
    client = b"loglambda-wait"
    # api_key 3 (Metadata), api_version 0, correlation id, client id; body: topics = [].
    header = struct.pack(">hhih", 3, 0, CORRELATION_ID, len(client)) + client
    body = struct.pack(">i", 0)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def answered(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(metadata_request())
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    return False
                head += chunk
            size, correlation = struct.unpack(">ii", head)
            ok: bool = size >= 4 and correlation == CORRELATION_ID
            return ok
    except OSError:
        return False


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--pid", type=int, default=None)
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not alive(args.pid):
            print(f"broker process {args.pid} exited", file=sys.stderr)
            return 1
        if answered(host, int(port), timeout=1.0):
            return 0
        time.sleep(0.02)  # poll interval between attempts, not a synchronisation guess
    print(f"{args.address}: no Metadata answer within {args.timeout} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
