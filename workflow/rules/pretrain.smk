# Steps 1 and 2: spatial MoCo pretraining, then spatio-temporal SCE distillation from the Baidu bank.


rule pretrain_spatial:
    input:
        frames=all_frames(["train"]),
        train=split_list("train"),
    output:
        "results/checkpoints/pretrain_spatial.pt",
    params:
        code=code("pretrain-spatial"),
        launch=launcher,
        root=data_root,
        frames_dir=frames_dir,
        model=section_json("model"),
        step=section_json("pretrain_spatial"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_spatial",
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/pretrain_spatial.log",
    benchmark:
        "benchmarks/pretrain_spatial.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "{params.launch} pretrain-spatial --root {params.root:q} --frames-dir {params.frames_dir}"
        " --train-list {input.train:q} --model {params.model:q} --step {params.step:q}"
        " --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"


rule pretrain_temporal:
    input:
        unpack(temporal_init),
        frames=all_frames(["train"]),
        train=split_list("train"),
        bank="results/features/baidu_pca.h5",
    output:
        "results/checkpoints/pretrain_temporal.pt",
    params:
        code=code("pretrain-temporal"),
        launch=launcher,
        init=init_flag,
        root=data_root,
        frames_dir=frames_dir,
        model=section_json("model"),
        step=section_json("pretrain_temporal"),
        workers=loader_workers,
        torch_threads=torch_threads,
        workdir="results/train/pretrain_temporal",
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/pretrain_temporal.log",
    benchmark:
        "benchmarks/pretrain_temporal.tsv"
    conda:
        "../../envs/comedian.yaml"
    shell:
        "{params.launch} pretrain-temporal --root {params.root:q} --frames-dir {params.frames_dir}"
        " --train-list {input.train:q} --bank {input.bank} --model {params.model:q} --step {params.step:q}"
        " {params.init} --workdir {params.workdir} --output {output} --workers {params.workers}"
        " --threads {params.torch_threads} > {log} 2>&1"
