"""Shared fixtures: the shared sample log, and an isolated LOGLAMBDA_HOME."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

# The repository lives at <x>/main and the shared test data at <x>/shared/data. This file
# is <x>/main/tests/conftest.py, so parents[1] is the repository and its parent is <x>.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_log() -> Path:
    """The 10,000-line Apache combined sample (read in place, never copied)."""
    path = SHARED_DATA / "apache_combined_10k.log"
    if not path.is_file():
        pytest.fail(
            f"sample log missing: expected {path} (the shared test data lives next to the "
            "repository, at ../shared/data/)",
            pytrace=False,
        )
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LOGLAMBDA_HOME, also exported so commands without --home use it."""
    path = tmp_path / "loglambda-home"
    monkeypatch.setenv("LOGLAMBDA_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def goaccess() -> str:
    """The GoAccess binary we check numbers against: required in CI, optional locally."""
    found = shutil.which("goaccess")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("goaccess is not installed; CI must install it (see .ci/run)")
        pytest.skip("goaccess is not installed (apt-get install goaccess); CI runs this test")
    return found


@pytest.fixture(scope="session")
def spark() -> Any:
    """One local Spark session per test run (a JVM start costs ~10 s), set up the way
    every loglambda Spark job is: UTC session time, microsecond Parquet timestamps."""
    pyspark_sql = pytest.importorskip("pyspark.sql")
    session = (
        pyspark_sql.SparkSession.builder.master("local[1]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session
