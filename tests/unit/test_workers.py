"""The background threads of the streaming passes: write-behind order, bound and errors; hashing while torch imports."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from pvreg.registry.tensors.workers import WriteBehind, while_importing_torch


def test_write_behind_runs_jobs_in_order_on_one_other_thread() -> None:
    done: list[tuple[int, str]] = []
    with WriteBehind() as behind:
        with behind.scope():
            for i in range(20):
                behind.submit(lambda i: done.append((i, threading.current_thread().name)), i)
    assert [i for i, _ in done] == list(range(20))
    names = {name for _, name in done}
    assert len(names) == 1 and names != {threading.current_thread().name}


def test_write_behind_bounds_what_is_queued() -> None:
    """A third job waits for the first to finish: at most PENDING outputs are held at once."""
    release = threading.Event()
    third_submitted = threading.Event()
    with WriteBehind() as behind:
        with behind.scope():
            for _ in range(WriteBehind.PENDING):
                behind.submit(release.wait)

            def submit_third() -> None:
                behind.submit(lambda: None)
                third_submitted.set()

            t = threading.Thread(target=submit_third)
            t.start()
            assert not third_submitted.wait(0.3), "submit did not wait although PENDING jobs were outstanding"
            release.set()
            t.join(10)
            assert third_submitted.is_set()


def test_a_failed_job_is_raised_in_the_caller_and_later_jobs_do_not_run() -> None:
    ran: list[int] = []

    def job(i: int) -> None:
        if i == 1:
            raise OSError(28, "No space left on device")
        time.sleep(0.01)
        ran.append(i)

    with pytest.raises(OSError, match="No space left"), WriteBehind() as behind, behind.scope():
        for i in range(50):
            behind.submit(job, i)
    assert 0 in ran and all(i < 1 + 1 + WriteBehind.PENDING for i in ran), ran


def test_scope_waits_for_the_running_job_when_the_caller_fails() -> None:
    """Nothing may still be writing when the caller's clean-up (aborting the writer) runs."""
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    with pytest.raises(ValueError), WriteBehind() as behind:
        with behind.scope():
            behind.submit(slow)
            time.sleep(0.05)  # the job is running, not just queued
            raise ValueError("caller failed")
    assert finished.is_set()


def test_while_importing_torch_hashes_on_a_helper_thread_in_a_fresh_process() -> None:
    code = (
        "import sys, threading\n"
        "from pvreg.registry.tensors.workers import while_importing_torch\n"
        "assert 'torch' not in sys.modules\n"
        "name = while_importing_torch(lambda: threading.current_thread().name)\n"
        "assert 'torch' in sys.modules, 'torch was not imported'\n"
        "print(name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out != "MainThread" and out.startswith("pvreg-prepare")


def test_while_importing_torch_raises_the_works_error_and_runs_inline_once_torch_is_loaded() -> None:
    import torch  # noqa: F401

    assert while_importing_torch(lambda: threading.current_thread().name) == threading.current_thread().name

    def fail() -> None:
        raise KeyError("bad input")

    with pytest.raises(KeyError, match="bad input"):
        while_importing_torch(fail)
