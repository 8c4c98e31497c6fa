"""`opencharacter train`: answer-only masks, LoRA and full fine-tuning, resume, merge, model card, bad input.

Everything runs on a tiny Llama-architecture model built on the spot (no downloads) and on dialogues
synthesized by the real `synth` pipeline against the fake OpenAI-compatible server. The check on the
real Gemma 3 270M is opt-in: `pytest -m slow tests/test_train.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.prompts import build_system_prompt
from opencharacter.testing.fake_openai import FakeOpenAIServer, in_character, profile
from opencharacter.train import TrainConfig, TrainError, train
from opencharacter.train.masking import IGNORE_INDEX, mask_dialogue

runner = CliRunner()


def synthesize_run(out: Path, per_question: int = 3) -> Path:
    """A run folder written by `opencharacter synth --example` against the fake server (30 dialogues)."""

    def responder(body: dict[str, Any]) -> str:  # profiles ask for JSON, dialogues for an in-character answer
        return profile(body) if body.get("response_format") else in_character(body)

    with FakeOpenAIServer(responder=responder) as server:
        result = runner.invoke(app, [
            "synth", "--example", "--out", str(out), "--model", "fake-model", "--base-url", server.base_url,
            "--no-progress", "-k", str(per_question),
        ])
    assert result.exit_code == 0, result.output
    return out


def dialogue_text(run: Path) -> str:
    rows = [json.loads(line) for line in (run / "dialogues.jsonl").read_text().splitlines()]
    return " ".join(m["content"] for r in rows for m in r["messages"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Path:
    """The tiny Llama with a vocabulary covering the dialogues, and an output head 20x its init scale.

    With a 32-wide hidden state behind RMSNorm and a head initialised at std 0.02, no logit can pass
    ~0.6, so LoRA (which leaves the head frozen) could never get the loss much below ln(vocab). A
    larger head gives the adapters something to steer, as in a real pretrained model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tiny_model import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", extra_text=dialogue_text(run_dir))
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    return path


def fast(**overrides: Any) -> TrainConfig:
    """Small, quick settings for the tiny model."""
    values: dict[str, Any] = dict(batch_size=4, gradient_accumulation_steps=1, logging_steps=1, eval_fraction=0.1,
                                  max_length=512, save_steps=10, seed=0, lr=1e-2)
    values.update(overrides)
    return TrainConfig(**values)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# Masking


def test_masks_answers_only_with_a_template_without_generation_markers(tiny: Path) -> None:
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert not has_generation_markers(tokenizer.chat_template)  # Llama-3 style: no {% generation %} markers
    with pytest.raises(ValueError):  # ...which TRL's own assistant_only_loss cannot patch: why we mask ourselves
        get_training_chat_template(tokenizer)

    system = build_system_prompt("a good story teller", "Name: Bob\nAge: 40")  # words of the tiny vocabulary
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "hello who are you?"},
        {"role": "assistant", "content": "i am a story about life."},
        {"role": "user", "content": "what is your work?"},
        {"role": "assistant", "content": "yes, good work."},
    ]
    example = mask_dialogue(tokenizer, messages)
    # The ids are exactly what the chat template gives at inference time.
    assert example.input_ids == list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    # Contiguous runs of trained tokens: one per answer, each ending with the end-of-turn token.
    runs: list[list[int]] = []
    for i, label in enumerate(example.labels):
        if label != IGNORE_INDEX:
            assert label == example.input_ids[i]
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    decoded = [tokenizer.decode([example.input_ids[i] for i in run]) for run in runs]
    assert decoded == ["i am a story about life.<|eot_id|>", "yes, good work.<|eot_id|>"]

    masked = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX])
    assert "following persona" in masked and "hello who are you?" in masked and "what is your work?" in masked
    assert "about life" not in masked and "yes, good" not in masked  # no answer token is masked
    assert masked.count("assistant") == 2  # the role headers are prompt, not answer


def test_masks_with_the_plain_layout_of_base_models(tiny: Path) -> None:
    from transformers import AutoTokenizer

    from opencharacter.llm.local import PLAIN_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE  # what a base model without a template trains and chats with
    messages = [{"role": "system", "content": "you are bob."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yes, good work."}]
    example = mask_dialogue(tokenizer, messages)
    answer = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX])
    # Everything after the prompt's "Assistant:": the answer and the eos the layout closes it with.
    assert answer == " yes, good work.<|eot_id|>\n\n"


