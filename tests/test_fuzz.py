"""Fuzz every loader with malformed input: each call either loads or raises our own error.

Each test starts from a small valid folder of one format and, per example, damages one or more
of its files (random bytes, truncation, a line with the wrong number of fields or non-numeric
ids, bytes that are not UTF-8, an empty file, a duplicated line, broken or retyped JSON,
templates without ``[X]``/``[Y]``). The loader must return or raise a
:class:`~kp4sr.errors.KP4SRError` whose message is one line (and, for a DataError, names a file);
any other exception fails the test and Hypothesis shrinks it to a minimal file.

Every test also counts its outcomes and checks that both happened (some inputs load, some are
refused), so a broken fixture that makes everything fail cannot pass unnoticed.
``KP4SR_FUZZ_EXAMPLES=N`` runs N examples per loader instead of the default, and
``KP4SR_FUZZ_RANDOM=1`` draws new examples on each run instead of the fixed CI set.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kp4sr.data import load_saved_dataset, save_dataset
from kp4sr.errors import DataError, KP4SRError
from kp4sr.formats.amazon import load_amazon_reviews
from kp4sr.formats.freebase import load_linkage, load_triples_tsv, stream_ntriples
from kp4sr.formats.kp4sr_release import load_kp4sr_release
from kp4sr.formats.lfm1b import load_lfm1b
from kp4sr.formats.movielens import load_movielens
from kp4sr.loaders import load_generic, load_kb4rec_kg, load_movielens_100k
from kp4sr.templates import load_relation_templates

EXAMPLES = int(os.environ.get("KP4SR_FUZZ_EXAMPLES", "220"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # the same examples on every CI run; KP4SR_FUZZ_RANDOM=1 draws new ones each run
    derandomize=not os.environ.get("KP4SR_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- mutations

# Field values a user's messy file really holds: ids, words, empty, signs, huge, non-finite,
# separators of other formats, a quote, non-ASCII letters.
FIELDS = st.one_of(
    st.sampled_from(
        ["1", "2", "7", "0", "-1", "x", "", " ", "1.5", "1e3", "nan", "inf", "99999999999999999999"]
        + ["m.01", "/m/0g", "[X]", "[Y]", '"', "::", "|", ",", "\t", "é", "\u4e2d", "\x00"]
    ),
    st.text(max_size=6),
)
SEPARATORS = st.sampled_from(["\t", ",", "|", "::", " ", ";"])
JUNK_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\r", b"\n", b'"', b"\t", b"{", b"\x1f"])


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


@st.composite
def random_line(draw: st.DrawFn) -> bytes:
    """A line of 0-6 fields of messy values joined by some separator."""
    fields = draw(st.lists(FIELDS, max_size=6))
    return draw(SEPARATORS).join(fields).encode("utf-8", "surrogatepass")


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """One random damage to a file's bytes."""
    lines = _lines(data)
    k = draw(st.integers(0, max(0, len(lines) - 1)))
    kind = draw(
        st.sampled_from(
            [
                "empty",
                "random",
                "truncate",
                "replace_line",
                "insert_line",
                "drop_field",
                "duplicate_line",
                "junk_byte",
                "latin1",
                "header_only",
            ]
        )
    )
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=120))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "replace_line":
        lines[k] = draw(random_line())
    elif kind == "insert_line":
        lines.insert(k, draw(random_line()))
    elif kind == "drop_field":
        for sep in (b"\t", b"::", b"|", b",", b" "):
            if sep in lines[k]:
                parts = lines[k].split(sep)
                del parts[draw(st.integers(0, len(parts) - 1))]
                lines[k] = sep.join(parts)
                break
    elif kind == "duplicate_line":
        lines.insert(k, lines[k])
    elif kind == "junk_byte":
        at = draw(st.integers(0, len(data)))
        junk = draw(JUNK_BYTES)
        return data[:at] + junk + data[at + draw(st.integers(0, 1)) :]
    elif kind == "latin1":
        lines[k] = lines[k] + "\u00e9t\u00e9".encode("latin-1")
    elif kind == "header_only":
        return lines[0] + b"\n"
    return b"\n".join(lines)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["1", "x", "m.01", "The genre of [X] is [Y].", "[X] only", "{user} {mask}"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)


