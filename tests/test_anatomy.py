"""The model access layer against plain Hugging Face passes, on every supported architecture.

Each tiny random model is checked against its own HF forward pass (float32,
tolerances stated per test): the read-out at layer L equals the model's logits,
the residual stream is the sum of what the branches add, the heads sum to the
output projection, the frozen final norm is linear and exact at the clean
input, and a shared-prefix run equals one plain pass per sequence. SmolLM2 is
checked for real.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIGS, tiny_model
from iclprobe.anatomy import UnsupportedArchitectureError, anatomy_of
from iclprobe.hooks import capture_branches, capture_heads, capture_residual, edit_residual
from iclprobe.prefix import encode_prefix, greedy, greedy_from, run_suffixes, suffix_logprobs
from iclprobe.readout import freeze_final_norm, readout

VOCAB = 40
TOL = 1e-4  # float32, logits of order 1–10
ARCHS = sorted(TINY_CONFIGS)


def _ids(n: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (2, n), generator=g)  # (B, S)


@pytest.fixture(params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param, VOCAB)


@torch.no_grad()
def test_readout_at_the_last_layer_is_the_models_output(arch_model):
    _, model = arch_model
    anatomy = anatomy_of(model)
    ids = _ids()
    with capture_residual(anatomy) as resid:
        logits = model(input_ids=ids).logits  # (B, S, V)
    assert sorted(resid) == list(range(anatomy.n_layers + 1))
    torch.testing.assert_close(readout(anatomy, resid[anatomy.n_layers]), logits, atol=TOL, rtol=0)
    # An earlier layer reads out differently (the lens is not the identity).
    assert (readout(anatomy, resid[1]) - logits).abs().max() > 1e-2
    # Restricted rows are the same numbers as the full read-out's columns.
    rows = torch.tensor([3, 7, 11])
    torch.testing.assert_close(
        readout(anatomy, resid[1], rows), readout(anatomy, resid[1])[..., rows], atol=1e-6, rtol=0
    )


@torch.no_grad()
def test_layer_zero_is_the_scaled_embedding(arch_model):
    name, model = arch_model
    anatomy = anatomy_of(model)
    ids = _ids()
    with capture_residual(anatomy, layers=[0]) as resid:
        model(input_ids=ids)
    embedded = model.get_input_embeddings()(ids)  # Gemma's embedding module applies sqrt(d)
    if name == "gpt2":  # absolute position embeddings are added before block 1
        embedded = embedded + model.transformer.wpe(torch.arange(ids.shape[1]))
    torch.testing.assert_close(resid[0], embedded, atol=1e-5, rtol=0)


@torch.no_grad()
def test_residual_stream_is_the_sum_of_the_branches(arch_model):
    _, model = arch_model
    anatomy = anatomy_of(model)
    with capture_residual(anatomy) as resid, capture_branches(anatomy) as branches:
        model(input_ids=_ids())
    total = resid[0].clone()
    for layer in range(1, anatomy.n_layers + 1):
        total += branches["attn"][layer] + branches["mlp"][layer]
        torch.testing.assert_close(total, resid[layer], atol=TOL, rtol=0)


@torch.no_grad()
def test_heads_sum_to_the_output_projection(arch_model):
    _, model = arch_model
    anatomy = anatomy_of(model)
    projected = {}

    def keep(layer):
        def hook(module, args, output):
            projected[layer] = output

        return hook

    handles = [m.register_forward_hook(keep(i + 1)) for i, m in enumerate(anatomy.attn_out)]
    try:
        with capture_heads(anatomy) as z:
            model(input_ids=_ids())
    finally:
        for h in handles:
            h.remove()
    for layer in range(1, anatomy.n_layers + 1):
        assert z[layer].shape[-2:] == (anatomy.n_heads, anatomy.head_dim)
        per_head = torch.einsum("bshk,hkd->bshd", z[layer], anatomy.head_weights(layer))
        total = per_head.sum(-2)
        if anatomy.head_bias(layer) is not None:
            total = total + anatomy.head_bias(layer)
        torch.testing.assert_close(total, projected[layer], atol=3e-5, rtol=0)


@torch.no_grad()
def test_frozen_final_norm_is_linear_and_exact_at_the_clean_input(arch_model):
    _, model = arch_model
    anatomy = anatomy_of(model)
    with capture_residual(anatomy) as resid:
        model(input_ids=_ids())
    clean = resid[anatomy.n_layers]  # (B, S, d)
    frozen = freeze_final_norm(anatomy, clean)
    parts = torch.stack([resid[0], clean - resid[0]], dim=-2)  # (B, S, 2, d)
    total = frozen(parts).sum(-2)
    if frozen.bias is not None:
        total = total + frozen.bias
    torch.testing.assert_close(total, anatomy.final_norm(clean).float(), atol=1e-5, rtol=0)


@torch.no_grad()
def test_shared_prefix_runs_equal_plain_passes(arch_model):
    _, model = arch_model
    ids = _ids(14)[0].tolist()
    prefix_ids, tails = ids[:9], [ids[9:], ids[9:12], ids[9:10] + [5, 6]]
    prefix = encode_prefix(model, prefix_ids)
    run = run_suffixes(model, prefix, tails)  # rows of 5, 3 and 3 tokens: padded
    for row, tail in enumerate(tails):
        full = model(input_ids=torch.tensor([prefix_ids + tail])).logits[0]  # (P + S, V)
        n = len(tail)
        torch.testing.assert_close(run.logits[row, :n], full[len(prefix_ids) :], atol=TOL, rtol=0)
        torch.testing.assert_close(prefix.last_logits, full[len(prefix_ids) - 1], atol=TOL, rtol=0)
    logps = suffix_logprobs(prefix, run, tails, first=[0, 1, 2])
    full = model(input_ids=torch.tensor([prefix_ids + tails[0]])).logits[0].log_softmax(-1)
    expected = [float(full[len(prefix_ids) - 1 + j, tails[0][j]]) for j in range(len(tails[0]))]
    assert logps[0] == pytest.approx(expected, abs=TOL)
    assert [len(v) for v in logps] == [5, 2, 1]


@torch.no_grad()
def test_greedy_over_a_shared_prefix_equals_generate(arch_model):
    _, model = arch_model
    ids = _ids(14)[0].tolist()
    prefix_ids, queries = ids[:8], [ids[8:12], ids[8:10]]  # padded rows
    got = greedy(model, encode_prefix(model, prefix_ids), queries, max_new_tokens=4)
    for query, tokens in zip(queries, got, strict=True):
        start = torch.tensor([prefix_ids + query])
        expected = model.generate(
            start, attention_mask=torch.ones_like(start), max_new_tokens=4, do_sample=False
        )[0, start.shape[1] :]
        assert tokens == expected.tolist()


def _plain_greedy(model, start: list[int], n: int) -> list[int]:
    """Reference: n greedy tokens after `start`, one full pass per token, no cache.

    (`generate` would stop at the tiny models' EOS, token 0, which they may predict.)
    """
    ids = list(start)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(start) :]


@torch.no_grad()
def test_greedy_branching_off_a_run_equals_generate(arch_model):
    _, model = arch_model
    ids = _ids(16)[0].tolist()
    prefix_ids, tails = ids[:8], [ids[8:14], ids[8:10], ids[8:12]]  # padded rows
    prefix = encode_prefix(model, prefix_ids)
    # Row 2 branches mid-suffix, row 0 right after the prefix, row 1 after its last token
    # (into a pad slot); each feeds its own token there and decodes on.
    rows, cut, fed = [2, 0, 1], [2, 0, 2], [4, 5, 7]
    run = run_suffixes(model, prefix, tails)
    got = greedy_from(model, prefix, run, rows, cut, [[11, t] for t in fed], max_new_tokens=5)
    for row, c, token, tokens in zip(rows, cut, fed, got, strict=True):
        assert tokens == [
            11,
            token,
            *_plain_greedy(model, prefix_ids + tails[row][:c] + [token], 3),
        ]

    # Rows that stop at different steps (here after 2, 3 and 5 tokens) leave the batch.
    def stop(tokens):
        return len(tokens) >= tokens[0] % 4 + 2

    run = run_suffixes(model, prefix, tails)
    got = greedy_from(model, prefix, run, rows, cut, [[t] for t in fed], 8, stop=stop)
    for row, c, token, tokens in zip(rows, cut, fed, got, strict=True):
        n = token % 4 + 1
        assert tokens == [token, *_plain_greedy(model, prefix_ids + tails[row][:c] + [token], n)]


@torch.no_grad()
def test_editing_hooks_are_removed_even_on_error():
    model = tiny_model("llama", VOCAB)
    anatomy = anatomy_of(model)
    ids = _ids()
    clean = model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="boom"), edit_residual(anatomy, 1, torch.zeros_like):
        raise RuntimeError("boom")
    torch.testing.assert_close(model(input_ids=ids).logits, clean, atol=0, rtol=0)
    with edit_residual(anatomy, 1, torch.zeros_like):
        edited = model(input_ids=ids).logits
    assert (edited - clean).abs().max() > 1e-3
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in anatomy.blocks)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedArchitectureError, match=r"'bloom'.*supported: gemma2, "):
        anatomy_of(model)


@pytest.mark.real_model
@torch.no_grad()
def test_smollm2_anatomy(smollm2):
    model, tokenizer, _ = smollm2
    anatomy = anatomy_of(model)
    assert (anatomy.n_layers, anatomy.n_heads, anatomy.head_dim) == (30, 9, 64)
    ids = torch.tensor([tokenizer("(3, 3), (7, 7), (12,")["input_ids"]])
    with capture_residual(anatomy) as resid, capture_heads(anatomy, layers=[5]) as z:
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(readout(anatomy, resid[30]), logits, atol=TOL, rtol=0)
    assert z[5].shape == (1, ids.shape[1], 9, 64)  # one slice per query head (3 KV heads)
