# axflow: concept detection and steering benchmark (AxBench re-implementation).
# Compose the config with Hydra overrides passed as `--config key=value ...` (see README).


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/activations.smk"
include: "rules/train.smk"
include: "rules/detect.smk"
include: "rules/steer.smk"
include: "rules/judge.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
