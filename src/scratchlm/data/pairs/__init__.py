"""Parallel sentence pairs for translation, one module a job: read.py reads them (every
format, the split files of a dataset directory), prepare.py tokenizes them into a pairs data
directory, batch.py draws length-bucketed batches from it.

    scratchlm prepare datasets/en-fr --out data/en-fr --tokenizer bpe --vocab-size 8000
    scratchlm prepare pairs.tsv --format pairs --out data/mine --max-len 128
    scratchlm prepare --src-file train.en --tgt-file train.fr --out data/mine
"""

from scratchlm.data.pairs.batch import PairData
from scratchlm.data.pairs.prepare import prepare_pairs
from scratchlm.data.pairs.read import (
    BAD_POLICIES,
    EMPTY_POLICIES,
    LONG_POLICIES,
    Pair,
    PairSet,
    is_pairs_dataset,
    is_pairs_dir,
    load_splits,
    read_pair_files,
    read_pairs,
)

__all__ = ["BAD_POLICIES", "EMPTY_POLICIES", "LONG_POLICIES", "Pair", "PairData", "PairSet",
           "is_pairs_dataset", "is_pairs_dir", "load_splits", "prepare_pairs", "read_pair_files",
           "read_pairs"]
