"""What every command does the same way: run async work, turn known errors into clear messages."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from opencharacter.io.readers import InputError
from opencharacter.llm.base import FatalError

T = TypeVar("T")
console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    # Messages are text, not markup: "pip install 'opencharacter[local]'" must keep its brackets.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # paths stay copyable
    return typer.Exit(code)


def run_async(coro: Coroutine[Any, Any, T], resume_hint: str | None = None) -> T:
    """Run `coro`; Ctrl-C cancels it cleanly (files closed, run.json written) and says how to resume."""

    async def main() -> T:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, task.cancel)
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
        return await task

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        console.print("\n[yellow]Interrupted.[/] Finished work is saved.")
        if resume_hint:
            console.print(f"Resume with the same command: [bold]{escape(resume_hint)}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (FatalError, InputError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None


def command_line() -> str:
    import shlex

    return "opencharacter " + " ".join(shlex.quote(a) for a in sys.argv[1:])
