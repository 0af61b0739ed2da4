"""Prefixes cropped from one pass, and trees of continuations run in one pass over a cache.

Against plain Hugging Face passes in float32 on a tiny random model of every
supported architecture (tolerance 1e-4 on logits of order 1–10).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import TINY_CONFIGS, tiny_model
from iclprobe.anatomy import anatomy_of
from iclprobe.hooks import capture_residual
from iclprobe.prefix import encode_prefixes, run_suffixes, run_tree

VOCAB = 40
TOL = 1e-4


# Tiny matrices: with two threads on a shared 2-core machine each pass waits on the other.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=sorted(TINY_CONFIGS))
def model(request):
    return tiny_model(request.param, VOCAB)


def _ids(n: int, seed: int = 3) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def test_prefixes_cropped_from_one_pass_continue_like_plain_passes(model):
    ids = _ids(15)
    prefixes = encode_prefixes(model, ids, [13, 6, 15])
    tail = [7, 8, 9]
    for prefix in prefixes:
        n = prefix.length
        assert prefix.ids == ids[:n]
        plain = model(input_ids=torch.tensor([ids[:n] + tail])).logits[0]  # (n + 3, V)
        torch.testing.assert_close(prefix.last_logits, plain[n - 1], atol=TOL, rtol=0)
        run = run_suffixes(model, prefix, [tail])
        torch.testing.assert_close(run.logits[0], plain[n:], atol=TOL, rtol=0)


@torch.no_grad()
def test_a_tree_in_one_pass_equals_one_plain_pass_per_path(model):
    """Prefix → {a, b}; a → {a1, a2, a3}; b → {b1} → {b1x}: seven nodes, one pass."""
    ids = _ids(11)
    (prefix,) = encode_prefixes(model, ids + [5, 5], [11])  # cropped: the tail is not context
    tokens = [4, 9, 1, 2, 3, 6, 7]
    parents = [-1, -1, 0, 0, 0, 1, 5]
    anatomy = anatomy_of(model)
    with capture_residual(anatomy, select=lambda t: t[0]) as resid:
        logits = run_tree(model, prefix, tokens, parents, logits=True)  # (7, V)
    paths = [[4], [9], [4, 1], [4, 2], [4, 3], [9, 6], [9, 6, 7]]
    for node, path in enumerate(paths):
        plain = model(input_ids=torch.tensor([ids + path])).logits[0]  # (11 + depth, V)
        torch.testing.assert_close(logits[node], plain[-1], atol=TOL, rtol=0)
    assert resid[anatomy.n_layers].shape == (7, anatomy.d_model)  # the hooks saw every node
    # The prefix's cache is left as it was: the same tree again gives the same logits.
    again = run_tree(model, prefix, tokens, parents, logits=True)
    torch.testing.assert_close(again, logits, atol=0, rtol=0)


@torch.no_grad()
def test_trees_after_shorter_contexts_see_only_their_context(model):
    """One pass: a tree after ids[:6] and one after all 11 ids, as for two examples."""
    ids = _ids(11)
    (prefix,) = encode_prefixes(model, ids, [11])
    tokens, parents = [4, 1, 4, 2], [-1, 0, -1, 2]
    logits = run_tree(model, prefix, tokens, parents, context=[6, 6, 11, 11], logits=True)
    for node, sequence in enumerate([ids[:6] + [4], ids[:6] + [4, 1], ids + [4], ids + [4, 2]]):
        plain = model(input_ids=torch.tensor([sequence])).logits[0, -1]  # (V,)
        torch.testing.assert_close(logits[node], plain, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="contexts"):
        run_tree(model, prefix, [4], [-1], context=[12])


@torch.no_grad()
def test_a_tree_respects_a_sliding_window():
    """Gemma 2 with a window of 6: the deepest node must not see the first context tokens."""
    torch.manual_seed(0)
    config = TINY_CONFIGS["gemma2"](VOCAB)
    config.sliding_window = 6
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    assert "sliding_attention" in model.config.layer_types
    ids = _ids(5)
    (prefix,) = encode_prefixes(model, ids, [5])
    logits = run_tree(model, prefix, [4, 1, 2], [-1, 0, 1], logits=True)
    plain = model(input_ids=torch.tensor([ids + [4, 1, 2]])).logits[0]  # (8, V)
    torch.testing.assert_close(logits, plain[-3:], atol=TOL, rtol=0)
    (long,) = encode_prefixes(model, _ids(6), [6])
    with pytest.raises(ValueError, match="sliding window"):
        run_tree(model, long, [4], [-1])
