"""Reading HF and sentence-transformers checkpoints: sharding, tied embeddings, bad inputs."""

import json
import os

import numpy as np
import pytest
import torch

import hf_models
from gtr_jax.interop import hf_weights
from gtr_jax.errors import UserError


def flat_hf_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def assert_matches_hf(params, config, state):
    for path, (name, transposed) in hf_weights.hf_tensor_names(config).items():
        node = params
        for key in path:
            node = node[key]
        np.testing.assert_array_equal(node, state[name].T if transposed else state[name])


@pytest.mark.parametrize("seq2seq", [False, True], ids=["T5EncoderModel", "T5ForConditionalGeneration"])
def test_reads_single_and_sharded_checkpoints(tmp_path, seq2seq):
    model = hf_models.random_t5(hf_models.t5_config(), seq2seq=seq2seq)
    model.save_pretrained(tmp_path / "single", safe_serialization=True)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    state = flat_hf_state(model)
    for directory in ("single", "sharded"):
        config = hf_weights.t5_config_from_hf(str(tmp_path / directory / "config.json"))
        params = hf_weights.encoder_params_from_hf(str(tmp_path / directory), config)
        assert_matches_hf(params, config, state)
        assert not any(k.startswith("decoder") for k in params)


def test_bfloat16_checkpoints_are_read_as_float32(tmp_path):
    model = hf_models.random_t5(hf_models.t5_config()).to(torch.bfloat16)
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    params = hf_weights.encoder_params_from_hf(str(tmp_path), config)
    expected = model.state_dict()["shared.weight"].float().numpy()
    assert params["token_embedder"].dtype == np.float32
    np.testing.assert_array_equal(params["token_embedder"], expected)


def test_config_translation(tmp_path):
    hf_models.t5_config("relu", num_heads=6, d_kv=16).save_pretrained(tmp_path)
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    assert (config.feed_forward, config.num_heads, config.d_kv, config.d_model) == ("relu", 6, 16, 64)
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (16, 24)


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_non_t5_config_is_refused(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "bert", "hidden_size": 8})
    with pytest.raises(UserError, match=r"config.json: model_type is 'bert'"):
        hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    hf_models.t5_config().save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match="pickle.*never loads.*safe_serialization=True"):
        hf_weights.encoder_params_from_hf(str(tmp_path), config)


def test_wrong_shapes_and_missing_tensors_are_named(tmp_path):
    hf_models.random_t5(hf_models.t5_config()).save_pretrained(tmp_path, safe_serialization=True)
    write_json(tmp_path / "config.json", {**json.loads((tmp_path / "config.json").read_text()), "d_ff": 50})
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match=r"layers_0/mlp/wi_0/kernel has shape \(64, 96\), config.json implies \(64, 50\)"):
        hf_weights.encoder_params_from_hf(str(tmp_path), config)
    write_json(tmp_path / "config.json", {**json.loads((tmp_path / "config.json").read_text()), "d_ff": 96, "num_layers": 4})
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match="no tensor encoder.block.3"):
        hf_weights.encoder_params_from_hf(str(tmp_path), config)


def test_corrupt_safetensors_is_named(tmp_path):
    hf_models.t5_config().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    config = hf_weights.t5_config_from_hf(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match="model.safetensors: cannot read safetensors"):
        hf_weights.encoder_params_from_hf(str(tmp_path), config)


def test_sentence_transformers_reader(tmp_path, spm_path):
    directory = hf_models.write_sentence_transformers(str(tmp_path / "st"), spm_path, embed_dim=24)
    config, encoder, kernel, max_length, transformer_dir = hf_weights.read_sentence_transformers(directory)
    dense = hf_weights.read_safetensors(os.path.join(directory, "2_Dense"), lambda n: True)["linear.weight"]
    np.testing.assert_array_equal(kernel, dense.T)
    assert kernel.shape == (config.d_model, 24) and max_length == 32 and os.path.samefile(transformer_dir, directory)


def test_sentence_transformers_layouts_we_cannot_serve_are_refused(tmp_path, spm_path):
    directory = tmp_path / "st"
    hf_models.write_sentence_transformers(str(directory), spm_path)
    dense_config = json.loads((directory / "2_Dense" / "config.json").read_text())
    write_json(directory / "2_Dense" / "config.json", {**dense_config, "bias": True})
    with pytest.raises(UserError, match="Dense layer has a bias"):
        hf_weights.read_sentence_transformers(str(directory))
    write_json(directory / "1_Pooling" / "config.json", {"embedding_dimension": 64, "pooling_mode": "cls"})
    with pytest.raises(UserError, match="pooling is cls"):
        hf_weights.read_sentence_transformers(str(directory))
    write_json(directory / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.CLIPModel"}])
    with pytest.raises(UserError, match="CLIPModel.* is not part of a GTR model"):
        hf_weights.read_sentence_transformers(str(directory))


def test_asymmetric_router_models_written_by_sentence_transformers_are_read(tmp_path, spm_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import T5Tokenizer

    towers = {}
    for route, seed in (("query", 0), ("document", 1)):
        directory = tmp_path / route
        model = hf_models.random_t5(hf_models.t5_config(), seed)
        model.save_pretrained(directory, safe_serialization=True)
        T5Tokenizer(spm_path, legacy=True).save_pretrained(directory)
        towers[route] = (model, [models.Transformer(str(directory), max_seq_length=16 if route == "query" else 32),
                                 models.Pooling(64, "mean")])
    router = models.Router.for_query_document(towers["query"][1], towers["document"][1])
    dense = models.Dense(64, 24, bias=False, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[router, dense, models.Normalize()]).save(str(tmp_path / "st"), safe_serialization=True)

    assert hf_weights.is_router_model(str(tmp_path / "st"))
    tower, config, params, lengths, _ = hf_weights.read_asymmetric_sentence_transformers(str(tmp_path / "st"))
    assert (tower, lengths, sorted(params)) == ("ade_spl", {"query": 16, "doc": 32}, ["doc_encoder", "projection", "query_encoder"])
    assert_matches_hf(params["query_encoder"], config, flat_hf_state(towers["query"][0]))
    assert_matches_hf(params["doc_encoder"], config, flat_hf_state(towers["document"][0]))
    np.testing.assert_array_equal(params["projection"]["dense"]["kernel"], dense.linear.weight.detach().numpy().T)
    with pytest.raises(UserError, match="asymmetric \\(Router\\) model"):
        hf_weights.read_sentence_transformers(str(tmp_path / "st"))
    router_config = json.loads((tmp_path / "st" / "router_config.json").read_text())
    router_config["structure"]["passage"] = router_config["structure"].pop("document")
    write_json(tmp_path / "st" / "router_config.json", router_config)
    with pytest.raises(UserError, match=r"routes are \['passage', 'query'\]; expected query and document"):
        hf_weights.read_asymmetric_sentence_transformers(str(tmp_path / "st"))
