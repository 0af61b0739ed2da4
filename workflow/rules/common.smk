# Settings shared by every rule: the validated config and the target lists.
from pathlib import Path

from iclprobe.code_version import code_version
from iclprobe.config import ConfigError, load_settings
from iclprobe.cost import job_resources, model_config, prepare_memory
from iclprobe.io import FORMAT_VERSION, set_aside_stale
from iclprobe.preflight import PreflightError, check_prepared
from iclprobe.sources import ModelError, check_source, current_digest

try:
    # The config files and the schema were checked in the Snakefile; this adds the
    # checks that evaluate task functions, templates and bounds, before any job starts.
    SETTINGS = load_settings(config, check_schema=False)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

if workflow.is_main_process:
    # A missing folder or package, or an unreachable hub, fails now, not inside
    # a job's log; once the model is prepared its source is no longer needed.
    # Only here: a cluster job re-reads this file on a node that may be offline.
    for name, spec in SETTINGS.models.items():
        if not Path("resources/models", name).exists():
            try:
                check_source(spec)
            except ModelError as err:
                raise WorkflowError(f"models.{name}: {err}") from None

    # With a model's tokenizer on disk, every (model, task) is checked now (prompt
    # lengths against the context window, the scoring boundary), not in a job's log.
    try:
        check_prepared(SETTINGS, "resources/models", ".snakemake/iclprobe/preflight")
    except PreflightError as err:
        raise WorkflowError(str(err)) from None

    # A table cut short or written by another format version is set aside, so
    # Snakemake sees it missing and rebuilds it instead of reading it as data.
    for stale, reason in set_aside_stale("results"):
        logger.warning(f"iclprobe: {reason}; moved to {stale}, it will be rebuilt")

MODELS = sorted(SETTINGS.models)
TASKS = sorted(SETTINGS.tasks)
TASK_FIGURES = [
    "lm-surprisal",
    "lm-prior",
    "simulated-surprisal",
    "simulated-prior",
    "cumulative-information",
]


wildcard_constraints:
    model="|".join(MODELS),
    task="|".join(TASKS),


def code(script):
    """Digest of the library code behind a script: editing that code reruns the rule."""
    scripts = Path(workflow.basedir) / "scripts"
    return code_version(
        scripts / script, cache_file=".snakemake/iclprobe/code-facts.json"
    )


def task_params(wildcards):
    return SETTINGS.tasks[wildcards.task].as_params()


def model_spec(wildcards):
    return SETTINGS.models[wildcards.model]


def model_digest(wildcards):
    """Digest of a path: folder's or GGUF file's content: new weights rerun preparation."""
    spec = SETTINGS.models[wildcards.model]
    prepared = Path("resources/models", wildcards.model)
    try:
        return current_digest(spec, prepared, ".snakemake/iclprobe/source-digests.json")
    except ModelError as err:
        raise WorkflowError(f"models.{wildcards.model}: {err}") from None


def _config_of(model):
    return model_config(Path("resources/models", model), SETTINGS.models[model])


def stage_resources(stage, key):
    """A resource (`mem_mb` or `gpu`) of a model job, from the model's config.json and the
    settings (iclprobe.cost); before a GGUF model is prepared (a dry run) a fixed guess.
    Each retry asks for more memory."""

    def resource(wildcards, attempt):
        config = _config_of(wildcards.model)
        if config is None:
            return {"mem_mb": 4000, "gpu": 0}[key] * (attempt if key == "mem_mb" else 1)
        forward = SETTINGS.forward
        value = job_resources(
            stage,
            config,
            SETTINGS,
            SETTINGS.tasks[wildcards.task],
            device="cuda" if forward.device == "cuda" else "cpu",
            gpu_memory=forward.gpu_memory_gb * 1e9,
        )[key]
        return value * attempt if key == "mem_mb" else value

    return resource


def prepare_mem_mb(wildcards, attempt):
    """Host memory to prepare a model: from its source's config.json when one is on disk."""
    config = _config_of(wildcards.model)
    mem_mb = 8000 if config is None else prepare_memory(config) // 2**20
    return mem_mb * attempt


def control_surprisal(wildcards):
    """The shuffled twin's surprisal table, when the task has one."""
    control = SETTINGS.control_of(wildcards.task)
    if control is None:
        return []
    return f"results/surprisal/{wildcards.model}/{control}.parquet"


def probe_targets():
    """The probe's table and figure for every model and task (none when switched off)."""
    if not SETTINGS.probe.enabled:
        return []
    return expand(
        [
            "results/probe/{model}/{task}.parquet",
            "results/figures/{model}/{task}/probe.png",
        ],
        model=MODELS,
        task=TASKS,
    )


