"""Read T5 encoder weights from Hugging Face and sentence-transformers directories.

Only safetensors are read. A `pytorch_model.bin` is a pickle, and unpickling runs
arbitrary code, so it is refused with instructions to convert it.

The mapping between HF tensor names and our parameter tree is one table,
`hf_tensor_names`, so the export direction can reuse it.
"""

import json
import os
import shutil

import jax
import numpy as np
import safetensors
from flax.core import meta

from gtr_jax import t5
from gtr_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
FEED_FORWARD_FROM_HF = {"gated-gelu": "gated-gelu", "relu": "relu"}
DENSE_IDENTITY = "torch.nn.modules.linear.Identity"


def hf_tensor_names(config: t5.T5Config) -> dict[tuple[str, ...], tuple[str, bool]]:
    """Our unscanned encoder param path -> (HF tensor name, whether HF stores it transposed)."""
    names = {
        ("token_embedder",): ("shared.weight", False),
        ("relpos_bias",): ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", False),
        ("final_norm", "scale"): ("encoder.final_layer_norm.weight", False),
    }
    mlp = ("wi_0", "wi_1", "wo") if config.feed_forward == "gated-gelu" else ("wi", "wo")
    for i in range(config.num_layers):
        block, layer = f"encoder.block.{i}.layer", f"layers_{i}"
        names[(layer, "pre_attention_norm", "scale")] = (f"{block}.0.layer_norm.weight", False)
        names[(layer, "pre_mlp_norm", "scale")] = (f"{block}.1.layer_norm.weight", False)
        for ours, theirs in zip(("query", "key", "value", "out"), "qkvo"):
            names[(layer, "attention", ours, "kernel")] = (f"{block}.0.SelfAttention.{theirs}.weight", True)
        for dense in mlp:
            names[(layer, "mlp", dense, "kernel")] = (f"{block}.1.DenseReluDense.{dense}.weight", True)
    return names


def t5_config_from_hf(config_path: str) -> t5.T5Config:
    """Our T5Config from an HF `config.json` of a T5 (v1.0 or v1.1) or mT5 model."""
    try:
        with open(config_path, encoding="utf-8") as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{config_path}: not found; an HF T5 checkpoint directory needs config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path}: not valid JSON ({e})") from None
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{config_path}: model_type is {model_type!r}; only T5 encoders ({', '.join(SUPPORTED_MODEL_TYPES)}) are supported")
    # Configs of the original T5 (v1.0) predate `feed_forward_proj`; their FFN is ReLU.
    feed_forward = hf.get("feed_forward_proj", "relu")
    if feed_forward not in FEED_FORWARD_FROM_HF:
        raise UserError(f"{config_path}: feed_forward_proj {feed_forward!r} is not supported (use gated-gelu or relu)")
    try:
        return t5.T5Config(
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["d_model"]),
            num_layers=int(hf["num_layers"]),
            num_heads=int(hf["num_heads"]),
            d_kv=int(hf["d_kv"]),
            d_ff=int(hf["d_ff"]),
            feed_forward=FEED_FORWARD_FROM_HF[feed_forward],
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
        )
    except KeyError as e:
        raise UserError(f"{config_path}: missing field {e.args[0]!r}") from None


