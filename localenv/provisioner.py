"""A dynamic hostPath provisioner for the one-machine cluster.

    python -m localenv.provisioner --kubeconfig K --root DIR --node kod-worker

For every PersistentVolumeClaim of a StorageClass whose `provisioner` is ours and that has no
volume yet, it creates a directory under --root and a PersistentVolume (hostPath, with node
affinity to the real node, or to the node the scheduler selected for WaitForFirstConsumer classes)
pre-bound to the claim. When such a volume is Released and its reclaim policy is Delete, it removes
the directory and the volume. Two watches (claims, volumes) wake one reconcile loop, which also
runs every RESYNC seconds; every pass works from fresh lists, so a missed event costs only time.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from kod import log as kodlog

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
RESYNC = 30.0
#: Mode of volume directories: pods may run as any user (the app images use uid 1000).
DIR_MODE = 0o777

logger = kodlog.get_logger("provisioner")


def volume_name(claim: dict[str, Any]) -> str:
    """The PV name for a claim: `pvc-<claim uid>`, as Kubernetes' own provisioners name them."""
    return f"pvc-{claim['metadata']['uid']}"


def build_volume(claim: dict[str, Any], storage_class: dict[str, Any], *, root: Path, node: str,
                 provisioner: str) -> dict[str, Any]:
    """The PersistentVolume (as data) that satisfies `claim`."""
    meta, spec = claim["metadata"], claim["spec"]
    name = volume_name(claim)
    target = (meta.get("annotations") or {}).get(SELECTED_NODE) or node
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY: provisioner},
            "labels": {"kod.io/claim-namespace": meta["namespace"]},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "storageClassName": storage_class["metadata"]["name"],
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [{
                        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [target]}],
                    }],
                },
            },
        },
    }


