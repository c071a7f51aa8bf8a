"""Import throughput against GoAccess, on the same generated file, in the same run.

    python bench/import_bench.py [--lines 2000000] [--keep DIR]

Generates a combined log with the project's generator, then times
``loglambda import`` (fresh data home) and ``goaccess FILE --log-format=COMBINED
-o out.json``, each as a subprocess, best of ``--repeat`` runs. Prints lines/s for
both, the ratio, and the RESULT line. Target: import >= 15x GoAccess's lines/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 15.0


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="work dir to keep (default: temp)")
    args = ap.parse_args()

    goaccess = shutil.which("goaccess")
    if goaccess is None:
        print("goaccess not found: apt-get install goaccess", file=sys.stderr)
        return 2
    loglambda = str(Path(sys.executable).with_name("loglambda"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "access.log"
    if not log.exists():
        subprocess.run(
            [loglambda, "generate", str(log), "--lines", str(args.lines), "--days", "2"],
            check=True,
        )
    print(f"file: {log} ({log.stat().st_size / 1e6:.0f} MB, {args.lines:,} lines)")

    ours, theirs = [], []
    for i in range(args.repeat):
        home = work / f"home-{i}"
        shutil.rmtree(home, ignore_errors=True)
        ours.append(
            _timed([loglambda, "import", "--home", str(home), "--format", "combined", str(log)])
        )
        out = work / "goaccess.json"
        theirs.append(_timed([goaccess, str(log), "--log-format=COMBINED", "-o", str(out)]))
        # GoAccess copies invalid bytes from malformed lines into its JSON.
        general = json.loads(out.read_bytes().decode("utf-8", "replace"))["general"]
        print(
            f"run {i}: loglambda {ours[-1]:.2f} s, goaccess {theirs[-1]:.2f} s "
            f"(goaccess valid {general['valid_requests']:,})"
        )

    ours_rate = args.lines / min(ours)
    theirs_rate = args.lines / min(theirs)
    ratio = ours_rate / theirs_rate
    print(f"loglambda import: {ours_rate:,.0f} lines/s")
    print(f"goaccess:         {theirs_rate:,.0f} lines/s")
    print(f"ratio:            {ratio:.2f}x")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"RESULT import_vs_goaccess {ratio:.2f} x target >= {TARGET_RATIO:g} {verdict}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
