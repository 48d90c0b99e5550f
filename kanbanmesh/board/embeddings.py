"""An `embed` task's bounds and its vectors' wire encoding: pure code, shared by the server's
checks, the workers that write vectors and the clients that read them (docs/protocol.md,
"Embed tasks").

A vector travels as OpenAI's `encoding_format: "base64"` does: the base64 of its float32
values, little-endian, one string per input. It is 4/3 of the raw bytes, against ~10 bytes a
number as JSON text, and decodes in one call on any platform (`Float32Array` in a browser on
the little-endian machines JavaScript runs on; `numpy.frombuffer(..., "<f4")` here).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kanbanmesh.errors import InvalidTaskError

# numpy only where vectors are encoded or decoded: the board's schema imports this module's
# bounds, and a client that never embeds (the LibreOffice extension's Python) has no numpy.
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

# Inputs in one task, as OpenAI's `/v1/embeddings` allows in one request.
MAX_EMBED_INPUTS = 2048
# One text input: characters (the entry's `max_task_bytes` bounds all inputs together).
MAX_EMBED_INPUT_CHARS = 32_768
# One token-array input: token ids (OpenAI's per-input limit), each a 32-bit id.
MAX_EMBED_INPUT_TOKENS = 8192
MAX_TOKEN_ID = 2**31 - 1
# Dimensions a task may ask for (OpenAI's largest model gives 3072).
MAX_EMBED_DIMENSIONS = 16_384

_LITTLE_F32 = "<f4"


def encode_vector(vector: npt.ArrayLike) -> str:
    """One vector as the board holds it: base64 of its little-endian float32 values."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(vector, dtype=_LITTLE_F32).tobytes()).decode("ascii")


def encode_vectors(vectors: Vectors) -> list[str]:
    """Each row of `vectors` as `encode_vector` writes it."""
    return [encode_vector(row) for row in vectors]


def decode_vectors(encoded: Sequence[str], dimensions: int) -> Vectors:
    """The vectors of an entry's `embeddings` (shape `(len(encoded), dimensions)`, native
    float32); raises `InvalidTaskError` for a string that is not base64 of `dimensions`
    little-endian float32 values, or holds a value that is not finite (NaN, infinity: no
    vector a caller can use, and no number JSON can carry)."""
    import numpy as np

    out = np.empty((len(encoded), dimensions), dtype=np.float32)
    for row, text in enumerate(encoded):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidTaskError(f"embedding {row} is not base64") from exc
        if len(raw) != 4 * dimensions:
            raise InvalidTaskError(f"embedding {row} holds {len(raw)} bytes, not {dimensions} float32 values")
        out[row] = np.frombuffer(raw, dtype=_LITTLE_F32)
    if not np.isfinite(out).all():
        raise InvalidTaskError(f"embedding {int(np.nonzero(~np.isfinite(out))[0][0])} holds a value that is not finite")
    return out


def encoded_length(dimensions: int) -> int:
    """The length of one vector of `dimensions` values as `encode_vector` writes it."""
    return 4 * -(-4 * dimensions // 3)
