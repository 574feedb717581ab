"""Leader election over etcd: a lease and a create-if-absent transaction on one key.

The winner keeps its lease alive; it considers itself deposed the moment a renewal is
refused, the key no longer names it, or it has gone a full TTL without a successful
renewal (etcd may have expired the lease while unreachable). Writes the leader makes
are also fenced with a compare on the key, so a deposed leader cannot write.

A lease it could not revoke on stepping down (etcd was down) is revoked first thing on
its next campaign: a restarted etcd restores leases with a fresh TTL, so without that
the old key would keep every replica from leading for a whole TTL after etcd is back.
"""

from __future__ import annotations

import asyncio
import logging

from lorafleet.controlplane.store import (
    RETRYABLE,
    EtcdStore,
    RetryPolicy,
    StoreUnavailable,
    within,
)
from lorafleet.controlplane.transactions import Absent, HoldsValue, Put

# resign() waits this long for etcd; campaign() revokes what it could not.
RESIGN_RETRY = RetryPolicy(give_up_seconds=2.0)

log = logging.getLogger(__name__)


class LeaderElection:
    """Campaigns for `keys.leader()` as `candidate_id` and holds it."""

    def __init__(self, store: EtcdStore, candidate_id: str, ttl_seconds: int):
        if ttl_seconds < 2:
            raise ValueError(f"election ttl_seconds must be >= 2, got {ttl_seconds}")
        self.store = store
        self.candidate_id = candidate_id
        self.ttl_seconds = ttl_seconds
        self.key = store.keys.leader()
        self._unrevoked: set[int] = set()  # leases given up while etcd did not answer

    def fence(self) -> HoldsValue:
        """A transaction condition that holds only while this candidate leads."""
        return HoldsValue(self.key, self.candidate_id.encode())

    async def campaign(self) -> int:
        """Blocks until this candidate leads; returns the lease that holds the key."""
        await self._revoke_unrevoked()
        while True:
            lease_id = await self.store.grant_lease(self.ttl_seconds)
            won = await self.store.commit(
                [Absent(self.key)], [Put(self.key, self.candidate_id.encode(), lease=lease_id)]
            )
            if won:
                log.info("%s is the leader", self.candidate_id)
                return lease_id
            await self.resign(lease_id)
            await asyncio.sleep(self.ttl_seconds / 4)

    async def hold(self, lease_id: int) -> None:
        """Keeps the lease alive; returns as soon as leadership may have been lost."""
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        while True:
            await asyncio.sleep(self.ttl_seconds / 4)
            remaining = last_renewed + self.ttl_seconds - loop.time()
            if remaining <= 0:
                log.warning("%s could not renew its lease in time", self.candidate_id)
                return
            try:
                is_held = await within(self._renew(lease_id), remaining)
            except (asyncio.TimeoutError, StoreUnavailable, *RETRYABLE):
                continue  # etcd unreachable: keep trying until the TTL runs out
            if not is_held:
                log.warning("%s lost the leader lease", self.candidate_id)
                return
            last_renewed = loop.time()

    async def _renew(self, lease_id: int) -> bool:
        if not await self.store.try_refresh_lease(lease_id):
            return False
        found = await self.store.get(self.key)
        return found is not None and found.value == self.candidate_id.encode()

    async def resign(self, lease_id: int) -> None:
        """Gives the lease up (and with it the key, if held). When etcd does not answer
        within 2 s, the next campaign() revokes it first."""
        try:
            await self.store.with_retry(RESIGN_RETRY).revoke_lease(lease_id)
        except Exception as error:  # noqa: BLE001 (etcd down, or the lease already gone)
            log.info("%s could not revoke lease %x now (%r); will retry",
                     self.candidate_id, lease_id, error)
            self._unrevoked.add(lease_id)

    async def _revoke_unrevoked(self) -> None:
        """Revokes the leases resign() could not, retrying while etcd is unreachable
        (StoreUnavailable after the store's give-up; the campaign is retried)."""
        for lease_id in sorted(self._unrevoked):
            try:
                await self.store.revoke_lease(lease_id)
            except StoreUnavailable:
                raise
            except Exception as error:  # noqa: BLE001 (expired meanwhile: nothing to revoke)
                log.info("lease %x is gone already (%r)", lease_id, error)
            self._unrevoked.discard(lease_id)
