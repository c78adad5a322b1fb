"""Where everything lives. Other components rely on these paths; `status --json` prints them.

    from localenv.paths import default_paths
    p = default_paths()
    p.admin_kubeconfig   # ~/.local/share/kod/cluster/admin.kubeconfig
    p.kubectl            # ~/.local/share/kod/bin/kubectl (a symlink into the build cache)
    p.ca_cert, p.ca_key  # the cluster CA, to issue certificates (see localenv.pki)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localenv.settings import LocalEnvSettings, load

#: Paths outside the state directory that the kubelet, CNI and containerd always use. `down --wipe`
#: removes what the cluster left there.
FIXED_PATHS = (
    Path("/var/lib/kubelet"),        # device-plugins/ is a compiled-in path of the kubelet
    Path("/var/log/containers"),     # the kubelet's symlinks to container logs
    Path("/var/lib/cni"),            # libcni's result cache
    Path("/var/run/netns"),          # network namespaces of pod sandboxes (cni-*)
)


@dataclass(frozen=True)
class Paths:
    """All paths of the local environment, derived from the settings."""

    data_dir: Path
    cache_dir: Path
    kubernetes_version: str
    etcd_version: str

    # --- the state directory of the cluster ---
    @property
    def state_dir(self) -> Path:
        return self.data_dir / "cluster"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def node_client_ca_cert(self) -> Path:
        """The CA of nodes' client certificates (localenv.pki: the tunnel server takes only these)."""
        return self.pki_dir / "node-client-ca.crt"

    @property
    def node_client_ca_key(self) -> Path:
        return self.pki_dir / "node-client-ca.key"

    @property
    def client_ca_bundle(self) -> Path:
        """The client CAs the API server and the controller-manager trust: the cluster CA and the
        nodes' client CA."""
        return self.pki_dir / "client-ca-bundle.crt"

    @property
    def kubeconfig_dir(self) -> Path:
        """One kubeconfig per control-plane component."""
        return self.state_dir / "kubeconfigs"

    @property
    def config_dir(self) -> Path:
        """Config files written for the daemons (kubelet, kube-proxy, containerd, CNI)."""
        return self.state_dir / "config"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """PID files and sockets."""
        return self.state_dir / "run"

    @property
    def etcd_data(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def containerd_root(self) -> Path:
        return self.state_dir / "containerd/root"

    @property
    def containerd_state(self) -> Path:
        return self.state_dir / "containerd/state"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni/net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.state_dir / "cni/ipam"

    @property
    def volumes_dir(self) -> Path:
        """Directories of dynamically provisioned PersistentVolumes."""
        return self.state_dir / "volumes"

    # --- binaries ---
    @property
    def bin_dir(self) -> Path:
        return self.data_dir / "bin"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def k8s_cache(self) -> Path:
        return self.cache_dir / f"k8s-{self.kubernetes_version}"

    @property
    def k8s_bin(self) -> Path:
        return self.k8s_cache / "bin"

    @property
    def etcd_cache(self) -> Path:
        return self.cache_dir / f"etcd-{self.etcd_version}"

    @property
    def etcd_bin(self) -> Path:
        return self.etcd_cache / "bin"

    @property
    def base_image_cache(self) -> Path:
        return self.cache_dir / "base-image"

    def as_dict(self) -> dict[str, str]:
        """The paths other components need, for `status --json`."""
        keys = (
            "data_dir", "cache_dir", "state_dir", "admin_kubeconfig", "kubectl", "pki_dir", "ca_cert",
            "ca_key", "logs_dir", "run_dir", "containerd_socket", "kubelet_root", "pod_logs",
            "volumes_dir", "k8s_bin", "etcd_bin",
        )
        return {k: str(getattr(self, k)) for k in keys}


def paths_for(settings: LocalEnvSettings) -> Paths:
    """The paths that follow from `settings`."""
    return Paths(
        data_dir=settings.data_dir.expanduser(),
        cache_dir=settings.cache_dir.expanduser(),
        kubernetes_version=settings.kubernetes_version,
        etcd_version=settings.etcd_version,
    )


def default_paths() -> Paths:
    """The paths with the default settings (plus ~/.config/kod/localenv.toml and KOD_LOCALENV_*)."""
    return paths_for(load())
