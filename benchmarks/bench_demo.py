"""First-run time of the README's main job (`vlptm demo`) on this machine, stage by stage (goal ≤ 15 min).

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_demo.py [--workdir runs/bench-demo]
Starts from an empty workdir, runs every stage without serving, then reruns to time the cached path.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from vlptm.cli import main as vlptm


def _run(workdir: Path) -> float:
    start = time.perf_counter()
    assert vlptm(["demo", "--workdir", str(workdir), "--no-serve"]) == 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/bench-demo")
    workdir = Path(parser.parse_args().workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    first = _run(workdir)
    second = _run(workdir)
    print("\nstage seconds (first run):")
    for marker in sorted((workdir / ".done").iterdir(), key=lambda p: p.stat().st_mtime):
        print(f"  {marker.name:22s} {json.loads(marker.read_text())['seconds']:7.1f}")
    print(f"first run {first:.0f}s (goal ≤ 900s: {'met' if first <= 900 else 'NOT met'}), "
          f"cached rerun {second:.0f}s ({first / second:.0f}x faster)")


if __name__ == "__main__":
    main()
