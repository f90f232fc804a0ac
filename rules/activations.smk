rule extract_activations:
    input:
        unpack(acts_inputs),
    output:
        acts=f"{RES}/activations/{{key}}/{{split}}.parquet",
    log:
        f"{RES}/logs/activations/{{key}}_{{split}}.log",
    # Deterministic and the costliest input to everything else: with `--cache` and
    # SNAKEMAKE_OUTPUT_CACHE set, other workflows (other clones, other users) reuse the result.
    cache: "omit-software"
    priority: PRIORITY["extract_activations"]
    conda:
        "../workflow/envs/axflow.yaml"
    threads: workflow.cores
    params:
        spec=stage_spec("acts"),
    shell:
        STAGE_CMD
