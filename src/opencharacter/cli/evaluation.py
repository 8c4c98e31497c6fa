"""`opencharacter eval ...`: PersonaGym, MT-Bench role-play, RoleBench, Ditto-style judging, compare.

Every suite takes the engine's options (concurrency, retries, rate limits, prices, dry run) like
synthesis does, plus judge options: `--judge` is repeatable and each judge grades every answer; the
judges are served by `--base-url` unless `--judge-base-url` is given.
"""

from __future__ import annotations

from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from opencharacter.cli.common import command_line, console, fail, run_async
from opencharacter.cli.options import (
    ApiKeyEnvOpt,
    BackendOpt,
    BaseUrlOpt,
    BatchSizeOpt,
    ConcurrencyOpt,
    DryRunOpt,
    MaxRetriesOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelOptions,
    PriceInOpt,
    PriceOutOpt,
    ProgressOpt,
    RpmOpt,
    TemperatureOpt,
    TimeoutOpt,
    TpmOpt,
)
from opencharacter.engine.runner import EngineSettings
from opencharacter.eval.common import EvalRun, JudgeOptions, ModelSlot
from opencharacter.eval.report import scores_table

J = "Judge"
S = "Suite"

JudgeOpt = Annotated[list[str], typer.Option("--judge", "-j", help="Judge model; repeat for several judges, each grades every answer (PersonaGym averaged two).", rich_help_panel=J)]
JudgeBaseUrlOpt = Annotated[str | None, typer.Option("--judge-base-url", help="OpenAI-compatible endpoint of the judges. Default: --base-url (or $OPENAI_BASE_URL / OpenAI with --backend transformers).", rich_help_panel=J)]
JudgeApiKeyEnvOpt = Annotated[str, typer.Option("--judge-api-key-env", help="Environment variable with the judges' API key (used with --judge-base-url).", rich_help_panel=J)]
JudgeTemperatureOpt = Annotated[float, typer.Option("--judge-temperature", min=0.0, help="Judges' sampling temperature (PersonaGym and MT-Bench: 0).", rich_help_panel=J)]
JudgeMaxTokensOpt = Annotated[int, typer.Option("--judge-max-tokens", min=1, help="Most tokens per verdict (and per set of score examples).", rich_help_panel=J)]
JudgeConcurrencyOpt = Annotated[int | None, typer.Option("--judge-concurrency", min=1, help="Judge requests in flight at once. Default: --concurrency.", rich_help_panel=J)]
JudgePriceInOpt = Annotated[float, typer.Option("--judge-price-in", min=0.0, help="Judges' USD per million prompt tokens.", rich_help_panel=J)]
JudgePriceOutOpt = Annotated[float, typer.Option("--judge-price-out", min=0.0, help="Judges' USD per million completion tokens.", rich_help_panel=J)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Result folder; run the same command again to resume.", rich_help_panel=S)]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N items (personas, questions, records) for a quick run.", rich_help_panel=S)]

