from __future__ import annotations

from kanbanmesh.cli import main

main()
