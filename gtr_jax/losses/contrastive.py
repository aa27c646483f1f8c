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

The options (same_tower, bidirectional, bidirectional_reduce, pair_alpha, mask_duplicates) are
the fields of ``LossConfig``, which gin files bind and which checks them before training starts.

Across devices, ``sharded_contrastive_loss`` runs the same code under ``jax.shard_map``: each
device gathers the global embeddings over the ``data`` axis but keeps only its own b_local rows of
logits (b_local × |P| instead of B × |P|); loss sums are psum-med and divided by B, so the value and
the gradients (all_gather transposes to a reduce-scatter) equal the single-device computation.
"""

import functools
from typing import Callable, NamedTuple

import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gtr_jax.losses.config import check_options
from gtr_jax.train.partitioning import DATA

# Array-valued arguments of `contrastive_loss` that are split over the batch axis under shard_map.
_BATCH_ARGS = ("hard_neg_emb", "query_ids", "doc_ids", "hard_neg_ids", "query_tokens", "doc_tokens",
               "hard_neg_tokens")


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


class _Batch(NamedTuple):
    """This device's rows and the global batch they belong to (everything, on one device)."""

    q: jax.Array  # [b, D] this device's queries
    d: jax.Array  # [b, D] their positives
    q_all: jax.Array  # [B, D] every query of the batch
    pool: jax.Array  # [|P|, D] the doc pool: every positive, then every hard negative
    rows: jax.Array  # [b] global batch index of each local row
    size: int  # B, the global batch size
    gather: Callable  # all_gather over the batch axis, tiled (identity on one device)
    total: Callable  # psum over the batch axis (identity on one device)

    def mean(self, x):
        """Σ over the global batch of the per-row values x, divided by B."""
        return self.total(jnp.sum(x)) / self.size


class _Items(NamedTuple):
    """Canonical item index (first batch row with the same identity) of every row."""

    q: jax.Array  # [b] of this device's queries
    q_all: jax.Array  # [B] of every query
    d: jax.Array  # [b] of this device's positives
    d_all: jax.Array  # [B] of every positive
    pool: jax.Array  # [|P|] of the pool; B for hard negatives that match no positive


class _Masks(NamedTuple):
    """Which entries of each similarity block are negatives (never the row's own positive)."""

    qd: jax.Array  # [b, |P|] docs that are not known positives of q_i
    qq: jax.Array  # [b, B] queries with another identity than q_i
    pp: jax.Array  # [b, |P|] docs with another identity than p_i
    pq: jax.Array  # [b, B] queries that no row pairs with p_i's identity
    own_pool: jax.Array  # [b, |P|] the own positive p_i
    own_q: jax.Array  # [b, B] the own query q_i


class _Similarities(NamedTuple):
    """Dot products of this device's rows (not divided by τ)."""

    qd: jax.Array  # [b, |P|] s(q_i, x) over the pool
    pos: jax.Array  # [b] s(q_i, p_i)
    pq: jax.Array  # [b, B] s(p_i, q_j)
    pos_pq: jax.Array  # [b] s(p_i, q_i), from the p→q block


def _sim(x, y):
    """[n, m] dot products of the rows of x and y."""
    # HIGHEST: TPU's default bf16 passes would lose the precision the 1/τ scale amplifies.
    return jnp.einsum("id,jd->ij", x, y, precision=jax.lax.Precision.HIGHEST)


def _gather_batch(q, d, h, axis_name):
    """The collectives: all_gather the queries, positives and hard negatives over `axis_name`."""
    if axis_name is None:
        gather, total = (lambda x: x), (lambda x: x)
        offset = 0
    else:
        gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
        total = functools.partial(jax.lax.psum, axis_name=axis_name)
        offset = jax.lax.axis_index(axis_name) * q.shape[0]
    q_all, d_all = gather(q), gather(d)
    pool = d_all if h is None else jnp.concatenate([d_all, gather(h).reshape(-1, d.shape[1])])
    return _Batch(q, d, q_all, pool, offset + jnp.arange(q.shape[0]), q_all.shape[0], gather, total)


