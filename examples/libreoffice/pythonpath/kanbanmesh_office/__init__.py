"""The kanbanmesh extension for LibreOffice Writer.

The modules at this level are plain Python (no UNO): what to ask the mesh, the settings,
streaming an answer with the kanbanmesh SDK, and what a user is told when that fails. They
are tested with the project's interpreter. `kanbanmesh_office.lo` is the thin UNO layer that
only runs inside LibreOffice: menu commands, dialogs, the registry, the document.
"""

from __future__ import annotations

from kanbanmesh_office.errors import OfficeError, SettingsError
from kanbanmesh_office.instructions import Preset, build_messages, instruction_for
from kanbanmesh_office.session import AnswerJob, Outcome, describe_board, explain
from kanbanmesh_office.settings import OfficeSettings
from kanbanmesh_office.text import PARAGRAPH_BREAK, answer_pieces, selection_text

__all__ = [
    "PARAGRAPH_BREAK",
    "AnswerJob",
    "OfficeError",
    "OfficeSettings",
    "Outcome",
    "Preset",
    "SettingsError",
    "answer_pieces",
    "build_messages",
    "describe_board",
    "explain",
    "instruction_for",
    "selection_text",
]
