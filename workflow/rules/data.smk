# Data: the demo tree (when configured), 2-fps frames per half, the PCA'd Baidu bank.


if config["demo"] is not None:

    rule demo_data:
        output:
            files=demo_outputs(),
            splits=[split_list(s) for s in ("train", "valid", "test")],
        params:
            seed=config["demo"]["seed"],
            games=config["demo"]["games"],
            half_duration_s=config["demo"]["half_duration_s"],
            root=DATA_ROOT,
            splits_dir=demo_splits_dir(),
        log:
            "logs/demo_data.log",
        benchmark:
            "benchmarks/demo_data.tsv"
        shell:
            "{COMEDIAN} demo-data --root {params.root} --splits-dir {params.splits_dir} --seed {params.seed}"
            " --train-games {params.games[train]} --valid-games {params.games[valid]}"
            " --test-games {params.games[test]} --half-duration {params.half_duration_s} > {log} 2>&1"


rule extract:
    input:
        video,
    output:
        "results/frames/{game}/{half}.h5",
    params:
        fps=config["extract"]["fps"],
        quality=config["extract"]["quality"],
        ffmpeg=ffmpeg_flag(),
    log:
        "logs/extract/{game}_{half}.log",
    benchmark:
        "benchmarks/extract/{game}_{half}.tsv"
    shell:
        "{COMEDIAN} extract --video {input:q} --output {output:q} --fps {params.fps}"
        " --quality {params.quality} {params.ffmpeg} > {log:q} 2>&1"


rule pca:
    input:
        features=baidu_files(),
        frames=all_frames(),
        splits=[split_list(s) for s in SPLITS],
    output:
        "results/features/baidu_pca.h5",
    params:
        root=DATA_ROOT,
        train=split_list("train"),
        others=" ".join(f"--split {split_list(s)}" for s in SPLITS if s != "train"),
        dims=config["pca"]["dims"],
        feature_dim=config["pca"]["feature_dim"],
        tolerance=config["pca"]["length_tolerance_s"],
    resources:
        mem_mb=4000,
    log:
        "logs/pca.log",
    benchmark:
        "benchmarks/pca.tsv"
    shell:
        "{COMEDIAN} pca --root {params.root:q} --train {params.train:q} {params.others} --output {output}"
        " --dims {params.dims} --feature-dim {params.feature_dim} --frames-dir results/frames"
        " --length-tolerance-s {params.tolerance} > {log} 2>&1"
