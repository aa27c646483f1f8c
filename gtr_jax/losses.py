"""Contrastive losses for dual encoders, exact over the global batch.

Notation: B is the *global* batch, (q_i, p_i) the i-th query and its positive passage, s(x, y) the
dot product of embeddings (cosine for L2-normalized towers), τ the temperature, and P the doc pool:
every positive p_j plus every hard negative n_{j,k} of every query (hard negatives join the pool of
all queries). The formulas, literally:

In-batch softmax, query side (q→p)::

    L_q = −1/B Σ_i log( e^{s(q_i,p_i)/τ} / Σ_{x∈P} e^{s(q_i,x)/τ} )

SamToNe, query side (``same_tower='query'``): the q→p denominator also gets Σ_{j≠i} e^{s(q_i,q_j)/τ}.

Doc side (p→q, only with ``bidirectional=True``)::

    L_p = −1/B Σ_i log( e^{s(p_i,q_i)/τ} / Σ_j e^{s(p_i,q_j)/τ} )

SamToNe, doc side (``same_tower='doc'``): the p→q denominator also gets Σ_{x∈P, x≠p_i} e^{s(p_i,x)/τ}.
``same_tower='both'`` adds both terms.

Bidirectional: L = L_q + L_p (``bidirectional_reduce='sum'``, the default: t5x_retrieval's choice,
so the paper's learning rate means the same gradient scale) or (L_q + L_p)/2 (``'mean'``).

PAIR (Ren et al. 2021, ``pair_alpha=α``) replaces the query-side term by (1−α)·L_q + α·L_P with the
passage-centric::

    L_P = −1/B Σ_i log( e^{s(q_i,p_i)/τ} / ( e^{s(q_i,p_i)/τ} + Σ_{x∈P, x≠p_i} e^{s(p_i,x)/τ} ) )

Duplicates (mask_duplicates=True). A query is "the same" as another when their ids are equal; docs
likewise (hard negatives are compared with the positives' ids). Without ids, identical token rows
are the same item; without either, every row is distinct. A doc x is a *known positive* of q_i when
some batch row k has id(q_k) = id(q_i) and id(p_k) = id(x). Then every sum above runs only over
negatives: for q_i, docs that are not its known positives and queries with another id; for p_i,
queries q_j with no row pairing id(q_j) with id(p_i), and docs with another id. The own positive
stays in its denominator. This removes the e^{1/τ} terms that duplicated queries or passages would
otherwise contribute (the paper's §6), and extra positives of a query (the same query on two rows,
or the same passage under another row's hard negatives) are no longer pushed away.

Across devices, ``sharded_contrastive_loss`` runs the same code under ``jax.shard_map``: each
device gathers the global embeddings over the ``data`` axis but keeps only its own b_local rows of
logits (b_local × |P| instead of B × |P|); loss sums are psum-med and divided by B, so the value and
the gradients (all_gather transposes to a reduce-scatter) equal the single-device computation.
"""

import functools

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

SAME_TOWER_CHOICES = (None, "query", "doc", "both")

# Array-valued arguments of `contrastive_loss` that are split over the batch axis under shard_map.
_BATCH_ARGS = (
    "hard_neg_emb",
    "query_ids",
    "doc_ids",
    "hard_neg_ids",
    "query_tokens",
    "doc_tokens",
    "hard_neg_tokens",
)


@gin.configurable
def temperature_from_log(log_temperature, min_temperature=1e-3, max_temperature=1.0):
    """τ = exp(log_temperature), clipped to [min_temperature, max_temperature].

    The trainer owns `log_temperature` as a learnable parameter: the log scale keeps τ positive
    and makes its updates relative. The clip (CLIP clips its logit scale 1/τ at 100 the same way)
    stops a learned τ from running to 0, where the softmax becomes a hard max; applied in log
    space, it gives zero gradient outside the range.
    """
    low, high = jnp.log(min_temperature), jnp.log(max_temperature)
    return jnp.exp(jnp.clip(log_temperature, low, high))


def _first_match(keys, ref_keys, fill):
    """Index of the first row of `ref_keys` equal to each row of `keys`, or `fill` where none is."""
    eq = jnp.all(keys[:, None, :] == ref_keys[None, :, :], axis=-1)
    return jnp.where(eq.any(axis=1), jnp.argmax(eq, axis=1), fill)


