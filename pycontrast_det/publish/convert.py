"""A detector checkpoint -> ``model.safetensors``: its weights only (the ``model`` state under detectron2's key
names, no optimizer, scheduler or iteration), every tensor checked bit for bit after writing."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..checkpoints import read_checkpoint, write_safetensors
from ..checkpoints.arrays import as_numpy
from ..checkpoints.readers import SAFETENSORS_METADATA_KEY
from ..errors import CheckpointFormatError

#: Written into the safetensors header; bump when what is written changes.
FORMAT_VERSION = "1"
#: The one metadata key (a JSON object with sorted keys): safetensors writes several keys in a random order, and
#: the same checkpoint must always give the same bytes (a mirror rebuilt from the original matches the Hub's).
METADATA_KEY = SAFETENSORS_METADATA_KEY


def detector_to_safetensors(src: Path, fmt: str, dest: Path, metadata: Mapping[str, str]) -> int:
    """Write the detectron2 detector weights of ``src`` (manifest format ``fmt``) to ``dest`` with ``metadata``
    (under :data:`METADATA_KEY`) in its header; returns the number of tensors. Dtypes are kept; the bytes depend
    only on the weights and ``metadata``. CheckpointFormatError when ``src`` holds no detectron2 detector or the
    written file does not give back exactly its tensors."""
    import json

    from safetensors import safe_open

    import numpy as np

    checkpoint = read_checkpoint(src, format=fmt)
    if checkpoint.format != "detectron2" or not checkpoint.state:
        raise CheckpointFormatError(f"{src}: a {checkpoint.format} checkpoint, not a detectron2 detector")
    state = {key: as_numpy(value) for key, value in checkpoint.state.items()}
    header = json.dumps({"format_version": FORMAT_VERSION, **metadata}, sort_keys=True)
    write_safetensors(state, dest, {METADATA_KEY: header})
    with safe_open(str(dest), framework="np") as back:
        if set(back.keys()) != set(state):
            raise CheckpointFormatError(f"{dest}: written keys differ from {src}'s; nothing is published")
        for key, value in state.items():
            got = back.get_tensor(key)
            if got.dtype != value.dtype or got.shape != value.shape or \
                    got.tobytes() != np.ascontiguousarray(value).tobytes():
                raise CheckpointFormatError(f"{dest}: {key} differs from {src}'s after writing; nothing is published")
    return len(state)
