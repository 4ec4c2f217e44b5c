"""RecBole atomic files hold exactly our split: same users, same order, same targets."""

from __future__ import annotations

from kp4sr.cli import main
from kp4sr.data import DataOptions, leave_one_out, load_dataset


def read(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_recbole_export_is_the_same_split(tmp_path, capsys):
    out = tmp_path / "rb"
    assert (
        main(["export", str(out), "--format", "recbole", "--dataset", "toy", "--name", "toy"]) == 0
    )
    capsys.readouterr()
    ds = load_dataset("toy", options=DataOptions())
    split = leave_one_out(ds, max_items=5)
    head, test = read(out / "toy.test.inter")
    assert head == "user_id:token\titem_id:token\ttimestamp:float"
    assert [(u, i) for u, i, _ in test] == [
        (ds.users[s.user], ds.items[s.target]) for s in split.test
    ]
    _, valid = read(out / "toy.valid.inter")
    assert [(u, i) for u, i, _ in valid] == [
        (ds.users[s.user], ds.items[s.target]) for s in split.valid
    ]
    _, train = read(out / "toy.train.inter")
    _, inter = read(out / "toy.inter")
    assert len(train) + len(valid) + len(test) == len(inter) == ds.num_interactions
    # timestamps are positions: sorting by them reproduces each user's order exactly
    first = [row for row in inter if row[0] == ds.users[0]]
    assert [int(float(t)) for _, _, t in first] == list(range(len(ds.sequences[0])))
    assert [i for _, i, _ in first] == [ds.items[j] for j in ds.sequences[0]]
    _, kg = read(out / "toy.kg")
    assert len(kg) == ds.kg.num_triples
    _, link = read(out / "toy.link")
    assert {i for i, _ in link} == set(ds.items) and all(e == f"item:{i}" for i, e in link)
