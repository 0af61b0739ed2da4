"""The report's answers: sentences generated from hand-built constancy and ideal tables."""

from __future__ import annotations

import math
from itertools import combinations

import polars as pl
import pytest
from docutils.core import publish_parts

from iclprobe.answers import answers, answers_rst, c_sentences, control_sentences
from iclprobe.constancy import PAIR_SCHEMA, UNIT_SCHEMA

LN2 = math.log(2)


def unit(
    task,
    c,
    lo,
    hi,
    *,
    method="prob_mse",
    model="m",
    p_last=0.9,
    informative=True,
    control=None,
    control_task=None,
    control_c=None,
    differs=None,
) -> dict:
    """One row of the constancy table; counted unless a control, unlearned or uninformative."""
    learned = p_last >= 0.5
    reasons = []
    if control:
        reasons.append(f"a {control} control: no rule to learn")
    if not learned:
        reasons.append(f"not learned: mean P(A) at example 30 is {p_last:.2g} < 0.5")
    if not informative:
        reasons.append("fit not informative: flat")
    return {
        "model": model,
        "task": task,
        "method": method,
        "c": c,
        "c_lo": lo,
        "c_hi": hi,
        "interval_level": 0.95,
        "ln2_inside": None if lo is None else lo <= LN2 <= hi,
        "informative": informative,
        "fit_note": "" if informative else "flat",
        "control": control,
        "control_task": control_task,
        "control_c": control_c,
        "control_c_lo": None if control_c is None else control_c - 0.003,
        "control_c_hi": None if control_c is None else control_c + 0.003,
        "c_differs_from_control": differs,
        "n_examples": 30,
        "p_correct_last": p_last,
        "learned": learned,
        "in_verdict": not reasons,
        "excluded_because": "; ".join(reasons) or None,
        "reasons": reasons,
        "min_p_correct": 0.5,
    }


def pair(a, b, p_holm, *, method="prob_mse", overlap=False) -> dict:
    return {
        "method": method,
        "model_a": a["model"],
        "task_a": a["task"],
        "model_b": b["model"],
        "task_b": b["task"],
        "c_a": a["c"],
        "c_b": b["c"],
        "difference": a["c"] - b["c"],
        "difference_lo": a["c"] - b["c"] - 0.01,
        "difference_hi": a["c"] - b["c"] + 0.01,
        "intervals_overlap": overlap,
        "p_value": p_holm / 2,
        "p_holm": p_holm,
        "differs": p_holm < 0.05,
        "alpha": 0.05,
        "correction": "holm",
        "n_boot": 2000,
        "interval_level": 0.95,
    }


