"""Group assignment, simulated (issue 17): 100 members x 100,000 producers, no network.

The rule of ``aioconveyor._rendezvous`` (rendezvous weights, at most ``balance`` times the
mean per member, key-proposing stable matching, then members below ``2 - balance`` times
the mean filled up), computed here with numpy (vectorised: a
weight matrix and one sort per round of proposals; numpy is used only in ``bench/``), and
checked to give exactly what the library's pure-Python :func:`assign` gives on a smaller
fleet. Peer: plain rendezvous hashing (each producer on its highest-weight member), the
rule without the bound, measured on the same keys and members.

Columns: *balance* = largest share / mean share; *moved (join)* = producers that change
member when a 101st joins, over the ideal ``K / (N + 1)``; *moved (leave)* = when one of
the 100 leaves, over the ideal ``K / N``; *time* = computing the whole fleet's assignment
(hashing the names included): CPU seconds of this process, the median of the repeats (on
a shared machine wall time measures the neighbours).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from aioconveyor import _rendezvous

from ._util import Row, Section, Target

MEMBERS = 100
KEYS = 100_000

_M1, _M2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise ImportError('bench.fleet_sim needs numpy: pip install -e ".[dev]"') from exc
    return numpy


def _mix_into(np: Any, v: Any, tmp: Any) -> None:
    """``_rendezvous.mix`` on every element of ``v``, in place (``tmp``: scratch, same shape)."""
    s = np.uint64(33)
    for m in (np.uint64(_M1), np.uint64(_M2), None):
        np.right_shift(v, s, out=tmp)
        np.bitwise_xor(v, tmp, out=v)
        if m is not None:
            np.multiply(v, m, out=v)


def weights(np: Any, keys: list[str], members: list[str]) -> Any:
    """The K x N matrix of ``_rendezvous.weight`` (rows: keys, columns: members), made in
    blocks of rows that stay in the CPU cache."""
    name_hash = _rendezvous.name_hash
    hk = np.fromiter((name_hash(k) for k in keys), dtype=np.uint64, count=len(keys))
    hm = np.array([_rendezvous.mix(name_hash(m)) for m in members], dtype=np.uint64)
    w = np.empty((len(keys), len(members)), dtype=np.uint64)
    block = max(1, 4096 // max(1, len(members)) * 16)
    tmp = np.empty((block, len(members)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(keys), block):
            rows = w[start:start + block]
            np.bitwise_xor(hk[start:start + block, None], hm[None, :], out=rows)
            _mix_into(np, rows, tmp[: rows.shape[0]])
    return w


def assign(keys: list[str], members: list[str], balance: float | None) -> dict[str, str]:
    """``_rendezvous.assign`` vectorised (``balance=None``: plain HRW, no bound)."""
    np = _numpy()
    keys, members = sorted(set(keys)), sorted(set(members))
    w = weights(np, keys, members)
    if balance is None:
        best = np.argmax(w, axis=1)
        return {k: members[i] for k, i in zip(keys, best.tolist(), strict=True)}
    cap = _rendezvous.capacity(len(keys), len(members), balance)
    w_all = w.copy()  # the proposals below zero out refused weights
    owner = np.full(len(keys), -1, dtype=np.int64)
    owner_w = np.zeros(len(keys), dtype=np.uint64)
    free = np.arange(len(keys))
    while free.size:
        target = np.argmax(w[free], axis=1)  # each free key's best member not yet refused
        offered = w[free, target]
        involved = np.zeros(len(members), dtype=bool)
        involved[target] = True
        held = np.nonzero((owner >= 0) & involved[np.maximum(owner, 0)])[0]
        cand_k = np.concatenate([held, free])
        cand_m = np.concatenate([owner[held], target])
        cand_w = np.concatenate([owner_w[held], offered])
        order = np.lexsort((~cand_w, cand_m))  # by member, then weight (highest first)
        by_m = cand_m[order]
        rank = np.arange(by_m.size) - np.searchsorted(by_m, by_m, side="left")
        keep = rank < cap
        ks = cand_k[order]
        owner[ks[keep]] = by_m[keep]
        owner_w[ks[keep]] = cand_w[order][keep]
        refused = ks[~keep]
        w[refused, by_m[~keep]] = 0  # never asked again
        owner[refused] = -1
        free = refused
    # then members below the floor take the keys weighing most for them (ties: key order)
    floor = _rendezvous.floor_share(len(keys), len(members), balance)
    sizes = np.bincount(owner, minlength=len(members))
    for d in np.nonzero(sizes < floor)[0].tolist():
        need = floor - int(sizes[d])
        for k in np.argsort(~w_all[:, d], kind="stable").tolist():
            o = int(owner[k])
            if o == d or sizes[o] <= floor:
                continue
            owner[k] = d
            sizes[o] -= 1
            sizes[d] += 1
            need -= 1
            if not need:
                break
    return {k: members[i] for k, i in zip(keys, owner.tolist(), strict=True)}


def _timed(fn: Any, repeats: int) -> tuple[Any, float]:
    """``fn()`` and the median CPU seconds it took (process time: a busy shared machine
    stretches wall time, not the work)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.process_time()
        result = fn()
        times.append(time.process_time() - started)
    return result, statistics.median(times)


