"""Sentence splitting for `vaswani-translate`, which splits only lines too long for the model (paragraphs).

A rule, not a model: a sentence ends at `.`, `!`, `?` or `…` (and any closing quotes or brackets after them)
followed by white space and a sentence start (an upper-case letter or a digit, possibly behind opening quotes,
brackets or Spanish `¿` `¡`), or at the full-width `。` `！` `？`, which need no space. Initials (`J. R.`),
dotted abbreviations (`U.S.`, `e.g.`) and common titles (`Mr.`, `Dr.`, `Sra.`) end no sentence. It needs no
language code and no download; a sentence cut in two where it should not be still translates, only less well,
since the pieces of a line are joined again in order.
"""

import re

# A candidate end: sentence punctuation, closing quotes or brackets, then white space; or a full-width mark.
CANDIDATE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[」』”’）]*\s*")
OPENERS = "\"'“‘«([¿¡"
TITLES = frozenset(
    "mr mrs ms dr prof st sr sra srta jr mme mlle vs nr vol ca approx".split()
)


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, in order, stripped of surrounding white space; `text` itself if it has one."""
    sentences, start = [], 0
    for match in CANDIDATE_END.finditer(text):
        if match.end() < len(text) and ends_sentence(text, match):
            sentences.append(text[start : match.end()].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [sentence for sentence in sentences if sentence]


def ends_sentence(text: str, match: re.Match) -> bool:
    if match.group()[0] in "。！？":
        return True
    following = text[match.end() :].lstrip(OPENERS)[:1]
    if not (following.isupper() or following.isdigit()):
        return False
    if match.group()[0] != ".":
        return True
    word = text[: match.start()].rsplit(maxsplit=1)[-1:] or [""]
    word = word[0].lstrip(OPENERS)
    # "J." (an initial), "U.S." / "e.g" (dotted), "Dr." (a title): an abbreviation, not a sentence end.
    return not (len(word) == 1 or "." in word or word.lower() in TITLES)


__all__ = ["split_sentences"]
