"""kod.console: output whose reader went away costs the messages, never the program's work or its
exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kod import console

REPO = Path(__file__).resolve().parents[2]


def test_writing_to_a_pipe_whose_reader_is_gone_raises_nothing_and_then_writes_nowhere() -> None:
    read, write = os.pipe()
    os.close(read)
    stream = console.Tolerant(open(write, "w", buffering=1))  # noqa: SIM115 - closed below
    try:
        stream.write("lost\n")
        stream.flush()
        print("also lost", file=stream, flush=True)  # type: ignore[arg-type]
        assert stream.broken
        assert os.readlink(f"/proc/self/fd/{write}") == os.devnull
    finally:
        stream.wrapped.close()


def test_a_stream_that_works_is_passed_through(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as f:
        stream = console.tolerant(f)
        print("kept", file=stream)  # type: ignore[arg-type]
        assert console.tolerant(stream) is stream
        assert not stream.isatty()
    assert (tmp_path / "out").read_text() == "kept\n"
    assert not stream.broken  # type: ignore[attr-defined]


def test_a_program_whose_output_pipe_broke_exits_with_its_own_code_and_no_traceback() -> None:
    """Without it, Python's last flush of stdout fails and the exit code becomes 120, with an
    'Exception ignored' message; a print on the way raises BrokenPipeError."""
    program = ("from kod import console; console.install()\n"
               "import sys\n"
               "for _ in range(2000): print('x' * 100)\n"
               "print('done', file=sys.stderr)\n"
               "sys.exit(7)\n")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-c", program], stdout=write, stderr=subprocess.PIPE, cwd=REPO,
                              timeout=60, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr == b"done\n"
