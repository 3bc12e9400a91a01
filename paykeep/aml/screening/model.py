"""The pure core of sanctions screening: name normalisation, pair scoring, candidate blocking.

No file, clock or network access here: list entities come in as values, results go out as
values. Every score is in ``[0, 1]`` and carries the per-feature contributions that produced
it, so a compliance officer can see why a name was flagged.

How a score is built (the shape follows OpenSanctions' logic-v2 -- a name score qualified by
supporting or contradicting evidence -- but the features and weights are our own):

1. Both names are normalised to ASCII tokens: NFKC, transliteration of any script (anyascii),
   case folding, leading titles dropped from people's names (nameparser's title list) and legal
   forms rewritten to one compare form in organisations' names (cleanco's term lists),
   ``LAST, First`` reordered to ``First LAST`` for people. Every table ships in a wheel.
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
import importlib
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from anyascii import anyascii
from jellyfish import metaphone
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, Levenshtein

from paykeep.aml.screening import limits
from paykeep.aml.screening.defaults import DEFAULT_THRESHOLD
from paykeep.aml.screening.defaults import LEGAL_ENTITY as LEGAL_ENTITY  # one of the schemas

# --- schemas ---------------------------------------------------------------------------------

#: FollowTheMoney schema names we understand. ``LegalEntity`` means "person or organisation,
#: unknown which"; ``Thing`` matches anything (used by ``pairs`` when no schema is given).
PERSON: Final = "Person"
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
#: Marks transliteration writes inside a word: anyascii spells the Cyrillic soft and hard signs
#: ' and ", and Arabic ayn and hamza ` and '. Dropped, so "Объедков" stays one token.
_TRANSLIT_MARKS: Final = re.compile(r"['\"`]")
_TOKEN: Final = re.compile(r"[a-z0-9]+")
#: Words that carry little identity in a name: Arabic and European particles, and religious
#: honorifics that are also written inside names. They still align, at a quarter of a normal
#: token's weight, so "AL-DARI" vs "DARI" is close but "AL" alone never makes a match. They
#: are never stripped as honorifics (a name keeps "HAJI" wherever it stands, in every order).
PARTICLES: Final = frozenset(
    {
        "al", "el", "ad", "ash", "as", "at", "az", "bin", "ibn", "bint", "ben", "ould", "ul",
        "ur", "de", "del", "della", "di", "da", "do", "dos", "das", "du", "la", "le", "van",
        "von", "der", "den", "y", "e", "the", "and", "of", "haji", "hajji", "mullah", "mulla",
        "maulavi", "mawlawi", "maulvi", "sheikh", "shaikh", "qari", "sayed", "sayyid", "syed",
    }
)  # fmt: skip


def _ascii_words(text: str) -> str:
    """Any script to lower-case ASCII (anyascii), apostrophes and transliteration marks gone."""
    return _TRANSLIT_MARKS.sub("", anyascii(_APOSTROPHES.sub("", text))).casefold()


# Person titles come from nameparser's curated list (``nameparser.config.titles.TITLES``, ~800
# titles in many languages), read once, with two short tables of our own:
#: Titles that are also given names, surnames or name elements in the cultures sanctions lists
#: cover ("Sultan Hashim Ahmad", "Mahdi al-Muhandis", "Prince Johnson", Korean "Ra", Cantonese
#: "Law" and "Hon", Burmese "Mg"): stripping them would erase part of a name, not a courtesy.
_TITLES_THAT_ARE_NAMES: Final = frozenset(
    {
        "sultan", "sultana", "mahdi", "imam", "murshid", "pir", "baba", "akhoond", "mufti",
        "prince", "princess", "king", "queen", "lama", "guru", "swami", "pastor", "mg", "ra",
        "law", "hon",
    }
)  # fmt: skip
#: Titles nameparser lacks (it has "chair", not "chairman").
_TITLES_EXTRA: Final = frozenset({"chairman", "chairwoman", "duke", "duchess", "hrh"})


@lru_cache(maxsize=1)
def person_titles() -> frozenset[str]:
    """Honorifics stripped from the head of a person's name: nameparser's titles that are one
    Latin-script word as normalised here, and :data:`_TITLES_EXTRA`, less :data:`PARTICLES` and
    :data:`_TITLES_THAT_ARE_NAMES`. Titles written in other scripts are left out: after
    transliteration they collide with Latin names (Bengali "মো" becomes "mo", Devanagari "डा"
    becomes "da").
    """
    # Imported on first use: nameparser loads its whole parser (~50 ms).
    from nameparser.config.titles import TITLES

    titles = set(_TITLES_EXTRA)
    for title in TITLES:
        if not all(c.isascii() or "LATIN" in unicodedata.name(c, "") for c in title):
            continue
        words = _TOKEN.findall(_ascii_words(title))
        if len(words) == 1 and len(words[0]) > 1:
            titles.add(words[0])
    return frozenset(titles - PARTICLES - _TITLES_THAT_ARE_NAMES)


def _strip_person_titles(tokens: list[str]) -> list[str]:
    """Drop leading titles ("Mr", "Dr", "Lieutenant General") while two tokens remain.

    Two, not one: a title followed by a single name ("Commander Putol", "Ayatollah Ebrahimi")
    keeps it, since a lone surname would match everyone who bears it.
    """
    titles = person_titles()
    start = 0
    while start < len(tokens) - 2 and tokens[start] in titles:
        start += 1
    return tokens[start:]


# Legal forms come from cleanco's term lists (``cleanco.termdata``: ~320 abbreviations by
# type and by country, "l.l.c.", "gmbh", "s. de r.l.", "ооо" ...). A dotted term is compared
# in its compact form ("L.L.C." and "LLC" both become "llc"), so names that differ only in how
# the legal form is written compare equal. cleanco lists abbreviations only, so two short
# tables of our own complete it.
#: Abbreviations cleanco lacks that are common in sanctions lists: Russian and Ukrainian joint
#: stock companies, UAE free-zone companies, Turkish "sirketi"; and "group" and "holding",
#: which carry as little identity as a legal form.
_LEGAL_FORMS_EXTRA: Final = frozenset(
    {"jsc", "ojsc", "cjsc", "pjsc", "ao", "fze", "fzco", "fzc", "dmcc", "sti", "group", "holding"}
)
#: Spelled-out forms -> the abbreviation they are compared as (each value is one of cleanco's
#: terms or in :data:`_LEGAL_FORMS_EXTRA`; a test checks). ``a|b`` gives a word's spellings.
_LEGAL_FORM_SPELLINGS: Final = {
    "limited liability company|corporation": "llc",
    "limited liability partnership": "llp",
    "limited partnership": "lp",
    "public limited company": "plc",
    "limited": "ltd",
    "limitada": "ltda",
    "incorporated": "inc",
    "corporation": "corp",
    "company": "co",
    "aktiengesellschaft": "ag",
    "gesellschaft mit beschrankter haftung": "gmbh",
    "sociedad anonima": "sa",
    "societe anonyme": "sa",
    "societa per azioni": "spa",
    "sociedad de responsabilidad limitada": "srl",
    "obshchestvo s ogranichennoy|ogranichennoi otvetstvennostyu|otvetstvennostiu": "ooo",
    "aktsionernoe obshchestvo|obschestvo": "ao",
    "otkrytoe aktsionernoe obshchestvo|obschestvo": "oao",
    "zakrytoe aktsionernoe obshchestvo|obschestvo": "zao",
    "publichnoe aktsionernoe obshchestvo|obschestvo": "pao",
    "joint stock company": "jsc",
    "open joint stock company": "ojsc",
    "closed joint stock company": "cjsc",
    "public joint stock company": "pjsc",
    "free zone establishment": "fze",
    "free zone company": "fzco",
    "sirketi": "sti",
}


def _spellings(pattern: str) -> list[tuple[str, ...]]:
    """``"a b|c"`` -> ``[("a", "b"), ("a", "c")]``."""
    return list(itertools.product(*(word.split("|") for word in pattern.split())))


@dataclass(frozen=True, slots=True)
class _LegalForms:
    #: token sequence as written -> its compare form (one or more tokens)
    rewrites: Mapping[tuple[str, ...], tuple[str, ...]]
    longest: int
    #: every token of every compare form: weighted like particles in organisation names
    words: frozenset[str]


def cleanco_terms() -> frozenset[str]:
    """cleanco's legal-form terms as written there ("l.l.c.", "s. de r.l.", "ооо" ...)."""
    # cleanco ships no type information: its two tables are read as the plain data they are.
    termdata = importlib.import_module("cleanco.termdata")
    by_type: dict[str, list[str]] = termdata.terms_by_type
    by_country: dict[str, list[str]] = termdata.terms_by_country
    return frozenset(t for terms in (*by_type.values(), *by_country.values()) for t in terms)


