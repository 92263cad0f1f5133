"""Netfilter rules a gateway node needs: forwarding for the tunnel, masquerade out of the uplink.

Done the way Neutron's agents do it: every rule lives in a chain named after us
(``HEIMDALL-FORWARD`` in filter, ``HEIMDALL-POSTROUTING`` in nat), each hooked into
its built-in chain by exactly one jump at the top, and every change to a table is one
``iptables-restore --noflush`` transaction. Nobody ever sees a table half-changed,
and no other program's rules are touched.

What the rules allow. They ACCEPT only: the host's policy and its other rules decide
everything else. The one DROP is for our own tunnel traffic: between two addresses
of an isolated network (the peer network unless peer-to-peer traffic is enabled).
- Anything that arrives from the tunnel (WireGuard has already checked the sender's key
  and source address).
- Into the tunnel: replies (conntrack ESTABLISHED/RELATED) and traffic from the tunnel
  networks themselves (services behind this node live in its subnet, which is in the
  node pool). Connections opened from the uplink are not let in: a host on the
  uplink's network must not get into the private network through us.
- MASQUERADE for traffic from the tunnel networks that leaves through the uplink.

Backend. The rules must show in the host's own ``iptables -S``, so we use the backend
``iptables -V`` names (nf_tables on Debian 12, legacy elsewhere) through its own
``iptables-{nft,legacy}-save/-restore``; one code path covers both. python-iptables is
not used: it drives only legacy (libiptc), and its ctypes calls break under systemd's
MemoryDenyWriteExecute.

Two tables cannot share a transaction (iptables-restore commits each table on its own
COMMIT). So a change writes filter first and nat second. If nat fails, filter is put back
as it was, and the error names the table, the chain and the step.

Cost: one iptables-save per table per reconcile, and a restore only when something
differs. None of this is on the per-event hot path, so it has no benchmark.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
BACKENDS = ("nft", "legacy")
# Wait this long for the xtables lock (legacy takes it; nft accepts -w and needs none).
LOCK_WAIT_SECONDS = 10
COMMAND_TIMEOUT_SECONDS = LOCK_WAIT_SECONDS + 20

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
_VERSION = re.compile(r"iptables v[0-9.]+(?: \((nf_tables|legacy)\))?\Z")
_ERROR_LINE = re.compile(r"line:? (\d+)")


class FirewallError(Exception):
    """An iptables step failed. ``step``, ``table`` and ``chain`` say where."""

    def __init__(self, step: str, detail: str, hook: Hook | None = None) -> None:
        where = f" {hook.table}/{hook.chain}" if hook else ""
        super().__init__(f"firewall {step}{where}: {detail}")
        self.step = step
        self.table = hook.table if hook else None
        self.chain = hook.chain if hook else None


@dataclass(frozen=True)
class Hook:
    """One of our chains and the built-in chain whose single jump leads to it."""

    table: str
    builtin: str
    chain: str


FORWARD = Hook("filter", "FORWARD", "HEIMDALL-FORWARD")
POSTROUTING = Hook("nat", "POSTROUTING", "HEIMDALL-POSTROUTING")
HOOKS = (FORWARD, POSTROUTING)  # the order tables are written in


@dataclass(frozen=True)
class FirewallSpec:
    """What one gateway node needs: its uplink, its tunnel networks, its WireGuard interface.

    ``tunnel_networks`` are IPv4 CIDRs (the node pool and the peer network). They are
    normalized, and duplicates are dropped with order kept. A network with host bits set
    is refused as a likely typo.
    """

    uplink: str
    tunnel_networks: tuple[str, ...]
    wg_interface: str = "darknet"
    isolated_networks: tuple[str, ...] = ()  # no forwarding between two of its addresses

    def __post_init__(self) -> None:
        for field, name in (("uplink", self.uplink), ("wg_interface", self.wg_interface)):
            if not _IFNAME.match(name):
                raise ValueError(f"{field}: invalid interface name {name!r} (1-15 of A-Z a-z 0-9 _ . -)")
        if self.uplink == self.wg_interface:
            raise ValueError(f"uplink and wg_interface are both {self.uplink!r}")
        networks = []
        for value in self.tunnel_networks:
            network = ipaddress.ip_network(value)
            if network.version != 4:
                raise ValueError(f"tunnel network {value!r} is not IPv4 (these rules are iptables, IPv4 only)")
            networks.append(str(network))
        object.__setattr__(self, "tunnel_networks", tuple(dict.fromkeys(networks)))
        object.__setattr__(self, "isolated_networks",
                           tuple(dict.fromkeys(str(ipaddress.IPv4Network(n)) for n in self.isolated_networks)))


def desired_rules(spec: FirewallSpec) -> dict[Hook, tuple[str, ...]]:
    """The rules of our chains for ``spec``, in order, without the ``-A CHAIN`` prefix.

    Each rule is written exactly as iptables-save prints it (for both backends). So
    comparing them with what the kernel holds is a plain string comparison.
    """
    wg, uplink = spec.wg_interface, spec.uplink
    forward = (
        *(f"-s {network} -d {network} -i {wg} -o {wg} -j DROP" for network in spec.isolated_networks),
        f"-i {wg} -j ACCEPT",
        f"-o {wg} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        *(f"-s {network} -o {wg} -j ACCEPT" for network in spec.tunnel_networks),
    )
    postrouting = tuple(f"-s {network} -o {uplink} -j MASQUERADE" for network in spec.tunnel_networks)
    return {FORWARD: forward, POSTROUTING: postrouting}


@dataclass(frozen=True)
class ChainState:
    """Our part of one table as the kernel holds it."""

    exists: bool = False
    rules: tuple[str, ...] = ()
    jumps: tuple[int, ...] = ()  # 1-based positions of our plain jump in the built-in chain


def parse_save(text: str, hook: Hook) -> ChainState:
    """Read our chain, its rules and the positions of our jump from iptables-save output."""
    exists, rules, jumps = False, [], []
    in_table, position = False, 0
    own_rule, builtin_rule = f"-A {hook.chain} ", f"-A {hook.builtin} "
    for line in text.splitlines():
        if line.startswith("*"):
            in_table = line[1:] == hook.table
        elif not in_table:
            continue
        elif line.startswith(f":{hook.chain} "):
            exists = True
        elif line.startswith(own_rule):
            rules.append(line[len(own_rule):])
        elif line.startswith(builtin_rule):
            position += 1
            if line == f"{builtin_rule}-j {hook.chain}":
                jumps.append(position)
    return ChainState(exists, tuple(rules), tuple(jumps))


def restore_input(hook: Hook, actual: ChainState, desired: tuple[str, ...] | None) -> str | None:
    """``iptables-restore --noflush`` input that turns ``actual`` into ``desired``.

    With ``desired=None`` our chain and every jump to it are removed. Returns None when
    there is nothing to do. The chain is rewritten only if its rules differ. The jump is
    redone only if it is not exactly once at the top, which repairs duplicates and lost
    positions after a crash, or another program's insert.
    """
    delete_jumps = [f"-D {hook.builtin} -j {hook.chain}"] * len(actual.jumps)
    if desired is None:
        lines = delete_jumps + ([f"-F {hook.chain}", f"-X {hook.chain}"] if actual.exists else [])
    else:
        lines = []
        if not actual.exists or actual.rules != desired:
            # With --noflush, declaring a chain creates it, or empties it if it exists.
            lines += [f":{hook.chain} - [0:0]", *(f"-A {hook.chain} {rule}" for rule in desired)]
        if actual.jumps != (1,):
            lines += [*delete_jumps, f"-I {hook.builtin} 1 -j {hook.chain}"]
    if not lines:
        return None
    return "\n".join([f"*{hook.table}", *lines, "COMMIT", ""])


def parse_backend(version: str) -> str:
    """Backend named in ``iptables -V`` output. Before 1.8 there was no marker, and only legacy."""
    match = _VERSION.match(version.strip())
    if not match:
        raise FirewallError("detect", f"cannot tell the iptables backend from {version.strip()!r}")
    return "nft" if match.group(1) == "nf_tables" else "legacy"


def explain_failure(stderr: str, batch: str | None) -> str:
    """iptables' complaint without its usage hints, plus the batch line it points at."""
    lines = [line.strip() for line in stderr.splitlines()]
    kept = [line for line in lines if line and not line.startswith(("Try `", "# Warning:"))]
    text = "; ".join(kept).replace(":; ", ": ") or "no message"
    match = _ERROR_LINE.search(text)
    if batch is not None and match:
        number = int(match.group(1))
        batch_lines = batch.splitlines()
        if 0 < number <= len(batch_lines):
            text += f" [line {number}: {batch_lines[number - 1]}]"
    return text


