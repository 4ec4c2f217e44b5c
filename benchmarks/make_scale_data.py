"""Write a synthetic dataset in kp4sr's generic folder format, at MovieLens-10M / Amazon Books
scale, for measuring how fast and lean loading and preprocessing are (``benchmarks/scale.py``).

    python benchmarks/make_scale_data.py /tmp/kp4sr-scale     # 10M interactions, 70k users,
                                                               # 10k items, 1M KG triples
    python benchmarks/make_scale_data.py /tmp/small --interactions 50000 --users 400 \\
        --items 300 --triples 20000

Files written into the folder: ``interactions.tsv`` (user, item, timestamp), ``items.tsv`` (item,
title), ``triples.tsv`` (head, relation, tail), ``entity_names.tsv`` (entity_id, name),
``templates.json`` (a sentence per relation, for ``--templates``) and ``manifest.json`` (the
options and the counts a loader must find).

The data is skewed like real logs, so that sorting, k-core and prompt caches do realistic work:
item popularity is Zipf-like (over a random permutation of the items, so popularity is unrelated
to the ID), users' sequence lengths are log-normal, timestamps are random within a per-user time
span (some users' times rounded to whole days, so ties occur), rows are grouped by user but not
in time order within a user. IDs look like Amazon's (14-character reviewer IDs, 10-digit ASINs,
``m.`` entity IDs). The KG has 10 book relations (author, genre, subject, character, each with
its inverse, publisher and nationality) whose tails are Zipf-popular too. Every item gets at
least ``--min-count`` interactions and every user at least as many, so the default 5-core keeps
everything and the counts in ``manifest.json`` are what ``kp4sr`` loads. Everything is drawn
from one seeded generator with vectorised numpy; lines are formatted as fixed-width byte
matrices, so 10M interactions take seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_OUT = "/tmp/kp4sr-scale"
HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
CHUNK = 1_000_000  # rows formatted at once: bounds the generator's memory

# relation, its inverse (None: none), head kind, tail kind, share of all triples (inverse incl.)
RELATIONS = (
    ("book.written_work.author", "book.author.works_written", "item", "author", 0.06),
    (
        "book.book.genre",
        "media_common.literary_genre.books_in_this_genre",
        "item",
        "genre",
        0.10,
    ),
    ("book.written_work.subjects", "book.book_subject.works", "item", "subject", 0.40),
    ("book.book.characters", "book.book_character.appears_in_book", "item", "character", 0.40),
    ("book.publishing_company.books_published", None, "publisher", "item", 0.03),
    ("people.person.nationality", None, "author", "country", 0.01),
)
TEMPLATES = {
    "book.written_work.author": "The author of [X] is [Y].",
    "book.author.works_written": "[X] wrote [Y].",
    "book.book.genre": "The genre of [X] is [Y].",
    "media_common.literary_genre.books_in_this_genre": "Books of the genre [X] include [Y].",
    "book.written_work.subjects": "The subject of [X] is [Y].",
    "book.book_subject.works": "Books on the subject [X] include [Y].",
    "book.book.characters": "The characters in [X] include [Y].",
    "book.book_character.appears_in_book": "[X] appears in [Y].",
    "book.publishing_company.books_published": "[X] published [Y].",
    "people.person.nationality": "The nationality of [X] is [Y].",
}
ENTITY_LETTER = {
    "author": "a",
    "genre": "g",
    "subject": "s",
    "character": "c",
    "publisher": "p",
    "country": "n",
}
SYLLABLES = (
    "ka lo ven mi ra sa ti bel mar do ri an el or is ta nu ve so li "
    "gar den hol mo re ba fin quo zel tra pi us wen dar cor lin ha ju ne"
).split()


@dataclass(frozen=True)
class Sizes:
    """What to generate (the issue's defaults: MovieLens-10M / Amazon Books scale)."""

    interactions: int = 10_000_000
    users: int = 70_000
    items: int = 10_000
    triples: int = 1_000_000
    zipf: float = 1.0  # item popularity exponent
    length_sigma: float = 1.0  # log-normal sigma of users' sequence lengths
    min_count: int = 5  # every user and every item has at least this many interactions
    seed: int = 0


# --------------------------------------------------------------------------- formatting


def fixed_digits(values: np.ndarray, width: int, base: int = 10) -> np.ndarray:
    """Non-negative integers as a ``[n, width]`` matrix of ASCII digits, zero-padded on the left
    (a fixed width lets whole blocks of lines be one byte matrix: no per-line Python)."""
    v = np.asarray(values, dtype=np.uint64).copy()
    out = np.empty((len(v), width), dtype=np.uint8)
    b = np.uint64(base)
    for j in range(width - 1, -1, -1):
        out[:, j] = HEX[(v % b).astype(np.int64)]
        v //= b
    if v.any():
        raise ValueError(f"a value does not fit in {width} base-{base} digits")
    return out


def const_column(text: bytes, n: int) -> np.ndarray:
    """The same bytes on every line, as an ``[n, len(text)]`` matrix."""
    return np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (n, len(text)))


