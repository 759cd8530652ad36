"""Sentence retrieval without training: Tatoeba-style pairs and BUCC-style bitext mining.

Both modes embed sentences with the encoder as it is (the bare backbone, or with an intermediate
module active): the hidden states of one layer, pooled over the tokens (`pooling: mean`, the
default, averages every non-padding token including <s> and </s>; `cls` takes <s>).

`retrieval_mode: pairs` (Tatoeba; the default). Two line-aligned files (`test` and
`test_pivot` splits) or two columns (`text`, `text_pair`); each sentence's nearest neighbour by
cosine on the other side must be its translation. Accuracy, averaged over xx->en and en->xx,
and each direction apart; XTREME's Tatoeba number is `accuracy_en2xx` (English queries, see
metrics/xtreme.py).

`retrieval_mode: mining` (BUCC 2018). Two *non-parallel* monolingual sides and a gold file; the
task's splits are `S`, `S_pivot` and `S_gold` for the evaluated split S (`test`, else
`validation`). BUCC's own layout, as XTREME's download script leaves it (BUCC "training" renamed
`test`, "sample" renamed `dev`):

    {lang}-en.{split}.{lang}   id<TAB>sentence     e.g. de-000000001<TAB>Die Katze ...
    {lang}-en.{split}.en       id<TAB>sentence     e.g. en-000000001<TAB>The cat ...
    {lang}-en.{split}.gold     id_xx<TAB>id_en     the true translation pairs

Identical sentences on a side are embedded once and mined as one text (XTREME's
`text_load_unify`). A mined pair is then mapped back to ids as XTREME's `read_sent2id` /
`read_candidate2score` (third_party/utils_retrieve.py) do: a sentence text that occurs on more
than one line of its side has no id at all, so every candidate involving it is dropped, while the
gold pairs naming those lines stay in the gold set (they count in recall and can never be found).
Sentences are compared after stripping surrounding whitespace, as `read_sent2id` strips lines.
Mining is LASER's / XTREME's `mine_bitext` (ratio margin over the k=4 nearest neighbours both
ways, `retrieval=max`, greedy 1-to-1, scores > 0; `metrics.mine_pairs`), and the score is
`metrics.bucc_f1`: precision, recall and F1 at the threshold that maximises F1 against the
evaluated split's own gold pairs. That is what XTREME's code computes too: `run_retrieval.py`
calls `bucc_eval` with the split's gold file for dev and for test alike, and `bucc_eval`
re-optimises the threshold whenever a gold file is given (a passed threshold is used only
without one), so the published test F1 is at the test-optimal threshold as well; it is an
upper bound on what a threshold fixed on dev would give. Sides too large for a dense similarity
matrix are mined block-wise (`mine_blockwise`: same algorithm, top-k per block, float32 on the model's
device); small ones go through `metrics.mine_pairs` itself. `eval_limit` keeps the first
`limit` gold pairs and as many non-gold sentences per side as keeps each side's gold density.

Layer and pooling (`retrieval_layer`, `pooling` in the task YAML). Default: the layer at 7/12 of
the depth, `hidden_states[round(7/12 * L)]` (index 0 = embeddings), mean pooling: layer 14 of 24
on XLM-R large (7 of 12 on base-sized and e5-small models). That is jiant's choice for both BUCC
and Tatoeba in the paper reproduced here ("The reference implementation from the XTREME paper
uses layer 14", jiant's `xtreme_runconfig_writer.py`, mean pooler), and middle layers align
languages best. XTREME's own scripts differ between the two tasks, as we read them:
`run_tatoeba.sh` takes index 13 of the last 24 hidden states on XLM-R large (= layer 14, the same
as ours) and index 7 of the last 12 on mBERT (= layer 8 of 12), mean-pooled; `run_bucc2018.sh`
passes `--specific_layer 7` but not `--num_layers`, so `run_retrieval.py` indexes the last 12
hidden states (= layer 20 of 24 on XLM-R large, layer 8 on 12-layer models), and although it
passes `--pool_type cls`, `extract_embeddings` is called without it, so mean pooling is what
runs (over every token, <s> and </s> included, as ours: `--pool_skip_special_token` is not
set). Max length: 512 on real XTREME runs (the catalog's bucc2018/tatoeba tasks), as jiant.

Inference (`predict_examples`) returns the embedding scoring uses (same layer, pooling and
truncation), unnormalised; the similarity the scores rank by is the cosine of two of them.
Per-example rows (`keep=`): in pairs mode one row per sentence and direction (`direction`
`xx2en` or `en2xx`), gold and predicted neighbour indices and the cosine of the prediction, so
their mean correctness is `accuracy`; in mining mode one row per mined pair (`prediction` the en
id, `score` its margin) and one per gold pair never mined (`prediction` None), each with the
source id's gold en ids, from which `metrics.bucc_f1` gives the scores back.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..errors import XtlError
from . import register_format
from .base import (
    Format,
    flag_truncated,
    input_list,
    input_roles,
    keep_row,
    length_bucketed_batches,
    limited_spec,
    pad_sequences,
    pool,
    to_device,
    was_cut,
)

MARGIN_K = 4  # neighbourhood of the ratio margin (LASER / XTREME)
DENSE_LIMIT = 4_000_000  # src x tgt sizes up to this go through metrics.mine_pairs (float64, dense)


def default_layer(num_layers: int) -> int:
    return max(1, round(num_layers * 7 / 12))


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """What `embed` feeds the encoder: each text, truncated to `max_length` tokens."""
    return tokenizer([t or "" for t in texts], truncation=True, max_length=max_length)["input_ids"]


def embed(model, texts: list[str], *, layer: int | None, max_length: int = 128, batch_size: int = 32,
          pooling: str = "mean") -> torch.Tensor:
    """Pooled hidden states of `layer` (0 = embeddings; None = 7/12 of the depth) per text, in order."""
    return embed_ids(model, token_ids(model.tokenizer, texts, max_length), layer=layer, batch_size=batch_size,
                     pooling=pooling)


@torch.inference_mode()
def embed_ids(model, enc: list[list[int]], *, layer: int | None, batch_size: int = 32,
              pooling: str = "mean") -> torch.Tensor:
    """`embed` of already tokenized texts."""
    L = default_layer(model.num_layers) if layer is None else layer
    if not 0 <= L <= model.num_layers:
        raise XtlError(f"retrieval_layer {L} is outside 0..{model.num_layers} (0 = embeddings)",
                       where="retrieval_layer", fix=f"pick a layer of this {model.num_layers}-layer backbone")
    out = torch.zeros(len(enc), model.hidden_size)
    for b in length_bucketed_batches([len(e) for e in enc], batch_size, seed=None):
        ids, mask = pad_sequences([enc[i] for i in b], model.tokenizer.pad_token_id)
        batch = to_device({"input_ids": ids, "attention_mask": mask}, model.device)
        hs = model.encode(batch, output_hidden_states=True).hidden_states[L]
        out[b] = pool(hs.float(), batch["attention_mask"], pooling).cpu()
    return out


def embed_spec(model, texts: list[str], spec, batch_size: int = 32) -> torch.Tensor:
    return embed(model, texts, layer=spec.retrieval_layer, max_length=spec.max_length,
                 batch_size=batch_size, pooling=spec.pooling)


def nearest_rows(a: np.ndarray, b: np.ndarray, direction: str) -> list[dict]:
    """Keep rows of pairs mode for one direction: row i of `a` should find row i of `b`. Cosine
    in float64 with zero rows left at zero and ties to the lowest index, as
    `metrics.retrieval_accuracy`."""
    def unit(m):
        m = np.asarray(m, dtype=np.float64)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(norms > 0, norms, 1.0)

    sim = unit(a) @ unit(b).T
    best = np.argmax(sim, axis=1)
    return [{**keep_row({}, i, i, int(j), float(sim[i, j])), "direction": direction} for i, j in enumerate(best)]


# --------------------------------------------------------------------------- mining
def _topk_merge(best_sim, best_ind, sim, ind, k):
    s = torch.cat([best_sim, sim], dim=1)
    i = torch.cat([best_ind, ind], dim=1)
    top = torch.topk(s, k, dim=1)
    return top.values, torch.gather(i, 1, top.indices)


@torch.inference_mode()
def knn_both(x: torch.Tensor, y: torch.Tensor, k: int, *, block: int | None = None, device=None):
    """Cosine k nearest neighbours x->y and y->x, one block of x rows at a time (never the full
    similarity matrix): (x2y_sim, x2y_ind, y2x_sim, y2x_ind), best first."""
    device = device or torch.device("cpu")
    x = torch.nn.functional.normalize(x.float(), dim=1).to(device)
    y = torch.nn.functional.normalize(y.float(), dim=1).to(device)
    kx, ky = min(k, y.shape[0]), min(k, x.shape[0])
    block = block or max(1, min(x.shape[0], 2**26 // max(1, y.shape[0])))  # ~256 MiB of float32
    x2y_sim, x2y_ind = [], []
    y2x_sim = torch.full((y.shape[0], 0), float("-inf"), device=device)
    y2x_ind = torch.zeros((y.shape[0], 0), dtype=torch.long, device=device)
    for start in range(0, x.shape[0], block):
        sim = x[start:start + block] @ y.T
        top = torch.topk(sim, kx, dim=1)
        x2y_sim.append(top.values)
        x2y_ind.append(top.indices)
        col = torch.topk(sim.T, min(ky, sim.shape[0]), dim=1)
        y2x_sim, y2x_ind = _topk_merge(y2x_sim, y2x_ind, col.values, col.indices + start, min(ky, y2x_sim.shape[1] + col.values.shape[1]))
    return torch.cat(x2y_sim), torch.cat(x2y_ind), y2x_sim, y2x_ind


def mine_blockwise(src_emb, tgt_emb, k: int = MARGIN_K, *, block: int | None = None, device=None
                   ) -> list[tuple[int, int, float]]:
    """`metrics.mine_pairs` for sides too large for a dense matrix: the same margin, candidates
    and greedy 1-to-1 extraction from block-wise kNN. (src_index, tgt_index, score), best first."""
    src_emb, tgt_emb = torch.as_tensor(np.asarray(src_emb)), torch.as_tensor(np.asarray(tgt_emb))
    fs, fi, bs, bi = (t.cpu().double().numpy() if t.is_floating_point() else t.cpu().numpy()
                      for t in knn_both(src_emb, tgt_emb, k, block=block, device=device))
    fwd_mean, bwd_mean = fs.mean(axis=1), bs.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fwd = np.nan_to_num(fs / ((fwd_mean[:, None] + bwd_mean[fi]) / 2), nan=-np.inf)
        bwd = np.nan_to_num(bs / ((bwd_mean[:, None] + fwd_mean[bi]) / 2), nan=-np.inf)
    n_src, n_tgt = fs.shape[0], bs.shape[0]
    src_idx = np.concatenate((np.arange(n_src), bi[np.arange(n_tgt), bwd.argmax(axis=1)]))
    tgt_idx = np.concatenate((fi[np.arange(n_src), fwd.argmax(axis=1)], np.arange(n_tgt)))
    scores = np.concatenate((fwd.max(axis=1), bwd.max(axis=1)))
    seen_s, seen_t, out = set(), set(), []
    for i in np.argsort(-scores, kind="stable"):
        s, t = int(src_idx[i]), int(tgt_idx[i])
        if s not in seen_s and t not in seen_t:
            seen_s.add(s)
            seen_t.add(t)
            if scores[i] > 0:
                out.append((s, t, float(scores[i])))
    return out


def mine(src_emb, tgt_emb, k: int = MARGIN_K, device=None) -> list[tuple[int, int, float]]:
    if len(src_emb) * len(tgt_emb) <= DENSE_LIMIT:
        return metrics.mine_pairs(src_emb, tgt_emb, k=k)
    return mine_blockwise(src_emb, tgt_emb, k, device=device)


def _unify(ids: list[str], texts: list[str]) -> tuple[list[str], list[list[str]]]:
    """Unique texts (first-seen order) and, for each, the ids of the lines holding it."""
    pos: dict[str, int] = {}
    uniq: list[str] = []
    owners: list[list[str]] = []
    for i, t in zip(ids, texts):
        if t not in pos:
            pos[t] = len(uniq)
            uniq.append(t)
            owners.append([])
        owners[pos[t]].append(i)
    return uniq, owners


def candidate_ids(mined: list[tuple[int, int, float]], owners_x: list[list[str]], owners_e: list[list[str]]
                  ) -> dict[tuple[str, str], float]:
    """Mined (text index, text index, score) -> {(xx id, en id): score}, as XTREME's
    `read_candidate2score`: a text held by several lines of its side (`owners` longer than one)
    maps to no id and its candidates are dropped; a repeated id pair keeps its best score."""
    cands: dict[tuple[str, str], float] = {}
    for s, t, score in mined:
        if len(owners_x[s]) == 1 and len(owners_e[t]) == 1:
            key = (owners_x[s][0], owners_e[t][0])
            cands[key] = max(score, cands.get(key, -math.inf))
    return cands


def mining_sides(spec, lang: str, data_dir: Path | None = None, limit: int | None = None, split: str | None = None):
    """(xx rows, en rows, gold pairs) of a mining task: rows are (id, text); gold (xx_id, en_id)."""
    from ..data import load_examples

    split = split or spec.eval_split
    for need in (split, f"{split}_pivot", f"{split}_gold"):
        if need not in spec.splits:
            raise XtlError(
                f"mining task {spec.name!r} needs the splits {split}, {split}_pivot and {split}_gold; "
                f"it has {', '.join(spec.splits) or 'none'}",
                where=spec.file or spec.name,
                fix="see the BUCC layout in adapters_xtl/formats/retrieval.py",
            )

    def rows(s):
        out = [(str(e["id"]), str(e.get("text") or "").strip()) for e in load_examples(spec, s, lang, data_dir)]
        return [(i, t) for i, t in out if t]

    xx, en = rows(split), rows(f"{split}_pivot")
    gold_ex = load_examples(spec, f"{split}_gold", lang, data_dir)
    if not gold_ex or "src" not in gold_ex[0] or "tgt" not in gold_ex[0]:
        raise XtlError(f"the {split}_gold split must map the roles `src` and `tgt` (xx id, en id)",
                       where=spec.file or spec.name,
                       fix="e.g. columns: {src: src_id, tgt: tgt_id} on the gold split")
    gold = [(str(e["src"]), str(e["tgt"])) for e in gold_ex]
    x_ids, e_ids = {i for i, _ in xx}, {i for i, _ in en}
    missing = [g for g in gold if g[0] not in x_ids or g[1] not in e_ids]
    if missing:
        raise XtlError(f"{len(missing)} gold pairs name ids missing from the sentence files, e.g. {missing[0]}",
                       where=spec.file or spec.name, fix="the gold file and the sentence files must come from one split")
    if limit and len(gold) > limit:
        xx, en, gold = _subsample(xx, en, gold, limit)
    return xx, en, gold


def _subsample(xx, en, gold, limit: int):
    """The first `limit` gold pairs, plus non-gold sentences in file order so that each side keeps
    its share of gold sentences (a smaller problem of the same difficulty)."""
    keep = gold[:limit]
    kx, ke = {s for s, _ in keep}, {t for _, t in keep}
    all_x, all_e = {s for s, _ in gold}, {t for _, t in gold}

    def side(rows, kept, golds):
        n = max(len(kept), round(limit * len(rows) / len(gold)))
        out = [r for r in rows if r[0] in kept]
        extra = [r for r in rows if r[0] not in golds][: max(0, n - len(out))]
        chosen = {r[0] for r in out + extra}
        return [r for r in rows if r[0] in chosen]

    return side(xx, kx, all_x), side(en, ke, all_e), keep


class Retrieval(Format):
    name = "retrieval"
    trainable = False

    def make_head(self, spec, hidden_size):
        return None

    def head_config(self, spec) -> dict:
        return {"kind": "none", "mode": spec.retrieval_mode, "pooling": spec.pooling, "layer": spec.retrieval_layer}

    def score_language(self, model, spec, lang: str, *, data_dir: Path | None = None, limit: int | None = None,
                       batch_size: int = 32, keep: list | None = None) -> dict[str, float]:
        """Scores of one language in either mode (what `evaluate` calls for retrieval tasks);
        a list `keep` gets the per-example rows (module doc)."""
        if spec.retrieval_mode == "mining":
            xx, en, gold = mining_sides(spec, lang, data_dir, limit)
            return self.score_mining(model, xx, en, gold, spec, batch_size=batch_size, keep=keep)
        from ..evaluation import retrieval_pairs

        src, tgt = retrieval_pairs(spec, lang, data_dir, limit)
        return self.score_pairs(model, src, tgt, spec, batch_size=batch_size, keep=keep)

    def score_pairs(self, model, src: list[str], tgt: list[str], spec, batch_size: int = 32,
                    keep: list | None = None) -> dict[str, float]:
        if len(src) != len(tgt):
            raise XtlError(
                f"retrieval sides differ in length: {len(src)} vs {len(tgt)} lines",
                where=spec.name,
                fix="the two files must be line-aligned translations",
            )
        if spec.retrieval_mode == "mining":
            raise XtlError(f"task {spec.name!r} mines bitext: it is scored per language by `score_language`",
                           where=spec.file or spec.name, fix="call Retrieval.score_language (evaluate does)")
        a = embed_spec(model, src, spec, batch_size)
        b = embed_spec(model, tgt, spec, batch_size)
        both = metrics.retrieval_accuracy_both(a.numpy(), b.numpy())
        if keep is not None:
            keep.extend(nearest_rows(a.numpy(), b.numpy(), "xx2en") + nearest_rows(b.numpy(), a.numpy(), "en2xx"))
        return {
            "accuracy": 100.0 * (both["src2tgt"] + both["tgt2src"]) / 2,
            "accuracy_xx2en": 100.0 * both["src2tgt"],
            "accuracy_en2xx": 100.0 * both["tgt2src"],
        }

    def score_mining(self, model, xx: list[tuple[str, str]], en: list[tuple[str, str]],
                     gold: list[tuple[str, str]], spec, batch_size: int = 32,
                     keep: list | None = None) -> dict[str, float]:
        """BUCC P/R/F1 (percent) of mining `xx` against `en` ((id, text) rows) given gold id pairs."""
        if not xx or not en:
            raise XtlError("a mining side is empty", where=spec.file or spec.name)
        if not gold:
            raise XtlError("no gold pairs: recall is undefined", where=spec.file or spec.name)
        ux, owners_x = _unify([i for i, _ in xx], [t for _, t in xx])
        ue, owners_e = _unify([i for i, _ in en], [t for _, t in en])
        a = embed_spec(model, ux, spec, batch_size)
        b = embed_spec(model, ue, spec, batch_size)
        cands = candidate_ids(mine(a, b, MARGIN_K, device=model.device), owners_x, owners_e)
        if keep is not None:
            keep.extend(mining_rows(cands, gold))
        if not cands:  # nothing mined with a positive margin
            return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
        res = metrics.bucc_f1(cands, gold)
        return {"f1": res["f1"], "precision": res["precision"], "recall": res["recall"]}

    # ----------------------------------------------------------------------- inference
    def examples_from_inputs(self, inputs, spec):
        """A string is a sentence to embed; a dict gives it as `text`."""
        fix = 'pass a sentence string or {"text": ...}'
        return [input_roles({"text": inp} if isinstance(inp, str) else inp, n, ("text",), spec, fix)
                for n, inp in enumerate(input_list(inputs, spec))]

    def predict_examples(self, model, examples, spec, batch_size=32):
        spec = limited_spec(spec, model.tokenizer)
        texts = [str(e.get("text") or "") for e in examples]
        ids = token_ids(model.tokenizer, texts, spec.max_length)
        emb = embed_ids(model, ids, layer=spec.retrieval_layer, batch_size=batch_size, pooling=spec.pooling)
        outs = [{"embedding": row} for row in emb.tolist()]
        return flag_truncated(outs, was_cut(model.tokenizer, texts, None, ids, spec.max_length))


def mining_rows(cands: dict[tuple[str, str], float], gold: list[tuple[str, str]]) -> list[dict]:
    """Keep rows of mining mode (module doc), best mined pair first, then unmined gold pairs."""
    gold = list(dict.fromkeys(gold))
    gold_of: dict[str, list[str]] = {}
    for s, t in gold:
        gold_of.setdefault(s, []).append(t)
    rows = [keep_row({"id": s}, 0, gold_of.get(s, []), t, score)
            for (s, t), score in sorted(cands.items(), key=lambda kv: -kv[1])]
    rows += [keep_row({"id": s}, 0, gold_of[s], None, None) for s, t in gold if (s, t) not in cands]
    return rows


register_format(Retrieval())
