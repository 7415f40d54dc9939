"""Data: corpora to fetch, token files for pretraining, and batches drawn from them."""
