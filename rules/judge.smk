rule judge:
    input:
        unpack(judge_inputs),
    output:
        ratings=f"{RES}/judge/{{method}}/{{key}}/ratings.parquet",
        config=f"{RES}/judge/{{method}}/{{key}}/config.json",
    log:
        f"{RES}/logs/judge/{{method}}_{{key}}.log",
    benchmark:
        bench_path("judge", "{method}_{key}")
    priority: PRIORITY["judge"]
    conda:
        "../workflow/envs/axflow.yaml"
    threads: METHOD_JOB_THREADS
    params:
        spec=stage_spec("judge"),
    shell:
        STAGE_CMD
