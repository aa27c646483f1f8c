"""Input: seqio task registration and the batch iterator (pipeline), tokenization into
model features (features, vocab), examples and their ids (examples), and the readers of
text files with file:line errors (text_files, tsv). Each dataset's reader is in sources/."""
