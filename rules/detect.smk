rule detect:
    input:
        unpack(detect_inputs),
    output:
        scores=f"{RES}/detect/{{method}}/{{key}}/scores.parquet",
        metrics=f"{RES}/detect/{{method}}/{{key}}/metrics.parquet",
    params:
        spec=stage_spec("detect", slice_stage="train"),
    log:
        f"{RES}/logs/detect/{{method}}_{{key}}.log",
    threads: 1
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
