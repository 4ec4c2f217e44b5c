"""End to end on the generated toy dataset with a tiny T5: train, save, reload, evaluate,
recommend, explain — through the Python API and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from kp4sr import toy
from kp4sr.cli import main
from kp4sr.errors import ConfigError
from kp4sr.evaluation import metrics
from kp4sr.recommender import KP4SR, Config
from kp4sr.training import fit

SMALL = dict(max_length=64, degree=2, epochs=2, batch_size=32, beams=10, eval_batch_size=32)


@pytest.fixture(scope="module")
def small_toy():
    return toy.generate(seed=1, n_users=60, n_items=40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_toy):
    out = tmp_path_factory.mktemp("run")
    rec = KP4SR.create(Config(**SMALL), dataset=small_toy)
    results = fit(rec, out, progress=False)
    return rec, out, results


def test_fit_writes_a_self_contained_run_folder(trained):
    rec, out, results = trained
    names = "config.json items.json templates.json dataset.json dataset.safetensors"
    for name in [*names.split(), "metrics.jsonl", "results.json"]:
        assert (out / name).is_file(), name
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all("valid" in r and 0.0 <= r["valid"]["NDCG@10"] <= 1.0 for r in log)
    assert results["test"]["users"] == 60
    assert log[1]["train_loss"] < log[0]["train_loss"]  # it learns something
    ranks = json.loads((out / "ranks.json").read_text())  # per user, for paired comparisons
    for split in ("valid", "test"):
        assert metrics(np.array(ranks[split]["ranks"])) == results[split]
        assert ranks[split]["users"] == rec.split_users(split)


def test_reload_gives_identical_rankings(trained):
    rec, out, _ = trained
    again = KP4SR.from_pretrained(out)
    for a, b in zip(rec.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    s = rec.split.test[:8]
    r1 = rec.rank([x.user for x in s], [x.history for x in s])
    r2 = again.rank([x.user for x in s], [x.history for x in s])
    np.testing.assert_array_equal(r1.items, r2.items)
    assert again.evaluate("test") == rec.evaluate("test")


def test_recommend_known_and_new_users(trained):
    rec, _, _ = trained
    out = rec.recommend(users=["3"], k=5)[0]
    assert len(out) == 5
    ids = [r["item"] for r in out]
    assert len(set(ids)) == 5 and all(i in rec.dataset.items for i in ids)
    seen = {rec.dataset.items[i] for i in rec.dataset.sequences[rec.user_index("3")]}
    assert not seen & set(ids)  # earlier items are excluded by default
    hist = [["1", "2", "3"], ["7"]]
    many = rec.recommend(histories=hist, k=4)
    assert [len(x) for x in many] == [4, 4]
    assert not {"1", "2", "3"} & {r["item"] for r in many[0]}
    assert all(r["title"] for r in many[1])


def test_unknown_ids_are_clear_errors(trained):
    from kp4sr.errors import ConfigError

    rec, _, _ = trained
    with pytest.raises(ConfigError, match="unknown item 'nope'"):
        rec.recommend(histories=[["nope"]])
    with pytest.raises(ConfigError, match="unknown user"):
        rec.recommend(users=["99999"])


def test_explain_matches_the_tree(trained):
    rec, _, _ = trained
    info = rec.explain(user="5")
    vis = np.array(info["visible"])
    L = len(info["tokens"])
    assert vis.shape == (L, L)
    nodes = info["nodes"]
    assert nodes[0]["parent"] is None and nodes[0]["kind"] == "root"
    items = [n for n in nodes if n["kind"] == "item"]
    facts = [n for n in nodes if n["kind"] == "fact"]
    assert items and facts
    root_word = 0  # the MPP's first token is a root word
    for f in facts:
        assert vis[root_word, f["start"]] == 0 and vis[f["start"], root_word] == 0
    for f in facts:
        parent = nodes[f["parent"]]
        assert vis[f["start"], parent["start"]] == 1
    # facts of different items never see each other
    by_item = {}
    for f in facts:
        p = f
        while nodes[p["parent"]]["kind"] != "item":
            p = nodes[p["parent"]]
        by_item.setdefault(p["parent"], []).append(f)
    if len(by_item) >= 2:
        a, b = list(by_item.values())[:2]
        assert vis[a[0]["start"], b[0]["start"]] == 0


def test_cli_train_evaluate_recommend_explain(tmp_path, capsys):
    run = tmp_path / "cli-run"
    opts = "--epochs 1 --max-length 48 --degree 2 --samples-per-epoch 256 --beams 10 --quiet"
    rc = main(["train", "--dataset", "toy", "--out", str(run), *opts.split()])
    assert rc == 0
    capsys.readouterr()
    ranks_file = tmp_path / "ranks-valid.json"
    args = ["evaluate", str(run), "--split", "valid", "--json", "--max-users", "40"]
    assert main([*args, "--ranks", str(ranks_file)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "users"} <= set(res)
    assert res["users"] == 40
    per_user = json.loads(ranks_file.read_text())["valid"]  # the ranks behind those metrics
    assert len(per_user["users"]) == 40 and metrics(np.array(per_user["ranks"])) == res
    assert main(["recommend", str(run), "--user", "1", "-k", "3", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 3 and {"item", "title"} <= set(recs[0])
    assert main(["recommend", str(run), "--history", "4,5,6", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10
    png = tmp_path / "mask.png"
    assert main(["explain", str(run), "--user", "1", "--json", "--png", str(png)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"nodes", "visible"} <= set(info) and png.stat().st_size > 1000
    # a bad request is one line on stderr and exit status 2
    assert main(["recommend", str(run), "--history", "4,no-such-item"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-item" in err[0]
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_no_knowledge_and_no_tree_mask_switches(small_toy):
    base = KP4SR.create(Config(**SMALL), dataset=small_toy)
    s = base.split.test[0]
    full = base.prompt(s)
    mpp_only = KP4SR.create(Config(**SMALL, knowledge=False), dataset=small_toy).prompt(s)
    assert len(mpp_only.input_ids) < len(full.input_ids)
    assert all(kind[0] != "fact" for kind in mpp_only.nodes)
    flat = KP4SR.create(Config(**SMALL, tree_mask=False), dataset=small_toy)
    assert np.array(flat.explain(user=small_toy.users[0])["visible"]).all()
    assert not np.array(base.explain(user=small_toy.users[0])["visible"]).all()


def test_no_user_ids_writes_no_user_in_any_prompt(small_toy):
    from kp4sr.recommender import NEW_USER

    base = KP4SR.create(Config(**SMALL), dataset=small_toy)
    anon = KP4SR.create(Config(**SMALL, user_ids=False), dataset=small_toy)
    a, b = anon.split.test[0], anon.split.test[1]
    assert a.user != b.user
    assert anon.user_text(a.user) == anon.user_text(b.user) == NEW_USER
    text = anon.tokenizer.decode(anon.prompt(a).input_ids)
    assert small_toy.users[a.user] not in text.split()
    assert base.user_text(a.user) == small_toy.users[a.user]
    assert np.array_equal(
        anon.prompt(a).input_ids, base.builder.build(NEW_USER, a.history).input_ids
    )


def write_generic(ds, folder):
    """Write a Dataset in the documented generic format (items referenced directly by ID)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user\titem\ttimestamp"]
    for u, seq in zip(ds.users, ds.sequences):
        lines += [f"{u}\t{ds.items[i]}\t{1000 + t}" for t, i in enumerate(seq)]
    (folder / "interactions.tsv").write_text("\n".join(lines) + "\n")
    titles = ["item\ttitle"] + [f"{i}\t{t}" for i, t in zip(ds.items, ds.titles)]
    (folder / "items.tsv").write_text("\n".join(titles) + "\n")
    strip = lambda e: e[len("item:") :] if e.startswith("item:") else e  # noqa: E731
    triples = ["head\trelation\ttail"] + [
        f"{strip(h)}\t{r}\t{strip(t)}" for h, r, t in ds.kg.triples()
    ]
    (folder / "triples.tsv").write_text("\n".join(triples) + "\n")
    names = ["entity_id\tname"] + [
        f"{e}\t{n}" for e, n in zip(ds.kg.entities, ds.kg.names) if n and not e.startswith("item:")
    ]
    (folder / "entity_names.tsv").write_text("\n".join(names) + "\n")


