rule steer:
    input:
        unpack(steer_inputs),
    output:
        generations=f"{RES}/steer/{{method}}/{{key}}/generations.parquet",
        config=f"{RES}/steer/{{method}}/{{key}}/config.json",
    log:
        f"{RES}/logs/steer/{{method}}_{{key}}.log",
    benchmark:
        bench_path("steer", "{method}_{key}")
    priority: PRIORITY["steer"]
    conda:
        "../workflow/envs/axflow.yaml"
    threads: METHOD_JOB_THREADS
    params:
        spec=stage_spec("steer"),
    shell:
        STAGE_CMD
