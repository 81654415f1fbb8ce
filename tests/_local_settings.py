"""Settings the local-search tests share."""

from __future__ import annotations

from typing import Any

# A one-layer network of eight units: trains in milliseconds on a few hundred rows.
SMALL: dict[str, Any] = {
    "depth": 1,
    "width": 8,
    "activation": "relu",
    "dropout": 0.0,
    "norm": "none",
    "embedding_dim": 2,
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "batch_size": 16,
}
