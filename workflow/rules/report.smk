# Summary tables for the HTML report (`snakemake --report report.html`): one row
# per model and task, written as standalone HTML pages the report shows.


rule summary_tables:
    input:
        surprisal="results/surprisal.parquet",
        bayes="results/bayes.parquet",
    output:
        surprisal=report(
            "results/tables/surprisal_summary.html",
            caption="../report/surprisal_summary.rst",
            category="0. Summary tables",
            labels={"table": "surprisal"},
        ),
        bayes=report(
            "results/tables/bayes_summary.html",
            caption="../report/bayes_summary.rst",
            category="0. Summary tables",
            labels={"table": "Bayesian learner"},
        ),
    log:
        "logs/summary_tables.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("summary_tables.py"),
    script:
        "../scripts/summary_tables.py"


# One summary table per analysis stage, built only where the stage runs.
rule stage_summary_table:
    input:
        stage_summary_inputs,
    output:
        report(
            "results/tables/{stage}_summary.html",
            caption="../report/stage_summaries.rst",
            category="0. Summary tables",
            labels={"table": "{stage}"},
        ),
    log:
        "logs/stage_summary_table/{stage}.log",
    wildcard_constraints:
        stage="probe|lens|heads|patching",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("stage_summary_table.py"),
    script:
        "../scripts/stage_summary_table.py"


# The run's answers in sentences (included by the report's workflow page) and their tables.
rule answers:
    input:
        units="results/c_constancy.parquet",
        pairs="results/c_constancy_pairs.parquet",
        ideal="results/ideal.parquet",
    output:
        answers="results/answers.rst",
        constancy=report(
            "results/tables/c_constancy_summary.html",
            caption="../report/c_constancy_summary.rst",
            category="0. Summary tables",
            labels={"table": "is c a constant?"},
        ),
        pairs=report(
            "results/tables/c_constancy_pairs.html",
            caption="../report/c_constancy_pairs.rst",
            category="0. Summary tables",
            labels={"table": "test of equal c"},
        ),
        ideal=report(
            "results/tables/ideal_summary.html",
            caption="../report/ideal_summary.rst",
            category="0. Summary tables",
            labels={"table": "model vs ideal learner"},
        ),
    log:
        "logs/answers.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("answers.py"),
    script:
        "../scripts/answers.py"
