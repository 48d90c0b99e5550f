"""Retake the README's screenshots: a real Writer (on a virtual X display) with the extension
installed, against a throwaway `kanbanmesh up` serving the bundled model.

    .venv/bin/python examples/libreoffice/screenshots.py

Needs, besides LibreOffice and python3-uno: Debian's xvfb, x11-apps (xwd), xdotool and netpbm.
Writes examples/libreoffice/docs/{menu,settings,answer}.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DOCS = HERE / "docs"
DISPLAY = ":77"
TEXT = (
    "Kanban boards show work as cards moving through columns. Teams see at a glance what is "
    "waiting, what is in progress and what is done, and they limit how much work runs at once, "
    "so that work flows instead of piling up."
)

# Run by LibreOffice's Python: open a visible document, select the paragraph, run commands.
UNO_SCRIPT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[3])
import drive
from com.sun.star.text.ControlCharacter import PARAGRAPH_BREAK
pipe, request = sys.argv[1], json.loads(sys.argv[2])
ctx = drive.connect(pipe, 60)
desktop = ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
drive.store_settings(ctx, request["settings"])
doc = desktop.loadComponentFromURL("private:factory/swriter", "_blank", 0, ())
drive.write(doc, request["paragraphs"])
frame = doc.getCurrentController().getFrame()
frame.getContainerWindow().setPosSize(0, 0, 1100, 640, 15)
drive.select(doc, request["select"])
print("ready", flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "settings":
        threading.Thread(target=drive.dispatch, args=(ctx, frame, "Settings", {}, None), daemon=True).start()
        print("ok", flush=True)
    elif command == "summarize":
        done = drive.Finished()
        drive.dispatch(ctx, frame, "Summarize", {}, done)
        done.done.wait(120)
        print(json.dumps(json.loads(done.event.Result)), flush=True)
    elif command == "quit":
        doc.close(True)
        desktop.terminate()
        break
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoot(name: str, window: bool = False) -> None:
    """The virtual display as docs/NAME.png."""
    xwd = subprocess.run(["xwd", "-root", "-silent", "-display", DISPLAY], capture_output=True, check=True)
    pnm = subprocess.run(["xwdtopnm"], input=xwd.stdout, capture_output=True, check=True)
    png = subprocess.run(["pnmtopng"], input=pnm.stdout, capture_output=True, check=True)
    (DOCS / f"{name}.png").write_bytes(png.stdout)
    print(f"wrote docs/{name}.png")


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": DISPLAY}, check=True)


def main() -> int:
    for tool in ("Xvfb", "xwd", "xdotool", "xwdtopnm", "soffice", "unopkg"):
        if shutil.which(tool) is None:
            print(f"screenshots.py needs {tool}", file=sys.stderr)
            return 1
    subprocess.run([sys.executable, str(HERE / "build.py")], check=True)
    oxt = HERE / "dist" / "kanbanmesh.oxt"
    work = Path(tempfile.mkdtemp(prefix="kanbanmesh-shots-"))
    work.chmod(0o755)
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        profile = f"-env:UserInstallation={(work / 'profile').as_uri()}"
        install = ["unopkg", "add", "--suppress-license", profile, str(oxt)]
        if os.geteuid() == 0:  # unopkg refuses to install for a user as root
            shutil.copy(oxt, work / "kanbanmesh.oxt")
            (work / "kanbanmesh.oxt").chmod(0o644)
            shutil.chown(work, "nobody")
            install = ["runuser", "-u", "nobody", "--", "env", f"HOME={work}", *install[:-1], str(work / "kanbanmesh.oxt")]
        subprocess.run(install, check=True, capture_output=True)
        processes.append(subprocess.Popen(
            [str(ROOT / ".venv/bin/kanbanmesh"), "up", "--port", str(port), "--data-dir", str(work / "data")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        processes.append(subprocess.Popen(["Xvfb", DISPLAY, "-screen", "0", "1100x640x24"], start_new_session=True))
        pipe = f"kanbanmesh-shots-{port}"
        env = {**os.environ, "DISPLAY": DISPLAY, "SAL_USE_VCLPLUGIN": "gen"}
        processes.append(subprocess.Popen(
            ["soffice", profile, "--norestore", "--nologo", "--nodefault", f"--accept=pipe,name={pipe};urp;"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        request = {
            "settings": {"url": f"ws://127.0.0.1:{port}", "board": "default", "token": "", "model": "", "max_tokens": 96},
            "paragraphs": ["Why kanban", TEXT, ""], "select": {"paragraph": 1, "start": 0, "end": len(TEXT)},
        }
        office = subprocess.Popen(
            ["/usr/bin/python3", "-c", UNO_SCRIPT, pipe, json.dumps(request), str(ROOT / "tests" / "libreoffice")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        processes.append(office)  # type: ignore[arg-type]
        assert office.stdin is not None and office.stdout is not None
        print(office.stdout.readline().strip())
        time.sleep(3)  # let the window paint: there is nothing to wait on for that
        xdotool("search", "--onlyvisible", "--name", "Writer", "windowfocus")
        xdotool("key", "alt+m")
        time.sleep(1)
        shoot("menu")
        xdotool("key", "Escape")
        office.stdin.write("settings\n")
        office.stdin.flush()
        office.stdout.readline()
        time.sleep(2)
        # "Check connection": the dialog lists the board's workers and fills the model list.
        xdotool("search", "--onlyvisible", "--name", "kanbanmesh settings", "windowfocus",
                "mousemove", "--window", "%1", "80", "177", "click", "1")
        time.sleep(3)
        shoot("settings")
        xdotool("search", "--onlyvisible", "--name", "kanbanmesh settings", "windowfocus", "key", "Escape")
        time.sleep(1)
        office.stdin.write("summarize\n")
        office.stdin.flush()
        print(office.stdout.readline().strip())
        time.sleep(1)
        shoot("answer")
        office.stdin.write("quit\n")
        office.stdin.flush()
        office.wait(30)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # each runs in a session of its own
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
