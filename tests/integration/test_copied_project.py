"""The shipped project copied to another directory and run from there: its ``nodes`` package is then not the one that
owns the name ``nodes`` in the process (the repository's is, imported below as ``onex run`` from the repository
imports it), so the loader imports the copy under a private alias (``onex.contracts.imports``). The shipped nodes
import their payload models relatively, so every node of the copy and every payload model its contracts name are the
copy's own classes; with an absolute ``import nodes.models`` the orchestrator took the request, a model of the copy,
for a step's result (an ``isinstance`` of the repository's class) and dropped it without a word.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
from onex.testing import Harness

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio

importlib.import_module("nodes")  # the repository's own package owns the name, whatever ran before


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for part in ("contracts", "subcontracts", "nodes"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


async def test_a_copy_of_the_project_stamps_from_its_own_directory(copied: Path) -> None:
    async with Harness(root=copied) as h:
        orchestrator = type(h.runtime.node("orchestrator"))
        assert orchestrator.__module__.startswith("_onex_project_")  # the copy's own class, under the alias
        sent = await h.publish("STAMP_REQUESTED", {"content": "print('copied')\n", "namespace": "it.copied"})
        await h.settle()

        completed = [e for e in h.of("WORKFLOW_COMPLETED") if e.correlation_id == sent.correlation_id]
        assert len(completed) == 1, [name for name, _ in h.events]
        assert completed[0].payload.file_hash
        assert not h.dead_letters()


async def test_a_copy_whose_orchestrator_imports_the_other_packages_models_dead_letters_its_requests(
    copied: Path,
) -> None:
    """The mistake the relative imports avoid, made on purpose: the copy's orchestrator imports the repository's
    ``nodes.models``, so the payloads its contracts decode into are not the classes it checks. Each request is
    dead-lettered with an error that names the event and both classes, instead of being taken for a late result and
    dropped without a word."""
    node = copied / "nodes" / "orchestrator" / "v1_0_0" / "node.py"
    source = node.read_text()
    assert "from ...models import (" in source
    node.write_text(source.replace("from ...models import (", "from nodes.models import (", 1))
    async with Harness(root=copied) as h:
        sent = await h.publish("STAMP_REQUESTED", {"content": "print('copied')\n", "namespace": "it.copied"})
        await h.settle()

    assert not h.of("WORKFLOW_COMPLETED")
    [dead] = h.dead_letters()
    assert dead.payload["original"]["event_id"] == str(sent.event_id)
    assert dead.payload["error_type"] == "PayloadError"
    assert dead.payload["attempts"] == 1  # not retried: no attempt could handle it
    assert str(sent.event_id) in dead.payload["error"]
    assert "_onex_project_" in dead.payload["error"]  # the copy's class, named with its module
    assert "nodes.models.ModelStampRequest" in dead.payload["error"]
