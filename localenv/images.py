"""The project's images, built from `images/` by one command: `python -m localenv images` (`make images`),
which also imports the session images (the apps' and the viewer's) into the cluster's nodes.

    from localenv.images import build_all, build_and_import
    build_and_import(handle.running(), only=["firefox"])   # what `python -m localenv images firefox` does
    build_all(progress=Progress())              # every image; up-to-date ones are skipped
    build_all(only=["viewer", "firefox"])       # some images (and the ones they build FROM)
    build_all(no_cache=True)                    # from scratch, e.g. to take Debian security updates
    build_all(force=True)                       # rebuild even when up to date (Docker's cache helps)

    python -m localenv.images --help            # build_all from the shell (builds only)

The images (`kod.apps.image_ref(name)`, e.g. `kod/firefox:0.1.0`):

    app-base        images/base        FROM debian:bookworm-slim (made by localenv.base_image if absent)
    firefox, libreoffice, blender      images/<name>, FROM app-base (build argument BASE)
    cuda-blender    images/blender     FROM an app base on an NVIDIA CUDA parent (`cuda_parent`) when
                                       one exists locally, else FROM app-base; GPU=nvidia either way
    viewer          images/viewer      FROM debian:bookworm-slim
    interlink, docker-sidecar, vk      images/services, one target each; the project and its
                                       dependencies go in as wheels made here with pip

An image is rebuilt only when its inputs changed: the files of its build context, its build
arguments and the ID of the image it builds FROM, hashed into the label `io.kod.context-hash`.
A rebuild still uses Docker's layer cache. Nothing is downloaded but Debian packages (by the
Dockerfiles) and Python wheels (by pip on this host, from PyPI); no registry is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kod import apps, errors
from localenv.handle import ClusterHandle
from localenv.progress import Progress, Step

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
CONTEXT_LABEL = "io.kod.context-hash"
DEBIAN = "debian:bookworm-slim"
#: The project's files that go into the services' wheel (pyproject's packages, README for its metadata).
PROJECT_FILES = ("pyproject.toml", "README.md")
PROJECT_PACKAGES = ("kod", "vk_bridge", "interlink", "sidecars", "cloudify", "localenv")
#: Timestamps inside the project's wheel: fixed, so the same sources give the same wheel bytes.
SOURCE_DATE_EPOCH = "315532800"
#: Seconds a single build may take (LibreOffice's packages take minutes on a slow mirror).
BUILD_TIMEOUT = 3600


@dataclass(frozen=True)
class ImageSpec:
    """How one image is built."""

    name: str
    directory: Path
    parent: str
    buildargs: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    #: The build context holds the project's wheels (images/services).
    wheels: bool = False

    @property
    def ref(self) -> str:
        return apps.image_ref(self.name)


@dataclass(frozen=True)
class BuildResult:
    """What build_all did for one image."""

    name: str
    ref: str
    action: str  # "built" or "up to date"
    seconds: float
    size_bytes: int


def specs(cuda_parent: str | None = None) -> list[ImageSpec]:
    """Every image, parents first. With `cuda_parent` (an NVIDIA CUDA image present locally),
    cuda-blender builds on an app base made FROM it."""
    base = apps.APP_BASE_IMAGE
    out = [
        ImageSpec("app-base", IMAGES_DIR / "base", DEBIAN, {"FROM_IMAGE": DEBIAN}),
        ImageSpec("viewer", IMAGES_DIR / "viewer", DEBIAN),
        ImageSpec("firefox", IMAGES_DIR / "firefox", base, {"BASE": base}),
        ImageSpec("libreoffice", IMAGES_DIR / "libreoffice", base, {"BASE": base}),
        ImageSpec("blender", IMAGES_DIR / "blender", base, {"BASE": base}),
    ]
    cuda_base = base
    if cuda_parent:
        cuda_base = apps.image_ref("app-base-cuda")
        out.append(ImageSpec("app-base-cuda", IMAGES_DIR / "base", cuda_parent, {"FROM_IMAGE": cuda_parent}))
    out.append(ImageSpec("cuda-blender", IMAGES_DIR / "blender", cuda_base, {"BASE": cuda_base, "GPU": "nvidia"}))
    for service in apps.SERVICE_IMAGES:
        out.append(ImageSpec(service, IMAGES_DIR / "services", DEBIAN, target=service, wheels=True))
    return out


def _with_parents(wanted: Iterable[str], all_specs: list[ImageSpec]) -> list[ImageSpec]:
    by_ref = {s.ref: s for s in all_specs}
    by_name = {s.name: s for s in all_specs}
    unknown = sorted(set(wanted) - set(by_name))
    if unknown:
        raise errors.InvalidInput(f"unknown image(s): {', '.join(unknown)}", hint=f"the images are: {', '.join(by_name)}")
    chosen: set[str] = set()

    def add(name: str) -> None:
        chosen.add(name)
        parent = by_ref.get(by_name[name].parent)
        if parent is not None:
            add(parent.name)

    for name in wanted:
        add(name)
    return [s for s in all_specs if s.name in chosen]


def _docker() -> Any:
    """A low-level Docker API client (the SDK streams build output; no CLI/buildx differences)."""
    import docker

    try:
        client = docker.APIClient(timeout=BUILD_TIMEOUT)
        client.ping()
    except Exception as exc:  # docker.errors.DockerException, requests' connection errors
        raise errors.Unavailable(f"the Docker engine does not answer: {exc}",
                                 hint="start it with `python -m localenv up` (or start dockerd)") from exc
    return client


def _image_id(client: Any, ref: str) -> str | None:
    import docker

    try:
        return str(client.inspect_image(ref)["Id"])
    except docker.errors.ImageNotFound:
        return None


def _label(client: Any, ref: str) -> str | None:
    import docker

    try:
        return (client.inspect_image(ref)["Config"].get("Labels") or {}).get(CONTEXT_LABEL)
    except docker.errors.ImageNotFound:
        return None


def _files(root: Path, names: Iterable[str] | None = None) -> Iterator[Path]:
    tops = [root / n for n in names] if names is not None else [root]
    for top in tops:
        if top.is_file():
            yield top
        elif top.is_dir():
            yield from sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                              and p.suffix not in (".pyc", ".pyo"))


def input_hash(spec: ImageSpec, parent_id: str) -> str:
    """The hash of everything the image is built from."""
    h = hashlib.sha256()
    h.update(f"parent={parent_id}\ntarget={spec.target}\n".encode())
    for key, value in sorted(spec.buildargs.items()):
        h.update(f"arg {key}={value}\n".encode())
    for f in _files(spec.directory):
        h.update(b"file " + str(f.relative_to(spec.directory)).encode() + b"\0" + f.read_bytes())
    if spec.wheels:
        for f in _files(REPO, PROJECT_FILES + PROJECT_PACKAGES):
            h.update(b"project " + str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:32]


class Wheelhouse:
    """The project's wheel and its dependencies' wheels, made once per build_all by pip on this
    host (where PyPI's certificates are trusted) for the image's Python (bookworm's CPython 3.11)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "wheels"

    def get(self, step: Step) -> Path:
        if not self.path.is_dir():
            self._make(step)
        return self.path

    def _make(self, step: Step) -> None:
        if sys.version_info[:2] != (3, 11):
            raise errors.Unavailable(
                f"the service images need wheels for Python 3.11 (Debian bookworm's); this is Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}",
                hint="run `make images` from the project's venv on Python 3.11")
        step.info("pip wheel: the project and its dependencies (pip caches them after the first time)")
        with tempfile.TemporaryDirectory(prefix="kod-src-") as tmp:
            # A clean copy of the sources, so that no build/ or egg-info of the working tree leaks in.
            src = Path(tmp)
            for f in _files(REPO, PROJECT_FILES + PROJECT_PACKAGES):
                target = src / f.relative_to(REPO)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
            # Fixed timestamps: the same sources give the same wheel, so Docker's cache holds.
            env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(self.path), str(src)],
                env=env, capture_output=True, text=True, check=False, timeout=1800,
            )
        if proc.returncode != 0:
            shutil.rmtree(self.path, ignore_errors=True)
            raise errors.Unavailable(f"pip could not make the wheels: {(proc.stderr or proc.stdout)[-1500:]}",
                                     hint="check the access to PyPI (pip download aiohttp)")


