"""A real one-machine Slurm (munge, slurmctld, slurmd from Debian's slurm-wlm 22.05), started
by localenv like the cluster, for the Slurm sidecar (sidecars/slurm) and its tests.

    from localenv import slurm, settings
    site = slurm.up(settings.load())     # idempotent: a second call starts nothing
    site.sinfo()                          # "idle" once the node takes jobs
    slurm.status(settings.load()); slurm.down(settings.load())

`python -m localenv slurm [up|down|status]` does the same from the shell; `python -m localenv up`
starts it too when `KOD_LOCALENV_SLURM=1` (off by default, so that `up` stays fast).

What `up` does, in order: the Debian packages (localenv.packages, component "slurm"); a munge
key when the package made none; the configuration at Slurm's fixed paths (/etc/slurm/slurm.conf
and cgroup.conf, readable by every user because every Slurm command reads them), with the node
described by `slurmd -C` and the cgroup plugins this kernel allows (`cgroup_plan`); then munged,
slurmctld and slurmd as localenv daemons (localenv.procs: PID files verified by command line,
restarted when their configuration changed), and a wait until `sinfo` shows the node idle.
There is no systemd here; docs/slurm.md says what a real site runs instead.

State lives under `<data_dir>/slurm/` (controller state, slurmd's spool, PID files, logs).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kod import errors
from localenv import desktop_stack, packages, procs
from localenv.progress import Progress
from localenv.settings import LocalEnvSettings

#: Where every Slurm command looks for its configuration (no SLURM_CONF needed).
CONF_DIR = Path("/etc/slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
CLUSTER_NAME = "kod"
PARTITION = "kod"
#: Jobs stay visible to `squeue --states=all` this long after they end: the Slurm sidecar reads
#: final states (COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT, NODE_FAIL) from there, since sacct
#: needs slurmdbd and a database, which this one-machine site does not run.
MIN_JOB_AGE_SECONDS = 900
#: Seconds between a job's SIGTERM and SIGKILL when it is cancelled or runs out of time.
KILL_WAIT_SECONDS = 5
#: Memory the node keeps for itself (the cluster, Docker, the tests) out of what slurmd counts.
RESERVED_MEMORY_MB = 4096


@dataclass(frozen=True)
class CgroupPlan:
    """Which plugins track and confine jobs on this kernel."""

    version: str  # "v1", "v2" or "none"
    proctrack: str
    task: str
    #: cgroup.conf's lines (empty when cgroups are not used).
    conf: tuple[str, ...]
    #: Why, for the log and docs.
    reason: str


def cgroup_plan(fs_type: str, controllers: set[str], *, swap_accounting: bool) -> CgroupPlan:
    """The proctrack/task plugins and cgroup.conf for a kernel whose /sys/fs/cgroup is of
    `fs_type` ("cgroup2fs": the unified hierarchy; "tmpfs": v1 hierarchies under it) and has
    `controllers` enabled. Memory limits need the memory controller; process tracking needs the
    freezer (v1) or the unified hierarchy (v2). Without them Slurm falls back to tracking by
    parent process, and limits are not enforced (docs/slurm.md)."""
    if fs_type == "cgroup2fs":
        version, plugin = "v2", "cgroup/v2"
        tracking = "memory" in controllers
    elif fs_type == "tmpfs":
        version, plugin = "v1", "cgroup/v1"
        tracking = {"freezer", "memory"} <= controllers
    else:
        version, plugin, tracking = "none", "", False
    if not tracking:
        return CgroupPlan("none", "proctrack/linuxproc", "task/affinity", (),
                          f"no usable cgroup hierarchy ({fs_type}, controllers {sorted(controllers)}): no limits")
    conf = [
        f"CgroupPlugin={plugin}",
        # Cores are oversubscribed (slurm.conf): pinning each job to "its" core would put most
        # jobs on one core. CPU use is shared as on a kubelet (docs/slurm.md).
        "ConstrainCores=no",
        "ConstrainRAMSpace=yes",
        # A job's memory is its --mem; swapping beyond it would hide an OOM behind slowness.
        "ConstrainSwapSpace=" + ("yes" if swap_accounting else "no"),
        "AllowedSwapSpace=0",
        "ConstrainDevices=" + ("yes" if "devices" in controllers or version == "v2" else "no"),
    ]
    if version == "v1":
        conf.insert(1, "CgroupMountpoint=/sys/fs/cgroup")
    return CgroupPlan(version, "proctrack/cgroup", "task/cgroup,task/affinity", tuple(conf),
                      f"cgroup {version}: jobs tracked and confined by cgroups")


def detect_cgroups() -> CgroupPlan:
    """`cgroup_plan` for this machine's kernel."""
    fs_type = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
    controllers: set[str] = set()
    if fs_type == "cgroup2fs":
        path = Path("/sys/fs/cgroup/cgroup.controllers")
        controllers = set(path.read_text().split()) if path.exists() else set()
    else:
        for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
            name, _hier, _num, enabled = line.split()
            if enabled == "1" and Path("/sys/fs/cgroup", name).is_dir():
                controllers.add(name)
    swap = Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() or fs_type == "cgroup2fs"
    return cgroup_plan(fs_type, controllers, swap_accounting=swap)


