rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../envs/iclprobe.yaml"
    resources:
        mem_mb=prepare_mem_mb,
    params:
        spec=model_spec,
        source=model_digest,
        code=code("prepare_model.py"),
    script:
        "../scripts/prepare_model.py"
