"""The pure core of sanctions screening: name normalisation, pair scoring, candidate blocking.

No file, clock or network access here: list entities come in as values, results go out as
values. Every score is in ``[0, 1]`` and carries the per-feature contributions that produced
it, so a compliance officer can see why a name was flagged.

How a score is built (the shape follows OpenSanctions' logic-v2 -- a name score qualified by
supporting or contradicting evidence -- but the features and weights are our own):

1. Both names are normalised to ASCII tokens: NFKC, transliteration of any script (rigour, then
   normality/ICU), case folding, honorific and organisation-suffix handling (rigour's curated
   tables), ``LAST, First`` reordered to ``First LAST`` for people.
2. Name features, each in ``[0, 1]``: ``name_similarity`` (tokens aligned order-free with edit
   distance, initials and phonetic equality; or the whole name compared as one string, which
   catches split and merged tokens), ``token_overlap`` (weighted share of identical tokens) and
   ``phonetic`` (share of identical Metaphone codes). Their weighted sum is the base score.
3. Evidence, only when both sides carry it: date of birth, country, identifiers, gender.
   Agreement adds a little, disagreement takes away more (a different birth year is strong
   evidence of a different person; a shared passport number is strong evidence of the same).
4. The sum is clamped to ``[0, 1]``; a hit is a score at or above the threshold.
"""

from __future__ import annotations

import heapq
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, Levenshtein
from rigour.names import remove_person_prefixes, replace_org_types_compare
from rigour.territories import get_territories
from rigour.text.phonetics import metaphone
from rigour.text.translit import ascii_text

from paykeep.aml.screening import limits

# --- schemas ---------------------------------------------------------------------------------

#: FollowTheMoney schema names we understand. ``LegalEntity`` means "person or organisation,
#: unknown which"; ``Thing`` matches anything (used by ``pairs`` when no schema is given).
PERSON: Final = "Person"
LEGAL_ENTITY: Final = "LegalEntity"
THING: Final = "Thing"
_ORG_SCHEMAS: Final = frozenset({"Company", "Organization", "PublicBody", LEGAL_ENTITY})
_OBJECT_SCHEMAS: Final = frozenset({"Vessel", "Airplane", "Vehicle"})
SCHEMAS: Final = frozenset({PERSON, THING}) | _ORG_SCHEMAS | _OBJECT_SCHEMAS


def schemas_compatible(query_schema: str, entity_schema: str) -> bool:
    """Whether a query of one schema may match a list entity of another.

    ``LegalEntity`` on either side matches people and organisations (the OFAC CSV does not say
    whether an entity is a company or an organisation); objects only match their own kind.
    """
    if THING in (query_schema, entity_schema) or query_schema == entity_schema:
        return True
    if LEGAL_ENTITY in (query_schema, entity_schema):
        other = entity_schema if query_schema == LEGAL_ENTITY else query_schema
        return other == PERSON or other in _ORG_SCHEMAS
    return query_schema in _ORG_SCHEMAS and entity_schema in _ORG_SCHEMAS


def _is_org_like(schema: str) -> bool:
    return schema in _ORG_SCHEMAS or schema in _OBJECT_SCHEMAS


# --- normalisation ---------------------------------------------------------------------------