def claim_class(claim: dict[str, Any], classes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The StorageClass of a claim (the default class when it names none and none was set)."""
    name = claim["spec"].get("storageClassName")
    if name is None:
        defaults = [c for c in classes.values() if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true"]
        return defaults[0] if defaults else None
    return classes.get(name)


def needs_volume(claim: dict[str, Any], classes: dict[str, dict[str, Any]], provisioner: str) -> bool:
    """True for a pending claim of one of our classes without a volume, ready to provision
    (WaitForFirstConsumer classes: once the scheduler selected a node)."""
    sc = claim_class(claim, classes)
    if sc is None or sc.get("provisioner") != provisioner:
        return False
    if claim["spec"].get("volumeName") or (claim.get("status") or {}).get("phase") != "Pending":
        return False
    if claim["metadata"].get("deletionTimestamp"):
        return False
    if sc.get("volumeBindingMode") == "WaitForFirstConsumer":
        return SELECTED_NODE in (claim["metadata"].get("annotations") or {})
    return True


def is_released(volume: dict[str, Any], provisioner: str) -> bool:
    """True for one of our volumes whose claim is gone and whose policy is Delete."""
    annotations = volume["metadata"].get("annotations") or {}
    return (
        annotations.get(PROVISIONED_BY) == provisioner
        and (volume.get("status") or {}).get("phase") in ("Released", "Failed")
        and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
    )


def safe_dir(root: Path, path: str) -> Path | None:
    """`path` when it is a direct child of `root` (never delete anything else), else None."""
    p = Path(path)
    return p if p.parent == root and p.name.startswith("pvc-") else None


class Provisioner:
    """The reconcile loop and its two watches."""

    def __init__(self, api: client.CoreV1Api, storage: client.StorageV1Api, *, root: Path, node: str,
                 provisioner: str) -> None:
        self.api, self.storage = api, storage
        self.root, self.node, self.provisioner = root, node, provisioner
        self.wake: queue.Queue[str] = queue.Queue()
        self.stopping = threading.Event()

    def _items(self, result: Any) -> list[dict[str, Any]]:
        return [self.api.api_client.sanitize_for_serialization(i) for i in result.items]

    def reconcile(self) -> None:
        """One pass: provision what is missing, delete what was released."""
        classes = {c["metadata"]["name"]: c for c in self._items(self.storage.list_storage_class())}
        volumes = self._items(self.api.list_persistent_volume())
        existing = {v["metadata"]["name"] for v in volumes}
        for claim in self._items(self.api.list_persistent_volume_claim_for_all_namespaces()):
            if not needs_volume(claim, classes, self.provisioner) or volume_name(claim) in existing:
                continue
            sc = claim_class(claim, classes)
            assert sc is not None
            self.provision(claim, sc)
        for volume in volumes:
            if is_released(volume, self.provisioner):
                self.delete(volume)

    def provision(self, claim: dict[str, Any], sc: dict[str, Any]) -> None:
        pv = build_volume(claim, sc, root=self.root, node=self.node, provisioner=self.provisioner)
        directory = Path(pv["spec"]["hostPath"]["path"])
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, DIR_MODE)
        try:
            # The client sends a dict as it is (the PV is built as data).
            self.api.create_persistent_volume(pv)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
        logger.info("provisioned", volume=pv["metadata"]["name"], claim=f"{claim['metadata']['namespace']}/"
                    f"{claim['metadata']['name']}", path=str(directory))

    def delete(self, volume: dict[str, Any]) -> None:
        name = volume["metadata"]["name"]
        directory = safe_dir(self.root, (volume["spec"].get("hostPath") or {}).get("path", ""))
        if directory is not None and directory.exists():
            shutil.rmtree(directory)
        try:
            self.api.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        logger.info("deleted", volume=name, path=str(directory))

    def _watch(self, list_fn: Callable[..., Any], what: str) -> None:
        # Reconnect forever; each event just wakes the loop, which re-reads everything.
        while not self.stopping.is_set():
            try:
                for _ in watch.Watch().stream(list_fn, timeout_seconds=300):
                    self.wake.put(what)
                    if self.stopping.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - log, back off, reconnect
                logger.warning("watch failed; reconnecting", what=what, error=str(exc))
                self.stopping.wait(2)

    def run(self, on_ready: Callable[[], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for fn, what in ((self.api.list_persistent_volume_claim_for_all_namespaces, "claims"),
                         (self.api.list_persistent_volume, "volumes")):
            threading.Thread(target=self._watch, args=(fn, what), daemon=True, name=f"watch-{what}").start()
        ready = False
        while not self.stopping.is_set():
            try:
                self.reconcile()
                if not ready:
                    on_ready()
                    ready = True
                    logger.info("ready", root=str(self.root), node=self.node, provisioner=self.provisioner)
            except Exception as exc:  # noqa: BLE001 - keep serving; the next pass retries
                logger.warning("reconcile failed", error=str(exc))
            try:
                self.wake.get(timeout=RESYNC)
                time.sleep(0.05)  # let a burst of events arrive, then drain them into one pass
                while not self.wake.empty():
                    self.wake.get_nowait()
            except queue.Empty:
                pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localenv.provisioner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the provisioner's identity")
    parser.add_argument("--root", required=True, type=Path, help="directory that holds the volumes")
    parser.add_argument("--node", required=True, help="node the volumes are on (the real node)")
    parser.add_argument("--provisioner", default="kod.io/hostpath", help="the StorageClass provisioner name served")
    parser.add_argument("--ready-file", type=Path, help="written with the PID once the first pass succeeded")
    args = parser.parse_args(argv)
    kodlog.configure(component="storage-provisioner", json=False)
    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    prov = Provisioner(client.CoreV1Api(api_client), client.StorageV1Api(api_client),
                       root=args.root.resolve(), node=args.node, provisioner=args.provisioner)

    def stop(signum: int, _frame: object) -> None:
        prov.stopping.set()
        prov.wake.put("stop")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def ready() -> None:
        if args.ready_file:
            args.ready_file.write_text(str(os.getpid()))

    prov.run(ready)


if __name__ == "__main__":
    main()
