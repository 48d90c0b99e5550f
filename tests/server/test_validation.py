"""The validator's lifecycle: a validator the room leaves behind (at a rotation) lets go of
its twin and of the board document."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from pycrdt import Doc, Map

from kanbanmesh.board import constants as c
from kanbanmesh.server.validation import UpdateValidator, ValidationLimits


def test_a_closed_validator_lets_its_documents_go() -> None:
    board: Doc[Any] = Doc()
    board.get(c.TODO, type=Map)["t"] = Map({c.F_ID: "t"})
    validator = UpdateValidator(board, ValidationLimits())
    validator.check(Doc().get_update())
    gone = [weakref.ref(board), weakref.ref(validator), weakref.ref(validator._twin)]
    validator.close()
    del board, validator
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]
