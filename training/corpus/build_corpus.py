"""Rebuild the embedded English-Spanish Bible corpus from Debian's SWORD packages.

A maintainer tool: the package only reads what it writes, through `vaswani.training.corpus`. On Debian 12
(bookworm), as root:

    apt-get install -y libsword-utils sword-text-web=426.0-1 sword-text-sparv=2.60-1
    python training/corpus/build_corpus.py --out training/corpus

It exports both modules with `mod2imp` and writes, byte for byte reproducibly (canonical Bible order,
sorted keys, xz preset 9):

- `parallel_en_es.jsonl.xz`: English (World English Bible, 2020) <-> Spanish (Reina-Valera 1909) verse pairs,
  one JSON object a line: `id` ("Gen.1.1"), `book`, `testament`, `split`, `en`, `es`.
- `english.jsonl.xz`: every English verse, deuterocanon included, except the test books: `id`, `book`,
  `testament`, `split` ("train" or "validation"), `text`.

Cleaning: drop chapter/book headings (`C:0`, `0:0`), footnotes, non-canonical titles and speaker labels
(a psalm's canonical title stays: it is part of verse 1, as in the Spanish); strip the remaining OSIS tags;
unescape HTML entities; drop the pilcrow; fix the spacing that removed notes and abutting word tags leave;
write RV1909's capitalised chapter openings ("EN el principio") in sentence case.

Pairing: join on verse id, drop the verses that the Spanish module numbers differently (listed below),
cut RV1909's epistle subscriptions, keep pairs whose Spanish/English character-length ratio is in [0.5, 2.0].
Splits are whole books, assigned by the rule above `NEAR_DUPLICATE_FAMILIES`, so near-duplicate verses (synoptic
gospels, Samuel/Kings/Chronicles) cannot leak.
"""

import argparse
import collections
import html
import json
import lzma
import re
import subprocess
import unicodedata
from pathlib import Path

PACKAGE_VERSIONS = {"libsword-utils": "1.9.0+dfsg-4+b4", "sword-text-web": "426.0-1", "sword-text-sparv": "2.60-1"}
ENGLISH_MODULE = "engWEB2015eb"
SPANISH_MODULE = "spaRV1909eb"
PARALLEL_FILE = "parallel_en_es.jsonl.xz"
ENGLISH_FILE = "english.jsonl.xz"

