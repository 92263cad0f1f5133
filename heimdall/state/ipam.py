"""Address pools: which candidates an allocation may take.

The allocation itself runs inside Redis (write.lua) so that it is atomic: two
concurrent joins can never get the same subnet, two peers never the same
address. Here is the pure part: turning a pool into the candidate sequence the
script walks (first free wins, so allocations are dense and deterministic).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    """Blocks of ``/block_prefix`` inside ``network``; /32 blocks are single addresses."""

    network: ipaddress.IPv4Network
    block_prefix: int = 32

    def __post_init__(self) -> None:
        if not self.network.prefixlen <= self.block_prefix <= 32:
            raise ValueError(f"blocks of /{self.block_prefix} do not fit in {self.network}")

    @property
    def step(self) -> int:
        return 2 ** (32 - self.block_prefix)

    @property
    def is_hosts(self) -> bool:
        return self.block_prefix == 32

    @property
    def first(self) -> int:
        """Host pools skip the network address."""
        return int(self.network.network_address) + (1 if self.is_hosts and self.network.prefixlen < 31 else 0)

    @property
    def count(self) -> int:
        blocks = self.network.num_addresses // self.step
        if self.is_hosts and self.network.prefixlen < 31:
            blocks -= 2  # network and broadcast addresses
        return blocks

    def candidate(self, index: int) -> str:
        """The ``index``-th candidate, as the script writes it."""
        address = ipaddress.IPv4Address(self.first + index * self.step)
        return str(address) if self.is_hosts else f"{address}/{self.block_prefix}"

    def script_spec(self, ipam_hash: str, owner: str, owner_key: str, owner_field: str) -> dict:
        """The ``alloc`` part of a write.lua request."""
        spec = {"hash": ipam_hash, "owner": owner, "owner_key": owner_key, "owner_field": owner_field,
                "base": self.first, "count": self.count, "step": self.step}
        if not self.is_hosts:
            spec["prefix"] = self.block_prefix
        return spec
