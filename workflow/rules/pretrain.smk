# Steps 1 and 2: spatial MoCo pretraining, then spatio-temporal SCE distillation from the Baidu bank.
# One chain per seed (the paper's "averaged on three seeds"; `share_pretraining` runs one for the first).


rule pretrain_spatial:
    input:
        frames=all_frames(["train"]),
        train=[split_list("train")],
    output:
        "results/checkpoints/pretrain_spatial_seed{seed}.pt",
    params:
        code=code("pretrain-spatial"),
        launch=launcher,
        root=data_root,
        frames_dir=frames_dir,
        train=train_list_flags,
        model=section_json("model"),
        step=section_json("pretrain_spatial"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_spatial_seed{seed}",
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/pretrain_spatial/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain_spatial/seed{seed}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "{params.launch} pretrain-spatial --root {params.root:q} --frames-dir {params.frames_dir}"
        " {params.train} --model {params.model:q} --step {params.step:q} --seed {wildcards.seed}"
        " --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"


rule pretrain_temporal:
    input:
        unpack(temporal_init),
        frames=all_frames(config["pretrain_temporal"]["train_splits"]),
        train=[split_list(s) for s in config["pretrain_temporal"]["train_splits"]],
        bank="results/features/baidu_pca.h5",
    output:
        "results/checkpoints/pretrain_temporal_seed{seed}.pt",
    params:
        code=code("pretrain-temporal"),
        launch=launcher,
        init=init_flag,
        root=data_root,
        frames_dir=frames_dir,
        train=train_list_flags,
        model=section_json("model"),
        step=section_json("pretrain_temporal"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_temporal_seed{seed}",
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/pretrain_temporal/seed{seed}.log",
    benchmark:
        "benchmarks/pretrain_temporal/seed{seed}.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "{params.launch} pretrain-temporal --root {params.root:q} --frames-dir {params.frames_dir}"
        " {params.train} --bank {input.bank} --model {params.model:q} --step {params.step:q}"
        " --seed {wildcards.seed} {params.init} --workdir {params.workdir} --output {output}"
        " --workers {params.workers} --threads {params.torch_threads} > {log} 2>&1"