def _safetensors_files(directory: str) -> list[str]:
    """The safetensors file(s) of an HF checkpoint directory, following a sharded index."""
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise UserError(f"{index}: not a safetensors index ({e})") from None
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise UserError(f"{index}: names shard {missing[0]}, which does not exist")
        return files
    if os.path.exists(single):
        return [single]
    if any(os.path.exists(os.path.join(directory, n)) for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise UserError(
            f"{directory}: holds only pytorch_model.bin, a pickle, which gtr-jax never loads. Convert it once "
            "with transformers: T5EncoderModel.from_pretrained(SRC).save_pretrained(DST, safe_serialization=True)"
        )
    raise UserError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def read_safetensors(directory: str, wanted) -> dict[str, np.ndarray]:
    """The tensors whose names satisfy `wanted(name)`, as float32 numpy arrays."""
    tensors = {}
    for path in _safetensors_files(directory):
        try:
            # The flax framework reads bfloat16 too, which plain numpy cannot.
            with safetensors.safe_open(path, framework="flax") as f:
                for name in f.keys():
                    if wanted(name):
                        tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
        except (OSError, safetensors.SafetensorError) as e:
            raise UserError(f"{path}: cannot read safetensors ({e})") from None
    return tensors


def encoder_params_from_hf(directory: str, config: t5.T5Config) -> dict:
    """Our unscanned encoder parameter tree from an HF T5 checkpoint (encoder weights only)."""
    tensors = read_safetensors(directory, lambda n: n == "shared.weight" or n.startswith("encoder."))
    # Tied embeddings are saved once; which copy survives depends on the saving code.
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    params = {}
    for path, (name, transposed) in hf_tensor_names(config).items():
        if name not in tensors:
            raise UserError(f"{directory}: checkpoint has no tensor {name}; is config.json the right one?")
        value = tensors[name].T if transposed else tensors[name]
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(value)
    _check_shapes(directory, params, config)
    return params


def _check_shapes(directory: str, params: dict, config: t5.T5Config):
    """Fail with one line if a tensor does not have the shape config.json implies."""
    expected = jax.eval_shape(
        lambda: t5.T5Encoder(config).init(jax.random.key(0), np.ones((1, 2), np.int32))["params"]
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(meta.unbox(expected))[0]:
        keys = tuple(k.key for k in path)
        node = params
        for key in keys:
            node = node[key]
        if node.shape != leaf.shape:
            raise UserError(f"{directory}: {'/'.join(keys)} has shape {node.shape}, config.json implies {leaf.shape}")


def model_params(encoder: dict, projection_kernel: np.ndarray, tower: str) -> dict:
    """A DualEncoder parameter tree in which every tower starts from the same weights."""
    projection = {"dense": {"kernel": projection_kernel}}
    if tower == "sde":
        return {"encoder": encoder, "projection": projection}
    towers = {"query_encoder": encoder, "doc_encoder": _copy(encoder)}
    if tower == "ade":
        return {**towers, "query_projection": projection, "doc_projection": _copy(projection)}
    return {**towers, "projection": projection}


def _copy(tree):
    return {k: _copy(v) if isinstance(v, dict) else np.array(v) for k, v in tree.items()}


def _read_json(path: str) -> dict | list:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_sentence_transformers(directory: str) -> tuple[t5.T5Config, dict, np.ndarray, int | None, str]:
    """(encoder config, encoder params, projection kernel [d_model, embed_dim], max_seq_length, transformer dir).

    Expects the GTR layout: Transformer (T5 encoder) -> Pooling (mean) -> [Dense (no bias,
    identity activation)] -> [Normalize]. Without a Dense the projection is the identity.
    """
    modules = _read_json(os.path.join(directory, "modules.json"))
    by_kind = {}
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise UserError(f"{directory}/modules.json: module {module.get('type')!r} is not part of a GTR model")
        by_kind[kind] = os.path.join(directory, module.get("path", ""))
    if "Transformer" not in by_kind or "Pooling" not in by_kind:
        raise UserError(f"{directory}/modules.json: a GTR model needs a Transformer and a Pooling module")
    pooling = _read_json(os.path.join(by_kind["Pooling"], "config.json"))
    # sentence-transformers 5 writes "pooling_mode": "mean"; older versions one boolean per mode.
    mode = pooling.get("pooling_mode") or sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    if mode not in ("mean", ["pooling_mode_mean_tokens"]):
        raise UserError(f"{by_kind['Pooling']}/config.json: pooling is {mode}; GTR uses mean pooling only")

    transformer_dir = by_kind["Transformer"]
    config = t5_config_from_hf(os.path.join(transformer_dir, "config.json"))
    encoder = encoder_params_from_hf(transformer_dir, config)
    max_seq_length = _max_seq_length(transformer_dir)

    if "Dense" not in by_kind:
        return config, encoder, np.eye(config.d_model, dtype=np.float32), max_seq_length, transformer_dir
    dense_dir = by_kind["Dense"]
    dense = _read_json(os.path.join(dense_dir, "config.json"))
    if dense.get("bias", True):
        raise UserError(f"{dense_dir}/config.json: the Dense layer has a bias; GTR's projection has none")
    if dense.get("activation_function", DENSE_IDENTITY) != DENSE_IDENTITY:
        raise UserError(f"{dense_dir}/config.json: activation {dense['activation_function']} is not the identity")
    kernel = read_safetensors(dense_dir, lambda n: n == "linear.weight").get("linear.weight")
    if kernel is None:
        raise UserError(f"{dense_dir}: no tensor linear.weight")
    if kernel.shape[1] != config.d_model:
        raise UserError(f"{dense_dir}: linear.weight has shape {kernel.shape}; expected [*, {config.d_model}]")
    return config, encoder, np.ascontiguousarray(kernel.T), max_seq_length, transformer_dir


def _max_seq_length(transformer_dir: str) -> int | None:
    """The Transformer module's max_seq_length: its own config (older versions) or the tokenizer's."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = os.path.join(transformer_dir, name)
        value = _read_json(path).get(key) if os.path.exists(path) else None
        # HF writes a huge sentinel for "no limit".
        if isinstance(value, int) and value < 1_000_000:
            return value
    return None


def copy_vocabulary(source_dir: str, vocab_path: str | None, output_dir: str) -> str:
    """Copy the SentencePiece model (explicit path, else SOURCE/spiece.model) into the output dir."""
    source = vocab_path or os.path.join(source_dir, "spiece.model")
    if not os.path.exists(source):
        raise UserError(f"{source}: no SentencePiece vocabulary; pass --vocab=FILE.model")
    target = os.path.join(output_dir, "spiece.model")
    shutil.copyfile(source, target)
    return target
