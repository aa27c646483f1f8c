"""A trained model as a sentence-transformers directory or a jax.export artifact (`gtr-jax export`).

sentence-transformers (`SentenceTransformer(DIR)` loads it with no code of ours):
  sde           one model: T5 encoder (HF T5EncoderModel files at the root) -> 1_Pooling (mean)
                -> 2_Dense (no bias: the projection) -> 3_Normalize
  ade, ade_spl  a `Router` (sentence-transformers >= 5.0) with a "query" and a "document" route,
                each a T5 encoder and mean Pooling; ade puts a Dense in each route, ade_spl one
                shared Dense after the Router; then Normalize. `encode_query` / `encode_document`
                pick the tower; a plain `encode` uses the document route.
  The vocabulary is the SentencePiece model as slow-tokenizer files (spiece.model,
  tokenizer_config.json), which transformers converts to the same ids as gtr_jax's tokenizer.
  `gtr-jax import --from=sentence-transformers` reads every layout back.

jax: `jax.export`-serialized functions, one per tower, with a symbolic batch size and the
tower's fixed max length, lowered for cpu, cuda and tpu; the parameters as safetensors; the
SentencePiece model. `gtr_jax.interop.serving` loads it with jax, numpy and sentencepiece only.

Both write a README.md model card and go through `checkpoints.atomic_directory`.

jax, numpy and the gtr_jax modules that pull in flax are imported inside the functions
that use them: the CLI imports this module for its FORMATS and PLATFORMS, and `gtr-jax
--help` or any other subcommand should not pay seconds of imports for it.
"""

import dataclasses
import json
import os

from etils import epath

from gtr_jax.errors import UserError

FORMATS = ("sentence-transformers", "jax")
PLATFORMS = ("cpu", "cuda", "tpu")
# The pre-5.x names: every sentence-transformers version maps them to its own classes.
ST_TYPE = "sentence_transformers.models.{}"
ROUTES = {"query": "query", "document": "doc"}


def export_model(model_dir: str, output: str, *, export_format: str, step: int | None = None,
                 vocab: str | None = None, platforms=PLATFORMS, overwrite: bool = False):
    """Restore a checkpoint and write it to `output` in a serving format; return (its ModelConfig, step).

    `export_format` is one of FORMATS; `platforms` (jax only) those to lower for; `vocab`
    defaults to MODEL_DIR/spiece.model. A non-empty `output` is replaced only with `overwrite`.
    """
    import jax
    import numpy as np

    from gtr_jax.train import checkpoints
    from gtr_jax.data.vocab import Tokenizer, model_dir_vocabulary

    model_config = checkpoints.load_model_config(model_dir)
    # Serving formats hold one tensor per layer; a scanned checkpoint is unstacked on restore.
    encoder = dataclasses.replace(model_config.encoder, scan_layers=False, remat=False)
    model_config = dataclasses.replace(model_config, encoder=encoder)
    params, step = checkpoints.restore_params(model_dir, step, model_config=model_config)
    params = jax.tree.map(np.asarray, params)
    vocab_path = vocab or model_dir_vocabulary(model_dir)
    pieces = Tokenizer(vocab_path).vocab_size
    if pieces > encoder.vocab_size:
        raise UserError(f"{vocab_path}: has {pieces} pieces, more than the model's {encoder.vocab_size} embeddings")
    card = model_card(model_dir, model_config, step, export_format)
    with checkpoints.atomic_directory(output, overwrite=overwrite) as staging:
        if export_format == "jax":
            write_jax(staging, model_config, params, vocab_path, platforms)
        else:
            write_sentence_transformers(staging, model_config, params, vocab_path)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
    return model_config, step


# ---------------------------------------------------------------- sentence-transformers


def _write_json(path: str, content):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
        f.write("\n")


