"""`train` and `chat`: fine-tune on synthesized dialogues, then talk to any character."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from opencharacter.chat import (
    DEFAULT_CONTEXT,
    ChatError,
    ChatIO,
    ChatSession,
    estimate_tokens,
    model_context_length,
    model_token_counter,
    resolve_character,
    run_interactive,
    server_context_length,
)
from opencharacter.cli.common import command_line, console, fail
from opencharacter.llm.base import ChatModel, FatalError, LLMError
from opencharacter.llm.factory import build_model
from opencharacter.train.config import TrainConfig, TrainError
from opencharacter.train.trainer import TrainResult, train

D, T, OUT, M = "Data", "Training", "Outputs", "Model"


class Method(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


def train_command(
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="Run folder (with dialogues.jsonl), exported messages/ShareGPT/OpenAI file, or the released synthetic_dialogue.jsonl. Repeat for several.", rich_help_panel=D)] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", "-b", help="Hugging Face id, local folder, or the offline alias gemma3-270m.", rich_help_panel=D)] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder: checkpoints, adapter or model, README.md model card, train_summary.json.", rich_help_panel=OUT)] = None,
    characters: Annotated[str | None, typer.Option("--characters", help="characters.jsonl for released dialogue files without system prompts (default: the one beside the data).", rich_help_panel=D)] = None,
    method: Annotated[Method | None, typer.Option("--method", help="lora (default), qlora (4-bit base; CUDA + bitsandbytes) or full.", rich_help_panel=T)] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", min=0.0, help="Passes over the data \\[default: 3].", rich_help_panel=T)] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps (overrides --epochs).", rich_help_panel=T)] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate \\[default: 2e-4 LoRA/QLoRA, 1e-5 full].", rich_help_panel=T)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Sequences per device per step \\[default: 4].", rich_help_panel=T)] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", min=16, help="Longest sequence in tokens \\[default: 2048].", rich_help_panel=T)] = None,
    packing: Annotated[bool | None, typer.Option("--packing/--no-packing", help="Pack dialogues into max-length blocks \\[default: off].", rich_help_panel=T)] = None,
    eval_fraction: Annotated[float | None, typer.Option("--eval-fraction", min=0.0, max=0.99, help="Share of dialogues held out for the eval loss \\[default: 0.02].", rich_help_panel=T)] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1, help="Use only the first N dialogues.", rich_help_panel=D)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for the split, data order and LoRA init \\[default: 42].", rich_help_panel=T)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML of settings (any TrainConfig field); flags win over it. See configs/.", rich_help_panel=T)] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint in --out.", rich_help_panel=OUT)] = None,
    merge: Annotated[bool | None, typer.Option("--merge/--no-merge", help="Also write base + adapter merged into OUT/merged/ (for vllm serve).", rich_help_panel=OUT)] = None,
) -> None:
    """Fine-tune a model on in-character dialogues (TRL SFT; LoRA, QLoRA or full), loss on answers only.

    Example: opencharacter train --data runs/example --base-model gemma3-270m --out models/demo --epochs 1 --merge

    Many GPUs: accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m opencharacter train --config configs/paper_full_llama3_8b.yaml
    """
    settings: TrainConfig | None = None
    try:
        settings = TrainConfig.from_sources(
            config, data=data or None, base_model=base_model, out=out, characters=characters,
            method=method.value if method else None, epochs=epochs, max_steps=max_steps, lr=lr,
            batch_size=batch_size, max_length=max_length, packing=packing, eval_fraction=eval_fraction,
            max_samples=max_samples, seed=seed, resume=resume, merge=merge,
        )
        result = train(settings, command=command_line())
    except TrainError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print(
            f"\n[yellow]Interrupted.[/] Checkpoints in {settings.out if settings else '--out'} are kept; add --resume to the same "
            "command to continue from the last one.", highlight=False,
        )
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, one summary, not one per GPU
        _train_summary(result)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _train_summary(result: TrainResult) -> None:
    table = Table(title=f"Trained {result.method} on {result.base_model}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    d = result.data
    rows = [
        ("dialogues (train / eval)", f"{d.train_dialogues:,} / {d.eval_dialogues:,}"),
        ("skipped: longer than max-length", f"{d.skipped_too_long:,}"),
        ("optimizer steps", f"{result.steps:,}"),
        ("epochs", f"{result.epochs:.2f}"),
        ("time", f"{result.runtime_s:,.1f} s"),
        ("tokens", f"{result.tokens:,}"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"),
        ("training loss (first → last logged)", f"{_loss(result.first_loss)} → {_loss(result.final_loss)}"),
        ("eval loss (before → after)", f"{_loss(result.eval_loss_before)} → {_loss(result.eval_loss_after)}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"Saved to [bold]{result.out}[/] (model card: {Path(result.out) / 'README.md'})", highlight=False)
    if result.merged and result.merged != result.out:
        console.print(f"Merged model: [bold]{result.merged}[/]", highlight=False)
    console.print(f"Chat with it: opencharacter chat --model {result.out} --character \"a persona\"", highlight=False)


# --------------------------------------------------------------------------------------------------
# chat


def _pick_backend(model: str, base_url: str | None, backend: str | None) -> str:
    """An explicit --backend wins; a --base-url means HTTP; a local folder or alias means in-process."""
    if backend:
        return backend
    if base_url:
        return "openai"
    if Path(model).expanduser().exists() or _is_alias(model):
        return "transformers"
    return "openai"


def _is_alias(model: str) -> bool:
    try:
        from opencharacter.llm.local import MODEL_ALIASES
    except ImportError:
        return False
    return model in MODEL_ALIASES


async def _read_line(prompt: str) -> str | None:
    """`input()` on a daemon thread, so Ctrl-C or the end of the program never waits for a keypress."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def deliver(value: str | None) -> None:
        if not future.done():
            future.set_result(value)

    def worker() -> None:
        try:
            line: str | None = input(prompt)
        except (EOFError, KeyboardInterrupt):
            line = None
        loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=worker, daemon=True).start()
    return await future


