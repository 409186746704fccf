"""Shared test settings."""

import pytest


@pytest.fixture(autouse=True)
def no_tracking_by_default(monkeypatch):
    """Stages called in-process log nothing to MLflow unless a test turns tracking on itself
    (``COMEDIAN_TRACKING=1`` and a store in its tmp dir): no test writes into the checkout's results/."""
    monkeypatch.setenv("COMEDIAN_TRACKING", "0")
