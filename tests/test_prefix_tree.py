"""Prefixes cropped from one pass, and trees of continuations run one token per node.

Against plain Hugging Face passes in float32 on a tiny random model of every
supported architecture (tolerance 1e-4 on logits of order 1–10).
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIGS, tiny_model
from iclprobe.anatomy import anatomy_of
from iclprobe.hooks import capture_residual
from iclprobe.prefix import Rows, encode_prefixes, extend, run_suffixes

VOCAB = 40
TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: with two threads on a shared 2-core machine each pass waits on the other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def test_a_tree_run_level_by_level_equals_one_plain_pass_per_leaf(model):
    """Root → {a, b}; a → {a1, a2, a3}, b → {b1}: two levels, five rows, no pass per leaf."""
    ids = _ids(11)
    (prefix,) = encode_prefixes(model, ids + [5, 5], [11])  # cropped: the tail is not context
    level1 = extend(model, Rows.of(prefix), parents=[0, 0], tokens=[4, 9], logits=True)
    anatomy = anatomy_of(model)
    with capture_residual(anatomy, select=lambda t: t[:, -1]) as resid:
        level2 = extend(model, level1, parents=[0, 0, 0, 1], tokens=[1, 2, 3, 6], logits=True)
    leaves = [[4, 1], [4, 2], [4, 3], [9, 6]]
    for row, leaf in enumerate(leaves):
        plain = model(input_ids=torch.tensor([ids + leaf])).logits[0]  # (13, V)
        torch.testing.assert_close(level2.logits[row], plain[-1], atol=TOL, rtol=0)
        torch.testing.assert_close(level1.logits[row // 3], plain[-2], atol=TOL, rtol=0)
    assert level2.length == 13
    # The hooks saw one position per row: (B, d) at every layer.
    assert resid[anatomy.n_layers].shape == (4, anatomy.d_model)
    # The parents' rows are left as they were: extending them again gives the same.
    again = extend(model, level1, parents=[1], tokens=[6], logits=True)
    torch.testing.assert_close(again.logits[0], level2.logits[3], atol=TOL, rtol=0)
