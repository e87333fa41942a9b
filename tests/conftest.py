import pytest
import torch

from fibervl.testing.configs import micro_config


@pytest.fixture
def micro():
    return micro_config()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g)
    ids = torch.randint(4, 99, (2, 9), generator=g)
    ids[:, 0] = 0
    ids[0, -1] = 2
    ids[1, 6] = 2
    ids[1, 7:] = 1
    mask = ids.ne(1).long()
    return images, ids, mask
