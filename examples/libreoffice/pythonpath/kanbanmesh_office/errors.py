"""What goes wrong, as a user is told it: a title and a sentence or two, for a message box.

    OfficeError             anything the extension reports to the user
    └── SettingsError       a setting, instruction or selection the user must change
"""

from __future__ import annotations


class OfficeError(Exception):
    """Raised for anything the extension reports in a message box."""

    def __init__(self, message: str, *, title: str = "kanbanmesh") -> None:
        super().__init__(message)
        self.title = title
        self.message = message


class SettingsError(OfficeError):
    """Raised when the user must change a setting, the instruction or the selection."""