# (SWORD book name, OSIS id, testament) in the modules' canonical order.
BOOKS = (
    [(name, osis, "old") for name, osis in (
        ("Genesis", "Gen"), ("Exodus", "Exod"), ("Leviticus", "Lev"), ("Numbers", "Num"), ("Deuteronomy", "Deut"),
        ("Joshua", "Josh"), ("Judges", "Judg"), ("Ruth", "Ruth"), ("I Samuel", "1Sam"), ("II Samuel", "2Sam"),
        ("I Kings", "1Kgs"), ("II Kings", "2Kgs"), ("I Chronicles", "1Chr"), ("II Chronicles", "2Chr"),
        ("Ezra", "Ezra"), ("Nehemiah", "Neh"), ("Esther", "Esth"), ("Job", "Job"), ("Psalms", "Ps"),
        ("Proverbs", "Prov"), ("Ecclesiastes", "Eccl"), ("Song of Solomon", "Song"), ("Isaiah", "Isa"),
        ("Jeremiah", "Jer"), ("Lamentations", "Lam"), ("Ezekiel", "Ezek"), ("Daniel", "Dan"), ("Hosea", "Hos"),
        ("Joel", "Joel"), ("Amos", "Amos"), ("Obadiah", "Obad"), ("Jonah", "Jonah"), ("Micah", "Mic"),
        ("Nahum", "Nah"), ("Habakkuk", "Hab"), ("Zephaniah", "Zeph"), ("Haggai", "Hag"), ("Zechariah", "Zech"),
        ("Malachi", "Mal"),
    )]
    + [(name, osis, "deuterocanon") for name, osis in (
        ("Tobit", "Tob"), ("Judith", "Jdt"), ("Esther (Greek)", "EsthGr"), ("Wisdom", "Wis"), ("Sirach", "Sir"),
        ("Baruch", "Bar"), ("Prayer of Azariah", "PrAzar"), ("Susanna", "Sus"), ("Bel and the Dragon", "Bel"),
        ("I Maccabees", "1Macc"), ("II Maccabees", "2Macc"), ("I Esdras", "1Esd"), ("Prayer of Manasses", "PrMan"),
        ("Additional Psalm", "AddPs"), ("III Maccabees", "3Macc"), ("II Esdras", "2Esd"), ("IV Maccabees", "4Macc"),
    )]
    + [(name, osis, "new") for name, osis in (
        ("Matthew", "Matt"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"),
        ("Romans", "Rom"), ("I Corinthians", "1Cor"), ("II Corinthians", "2Cor"), ("Galatians", "Gal"),
        ("Ephesians", "Eph"), ("Philippians", "Phil"), ("Colossians", "Col"), ("I Thessalonians", "1Thess"),
        ("II Thessalonians", "2Thess"), ("I Timothy", "1Tim"), ("II Timothy", "2Tim"), ("Titus", "Titus"),
        ("Philemon", "Phlm"), ("Hebrews", "Heb"), ("James", "Jas"), ("I Peter", "1Pet"), ("II Peter", "2Pet"),
        ("I John", "1John"), ("II John", "2John"), ("III John", "3John"), ("Jude", "Jude"),
        ("Revelation of John", "Rev"),
    )]
)
BOOK_INFO = {name: (osis, testament) for name, osis, testament in BOOKS}
BOOK_ORDER = {name: index for index, (name, _, _) in enumerate(BOOKS)}
# The split rule, fixed before any model was scored on it. The books of each near-duplicate family (whole verses
# repeated nearly word for word from book to book) stay together in train. Within each testament, the other books
# are numbered in canonical order from 1: every 7th is test, and the book after every other test book (numbers 8,
# 22, 36, ...) is validation. Deuterocanonical books (English only) are train, except the additions that extend a
# held-out book, which follow it.
NEAR_DUPLICATE_FAMILIES = (
    ("I Samuel", "II Samuel", "I Kings", "II Kings", "I Chronicles", "II Chronicles"),
    ("Matthew", "Mark", "Luke"),
)
TEST_EVERY = 7
ADDITIONS = {
    "Esther (Greek)": "Esther", "Prayer of Azariah": "Daniel", "Susanna": "Daniel", "Bel and the Dragon": "Daniel"
}

# (OSIS book, chapter, first verse, last verse): here the Spanish module numbers verses differently (RV1909
# follows the Hebrew numbering, or divides or merges verses), so one verse id holds different text in the two
# modules. Found by comparing each verse's length and vocabulary with its neighbours' and next to the Spanish
# module's empty verse slots, then checked by reading; the length-ratio filter alone keeps most of these.
SPANISH_MISNUMBERED = (
    ("Num", 13, 1, 33), ("Num", 30, 1, 16), ("Judg", 14, 18, 20), ("1Sam", 24, 1, 22), ("2Sam", 2, 31, 32),
    ("2Sam", 20, 25, 25), ("1Kgs", 18, 33, 34), ("1Kgs", 22, 43, 53), ("1Chr", 1, 30, 32), ("1Chr", 21, 15, 30),
    ("2Chr", 33, 10, 25), ("Job", 35, 15, 15), ("Job", 39, 1, 30), ("Job", 40, 1, 24), ("Jer", 51, 21, 22),
    ("Hos", 12, 1, 14), ("Jonah", 2, 1, 10), ("Luke", 7, 18, 19), ("Acts", 19, 40, 40), ("2Cor", 13, 12, 14),
)
MIN_LENGTH_RATIO, MAX_LENGTH_RATIO = 0.5, 2.0

RECORD = re.compile(r"^\$\$\$(.+) (\d+):(\d+)\n(.*)$", re.MULTILINE)
BACK_MATTER = re.compile(r'<div [^>]*eID="[^"]*" [^>]*type="book"/>.*')  # WEB's glossary follows Rev 22:21
NOTE = re.compile(r"<note\b.*?</note>")
CANONICAL_TITLE = re.compile(r'<title canonical="true"[^>]*>(.*?)</title>')
HEADING = re.compile(r"<(title|speaker)\b.*?</\1>")
ABUTTING_WORDS = re.compile(r"</(?:w|transChange)>(?=<(?:w|transChange)\b)")
TAG = re.compile(r"<[^>]*>")
WORD_JOIN = "\x00"  # marks two word elements with nothing between them, resolved after the tags are gone
WORD = re.compile(r"[^\W\d_]+")
ENCLITIC = re.compile(r"(?:me|te|se|nos|os|lo|la|le|los|las|les)")
# All-capital words, one-letter ones ("Y", "Á") included so that "Y Á SUS" is one run.
CAPITALS_RUN = re.compile(r"\b[A-ZÁÉÍÓÚÑÜ]+(?: [A-ZÁÉÍÓÚÑÜ]+)*\b")
SENTENCE_START = re.compile(r"(?:.*[.:?!] )?[¡¿]?")
MID_SENTENCE_WORD = re.compile(r"(?<=[a-zá-úñ,;] )[^\W\d_]+")
EPISTLE_SUBSCRIPTION = re.compile(r"(?<=Amén\.) [^.]*\b(?:[Ee]scrita|[Ee]nviada)\b[^.]*\.$")


def check_package_versions() -> None:
    """Fail unless the installed Debian packages are the ones the committed files were built from."""
    for package, expected in PACKAGE_VERSIONS.items():
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        if result.stdout != expected:
            found = result.stdout or "not installed"
            raise SystemExit(f"{package} is {found}; the committed files need: apt-get install {package}={expected}")


def export_module(module: str) -> str:
    """The module as mod2imp's text: `$$$Book C:V` lines, each followed by that verse's OSIS markup."""
    return subprocess.run(["mod2imp", module], capture_output=True, text=True, check=True).stdout


def read_verses(imp_text: str) -> dict[tuple[str, int, int], str]:
    """Verse markup by (book, chapter, verse), without the `C:0` and `0:0` book and chapter headings."""
    return {
        (book, int(chapter), int(verse)): markup
        for book, chapter, verse, markup in RECORD.findall(imp_text)
        if verse != "0"
    }


def remove_markup(markup: str) -> str:
    """OSIS verse markup -> text; abutting word elements are marked with WORD_JOIN for `join_words`."""
    text = BACK_MATTER.sub("", markup)
    text = NOTE.sub(" ", text)  # a note can be the only thing between two words
    text = CANONICAL_TITLE.sub(r"\1 ", text)
    text = HEADING.sub(" ", text)
    text = ABUTTING_WORDS.sub(WORD_JOIN, text)
    text = html.unescape(TAG.sub("", text)).replace("¶", "")
    return unicodedata.normalize("NFC", text)


def standalone_vocabulary(texts) -> set[str]:
    """Lower-cased words that occur away from any WORD_JOIN, i.e. as the text writes them."""
    vocabulary = set()
    for text in texts:
        unmarked = re.sub(rf"\w*{WORD_JOIN}\w*", " ", text)
        vocabulary.update(word.lower() for word in WORD.findall(unmarked))
    return vocabulary


def join_words(text: str, vocabulary: set[str]) -> str:
    """Resolve WORD_JOIN: a space, except where RV1909 splits a verb from its enclitic ("díjo"+"le" = "díjole")."""

    def resolve(match: re.Match) -> str:
        left, right = match.group(1), match.group(2)
        verb_with_enclitic = ENCLITIC.fullmatch(right.lower()) and (
            (left + right).lower() in vocabulary or left.lower() not in vocabulary
        )
        return left + ("" if verb_with_enclitic else " ")

    text = re.sub(rf"(\w+){WORD_JOIN}(?=(\w+))", resolve, text)
    return text.replace(WORD_JOIN, "")


def fix_spacing(text: str) -> str:
    """Collapse whitespace and close the gaps that removed notes leave before punctuation."""
    text = " ".join(text.split())
    text = re.sub(r"(?<=\w) +(?=[,.;:!?)])", "", text)
    text = re.sub(r"(?<=[\w.,;:!?]) +(?=”)", "", text)  # "’ ”" (nested quotes) keeps its space
    return re.sub(r"”(?=\w)", "” ", text)


def sentence_case_chapter_opening(text: str, verse: int, casing: dict[str, str]) -> str:
    """RV1909 capitalises a chapter's first word(s) ("EN el principio", "Y JACOB"); write them in sentence case.

    The capitals must start a sentence: in verse 1, the first such run that does not end a sentence, so that an
    acrostic letter ("ALEPH. BIENAVENTURADOS") is skipped, else the first one ("ALELUYA. Alabad"); in other
    verses, only a run that opens the verse before a lower-case word ("HUBO en", Luke 1:5). Capitals elsewhere
    are inscriptions ("EL REY DE LOS JUDIOS") and stay.
    """
    runs = [
        run
        for run in CAPITALS_RUN.finditer(text)
        if re.search("[A-ZÁÉÍÓÚÑÜ]{2}", run.group(0)) and SENTENCE_START.fullmatch(text[: run.start()])
    ]
    if verse != 1:
        runs = [run for run in runs if run.start() == 0 and re.match(r" [a-zá-úñ]", text[run.end() :])]
    runs = [run for run in runs if not text[run.end() :].startswith(".")] or runs
    if not runs:
        return text
    run = runs[0]
    words = run.group(0).split(" ")
    cased = [words[0].capitalize()] + [casing.get(word.lower(), word.lower()) for word in words[1:]]
    return text[: run.start()] + " ".join(cased) + text[run.end() :]


def usual_casing(texts) -> dict[str, str]:
    """Each word's usual spelling inside a sentence, lower-case or capitalised ("jehová" -> "Jehová")."""
    counts = collections.Counter(word for text in texts for word in MID_SENTENCE_WORD.findall(text))
    lower_words = {word.lower() for word in counts}
    return {word: word.capitalize() if counts[word.capitalize()] > counts[word] else word for word in lower_words}


def clean_module(verses: dict[tuple[str, int, int], str]) -> dict[tuple[str, int, int], str]:
    """Plain text by (book, chapter, verse), empty verses dropped."""
    marked = {key: remove_markup(markup) for key, markup in verses.items()}
    vocabulary = standalone_vocabulary(marked.values())
    texts = {key: fix_spacing(join_words(text, vocabulary)) for key, text in marked.items()}
    return {key: text for key, text in texts.items() if text}


def clean_spanish(verses: dict[tuple[str, int, int], str]) -> dict[tuple[str, int, int], str]:
    """RV1909 text with sentence-cased chapter openings and without the epistles' subscriptions."""
    texts = clean_module(verses)
    casing = usual_casing(texts.values())
    return {
        key: EPISTLE_SUBSCRIPTION.sub("", sentence_case_chapter_opening(text, key[2], casing))
        for key, text in texts.items()
    }


def book_splits() -> dict[str, str]:
    """Each book's split by the rule above NEAR_DUPLICATE_FAMILIES: validation, test or train."""
    in_families = {book for family in NEAR_DUPLICATE_FAMILIES for book in family}
    splits = {}
    for testament in ("old", "new"):
        numbered = [name for name, _, books_testament in BOOKS if books_testament == testament]
        numbered = [name for name in numbered if name not in in_families]
        for number, name in enumerate(numbered, start=1):
            test, after_test = number % TEST_EVERY == 0, number % (2 * TEST_EVERY) == TEST_EVERY + 1
            splits[name] = "test" if test else "validation" if after_test else "train"
    return {name: splits.get(ADDITIONS.get(name, name), "train") for name, _, _ in BOOKS}


BOOK_SPLITS = book_splits()


def split_of(book: str) -> str:
    """The whole-book split: validation, test or train."""
    return BOOK_SPLITS[book]


def is_misnumbered(key: tuple[str, int, int]) -> bool:
    """Whether the Spanish module holds a different verse's text under this id (see SPANISH_MISNUMBERED)."""
    osis, chapter, verse = BOOK_INFO[key[0]][0], key[1], key[2]
    return any(
        (osis, chapter) == (span_book, span_chapter) and first <= verse <= last
        for span_book, span_chapter, first, last in SPANISH_MISNUMBERED
    )


def verse_record(key: tuple[str, int, int]) -> dict[str, str]:
    """The fields every row carries: OSIS id, book name, testament and split."""
    book, chapter, verse = key
    osis, testament = BOOK_INFO[book]
    return {"id": f"{osis}.{chapter}.{verse}", "book": book, "testament": testament, "split": split_of(book)}


def canonical_order(keys) -> list[tuple[str, int, int]]:
    """Book order of the modules, then chapter and verse."""
    return sorted(keys, key=lambda key: (BOOK_ORDER[key[0]], key[1], key[2]))


def parallel_rows(english: dict, spanish: dict) -> list[dict[str, str]]:
    """Verse pairs that share an id, are numbered alike and pass the length-ratio filter."""
    rows = []
    for key in canonical_order(english.keys() & spanish.keys()):
        row = verse_record(key) | {"en": english[key], "es": spanish[key]}
        ratio = len(row["es"]) / len(row["en"])
        if not is_misnumbered(key) and MIN_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO:
            rows.append(row)
    return rows


def english_rows(english: dict) -> list[dict[str, str]]:
    """Every English verse outside the test books, for masked- and causal-LM pretraining."""
    rows = [verse_record(key) | {"text": english[key]} for key in canonical_order(english)]
    return [row for row in rows if row["split"] != "test"]


def write_jsonl_xz(rows: list[dict[str, str]], path: Path) -> None:
    """One JSON object a line, sorted keys, UTF-8, xz preset 9: the same rows give the same bytes."""
    lines = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    path.write_bytes(lzma.compress(lines.encode("utf-8"), format=lzma.FORMAT_XZ, preset=9))


def summarize(name: str, rows: list[dict[str, str]]) -> str:
    """A line of counts per split, for the maintainer to compare with LICENSE.md."""
    counts = collections.Counter(row["split"] for row in rows)
    return f"{name}: {len(rows)} rows, " + ", ".join(f"{split} {counts[split]}" for split in sorted(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for the .jsonl.xz files")
    arguments = parser.parse_args()
    check_package_versions()
    english = clean_module(read_verses(export_module(ENGLISH_MODULE)))
    spanish = clean_spanish(read_verses(export_module(SPANISH_MODULE)))
    arguments.out.mkdir(parents=True, exist_ok=True)
    for name, rows in ((PARALLEL_FILE, parallel_rows(english, spanish)), (ENGLISH_FILE, english_rows(english))):
        write_jsonl_xz(rows, arguments.out / name)
        print(summarize(name, rows))


if __name__ == "__main__":
    main()
