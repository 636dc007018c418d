"""IWSLT2017 end to end on miniature files in the real formats (tests/iwslt_fixtures.py).

A local HTTP server on 127.0.0.1 stands in for raw.githubusercontent.com (WIT3 archives) and
huggingface.co (the parquet export): data.py's URL constants are pointed at it with their
paths kept, so the server sees the very paths data.py would ask the real hosts for. Covered:
download, checksums and format checks, parsing, the four splits, the MAX_LEN filter, clear
errors for failed downloads and damaged files, and the paper preset training on the fixtures.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import re
import math
import socket
import tarfile
import threading
import urllib.parse
from pathlib import Path

import pandas
import pytest

import iwslt_fixtures as F
from ffattn import data as D
from ffattn.config import get_config

MIRROR = Path(os.environ.get("FFATTN_DATA")
              or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_TESTS = MIRROR / "iwslt2017-tst2016-2017"
needs_mirror = pytest.mark.skipif(not REAL_TESTS.is_dir(),
                                  reason=f"no IWSLT test talks at {REAL_TESTS} (set FFATTN_DATA)")
# the real URL templates, captured before any test points them at the local server
URLS = {name: getattr(D, name) for name in ("MULTI30K_URL", "IWSLT_TEST_URL", "IWSLT_TRAIN_URL",
                                            "HF_PARQUET_URL")}
SPLITS = ("train", "valid", "test", "tst2016-2017")
HAS_PARQUET = D._parquet_engine()  # before any test replaces it


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """An empty mirror (the real one would answer tst2016-2017 before any download), a fresh
    cache and runs folder, offline until a test starts the server."""
    (tmp_path / "mirror").mkdir()
    monkeypatch.setenv("FFATTN_DATA", str(tmp_path / "mirror"))
    monkeypatch.setenv("FFATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FFATTN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FFATTN_OFFLINE", "1")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setattr(D, "_parquet_engine", lambda: False)  # the Hub path only where a test asks
    return tmp_path


class Server:
    """Serves a folder; put(real_url, bytes) publishes a file where that URL's path points."""

    def __init__(self, root: Path):
        self.root, self.requests, self.broken = root, [], set()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                server.requests.append(path)
                if path in server.broken:  # promise the whole file, send half, hang up
                    data = (server.root / path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @staticmethod
    def path_of(url: str) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)

    def put(self, url: str, data: bytes) -> str:
        path = self.path_of(url)
        (self.root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path.lstrip("/")).write_bytes(data)
        return path

    def asked(self, pattern: str) -> list[str]:
        return [p for p in self.requests if re.search(pattern, p)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def point_urls(monkeypatch, base: str) -> None:
    """data.py's download URLs, host replaced by base, paths kept."""
    for name, url in URLS.items():
        monkeypatch.setattr(D, name, re.sub(r"^https://[^/]+", base, url))


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    s = Server(root)
    point_urls(monkeypatch, s.base)
    monkeypatch.delenv("FFATTN_OFFLINE")
    yield s
    s.close()


@pytest.fixture(params=["pyarrow", "stand-in"])
def parquet(request, monkeypatch):
    """Writes the Hub's shards: real parquet where pandas has an engine, else the stand-in
    format with pandas.read_parquet replaced by its reader (data.py's code runs unchanged)."""
    real = request.param == "pyarrow"
    if real and not HAS_PARQUET:
        pytest.skip("no parquet engine (pyarrow or fastparquet) in this environment: the real "
                    "parquet decoding is untested; the stand-in run covers the rest of the Hub path")
    monkeypatch.setattr(D, "_parquet_engine", lambda: True)
    if not real:
        monkeypatch.setattr(pandas, "read_parquet", F.read_standin)
    return functools.partial(F.parquet_bytes, real=real)


def trn_url(x):
    return URLS["IWSLT_TRAIN_URL"].format(x=x)


def tst_url(a, b):
    return URLS["IWSLT_TEST_URL"].format(a=a, b=b)


def hub_url(x, split, shard):
    return URLS["HF_PARQUET_URL"].format(x=x, split=split, shard=shard)


def publish_wit3(server, monkeypatch, x="de", train=True, tests=True):
    """The WIT3 archives of x on the server; the fixtures' sha256 replace the pinned ones."""
    if train:
        server.put(trn_url(x), F.wit3_train_archive(x))
    if tests:
        for name, data in F.wit3_test_archives(x).items():
            a, b = name.split("-")
            server.put(tst_url(a, b), data)
            monkeypatch.setitem(D.SHA256, f"iwslt2017-tst2016-2017/{name}.tgz",
                                hashlib.sha256(data).hexdigest())


def publish_hub(server, write, x="de"):
    for split, shards in F.hub_rows(x).items():
        for i, rows in enumerate(shards):
            server.put(hub_url(x, split, i), write(rows))


def expected(pair: str, split: str):
    s, t = pair.split("-")
    x = s if t == "en" else t
    xs, ens = F.EXPECTED[x][split]
    return (xs, ens) if s == x else (ens, xs)


def cached(root: Path) -> list[str]:
    base = root / "cache"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


# ----------------------------------------------------------------------------- the fixtures

@needs_mirror
def test_fixtures_have_the_layout_of_the_real_test_archives():
    """Same member names and XML skeleton as the mirror's archives; every tag that starts a
    line in a real file (some real talks lack the metadata, fr-en has none) is in the fixture."""
    def skeleton(data):
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names = sorted(tf.getnames())
            xml = {m.name: tf.extractfile(m).read().decode() for m in tf.getmembers() if m.name.endswith(".xml")}
        heads = {n: (re.findall(r"^<(\w+)", t, re.M)[:3], re.findall(r"^<srcset setid=\"iwslt2017-(tst201[67])\" "
                                                                r"srclang=\"(\w+)\">$", t, re.M))
                 for n, t in xml.items()}
        tags = {n: set(re.findall(r"^<(\w+)", t, re.M)) for n, t in xml.items()}
        return names, heads, tags
    for x in F.LANGS:
        for name, data in F.wit3_test_archives(x).items():
            names, heads, tags = skeleton(data)
            real_names, real_heads, real_tags = skeleton((REAL_TESTS / f"{name}.tgz").read_bytes())
            assert (names, heads) == (real_names, real_heads), name
            assert all(real_tags[n] <= tags[n] for n in tags), name


def test_fixtures_hold_pairs_over_max_len():
    cfg = get_config("paper")
    for x in F.LANGS:
        for split, (xs, ens) in F.EXPECTED[x].items():
            over = sum(len(a.split()) > cfg.max_len or len(b.split()) > cfg.max_len for a, b in zip(xs, ens))
            assert over == F.OVER[split] and len(xs) == len(ens) >= 9, (x, split)


# ----------------------------------------------------------------------------- the WIT3 archives

@pytest.mark.parametrize("x", F.LANGS)
def test_wit3_download_every_split_both_directions(env, server, monkeypatch, x):
    publish_wit3(server, monkeypatch, x)
    for pair in (f"{x}-en", f"en-{x}"):
        for split in SPLITS:
            assert D.load_corpus("iwslt2017", pair, split) == expected(pair, split), (pair, split)
    # each archive fetched once: the training archive's three splits are prepared together
    assert server.asked(r"\.tgz$") == [server.path_of(trn_url(x)), server.path_of(tst_url(x, "en")),
                                       server.path_of(tst_url("en", x))]
    assert server.asked("2017-01-trnted/texts/%s/en/%s-en.tgz" % (x, x))  # the real path
    assert cached(env) == sorted([f"iwslt2017/{x}-en.tgz", f"iwslt2017-tst2016-2017/{x}-en.tgz",
                                  f"iwslt2017-tst2016-2017/en-{x}.tgz"]
                                 + [f"iwslt2017/{x}-en/{s}.{lang}.gz" for s in ("train", "valid", "test")
                                    for lang in (x, "en")])
    # later runs need no network
    server.close()
    monkeypatch.setenv("FFATTN_OFFLINE", "1")
    for split in SPLITS:
        assert D.load_corpus("iwslt2017", f"{x}-en", split) == expected(f"{x}-en", split)


def test_wit3_parsing_details():
    """Tag lines dropped from train.tags, XML entities unescaped, segments keyed by doc."""
    f = D._wit3_members(F.wit3_train_archive("de"), "de")
    splits = D._iwslt_from_wit3(F.wit3_train_archive("de"), "de")
    xs, ens = splits["train"]
    assert not any(s.startswith("<") for s in xs + ens)
    assert any("Tom & Jerry" in s for s in xs)
    assert any("R&D" in s for s in ens)
    assert all("&amp;" not in s for split in splits.values() for s in split[0] + split[1])
    assert "train.tags.de-en.de" in f and len(f) == 2 + 2 * 7  # README is not read
    segs = D.parse_wit3_xml(f["IWSLT17.TED.dev2010.de-en.en.xml"])
    assert list(segs)[:2] == [("535", "1"), ("535", "2")] and ("531", "5") in segs


def test_wit3_archive_from_the_mirror(env):
    """An archive put in FFATTN_DATA by hand is used offline and never written to."""
    mirror = env / "mirror"
    (mirror / "iwslt2017").mkdir()
    (mirror / "iwslt2017" / "fr-en.tgz").write_bytes(F.wit3_train_archive("fr"))
    (mirror / "iwslt2017-tst2016-2017").mkdir()
    for name, data in F.wit3_test_archives("fr").items():
        (mirror / "iwslt2017-tst2016-2017" / f"{name}.tgz").write_bytes(data)
    before = {p: p.stat().st_mtime_ns for p in mirror.rglob("*")}
    for split in SPLITS:  # the mirror copies are not checked against the pinned sha256
        assert D.load_corpus("iwslt2017", "en-fr", split) == expected("en-fr", split)
    assert {p: p.stat().st_mtime_ns for p in mirror.rglob("*")} == before


# ----------------------------------------------------------------------------- the Hub's parquet

def test_hub_parquet_download(env, server, monkeypatch, parquet):
    publish_hub(server, parquet, "de")  # and no WIT3 archive at all
    for split in ("train", "valid", "test"):
        assert D.load_corpus("iwslt2017", "de-en", split) == expected("de-en", split), split
    assert D.load_corpus("iwslt2017", "en-de", "valid") == expected("en-de", "valid")  # prepared text
    hub = server.path_of(hub_url("de", "{s}", 0)).rsplit("/", 2)[0]
    assert server.requests == [f"{hub}/train/0000.parquet", f"{hub}/train/0001.parquet",
                               f"{hub}/train/0002.parquet",  # 404: no more shards
                               f"{hub}/validation/0000.parquet", f"{hub}/validation/0001.parquet",
                               f"{hub}/test/0000.parquet", f"{hub}/test/0001.parquet"]
    assert hub.endswith("/datasets/IWSLT/iwslt2017/resolve/refs/convert/parquet/iwslt2017-de-en")
    assert "iwslt2017/hf/de-en/train-0001.parquet" in cached(env)
    assert "iwslt2017/de-en/valid.en.gz" in cached(env)


def test_hub_and_wit3_give_the_same_corpus(env, server, monkeypatch, parquet):
    publish_hub(server, parquet, "fr")
    hub = {split: D.load_corpus("iwslt2017", "fr-en", split) for split in ("train", "valid", "test")}
    monkeypatch.setenv("FFATTN_CACHE", str(env / "cache2"))
    monkeypatch.setattr(D, "_parquet_engine", lambda: False)
    publish_wit3(server, monkeypatch, "fr", tests=False)
    assert hub == {split: D.load_corpus("iwslt2017", "fr-en", split) for split in hub}


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_hub_failure_falls_back_to_wit3(env, server, monkeypatch, parquet, damage):
    publish_hub(server, parquet, "de")
    if damage == "truncated":
        p = server.put(hub_url("de", "train", 1), truncated(parquet(F.hub_rows("de")["train"][1])))
    else:
        p = server.path_of(hub_url("de", "train", 0))
        (server.root / p.lstrip("/")).unlink()
    publish_wit3(server, monkeypatch, "de", tests=False)
    assert D.load_corpus("iwslt2017", "de-en", "train") == expected("de-en", "train")
    assert server.asked(re.escape(p)) and server.asked(r"de-en\.tgz$")
    assert not any(c.endswith("train-0001.parquet") for c in cached(env))  # a damaged shard is not kept


def test_no_parquet_engine_goes_straight_to_wit3(env, server, monkeypatch):
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_corpus("iwslt2017", "de-en", "valid")
    msg = str(e.value)
    assert "install pyarrow" in msg and f"{D.IWSLT_TRAIN_URL.format(x='de')} failed: HTTP Error 404" in msg
    assert not server.asked(r"\.parquet$") and server.asked(r"de-en\.tgz$")


# ----------------------------------------------------------------------------- checksums

def test_test_archives_must_match_the_pinned_sha256(env, server):
    """The tst2016-2017 archives are pinned: other bytes are refused and nothing is cached."""
    for name, data in F.wit3_test_archives("de").items():
        a, b = name.split("-")
        server.put(tst_url(a, b), data)
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_corpus("iwslt2017", "de-en", "tst2016-2017")
    assert f"checksum mismatch for {server.base}" in str(e.value)
    assert "de-en.tgz" in str(e.value) and cached(env) == []


@needs_mirror
def test_real_test_archives_pass_the_pinned_sha256(env, server):
    for name in ("fr-en", "en-fr"):
        a, b = name.split("-")
        server.put(tst_url(a, b), (REAL_TESTS / f"{name}.tgz").read_bytes())
    src, tgt = D.load_corpus("iwslt2017", "en-fr", "tst2016-2017")
    assert len(src) == len(tgt) == 2614
    for name in ("fr-en", "en-fr"):
        assert (env / "cache" / "iwslt2017-tst2016-2017" / f"{name}.tgz").read_bytes() == \
            (REAL_TESTS / f"{name}.tgz").read_bytes()


# ----------------------------------------------------------------------------- clear errors

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAULTS = {  # fault: what the message says, for the training archive / the pinned test archives
    "404": ("HTTP Error 404", "HTTP Error 404"),
    "refused": ("Connection refused", "Connection refused"),
    "truncated": ("damaged download from", "checksum mismatch for"),
    "garbage": ("damaged download from", "checksum mismatch for"),
    "dropped": ("transfer broke off", "transfer broke off"),
    "wrong archive": ("not a WIT3 de-en training archive", "checksum mismatch for"),
}


@pytest.mark.parametrize("split", ["train", "tst2016-2017"])
@pytest.mark.parametrize("fault", FAULTS)
def test_failed_download_is_one_clear_error(env, server, monkeypatch, fault, split):
    says = FAULTS[fault][split != "train"]
    publish_wit3(server, monkeypatch, "de")  # good files everywhere, then one goes wrong
    url = trn_url("de") if split == "train" else tst_url("de", "en")
    good = (server.root / server.path_of(url).lstrip("/")).read_bytes()
    bad = {"truncated": truncated(good), "garbage": b"<html>Rate limit exceeded</html>\n" * 20,
           "wrong archive": F.tgz({"train.de": "Hallo\n", "train.en": "Hello\n"}, "de-en")}
    if fault == "404":
        (server.root / server.path_of(url).lstrip("/")).unlink()
    elif fault == "refused":
        dead = f"http://127.0.0.1:{_closed_port()}"
        point_urls(monkeypatch, dead)
        url = re.sub(r"^http://[^/]+", dead, url)
    elif fault == "dropped":
        server.broken.add(server.path_of(url))
    else:
        server.put(url, bad[fault])
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_corpus("iwslt2017", "de-en", split)
    msg = str(e.value)
    lines = [ln for ln in msg.splitlines() if ln.strip().startswith("- download:") and "skipped" not in ln]
    assert len(lines) == 1 and says in lines[0], msg
    assert server.path_of(url) in lines[0] and lines[0].count("http://") == 1  # the URL, once
    assert msg.startswith("IWSLT2017 ") and "To fix:" in msg
    assert not [c for c in cached(env) if c.endswith(".tgz")]  # nothing half-right is kept


def test_archive_without_a_needed_file(env):
    """An archive that opens but lacks a member: DataDamagedError naming file and member."""
    mirror = env / "mirror" / "iwslt2017-tst2016-2017"
    mirror.mkdir()
    archives = F.wit3_test_archives("de")
    (mirror / "en-de.tgz").write_bytes(archives["en-de"])
    (mirror / "de-en.tgz").write_bytes(
        F.tgz({"IWSLT17.TED.tst2016.de-en.de.xml": "<mteval></mteval>"}, "de-en"))
    with pytest.raises(D.DataDamagedError) as e:
        D.load_corpus("iwslt2017", "de-en", "tst2016-2017")
    msg = str(e.value)
    assert str(mirror / "de-en.tgz") in msg and "IWSLT17.TED.tst2017.de-en.de.xml missing" in msg
    assert "\n" not in msg


def test_damaged_mirror_archive(env):
    mirror = env / "mirror" / "iwslt2017-tst2016-2017"
    mirror.mkdir()
    archives = F.wit3_test_archives("de")
    (mirror / "de-en.tgz").write_bytes(truncated(archives["de-en"]))
    (mirror / "en-de.tgz").write_bytes(archives["en-de"])
    with pytest.raises(D.DataDamagedError) as e:
        D.load_corpus("iwslt2017", "en-de", "tst2016-2017")
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError) and "\n" not in msg
    assert str(mirror / "de-en.tgz") in msg and "replace it with a good copy" in msg