def mutate_json(draw: st.DrawFn, value: Any) -> Any:
    """Replace one random node of a JSON document by a random JSON value (structured damage)."""
    if not isinstance(value, (dict, list)) or not value or draw(st.integers(0, 3)) == 0:
        return draw(JSON_VALUES)
    if isinstance(value, dict):
        keys = list(value)
        key = keys[draw(st.integers(0, len(keys) - 1))]
        out = dict(value)
        if draw(st.booleans()) and draw(st.integers(0, 4)) == 0:
            del out[key]
        else:
            out[key] = mutate_json(draw, value[key])
        return out
    i = draw(st.integers(0, len(value) - 1))
    return value[:i] + [mutate_json(draw, value[i])] + value[i + 1 :]


def damaged(draw: st.DrawFn, files: dict[str, bytes]) -> dict[str, bytes]:
    """The folder with 0-3 of its files damaged (0: the valid folder, which must load)."""
    out = dict(files)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(out)))
        if name.endswith(".json") and draw(st.booleans()):
            try:
                doc = json.loads(out[name])
            except ValueError:
                doc = None
            if doc is not None:
                out[name] = json.dumps(mutate_json(draw, doc)).encode()
                continue
        if draw(st.integers(0, 9)) == 0:
            del out[name]  # a missing file
            if not out:
                break
            continue
        out[name] = mutate(draw, out[name])
    return out


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def run_fuzz(
    files: dict[str, bytes], call: Callable[[Path], object], examples: int = EXAMPLES
) -> None:
    """Fuzz ``call(folder)`` over damaged copies of ``files``; only our own errors may escape."""
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        chosen = damaged(data.draw, files)
        with tempfile.TemporaryDirectory() as tmp:
            folder = write(Path(tmp) / "data", chosen)
            try:
                call(folder)
            except KP4SRError as e:
                message = str(e)
                assert message and "\n" not in message, repr(message)
                if isinstance(e, DataError):
                    assert e.path is not None, message
                outcomes["error"] += 1
            else:
                outcomes["ok"] += 1

    one()
    assert outcomes["ok"] and outcomes["error"], outcomes


# --------------------------------------------------------------------------- valid folders

GENRES = "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy"
GENRES += " Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
U_GENRE = "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES.split())).encode()
FLAGS = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)

