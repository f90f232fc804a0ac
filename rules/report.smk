rule report:
    input:
        unpack(report_inputs),
    output:
        report=f"{RES}/{{cell}}/report.md",
        leaderboard=f"{RES}/{{cell}}/leaderboard.csv",
        config=f"{RES}/{{cell}}/config.json",
    log:
        f"{RES}/logs/report/{{cell}}.log",
    benchmark:
        bench_path("report", "{cell}")
    conda:
        "../workflow/envs/axflow.yaml"
    threads: 1
    params:
        spec=stage_spec("report", extra=report_extra),
        code=code_param("report"),
    shell:
        STAGE_CMD


if SWEEP.is_grid:

    rule sweep_report:
        input:
            unpack(sweep_inputs),
        output:
            report=f"{RES}/{SWEEP.name}/sweep/report.md",
            leaderboard=f"{RES}/{SWEEP.name}/sweep/leaderboard.csv",
        log:
            f"{RES}/logs/report/{SWEEP.name}.sweep.log",
        benchmark:
            bench_path("sweep_report", SWEEP.name)
        conda:
            "../workflow/envs/axflow.yaml"
        threads: 1
        params:
            spec=stage_spec("sweep_report", extra=sweep_extra()),
            code=code_param("sweep_report"),
        shell:
            STAGE_CMD