def node_line(slurmd_c: str, reserved_mb: int = RESERVED_MEMORY_MB) -> tuple[str, int, int]:
    """slurm.conf's NodeName line from `slurmd -C` (RealMemory minus what the machine keeps),
    with the node's name and CPUs."""
    fields = dict(item.split("=", 1) for item in slurmd_c.splitlines()[0].split())
    memory = max(512, int(fields["RealMemory"]) - reserved_mb)
    keep = ("NodeName", "CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    line = " ".join(f"{k}={fields[k]}" for k in keep if k in fields) + f" RealMemory={memory} State=UNKNOWN"
    return line, int(fields["CPUs"]), memory


@dataclass(frozen=True)
class Site:
    """Where this machine's Slurm lives."""

    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def spool_dir(self) -> Path:
        # Not under root's 0700 home: slurmstepd runs each job's script from here as the job's user.
        return Path("/var/spool/kod-slurmd")

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def slurm_conf(self) -> Path:
        return CONF_DIR / "slurm.conf"

    @property
    def cgroup_conf(self) -> Path:
        return CONF_DIR / "cgroup.conf"

    def sinfo(self) -> str:
        """The node's state as `sinfo` prints it ("idle", "mixed", "down*", ...), "" when no answer."""
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 else ""


def site_for(s: LocalEnvSettings) -> Site:
    return Site(root=s.data_dir / "slurm")


def slurm_conf(site: Site, node: str, plan: CgroupPlan) -> str:
    """slurm.conf for one machine that is controller and compute node at once."""
    host = node.split()[0].split("=", 1)[1]
    lines = [
        "# Written by `python -m localenv slurm` (localenv/slurm.py); changes are overwritten.",
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}",
        # root: the state lives under the invoking user's data_dir (0700 homes); a real site runs
        # slurmctld as its own `slurm` user (docs/slurm.md).
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"StateSaveLocation={site.state_dir}",
        f"SlurmdSpoolDir={site.spool_dir}",
        f"SlurmctldPidFile={site.run_dir}/slurmctld.daemon.pid",
        f"SlurmdPidFile={site.run_dir}/slurmd.daemon.pid",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        "ReturnToService=2",
        f"ProctrackType={plan.proctrack}",
        f"TaskPlugin={plan.task}",
        "JobAcctGatherType=" + ("jobacct_gather/cgroup" if plan.version != "none" else "jobacct_gather/linux"),
        "JobAcctGatherFrequency=30",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        # Memory is what jobs consume; cores are shared by up to 64 jobs each (partition's
        # OverSubscribe=FORCE:64, and ConstrainCores=no): 20 small pods on 2 cores must all run,
        # as they do on a kubelet, where a CPU request is a share, not a reservation of a core.
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "DefMemPerNode=256",
        f"MinJobAge={MIN_JOB_AGE_SECONDS}",
        f"KillWait={KILL_WAIT_SECONDS}",
        "MaxJobCount=10000",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,defer_batch=0",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "Waittime=0",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        node,
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64",
        "",
    ]
    return "\n".join(lines)


def _write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == content:
        os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def _ensure_munge_key() -> str:
    if MUNGE_KEY.exists() and MUNGE_KEY.stat().st_size >= 32:
        return "present"
    subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY), "--force"], check=True, capture_output=True)
    shutil.chown(MUNGE_KEY, "munge", "munge")
    os.chmod(MUNGE_KEY, 0o400)
    return "made"


def _munge_answers() -> bool:
    proc = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=5)
    return proc.returncode == 0


def _controller_answers() -> bool:
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout.count("UP") > 0


def daemons(site: Site) -> list[procs.Daemon]:
    """munged, slurmctld and slurmd, in start order. Their configuration files are inputs: a
    change restarts them."""
    confs = (site.slurm_conf, site.cgroup_conf)
    munged = procs.Daemon(
        name="munged", argv=("/usr/sbin/munged", "--foreground", "--force", "--num-threads=4"),
        run_dir=site.run_dir, logs_dir=site.logs_dir, inputs=(MUNGE_KEY,), ready=_munge_answers, ready_timeout=30,
    )
    ctld = procs.Daemon(
        name="slurmctld", argv=("/usr/sbin/slurmctld", "-D", "-i"), run_dir=site.run_dir, logs_dir=site.logs_dir,
        inputs=(*confs, MUNGE_KEY), ready=_controller_answers, ready_timeout=60, ports=(6817,),
    )
    slurmd = procs.Daemon(
        name="slurmd", argv=("/usr/sbin/slurmd", "-D"), run_dir=site.run_dir, logs_dir=site.logs_dir,
        inputs=(*confs, MUNGE_KEY), ready=lambda: site.sinfo() in ("idle", "mixed", "alloc"),
        ready_timeout=60, ports=(6818,), stop_timeout=30,
    )
    return [munged, ctld, slurmd]


