"""Translation and summarisation metrics: corpus BLEU and chrF (sacreBLEU), ROUGE (rouge-score).

Thin wrappers that check their inputs, pick a sensible tokenizer for the target language and
return a `MetricResult` carrying the reproducibility signature, so a score is never reported
without the settings it was computed with (Post 2018, "A Call for Clarity in Reporting BLEU
Scores"). One reference per hypothesis.

    >>> from scratchlm.eval.metrics import bleu, chrf, rouge
    >>> print(bleu(["the cat sat on the mat"], ["the cat sat on a mat"]))
    BLEU = 53.73 83.3/60.0/50.0/33.3 (BP = 1.000 ratio = 1.000 hyp_len = 6 ref_len = 6) | nrefs:1|...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from scratchlm.errors import ScratchLMError

# sacreBLEU's own default for zh is its "zh" tokenizer; for ja/ko it is MeCab, which needs
# `pip install sacrebleu[ja]` / `sacrebleu[ko]`, so we default to characters there instead
# (pass tokenize="ja-mecab" / "ko-mecab" explicitly for the standard WMT setting).
_BLEU_TOKENIZE_FOR_LANG = {"zh": "zh", "ja": "char", "ko": "char"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
# Han ideographs, kana, Hangul: one token per character. Chinese and Japanese are written
# without spaces; Korean is spaced, but particles glued to words make syllables the safer unit.
_CJK_CHARS = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
_CJK_RE = re.compile(f"[{_CJK_CHARS}]")
_CJK_TOKEN_RE = re.compile(f"[{_CJK_CHARS}]|[^\\W{_CJK_CHARS}]+")


@dataclass(frozen=True)
class MetricResult:
    """One corpus-level score (0-100) with the signature that makes it reproducible.

    `details` holds the metric's parts: for BLEU `precisions` (1- to 4-gram, %), `counts`,
    `totals`, `bp`, `ratio`, `sys_len`, `ref_len`; for chrF `char_order`, `word_order`, `beta`;
    for ROUGE the mean `precision` and `recall` (%) and `fmeasure` (= score) over `segments`.
    """

    name: str
    score: float
    signature: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        """Formatted as sacreBLEU prints it: `BLEU = 23.41 54.2/29.1/... (BP = ...) | sig`."""
        text = f"{self.name} = {self.score:.2f}"
        d = self.details
        if "precisions" in d:
            prec = "/".join(f"{p:.1f}" for p in d["precisions"])
            text += (f" {prec} (BP = {d['bp']:.3f} ratio = {d['ratio']:.3f} "
                     f"hyp_len = {d['sys_len']:d} ref_len = {d['ref_len']:d})")
        elif "recall" in d:
            text += f" (P = {d['precision']:.2f} R = {d['recall']:.2f})"
        return f"{text} | {self.signature}"


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    for what, texts in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(texts, str):
            raise ScratchLMError(f"{what} must be a list of strings, one per segment, not a single string")
        if not all(isinstance(t, str) for t in texts):
            raise ScratchLMError(f"{what} must all be strings (one line of text per segment)")
    if len(hypotheses) != len(references):
        raise ScratchLMError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; "
            "give exactly one reference per hypothesis, in the same order"
        )
    if not hypotheses:
        raise ScratchLMError("no hypotheses or references to score; the lists are empty")


def _lang_code(lang: str | None) -> str:
    """'zh-CN', 'zh_Hans', 'ZH' -> 'zh'."""
    return re.split(r"[-_]", lang.strip().lower())[0] if lang else ""


def bleu(
    hypotheses: list[str], references: list[str], *, tokenize: str | None = None,
    lang: str | None = None,
) -> MetricResult:
    """Corpus BLEU (Papineni et al. 2002) with sacreBLEU's defaults.

    `tokenize` is a sacreBLEU tokenizer name ("13a", "intl", "zh", "char", "none",
    "ja-mecab", ...). Left as None it follows the target language `lang`: "zh" for Chinese,
    "char" for Japanese and Korean (MeCab-free), "13a" otherwise. The signature records it.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    code = _lang_code(lang)
    tok = tokenize or _BLEU_TOKENIZE_FOR_LANG.get(code, "13a")
    if tok not in BLEU.TOKENIZERS:
        raise ScratchLMError(f"unknown BLEU tokenizer {tok!r}; choose one of {', '.join(BLEU.TOKENIZERS)}")
    try:
        metric = BLEU(tokenize=tok, trg_lang=code)
    except (ImportError, OSError, RuntimeError) as e:
        detail = " ".join(str(e).split())
        raise ScratchLMError(f"sacreBLEU tokenizer {tok!r} is not usable here: {detail}") from None
    s = metric.corpus_score(hypotheses, [references])
    details = {
        "precisions": list(s.precisions), "counts": list(s.counts), "totals": list(s.totals),
        "bp": s.bp, "ratio": s.ratio, "sys_len": s.sys_len, "ref_len": s.ref_len,
    }
    return MetricResult(s.name, s.score, str(metric.get_signature()), details)


