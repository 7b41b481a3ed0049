"""``docs/writing-a-node.md`` runs as written: every code block of the guide is executed here, in order.

A block whose first line is ``# file: PATH`` is written to PATH in a fresh project directory (a later block naming
the same PATH continues that file); a ``sh`` block is run by bash in that directory with the installed ``onex`` and
``pytest`` first on PATH. The Kafka section's ``onex run`` is run against the test broker (its address replaces the
guide's ``127.0.0.1:9092``). A block may only be left out with ``<!-- not executed: REASON -->`` right above it, and
the reasons allowed are listed here, for the lead to wire up when the commands exist.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from onex._kafka import KafkaBus
from onex.envelope import OnexEnvelopeV1, topic_name

from tests.fixtures.kafka import TEST_CONSUMER_OPTIONS

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "writing-a-node.md"
GUIDE_BROKER = "127.0.0.1:9092"
# Blocks the guide may show without running them (none today).
NOT_YET: set[str] = set()


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    not_executed: str | None  # the reason, when the guide marks the block

    @property
    def file(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        return first.removeprefix("# file: ").strip() if first.startswith("# file: ") else None

    @property
    def runs_a_node(self) -> bool:
        return "onex run" in self.text

    @property
    def pokes(self) -> bool:
        """``onex publish`` / ``onex tail``: run against the node the Kafka section runs."""
        return "onex publish" in self.text or "onex tail" in self.text

    @property
    def scaffolds(self) -> bool:
        """``onex new node``: run in a directory of its own, since the guide then writes the same node by hand."""
        return "onex new node" in self.text


def guide_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = GUIDE.read_text().splitlines()
    at = 0
    while at < len(lines):
        fence = re.fullmatch(r"```(\S*)", lines[at])
        if fence is None:
            at += 1
            continue
        end = lines.index("```", at + 1)
        before = next((lines[i] for i in range(at - 1, -1, -1) if lines[i].strip()), "")
        marked = re.fullmatch(r"<!-- not executed: (.+) -->", before)
        text = "\n".join(lines[at + 1 : end]) + "\n"
        blocks.append(Block(fence.group(1), text, at + 1, marked.group(1) if marked else None))
        at = end + 1
    return blocks


def environment() -> dict[str, str]:
    """The test's environment without ONEX_* settings, with this interpreter's scripts (onex, pytest) first."""
    # PYTEST_ADDOPTS is the outer run's (coverage, -x ...), not what a reader's `pytest` would get.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEX_") and k != "PYTEST_ADDOPTS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "300"  # rich wraps tables at the terminal width; the test reads them whole
    return env


def write(project: Path, block: Block, written: set[str]) -> None:
    assert block.file is not None
    path = project / block.file
    path.parent.mkdir(parents=True, exist_ok=True)
    body = block.text.split("\n", 1)[1]
    if block.file in written:  # the guide continues a file it started in an earlier block
        body = path.read_text() + "\n" + body
    path.write_text(body)
    written.add(block.file)


def sh(project: Path, block: Block) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=project,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_block_of_the_guide_is_run_or_says_why_not() -> None:
    blocks = guide_blocks()

    for block in blocks:
        where = f"docs/writing-a-node.md:{block.line}"
        assert block.lang in ("python", "yaml", "sh"), f"{where}: a {block.lang or 'plain'} block cannot be run"
        if block.lang != "sh":
            assert block.file is not None, f"{where}: a {block.lang} block must start with '# file: PATH'"
        assert block.not_executed in (None, *NOT_YET), f"{where}: not executed: {block.not_executed}"
    assert {b.not_executed for b in blocks if b.not_executed} == NOT_YET
    assert sum(b.runs_a_node for b in blocks if b.not_executed is None) == 1
    assert sum(b.pokes for b in blocks) == sum(b.scaffolds for b in blocks) == 1
    # The guide's own test is among what runs.
    assert any(b.lang == "sh" and "pytest" in b.text for b in blocks if b.not_executed is None)


def test_the_guide_builds_a_node_that_validates_draws_and_passes_its_tests(tmp_path: Path) -> None:
    written: set[str] = set()
    outputs: dict[str, str] = {}
    for block in guide_blocks():
        if block.not_executed is not None or block.runs_a_node or block.pokes or block.scaffolds:
            continue  # each has a test of its own, below
        if block.file is not None:
            write(tmp_path, block, written)
            continue
        done = sh(tmp_path, block)
        assert done.returncode == 0, f"docs/writing-a-node.md:{block.line}:\n{block.text}{done.stdout}{done.stderr}"
        outputs[block.text] = done.stdout

    graph = next(out for text, out in outputs.items() if "onex graph word_count" in text)
    assert "received --> counted" in graph
    assert "received --> empty" in graph
    tests = next(out for text, out in outputs.items() if "pytest" in text)
    assert re.search(r"\b3 passed\b", tests), tests
    # The guide's code is as clean as the project's own: ruff's rules, formatted, mypy strict.
    venv = Path(sys.executable).parent
    commands: list[list[str | Path]] = [
        [venv / "ruff", "check", "--select", "E,F,W,I,B,UP,SIM,RUF,PT", "--line-length", "120", "."],
        [venv / "ruff", "format", "--check", "--line-length", "120", "."],
        [venv / "mypy", "--strict", "--no-incremental", "nodes", "tests"],
    ]
    for command in commands:
        done = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}:\n{done.stdout}{done.stderr}"
    assert written == {
        "contracts/computes/word_count.yaml",
        "subcontracts/fsm/document.yaml",
        "nodes/word_count/v1_0_0/models.py",
        "nodes/word_count/v1_0_0/node.py",
        "tests/test_word_count.py",
    }


def test_the_guides_scaffold_writes_a_node_that_validates_and_passes_its_test(tmp_path: Path) -> None:
    [block] = [b for b in guide_blocks() if b.scaffolds]
    done = sh(tmp_path, block)
    assert done.returncode == 0, f"{block.text}{done.stdout}{done.stderr}"
    for command in ("onex validate", "pytest -q tests/test_word_count.py"):
        checked = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300
        )
        assert checked.returncode == 0, f"{command}:\n{checked.stdout}{checked.stderr}"
    assert (tmp_path / "nodes/word_count/v1_0_0/node.py").is_file()


def spawn(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``script`` run by bash in the background, its stderr piped."""
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # bash and onex in a process group of their own, which the test stops as one
    )


