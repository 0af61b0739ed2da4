"""The heads stage against plain Hugging Face passes, on every supported architecture.

- Direct attribution: the components of a replicate's table add up to the centred logit of
  the target, computed from the model's own logits (the unembedding's output, before Gemma 2's
  soft-cap), within 1e-3.
- Grouped-query attention gives one row per query head.
- Mean-ablation: replacing a head by its own clean output changes no log-probability (1e-5),
  and a batched ablation equals a plain pass over the whole text with the same edit (1e-4).
All in float32 on tiny random models; SmolLM2 for real (`real_model`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_CONFIGS, digit_tokenizer, make_task, number_tokenizer, tiny_model
from iclprobe.anatomy import anatomy_of
from iclprobe.config import ConfigError, load_settings
from iclprobe.forward import encode_prompts, run_forward
from iclprobe.heads import ablated_logprobs, run_heads
from iclprobe.hooks import capture_heads, edit_heads
from iclprobe.plots import heads as plots
from iclprobe.prefix import encode_prefix
from iclprobe.prompts import make_prompts
from iclprobe.tokens import tokenize

ARCHS = sorted(TINY_CONFIGS)
SUM_TOL = 1e-3  # the tolerance on the sum of components (float32)
TOL = 1e-4  # float32 log-probabilities of a plain pass against a cached, batched one


def _tokenizer(arch: str):
    # GPT-2 gets one token per number, the rest one token per digit: both layouts are tested.
    return number_tokenizer() if arch == "gpt2" else digit_tokenizer()


@torch.no_grad()
def _with_random_biases(model):
    """Random biases wherever the architecture has them (a fresh model's are zero)."""
    g = torch.Generator().manual_seed(7)
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.5)
    return model


def _stage_inputs(model, tokenizer, n_examples=6, replicates=3):
    task = make_task(n_examples=n_examples, replicates=replicates)
    prompts = make_prompts(task)
    forward = run_forward(prompts, model, tokenizer, model_name="tiny", task=task)
    return prompts, forward


@torch.no_grad()
def _centred_logits(model, ids: list[int], positions: list[int], targets: list[int]):
    """Target logit minus the vocabulary's mean logit, from a plain pass: the unembedding's
    output, which is the logits before Gemma 2's soft-cap (checked against the output)."""
    seen = {}
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen.update(raw=out)
    )
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (S, V)
    finally:
        handle.remove()
    raw = seen["raw"][0].double()  # (S, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    capped = raw if cap is None else torch.tanh(raw / cap) * cap
    torch.testing.assert_close(capped, logits.double(), atol=1e-5, rtol=0)
    at = raw[positions]  # (n, V)
    return (at[torch.arange(len(targets)), targets] - at.mean(-1)).numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_components_add_up_to_the_centred_logit(arch):
    tokenizer = _tokenizer(arch)
    model = _with_random_biases(tiny_model(arch, len(tokenizer)))
    prompts, forward = _stage_inputs(model, tokenizer)
    table = run_heads(
        prompts, forward, model, tokenizer, model_name="tiny", examples=[1, 3, 6], replicates=[1, 2]
    )
    sums = table.group_by("replicate", "example").agg(
        pl.col("contribution").sum(), pl.col("centred_logit").first()
    )
    for replicate in (1, 2):
        text = prompts.filter(pl.col("replicate") == replicate)["text"][0]
        ids, _ = tokenize(tokenizer, text)
        rows = (
            table.filter(pl.col("replicate") == replicate, pl.col("component") == "embed")
            .select("replicate", "example", "decision_position", "target_token_id")
            .join(sums, on=["replicate", "example"])
            .sort("example")
        )
        positions = rows["decision_position"].to_list()
        assert rows["target_token_id"].to_list() == [ids[p + 1] for p in positions]
        expected = _centred_logits(model, ids, positions, rows["target_token_id"].to_list())
        np.testing.assert_allclose(rows["contribution"].to_numpy(), expected, atol=SUM_TOL)
        np.testing.assert_allclose(rows["centred_logit"].to_numpy(), expected, atol=SUM_TOL)
    # The heads carry part of the logit (the test could fail if they were dropped).
    heads = table.filter(pl.col("component") == "head")["contribution"]
    assert heads.abs().max() > 1e-3


