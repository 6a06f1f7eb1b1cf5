"""Fixtures of the built-in task tests: tiny TFF-format files and a trained tiny text run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_NAME = "tff_lab_tests_text_run_fixture"
if _NAME not in sys.modules:  # tests/ dirs are not packages (import-mode=importlib): load by path
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("text_run_fixture.py"))
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])
fx = sys.modules[_NAME]


@pytest.fixture(scope="session")
def tff_cache(tmp_path_factory) -> Path:
    """emnist_all.sqlite and shakespeare.sqlite in TFF's layout, in a cache directory."""
    return fx.write_tff_cache(tmp_path_factory.getbasetemp() / "tff_cache")


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, tff_cache) -> Path:
    """A finished 2-round Shakespeare run (tiny char LSTM) through tff_lab.run_experiment."""
    return fx.make_text_run(tmp_path_factory.getbasetemp() / "text_run", tff_cache)
