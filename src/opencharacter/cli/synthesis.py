"""`profiles`, `dialogues` and `synth`: the data synthesis commands."""

from __future__ import annotations

from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from opencharacter.cli import options as o
from opencharacter.cli.common import command_line, console, fail, run_async
from opencharacter.cli.stages import DATA_PANEL, OutOpt, check_out, estimate_table, model_session, run_plan
from opencharacter.io.readers import InputError
from opencharacter.pipelines import plans
from opencharacter.pipelines.dialogues import load_characters
from opencharacter.pipelines.stage import StagePlan, estimate
from opencharacter.prompts import Prompts
from opencharacter.records import DialogueStrategy

EXAMPLES = Path(str(files("opencharacter") / "examples"))
# The built-in example runs in-process, so it needs no server and no key.
EXAMPLE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"

D = DATA_PANEL
PromptsOpt = Annotated[Path | None, typer.Option("--prompts", help="Folder of Jinja2 templates overriding the built-in ones (profile.j2, generate.j2, rewrite.j2, system.j2).", rich_help_panel=D)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for pairing and for --sample.", rich_help_panel=D)]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N unique personas.", rich_help_panel=D)]
SampleOpt = Annotated[int | None, typer.Option("--sample", min=1, help="Use a seeded random sample of N unique personas.", rich_help_panel=D)]
PersonaConfigOpt = Annotated[str | None, typer.Option("--personas-config", help="Config of a Hugging Face personas dataset (e.g. 'persona' for proj-persona/PersonaHub).", rich_help_panel=D)]
QuestionConfigOpt = Annotated[str | None, typer.Option("--questions-config", help="Config of a Hugging Face questions dataset.", rich_help_panel=D)]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of Hugging Face datasets.", rich_help_panel=D)]


class Strategy(str, Enum):
    """The dialogue recipes this command runs (Ditto's self-alignment recipe is separate)."""

    generate = "generate"
    rewrite = "rewrite"


StrategyOpt = Annotated[Strategy, typer.Option("--strategy", help="generate (OpenCharacter-G: a new in-character answer) or rewrite (OpenCharacter-R: re-voice the original answer).", rich_help_panel=D)]
PerQuestionOpt = Annotated[int, typer.Option("--characters-per-question", "-k", min=1, help="Distinct characters paired with each question (balanced, seeded).", rich_help_panel=D)]


def _example_model_options(params: dict, example: bool) -> o.ModelOptions:
    """--example defaults to the in-process example model; otherwise --model is required."""
    model, backend, base_url = params["model"], params["backend"], params["base_url"]
    if model is None:
        if not example:
            raise fail("--model is required (or use --example for the built-in example)")
        model = EXAMPLE_MODEL
    if backend is None:
        backend = "transformers" if example and base_url is None else "openai"
    return o.ModelOptions.from_params(params, model=model, backend=backend)


