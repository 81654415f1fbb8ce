"""Train one network configuration with early stopping, a deadline and a stop signal.

The trial checks the deadline and the stop signal at every epoch boundary: once either is
reached it stops there and keeps the weights of its best epoch so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from broker.local.early_stopping import EarlyStopping
from broker.local.network import AnyNetworkConfig, ConvNetConfig, NetworkConfig
from broker.local.scoring import ValidationMetric

logger = logging.getLogger(__name__)

PREDICT_BATCH_ROWS = 8192


@dataclass
class TrialData:
    """Training and validation arrays, already preprocessed.

    `y_val` is what the metric compares with: class indices, or target values on their own
    scale for regression. `target_mean`/`target_std` undo the regression standardisation.
    `input_shape` (channels, height, width) makes the numeric columns an image's pixels.
    """

    task: str
    n_outputs: int
    x_num_train: np.ndarray
    x_cat_train: np.ndarray
    y_train: np.ndarray
    x_num_val: np.ndarray
    x_cat_val: np.ndarray
    y_val: np.ndarray
    cardinalities: list[int] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    input_shape: list[int] | None = None
    pixel_positions: list[int] | None = None


@dataclass
class TrialOutcome:
    """What one trial produced. `state_dict` holds the best epoch's weights on the CPU."""

    trial_number: int
    config: dict[str, Any]
    network: AnyNetworkConfig
    score: float
    best_epoch: int
    epochs_run: int
    stop_reason: str  # early_stopping, max_epochs, pruned, deadline, cancelled
    training_time_s: float
    predict_time_per_row_s: float
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    # best validation score after each epoch, as the pruner saw it (filled by the loop)
    curve: list[float] = field(default_factory=list)


def select_device(threads: int | None = None) -> torch.device:
    """CUDA when available, else the CPU with `threads` threads (default: one per core)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    import os

    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.device("cpu")


def build_network(config: dict[str, Any], data: TrialData) -> AnyNetworkConfig:
    """The network a trial configuration describes, sized for `data`."""
    if data.input_shape is not None:
        return ConvNetConfig.from_trial(
            config,
            input_shape=data.input_shape,
            n_outputs=data.n_outputs,
            pixel_positions=data.pixel_positions,
        )
    return NetworkConfig.from_trial(
        config,
        n_numeric=data.x_num_train.shape[1],
        cardinalities=data.cardinalities,
        n_outputs=data.n_outputs,
    )


def train_trial(
    trial_number: int,
    config: dict[str, Any],
    data: TrialData,
    metric: ValidationMetric,
    *,
    patience: int,
    max_epochs: int,
    should_stop: Callable[[], str | None],
    device: torch.device,
    seed: int,
    hard_deadline: float | None = None,
    keep_first_epoch: bool = True,
    on_epoch: Callable[[int, float], bool] | None = None,
) -> TrialOutcome:
    """Train `config` until early stopping, `max_epochs`, the deadline or a stop request.

    Args:
        should_stop: called at each epoch boundary; returns a reason ("deadline",
            "cancelled") to stop, or None to go on.
        hard_deadline: a monotonic time after which an epoch in progress is abandoned
            (its partial updates are dropped), so a slow epoch cannot hold the search
            far past its deadline.
        keep_first_epoch: finish the first epoch even past `hard_deadline`, so the
            search has at least one model.
        on_epoch: called after each epoch that does not end the trial by early
            stopping, with the epoch's index and the best score so far; True prunes
            the trial there (multi-fidelity pruning, epochs being the fidelity).

    Returns:
        The trial's best validation score with the weights that reached it.
    """
    started = time.monotonic()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    network = build_network(config, data)
    model = network.build().to(device)
    optimizer = _optimizer(model, config)
    loss_fn = _loss(data.task)
    x_num, x_cat, y = _tensors(
        data.x_num_train, data.x_cat_train, data.y_train, data.task, device
    )

    rule = EarlyStopping(patience=patience, direction=metric.direction)
    best_state = _cpu_state(model)
    best_score = float("nan")
    stop_reason = "max_epochs"
    predict_time_per_row = 0.0
    batch_size = int(config["batch_size"])
    lr_decay = float(config.get("lr_decay", 1.0))
    epochs_run = 0

    for epoch in range(max_epochs):
        abandon_after = None if (epoch == 0 and keep_first_epoch) else hard_deadline
        finished = _train_epoch(
            model,
            optimizer,
            loss_fn,
            x_num,
            x_cat,
            y,
            batch_size,
            generator,
            abandon_after,
        )
        if not finished:
            stop_reason = "deadline"
            break
        epochs_run = epoch + 1

        t0 = time.perf_counter()
        output = predict_arrays(
            model, data.x_num_val, data.x_cat_val, data.task, device
        )
        predict_time_per_row = (time.perf_counter() - t0) / max(1, len(output))
        if data.task == "regression":
            output = output * data.target_std + data.target_mean
        score = metric(data.y_val, output)

        if rule.is_improvement(score) or rule.best_score is None:
            best_state, best_score = _cpu_state(model), score
        elif lr_decay < 1:
            for group in optimizer.param_groups:
                group["lr"] *= lr_decay
        if rule.update(score):
            stop_reason = "early_stopping"
            break
        if on_epoch is not None and on_epoch(epoch, best_score):
            stop_reason = "pruned"
            break
        reason = should_stop()
        if reason:
            stop_reason = reason
            break

    return TrialOutcome(
        trial_number=trial_number,
        config=dict(config),
        network=network,
        score=best_score,
        best_epoch=rule.best_index if rule.best_index is not None else epochs_run - 1,
        epochs_run=epochs_run,
        stop_reason=stop_reason,
        training_time_s=time.monotonic() - started,
        predict_time_per_row_s=predict_time_per_row,
        state_dict=best_state,
    )


def train_epochs(
    network: AnyNetworkConfig,
    config: dict[str, Any],
    x_num: np.ndarray,
    x_cat: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    epochs: int,
    device: torch.device,
    seed: int,
    decay_after: frozenset[int] = frozenset(),
    abandon_after: float | None = None,
) -> dict[str, torch.Tensor] | None:
    """Train `network` for exactly `epochs` epochs and return its last weights.

    No rows are held out and nothing is scored: the epoch count, and the epochs after
    which the learning rate decays, come from a search that measured them elsewhere,
    so rows left out here can score the result honestly.

    Args:
        config: the trial's configuration (optimiser, learning rate, batch size,
            weight decay and learning-rate decay factor).
        decay_after: epoch indices after which the rate is multiplied by the
            configuration's `lr_decay`, as the search's trial did when its
            validation score did not improve.
        abandon_after: a monotonic time after which training is abandoned.

    Returns:
        The weights on the CPU, or None when training was abandoned.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = network.build().to(device)
    optimizer = _optimizer(model, config)
    loss_fn = _loss(task)
    x_num_t, x_cat_t, y_t = _tensors(x_num, x_cat, y, task, device)
    batch_size = int(config["batch_size"])
    lr_decay = float(config.get("lr_decay", 1.0))
    for epoch in range(epochs):
        finished = _train_epoch(
            model,
            optimizer,
            loss_fn,
            x_num_t,
            x_cat_t,
            y_t,
            batch_size,
            generator,
            abandon_after,
        )
        if not finished:
            return None
        if epoch in decay_after and lr_decay < 1:
            for group in optimizer.param_groups:
                group["lr"] *= lr_decay
    return _cpu_state(model)


