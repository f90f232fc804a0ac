rule train:
    input:
        unpack(train_inputs),
    output:
        params=f"{RES}/train/{{method}}/{{key}}/params.safetensors",
        config=f"{RES}/train/{{method}}/{{key}}/config.json",
    params:
        spec=stage_spec("train"),
    log:
        f"{RES}/logs/train/{{method}}_{{key}}.log",
    threads: workflow.cores
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
