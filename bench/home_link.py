"""`cloudify firefox` with the desktop on the cluster's host, behind NAT, and behind NAT on a home
link, side by side in one run: first frame, bytes per second, the sound's delay.

    .venv/bin/python bench/home_link.py [--runs 5] [--warmup 1] [--conditions same_host,nat,home]

Needs the local cluster up (`python -m localenv up`); run it under the e2e lock (it starts the
machine's own desktop stack if it is not running, and the two-host proving ground of
localenv.netlab, which it removes again at the end, even after a failure). Three conditions:

- same_host: the desktop on the cluster's host (the machine's own desktop stack and a desktop of
  its own, Xvfb and PulseAudio), as every other benchmark measures it;
- nat: the desktop at home (localenv.netlab, variant "api"): another host behind NAT that reaches
  only the API server and the konnectivity server, with its own Docker engine and desktop stack
  (its virtual node's kubelet API reached through the konnectivity tunnel it dials out);
- home: the same on the emulated home link: 20 Mbit/s down, 5 up (tc tbf), +40 ms RTT (toxiproxy).

In each, cloudify runs as the node's owner would (own credentials, own namespace; pod mode, the
viewer a pod on the desktop's virtual node) at its default settings (on the home link that is
the picture it fits to the measured link) and a 1280x720 screen, and this is measured:

- first frame: `cloudify firefox` to the first capture of the viewer window that
  `localenv.virtual_desktop.drawn` judges drawn (the one "drawn" check of the tests and the demo),
  median of `--runs` after `--warmup`, with the phases cloudify reports (--timings-file);
- bytes per second the desktop receives for the session, 10 s of the idle start page and 10 s of
  tests/e2e/pages/anim.html (a video-like animation changing the whole 1280x720 screen each frame),
  with a screenshot of the animation in the viewer (bench/results/home_link-anim-<condition>.png).
  Where it is counted: on the same host, the app pod's eth0 (tx, read with kubectl exec), which
  carries the viewer's connection to the NodePort; at home, the desktop's own cable (rx of its
  interface in its namespace: the picture and sound arrive through the API server's
  port-forward, which enters the pod through its loopback and never crosses its eth0; the
  kube API traffic of the node and cloudify is counted too, a few kB/s);
- the sound's delay: a 0.3 s tone played in the app pod (the pod's `date` just before paplay;
  the pod and the desktop share this machine's clock) to its onset in the desktop's speakers (the
  null sink's monitor), median of 5; and the same tone played on the desktop itself: the
  difference is what the kod path adds;
- nat only: a kill -9 of each end of the tunnel (the desktop's konnectivity agent, the cluster's
  konnectivity server; their supervisors restart them) to `kubectl logs` of a pod on the
  desktop's node working again (the issue's bound: 10 s), 3 times each.

Prints a table; writes bench/results/home_link.json (stamped by bench/results.py: date, commit,
load average), with the conditions this run measured and nothing else. Goals (issue 11) on the
home link: first frame <= 6 s, the animation <= 8 Mbit/s at the default settings. The original
project's 14.3 s (its thesis, pods Running in pod mode, on its own network) is quoted, not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cloudify_first_frame import ORIGINAL, attempt  # noqa: E402
from bench.images_sound_latency import delay  # noqa: E402
from bench.results import RESULTS, Run  # noqa: E402
from kod import labels  # noqa: E402
from localenv import desktop_stack, handle, images, konnectivity, netlab, procs, users  # noqa: E402
from localenv.progress import Progress  # noqa: E402
from localenv.virtual_desktop import Box, VirtualDesktop, capture_x, drawn, wait_for  # noqa: E402

CONDITIONS = ("same_host", "nat", "home")
WINDOW = r"^firefox - TigerVNC"
GEOMETRY = "1280x720"
ANIM = ROOT / "tests" / "e2e" / "pages" / "anim.html"
GOAL_FIRST_FRAME = 6.0
GOAL_ANIM_MBIT = 8.0
APP_IMAGES = ("kod/firefox:0.1.0", "kod/viewer:0.1.0")
SHORT_TONE = (
    "python3 -c \"import math, struct, wave; w = wave.open('/tmp/kod-short.wav', 'wb'); w.setnchannels(1); "
    "w.setsampwidth(2); w.setframerate(44100); w.writeframes(b''.join(struct.pack('<h', int(16384 * "
    "math.sin(2 * math.pi * 440 * i / 44100))) for i in range(int(44100 * 0.3))))\""
)


@dataclass
class Where:
    """One condition: where cloudify and kubectl run, and the desktop they show on."""

    name: str
    desktop: VirtualDesktop
    env: dict[str, str]
    kubeconfig: Path
    namespace: str
    enter: Callable[[], contextlib.AbstractContextManager[None]]
    #: The bytes the desktop has received, when they can be counted on its own cable (at home).
    received: Callable[[], int] | None = None

    def kubectl(self, *args: str, input: bytes | None = None, timeout: float = 60) -> str:
        with self.enter():
            out = subprocess.run([str(handle.local().kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
                                 input=input, capture_output=True, timeout=timeout, check=True)
        return out.stdout.decode()

    def xdotool(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.desktop.env(), capture_output=True, check=False, timeout=30)


def cloudify_env(desktop: VirtualDesktop, kubeconfig: Path, user: str, node: str, workdir: Path) -> dict[str, str]:
    pulse_dir = Path("/run/kod/pulse") / f"bench-home-{uuid.uuid4().hex[:6]}"
    env = desktop.cloudify_env({k: v for k, v in os.environ.items() if not k.startswith("KOD_CLOUDIFY_")}, pulse_dir)
    env.update({
        "KUBECONFIG": str(kubeconfig), "XDG_STATE_HOME": str(workdir / "state"), "XDG_CONFIG_HOME": str(workdir / "config"),
        "KOD_CLOUDIFY_USER": user, "KOD_CLOUDIFY_VIRTUAL_NODE": node, "KOD_CLOUDIFY_GEOMETRY": GEOMETRY,
        "KOD_CLOUDIFY_BROWSER": "true",
        # This machine has Firefox installed (the fallback's test): never measure the local one.
        "KOD_CLOUDIFY_LOCAL_COMMANDS": '{"firefox": ["kod-no-local-firefox"]}',
    })
    return env


def tx_bytes(where: Where, pod: str) -> int:
    return int(where.kubectl("exec", "-n", where.namespace, pod, "-c", "app", "--", "cat",
                             "/sys/class/net/eth0/statistics/tx_bytes").strip())


def desktop_rx(lab: netlab.Netlab) -> int:
    """Bytes the desktop host has received on its cable (its interface, in its namespace)."""
    t = lab.topology
    out = subprocess.run(["ip", "-n", t.name, "-s", "-j", "link", "show", "dev", t.lan_desktop_if],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def rate(where: Where, pod: str, seconds: float) -> dict[str, Any]:
    count = where.received or (lambda: tx_bytes(where, pod))
    b0, t0 = count(), time.monotonic()
    time.sleep(seconds)
    b1, t1 = count(), time.monotonic()
    return {"bytes_per_s": round((b1 - b0) / (t1 - t0)), "mbit_per_s": round((b1 - b0) * 8 / (t1 - t0) / 1e6, 3),
            "counted": "the desktop's cable (rx)" if where.received else "the app pod's eth0 (tx)"}


def tone_delay(where: Where, workdir: Path, play: Callable[[], float]) -> float:
    """Seconds from play() starting the tone to its onset in the desktop's speakers (recorded on
    the desktop's host)."""
    return delay(where.desktop, workdir, play, enter=where.enter, listen=1.5)


