"""Our traffic summary against GoAccess, the reference users compare us with."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loglambda.core.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def goaccess_report(
    goaccess: str, sample_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("goaccess") / "out.json"
    subprocess.run(
        [goaccess, str(sample_log), "--log-format=COMBINED", "-o", str(out)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.fixture(scope="module")
def our_summary(sample_log: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("parity") / "home"
    runner = CliRunner()
    imported = runner.invoke(main, ["import", str(sample_log), "--home", str(home)])
    assert imported.exit_code == 0, imported.output
    shown = runner.invoke(main, ["summary", "--json", "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    summary: dict[str, Any] = json.loads(shown.stdout)
    return summary


def test_goaccess_parsed_every_line(goaccess_report: dict[str, Any]) -> None:
    general = goaccess_report["general"]
    assert general["failed_requests"] == 0
    assert general["valid_requests"] == general["total_requests"]


def test_general_totals_match(goaccess_report: dict[str, Any], our_summary: dict[str, Any]) -> None:
    general = goaccess_report["general"]
    assert our_summary["requests"] == general["total_requests"]
    assert our_summary["bytes"] == general["bandwidth"]
    assert our_summary["unique_visitors"] == general["unique_visitors"]


def test_status_classes_match(goaccess_report: dict[str, Any], our_summary: dict[str, Any]) -> None:
    # GoAccess's panel items are classes such as "2xx Success", with hits.count.
    theirs = {
        item["data"].split()[0]: item["hits"]["count"]
        for item in goaccess_report["status_codes"]["data"]
    }
    assert our_summary["status_classes"] == theirs
    assert sum(theirs.values()) == our_summary["requests"]
