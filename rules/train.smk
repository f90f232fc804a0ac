rule train:
    input:
        unpack(train_inputs),
    output:
        params=f"{RES}/train/{{method}}/{{key}}/params.safetensors",
        config=f"{RES}/train/{{method}}/{{key}}/config.json",
    log:
        f"{RES}/logs/train/{{method}}_{{key}}.log",
    benchmark:
        bench_path("train", "{method}_{key}")
    priority: PRIORITY["train"]
    conda:
        "../workflow/envs/axflow.yaml"
    threads: METHOD_JOB_THREADS
    params:
        spec=stage_spec("train"),
    shell:
        STAGE_CMD