ML100K = {
    "u.data": b"1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n2\t3\t2\t881250952\n",
    "u.item": (
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://y|{FLAGS}\n"
        f"3|Four Rooms (1995)|||http://z|{FLAGS}\n"
    ).encode("latin-1"),
    "u.genre": U_GENRE,
}
ML1M = {
    "ratings.dat": b"1::1::5::978300760\n1::2::3::978300761\n2::1::4::978300762\n",
    "movies.dat": b"1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adventure\n",
    "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n",
    "tags.dat": b"1::1::funny::978300760\n2::1::Funny::978300761\n2::2::a::b::978300762\n",
}
ML_CSV = {
    "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.5,964982704\n"
    b"2,2,3.0,964982705\n",
    "movies.csv": b'movieId,title,genres\n1,"Toy Story, The (1995)",Comedy|Drama\n'
    b"2,Heat (1995),(no genres listed)\n",
    "tags.csv": b"userId,movieId,tag,timestamp\n1,1,funny,1\n2,1,funny,2\n",
}
GENERIC = {
    "interactions.csv": b"user,item,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,3\nu2,i2,1\nu2,i3,2\n",
    "items.csv": b'item,title\ni1,"One, the first"\ni2,Two\ni9,Unused\n',
    "triples.tsv": b"head\trelation\ttail\ni1\tgenre\tg1\ni2\tgenre\tg1\ng1\tfilms_of_genre\ti1\n",
    "entity_names.tsv": b"entity_id\tname\ng1\tComedy\ng1\tDup\n",
}
KB4REC = {
    "triples.tsv": b"m.a\tfilm.genre\tm.g\nm.b\tfilm.genre\tm.g\nm.a\tfilm.actor\tm.x\n",
    "entity_names.tsv": b"m.g\tComedy\nm.x\t\n",
    "item2entity.tsv": b"item_id\tentity_id\n1\tm.a\n2\tm.b\n",
}
AMAZON = {
    "reviews.json": b'{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 100}\n'
    b"{'reviewerID': 'A1', 'asin': 'B2', 'unixReviewTime': 101}\n"
    b'{"reviewerID": "A2", "asin": "B1", "unixReviewTime": "102"}\n',
    "meta.json": b"{'asin': 'B1', 'title': 'A Book', 'brand': 'Acme', "
    b"'categories': [['Books', 'Fiction']]}\n"
    b'{"asin": "B9", "title": "Unreviewed", "category": ["Books", "Poetry"]}\n',
}
LFM1B = {
    "LFM-1b_LEs.txt": b"1\t10\t100\t1000\t5\n1\t11\t101\t1001\t6\n2\t10\t100\t1000\t7\n",
    "LFM-1b_tracks.txt": b"1000\tSong\tOne\t10\n1001\tOther\t11\n1002\tNobody\t12\n",
    "LFM-1b_artists.txt": b"10\tBand\n11\t\xff\xfe\n",
}
NS = "http://rdf.freebase.com/ns/"
DUMP = (
    f"<{NS}m.01> <{NS}film.film.genre> <{NS}m.0g> .\n"
    f'<{NS}m.0g> <{NS}type.object.name> "Comedy\\u00e9"@en .\n'
    f'<{NS}m.01> <{NS}type.object.name> "Film"@fr .\n'
    f"<{NS}m.0g> <{NS}film.genre.films> <{NS}m.02> .\n"
    "# a comment\n"
).encode()
FREEBASE = {
    "ml2fb.txt": b"1\tm.01\n2\t/m/02\n3\t<http://rdf.freebase.com/ns/m.03>\n",
    "triples.tsv": b"head\trelation\ttail\nm.01\t<http://x/ns/film.genre>\tm.0g\n",
    "dump.nt": DUMP,
}
RELEASE = {
    "sequential_data.txt": b"1 1 2 3\n2 2 3\n3\n",
    "datamaps.json": json.dumps(
        {
            "user2id": {"A": "1", "B": "2", "C": "3"},
            "item2id": {"x": "1", "y": "2", "z": "3", "w": "4"},
            "id2item": {"1": "x", "2": "y", "3": "z", "4": "w"},
        }
    ).encode(),
    "item2entity.json": json.dumps({"x": "m.01", "y": "m.02"}).encode(),
    "entity2text.json": json.dumps({"m.01": "X film", "m.0g": "Comedy"}).encode(),
    "triple2dict.json": json.dumps({"m.01": {"film.film.genre": ["m.0g", "m.02"]}}).encode(),
    "relation2template.json": json.dumps({"film.film.genre": "The genre of [X] is [Y]."}).encode(),
    "user_descriptions.tsv": b"user\tdescription\n1\tlikes films\n",
}
TEMPLATES = {
    "t.json": json.dumps(
        {"genre": "The genre of [X] is [Y].", "film.actor": "[Y] acts in [X]."}
    ).encode()
}


# --------------------------------------------------------------------------- one test per loader


def test_fuzz_movielens_100k() -> None:
    run_fuzz(ML100K, load_movielens_100k)


def test_fuzz_movielens_dat_layout() -> None:
    run_fuzz(ML1M, load_movielens)


