"""Typed, validated settings built from the raw Snakemake config.

The JSON schema (workflow/schemas/config.schema.yaml) checks structure and
holds every default (filled in here as Snakemake's `validate` does, so the
settings have no second copy of them); this module checks what needs
evaluating: task functions, templates, x ranges, and each stage's work against
its bound (`iclprobe.bounds`). All run when the Snakefile is parsed, so a bad
value fails before any job starts, and every message names the offending key
and value.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from iclprobe.bounds import MAX_ANSWER_VALUES, MAX_X_VALUES, BoundError, check_bounds
from iclprobe.expr import ExpressionError, IntFunction, parse_function

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the value."""


# Settings objects carry no defaults of their own: the schema's fill every key.


@dataclass(frozen=True)
class ForwardSettings:
    batch_size: int
    top_k: int
    dtype: str
    device: str
    threads: int
    gpu_memory_gb: float


@dataclass(frozen=True)
class BayesSettings:
    methods: tuple[str, ...]
    n_boot: int
    interval_level: float


@dataclass(frozen=True)
class ConstancySettings:
    min_p_correct: float
    n_boot: int
    alpha: float


@dataclass(frozen=True)
class IdealSettings:
    slopes: tuple[int, int]
    intercepts: tuple[int, int]
    include_task_rule: bool
    none_prior: float

    def as_params(self) -> dict[str, Any]:
        return {
            "slopes": list(self.slopes),
            "intercepts": list(self.intercepts),
            "include_task_rule": self.include_task_rule,
            "none_prior": self.none_prior,
        }


def _first(replicates: int | None, total: int) -> list[int]:
    """Replicate numbers 1..min(N, total), or all of them when N is None."""
    return list(range(1, (total if replicates is None else min(replicates, total)) + 1))


def _examples(spec: tuple, n_examples: int) -> list[int]:
    """1-based example numbers: 'last' is n_examples; values beyond it are dropped."""
    resolved = {n_examples if e == "last" else e for e in spec}
    return sorted(e for e in resolved if e <= n_examples)


@dataclass(frozen=True)
class ProbeSettings:
    enabled: bool
    ks: tuple[int, ...]
    replicates: int | None
    batch_size: int

    def ks_for(self, task: Task) -> list[int]:
        return sorted(k for k in self.ks if k < task.n_examples)

    def replicates_for(self, task: Task) -> list[int]:
        return _first(self.replicates, task.replicates)


@dataclass(frozen=True)
class LensSettings:
    enabled: bool
    examples: tuple[int | str, ...]
    replicates: int | None
    top_k: int
    integers: bool
    integer_replicates: int | None
    candidate_range: tuple[int, int] | None

    def examples_for(self, task: Task) -> list[int]:
        return _examples(self.examples, task.n_examples)

    def replicates_for(self, task: Task) -> list[int]:
        return _first(self.replicates, task.replicates)

    def integer_replicates_for(self, task: Task) -> list[int]:
        """Replicates that get the integer lens: none while `lens.integers.enabled` is false.

        The lens rule's params and `LensPlan.for_task` both read this one helper.
        """
        if not (self.enabled and self.integers):
            return []
        return _first(self.integer_replicates, task.replicates)

    def candidate_bounds(self, task: Task) -> tuple[int, int]:
        """Inclusive (low, high) of the candidate integers: the configured range, else
        0 … 4·max(y) (from min(y) when answers are negative)."""
        if self.candidate_range is not None:
            low, high = self.candidate_range
            return low, high
        answers = task.candidates()
        return min(0, answers[0]), 4 * max(answers[-1], 1)

    def candidates_for(self, task: Task) -> range:
        """Candidate integers as a lazy range (never a list: a default range can be huge)."""
        low, high = self.candidate_bounds(task)
        return range(low, high + 1)