def measure(keys: list[str], members: list[str], balance: float | None,
            repeats: int) -> Row:
    base, seconds = _timed(lambda: assign(keys, members, balance), repeats)
    joined = assign(keys, [*members, "instance-new"], balance)
    left = assign(keys, members[1:], balance)
    counts = _rendezvous.counts(base, members)
    mean = len(keys) / len(members)
    n = len(members)
    return {
        "rule": "plain HRW (peer)" if balance is None else f"band, balance={balance:g}",
        "balance": max(counts.values()) / mean,
        "min_share": min(counts.values()) / mean,
        "join": _rendezvous.moved(base, joined) / (len(keys) / (n + 1)),
        "leave": _rendezvous.moved(base, left) / (len(keys) / n),
        "seconds": seconds,
    }


def run(quick: bool) -> Section:
    members = [f"instance-{i:03d}" for i in range(MEMBERS)]
    keys = [f"producer-{i:06d}" for i in range(KEYS)]
    repeats = 2 if quick else 5
    rows = [measure(keys, members, balance, repeats) for balance in (None, 1.05, 1.0)]
    # the library's own pure-Python assign() gives the same answer (on a smaller fleet)
    small_members, small_keys = members[:20], keys[: 2_000 if quick else 20_000]
    ours, pure_seconds = _timed(
        lambda: _rendezvous.assign(small_keys, small_members, balance=1.05), 1)
    same = ours == assign(small_keys, small_members, 1.05)
    section = Section(
        "fleet_sim", f"Group assignment: {MEMBERS} members x {KEYS:,} producers (simulated)",
        [("rule", "rule"), ("balance", "max/mean"), ("min_share", "min/mean"),
         ("join", "moved per join / ideal"), ("leave", "moved per leave / ideal"),
         ("seconds", "time (s)")], rows=rows)
    section.notes += [
        "balance: largest share over the mean share; moved: producers that change member "
        "when one member joins (ideal K/(N+1)) or leaves (ideal K/N), over the ideal",
        f"time: CPU seconds for the whole assignment with numpy (names hashed included), median of "
        f"{repeats}; the library's pure-Python assign() took {pure_seconds:.2f} s for "
        f"{len(small_members)} x {len(small_keys):,} and gave "
        f"{'the same' if same else 'a DIFFERENT'} assignment",
        "balance=1.05 (the default of PostgresGroup and NatsGroup: every share within 5 % of "
        "the mean) meets both goals; balance=1.0 gives exact shares but moves more per change "
        "in a fleet this large",
    ]
    chosen = rows[1]
    section.targets += [
        Target("fleet: balance (balance=1.05)", "<= 1.05", chosen["balance"], 1.05),
        Target("fleet: smallest share / mean", ">= 0.95", chosen["min_share"], 0.95,
               higher_is_better=True),
        Target("fleet: moved per join / ideal", "<= 1.10", chosen["join"], 1.10),
        Target("fleet: moved per leave / ideal", "<= 1.10", chosen["leave"], 1.10),
        Target("fleet: assignment time", "<= 1 s", chosen["seconds"], 1.0, unit="s"),
        Target("fleet: numpy == library", "= 1", 1.0 if same else 0.0, 1.0,
               higher_is_better=True),
    ]
    return section