def _canonical_items(batch, identity, *, hard_negs, mask_duplicates):
    """Each row's item: the first batch row with the same id (or token row) as it.

    `identity` holds contrastive_loss's six id/token arguments. Without ids or tokens (or with
    masking off) a row's item is the row itself, which turns every mask into "not self".
    """
    q_key, _ = _keys(identity["query_ids"], identity["query_tokens"])
    d_key, d_kind = _keys(identity["doc_ids"], identity["doc_tokens"])
    h_key = _hard_neg_keys(identity["hard_neg_ids"], identity["hard_neg_tokens"], d_kind) if hard_negs else None
    if not mask_duplicates:
        q_key = d_key = h_key = None
    B = batch.size

    def canonical(key):
        if key is None:
            return batch.rows, jnp.arange(B)
        local = _first_match(key, batch.gather(key), B)
        return local, batch.gather(local)

    qc, qc_all = canonical(q_key)
    dc, dc_all = canonical(d_key)
    pool_c = dc_all
    if hard_negs:
        n_hard = batch.pool.shape[0] - B
        hc_all = (
            jnp.full((n_hard,), B) if h_key is None else batch.gather(_first_match(h_key, batch.gather(d_key), B))
        )
        pool_c = jnp.concatenate([dc_all, hc_all])
    return _Items(qc, qc_all, dc, dc_all, pool_c)


def _masks(batch, items):
    """The negatives of each anchor, from the canonical items ("Duplicates" in the module docstring)."""
    B = batch.size
    own_pool = jnp.arange(batch.pool.shape[0])[None, :] == batch.rows[:, None]
    own_q = jnp.arange(B)[None, :] == batch.rows[:, None]
    return _Masks(
        qd=~_known_positive(items.q, items.q_all, items.d_all, B)[:, items.pool] & ~own_pool,
        qq=items.q[:, None] != items.q_all[None, :],
        pp=items.pool[None, :] != items.d[:, None],
        pq=~_known_positive(items.d, items.d_all, items.q_all, B)[:, items.q_all] & ~own_q,
        own_pool=own_pool,
        own_q=own_q,
    )


def _query_term(batch, s_qd, pos, masks, tau, same_tower):
    """L_q: q→p over the pool, plus the SamToNe q→q block for same_tower 'query' / 'both'."""
    blocks = [(s_qd / tau, masks.qd | masks.own_pool)]
    if same_tower in ("query", "both"):
        blocks.append((_sim(batch.q, batch.q_all) / tau, masks.qq))
    return batch.mean(_logsumexp(blocks) - pos / tau)


def _pair_term(batch, pos, masks, tau, s_pp):
    """L_P of PAIR: the positive against the anchor passage's own negatives in the pool."""
    pos_block = ((pos / tau)[:, None], jnp.ones((batch.q.shape[0], 1), bool))
    return batch.mean(_logsumexp([pos_block, (s_pp, masks.pp)]) - pos / tau)


