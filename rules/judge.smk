rule judge:
    input:
        unpack(judge_inputs),
    output:
        ratings=f"{RES}/judge/{{method}}/{{key}}/ratings.parquet",
        config=f"{RES}/judge/{{method}}/{{key}}/config.json",
    params:
        spec=stage_spec("judge"),
    log:
        f"{RES}/logs/judge/{{method}}_{{key}}.log",
    threads: workflow.cores
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
