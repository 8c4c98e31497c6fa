"""Prompt templates (Jinja2 files shipped in the package, overridable with `--prompts DIR`).

Persona, profile and question text only ever reach a template as *variables*: they are data, never
template source, so a persona containing `{{ 7*7 }}` reaches the model literally.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

PACKAGE_PROMPTS = Path(str(files("opencharacter") / "prompts"))


class Prompts:
    """Renders named templates, looking in an override folder first, then in the package."""

    def __init__(self, override_dir: str | Path | None = None) -> None:
        search = [str(Path(override_dir))] if override_dir else []
        search.append(str(PACKAGE_PROMPTS))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
            auto_reload=False,  # templates do not change during a run: skip a stat() per render
        )

    def render(self, name: str, **variables: Any) -> str:
        try:
            template = self.env.get_template(f"{name}.j2")
        except jinja2.TemplateNotFound as exc:
            raise FileNotFoundError(f"prompt template '{name}.j2' not found in {self.env.loader.searchpath}") from exc  # type: ignore[union-attr]
        return template.render(**variables).strip()


@lru_cache(maxsize=1)
def default_prompts() -> Prompts:
    return Prompts()


def build_system_prompt(persona: str, character: str, prompts: Prompts | None = None) -> str:
    """The system prompt a trained model sees: the same for export, train, chat and eval."""
    return (prompts or default_prompts()).render("system", persona=persona, character=character)
