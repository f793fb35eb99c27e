"""The project CLIs a sweep has running: started, waited for and, on an interruption, stopped without orphans."""
import os
import subprocess
import threading
import time
from typing import Dict, List, Optional

from benchmarks.experiment_utils import CommandFailed, start_logged


def loader_workers_per_run(num_workers: int, parallel: int) -> int:
    """Data-loader workers of each of ``parallel`` concurrent runs: ``num_workers`` split evenly, at least 1 each;
    0 stays 0 (loading inside the training process was asked for)."""
    if num_workers <= 0 or parallel <= 1:
        return num_workers
    return max(1, num_workers // parallel)


class ChildProcesses:
    """The project CLIs a runner has running, from any thread. :meth:`run` runs one to completion (output to a log
    file); :meth:`terminate_all` stops every running one (SIGTERM, which makes
    train.py / train_ssl.py save last.ckpt, then SIGKILL after ``grace_s``) and refuses new ones, so that an
    interrupted sweep leaves no orphaned GPU process behind. ``env``: variables set for the children on top of this
    process's environment."""

    def __init__(self, grace_s: float = 30.0, env: Optional[Dict[str, str]] = None) -> None:
        self.grace_s = grace_s
        self.env = dict(os.environ, **env) if env else None
        self._lock = threading.Lock()
        self._running: set = set()
        self._stopping = False

    def run(self, cmd: List[str], log_path: str) -> float:
        """Runs ``cmd`` (output to ``log_path``); its wall-clock seconds. :class:`CommandFailed` on a non-zero exit."""
        name = os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0]
        t0 = time.perf_counter()
        with self._lock:
            if self._stopping:
                raise CommandFailed(f'{name} not started: the sweep is stopping, see {log_path}')
            proc = start_logged(cmd, log_path, self.env)
            self._running.add(proc)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the waiting thread was interrupted (Ctrl-C / SIGTERM of a sequential sweep)
                self._stop([proc])
            with self._lock:
                self._running.discard(proc)
        if code != 0:
            raise CommandFailed(f'{name} failed (exit {code}), see {log_path}')
        return time.perf_counter() - t0

    def running(self) -> List[int]:
        """Process ids of the running CLIs."""
        with self._lock:
            return [p.pid for p in self._running if p.poll() is None]

    def terminate_all(self) -> int:
        """Stops every running CLI and refuses new ones; returns how many were stopped."""
        with self._lock:
            self._stopping = True
            procs = [p for p in self._running if p.poll() is None]
        self._stop(procs)
        return len(procs)

    def _stop(self, procs: List[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self.grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