def test_cli_on_a_generic_folder_and_its_errors(tmp_path, capsys, small_toy):
    data = tmp_path / "mydata"
    write_generic(small_toy, data)
    assert main(["data", "stats", "--dataset", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 60 and stats["items"] <= 40
    assert stats["kg_triples"] == small_toy.kg.num_triples
    run = tmp_path / "run"
    opts = "--epochs 1 --max-length 48 --degree 2 --beams 5 --quiet"
    opts += " --item-tokens digits --item-index sequential"
    assert main(["train", "--dataset", str(data), "--out", str(run), *opts.split()]) == 0
    rec = KP4SR.from_pretrained(run)
    assert rec.dataset.name == "mydata" and rec.config.item_tokens == "digits"
    # the sequential numbering follows first appearance in the interactions file
    first = rec.dataset.sequences[0][0]
    assert rec.numbers[first] == 1
    capsys.readouterr()
    # a malformed line: one line naming the file and the line, exit status 2
    bad = tmp_path / "bad"
    write_generic(small_toy, bad)
    rows = (bad / "interactions.tsv").read_text().splitlines()
    rows[2] = "only-one-field"
    (bad / "interactions.tsv").write_text("\n".join(rows) + "\n")
    assert main(["train", "--dataset", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interactions.tsv" in err[0] and "line 3" in err[0]
    # a relation without template is an error naming it, unless --generic-templates
    odd = tmp_path / "odd"
    write_generic(small_toy, odd)
    with (odd / "triples.tsv").open("a") as f:
        f.write(f"{small_toy.items[0]}\tfilm.mood\tgenre:comedy\n")
    assert main(["data", "stats", "--dataset", str(odd)]) == 0  # stats need no templates
    capsys.readouterr()
    assert main(["train", "--dataset", str(odd), "--out", str(tmp_path / "y")]) == 2
    assert "film.mood" in capsys.readouterr().err
    cfg = Config(dataset=str(odd), generic_templates=True, max_length=48)
    rec = KP4SR.create(cfg)
    assert rec.relation_templates["film.mood"] == "The mood of [X] is [Y]."


def test_backbone_from_a_local_checkpoint_folder(tmp_path, small_toy):
    """--backbone PATH loads a Hugging Face T5 folder and its tokenizer (here: one we made)."""
    first = KP4SR.create(Config(**SMALL), dataset=small_toy)
    ckpt = tmp_path / "my-t5"
    first.model.save_pretrained(ckpt)
    first.tokenizer.save_pretrained(ckpt)
    rec = KP4SR.create(Config(**{**SMALL, "backbone": str(ckpt), "epochs": 1}), dataset=small_toy)
    assert len(rec.tokenizer) == len(first.tokenizer)
    for a, b in zip(first.model.state_dict().values(), rec.model.state_dict().values()):
        assert torch.equal(a, b)
    res = fit(rec, tmp_path / "run", progress=False)
    assert res["test"]["users"] == 60
    again = KP4SR.from_pretrained(tmp_path / "run")
    assert again.config.backbone == str(ckpt)
    from kp4sr.errors import ConfigError

    with pytest.raises(ConfigError, match="neither a size preset"):
        KP4SR.create(Config(backbone=str(tmp_path / "nope")), dataset=small_toy)


def test_beam_agrees_with_exact_full_ranking_when_wide_enough(trained):
    rec, _, _ = trained
    n = len(rec.dataset.items)
    rec.config.beams = n  # every item fits in the beam
    try:
        beam = rec.evaluate("test", mode="beam")
        full = rec.evaluate("test", mode="full")
    finally:
        rec.config.beams = SMALL["beams"]
    for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"):
        assert beam[key] == pytest.approx(full[key], abs=1e-9), key
    s = rec.split.test[:6]
    ranked = rec.rank([x.user for x in s], [x.history for x in s], beams=n)
    prompts = [rec.prompt(x) for x in s]
    from kp4sr.decoding import full_scores
    from kp4sr.prompts import collate

    batch = collate(prompts, rec.tokenizer.pad_token_id)
    sc = full_scores(rec.model, batch, rec.codes, rec.tokenizer.eos_token_id, True)
    np.testing.assert_allclose(ranked.scores, -np.sort(-sc, axis=1), rtol=1e-4, atol=1e-4)


def test_unconstrained_beam_reports_invalid_ids(small_toy):
    from kp4sr.decoding import INVALID

    rec = KP4SR.create(Config(**{**SMALL, "item_tokens": "digits"}), dataset=small_toy)
    res = rec.evaluate("valid", mode="unconstrained")
    assert 0.0 < res["invalid_share"] <= 1.0  # an untrained model writes many non-IDs
    s = rec.split.valid[:5]
    free = rec.rank([x.user for x in s], [x.history for x in s], constrained=False)
    assert (free.items == INVALID).any()
    fixed = rec.rank([x.user for x in s], [x.history for x in s])
    assert (fixed.items >= 0).all()
    from kp4sr.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown evaluation mode"):
        rec.evaluate("valid", mode="greedy")


def test_same_seed_same_weights_whatever_the_worker_count(tmp_path, small_toy):
    """Every random choice is seeded by (seed, epoch, batch): runs repeat, with or without
    DataLoader worker processes."""
    cfg = {**SMALL, "epochs": 1, "samples_per_epoch": 96}
    states = []
    for k, workers in enumerate((0, 0, 2)):
        rec = KP4SR.create(Config(**cfg, workers=workers), dataset=small_toy)
        fit(rec, tmp_path / f"run{k}", progress=False)
        states.append(rec.model.state_dict())
    for other in states[1:]:
        for name, value in states[0].items():
            assert torch.equal(value, other[name]), name


def test_time_budget_stops_after_the_epoch_that_passes_it(tmp_path, small_toy):
    """``max_minutes``: a run with a tiny budget stops after its first epoch, validated, with
    its results written; without a budget the same run trains every epoch."""
    cfg = {**SMALL, "epochs": 3, "samples_per_epoch": 32}
    rec = KP4SR.create(Config(**cfg, max_minutes=1e-6), dataset=small_toy)
    res = fit(rec, tmp_path / "budget", progress=False)
    lines = (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    assert res["best_epoch"] == 1 and "valid" in json.loads(lines[0])
    rec = KP4SR.create(Config(**cfg), dataset=small_toy)
    fit(rec, tmp_path / "all", progress=False)
    assert len((tmp_path / "all" / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("precision, want", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_training_autocast(tmp_path, small_toy, precision, want):
    """``--precision bf16`` trains the T5's matrix products in bf16 on a CPU too (fp32 weights);
    ``fp32`` and the CPU's ``auto`` keep them in fp32. Seen from inside the training steps."""
    cfg = {**SMALL, "epochs": 1, "samples_per_epoch": 64}
    rec = KP4SR.create(Config(**cfg, precision=precision), dataset=small_toy)
    seen: set[torch.dtype] = set()
    layer = rec.model.get_encoder().block[0].layer[1].DenseReluDense.wi

    def record(module, inputs, output):
        if module.training:
            seen.add(output.dtype)

    layer.register_forward_hook(record)
    res = fit(rec, tmp_path / precision, progress=False)
    assert seen == {want}
    assert all(p.dtype == torch.float32 for p in rec.model.parameters())
    assert np.isfinite(res["valid"]["NDCG@10"])


def test_precision_is_checked(small_toy):
    from kp4sr.errors import ConfigError
    from kp4sr.model import train_in_bf16

    with pytest.raises(ConfigError, match="--precision is 'fp16'"):
        KP4SR.create(Config(**SMALL, precision="fp16"), dataset=small_toy)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not train_in_bf16("auto", cpu) and train_in_bf16("auto", cuda)
    assert train_in_bf16("bf16", cpu) and not train_in_bf16("fp32", cuda)
    with pytest.raises(ValueError, match="precision"):
        train_in_bf16("half", cpu)


def test_relations_keeps_only_the_listed_relations_in_that_order(tmp_path, small_toy):
    """``--relations directed_by,genre``: prompts hold only those facts, directors first in
    evaluation (degree 1: an item's one fact is its director); the run folder keeps the choice."""
    from kp4sr.errors import ConfigError
    from kp4sr.prompts import PromptConfig

    cfg = Config(**SMALL, relations="directed_by, genre")
    rec = KP4SR.create(cfg, dataset=small_toy)
    kg = rec.dataset.kg
    assert kg.relations == ["directed_by", "genre"]
    by_name = dict(zip(small_toy.kg.relations, np.bincount(small_toy.kg.rels)))
    assert np.bincount(kg.rels).tolist() == [by_name["directed_by"], by_name["genre"]]
    one = rec.new_builder(PromptConfig(hop=1, degree=1, max_length=512, knowledge=True))
    s = rec.split.test[0]
    prompt = one.build(rec.user_text(s.user), s.history)
    assert len(prompt.facts) == len(prompt.items) > 0
    assert {kg.relations[r] for r in prompt.facts[:, 1]} == {"directed_by"}
    rec.save_pretrained(tmp_path / "run")
    assert KP4SR.from_pretrained(tmp_path / "run").dataset.kg.relations == kg.relations
    with pytest.raises(ConfigError, match="unknown actor; the KG has: genre, films_of_genre"):
        KP4SR.create(Config(**SMALL, relations="genre,actor"), dataset=small_toy)
    with pytest.raises(ConfigError, match="each relation at most once"):
        KP4SR.create(Config(**SMALL, relations="genre,genre"), dataset=small_toy)


def test_train_exclude_seen_trains_and_needs_single_item_tokens(tmp_path, small_toy):
    """``--train-exclude-seen``: every training batch marks exactly the first tokens of the
    items its users had before the target; a run trains with it; digit item IDs are refused."""
    from kp4sr.training import _Batches

    cfg = {**SMALL, "epochs": 1, "samples_per_epoch": 64, "train_exclude_seen": True}
    rec = KP4SR.create(Config(**cfg), dataset=small_toy)
    train = rec.split.train
    order = np.arange(len(train))[::-1][: rec.config.batch_size]
    batch, _ = _Batches(rec, train, order, 1)[0]
    assert batch.exclude.shape == (len(order), rec.model.config.vocab_size)
    for row, j in enumerate(order):
        s = train[int(j)]
        had = set(rec.dataset.sequences[s.user][: s.position].tolist()) - {s.target}
        want = sorted(int(rec.codes.of(i)[0]) for i in had)
        assert np.flatnonzero(batch.exclude[row].numpy()).tolist() == want
    assert batch.exclude.any()
    res = fit(rec, tmp_path / "run", progress=False)
    assert np.isfinite(res["valid"]["NDCG@10"])
    with pytest.raises(ConfigError, match="needs --item-tokens single"):
        KP4SR.create(Config(**{**cfg, "item_tokens": "digits"}), dataset=small_toy)


def test_cross_attention_mpp_hides_knowledge_tokens_from_the_decoder(tmp_path, small_toy):
    """``--cross-attention mpp``: the decoder reads exactly the MPP's span of each prompt (its
    item IDs included); whatever the encoder put on knowledge tokens does not change the loss,
    while with ``all`` it does; beam search and the exact full ranking still agree."""
    from kp4sr.decoding import full_scores
    from kp4sr.model import cross_mask, encode
    from kp4sr.prompts import collate

    cfg = {**SMALL, "epochs": 1, "samples_per_epoch": 64, "cross_attention": "mpp"}
    rec = KP4SR.create(Config(**cfg), dataset=small_toy)
    fit(rec, tmp_path / "run", progress=False)
    s = rec.split.test[:6]
    prompts = [rec.prompt(x) for x in s]
    targets = [np.append(rec.target_tokens(x.target), []) for x in s]
    batch = collate(prompts, rec.tokenizer.pad_token_id, targets)
    mask = cross_mask(rec.model, batch).bool()
    for k, p in enumerate(prompts):  # the root's span is the whole MPP, item IDs inside it,
        want = np.zeros(batch.input_ids.shape[1], dtype=bool)  # and the root's closing </s>
        want[p.spans[0, 0] : p.spans[0, 1]] = True
        assert p.node_of_token[-1] == 0 and p.input_ids[-1] == rec.tokenizer.eos_token_id
        want[len(p.input_ids) - 1] = True
        np.testing.assert_array_equal(mask[k].numpy(), want)
        assert len(p.facts) and not want[len(p.input_ids) - 2]  # a fact token is hidden
    model = rec.model.eval()
    with torch.no_grad():
        enc = encode(model, batch, True).last_hidden_state
        noisy = torch.where(mask[..., None], enc, torch.randn_like(enc) * 5)

        def loss_with(states, att):
            out = model(encoder_outputs=(states,), attention_mask=att, labels=batch.labels)
            return float(out.loss)

        assert loss_with(noisy, mask.long()) == pytest.approx(loss_with(enc, mask.long()))
        everything = (batch.node_of_token >= 0).long()
        assert abs(loss_with(noisy, everything) - loss_with(enc, everything)) > 1e-3
    n = len(rec.dataset.items)
    ranked = rec.rank([x.user for x in s], [x.history for x in s], beams=n)
    sc = full_scores(model, batch, rec.codes, rec.tokenizer.eos_token_id, True)
    np.testing.assert_allclose(ranked.scores, -np.sort(-sc, axis=1), rtol=1e-4, atol=1e-4)
    assert KP4SR.from_pretrained(tmp_path / "run").model.config.kp4sr_cross_attention == "mpp"


def test_init_from_starts_a_run_from_an_earlier_runs_weights(tmp_path, trained, small_toy, capsys):
    """``--init-from RUN``: the new run's model starts as RUN's (here a P5-style run warm-started
    from a full KP4SR run), and so learns from there; a run with other item numbers, another
    tokenizer or another output scaling is refused, named, before anything trains."""
    from kp4sr.errors import DataError

    rec, out, _ = trained
    one = {**SMALL, "epochs": 1, "samples_per_epoch": 64}
    warm = KP4SR.create(Config(**one, knowledge=False, init_from=str(out)), dataset=small_toy)
    src = rec.model.state_dict()
    for k, v in warm.model.state_dict().items():
        assert torch.equal(v.cpu(), src[k].cpu()), k
    cold = KP4SR.create(Config(**one, knowledge=False), dataset=small_toy)
    assert not torch.equal(cold.model.shared.weight, warm.model.shared.weight)
    loss = {}
    for name, r in (("warm", warm), ("cold", cold)):
        fit(r, tmp_path / name, progress=False)
        log = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        loss[name] = json.loads(log[0])["train_loss"]
    assert loss["warm"] < loss["cold"] - 0.5, loss  # the earlier run's learning carries over
    saved = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert saved["init_from"] == str(out)
    # warm starts chain: a run warm-started from a warm-started run begins at the latter's
    # trained weights (a second phase of the base, then KP4SR from it; research log, try 38)
    chained = KP4SR.create(Config(**one, init_from=str(tmp_path / "warm")), dataset=small_toy)
    phase = KP4SR.from_pretrained(tmp_path / "warm").model.state_dict()
    for k, v in chained.model.state_dict().items():
        assert torch.equal(v.cpu().float(), phase[k].cpu().float()), k
    assert not torch.equal(chained.model.shared.weight, rec.model.shared.weight.to(torch.float32))
    # another seed would draw other item numbers; a warm start keeps the earlier run's (matched
    # by item ID), so a second training seed of a warm start is possible
    reseeded = KP4SR.create(Config(**one, seed=3), dataset=small_toy)
    assert not np.array_equal(reseeded.numbers, rec.numbers)
    warm3 = KP4SR.create(Config(**one, seed=3, init_from=str(out)), dataset=small_toy)
    np.testing.assert_array_equal(warm3.numbers, rec.numbers)
    assert torch.equal(warm3.model.shared.weight, rec.model.shared.weight.to(torch.float32))
    renamed = dataclasses.replace(small_toy, items=["elsewhere", *small_toy.items[1:]])
    with pytest.raises(DataError, match="dataset.json: --init-from: 1 of this run's items are no"):
        KP4SR.create(Config(**one, init_from=str(out)), dataset=renamed)
    with pytest.raises(DataError, match="tokenizer differs .*--vocab-size is 8000 there, 50 here"):
        KP4SR.create(Config(**one, vocab_size=50, init_from=str(out)), dataset=small_toy)
    # other knowledge (here one relation kept) would train another tokenizer from scratch; a
    # warm start reuses the earlier run's, so the weights still mean the same tokens
    first = small_toy.kg.relations[0]
    cold_kg = KP4SR.create(Config(**one, relations=first), dataset=small_toy)
    assert cold_kg.tokenizer.get_vocab() != rec.tokenizer.get_vocab()
    warm_kg = KP4SR.create(Config(**one, relations=first, init_from=str(out)), dataset=small_toy)
    assert warm_kg.tokenizer.get_vocab() == rec.tokenizer.get_vocab()
    assert torch.equal(warm_kg.model.shared.weight, rec.model.shared.weight.to(torch.float32))
    with pytest.raises(DataError, match="output is unscaled and this run.s is not"):
        KP4SR.create(Config(**one, tie_embeddings=True, init_from=str(out)), dataset=small_toy)
    with pytest.raises(DataError, match="another shape .*another --backbone"):
        KP4SR.create(Config(**one, backbone="small", init_from=str(out)), dataset=small_toy)
    with pytest.raises(DataError, match="not a kp4sr run folder"):
        KP4SR.create(Config(**one, init_from=str(tmp_path)), dataset=small_toy)
    # the command line: a run on another dataset is refused with one line, exit status 2
    run = tmp_path / "cli"
    assert main(["train", "--dataset", "toy", "--out", str(run), "--init-from", str(out)]) == 2
    assert "--init-from: it was trained on 40 items, this run has 199" in capsys.readouterr().err


def test_evaluate_on_train_ranks_each_users_last_training_target(trained, capsys):
    """``evaluate --split train``: one sample per user, the position just before validation,
    with the items before it as history and as the seen set; a model that learnt its training
    data ranks those targets better than the held-out ones."""
    from kp4sr.errors import ConfigError

    rec, out, _ = trained
    train = rec.eval_samples("train")
    valid = {s.user: s for s in rec.split.valid}
    assert [s.user for s in train] == sorted(valid)  # one per user, in user order
    for s in train:
        seq = rec.dataset.sequences[s.user]
        assert s.position == valid[s.user].position - 1 and s.target == seq[s.position]
        assert (
            s.history.tolist()
            == seq[max(0, s.position - rec.config.max_items) : s.position].tolist()
        )
    assert sum(1 for _ in rec.split.train) > len(train)
    ranks, _ = rec.user_ranks("train")
    assert len(ranks) == len(train) == len(rec.split_users("train"))
    got = rec.evaluate("train")
    assert got["users"] == len(train)
    assert got["HR@20"] >= rec.evaluate("valid")["HR@20"]
    with pytest.raises(ConfigError, match="evaluate on train, valid or test, not 'dev'"):
        rec.evaluate("dev")
    assert main(["evaluate", str(out), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["users"] == len(train)


def _assert_reload_refused(run, option: tuple[str, object, str], weight: tuple[str, str]) -> None:
    """A run folder is refused, with a named error, when config.json's ``option`` (field,
    value, message) disagrees with the model, and when ``weight`` (key, message) is missing
    from model.safetensors. The folder's config is restored between the two; its weights not."""
    from safetensors.torch import load_file, save_file

    from kp4sr.errors import DataError

    field, value, message = option
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, field: value}))
    with pytest.raises(DataError, match=message):
        KP4SR.from_pretrained(run)
    (run / "config.json").write_text(json.dumps(saved))
    key, message = weight
    weights = run / "model" / "model.safetensors"
    state = load_file(str(weights))
    del state[key]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(DataError, match=message):
        KP4SR.from_pretrained(run)


def _prompt_items(rec: KP4SR, batch, row: int) -> list[int]:
    """The items a batch row's MPP names, oldest first (from the item nodes' tokens)."""
    first = {int(t): i for i, t in enumerate(rec.codes.codes[:, 0])}
    nodes = batch.node_of_token[row].numpy()
    ids = batch.input_ids[row].numpy()
    n_items = int((batch.parents[row].numpy() == 0).sum())
    return [first[int(ids[nodes == n][0])] for n in range(1, n_items + 1)]


def test_train_history_random_trains_on_every_context_length(tmp_path, small_toy):
    """``--train-history random``: every training prompt names a suffix of the sample's history
    (never empty), its length varies over the batch, it is the same when drawn again (seeded by
    seed, epoch and batch), and a run trains with it; ``full`` names the whole history."""
    from kp4sr.training import _Batches

    cfg = {**SMALL, "epochs": 1, "samples_per_epoch": 64, "knowledge": False}
    rec = KP4SR.create(Config(**{**cfg, "train_history": "random"}), dataset=small_toy)
    train = rec.split.train
    order = np.arange(len(train))[::-1][: rec.config.batch_size]
    batch, _ = _Batches(rec, train, order, 1)[0]
    again, _ = _Batches(rec, train, order, 1)[0]
    assert torch.equal(batch.input_ids, again.input_ids)
    lengths = []
    for row, j in enumerate(order):
        hist = train[int(j)].history.tolist()
        named = _prompt_items(rec, batch, row)
        assert 1 <= len(named) <= len(hist) and hist[len(hist) - len(named) :] == named
        lengths.append((len(named), len(hist)))
    assert any(a < b for a, b in lengths) and any(a == b > 1 for a, b in lengths)
    full = KP4SR.create(Config(**cfg), dataset=small_toy)
    whole, _ = _Batches(full, train, order, 1)[0]
    for row, j in enumerate(order):
        assert _prompt_items(full, whole, row) == train[int(j)].history.tolist()
    res = fit(rec, tmp_path / "run", progress=False)
    assert np.isfinite(res["valid"]["NDCG@10"])
    with pytest.raises(ConfigError, match="--train-history is 'some'"):
        KP4SR.create(Config(**{**cfg, "train_history": "some"}), dataset=small_toy)


def test_eval_max_items_ranks_and_serves_from_the_last_items(trained, tmp_path, capsys):
    """``eval_max_items = k``: ranking, the full ranking, serving and explain read each history's
    last k items only, exactly as if the history held no more; ``kp4sr evaluate
    --eval-max-items`` sets it for one evaluation; out-of-range values are refused."""
    rec, out, _ = trained
    samples = rec.split.test[:12]
    users = [s.user for s in samples]
    hists = [s.history for s in samples]
    cut = [h[-2:] for h in hists]
    try:
        want = rec.rank(users, cut)
        want_full = rec.item_scores(
            [dataclasses.replace(x, history=x.history[-2:]) for x in samples]
        )
        rec.config.eval_max_items = 2
        got = rec.rank(users, hists)
        assert np.array_equal(got.items, want.items)
        assert np.allclose(got.scores, want.scores, atol=1e-5)
        assert np.allclose(rec.item_scores(samples), want_full, atol=1e-5)
        raw = [str(rec.dataset.items[i]) for i in hists[0]]
        shown = rec.explain(history=raw)["nodes"]
        assert sum(n["kind"] == "item" for n in shown) == min(2, len(raw))
        # the same scores from the last two items; all of the history stays excluded
        wide = [r for r in rec.recommend(histories=[raw[-2:]], k=20)[0] if r["item"] not in raw]
        assert rec.recommend(histories=[raw], k=5)[0] == wide[:5]
    finally:
        rec.config.eval_max_items = 0
    assert main(["evaluate", str(out), "--json", "--eval-max-items", "2", "--split", "valid"]) == 0
    two = json.loads(capsys.readouterr().out)
    rec.config.eval_max_items = 2
    try:
        assert two == rec.evaluate("valid")
    finally:
        rec.config.eval_max_items = 0
    assert main(["evaluate", str(out), "--eval-max-items", "9"]) == 2
    assert "expected 0 (all) to the run's --max-items (5)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--eval-max-items is 6"):
        KP4SR.create(Config(**{**SMALL, "eval_max_items": 6}), dataset=rec.dataset)


def test_eval_windows_ranks_by_the_mean_probability_over_recent_windows(trained, capsys):
    """``eval_windows``: each item scores the log of its first ID token's mean probability over
    the prompts of the last 1, 2, .., all history items (checked by hand); ranking, the full
    ranking and ``kp4sr evaluate --eval-windows`` all sort by it, seen items excluded; the
    unconstrained mode and digit item IDs are refused."""
    from kp4sr.decoding import first_token_logp

    rec, out, _ = trained
    samples = rec.split.test[:10]
    first = rec.codes.codes[:, 0]

    def window(x, k):
        batch = rec.builder.build_batch([rec.user_text(x.user)], [x.history[-k:]])
        return np.exp(first_token_logp(rec.model, batch, first, rec.config.tree_mask)[0])

    want = np.stack(
        [
            np.log(np.mean([window(x, k) for k in range(1, len(x.history) + 1)], axis=0))
            for x in samples
        ]
    )
    rec.config.eval_windows = True
    try:
        got = rec.window_scores([x.user for x in samples], [x.history for x in samples])
        assert np.allclose(got, want, atol=1e-5)
        assert np.allclose(rec.item_scores(samples), want, atol=1e-5)
        seen = [rec.seen_items(x) for x in samples]
        ranked = rec.rank([x.user for x in samples], [x.history for x in samples], seen)
        for row in range(len(samples)):
            order = [i for i in np.argsort(-want[row], kind="stable") if i not in seen[row]]
            assert ranked.items[row, :5].tolist() == order[:5]
        beam = rec.evaluate("valid")
        assert rec.evaluate("valid", mode="full")["NDCG@10"] == pytest.approx(beam["NDCG@10"])
        with pytest.raises(ConfigError, match="evaluate in beam or full mode"):
            rec.evaluate("valid", mode="unconstrained")
    finally:
        rec.config.eval_windows = False
    assert main(["evaluate", str(out), "--json", "--eval-windows", "--split", "valid"]) == 0
    assert json.loads(capsys.readouterr().out) == beam
    with pytest.raises(ConfigError, match="--eval-windows needs --item-tokens single"):
        KP4SR.create(
            Config(**{**SMALL, "eval_windows": True, "item_tokens": "digits"}), dataset=rec.dataset
        )


def test_recency_embeddings_mark_each_history_item_by_its_position_from_the_end(
    tmp_path, trained, small_toy
):
    """``--recency-embeddings``: the tokens of the history's last item get slot 1, the oldest
    slot K, everything else 0; the table starts at zero (a warm start from a run without it
    encodes exactly as that run), trains, saves and reloads; a model with it encodes a reversed
    history otherwise than the same table at zero does; a run with it cannot start one without."""
    from kp4sr.errors import DataError
    from kp4sr.model import RECENCY, encode, recency_slots
    from kp4sr.prompts import collate

    rec0, out, _ = trained
    one = {**SMALL, "epochs": 1, "samples_per_epoch": 64}
    rec = KP4SR.create(Config(**one, recency_embeddings=True, init_from=str(out)), small_toy)
    table = getattr(rec.model, RECENCY)
    assert table.weight.shape == (rec.config.max_items + 1, rec.model.config.d_model)
    assert not table.weight.any()
    samples = rec.split.test[:8]
    prompts = [rec.prompt(x) for x in samples]
    batch = collate(prompts, rec.tokenizer.pad_token_id)
    slots = recency_slots(batch.node_of_token, batch.parents)
    for row, (x, p) in enumerate(zip(samples, prompts)):
        k = len(x.history)
        for j in range(1, k + 1):  # item node j's tokens: the MPP's j-th ID, oldest first
            start, end = p.spans[j]
            assert (slots[row, start:end] == k - j + 1).all()
        assert int((slots[row] > 0).sum()) == sum(e - s for s, e in p.spans[1 : k + 1])
    model0, model = rec0.model.eval(), rec.model.eval()
    with torch.no_grad():
        same = encode(model, batch, True).last_hidden_state
        torch.testing.assert_close(same, encode(model0, batch, True).last_hidden_state)
    res = fit(rec, tmp_path / "run", progress=False)
    assert np.isfinite(res["valid"]["NDCG@10"])
    trained_table = getattr(rec.model, RECENCY).weight.detach().clone()
    assert trained_table[1:].abs().sum() > 0 and not trained_table[0].any()  # slot 0 stays 0
    back = KP4SR.from_pretrained(tmp_path / "run")
    assert torch.equal(getattr(back.model, RECENCY).weight.detach(), trained_table)
    np.testing.assert_array_equal(
        back.rank([x.user for x in samples], [x.history for x in samples]).items,
        rec.rank([x.user for x in samples], [x.history for x in samples]).items,
    )
    with torch.no_grad():  # the order now reaches the encoder through the table
        getattr(back.model, RECENCY).weight[1] = 3.0
        rev = [rec.prompt(dataclasses.replace(x, history=x.history[::-1])) for x in samples]
        rb = collate(rev, rec.tokenizer.pad_token_id)
        with_table = encode(back.model.eval(), rb, True).last_hidden_state
        getattr(back.model, RECENCY).weight.zero_()
        without = encode(back.model, rb, True).last_hidden_state
    assert (with_table - without).abs().max() > 1e-3
    with pytest.raises(DataError, match="has recency embeddings and this run's has none"):
        KP4SR.create(Config(**one, init_from=str(tmp_path / "run")), dataset=small_toy)
    # a run folder whose options and model disagree about the table is refused, named; so is
    # one whose model config names the table but whose weights lack it
    _assert_reload_refused(
        tmp_path / "run",
        ("recency_embeddings", False, "recency_embeddings is false but the model has"),
        (f"{RECENCY}.weight", "missing from model.safetensors: kp4sr_recency.weight"),
    )


def test_item_knowledge_adds_each_items_kg_vector_to_its_input_and_output_embedding(
    tmp_path, trained, small_toy
):
    """``--item-knowledge``: every item token with shared KG tails gets their mean vector added
    to its input embedding and its logit gets the matching term; the vectors start at zero (a
    warm start from a run without them scores exactly as that run), train, save and reload
    from model/ alone; a run with them cannot start one without; option and model must agree;
    digit item IDs are refused."""
    from kp4sr.data import item_attributes
    from kp4sr.errors import DataError
    from kp4sr.model import ITEM_KNOWLEDGE

    rec0, out, _ = trained
    one = {**SMALL, "epochs": 1, "samples_per_epoch": 64}
    rec = KP4SR.create(Config(**one, item_knowledge="all", init_from=str(out)), small_toy)
    table = getattr(rec.model, ITEM_KNOWLEDGE)
    offsets, attrs, n_attrs = item_attributes(small_toy, "all")
    assert table.weight.shape == (n_attrs, rec.model.config.d_model) and n_attrs > 1
    assert not table.weight.any()
    samples = rec.split.test[:8]
    users, hist = [x.user for x in samples], [x.history for x in samples]
    np.testing.assert_allclose(rec.item_scores(samples), rec0.item_scores(samples), atol=1e-5)
    # the pairs: item j's one ID token has exactly item j's attributes
    tokens = rec.codes.codes[:, 0]
    for j in range(len(small_toy.items)):
        mine = table.attrs[table.rows == int(tokens[j])].tolist()
        assert sorted(mine) == sorted(attrs[offsets[j] : offsets[j + 1]].tolist())
    # a nonzero vector moves the input embedding and the logit of exactly the items that have it
    with torch.no_grad():
        table.weight[0] = 1.0
        plain = rec.model.get_input_embeddings().weight
        emb = rec.model.get_input_embeddings()(torch.as_tensor(tokens))
        has = np.array([0 in attrs[offsets[j] : offsets[j + 1]] for j in range(len(tokens))])
        moved = (emb - plain[torch.as_tensor(tokens)]).abs().sum(1).numpy() > 0
        assert has.any() and np.array_equal(moved, has)
        for stack in (rec.model.get_encoder(), rec.model.get_decoder()):  # what each stack reads
            got = stack.get_input_embeddings()(torch.as_tensor(tokens))
            torch.testing.assert_close(got, emb)
        h = torch.randn(3, rec.model.config.d_model)
        logits = rec.model.get_output_embeddings()(h)
        torch.testing.assert_close(logits, h @ (plain + table.vectors()).T)
        assert not torch.allclose(logits, h @ plain.T)
        table.weight.zero_()
    res = fit(rec, tmp_path / "run", progress=False)
    assert np.isfinite(res["valid"]["NDCG@10"])
    trained_table = getattr(rec.model, ITEM_KNOWLEDGE).weight.detach().clone()
    assert trained_table.abs().sum() > 0
    back = KP4SR.from_pretrained(tmp_path / "run")
    assert torch.equal(getattr(back.model, ITEM_KNOWLEDGE).weight.detach(), trained_table)
    np.testing.assert_allclose(back.item_scores(samples), rec.item_scores(samples), atol=1e-5)
    np.testing.assert_array_equal(back.rank(users, hist).items, rec.rank(users, hist).items)
    with pytest.raises(DataError, match="has knowledge-aware item embeddings and this run's"):
        KP4SR.create(Config(**one, init_from=str(tmp_path / "run")), dataset=small_toy)
    _assert_reload_refused(
        tmp_path / "run",
        ("item_knowledge", "", "item_knowledge is '' but the model has"),
        (f"{ITEM_KNOWLEDGE}.rows", "missing from model.safetensors: kp4sr_item_knowledge"),
    )
    with pytest.raises(ConfigError, match="--item-knowledge needs --item-tokens single"):
        KP4SR.create(
            Config(**{**SMALL, "item_knowledge": "all", "item_tokens": "digits"}), small_toy
        )
    with pytest.raises(ConfigError, match="item_knowledge: unknown relation"):
        KP4SR.create(Config(**{**SMALL, "item_knowledge": "nope"}), small_toy)


def test_item_knowledge_lr_sets_the_learning_rate_of_the_knowledge_vectors_only(small_toy):
    """``item_knowledge_lr``: AdamW gets the knowledge vectors in a group of their own at that
    multiple of the learning rate; every other weight stays in the first group at the rate."""
    from kp4sr.model import ITEM_KNOWLEDGE
    from kp4sr.training import param_groups

    cfg = Config(**{**SMALL, "item_knowledge": "all", "item_knowledge_lr": 20.0, "lr": 1e-3})
    rec = KP4SR.create(cfg, small_toy)
    groups = param_groups(rec.model, cfg)
    table = getattr(rec.model, ITEM_KNOWLEDGE).weight
    assert len(groups) == 2 and groups[1]["params"] == [table]
    assert groups[1]["lr"] == pytest.approx(2e-2) and "lr" not in groups[0]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in rec.model.parameters()
    )
    plain = KP4SR.create(Config(**SMALL), small_toy)
    assert len(param_groups(plain.model, plain.config)) == 1