_APOSTROPHES: Final = re.compile(r"['’‘`ʿʾ´ʻʼ]")
_TOKEN: Final = re.compile(r"[a-z0-9]+")
#: Words that carry little identity in a name: Arabic and European particles, and honorifics
#: rigour leaves in place. They still align, at a quarter of a normal token's weight, so
#: "AL-DARI" vs "DARI" is close but "AL" alone never makes a match.
PARTICLES: Final = frozenset(
    {
        "al", "el", "ad", "ash", "as", "at", "az", "bin", "ibn", "bint", "ben", "ould", "ul",
        "ur", "de", "del", "della", "di", "da", "do", "dos", "das", "du", "la", "le", "van",
        "von", "der", "den", "y", "e", "the", "and", "of", "haji", "hajji", "mullah", "mulla",
        "maulavi", "mawlawi", "maulvi", "sheikh", "shaikh", "qari", "sayed", "sayyid", "syed",
    }
)  # fmt: skip
#: Organisation suffixes after rigour's ``replace_org_types_compare`` (which maps
#: "Limited Liability Company" to "llc", "Aktiengesellschaft" to "ag" ...), weighted like
#: particles so "ACME LLC" and "ACME LTD" stay close.
ORG_SUFFIXES: Final = frozenset(
    {
        "llc", "ltd", "sa", "ag", "gmbh", "inc", "co", "corp", "jsc", "ooo", "oao", "zao", "pao",
        "pjsc", "ojsc", "cjsc", "plc", "bv", "nv", "srl", "spa", "sarl", "sas", "kg", "lp",
        "llp", "company", "limited", "corporation", "group", "holding", "cv", "de", "sl",
        "fze", "fzco", "fzc", "dmcc", "tov", "pte", "bhd", "sdn", "pvt",
    }
)  # fmt: skip


@lru_cache(maxsize=65_536)
def normalise_name(text: str, schema: str = PERSON) -> tuple[str, ...]:
    """Tokens of ``text`` as matched: ASCII, lower case, without punctuation. Pure and cached.

    Idempotent: normalising ``" ".join(normalise_name(x))`` gives the same tokens back.
    """
    text = unicodedata.normalize("NFKC", text[: limits.NAME_LENGTH_MAX]).strip()
    if schema == PERSON and text.count(",") == 1:
        # "LAST, First Middle" (OFAC's order) becomes "First Middle LAST", the order of most
        # query input, so the whole-string comparison sees the same sequence.
        last, first = text.split(",")
        text = f"{first} {last}"
    text = ascii_text(_APOSTROPHES.sub("", text)).casefold()
    text = _APOSTROPHES.sub("", text)  # transliteration can produce new apostrophes
    if _is_org_like(schema):
        text = replace_org_types_compare(" ".join(_TOKEN.findall(text)))
    elif schema == PERSON:
        text = remove_person_prefixes(" ".join(_TOKEN.findall(text)))
    return tuple(_TOKEN.findall(text))[: limits.NAME_TOKENS_MAX]


def name_key(text: str, schema: str = PERSON) -> str:
    """An order-free key of a name: its sorted normalised tokens (the allow-list key)."""
    return " ".join(sorted(normalise_name(text, schema)))


def _token_weight(token: str) -> float:
    if token in PARTICLES or token in ORG_SUFFIXES:
        return 0.25
    # Longer tokens carry more identity; an initial carries a little.
    return min(len(token), 8) / 8.0 if len(token) > 1 else 0.35


@dataclass(frozen=True, slots=True)
class NameForm:
    """A name prepared for comparison; built once per list name and once per query."""

    original: str
    tokens: tuple[str, ...]
    weights: tuple[float, ...]
    phonetics: tuple[str, ...]
    joined: str
    sorted_text: str
    total_weight: float
    #: Metaphone codes of the tokens that are not particles, for the ``phonetic`` feature.
    phonetic_codes: tuple[str, ...]


def name_form(text: str, schema: str = PERSON) -> NameForm:
    tokens = normalise_name(text, schema)
    weights = tuple(_token_weight(t) for t in tokens)
    phonetics = tuple(_phonetic(t) for t in tokens)
    return NameForm(
        original=text,
        tokens=tokens,
        weights=weights,
        phonetics=phonetics,
        joined="".join(tokens),
        sorted_text=" ".join(sorted(tokens)),
        total_weight=sum(weights),
        phonetic_codes=tuple(
            p for p, t in zip(phonetics, tokens, strict=True) if p and t not in PARTICLES
        ),
    )


@lru_cache(maxsize=131_072)
def _phonetic(token: str) -> str:
    if len(token) < 2 or token.isdigit():
        return ""
    return str(metaphone(token))