class Firewall:
    """Our chains on this host.

    ``backend`` is "nft", "legacy", or None to use the one ``iptables -V`` reports.
    ``netns`` runs every command as ``ip netns exec NETNS ...``; tests and the lab use
    it, while daemons run in their host's namespace and leave it None. Not thread-safe:
    one reconcile loop owns it.
    """

    def __init__(self, backend: str | None = None, *, netns: str | None = None) -> None:
        self._prefix = ("ip", "netns", "exec", netns) if netns else ()
        self.backend, self._save, self._restore = self._find_tools(backend)

    def apply(self, spec: FirewallSpec) -> bool:
        """Make our chains hold exactly ``spec``'s rules, each with one jump at the top.

        True if anything changed.
        """
        return self._converge("apply", desired_rules(spec))

    def remove(self) -> bool:
        """Delete our jumps and chains, leaving every other rule alone. True if anything changed."""
        return self._converge("remove", dict.fromkeys(HOOKS))

    def _converge(self, step: str, desired: dict[Hook, tuple[str, ...] | None]) -> bool:
        written: list[tuple[Hook, ChainState]] = []  # tables changed so far, with their state before
        for hook in HOOKS:
            before = self._read(hook)
            batch = restore_input(hook, before, desired[hook])
            if batch is None:
                continue
            try:
                self._write(step, hook, batch)
            except FirewallError as err:
                self._roll_back(written, err)
                raise
            written.append((hook, before))
        return bool(written)

    def _roll_back(self, written: list[tuple[Hook, ChainState]], cause: FirewallError) -> None:
        """Put the tables this step already changed back to their earlier rules: no step is half-applied."""
        for hook, before in reversed(written):
            try:
                batch = restore_input(hook, self._read(hook), before.rules if before.exists else None)
                if batch is not None:
                    self._write("rollback", hook, batch)
            except FirewallError as err:
                raise FirewallError("rollback", f"{err} (after: {cause})", hook) from cause

    def _read(self, hook: Hook) -> ChainState:
        return parse_save(self._run("read", hook, [self._save, "-t", hook.table]), hook)

    def _write(self, step: str, hook: Hook, batch: str) -> None:
        self._run(step, hook, [self._restore, "-w", str(LOCK_WAIT_SECONDS), "--noflush"], batch)

    def _run(self, step: str, hook: Hook | None, argv: list[str], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(
                [*self._prefix, *argv], input=stdin, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT_SECONDS, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FirewallError(step, f"{argv[0]}: {err}", hook) from err
        if proc.returncode != 0:
            raise FirewallError(
                step, f"{argv[0]} exited {proc.returncode}: {explain_failure(proc.stderr, stdin)}", hook)
        return proc.stdout

    def _find_tools(self, backend: str | None) -> tuple[str, str, str]:
        """(backend, save command, restore command).

        If we detected the backend ourselves and its own tools are missing, the plain
        ``iptables-save``/``-restore`` will do. They belong to the same alternative as
        the ``iptables`` we just asked, and on iptables < 1.8 they are the only ones.
        """
        fallback: tuple[str, str] | None = None
        if backend is None:
            if shutil.which("iptables") is None:
                raise FirewallError(
                    "detect", "`iptables` not found: install iptables, or pass backend='nft' or 'legacy'")
            backend = parse_backend(self._run("detect", None, ["iptables", "-V"]))
            fallback = ("iptables-save", "iptables-restore")
        elif backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        wanted = (f"iptables-{backend}-save", f"iptables-{backend}-restore")
        for save, restore in (wanted, fallback) if fallback else (wanted,):
            if shutil.which(save) and shutil.which(restore):
                return backend, save, restore
        missing = " and ".join(tool for tool in wanted if shutil.which(tool) is None)
        raise FirewallError(
            "detect", f"the {backend} backend needs {missing}, not found on PATH (package iptables)")


def enable_ip_forwarding() -> bool:
    """Turn on IPv4 forwarding in this process's network namespace. True if it was off.

    It is never turned off again: other software on the host may rely on it.
    """
    try:
        with open(IP_FORWARD, encoding="ascii") as current:
            if current.read().strip() == "1":
                return False
        with open(IP_FORWARD, "w", encoding="ascii") as setting:
            setting.write("1\n")
    except OSError as err:
        raise FirewallError(
            "forwarding", f"cannot set {IP_FORWARD}: {err} (systemd's ProtectKernelTunables= makes it read-only)"
        ) from err
    return True
