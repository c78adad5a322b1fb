"""A pod as one Slurm batch job: its sbatch options and its script. Pure: the same pod gives
the same job.

    plan = plan_job(request, images, job_dir=Path("/var/lib/kod-slurm/jobs/<uid>"), sidecar="slurm",
                    partition="kod", default_memory="256Mi", default_uid=65534)
    plan.options    # ["--job-name=kod-default-web", "--comment=kod:slurm:<uid>", "--mem=256M", ...]
    plan.script     # bash: init containers in order, then the main ones, each in bubblewrap

What maps to what (docs/slurm.md has the table):
- requests/limits -> --mem (MiB) and --cpus-per-task, as the kubelet sizes a pod: the sum over
  the main containers or the largest init container, whichever is more; a container's limit
  counts, else its request; memory without either is `default_memory` (Slurm needs a figure).
- `nvidia.com/gpu` -> --gres=gpu:N.
- activeDeadlineSeconds -> --time (whole minutes, Slurm's unit, one more than the deadline: the
  sidecar itself enforces the exact deadline, as the kubelet does; the limit is the backstop).
- terminationGracePeriodSeconds -> --signal=B:TERM@<grace>: the script gets SIGTERM that long
  before the time limit and passes it to every container (the same path a delete takes).
- the pod's runAsUser/runAsGroup -> sbatch --uid/--gid: the whole job runs as that user, and
  the containers (user namespaces of bubblewrap) too. Containers that ask for different users are
  refused: a job has one owner. Root and system accounts are refused (`identity`); a pod that
  names no user runs as `default_uid` (nobody).

The script writes, in the job's directory, `state/<container>.<run>.start` and `.exit`
("<exit code> <finished epoch> <oom 0|1>") around each run and its output to
`logs/<container>.<run>.log`; `jobstate` turns those and squeue's line into the pod's status.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kod import errors, quantity, wire

GPU = "nvidia.com/gpu"
MIB = 1024 * 1024
#: Job names are shown by squeue and must stay short; the comment carries the identity.
JOB_NAME_MAX = 64
#: Marks the jobs of the sidecar named <name>: comment "kod:<name>:<pod uid>".
COMMENT_PREFIX = "kod"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Exit code of the script when the job's directory is missing (never a container's).
SETUP_FAILED = 111
#: The first descriptor the script opens subPath sources on (bubblewrap's --bind-fd).
SUBPATH_FD = 20


@dataclass(frozen=True)
class ImageConfig:
    """What `docker image inspect` says of an image, and where its exported tree is."""

    rootfs: Path
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""


@dataclass(frozen=True)
class Mount:
    """A bind of the job's directory into a container."""

    source: Path
    target: str
    read_only: bool
    #: With a subPath: the volume's root, which the source must stay beneath when the container
    #: starts (a container may have turned a path of an emptyDir into a symlink meanwhile).
    volume: Path | None = None


@dataclass(frozen=True)
class JobPlan:
    options: tuple[str, ...]
    script: str
    uid: int
    gid: int
    #: Per container (init then main): its mounts, for staging the mount points.
    mounts: dict[str, tuple[Mount, ...]] = field(default_factory=dict)


def comment(sidecar: str, uid: str) -> str:
    return f"{COMMENT_PREFIX}:{sidecar}:{uid}"


def parse_comment(sidecar: str, text: str) -> str | None:
    """The pod uid of a job comment of sidecar `sidecar`, else None."""
    prefix = f"{COMMENT_PREFIX}:{sidecar}:"
    return text[len(prefix):] if text.startswith(prefix) and len(text) > len(prefix) else None


def job_name(pod: wire.Pod) -> str:
    return f"kod-{pod.metadata.namespace}-{pod.metadata.name}"[:JOB_NAME_MAX]


def _amount(res: wire.ResourceRequirements, key: str) -> str | int | float | None:
    return res.limits.get(key, res.requests.get(key))


@dataclass(frozen=True)
class Resources:
    memory_mib: int
    cpus: int
    gpus: int