def lines(columns: list[np.ndarray], sep: bytes = b"\t") -> bytes:
    """Join fixed-width column matrices with ``sep`` into newline-ended lines."""
    n = columns[0].shape[0]
    parts: list[np.ndarray] = []
    for k, col in enumerate(columns):
        if k:
            parts.append(const_column(sep, n))
        parts.append(col)
    parts.append(const_column(b"\n", n))
    return np.concatenate(parts, axis=1).tobytes()


def user_matrix(idx: np.ndarray) -> np.ndarray:
    """Amazon-like reviewer IDs: ``A`` + 13 hex digits, distinct (an odd multiplier modulo 2^52
    is a bijection)."""
    mask = (1 << 52) - 1
    mult = np.uint64((0x9E3779B97F4A7C15 & mask) | 1)
    code = ((idx.astype(np.uint64) + np.uint64(12345)) * mult) & np.uint64(mask)
    return np.concatenate([const_column(b"A", len(idx)), fixed_digits(code, 13, 16)], axis=1)


def item_matrix(idx: np.ndarray) -> np.ndarray:
    """ASIN-like item IDs: 10 decimal digits, distinct (multiplier coprime to 10^10)."""
    code = (idx.astype(np.uint64) * np.uint64(7_919_137) + np.uint64(104_729)) % np.uint64(10**10)
    return fixed_digits(code, 10)


def entity_matrix(kind: str, idx: np.ndarray) -> np.ndarray:
    """Freebase-like IDs of non-item entities: ``m.`` + a kind letter + 7 digits."""
    head = const_column(f"m.{ENTITY_LETTER[kind]}".encode(), len(idx))
    return np.concatenate([head, fixed_digits(idx, 7)], axis=1)


def rows_text(matrix: np.ndarray) -> list[str]:
    """A byte matrix's rows as strings (for the small files written line by line)."""
    width = matrix.shape[1]
    return [
        s.decode("ascii") for s in np.ascontiguousarray(matrix).view(f"S{width}").ravel().tolist()
    ]


def words(rng: np.random.Generator, n: int, lo: int = 2, hi: int = 3) -> list[str]:
    """``n`` made-up capitalised words of ``lo``..``hi`` syllables."""
    count = rng.integers(lo, hi + 1, size=n)
    picks = rng.integers(len(SYLLABLES), size=(n, hi))
    return ["".join(SYLLABLES[s] for s in row[:c]).capitalize() for row, c in zip(picks, count)]


# --------------------------------------------------------------------------- sampling


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like probabilities over a random permutation of ``n`` things."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return (w / w.sum())[rng.permutation(n)]


def draw(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with probabilities ``p`` (inverse CDF: fast for big ``size``)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)


def sequence_lengths(rng: np.random.Generator, s: Sizes) -> np.ndarray:
    """Log-normal lengths, each at least ``min_count``, summing exactly to ``interactions``."""
    spare = s.interactions - s.min_count * s.users
    w = rng.lognormal(0.0, s.length_sigma, size=s.users)
    lengths = s.min_count + np.floor(spare * w / w.sum()).astype(np.int64)
    rest = s.interactions - int(lengths.sum())
    lengths[rng.choice(s.users, size=rest, replace=False)] += 1
    return lengths


