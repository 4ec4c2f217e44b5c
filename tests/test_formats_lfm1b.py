"""LFM-1b listening events with artist, album or track items, name files and dedupe."""

from __future__ import annotations

from pathlib import Path

import pytest

from kp4sr.data import Dataset
from kp4sr.errors import ConfigError, DataError
from kp4sr.formats.lfm1b import load_lfm1b

# user, artist, album, track, timestamp
EVENTS = [
    (31, 1, 10, 100, 1000),
    (31, 2, 20, 200, 900),
    (31, 1, 10, 100, 1100),  # a re-listen of track 100
    (7, 1, 11, 101, 500),
    (7, 2, 20, 200, 500),  # tie with the line above: file order
    (7, 1, 11, 101, 400),
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    return path


@pytest.fixture
def lfm(tmp_path: Path) -> Path:
    write(tmp_path / "LFM-1b_LEs.txt", ["\t".join(map(str, e)) for e in EVENTS])
    write(
        tmp_path / "LFM-1b_artists.txt",
        ["1\tRadiohead", "2\tBj\u00f6rk", "3\tNever Heard"],
    )
    write(
        tmp_path / "LFM-1b_albums.txt",
        ["10\tOK Computer\t1", "11\tKid A\t1", "20\tHomogenic\t2"],
    )
    write(
        tmp_path / "LFM-1b_tracks.txt",
        ["100\tAirbag\t1", "101\tIdioteque\t1", "200\tJ\u00f3ga\t2", "999\tUnused\t3"],
    )
    return tmp_path


def seq(ds: Dataset, user: str) -> list[str]:
    return [ds.items[i] for i in ds.sequences[ds.users.index(user)].tolist()]


def test_tracks_default(lfm: Path) -> None:
    ds = load_lfm1b(lfm)
    assert ds.name == "lfm-1b-track" and ds.domain == "music"
    assert ds.users == ["7", "31"]  # numeric order
    assert ds.items == ["100", "101", "200"]
    assert seq(ds, "31") == ["200", "100", "100"]  # re-listens are kept
    assert seq(ds, "7") == ["101", "101", "200"]
    assert ds.titles == ["Airbag", "Idioteque", "J\u00f3ga"]
    t = set(ds.kg.triples())
    assert ("item:100", "by_artist", "artist:1") in t
    assert ("artist:2", "works_of_artist", "item:200") in t
    assert ds.kg.name_map()["artist:2"] == "Bj\u00f6rk"
    assert not any("artist:3" in (h, x) for h, _, x in t)
    assert ds.skipped == {}


def test_albums(lfm: Path) -> None:
    ds = load_lfm1b(lfm, items="album")
    assert ds.items == ["10", "11", "20"]
    assert seq(ds, "7") == ["11", "11", "20"]
    assert ds.titles == ["OK Computer", "Kid A", "Homogenic"]
    assert ("item:11", "by_artist", "artist:1") in set(ds.kg.triples())


def test_artists_have_no_artist_triples(lfm: Path) -> None:
    ds = load_lfm1b(lfm, items="artist")
    assert ds.items == ["1", "2"]
    assert seq(ds, "31") == ["2", "1", "1"]
    assert ds.titles == ["Radiohead", "Bj\u00f6rk"]
    assert ds.kg.num_triples == 0


def test_dedupe_keeps_first_listen(lfm: Path) -> None:
    ds = load_lfm1b(lfm, dedupe=True)
    assert seq(ds, "31") == ["200", "100"]
    assert seq(ds, "7") == ["101", "200"]
    assert ds.skipped["repeated_listens"] == 2
    ds = load_lfm1b(lfm, items="artist", dedupe=True)
    assert seq(ds, "31") == ["2", "1"] and ds.skipped["repeated_listens"] == 2


def test_without_name_files(lfm: Path) -> None:
    for f in ("LFM-1b_artists.txt", "LFM-1b_tracks.txt"):
        (lfm / f).unlink()
    ds = load_lfm1b(lfm)
    assert ds.titles == [None, None, None] and ds.kg.num_triples == 0
    assert ds.skipped == {"items_without_name": 3}


def test_links_to_nameless_artists_are_counted(lfm: Path) -> None:
    (lfm / "LFM-1b_artists.txt").unlink()
    ds = load_lfm1b(lfm)
    assert ds.titles == ["Airbag", "Idioteque", "J\u00f3ga"]
    assert ds.kg.num_triples == 0
    assert ds.skipped == {"by_artist_links_without_artist_name": 3}


def test_malformed_event_line(lfm: Path) -> None:
    lines = ["\t".join(map(str, e)) for e in EVENTS]
    lines[4] = "7\t2\t20\t200"
    write(lfm / "LFM-1b_LEs.txt", lines)
    with pytest.raises(DataError) as info:
        load_lfm1b(lfm)
    err = info.value
    assert Path(err.path or "").name == "LFM-1b_LEs.txt" and err.line == 5
    assert "expected 5" in str(err)
    lines[4] = "7\t2\t20\tx200\t500"
    write(lfm / "LFM-1b_LEs.txt", lines)
    with pytest.raises(DataError, match="line 5.*track-id"):
        load_lfm1b(lfm)


def test_malformed_name_line(lfm: Path) -> None:
    write(lfm / "LFM-1b_tracks.txt", ["100\tAirbag\t1", "101 Idioteque 1"])
    with pytest.raises(DataError) as info:
        load_lfm1b(lfm)
    assert Path(info.value.path or "").name == "LFM-1b_tracks.txt" and info.value.line == 2


def test_bad_item_choice_and_missing_events(tmp_path: Path, lfm: Path) -> None:
    with pytest.raises(ConfigError, match="artist, album or track"):
        load_lfm1b(lfm, items="song")
    with pytest.raises(DataError, match="not a folder"):
        load_lfm1b(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing LFM-1b_LEs.txt"):
        load_lfm1b(tmp_path / "empty")
