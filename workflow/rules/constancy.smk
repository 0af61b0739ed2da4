# Is c a constant? The learned tasks' fitted c compared, per method and model.


rule constancy:
    input:
        bayes="results/bayes.parquet",
        surprisal="results/surprisal.parquet",
    output:
        units="results/c_constancy.parquet",
        pairs="results/c_constancy_pairs.parquet",
    log:
        "logs/constancy.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        min_p_correct=SETTINGS.constancy.min_p_correct,
        n_boot=SETTINGS.constancy.n_boot,
        alpha=SETTINGS.constancy.alpha,
        level=SETTINGS.bayes.interval_level,
        seed=config.get("seed", 0),
        format_version=FORMAT_VERSION,
        code=code("constancy.py"),
    script:
        "../scripts/constancy.py"
