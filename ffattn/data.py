"""Corpora, where their files come from, SentencePiece tokenizers, the length filter, batches.

    prepare(cfg) -> Data          the one entry point the training code calls

Two corpora, four directions each (de-en, en-de, fr-en, en-fr):

    multi30k    29k image captions; the whole corpus sits in the offline mirror (~2 MB).
    iwslt2017   TED talks, the paper's corpus. Its train/valid/test come from a download;
                the mirror holds only the later official test talks (split "tst2016-2017").

A file is looked up, in this order, in
    1. $FFATTN_DATA   a read-only mirror folder (multi30k/, iwslt2017-tst2016-2017/, ...):
                      nothing is ever written there;
    2. the cache      $FFATTN_CACHE, else ~/.cache/ffattn/data (downloads and files derived
                      from them land here, written atomically);
    3. the network    unless FFATTN_OFFLINE=1.
If all three fail, one DataNotFoundError says which file, every place looked and how to fix it.
A file that is there but cannot be read raises DataDamagedError, naming the file and the fix.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import http.client
import importlib.util
import io
import itertools
import json
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm
import torch

from .config import CORPORA, PAIRS
from .files import write_atomic
from .model import BOS, EOS, PAD, UNK

# Multi30k: split name -> file stem. "test" is the usual test set (the 2016 Flickr one).
MULTI30K_SPLITS = {
    "train": "train", "valid": "val", "test": "test_2016_flickr",
    "test_2016_flickr": "test_2016_flickr", "test_2017_flickr": "test_2017_flickr",
    "test_2017_mscoco": "test_2017_mscoco", "test_2018_flickr": "test_2018_flickr",
}
# IWSLT2017: train / valid (dev2010) / test (tst2010-2015) as on the Hugging Face Hub, plus the
# later official test talks, the only IWSLT data in the offline mirror.
IWSLT_SPLITS = ("train", "valid", "test", "tst2016-2017")

# Pinned commits, so the checksums below stay valid (the mirror README lists the same files).
MULTI30K_URL = ("https://raw.githubusercontent.com/multi30k/dataset/"
                "a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/{name}")
IWSLT_TEST_URL = ("https://raw.githubusercontent.com/hlt-mt/WIT3/"
                  "e43615b79232e9cc0fccc76d90fd1c658146d29d/archive/2017-01-ted-test/texts/"
                  "{a}/{b}/{a}-{b}.tgz")
IWSLT_TRAIN_URL = ("https://raw.githubusercontent.com/hlt-mt/WIT3/master/archive/"
                   "2017-01-trnted/texts/{x}/en/{x}-en.tgz")
HF_PARQUET_URL = ("https://huggingface.co/datasets/IWSLT/iwslt2017/resolve/"
                  "refs%2Fconvert%2Fparquet/iwslt2017-{x}-en/{split}/{shard:04d}.parquet")
TIMEOUT = 15  # seconds: a dead network should fail fast, not hang a notebook

SHA256 = {
    "multi30k/test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "multi30k/test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "multi30k/test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "multi30k/test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "multi30k/test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "multi30k/test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "multi30k/test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "multi30k/test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "multi30k/test_2017_mscoco.fr.gz": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "multi30k/test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "multi30k/test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "multi30k/test_2018_flickr.fr.gz": "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "multi30k/train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "multi30k/train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "multi30k/train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "multi30k/val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "multi30k/val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "multi30k/val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
    "iwslt2017-tst2016-2017/de-en.tgz": "b0034e3c957da26eaf3c573390c3fc669d509ea94c0b398889ad74bddadb4974",
    "iwslt2017-tst2016-2017/en-de.tgz": "0c786a6905618af716da365592594473481ba9548a922506aaf6c17f1aee27e4",
    "iwslt2017-tst2016-2017/en-fr.tgz": "755b1061ff258686d8c906525dc75035304b292320d59e5a78802b2923c204ad",
    "iwslt2017-tst2016-2017/fr-en.tgz": "8393e55847ba750290180f1fb62684abb8c09b890c52d4ebc5c2376e8e722e93",
}


class DataNotFoundError(FileNotFoundError):
    """A corpus file is in none of the places ffattn looks, and could not be downloaded."""


class DataDamagedError(RuntimeError):
    """A corpus file is there but cannot be read: truncated, corrupt or not the expected file."""


# ----------------------------------------------------------------------------- where files live

def data_dir() -> Path | None:
    """The read-only mirror folder named by $FFATTN_DATA, or None."""
    d = os.environ.get("FFATTN_DATA")
    return Path(d).expanduser() if d else None


def cache_dir() -> Path:
    """Where downloads and derived files go: $FFATTN_CACHE, else ~/.cache/ffattn/data."""
    d = os.environ.get("FFATTN_CACHE")
    return Path(d).expanduser() if d else Path.home() / ".cache" / "ffattn" / "data"


def offline() -> bool:
    """FFATTN_OFFLINE=1: never touch the network (tests, CI, air-gapped machines)."""
    return os.environ.get("FFATTN_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _roots() -> list[Path]:
    return [r for r in (data_dir(), cache_dir()) if r is not None]


def _local(rel: str) -> Path | None:
    for root in _roots():
        if (root / rel).is_file():
            return root / rel
    return None


def _places(rel: str) -> list[str]:
    d = data_dir()
    return [f"FFATTN_DATA: {d / rel}" if d else "FFATTN_DATA: (not set)",
            f"cache: {cache_dir() / rel}"]


def _not_found(what: str, rel: str, tried: list[str], hint: str = "") -> DataNotFoundError:
    lines = [f"{what}: file {rel!r} not found.", "Looked in:"]
    lines += [f"  - {p}" for p in _places(rel) + tried]
    lines += ["To fix: set FFATTN_DATA to a data mirror folder that holds it (e.g. the project's "
              "shared/data), or go online (unset FFATTN_OFFLINE) so ffattn downloads it into "
              f"{cache_dir()} (or $FFATTN_CACHE)."]
    if hint:
        lines.append(hint)
    return DataNotFoundError("\n".join(lines))


def _one_line(e: BaseException) -> str:
    """An error's message on one line (tarfile, for one, lists each method it tried on a line)."""
    return re.sub(r"\s*\n\s*", "; ", str(e).strip()) or type(e).__name__


