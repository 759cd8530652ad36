"""Readers for the structured local file formats: CoNLL-U, IOB2 (UNER) and SQuAD v1.1 JSON.

`data.read_local` hands every `file_format` it does not read itself to `read(fmt, path)`. Each
reader returns plain rows (dicts); the task's `columns` then map them to roles as for any file.

Rows:
  conllu  one per sentence: {"id", "tokens", "tags"}  (tags = UPOS)
  iob2    one per sentence: {"id", "tokens", "tags"}  (tags = the IOB2 entity tags)
  squad   one per question: {"id", "context", "question", "answers": [{"text", "answer_start"}], "title"}

"id" is the sentence's `# sent_id = ...` comment when it has one, else its 0-based index in the file.

CoNLL-U and syntactic words. A CoNLL-U sentence lists *syntactic* words (ID 1, 2, 3, ...) and
may add multi-word token ranges (`3-4  don't`, the surface form of words 3 and 4 `do` + `n't`)
and empty nodes (`5.1`, enhanced-dependency elisions with no surface form). XTREME's UD-POS and
every UPOS tagger score the syntactic words, because only they carry a UPOS tag: range lines and
empty nodes are skipped, so `tokens` is the word sequence and `tags[i]` is word i's UPOS (the
counts then equal the treebank's word counts, e.g. 25147 in en_ewt-ud-dev). Sentences whose
FORMs are all hidden (`_`, licence-stripped treebanks) are kept: they are the data's problem.

Malformed input (wrong number of columns, a word ID out of sequence, invalid JSON, a SQuAD entry
without its fields) is an `XtlError` naming the file and line (or JSON path).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import XtlError

CONLLU_COLUMNS = 10  # ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC
_HASH_TOKEN = re.compile(r"#\t[^\t]+$")  # a two-column IOB2 line whose token is `#`


def read(fmt: str, path: Path) -> list[dict]:
    path = Path(path)
    readers = {"conllu": read_conllu, "iob2": read_iob2, "squad": read_squad}
    if fmt not in readers:
        from .errors import did_you_mean

        raise XtlError(f"no reader for file format {fmt!r}", where=str(path), fix=did_you_mean(fmt, readers))
    if not path.exists():
        raise XtlError(f"data file not found: {path}", where=str(path))
    return readers[fmt](path)


def _sent_id(comment: str) -> str | None:
    body = comment[1:].strip()
    if body.startswith("sent_id"):
        key, sep, value = body.partition("=")
        if sep and key.strip() == "sent_id":
            return value.strip()
    return None


class _Sentences:
    """Collects (token, tag) lines into sentence rows; a blank line or EOF closes a sentence."""

    def __init__(self):
        self.rows: list[dict] = []
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.sent_id: str | None = None

    def close(self) -> None:
        if self.tokens:
            sid = self.sent_id if self.sent_id is not None else len(self.rows)
            self.rows.append({"id": sid, "tokens": self.tokens, "tags": self.tags})
        self.tokens, self.tags, self.sent_id = [], [], None


def read_conllu(path: Path) -> list[dict]:
    """Sentences of a CoNLL-U file as {"id", "tokens" (FORM), "tags" (UPOS)}; see the module doc."""
    out = _Sentences()
    expected = 1  # the next syntactic word's ID
    with open(path, encoding="utf-8-sig") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                out.close()
                expected = 1
                continue
            if line.startswith("#"):
                if not out.tokens:  # comments precede the sentence's words
                    sid = _sent_id(line)
                    if sid is not None:
                        out.sent_id = sid
                continue
            cols = line.split("\t")
            if len(cols) != CONLLU_COLUMNS:
                raise XtlError(
                    f"line {n}: {len(cols)} tab-separated columns, CoNLL-U has {CONLLU_COLUMNS}: {line[:80]!r}",
                    where=str(path),
                    fix="check the file is CoNLL-U (file_format: conllu) and uses tabs, not spaces",
                )
            wid = cols[0]
            if "-" in wid or "." in wid:  # multi-word token range / empty node: not a syntactic word
                lo = wid.replace("-", ".").split(".")
                if not all(p.isdigit() for p in lo if p) or len(lo) != 2:
                    raise XtlError(f"line {n}: malformed word ID {wid!r}", where=str(path))
                continue
            if not wid.isdigit() or int(wid) != expected:
                raise XtlError(
                    f"line {n}: word ID {wid!r}, expected {expected} (a missing blank line between sentences?)",
                    where=str(path),
                    fix="sentences are separated by one blank line and number their words 1, 2, 3, ...",
                )
            expected += 1
            out.tokens.append(cols[1])
            out.tags.append(cols[3])
    out.close()
    return out.rows


def read_iob2(path: Path) -> list[dict]:
    """Sentences of an IOB2 file as {"id", "tokens", "tags"}.

    UNER layout: `index <TAB> token <TAB> tag <TAB> ...` (UNER has 5 columns: the last two are
    `-` and the annotator, ignored); `#` comments (`# sent_id = ...` names the sentence); one
    blank line between sentences. Two-column `token <TAB> tag` files are read too.
    """
    out = _Sentences()
    with open(path, encoding="utf-8-sig") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                out.close()
                continue
            if line.startswith("#") and not _HASH_TOKEN.match(line):  # a comment, not the token `#`
                sid = _sent_id(line) if not out.tokens else None
                if sid is not None:
                    out.sent_id = sid
                continue
            cols = line.split("\t")
            if len(cols) == 2:
                token, tag = cols
            elif len(cols) >= 3 and cols[0].isdigit():
                token, tag = cols[1], cols[2]
            else:
                raise XtlError(
                    f"line {n}: expected `index<TAB>token<TAB>tag[<TAB>...]` or `token<TAB>tag`, got {line[:80]!r}",
                    where=str(path),
                    fix="check the file is tab-separated IOB2 (file_format: iob2)",
                )
            tag = tag.strip()
            if not tag:
                raise XtlError(f"line {n}: empty tag for token {token!r}", where=str(path))
            out.tokens.append(token)
            out.tags.append(tag)
    out.close()
    return out.rows


def read_squad(path: Path) -> list[dict]:
    """Questions of a SQuAD v1.1 JSON file (`data[].paragraphs[].qas[]`), one row each."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise XtlError(f"not valid JSON: {e.msg} (line {e.lineno})", where=str(path)) from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise XtlError("no `data` list: not a SQuAD-format file", where=str(path),
                       fix="file_format: squad expects {\"data\": [{\"paragraphs\": [{\"context\", \"qas\"}]}]}")
    rows: list[dict] = []
    for a, article in enumerate(data):
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise XtlError(f"data[{a}] has no `paragraphs` list", where=str(path))
        for p, par in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(par, dict) or not isinstance(par.get("context"), str) or not isinstance(par.get("qas"), list):
                raise XtlError(f"{where} needs a `context` string and a `qas` list", where=str(path))
            context = par["context"]
            for q, qa in enumerate(par["qas"]):
                qwhere = f"{where}.qas[{q}]"
                if not isinstance(qa, dict) or "question" not in qa or "id" not in qa:
                    raise XtlError(f"{qwhere} needs `id` and `question`", where=str(path))
                answers = []
                for k, ans in enumerate(qa.get("answers") or []):
                    try:
                        answers.append({"text": str(ans["text"]), "answer_start": int(ans["answer_start"])})
                    except (KeyError, TypeError, ValueError):
                        raise XtlError(f"{qwhere}.answers[{k}] needs `text` and an integer `answer_start`",
                                       where=str(path)) from None
                rows.append({"id": qa["id"], "context": context, "question": qa["question"],
                             "answers": answers, "title": title})
    return rows