def up(s: LocalEnvSettings, progress: Progress | None = None) -> Site:
    """Install, configure and start Slurm (idempotent: what runs with the same configuration
    is left alone) and wait until the node is idle."""
    progress = progress or Progress()
    site = site_for(s)
    with progress.step("slurm: Debian packages") as step:
        installed = packages.ensure(packages.REQUIRED["slurm"], step)
        step.done(f"installed {' '.join(installed)}" if installed else "present")
    with progress.step("slurm: munge key, configuration") as step:
        key = _ensure_munge_key()
        for d in (site.state_dir, site.spool_dir, site.run_dir, site.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        Path("/var/log/munge").mkdir(parents=True, exist_ok=True)
        plan = detect_cgroups()
        node, cpus, memory = node_line(subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout)
        changed = _write_if_changed(site.slurm_conf, slurm_conf(site, node, plan))
        changed |= _write_if_changed(site.cgroup_conf, "\n".join(("# Written by localenv/slurm.py", *plan.conf, "")))
        step.done(f"munge key {key}; {plan.reason}; node {cpus} CPUs {memory} MB; "
                  + ("configuration written" if changed else "configuration unchanged"))
    for daemon in daemons(site):
        with progress.step(f"slurm: {daemon.name}") as step:
            outcome, pid = procs.ensure(daemon)
            step.done(f"{outcome}, pid {pid}, log {daemon.log_file}")
    state = site.sinfo()
    if state.rstrip("*") in ("down", "drain", "drained", "fail"):
        subprocess.run(["scontrol", "update", f"NodeName={node.split()[0].split('=', 1)[1]}", "State=RESUME"],
                       capture_output=True)
    return site


def down(s: LocalEnvSettings, progress: Progress | None = None) -> None:
    """Cancel every job, then stop slurmd, slurmctld and munged (by PID, verified)."""
    progress = progress or Progress()
    site = site_for(s)
    ds = daemons(site)
    if procs.running_pid(ds[1].pid_file):
        subprocess.run(["scancel", "--full", "--user=" + pwd.getpwuid(0).pw_name], capture_output=True, timeout=30)
        subprocess.run(["scancel", "--full", "--partition=" + PARTITION], capture_output=True, timeout=30)
    for daemon in reversed(ds):
        with progress.step(f"slurm: stop {daemon.name}") as step:
            pid = procs.running_pid(daemon.pid_file)
            procs.stop(daemon)
            step.done(f"stopped pid {pid}" if pid else "not running")


def status(s: LocalEnvSettings) -> dict[str, Any]:
    """Each daemon's PID (or None) and the node's state."""
    site = site_for(s)
    pids = {d.name: procs.running_pid(d.pid_file) for d in daemons(site)}
    return {"daemons": pids, "node": site.sinfo() if pids["slurmctld"] else "", "root": str(site.root),
            "conf": str(site.slurm_conf)}


#: The virtual HPC node's name.
HPC_NODE = "hpc-local"


def hpc_stack_settings(base: desktop_stack.StackSettings | None = None) -> desktop_stack.StackSettings:
    """The HPC node's stack: the desktop's settings with its own node, directory and ports, and
    the Slurm sidecar (on interLink's Slurm port, 4001) behind its interlink."""
    base = base or desktop_stack.load_stack_settings()
    # +900: the test suites' private stacks take +100 to +800 (tests/fixtures, bench/), and the
    # Slurm suite runs beside them (tests/suites.py): +100 was the crash tests' interlink port.
    return base.model_copy(update={
        "node_name": HPC_NODE, "sidecar_kind": "slurm", "sidecar_name": "slurm", "directory": "hpc",
        "interlink_port": base.interlink_port + 900, "sidecar_port": 4001, "kubelet_port": base.kubelet_port + 20,
        "tunnel_health_port": base.tunnel_health_port + 900, "tunnel_admin_port": base.tunnel_admin_port + 900,
        "slurm": {"partition": PARTITION, **base.slurm},
    })


def hpc_up(s: LocalEnvSettings, progress: Progress | None = None) -> desktop_stack.Stack:
    """Slurm (`up`), then the HPC node's stack; returns the stack (node Ready)."""
    progress = progress or Progress()
    up(s, progress)
    return desktop_stack.up(progress, settings=hpc_stack_settings())


def hpc_down(s: LocalEnvSettings, progress: Progress | None = None) -> None:
    """The HPC node's stack (its pods deleted first, so their jobs end), then Slurm."""
    progress = progress or Progress()
    desktop_stack.down(progress, settings=hpc_stack_settings())
    down(s, progress)