class Lines:
    """A process's stderr, line by line, read by a thread: the test waits on the queue, never sleeps."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stderr is not None
        stream = process.stderr

        def read() -> None:
            for line in stream:
                self._queue.put(line)
            self._queue.put(None)

        self._stream = stream
        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        """After the process ended: the reader sees the end of the stream, and the pipe is closed."""
        self._reader.join(timeout=60)
        self._stream.close()

    def wait_for(self, pattern: str, *, timeout: float = 120.0) -> None:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout:g} s:\n{''.join(self.seen)}")
            if line is None:
                pytest.fail(f"the process ended before a line matching {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if re.search(pattern, line):
                return

    def rest(self, *, timeout: float = 60.0) -> str:
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@pytest.mark.kafka
@pytest.mark.anyio
async def test_the_guides_node_runs_on_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    written: set[str] = set()
    blocks = [b for b in guide_blocks() if b.not_executed is None]
    for block in blocks:
        if block.file is not None:
            write(tmp_path, block, written)
        elif block.text.split()[0] in ("mkdir", "touch"):
            assert sh(tmp_path, block).returncode == 0
    [run] = [b for b in blocks if b.runs_a_node]
    assert GUIDE_BROKER in run.text
    env = {**environment(), "ONEX_ENV": f"guide{uuid.uuid4().hex[:8]}"}  # topics and groups of this test only
    process = spawn(run.text.replace(GUIDE_BROKER, kafka_bootstrap), cwd=tmp_path, env=env)
    lines = Lines(process)
    try:
        lines.wait_for(r"^running\b|\brunning$")
        counted: asyncio.Future[OnexEnvelopeV1] = asyncio.get_running_loop().create_future()

        async def record(envelope: OnexEnvelopeV1) -> None:
            if not counted.done() and envelope.payload["doc_id"] == "d1":
                counted.set_result(envelope)

        def topic(event: str) -> str:
            return topic_name(event, env=env["ONEX_ENV"], tenant="omninode_bridge", cls="evt", major=1)

        async with KafkaBus(kafka_bootstrap, consumer_options=TEST_CONSUMER_OPTIONS) as bus:
            await bus.subscribe([topic("WORDS_COUNTED")], f"{env['ONEX_ENV']}.test", handler=record)
            sent = OnexEnvelopeV1(
                event_type="TEXT_SUBMITTED",
                source_node_id="test_guide",
                correlation_id=uuid.uuid4(),
                payload={"doc_id": "d1", "text": "a rose is a rose"},
            )
            await bus.publish(topic("TEXT_SUBMITTED"), sent)
            result = await asyncio.wait_for(counted, timeout=120)

        assert result.payload["words"] == 3
        assert result.correlation_id == sent.correlation_id
        # The guide's own poke: publish a document, tail what the node answered (from the beginning, one).
        [poke] = [b for b in guide_blocks() if b.pokes]
        assert GUIDE_BROKER in poke.text
        poked = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", poke.text.replace(GUIDE_BROKER, kafka_bootstrap)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert poked.returncode == 0, f"{poke.text}{poked.stdout}{poked.stderr}"
        assert "onex.evt.text-submitted.v1" in poked.stdout  # what publish sent
        assert '{"doc_id":"d1","words":3}' in poked.stdout  # what tail read back
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, lines.rest()
        assert "stopped" in lines.rest()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        lines.close()