@lru_cache(maxsize=1)
def legal_forms() -> _LegalForms:
    """cleanco's legal-form terms, our spelled-out forms, and the words they are compared as."""
    rewrites: dict[tuple[str, ...], tuple[str, ...]] = {}
    for term in sorted(cleanco_terms()):
        # A word keeps its letters ("r.l." -> "rl"); words stay apart ("s. de r.l." -> s de rl).
        compact = tuple(
            word
            for word in ("".join(_TOKEN.findall(_ascii_words(w))) for w in term.split())
            if word
        )
        if compact:
            rewrites.setdefault(tuple(_TOKEN.findall(_ascii_words(term))), compact)
    for form in _LEGAL_FORMS_EXTRA:
        rewrites[(form,)] = (form,)
    for pattern, short in _LEGAL_FORM_SPELLINGS.items():
        for spelling in _spellings(pattern):
            rewrites[spelling] = (short,)
    words = frozenset(w for compact in rewrites.values() for w in compact)
    return _LegalForms(rewrites, max(len(k) for k in rewrites), words)


def _rewrite_legal_forms(tokens: list[str]) -> list[str]:
    """Replace each legal form by its compare form, longest match first, until nothing changes
    (so the result is a fixed point and normalisation stays idempotent)."""
    forms = legal_forms()
    while True:
        out: list[str] = []
        i = 0
        while i < len(tokens):
            for size in range(min(forms.longest, len(tokens) - i), 0, -1):
                compact = forms.rewrites.get(tuple(tokens[i : i + size]))
                if compact is not None:
                    out.extend(compact)
                    i += size
                    break
            else:
                out.append(tokens[i])
                i += 1
        if out == tokens:
            return out
        tokens = out


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
    tokens = _TOKEN.findall(_ascii_words(text))
    if _is_org_like(schema):
        tokens = _rewrite_legal_forms(tokens)
    elif schema == PERSON:
        tokens = _strip_person_titles(tokens)
    return tuple(tokens[: limits.NAME_TOKENS_MAX])


