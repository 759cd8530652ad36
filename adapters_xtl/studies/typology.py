"""Typological, genetic and geographic distances between languages, from URIEL (lang2vec's data).

Where the numbers come from
---------------------------
The ``lang2vec`` wheel on PyPI (1.1.2, the latest) ships the URIEL feature tables as ``.npz``
files, but its module cannot be imported on current Python environments (it imports
``pkg_resources``, which setuptools >= 81 no longer provides) and it has no ``distance()``: that
function exists only in the GitHub version, which downloads a precomputed distance table at install
time.  So this module reads the bundled tables directly (locating the package with
``importlib.util.find_spec``, which does not execute lang2vec's code) and computes the six URIEL
distances itself, following Littell et al. (2017, "URIEL and lang2vec"), with the names of
lang2vec's ``DISTANCES``:

* ``syntactic``, ``phonological``, ``inventory``: cosine distance between the kNN-imputed feature
  vectors (``syntax_knn``: 103 features, ``phonology_knn``: 28, ``inventory_knn``: 158).
* ``featural``: cosine distance between the concatenation of those three (289 features).
* ``genetic``: from the Glottolog family-membership features (``fam``): one minus the share of
  family-tree nodes the two languages have in common, relative to the deeper of the two lineages
  (``1 - |A & B| / max(|A|, |B|)``).  Languages in different families, and isolates such as
  Basque (no family node), are at 1; a language is at 0 from itself.
* ``geographic``: great-circle distance divided by the antipodal distance (so in [0, 1]).  URIEL
  stores each language's location as its normalised distance to 299 fixed points on the globe;
  the location is recovered exactly from those (a linear least-squares fit on the unit sphere),
  see :func:`coordinates`.

All distances lie in [0, 1].  Because they are recomputed, they need not equal the numbers of
lang2vec's downloadable table to the last digit, but they measure the same things.  The kNN
vectors are imputed for languages with few observed features, so distances for poorly documented
languages are noisier; :func:`coverage` tells how much was observed.

Language codes
--------------
:func:`to_iso639_3` accepts ISO 639-1 (``de``), ISO 639-3 (``deu``), FLORES-200 (``deu_Latn``),
BCP-47-like tags (``zh-Hans``, ``pt_BR``) and the Tatoeba/LASER codes (``cmn``, ``swh``, ``pes``,
``arb``, ``zsm``, ``lvs``, ``nob``...).  Where ISO splits a macrolanguage (Chinese, Arabic,
Persian, Swahili, Malay...) the different codes for one language must give one distance, so all of
them map to a single URIEL entry: the individual language when URIEL has it with at least 80% as
many observed features as the macrolanguage and a family classification, otherwise the
macrolanguage (see ``_CANONICAL``).  E.g. ``zh``, ``zho``, ``zho_Hans`` -> ``cmn`` (``zho`` is
classified only as "Sino-Tibetan"); ``ar``, ``arb`` -> ``ara`` (URIEL has 284 observed features for
``ara``, 66 for ``arb``); ``et``, ``ekk`` -> ``est``; ``no``, ``nb``, ``nob`` -> ``nor``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters_xtl.errors import XtlError, did_you_mean

__all__ = [
    "KINDS",
    "LANG2VEC_REQUIREMENT",
    "Coverage",
    "available",
    "coordinates",
    "coverage",
    "distance",
    "distances_from",
    "to_iso639_3",
]

KINDS = ("syntactic", "phonological", "inventory", "featural", "genetic", "geographic")
LANG2VEC_REQUIREMENT = "lang2vec==1.1.2"

# Feature-name prefixes of the kNN-imputed table (feature_predictions.npz) for each kind.
_PREFIXES = {
    "syntactic": ("S_",),
    "phonological": ("P_",),
    "inventory": ("INV_",),
    "featural": ("S_", "P_", "INV_"),
}

# One URIEL entry per language, whichever ISO code names it (rule in the module docstring; each
# line gives family depth / observed features of the two candidates in lang2vec 1.1.2's tables).
_CANONICAL = {
    "zho": "cmn",  # Chinese: zho 1 node / 286, cmn 4 / 278
    "arb": "ara",  # Arabic: ara 5 / 284, arb 6 / 66
    "fas": "pes",  # Persian: 6 / 268 both, pes deeper
    "swa": "swh",  # Swahili: swa 11 / 270, swh 12 / 270
    "ekk": "est",  # Estonian: ekk has no family classification and 27 features
    "zsm": "msa",  # Malay: msa 5 / 284, zsm 8 / 170
    "uzb": "uzn",  # Uzbek: 4 / 229 vs 5 / 229
    "azj": "aze",  # Azerbaijani: aze 3 / 238, azj 6 / 158
    "nob": "nor",  # Norwegian Bokmaal: nob has no family classification
    "nno": "nor",  # Norwegian Nynorsk: nno has neither family nor observed features
    "sqi": "als",  # Albanian: sqi 1 / 257, als 3 / 257
    "lvs": "lav",  # Latvian: lvs has nothing observed
    "kur": "kmr",  # Kurdish (Kurmanji): kur 6 / 253, kmr 7 / 243
    "ory": "ori",  # Odia: ory has nothing observed
    "mon": "khk",  # Mongolian: 4 / 271 vs 5 / 268
    "npi": "nep",  # Nepali: npi 17 observed
    "gaz": "orm",  # Oromo: gaz 13 observed
    "pbu": "pus",  # Pashto: pbu / pbt nothing observed
    "pbt": "pus",
    "grn": "gug",  # Guarani: grn 2 / 260, gug 5 / 260
    "que": "quy",  # Quechua: que has no family classification
    "yid": "ydd",  # Yiddish: yid 7 / 187, ydd 8 / 170
    "mlg": "plt",  # Malagasy: mlg 5 / 278, plt 10 / 271
    "twi": "aka",  # Twi: twi has no family classification
    "kom": "kpv",  # Komi: 2 / 241 vs 3 / 230
    "pnb": "lah",  # Western Punjabi: pnb nothing observed
    "fuv": "ful",  # Fula: fuv 159 of ful's 249
    "aym": "ayr",  # Aymara: 1 / 250 vs 2 / 249
    "kau": "knc",  # Kanuri: 2 / 270 vs 4 / 270
    "kon": "kng",  # Kongo: 9 / 66 vs 11 / 54
    "fil": "tgl",  # Filipino: tgl 258 observed, fil 158
}

_DATA_FILES = {
    "fam": "family_features.npz",
    "pred": "feature_predictions.npz",
    "geo": "geocoord_features.npz",
    "obs": "features.npz",
    "letters": "letter_codes.json",
}

_FIX = f"pip install '{LANG2VEC_REQUIREMENT}' (it ships the URIEL tables this module reads)"


# --------------------------------------------------------------------------- data access


@functools.lru_cache(maxsize=1)
def _data_dir() -> Path:
    spec = importlib.util.find_spec("lang2vec")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise XtlError("the lang2vec package (URIEL data) is not installed", fix=_FIX)
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if all((d / f).is_file() for f in _DATA_FILES.values()):
            return d
    raise XtlError(
        f"lang2vec is installed but its data files ({', '.join(_DATA_FILES.values())}) are missing",
        where=str(list(spec.submodule_search_locations)),
        fix=_FIX,
    )


def _load(name: str):
    path = _data_dir() / _DATA_FILES[name]
    try:
        return np.load(path)
    except Exception as e:  # corrupt or unexpected file
        raise XtlError(f"cannot read URIEL table: {e}", where=str(path), fix=_FIX) from e


@functools.lru_cache(maxsize=1)
def _letter_codes() -> dict[str, str]:
    with open(_data_dir() / _DATA_FILES["letters"], encoding="utf-8") as f:
        return {str(k): str(v) for k, v in json.load(f).items()}


@functools.lru_cache(maxsize=1)
def _languages() -> frozenset[str]:
    with _load("pred") as z:
        return frozenset(str(c) for c in z["langs"])


@functools.lru_cache(maxsize=1)
def _typology() -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(index by code, 0/1 kNN feature matrix [langs x 289], feature names)."""
    with _load("pred") as z:
        langs = [str(c) for c in z["langs"]]
        data = np.asarray(z["data"][:, :, 0], dtype=np.float64)
        feats = np.asarray([str(f) for f in z["feats"]])
    return {c: i for i, c in enumerate(langs)}, data, feats