def _doc_term(batch, sims, masks, tau, same_tower, s_pp):
    """L_p: p→q over the queries, plus the SamToNe p→pool block for same_tower 'doc' / 'both'."""
    blocks = [(sims.pq / tau, masks.pq | masks.own_q)]
    if same_tower in ("doc", "both"):
        blocks.append((s_pp, masks.pp))
    return batch.mean(_logsumexp(blocks) - sims.pos_pq / tau)


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
      same_tower, bidirectional, bidirectional_reduce, pair_alpha, mask_duplicates: the loss
        options, documented on `LossConfig` (pass `**LossConfig(...).options()`); a bad one raises
        `LossOptionError`, a ValueError.
      hard_neg_emb: optional [B, K, D] hard negatives (K per query), added to every query's pool.
      query_ids, doc_ids: optional [B] int ids; equal ids mean the same query / passage.
      hard_neg_ids: optional [B, K] ids of the hard negatives, in the same id space as doc_ids.
      query_tokens, doc_tokens, hard_neg_tokens: [B, L] / [B, K, L] token ids, used for identity
        (identical rows are the same item) where the corresponding ids are not given. Comparing
        tokens costs O(b_local·B·L); prefer ids from the data pipeline for large batches.
      axis_name: set when called inside shard_map/pmap with the batch split over this axis: the
        inputs are then this device's rows, and negatives come from the whole axis.

    Returns:
      (loss, metrics): a scalar, and a dict of scalars: the loss parts (`loss_q2p`, and
      `loss_p2q` / `loss_pair` when used), top-1 accuracy of the positive against all valid
      negatives both ways (`acc_q2p`, `acc_p2q`), mean positive similarity (`sim_pos`), mean over
      queries of the hardest valid negative's similarity in the pool (`sim_hardest_neg`), and
      `qq_qp_ratio` = mean_{i≠j} s(q_i,q_j) / mean_{i≠j} s(q_i,p_j), the paper's §4.2 statistic.
    """
    check_options(same_tower, bidirectional, bidirectional_reduce, pair_alpha, mask_duplicates)
    # float32 at least: at τ = 0.01 a bfloat16 similarity error of 4e-3 moves a logit by 0.4.
    dtype = jnp.promote_types(jnp.asarray(query_emb).dtype, jnp.float32)
    q, d = jnp.asarray(query_emb, dtype), jnp.asarray(doc_emb, dtype)
    h = None if hard_neg_emb is None else jnp.asarray(hard_neg_emb, dtype)
    tau = jnp.asarray(temperature, dtype)

    batch = _gather_batch(q, d, h, axis_name)
    identity = dict(query_ids=query_ids, doc_ids=doc_ids, hard_neg_ids=hard_neg_ids, query_tokens=query_tokens,
                    doc_tokens=doc_tokens, hard_neg_tokens=hard_neg_tokens)
    items = _canonical_items(batch, identity, hard_negs=h is not None, mask_duplicates=mask_duplicates)
    masks = _masks(batch, items)
    # This order fixes the order in which autodiff sums each input's gradient contributions.
    s_qd = _sim(q, batch.pool)
    pos = jnp.take_along_axis(s_qd, batch.rows[:, None], axis=1)[:, 0]
    loss = loss_q = _query_term(batch, s_qd, pos, masks, tau, same_tower)
    metrics = {"loss_q2p": loss_q}
    # Same-tower doc similarities, shared by PAIR and doc-side SamToNe.
    needs_pp = pair_alpha is not None or same_tower in ("doc", "both")
    s_pp = _sim(d, batch.pool) / tau if needs_pp else None
    if pair_alpha is not None:
        metrics["loss_pair"] = loss_pair = _pair_term(batch, pos, masks, tau, s_pp)
        loss = (1.0 - pair_alpha) * loss_q + pair_alpha * loss_pair
    s_pq = _sim(d, batch.q_all)
    sims = _Similarities(s_qd, pos, s_pq, jnp.take_along_axis(s_pq, batch.rows[:, None], axis=1)[:, 0])
    if bidirectional:
        metrics["loss_p2q"] = loss_p = _doc_term(batch, sims, masks, tau, same_tower, s_pp)
        loss = loss + loss_p if bidirectional_reduce == "sum" else (loss + loss_p) / 2
    metrics.update(_similarity_metrics(batch, sims, masks))
    metrics["temperature"] = tau
    metrics["loss"] = loss
    return loss, metrics


def _similarity_metrics(batch, sims, masks):
    """Accuracy and similarity statistics over the global batch; no gradient flows through them."""
    q, d, s_qd, pos, s_pq, pos_pq = jax.lax.stop_gradient((batch.q, batch.d, *sims))
    total, B = batch.total, batch.size
    hardest = jnp.max(jnp.where(masks.qd, s_qd, -jnp.inf), axis=1, initial=-jnp.inf)
    hardest_pq = jnp.max(jnp.where(masks.pq, s_pq, -jnp.inf), axis=1, initial=-jnp.inf)
    has_neg = masks.qd.any(axis=1)
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


def sharded_contrastive_loss(mesh, query_emb, doc_emb, *, temperature, axis_name=DATA, **kwargs):
    """`contrastive_loss` over the global batch, with the batch split over `axis_name` of `mesh`.

    Each device gathers the embeddings of the whole batch (all_gather over `axis_name`) and
    computes only its own rows of logits, so logits memory per device is b_local × B_global.
    Other mesh axes (e.g. 'model') hold replicas. Loss, metrics and gradients with respect to all
    embeddings and the temperature equal the single-device `contrastive_loss` on the same global
    arrays. The global batch must divide evenly over `axis_name`.

    Args:
      mesh: a `jax.sharding.Mesh` with an axis named `axis_name`.
      query_emb, doc_emb, temperature, **kwargs: as for `contrastive_loss` (global arrays); the
        loss options typically come as `**LossConfig(...).options()`.
      axis_name: the mesh axis the batch is split over (the trainer's mesh calls it `DATA`).

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
