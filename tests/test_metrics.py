"""Metrics against hand-computed values; each expected number is derived in the comment beside it."""

from __future__ import annotations

import numpy as np
import pytest

from adapters_xtl import metrics as M

approx = pytest.approx


# --------------------------------------------------------------------------- classification


def test_accuracy_and_tensor_input():
    torch = pytest.importorskip("torch")
    # 3 of 4 equal
    assert M.accuracy([0, 1, 2, 2], [0, 1, 2, 1]) == 0.75
    assert M.accuracy(torch.tensor([0, 1, 2, 2]), np.array([0, 1, 2, 1])) == 0.75


def test_macro_f1_hand_case():
    preds, gold = [0, 1, 0, 2], [0, 1, 1, 1]
    # class 0: TP1 FP1 FN0 -> 2/(2+1) = 2/3
    # class 1: TP1 FP0 FN2 -> 2/(2+2) = 1/2
    # class 2: TP0 FP1 FN0 -> 0  (predicted, never gold: still averaged, sklearn default)
    # mean = (2/3 + 1/2 + 0) / 3 = 7/18
    assert M.macro_f1(preds, gold) == approx(7 / 18)
    # restricted to {0, 1}: (2/3 + 1/2) / 2 = 7/12
    assert M.macro_f1(preds, gold, labels_set=[0, 1]) == approx(7 / 12)
    # a listed class seen nowhere (3) counts as 0, as sklearn labels=: (2/3 + 1/2 + 0) / 3 = 7/18
    assert M.macro_f1(preds, gold, labels_set=[0, 1, 3]) == approx(7 / 18)


def test_macro_f1_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    p, y = rng.integers(0, 4, 50).tolist(), rng.integers(0, 4, 50).tolist()
    assert M.macro_f1(p, y) == approx(sk.f1_score(y, p, average="macro"))
    assert M.macro_f1(p, y, labels_set=[0, 2, 7]) == approx(
        sk.f1_score(y, p, average="macro", labels=[0, 2, 7], zero_division=0)
    )


def test_choice_accuracy_ties_and_ragged():
    torch = pytest.importorskip("torch")
    # row0 argmax 1 == 1 ok; row1 tie -> first index 0 != 1 miss; row2 (3 options) argmax 0 ok -> 2/3
    assert M.choice_accuracy([[0.1, 0.9], [0.5, 0.5], [2.0, 1.0, 0.0]], [1, 1, 0]) == approx(2 / 3)
    assert M.choice_accuracy(torch.tensor([[0.1, 0.9], [0.5, 0.5]]), torch.tensor([1, 0])) == 1.0
    with pytest.raises(ValueError, match=r"labels\[0\] = 2"):
        M.choice_accuracy([[0.1, 0.9]], [2])


# --------------------------------------------------------------------------- tagging


def test_ner_multi_token_and_boundary_errors():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "B-PER", "O", "B-LOC", "I-LOC", "O"], ["B-ORG", "O"]]
    # gold entities: PER[0:1], LOC[3:5], ORG -> 3
    # pred entities: PER[0], PER[1] (B-PER B-PER = two entities, both wrong), LOC[3:4] (partial
    # span = miss), ORG -> 4;  TP = 1 (ORG)
    # P = 1/4, R = 1/3, F1 = 2*(1/12)/(7/12) = 2/7
    r = M.ner_f1(pred, gold)
    assert r == approx({"precision": 1 / 4, "recall": 1 / 3, "f1": 2 / 7})