def name_key(text: str, schema: str = PERSON) -> str:
    """An order-free key of a name: its sorted normalised tokens (the allow-list key)."""
    return " ".join(sorted(normalise_name(text, schema)))


_MINOR_WEIGHT: Final = 0.25


def _token_weight(token: str, minor: bool) -> float:
    if minor:
        return _MINOR_WEIGHT
    # Longer tokens carry more identity; an initial carries a little.
    return min(len(token), 8) / 8.0 if len(token) > 1 else 0.35


@dataclass(frozen=True, slots=True)
class NameForm:
    """A name prepared for comparison; built once per list name and once per query."""

    original: str
    tokens: tuple[str, ...]
    #: Whether each token carries little identity: a particle, or a legal form in the name of
    #: an organisation or an object. Minor tokens weigh a quarter and are no blocking keys.
    minor: tuple[bool, ...]
    weights: tuple[float, ...]
    phonetics: tuple[str, ...]
    joined: str
    sorted_text: str
    total_weight: float
    #: Metaphone codes of the tokens that are not particles, for the ``phonetic`` feature.
    phonetic_codes: tuple[str, ...]


def name_form(text: str, schema: str = PERSON) -> NameForm:
    tokens = normalise_name(text, schema)
    # Legal forms only count as minor in organisation names: in a person's name "Ba", "Dat"
    # or "Sal" (all legal-form abbreviations somewhere) are given names or surnames.
    legal = legal_forms().words if _is_org_like(schema) else frozenset()
    minor = tuple(t in PARTICLES or t in legal for t in tokens)
    weights = tuple(_token_weight(t, m) for t, m in zip(tokens, minor, strict=True))
    phonetics = tuple(_phonetic(t) for t in tokens)
    return NameForm(
        original=text,
        tokens=tokens,
        minor=minor,
        weights=weights,
        phonetics=phonetics,
        joined="".join(tokens),
        sorted_text=" ".join(sorted(tokens)),
        total_weight=sum(weights),
        phonetic_codes=tuple(
            p for p, t in zip(phonetics, tokens, strict=True) if p and t not in PARTICLES
        ),
    )


_REPEATED_LETTER: Final = re.compile(r"(.)\1+")
_H_AFTER_CONSONANT: Final = re.compile(r"(?<=[^AEIOU])H")