def _write(text: str) -> None:
    typer.echo(text, nl=False)


def _notice(text: str) -> None:
    console.print(text, style="dim", markup=False, highlight=False)


async def _chat(
    chat_model: ChatModel, session: ChatSession, base_url: str | None, context_known: bool, message: str | None,
    characters: str | None,
) -> None:
    try:
        if not context_known:
            if (length := model_context_length(chat_model)) is None and base_url:
                length = await server_context_length(base_url, chat_model.name)
            session.context_length = length or DEFAULT_CONTEXT
        if message is not None:
            await session.send(message, on_text=_write)
            _write("\n")
            return
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
        await run_interactive(session, ChatIO(read=_read_line, write=_write, notice=_notice),
                              resolve=lambda spec: resolve_character(spec, characters))
    finally:
        await chat_model.aclose()


def chat_command(
    character: Annotated[str, typer.Option("--character", "-c", help="A character id (with --characters), a profile file (JSON/YAML), or a free-text persona.", rich_help_panel=D)],
    model: Annotated[str, typer.Option("--model", "-m", help="A trained OUT folder, merged folder or HF id (in-process), or the model name on --base-url.", rich_help_panel=M)],
    characters: Annotated[str | None, typer.Option("--characters", help="characters.jsonl (or the released synthetic_character.jsonl) to look ids up in.", rich_help_panel=D)] = None,
    message: Annotated[str | None, typer.Option("--message", help="Send one message, print the reply, exit (text on stdin works too).", rich_help_panel=D)] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vllm serve).", rich_help_panel=M)] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="openai or transformers \\[default: transformers for a local folder or alias, else openai].", rich_help_panel=M)] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.", rich_help_panel=M)] = "OPENAI_API_KEY",
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature (0 = greedy).", rich_help_panel=M)] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per reply.", rich_help_panel=M)] = 512,
    context_length: Annotated[int | None, typer.Option("--context-length", min=64, help="The model's context in tokens \\[default: from the model config, vLLM's /models, else 8192].", rich_help_panel=M)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for a reply over HTTP.", rich_help_panel=M)] = 120.0,
) -> None:
    """Chat with any character, streamed. Commands: /reset, /save FILE, /character C, /help, /quit.

    Examples:

      opencharacter chat --model models/demo --character "A retired sea captain who tells tall tales"

      opencharacter chat --model character --base-url http://localhost:8000/v1 --characters runs/demo/characters.jsonl --character 3f2a9c0d1e4b5a6f

      echo "Who are you?" | opencharacter chat --model models/demo --character profile.yaml
    """
    try:
        spec = resolve_character(character, characters)
    except ChatError as exc:
        raise fail(str(exc)) from None
    if message is None and not sys.stdin.isatty():
        message = sys.stdin.read().strip()
        if not message:
            raise fail("no message: pass --message TEXT, pipe text on stdin, or run in a terminal to chat")
    if message is not None and not message.strip():
        raise fail("empty --message")

    chosen = _pick_backend(model, base_url, backend)
    try:
        chat_model = build_model(model, backend=chosen, base_url=base_url, api_key_env=api_key_env, timeout=timeout, batch_size=1)
    except FatalError as exc:
        raise fail(str(exc)) from None
    session = ChatSession(
        chat_model, spec, context_length=context_length or DEFAULT_CONTEXT, max_tokens=max_tokens,
        temperature=temperature, count_tokens=model_token_counter(chat_model) or estimate_tokens,
    )
    try:
        asyncio.run(_chat(chat_model, session, base_url, context_length is not None, message, characters))
    except ChatError as exc:
        raise fail(str(exc)) from None
    except LLMError as exc:
        raise fail(f"the model failed to answer ({exc.reason}): {exc}") from None
    except KeyboardInterrupt:
        console.print("\nBye.")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("chat")(chat_command)