@dataclass(frozen=True)
class HeadsSettings:
    enabled: bool
    examples: tuple[int | str, ...]
    replicates: int | None
    causal: bool
    causal_examples: tuple[int | str, ...]
    causal_replicates: int | None
    batch_rows: int

    def examples_for(self, task: Task) -> list[int]:
        """Examples attributed: the configured ones and, with mean-ablation, its ones."""
        wanted = self.examples + (self.causal_examples if self.causal else ())
        return _examples(wanted, task.n_examples)

    def replicates_for(self, task: Task) -> list[int]:
        return _first(self.replicates, task.replicates)

    def causal_examples_for(self, task: Task) -> list[int]:
        return _examples(self.causal_examples, task.n_examples) if self.causal else []

    def causal_replicates_for(self, task: Task) -> list[int]:
        """The first N of the attribution's replicates (their means are taken over those)."""
        if not self.causal:
            return []
        return _first(self.causal_replicates, len(self.replicates_for(task)))

    def check(self, tasks: dict[str, Task]) -> None:
        """Mean-ablation takes a leave-one-out mean over replicates: it needs two."""
        if not (self.enabled and self.causal):
            return
        for name, task in tasks.items():
            n = len(self.replicates_for(task))
            if n < 2:
                raise ConfigError(
                    f"heads.causal is enabled but task {name!r} has {n} replicate for the heads "
                    f"stage (heads.replicates: {self.replicates}, replicates: {task.replicates}); "
                    "mean-ablation replaces a head by its mean over the other replicates, so it "
                    "needs at least 2 (or set heads.causal.enabled: false)"
                )


@dataclass(frozen=True)
class PatchingSettings:
    enabled: bool
    replicates: int | None
    pairs: int
    context_examples: int

    def replicates_for(self, task: Task) -> list[int]:
        return _first(self.replicates, task.replicates)

    def examples_for(self, task: Task, target: Task | None) -> int:
        """Context examples of the source and target prompts: at most as many as both have."""
        have = [task.n_examples] + ([] if target is None else [target.n_examples])
        return min(self.context_examples, *have)


