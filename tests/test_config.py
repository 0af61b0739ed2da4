"""Config validation: the default config loads; each bad value fails naming itself."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import REPO
from iclprobe.config import ConfigError, check_config_file, load_settings

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _with(path: str, value):
    """The default config with the key at dotted `path` set to `value`."""
    raw = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_default_config_loads():
    settings = load_settings(DEFAULT)
    assert sorted(settings.tasks) == [
        "identity",
        "seed_2x_plus_3",
        "seed_2x_plus_3_shuffled",
        "successor",
        "tens_digit",
        "times10",
    ]
    seed = settings.tasks["seed_2x_plus_3"]
    assert seed.terminator == ")"
    assert seed.candidates() == list(range(3, 104, 2))
    assert settings.control_of("seed_2x_plus_3") == "seed_2x_plus_3_shuffled"
    assert settings.control_of("identity") is None
    # The schema's defaults of the ideal learner and of the test of equal c.
    assert settings.ideal.as_params() == {
        "slopes": [-10, 10],
        "intercepts": [-100, 100],
        "include_task_rule": True,
        "none_prior": 0.01,
    }
    assert (settings.constancy.min_p_correct, settings.constancy.alpha) == (0.5, 0.05)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("bogus", 1, r"'bogus' was unexpected"),
        ("tasks.identity.bogus", 1, r"tasks\.identity.*'bogus' was unexpected"),
        ("replicates", -1, r"config key replicates: -1 is less than the minimum of 1"),
        ("replicates", "ten", r"config key replicates: 'ten' is not of type 'integer'"),
        ("models", {}, r"config key models: .* should be non-empty"),
        ("tasks", {}, r"config key tasks: .* should be non-empty"),
        ("tasks.identity.x_range", [0], r"tasks\.identity\.x_range"),
        ("tasks.identity.control", "reversed", r"tasks\.identity\.control: 'reversed'"),
        ("models.smollm2-135m", {"hf": "a", "path": "b"}, r"models\.smollm2-135m"),
        ("forward.dtype", "float8", r"forward\.dtype: 'float8' is not one of"),
        ("ideal_learner", {"none_prior": 1}, r"ideal_learner\.none_prior: 1 is greater than or"),
        ("ideal_learner", {"slopes": [1]}, r"ideal_learner\.slopes: \[1\] is too short"),
        ("ideal_learner", {"grid": 3}, r"ideal_learner: .*'grid' was unexpected"),
        ("constancy", {"min_p_correct": 1.5}, r"constancy\.min_p_correct: 1\.5 is greater"),
        ("constancy", {"alpha": 0}, r"constancy\.alpha: 0 is less than or equal to the minimum"),
        ("constancy", {"n_boot": 0}, r"constancy\.n_boot: 0 is less than the minimum of 1"),
    ],
)
def test_schema_errors_name_the_key(path, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(_with(path, value))


@pytest.mark.parametrize("name", ["../x", "my task", "a/b", "..", ".hidden"])
def test_path_unsafe_names_are_refused(name):
    raw = copy.deepcopy(DEFAULT)
    raw["tasks"][name] = raw["tasks"].pop("identity")
    with pytest.raises(ConfigError, match="tasks"):
        load_settings(raw)
    raw = copy.deepcopy(DEFAULT)
    raw["models"][name] = raw["models"].pop("smollm2-135m")
    with pytest.raises(ConfigError, match="models"):
        load_settings(raw)


@pytest.mark.parametrize(
    "function, expected",
    [
        ("2*y", r"tasks\.identity\.function: unknown name 'y'"),
        ("2*x +", r"tasks\.identity\.function: .*not a valid expression"),
        ("abs(x)", r"tasks\.identity\.function: calls are not allowed"),
        ("x.real", r"tasks\.identity\.function: .*attribute"),
        ("100 // (x - 3)", r"divides by zero at x = 3"),
        ("2**x**x", r"tasks\.identity\.function: .*too large"),
    ],
)
def test_bad_functions_are_refused(function, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(_with("tasks.identity.function", function))


def test_too_many_examples_for_the_x_range():
    with pytest.raises(ConfigError, match=r"tasks\.identity\.n_examples: 101 is more than the 100"):
        load_settings(_with("tasks.identity.n_examples", 101))


def test_empty_x_range():
    with pytest.raises(ConfigError, match=r"tasks\.identity\.x_range: \[9, 0\] is empty"):
        load_settings(_with("tasks.identity.x_range", [9, 0]))


def test_answers_outside_the_candidate_range():
    with pytest.raises(ConfigError, match=r"answer f\(51\) = 51 .* outside answer_range \[0, 50\]"):
        load_settings(_with("tasks.identity.answer_range", [0, 50]))
    ok = load_settings(_with("tasks.identity.answer_range", [0, 199]))
    assert len(ok.tasks["identity"].candidates()) == 200


@pytest.mark.parametrize(
    "template, separator, expected",
    [
        ("({x})", ", ", r"must contain \{x\} and \{y\} exactly once"),
        ("({y})", ", ", r"must contain \{x\} and \{y\} exactly once"),
        ("({x}, {y}, {z})", ", ", r"no other fields"),
        ("({y}, {x})", ", ", r"\{y\} before \{x\}"),
        ("{x}{y}", ", ", r"nothing between \{x\} and \{y\}"),
        ("({x}, 1{y})", ", ", r"digit or sign next to a number"),
        ("({x}, -{y})", ", ", r"digit or sign next to a number"),
        ("{x} -> {y}", "", r"nothing after \{y\}"),
        ("{x} -> {y}", "0", r"digit or sign next to a number"),
        ("({x}, {y}", ", ", None),  # ends with {y}: the separator terminates the answer
    ],
)
def test_templates_whose_numbers_would_merge(template, separator, expected):
    raw = _with("template", template)
    raw["separator"] = separator
    if expected is None:
        assert load_settings(raw).tasks["identity"].terminator == separator
        return
    with pytest.raises(ConfigError, match=expected):
        load_settings(raw)


def test_template_per_task_overrides_the_default():
    raw = _with("tasks.identity.template", "{x} -> {y}")
    raw["tasks"]["identity"]["separator"] = "\n"
    settings = load_settings(raw)
    assert settings.tasks["identity"].terminator == "\n"
    assert settings.tasks["successor"].template == "({x}, {y})"


def test_duplicate_names_in_the_config_file_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "tasks:\n"
        "  identity: {function: x, x_range: [0, 9], n_examples: 3}\n"
        "  identity: {function: x + 1, x_range: [0, 9], n_examples: 3}\n"
    )
    with pytest.raises(
        ConfigError, match=r"line 3: key 'identity' is given twice \(first on line 2\)"
    ):
        check_config_file(path)
    check_config_file(REPO / "config" / "config.yaml")  # the default has no duplicates


def test_names_differing_only_in_case_are_refused():
    raw = copy.deepcopy(DEFAULT)
    raw["tasks"]["Identity"] = raw["tasks"]["identity"]
    with pytest.raises(ConfigError, match=r"'Identity' and 'identity' differ only in case"):
        load_settings(raw)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"tasks.identity.n_examples": 1},
            r"tasks\.identity\.n_examples: 1; the Bayesian fit needs a slope over at least 2",
        ),
        (
            {"probe.ks": [30, 40]},
            r"probe\.ks: none of \[30, 40\] is below tasks\.identity\.n_examples \(30\)",
        ),
        ({"lens.examples": [31]}, r"lens\.examples: none of \[31\] is within tasks\.identity"),
        (
            {"heads.examples": [50, 60], "heads.causal.enabled": False},
            r"heads\.examples: none of \[50, 60\]",
        ),
        (
            {"lens.integers.candidate_range": [5, 1]},
            r"lens\.integers\.candidate_range: \[5, 1\] is empty",
        ),
        (
            {"ideal_learner.intercepts": [5, -5]},
            r"ideal_learner\.intercepts: \[5, -5\] is empty; write \[low, high\]",
        ),
        (
            {"ideal_learner.slopes": [0, 10**6]},
            r"ideal_learner\.slopes: \[0, 1000000\] holds 1,000,001 slopes; at most 100,000",
        ),
        (
            {"tasks.identity.x_range": [0, 10**6]},
            r"tasks\.identity\.x_range: \[0, 1000000\] holds 1000001 values; at most 10000",
        ),
    ],
)
def test_values_a_later_stage_cannot_use_are_refused(changes, expected):
    raw = copy.deepcopy(DEFAULT)
    for path, value in changes.items():
        raw = _with_in(raw, path, value)
    with pytest.raises(ConfigError, match=expected):
        load_settings(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"probe.ks": [30, 40], "probe.enabled": False},
        {"patching.context_examples": 30, "patching.enabled": False},
        {"lens.examples": [31], "lens.enabled": False},
        {"lens.examples": [31, "last"]},
        {"patching.pairs": 41},  # seed_2x_plus_3 has 51 x, 10 in its context
    ],
)
def test_settings_of_a_disabled_stage_or_within_limits_are_accepted(changes):
    raw = copy.deepcopy(DEFAULT)
    for path, value in changes.items():
        raw = _with_in(raw, path, value)
    load_settings(raw)


def _with_in(raw: dict, path: str, value) -> dict:
    """`raw` with the key at dotted `path` set to `value` (created if absent)."""
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def test_a_config_without_stage_sections_gets_the_documented_work():
    """The schema's defaults are the README's and config/config.yaml's numbers: a config of
    models and tasks alone plans exactly the work the docs quote for the default run."""
    minimal = load_settings({"models": DEFAULT["models"], "tasks": DEFAULT["tasks"]})
    full = load_settings(DEFAULT)
    for section in ("forward", "bayes", "probe", "lens", "heads", "patching"):
        assert getattr(minimal, section) == getattr(full, section), section
    seed = minimal.tasks["seed_2x_plus_3"]
    assert seed.replicates == 10 and seed.n_examples == 30
    assert minimal.probe.replicates_for(seed) == [1]
    assert minimal.lens.examples_for(seed) == [1, 2, 3, 5, 10, 30]
    assert minimal.lens.replicates_for(seed) == list(range(1, 11))
    assert minimal.lens.integer_replicates_for(seed) == [1, 2, 3]
    # "attribution at examples 1, 2, 3, 5, 10 and the last of 4 replicates; mean-ablation
    # at the last example of the first 2 of them"
    assert minimal.heads.examples_for(seed) == [1, 2, 3, 5, 10, 30]
    assert minimal.heads.replicates_for(seed) == [1, 2, 3, 4]
    assert minimal.heads.causal_examples_for(seed) == [30]
    assert minimal.heads.causal_replicates_for(seed) == [1, 2]
    # "a job of the default config (3 replicates × 5 pairs)", 10 context examples
    assert minimal.patching.replicates_for(seed) == [1, 2, 3]
    assert (minimal.patching.pairs, minimal.patching.context_examples) == (5, 10)


def test_null_replicates_mean_all_of_them():
    settings = load_settings(
        _with_in(_with_in(DEFAULT, "heads.replicates", None), "patching.replicates", None)
    )
    seed = settings.tasks["seed_2x_plus_3"]
    assert (
        settings.heads.replicates_for(seed)
        == settings.patching.replicates_for(seed)
        == list(range(1, 11))
    )


def test_the_integer_lens_switch_is_honoured_by_the_lens_plan():
    """The lens rule's params and LensPlan.for_task read the same LensSettings helpers."""
    from iclprobe.lens import LensPlan

    settings = load_settings(_with_in(DEFAULT, "lens.integers.enabled", False))
    seed = settings.tasks["seed_2x_plus_3"]
    assert settings.lens.integer_replicates_for(seed) == []
    plan = LensPlan.for_task(settings.lens, seed)
    assert plan.integer_replicates == [] and plan.candidate_range() is None
    on = LensPlan.for_task(load_settings(DEFAULT).lens, seed)
    assert on.integer_replicates == [1, 2, 3] and on.candidate_range() == [0, 412]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "tasks:\n  t: {function: x, x_range: [0, 9], n_examples: 3\n  u: 1\n",
            (
                r"line 3, column 4: expected ',' or '\}', but got ':' \(while parsing a flow mapping "
                r"that starts on line 2, column 6\)"
            ),
        ),
        (
            "models:\n\tm: 1\n",
            r"line 2, column 1: found character '\\t' that cannot start any token",
        ),
        ("tasks: [a, b\n", r"line 2, column 1: expected ',' or '\]', but got '<stream end>'"),
    ],
)
def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML: {expected}"):
        check_config_file(path)
