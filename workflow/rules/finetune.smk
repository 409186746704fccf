# Step 3: fine-tuning to action spotting, one model per seed.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        PATHS["finetune"],
    log:
        "logs/finetune/{key}/seed{seed}.log",
    benchmark:
        "benchmarks/finetune/{key}/seed{seed}.tsv"
    conda:
        "../../envs/comedian.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        launch=launcher,
        init=init_flag,
        root=data_root,
        frames_dir=frames_dir,
        train=train_list_flags,
        valid=valid_flag,
        model=section_json("model"),
        step=section_json("finetune"),
        classes=classes_json(),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/finetune/{key}/seed{seed}",
    shell:
        "{params.launch} finetune --root {params.root:q} --frames-dir {params.frames_dir}"
        " {params.train} {params.valid} --model {params.model:q}"
        " --step {params.step:q} --classes {params.classes:q} --seed {wildcards.seed} {params.init}"
        " --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"