@dataclass(frozen=True)
class Task:
    """One task: the function, its x range, and how examples are written."""

    name: str
    function: str
    x_low: int
    x_high: int
    n_examples: int
    replicates: int
    seed: int
    template: str
    separator: str
    control: str | None = None
    answer_low: int | None = None
    answer_high: int | None = None
    # Only the patching stage reads this, so it is no part of as_params (editing it
    # must not redraw the prompts); the patching rule passes it on by itself.
    patch_target: str | None = None

    @property
    def fn(self) -> IntFunction:
        return parse_function(self.function)

    @property
    def xs(self) -> range:
        return range(self.x_low, self.x_high + 1)

    @property
    def prefix(self) -> str:
        """Template text before {x}."""
        return self.template.split("{x}", 1)[0]

    @property
    def middle(self) -> str:
        """Template text between {x} and {y}."""
        return self.template.split("{x}", 1)[1].split("{y}", 1)[0]

    @property
    def suffix(self) -> str:
        """Template text after {y}."""
        return self.template.split("{y}", 1)[1]

    @property
    def terminator(self) -> str:
        """Text that ends an answer: the template after {y}, else the separator."""
        return self.suffix or self.separator

    @property
    def lead(self) -> str:
        """The whitespace just before {y}: the start of the scored answer span.

        Tokenizers attach a space to the token after it (SmolLM2 writes "␠-" before
        a negative number but "␠" alone before a digit), so the span starts before
        the space and answers of both signs are scored on one distribution, as
        lm-evaluation-harness scores continuations.
        """
        return self.middle[len(self.middle.rstrip()) :]

    def example_text(self, x: int, y: int) -> str:
        """One example followed by the separator: `({x}, {y}), `."""
        return self.query_text(x) + self.answer_text(y) + self.separator

    def context_text(self, xs: list[int], ys: list[int]) -> str:
        """Examples one after another, ready for the next example's {x}... minus its prefix."""
        return "".join(self.example_text(x, y) for x, y in zip(xs, ys, strict=True))

    def query_text(self, x: int) -> str:
        """An example up to the scoring boundary: `({x},` (the lead whitespace excluded)."""
        return self.prefix + str(x) + self.middle[: len(self.middle) - len(self.lead)]

    def answer_text(self, y: int) -> str:
        """The scored text of answer y: lead whitespace, the digits of y, the suffix."""
        return self.lead + str(y) + self.suffix

    def continuation(self, y: int) -> tuple[str, int, int]:
        """Text after the scoring boundary that scores answer y, with y's span in it.

        Returns (text, y_start, span_end): the lead, y, the terminator, then the
        start of the next example, because a terminator is only tokenized as in
        a prompt when the text after it is there too (SmolLM2 writes "),").
        """
        text = self.answer_text(y) + self.separator + self.prefix
        y_start = len(self.lead)
        return text, y_start, y_start + len(str(y)) + len(self.terminator)

    def candidates(self) -> Sequence[int]:
        """The candidate answers, sorted: answer_range if set (a lazy range), else every
        f(x) on the x range."""
        if self.answer_low is not None:
            return range(self.answer_low, self.answer_high + 1)
        return sorted(set(self.fn.values(self.xs)))

    def as_params(self) -> dict[str, Any]:
        """Everything that determines the prompts; a change reruns this task only."""
        return {
            "name": self.name,
            "function": self.function,
            "x_range": [self.x_low, self.x_high],
            "n_examples": self.n_examples,
            "replicates": self.replicates,
            "seed": self.seed,
            "template": self.template,
            "separator": self.separator,
            "control": self.control,
            "answer_range": None
            if self.answer_low is None
            else [self.answer_low, self.answer_high],
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Task:
        answer = params.get("answer_range")
        return cls(
            name=params["name"],
            function=params["function"],
            x_low=params["x_range"][0],
            x_high=params["x_range"][1],
            n_examples=params["n_examples"],
            replicates=params["replicates"],
            seed=params["seed"],
            template=params["template"],
            separator=params["separator"],
            control=params.get("control"),
            answer_low=None if answer is None else answer[0],
            answer_high=None if answer is None else answer[1],
        )


@dataclass(frozen=True)
class Settings:
    models: dict[str, dict[str, Any]]
    tasks: dict[str, Task]
    forward: ForwardSettings
    bayes: BayesSettings
    constancy: ConstancySettings
    ideal: IdealSettings
    probe: ProbeSettings
    lens: LensSettings
    heads: HeadsSettings
    patching: PatchingSettings

    def control_of(self, task: str) -> str | None:
        """The shuffled twin of a task (same function, range, template), if configured."""
        t = self.tasks[task]
        if t.control is not None:
            return None
        for other in self.tasks.values():
            if other.control == "shuffled" and _same_draw(t, other):
                return other.name
        return None


def _same_draw(a: Task, b: Task) -> bool:
    keys = ("function", "x_low", "x_high", "n_examples", "template", "separator")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def validate_schema(raw: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    """Check the raw config against the JSON schema, naming the bad key on failure."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"config key {where}: {e.message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"{self.name}: line {line}: key {key!r} is given twice (first on line "
                    f"{seen[key]}); YAML would silently keep only the last one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def check_config_file(path: Path | str) -> None:
    """Refuse a config file that is not YAML, or has duplicate keys (two tasks of one name).

    The message names the file, the line and the column: Snakemake's own message
    for a file it cannot read names neither.
    """
    with open(path, encoding="utf-8") as fh:
        try:
            yaml.load(fh, Loader=_StrictLoader)
        except yaml.MarkedYAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    """'line 5, column 4: expected ... (while parsing ... that starts on line 4, column 6)'."""

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark = err.problem_mark or err.context_mark
    text = f"{at(mark)}: {err.problem or err.context}" if mark else str(err)
    if err.context and err.problem and err.context_mark is not None:
        text += f" ({err.context} that starts on {at(err.context_mark)})"
    return text


def check_config_files(paths) -> None:
    """`check_config_file` for each of `paths` that exists."""
    for path in paths:
        if Path(path).is_file():
            check_config_file(path)


def with_defaults(raw: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """A copy of `raw` with every default of the schema filled in (as Snakemake's validate)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    filled = copy.deepcopy(raw)
    _fill(filled, schema, schema)
    return filled


def _fill(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> None:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = root["$defs"][sub["$ref"].rsplit("/", 1)[1]]
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill(value, extra, root)


def load_settings(raw: dict[str, Any], check_schema: bool = True) -> Settings:
    """Build validated settings from a raw config dict (as Snakemake's `config`)."""
    if check_schema:
        validate_schema(raw)
    raw = with_defaults(raw)
    for section in ("models", "tasks"):
        _check_case_collisions(section, raw[section])
    bayes = raw["bayes"]
    lens = raw["lens"]
    integers = lens["integers"]
    tasks = {name: _build_task(name, spec, raw) for name, spec in sorted(raw["tasks"].items())}
    for name, task in tasks.items():
        if task.patch_target not in ("zero_shot", *tasks) or task.patch_target == name:
            raise ConfigError(
                f"tasks.{name}.patch_target: {task.patch_target!r} is neither zero_shot nor "
                f"another task of the config ({', '.join(t for t in tasks if t != name)})"
            )
    settings = Settings(
        models=dict(raw["models"]),
        tasks=tasks,
        forward=ForwardSettings(**raw["forward"]),
        bayes=BayesSettings(
            methods=tuple(bayes["methods"]),
            n_boot=bayes["n_boot"],
            interval_level=bayes["interval_level"],
        ),
        constancy=ConstancySettings(**raw["constancy"]),
        ideal=_ideal_settings(raw["ideal_learner"]),
        probe=ProbeSettings(**{**raw["probe"], "ks": tuple(raw["probe"]["ks"])}),
        lens=LensSettings(
            enabled=lens["enabled"],
            examples=tuple(lens["examples"]),
            replicates=lens["replicates"],
            top_k=lens["top_k"],
            integers=integers["enabled"],
            integer_replicates=integers["replicates"],
            candidate_range=None
            if integers["candidate_range"] is None
            else tuple(integers["candidate_range"]),
        ),
        heads=_heads_settings(raw["heads"], tasks),
        patching=PatchingSettings(**raw["patching"]),
    )
    check_consistency(settings)
    try:
        check_bounds(settings)
    except BoundError as err:
        raise ConfigError(str(err)) from None
    return settings


def check_consistency(settings: Settings) -> None:
    """Cross-field checks: values the schema accepts alone but a later stage cannot use.

    Each message names the keys involved, their values and a fix. Checks of a
    stage run only when it is enabled.
    """
    probe, lens, heads = settings.probe, settings.lens, settings.heads
    for name, task in settings.tasks.items():
        where = f"tasks.{name}"
        if task.n_examples < 2:
            raise ConfigError(
                f"{where}.n_examples: {task.n_examples}; the Bayesian fit needs a slope over "
                "at least 2 examples"
            )
        if probe.enabled and not probe.ks_for(task):
            raise ConfigError(
                f"probe.ks: none of {list(probe.ks)} is below {where}.n_examples "
                f"({task.n_examples}); add a smaller k or set probe.enabled: false"
            )
        for stage, section in (("lens", lens), ("heads", heads)):
            if section.enabled and not section.examples_for(task):
                raise ConfigError(
                    f"{stage}.examples: none of {list(section.examples)} is within {where}'s "
                    f"{task.n_examples} examples; add `last` or a smaller example"
                )
    if settings.patching.enabled:
        _check_patching(settings.patching, settings.tasks)
    if lens.enabled and lens.integers and lens.candidate_range is not None:
        low, high = lens.candidate_range
        if low > high:
            raise ConfigError(
                f"lens.integers.candidate_range: [{low}, {high}] is empty; write [low, high]"
            )


# The ideal learner checks every slope against every example of every replicate (the
# intercepts cost nothing: each slope admits one per example); 10**5 slopes take seconds.
MAX_SLOPES = 10**5


def _ideal_settings(ideal: dict[str, Any]) -> IdealSettings:
    for key in ("slopes", "intercepts"):
        low, high = ideal[key]
        if low > high:
            raise ConfigError(f"ideal_learner.{key}: [{low}, {high}] is empty; write [low, high]")
    (a_lo, a_hi), (b_lo, b_hi) = ideal["slopes"], ideal["intercepts"]
    if a_hi - a_lo + 1 > MAX_SLOPES:
        raise ConfigError(
            f"ideal_learner.slopes: [{a_lo}, {a_hi}] holds {a_hi - a_lo + 1:,} slopes; at most "
            f"{MAX_SLOPES:,}"
        )
    return IdealSettings(
        slopes=(a_lo, a_hi),
        intercepts=(b_lo, b_hi),
        include_task_rule=ideal["include_task_rule"],
        none_prior=ideal["none_prior"],
    )


def _heads_settings(heads: dict[str, Any], tasks: dict[str, Task]) -> HeadsSettings:
    causal = heads["causal"]
    settings = HeadsSettings(
        enabled=heads["enabled"],
        examples=tuple(heads["examples"]),
        replicates=heads["replicates"],
        causal=causal["enabled"],
        causal_examples=tuple(causal["examples"]),
        causal_replicates=causal["replicates"],
        batch_rows=causal["batch_rows"],
    )
    settings.check(tasks)
    return settings


def _check_patching(patching: PatchingSettings, tasks: dict[str, Task]) -> None:
    """Every task has enough x outside its context examples for its pairs."""
    for name, task in tasks.items():
        k = patching.examples_for(task, tasks.get(task.patch_target))
        free = task.x_high - task.x_low + 1 - k
        if patching.pairs > free:
            raise ConfigError(
                f"patching.pairs: {patching.pairs} pairs need as many x outside the {k} context "
                f"examples, but task {name!r} has {free}; lower patching.pairs or "
                "patching.context_examples"
            )


def _check_case_collisions(section: str, names) -> None:
    """Names that differ only in case would share files on macOS and Windows."""
    by_lower: dict[str, str] = {}
    for name in names:
        other = by_lower.setdefault(name.lower(), name)
        if other != name:
            first, second = sorted((other, name))
            raise ConfigError(
                f"{section}: names {first!r} and {second!r} differ only in case; their result "
                "files would collide on a case-insensitive file system"
            )


def _build_task(name: str, spec: dict[str, Any], raw: dict[str, Any]) -> Task:
    where = f"tasks.{name}"
    low, high = spec["x_range"]
    if low > high:
        raise ConfigError(f"{where}.x_range: [{low}, {high}] is empty; write [low, high]")
    n_x = high - low + 1
    if n_x > MAX_X_VALUES:
        raise ConfigError(
            f"{where}.x_range: [{low}, {high}] holds {n_x} values; at most {MAX_X_VALUES} "
            "(every f(x) is evaluated when the config is read)"
        )
    if spec["n_examples"] > n_x:
        raise ConfigError(
            f"{where}.n_examples: {spec['n_examples']} is more than the {n_x} distinct x in "
            f"x_range [{low}, {high}]; x are drawn without replacement, so use at most {n_x} "
            "or widen x_range"
        )
    template = spec.get("template", raw["template"])
    separator = spec.get("separator", raw["separator"])
    _check_template(where, template, separator)
    answer = spec.get("answer_range")
    task = Task(
        name=name,
        function=spec["function"],
        x_low=low,
        x_high=high,
        n_examples=spec["n_examples"],
        replicates=raw["replicates"],
        seed=raw["seed"],
        template=template,
        separator=separator,
        control=spec.get("control"),
        answer_low=None if answer is None else answer[0],
        answer_high=None if answer is None else answer[1],
        patch_target=spec["patch_target"],
    )
    try:
        ys = task.fn.values(task.xs)
    except ExpressionError as err:
        raise ConfigError(f"{where}.function: {err}") from None
    if answer is not None:
        if answer[0] > answer[1]:
            raise ConfigError(f"{where}.answer_range: {answer} is empty; write [low, high]")
        if answer[1] - answer[0] + 1 > MAX_ANSWER_VALUES:
            raise ConfigError(
                f"{where}.answer_range: {answer} holds {answer[1] - answer[0] + 1} values; at "
                f"most {MAX_ANSWER_VALUES} (2**53: the uniform code's |Y| is stored as an "
                "integer and used as a float)"
            )
        outside = [
            (x, y) for x, y in zip(task.xs, ys, strict=True) if not answer[0] <= y <= answer[1]
        ]
        if outside:
            x, y = outside[0]
            raise ConfigError(
                f"{where}: answer f({x}) = {y} of function {task.function!r} falls outside "
                f"answer_range {answer} ({len(outside)} x values do); widen answer_range "
                "or narrow x_range"
            )
    return task


def _check_template(where: str, template: str, separator: str) -> None:
    """Reject templates whose numbers could merge with their neighbours when tokenized."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    if sorted(fields) != ["x", "y"]:
        raise ConfigError(
            f"{where}.template: {template!r} must contain {{x}} and {{y}} exactly once and no "
            f"other fields (found {fields})"
        )
    if template.index("{y}") < template.index("{x}"):
        raise ConfigError(f"{where}.template: {template!r} has {{y}} before {{x}}; put x first")
    prefix, rest = template.split("{x}", 1)
    middle, suffix = rest.split("{y}", 1)
    terminator = suffix or separator
    # Text between the previous answer and the next x.
    between = suffix + separator + prefix
    checks = {
        "between {x} and {y}": middle,
        "after {y} (the answer's terminator)": terminator,
        "between one example's {y} and the next {x}": between,
    }
    for what, text in checks.items():
        if not text:
            raise ConfigError(
                f"{where}.template/separator: {template!r} with separator {separator!r} has "
                f"nothing {what}, so the numbers would run together"
            )
        if text[0].isdigit() or text[-1].isdigit() or text[-1] in "+-":
            raise ConfigError(
                f"{where}.template/separator: {template!r} with separator {separator!r} puts "
                f"{text!r} {what}; a digit or sign next to a number would merge with it"
            )
