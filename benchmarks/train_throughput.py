"""Training throughput on CPU: tokens per second of `opencharacter train` (LoRA), with and without packing.

Trains on dialogues synthesized by the real `synth` pipeline against the fake OpenAI-compatible
server, for two models: the tiny Llama of the tests (built on the spot) and the real Gemma 3 270M
base model (`gemma3-270m`, converted from its PyPI GGUF once and cached). Tokens are the non-padding
tokens TRL counts while training; time is the trainer's own `train_runtime` (no loading, no saving).

    python benchmarks/train_throughput.py                      # tiny: 20 steps, gemma: 4 steps
    python benchmarks/train_throughput.py --skip-gemma         # seconds, not minutes
    python benchmarks/train_throughput.py --gemma-steps 8 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def synthesize(out: Path, per_question: int) -> Path:
    from typer.testing import CliRunner

    from opencharacter.cli import app
    from opencharacter.testing.fake_openai import FakeOpenAIServer, in_character, profile

    def responder(body: dict[str, Any]) -> str:
        return profile(body) if body.get("response_format") else in_character(body)

    with FakeOpenAIServer(responder=responder) as server:
        result = CliRunner().invoke(app, ["synth", "--example", "--out", str(out), "--model", "fake-model",
                                          "--base-url", server.base_url, "--no-progress", "-k", str(per_question)])
    if result.exit_code != 0:
        raise SystemExit(f"synthesis failed:\n{result.output}")
    return out


def tiny_model(folder: Path, run: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_llama

    rows = [json.loads(line) for line in (run / "dialogues.jsonl").read_text().splitlines()]
    text = " ".join(m["content"] for r in rows for m in r["messages"])
    return build_tiny_llama(folder / "tiny", extra_text=text)


def measure(run: Path, base_model: str, packing: bool, steps: int, batch_size: int, max_length: int, out: Path) -> dict[str, Any]:
    from opencharacter.train import TrainConfig, train

    config = TrainConfig(
        data=[str(run)], base_model=base_model, out=str(out), method="lora", max_steps=steps, batch_size=batch_size,
        gradient_accumulation_steps=1, max_length=max_length, packing=packing, eval_fraction=0.0,
        logging_steps=max(1, steps // 4), save_steps=10_000, lr=2e-4, seed=0,
    )
    started = time.perf_counter()
    result = train(config)
    return {
        "model": base_model if not Path(base_model).exists() else "tiny-llama",
        "packing": packing,
        "steps": result.steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "tokens": result.tokens,
        "train_seconds": round(result.runtime_s, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "seconds_per_step": round(result.runtime_s / max(1, result.steps), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "final_loss": result.final_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-steps", type=int, default=20)
    parser.add_argument("--gemma-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--characters-per-question", type=int, default=3, help="dialogues = 10 questions x this")
    parser.add_argument("--skip-gemma", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = synthesize(folder / "run", args.characters_per_question)
        models = [(str(tiny_model(folder, run)), args.tiny_steps)]
        if not args.skip_gemma:
            models.append(("gemma3-270m", args.gemma_steps))
        for base, steps in models:
            for packing in (False, True):
                out = folder / f"out-{len(rows)}"
                rows.append(measure(run, base, packing, steps, args.batch_size, args.max_length, out))
                print(json.dumps(rows[-1]), flush=True)

    table = Table(title=f"LoRA training throughput on CPU ({os.cpu_count()} cores, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f})")
    for column in ("model", "packing", "steps", "batch", "tokens", "s/step", "tokens/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["model"], "yes" if r["packing"] else "no", str(r["steps"]), str(r["batch_size"]),
                      f"{r['tokens']:,}", f"{r['seconds_per_step']:.2f}", f"{r['tokens_per_s']:,.0f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
