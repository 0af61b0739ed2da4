rule lens:
    input:
        prompts="results/prompts/{task}.parquet",
        forward=rules.forward.output[0],
        model="resources/models/{model}",
    output:
        **lens_tables("{model}", "{task}"),
    log:
        "logs/lens/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=stage_resources("lens", "mem_mb"),
        gpu=stage_resources("lens", "gpu"),
    params:
        examples=lambda w: SETTINGS.lens.examples_for(SETTINGS.tasks[w.task]),
        replicates=lambda w: SETTINGS.lens.replicates_for(SETTINGS.tasks[w.task]),
        top_k=SETTINGS.lens.top_k,
        integer_replicates=lambda w: SETTINGS.lens.integer_replicates_for(
            SETTINGS.tasks[w.task]
        ),
        # [low, high], never the list: a default range can be huge (and is refused
        # beyond iclprobe.bounds' limit when the config is read).
        candidate_range=lambda w: list(
            SETTINGS.lens.candidate_bounds(SETTINGS.tasks[w.task])
        ),
        dtype=SETTINGS.forward.dtype,
        device=SETTINGS.forward.device,
        format_version=FORMAT_VERSION,
        code=code("lens.py"),
    script:
        "../scripts/lens.py"


rule lens_figures:
    input:
        unpack(lambda w: lens_tables(w.model, w.task)),
    output:
        **lens_figures(),
    log:
        "logs/figures/lens/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
        code=code("lens_figures.py"),
    script:
        "../scripts/lens_figures.py"
