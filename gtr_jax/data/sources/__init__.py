"""Readers of each dataset's official files: MS MARCO, MultiReQA, BEIR, users' own JSONL
training pairs (jsonl_pairs), and the embedded offline demo built from the standard
library's docstrings."""
