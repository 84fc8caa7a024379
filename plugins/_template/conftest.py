"""Only for the skeleton in plugins/_template: delete this file in your copy.

The skeleton is excluded from the uv workspace, so it is not installed in the workspace's venv
and the monorepo's test run (rootdir = the repository) must not collect its tests: that would be
an import error. tests/test_template_plugin.py at the repository root runs them instead, in a
fresh venv where the built wheel is installed. Run here on their own (rootdir = this folder),
they are always collected.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.rootpath.resolve() != HERE and importlib.util.find_spec("dkron_executor_template") is None:
        return True
    return None