eval_app = typer.Typer(
    name="eval",
    help=(
        "Evaluate role-play: PersonaGym (full and Light), MT-Bench role-play, RoleBench (ROUGE-L), "
        "Ditto-style identity / knowledge / rejection, and compare runs side by side.\n\n"
        "Every suite resumes (run the same command again), retries, records failures in failures.jsonl "
        "and writes scores.json, report.md and a PNG chart."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


def _judges(judge: list[str] | None, base_url: str | None, api_key_env: str, temperature: float, max_tokens: int,
            concurrency: int | None, price_in: float, price_out: float, timeout: float) -> JudgeOptions:
    if not judge:
        raise fail("give at least one --judge MODEL")
    unique = list(dict.fromkeys(judge))
    return JudgeOptions(unique, base_url, api_key_env, temperature, max_tokens, concurrency, price_in, price_out, timeout)


def _make_run(out: Path, opts: ModelOptions, judges: JudgeOptions | None, settings: dict[str, Any],
              extra_judge_slots: dict[str, str] | None = None) -> EvalRun:
    """Slots for the model under test and each judge; nothing is built until a stage needs it."""
    slots = {"model": ModelSlot(opts.model, opts.build, opts.engine_settings())}
    if judges is not None:
        engine = EngineSettings(
            concurrency=judges.concurrency or opts.concurrency, rpm=opts.rpm, tpm=opts.tpm,
            max_retries=opts.max_retries, price_in=judges.price_in, price_out=judges.price_out,
        )
        names = {f"judge:{j}": j for j in judges.models} | (extra_judge_slots or {})
        for slot, name in names.items():
            slots[slot] = ModelSlot(name, partial(judges.build, name, opts.base_url, opts.api_key_env), engine)
    manifest = {"command": command_line(), **settings, "model_options": opts.as_settings()}
    if judges is not None:
        manifest["judge_options"] = {k: v for k, v in vars(judges).items()}
    return EvalRun(out, manifest, slots, dry_run=opts.dry_run, progress=opts.progress, console=console)


def _finish(run: EvalRun, scores: dict[str, Any] | None, note: str = "") -> None:
    """Print the plan (dry run) or the scores table, where the files are, and what failed."""
    if run.dry_run:
        run.print_plan(note)
        return
    assert scores is not None
    header, rows = scores_table(scores, digits=3 if scores.get("suite") == "rolebench" else 2)
    table = Table(title=f"{scores.get('title', scores['suite'])}: {scores.get('model', '')}")
    for column in header:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"Results in {run.out}: scores.json, report.md, {scores.get('chart', 'scores.png')}")
    failures = scores.get("counts", {}).get("failures", 0)
    if failures:
        console.print(
            f"[yellow]{failures} task(s) failed[/] and are not counted in any score (see "
            f"{run.out / 'failures.jsonl'}). Run the same command again to retry them.", highlight=False,
        )


def _run(coro: Coroutine[Any, Any, Any], run: EvalRun) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await run.aclose()

    return run_async(main(), resume_hint=command_line())


@eval_app.command("personagym")
def personagym(
    model: ModelOpt,
    out: OutOpt,
    judge: JudgeOpt,
    data: Annotated[Path, typer.Option("--data", help="PersonaGym folder: a checkout (questions/benchmark-v1/) or a flat copy (questions/<persona>.json), with rubrics/ and prompts/.", rich_help_panel=S)],
    light: Annotated[bool, typer.Option("--light", help="PersonaGym-Light: the first question of each task per persona (1,000 over 200 personas).", rich_help_panel=S)] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N personas (or characters).", rich_help_panel=S)] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this task (repeatable): Expected Action, Toxicity, Linguistic Habits, Persona Consistency, Action Justification.", rich_help_panel=S)] = None,
    system_prompt: Annotated[str, typer.Option("--system-prompt", help="'opencharacter' (# Persona layout) or 'personagym' ('Adopt the identity of ...').", rich_help_panel=S)] = "opencharacter",
    characters: Annotated[str | None, typer.Option("--characters", help="Evaluate your own characters (characters.jsonl or a personas file) instead of the benchmark personas.", rich_help_panel=S)] = None,
    generate_questions: Annotated[bool, typer.Option("--generate-questions", help="Write PersonaGym-style questions for --characters (settings, then questions per task), saved in OUT/questions/.", rich_help_panel=S)] = False,
    questions_per_task: Annotated[int, typer.Option("--questions-per-task", min=1, help="Questions to generate per task and character.", rich_help_panel=S)] = 10,
    question_model: Annotated[str | None, typer.Option("--question-model", help="Model that writes the questions (served like the judges). Default: the first --judge.", rich_help_panel=S)] = None,
    examples_from: Annotated[Path | None, typer.Option("--examples-from", help="Reuse the score examples of an earlier run (they do not depend on the answers): fewer calls, same yardstick.", rich_help_panel=S)] = None,
    questions_set: Annotated[str, typer.Option("--questions-set", help="Question folder inside questions/ of a PersonaGym checkout.", rich_help_panel=S)] = "benchmark-v1",
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling for answers (PersonaGym: 0.9).", rich_help_panel="Model")] = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_api_key_env: JudgeApiKeyEnvOpt = "OPENAI_API_KEY",
    judge_temperature: JudgeTemperatureOpt = 0.0,
    judge_max_tokens: JudgeMaxTokensOpt = 2048,
    judge_concurrency: JudgeConcurrencyOpt = None,
    judge_price_in: JudgePriceInOpt = 0.0,
    judge_price_out: JudgePriceOutOpt = 0.0,
    base_url: BaseUrlOpt = None,
    backend: BackendOpt = "openai",
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    temperature: TemperatureOpt = 0.9,
    max_tokens: MaxTokensOpt = 1024,
    batch_size: BatchSizeOpt = 8,
    concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_retries: MaxRetriesOpt = 5,
    timeout: TimeoutOpt = 120.0,
    dry_run: DryRunOpt = False,
    price_in: PriceInOpt = 0.0,
    price_out: PriceOutOpt = 0.0,
    progress: ProgressOpt = True,
) -> None:
    """PersonaGym: answers in persona, judge-written score examples, rubric grades by every judge.

    Writes answers.jsonl, score_examples.jsonl, judgements.jsonl, scores.json (per task mean and std
    over personas, PersonaScore), report.md, scores.png, run.json and failures.jsonl.

    Example (PersonaGym-Light on a local vLLM, judged by two models on OpenAI):

        opencharacter eval personagym --data ../shared/data/personagym --light --model my-7b --base-url http://localhost:8000/v1 --judge gpt-4o --judge gpt-4.1 --judge-base-url https://api.openai.com/v1 --out runs/pg-light

    Your own characters, with questions written for them:

        opencharacter eval personagym --data ../shared/data/personagym --characters runs/syn/characters.jsonl --generate-questions --model my-7b --judge gpt-4o --out runs/pg-mine
    """
    from opencharacter.eval.personagym import (
        SYSTEM_PROMPTS,
        PersonaGymConfig,
        attach_saved_questions,
        check_tasks,
        load_benchmark,
        load_characters,
        run_personagym,
    )
    from opencharacter.eval.questions import generate_questions as write_questions
    from opencharacter.io.readers import InputError

    if system_prompt not in SYSTEM_PROMPTS:
        raise fail(f"--system-prompt must be one of: {', '.join(SYSTEM_PROMPTS)}")
    if generate_questions and not characters:
        raise fail("--generate-questions writes questions for --characters FILE; the benchmark has its own")
    judges = _judges(judge, judge_base_url, judge_api_key_env, judge_temperature, judge_max_tokens,
                     judge_concurrency, judge_price_in, judge_price_out, timeout)
    opts = ModelOptions.from_params(locals())
    try:
        tasks = check_tasks(task)
        personas = None
        if characters:
            bench = load_benchmark(data, tasks, questions=False)
            personas = load_characters(characters, limit)
            bench.personas = personas
            if not generate_questions:
                attach_saved_questions(bench, personas, [out, data], tasks)
        else:
            bench = load_benchmark(data, tasks, limit=limit, questions_set=questions_set)
    except InputError as exc:
        raise fail(str(exc)) from None
    cfg = PersonaGymConfig(model, judges.models, tasks, light, system_prompt, temperature, max_tokens, top_p,
                           judge_temperature, judge_max_tokens, examples_from)
    settings = {"suite": "personagym", "data": str(data), "light": light, "limit": limit, "tasks": tasks,
                "system_prompt": system_prompt, "characters": characters, "top_p": top_p}
    questioner = question_model or judges.models[0]
    run = _make_run(out, opts, judges, settings, {"questioner": questioner} if generate_questions else None)

    async def main() -> dict[str, Any] | None:
        if generate_questions and personas is not None:
            await write_questions(bench, personas, tasks, questions_per_task, run, "questioner", judge_max_tokens)
        return await run_personagym(bench, cfg, run)

    scores = _run(main(), run)
    _finish(run, scores, "Question generation is counted with stand-in questions." if generate_questions else "")


