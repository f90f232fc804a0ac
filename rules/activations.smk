rule extract_activations:
    input:
        unpack(acts_inputs),
    output:
        acts=f"{RES}/activations/{{key}}/{{split}}.parquet",
    log:
        f"{RES}/logs/activations/{{key}}_{{split}}.log",
    conda:
        "../workflow/envs/axflow.yaml"
    threads: workflow.cores
    params:
        spec=stage_spec("acts"),
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