def _write_transformer(directory: str, model_config, encoder: dict, vocab_path: str, max_length: int):
    """An HF T5EncoderModel with its tokenizer, as a sentence-transformers Transformer module."""
    import safetensors.numpy
    import sentencepiece

    from gtr_jax.interop import hf_weights, serving

    os.makedirs(directory, exist_ok=True)
    config = model_config.encoder
    _write_json(os.path.join(directory, "config.json"), hf_weights.hf_config(config))
    # transformers refuses safetensors files without a framework tag.
    safetensors.numpy.save_file(hf_weights.encoder_params_to_hf(encoder, config),
                                os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    vocabulary = os.path.join(directory, "spiece.model")
    epath.Path(vocab_path).copy(vocabulary)
    processor = sentencepiece.SentencePieceProcessor(model_file=vocabulary)
    _write_json(os.path.join(directory, "tokenizer_config.json"), {
        "tokenizer_class": "T5Tokenizer",
        "pad_token": processor.id_to_piece(serving.PAD_ID),
        "eos_token": processor.id_to_piece(serving.EOS_ID),
        "unk_token": processor.id_to_piece(processor.unk_id()),
        # No sentinel tokens: gtr_jax tokenizes with the bare SentencePiece model, and an
        # added "<extra_id_0>" would tokenize differently in text that contains it.
        "extra_ids": 0,
        "additional_special_tokens": [],
        "legacy": True,
        "model_max_length": max_length,
    })
    _write_json(os.path.join(directory, "sentence_bert_config.json"), {"max_seq_length": max_length, "do_lower_case": False})


def _write_pooling(directory: str, d_model: int):
    os.makedirs(directory, exist_ok=True)
    _write_json(os.path.join(directory, "config.json"), {
        "word_embedding_dimension": d_model, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    })


def _write_dense(directory: str, kernel):
    """The projection as a bias-free Dense; torch's Linear stores [out, in], ours is [in, out]."""
    import numpy as np
    import safetensors.numpy

    from gtr_jax.interop import hf_weights

    os.makedirs(directory, exist_ok=True)
    _write_json(os.path.join(directory, "config.json"), {
        "in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]), "bias": False,
        "activation_function": hf_weights.DENSE_IDENTITY,
    })
    weight = np.ascontiguousarray(np.asarray(kernel, np.float32).T)
    safetensors.numpy.save_file({"linear.weight": weight}, os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})


def _module(index: int, path: str, kind: str) -> dict:
    return {"idx": index, "name": str(index), "path": path, "type": ST_TYPE.format(kind)}


def write_sentence_transformers(output_dir: str, model_config, params: dict, vocab_path: str):
    """Write an unscanned DualEncoder's params as a sentence-transformers model directory."""
    d_model = model_config.encoder.d_model
    _write_json(os.path.join(output_dir, "config_sentence_transformers.json"), {"similarity_fn_name": "cosine"})
    if model_config.tower == "sde":
        # SentenceTransformer has one truncation length; the longer one keeps documents whole.
        _write_transformer(output_dir, model_config, params["encoder"], vocab_path, model_config.doc_max_length)
        _write_pooling(os.path.join(output_dir, "1_Pooling"), d_model)
        _write_dense(os.path.join(output_dir, "2_Dense"), params["projection"]["dense"]["kernel"])
        os.makedirs(os.path.join(output_dir, "3_Normalize"))
        modules = [_module(0, "", "Transformer"), _module(1, "1_Pooling", "Pooling"), _module(2, "2_Dense", "Dense"),
                   _module(3, "3_Normalize", "Normalize")]
        _write_json(os.path.join(output_dir, "modules.json"), modules)
        return

    types, structure = {}, {}
    for route, tower in ROUTES.items():
        names = [f"{route}_0_Transformer", f"{route}_1_Pooling"]
        _write_transformer(os.path.join(output_dir, names[0]), model_config, params[f"{tower}_encoder"], vocab_path,
                           model_config.max_length(tower))
        _write_pooling(os.path.join(output_dir, names[1]), d_model)
        if model_config.tower == "ade":
            names.append(f"{route}_2_Dense")
            _write_dense(os.path.join(output_dir, names[2]), params[f"{tower}_projection"]["dense"]["kernel"])
        structure[route] = names
        types.update({name: ST_TYPE.format(name.rsplit("_", 1)[1]) for name in names})
    _write_json(os.path.join(output_dir, "router_config.json"), {
        "types": types,
        "structure": structure,
        # sentence-transformers' own default for query/document routers.
        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}},
    })
    modules = [_module(0, "", "Router")]
    if model_config.tower == "ade_spl":
        _write_dense(os.path.join(output_dir, "1_Dense"), params["projection"]["dense"]["kernel"])
        modules.append(_module(1, "1_Dense", "Dense"))
    normalize = f"{len(modules)}_Normalize"
    os.makedirs(os.path.join(output_dir, normalize))
    modules.append(_module(len(modules), normalize, "Normalize"))
    _write_json(os.path.join(output_dir, "modules.json"), modules)


