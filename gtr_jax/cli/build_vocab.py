"""`python -m gtr_jax.cli.build_vocab`: rebuild the demo SentencePiece model (gtr_jax.data.build_vocab)."""

import argparse

from gtr_jax.data import build_vocab
from gtr_jax.data.sources import demo


def main(argv=None):
    """Write the demo vocabulary (default: the package's committed copy)."""
    parser = argparse.ArgumentParser(description=build_vocab.__doc__.splitlines()[0])
    parser.add_argument("--output", default=demo.DEMO_VOCABULARY)
    args = parser.parse_args(argv)
    texts = demo.texts("train")
    with open(args.output, "wb") as f:
        f.write(build_vocab.build(texts))
    print(f"wrote a {build_vocab.VOCAB_SIZE}-piece SentencePiece model trained on {len(texts)} demo texts to {args.output}")


if __name__ == "__main__":
    main()
