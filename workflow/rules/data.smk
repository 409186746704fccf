# Data: the demo tree (when configured), 2-fps frames per half, the PCA'd Baidu bank.


if config["demo"] is not None:

    rule demo_data:
        output:
            files=demo_outputs(),
            splits=[split_list(s) for s in ("train", "valid", "test")],
        log:
            "logs/demo_data.log",
        benchmark:
            "benchmarks/demo_data.tsv"
        conda:
            "../../envs/comedian.yaml"
        params:
            code=code("demo-data"),
            root=data_root,
            splits_dir=splits_dir,
            seed=config["demo"]["seed"],
            train_games=config["demo"]["games"]["train"],
            valid_games=config["demo"]["games"]["valid"],
            test_games=config["demo"]["games"]["test"],
            half_duration_s=config["demo"]["half_duration_s"],
        shell:
            "python -m comedian demo-data --root {params.root:q} --splits-dir {params.splits_dir:q}"
            " --seed {params.seed} --train-games {params.train_games} --valid-games {params.valid_games}"
            " --test-games {params.test_games} --half-duration {params.half_duration_s} > {log} 2>&1"


rule extract:
    input:
        video,
    output:
        PATHS["extract"],
    log:
        "logs/extract/{key}/{game}_{half}.log",
    benchmark:
        "benchmarks/extract/{key}/{game}_{half}.tsv"
    group:
        "extract"
    conda:
        "../../envs/comedian.yaml"
    params:
        fps=setting("extract", "fps"),
        quality=setting("extract", "quality"),
        ffmpeg=ffmpeg_flag,
    shell:
        "python -m comedian extract --video {input:q} --output {output:q} --fps {params.fps}"
        " --quality {params.quality} {params.ffmpeg} > {log:q} 2>&1"


rule pca:
    input:
        features=baidu_files(),
        frames=pca_frames,
        train=split_list("train"),
        others=[split_list(s) for s in SPLITS if s != "train"],
    output:
        PATHS["pca"],
    log:
        "logs/pca/{key}.log",
    benchmark:
        "benchmarks/pca/{key}.tsv"
    conda:
        "../../envs/comedian.yaml"
    resources:
        mem_mb=4000,
    params:
        root=data_root,
        others=split_flags,
        frames_dir=frames_dir,
        dims=setting("pca", "dims"),
        feature_dim=setting("pca", "feature_dim"),
        tolerance=setting("pca", "length_tolerance_s"),
    shell:
        "python -m comedian pca --root {params.root:q} --train {input.train:q} {params.others}"
        " --output {output} --dims {params.dims} --feature-dim {params.feature_dim}"
        " --frames-dir {params.frames_dir} --length-tolerance-s {params.tolerance} > {log} 2>&1"
