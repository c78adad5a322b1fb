"""Moving images from Docker into the cluster's containerd (no registry can be reached here):
`docker save REFS | ctr -n k8s.io images import -`, skipping images containerd already has with
the same image id. Pods then use them with `imagePullPolicy: IfNotPresent` (or `Never`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

from kod import errors
from localenv.shell import require, run

NAMESPACE = "k8s.io"


def normalize(ref: str) -> str:
    """Docker's short reference -> containerd's full name: 'kod/x:1' -> 'docker.io/kod/x:1',
    'debian:12' -> 'docker.io/library/debian:12', no tag -> ':latest'."""
    name, sep, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if not sep and ":" not in last:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    return name + (sep + digest if sep else "")


def _docker() -> str:
    # Debian's client matches Debian's engine; /usr/local/bin/docker may be a newer, unrelated one.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else str(require("docker", package="docker.io"))


def docker_image_id(ref: str) -> str:
    proc = run([_docker(), "image", "inspect", "-f", "{{.Id}}", ref], check=False)
    if proc.returncode != 0:
        raise errors.NotFound(f"image {ref} is not in the local Docker engine", hint="build it first (docker build / python -m localenv images)")
    return proc.stdout.strip()


def containerd_image_ids(socket: Path, names: Iterable[str]) -> dict[str, str]:
    """containerd name -> image id (config digest), for those of `names` containerd has."""
    ctr = [str(require("ctr", package="containerd")), "-a", str(socket), "-n", NAMESPACE]
    wanted = set(names)
    listing = run([*ctr, "images", "ls"], timeout=60).stdout.splitlines()[1:]
    out: dict[str, str] = {}
    for line in listing:
        cols = line.split()
        if len(cols) < 3 or cols[0] not in wanted:
            continue
        manifest = run([*ctr, "content", "get", cols[2]], check=False, timeout=60)
        try:
            out[cols[0]] = json.loads(manifest.stdout)["config"]["digest"]
        except (ValueError, KeyError, TypeError):
            continue
    return out


def import_images(refs: Iterable[str], socket: Path) -> list[str]:
    """Import the Docker images `refs` into the containerd at `socket` (namespace k8s.io) unless
    it already has them with the same id. Returns the refs imported."""
    refs = list(dict.fromkeys(refs))
    if not refs:
        return []
    if not socket.exists():
        raise errors.Unavailable(f"the cluster's containerd socket {socket} does not exist",
                                 hint="run `python -m localenv up`")
    ids = {ref: docker_image_id(ref) for ref in refs}
    present = containerd_image_ids(socket, (normalize(r) for r in refs))
    todo = [r for r in refs if present.get(normalize(r)) != ids[r]]
    if not todo:
        return []
    ctr = [str(require("ctr", package="containerd")), "-a", str(socket), "-n", NAMESPACE]
    save = subprocess.Popen([_docker(), "save", *todo], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert save.stdout is not None
    imp = subprocess.run([*ctr, "images", "import", "-"], stdin=save.stdout, capture_output=True, timeout=1800)
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
    if save.wait() != 0 or imp.returncode != 0:
        raise errors.Internal(
            f"importing {' '.join(todo)} into the cluster failed: {save_err.strip()} "
            f"{imp.stderr.decode(errors='replace').strip()}",
            hint="check that the images exist in Docker (`docker images`) and the cluster runs (`python -m localenv status`)",
        )
    after = containerd_image_ids(socket, (normalize(r) for r in todo))
    wrong = [r for r in todo if after.get(normalize(r)) != ids[r]]
    if wrong:
        raise errors.Internal(f"after the import, containerd does not have {' '.join(wrong)} with Docker's image id")
    return todo


def remove_images(refs: Iterable[str], socket: Path) -> list[str]:
    """Remove the images `refs` from the containerd at `socket` (namespace k8s.io), as a node
    that never had them (for tests of what happens then); returns those it had."""
    ctr = [str(require("ctr", package="containerd")), "-a", str(socket), "-n", NAMESPACE]
    names = [normalize(r) for r in dict.fromkeys(refs)]
    present = [n for n in names if n in containerd_image_ids(socket, names)]
    if present:
        run([*ctr, "images", "rm", *present], timeout=120)
    return present
