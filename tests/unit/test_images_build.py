"""localenv.images: what is built, in which order, and when an image counts as up to date
(without Docker; tests/e2e/test_images_*.py build and run the images for real)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kod import apps, errors
from localenv import images


def test_every_image_is_built_after_its_parent() -> None:
    specs = images.specs()
    refs_seen = set()
    for spec in specs:
        if spec.parent.startswith(f"{apps.IMAGE_REPO}/"):
            assert spec.parent in refs_seen, f"{spec.name} comes before its parent {spec.parent}"
        refs_seen.add(spec.ref)
    names = [s.name for s in specs]
    assert {"app-base", "viewer", "firefox", "libreoffice", "blender", "cuda-blender"} <= set(names)
    assert set(apps.SERVICE_IMAGES) <= set(names)
    assert {a.image for a in apps.APPS.values()} <= set(names)


def test_every_image_has_a_dockerfile_with_its_target() -> None:
    for spec in images.specs():
        dockerfile = (spec.directory / "Dockerfile").read_text()
        if spec.target:
            assert f" AS {spec.target}\n" in dockerfile
        for arg in spec.buildargs:
            assert f"ARG {arg}" in dockerfile, f"{spec.name}: build argument {arg} is not declared"


def test_cuda_blender_builds_on_a_cuda_app_base_when_a_cuda_parent_is_given() -> None:
    plain = {s.name: s for s in images.specs()}
    assert plain["cuda-blender"].parent == apps.APP_BASE_IMAGE
    assert plain["cuda-blender"].buildargs["GPU"] == "nvidia"
    cuda = {s.name: s for s in images.specs(cuda_parent="nvidia/cuda:12.4.1-runtime-ubuntu22.04")}
    assert cuda["app-base-cuda"].parent == "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    assert cuda["cuda-blender"].parent == apps.image_ref("app-base-cuda")
    assert cuda["blender"].parent == apps.APP_BASE_IMAGE


def test_only_adds_the_parents() -> None:
    chosen = [s.name for s in images._with_parents(["firefox", "viewer"], images.specs())]
    assert chosen == ["app-base", "viewer", "firefox"]
    with pytest.raises(errors.InvalidInput, match="unknown image"):
        images._with_parents(["chrome"], images.specs())


def test_the_input_hash_follows_files_arguments_and_parent(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    shutil.copytree(images.IMAGES_DIR / "viewer", ctx)
    spec = images.ImageSpec("viewer", ctx, images.DEBIAN)
    first = images.input_hash(spec, "sha256:parent")
    assert images.input_hash(spec, "sha256:parent") == first
    assert images.input_hash(spec, "sha256:other") != first
    assert images.input_hash(images.ImageSpec("viewer", ctx, images.DEBIAN, {"X": "1"}), "sha256:parent") != first
    (ctx / "entrypoint.sh").write_text((ctx / "entrypoint.sh").read_text() + "\n# changed\n")
    assert images.input_hash(spec, "sha256:parent") != first


def test_service_images_also_hash_the_project_sources() -> None:
    spec = next(s for s in images.specs() if s.name == "interlink")
    assert spec.wheels
    files = {str(p.relative_to(images.REPO)) for p in images._files(images.REPO, images.PROJECT_FILES + images.PROJECT_PACKAGES)}
    assert "pyproject.toml" in files and "kod/apps.py" in files
    assert not any("__pycache__" in f for f in files)
