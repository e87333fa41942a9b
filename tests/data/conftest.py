"""A tiny shapes data set, generated once per test session (a few seconds)."""

import pytest

from fibervl.data.shapes import ShapesConfig, ShapesDataset, generate


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate(out, ShapesConfig(size=60, seed=3, workers=2, vocab_size=600))
    return out


@pytest.fixture(scope="session")
def shapes(shapes_dir):
    return ShapesDataset(shapes_dir)


@pytest.fixture(scope="session")
def official(shapes_tiny, tmp_path_factory):
    """Tiny data sets in the public sets' own layouts (tests/data/official_layouts.py): {name: SPEC}."""
    from official_layouts import write_all

    return write_all(shapes_tiny, tmp_path_factory.mktemp("official"))
