"""Miniatures of the IWSLT2017 files ffattn reads, built at test time in the real layouts.

    wit3_train_archive(x)   the WIT3 training archive x-en.tgz (2017-01-trnted/texts/x/en/):
                            x-en/train.tags.x-en.{x,en}: per talk, <url> <keywords> <speaker>
                            <talkid> <title> <description> <reviewer> <translator> lines, then
                            one sentence a line, the two files aligned line by line, text raw;
                            x-en/IWSLT17.TED.{dev2010,tst2010..tst2015}.x-en.{x,en}.xml:
                            NIST mteval XML (srcset / refset > doc docid > metadata, then
                            <seg id="n"> text</seg>), text XML-escaped; x-en/README.
    wit3_test_archives(x)   the 2017 test archives (2017-01-ted-test/texts/x/en/x-en.tgz and
                            texts/en/x/en-x.tgz), the source side only, like the mirror's copies:
                            x-en/IWSLT17.TED.tst2016.x-en.x.xml, ...tst2017..., x-en/README.
    hub_shards(x)           the Hub's parquet export of the config iwslt2017-x-en: one column
                            "translation", a struct {x: string, en: string} a row, directories
                            train/ (two shards here), validation/ (= dev2010), test/
                            (= tst2010-2015), files 0000.parquet, 0001.parquet, ...

EXPECTED[x][split] is (x sentences, en sentences) as load_corpus must return them for x-en.
Every split holds pairs over the paper's MAX_LEN of 50 (LONG): one side of 60 words.
"""
from __future__ import annotations

import html
import io
import json
import tarfile
from pathlib import Path

import pandas as pd

LANGS = ("de", "fr")
NAMES = {"de": "german", "fr": "french", "en": "english"}

# (de, en, fr) pieces of the made-up talks; '&', quotes and non-ASCII letters on purpose
SUBJECTS = [("Ich", "I", "Je"), ("Wir", "We", "Nous"), ("Meine Mutter", "My mother", "Ma mère"),
            ("Der Lehrer", "The teacher", "Le professeur"), ("Tom & Jerry", "Tom & Jerry", "Tom & Jerry")]
VERBS = [("sehe", "see", "vois"), ("liebe", "love", "aime"), ("baue", "build", "construis"),
         ("finde", "find", "trouve")]
OBJECTS = [("das Meer", "the sea", "la mer"), ("einen Baum", "a tree", "un arbre"),
           ("die Stadt", "the city", "la ville"), ("ein Haus", "a house", "une maison"),
           ("große Ideen", "big ideas", "de grandes idées"), ("R&D", "R&D", "R&D")]
TAILS = [("heute .", "today .", "aujourd'hui ."), ('„jeden Tag“ .', '"every day" .', "« chaque jour » ."),
         ("im Süden .", "in the south .", "au sud ."), ("?", "?", "?")]
TRIPLES = [(f"{s[0]} {v[0]} {o[0]} {t[0]}", f"{s[1]} {v[1]} {o[1]} {t[1]}", f"{s[2]} {v[2]} {o[2]} {t[2]}")
           for t in TAILS for o in OBJECTS for v in VERBS for s in SUBJECTS][::7]  # varied, 69 triples
LONG_WORDS = 60  # > MAX_LEN 50 tokens whatever the tokenizer: each word is at least one piece
LONG = {"de": " ".join(["sehr"] * LONG_WORDS) + " gut .", "fr": " ".join(["très"] * LONG_WORDS) + " bien .",
        "en": " ".join(["very"] * LONG_WORDS) + " good ."}
SHORT = {"de": "sehr gut .", "fr": "très bien .", "en": "very good ."}


def _pairs(x: str, start: int, n: int) -> list[tuple[str, str]]:
    col = {"de": 0, "fr": 2}[x]
    return [(TRIPLES[i][col], TRIPLES[i][1]) for i in range(start, start + n)]


def _long_src(x):  # the x side over MAX_LEN
    return (LONG[x], SHORT["en"])


def _long_tgt(x):  # the English side over MAX_LEN
    return (SHORT[x], LONG["en"])


def talks(x: str) -> dict[str, list[tuple[str, list[tuple[str, str]]]]]:
    """{set name: [(docid, [(x, en), ...]), ...]}: the talks of every set, in file order."""
    p = lambda a, n: _pairs(x, a, n)  # noqa: E731
    return {
        "train": [("1", p(0, 12)), ("2", p(12, 12) + [_long_src(x)]), ("3", p(24, 12) + [_long_tgt(x)])],
        "dev2010": [("535", p(36, 4)), ("531", p(40, 4) + [_long_src(x)])],
        **{f"tst{y}": [(str(1000 + y), p(44 + 2 * (y - 2010), 2) + ([_long_src(x)] if y == 2012 else []))]
           for y in range(2010, 2016)},
        "tst2016": [("2227", p(56, 3)), ("2361", p(59, 3))],
        "tst2017": [("2500", p(62, 3) + [_long_tgt(x)]), ("2501", p(65, 3))],
    }


def _expected(x: str) -> dict[str, tuple[list[str], list[str]]]:
    t = talks(x)
    sets = {"train": ["train"], "valid": ["dev2010"], "test": [f"tst{y}" for y in range(2010, 2016)],
            "tst2016-2017": ["tst2016", "tst2017"]}
    out = {}
    for split, names in sets.items():
        pairs = [pair for name in names for _, segs in t[name] for pair in segs]
        out[split] = ([a for a, _ in pairs], [b for _, b in pairs])
    return out


