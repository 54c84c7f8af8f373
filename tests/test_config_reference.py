"""docs/config.md is the generated settings page: it matches what photon_jax.config_reference writes from
the config dataclasses today, and every field has a meaning (its comment in config.py)."""

import dataclasses
from pathlib import Path

from photon_jax import config
from photon_jax.config_reference import SECTIONS, field_comments, missing_meanings, settings_markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_settings_page_is_current():
    assert PAGE.read_text().rstrip("\n") == settings_markdown().rstrip("\n"), (
        "docs/config.md is out of date: python -m photon_jax.config_reference > docs/config.md")


def test_every_setting_has_a_meaning_and_a_row():
    assert missing_meanings() == []
    text = settings_markdown()
    for prefix, cls, _ in SECTIONS:
        for field in dataclasses.fields(cls):
            if not (cls is config.Config and dataclasses.is_dataclass(field.default)):
                assert f"| `{prefix}{field.name}` |" in text


def test_comments_above_and_at_the_end_of_a_field_both_count():
    @dataclasses.dataclass
    class Example:
        plain: int = 1
        # spans two
        # lines
        both: int = 2  # and a tail
        tail: str = "x"  # only a tail

    assert field_comments(Example) == {"plain": "", "both": "spans two lines and a tail", "tail": "only a tail"}