# --- dates, countries, identifiers -----------------------------------------------------------

_DATE: Final = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?\s*$")


@dataclass(frozen=True, slots=True, order=True)
class PartialDate:
    """A date known to the year, the month or the day (lists often give a year only)."""

    year: int
    month: int | None = None
    day: int | None = None

    def iso(self) -> str:
        parts = [f"{self.year:04d}"]
        if self.month is not None:
            parts.append(f"{self.month:02d}")
            if self.day is not None:
                parts.append(f"{self.day:02d}")
        return "-".join(parts)


def parse_partial_date(text: str) -> PartialDate | None:
    """``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` (single digits allowed); None if malformed."""
    match = _DATE.match(text)
    if match is None:
        return None
    year = int(match.group(1))
    month = int(match.group(2)) if match.group(2) else None
    day = int(match.group(3)) if match.group(3) else None
    if not 1000 <= year <= 2999 or (month is not None and not 1 <= month <= 12):
        return None
    if day is not None and not 1 <= day <= 31:
        return None
    return PartialDate(year, month, day)


#: Spellings used by OFAC and common in customer data that rigour's territory names lack.
_COUNTRY_ALIASES: Final = {
    "korea north": "kp",
    "korea south": "kr",
    "burma": "mm",
    "turkey": "tr",
    "palestinian": "ps",
    "possibly palestinian": "ps",
    "west bank": "ps",
    "gaza": "ps",
    "region gaza": "ps",
    "congo democratic republic of the": "cd",
    "hong kong": "hk",
    "north macedonia the republic of": "mk",
    "the gambia": "gm",
    "cabo verde": "cv",
    "ivory coast": "ci",
    "east timor": "tl",
    "uk": "gb",
    "usa": "us",
    "united states of america": "us",
}


def _country_key(text: str) -> str:
    return " ".join(_TOKEN.findall(text.casefold()))


@lru_cache(maxsize=1)
def _country_table() -> dict[str, str]:
    # Built from rigour's territory index (codes, names, full names): ~0.1 s once. rigour's own
    # ``lookup_territory`` also knows names in many languages but costs ~3 s to load, which
    # every CLI call would pay.
    table: dict[str, str] = {}
    for territory in get_territories():
        code = str(territory.ftm_country or territory.code)
        names = [territory.name, territory.full_name, territory.code, territory.alpha3 or ""]
        for name in [*names, *territory.other_codes]:
            if name:
                table.setdefault(_country_key(str(name)), code)
    table.update(_COUNTRY_ALIASES)
    return table


@lru_cache(maxsize=4_096)
def normalise_country(text: str) -> str | None:
    """ISO 3166 alpha-2 code (lower case) for a country name or code; None if unknown."""
    key = _country_key(text)
    if not key:
        return None
    return _country_table().get(key)


_ID_CHARS: Final = re.compile(r"[^A-Z0-9]")


def normalise_identifier(text: str) -> str | None:
    """Identifiers compare on upper-case letters and digits only; short ones are ignored."""
    value = _ID_CHARS.sub("", text.upper())
    if value.startswith("IMO") and value[3:].isdigit():
        value = value[3:]
    return value if len(value) >= 5 else None


