# The experiment's report: report.md, leaderboard.csv, report.html and figures/*.png. The page,
# the leaderboard and the figures are registered for Snakemake's own report
# (`snakemake --report report.zip` after a run).


report: "../workflow/report/workflow.rst"


rule report:
    input:
        unpack(report_inputs),
    output:
        report=f"{RES}/{{cell}}/report.md",
        leaderboard=report(
            f"{RES}/{{cell}}/leaderboard.csv",
            caption="../workflow/report/leaderboard.rst",
            category="Leaderboard",
            subcategory="{cell}",
        ),
        config=f"{RES}/{{cell}}/config.json",
        html=report(
            f"{RES}/{{cell}}/report.html",
            caption="../workflow/report/report_html.rst",
            category="Report page",
            subcategory="{cell}",
        ),
        figures=report(
            directory(f"{RES}/{{cell}}/figures"),
            patterns=["{figure}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
            subcategory="{cell}",
            labels={"figure": "{figure}"},
        ),
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
            leaderboard=report(
                f"{RES}/{SWEEP.name}/sweep/leaderboard.csv",
                caption="../workflow/report/sweep.rst",
                category="Sweep",
            ),
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
