"""Options shared by every command that calls a model (MODEL_OPTIONS in the README)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any

import typer

from opencharacter.engine.runner import EngineSettings
from opencharacter.llm.base import ChatModel
from opencharacter.llm.factory import build_model

M = "Model"
E = "Engine"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name on the server, or a HF id / local folder with --backend transformers.", rich_help_panel=M)]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama). Default: $OPENAI_BASE_URL or OpenAI.", rich_help_panel=M)]
BackendOpt = Annotated[str, typer.Option("--backend", help="'openai' (any OpenAI-compatible HTTP server) or 'transformers' (in-process Hugging Face model).", rich_help_panel=M)]
ApiKeyEnvOpt = Annotated[str, typer.Option("--api-key-env", help="Name of the environment variable that holds the API key (the key itself is never a flag).", rich_help_panel=M)]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature.", rich_help_panel=M)]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per answer; a cut-off answer is sampled again.", rich_help_panel=M)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Generation batch size for --backend transformers.", rich_help_panel=M)]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.", rich_help_panel=E)]
RpmOpt = Annotated[float | None, typer.Option("--rpm", min=0.0, help="Most requests per minute.", rich_help_panel=E)]
TpmOpt = Annotated[float | None, typer.Option("--tpm", min=0.0, help="Most tokens per minute (prompt estimate + max tokens).", rich_help_panel=E)]
MaxRetriesOpt = Annotated[int, typer.Option("--max-retries", min=0, help="Retries per task on 429/5xx/timeouts/dropped connections, and re-samples of cut-off or invalid answers.", rich_help_panel=E)]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for one answer.", rich_help_panel=E)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print calls, estimated tokens and cost, and the first prompt; call no model.", rich_help_panel=E)]
PriceInOpt = Annotated[float, typer.Option("--price-in", min=0.0, help="USD per million prompt tokens, for cost in run.json.", rich_help_panel=E)]
PriceOutOpt = Annotated[float, typer.Option("--price-out", min=0.0, help="USD per million completion tokens.", rich_help_panel=E)]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show live progress.", rich_help_panel=E)]


@dataclass
class ModelOptions:
    model: str
    base_url: str | None = None
    backend: str = "openai"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.7
    max_tokens: int = 1024
    batch_size: int = 8
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int = 5
    timeout: float = 120.0
    dry_run: bool = False
    price_in: float = 0.0
    price_out: float = 0.0
    progress: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> ModelOptions:
        """From a command's parameters (`locals()`), by field name: commands list options, not plumbing."""
        values = {f.name: params[f.name] for f in fields(cls) if f.name in params}
        return cls(**{**values, **overrides})

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm, max_retries=self.max_retries,
            price_in=self.price_in, price_out=self.price_out,
        )

    def build(self) -> ChatModel:
        return build_model(
            self.model, backend=self.backend, base_url=self.base_url, api_key_env=self.api_key_env,
            timeout=self.timeout, batch_size=self.batch_size,
        )

    def as_settings(self) -> dict[str, Any]:
        """For run.json: everything resolved, nothing secret (only the variable's *name*)."""
        return asdict(self)