def heads_targets():
    """The heads tables and figures, when the stage is enabled."""
    if not SETTINGS.heads.enabled:
        return []
    figures = ["heads-direct"]
    if SETTINGS.heads.causal:
        figures += ["heads-causal", "heads-direct-vs-causal"]
    return expand(
        "results/heads/{model}/{task}.parquet", model=MODELS, task=TASKS
    ) + expand(
        "results/figures/{model}/{task}/{figure}.png",
        model=MODELS,
        task=TASKS,
        figure=figures,
    )


def patch_target_prompts(wildcards):
    """The prompts whose examples the patching target shows, unless it is zero-shot."""
    target = SETTINGS.tasks[wildcards.task].patch_target
    return [] if target == "zero_shot" else f"results/prompts/{target}.parquet"


def patching_targets():
    """Patching tables and figures per model and task, and the cross-model windows."""
    if not SETTINGS.patching.enabled:
        return []
    per_pair = expand(
        [
            "results/patching/{model}/{task}.parquet",
            "results/figures/{model}/{task}/patching-probabilities.png",
            "results/figures/{model}/{task}/patching-outcomes.png",
        ],
        model=MODELS,
        task=TASKS,
    )
    return per_pair + [
        "results/patching_windows.parquet",
        "results/figures/patching_windows.png",
    ]


def all_outputs():
    per_pair = expand(
        [
            "results/forward/{model}/{task}.parquet",
            "results/surprisal/{model}/{task}.parquet",
            "results/bayes/{model}/{task}.parquet",
        ],
        model=MODELS,
        task=TASKS,
    )
    figures = expand(
        "results/figures/{model}/{task}/{figure}.png",
        model=MODELS,
        task=TASKS,
        figure=TASK_FIGURES,
    )
    tables = ["results/surprisal.parquet", "results/bayes.parquet"]
    tables += [
        "results/tables/surprisal_summary.html",
        "results/tables/bayes_summary.html",
    ]
    # Is c a constant, and the ideal learner: the answers the report's first page states.
    tables += expand("results/ideal/{task}.parquet", task=TASKS)
    tables += [
        "results/ideal.parquet",
        "results/c_constancy.parquet",
        "results/c_constancy_pairs.parquet",
        "results/answers.rst",
        "results/tables/c_constancy_summary.html",
        "results/tables/c_constancy_pairs.html",
        "results/tables/ideal_summary.html",
    ]
    cross = [
        "results/figures/c_by_model_and_task.png",
        "results/figures/c_constancy.png",
        "results/figures/ideal_information.png",
    ]
    stages = probe_targets() + lens_targets() + heads_targets() + patching_targets()
    summaries = expand("results/tables/{stage}_summary.html", stage=enabled_stages())
    return per_pair + figures + tables + cross + stages + summaries


def enabled_stages():
    """The analysis stages this config runs, in the report's order."""
    stages = {
        "probe": SETTINGS.probe.enabled,
        "lens": SETTINGS.lens.enabled,
        "heads": SETTINGS.heads.enabled,
        "patching": SETTINGS.patching.enabled,
    }
    return [stage for stage, enabled in stages.items() if enabled]


def stage_summary_inputs(wildcards):
    """The tables a stage's summary reads: its per-(model, task) tables, or patching's windows."""
    if wildcards.stage == "patching":
        return ["results/patching_windows.parquet"]
    return expand(
        f"results/{wildcards.stage}/{{model}}/{{task}}.parquet",
        model=MODELS,
        task=TASKS,
    )


# ---------------------------------------------------------------- logit lens
# Figure name -> (file under results/figures/{model}/{task}/, whether it needs lens_integers).
LENS_FIGURES = {
    "top_tokens": ("lens-top-tokens", False),
    "top_tokens_mean": ("lens-top-tokens-mean", False),
    "numeric_mass": ("lens-numeric-mass", False),
    "integers": ("lens-integers", True),
    "integers_mean": ("lens-integers-mean", True),
}


def lens_tables(model, task):
    """The lens rule's tables: `lens_integers` only while the integer lens is enabled."""
    tables = {"lens": f"results/lens/{model}/{task}.parquet"}
    if SETTINGS.lens.integers:
        tables["integers"] = f"results/lens_integers/{model}/{task}.parquet"
    return tables


def lens_figures():
    """The lens figures as report items, keyed by the names the figure script uses."""
    return {
        name: report(
            f"results/figures/{{model}}/{{task}}/{file}.png",
            caption=f"../report/{file}.rst",
            category="3. Logit lens",
            subcategory="{model}",
            labels={"model": "{model}", "task": "{task}", "figure": file},
        )
        for name, (file, integers) in LENS_FIGURES.items()
        if SETTINGS.lens.integers or not integers
    }


def lens_targets():
    if not SETTINGS.lens.enabled:
        return []
    tables = [
        path for m in MODELS for t in TASKS for path in lens_tables(m, t).values()
    ]
    figures = [
        f"results/figures/{m}/{t}/{file}.png"
        for m in MODELS
        for t in TASKS
        for file, integers in LENS_FIGURES.values()
        if SETTINGS.lens.integers or not integers
    ]
    return tables + figures
