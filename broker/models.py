"""Loading a saved model back from a run folder, whichever backend trained it.

Each backend writes ``model/model.json`` with a ``format`` key; this module maps the format to
the backend module that loads it. Loading never executes code stored in the folder: weights
are read as plain tensors, MOJOs are read by H2O's own scorer.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from broker.errors import InputError
from broker.providers.base import SavedModel

LOADERS: dict[str, str] = {
    "torch-tabular": "broker.providers.local:load_model",
    "local-ensemble": "broker.providers.local:load_model",
    "h2o-mojo": "broker.providers.h2o:load_model",
    "h2o-binary": "broker.providers.h2o:load_model",
}


def read_model_info(model_dir: Path) -> dict[str, Any]:
    info_path = model_dir / "model.json"
    if not info_path.is_file():
        raise InputError(
            f"no model at {str(model_dir)!r}: model.json is missing. Pass the run folder "
            "that `automl-broker run` wrote (it holds a model/ folder)."
        )
    info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
    return info


def load_saved_model(model_dir: Path) -> SavedModel:
    """Load the model in `model_dir` with the loader its format names."""
    info = read_model_info(model_dir)
    fmt = info.get("format")
    if fmt not in LOADERS:
        raise InputError(
            f"the model in {str(model_dir)!r} has format {fmt!r}, which cannot be loaded "
            f"locally; local formats: {sorted(LOADERS)}"
        )
    module_name, _, func_name = LOADERS[fmt].partition(":")
    loader = getattr(importlib.import_module(module_name), func_name)
    model: SavedModel = loader(model_dir)
    return model
