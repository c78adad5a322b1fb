"""The images the cluster itself needs, built from `images/` with the local Docker engine:

- `kod/pause:3.10`: the sandbox image of every pod (containerd's `sandbox_image`).
- `kod/testbox:0.1.0`: Debian slim plus a static busybox (sh, httpd, nc, wget): a tiny general
  image for tests of every component.

An image is rebuilt only when the files of its build context changed: their hash is a label of
the image (`io.kod.context-hash`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kod import errors
from localenv.shell import require, run

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
CONTEXT_LABEL = "io.kod.context-hash"


@dataclass(frozen=True)
class LocalImage:
    """An image built from a directory of `images/`."""

    ref: str
    context: Path

    def context_hash(self) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in self.context.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(self.context)).encode() + b"\0" + f.read_bytes())
        return h.hexdigest()[:32]


PAUSE = LocalImage("kod/pause:3.10", IMAGES_DIR / "pause")
TESTBOX = LocalImage("kod/testbox:0.1.0", IMAGES_DIR / "testbox")
ALL = (PAUSE, TESTBOX)


def built_hash(ref: str) -> str | None:
    """The context hash label of the local image `ref`, or None when it does not exist."""
    docker = require("docker", package="docker.io")
    proc = run([docker, "image", "inspect", "-f", f'{{{{index .Config.Labels "{CONTEXT_LABEL}"}}}}', ref], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure(image: LocalImage, logs_dir: Path) -> str:
    """Build the image unless it exists from the same context; returns what was done."""
    want = image.context_hash()
    if built_hash(image.ref) == want:
        return f"{image.ref} up to date"
    docker = require("docker", package="docker.io")
    log = logs_dir / f"build-{image.context.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = run(
        [docker, "build", "--label", f"{CONTEXT_LABEL}={want}", "-t", image.ref, image.context],
        check=False, timeout=1800,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise errors.Internal(
            f"building {image.ref} failed; see {log}:\n{(proc.stderr or proc.stdout)[-1500:]}",
            hint="check the access to deb.debian.org from `docker build`, then run `python -m localenv up` again",
        )
    return f"{image.ref} built"
