"""The daemons of the one-machine cluster, one module each.

Each module turns a `Context` (settings, paths, the node's address) into a `procs.Daemon` (its
command line, config files and readiness probe); `localenv.cluster` starts them in order.
"""
