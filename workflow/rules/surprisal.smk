rule surprisal:
    input:
        "results/forward/{model}/{task}.parquet",
    output:
        "results/surprisal/{model}/{task}.parquet",
    log:
        "logs/surprisal/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        format_version=FORMAT_VERSION,
        code=code("surprisal.py"),
    script:
        "../scripts/surprisal.py"


rule surprisal_table:
    input:
        expand("results/surprisal/{model}/{task}.parquet", model=MODELS, task=TASKS),
    output:
        "results/surprisal.parquet",
    log:
        "logs/surprisal_table.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        controls={t: SETTINGS.control_of(t) for t in TASKS if SETTINGS.control_of(t)},
        format_version=FORMAT_VERSION,
        code=code("surprisal_table.py"),
    script:
        "../scripts/surprisal_table.py"