def test_ner_default_mode_is_lenient_like_xtreme():
    # seqeval default (conlleval) mode: I-PER after O opens an entity, so O I-PER I-PER is PER[1:2]
    # and matches O B-PER I-PER exactly -> F1 = 1 (strict IOB2 would give 0)
    assert M.ner_f1([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])["f1"] == 1.0
    # nothing predicted: P = R = F1 = 0, no warning-driven NaN
    assert M.ner_f1([["O", "O"]], [["B-PER", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_pos_accuracy_vs_xtreme_seqeval_f1():
    gold = [["NOUN", "VERB", "DET", "NOUN"]]
    pred = [["NOUN", "NOUN", "DET", "NOUN"]]
    # token accuracy: 3 of 4
    assert M.pos_accuracy(pred, gold) == 0.75
    # seqeval on raw tags: NOUN -> tag 'N', type 'OUN'; equal neighbours merge.
    # gold chunks: OUN[0] ERB[1] ET[2] OUN[3] -> 4;  pred chunks: OUN[0:1] ET[2] OUN[3] -> 3
    # TP = 2 (ET[2], OUN[3]); P = 2/3, R = 2/4, F1 = 2*(1/3)/(7/6) = 4/7
    assert M.pos_xtreme_f1(pred, gold) == approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7})


def test_tag_sequences_must_align():
    with pytest.raises(ValueError, match=r"pred_seqs\[1\] has 1 tags but gold_seqs\[1\] has 2"):
        M.ner_f1([["O"], ["O"]], [["O"], ["O", "B-PER"]])
    with pytest.raises(ValueError, match=r"pred_seqs has 1 items but gold_seqs has 2"):
        M.pos_accuracy([["NOUN"]], [["NOUN"], ["VERB"]])
    with pytest.raises(ValueError, match="empty"):
        M.ner_f1([], [])


# --------------------------------------------------------------------------- SQuAD


def test_squad_normalize_articles_and_punctuation():
    # lower -> "the eiffel tower!" -> no punct -> "the eiffel tower" -> no article -> "eiffel tower"
    assert M.squad_normalize("The Eiffel Tower!") == "eiffel tower"
    assert M.squad_em("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    # \b: "theory" and "another" keep their letters; "an" and "a" as words go
    assert M.squad_normalize("An  theory of another, a thing") == "theory of another thing"
    # both normalise to "" -> EM 1, but v1.1 F1 of two empty token lists is 0
    assert M.squad_em("the", ["a"]) == 1.0
    assert M.squad_f1("the", ["a"]) == 0.0


def test_squad_multiple_golds_and_scores():
    golds = ["Broncos", "Denver Broncos team"]
    # vs "broncos": common 1, P 1/2, R 1 -> 2/3; vs "denver broncos team": common 2, P 1, R 2/3 -> 0.8
    assert M.squad_f1("Denver Broncos", golds) == approx(0.8)
    assert M.squad_em("Denver Broncos", golds) == 0.0
    assert M.squad_em("broncos.", golds) == 1.0
    preds = {"q1": "Denver Broncos", "q2": "the cat", "extra": "ignored"}
    gold = {"q1": golds, "q2": ["Cat"], "q3": ["x"]}
    # q1 EM 0 F1 .8; q2 EM 1 F1 1; q3 unanswered 0 -> EM 100/3, F1 100*1.8/3 = 60
    assert M.squad_scores(preds, gold) == approx({"exact_match": 100 / 3, "f1": 60.0})
    with pytest.raises(ValueError, match="golds is empty"):
        M.squad_scores({}, {})


# --------------------------------------------------------------------------- MLQA


def test_mlqa_german_articles():
    # "der hund!" -> no punct -> article "der" removed -> "hund"
    assert M.mlqa_normalize("Der Hund!", "de") == "hund"
    assert M.mlqa_em("den Hund", ["der Hund"], "de") == 1.0
    # "dieser" is not an article and \b stops "der" matching inside it
    assert M.mlqa_normalize("dieser Hund", "de") == "dieser hund"
    # English articles are not German ones
    assert M.mlqa_normalize("the dog", "de") == "the dog"


def test_mlqa_chinese_char_level_f1():
    # "。" is Unicode punctuation (Po) -> removed; then each CJK char is a token, digits stay together
    assert M.mlqa_normalize("2008年北京。", "zh") == "2008 年 北 京"
    # 北 京 大 学 vs 北 京: common 2, P 2/4, R 1 -> F1 = 2*(1/2)/(3/2) = 2/3
    assert M.mlqa_f1("北京大学", ["北京"], "zh") == approx(2 / 3)
    # whitespace tokenisation (SQuAD) would see one token each and score 0
    assert M.squad_f1("北京大学", ["北京"]) == 0.0
    # a: F1 2/3, EM 0; b: unanswered -> F1 100*(2/3)/2 = 33.33, EM 0
    r = M.mlqa_scores({"a": "北京大学"}, {"a": ["北京"], "b": ["上海"]}, "zh")
    assert r == approx({"exact_match": 0.0, "f1": 100 / 3})


def test_mlqa_script_quirks():
    # Unicode punctuation is removed (« » are Pi/Pf) and so is "$" (ASCII string.punctuation),
    # but "€" (Sc, not ASCII) stays
    assert M.mlqa_normalize("«Hello» $5 €5", "en") == "hello 5 €5"
    # Arabic: every "ال" becomes a space, even inside a word: "مالك" = م|ال|ك -> "م ك"
    assert M.mlqa_normalize("الكتاب", "ar") == "كتاب"
    assert M.mlqa_normalize("مالك", "ar") == "م ك"
    # Vietnamese list is the script's: "của" and "những" go, "một" stays
    assert M.mlqa_normalize("những cuốn sách của tôi một", "vi") == "cuốn sách tôi một"
    with pytest.raises(ValueError, match="'fr' is not an MLQA language"):
        M.mlqa_normalize("le chat", "fr")


def test_qa_score():
    assert M.qa_score(60.0, 80.0) == 70.0


# --------------------------------------------------------------------------- retrieval


def test_retrieval_ties_are_conservative():
    src = [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]  # row 1 has the same direction as row 0
    tgt = [[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]
    # src0: cos to tgt = [1, 1, 0] -> tie, argmax picks 0 = gold -> correct
    # src1: cos [1, 1, 0] -> argmax 0, gold 1 only ties with an earlier index -> miss
    # src2: cos [0, 0, 1] -> 2 correct            => 2/3
    assert M.retrieval_accuracy(src, tgt) == approx(2 / 3)
    # reverse: tgt0 -> [1,1,0] -> 0 ok; tgt1 -> [1,1,0] -> 0 miss; tgt2 -> 2 ok => 2/3
    assert M.retrieval_accuracy_both(src, tgt) == approx({"src2tgt": 2 / 3, "tgt2src": 2 / 3})


def test_retrieval_directions_differ():
    # a hub target (tgt1) attracts both sources, but each target still finds its own source
    src = [[1.0, 0.1], [0.1, 1.0]]
    tgt = [[1.0, -1.0], [1.0, 1.0]]
    # src0 cos: tgt0 (1-.1)/(1.005*1.414)=.633, tgt1 1.1/(1.005*1.414)=.774 -> 1 miss
    # src1 cos: tgt0 negative, tgt1 .774 -> 1 correct   => src2tgt 1/2
    # tgt0 -> src0 (.633 > -.633) correct; tgt1 -> tie .774/.774 -> 0, gold 1 -> miss => 1/2
    assert M.retrieval_accuracy_both(src, tgt) == approx({"src2tgt": 0.5, "tgt2src": 0.5})


def test_retrieval_shape_errors():
    with pytest.raises(ValueError, match="src_emb has 3 rows but tgt_emb has 2"):
        M.retrieval_accuracy(np.eye(3), np.eye(3)[:2])
    with pytest.raises(ValueError, match="dimension 3 but tgt_emb has 2"):
        M.retrieval_accuracy(np.eye(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        M.retrieval_accuracy(np.ones(3), np.ones(3))


def test_margin_scores_by_hand():
    x = [[1.0, 0.0]]
    y = [[1.0, 0.0], [0.6, 0.8]]
    # cos = [1, .6]; k=2 neighbourhood of x0 among y: mean (1+.6)/2 = .8
    # y's neighbourhood among x is capped at 1: y0 -> 1, y1 -> .6
    # margin(0,0) = 1 / ((.8 + 1)/2) = 1/.9;  margin(0,1) = .6 / ((.8 + .6)/2) = .6/.7
    assert M.margin_scores(x, y, k=2) == approx(np.array([[1 / 0.9, 0.6 / 0.7]]))
    # identity, k=2: every neighbourhood mean is (1+0)/2 -> diagonal 1/.5 = 2, off-diagonal 0
    assert M.margin_scores(np.eye(2), np.eye(2), k=2) == approx(2 * np.eye(2))


def test_mine_pairs():
    # x0 ~ y1, x1 ~ y0; k=1 -> every neighbourhood mean is 1 -> scores 1 / ((1+1)/2) = 1
    # forward gives (0,1), (1,0); backward repeats them and is skipped as already seen
    x, y = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    assert M.mine_pairs(x, y, k=1) == [(0, 1, 1.0), (1, 0, 1.0)]
    # orthogonal: cosine 0 -> margin 0/0 -> never above the 0 threshold
    assert M.mine_pairs([[1.0, 0.0]], [[0.0, 1.0]]) == []


def test_bucc_best_threshold_toy():
    cands = {("s1", "t1"): 0.9, ("s2", "t2"): 0.8, ("s3", "t9"): 0.7, ("s4", "t4"): 0.6, ("s5", "t9"): 0.5}
    gold = [("s1", "t1"), ("s2", "t2"), ("s4", "t4"), ("s6", "t6")]  # 4 gold, s6 never mined
    # sweep (extracted, correct, F1): 1,1,.4 | 2,2,.667 | 3,2,.571 | 4,3,.75 best | 5,3,.667
    # threshold = midpoint (.6 + .5)/2 = .55 -> extract 4 with score >= .55, 3 correct
    # P = 3/4, R = 3/4, F1 = 3/4
    r = M.bucc_f1(cands, gold)
    assert r == approx({"precision": 75.0, "recall": 75.0, "f1": 75.0, "threshold": 0.55})


def test_bucc_ties_at_cut_and_last_candidate():
    # sweep peaks after (b,y) (F1 1.0), threshold (.5 + .5)/2 = .5, but extraction takes score >= .5,
    # which includes the tied wrong (c,z): P 2/3, R 1, F1 = 2*(2/3)/(5/3) = .8  (bucc_eval's number)
    cands = [("a", "x", 0.9), ("b", "y", 0.5), ("c", "z", 0.5)]
    r = M.bucc_f1(cands, [("a", "x"), ("b", "y")])
    assert r == approx({"precision": 200 / 3, "recall": 100.0, "f1": 80.0, "threshold": 0.5})
    # best cut after the last candidate: threshold = its score (the script would IndexError)
    # extract both: P 1/2, R 1, F1 2/3
    r = M.bucc_f1({("a", "x"): 0.9, ("b", "y"): 0.4}, [("b", "y")])
    assert r == approx({"precision": 50.0, "recall": 100.0, "f1": 200 / 3, "threshold": 0.4})
    # no correct candidate: threshold stays 0, scores 0
    r = M.bucc_f1({("a", "x"): 0.9}, [("b", "y")])
    assert r == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 0.0}


def test_bucc_from_mined_pairs_with_int_ids_and_duplicates():
    mined = M.mine_pairs([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], k=1)
    # ids compared as strings, as the script's "src\ttgt" lines; both mined pairs gold -> 100
    assert M.bucc_f1(mined, [("0", "1"), (1, 0)])["f1"] == 100.0
    # a repeated pair keeps its max score (read_candidate2score): (a,x) -> .9, then the best cut
    # is after it: threshold (.9 + .2)/2 = .55, extracted {(a,x)} -> P = R = F1 = 100
    r = M.bucc_f1([("a", "x", 0.1), ("b", "y", 0.2), ("a", "x", 0.9)], [("a", "x")])
    assert r == approx({"precision": 100.0, "recall": 100.0, "f1": 100.0, "threshold": 0.55})


# --------------------------------------------------------------------------- aggregation


def test_aggregation():
    # (80 + 70 + 60) / 3 = 70
    assert M.task_score({"en": 80.0, "de": 70.0, "zh": 60.0}) == approx(70.0)
    # (70 + (60+80)/2 + 64) / 3 = 204/3 = 68
    assert M.overall_score({"xnli": 70.0, "mlqa": M.qa_score(60.0, 80.0), "panx": 64.0}) == approx(68.0)
    with pytest.raises(ValueError, match="per_language is empty"):
        M.task_score({})
    with pytest.raises(ValueError, match="per_task is empty"):
        M.overall_score({})


# --------------------------------------------------------------------------- error cases


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: M.accuracy([1, 2], [1]), "preds has 2 items but labels has 1"),
        (lambda: M.accuracy([], []), "empty"),
        (lambda: M.macro_f1([1], [1, 2]), "preds has 1 items but labels has 2"),
        (lambda: M.choice_accuracy([[1.0, 2.0]], [0, 1]), "logits has 1 items but labels has 2"),
        (lambda: M.choice_accuracy(np.ones(3), [0, 1, 2]), "2-D"),
        (lambda: M.bucc_f1({}, [("a", "b")]), "candidates_with_scores is empty"),
        (lambda: M.bucc_f1({("a", "b"): 1.0}, []), "gold_pairs is empty"),
        (lambda: M.margin_scores(np.eye(2), np.eye(2), k=0), "k must be a positive integer"),
        (lambda: M.squad_em("x", []), "golds is empty"),
        (lambda: M.mlqa_scores({"a": "x"}, {"a": ["x"]}, "xx"), "not an MLQA language"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
