"""Pod networking of the real node: a CNI bridge (`kod0`) with host-local addresses, portmap for
hostPorts and firewall so that traffic to pods passes the FORWARD chain (Docker sets its policy to
DROP). The config is a template that containerd renders with the node's pod CIDR (allocated by the
controller-manager) once the kubelet reports it; loopback is set up by containerd itself."""

from __future__ import annotations

import json
from typing import Any

from localenv.k8s.context import Context

NETWORK_NAME = "kod"
CNI_BIN_DIR = "/usr/lib/cni"
#: containerd replaces this Go template field with the node's pod CIDR.
POD_CIDR_PLACEHOLDER = "{{.PodCIDR}}"


def template(ctx: Context) -> dict[str, Any]:
    """The conflist, as data; containerd fills in the subnet."""
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": ctx.settings.cni_bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR_PLACEHOLDER}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ctx.paths.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }


def template_path(ctx: Context) -> str:
    return str(ctx.paths.config_dir / "cni-template.conflist")


def template_text(ctx: Context) -> str:
    return json.dumps(template(ctx), indent=2) + "\n"
