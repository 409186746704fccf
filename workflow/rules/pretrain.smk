# Steps 1 and 2: spatial MoCo pretraining, then spatio-temporal SCE distillation from the teacher bank.
# One chain per seed (the paper's "averaged on three seeds"; `share_pretraining` runs one for the first).


rule pretrain_spatial:
    input:
        frames=spatial_frames,
        train=[split_list("train")],
    output:
        PATHS["pretrain_spatial"],
    log:
        "logs/pretrain_spatial/{key}/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain_spatial/{key}/seed{seed}.tsv"
    conda:
        "../../envs/comedian.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        launch=launcher,
        root=data_root,
        frames_dir=frames_dir,
        train=train_list_flags,
        model=section_json("model"),
        step=section_json("pretrain_spatial"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_spatial/{key}/seed{seed}",
    shell:
        "{params.launch} pretrain-spatial --root {params.root:q} --frames-dir {params.frames_dir}"
        " {params.train} --model {params.model:q} --step {params.step:q} --seed {wildcards.seed}"
        " --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"


rule pretrain_temporal:
    input:
        unpack(temporal_inputs),
    output:
        PATHS["pretrain_temporal"],
    log:
        "logs/pretrain_temporal/{key}/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain_temporal/{key}/seed{seed}.tsv"
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
        model=section_json("model"),
        step=section_json("pretrain_temporal"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_temporal/{key}/seed{seed}",
    shell:
        "{params.launch} pretrain-temporal --root {params.root:q} --frames-dir {params.frames_dir}"
        " {params.train} --bank {input.bank} --model {params.model:q} --step {params.step:q}"
        " --seed {wildcards.seed} {params.init} --workdir {params.workdir} --output {output}"
        " --workers {params.workers} --threads {params.torch_threads} > {log} 2>&1"
