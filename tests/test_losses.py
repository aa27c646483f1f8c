"""Tests for gtr_jax.losses against references written outside it.

* `reference_loss` spells out every formula of gtr_jax/losses/contrastive.py's module docstring as float64
  Python loops over single dot products, with duplicate masking written from its definition (a
  known positive is a doc whose id some batch row pairs with the anchor's query id); the
  vectorized loss runs under x64 and must agree to 1e-6.
* sentence-transformers' MultipleNegativesRankingLoss is the outside reference for the plain
  in-batch loss and for query-side SamToNe, with and without hard negatives.
* The sharded loss is compared with the single-device one on 8 virtual devices.
* The duplicate cases and t5x_retrieval's 2·log 2 case have values worked out by hand.
"""

import math
import warnings

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_jax import losses

TAUS = (0.01, 0.05, 1.0)
C = 1 / math.sqrt(2)  # cosine of unit vectors at 45°, used by the hand-worked cases


def unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_loss(q, d, tau, *, same_tower=None, bidirectional=False, reduce="sum",
                   pair_alpha=None, h=None, qid=None, did=None, hid=None):
    """(loss, metrics) from the formulas, one exp at a time, in float64."""
    B = len(q)
    K = 0 if h is None else h.shape[1]
    qid = [("q", i) for i in range(B)] if qid is None else [int(x) for x in qid]
    did = [("d", i) for i in range(B)] if did is None else [int(x) for x in did]
    # The doc pool as (pool index, vector, id); row j's positive has pool index j.
    pool = [(j, d[j], did[j]) for j in range(B)]
    for j in range(B):
        for k in range(K):
            item = ("n", j, k) if hid is None else int(hid[j][k])
            pool.append((B + j * K + k, h[j, k], item))

    def s(x, y):
        return sum(float(a) * float(b) for a, b in zip(x, y))

    def e(x, y):
        return math.exp(s(x, y) / tau)

    def known_positive(i, doc_id):
        return any(qid[k] == qid[i] and did[k] == doc_id for k in range(B))

    def query_relevant(i, j):  # is q_j a positive of p_i?
        return any(did[k] == did[i] and qid[k] == qid[j] for k in range(B))

    loss_q = loss_p = loss_pair = 0.0
    acc_q = acc_p = hardest_sum = 0.0
    n_hardest = 0
    for i in range(B):
        num = e(q[i], d[i])
        negs = [x for (n, x, item) in pool if n != i and not known_positive(i, item)]
        den = num + sum(e(q[i], x) for x in negs)
        if same_tower in ("query", "both"):
            den += sum(e(q[i], q[j]) for j in range(B) if qid[j] != qid[i])
        loss_q += -math.log(num / den) / B
        if negs:
            hardest = max(s(q[i], x) for x in negs)
            hardest_sum += hardest
            n_hardest += 1
        acc_q += (not negs or s(q[i], d[i]) > hardest) / B

        same_tower_docs = [x for (n, x, item) in pool if item != did[i]]
        if pair_alpha is not None:
            den = num + sum(e(d[i], x) for x in same_tower_docs)
            loss_pair += -math.log(num / den) / B

        num = e(d[i], q[i])
        neg_queries = [j for j in range(B) if j != i and not query_relevant(i, j)]
        den = num + sum(e(d[i], q[j]) for j in neg_queries)
        if same_tower in ("doc", "both"):
            den += sum(e(d[i], x) for x in same_tower_docs)
        loss_p += -math.log(num / den) / B
        acc_p += all(s(d[i], q[i]) > s(d[i], q[j]) for j in neg_queries) / B

    loss = loss_q if pair_alpha is None else (1 - pair_alpha) * loss_q + pair_alpha * loss_pair
    if bidirectional:
        loss = loss + loss_p if reduce == "sum" else (loss + loss_p) / 2
    off = [(i, j) for i in range(B) for j in range(B) if i != j]
    metrics = {
        "loss_q2p": loss_q,
        "acc_q2p": acc_q,
        "acc_p2q": acc_p,
        "sim_pos": sum(s(q[i], d[i]) for i in range(B)) / B,
        "sim_hardest_neg": hardest_sum / max(n_hardest, 1),
    }
    if off:
        metrics["qq_qp_ratio"] = sum(s(q[i], q[j]) for i, j in off) / sum(s(q[i], d[j]) for i, j in off)
    if bidirectional:
        metrics["loss_p2q"] = loss_p
    if pair_alpha is not None:
        metrics["loss_pair"] = loss_pair
    return loss, metrics