def pod_resources(pod: wire.Pod, *, default_memory: str) -> Resources:
    """--mem, --cpus-per-task and GPUs of the pod: the main containers' sum or the largest init
    container's, whichever is more (the kubelet's effective request)."""
    default = quantity.to_bytes(default_memory)

    def one(c: wire.Container) -> tuple[int, int, int]:
        mem = _amount(c.resources, "memory")
        cpu = _amount(c.resources, "cpu")
        gpu = _amount(c.resources, GPU)
        return (quantity.to_bytes(mem) if mem is not None else default,
                quantity.to_millicores(cpu) if cpu is not None else 0,
                int(quantity.parse(gpu)) if gpu is not None else 0)

    mains = [one(c) for c in pod.spec.containers]
    inits = [one(c) for c in pod.spec.initContainers]
    totals = [sum(m[i] for m in mains) for i in range(3)]
    peaks = [max((m[i] for m in inits), default=0) for i in range(3)]
    mem, milli, gpus = (max(a, b) for a, b in zip(totals, peaks, strict=True))
    return Resources(memory_mib=max(1, math.ceil(mem / MIB)), cpus=max(1, math.ceil(milli / 1000)), gpus=gpus)


#: The job's user when the pod names none: nobody (a pod never runs as root on the HPC host).
NOBODY = 65534


def identity(pod: wire.Pod, *, default_uid: int, default_gid: int | None, min_uid: int = 1000,
             max_uid: int = 59999) -> tuple[int, int]:
    """The job's uid and gid: the pod's, else the containers' (all the same), else the defaults.

    The uid becomes a user of the HPC host, outside any container (the job's script, the files of
    its directory, what its processes may reach on the host's network), so what a pod may ask for
    is bounded to the site's range of people's ids, [min_uid, max_uid]: never root (uid or gid
    0), no system account (munge, slurm and the daemons own what lets a job become anyone; Debian
    puts them below 1000 and at 60000-64999, slurm is 64030). What is outside is refused
    (Forbidden), not mapped, so that a pod author sees why. The defaults are always allowed (the
    site chose them: nobody by default)."""
    psc = pod.spec.securityContext or wire.PodSecurityContext()
    uids, gids = set(), set()
    for c in (*pod.spec.initContainers, *pod.spec.containers):
        sc = c.securityContext or wire.SecurityContext()
        uids.add(sc.runAsUser if sc.runAsUser is not None else psc.runAsUser)
        gids.add(sc.runAsGroup if sc.runAsGroup is not None else psc.runAsGroup)
    uids.discard(None)
    gids.discard(None)
    where = f"pod {pod.metadata.namespace}/{pod.metadata.name}"
    if len(uids) > 1 or len(gids) > 1:
        raise errors.InvalidInput(
            f"{where}: its containers run as different users "
            f"(runAsUser {sorted(uids)}, runAsGroup {sorted(gids)}); a Slurm job has one owner",
            hint="set runAsUser/runAsGroup once, in the pod's securityContext",
        )
    uid = uids.pop() if uids else default_uid
    gid = gids.pop() if gids else (default_gid if default_gid is not None else uid)
    default_group = default_gid if default_gid is not None else default_uid
    for kind, value, default in (("runAsUser", uid, default_uid), ("runAsGroup", gid, default_group)):
        if value == 0 or (not min_uid <= value <= max_uid and value != default):
            raise errors.Forbidden(
                f"{where}: {kind} {value} is refused on the HPC node: pods do not run as root or as a system "
                f"account of the HPC host (allowed: {min_uid}-{max_uid})",
                hint=f"set {kind} to your user's id on the site, or leave it out to run as {default_uid}")
    return uid, gid


def refuse_unsupported(pod: wire.Pod) -> None:
    """What an HPC node does not offer: host namespaces, privileged containers, host paths,
    PersistentVolumeClaims (use the site's shared file systems instead), ports on the host."""
    problems: list[str] = []
    spec = pod.spec
    for flag in ("hostPID", "hostIPC"):
        if getattr(spec, flag):
            problems.append(f"spec.{flag}")
    for v in spec.volumes:
        if v.hostPath is not None:
            problems.append(f"volume {v.name}: hostPath")
        elif v.persistentVolumeClaim is not None:
            problems.append(f"volume {v.name}: persistentVolumeClaim")
        elif all(x is None for x in (v.emptyDir, v.secret, v.configMap, v.projected, v.downwardAPI)):
            problems.append(f"volume {v.name}: unsupported kind")
    for c in (*spec.initContainers, *spec.containers):
        sc = c.securityContext
        if sc and sc.privileged:
            problems.append(f"container {c.name}: privileged")
        if sc and sc.capabilities and sc.capabilities.add:
            problems.append(f"container {c.name}: capabilities.add")
        if c.restartPolicy == "Always":
            problems.append(f"init container {c.name}: restartPolicy Always (sidecar containers)")
        for p in c.ports:
            if p.hostPort:
                problems.append(f"container {c.name}: hostPort {p.hostPort}")
    if problems:
        raise errors.Forbidden(
            f"pod {pod.metadata.namespace}/{pod.metadata.name} asks for what the HPC node does not offer: "
            + "; ".join(problems))


