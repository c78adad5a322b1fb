"""sidecars: InterLink plugins. Each subpackage runs pods somewhere (`sidecars.docker`: in the
desktop's Docker engine) and serves the InterLink API of `kod.wire`. They import only `kod`."""
