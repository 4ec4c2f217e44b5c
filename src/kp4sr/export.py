"""Write a dataset and its exact leave-one-out split as RecBole atomic files.

So that any baseline can be cross-checked in RecBole on identical data: ``NAME.inter`` (all
interactions), ``NAME.train.inter`` / ``NAME.valid.inter`` / ``NAME.test.inter`` (for RecBole's
``benchmark_filename: [train, valid, test]``), ``NAME.kg`` and ``NAME.link``. The timestamp
column is each interaction's position in the user's sequence (0, 1, 2, ...), not the original
time: the original timestamps have ties, and any re-sorting would break them differently and
change the test item of many users.
"""

from __future__ import annotations

from pathlib import Path

from kp4sr.data import ITEM_PREFIX, MIN_INTERACTIONS, Dataset


def _clean(value: str) -> str:
    """Atomic files are tab-separated lines: tabs and newlines in IDs would corrupt them."""
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def export_recbole(ds: Dataset, out: Path, name: str | None = None) -> dict[str, Path]:
    """Write the atomic files into ``out``; returns them by suffix (``inter``, ``train.inter``...).

    Users with fewer than 3 interactions are left out everywhere, as in the split.
    """
    name = name or ds.name
    out.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    parts: dict[str, list[str]] = {
        "inter": [],
        "train.inter": [],
        "valid.inter": [],
        "test.inter": [],
    }
    for u, seq in enumerate(ds.sequences):
        n = len(seq)
        if n < MIN_INTERACTIONS:
            continue
        user = _clean(ds.users[u])
        for t, item in enumerate(seq.tolist()):
            line = f"{user}\t{_clean(ds.items[item])}\t{t}\n"
            parts["inter"].append(line)
            split = "test" if t == n - 1 else "valid" if t == n - 2 else "train"
            parts[f"{split}.inter"].append(line)
    files: dict[str, Path] = {}
    for suffix, lines in parts.items():
        path = out / f"{name}.{suffix}"
        path.write_text(header + "".join(lines), encoding="utf-8")
        files[suffix] = path
    kg_lines = ["head_id:token\trelation_id:token\ttail_id:token\n"]
    kg_lines += [f"{_clean(h)}\t{_clean(r)}\t{_clean(t)}\n" for h, r, t in ds.kg.triples()]
    files["kg"] = out / f"{name}.kg"
    files["kg"].write_text("".join(kg_lines), encoding="utf-8")
    in_kg = {e for e in ds.kg.entities if e.startswith(ITEM_PREFIX)}
    link = ["item_id:token\tentity_id:token\n"]
    link += [
        f"{_clean(i)}\t{_clean(ITEM_PREFIX + i)}\n" for i in ds.items if ITEM_PREFIX + i in in_kg
    ]
    files["link"] = out / f"{name}.link"
    files["link"].write_text("".join(link), encoding="utf-8")
    return files
