"""Saving and loading local models."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from broker.errors import ConfigurationError
from broker.local.export import TorchTabularModel, load_model
from broker.local.network import NetworkConfig, PeriodicEmbedding, TabularNet
from broker.local.preprocess import TabularPreprocessor, TargetEncoder


def _model(task: str = "binary") -> tuple[TorchTabularModel, pd.DataFrame]:
    frame = pd.DataFrame(
        {
            "num": [0.1, 0.5, 0.9, np.nan, 0.3, 0.7],
            "cat": ["a", "b", "a", "b", None, "a"],
        }
    )
    pre = TabularPreprocessor.fit(frame, numeric=["num"], categorical=["cat"])
    classes = ["no", "yes"] if task == "binary" else []
    target = TargetEncoder(task, classes, mean=10.0, std=2.0)
    network = NetworkConfig(
        n_numeric=pre.n_numeric_inputs,
        cardinalities=pre.cardinalities,
        n_outputs=2 if task == "binary" else 1,
        depth=2,
        width=8,
        norm="batch",
    )
    torch.manual_seed(0)
    state = TabularNet(network).state_dict()
    model = TorchTabularModel(
        preprocessor=pre, target=target, network=network, state_dict=state
    )
    return model, frame


def test_export_round_trip_gives_identical_probabilities(tmp_path: Path) -> None:
    model, frame = _model()

    folder = model.save(tmp_path / "model")
    loaded = load_model(folder)

    assert sorted(p.name for p in folder.iterdir()) == [
        "model.json",
        "preprocess.json",
        "weights.pt",
    ]
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))
    assert loaded.classes == ["no", "yes"]
    assert loaded.predict_proba(frame).sum(axis=1) == pytest.approx(np.ones(6))


def test_export_model_json_describes_format_features_and_architecture(
    tmp_path: Path,
) -> None:
    model, _ = _model()

    meta = json.loads((model.save(tmp_path) / "model.json").read_text())

    assert meta["format"] == "torch-tabular"
    assert meta["task"] == "binary"
    assert meta["classes"] == ["no", "yes"]
    assert meta["features"] == ["num", "cat"]
    assert meta["architecture"]["depth"] == 2
    assert meta["architecture"]["norm"] == "batch"


def test_export_regression_predicts_on_the_target_scale(tmp_path: Path) -> None:
    model, frame = _model("regression")

    loaded = load_model(model.save(tmp_path))

    raw = model._raw(frame)
    np.testing.assert_allclose(loaded.predict(frame), raw * 2.0 + 10.0, rtol=1e-6)
    assert loaded.classes is None


def test_export_load_refuses_pickled_code_in_weights(tmp_path: Path) -> None:
    model, _ = _model()
    folder = model.save(tmp_path)

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("code ran",))

    (folder / "weights.pt").write_bytes(pickle.dumps({"x": Payload()}, protocol=2))

    # weights_only loading refuses arbitrary globals instead of calling them
    with pytest.raises(ConfigurationError, match=r"not a plain tensor state dict"):
        load_model(folder)


def test_export_load_wrong_format_names_it(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"format": "h2o-mojo"}))
    (tmp_path / "preprocess.json").write_text("{}")

    with pytest.raises(
        ConfigurationError, match=r"format 'h2o-mojo', not 'torch-tabular'"
    ):
        load_model(tmp_path)


def test_export_load_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read a saved local model"):
        load_model(tmp_path / "absent")


def test_network_per_layer_widths_and_skip_connections_round_trip(
    tmp_path: Path,
) -> None:
    frame = pd.DataFrame({"num": [0.1, 0.5, 0.9, 0.3], "cat": ["a", "b", "a", "b"]})
    pre = TabularPreprocessor.fit(
        frame, numeric=["num"], categorical=["cat"], min_count=1
    )
    trial = {"depth": 3, "width": 16, "width_2": 8, "width_3": 8, "skip": True}
    network = NetworkConfig.from_trial(
        trial, n_numeric=1, cardinalities=pre.cardinalities, n_outputs=2
    )
    torch.manual_seed(0)
    module = TabularNet(network)
    model = TorchTabularModel(
        preprocessor=pre,
        target=TargetEncoder("binary", ["no", "yes"]),
        network=network,
        state_dict=module.state_dict(),
    )

    loaded = load_model(model.save(tmp_path / "model"))

    assert network.widths == [16, 8, 8]
    # a projection where the width changes (input 1 + 4 -> 16, 16 -> 8), none at 8 -> 8
    projections = [type(p).__name__ for p in module.projections]
    assert projections == ["Linear", "Linear", "Identity"]
    assert loaded.network == network
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))


def test_periodic_embedding_maps_each_value_to_cosines_and_sines_of_its_frequencies() -> (
    None
):
    embedding = PeriodicEmbedding(n_columns=1, frequencies=1, dim=2, scale=0.1)
    with torch.no_grad():
        embedding.coefficients.fill_(0.25)  # a quarter turn per unit
        embedding.linear.weight.copy_(torch.eye(2))
        embedding.linear.bias.zero_()

    out = embedding(torch.tensor([[1.0], [2.0], [-1.0]]))

    # x=1: cos(pi/2)=0, sin(pi/2)=1; x=2: cos(pi)=-1 -> 0 after ReLU; x=-1: sin -> 0
    expected = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_network_with_periodic_numeric_embeddings_round_trips(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"x": [0.1, 0.5, 0.9, 0.3], "y": [1.0, 2.0, 3.0, 4.0], "cat": list("abab")}
    )
    pre = TabularPreprocessor.fit(
        frame, numeric=["x", "y"], categorical=["cat"], min_count=1
    )
    trial = {
        "depth": 1,
        "width": 8,
        "numeric_embedding": "periodic",
        "periodic_scale": 0.05,
    }
    network = NetworkConfig.from_trial(
        trial,
        n_numeric=pre.n_numeric_inputs,
        cardinalities=pre.cardinalities,
        n_outputs=2,
    )
    torch.manual_seed(0)
    module = TabularNet(network)
    model = TorchTabularModel(
        preprocessor=pre,
        target=TargetEncoder("binary", ["no", "yes"]),
        network=network,
        state_dict=module.state_dict(),
    )

    loaded = load_model(model.save(tmp_path / "model"))

    assert (network.numeric_embedding, network.periodic_scale) == ("periodic", 0.05)
    assert module.periodic is not None
    assert module.periodic.coefficients.shape == (2, network.periodic_frequencies)
    # 16 features per numeric column, then the category's embedding
    first = module.body[0]
    assert first.in_features == 2 * network.periodic_dim + network.embedding_dims[0]
    assert loaded.network == network
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))


def test_network_unknown_numeric_embedding_names_the_choices() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"numeric embedding 'fourier' is not known; choose from \['none', 'periodic'\]",
    ):
        NetworkConfig(
            n_numeric=1, cardinalities=[], n_outputs=2, numeric_embedding="fourier"
        )