@lru_cache(maxsize=131_072)
def _phonetic(token: str) -> str:
    """The Metaphone code of a token (jellyfish), with two corrections for transliterated names.

    Doubled letters are collapsed first: jellyfish drops a word's first vowel when it is doubled
    ("aamir" -> "MR", "amir" -> "AMR") and codes "shhah" as "XH". An H after a consonant is
    dropped from the code: romanisations write Arabic and Persian kh, gh, dh with or without
    the h ("Mukhlis"/"Moklis", "Khan"/"Kan"), and jellyfish keeps it ("MKHLS").
    """
    if len(token) < 2 or token.isdigit():
        return ""
    return _H_AFTER_CONSONANT.sub("", metaphone(_REPEATED_LETTER.sub(r"\1", token)))


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


#: Short names in common use that pycountry's ISO 3166 names lack ("Russian Federation",
#: "Brunei Darussalam"), OFAC's spellings ("Korea, North"), former names, and Kosovo, which has
#: no ISO 3166 code (``xk`` is the code in common use).
_COUNTRY_ALIASES: Final = {
    "russia": "ru",
    "brunei": "bn",
    "vatican": "va",
    "vatican city": "va",
    "macau": "mo",
    "cape verde": "cv",
    "cabo verde": "cv",
    "ivory coast": "ci",
    "east timor": "tl",
    "swaziland": "sz",
    "burma": "mm",
    "turkey": "tr",
    "macedonia": "mk",
    "north macedonia the republic of": "mk",
    "korea north": "kp",
    "korea south": "kr",
    "congo democratic republic of the": "cd",
    "democratic republic of the congo": "cd",
    "dr congo": "cd",
    "congo republic of the": "cg",
    "the gambia": "gm",
    "palestinian": "ps",
    "possibly palestinian": "ps",
    "palestinian territories": "ps",
    "west bank": "ps",
    "gaza": "ps",
    "region gaza": "ps",
    "great britain": "gb",
    "uk": "gb",
    "usa": "us",
    "united states of america": "us",
    "soviet union": "suhh",
    "kosovo": "xk",
    "republic of kosovo": "xk",
    "xk": "xk",
    "xkx": "xk",
}
_NAME_PARTS: Final = re.compile(
    r"^(?P<head>[^,(]+?)\s*(?:,\s*(?P<qualifier>.+)|\((?P<inner>.+)\))$"
)


def _country_key(text: str) -> str:
    return " ".join(_TOKEN.findall(_ascii_words(text)))


@lru_cache(maxsize=1)
def _country_table() -> dict[str, str]:
    """Country name or code -> lower-case ISO 3166-1 alpha-2, from pycountry's ISO 3166-1 table
    (codes, names, official and common names) and the aliases above; states that no longer
    exist (ISO 3166-3: "USSR", "Yugoslavia", "Zaire") map to their four-letter code. Built once.
    """
    import pycountry  # imported on first use (~40 ms)

    table: dict[str, str] = {}
    derived: dict[str, set[str]] = {}
    for country in pycountry.countries:
        code = country.alpha_2.lower()
        names = (country.alpha_2, country.alpha_3, country.name)
        optional = (getattr(country, "official_name", ""), getattr(country, "common_name", ""))
        for name in (*names, *optional):
            if name:
                table.setdefault(_country_key(name), code)
        # "Iran, Islamic Republic of" is also "Iran" and "Islamic Republic of Iran";
        # "Holy See (Vatican City State)" is also "Holy See" and "Vatican City State".
        if (parts := _NAME_PARTS.match(country.name)) is not None:
            head, qualifier, inner = parts.group("head", "qualifier", "inner")
            for name in (head, f"{qualifier} {head}" if qualifier else inner):
                derived.setdefault(_country_key(name), set()).add(code)
    for key, codes in derived.items():
        if len(codes) == 1:  # "Korea" and "Virgin Islands" name two countries: neither
            table.setdefault(key, codes.pop())
    for historic in pycountry.historic_countries:
        code = historic.alpha_4.lower()
        short, _, qualifier = historic.name.partition(",")
        for name in (historic.alpha_4, historic.alpha_3, short, f"{qualifier} {short}"):
            table.setdefault(_country_key(name), code)
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

    threshold: float = DEFAULT_THRESHOLD
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
    for token, code, minor in zip(form.tokens, form.phonetics, form.minor, strict=True):
        if minor or len(token) < 2:
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
