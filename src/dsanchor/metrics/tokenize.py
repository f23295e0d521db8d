"""Tokenisers for the text metrics.

* :func:`ptb_tokenize` is a pure-Python take on the Stanford PTBTokenizer (CoreNLP 3.4.1, run with
  ``-preserveLines -lowerCase``), the tokeniser pycocoevalcap feeds to BLEU and CIDEr. On ordinary
  captions it gives the same tokens as the Java one: clitics split (``do n't``, ``man 's``), brackets
  spelled ``-lrb-``/``-rrb-``, quotes turned into `````/``''``, hyphenated words, numbers and
  abbreviations (``e.g.``, ``mr.``) kept whole. Exotic input (URLs, emoticons, rare abbreviations) may
  split differently.
* :func:`ptb_tokenize_java` runs the real PTBTokenizer from pycocoevalcap's jar (needs ``java``).
* :func:`caption_tokens` turns captions into the space-joined, punctuation-free token strings that
  pycocoevalcap's scorers read, with either backend.
* :func:`singularize` is a rule-based English singulariser for CHAIR (Rohrbach et al. 2018).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dsanchor.errors import MetricInputError, MissingDependencyError

__all__ = ["PTB_PUNCTUATION", "TOKENIZERS", "java_available", "ptb_tokenize", "ptb_tokenize_java",
           "caption_tokens", "singularize"]

# Tokens pycocoevalcap's PTBTokenizer drops after tokenising (its PUNCTUATIONS list). The upper-case
# bracket names never match: -lowerCase has already turned them into -lrb- etc., which stay.
PTB_PUNCTUATION = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"})
TOKENIZERS = ("auto", "java", "python")

# --- PTB-style tokenisation -------------------------------------------------------------------

# Characters the Stanford lexer rewrites before tokenising (curly quotes, dashes, fractions, currency).
_NORMALIZE = str.maketrans({
    "\u2018": "`", "\u201c": '"', "\u201d": '"', "\u2014": "--", "\u2013": "--",
    "\u2026": "...", "\u00a0": " ", "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4",
    "\u20ac": "$", "\u00a3": "#", "\u00a2": " cents ",
})
# line breaks (as the Java lexer knows them) become spaces: one caption is one line
_ONE_LINE = str.maketrans({c: " " for c in "\n\r\u2028\u2029\x0b\x0c\x85"})
# emoji (outside the BMP) and control characters: the Java lexer drops them as untokenizable
_UNTOKENIZABLE = re.compile("[\U00010000-\U0010ffff\x00-\x08\x0e-\x1f\x7f]")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = ("mr|mrs|ms|dr|st|jr|sr|prof|etc|vs|inc|co|corp|ltd|mt|ft|ave|gen|gov|sen|rep|lt|col|capt|sgt|"
                  "jan|feb|mar|apr|aug|sep|sept|oct|nov|dec")
_ABBREVIATION_SET = frozenset(_ABBREVIATIONS.split("|"))
_SIMPLE = re.compile(r"([A-Za-z]+)([,.;:!?]?)")
# One whitespace-free chunk is split by these, tried in order at each position.
_TOKEN = re.compile(r"""
    (?P<plain>[A-Za-z]+(?=[\s,;:!?()\[\]{}"]|$))                   # fast path: most words
  | (?P<ellipsis>\.{3,})
  | (?P<dashes>-{2,})
  | (?P<acronym>(?<![\w.])[A-Za-z](?:\.[A-Za-z])+\.(?!\w))          # e.g.  u.s.  p.m.
  | (?P<abbrev>(?<![\w.])(?:(?i:""" + _ABBREVIATIONS + r""")|[A-Za-z])\.(?!\w))  # mr.  etc.  a.
  | (?P<special>(?<!\w)['\u2019](?i:em|n'|til|till|tis|twas|\d\ds?)(?!\w))  # 'em  'n'  'til  '90s  'tis
  | (?P<special_end>(?<!\w)(?i:dunkin|somethin|nothin|goin|ol)['\u2019](?!\w))  # Dunkin'
  | (?P<sgml></?[A-Za-z][^<>\s]*>)                                 # </p>
  | (?P<number>\d+(?:[,:]\d+)+(?:\.\d+)?)                           # 1,000  10:30
  | (?P<word>\w+(?:(?:[-./&]|['\u2019](?=[^\W\d_]))\w+)*)            # snow-covered 3.5 a/b o'clock man's
  | (?P<marks>[?!]+)
  | (?P<dquote>"|``|'')
  | (?P<other>\S)
""", re.VERBOSE)
_CLITIC = re.compile(r"(?i)^(.+?)(n['\u2019]t|['\u2019](?:s|re|ve|ll|d|m))$")
# inner apostrophes the lexer keeps: o'clock, o'neil (one letter, then 2+), ma'am (vowel on both sides)
_KEEP_APOSTROPHE = re.compile(r"(?i)^(?:[a-hj-xzn]['\u2019][a-z]{2,}|[a-z]*[aeiouy]['\u2019][aeiou][a-z]*)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "lemme": ("lem", "me"), "gimme": ("gim", "me"),
                "'tis": ("'t", "is"), "'twas": ("'t", "was"), "y'all": ("y'", "all")}


def _opening(text: str, start: int) -> bool:
    """Whether a quote at ``start`` of a chunk opens (starts the chunk or follows an opening bracket)."""
    return start == 0 or text[start - 1] in "([{`"


def _split_word(word: str) -> list[str]:
    """Split a clitic off a word (``do n't``, ``man 's``) and a stray inner apostrophe (``x ` y``)."""
    low = word.lower()
    if low in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[low])
    m = _CLITIC.match(word)
    if m and m.group(1)[-1] not in "'\u2019":
        return _split_word(m.group(1)) + [m.group(2).replace("\u2019", "'")]
    i = next((i for i, c in enumerate(word) if i and c in "'\u2019"), -1)
    if i < 0 or _KEEP_APOSTROPHE.match(word):
        return [word]
    return [word[:i], "`"] + _split_word(word[i + 1:])  # the lexer reads it as an opening quote


def ptb_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split ``text`` into Penn Treebank tokens the way the Stanford PTBTokenizer does.

    Args:
        text: one caption; line breaks count as spaces.
        lowercase: lower-case the tokens (pycocoevalcap passes ``-lowerCase``).

    Returns:
        The tokens, punctuation included (``caption_tokens`` removes it).
    """
    chunks = _UNTOKENIZABLE.sub(" ", text.translate(_ONE_LINE).translate(_NORMALIZE)).split()
    tokens: list[str] = []
    for n, chunk in enumerate(chunks):
        m = _SIMPLE.fullmatch(chunk)  # fast path: a plain word, maybe with one punctuation mark
        if m is None:
            tokens.extend(_chunk_tokens(chunk))
            continue
        word, mark = m.groups()
        low = word.lower()
        if mark == "." and (len(word) == 1 or low in _ABBREVIATION_SET
                            or low == "no" and chunks[n + 1:n + 2] and chunks[n + 1][0].isdigit()):
            tokens.append(chunk)  # a.  mr.  etc.  no. 5
        else:
            tokens.extend(_SPLIT_WORDS.get(low, (word,)))
            if mark:
                tokens.append(mark)
    return [t.lower() for t in tokens] if lowercase else tokens


def _chunk_tokens(text: str) -> list[str]:
    """Tokens of one whitespace-free chunk."""
    tokens: list[str] = []
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "plain":
            tokens.extend(_SPLIT_WORDS.get(tok.lower(), (tok,)))
        elif kind == "ellipsis":
            tokens.append("...")
        elif kind == "dashes":
            tokens.append("--")
        elif kind == "word":
            tokens.extend(_split_word(tok))
        elif kind == "special":
            tokens.extend(_SPLIT_WORDS.get(tok.lower().replace("\u2019", "'"), (tok,)))
        elif kind == "dquote":
            tokens.append("''" if tok == "''" else "``" if tok == "``" or _opening(text, m.start()) else "''")
        elif kind == "other" and tok in "'\u2019":
            tokens.append("`" if _opening(text, m.start()) else "'")
        else:
            tokens.append(_BRACKETS.get(tok, tok))
    return tokens


def java_available() -> bool:
    """Whether a ``java`` executable is on the PATH (needed by :func:`ptb_tokenize_java`)."""
    return shutil.which("java") is not None


def _corenlp_jar() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def ptb_tokenize_java(texts: Sequence[str]) -> list[list[str]]:
    """Tokenise ``texts`` with the Stanford PTBTokenizer from pycocoevalcap's jar, as pycocoevalcap does.

    Runs ``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines
    -lowerCase`` on a temporary file (one text a line). Unlike pycocoevalcap it writes the file to the
    system temp dir, not into the installed package.

    Returns:
        One list of lower-cased tokens per text, punctuation included.
    """
    if not java_available():
        raise MissingDependencyError("the Java PTB tokenizer needs `java` on the PATH; install a JRE "
                                     "or use tokenizer='python'")
    lines = [t.translate(_ONE_LINE) for t in texts]
    with tempfile.TemporaryDirectory(prefix="dsanchor-ptb-") as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        cmd = ["java", "-cp", str(_corenlp_jar()), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(path)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise MissingDependencyError(f"the Java PTB tokenizer failed (exit {proc.returncode}): "
                                     f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    out = proc.stdout.decode("utf-8").split("\n")
    out += [""] * (len(lines) - len(out))
    return [line.split() for line in out[:len(lines)]]


def caption_tokens(texts: Sequence[str], tokenizer: str = "auto") -> list[str]:
    """PTB-tokenise ``texts`` and drop punctuation, giving the strings pycocoevalcap's scorers read.

    Args:
        texts: captions.
        tokenizer: ``"java"`` (Stanford PTBTokenizer), ``"python"`` (:func:`ptb_tokenize`) or
            ``"auto"`` (java when ``java`` is on the PATH, else python).

    Returns:
        One space-joined, lower-cased token string per text.
    """
    if tokenizer not in TOKENIZERS:
        raise MetricInputError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    use_java = tokenizer == "java" or (tokenizer == "auto" and java_available())
    tokenized = ptb_tokenize_java(texts) if use_java else [ptb_tokenize(t) for t in texts]
    return [" ".join(t for t in toks if t not in PTB_PUNCTUATION) for toks in tokenized]


# --- singularisation (CHAIR) ------------------------------------------------------------------

_IRREGULAR = {"people": "person", "children": "child", "feet": "foot", "teeth": "tooth", "geese": "goose",
              "mice": "mouse", "oxen": "ox", "dice": "die", "axes": "axe", "leaves": "leaf", "loaves": "loaf",
              "thieves": "thief", "sheaves": "sheaf", "buses": "bus", "busses": "bus", "ties": "tie", "pies": "pie",
              "lies": "lie", "dies": "die", "movies": "movie", "cookies": "cookie", "doggies": "doggie",
              "collies": "collie", "brownies": "brownie", "veggies": "veggie", "goalies": "goalie",
              "hippies": "hippie", "selfies": "selfie", "zombies": "zombie", "beanies": "beanie",
              "smoothies": "smoothie", "rookies": "rookie", "species": "species", "series": "series"}
# words whose plural is the singular, and singular nouns that end in -s
_UNCHANGED = {"sheep", "deer", "fish", "bison", "moose", "swine", "cattle", "aircraft", "scissors", "pants",
              "jeans", "shorts", "clothes", "news", "series", "species", "police",
              "this", "his", "is", "was", "has", "as", "gas", "yes", "its", "us", "thus", "plus", "always",
              "perhaps", "canvas", "atlas", "christmas", "bias", "alias", "tennis", "iris", "axis", "chassis",
              "trellis", "pelvis", "lens", "mattress", "whereas", "overseas", "pajamas", "pyjamas", "chaos",
              "cosmos", "kudos", "thermos", "ethos", "hummus", "less", "unless", "across", "various"}
_F_PLURALS = {"knives": "knife", "wives": "wife", "lives": "life", "midwives": "midwife", "calves": "calf",
              "halves": "half", "wolves": "wolf", "shelves": "shelf", "selves": "self", "elves": "elf",
              "scarves": "scarf", "hooves": "hoof", "pocketknives": "pocketknife"}
_O_PLURALS = ("potatoes", "tomatoes", "heroes", "echoes", "volcanoes", "mangoes", "buffaloes", "dominoes",
              "mosquitoes", "torpedoes", "avocadoes", "tornadoes", "vetoes", "cargoes")
# -ches words that only drop the -s
_S_ONLY = ("headaches", "toothaches", "stomachaches", "backaches", "mustaches", "moustaches", "niches", "caches",
           "cliches", "quiches", "avalanches", "psyches")


@functools.lru_cache(maxsize=1 << 16)
def singularize(word: str) -> str:
    """The lower-cased singular of an English noun, by rule; other words come back lower-cased.

    Covers the plurals of the COCO object vocabulary and its synonyms: irregulars (people, men, children,
    mice, geese, oxen, knives, calves), uninflected nouns (sheep, cattle, scissors), -ies/-es/-s endings.

    The CHAIR reference code singularises with ``pattern.en``, whose rules get a few of these wrong
    ("bus" -> "bu", "glass" -> "glas", "canoes" -> "cano", "ties" -> "ty", "doggies" unchanged); here they
    come out right. See :mod:`dsanchor.metrics.chair`.
    """
    w = word.lower()
    if len(w) < 3 or not w.isalpha() or w in _UNCHANGED:
        return w
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w.endswith("men") and w not in ("amen", "omen", "semen", "ramen", "abdomen", "specimen", "stamen"):
        return w[:-3] + "man"  # women, gentlemen, policemen
    if w.endswith("children"):
        return w[:-3]  # grandchildren
    if w.endswith("ves"):
        return _F_PLURALS.get(w, w[:-1])  # stoves, gloves, microwaves
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y" if w[-4] not in "aeiou" else w[:-1]  # puppies, ponies
    if w.endswith("buses"):
        return w[:-2]  # minibuses
    if w.endswith(("ches", "shes", "sses", "xes")) and not w.endswith(_S_ONLY) or w.endswith(_O_PLURALS):
        return w[:-2]  # benches, dishes, glasses, boxes, potatoes
    if w.endswith("s") and not w.endswith(("ss", "us", "sis")):
        return w[:-1]
    return w
