"""sacreBLEU and chrF on detokenised output, with their signatures, hypotheses saved beside them.

The paper scored NLTK BLEU on word ids of the validation split; the book reports sacreBLEU on
whole test sets, which is stricter and comparable across papers.
"""
from __future__ import annotations

import json
from pathlib import Path

import sacrebleu

from .decode import translate
from .files import write_atomic


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenisation, mixed case)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
            "sentences": len(references)}


def evaluate(model, tokenizers, sources: list[str], references: list[str], beam: int = 1,
             length_penalty: float = 0.6, out_dir: str | Path | None = None, name: str = "test",
             progress: bool = True) -> dict:
    """Translate `sources`, score against `references`; with out_dir, write
    `<name>.hyp.txt` and `<name>.json` there (atomically)."""
    hyps = translate(model, tokenizers, sources, beam=beam, length_penalty=length_penalty,
                     progress=progress)
    metrics = {**score(hyps, references), "beam": beam, "split": name}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_atomic(out_dir / f"{name}.hyp.txt", "\n".join(hyps) + "\n")
        write_atomic(out_dir / f"{name}.json", json.dumps(metrics, indent=1))
    metrics["hypotheses"] = hyps
    return metrics