def volume_dir(job_dir: Path, name: str) -> Path:
    return job_dir / "volumes" / name


def rootfs_dir(job_dir: Path, image: str) -> Path:
    """The pod's own tree of an image (hard links into the image's tree, mount points added)."""
    return job_dir / "rootfs" / image.replace("/", "_").replace(":", "_").replace("@", "_")


def container_mounts(pod: wire.Pod, c: wire.Container, job_dir: Path,
                     resolve: Callable[[str], str] = lambda target: target) -> tuple[Mount, ...]:
    kinds = {v.name: v for v in pod.spec.volumes}
    out = []
    for m in c.volumeMounts:
        v = kinds.get(m.name)
        if v is None:
            raise errors.InvalidInput(f"container {c.name}: volumeMount {m.name} names no volume of the pod")
        if not m.mountPath.startswith("/") or ".." in m.mountPath.split("/"):
            raise errors.InvalidInput(f"container {c.name}: mountPath {m.mountPath!r} must be absolute, without '..'")
        source = volume = volume_dir(job_dir, m.name)
        if m.subPath:
            if m.subPath.startswith("/") or ".." in m.subPath.split("/"):
                raise errors.InvalidInput(f"container {c.name}: subPath {m.subPath!r} must be relative, without '..'")
            source = source / m.subPath
        read_only = bool(m.readOnly) or v.emptyDir is None  # secrets, configMaps, ... are read-only
        out.append(Mount(source=source, target=resolve(m.mountPath.rstrip("/") or "/"), read_only=read_only,
                         volume=volume if m.subPath else None))
    return tuple(out)


def container_argv(c: wire.Container, resolved: wire.ResolvedContainer | None, image: ImageConfig) -> list[str]:
    """Kubernetes' rule: command replaces the ENTRYPOINT (and drops CMD), args replace CMD."""
    command = resolved.command if resolved and resolved.command is not None else c.command
    args = resolved.args if resolved and resolved.args is not None else c.args
    if command is not None:
        argv = [*command, *(args or [])]
    else:
        argv = [*image.entrypoint, *(args if args is not None else image.cmd)]
    if not argv:
        raise errors.InvalidInput(f"container {c.name}: no command, and its image has no ENTRYPOINT or CMD")
    return argv