# ---------------------------------------------------------------- jax.export


def write_jax(output_dir: str, model_config, params: dict, vocab_path: str, platforms=PLATFORMS):
    """Write per-tower `jax.export` functions, the params and the vocabulary for `gtr_jax.interop.serving`."""
    import jax
    import jax.numpy as jnp
    import safetensors.numpy

    from gtr_jax.model import dual_encoder
    from gtr_jax.interop import serving

    model = model_config.build()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    batch, = jax.export.symbolic_shape("b")
    towers = {}
    for tower in serving.TOWERS:
        length = model_config.max_length(tower)

        def embed(params, tokens, tower=tower):
            return model.apply({"params": params}, tokens, tower, method=dual_encoder.DualEncoder.encode)

        exported = jax.export.export(jax.jit(embed), platforms=platforms)(
            abstract, jax.ShapeDtypeStruct((batch, length), jnp.int32))
        function = f"{tower}.jaxexport"
        with open(os.path.join(output_dir, function), "wb") as f:
            f.write(exported.serialize())
        towers[tower] = {"function": function, "max_length": length}
    safetensors.numpy.save_file(serving.flatten_params(params), os.path.join(output_dir, serving.PARAMS_FILE))
    epath.Path(vocab_path).copy(os.path.join(output_dir, serving.VOCABULARY_FILE))
    _write_json(os.path.join(output_dir, serving.CONFIG_FILE), {
        "format_version": serving.FORMAT_VERSION,
        "tower": model_config.tower,
        "embed_dim": model_config.embed_dim,
        "platforms": list(platforms),
        "towers": towers,
        "model_config": json.loads(model_config.to_json()),
    })


# ---------------------------------------------------------------- model card


def _gin_bindings(model_dir: str) -> dict[str, str]:
    """`name = value` lines of the run's operative gin config, macros resolved; {} if none."""
    path = epath.Path(model_dir, "config.gin")
    if not path.exists():
        return {}
    bindings = {}
    for line in path.read_text().splitlines():
        if " = " in line and not line.startswith(("#", "import ", " ")):
            name, value = line.split(" = ", 1)
            bindings[name] = value
    return {name: bindings.get(value[1:], value) if value.startswith("%") else value for name, value in bindings.items()}


def _metrics(model_dir: str, step: int) -> tuple[dict, dict]:
    """(training metrics logged at `step`, newest evaluation metrics up to `step`) from metrics.jsonl."""
    path = epath.Path(model_dir, "metrics.jsonl")
    train, evaluation = {}, {}
    if not path.exists():
        return train, evaluation
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if row.get("step", step + 1) > step:
            continue
        scores = {k: v for k, v in row.items() if k.startswith("eval/")}
        evaluation = scores or evaluation
        if row["step"] == step:
            train = {k: v for k, v in row.items() if k in ("loss", "acc_q2p", "acc_p2q", "temperature")}
    return train, evaluation


def _loss_description(bindings: dict[str, str]) -> str:
    """One line on the contrastive loss a run was configured with (unbound arguments at their defaults)."""

    def option(name: str, default: str | None = None) -> str | None:
        # Runs configured before LossConfig bound contrastive_loss's arguments directly.
        return bindings.get(f"LossConfig.{name}", bindings.get(f"contrastive_loss.{name}", default))

    same_tower = option("same_tower", "None").strip("'\"")
    parts = ["in-batch softmax contrastive loss (gtr_jax.losses.contrastive_loss)"]
    if same_tower != "None":
        parts.append(f"SamToNe same-tower negatives on the {same_tower} side")
    if option("bidirectional") == "True":
        parts.append("bidirectional")
    if option("pair_alpha", "None") != "None":
        parts.append(f"PAIR α = {option('pair_alpha')}")
    temperature = bindings.get("train.temperature", "0.01")
    parts.append(f"τ = {temperature}" + (" (learnt from there)" if bindings.get("train.learn_temperature") == "True" else ""))
    return ", ".join(parts)


