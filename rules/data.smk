rule prepare_model:
    output:
        weights=directory(f"{RES}/models/{{key}}/weights"),
    log:
        f"{RES}/logs/prepare_model/{{key}}.log",
    benchmark:
        bench_path("prepare_model", "{key}")
    conda:
        "../workflow/envs/axflow.yaml"
    threads: workflow.cores
    params:
        spec=stage_spec("model"),
    shell:
        STAGE_CMD


rule dataset:
    input:
        unpack(data_inputs),
    output:
        concepts=f"{RES}/data/{{key}}/concepts.parquet",
        train=f"{RES}/data/{{key}}/train.parquet",
        detect_eval=f"{RES}/data/{{key}}/detect_eval.parquet",
        steer_prompts=f"{RES}/data/{{key}}/steer_prompts.parquet",
        stats=f"{RES}/data/{{key}}/stats.json",
        config=f"{RES}/data/{{key}}/config.json",
    log:
        f"{RES}/logs/dataset/{{key}}.log",
    benchmark:
        bench_path("dataset", "{key}")
    conda:
        "../workflow/envs/axflow.yaml"
    threads: workflow.cores
    params:
        spec=stage_spec("data"),
    shell:
        STAGE_CMD
