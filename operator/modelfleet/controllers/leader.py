"""Leader election on a coordination.k8s.io Lease: one operator acts, standbys wait.

The holder renews every `renew_s`; a standby takes over once the lease has
not been renewed for `duration_s`. Times come from the lease itself, so a
killed leader is replaced within about `duration_s` seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from modelfleet.controllers import kube

log = logging.getLogger("modelfleet.leader")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_expired(
    holder: str | None, renewed: dt.datetime | None, duration_s: int, now: dt.datetime
) -> bool:
    if not holder or renewed is None:
        return True
    return (now - renewed).total_seconds() > duration_s


@dataclass
class LeaderElector:
    namespace: str
    name: str
    identity: str
    duration_s: int = 10
    renew_s: float = 2.0

    def _api(self) -> k8s.CoordinationV1Api:
        return k8s.CoordinationV1Api(kube.api_client())

    def _body(self, now: dt.datetime, transitions: int, acquired: dt.datetime) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration_s,
                "acquireTime": _micro(acquired),
                "renewTime": _micro(now),
                "leaseTransitions": transitions,
            },
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the lease afterwards. Optimistic concurrency
        (resourceVersion) guarantees two contenders never both win."""
        api = self._api()
        now = _now()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                api.create_namespaced_lease(self.namespace, self._body(now, 0, now))
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        spec = lease.spec
        holder = spec.holder_identity
        if holder != self.identity and not lease_expired(
            holder, spec.renew_time, spec.lease_duration_seconds or self.duration_s, now
        ):
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity and spec.acquire_time else now
        body = self._body(now, transitions, acquired)
        body["metadata"]["resourceVersion"] = lease.metadata.resource_version
        try:
            api.replace_namespaced_lease(self.name, self.namespace, body)
            return True
        except ApiException as exc:
            if exc.status == 409:  # someone else renewed or took it first
                return False
            raise

    async def acquire(self) -> None:
        announced = False
        while True:
            try:
                if await kube.run(self.try_acquire_or_renew):
                    log.info("acquired leadership as %s", self.identity)
                    return
            except ApiException as exc:
                log.warning("lease check failed: %s", exc.reason)
            if not announced:
                log.info(
                    "standing by: another operator holds lease %s/%s", self.namespace, self.name
                )
                announced = True
            await asyncio.sleep(self.renew_s)

    async def hold(self) -> None:
        """Renew until renewal fails for longer than the lease; then return (leadership lost)."""
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                ok = await kube.run(self.try_acquire_or_renew)
            except (
                Exception
            ) as exc:  # API server restarting: keep trying until the lease would lapse
                log.warning("lease renewal failed: %s", exc)
                ok = None
            now = asyncio.get_running_loop().time()
            if ok:
                last_ok = now
            elif ok is False or now - last_ok > self.duration_s:
                log.error("lost leadership of lease %s/%s", self.namespace, self.name)
                return
