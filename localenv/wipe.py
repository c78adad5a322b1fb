"""What `down --wipe` removes besides the state directory: mounts left by pods, the pods' network
(bridge, network namespaces, iptables chains of kube-proxy, the kubelet and the CNI plugins) and
the files the kubelet and CNI keep at fixed paths.

Safety first: nothing is deleted below a directory that still has a mount point under it (a pod's
hostPath bind mount would otherwise let `rm -r` reach into the host), and iptables chains are
removed only by the prefixes Kubernetes and CNI use (KUBE-, CNI-); Docker's chains stay.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from kod import errors
from localenv.shell import run, which

CHAIN_PREFIXES = ("KUBE-", "CNI-")
TABLES = ("nat", "filter", "mangle")
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _unescape(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return path.encode().decode("unicode_escape") if "\\" in path else path


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or below any of `roots`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = Path(_unescape(line.split()[4]))
        if any(mp == r or r in mp.parents for r in roots):
            found.append(mp)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all(*roots: Path) -> int:
    """Unmount everything below `roots` (lazily when busy); returns how many were unmounted."""
    count = 0
    for _ in range(3):
        mps = mounts_under(*roots)
        if not mps:
            break
        for mp in mps:
            if run(["umount", mp], check=False).returncode != 0:
                run(["umount", "-l", mp], check=False)
            count += 1
    left = mounts_under(*roots)
    if left:
        raise errors.Internal(f"cannot unmount {', '.join(map(str, left[:5]))}",
                              hint="stop what uses them, then run `python -m localenv down --wipe` again")
    return count


def remove_tree(path: Path) -> bool:
    """rm -r, refused while anything is mounted below `path`."""
    if not path.exists() and not path.is_symlink():
        return False
    if mounts_under(path):
        raise errors.Internal(f"refusing to delete {path}: mount points remain below it")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def iptables_rules(prefixes: tuple[str, ...] = CHAIN_PREFIXES) -> int:
    """Remove jumps into chains with `prefixes` from the built-in chains, then flush and delete
    those chains, in the nat, filter and mangle tables. Returns the number of chains removed."""
    iptables = which("iptables")
    if iptables is None:
        return 0
    removed = 0
    for table in TABLES:
        dump = run([f"{iptables}-save", "-t", table], check=False).stdout.splitlines()
        chains = [ln[1:].split()[0] for ln in dump if ln.startswith(":") and ln[1:].startswith(prefixes)]
        for ln in dump:
            if not ln.startswith("-A "):
                continue
            words = shlex.split(ln)
            chain = words[1]
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if chain in BUILTIN_CHAINS and target.startswith(prefixes):
                run([iptables, "-t", table, "-D", *words[1:]], check=False)
        for chain in chains:
            run([iptables, "-t", table, "-F", chain], check=False)
        for chain in chains:
            if run([iptables, "-t", table, "-X", chain], check=False).returncode == 0:
                removed += 1
    return removed


def network(bridge: str) -> list[str]:
    """Delete the pods' bridge and the CNI network namespaces; returns what was removed."""
    done = []
    if Path(f"/sys/class/net/{bridge}").exists():
        run(["ip", "link", "delete", bridge], check=False)
        done.append(f"bridge {bridge}")
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for ns in sorted(netns.glob("cni-*")):
            run(["ip", "netns", "delete", ns.name], check=False)
            if run(["umount", ns], check=False).returncode == 0 or ns.exists():
                ns.unlink(missing_ok=True)
            done.append(f"netns {ns.name}")
    return done


def fixed_paths(pod_logs: Path, network_name: str) -> list[str]:
    """The kubelet's and CNI's files at fixed paths (only what this cluster put there)."""
    done = []
    device_plugins = Path("/var/lib/kubelet/device-plugins")
    if device_plugins.exists():
        remove_tree(device_plugins)
        done.append(str(device_plugins))
    for d in (Path("/var/lib/kubelet"), Path("/var/log/pods")):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            done.append(str(d))
    containers = Path("/var/log/containers")
    if containers.is_dir():
        for link in containers.iterdir():
            try:
                target = link.resolve(strict=False)
            except OSError:
                continue
            if link.is_symlink() and (pod_logs in target.parents or not target.exists()):
                link.unlink()
        if not any(containers.iterdir()):
            containers.rmdir()
        done.append(str(containers))
    cni = Path("/var/lib/cni")
    if cni.is_dir():
        for f in cni.rglob(f"{network_name}-*"):
            if f.is_file():
                f.unlink()
        for d in sorted((p for p in cni.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(cni.iterdir()):
            cni.rmdir()
        done.append(str(cni))
    return done
