"""cloudify: the user's CLI. `cloudify firefox` runs Firefox in the cluster and shows it on the
desktop. One module per subcommand; library code builds manifests as data and waits with watches.
It imports only `kod`."""
