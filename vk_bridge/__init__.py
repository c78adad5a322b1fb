"""vk_bridge: a virtual kubelet that makes the user's desktop a node of the cluster.

What belongs here: node registration and heartbeat (Lease), the pod list-and-watch and sync loop,
resolution of what pods reference (Secrets, ConfigMaps, tokens, downward API), status write-back,
and the kubelet HTTPS API (logs) the API server calls. It talks to InterLink through
`kod.http.ApiClient` and the models of `kod.wire`; it never imports interlink or sidecars.
"""
