rule heads:
    input:
        prompts="results/prompts/{task}.parquet",
        forward="results/forward/{model}/{task}.parquet",
        model="resources/models/{model}",
    output:
        "results/heads/{model}/{task}.parquet",
    log:
        "logs/heads/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=stage_resources("heads", "mem_mb"),
        gpu=stage_resources("heads", "gpu"),
    params:
        # heads.causal.batch_rows is read from the config inside the script: it changes
        # speed and memory, not results, so changing it reruns nothing.
        examples=lambda w: SETTINGS.heads.examples_for(SETTINGS.tasks[w.task]),
        replicates=lambda w: SETTINGS.heads.replicates_for(SETTINGS.tasks[w.task]),
        causal_examples=lambda w: SETTINGS.heads.causal_examples_for(
            SETTINGS.tasks[w.task]
        ),
        causal_replicates=lambda w: SETTINGS.heads.causal_replicates_for(
            SETTINGS.tasks[w.task]
        ),
        dtype=SETTINGS.forward.dtype,
        device=SETTINGS.forward.device,
        format_version=FORMAT_VERSION,
        code=code("heads.py"),
    script:
        "../scripts/heads.py"


rule heads_figures:
    input:
        rules.heads.output[0],
    output:
        report(
            "results/figures/{model}/{task}/heads-direct.png",
            caption="../report/heads-direct.rst",
            category="4. Heads",
            subcategory="{model}",
            labels={
                "model": "{model}",
                "task": "{task}",
                "figure": "direct attribution",
            },
        ),
    log:
        "logs/figures/{model}/{task}/heads.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
        format_version=FORMAT_VERSION,
        code=code("heads_figures.py"),
    script:
        "../scripts/heads_figures.py"


rule heads_causal_figures:
    input:
        rules.heads.output[0],
    output:
        causal=report(
            "results/figures/{model}/{task}/heads-causal.png",
            caption="../report/heads-causal.rst",
            category="4. Heads",
            subcategory="{model}",
            labels={"model": "{model}", "task": "{task}", "figure": "causal effect"},
        ),
        scatter=report(
            "results/figures/{model}/{task}/heads-direct-vs-causal.png",
            caption="../report/heads-direct-vs-causal.rst",
            category="4. Heads",
            subcategory="{model}",
            labels={
                "model": "{model}",
                "task": "{task}",
                "figure": "direct vs causal",
            },
        ),
    log:
        "logs/figures/{model}/{task}/heads-causal.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
        format_version=FORMAT_VERSION,
        code=code("heads_figures.py"),
    script:
        "../scripts/heads_figures.py"