@functools.lru_cache(maxsize=1)
def _families() -> dict[str, frozenset[int]]:
    """Each language's set of Glottolog family nodes (indices into the fam feature list)."""
    with _load("fam") as z:
        langs = [str(c) for c in z["langs"]]
        rows, cols = np.nonzero(z["data"][:, :, 0] == 1)
    sets: dict[str, set[int]] = {c: set() for c in langs}
    for r, c in zip(rows.tolist(), cols.tolist()):
        sets[langs[r]].add(c)
    return {k: frozenset(v) for k, v in sets.items()}


@functools.lru_cache(maxsize=1)
def _locations() -> dict[str, np.ndarray]:
    """Unit vectors (x, y, z) of each language's location, recovered from URIEL's GC_ features.

    Feature ``GC_lat_lon`` holds the language's great-circle distance to (lat, lon) divided by pi
    (the antipodal distance on the unit sphere), so cos(pi * value) = u . p for the language's
    unit vector u and the point's unit vector p: linear in u, solved by least squares.
    """
    with _load("geo") as z:
        langs = [str(c) for c in z["langs"]]
        vals = np.asarray(z["data"][:, :, 0], dtype=np.float64)
        feats = [str(f) for f in z["feats"]]
    latlon = np.array([[float(v) for v in f[3:].split("_")] for f in feats])
    pts = _unit(latlon[:, 0], latlon[:, 1])  # (299, 3)
    rhs = np.cos(np.pi * vals)  # (langs, 299)
    u = np.linalg.lstsq(pts, rhs.T, rcond=None)[0].T  # (langs, 3)
    # -1 marks a missing value; a constant row (all 1.0 for 'mul', 'und', 'zbl'...) has no location
    missing = (vals < 0).any(axis=1) | (np.ptp(vals, axis=1) == 0)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return {c: u[i] for i, c in enumerate(langs) if not missing[i]}


