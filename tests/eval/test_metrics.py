"""BLEU, chrF and ROUGE wrappers: edge values, parity with sacreBLEU / rouge-score, errors."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from scratchlm.errors import ScratchLMError
from scratchlm.eval.metrics import CJKTokenizer, MetricResult, bleu, chrf, rouge

HYPS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "he went to the market yesterday",
]
REFS = [
    "the cat sat on a mat",
    "the quick brown fox jumped over the lazy dog",
    "yesterday he went to the shop",
]
ZH_HYPS = ["我喜欢吃苹果。", "天下大势，分久必合。"]
ZH_REFS = ["我很喜欢吃香蕉。", "天下大势，分久必合，合久必分。"]


def test_bleu_identical_is_100_and_unrelated_is_near_0():
    assert bleu(REFS, REFS).score == pytest.approx(100.0)
    unrelated = ["purple elephants dance quietly", "seven hungry lions read poems", "xyz qrs tuv"]
    assert bleu(unrelated, REFS).score < 1.0


def test_bleu_matches_sacrebleu():
    ours = bleu(HYPS, REFS)
    metric = sacrebleu.metrics.BLEU()
    ref = metric.corpus_score(HYPS, [REFS])
    assert ours.score == pytest.approx(ref.score)
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert ours.signature == str(metric.get_signature())
    assert "tok:13a" in ours.signature and "nrefs:1" in ours.signature
    assert ours.details["precisions"] == pytest.approx(ref.precisions)
    assert ours.details["bp"] == pytest.approx(ref.bp)
    assert (ours.details["sys_len"], ours.details["ref_len"]) == (ref.sys_len, ref.ref_len)
    # str() reads like sacreBLEU's own output, then the signature.
    assert str(ours) == f"{ref} | {ours.signature}"


def test_bleu_chinese_uses_zh_tokenizer():
    ours = bleu(ZH_HYPS, ZH_REFS, lang="zh-CN")
    metric = sacrebleu.metrics.BLEU(trg_lang="zh")  # sacreBLEU's own default for zh
    ref = metric.corpus_score(ZH_HYPS, [ZH_REFS])
    assert "tok:zh" in ours.signature
    assert ours.score == pytest.approx(ref.score)
    assert ours.score == pytest.approx(sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score)
    assert ours.signature == str(metric.get_signature())
    # 13a sees each unspaced sentence as one or two "words": a very different (wrong) score.
    assert bleu(ZH_HYPS, ZH_REFS).score != pytest.approx(ours.score)


def test_bleu_tokenizer_choice():
    assert "tok:char" in bleu(["私は猫"], ["私は犬"], lang="ja").signature
    assert "tok:intl" in bleu(HYPS, REFS, tokenize="intl").signature
    with pytest.raises(ScratchLMError, match="unknown BLEU tokenizer"):
        bleu(HYPS, REFS, tokenize="whitespace")


def test_chrf_matches_sacrebleu():
    for plus, word_order, name in ((False, 0, "chrF2"), (True, 2, "chrF2++")):
        ours = chrf(HYPS, REFS, plus=plus)
        metric = sacrebleu.metrics.CHRF(word_order=word_order)
        ref = metric.corpus_score(HYPS, [REFS])
        assert ours.name == name
        assert ours.score == pytest.approx(ref.score)
        assert ours.signature == str(metric.get_signature())
        assert str(ours) == f"{ref} | {ours.signature}"
    assert chrf(HYPS, REFS).score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert chrf(REFS, REFS).score == pytest.approx(100.0)


def test_rouge_matches_rouge_score():
    ours = rouge(HYPS, REFS)
    assert set(ours) == {"rouge1", "rouge2", "rougeL"}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_segment = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=True)]
    for key, result in ours.items():
        expected = 100 * sum(s[key].fmeasure for s in per_segment) / len(HYPS)
        assert result.score == pytest.approx(expected)
        assert result.details["recall"] == pytest.approx(
            100 * sum(s[key].recall for s in per_segment) / len(HYPS))
        assert "stemmer:yes" in result.signature and result.signature.startswith("rouge-score ")
    assert [r.name for r in ours.values()] == ["ROUGE-1", "ROUGE-2", "ROUGE-L"]


def test_rouge_hand_checked():
    # hyp "the cat ran" vs ref "the cat sat": 2 of 3 unigrams shared (P = R = F = 2/3),
    # 1 of 2 bigrams ("the cat"), longest common subsequence 2 of 3.
    r = rouge(["the cat ran"], ["the cat sat"])
    assert r["rouge1"].score == pytest.approx(200 / 3)
    assert r["rouge2"].score == pytest.approx(50.0)
    assert r["rougeL"].score == pytest.approx(200 / 3)
    # Unequal lengths: P = 2/2, R = 2/4, F = 2PR/(P+R) = 2/3.
    r1 = rouge(["cat mat"], ["the cat on mat"])["rouge1"]
    assert (r1.details["precision"], r1.details["recall"]) == pytest.approx((100.0, 50.0))
    assert r1.score == pytest.approx(200 / 3)
    assert str(r1).startswith("ROUGE-1 = 66.67 (P = 100.00 R = 50.00) | rouge-score ")


def test_rouge_chinese_needs_cjk_tokenizer():
    with pytest.raises(ScratchLMError, match="tokenize='cjk'"):
        rouge(ZH_HYPS, ZH_REFS)
    ours = rouge(["我喜欢吃苹果"], ["我喜欢吃香蕉"], lang="zh")
    # Characters: 4 of 6 unigrams shared, 3 of 5 bigrams.
    assert ours["rouge1"].score == pytest.approx(100 * 4 / 6)
    assert ours["rouge2"].score == pytest.approx(100 * 3 / 5)
    assert "tok:cjk" in ours["rouge1"].signature
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CJKTokenizer())
    assert rouge(ZH_HYPS, ZH_REFS, tokenize="cjk")["rougeL"].score == pytest.approx(
        100 * sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(ZH_HYPS, ZH_REFS, strict=True)) / 2)


def test_cjk_tokenizer_keeps_every_script():
    assert CJKTokenizer().tokenize("我喜欢 Apple-pie, café!") == ["我", "喜", "欢", "apple", "pie", "café"]


@pytest.mark.parametrize("fn", [bleu, chrf, rouge])
def test_input_errors(fn):
    with pytest.raises(ScratchLMError, match="3 hypotheses but 2 references"):
        fn(HYPS, REFS[:2])
    with pytest.raises(ScratchLMError, match="empty"):
        fn([], [])
    with pytest.raises(ScratchLMError, match="not a single string"):
        fn("the cat", "the cat")
    with pytest.raises(ScratchLMError, match="strings"):
        fn(["ok", None], ["ok", "fine"])


def test_metric_result_is_plain_data():
    r = MetricResult("BLEU", 12.5, "sig", {})
    assert str(r) == "BLEU = 12.50 | sig"
