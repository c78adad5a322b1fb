"""The base image `debian:bookworm-slim`, made locally because no registry can be reached.

Every Dockerfile of the project starts `FROM debian:bookworm-slim`, so it stays standard: where a
registry is reachable the same Dockerfiles use the official image. Here the image is a cleaned
`debootstrap --variant=minbase` root filesystem, imported with `docker import`. The rootfs
tarball is cached under <cache_dir>/base-image, so a re-import (after `docker image rm`, or on a
machine with the same cache) needs no debootstrap.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from localenv.progress import Step
from localenv.shell import require, run

IMAGE = "debian:bookworm-slim"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

SOURCES_LIST = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://deb.debian.org/debian-security bookworm-security main\n"
)

# The two files Docker's official Debian images carry: apt deletes downloaded .debs after each
# install, and dpkg skips documentation, so `RUN apt-get install` layers stay small.
DOCKER_CLEAN = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache "";\n'
    'Dir::Cache::srcpkgcache "";\n'
)
DOCKER_EXCLUDES = (
    "path-exclude /usr/share/doc/*\n"
    "path-include /usr/share/doc/*/copyright\n"
    "path-exclude /usr/share/man/*\n"
    "path-exclude /usr/share/groff/*\n"
    "path-exclude /usr/share/info/*\n"
    "path-exclude /usr/share/locale/*\n"
    "path-exclude /usr/share/lintian/*\n"
    "path-exclude /usr/share/linda/*\n"
)

#: Removed from the rootfs: package caches and lists, and documentation.
CLEAN_GLOBS = (
    "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/locale/*", "usr/share/doc/*",
    "usr/share/man/*", "usr/share/info/*",
)


def tarball(cache_dir: Path) -> Path:
    return cache_dir / "debian-bookworm-slim.tar"


def present(image: str = IMAGE) -> bool:
    docker = require("docker", package="docker.io")
    return run([docker, "image", "inspect", "-f", "{{.Id}}", image], check=False).returncode == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def make_rootfs(target: Path, step: Step | None = None) -> None:
    """debootstrap a minimal bookworm into `target` and clean it like Docker's images."""
    debootstrap = require("debootstrap")
    if step:
        step.info(f"debootstrap --variant=minbase {SUITE} (about half a minute)")
    run([debootstrap, "--variant=minbase", SUITE, target, MIRROR], timeout=1800,
        hint=f"check the network access to {MIRROR}")
    for pattern in CLEAN_GLOBS:
        for p in target.glob(pattern):
            _remove(p)
    (target / "etc/apt/sources.list").write_text(SOURCES_LIST)
    (target / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
    (target / "etc/apt/apt.conf.d/docker-clean").write_text(DOCKER_CLEAN)
    (target / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (target / "etc/dpkg/dpkg.cfg.d/docker-excludes").write_text(DOCKER_EXCLUDES)


def ensure(cache_dir: Path, step: Step | None = None, image: str = IMAGE) -> str:
    """Make sure `image` exists in Docker; returns what was done."""
    if present(image):
        return f"{image} present"
    docker = require("docker", package="docker.io")
    tar = tarball(cache_dir)
    how = "imported from the cached rootfs"
    if not tar.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="rootfs-") as tmp:
            root = Path(tmp) / "rootfs"
            make_rootfs(root, step)
            partial = tar.with_suffix(".partial")
            run(["tar", "-C", root, "--numeric-owner", "-cf", partial, "."], timeout=600)
            partial.replace(tar)
        how = "built with debootstrap"
    run([docker, "import", "-c", 'CMD ["bash"]', tar, image], timeout=600)
    return f"{image} {how}"