def test_table_layout_one_row_per_query_head():
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer))  # 4 query heads sharing 2 key/value heads
    assert model.config.num_key_value_heads == 2
    prompts, forward = _stage_inputs(model, tokenizer)
    table = run_heads(
        prompts,
        forward,
        model,
        tokenizer,
        model_name="tiny",
        examples=[2, 6],
        replicates=[1, 2, 3],
        causal_examples=[6],
        causal_replicates=[2],
    )
    heads = table.filter(pl.col("component") == "head")
    per_layer = heads.group_by("replicate", "example", "layer").agg(
        pl.col("head").sort(), pl.col("contribution").n_unique()
    )
    assert per_layer.height == 3 * 2 * 2
    assert all(h == [0, 1, 2, 3] for h in per_layer["head"].to_list())
    assert per_layer["contribution"].min() == 4  # four query heads, four different values
    # Llama has no biases: embed, heads and MLPs only; the embedding is layer 0.
    assert set(table["component"]) == {"embed", "head", "mlp"}
    assert table.filter(pl.col("component") == "embed")["layer"].to_list() == [0] * 6
    # Mean-ablation only where asked: 2 layers x 4 heads of replicate 2, example 6.
    ablated = table.filter(pl.col("effect").is_not_null())
    assert ablated.height == 8
    assert set(ablated["replicate"]) == {2} and set(ablated["example"]) == {6}
    np.testing.assert_allclose(
        ablated["effect"], ablated["ablated_p_correct"] - ablated["p_correct"], atol=1e-12
    )
    expected_p = forward.filter(pl.col("replicate") == 2, pl.col("example") == 6)["logprob"]
    np.testing.assert_allclose(ablated["p_correct"], np.exp(expected_p[0]), rtol=1e-4)


def test_biases_are_components():
    tokenizer = number_tokenizer()
    model = _with_random_biases(tiny_model("gpt2", len(tokenizer)))  # and a final LayerNorm
    prompts, forward = _stage_inputs(model, tokenizer)
    table = run_heads(
        prompts, forward, model, tokenizer, model_name="tiny", examples=[4], replicates=[1]
    )
    assert set(table["component"]) == {"embed", "head", "attn_bias", "mlp", "final_bias"}
    final = table.filter(pl.col("component") == "final_bias")
    assert final["layer"].is_null().all() and final["contribution"].abs().min() > 0


# ------------------------------------------------------------------ mean-ablation


def _ablation_case(arch: str, seed: int = 0):
    """A tiny model, a sequence, its decision position and answer tokens after it."""
    model = tiny_model(arch, 40, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, 40, (16,), generator=g).tolist()
    decision, end = 11, 14  # suffix = ids[11:14] predicts ids[12:15]
    return model, ids, decision, end


@torch.no_grad()
def _plain_logprob(model, anatomy, ids, decision, end, edit=None):
    """log P(ids[decision+1 : end+1]) from one plain pass, head `edit = (layer, head, value)`
    replaced at the decision position."""
    context = edit_heads(anatomy, edit[0], _set(decision, edit[1], edit[2])) if edit else None
    with context if context else torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:end]])).logits[0]  # (S, V)
    logp = logits.log_softmax(-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(decision + 1, end + 1)))


