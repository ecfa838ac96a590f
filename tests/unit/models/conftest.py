import pytest

from diffmesh.models.load import WeightStore


@pytest.fixture(scope="module")
def store():
    """One weight store per test module, like one worker's."""
    return WeightStore()
