"""Readers of each dataset's official files: MS MARCO, MultiReQA, BEIR, and the embedded
offline demo built from the standard library's docstrings."""
