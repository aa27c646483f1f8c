"""Read T5 encoder weights from Hugging Face and sentence-transformers directories.

`import_model_dir` (`gtr-jax import`) turns either into a model directory to train from.

Only safetensors are read. A `pytorch_model.bin` is a pickle, and unpickling runs
arbitrary code, so it is refused with instructions to convert it.

The mapping between HF tensor names and our parameter tree is one table,
`hf_tensor_names`, used in both directions: reading here, writing by `gtr-jax export`
(`hf_config`, `encoder_params_to_hf`). Asymmetric models (ADE, ADE-SPL) are read from the
sentence-transformers `Router` layout that the export writes.
"""

import json
import os

import jax
import numpy as np
import safetensors
from etils import epath
from flax.core import meta

from gtr_jax.model import dual_encoder, t5
from gtr_jax.train import checkpoints
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
        hf = json.loads(epath.Path(config_path).read_text())
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


def hf_config(config: t5.T5Config) -> dict:
    """An HF `config.json` for a `T5EncoderModel` of this shape; `t5_config_from_hf` reads it back."""
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "feed_forward_proj": config.feed_forward,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "is_encoder_decoder": False,
        "use_cache": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def encoder_params_to_hf(encoder: dict, config: t5.T5Config) -> dict[str, np.ndarray]:
    """HF T5 tensors (name -> float32 array) of our unscanned encoder params.

    The token embedding is written once, as `shared.weight`: HF ties the encoder's
    `embed_tokens` to it on load, as it does for checkpoints it saves itself.
    """
    tensors = {}
    for path, (name, transposed) in hf_tensor_names(config).items():
        node = encoder
        for key in path:
            node = node[key]
        value = np.asarray(node, dtype=np.float32)
        tensors[name] = np.ascontiguousarray(value.T if transposed else value)
    return tensors


