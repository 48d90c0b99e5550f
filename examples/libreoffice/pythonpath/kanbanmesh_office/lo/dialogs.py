"""The extension's windows: message boxes, the instruction dialog, the settings dialog.
Built in code (no .xdl files to keep in step); call from the main thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import unohelper
from com.sun.star.awt import XActionListener
from com.sun.star.awt.MessageBoxButtons import BUTTONS_OK
from com.sun.star.awt.MessageBoxType import ERRORBOX, INFOBOX
from com.sun.star.awt.PushButtonType import CANCEL, OK

from kanbanmesh_office.errors import OfficeError
from kanbanmesh_office.instructions import Preset
from kanbanmesh_office.settings import OfficeSettings

_last_language = "English"  # the Translate dialog offers the language used last


def message_box(ctx: Any, parent: Any, title: str, message: str, *, error: bool = True) -> None:
    toolkit = ctx.ServiceManager.createInstanceWithContext("com.sun.star.awt.Toolkit", ctx)
    box = toolkit.createMessageBox(parent, ERRORBOX if error else INFOBOX, BUTTONS_OK, title, message)
    try:
        box.execute()
    finally:
        box.dispose()


class _Dialog:
    """A dialog model filled control by control (positions in dialog units)."""

    def __init__(self, ctx: Any, title: str, width: int, height: int) -> None:
        self.ctx = ctx
        self.model = ctx.ServiceManager.createInstanceWithContext("com.sun.star.awt.UnoControlDialogModel", ctx)
        self.model.Title = title
        self.model.Width, self.model.Height = width, height
        self.model.PositionX, self.model.PositionY = 60, 60
        self.dialog: Any = None

    def add(self, kind: str, name: str, x: int, y: int, width: int, height: int, **props: Any) -> Any:
        control = self.model.createInstance(f"com.sun.star.awt.UnoControl{kind}Model")
        control.PositionX, control.PositionY, control.Width, control.Height = x, y, width, height
        for key, value in props.items():
            setattr(control, key, value)
        self.model.insertByName(name, control)
        return control

    def buttons(self, y: int) -> None:
        width = self.model.Width
        self.add("Button", "Ok", width - 110, y, 50, 14, Label="OK", PushButtonType=OK, DefaultButton=True)
        self.add("Button", "Cancel", width - 55, y, 50, 14, Label="Cancel", PushButtonType=CANCEL)

    def create(self, parent: Any) -> Any:
        smgr = self.ctx.ServiceManager
        self.dialog = smgr.createInstanceWithContext("com.sun.star.awt.UnoControlDialog", self.ctx)
        self.dialog.setModel(self.model)
        toolkit = smgr.createInstanceWithContext("com.sun.star.awt.Toolkit", self.ctx)
        self.dialog.createPeer(toolkit, parent)
        return self.dialog

    def text(self, name: str) -> str:
        return str(self.dialog.getControl(name).getText())


def ask_instruction(ctx: Any, parent: Any, preset: Preset) -> str | None:
    """The language (Translate) or the instruction (Ask) from the user; None if cancelled."""
    global _last_language
    translate = preset is Preset.TRANSLATE
    dialog = _Dialog(ctx, "Translate with kanbanmesh" if translate else "Ask kanbanmesh", 230, 96 if not translate else 62)
    if translate:
        dialog.add("FixedText", "Label", 8, 8, 214, 10, Label="Translate the selected text to:")
        dialog.add("Edit", "Input", 8, 20, 214, 14, Text=_last_language)
        dialog.buttons(42)
    else:
        dialog.add("FixedText", "Label", 8, 8, 214, 10,
                   Label="What should the mesh do with the selected text?")
        dialog.add("Edit", "Input", 8, 20, 214, 46, MultiLine=True, VScroll=True,
                   Text="", HelpText="For example: Turn this into a bulleted list of action items.")
        dialog.buttons(76)
    window = dialog.create(parent)
    try:
        if window.execute() != OK:
            return None
        value = dialog.text("Input").strip()
    finally:
        window.dispose()
    if translate and value:
        _last_language = value
    return value


class _OnClick(unohelper.Base, XActionListener):  # type: ignore[misc]
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def actionPerformed(self, event: Any) -> None:
        self._fn()

    def disposing(self, event: Any) -> None:
        return None


def edit_settings(
    ctx: Any, parent: Any, settings: OfficeSettings,
    check: Callable[[OfficeSettings], tuple[str, list[str]]],
) -> OfficeSettings | None:
    """The settings dialog; returns the validated settings on OK, None on Cancel.

    `check` tries a connection with the settings in the fields and returns a line to show and
    the models the board's workers serve (they fill the model list); it raises `OfficeError`.
    """
    dialog = _Dialog(ctx, "kanbanmesh settings", 260, 150)
    rows = [
        ("Url", "Server URL:", settings.url, {}),
        ("Board", "Board:", settings.board, {}),
        ("Token", "Access token:", settings.token, {"EchoChar": ord("*")}),
    ]
    for index, (name, label, value, extra) in enumerate(rows):
        y = 8 + index * 18
        dialog.add("FixedText", f"{name}Label", 8, y + 2, 70, 10, Label=label)
        dialog.add("Edit", name, 80, y, 172, 14, Text=value, **extra)
    dialog.add("FixedText", "ModelLabel", 8, 64, 70, 10, Label="Model (empty = any):")
    dialog.add("ComboBox", "Model", 80, 62, 172, 14, Text=settings.model, Dropdown=True)
    dialog.add("FixedText", "MaxTokensLabel", 8, 82, 70, 10, Label="Longest answer:")
    dialog.add("NumericField", "MaxTokens", 80, 80, 60, 14, Value=settings.max_tokens,
               ValueMin=1, ValueMax=1_000_000, DecimalAccuracy=0, ShowThousandsSeparator=False, Spin=True)
    dialog.add("FixedText", "MaxTokensUnit", 144, 82, 40, 10, Label="tokens")
    dialog.add("Button", "Check", 8, 102, 70, 14, Label="Check connection")
    dialog.add("FixedText", "Status", 80, 100, 172, 24, MultiLine=True, Label="")
    dialog.buttons(130)
    window = dialog.create(parent)

    def read() -> OfficeSettings:
        return OfficeSettings(
            url=dialog.text("Url"), board=dialog.text("Board"), token=dialog.text("Token"),
            model=dialog.text("Model"), max_tokens=int(window.getControl("MaxTokens").getValue()),
        ).validated()

    def on_check() -> None:
        status = window.getControl("Status")
        try:
            line, models = check(read())
        except OfficeError as exc:
            status.setText(exc.message)
            return
        status.setText(line)
        combo = window.getControl("Model")
        combo.removeItems(0, combo.getItemCount())
        combo.addItems(("", *models), 0)

    window.getControl("Check").addActionListener(_OnClick(on_check))
    try:
        while window.execute() == OK:
            try:
                return read()
            except OfficeError as exc:
                message_box(ctx, window.getPeer(), exc.title, exc.message)
        return None
    finally:
        window.dispose()
