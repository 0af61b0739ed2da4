# Settings shared by every rule: the validated config and the target lists.
from pathlib import Path

from iclprobe.code_version import code_version
from iclprobe.config import ConfigError, check_config_file, load_settings
from iclprobe.io import FORMAT_VERSION, set_aside_stale
from iclprobe.models import ModelError, check_source

try:
    for path in ["config/config.yaml", *workflow.overwrite_configfiles]:
        if Path(path).is_file():
            check_config_file(path)
    # The schema already ran (validate() in the Snakefile); this adds the checks
    # that evaluate task functions and templates, before any job starts.
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
    return code_version(Path(workflow.basedir) / "scripts" / script)


def task_params(wildcards):
    return SETTINGS.tasks[wildcards.task].as_params()


def model_spec(wildcards):
    return SETTINGS.models[wildcards.model]


def control_surprisal(wildcards):
    """The shuffled twin's surprisal table, when the task has one."""
    control = SETTINGS.control_of(wildcards.task)
    if control is None:
        return []
    return f"results/surprisal/{wildcards.model}/{control}.parquet"


def probe_targets():
    """The probe's table and figure for every model and task."""
    return expand(
        [
            "results/probe/{model}/{task}.parquet",
            "results/figures/{model}/{task}/probe.png",
        ],
        model=MODELS,
        task=TASKS,
    )


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
    cross = ["results/figures/c_by_model_and_task.png"]
    stages = probe_targets() if SETTINGS.probe.enabled else []
    return per_pair + figures + tables + cross + stages
