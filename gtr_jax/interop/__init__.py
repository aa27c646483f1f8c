"""Other stacks' formats: Hugging Face T5 weights in and out (hf_weights), exports for
sentence-transformers and a JAX-only serving bundle (export), and the loader serving
stacks import (serving)."""
