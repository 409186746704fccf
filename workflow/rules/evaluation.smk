# Evaluation: the official t-AmAP of each model (every seed's, and their ensemble), labelled split and
# metric; then each experiment's report (metrics.json per seed, mean, std, ensemble; figures and tables) and
# view (a copy of the report and the manifest of its products), and the tables beside the paper's figures.


rule evaluate:
    input:
        predictions=model_predictions,
        games=split_list_of,
        labels=split_labels,
    output:
        PATHS["evaluate"],
    log:
        "logs/evaluate/{key}/{model}_{split}_{metric}.log",
    benchmark:
        "benchmarks/evaluate/{key}/{model}_{split}_{metric}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        labels=data_root,
        classes=class_flags(),
    shell:
        "python -m comedian evaluate --labels {params.labels:q} --predictions {input.predictions}"
        " --games {input.games:q} --metric {wildcards.metric} --json {output} {params.classes} > {log} 2>&1"


# An experiment's report, keyed by its settings and inputs: switching a setting back finds it made.
rule report:
    input:
        unpack(report_inputs),
    output:
        **report_outputs(PATHS["report"]),
    log:
        "logs/report/{key}/report.log",
    benchmark:
        "benchmarks/report/{key}/report.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        metrics=metric_flags,
        labels=data_root,
        split=report_setting("split"),
        pr_metric=report_setting("pr_metric"),
        timeline_games=report_setting("timeline_games"),
        experiment=experiment_name,
        config=report_config_json,
    shell:
        "python -m comedian report {params.metrics} --output-metrics {output.metrics}"
        " --split {params.split} --labels {params.labels:q} --predictions {input.predictions}"
        " --games {input.games:q} --scores {input.scores} --ap-table {output.ap_table}"
        " --ap-csv {output.ap_csv} --seed-table {output.seeds} --seed-csv {output.seeds_csv}"
        " --pr-curves {output.pr_curves} --pr-metric {params.pr_metric}"
        " --timelines {output.timelines} --timeline-games {params.timeline_games} --run-page {output.run}"
        " --experiment {params.experiment} --config-json {params.config:q} > {log} 2>&1"


# An experiment's view: results/ for the base (the experiment `default`), results/experiments/<name>/ else;
# a copy of its report (a few files: switching a setting back reruns this job only).
rule view:
    input:
        view_inputs,
    output:
        **view_outputs(),
    log:
        "logs/view/{view}.log",
    benchmark:
        "benchmarks/view/{view}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        code=code("experiments"),
        report=view_report,
    shell:
        "python -m comedian experiments --view {wildcards.view} --report {params.report} > {log} 2>&1"


# What an experiment is made of: every product it uses, by key, with the settings behind it.
rule manifest:
    output:
        "{view}/manifest.json",
    log:
        "logs/manifest/{view}.log",
    benchmark:
        "benchmarks/manifest/{view}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        code=code("experiments"),
        manifest=manifest_json,
    shell:
        "python -m comedian experiments --manifest {params.manifest:q} --output {output} > {log} 2>&1"


rule table:
    input:
        unpack(table_inputs),
    output:
        csv="results/tables/{table}.csv",
        markdown="results/tables/{table}.md",
        html=report(
            "results/tables/{table}.html", caption="../report/table.rst", category="Tables", subcategory="{table}"
        ),
    log:
        "logs/table/{table}.log",
    benchmark:
        "benchmarks/table/{table}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        code=code("table"),
        spec=table_json,
        sources=table_flags,
    shell:
        "python -m comedian table --name {wildcards.table} --spec {params.spec:q} {params.sources}"
        " --csv {output.csv} --markdown {output.markdown} --html {output.html} > {log} 2>&1"
