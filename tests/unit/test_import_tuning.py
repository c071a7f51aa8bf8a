"""The import process's settings: faster, and nothing a user relies on changes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit


def test_tuned_import_process_skips_pandas_yet_can_still_use_it() -> None:
    """Settings are per process, so they are checked in a fresh interpreter."""
    script = textwrap.dedent(
        """
        import sys
        from loglambda.batch import import_tuning

        import_tuning.before_libraries_load()
        from loglambda.batch.importer import import_file  # noqa: F401
        from loglambda.core.lines import split_block
        from loglambda.core.parsers.access import COMBINED

        import_tuning.after_libraries_load()
        block = split_block(
            b'garbage\\n1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 1\\n',
            source="s", base_offset=0, base_line=1,
        )
        parsed = COMBINED.parse(block)
        assert parsed.events.num_rows == 1 and len(parsed.rejects) == 1
        assert "pandas" not in sys.modules, "pandas was imported"
        import pyarrow as pa

        assert pa.table({"a": [1]}).to_pandas()["a"].tolist() == [1]
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
