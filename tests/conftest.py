"""Shared test configuration: point state at a throwaway directory for every test session."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_dir() -> None:
    # Tests never touch the real /run/portwright; every portwright call in a test (library or
    # subprocess) sees this directory through the environment.
    if "PORTWRIGHT_STATE_DIR" not in os.environ:
        os.environ["PORTWRIGHT_STATE_DIR"] = tempfile.mkdtemp(prefix="pw-test-state-")
