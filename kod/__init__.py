"""Shared core of KubernetesOnDesktop: what every component speaks.

What belongs here: the InterLink wire format (`kod.wire`), the error vocabulary (`kod.errors`)
and its HTTP mapping (`kod.http`: the server middlewares and the one InterLink client,
`ApiClient`), the API's route table (`kod.routes`), the pushed status (`kod.hub`: the bounded
fan-out; `kod.watch_serve`: the `/v1/watch` handler; `kod.watch_follow`: the reconnecting
client loop), the service runner (`kod.service`: listen settings, sockets, signals), structured
logging (`kod.log`), settings loading (`kod.settings`), the label and annotation keys
(`kod.labels`), Kubernetes resource quantities (`kod.quantity`), bearer token files
(`kod.tokens`), output that survives a closed terminal (`kod.console`), the application
catalog (`kod.apps`), the shared vocabulary (`kod.names`: Kubernetes names and the virtual
node's name; `kod.files`: private files; `kod.toml`: the TOML writer; `kod.lines`: line
reading), and the one Kubernetes API client vk_bridge and cloudify share: connection loading
(`kod.kube_config`), requests and streams (`kod.kube`), its error table (`kod.kube_errors`),
list-and-watch (`kod.kube_watch`) and the exec/port-forward channels (`kod.kube_channels`); the
streaming protocols of exec, attach and port-forward: the kubelet's side of SPDY/3.1
(`kod.spdy`), of remotecommand (`kod.remotecommand`) and of port-forward (`kod.portforward`), and
the channel WebSockets that carry them from vk_bridge through interlink to a sidecar
(`kod.streams`).

Layering: `kod` is the innermost layer. It may import only the standard library and the
project's third-party dependencies; `vk_bridge`, `interlink`, `sidecars`, `cloudify` and
`localenv` may import `kod`, never the other way round, and never each other
(`tests/unit/test_layers.py` checks this).
"""

__version__ = "0.1.0"
