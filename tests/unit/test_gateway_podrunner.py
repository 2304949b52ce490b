"""The local pod runner never leaves a reranker process behind: one whose start finishes while
the runner is stopping (its pool already shut down) is stopped too. Such a process, orphaned,
was found still running after a test session."""
from __future__ import annotations

import threading

from testkit.podrunner import LocalPodRunner, RunningPod


class Backend:
    address = "127.0.0.1:1"

    def __init__(self):
        self.stopped = threading.Event()

    def stop(self):
        self.stopped.set()


def test_a_process_that_finishes_starting_while_the_runner_stops_is_stopped(tmp_path):
    runner = LocalPodRunner(None, "ns", ["m"], tmp_path, tmp_path / "overrides.json", tmp_path)
    runner._thread.start()  # the runner's loop, without the pod watch (no API here)
    backend, gate = Backend(), threading.Event()

    def slow_start():  # as _start_pod does: report on the loop once the process answers
        gate.wait(5)
        runner.loop.call_soon_threadsafe(runner._started, "pod-1", RunningPod(backend, {}, 0.1))

    runner._starting.add("pod-1")
    runner._pool.submit(slow_start)
    threading.Timer(0.3, gate.set).start()  # finishes after stop() has begun
    runner.stop()
    assert backend.stopped.is_set(), "the process that finished starting during stop() was left running"
    assert (tmp_path / "overrides.json").read_text() == "{}"