def _known_positive(anchor, anchor_all, partner_all, num_items):
    """known[i, c]: some batch row k has anchor_all[k] == anchor[i] and partner_all[k] == c.

    Items are canonical indices (first batch row with the same id); column `num_items` is the
    sentinel for hard negatives that match no positive, and is never known.
    """
    same = (anchor[:, None] == anchor_all[None, :]).astype(jnp.int8)
    known = jax.ops.segment_max(same.T, partner_all, num_segments=num_items + 1)
    return known.T > 0


def _logsumexp(blocks):
    """log Σ exp over the valid entries of [b, n] (logits, valid) blocks, without concatenating.

    Masked entries go through exp(−inf) = 0, so neither the value nor the gradient sees them
    (a where() after exp would leak NaN gradients from overflowing masked logits).
    """
    maxes = [jnp.max(jnp.where(v, x, -jnp.inf), axis=1, initial=-jnp.inf) for x, v in blocks]
    m = jax.lax.stop_gradient(functools.reduce(jnp.maximum, maxes))
    total = sum(jnp.sum(jnp.exp(jnp.where(v, x - m[:, None], -jnp.inf)), axis=1) for x, v in blocks)
    return m + jnp.log(total)


def _keys(ids, tokens):
    """[b, m] rows to compare for identity: ids (m = 1) or, without ids, token rows."""
    if ids is not None:
        return jnp.asarray(ids).reshape(-1, 1), "ids"
    if tokens is not None:
        return jnp.asarray(tokens), "tokens"
    return None, None


def _hard_neg_keys(hard_neg_ids, hard_neg_tokens, doc_kind):
    """Flattened [b*K, m] keys of the hard negatives, of the same kind as the doc keys."""
    given = {"ids": hard_neg_ids, "tokens": hard_neg_tokens}
    if doc_kind is None:
        if hard_neg_ids is not None or hard_neg_tokens is not None:
            raise ValueError("hard_neg_ids/hard_neg_tokens need doc_ids/doc_tokens to compare with")
        return None
    key = given[doc_kind]
    if key is None:
        other = given["tokens" if doc_kind == "ids" else "ids"]
        if other is not None:
            raise ValueError(f"docs are identified by {doc_kind}: pass hard_neg_{doc_kind} as well")
        return None
    b, k = key.shape[:2]
    return jnp.asarray(key).reshape(b * k, -1)


