"""SentencePiece tokenization the T5 way: pieces, then EOS; 0 is padding.

T5's public vocabulary (cc_all.32000: 32,000 pieces; the model's embedding has 32,128
rows, the last 100 ids being sentinels that retrieval never produces) is the default.
Any `.model` file, local or gs:// (read through `text_files.read_bytes`), works; tests
and the demo use a small one the project builds.
"""

import functools
import os

import gin
import numpy as np
import sentencepiece

from gtr_jax.errors import UserError
from gtr_jax.data.text_files import read_bytes

T5_VOCABULARY = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
PAD_ID, EOS_ID = 0, 1


@gin.configurable
class Tokenizer:
    """Texts to T5 token ids: SentencePiece pieces truncated to max_length - 1, then EOS."""

    def __init__(self, path: str = T5_VOCABULARY):
        self.path = path
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(read_bytes(path))
        except RuntimeError as e:
            raise UserError(f"{path}: not a SentencePiece model ({e})") from None
        if self._processor.pad_id() != PAD_ID or self._processor.eos_id() != EOS_ID:
            raise UserError(
                f"{path}: T5 needs pad id {PAD_ID} and EOS id {EOS_ID}; this model has "
                f"pad {self._processor.pad_id()} and EOS {self._processor.eos_id()}"
            )

    @property
    def vocab_size(self) -> int:
        """Number of SentencePiece pieces (the model's embedding may have more rows)."""
        return self._processor.get_piece_size()

    @property
    def unk_id(self) -> int:
        """Id of pieces the model does not know."""
        return self._processor.unk_id()

    def pieces(self, texts: list[str]) -> list[list[int]]:
        """SentencePiece ids of each text, without EOS or truncation."""
        return self._processor.encode(list(texts))

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, EOS-terminated and at most max_length long."""
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        return [ids[: max_length - 1] + [EOS_ID] for ids in self._processor.encode(list(texts))]

    def decode(self, ids) -> str:
        """Text of token ids, stopping at the first EOS or padding."""
        ids = list(ids)
        for stop in (EOS_ID, PAD_ID):
            if stop in ids:
                ids = ids[: ids.index(stop)]
        return self._processor.decode(ids)


def configured_path() -> str:
    """The vocabulary a bare Tokenizer() would load: gin's `Tokenizer.path`, else T5's."""
    return gin.get_bindings(Tokenizer).get("path", T5_VOCABULARY)


@functools.lru_cache(maxsize=8)
def shared_tokenizer(path: str) -> Tokenizer:
    """One Tokenizer per path for the whole process (data pipelines ask for it per batch)."""
    return Tokenizer(path)


def pad_batch(token_lists: list[list[int]], length: int, rows: int | None = None) -> np.ndarray:
    """int32 [rows, length] with each list left-aligned and padding zeros after it."""
    out = np.zeros((rows or len(token_lists), length), np.int32)
    for i, ids in enumerate(token_lists):
        out[i, : len(ids)] = ids
    return out


def model_dir_vocabulary(model_dir: str) -> str:
    """Where a model directory keeps its own copy of the vocabulary."""
    return os.path.join(model_dir, "spiece.model")
