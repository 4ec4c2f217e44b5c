"""Validated reading of the files of a run folder and of a dataset snapshot.

A run folder is shared between people and machines, copied, half-synced and hand-edited, so
every file is checked when it is read: a missing, truncated or hand-broken file, or one that
does not match the others (a config whose shapes are not those of the weights, item numbers
that are not those of the tokenizer), is a :class:`~kp4sr.errors.DataError` naming the file,
never a traceback from inside numpy, torch or transformers later on. Only JSON and safetensors
are read: nothing is unpickled or evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kp4sr.errors import DataError, KP4SRError
from kp4sr.templates import check_mpp_template, check_template


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of a run folder; every way it can be unreadable names the file."""
    if not path.is_file():
        raise DataError(f"missing from the run folder ({what})", path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"corrupted: not UTF-8 text (byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"corrupted: not valid JSON ({e.msg})", path, e.lineno) from None
    except RecursionError:
        raise DataError("corrupted: JSON nested too deeply", path) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_ok(value: Any, kind: str) -> bool:
    """Whether a JSON value fits a dataclass field annotation such as ``int`` or ``str | None``."""
    kinds = [k.strip() for k in kind.split("|")]
    if value is None:
        return "None" in kinds
    return (
        ("bool" in kinds and isinstance(value, bool))
        or ("int" in kinds and _is_int(value))
        or ("float" in kinds and (_is_int(value) or isinstance(value, float)))
        or ("str" in kinds and isinstance(value, str))
    )


def check_config(value: Any, cls: type, path: Path) -> dict[str, Any]:
    """The options of ``config.json``: a JSON object whose values have the fields' types.

    An absent option takes its default, so run folders of an older kp4sr still load; an
    unknown one is an error (a newer kp4sr's option, or a typo in a hand edit).
    """
    if not isinstance(value, dict):
        raise DataError("expected a JSON object of options", path)
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(map(repr, unknown))}", path)
    for name, v in value.items():
        kind = fields.get(name)
        if kind is not None and not _kind_ok(v, kind):
            raise DataError(f"option {name!r} must be {kind}, found {v!r}", path)
    return value


def check_numbers(value: Any, n_items: int, path: Path) -> np.ndarray:
    """``items.json``'s item numbers: a permutation of 1..N, one per item of the snapshot."""
    numbers = value.get("numbers") if isinstance(value, dict) else None
    if not isinstance(numbers, list) or not all(_is_int(n) for n in numbers):
        raise DataError('expected {"numbers": [integers]}', path)
    if len(numbers) != n_items:
        raise DataError(
            f"{len(numbers)} item numbers for the {n_items} items of the dataset snapshot", path
        )
    if sorted(numbers) != list(range(1, n_items + 1)):
        raise DataError(f"item numbers must be 1..{n_items}, each once", path)
    return np.asarray(numbers, dtype=np.int64)


def check_saved_templates(
    value: Any, path: Path, needed: list[str]
) -> tuple[dict[str, str], list[str]]:
    """``templates.json``: ``{"relations": {relation: template}, "mpp": [templates]}``, with a
    template for each of the ``needed`` relations (those of the snapshot's KG)."""
    if not isinstance(value, dict):
        raise DataError('expected {"relations": {...}, "mpp": [...]}', path)
    relations, mpp = value.get("relations"), value.get("mpp")
    if not isinstance(relations, dict):
        raise DataError('expected "relations": {relation: template}', path)
    if not isinstance(mpp, list) or not mpp:
        raise DataError('expected "mpp": a non-empty list of templates', path)
    rel = {r: check_template(r, t, path) for r, t in relations.items()}
    missing = sorted(set(needed) - set(rel))
    if missing:
        raise DataError(f"no template for relation(s) {', '.join(map(repr, missing))}", path)
    return rel, [check_mpp_template(t, path) for t in mpp]


def _text_list(meta: Mapping[str, Any], key: str, path: Path, nullable: bool = False) -> list:
    value = meta.get(key)
    ok = isinstance(value, list) and all(
        isinstance(v, str) or (nullable and v is None) for v in value
    )
    if not ok:
        kind = "text or null" if nullable else "text"
        raise DataError(f"expected {key!r}: a list of {kind}", path)
    return value


