"""WireGuard: domain model, diff planning, keys and the two kernel-facing backends."""
from __future__ import annotations

import logging

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the backends load pyroute2 (~10 MB): only daemons that drive an interface pay for it
    from heimdall.wg.backend import WireGuardBackend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kernel", "userspace")


def make_backend(ifname: str, choice: str = "auto") -> WireGuardBackend:
    """The backend for ``ifname``: an existing interface decides, else the kernel if it can."""
    from heimdall.wg import links
    from heimdall.wg.kernel import KernelBackend
    from heimdall.wg.userspace import UserspaceBackend

    if choice not in BACKENDS:
        raise ValueError(f"unknown WireGuard backend {choice!r} (choose from {', '.join(BACKENDS)})")
    if choice == "auto":
        kind = links.link_kind(ifname)
        if kind == "wireguard":
            choice = "kernel"
        elif kind is not None:
            choice = "userspace"
        else:
            choice = "kernel" if KernelBackend.available() else "userspace"
        log.debug("%s: using the %s WireGuard backend", ifname, choice)
    return KernelBackend(ifname) if choice == "kernel" else UserspaceBackend(ifname)