@eval_app.command("mtbench-roleplay")
def mtbench_roleplay(
    model: ModelOpt,
    out: OutOpt,
    judge: JudgeOpt,
    data: Annotated[Path, typer.Option("--data", help="FastChat's MT-Bench folder: question.jsonl and judge_prompts.jsonl.", rich_help_panel=S)],
    category: Annotated[str, typer.Option("--category", help="MT-Bench category to run (role-play is ids 91-100).", rich_help_panel=S)] = "roleplay",
    limit: LimitOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt for the model under test (default: none, as MT-Bench).", rich_help_panel=S)] = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_api_key_env: JudgeApiKeyEnvOpt = "OPENAI_API_KEY",
    judge_temperature: JudgeTemperatureOpt = 0.0,
    judge_max_tokens: JudgeMaxTokensOpt = 2048,
    judge_concurrency: JudgeConcurrencyOpt = None,
    judge_price_in: JudgePriceInOpt = 0.0,
    judge_price_out: JudgePriceOutOpt = 0.0,
    base_url: BaseUrlOpt = None,
    backend: BackendOpt = "openai",
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 1024,
    batch_size: BatchSizeOpt = 8,
    concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_retries: MaxRetriesOpt = 5,
    timeout: TimeoutOpt = 120.0,
    dry_run: DryRunOpt = False,
    price_in: PriceInOpt = 0.0,
    price_out: PriceOutOpt = 0.0,
    progress: ProgressOpt = True,
) -> None:
    """MT-Bench role-play: two turns per question, each rated 1-10 ("[[N]]") by every judge.

    Turn 1 is judged with MT-Bench's single-v1 prompt, turn 2 with single-v1-multi-turn. Temperature
    0.7 and 1024 tokens are FastChat's settings for this category.

    Example:

        opencharacter eval mtbench-roleplay --data ../shared/data/mt-bench --model my-7b --base-url http://localhost:8000/v1 --judge gpt-4o --judge-base-url https://api.openai.com/v1 --out runs/mtb
    """
    from opencharacter.eval.mtbench import MTBenchConfig, load_mtbench, run_mtbench
    from opencharacter.io.readers import InputError

    judges = _judges(judge, judge_base_url, judge_api_key_env, judge_temperature, judge_max_tokens,
                     judge_concurrency, judge_price_in, judge_price_out, timeout)
    opts = ModelOptions.from_params(locals())
    try:
        bench = load_mtbench(data, category, limit)
    except InputError as exc:
        raise fail(str(exc)) from None
    cfg = MTBenchConfig(model, judges.models, system, temperature, max_tokens, judge_temperature, judge_max_tokens)
    run = _make_run(out, opts, judges, {"suite": "mtbench-roleplay", "data": str(data), "category": category,
                                        "limit": limit, "system": system})
    _finish(run, _run(run_mtbench(bench, cfg, run), run))


