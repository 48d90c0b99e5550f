"""Take docs/img/board.png: the board page in headless Chromium, tasks in every column.

A throwaway mesh (`kanbanmesh up`, echo workers, in memory) plus one more worker that is
frozen (SIGSTOP) right after it joined: the broker still counts its slots, so the tasks it gets
stay in `prepared`, while the others stream in `doing` and the rest wait in `todo`.

    .venv/bin/python scripts/board_screenshot.py [--out docs/img/board.png]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from client_sdk import Client

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("KANBANMESH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
KANBANMESH = [sys.executable, "-m", "kanbanmesh"]

FINISHED = [
    ("alice", "Summarise the design notes in one line"),
    ("bob", "Translate 'good morning' into French"),
    ("alice", "Name three prime numbers"),
]
RUNNING = [
    ("carol", "Write a haiku about conflict-free replicated data types and the quiet joy of convergence"),
    ("bob", "Explain in plain words how a kanban board helps a team see its work in progress at a glance"),
    ("alice", "List the steps a worker takes from prepared to done and why each one matters"),
    ("carol", "Describe the smell of rain on a summer evening"),
    ("dave", "Suggest a name for a cat that likes keyboards"),
    ("bob", "What is the capital of Australia"),
    ("alice", "Give one tip for writing clear commit messages"),
]


def start_mesh() -> tuple[subprocess.Popen[str], str]:
    mesh = subprocess.Popen(
        [*KANBANMESH, "up", "--port", "0", "--no-persist", "--backend", "echo",
         "--echo-delay", "300", "--workers", "2", "--slots", "1"],
        stdout=subprocess.PIPE, text=True,
    )
    assert mesh.stdout is not None
    for line in mesh.stdout:
        found = re.search(r"server on (ws://\S+)", line)
        if found:
            return mesh, found.group(1)
    raise RuntimeError("kanbanmesh up exited before saying its URL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "board.png")
    args = parser.parse_args()
    mesh, url = start_mesh()
    frozen = subprocess.Popen([*KANBANMESH, "worker", "--url", url, "--backend", "echo",
                               "--name", "echo-3", "--slots", "2", "--echo-delay", "300"], stdout=subprocess.DEVNULL)
    try:
        for owner, prompt in FINISHED:
            with Client(url, owner=owner) as client:
                client.wait_for_workers(3)
                client.submit(prompt, params={"max_tokens": 64}).result(timeout_s=60)
        frozen.send_signal(signal.SIGSTOP)  # present in awareness, never starts what it gets
        for owner, prompt in RUNNING:
            with Client(url, owner=owner) as client:
                client.submit(prompt, params={"max_tokens": 128})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
            page.goto("http" + url[2:] + "/")
            page.locator('#connection[data-state="connected"]').wait_for()
            page.fill("#prompt", "Tell me a joke about distributed systems")
            page.fill("#max-tokens", "64")
            page.click("#submit")
            # Let the running tasks stream a few words in.
            page.locator('.column[data-column="doing"] .output', has_text=" ").first.wait_for()
            page.wait_for_timeout(2500)
            page.evaluate("document.activeElement.blur()")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        frozen.send_signal(signal.SIGCONT)
        frozen.terminate()
        mesh.terminate()
        frozen.wait(10)
        mesh.wait(20)


if __name__ == "__main__":
    main()
