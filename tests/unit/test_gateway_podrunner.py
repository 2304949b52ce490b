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
    runner = LocalPodRunner(None, "ns", ["m"], tmp_path, tmp_path / "addresses.json", tmp_path)
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
    assert (tmp_path / "addresses.json").read_text() == "{}"


def test_a_running_process_is_stopped_even_when_the_pool_is_busy_as_the_runner_stops(tmp_path):
    """stop() hands each running process's stop to the pool; starts still in progress fill the
    pool, and its shutdown must not drop the stops queued behind them."""
    runner = LocalPodRunner(None, "ns", ["m"], tmp_path, tmp_path / "addresses.json", tmp_path)
    runner._thread.start()
    running, gate = Backend(), threading.Event()
    runner.running["pod-0"] = RunningPod(running, {}, 0.1)
    runner._wanted["pod-0"] = {}
    for n in range(4):  # every worker busy with a start that ends once stop() has begun
        runner._starting.add(f"pod-{n + 1}")
        runner._pool.submit(gate.wait, 5)
    threading.Timer(0.3, gate.set).start()
    runner.stop()
    assert running.stopped.is_set(), "a running process was left running by stop()"
    assert (tmp_path / "addresses.json").read_text() == "{}"