@gin.configurable
def contrastive_loss(
    query_emb,
    doc_emb,
    *,
    temperature,
    same_tower=None,
    bidirectional=False,
    bidirectional_reduce="sum",
    pair_alpha=None,
    hard_neg_emb=None,
    query_ids=None,
    doc_ids=None,
    hard_neg_ids=None,
    query_tokens=None,
    doc_tokens=None,
    hard_neg_tokens=None,
    mask_duplicates=True,
    axis_name=None,
):
    """In-batch softmax / SamToNe / PAIR contrastive loss; formulas in the module docstring.

    Args:
      query_emb: [B, D] query embeddings (L2-normalized for cosine similarity).
      doc_emb: [B, D] embeddings of each query's positive passage.
      temperature: τ, a float or a traced scalar (see `temperature_from_log`).
      same_tower: None, 'query', 'doc' or 'both': which SamToNe same-tower terms to add.
        'doc' and 'both' act on the p→q direction and need `bidirectional=True`.
      bidirectional: add the p→q loss to the q→p loss.
      bidirectional_reduce: 'sum' (t5x_retrieval's scale) or 'mean' of the two directions.
      pair_alpha: α of the PAIR loss; None disables it.
      hard_neg_emb: optional [B, K, D] hard negatives (K per query), added to every query's pool.
      query_ids, doc_ids: optional [B] int ids; equal ids mean the same query / passage.
      hard_neg_ids: optional [B, K] ids of the hard negatives, in the same id space as doc_ids.
      query_tokens, doc_tokens, hard_neg_tokens: [B, L] / [B, K, L] token ids, used for identity
        (identical rows are the same item) where the corresponding ids are not given. Comparing
        tokens costs O(b_local·B·L); prefer ids from the data pipeline for large batches.
      mask_duplicates: drop negatives that are the same item as, or a known positive of, the anchor.
        Without ids or tokens there is nothing to mask.
      axis_name: set when called inside shard_map/pmap with the batch split over this axis: the
        inputs are then this device's rows, and negatives come from the whole axis.

    Returns:
      (loss, metrics): a scalar, and a dict of scalars: the loss parts (`loss_q2p`, and
      `loss_p2q` / `loss_pair` when used), top-1 accuracy of the positive against all valid
      negatives both ways (`acc_q2p`, `acc_p2q`), mean positive similarity (`sim_pos`), mean over
      queries of the hardest valid negative's similarity in the pool (`sim_hardest_neg`), and
      `qq_qp_ratio` = mean_{i≠j} s(q_i,q_j) / mean_{i≠j} s(q_i,p_j), the paper's §4.2 statistic.
    """
    if same_tower not in SAME_TOWER_CHOICES:
        raise ValueError(f"same_tower must be one of {SAME_TOWER_CHOICES}, got {same_tower!r}")
    if same_tower in ("doc", "both") and not bidirectional:
        raise ValueError(f"same_tower={same_tower!r} adds to the p→q loss: set bidirectional=True")
    if bidirectional_reduce not in ("sum", "mean"):
        raise ValueError(f"bidirectional_reduce must be 'sum' or 'mean', got {bidirectional_reduce!r}")

    # float32 at least: at τ = 0.01 a bfloat16 similarity error of 4e-3 moves a logit by 0.4.
    dtype = jnp.promote_types(jnp.asarray(query_emb).dtype, jnp.float32)
    q, d = jnp.asarray(query_emb, dtype), jnp.asarray(doc_emb, dtype)
    h = None if hard_neg_emb is None else jnp.asarray(hard_neg_emb, dtype)
    tau = jnp.asarray(temperature, dtype)

    if axis_name is None:
        gather, total = (lambda x: x), (lambda x: x)
        offset = 0
    else:
        gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
        total = functools.partial(jax.lax.psum, axis_name=axis_name)
        offset = jax.lax.axis_index(axis_name) * q.shape[0]

    b = q.shape[0]
    q_all, d_all = gather(q), gather(d)
    B = q_all.shape[0]
    rows = offset + jnp.arange(b)
    pool = d_all if h is None else jnp.concatenate([d_all, gather(h).reshape(-1, d.shape[1])])

    # Canonical item index of every row: the first batch row with the same id. Without ids (or
    # with masking off) that is the row itself, which turns every mask below into "not self".
    q_key, _ = _keys(query_ids, query_tokens)
    d_key, d_kind = _keys(doc_ids, doc_tokens)
    h_key = None if h is None else _hard_neg_keys(hard_neg_ids, hard_neg_tokens, d_kind)
    if not mask_duplicates:
        q_key = d_key = h_key = None

    def canonical(key):
        if key is None:
            return rows, jnp.arange(B)
        local = _first_match(key, gather(key), B)
        return local, gather(local)

    qc, qc_all = canonical(q_key)
    dc, dc_all = canonical(d_key)
    pool_c = dc_all
    if h is not None:
        n_hard = pool.shape[0] - B
        hc_all = (
            jnp.full((n_hard,), B) if h_key is None else gather(_first_match(h_key, gather(d_key), B))
        )
        pool_c = jnp.concatenate([dc_all, hc_all])

    def sim(x, y):
        # HIGHEST: TPU's default bf16 passes would lose the precision the 1/τ scale amplifies.
        return jnp.einsum("id,jd->ij", x, y, precision=jax.lax.Precision.HIGHEST)

    def mean(x):
        return total(jnp.sum(x)) / B

    own_pool = jnp.arange(pool.shape[0])[None, :] == rows[:, None]
    own_q = jnp.arange(B)[None, :] == rows[:, None]

    # q→p over the pool, plus the same-tower q→q term.
    s_qd = sim(q, pool)
    pos = jnp.take_along_axis(s_qd, rows[:, None], axis=1)[:, 0]
    neg_qd = ~_known_positive(qc, qc_all, dc_all, B)[:, pool_c]
    blocks = [(s_qd / tau, neg_qd | own_pool)]
    if same_tower in ("query", "both"):
        blocks.append((sim(q, q_all) / tau, qc[:, None] != qc_all[None, :]))
    loss_q = mean(_logsumexp(blocks) - pos / tau)
    metrics = {"loss_q2p": loss_q}

    # Same-tower doc negatives: the pool without the anchor passage and its duplicates.
    needs_pp = pair_alpha is not None or same_tower in ("doc", "both")
    s_pp = sim(d, pool) / tau if needs_pp else None
    neg_pp = pool_c[None, :] != dc[:, None]

    loss = loss_q
    if pair_alpha is not None:
        pos_block = ((pos / tau)[:, None], jnp.ones((b, 1), bool))
        loss_pair = mean(_logsumexp([pos_block, (s_pp, neg_pp)]) - pos / tau)
        metrics["loss_pair"] = loss_pair
        loss = (1.0 - pair_alpha) * loss_q + pair_alpha * loss_pair

    # p→q: p_i ranks the queries; the queries paired with p_i's id are its positives.
    s_pq = sim(d, q_all)
    valid_pq = ~_known_positive(dc, dc_all, qc_all, B)[:, qc_all] | own_q
    pos_pq = jnp.take_along_axis(s_pq, rows[:, None], axis=1)[:, 0]
    if bidirectional:
        blocks = [(s_pq / tau, valid_pq)]
        if same_tower in ("doc", "both"):
            blocks.append((s_pp, neg_pp))
        loss_p = mean(_logsumexp(blocks) - pos_pq / tau)
        metrics["loss_p2q"] = loss_p
        loss = loss + loss_p if bidirectional_reduce == "sum" else (loss + loss_p) / 2

    metrics.update(
        _similarity_metrics(q, d, s_qd, pos, neg_qd & ~own_pool, s_pq, pos_pq, valid_pq & ~own_q,
                            total, B)
    )
    metrics["temperature"] = tau
    metrics["loss"] = loss
    return loss, metrics


