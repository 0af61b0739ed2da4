rule probe:
    input:
        prompts=rules.prompts.output[0],
        forward=rules.forward.output[0],
        model=rules.forward.input.model,
    output:
        "results/probe/{model}/{task}.parquet",
    log:
        "logs/probe/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=stage_resources("probe", "mem_mb"),
        gpu=stage_resources("probe", "gpu"),
    params:
        # probe.batch_size is read from the settings inside the script: it changes
        # speed, not results, so changing it reruns nothing.
        ks=lambda w: SETTINGS.probe.ks_for(SETTINGS.tasks[w.task]),
        replicates=lambda w: SETTINGS.probe.replicates_for(SETTINGS.tasks[w.task]),
        dtype=SETTINGS.forward.dtype,
        device=SETTINGS.forward.device,
        format_version=FORMAT_VERSION,
        code=code("probe.py"),
    script:
        "../scripts/probe.py"


rule probe_figure:
    input:
        rules.probe.output[0],
    output:
        report(
            "results/figures/{model}/{task}/probe.png",
            caption="../report/probe.rst",
            category="2. Probe",
            subcategory="{model}",
            labels={"model": "{model}", "task": "{task}", "figure": "probe"},
        ),
    log:
        "logs/figures/probe/{model}/{task}.log",
    conda:
        "../envs/iclprobe.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        function=lambda w: SETTINGS.tasks[w.task].function,
        format_version=FORMAT_VERSION,
        code=code("probe_figure.py"),
    script:
        "../scripts/probe_figure.py"
