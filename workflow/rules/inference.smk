# Inference: sliding windows -> raw per-token scores per split and seed, their ensemble, then NMS.


rule predict:
    input:
        checkpoint=seed_checkpoint,
        frames=split_frames,
        games=split_list_of,
    output:
        PATHS["predict"],
    log:
        "logs/predict/{key}/seed{seed}_{split}.log",
    benchmark:
        "benchmarks/predict/{key}/seed{seed}_{split}.tsv"
    conda:
        "../../envs/comedian.yaml"
    threads: 2
    params:
        frames_dir=frames_dir,
        window=window_flag,
        ignore_s=setting("predict", "ignore_s"),
        merge=setting("predict", "merge"),
        batch_size=setting("predict", "batch_size"),
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
        PATHS["ensemble"],
    log:
        "logs/ensemble/{key}/{split}.log",
    benchmark:
        "benchmarks/ensemble/{key}/{split}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "python -m comedian ensemble --inputs {input.scores} --games {input.games:q} --output {output}"
        " --split {wildcards.split} > {log} 2>&1"


rule postprocess:
    input:
        scores=model_scores,
        games=split_list_of,
    output:
        predictions=directory(PATHS["postprocess"]),
        submission=PATHS["submission"],
    log:
        "logs/postprocess/{key}/{model}_{split}.log",
    benchmark:
        "benchmarks/postprocess/{key}/{model}_{split}.tsv"
    group:
        "scoring"
    conda:
        "../../envs/comedian.yaml"
    params:
        nms=setting("postprocess", "nms"),
        window_s=setting("postprocess", "window_s"),
        threshold=setting("postprocess", "threshold"),
    shell:
        "python -m comedian postprocess --scores {input.scores} --games {input.games:q}"
        " --output {output.predictions} --zip {output.submission} --nms {params.nms}"
        " --window-s {params.window_s} --threshold {params.threshold} > {log} 2>&1"