def profiles_command(
    personas: Annotated[str, typer.Option("--personas", "-p", help="JSONL/JSON (persona or 'input persona' field), .txt (one per line), CSV, Parquet, or a HF dataset id.", rich_help_panel=D)],
    out: OutOpt,
    model: o.ModelOpt,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    personas_config: PersonaConfigOpt = None,
    split: SplitOpt = "train",
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
    """Expand personas into character profiles → RUN/characters.jsonl.

    Example: opencharacter profiles --personas personas.jsonl --out runs/demo --model gpt-4o-mini --limit 100
    """
    opts = o.ModelOptions.from_params(locals())
    check_out(out)
    prompts = Prompts(prompts_dir)
    try:
        plan = plans.profiles_plan(personas, prompts, model_name=model, temperature=temperature, max_tokens=max_tokens,
                                   limit=limit, sample=sample, seed=seed, config=personas_config, split=split)
    except InputError as exc:
        raise fail(str(exc)) from None
    if dry_run:
        estimate_table([estimate(plan, out)], opts)
        return

    async def go() -> None:
        async with model_session(opts) as chat_model:
            await run_plan(plan, chat_model, out, opts, {"seed": seed})

    run_async(go(), resume_hint=command_line())


def dialogues_command(
    characters: Annotated[Path, typer.Option("--characters", help="characters.jsonl written by `opencharacter profiles` (or the released synthetic_character.jsonl).", rich_help_panel=D)],
    questions: Annotated[str, typer.Option("--questions", "-q", help="Alpaca, LIMA, ShareGPT, chat messages, self-instruct or PH-Instruct JSONL/JSON/Parquet, .txt, or a HF dataset id.", rich_help_panel=D)],
    out: OutOpt,
    model: o.ModelOpt,
    strategy: StrategyOpt = Strategy.generate,
    characters_per_question: PerQuestionOpt = 3,
    seed: SeedOpt = 0,
    questions_config: QuestionConfigOpt = None,
    split: SplitOpt = "train",
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
    """Write in-character answers for (character, question) pairs → RUN/dialogues.jsonl.

    Example: opencharacter dialogues --characters runs/demo/characters.jsonl --questions alpaca.jsonl --strategy generate --out runs/demo --model gpt-4o-mini
    """
    opts = o.ModelOptions.from_params(locals())
    check_out(out)
    prompts = Prompts(prompts_dir)
    try:
        plan = plans.dialogues_plan(questions, load_characters(characters), DialogueStrategy(strategy.value), prompts, model_name=model,
                                    temperature=temperature, max_tokens=max_tokens,
                                    per_question=characters_per_question, seed=seed, config=questions_config, split=split,
                                    run_dir=out)
    except (InputError, ValueError) as exc:
        raise fail(str(exc)) from None
    if dry_run:
        estimate_table([estimate(plan, out)], opts)
        return

    async def go() -> None:
        async with model_session(opts) as chat_model:
            await run_plan(plan, chat_model, out, opts, {"characters": str(characters)})

    run_async(go(), resume_hint=command_line())


def synth_command(
    out: OutOpt,
    personas: Annotated[str | None, typer.Option("--personas", "-p", help="Personas (see `profiles --help`).", rich_help_panel=D)] = None,
    questions: Annotated[str | None, typer.Option("--questions", "-q", help="Questions (see `dialogues --help`).", rich_help_panel=D)] = None,
    example: Annotated[bool, typer.Option("--example", help=f"Use the built-in example (10 personas, 10 questions) and, unless --model/--base-url say otherwise, the in-process model {EXAMPLE_MODEL}.", rich_help_panel=D)] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name on the server, or a HF id / local folder with --backend transformers.", rich_help_panel=o.M)] = None,
    strategy: StrategyOpt = Strategy.generate,
    characters_per_question: PerQuestionOpt = 3,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    personas_config: PersonaConfigOpt = None,
    questions_config: QuestionConfigOpt = None,
    split: SplitOpt = "train",
    prompts_dir: PromptsOpt = None,
    base_url: o.BaseUrlOpt = None,
    backend: Annotated[str | None, typer.Option("--backend", help="'openai' or 'transformers' (default: transformers for --example, else openai).", rich_help_panel=o.M)] = None,
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
    """The main job: personas → profiles → in-character dialogues, in one resumable run.

    Examples:
      opencharacter synth --example --out runs/example
      opencharacter synth --personas personas.jsonl --questions alpaca.jsonl --out runs/big --model meta-llama/Llama-3.1-70B-Instruct --base-url http://localhost:8000/v1 --concurrency 128
    """
    if example:
        personas = personas or str(EXAMPLES / "personas.jsonl")
        questions = questions or str(EXAMPLES / "questions.jsonl")
    if not personas or not questions:
        raise fail("--personas and --questions are required (or --example)")
    opts = _example_model_options(locals(), example)
    check_out(out)
    prompts = Prompts(prompts_dir)

    def dialogues_for(characters: list) -> StagePlan:
        return plans.dialogues_plan(questions, characters, DialogueStrategy(strategy.value), prompts, model_name=opts.model,
                                    temperature=temperature, max_tokens=max_tokens, per_question=characters_per_question,
                                    seed=seed, config=questions_config, split=split, run_dir=out)

    try:
        profile_plan = plans.profiles_plan(personas, prompts, model_name=opts.model, temperature=temperature,
                                           max_tokens=max_tokens, limit=limit, sample=sample, seed=seed,
                                           config=personas_config, split=split)
        # Validate the questions too before any call; with placeholders if profiles are not written yet.
        characters = plans.existing_characters(out) if out.exists() else None
        dialogue_plan = dialogues_for(characters or plans.placeholder_characters(profile_plan))
    except (InputError, ValueError) as exc:
        raise fail(str(exc)) from None
    if dry_run:
        dialogue_estimate = estimate(dialogue_plan, out if characters else None)
        if not characters:  # placeholder profiles are short: count the real profile text they stand for
            dialogue_estimate.prompt_tokens += dialogue_estimate.calls * plans.PROFILE_TOKENS_ESTIMATE
        estimate_table([estimate(profile_plan, out), dialogue_estimate], opts)
        return

    async def go() -> None:
        extra = {"seed": seed, "example": example}
        async with model_session(opts) as chat_model:
            await run_plan(profile_plan, chat_model, out, opts, extra)
            written = load_characters(out / profile_plan.results_file)
            if not written:
                raise fail("no character profile was written, so there is nothing to pair questions with; see failures.jsonl")
            try:
                plan = dialogues_for(written)
            except ValueError as exc:
                raise fail(str(exc)) from None
            await run_plan(plan, chat_model, out, opts, extra)

    run_async(go(), resume_hint=command_line())
    console.print(f"Next: opencharacter stats {out}  ·  opencharacter export {out} --format messages --out {out}/train.jsonl", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("profiles")(profiles_command)
    app.command("dialogues")(dialogues_command)
    app.command("synth")(synth_command)
