"""A CSV logger that continues a resumed run's ``metrics.csv`` instead of failing on it."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Starts from the header of an existing ``metrics.csv``, so resumed runs append rows to it.

    Lightning's writer starts with no known columns; on a resumed run its first save then finds
    "new" columns, rewrites the file with only the columns of the current session and fails on
    the old rows (lightning 2.6). Knowing the old header, it only rewrites when a column is really new.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(header))

    def _check_log_dir_exists(self) -> None:
        """Lightning warns that old files will be deleted; here they are continued, so say nothing."""


class ResumableCSVLogger(CSVLogger):
    """``lightning``'s ``CSVLogger`` whose ``metrics.csv`` survives ``resume=``: rows are appended."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