CONFIGS = {
    "in_batch": {},
    "bidir_sum": dict(bidirectional=True),
    "bidir_mean": dict(bidirectional=True, bidirectional_reduce="mean"),
    "samtone_query": dict(same_tower="query"),
    "samtone_doc": dict(same_tower="doc", bidirectional=True),
    "samtone_both": dict(same_tower="both", bidirectional=True),
    "pair": dict(pair_alpha=0.1),
    "pair_samtone_both_mean": dict(pair_alpha=0.1, same_tower="both", bidirectional=True,
                                   bidirectional_reduce="mean"),
}


def _reference_kwargs(cfg):
    out = dict(cfg)
    if "bidirectional_reduce" in out:
        out["reduce"] = out.pop("bidirectional_reduce")
    return out


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_loop_reference(name, tau):
    cfg = CONFIGS[name]
    rng = np.random.default_rng([list(CONFIGS).index(name), TAUS.index(tau)])
    with jax.enable_x64(True):
        for B, K, dup in [(1, 0, False), (8, 2, False), (12, 1, True), (9, 3, True)]:
            q, d = unit(rng, B, 6), unit(rng, B, 6)
            h = unit(rng, B, K, 6) if K else None
            ids = {}
            if dup:  # small id ranges make duplicate queries, duplicate docs and false negatives
                ids = dict(qid=rng.integers(0, B // 2, B), did=rng.integers(0, B // 2, B))
                if K:
                    ids["hid"] = rng.integers(0, B, (B, K))
            want, want_metrics = reference_loss(q, d, tau, h=h, **ids, **_reference_kwargs(cfg))
            got, got_metrics = losses.contrastive_loss(
                jnp.asarray(q), jnp.asarray(d), temperature=tau,
                hard_neg_emb=None if h is None else jnp.asarray(h),
                query_ids=ids.get("qid"), doc_ids=ids.get("did"), hard_neg_ids=ids.get("hid"),
                **cfg)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(float(got), want, rtol=0, atol=1e-6, err_msg=f"B={B} K={K}")
            for key, value in want_metrics.items():
                np.testing.assert_allclose(float(got_metrics[key]), value, rtol=1e-9, atol=1e-9,
                                           err_msg=f"{key} B={B} K={K}")


def test_masking_off_ignores_ids():
    rng = np.random.default_rng(1)
    q, d, h = unit(rng, 8, 6), unit(rng, 8, 6), unit(rng, 8, 2, 6)
    ids = dict(query_ids=np.zeros(8, int), doc_ids=np.zeros(8, int), hard_neg_ids=np.zeros((8, 2), int))
    with jax.enable_x64(True):
        got, _ = losses.contrastive_loss(q, d, temperature=0.05, same_tower="both", bidirectional=True,
                                         hard_neg_emb=h, mask_duplicates=False, **ids)
    want, _ = reference_loss(q, d, 0.05, same_tower="both", bidirectional=True, h=h)
    np.testing.assert_allclose(float(got), want, rtol=0, atol=1e-6)


def test_gradient_matches_finite_differences_of_reference():
    rng = np.random.default_rng(2)
    B, K, D, tau = 5, 1, 4, 0.05
    q, d, h = unit(rng, B, D), unit(rng, B, D), unit(rng, B, K, D)
    ids = dict(qid=np.array([0, 0, 1, 2, 3]), did=np.array([7, 8, 7, 9, 10]), hid=np.array([[8], [1], [2], [3], [4]]))
    cfg = dict(same_tower="both", bidirectional=True, pair_alpha=0.1)

    def ref(q, d, h):
        return reference_loss(q, d, tau, h=h, **ids, **cfg)[0]

    with jax.enable_x64(True):
        grads = jax.jit(jax.grad(
            lambda q, d, h: losses.contrastive_loss(
                q, d, temperature=tau, hard_neg_emb=h, query_ids=ids["qid"], doc_ids=ids["did"],
                hard_neg_ids=ids["hid"], **cfg)[0],
            argnums=(0, 1, 2)))(q, d, h)
    eps = 1e-6
    for which, grad in enumerate(grads):
        args = [q, d, h]
        numeric = np.zeros_like(args[which])
        for idx in np.ndindex(args[which].shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            numeric[idx] = (ref(*plus) - ref(*minus)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# sentence-transformers reference


@pytest.fixture(scope="module")
def mnrl():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    def st_loss(embeddings, tau, **kwargs):
        fn = MultipleNegativesRankingLoss(model=None, scale=1 / tau, **kwargs)
        tensors = [torch.tensor(np.asarray(x), dtype=torch.float64) for x in embeddings]
        return float(fn.compute_loss_from_embeddings(tensors, labels=None))

    return st_loss


SAMTONE_Q = dict(directions=("query_to_doc", "query_to_query"), partition_mode="joint")


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("K", [0, 1, 3])
def test_matches_sentence_transformers(mnrl, tau, K):
    rng = np.random.default_rng(K)
    B = 10
    q, d = unit(rng, B, 16), unit(rng, B, 16)
    h = unit(rng, B, K, 16) if K else None
    st_inputs = [q, d] + [h[:, k] for k in range(K)]
    with jax.enable_x64(True):
        kw = dict(temperature=tau, hard_neg_emb=h)
        samtone, _ = losses.contrastive_loss(q, d, same_tower="query", **kw)
        plain, _ = losses.contrastive_loss(q, d, **kw)
    np.testing.assert_allclose(float(samtone), mnrl(st_inputs, tau, **SAMTONE_Q), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(plain), mnrl(st_inputs, tau), rtol=1e-5, atol=1e-5)
    if K == 1:  # the production dtype: float32 embeddings against the float64 reference
        samtone32, _ = losses.contrastive_loss(q.astype(np.float32), d.astype(np.float32), same_tower="query",
                                               temperature=tau, hard_neg_emb=h.astype(np.float32))
        np.testing.assert_allclose(float(samtone32), mnrl(st_inputs, tau, **SAMTONE_Q), rtol=1e-5, atol=1e-5)


def test_bidirectional_mean_matches_sentence_transformers_per_direction(mnrl):
    rng = np.random.default_rng(3)
    q, d = unit(rng, 8, 16), unit(rng, 8, 16)
    with jax.enable_x64(True):
        got, _ = losses.contrastive_loss(q, d, temperature=0.05, bidirectional=True,
                                         bidirectional_reduce="mean")
    want = mnrl([q, d], 0.05, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Hand-worked values


def test_bidirectional_sum_on_all_ones_similarity_is_two_log_two():
    ones = jnp.array([[1.0, 0.0], [1.0, 0.0]])  # every s(q_i, p_j) = 1
    total, _ = losses.contrastive_loss(ones, ones, temperature=1.0, bidirectional=True)
    mean, _ = losses.contrastive_loss(ones, ones, temperature=1.0, bidirectional=True,
                                      bidirectional_reduce="mean")
    np.testing.assert_allclose(float(total), 2 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(float(mean), math.log(2), rtol=1e-6)


def basis(*components, dim=6):
    v = np.zeros(dim)
    v[list(components)] = 1.0
    return v / np.linalg.norm(v)


def test_duplicate_query_text():
    # Rows 0 and 1 hold the same query text (identical tokens) with two different passages.
    q = np.stack([basis(0), basis(0), basis(3)])
    d = np.stack([basis(0, 1), basis(0, 2), basis(3)])  # s(q0,p0) = s(q0,p1) = c, s(q2,p2) = 1
    tokens = np.array([[5, 6, 1], [5, 6, 1], [7, 1, 0]])
    kw = dict(temperature=1.0, same_tower="query", query_tokens=tokens)
    # Row 0: p1 is another positive of the same query and q1 is the query itself, so only p2 and q2
    # (similarity 0, e^0 = 1 each) are negatives: −log(e^c / (e^c + 2)). Row 1 likewise. Row 2 has
    # four negatives of similarity 0 against a positive of similarity 1: −log(e / (e + 4)).
    want = (2 * math.log(1 + 2 * math.exp(-C)) + math.log(1 + 4 / math.e)) / 3
    got, _ = losses.contrastive_loss(q, d, **kw)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # The same with ids instead of tokens.
    got_ids, _ = losses.contrastive_loss(q, d, temperature=1.0, same_tower="query", query_ids=np.array([4, 4, 9]))
    np.testing.assert_allclose(float(got_ids), want, rtol=1e-6)
    # Unmasked, row 0 sees p1 (e^c) and its own duplicate q1 (e^1, as large as a perfect positive).
    unmasked = (2 * math.log((2 * math.exp(C) + 2 + math.e) / math.exp(C)) + math.log(1 + 4 / math.e)) / 3
    got, _ = losses.contrastive_loss(q, d, mask_duplicates=False, **kw)
    np.testing.assert_allclose(float(got), unmasked, rtol=1e-6)


def test_duplicate_doc_id():
    # Two different queries share the same passage (doc id 10); bidirectional, doc-side SamToNe.
    q = np.stack([basis(0), basis(1), basis(3)])
    d = np.stack([basis(0, 1), basis(0, 1), basis(2, 3)])
    kw = dict(temperature=1.0, same_tower="doc", bidirectional=True, doc_ids=np.array([10, 10, 11]))
    # q→p. Rows 0, 1: the copy of their passage is masked, p2 (s = 0) remains: −log(e^c/(e^c + 1)).
    # Row 2: p0 and p1 (s = 0) are negatives: −log(e^c/(e^c + 2)).
    loss_q = (2 * math.log(1 + math.exp(-C)) + math.log(1 + 2 * math.exp(-C))) / 3
    # p→q. Row p0: q1 is paired with doc 10 too, so it is a positive, and p1 is p0 itself; left are
    # q2 and p2 (s = 0): −log(e^c/(e^c + 2)); p1 likewise. Row p2: q0, q1, p0, p1 all have s = 0.
    loss_p = (2 * math.log(1 + 2 * math.exp(-C)) + math.log(1 + 4 * math.exp(-C))) / 3
    got, metrics = losses.contrastive_loss(q, d, **kw)
    np.testing.assert_allclose(float(metrics["loss_q2p"]), loss_q, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss_p2q"]), loss_p, rtol=1e-6)
    np.testing.assert_allclose(float(got), loss_q + loss_p, rtol=1e-6)
    # Unmasked, row p0 sees q1 (e^c) and its copy p1 (e^1) besides q2 and p2.
    loss_q = (2 * math.log(2 + math.exp(-C)) + math.log(1 + 2 * math.exp(-C))) / 3
    loss_p = (2 * math.log(2 + 2 * math.exp(-C) + math.exp(1 - C)) + math.log(1 + 4 * math.exp(-C))) / 3
    got, _ = losses.contrastive_loss(q, d, mask_duplicates=False, **kw)
    np.testing.assert_allclose(float(got), loss_q + loss_p, rtol=1e-6)


def test_query_with_two_positives():
    # Query 5 has positives doc 10 (row 0) and doc 11 (row 1); query 6 (row 2) has doc 12 and
    # doc 11 as its mined hard negative, which is a false negative for query 5 only.
    q = np.stack([basis(0), basis(0), basis(3)])
    d = np.stack([basis(0, 1), basis(0, 2), basis(3)])
    h = np.stack([basis(4), basis(5), basis(0, 2)])[:, None, :]
    kw = dict(temperature=1.0, hard_neg_emb=h, query_ids=np.array([5, 5, 6]),
              doc_ids=np.array([10, 11, 12]), hard_neg_ids=np.array([[20], [21], [11]]))
    # Row 0: p1 and n2 (doc 11) are positives of query 5; p2, n0, n1 (s = 0) are negatives:
    # −log(e^c/(e^c + 3)); row 1 likewise (p0 is its other positive, n2 its own passage).
    # Row 2: p0, p1, n0, n1, n2 all have s = 0 against a positive of s = 1: −log(e/(e + 5)).
    want = (2 * math.log(1 + 3 * math.exp(-C)) + math.log(1 + 5 / math.e)) / 3
    got, _ = losses.contrastive_loss(q, d, **kw)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # Unmasked, rows 0 and 1 see p0, p1, n2 at e^c and p2, n0, n1 at 1.
    unmasked = (2 * math.log(3 + 3 * math.exp(-C)) + math.log(1 + 5 / math.e)) / 3
    got, _ = losses.contrastive_loss(q, d, mask_duplicates=False, **kw)
    np.testing.assert_allclose(float(got), unmasked, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Sharded over the data axis


SHARDED_CASES = {
    "everything_ids": (dict(same_tower="both", bidirectional=True, pair_alpha=0.1), True),
    "samtone_query_tokens": (dict(same_tower="query"), "tokens"),
}


@pytest.mark.parametrize("mesh_shape, case", [
    ((8, 1), "everything_ids"),
    ((4, 2), "everything_ids"),
    ((4, 2), "samtone_query_tokens"),
], ids=["8x1-everything_ids", "4x2-everything_ids", "4x2-samtone_query_tokens"])
def test_sharded_matches_single_device(mesh_shape, case):
    cfg, dups = SHARDED_CASES[case]
    mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rng = np.random.default_rng(4)
    B, K, D = 16, 2, 32
    q, d = unit(rng, B, D).astype(np.float32), unit(rng, B, D).astype(np.float32)
    h = unit(rng, B, K, D).astype(np.float32)
    batch = {}
    if dups is True:
        batch = dict(query_ids=rng.integers(0, 8, B), doc_ids=rng.integers(0, 8, B),
                     hard_neg_ids=rng.integers(0, 12, (B, K)))
    elif dups == "tokens":
        batch = dict(query_tokens=rng.integers(0, 3, (B, 4)), doc_tokens=rng.integers(0, 3, (B, 4)),
                     hard_neg_tokens=rng.integers(0, 3, (B, K, 4)))
    log_tau = jnp.log(0.05)

    def single(q, d, h, log_tau):
        tau = losses.temperature_from_log(log_tau, 0.01, 1.0)
        return losses.contrastive_loss(q, d, temperature=tau, hard_neg_emb=h, **batch, **cfg)

    def sharded(q, d, h, log_tau):
        tau = losses.temperature_from_log(log_tau, 0.01, 1.0)
        return losses.sharded_contrastive_loss(mesh, q, d, temperature=tau, hard_neg_emb=h, **batch, **cfg)

    grad_fn = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))
    (want, want_metrics), want_grads = grad_fn(single)(q, d, h, log_tau)
    (got, got_metrics), got_grads = grad_fn(sharded)(q, d, h, log_tau)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5, atol=1e-5)
    assert set(got_metrics) == set(want_metrics)
    for key in want_metrics:
        np.testing.assert_allclose(float(got_metrics[key]), float(want_metrics[key]), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    for name, g, w in zip(["q", "d", "h", "log_tau"], got_grads, want_grads):
        assert np.abs(np.asarray(w)).max() > 0, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=name)


def test_sharded_logits_are_local_rows():
    # Each device's program holds b_local × B logits, never B × B: with B = 64 over 8 devices,
    # no intermediate of the per-device HLO may have 64 × 64 elements.
    mesh = jax.make_mesh((8, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    q = jnp.ones((64, 16)) / 4.0
    f = jax.jit(jax.grad(lambda q: losses.sharded_contrastive_loss(
        mesh, q, q, temperature=0.05, same_tower="both", bidirectional=True)[0]))
    hlo = f.lower(q).compile().as_text()
    assert "f32[8,64]" in hlo
    assert "f32[64,64]" not in hlo


# ---------------------------------------------------------------------------------------------
# Temperature, configuration, argument checks


def test_temperature_from_log_clips_with_zero_gradient_outside():
    t = lambda x: losses.temperature_from_log(x, 0.01, 1.0)
    np.testing.assert_allclose(float(t(math.log(0.05))), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(t(math.log(1e-4))), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(t(3.0)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(jax.grad(t)(math.log(0.05))), 0.05, rtol=1e-5)
    assert float(jax.grad(t)(math.log(1e-4))) == 0.0


def test_gin_binds_loss_options():
    rng = np.random.default_rng(5)
    q, d = unit(rng, 3, 6).astype(np.float32), unit(rng, 3, 6).astype(np.float32)
    explicit, _ = losses.contrastive_loss(q, d, temperature=0.05, same_tower="query")
    try:
        gin.parse_config("LossConfig.same_tower = 'query'")
        configured, _ = losses.contrastive_loss(q, d, temperature=0.05, **losses.LossConfig().options())
    finally:
        gin.clear_config()
    np.testing.assert_allclose(float(configured), float(explicit), rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(same_tower="doc"),
    dict(same_tower="passage"),
    dict(bidirectional=True, bidirectional_reduce="max"),
    dict(hard_neg_ids=np.zeros((4, 1), int)),
    dict(doc_ids=np.arange(4), hard_neg_tokens=np.zeros((4, 1, 3), int)),
])
def test_rejects_inconsistent_options(kwargs):
    q = jnp.eye(4)
    with pytest.raises(ValueError):
        losses.contrastive_loss(q, q, temperature=0.05, hard_neg_emb=q[:, None], **kwargs)
