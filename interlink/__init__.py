"""interlink: the REST service between the virtual kubelet and the plugins (sidecars).

What belongs here: the aiohttp app factory, one handler per file, routing of pods to sidecars by
configuration, the aggregated status push (watch stream), and the OpenAPI spec generated from
`kod.wire`. It imports only `kod`.
"""
