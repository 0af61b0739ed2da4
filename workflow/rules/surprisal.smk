rule surprisal:
    input:
        "results/forward/{model}/{task}.parquet",
    output:
        "results/surprisal/{model}/{task}.parquet",
    log:
        "logs/surprisal/{model}/{task}.log",
    params:
        format_version=FORMAT_VERSION,
    conda:
        "../envs/iclprobe.yaml"
    script:
        "../scripts/surprisal.py"


rule surprisal_table:
    input:
        expand("results/surprisal/{model}/{task}.parquet", model=MODELS, task=TASKS),
    output:
        "results/surprisal.parquet",
    log:
        "logs/surprisal_table.log",
    params:
        controls={t: SETTINGS.control_of(t) for t in TASKS if SETTINGS.control_of(t)},
        format_version=FORMAT_VERSION,
    conda:
        "../envs/iclprobe.yaml"
    script:
        "../scripts/surprisal_table.py"
