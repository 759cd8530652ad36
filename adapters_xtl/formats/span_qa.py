"""Extractive span QA, SQuAD v1.1 style (SQuAD, XQuAD, MLQA, TyDiQA-GoldP).

Follows Hugging Face's ``run_qa.py`` (itself the fast-tokenizer port of the ``run_squad.py``
XTREME used), with these settings read from the task YAML's ``defaults`` (XTREME's values):

* ``max_length`` (the TaskSpec field): 384 when the YAML does not set it;
* ``doc_stride`` 128: tokens *shared* by consecutive windows of a long context (HF semantics;
  old ``run_squad`` called the step between windows ``doc_stride``);
* ``max_query_length`` 64: longer questions are cut (as ``run_squad``; ``run_qa`` would fail);
* ``max_answer_length`` 30 tokens and ``n_best_size`` 20 for decoding.

Encoding: question first (left-stripped, as ``run_qa``), context second, ``truncation=
"only_second"``, overflowing windows with offsets. A training window is labelled with the token
positions of the first gold answer, or (0, 0) (``<s>``) when the answer is not wholly inside it.
An answer whose text is not at its ``answer_start`` is looked up (first occurrence); an answer
absent from its context drops the question from training with one counted warning. At
evaluation every question is kept and all its gold texts are scored.

Decoding: per window, the best pair among the ``n_best_size`` best context starts and the
``n_best_size`` best context ends with ``start <= end`` and ``end - start + 1 <= max_answer_length``
by ``start_logit + end_logit``; the best window wins. Departures from ``run_qa``: the top-n lists
are taken among context tokens (``run_qa`` takes them over all tokens, then drops question
tokens, and may be left with nothing), and a window with no valid pair in its top lists falls
back to its best valid pair overall, so a question gets an empty answer only if no window has
a context token. Like ``run_qa`` (and unlike the original BERT/XTREME ``run_squad``), no
"max context" filter is applied to tokens seen by several windows. No unanswerable questions
(v1.1).

Inference (``predict_examples``) decodes as scoring does and reports the answer's probability
within its window (softmax of the start, times that of the end, over the window's context tokens)
and its character offset. The context is never cut (strides); a question over
``max_query_length`` is, and is flagged ``truncated``.

Scores: ``metrics.squad_scores`` (XQuAD, TyDiQA, SQuAD), or ``metrics.mlqa_scores`` with the
context language when the task is MLQA (``"mlqa"`` in ``metrics:`` or a name starting with
``mlqa``); ``qa_score`` is (EM + F1) / 2 as XTREME.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import metrics
from ..errors import XtlError
from . import register_format
from .base import (
    Format,
    flag_truncated,
    input_error,
    input_list,
    input_roles,
    keep_row,
    length_bucketed_batches,
    pad_sequences,
    to_device,
)

DEFAULTS = {"max_length": 384, "doc_stride": 128, "max_query_length": 64, "max_answer_length": 30, "n_best_size": 20}
ROLES = ("id", "question", "context", "answers")


# --------------------------------------------------------------------------- settings
def qa_settings(spec) -> dict[str, int]:
    """The QA options of a task: `max_length` (TaskSpec field; 384 if the YAML leaves it) and
    `doc_stride`, `max_query_length`, `max_answer_length`, `n_best_size` from `defaults`."""
    out = dict(DEFAULTS)
    if "max_length" in spec.model_fields_set:
        out["max_length"] = int(spec.max_length)
    for k in ("doc_stride", "max_query_length", "max_answer_length", "n_best_size"):
        if k in spec.defaults:
            out[k] = int(spec.defaults[k])
    return out


def uses_mlqa_metric(spec) -> bool:
    """MLQA's normalisation (per-language articles, Chinese segmentation) instead of SQuAD's."""
    return "mlqa" in [str(m).lower() for m in spec.metrics] or spec.name.lower().startswith("mlqa")


def mlqa_language(spec, lang: str | None) -> str:
    """The MLQA script's `answer_language` for our language `lang` (its code in the source, or
    itself); without one, the task's training language (the dev set scored while training)."""
    lang = lang or spec.train_language
    for cand in (spec.languages.get(lang), lang):
        if cand in metrics.MLQA_LANGS:
            return cand
    raise XtlError(
        f"language {lang!r} of task {spec.name!r} is not an MLQA language ({', '.join(metrics.MLQA_LANGS)})",
        where=spec.file or spec.name,
        fix="map it to an MLQA code in `languages`, or drop `mlqa` from `metrics` to score with SQuAD's script",
    )