def container_env(pod: wire.Pod, resolved: wire.ResolvedContainer | None, image: ImageConfig) -> dict[str, str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    for item in image.env:
        k, _, v = item.partition("=")
        env[k] = v
    env["HOSTNAME"] = pod.spec.hostname or pod.metadata.name
    for e in resolved.env if resolved else []:
        env[e.name] = e.value
    return env


def bwrap_argv(pod: wire.Pod, c: wire.Container, resolved: wire.ResolvedContainer | None, image: ImageConfig,
               rootfs: Path, mounts: tuple[Mount, ...], uid: int, gid: int) -> list[str]:
    """One container as a bubblewrap sandbox: the pod's tree of the image read-only as /, fresh
    /dev, /proc and tmpfs /tmp, /run, /var/tmp; its own PID, IPC and UTS namespaces (the host's
    network, as HPC jobs have); no capabilities; the pod's volumes bound at their mount paths."""
    argv = ["bwrap", "--ro-bind", str(rootfs), "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/var/tmp",
            "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", (pod.spec.hostname or pod.metadata.name)[:63],
             "--die-with-parent", "--cap-drop", "ALL", "--clearenv"]
    for k, v in container_env(pod, resolved, image).items():
        argv += ["--setenv", k, v]
    opened: list[str] = []
    for m in mounts:
        if m.volume is None:
            argv += ["--ro-bind" if m.read_only else "--bind", str(m.source), m.target]
        else:
            # A subPath is bound by descriptor, opened and checked by the script right before
            # (open_subpaths): bubblewrap would follow a symlink a container planted in an
            # emptyDir to anywhere on the host (the kubelet's CVE-2017-1002101).
            fd = str(SUBPATH_FD + len(opened) // 3)
            opened += [fd, str(m.volume), str(m.source)]
            argv += ["--ro-bind-fd" if m.read_only else "--bind-fd", fd, m.target]
    argv += ["--chdir", c.workingDir or image.working_dir or "/", "--", *container_argv(c, resolved, image)]
    return ["open_subpaths", *opened, "--", *argv]


def _time_limit(deadline: int | None) -> str | None:
    if deadline is None:
        return None
    return str(math.ceil(deadline / 60) + 1)


def sbatch_options(pod: wire.Pod, *, sidecar: str, partition: str, account: str | None, job_dir: Path,
                   resources: Resources, uid: int, gid: int, grace: int) -> tuple[str, ...]:
    opts = [
        f"--job-name={job_name(pod)}",
        f"--comment={comment(sidecar, pod.metadata.uid)}",
        f"--partition={partition}",
        "--nodes=1", "--ntasks=1",
        f"--cpus-per-task={resources.cpus}",
        f"--mem={resources.memory_mib}M",
        f"--chdir={job_dir}",
        f"--output={job_dir}/slurm.out",
        "--export=NONE",   # the sidecar's environment (tokens, paths) stays out of the job
        "--no-requeue",    # a pod runs once; the controller that owns it makes a new one
        f"--signal=B:TERM@{max(1, grace)}",
        f"--uid={uid}", f"--gid={gid}",
    ]
    if account:
        opts.append(f"--account={account}")
    if resources.gpus:
        opts.append(f"--gres=gpu:{resources.gpus}")
    limit = _time_limit(pod.spec.activeDeadlineSeconds)
    if limit:
        opts.append(f"--time={limit}")
    return tuple(opts)


_PRELUDE = r"""set -u
D=%(dir)s
cd "$D" || exit %(setup)d
# Set once the job is told to stop; a file, because main containers run in subshells.
stopping() { [ -e "$D/state/.stopping" ]; }
# A delete (scancel --signal=TERM --batch) or the time limit (--signal=B:TERM@grace) reaches this
# shell: pass SIGTERM to every container and start nothing more.
# Only the containers' processes get it (those of this job's cgroup in another PID namespace,
# except bubblewrap's init there): bubblewrap itself would die of it and SIGKILL its sandbox.
# SIGUSR2 (the sidecar, once the grace period is over) SIGKILLs every container at once, inits
# included: Slurm's own cancel would give them KillWait more seconds.
# Builtins only, no process per entry: a loaded machine has hundreds of processes, and forking
# three per entry made one pass take seconds there, which held the SIGKILL of USR2 back (bash
# runs a trap only once the one it is in has returned).
mapfile -t mycg < /proc/self/cgroup
signal_containers() {  # SIGNAL
  local d cg line nspid
  for d in /proc/[0-9]*; do
    [ "$d/ns/pid" -ef /proc/self/ns/pid ] && continue
    mapfile -t cg 2>/dev/null < "$d/cgroup" || continue
    [ "${cg[*]}" = "${mycg[*]}" ] || continue
    if [ "$1" != KILL ]; then
      nspid=
      while read -r -a line; do
        if [ "${line[0]}" = NSpid: ]; then nspid=${line[-1]}; break; fi
      done 2>/dev/null < "$d/status"
      [ "$nspid" = 1 ] && continue
    fi
    kill "-$1" "${d#/proc/}" 2>/dev/null
  done
}
trap ': > "$D/state/.stopping"; trap "" TERM; signal_containers TERM' TERM
trap ': > "$D/state/.stopping"; trap "" TERM USR2; signal_containers KILL' USR2
memcg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
ooms() {
  if [ -r "/sys/fs/cgroup/memory$memcg/memory.oom_control" ]; then
    awk '$1=="oom_kill"{print $2}' "/sys/fs/cgroup/memory$memcg/memory.oom_control"
  elif [ -r "/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)/memory.events" ]; then
    awk '$1=="oom_kill"{print $2}' "/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup)/memory.events"
  else echo 0; fi
}
now() { date +%%s.%%N; }
# FD VOLUME SOURCE ... -- ARGV...: open each subPath SOURCE as FD, refused when what it names
# is not beneath its VOLUME (a symlink made by a container), then exec ARGV (bubblewrap binds
# the descriptors: what was checked is what is mounted).
open_subpaths() {
  local real vol
  while [ "$1" != -- ]; do
    eval "exec $1<\"\$3\"" || return 126
    real=$(readlink "/proc/self/fd/$1")
    vol=$(readlink -f -- "$2")
    case "$real/" in
      "$vol"/*) ;;
      *) echo "kod: subPath $3 leads out of its volume (to $real): refused" >&2; return 126;;
    esac
    shift 3
  done
  shift
  exec "$@"
}
run_once() {  # NAME RUN ARGV...: one run of a container, its output and its exit recorded
  local n=$1 r=$2 before pid rc oom
  shift 2
  before=$(ooms)
  now > "state/$n.$r.start"
  "$@" </dev/null >"logs/$n.$r.log" 2>&1 &
  pid=$!
  while :; do
    wait "$pid"; rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  oom=0
  if [ "$rc" -ge 128 ] && [ "$(ooms)" != "$before" ]; then oom=1; fi
  echo "$rc $(now) $oom" > "state/$n.$r.exit.tmp" && mv "state/$n.$r.exit.tmp" "state/$n.$r.exit"
  return "$rc"
}
run_c() {  # NAME POLICY ARGV...: runs again as the restart policy says (back-off 0, 10, 20 ... 300 s)
  local n=$1 p=$2 r=0 delay=0 rc
  shift 2
  while :; do
    run_once "$n" "$r" "$@"; rc=$?
    stopping && return "$rc"
    case "$p" in Never) return "$rc";; OnFailure) [ "$rc" = 0 ] && return 0;; esac
    r=$((r + 1))
    sleep "$delay" & wait $!
    stopping && return "$rc"
    delay=$(( delay == 0 ? 10 : (delay * 2 > 300 ? 300 : delay * 2) ))
  done
}
"""


def plan_job(request: wire.PodCreateRequest, images: dict[str, ImageConfig], *, job_dir: Path, sidecar: str,
             partition: str, account: str | None = None, default_memory: str, default_uid: int = NOBODY,
             default_gid: int | None = None, min_uid: int = 1000, max_uid: int = 59999,
             default_grace: int = 30,
             resolve: Callable[[ImageConfig, str], str] | None = None) -> JobPlan:
    """The pod's job (see the module's docstring). Raises InvalidInput or Forbidden for what a
    job cannot run. `resolve(image, mountPath)` resolves the image's symlinks in a mount path
    (staging.resolve_in_tree); by default paths are taken as written."""
    pod = request.pod
    refuse_unsupported(pod)
    uid, gid = identity(pod, default_uid=default_uid, default_gid=default_gid, min_uid=min_uid,
                        max_uid=max_uid)
    resources = pod_resources(pod, default_memory=default_memory)
    grace = pod.spec.terminationGracePeriodSeconds
    grace = default_grace if grace is None else grace
    resolved = {c.name: c for c in request.containers}
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"# kod pod {pod.metadata.namespace}/{pod.metadata.name} uid {pod.metadata.uid}: written by the "
             "Slurm sidecar (sidecars/slurm/jobscript.py)",
             _PRELUDE % {"dir": q(str(job_dir)), "setup": SETUP_FAILED}]
    mounts: dict[str, tuple[Mount, ...]] = {}

    def argv_of(c: wire.Container) -> str:
        if c.image not in images:
            raise errors.InvalidInput(f"container {c.name}: image {c.image} is not known")
        image = images[c.image]
        mounts[c.name] = container_mounts(pod, c, job_dir, (lambda t: resolve(image, t)) if resolve else (lambda t: t))
        argv = bwrap_argv(pod, c, resolved.get(c.name), image, rootfs_dir(job_dir, c.image), mounts[c.name], uid, gid)
        return " ".join(q(a) for a in argv)

    # Init containers run one after the other; one that fails for good fails the pod. Under
    # OnFailure and Always a failed init container runs again, as on a kubelet.
    init_policy = "Never" if pod.spec.restartPolicy == "Never" else "OnFailure"
    for c in pod.spec.initContainers:
        lines.append("stopping && exit 143")
        lines.append(f"run_c {q(c.name)} {init_policy} {argv_of(c)} || exit $?")
    lines.append("stopping && exit 143")
    lines.append("pids=()")
    for c in pod.spec.containers:
        lines.append(f"run_c {q(c.name)} {pod.spec.restartPolicy} {argv_of(c)} &")
        lines.append("pids+=($!)")
    lines.append(
        'status=0\nfor pid in "${pids[@]}"; do\n'
        '  while :; do wait "$pid"; rc=$?; if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi; break; done\n'
        '  [ "$rc" != 0 ] && status=$rc\ndone\nexit $status\n')
    options = sbatch_options(pod, sidecar=sidecar, partition=partition, account=account, job_dir=job_dir,
                             resources=resources, uid=uid, gid=gid, grace=grace)
    return JobPlan(options=options, script="\n".join(lines), uid=uid, gid=gid, mounts=mounts)
