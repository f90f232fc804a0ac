rule detect:
    input:
        unpack(detect_inputs),
    output:
        scores=f"{RES}/detect/{{method}}/{{key}}/scores.parquet",
        metrics=f"{RES}/detect/{{method}}/{{key}}/metrics.parquet",
        pool=f"{RES}/detect/{{method}}/{{key}}/pool.parquet",
        config=f"{RES}/detect/{{method}}/{{key}}/config.json",
    log:
        f"{RES}/logs/detect/{{method}}_{{key}}.log",
    benchmark:
        bench_path("detect", "{method}_{key}")
    priority: PRIORITY["detect"]
    conda:
        "../workflow/envs/axflow.yaml"
    threads: METHOD_JOB_THREADS
    params:
        spec=stage_spec("detect"),
    shell:
        STAGE_CMD
