"""Fuzz the server's message handler for longer than CI does.

Runs the strategies and properties of `tests/server/test_fuzz.py` (random bytes, mutated
messages, Yjs updates with missing dependencies, awareness, forged writes with auth) against a
live mesh with auth off and one with auth on, in batches, until the time is up; then prints
what the server answered and exits 0, or prints the (shrunk) failing example and exits 1::

    .venv/bin/python scripts/fuzz.py --seconds 600 --seed 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings

from tests.server.test_fuzz import PROPERTIES, RANDOM_IN_BACKGROUND, FuzzMesh


def run_batch(mesh: FuzzMesh, name: str, examples: int, batch_seed: int) -> None:
    """`examples` examples of property `name` on `mesh`; raises what a failing one raised."""
    check, strategy, _ = PROPERTIES[name]

    @seed(batch_seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def batch(value: object) -> None:
        check(mesh, value)

    batch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to fuzz (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the first batch (+1 each)")
    parser.add_argument("--batch", type=int, default=50, help="examples per property per batch")
    parser.add_argument("--auth", choices=("both", "on", "off"), default="both")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=RANDOM_IN_BACKGROUND)

    started = time.monotonic()
    batches = 0
    with ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kanbanmesh-fuzz-")))
        meshes: dict[bool, FuzzMesh] = {}
        for auth in (False, True):
            if args.auth == "both" or (args.auth == "on") == auth:
                (data / str(auth)).mkdir()
                meshes[auth] = stack.enter_context(FuzzMesh(data / str(auth), auth=auth))
        failure: BaseException | None = None
        while failure is None and time.monotonic() - started < args.seconds:
            for name, (_, _, auth_only) in PROPERTIES.items():
                for auth, mesh in meshes.items():
                    if auth_only and not auth:
                        continue
                    try:
                        run_batch(mesh, name, args.batch, args.seed + batches)
                    except Exception as exc:  # noqa: BLE001 - reported below, with the example
                        failure = exc
                        print(f"\nFAILED: {name} (auth {'on' if auth else 'off'}), seed {args.seed + batches}")
                        break
                if failure is not None:
                    break
            batches += 1
        for auth, mesh in meshes.items():
            if failure is None:
                assert mesh.portal is not None
                problems = mesh.portal.call(mesh.final_check)
                if problems:
                    failure = AssertionError(f"a fresh client finds the board corrupted: {problems}")
            print(f"\nauth {'on' if auth else 'off'}: {mesh.summary()}")
    print(f"\n{batches} round(s) of {len(PROPERTIES)} properties in {time.monotonic() - started:.0f} s, "
          f"seeds {args.seed}..{args.seed + max(batches - 1, 0)}")
    if failure is not None:
        print(f"\n{type(failure).__name__}: {failure}")
        return 1
    print("no property broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
