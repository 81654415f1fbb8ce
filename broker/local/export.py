"""Save a trained network to a folder and load it back without running stored code.

Layout of `run_dir/model/`:

- model.json: ``{"format": "torch-tabular", ...}`` with the task, classes, feature safe names
  and the architecture, enough to rebuild the modules;
- preprocess.json: the fitted feature transform and target encoding (numbers and strings);
- weights.pt: the network's state dict, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ConfigurationError, InputError
from broker.local.network import AnyNetworkConfig, network_from_dict
from broker.local.preprocess import TabularPreprocessor, TargetEncoder, _jsonable

if TYPE_CHECKING:
    import pandas as pd
    import torch

logger = logging.getLogger(__name__)

MODEL_FORMAT = "torch-tabular"
FORMAT_VERSION = 1


class TorchTabularModel:
    """A trained network (dense or, for images, convolutional) with its preprocessing.

    Frames passed in use the features' safe names; extra columns are ignored.
    """

    def __init__(
        self,
        *,
        preprocessor: TabularPreprocessor,
        target: TargetEncoder,
        network: AnyNetworkConfig,
        state_dict: dict[str, torch.Tensor],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.preprocessor = preprocessor
        self.target = target
        self.network = network
        self.metadata = dict(metadata or {})
        self._module = network.build()
        self._module.load_state_dict(state_dict)
        self._module.eval()

    @property
    def task(self) -> str:
        return self.target.task

    @property
    def classes(self) -> list[Any] | None:  # type: ignore[override]
        return None if self.task == "regression" else list(self.target.classes)

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessor.feature_names

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights (tensors on the CPU)."""
        return {k: v.detach().clone() for k, v in self._module.state_dict().items()}

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities (n, k) in `classes` order.

        Raises:
            InputError: the model is a regression model.
            ColumnNotFoundError: a feature is missing from `frame`.
        """
        if self.task == "regression":
            raise InputError(
                "predict_proba is for classification models; this model does "
                "regression, call predict instead"
            )
        return self._raw(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels (n,) for classification, target values (n,) for regression."""
        output = self._raw(frame)
        if self.task == "regression":
            return self.target.decode_regression(output)
        labels = np.asarray(self.target.classes, dtype=object)
        return labels[output.argmax(axis=1)]

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        import torch

        from broker.local.trainer import predict_arrays

        x_num, x_cat = self.preprocessor.transform(frame)
        return predict_arrays(
            self._module, x_num, x_cat, self.task, torch.device("cpu")
        )

    def save(self, folder: str | Path) -> Path:
        """Write model.json, preprocess.json and weights.pt into `folder`; return it."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_json = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": [_jsonable(c) for c in self.target.classes],
            "features": self.feature_names,
            "numeric_features": [c.name for c in self.preprocessor.numeric],
            "categorical_features": [c.name for c in self.preprocessor.categorical],
            "architecture": self.network.to_dict(),
            "metadata": self.metadata,
        }
        preprocess_json = {
            "features": self.preprocessor.to_dict(),
            "target": self.target.to_dict(),
        }
        (folder / "model.json").write_text(
            json.dumps(model_json, indent=2, default=str)
        )
        (folder / "preprocess.json").write_text(json.dumps(preprocess_json))
        torch.save(self._module.state_dict(), folder / "weights.pt")
        logger.info("saved %s model to %s", MODEL_FORMAT, folder)
        return folder


def load_model(path: str | Path) -> TorchTabularModel:
    """Load a model saved by :meth:`TorchTabularModel.save`.

    Args:
        path: the model folder, or its model.json.

    Raises:
        ConfigurationError: the folder is not a torch-tabular model, a file is missing,
            or weights.pt holds anything but tensors.
    """
    import torch

    folder = Path(path)
    if folder.name == "model.json":
        folder = folder.parent
    try:
        model_json = json.loads((folder / "model.json").read_text())
        preprocess_json = json.loads((folder / "preprocess.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read a saved local model from {str(folder)!r}: {exc}; point at the "
            f"run's model folder"
        ) from None
    if model_json.get("format") != MODEL_FORMAT:
        raise ConfigurationError(
            f"{str(folder)!r} holds a model of format {model_json.get('format')!r}, not "
            f"{MODEL_FORMAT!r}; load it with its own provider"
        )

    try:
        state_dict = torch.load(
            folder / "weights.pt", map_location="cpu", weights_only=True
        )
    except (OSError, pickle.UnpicklingError, RuntimeError) as exc:
        raise ConfigurationError(
            f"{str(folder / 'weights.pt')!r} is not a plain tensor state dict and was "
            f"not loaded (stored code is never run): {str(exc).splitlines()[0]}"
        ) from None
    return TorchTabularModel(
        preprocessor=TabularPreprocessor.from_dict(preprocess_json["features"]),
        target=TargetEncoder.from_dict(preprocess_json["target"]),
        network=network_from_dict(model_json["architecture"]),
        state_dict=state_dict,
        metadata=model_json.get("metadata", {}),
    )
