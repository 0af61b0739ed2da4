"""The token tree against plain Hugging Face passes, on every supported architecture.

Every node's logits must equal a plain float32 pass over the prefix and the
path to that node (tolerance 1e-4 on logits of order 1–10), whatever else the
tree holds, across several `add` calls and after a fork; residual-stream hooks
see one slot per new node.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIGS, tiny_model
from iclprobe.anatomy import anatomy_of
from iclprobe.hooks import capture_residual
from iclprobe.tree import ROOT, TokenTree

VOCAB = 40
TOL = 1e-4


@pytest.fixture(params=sorted(TINY_CONFIGS))
def model(request):
    return tiny_model(request.param, VOCAB)


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n,), generator=g).tolist()


@torch.no_grad()
def _plain(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,)


@torch.no_grad()
def test_every_node_sees_only_its_own_path(model):
    prefix = _tokens(9, seed=1)
    a, b, c, d, e = _tokens(5, seed=2)
    tree = TokenTree(model, prefix)
    torch.testing.assert_close(tree.prefix_logits, _plain(model, prefix), atol=TOL, rtol=0)
    # Two branches from the prefix, one with a child; then a second call that
    # extends one branch and starts a third.
    first = tree.add([a, b, c], [ROOT, 0, ROOT])
    second = tree.add([d, e], [1, ROOT])
    paths = {0: [a], 1: [a, b], 2: [c], 3: [a, b, d], 4: [e]}
    logits = torch.cat([first, second])  # (5, V)
    for node, path in paths.items():
        torch.testing.assert_close(logits[node], _plain(model, prefix + path), atol=TOL, rtol=0)
    assert [tree.depth(n) for n in range(5)] == [1, 2, 1, 3, 1]


@torch.no_grad()
def test_a_fork_grows_apart_from_its_tree(model):
    prefix = _tokens(7, seed=3)
    a, b, c = _tokens(3, seed=4)
    tree = TokenTree(model, prefix)
    tree.add([a], [ROOT])
    twin = tree.fork()
    on_twin = twin.add([b], [0])
    on_tree = tree.add([c], [0])
    torch.testing.assert_close(on_twin[0], _plain(model, prefix + [a, b]), atol=TOL, rtol=0)
    torch.testing.assert_close(on_tree[0], _plain(model, prefix + [a, c]), atol=TOL, rtol=0)
    assert (tree.size, twin.size) == (2, 2)


@torch.no_grad()
def test_hooks_see_one_slot_per_new_node(model):
    anatomy = anatomy_of(model)
    prefix = _tokens(6, seed=5)
    a, b = _tokens(2, seed=6)
    tree = TokenTree(model, prefix)
    with capture_residual(anatomy, layers=[1]) as resid:
        tree.add([a, b], [ROOT, 0])
    with capture_residual(anatomy, layers=[1]) as plain:
        model(input_ids=torch.tensor([prefix + [a, b]]))
    assert resid[1].shape == (1, 2, anatomy.d_model)
    torch.testing.assert_close(resid[1][0], plain[1][0, -2:], atol=TOL, rtol=0)


def test_parents_must_come_first():
    tree = TokenTree(tiny_model("llama", VOCAB), _tokens(4, seed=7))
    with pytest.raises(ValueError, match="parent 1 is not an earlier node"):
        tree.add([3, 4], [1, ROOT])


@torch.no_grad()
def test_more_nodes_than_a_sliding_window_holds():
    """Gemma 2 attends within a window in every other layer: the tree keeps every node."""
    from transformers import AutoModelForCausalLM

    config = TINY_CONFIGS["gemma2"](VOCAB)
    config.sliding_window = 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    prefix = _tokens(6, seed=8)
    siblings = _tokens(12, seed=9)  # 6 + 12 positions: more than the window
    tree = TokenTree(model, prefix)
    logits = tree.add(siblings, [ROOT] * len(siblings))
    for token, row in zip(siblings, logits, strict=True):
        torch.testing.assert_close(row, _plain(model, [*prefix, token]), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="longer than the model's sliding window of 8"):
        tree.add([1, 2, 3], [0, 12, 13])


@torch.no_grad()
def test_greedy_from_many_nodes_equals_generate(model):
    prefix = _tokens(8, seed=10)
    a, b = _tokens(2, seed=11)
    tree = TokenTree(model, prefix)
    tree.add([a, b], [ROOT, 0])
    got = tree.greedy([ROOT, 0, 1], max_new_tokens=4, stop=lambda k, t: k == 2 and len(t) == 2)
    for start, path, n in ((ROOT, [], 4), (0, [a], 4), (1, [a, b], 2)):
        ids = torch.tensor([prefix + path])
        expected = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )[0, ids.shape[1] :]
        assert got[[ROOT, 0, 1].index(start)] == expected.tolist()


@torch.no_grad()
def test_an_empty_prefix_starts_each_root_branch_at_position_zero(model):
    """Prompts that share no first token (no BOS, different first digits) share no prefix."""
    a, b, c, d = _tokens(4, seed=7)
    tree = TokenTree(model, [])
    logits = tree.add([a, b, c, d], [ROOT, 0, ROOT, 2])
    for node, path in {0: [a], 1: [a, b], 2: [c], 3: [c, d]}.items():
        torch.testing.assert_close(logits[node], _plain(model, path), atol=TOL, rtol=0)
    (e,) = _tokens(1, seed=8)
    torch.testing.assert_close(tree.add([e], [1])[0], _plain(model, [a, b, e]), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="prefix is empty"):
        tree.logits(ROOT)
