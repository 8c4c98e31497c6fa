"""`train(config)`: TRL's SFTTrainer + PEFT on OpenCharacter dialogues, with checks first.

Order matters for "bad input leaves existing outputs intact": settings, output folder, method
support, data and the base model are all checked before the trainer writes its first file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opencharacter.train.card import write_model_card
from opencharacter.train.config import TrainConfig, TrainError
from opencharacter.train.data import DataStats, build_datasets
from opencharacter.train.masking import end_of_turn_token_id

SUMMARY_FILE = "train_summary.json"
MERGED_DIR = "merged"


@dataclass
class TrainResult:
    """What a run did: printed at the end, written to `train_summary.json` and the model card."""

    out: str
    method: str
    base_model: str
    resolved_base_model: str
    steps: int = 0
    epochs: float = 0.0
    runtime_s: float = 0.0
    tokens: int = 0  # tokens processed this session (padding excluded)
    tokens_per_s: float = 0.0
    first_loss: float | None = None
    final_loss: float | None = None
    mean_loss: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    resumed_from: str | None = None
    merged: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, logged training loss)
    data: DataStats = field(default_factory=DataStats)
    trainable_params: int = 0
    total_params: int = 0
    plain_chat_template: bool = False  # the base had no chat template; the plain layout was added

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Checks that run before anything is written


def checkpoints_in(out: Path) -> list[Path]:
    """`checkpoint-N` folders in `out`, oldest first."""
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def check_output_folder(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None; refuses to write over a previous run."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} is a file, not a folder")
    found = checkpoints_in(out)
    if resume:
        if not found:
            raise TrainError(f"--resume: no checkpoint-* folder in {out} to resume from")
        return found[-1]
    if out.is_dir() and any(out.iterdir()):
        raise TrainError(
            f"--out {out} already holds files ({', '.join(sorted(p.name for p in out.iterdir())[:5])}); pass "
            "--resume to continue from its last checkpoint, or choose a new --out (nothing was changed)"
        )
    return None


def check_method(method: str) -> None:
    """QLoRA's 4-bit kernels (bitsandbytes) need CUDA: say so before loading anything."""
    if method != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise TrainError(
            "--method qlora needs an NVIDIA GPU with CUDA: its 4-bit base model runs on bitsandbytes' CUDA "
            "kernels, and no CUDA device is visible here. Use --method lora (same adapters, 16/32-bit base) "
            "or run on a GPU machine with `pip install bitsandbytes`."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TrainError("--method qlora needs bitsandbytes: pip install bitsandbytes") from exc


# --------------------------------------------------------------------------------------------------
# Loading the base model


def resolve_base_model(name: str) -> str:
    """A local folder for aliases such as `gemma3-270m` (via the transformers backend), else `name`."""
    try:
        from opencharacter.llm.local import resolve_model_path
    except ImportError:  # the local backend is optional
        return name
    try:
        return str(resolve_model_path(name))
    except Exception as exc:
        raise TrainError(f"cannot load base model {name!r}: {exc}") from exc


def load_tokenizer(path: str, name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # OSError, ValueError, HFValidationError, JSON errors...
        raise TrainError(f"cannot load base model {name!r}: its tokenizer failed to load ({exc})") from exc
    if tokenizer.pad_token is None:  # Llama 3 ships none; padding is masked out of the loss anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a base model without a chat template the plain layout the transformers backend serves it with.

    Saved with the tokenizer into `out`, so training and chat render dialogues the same way.
    Returns True when the template was added.
    """
    if getattr(tokenizer, "chat_template", None):
        return False
    try:
        from opencharacter.llm.local import PLAIN_CHAT_TEMPLATE
    except ImportError:
        return False  # masking then says clearly that a chat template is needed
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


def load_model(path: str, name: str, config: TrainConfig, bf16: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise TrainError(f"cannot load base model {name!r}: {exc}") from exc
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing_enabled(config))
    return model


def set_stop_tokens(model: Any, tokenizer: Any) -> None:
    """Make generation stop at the template's end-of-turn token as well as at `eos_token`.

    Many base models (Gemma 3, Llama 3 base) end an answer with a token that is not their eos;
    a model trained on our answers learns to emit it, so the saved generation config must stop there.
    """
    eot = end_of_turn_token_id(tokenizer)
    config = getattr(model, "generation_config", None)
    if eot is None or config is None:
        return
    current = config.eos_token_id
    ids = [] if current is None else [current] if isinstance(current, int) else list(current)
    if eot not in ids:
        config.eos_token_id = [*ids, eot] if ids else eot
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id


# --------------------------------------------------------------------------------------------------
# TRL settings


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_enabled(config: TrainConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def checkpointing_enabled(config: TrainConfig) -> bool:
    """Gradient checkpointing: as set, else on with CUDA except under FSDP (configs/accelerate/fsdp.yaml
    checkpoints activations itself, and transformers refuses both at once)."""
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    under_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    return use_cuda() and not under_fsdp


def sft_config(config: TrainConfig, has_eval: bool, bf16: bool) -> Any:
    """Map our settings onto TRL's `SFTConfig` (a `transformers.TrainingArguments`)."""
    from trl import SFTConfig

    scheduler, scheduler_kwargs = "linear", {}
    if config.lr_end:  # linear decay to lr_end: the polynomial schedule with power 1
        scheduler, scheduler_kwargs = "polynomial", {"lr_end": config.lr_end, "power": 1.0}
    checkpointing = checkpointing_enabled(config)
    return SFTConfig(
        output_dir=config.out,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        optim="adamw_torch",
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        activation_checkpointing=checkpointing,  # transformers 5's name for gradient checkpointing
        bf16=bf16,
        fp16=False,
        max_length=config.max_length,
        packing=config.packing,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to,
        disable_tqdm=False,
        dataloader_pin_memory=use_cuda(),  # pinning is for host→GPU copies; on CPU it only warns
    )


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------------------------------
# The run


def check_training_packages() -> None:
    """Training needs the `train` extra; say so before anything else fails on a missing import."""
    import importlib.util

    missing = [name for name in ("torch", "transformers", "trl", "peft", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise TrainError(f"training needs {', '.join(missing)}: pip install 'opencharacter[train]' "
                         "(on a CPU-only machine install torch==2.13.0 first, or your own torch build)")


def train(config: TrainConfig, command: str = "") -> TrainResult:
    """Fine-tune `config.base_model` on `config.data` into `config.out`; see `TrainConfig`."""
    check_training_packages()
    config.validate()
    out = Path(config.out).expanduser()
    resume_from = check_output_folder(out, config.resume)
    check_method(config.method)

    resolved = resolve_base_model(config.base_model)
    tokenizer = load_tokenizer(resolved, config.base_model)
    added_template = ensure_chat_template(tokenizer)
    train_ds, eval_ds, stats = build_datasets(config, tokenizer)
    bf16 = bf16_enabled(config)
    model = load_model(resolved, config.base_model, config, bf16)

    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=sft_config(config, eval_ds is not None, bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.method != "full" else None,
    )
    result = TrainResult(
        out=str(out), method=config.method, base_model=config.base_model, resolved_base_model=resolved, data=stats,
        resumed_from=str(resume_from) if resume_from else None, plain_chat_template=added_template,
    )
    result.trainable_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result.total_params = sum(p.numel() for p in trainer.model.parameters())
    if eval_ds is not None and resume_from is None:
        result.eval_loss_before = trainer.evaluate().get("eval_loss")

    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    elapsed = time.perf_counter() - started
    if eval_ds is not None:
        result.eval_loss_after = trainer.evaluate().get("eval_loss")

    set_stop_tokens(trainer.model.get_base_model() if config.method != "full" else trainer.model, tokenizer)
    trainer.save_model(str(out))  # every process: ZeRO-3 and FSDP gather the shards here
    _fill_metrics(result, trainer, output.metrics, elapsed)
    if not trainer.is_world_process_zero():  # under `accelerate launch`, one process writes the rest
        return result
    if config.method != "full":  # the adapter folder has no generation config of its own; keep the stop tokens
        trainer.model.get_base_model().generation_config.save_pretrained(str(out))
        name_base_model(out, config.base_model, resolved)
    if config.merge:
        if config.method == "full":
            result.merged = str(out)  # a full fine-tune already is a plain model folder
        else:
            del trainer, model
            result.merged = str(merge_adapter(out, resolved, tokenizer))
    write_model_card(out, config, result, command)
    (out / SUMMARY_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def _fill_metrics(result: TrainResult, trainer: Any, metrics: dict[str, Any], elapsed: float) -> None:
    state = trainer.state
    result.steps = int(state.global_step)
    result.epochs = float(state.epoch or 0.0)
    result.runtime_s = float(metrics.get("train_runtime", elapsed))
    result.losses = [(int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e]
    if result.losses:
        result.first_loss, result.final_loss = result.losses[0][1], result.losses[-1][1]
    if "train_loss" in metrics:
        result.mean_loss = float(metrics["train_loss"])
    # TRL counts the non-padding tokens it trains on; it restarts at 0 in a resumed session.
    tokens = getattr(trainer, "_total_train_tokens", None)
    if tokens is None:
        tokens = max((int(e.get("num_tokens", 0)) for e in state.log_history), default=0)
    result.tokens = int(tokens)
    result.tokens_per_s = result.tokens / result.runtime_s if result.runtime_s > 0 else 0.0


def name_base_model(out: Path, given: str, resolved: str) -> None:
    """Record an alias (`gemma3-270m`) as the adapter's base, not this machine's cache folder.

    The in-process backend resolves aliases anywhere; a path under one user's cache does not travel.
    """
    path = out / "adapter_config.json"
    if given == resolved or Path(given).expanduser().exists() or not path.is_file():
        return
    adapter = json.loads(path.read_text(encoding="utf-8"))
    if adapter.get("base_model_name_or_path") == resolved:
        adapter["base_model_name_or_path"] = given
        path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def merge_adapter(out: Path, base_path: str, tokenizer: Any) -> Path:
    """Base + the LoRA adapter in `out`, merged into `out/merged/`: a plain model folder for vLLM/transformers.

    The base is reloaded in its own dtype (not 4-bit, even after QLoRA), and the folder is written
    next to its final place first, so an interrupted merge never leaves a half-written `merged/`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    merged.generation_config = GenerationConfig.from_pretrained(str(out))
    partial, final = out / f"{MERGED_DIR}.partial", out / MERGED_DIR
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final
