"""Wall time of a PersonaGym-Light run against a local server with 0.5 s latency at concurrency 64.

The fake server runs in its own process (this script with `--serve`), answering every evaluation
prompt in the format its parser expects after L seconds; the client is the real CLI, run as a
child process (`python -m opencharacter.cli eval personagym --light ...`), so the time includes start-up,
every stage, the reports and the chart. Stages run one after another (each needs the one before), so
the ideal wall time is the sum over stages of ceil(calls / C) x L.

Also prints how many model calls a full and a Light run make per model under test.

    python benchmarks/eval_light.py                  # all 200 personas (4,000 calls with 2 judges)
    python benchmarks/eval_light.py --limit 20       # a slice; the script extrapolates
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "personagym"


def serve(latency: float) -> None:
    import asyncio

    from opencharacter.testing import FakeOpenAIServer
    from opencharacter.testing.eval_responder import make_eval_responder

    async def main() -> None:
        server = FakeOpenAIServer(make_eval_responder(), latency=latency, record_requests=False)
        await server.astart()
        print(server.base_url, flush=True)
        await asyncio.Event().wait()  # until the parent terminates us

    asyncio.run(main())


def call_counts(judges: int) -> list[tuple[str, int, int, int, int]]:
    """(run, answers, score examples, grades, total) for a full and a Light run, per model under test."""
    from opencharacter.eval.personagym import TASKS, load_benchmark

    bench = load_benchmark(DATA)
    rows = []
    for name, light in (("full", False), ("Light", True)):
        n = len(bench.items(TASKS, light))
        rows.append((name, n, n, n * judges, n * (2 + judges)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--judges", type=int, default=2, help="how many --judge models (PersonaGym used two)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N of the 200 personas")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.latency)
        return

    print(f"Model calls per model under test, with {args.judges} judge(s):")
    print(f"  {'run':<6} {'answers':>8} {'examples':>9} {'grades':>8} {'total':>8}")
    for name, answers, examples, grades, total in call_counts(args.judges):
        print(f"  {name:<6} {answers:>8,} {examples:>9,} {grades:>8,} {total:>8,}")
    print(f"  (with 1 judge: {call_counts(1)[0][4]:,} full, {call_counts(1)[1][4]:,} Light)\n")

    server = subprocess.Popen([sys.executable, __file__, "--serve", "--latency", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory(prefix="eval-light-") as tmp:
            out = Path(tmp) / "run"
            command = [sys.executable, "-m", "opencharacter.cli", "eval", "personagym", "--data", str(DATA), "--light",
                       "--model", "tested", *[a for i in range(args.judges) for a in ("--judge", f"judge-{i + 1}")],
                       "--base-url", base_url, "--concurrency", str(args.concurrency), "--out", str(out),
                       "--no-progress"]
            if args.limit:
                command += ["--limit", str(args.limit)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "x"})
            wall = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"the run failed:\n{done.stdout}\n{done.stderr}")
            manifest = json.loads((out / "run.json").read_text())
            scores = json.loads((out / "scores.json").read_text())
    finally:
        server.terminate()
        server.wait()

    stages = manifest["stages"]
    calls = sum(s["requests"] for s in stages.values())
    ideal = sum(math.ceil(s["total"] / args.concurrency) * args.latency for s in stages.values())
    in_stages = sum(s["elapsed_s"] for s in stages.values())
    personas = scores["counts"]["personas"]
    print(f"PersonaGym-Light, {personas} personas, {args.judges} judge(s), latency {args.latency} s, "
          f"concurrency {args.concurrency}: {calls:,} calls, {scores['counts']['failures']} failures")
    for name, s in stages.items():
        print(f"  {name:<16} {s['requests']:>6,} calls  {s['elapsed_s']:>7.2f} s")
    print(f"  wall time {wall:.1f} s (in stages {in_stages:.1f} s; ideal sum of ceil(calls/C) x L = {ideal:.1f} s; "
          f"stage efficiency {ideal / in_stages:.2f})")
    if personas < 200:
        factor = 200 / personas
        print(f"  extrapolated to 200 personas: ~{in_stages * factor + (wall - in_stages):.0f} s "
              "(stage time scaled linearly, start-up and reports kept)")


if __name__ == "__main__":
    main()
