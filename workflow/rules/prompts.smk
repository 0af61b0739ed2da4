rule prompts:
    output:
        "results/prompts/{task}.parquet",
    log:
        "logs/prompts/{task}.log",
    params:
        # The task's full settings: editing one task reruns that task only.
        task=task_params,
        format_version=FORMAT_VERSION,
    conda:
        "../envs/iclprobe.yaml"
    script:
        "../scripts/make_prompts.py"
