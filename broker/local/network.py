"""The searched networks: a dense one for tables and a convolutional one for small images.

The tabular network embeds categorical codes, then runs a stack of dense blocks, each
Linear -> normalisation (none, batch or layer) -> activation -> dropout, with an optional
skip connection around each block. The image network reads the numeric columns as pixels
of an image of shape (channels, height, width) and runs convolution blocks, then a dense
head. Both are described by plain values (:class:`NetworkConfig`, :class:`ConvNetConfig`)
so that a saved model can be rebuilt from JSON and its weights loaded as a state dict.
"""

from __future__ import annotations

import math
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
NUMERIC_EMBEDDINGS = ("none", "periodic")
POOLINGS = ("max", "avg", "none")
MAX_LAYERS = 8


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild the tabular network's modules.

    `widths` lists each layer's width; when empty every layer is `width` wide.
    """

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
    widths: list[int] = field(default_factory=list)
    skip: bool = False
    numeric_embedding: str = "none"
    periodic_scale: float = 0.1
    periodic_frequencies: int = 24
    periodic_dim: int = 16

    def __post_init__(self) -> None:
        _check_common(self.activation, self.norm, self.dropout)
        if self.numeric_embedding not in NUMERIC_EMBEDDINGS:
            raise ConfigurationError(
                f"numeric embedding {self.numeric_embedding!r} is not known; choose "
                f"from {list(NUMERIC_EMBEDDINGS)}"
            )
        if self.depth < 1 or self.width < 1:
            raise ConfigurationError(
                f"network needs depth >= 1 and width >= 1; got depth={self.depth}, "
                f"width={self.width}"
            )
        if not self.embedding_dims:
            # a column never needs more dimensions than it has tokens
            dims = [min(self.embedding_dim, n) for n in self.cardinalities]
            object.__setattr__(self, "embedding_dims", dims)
        if not self.widths:
            object.__setattr__(self, "widths", [self.width] * self.depth)
        if len(self.widths) != self.depth or min(self.widths) < 1:
            raise ConfigurationError(
                f"network needs one positive width per layer; got widths={self.widths} "
                f"for depth {self.depth}"
            )

    @classmethod
    def from_trial(
        cls,
        config: dict[str, Any],
        *,
        n_numeric: int,
        cardinalities: list[int],
        n_outputs: int,
    ) -> NetworkConfig:
        keys = (
            "depth",
            "width",
            "activation",
            "dropout",
            "norm",
            "embedding_dim",
            "numeric_embedding",
            "periodic_scale",
        )
        values = {k: config[k] for k in keys if k in config}
        depth = int(values.get("depth", cls.depth))
        first = int(values.get("width", cls.width))
        widths = [first] + [
            int(config.get(f"width_{i}", first)) for i in range(2, depth + 1)
        ]
        return cls(
            n_numeric=n_numeric,
            cardinalities=list(cardinalities),
            n_outputs=n_outputs,
            widths=widths,
            skip=bool(config.get("skip", False)),
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> NetworkConfig:
        return cls(**payload)

    def build(self) -> nn.Module:
        return TabularNet(self)


@dataclass(frozen=True)
class ConvNetConfig:
    """Everything needed to rebuild the image network's modules."""

    input_shape: list[int]  # channels, height, width
    n_outputs: int
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    pooling: str = "max"
    head_width: int = 128
    activation: str = "relu"
    norm: str = "batch"
    dropout: float = 0.1
    kind: str = "conv"
    # where each input column sits in the flattened image; empty: in column order.
    # Pixels without a column (constant ones the intake dropped) read 0.
    pixel_positions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_common(self.activation, self.norm, self.dropout)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigurationError(
                f"input_shape must be [channels, height, width] with positive sizes, "
                f"got {self.input_shape}; for 8x8 grey images use [1, 8, 8]"
            )
        if self.pooling not in POOLINGS:
            raise ConfigurationError(
                f"pooling {self.pooling!r} is not known; choose from {list(POOLINGS)}"
            )
        if not self.channels or min(self.channels) < 1 or self.kernel_size < 1:
            raise ConfigurationError(
                f"image network needs at least one block with positive channels and "
                f"kernel size; got channels={self.channels}, "
                f"kernel_size={self.kernel_size}"
            )

    @classmethod
    def from_trial(
        cls,
        config: dict[str, Any],
        *,
        input_shape: list[int],
        n_outputs: int,
        pixel_positions: list[int] | None = None,
    ) -> ConvNetConfig:
        blocks = int(config.get("conv_blocks", 2))
        first = int(config.get("channels", 32))
        channels = [first] + [
            int(config.get(f"channels_{i}", first)) for i in range(2, blocks + 1)
        ]
        keys = ("kernel_size", "pooling", "head_width", "activation", "norm", "dropout")
        return cls(
            input_shape=list(input_shape),
            n_outputs=n_outputs,
            channels=channels,
            pixel_positions=list(pixel_positions or []),
            **{k: config[k] for k in keys if k in config},
        )

    @property
    def n_inputs(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ConvNetConfig:
        return cls(**payload)

    def build(self) -> nn.Module:
        return ConvNet(self)


AnyNetworkConfig = NetworkConfig | ConvNetConfig


def network_from_dict(payload: dict[str, Any]) -> AnyNetworkConfig:
    """Rebuild either network description from its `to_dict` form."""
    if payload.get("kind") == "conv":
        return ConvNetConfig.from_dict(payload)
    return NetworkConfig.from_dict(payload)


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

        self.periodic = (
            PeriodicEmbedding(
                config.n_numeric,
                config.periodic_frequencies,
                config.periodic_dim,
                config.periodic_scale,
            )
            if config.numeric_embedding == "periodic" and config.n_numeric > 0
            else None
        )
        numeric_width = (
            config.n_numeric * config.periodic_dim
            if self.periodic is not None
            else config.n_numeric
        )
        width_in = numeric_width + sum(config.embedding_dims)
        first_width = width_in
        blocks: list[nn.Sequential] = []
        for width in config.widths:
            blocks.append(_dense_block(width_in, width, config))
            width_in = width
        if config.skip:
            # each block's input is added to its output, projected when widths differ
            self.blocks = nn.ModuleList(blocks)
            widths_in = [first_width, *config.widths]
            self.projections = nn.ModuleList(
                nn.Identity() if a == b else nn.Linear(a, b, bias=False)
                for a, b in zip(widths_in[:-1], config.widths, strict=True)
            )
        else:
            # one flat sequence keeps the state-dict names of saved models stable
            self.body = nn.Sequential(*[m for block in blocks for m in block])
        self.head = nn.Linear(width_in, config.n_outputs)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num if self.periodic is None else self.periodic(x_num)]
        parts.extend(emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings))
        hidden = torch.cat(parts, dim=1)
        if self.config.skip:
            for block, projection in zip(self.blocks, self.projections, strict=True):
                hidden = block(hidden) + projection(hidden)
        else:
            hidden = self.body(hidden)
        return self.head(hidden)


