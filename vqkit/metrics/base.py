"""Metrics that read the model's output rather than a (reconstruction, data) pair."""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor
from torchmetrics import Metric

from vqkit.models.base import ModelOutput


class ModelOutputMetric(Metric):
    """A torchmetrics ``Metric`` updated with ``(model output, data)``: e.g. text's bytes per token.

    The training module passes every such metric the ``ModelOutput`` of a batch and the batch's data
    (natural range); other metrics get ``(reconstruction, data)``. States are reduced across processes
    as for any torchmetrics metric (declare them with ``dist_reduce_fx="sum"``).
    """

    full_state_update = False

    @abstractmethod
    def update(self, output: ModelOutput, data: Tensor) -> None:
        """Accumulate the statistics of one batch."""
