"""A tiny random-weight Llama, built locally so that no test downloads weights from a hub.

The model is nonsense (random weights), but it has the exact shape of a real Hugging Face
Llama checkpoint: vLLM loads it through its ordinary Llama path, tokenizes with a real
byte-level BPE tokenizer and applies a real chat template. That is all the serving tests
need, and it loads in seconds on two CPU cores.

Everything is derived from fixed seeds and text in this module, so two builds give
byte-identical weights and tokenizer files. Bump ``GENERATOR_VERSION`` whenever the output
changes: the marker file carries it, and ``ensure_tiny_model`` rebuilds on a mismatch.

Usage: ``ensure_tiny_model(Path(...))`` from tests, or
``python -m tests.support.tinymodel --out DIR`` from a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

GENERATOR_VERSION = 1
MARKER = f".tinymodel-v{GENERATOR_VERSION}"
SERVED_MODEL_NAME = "tiny-llama"

# Shapes. head_dim = hidden / heads = 64: vLLM's CPU attention rejects head_dim 16.
VOCAB_SIZE = 512
HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 512
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
MAX_POSITIONS = 2048
WEIGHT_SEED = 20261125
INIT_STD = 0.02

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]  # ids 0..5, in this order

# Role markers are single special tokens; each turn ends with EOS so that a real model
# trained on this format would stop after its answer. bos_token starts the prompt
# because vLLM tokenizes rendered chat prompts without adding special tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\n' }}{% endif %}"
)

# Training text for the tokenizer. Plain English with some code and numbers, so that the
# 500-odd merges are ordinary subwords; any fixed text would do.
_CORPUS = """\
The operator watches LLMService objects and renders each one into a RayService.
KubeRay turns the RayService into a Ray cluster, and Ray Serve starts the model replicas.
Every replica runs a vLLM engine that loads the model, tokenizes the prompt and streams
tokens back to the client through an OpenAI compatible API.
A request arrives at the proxy, the router picks a replica, and the replica answers.
When the load grows, the autoscaler adds replicas; when it falls, it removes them again.
The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump!
Hello, world! Hello there. How are you today? I am fine, thank you, and you?
What is the capital of France? The capital of France is Paris.
What is two plus two? Two plus two is four. Three times three is nine.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 128 256 512 1024 2048 4096.
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

{"model": "tiny-llama", "messages": [{"role": "user", "content": "Say hello."}]}
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: tiny-llama
spec:
  serveConfigV2: |
    applications:
      - name: llm
        route_prefix: /
The system prompt says: you are a helpful assistant. The user asks a question.
The assistant answers briefly and politely, then stops.
Once upon a time there was a small model that lived on a laptop with two cores.
It could not say much, but it always answered, and it answered the same way every time.
"""


def _train_tokenizer() -> Tokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2 style) on the built-in corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so any UTF-8 text (and any token id the random model
        # emits) encodes and decodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus changes no merge order, but gives each pair enough counts that
    # the trainer can fill the whole vocabulary.
    tok.train_from_iterator([_CORPUS] * 8, trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {VOCAB_SIZE}")
    # Plain `encode(text)` (completions API) starts with BOS, like Llama tokenizers.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def _weights() -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    """Random Llama weights under Hugging Face's tensor names (float32: AVX2 CPUs lack bf16)."""
    # numpy's PCG64 stream is stable across numpy versions for a given seed, unlike
    # framework initialisers, so the weights do not change when torch does.
    rng = np.random.Generator(np.random.PCG64(WEIGHT_SEED))

    def normal(*shape: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return (rng.standard_normal(shape) * INIT_STD).astype(np.float32)

    def ones(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.ones(n, dtype=np.float32)

    q_dim, kv_dim = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    tensors = {"model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN_SIZE)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}"
        tensors |= {
            f"{p}.input_layernorm.weight": ones(HIDDEN_SIZE),
            f"{p}.self_attn.q_proj.weight": normal(q_dim, HIDDEN_SIZE),
            f"{p}.self_attn.k_proj.weight": normal(kv_dim, HIDDEN_SIZE),
            f"{p}.self_attn.v_proj.weight": normal(kv_dim, HIDDEN_SIZE),
            f"{p}.self_attn.o_proj.weight": normal(HIDDEN_SIZE, q_dim),
            f"{p}.post_attention_layernorm.weight": ones(HIDDEN_SIZE),
            f"{p}.mlp.gate_proj.weight": normal(INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{p}.mlp.up_proj.weight": normal(INTERMEDIATE_SIZE, HIDDEN_SIZE),
            f"{p}.mlp.down_proj.weight": normal(HIDDEN_SIZE, INTERMEDIATE_SIZE),
        }
    tensors["model.norm.weight"] = ones(HIDDEN_SIZE)
    tensors["lm_head.weight"] = normal(VOCAB_SIZE, HIDDEN_SIZE)
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _build(out: Path) -> None:
    tok = _train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in (BOS, EOS, PAD)}

    _write_json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": HIDDEN_SIZE,
            "intermediate_size": INTERMEDIATE_SIZE,
            "num_hidden_layers": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "num_key_value_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITIONS,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "initializer_range": INIT_STD,
            "dtype": "float32",
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD],
        },
    )
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]},
    )
    tok.save(str(out / "tokenizer.json"))
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": ROLE_TOKENS,
            "model_max_length": MAX_POSITIONS,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    # Newer transformers read the template from this file; older ones from the config above.
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    _write_json(
        out / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
    )
    save_file(_weights(), str(out / "model.safetensors"), metadata={"format": "pt"})


def is_complete(path: Path) -> bool:
    """True when `path` holds a model written by this generator version."""
    return (path / MARKER).is_file()


def ensure_tiny_model(path: Path) -> Path:
    """Returns `path`, first building the tiny model there unless it is already complete.

    The model is written into a sibling temporary folder and renamed into place with
    the marker written last, so an interrupted build never looks complete.
    """
    path = path.resolve()
    if is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(tmp)
        (tmp / MARKER).write_text(f"tiny-llama generator v{GENERATOR_VERSION}\n")
        shutil.rmtree(path, ignore_errors=True)  # an older version or a partial build
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="model folder to create")
    args = parser.parse_args(argv)
    out = ensure_tiny_model(args.out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
