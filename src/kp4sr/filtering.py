"""k-core filtering: the preprocessing the paper (and most sequential recommenders) apply.

Dropping users with few interactions can leave items below the item threshold and the other
way round, so the filter repeats until nothing changes. The result is the unique largest
sub-dataset in which every user has at least ``min_user`` and every item at least ``min_item``
interactions (counted as events: a repeated (user, item) counts each time), whatever the order
of removal; only the reported number of rounds depends on it.
"""

from __future__ import annotations

import logging

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import ConfigError

log = logging.getLogger(__name__)


def _prune_kg(kg: KnowledgeGraph, dropped_keys: set[str]) -> KnowledgeGraph:
    """Remove triples touching ``dropped_keys``; entities and relations left without a triple
    go too (a genre only dropped films had is no longer knowledge about the dataset)."""
    if not dropped_keys or kg.num_triples == 0:
        return kg
    gone = np.fromiter((e in dropped_keys for e in kg.entities), dtype=bool, count=len(kg.entities))
    keep = ~(gone[kg.heads] | gone[kg.tails])
    heads, rels, tails = kg.heads[keep], kg.rels[keep], kg.tails[keep]
    used = np.zeros(len(kg.entities), dtype=bool)
    used[heads] = True
    used[tails] = True
    ent_map = np.cumsum(used) - 1
    used_rel = np.zeros(len(kg.relations), dtype=bool)
    used_rel[rels] = True
    rel_map = np.cumsum(used_rel) - 1
    ents = np.flatnonzero(used).tolist()
    return KnowledgeGraph(
        entities=[kg.entities[e] for e in ents],
        names=[kg.names[e] for e in ents],
        relations=[kg.relations[r] for r in np.flatnonzero(used_rel).tolist()],
        heads=ent_map[heads].astype(np.int64),
        rels=rel_map[rels].astype(np.int64),
        tails=ent_map[tails].astype(np.int64),
    )


def k_core(
    dataset: Dataset, min_user: int = 5, min_item: int = 5
) -> tuple[Dataset, dict[str, int]]:
    """Keep the users with at least ``min_user`` and items with at least ``min_item``
    interactions, repeating until stable.

    Users and items keep their relative order and are re-indexed; sequences keep their time
    order; titles follow their items; KG triples touching a dropped item are removed. A
    threshold of 0 drops nothing on that side (``k_core(ds, 0, 0)`` is a no-op). Returns the
    new dataset and ``{"users_before", "users_after", "items_before", "items_after",
    "interactions_before", "interactions_after", "rounds"}``, where ``rounds`` counts the
    passes that removed something.
    """
    for label, value in (("min_user", min_user), ("min_item", min_item)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{label} must be a non-negative integer, got {value!r}")
    n_users, n_items = len(dataset.users), len(dataset.items)
    lengths = np.fromiter((len(s) for s in dataset.sequences), dtype=np.int64, count=n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    items = (
        np.concatenate([np.asarray(s, dtype=np.int64) for s in dataset.sequences])
        if n_users
        else np.zeros(0, dtype=np.int64)
    )
    alive = np.ones(len(items), dtype=bool)
    user_ok = np.ones(n_users, dtype=bool)
    item_ok = np.ones(n_items, dtype=bool)
    rounds = 0
    while True:
        u_count = np.bincount(users[alive], minlength=n_users)
        i_count = np.bincount(items[alive], minlength=n_items)
        new_user_ok = user_ok & (u_count >= min_user)
        new_item_ok = item_ok & (i_count >= min_item)
        if np.array_equal(new_user_ok, user_ok) and np.array_equal(new_item_ok, item_ok):
            break
        user_ok, item_ok = new_user_ok, new_item_ok
        alive &= user_ok[users] & item_ok[items]
        rounds += 1

    item_map = np.cumsum(item_ok) - 1
    kept_users = np.flatnonzero(user_ok)
    new_items = item_map[items[alive]]
    counts = np.bincount(users[alive], minlength=n_users)[kept_users]
    sequences = np.split(new_items, np.cumsum(counts)[:-1]) if len(kept_users) else []
    kept_items = np.flatnonzero(item_ok).tolist()
    dropped = {item_key(dataset.items[i]) for i in np.flatnonzero(~item_ok).tolist()}
    result = Dataset(
        name=dataset.name,
        domain=dataset.domain,
        users=[dataset.users[u] for u in kept_users.tolist()],
        items=[dataset.items[i] for i in kept_items],
        titles=[dataset.titles[i] for i in kept_items],
        sequences=[s.astype(np.int64) for s in sequences],
        kg=_prune_kg(dataset.kg, dropped),
        skipped=dict(dataset.skipped),
    )
    report = {
        "users_before": n_users,
        "users_after": len(result.users),
        "items_before": n_items,
        "items_after": len(result.items),
        "interactions_before": int(len(items)),
        "interactions_after": int(alive.sum()),
        "rounds": rounds,
    }
    log.info(
        "%s: %d-core users, %d-core items in %d rounds: %d/%d users, %d/%d items, "
        "%d/%d interactions kept",
        dataset.name,
        min_user,
        min_item,
        rounds,
        report["users_after"],
        n_users,
        report["items_after"],
        n_items,
        report["interactions_after"],
        report["interactions_before"],
    )
    return result, report