def session_figures(where: Where, workdir: Path) -> dict[str, Any]:
    """One session: bytes/s idle and animated, the animation's screenshot, the sound's delay."""
    err = open(workdir / f"session-{where.name}.err", "w")  # noqa: SIM115 - the process writes it
    with where.enter():
        proc = subprocess.Popen([str(ROOT / ".venv/bin/cloudify"), "firefox"], env=where.env,
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    figures: dict[str, Any] = {}
    try:
        window = wait_for(lambda: where.desktop.find_window(WINDOW), 120, "the viewer window")
        assert window is not None
        where.desktop.wait_for_content(window.box, drawn, 120, "Firefox drawn")
        items = json.loads(where.kubectl("get", "pods", "-n", where.namespace, "-l", f"{labels.ROLE}=app",
                                         "-o", "json"))["items"]
        pod = items[0]["metadata"]["name"]
        time.sleep(5)  # the start page settles
        figures["idle"] = rate(where, pod, 10)
        where.kubectl("exec", "-i", "-n", where.namespace, pod, "-c", "app", "--", "sh", "-c",
                      "cat > /tmp/kod-anim.html", input=ANIM.read_bytes())
        where.xdotool("windowfocus", "--sync", str(window.id))
        where.xdotool("key", "--clearmodifiers", "ctrl+l")
        time.sleep(0.5)
        where.xdotool("type", "--delay", "20", "file:///tmp/kod-anim.html#mixed")
        where.xdotool("key", "Return")
        time.sleep(4)  # the page loads and the encoder reaches its steady state
        figures["animation"] = rate(where, pod, 10)
        shot = RESULTS / f"home_link-anim-{where.name}.png"
        box = Box(window.box.x, window.box.y, min(window.box.width, 1920), min(window.box.height, 1080))
        img = capture_x(where.desktop.display, where.desktop.cookie, box)
        img.save_png(shot)
        figures["animation"].update({"screenshot": str(shot.relative_to(ROOT)), "drawn": drawn(img),
                                     "distinct_colours": img.distinct_colours()})
        # Back to a still page for the sound: the picture's traffic does not queue it.
        where.xdotool("key", "--clearmodifiers", "ctrl+l")
        time.sleep(0.5)
        where.xdotool("type", "--delay", "20", "about:blank")
        where.xdotool("key", "Return")
        where.kubectl("exec", "-n", where.namespace, pod, "-c", "app", "--", "sh", "-c", SHORT_TONE)

        def in_app() -> float:
            out = where.kubectl("exec", "-n", where.namespace, pod, "-c", "app", "--", "sh", "-c",
                                "date +%s.%N && paplay /tmp/kod-short.wav")
            return float(out.split()[0])

        def on_desktop() -> float:
            t = time.time()
            with where.enter():
                subprocess.run(["paplay", str(workdir / "short.wav")], env=where.desktop.env(), check=True, timeout=30)
            return t

        _write_tone(workdir / "short.wav")
        in_app()  # the viewer's sound stream is up (the first tone may find it connecting)
        time.sleep(1)
        app = [tone_delay(where, workdir, in_app) for _ in range(5)]
        local = [tone_delay(where, workdir, on_desktop) for _ in range(5)]
        figures["sound"] = {"app_to_speakers_s": round(statistics.median(app), 4),
                            "desktop_paplay_s": round(statistics.median(local), 4),
                            "added_by_kod_s": round(statistics.median(app) - statistics.median(local), 4),
                            "runs_app_s": [round(v, 4) for v in app]}
        where.xdotool("windowfocus", "--sync", str(window.id))
        where.xdotool("key", "--clearmodifiers", "ctrl+q")
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.send_signal(2)
            proc.wait(timeout=90)
        err.close()
    return figures


def _write_tone(path: Path) -> None:
    import math
    import struct
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"".join(struct.pack("<h", int(16384 * math.sin(2 * math.pi * 440 * i / 44100)))
                               for i in range(int(44100 * 0.3))))