def test_packed_dialogues_do_not_attend_to_each_other(tiny: Path) -> None:
    """--packing relies on transformers splitting attention at position-id resets (sdpa, no cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    a, b = torch.randint(10, 60, (1, 12)), torch.randint(10, 60, (1, 9))
    with torch.no_grad():
        alone = model(input_ids=b, use_cache=False).logits
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=torch.cat([torch.arange(12), torch.arange(9)])[None],
                       use_cache=False).logits
    assert torch.allclose(packed[:, 12:], alone, atol=1e-5)


def test_released_layout_gets_the_shared_system_prompt(run_dir: Path, tmp_path: Path) -> None:
    """The released files carry no system prompt: it comes from build_system_prompt, as in chat and eval."""
    from opencharacter.train.data import read_samples

    characters = [json.loads(line) for line in (run_dir / "characters.jsonl").read_text().splitlines()]
    released = tmp_path / "synthetic_dialogue.jsonl"
    released.write_text(json.dumps({"character_id": characters[0]["character_id"], "question": "Who are you?",
                                    "character_answer": "A keeper of lights."}) + "\n")
    (tmp_path / "synthetic_character.jsonl").write_text(
        "".join(json.dumps({k: c[k] for k in ("character_id", "persona", "character")}) + "\n" for c in characters))
    samples, stats = read_samples(TrainConfig(data=[str(released)], base_model="m", out="o"))
    assert samples[0].messages == [
        {"role": "system", "content": build_system_prompt(characters[0]["persona"], characters[0]["character"])},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A keeper of lights."},
    ]
    assert stats.dialogues == 1 and stats.characters == 1


# --------------------------------------------------------------------------------------------------
# Training


def test_lora_from_the_cli_learns_merges_and_chats(
    run_dir: Path, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lora"
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump({
        "method": "lora", "max_steps": 500, "lr": 1e-2, "lora_r": 8, "lora_alpha": 16, "batch_size": 4,
        "gradient_accumulation_steps": 1, "logging_steps": 1, "eval_fraction": 0.1, "save_steps": 10, "seed": 0,
        "max_length": 512,
    }))
    args = ["train", "--config", str(config), "--data", str(run_dir), "--base-model", str(tiny), "--out", str(out),
            "--max-steps", "30", "--merge"]  # flags win over the YAML's max_steps
    monkeypatch.setattr(sys, "argv", ["opencharacter", *args])  # the command the model card records
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 30
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) >= 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # falling, not noise
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert summary["data"]["dialogues"] == 30 and summary["data"]["characters"] == 10
    assert summary["tokens_per_s"] > 0

    # The adapter: plain LoRA on linear layers, which vLLM loads as a LoRA module.
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8 and not adapter.get("modules_to_save")
    assert "lm_head" not in (adapter["target_modules"] or [])
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert list(out.glob("checkpoint-*"))

    card = (out / "README.md").read_text()
    for needle in (str(tiny), "CC BY-NC-SA 4.0", "opencharacter train", "--max-steps 30", "dialogues.jsonl",
                   "held out for evaluation: 3", "final logged training loss", "max_steps: 30"):
        assert needle in card, needle

    # The merged folder is a plain model that matches base + adapter.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), str(out)).eval()
    ids = torch.tensor([[2, 4, 106, 5, 74, 74, 76, 75, 77]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, with_adapter(ids).logits, atol=1e-4)

    # Chat loads the result (adapter folder and merged folder) in-process and answers.
    for model in (out, out / "merged"):
        reply = runner.invoke(app, ["chat", "--model", str(model), "--character", "A pirate captain who sails the sea",
                                    "--message", "hello who are you?", "--temperature", "0", "--max-tokens", "12"])
        assert reply.exit_code == 0, reply.output
        assert reply.stdout.strip()


def test_full_fine_tuning_checkpoints_refuses_to_overwrite_and_resumes(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    first = train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(out), method="full", max_steps=4, save_steps=2,
                       lr=1e-3))
    assert first.steps == 4 and first.trainable_params == first.total_params
    assert all(math.isfinite(loss) for _, loss in first.losses)
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4"]
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()

    before = digest(out)
    with pytest.raises(TrainError, match="--resume"):  # a second run into the same folder is refused...
        train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(out), method="full", max_steps=2))
    assert digest(out) == before  # ...and touches nothing

    resumed = train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(out), method="full", max_steps=6,
                         save_steps=2, lr=1e-3, resume=True))
    assert resumed.resumed_from == str(out / "checkpoint-4")
    assert resumed.steps == 6
    assert [step for step, _ in resumed.losses][-2:] == [5, 6]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_lora_with_packing(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    result = train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(tmp_path / "packed"), packing=True,
                        max_length=1024, max_steps=3, batch_size=2, eval_fraction=0.0))
    assert result.steps == 3 and result.tokens > 0
    assert all(math.isfinite(loss) for _, loss in result.losses)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing written


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (lambda tmp: tmp / "missing.jsonl", "no such file"),
        (lambda tmp: write_lines(tmp / "broken.jsonl", ['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{not json"]), "broken.jsonl:2"),
        (lambda tmp: write_lines(tmp / "no_answers.jsonl", [json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]})]), "no assistant turn"),
        (lambda tmp: tmp, "dialogues.jsonl"),  # a folder that is not a run
    ],
    ids=["missing", "malformed", "no-assistant-turns", "not-a-run-folder"],
)
def test_bad_data_is_a_clear_error(make_data: Any, message: str, tiny: Path, tmp_path: Path) -> None:
    data = make_data(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(TrainError, match=message):
        train(fast(data=[str(data)], base_model=str(tiny), out=str(out)))
    assert not out.exists()


def test_base_model_that_cannot_be_loaded(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    for base in (str(empty), str(tmp_path / "no-such-model")):
        with pytest.raises(TrainError, match="cannot load base model"):
            train(fast(data=[str(run_dir)], base_model=base, out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_qlora_needs_cuda_and_says_so(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: QLoRA can run here")
    result = runner.invoke(app, ["train", "--data", str(run_dir), "--base-model", str(tiny), "--out",
                                 str(tmp_path / "q"), "--method", "qlora"])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1
    assert "qlora needs an NVIDIA GPU with CUDA" in said and "--method lora" in said
    assert not (tmp_path / "q").exists()


def test_context_overflow_and_resume_without_checkpoint(run_dir: Path, tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="context overflow"):  # every system prompt is longer than 16 tokens
        train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(tmp_path / "o1"), max_length=16))
    assert not (tmp_path / "o1").exists()

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "notes.txt").write_text("keep me")
    with pytest.raises(TrainError, match="no checkpoint"):
        train(fast(data=[str(run_dir)], base_model=str(tiny), out=str(previous), resume=True))
    result = runner.invoke(app, ["train", "--data", str(run_dir), "--base-model", str(tiny), "--out", str(previous)])
    assert result.exit_code == 1 and "already holds files" in " ".join(result.output.split())
    assert [p.name for p in previous.iterdir()] == ["notes.txt"] and (previous / "notes.txt").read_text() == "keep me"


def test_config_file_errors(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("learning_rate: 0.1\n")
    with pytest.raises(TrainError, match=r"unknown setting.*learning_rate"):
        TrainConfig.from_sources(bad_key)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(TrainError, match="mapping"):
        TrainConfig.from_sources(not_mapping)
    with pytest.raises(TrainError, match="--base-model"):
        TrainConfig.from_sources(None, data=["x"], out="y")
    ok = tmp_path / "ok.yaml"
    ok.write_text("data: runs/x\nbase_model: m\nout: o\nepochs: 2\nmethod: full\n")
    config = TrainConfig.from_sources(ok, epochs=1.0, packing=None)
    assert config.data == ["runs/x"] and config.epochs == 1.0 and config.method == "full"
    assert config.learning_rate == 1e-5  # full fine-tuning default


def test_shipped_configs_are_valid() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(configs.glob("*.yaml"))
    assert {p.name for p in recipes} >= {"paper_full_llama3_8b.yaml", "lora.yaml", "qlora.yaml"}
    for path in recipes:
        config = TrainConfig.from_sources(path, data=["d"], base_model="m", out="o")
        assert config.method in ("lora", "qlora", "full")
    paper = TrainConfig.from_sources(configs / "paper_full_llama3_8b.yaml", data=["d"], out="o")
    assert paper.base_model == "meta-llama/Meta-Llama-3-8B-Instruct" and paper.method == "full"
    assert (paper.lr, paper.lr_end, paper.adam_beta1, paper.adam_beta2) == (1e-5, 1e-6, 0.9, 0.95)
    for name in ("deepspeed_zero3.yaml", "fsdp.yaml"):
        assert yaml.safe_load((configs / "accelerate" / name).read_text())["distributed_type"] in ("DEEPSPEED", "FSDP")


# --------------------------------------------------------------------------------------------------
# The real model (opt-in)


@pytest.mark.slow
def test_gemma3_270m_lora_learns_and_chats(request: pytest.FixtureRequest, run_dir: Path, tmp_path: Path) -> None:
    """LoRA on the real Gemma 3 270M base model (CPU: ~10 minutes). Run with: pytest -m slow."""
    if "slow" not in (request.config.getoption("markexpr") or "") and os.environ.get("OPENCHARACTER_SLOW") != "1":
        pytest.skip("opt-in: pytest -m slow (or OPENCHARACTER_SLOW=1)")
    out = tmp_path / "gemma"
    result = train(TrainConfig(data=[str(run_dir)], base_model="gemma3-270m", out=str(out), method="lora",
                               max_steps=24, batch_size=2, gradient_accumulation_steps=1, lr=2e-4,
                               max_length=512, eval_fraction=0.1, logging_steps=4, save_steps=100, seed=0))
    print(f"\ngemma3-270m LoRA: eval loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}, "
          f"train loss {result.first_loss:.3f} -> {result.final_loss:.3f}, {result.tokens_per_s:.1f} tokens/s, "
          f"{result.runtime_s:.0f} s; data: {result.data}")
    assert result.data.truncated == 0 and result.data.skipped_too_long == 0
    assert result.eval_loss_after < result.eval_loss_before

    reply = runner.invoke(app, ["chat", "--model", str(out), "--character", "A retired lighthouse keeper",
                                "--message", "How do I make a good cup of coffee at home?", "--temperature", "0",
                                "--max-tokens", "40"])
    assert reply.exit_code == 0, reply.output
    print(f"reply: {reply.stdout.strip()}")
    assert reply.stdout.strip()
