import pytest

from fibervl.tasks import grounding


@pytest.fixture
def eval_batches(monkeypatch) -> dict:
    """The fine-grained evaluation loader keeps its latest batch in this dict (under "batch"), so
    that a stand-in ranker or detector can answer from the batch's ground truth."""
    real_loader, current = grounding._eval_loader, {}

    def loader(*args, **kwargs):
        for batch in real_loader(*args, **kwargs):
            current["batch"] = batch
            yield batch

    monkeypatch.setattr(grounding, "_eval_loader", loader)
    return current
