# Step 3: fine-tuning to action spotting, one model per seed; the best by validation tight t-AmAP.


rule finetune:
    input:
        unpack(finetune_init),
        frames=all_frames(["train", "valid"]),
        train=split_list("train"),
        valid=split_list("valid"),
    output:
        "results/checkpoints/finetune_seed{seed}.pt",
    params:
        code=code("finetune"),
        launch=launcher,
        init=init_flag,
        root=data_root,
        frames_dir=frames_dir,
        model=section_json("model"),
        step=section_json("finetune"),
        classes=classes_json(),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/finetune_seed{seed}",
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/finetune/seed{seed}.log",
    benchmark:
        "benchmarks/finetune/seed{seed}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "{params.launch} finetune --root {params.root:q} --frames-dir {params.frames_dir}"
        " --train-list {input.train:q} --valid-list {input.valid:q} --model {params.model:q}"
        " --step {params.step:q} --classes {params.classes:q} --seed {wildcards.seed} {params.init}"
        " --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"
