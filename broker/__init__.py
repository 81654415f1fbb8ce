"""automl-broker: run AutoML jobs wherever they are cheapest and available."""

from __future__ import annotations

__version__ = "0.1.0"