def _index_array(arrays: Mapping[str, np.ndarray], key: str, bound: int, path: Path) -> np.ndarray:
    """A 1-D integer array whose values index a list of ``bound`` entries."""
    a = arrays.get(key)
    if a is None:
        raise DataError(f"missing array {key!r}", path)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"array {key!r} must be 1-D integers, found {a.dtype} {a.shape}", path)
    if len(a) and (int(a.min()) < 0 or int(a.max()) >= bound):
        raise DataError(f"array {key!r} holds indices outside 0..{bound - 1}", path)
    return a.astype(np.int64, copy=False)


def check_snapshot(
    meta: Any, arrays: Mapping[str, np.ndarray], meta_path: Path, arr_path: Path
) -> dict[str, Any]:
    """Check that ``dataset.json`` and ``dataset.safetensors`` describe one consistent dataset.

    Returns the checked pieces: lists from the JSON and int64 arrays, sequences already split.
    """
    if not isinstance(meta, dict):
        raise DataError("expected a JSON object", meta_path)
    for key in ("name", "domain"):
        if not isinstance(meta.get(key), str):
            raise DataError(f"expected {key!r}: text", meta_path)
    users = _text_list(meta, "users", meta_path)
    items = _text_list(meta, "items", meta_path)
    titles = _text_list(meta, "titles", meta_path, nullable=True)
    entities = _text_list(meta, "kg_entities", meta_path)
    names = _text_list(meta, "kg_names", meta_path, nullable=True)
    relations = _text_list(meta, "kg_relations", meta_path)
    if len(titles) != len(items) or len(names) != len(entities):
        raise DataError("titles/kg_names do not match items/kg_entities in length", meta_path)
    for key in ("skipped", "templates"):
        if not isinstance(meta.get(key, {}), dict):
            raise DataError(f"expected {key!r}: a JSON object", meta_path)
    lengths = _index_array(arrays, "seq_lengths", 2**62, arr_path)
    seq_items = _index_array(arrays, "seq_items", len(items), arr_path)
    if len(lengths) != len(users) or int(lengths.sum()) != len(seq_items):
        raise DataError("sequence arrays do not match the users in dataset.json", arr_path)
    kg = [
        _index_array(arrays, "kg_heads", len(entities), arr_path),
        _index_array(arrays, "kg_rels", len(relations), arr_path),
        _index_array(arrays, "kg_tails", len(entities), arr_path),
    ]
    if len({len(a) for a in kg}) != 1:
        raise DataError("kg_heads, kg_rels and kg_tails differ in length", arr_path)
    sequences = np.split(seq_items, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return {
        "users": users,
        "items": items,
        "titles": titles,
        "entities": entities,
        "names": names,
        "relations": relations,
        "sequences": list(sequences),
        "kg": kg,
    }


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays; missing, truncated or corrupt names the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise DataError("missing from the run folder", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, MemoryError) as e:
        raise DataError(f"corrupted safetensors file ({e})", path) from None


def load_t5(model_dir: Path, vocab_size: int, exact: bool) -> Any:
    """The run's T5 from ``model/``: every weight present, with the shape its config says.

    ``from_pretrained`` alone would fill missing weights with random values and only warn,
    which would serve a broken model; here that, like a truncated file or a config whose
    shapes are not those of the weights, is a DataError naming the folder. ``vocab_size`` is
    the tokenizer's: the embeddings must have a row for each of its tokens (``exact``: and no
    more, as for a model built from scratch on that tokenizer).
    """
    from safetensors import SafetensorError
    from transformers import T5ForConditionalGeneration

    config_path, weights = model_dir / "config.json", model_dir / "model.safetensors"
    for path in (config_path, weights):
        if not path.is_file():
            raise DataError("missing from the run folder", path)
    _check_model_config(read_json(config_path, "the model's configuration"), config_path, weights)
    hf_log = logging.getLogger("transformers.modeling_utils")
    quiet = _NoRecencyReport()  # transformers reports our recency table as unexpected
    hf_log.addFilter(quiet)
    try:
        model, info = T5ForConditionalGeneration.from_pretrained(
            str(model_dir),
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # report every mismatch below, by name
            use_safetensors=True,  # never a pickled pytorch_model.bin placed beside it
        )
    except SafetensorError as e:
        raise DataError(f"corrupted safetensors file ({e})", weights) from None
    except RuntimeError as e:
        raise DataError(
            f"the weights do not have the shapes of config.json ({_first_line(e)})", model_dir
        ) from None
    except Exception as e:  # noqa: BLE001 - a hand-edited config fails in many library ways
        raise DataError(f"cannot load the model ({_first_line(e)})", model_dir) from None
    finally:
        hf_log.removeFilter(quiet)
    recency = _load_recency(model, weights) | _load_item_knowledge(model, weights)
    for key, what in (
        ("missing_keys", "weights missing from model.safetensors"),
        ("unexpected_keys", "weights in model.safetensors that config.json has no place for"),
        ("mismatched_keys", "weights whose shape differs from config.json"),
    ):
        found = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key, ()))
        found = [k for k in found if k not in recency]
        if found:
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise DataError(f"{what}: {', '.join(found[:3])}{more}", model_dir)
    rows = model.get_input_embeddings().num_embeddings
    if rows < vocab_size or (exact and rows != vocab_size):
        raise DataError(
            f"the model has {rows} token embeddings but the run's tokenizer has {vocab_size} "
            "tokens: model/ and tokenizer/ come from different runs",
            model_dir,
        )
    from kp4sr.model import use_fast_paths

    return use_fast_paths(model)