def _logs_work(where: Where, pod: str) -> bool:
    try:
        return where.kubectl("logs", "-n", where.namespace, pod, "--tail=1", timeout=15).startswith("tick ")
    except subprocess.SubprocessError:
        return False


def heal_times(lab: netlab.Netlab, where: Where, stack: desktop_stack.Stack, image: str,
               repeats: int = 3) -> dict[str, Any]:
    """Seconds from a kill -9 of each end of the tunnel to `kubectl logs` working again."""
    pod = f"bench-ticker-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {"kod.io/test": "virtual-node"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": stack.node_name},
                     "tolerations": [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
                     "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                                     "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done"]}]}}
    admin = Where(where.name, where.desktop, where.env, lab.kubeconfig, where.namespace, where.enter)
    admin.kubectl("apply", "-n", where.namespace, "-f", "-", input=json.dumps(body).encode())
    out: dict[str, Any] = {}
    try:
        wait_for(lambda: _logs_work(admin, pod), 120, "the ticker's logs")
        pid_files = {"agent": stack.run_dir / f"{desktop_stack.SCRIPTS[desktop_stack.TUNNEL]}.pid",
                     "server": lab.paths.run_dir / f"{konnectivity.SERVER_NAME}.pid"}
        for end, pid_file in pid_files.items():
            times = []
            for _ in range(repeats):
                record = procs.read_record(pid_file)
                child = konnectivity.child_pid(record.pid) if record else None
                if child is None:
                    raise RuntimeError(f"the tunnel's {end} runs no program")
                os.kill(child, 9)
                t0 = time.monotonic()
                while not _logs_work(admin, pod):
                    if time.monotonic() - t0 > 120:
                        raise RuntimeError(f"kubectl logs did not come back within 120 s of killing the {end}")
                    time.sleep(0.1)
                times.append(round(time.monotonic() - t0, 2))
                time.sleep(3)
            out[end] = {"median_s": statistics.median(times), "max_s": max(times), "runs_s": times}
    finally:
        admin.kubectl("delete", "pod", "-n", where.namespace, pod, "--wait=false", "--ignore-not-found")
    return out


def measure(where: Where, runs: int, warmup: int, workdir: Path) -> dict[str, Any]:
    print(f"{where.name}: first frame x {warmup}+{runs}", flush=True)
    with where.enter():
        for _ in range(warmup):
            attempt(where.desktop, where.env, "pod", workdir)
        all_runs = [attempt(where.desktop, where.env, "pod", workdir,
                            save=RESULTS / f"home_link-first-frame-{where.name}-{i}.png") for i in range(runs)]
    ok = [r for r in all_runs if "error" not in r]
    result: dict[str, Any] = {"load_before": os.getloadavg()[0], "failed": [r for r in all_runs if "error" in r]}
    if ok:
        frames = [r["first_frame"] for r in ok]
        result.update({
            "first_frame_median": round(statistics.median(frames), 3), "first_frame_min": min(frames),
            "first_frame_max": max(frames),
            "phase_medians": {p: round(statistics.median(r["phases"][p] for r in ok if p in r["phases"]), 3)
                              for p in ("prepare", "link measured", "app pod running", "viewer running", "first frame")
                              if any(p in r["phases"] for r in ok)},
            "runs": ok,
        })
    print(f"{where.name}: session figures", flush=True)
    try:
        result.update(session_figures(where, workdir))
    except Exception as exc:  # noqa: BLE001 - recorded in the results, the other conditions still run
        result["session_error"] = repr(exc)
    link = [line for line in (workdir / f"session-{where.name}.err").read_text().splitlines()
            if "link to the cluster" in line or "picture:" in line]
    result["cloudify_said"] = link
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1), flush=True)
    return result


