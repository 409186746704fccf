# Evaluation: the official t-AmAP of each model (every seed's, and their ensemble), labelled split and
# metric, then metrics.json (per seed, mean, std, ensemble) and the report.


rule evaluate:
    input:
        predictions="results/predictions/{model}/{split}",
        games=split_list_of,
        labels=split_labels,
    output:
        "results/metrics/{model}/{split}_{metric}.json",
    params:
        code=code("evaluate"),
        labels=data_root,
        classes=class_flags(),
    group:
        "scoring"
    log:
        "logs/evaluate/{model}_{split}_{metric}.log",
    benchmark:
        "benchmarks/evaluate/{model}_{split}_{metric}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "python -m comedian evaluate --labels {params.labels:q} --predictions {input.predictions}"
        " --games {input.games:q} --metric {wildcards.metric} --json {output} {params.classes} > {log} 2>&1"


if config["evaluate"]["splits"]:

    rule report:
        input:
            metrics=metric_files("ensemble"),
            seed_metrics=[f for seed in SEEDS for f in metric_files(f"seed{seed}")],
            predictions=f"results/predictions/ensemble/{config['report']['split']}",
            scores=f"results/scores/ensemble/{config['report']['split']}.h5",
            games=split_list(config["report"]["split"]),
            labels=labels_files([config["report"]["split"]]),
        output:
            metrics="results/metrics.json",
            ap_table=report("results/report/ap_table.html", category="Per-class AP"),
            ap_csv="results/report/ap_table.csv",
            seeds=report("results/report/seeds.html", category="Seeds"),
            seeds_csv="results/report/seeds.csv",
            pr_curves=report("results/report/pr_curves.png", category="Precision-recall"),
            timelines=report(
                directory("results/report/timelines"), patterns=["{name}.png"], category="Timelines"
            ),
        params:
            code=code("report"),
            metrics=metric_flags,
            labels=data_root,
            split=config["report"]["split"],
            pr_metric=config["report"]["pr_metric"],
            timeline_games=config["report"]["timeline_games"],
        group:
            "scoring"
        log:
            "logs/report.log",
        benchmark:
            "benchmarks/report.tsv"
        conda:
            "../../envs/comedian.yaml"
        shell:
            "python -m comedian report {params.metrics} --output-metrics {output.metrics}"
            " --split {params.split} --labels {params.labels:q} --predictions {input.predictions}"
            " --games {input.games:q} --scores {input.scores} --ap-table {output.ap_table}"
            " --ap-csv {output.ap_csv} --seed-table {output.seeds} --seed-csv {output.seeds_csv} --pr-curves {output.pr_curves} --pr-metric {params.pr_metric}"
            " --timelines {output.timelines} --timeline-games {params.timeline_games} > {log} 2>&1"
