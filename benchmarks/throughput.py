"""Engine throughput against a local OpenAI-compatible server with a fixed latency.

Runs N dialogue-generation tasks (the real `dialogues` stage: prompt rendering, parsing, records
appended to dialogues.jsonl for resume) at concurrency C against a fake server that answers after
L seconds, and the same N requests through a plain AsyncOpenAI + semaphore loop. The server runs in
its own process and each client in a fresh child process, so peak RSS is the client's alone.

    python benchmarks/throughput.py                       # N=1000, C=64, L=0.5
    python benchmarks/throughput.py --n 100000 --latency 0 --skip-plain   # memory at scale
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_inputs(folder: Path, n_tasks: int, per_question: int = 3) -> tuple[Path, Path]:
    from opencharacter.records import Character, Profile, character_id_for

    n_characters = max(per_question, min(1000, n_tasks // 10))
    characters = folder / "characters.jsonl"
    with characters.open("w") as f:
        for i in range(n_characters):
            persona = f"A benchmark persona number {i} who restores clocks and sails."
            profile = Profile(name=f"Person {i}", age=str(20 + i % 60), gender="female", race="Irish",
                              born_place="Cork, Ireland", appearance="Tall, with grey eyes. " * 4,
                              general_experience="Grew up by the sea and learned a trade. " * 10,
                              personality="Patient and dry-witted. " * 5)
            record = Character(character_id=character_id_for(persona), persona=persona,
                               character=profile.to_text(), profile=profile)
            f.write(record.model_dump_json() + "\n")
    questions = folder / "questions.jsonl"
    with questions.open("w") as f:
        for i in range(-(-n_tasks // per_question)):
            f.write(json.dumps({"instruction": f"Benchmark question {i}: how do I keep a sourdough starter alive?",
                                "output": "Feed it daily."}) + "\n")
    return characters, questions


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def engine_client(base_url: str, folder: Path, n: int, concurrency: int) -> dict:
    from opencharacter.engine.runner import EngineSettings
    from opencharacter.llm.openai_http import OpenAICompatibleModel
    from opencharacter.pipelines import plans
    from opencharacter.pipelines.dialogues import load_characters
    from opencharacter.pipelines.stage import execute
    from opencharacter.prompts import Prompts
    from opencharacter.records import DialogueStrategy

    characters, questions = folder / "characters.jsonl", folder / "questions.jsonl"
    plan = plans.dialogues_plan(str(questions), load_characters(characters), DialogueStrategy.GENERATE, Prompts(),
                                model_name="fake-model", temperature=0.7, max_tokens=256)
    plan.total = min(plan.total, n)
    full = plan.tasks
    plan.tasks = lambda: itertools.islice(full(), n)
    model = OpenAICompatibleModel("fake-model", base_url=base_url, api_key="EMPTY")
    started = time.perf_counter()
    try:
        stats = await execute(plan, model, folder / "run", EngineSettings(concurrency=concurrency), {}, progress=False)
    finally:
        await model.aclose()
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "done": stats.succeeded, "failed": stats.failed, "rss_mb": peak_rss_mb()}


async def plain_client(base_url: str, n: int, concurrency: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with semaphore:
            response = await client.chat.completions.create(
                model="fake-model", max_tokens=256,
                messages=[{"role": "user", "content": f"Benchmark question {i}: how do I keep a sourdough starter alive?"}])
            return response.choices[0].message.content or ""

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {"elapsed": elapsed, "done": sum(1 for a in answers if a), "failed": 0, "rss_mb": peak_rss_mb()}


def run_child(kind: str, base_url: str, folder: Path, n: int, concurrency: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--base-url", base_url, "--folder", str(folder),
               "--n", str(n), "--concurrency", str(concurrency)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--skip-plain", action="store_true", help="only the engine (e.g. for the 100k memory run)")
    parser.add_argument("--child", choices=("engine", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "engine":
        print(json.dumps(asyncio.run(engine_client(args.base_url, Path(args.folder), args.n, args.concurrency))))
        return
    if args.child == "plain":
        print(json.dumps(asyncio.run(plain_client(args.base_url, args.n, args.concurrency))))
        return

    from opencharacter.testing import FakeOpenAIProcess

    ideal = args.concurrency / args.latency if args.latency else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIProcess(latency=args.latency, responder="auto") as server:
        folder = Path(tmp)
        write_inputs(folder, args.n)
        kinds = ["engine"] if args.skip_plain else ["engine", "plain"]
        for kind in kinds:
            result = run_child(kind, server.base_url, folder, args.n, args.concurrency)
            rate = result["done"] / result["elapsed"]
            rows.append((kind, result, rate))
    print(f"\nN={args.n:,}  C={args.concurrency}  L={args.latency}s  ideal={'∞' if ideal is None else f'{ideal:,.0f}'} req/s")
    print(f"{'client':<34} {'done':>8} {'wall s':>8} {'req/s':>9} {'of ideal':>9} {'peak RSS MB':>12}")
    labels = {"engine": "opencharacter engine (+resume log)", "plain": "AsyncOpenAI + semaphore"}
    for kind, result, rate in rows:
        share = f"{rate / ideal:.3f}" if ideal else "-"
        print(f"{labels[kind]:<34} {result['done']:>8,} {result['elapsed']:>8.2f} {rate:>9.1f} {share:>9} {result['rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
