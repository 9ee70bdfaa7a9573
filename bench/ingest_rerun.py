"""Ingest twice into a fresh project home: cold run, then the all-cached rerun, and their ratio.

    python bench/ingest_rerun.py [--source ../shared/data/ml-100k]

Each run is a separate process (as a user runs it), so both include Prefect's start-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_ingest(home: Path, source: str) -> tuple[float, str]:
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_MOVIELENS_SOURCE": source}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / "ingest.py")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "ml-100k"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        cold, cold_log = timed_ingest(Path(home), args.source)
        warm, warm_log = timed_ingest(Path(home), args.source)
    cached = warm_log.count("Cached(type=COMPLETED)")
    print(f"source          {args.source}")
    print(
        f"cold run        {cold:7.2f} s   ({cold_log.count('Completed()')} task/flow completions)"
    )
    print(f"cached rerun    {warm:7.2f} s   ({cached} tasks Cached)")
    print(f"rerun / cold    {warm / cold:7.2f}")


if __name__ == "__main__":
    main()