@pytest.mark.parametrize("what", ["archive", "prepared"])
def test_damaged_cache_file(env, what):
    cache = env / "cache" / "iwslt2017"
    cache.mkdir(parents=True)
    if what == "archive":
        bad = cache / "de-en.tgz"
        bad.write_bytes(truncated(F.wit3_train_archive("de")))
    else:
        (cache / "de-en").mkdir()
        (cache / "de-en" / "train.de.gz").write_bytes(gzip.compress("Hallo\n".encode()))
        bad = cache / "de-en" / "train.en.gz"
        bad.write_bytes(truncated(gzip.compress(("Hello world .\n" * 200).encode())))
    with pytest.raises(D.DataDamagedError) as e:
        D.load_corpus("iwslt2017", "de-en", "train")
    msg = str(e.value)
    assert str(bad) in msg and "delete it and run again" in msg and "\n" not in msg
    bad.unlink()  # the fix the message gives; then the text is built again from an archive
    (env / "mirror" / "iwslt2017").mkdir()
    (env / "mirror" / "iwslt2017" / "de-en.tgz").write_bytes(F.wit3_train_archive("de"))
    assert D.load_corpus("iwslt2017", "de-en", "train") == expected("de-en", "train")


def test_damaged_cached_parquet_is_named(env, server, monkeypatch, parquet):
    publish_hub(server, parquet, "de")
    good = parquet(F.hub_rows("de")["validation"][0])
    bad = env / "cache" / "iwslt2017" / "hf" / "de-en" / "validation-0000.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[:4] + good[len(good) // 2:])  # magic bytes intact, body cut
    with pytest.raises(D.DataNotFoundError) as e:  # and no WIT3 archive to fall back on
        D.load_corpus("iwslt2017", "de-en", "valid")
    line = next(ln for ln in str(e.value).splitlines() if "Hugging Face parquet failed" in ln)
    assert str(bad) in line and "damaged" in line and "delete it" in line


