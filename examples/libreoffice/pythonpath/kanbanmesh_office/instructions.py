"""What is asked of the mesh: an instruction and the user's text, as chat messages."""

from __future__ import annotations

from enum import Enum

from kanbanmesh_office.errors import SettingsError

SYSTEM_PROMPT = (
    "You are a writing assistant inside a word processor. Reply with the requested text only: "
    "no preamble, no explanation, no quotes around it."
)


class Preset(str, Enum):
    """The menu's commands (the part after `org.kanbanmesh.office:` in their URL)."""

    SUMMARIZE = "Summarize"  # a short summary of the text
    REWRITE = "Rewrite"  # the same meaning, clearer
    TRANSLATE = "Translate"  # into a language the user names
    ASK = "Ask"  # any instruction the user types


_FIXED = {
    Preset.SUMMARIZE: "Summarize the following text in a few sentences.",
    Preset.REWRITE: "Rewrite the following text so that it reads clearly and concisely, keeping its meaning.",
}


def instruction_for(preset: Preset, argument: str = "") -> str:
    """The instruction sentence of a preset; `argument` is the language (Translate) or the
    user's own instruction (Ask).

    Raises:
        SettingsError: Translate without a language, or Ask without an instruction.
    """
    argument = argument.strip()
    if preset in _FIXED:
        return _FIXED[preset]
    if not argument:
        what = "a language to translate to" if preset is Preset.TRANSLATE else "an instruction"
        raise SettingsError(f"Please give {what}.")
    if preset is Preset.TRANSLATE:
        return f"Translate the following text to {argument}."
    return argument


def build_messages(instruction: str, text: str) -> list[dict[str, str]]:
    """The task's chat messages: the assistant's brief, then the instruction and the text
    in one user turn."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{instruction.strip()}\n\n{text}"},
    ]
