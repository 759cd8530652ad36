"""Reports that need no training step: padding waste of random vs length-bucketed batches on
real length distributions (`padding_report`), and what 8/4-bit and trimmed word embeddings cost
in accuracy and save in bytes on a real backbone (`embedding_report`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .shapes import demo_texts


def _shared_length_sources(data_dir: Path | None) -> list[tuple[str, Callable[[], list]]]:
    """(name, loader) of real English training text; loaders return texts or (text, pair) tuples."""
    import csv

    from ..tasks import default_data_dir

    root = Path(data_dir) if data_dir else default_data_dir()

    def tsv(path: Path, cols: list[int], header: bool, limit: int = 20000):
        def load():
            rows = []
            with open(path, newline="", encoding="utf-8") as f:
                r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if header:
                    next(r, None)
                for row in r:
                    if len(row) > max(cols):
                        rows.append(tuple(row[c] for c in cols) if len(cols) > 1 else row[cols[0]])
                    if len(rows) >= limit:
                        break
            return rows
        return load

    out = []
    for name, rel, cols, header in (("sst2 train", "sst2/train.tsv", [0], True),
                                    ("xnli dev en (pairs)", "xnli/dev-en.tsv", [0, 1], False),
                                    ("paws-x dev en (pairs)", "paws-x/dev-en.tsv", [0, 1], False)):
        if (root / rel).exists():
            out.append((name, tsv(root / rel, cols, header)))
    return out


def padding_report(tokenizer, *, batch_sizes: Iterable[int] = (16, 32), max_length: int = 128, seed: int = 0,
                   data_dir: Path | None = None, include_shared: bool = True) -> list[dict]:
    """Padding waste on real length distributions: random batches (what `DataCollatorWithPadding`
    over a shuffled set gives), our length-bucketed batches, and padding every row to max_length."""
    from ..data import load_examples, source_path
    from ..formats.base import length_bucketed_batches, padding_waste
    from ..tasks import get_task

    sources: list[tuple[str, Callable[[], list]]] = []
    for task in ("demo-sentiment", "demo-nli", "demo-topic", "sib200"):
        def load(task=task):
            spec = get_task(task)
            src = spec.source_for("train")
            path = source_path(src, spec, spec.train_language, data_dir) if src.path else None
            if path is None or not path.exists():  # local data only: this report never reaches the Hub
                raise FileNotFoundError(f"no local file {path}")
            ex = load_examples(spec, "train", spec.train_language, data_dir)
            if "text_pair" in spec.columns:
                return [(e["text"], e.get("text_pair") or "") for e in ex]
            return [e["text"] for e in ex]
        sources.append((f"{task} train (en)", load))
    if include_shared:
        sources += _shared_length_sources(data_dir)
    rows = []
    for name, load in sources:
        try:
            items = load()
        except Exception as e:  # missing local data: reported, not fatal
            rows.append({"data": name, "status": f"skipped: {str(e).splitlines()[0][:120]}"})
            continue
        if not items:
            continue
        if isinstance(items[0], tuple):
            enc = tokenizer([a for a, _ in items], [b for _, b in items], truncation=True, max_length=max_length)
        else:
            enc = tokenizer(list(items), truncation=True, max_length=max_length)
        lengths = [len(x) for x in enc["input_ids"]]
        srt = sorted(lengths)
        row = {"data": name, "status": "ok", "examples": len(lengths), "mean_len": sum(lengths) / len(lengths),
               "p50_len": srt[len(srt) // 2], "p95_len": srt[min(len(srt) - 1, int(0.95 * len(srt)))], "max_len": srt[-1],
               "max_length": max_length}
        rng = random.Random(seed)
        for b in batch_sizes:
            idx = list(range(len(lengths)))
            rng.shuffle(idx)
            rand = [idx[i:i + b] for i in range(0, len(idx), b)]
            row[f"waste_random_b{b}"] = padding_waste(lengths, rand)
            row[f"waste_bucketed_b{b}"] = padding_waste(lengths, length_bucketed_batches(lengths, b, seed=seed))
        row["waste_pad_to_max"] = 1.0 - sum(lengths) / (max_length * len(lengths))
        rows.append(row)
    return rows


def embedding_report(backbone: str = "xlmr-e5-small", *, texts: list[str] | None = None, device: str | None = None,
                     rows: int = 20000) -> dict:
    """What the embedding measures cost in accuracy and save in bytes, on a real backbone.

    quantization: row error of the quantized matrix (a sample of `rows` rows) and the error of
    mean-pooled last hidden states on `texts` (default: the demo data, 7 languages) against the
    full-precision backbone; trimming: rows kept for `texts` and the bytes saved."""
    from ..backbone import load_backbone
    from ..compress import embedding_bytes, embedding_quantization_error, quantize_embeddings, trim_vocabulary
    from ..formats.base import pool

    texts = texts if texts is not None else demo_texts()

    def pooled(bb) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                enc = bb.tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
                enc = {k: v.to(bb.device) for k, v in enc.items()}
                h = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                outs.append(pool(h.float(), enc["attention_mask"], "mean").cpu())
        return torch.cat(outs)

    full = load_backbone(backbone, "none", device)
    ref = pooled(full)
    out: dict[str, Any] = {"backbone": backbone, "texts": len(texts), "full_bytes": embedding_bytes(full),
                           "vocab": int(full.model.get_input_embeddings().num_embeddings), "quantized": []}
    w = full.model.get_input_embeddings().weight
    for bits in (8, 4):
        row = embedding_quantization_error(w, bits, rows=rows)
        bb = load_backbone(backbone, "none", device)
        sizes = quantize_embeddings(bb, bits)
        got = pooled(bb)
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
        row.update({"bytes": sizes["bytes_after"], "pooled_rel_error": float((got - ref).norm() / ref.norm()),
                    "pooled_min_cosine": float(cos.min()), "pooled_mean_cosine": float(cos.mean())})
        out["quantized"].append(row)
        del bb
    tb = trim_vocabulary(load_backbone(backbone, "none", device), texts)
    got = pooled(tb)
    out["trimmed"] = {"rows_kept": tb.vocab_size, "bytes": embedding_bytes(tb), "coverage": tb.coverage(texts),
                      "pooled_max_abs_diff": float((got - ref).abs().max())}
    return out
