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
        code=code("task_figures.py"),
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
    params:
        code=code("cross_figures.py"),
    script:
        "../scripts/cross_figures.py"
