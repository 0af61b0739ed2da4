"""The run's answers in words, generated from its tables for the report's first page.

Every sentence is built from the c-constancy tables (iclprobe.constancy) and the ideal
learner's information summary (iclprobe.ideal): nothing here knows which tasks a config
holds or what their numbers were. `answers_rst` writes the sentences as a reStructuredText
bullet list, which the report's workflow page includes. Names are set as literals, so a
name with an underscore or a star cannot turn into markup.
"""

from __future__ import annotations

import math

import polars as pl

from iclprobe.bayes import LN2, METHODS

METHOD_TEXT = {
    "prob_mse": "Fitted by squared error on P(A) (``prob_mse``, the seed's method)",
    "logodds": "Fitted as a straight line in log-odds (``logodds``)",
}


def _literal(text: str) -> str:
    return f"``{text}``"


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class _Namer:
    """Names a (model, task): the task alone when the tables hold one model."""

    def __init__(self, models: list[str]):
        self.several = len(set(models)) > 1
        self.noun = "model–task pairs" if self.several else "tasks"

    def __call__(self, model: str, task: str) -> str:
        return f"{_literal(task)} on {_literal(model)}" if self.several else _literal(task)


def _span(values: pl.Series) -> str:
    """'11.4–47.6', or one number when both ends round alike."""
    lo, hi = f"{values.min():.1f}", f"{values.max():.1f}"
    return lo if lo == hi else f"{lo}–{hi}"


def _interval(row: dict, prefix: str = "") -> str:
    c, lo, hi = row[f"{prefix}c"], row[f"{prefix}c_lo"], row[f"{prefix}c_hi"]
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{c:.3f} (no interval)"
    return f"{c:.3f} [{lo:.3f}, {hi:.3f}]"


def _ln2_clause(rows: list[dict], name: _Namer) -> str:
    """Where ln 2 lies relative to the counted units' intervals."""
    inside = [r for r in rows if r["ln2_inside"] is True]
    unknown = [r for r in rows if r["ln2_inside"] is None]
    known = len(rows) - len(unknown)
    ln2 = f"ln 2 ≈ {LN2:.3f}"
    if known == 0:
        clause = f"no interval says whether {ln2} is c"
    elif len(rows) == 1:
        clause = f"{ln2} lies {'inside' if inside else 'outside'} its interval"
    elif not inside:
        clause = f"{ln2} lies in none of their intervals"
    elif len(inside) == known:
        clause = f"{ln2} lies inside {'all' if not unknown else 'each'} of their intervals"
    else:
        names = _join([name(r["model"], r["task"]) for r in inside])
        clause = f"{ln2} lies inside the intervals of {names} only"
    if unknown and known:
        clause += f" ({_join([name(r['model'], r['task']) for r in unknown])}: no interval)"
    return clause


def c_sentences(units: pl.DataFrame, pairs: pl.DataFrame) -> list[str]:
    """One sentence per method: does c differ between the counted units, and where is ln 2?"""
    name = _Namer(units["model"].to_list())
    sentences = []
    for method in [m for m in METHODS if m in set(units["method"].to_list())]:
        lead = METHOD_TEXT[method]
        rows = units.filter(pl.col("method") == method, pl.col("in_verdict")).sort("c")
        rows = list(rows.iter_rows(named=True))
        mine = pairs.filter(pl.col("method") == method)
        if not rows:
            sentences.append(
                f"{lead}: no task is learned with an informative fit, so there is no c to compare."
            )
            continue
        if len(rows) == 1:
            row = rows[0]
            sentences.append(
                f"{lead}: only {name(row['model'], row['task'])} is learned with an informative "
                f"fit (c = {_interval(row)}), so there is no second c to compare it with; "
                f"{_ln2_clause(rows, name)}."
            )
            continue
        k, span = len(rows), f"{rows[0]['c']:.3f}–{rows[-1]['c']:.3f}"
        n_pairs, n_differ = mine.height, int(mine["differs"].sum())
        if n_pairs != k * (k - 1) // 2:
            raise ValueError(
                f"{k} units are counted for method {method!r} but the pairs table holds "
                f"{n_pairs} tests of them, not {k * (k - 1) // 2}; rebuild both tables together"
            )
        test = mine.row(0, named=True)
        how = (
            f"at a family-wise α = {test['alpha']:g} (bootstrap of the difference over "
            f"replicates, {test['n_boot']} resamples per task, {test['correction'].title()}-"
            "corrected)"
        )
        disjoint = int((~mine["intervals_overlap"]).sum())
        if disjoint == 0:
            overlap = "their intervals overlap" if n_pairs == 1 else "all their intervals overlap"
        elif disjoint == n_pairs:
            overlap = "their intervals do not overlap" if n_pairs == 1 else "no two overlap"
        else:
            overlap = f"{disjoint} of {n_pairs} pairs of intervals do not overlap"
        if n_differ:
            which = "the two differ" if n_pairs == 1 else f"{n_differ} of {n_pairs} pairs differ"
            verdict = f"c differs between the {k} learned {name.noun} ({span}): {which} {how}"
        else:
            none = "the pair does not differ" if n_pairs == 1 else f"no pair of {n_pairs} differs"
            verdict = (
                f"no difference in c is detected between the {k} learned {name.noun} "
                f"({span}): {none} {how}"
            )
        sentences.append(f"{lead}: {verdict}; {overlap}; {_ln2_clause(rows, name)}.")
    return sentences