@eval_app.command("rolebench")
def rolebench(
    model: ModelOpt,
    out: OutOpt,
    data: Annotated[str, typer.Option("--data", help="RoleBench test file: JSONL lines {role, question, generated: [references]}.", rich_help_panel=S)],
    profiles: Annotated[str | None, typer.Option("--profiles", help="Role descriptions: a JSON object {role: description} or JSONL {role, description}.", rich_help_panel=S)] = None,
    system_prompt: Annotated[str, typer.Option("--system-prompt", help="'rolellm' (RoleLLM-style role prompt) or 'opencharacter' (# Persona layout).", rich_help_panel=S)] = "rolellm",
    limit: LimitOpt = None,
    base_url: BaseUrlOpt = None,
    backend: BackendOpt = "openai",
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 512,
    batch_size: BatchSizeOpt = 8,
    concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_retries: MaxRetriesOpt = 5,
    timeout: TimeoutOpt = 120.0,
    dry_run: DryRunOpt = False,
    price_in: PriceInOpt = 0.0,
    price_out: PriceOutOpt = 0.0,
    progress: ProgressOpt = True,
) -> None:
    """RoleBench: answers in role, scored by ROUGE-L F1 against the reference answers (no judge).

    Reports ROUGE-L against the first reference and the best over all references, overall and per
    role. Needs the eval extra (rouge-score).

    Example:

        opencharacter eval rolebench --data rolebench-eng/general/test.jsonl --profiles profiles-eng/desc.json --model my-7b --base-url http://localhost:8000/v1 --out runs/rolebench
    """
    from opencharacter.eval.rolebench import (
        SYSTEM_PROMPTS,
        RoleBenchConfig,
        load_profiles,
        load_rolebench,
        run_rolebench,
    )
    from opencharacter.io.readers import InputError

    if system_prompt not in SYSTEM_PROMPTS:
        raise fail(f"--system-prompt must be one of: {', '.join(SYSTEM_PROMPTS)}")
    opts = ModelOptions.from_params(locals())
    try:
        items = load_rolebench(data, limit)
        descriptions = load_profiles(profiles) if profiles else {}
    except InputError as exc:
        raise fail(str(exc)) from None
    cfg = RoleBenchConfig(model, system_prompt, temperature, max_tokens)
    run = _make_run(out, opts, None, {"suite": "rolebench", "data": data, "profiles": profiles, "limit": limit,
                                      "system_prompt": system_prompt})
    _finish(run, _run(run_rolebench(items, descriptions, cfg, run), run))