def _unit(lat_deg, lon_deg) -> np.ndarray:
    lat, lon = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


# --------------------------------------------------------------------------- codes

_SPLIT = re.compile(r"[-_]")
_SPECIAL = frozenset({"mis", "mul", "und", "zxx"})  # ISO 639 "no particular language" codes


def to_iso639_3(code: str) -> str:
    """The 3-letter code under which URIEL has data for the language ``code`` names.

    Accepts ISO 639-1/639-3, FLORES-200 (``zho_Hans``), BCP-47-like tags (``pt-BR``) and
    Tatoeba codes, in any case.  Macrolanguage and individual-language codes for the same
    language map to one entry (module docstring).  Raises ``XtlError`` naming the code when
    URIEL has no such language.
    """
    if not isinstance(code, str) or not code.strip():
        raise XtlError(f"language code must be a non-empty string, got {code!r}")
    raw = code
    base = _SPLIT.split(code.strip().lower())[0]
    langs = _languages()
    if len(base) == 2:
        letters = _letter_codes()
        if base not in letters:
            raise XtlError(
                f"unknown ISO 639-1 language code {raw!r}",
                fix="use an ISO 639-1 (e.g. 'de') or ISO 639-3 (e.g. 'deu') code",
            )
        base = letters[base]
    if len(base) != 3 or not base.isalpha():
        raise XtlError(
            f"cannot read {raw!r} as a language code",
            fix="use ISO 639-1 ('de'), ISO 639-3 ('deu') or FLORES-200 ('deu_Latn')",
        )
    base = _CANONICAL.get(base, base)
    if base in _SPECIAL or "qaa" <= base <= "qtz":
        raise XtlError(f"{raw!r} is a special ISO 639 code, not a language", fix="name a specific language")
    if base not in langs:
        raise XtlError(
            f"language code {raw!r} ({base}) is not in the URIEL database",
            fix="use the ISO 639-3 code of an individual language; "
            "collective codes such as 'ber' (Berber) have no URIEL entry",
        )
    return base