class PeriodicEmbedding(nn.Module):
    """Each numeric input x becomes ReLU(W [cos(2 pi c x), sin(2 pi c x)] + b), with
    `frequencies` coefficients c per column, learned from a normal start of standard
    deviation `scale`, and W shared by the columns: a smooth, learned feature map that
    lets a dense network fit sharp, non-monotone effects of one column.
    """

    def __init__(
        self, n_columns: int, frequencies: int, dim: int, scale: float
    ) -> None:
        super().__init__()
        self.coefficients = nn.Parameter(torch.randn(n_columns, frequencies) * scale)
        self.linear = nn.Linear(2 * frequencies, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * self.coefficients[None] * x[..., None]
        waves = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return torch.relu(self.linear(waves)).flatten(1)


class ConvNet(nn.Module):
    """Convolution blocks over the pixels in `x_num`, then a dense head; logits out."""

    def __init__(self, config: ConvNetConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer(
            "positions",
            torch.as_tensor(config.pixel_positions, dtype=torch.long),
            persistent=False,
        )
        channels_in, height, width = config.input_shape

        layers: list[nn.Module] = []
        for channels in config.channels:
            layers.append(
                nn.Conv2d(
                    channels_in,
                    channels,
                    config.kernel_size,
                    padding=config.kernel_size // 2,
                )
            )
            if config.norm != "none":
                layers.append(nn.BatchNorm2d(channels))
            layers.append(ACTIVATIONS[config.activation]())
            if config.pooling != "none" and min(height, width) >= 2:
                pool = nn.MaxPool2d(2) if config.pooling == "max" else nn.AvgPool2d(2)
                layers.append(pool)
                height, width = height // 2, width // 2
            channels_in = channels
        self.features = nn.Sequential(*layers)

        flat = channels_in * height * width
        head: list[nn.Module] = [nn.Flatten()]
        if config.dropout > 0:
            head.append(nn.Dropout(config.dropout))
        if config.head_width > 0:
            head.extend(
                [nn.Linear(flat, config.head_width), ACTIVATIONS[config.activation]()]
            )
            flat = config.head_width
        head.append(nn.Linear(flat, config.n_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        if self.config.pixel_positions:
            flat = x_num.new_zeros((len(x_num), self.config.n_inputs))
            flat[:, self.get_buffer("positions")] = x_num
            x_num = flat
        images = x_num.reshape(len(x_num), *self.config.input_shape)
        return self.head(self.features(images))


def _dense_block(width_in: int, width: int, config: NetworkConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(width_in, width)]
    if config.norm == "batch":
        layers.append(nn.BatchNorm1d(width))
    elif config.norm == "layer":
        layers.append(nn.LayerNorm(width))
    layers.append(ACTIVATIONS[config.activation]())
    if config.dropout > 0:
        layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


def _check_common(activation: str, norm: str, dropout: float) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigurationError(
            f"activation {activation!r} is not known; choose from {sorted(ACTIVATIONS)}"
        )
    if norm not in NORMS:
        raise ConfigurationError(
            f"normalisation {norm!r} is not known; choose from {list(NORMS)}"
        )
    if not 0 <= dropout < 1:
        raise ConfigurationError(f"network needs 0 <= dropout < 1, got {dropout}")
