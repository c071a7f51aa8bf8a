#!/usr/bin/env bash
# Stop the broker started by start-broker.sh [STATE_DIR]: SIGTERM, wait for it to exit
# (up to STOP_TIMEOUT seconds, default 10), then SIGKILL. Idempotent.
set -euo pipefail

STATE="${1:-${LOGLAMBDA_KAFKA_STATE:-/tmp/loglambda-kafka}}"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"
[[ -f "$STATE/pid" ]] || { echo "no broker state in $STATE" >&2; exit 0; }
PID="$(cat "$STATE/pid")"

# The pid file could be stale and the number reused: only signal a tansu process.
if kill -0 "$PID" 2>/dev/null && grep -q tansu "/proc/$PID/cmdline" 2>/dev/null; then
  kill -TERM "$PID" 2>/dev/null || true
  # The broker is not our child (setsid), so poll its /proc entry rather than `wait`.
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$PID" 2>/dev/null && ((SECONDS < deadline)); do
    # A zombie (exited, parent gone or not reaping) counts as stopped.
    [[ "$(awk '{print $3}' "/proc/$PID/stat" 2>/dev/null)" == "Z" ]] && break
    sleep 0.05  # poll interval of the condition above, not a guess at how long it takes
  done
  if kill -0 "$PID" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$PID/stat" 2>/dev/null)" != "Z" ]]; then
    echo "broker $PID ignored SIGTERM for ${STOP_TIMEOUT}s; killing" >&2
    kill -KILL "$PID" 2>/dev/null || true
  fi
fi
rm -f "$STATE/pid" "$STATE/port" "$STATE/bootstrap"
