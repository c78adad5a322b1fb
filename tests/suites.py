"""The whole test suite as five pytest runs in two lanes side by side: what `make test` (and so
CI) runs.

    python -m tests.suites                 # e2e | home, then slurm, then e2e-private, then fast
    python -m tests.suites tests/unit -x   # with arguments: one plain pytest run of exactly those

Why several processes and not one: the suite is mostly waiting (pods starting, a browser drawing,
a link emulated at 40 ms), not computing, so runs that share nothing but the cluster overlap
well even on two cores. The split follows what they share:

- fast: the tests without the `e2e` mark (no cluster, Docker or display);
- e2e: the end-to-end tests on this machine's own desktop (its Docker engine, X server and
  PulseAudio, the machine's desktop stack);
- e2e-private: the end-to-end tests that bring up stacks of their own or none (PRIVATE_E2E),
  taken out of the e2e run so that the two lanes take about as long;
- home: the `home` tests, whose desktop is another host behind NAT with a Docker engine, X server
  and desktop stack of its own (localenv.netlab); with the e2e run they share only the API server;
- slurm: the `slurm` tests, the virtual HPC node on this machine's Slurm (localenv.slurm), whose
  stack and daemons are its own.

The images both end-to-end runs use are built once before (`localenv images`), so that two runs
never build the same image at once. Each run writes its output to a file; it is printed whole
when the run ends (so the runs' lines never interleave), with a line per start and end. The exit
status is 0 only when every run passed; a run that collected no test counts as a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Suite:
    name: str
    marks: str
    #: More pytest arguments (paths, -k): the default suites have none.
    extra: tuple[str, ...] = ()


E2E = "e2e and not home and not slurm"

#: End-to-end tests that share nothing with the rest of the e2e suite but the API server, the
#: Docker engine and the owner's namespace (where each run's objects carry a label of its own,
#: tests/fixtures/virtual_node.py): they run on private stacks (crash, streams, incluster: their
#: own ports, node and sidecar name; the test that needs the crash stack in the admission module
#: comes along, so that one run owns that stack), or on no stack at all (their own sidecar and
#: interlink processes, a docker-compose project, a fresh virtualenv). Tests of the shared
#: desktop stack, of user B's desktop, of the screen and the speakers, and those that take an
#: image off the node stay in the e2e run. A path that no longer exists fails both runs.
PRIVATE_E2E: tuple[str, ...] = (
    "tests/e2e/test_virtual_node_chaos.py",
    "tests/e2e/test_virtual_node_restarts.py",
    "tests/e2e/test_security_admission.py"
    "::test_a_running_pod_the_owner_no_longer_allows_is_stopped_when_vk_bridge_adopts_it",
    "tests/e2e/test_virtual_node_streams.py",
    "tests/e2e/test_virtual_node_incluster.py",
    "tests/e2e/test_docker_sidecar.py",
    "tests/e2e/test_docker_sidecar_restart.py",
    "tests/e2e/test_interlink_sidecar.py",
    "tests/e2e/test_cluster.py",
    "tests/e2e/test_compose_stack.py",
    "tests/e2e/test_go_toolchain.py",
    "tests/e2e/test_packaging.py",
)

#: Lanes run side by side; the suites of a lane one after the other. Two lanes, because four
#: runs at once on two cores slowed the tests that measure a bound the issues set (a delete
#: within the grace period plus 2 s) past it. The end-to-end suite on the shared desktop stack
#: has a lane of its own (about 21 min warm); the others follow each other in the second (home
#: 3, Slurm 3.5, the private e2e tests about 6, fast 1.5).
LANES: tuple[tuple[Suite, ...], ...] = (
    (Suite("e2e", E2E, tuple(f"--deselect={path}" for path in PRIVATE_E2E)),),
    (
        Suite("home", "e2e and home"),
        # the Slurm sidecar against this machine's real Slurm (localenv.slurm)
        Suite("slurm", "e2e and slurm and not home"),
        Suite("e2e-private", E2E, PRIVATE_E2E),
        # tests/unit only: collecting the 58 end-to-end modules just to deselect them cost
        # each run seconds of CPU (tests/unit/test_layout.py keeps every fast test there).
        Suite("fast", "not e2e", ("tests/unit",)),
    ),
)


@dataclass
class Running:
    suite: Suite
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)


def pytest_argv(*args: str) -> list[str]:
    # No cache provider: the runs would write .pytest_cache at the same time.
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


#: What the end-to-end tests build (bench.lab.TEST_IMAGES, cloudify's, the services'); the
#: blender variants for GPUs are left to `make images`.
TEST_IMAGES = ("viewer", "firefox", "libreoffice", "blender", "interlink", "docker-sidecar", "vk")


def prebuild_images() -> int:
    say("images the end-to-end runs use (built once, before they start)")
    return subprocess.call([sys.executable, "-m", "localenv", "images", *TEST_IMAGES], cwd=ROOT)


def run_all(lanes: tuple[tuple[Suite, ...], ...] = LANES) -> int:
    running: list[Running] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Never raises: a run that is already gone is fine. What is still queued is dropped.
        for queue in queues:
            queue.clear()
        for r in running:
            try:
                r.proc.send_signal(signal.SIGINT)
            except OSError:
                pass

    queues = [list(lane) for lane in lanes]
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    outdir = Path(tempfile.mkdtemp(prefix="kod-suites-"))
    failed: list[str] = []

    def start(suite: Suite) -> Running:
        log = outdir / f"{suite.name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(pytest_argv("-m", suite.marks, "--durations=15", *suite.extra), cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "KOD_TEST_SUITE": suite.name})
        say(f"{suite.name}: pytest -m {suite.marks!r} started (output: {log})")
        return Running(suite, proc, log)

    try:
        lane_of: dict[int, int] = {}
        for i, queue in enumerate(queues):
            if queue:
                r = start(queue.pop(0))
                running.append(r)
                lane_of[id(r)] = i
        pending = list(running)
        while pending:
            for r in list(pending):
                rc = r.proc.poll()
                if rc is None:
                    continue
                pending.remove(r)
                minutes = (time.monotonic() - r.started) / 60
                sys.stdout.write(r.log.read_text(errors="replace"))
                verdict = "passed" if rc == 0 else f"FAILED (pytest exit status {rc})"
                say(f"{r.suite.name}: {verdict} in {minutes:.1f} min")
                if rc != 0:
                    failed.append(r.suite.name)
                queue = queues[lane_of[id(r)]]
                if queue:
                    nxt = start(queue.pop(0))
                    running.append(nxt)
                    pending.append(nxt)
                    lane_of[id(nxt)] = lane_of[id(r)]
            time.sleep(1.0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    say("all suites passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv:
        return subprocess.call(pytest_argv(*argv), cwd=ROOT)
    rc = prebuild_images()
    if rc != 0:
        say(f"building the images failed (exit status {rc}): see above; no test was run")
        return rc
    return run_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