@contextmanager
def _context(spec: ImageSpec, step: Step, wheels: Wheelhouse) -> Iterator[Path]:
    """The directory to send to Docker as the build context."""
    if not spec.wheels:
        yield spec.directory
        return
    with tempfile.TemporaryDirectory(prefix=f"kod-{spec.name}-") as tmp:
        ctx = Path(tmp)
        for f in _files(spec.directory):
            shutil.copy2(f, ctx / f.name)
        shutil.copytree(wheels.get(step), ctx / "wheels")
        yield ctx


def _build(client: Any, spec: ImageSpec, label: str, log_path: Path, step: Step, no_cache: bool,
           wheels: Wheelhouse) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last: list[str] = []
    pending: str | None = None  # a Dockerfile step, shown unless Docker's cache answers it
    cached = 0
    with _context(spec, step, wheels) as ctx, open(log_path, "w") as log:
        stream = client.build(
            path=str(ctx), tag=spec.ref, buildargs=spec.buildargs or None, target=spec.target,
            labels={CONTEXT_LABEL: label}, rm=True, forcerm=True, pull=False, nocache=no_cache, decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                log.write(f"ERROR: {chunk['error']}\n")
                raise errors.Internal(
                    f"building {spec.ref} failed: {chunk['error'].strip()}\n" + "\n".join(last[-15:]),
                    hint=f"the whole build log is {log_path}; if apt failed, check the access to deb.debian.org",
                )
            text = chunk.get("stream", "")
            log.write(text)
            for line in text.splitlines():
                if not line.strip():
                    continue
                last = (last + [line])[-30:]
                if line.startswith("Step "):
                    pending = line if len(line) <= 110 else line[:107] + "..."
                elif pending is not None:
                    # The Dockerfile's steps that run are the progress; apt's and pip's lines go
                    # to the log.
                    if "Using cache" in line:
                        cached += 1
                    elif line.startswith(" ---> ") or not line.startswith(" "):
                        step.info(pending)
                    pending = None
    if cached:
        step.info(f"{cached} steps from Docker's cache")


def _ensure_debian(step: Step, cache_dir: Path | None) -> None:
    """Makes debian:bookworm-slim with localenv.base_image when it is absent."""
    from localenv import base_image

    if base_image.present(DEBIAN):
        return
    if cache_dir is None:
        from localenv.paths import default_paths

        cache_dir = default_paths().base_image_cache
    step.info(f"{DEBIAN} is absent: making it with debootstrap (localenv.base_image)")
    step.info(base_image.ensure(cache_dir, step, DEBIAN))


def build_all(
    progress: Progress | None = None,
    *,
    only: Iterable[str] | None = None,
    no_cache: bool = False,
    force: bool = False,
    cuda_parent: str | None = None,
    base_cache_dir: Path | None = None,
    logs_dir: Path | None = None,
) -> list[BuildResult]:
    """Builds the project's images, parents first, skipping those whose inputs are unchanged.

    `only` limits the build to these image names and what they build FROM; `force` builds them even
    when up to date (with Docker's layer cache); `no_cache` rebuilds without that cache; `cuda_parent` names a local NVIDIA CUDA image for
    cuda-blender's base. Returns what was done per image; raises kod.errors on failure."""
    progress = progress or Progress()
    client = _docker()
    all_specs = specs(cuda_parent)
    chosen = _with_parents(only, all_specs) if only is not None else all_specs
    logs = logs_dir or Path.home() / ".cache" / "kod" / "image-builds"
    if cuda_parent and _image_id(client, cuda_parent) is None:
        raise errors.NotFound(f"the CUDA parent image {cuda_parent} is not in the local Docker engine",
                              hint="docker pull it (or docker load it) first, or build without --cuda-parent")
    results = []
    if any(s.parent == DEBIAN for s in chosen):
        with progress.step(f"base image {DEBIAN}") as step:
            _ensure_debian(step, base_cache_dir)
            step.done("present")
    with tempfile.TemporaryDirectory(prefix="kod-images-") as scratch:
        wheels = Wheelhouse(Path(scratch))
        for spec in chosen:
            with progress.step(f"image {spec.ref}") as step:
                parent_id = _image_id(client, spec.parent)
                if parent_id is None:
                    raise errors.NotFound(f"{spec.ref} builds FROM {spec.parent}, which is not in the local Docker engine",
                                          hint="build it first: python -m localenv images")
                want = input_hash(spec, parent_id)
                if not (no_cache or force) and _label(client, spec.ref) == want:
                    action = "up to date"
                else:
                    if spec.name == "cuda-blender" and not cuda_parent:
                        step.info("no CUDA parent image given: cuda-blender builds on the Debian app base "
                                  "(GPU=nvidia still asks the NVIDIA runtime for the node's driver)")
                    _build(client, spec, want, logs / f"{spec.name}.log", step, no_cache, wheels)
                    action = "built"
                size = int(client.inspect_image(spec.ref)["Size"])
                results.append(BuildResult(spec.name, spec.ref, action, step.elapsed, size))
                step.done(f"{action}, {size / 1e6:.0f} MB")
    progress.total(f"{len(results)} images")
    return results


def session_images() -> list[str]:
    """The images a session's pods run from the cluster's nodes: the apps' and the viewer's (the
    app bases are only their parents; the services run on the desktop, in Docker)."""
    return [*dict.fromkeys(app.image for app in apps.APPS.values()), "viewer"]


def into_cluster(target: ClusterHandle, refs: Iterable[str], progress: Progress | None = None) -> list[str]:
    """Import the local images `refs` into the cluster's nodes (those already there with the same
    image id are skipped) and wait until a node reports them, as cloudify checks before a
    session; returns the refs copied."""
    progress = progress or Progress()
    refs = list(refs)
    with progress.step("images into the cluster") as step:
        done = target.provide_images(refs)
        step.done(f"imported {' '.join(done)}" if done else f"{' '.join(refs)} already there")
    return done


def build_and_import(target: ClusterHandle | None, progress: Progress | None = None, *,
                     only: Iterable[str] | None = None) -> list[BuildResult]:
    """`python -m localenv images [NAME ...]`: build the images (`only` and their parents, or
    all), then make the session images among them available to the cluster's pods (`target`;
    None: no cluster answers, so they are only built). Afterwards cloudify finds them on a node."""
    progress = progress or Progress()
    results = build_all(progress, only=only)
    wanted = set(session_images())
    refs = [r.ref for r in results if r.name in wanted]
    if target is None:
        progress.line("==> no cluster answers: the images are built, not imported; `python -m localenv up` "
                      "starts the local cluster, then run this again")
    elif refs:
        into_cluster(target, refs, progress)
    return results


def main(argv: list[str] | None = None) -> int:
    """python -m localenv.images [--only NAME ...] [--force] [--no-cache] [--cuda-parent IMAGE]"""
    names = [s.name for s in specs()]
    parser = argparse.ArgumentParser(
        prog="python -m localenv.images",
        description="Build kod's images (app base, apps, viewer, services) in the local Docker engine. "
                    "Images whose inputs did not change are skipped; builds use Docker's layer cache.",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=names,
                        help=f"build only these images and their parents ({', '.join(names)})")
    parser.add_argument("--no-cache", action="store_true",
                        help="rebuild without Docker's cache (takes Debian's latest security updates)")
    parser.add_argument("--force", action="store_true",
                        help="build even the images that are up to date (Docker's layer cache still applies)")
    parser.add_argument("--cuda-parent", metavar="IMAGE",
                        help="a local NVIDIA CUDA image (e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04) to build "
                             "cuda-blender's app base on; without it cuda-blender builds on the Debian base")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    args = parser.parse_args(argv)
    try:
        build_all(Progress(quiet=args.quiet), only=args.only, no_cache=args.no_cache, force=args.force,
                  cuda_parent=args.cuda_parent)
    except errors.KodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
