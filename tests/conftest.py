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


@pytest.fixture(scope="session")
def shapes_tiny(tmp_path_factory):
    """A tiny embedded data set (60/20/20 images), written once per test session."""
    from fibervl.data.shapes import ShapesConfig, generate

    out = tmp_path_factory.mktemp("shapes") / "tiny"
    generate(out, ShapesConfig(size=60, seed=0, workers=1))
    return out
