# The ideal learner: a Bayes-optimal reference on the prompts the model saw (no model).


rule ideal:
    input:
        "results/prompts/{task}.parquet",
    output:
        "results/ideal/{task}.parquet",
    log:
        "logs/ideal/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        family=SETTINGS.ideal.as_params(),
        format_version=FORMAT_VERSION,
        code=code("ideal.py"),
    script:
        "../scripts/ideal.py"


rule ideal_table:
    input:
        surprisal=expand(
            "results/surprisal/{model}/{task}.parquet", model=MODELS, task=TASKS
        ),
        ideal=expand("results/ideal/{task}.parquet", task=TASKS),
    output:
        "results/ideal.parquet",
    log:
        "logs/ideal_table.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        format_version=FORMAT_VERSION,
        code=code("ideal_table.py"),
    script:
        "../scripts/ideal_table.py"
