"""The embedded, offline training text: English <-> Spanish Bible verse pairs and English verses.

Both come from public-domain Bibles, the World English Bible (2020) and the Reina-Valera 1909 (see
`corpus/LICENSE.md`), and are rebuilt by `corpus/build_corpus.py`. Splits are whole books, assigned by a rule
fixed before any model was scored on them (`build_corpus.book_splits`):

- the near-duplicate families, whose books repeat whole verses nearly word for word (Samuel, Kings and Chronicles;
  the synoptic gospels Matthew, Mark and Luke), are train, so that no verse leaks from train into evaluation;
- within each testament, the other books are numbered in canonical order from 1; every 7th is test, and the book
  after every other test book (numbers 8, 22, 36, ...) is validation;
- deuterocanonical books (English only) are train, except the additions to a held-out book, which follow it.

So validation is Ruth, Hosea, Philippians and III John (385 pairs); test is Judges, Proverbs, Daniel, Nahum,
Ephesians, Titus and II John (2,148 pairs: narrative, wisdom, prophecy and letters from both testaments); train is
every other book (28,330 pairs). Smaller parallels remain across the split (Judges 1:11-15 retells Joshua 15:15-19;
Ephesians and Colossians share a few verses nearly word for word).

`id` is the OSIS verse reference ("Gen.1.1"), `book` the book's name ("I Samuel"), `testament` one of "old",
"new" and "deuterocanon" (English only), e.g. a label for a verse classifier.

The English corpus serves masked- and causal-LM pretraining: its `train` split holds no validation or test
book, so a pretrained encoder or decoder has never seen a sentence that translation is evaluated on. Its
`validation` split holds the English verses of the validation books, for perplexity; the test books are not
stored in it at all.
"""

import io
import lzma
from pathlib import Path

import pyarrow.compute
import pyarrow.json
from datasets import Dataset, DatasetDict

CORPUS_DIR = Path(__file__).with_name("corpus")
PARALLEL_PATH = CORPUS_DIR / "parallel_en_es.jsonl.xz"
ENGLISH_PATH = CORPUS_DIR / "english.jsonl.xz"
PARALLEL_COLUMNS = ["id", "book", "testament", "en", "es"]
ENGLISH_COLUMNS = ["id", "book", "testament", "text"]


def read_jsonl_xz(path: Path) -> pyarrow.Table:
    """An xz-compressed JSON-lines file as an Arrow table (parsed by Arrow: several times faster than `json`)."""
    return pyarrow.json.read_json(io.BytesIO(lzma.decompress(path.read_bytes())))


def group_by_split(table: pyarrow.Table, columns: list[str], splits: tuple[str, ...]) -> DatasetDict:
    """One Dataset per value of the `split` column, rows kept in canonical Bible order."""
    return DatasetDict({
        split: Dataset(table.filter(pyarrow.compute.equal(table["split"], split)).select(columns)) for split in splits
    })


def load_parallel_corpus() -> DatasetDict:
    """English -> Spanish verse pairs: splits train/validation/test, columns id, book, testament, en, es."""
    return group_by_split(read_jsonl_xz(PARALLEL_PATH), PARALLEL_COLUMNS, ("train", "validation", "test"))


def load_english_corpus() -> DatasetDict:
    """English verses for LM pretraining: splits train/validation, columns id, book, testament, text."""
    return group_by_split(read_jsonl_xz(ENGLISH_PATH), ENGLISH_COLUMNS, ("train", "validation"))
