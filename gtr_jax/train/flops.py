"""Model FLOPs of a train or encode step, counted from the model's shapes: what MFU divides by.

Matmuls only, multiply-add = 2 FLOPs; norms, softmax, dropout, pooling and other elementwise
work are left out, and so are the forward passes that rematerialization and GradCache
recompute (MFU counts the model's work, not the program's; XLA's cost analysis counts both).
The token embedding is a gather, no FLOPs. For an encoder of `layers` layers:

  P_layer  = 4·d_model·heads·d_kv (query, key, value, out)
             + 3·d_model·d_ff (gated-GELU: wi_0, wi_1, wo) or 2·d_model·d_ff (ReLU: wi, wo)
  forward(n sequences of L tokens)
           = n · ( layers · (2·P_layer·L + 4·heads·d_kv·L²) + 2·d_model·embed_dim )

the L² term being the attention scores q·kᵀ and the weighted sum of the values, the last
one the projection of each pooled sequence. A train step over a global batch B with K hard
negatives per example, query length Lq and document length Ld:

  3 · ( forward(B, Lq) + forward(B·(1+K), Ld) )          backward = 2 × forward: 6·P·tokens
  + Σ over the loss's similarity matmuls of 2·B·M·embed_dim (×3 where the gradient flows):
      queries · pool (M = B·(1+K)), always;
      queries · queries (M = B), SamToNe on the query side ('query', 'both');
      positives · pool (M = B·(1+K)), SamToNe on the doc side ('doc', 'both') or PAIR;
      positives · queries (M = B), always: the p→q loss when bidirectional, else only its
      metrics (forward only).

An encode step is forward(B, L) of one tower. Each tower's parameters see only its own
tokens, so SDE, ADE and ADE-SPL count the same.
"""

from gtr_jax.losses import LossConfig
from gtr_jax.model.dual_encoder import ModelConfig


def layer_matmul_params(model_config: ModelConfig) -> int:
    """P_layer: the matmul parameters of one encoder layer."""
    encoder = model_config.encoder
    feed_forward = 3 if encoder.feed_forward == "gated-gelu" else 2
    return 4 * encoder.d_model * encoder.num_heads * encoder.d_kv + feed_forward * encoder.d_model * encoder.d_ff


def forward_flops(model_config: ModelConfig, sequences: int, length: int) -> int:
    """FLOPs of one tower's forward pass over `sequences` sequences of `length` tokens."""
    encoder = model_config.encoder
    attention = 4 * encoder.num_heads * encoder.d_kv * length**2
    per_sequence = (encoder.num_layers * (2 * layer_matmul_params(model_config) * length + attention)
                    + 2 * encoder.d_model * model_config.embed_dim)
    return sequences * per_sequence


def loss_flops(model_config: ModelConfig, batch_size: int, num_negatives: int, loss: LossConfig | None) -> int:
    """FLOPs of the loss's similarity matmuls in a train step, backward included (module docstring)."""
    loss = loss or LossConfig()
    pool = batch_size * (1 + num_negatives)
    matmul = lambda candidates: 2 * batch_size * candidates * model_config.embed_dim  # noqa: E731
    with_gradient = matmul(pool)
    if loss.same_tower in ("query", "both"):
        with_gradient += matmul(batch_size)
    if loss.same_tower in ("doc", "both") or loss.pair_alpha is not None:
        with_gradient += matmul(pool)
    if loss.bidirectional:
        return 3 * (with_gradient + matmul(batch_size))
    return 3 * with_gradient + matmul(batch_size)


def train_step_flops(model_config: ModelConfig, batch_size: int, lengths: dict, num_negatives: int = 0,
                     loss: LossConfig | None = None) -> int:
    """Model FLOPs of one train step over the global batch (all devices together)."""
    towers = (forward_flops(model_config, batch_size, lengths["query"])
              + forward_flops(model_config, batch_size * (1 + num_negatives), lengths["doc"]))
    return 3 * towers + loss_flops(model_config, batch_size, num_negatives, loss)


def encode_step_flops(model_config: ModelConfig, batch_size: int, length: int) -> int:
    """Model FLOPs of one encode step: `batch_size` sequences of `length` tokens through one tower."""
    return forward_flops(model_config, batch_size, length)
