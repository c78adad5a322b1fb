"""A container's argv from the pod's command/args and the image's ENTRYPOINT/CMD.

Kubernetes' rule (the same on every runtime):

    command   args      runs
    -------   ----      ----
    unset     unset     ENTRYPOINT + CMD of the image
    unset     set       ENTRYPOINT + args            (args replace CMD)
    set       unset     command                      (CMD is dropped too)
    set       set       command + args

"Unset" means null or empty. The sidecar computes the argv itself and hands it to Docker as the
Entrypoint, with an empty Cmd, so that Docker's own merging rules never apply.
"""

from __future__ import annotations

from collections.abc import Sequence


def resolve_argv(
    image_entrypoint: Sequence[str] | None,
    image_cmd: Sequence[str] | None,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
) -> list[str]:
    """The argv the container runs; empty when neither the pod nor the image gives one."""
    if command:
        return [*command, *(args or ())]
    if args:
        return [*(image_entrypoint or ()), *args]
    return [*(image_entrypoint or ()), *(image_cmd or ())]