def _set(position, head, value):
    def edit(z):  # (B, S, H, D)
        z = z.clone()
        z[:, position, head] = value
        return z

    return edit


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHS)
def test_ablating_a_head_with_its_own_value_changes_nothing(arch):
    model, ids, decision, end = _ablation_case(arch)
    anatomy = anatomy_of(model)
    with capture_heads(anatomy, select=lambda z: z[0, decision]) as clean:
        model(input_ids=torch.tensor([ids[:end]]))
    own = torch.stack([clean[layer] for layer in range(1, anatomy.n_layers + 1)])  # (L, H, D)
    prefix = encode_prefix(model, ids[:decision])
    run = ablated_logprobs(
        model, anatomy, prefix, ids[decision:end], ids[decision + 1 : end + 1], own
    )
    expected = _plain_logprob(model, anatomy, ids, decision, end)
    assert run.logprobs.shape == (anatomy.n_layers, anatomy.n_heads)
    np.testing.assert_allclose(run.logprobs.numpy(), expected, atol=1e-5)
    # Each batch's unedited control row is the clean log P as well: one per layer here.
    assert run.unedited.shape == (anatomy.n_layers,)
    np.testing.assert_allclose(run.unedited.numpy(), expected, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers_per_batch", [1, 2])
def test_batched_ablation_equals_a_plain_pass_with_the_same_edit(arch, layers_per_batch):
    model, ids, decision, end = _ablation_case(arch)
    anatomy = anatomy_of(model)
    g = torch.Generator().manual_seed(3)
    means = torch.randn(anatomy.n_layers, anatomy.n_heads, anatomy.head_dim, generator=g)
    prefix = encode_prefix(model, ids[:decision])
    got = ablated_logprobs(
        model,
        anatomy,
        prefix,
        ids[decision:end],
        ids[decision + 1 : end + 1],
        means,
        layers_per_batch=layers_per_batch,
    ).logprobs
    clean = _plain_logprob(model, anatomy, ids, decision, end)
    for layer, head in [(1, 0), (2, 3), (2, 1)]:
        value = means[layer - 1, head]
        expected = _plain_logprob(model, anatomy, ids, decision, end, (layer, head, value))
        assert abs(expected - clean) > 1e-3  # the edit matters, so the check can fail
        assert float(got[layer - 1, head]) == pytest.approx(expected, abs=TOL)


# ------------------------------------------------------------------ settings


def test_mean_ablation_needs_two_replicates():
    raw = {
        "models": {"m": {"path": "/nowhere"}},
        "tasks": {"t": {"function": "x", "x_range": [0, 9], "n_examples": 5}},
        "heads": {"replicates": 1},
    }
    with pytest.raises(ConfigError, match=r"heads.causal .* task 't' has 1 replicate"):
        load_settings(raw)
    raw["heads"]["causal"] = {"enabled": False}
    assert load_settings(raw).heads.causal_examples_for(load_settings(raw).tasks["t"]) == []
    raw["heads"] = {"replicates": 3, "examples": [2], "causal": {"examples": ["last"]}}
    settings = load_settings(raw)
    task = settings.tasks["t"]
    assert settings.heads.examples_for(task) == [2, 5]  # causal examples are attributed too
    assert settings.heads.causal_examples_for(task) == [5]
    assert settings.heads.causal_replicates_for(task) == [1, 2]  # default 2 of the 3


# ------------------------------------------------------------------ figures


@pytest.fixture(scope="module")
def tiny_table():
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    prompts, forward = _stage_inputs(model, tokenizer)
    return run_heads(
        prompts,
        forward,
        model,
        tokenizer,
        model_name="tiny",
        examples=[1, 6],
        replicates=[1, 2, 3],
        causal_examples=[6],
        causal_replicates=[1, 2],
    )


def test_direct_heatmap_caps_at_three_and_sums_each_layer(tiny_table):
    table = tiny_table.with_columns(
        pl.when(pl.col("component") == "head")
        .then(pl.col("contribution") * 1000)  # push some heads past the cap
        .otherwise(pl.col("contribution"))
    )
    fig = plots.build_direct(table, function="2*x + 3")
    try:
        images = [image for ax in fig.axes for image in ax.images]
        assert len(images) == 2  # one heatmap per example
        values = np.concatenate([np.ravel(image.get_array()) for image in images])
        assert np.nanmax(np.abs(values)) == pytest.approx(3.0)  # capped, and reached
        bars = plots.layer_sums(table, "contribution")
        last = bars.filter(pl.col("example") == 6).sort("layer")["value"].to_numpy()
        expected = (
            table.filter(pl.col("component") == "head", pl.col("example") == 6)
            .group_by("replicate", "layer")
            .agg(pl.col("contribution").sum())
            .group_by("layer")
            .agg(pl.col("contribution").mean())
            .sort("layer")["contribution"]
            .to_numpy()
        )
        np.testing.assert_allclose(last, expected, rtol=1e-9)
        assert any("example 6" in ax.get_title() for ax in fig.axes)
    finally:
        plt.close(fig)


def test_effects_within_the_numerical_floor_are_marked(tiny_table):
    """effect_resolved is |log ablated − log clean| > the job's floor, written in P."""
    ablated = tiny_table.filter(pl.col("effect").is_not_null())
    floor = ablated["floor_nats"].unique().to_list()
    assert len(floor) == 1 and 0 <= floor[0] < 1e-4
    smallest = ablated["p_correct"].to_numpy() * np.expm1(floor[0])
    np.testing.assert_allclose(ablated["effect_floor"].to_numpy(), smallest, rtol=1e-12)
    resolved = np.abs(ablated["effect"].to_numpy()) > smallest
    assert ablated["effect_resolved"].to_list() == resolved.tolist()
    attributed_only = tiny_table.filter(pl.col("effect").is_null())
    assert attributed_only["effect_resolved"].is_null().all()


def test_causal_figures_grey_out_and_do_not_rank_effects_within_the_floor(tiny_table):
    """The strongest-looking head, declared within the floor, is drawn grey and left out of
    the labelled heads and of the rank correlation."""
    heads = tiny_table.filter(pl.col("effect").is_not_null(), pl.col("component") == "head")
    top = heads.group_by("layer", "head").agg(pl.col("effect").mean().abs()).sort("effect")[-1]
    layer, head = top["layer"][0], top["head"][0]
    hidden = tiny_table.with_columns(
        pl.when((pl.col("layer") == layer) & (pl.col("head") == head))
        .then(1.0)  # a floor no effect of a probability can exceed
        .otherwise(pl.col("effect_floor"))
        .alias("effect_floor")
    )
    fig = plots.build_causal(hidden, function="2*x + 3")
    try:
        (image,) = [image for ax in fig.axes for image in ax.images]
        cells = image.get_array()
        assert cells.mask[layer - 1, head] and cells.mask.sum() >= 1
        labelled = [t.get_position() for ax in fig.axes for t in ax.texts]
        assert len(labelled) == 3 and (head, layer - 1) not in labelled
        assert "numerical floor" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
    fig = plots.build_direct_vs_causal(hidden, function="2*x + 3")
    try:
        ax = fig.axes[0]
        labels = {t.get_text() for t in ax.texts}
        direct_rank = plots.paired(hidden).sort(pl.col("contribution").abs())["layer", "head"]
        strongest_direct = {f"{r}.{h}" for r, h in direct_rank.rows()[-plots.TOP :]}
        assert f"{layer}.{head}" not in labels - strongest_direct
        assert "above the floor" in ax.get_title()
    finally:
        plt.close(fig)


def test_causal_figures_need_causal_rows(tiny_table):
    for build in (plots.build_causal, plots.build_direct_vs_causal):
        plt.close(build(tiny_table))
    without = tiny_table.with_columns(pl.lit(None, pl.Float64).alias("effect"))
    with pytest.raises(ValueError, match="no mean-ablation rows"):
        plots.build_causal(without)


# ------------------------------------------------------------------ SmolLM2


@pytest.mark.real_model
def test_smollm2_heads(smollm2):
    torch.set_num_threads(1)
    model, tokenizer, _ = smollm2
    task = make_task(name="identity", function="x", x_high=99, n_examples=8, replicates=2)
    prompts = make_prompts(task)
    forward = run_forward(prompts, model, tokenizer, model_name="smollm2", task=task)
    table = run_heads(
        prompts,
        forward,
        model,
        tokenizer,
        model_name="smollm2",
        examples=[3, 8],
        replicates=[1, 2],
        causal_examples=[8],
        causal_replicates=[1],
    )
    heads = table.filter(pl.col("component") == "head")
    assert heads.group_by("replicate", "example", "layer").len()["len"].to_list() == [9] * 120
    for replicate in (1, 2):
        ids, _ = tokenize(tokenizer, prompts.filter(pl.col("replicate") == replicate)["text"][0])
        rows = (
            table.filter(pl.col("replicate") == replicate)
            .group_by("example")
            .agg(
                pl.col("contribution").sum(), pl.col("decision_position", "target_token_id").first()
            )
            .sort("example")
        )
        expected = _centred_logits(
            model, ids, rows["decision_position"].to_list(), rows["target_token_id"].to_list()
        )
        np.testing.assert_allclose(rows["contribution"].to_numpy(), expected, atol=SUM_TOL)
    ablated = table.filter(pl.col("effect").is_not_null())
    assert ablated.height == 270
    # The head whose ablation hurts most, against a plain pass over the whole text with the
    # same edit: its output at the decision position set to replicate 2's (the leave-one-out
    # mean of two replicates is the other one).
    row = ablated.sort("effect").row(0, named=True)
    assert row["effect"] < -1e-3
    anatomy = anatomy_of(model)
    _, (first, second) = encode_prompts(prompts, tokenizer)
    with torch.no_grad(), capture_heads(anatomy, layers=[row["layer"]]) as other:
        model(input_ids=torch.tensor([second.input_ids]))
    value = other[row["layer"]][0, second.decision[7], row["head"]]  # (D,)
    span = first.answer_tokens[7]
    edit = _set(first.decision[7], row["head"], value)
    with torch.no_grad(), edit_heads(anatomy, row["layer"], edit):
        logits = model(input_ids=torch.tensor([first.input_ids[: span[-1]]])).logits[0]
    logp = logits.log_softmax(-1)
    expected = float(sum(logp[t - 1, first.input_ids[t]] for t in span))
    assert np.log(row["ablated_p_correct"]) == pytest.approx(expected, abs=TOL)
    # The job's floor (float32, its unedited rows against the forward stage) covers this
    # head's disagreement with the plain pass, and its effect is far above it.
    floor = row["floor_nats"]
    assert 0 < floor < 1e-3
    assert abs(np.log(row["ablated_p_correct"]) - expected) <= floor
    assert row["effect_resolved"] and abs(row["effect"]) > 10 * row["effect_floor"]


def test_chunked_vocabulary_mean_equals_the_whole_float32_copy(monkeypatch):
    """Outside float32 the mean row is taken in chunks of rows (no whole float32 copy of the
    unembedding, iclprobe.cost): the same mean within float32 rounding, and the same
    attribution of a bfloat16 model."""
    from iclprobe import readout

    torch.manual_seed(0)
    weight = torch.randn(50_000, 64).bfloat16()  # (V, d)
    whole = weight.float().mean(0)
    chunked = readout.vocabulary_mean(weight, chunk_rows=4096)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)

    tokenizer = digit_tokenizer()
    model = tiny_model("llama", 4096).to(torch.bfloat16)
    prompts, forward = _stage_inputs(model, tokenizer)

    def table(chunk_rows):
        monkeypatch.setattr(
            "iclprobe.heads.centred_unembedding",
            lambda anatomy, ids: readout.centred_unembedding(anatomy, ids, chunk_rows),
        )
        return run_heads(
            prompts, forward, model, tokenizer, model_name="t", examples=[2, 6], replicates=[1, 2]
        )

    chunked, whole = table(512), table(None)
    np.testing.assert_allclose(
        chunked["contribution"].to_numpy(), whole["contribution"].to_numpy(), atol=1e-5, rtol=0
    )
    # float32 weights are averaged as they are: bit for bit the old computation.
    weight32 = weight.float()
    assert torch.equal(readout.vocabulary_mean(weight32, chunk_rows=4096), weight32.mean(0))
