"""One settings object for every command; every value also comes from a LOGLAMBDA_* env var."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_HOME: Final = "./loglambda-data"


@dataclass(frozen=True)
class Settings:
    """Where data lives. Flags override env vars, which override defaults."""

    home: Path

    @staticmethod
    def load(home: str | os.PathLike[str] | None = None) -> Settings:
        chosen = home or os.environ.get("LOGLAMBDA_HOME") or DEFAULT_HOME
        return Settings(home=Path(chosen).expanduser())
