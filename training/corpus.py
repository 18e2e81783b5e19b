"""The embedded, offline training text: English <-> Spanish Bible verse pairs and English verses.

Both come from public-domain Bibles, the World English Bible (2020) and the Reina-Valera 1909 (see
`corpus/LICENSE.md`), and are rebuilt by `corpus/build_corpus.py`. Splits are whole books, so that
near-duplicate verses (the synoptic gospels, Kings and Chronicles) cannot leak between them:

- validation: Ruth, Jonah, Titus;
- test: Esther (with the Greek Esther), Philemon, Jude;
- train: every other book.

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
