"""The model card (`OUT/README.md`): what was trained, on what, how, with what result, under which terms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from opencharacter import __version__

if TYPE_CHECKING:
    from opencharacter.train.config import TrainConfig
    from opencharacter.train.trainer import TrainResult

PERSONA_LICENCE = (
    "The personas behind OpenCharacter data come from Persona Hub, released under **CC BY-NC-SA 4.0** "
    "(non-commercial, share-alike), and the released OpenCharacter characters and dialogues inherit it. "
    "A model trained on such data should be treated as bound by those terms: no commercial use, and "
    "derivatives under the same licence. Data you synthesized from your own personas carries the terms "
    "of those personas and of the model that wrote it. The base model's own licence applies as well."
)

PLAIN_TEMPLATE_NOTE = (
    "\nThe base model has no chat template, so dialogues were rendered in the plain `System:` / `User:` / "
    "`Assistant:` layout of OpenCharacter's transformers backend; the tokenizer saved here carries it, so "
    "servers that apply the saved template (vLLM, transformers) prompt the model the way it was trained.\n"
)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_model_card(config: TrainConfig, result: TrainResult, command: str) -> str:
    is_adapter = config.method != "full"
    front = {
        "base_model": config.base_model,
        "library_name": "peft" if is_adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["opencharacter", "role-playing", "trl", "sft", config.method],
    }
    stats = result.data
    sources = "\n".join(f"| `{src}` | {count:,} |" for src, count in stats.sources.items()) or "| (none) | 0 |"
    what = "a LoRA adapter" if config.method == "lora" else "a QLoRA adapter" if config.method == "qlora" else "a fully fine-tuned model"
    serve = (
        f"vllm serve {result.resolved_base_model} --enable-lora --lora-modules character={result.out}"
        if is_adapter
        else f"vllm serve {result.out}"
    )
    merged_line = (
        f"A merged copy (base + adapter, a plain model folder) is in `{result.merged}`: `vllm serve {result.merged}`.\n"
        if result.merged and is_adapter
        else ""
    )
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# Role-playing model fine-tuned with OpenCharacter

This folder holds {what} of **{config.base_model}**, trained with `opencharacter train` (OpenCharacter
{__version__}, TRL SFTTrainer{" + PEFT" if is_adapter else ""}) to play any character described by a persona
and a character profile. The loss was computed on the assistant answers only.

## Use it

The model expects the system prompt OpenCharacter trains with (`opencharacter.prompts.build_system_prompt`):
a persona and a character profile. `opencharacter chat` builds it for you:

```bash
opencharacter chat --model {result.out} --character "A retired lighthouse keeper who collects sea glass"
```

Serve it with vLLM and chat over the OpenAI-compatible API:

```bash
{serve}
opencharacter chat --base-url http://localhost:8000/v1 --model {"character" if is_adapter else result.out} --character ...
```

{merged_line}
## Data

| source | dialogues |
|---|---|
{sources}

- dialogues read: {stats.dialogues:,}; distinct characters: {stats.characters:,}
- training dialogues: {stats.train_dialogues:,}; held out for evaluation: {stats.eval_dialogues:,}
- skipped (prompt longer than `max_length` = {config.max_length}): {stats.skipped_too_long:,}; truncated: {stats.truncated:,}
- training tokens per epoch: {stats.train_tokens:,}, of which answer tokens (in the loss): {stats.train_answer_tokens:,}

### Licence of the data

{PERSONA_LICENCE}

## Training

Command:

```bash
{command or "(called from Python)"}
```

Settings (`opencharacter train --config` accepts this YAML as is):

```yaml
{config.to_yaml().strip()}
```

Trainable parameters: {result.trainable_params:,} of {result.total_params:,}.
{PLAIN_TEMPLATE_NOTE if result.plain_chat_template else ""}
## Results

| | |
|---|---|
| optimizer steps | {result.steps:,} |
| epochs | {result.epochs:.2f} |
| training time | {result.runtime_s:.1f} s |
| tokens trained on (this session) | {result.tokens:,} |
| throughput | {result.tokens_per_s:,.0f} tokens/s |
| first logged training loss | {_fmt(result.first_loss)} |
| final logged training loss | {_fmt(result.final_loss)} |
| mean training loss | {_fmt(result.mean_loss)} |
| evaluation loss before training | {_fmt(result.eval_loss_before)} |
| evaluation loss after training | {_fmt(result.eval_loss_after)} |
{f"| resumed from | `{result.resumed_from}` |" + chr(10) if result.resumed_from else ""}"""


def write_model_card(out: Path, config: TrainConfig, result: TrainResult, command: str) -> Path:
    path = out / "README.md"
    path.write_text(render_model_card(config, result, command), encoding="utf-8")
    return path