@eval_app.command("roleplay-judge")
def roleplay_judge(
    model: ModelOpt,
    out: OutOpt,
    judge: JudgeOpt,
    data: Annotated[str, typer.Option("--data", help="Ditto WikiRoleEval-style JSONL: {system, prompts, role_consist_cands, rejection_labels, evidence}.", rich_help_panel=S)],
    limit: LimitOpt = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_api_key_env: JudgeApiKeyEnvOpt = "OPENAI_API_KEY",
    judge_temperature: JudgeTemperatureOpt = 0.0,
    judge_max_tokens: JudgeMaxTokensOpt = 2048,
    judge_concurrency: JudgeConcurrencyOpt = None,
    judge_price_in: JudgePriceInOpt = 0.0,
    judge_price_out: JudgePriceOutOpt = 0.0,
    base_url: BaseUrlOpt = None,
    backend: BackendOpt = "openai",
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 1024,
    batch_size: BatchSizeOpt = 8,
    concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_retries: MaxRetriesOpt = 5,
    timeout: TimeoutOpt = 120.0,
    dry_run: DryRunOpt = False,
    price_in: PriceInOpt = 0.0,
    price_out: PriceOutOpt = 0.0,
    progress: ProgressOpt = True,
) -> None:
    """Ditto-style judging: role identity, role knowledge (1-10) and rejection, per turn, by every judge.

    The model plays each record's profile through its user turns; then each judge picks the
    character among the candidates from each exchange (identity accuracy), scores the answer's
    knowledge with the turn's evidence as hints, and says whether it declined (rejection accuracy
    against the labels).

    Example:

        opencharacter eval roleplay-judge --data wiki_roleplay_test.jsonl --model my-7b --base-url http://localhost:8000/v1 --judge gpt-4o --judge-base-url https://api.openai.com/v1 --out runs/ditto-eval
    """
    from opencharacter.eval.roleplay_judge import RoleplayJudgeConfig, load_records_file, run_roleplay_judge
    from opencharacter.io.readers import InputError

    judges = _judges(judge, judge_base_url, judge_api_key_env, judge_temperature, judge_max_tokens,
                     judge_concurrency, judge_price_in, judge_price_out, timeout)
    opts = ModelOptions.from_params(locals())
    try:
        records = load_records_file(data, limit)
    except InputError as exc:
        raise fail(str(exc)) from None
    cfg = RoleplayJudgeConfig(model, judges.models, temperature, max_tokens, judge_temperature, judge_max_tokens)
    run = _make_run(out, opts, judges, {"suite": "roleplay-judge", "data": data, "limit": limit})
    _finish(run, _run(run_roleplay_judge(records, cfg, run), run))


@eval_app.command("compare")
def compare_runs(
    runs: Annotated[list[Path], typer.Argument(help="Result folders of eval runs (any suites).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write compare.md, compare.json and compare.png.")] = Path("eval-compare"),
    label: Annotated[list[str] | None, typer.Option("--label", help="Name for each run in the table, in order (default: the folder names).")] = None,
) -> None:
    """Several runs side by side: one table, one chart, with questions and failures per run.

    With two runs the table has a Δ column (second minus first), e.g. fine-tuned minus base.

    Example:

        opencharacter eval compare runs/pg-base runs/pg-tuned --label base --label tuned --out runs/compare
    """
    from opencharacter.eval.compare import compare, table, write_comparison
    from opencharacter.io.readers import InputError

    try:
        comparison = compare(runs, label)
    except InputError as exc:
        raise fail(str(exc)) from None
    written = write_comparison(comparison, out)
    header, rows = table(comparison)
    view = Table(title="Comparison")
    for column in header:
        view.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        view.add_row(*row)
    console.print(view)
    chart_note = f", {written['chart']}" if written["chart"] else " (no chart: pip install 'opencharacter[eval]')"
    console.print(f"Wrote {written['report']}, {written['json']}{chart_note}")
