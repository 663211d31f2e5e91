"""Rollout waves for upgrade.yml: a few gateways of every district at a time, districts in parallel.

Ansible's `serial` batches follow host order alone, so a plain `serial: 3` would upgrade one
district after another and could take down three gateways of the same district at once. Here the
play's host list is ordered wave by wave and `serial` is given each wave's size, which keeps every
batch within `batch` gateways per district while all districts advance together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class RolloutError(ValueError):
    """The rollout settings cannot produce a plan (bad batch size, unknown district)."""


def district_groups(groups: Mapping[str, Sequence[str]], prefix: str) -> dict[str, list[str]]:
    """District name -> its hosts, in inventory order, for every group named `<prefix><district>`."""
    return {name[len(prefix) :]: list(hosts) for name, hosts in groups.items() if name.startswith(prefix)}


def rollout_waves(
    groups: Mapping[str, Sequence[str]],
    batch: int | str = 2,
    prefix: str = "district_",
    districts: Iterable[str] | None = None,
    fleet_group: str = "gateways",
) -> list[list[str]]:
    """Split the districts' hosts into waves holding at most `batch` hosts of each district.

    A host listed in two district groups is upgraded once, in the first wave that reaches it.
    `districts` restricts the plan to the named districts (without the prefix); a host of
    `fleet_group` that is in no district group is a district of its own.
    """
    try:
        size = int(batch)
    except (TypeError, ValueError):
        raise RolloutError(f"rollout batch must be a whole number, got {batch!r}") from None
    if size < 1:
        raise RolloutError(f"rollout batch must be at least 1, got {size}")
    by_district = district_groups(groups, prefix)
    grouped = {host for hosts in by_district.values() for host in hosts}
    # A gateway missing from every district group still gets upgraded, as a district of its own.
    for host in groups.get(fleet_group, ()):
        if host not in grouped:
            by_district[f"(no district) {host}"] = [host]
    if districts is not None:
        wanted = [districts] if isinstance(districts, str) else list(districts)
        unknown = sorted(set(wanted) - set(by_district))
        if unknown:
            known = ", ".join(sorted(by_district)) or "none"
            raise RolloutError(f"unknown district(s) {', '.join(unknown)}; inventory has {known}")
        by_district = {name: by_district[name] for name in wanted}
    waves: list[list[str]] = []
    seen: set[str] = set()
    longest = max((len(hosts) for hosts in by_district.values()), default=0)
    for start in range(0, longest, size):
        wave: list[str] = []
        for hosts in by_district.values():
            for host in hosts[start : start + size]:
                if host not in seen:
                    seen.add(host)
                    wave.append(host)
        if wave:
            waves.append(wave)
    return waves


def batch_overflow(
    batch_hosts: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    batch: int | str,
    prefix: str = "district_",
) -> dict[str, int]:
    """Districts with more than `batch` hosts in this play batch (a --limit can cause that)."""
    counts: dict[str, int] = {}
    for district, hosts in district_groups(groups, prefix).items():
        n = len(set(hosts) & set(batch_hosts))
        if n > int(batch):
            counts[district] = n
    return counts


class FilterModule:
    """Ansible's entry point for the filters above."""

    def filters(self) -> dict[str, Any]:
        return {"edge_agent_rollout_waves": rollout_waves, "edge_agent_batch_overflow": batch_overflow}
