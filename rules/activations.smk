rule extract_activations:
    input:
        unpack(acts_inputs),
    output:
        acts=f"{RES}/activations/{{key}}/{{split}}.parquet",
    params:
        spec=stage_spec("acts"),
    log:
        f"{RES}/logs/activations/{{key}}_{{split}}.log",
    threads: workflow.cores
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
