"""Save the local backend's models to a folder and load them back without running stored
code.

A network alone (format ``torch-tabular``) is a folder holding:

- model.json: ``{"format": "torch-tabular", ...}`` with the task, classes, feature safe names
  and the architecture, enough to rebuild the modules;
- preprocess.json: the fitted feature transform and target encoding (numbers and strings);
- weights.pt: the network's state dict, read back with ``torch.load(weights_only=True)``.

A local job's model (`run_dir/model/`, format ``local-ensemble``) is a folder holding
model.json, which lists the members with their kind, algorithm, weight and validation
score, and one sub-folder per member: networks in the format above, classical models
(kind "classical": boosted trees, linear models, extremely randomised trees) in the
array formats of :mod:`broker.local.classical`, :mod:`broker.local.linear` and
:mod:`broker.local.forest`. Its predictions are the weighted sum of
its members' (probabilities, or values for regression). The best searched network is
always a member, with weight 0 when the ensemble does not use it.
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
ENSEMBLE_FORMAT = "local-ensemble"
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


class EnsembleMember:
    """One model inside a :class:`LocalEnsembleModel`.

    Args:
        name: its leaderboard id ("trial-7", "hgb-default").
        kind: "network" or "classical".
        algorithm: "mlp", "cnn", "hist_gradient_boosting", "linear" or
            "extra_trees".
        weight: its share of the ensemble's output (0 when kept only to compare).
        validation: its own score on the search's validation rows.
        model: the member (a :class:`TorchTabularModel` or a classical model).
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        algorithm: str,
        weight: float,
        validation: float | None,
        model: Any,
    ) -> None:
        self.name = name
        self.kind = kind
        self.algorithm = algorithm
        self.weight = float(weight)
        self.validation = validation
        self.model = model

    def output(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities (n, k) for classification, values (n,) for regression."""
        if self.model.task == "regression":
            return np.asarray(self.model.predict(frame), dtype=np.float64)
        return np.asarray(self.model.predict_proba(frame), dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "weight": self.weight,
            "validation": self.validation,
        }


class LocalEnsembleModel:
    """The local job's model: a weighted sum of searched networks and classical models.

    Frames passed in use the features' safe names; extra columns are ignored.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the class labels in output order (empty for regression).
        members: the members in the order their outputs are added; at least one has a
            positive weight and one is a network.
        metadata: the validation metric and score, and which model won.
    """

    def __init__(
        self,
        *,
        task: str,
        classes: list[Any],
        members: list[EnsembleMember],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not any(m.weight > 0 for m in members):
            raise ConfigurationError(
                f"an ensemble needs a member with a positive weight, got "
                f"{[m.describe() for m in members]}"
            )
        self.task = task
        self._classes = list(classes)
        self.members = list(members)
        self.metadata = dict(metadata or {})

    @property
    def classes(self) -> list[Any] | None:
        return None if self.task == "regression" else list(self._classes)

    def describe(self) -> list[dict[str, Any]]:
        """Each member's name, kind, algorithm, weight and validation score."""
        return [m.describe() for m in self.members]

    def best_network(self) -> TorchTabularModel:
        """The best searched network alone, to compare with the ensemble.

        Raises:
            ConfigurationError: the ensemble holds no network (a damaged folder).
        """
        name = self.metadata.get("best_network")
        networks = [m for m in self.members if m.kind == "network"]
        for member in networks:
            if member.name == name:
                return member.model  # type: ignore[no-any-return]
        if networks:
            return networks[0].model  # type: ignore[no-any-return]
        raise ConfigurationError(
            "this local model holds no searched network; it lists "
            f"{[m.name for m in self.members]}"
        )

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
        return self._output(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels (n,) for classification, target values (n,) for regression."""
        output = self._output(frame)
        if self.task == "regression":
            return output
        labels = np.asarray(self._classes, dtype=object)
        return labels[output.argmax(axis=1)]

    def _output(self, frame: pd.DataFrame) -> np.ndarray:
        from broker.local.ensemble import combine

        used = [m for m in self.members if m.weight > 0]
        return combine([m.output(frame) for m in used], [m.weight for m in used])

    def save(self, folder: str | Path) -> Path:
        """Write model.json and one sub-folder per member into `folder`; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            member.model.save(folder / member.name)
        model_json = {
            "format": ENSEMBLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": [_jsonable(c) for c in self._classes],
            "members": [{**m.describe(), "folder": m.name} for m in self.members],
            "metadata": self.metadata,
        }
        (folder / "model.json").write_text(
            json.dumps(model_json, indent=2, default=str)
        )
        logger.info(
            "saved %s model (%s) to %s",
            ENSEMBLE_FORMAT,
            ", ".join(f"{m.name} {m.weight:g}" for m in self.members),
            folder,
        )
        return folder


def load_ensemble(path: str | Path) -> LocalEnsembleModel:
    """Load a model saved by :meth:`LocalEnsembleModel.save`, running no stored code.

    Raises:
        ConfigurationError: the folder is not a local-ensemble model, or a member's
            folder is missing or unreadable.
    """
    from broker.local.classical import load_classical

    folder = Path(path)
    if folder.name == "model.json":
        folder = folder.parent
    model_json = _read_model_json(folder)
    if model_json.get("format") != ENSEMBLE_FORMAT:
        raise ConfigurationError(
            f"{str(folder)!r} holds a model of format {model_json.get('format')!r}, not "
            f"{ENSEMBLE_FORMAT!r}; load it with its own provider"
        )

    members = []
    for entry in model_json["members"]:
        member_folder = folder / str(entry["folder"])
        bagged = _read_model_json(member_folder).get("format") == "bagged"
        if entry["kind"] == "network" and not bagged:
            model: Any = load_model(member_folder)
        else:  # a classical model, or a network bagged over folds
            model = load_classical(member_folder)
        members.append(
            EnsembleMember(
                name=str(entry["name"]),
                kind=str(entry["kind"]),
                algorithm=str(entry["algorithm"]),
                weight=float(entry["weight"]),
                validation=entry.get("validation"),
                model=model,
            )
        )
    return LocalEnsembleModel(
        task=str(model_json["task"]),
        classes=list(model_json["classes"]),
        members=members,
        metadata=model_json.get("metadata", {}),
    )


def load_local_model(path: str | Path) -> LocalEnsembleModel | TorchTabularModel:
    """Load either local format: a local job's ensemble, or a network alone.

    Raises:
        ConfigurationError: the folder holds neither format or cannot be read.
    """
    folder = Path(path)
    if folder.name == "model.json":
        folder = folder.parent
    if _read_model_json(folder).get("format") == ENSEMBLE_FORMAT:
        return load_ensemble(folder)
    return load_model(folder)


def _read_model_json(folder: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((folder / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read a saved local model from {str(folder)!r}: {exc}; point at the "
            f"run's model folder"
        ) from None
    return info