EXPECTED = {x: _expected(x) for x in LANGS}
# pairs over MAX_LEN in each split: dropped from train and valid, kept in the test sets
OVER = {"train": 2, "valid": 1, "test": 1, "tst2016-2017": 1}


def _meta(x_or_en: str, docid: str) -> list[str]:
    return [f"<url>http://www.ted.com/talks/speaker_{docid}</url>",
            "<keywords>talks, science, ocean</keywords>",
            f"<speaker>Speaker {docid}</speaker>",
            f"<talkid>{docid}</talkid>",
            f"<title>Speaker {docid}: Talk ({x_or_en})</title>",
            "<description>TED Talk Subtitles and Transcript: A talk &amp; more.</description>",
            '<reviewer href="http://www.ted.com/profiles/1">Rita Reviewer</reviewer>',
            '<translator href="http://www.ted.com/profiles/2">Tim Translator</translator>']


def wit3_xml(setid: str, lang: str, x: str, docs, ref: bool = False) -> str:
    """One NIST mteval XML file: the source side (srcset) or the reference side (refset)."""
    head = (f'<refset setid="{setid}" srclang="{NAMES[x]}" trglang="{NAMES[lang]}" refid="ref">' if ref
            else f'<srcset setid="{setid}" srclang="{NAMES[lang]}">')
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>", head]
    side = 1 if lang == "en" else 0
    for docid, segs in docs:
        lines.append(f'<doc docid="{docid}" genre="lectures">')
        lines += _meta(lang, docid)[:6]
        lines += [f'<seg id="{i}"> {html.escape(pair[side], quote=False)}</seg>'
                  for i, pair in enumerate(segs, 1)]
        lines += _meta(lang, docid)[6:] + ["</doc>"]
    lines += ["</refset>" if ref else "</srcset>", "</mteval>", ""]
    return "\n".join(lines)


def train_tags(x: str, lang: str) -> str:
    """train.tags.x-en.lang: tag lines per talk, then the talk's sentences, one a line."""
    side = 1 if lang == "en" else 0
    lines = []
    for docid, segs in talks(x)["train"]:
        lines += [m.replace("&amp;", "&") for m in _meta(lang, docid)]
        lines += [pair[side] for pair in segs]
    return "\n".join(lines) + "\n"


README = "IWSLT 2017 evaluation campaign (test fixture)\n\n# TED\n# Copyright: TED Conference LLC\n"


def tgz(files: dict[str, str], folder: str) -> bytes:
    """A gzipped tar of folder/ and folder/<name> for each file, like WIT3's archives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(folder)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        for name, text in {**files, "README": README}.items():
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mode = len(raw), 0o644
            tf.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def wit3_train_archive(x: str) -> bytes:
    t, pair = talks(x), f"{x}-en"
    files = {f"train.tags.{pair}.{x}": train_tags(x, x), f"train.tags.{pair}.en": train_tags(x, "en")}
    for name in ["dev2010"] + [f"tst{y}" for y in range(2010, 2016)]:
        setid = f"iwslt2017-{name}"
        files[f"IWSLT17.TED.{name}.{pair}.{x}.xml"] = wit3_xml(setid, x, x, t[name])
        files[f"IWSLT17.TED.{name}.{pair}.en.xml"] = wit3_xml(setid, "en", x, t[name], ref=True)
    return tgz(files, pair)


def wit3_test_archives(x: str) -> dict[str, bytes]:
    """{"x-en": archive, "en-x": archive}: each holds one direction's source side."""
    t = talks(x)
    out = {}
    for a, b in ((x, "en"), ("en", x)):
        files = {f"IWSLT17.TED.{name}.{a}-{b}.{a}.xml": wit3_xml(f"iwslt2017-{name}", a, x, t[name])
                 for name in ("tst2016", "tst2017")}
        out[f"{a}-{b}"] = tgz(files, f"{a}-{b}")
    return out


# ----------------------------------------------------------------------------- the Hub's parquet

def hub_rows(x: str) -> dict[str, list[list[dict]]]:
    """{hub split: [rows of shard 0, rows of shard 1, ...]}, rows {"x": .., "en": ..}."""
    e = EXPECTED[x]
    rows = {split: [{x: a, "en": b} for a, b in zip(*e[ours])]
            for split, ours in (("train", "train"), ("validation", "valid"), ("test", "test"))}
    half = len(rows["train"]) // 2
    return {"train": [rows["train"][:half], rows["train"][half:]],
            "validation": [rows["validation"]], "test": [rows["test"]]}


def parquet_bytes(rows: list[dict], real: bool) -> bytes:
    """A shard: real parquet (needs pyarrow or fastparquet), else the stand-in below."""
    if real:
        buf = io.BytesIO()
        pd.DataFrame({"translation": rows}).to_parquet(buf, index=False)
        return buf.getvalue()
    return b"PAR1" + json.dumps({"translation": rows}).encode() + b"PAR1"


def read_standin(path, *args, **kwargs) -> pd.DataFrame:
    """pandas.read_parquet for the stand-in shards: b"PAR1" + JSON + b"PAR1", the Hub's schema.

    Where no parquet engine is installed, it lets the tests run data.py's Hub code (URLs,
    shards, the format check, the cache) on everything but the parquet decoding itself."""
    data = Path(path).read_bytes()
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise ValueError("Parquet magic bytes not found in footer")
    return pd.DataFrame(json.loads(data[4:-4].decode("utf-8")))