# --- entities, queries, results --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListEntity:
    """One entry of a sanctions list, as imported (immutable; a new list is a new version)."""

    entity_id: str
    schema: str
    names: tuple[str, ...]
    source: str
    birth_dates: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    gender: str | None = None
    programs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.entity_id,
            "schema": self.schema,
            "names": list(self.names),
            "source": self.source,
            "birth_dates": list(self.birth_dates),
            "countries": list(self.countries),
            "identifiers": list(self.identifiers),
            "gender": self.gender,
            "programs": list(self.programs),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ListEntity:
        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings")
            return tuple(value)

        entity_id, schema, source = data.get("id"), data.get("schema"), data.get("source")
        gender = data.get("gender")
        if not isinstance(entity_id, str) or not isinstance(schema, str):
            raise ValueError("id and schema must be strings")
        if not isinstance(source, str) or not (gender is None or isinstance(gender, str)):
            raise ValueError("source and gender must be strings")
        return cls(
            entity_id=entity_id,
            schema=schema,
            names=strings("names"),
            source=source,
            birth_dates=strings("birth_dates"),
            countries=strings("countries"),
            identifiers=strings("identifiers"),
            gender=gender,
            programs=strings("programs"),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """What is screened: a name plus whatever evidence the caller has."""

    name: str
    schema: str = LEGAL_ENTITY
    birth_dates: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    gender: str | None = None


@dataclass(frozen=True, slots=True)
class Feature:
    """One line of an explanation: a feature's raw value and what it added to the score."""

    name: str
    value: float
    contribution: float
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "feature": self.name,
            "value": round(self.value, 4),
            "contribution": round(self.contribution, 4),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Match:
    """A scored comparison of a query with one list entity."""

    entity: ListEntity
    matched_name: str
    score: float
    features: tuple[Feature, ...]
    allowed: bool = False

    def explanation(self) -> str:
        """One line for a CSV cell: ``feature=+0.123 (value)`` for each non-zero feature."""
        return "; ".join(
            f"{f.name}={f.contribution:+.3f} ({f.detail or round(f.value, 3)})"
            for f in self.features
            if f.contribution != 0.0 or f.name == "name_similarity"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "entity_id": self.entity.entity_id,
            "name": self.entity.names[0] if self.entity.names else "",
            "matched_name": self.matched_name,
            "schema": self.entity.schema,
            "source": self.entity.source,
            "programs": list(self.entity.programs),
            "score": round(self.score, 4),
            "allowed": self.allowed,
            "explanation": [f.to_json() for f in self.features],
        }


@dataclass(frozen=True, slots=True)
class MatchConfig:
    """Weights and threshold. Name weights sum to 1 so identical names score 1.0."""

    threshold: float = 0.80
    weight_name: float = 0.70
    weight_overlap: float = 0.15
    weight_phonetic: float = 0.15
    dob_exact: float = 0.10
    dob_year: float = 0.05
    dob_mismatch: float = -0.20
    country_match: float = 0.05
    country_mismatch: float = -0.10
    identifier_match: float = 0.30
    gender_mismatch: float = -0.10

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        total = self.weight_name + self.weight_overlap + self.weight_phonetic
        if not math.isclose(total, 1.0):
            raise ValueError("name feature weights must sum to 1")


DEFAULT_CONFIG: Final = MatchConfig()


# --- name comparison -------------------------------------------------------------------------

_TOKEN_SIM_MIN: Final = 0.6
_INITIAL_SIM: Final = 0.9
_PHONETIC_SIM: Final = 0.85
_PHONETIC_CLOSE_SIM: Final = 0.95


@lru_cache(maxsize=262_144)
def _token_similarity(a: str, b: str) -> float:
    """Similarity of two tokens in ``[0, 1]``; 0 below a floor so weak pairs never align.

    Memoised: list names share tokens heavily ("MOHAMMAD" appears in hundreds), so most pairs
    a screen needs were computed by an earlier screen.
    """
    if a == b:
        return 1.0
    if len(a) == 1 or len(b) == 1:
        # An initial stands for any token starting with that letter.
        return _INITIAL_SIM if a[0] == b[0] else 0.0
    sim = float(OSA.normalized_similarity(a, b))
    pa = _phonetic(a)
    if len(pa) > 1 and pa == _phonetic(b):
        # Same sound: a transliteration variant ("mohammad"/"muhammad", "hassan"/"hasan") when
        # the spelling is also close, otherwise a weaker hint.
        sim = max(sim, _PHONETIC_CLOSE_SIM if sim >= 0.75 else _PHONETIC_SIM)
    return sim if sim >= _TOKEN_SIM_MIN else 0.0


@dataclass(frozen=True, slots=True)
class NameComparison:
    similarity: float
    overlap: float
    phonetic: float
    method: str


def compare_names(a: NameForm, b: NameForm) -> NameComparison:
    """Symmetric comparison of two prepared names; every field is in ``[0, 1]``."""
    if not a.tokens or not b.tokens:
        return NameComparison(0.0, 0.0, 0.0, "empty")
    if a.sorted_text == b.sorted_text:
        return NameComparison(1.0, 1.0, 1.0, "same_tokens")
    if a.joined == b.joined:
        # The same letters in the same order, spaced differently ("ABDUL HAI" / "ABDULHAI",
        # "AREFULLAH AREF" / "AREFULLAHA REF"): token features would only measure the spacing.
        return NameComparison(1.0, 1.0, 1.0, "same_letters")
    total = a.total_weight + b.total_weight
    # Identical tokens align first (the common case, and C-speed set work); the rest align
    # greedily on their best pairs: names are short (<= NAME_TOKENS_MAX tokens), and unlike a
    # positional comparison this ignores token order.
    aligned = exact = 0.0
    rest_a = list(range(len(a.tokens)))
    rest_b = list(range(len(b.tokens)))
    if not set(a.tokens).isdisjoint(b.tokens):
        rest_b_by_token: dict[str, list[int]] = {}
        for j in reversed(rest_b):
            rest_b_by_token.setdefault(b.tokens[j], []).append(j)
        unmatched_a: list[int] = []
        for i in rest_a:
            slots = rest_b_by_token.get(a.tokens[i])
            if slots:
                j = slots.pop()
                exact += a.weights[i] + b.weights[j]
            else:
                unmatched_a.append(i)
        rest_a = unmatched_a
        rest_b = sorted(j for slots in rest_b_by_token.values() for j in slots)
        aligned = exact
    if rest_a and rest_b:
        sim_of = _token_similarity
        tokens_a, tokens_b = a.tokens, b.tokens
        pairs = [
            (sim, i, j)
            for i in rest_a
            for j in rest_b
            if (sim := sim_of(tokens_a[i], tokens_b[j])) > 0.0
        ]
        pairs.sort(reverse=True)
        used_a: set[int] = set()
        used_b: set[int] = set()
        for sim, i, j in pairs:
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            aligned += sim * (a.weights[i] + b.weights[j])
    aligned /= total
    overlap = exact / total
    # The whole name as one string catches split or merged tokens ("ABDUL HAI" / "ABDULHAI").
    whole = float(Levenshtein.normalized_similarity(a.joined, b.joined))
    similarity, method = (aligned, "tokens") if aligned >= whole else (whole, "whole_name")
    return NameComparison(
        similarity=min(1.0, similarity),
        overlap=min(1.0, overlap),
        phonetic=_phonetic_overlap(a, b),
        method=method,
    )


def _phonetic_overlap(a: NameForm, b: NameForm) -> float:
    codes_a, codes_b = a.phonetic_codes, b.phonetic_codes
    if not codes_a or not codes_b:
        return 1.0 if a.tokens == b.tokens else 0.0
    remaining = list(codes_b)
    common = 0
    for code in codes_a:
        if code in remaining:
            remaining.remove(code)
            common += 1
    return 2.0 * common / (len(codes_a) + len(codes_b))


def name_features(comparison: NameComparison, config: MatchConfig) -> list[Feature]:
    return [
        Feature(
            "name_similarity",
            comparison.similarity,
            config.weight_name * comparison.similarity,
            f"{comparison.similarity:.3f} by {comparison.method}",
        ),
        Feature("token_overlap", comparison.overlap, config.weight_overlap * comparison.overlap),
        Feature("phonetic", comparison.phonetic, config.weight_phonetic * comparison.phonetic),
    ]


def score_names(
    name1: str, name2: str, schema: str = THING, config: MatchConfig = DEFAULT_CONFIG
) -> tuple[float, tuple[Feature, ...]]:
    """Score two bare names (the ``pairs`` command). Symmetric: swapping them changes nothing."""
    norm_schema = PERSON if schema == THING else schema
    features = name_features(
        compare_names(name_form(name1, norm_schema), name_form(name2, norm_schema)), config
    )
    return _clamp(sum(f.contribution for f in features)), tuple(features)


def _clamp(value: float) -> float:
    return max(0.0, min(1.0, value))


# --- evidence --------------------------------------------------------------------------------


def _parsed_dates(values: Iterable[str]) -> list[PartialDate]:
    return [d for d in (parse_partial_date(v) for v in values) if d is not None]


_DOB_VERDICTS: Final = ("mismatch", "close", "year", "exact")


def _dob_rank(query_dates: Sequence[PartialDate], entity_dates: Sequence[PartialDate]) -> int:
    """Best agreement over all pairs: 0 mismatch, 1 close (a year apart, or same year but a
    different month or day), 2 same year (month or day unknown on a side), 3 exact."""
    best = 0
    for q in query_dates:
        for e in entity_dates:
            if q.year == e.year:
                if q.month is not None and e.month is not None and q.month != e.month:
                    rank = 1
                elif q.day is not None and e.day is not None and q.month == e.month:
                    rank = 3 if q.day == e.day else 1
                else:
                    rank = 2
            elif abs(q.year - e.year) <= 1:
                rank = 1
            else:
                rank = 0
            if rank > best:
                best = rank
    return best


def _dob_contribution(rank: int, config: MatchConfig) -> float:
    return (config.dob_mismatch, 0.0, config.dob_year, config.dob_exact)[rank]


def dob_feature(
    query_dates: Sequence[PartialDate], entity_dates: Sequence[PartialDate], config: MatchConfig
) -> Feature | None:
    if not query_dates or not entity_dates:
        return None
    rank = _dob_rank(query_dates, entity_dates)
    detail = f"{_DOB_VERDICTS[rank]}: {'/'.join(d.iso() for d in entity_dates[:3])}"
    return Feature("date_of_birth", rank / 3.0, _dob_contribution(rank, config), detail)


def country_feature(
    query_countries: frozenset[str], entity_countries: frozenset[str], config: MatchConfig
) -> Feature | None:
    if not query_countries or not entity_countries:
        return None
    common = query_countries & entity_countries
    if common:
        return Feature("country", 1.0, config.country_match, "match: " + ",".join(sorted(common)))
    return Feature(
        "country", 0.0, config.country_mismatch, "mismatch: " + ",".join(sorted(entity_countries))
    )


def identifier_feature(
    query_ids: frozenset[str], entity_ids: frozenset[str], config: MatchConfig
) -> Feature | None:
    common = query_ids & entity_ids
    if not common:
        return None
    return Feature("identifier", 1.0, config.identifier_match, "match: " + ",".join(sorted(common)))


def gender_feature(
    query_gender: str | None, entity_gender: str | None, config: MatchConfig
) -> Feature | None:
    if query_gender is None or entity_gender is None or query_gender == entity_gender:
        return None
    return Feature("gender", 0.0, config.gender_mismatch, f"mismatch: {entity_gender}")


def _evidence_adjustment(
    query: _Evidence, entity: _Evidence, gender: str | None, config: MatchConfig
) -> float:
    """The sum of the evidence features' contributions, without building them (hot path)."""
    total = 0.0
    if query.dates and entity.dates:
        total += _dob_contribution(_dob_rank(query.dates, entity.dates), config)
    if query.countries and entity.countries:
        matched = not query.countries.isdisjoint(entity.countries)
        total += config.country_match if matched else config.country_mismatch
    if query.identifiers and not query.identifiers.isdisjoint(entity.identifiers):
        total += config.identifier_match
    if gender is not None and entity.gender is not None and gender != entity.gender:
        total += config.gender_mismatch
    return total


def normalise_gender(text: str | None) -> str | None:
    value = (text or "").strip().casefold()
    if value in {"male", "m"}:
        return "male"
    if value in {"female", "f"}:
        return "female"
    return None  # "other", empty or unknown is no evidence either way


# --- the index -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Evidence:
    dates: tuple[PartialDate, ...]
    countries: frozenset[str]
    identifiers: frozenset[str]
    gender: str | None


def _evidence_of(
    dates: Iterable[str], countries: Iterable[str], ids: Iterable[str], gender: str | None
) -> _Evidence:
    return _Evidence(
        dates=tuple(_parsed_dates(dates)),
        countries=frozenset(c for c in (normalise_country(x) for x in countries) if c),
        identifiers=frozenset(i for i in (normalise_identifier(x) for x in ids) if i),
        gender=normalise_gender(gender),
    )


def _blocking_keys(form: NameForm) -> set[str]:
    keys: set[str] = set()
    for token, code in zip(form.tokens, form.phonetics, strict=True):
        if token in PARTICLES or token in ORG_SUFFIXES or len(token) < 2:
            continue
        keys.add("t:" + token)
        if len(code) >= 2:
            keys.add("p:" + code)
    if not keys and form.joined:
        # A name of particles or initials only ("AL", "A B") still needs one key.
        keys.add("j:" + form.joined)
    return keys


@dataclass(slots=True)
class ScreeningIndex:
    """Every name of the current list versions, with a token and phonetic blocking index.

    A screen looks only at names sharing a token or a Metaphone code with the query, ranks them
    by the summed rarity (IDF) of the shared keys, and fully scores the best
    :data:`limits.CANDIDATES_MAX`, so the cost does not grow with the list.
    """

    entities: list[ListEntity] = field(default_factory=list)
    _names: list[tuple[int, NameForm]] = field(default_factory=list)
    _postings: dict[str, list[int]] = field(default_factory=dict)
    _posting_sets: dict[str, frozenset[int]] = field(default_factory=dict)
    _evidence: list[_Evidence] = field(default_factory=list)

    @classmethod
    def build(cls, entities: Iterable[ListEntity]) -> ScreeningIndex:
        index = cls()
        for entity in entities:
            index._add(entity)
        # Common keys are only used to boost names already found through rarer keys, which
        # needs a membership test rather than a walk of the whole posting list.
        index._posting_sets = {
            key: frozenset(posting)
            for key, posting in index._postings.items()
            if len(posting) > limits.POSTING_WALK_MAX
        }
        return index

    def _add(self, entity: ListEntity) -> None:
        entity_idx = len(self.entities)
        self.entities.append(entity)
        self._evidence.append(
            _evidence_of(entity.birth_dates, entity.countries, entity.identifiers, entity.gender)
        )
        seen: set[tuple[str, ...]] = set()
        for raw in entity.names[: limits.ENTITY_NAMES_MAX]:
            form = name_form(raw, entity.schema)
            if not form.tokens or form.tokens in seen:
                continue
            seen.add(form.tokens)
            name_id = len(self._names)
            self._names.append((entity_idx, form))
            for key in _blocking_keys(form):
                self._postings.setdefault(key, []).append(name_id)

    def __len__(self) -> int:
        return len(self.entities)

    @property
    def name_count(self) -> int:
        return len(self._names)

    def candidates(self, form: NameForm) -> list[int]:
        """Name ids worth scoring for ``form``, best first (at most CANDIDATES_MAX)."""
        found = [(k, p) for k, p in ((k, self._postings.get(k)) for k in _blocking_keys(form)) if p]
        if not found:
            return []
        found.sort(key=lambda kp: len(kp[1]))
        total = float(len(self._names))
        scores: dict[int, float] = {}
        get = scores.get
        for key, posting in found:
            idf = math.log(total / len(posting)) + 0.1
            if len(posting) > limits.POSTING_WALK_MAX and len(scores) >= limits.CANDIDATES_MAX:
                # Rarer keys already found enough names: a name sharing only this common key
                # ranks below them, so only boost the names we have.
                member = self._posting_sets[key]
                for name_id in scores:
                    if name_id in member:
                        scores[name_id] += idf
                continue
            for name_id in posting:
                scores[name_id] = get(name_id, 0.0) + idf
        if len(scores) <= limits.CANDIDATES_MAX:
            return sorted(scores, key=scores.__getitem__, reverse=True)
        return heapq.nlargest(limits.CANDIDATES_MAX, scores, key=scores.__getitem__)

    def screen(
        self,
        query: Query,
        config: MatchConfig = DEFAULT_CONFIG,
        allowed: frozenset[tuple[str, str]] = frozenset(),
        hits_max: int = limits.HITS_MAX,
    ) -> list[Match]:
        """Matches at or above the threshold, best first; allow-listed pairs are flagged."""
        return self.score_candidates(query, config, allowed, limit=hits_max, floor=config.threshold)

    def score_candidates(
        self,
        query: Query,
        config: MatchConfig = DEFAULT_CONFIG,
        allowed: frozenset[tuple[str, str]] = frozenset(),
        limit: int = limits.HITS_MAX,
        floor: float = 0.0,
    ) -> list[Match]:
        """The best ``limit`` candidate entities scoring at least ``floor``, best first.

        Scores are computed as plain numbers for every candidate; the explanation (a tuple of
        :class:`Feature`) is built only for the matches returned, which keeps a screen cheap.
        """
        query_schema = query.schema
        form = name_form(query.name, PERSON if query_schema == THING else query_schema)
        if not form.tokens:
            return []
        evidence = _evidence_of(query.birth_dates, query.countries, query.identifiers, None)
        query_gender = normalise_gender(query.gender)
        best: dict[int, tuple[float, NameComparison, NameForm]] = {}
        for name_id in self.candidates(form):
            entity_idx, candidate = self._names[name_id]
            if not schemas_compatible(query_schema, self.entities[entity_idx].schema):
                continue
            # Cheap C-level filter before the Python alignment: order-free and typo-tolerant;
            # 50 is below every true match seen in the evaluation samples.
            if fuzz.token_sort_ratio(form.sorted_text, candidate.sorted_text) < 50.0:
                continue
            comparison = compare_names(form, candidate)
            base = (
                config.weight_name * comparison.similarity
                + config.weight_overlap * comparison.overlap
                + config.weight_phonetic * comparison.phonetic
            )
            previous = best.get(entity_idx)
            if previous is None or base > previous[0]:
                best[entity_idx] = (base, comparison, candidate)
        scored: list[tuple[float, str, int]] = []
        for entity_idx, (base, _, _) in best.items():
            adjustment = _evidence_adjustment(
                evidence, self._evidence[entity_idx], query_gender, config
            )
            score = _clamp(base + adjustment)
            if score >= floor:
                scored.append((score, self.entities[entity_idx].entity_id, entity_idx))
        scored.sort(key=lambda item: (-item[0], item[1]))
        matches: list[Match] = []
        for score, entity_id, entity_idx in scored[:limit]:
            _, comparison, candidate = best[entity_idx]
            features = name_features(comparison, config)
            features += self._evidence_features(entity_idx, evidence, query_gender, config)
            matches.append(
                Match(
                    entity=self.entities[entity_idx],
                    matched_name=candidate.original,
                    score=score,
                    features=tuple(features),
                    allowed=(form.sorted_text, entity_id) in allowed,
                )
            )
        return matches

    def _evidence_features(
        self, entity_idx: int, evidence: _Evidence, gender: str | None, config: MatchConfig
    ) -> list[Feature]:
        entity_evidence = self._evidence[entity_idx]
        return [
            f
            for f in (
                dob_feature(evidence.dates, entity_evidence.dates, config),
                country_feature(evidence.countries, entity_evidence.countries, config),
                identifier_feature(evidence.identifiers, entity_evidence.identifiers, config),
                gender_feature(gender, entity_evidence.gender, config),
            )
            if f is not None
        ]
