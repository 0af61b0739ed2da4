rule patching:
    input:
        prompts="results/prompts/{task}.parquet",
        target_prompts=patch_target_prompts,
        forward="results/forward/{model}/{task}.parquet",
        model="resources/models/{model}",
    output:
        "results/patching/{model}/{task}.parquet",
    log:
        "logs/patching/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=stage_resources("patching", "mem_mb"),
        gpu=stage_resources("patching", "gpu"),
    params:
        patch_target=lambda w: SETTINGS.tasks[w.task].patch_target,
        replicates=lambda w: SETTINGS.patching.replicates_for(SETTINGS.tasks[w.task]),
        pairs=SETTINGS.patching.pairs,
        context_examples=lambda w: SETTINGS.patching.examples_for(
            SETTINGS.tasks[w.task],
            SETTINGS.tasks.get(SETTINGS.tasks[w.task].patch_target),
        ),
        dtype=SETTINGS.forward.dtype,
        device=SETTINGS.forward.device,
        format_version=FORMAT_VERSION,
        code=code("patching.py"),
    script:
        "../scripts/patching.py"


rule patching_figures:
    input:
        rules.patching.output[0],
    output:
        probabilities=report(
            "results/figures/{model}/{task}/patching-probabilities.png",
            caption="../report/patching-probabilities.rst",
            category="5. Patching",
            subcategory="{model}",
            labels={"model": "{model}", "task": "{task}", "figure": "probabilities"},
        ),
        outcomes=report(
            "results/figures/{model}/{task}/patching-outcomes.png",
            caption="../report/patching-outcomes.rst",
            category="5. Patching",
            subcategory="{model}",
            labels={"model": "{model}", "task": "{task}", "figure": "outcomes"},
        ),
    log:
        "logs/figures/patching/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
        code=code("patching_figures.py"),
    script:
        "../scripts/patching_figures.py"


rule patching_windows:
    input:
        expand(rules.patching.output[0], model=MODELS, task=TASKS),
    output:
        table="results/patching_windows.parquet",
        figure=report(
            "results/figures/patching_windows.png",
            caption="../report/patching-windows.rst",
            category="5. Patching",
            subcategory="all models",
            labels={"figure": "task and answer windows"},
        ),
    log:
        "logs/patching_windows.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        format_version=FORMAT_VERSION,
        code=code("patching_windows.py"),
    script:
        "../scripts/patching_windows.py"
