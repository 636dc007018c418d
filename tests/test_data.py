"""ffattn.data on the offline mirror: counts, parser, where files come from, tokenizers, batches.

The mirror is $FFATTN_DATA, else ../shared/data next to the repository. Everything runs with
FFATTN_OFFLINE=1 and a temporary cache and runs folder; the download code is exercised
against a local HTTP server only.
"""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ffattn import data as D
from ffattn.config import get_config
from ffattn.model import BOS, EOS, PAD, UNK

MIRROR = Path(os.environ.get("FFATTN_DATA")
              or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_mirror = pytest.mark.skipif(not (MIRROR / "multi30k").is_dir(),
                                  reason=f"no data mirror at {MIRROR} (set FFATTN_DATA)")


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FFATTN_DATA", str(MIRROR))
    monkeypatch.setenv("FFATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FFATTN_OFFLINE", "1")
    return tmp_path


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def small():
    """Tokenizers and splits of the first 2,000 Multi30k de-en pairs, vocabulary 1,000."""
    with pytest.MonkeyPatch.context() as mp, \
            __import__("tempfile").TemporaryDirectory() as tmp:
        mp.setenv("FFATTN_DATA", str(MIRROR))
        mp.setenv("FFATTN_CACHE", f"{tmp}/cache")
        mp.setenv("FFATTN_RUNS", f"{tmp}/runs")
        mp.setenv("FFATTN_OFFLINE", "1")
        if not (MIRROR / "multi30k").is_dir():
            pytest.skip(f"no data mirror at {MIRROR}")
        cfg = get_config("tiny", train_limit=2000, vocab_size=1000, max_len=30)
        before = snapshot(MIRROR)
        data = D.prepare(cfg)
        assert snapshot(MIRROR) == before, "prepare wrote into the read-only mirror"
        data.tokdir = cfg.run_dir() / "tokenizers"  # FFATTN_RUNS differs inside each test
        yield cfg, data


# ----------------------------------------------------------------------------- corpora

MULTI30K = {"train": 29000, "valid": 1014, "test": 1000, "test_2016_flickr": 1000,
            "test_2017_flickr": 1000, "test_2017_mscoco": 461, "test_2018_flickr": 1071}


@needs_mirror
@pytest.mark.parametrize("split", MULTI30K)
def test_multi30k_counts(split):
    for pair in ("de-en", "fr-en"):
        src, tgt = D.load_corpus("multi30k", pair, split)
        assert len(src) == len(tgt) == MULTI30K[split]
        assert all(s and s == s.strip() for s in src + tgt)
    src2, tgt2 = D.load_corpus("multi30k", "en-fr", split)
    assert (src2, tgt2) == (tgt, src)


@needs_mirror
@pytest.mark.parametrize("pair,n", [("de-en", 2271), ("en-de", 2271), ("fr-en", 2614),
                                    ("en-fr", 2614)])
def test_iwslt_test_talks(pair, n):
    src, tgt = D.load_corpus("iwslt2017", pair, "tst2016-2017")
    assert len(src) == len(tgt) == n and all(src) and all(tgt)
    s, t = pair.split("-")
    assert D.load_corpus("iwslt2017", f"{t}-{s}", "tst2016-2017") == (tgt, src)
    en = src if s == "en" else tgt
    assert en[0].startswith("We're at a tipping point")


@needs_mirror
def test_wit3_parser_on_real_files():
    counts = {}
    for name in ("de-en", "en-de", "fr-en", "en-fr"):
        data = (MIRROR / "iwslt2017-tst2016-2017" / f"{name}.tgz").read_bytes()
        for fname, text in D._tar_texts(data, r".*\.xml").items():
            segs = D.parse_wit3_xml(text)
            counts[fname] = len(segs)
            assert all(v and "<" not in v and "&amp;" not in v for v in segs.values())
    assert counts["IWSLT17.TED.tst2016.de-en.de.xml"] == 1133
    assert counts["IWSLT17.TED.tst2017.de-en.de.xml"] == 1138
    assert counts["IWSLT17.TED.tst2016.fr-en.fr.xml"] == 1159
    assert counts["IWSLT17.TED.tst2017.fr-en.fr.xml"] == 1455
    assert counts["IWSLT17.TED.tst2016.en-de.en.xml"] == 1133


def test_wit3_parser_inline():
    text = """<?xml version="1.0" encoding="UTF-8"?>
<mteval><srcset setid="x" srclang="german">
<doc docid="7" genre="lectures"><title>Q &amp; A</title>
<seg id="1"> Tom &amp; Jerry &lt;3 &#39;quoted&#39; </seg>
<seg id="2">zwei
Zeilen</seg>
</doc>
<doc docid="8"><seg id="1">R&D &quot;ok&quot;</seg></doc></srcset></mteval>"""
    assert D.parse_wit3_xml(text) == {("7", "1"): "Tom & Jerry <3 'quoted'",
                                      ("7", "2"): "zwei\nZeilen", ("8", "1"): 'R&D "ok"'}
    with pytest.raises(ValueError, match="duplicate"):
        D.parse_wit3_xml('<doc docid="1"><seg id="1">a</seg><seg id="1">b</seg></doc>')


@pytest.mark.parametrize("args,bad,choices", [
    (("wmt14", "de-en", "train"), "'wmt14'", "multi30k, iwslt2017"),
    (("multi30k", "de-fr", "train"), "'de-fr'", "de-en, en-de, fr-en, en-fr"),
    (("multi30k", "de-en", "dev"), "'dev'", "test_2016_flickr"),
    (("iwslt2017", "de-en", "test_2016_flickr"), "'test_2016_flickr'", "tst2016-2017"),
])
def test_bad_arguments(args, bad, choices):
    with pytest.raises(ValueError) as e:
        D.load_corpus(*args)
    assert bad in str(e.value) and choices in str(e.value)


def test_missing_data_is_one_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FFATTN_DATA", str(empty))
    for corpus, split, file in [("multi30k", "train", "train.de.gz"),
                                ("iwslt2017", "tst2016-2017", "de-en.tgz"),
                                ("iwslt2017", "train", "train.de.gz")]:
        with pytest.raises(FileNotFoundError) as e:
            D.load_corpus(corpus, "de-en", split)
        msg = str(e.value)
        assert isinstance(e.value, D.DataNotFoundError)
        assert file in msg and str(empty) in msg and str(tmp_path / "cache") in msg
        assert "FFATTN_OFFLINE=1" in msg and "set FFATTN_DATA" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.gz"))


@needs_mirror
def test_mirror_is_never_written():
    before = snapshot(MIRROR)
    for split in ("train", "valid", "test_2017_mscoco"):
        D.load_corpus("multi30k", "fr-en", split)
    D.load_corpus("iwslt2017", "en-fr", "tst2016-2017")
    assert snapshot(MIRROR) == before


def _fake_wit3(x="de") -> bytes:
    """A miniature of the official WIT3 training archive x-en.tgz."""
    def xml(lang, year, segs):
        body = "".join(f'<seg id="{i + 1}"> {s} </seg>\n' for i, s in enumerate(segs))
        return f'<mteval><refset><doc docid="{year}" genre="lectures">\n{body}</doc></refset></mteval>'
    files = {
        f"train.tags.{x}-en.{x}": "<url>http://x</url>\nHallo Welt .\n<talkid>1</talkid>\nZwei &\n",
        f"train.tags.{x}-en.en": "<url>http://x</url>\nHello world .\n<talkid>1</talkid>\nTwo &\n",
        f"IWSLT17.TED.dev2010.{x}-en.{x}.xml": xml(x, 1, ["eins", "zwei &amp; drei"]),
        f"IWSLT17.TED.dev2010.{x}-en.en.xml": xml("en", 1, ["one", "two &amp; three"]),
    }
    for y in (2010, 2011):
        files[f"IWSLT17.TED.tst{y}.{x}-en.{x}.xml"] = xml(x, y, [f"t{y}"])
        files[f"IWSLT17.TED.tst{y}.{x}-en.en.xml"] = xml("en", y, [f"e{y}"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(f"{x}-en/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def test_iwslt_from_local_wit3_archive(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "iwslt2017").mkdir(parents=True)
    (mirror / "iwslt2017" / "de-en.tgz").write_bytes(_fake_wit3())
    monkeypatch.setenv("FFATTN_DATA", str(mirror))
    before = snapshot(mirror)
    assert D.load_corpus("iwslt2017", "de-en", "train") == (["Hallo Welt .", "Zwei &"],
                                                            ["Hello world .", "Two &"])
    assert D.load_corpus("iwslt2017", "en-de", "valid") == (["one", "two & three"],
                                                            ["eins", "zwei & drei"])
    assert D.load_corpus("iwslt2017", "de-en", "test") == (["t2010", "t2011"], ["e2010", "e2011"])
    assert snapshot(mirror) == before
    assert (tmp_path / "cache" / "iwslt2017" / "de-en" / "train.de.gz").is_file()
    (mirror / "iwslt2017" / "de-en.tgz").chmod(0o644)
    (mirror / "iwslt2017" / "de-en.tgz").unlink()  # the prepared text in the cache suffices now
    assert D.load_corpus("iwslt2017", "de-en", "test")[0] == ["t2010", "t2011"]


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server over a folder: the download path without the internet."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@needs_mirror
def test_download_is_verified_and_cached(tmp_path, monkeypatch, http_root):
    root, url = http_root
    for lang in ("de", "en"):
        (root / f"val.{lang}.gz").write_bytes((MIRROR / "multi30k" / f"val.{lang}.gz").read_bytes())
    monkeypatch.setattr(D, "MULTI30K_URL", url + "/{name}")
    monkeypatch.setenv("FFATTN_DATA", str(tmp_path / "nothing"))
    monkeypatch.delenv("FFATTN_OFFLINE")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert len(D.load_corpus("multi30k", "de-en", "valid")[0]) == 1014
    cached = tmp_path / "cache" / "multi30k" / "val.de.gz"
    assert cached.is_file() and not list(cached.parent.glob(".*part"))
    # a corrupted download fails its checksum and leaves nothing behind
    (root / "val.fr.gz").write_bytes(gzip.compress(b"nicht das richtige\n"))
    with pytest.raises(D.DataNotFoundError, match="checksum"):
        D.load_corpus("multi30k", "en-fr", "valid")
    assert sorted(p.name for p in cached.parent.iterdir()) == ["val.de.gz", "val.en.gz"]


# ----------------------------------------------------------------------------- tokenizers

def test_tokenizers_round_trip_and_special_ids(small):
    cfg, data = small
    tok = data.tok
    for sp in (tok.src, tok.tgt):
        assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (PAD, BOS, EOS, UNK)
        assert sp.get_piece_size() <= 1000
    assert tok.meta["sentences"] == 2000 and tok.meta["vocab_size"] == 1000
    sents = data["valid"].tgt[:200]
    ids = tok.encode_tgt(sents)
    assert all(i[0] == BOS and i[-1] == EOS and EOS not in i[1:-1] for i in ids)
    assert np.mean([a == b for a, b in zip(tok.decode_tgt(ids), sents)]) > 0.95
    src = tok.encode_src(data["valid"].src[:50])
    assert all(i[-1] == EOS and BOS not in i for i in src)
    assert tok.decode_src(src) == tok.decode_src([i + [PAD, PAD] for i in src])
    # decoding stops at the first EOS and drops BOS / PAD, for lists and tensor rows
    row = [BOS] + ids[0][1:-1] + [EOS, 7, 8, PAD]
    assert tok.decode_tgt([row]) == tok.decode_tgt(torch.tensor([row])) == [sents[0]]


def test_tokenizers_are_cached_and_reloaded(small, monkeypatch):
    cfg, data = small
    folder = data.tokdir
    assert {p.name for p in folder.iterdir()} == set(D.Tokenizers.FILES)

    def no_training(*a, **k):
        raise AssertionError("retrained although the cached tokenizers fit")

    with monkeypatch.context() as mp:
        mp.setattr(D, "train_sentencepiece", no_training)
        again = D.prepare(cfg, splits=("test",), tokenizer_dir=folder)
    assert again.tok.src_proto == data.tok.src_proto and again.tok.tgt_proto == data.tok.tgt_proto
    assert again["test"].src_ids == data["test"].src_ids
    # other settings: trained afresh, same folder (a copy here, the module's stays intact)
    copy = folder.parent / "copy"
    copy.mkdir()
    for f in D.Tokenizers.FILES:
        (copy / f).write_bytes((folder / f).read_bytes())
    other = D.prepare(cfg.replace(vocab_size=300, train_limit=300), splits=(), tokenizer_dir=copy)
    assert other.tok.meta["vocab_size"] == 300 and other.tok.src_vocab_size <= 300
    assert D.Tokenizers.load(copy).src_proto == other.tok.src_proto


# ----------------------------------------------------------------------------- lengths, batches

def test_length_filter(small):
    cfg, data = small
    for split in ("train", "valid"):
        sp = data[split]
        s, t = D.lengths(sp.src_ids, sp.tgt_ids)
        assert s.max() <= cfg.max_len and t.max() <= cfg.max_len
        assert sp.raw_size == len(sp) + sp.dropped
    assert data["train"].dropped > 0  # max_len 30 bites on Multi30k
    assert len(data["test"]) == 1000  # test sets stay whole ...
    rep = data.length_report("test")  # ... and what exceeds max_len is reported
    assert rep["sentences"] == 1000 and rep["over"] == len(data["test"]) - len(
        D.length_filter(data["test"].src_ids, data["test"].tgt_ids, cfg.max_len))
    assert 0 < rep["over"] >= max(rep["src_over"], rep["tgt_over"])
    stats = data.length_stats("train")
    assert len(stats["src"]) == len(stats["tgt"]) == len(data["train"])


def test_length_filter_boundaries():
    src = [[5] * 3 + [EOS], [5] * 4 + [EOS], [5] * 3 + [EOS]]
    tgt = [[BOS] + [6] * 3 + [EOS], [BOS] + [6] * 3 + [EOS], [BOS] + [6] * 4 + [EOS]]
    assert D.length_filter(src, tgt, 4).tolist() == [0]
    assert D.length_filter(src, tgt, 5).tolist() == [0, 1, 2]


def test_batches_budget_and_coverage(small):
    cfg, data = small
    sp = data["train"]
    batches = data.batches("train", epoch=0)
    rows = Counter()
    for src, tgt in batches:
        assert src.dtype == tgt.dtype == torch.long and src.shape[0] == tgt.shape[0]
        assert src.shape[0] * max(src.shape[1], tgt.shape[1]) <= cfg.batch_tokens
        assert (tgt[:, 0] == BOS).all() and (src[:, -1] != PAD).any() and (tgt[:, -1] != PAD).any()
        for s, t in zip(src.tolist(), tgt.tolist()):
            rows[(tuple(x for x in s if x != PAD), tuple(x for x in t if x != PAD))] += 1
    assert rows == Counter(zip(map(tuple, sp.src_ids), map(tuple, sp.tgt_ids)))


def test_batches_are_seeded(small):
    cfg, data = small
    same = lambda a, b: len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    a = data.batches("train", seed=1, epoch=3)
    assert same(a, data.batches("train", seed=1, epoch=3))
    assert not same(a, data.batches("train", seed=1, epoch=4))
    assert not same(a, data.batches("train", seed=2, epoch=3))
    v = data.batches("valid")  # evaluation: no shuffling, sorted by length
    assert same(v, data.batches("valid", seed=5, epoch=9))


def test_batch_indices_cover_everything_once():
    rng = np.random.default_rng(0)
    costs = rng.integers(1, 120, size=500)
    costs[7] = 400  # over the budget: a batch of its own
    groups = D.batch_indices(costs, 300, shuffle=True, seed=0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(500))
    assert all(len(g) * costs[g].max() <= 300 or len(g) == 1 for g in groups)


def test_source_batches_restore_order(small):
    cfg, data = small
    sp = data["test"]
    hyps = [None] * len(sp)
    for idx, src in data.source_batches("test"):
        assert src.shape[0] * src.shape[1] <= cfg.batch_tokens
        for i, row in zip(idx, src.tolist()):
            hyps[i] = [x for x in row if x != PAD]
    assert hyps == sp.src_ids
