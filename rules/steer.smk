rule steer:
    input:
        unpack(steer_inputs),
    output:
        generations=f"{RES}/steer/{{method}}/{{key}}/generations.parquet",
        config=f"{RES}/steer/{{method}}/{{key}}/config.json",
    log:
        f"{RES}/logs/steer/{{method}}_{{key}}.log",
    conda:
        "../workflow/envs/axflow.yaml"
    threads: workflow.cores
    params:
        spec=stage_spec("steer"),
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
