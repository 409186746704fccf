# Inference: sliding windows -> raw per-token scores per split and seed, their ensemble, then NMS.


rule predict:
    input:
        checkpoint="results/checkpoints/finetune_seed{seed}.pt",
        frames=split_frames,
        games=split_list_of,
    output:
        "results/scores/seed{seed}/{split}.h5",
    params:
        code=code("predict"),
        frames_dir=frames_dir,
        window=window_flag(),
        ignore_s=config["predict"]["ignore_s"],
        merge=config["predict"]["merge"],
        batch_size=config["predict"]["batch_size"],
    threads: 2
    log:
        "logs/predict/seed{seed}_{split}.log",
    benchmark:
        "benchmarks/predict/seed{seed}_{split}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "python -m comedian predict --checkpoint {input.checkpoint} --frames-dir {params.frames_dir}"
        " --games {input.games:q} --output {output} {params.window} --ignore-s {params.ignore_s}"
        " --merge {params.merge} --batch-size {params.batch_size} --workers {threads}"
        " --split {wildcards.split} > {log} 2>&1"


rule ensemble:
    input:
        scores=seed_scores,
        games=split_list_of,
    output:
        "results/scores/ensemble/{split}.h5",
    params:
        code=code("ensemble"),
    group:
        "scoring"
    log:
        "logs/ensemble/{split}.log",
    benchmark:
        "benchmarks/ensemble/{split}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "python -m comedian ensemble --inputs {input.scores} --games {input.games:q} --output {output}"
        " --split {wildcards.split} > {log} 2>&1"


rule postprocess:
    input:
        scores="results/scores/{model}/{split}.h5",
        games=split_list_of,
    output:
        predictions=directory("results/predictions/{model}/{split}"),
        submission="results/submissions/{model}/{split}.zip",
    params:
        code=code("postprocess"),
        nms=config["postprocess"]["nms"],
        window_s=config["postprocess"]["window_s"],
        threshold=config["postprocess"]["threshold"],
    group:
        "scoring"
    log:
        "logs/postprocess/{model}_{split}.log",
    benchmark:
        "benchmarks/postprocess/{model}_{split}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "python -m comedian postprocess --scores {input.scores} --games {input.games:q}"
        " --output {output.predictions} --zip {output.submission} --nms {params.nms}"
        " --window-s {params.window_s} --threshold {params.threshold} > {log} 2>&1"
