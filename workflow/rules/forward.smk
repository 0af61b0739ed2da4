rule forward:
    input:
        prompts="results/prompts/{task}.parquet",
        model="resources/models/{model}",
    output:
        "results/forward/{model}/{task}.parquet",
    log:
        "logs/forward/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: SETTINGS.forward.threads
    resources:
        mem_mb=stage_resources("forward", "mem_mb"),
        gpu=stage_resources("forward", "gpu"),
    params:
        # Batch size and threads are read from the config inside the script:
        # they change speed, not results, so changing them reruns nothing.
        top_k=SETTINGS.forward.top_k,
        dtype=SETTINGS.forward.dtype,
        device=SETTINGS.forward.device,
        format_version=FORMAT_VERSION,
        code=code("forward.py"),
    script:
        "../scripts/forward.py"
