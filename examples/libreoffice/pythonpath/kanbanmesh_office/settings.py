"""The extension's settings: where the mesh is and what to ask it for."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from kanbanmesh_office.errors import SettingsError

# The server's own rule (kanbanmesh.board.constants.BOARD_NAME_PATTERN), copied so that this
# module imports nothing of the SDK. tests/libreoffice pins that the two agree.
BOARD_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_TOKENS_LIMIT = 1_000_000  # the task schema's bound on params.max_tokens


@dataclass(frozen=True)
class OfficeSettings:
    """The settings dialog's fields, stored in LibreOffice's registry
    (`/org.kanbanmesh.office.Settings/Connection`)."""

    url: str = "ws://127.0.0.1:8765"  # the server, as for `kanbanmesh submit --url`
    board: str = "default"
    token: str = ""  # an access token, for a server with auth on ("" = none)
    model: str = ""  # "" = any worker's model
    max_tokens: int = 512  # the longest answer, in tokens

    def validated(self) -> OfficeSettings:
        """These settings with blanks trimmed, or a `SettingsError` saying what to fix."""
        fixed = replace(
            self, url=self.url.strip().rstrip("/"), board=self.board.strip(),
            token=self.token.strip(), model=self.model.strip(),
        )
        parts = urlsplit(fixed.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise SettingsError(
                f"The server URL must look like ws://HOST:PORT (or wss://...), not {fixed.url!r}.",
                title="kanbanmesh settings",
            )
        if parts.path not in ("", "/") or parts.query:
            raise SettingsError(
                "The server URL is ws://HOST:PORT only: put the board name in the Board field "
                "and the token in the Token field.",
                title="kanbanmesh settings",
            )
        if not re.match(BOARD_NAME_PATTERN, fixed.board):
            raise SettingsError(
                f"The board name {fixed.board!r} is not valid: letters, digits, '_', '.' and '-', "
                "starting with a letter or digit, at most 64 characters.",
                title="kanbanmesh settings",
            )
        if not 1 <= fixed.max_tokens <= MAX_TOKENS_LIMIT:
            raise SettingsError(
                f"The answer length must be between 1 and {MAX_TOKENS_LIMIT:,} tokens.",
                title="kanbanmesh settings",
            )
        return fixed