@contextlib.contextmanager
def same_host(workdir: Path) -> Iterator[Where]:
    cluster = handle.local()
    stack = desktop_stack.up(Progress(quiet=True), cluster=cluster)
    owner = users.ensure(cluster, stack.settings.user)
    assert owner.kubeconfig is not None
    desktop = VirtualDesktop(workdir / "desktop-same-host", screen=(1280, 720))
    desktop.start()
    try:
        yield Where("same_host", desktop, cloudify_env(desktop, owner.kubeconfig, owner.name, stack.node_name, workdir),
                    owner.kubeconfig, owner.namespace, contextlib.nullcontext)
    finally:
        desktop.stop()


@contextlib.contextmanager
def at_home(workdir: Path) -> Iterator[tuple[netlab.Netlab, desktop_stack.Stack, Where]]:
    cluster = handle.local()
    with netlab.proving_ground("api") as lab:
        lab.engine.start()
        lab.engine.load(netlab.DESKTOP_IMAGES)
        settings = desktop_stack.load_stack_settings().private(
            "home", port_offset=0, docker_url=lab.engine.url, konnectivity_server=lab.tunnel_server)
        home_cluster = lab.cluster_handle()
        owner = users.ensure(cluster, settings.user)
        assert owner.kubeconfig is not None
        kubeconfig = lab.desktop_kubeconfig(owner.kubeconfig, workdir / "user.kubeconfig")
        desktop = VirtualDesktop(workdir / "desktop-home", screen=(1280, 720))
        try:
            with lab.desktop():
                stack = desktop_stack.up(Progress(quiet=True), cluster=home_cluster, settings=settings)
                desktop.start()
            yield lab, stack, Where("nat", desktop, cloudify_env(desktop, kubeconfig, owner.name, stack.node_name, workdir),
                                    kubeconfig, owner.namespace, lab.desktop, received=lambda: desktop_rx(lab))
        finally:
            desktop.stop()
            with lab.desktop():
                desktop_stack.down(Progress(quiet=True), cluster=home_cluster, settings=settings)
            lab.engine.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    args = parser.parse_args()
    wanted = [c.strip() for c in args.conditions.split(",") if c.strip()]

    run = Run("home_link")
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kod-bench-home-"))
    images.build_all(Progress(quiet=True), only=["firefox", "viewer"])
    handle.local().provide_images(list(APP_IMAGES))  # imported and reported by the node, as cloudify checks
    results: dict[str, Any] = {"runs": args.runs, "warmup": args.warmup, "geometry": GEOMETRY, "conditions": {},
                               "original": ORIGINAL}
    try:
        if "same_host" in wanted:
            with same_host(workdir) as where:
                results["conditions"]["same_host"] = measure(where, args.runs, args.warmup, workdir)
        if {"nat", "home"} & set(wanted):
            with at_home(workdir) as (lab, stack, where):
                if "nat" in wanted:
                    results["conditions"]["nat"] = measure(where, args.runs, args.warmup, workdir)
                    try:
                        results["tunnel_heal"] = heal_times(lab, where, stack, netlab.DESKTOP_IMAGES[2])
                    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                        results["tunnel_heal"] = {"error": repr(exc)}
                    print(f"tunnel heal: {results['tunnel_heal']}", flush=True)
                if "home" in wanted:
                    lab.home_link(True)
                    where.name = "home"
                    results["conditions"]["home"] = measure(where, args.runs, args.warmup, workdir)
    finally:
        run.write(results)
    print(f"\ncloudify firefox (pod mode, default settings, {GEOMETRY}), first frame median of {args.runs}")
    print(f"{'condition':<10}{'first':>7}{'prepare':>9}{'app run':>9}{'viewer':>8}{'idle':>10}{'anim':>10}"
          f"{'sound':>8}{'added':>8}")
    for name, r in results["conditions"].items():
        p = r.get("phase_medians", {})
        print(f"{name:<10}{r.get('first_frame_median', float('nan')):>6.2f}s{p.get('prepare', 0):>8.2f}s"
              f"{p.get('app pod running', 0):>8.2f}s{p.get('viewer running', 0):>7.2f}s"
              f"{r.get('idle', {}).get('mbit_per_s', float('nan')):>5.2f}Mb/s{r.get('animation', {}).get('mbit_per_s', float('nan')):>5.2f}Mb/s"
              f"{r.get('sound', {}).get('app_to_speakers_s', float('nan')) * 1000:>6.0f}ms"
              f"{r.get('sound', {}).get('added_by_kod_s', float('nan')) * 1000:>6.0f}ms")
    for end, h in results.get("tunnel_heal", {}).items():
        if isinstance(h, dict):
            print(f"kill -9 of the tunnel's {end}: kubectl logs back after {h['median_s']:.1f} s median, "
                  f"{h['max_s']:.1f} s max (goal 10 s)")
    home = results["conditions"].get("home", {})
    if "first_frame_median" in home:
        print(f"goal first frame <= {GOAL_FIRST_FRAME:.0f} s on the home link: "
              f"{'met' if home['first_frame_median'] <= GOAL_FIRST_FRAME else 'NOT met'}")
    if "animation" in home:
        print(f"goal animation <= {GOAL_ANIM_MBIT:.0f} Mbit/s on the home link: "
              f"{'met' if home['animation']['mbit_per_s'] <= GOAL_ANIM_MBIT else 'NOT met'} "
              f"(screenshot {home['animation']['screenshot']})")
    print(f"quoted, not measured: {ORIGINAL['what']} ({ORIGINAL['source']})")
    if not any(r.get("failed") or r.get("session_error") for r in results["conditions"].values()):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"cloudify's messages are kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
