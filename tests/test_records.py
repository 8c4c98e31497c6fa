from __future__ import annotations

import pytest
from pydantic import ValidationError

from opencharacter.engine.runner import InvalidOutput
from opencharacter.jsontext import extract_json_object
from opencharacter.pipelines.profiles import parse_profile
from opencharacter.prompts import Prompts, build_system_prompt
from opencharacter.records import Profile, character_id_for, dialogue_id_for

PROFILE = {
    "name": "Maeve O'Connor", "age": 52, "gender": "Female", "race": "White Irish", "born_place": "Ennis, Ireland",
    "appearance": "Weathered hands.", "general_experience": "Kept bees for thirty years.", "personality": "Warm.",
}


def test_profile_round_trips_through_the_labelled_layout() -> None:
    profile = Profile.model_validate(PROFILE)
    assert profile.age == "52"  # numbers become text
    text = profile.to_text()
    assert text.splitlines()[0] == "Name: Maeve O'Connor"
    assert "Born Place: Ennis, Ireland" in text
    assert Profile.from_text(text) == profile


def test_labelled_layout_tolerates_markdown_and_multiline_values() -> None:
    text = "Here you go:\n**Name:** Ana\n- **Age**: 30\nGender: F\nRace: Latina\nBorn Place: Lima\n" \
           "Appearance: Tall.\nGeneral Experience: Grew up in Lima.\nMoved to Quito.\nPersonality: Calm."
    profile = Profile.from_text(text)
    assert profile.name == "Ana" and profile.age == "30"
    assert profile.general_experience == "Grew up in Lima. Moved to Quito."


def test_empty_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Profile.model_validate({**PROFILE, "personality": "   "})


@pytest.mark.parametrize("text", [
    '{"a": 1}',
    'Sure! ```json\n{"a": 1}\n```',
    'The profile is {"a": 1} as requested.',
    '```\n{"a": 1}\n```\nand {"b": 2}',
])
def test_extract_json_object_finds_the_object(text: str) -> None:
    assert extract_json_object(text) == {"a": 1}


def test_extract_json_object_explains_truncation() -> None:
    with pytest.raises(ValueError, match="cut off"):
        extract_json_object('{"name": "Ana", "age": ')


def test_parse_profile_accepts_json_with_label_style_keys_and_rejects_garbage() -> None:
    labelled_keys = {("Born Place" if k == "born_place" else "General Experience" if k == "general_experience" else k.title()): v
                     for k, v in PROFILE.items()}
    assert parse_profile("```json\n" + __import__("json").dumps(labelled_keys) + "\n```").born_place == "Ennis, Ireland"
    with pytest.raises(InvalidOutput, match="not a valid profile"):
        parse_profile('{"name": "Ana"}')


def test_ids_are_stable_and_normalised() -> None:
    assert character_id_for("A  Nurse in Lagos ") == character_id_for("a nurse in lagos")
    assert dialogue_id_for("c", "q", "generate") != dialogue_id_for("c", "q", "rewrite")


def test_persona_text_is_data_not_template_source(tmp_path) -> None:
    prompt = build_system_prompt("I love {{ 7*7 }} and {% raw %}", "Name: {{ config }}")
    assert "{{ 7*7 }}" in prompt and "49" not in prompt
    assert "Name: {{ config }}" in prompt
    (tmp_path / "system.j2").write_text("Custom: {{ persona }}")
    assert build_system_prompt("p", "c", Prompts(tmp_path)) == "Custom: p"