def gold_answers(example: dict) -> list[tuple[str, int | None]]:
    """(text, answer_start) pairs, from our readers' list of dicts or a Hub row's dict of lists.

    An answer with empty text is no answer: SQuAD v1.1 has none, and copies of XTREME's
    TyDiQA-GoldP dev with the answers stripped carry ``{"text": "", "answer_start": 0}``;
    counting those as gold would score every prediction 0 instead of saying the file has no
    answers."""
    ans = example.get("answers")
    if ans is None:
        return []
    if isinstance(ans, Mapping):  # datasets' squad: {"text": [...], "answer_start": [...]}
        texts = list(ans.get("text") or [])
        starts = list(ans.get("answer_start") or [None] * len(texts))
        pairs = [(str(t), None if s is None else int(s)) for t, s in zip(texts, starts)]
    else:
        pairs = []
        for a in ans:
            if isinstance(a, Mapping):
                s = a.get("answer_start")
                pairs.append((str(a.get("text", "")), None if s is None else int(s)))
            else:
                pairs.append((str(a), None))
    return [(t, s) for t, s in pairs if t.strip()]


def _check_roles(examples: list[dict], spec) -> None:
    if not examples:
        raise XtlError("no examples to encode", where=spec.file or spec.name)
    missing = [r for r in ("question", "context") if r not in examples[0]]
    if missing:
        raise XtlError(
            f"span_qa examples need the roles {missing} (task {spec.name!r}); found {sorted(examples[0])}",
            where=spec.file or spec.name,
            fix="set `columns: {id: id, question: question, context: context, answers: answers}` and "
            "`file_format: squad` for SQuAD JSON",
        )


def locate_answer(context: str, text: str, start: int | None) -> int | None:
    """Character start of `text` in `context`: `start` if the text is there, else its first
    occurrence; None when absent (or empty)."""
    if not text.strip():
        return None
    if start is not None and 0 <= start and context[start : start + len(text)] == text:
        return start
    found = context.find(text)
    return found if found >= 0 else None


def _truncate_questions(questions: list[str], tokenizer, max_q: int) -> list[str]:
    """Cut questions to at most `max_q` tokens at a token boundary (as run_squad's max_query_length)."""
    out = list(questions)
    todo = list(range(len(out)))
    while todo:
        enc = tokenizer([out[i] for i in todo], add_special_tokens=False, return_offsets_mapping=True)
        nxt = []
        for j, i in enumerate(todo):
            offs = enc["offset_mapping"][j]
            if len(offs) > max_q:
                out[i] = out[i][: offs[max_q - 1][1]] if max_q > 0 else ""
                nxt.append(i)
        todo = nxt
    return out


def _context_span(seq_ids: list) -> tuple[int, int] | None:
    """First and last token index of the context (sequence 1), or None when it has no token."""
    idx = [k for k, s in enumerate(seq_ids) if s == 1]
    return (idx[0], idx[-1]) if idx else None


def token_span(offsets: list, ctx: tuple[int, int] | None, start_char: int, end_char: int) -> tuple[int, int]:
    """(start, end) token positions of characters [start_char, end_char) inside the window's
    context, or (0, 0) when they are not wholly inside it (run_qa's labelling)."""
    if ctx is None:
        return 0, 0
    a, b = ctx
    if not (offsets[a][0] <= start_char and offsets[b][1] >= end_char):
        return 0, 0
    s = a
    while s <= b and offsets[s][0] <= start_char:
        s += 1
    e = b
    while e >= a and offsets[e][1] >= end_char:
        e -= 1
    return s - 1, e + 1


