"""The menu's commands: a protocol handler for `org.kanbanmesh.office:<Command>` URLs.

Commands: Summarize, Rewrite, Translate, Ask (the presets of `kanbanmesh_office.instructions`),
Stop (cancel the answers being written) and Settings. The menu dispatches them plainly;
a script may call `dispatchWithNotification` to hear when an answer is complete, and pass
`Instruction` (Ask) or `Language` (Translate) to skip the dialog. The listener's
`DispatchResultEvent.Result` is a JSON object: on success `{"task_id", "status", "result",
"inserted", "batches"}`, on failure `{"error", "title"}`.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import unohelper
from com.sun.star.frame import DispatchResultEvent, XDispatchProvider, XNotifyingDispatch
from com.sun.star.frame.DispatchResultState import DONTKNOW, FAILURE, SUCCESS
from com.sun.star.lang import XInitialization, XServiceInfo

from kanbanmesh_office.errors import OfficeError, SettingsError
from kanbanmesh_office.instructions import Preset, build_messages, instruction_for
from kanbanmesh_office.lo.config import load_settings, save_settings
from kanbanmesh_office.lo.dialogs import ask_instruction, edit_settings, message_box
from kanbanmesh_office.lo.document import AnswerInserter, current_selection
from kanbanmesh_office.lo.mainthread import Batcher, MainThread
from kanbanmesh_office.session import AnswerJob, Outcome, describe_board

log = logging.getLogger(__name__)

IMPLEMENTATION = "org.kanbanmesh.office.ProtocolHandler"
SERVICES = ("com.sun.star.frame.ProtocolHandler",)
PROTOCOL = "org.kanbanmesh.office:"
STOP = "Stop"
SETTINGS = "Settings"

_running: list[AnswerRun] = []  # touched on the main thread only


class ProtocolHandler(unohelper.Base, XDispatchProvider, XInitialization, XServiceInfo):  # type: ignore[misc]
    """Created by the frame for each command URL with our protocol."""

    def __init__(self, ctx: Any, *args: Any) -> None:
        self.ctx = ctx
        self.frame: Any = None

    def initialize(self, args: Any) -> None:
        if args:
            self.frame = args[0]

    def queryDispatch(self, url: Any, target: str, flags: int) -> Any:
        return CommandDispatch(self.ctx, self.frame) if url.Protocol == PROTOCOL else None

    def queryDispatches(self, requests: Any) -> tuple[Any, ...]:
        return tuple(self.queryDispatch(r.FeatureURL, r.FrameName, r.SearchFlags) for r in requests)

    def getImplementationName(self) -> str:
        return IMPLEMENTATION

    def supportsService(self, name: str) -> bool:
        return name in SERVICES

    def getSupportedServiceNames(self) -> tuple[str, ...]:
        return SERVICES


class CommandDispatch(unohelper.Base, XNotifyingDispatch):  # type: ignore[misc]
    def __init__(self, ctx: Any, frame: Any) -> None:
        self.ctx = ctx
        self.frame = frame

    def dispatch(self, url: Any, args: Any) -> None:
        self.dispatchWithNotification(url, args, None)

    def dispatchWithNotification(self, url: Any, args: Any, listener: Any) -> None:
        command = url.Path
        options = {arg.Name: arg.Value for arg in args or ()}
        try:
            if command == SETTINGS:
                self._settings(listener)
            elif command == STOP:
                for run in _running:
                    run.job.cancel()
                _notify(listener, self, SUCCESS, {"stopped": len(_running)})
            else:
                self._ask(Preset(command), options, listener)
        except ValueError:
            _notify(listener, self, FAILURE, {"error": f"unknown command {command!r}", "title": "kanbanmesh"})
        except OfficeError as exc:
            self._show(exc)
            _notify(listener, self, FAILURE, {"error": exc.message, "title": exc.title})

    def addStatusListener(self, listener: Any, url: Any) -> None:
        return None

    def removeStatusListener(self, listener: Any, url: Any) -> None:
        return None

    def _window(self) -> Any:
        return self.frame.getContainerWindow() if self.frame is not None else None

    def _show(self, error: OfficeError) -> None:
        message = error.message
        if isinstance(error, SettingsError) and "setting" in error.title:
            message += "\n\nOpen Mesh > Settings... to change it."
        message_box(self.ctx, self._window(), error.title, message)

    def _settings(self, listener: Any) -> None:
        chosen = edit_settings(self.ctx, self._window(), load_settings(self.ctx), describe_board)
        if chosen is None:
            _notify(listener, self, DONTKNOW, {})
            return
        save_settings(self.ctx, chosen)
        _notify(listener, self, SUCCESS, {})

    def _ask(self, preset: Preset, options: dict[str, Any], listener: Any) -> None:
        settings = load_settings(self.ctx).validated()
        document = self.frame.getController().getModel()
        selection = current_selection(document)
        argument = str(options.get("Instruction") or options.get("Language") or "")
        if preset in (Preset.TRANSLATE, Preset.ASK) and not argument:
            answer = ask_instruction(self.ctx, self._window(), preset)
            if answer is None:
                _notify(listener, self, DONTKNOW, {})
                return
            argument = answer
        messages = build_messages(instruction_for(preset, argument), selection.text)
        AnswerRun(self.ctx, self.frame, settings, messages, AnswerInserter(selection), listener, self).start()


class AnswerRun:
    """One answer being written: the job streams in a thread, the main thread inserts."""

    def __init__(
        self, ctx: Any, frame: Any, settings: Any, messages: list[dict[str, str]],
        inserter: AnswerInserter, listener: Any, source: Any,
    ) -> None:
        self.ctx = ctx
        self.frame = frame
        self.main = MainThread(ctx)
        self.inserter = inserter
        self.listener = listener
        self.source = source
        self.batcher = Batcher(self.main, inserter.insert)
        self.job = AnswerJob(settings, messages, on_chunk=self.batcher.add, on_progress=self._progress)
        self.indicator: Any = None

    def start(self) -> None:
        self.main.post(self._begin)
        threading.Thread(target=self._work, name="kanbanmesh-answer", daemon=True).start()

    def _begin(self) -> None:
        _running.append(self)
        self.indicator = self.frame.createStatusIndicator()
        self.indicator.start("kanbanmesh: connecting...", 0)

    def _progress(self, line: str) -> None:
        self.main.post(lambda: self.indicator is not None and self.indicator.setText(f"kanbanmesh: {line}"))

    def _work(self) -> None:
        try:
            outcome = self.job.run()
        except OfficeError as exc:
            error = exc
            self.main.post(lambda: self._finish(error))
        except Exception as exc:
            log.exception("kanbanmesh: the answer failed")
            unexpected = OfficeError(f"Something unexpected went wrong: {exc!r}")
            self.main.post(lambda: self._finish(unexpected))
        else:
            self.main.post(lambda: self._finish(outcome))

    def _finish(self, outcome: Outcome | OfficeError) -> None:
        self.batcher.drain()
        if self in _running:
            _running.remove(self)
        if self.indicator is not None:
            self.indicator.end()
        if isinstance(outcome, OfficeError):
            message_box(self.ctx, self.frame.getContainerWindow(), outcome.title, outcome.message)
            _notify(self.listener, self.source, FAILURE, {"error": outcome.message, "title": outcome.title})
            return
        _notify(self.listener, self.source, SUCCESS, {
            "task_id": outcome.task_id, "status": outcome.status.value, "result": outcome.text,
            "inserted": self.inserter.inserted, "batches": self.inserter.batches,
        })


def _notify(listener: Any, source: Any, state: int, result: dict[str, Any]) -> None:
    if listener is not None:
        listener.dispatchFinished(DispatchResultEvent(source, state, json.dumps(result)))
