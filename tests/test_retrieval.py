"""Sharded, chunked top-k search against a numpy brute-force ranking (ties by corpus row)."""

import gin
import jax
import numpy as np
import pytest

from gtr_jax.train import partitioning
from gtr_jax.eval import retrieval


def brute_force(queries, corpus, k):
    """Every score in float64, ranked by score descending, then row ascending."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    rows = np.arange(len(corpus))
    order = np.stack([np.lexsort((rows, -s))[:k] for s in scores])
    return np.take_along_axis(scores, order, axis=1), order


def integer_embeddings(rng, n, dim=6):
    """Small integers: every dot product is exact in float32, and most scores are tied."""
    return rng.integers(-2, 3, (n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def meshes():
    return {"data8": partitioning.make_mesh((8, 1)), "data4_model2": partitioning.make_mesh((4, 2))}


@pytest.mark.parametrize("mesh_name", ["data8", "data4_model2"])
@pytest.mark.parametrize("split", [None, (0, 400, 401, 1003)])
def test_ties_and_ragged_sizes_equal_brute_force(meshes, mesh_name, split):
    rng = np.random.default_rng(0)
    corpus, queries = integer_embeddings(rng, 1003), integer_embeddings(rng, 37)
    # 1,003 rows: not a multiple of the 8 devices, of the 48-row chunks or of the 16-query batches.
    blocks = corpus if split is None else [corpus[a:b] for a, b in zip(split, split[1:])]
    scores, rows = retrieval.search(queries, blocks, 50, mesh=meshes[mesh_name], chunk_size=48, query_batch_size=16)
    expected_scores, expected_rows = brute_force(queries, corpus, 50)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert (np.diff(scores, axis=1) == 0).mean() > 0.5, "the case should be dominated by ties"


@pytest.mark.parametrize("k", [1, 20])
def test_group_preselection_keeps_ties_exact(meshes, k):
    rng = np.random.default_rng(5)
    # 8 devices × 3 chunks of 1,024 rows (the last part padding): each chunk takes the grouped path.
    corpus, queries = integer_embeddings(rng, 17001), integer_embeddings(rng, 16)
    assert 1024 >= retrieval.GROUP * max(k, retrieval.MIN_GROUPS)
    scores, rows = retrieval.search(queries, corpus, k, mesh=meshes["data8"], chunk_size=1024)
    expected_scores, expected_rows = brute_force(queries, corpus, k)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


def test_unit_vectors_equal_brute_force(meshes):
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(2501, 32)).astype(np.float32)
    queries = rng.normal(size=(20, 32)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, rows = retrieval.search(queries, corpus, 100, mesh=meshes["data8"], chunk_size=128)
    expected_scores, expected_rows = brute_force(queries, corpus, 100)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6, rtol=0)


def test_k_larger_than_corpus_and_fewer_rows_than_devices(meshes):
    rng = np.random.default_rng(2)
    corpus, queries = integer_embeddings(rng, 5), integer_embeddings(rng, 3)
    scores, rows = retrieval.search(queries, corpus, 10, mesh=meshes["data8"])
    expected_scores, expected_rows = brute_force(queries, corpus, 5)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores)


def test_default_mesh_uses_every_device():
    rng = np.random.default_rng(3)
    corpus, queries = integer_embeddings(rng, 300), integer_embeddings(rng, 4)
    assert retrieval.default_mesh().devices.size == jax.device_count() == 8
    _, rows = retrieval.search(queries, corpus, 7)
    np.testing.assert_array_equal(rows, brute_force(queries, corpus, 7)[1])


def test_default_mesh_ignores_gin_bindings_of_the_training_mesh():
    gin.parse_config(["make_mesh.mesh_shape = (2, 1)", "make_mesh.num_devices = 2"])
    try:
        assert partitioning.make_mesh().devices.size == 2  # the bindings are in force
        mesh = retrieval.default_mesh()
    finally:
        gin.clear_config()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == 8
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


def test_approximate_search_finds_most_neighbours(meshes):
    rng = np.random.default_rng(4)
    corpus = rng.normal(size=(4000, 16)).astype(np.float32)
    queries = rng.normal(size=(10, 16)).astype(np.float32)
    _, rows = retrieval.search(queries, corpus, 20, mesh=meshes["data8"], approximate=True, recall_target=0.95)
    expected = brute_force(queries, corpus, 20)[1]
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(rows, expected)])
    assert recall >= 0.9


def test_mismatched_dimensions_are_an_error():
    with pytest.raises(retrieval.UserError, match="same size"):
        retrieval.search(np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float32), 1)


def test_one_device_whole_corpus_chunk_not_a_multiple_of_the_group():
    # 2,370 rows in one chunk on one device (as `analyze` searches a demo corpus): wider than
    # the grouped selection's threshold but not a multiple of its group size.
    rng = np.random.default_rng(4)
    corpus, queries = integer_embeddings(rng, 2370), integer_embeddings(rng, 9)
    mesh = partitioning.make_mesh((1, 1), num_devices=1)
    scores, rows = retrieval.search(queries, corpus, 1, mesh=mesh)
    expected_scores, expected_rows = brute_force(queries, corpus, 1)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


def test_grouped_selection_breaks_ties_by_row_not_by_group_rank():
    # Scores are the corpus values (1-d embeddings, query 1). Row 3 and row 21 tie at 5, but row 21's
    # group (rows 16-31) ranks first, by its 9 at row 20: the tie must still go to row 3.
    corpus = np.full((2048, 1), -1.0, np.float32)
    corpus[[3, 20, 21], 0] = [5.0, 9.0, 5.0]
    mesh = partitioning.make_mesh((1, 1), num_devices=1)
    assert len(corpus) >= retrieval.GROUP * retrieval.MIN_GROUPS
    scores, rows = retrieval.search(np.ones((1, 1), np.float32), corpus, 2, mesh=mesh)
    assert rows.tolist() == [[20, 3]] and scores.tolist() == [[9.0, 5.0]]
