"""Kernel WireGuard: the link over rtnetlink, its keys and peers over generic netlink.

Every call opens a short-lived pyroute2 socket in the caller's network
namespace (as wgkex does), so a backend holds no file descriptors between
calls. Peers change one netlink message per peer, never by replacing the
whole peer list, so traffic to untouched peers keeps flowing while others
come and go.
"""
from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink import nla
from pyroute2.netlink.exceptions import NetlinkError

from heimdall.wg import links
from heimdall.wg.backend import WireGuardBackend
from heimdall.wg.model import (PeerPlan, WgDevice, WgPeer, WgPeerStatus, WireGuardError, allowed_ips_change,
                                 join_endpoint, split_endpoint)


def peer_request(peer: WgPeer, current: WgPeer | None = None) -> dict:
    """The pyroute2 peer dict that makes the interface's peer exactly ``peer``.

    ``current`` (the peer as the interface holds it) lets an update add only new
    allowed IPs instead of replacing them all (``allowed_ips_change``); keepalive 0
    turns it off. The endpoint is only sent when we want a specific one, so one
    the peer roamed to is kept (as ``plan_peers`` assumes).
    """
    allowed_ips, replace = allowed_ips_change(peer, current)
    request = {"public_key": peer.public_key, "persistent_keepalive": peer.persistent_keepalive}
    if replace:
        request["replace_allowed_ips"] = True
    if allowed_ips or replace:
        request["allowed_ips"] = list(allowed_ips)
    if peer.endpoint is not None:
        request["endpoint_addr"], request["endpoint_port"] = split_endpoint(peer.endpoint)
    return request


def parse_device(ifname: str, messages: Iterable) -> WgDevice:
    """One WgDevice from the messages of a WG_CMD_GET_DEVICE dump.

    The kernel splits a large device over several messages: device attributes
    come in the first, and a peer whose allowed IPs did not fit continues in the
    next message with only its key and the remaining allowed IPs.
    """
    public_key, listen_port = None, 0
    first: dict[str, nla] = {}  # public key -> the peer's first (complete) attribute set
    allowed: dict[str, list[str]] = {}
    for msg in messages:
        if (key := msg.get_attr("WGDEVICE_A_PUBLIC_KEY")) is not None:
            public_key = key.decode()
        if (port := msg.get_attr("WGDEVICE_A_LISTEN_PORT")) is not None:
            listen_port = port
        for attrs in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key = attrs.get_attr("WGPEER_A_PUBLIC_KEY").decode()
            first.setdefault(key, attrs)
            ips = attrs.get_attr("WGPEER_A_ALLOWEDIPS") or ()
            allowed.setdefault(key, []).extend(ip["addr"] for ip in ips if "addr" in ip)
    peers = {}
    for key, attrs in first.items():
        endpoint = attrs.get_attr("WGPEER_A_ENDPOINT")
        handshake = attrs.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
        peer = WgPeer(
            key,
            tuple(allowed[key]),
            join_endpoint(endpoint["addr"], endpoint["port"]) if endpoint else None,
            attrs.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
        )
        peers[key] = WgPeerStatus(
            peer,
            last_handshake=handshake["tv_sec"] + handshake["tv_nsec"] / 1e9 if handshake else 0.0,
            rx_bytes=attrs.get_attr("WGPEER_A_RX_BYTES") or 0,
            tx_bytes=attrs.get_attr("WGPEER_A_TX_BYTES") or 0,
        )
    return WgDevice(ifname, public_key, listen_port, peers)


class KernelBackend(WireGuardBackend):
    """A kernel WireGuard link (``ip link add ... type wireguard``)."""

    kind = "kernel"

    @staticmethod
    def available() -> bool:
        """True when this kernel can create WireGuard links.

        A loaded or built-in module shows in /sys/module. Otherwise the only
        reliable test is to create a throwaway link (and delete it at once):
        that loads an installed module, as creating any WireGuard link would,
        and fails where there is none (or without CAP_NET_ADMIN).
        """
        if os.path.isdir("/sys/module/wireguard"):
            return True
        probe = f"hdprobe{secrets.token_hex(4)}"  # 15 characters, unique
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=probe, kind="wireguard")
            except NetlinkError:
                return False
            ipr.link("del", index=ipr.link_lookup(ifname=probe)[0])
        return True

    def ensure_interface(self) -> int:
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.ifname, kind="wireguard")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # else adopt the existing one
                hint = " (this kernel has no WireGuard)" if exc.code == errno.EOPNOTSUPP else ""
                raise WireGuardError(f"{self.ifname}: cannot create the WireGuard interface: {exc}{hint}") from exc
        index = self._existing_index()
        if index is None:
            raise WireGuardError(f"{self.ifname}: vanished right after it was created")
        try:
            links.set_up(self.ifname)
        except NetlinkError as exc:
            raise WireGuardError(f"{self.ifname}: cannot bring the interface up: {exc}") from exc
        return index

    def configure(self, private_key: str, listen_port: int) -> None:
        self._wg_set([
            (f"set the private key and listen port {listen_port}",
             {"private_key": private_key, "listen_port": listen_port}),
        ])

    def device(self) -> WgDevice:
        try:
            with WireGuard() as wg:
                messages = wg.info(self.ifname)
        except NetlinkError as exc:
            raise WireGuardError(f"{self.ifname}: cannot read the WireGuard device: {exc}") from exc
        return parse_device(self.ifname, messages)

    def apply_peers(self, plan: PeerPlan) -> None:
        """Remove, update, then add peers, one message each.

        Every request is built before the first is sent, so a bad endpoint
        changes nothing. Removals go first so the allowed IPs they free are
        there for the peers that take them over.
        """
        changes = [(f"remove peer {key}", {"peer": {"public_key": key, "remove": True}}) for key in plan.remove]
        for verb, peers in (("update", plan.update), ("add", plan.add)):
            for peer in peers:
                try:
                    request = peer_request(peer, plan.previous.get(peer.public_key))
                    changes.append((f"{verb} peer {peer.public_key}", {"peer": request}))
                except ValueError as exc:
                    raise WireGuardError(f"{self.ifname}: cannot {verb} peer {peer.public_key}: {exc}") from None
        self._wg_set(changes)

    def delete_interface(self) -> None:
        index = self._existing_index()
        if index is None:
            return
        try:
            with IPRoute() as ipr:
                ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # else it went away meanwhile
                raise WireGuardError(f"{self.ifname}: cannot delete the interface: {exc}") from exc

    def _existing_index(self) -> int | None:
        """Our interface's ifindex, None if absent; a same-named link of another kind is an error."""
        index = self.ifindex()
        if index is None:
            return None
        kind = links.link_kind(self.ifname)
        if kind != "wireguard":
            what = f"a {kind!r} link" if kind else "a device without a link kind"
            raise WireGuardError(f"{self.ifname}: exists as {what}, not kernel WireGuard; not touching it")
        return index

    def _wg_set(self, changes: list[tuple[str, dict]]) -> None:
        """Send each (step, WireGuard.set arguments) in turn over one generic netlink socket."""
        if not changes:
            return
        step = "open the WireGuard netlink socket"
        try:
            with WireGuard() as wg:
                for step, arguments in changes:
                    wg.set(self.ifname, **arguments)
        except (NetlinkError, ValueError) as exc:
            raise WireGuardError(f"{self.ifname}: cannot {step}: {exc}") from exc