def test_fuzz_movielens_csv_layout() -> None:
    run_fuzz(ML_CSV, load_movielens)


def test_fuzz_generic_format() -> None:
    run_fuzz(GENERIC, load_generic)


def test_fuzz_kb4rec_kg() -> None:
    run_fuzz(KB4REC, lambda f: load_kb4rec_kg(f, ["1", "2", "3"]))


def test_fuzz_amazon() -> None:
    run_fuzz(AMAZON, lambda f: load_amazon_reviews(f / "reviews.json", f / "meta.json"))


def test_fuzz_amazon_gzipped() -> None:
    """Damage to the compressed bytes (truncated or corrupt gzip streams) is a DataError too."""
    zipped = {k: gzip.compress(v, mtime=0) for k, v in AMAZON.items()}
    run_fuzz(zipped, lambda f: load_amazon_reviews(f / "reviews.json", f / "meta.json"))


def test_fuzz_lfm1b() -> None:
    run_fuzz(LFM1B, lambda f: load_lfm1b(f, items="track"))


def _freebase(folder: Path) -> None:
    load_linkage(folder / "ml2fb.txt", ["1", "2", "3"])
    load_triples_tsv(folder / "triples.tsv")
    stream_ntriples(folder / "dump.nt", {"m.01"}, hop=2)
    stream_ntriples(folder / "dump.nt", {"m.01"}, hop=1, strict=True)


def test_fuzz_freebase_linkage_triples_and_dump() -> None:
    run_fuzz(FREEBASE, _freebase)


def test_fuzz_kp4sr_release() -> None:
    run_fuzz(RELEASE, load_kp4sr_release)


@st.composite
def template_docs(draw: st.DrawFn) -> bytes:
    """A template file: relation -> sentence (or any JSON value), often without [X] or [Y]."""
    sentence = st.one_of(
        st.sampled_from(["[X] is [Y].", "[X] only", "only [Y]", "[X] [X] [Y]", "", "[x] [y]"]),
        st.builds(lambda a, b: f"{a}[X]{b}[Y]", st.text(max_size=4), st.text(max_size=4)),
        JSON_VALUES,
    )
    doc = draw(st.dictionaries(st.text(max_size=6), sentence, max_size=4))
    return json.dumps(doc).encode()


def test_fuzz_relation_templates() -> None:
    run_fuzz(TEMPLATES, lambda f: load_relation_templates(f / "t.json"))

    @FUZZ
    @given(template_docs())
    def generated(doc: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "t.json"
            path.write_bytes(doc)
            try:
                templates = load_relation_templates(path)
            except KP4SRError as e:
                assert "\n" not in str(e) and "t.json" in str(e)
            else:
                for t in templates.values():
                    assert t.count("[X]") == 1 and t.count("[Y]") == 1

    generated()


def _saved_folder() -> dict[str, bytes]:
    from kp4sr import toy

    with tempfile.TemporaryDirectory() as tmp:
        save_dataset(toy.generate(seed=0, n_users=6, n_items=12), Path(tmp))
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def test_fuzz_saved_dataset_snapshot() -> None:
    """The dataset snapshot of a run folder (dataset.json + dataset.safetensors)."""
    run_fuzz(_saved_folder(), load_saved_dataset)


def test_fuzz_run_folder() -> None:
    """A whole run folder (options, item numbers, templates, snapshot, tokenizer, weights)."""
    from kp4sr import toy
    from kp4sr.recommender import KP4SR, Config

    ds = toy.generate(seed=0, n_users=8, n_items=12)
    rec = KP4SR.create(Config(max_length=48, degree=2, vocab_size=200), dataset=ds)
    with tempfile.TemporaryDirectory() as tmp:
        rec.save_pretrained(tmp)
        files = {
            str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()
        }
    run_fuzz(files, KP4SR.from_pretrained, examples=max(20, EXAMPLES // 3))
