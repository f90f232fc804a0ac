rule report:
    input:
        unpack(report_inputs),
    output:
        report=f"{RES}/{PLAN.name}/report.md",
        leaderboard=f"{RES}/{PLAN.name}/leaderboard.csv",
        config=f"{RES}/{PLAN.name}/config.json",
    log:
        f"{RES}/logs/report/{PLAN.name}.log",
    conda:
        "../workflow/envs/axflow.yaml"
    threads: 1
    params:
        spec=stage_spec("report", extra=report_extra()),
    shell:
        "python -m axflow.stage {params.spec:q} > {log:q} 2>&1"
