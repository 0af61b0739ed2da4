rule task_figures:
    input:
        surprisal="results/surprisal/{model}/{task}.parquet",
        bayes="results/bayes/{model}/{task}.parquet",
        ideal="results/ideal/{task}.parquet",
        control=control_surprisal,
    output:
        [
            report(
                f"results/figures/{{model}}/{{task}}/{figure}.png",
                caption=f"../report/{figure}.rst",
                category="1. Learning curves",
                subcategory="{model}",
                labels={"model": "{model}", "task": "{task}", "figure": figure},
            )
            for figure in TASK_FIGURES
        ],
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
        units="results/c_constancy.parquet",
        pairs="results/c_constancy_pairs.parquet",
        ideal="results/ideal.parquet",
    output:
        c=report(
            "results/figures/c_by_model_and_task.png",
            caption="../report/c_by_model_and_task.rst",
            category="1. Learning curves",
            subcategory="all models",
            labels={"model": "all", "task": "all", "figure": "fitted c"},
        ),
        constancy=report(
            "results/figures/c_constancy.png",
            caption="../report/c_constancy.rst",
            category="1. Learning curves",
            subcategory="all models",
            labels={"model": "all", "task": "learned", "figure": "is c a constant?"},
        ),
        ideal=report(
            "results/figures/ideal_information.png",
            caption="../report/ideal_information.rst",
            category="1. Learning curves",
            subcategory="all models",
            labels={"model": "all", "task": "all", "figure": "model vs ideal learner"},
        ),
    log:
        "logs/figures/cross.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        code=code("cross_figures.py"),
    script:
        "../scripts/cross_figures.py"
