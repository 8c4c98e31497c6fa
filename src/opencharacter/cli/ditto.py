"""`ditto`: the Ditto self-alignment recipe — the seed model simulates queries and answers them in character."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencharacter.cli import options as o
from opencharacter.cli.common import command_line, console, fail, run_async
from opencharacter.cli.stages import DATA_PANEL as D
from opencharacter.cli.stages import OutOpt, check_out, estimate_table, model_session, run_plan
from opencharacter.io.readers import InputError
from opencharacter.pipelines import ditto
from opencharacter.pipelines.dialogues import load_characters
from opencharacter.pipelines.stage import StagePlan, estimate
from opencharacter.prompts import Prompts
from opencharacter.records import Character

# synthesis's --seed and --prompts help speaks of pairing and its own templates; these say what they do here.
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the per-character choices: rounding of the out-of-scope count, and the contrast persona.", rich_help_panel=D)]
PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="Folder of Jinja2 templates overriding the built-in ones (ditto_queries.j2, ditto_answer.j2, system.j2).", rich_help_panel=D)]


def _answers_plan(characters: list[Character], out: Path, prompts: Prompts, *, model: str, temperature: float,
                  max_tokens: int, per_character: int, share: float, seed: int,
                  placeholders: bool) -> StagePlan:
    """The answer stage from the queries written so far; with `placeholders`, stand-ins for the rest."""
    records = ditto.load_query_records(out / ditto.QUERIES_FILE)
    missing = [c for c in characters if c.character_id not in records]
    if placeholders and missing:
        records = {**records, **ditto.placeholder_queries(missing, per_character=per_character,
                                                          out_of_scope_share=share, seed=seed)}
    return ditto.dialogues_plan(characters, records, prompts, model_name=model, temperature=temperature,
                                max_tokens=max_tokens, placeholders=len(missing) if placeholders else 0)


def ditto_command(
    characters: Annotated[Path, typer.Option("--characters", help="characters.jsonl written by `opencharacter profiles` (or the released synthetic_character.jsonl).", rich_help_panel=D)],
    out: OutOpt,
    model: o.ModelOpt,
    queries_per_character: Annotated[int, typer.Option("--queries-per-character", "-n", min=1, help="Queries simulated per character (role + out-of-scope).", rich_help_panel=D)] = 6,
    out_of_scope_share: Annotated[float, typer.Option("--out-of-scope-share", min=0.0, max=1.0, help="Share of queries the character cannot know or answer, to be declined in character.", rich_help_panel=D)] = 0.33,
    seed: SeedOpt = 0,
    prompts_dir: PromptsOpt = None,
    base_url: o.BaseUrlOpt = None,
    backend: o.BackendOpt = "openai",
    api_key_env: o.ApiKeyEnvOpt = "OPENAI_API_KEY",
    temperature: o.TemperatureOpt = 0.7,
    max_tokens: o.MaxTokensOpt = 1024,
    batch_size: o.BatchSizeOpt = 8,
    concurrency: o.ConcurrencyOpt = 32,
    rpm: o.RpmOpt = None,
    tpm: o.TpmOpt = None,
    max_retries: o.MaxRetriesOpt = 5,
    timeout: o.TimeoutOpt = 120.0,
    dry_run: o.DryRunOpt = False,
    price_in: o.PriceInOpt = 0.0,
    price_out: o.PriceOutOpt = 0.0,
    progress: o.ProgressOpt = True,
) -> None:
    """Ditto self-alignment: the seed model simulates queries per character, then answers them in character → RUN/dialogues.jsonl.

    Stage ditto_queries writes role and out-of-scope queries for each character (RUN/ditto_queries.jsonl); stage ditto_dialogues answers each query in character, declining out-of-scope ones without leaving the role, and appends strategy "ditto" records to RUN/dialogues.jsonl beside any generate/rewrite records.

    --model is the seed model for both stages: fine-tune that same model on the result (self-alignment), or another one (cross-supervision). Templates: ditto_queries.j2 and ditto_answer.j2 (override with --prompts).

    Example: opencharacter ditto --characters runs/demo/characters.jsonl --out runs/demo --model Qwen/Qwen2.5-7B-Instruct --base-url http://localhost:8000/v1 --queries-per-character 6
    """
    opts = o.ModelOptions.from_params(locals())
    check_out(out)
    prompts = Prompts(prompts_dir)
    sizes = {"per_character": queries_per_character, "share": out_of_scope_share, "seed": seed}
    try:
        cast = load_characters(characters)
        if not cast:
            raise fail(f"{characters} holds no characters")
        queries_plan = ditto.queries_plan(cast, prompts, model_name=model, per_character=queries_per_character,
                                          out_of_scope_share=out_of_scope_share, seed=seed,
                                          temperature=temperature, max_tokens=max_tokens)
        # Read and check the queries already written (a resumed run) before any call.
        answers_plan = _answers_plan(cast, out, prompts, model=model, temperature=temperature, max_tokens=max_tokens,
                                     placeholders=True, **sizes)
    except (InputError, ValueError) as exc:
        raise fail(str(exc)) from None
    if dry_run:
        answers_estimate = estimate(answers_plan, out)
        # Placeholder queries are short: count the real query text they stand for.
        placeholder_calls = answers_plan.notes.get("placeholder_characters", 0) * queries_per_character
        answers_estimate.prompt_tokens += placeholder_calls * ditto.QUERY_TOKENS_ESTIMATE
        estimate_table([estimate(queries_plan, out), answers_estimate], opts)
        return

    async def go() -> None:
        extra = {"characters": str(characters), "seed": seed, "queries_per_character": queries_per_character,
                 "out_of_scope_share": out_of_scope_share}
        async with model_session(opts) as chat_model:
            await run_plan(queries_plan, chat_model, out, opts, extra)
            plan = _answers_plan(cast, out, prompts, model=model, temperature=temperature, max_tokens=max_tokens,
                                 placeholders=False, **sizes)
            if not plan.notes["characters_with_queries"]:
                raise fail("no character's queries were written, so there is nothing to answer; see failures.jsonl")
            await run_plan(plan, chat_model, out, opts, extra)
            if plan.notes["characters_without_queries"]:
                console.print(f"  {plan.notes['characters_without_queries']:,} characters have no queries yet "
                              "(their ditto_queries task failed); run the same command again to retry them.",
                              highlight=False)

    run_async(go(), resume_hint=command_line())
    console.print(f"Next: opencharacter stats {out}  ·  opencharacter export {out} --format messages --out {out}/train.jsonl",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command("ditto")(ditto_command)