def unique_pairs(
    rng: np.random.Generator, head_p: np.ndarray, tail_p: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``k`` distinct (head, tail) pairs, heads and tails drawn by their weights."""
    n_t = len(tail_p)
    if k > len(head_p) * n_t // 2:
        raise ValueError(f"{k} distinct pairs asked of {len(head_p)} x {n_t}: raise the sizes")
    keys = np.zeros(0, dtype=np.int64)
    for _ in range(50):
        m = int((k - len(keys)) * 1.3) + 64
        new = draw(rng, head_p, m) * n_t + draw(rng, tail_p, m)
        keys = np.unique(np.concatenate([keys, new]))
        if len(keys) >= k:
            break
    else:  # very skewed weights: fill up uniformly
        while len(keys) < k:
            m = 2 * (k - len(keys)) + 64
            new = rng.integers(len(head_p), size=m) * n_t + rng.integers(n_t, size=m)
            keys = np.unique(np.concatenate([keys, new]))
    keys = rng.permutation(keys)[:k]
    return keys // n_t, keys % n_t


# --------------------------------------------------------------------------- the dataset


def entity_counts(s: Sizes) -> dict[str, int]:
    """How many entities of each kind, scaled with the number of items."""
    return {
        "item": s.items,
        "author": max(5, round(0.4 * s.items)),
        "genre": 60,
        "subject": max(10, round(0.3 * s.items)),
        "character": max(10, 5 * s.items),
        "publisher": max(3, s.items // 20),
        "country": 50,
    }


def write_interactions(rng: np.random.Generator, s: Sizes, path: Path) -> np.ndarray:
    """``interactions.tsv``; returns each item's popularity weight (for the KG's skew)."""
    if s.interactions < s.min_count * max(s.users, s.items):
        raise ValueError(
            f"{s.interactions} interactions cannot give {s.min_count} to each of {s.users} "
            f"users and {s.items} items"
        )
    lengths = sequence_lengths(rng, s)
    pop = zipf_weights(s.items, s.zipf, rng)
    floor = np.repeat(np.arange(s.items, dtype=np.int64), s.min_count)
    items = np.concatenate([floor, draw(rng, pop, s.interactions - len(floor))])
    items = rng.permutation(items)  # the guaranteed minimum lands on random users
    users = np.repeat(np.arange(s.users, dtype=np.int64), lengths)
    start = rng.uniform(1.0e9, 1.45e9, size=s.users)
    span = np.minimum(rng.lognormal(17.0, 1.5, size=s.users), 9.0e7)  # ~280 days median
    day = rng.random(s.users) < 0.2  # these users' times are whole days: ties happen
    with path.open("wb") as f:
        f.write(b"user\titem\ttimestamp\n")
        for lo in range(0, s.interactions, CHUNK):
            u, it = users[lo : lo + CHUNK], items[lo : lo + CHUNK]
            t = start[u] + rng.random(len(u)) * span[u]
            t = np.where(day[u], np.floor(t / 86400) * 86400, np.floor(t)).astype(np.int64)
            f.write(lines([user_matrix(u), item_matrix(it), fixed_digits(t, 10)]))
    return pop


def write_items(rng: np.random.Generator, s: Sizes, path: Path) -> None:
    """``items.tsv``: a made-up title per item."""
    ids = rows_text(item_matrix(np.arange(s.items)))
    a, b = words(rng, s.items), words(rng, s.items)
    style = rng.integers(3, size=s.items)
    titles = [
        f"The {x} {y}" if k == 0 else f"{x} of {y}" if k == 1 else f"{x} {y}"
        for x, y, k in zip(a, b, style.tolist())
    ]
    path.write_text(
        "item\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in zip(ids, titles)), encoding="utf-8"
    )


def write_kg(rng: np.random.Generator, s: Sizes, pop: np.ndarray, folder: Path) -> dict[str, int]:
    """``triples.tsv`` and ``entity_names.tsv``; returns the KG's counts."""
    counts = entity_counts(s)
    weights = {k: zipf_weights(n, 1.0, rng) for k, n in counts.items()}
    weights["item"] = np.sqrt(pop) / np.sqrt(pop).sum()  # popular items have more knowledge
    # exact triple counts per relation: a pair with an inverse gives two triples per pair
    pairs = []
    for _, inv, _, _, share in RELATIONS:
        pairs.append(int(s.triples * share) // (2 if inv else 1))
    spare = s.triples - sum(p * (2 if r[1] else 1) for p, r in zip(pairs, RELATIONS))
    pairs[-1] += spare  # nationality (no inverse) takes the rounding rest
    used: dict[str, list[np.ndarray]] = {k: [] for k in counts}
    total = 0
    with (folder / "triples.tsv").open("wb") as f:
        f.write(b"head\trelation\ttail\n")
        for (rel, inv, hk, tk, _), k in zip(RELATIONS, pairs):
            h, t = unique_pairs(rng, weights[hk], weights[tk], k)
            used[hk].append(h)
            used[tk].append(t)
            hm = item_matrix(h) if hk == "item" else entity_matrix(hk, h)
            tm = item_matrix(t) if tk == "item" else entity_matrix(tk, t)
            for name, a, b in ((rel, hm, tm), (inv, tm, hm)):
                if name is None:
                    continue
                for lo in range(0, k, CHUNK):
                    rel_col = const_column(name.encode(), len(a[lo : lo + CHUNK]))
                    f.write(lines([a[lo : lo + CHUNK], rel_col, b[lo : lo + CHUNK]]))
                total += k
    assert total == s.triples, (total, s.triples)
    name_lines = ["entity_id\tname\n"]
    n_entities = 0
    for kind, n in counts.items():
        seen = np.unique(np.concatenate(used[kind])) if used[kind] else np.zeros(0, np.int64)
        if kind == "item":
            n_entities += len(seen)
            continue  # items are named by their titles (items.tsv)
        n_entities += len(seen)
        ids = rows_text(entity_matrix(kind, np.arange(n)))
        first, last = words(rng, n), words(rng, n, 2, 2)
        for e, x, y in zip(ids, first, last):
            name = f"{x} {y}" if kind in ("author", "character") else x
            name_lines.append(f"{e}\t{name}\n")
    (folder / "entity_names.tsv").write_text("".join(name_lines), encoding="utf-8")
    return {"kg_triples": total, "kg_entities": n_entities, "kg_relations": len(TEMPLATES)}


def generate(folder: Path, sizes: Sizes) -> dict:
    """Write the whole dataset into ``folder`` (created); returns the manifest."""
    for v in (sizes.interactions, sizes.users, sizes.items, sizes.triples, sizes.min_count):
        if v < 1:
            raise ValueError("sizes must be positive")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sizes.seed)
    start = time.perf_counter()
    pop = write_interactions(rng, sizes, folder / "interactions.tsv")
    write_items(rng, sizes, folder / "items.tsv")
    kg = write_kg(rng, sizes, pop, folder)
    (folder / "templates.json").write_text(json.dumps(TEMPLATES, indent=1), encoding="utf-8")
    manifest = {
        "options": asdict(sizes),
        "users": sizes.users,
        "items": sizes.items,
        "interactions": sizes.interactions,
        **kg,
        "seconds": round(time.perf_counter() - start, 2),
        "bytes": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def add_size_options(p: argparse.ArgumentParser) -> None:
    """The size options (shared with ``benchmarks/scale.py``)."""
    d = Sizes()
    p.add_argument("--interactions", type=int, default=d.interactions)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--items", type=int, default=d.items)
    p.add_argument("--triples", type=int, default=d.triples)
    p.add_argument("--zipf", type=float, default=d.zipf, help="item popularity exponent")
    p.add_argument("--length-sigma", type=float, default=d.length_sigma)
    p.add_argument("--min-count", type=int, default=d.min_count)
    p.add_argument("--seed", type=int, default=d.seed)


def sizes_from(args: argparse.Namespace) -> Sizes:
    return Sizes(
        interactions=args.interactions,
        users=args.users,
        items=args.items,
        triples=args.triples,
        zipf=args.zipf,
        length_sigma=args.length_sigma,
        min_count=args.min_count,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=DEFAULT_OUT, help=f"folder (default {DEFAULT_OUT})")
    add_size_options(p)
    args = p.parse_args(argv)
    try:
        manifest = generate(Path(args.out), sizes_from(args))
    except ValueError as e:
        print(f"make_scale_data: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in manifest.items() if k != "options"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
