"""What a Hub card states that the manifest alone does not know: the data's Hub ids, the licence
of data and backbone, the parts of a composed module, and how the repo root loads.

The card renderer (`store.card`) sits below the task catalog, so the facts are gathered here
once, at push time, from the task YAMLs (`dataset:`, `config:`, `split:` of the training and
evaluation splits) and the local registry (the intermediates' own Hub repos), and travel in the
pushed manifest as `card`, so a pulled module's card says the same.

Licences are those the Hub lists for each data set and backbone (`LICENSES`); a module trained
on data under one licence and a backbone under another is shipped under `other`, named after
both, and the card's body lists each. Data or a backbone whose licence is not known here leave
the card without a `license`: we do not guess one.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import XtlError
from .card import base_model

log = logging.getLogger(__name__)

__all__ = ["LICENSES", "card_facts", "combined_license"]

# The licence the Hub lists for each data set the task YAMLs name, and for each backbone.
LICENSES = {
    "FacebookAI/xlm-roberta-base": "mit",
    "FacebookAI/xlm-roberta-large": "mit",
    "intfloat/multilingual-e5-small": "mit",
    "Davlan/sib200": "cc-by-sa-4.0",
    "Rowan/hellaswag": "mit",
    "allenai/cosmos_qa": "cc-by-4.0",
    "facebook/anli": "cc-by-nc-4.0",
    "facebook/xnli": "cc-by-nc-4.0",
    "google-research-datasets/paws-x": "other",
    "google/xquad": "cc-by-sa-4.0",
    # google/xtreme is left out: the Hub lists one licence per subset (apache-2.0, cc-by-4.0,
    # cc-by-2.0 and three more), so a card claims none for it rather than the wrong one
    "nyu-mll/glue": "other",
    "rajpurkar/squad": "cc-by-sa-4.0",
    "stanfordnlp/snli": "cc-by-sa-4.0",
    "tau/commonsense_qa": "mit",
}


def combined_license(parts: dict[str, str | None]) -> dict[str, str] | None:
    """The card's `license` (+ `license_name`) for data and backbone under `parts` (id -> licence)."""
    if not parts or any(v is None for v in parts.values()):
        return None
    distinct = sorted(set(parts.values()))
    if len(distinct) == 1 and distinct[0] != "other":
        return {"license": distinct[0]}
    named = [d for d in distinct if d != "other"] + (["other"] if "other" in distinct else [])
    return {"license": "other", "license_name": "-and-".join(named) if len(named) > 1 else "data-specific"}


def _fill(template: str | None, lang: str, code: str) -> str | None:
    return template.format(code=code, lang=lang) if template else None


def _task_facts(manifest) -> dict[str, Any]:
    from ..tasks import get_task, training_task

    try:
        spec = get_task(manifest.task)
        train = training_task(spec)
    except XtlError:
        return {}  # a task the catalog does not know here (a YAML on the trainer's disk)
    out: dict[str, Any] = {"task_name": spec.paper_name or spec.name}
    datasets: list[str] = []
    train_src = train.splits.get("train")
    if train_src is not None and train_src.dataset:
        datasets.append(train_src.dataset)
        out["train"] = {"dataset": train_src.dataset, "task": train.name}
    src = spec.splits.get(spec.eval_split)
    if src is not None and src.dataset:
        datasets.append(src.dataset)
        configs = {lang: _fill(src.config, lang, code) for lang, code in spec.languages.items()}
        splits = {lang: _fill(src.split, lang, code) or spec.eval_split for lang, code in spec.languages.items()}
        out["eval"] = {"dataset": src.dataset, "name": spec.paper_name or spec.name,
                       "configs": {k: v for k, v in configs.items() if v},
                       "splits": splits, "revision": src.revision}
    out["datasets"] = list(dict.fromkeys(datasets))
    return out


def _part_facts(registry, ref: str) -> dict[str, Any]:
    name, _, version = ref.partition("@")
    fact: dict[str, Any] = {"ref": ref}
    try:
        m = registry.manifest(name, version or None)
    except XtlError:
        return fact  # not in this registry: the card names it only
    fact.update({"task": m.task, "method": m.method})
    if m.hub and m.hub.get("repo_id") and m.hub.get("revision"):
        fact["hub"] = {"repo_id": m.hub["repo_id"], "revision": m.hub["revision"]}
    return fact


def card_facts(registry, manifest, native: dict[str, Any]) -> dict[str, Any]:
    """The `card` record of a pushed manifest (see the module docstring); `native` is
    `store.native.plan(...).to_dict()`."""
    facts = _task_facts(manifest)
    datasets = list(dict.fromkeys([*facts.get("datasets", []),
                                   *(d for d in sorted(manifest.data_revisions) if "/" in d)]))
    facts["datasets"] = datasets
    base = base_model(manifest.backbone.model_id)
    licenses: dict[str, str | None] = {d: LICENSES.get(d) for d in datasets}
    if base:
        licenses[base] = LICENSES.get(base)
    facts["licenses"] = licenses
    if datasets and base:  # local data or a local backbone: no licence is claimed
        lic = combined_license(licenses)
        if lic:
            facts.update(lic)
    facts["native"] = dict(native)
    if native.get("parts"):
        facts["parts"] = [_part_facts(registry, ref) for ref in native["parts"]]
    return facts