def chrf(hypotheses: list[str], references: list[str], *, plus: bool = False) -> MetricResult:
    """Corpus chrF2 (Popović 2015): character 6-gram F-score, recall weighted twice.

    `plus=True` gives chrF++ (Popović 2017), which adds word 1- and 2-grams (word_order=2).
    Characters need no tokenizer, so it works as is for any language.
    """
    from sacrebleu.metrics import CHRF

    _check_pairs(hypotheses, references)
    metric = CHRF(word_order=2 if plus else 0)
    s = metric.corpus_score(hypotheses, [references])
    details = {"char_order": s.char_order, "word_order": s.word_order, "beta": s.beta}
    return MetricResult(s.name, s.score, str(metric.get_signature()), details)


class CJKTokenizer:
    """ROUGE tokenizer for any script: each CJK character one token, other words whole.

    Lowercases; keeps every Unicode letter and digit (rouge-score's default keeps only
    [a-z0-9]); Han, kana and Hangul characters are single tokens, so Chinese and Japanese
    need no word segmenter; punctuation is dropped. No stemming.
    """

    def tokenize(self, text: str) -> list[str]:
        return _CJK_TOKEN_RE.findall(text.lower())


def rouge(
    hypotheses: list[str], references: list[str], *, tokenize: str | None = None,
    lang: str | None = None, use_stemmer: bool = True,
) -> dict[str, MetricResult]:
    """ROUGE-1, ROUGE-2 and ROUGE-L (Lin 2004) F-measure x 100, averaged over segments.

    Returns {"rouge1": ..., "rouge2": ..., "rougeL": ...}. Each segment is scored with
    rouge-score's `RougeScorer` and the per-segment precision, recall and F are averaged.

    rouge-score's default tokenizer ("default": lowercase, Porter stemmer if `use_stemmer`)
    keeps only ASCII letters and digits, so non-Latin text silently scores 0. Pass
    tokenize="cjk" (or lang="zh"/"ja"/"ko", which choose it) to use `CJKTokenizer`, which
    keeps every script and splits Chinese/Japanese/Korean into characters. References with
    CJK text and the default tokenizer are an error rather than a silent 0.
    """
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    tok = tokenize or ("cjk" if _lang_code(lang) in _BLEU_TOKENIZE_FOR_LANG else "default")
    if tok not in ("default", "cjk"):
        raise ScratchLMError(f"unknown ROUGE tokenizer {tok!r}; choose 'default' or 'cjk'")
    if tok == "default" and any(_CJK_RE.search(r) for r in references):
        raise ScratchLMError(
            "the references contain Chinese/Japanese/Korean text, which rouge-score's default "
            "tokenizer drops; pass lang='zh' (or 'ja', 'ko') or tokenize='cjk'"
        )
    stem = use_stemmer and tok == "default"
    scorer = rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=stem, tokenizer=CJKTokenizer() if tok == "cjk" else None
    )
    sums = {t: [0.0, 0.0, 0.0] for t in ROUGE_TYPES}  # precision, recall, fmeasure
    for hyp, ref in zip(hypotheses, references, strict=True):
        for t, s in scorer.score(ref, hyp).items():  # rouge-score takes (target, prediction)
            sums[t][0] += s.precision
            sums[t][1] += s.recall
            sums[t][2] += s.fmeasure
    n = len(hypotheses)
    signature = (f"rouge-score {version('rouge-score')}|nrefs:1|tok:{tok}|"
                 f"stemmer:{'yes' if stem else 'no'}|agg:mean")
    results = {}
    for t, (p, r, f) in sums.items():
        details = {"precision": 100 * p / n, "recall": 100 * r / n, "fmeasure": 100 * f / n, "segments": n}
        results[t] = MetricResult(_ROUGE_NAMES[t], 100 * f / n, signature, details)
    return results


TEXT_METRICS = ("bleu", "chrf", "rouge")


def score_texts(
    hypotheses: list[str], references: list[str], metrics: list[str], *, lang: str | None = None,
) -> dict[str, MetricResult]:
    """{"bleu", "chrf", "rouge1", "rouge2", "rougeL"}: the named metrics of the outputs, each
    with the tokenizer `lang` picks."""
    out: dict[str, MetricResult] = {}
    for m in metrics:
        if m == "bleu":
            out["bleu"] = bleu(hypotheses, references, lang=lang)
        elif m == "chrf":
            out["chrf"] = chrf(hypotheses, references)
        elif m == "rouge":
            out.update(rouge(hypotheses, references, lang=lang))
        else:
            raise ScratchLMError(f"unknown text metric {m!r} (choose from {', '.join(TEXT_METRICS)})")
    return out
