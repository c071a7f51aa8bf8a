"""One settings object for every command; every value also comes from a LOGLAMBDA_* env var.

Precedence: a CLI flag (passed in as an override) beats the env var, which beats the
default. Commands build one ``Settings`` and hand it down; nothing below the CLI reads
the environment itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

DEFAULT_HOME: Final = "./loglambda-data"

LogBackend = Literal["local", "kafka"]
FsyncPolicy = Literal["always", "batch", "never"]


@dataclass(frozen=True)
class Settings:
    """Where data lives and which event log to use."""

    home: Path
    # The event log: "local" segments under $home/log (no server), or Kafka.
    log_backend: LogBackend = "local"
    # Local log: when appends reach the disk (see LocalEventLog).
    fsync: FsyncPolicy = "batch"
    # Kafka log: bootstrap servers, topic prefix (topics "<prefix>traffic", "<prefix>logs").
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "loglambda."
    kafka_partitions: int = 1

    @staticmethod
    def load(home: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Settings from env vars, with ``home`` and any non-None ``overrides`` on top."""
        env = os.environ
        settings = Settings(
            home=Path(home or env.get("LOGLAMBDA_HOME") or DEFAULT_HOME).expanduser(),
            log_backend=_choice(env, "LOGLAMBDA_LOG", "local", ("local", "kafka")),  # type: ignore[arg-type]
            fsync=_choice(env, "LOGLAMBDA_FSYNC", "batch", ("always", "batch", "never")),  # type: ignore[arg-type]
            kafka_bootstrap=env.get("LOGLAMBDA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            kafka_topic_prefix=env.get("LOGLAMBDA_KAFKA_TOPIC_PREFIX", "loglambda."),
            kafka_partitions=int(env.get("LOGLAMBDA_KAFKA_PARTITIONS", "1")),
        )
        known = {f.name for f in fields(Settings)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _choice(env: os._Environ[str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value