def _why_left_out(rows: list[dict]) -> str:
    """Why one (model, task) is not compared: the first reason that holds for every method
    (a control, not learned), else each method's own (an uninformative fit, say)."""
    row = rows[0]
    if row["control"] is not None:
        return f"a {row['control']} control, no rule to learn"
    if not row["learned"]:
        return (
            f"not learned: mean P(A) at example {row['n_examples']} is "
            f"{row['p_correct_last']:.2g} < {row['min_p_correct']:g}"
        )
    return "; ".join(
        f"{r['excluded_because']} in {_literal(r['method'])}" for r in rows if not r["in_verdict"]
    )


def excluded_sentence(units: pl.DataFrame) -> str | None:
    """The units left out of the comparison of c, each with the reason."""
    name = _Namer(units["model"].to_list())
    left_out = units.filter(~pl.col("in_verdict")).select("model", "task").unique()
    if left_out.height == 0:
        return None
    rows = units.join(left_out, on=["model", "task"], how="semi").sort("model", "task", "method")
    parts = [
        f"{name(model, task)} ({_why_left_out(list(group.iter_rows(named=True)))})"
        for (model, task), group in rows.group_by("model", "task", maintain_order=True)
    ]
    return "Not counted in the comparison of c: " + "; ".join(parts) + "."


def control_sentences(units: pl.DataFrame) -> list[str]:
    """For every task with a shuffled control: learned or not, and is its c its control's?"""
    name = _Namer(units["model"].to_list())
    method = next(m for m in METHODS if m in set(units["method"].to_list()))
    rows = units.filter(pl.col("method") == method, pl.col("control_task").is_not_null())
    sentences = []
    for row in rows.sort("model", "task").iter_rows(named=True):
        who = name(row["model"], row["task"])
        control = _literal(row["control_task"])
        learned = "learned" if row["learned"] else "not learned"
        state = f"{who} is {learned} (mean P(A) at example {row['n_examples']}: "
        state += f"{row['p_correct_last']:.2g})"
        values = f"{_interval(row)} against {_interval(row, 'control_')}, {_literal(method)}"
        differs = row["c_differs_from_control"]
        if differs is None:
            tail = f"its c cannot be set against its shuffled control {control}'s (no interval)"
        elif differs:
            tail = f"its c differs from its shuffled control {control}'s ({values})"
        else:
            tail = (
                f"its c equals its shuffled control {control}'s within their intervals ({values})"
            )
        # "learned: differs" and "not learned: equals" agree; the other two are a surprise.
        agree = differs is not None and differs == bool(row["learned"])
        joint = "; " if differs is None else (": " if agree else ", but ")
        sentences.append(f"{state}{joint}{tail}.")
    return sentences


def ideal_sentences(summary: pl.DataFrame, units: pl.DataFrame | None = None) -> list[str]:
    """The information the model needed against the ideal learner's, per model."""
    name = _Namer(summary["model"].to_list())
    sentences = []
    learned = summary.clear().select("model", "task")
    if units is not None:
        keep = pl.col("learned") & pl.col("control").is_null()
        learned = units.filter(keep).select("model", "task").unique()
    for _, rows in summary.sort("model", "task").group_by("model", maintain_order=True):
        first = rows.row(0, named=True)
        added = rows.filter(pl.col("task_rule_added"))
        family = (
            f"The ideal learner knows the rules {first['family']} and gives "
            f"“none of these” a prior of ε = {first['none_prior']:g}"
        )
        if added.height:
            own = [
                f"y = {_literal(r['task_function'])} of {_literal(r['task'])}"
                for r in added.iter_rows(named=True)
            ]
            family += f"; it also knows the task's own rule {_join(own)}"
        sentences.append(family + ".")
        same_n = rows["n_examples"].n_unique() == 1
        items = []
        for row in rows.iter_rows(named=True):
            item = (
                f"{name(row['model'], row['task'])} {row['model_bits']:.1f} vs "
                f"{row['ideal_bits']:.1f} (uniform code {row['uniform_bits']:.1f})"
            )
            items.append(item if same_n else f"{item} over {row['n_examples']} examples")
        over = f"I_{first['n_examples']}" if same_n else "I_N"
        sentences.append(
            f"Information needed, {over} in bits, model vs ideal learner (mean of "
            f"{first['n_replicates']} replicates): " + "; ".join(items) + "."
        )
        mine = rows.join(learned, on=["model", "task"], how="semi")
        if mine.height:
            sentences.append(
                f"On the {mine.height} learned {name.noun} the model needed "
                f"{_span(mine['excess_bits'])} bits more than "
                f"the ideal learner, which needed {_span(mine['ideal_bits'])} (log₂ of the "
                f"{first['family_size']:,} rules it started from is "
                f"{math.log2(first['family_size']):.1f})."
            )
    return sentences


def answers(
    units: pl.DataFrame, pairs: pl.DataFrame, ideal_summary: pl.DataFrame | None = None
) -> list[str]:
    """Every sentence of the report's answers, in reading order."""
    sentences = c_sentences(units, pairs)
    excluded = excluded_sentence(units)
    if excluded:
        sentences.append(excluded)
    sentences += control_sentences(units)
    if ideal_summary is not None and ideal_summary.height:
        sentences += ideal_sentences(ideal_summary, units)
    return sentences


def answers_rst(sentences: list[str]) -> str:
    """The sentences as a reStructuredText bullet list."""
    return "".join(f"- {s}\n\n" for s in sentences)