def _safetensors_files(directory: str) -> list[str]:
    """The safetensors file(s) of an HF checkpoint directory, following a sharded index."""
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if epath.Path(index).exists():
        try:
            weight_map = json.loads(epath.Path(index).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise UserError(f"{index}: not a safetensors index ({e})") from None
        files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not epath.Path(f).exists()]
        if missing:
            raise UserError(f"{index}: names shard {missing[0]}, which does not exist")
        return files
    if epath.Path(single).exists():
        return [single]
    if any(epath.Path(directory, n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
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
            # The flax framework reads bfloat16 too, which plain numpy cannot. safe_open memory-maps,
            # so the weights must be a local file.
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
        return json.loads(epath.Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _module_kind(module_type: str) -> str:
    """`Transformer` of `sentence_transformers.models.Transformer` and of 5.x's longer paths."""
    return module_type.rsplit(".", 1)[-1]


def read_sentence_transformers(directory: str) -> tuple[t5.T5Config, dict, np.ndarray, int | None, str]:
    """(encoder config, encoder params, projection kernel [d_model, embed_dim], max_seq_length, transformer dir).

    Expects the GTR layout: Transformer (T5 encoder) -> Pooling (mean) -> [Dense (no bias,
    identity activation)] -> [Normalize]. Without a Dense the projection is the identity.
    """
    modules = _read_json(os.path.join(directory, "modules.json"))
    if any(_module_kind(m.get("type", "")) == "Router" for m in modules):
        raise UserError(f"{directory}: is an asymmetric (Router) model with a query and a document tower; "
                        "import it as an ade or ade_spl model")
    return _read_pipeline(directory, [(m.get("type", ""), os.path.join(directory, m.get("path", ""))) for m in modules])


def _read_pipeline(directory: str, modules: list[tuple[str, str]]) -> tuple[t5.T5Config, dict, np.ndarray, int | None, str]:
    """`read_sentence_transformers` of one chain of (module type, module directory)."""
    by_kind = {}
    for module_type, path in modules:
        kind = _module_kind(module_type)
        if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise UserError(f"{directory}/modules.json: module {module_type!r} is not part of a GTR model")
        by_kind[kind] = path
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


def is_router_model(directory: str) -> bool:
    """Whether a sentence-transformers directory starts with a `Router` (an asymmetric model)."""
    modules = _read_json(os.path.join(directory, "modules.json"))
    return bool(modules) and _module_kind(modules[0].get("type", "")) == "Router"


def read_asymmetric_sentence_transformers(directory: str) -> tuple[str, t5.T5Config, dict, dict[str, int | None], str]:
    """(tower, encoder config, DualEncoder params, {"query"/"doc": max_seq_length}, a transformer dir).

    Reads a `Router` model with "query" and "document" routes, each a GTR chain, as
    `gtr-jax export` writes for asymmetric towers: a Dense after the Router is one shared
    projection (ade_spl), a Dense inside each route a projection per tower (ade).
    """
    modules = _read_json(os.path.join(directory, "modules.json"))
    router_dir = os.path.join(directory, modules[0].get("path", ""))
    after_router = [(m.get("type", ""), os.path.join(directory, m.get("path", ""))) for m in modules[1:]]
    router = _read_json(os.path.join(router_dir, "router_config.json"))
    structure, types = router.get("structure", {}), router.get("types", {})
    if set(structure) != {"query", "document"}:
        raise UserError(f"{router_dir}/router_config.json: routes are {sorted(structure)}; expected query and document")
    towers = {}
    for route, tower in (("query", "query"), ("document", "doc")):
        chain = [(types.get(name, ""), os.path.join(router_dir, name)) for name in structure[route]]
        towers[tower] = _read_pipeline(directory, chain + after_router)
    config, query_encoder, query_kernel, query_length, transformer_dir = towers["query"]
    doc_config, doc_encoder, doc_kernel, doc_length, _ = towers["doc"]
    if config != doc_config or query_kernel.shape != doc_kernel.shape:
        raise UserError(f"{directory}: the query and document towers differ in shape; gtr_jax towers share one")
    encoders = {"query_encoder": query_encoder, "doc_encoder": doc_encoder}
    lengths = {"query": query_length, "doc": doc_length}
    routed_dense = any(_module_kind(types.get(name, "")) == "Dense" for names in structure.values() for name in names)
    if not routed_dense:
        projections = {"projection": {"dense": {"kernel": query_kernel}}}
        return "ade_spl", config, {**encoders, **projections}, lengths, transformer_dir
    projections = {"query_projection": {"dense": {"kernel": query_kernel}},
                   "doc_projection": {"dense": {"kernel": doc_kernel}}}
    return "ade", config, {**encoders, **projections}, lengths, transformer_dir


def _max_seq_length(transformer_dir: str) -> int | None:
    """The Transformer module's max_seq_length: its own config (older versions) or the tokenizer's."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = os.path.join(transformer_dir, name)
        value = _read_json(path).get(key) if epath.Path(path).exists() else None
        # HF writes a huge sentinel for "no limit".
        if isinstance(value, int) and value < 1_000_000:
            return value
    return None


def copy_vocabulary(source_dir: str, vocab_path: str | None, output_dir: str) -> str:
    """Copy the SentencePiece model (explicit path, else SOURCE/spiece.model) into the output dir."""
    source = vocab_path or os.path.join(source_dir, "spiece.model")
    if not epath.Path(source).exists():
        raise UserError(f"{source}: no SentencePiece vocabulary; pass --vocab=FILE.model")
    target = os.path.join(output_dir, "spiece.model")
    epath.Path(source).copy(target, overwrite=True)
    return target


def import_model_dir(source: str, output: str, *, source_format: str, tower: str = "sde", embed_dim: int = 768,
                     seed: int = 0, vocab: str | None = None, scan_layers: bool = False,
                     overwrite: bool = False) -> dual_encoder.ModelConfig:
    """Write a model directory (step 0) from an HF T5 or a sentence-transformers directory; return its config.

    `source_format` "hf": the T5's encoder in every tower of `tower`, each projection to
    `embed_dim` drawn from `seed` (GTR starts it at random), 512-token inputs (T5's
    pre-training length). "sentence-transformers": its Dense as the projection (none: the
    identity) and its max_seq_length (else 512); a `Router` model brings its own tower layout
    and per-tower lengths instead of `tower`'s. `vocab` replaces SOURCE's spiece.model;
    `scan_layers` stores the layers stacked (T5Config.scan_layers). A non-empty `output` is
    replaced only with `overwrite`.
    """
    source = os.path.abspath(source)
    if not os.path.isdir(source):
        raise UserError(f"{source}: no such directory")
    if source_format == "hf":
        encoder_config = t5_config_from_hf(os.path.join(source, "config.json"))
        encoder = encoder_params_from_hf(source, encoder_config)
        rng = np.random.default_rng(seed)
        projection = rng.normal(0, encoder_config.d_model**-0.5, (encoder_config.d_model, embed_dim)).astype(np.float32)
        vocab_dir, lengths = source, {"query": 512, "doc": 512}
        params = model_params(encoder, projection, tower)
    elif is_router_model(source):
        tower, encoder_config, params, lengths, vocab_dir = read_asymmetric_sentence_transformers(source)
    else:
        encoder_config, encoder, projection, max_length, vocab_dir = read_sentence_transformers(source)
        lengths = {"query": max_length, "doc": max_length}
        params = model_params(encoder, projection, tower)
    lengths = {name: length or 512 for name, length in lengths.items()}
    encoder_config = t5.T5Config(**{**encoder_config.to_dict(), "scan_layers": scan_layers})
    if scan_layers:
        params = {name: t5.stack_layers(tree, encoder_config.num_layers) if name.endswith("encoder") else tree
                  for name, tree in params.items()}
    embed_dim = next(tree["dense"]["kernel"].shape[1] for name, tree in params.items() if name.endswith("projection"))
    model_config = dual_encoder.ModelConfig(encoder_config, tower, embed_dim, lengths["query"], lengths["doc"])
    with checkpoints.atomic_directory(output, overwrite=overwrite) as staging:
        copy_vocabulary(vocab_dir, vocab, staging)
        checkpoints.write_model_dir(staging, model_config, params, step=0)
    return model_config
