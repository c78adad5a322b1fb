"""Shared core of KubernetesOnDesktop: what every component speaks.

What belongs here: the InterLink wire format (`kod.wire`), the error vocabulary (`kod.errors`)
and its HTTP mapping (`kod.http`), structured logging (`kod.log`), settings loading
(`kod.settings`), the label and annotation keys (`kod.labels`), Kubernetes resource quantities
(`kod.quantity`), bearer token files (`kod.tokens`) and the application catalog (`kod.apps`).

Layering: `kod` is the innermost layer. It may import only the standard library and the
project's third-party dependencies; `vk_bridge`, `interlink`, `sidecars`, `cloudify` and
`localenv` may import `kod`, never the other way round, and never each other
(`tests/unit/test_layers.py` checks this).
"""

__version__ = "0.1.0"
