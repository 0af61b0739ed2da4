rule bayes:
    input:
        "results/surprisal/{model}/{task}.parquet",
    output:
        "results/bayes/{model}/{task}.parquet",
    log:
        "logs/bayes/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        methods=list(SETTINGS.bayes.methods),
        n_boot=SETTINGS.bayes.n_boot,
        level=SETTINGS.bayes.interval_level,
        seed=config.get("seed", 0),
        format_version=FORMAT_VERSION,
        code=code("bayes.py"),
    script:
        "../scripts/bayes.py"


rule bayes_table:
    input:
        expand("results/bayes/{model}/{task}.parquet", model=MODELS, task=TASKS),
    output:
        "results/bayes.parquet",
    log:
        "logs/bayes_table.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        controls={t: SETTINGS.control_of(t) for t in TASKS if SETTINGS.control_of(t)},
        format_version=FORMAT_VERSION,
        code=code("bayes_table.py"),
    script:
        "../scripts/bayes_table.py"