class _NoRecencyReport(logging.Filter):
    """Drops transformers' load report when it names the recency table: load_t5 loads that
    table itself and names every other unexpected or missing weight in its own error."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kp4sr.model import ITEM_KNOWLEDGE, RECENCY

        message = record.getMessage()
        return RECENCY not in message and ITEM_KNOWLEDGE not in message


def _load_recency(model: Any, weights: Path) -> set[str]:
    """Attach a saved recency embedding (``--recency-embeddings``), which transformers does not
    know and so leaves out; returns the weight names it took care of."""
    import torch
    from safetensors import safe_open

    from kp4sr.model import RECENCY, add_recency

    slots = getattr(model.config, "kp4sr_recency", None)
    key = f"{RECENCY}.weight"
    if slots is None:
        return set()
    if not _is_int(slots) or slots < 1:
        raise DataError(f"kp4sr_recency is {slots!r}: expected a positive integer", weights)
    with safe_open(str(weights), framework="pt") as f:
        if key not in f.keys():
            raise DataError(f"weights missing from model.safetensors: {key}", weights)
        table = f.get_tensor(key)
    add_recency(model, int(slots))
    mine = getattr(model, RECENCY).weight
    if tuple(table.shape) != tuple(mine.shape):
        raise DataError(
            f"weights whose shape differs from config.json: {key} ({tuple(table.shape)})", weights
        )
    with torch.no_grad():
        mine.copy_(table)
    return {key}


def _load_item_knowledge(model: Any, weights: Path) -> set[str]:
    """Attach saved knowledge-aware item embeddings (``--item-knowledge``): the attribute
    vectors and the (token, attribute) pairs, both in model.safetensors; returns their names."""
    import torch
    from safetensors import safe_open

    from kp4sr.model import ITEM_KNOWLEDGE, add_item_knowledge

    n_attrs = getattr(model.config, "kp4sr_item_knowledge", None)
    if n_attrs is None:
        return set()
    if not _is_int(n_attrs) or n_attrs < 1:
        raise DataError(
            f"kp4sr_item_knowledge is {n_attrs!r}: expected a positive integer", weights
        )
    keys = {k: f"{ITEM_KNOWLEDGE}.{k}" for k in ("weight", "rows", "attrs")}
    with safe_open(str(weights), framework="pt") as f:
        missing = [key for key in keys.values() if key not in f.keys()]
        if missing:
            raise DataError(
                f"weights missing from model.safetensors: {', '.join(missing)}", weights
            )
        got = {k: f.get_tensor(key) for k, key in keys.items()}
    vocab = model.get_input_embeddings().num_embeddings
    rows, attrs = got["rows"].long(), got["attrs"].long()
    bad = (
        got["weight"].shape != (n_attrs, model.config.d_model)
        or rows.shape != attrs.shape
        or rows.ndim != 1
        or (len(rows) and (rows.min() < 0 or rows.max() >= vocab))
        or (len(attrs) and (attrs.min() < 0 or attrs.max() >= n_attrs))
    )
    if bad:
        raise DataError(
            f"{ITEM_KNOWLEDGE}: its weight, rows and attrs do not fit config.json", weights
        )
    add_item_knowledge(model, rows, attrs, int(n_attrs))
    with torch.no_grad():
        getattr(model, ITEM_KNOWLEDGE).weight.copy_(got["weight"])
    return set(keys.values())


def _weight_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor, from the safetensors header alone (nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise DataError(f"corrupted safetensors file ({e})", weights) from None


def _check_model_config(cfg: Any, config_path: Path, weights: Path) -> None:
    """The model's config.json has the sizes of the weights in model.safetensors.

    Checked from the header before the model is built, so a config broken by hand never makes
    transformers build (and fill at random) a model of some other, possibly huge, size.
    """
    if not isinstance(cfg, dict):
        raise DataError("expected a JSON object (a T5 configuration)", config_path)
    shapes = _weight_shapes(weights)
    emb = shapes.get("shared.weight")
    if emb is None or len(emb) != 2:
        raise DataError("no 2-D 'shared.weight': not the weights of a T5 model", weights)
    blocks = {
        side: len({k.split(".")[2] for k in shapes if k.startswith(f"{side}.block.")})
        for side in ("encoder", "decoder")
    }
    decoder_key = (
        "num_decoder_layers" if cfg.get("num_decoder_layers") is not None else "num_layers"
    )
    for key, want in (
        ("vocab_size", emb[0]),
        ("d_model", emb[1]),
        ("num_layers", blocks["encoder"]),
        (decoder_key, blocks["decoder"]),
    ):
        have = cfg.get(key)
        if not _is_int(have) or have != want:
            raise DataError(
                f"{key} is {have!r} but model.safetensors holds {want}: the config does not "
                "describe these weights",
                config_path,
            )


def load_run_tokenizer(folder: Path) -> Any:
    """The run's tokenizer; a missing or hand-broken ``tokenizer.json`` names the file."""
    from kp4sr.tokenization import load_tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise DataError("missing from the run folder", path)
    read_json(path, "the tokenizer")
    settings = folder / "tokenizer_config.json"
    if settings.is_file() and not isinstance(read_json(settings, "tokenizer settings"), dict):
        raise DataError("expected a JSON object of tokenizer settings", settings)
    try:
        tokenizer = load_tokenizer(folder)
        # one encode and the special tokens: a broken setting fails here, named, not later
        tokenizer.encode("User 1 has watched 2 , 3 .", add_special_tokens=False)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("no pad or end-of-sequence token")
        len(tokenizer)
    except KP4SRError as e:
        raise DataError(str(e), folder) from None
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises bare Exception
        raise DataError(f"cannot load the tokenizer ({_first_line(e)})", folder) from None
    return tokenizer


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def warm_start(model: Any, tokenizer: Any, folder: Path) -> None:
    """Copy an earlier run's weights into ``model``, the start of a new run (``--init-from``).

    Weights only mean the same thing when every token and every item maps to the same row:
    the earlier run must share this run's tokenizer (dataset, vocabulary size, item tokens)
    (:func:`warm_start_tokenizer`) and item numbering (:func:`warm_start_numbers`, which
    ``KP4SR.create`` takes from the earlier run), and the model's shape. Anything else is named
    here, before training starts, rather than learnt as noise.
    """
    import torch

    if not (folder / "config.json").is_file():
        raise DataError("--init-from: not a kp4sr run folder (no config.json)", folder)
    if load_run_tokenizer(folder / "tokenizer").get_vocab() != tokenizer.get_vocab():
        raise DataError(
            "--init-from: its tokenizer differs from this run's "
            "(another dataset, --vocab-size or --item-tokens)",
            folder / "tokenizer",
        )
    source = load_t5(folder / "model", len(tokenizer), exact=False)
    scaled = bool(getattr(model.config, "scale_decoder_outputs", False))
    if bool(getattr(source.config, "scale_decoder_outputs", False)) != scaled:
        raise DataError(
            "--init-from: its decoder output is "
            + ("unscaled" if scaled else "scaled by d_model^-0.5")
            + " and this run's is not (--tie-embeddings must match)",
            folder / "model",
        )
    from kp4sr.model import ITEM_KNOWLEDGE, RECENCY

    theirs_state, mine = source.state_dict(), model.state_dict()
    recency = f"{RECENCY}.weight"
    if recency in theirs_state and recency not in mine:
        raise DataError(
            "--init-from: its model has recency embeddings and this run's has none "
            "(add --recency-embeddings)",
            folder / "model",
        )
    if recency in mine and recency not in theirs_state:
        # a model without them starts one that has them: they start at zero, as built
        theirs_state = {**theirs_state, recency: mine[recency]}
    knowledge = {k for k in mine if k.startswith(f"{ITEM_KNOWLEDGE}.")}
    if any(k.startswith(f"{ITEM_KNOWLEDGE}.") for k in theirs_state) and not knowledge:
        raise DataError(
            "--init-from: its model has knowledge-aware item embeddings and this run's has "
            "none (add --item-knowledge)",
            folder / "model",
        )
    if knowledge and not knowledge & set(theirs_state):
        # as the recency table: built at zero, so the run starts exactly as the earlier one
        theirs_state = {**theirs_state, **{k: mine[k] for k in knowledge}}
    for key, value in mine.items():
        shape = tuple(value.shape)
        found = tuple(theirs_state[key].shape) if key in theirs_state else None
        if found != shape:
            raise DataError(
                f"--init-from: its model has another shape ({key} is {found} there, "
                f"{shape} here: another --backbone?)",
                folder / "model",
            )
    with torch.no_grad():
        model.load_state_dict(theirs_state, strict=True)


