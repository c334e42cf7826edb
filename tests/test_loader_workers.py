"""DataLoader workers sized to the cores: ``auto`` from the affinity mask and the processes per node, a warning
for more workers than cores, pinned memory only with CUDA."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from vqkit.data import workers
from vqkit.data.photos import EmbeddedPhotosDataModule


@pytest.mark.parametrize("cores, local_world, expected", [(1, None, 0), (2, None, 1), (16, None, 8), (64, "8", 7),
                                                          (2, "2", 0)])
def test_auto_is_this_process_share_of_the_cores_minus_one(monkeypatch, cores, local_world, expected):
    monkeypatch.setattr(workers, "usable_cores", lambda: cores)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert workers.resolve_num_workers("auto") == expected
    assert workers.resolve_num_workers(3) == 3  # a number is taken as given


def test_more_workers_than_cores_warns_and_bad_values_are_refused(monkeypatch, caplog):
    monkeypatch.setattr(workers, "usable_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with caplog.at_level(logging.WARNING, logger="vqkit.data.workers"):
        assert workers.check_num_workers(2) == 2
        assert not caplog.records
        assert workers.check_num_workers(8) == 8
    assert "data.num_workers=8 but this process may use only 2 CPU cores" in caplog.text
    assert "data.num_workers=auto (1 here)" in caplog.text
    for bad in (-1, "four", 1.5, True):
        with pytest.raises(ValueError, match="'auto' or an integer >= 0"):
            workers.check_num_workers(bad)


def test_usable_cores_follows_the_affinity_mask():
    assert 1 <= workers.usable_cores() <= (os.cpu_count() or 1)


def test_a_data_module_resolves_auto_when_it_builds_its_loader(monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    dm = EmbeddedPhotosDataModule(image_size=16, batch_size=2, train_samples=4, val_samples=2, num_workers="auto")
    assert dm.num_workers == "auto"
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
