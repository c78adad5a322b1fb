"""The Slurm sidecar: the InterLink plugin that runs each pod of a virtual HPC node as one Slurm
batch job (its containers in bubblewrap sandboxes made from the pods' Docker images).

It serves the same plugin API as `sidecars.docker` (kod.routes' SIDECAR table, kod.wire bodies,
kod.watch_serve's pushed status), so interlink routes to it without a special case. One module
per job: settings, jobscript (pod -> sbatch options and script, pure), jobstate (squeue lines and
the job's files -> pod status, pure), jobfiles (reading the job's files without following
what its user planted), images (rootfs trees from `docker export`), staging (the
job's directory and volumes), slurmcli (sbatch/squeue/scancel), records (what survives a
restart), runtime (the pod table, the one poller, create/delete/logs/adoption), handlers, app,
main. See docs/slurm.md.
"""