def _similarity_metrics(q, d, s_qd, pos, neg_qd, s_pq, pos_pq, neg_pq, total, B):
    """Accuracy and similarity statistics; global means via `total` (psum or identity)."""
    q, d, s_qd, pos, s_pq, pos_pq = jax.lax.stop_gradient((q, d, s_qd, pos, s_pq, pos_pq))
    hardest = jnp.max(jnp.where(neg_qd, s_qd, -jnp.inf), axis=1, initial=-jnp.inf)
    hardest_pq = jnp.max(jnp.where(neg_pq, s_pq, -jnp.inf), axis=1, initial=-jnp.inf)
    has_neg = neg_qd.any(axis=1)
    # Off-diagonal means in closed form: Σ_{i≠j} x_i·y_j = (Σx)·(Σy) − Σ_i x_i·y_i, O(B·D).
    sum_q, sum_d = total(q.sum(axis=0)), total(d.sum(axis=0))
    qq_off = jnp.dot(sum_q, sum_q) - total(jnp.sum(q * q))
    qp_off = jnp.dot(sum_q, sum_d) - total(jnp.sum(pos))
    return {
        "acc_q2p": total(jnp.sum(pos > hardest)) / B,
        "acc_p2q": total(jnp.sum(pos_pq > hardest_pq)) / B,
        "sim_pos": total(jnp.sum(pos)) / B,
        "sim_hardest_neg": total(jnp.sum(jnp.where(has_neg, hardest, 0.0)))
        / jnp.maximum(total(jnp.sum(has_neg)), 1),
        "qq_qp_ratio": qq_off / qp_off,
    }


def sharded_contrastive_loss(mesh, query_emb, doc_emb, *, temperature, axis_name="data", **kwargs):
    """`contrastive_loss` over the global batch, with the batch split over `axis_name` of `mesh`.

    Each device gathers the embeddings of the whole batch (all_gather over `axis_name`) and
    computes only its own rows of logits, so logits memory per device is b_local × B_global.
    Other mesh axes (e.g. 'model') hold replicas. Loss, metrics and gradients with respect to all
    embeddings and the temperature equal the single-device `contrastive_loss` on the same global
    arrays. The global batch must divide evenly over `axis_name`.

    Args:
      mesh: a `jax.sharding.Mesh` with an axis named `axis_name`.
      query_emb, doc_emb, temperature, **kwargs: as for `contrastive_loss` (global arrays).
      axis_name: the mesh axis the batch is split over.

    Returns:
      (loss, metrics), replicated on every device.
    """
    arrays = {k: kwargs.pop(k) for k in _BATCH_ARGS if kwargs.get(k) is not None}

    def per_device(q, d, tau, arrays):
        return contrastive_loss(q, d, temperature=tau, axis_name=axis_name, **arrays, **kwargs)

    fn = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(axis_name), P(axis_name), P(), P(axis_name)),
        out_specs=P(),
        check_vma=True,
    )
    return fn(query_emb, doc_emb, jnp.asarray(temperature), arrays)
