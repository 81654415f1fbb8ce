"""The tabular network: embeddings for categorical codes, then a stack of dense blocks.

Each block is Linear -> normalisation (none, batch or layer) -> activation -> dropout. The
architecture is described by plain values (:class:`NetworkConfig`) so that a saved model can
be rebuilt from JSON and its weights loaded as a state dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from broker.errors import ConfigurationError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
NORMS = ("none", "batch", "layer")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the network's modules."""

    n_numeric: int
    cardinalities: list[int]
    n_outputs: int
    depth: int = 3
    width: int = 256
    activation: str = "relu"
    dropout: float = 0.1
    norm: str = "batch"
    embedding_dim: int = 8
    embedding_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigurationError(
                f"activation {self.activation!r} is not known; "
                f"choose from {sorted(ACTIVATIONS)}"
            )
        if self.norm not in NORMS:
            raise ConfigurationError(
                f"normalisation {self.norm!r} is not known; choose from {list(NORMS)}"
            )
        if self.depth < 1 or self.width < 1 or not 0 <= self.dropout < 1:
            raise ConfigurationError(
                f"network needs depth >= 1, width >= 1 and 0 <= dropout < 1; got "
                f"depth={self.depth}, width={self.width}, dropout={self.dropout}"
            )
        if not self.embedding_dims:
            # a column never needs more dimensions than it has tokens
            dims = [min(self.embedding_dim, n) for n in self.cardinalities]
            object.__setattr__(self, "embedding_dims", dims)

    @classmethod
    def from_trial(
        cls,
        config: dict[str, Any],
        *,
        n_numeric: int,
        cardinalities: list[int],
        n_outputs: int,
    ) -> NetworkConfig:
        keys = ("depth", "width", "activation", "dropout", "norm", "embedding_dim")
        return cls(
            n_numeric=n_numeric,
            cardinalities=list(cardinalities),
            n_outputs=n_outputs,
            **{k: config[k] for k in keys if k in config},
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> NetworkConfig:
        return cls(**payload)


class TabularNet(nn.Module):
    """Embeddings plus a multilayer perceptron; returns logits or a standardised value."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(
            nn.Embedding(n_tokens, dim)
            for n_tokens, dim in zip(
                config.cardinalities, config.embedding_dims, strict=True
            )
        )

        blocks: list[nn.Module] = []
        width_in = config.n_numeric + sum(config.embedding_dims)
        for _ in range(config.depth):
            blocks.append(nn.Linear(width_in, config.width))
            if config.norm == "batch":
                blocks.append(nn.BatchNorm1d(config.width))
            elif config.norm == "layer":
                blocks.append(nn.LayerNorm(config.width))
            blocks.append(ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                blocks.append(nn.Dropout(config.dropout))
            width_in = config.width
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width_in, config.n_outputs)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num]
        parts.extend(emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings))
        hidden = self.body(torch.cat(parts, dim=1))
        return self.head(hidden)
