"""Rendezvous (highest-random-weight) assignment of producer keys to the members of a group.

Pure and deterministic: every process that knows the same keys and the same members
computes the same assignment, on any host, in any run (the hashes are ``blake2b``, never
Python's salted ``hash()``).

* :func:`weight` of a (key, member) pair is a 64-bit mix of the two names' hashes; the
  plain HRW owner of a key is the member with the highest weight (:func:`preferred`).
* :func:`assign` balances the load within a band around the mean share: every member
  holds between :func:`floor_share` and :func:`capacity` keys (by default 5 % either side,
  rounded inwards: a mean of 10 keys each is exact).
  First each key asks its members in the order of its weights, and a member full of keys
  keeps the ones that weigh most for it (the key-proposing stable matching of Gale and
  Shapley, which has one answer whatever the order of the work); then each member left
  below the floor, in name order, takes the keys that weigh most for it from members
  above the floor. Without the band, plain HRW leaves the busiest of 100 members about
  8 % above the mean at 1,000 keys each, and one of 3 members with 300 keys routinely
  10 % below it; with it a member that joins or leaves still moves about ``1/N`` of the
  keys (``bench/fleet_sim.py`` measures both: 1.03/N at 100 members x 100,000 keys). An
  exact band (``balance=1.0``: ``floor`` or ``ceil`` of the mean) moves more, about 1.3/N
  per change with a hundred members.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping

__all__ = ["assign", "capacity", "counts", "floor_share", "moved", "name_hash", "preferred",
           "ranking", "weight"]

_MASK = (1 << 64) - 1
_PERSON = b"aioconveyor.hrw"


def name_hash(name: str) -> int:
    """The 64-bit hash of a key's or member's name (``blake2b``, 8 bytes, big-endian)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8,
                                          person=_PERSON).digest(), "big")


def mix(value: int) -> int:
    """The 64-bit finaliser of MurmurHash3 (``fmix64``): every input bit moves every output
    bit, so the weights of one key over different members are independent."""
    value &= _MASK
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK
    value ^= value >> 33
    return value


def weight_of(key_hash: int, member_hash: int) -> int:
    """:func:`weight` from the two :func:`name_hash` values."""
    return mix(key_hash ^ mix(member_hash))


def weight(key: str, member: str) -> int:
    """The rendezvous weight of ``key`` on ``member``: a 64-bit integer."""
    return weight_of(name_hash(key), name_hash(member))


def ranking(key: str, members: Iterable[str]) -> list[str]:
    """``members`` in the order ``key`` prefers them (highest weight first; ties, which need
    a 64-bit collision, by name)."""
    hk = name_hash(key)
    return sorted(members, key=lambda m: (-weight_of(hk, name_hash(m)), m))


def preferred(key: str, members: Iterable[str]) -> str | None:
    """The plain HRW owner of ``key``: its highest-weight member (None without members)."""
    ranked = ranking(key, members)
    return ranked[0] if ranked else None


BALANCE = 1.05
"""The default band: every member's share within 5 % of the mean."""


def capacity(keys: int, members: int, balance: float = BALANCE) -> int:
    """The most keys one member takes: ``floor(balance * keys / members)``, at least the
    mean rounded up (``balance=1.0``: every member holds ``floor`` or ``ceil`` of it).
    Rounded down, so the largest share is never more than ``balance`` times the mean where
    whole keys allow it: 10 keys each stay exactly 10, not 11."""
    mean = keys / members
    return max(math.ceil(mean), math.floor(balance * mean + 1e-9))


def floor_share(keys: int, members: int, balance: float = BALANCE) -> int:
    """The fewest keys one member holds: ``ceil((2 - balance) * keys / members)``, at most
    the mean rounded down (the band is symmetric around the mean, rounded inwards)."""
    mean = keys / members
    return max(0, min(math.floor(mean), math.ceil((2.0 - balance) * mean - 1e-9)))


def assign(keys: Iterable[str], members: Iterable[str], *,
           balance: float = BALANCE) -> dict[str, str]:
    """Each key's member, every member holding between :func:`floor_share` and
    :func:`capacity` keys.

    ``balance`` is the largest share allowed over the mean, and as far below it the
    smallest: ``1.05`` (the default) keeps every share within 5 % of the mean and moves
    about the ideal 1/N of the keys per join or leave; ``1.0`` (exact shares) moves about
    1.05/N with a few members, 1.3/N with a hundred. Empty when there are no members.
    Duplicate keys or members count once.
    """
    member_list = sorted(set(members))
    key_list = sorted(set(keys))
    if not member_list or not key_list:
        return {}
    cap = capacity(len(key_list), len(member_list), balance)
    member_hashes = [mix(name_hash(m)) for m in member_list]
    held: list[list[tuple[int, str]]] = [[] for _ in member_list]  # min-heaps of (weight, key)
    choices: dict[str, list[tuple[int, int]]] = {}
    free: list[str] = []
    key_hashes = {key: name_hash(key) for key in key_list}
    for key, hk in key_hashes.items():
        ranked = sorted(((-mix(hk ^ mh), i) for i, mh in enumerate(member_hashes)),
                        reverse=True)  # popped from the end: the best choice last
        choices[key] = ranked
        free.append(key)
    while free:
        key = free.pop()
        neg, i = choices[key].pop()
        entry = (-neg, key)
        heap = held[i]
        if len(heap) < cap:
            heapq.heappush(heap, entry)
        else:  # full: it keeps the keys that weigh most for it
            out = heapq.heappushpop(heap, entry)
            free.append(out[1])
    owner = {key: i for i, heap in enumerate(held) for _, key in heap}
    _fill_to_floor(owner, key_hashes, member_hashes, [len(heap) for heap in held],
                   floor_share(len(key_list), len(member_list), balance))
    return {key: member_list[i] for key, i in owner.items()}


def _fill_to_floor(owner: dict[str, int], key_hashes: dict[str, int],
                   member_hashes: list[int], sizes: list[int], floor: int) -> None:
    """Raise every member below ``floor`` to it, in member order: each takes the keys that
    weigh most for it (ties by key) from members holding more than ``floor``."""
    for d, mh in enumerate(member_hashes):
        need = floor - sizes[d]
        if need <= 0:
            continue
        ranked = sorted((-mix(hk ^ mh), key) for key, hk in key_hashes.items())
        for _, key in ranked:
            o = owner[key]
            if o == d or sizes[o] <= floor:
                continue
            owner[key] = d
            sizes[o] -= 1
            sizes[d] += 1
            need -= 1
            if not need:
                break


def counts(assignment: Mapping[str, str], members: Iterable[str] = ()) -> dict[str, int]:
    """How many keys each member holds (members listed in ``members`` count from 0)."""
    result = dict.fromkeys(members, 0)
    for member in assignment.values():
        result[member] = result.get(member, 0) + 1
    return result


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """How many keys present in both assignments changed member."""
    return sum(1 for key, member in after.items()
               if key in before and before[key] != member)
