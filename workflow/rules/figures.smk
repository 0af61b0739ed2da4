rule task_figures:
    input:
        surprisal="results/surprisal/{model}/{task}.parquet",
        bayes="results/bayes/{model}/{task}.parquet",
        control=control_surprisal,
    output:
        expand(
            "results/figures/{{model}}/{{task}}/{figure}.png",
            figure=TASK_FIGURES,
        ),
    log:
        "logs/figures/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
    script:
        "../scripts/task_figures.py"


rule cross_figures:
    input:
        bayes="results/bayes.parquet",
    output:
        "results/figures/c_by_model_and_task.png",
    log:
        "logs/figures/cross.log",
    conda:
        "../envs/iclprobe.yaml"
    script:
        "../scripts/cross_figures.py"
