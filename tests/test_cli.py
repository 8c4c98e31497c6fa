"""Command-line behaviour shared by every command."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from opencharacter.cli import app

runner = CliRunner()


def test_every_command_teaches_with_an_example() -> None:
    for command in (["synth"], ["profiles"], ["dialogues"], ["ditto"], ["export"], ["stats"], ["train"], ["chat"],
                    ["eval", "personagym"], ["eval", "mtbench-roleplay"], ["eval", "rolebench"],
                    ["eval", "roleplay-judge"], ["eval", "compare"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        needle = "opencharacter " + " ".join(command)
        assert result.output.count(needle) >= 2, command  # the usage line, and at least one example


def test_error_text_keeps_square_brackets(tmp_path: Path) -> None:
    missing = tmp_path / "personas[local].jsonl"
    result = runner.invoke(app, ["profiles", "--personas", str(missing), "--out", str(tmp_path / "r"), "--model", "m",
                                 "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 1
    assert f"{missing}: no such file" in result.output