def available(code: str) -> bool:
    """Whether :func:`to_iso639_3` can resolve ``code``."""
    try:
        to_iso639_3(code)
    except XtlError:
        return False
    return True


# --------------------------------------------------------------------------- distances


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise XtlError(f"unknown distance kind {kind!r}", fix=did_you_mean(str(kind), KINDS))
    return kind


def _feature_vector(code: str, kind: str) -> np.ndarray:
    index, data, feats = _typology()
    mask = np.zeros(feats.shape[0], dtype=bool)
    for p in _PREFIXES[kind]:
        mask |= np.char.startswith(feats, p)
    return data[index[code], mask]


def _cosine_distance(a: np.ndarray, b: np.ndarray, what: str) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise XtlError(f"URIEL has an all-zero {what} vector, so the cosine distance is undefined")
    return float(np.clip(1.0 - a @ b / (na * nb), 0.0, 1.0))


def distance(lang_a: str, lang_b: str, kind: str = "syntactic") -> float:
    """URIEL distance of ``kind`` (one of :data:`KINDS`) between two languages, in [0, 1].

    Codes go through :func:`to_iso639_3`.  Raises ``XtlError`` for an unknown code or kind.
    """
    _check_kind(kind)
    a, b = to_iso639_3(lang_a), to_iso639_3(lang_b)
    if a == b:
        return 0.0
    if kind == "genetic":
        fams = _families()
        fa, fb = fams[a], fams[b]
        deeper = max(len(fa), len(fb))
        return 1.0 if deeper == 0 else 1.0 - len(fa & fb) / deeper
    if kind == "geographic":
        locs = _locations()
        for c, raw in ((a, lang_a), (b, lang_b)):
            if c not in locs:
                raise XtlError(f"URIEL has no location for {raw!r} ({c})")
        ua, ub = locs[a], locs[b]  # atan2 form: accurate for nearby points too
        angle = np.arctan2(np.linalg.norm(np.cross(ua, ub)), float(ua @ ub))
        return float(angle / np.pi)
    return _cosine_distance(_feature_vector(a, kind), _feature_vector(b, kind), f"{kind} ({a} or {b})")


def distances_from(
    pivot: str,
    langs: Iterable[str],
    kinds: Sequence[str] = KINDS,
    *,
    missing: str = "raise",
) -> dict[str, dict[str, float]]:
    """``{lang: {kind: distance(pivot, lang, kind)}}`` for a study table (pivot: usually ``en``).

    ``missing="nan"`` puts NaN for a language URIEL does not know instead of raising, so a study
    can go on (its correlations drop and count NaN pairs).
    """
    if missing not in ("raise", "nan"):
        raise ValueError(f"missing must be 'raise' or 'nan', got {missing!r}")
    for k in kinds:
        _check_kind(k)
    out: dict[str, dict[str, float]] = {}
    for lang in langs:
        row = {}
        for k in kinds:
            try:
                row[k] = distance(pivot, lang, k)
            except XtlError:
                if missing == "raise":
                    raise
                row[k] = float("nan")
        out[lang] = row
    return out


def coordinates(code: str) -> tuple[float, float]:
    """(latitude, longitude) in degrees of the language's URIEL (Glottolog) location."""
    c = to_iso639_3(code)
    locs = _locations()
    if c not in locs:
        raise XtlError(f"URIEL has no location for {code!r} ({c})")
    x, y, z = locs[c]
    return float(np.degrees(np.arcsin(np.clip(z, -1, 1)))), float(np.degrees(np.arctan2(y, x)))


@dataclass(frozen=True)
class Coverage:
    """How well URIEL documents a language: family nodes and observed (not imputed) features."""

    code: str
    family_depth: int
    observed_features: int
    total_features: int


def coverage(code: str) -> Coverage:
    c = to_iso639_3(code)
    with _load("obs") as z:
        langs = [str(x) for x in z["langs"]]
        row = z["data"][langs.index(c)]  # (features, sources)
    return Coverage(
        code=c,
        family_depth=len(_families()[c]),
        observed_features=int((row != -1).any(axis=-1).sum()),
        total_features=int(row.shape[0]),
    )
