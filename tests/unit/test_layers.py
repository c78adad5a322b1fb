"""The import contracts of the checkout, checked on the source (as import-linter does for kopf):

1. Layers (kod/__init__.py): `kod` is innermost; the components import only `kod`, never each
   other; bench/ may import the product but never tests/; tests may import anything; the product
   imports neither bench nor tests.
2. Third-party clients: each may be used only in the modules named for it below. A module that
   talks to Kubernetes, to the Docker engine or over HTTP as a client is a boundary; keeping the
   boundaries few keeps retries, timeouts and the error vocabulary in one place each.

The contracts are data (LAYERS, CLIENTS); `violations(root)` checks a tree against them, and the
last tests show that it does catch a wrong import, on a package tree made for the purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("kod", "vk_bridge", "interlink", "sidecars", "cloudify", "localenv")
#: What each top-level package may import from the checkout, besides itself.
LAYERS: dict[str, frozenset[str]] = {
    "kod": frozenset(),
    "vk_bridge": frozenset({"kod"}),
    "interlink": frozenset({"kod"}),
    "sidecars": frozenset({"kod"}),
    "cloudify": frozenset({"kod"}),
    "localenv": frozenset({"kod"}),
    "bench": frozenset(PRODUCT),
    "tests": frozenset({*PRODUCT, "bench"}),
}


@dataclass(frozen=True)
class Client:
    """A third-party client and the modules that may use it.

    `module`: the distribution's top-level module. `names`: when given, only these attributes of
    it (or names imported from it, or its submodules `submodules`) count as the client; otherwise
    any import of the module does. `allowed`: dotted module names of the checkout; a name also
    allows the modules below it."""

    module: str
    allowed: tuple[str, ...]
    names: frozenset[str] = frozenset()
    submodules: frozenset[str] = frozenset()

    def may_be_used_in(self, module: str) -> bool:
        return any(module == a or module.startswith(a + ".") for a in self.allowed)


# Where each client is used, narrowed to the modules that open the connections (the Kubernetes
# client lives in kod/ since issue 8: kod.kube_config, kod.kube, kod.kube_channels; the InterLink
# client is kod.http). bench/ and tests/ are not restricted: a benchmark measures the engine
# directly, and a test may drive any boundary. A module moved or no longer using its client is
# caught by test_every_module_a_client_contract_names_exists_and_uses_it: update the entry then.
CLIENTS: tuple[Client, ...] = (
    Client(
        "kubernetes",
        allowed=(
            "kod.kube_config",         # kubeconfigs the client library alone understands (exec/auth plugins)
            "localenv.provisioner",    # the local cluster's hostPath provisioner
            "localenv.handle",         # ClusterHandle.api_client, for tests and benchmarks
        ),
    ),
    Client(
        "docker",  # the Docker SDK (the sidecar talks to the engine over aiohttp: sidecars.docker.engine)
        allowed=(
            "localenv.docker_engine",  # starts or adopts the engine
            "localenv.images",         # builds the images
            "cloudify.viewers.docker",  # -r docker: the viewer container
            "cloudify.sessions",       # `cloudify gc` / `sessions`: the viewer containers of sessions
            "cloudify.session",        # the engine's errors while a docker-mode session ends
        ),
    ),
    Client(
        "aiohttp",  # its client side only (aiohttp.web is for servers and allowed everywhere)
        names=frozenset({"ClientSession", "ClientWebSocketResponse", "ClientTimeout", "BaseConnector",
                         "TCPConnector", "UnixConnector", "NamedPipeConnector", "request"}),
        submodules=frozenset({"client", "connector", "client_ws", "client_reqrep"}),
        allowed=(
            "kod.http",                # ApiClient: the InterLink REST client (interlink, vk_bridge)
            "kod.kube",                # the Kubernetes API client (vk_bridge, cloudify)
            "kod.kube_channels",       # exec/port-forward channels over the API server's websocket
            "cloudify.portforward",    # carries the port-forward websocket kod.kube opened
            "sidecars.docker.engine",  # the Docker Engine API client of the sidecar
        ),
    ),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _python_files(root: Path, package: str) -> Iterator[Path]:
    base = root / package
    if base.is_dir():
        yield from sorted(p for p in base.rglob("*.py") if ".venv" not in p.parts)


@dataclass(frozen=True)
class Use:
    """One import (or attribute use) found in a file: the dotted name and its line."""

    name: str
    line: int


def uses(tree: ast.AST) -> list[Use]:
    """Absolute imports (`import a.b`, `from a.b import c` as `a.b.c`), and attributes of
    imported modules (`import aiohttp` then `aiohttp.ClientSession` as `aiohttp.ClientSession`),
    anywhere in the file (function-level imports too)."""
    found: list[Use] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append(Use(a.name, node.lineno))
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                found.append(Use(f"{node.module}.{a.name}", node.lineno))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append(Use(f"{aliases[node.value.id]}.{node.attr}", node.lineno))
    return found


def _is_client_use(client: Client, name: str) -> bool:
    parts = name.split(".")
    if parts[0] != client.module:
        return False
    if not client.names and not client.submodules:
        return True
    return len(parts) > 1 and (parts[1] in client.names or parts[1] in client.submodules)


def violations(root: Path, layers: dict[str, frozenset[str]] = LAYERS,
               clients: tuple[Client, ...] = CLIENTS) -> list[str]:
    """Every import in the tree under `root` that breaks a contract, as `path:line: what`."""
    bad: list[str] = []
    for package, allowed in layers.items():
        for path in _python_files(root, package):
            where = path.relative_to(root)
            module = module_name(path, root)
            tree = ast.parse(path.read_text(), filename=str(path))
            for use in uses(tree):
                top = use.name.split(".")[0]
                if top in layers and top != package and top not in allowed:
                    bad.append(f"{where}:{use.line}: {package} imports {use.name} (layer {top} is off limits)")
                if package not in PRODUCT:
                    continue
                for client in clients:
                    if _is_client_use(client, use.name) and not client.may_be_used_in(module):
                        bad.append(f"{where}:{use.line}: {module} uses {use.name} "
                                   f"(only {', '.join(client.allowed)} may)")
    return sorted(set(bad))


# --- the checkout ------------------------------------------------------------------------------

def test_the_checkout_keeps_every_contract() -> None:
    bad = violations(ROOT)
    assert not bad, "import contract violations:\n" + "\n".join(bad)


@pytest.mark.parametrize("client", CLIENTS, ids=[c.module for c in CLIENTS])
def test_every_module_a_client_contract_names_exists_and_uses_it(client: Client) -> None:
    """A stale entry (a module moved or no longer using the client) would let a new use slip in
    under its name: each allowed module must exist and use the client."""
    for allowed in client.allowed:
        path = ROOT / Path(*allowed.split(".")).with_suffix(".py")
        if not path.exists():
            path = ROOT / Path(*allowed.split(".")) / "__init__.py"
        assert path.exists(), f"{client.module}: {allowed} does not exist (moved? update CLIENTS)"
        used = [u for u in uses(ast.parse(path.read_text())) if _is_client_use(client, u.name)]
        assert used, f"{client.module}: {allowed} no longer uses it (update CLIENTS)"


# --- the checker catches what it must ----------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "kod/__init__.py": "",
    "kod/http.py": "import aiohttp\nfrom aiohttp import web\nS = aiohttp.ClientSession\n",
    "cloudify/__init__.py": "",
    "kod/kube_config.py": "def load():\n    from kubernetes import config\n",
    "interlink/app.py": "from aiohttp import web\nimport aiohttp\nE = aiohttp.ClientError\n",
    "bench/run.py": "from cloudify import kube\nimport docker\n",
    "tests/test_x.py": "from bench import run\nfrom tests import helpers\n",
}


def test_a_tree_that_keeps_the_contracts_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("interlink/routes.py", "from cloudify import kube\n", "interlink/routes.py:1: interlink imports cloudify.kube"),
        ("kod/names.py", "import vk_bridge.node\n", "kod/names.py:1: kod imports vk_bridge.node"),
        ("localenv/demo.py", "def f():\n    from tests.e2e import support\n", "localenv/demo.py:2: localenv imports tests.e2e.support"),
        ("bench/lab.py", "from tests.fixtures.desktop import Desktop\n", "bench/lab.py:1: bench imports tests.fixtures.desktop.Desktop"),
        ("cloudify/apps.py", "from bench import lab\n", "cloudify/apps.py:1: cloudify imports bench.lab"),
        ("vk_bridge/node.py", "from kubernetes import client\n", "vk_bridge/node.py:1: vk_bridge.node uses kubernetes.client"),
        ("sidecars/docker/volumes.py", "import docker\n", "sidecars/docker/volumes.py:1: sidecars.docker.volumes uses docker"),
        ("interlink/upstream.py", "import aiohttp\ns = aiohttp.ClientSession()\n",
         "interlink/upstream.py:2: interlink.upstream uses aiohttp.ClientSession"),
        ("cloudify/ws.py", "from aiohttp import ClientWebSocketResponse\n",
         "cloudify/ws.py:1: cloudify.ws uses aiohttp.ClientWebSocketResponse"),
        ("localenv/net.py", "import aiohttp as ah\nc = ah.UnixConnector(path='/x')\n",
         "localenv/net.py:2: localenv.net uses aiohttp.UnixConnector"),
        ("kod/fetch.py", "from aiohttp.client import ClientSession\n", "kod/fetch.py:1: kod.fetch uses aiohttp.client.ClientSession"),
    ],
    ids=["component-to-component", "kod-to-outer", "product-to-tests", "bench-to-tests", "product-to-bench",
         "kubernetes-elsewhere", "docker-sdk-elsewhere", "aiohttp-session-elsewhere", "aiohttp-websocket-elsewhere",
         "aiohttp-connector-by-alias", "aiohttp-client-submodule"],
)
def test_a_wrong_import_is_caught_with_its_place(tmp_path: Path, path: str, text: str, expected: str) -> None:
    found = violations(_tree(tmp_path, {**CLEAN, path: text}))
    assert len(found) == 1 and found[0].startswith(expected), found