def model_card(model_dir: str, model_config, step: int, export_format: str) -> str:
    """README.md of an exported model: architecture, usage, and what is known of its training."""
    cfg = model_config.encoder
    version = "T5.1.1 (gated-GELU)" if cfg.feed_forward == "gated-gelu" else "T5 v1.0 (ReLU)"
    towers = {"sde": "one encoder and one projection shared by queries and documents (SDE)",
              "ade": "a query encoder + projection and a document encoder + projection (ADE)",
              "ade_spl": "a query encoder and a document encoder sharing one projection (ADE-SPL)"}
    lines = ["---", "library_name: sentence-transformers" if export_format != "jax" else "library_name: jax",
             "pipeline_tag: sentence-similarity", "tags:", "- gtr", "- dual-encoder", "- sentence-similarity", "---", "",
             f"# GTR-style dual encoder ({model_config.tower}, step {step})", "",
             "Exported by `gtr-jax export` from a gtr_jax model directory.", "", "## Architecture", "",
             f"- Encoder: {version}, d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads of {cfg.d_kv}, "
             f"d_ff {cfg.d_ff}, vocabulary {cfg.vocab_size}.",
             f"- Towers: {towers[model_config.tower]}.",
             f"- Mean pooling over non-padding tokens (EOS included), a bias-free projection to {model_config.embed_dim}, "
             "L2 normalization. Score = dot product = cosine.",
             f"- Max length (tokens, EOS included): queries {model_config.query_max_length}, "
             f"documents {model_config.doc_max_length}.", "", "## Usage", "", "```python"]
    if export_format == "jax":
        lines += ["from gtr_jax.interop import serving", "", "model = serving.load(DIR)",
                  "queries = model.encode(query_texts, tower='query')", "docs = model.encode(doc_texts, tower='doc')",
                  "scores = queries @ docs.T"]
    elif model_config.tower == "sde":
        lines += ["from sentence_transformers import SentenceTransformer", "", "model = SentenceTransformer(DIR)",
                  "embeddings = model.encode(texts)  # unit vectors", "scores = model.similarity(embeddings, embeddings)"]
    else:
        lines += ["from sentence_transformers import SentenceTransformer  # >= 5.0, for the Router", "",
                  "model = SentenceTransformer(DIR)", "queries = model.encode_query(query_texts)",
                  "docs = model.encode_document(doc_texts)  # plain encode() uses the document tower too",
                  "scores = model.similarity(queries, docs)"]
    lines += ["```", ""]
    if export_format != "jax" and model_config.tower == "sde":
        lines += [f"sentence-transformers truncates every text at {model_config.doc_max_length} tokens; "
                  f"gtr_jax truncates queries at {model_config.query_max_length}.", ""]
    if export_format != "jax":
        lines += ["Loading the tokenizer needs `sentencepiece` and `protobuf` (transformers converts spiece.model).", ""]

    bindings = _gin_bindings(model_dir)
    lines += ["## Training", ""]
    if not bindings:
        lines += ["No training configuration in the model directory (an imported checkpoint?).", ""]
    else:
        task = (bindings.get("MIXTURE_OR_TASK_NAME") or bindings.get("batch_iterator.task_or_mixture_name")
                or bindings.get("train.input_fn", "unknown")).strip("'\"")
        lines += [f"- Task: {task}", f"- Loss: {_loss_description(bindings)}",
                  f"- Steps: {step} of {bindings.get('train.train_steps', 'unknown')}, "
                  f"batch size {bindings.get('train.batch_size', 'unknown')}", ""]
    train, evaluation = _metrics(model_dir, step)
    if train or evaluation:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} (train, step {step}) | {value:.4g} |" for name, value in sorted(train.items())]
        lines += [f"| {name} | {value:.4g} |" for name, value in sorted(evaluation.items())]
        lines.append("")
    return "\n".join(lines)
