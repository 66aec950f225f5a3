"""Optional sampling profiles of the worker and API processes with py-spy (`--profile DIR`).

py-spy attaches to a running process from outside (no code change, little overhead) and writes
collapsed stacks; `summarize` turns them into the functions where the samples were (self time)
and the project/library functions most often on the stack (inclusive time).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

STOP_TIMEOUT_SECONDS = 30

# Set by `python -m bench --profile DIR`; summaries collected here until the scenario's result takes them.
profile_dir: Path | None = None
collected: dict[str, dict[str, list[tuple[str, float]]]] = {}


class Profiler:
    """`py-spy record` attached to one process until `stop()`."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        binary = shutil.which("py-spy")
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy, in the dev extra)")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(STOP_TIMEOUT_SECONDS)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
        return self.output


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/main/", 1)[-1]
    return f"{name} ({path})"


def summarize(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Shares of samples: where they were (self) and which functions were on the stack (inclusive)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"self": [], "inclusive": []}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "self": [(name, round(count / total, 3)) for name, count in self_time.most_common(top)],
        "inclusive": [(name, round(count / total, 3)) for name, count in inclusive.most_common(top * 2)],
        "samples": [("total", float(total))],
    }
