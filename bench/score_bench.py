"""``scorestream score`` as a whole process against a whole-process JSON loop.

    .venv/bin/python bench/score_bench.py [--events 200000] [--contacts 20000]
        [--rules rules/b2b.yaml] [--repeat 3]

Both are timed from process start to exit (interpreter start-up, imports, reading the
file and, for ``score``, writing its report to /dev/null included), on the same file of
simulated events (``scorestream simulate --dry-run``). The baseline process reads the
file and does ``json.loads`` plus a dict update per line: the least any scorer does.
Each figure is the best of ``--repeat`` runs, alternating the two.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = """
import json, sys
table = {}
loads = json.loads
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        obj = loads(line)
        table[obj.get("contact_id") or obj.get("anonymous_id")] = obj
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--rules", default=str(ROOT / "rules" / "b2b.yaml"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        subprocess.run(
            [
                sys.executable, "-m", "scorestream", "simulate", "--dry-run", "--rate", "0",
                "--events", str(args.events), "--contacts", str(args.contacts), "--seed", "1",
                "--start", "2026-03-01T00:00:00Z", "--out", str(events),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )  # fmt: skip
        n = sum(1 for _ in events.open("rb"))
        base: list[float] = []
        score: list[float] = []
        for _ in range(args.repeat):
            base.append(timed([sys.executable, "-c", BASELINE, str(events)]))
            score.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "scorestream",
                        "score",
                        "--rules",
                        args.rules,
                        str(events),
                    ]
                )
            )
    b, s = n / min(base), n / min(score)
    print(
        f"{n:,} events, {args.contacts:,} people, plan {Path(args.rules).name}, "
        f"best of {args.repeat}"
    )
    print(f"{'whole process':<44}{'events/s':>12}{'x baseline':>12}")
    print(f"{'baseline: read + json.loads + dict update':<44}{b:>12,.0f}{1:>12.2f}")
    print(f"{'scorestream score':<44}{s:>12,.0f}{s / b:>12.2f}")


if __name__ == "__main__":
    main()
