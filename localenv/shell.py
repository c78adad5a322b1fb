"""Running external commands with errors that say what failed and what to do."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kod import errors


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = 600,
    hint: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text, and raise `errors.Internal` (with the command,
    its exit code and the end of its output) when it fails and `check` is set."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise errors.Internal(f"command not found: {args[0]}", hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise errors.Unavailable(f"`{' '.join(args[:3])} ...` did not finish within {timeout} s", hint=hint) from exc
    out = subprocess.CompletedProcess(
        args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )
    if check and proc.returncode != 0:
        tail = (out.stderr.strip() or out.stdout.strip())[-2000:]
        raise errors.Internal(f"`{' '.join(args)}` failed with exit code {proc.returncode}: {tail}", hint=hint)
    return out


def which(name: str, *extra_dirs: str) -> Path | None:
    """The program `name` on PATH or in one of `extra_dirs` (for sbin directories and
    /usr/local/go/bin, which a non-login root shell may not have on PATH)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for d in (*extra_dirs, "/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if candidate.is_file():
            return candidate
    return None


def require(name: str, *extra_dirs: str, package: str | None = None) -> Path:
    """Like `which`, but raises an error naming the Debian package to install."""
    found = which(name, *extra_dirs)
    if found is None:
        raise errors.Unavailable(
            f"`{name}` is not installed",
            hint=f"run `python -m localenv up`, or `apt-get install {package or name}`",
        )
    return found


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