def warm_start_numbers(folder: Path, items: list[str]) -> np.ndarray:
    """The item numbering a warm start (``--init-from``) uses: the earlier run's own.

    An item's number is its row in the embedding, so the weights only carry over under the
    earlier numbering. Matching by raw item ID (``dataset.json``) rather than redrawing it from
    ``--seed`` lets a warm start train with another seed; other items (another dataset or
    filtering) are refused here, naming the file.
    """
    if not (folder / "config.json").is_file():
        raise DataError("--init-from: not a kp4sr run folder (no config.json)", folder)
    items_path, meta_path = folder / "items.json", folder / "dataset.json"
    raw = read_json(items_path, "item numbers")
    listed = raw.get("numbers") if isinstance(raw, dict) else None
    if isinstance(listed, list) and len(listed) != len(items):
        raise DataError(
            f"--init-from: it was trained on {len(listed)} items, this run has {len(items)} "
            "(another dataset or filtering)",
            items_path,
        )
    theirs = check_numbers(raw, len(items), items_path)
    meta = read_json(meta_path, "the dataset snapshot")
    their_items = meta.get("items") if isinstance(meta, dict) else None
    if not isinstance(their_items, list) or len(their_items) != len(theirs):
        raise DataError(f'expected "items": a list of {len(theirs)} item IDs', meta_path)
    number_of = dict(zip(map(str, their_items), theirs.tolist()))
    missing = [x for x in items if x not in number_of]
    if missing:
        raise DataError(
            f"--init-from: {len(missing)} of this run's items are not in it, e.g. item "
            f"{missing[0]!r} (another dataset or filtering)",
            meta_path,
        )
    return np.array([number_of[x] for x in items], dtype=np.int64)


