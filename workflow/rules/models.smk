rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
    conda:
        "../envs/iclprobe.yaml"
    script:
        "../scripts/prepare_model.py"
