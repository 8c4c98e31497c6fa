"""export: every format round-trips through load_chat_samples, in JSONL and Parquet; CLI and Hub push."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencharacter.cli import app
from opencharacter.io import export as export_mod
from opencharacter.io.chat_data import load_chat_samples
from opencharacter.io.export import (
    SHAREGPT_DATASET_INFO,
    ExportError,
    ExportFormat,
    export,
    push_to_hub,
    write_dataset_info,
)
from opencharacter.io.readers import InputError
from test_chat_data import make_release, make_run, write_jsonl

runner = CliRunner()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_every_format_round_trips(tmp_path: Path, fmt: ExportFormat, suffix: str) -> None:
    _, dialogues = make_run(tmp_path / "run", strategies=("generate", "rewrite"))
    out = tmp_path / "out" / f"train{suffix}"
    result = export(tmp_path / "run", out, fmt)
    assert result.rows == len(dialogues) and out.exists()
    assert not list(out.parent.glob(".*.tmp"))
    samples = list(load_chat_samples(out))
    assert [s.messages for s in samples] == [d.messages for d in dialogues]
    if fmt is ExportFormat.MESSAGES:  # the only format that keeps the ids
        assert [s.sample_id for s in samples] == [d.dialogue_id for d in dialogues]
        assert [s.character_id for s in samples] == [d.character_id for d in dialogues]
    assert (result.dataset_info is not None) == (fmt is ExportFormat.SHAREGPT)


def test_line_shapes(tmp_path: Path) -> None:
    _, dialogues = make_run(tmp_path / "run")
    d = dialogues[0]
    export(tmp_path / "run", tmp_path / "openai.jsonl", "openai")
    assert read_lines(tmp_path / "openai.jsonl")[0] == {"messages": d.messages}
    export(tmp_path / "run", tmp_path / "messages.jsonl", "messages")
    assert read_lines(tmp_path / "messages.jsonl")[0] == {
        "messages": d.messages, "sample_id": d.dialogue_id, "character_id": d.character_id}
    export(tmp_path / "run", tmp_path / "sg.jsonl", "sharegpt")
    assert read_lines(tmp_path / "sg.jsonl")[0] == {
        "conversations": [{"from": "human", "value": d.question}, {"from": "gpt", "value": d.character_answer}],
        "system": d.messages[0]["content"],
    }
    table = pq.read_table(export(tmp_path / "run", tmp_path / "sg.parquet", "sharegpt").path)
    assert table.column_names == ["conversations", "system"]
    assert table.slice(0, 1).to_pylist()[0] == read_lines(tmp_path / "sg.jsonl")[0]


def test_converts_the_released_files(tmp_path: Path) -> None:
    _, dialogues = make_release(tmp_path / "release")
    result = export(tmp_path / "release" / "synthetic_dialogue.jsonl", tmp_path / "oc.parquet", "messages")
    assert result.rows == len(dialogues)
    assert [s.messages for s in load_chat_samples(tmp_path / "oc.parquet")] == [d.messages for d in dialogues]


def test_parquet_is_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "PARQUET_BATCH_ROWS", 4)
    _, dialogues = make_run(tmp_path / "run", strategies=("generate", "rewrite"))  # 18 rows
    export(tmp_path / "run", tmp_path / "t.parquet", "messages")
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert meta.num_rows == len(dialogues) == 18 and meta.num_row_groups == 5


def test_dataset_info_merges_with_other_entries(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    info_path = tmp_path / "data" / "dataset_info.json"
    info_path.parent.mkdir()
    alpaca = {"file_name": "alpaca_en.json", "columns": {"prompt": "instruction", "response": "output"}}
    info_path.write_text(json.dumps({"alpaca_en": alpaca, "roleplay": {"file_name": "old.json"}}), encoding="utf-8")
    export(tmp_path / "run", tmp_path / "data" / "roleplay.jsonl", "sharegpt")
    export(tmp_path / "run", tmp_path / "data" / "roleplay_pq.parquet", "sharegpt")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["alpaca_en"] == alpaca
    assert info["roleplay"] == {"file_name": "roleplay.jsonl", **SHAREGPT_DATASET_INFO}
    assert info["roleplay_pq"]["file_name"] == "roleplay_pq.parquet"
    assert info["roleplay"]["columns"] == {"messages": "conversations", "system": "system"}
    assert info["roleplay"]["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    assert write_dataset_info(tmp_path / "data" / "x.jsonl", name="custom").name == "dataset_info.json"
    assert "custom" in json.loads(info_path.read_text(encoding="utf-8"))


def test_broken_dataset_info_is_left_alone(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text('{"alpaca_en": ', encoding="utf-8")
    with pytest.raises(ExportError, match=r"dataset_info.json:1: invalid JSON"):
        export(tmp_path / "run", tmp_path / "sg.jsonl", "sharegpt")
    assert info_path.read_text(encoding="utf-8") == '{"alpaca_en": '


def test_bad_output_suffix_and_bad_rows_leave_no_file(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    with pytest.raises(ExportError, match=r"must end in .jsonl or .parquet"):
        export(tmp_path / "run", tmp_path / "out.csv", "messages")
    rows = read_lines(tmp_path / "run" / "dialogues.jsonl")
    rows[4]["messages"] = rows[4]["messages"][:2]  # no assistant turn
    write_jsonl(tmp_path / "run" / "dialogues.jsonl", rows)
    for suffix in (".jsonl", ".parquet"):
        with pytest.raises(InputError, match=r"dialogues.jsonl:5: no assistant turn"):
            export(tmp_path / "run", tmp_path / f"out{suffix}", "messages")
        assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_sharegpt_refuses_non_alternating_turns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"messages": [
        {"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Yo."}]}])
    with pytest.raises(InputError, match=r"in.jsonl:1: ShareGPT needs turns alternating .* turn 2 is 'user'"):
        export(path, tmp_path / "sg.jsonl", "sharegpt")
    assert export(path, tmp_path / "ok.jsonl", "openai").rows == 1  # the other formats take it


def test_push_needs_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    make_run(tmp_path / "run")
    out = export(tmp_path / "run", tmp_path / "t.jsonl", "messages").path
    with pytest.raises(ExportError, match=r"needs a Hugging Face write token in \$HF_TOKEN"):
        push_to_hub(out, "me/demo")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(ExportError, match=r"owner/name"):
        push_to_hub(out, "demo")


@pytest.mark.parametrize(("fmt", "suffix"), [("sharegpt", ".jsonl"), ("messages", ".parquet")])
def test_push_builds_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, suffix: str) -> None:
    datasets = pytest.importorskip("datasets")
    _, dialogues = make_run(tmp_path / "run")
    out = export(tmp_path / "run", tmp_path / f"t{suffix}", fmt).path
    pushed: dict[str, Any] = {}

    def fake_push(self: Any, repo_id: str, **kwargs: Any) -> None:  # the network call, replaced
        pushed.update(dataset=self, repo_id=repo_id, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    url = push_to_hub(out, "me/demo", private=True, cache_dir=tmp_path / "cache")
    assert url == "https://huggingface.co/datasets/me/demo"
    assert pushed["repo_id"] == "me/demo" and pushed["private"] is True and pushed["token"] == "hf_test"
    dataset = pushed["dataset"]
    assert dataset.num_rows == len(dialogues)
    if fmt == "sharegpt":
        assert set(dataset.column_names) == {"conversations", "system"}
        assert dataset[0]["conversations"][1] == {"from": "gpt", "value": dialogues[0].character_answer}
    else:
        assert dataset.column_names == ["messages", "sample_id", "character_id"]
        assert dataset[0]["messages"] == dialogues[0].messages


def test_cli_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output and "opencharacter export runs/demo --format sharegpt" in result.output
    _, dialogues = make_run(tmp_path / "run")
    out = tmp_path / "sg.jsonl"
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "sharegpt", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {len(dialogues)} rows" in result.output and (tmp_path / "dataset_info.json").exists()
    assert len(read_lines(out)) == len(dialogues)

    make_release(tmp_path / "release")
    (tmp_path / "release" / "synthetic_character.jsonl").rename(tmp_path / "chars.jsonl")
    result = runner.invoke(app, ["export", str(tmp_path / "release" / "synthetic_dialogue.jsonl"),
                                 "--characters", str(tmp_path / "chars.jsonl"), "-o", str(tmp_path / "oc.parquet")])
    assert result.exit_code == 0, result.output
    assert len(list(load_chat_samples(tmp_path / "oc.parquet"))) == len(dialogues)


def test_cli_export_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    make_run(tmp_path / "run")
    cases = [
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o.jsonl")], "no such file or folder"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "o.txt")], "must end in .jsonl or .parquet"),
        (["export", str(tmp_path / "run"), "--out", str(tmp_path / "o.jsonl"), "--push-to-hub", "me/demo"], "HF_TOKEN"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "o.jsonl"), "--format", "alpaca"])
    assert result.exit_code == 2  # typer rejects an unknown --format


def test_cli_export_unwritable_output(tmp_path: Path) -> None:
    make_run(tmp_path / "run")
    (tmp_path / "blocker").write_text("a file, not a folder", encoding="utf-8")
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "blocker" / "o.jsonl")])
    assert result.exit_code == 1 and "error:" in result.output and "blocker" in result.output
