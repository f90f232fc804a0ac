rule steer:
    input:
        unpack(steer_inputs),
    output:
        generations=f"{RES}/steer/{{method}}/{{key}}/generations.parquet",
        config=f"{RES}/steer/{{method}}/{{key}}/config.json",
    params:
        spec=stage_spec("steer"),
    log:
        f"{RES}/logs/steer/{{method}}_{{key}}.log",
    threads: workflow.cores
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