def _failed(url: str, e: BaseException) -> str:
    """One 'Looked in' line for a failed download, naming the URL once."""
    msg = _one_line(e)
    return f"download: {msg}" if url in msg else f"download: {url} failed: {msg}"


def _damaged(path: Path, e: BaseException) -> DataDamagedError:
    d = data_dir()
    in_mirror = d is not None and d.resolve() in Path(path).resolve().parents
    fix = ("it is in the read-only mirror $FFATTN_DATA: replace it with a good copy" if in_mirror
           else "delete it and run again (ffattn then downloads or rebuilds it)")
    return DataDamagedError(f"{path} is damaged or not the expected file "
                            f"({type(e).__name__}: {_one_line(e)}). To fix: {fix}.")


def _read(path: Path, parse: Callable[[bytes], object]):
    """parse(the file's bytes); a file that does not parse raises DataDamagedError."""
    data = path.read_bytes()
    try:
        return parse(data)
    except Exception as e:  # truncated gzip or tar, bad UTF-8, missing members, ...
        raise _damaged(path, e) from e


def _check_gzip(data: bytes) -> None:
    if not gzip.decompress(data).strip():  # reading to the end also checks the CRC
        raise ValueError("empty gzip file")


def _check_tar(data: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        if not any(m.isfile() and m.size for m in tf.getmembers()):
            raise ValueError("archive holds no files")


def _check_parquet(data: bytes) -> None:
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError("not a parquet file")


def _download(url: str, rel: str, check: Callable[[bytes], None]) -> Path:
    """Fetch url into cache/rel, verify it (opens, non-empty, sha256 when known), then publish."""
    print(f"ffattn: downloading {url}", file=sys.stderr)
    req = urllib.request.Request(url, headers={"User-Agent": "ffattn"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            data = r.read()
    except http.client.HTTPException as e:  # e.g. IncompleteRead: the connection dropped
        raise OSError(f"{url}: transfer broke off ({type(e).__name__}: {_one_line(e)})") from e
    if not data:
        raise ValueError(f"empty download from {url}")
    if rel in SHA256 and hashlib.sha256(data).hexdigest() != SHA256[rel]:
        raise ValueError(f"checksum mismatch for {url}")
    try:
        check(data)
    except Exception as e:  # truncated, corrupt, an error page instead of the file, ...
        raise ValueError(f"damaged download from {url} ({type(e).__name__}: {_one_line(e)})") from e
    path = cache_dir() / rel
    write_atomic(path, data)
    return path


def fetch(rel: str, url: str | None, check: Callable[[bytes], None], what: str = "data") -> Path:
    """The local path of rel: mirror, then cache, then a verified download into the cache."""
    path = _local(rel)
    if path is not None:
        return path
    tried = []
    if url is None:
        tried.append("download: no known URL")
    elif offline():
        tried.append(f"download: skipped, FFATTN_OFFLINE=1 ({url})")
    else:
        try:
            return _download(url, rel, check)
        except (OSError, ValueError, tarfile.TarError, EOFError) as e:
            tried.append(_failed(url, e))
    raise _not_found(what, rel, tried)


# ----------------------------------------------------------------------------- reading text

def _lines(text: str) -> list[str]:
    # split on "\n" only: str.splitlines would also cut at U+2028, U+0085 inside a sentence
    if text.endswith("\n"):
        text = text[:-1]
    return [s.strip() for s in text.split("\n")] if text else []


def _read_gz_lines(path: Path) -> list[str]:
    return _read(path, lambda data: _lines(gzip.decompress(data).decode("utf-8")))


_WIT3 = re.compile(
    r'<doc\b[^>]*?\bdocid\s*=\s*"([^"]*)"'                                # group 1: docid
    r'|<seg\b[^>]*?\bid\s*=\s*"?([^"\s>]+)"?[^>]*>(.*?)</seg\s*>',        # groups 2, 3: seg
    re.IGNORECASE | re.DOTALL)


def parse_wit3_xml(text: str) -> dict[tuple[str, str], str]:
    """{(docid, seg id): sentence} of a WIT3/NIST XML file, entities unescaped, in file order.

    A regex, not xml.etree: some WIT3 files carry bare '&' or stray markup that a strict XML
    parser rejects, while the <doc docid=..> / <seg id=..>..</seg> structure is regular.
    """
    out: dict[tuple[str, str], str] = {}
    doc = ""
    for m in _WIT3.finditer(text):
        if m.group(1) is not None:
            doc = m.group(1)
            continue
        key = (doc, m.group(2))
        if key in out:
            raise ValueError(f"duplicate segment docid={doc!r} seg id={m.group(2)!r}")
        out[key] = html.unescape(m.group(3)).strip()
    return out


def _pair_segments(src: dict, tgt: dict, where: str) -> tuple[list[str], list[str]]:
    """Align two sides by (docid, seg id), in the first side's order."""
    if src.keys() != tgt.keys():
        only = sorted(set(src) ^ set(tgt))[:5]
        raise ValueError(f"{where}: the two sides' segments differ, e.g. {only}")
    keys = list(src)
    return [src[k] for k in keys], [tgt[k] for k in keys]


def _members(data: bytes, names: Sequence[str]) -> dict[str, str]:
    """{basename: text} of these members of an archive; a ValueError names any missing."""
    texts = _tar_texts(data, "|".join(map(re.escape, names)))
    missing = [n for n in names if n not in texts]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing from the archive")
    return texts


def _tar_texts(data: bytes, pattern: str) -> dict[str, str]:
    """{basename: text} of the archive members whose basename matches pattern (in memory)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for m in tf.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if m.isfile() and re.fullmatch(pattern, name):
                out[name] = tf.extractfile(m).read().decode("utf-8")
    return out


# ----------------------------------------------------------------------------- the corpora

def _check_args(corpus: str, pair: str, split: str) -> None:
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of: {', '.join(CORPORA)}")
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; choose one of: {', '.join(PAIRS)}")
    splits = tuple(MULTI30K_SPLITS) if corpus == "multi30k" else IWSLT_SPLITS
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for {corpus}; "
                         f"choose one of: {', '.join(splits)}")


def splits_of(corpus: str) -> tuple[str, ...]:
    """The split names load_corpus accepts for a corpus."""
    _check_args(corpus, PAIRS[0], "train")
    return tuple(MULTI30K_SPLITS) if corpus == "multi30k" else IWSLT_SPLITS


def load_corpus(corpus: str, pair: str, split: str) -> tuple[list[str], list[str]]:
    """(source sentences, target sentences) of one split, aligned and stripped.

    >>> src, tgt = load_corpus("multi30k", "de-en", "valid"); len(src)   # doctest: +SKIP
    1014
    """
    _check_args(corpus, pair, split)
    s, t = pair.split("-")
    if corpus == "multi30k":
        stem = MULTI30K_SPLITS[split]
        sides = []
        for lang in (s, t):
            rel = f"multi30k/{stem}.{lang}.gz"
            path = fetch(rel, MULTI30K_URL.format(name=f"{stem}.{lang}.gz"), _check_gzip,
                         what=f"Multi30k {split} ({lang})")
            sides.append(_read_gz_lines(path))
        src, tgt = sides
    elif split == "tst2016-2017":
        src, tgt = _iwslt_tst2016_2017(s, t)
    else:
        x = s if t == "en" else t  # the non-English language; both directions share the data
        xs, ens = _iwslt_split(x, split)
        src, tgt = (xs, ens) if t == "en" else (ens, xs)
    if len(src) != len(tgt):
        raise ValueError(f"{corpus} {pair} {split}: {len(src)} source vs {len(tgt)} target lines")
    return src, tgt


def _iwslt_tst2016_2017(s: str, t: str) -> tuple[list[str], list[str]]:
    """Pair the source-side XML of x-en with the source-side XML of en-x, by (docid, seg id)."""
    x = s if t == "en" else t
    sides, paths = {}, {}
    for a, b in ((x, "en"), ("en", x)):
        rel = f"iwslt2017-tst2016-2017/{a}-{b}.tgz"
        paths[a] = path = fetch(rel, IWSLT_TEST_URL.format(a=a, b=b), _check_tar,
                                what=f"IWSLT2017 tst2016-2017 ({a}-{b})")
        names = [f"IWSLT17.TED.tst{year}.{a}-{b}.{a}.xml" for year in ("2016", "2017")]
        sides[a] = _read(path, lambda data: _members(data, names))
    xs, ens = [], []
    for year in ("2016", "2017"):
        fx = sides[x][f"IWSLT17.TED.tst{year}.{x}-en.{x}.xml"]
        fe = sides["en"][f"IWSLT17.TED.tst{year}.en-{x}.en.xml"]
        a, b = _pair_segments(parse_wit3_xml(fx), parse_wit3_xml(fe),
                              f"tst{year} {x}-en ({paths[x]} and {paths['en']})")
        xs += a
        ens += b
    return (xs, ens) if s == x else (ens, xs)


def _iwslt_split(x: str, split: str) -> tuple[list[str], list[str]]:
    """(x sentences, en sentences) of train/valid/test: prepared text, else build it once.

    The prepared form is cache/iwslt2017/x-en/{split}.{x,en}.gz (also read from FFATTN_DATA).
    It is built from a WIT3 archive iwslt2017/x-en.tgz found locally, else from a download:
    the Hub's parquet export (when pandas can read parquet), else the WIT3 archive.
    """
    rels = [f"iwslt2017/{x}-en/{split}.{lang}.gz" for lang in (x, "en")]
    paths = [_local(r) for r in rels]
    if all(paths):
        return _read_gz_lines(paths[0]), _read_gz_lines(paths[1])
    tgz_rel, tried = f"iwslt2017/{x}-en.tgz", []
    tgz = _local(tgz_rel)
    if tgz is None and offline():
        tried.append("download: skipped, FFATTN_OFFLINE=1 (Hugging Face parquet, then "
                     + IWSLT_TRAIN_URL.format(x=x) + ")")
    elif tgz is None:
        if _parquet_engine():
            try:
                xs, ens = _iwslt_from_hub(x, split)
                _save_prepared(x, {split: (xs, ens)})
                return xs, ens
            except Exception as e:  # any failure here just means: try the WIT3 archive
                tried.append(f"download: Hugging Face parquet failed: {_one_line(e)}")
        else:
            tried.append("download: Hugging Face parquet skipped (install pyarrow to use it)")
        url = IWSLT_TRAIN_URL.format(x=x)
        try:
            tgz = _download(url, tgz_rel, lambda data: _wit3_members(data, x))
        except (OSError, ValueError, tarfile.TarError, EOFError) as e:
            tried.append(_failed(url, e))
    if tgz is None:
        raise _not_found(f"IWSLT2017 {x}-en {split}", rels[0], _places(tgz_rel) + tried,
                         hint=f"Or put the WIT3 archive {IWSLT_TRAIN_URL.format(x=x)} at "
                              f"<FFATTN_DATA or cache>/{tgz_rel}.")
    splits = _read(tgz, lambda data: _iwslt_from_wit3(data, x))
    _save_prepared(x, splits)
    return splits[split]


def _wit3_members(data: bytes, x: str) -> dict[str, str]:
    """The texts of a WIT3 training archive x-en.tgz; a ValueError if it is not one."""
    f = _tar_texts(data, rf"train\.tags\.{x}-en\.({x}|en)"
                         rf"|IWSLT17\.TED\.(dev2010|tst201[0-5])\.{x}-en\.({x}|en)\.xml")
    if not {f"train.tags.{x}-en.{x}", f"train.tags.{x}-en.en"} <= f.keys():
        raise ValueError(f"not a WIT3 {x}-en training archive: no train.tags.{x}-en.* inside")
    return f


def _iwslt_from_wit3(data: bytes, x: str) -> dict[str, tuple[list[str], list[str]]]:
    """All three splits out of the official WIT3 training archive x-en.tgz (in memory)."""
    f = _wit3_members(data, x)
    xs, ens = [], []
    for a, b in zip(_lines(f[f"train.tags.{x}-en.{x}"]), _lines(f[f"train.tags.{x}-en.en"])):
        if not (a.startswith("<") or b.startswith("<")):  # drop <url>, <talkid>, ... lines
            xs.append(a)
            ens.append(b)
    out = {"train": (xs, ens)}
    for split, years in (("valid", ["dev2010"]), ("test", [f"tst{y}" for y in range(2010, 2016)])):
        xs, ens = [], []
        for y in years:
            fx, fe = (f.get(f"IWSLT17.TED.{y}.{x}-en.{lang}.xml") for lang in (x, "en"))
            if fx is None or fe is None:
                continue  # not every pair has every year
            a, b = _pair_segments(parse_wit3_xml(fx), parse_wit3_xml(fe), f"{y} {x}-en")
            xs += a
            ens += b
        out[split] = (xs, ens)
    return out


def _parquet_engine() -> bool:
    return importlib.util.find_spec("pandas") is not None and any(
        importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _iwslt_from_hub(x: str, split: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    hub_split = {"valid": "validation"}.get(split, split)
    xs, ens = [], []
    for shard in range(100):
        url = HF_PARQUET_URL.format(x=x, split=hub_split, shard=shard)
        rel = f"iwslt2017/hf/{x}-en/{hub_split}-{shard:04d}.parquet"
        try:
            path = _local(rel) or _download(url, rel, _check_parquet)
        except urllib.error.HTTPError as e:
            if e.code == 404 and shard > 0:
                break  # no more shards
            raise OSError(f"{url}: {e}") from e
        except OSError as e:  # connection refused, a timeout, ...: name the URL
            raise OSError(f"{url}: {_one_line(e)}") from e
        try:
            rows = [(row[x].strip(), row["en"].strip()) for row in pd.read_parquet(path)["translation"]]
        except ImportError:
            raise
        except Exception as e:  # truncated, corrupt, or not the Hub's iwslt2017 schema
            raise _damaged(path, e) from e
        xs += [a for a, _ in rows]
        ens += [b for _, b in rows]
    return xs, ens


def _save_prepared(x: str, splits: dict) -> None:
    """Best effort: cache the prepared text so the archive is parsed once."""
    try:
        for split, (xs, ens) in splits.items():
            for lang, lines in ((x, xs), ("en", ens)):
                data = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
                write_atomic(cache_dir() / f"iwslt2017/{x}-en/{split}.{lang}.gz", data)
    except OSError as e:
        print(f"ffattn: could not cache prepared IWSLT text: {e}", file=sys.stderr)


# ----------------------------------------------------------------------------- tokenizers

# A constant, not os.cpu_count(): the thread count changes how the EM statistics are split and
# summed, hence the pieces; a fixed count gives the same tokenizer on a laptop and in CI.
SPM_THREADS = 4
MODEL_TYPE = "unigram"  # SentencePiece's default; as good as BPE for NMT (Kudo 2018) and it
                        # degrades gracefully to a smaller vocabulary on tiny corpora


def train_sentencepiece(sentences: Iterable[str], vocab_size: int, seed: int = 0) -> bytes:
    """A serialized SentencePiece model trained in memory: nothing touches the disk.

    hard_vocab_limit=False lets a tiny corpus end up with fewer pieces than asked for.
    A fixed thread count and seed make the result the same on every machine.
    """
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(s for s in sentences if s), model_writer=buf,
        vocab_size=vocab_size, model_type=MODEL_TYPE, hard_vocab_limit=False,
        character_coverage=1.0,  # Latin scripts: keep every character seen in training
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        num_threads=SPM_THREADS, minloglevel=2)
    return buf.getvalue()


def _processor(proto: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto)


def _clean(seq) -> list[int]:
    """Ids up to the first EOS, without BOS/PAD (a tensor row or a list)."""
    seq = seq.tolist() if hasattr(seq, "tolist") else list(seq)
    out = []
    for i in seq:
        if i == EOS:
            break
        if i not in (BOS, PAD):
            out.append(i)
    return out


class Tokenizers:
    """One SentencePiece model per language; ids PAD=0, BOS=1, EOS=2, UNK=3.

    Sources are pieces + EOS (the encoder needs no BOS); targets are BOS + pieces + EOS, so
    tgt[:, :-1] is the decoder input and tgt[:, 1:] what it must predict.
    """

    FILES = ("src.model", "tgt.model", "tokenizers.json")

    def __init__(self, src_proto: bytes, tgt_proto: bytes, meta: dict | None = None):
        self.src_proto, self.tgt_proto = src_proto, tgt_proto
        self.src, self.tgt = _processor(src_proto), _processor(tgt_proto)
        self.meta = dict(meta or {})
        for sp in (self.src, self.tgt):
            ids = (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id())
            if ids != (PAD, BOS, EOS, UNK):
                raise ValueError(f"tokenizer special ids {ids} != {(PAD, BOS, EOS, UNK)}")

    @classmethod
    def train(cls, src_sents: Sequence[str], tgt_sents: Sequence[str], vocab_size: int,
              meta: dict | None = None, seed: int = 0) -> "Tokenizers":
        return cls(train_sentencepiece(src_sents, vocab_size, seed),
                   train_sentencepiece(tgt_sents, vocab_size, seed), meta)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_atomic(folder / "src.model", self.src_proto)
        write_atomic(folder / "tgt.model", self.tgt_proto)
        # the json last: its presence says both models are complete
        write_atomic(folder / "tokenizers.json", json.dumps(self.meta, indent=1).encode())

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizers":
        folder = Path(folder)
        meta = json.loads((folder / "tokenizers.json").read_text())
        return cls((folder / "src.model").read_bytes(), (folder / "tgt.model").read_bytes(), meta)

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, sents: Sequence[str]) -> list[list[int]]:
        return self.src.encode(list(sents), out_type=int, add_eos=True)

    def encode_tgt(self, sents: Sequence[str]) -> list[list[int]]:
        return self.tgt.encode(list(sents), out_type=int, add_bos=True, add_eos=True)

    def decode_src(self, ids: Iterable) -> list[str]:
        return self.src.decode([_clean(s) for s in ids])

    def decode_tgt(self, ids: Iterable) -> list[str]:
        return self.tgt.decode([_clean(s) for s in ids])


def load_or_train_tokenizers(folder: str | Path, meta: dict,
                             train_text: Callable[[], tuple[list[str], list[str]]]) -> Tokenizers:
    """The tokenizers cached in folder if they were made with these settings (meta), else
    train them on train_text() (called only then) and cache them."""
    folder = Path(folder)
    if all((folder / f).is_file() for f in Tokenizers.FILES):
        tok = Tokenizers.load(folder)
        if all(tok.meta.get(k) == v for k, v in meta.items()):
            return tok
    src, tgt = train_text()
    tok = Tokenizers.train(src, tgt, meta["vocab_size"],
                           {**meta, "sentences": len(src), "model_type": MODEL_TYPE})
    tok.save(folder)
    return tok


# ----------------------------------------------------------------------------- lengths

def lengths(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]]):
    """Per pair, the two lengths the MAX_LEN filter compares: source pieces + EOS, and the
    decoder input BOS + pieces (= len(tgt_ids) - 1). Both are pieces + 1."""
    return (np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids)),
            np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids)) - 1)


def length_stats(src_ids, tgt_ids) -> dict[str, np.ndarray]:
    """{'src': lengths, 'tgt': lengths} as compared with max_len, for the book's histogram."""
    s, t = lengths(src_ids, tgt_ids)
    return {"src": s, "tgt": t}


def length_filter(src_ids, tgt_ids, max_len: int) -> np.ndarray:
    """Indices of the pairs that fit: the paper trains and validates on sentences <= MAX_LEN."""
    s, t = lengths(src_ids, tgt_ids)
    return np.flatnonzero((s <= max_len) & (t <= max_len))


def length_report(src_ids, tgt_ids, max_len: int) -> dict[str, int]:
    """How many sentences exceed max_len. Test sets are kept whole; the book reports these."""
    s, t = lengths(src_ids, tgt_ids)
    return {"max_len": max_len, "sentences": len(s), "src_over": int((s > max_len).sum()),
            "tgt_over": int((t > max_len).sum()),
            "over": int(((s > max_len) | (t > max_len)).sum())}


# ----------------------------------------------------------------------------- batches

def pad_batch(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad id lists with PAD into a (B, T) LongTensor."""
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    out = np.full((len(seqs), lens.max(initial=0)), PAD, dtype=np.int64)
    out[np.arange(out.shape[1]) < lens[:, None]] = np.fromiter(
        itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum()))
    return torch.from_numpy(out)


def batch_indices(costs: Sequence[int], batch_tokens: int, shuffle: bool = False,
                  seed: int = 0, epoch: int = 0, tiebreak: Sequence[int] | None = None
                  ) -> list[np.ndarray]:
    """Groups of indices with len(group) * max(cost in group) <= batch_tokens.

    Sorting by cost first makes batches of similar lengths (little padding). With shuffle,
    equal lengths are ordered at random and the batch order is shuffled, both from a
    generator seeded by (seed, epoch): the same seed and epoch give the same batches.
    A single item over the budget gets a batch of its own.
    """
    costs = np.asarray(costs, dtype=np.int64)
    n = len(costs)
    rng = np.random.default_rng([seed, epoch])
    last = rng.random(n) if shuffle else np.arange(n)
    keys = (last, costs) if tiebreak is None else (last, np.asarray(tiebreak), costs)
    order = np.lexsort(keys)
    batches, start = [], 0
    for i in range(1, n + 1):  # sorted ascending: the newest item is the widest
        if i == n or (i + 1 - start) * costs[order[i]] > batch_tokens:
            batches.append(order[start:i])
            start = i
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def token_batches(src_ids, tgt_ids, batch_tokens: int, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(src (B,S), tgt (B,T)) padded pairs with B * max(S, T) <= batch_tokens, as the paper's
    batch x max(src_len, tgt_len + 2): T already counts BOS and EOS."""
    s = np.fromiter(map(len, src_ids), dtype=np.int64, count=len(src_ids))
    t = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
    groups = batch_indices(np.maximum(s, t), batch_tokens, shuffle, seed, epoch, tiebreak=s)
    return [(pad_batch([src_ids[i] for i in g]), pad_batch([tgt_ids[i] for i in g]))
            for g in groups]


def source_batches(src_ids, batch_tokens: int) -> list[tuple[list[int], torch.Tensor]]:
    """Sources only, for decoding: (original indices, src (B,S)); sorted by length so little
    padding is decoded. hyps[idx[k]] = decoded[k] puts hypotheses back in corpus order."""
    groups = batch_indices([len(s) for s in src_ids], batch_tokens)
    return [(g.tolist(), pad_batch([src_ids[i] for i in g])) for g in groups]


# ----------------------------------------------------------------------------- entry point

@dataclass
class Split:
    """One split: raw text and ids, aligned (after the length filter for train and valid)."""

    name: str
    src: list[str]
    tgt: list[str]
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    raw_size: int = 0  # pairs before the length filter
    dropped: int = 0   # pairs removed by the length filter

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Data:
    """Everything the training and evaluation code needs from the corpus."""

    cfg: object
    tok: Tokenizers
    splits: dict[str, Split] = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"split {split!r} was not prepared; have: {', '.join(self.splits)}")
        return self.splits[split]

    def batches(self, split: str = "train", shuffle: bool | None = None, seed: int | None = None,
                epoch: int = 0, batch_tokens: int | None = None):
        """Token batches of a split; shuffled (seeded by seed and epoch) for train by default."""
        sp = self[split]
        return token_batches(sp.src_ids, sp.tgt_ids, batch_tokens or self.cfg.batch_tokens,
                             shuffle=split == "train" if shuffle is None else shuffle,
                             seed=self.cfg.seed if seed is None else seed, epoch=epoch)

    def source_batches(self, split: str, batch_tokens: int | None = None):
        return source_batches(self[split].src_ids, batch_tokens or self.cfg.batch_tokens)

    def length_report(self, split: str, max_len: int | None = None) -> dict[str, int]:
        sp = self[split]
        return length_report(sp.src_ids, sp.tgt_ids, max_len or self.cfg.max_len)

    def length_stats(self, split: str) -> dict[str, np.ndarray]:
        return length_stats(self[split].src_ids, self[split].tgt_ids)


FILTERED = ("train", "valid")  # the paper's MAX_LEN filter; test sets stay whole


def prepare(cfg, splits: Sequence[str] = ("train", "valid", "test"),
            tokenizer_dir: str | Path | None = None) -> Data:
    """Load, tokenize (training or reusing the run's tokenizers), filter and hold the splits.

    Tokenizers are trained on the first cfg.train_limit training pairs (all when 0) and kept in
    cfg.run_dir()/tokenizers; the training text is read only when they must be (re)trained or
    when "train" is asked for.
    """
    for split in splits:
        _check_args(cfg.corpus, cfg.pair, split)
    cache: dict[str, tuple[list[str], list[str]]] = {}

    def text(split):
        if split not in cache:
            src, tgt = load_corpus(cfg.corpus, cfg.pair, split)
            if split == "train" and cfg.train_limit > 0:
                src, tgt = src[:cfg.train_limit], tgt[:cfg.train_limit]
            if split == "valid" and cfg.valid_limit > 0:
                src, tgt = src[:cfg.valid_limit], tgt[:cfg.valid_limit]
            cache[split] = (src, tgt)
        return cache[split]

    meta = {"corpus": cfg.corpus, "pair": cfg.pair, "src": cfg.src, "tgt": cfg.tgt,
            "vocab_size": cfg.vocab_size, "train_limit": cfg.train_limit,
            "model_type": MODEL_TYPE}
    folder = tokenizer_dir or Path(cfg.run_dir()) / "tokenizers"
    tok = load_or_train_tokenizers(folder, meta, lambda: text("train"))
    data = Data(cfg, tok)
    for split in splits:
        src, tgt = text(split)
        src_ids, tgt_ids = tok.encode_src(src), tok.encode_tgt(tgt)
        n = len(src)
        if split in FILTERED:
            keep = length_filter(src_ids, tgt_ids, cfg.max_len)
            if len(keep) < n:
                src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
                src_ids, tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
        data.splits[split] = Split(split, src, tgt, src_ids, tgt_ids, n, n - len(src))
    return data