def warm_start_tokenizer(
    folder: Path, vocab_size: int, item_tokens: str, item_texts: list[str]
) -> Any:
    """The tokenizer a warm start (``--init-from``) uses: the earlier run's own.

    A from-scratch tokenizer is trained on the dataset's text, knowledge prompts included, so a
    run with other ``--relations``, ``--templates`` or hops would get another vocabulary, and
    the earlier weights would no longer mean the same tokens. Reusing the earlier tokenizer keeps
    them aligned; what must still match (its vocabulary size, its item tokens) is checked here.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DataError("--init-from: not a kp4sr run folder (no config.json)", folder)
    theirs = read_json(config_path, "the run's settings")
    theirs = theirs if isinstance(theirs, dict) else {}
    for key, mine in (("vocab_size", vocab_size), ("item_tokens", item_tokens)):
        if key in theirs and theirs[key] != mine:
            flag = "--" + key.replace("_", "-")
            raise DataError(
                f"--init-from: its tokenizer differs from this run's ({flag} is "
                f"{theirs[key]!r} there, {mine!r} here)",
                config_path,
            )
    tokenizer = load_run_tokenizer(folder / "tokenizer")
    vocab = tokenizer.get_vocab()
    missing = [t for t in item_texts if t not in vocab]
    if missing:
        raise DataError(
            f"--init-from: its tokenizer differs from this run's ({len(missing)} item tokens "
            f"missing, e.g. {missing[0]!r}: another dataset or --item-tokens)",
            folder / "tokenizer",
        )
    return tokenizer