# --------------------------------------------------------------------------- decoding
def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best (start, end, score) per window, batched: [B, T] logits and a [B, T] bool mask of the
    tokens an answer may use. Score = start + end logit; -inf where no context token exists."""
    B, T = start_logits.shape
    L = max(1, min(max_answer_length, T))
    ctx = context_mask.bool()
    s = start_logits.float().masked_fill(~ctx, float("-inf"))
    e = end_logits.float().masked_fill(~ctx, float("-inf"))
    k = max(1, min(n_best, T))
    top_s = torch.zeros_like(ctx).scatter_(1, s.topk(k, dim=1).indices, True)
    top_e = torch.zeros_like(ctx).scatter_(1, e.topk(k, dim=1).indices, True)
    ends = torch.arange(T, device=s.device)[:, None] + torch.arange(L, device=s.device)[None, :]  # [T, L]
    inside = ends < T
    ends = ends.clamp(max=T - 1)
    pair = (s[:, :, None] + e[:, ends]).masked_fill(~inside, float("-inf"))  # [B, T, L]
    restricted = pair.masked_fill(~(top_s[:, :, None] & top_e[:, ends]), float("-inf"))
    val, idx = restricted.flatten(1).max(1)
    val_all, idx_all = pair.flatten(1).max(1)
    none = torch.isneginf(val)
    val = torch.where(none, val_all, val)
    idx = torch.where(none, idx_all, idx)
    start = idx // L
    return start, start + idx % L, val


@dataclass
class Answer:
    """A decoded answer: its text, character start in the context (None when empty), probability
    within its window, and the start + end logit that ranked it among windows."""

    text: str = ""
    start: int | None = None
    prob: float = 0.0
    logit: float = float("-inf")


class SpanQAHead(torch.nn.Module):
    """A linear layer to start/end logits (as RobertaForQuestionAnswering); padding is masked."""

    def __init__(self, hidden: int):
        super().__init__()
        self.qa_outputs = torch.nn.Linear(hidden, 2)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        logits = self.qa_outputs(hidden)  # [B, T, 2]
        pad = (batch["attention_mask"] == 0).unsqueeze(-1)
        return logits.masked_fill(pad, torch.finfo(logits.dtype).min)


class SpanQA(Format):
    name = "span_qa"

    def make_head(self, spec, hidden_size):
        return SpanQAHead(hidden_size)

    def head_config(self, spec) -> dict:
        return {"kind": "span_qa", **qa_settings(spec)}

    # ----------------------------------------------------------------------- encoding
    def encode(self, examples, spec, tokenizer, *, train):
        _check_roles(examples, spec)
        cfg = qa_settings(spec)
        if not getattr(tokenizer, "is_fast", False):
            raise XtlError("span_qa needs a fast tokenizer (offset mapping)", where="backbone",
                           fix="use a backbone with a tokenizer.json (every XLM-R on the Hub has one)")
        model_max = getattr(tokenizer, "model_max_length", None) or 0
        if 0 < model_max < 1_000_000 and cfg["max_length"] > model_max:
            raise XtlError(f"max_length {cfg['max_length']} exceeds the backbone's {model_max} tokens",
                           where=spec.file or spec.name, fix=f"set `max_length: {model_max}` or less")
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        room = cfg["max_length"] - cfg["max_query_length"] - specials
        if room <= 0 or not 0 <= cfg["doc_stride"] < room:
            raise XtlError(
                f"doc_stride {cfg['doc_stride']} must be below the context room of a window "
                f"(max_length {cfg['max_length']} - max_query_length {cfg['max_query_length']} - {specials} special tokens = {room})",
                where=spec.file or spec.name, fix="lower `defaults.doc_stride` or `defaults.max_query_length`, or raise `max_length`",
            )
        contexts = [str(e.get("context") or "") for e in examples]
        spans: list[tuple[int, int] | None] = [None] * len(examples)
        keep = list(range(len(examples)))
        if train:
            keep, bad, moved = [], [], 0
            for i, (e, c) in enumerate(zip(examples, contexts)):
                answers = gold_answers(e)
                pos = locate_answer(c, *answers[0]) if answers else None
                if pos is None:
                    bad.append(i)
                    continue
                moved += answers[0][1] is not None and pos != answers[0][1]
                spans[i] = (pos, pos + len(answers[0][0]))
                keep.append(i)

            def ids(idx: list[int]) -> str:
                return ", ".join(repr(examples[i].get("id", i)) for i in idx[:5]) + (" ..." if len(idx) > 5 else "")

            if not keep:
                raise XtlError(
                    f"none of the {len(examples)} training questions has a gold answer found in its context (ids {ids(bad)})",
                    where=spec.file or spec.name,
                    fix="check the `answers`/`context` columns and that the file is SQuAD v1.1 style (answers[].text, answer_start)",
                )
            if bad:
                warnings.warn(f"{spec.name}: dropped {len(bad)} of {len(examples)} training questions whose answer "
                              f"text does not occur in the context (ids {ids(bad)})", stacklevel=2)
            if moved:
                warnings.warn(f"{spec.name}: {moved} training answers were not at their answer_start; "
                              "used the first occurrence of the text instead", stacklevel=2)
        questions = _truncate_questions([str(examples[i].get("question") or "").lstrip() for i in keep],
                                        tokenizer, cfg["max_query_length"])
        enc = tokenizer(
            questions, [contexts[i] for i in keep],
            truncation="only_second", max_length=cfg["max_length"], stride=cfg["doc_stride"],
            return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
        )
        features = []
        for f, (ids_, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            ex = keep[enc["overflow_to_sample_mapping"][f]]
            ctx = _context_span(enc.sequence_ids(f))
            if train:
                s, e = token_span(offsets, ctx, *spans[ex])
                features.append({"input_ids": ids_, "start_position": s, "end_position": e})
            else:
                features.append({"input_ids": ids_, "offsets": [tuple(o) for o in offsets], "context_span": ctx,
                                 "example_index": ex, "example_id": examples[ex].get("id", ex)})
        return features

    def collate(self, features, pad_id):
        ids, mask = pad_sequences([f["input_ids"] for f in features], pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if "start_position" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_position"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_position"] for f in features])
        if "context_span" in features[0]:
            spans = torch.tensor([f["context_span"] or (1, 0) for f in features])  # (1, 0): empty
            pos = torch.arange(ids.shape[1])[None, :]
            batch["context_mask"] = (pos >= spans[:, :1]) & (pos <= spans[:, 1:])
        return batch

    def loss(self, outputs, batch):
        out = outputs.float()
        ce = torch.nn.functional.cross_entropy
        return (ce(out[..., 0], batch["start_positions"]) + ce(out[..., 1], batch["end_positions"])) / 2

    # ----------------------------------------------------------------------- decoding and scores
    def predict(self, model, features, examples, spec, batch_size) -> list[str]:
        """The answer text of every example (in `examples` order; "" when nothing was found)."""
        return [a.text for a in self.decode(model, features, examples, spec, batch_size)]

    @torch.inference_mode()
    def decode(self, model, features, examples, spec, batch_size) -> list[Answer]:
        """The best answer of every example, in `examples` order: the window with the highest
        start + end logit wins; an example with no candidate gets the empty `Answer()`."""
        cfg = qa_settings(spec)
        best: dict[int, Answer] = {}
        lengths = [len(f["input_ids"]) for f in features]
        for b in length_bucketed_batches(lengths, batch_size, seed=None):
            batch = to_device(self.collate([features[i] for i in b], model.pad_id), model.device)
            logits = model(batch)
            ctx = batch["context_mask"].bool()
            starts, ends, scores = best_spans(logits[..., 0], logits[..., 1], ctx,
                                              n_best=cfg["n_best_size"], max_answer_length=cfg["max_answer_length"])
            norm = sum(logits[..., k].float().masked_fill(~ctx, float("-inf")).logsumexp(1) for k in (0, 1))
            probs = (scores - norm).exp()
            for i, s, e, sc, p in zip(b, starts.tolist(), ends.tolist(), scores.tolist(), probs.tolist()):
                self._keep_best(best, features[i], examples, s, e, sc, p)
        return [best.get(i, Answer()) for i in range(len(examples))]

    @staticmethod
    def _keep_best(best, feature, examples, s, e, score, prob) -> None:
        if score == float("-inf"):
            return
        ex = feature["example_index"]
        if ex not in best or score > best[ex].logit:
            offs = feature["offsets"]
            raw = str(examples[ex].get("context") or "")[offs[s][0] : offs[e][1]]
            text = raw.strip()
            start = offs[s][0] + len(raw) - len(raw.lstrip()) if text else None
            best[ex] = Answer(text, start, prob, score)

    def score(self, model, features, examples, spec, batch_size, lang: str | None = None, keep=None):
        """EM, F1 and XTREME's QA score, in percent. `lang` (ours) selects MLQA's normalisation;
        without it, the task's training language is assumed."""
        answers = self.decode(model, features, examples, spec, batch_size)
        if keep is not None:
            keep.extend(keep_row(e, i, [t for t, _ in gold_answers(e)], a.text, a.prob)
                        for i, (e, a) in enumerate(zip(examples, answers)))
        return self.score_predictions([a.text for a in answers], examples, spec, lang)

    def score_predictions(self, preds: list[str], examples: list[dict], spec, lang: str | None = None) -> dict[str, float]:
        golds = {i: [t for t, _ in gold_answers(e)] for i, e in enumerate(examples)}
        empty = [i for i, g in golds.items() if not g]
        if empty:
            warnings.warn(f"{spec.name}: {len(empty)} questions have no gold answer (not SQuAD v1.1) and are "
                          "left out of the score", stacklevel=2)
            golds = {i: g for i, g in golds.items() if g}
        if not golds:
            raise XtlError(f"none of the {len(examples)} questions has a gold answer (empty `answers` or empty "
                           "answer texts)", where=spec.file or spec.name,
                           fix="evaluate on a file with answers: some XTREME mirrors strip them from TyDiQA-GoldP dev; "
                               "use the Hub task (`tydiqa`) or a copy with answers")
        pred_map = dict(enumerate(preds))
        if uses_mlqa_metric(spec):
            s = metrics.mlqa_scores(pred_map, golds, mlqa_language(spec, lang))
        else:
            s = metrics.squad_scores(pred_map, golds)
        return {"exact_match": s["exact_match"], "f1": s["f1"], "qa_score": metrics.qa_score(s["exact_match"], s["f1"])}

    # ----------------------------------------------------------------------- inference
    def examples_from_inputs(self, inputs, spec):
        """Each input is a dict with `question` and `context`."""
        fix = 'pass {"question": ..., "context": ...}'
        out = []
        for n, inp in enumerate(input_list(inputs, spec)):
            if isinstance(inp, str):
                raise input_error(n, f"task {spec.name!r} answers questions about a text: a plain string is not "
                                     "enough, the fields 'question' and 'context' are needed", fix)
            ex = input_roles(inp, n, ("question", "context"), spec, fix)
            ex["question"], ex["context"] = str(ex["question"]), str(ex["context"])
            out.append(ex)
        return out

    def predict_examples(self, model, examples, spec, batch_size=32):
        """`truncated` when the question was cut to `max_query_length` (the context never is)."""
        if not examples:
            return []
        tok = model.tokenizer
        features = self.encode(examples, spec, tok, train=False)
        answers = self.decode(model, features, examples, spec, batch_size)
        questions = [str(e.get("question") or "").lstrip() for e in examples]
        kept = _truncate_questions(questions, tok, qa_settings(spec)["max_query_length"])
        cut = [a != b for a, b in zip(kept, questions)]
        outs = [{"answer": a.text, "score": a.prob, "start": a.start} for a in answers]
        return flag_truncated(outs, cut)


register_format(SpanQA())
