"""Shared by the stack's checks."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def exported_metrics():
    """Every `embedstream_*` metric name the Rust code spells out."""
    names = set()
    for src in ROOT.glob("*/src/**/*.rs"):
        names.update(re.findall(r'"(embedstream_[a-z_]+)"', src.read_text()))
    return names
