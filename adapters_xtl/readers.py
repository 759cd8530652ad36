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

IOB2 files come tab-separated (UNER) or separated by runs of spaces (CoNLL-2003 and many NER
releases: `token POS chunk tag`, `-DOCSTART-` lines between documents). The source's
`delimiter:` says which (`tab`, `space`); `auto` (the default) takes tabs when the file has any.

Malformed input (wrong number of columns, a word ID out of sequence, invalid JSON, a SQuAD entry
without its fields, bytes that are not UTF-8) is an `XtlError` naming the file and line (or JSON
path, or byte offset).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import XtlError
from .io import read_utf8

CONLLU_COLUMNS = 10  # ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC
_HASH_TOKEN = re.compile(r"#\t[^\t]+$")  # a two-column IOB2 line whose token is `#`
_TAG = re.compile(r"(O|[BIESL]-\S+)$")  # what an IOB2/IOBES tag looks like


def text_lines(path: Path):
    """(line number, line without its end) of a UTF-8 file, split as text-mode file iteration
    splits (str.splitlines would also split on U+2028, \\x1c, ...)."""
    text = read_utf8(path).replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    yield from enumerate(lines, 1)


def read(fmt: str, path: Path, *, delimiter: str | None = None) -> list[dict]:
    path = Path(path)
    readers = {"conllu": read_conllu, "iob2": read_iob2, "squad": read_squad}
    if fmt not in readers:
        from .errors import did_you_mean

        raise XtlError(f"no reader for file format {fmt!r}", where=str(path), fix=did_you_mean(fmt, readers))
    if not path.exists():
        raise XtlError(f"data file not found: {path}", where=str(path))
    if fmt == "iob2":
        return read_iob2(path, delimiter=delimiter or "auto")
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
    for n, line in text_lines(path):
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


def read_iob2(path: Path, delimiter: str = "auto") -> list[dict]:
    """Sentences of an IOB2 file as {"id", "tokens", "tags"}.

    Layouts (per sentence): `index token tag ...` when the first column numbers the tokens
    1, 2, 3, ... (UNER: 5 columns, the last two `-` and the annotator, ignored); else `token tag`
    or `token ... tag` with the tag last (CoNLL-2003: `token POS chunk tag`). Columns are split
    on tabs or on runs of spaces (`delimiter`: tab, space, auto = tabs when the file has any).
    `#` comments (`# sent_id = ...` names the sentence) and `-DOCSTART-` lines are skipped; one
    blank line between sentences.
    """
    lines = list(text_lines(path))
    if delimiter == "auto":
        delimiter = "tab" if any("\t" in line for _, line in lines) else "space"
    split = (lambda l: l.split("\t")) if delimiter == "tab" else str.split
    out = _Sentences()
    pending: list[tuple[int, list[str]]] = []  # this sentence's (line number, columns)

    def close() -> None:
        numbered = bool(pending) and len(pending[0][1]) >= 3 and all(len(c) >= 3 and c[0] == str(k) for k, (_, c) in enumerate(pending, 1))
        for n, cols in pending:
            token, tag = (cols[1], cols[2]) if numbered else (cols[0], cols[-1])
            tag = tag.strip()
            if not tag:
                raise XtlError(f"line {n}: empty tag for token {token!r}", where=str(path))
            out.tokens.append(token)
            out.tags.append(tag)
        pending.clear()
        out.close()

    for n, line in lines:
        if not line.strip():
            close()
            continue
        if line.startswith("#") and not _is_hash_token(line, split):  # a comment, not the token `#`
            sid = _sent_id(line) if not pending else None
            if sid is not None:
                out.sent_id = sid
            continue
        cols = split(line)
        if cols and cols[0] == "-DOCSTART-":  # CoNLL-2003's document boundary
            close()
            continue
        if len(cols) < 2:
            sep = "<TAB>" if delimiter == "tab" else "<SPACE>"
            raise XtlError(
                f"line {n}: expected `token{sep}tag` (or more columns, tag last, or UNER's index{sep}token{sep}tag), "
                f"got {line[:80]!r}",
                where=str(path),
                fix="check the file is IOB2 (file_format: iob2) and its `delimiter` (tab, space, auto)",
            )
        pending.append((n, cols))
    close()
    return out.rows


def _is_hash_token(line: str, split) -> bool:
    """`#<TAB>O` (or `# O` with spaces) is the token `#` with its tag, not a comment."""
    if _HASH_TOKEN.match(line):
        return True
    cols = split(line)
    return len(cols) == 2 and cols[0] == "#" and bool(_TAG.match(cols[1]))


def read_squad(path: Path) -> list[dict]:
    """Questions of a SQuAD v1.1 JSON file (`data[].paragraphs[].qas[]`), one row each."""
    try:
        doc = json.loads(read_utf8(path))
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