def tables(rows: list[dict], pairs: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.DataFrame(rows, schema=UNIT_SCHEMA), pl.DataFrame(pairs, schema=PAIR_SCHEMA)


LADDER = [
    unit("identity", 0.552, 0.544, 0.565),
    unit("times10", 0.532, 0.527, 0.536),
    unit("successor", 0.517, 0.511, 0.523),
    unit("tens_digit", 0.524, 0.520, 0.528),
]
SEED = [
    unit(
        "seed",
        0.507,
        0.506,
        0.510,
        p_last=0.022,
        informative=False,
        control_task="seed_shuffled",
        control_c=0.508,
        differs=False,
    ),
    unit("seed_shuffled", 0.508, 0.505, 0.511, p_last=0.014, informative=False, control="shuffled"),
]


def test_learned_tasks_with_disjoint_intervals_and_ln2_in_none():
    a, b, c, d = LADDER
    pairs = [pair(x, y, 0.006) for x, y in ((a, b), (a, c), (a, d), (b, c), (b, d))]
    pairs.append(pair(c, d, 0.08, overlap=True))
    units, pairs = tables(LADDER + SEED, pairs)
    (sentence,) = c_sentences(units, pairs)
    assert "c differs between the 4 learned tasks (0.517–0.552)" in sentence
    assert "5 of 6 pairs differ at a family-wise α = 0.05" in sentence
    assert "2000 resamples per task, Holm-corrected" in sentence
    assert "5 of 6 pairs of intervals do not overlap" in sentence
    assert "ln 2 ≈ 0.693 lies in none of their intervals" in sentence


def test_overlapping_equal_c_with_ln2_inside_every_interval():
    rows = [unit("a", 0.69, 0.66, 0.72), unit("b", 0.70, 0.67, 0.73), unit("c", 0.68, 0.64, 0.71)]
    pairs = [
        pair(x, y, 0.9, overlap=True)
        for x, y in ((rows[0], rows[1]), (rows[0], rows[2]), (rows[1], rows[2]))
    ]
    (sentence,) = c_sentences(*tables(rows, pairs))
    assert "no difference in c is detected between the 3 learned tasks (0.680–0.700)" in sentence
    assert "no pair of 3 differs" in sentence and "all their intervals overlap" in sentence
    assert "ln 2 ≈ 0.693 lies inside all of their intervals" in sentence


def test_ln2_inside_some_intervals_names_them():
    rows = [unit("near", 0.68, 0.66, 0.70), unit("far", 0.55, 0.54, 0.56)]
    (sentence,) = c_sentences(*tables(rows, [pair(rows[0], rows[1], 0.001)]))
    assert "ln 2 ≈ 0.693 lies inside the intervals of ``near`` only" in sentence
    assert "c differs between the 2 learned tasks (0.550–0.680): the two differ" in sentence
    assert "their intervals do not overlap" in sentence


def test_no_learned_task_and_a_single_learned_task():
    (none,) = c_sentences(*tables(SEED, []))
    assert "no task is learned with an informative fit, so there is no c to compare" in none
    (one,) = c_sentences(*tables([LADDER[0], *SEED], []))
    assert "only ``identity`` is learned with an informative fit (c = 0.552 [0.544, 0.565])" in one
    assert "ln 2 ≈ 0.693 lies outside its interval" in one


def test_the_unlearned_seed_task_equals_its_control():
    (sentence,) = control_sentences(tables(LADDER + SEED, [])[0])
    assert sentence == (
        "``seed`` is not learned (mean P(A) at example 30: 0.022): its c equals its shuffled "
        "control ``seed_shuffled``'s within their intervals (0.507 [0.506, 0.510] against "
        "0.508 [0.505, 0.511], ``prob_mse``)."
    )


def test_a_learned_task_whose_c_differs_from_its_control():
    rows = [unit("t", 0.55, 0.54, 0.56, control_task="t_shuffled", control_c=0.508, differs=True)]
    (sentence,) = control_sentences(tables(rows, [])[0])
    assert sentence.startswith("``t`` is learned (mean P(A) at example 30: 0.9): its c differs")


def test_every_sentence_per_method_and_the_tasks_left_out():
    rows = LADDER + SEED
    rows += [
        unit(
            r["task"],
            r["c"] + 0.01,
            r["c_lo"],
            r["c_hi"] + 0.02,
            method="logodds",
            informative=r["task"] in ("identity", "seed"),
            p_last=r["p_correct_last"],
            control=r["control"],
        )
        for r in LADDER + SEED
    ]
    text = answers(*tables(rows, [pair(a, b, 0.01) for a, b in combinations(LADDER, 2)]))
    assert text[0].startswith("Fitted by squared error on P(A) (``prob_mse``, the seed's method)")
    assert text[1].startswith(
        "Fitted as a straight line in log-odds (``logodds``): only ``identity``"
    )
    left_out = text[2]
    assert left_out.startswith("Not counted in the comparison of c: ")
    assert "``seed`` (not learned: mean P(A) at example 30 is 0.022 < 0.5)" in left_out
    assert "``seed_shuffled`` (a shuffled control, no rule to learn)" in left_out
    assert "``times10`` (fit not informative: flat in ``logodds``)" in left_out
    assert "``identity``" not in left_out


def test_a_pairs_table_that_does_not_match_is_refused():
    with pytest.raises(ValueError, match="4 units are counted for method 'prob_mse' but"):
        c_sentences(*tables(LADDER, []))


def test_two_models_are_named_with_their_tasks():
    rows = [unit("identity", 0.55, 0.54, 0.56), unit("identity", 0.60, 0.59, 0.61, model="big")]
    (sentence,) = c_sentences(*tables(rows, [pair(rows[1], rows[0], 0.001)]))
    assert "between the 2 learned model–task pairs" in sentence


def _ideal_summary() -> pl.DataFrame:
    rows = [
        ("identity", 23.5, 12.1, None, False),
        ("tens_digit", 59.7, 12.1, None, True),
        ("seed", 209.2, 12.1, None, False),
        ("seed_shuffled", 238.7, 176.8, "shuffled", False),
    ]
    return pl.DataFrame(
        [
            {
                "model": "m",
                "task": t,
                "n_examples": 30,
                "n_replicates": 10,
                "control": ctrl,
                "model_bits": mb,
                "ideal_bits": ib,
                "excess_bits": mb - ib,
                "uniform_bits": 170.2,
                "family": "a·x + b, a in -10…10, b in -100…100",
                "family_size": 4221 + added,
                "task_rule_added": added,
                "task_function": "x // 10" if added else "x",
                "none_prior": 0.01,
            }
            for t, mb, ib, ctrl, added in rows
        ]
    )


def test_ideal_sentences_compare_the_information_needed():
    learned = [LADDER[0], unit("tens_digit", 0.52, 0.51, 0.53)]
    text = answers(*tables(learned + SEED, [pair(*learned, 0.01)]), _ideal_summary())
    family, needed, learned = text[-3:]
    assert "it also knows the task's own rule y = ``x // 10`` of ``tens_digit``" in family
    assert "ε = 0.01" in family
    assert needed.startswith("Information needed, I_30 in bits, model vs ideal learner (mean of")
    assert "``identity`` 23.5 vs 12.1 (uniform code 170.2)" in needed
    assert "``seed_shuffled`` 238.7 vs 176.8" in needed
    assert learned == (
        "On the 2 learned tasks the model needed 11.4–47.6 bits more than the ideal learner, "
        "which needed 12.1 (log₂ of the 4,221 rules it started from is 12.0)."
    )


@pytest.mark.parametrize("rows", [LADDER + SEED, SEED, [LADDER[0]]])
def test_the_answers_render_as_restructured_text_without_warnings(rows):
    """Task names with underscores and stars stay literal; docutils reports no problem."""
    starred = [{**r, "task": r["task"] + "_*x"} for r in rows]
    counted = [r for r in starred if r["in_verdict"]]
    units, pairs = tables(starred, [pair(a, b, 0.01) for a, b in combinations(counted, 2)])
    source = answers_rst(answers(units, pairs, _ideal_summary()))
    html = publish_parts(source, writer="html", settings_overrides={"report_level": 1})
    assert "system-message" not in html["body"]
    assert html["body"].count("<li>") == len(answers(units, pairs, _ideal_summary()))
    assert "<em>" not in html["body"] and "<strong>" not in html["body"]
    assert html["body"].count("_*x</tt>") == source.count("_*x``") > 0
