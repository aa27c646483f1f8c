"""Build the demo SentencePiece model from the demo task's training texts, reproducibly.

    python -m gtr_jax.cli.build_vocab [--output gtr_jax/data/sources/assets/demo_spm.model]

A unigram model with T5's special ids (pad 0, EOS 1, unk 2, no BOS), trained on one
thread with a pinned seed on a fixed list of texts, so the same Python gives the same
bytes. The demo texts come from the installed standard library: the committed
gtr_jax/data/sources/assets/demo_spm.model was built on Python 3.11.7. Tests and the demo use the
committed file; nothing downloads T5's vocabulary.
"""

import io

import sentencepiece

VOCAB_SIZE = 4000
SEED = 20240917


def build(texts: list[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """The serialized SentencePiece model trained on texts."""
    sentencepiece.set_random_generator_seed(SEED)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        max_sentence_length=16384,
        minloglevel=2,
    )
    return model.getvalue()