def test_cli_prints_one_line(env, capsys):
    from ffattn.__main__ import main
    (env / "mirror" / "iwslt2017").mkdir()
    bad = env / "mirror" / "iwslt2017" / "de-en.tgz"
    bad.write_bytes(b"\x1f\x8b" + bytes(50))  # gzip magic, then nothing
    rc = main(["teacher", "--preset", "paper", "--d-model", "16", "--n-heads", "2", "--d-ff", "32",
               "--n-enc", "1", "--n-dec", "1", "--vocab-size", "60", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("ffattn: error: ") and str(bad) in err[0] and "replace it" in err[0]


# ----------------------------------------------------------------------------- MAX_LEN and the paper preset

TINY_PAPER = dict(d_model=16, n_heads=2, d_ff=32, n_enc=1, n_dec=1, vocab_size=60, epochs=1, warmup=10,
                  valid_bleu_sentences=0)


def test_max_len_filters_train_and_valid_only(env):
    (env / "mirror" / "iwslt2017").mkdir()
    (env / "mirror" / "iwslt2017" / "de-en.tgz").write_bytes(F.wit3_train_archive("de"))
    (env / "mirror" / "iwslt2017-tst2016-2017").mkdir()
    for name, data in F.wit3_test_archives("de").items():
        (env / "mirror" / "iwslt2017-tst2016-2017" / f"{name}.tgz").write_bytes(data)
    cfg = get_config("paper", **TINY_PAPER)
    assert cfg.max_len == 50 and cfg.corpus == "iwslt2017"
    data = D.prepare(cfg, splits=SPLITS)
    for split in SPLITS:
        sp, (src, tgt) = data[split], expected("de-en", split)
        assert sp.raw_size == len(src)
        long = [i for i, (a, b) in enumerate(zip(src, tgt)) if a == F.LONG["de"] or b == F.LONG["en"]]
        assert len(long) == F.OVER[split] >= 1
        if split in D.FILTERED:
            assert sp.dropped == len(long) and len(sp) == len(src) - len(long)
            assert sp.src == [a for i, a in enumerate(src) if i not in long]
            assert max(map(len, sp.src_ids)) <= cfg.max_len and max(len(t) - 1 for t in sp.tgt_ids) <= cfg.max_len
        else:
            assert sp.dropped == 0 and (sp.src, sp.tgt) == (src, tgt)
            assert data.length_report(split)["over"] == len(long)


def test_paper_preset_trains_on_downloaded_fixtures(env, server, monkeypatch):
    from ffattn import experiments
    publish_wit3(server, monkeypatch, "de")
    cfg = get_config("paper", **TINY_PAPER)
    t = experiments.teacher(cfg, progress=False)
    assert t.run_dir.parent == env / "runs" and t.run_dir.name.startswith("iwslt2017-de-en-paper-")
    assert (t.run_dir / "teacher.pt").is_file() and len(t.history) == 1
    row = t.history[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_loss"])
    assert len(t.data["train"]) == 36 and t.data["train"].dropped == 2
    assert len(t.data["valid"]) == 8 and len(t.data["test"]) == 13
    assert t.model.training is False and t.tokenizers.src_vocab_size <= 60
    assert server.asked(r"de-en\.tgz$")
    hyps = t.translate(["Ich sehe das Meer heute ."])
    assert len(hyps) == 1 and isinstance(hyps[0], str)