def predict_arrays(
    model: nn.Module,
    x_num: np.ndarray,
    x_cat: np.ndarray,
    task: str,
    device: torch.device,
) -> np.ndarray:
    """Probabilities (n, k) for classification, standardised values (n,) for regression."""
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(x_num), PREDICT_BATCH_ROWS):
            stop = start + PREDICT_BATCH_ROWS
            out = model(
                torch.as_tensor(x_num[start:stop], device=device),
                torch.as_tensor(x_cat[start:stop], device=device),
            )
            out = out.squeeze(1) if task == "regression" else torch.softmax(out, dim=1)
            parts.append(out.double().cpu().numpy())
    if not parts:
        outputs = model.config.n_outputs  # type: ignore[union-attr]
        width = () if task == "regression" else (outputs,)
        return np.zeros((0, *width))
    output = np.concatenate(parts)
    if task != "regression":  # exact sums after the float32 softmax
        output /= output.sum(axis=1, keepdims=True)
    return output


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    abandon_after: float | None,
) -> bool:
    """One pass over the rows; False when abandoned at `abandon_after`."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x_num.device)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        if len(index) < 2 and n >= 2:
            continue  # batch normalisation cannot train on a single row
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_num[index], x_cat[index]), y[index])
        loss.backward()
        optimizer.step()
        if abandon_after is not None and time.monotonic() > abandon_after:
            return False
    return True


def _optimizer(model: nn.Module, config: dict[str, Any]) -> torch.optim.Optimizer:
    optimizer_class = (
        torch.optim.Adam if config.get("optimizer") == "adam" else torch.optim.AdamW
    )
    return optimizer_class(
        model.parameters(),
        lr=float(config["learning_rate"]),
        weight_decay=float(config["weight_decay"]),
    )


def _loss(task: str) -> nn.Module:
    return nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()


def _tensors(
    x_num: np.ndarray, x_cat: np.ndarray, y: np.ndarray, task: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training arrays on `device`; a regression target as an (n, 1) float."""
    y_t = torch.as_tensor(y, device=device)
    if task == "regression":
        y_t = y_t.float().unsqueeze(1)
    return (
        torch.as_tensor(x_num, device=device),
        torch.as_tensor(x_cat, device=device),
        y_t,
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
