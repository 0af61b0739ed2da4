rule prompts:
    output:
        "results/prompts/{task}.parquet",
    log:
        "logs/prompts/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    params:
        # The task's full settings: editing one task reruns that task only.
        task=task_params,
        format_version=FORMAT_VERSION,
        code=code("make_prompts.py"),
    script:
        "../scripts/make_prompts.py"
