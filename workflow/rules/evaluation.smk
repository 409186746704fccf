# Evaluation: the official t-AmAP of each model (every seed's, and their ensemble), labelled split and
# metric; then each experiment's view (metrics.json per seed, mean, std, ensemble; the report; the
# manifest of its products) and the tables of results beside the paper's figures.


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


# An experiment's view: results/ for the base (the experiment `default`), results/experiments/<name>/ else.
rule report:
    input:
        unpack(report_inputs),
    output:
        metrics="{view}/metrics.json",
        ap_table=report(
            "{view}/report/ap_table.html",
            caption="../report/ap_table.rst",
            category="Per-class AP",
            subcategory="{view}",
        ),
        ap_csv="{view}/report/ap_table.csv",
        seeds=report("{view}/report/seeds.html", caption="../report/seeds.rst", category="Seeds", subcategory="{view}"),
        seeds_csv="{view}/report/seeds.csv",
        pr_curves=report(
            "{view}/report/pr_curves.png",
            caption="../report/pr_curves.rst",
            category="Precision-recall",
            subcategory="{view}",
        ),
        timelines=report(
            directory("{view}/report/timelines"),
            patterns=["{name}.png"],
            caption="../report/timelines.rst",
            category="Timelines",
            subcategory="{view}",
        ),
        run=report("{view}/report/run.html", caption="../report/run.rst", category="Run", subcategory="{view}"),
    log:
        "logs/report/{view}.log",
    benchmark:
        "benchmarks/report/{view}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        code=code("report"),
        metrics=metric_flags,
        labels=data_root,
        split=report_setting("split"),
        pr_metric=report_setting("pr_metric"),
        timeline_games=report_setting("timeline_games"),
        experiment=experiment_name,
        config=experiment_config_json,
    shell:
        "python -m comedian report {params.metrics} --output-metrics {output.metrics}"
        " --split {params.split} --labels {params.labels:q} --predictions {input.predictions}"
        " --games {input.games:q} --scores {input.scores} --ap-table {output.ap_table}"
        " --ap-csv {output.ap_csv} --seed-table {output.seeds} --seed-csv {output.seeds_csv}"
        " --pr-curves {output.pr_curves} --pr-metric {params.pr_metric}"
        " --timelines {output.timelines} --timeline-games {params.timeline_games} --run-page {output.run}"
        " --experiment {params.experiment} --config-json {params.config:q} > {log} 2>&1"


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
