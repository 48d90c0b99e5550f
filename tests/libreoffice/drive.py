"""Drive a running LibreOffice over its UNO pipe, as a user of the Mesh menu would: open a
document, select text, store the extension's settings, run a Mesh command, save the result.

Run with LibreOffice's Python (it has `uno`), not the project's:

    /usr/bin/python3 tests/libreoffice/drive.py PIPE REQUEST.json
    /usr/bin/python3 tests/libreoffice/drive.py PIPE --quit

REQUEST: {"paragraphs": [...] (the new document's text), "output", "command", "args": {...}, "settings": {...} | null,
          "select": {"paragraph": i, "start": a, "end": b} (end null: no selection, the
          cursor at `start`), "stop_after": n | null, "timeout_s"}
Prints one JSON line: {"state": "success"|"failure"|"dontknow", "result": {...},
"modifications": n, "selection": the selected text afterwards} (modifications: document
change events while the answer came in).
"""

import json
import sys
import threading
import time

import uno
import unohelper
from com.sun.star.beans import PropertyValue
from com.sun.star.frame import XDispatchResultListener
from com.sun.star.frame.DispatchResultState import FAILURE, SUCCESS
from com.sun.star.text.ControlCharacter import PARAGRAPH_BREAK
from com.sun.star.util import XModifyListener

NODE = "/org.kanbanmesh.office.Settings/Connection"
SETTING_NAMES = {"url": "Url", "board": "Board", "token": "Token", "model": "Model", "max_tokens": "MaxTokens"}


def connect(pipe, timeout_s):
    local = uno.getComponentContext()
    resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return resolver.resolve(f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext")
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # LibreOffice is still starting: no event to wait on across processes


def prop(name, value):
    return PropertyValue(name, 0, value, 0)


def store_settings(ctx, settings):
    provider = ctx.ServiceManager.createInstanceWithContext("com.sun.star.configuration.ConfigurationProvider", ctx)
    access = provider.createInstanceWithArguments(
        "com.sun.star.configuration.ConfigurationUpdateAccess", (prop("nodepath", NODE),))
    for key, value in settings.items():
        if isinstance(value, int):
            uno.invoke(access, "replaceByName", (SETTING_NAMES[key], uno.Any("long", value)))
        else:
            access.replaceByName(SETTING_NAMES[key], value)
    access.commitChanges()


def write(document, paragraphs):
    body = document.getText()
    cursor = body.createTextCursor()
    for index, paragraph in enumerate(paragraphs):
        if index:
            body.insertControlCharacter(cursor, PARAGRAPH_BREAK, False)
        body.insertString(cursor, paragraph, False)


def select(document, spec):
    body = document.getText()
    paragraphs = body.createEnumeration()
    for _ in range(spec["paragraph"]):
        paragraphs.nextElement()
    paragraph = paragraphs.nextElement()
    cursor = body.createTextCursorByRange(paragraph.getStart())
    cursor.goRight(spec["start"], False)
    if spec.get("end") is not None:
        cursor.goRight(spec["end"] - spec["start"], True)
    document.getCurrentController().select(cursor)


class Finished(unohelper.Base, XDispatchResultListener):
    def __init__(self):
        self.done = threading.Event()
        self.event = None

    def dispatchFinished(self, event):
        self.event = event
        self.done.set()

    def disposing(self, source):
        pass


class Changes(unohelper.Base, XModifyListener):
    def __init__(self, stop_after):
        self.count = 0
        self.stop_after = stop_after
        self.reached = threading.Event()

    def modified(self, event):
        self.count += 1
        if self.stop_after is not None and self.count >= self.stop_after:
            self.reached.set()

    def disposing(self, source):
        pass


def dispatch(ctx, frame, command, args, listener):
    transformer = ctx.ServiceManager.createInstanceWithContext("com.sun.star.util.URLTransformer", ctx)
    url = uno.createUnoStruct("com.sun.star.util.URL")
    url.Complete = f"org.kanbanmesh.office:{command}"
    _, url = transformer.parseStrict(url)
    target = frame.queryDispatch(url, "", 0)
    if target is None:
        raise RuntimeError(f"no dispatch for {url.Complete}: the extension is not installed")
    properties = tuple(prop(name, value) for name, value in args.items())
    if listener is None:
        target.dispatch(url, properties)
    else:
        target.dispatchWithNotification(url, properties, listener)


def quit_office(pipe):
    ctx = connect(pipe, 5)
    ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", ctx).terminate()


def main(pipe, request_path):
    with open(request_path) as f:
        request = json.load(f)
    timeout_s = request.get("timeout_s", 60)
    ctx = connect(pipe, timeout_s)
    desktop = ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
    if request.get("settings"):
        store_settings(ctx, request["settings"])
    document = desktop.loadComponentFromURL("private:factory/swriter", "_blank", 0, (prop("Hidden", True),))
    try:
        write(document, request["paragraphs"])
        select(document, request["select"])
        changes = Changes(request.get("stop_after"))
        document.addModifyListener(changes)
        document.setModified(False)
        frame = document.getCurrentController().getFrame()
        finished = Finished()
        dispatch(ctx, frame, request["command"], request.get("args", {}), finished)
        if request.get("stop_after") is not None and changes.reached.wait(timeout_s):
            dispatch(ctx, frame, "Stop", {}, None)
        if not finished.done.wait(timeout_s):
            raise TimeoutError(f"the Mesh command did not finish within {timeout_s} s")
        document.removeModifyListener(changes)
        document.storeToURL(uno.systemPathToFileUrl(request["output"]), (prop("FilterName", "writer8"),))
        selected = document.getCurrentController().getSelection()
        selection = selected.getByIndex(0).getString() if selected.getCount() else ""
        state = {SUCCESS: "success", FAILURE: "failure"}.get(finished.event.State, "dontknow")
        result = json.loads(finished.event.Result) if finished.event.Result else {}
        print(json.dumps({"state": state, "result": result, "modifications": changes.count,
                          "selection": selection}))
    finally:
        document.close(True)


if __name__ == "__main__":
    if sys.argv[2] == "--quit":
        quit_office(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2])
