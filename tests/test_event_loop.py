"""The event loop every ``onex`` command runs on (``ONEX_EVENT_LOOP``): uvloop where it is installed, asyncio's own
on request or without it. The commands themselves are run on each in ``tests/test_cli.py``."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import uvloop
from onex.exceptions import OnexError
from onex.runtime import chosen_loop, event_loop_factory, loop_name, run_main
from onex.settings import Settings


async def running_loop() -> str:
    return loop_name(asyncio.get_running_loop())


def test_auto_and_uvloop_make_uvloops_loop_and_asyncio_asyncios() -> None:
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None  # asyncio.Runner's own
    assert [chosen_loop(choice) for choice in ("auto", "uvloop", "asyncio")] == ["uvloop", "uvloop", "asyncio"]


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_main_runs_a_coroutine_to_its_end_on_the_loop_named(choice: str, loop: str) -> None:
    assert run_main(running_loop(), event_loop=choice) == loop


def test_without_uvloop_auto_is_asyncios_loop_and_uvloop_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError, as where it is missing

    assert event_loop_factory("auto") is None
    assert chosen_loop("auto") == "asyncio"
    assert run_main(running_loop(), event_loop="auto") == "asyncio"
    with pytest.raises(OnexError, match=r"^ONEX_EVENT_LOOP=uvloop: uvloop is not installed"):
        event_loop_factory("uvloop")


def test_the_setting_is_read_from_onex_event_loop_and_checked() -> None:
    assert Settings.load(environ={}).event_loop == "auto"
    assert Settings.load(environ={"ONEX_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ValueError, match="ONEX_EVENT_LOOP"):
        Settings.load(environ={"ONEX_EVENT_LOOP": "trio"})


def _wait_to_be_terminated(ready: Any) -> None:
    ready.put(os.getpid())
    time.sleep(120)  # a signal whose handler does nothing resumes it (PEP 475)


def test_a_process_forked_under_run_main_stops_on_terminate() -> None:
    # run_main's loop takes SIGTERM; a child forked meanwhile inherited that handler, which only wakes the parent's
    # loop: Process.terminate() left it running (bench/multiprocess.py's raw pipeline stages outlived the run).
    context = multiprocessing.get_context("fork")
    ready = context.Queue()

    async def fork_and_terminate() -> int | None:
        child = context.Process(target=_wait_to_be_terminated, args=(ready,), daemon=True)
        child.start()
        try:
            await asyncio.to_thread(ready.get, True, 30)
            child.terminate()
            await asyncio.to_thread(child.join, 30)
            return child.exitcode
        finally:
            if child.is_alive():
                child.kill()
                child.join()

    assert run_main(fork_and_terminate()) == -signal.SIGTERM


HANGS_WHEN_CANCELLED = """
import asyncio
from onex.runtime import run_main

async def main():
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.Event().wait()  # a drain that never ends (the store stays down)

run_main(main(), shutdown_timeout_s=0.5)
"""


def test_a_drain_after_sigterm_that_outlasts_the_shutdown_timeout_exits_1_saying_so() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HANGS_WHEN_CANCELLED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)  # 0.5 s, unless the deadline is never armed
        finally:
            proc.kill()

    assert proc.returncode == 1, stderr
    assert "shutdown did not finish within 0.5 s (ONEX_SHUTDOWN_TIMEOUT_S)" in stderr
